//! One connection's machinery: the handshake, the write path, the reader task, the map of
//! pending requests with their deadlines, and the table of live remote objects.
//!
//! Frames are written by the task that produces them, not handed to a writer task: on a
//! multi-thread runtime every hand-off between tasks is a wakeup of another thread, several
//! microseconds on a call that takes a few tens. On plain TCP a caller encodes its request into
//! a reused buffer and, when nothing else is in flight, writes it at once with a non-blocking
//! `try_write`. Only what the socket does not take goes to the [`Outbox`]'s backlog, which the
//! writer task flushes as the socket drains (callers append to a backlog rather than write, so
//! frames keep their order). When other requests are in flight (many tasks pipelining on one
//! connection), frames are queued for the writer task instead, which writes all of them with
//! one system call: more frames are likely to follow, and one write for all of them beats one
//! each. Over TLS the record layer needs an async writer, so the writer task writes every frame.
//!
//! A large byte string in a request (64 KiB or more) is not copied into the frame buffer: the
//! frame is encoded around it ([`codec::encode_frame_shared`]), the queue keeps a handle on its
//! `Bytes` ([`FrameQueue`]), and it is written from its own memory between the buffer's bytes
//! with vectored writes. A frame without one takes the plain path.
//!
//! The reader task owns the read half and completes pending requests by id (tarpc's
//! `RequestDispatch`). Deadlines are kept with the pending requests and watched by one timer per
//! connection, not one per request: arming a timer for every call also wakes the runtime's
//! timer driver, often on another thread.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use rpyc_protocol::codec::TypedReply;
use rpyc_protocol::handshake::{self, GREETING_LEN};
use rpyc_protocol::queue::FrameQueue;
use rpyc_protocol::{
    Message, NetRef, NetRefId, Op, RequestId, ServerError, ServerInfo, Value, codec,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tracing::{debug, trace, warn};

use crate::error::{Error, Result};
use crate::object::{ObjectInner, RemoteObject};
use crate::reconnect::Link;

/// The read side of a connection (plain TCP or TLS).
type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The write side of a TLS connection.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The write side of a connection.
enum WriteHalf {
    /// Plain TCP: any task or thread may write with `try_write`.
    Tcp(OwnedWriteHalf),
    /// Any async writer (TLS): only the writer task writes, after the handshake.
    Stream(Writer),
}

impl WriteHalf {
    /// Writes `bytes` and flushes (during the handshake, before the writer task exists).
    async fn write_all_flush(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(half) => half.write_all(bytes).await,
            WriteHalf::Stream(writer) => {
                writer.write_all(bytes).await?;
                writer.flush().await
            }
        }
    }
}

/// A connected byte stream, before it is split: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn into_halves(self: Box<Self>) -> (Reader, WriteHalf);
}

impl Stream for TcpStream {
    fn into_halves(self: Box<Self>) -> (Reader, WriteHalf) {
        let (read, write) = self.into_split();
        (Box::new(read), WriteHalf::Tcp(write))
    }
}

impl Stream for tokio_rustls::client::TlsStream<TcpStream> {
    fn into_halves(self: Box<Self>) -> (Reader, WriteHalf) {
        let (read, write) = tokio::io::split(*self);
        (Box::new(read), WriteHalf::Stream(Box::new(write)))
    }
}

/// How long [`Session::close`] waits for the writer to flush the goodbye.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Buffers above this capacity are dropped rather than kept for the next frame.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

/// Settings fixed when the connection is made.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_frame_bytes: usize,
    pub(crate) batch_size: u32,
    /// Shared secret for servers that require a token.
    pub(crate) token: Option<String>,
    /// TLS settings; `None` for plain TCP.
    pub(crate) tls: Option<crate::TlsOptions>,
}

/// How a request ended, as told to its caller.
#[derive(Debug)]
enum Outcome {
    /// The payload of its `Response`, for the caller to decode (into its own type, on its own
    /// thread; see [`decode_as`]).
    Response(Bytes),
    /// The `Pong` to a ping.
    Pong,
    /// Its deadline passed and it was removed; the caller asks the server to cancel it.
    TimedOut,
}

/// A request waiting for its reply.
#[derive(Debug)]
struct Waiter {
    tx: oneshot::Sender<Outcome>,
    /// When it times out; `None`: never.
    deadline: Option<Instant>,
    /// Whether the server is asked to cancel it when it times out (not for pings); the
    /// deadline watcher does so only if the caller is gone.
    cancel: bool,
}

/// State shared with the reader task; one lock, so a request cannot register after the
/// connection closed and then wait forever.
#[derive(Debug, Default)]
struct State {
    pending: HashMap<RequestId, Waiter>,
    /// Why the connection closed, once it has.
    closed: Option<String>,
    /// The deadline watcher looks at the pending requests at this time at the latest (`None`:
    /// only when woken). A request whose deadline is earlier must wake it.
    next_check: Option<Instant>,
}

/// What the session's callers, the reader task, the writer task and the deadline watcher share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    outbox: Outbox,
    /// Wakes the deadline watcher: an earlier deadline, or the connection closed.
    deadlines: Notify,
    /// How long the deadline watcher sleeps when nothing is pending: a request made meanwhile
    /// with the default timeout would not time out earlier anyway (at least a second, so that
    /// a zero timeout does not make it spin).
    idle_check: Duration,
}

impl Shared {
    /// Marks the connection closed and fails every pending request; the first reason wins.
    fn close(&self, reason: String) {
        let pending = {
            let mut state = lock(&self.state);
            if state.closed.is_some() {
                return;
            }
            debug!(%reason, pending = state.pending.len(), "connection closed");
            state.closed = Some(reason);
            std::mem::take(&mut state.pending)
        };
        // Dropping the senders wakes every waiter with "disconnected".
        drop(pending);
        // The deadline watcher stops.
        self.deadlines.notify_one();
    }

