//! [`Connection`], the handle to one server, and its [`ConnectionBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rpyc_protocol::{NetRef, Op, ReturnMode, ServerInfo, Value, codec};
use serde::de::DeserializeOwned;

use crate::address::IntoServerAddr;
use crate::error::Result;
use crate::object::{RemoteModules, RemoteObject};
use crate::session::{Cached, Config, Session};

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
    session: Arc<Session>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.session.peer())
            .field("server", &self.session.info().server)
            .field("connection_id", &self.session.info().connection_id)
            .field("closed", &self.session.is_closed())
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
    pub fn builder(addr: impl IntoServerAddr) -> ConnectionBuilder {
        ConnectionBuilder {
            addr: addr.into_server_addr(),
            config: Config {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                max_frame_bytes: codec::DEFAULT_MAX_FRAME_BYTES,
                batch_size: DEFAULT_BATCH_SIZE,
            },
        }
    }

    pub(crate) fn from_session(session: Arc<Session>) -> Self {
        Connection { session }
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
        Ok(self.eval_value(expr).await?.deserialize_into()?)
    }

    /// Evaluates a Python expression and keeps the result on the server.
    ///
    /// # Errors
    /// [`Error::Remote`](crate::Error::Remote) if the expression raises, or any transport error.
    pub async fn eval_object(&self, expr: &str) -> Result<RemoteObject> {
        let value = self
            .request(Op::Eval {
                expr: expr.into(),
                mode: ReturnMode::Ref,
            })
            .await?;
        RemoteObject::wrap(&self.session, value)
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
        RemoteModules::new(self.session.clone())
    }

    /// The connection's namespace dict (where [`execute`](Self::execute) and
    /// [`eval`](Self::eval) run), cached after the first call.
    ///
    /// # Errors
    /// Any transport error on the first call.
    pub async fn namespace(&self) -> Result<RemoteObject> {
        self.session.cached(Cached::Namespace).await
    }

    /// The server's `builtins` module, cached after the first call.
    ///
    /// # Errors
    /// Any transport error on the first call.
    pub async fn builtins(&self) -> Result<RemoteObject> {
        self.session.cached(Cached::Builtins).await
    }

    /// Measures a round trip. The server answers pings at once, even while it runs Python.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) or
    /// [`Error::Disconnected`](crate::Error::Disconnected).
    pub async fn ping(&self) -> Result<Duration> {
        self.session.ping().await
    }

    /// Says goodbye to the server and closes the connection. Calls in flight and later calls,
    /// on this connection and its remote objects, fail with
    /// [`Error::Disconnected`](crate::Error::Disconnected). Closing twice is harmless.
    pub async fn close(&self) {
        self.session.close().await;
    }

    /// What the server said about itself when the connection opened.
    pub fn server_info(&self) -> &ServerInfo {
        self.session.info()
    }

    /// The server's address, as connected to (`host:port`).
    pub fn peer_addr(&self) -> &str {
        self.session.peer()
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// The timeout applied to each request.
    pub fn request_timeout(&self) -> Duration {
        self.session.config().request_timeout
    }

    /// The number of items fetched per round trip when iterating.
    pub fn batch_size(&self) -> u32 {
        self.session.config().batch_size
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
        self.session
            .request(op, self.session.config().request_timeout)
            .await
    }

    /// As [`request`](Self::request), with its own timeout.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub async fn request_with_timeout(&self, op: Op, timeout: Duration) -> Result<Value> {
        self.session.request(op, timeout).await
    }

    /// Wraps a reference this connection's server issued (from [`request`](Self::request)) in a
    /// [`RemoteObject`] that releases it when dropped. Wrapping the same id twice yields handles
    /// to the same object; do not wrap references from another connection.
    pub fn adopt(&self, netref: NetRef) -> RemoteObject {
        self.session.adopt(netref, false)
    }
}

/// Settings for a [`Connection`]; made by [`Connection::builder`], ended by
/// [`connect`](ConnectionBuilder::connect).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.connect()` is awaited"]
pub struct ConnectionBuilder {
    addr: String,
    config: Config,
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

    /// The address this builder connects to, with the default port filled in.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connects.
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub async fn connect(self) -> Result<Connection> {
        let session = Session::connect(self.addr, self.config).await?;
        Ok(Connection { session })
    }
}
