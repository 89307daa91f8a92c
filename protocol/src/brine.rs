//! Brine, stock RPyC's serializer for immutable values, and the RPyC message layer on top of it
//! (issue 6: stock Python RPyC clients served by `rpyc-classic`).
//!
//! Brine encodes one value as a tag byte followed by tag-specific data; fixed-width numbers are
//! big-endian, containers list their items in order. [`encode`] produces exactly the bytes
//! `rpyc.core.brine.dump` (rpyc 6.0.x) produces for the same value, and [`decode`] accepts every
//! form `rpyc.core.brine.load` accepts for the types below; `protocol/tests/brine.rs` checks both
//! against vectors made by stock RPyC (`protocol/tests/data/make_brine_vectors.py`).
//!
//! Only immutable values are brine-dumpable: `None`, `bool`, `int`, `float`, `complex`, `bytes`,
//! `str`, `NotImplemented`, `Ellipsis`, and `tuple`/`frozenset`/`slice` of those. Everything else
//! travels by reference; that boxing is RPyC's protocol layer, see [`message`].
//!
//! ```
//! use rpyc_protocol::brine::{self, Value};
//!
//! let value = Value::Tuple(vec![Value::from("x"), Value::Tuple(vec![Value::Int(1), Value::None]), Value::Float(2.0)]);
//! let bytes = brine::to_vec(&value)?;
//! assert_eq!(bytes, [0x12, 0x08, 0x0a, b'x', 0x11, 0x51, 0x00, 0x18, 0x40, 0, 0, 0, 0, 0, 0, 0]);
//! assert_eq!(brine::decode(&bytes)?, value);
//! # Ok::<(), brine::BrineError>(())
//! ```

pub mod message;

use std::fmt;

const TAG_NONE: u8 = 0x00;
const TAG_EMPTY_STR: u8 = 0x01;
const TAG_EMPTY_TUPLE: u8 = 0x02;
const TAG_TRUE: u8 = 0x03;
const TAG_FALSE: u8 = 0x04;
const TAG_NOT_IMPLEMENTED: u8 = 0x05;
const TAG_ELLIPSIS: u8 = 0x06;
const TAG_UNICODE: u8 = 0x08;
const TAG_STR1: u8 = 0x0a;
const TAG_STR4: u8 = 0x0d;
const TAG_STR_L1: u8 = 0x0e;
const TAG_STR_L4: u8 = 0x0f;
const TAG_TUP1: u8 = 0x10;
const TAG_TUP4: u8 = 0x13;
const TAG_TUP_L1: u8 = 0x14;
const TAG_TUP_L4: u8 = 0x15;
const TAG_INT_L1: u8 = 0x16;
const TAG_INT_L4: u8 = 0x17;
const TAG_FLOAT: u8 = 0x18;
const TAG_SLICE: u8 = 0x19;
const TAG_FSET: u8 = 0x1a;
const TAG_COMPLEX: u8 = 0x1b;
/// Tags `0x20..=0xef` are the integers `-48..=159` (tag − 0x50).
const IMM_INT_FIRST: u8 = 0x20;
const IMM_INT_LAST: u8 = 0xef;
const IMM_INT_BIAS: i64 = 0x50;

/// Deepest nesting [`decode`] accepts. Stock RPyC cannot produce deeper values: its recursive
/// dumper hits Python's recursion limit (1000 frames, two per level) first.
pub const MAX_DEPTH: usize = 512;

/// A brine-dumpable value.
///
/// Integers that fit in an `i64` are [`Value::Int`]; larger ones are [`Value::BigInt`] holding
/// their canonical decimal text (as Python's `str(n)` writes it: optional `-`, no leading zeros).
/// `frozenset` members are kept in wire order (Python's hash order; not meaningful).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `NotImplemented`.
    NotImplemented,
    /// `Ellipsis` (`...`).
    Ellipsis,
    /// `bool`.
    Bool(bool),
    /// `int` in the `i64` range.
    Int(i64),
    /// `int` outside the `i64` range, as canonical decimal text.
    BigInt(String),
    /// `float`.
    Float(f64),
    /// `complex`.
    Complex {
        /// Real part.
        re: f64,
        /// Imaginary part.
        im: f64,
    },
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `str`.
    Str(String),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `frozenset`.
    FrozenSet(Vec<Value>),
    /// `slice(start, stop, step)`.
    Slice(Box<[Value; 3]>),
}

