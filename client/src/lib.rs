//! Rust client for `rpyc-classic`, a Rust re-creation of RPyC's classic mode: run Python code on a
//! remote interpreter and work with its objects from Rust.
//!
//! A [`Connection`] runs statements ([`execute`](Connection::execute)), evaluates expressions
//! into Rust types ([`eval`](Connection::eval), through serde), imports modules
//! ([`modules`](Connection::modules)) and hands out [`RemoteObject`]s: proxies for Python
//! objects that stay on the server, with `getattr`, `call`, `getitem`, iteration and the rest.
//! Exceptions raised remotely come back as [`Error::Remote`] with the remote traceback.
//!
//! - Async (tokio) by default; [`blocking`] has the same API for code without a runtime.
//! - One socket per connection, shared by all clones: calls from many tasks are pipelined.
//! - Every request has a timeout; a timed-out or abandoned request is cancelled on the server.
//! - Optional reconnecting with backoff ([`ReconnectPolicy`]); calls in flight when the
//!   connection drops are never re-sent, and old remote objects report
//!   [`Error::StaleReference`].
//! - Remote objects are released on the server when their last handle is dropped.
//! - Library only: it emits `tracing` events and installs no subscriber.
//!
//! # Layout
//! - `connection`: [`Connection`] and [`ConnectionBuilder`] (timeouts, frame limit, batch size,
//!   reconnect policy).
//! - `reconnect`: [`ReconnectPolicy`] and [`ReconnectEvent`]; the link that swaps in a new
//!   session after a reconnect.
//! - `object`: [`RemoteObject`] and [`RemoteModules`].
//! - `iter`: [`RemoteIter`] and [`TypedIter`], batched iteration.
//! - `args`: [`IntoArgs`] and [`IntoKwargs`], call arguments.
//! - `address`: [`IntoServerAddr`], addresses and the default port.
//! - `error`: [`Error`] and [`Result`].
//! - `session` (private): the handshake, the reader and writer tasks, pending requests.
//! - `blocking`: the blocking mirror of the API (see [`blocking`]).
//!
//! The wire types ([`Value`], [`Op`], [`NetRef`], …) come from [`rpyc_protocol`], re-exported as
//! [`protocol`].
//!
//! # Example
//! ```no_run
//! use rpyc_client::{Connection, Error};
//!
//! # async fn demo() -> rpyc_client::Result<()> {
//! let conn = Connection::connect("localhost:18812").await?;
//! conn.execute("import math\nx = math.factorial(10)").await?;
//! let x: i64 = conn.eval("x").await?;
//! assert_eq!(x, 3_628_800);
//!
//! let sys = conn.modules().get("sys").await?;
//! let platform: String = sys.getattr_as("platform").await?;
//! println!("the server runs on {platform}");
//!
//! let ns = conn.namespace().await?;
//! ns.setitem("greeting", "hello").await?;
//! let greeting: String = ns.getitem_as("greeting").await?;
//! assert_eq!(greeting, "hello");
//!
//! match conn.eval::<f64>("1 / 0").await {
//!     Err(Error::Remote(e)) => {
//!         assert_eq!(e.type_name, "ZeroDivisionError");
//!         eprintln!("{e}"); // the remote traceback, ending in `ZeroDivisionError: division by zero`
//!     }
//!     other => panic!("expected a remote exception, got {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```

#![deny(clippy::unwrap_used)]

mod address;
mod args;
pub mod blocking;
mod connection;
mod error;
mod iter;
mod object;
mod reconnect;
mod session;
mod tls;

#[cfg(test)]
mod tests;

pub use address::IntoServerAddr;
pub use args::{IntoArgs, IntoKwargs};
pub use connection::{
    Connection, ConnectionBuilder, DEFAULT_BATCH_SIZE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use error::{Error, Result};
pub use iter::{RemoteIter, TypedIter};
pub use object::{RemoteModules, RemoteObject};
pub use reconnect::{ReconnectEvent, ReconnectPolicy};
pub use tls::TlsOptions;

/// The buffer type of [`Value::Bytes`]: cheap to clone, and a large one received shares the
/// frame it arrived in instead of being copied out of it.
pub use bytes::Bytes;
pub use rpyc_protocol as protocol;
pub use rpyc_protocol::{
    CompareOp, DEFAULT_PORT, FromValueError, NetRef, NetRefId, Op, ProtocolError, RemoteException,
    ReturnMode, ServerError, ServerInfo, Value,
};

/// The README's code blocks, compiled as doctests so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