    fn closed_reason(&self) -> Option<String> {
        lock(&self.state).closed.clone()
    }

    /// Writes one encoded frame now, or leaves it for the writer task; see [`Outbox::push`].
    /// False if the frame was dropped: the write side is closed, or writing failed (which
    /// closes the connection).
    fn push(&self, frame: &mut BytesMut, shared: SharedList, mode: WriteMode) -> bool {
        match self.outbox.push(frame, shared, mode) {
            Ok(sent) => sent,
            Err(e) => {
                self.close(format!("writing failed: {e}"));
                false
            }
        }
    }

    /// Encodes and sends a message that expects no reply; errors are ignored (the connection
    /// may be closing, and then there is nobody to tell).
    fn send_quietly(&self, message: &Message) {
        let mut frame = Scratch::take();
        match codec::encode_frame(message, self.outbox.max_frame_bytes, &mut frame) {
            Ok(()) => {
                let busy = !lock(&self.state).pending.is_empty();
                self.push(&mut frame, Vec::new(), WriteMode::when(busy));
            }
            Err(e) => warn!(error = %e, "cannot encode a control message"),
        }
    }
}

/// The byte strings of a frame that were not copied into its buffer, each with its position
/// there (see [`codec::encode_frame_shared`]).
type SharedList = Vec<(usize, Bytes)>;

/// The write side of the connection: an ordered writer of frames, synchronous on plain TCP.
///
/// Every write happens under the state lock, so frames never interleave and keep their order.
/// Large byte strings of a request are not copied into the frame buffer: the queue keeps a
/// handle on each and writes it from its own memory, between the buffer's bytes.
#[derive(Debug)]
struct Outbox {
    /// Plain TCP: callers write with `try_write`. `None` for TLS, whose stream the writer task
    /// owns.
    tcp: Option<OwnedWriteHalf>,
    state: Mutex<OutState>,
    /// Wakes the writer task: a backlog to flush, or the write side to shut down.
    wake: Notify,
    max_frame_bytes: usize,
}

#[derive(Debug, Default)]
struct OutState {
    /// Encoded frames not yet written, with their large byte strings.
    queue: FrameQueue<Bytes>,
    /// The socket would block: the writer task flushes the queue as it drains, and callers
    /// append to it meanwhile.
    blocked: bool,
    /// The first frame of the queue was queued while other requests were in flight: the
    /// writer task lets the ready tasks run before it writes, so that their frames go along.
    coalescing: bool,
    /// The write side is to be shut down once the queue is written; later frames are dropped.
    shutdown: bool,
    /// Writing failed or the write side is shut down: frames are dropped.
    dead: bool,
}

/// How [`Outbox::push`] sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Write it now (with whatever is queued before it) if the socket takes it: nothing else
    /// is in flight, so nothing else is likely to be sent soon.
    Now,
    /// Queue it for the writer task, which writes everything queued in one go: other requests
    /// are in flight, so more frames are likely to follow (many tasks pipelining on one
    /// connection); one system call for all of them beats one each.
    Coalesce,
}

impl WriteMode {
    /// `Now` unless other requests are in flight.
    fn when(busy: bool) -> WriteMode {
        if busy {
            WriteMode::Coalesce
        } else {
            WriteMode::Now
        }
    }
}

impl Outbox {
    fn new(tcp: Option<OwnedWriteHalf>, max_frame_bytes: usize) -> Outbox {
        Outbox {
            tcp,
            state: Mutex::default(),
            wake: Notify::new(),
            max_frame_bytes,
        }
    }

    /// Sends one encoded frame (taking its bytes), with the byte strings `shared` left out of
    /// it (see [`codec::encode_frame_shared`]). With [`WriteMode::Now`] on plain TCP, unless
    /// the socket is blocked, the frame (after anything queued) is written at once with a
    /// non-blocking `try_write` (vectored when there are shared byte strings); whatever the
    /// socket does not take is left for the writer task. Otherwise the frame is queued and the
    /// writer task woken. Never blocks.
    ///
    /// `Ok(false)` if the frame was dropped because the write side is closed; an error if
    /// writing failed (the write side is then closed). Either way nothing of it is kept.
    fn push(&self, frame: &mut BytesMut, shared: SharedList, mode: WriteMode) -> io::Result<bool> {
        let mut state = lock(&self.state);
        if state.dead || state.shutdown {
            return Ok(false);
        }
        let half = match &self.tcp {
            Some(half) if mode == WriteMode::Now && !state.blocked => half,
            _ => {
                let first = state.queue.is_empty();
                state.queue.push_frame(frame, shared);
                if first && !state.blocked {
                    // The first frame queued: the writer task flushes it (or a caller that
                    // writes first takes it along).
                    state.coalescing = mode == WriteMode::Coalesce;
                    self.wake.notify_one();
                }
                return Ok(true);
            }
        };
        let result = if state.queue.is_empty() && shared.is_empty() {
            // The common case: one small frame, written from the caller's buffer.
            try_write_all(half, frame).map(|n| {
                if n < frame.len() {
                    frame.advance(n);
                    state.queue.push_frame(frame, []);
                }
            })
        } else {
            // Frames queued before this one go first, in the same system call.
            state.queue.push_frame(frame, shared);
            try_write_queue(half, &mut state.queue)
        };
        if let Err(e) = result {
            state.fail();
            return Err(e);
        }
        if !state.queue.is_empty() {
            state.blocked = true;
            self.wake.notify_one();
        }
        Ok(true)
    }

    /// When frames are being coalesced, lets the tasks that are ready run first, so that the
    /// frames they are about to queue leave with these. Without this, on a multi-thread runtime
    /// the writer task (woken into the worker's LIFO slot) runs right after the task that
    /// queued the first frame, and pipelined frames go out one system call each.
    async fn let_others_queue(&self) {
        let coalescing = std::mem::take(&mut lock(&self.state).coalescing);
        if coalescing {
            tokio::task::yield_now().await;
        }
    }

