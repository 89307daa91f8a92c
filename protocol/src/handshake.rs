//! The greeting both sides exchange before any frame.
//!
//! Each side writes [`GREETING_LEN`] raw bytes: the six magic bytes [`MAGIC`] and its
//! [`PROTOCOL_VERSION`] as a big-endian `u16`. The client greets first; the
//! server answers with its own greeting and, if the versions match, a
//! [`Message::Welcome`](crate::Message::Welcome) frame. On a mismatch the server still sends its
//! greeting (so the client can report both versions) and closes.
//!
//! The first magic byte is `0xF0`, which never starts a stock RPyC frame (those begin with a
//! big-endian length well below 4 GiB), so one port can tell the two protocols apart.

use crate::PROTOCOL_VERSION;
use crate::error::ProtocolError;

/// Magic bytes that open every connection.
pub const MAGIC: [u8; 6] = *b"\xF0RPYRS";

/// Length of a greeting in bytes.
pub const GREETING_LEN: usize = 8;

/// Our greeting: magic plus [`PROTOCOL_VERSION`].
pub const fn greeting() -> [u8; GREETING_LEN] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], MAGIC[4], MAGIC[5], v[0], v[1],
    ]
}

/// Checks a peer's greeting and returns its protocol version.
///
/// # Errors
/// [`ProtocolError::BadMagic`] if the magic is wrong, [`ProtocolError::VersionMismatch`] if the
/// version differs from ours.
pub fn check_greeting(greeting: &[u8; GREETING_LEN]) -> Result<u16, ProtocolError> {
    let mut magic = [0u8; 6];
    magic.copy_from_slice(&greeting[..6]);
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic { found: magic });
    }
    let theirs = u16::from_be_bytes([greeting[6], greeting[7]]);
    if theirs != PROTOCOL_VERSION {
        return Err(ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trips() {
        assert_eq!(check_greeting(&greeting()).ok(), Some(PROTOCOL_VERSION));
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let mut g = greeting();
        g[1] = b'X';
        assert!(matches!(
            check_greeting(&g),
            Err(ProtocolError::BadMagic { .. })
        ));
        let mut g = greeting();
        g[7] = g[7].wrapping_add(1);
        let err = check_greeting(&g).expect_err("version");
        assert!(err.to_string().contains("version mismatch"), "{err}");
    }
}
