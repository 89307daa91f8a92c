//! Stock RPyC's message layer and channel framing, as spoken by `rpyc.classic.connect` (6.0.x).
//!
//! A frame is `[u32 BE payload length][u8 compressed flag][payload][b'\n']`; a compressed payload
//! is a zlib stream. The payload is one message-type byte ([`MessageKind`]) followed by the brine
//! encoding of the 2-tuple `(seq, body)`:
//!
//! - request: `body = (handler, boxed_args)`, `handler` one of the [`handler`] ids;
//! - reply: `body = boxed_result`;
//! - exception: `body` = the vinegar tuple, or [`EXC_STOP_ITERATION`].
//!
//! A *boxed* object is `(label, payload)` with a [`label`]: a brine value, a tuple of boxed
//! items, or an `id_pack` naming an object on the receiver (`LOCAL_REF`) or on the sender
//! (`REMOTE_REF`).

use super::{BrineError, Value};

/// Bytes before a frame's payload: the length and the compressed flag.
pub const FRAME_HEADER_LEN: usize = 5;

/// Stock senders compress payloads longer than this (we never need to: receivers accept both).
pub const COMPRESSION_THRESHOLD: usize = 3000;

/// Exception payload that stands for `StopIteration` (so iteration ends cheaply).
pub const EXC_STOP_ITERATION: i64 = 1;

/// The request handler ids (`rpyc.core.consts.HANDLE_*`).
pub mod handler {
    /// Echo the argument.
    pub const PING: i64 = 1;
    /// Close the connection (no reply).
    pub const CLOSE: i64 = 2;
    /// The root object (the classic service).
    pub const GETROOT: i64 = 3;
    /// `getattr(obj, name)`.
    pub const GETATTR: i64 = 4;
    /// `delattr(obj, name)`.
    pub const DELATTR: i64 = 5;
    /// `setattr(obj, name, value)`.
    pub const SETATTR: i64 = 6;
    /// `obj(*args, **dict(kwargs))`.
    pub const CALL: i64 = 7;
    /// `getattr(obj, name)(*args, **dict(kwargs))`.
    pub const CALLATTR: i64 = 8;
    /// `repr(obj)`.
    pub const REPR: i64 = 9;
    /// `str(obj)`.
    pub const STR: i64 = 10;
    /// `getattr(type(obj), op)(obj, other)`.
    pub const CMP: i64 = 11;
    /// `hash(obj)`.
    pub const HASH: i64 = 12;
    /// `tuple(dir(obj))`.
    pub const DIR: i64 = 13;
    /// `pickle.dumps(obj, proto)`.
    pub const PICKLE: i64 = 14;
    /// Release references to `obj`.
    pub const DEL: i64 = 15;
    /// The methods of an object's class, as `(name, doc)` pairs.
    pub const INSPECT: i64 = 16;
    /// `tuple(islice(obj, count))`.
    pub const BUFFITER: i64 = 17;
    /// Python 2 slicing.
    pub const OLDSLICING: i64 = 18;
    /// `obj.__exit__(...)`.
    pub const CTXEXIT: i64 = 19;
    /// `isinstance` across a connection.
    pub const INSTANCECHECK: i64 = 20;

    /// The handler's name, for logs.
    pub fn name(id: i64) -> &'static str {
        match id {
            PING => "PING",
            CLOSE => "CLOSE",
            GETROOT => "GETROOT",
            GETATTR => "GETATTR",
            DELATTR => "DELATTR",
            SETATTR => "SETATTR",
            CALL => "CALL",
            CALLATTR => "CALLATTR",
            REPR => "REPR",
            STR => "STR",
            CMP => "CMP",
            HASH => "HASH",
            DIR => "DIR",
            PICKLE => "PICKLE",
            DEL => "DEL",
            INSPECT => "INSPECT",
            BUFFITER => "BUFFITER",
            OLDSLICING => "OLDSLICING",
            CTXEXIT => "CTXEXIT",
            INSTANCECHECK => "INSTANCECHECK",
            _ => "unknown",
        }
    }
}

/// Boxing labels (`rpyc.core.consts.LABEL_*`), named from the receiver's point of view.
pub mod label {
    /// A brine value.
    pub const VALUE: i64 = 1;
    /// A tuple of boxed items.
    pub const TUPLE: i64 = 2;
    /// An `id_pack` of an object that lives on the receiver.
    pub const LOCAL_REF: i64 = 3;
    /// An `id_pack` of an object that lives on the sender.
    pub const REMOTE_REF: i64 = 4;
}

