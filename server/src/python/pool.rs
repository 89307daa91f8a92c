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
//!
//! Waking a sleeping thread costs a futex wake and, on a virtual machine whose other CPU is
//! halted, tens of microseconds before it runs: more than `eval('1+1')` itself. So a thread that
//! has just run a lone request (one request, then nothing queued) of the same connection as the
//! lone request before (a client calling in a loop, each call waiting for the last) first polls
//! for the next one for a while ([`set_spin`], `--spin-us`; 100 µs by default), yielding its
//! CPU to any other runnable thread meanwhile, and only then sleeps. At most one thread polls at
//! a time, and none after a burst of work (pipelined requests) or after lone requests of
//! different connections (several clients): there the readers need the CPUs, and a polling
//! thread makes its CPU look busy, so woken threads crowd onto the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
/// How long an idle thread polls for the next request after a lone one, in microseconds.
static SPIN_MICROS: AtomicU64 = AtomicU64::new(DEFAULT_SPIN.as_micros() as u64);
/// The default of [`set_spin`].
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);
/// The length of the ready queue, readable without the lock (for the polling thread).
static READY: AtomicUsize = AtomicUsize::new(0);

/// Longest polling [`set_spin`] accepts.
pub const MAX_SPIN: Duration = Duration::from_secs(1);

/// Sets how long an idle executor thread polls for the next request after running a lone one
/// (see the module documentation), at most [`MAX_SPIN`]; zero turns polling off.
pub fn set_spin(spin: Duration) {
    SPIN_MICROS.store(
        u64::try_from(spin.min(MAX_SPIN).as_micros()).unwrap_or(0),
        Ordering::Relaxed,
    );
}

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
    /// A thread polls for work before it sleeps (at most one does).
    polling: bool,
    /// The watchdog is checking every tick (or has been asked to): it needs no wake-up.
    watching: bool,
}

impl State {
    /// Has the watchdog check every tick while work waits, waking it only if it sleeps.
    fn watch(&mut self, pool: &Pool) {
        if !self.watching {
            self.watching = true;
            pool.watch.notify_one();
        }
    }

    /// Records a change of the ready queue for the polling thread.
    fn ready_changed(&self) {
        READY.store(self.ready.len(), Ordering::Release);
    }

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
    state.ready_changed();
    if !state.has_progressing_thread(Instant::now()) {
        wake_one(pool, &mut state);
    } else {
        state.watch(pool);
    }
}

/// Wakes an idle thread for the ready queue, or starts one.
fn wake_one(pool: &'static Pool, state: &mut State) {
    if state.wakeups > 0 || state.starting > 0 || state.polling {
        // Help is already on its way (a polling thread sees the queue without a wake-up).
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

/// Takes the next ready task, waiting (without the GIL) while there is none, after polling for
/// one first if `poll` (see the module documentation). `None` means this thread should exit.
fn next_task(py: Python<'_>, slot: &mut Option<usize>, poll: bool) -> Option<Arc<dyn Runnable>> {
    let pool = pool();
    let mut state = lock(&pool.state);
    if let Some(s) = slot.take() {
        state.busy[s] = None;
    }
    if state.ready.is_empty() {
        let spin = Duration::from_micros(SPIN_MICROS.load(Ordering::Relaxed));
        let poll = poll && !spin.is_zero() && !state.polling;
        if poll {
            state.polling = true;
        }
        drop(state);
        // Wait without the GIL, so the other threads can run Python meanwhile.
        let found = py.detach(|| {
            if poll {
                let until = Instant::now() + spin;
                while READY.load(Ordering::Acquire) == 0 && Instant::now() < until {
                    std::thread::yield_now();
                }
            }
            let mut state = lock(&pool.state);
            if poll {
                state.polling = false;
            }
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
    state.ready_changed();
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
        state.watch(pool);
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
        // Units of work run since this thread last found the queue empty, the task of the
        // first, and the task of the last such stretch that was a lone unit.
        let (mut ran, mut first, mut last_lone) = (0usize, 0usize, 0usize);
        loop {
            let will_wait = READY.load(Ordering::Acquire) == 0;
            // Poll after a lone unit of the same task as the last lone one: one client calling
            // in a loop. Lone units of different tasks are several clients, whose readers and
            // threads need the CPUs more than this thread needs a quick wake-up.
            let lone = (will_wait && ran == 1).then_some(first);
            let poll = lone.is_some_and(|task| task == last_lone);
            if will_wait {
                last_lone = lone.unwrap_or(0);
            }
            let Some(task) = next_task(py, &mut slot, poll) else {
                break;
            };
            if will_wait {
                ran = 0;
                first = Arc::as_ptr(&task).cast::<()>() as usize;
            }
            ran += 1;
            if task.run_next(py) {
                let pool = pool();
                let mut state = lock(&pool.state);
                state.ready.push_back(task);
                state.ready_changed();
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
        // Ticking, nobody needs to wake it; asleep, the next task queued behind a busy thread
        // does (set and waited on under the same lock, so no wake-up is lost).
        state.watching = waiting;
        state = match pool.watch.wait_timeout(state, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}