    /// Shuts the write side down once what is pending is written: at once on plain TCP when
    /// nothing is (returning true; the writer task then just stops), else by the writer task,
    /// which is asked to write the rest first (returning false).
    fn shutdown(&self) -> bool {
        let mut state = lock(&self.state);
        if let Some(half) = &self.tcp
            && !state.dead
            && !state.blocked
            && state.queue.is_empty()
        {
            state.shutdown = true;
            state.dead = true;
            drop(state);
            shut_down_write(half);
            self.wake.notify_one();
            return true;
        }
        if !state.shutdown {
            state.shutdown = true;
            self.wake.notify_one();
        }
        false
    }
}

impl OutState {
    /// Writing failed: nothing more will be written (what is queued is dropped, the shared
    /// byte strings with it).
    fn fail(&mut self) {
        self.dead = true;
        self.queue.clear();
    }

    /// Everything queued is written: callers write directly again. True if the write side is
    /// to be shut down now (nothing more is accepted then).
    fn drained(&mut self) -> bool {
        self.blocked = false;
        self.queue.trim(KEEP_BUFFER_BYTES);
        if self.shutdown {
            self.dead = true;
            self.queue.clear();
        }
        self.shutdown
    }
}

/// Writes as much of `bytes` as the socket takes without blocking; returns how much.
fn try_write_all(half: &OwnedWriteHalf, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match half.try_write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Pieces handed to one vectored write.
const MAX_PIECES: usize = 16;

/// Writes as much of `queue` as the socket takes without blocking, taking it off the queue: one
/// buffer with `try_write`, a buffer with shared byte strings with `try_write_vectored`.
fn try_write_queue(half: &OwnedWriteHalf, queue: &mut FrameQueue<Bytes>) -> io::Result<()> {
    if !queue.has_shared() {
        let written = try_write_all(half, queue.next_piece())?;
        queue.advance(written);
        return Ok(());
    }
    loop {
        let mut iov = [io::IoSlice::new(&[]); MAX_PIECES];
        let pieces = queue.pieces(&mut iov);
        if pieces == 0 {
            return Ok(());
        }
        match half.try_write_vectored(&iov[..pieces]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => queue.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A buffer to encode one frame in, reused by the thread (no allocation per call); returned
/// to the thread when dropped.
struct Scratch(BytesMut);

thread_local! {
    static SCRATCH: Cell<BytesMut> = Cell::new(BytesMut::new());
}

impl Scratch {
    fn take() -> Scratch {
        Scratch(SCRATCH.try_with(Cell::take).unwrap_or_default())
    }
}

impl std::ops::Deref for Scratch {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() <= KEEP_BUFFER_BYTES {
            buf.clear();
            let _ = SCRATCH.try_with(|scratch| scratch.set(buf));
        }
    }
}

/// A live remote object known to the session.
#[derive(Debug)]
struct Live {
    object: Weak<ObjectInner>,
    /// Never released (modules, the namespace, builtins: they live as long as the connection).
    pinned: bool,
}

/// Objects cached by name so that asking again costs no round trip.
#[derive(Debug, Default)]
struct Caches {
    modules: HashMap<String, NetRef>,
    namespace: Option<NetRef>,
    builtins: Option<NetRef>,
}

/// Which cached object.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cached<'a> {
    Module(&'a str),
    Namespace,
    Builtins,
}

/// One connection to a server. Shared by [`Connection`](crate::Connection) clones and by every
/// [`RemoteObject`] it produced; when the last of those goes, it says goodbye and closes.
pub(crate) struct Session {
    peer: String,
    info: ServerInfo,
    config: Config,
    next_id: AtomicU64,
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    live: Mutex<HashMap<NetRefId, Live>>,
    caches: Mutex<Caches>,
    /// References handed over by value (`Value::from(object)`) whose last handle is gone: they
    /// are released once the next request (the one that carries them) has completed.
    deferred: Mutex<Vec<NetRefId>>,
    has_deferred: AtomicBool,
    /// The [`Link`] (the connection handle) this session serves, for
    /// [`RemoteObject::connection`].
    link: Mutex<Weak<Link>>,
    /// Set when a reconnect replaced this session: its objects are stale references.
    superseded: AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("connection_id", &self.info.connection_id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_error(context: impl std::fmt::Display, e: &std::io::Error) -> Error {
    Error::Io(std::io::Error::new(e.kind(), format!("{context}: {e}")))
}

impl Session {
    /// Connects, greets, reads the welcome and starts the two tasks.
    pub(crate) async fn connect(peer: String, config: Config) -> Result<Arc<Session>> {
        debug!(%peer, "connecting");
        let handshake = Self::handshake(&peer, &config);
        let (info, read, write) =
            match tokio::time::timeout(config.connect_timeout, handshake).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Error::ConnectTimeout {
                        addr: peer,
                        timeout: config.connect_timeout,
                    });
                }
            };
        debug!(%peer, server = %info.server, connection_id = info.connection_id, "connected");

        let (tcp, stream) = match write {
            WriteHalf::Tcp(half) => (Some(half), None),
            WriteHalf::Stream(writer) => (None, Some(writer)),
        };
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            outbox: Outbox::new(tcp, config.max_frame_bytes),
            deadlines: Notify::new(),
            idle_check: config.request_timeout.max(Duration::from_secs(1)),
        });
        let writer = tokio::spawn(write_loop(shared.clone(), stream));
        let reader = tokio::spawn(read_loop(read, shared.clone()));
        // It stops by itself when the connection closes.
        tokio::spawn(watch_deadlines(shared.clone()));
        Ok(Arc::new(Session {
            peer,
            info,
            config,
            next_id: AtomicU64::new(1),
            shared,
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
            live: Mutex::default(),
            caches: Mutex::default(),
            deferred: Mutex::default(),
            has_deferred: AtomicBool::new(false),
            link: Mutex::default(),
            superseded: AtomicBool::new(false),
        }))
    }

    async fn handshake(
        peer: &str,
        config: &Config,
    ) -> Result<(ServerInfo, FramedRead<Reader, codec::FrameCodec>, WriteHalf)> {
        let tcp = TcpStream::connect(peer)
            .await
            .map_err(|e| io_error(format_args!("cannot connect to {peer}"), &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| io_error(format_args!("cannot set TCP_NODELAY on {peer}"), &e))?;
        let mut stream: Box<dyn Stream> = match &config.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let (connector, name) = tls.connector(peer)?;
                let tls = connector.connect(name, tcp).await.map_err(|e| {
                    io_error(
                        format_args!(
                            "TLS handshake with {peer} failed (is the server started with \
                             --tls-cert, and does the CA match?)"
                        ),
                        &e,
                    )
                })?;
                Box::new(tls)
            }
        };
        stream
            .write_all(&handshake::greeting())
            .await
            .map_err(|e| io_error(format_args!("cannot send the greeting to {peer}"), &e))?;
        stream
            .flush()
            .await
            .map_err(|e| io_error(format_args!("cannot send the greeting to {peer}"), &e))?;
        let mut theirs = [0u8; GREETING_LEN];
        if let Err(e) = stream.read_exact(&mut theirs).await {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Disconnected {
                    peer: peer.to_owned(),
                    reason: if config.tls.is_some() {
                        "the peer closed the connection during the greeting \
                         (is it an rpyc-classic server?)"
                    } else {
                        "the peer closed the connection during the greeting (is it an \
                         rpyc-classic server? if it was started with --tls-cert, connect \
                         with rpycs:// and TlsOptions)"
                    }
                    .into(),
                }
            } else {
                io_error(format_args!("cannot read the greeting of {peer}"), &e)
            });
        }
        handshake::check_greeting(&theirs)?;

        let (read, mut write) = stream.into_halves();
        let mut read = FramedRead::new(read, codec::framing(config.max_frame_bytes));
        let disconnected = |reason: String| Error::Disconnected {
            peer: peer.to_owned(),
            reason,
        };
        let mut answered_challenge = false;
        loop {
            let frame = match read.next().await {
                None if answered_challenge => {
                    return Err(disconnected(
                        "the server closed the connection after the token was sent \
                         (authentication failed?)"
                            .into(),
                    ));
                }
                None => {
                    return Err(disconnected(
                        "the server closed the connection before its welcome".into(),
                    ));
                }
                Some(Err(e)) => {
                    return Err(io_error(format_args!("cannot read from {peer}"), &e));
                }
                Some(Ok(frame)) => frame,
            };
            match codec::decode(&frame.payload)? {
                Message::Welcome(info) => return Ok((info, read, write)),
                Message::Goodbye { reason } => {
                    return Err(disconnected(format!(
                        "the server refused the connection: {reason}"
                    )));
                }
                Message::Challenge { nonce } if !answered_challenge => {
                    let Some(token) = config.token.as_deref() else {
                        return Err(Error::AuthenticationRequired {
                            peer: peer.to_owned(),
                        });
                    };
                    let proof = rpyc_protocol::auth::proof(token.as_bytes(), &nonce);
                    let mut reply = BytesMut::new();
                    codec::encode_frame(
                        &Message::Authenticate { proof },
                        config.max_frame_bytes,
                        &mut reply,
                    )?;
                    write.write_all_flush(&reply).await.map_err(|e| {
                        io_error(format_args!("cannot send the token proof to {peer}"), &e)
                    })?;
                    answered_challenge = true;
                }
                other => {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{peer} sent {} instead of a welcome message",
                            message_name(&other)
                        ),
                    )));
                }
            }
        }
    }

    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    pub(crate) fn info(&self) -> &ServerInfo {
        &self.info
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed.is_some()
    }

    /// Records the connection handle this session serves.
    pub(crate) fn set_link(&self, link: Weak<Link>) {
        *lock(&self.link) = link;
    }

    /// The connection handle this session serves, if it still exists.
    pub(crate) fn link(&self) -> Option<Arc<Link>> {
        lock(&self.link).upgrade()
    }

    /// Marks this session as replaced by a reconnect.
    pub(crate) fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
    }

    /// Whether a reconnect replaced this session.
    pub(crate) fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    fn disconnected(&self, reason: Option<String>) -> Error {
        Error::Disconnected {
            peer: self.peer.clone(),
            reason: reason
                .or_else(|| self.shared.closed_reason())
                .unwrap_or_else(|| "the connection was lost".into()),
        }
    }

    /// Encodes and queues a message that expects no reply; errors are ignored (the connection
    /// may be closing, and then there is nobody to tell).
    fn send_quietly(&self, message: &Message) {
        self.shared.send_quietly(message);
    }

    /// Sends `op` and waits for its result, at most `timeout`.
    pub(crate) async fn request(&self, op: Op, timeout: Duration) -> Result<Value> {
        decode_value(&self.call(op, timeout).await?)
    }

    /// Sends `op` and waits for its result, at most `timeout`, converted into `T`.
    pub(crate) async fn request_as<T: DeserializeOwned>(
        &self,
        op: Op,
        timeout: Duration,
    ) -> Result<T> {
        decode_as(&self.call(op, timeout).await?)
    }

    /// Sends `op` and waits for the payload of its response, at most `timeout`.
    pub(crate) async fn call(&self, op: Op, timeout: Duration) -> Result<Bytes> {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        trace!(id = id.0, op = op_name(&op), "request");
        let message = Message::Request { id, op };
        match self.exchange(id, &message, timeout, true).await? {
            Outcome::Response(payload) => Ok(payload),
            Outcome::Pong => Err(Error::unexpected_message("Pong")),
            Outcome::TimedOut => Err(Error::Timeout { timeout }),
        }
    }

    /// Measures one round trip.
    pub(crate) async fn ping(&self) -> Result<Duration> {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        trace!(id = id.0, "ping");
        let start = tokio::time::Instant::now();
        self.exchange(
            id,
            &Message::Ping { id },
            self.config.request_timeout,
            false,
        )
        .await?;
        Ok(start.elapsed())
    }

    async fn exchange(
        &self,
        id: RequestId,
        message: &Message,
        timeout: Duration,
        cancel: bool,
    ) -> Result<Outcome> {
        let mut frame = Scratch::take();
        let mut shared = Vec::new();
        // Byte strings of a megabyte or more go as blobs after the message, which the server
        // reads straight into the `bytes` objects the call gets.
        codec::encode_frame_shared(
            message,
            self.config.max_frame_bytes,
            true,
            &mut frame,
            &mut shared,
        )?;
        let (tx, reply_rx) = oneshot::channel();
        // No timer per request: the deadline watcher times requests out (arming a timer for
        // every call wakes the runtime's timer driver, often on another thread).
        let deadline = Instant::now().checked_add(timeout);
        let busy;
        {
            let mut state = lock(&self.shared.state);
            if let Some(reason) = &state.closed {
                return Err(self.disconnected(Some(reason.clone())));
            }
            busy = !state.pending.is_empty();
            if let Some(deadline) = deadline {
                if state.next_check.is_none_or(|next| deadline < next) {
                    state.next_check = Some(deadline);
                    self.shared.deadlines.notify_one();
                }
            }
            let waiter = Waiter {
                tx,
                deadline,
                cancel,
            };
            state.pending.insert(id, waiter);
        }
        let mut guard = PendingGuard {
            session: self,
            id,
            cancel,
            armed: true,
            release: Vec::new(),
        };
        if self.has_deferred.swap(false, Ordering::AcqRel) {
            guard.release = std::mem::take(&mut *lock(&self.deferred));
        }
        // Registered before it is written: the reply may come back at once.
        let sent = self.shared.push(&mut frame, shared, WriteMode::when(busy));
        drop(frame);
        if !sent {
            guard.armed = false;
            lock(&self.shared.state).pending.remove(&id);
            return Err(self.disconnected(None));
        }
        let outcome = reply_rx.await;
        // Whatever happened, the request is no longer pending.
        guard.armed = false;
        match outcome {
            Ok(outcome @ (Outcome::Response(_) | Outcome::Pong)) => {
                trace!(id = id.0, "reply");
                Ok(outcome)
            }
            Ok(Outcome::TimedOut) => {
                debug!(id = id.0, ?timeout, "request timed out; cancelling it");
                if cancel {
                    trace!(id = id.0, "cancel");
                    self.send_quietly(&Message::Cancel { id });
                }
                Err(Error::Timeout { timeout })
            }
            Err(_) => Err(self.disconnected(None)),
        }
    }

    /// Wraps a reference the server issued in a [`RemoteObject`], reusing the live one if this
    /// id already has one.
    pub(crate) fn adopt(self: &Arc<Self>, netref: NetRef, pinned: bool) -> RemoteObject {
        let mut live = lock(&self.live);
        if let Some(entry) = live.get_mut(&netref.id) {
            entry.pinned |= pinned;
            if let Some(inner) = entry.object.upgrade() {
                return RemoteObject::from_inner(inner);
            }
        }
        let inner = Arc::new(ObjectInner::new(netref, self.clone()));
        let id = inner.netref().id;
        let pinned = pinned || live.get(&id).is_some_and(|e| e.pinned);
        live.insert(
            id,
            Live {
                object: Arc::downgrade(&inner),
                pinned,
            },
        );
        RemoteObject::from_inner(inner)
    }

    /// Called when the last handle of a remote object is dropped: releases it on the server,
    /// now or (if it was handed over by value) after the next request.
    pub(crate) fn forget(&self, id: NetRefId, lent: bool) {
        {
            let mut live = lock(&self.live);
            match live.get(&id) {
                Some(entry) if entry.pinned || entry.object.strong_count() > 0 => return,
                Some(_) => {
                    live.remove(&id);
                }
                None => {}
            }
        }
        if lent {
            lock(&self.deferred).push(id);
            self.has_deferred.store(true, Ordering::Release);
        } else if !self.is_closed() {
            trace!(id = id.0, "release");
            self.send_quietly(&Message::Release { ids: vec![id] });
        }
    }

    /// Checks that every reference inside `values` is a live object of this session.
    pub(crate) fn check_refs<'a>(&self, values: impl IntoIterator<Item = &'a Value>) -> Result<()> {
        fn walk<'a>(v: &'a Value, out: &mut Vec<&'a NetRef>) {
            match v {
                Value::Ref(r) => out.push(r),
                Value::Tuple(items)
                | Value::List(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => items.iter().for_each(|v| walk(v, out)),
                Value::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
                    walk(k, out);
                    walk(v, out);
                }),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        values.into_iter().for_each(|v| walk(v, &mut refs));
        if refs.is_empty() {
            return Ok(());
        }
        // Upgraded handles are dropped after the lock is released: dropping the last one
        // re-enters `forget`, which takes the lock.
        let mut upgraded = Vec::new();
        let live = lock(&self.live);
        let foreign = refs.into_iter().find(|r| {
            let Some(entry) = live.get(&r.id) else {
                // Handed over by value and dropped: still valid until the next request is done.
                return !lock(&self.deferred).contains(&r.id);
            };
            if entry.pinned {
                return false;
            }
            match entry.object.upgrade() {
                Some(object) => {
                    let same = object.netref().type_name == r.type_name;
                    upgraded.push(object);
                    !same
                }
                None => true,
            }
        });
        drop(live);
        drop(upgraded);
        match foreign {
            Some(r) => Err(Error::ForeignReference {
                reference: r.to_string(),
                peer: self.peer.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A cached module, namespace or builtins object, fetched on first use.
    pub(crate) async fn cached(self: &Arc<Self>, which: Cached<'_>) -> Result<RemoteObject> {
        let hit = {
            let caches = lock(&self.caches);
            match which {
                Cached::Module(name) => caches.modules.get(name).cloned(),
                Cached::Namespace => caches.namespace.clone(),
                Cached::Builtins => caches.builtins.clone(),
            }
        };
        if let Some(netref) = hit {
            if self.is_closed() {
                return Err(self.disconnected(None));
            }
            return Ok(self.adopt(netref, true));
        }
        let op = match which {
            Cached::Module(name) => Op::Import { name: name.into() },
            Cached::Namespace => Op::Namespace,
            Cached::Builtins => Op::Builtins,
        };
        let value = self.request(op, self.config.request_timeout).await?;
        let Value::Ref(netref) = value else {
            return Err(Error::unexpected_reply("a remote object reference", &value));
        };
        let object = self.adopt(netref.clone(), true);
        let mut caches = lock(&self.caches);
        match which {
            Cached::Module(name) => {
                caches.modules.insert(name.to_owned(), netref);
            }
            Cached::Namespace => caches.namespace = Some(netref),
            Cached::Builtins => caches.builtins = Some(netref),
        }
        Ok(object)
    }

    /// Says goodbye, closes the socket and fails everything pending.
    pub(crate) async fn close(&self) {
        if !self.is_closed() {
            debug!(peer = %self.peer, "closing");
            self.send_quietly(&Message::Goodbye {
                reason: "the client closed the connection".into(),
            });
            self.shared.close("closed by the client".into());
        }
        let done = self.shared.outbox.shutdown();
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            if done {
                // Nothing left to write: the writer task has nothing to wait for.
                writer.abort();
            } else {
                let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer).await;
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.is_closed() {
            self.send_quietly(&Message::Goodbye {
                reason: "the client dropped the connection".into(),
            });
            self.shared
                .close("the client dropped the connection".into());
        }
        // Whether or not it closed already: the writer task flushes, shuts the write side
        // down and stops.
        self.shared.outbox.shutdown();
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
    }
}

/// Removes a pending request if the caller stops waiting (its future dropped) and asks the
/// server to cancel it (tarpc's `ResponseGuard`; timeouts are the deadline watcher's); releases
/// deferred references once the request that carried them is over.
struct PendingGuard<'a> {
    session: &'a Session,
    id: RequestId,
    cancel: bool,
    armed: bool,
    release: Vec<NetRefId>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let was_pending = lock(&self.session.shared.state)
                .pending
                .remove(&self.id)
                .is_some();
            if was_pending && self.cancel {
                trace!(id = self.id.0, "cancel");
                self.session.send_quietly(&Message::Cancel { id: self.id });
            }
        }
        if !self.release.is_empty() && !self.session.is_closed() {
            let ids = std::mem::take(&mut self.release);
            self.session.send_quietly(&Message::Release { ids });
        }
    }
}

