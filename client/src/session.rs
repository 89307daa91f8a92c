//! One connection's machinery: the handshake, the writer and reader tasks, the map of pending
//! requests, and the table of live remote objects.
//!
//! The socket is split in two. The writer task owns the write half and is fed encoded frames
//! through an unbounded channel; it drains everything queued before it flushes, so requests
//! pipelined by many callers leave in few system calls. The reader task owns the read half and
//! completes pending requests by id (tarpc's `RequestDispatch`, split in two so that neither
//! direction waits for the other). Callers encode their own frames, so the tasks do no per-call
//! work beyond moving bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rpyc_protocol::handshake::{self, GREETING_LEN};
use rpyc_protocol::{
    Message, NetRef, NetRefId, Op, RequestId, ServerError, ServerInfo, Value, codec,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The read side of a connection (plain TCP or TLS).
type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The write side of a connection (plain TCP or TLS).
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected byte stream, before it is split: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn into_halves(self: Box<Self>) -> (Reader, Writer);
}

impl Stream for TcpStream {
    fn into_halves(self: Box<Self>) -> (Reader, Writer) {
        let (read, write) = self.into_split();
        (Box::new(read), Box::new(write))
    }
}

impl Stream for tokio_rustls::client::TlsStream<TcpStream> {
    fn into_halves(self: Box<Self>) -> (Reader, Writer) {
        let (read, write) = tokio::io::split(*self);
        (Box::new(read), Box::new(write))
    }
}
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tracing::{debug, trace, warn};

use crate::error::{Error, Result};
use crate::object::{ObjectInner, RemoteObject};
use crate::reconnect::Link;

/// How long [`Session::close`] waits for the writer to flush the goodbye.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

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

/// What the writer task is asked to do.
#[derive(Debug)]
enum Outgoing {
    /// Write one frame payload.
    Frame(Bytes),
    /// Flush, shut the write half down and stop.
    Shutdown,
}

type Reply = Result<Value, ServerError>;