impl Value {
    /// The text, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int` in the `i64` range (`bool` is not an `int` here).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items, if this is a `tuple`.
    pub fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The items, if this is a `tuple`, by value.
    pub fn into_tuple(self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// A `tuple` of these items.
    pub fn tuple(items: impl IntoIterator<Item = Value>) -> Value {
        Value::Tuple(items.into_iter().collect())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl fmt::Display for Value {
    /// Python-like rendering, for logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn items(f: &mut fmt::Formatter<'_>, items: &[Value]) -> fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        }
        match self {
            Value::None => f.write_str("None"),
            Value::NotImplemented => f.write_str("NotImplemented"),
            Value::Ellipsis => f.write_str("Ellipsis"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(s) => f.write_str(s),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Complex { re, im } => write!(f, "({re:?}+{im:?}j)"),
            Value::Bytes(b) => write!(f, "b{:?}", String::from_utf8_lossy(b)),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Tuple(t) if t.len() == 1 => write!(f, "({},)", t[0]),
            Value::Tuple(t) => {
                f.write_str("(")?;
                items(f, t)?;
                f.write_str(")")
            }
            Value::FrozenSet(t) => {
                f.write_str("frozenset({")?;
                items(f, t)?;
                f.write_str("})")
            }
            Value::Slice(s) => write!(f, "slice({}, {}, {})", s[0], s[1], s[2]),
        }
    }
}

/// Why brine bytes could not be decoded, or a value encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrineError {
    /// The data ended inside a value.
    #[error("brine data ends early (needed {needed} more bytes at offset {offset})")]
    UnexpectedEnd {
        /// Where the missing data starts.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A tag byte that brine does not define.
    #[error("invalid brine tag 0x{tag:02x} at offset {offset}")]
    InvalidTag {
        /// The byte.
        tag: u8,
        /// Its offset.
        offset: usize,
    },
    /// A `str` whose bytes are not UTF-8, or whose payload is not a bytes value.
    #[error("invalid brine str at offset {offset}: {why}")]
    InvalidStr {
        /// Offset of the `str` tag.
        offset: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// An integer whose text is not a decimal number.
    #[error("invalid brine int at offset {offset}")]
    InvalidInt {
        /// Offset of the integer's tag.
        offset: usize,
    },
    /// A `slice` or `frozenset` whose payload is not a tuple of the right shape.
    #[error("invalid brine {what} at offset {offset}")]
    InvalidContainer {
        /// `"slice"` or `"frozenset"`.
        what: &'static str,
        /// Offset of its tag.
        offset: usize,
    },
    /// Containers nested deeper than [`MAX_DEPTH`].
    #[error("brine value nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Bytes were left after the value.
    #[error("{extra} trailing bytes after a {used}-byte brine value")]
    TrailingBytes {
        /// Bytes the value used.
        used: usize,
        /// Bytes left after it.
        extra: usize,
    },
    /// A value too long for brine's 32-bit lengths, or a `BigInt` that is not canonical decimal.
    #[error("cannot encode as brine: {0}")]
    Unencodable(&'static str),
}

/// Appends the brine encoding of `value` to `dst`.
///
/// # Errors
/// [`BrineError::Unencodable`] for a string, bytes or tuple longer than `u32::MAX`, or a
/// [`Value::BigInt`] that is not decimal text; `dst` may then hold part of the encoding.
pub fn encode(value: &Value, dst: &mut Vec<u8>) -> Result<(), BrineError> {
    match value {
        Value::None => dst.push(TAG_NONE),
        Value::NotImplemented => dst.push(TAG_NOT_IMPLEMENTED),
        Value::Ellipsis => dst.push(TAG_ELLIPSIS),
        Value::Bool(true) => dst.push(TAG_TRUE),
        Value::Bool(false) => dst.push(TAG_FALSE),
        Value::Int(i) => encode_int(*i, dst),
        Value::BigInt(text) => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || (digits.len() > 1 && digits.starts_with('0'))
            {
                return Err(BrineError::Unencodable(
                    "BigInt is not canonical decimal text",
                ));
            }
            match text.parse::<i64>() {
                // Python has one int type: a small value gets the small encodings.
                Ok(i) => encode_int(i, dst),
                Err(_) => encode_int_text(text.as_bytes(), dst)?,
            }
        }
        Value::Float(x) => {
            dst.push(TAG_FLOAT);
            dst.extend_from_slice(&x.to_be_bytes());
        }
        Value::Complex { re, im } => {
            dst.push(TAG_COMPLEX);
            dst.extend_from_slice(&re.to_be_bytes());
            dst.extend_from_slice(&im.to_be_bytes());
        }
        Value::Bytes(b) => encode_bytes(b, dst)?,
        Value::Str(s) => {
            dst.push(TAG_UNICODE);
            encode_bytes(s.as_bytes(), dst)?;
        }
        Value::Tuple(items) => encode_tuple(items, dst)?,
        Value::FrozenSet(items) => {
            dst.push(TAG_FSET);
            encode_tuple(items, dst)?;
        }
        Value::Slice(parts) => {
            dst.push(TAG_SLICE);
            encode_tuple(parts.as_slice(), dst)?;
        }
    }
    Ok(())
}

/// The brine encoding of `value`.
///
/// # Errors
/// As [`encode`].
pub fn to_vec(value: &Value) -> Result<Vec<u8>, BrineError> {
    let mut out = Vec::new();
    encode(value, &mut out)?;
    Ok(out)
}

fn encode_int(i: i64, dst: &mut Vec<u8>) {
    if (-48..=159).contains(&i) {
        // In range, so the sum is 0x20..=0xef.
        dst.push((i + IMM_INT_BIAS) as u8);
    } else {
        let text = i.to_string();
        // An i64 has at most 20 characters, so INT_L1 always fits.
        dst.push(TAG_INT_L1);
        dst.push(text.len() as u8);
        dst.extend_from_slice(text.as_bytes());
    }
}

fn encode_int_text(text: &[u8], dst: &mut Vec<u8>) -> Result<(), BrineError> {
    // A canonical big integer is never in the immediate range, so it always goes as text
    // (Python would only use an immediate for -48..=159).
    if text.len() < 256 {
        dst.push(TAG_INT_L1);
        dst.push(text.len() as u8);
    } else {
        dst.push(TAG_INT_L4);
        dst.extend_from_slice(&len32(text.len())?.to_be_bytes());
    }
    dst.extend_from_slice(text);
    Ok(())
}

fn len32(len: usize) -> Result<u32, BrineError> {
    u32::try_from(len).map_err(|_| BrineError::Unencodable("longer than 2^32-1"))
}

/// The tag and length of a string or tuple: `[empty, one, l1, l4]` are its tags (the one- to
/// four-item tags are consecutive from `one`).
fn encode_header(len: usize, tags: [u8; 4], dst: &mut Vec<u8>) -> Result<(), BrineError> {
    let [empty, one, l1, l4] = tags;
    match len {
        0 => dst.push(empty),
        n @ 1..=4 => dst.push(one + (n as u8 - 1)),
        n @ 5..=255 => {
            dst.push(l1);
            dst.push(n as u8);
        }
        n => {
            dst.push(l4);
            dst.extend_from_slice(&len32(n)?.to_be_bytes());
        }
    }
    Ok(())
}

fn encode_bytes(b: &[u8], dst: &mut Vec<u8>) -> Result<(), BrineError> {
    encode_header(
        b.len(),
        [TAG_EMPTY_STR, TAG_STR1, TAG_STR_L1, TAG_STR_L4],
        dst,
    )?;
    dst.extend_from_slice(b);
    Ok(())
}

fn encode_tuple(items: &[Value], dst: &mut Vec<u8>) -> Result<(), BrineError> {
    encode_header(
        items.len(),
        [TAG_EMPTY_TUPLE, TAG_TUP1, TAG_TUP_L1, TAG_TUP_L4],
        dst,
    )?;
    for item in items {
        encode(item, dst)?;
    }
    Ok(())
}

/// Decodes exactly one brine value that fills `data`.
///
/// # Errors
/// [`BrineError`] if the data is not one well-formed value (including trailing bytes).
pub fn decode(data: &[u8]) -> Result<Value, BrineError> {
    let (value, used) = decode_prefix(data)?;
    if used != data.len() {
        return Err(BrineError::TrailingBytes {
            used,
            extra: data.len() - used,
        });
    }
    Ok(value)
}

/// Decodes one brine value from the start of `data`; returns it and the bytes it used.
///
/// # Errors
/// [`BrineError`] if `data` does not start with a well-formed value.
pub fn decode_prefix(data: &[u8]) -> Result<(Value, usize), BrineError> {
    let mut reader = Reader { data, pos: 0 };
    let value = reader.value()?;
    Ok((value, reader.pos))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BrineError> {
        let rest = &self.data[self.pos..];
        if rest.len() < n {
            return Err(BrineError::UnexpectedEnd {
                offset: self.pos,
                needed: n - rest.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn byte(&mut self) -> Result<u8, BrineError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, BrineError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn f64(&mut self) -> Result<f64, BrineError> {
        let b = self.take(8)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        Ok(f64::from_be_bytes(raw))
    }

    /// The payload of a bytes tag, if `tag` is one.
    fn bytes_payload(&mut self, tag: u8) -> Result<Option<&'a [u8]>, BrineError> {
        Ok(Some(match tag {
            TAG_EMPTY_STR => &[],
            TAG_STR1..=TAG_STR4 => self.take(usize::from(tag - TAG_STR1) + 1)?,
            TAG_STR_L1 => {
                let n = usize::from(self.byte()?);
                self.take(n)?
            }
            TAG_STR_L4 => {
                let n = self.u32()?;
                self.take(n)?
            }
            _ => return Ok(None),
        }))
    }

    /// Reads values without recursion (hostile input may nest as deep as it likes; we stop at
    /// [`MAX_DEPTH`] open containers).
    fn value(&mut self) -> Result<Value, BrineError> {
        enum Open {
            Tuple { items: Vec<Value>, left: usize },
            Slice { offset: usize },
            FrozenSet { offset: usize },
        }
        let mut stack: Vec<Open> = Vec::new();
        loop {
            if stack.len() > MAX_DEPTH {
                return Err(BrineError::TooDeep);
            }
            let offset = self.pos;
            let tag = self.byte()?;
            let mut done = if let Some(b) = self.bytes_payload(tag)? {
                Value::Bytes(b.to_vec())
            } else {
                let tuple_len = match tag {
                    TAG_TUP1..=TAG_TUP4 => Some(usize::from(tag - TAG_TUP1) + 1),
                    TAG_TUP_L1 => Some(usize::from(self.byte()?)),
                    TAG_TUP_L4 => Some(self.u32()?),
                    _ => None,
                };
                match (tuple_len, tag) {
                    (Some(0), _) => Value::Tuple(Vec::new()),
                    (Some(n), _) => {
                        // Every item takes at least one byte: never reserve more than the data
                        // can hold.
                        let items = Vec::with_capacity(n.min(self.data.len() - self.pos));
                        stack.push(Open::Tuple { items, left: n });
                        continue;
                    }
                    (None, TAG_SLICE) => {
                        stack.push(Open::Slice { offset });
                        continue;
                    }
                    (None, TAG_FSET) => {
                        stack.push(Open::FrozenSet { offset });
                        continue;
                    }
                    (None, _) => self.scalar(tag, offset)?,
                }
            };
            // Close every container this value completes.
            loop {
                match stack.last_mut() {
                    None => return Ok(done),
                    Some(Open::Tuple { items, left }) => {
                        items.push(done);
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        let items = std::mem::take(items);
                        stack.pop();
                        done = Value::Tuple(items);
                    }
                    Some(&mut Open::Slice { offset }) => {
                        stack.pop();
                        let bad = BrineError::InvalidContainer {
                            what: "slice",
                            offset,
                        };
                        let Value::Tuple(parts) = done else {
                            return Err(bad);
                        };
                        let parts: [Value; 3] = parts.try_into().map_err(|_| bad)?;
                        done = Value::Slice(Box::new(parts));
                    }
                    Some(&mut Open::FrozenSet { offset }) => {
                        stack.pop();
                        let Value::Tuple(items) = done else {
                            return Err(BrineError::InvalidContainer {
                                what: "frozenset",
                                offset,
                            });
                        };
                        done = Value::FrozenSet(items);
                    }
                }
            }
        }
    }

    /// A value that is not a container or bytes.
    fn scalar(&mut self, tag: u8, offset: usize) -> Result<Value, BrineError> {
        Ok(match tag {
            TAG_NONE => Value::None,
            TAG_EMPTY_TUPLE => Value::Tuple(Vec::new()),
            TAG_TRUE => Value::Bool(true),
            TAG_FALSE => Value::Bool(false),
            TAG_NOT_IMPLEMENTED => Value::NotImplemented,
            TAG_ELLIPSIS => Value::Ellipsis,
            TAG_UNICODE => {
                let inner = self.byte()?;
                let Some(b) = self.bytes_payload(inner)? else {
                    return Err(BrineError::InvalidStr {
                        offset,
                        why: "payload is not a bytes value",
                    });
                };
                let s = std::str::from_utf8(b).map_err(|_| BrineError::InvalidStr {
                    offset,
                    why: "not UTF-8",
                })?;
                Value::Str(s.to_owned())
            }
            TAG_INT_L1 => {
                let n = usize::from(self.byte()?);
                parse_int(self.take(n)?, offset)?
            }
            TAG_INT_L4 => {
                let n = self.u32()?;
                parse_int(self.take(n)?, offset)?
            }
            TAG_FLOAT => Value::Float(self.f64()?),
            TAG_COMPLEX => {
                let re = self.f64()?;
                let im = self.f64()?;
                Value::Complex { re, im }
            }
            IMM_INT_FIRST..=IMM_INT_LAST => Value::Int(i64::from(tag) - IMM_INT_BIAS),
            _ => return Err(BrineError::InvalidTag { tag, offset }),
        })
    }
}

/// Parses decimal text as Python's `int(bytes)` does for what brine senders write: optional
/// surrounding ASCII whitespace, an optional sign, and digits.
fn parse_int(text: &[u8], offset: usize) -> Result<Value, BrineError> {
    let bad = || BrineError::InvalidInt { offset };
    let text = text.trim_ascii();
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let digits = match digits.iter().position(|&d| d != b'0') {
        Some(first) => &digits[first..],
        None => return Ok(Value::Int(0)),
    };
    // Digits are ASCII, so this is valid UTF-8.
    let digits = std::str::from_utf8(digits).map_err(|_| bad())?;
    let canonical = if negative {
        format!("-{digits}")
    } else {
        digits.to_owned()
    };
    Ok(match canonical.parse::<i64>() {
        Ok(i) => Value::Int(i),
        Err(_) => Value::BigInt(canonical),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(value: &Value) -> String {
        to_vec(value)
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn documented_examples() {
        assert_eq!(hex(&Value::Int(-49)), "16032d3439");
        assert_eq!(hex(&Value::Int(160)), "1603313630");
        assert_eq!(hex(&Value::Int(-48)), "20");
        assert_eq!(hex(&Value::Int(159)), "ef");
        assert_eq!(hex(&Value::from("héllo")), "080e0668c3a96c6c6f");
        assert_eq!(
            hex(&Value::Slice(Box::new([
                Value::Int(1),
                Value::None,
                Value::Int(2)
            ]))),
            "1912510052"
        );
    }

    #[test]
    fn lenient_ints_decode_to_canonical_values() -> Result<(), BrineError> {
        assert_eq!(decode(b"\x16\x03+07")?, Value::Int(7));
        assert_eq!(decode(b"\x16\x02-0")?, Value::Int(0));
        assert_eq!(decode(b"\x16\x04 12 ")?, Value::Int(12));
        assert_eq!(
            decode(b"\x16\x1700009223372036854775808")?,
            Value::BigInt("9223372036854775808".into())
        );
        assert!(decode(b"\x16\x02--").is_err());
        assert!(decode(b"\x16\x00").is_err());
        Ok(())
    }

    #[test]
    fn hostile_input_is_refused_cleanly() {
        assert!(matches!(
            decode(&[0x15, 0xff, 0xff, 0xff, 0xff]),
            Err(BrineError::UnexpectedEnd { .. })
        ));
        assert!(matches!(
            decode(&[0x0f, 0xff, 0xff, 0xff, 0xff, 1]),
            Err(BrineError::UnexpectedEnd { .. })
        ));
        for tag in [0x07, 0x09, 0x1c, 0x1f, 0xf0, 0xff] {
            assert!(matches!(decode(&[tag]), Err(BrineError::InvalidTag { .. })));
        }
        let deep = vec![0x10; MAX_DEPTH + 10];
        assert_eq!(decode(&deep), Err(BrineError::TooDeep));
        // As deep as stock can send is fine (and dropping it does not overflow the stack).
        let mut nested = vec![0x10; MAX_DEPTH - 1];
        nested.push(0x00);
        let value = decode(&nested);
        assert!(value.is_ok());
        assert_eq!(to_vec(&value.unwrap_or(Value::None)).ok(), Some(nested));
        assert!(matches!(
            decode(&[0x08, 0x0a, 0xff]),
            Err(BrineError::InvalidStr { .. })
        ));
        assert!(matches!(
            decode(&[0x08, 0x10, 0x00]),
            Err(BrineError::InvalidStr { .. })
        ));
        assert!(matches!(
            decode(&[0x19, 0x11, 0x00, 0x00]),
            Err(BrineError::InvalidContainer { .. })
        ));
        assert!(matches!(
            decode(&[0x00, 0x00]),
            Err(BrineError::TrailingBytes { used: 1, extra: 1 })
        ));
    }

    #[test]
    fn big_ints_must_be_decimal_to_encode() {
        assert!(to_vec(&Value::BigInt("12a".into())).is_err());
        assert!(to_vec(&Value::BigInt("-".into())).is_err());
    }
}