/// The deadline watcher: times out the requests whose deadline has passed, with one timer per
/// connection (tarpc's dispatch keeps its deadlines together the same way). It wakes at the
/// earliest deadline pending, or when a request with an earlier one comes, and stops when the
/// connection closes.
async fn watch_deadlines(shared: Arc<Shared>) {
    loop {
        let now = Instant::now();
        let (expired, next) = {
            let mut state = lock(&shared.state);
            if state.closed.is_some() {
                return;
            }
            let mut next = None::<Instant>;
            let ids: Vec<RequestId> = state
                .pending
                .iter()
                .filter_map(|(&id, waiter)| match waiter.deadline {
                    Some(deadline) if deadline <= now => Some(id),
                    Some(deadline) => {
                        next = Some(next.map_or(deadline, |next| next.min(deadline)));
                        None
                    }
                    None => None,
                })
                .collect();
            let expired: Vec<(RequestId, Waiter)> = ids
                .into_iter()
                .filter_map(|id| state.pending.remove(&id).map(|waiter| (id, waiter)))
                .collect();
            if state.pending.is_empty() {
                next = now.checked_add(shared.idle_check);
            }
            state.next_check = next;
            (expired, next)
        };
        for (id, waiter) in expired {
            // The caller asks the server to cancel it: its request is surely sent by the time
            // it hears of the timeout. If the caller is gone, it was sent and nobody else will.
            if waiter.tx.send(Outcome::TimedOut).is_err() && waiter.cancel {
                trace!(id = id.0, "cancel");
                shared.send_quietly(&Message::Cancel { id });
            }
        }
        match next {
            Some(next) => {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = shared.deadlines.notified() => {}
                }
            }
            None => shared.deadlines.notified().await,
        }
    }
}

