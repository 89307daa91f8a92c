//! Stock RPyC clients, the GIL side (issue 6): one OS thread per connection that serves the
//! client's `HANDLE_*` requests and sends requests of its own when server-side code uses an
//! object that lives on the client (a callback).
//!
//! The async side (`crate::rpyc_compat`) decodes frames into [`Message`]s and hands them to
//! [`ClassicWorker::deliver`]; everything the worker sends (replies, its own requests) goes out
//! through the connection's [`FrameSink`] as complete frames.
//!
//! Waiting for a reply: any Python thread that calls a client netref sends the request and then
//! *pumps* the connection's inbox with the GIL released, as stock RPyC's `serve` does: replies are
//! filed by sequence number (waking whoever waits for them), and requests the client sends
//! meanwhile (nested calls: server → client → server) are served right there on the waiting
//! thread. One thread pumps at a time; the others wait on a condition variable. So a nested
//! chain of any depth runs on the connection's own thread, and a call from another Python thread
//! still gets its reply.
//!
//! Objects sent by reference are kept in a table keyed by `id_pack` with stock's reference
//! counts, and released by the client's `HANDLE_DEL`. Each connection has its own root object
//! (`SlaveService`), hence its own namespace. Python-side helpers live in `classic_support.py`.

mod convert;
mod handlers;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyEOFError, PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyDict, PyModule, PyTuple, PyType};
use rpyc_protocol::brine::Value;
use rpyc_protocol::brine::message::{
    EXC_STOP_ITERATION, Message, MessageError, MessageKind, encode_frame, handler,
};

use self::convert::ObjectKey;

/// Sends one complete frame to the client (called from any Python thread of the connection).
pub type FrameSink = Arc<dyn Fn(Vec<u8>) + Send + Sync + 'static>;

/// How long server-side code waits for the client to answer a callback (stock's
/// `sync_request_timeout`).
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The version of stock RPyC whose protocol we speak, told to clients with exceptions.
const RPYC_VERSION: &str = "6.0.2";
/// Stack of a connection thread, as for native connections: deep recursion ends in
/// `RecursionError`, not a crash.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;
/// Longest single wait of a pumping thread, so a waiter re-checks its deadline and the
/// connection state regularly.
const PUMP_SLICE: Duration = Duration::from_millis(100);
/// Longest wait of a thread that is not pumping before it looks again.
const WAITER_SLICE: Duration = Duration::from_millis(20);

/// Settings of a stock-RPyC connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClassicOptions {
    /// Largest frame payload sent; a larger reply becomes an exception reply.
    pub max_frame_bytes: usize,
    /// How long a callback into the client may take.
    pub callback_timeout: Duration,
}

impl ClassicOptions {
    /// Options with the given frame limit and the default callback timeout.
    pub fn new(max_frame_bytes: usize) -> Self {
        ClassicOptions {
            max_frame_bytes,
            callback_timeout: DEFAULT_CALLBACK_TIMEOUT,
        }
    }
}

/// Handle to the Python thread of one stock-RPyC connection. Dropping it ends the thread once
/// its current request is done (a callback waiting for the client fails with `EOFError` at
/// once), and frees every object the connection held.
#[derive(Debug)]
pub struct ClassicWorker {
    conn_id: u64,
    tx: mpsc::Sender<Message>,
}

/// The worker thread of a stock-RPyC connection has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the Python thread of RPyC connection {0} has stopped")]
pub struct ClassicWorkerGone(u64);

impl ClassicWorker {
    /// Starts the Python thread of connection `conn_id`; frames it sends go to `sink`.
    ///
    /// # Errors
    /// If the OS cannot create the thread.
    pub fn spawn(
        conn_id: u64,
        options: ClassicOptions,
        sink: FrameSink,
    ) -> std::io::Result<ClassicWorker> {
        let (tx, rx) = mpsc::channel();
        let conn = Arc::new(Conn {
            conn_id,
            sink,
            options,
            inbox: Mutex::new(rx),
            pending: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
            closed: AtomicBool::new(false),
            next_seq: AtomicU64::new(0),
            objects: Mutex::new(HashMap::new()),
            state: OnceLock::new(),
        });
        std::thread::Builder::new()
            .name(format!("rpyc-compat-{conn_id}"))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || run(conn))?;
        Ok(ClassicWorker { conn_id, tx })
    }

    /// Hands a message from the client to the connection's thread.
    ///
    /// # Errors
    /// [`ClassicWorkerGone`] if the thread has stopped.
    pub fn deliver(&self, message: Message) -> Result<(), ClassicWorkerGone> {
        self.tx
            .send(message)
            .map_err(|_| ClassicWorkerGone(self.conn_id))
    }
}

