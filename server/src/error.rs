//! Errors of one connection. They are logged and end that connection only.

use rpyc_protocol::ProtocolError;

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The client did not greet in time.
    #[error("no greeting from the client within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// The greeting was not ours, or of another version.
    #[error("handshake failed: {0}")]
    Handshake(#[source] ProtocolError),
    /// Reading or writing the socket failed (including a length prefix above the frame limit).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (a client without TLS, an untrusted certificate, …).
    #[error("TLS handshake failed: {0} (a client without TLS, or an untrusted certificate?)")]
    Tls(#[source] std::io::Error),
    /// A TLS client connected, but this server was started without TLS.
    #[error("the client speaks TLS, but this server was started without --tls-cert")]
    TlsClient,
    /// The client did not prove it knows the token.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A stock RPyC client was refused (a token is required, which RPyC cannot present).
    #[error("stock RPyC client refused: {0}")]
    RpycRefused(&'static str),
    /// The connection's Python thread could not be started.
    #[error("cannot start the connection's Python thread: {0}")]
    Worker(#[source] std::io::Error),
}
