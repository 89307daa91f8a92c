//! The workloads against our `rpyc-classic`, driven by our async client from this process.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rpyc_client::{Connection, Error, Value};

use crate::plan::{Count, Workload};
use crate::stats::{Figure, Unit};

/// Runs `op` `count.warmup` times untimed, then up to `count.iters` times timed, each phase
/// stopping early once `budget` has passed. `prepare` runs before each timed call, untimed,
/// and hands its result to `op`.
async fn timed<P, T, F, Fut>(
    count: Count,
    budget: Duration,
    mut prepare: P,
    mut op: F,
) -> anyhow::Result<Vec<u64>>
where
    P: FnMut() -> T,
    F: FnMut(T) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + budget;
    for _ in 0..count.warmup {
        op(prepare()).await?;
        if Instant::now() > deadline {
            break;
        }
    }
    let mut samples = Vec::with_capacity(count.iters);
    let deadline = Instant::now() + budget;
    for _ in 0..count.iters {
        let input = prepare();
        let t0 = Instant::now();
        op(input).await?;
        samples.push(t0.elapsed().as_nanos() as u64);
        if Instant::now() > deadline {
            break;
        }
    }
    Ok(samples)
}

/// Runs one workload on a fresh connection and returns its samples (nanoseconds).
pub(crate) async fn run(
    addr: SocketAddr,
    w: &Workload,
    count: Count,
    budget: Duration,
) -> anyhow::Result<Vec<u64>> {
    let owned = Connection::connect(addr).await?;
    // Closures below copy these references into their futures.
    let conn = &owned;
    let size = usize::try_from(w.bytes)?;
    let samples = match w.id {
        "connect" => {
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    let c = Connection::connect(addr).await?;
                    c.close().await;
                    Ok(())
                },
            )
            .await?
        }
        "ping" => {
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    conn.ping().await?;
                    Ok(())
                },
            )
            .await?
        }
        "eval" => {
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    ensure!(conn.eval::<i64>("1+1").await? == 2);
                    Ok(())
                },
            )
            .await?
        }
        "getattr" => {
            let sys = &conn.modules().get("sys").await?;
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    ensure!(!sys.getattr_as::<String>("platform").await?.is_empty());
                    Ok(())
                },
            )
            .await?
        }
        "method_call" => {
            let d = &conn.eval_object("{'a': 1}").await?;
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    ensure!(d.call_method_as::<i64>("get", ("a",)).await? == 1);
                    Ok(())
                },
            )
            .await?
        }
        "bound_call" => {
            let d = conn.eval_object("{'a': 1}").await?;
            let get = &d.getattr("get").await?;
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    ensure!(get.call_as::<i64>(("a",)).await? == 1);
                    Ok(())
                },
            )
            .await?
        }
        "join" => {
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    // `modules().get` is cached on the connection, as stock's `conn.modules.os` is.
                    let path = conn.modules().get("os.path").await?;
                    let joined: String = path.call_method_as("join", ("a", "b")).await?;
                    ensure!(joined == "a/b");
                    Ok(())
                },
            )
            .await?
        }
        "join_chain" => {
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    let os = conn.modules().get("os").await?;
                    let join = os.getattr("path").await?.getattr("join").await?;
                    ensure!(join.call_as::<String>(("a", "b")).await? == "a/b");
                    Ok(())
                },
            )
            .await?
        }
        "exception" => {
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    match conn.eval::<i64>("1/0").await {
                        Err(Error::Remote(e)) if e.type_name == "ZeroDivisionError" => Ok(()),
                        other => bail!("expected ZeroDivisionError, got {other:?}"),
                    }
                },
            )
            .await?
        }
        "obtain_100k" => {
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    let l: Vec<i64> = conn.eval("list(range(100000))").await?;
                    ensure!(l.len() == 100_000);
                    Ok(())
                },
            )
            .await?
        }
        "iterate_10k" => {
            timed(
                count,
                budget,
                || (),
                move |()| async move {
                    let list = conn.eval_object("list(range(10000))").await?;
                    let mut it = list.iter_as::<i64>();
                    let mut n = 0;
                    while let Some(x) = it.next().await {
                        x?;
                        n += 1;
                    }
                    ensure!(n == 10_000);
                    Ok(())
                },
            )
            .await?
        }
        id if id.starts_with("download_") => {
            conn.execute(&format!("import os\nbench_blob = os.urandom({size})"))
                .await?;
            let samples = timed(
                count,
                budget,
                || (),
                move |()| async move {
                    match conn.eval_value("bench_blob").await? {
                        Value::Bytes(b) => ensure!(b.len() == size),
                        other => bail!("expected bytes, got {}", other.type_name()),
                    }
                    Ok(())
                },
            )
            .await?;
            conn.execute("del bench_blob").await?;
            samples
        }
        id if id.starts_with("upload_") => {
            let payload = random_bytes(size);
            let len = &conn.builtins().await?.getattr("len").await?;
            // The argument is an owned `Value`; its copy is made before the clock starts.
            timed(
                count,
                budget,
                || Value::bytes(payload.clone()),
                move |arg| async move {
                    ensure!(len.call_as::<usize>((arg,)).await? == size);
                    Ok(())
                },
            )
            .await?
        }
        other => bail!("unknown workload {other}"),
    };
    conn.close().await;
    Ok(samples)
}