/// The writer task: flushes backlogs (plain TCP: as the socket drains; TLS: every frame), until
/// asked to shut down; then shuts the write side down. A failed write closes the connection.
async fn write_loop(shared: Arc<Shared>, stream: Option<Writer>) {
    let outbox = &shared.outbox;
    let result = match (&outbox.tcp, stream) {
        (Some(half), _) => write_tcp(outbox, half).await,
        (None, Some(writer)) => write_stream(outbox, writer).await,
        (None, None) => Ok(()),
    };
    if let Err(e) = result {
        lock(&outbox.state).fail();
        shared.close(format!("writing failed: {e}"));
    }
}

async fn write_tcp(outbox: &Outbox, half: &OwnedWriteHalf) -> io::Result<()> {
    loop {
        outbox.wake.notified().await;
        outbox.let_others_queue().await;
        loop {
            {
                let mut state = lock(&outbox.state);
                if state.dead {
                    return Ok(());
                }
                if state.queue.is_empty() {
                    if state.drained() {
                        drop(state);
                        shut_down_write(half);
                        return Ok(());
                    }
                    break;
                }
                let queued = state.queue.len();
                try_write_queue(half, &mut state.queue)?;
                trace!(
                    written = queued - state.queue.len(),
                    left = state.queue.len(),
                    "flush"
                );
                if state.queue.is_empty() {
                    continue;
                }
                state.blocked = true;
            }
            half.writable().await?;
        }
    }
}

