//! Remote objects: [`RemoteObject`], the proxy for a Python object that stays on the server,
//! and [`RemoteModules`], the view of the server's importable modules.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rpyc_protocol::{Args, CompareOp, NetRef, Op, ReturnMode, Value};
use serde::de::DeserializeOwned;

use crate::args::{IntoArgs, IntoKwargs};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::iter::{RemoteIter, TypedIter};
use crate::reconnect::Link;
use crate::session::{Cached, Session};

/// The shared part of a [`RemoteObject`]; its `Drop` releases the remote reference.
#[derive(Debug)]
pub(crate) struct ObjectInner {
    netref: NetRef,
    session: Arc<Session>,
    /// Handed over by value into a [`Value`]: release only after the request carrying it.
    lent: AtomicBool,
}

impl ObjectInner {
    pub(crate) fn new(netref: NetRef, session: Arc<Session>) -> Self {
        ObjectInner {
            netref,
            session,
            lent: AtomicBool::new(false),
        }
    }

    pub(crate) fn netref(&self) -> &NetRef {
        &self.netref
    }
}

impl Drop for ObjectInner {
    fn drop(&mut self) {
        // Never awaits or blocks: `forget` queues a `Release` frame on the unbounded channel.
        self.session
            .forget(self.netref.id, self.lent.load(Ordering::Acquire));
    }
}

/// A Python object that lives on the server, used through a reference.
///
/// Cloning is cheap and clones share the reference; when the last clone is dropped the server
/// is told to release the object. Operations go to the connection the object came from; once
/// that connection is closed they fail with [`Error::Disconnected`] naming the stale reference.
///
/// Methods ending in `_as` return the result converted into a Rust type through serde (the
/// server sends a deep copy); the others keep the result remote and return a new
/// `RemoteObject`.
///
/// A `RemoteObject` converts into a [`Value`] (by reference or by value), so it can be passed as
/// an argument: `func.call((&obj, 5))`. It must be passed to the connection it came from; a
/// reference from another connection is refused with [`Error::ForeignReference`].
#[derive(Clone)]
pub struct RemoteObject {
    inner: Arc<ObjectInner>,
}

impl fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteObject")
            .field("netref", &self.inner.netref)
            .field("peer", &self.inner.session.peer())
            .finish()
    }
}

impl fmt::Display for RemoteObject {
    /// `<remote TYPE #ID>`; use [`repr`](RemoteObject::repr) for Python's `repr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner.netref, f)
    }
}

impl From<&RemoteObject> for Value {
    fn from(object: &RemoteObject) -> Self {
        Value::Ref(object.inner.netref.clone())
    }
}

impl From<RemoteObject> for Value {
    /// The reference stays valid until the next request on its connection (the one that
    /// carries it, normally) has completed, even if this was its last handle.
    fn from(object: RemoteObject) -> Self {
        object.inner.lent.store(true, Ordering::Release);
        Value::Ref(object.inner.netref.clone())
    }
}

impl RemoteObject {
    pub(crate) fn from_inner(inner: Arc<ObjectInner>) -> Self {
        RemoteObject { inner }
    }

    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    fn id(&self) -> rpyc_protocol::NetRefId {
        self.inner.netref.id
    }

    /// The wire reference: id and Python type name.
    pub fn netref(&self) -> &NetRef {
        &self.inner.netref
    }

    /// Qualified Python type name of the object (`builtins.dict`, `socket.socket`, …), known
    /// without a round trip.
    pub fn type_name(&self) -> &str {
        &self.inner.netref.type_name
    }

    /// The connection this object belongs to. After a reconnect this is the connection
    /// handle it came from, which now uses the new connection (where this object does not
    /// exist).
    pub fn connection(&self) -> Connection {
        Connection::from_session(self.session())
    }

    /// Sends one operation on the object's connection; a closed connection is reported with the
    /// stale reference named.
    pub(crate) async fn request(&self, op: Op) -> Result<Value> {
        let session = self.session();
        session
            .request(op, session.config().request_timeout)
            .await
            .map_err(|e| self.stale(e))
    }

    fn stale(&self, e: Error) -> Error {
        match e {
            Error::Disconnected { peer, reason } if self.session().is_superseded() => {
                Error::StaleReference {
                    reference: self.inner.netref.to_string(),
                    peer,
                    reason,
                }
            }
            Error::Disconnected { peer, reason } => Error::Disconnected {
                peer,
                reason: format!(
                    "{reason}; {} belonged to that connection and is no longer valid",
                    self.inner.netref
                ),
            },
            other => other,
        }
    }

