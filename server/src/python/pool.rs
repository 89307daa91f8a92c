//! The Python executor pool: a few OS threads that run every connection's requests.
//!
//! Why not one thread per connection: with one thread per connection, each small request of a
//! busy connection hands the GIL to another thread, and those hand-offs (a futex wake and a
//! context switch each) dominate when several connections are busy (issue 5). Here a thread
//! that holds the GIL keeps it and runs whatever requests are ready, of any connection, one
//! after another; the others sleep without it.
//!
//! What a connection keeps: its requests run in order, one at a time (a connection is
//! *scheduled* at most once). What it gives up: consecutive requests may run on different
//! threads, so `threading.local()` and `threading.get_ident()` are not per connection.
//!
//! A long call must not block other connections. A call counts as *stuck* once it has run
//! longer than [`STUCK_AFTER`] (a `time.sleep`, a long computation, a wait on I/O). When work is
//! ready and every busy thread is stuck, another thread is woken (or started) at once; a
//! watchdog checks every [`WATCHDOG_TICK`] for calls that became stuck after work queued behind
//! them. So one connection's long call delays another connection's request by at most about
//! `STUCK_AFTER`, plus the interpreter's switch interval when the long call holds the GIL.
//! Threads beyond [`MIN_IDLE_THREADS`] that stay idle for [`IDLE_EXIT_AFTER`] exit.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// A call running longer than this no longer counts as making progress for the queue.
const STUCK_AFTER: Duration = Duration::from_millis(1);
/// How often the watchdog looks for stuck threads while work waits.
const WATCHDOG_TICK: Duration = Duration::from_millis(1);
/// Idle threads kept alive at least.
const MIN_IDLE_THREADS: usize = 1;
/// An idle thread above the minimum exits after this long without work.
const IDLE_EXIT_AFTER: Duration = Duration::from_secs(10);
/// Most executor threads at once (each stuck call holds one).
const MAX_THREADS: usize = 4096;
/// Stack of an executor thread: what CPython's main thread usually gets, so deep recursion ends
/// in `RecursionError`, not a stack overflow. Pages are committed only when used.
const STACK_BYTES: usize = 8 * 1024 * 1024;

/// Work the pool runs: one connection's queue.
pub(super) trait Runnable: Send + Sync + 'static {
    /// Runs the next queued unit of work with the GIL held. Returns whether more is queued
    /// (the task is then put back at the end of the ready queue).
    fn run_next(&self, py: Python<'_>) -> bool;
}

#[derive(Default)]
struct State {
    ready: VecDeque<Arc<dyn Runnable>>,
    /// When each busy thread started its current unit of work, by executor slot.
    busy: Vec<Option<Instant>>,
    /// Threads waiting for work.
    idle: usize,
    /// Threads alive.
    threads: usize,
    /// Wake-ups sent to idle threads and not yet taken.
    wakeups: usize,
    /// Threads started and not yet looking for work.
    starting: usize,
}

impl State {
    /// Whether some busy thread is still making progress (it will take the next ready task
    /// soon, so waking another would only fight it for the GIL).
    fn has_progressing_thread(&self, now: Instant) -> bool {
        self.busy
            .iter()
            .flatten()
            .any(|since| now.duration_since(*since) < STUCK_AFTER)
    }
}

struct Pool {
    state: Mutex<State>,
    /// Idle executors wait here.
    work: Condvar,
    /// The watchdog waits here.
    watch: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("rpyc-py-watchdog".to_owned())
            .spawn(watchdog);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the executor watchdog");
        }
        Pool {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            watch: Condvar::new(),
        }
    })
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Queues a task that has work and is not queued or running already.
pub(super) fn schedule(task: Arc<dyn Runnable>) {
    let pool = pool();
    let mut state = lock(&pool.state);
    state.ready.push_back(task);
    if !state.has_progressing_thread(Instant::now()) {
        wake_one(pool, &mut state);
    } else {
        pool.watch.notify_one();
    }
}

