//! Resource soak: connection cycles leave threads and memory flat; many concurrent clients get
//! every reply right; thousands of random frames leave the server healthy.

use std::time::Duration;

use futures_util::StreamExt;
use rand_frames::Rng;
use rpyc_client::Connection;
use rpyc_integration_tests::TestServer;
use rpyc_protocol::{Message, Op, RequestId, ReturnMode, codec};
use tokio::io::AsyncWriteExt;

use crate::support::{Raw, assert_healthy, connect};

/// A tiny deterministic generator (xorshift), so failures reproduce without a rand dependency.
mod rand_frames {
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }
}

/// Threads and resident memory of a process, from /proc (Linux only).
#[cfg(target_os = "linux")]
fn threads_and_rss_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))?;
        Ok(line.split_whitespace().nth(1).unwrap_or_default().parse()?)
    };
    Ok((field("Threads:")?, field("VmRSS:")?))
}

/// Connections that leave without a request never reach Python: on a fresh server, whose
/// executor threads start with the first piece of Python work, connecting and closing starts
/// none, while the first request does.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn connections_without_requests_start_no_python_thread() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let pid = server.pid();
    // Let start-up threads settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (before, _) = threads_and_rss_kb(pid)?;
    for _ in 0..20 {
        Connection::connect(server.url()).await?.close().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after_idle, _) = threads_and_rss_kb(pid)?;
    assert_eq!(
        after_idle, before,
        "connect and close without a request changed the thread count"
    );
    // The first request does start Python work (so the count above could have moved).
    let conn = Connection::connect(server.url()).await?;
    assert_eq!(conn.eval::<i64>("1+1").await?, 2);
    let (after_request, _) = threads_and_rss_kb(pid)?;
    assert!(
        after_request > before,
        "a request should start an executor thread ({before} -> {after_request})"
    );
    conn.close().await;
    Ok(())
}

/// 1,000 connect/execute/disconnect cycles: the thread count returns to its baseline and RSS
/// grows by less than 16 MiB (allocator slack; a leak of one namespace or thread stack per
/// connection would exceed it).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn connection_cycles_leave_threads_and_memory_flat() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let pid = server.pid();
    let cycle = |i: u32| {
        let url = server.url();
        async move {
            let conn = Connection::connect(url).await?;
            conn.execute(&format!("data = list(range(1000))\nx = {i}"))
                .await?;
            let x: u32 = conn.eval("x").await?;
            anyhow::ensure!(x == i, "wrong answer");
            conn.close().await;
            anyhow::Ok(())
        }
    };
    for i in 0..50 {
        cycle(i).await?;
    }
    let settle = || async {
        let mut last = threads_and_rss_kb(pid)?;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = threads_and_rss_kb(pid)?;
            if now.0 == last.0 {
                return anyhow::Ok(now);
            }
            last = now;
        }
        anyhow::Ok(last)
    };
    let (threads_before, rss_before) = settle().await?;
    for i in 0..1000 {
        cycle(i).await?;
    }
    // Spare executor threads exit after 10 s idle: wait up to 20 s for the count to settle.
    let mut after = threads_and_rss_kb(pid)?;
    for _ in 0..1000 {
        if after.0 <= threads_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = threads_and_rss_kb(pid)?;
    }
    let (threads_after, rss_after) = after;
    println!(
        "1000 cycles: threads {threads_before} -> {threads_after}, RSS {rss_before} kB -> {rss_after} kB"
    );
    assert!(
        threads_after <= threads_before,
        "threads grew from {threads_before} to {threads_after}"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert_healthy(&server).await
}

