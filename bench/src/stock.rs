//! The workloads against stock `rpyc_classic.py`, driven by the stock Python client
//! (`bench/stock_client.py`, run with the venv's Python).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::plan::{Count, Workload};
use crate::procs::{Paths, PyClient};
use crate::stats::{Figure, Unit};

/// Longest a stock client run may take beyond its own budgets (start-up, connect, set-up).
const SLACK: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct RunOut {
    samples_ns: HashMap<String, Vec<u64>>,
}

/// Runs one workload with the stock client; returns its samples (nanoseconds).
pub(crate) fn run(
    paths: &Paths,
    script: &Path,
    addr: SocketAddr,
    w: &Workload,
    count: Count,
    budget: Duration,
) -> anyhow::Result<Vec<u64>> {
    let plan = serde_json::json!([{
        "id": w.id,
        "iters": count.iters,
        "warmup": count.warmup,
        "budget_s": budget.as_secs_f64(),
        "bytes": w.bytes,
    }]);
    let args = ["run".to_owned(), addr.port().to_string(), plan.to_string()];
    let client = PyClient::spawn(paths, script, &args)?;
    let mut out: RunOut = client.finish(budget * 2 + SLACK)?;
    out.samples_ns
        .remove(w.id)
        .with_context(|| format!("the stock client returned no samples for {}", w.id))
}

#[derive(Deserialize)]
struct ConcOut {
    start_ns: u64,
    end_ns: u64,
    samples_ns: Vec<u64>,
}

/// `clients` Python processes (as the baseline did), one connection each, each running `ops`
/// sequential `eval('1+1')` after a common start signal.
pub(crate) fn concurrent(
    paths: &Paths,
    script: &Path,
    addr: SocketAddr,
    clients: usize,
    ops: usize,
) -> anyhow::Result<Figure> {
    let args = ["conc".to_owned(), addr.port().to_string(), ops.to_string()];
    let mut procs = Vec::with_capacity(clients);
    for _ in 0..clients {
        procs.push(PyClient::spawn(paths, script, &args)?);
    }
    for p in &procs {
        match p.lines.next_line(SLACK) {
            Some(line) if line == "ready" => {}
            other => bail!("a stock client did not get ready: {other:?}"),
        }
    }
    for p in &mut procs {
        p.send_line("go")?;
    }
    let mut outs = Vec::with_capacity(clients);
    for p in procs {
        outs.push(p.finish::<ConcOut>(Duration::from_secs(120) + SLACK)?);
    }
    let start = outs.iter().map(|o| o.start_ns).min().unwrap_or(0);
    let end = outs.iter().map(|o| o.end_ns).max().unwrap_or(0);
    let samples: Vec<u64> = outs.into_iter().flat_map(|o| o.samples_ns).collect();
    let n = samples.len() as u64;
    let wall = Duration::from_nanos(end.saturating_sub(start));
    Ok(Figure::new(samples, Unit::Concurrent, Some((wall, n))))
}

#[derive(Deserialize)]
struct PipeOut {
    wall_ns: u64,
    samples_ns: Vec<u64>,
}

/// `total` `eval('1+1')` sent with `rpyc.async_` on one connection, `window` in flight at a
/// time.
pub(crate) fn pipelined(
    paths: &Paths,
    script: &Path,
    addr: SocketAddr,
    total: usize,
    window: usize,
) -> anyhow::Result<Figure> {
    let args = [
        "pipelined".to_owned(),
        addr.port().to_string(),
        total.to_string(),
        window.to_string(),
    ];
    let out: PipeOut =
        PyClient::spawn(paths, script, &args)?.finish(Duration::from_secs(120) + SLACK)?;
    let n = out.samples_ns.len() as u64;
    let wall = Duration::from_nanos(out.wall_ns);
    Ok(Figure::new(
        out.samples_ns,
        Unit::Concurrent,
        Some((wall, n)),
    ))
}

/// Opens `n` idle stock connections from one Python process, calls `measure` while they are
/// open, then closes them. Returns how many were opened and what `measure` returned.
pub(crate) fn hold_idle<T>(
    paths: &Paths,
    script: &Path,
    addr: SocketAddr,
    n: usize,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(usize, T)> {
    let args = ["hold".to_owned(), addr.port().to_string(), n.to_string()];
    let client = PyClient::spawn(paths, script, &args)?;
    let held = match client.lines.next_line(Duration::from_secs(120) + SLACK) {
        Some(line) if line.starts_with("ready ") => line["ready ".len()..].parse::<usize>()?,
        other => bail!("the stock client did not open its connections: {other:?}"),
    };
    std::thread::sleep(Duration::from_millis(500));
    let result = measure()?;
    let _: serde_json::Value = client.finish(SLACK)?;
    Ok((held, result))
}