/// Shuts the write side of a TCP connection down (the server sees the end of the stream).
fn shut_down_write(half: &OwnedWriteHalf) {
    trace!("shut down");
    let shut = socket2::SockRef::from(half.as_ref()).shutdown(std::net::Shutdown::Write);
    if let Err(e) = shut {
        debug!(error = %e, "shutting down the write side failed");
    }
}

async fn write_stream(outbox: &Outbox, mut writer: Writer) -> io::Result<()> {
    // The frames being written, swapped out of the state (so both buffers are reused).
    let mut chunk = FrameQueue::<Bytes>::new();
    loop {
        outbox.wake.notified().await;
        outbox.let_others_queue().await;
        loop {
            let shutdown = {
                let mut state = lock(&outbox.state);
                if state.dead {
                    return Ok(());
                }
                if state.queue.is_empty() {
                    state.drained()
                } else {
                    std::mem::swap(&mut state.queue, &mut chunk);
                    false
                }
            };
            if shutdown {
                trace!("shut down");
                return writer.shutdown().await;
            }
            if chunk.is_empty() {
                break;
            }
            trace!(bytes = chunk.len(), "flush");
            write_queue(&mut writer, &mut chunk).await?;
            writer.flush().await?;
            chunk.trim(KEEP_BUFFER_BYTES);
        }
    }
}

