//! Everything that touches CPython. No other module of the server imports `pyo3`.
//!
//! - [`init`]: start the embedded interpreter (Python home, virtual environment, helpers).
//! - [`Worker`]: one OS thread per connection that runs that connection's requests in order,
//!   holding the GIL only while it works; it owns the connection's namespace and object table.
//! - [`ClassicWorker`]: the same for a stock Python RPyC client (issue 6), speaking RPyC's own
//!   protocol (brine values, netrefs both ways, callbacks into the client).
//! - `objects`, `convert`, `exception`: the object table, `Value` ↔ Python conversion, and
//!   `PyErr` → [`RemoteException`](rpyc_protocol::RemoteException).
//!
//! Its public surface is plain Rust: `Py<T>` and `PyErr` never leave this module.

mod classic;
mod convert;
mod exception;
mod init;
mod objects;
mod pool;
mod worker;

pub use classic::{
    ClassicOptions, ClassicWorker, ClassicWorkerGone, DEFAULT_CALLBACK_TIMEOUT, FrameSink,
};
pub use init::{PythonConfig, PythonError, PythonInfo, init};
pub use worker::{ReplySink, SharedBytes, SharedList, Worker};
