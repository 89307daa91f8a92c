//! Framing and message encoding: two separate steps.
//!
//! [`framing`] cuts the byte stream into frames (a 4-byte big-endian length, then the payload)
//! and refuses a length above the maximum before allocating anything; a bad length means the
//! stream cannot be resynchronised, so the connection must close. [`decode`] then turns one
//! frame's payload into a [`Message`]; a bad payload is an error for that frame only, and the
//! connection can go on.
//!
//! A client's request with byte strings of a megabyte or more goes as a blob frame: the message
//! first, the byte strings after it, so the server can read each straight into memory of its
//! own (see [`blob`] for the layout). [`encode_frame_shared`] writes them,
//! [`FrameCodec::accepting_blobs`], [`read_blobs`] and [`decode_blobs`] read them.
//!
//! The encoding is bincode 2 (serde API, standard configuration). Everything that knows about
//! bincode lives in this file, so a change of encoding touches one place.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::ser::{SerializeStructVariant, Serializer};
use tokio_util::codec::{Decoder, Encoder};

pub mod blob;
mod typed;

pub use blob::{
    BLOB_FRAME_FLAG, BLOB_MIN_BYTES, BlobSpec, Frame, MAX_BLOBS, decode_blobs, read_blobs,
    read_blobs_to_memory,
};
pub use typed::{TypedReply, decode_response_as, response_id};

use crate::error::ProtocolError;
use crate::message::{Message, RequestId};

/// Default maximum frame size: 256 MiB, room for bulk `bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// Largest plain frame the 4-byte length prefix can express (its top bit marks a blob frame,
/// see [`blob`]).
pub const MAX_FRAME_BYTES_LIMIT: usize = (blob::BLOB_FRAME_FLAG - 1) as usize;

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
/// Reading a larger length fails with an `InvalidData` I/O error before any allocation, and so
/// does a blob frame unless [`FrameCodec::accepting_blobs`] allows them.
pub fn framing(max_frame_bytes: usize) -> FrameCodec {
    FrameCodec {
        max: max_frame_bytes.min(MAX_FRAME_BYTES_LIMIT),
        blobs: false,
        state: ReadState::Prefix,
    }
}

/// Cuts a byte stream into frames, and writes frames: see [`framing`].
///
/// A frame of at least [`memory::LARGE_BUFFER_BYTES`](crate::memory::LARGE_BUFFER_BYTES) is
/// read into a buffer of its own, allocated once at its full size (see [`crate::memory`]), so
/// that its payload, frozen into `Bytes`, can be handed on without a copy (see
/// [`decode_shared`]). Of a blob frame, it reads the head and the table; the caller reads the
/// blobs where it wants them ([`read_blobs`]).
#[derive(Debug)]
pub struct FrameCodec {
    max: usize,
    /// Whether blob frames are accepted.
    blobs: bool,
    state: ReadState,
}

/// Where [`FrameCodec`] is in the frame being read.
#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// Before a length prefix.
    Prefix,
    /// In a plain frame's payload of this length.
    Plain(usize),
    /// In a blob frame's head of this length, or its blob count right after it.
    BlobHead(usize),
    /// In a blob frame's table of this many entries, after a head of this length.
    BlobTable { head: usize, count: usize },
}

impl FrameCodec {
    /// Accepts blob frames too (a server reading requests).
    pub fn accepting_blobs(mut self) -> Self {
        self.blobs = true;
        self
    }