/// The first byte of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `MSG_REQUEST` (1).
    Request = 1,
    /// `MSG_REPLY` (2).
    Reply = 2,
    /// `MSG_EXCEPTION` (3).
    Exception = 3,
}

/// One RPyC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Request, reply or exception.
    pub kind: MessageKind,
    /// The requesting side's sequence number (replies echo it).
    pub seq: u64,
    /// `(handler, boxed_args)`, the boxed result, or the exception payload.
    pub body: Value,
}

impl Message {
    /// For a request: its handler id and its boxed arguments.
    pub fn request_parts(&self) -> Option<(i64, &Value)> {
        if self.kind != MessageKind::Request {
            return None;
        }
        match self.body.as_tuple()? {
            [handler, args] => Some((handler.as_int()?, args)),
            _ => None,
        }
    }
}

/// Why an RPyC frame or message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The payload's brine data is malformed.
    #[error("malformed RPyC message: {0}")]
    Brine(#[from] BrineError),
    /// The payload is empty.
    #[error("empty RPyC message")]
    Empty,
    /// The first byte is not a message type.
    #[error("invalid RPyC message type {0}")]
    BadKind(u8),
    /// The brine value is not `(seq, body)` with a non-negative int `seq`.
    #[error("malformed RPyC message: expected (seq, body), got {0}")]
    BadShape(String),
    /// A compressed payload is not a valid zlib stream.
    #[error("cannot decompress an RPyC frame: {0}")]
    Inflate(String),
    /// A compressed payload inflates beyond the frame limit.
    #[error("a compressed RPyC frame inflates beyond the limit of {limit} bytes")]
    InflatedTooLarge {
        /// The limit.
        limit: usize,
    },
    /// An encoded frame exceeds the frame limit.
    #[error("RPyC frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// A frame header: payload length and whether the payload is zlib-compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes (not counting the header or the trailing newline).
    pub len: usize,
    /// Whether the payload is a zlib stream (any non-zero flag byte, as stock reads it).
    pub compressed: bool,
}

/// Reads a frame header.
pub fn parse_header(header: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
    FrameHeader {
        len: u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize,
        compressed: header[4] != 0,
    }
}

/// Inflates a compressed payload (a zlib stream), refusing output above `limit` bytes.
///
/// # Errors
/// [`MessageError::Inflate`] for a bad stream, [`MessageError::InflatedTooLarge`] above the limit.
pub fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, MessageError> {
    use miniz_oxide::inflate::{TINFLStatus, decompress_to_vec_zlib_with_limit};
    decompress_to_vec_zlib_with_limit(data, limit).map_err(|e| match e.status {
        TINFLStatus::HasMoreOutput => MessageError::InflatedTooLarge { limit },
        status => MessageError::Inflate(format!("{status:?}")),
    })
}

/// Compresses a payload as stock RPyC does (zlib, level 1). We never need to send compressed
/// frames; this exists for tests and for peers that want it.
pub fn deflate(payload: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(payload, 1)
}

/// Decodes a (decompressed) payload into a message.
///
/// # Errors
/// [`MessageError`] if the payload is not one well-formed message.
pub fn decode_payload(payload: &[u8]) -> Result<Message, MessageError> {
    let (&kind, rest) = payload.split_first().ok_or(MessageError::Empty)?;
    let kind = match kind {
        1 => MessageKind::Request,
        2 => MessageKind::Reply,
        3 => MessageKind::Exception,
        other => return Err(MessageError::BadKind(other)),
    };
    let value = super::decode(rest)?;
    let shape = |v: &Value| MessageError::BadShape(truncate(v.to_string()));
    let Value::Tuple(mut parts) = value else {
        return Err(shape(&value));
    };
    if parts.len() != 2 {
        return Err(shape(&Value::Tuple(parts)));
    }
    let body = parts.pop().unwrap_or(Value::None);
    let seq = match parts.pop() {
        Some(Value::Int(seq)) if seq >= 0 => seq as u64,
        Some(other) => return Err(shape(&other)),
        None => return Err(MessageError::Empty),
    };
    Ok(Message { kind, seq, body })
}

