//! Framing and message encoding: two separate steps.
//!
//! [`framing`] cuts the byte stream into frames (a 4-byte big-endian length, then the payload)
//! and refuses a length above the maximum before allocating anything; a bad length means the
//! stream cannot be resynchronised, so the connection must close. [`decode`] then turns one
//! frame's payload into a [`Message`]; a bad payload is an error for that frame only, and the
//! connection can go on.
//!
//! The encoding is bincode 2 (serde API, standard configuration). Everything that knows about
//! bincode lives in this file, so a change of encoding touches one place.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::LengthDelimitedCodec;

use crate::error::ProtocolError;
use crate::message::Message;

/// Default maximum frame size: 256 MiB, room for bulk `bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// Largest frame size the 4-byte length prefix can express.
pub const MAX_FRAME_BYTES_LIMIT: usize = u32::MAX as usize;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The bincode configuration; the limit caps what any length inside a payload may claim.
const fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_BYTES_LIMIT>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES_LIMIT>()
}

/// The frame codec: a 4-byte big-endian length prefix, at most `max_frame_bytes` of payload.
///
/// Reading a larger length fails with an `InvalidData` I/O error before any allocation.
pub fn framing(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_PREFIX_BYTES)
        .max_frame_length(max_frame_bytes.min(MAX_FRAME_BYTES_LIMIT))
        .new_codec()
}

/// Encodes a message into a frame payload.
///
/// # Errors
/// [`ProtocolError::Encode`] if serde refuses the message (it never does for our types).
pub fn encode(message: &Message) -> Result<Bytes, ProtocolError> {
    Ok(bincode::serde::encode_to_vec(message, config())?.into())
}

/// Encodes a message as a complete frame (length prefix included) at the end of `dst`, so
/// several frames can be written with one system call.
///
/// # Errors
/// [`ProtocolError::TooLarge`] if the payload exceeds `max_frame_bytes`; `dst` is then left as it
/// was.
pub fn encode_frame(
    message: &Message,
    max_frame_bytes: usize,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    let written = bincode::serde::encode_into_std_write(message, &mut writer, config());
    let dst = writer.into_inner();
    let size = match written {
        Ok(size) => size,
        Err(e) => {
            dst.truncate(start);
            return Err(e.into());
        }
    };
    let max = max_frame_bytes.min(MAX_FRAME_BYTES_LIMIT);
    match u32::try_from(size) {
        Ok(len) if size <= max => {
            dst[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        _ => {
            dst.truncate(start);
            Err(ProtocolError::TooLarge { size, max })
        }
    }
}

/// Decodes one frame payload into a message.
///
/// # Errors
/// [`ProtocolError::Decode`] if the payload is not a valid message,
/// [`ProtocolError::TrailingBytes`] if bytes are left after it.
pub fn decode(payload: &[u8]) -> Result<Message, ProtocolError> {
    let (message, used) = bincode::serde::decode_from_slice(payload, config())?;
    if used != payload.len() {
        return Err(ProtocolError::TrailingBytes {
            used,
            extra: payload.len() - used,
        });
    }
    Ok(message)
}

/// The request id of a payload that starts like a [`Message::Request`], even if the rest of it
/// is malformed, so the error reply can name the request.
pub fn peek_request_id(payload: &[u8]) -> Option<crate::RequestId> {
    // Bincode writes the variant index, then the id; `Request` is variant 1 (see the round-trip
    // test that pins this).
    const REQUEST_VARIANT: u32 = 1;
    let ((variant, id), _): ((u32, u64), usize) =
        bincode::serde::decode_from_slice(payload, config()).ok()?;
    (variant == REQUEST_VARIANT).then_some(crate::RequestId(id))
}
