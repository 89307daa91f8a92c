//! A connection's Python side: its command queue, namespace, object table and compiled-code
//! cache.
//!
//! Commands run on the executor pool (the `pool` module): in order and one at a time per
//! connection, on whichever executor thread holds the GIL, which keeps it while any connection
//! has work (no GIL hand-off per call). Each reply goes through the connection's
//! [`ReplySink`]: a result is serialized from the Python objects straight into the outgoing
//! frame buffer. A long call on one connection never blocks another: the pool gives the others
//! another thread (see `pool`).
//!
//! Cancellation (issue 3): a cancel for the running request raises `CancelledByClient` in the
//! executor thread running it with `PyThreadState_SetAsyncExc` and wakes a `time.sleep` in progress. Pure
//! Python code is interrupted at the next bytecode boundary; C code that holds the GIL (a long
//! `re` match, a C extension's loop) is interrupted only when it returns to the interpreter.

use std::collections::VecDeque;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyModule, PyString, PyTuple};
use rpyc_protocol::{
    Args, CompareOp, Message, NetRefId, Op, RequestId, ReturnMode, ServerError, Value,
};

use super::blob::Blobs;
use super::convert::{
    ConvertError, EncodeFailure, Reply, encode_reply, from_value, panic_message, to_value,
};
use super::exception::to_remote;
use super::init::SUPPORT;
use super::objects::ObjectTable;
use super::pool;

/// Bytes sent from their owner's memory instead of being copied into the frame buffer (a
/// large Python `bytes` result). Dropping it may happen on any thread, without the GIL.
pub type SharedBytes = Box<dyn AsRef<[u8]> + Send + Sync>;

/// The byte strings of frames being encoded that were not copied into the frame buffer, each
/// with its position in the buffer (it is sent right after the bytes before that position).
pub type SharedList = Vec<(usize, SharedBytes)>;

/// Where a worker's replies go: the connection's outgoing frames. Called on the worker thread
/// with the GIL held, so it must never wait for anything that may itself wait for the GIL.
pub trait ReplySink: Send + Sync + 'static {
    /// Sends a complete message (an error, a value computed in Rust).
    fn send(&self, message: &Message);

    /// Whether a new request may start: false while the client is not reading its replies and
    /// they pile up. The worker then waits (without a thread) until [`Worker::resume`].
    fn has_room(&self) -> bool {
        true
    }

    /// Appends frames encoded in place. `encode` gets the outgoing buffer, a list for byte
    /// strings it did not copy (each with its position in the buffer: it is sent right after
    /// the bytes before that position), and the frame limit. It appends whole frames only: on
    /// failure it leaves both as they were. The sink holds its lock meanwhile, so frames keep
    /// their order. Not called once the connection is closed.
    fn send_with(&self, encode: &mut dyn FnMut(&mut BytesMut, &mut SharedList, usize));

    /// [`send_with`](Self::send_with) for a reply with more of the connection's requests
    /// queued behind it: it may be left for a batched write rather than written at once.
    fn send_with_more_queued(&self, encode: &mut dyn FnMut(&mut BytesMut, &mut SharedList, usize)) {
        self.send_with(encode);
    }
}

/// Largest iteration batch a client may ask for.
const MAX_BATCH: u32 = 65_536;
/// Compiled snippets kept per connection (the cache is emptied when it grows past this).
const CODE_CACHE_LIMIT: usize = 512;
/// Snippets longer than this are compiled each time rather than cached.
const CODE_CACHE_MAX_LEN: usize = 4096;
/// Stale cancel ids kept at most (cancels that arrived after their request finished).
const MAX_PENDING_CANCELS: usize = 1024;

enum Command {
    Run {
        id: RequestId,
        op: Op,
        /// The `bytes` objects of the request's blobs, if it came in a blob frame.
        blobs: Blobs,
        span: tracing::Span,
    },
    Release(Vec<NetRefId>),
    /// The connection ended: free its objects and namespace.
    Close,
}

