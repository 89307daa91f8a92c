//! Timeouts cancel the call on the server; ping is answered while Python is busy.

use std::time::{Duration, Instant};

use rpyc_client::Connection;
use rpyc_integration_tests::TestServer;

use crate::support::{assert_healthy, connect};

#[tokio::test]
async fn timeout_cancels_a_sleeping_call_and_the_next_call_is_fast() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = Connection::builder(server.url())
        .timeout(Duration::from_millis(500))
        .connect()
        .await?;
    conn.execute("import time\nmarker = 0").await?;
    let started = Instant::now();
    let err = conn
        .execute("time.sleep(10)\nmarker = 1")
        .await
        .expect_err("must time out");
    let waited = started.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(1000),
        "timed out after {waited:?}"
    );
    let started = Instant::now();
    assert_eq!(
        conn.eval::<i64>("marker").await?,
        0,
        "the cancelled call went on"
    );
    let next = started.elapsed();
    assert!(next < Duration::from_millis(300), "next call took {next:?}");
    Ok(())
}

#[tokio::test]
async fn timeout_interrupts_an_endless_loop() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = Connection::builder(server.url())
        .timeout(Duration::from_millis(500))
        .connect()
        .await?;
    let err = conn
        .execute("while True:\n    pass")
        .await
        .expect_err("endless");
    assert!(err.is_timeout(), "{err}");
    let started = Instant::now();
    assert_eq!(conn.eval::<i64>("2+2").await?, 4);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // `except Exception` in user code does not swallow the cancellation.
    let err = conn
        .execute(
            "while True:\n    try:\n        sum(range(1000))\n    except Exception:\n        pass",
        )
        .await
        .expect_err("endless");
    assert!(err.is_timeout());
    assert_eq!(conn.eval::<i64>("3+3").await?, 6);
    assert_healthy(&server).await?;
    Ok(())
}

#[tokio::test]
async fn ping_answers_while_a_long_call_runs() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let idle = conn.ping().await?;
    assert!(idle < Duration::from_millis(50), "idle ping {idle:?}");
    let busy = tokio::spawn({
        let conn = conn.clone();
        async move { conn.execute("import time\ntime.sleep(2)").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(conn.ping().await?);
    }
    times.sort();
    assert!(
        times[2] < Duration::from_millis(50),
        "pings while busy: {times:?}"
    );
    assert!(!busy.is_finished(), "the long call ended too early");
    busy.await??;
    Ok(())
}

#[tokio::test]
async fn closing_a_connection_interrupts_its_running_call() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let spinner = connect(&server).await?;
    spinner.execute("import sys\nsys.spin_count = 0").await?;
    let task = tokio::spawn({
        let spinner = spinner.clone();
        async move {
            spinner
                .execute("import sys\nwhile True:\n    sys.spin_count += 1")
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    spinner.close().await;
    let _ = task.await?;
    let watcher = connect(&server).await?;
    let mut stopped = false;
    for _ in 0..50 {
        let a: i64 = watcher.eval("__import__('sys').spin_count").await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b: i64 = watcher.eval("__import__('sys').spin_count").await?;
        if a == b && a > 0 {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "the closed connection's loop keeps running");
    Ok(())
}
