//! The `rpyc-classic` server: a remote Python host that embeds CPython.
//!
//! Clients connect over TCP, greet with the protocol's magic and version, then send requests
//! (`execute`, `eval`, attribute access, calls, …) that run in real Python on this host.
//!
//! # Layout
//! - [`server::run`]: the accept loop, connection limit and graceful shutdown.
//! - `connection`: one task reads frames and one writes them; requests go to the connection's
//!   Python thread, while ping, cancel and release are handled without Python.
//! - `rpyc_compat`: stock Python RPyC clients (`rpyc.classic.connect`) on the same port, told
//!   apart by their first bytes and served in RPyC's own protocol (issue 6).
//! - [`python`]: the only module that touches CPython (interpreter start-up, per-connection worker
//!   threads, object tables, conversions).
//! - [`config::ServerConfig`], [`error::ConnectionError`].
//!
//! # Example
//! ```no_run
//! use rpyc_server::{ServerConfig, python, server};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let info = python::init(&python::PythonConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let mut config = ServerConfig::default();
//! config.python_version = info.full_version;
//! server::run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

#![deny(clippy::unwrap_used)]

mod auth;
pub mod config;
mod connection;
pub mod error;
pub mod python;
mod rpyc_compat;
pub mod server;
pub mod tls;

pub use config::{ProtocolMode, ServerConfig};
pub use error::ConnectionError;

/// Name and version, as printed in the start line and sent to clients.
pub const SERVER_NAME: &str = concat!("rpyc-classic ", env!("CARGO_PKG_VERSION"));