/// A reply (or exception) the client sent for one of our requests.
type Reply = Message;

/// The state of one connection, shared by every Python thread that uses it.
struct Conn {
    conn_id: u64,
    sink: FrameSink,
    options: ClassicOptions,
    /// Messages from the client; whoever holds the lock is the pumping thread.
    inbox: Mutex<mpsc::Receiver<Message>>,
    /// Our requests waiting for their reply: `None` until it arrives.
    pending: Mutex<HashMap<u64, Option<Reply>>>,
    /// Signalled when a reply is filed or the pump is released.
    arrived: Condvar,
    /// The client is gone (the inbox closed).
    closed: AtomicBool,
    next_seq: AtomicU64,
    /// Objects sent by reference: `(class_id, instance_id)` → (object, sends − 1).
    objects: Mutex<HashMap<ObjectKey, (Py<PyAny>, u64)>>,
    /// Python objects of the connection, set once its thread has started.
    state: OnceLock<PyState>,
}

/// The Python side of a connection.
struct PyState {
    support: Py<PyModule>,
    /// `ClientConnection`: what netrefs of client objects talk through.
    client: Py<PyAny>,
    /// The `SlaveService` root object.
    root: Py<PyAny>,
    netref_base: Py<PyType>,
    netref_id_pack: Py<PyAny>,
    stop_iteration: Py<PyType>,
}

/// File name of the helper module in tracebacks.
const SUPPORT_FILE: &str = "<rpyc-classic stock-RPyC support>";

/// The `_rpyc_classic` helper module, loaded on the first stock-RPyC connection.
static SUPPORT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn support(py: Python<'_>) -> PyResult<&Py<PyModule>> {
    SUPPORT.get_or_try_init(py, || {
        let source = include_str!("classic_support.py");
        // Tracebacks through the helpers then show their source lines, as stock's show rpyc's.
        let lines: Vec<String> = source.split_inclusive('\n').map(str::to_owned).collect();
        py.import("linecache")?
            .getattr("cache")?
            .set_item(SUPPORT_FILE, (source.len(), py.None(), lines, SUPPORT_FILE))?;
        let module = PyModule::from_code(
            py,
            c_string(source)?.as_c_str(),
            &c_string(SUPPORT_FILE)?,
            c"_rpyc_classic",
        )?;
        py.import("sys")?
            .getattr("modules")?
            .set_item("_rpyc_classic", &module)?;
        Ok(module.unbind())
    })
}

fn c_string(s: &str) -> PyResult<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

impl PyState {
    fn new(py: Python<'_>, conn: &Arc<Conn>) -> PyResult<PyState> {
        let support = support(py)?.clone_ref(py);
        let weak = Arc::downgrade(conn);
        let sync = PyCFunction::new_closure(
            py,
            Some(c"sync_request"),
            Some(c"sync_request(handler, *args): send a request to the client and wait for its reply"),
            move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<Py<PyAny>> {
                let py = args.py();
                let conn = weak
                    .upgrade()
                    .ok_or_else(|| PyEOFError::new_err("connection closed by peer"))?;
                let handler: i64 = args.get_item(0)?.extract()?;
                let rest = args.get_slice(1, args.len());
                conn.sync_request(py, handler, &rest).map(Bound::unbind)
            },
        )?;
        let weak = Arc::downgrade(conn);
        let send_async = PyCFunction::new_closure(
            py,
            Some(c"async_request"),
            Some(c"async_request(handler, *args): send a request to the client, not waiting"),
            move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                let conn = weak
                    .upgrade()
                    .ok_or_else(|| PyEOFError::new_err("connection closed by peer"))?;
                let handler: i64 = args.get_item(0)?.extract()?;
                let rest = args.get_slice(1, args.len());
                conn.send_request(handler, &rest).map(|_| ())
            },
        )?;
        let module = support.bind(py);
        let (client, root): (Bound<'_, PyAny>, Bound<'_, PyAny>) = module
            .call_method1("new_connection", (conn.conn_id, sync, send_async))?
            .extract()?;
        Ok(PyState {
            client: client.unbind(),
            root: root.unbind(),
            netref_base: module
                .getattr("BaseNetref")?
                .cast_into::<PyType>()?
                .unbind(),
            netref_id_pack: module.getattr("netref_id_pack")?.unbind(),
            stop_iteration: py.get_type::<pyo3::exceptions::PyStopIteration>().unbind(),
            support,
        })
    }
}