/// Writes all of `queue` (vectored writes: a large byte string goes from its own memory).
async fn write_queue(writer: &mut Writer, queue: &mut FrameQueue<Bytes>) -> io::Result<()> {
    loop {
        let written = {
            let mut iov = [io::IoSlice::new(&[]); MAX_PIECES];
            let pieces = queue.pieces(&mut iov);
            if pieces == 0 {
                return Ok(());
            }
            writer.write_vectored(&iov[..pieces]).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        queue.advance(written);
    }
}

async fn read_loop(mut stream: FramedRead<Reader, codec::FrameCodec>, shared: Arc<Shared>) {
    let send = |message: &Message| shared.send_quietly(message);
    let reason = loop {
        let frame = match stream.next().await {
            None => break "the server closed the connection".to_owned(),
            Some(Err(e)) => break format!("reading failed: {e}"),
            // Plain frames only: the codec refuses blob frames (clients send them, servers don't).
            Some(Ok(frame)) => frame.payload.freeze(),
        };
        // A response goes to its caller undecoded: the caller converts it into its own type,
        // with no `Value` tree in between, and many callers decode on many threads.
        if let Some(id) = codec::response_id(&frame) {
            let waiter = lock(&shared.state).pending.remove(&id);
            let unclaimed = match waiter {
                Some(waiter) => waiter.tx.send(Outcome::Response(frame)).err(),
                None => Some(Outcome::Response(frame)),
            };
            // Nobody waits (timed out or dropped): free what the reply holds.
            if let Some(Outcome::Response(frame)) = unclaimed
                && let Ok(Message::Response {
                    result: Ok(value), ..
                }) = codec::decode_shared(&frame)
            {
                let mut ids = Vec::new();
                collect_ref_ids(&value, &mut ids);
                if !ids.is_empty() {
                    debug!(id = id.0, refs = ids.len(), "releasing an unclaimed reply");
                    send(&Message::Release { ids });
                }
            }
            continue;
        }
        let message = match codec::decode_shared(&frame) {
            Ok(message) => message,
            Err(e) => break format!("the server sent a malformed frame: {e}"),
        };
        match message {
            Message::Pong { id } => {
                if let Some(waiter) = lock(&shared.state).pending.remove(&id) {
                    let _ = waiter.tx.send(Outcome::Pong);
                }
            }
            Message::Ping { id } => send(&Message::Pong { id }),
            Message::Goodbye { reason } => {
                break format!("the server said goodbye: {reason}");
            }
            Message::Request { id, op } => {
                warn!(
                    id = id.0,
                    op = op_name(&op),
                    "the server sent a request; refusing it"
                );
                send(&Message::Response {
                    id,
                    result: Err(ServerError::InvalidRequest(
                        "this client does not serve requests".into(),
                    )),
                });
            }
            other @ (Message::Welcome(_)
            | Message::Response { .. }
            | Message::Cancel { .. }
            | Message::Release { .. }
            | Message::Challenge { .. }
            | Message::Authenticate { .. }) => {
                debug!(
                    message = message_name(&other),
                    "ignoring an unexpected message"
                );
            }
        }
    };
    shared.close(reason);
}

/// The result in a response payload, as a [`Value`] (large byte strings share the payload).
pub(crate) fn decode_value(payload: &Bytes) -> Result<Value> {
    match codec::decode_shared(payload)? {
        Message::Response { result, .. } => result.map_err(Error::from),
        other => Err(Error::unexpected_message(message_name(&other))),
    }
}

/// The result in a response payload, converted into `T`: read straight from the payload when
/// `T` allows (no `Value` tree), through a [`Value`] otherwise (a reference inside, a `Value`
/// asked for, or a result that does not fit, whose error the `Value` conversion words).
pub(crate) fn decode_as<T: DeserializeOwned>(payload: &Bytes) -> Result<T> {
    match codec::decode_response_as::<T>(payload)? {
        TypedReply::Ok(value) => Ok(value),
        TypedReply::Err(e) => Err(e.into()),
        TypedReply::NeedsValue => Ok(decode_value(payload)?.deserialize_into()?),
    }
}

fn collect_ref_ids(value: &Value, out: &mut Vec<NetRefId>) {
    match value {
        Value::Ref(r) => out.push(r.id),
        Value::Tuple(items) | Value::List(items) | Value::Set(items) | Value::FrozenSet(items) => {
            items.iter().for_each(|v| collect_ref_ids(v, out));
        }
        Value::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
            collect_ref_ids(k, out);
            collect_ref_ids(v, out);
        }),
        _ => {}
    }
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::Welcome(_) => "Welcome",
        Message::Request { .. } => "Request",
        Message::Response { .. } => "Response",
        Message::Cancel { .. } => "Cancel",
        Message::Release { .. } => "Release",
        Message::Ping { .. } => "Ping",
        Message::Pong { .. } => "Pong",
        Message::Goodbye { .. } => "Goodbye",
        Message::Challenge { .. } => "Challenge",
        Message::Authenticate { .. } => "Authenticate",
    }
}