    /// Wraps a reply that must be a reference.
    pub(crate) fn wrap(session: &Arc<Session>, value: Value) -> Result<RemoteObject> {
        match value {
            Value::Ref(netref) => Ok(session.adopt(netref, false)),
            other => Err(Error::unexpected_reply("a remote object reference", &other)),
        }
    }

    fn check<'a>(&self, values: impl IntoIterator<Item = &'a Value>) -> Result<()> {
        self.session().check_refs(values)
    }

    async fn request_object(&self, op: Op) -> Result<RemoteObject> {
        let value = self.request(op).await?;
        Self::wrap(self.session(), value)
    }

    async fn request_as<T: DeserializeOwned>(&self, op: Op) -> Result<T> {
        let session = self.session();
        session
            .request_as(op, session.config().request_timeout)
            .await
            .map_err(|e| self.stale(e))
    }

    fn args(&self, args: impl IntoArgs, kwargs: impl IntoKwargs) -> Result<Args> {
        let args = Args {
            positional: args.into_args(),
            keyword: kwargs.into_kwargs(),
        };
        self.check(
            args.positional
                .iter()
                .chain(args.keyword.iter().map(|(_, v)| v)),
        )?;
        Ok(args)
    }

    /// `getattr(obj, name)`, kept remote.
    ///
    /// # Errors
    /// [`Error::Remote`] (e.g. `AttributeError`), or any transport error.
    pub async fn getattr(&self, name: &str) -> Result<RemoteObject> {
        self.request_object(Op::GetAttr {
            obj: self.id(),
            name: name.into(),
            mode: ReturnMode::Ref,
        })
        .await
    }

    /// `getattr(obj, name)`, copied and converted into `T`.
    ///
    /// # Errors
    /// [`Error::Remote`] if Python raises (also when the value cannot be copied),
    /// [`Error::Decode`] if it does not fit `T`, or any transport error.
    pub async fn getattr_as<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.request_as(Op::GetAttr {
            obj: self.id(),
            name: name.into(),
            mode: ReturnMode::Value,
        })
        .await
    }

    /// `setattr(obj, name, value)`.
    ///
    /// # Errors
    /// [`Error::Remote`] if Python raises, [`Error::ForeignReference`] if `value` holds a
    /// reference from another connection, or any transport error.
    pub async fn setattr(&self, name: &str, value: impl Into<Value>) -> Result<()> {
        let value = value.into();
        self.check([&value])?;
        self.request(Op::SetAttr {
            obj: self.id(),
            name: name.into(),
            value,
        })
        .await
        .map(drop)
    }

    /// `delattr(obj, name)`.
    ///
    /// # Errors
    /// [`Error::Remote`] if Python raises, or any transport error.
    pub async fn delattr(&self, name: &str) -> Result<()> {
        self.request(Op::DelAttr {
            obj: self.id(),
            name: name.into(),
        })
        .await
        .map(drop)
    }

    /// `obj(*args)`, kept remote.
    ///
    /// # Errors
    /// [`Error::Remote`] if Python raises, [`Error::ForeignReference`] if an argument holds a
    /// reference from another connection, or any transport error.
    pub async fn call(&self, args: impl IntoArgs) -> Result<RemoteObject> {
        self.call_with(args, ()).await
    }

    /// `obj(*args)`, copied and converted into `T`.
    ///
    /// # Errors
    /// As [`call`](Self::call), plus [`Error::Decode`] if the result does not fit `T`.
    pub async fn call_as<T: DeserializeOwned>(&self, args: impl IntoArgs) -> Result<T> {
        self.call_with_as(args, ()).await
    }

    /// `obj(*args, **kwargs)`, kept remote.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_with(
        &self,
        args: impl IntoArgs,
        kwargs: impl IntoKwargs,
    ) -> Result<RemoteObject> {
        let args = self.args(args, kwargs)?;
        self.request_object(Op::Call {
            obj: self.id(),
            args,
            mode: ReturnMode::Ref,
        })
        .await
    }

    /// `obj(*args, **kwargs)`, copied and converted into `T`.
    ///
    /// # Errors
    /// As [`call_as`](Self::call_as).
    pub async fn call_with_as<T: DeserializeOwned>(
        &self,
        args: impl IntoArgs,
        kwargs: impl IntoKwargs,
    ) -> Result<T> {
        let args = self.args(args, kwargs)?;
        self.request_as(Op::Call {
            obj: self.id(),
            args,
            mode: ReturnMode::Value,
        })
        .await
    }

    /// `obj.name(*args)` in one round trip, kept remote.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_method(&self, name: &str, args: impl IntoArgs) -> Result<RemoteObject> {
        self.call_method_with(name, args, ()).await
    }

    /// `obj.name(*args)` in one round trip, copied and converted into `T`.
    ///
    /// # Errors
    /// As [`call_as`](Self::call_as).
    pub async fn call_method_as<T: DeserializeOwned>(
        &self,
        name: &str,
        args: impl IntoArgs,
    ) -> Result<T> {
        self.call_method_with_as(name, args, ()).await
    }

    /// `obj.name(*args, **kwargs)` in one round trip, kept remote.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_method_with(
        &self,
        name: &str,
        args: impl IntoArgs,
        kwargs: impl IntoKwargs,
    ) -> Result<RemoteObject> {
        let args = self.args(args, kwargs)?;
        self.request_object(Op::CallMethod {
            obj: self.id(),
            name: name.into(),
            args,
            mode: ReturnMode::Ref,
        })
        .await
    }

    /// `obj.name(*args, **kwargs)` in one round trip, copied and converted into `T`.
    ///
    /// # Errors
    /// As [`call_as`](Self::call_as).
    pub async fn call_method_with_as<T: DeserializeOwned>(
        &self,
        name: &str,
        args: impl IntoArgs,
        kwargs: impl IntoKwargs,
    ) -> Result<T> {
        let args = self.args(args, kwargs)?;
        self.request_as(Op::CallMethod {
            obj: self.id(),
            name: name.into(),
            args,
            mode: ReturnMode::Value,
        })
        .await
    }

    /// `obj[key]`, kept remote.
    ///
    /// # Errors
    /// [`Error::Remote`] (e.g. `KeyError`), [`Error::ForeignReference`], or any transport error.
    pub async fn getitem(&self, key: impl Into<Value>) -> Result<RemoteObject> {
        let key = key.into();
        self.check([&key])?;
        self.request_object(Op::GetItem {
            obj: self.id(),
            key,
            mode: ReturnMode::Ref,
        })
        .await
    }

    /// `obj[key]`, copied and converted into `T`.
    ///
    /// # Errors
    /// As [`getitem`](Self::getitem), plus [`Error::Decode`] if the value does not fit `T`.
    pub async fn getitem_as<T: DeserializeOwned>(&self, key: impl Into<Value>) -> Result<T> {
        let key = key.into();
        self.check([&key])?;
        self.request_as(Op::GetItem {
            obj: self.id(),
            key,
            mode: ReturnMode::Value,
        })
        .await
    }

    /// `obj[key] = value`.
    ///
    /// # Errors
    /// [`Error::Remote`] if Python raises, [`Error::ForeignReference`], or any transport error.
    pub async fn setitem(&self, key: impl Into<Value>, value: impl Into<Value>) -> Result<()> {
        let (key, value) = (key.into(), value.into());
        self.check([&key, &value])?;
        self.request(Op::SetItem {
            obj: self.id(),
            key,
            value,
        })
        .await
        .map(drop)
    }

    /// `del obj[key]`.
    ///
    /// # Errors
    /// [`Error::Remote`] (e.g. `KeyError`), [`Error::ForeignReference`], or any transport error.
    pub async fn delitem(&self, key: impl Into<Value>) -> Result<()> {
        let key = key.into();
        self.check([&key])?;
        self.request(Op::DelItem {
            obj: self.id(),
            key,
        })
        .await
        .map(drop)
    }

    /// `len(obj)`.
    ///
    /// # Errors
    /// [`Error::Remote`] (`TypeError` if the object has no length), or any transport error.
    pub async fn len(&self) -> Result<usize> {
        self.request_as(Op::Len { obj: self.id() }).await
    }

    /// `len(obj) == 0`.
    ///
    /// # Errors
    /// As [`len`](Self::len).
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// `item in obj`.
    ///
    /// # Errors
    /// [`Error::Remote`] if Python raises, [`Error::ForeignReference`], or any transport error.
    pub async fn contains(&self, item: impl Into<Value>) -> Result<bool> {
        let item = item.into();
        self.check([&item])?;
        self.request_as(Op::Contains {
            obj: self.id(),
            item,
        })
        .await
    }

    /// `repr(obj)`.
    ///
    /// # Errors
    /// [`Error::Remote`] if `__repr__` raises, or any transport error.
    pub async fn repr(&self) -> Result<String> {
        self.request_as(Op::Repr { obj: self.id() }).await
    }

    /// `str(obj)`.
    ///
    /// # Errors
    /// [`Error::Remote`] if `__str__` raises, or any transport error.
    pub async fn str(&self) -> Result<String> {
        self.request_as(Op::Str { obj: self.id() }).await
    }

    /// `dir(obj)`.
    ///
    /// # Errors
    /// [`Error::Remote`] if `__dir__` raises, or any transport error.
    pub async fn dir(&self) -> Result<Vec<String>> {
        self.request_as(Op::Dir { obj: self.id() }).await
    }

    /// `obj == other`.
    ///
    /// # Errors
    /// As [`compare`](Self::compare).
    pub async fn eq(&self, other: impl Into<Value>) -> Result<bool> {
        self.compare(CompareOp::Eq, other).await
    }

    /// `obj <op> other`, for any rich comparison.
    ///
    /// # Errors
    /// [`Error::Remote`] if Python raises, [`Error::Decode`] if the comparison does not yield a
    /// bool (NumPy arrays, for example), [`Error::ForeignReference`], or any transport error.
    pub async fn compare(&self, op: CompareOp, other: impl Into<Value>) -> Result<bool> {
        let other = other.into();
        self.check([&other])?;
        self.request_as(Op::Compare {
            obj: self.id(),
            op,
            other,
        })
        .await
    }

    /// `hash(obj)`.
    ///
    /// # Errors
    /// [`Error::Remote`] (`TypeError` for unhashable objects), or any transport error.
    pub async fn hash(&self) -> Result<i64> {
        self.request_as(Op::Hash { obj: self.id() }).await
    }

    /// A deep copy of the object ("obtain"), converted into `T`.
    ///
    /// # Errors
    /// [`Error::Remote`] if the object cannot be copied, [`Error::Decode`] if it does not fit
    /// `T`, or any transport error.
    pub async fn get<T: DeserializeOwned>(&self) -> Result<T> {
        self.request_as(Op::Obtain { obj: self.id() }).await
    }

    /// A deep copy of the object ("obtain") as a raw [`Value`].
    ///
    /// # Errors
    /// [`Error::Remote`] if the object cannot be copied, or any transport error.
    pub async fn get_value(&self) -> Result<Value> {
        self.request(Op::Obtain { obj: self.id() }).await
    }

    /// `iter(obj)`, with items kept remote. Items are fetched in batches of the connection's
    /// [`batch_size`](crate::ConnectionBuilder::batch_size).
    pub fn iter(&self) -> RemoteIter {
        RemoteIter::new(self.clone())
    }

    /// `iter(obj)`, with items copied and converted into `T`, fetched in batches.
    pub fn iter_as<T: DeserializeOwned>(&self) -> TypedIter<T> {
        TypedIter::new(self.clone())
    }
}

/// The server's importable modules: `modules().get("os.path")` is `import os.path` on the server.
///
/// Modules are cached by name on the connection, so asking again costs no round trip. With a
/// [`ReconnectPolicy`](crate::ReconnectPolicy), `get` imports on the current connection
/// (reconnecting first if needed).
#[derive(Clone)]
pub struct RemoteModules {
    link: Arc<Link>,
}

impl fmt::Debug for RemoteModules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteModules")
            .field("peer", &self.link.addr())
            .finish()
    }
}

impl RemoteModules {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        RemoteModules { link }
    }

    /// Imports a module (dotted names work) and returns it as a remote object.
    ///
    /// # Errors
    /// [`Error::Remote`] (`ModuleNotFoundError`, or whatever the module raised on import), or
    /// any transport error.
    pub async fn get(&self, name: &str) -> Result<RemoteObject> {
        self.link
            .session()
            .await?
            .cached(Cached::Module(name))
            .await
    }
}