fn run(conn: Arc<Conn>) {
    // One attach for the thread's whole life; the GIL is released whenever it waits. The
    // connection (and the Python objects it holds) is dropped inside, with the GIL.
    Python::attach(move |py| {
        match PyState::new(py, &conn) {
            Ok(state) => {
                let _ = conn.state.set(state);
            }
            Err(e) => {
                tracing::error!(conn = conn.conn_id, error = %super::exception::describe(py, &e), "cannot set up a stock-RPyC connection");
                conn.closed.store(true, Ordering::SeqCst);
                return;
            }
        }
        loop {
            match conn.pump(py, None) {
                Pumped::Request(message) => conn.serve_request(py, message),
                Pumped::Nothing => {}
                Pumped::Closed => break,
            }
        }
        conn.close(py);
        drop(conn);
    });
}

/// What one round of pumping produced.
enum Pumped {
    /// A request from the client, to serve on this thread.
    Request(Message),
    /// A reply was filed, another thread pumps, or the wait timed out: look again.
    Nothing,
    /// The client is gone.
    Closed,
}

impl Conn {
    fn state(&self, _py: Python<'_>) -> PyResult<&PyState> {
        self.state
            .get()
            .ok_or_else(|| PyRuntimeError::new_err("stock-RPyC connection is not set up"))
    }

