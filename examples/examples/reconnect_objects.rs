//! Remote objects across a server restart (the stock `rpyc_reconnect_objects.py`).
//!
//! A remote object is a reference into one connection's object table on one server process.
//! After the server restarts, that table is gone: a `RemoteObject` from the old connection
//! fails with a clear error ([`Error::StaleReference`](rpyc_client::Error::StaleReference)
//! once the connection has reconnected), never a hang and never another object that happens
//! to have the same id on the new server. The new server's namespace starts empty too. After
//! reconnecting, the example gets fresh objects and goes on.
//!
//! The example asks you to restart the server and waits (up to 120 s), pinging every 200 ms;
//! a ping that finds the connection closed reconnects, as the
//! [`ReconnectPolicy`](rpyc_client::ReconnectPolicy) says.
//!
//! Start the server:
//!
//! ```sh
//! cargo run --release -p rpyc-server --bin rpyc-classic
//! ```
//!
//! Run (the address defaults to `localhost`, port 18812), and restart the server (Ctrl-C,
//! then start it again) when the example says so:
//!
//! ```sh
//! cargo run -p rpyc-examples --example reconnect_objects -- [host[:port]]
//! ```

use std::time::{Duration, Instant};

use rpyc_client::{Connection, ReconnectPolicy};

/// How long the example waits for the server to be restarted.
const WAIT_FOR_RESTART: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = rpyc_examples::init();
    let policy = ReconnectPolicy::new()
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_secs(1))
        .max_attempts(5);
    let conn = Connection::builder(addr)
        .timeout(Duration::from_secs(10))
        .reconnect(policy)
        .connect()
        .await?;

    // Objects of the first server process.
    let os = conn.modules().get("os").await?;
    conn.execute("data = [1, 2, 3]").await?;
    let data = conn.namespace().await?.getitem("data").await?;
    let pid: u32 = os.call_method_as("getpid", ()).await?;
    let items: Vec<i64> = data.get().await?;
    println!("before: server pid {pid}, data = {items:?} ({data})");

    println!(
        "restart the server now (waiting up to {} s)",
        WAIT_FOR_RESTART.as_secs()
    );
    let deadline = Instant::now() + WAIT_FOR_RESTART;
    while conn.reconnects() == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server was not restarted in time"
        );
        if let Err(e) = conn.ping().await {
            println!("waiting: {e}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("reconnected ({} reconnect)", conn.reconnects());

    // The old objects: a clear error, at once.
    let started = Instant::now();
    match data.len().await {
        Err(e) if e.is_stale_reference() => println!("old data: {e}"),
        other => anyhow::bail!("expected a stale reference, got {other:?}"),
    }
    match os.call_method_as::<u32>("getpid", ()).await {
        Err(e) if e.is_stale_reference() => println!("old os: {e}"),
        other => anyhow::bail!("expected a stale reference, got {other:?}"),
    }
    println!(
        "old objects failed in {:.2} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    // The new server has a fresh namespace: `data` is gone.
    match conn.eval::<Vec<i64>>("data").await {
        Err(e)
            if e.remote_exception()
                .is_some_and(|x| x.is_instance("NameError")) =>
        {
            let exc = e.remote_exception().map(ToString::to_string);
            let last = exc.as_deref().and_then(|t| t.lines().last());
            println!("new server: {}", last.unwrap_or_default());
        }
        other => anyhow::bail!("expected a NameError, got {other:?}"),
    }

    // Fresh objects from the new connection; go on.
    let os = conn.modules().get("os").await?;
    conn.execute("data = [1, 2, 3]").await?;
    let data = conn.namespace().await?.getitem("data").await?;
    data.call_method("append", (4,)).await?;
    let pid: u32 = os.call_method_as("getpid", ()).await?;
    let items: Vec<i64> = data.get().await?;
    println!("after: server pid {pid}, data = {items:?} ({data})");

    // A reconnect can also be forced; objects from before it are stale the same way.
    conn.reconnect().await?;
    let stale = data.len().await.is_err_and(|e| e.is_stale_reference());
    println!(
        "forced reconnect: {} reconnects, previous data stale: {stale}",
        conn.reconnects()
    );

    conn.close().await;
    Ok(())
}
