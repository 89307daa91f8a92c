//! The per-connection Python thread.
//!
//! Each connection gets one named OS thread (`rpyc-py-<conn>`) that owns the connection's
//! namespace, object table and compiled-code cache. It blocks on its command queue without
//! the GIL, takes the GIL when commands arrive, runs every queued command under that one hold,
//! and sends each reply through the connection's [`ReplyFn`]. Requests of one connection thus
//! run in order, and a long call on one connection never blocks another (the GIL is released by
//! Python's switch interval and by blocking calls).
//!
//! Cancellation (issue 3): a cancel for the running request raises `CancelledByClient` in the
//! worker thread with `PyThreadState_SetAsyncExc` and wakes a `time.sleep` in progress. Pure
//! Python code is interrupted at the next bytecode boundary; C code that holds the GIL (a long
//! `re` match, a C extension's loop) is interrupted only when it returns to the interpreter.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyModule, PyString, PyTuple};
use rpyc_protocol::{Args, CompareOp, NetRefId, Op, RequestId, ReturnMode, ServerError, Value};

use super::convert::{ConvertError, from_value, to_value};
use super::exception::to_remote;
use super::init::SUPPORT;
use super::objects::ObjectTable;

/// Receives each reply of a worker: the request it answers and its result. Called on the worker
/// thread, with the GIL held, so it must be quick (a channel send).
pub type ReplyFn = Box<dyn Fn(RequestId, Result<Value, ServerError>) + Send + 'static>;

/// Largest iteration batch a client may ask for.
const MAX_BATCH: u32 = 65_536;
/// Compiled snippets kept per connection (the cache is emptied when it grows past this).
const CODE_CACHE_LIMIT: usize = 512;
/// Snippets longer than this are compiled each time rather than cached.
const CODE_CACHE_MAX_LEN: usize = 4096;
/// Stack of a worker thread: what CPython's main thread usually gets, so deep recursion ends
/// in `RecursionError`, not a stack overflow. Pages are committed only when used.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;
/// Stale cancel ids kept at most (cancels that arrived after their request finished).
const MAX_PENDING_CANCELS: usize = 1024;

enum Command {
    Run {
        id: RequestId,
        op: Op,
        span: tracing::Span,
    },
    Release(Vec<NetRefId>),
}

/// State shared between the connection's async side and its Python thread.
#[derive(Debug)]
struct Shared {
    conn_id: u64,
    /// `threading.get_ident()` of the worker thread, 0 until it has started.
    ident: AtomicU64,
    /// Id + 1 of the request running now, 0 when idle.
    running: AtomicU64,
    /// Requests the client cancelled (running or not started yet).
    cancelled: Mutex<HashSet<RequestId>>,
}