/// State shared between the connection's async side and whichever executor thread runs it.
#[derive(Debug)]
struct Shared {
    conn_id: u64,
    /// Id + 1 of the request running now, 0 when idle.
    running: AtomicU64,
    /// `threading.get_ident()` of the executor thread running that request.
    running_on: AtomicU64,
    /// Requests the client cancelled (running or not started yet).
    cancelled: Mutex<HashSet<RequestId>>,
    /// Requests submitted and not answered yet.
    in_flight: AtomicUsize,
    /// Signalled each time a request has been answered.
    answered: tokio::sync::Notify,
}

/// Commands waiting to run, and whether the pool has the connection queued or running.
#[derive(Default)]
struct Queue {
    commands: VecDeque<Command>,
    scheduled: bool,
}

/// One connection as the executor pool sees it.
struct Conn {
    shared: Arc<Shared>,
    sink: Arc<dyn ReplySink>,
    queue: Mutex<Queue>,
    /// Created by the first command that runs (it needs the GIL); `None` again once closed.
    state: Mutex<Option<ConnState>>,
    /// Parked because the reply sink had no room.
    congested: std::sync::atomic::AtomicBool,
    /// The connection ended: queued requests are dropped.
    closing: std::sync::atomic::AtomicBool,
}

impl Conn {
    fn push(self: &Arc<Self>, cmd: Command) {
        let schedule = {
            let mut queue = lock(&self.queue);
            queue.commands.push_back(cmd);
            !std::mem::replace(&mut queue.scheduled, true)
        };
        if schedule {
            pool::schedule(Arc::clone(self) as Arc<dyn pool::Runnable>);
        }
    }
}

impl pool::Runnable for Conn {
    fn run_next(&self, py: Python<'_>) -> bool {
        // The command, and whether more of the connection's commands wait behind it.
        let (cmd, more_queued) = {
            let mut queue = lock(&self.queue);
            let starts_request = matches!(queue.commands.front(), Some(Command::Run { .. }));
            if starts_request && self.closing.load(Ordering::SeqCst) {
                // The connection is gone: nobody waits for these answers.
                queue.commands.retain(|c| !matches!(c, Command::Run { .. }));
                self.shared.in_flight.store(0, Ordering::SeqCst);
            } else if starts_request && !self.sink.has_room() {
                // Replies pile up unread: park until the connection says there is room again,
                // and wake its reader so it notices.
                queue.scheduled = false;
                self.congested.store(true, Ordering::SeqCst);
                self.shared.answered.notify_one();
                return false;
            }
            match queue.commands.pop_front() {
                Some(cmd) => (cmd, !queue.commands.is_empty()),
                None => {
                    queue.scheduled = false;
                    return false;
                }
            }
        };
        {
            let mut state = lock(&self.state);
            if matches!(cmd, Command::Close) {
                if let Some(conn) = state.take() {
                    tracing::debug!(
                        conn = self.shared.conn_id,
                        objects = conn.table.len(),
                        "freeing the connection's objects"
                    );
                    conn.close(py);
                }
            } else {
                if state.is_none() {
                    match ConnState::new(py, Arc::clone(&self.shared)) {
                        Ok(conn) => *state = Some(conn),
                        Err(e) => tracing::error!(
                            conn = self.shared.conn_id,
                            error = %super::exception::describe(py, &e),
                            "cannot set up the connection's namespace"
                        ),
                    }
                }
                match state.as_mut() {
                    Some(conn) => conn.handle(py, cmd, &*self.sink, more_queued),
                    None => {
                        if let Command::Run { id, .. } = cmd {
                            self.sink.send(&Message::Response {
                                id,
                                result: Err(ServerError::InvalidRequest(
                                    "the connection's Python namespace could not be created"
                                        .to_owned(),
                                )),
                            });
                            self.shared.finished();
                        }
                    }
                }
            }
        }
        let mut queue = lock(&self.queue);
        queue.scheduled = !queue.commands.is_empty();
        queue.scheduled
    }
}

impl Shared {
    /// A request has been answered.
    fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.answered.notify_one();
    }
}