fn truncate(mut s: String) -> String {
    const MAX: usize = 200;
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Appends a message's payload (type byte + brine `(seq, body)`) to `dst`.
///
/// # Errors
/// [`BrineError`] if the body cannot be encoded.
pub fn encode_payload(message: &Message, dst: &mut Vec<u8>) -> Result<(), BrineError> {
    dst.push(message.kind as u8);
    // The 2-tuple tag, then seq and body: the same bytes as encoding `Tuple([seq, body])`
    // without building it.
    dst.push(0x11);
    match i64::try_from(message.seq) {
        Ok(seq) => super::encode(&Value::Int(seq), dst)?,
        Err(_) => super::encode(&Value::BigInt(message.seq.to_string()), dst)?,
    }
    super::encode(&message.body, dst)
}

/// Appends a complete uncompressed frame holding `message` to `dst`.
///
/// # Errors
/// [`MessageError::TooLarge`] if the payload exceeds `max_payload` bytes, or a brine error; `dst`
/// is then left as it was.
pub fn encode_frame(
    message: &Message,
    max_payload: usize,
    dst: &mut Vec<u8>,
) -> Result<(), MessageError> {
    let start = dst.len();
    dst.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = encode_payload(message, dst) {
        dst.truncate(start);
        return Err(e.into());
    }
    let size = dst.len() - start - FRAME_HEADER_LEN;
    let len = match u32::try_from(size) {
        Ok(len) if size <= max_payload => len,
        _ => {
            dst.truncate(start);
            return Err(MessageError::TooLarge {
                size,
                max: max_payload,
            });
        }
    };
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
    dst.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    }

    #[test]
    fn first_client_frame_round_trips() -> Result<(), MessageError> {
        // Trace 10.1 #1: GETROOT, seq 0, args (LABEL_VALUE, ()).
        let frame = unhex("000000080001115011531151020a");
        let header = parse_header(&[frame[0], frame[1], frame[2], frame[3], frame[4]]);
        assert_eq!(
            header,
            FrameHeader {
                len: 8,
                compressed: false
            }
        );
        let message = decode_payload(&frame[5..5 + header.len])?;
        assert_eq!(message.seq, 0);
        let (handler, args) = message.request_parts().ok_or(MessageError::Empty)?;
        assert_eq!(handler, handler::GETROOT);
        assert_eq!(args, &Value::tuple([Value::Int(1), Value::tuple([])]));
        let mut out = Vec::new();
        encode_frame(&message, 1 << 20, &mut out)?;
        assert_eq!(out, frame);
        Ok(())
    }

    #[test]
    fn compressed_reply_inflates() -> Result<(), MessageError> {
        // Trace 10.2 #40: the reply to eval("'a'*5000"), zlib-compressed.
        let frame = unhex(
            "0000003c017801edd0310d00200c00b0858b6f595086048299c946055f2ba1a36eed9911ab0f060c183060c0800103060c183060c0800103060c7c1f7864af687c0a",
        );
        let header = parse_header(&[frame[0], frame[1], frame[2], frame[3], frame[4]]);
        assert!(header.compressed);
        let payload = inflate(&frame[5..5 + header.len], 1 << 20)?;
        let message = decode_payload(&payload)?;
        assert_eq!(message.kind, MessageKind::Reply);
        assert_eq!(message.seq, 19);
        assert_eq!(
            message.body,
            Value::tuple([Value::Int(1), Value::Str("a".repeat(5000))])
        );
        assert_eq!(
            inflate(&frame[5..5 + header.len], 100),
            Err(MessageError::InflatedTooLarge { limit: 100 })
        );
        assert!(matches!(
            inflate(b"not zlib", 100),
            Err(MessageError::Inflate(_))
        ));
        assert_eq!(inflate(&deflate(&payload), 1 << 20)?, payload);
        Ok(())
    }

    #[test]
    fn bad_messages_are_errors() {
        assert_eq!(decode_payload(&[]), Err(MessageError::Empty));
        assert_eq!(decode_payload(&[9, 0]), Err(MessageError::BadKind(9)));
        assert!(matches!(
            decode_payload(&[2, 0x11, 0x49, 0x00]),
            Err(MessageError::BadShape(_))
        ));
        assert!(matches!(
            decode_payload(&[2, 0x51]),
            Err(MessageError::BadShape(_))
        ));
        let mut out = vec![1, 2];
        let message = Message {
            kind: MessageKind::Reply,
            seq: 1,
            body: Value::Bytes(vec![0; 100]),
        };
        assert!(matches!(
            encode_frame(&message, 50, &mut out),
            Err(MessageError::TooLarge { .. })
        ));
        assert_eq!(out, [1, 2]);
    }
}
