//! A blocking client, for programs without an async runtime.
//!
//! [`Connection`], [`RemoteObject`], [`RemoteModules`], [`RemoteIter`] and [`TypedIter`] mirror
//! the async types of the crate root one to one; each method runs the async call to completion
//! on a small runtime owned by the connection. The iterators implement [`Iterator`].
//!
//! Handles are `Send + Sync` and may be used from several threads at once; their calls are
//! multiplexed on the one socket.
//!
//! # Panics
//! These types must not be used from inside an async runtime (for example in a
//! `#[tokio::main]` function or a task): blocking there panics, as `Runtime::block_on` does.
//! Use the async API there instead.
//!
//! ```no_run
//! use rpyc_client::blocking::Connection;
//!
//! let conn = Connection::connect("localhost")?;
//! let sys = conn.modules().get("sys")?;
//! let platform: String = sys.getattr_as("platform")?;
//! println!("server runs on {platform}");
//! # Ok::<(), rpyc_client::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rpyc_protocol::{CompareOp, NetRef, Op, ServerInfo, Value};
use serde::de::DeserializeOwned;
use tokio::runtime::Runtime;

use crate::address::IntoServerAddr;
use crate::args::{IntoArgs, IntoKwargs};
use crate::error::{Error, Result};

/// The async connection and the runtime that drives it.
struct Inner {
    /// Declared before the runtime, so it is dropped first (its tasks belong to the runtime).
    conn: crate::Connection,
    rt: Runtime,
}

impl Inner {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Flush a goodbye while the runtime still runs; skipped inside a runtime, where
        // blocking would panic.
        if tokio::runtime::Handle::try_current().is_err() {
            self.rt.block_on(self.conn.close());
        }
    }
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot start the client runtime: {e}"),
            ))
        })
}

/// A blocking connection to an `rpyc-classic` server; see [`crate::Connection`].
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Connection")
            .field(&self.inner.conn)
            .finish()
    }
}

impl Connection {
    /// Connects with the default settings; see [`crate::Connection::connect`].
    ///
    /// # Errors
    /// As [`crate::Connection::connect`], plus [`Error::Io`] if the runtime cannot start.
    ///
    /// # Panics
    /// If called from inside an async runtime.
    pub fn connect(addr: impl IntoServerAddr) -> Result<Connection> {
        Self::builder(addr).connect()
    }

    /// A builder, to set timeouts and limits before connecting.
    pub fn builder(addr: impl IntoServerAddr) -> ConnectionBuilder {
        ConnectionBuilder {
            inner: crate::Connection::builder(addr),
        }
    }

    fn object(&self, object: crate::RemoteObject) -> RemoteObject {
        RemoteObject {
            object,
            inner: self.inner.clone(),
        }
    }

    /// Runs Python statements; see [`crate::Connection::execute`].
    ///
    /// # Errors
    /// As [`crate::Connection::execute`].
    pub fn execute(&self, code: &str) -> Result<()> {
        self.inner.block_on(self.inner.conn.execute(code))
    }

    /// Evaluates an expression into `T`; see [`crate::Connection::eval`].
    ///
    /// # Errors
    /// As [`crate::Connection::eval`].
    pub fn eval<T: DeserializeOwned>(&self, expr: &str) -> Result<T> {
        self.inner.block_on(self.inner.conn.eval(expr))
    }

    /// Evaluates an expression, keeping the result remote; see
    /// [`crate::Connection::eval_object`].
    ///
    /// # Errors
    /// As [`crate::Connection::eval_object`].
    pub fn eval_object(&self, expr: &str) -> Result<RemoteObject> {
        let object = self.inner.block_on(self.inner.conn.eval_object(expr))?;
        Ok(self.object(object))
    }

    /// Evaluates an expression into a raw [`Value`]; see [`crate::Connection::eval_value`].
    ///
    /// # Errors
    /// As [`crate::Connection::eval_value`].
    pub fn eval_value(&self, expr: &str) -> Result<Value> {
        self.inner.block_on(self.inner.conn.eval_value(expr))
    }

    /// The server's modules; see [`crate::Connection::modules`].
    pub fn modules(&self) -> RemoteModules {
        RemoteModules {
            modules: self.inner.conn.modules(),
            inner: self.inner.clone(),
        }
    }

    /// The connection's namespace dict; see [`crate::Connection::namespace`].
    ///
    /// # Errors
    /// As [`crate::Connection::namespace`].
    pub fn namespace(&self) -> Result<RemoteObject> {
        let object = self.inner.block_on(self.inner.conn.namespace())?;
        Ok(self.object(object))
    }

