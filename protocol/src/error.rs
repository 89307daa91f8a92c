//! Errors of the protocol layer: framing, encoding and decoding.

/// Why a frame could not be turned into a message, or a message into a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The payload is not a valid encoding of a [`Message`](crate::Message).
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The payload decoded, but bytes were left over.
    #[error("malformed message: {extra} trailing bytes after a {used}-byte message")]
    TrailingBytes {
        /// Bytes the message used.
        used: usize,
        /// Bytes left after it.
        extra: usize,
    },
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// An encoded message is larger than the peer accepts.
    #[error("message of {size} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The peer's greeting did not start with the protocol's magic bytes.
    #[error("peer does not speak the rpyc-rs protocol (bad magic {found:02x?})")]
    BadMagic {
        /// The bytes received instead.
        found: [u8; 6],
    },
    /// The peer speaks another version of the protocol.
    #[error("protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}")]
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// A blob frame's blobs do not fit its message, or a message has too many of them.
    #[error("malformed blob frame: {0}")]
    Blob(String),
    /// Framing failed: I/O error, or a length prefix above the maximum frame size.
    #[error("framing: {0}")]
    Io(#[from] std::io::Error),
}
