//! Many clients, and many tasks sharing one connection.

use std::time::{Duration, Instant};

use rpyc_integration_tests::TestServer;

use crate::support::connect;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_connections_make_500_calls_each() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let mut tasks = Vec::new();
    for c in 0..8i64 {
        let conn = connect(&server).await?;
        tasks.push(tokio::spawn(async move {
            conn.execute(&format!("me = {c}")).await?;
            for i in 0..500i64 {
                let (who, n): (i64, i64) = conn.eval(&format!("(me, {i} * 3)")).await?;
                assert_eq!((who, n), (c, i * 3), "answer for another call");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One connection handle cloned into many tasks: calls are in flight together over one socket
/// and every reply reaches its own caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_connection_shared_by_many_tasks() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let conn = connect(&server).await?;
    let mut tasks = Vec::new();
    for t in 0..16i64 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100i64 {
                let v: i64 = conn.eval(&format!("{t} * 1000 + {i}")).await?;
                assert_eq!(v, t * 1000 + i);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_call_does_not_block_other_connections() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let slow = connect(&server).await?;
    let sleeping = tokio::spawn(async move { slow.execute("import time\ntime.sleep(2)").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = connect(&server).await?;
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(fast.eval::<i64>("1+1").await?, 2);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    sleeping.await??;
    Ok(())
}

/// Idle connections cost no thread: requests run on the executor pool, not on a thread per
/// connection.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn idle_connections_cost_no_thread() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let threads = || -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/task", server.pid()))?.count())
    };
    let first = connect(&server).await?;
    assert_eq!(first.eval::<i64>("1").await?, 1);
    let before = threads()?;
    let mut conns = Vec::new();
    for i in 0..100i64 {
        let conn = connect(&server).await?;
        conn.execute(&format!("n = {i}")).await?;
        conns.push(conn);
    }
    let after = threads()?;
    assert!(
        after < before + 10,
        "100 idle connections added {} threads",
        after - before
    );
    // And each still has its own namespace.
    for (i, conn) in conns.iter().enumerate() {
        assert_eq!(conn.eval::<usize>("n").await?, i);
    }
    Ok(())
}

/// After a lone request of a client calling in a loop, an executor thread polls for the next
/// one for `--spin-us` before sleeping: calls stay right with polling long or off, and once the
/// client stops, the server stops spending CPU time.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn polling_for_the_next_call_stops_when_the_client_does() -> anyhow::Result<()> {
    /// User plus system CPU time of a process so far, in clock ticks.
    fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow::anyhow!("odd /proc stat: {stat}"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    }
    for spin in ["20000", "0"] {
        let server = TestServer::builder().arg("--spin-us").arg(spin).start()?;
        let conn = connect(&server).await?;
        for i in 0..300i64 {
            assert_eq!(conn.eval::<i64>(&format!("{i} * 2")).await?, i * 2);
        }
        // Idle from here on: the last poll ends 20 ms after the last call at most.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = cpu_ticks(server.pid())?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let spent = cpu_ticks(server.pid())? - before;
        // Clock ticks are 10 ms on Linux; a thread left polling would spend about 100.
        assert!(
            spent <= 10,
            "--spin-us {spin}: {spent} ticks of CPU in 1 s idle"
        );
        assert_eq!(conn.eval::<i64>("21 * 2").await?, 42);
    }
    Ok(())
}

/// A request that arrives while another connection's call has only just started (so that call
/// still counts as making progress) must not wait for it: the watchdog notices the call is
/// stuck a millisecond later and wakes another thread. Repeated with staggered starts, so the
/// request lands in that first millisecond in some rounds whatever the timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_right_behind_a_long_call_does_not_wait_for_it() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let slow = connect(&server).await?;
    let fast = connect(&server).await?;
    slow.execute("import time").await?;
    // Generous bounds (a loaded CI machine): without the watchdog the request would wait out
    // the whole 0.8 s call.
    for round in 0..12u64 {
        let long = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.execute("time.sleep(0.8)").await })
        };
        tokio::time::sleep(Duration::from_micros(round * 150)).await;
        let started = Instant::now();
        assert_eq!(
            fast.eval::<i64>(&format!("{round} + 1")).await?,
            round as i64 + 1
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "round {round}: a request behind a long call took {took:?}"
        );
        long.await??;
    }
    Ok(())
}

/// Replies of pipelined requests go out batched, but a reply never waits for the requests
/// queued behind it: here a quick request and a slow one arrive in one write, and the quick
/// one's reply comes long before the slow one ends. Then many quick ones, all answered, in
/// order.
#[tokio::test]
async fn a_reply_does_not_wait_for_the_requests_queued_behind_it() -> anyhow::Result<()> {
    use rpyc_client::{Op, ReturnMode, Value};
    use rpyc_protocol::{Message, RequestId, codec};

    let server = TestServer::start()?;
    let mut raw = crate::support::Raw::connect(&server).await?;
    let eval = |id: u64, expr: &str| Message::Request {
        id: RequestId(id),
        op: Op::Eval {
            expr: expr.to_owned(),
            mode: ReturnMode::Value,
        },
    };
    let mut both = bytes::BytesMut::new();
    for message in [
        eval(1, "40 + 2"),
        eval(2, "__import__('time').sleep(1.0) or 7"),
    ] {
        codec::encode_frame(&message, codec::DEFAULT_MAX_FRAME_BYTES, &mut both)?;
    }
    let started = Instant::now();
    raw.send_raw(&both).await?;
    let first = raw.recv().await?;
    let quick = started.elapsed();
    assert!(
        matches!(
            &first,
            Message::Response {
                id: RequestId(1),
                result: Ok(Value::Int(42))
            }
        ),
        "{first:?}"
    );
    assert!(
        quick < Duration::from_millis(500),
        "the quick reply took {quick:?}"
    );
    let second = raw.recv().await?;
    assert!(
        matches!(
            &second,
            Message::Response {
                id: RequestId(2),
                result: Ok(Value::Int(7))
            }
        ),
        "{second:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1000));

    let mut many = bytes::BytesMut::new();
    for i in 0..500u64 {
        codec::encode_frame(
            &eval(100 + i, &format!("{i} * 3")),
            codec::DEFAULT_MAX_FRAME_BYTES,
            &mut many,
        )?;
    }
    raw.send_raw(&many).await?;
    for i in 0..500u64 {
        match raw.recv().await? {
            Message::Response {
                id,
                result: Ok(Value::Int(v)),
            } => {
                assert_eq!((id, v), (RequestId(100 + i), i as i64 * 3));
            }
            other => anyhow::bail!("reply {i}: {other:?}"),
        }
    }
    Ok(())
}