    /// Room for a payload of `len` bytes, `src` holding what has arrived of it.
    fn make_room(src: &mut BytesMut, len: usize) {
        if src.capacity() < len {
            if len >= crate::memory::LARGE_BUFFER_BYTES {
                let mut own = crate::memory::buffer(len);
                own.extend_from_slice(src);
                *src = own;
            } else {
                src.reserve(len - src.len());
            }
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        loop {
            match self.state {
                ReadState::Prefix => {
                    let Some(prefix) = src.first_chunk::<LENGTH_PREFIX_BYTES>() else {
                        return Ok(None);
                    };
                    let prefix = u32::from_be_bytes(*prefix);
                    let is_blob = prefix & blob::BLOB_FRAME_FLAG != 0;
                    let len = (prefix & !blob::BLOB_FRAME_FLAG) as usize;
                    if is_blob && !self.blobs {
                        return Err(invalid(
                            "a blob frame, which only a client may send".to_owned(),
                        ));
                    }
                    if len > self.max {
                        return Err(invalid(format!(
                            "a frame of {len} bytes is above the limit of {}",
                            self.max
                        )));
                    }
                    src.advance(LENGTH_PREFIX_BYTES);
                    if is_blob {
                        Self::make_room(src, len + blob::COUNT_BYTES);
                        self.state = ReadState::BlobHead(len);
                    } else {
                        Self::make_room(src, len);
                        self.state = ReadState::Plain(len);
                    }
                }
                ReadState::Plain(len) => {
                    if src.len() < len {
                        return Ok(None);
                    }
                    self.state = ReadState::Prefix;
                    return Ok(Some(Frame {
                        payload: src.split_to(len),
                        blobs: Vec::new(),
                    }));
                }
                ReadState::BlobHead(head) => {
                    let Some(count) = src
                        .get(head..)
                        .and_then(|rest| rest.first_chunk::<{ blob::COUNT_BYTES }>())
                    else {
                        return Ok(None);
                    };
                    let count = u32::from_be_bytes(*count) as usize;
                    if !(1..=blob::MAX_BLOBS).contains(&count) {
                        return Err(invalid(format!(
                            "a blob frame of {count} blobs (1 to {} allowed)",
                            blob::MAX_BLOBS
                        )));
                    }
                    let table = head + blob::COUNT_BYTES + count * blob::ENTRY_BYTES;
                    if table > self.max {
                        return Err(invalid(format!(
                            "a blob frame of more than {table} bytes is above the limit of {}",
                            self.max
                        )));
                    }
                    src.reserve(table.saturating_sub(src.len()));
                    self.state = ReadState::BlobTable { head, count };
                }
                ReadState::BlobTable { head, count } => {
                    let start = head + blob::COUNT_BYTES;
                    let end = start + count * blob::ENTRY_BYTES;
                    if src.len() < end {
                        return Ok(None);
                    }
                    let blobs =
                        blob::parse_table(&src[start..end], head, self.max).map_err(invalid)?;
                    let payload = src.split_to(head);
                    src.advance(end - head);
                    self.state = ReadState::Prefix;
                    return Ok(Some(Frame { payload, blobs }));
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && matches!(self.state, ReadState::Prefix) => Ok(None),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended in the middle of a frame",
            )),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|_| payload.len() <= self.max)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a frame of {} bytes is above the limit of {}",
                        payload.len(),
                        self.max
                    ),
                )
            })?;
        dst.reserve(LENGTH_PREFIX_BYTES + payload.len());
        dst.put_u32(len);
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

/// `Message::Response` is variant 2 of `Message` (pinned by the tests below, which compare
/// responses written by hand with the derived encoding).
const RESPONSE_VARIANT: u32 = 2;

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
    encode_frame_with(message, max_frame_bytes, dst)
}