/// The operation's name, for logs.
pub(crate) fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Execute { .. } => "Execute",
        Op::Eval { .. } => "Eval",
        Op::Import { .. } => "Import",
        Op::Namespace => "Namespace",
        Op::Builtins => "Builtins",
        Op::GetAttr { .. } => "GetAttr",
        Op::SetAttr { .. } => "SetAttr",
        Op::DelAttr { .. } => "DelAttr",
        Op::Call { .. } => "Call",
        Op::CallMethod { .. } => "CallMethod",
        Op::GetItem { .. } => "GetItem",
        Op::SetItem { .. } => "SetItem",
        Op::DelItem { .. } => "DelItem",
        Op::Len { .. } => "Len",
        Op::Contains { .. } => "Contains",
        Op::Iter { .. } => "Iter",
        Op::Next { .. } => "Next",
        Op::Repr { .. } => "Repr",
        Op::Str { .. } => "Str",
        Op::Dir { .. } => "Dir",
        Op::Compare { .. } => "Compare",
        Op::Hash { .. } => "Hash",
        Op::Obtain { .. } => "Obtain",
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// An outbox on a TCP connection whose send buffer is small, and the other end.
    async fn socket_pair() -> (Arc<Outbox>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        socket2::SockRef::from(&client)
            .set_send_buffer_size(16 * 1024)
            .expect("send buffer");
        let (_read, write) = client.into_split();
        // The read half is dropped: only the write side is used.
        (Arc::new(Outbox::new(Some(write), 1 << 30)), server)
    }

    fn big(n: usize, seed: u8) -> Bytes {
        (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect()
    }

    /// Starts the writer task and a reader of everything `server` receives.
    fn start(
        outbox: &Arc<Outbox>,
        mut server: TcpStream,
    ) -> (JoinHandle<io::Result<()>>, JoinHandle<io::Result<Vec<u8>>>) {
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.map(|_| got)
        });
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let Some(half) = &outbox.tcp else {
                    unreachable!("a TCP outbox")
                };
                write_tcp(&outbox, half).await
            }
        });
        (writer, reader)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_byte_strings_are_written_from_their_own_memory() {
        let (outbox, server) = socket_pair().await;
        let mut expected = Vec::new();
        let mut push = |head: &[u8], shared: &[Bytes], tail: &[u8], mode: WriteMode| {
            let mut frame = BytesMut::from(head);
            let mut list = Vec::new();
            expected.extend_from_slice(head);
            for (i, s) in shared.iter().enumerate() {
                list.push((frame.len(), s.clone()));
                frame.extend_from_slice(&[i as u8; 2]);
                expected.extend_from_slice(s);
                expected.extend_from_slice(&[i as u8; 2]);
            }
            frame.extend_from_slice(tail);
            expected.extend_from_slice(tail);
            assert!(outbox.push(&mut frame, list, mode).expect("push"));
        };
        // Written at once until the socket blocks (nobody reads yet): the rest waits in the
        // queue, which holds the caller's bytes rather than a copy.
        let first = big(1 << 20, 5);
        push(
            b"head",
            &[first.clone(), big(70_000, 7)],
            b"tail",
            WriteMode::Now,
        );
        assert!(!first.is_unique(), "the queue holds the caller's bytes");
        assert!(lock(&outbox.state).queue.has_shared());
        assert!(lock(&outbox.state).blocked);
        for i in 0..40u8 {
            let shared = if i % 5 == 0 {
                vec![big(65_536 + usize::from(i), i)]
            } else {
                vec![]
            };
            let mode = if i % 2 == 0 {
                WriteMode::Now
            } else {
                WriteMode::Coalesce
            };
            push(&[i; 5], &shared, &[i; 3], mode);
        }
        let (writer, reader) = start(&outbox, server);
        // Frames pushed while the writer task drains the queue go after it.
        push(b"more", &[big(200_000, 11)], b"!", WriteMode::Now);
        // The writer task writes everything, then shuts the write side down.
        outbox.shutdown();
        writer.await.expect("join").expect("writes");
        let got = reader.await.expect("join").expect("reads");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the stream differs");
        assert!(first.is_unique(), "nothing is kept");
        // Closed: a frame is dropped with its shared strings.
        let mut frame = BytesMut::from(&b"late"[..]);
        let late = big(1 << 20, 9);
        let pushed = outbox.push(&mut frame, vec![(2, late.clone())], WriteMode::Now);
        assert!(!pushed.expect("no error"));
        assert!(late.is_unique(), "nothing of a dropped frame is kept");
    }

    #[tokio::test]
    async fn shutting_down_waits_for_queued_shared_bytes() {
        let (outbox, server) = socket_pair().await;
        // A frame that is nothing but a shared string (the buffer is empty), queued.
        let only = big(1 << 20, 13);
        let pushed = outbox.push(
            &mut BytesMut::new(),
            vec![(0, only.clone())],
            WriteMode::Coalesce,
        );
        assert!(pushed.expect("push"));
        assert!(!outbox.shutdown(), "shared bytes count as queued");
        let (writer, reader) = start(&outbox, server);
        writer.await.expect("join").expect("writes");
        let got = reader.await.expect("join").expect("reads");
        assert!(
            got == only[..],
            "written before the write side was shut down"
        );
        assert!(only.is_unique());
    }
}