/// State shared with the reader task; one lock, so a request cannot register after the
/// connection closed and then wait forever.
#[derive(Debug, Default)]
struct State {
    pending: HashMap<RequestId, oneshot::Sender<Reply>>,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
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
    }

    fn closed_reason(&self) -> Option<String> {
        lock(&self.state).closed.clone()
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
    tx: mpsc::UnboundedSender<Outgoing>,
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

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(write, rx, shared.clone()));
        let reader = tokio::spawn(read_loop(read, shared.clone(), tx.downgrade()));
        Ok(Arc::new(Session {
            peer,
            info,
            config,
            next_id: AtomicU64::new(1),
            shared,
            tx,
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
    ) -> Result<(
        ServerInfo,
        FramedRead<Reader, LengthDelimitedCodec>,
        FramedWrite<Writer, LengthDelimitedCodec>,
    )> {
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

        let (read, write) = stream.into_halves();
        let mut read = FramedRead::new(read, codec::framing(config.max_frame_bytes));
        let mut write = FramedWrite::new(write, codec::framing(config.max_frame_bytes));
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
            match codec::decode(&frame)? {
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
                    let reply = codec::encode(&Message::Authenticate { proof })?;
                    write.send(reply).await.map_err(|e| {
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
        match codec::encode(message) {
            Ok(frame) => {
                let _ = self.tx.send(Outgoing::Frame(frame));
            }
            Err(e) => warn!(error = %e, "cannot encode a control message"),
        }
    }

    /// Sends `op` and waits for its result, at most `timeout`.
    pub(crate) async fn request(&self, op: Op, timeout: Duration) -> Result<Value> {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        trace!(id = id.0, op = op_name(&op), "request");
        let message = Message::Request { id, op };
        self.exchange(id, &message, timeout, true).await
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
    ) -> Result<Value> {
        let frame = codec::encode(message)?;
        if frame.len() > self.config.max_frame_bytes {
            return Err(Error::Protocol(rpyc_protocol::ProtocolError::TooLarge {
                size: frame.len(),
                max: self.config.max_frame_bytes,
            }));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut state = lock(&self.shared.state);
            if let Some(reason) = &state.closed {
                return Err(self.disconnected(Some(reason.clone())));
            }
            state.pending.insert(id, reply_tx);
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
        if self.tx.send(Outgoing::Frame(frame)).is_err() {
            guard.armed = false;
            lock(&self.shared.state).pending.remove(&id);
            return Err(self.disconnected(None));
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(reply)) => {
                guard.armed = false;
                trace!(id = id.0, ok = reply.is_ok(), "reply");
                reply.map_err(Error::from)
            }
            Ok(Err(_)) => {
                guard.armed = false;
                Err(self.disconnected(None))
            }
            Err(_) => {
                debug!(id = id.0, ?timeout, "request timed out; cancelling it");
                Err(Error::Timeout { timeout })
            }
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
        let _ = self.tx.send(Outgoing::Shutdown);
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.is_closed() {
            self.send_quietly(&Message::Goodbye {
                reason: "the client dropped the connection".into(),
            });
            let _ = self.tx.send(Outgoing::Shutdown);
            self.shared
                .close("the client dropped the connection".into());
        }
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
    }
}

/// Removes a pending request if the caller stops waiting (timeout, or its future dropped) and
/// asks the server to cancel it (tarpc's `ResponseGuard`); releases deferred references once the
/// request that carried them is over.
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

async fn write_loop(
    mut sink: FramedWrite<Writer, LengthDelimitedCodec>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let result: std::io::Result<()> = async {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut frames = 0usize;
            while let Some(out) = next {
                match out {
                    Outgoing::Frame(frame) => {
                        sink.feed(frame).await?;
                        frames += 1;
                    }
                    Outgoing::Shutdown => {
                        trace!(frames, "flush and shut down");
                        return SinkExt::<Bytes>::close(&mut sink).await;
                    }
                }
                next = rx.try_recv().ok();
            }
            trace!(frames, "flush");
            SinkExt::<Bytes>::flush(&mut sink).await?;
        }
        // Every sender is gone: the session was dropped.
        SinkExt::<Bytes>::close(&mut sink).await
    }
    .await;
    if let Err(e) = result {
        shared.close(format!("writing failed: {e}"));
    }
}

async fn read_loop(
    mut stream: FramedRead<Reader, LengthDelimitedCodec>,
    shared: Arc<Shared>,
    tx: mpsc::WeakUnboundedSender<Outgoing>,
) {
    let send = |message: &Message| {
        if let (Some(tx), Ok(frame)) = (tx.upgrade(), codec::encode(message)) {
            let _ = tx.send(Outgoing::Frame(frame));
        }
    };
    let reason = loop {
        let frame = match stream.next().await {
            None => break "the server closed the connection".to_owned(),
            Some(Err(e)) => break format!("reading failed: {e}"),
            Some(Ok(frame)) => frame,
        };
        let message = match codec::decode(&frame) {
            Ok(message) => message,
            Err(e) => break format!("the server sent a malformed frame: {e}"),
        };
        match message {
            Message::Response { id, result } => {
                let waiter = lock(&shared.state).pending.remove(&id);
                let unclaimed = match waiter {
                    Some(waiter) => waiter.send(result).err(),
                    None => Some(result),
                };
                // Nobody waits (timed out or dropped): free what the reply holds.
                if let Some(Ok(value)) = unclaimed {
                    let mut ids = Vec::new();
                    collect_ref_ids(&value, &mut ids);
                    if !ids.is_empty() {
                        debug!(id = id.0, refs = ids.len(), "releasing an unclaimed reply");
                        send(&Message::Release { ids });
                    }
                }
            }
            Message::Pong { id } => {
                if let Some(waiter) = lock(&shared.state).pending.remove(&id) {
                    let _ = waiter.send(Ok(Value::None));
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