/// [`encode_frame`], except that large byte strings are not copied into `dst`: each
/// [`Value::Bytes`](crate::Value::Bytes) of at least [`SHARE_MIN_BYTES`] is pushed onto `shared`
/// instead (a clone of its `Bytes`, which costs no copy) with its position in `dst`. The frame
/// is `dst`'s new bytes with each of those byte strings put back at its position (positions
/// count from the start of `dst`, bytes already there included, and come in order); a
/// [`FrameQueue`](crate::queue::FrameQueue) writes them so, from their own memory.
///
/// With `blobs`, byte strings of at least [`BLOB_MIN_BYTES`] make the frame a blob frame
/// (see [`read_blobs`]): they go after the message, all at the position where the frame's
/// bytes in `dst` end. Only a peer that accepts blob frames (a server) may be sent one.
///
/// Like [`encode_frame_with`], `message` may be any value that serializes as a [`Message`] does.
///
/// # Errors
/// As [`encode_frame`]; `dst` and `shared` are then left as they were.
pub fn encode_frame_shared<T: Serialize + ?Sized>(
    message: &T,
    max_frame_bytes: usize,
    blobs: bool,
    dst: &mut BytesMut,
    shared: &mut Vec<(usize, Bytes)>,
) -> Result<(), ProtocolError> {
    let first = shared.len();
    let sharing = crate::value::Sharing::enter(blobs);
    let mut taken_blobs = Vec::new();
    let mut share = |contents: &[u8], at: usize| match sharing.take_offer(contents) {
        Some(bytes) => {
            shared.push((at, bytes));
            true
        }
        None => false,
    };
    let mut blob = |contents: &[u8]| {
        let bytes = sharing.take_blob(contents)?;
        let len = bytes.len();
        taken_blobs.push(bytes);
        Some(len)
    };
    let encoded = encode_frame_inner(
        message,
        max_frame_bytes,
        dst,
        Some(&mut share),
        blobs.then_some(&mut blob as BlobFn<'_>),
    );
    if encoded.is_err() {
        shared.truncate(first);
    } else {
        let end = dst.len();
        shared.extend(taken_blobs.into_iter().map(|bytes| (end, bytes)));
    }
    encoded
}

/// Encodes any serializable value as a complete frame at the end of `dst`, exactly as
/// [`encode_frame`] would encode a [`Message`] that serializes the same way. The payload is
/// written straight into `dst`, with no intermediate buffer; once it is known to exceed the
/// limit, the rest is only counted, so an oversized value costs no memory beyond the limit.
///
/// # Errors
/// [`ProtocolError::TooLarge`] (with the full encoded size) if the payload exceeds
/// `max_frame_bytes`, [`ProtocolError::Encode`] if `value` fails to serialize; either way `dst`
/// is left as it was.
pub fn encode_frame_with<T: Serialize + ?Sized>(
    value: &T,
    max_frame_bytes: usize,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    encode_frame_inner(value, max_frame_bytes, dst, None, None)
}

fn encode_frame_inner<'s, T: Serialize + ?Sized>(
    value: &T,
    max_frame_bytes: usize,
    dst: &mut BytesMut,
    share: Option<ShareFn<'s>>,
    blob: Option<BlobFn<'s>>,
) -> Result<(), ProtocolError> {
    let start = dst.len();
    let max = max_frame_bytes.min(MAX_FRAME_BYTES_LIMIT);
    dst.put_u32(0);
    let mut writer = FrameWriter::new(dst, max, share, blob);
    let written = bincode::serde::encode_into_writer(value, &mut writer, config());
    let (head, total, table) = (writer.size, writer.total(), writer.table);
    if let Err(e) = written {
        dst.truncate(start);
        return Err(e.into());
    }
    if table.len() > blob::MAX_BLOBS {
        dst.truncate(start);
        return Err(ProtocolError::Blob(format!(
            "{} byte strings of {} bytes or more in one message (at most {} allowed)",
            table.len(),
            BLOB_MIN_BYTES,
            blob::MAX_BLOBS
        )));
    }
    let Some(prefix) = u32::try_from(head).ok().filter(|_| total <= max) else {
        dst.truncate(start);
        return Err(ProtocolError::TooLarge { size: total, max });
    };
    let prefix = if table.is_empty() {
        prefix
    } else {
        dst.reserve(blob::COUNT_BYTES + table.len() * blob::ENTRY_BYTES);
        // At most MAX_BLOBS, checked above; positions are within the head, below the limit.
        dst.put_u32(table.len() as u32);
        for spec in &table {
            dst.put_u32(spec.position as u32);
            dst.put_u64(spec.len as u64);
        }
        prefix | BLOB_FRAME_FLAG
    };
    dst[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

/// Encodes `Message::Response { id, result: Ok(value) }` as a complete frame at the end of
/// `dst`, for any `value` that serializes as a [`Value`](crate::Value) does: a server can write
/// a result straight from its own objects, with no `Value` tree in between. The bytes are those
/// [`encode_frame`] produces for the equivalent message.
///
/// # Errors
/// As [`encode_frame_with`]; `dst` is then left as it was.
pub fn encode_response_frame<T: Serialize + ?Sized>(
    id: RequestId,
    value: &T,
    max_frame_bytes: usize,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    encode_frame_with(&OkResponse { id, value }, max_frame_bytes, dst)
}

/// Byte strings at least this long are left out of the frame buffer by [`encode_frame_shared`]
/// and offered to the `share` callback of [`encode_response_frame_sharing`].
pub const SHARE_MIN_BYTES: usize = 64 * 1024;

/// [`encode_response_frame`], except that large byte strings need not be copied into `dst`.
/// Each byte string of at least [`SHARE_MIN_BYTES`] is offered to `share` with the position in
/// `dst` where it belongs; if `share` returns true, the caller has kept a reference to those
/// bytes and will send them itself between `dst[..position]` and `dst[position..]`, and they
/// are left out of `dst` (the length prefix still counts them).
///
/// # Errors
/// As [`encode_frame_with`]; `dst` is then left as it was, and whatever `share` took for this
/// frame (positions past the length `dst` had) must be dropped by the caller.
pub fn encode_response_frame_sharing<T: Serialize + ?Sized>(
    id: RequestId,
    value: &T,
    max_frame_bytes: usize,
    dst: &mut BytesMut,
    share: &mut dyn FnMut(&[u8], usize) -> bool,
) -> Result<(), ProtocolError> {
    encode_frame_inner(
        &OkResponse { id, value },
        max_frame_bytes,
        dst,
        Some(share),
        None,
    )
}

/// Serializes as `Message::Response { id, result: Ok(value) }` (derived `Serialize` shape).
struct OkResponse<'a, T: ?Sized> {
    id: RequestId,
    value: &'a T,
}

impl<T: Serialize + ?Sized> Serialize for OkResponse<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut response =
            serializer.serialize_struct_variant("Message", RESPONSE_VARIANT, "Response", 2)?;
        response.serialize_field("id", &self.id)?;
        response.serialize_field("result", &OkResult(self.value))?;
        response.end()
    }
}

/// Serializes as `Result::<T, _>::Ok(value)`.
struct OkResult<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for OkResult<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("Result", 0, "Ok", self.0)
    }
}

/// Offered each large byte string with its position; true if the caller took it.
type ShareFn<'s> = &'s mut dyn FnMut(&[u8], usize) -> bool;

/// Offered each empty byte string; if it stands for a blob, the caller takes the blob and
/// returns its length.
type BlobFn<'s> = &'s mut dyn FnMut(&[u8]) -> Option<usize>;