    /// The server's `builtins` module; see [`crate::Connection::builtins`].
    ///
    /// # Errors
    /// As [`crate::Connection::builtins`].
    pub fn builtins(&self) -> Result<RemoteObject> {
        let object = self.inner.block_on(self.inner.conn.builtins())?;
        Ok(self.object(object))
    }

    /// Measures a round trip; see [`crate::Connection::ping`].
    ///
    /// # Errors
    /// As [`crate::Connection::ping`].
    pub fn ping(&self) -> Result<Duration> {
        self.inner.block_on(self.inner.conn.ping())
    }

    /// Says goodbye and closes; see [`crate::Connection::close`].
    pub fn close(&self) {
        self.inner.block_on(self.inner.conn.close());
    }

    /// Opens a new connection now and makes it current; see
    /// [`crate::Connection::reconnect`].
    ///
    /// # Errors
    /// As [`crate::Connection::reconnect`].
    pub fn reconnect(&self) -> Result<()> {
        self.inner.block_on(self.inner.conn.reconnect())
    }

    /// How many times the connection has reconnected; see
    /// [`crate::Connection::reconnects`].
    pub fn reconnects(&self) -> u64 {
        self.inner.conn.reconnects()
    }

    /// What the server said about itself; see [`crate::Connection::server_info`].
    pub fn server_info(&self) -> ServerInfo {
        self.inner.conn.server_info()
    }

    /// The server's address, as connected to.
    pub fn peer_addr(&self) -> &str {
        self.inner.conn.peer_addr()
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.conn.is_closed()
    }

    /// The timeout applied to each request.
    pub fn request_timeout(&self) -> Duration {
        self.inner.conn.request_timeout()
    }

    /// The number of items fetched per round trip when iterating.
    pub fn batch_size(&self) -> u32 {
        self.inner.conn.batch_size()
    }

    /// Sends any operation; see [`crate::Connection::request`].
    ///
    /// # Errors
    /// As [`crate::Connection::request`].
    pub fn request(&self, op: Op) -> Result<Value> {
        self.inner.block_on(self.inner.conn.request(op))
    }

    /// Sends any operation with its own timeout; see
    /// [`crate::Connection::request_with_timeout`].
    ///
    /// # Errors
    /// As [`crate::Connection::request`].
    pub fn request_with_timeout(&self, op: Op, timeout: Duration) -> Result<Value> {
        self.inner
            .block_on(self.inner.conn.request_with_timeout(op, timeout))
    }

    /// Wraps a reference from [`request`](Self::request); see [`crate::Connection::adopt`].
    pub fn adopt(&self, netref: NetRef) -> RemoteObject {
        self.object(self.inner.conn.adopt(netref))
    }

    /// The async connection inside (usable only from inside a runtime).
    pub fn as_async(&self) -> &crate::Connection {
        &self.inner.conn
    }
}

/// Settings for a blocking [`Connection`]; see [`crate::ConnectionBuilder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.connect()` is called"]
pub struct ConnectionBuilder {
    inner: crate::ConnectionBuilder,
}

impl ConnectionBuilder {
    /// See [`crate::ConnectionBuilder::connect_timeout`].
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        ConnectionBuilder {
            inner: self.inner.connect_timeout(timeout),
        }
    }

    /// See [`crate::ConnectionBuilder::timeout`].
    pub fn timeout(self, timeout: Duration) -> Self {
        ConnectionBuilder {
            inner: self.inner.timeout(timeout),
        }
    }

    /// See [`crate::ConnectionBuilder::max_frame_bytes`].
    pub fn max_frame_bytes(self, max: usize) -> Self {
        ConnectionBuilder {
            inner: self.inner.max_frame_bytes(max),
        }
    }

    /// See [`crate::ConnectionBuilder::batch_size`].
    pub fn batch_size(self, batch: u32) -> Self {
        ConnectionBuilder {
            inner: self.inner.batch_size(batch),
        }
    }

    /// See [`crate::ConnectionBuilder::token`].
    pub fn token(self, token: impl Into<String>) -> Self {
        ConnectionBuilder {
            inner: self.inner.token(token),
        }
    }

    /// See [`crate::ConnectionBuilder::tls`].
    pub fn tls(self, options: crate::TlsOptions) -> Self {
        ConnectionBuilder {
            inner: self.inner.tls(options),
        }
    }

    /// See [`crate::ConnectionBuilder::reconnect`]. The policy's callback runs on the thread
    /// that made the call.
    pub fn reconnect(self, policy: crate::ReconnectPolicy) -> Self {
        ConnectionBuilder {
            inner: self.inner.reconnect(policy),
        }
    }

    /// Connects.
    ///
    /// # Errors
    /// As [`crate::Connection::connect`], plus [`Error::Io`] if the runtime cannot start.
    ///
    /// # Panics
    /// If called from inside an async runtime.
    pub fn connect(self) -> Result<Connection> {
        let rt = runtime()?;
        let conn = rt.block_on(self.inner.connect())?;
        Ok(Connection {
            inner: Arc::new(Inner { conn, rt }),
        })
    }
}

