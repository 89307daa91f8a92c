//! Request timeouts (the stock `rpyc_timeout.py`).
//!
//! A remote call that sleeps longer than the request timeout returns
//! [`Error::Timeout`](rpyc_client::Error::Timeout) when the timeout expires. The client then
//! sends a cancel, and the server interrupts the abandoned Python call (`time.sleep` wakes at
//! once; other Python code gets a `CancelledByClient` exception at its next bytecode, which
//! `except Exception` does not catch). So the connection is usable at once: the next call
//! answers in milliseconds. A pure-Python endless loop is interrupted the same way. The
//! example prints the measured times.
//!
//! What cannot be interrupted: C code that holds the GIL and does not return to the
//! interpreter, for example a long regular expression match (`re` runs in C), a large
//! `sorted()` of C-comparable items, or a C extension's own loop. The timeout error still
//! comes back on time, but the call keeps running on the server until the C code returns to
//! Python, and only then is it interrupted. Calls on the same connection run in order, so the
//! connection's next call waits until then (or times out itself); pings are still answered,
//! and other connections keep working whenever the C code releases the GIL (many C
//! extensions do while they compute; `re` does not). A call stuck in C for good can only be
//! ended by restarting the server.
//!
//! Start the server:
//!
//! ```sh
//! cargo run --release -p rpyc-server --bin rpyc-classic
//! ```
//!
//! Run (the address defaults to `localhost`, port 18812):
//!
//! ```sh
//! cargo run -p rpyc-examples --example timeout -- [host[:port]]
//! ```

use std::time::{Duration, Instant};

use rpyc_client::Connection;

/// The request timeout of this example's connection.
const TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = rpyc_examples::init();
    let conn = Connection::builder(addr).timeout(TIMEOUT).connect().await?;
    println!("request timeout: {} ms", TIMEOUT.as_millis());
    conn.execute("import time\nmarker = 'before'\nspins = 0")
        .await?;

    // 1. A call that sleeps for 10 s.
    let started = Instant::now();
    let result = conn.execute("time.sleep(10)\nmarker = 'after'").await;
    let waited = started.elapsed();
    match result {
        Err(e) if e.is_timeout() => println!("time.sleep(10): {e}"),
        other => anyhow::bail!("expected a timeout, got {other:?}"),
    }
    println!("sleep: timeout error after {:.1} ms", ms(waited));
    let started = Instant::now();
    let marker: String = conn.eval("marker").await?;
    let next = started.elapsed();
    println!("sleep: next call answered in {:.1} ms", ms(next));
    println!("sleep: marker = {marker:?} (the rest of the cancelled call did not run)");

    // 2. A pure-Python endless loop.
    let started = Instant::now();
    let result = conn.execute("while True:\n    spins += 1").await;
    let waited = started.elapsed();
    match result {
        Err(e) if e.is_timeout() => {}
        other => anyhow::bail!("expected a timeout, got {other:?}"),
    }
    println!("loop: timeout error after {:.1} ms", ms(waited));
    let started = Instant::now();
    let spins: i64 = conn.eval("spins").await?;
    let next = started.elapsed();
    println!("loop: next call answered in {:.1} ms", ms(next));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later: i64 = conn.eval("spins").await?;
    println!(
        "loop: interrupted after {spins} iterations; {} more since",
        later - spins
    );

    conn.close().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
