//! Blob frames: a request's large byte strings sent after its message, so the receiver can read
//! each one straight into memory of its own choosing (the server: the Python `bytes` object
//! the call will get).
//!
//! In a plain frame a byte string's data sits inside the message, so the receiver must read the
//! whole frame into one buffer and copy each byte string out of it: for an upload of tens of
//! megabytes that is a second buffer of fresh memory (whose pages the kernel zeroes first) and
//! a copy. A blob frame is laid out so that the receiver knows every blob's length before any
//! blob data arrives:
//!
//! ```text
//! u32 BE  BLOB_FRAME_FLAG | head length
//! head    the message (bincode), each blob written in it as an empty byte string
//! u32 BE  number of blobs, 1..=MAX_BLOBS
//! n ×     u32 BE position in the head where the blob's empty byte string's data starts
//!         u64 BE the blob's length
//! blobs   the blobs' bytes, in order
//! ```
//!
//! Positions are strictly increasing and at most the head's length; the whole frame (prefix
//! excluded) counts against the frame limit, checked before anything is allocated. Decoding
//! ([`decode_blobs`]) puts each blob in place of the empty byte string found at its position,
//! and fails unless every blob is put somewhere.
//!
//! Only clients send blob frames (for byte strings of at least [`BLOB_MIN_BYTES`]); a server
//! answers with plain frames, which already write large byte strings from their own memory.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::ProtocolError;
use crate::message::Message;

/// The top bit of a frame's length prefix: the frame is a blob frame. Plain frames are
/// therefore at most [`MAX_FRAME_BYTES_LIMIT`](super::MAX_FRAME_BYTES_LIMIT) long.
pub const BLOB_FRAME_FLAG: u32 = 1 << 31;

/// Byte strings at least this long in a client's request travel as blobs.
pub const BLOB_MIN_BYTES: usize = crate::memory::LARGE_BUFFER_BYTES;

/// At most this many blobs in one frame.
pub const MAX_BLOBS: usize = 4096;

/// Bytes of the blob count after a blob frame's head.
pub(super) const COUNT_BYTES: usize = 4;

/// Bytes of one entry of a blob frame's table.
pub(super) const ENTRY_BYTES: usize = 12;

/// One blob of a blob frame: where it belongs in the head, and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobSpec {
    /// The position in the head where the data of the blob's (empty) byte string starts.
    pub position: usize,
    /// The blob's length in bytes.
    pub len: usize,
}

/// One frame read off the stream by [`FrameCodec`](super::FrameCodec).
#[derive(Debug)]
pub struct Frame {
    /// The payload: a plain frame's message, or a blob frame's head (the message with its blobs
    /// left out).
    pub payload: BytesMut,
    /// A blob frame's blobs, which follow on the stream and are read with [`read_blobs`];
    /// empty for a plain frame.
    pub blobs: Vec<BlobSpec>,
}

impl Frame {
    /// Bytes the frame holds once its blobs are read: what it costs in memory.
    pub fn size(&self) -> usize {
        self.blobs
            .iter()
            .fold(self.payload.len(), |sum, blob| sum.saturating_add(blob.len))
    }
}

/// The table of a blob frame whose head is `head_len` bytes long, from its `count` entries in
/// `table`; checks the positions and that the frame fits within `max` bytes.
pub(super) fn parse_table(
    table: &[u8],
    head_len: usize,
    max: usize,
) -> Result<Vec<BlobSpec>, String> {
    let count = table.len() / ENTRY_BYTES;
    let mut total = head_len + COUNT_BYTES + table.len();
    let mut blobs = Vec::with_capacity(count);
    let mut entries = table;
    for _ in 0..count {
        let position = entries.get_u32() as usize;
        let len = usize::try_from(entries.get_u64()).unwrap_or(usize::MAX);
        if position > head_len {
            return Err(format!(
                "a blob at position {position} of a {head_len}-byte head"
            ));
        }
        if blobs
            .last()
            .is_some_and(|last: &BlobSpec| last.position >= position)
        {
            return Err("blob positions out of order".to_owned());
        }
        total = total.saturating_add(len);
        if total > max {
            return Err(format!(
                "a blob frame of more than {total} bytes is above the limit of {max}"
            ));
        }
        blobs.push(BlobSpec { position, len });
    }
    Ok(blobs)
}