/// Appends a payload to the frame buffer (or lets `share` take large byte strings, and `blob`
/// blobs); past the limit it only counts.
struct FrameWriter<'a, 's> {
    dst: &'a mut BytesMut,
    /// Bytes of the payload (of a blob frame, its head).
    size: usize,
    max: usize,
    /// The limit, less what a blob frame's table and blobs take so far.
    room: usize,
    share: Option<ShareFn<'s>>,
    blob: Option<BlobFn<'s>>,
    /// The blobs taken so far.
    table: Vec<BlobSpec>,
    blob_bytes: usize,
}

impl<'a, 's> FrameWriter<'a, 's> {
    fn new(
        dst: &'a mut BytesMut,
        max: usize,
        share: Option<ShareFn<'s>>,
        blob: Option<BlobFn<'s>>,
    ) -> Self {
        FrameWriter {
            dst,
            size: 0,
            max,
            room: max,
            share,
            blob,
            table: Vec::new(),
            blob_bytes: 0,
        }
    }

    /// The frame's size so far, prefix excluded (a blob frame's table and blobs included).
    fn total(&self) -> usize {
        self.size
            .saturating_add(self.table_bytes())
            .saturating_add(self.blob_bytes)
    }

    fn table_bytes(&self) -> usize {
        if self.table.is_empty() {
            0
        } else {
            blob::COUNT_BYTES + self.table.len() * blob::ENTRY_BYTES
        }
    }

    /// An empty byte string: a blob, if `blob` takes it.
    #[cold]
    fn write_empty(&mut self, bytes: &[u8]) {
        if let Some(blob) = &mut self.blob
            && let Some(len) = blob(bytes)
        {
            self.table.push(BlobSpec {
                position: self.size,
                len,
            });
            self.blob_bytes = self.blob_bytes.saturating_add(len);
            self.room = self
                .max
                .saturating_sub(self.table_bytes().saturating_add(self.blob_bytes));
        }
    }

    /// A byte string large enough to be shared, or to need a buffer of its own.
    #[cold]
    fn write_large(&mut self, bytes: &[u8]) {
        if let Some(share) = &mut self.share
            && share(bytes, self.dst.len())
        {
            return;
        }
        if bytes.len() >= crate::memory::LARGE_BUFFER_BYTES
            && self.dst.capacity() - self.dst.len() < bytes.len()
        {
            // Room for this string and a little more, in one fresh buffer advised onto huge
            // pages, rather than doubling (and copying) the buffer on the way there.
            let mut grown = crate::memory::buffer(self.dst.len() + bytes.len() + SHARE_MIN_BYTES);
            grown.extend_from_slice(self.dst);
            *self.dst = grown;
        }
        self.dst.extend_from_slice(bytes);
    }
}

impl bincode::enc::write::Writer for FrameWriter<'_, '_> {
    /// Called for every piece of the payload, most of them a few bytes (a variant index, a
    /// varint): the common case is one comparison and a copy.
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        let n = bytes.len();
        if n == 0 {
            self.write_empty(bytes);
            return Ok(());
        }
        self.size = self.size.saturating_add(n);
        if self.size > self.room {
            return Ok(());
        }
        if n >= SHARE_MIN_BYTES {
            self.write_large(bytes);
        } else {
            self.dst.extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// Decodes one frame payload into a message.
///
/// # Errors
/// [`ProtocolError::Decode`] if the payload is not a valid message,
/// [`ProtocolError::TrailingBytes`] if bytes are left after it.
pub fn decode(payload: &[u8]) -> Result<Message, ProtocolError> {
    let (message, used) = bincode::serde::borrow_decode_from_slice(payload, config())?;
    if used != payload.len() {
        return Err(ProtocolError::TrailingBytes {
            used,
            extra: payload.len() - used,
        });
    }
    Ok(message)
}

/// [`decode`], except that large byte strings (64 KiB and more) in the message share
/// `payload`'s memory instead of being copied out of it; `payload` stays allocated for as long as
/// any of them lives.
///
/// # Errors
/// As [`decode`].
pub fn decode_shared(payload: &Bytes) -> Result<Message, ProtocolError> {
    let _source = crate::value::SharedSource::enter(payload);
    decode(payload)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NetRef, NetRefId, ServerError, Value};
    use tokio_util::codec::{Decoder, Encoder};

    fn frame(message: &Message) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(message, DEFAULT_MAX_FRAME_BYTES, &mut out).expect("encodes");
        out
    }

    #[test]
    fn a_response_frame_matches_the_message_encoding() {
        let values = [
            Value::None,
            Value::Int(-1),
            Value::bytes(vec![1; 300]),
            Value::List(vec![
                Value::Dict(vec![(
                    Value::Str("k".into()),
                    Value::BigInt("1".repeat(40)),
                )]),
                Value::Complex { re: 1.0, im: -0.5 },
                Value::Ref(NetRef {
                    id: NetRefId(u64::MAX),
                    type_name: "builtins.object".into(),
                }),
            ]),
        ];
        for (i, value) in values.into_iter().enumerate() {
            let id = RequestId(i as u64 * 1000);
            let mut got = BytesMut::from(&b"before"[..]);
            encode_response_frame(id, &value, DEFAULT_MAX_FRAME_BYTES, &mut got).expect("encodes");
            let want = frame(&Message::Response {
                id,
                result: Ok(value),
            });
            assert_eq!(&got[..6], b"before");
            assert_eq!(got[6..], want[..]);
        }
    }

