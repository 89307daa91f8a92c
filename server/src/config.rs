//! Validated server settings. Built from the command line in `main.rs`; library code never
//! sees clap.

use std::time::Duration;

use rpyc_protocol::codec::DEFAULT_MAX_FRAME_BYTES;

/// How the server runs; see `rpyc-classic --help` for what each setting means.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest frame accepted or sent, in bytes.
    pub max_frame_bytes: usize,
    /// Connections served at once; further clients are refused with a clear message.
    pub max_connections: Option<usize>,
    /// Time a client has to send its greeting.
    pub handshake_timeout: Duration,
    /// Time connections get to close on shutdown.
    pub shutdown_grace: Duration,
    /// `sys.version` of the embedded interpreter, told to clients in the welcome.
    pub python_version: String,
    /// Clients must prove they know this token (see `rpyc_protocol::auth`); `None` lets anyone
    /// who can reach the port in.
    pub token: Option<String>,
    /// Which clients the port serves: native, stock RPyC (issue 6), or both (told apart by
    /// their first byte).
    pub protocol: ProtocolMode,
    /// TLS for every connection (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<crate::tls::TlsServer>,
}

/// Which protocol(s) the server speaks on its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProtocolMode {
    /// Both: a connection whose first byte is not our greeting's `0xF0` is stock RPyC.
    #[default]
    Auto,
    /// Only the native rpyc-rs protocol.
    Native,
    /// Only stock RPyC's protocol (Python clients using `rpyc.classic.connect`).
    Rpyc,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_connections: None,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            python_version: String::new(),
            token: None,
            protocol: ProtocolMode::Auto,
            tls: None,
        }
    }
}
