//! Command line of `rpyc-classic`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use rpyc_protocol::DEFAULT_PORT;
use rpyc_protocol::codec::{DEFAULT_MAX_FRAME_BYTES, MAX_FRAME_BYTES_LIMIT};
use rpyc_server::ServerConfig;

/// A remote Python host: clients run Python code, import modules and use objects on this
/// machine over TCP, in the manner of RPyC's classic mode.
#[derive(Debug, Parser)]
#[command(name = "rpyc-classic", version)]
pub(crate) struct Cli {
    /// Address to listen on. Loopback by default, so only this machine can connect.
    #[arg(long, default_value = "127.0.0.1", env = "RPYC_HOST")]
    pub(crate) host: IpAddr,

    /// TCP port to listen on; 0 picks a free port (the start line tells which).
    #[arg(long, short, default_value_t = DEFAULT_PORT, env = "RPYC_PORT")]
    pub(crate) port: u16,

    /// Virtual environment whose packages client code can import (default: $VIRTUAL_ENV).
    #[arg(long, value_name = "PATH")]
    pub(crate) venv: Option<PathBuf>,

    /// Most connections served at once; further clients are told so and disconnected.
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,

    /// Largest frame accepted or sent, in bytes; bigger results become a "result too large"
    /// error, bigger incoming frames close the connection.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub(crate) max_frame_bytes: usize,

    /// Log filter, e.g. `info`, `debug`, `rpyc_server=trace` (default: $RUST_LOG, else `info`).
    #[arg(long, value_name = "FILTER")]
    pub(crate) log: Option<String>,
}

impl TryFrom<&Cli> for ServerConfig {
    type Error = anyhow::Error;

    fn try_from(cli: &Cli) -> anyhow::Result<Self> {
        if cli.max_frame_bytes < 1024 || cli.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            anyhow::bail!(
                "--max-frame-bytes must be between 1024 and {MAX_FRAME_BYTES_LIMIT}, got {}",
                cli.max_frame_bytes
            );
        }
        if cli.max_connections == Some(0) {
            anyhow::bail!("--max-connections must be at least 1");
        }
        let mut config = ServerConfig::default();
        config.max_frame_bytes = cli.max_frame_bytes;
        config.max_connections = cli.max_connections;
        Ok(config)
    }
}
