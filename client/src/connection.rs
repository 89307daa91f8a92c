//! [`Connection`], the handle to one server, and its [`ConnectionBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpyc_protocol::{NetRef, Op, ReturnMode, ServerInfo, Value, codec};
use serde::de::DeserializeOwned;

use crate::address::IntoServerAddr;
use crate::error::{Error, Result};
use crate::object::{RemoteModules, RemoteObject};
use crate::reconnect::{Link, ReconnectPolicy};
use crate::session::{self, Cached, Config, Session};

/// Default time allowed for connecting: TCP connect, greeting and welcome.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time allowed for one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of items fetched per round trip when iterating.
pub const DEFAULT_BATCH_SIZE: u32 = 256;

/// A connection to an `rpyc-classic` server.
///
/// Cheap to clone: clones share one socket, and requests from all of them are multiplexed on
/// it, so many tasks can have calls in flight at once. The connection closes when
/// [`close`](Self::close) is called, or when the last clone and the last [`RemoteObject`] from
/// it are dropped.
///
/// Built with a [`ReconnectPolicy`] ([`ConnectionBuilder::reconnect`]), the connection
/// reconnects when a call finds it closed; see [`ReconnectPolicy`] for what carries over and
/// what does not.
///
/// ```no_run
/// # async fn demo() -> rpyc_client::Result<()> {
/// let conn = rpyc_client::Connection::connect("localhost:18812").await?;
/// let answer: i64 = conn.eval("6 * 7").await?;
/// assert_eq!(answer, 42);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Connection {
    link: Arc<Link>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let session = self.link.current();
        f.debug_struct("Connection")
            .field("peer", &session.peer())
            .field("server", &session.info().server)
            .field("connection_id", &session.info().connection_id)
            .field("closed", &session.is_closed())
            .field("reconnects", &self.link.reconnects())
            .finish()
    }
}

impl Connection {
    /// Connects with the default settings.
    ///
    /// `addr` is `"host:port"`, a bare `"host"` (port
    /// [`DEFAULT_PORT`](rpyc_protocol::DEFAULT_PORT)), an IPv6 address (`"[::1]:18812"`,
    /// `"::1"`), or a [`SocketAddr`](std::net::SocketAddr); see [`IntoServerAddr`].
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the address does not resolve or the connection is
    /// refused, [`Error::Protocol`](crate::Error::Protocol) if the peer does not speak this
    /// protocol version, [`Error::ConnectTimeout`](crate::Error::ConnectTimeout), or
    /// [`Error::Disconnected`](crate::Error::Disconnected) if the server closes the connection
    /// during the handshake (for example because it is full).
    pub async fn connect(addr: impl IntoServerAddr) -> Result<Connection> {
        Self::builder(addr).connect().await
    }

    /// A builder, to set timeouts and limits before connecting.
    ///
    /// Besides `host[:port]`, the address may be a URL: `rpyc://TOKEN@host[:port]` carries the
    /// server's token (the same as [`ConnectionBuilder::token`]); `rpycs://` asks for TLS.
    pub fn builder(addr: impl IntoServerAddr) -> ConnectionBuilder {
        let raw = addr.into_server_addr();
        let (addr, token, tls_requested, invalid) = match crate::address::parse_target(&raw) {
            Ok(target) => (target.addr, target.token, target.tls, None),
            Err(why) => (raw, None, false, Some(why)),
        };
        ConnectionBuilder {
            addr,
            invalid,
            tls_requested,
            config: Config {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                max_frame_bytes: codec::DEFAULT_MAX_FRAME_BYTES,
                batch_size: DEFAULT_BATCH_SIZE,
                token,
                tls: None,
            },
            reconnect: None,
        }
    }

    /// The handle of the connection `session` belongs to.
    pub(crate) fn from_session(session: &Arc<Session>) -> Self {
        Connection {
            link: Link::of(session),
        }
    }

    /// The session for a new call, reconnected first if it has closed and a policy is set.
    async fn session(&self) -> Result<Arc<Session>> {
        self.link.session().await
    }

    /// Sends `op` on the current session; returns the session too, to wrap references in.
    async fn request_on(&self, op: Op, timeout: Duration) -> Result<(Arc<Session>, Value)> {
        let (session, payload) = self.call_on(op, timeout).await?;
        let value = session::decode_value(&payload)?;
        Ok((session, value))
    }

    /// Sends `op` on the current session and converts its result into `T`.
    async fn request_as<T: DeserializeOwned>(&self, op: Op) -> Result<T> {
        let (_, payload) = self.call_on(op, self.request_timeout()).await?;
        session::decode_as(&payload)
    }