/// Wakes an idle thread for the ready queue, or starts one.
fn wake_one(pool: &'static Pool, state: &mut State) {
    if state.wakeups > 0 || state.starting > 0 {
        // Help is already on its way.
    } else if state.idle > 0 {
        state.wakeups += 1;
        pool.work.notify_one();
    } else if state.threads < MAX_THREADS {
        let spawned = std::thread::Builder::new()
            .name("rpyc-py".to_owned())
            .stack_size(STACK_BYTES)
            .spawn(executor);
        match spawned {
            Ok(_) => {
                state.threads += 1;
                state.starting += 1;
            }
            Err(e) => tracing::error!(error = %e, "cannot start a Python executor thread"),
        }
    } else {
        tracing::warn!(
            threads = MAX_THREADS,
            "all Python executor threads are busy"
        );
    }
}

/// Takes the next ready task, waiting (without the GIL) while there is none. `None` means this
/// thread should exit.
fn next_task(py: Python<'_>, slot: &mut Option<usize>) -> Option<Arc<dyn Runnable>> {
    let pool = pool();
    let mut state = lock(&pool.state);
    if let Some(s) = slot.take() {
        state.busy[s] = None;
    }
    if state.ready.is_empty() {
        drop(state);
        // Wait without the GIL, so the other threads can run Python meanwhile.
        let found = py.detach(|| {
            let mut state = lock(&pool.state);
            state.idle += 1;
            let idle_since = Instant::now();
            let found = loop {
                if !state.ready.is_empty() {
                    break true;
                }
                let (guard, timeout) = pool
                    .work
                    .wait_timeout(state, IDLE_EXIT_AFTER)
                    .unwrap_or_else(PoisonError::into_inner);
                state = guard;
                if state.wakeups > 0 {
                    state.wakeups -= 1;
                }
                if timeout.timed_out()
                    && state.ready.is_empty()
                    && idle_since.elapsed() >= IDLE_EXIT_AFTER
                    && state.idle > MIN_IDLE_THREADS
                {
                    break false;
                }
            };
            state.idle -= 1;
            if !found {
                state.threads -= 1;
            }
            found
        });
        if !found {
            return None;
        }
        state = lock(&pool.state);
    }
    let task = state.ready.pop_front()?;
    let s = match state.busy.iter().position(Option::is_none) {
        Some(s) => s,
        None => {
            state.busy.push(None);
            state.busy.len() - 1
        }
    };
    state.busy[s] = Some(Instant::now());
    *slot = Some(s);
    if !state.ready.is_empty() {
        // More waits behind this task: let the watchdog keep an eye on it.
        pool.watch.notify_one();
    }
    Some(task)
}

/// An executor thread: attached to the interpreter for its whole life (so its thread state
/// persists), running ready tasks back to back while it holds the GIL.
fn executor() {
    Python::attach(|py| {
        if let Err(e) = super::worker::register_thread(py) {
            tracing::error!(error = %e, "cannot register a Python executor thread");
        }
        lock(&pool().state).starting -= 1;
        let mut slot = None;
        while let Some(task) = next_task(py, &mut slot) {
            if task.run_next(py) {
                let pool = pool();
                let mut state = lock(&pool.state);
                state.ready.push_back(task);
            }
        }
        super::worker::unregister_thread(py);
    });
}

/// Wakes another thread when every busy thread is stuck and work is waiting.
fn watchdog() {
    let pool = pool();
    let mut state = lock(&pool.state);
    loop {
        let waiting = !state.ready.is_empty();
        let timeout = if waiting {
            if !state.has_progressing_thread(Instant::now()) {
                wake_one(pool, &mut state);
            }
            WATCHDOG_TICK
        } else {
            Duration::from_secs(3600)
        };
        state = match pool.watch.wait_timeout(state, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}