/// Reads a blob frame's blobs into `bufs`, one buffer per blob and each exactly as long as its
/// blob: first from `buffered` (bytes already read off the stream, as a
/// [`FramedRead`](tokio_util::codec::FramedRead)'s read buffer holds them), then straight from
/// `stream`. Bytes of `buffered` beyond the blobs stay in it.
///
/// # Errors
/// An I/O error from `stream`, or `UnexpectedEof` if it ends before the blobs do.
pub async fn read_blobs<R: AsyncRead + Unpin + ?Sized>(
    buffered: &mut BytesMut,
    stream: &mut R,
    bufs: &mut [&mut [MaybeUninit<u8>]],
) -> io::Result<()> {
    for buf in bufs.iter_mut() {
        let from_buffer = buffered.len().min(buf.len());
        let (head, rest) = buf.split_at_mut(from_buffer);
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and `head` is as long as the bytes
        // copied into it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buffered.as_ptr(),
                head.as_mut_ptr().cast::<u8>(),
                from_buffer,
            );
        }
        buffered.advance(from_buffer);
        let mut read = ReadBuf::uninit(rest);
        while read.remaining() > 0 {
            let before = read.filled().len();
            std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut read)).await?;
            if read.filled().len() == before {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended in the middle of a blob",
                ));
            }
        }
    }
    Ok(())
}

/// [`read_blobs`] into buffers of their own ([`crate::memory::buffer`]), for a receiver that
/// keeps blobs in plain memory: the blobs with their positions, as [`decode_blobs`] takes them.
///
/// # Errors
/// As [`read_blobs`].
pub async fn read_blobs_to_memory<R: AsyncRead + Unpin + ?Sized>(
    buffered: &mut BytesMut,
    stream: &mut R,
    blobs: &[BlobSpec],
) -> io::Result<Vec<(usize, Bytes)>> {
    let mut bufs: Vec<BytesMut> = blobs
        .iter()
        .map(|blob| crate::memory::buffer(blob.len))
        .collect();
    let mut slices: Vec<&mut [MaybeUninit<u8>]> = bufs
        .iter_mut()
        .zip(blobs)
        .map(|(buf, blob)| &mut buf.spare_capacity_mut()[..blob.len])
        .collect();
    read_blobs(buffered, stream, &mut slices).await?;
    Ok(bufs
        .into_iter()
        .zip(blobs)
        .map(|(mut buf, blob)| {
            // SAFETY: `read_blobs` returned Ok, so it wrote the first `blob.len` bytes.
            unsafe { buf.set_len(blob.len) };
            (blob.position, buf.freeze())
        })
        .collect())
}

/// Decodes a blob frame: `head` is its payload, `blobs` its blobs in order, each with its
/// position (as [`BlobSpec::position`]). Large byte strings of the head share its memory, as
/// with [`decode_shared`](super::decode_shared), and each blob is the byte string at its
/// position, without a copy.
///
/// # Errors
/// As [`decode`](super::decode), and [`ProtocolError::Blob`] if a blob's position is not where
/// the message has an empty byte string.
pub fn decode_blobs(head: &Bytes, blobs: Vec<(usize, Bytes)>) -> Result<Message, ProtocolError> {
    let count = blobs.len();
    let source = crate::value::SharedSource::enter_with_blobs(head, blobs);
    let message = super::decode(head)?;
    match source.unplaced() {
        None => Ok(message),
        Some(position) => Err(ProtocolError::Blob(format!(
            "the blob at position {position} (of {count}) is not in the place of a byte string"
        ))),
    }
}