/// The server's modules; see [`crate::RemoteModules`].
#[derive(Clone)]
pub struct RemoteModules {
    modules: crate::RemoteModules,
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteModules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::RemoteModules")
            .field(&self.modules)
            .finish()
    }
}

impl RemoteModules {
    /// Imports a module; see [`crate::RemoteModules::get`].
    ///
    /// # Errors
    /// As [`crate::RemoteModules::get`].
    pub fn get(&self, name: &str) -> Result<RemoteObject> {
        let object = self.inner.block_on(self.modules.get(name))?;
        Ok(RemoteObject {
            object,
            inner: self.inner.clone(),
        })
    }
}

/// A remote Python object; see [`crate::RemoteObject`].
#[derive(Clone)]
pub struct RemoteObject {
    /// Declared before `inner`, so the release is queued before the runtime can go.
    object: crate::RemoteObject,
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::RemoteObject")
            .field(&self.object)
            .finish()
    }
}

impl fmt::Display for RemoteObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.object, f)
    }
}

impl From<&RemoteObject> for Value {
    fn from(object: &RemoteObject) -> Self {
        Value::from(&object.object)
    }
}

impl From<RemoteObject> for Value {
    fn from(object: RemoteObject) -> Self {
        Value::from(object.object.clone())
    }
}

