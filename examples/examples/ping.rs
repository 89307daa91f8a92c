//! Ping (the stock `rpyc_ping.py`).
//!
//! `ping()` measures a round trip. Pings are answered by the server's network side, not by
//! Python, so they still answer within milliseconds while the same connection runs a 5 s
//! Python call. Then the example asks you to stop the server, and shows that a ping to a dead
//! server fails fast with a clear error (and so does connecting again).
//!
//! Start the server:
//!
//! ```sh
//! cargo run --release -p rpyc-server --bin rpyc-classic
//! ```
//!
//! Run (the address defaults to `localhost`, port 18812), and stop the server (Ctrl-C) when
//! the example says so:
//!
//! ```sh
//! cargo run -p rpyc-examples --example ping -- [host[:port]]
//! ```

use std::time::{Duration, Instant};

use rpyc_client::Connection;

/// How long the example waits for the server to be stopped.
const WAIT_FOR_STOP: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = rpyc_examples::init();
    let conn = Connection::builder(addr.as_str())
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;

    // 1. Idle.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(conn.ping().await?);
    }
    println!("idle ping: {}", summary(&mut idle));

    // 2. While the same connection runs a 5 s Python call.
    let busy = tokio::spawn({
        let conn = conn.clone();
        async move {
            let started = Instant::now();
            conn.execute("import time\ntime.sleep(5)").await?;
            Ok::<_, rpyc_client::Error>(started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut during = Vec::new();
    for _ in 0..10 {
        during.push(conn.ping().await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still_busy = !busy.is_finished();
    println!("busy ping: {}", summary(&mut during));
    println!("the 5 s call was still running after those pings: {still_busy}");
    let took = busy.await??;
    println!("the 5 s call took {:.2} s", took.as_secs_f64());

    // 3. A dead server.
    println!(
        "stop the server now (waiting up to {} s; pinging every 100 ms)",
        WAIT_FOR_STOP.as_secs()
    );
    let deadline = Instant::now() + WAIT_FOR_STOP;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server was not stopped in time"
        );
        let started = Instant::now();
        match conn.ping().await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                let took = started.elapsed();
                println!("dead server: ping failed after {:.2} ms: {e}", ms(took));
                break;
            }
        }
    }
    let started = Instant::now();
    match Connection::connect(addr.as_str()).await {
        Ok(_) => println!("the server is back already"),
        Err(e) => println!(
            "dead server: connecting failed after {:.2} ms: {e}",
            ms(started.elapsed())
        ),
    }
    Ok(())
}

/// `min 0.08 ms, median 0.10 ms, max 0.21 ms (5 pings)`.
fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let (min, median, max) = (times[0], times[times.len() / 2], times[times.len() - 1]);
    format!(
        "min {:.2} ms, median {:.2} ms, max {:.2} ms ({} pings)",
        ms(min),
        ms(median),
        ms(max),
        times.len()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