/// Incompressible bytes (xorshift64*), made locally so the bench needs no RNG crate.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// `clients` connections, each running `ops` sequential `eval('1+1')` in its own task.
pub(crate) async fn concurrent(
    addr: SocketAddr,
    clients: usize,
    ops: usize,
    budget: Duration,
) -> anyhow::Result<Figure> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        let conn = Connection::connect(addr).await?;
        for _ in 0..200 {
            conn.eval::<i64>("1+1").await?;
        }
        conns.push(conn);
    }
    let t0 = Instant::now();
    let deadline = t0 + budget;
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        tasks.spawn(async move {
            let samples = eval_loop(&conn, ops, deadline).await;
            conn.close().await;
            samples
        });
    }
    let samples = join_samples(tasks).await?;
    let wall = t0.elapsed();
    let n = samples.len() as u64;
    Ok(Figure::new(samples, Unit::Concurrent, Some((wall, n))))
}

/// Up to `ops` sequential `eval('1+1')` on `conn` until `deadline`: the time of each, in ns.
async fn eval_loop(conn: &Connection, ops: usize, deadline: Instant) -> anyhow::Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(ops);
    for _ in 0..ops {
        let t = Instant::now();
        ensure!(conn.eval::<i64>("1+1").await? == 2);
        samples.push(t.elapsed().as_nanos() as u64);
        if Instant::now() > deadline {
            break;
        }
    }
    Ok(samples)
}

/// One connection cloned into `tasks` tasks, each running `ops` sequential `eval('1+1')`: up
/// to `tasks` requests in flight on one socket.
pub(crate) async fn pipelined(
    addr: SocketAddr,
    tasks_n: usize,
    ops: usize,
    budget: Duration,
) -> anyhow::Result<Figure> {
    let conn = Connection::connect(addr).await?;
    for _ in 0..200 {
        conn.eval::<i64>("1+1").await?;
    }
    let t0 = Instant::now();
    let deadline = t0 + budget;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..tasks_n {
        let conn = conn.clone();
        tasks.spawn(async move { eval_loop(&conn, ops, deadline).await });
    }
    let samples = join_samples(tasks).await?;
    let wall = t0.elapsed();
    conn.close().await;
    let n = samples.len() as u64;
    Ok(Figure::new(samples, Unit::Concurrent, Some((wall, n))))
}

async fn join_samples(
    mut tasks: tokio::task::JoinSet<anyhow::Result<Vec<u64>>>,
) -> anyhow::Result<Vec<u64>> {
    let mut all = Vec::new();
    while let Some(res) = tasks.join_next().await {
        all.extend(res.context("a bench task panicked")??);
    }
    Ok(all)
}

/// Opens `n` idle connections, waits for the server to settle, calls `measure`, then closes
/// them. Returns how many were opened and what `measure` returned.
pub(crate) async fn hold_idle<T>(
    addr: SocketAddr,
    n: usize,
    budget: Duration,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(usize, T)> {
    let deadline = Instant::now() + budget;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Connection::connect(addr).await?);
        if Instant::now() > deadline {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = conns.len();
    let result = measure()?;
    for c in &conns {
        c.close().await;
    }
    Ok((held, result))
}