/// 64 concurrent clients × 1,000 calls: every reply correct, none lost or swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_times_a_thousand_calls() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let mut tasks = Vec::new();
    for c in 0..64i64 {
        let conn = connect(&server).await?;
        tasks.push(tokio::spawn(async move {
            conn.execute(&format!("me = {c}")).await?;
            for i in 0..1000i64 {
                let (who, n): (i64, i64) = conn.eval(&format!("(me, {i} + me)")).await?;
                anyhow::ensure!(
                    who == c && n == i + c,
                    "client {c} call {i} got ({who}, {n})"
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert_healthy(&server).await
}

/// 10,000 random and mutated frames, then the server is alive and answers correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_frames() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let seeds: Vec<Vec<u8>> = [
        Op::Eval {
            expr: "1+1".into(),
            mode: ReturnMode::Value,
        },
        Op::Len {
            obj: rpyc_protocol::NetRefId(1),
        },
        Op::Namespace,
    ]
    .into_iter()
    .map(|op| {
        codec::encode(&Message::Request {
            id: RequestId(9),
            op,
        })
        .map(|b| b.to_vec())
    })
    .collect::<Result<_, _>>()?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut sent = 0;
    let mut connections = 0;
    while sent < 10_000 && connections < 200 {
        connections += 1;
        let Raw {
            mut read,
            mut write,
        } = Raw::connect(&server).await?;
        // Drain replies so the server never waits on us.
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = read.next().await {} });
        let per_connection = 500 + rng.below(1500);
        for _ in 0..per_connection {
            let frame = if rng.below(2) == 0 {
                let len = rng.below(200) as usize;
                (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
            } else {
                let mut f = seeds[rng.below(seeds.len() as u64) as usize].clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(f.len() as u64) as usize;
                    f[at] = rng.next() as u8;
                }
                f
            };
            sent += 1;
            let len = u32::try_from(frame.len())?.to_be_bytes();
            if write.write_all(&len).await.is_err() || write.write_all(&frame).await.is_err() {
                break; // the server closed this connection (e.g. a frame decoded as Goodbye)
            }
        }
        drop(write);
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
    assert!(
        sent >= 10_000,
        "only {sent} frames sent over {connections} connections"
    );
    println!("{sent} random frames over {connections} connections");
    assert_healthy(&server).await
}

/// A client that sends requests for big results and never reads the replies: the server stops
/// reading from it once its unsent replies pass the high-water mark, so memory stays bounded,
/// and other clients are served meanwhile.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_server_memory() -> anyhow::Result<()> {
    // 4 MiB frames: the high-water mark is then 64 MiB.
    let server = TestServer::builder()
        .arg("--max-frame-bytes")
        .arg((4 << 20).to_string())
        .start()?;
    let pid = server.pid();
    let (_, rss_before) = threads_and_rss_kb(pid)?;
    let Raw { read, mut write } = Raw::connect(&server).await?;
    // 400 requests for 1 MiB results each: 400 MiB if the server buffered them all.
    let request = |i: u64| {
        codec::encode(&Message::Request {
            id: RequestId(i),
            op: Op::Eval {
                expr: "b'z' * (1 << 20)".into(),
                mode: ReturnMode::Value,
            },
        })
    };
    let writer = tokio::spawn(async move {
        for i in 0..400 {
            let payload = request(i)?;
            let len = u32::try_from(payload.len())?.to_be_bytes();
            // Once the server stops reading, these writes block: give up after a while.
            let sent = tokio::time::timeout(Duration::from_secs(5), async {
                write.write_all(&len).await?;
                write.write_all(&payload).await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return anyhow::Ok((i, write));
            }
        }
        anyhow::Ok((400, write))
    });
    // Watch for three seconds: long enough for the server to work through whatever it read.
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(threads_and_rss_kb(pid)?.1);
    }
    // Meanwhile another client is served.
    assert_healthy(&server).await?;
    let (sent, write) = writer.await??;
    peak = peak.max(threads_and_rss_kb(pid)?.1);
    println!("sent {sent} requests unread; RSS {rss_before} kB -> peak {peak} kB");
    assert!(
        peak < rss_before + 200 * 1024,
        "RSS grew from {rss_before} kB to {peak} kB"
    );
    drop((read, write));
    assert_healthy(&server).await
}

/// Big requests sent faster than they run: the server queues at most about a frame's worth of
/// them (decoded arguments included), not all of them.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_requests_faster_than_they_run_are_not_all_buffered() -> anyhow::Result<()> {
    let server = TestServer::builder()
        .arg("--max-frame-bytes")
        .arg((8 << 20).to_string())
        .start()?;
    let pid = server.pid();
    let conn = connect(&server).await?;
    let slow_len = conn
        .eval_object("lambda b: __import__('time').sleep(0.05) or len(b)")
        .await?;
    let (_, rss_before) = threads_and_rss_kb(pid)?;
    // 40 calls with 4 MiB arguments, all sent at once: 160 MiB if the server queued them all.
    let payload = serde_bytes::ByteBuf::from(vec![7u8; 4 << 20]);
    let mut calls = Vec::new();
    for _ in 0..40 {
        let f = slow_len.clone();
        let arg = rpyc_client::Value::bytes(payload.to_vec());
        calls.push(tokio::spawn(
            async move { f.call_as::<usize>((arg,)).await },
        ));
    }
    let mut peak = 0;
    let watch = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(threads_and_rss_kb(pid)?.1);
        }
        anyhow::Ok(())
    };
    watch.await?;
    for call in calls {
        assert_eq!(call.await??, 4 << 20);
    }
    peak = peak.max(threads_and_rss_kb(pid)?.1);
    println!("40 x 4 MiB requests: RSS {rss_before} kB -> peak {peak} kB");
    assert!(
        peak < rss_before + 100 * 1024,
        "RSS grew from {rss_before} kB to {peak} kB"
    );
    assert_healthy(&server).await
}