/// Handle to a connection's Python side. Dropping it interrupts a running call and frees every
/// object the connection held.
pub struct Worker {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("conn", &self.conn.shared.conn_id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Sets up the Python side of connection `conn_id`; its requests run on the executor pool
    /// (see the `pool` module), in order, one at a time. No thread is started for it.
    pub fn new(conn_id: u64, reply: Arc<dyn ReplySink>) -> Worker {
        let shared = Arc::new(Shared {
            conn_id,
            running: AtomicU64::new(0),
            running_on: AtomicU64::new(0),
            cancelled: Mutex::new(HashSet::new()),
            in_flight: AtomicUsize::new(0),
            answered: tokio::sync::Notify::new(),
        });
        Worker {
            conn: Arc::new(Conn {
                shared,
                sink: reply,
                queue: Mutex::new(Queue::default()),
                state: Mutex::new(None),
                congested: std::sync::atomic::AtomicBool::new(false),
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Queues a request (with the blobs it came with); its reply goes to the [`ReplySink`].
    pub fn submit(&self, id: RequestId, op: Op, blobs: Blobs) {
        let span = tracing::debug_span!("request", conn = self.conn.shared.conn_id, id = id.0);
        self.conn.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        self.conn.push(Command::Run {
            id,
            op,
            blobs,
            span,
        });
    }

    /// Requests submitted and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.conn.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Completes when a request has been answered since the last call (at once if one was
    /// answered meanwhile).
    pub async fn answered(&self) {
        self.conn.shared.answered.notified().await;
    }

    /// Whether requests wait because the reply sink had no room (see [`ReplySink::has_room`]).
    pub fn is_congested(&self) -> bool {
        self.conn.congested.load(Ordering::SeqCst)
    }

    /// Lets parked requests run again once the reply sink has room.
    pub fn resume(&self) {
        if self.conn.congested.swap(false, Ordering::SeqCst) {
            let schedule = {
                let mut queue = lock(&self.conn.queue);
                let start = !queue.scheduled && !queue.commands.is_empty();
                queue.scheduled |= start;
                start
            };
            if schedule {
                pool::schedule(Arc::clone(&self.conn) as Arc<dyn pool::Runnable>);
            }
        }
    }

    /// Frees references the client dropped.
    pub fn release(&self, ids: Vec<NetRefId>) {
        self.conn.push(Command::Release(ids));
    }

    /// Cancels a request: skipped if it has not started, interrupted if it is running.
    pub fn cancel(&self, id: RequestId) {
        let shared = &self.conn.shared;
        {
            let mut cancelled = lock(&shared.cancelled);
            if cancelled.len() >= MAX_PENDING_CANCELS {
                cancelled.clear();
            }
            cancelled.insert(id);
        }
        if shared.running.load(Ordering::SeqCst) == id.0 + 1 {
            interrupt(shared, id.0 + 1);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Interrupt what runs so the connection's objects are freed now rather than when the
        // call finishes; queued requests are dropped.
        let shared = &self.conn.shared;
        self.conn.closing.store(true, Ordering::SeqCst);
        let running = shared.running.load(Ordering::SeqCst);
        if running != 0 {
            lock(&shared.cancelled).insert(RequestId(running - 1));
            interrupt(shared, running);
        }
        // A connection that never ran anything has nothing in Python to free: no executor
        // thread needs waking (connect-and-close health checks, idle connections).
        {
            let queue = lock(&self.conn.queue);
            if queue.commands.is_empty() && !queue.scheduled && lock(&self.conn.state).is_none() {
                return;
            }
        }
        self.conn.push(Command::Close);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// `threading.get_ident()` of this executor thread.
    static THREAD_IDENT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Registers an executor thread with the support module (its interruptible `time.sleep`).
pub(super) fn register_thread(py: Python<'_>) -> PyResult<()> {
    let support = SUPPORT.get(py).ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err("rpyc-classic support module not loaded")
    })?;
    let ident: u64 = support
        .bind(py)
        .call_method0("register_worker")?
        .extract()?;
    THREAD_IDENT.with(|t| t.set(ident));
    Ok(())
}

/// Undoes [`register_thread`] when an executor thread exits.
pub(super) fn unregister_thread(py: Python<'_>) {
    if let Some(support) = SUPPORT.get(py) {
        let _ = support.bind(py).call_method0("unregister_worker");
    }
}

/// Raises `CancelledByClient` in the executor thread still running request `running` (id + 1).
///
/// Runs on a short-lived thread of its own: taking the GIL may wait for as long as the running
/// C code holds it, and neither a tokio worker nor the connection's reader may wait that long.
fn interrupt(shared: &Arc<Shared>, running: u64) {
    let conn_id = shared.conn_id;
    let shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("rpyc-cancel-{conn_id}"))
        .spawn(move || {
            Python::attach(|py| {
                // The executor changes `running` only while it holds the GIL, and we hold it
                // now, so the request cannot finish between this check and the exception being
                // set.
                if shared.running.load(Ordering::SeqCst) != running {
                    return;
                }
                let Some(support) = SUPPORT.get(py) else {
                    return;
                };
                let ident = shared.running_on.load(Ordering::SeqCst);
                if let Ok(cls) = support.bind(py).getattr("CancelledByClient") {
                    // SAFETY: GIL held; `cls` is a live exception class. The thread id is an
                    // unsigned long in CPython, declared as a long by pyo3-ffi.
                    unsafe { ffi::PyThreadState_SetAsyncExc(ident as _, cls.as_ptr()) };
                }
                let _ = support.bind(py).call_method1("wake", (ident,));
                tracing::debug!(conn = shared.conn_id, request = running - 1, "interrupted");
            });
        });
    if let Err(e) = spawned {
        tracing::error!(conn = conn_id, error = %e, "cannot start a thread to cancel a call");
    }
}

struct ConnState {
    shared: Arc<Shared>,
    namespace: Py<PyDict>,
    builtins: Py<PyModule>,
    import_module: Py<PyAny>,
    compile: Py<PyAny>,
    support: Py<PyModule>,
    table: ObjectTable,
    /// Compiled snippets: `[exec, eval]`.
    code_cache: [HashMap<String, Py<PyAny>>; 2],
}

impl ConnState {
    fn new(py: Python<'_>, shared: Arc<Shared>) -> PyResult<Self> {
        let support = SUPPORT
            .get(py)
            .ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("rpyc-classic support module not loaded")
            })?
            .clone_ref(py);
        let builtins = py.import("builtins")?;
        let namespace = PyDict::new(py);
        namespace.set_item("__builtins__", &builtins)?;
        namespace.set_item("__name__", "__main__")?;
        Ok(ConnState {
            shared,
            namespace: namespace.unbind(),
            import_module: py.import("importlib")?.getattr("import_module")?.unbind(),
            compile: builtins.getattr("compile")?.unbind(),
            builtins: builtins.unbind(),
            support,
            table: ObjectTable::default(),
            code_cache: [HashMap::new(), HashMap::new()],
        })
    }

    fn close(mut self, py: Python<'_>) {
        self.table.clear(py);
        self.code_cache = [HashMap::new(), HashMap::new()];
        self.namespace.bind(py).clear();
    }

    /// Runs one command; `more_queued`: more of the connection's commands wait behind it.
    fn handle(&mut self, py: Python<'_>, cmd: Command, reply: &dyn ReplySink, more_queued: bool) {
        match cmd {
            Command::Release(ids) => self.table.release(py, &ids),
            // Handled by the caller, which owns the state.
            Command::Close => {}
            Command::Run {
                id,
                op,
                blobs,
                span,
            } => {
                let _entered = span.enter();
                let _blobs = blobs.scope();
                if lock(&self.shared.cancelled).remove(&id) {
                    reply.send(&Message::Response {
                        id,
                        result: Err(ServerError::Cancelled),
                    });
                    self.shared.finished();
                    return;
                }
                let ident = THREAD_IDENT.with(std::cell::Cell::get);
                self.shared.running_on.store(ident, Ordering::SeqCst);
                self.shared.running.store(id.0 + 1, Ordering::SeqCst);
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.op(py, op)))
                    .unwrap_or_else(|panic| Err(self.internal_error(id, &panic_message(&*panic))));
                self.shared.running.store(0, Ordering::SeqCst);
                let result = if lock(&self.shared.cancelled).remove(&id) {
                    // A cancel raced with the end of the call: drop any exception still pending
                    // for this thread so it cannot hit the next request.
                    // SAFETY: GIL held; a null exception clears the pending one.
                    unsafe { ffi::PyThreadState_SetAsyncExc(ident as _, std::ptr::null_mut()) };
                    let _ = self.support.bind(py).call_method0("reset_wakeup");
                    Err(ServerError::Cancelled)
                } else {
                    result
                };
                self.reply(py, id, result, reply, more_queued);
                self.shared.finished();
            }
        }
    }

    /// Writes the response of request `id`. A result is serialized straight into the outgoing
    /// buffer; if it cannot be (an object that cannot be copied, a result too large for a
    /// frame), nothing of it is left there and the request gets the error instead.
    fn reply(
        &mut self,
        py: Python<'_>,
        id: RequestId,
        result: Result<Reply<'_>, ServerError>,
        sink: &dyn ReplySink,
        more_queued: bool,
    ) {
        let reply = match result {
            Ok(Reply::Value(value)) => Ok(value),
            Err(e) => Err(e),
            Ok(reply) => {
                let mut outcome = Ok(());
                let mut encode = |buf: &mut BytesMut, shared: &mut SharedList, max| {
                    outcome = encode_reply(py, id, &reply, &mut self.table, max, buf, shared);
                };
                // With more requests queued behind this one (pipelining), replies go out
                // batched.
                if more_queued {
                    sink.send_with_more_queued(&mut encode);
                } else {
                    sink.send_with(&mut encode);
                }
                match outcome {
                    Ok(()) => return,
                    Err(EncodeFailure::Py(e)) => Err(self.error(py, e)),
                    Err(EncodeFailure::TooLarge { size, max }) => {
                        tracing::warn!(request = id.0, size, max, "result too large to send");
                        Err(ServerError::ResultTooLarge {
                            size: size as u64,
                            max: max as u64,
                        })
                    }
                    Err(EncodeFailure::Internal(what)) => Err(self.internal_error(id, &what)),
                }
            }
        };
        sink.send(&Message::Response { id, result: reply });
    }

    fn internal_error(&self, id: RequestId, what: &str) -> ServerError {
        tracing::error!(conn = self.shared.conn_id, request = id.0, panic = %what, "internal error while running a request");
        ServerError::InvalidRequest(format!("internal server error: {what}"))
    }

    /// Turns a Python error into the reply's error, logging client exceptions as stock RPyC
    /// does on its console.
    fn error(&self, py: Python<'_>, err: PyErr) -> ServerError {
        let cancelled = self
            .support
            .bind(py)
            .getattr("CancelledByClient")
            .is_ok_and(|cls| err.get_type(py).is(&cls));
        if cancelled {
            return ServerError::Cancelled;
        }
        let remote = to_remote(py, &err);
        // Logged with its traceback, as stock RPyC prints it on its console; at info level, as
        // a client's exception is no fault of the server's.
        tracing::info!(
            conn = self.shared.conn_id,
            exception = %remote.type_name,
            "client code raised an exception:\n{}",
            remote.traceback.trim_end()
        );
        ServerError::Exception(Box::new(remote))
    }

    fn convert_error(&self, py: Python<'_>, err: ConvertError) -> ServerError {
        match err {
            ConvertError::Py(e) => self.error(py, e),
            ConvertError::Server(e) => e,
        }
    }

    fn op<'py>(&mut self, py: Python<'py>, op: Op) -> Result<Reply<'py>, ServerError> {
        match op {
            Op::Execute { code } => {
                self.run_code(py, &code, false)?;
                Ok(Reply::Value(Value::None))
            }
            Op::Eval { expr, mode } => {
                let result = self.run_code(py, &expr, true)?;
                self.out(py, &result, mode)
            }
            Op::Import { name } => {
                let module = self.py(py, self.import_module.bind(py).call1((name,)))?;
                self.out(py, &module, ReturnMode::Ref)
            }
            Op::Namespace => {
                let ns = self.namespace.bind(py).clone().into_any();
                self.out(py, &ns, ReturnMode::Ref)
            }
            Op::Builtins => {
                let builtins = self.builtins.bind(py).clone().into_any();
                self.out(py, &builtins, ReturnMode::Ref)
            }
            Op::GetAttr { obj, name, mode } => {
                let obj = self.table.get(py, obj)?;
                let attr = self.py(py, obj.getattr(name))?;
                self.out(py, &attr, mode)
            }
            Op::SetAttr { obj, name, value } => {
                let obj = self.table.get(py, obj)?;
                let value = self.arg(py, &value)?;
                self.py(py, obj.setattr(name, value))?;
                Ok(Reply::Value(Value::None))
            }
            Op::DelAttr { obj, name } => {
                let obj = self.table.get(py, obj)?;
                self.py(py, obj.delattr(name))?;
                Ok(Reply::Value(Value::None))
            }
            Op::Call { obj, args, mode } => {
                let obj = self.table.get(py, obj)?;
                let result = self.call(py, &obj, &args)?;
                self.out(py, &result, mode)
            }
            Op::CallMethod {
                obj,
                name,
                args,
                mode,
            } => {
                let obj = self.table.get(py, obj)?;
                let method = self.py(py, obj.getattr(name))?;
                let result = self.call(py, &method, &args)?;
                self.out(py, &result, mode)
            }
            Op::GetItem { obj, key, mode } => {
                let obj = self.table.get(py, obj)?;
                let key = self.arg(py, &key)?;
                let item = self.py(py, obj.get_item(key))?;
                self.out(py, &item, mode)
            }
            Op::SetItem { obj, key, value } => {
                let obj = self.table.get(py, obj)?;
                let key = self.arg(py, &key)?;
                let value = self.arg(py, &value)?;
                self.py(py, obj.set_item(key, value))?;
                Ok(Reply::Value(Value::None))
            }
            Op::DelItem { obj, key } => {
                let obj = self.table.get(py, obj)?;
                let key = self.arg(py, &key)?;
                self.py(py, obj.del_item(key))?;
                Ok(Reply::Value(Value::None))
            }
            Op::Len { obj } => {
                let obj = self.table.get(py, obj)?;
                let len = self.py(py, obj.len())?;
                Ok(Reply::Value(Value::from(len)))
            }
            Op::Contains { obj, item } => {
                let obj = self.table.get(py, obj)?;
                let item = self.arg(py, &item)?;
                Ok(Reply::Value(Value::Bool(self.py(py, obj.contains(item))?)))
            }
            Op::Iter { obj, batch, mode } => {
                let obj = self.table.get(py, obj)?;
                let iter = self.py(py, obj.try_iter())?;
                let (items, done) = self.batch(py, &iter, batch, mode)?;
                Ok(Reply::Iter {
                    handle: (!done).then(|| iter.into_any()),
                    items,
                    done,
                })
            }
            Op::Next { iter, batch, mode } => {
                let obj = self.table.get(py, iter)?;
                let iter = self.py(py, obj.cast_into::<PyIterator>().map_err(PyErr::from))?;
                let (items, done) = self.batch(py, &iter, batch, mode)?;
                Ok(Reply::Next { items, done })
            }
            Op::Repr { obj } => {
                let obj = self.table.get(py, obj)?;
                let s = self.py(py, obj.repr())?;
                self.string(py, &s)
            }
            Op::Str { obj } => {
                let obj = self.table.get(py, obj)?;
                let s = self.py(py, obj.str())?;
                self.string(py, &s)
            }
            Op::Dir { obj } => {
                let obj = self.table.get(py, obj)?;
                let names = self.py(py, obj.dir())?;
                self.out(py, names.as_any(), ReturnMode::Value)
            }
            Op::Compare { obj, op, other } => {
                let obj = self.table.get(py, obj)?;
                let other = self.arg(py, &other)?;
                let op = match op {
                    CompareOp::Lt => pyo3::basic::CompareOp::Lt,
                    CompareOp::Le => pyo3::basic::CompareOp::Le,
                    CompareOp::Eq => pyo3::basic::CompareOp::Eq,
                    CompareOp::Ne => pyo3::basic::CompareOp::Ne,
                    CompareOp::Gt => pyo3::basic::CompareOp::Gt,
                    CompareOp::Ge => pyo3::basic::CompareOp::Ge,
                };
                let result = self.py(py, obj.rich_compare(other, op))?;
                self.out(py, &result, ReturnMode::Auto)
            }
            Op::Hash { obj } => {
                let obj = self.table.get(py, obj)?;
                Ok(Reply::Value(Value::from(self.py(py, obj.hash())?)))
            }
            Op::Obtain { obj } => {
                let obj = self.table.get(py, obj)?;
                self.out(py, &obj, ReturnMode::Value)
            }
        }
    }

    fn py<T>(&self, py: Python<'_>, result: PyResult<T>) -> Result<T, ServerError> {
        result.map_err(|e| self.error(py, e))
    }

    /// A Python object as the result, by the rules of `mode`; it is converted when the reply is
    /// written.
    fn out<'py>(
        &self,
        _py: Python<'py>,
        obj: &Bound<'py, PyAny>,
        mode: ReturnMode,
    ) -> Result<Reply<'py>, ServerError> {
        Ok(Reply::Object(obj.clone(), mode))
    }

    fn string<'py>(
        &self,
        py: Python<'py>,
        s: &Bound<'_, PyString>,
    ) -> Result<Reply<'py>, ServerError> {
        Ok(Reply::Value(Value::Str(
            self.py(py, s.to_str())?.to_owned(),
        )))
    }

    fn arg<'py>(&self, py: Python<'py>, value: &Value) -> Result<Bound<'py, PyAny>, ServerError> {
        from_value(py, value, &self.table).map_err(|e| self.convert_error(py, e))
    }

    fn call<'py>(
        &self,
        py: Python<'py>,
        callable: &Bound<'py, PyAny>,
        args: &Args,
    ) -> Result<Bound<'py, PyAny>, ServerError> {
        let positional = args
            .positional
            .iter()
            .map(|v| self.arg(py, v))
            .collect::<Result<Vec<_>, _>>()?;
        let positional = self.py(py, PyTuple::new(py, positional))?;
        let kwargs = if args.keyword.is_empty() {
            None
        } else {
            let kwargs = PyDict::new(py);
            for (name, value) in &args.keyword {
                let value = self.arg(py, value)?;
                self.py(py, kwargs.set_item(name, value))?;
            }
            Some(kwargs)
        };
        self.py(py, callable.call(positional, kwargs.as_ref()))
    }

    /// The next batch of an iterator. Items copied by value are copied as they are produced (the
    /// iterator may change them afterwards); the others are converted when the reply is written.
    fn batch<'py>(
        &mut self,
        py: Python<'py>,
        iter: &Bound<'py, PyIterator>,
        batch: u32,
        mode: ReturnMode,
    ) -> Result<(Vec<Reply<'py>>, bool), ServerError> {
        let batch = batch.clamp(1, MAX_BATCH) as usize;
        let mut items = Vec::with_capacity(batch.min(1024));
        let mut iter = iter.clone();
        while items.len() < batch {
            match iter.next() {
                Some(item) => {
                    let item = self.py(py, item)?;
                    items.push(match mode {
                        ReturnMode::Value => Reply::Value(
                            to_value(&item, mode, &mut self.table)
                                .map_err(|e| self.error(py, e))?,
                        ),
                        ReturnMode::Auto | ReturnMode::Ref => Reply::Object(item, mode),
                    });
                }
                None => return Ok((items, true)),
            }
        }
        Ok((items, false))
    }

    /// Compiles (or takes from the cache) and runs a snippet in the connection's namespace.
    fn run_code<'py>(
        &mut self,
        py: Python<'py>,
        code: &str,
        eval: bool,
    ) -> Result<Bound<'py, PyAny>, ServerError> {
        let cache = usize::from(eval);
        let compiled = match self.code_cache[cache].get(code) {
            Some(c) => c.bind(py).clone(),
            None => {
                let mode = if eval { "eval" } else { "exec" };
                let compiled =
                    self.py(py, self.compile.bind(py).call1((code, "<string>", mode)))?;
                if code.len() <= CODE_CACHE_MAX_LEN {
                    if self.code_cache[cache].len() >= CODE_CACHE_LIMIT {
                        self.code_cache[cache].clear();
                    }
                    self.code_cache[cache].insert(code.to_owned(), compiled.clone().unbind());
                }
                compiled
            }
        };
        let ns = self.namespace.bind(py);
        // SAFETY: GIL held; `compiled` is a code object from `compile`, `ns` a dict. The result
        // is a new reference or null with an exception set, which `from_owned_ptr_or_err` takes.
        let result = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyEval_EvalCode(compiled.as_ptr(), ns.as_ptr(), ns.as_ptr()),
            )
        };
        self.py(py, result)
    }
}