    #[test]
    fn an_oversized_frame_reports_its_full_size_and_leaves_the_buffer() {
        let value = Value::bytes(vec![0; 1000]);
        let full = frame(&Message::Response {
            id: RequestId(7),
            result: Ok(value.clone()),
        })
        .len()
            - LENGTH_PREFIX_BYTES;
        let mut dst = BytesMut::from(&b"keep"[..]);
        let err = encode_response_frame(RequestId(7), &value, 100, &mut dst).expect_err("too big");
        assert!(
            matches!(err, ProtocolError::TooLarge { size, max: 100 } if size == full),
            "{err:?}"
        );
        assert_eq!(&dst[..], b"keep");
    }

    #[test]
    fn a_failing_value_leaves_the_buffer() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::{Error, SerializeSeq};
                let mut seq = serializer.serialize_seq(Some(2))?;
                seq.serialize_element(&1u8)?;
                Err(S::Error::custom("nope"))
            }
        }
        let mut dst = BytesMut::from(&b"keep"[..]);
        let err =
            encode_response_frame(RequestId(1), &Fails, 1 << 20, &mut dst).expect_err("fails");
        assert!(matches!(err, ProtocolError::Encode(_)), "{err:?}");
        assert_eq!(&dst[..], b"keep");
    }

    #[test]
    fn shared_byte_strings_go_where_they_belong() {
        let big = vec![7u8; SHARE_MIN_BYTES];
        let value = Value::List(vec![
            Value::bytes(vec![1; 10]),
            Value::bytes(big.clone()),
            Value::Str("between".into()),
            Value::bytes(big.clone()),
        ]);
        let want = frame(&Message::Response {
            id: RequestId(5),
            result: Ok(value.clone()),
        });
        let mut dst = BytesMut::from(&b"prefix"[..]);
        let mut taken = Vec::new();
        encode_response_frame_sharing(RequestId(5), &value, 1 << 20, &mut dst, &mut |b, at| {
            taken.push((at, b.to_vec()));
            true
        })
        .expect("encodes");
        assert_eq!(taken.len(), 2, "only the large strings are offered");
        // Splice the taken strings back in: the stream is what `encode_frame` writes.
        let mut stream = Vec::new();
        let mut pos = 6;
        for (at, bytes) in &taken {
            stream.extend_from_slice(&dst[pos..*at]);
            stream.extend_from_slice(bytes);
            pos = *at;
        }
        stream.extend_from_slice(&dst[pos..]);
        assert_eq!(stream, want[..]);
        assert_eq!(dst.len() - 6 + 2 * big.len(), want.len());

        // Declined offers are copied as usual.
        let mut dst = BytesMut::new();
        encode_response_frame_sharing(RequestId(5), &value, 1 << 20, &mut dst, &mut |_, _| false)
            .expect("encodes");
        assert_eq!(dst, want);

        // Too large: nothing is offered past the limit, and the buffer is left as it was.
        let mut dst = BytesMut::from(&b"keep"[..]);
        let mut offered = 0;
        let err =
            encode_response_frame_sharing(RequestId(5), &value, 1000, &mut dst, &mut |_, _| {
                offered += 1;
                true
            })
            .expect_err("too large");
        assert!(
            matches!(err, ProtocolError::TooLarge { max: 1000, .. }),
            "{err:?}"
        );
        assert_eq!(offered, 0);
        assert_eq!(&dst[..], b"keep");
    }

    #[test]
    fn large_byte_strings_share_the_frame_and_small_ones_are_copied() {
        let big = vec![9u8; SHARE_MIN_BYTES];
        let message = Message::Response {
            id: RequestId(1),
            result: Ok(Value::List(vec![
                Value::bytes(vec![1, 2, 3]),
                Value::bytes(big.clone()),
            ])),
        };
        let payload = codec_payload(&message);
        let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        let decoded = decode_shared(&payload).expect("decodes");
        assert_eq!(decoded, message);
        let Message::Response {
            result: Ok(Value::List(items)),
            ..
        } = decoded
        else {
            unreachable!("checked above")
        };
        let inside = |v: &Value| match v {
            Value::Bytes(b) => range.contains(&(b.as_ptr() as usize)),
            _ => false,
        };
        assert!(!inside(&items[0]), "a small byte string is copied");
        assert!(inside(&items[1]), "a large one shares the frame");
        // Converting into a `Value` hands the same memory over.
        let again: Value = items[1].clone().deserialize_into().expect("converts");
        assert!(inside(&again));
        // Plain `decode` copies everything.
        let Message::Response {
            result: Ok(Value::List(copied)),
            ..
        } = decode(&payload).expect("decodes")
        else {
            unreachable!("same payload")
        };
        assert!(!inside(&copied[1]));
        assert_eq!(copied, items);
    }

    /// A request carrying large and small byte strings, and the large ones.
    fn upload(sizes: &[usize]) -> (Message, Vec<Bytes>) {
        let strings: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                (0..n)
                    .map(|j| (j as u8).wrapping_mul(i as u8 + 3))
                    .collect()
            })
            .collect();
        let message = Message::Request {
            id: RequestId(42),
            op: crate::Op::Call {
                obj: crate::NetRefId(9),
                args: crate::Args {
                    positional: vec![
                        Value::List(strings.iter().cloned().map(Value::Bytes).collect()),
                        Value::Str("between".into()),
                    ],
                    keyword: vec![(
                        "key".into(),
                        Value::Dict(vec![(
                            Value::bytes(strings[0].clone()),
                            Value::Tuple(vec![Value::Int(1), Value::Bytes(strings[0].clone())]),
                        )]),
                    )],
                },
                mode: crate::ReturnMode::Auto,
            },
        };
        let large = strings
            .into_iter()
            .filter(|b| b.len() >= SHARE_MIN_BYTES)
            .collect();
        (message, large)
    }

    /// `dst` from `from` on, with the shared strings put back where they belong.
    fn splice(dst: &[u8], from: usize, shared: &[(usize, Bytes)]) -> Vec<u8> {
        let mut stream = Vec::new();
        let mut pos = from;
        for (at, bytes) in shared {
            assert!(*at >= pos, "positions in order");
            stream.extend_from_slice(&dst[pos..*at]);
            stream.extend_from_slice(bytes);
            pos = *at;
        }
        stream.extend_from_slice(&dst[pos..]);
        stream
    }

    #[test]
    fn a_shared_encoding_spliced_back_is_the_frame() {
        let sizes = [
            SHARE_MIN_BYTES,
            10,
            SHARE_MIN_BYTES - 1,
            1 << 20,
            0,
            crate::memory::LARGE_BUFFER_BYTES + 5,
        ];
        let (message, large) = upload(&sizes);
        let want = frame(&message);
        let mut dst = BytesMut::from(&b"earlier frames"[..]);
        let mut shared = vec![(3, Bytes::from_static(b"kept"))];
        encode_shared(&message, &mut dst, &mut shared).expect("encodes");
        assert_eq!(&dst[..14], b"earlier frames");
        assert_eq!(shared[0], (3, Bytes::from_static(b"kept")), "left alone");
        let new = &shared[1..];
        // The first string is in the list and twice more in the keyword argument.
        assert_eq!(
            new.len(),
            large.len() + 2,
            "only the large strings are shared"
        );
        assert!(new.iter().all(|(at, _)| *at >= 14));
        // The same memory, not copies.
        for (_, bytes) in new {
            assert!(
                large
                    .iter()
                    .any(|b| b.as_ptr() == bytes.as_ptr() && b.len() == bytes.len()),
                "a shared string is the argument's own memory"
            );
        }
        let copied = dst.len() - 14;
        assert!(copied < 2 * SHARE_MIN_BYTES, "{copied} bytes copied");
        assert_eq!(splice(&dst, 14, new), want[..]);
        // A plain encode on this thread afterwards copies everything: no offer is left over.
        let mut plain = BytesMut::new();
        encode_frame(&message, DEFAULT_MAX_FRAME_BYTES, &mut plain).expect("encodes");
        assert_eq!(plain, want);
        drop(shared);
        drop(message);
        assert!(
            large.iter().all(Bytes::is_unique),
            "nothing holds on to the strings"
        );
    }

    #[test]
    fn a_message_without_large_strings_shares_nothing() {
        let (message, large) = upload(&[10, SHARE_MIN_BYTES - 1, 0]);
        assert!(large.is_empty());
        let mut dst = BytesMut::new();
        let mut shared = Vec::new();
        encode_shared(&message, &mut dst, &mut shared).expect("encodes");
        assert!(shared.is_empty());
        assert_eq!(dst, frame(&message));
        for message in [
            Message::Ping { id: RequestId(1) },
            Message::Release {
                ids: vec![crate::NetRefId(1)],
            },
        ] {
            let mut dst = BytesMut::new();
            encode_shared(&message, &mut dst, &mut shared).expect("encodes");
            assert!(shared.is_empty());
            assert_eq!(dst, frame(&message));
        }
    }

    #[test]
    fn a_too_large_shared_encoding_leaves_dst_and_shared() {
        let (message, large) = upload(&[SHARE_MIN_BYTES, 1 << 20, 7]);
        let full = frame(&message).len() - LENGTH_PREFIX_BYTES;
        // Too large after the first large string was shared: it is taken back.
        let max = full - 1;
        let mut dst = BytesMut::from(&b"keep"[..]);
        let mut shared = vec![(1, Bytes::from_static(b"old"))];
        let err =
            encode_frame_shared(&message, max, false, &mut dst, &mut shared).expect_err("too big");
        assert!(
            matches!(err, ProtocolError::TooLarge { size, max: m } if size == full && m == max),
            "{err:?}"
        );
        assert_eq!(&dst[..], b"keep");
        assert_eq!(shared, [(1, Bytes::from_static(b"old"))]);
        drop(message);
        assert!(large.iter().all(Bytes::is_unique), "nothing is kept");
        // Room for it: fine.
        let (message, _) = upload(&[SHARE_MIN_BYTES, 1 << 20, 7]);
        encode_frame_shared(&message, full, false, &mut dst, &mut shared).expect("fits");
        assert_eq!(shared.len(), 1 + 4);
        assert_eq!(splice(&dst, 4, &shared[1..]), frame(&message)[..]);
    }

    #[test]
    fn a_failing_shared_encoding_leaves_no_offer_behind() {
        /// A large string, then a failure.
        struct Fails(Value);
        impl Serialize for Fails {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::{Error, SerializeSeq};
                let mut seq = serializer.serialize_seq(Some(2))?;
                seq.serialize_element(&self.0)?;
                Err(S::Error::custom("nope"))
            }
        }
        let big = Bytes::from(vec![3u8; SHARE_MIN_BYTES]);
        let fails = Fails(Value::Bytes(big.clone()));
        let mut shared = Vec::new();
        let mut dst = BytesMut::new();
        let result = encode_shared(&fails, &mut dst, &mut shared);
        assert!(result.is_err());
        assert!(dst.is_empty());
        assert!(
            shared.is_empty(),
            "what was taken before the failure is given back"
        );
        drop(fails);
        assert!(big.is_unique(), "no offer is left in the slot");
    }

    /// [`encode_frame_shared`] without blobs, at the default limit.
    fn encode_shared<T: Serialize + ?Sized>(
        message: &T,
        dst: &mut BytesMut,
        shared: &mut Vec<(usize, Bytes)>,
    ) -> Result<(), ProtocolError> {
        encode_frame_shared(message, DEFAULT_MAX_FRAME_BYTES, false, dst, shared)
    }

    fn codec_payload(message: &Message) -> Bytes {
        frame(message).freeze().slice(LENGTH_PREFIX_BYTES..)
    }

    #[test]
    fn a_large_frame_gets_a_buffer_of_its_own() {
        let payload = vec![5u8; crate::memory::LARGE_BUFFER_BYTES + 3];
        let mut wire = BytesMut::new();
        let mut codec = framing(DEFAULT_MAX_FRAME_BYTES);
        codec
            .encode(Bytes::from(payload.clone()), &mut wire)
            .expect("encodes");
        wire.extend_from_slice(&[0, 0, 0, 1, 42]); // and a small frame behind it
        // Arrives in pieces: the prefix and a little, then the rest.
        let mut src = BytesMut::from(&wire[..10]);
        assert!(codec.decode(&mut src).expect("fine").is_none());
        assert!(src.capacity() >= payload.len());
        src.extend_from_slice(&wire[10..]);
        let got = codec.decode(&mut src).expect("fine").expect("a frame");
        assert_eq!(got.payload[..], payload[..]);
        let next = codec.decode(&mut src).expect("fine").expect("a frame");
        assert_eq!(next.payload[..], [42]);
        // A length above the limit is still refused, before allocating.
        let mut codec = framing(1000);
        let mut src = BytesMut::from(&[0, 0x20, 0, 0][..]);
        assert!(codec.decode(&mut src).is_err());
        assert!(src.capacity() < 1 << 20);
    }

    /// Reads blob frames off `wire` as a server would: through the codec (fed in pieces of
    /// `chunk` bytes), then the blobs with `read_blobs` into buffers of their own.
    async fn read_blob_frames(wire: &[u8], chunk: usize) -> io::Result<Vec<(Message, Vec<Bytes>)>> {
        let mut codec = framing(DEFAULT_MAX_FRAME_BYTES).accepting_blobs();
        let mut src = BytesMut::new();
        let mut rest = wire;
        let mut out = Vec::new();
        loop {
            let frame = match codec.decode(&mut src)? {
                Some(frame) => frame,
                None if rest.is_empty() => match codec.decode_eof(&mut src)? {
                    Some(frame) => frame,
                    None => return Ok(out),
                },
                None => {
                    let n = chunk.min(rest.len());
                    src.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    continue;
                }
            };
            let placed = read_blobs_to_memory(&mut src, &mut rest, &frame.blobs).await?;
            let blobs: Vec<Bytes> = placed.iter().map(|(_, blob)| blob.clone()).collect();
            let message = decode_blobs(&frame.payload.freeze(), placed)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            out.push((message, blobs));
        }
    }

    fn blob_frame(message: &Message) -> (Vec<u8>, Vec<(usize, Bytes)>) {
        let mut dst = BytesMut::new();
        let mut shared = Vec::new();
        encode_frame_shared(
            message,
            DEFAULT_MAX_FRAME_BYTES,
            true,
            &mut dst,
            &mut shared,
        )
        .expect("encodes");
        (splice(&dst, 0, &shared), shared)
    }

    #[tokio::test]
    async fn blob_frames_carry_large_byte_strings_after_the_message() {
        let sizes = [BLOB_MIN_BYTES, 10, SHARE_MIN_BYTES, 0, BLOB_MIN_BYTES + 5];
        let (message, _) = upload(&sizes);
        let (wire, shared) = blob_frame(&message);
        assert_eq!(
            u32::from_be_bytes(wire[..4].try_into().expect("4 bytes")) & BLOB_FRAME_FLAG,
            BLOB_FRAME_FLAG
        );
        // Four blobs (the first string is also twice in the keyword argument) after the head,
        // plus the 64 KiB string written from its own memory inside the head.
        let blobs: Vec<usize> = shared
            .iter()
            .filter(|(_, b)| b.len() >= BLOB_MIN_BYTES)
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(blobs.len(), 4);
        assert!(blobs.iter().all(|at| *at == blobs[0]), "all at the end");
        assert_eq!(shared.len(), 5);
        // A plain frame behind it, and everything arriving in odd pieces.
        let mut wire_two = wire.clone();
        wire_two.extend_from_slice(&frame(&Message::Ping { id: RequestId(5) }));
        for chunk in [7, 4096, 1 << 22] {
            let got = read_blob_frames(&wire_two, chunk).await.expect("reads");
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].0, message, "chunk {chunk}");
            assert_eq!(got[1].0, Message::Ping { id: RequestId(5) });
            // Each blob in the message is the buffer it was read into, not a copy.
            let Message::Request {
                op: crate::Op::Call { args, .. },
                ..
            } = &got[0].0
            else {
                panic!("a call");
            };
            let Value::List(items) = &args.positional[0] else {
                panic!("a list");
            };
            let Value::Bytes(first) = &items[0] else {
                panic!("bytes");
            };
            assert_eq!(first.as_ptr(), got[0].1[0].as_ptr());
        }
    }

    #[tokio::test]
    async fn a_plain_peer_refuses_blob_frames_and_damage_is_named() {
        let (message, _) = upload(&[BLOB_MIN_BYTES, 3]);
        let (wire, _) = blob_frame(&message);
        let mut plain = framing(DEFAULT_MAX_FRAME_BYTES);
        let err = plain
            .decode(&mut BytesMut::from(&wire[..]))
            .expect_err("refused");
        assert!(err.to_string().contains("blob frame"), "{err}");

        let head = u32::from_be_bytes(wire[..4].try_into().expect("4")) & !BLOB_FRAME_FLAG;
        let table_at = 4 + head as usize;
        let damaged = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut w = wire.clone();
            edit(&mut w);
            w
        };
        let count = |n: u32| {
            move |w: &mut Vec<u8>| w[table_at..table_at + 4].copy_from_slice(&n.to_be_bytes())
        };
        let position = |p: u32| {
            move |w: &mut Vec<u8>| w[table_at + 4..table_at + 8].copy_from_slice(&p.to_be_bytes())
        };
        let length = |l: u64| {
            move |w: &mut Vec<u8>| w[table_at + 8..table_at + 16].copy_from_slice(&l.to_be_bytes())
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (damaged(&count(0)), "0 blobs"),
            (damaged(&count(MAX_BLOBS as u32 + 1)), "blobs (1 to"),
            (damaged(&position(head + 1)), "of a"),
            (damaged(&position(3)), "not in the place of a byte string"),
            (damaged(&length(1 << 40)), "above the limit"),
            (
                damaged(&|w: &mut Vec<u8>| w.truncate(w.len() - 10)),
                "in the middle of a blob",
            ),
            (
                damaged(&|w: &mut Vec<u8>| w.truncate(table_at + 6)),
                "in the middle of a frame",
            ),
        ];
        for (wire, want) in cases {
            let err = read_blob_frames(&wire, 4096).await.expect_err(want);
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn an_oversized_blob_frame_counts_its_blobs_and_leaves_everything() {
        let (message, _) = upload(&[BLOB_MIN_BYTES, 3]);
        let (wire, _) = blob_frame(&message);
        let full = wire.len() - LENGTH_PREFIX_BYTES;
        let mut dst = BytesMut::from(&b"keep"[..]);
        let mut shared = vec![(1, Bytes::from_static(b"k"))];
        let err = encode_frame_shared(&message, full - 1, true, &mut dst, &mut shared)
            .expect_err("too big");
        assert!(
            matches!(err, ProtocolError::TooLarge { size, .. } if size == full),
            "{err:?}"
        );
        assert_eq!((&dst[..], shared.len()), (&b"keep"[..], 1));
        encode_frame_shared(&message, full, true, &mut dst, &mut shared).expect("fits exactly");
    }

    #[test]
    fn errors_still_encode_through_the_message() {
        let message = Message::Response {
            id: RequestId(3),
            result: Err(ServerError::Cancelled),
        };
        let mut got = BytesMut::new();
        encode_frame_with(&message, DEFAULT_MAX_FRAME_BYTES, &mut got).expect("encodes");
        assert_eq!(got, frame(&message));
        assert_eq!(
            decode(&got[LENGTH_PREFIX_BYTES..]).expect("decodes"),
            message
        );
    }
}
