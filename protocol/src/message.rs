//! The messages of the protocol: requests, responses and connection control.
//!
//! The protocol is symmetric: either side may send a [`Message::Request`] and the other answers
//! with a [`Message::Response`] carrying the same [`RequestId`]. Each side numbers its own
//! requests. Today the client sends requests and the server answers; callbacks into the client
//! use the same messages in the other direction.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::exception::RemoteException;
use crate::netref::NetRefId;
use crate::value::Value;

/// Identifies one request on a connection, chosen by its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One frame's worth of protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Sent by the server right after the handshake (or after a successful
    /// [`Message::Authenticate`]).
    Welcome(ServerInfo),
    /// Asks the peer to perform an operation.
    Request {
        /// Chosen by the sender; echoed in the response.
        id: RequestId,
        /// What to do.
        op: Op,
    },
    /// Answers a request.
    Response {
        /// The id of the request answered.
        id: RequestId,
        /// The result, or why there is none.
        result: Result<Value, ServerError>,
    },
    /// The sender no longer waits for this request; the peer should interrupt it if it is
    /// running and skip it if it has not started. No response is sent for a cancel itself.
    Cancel {
        /// The request to cancel.
        id: RequestId,
    },
    /// The sender dropped its last handle to these references; the owner may free them.
    Release {
        /// References to free.
        ids: Vec<NetRefId>,
    },
    /// Liveness check, answered with [`Message::Pong`] at once, even while a call runs.
    Ping {
        /// Echoed in the pong.
        id: RequestId,
    },
    /// Answer to [`Message::Ping`].
    Pong {
        /// The ping's id.
        id: RequestId,
    },
    /// The sender is closing the connection (client: done; server: shutting down).
    Goodbye {
        /// Human-readable reason.
        reason: String,
    },
    /// Sent by a server that requires a token, instead of the welcome: prove you know it.
    Challenge {
        /// Fresh random bytes; see [`auth`](crate::auth).
        nonce: [u8; crate::auth::AUTH_BYTES],
    },
    /// The client's answer to a [`Message::Challenge`].
    Authenticate {
        /// `auth::proof(token, nonce)`.
        proof: [u8; crate::auth::AUTH_BYTES],
    },
}

/// What the server tells a client about itself after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Server name and version, e.g. `rpyc-classic 0.1.0`.
    pub server: String,
    /// `sys.version` of the embedded interpreter.
    pub python_version: String,
    /// The server's number for this connection (as it appears in the server log).
    pub connection_id: u64,
}

/// How a result comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReturnMode {
    /// RPyC's semantics: immutable simple values (None, bool, int, float, complex, str, bytes,
    /// and tuples and frozensets of such) by value, everything else by reference.
    Auto,
    /// Always a reference, even for an `int`.
    Ref,
    /// A deep copy ("obtain"); an object that cannot be copied is an error naming its type.
    Value,
}

/// Positional and keyword arguments of a call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Args {
    /// Positional arguments.
    pub positional: Vec<Value>,
    /// Keyword arguments, in order.
    pub keyword: Vec<(String, Value)>,
}

