//! Everything that touches CPython. No other module of the server imports `pyo3`.
//!
//! - [`init`]: start the embedded interpreter (Python home, virtual environment, helpers).
//! - [`Worker`]: a connection's Python side (namespace, object table, command queue); its
//!   requests run in order on the executor pool (`pool`), a few threads shared by all
//!   connections that keep the GIL while any connection has work.
//! - [`ClassicWorker`]: a stock Python RPyC client (issue 6), on an OS thread of its own,
//!   speaking RPyC's own protocol (brine values, netrefs both ways, callbacks into the client).
//! - [`BlobBuffers`]: a blob frame's blobs, read straight into the `bytes` objects a call
//!   gets.
//! - `objects`, `convert`, `exception`: the object table, `Value` ↔ Python conversion, and
//!   `PyErr` → [`RemoteException`](rpyc_protocol::RemoteException).
//!
//! Its public surface is plain Rust: `Py<T>` and `PyErr` never leave this module.

mod blob;
mod classic;
mod convert;
mod exception;
mod init;
mod objects;
mod pool;
mod worker;

pub use blob::{BlobBuffers, Blobs};
pub use classic::{
    ClassicOptions, ClassicWorker, ClassicWorkerGone, DEFAULT_CALLBACK_TIMEOUT, FrameSink,
};
pub use init::{PythonConfig, PythonError, PythonInfo, init};
pub use pool::{DEFAULT_SPIN, MAX_SPIN, set_spin};
pub use worker::{ReplySink, SharedBytes, SharedList, Worker};