macro_rules! mirror {
    ($(
        $(#[$doc:meta])*
        fn $name:ident $(<$t:ident : DeserializeOwned>)? (&self $(, $arg:ident : $ty:ty)*) -> $ret:ty;
    )*) => {$(
        $(#[$doc])*
        ///
        /// # Errors
        #[doc = concat!("As [`crate::RemoteObject::", stringify!($name), "`].")]
        pub fn $name $(<$t: DeserializeOwned>)? (&self $(, $arg: $ty)*) -> Result<$ret> {
            self.inner.block_on(self.object.$name($($arg),*))
        }
    )*};
}

macro_rules! mirror_object {
    ($(
        $(#[$doc:meta])*
        fn $name:ident (&self $(, $arg:ident : $ty:ty)*);
    )*) => {$(
        $(#[$doc])*
        ///
        /// # Errors
        #[doc = concat!("As [`crate::RemoteObject::", stringify!($name), "`].")]
        pub fn $name(&self $(, $arg: $ty)*) -> Result<RemoteObject> {
            let object = self.inner.block_on(self.object.$name($($arg),*))?;
            Ok(self.wrap(object))
        }
    )*};
}

impl RemoteObject {
    fn wrap(&self, object: crate::RemoteObject) -> RemoteObject {
        RemoteObject {
            object,
            inner: self.inner.clone(),
        }
    }

    /// The wire reference: id and Python type name.
    pub fn netref(&self) -> &NetRef {
        self.object.netref()
    }

    /// Qualified Python type name of the object, known without a round trip.
    pub fn type_name(&self) -> &str {
        self.object.type_name()
    }

    /// The connection this object belongs to.
    pub fn connection(&self) -> Connection {
        Connection {
            inner: self.inner.clone(),
        }
    }

    /// The async object inside (usable only from inside a runtime).
    pub fn as_async(&self) -> &crate::RemoteObject {
        &self.object
    }

    mirror_object! {
        /// `getattr(obj, name)`, kept remote.
        fn getattr(&self, name: &str);
        /// `obj(*args)`, kept remote.
        fn call(&self, args: impl IntoArgs);
        /// `obj(*args, **kwargs)`, kept remote.
        fn call_with(&self, args: impl IntoArgs, kwargs: impl IntoKwargs);
        /// `obj.name(*args)` in one round trip, kept remote.
        fn call_method(&self, name: &str, args: impl IntoArgs);
        /// `obj.name(*args, **kwargs)` in one round trip, kept remote.
        fn call_method_with(&self, name: &str, args: impl IntoArgs, kwargs: impl IntoKwargs);
        /// `obj[key]`, kept remote.
        fn getitem(&self, key: impl Into<Value>);
    }

    mirror! {
        /// `getattr(obj, name)`, converted into `T`.
        fn getattr_as<T: DeserializeOwned>(&self, name: &str) -> T;
        /// `setattr(obj, name, value)`.
        fn setattr(&self, name: &str, value: impl Into<Value>) -> ();
        /// `delattr(obj, name)`.
        fn delattr(&self, name: &str) -> ();
        /// `obj(*args)`, converted into `T`.
        fn call_as<T: DeserializeOwned>(&self, args: impl IntoArgs) -> T;
        /// `obj(*args, **kwargs)`, converted into `T`.
        fn call_with_as<T: DeserializeOwned>(&self, args: impl IntoArgs, kwargs: impl IntoKwargs) -> T;
        /// `obj.name(*args)` in one round trip, converted into `T`.
        fn call_method_as<T: DeserializeOwned>(&self, name: &str, args: impl IntoArgs) -> T;
        /// `obj.name(*args, **kwargs)` in one round trip, converted into `T`.
        fn call_method_with_as<T: DeserializeOwned>(&self, name: &str, args: impl IntoArgs, kwargs: impl IntoKwargs) -> T;
        /// `obj[key]`, converted into `T`.
        fn getitem_as<T: DeserializeOwned>(&self, key: impl Into<Value>) -> T;
        /// `obj[key] = value`.
        fn setitem(&self, key: impl Into<Value>, value: impl Into<Value>) -> ();
        /// `del obj[key]`.
        fn delitem(&self, key: impl Into<Value>) -> ();
        /// `len(obj)`.
        fn len(&self) -> usize;
        /// `len(obj) == 0`.
        fn is_empty(&self) -> bool;
        /// `item in obj`.
        fn contains(&self, item: impl Into<Value>) -> bool;
        /// `repr(obj)`.
        fn repr(&self) -> String;
        /// `str(obj)`.
        fn str(&self) -> String;
        /// `dir(obj)`.
        fn dir(&self) -> Vec<String>;
        /// `obj == other`.
        fn eq(&self, other: impl Into<Value>) -> bool;
        /// `obj <op> other`, for any rich comparison.
        fn compare(&self, op: CompareOp, other: impl Into<Value>) -> bool;
        /// `hash(obj)`.
        fn hash(&self) -> i64;
        /// A deep copy of the object ("obtain"), converted into `T`.
        fn get<T: DeserializeOwned>(&self) -> T;
        /// A deep copy of the object ("obtain") as a raw [`Value`].
        fn get_value(&self) -> Value;
    }

    /// `iter(obj)`, items kept remote; see [`crate::RemoteObject::iter`].
    pub fn iter(&self) -> RemoteIter {
        RemoteIter {
            iter: self.object.iter(),
            inner: self.inner.clone(),
        }
    }

    /// `iter(obj)`, items converted into `T`; see [`crate::RemoteObject::iter_as`].
    pub fn iter_as<T: DeserializeOwned>(&self) -> TypedIter<T> {
        TypedIter {
            iter: self.object.iter_as(),
            inner: self.inner.clone(),
        }
    }
}

/// Iterates a remote iterable, items kept remote; see [`crate::RemoteIter`].
pub struct RemoteIter {
    iter: crate::RemoteIter,
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteIter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::RemoteIter")
            .field(&self.iter)
            .finish()
    }
}

impl RemoteIter {
    /// Fetches every remaining item.
    ///
    /// # Errors
    /// The first error met.
    pub fn collect_all(self) -> Result<Vec<RemoteObject>> {
        self.collect()
    }
}

impl Iterator for RemoteIter {
    type Item = Result<RemoteObject>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.block_on(self.iter.next())?;
        Some(item.map(|object| RemoteObject {
            object,
            inner: self.inner.clone(),
        }))
    }
}

/// Iterates a remote iterable, items converted into `T`; see [`crate::TypedIter`].
pub struct TypedIter<T> {
    iter: crate::TypedIter<T>,
    inner: Arc<Inner>,
}

impl<T> fmt::Debug for TypedIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::TypedIter")
            .field(&self.iter)
            .finish()
    }
}

impl<T: DeserializeOwned> TypedIter<T> {
    /// Fetches and converts every remaining item.
    ///
    /// # Errors
    /// The first error met.
    pub fn collect_all(self) -> Result<Vec<T>> {
        self.collect()
    }
}

impl<T: DeserializeOwned> Iterator for TypedIter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.block_on(self.iter.next())
    }
}