    /// Sends `op` on the current session; returns the session and the response payload.
    async fn call_on(&self, op: Op, timeout: Duration) -> Result<(Arc<Session>, Bytes)> {
        let session = self.session().await?;
        // Closed already: `close` was called, or there is no policy; the call is not sent.
        let sent = !session.is_closed();
        match session.call(op, timeout).await {
            Ok(payload) => Ok((session, payload)),
            Err(Error::Disconnected { peer, reason }) if sent && self.link.has_policy() => {
                // Issue 3: a call in flight when the connection drops is never sent again.
                Err(Error::Disconnected {
                    peer,
                    reason: format!(
                        "{reason}; the call was not sent again (it may have run on the \
                         server), the next call reconnects"
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Runs Python statements in the connection's namespace (`exec(code, namespace)`).
    ///
    /// # Errors
    /// [`Error::Remote`](crate::Error::Remote) if the code raises (a `SyntaxError` too), or any
    /// transport error.
    pub async fn execute(&self, code: &str) -> Result<()> {
        self.request(Op::Execute { code: code.into() })
            .await
            .map(drop)
    }

    /// Evaluates a Python expression in the connection's namespace and converts a deep copy of
    /// the result into `T`.
    ///
    /// # Errors
    /// [`Error::Remote`](crate::Error::Remote) if the expression raises or its result cannot be
    /// copied, [`Error::Decode`](crate::Error::Decode) if the result does not fit `T` (the
    /// message names both), or any transport error.
    pub async fn eval<T: DeserializeOwned>(&self, expr: &str) -> Result<T> {
        self.request_as(Op::Eval {
            expr: expr.into(),
            mode: ReturnMode::Value,
        })
        .await
    }

    /// Evaluates a Python expression and keeps the result on the server.
    ///
    /// # Errors
    /// [`Error::Remote`](crate::Error::Remote) if the expression raises, or any transport error.
    pub async fn eval_object(&self, expr: &str) -> Result<RemoteObject> {
        let op = Op::Eval {
            expr: expr.into(),
            mode: ReturnMode::Ref,
        };
        let (session, value) = self.request_on(op, self.request_timeout()).await?;
        RemoteObject::wrap(&session, value)
    }

    /// Evaluates a Python expression and returns a deep copy of the result as a raw [`Value`].
    ///
    /// # Errors
    /// [`Error::Remote`](crate::Error::Remote) if the expression raises or its result cannot be
    /// copied, or any transport error.
    pub async fn eval_value(&self, expr: &str) -> Result<Value> {
        self.request(Op::Eval {
            expr: expr.into(),
            mode: ReturnMode::Value,
        })
        .await
    }

    /// The server's modules: `conn.modules().get("sys")`.
    pub fn modules(&self) -> RemoteModules {
        RemoteModules::new(self.link.clone())
    }

    /// The connection's namespace dict (where [`execute`](Self::execute) and
    /// [`eval`](Self::eval) run), cached after the first call.
    ///
    /// # Errors
    /// Any transport error on the first call.
    pub async fn namespace(&self) -> Result<RemoteObject> {
        self.session().await?.cached(Cached::Namespace).await
    }

    /// The server's `builtins` module, cached after the first call.
    ///
    /// # Errors
    /// Any transport error on the first call.
    pub async fn builtins(&self) -> Result<RemoteObject> {
        self.session().await?.cached(Cached::Builtins).await
    }

    /// Measures a round trip. The server answers pings at once, even while it runs Python.
    /// With a [`ReconnectPolicy`], a ping that finds the connection closed reconnects first.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout),
    /// [`Error::Disconnected`](crate::Error::Disconnected) (at once if the connection is
    /// known to be closed), or [`Error::ReconnectFailed`](crate::Error::ReconnectFailed).
    pub async fn ping(&self) -> Result<Duration> {
        self.session().await?.ping().await
    }

    /// Says goodbye to the server and closes the connection. Calls in flight and later calls,
    /// on this connection and its remote objects, fail with
    /// [`Error::Disconnected`](crate::Error::Disconnected); a [`ReconnectPolicy`] no longer
    /// applies (until [`reconnect`](Self::reconnect) is called). Closing twice is harmless.
    pub async fn close(&self) {
        self.link.close().await;
    }

    /// Opens a new connection to the same address now, runs the policy's setup script on it,
    /// and makes it the one this handle and its clones use; the old connection is closed
    /// (calls in flight on it fail with [`Error::Disconnected`](crate::Error::Disconnected)
    /// and its remote objects become stale). Works after [`close`](Self::close) too, and
    /// without a policy (then with one attempt).
    ///
    /// # Errors
    /// [`Error::ReconnectFailed`](crate::Error::ReconnectFailed) if every attempt failed; the
    /// old connection is then left as it was.
    pub async fn reconnect(&self) -> Result<()> {
        self.link.reconnect().await
    }

    /// How many times this connection has reconnected (automatically or through
    /// [`reconnect`](Self::reconnect)).
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects()
    }

    /// What the server said about itself when the current connection opened (a reconnect
    /// changes it: a new `connection_id`, perhaps another server version).
    pub fn server_info(&self) -> ServerInfo {
        self.link.current().info().clone()
    }

    /// The server's address, as connected to (`host:port`).
    pub fn peer_addr(&self) -> &str {
        self.link.addr()
    }

    /// Whether the connection is closed. With a [`ReconnectPolicy`], the next call reconnects
    /// (unless [`close`](Self::close) closed it).
    pub fn is_closed(&self) -> bool {
        self.link.current().is_closed()
    }

    /// The timeout applied to each request.
    pub fn request_timeout(&self) -> Duration {
        self.link.config().request_timeout
    }

    /// The number of items fetched per round trip when iterating.
    pub fn batch_size(&self) -> u32 {
        self.link.config().batch_size
    }

    /// Sends any operation and returns its raw result, with the connection's request timeout.
    ///
    /// This is the low-level door for what the typed methods do not cover. References in the
    /// result are not tracked: wrap each in a [`RemoteObject`] with [`adopt`](Self::adopt) so it
    /// is released when dropped, or it stays alive on the server until the connection closes.
    /// References in the operation are sent as they are, unchecked.
    ///
    /// # Errors
    /// [`Error::Remote`](crate::Error::Remote), [`Error::Server`](crate::Error::Server),
    /// [`Error::Timeout`](crate::Error::Timeout) (the request is then cancelled on the server),
    /// [`Error::Disconnected`](crate::Error::Disconnected), or
    /// [`Error::Protocol`](crate::Error::Protocol) if the request is larger than the frame limit.
    pub async fn request(&self, op: Op) -> Result<Value> {
        self.request_with_timeout(op, self.request_timeout()).await
    }

    /// As [`request`](Self::request), with its own timeout.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub async fn request_with_timeout(&self, op: Op, timeout: Duration) -> Result<Value> {
        Ok(self.request_on(op, timeout).await?.1)
    }

    /// Wraps a reference this connection's server issued (from [`request`](Self::request)) in a
    /// [`RemoteObject`] that releases it when dropped. Wrapping the same id twice yields handles
    /// to the same object; do not wrap references from another connection, or from before a
    /// reconnect.
    pub fn adopt(&self, netref: NetRef) -> RemoteObject {
        self.link.current().adopt(netref, false)
    }
}

/// Settings for a [`Connection`]; made by [`Connection::builder`], ended by
/// [`connect`](ConnectionBuilder::connect).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.connect()` is awaited"]
pub struct ConnectionBuilder {
    addr: String,
    /// Why the address cannot be used (an unknown scheme), reported by `connect`.
    invalid: Option<String>,
    /// The address was `rpycs://`: TLS settings must be given.
    tls_requested: bool,
    config: Config,
    reconnect: Option<ReconnectPolicy>,
}

impl ConnectionBuilder {
    /// Time allowed for the TCP connect, greeting and welcome together (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Time allowed for each request (default 30 s). A request that takes longer fails with
    /// [`Error::Timeout`](crate::Error::Timeout) and is cancelled on the server; the connection
    /// stays usable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Largest frame sent or accepted, in bytes (default
    /// [`DEFAULT_MAX_FRAME_BYTES`](rpyc_protocol::codec::DEFAULT_MAX_FRAME_BYTES)).
    pub fn max_frame_bytes(mut self, max: usize) -> Self {
        self.config.max_frame_bytes = max.min(codec::MAX_FRAME_BYTES_LIMIT);
        self
    }

    /// Items fetched per round trip when iterating (default 256; at least 1).
    pub fn batch_size(mut self, batch: u32) -> Self {
        self.config.batch_size = batch.max(1);
        self
    }

    /// Connects over TLS (to a server started with `--tls-cert`), trusting the CA in `options`.
    pub fn tls(mut self, options: crate::TlsOptions) -> Self {
        self.config.tls = Some(options);
        self
    }

    /// The shared secret of a server started with `--token-file` or `RPYC_TOKEN` (or the token
    /// it generated). It is never sent: the client proves it knows it (HMAC-SHA256 over a fresh
    /// challenge from the server).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Reconnects when a call finds the connection closed, as `policy` says (default: never).
    /// The first connect is not retried.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// The address this builder connects to, with the default port filled in.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connects.
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub async fn connect(self) -> Result<Connection> {
        if let Some(why) = self.invalid {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("cannot connect to {}: {why}", self.addr),
            )));
        }
        if self.tls_requested && self.config.tls.is_none() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "cannot connect to rpycs://{}: TLS needs a CA to trust, give one with \
                     ConnectionBuilder::tls(TlsOptions::new().ca_file(\"ca.pem\"))",
                    self.addr
                ),
            )));
        }
        let session = Session::connect(self.addr, self.config).await?;
        Ok(Connection {
            link: Link::new(session, self.reconnect),
        })
    }
}
