//! A connection that reconnects by itself (the stock `rpyc_with_reconnect.py`).
//!
//! The connection has a [`ReconnectPolicy`]: exponential backoff (100 ms, doubling, at most
//! 1 s between attempts), at most 8 attempts per reconnect, and a setup script that restores
//! the remote state (imports, a `state` dict, a `work()` function) on each new connection. A
//! loop of calls runs while the server is restarted; the policy's callback reports each
//! reconnect.
//!
//! Calls in flight when the connection drops fail with
//! [`Error::Disconnected`](rpyc_client::Error::Disconnected): they are never sent again,
//! since they may already have had effects on the server. Here a 60 s call is in flight
//! when the server goes away (and the next loop call, queued behind it, too); the calls
//! after that reconnect and go on.
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
//! cargo run -p rpyc-examples --example with_reconnect -- [host[:port]]
//! ```
//!
//! Run it with `RUST_LOG=rpyc_client=info` to see the client's own reconnect events (failed
//! attempts are logged at WARN level).

use std::time::{Duration, Instant};

use rpyc_client::{Connection, ReconnectPolicy};

/// Restores the remote state on each new connection.
const SETUP: &str = "\
import os, time
state = {'calls': 0}
def work():
    state['calls'] += 1
    return state['calls'], os.getpid()
";

/// How long the example waits for the server to be restarted.
const WAIT_FOR_RESTART: Duration = Duration::from_secs(120);
/// Successful calls after the reconnect before the example ends.
const CALLS_AFTER: u32 = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = rpyc_examples::init();
    let policy = ReconnectPolicy::new()
        .initial_backoff(Duration::from_millis(100))
        .multiplier(2.0)
        .max_backoff(Duration::from_secs(1))
        .max_attempts(8)
        .setup(SETUP)
        .on_reconnect(|e| {
            println!(
                "reconnect #{}: {} attempt(s) in {:.0} ms, server connection #{}",
                e.reconnects,
                e.attempts,
                e.elapsed.as_secs_f64() * 1000.0,
                e.server.connection_id
            );
        });
    let conn = Connection::builder(addr)
        .timeout(Duration::from_secs(30))
        .reconnect(policy)
        .connect()
        .await?;
    // The setup script runs after each reconnect; the first connection needs it too.
    conn.execute(SETUP).await?;

    for call in 1..=3 {
        let (calls, pid): (i64, u32) = conn.eval("work()").await?;
        println!("call {call}: state['calls'] = {calls} on server pid {pid}");
    }

    // A long call, in flight when the server goes away.
    let in_flight = tokio::spawn({
        let conn = conn.clone();
        async move { conn.execute("time.sleep(60)\nstate['calls'] += 1000").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "restart the server now (waiting up to {} s)",
        WAIT_FOR_RESTART.as_secs()
    );

    let deadline = Instant::now() + WAIT_FOR_RESTART;
    let mut after = 0;
    let mut call = 3;
    while after < CALLS_AFTER {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server was not restarted in time"
        );
        call += 1;
        match conn.eval::<(i64, u32)>("work()").await {
            Ok((calls, pid)) => {
                println!("call {call}: state['calls'] = {calls} on server pid {pid}");
                if conn.reconnects() > 0 {
                    after += 1;
                }
            }
            Err(e) if e.is_disconnected() => println!("call {call} failed: {e}"),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    match in_flight.await? {
        Err(e) if e.is_disconnected() => println!("the in-flight call failed: {e}"),
        other => anyhow::bail!("expected the in-flight call to fail, got {other:?}"),
    }
    let calls: i64 = conn.eval("state['calls']").await?;
    println!(
        "reconnects: {}; the new server counted {calls} calls (none re-sent)",
        conn.reconnects()
    );
    conn.close().await;
    Ok(())
}