    /// Waits (GIL released) for the next message and files replies. `waiting_for`: our request
    /// whose reply the caller wants (it stops waiting as soon as that reply is filed); `None`
    /// for the connection's idle loop, which waits as long as it takes.
    fn pump(&self, py: Python<'_>, waiting_for: Option<(u64, Instant)>) -> Pumped {
        py.detach(|| {
            let ready = |pending: &HashMap<u64, Option<Reply>>| {
                waiting_for.is_some_and(|(seq, _)| matches!(pending.get(&seq), Some(Some(_))))
            };
            let inbox = match self.inbox.try_lock() {
                Ok(inbox) => inbox,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    // Another thread pumps: wait until it files a reply or lets go.
                    let pending = lock(&self.pending);
                    if self.closed.load(Ordering::SeqCst) {
                        return match waiting_for {
                            None => Pumped::Closed,
                            Some(_) => Pumped::Nothing,
                        };
                    }
                    if ready(&pending) {
                        return Pumped::Nothing;
                    }
                    let _ = self.arrived.wait_timeout(pending, WAITER_SLICE);
                    return Pumped::Nothing;
                }
            };
            if ready(&lock(&self.pending)) {
                return Pumped::Nothing;
            }
            let received = match waiting_for {
                None => inbox
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some((_, deadline)) => inbox.recv_timeout(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .min(PUMP_SLICE),
                ),
            };
            drop(inbox);
            let pumped = match received {
                Ok(message) if message.kind == MessageKind::Request => Pumped::Request(message),
                Ok(reply) => {
                    let mut pending = lock(&self.pending);
                    match pending.get_mut(&reply.seq) {
                        Some(slot @ None) => *slot = Some(reply),
                        // An async request's reply (HANDLE_DEL), or one we gave up on.
                        _ => tracing::trace!(
                            conn = self.conn_id,
                            seq = reply.seq,
                            "reply nobody waits for"
                        ),
                    }
                    Pumped::Nothing
                }
                Err(mpsc::RecvTimeoutError::Timeout) => Pumped::Nothing,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.closed.store(true, Ordering::SeqCst);
                    Pumped::Closed
                }
            };
            // Wake waiters: a reply may be theirs, and the pump is free for them to take.
            let _guard = lock(&self.pending);
            self.arrived.notify_all();
            pumped
        })
    }

    /// Sends a request without waiting; returns its sequence number.
    fn send_request(&self, handler: i64, args: &Bound<'_, PyTuple>) -> PyResult<u64> {
        let boxed = self.box_value(args.as_any(), 0)?;
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.send(&Message {
            kind: MessageKind::Request,
            seq,
            body: Value::Tuple(vec![Value::Int(handler), boxed]),
        })
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(seq)
    }

    /// Sends a request to the client and waits for its reply, serving the client's requests
    /// meanwhile (`Connection.sync_request`).
    fn sync_request<'py>(
        &self,
        py: Python<'py>,
        handler: i64,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(PyEOFError::new_err("connection closed by peer"));
        }
        let boxed = self.box_value(args.as_any(), 0)?;
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        lock(&self.pending).insert(seq, None);
        let sent = self.send(&Message {
            kind: MessageKind::Request,
            seq,
            body: Value::Tuple(vec![Value::Int(handler), boxed]),
        });
        if let Err(e) = sent {
            lock(&self.pending).remove(&seq);
            return Err(PyRuntimeError::new_err(e.to_string()));
        }
        let deadline = Instant::now() + self.options.callback_timeout;
        loop {
            if let Some(Some(reply)) = {
                let mut pending = lock(&self.pending);
                match pending.get(&seq) {
                    Some(Some(_)) => pending.remove(&seq),
                    _ => None,
                }
            } {
                return self.unbox_reply(py, reply);
            }
            if self.closed.load(Ordering::SeqCst) {
                lock(&self.pending).remove(&seq);
                return Err(PyEOFError::new_err("connection closed by peer"));
            }
            if Instant::now() >= deadline {
                lock(&self.pending).remove(&seq);
                return Err(PyTimeoutError::new_err(format!(
                    "result expired: the client did not answer {} within {:?}",
                    handler::name(handler),
                    self.options.callback_timeout
                )));
            }
            match self.pump(py, Some((seq, deadline))) {
                Pumped::Request(message) => self.serve_request(py, message),
                Pumped::Nothing | Pumped::Closed => {}
            }
        }
    }

    fn unbox_reply<'py>(&self, py: Python<'py>, reply: Reply) -> PyResult<Bound<'py, PyAny>> {
        match reply.kind {
            MessageKind::Exception => {
                let payload = convert::to_python(py, &reply.body)?;
                let exc = self
                    .state(py)?
                    .support
                    .bind(py)
                    .call_method1("vinegar_load", (payload,))?;
                Err(PyErr::from_value(exc))
            }
            _ => self.unbox(py, &reply.body, 0),
        }
    }

    /// Encodes a message as a frame and hands it to the writer.
    fn send(&self, message: &Message) -> Result<(), MessageError> {
        let mut frame = Vec::new();
        encode_frame(message, self.options.max_frame_bytes, &mut frame)?;
        (self.sink)(frame);
        Ok(())
    }

    /// Serves one request from the client and sends its reply.
    fn serve_request(&self, py: Python<'_>, message: Message) {
        let seq = message.seq;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let (handler, result) = match message.request_parts() {
                Some((handler, args)) => (handler, self.handle(py, handler, args)),
                None => (
                    0,
                    Err(pyo3::exceptions::PyValueError::new_err(
                        "malformed request: expected (handler, boxed_args)",
                    )),
                ),
            };
            let reply = result.and_then(|obj| self.box_value(&obj, 0));
            match reply {
                Ok(boxed) => self.reply(seq, MessageKind::Reply, boxed),
                Err(err) => self.reply_exception(py, seq, handler, &err),
            }
        }));
        if let Err(panic) = outcome {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(conn = self.conn_id, seq, panic = %what, "internal error while serving an RPyC request");
            self.reply(
                seq,
                MessageKind::Exception,
                plain_exception("SystemError", &format!("internal server error: {what}")),
            );
        }
    }

    /// Sends a reply; one too large for the frame limit becomes an exception.
    fn reply(&self, seq: u64, kind: MessageKind, body: Value) {
        let message = Message { kind, seq, body };
        match self.send(&message) {
            Ok(()) => {}
            Err(MessageError::TooLarge { size, max }) => {
                tracing::warn!(
                    conn = self.conn_id,
                    seq,
                    size,
                    max,
                    "reply too large to send"
                );
                let refusal = plain_exception(
                    "ValueError",
                    &format!(
                        "the result is {size} bytes, above the server's frame limit of {max} \
                         bytes (rpyc-classic --max-frame-bytes)"
                    ),
                );
                if let Err(e) = self.send(&Message {
                    kind: MessageKind::Exception,
                    seq,
                    body: refusal,
                }) {
                    tracing::warn!(conn = self.conn_id, seq, error = %e, "cannot send a refusal");
                }
            }
            Err(e) => tracing::warn!(conn = self.conn_id, seq, error = %e, "cannot encode a reply"),
        }
    }

    /// Sends a Python exception as vinegar (StopIteration as the bare marker) and logs it.
    fn reply_exception(&self, py: Python<'_>, seq: u64, handler: i64, err: &PyErr) {
        let Ok(state) = self.state(py) else {
            self.reply(
                seq,
                MessageKind::Exception,
                plain_exception("RuntimeError", "connection not set up"),
            );
            return;
        };
        let value = err.value(py);
        if value.get_type().is(state.stop_iteration.bind(py)) {
            self.reply(seq, MessageKind::Exception, Value::Int(EXC_STOP_ITERATION));
            return;
        }
        if let Some(tb) = err.traceback(py) {
            let _ = value.setattr("__traceback__", tb);
        }
        let payload = state
            .support
            .bind(py)
            .call_method1("safe_vinegar_dump", (value,))
            .and_then(|p| convert::dumpable(&p, 0));
        let payload = match payload {
            Ok(Some(p)) => p,
            _ => plain_exception("RuntimeError", &value.to_string()),
        };
        let traceback = payload
            .as_tuple()
            .and_then(|t| t.get(3))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let type_name = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        if handler == handler::DEL || handler == handler::INSPECT {
            tracing::debug!(conn = self.conn_id, seq, handler = handler::name(handler), exception = %type_name, "request failed");
        } else {
            // Logged with its traceback, as stock RPyC prints it on its console; at info
            // level, as a client's exception is no fault of the server's.
            tracing::info!(
                conn = self.conn_id,
                handler = handler::name(handler),
                exception = %type_name,
                "client code raised an exception:\n{}",
                traceback.trim_end()
            );
        }
        self.reply(seq, MessageKind::Exception, payload);
    }

    /// Frees the connection's objects (GIL held) and wakes anyone still waiting.
    fn close(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::SeqCst);
        {
            let _guard = lock(&self.pending);
            self.arrived.notify_all();
        }
        let objects = std::mem::take(&mut *lock(&self.objects));
        tracing::debug!(
            conn = self.conn_id,
            objects = objects.len(),
            "freeing the connection's objects"
        );
        drop(objects);
        if let Some(state) = self.state.get() {
            let _ = state.client.bind(py).call_method0("close");
            if let Ok(ns) = state.root.bind(py).getattr("namespace") {
                let _ = ns.call_method0("clear");
            }
        }
    }
}

/// A vinegar payload for an exception raised by the server itself (no Python traceback).
fn plain_exception(class: &str, message: &str) -> Value {
    Value::Tuple(vec![
        Value::Tuple(vec![Value::from("builtins"), Value::from(class)]),
        Value::Tuple(vec![Value::from(message)]),
        Value::Tuple(vec![Value::Tuple(vec![
            Value::from("_remote_version"),
            Value::from(RPYC_VERSION),
        ])]),
        Value::Str(format!(
            "Traceback (most recent call last):\n  (in the rpyc-classic server)\n{class}: {message}\n"
        )),
    ])
}
