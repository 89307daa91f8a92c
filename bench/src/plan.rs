//! The workloads, their iteration counts and time budgets: one table for both sides, so ours
//! and stock run the same payloads.

use std::time::Duration;

use serde::Serialize;

use crate::stats::Unit;

/// One mebibyte.
pub(crate) const MIB: u64 = 1 << 20;

/// What a workload's "ours / floor" ratio is taken against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FloorRef {
    /// The 16-byte loopback round trip.
    Rtt,
    /// The bulk loopback throughput.
    Bulk,
    /// No meaningful floor.
    None,
}

/// Iterations of one side: timed, and untimed warm-ups before them.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Count {
    /// Timed iterations (at most; the time budget may stop earlier).
    pub(crate) iters: usize,
    /// Untimed iterations first.
    pub(crate) warmup: usize,
}

/// A single-connection workload run on both sides.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Workload {
    /// Short name, also used by `--only` and by the stock client script.
    pub(crate) id: &'static str,
    /// What is measured, for the table.
    pub(crate) label: &'static str,
    /// What one sample is.
    pub(crate) unit: Unit,
    /// Our iterations.
    pub(crate) ours: Count,
    /// Stock iterations (`None`: stock reuses another workload's samples, see `stock_as`).
    pub(crate) stock: Option<Count>,
    /// For workloads stock runs the same way as another one: that one's id.
    pub(crate) stock_as: Option<&'static str>,
    /// The floor for "ours / floor".
    pub(crate) floor: FloorRef,
    /// Payload size in bytes for transfers.
    pub(crate) bytes: u64,
}

const fn c(iters: usize, warmup: usize) -> Count {
    Count { iters, warmup }
}

const fn op(
    id: &'static str,
    label: &'static str,
    ours: Count,
    stock: Count,
    floor: FloorRef,
) -> Workload {
    Workload {
        id,
        label,
        unit: Unit::Op,
        ours,
        stock: Some(stock),
        stock_as: None,
        floor,
        bytes: 0,
    }
}

const fn transfer(
    id: &'static str,
    label: &'static str,
    mib: u64,
    ours: Count,
    stock: Count,
) -> Workload {
    Workload {
        id,
        label,
        unit: Unit::Bytes(mib * MIB),
        ours,
        stock: Some(stock),
        stock_as: None,
        floor: FloorRef::Bulk,
        bytes: mib * MIB,
    }
}

/// The single-connection workloads, in the order they run (full-run counts).
pub(crate) fn workloads() -> Vec<Workload> {
    use FloorRef::{None as NoFloor, Rtt};
    vec![
        op(
            "connect",
            "connect + handshake + close",
            c(1000, 50),
            c(300, 20),
            Rtt,
        ),
        op("ping", "ping", c(20_000, 1000), c(5000, 200), Rtt),
        op("eval", "eval('1+1')", c(20_000, 1000), c(5000, 200), Rtt),
        op(
            "getattr",
            "sys.platform (getattr, module cached)",
            c(20_000, 1000),
            c(5000, 200),
            Rtt,
        ),
        op(
            "method_call",
            "d.get('a') on a remote dict",
            c(20_000, 1000),
            c(5000, 200),
            Rtt,
        ),
        op(
            "bound_call",
            "g('a'), g = d.get bound once",
            c(20_000, 1000),
            c(5000, 200),
            Rtt,
        ),
        op(
            "join",
            "os.path.join('a','b') via modules",
            c(20_000, 1000),
            c(3000, 100),
            Rtt,
        ),
        Workload {
            id: "join_chain",
            label: "os.path.join as getattr, getattr, call",
            unit: Unit::Op,
            ours: c(10_000, 500),
            stock: None,
            stock_as: Some("join"),
            floor: Rtt,
            bytes: 0,
        },
        op(
            "exception",
            "eval('1/0'), exception caught",
            c(20_000, 1000),
            c(3000, 100),
            Rtt,
        ),
        op(
            "obtain_100k",
            "obtain list(range(100000))",
            c(200, 10),
            c(30, 3),
            NoFloor,
        ),
        transfer(
            "download_1m",
            "download 1 MiB urandom",
            1,
            c(200, 10),
            c(20, 2),
        ),
        transfer(
            "download_16m",
            "download 16 MiB urandom",
            16,
            c(30, 3),
            c(5, 1),
        ),
        transfer(
            "download_64m",
            "download 64 MiB urandom",
            64,
            c(10, 1),
            c(3, 0),
        ),
        transfer(
            "upload_1m",
            "upload 1 MiB urandom (len(b))",
            1,
            c(200, 10),
            c(20, 2),
        ),
        transfer("upload_16m", "upload 16 MiB urandom", 16, c(30, 3), c(5, 1)),
        transfer("upload_64m", "upload 64 MiB urandom", 64, c(10, 1), c(3, 0)),
        op(
            "iterate_10k",
            "iterate a 10k-item remote list",
            c(200, 10),
            c(5, 1),
            NoFloor,
        ),
    ]
}

/// Run-wide settings.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Settings {
    /// `--quick`: about a tenth of the iterations.
    pub(crate) quick: bool,
    /// Longest time one side of one workload may take (warm-ups and timed part each).
    pub(crate) budget: Duration,
    /// Connections of the concurrency workload (one task or process each).
    pub(crate) conc_clients: usize,
    /// Sequential evals per connection in the concurrency workload.
    pub(crate) conc_ops: usize,
    /// Tasks sharing one connection in the pipelined workload (ours).
    pub(crate) pipe_tasks: usize,
    /// Evals per task in the pipelined workload (ours).
    pub(crate) pipe_ops: usize,
    /// Requests in flight per window in stock's pipelined workload.
    pub(crate) pipe_window: usize,
    /// Requests in stock's pipelined workload (fewer than ours: stock's `async_` slows down
    /// badly with several requests in flight).
    pub(crate) pipe_stock_total: usize,
    /// Idle connections held for the memory figure, ours.
    pub(crate) idle_conns_ours: usize,
    /// Idle connections held for the memory figure, stock.
    pub(crate) idle_conns_stock: usize,
}

impl Settings {
    /// The settings of a full or a quick run.
    pub(crate) fn new(quick: bool) -> Settings {
        Settings {
            quick,
            budget: Duration::from_secs(if quick { 3 } else { 12 }),
            conc_clients: 8,
            conc_ops: if quick { 300 } else { 2000 },
            pipe_tasks: 64,
            pipe_ops: if quick { 150 } else { 1000 },
            pipe_window: 64,
            pipe_stock_total: if quick { 640 } else { 4096 },
            idle_conns_ours: 1000,
            idle_conns_stock: 200,
        }
    }

    /// A count scaled for this run.
    pub(crate) fn scale(&self, count: Count) -> Count {
        if self.quick {
            Count {
                iters: (count.iters / 10).max(1),
                warmup: (count.warmup / 10).max(count.warmup.min(1)),
            }
        } else {
            count
        }
    }
}