/// A rich comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// An operation requested of the peer.
///
/// Objects are named by the [`NetRefId`]s the peer issued. Unless stated, an operation that
/// produces a value returns it according to its [`ReturnMode`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `exec(code, namespace)`; returns `None`.
    Execute {
        /// Python source.
        code: String,
    },
    /// `eval(expr, namespace)`.
    Eval {
        /// Python expression.
        expr: String,
        /// How to return the result.
        mode: ReturnMode,
    },
    /// `importlib.import_module(name)`; always returns a reference. Dotted names work.
    Import {
        /// Module name, e.g. `os.path`.
        name: String,
    },
    /// The connection's namespace dict, as a reference.
    Namespace,
    /// The `builtins` module, as a reference.
    Builtins,
    /// `getattr(obj, name)`.
    GetAttr {
        /// Object.
        obj: NetRefId,
        /// Attribute name.
        name: String,
        /// How to return the result.
        mode: ReturnMode,
    },
    /// `setattr(obj, name, value)`; returns `None`.
    SetAttr {
        /// Object.
        obj: NetRefId,
        /// Attribute name.
        name: String,
        /// New value.
        value: Value,
    },
    /// `delattr(obj, name)`; returns `None`.
    DelAttr {
        /// Object.
        obj: NetRefId,
        /// Attribute name.
        name: String,
    },
    /// `obj(*args, **kwargs)`.
    Call {
        /// Callable.
        obj: NetRefId,
        /// Arguments.
        args: Args,
        /// How to return the result.
        mode: ReturnMode,
    },
    /// `getattr(obj, name)(*args, **kwargs)` in one round trip.
    CallMethod {
        /// Object.
        obj: NetRefId,
        /// Method name.
        name: String,
        /// Arguments.
        args: Args,
        /// How to return the result.
        mode: ReturnMode,
    },
    /// `obj[key]`.
    GetItem {
        /// Container.
        obj: NetRefId,
        /// Key or index.
        key: Value,
        /// How to return the result.
        mode: ReturnMode,
    },
    /// `obj[key] = value`; returns `None`.
    SetItem {
        /// Container.
        obj: NetRefId,
        /// Key or index.
        key: Value,
        /// New value.
        value: Value,
    },
    /// `del obj[key]`; returns `None`.
    DelItem {
        /// Container.
        obj: NetRefId,
        /// Key or index.
        key: Value,
    },
    /// `len(obj)`; returns an int.
    Len {
        /// Object.
        obj: NetRefId,
    },
    /// `item in obj`; returns a bool.
    Contains {
        /// Container.
        obj: NetRefId,
        /// Item.
        item: Value,
    },
    /// `iter(obj)` plus the first batch: returns `(iterator, [items…], exhausted)`, where
    /// `iterator` is `None` once the iterator is exhausted (nothing left to release).
    Iter {
        /// Iterable.
        obj: NetRefId,
        /// At most this many items in the first batch.
        batch: u32,
        /// How to return the items.
        mode: ReturnMode,
    },
    /// The next batch of an iterator: returns `([items…], exhausted)`.
    Next {
        /// The iterator returned by [`Op::Iter`].
        iter: NetRefId,
        /// At most this many items.
        batch: u32,
        /// How to return the items.
        mode: ReturnMode,
    },
    /// `repr(obj)`; returns a str.
    Repr {
        /// Object.
        obj: NetRefId,
    },
    /// `str(obj)`; returns a str.
    Str {
        /// Object.
        obj: NetRefId,
    },
    /// `dir(obj)`; returns a list of str.
    Dir {
        /// Object.
        obj: NetRefId,
    },
    /// `obj <op> other`; returns a bool when the comparison yields one, else by `Auto` rules.
    Compare {
        /// Left operand.
        obj: NetRefId,
        /// Operator.
        op: CompareOp,
        /// Right operand.
        other: Value,
    },
    /// `hash(obj)`; returns an int.
    Hash {
        /// Object.
        obj: NetRefId,
    },
    /// A deep copy of the object ("obtain"); same as [`ReturnMode::Value`].
    Obtain {
        /// Object.
        obj: NetRefId,
    },
}

/// Why a request produced no value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerError {
    /// The Python code raised.
    Exception(Box<RemoteException>),
    /// The request named a reference that was never issued or was already released.
    UnknownReference(NetRefId),
    /// The request could not be decoded or is not valid here.
    InvalidRequest(String),
    /// The request was cancelled before it completed.
    Cancelled,
    /// The encoded result is larger than the frame limit.
    ResultTooLarge {
        /// Encoded size in bytes.
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Exception(e) => write!(f, "remote Python raised {e}"),
            ServerError::UnknownReference(id) => {
                write!(f, "unknown or released remote reference {id}")
            }
            ServerError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            ServerError::Cancelled => f.write_str("request cancelled"),
            ServerError::ResultTooLarge { size, max } => write!(
                f,
                "result too large: {size} bytes encoded, the frame limit is {max} bytes"
            ),
        }
    }
}

impl std::error::Error for ServerError {}