/// Handle to a connection's Python thread. Dropping it ends the thread after the current
/// command, interrupts a running call, and frees every object the connection held.
#[derive(Debug)]
pub struct Worker {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// The worker thread is gone (it can only end by panicking outside a request).
#[derive(Debug, thiserror::Error)]
#[error("the Python worker thread of connection {0} has stopped")]
pub struct WorkerGone(u64);

impl Worker {
    /// Starts the Python thread of connection `conn_id`.
    ///
    /// # Errors
    /// If the OS cannot create the thread.
    pub fn spawn(conn_id: u64, reply: ReplyFn) -> std::io::Result<Worker> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            conn_id,
            ident: AtomicU64::new(0),
            running: AtomicU64::new(0),
            cancelled: Mutex::new(HashSet::new()),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("rpyc-py-{conn_id}"))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || run(&thread_shared, rx, &reply))?;
        Ok(Worker { tx, shared })
    }

    /// Queues a request; its reply goes to the [`ReplyFn`].
    ///
    /// # Errors
    /// If the thread has stopped.
    pub fn submit(&self, id: RequestId, op: Op) -> Result<(), WorkerGone> {
        let span = tracing::debug_span!("request", conn = self.shared.conn_id, id = id.0);
        self.tx
            .send(Command::Run { id, op, span })
            .map_err(|_| WorkerGone(self.shared.conn_id))
    }

    /// Frees references the client dropped.
    pub fn release(&self, ids: Vec<NetRefId>) {
        let _ = self.tx.send(Command::Release(ids));
    }

    /// Cancels a request: skipped if it has not started, interrupted if it is running.
    pub fn cancel(&self, id: RequestId) {
        {
            let mut cancelled = lock(&self.shared.cancelled);
            if cancelled.len() >= MAX_PENDING_CANCELS {
                cancelled.clear();
            }
            cancelled.insert(id);
        }
        if self.shared.running.load(Ordering::SeqCst) == id.0 + 1 {
            interrupt(&self.shared, id.0 + 1);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The command channel closes with `self.tx`; interrupt what runs so the thread ends now
        // rather than when the call finishes.
        let running = self.shared.running.load(Ordering::SeqCst);
        if running != 0 {
            lock(&self.shared.cancelled).insert(RequestId(running - 1));
            interrupt(&self.shared, running);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Raises `CancelledByClient` in the worker if it still runs request `running` (id + 1).
///
/// Runs on a short-lived thread of its own: taking the GIL may wait for as long as the worker's
/// C code holds it, and neither a tokio worker nor the connection's reader may wait that long.
fn interrupt(shared: &Arc<Shared>, running: u64) {
    let conn_id = shared.conn_id;
    let shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("rpyc-cancel-{conn_id}"))
        .spawn(move || {
            Python::attach(|py| {
                // The worker changes `running` only while it holds the GIL, and we hold it now,
                // so the request cannot finish between this check and the exception being set.
                if shared.running.load(Ordering::SeqCst) != running {
                    return;
                }
                let Some(support) = SUPPORT.get(py) else {
                    return;
                };
                let ident = shared.ident.load(Ordering::SeqCst);
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

fn run(shared: &Shared, rx: mpsc::Receiver<Command>, reply: &ReplyFn) {
    // One attach for the thread's whole life keeps its Python thread state (and
    // `threading.local` data) alive; the GIL itself is released while waiting for commands.
    Python::attach(|py| {
        let mut conn = match ConnState::new(py, shared) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(conn = shared.conn_id, error = %super::exception::describe(py, &e), "cannot set up the connection's namespace");
                return;
            }
        };
        let mut rx = rx;
        loop {
            // The receiver moves into the GIL-free closure and back (it is Send, not Sync).
            let (cmd, back) = py.detach(move || (rx.recv(), rx));
            rx = back;
            let Ok(cmd) = cmd else {
                break;
            };
            conn.handle(py, cmd, reply);
            while let Ok(cmd) = rx.try_recv() {
                conn.handle(py, cmd, reply);
            }
        }
        tracing::debug!(
            conn = shared.conn_id,
            objects = conn.table.len(),
            "freeing the connection's objects"
        );
        conn.close(py);
    });
}

struct ConnState<'s> {
    shared: &'s Shared,
    namespace: Py<PyDict>,
    builtins: Py<PyModule>,
    import_module: Py<PyAny>,
    compile: Py<PyAny>,
    support: Py<PyModule>,
    table: ObjectTable,
    /// Compiled snippets: `[exec, eval]`.
    code_cache: [HashMap<String, Py<PyAny>>; 2],
}

impl<'s> ConnState<'s> {
    fn new(py: Python<'_>, shared: &'s Shared) -> PyResult<Self> {
        let support = SUPPORT
            .get(py)
            .ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("rpyc-classic support module not loaded")
            })?
            .clone_ref(py);
        let ident: u64 = support
            .bind(py)
            .call_method0("register_worker")?
            .extract()?;
        shared.ident.store(ident, Ordering::SeqCst);
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
        let _ = self.support.bind(py).call_method0("unregister_worker");
    }

    fn handle(&mut self, py: Python<'_>, cmd: Command, reply: &ReplyFn) {
        match cmd {
            Command::Release(ids) => self.table.release(py, &ids),
            Command::Run { id, op, span } => {
                let _entered = span.enter();
                if lock(&self.shared.cancelled).remove(&id) {
                    reply(id, Err(ServerError::Cancelled));
                    return;
                }
                self.shared.running.store(id.0 + 1, Ordering::SeqCst);
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.op(py, op)))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(conn = self.shared.conn_id, request = id.0, panic = %what, "internal error while running a request");
                        Err(ServerError::InvalidRequest(format!("internal server error: {what}")))
                    });
                self.shared.running.store(0, Ordering::SeqCst);
                let result = if lock(&self.shared.cancelled).remove(&id) {
                    // A cancel raced with the end of the call: drop any exception still pending
                    // for this thread so it cannot hit the next request.
                    let ident = self.shared.ident.load(Ordering::SeqCst);
                    // SAFETY: GIL held; a null exception clears the pending one.
                    unsafe { ffi::PyThreadState_SetAsyncExc(ident as _, std::ptr::null_mut()) };
                    let _ = self.support.bind(py).call_method0("reset_wakeup");
                    Err(ServerError::Cancelled)
                } else {
                    result
                };
                reply(id, result);
            }
        }
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
        tracing::warn!(
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

    fn op(&mut self, py: Python<'_>, op: Op) -> Result<Value, ServerError> {
        match op {
            Op::Execute { code } => {
                self.run_code(py, &code, false)?;
                Ok(Value::None)
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
                Ok(Value::None)
            }
            Op::DelAttr { obj, name } => {
                let obj = self.table.get(py, obj)?;
                self.py(py, obj.delattr(name))?;
                Ok(Value::None)
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
                Ok(Value::None)
            }
            Op::DelItem { obj, key } => {
                let obj = self.table.get(py, obj)?;
                let key = self.arg(py, &key)?;
                self.py(py, obj.del_item(key))?;
                Ok(Value::None)
            }
            Op::Len { obj } => {
                let obj = self.table.get(py, obj)?;
                let len = self.py(py, obj.len())?;
                Ok(Value::from(len))
            }
            Op::Contains { obj, item } => {
                let obj = self.table.get(py, obj)?;
                let item = self.arg(py, &item)?;
                Ok(Value::Bool(self.py(py, obj.contains(item))?))
            }
            Op::Iter { obj, batch, mode } => {
                let obj = self.table.get(py, obj)?;
                let iter = self.py(py, obj.try_iter())?;
                let (items, done) = self.batch(py, &iter, batch, mode)?;
                let handle = if done {
                    Value::None
                } else {
                    self.out(py, iter.as_any(), ReturnMode::Ref)?
                };
                Ok(Value::Tuple(vec![
                    handle,
                    Value::List(items),
                    Value::Bool(done),
                ]))
            }
            Op::Next { iter, batch, mode } => {
                let obj = self.table.get(py, iter)?;
                let iter = self.py(py, obj.cast_into::<PyIterator>().map_err(PyErr::from))?;
                let (items, done) = self.batch(py, &iter, batch, mode)?;
                Ok(Value::Tuple(vec![Value::List(items), Value::Bool(done)]))
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
                Ok(Value::from(self.py(py, obj.hash())?))
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

    fn out(
        &mut self,
        py: Python<'_>,
        obj: &Bound<'_, PyAny>,
        mode: ReturnMode,
    ) -> Result<Value, ServerError> {
        to_value(obj, mode, &mut self.table).map_err(|e| self.error(py, e))
    }

    fn string(&self, py: Python<'_>, s: &Bound<'_, PyString>) -> Result<Value, ServerError> {
        Ok(Value::Str(self.py(py, s.to_str())?.to_owned()))
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

    fn batch(
        &mut self,
        py: Python<'_>,
        iter: &Bound<'_, PyIterator>,
        batch: u32,
        mode: ReturnMode,
    ) -> Result<(Vec<Value>, bool), ServerError> {
        let batch = batch.clamp(1, MAX_BATCH) as usize;
        let mut items = Vec::with_capacity(batch.min(1024));
        let mut iter = iter.clone();
        while items.len() < batch {
            match iter.next() {
                Some(item) => {
                    let item = self.py(py, item)?;
                    items.push(self.out(py, &item, mode)?);
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
