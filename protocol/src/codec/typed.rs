//! Reading a response's result straight into the caller's type.
//!
//! [`decode`](super::decode) builds a [`Value`](crate::Value) tree, and
//! [`Value::deserialize_into`](crate::Value::deserialize_into) then walks it into the caller's
//! type: for a list of 100,000 ints that is 100,000 `Value`s allocated and dropped on the way.
//! [`decode_response_as`] reads the encoded value and drives the target type's `Deserialize`
//! from it directly, with the same conversions and the same nesting limit as the `Value` route.
//! A result holding a remote reference, or a target type that asks for a `Value`, is not read
//! this way ([`TypedReply::NeedsValue`]): the caller then decodes the `Value` as before.

use std::fmt;

use serde::de::value::SeqDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};
use serde::forward_to_deserialize_any;

use crate::error::ProtocolError;
use crate::message::{RequestId, ServerError};
use crate::value::{Nested, asks_for_value, visit_big_int};

/// What [`decode_response_as`] found in a response.
#[derive(Debug)]
pub enum TypedReply<T> {
    /// The result, converted into the caller's type.
    Ok(T),
    /// The server's error.
    Err(ServerError),
    /// The result holds a remote reference, the type asks for a [`Value`](crate::Value), or the
    /// result does not fit the type: decode it with [`decode_shared`](super::decode_shared) and
    /// convert the `Value`, which also words the error.
    NeedsValue,
}

/// The id of a response, read from the start of its payload without decoding the rest; `None`
/// if the payload does not start like a `Message::Response`.
pub fn response_id(payload: &[u8]) -> Option<RequestId> {
    let mut r = Reader::new(payload);
    if r.varint().ok()? != u64::from(super::RESPONSE_VARIANT) {
        return None;
    }
    r.varint().ok().map(RequestId)
}

/// Decodes a `Message::Response` payload, converting a successful result straight into `T`.
///
/// # Errors
/// [`ProtocolError`] if the payload is not a well-formed response.
pub fn decode_response_as<T: DeserializeOwned>(
    payload: &[u8],
) -> Result<TypedReply<T>, ProtocolError> {
    let mut r = Reader::new(payload);
    if r.varint().map_err(malformed)? != u64::from(super::RESPONSE_VARIANT) {
        return Err(malformed(Error::Malformed("not a response".into())));
    }
    r.varint().map_err(malformed)?; // the id
    match r.varint().map_err(malformed)? {
        0 => {}
        1 => {
            let (error, used): (ServerError, usize) =
                bincode::serde::decode_from_slice(r.rest(), super::config())?;
            if used != r.rest().len() {
                return Err(ProtocolError::TrailingBytes {
                    used: r.pos + used,
                    extra: r.rest().len() - used,
                });
            }
            return Ok(TypedReply::Err(error));
        }
        other => {
            return Err(malformed(Error::Malformed(format!(
                "result variant {other}"
            ))));
        }
    }
    match T::deserialize(ValueDe { r: &mut r }) {
        Ok(value) if r.rest().is_empty() => Ok(TypedReply::Ok(value)),
        Ok(_) => Err(ProtocolError::TrailingBytes {
            used: r.pos,
            extra: r.rest().len(),
        }),
        Err(Error::Malformed(why)) => Err(malformed(Error::Malformed(why))),
        // A value that does not fit may have stopped the reading before its end: the `Value`
        // route reads it all, tells a malformed payload from a mismatch, and words the error.
        Err(Error::Convert(_) | Error::NeedsValue) => Ok(TypedReply::NeedsValue),
    }
}

fn malformed(e: Error) -> ProtocolError {
    ProtocolError::Decode(bincode::error::DecodeError::OtherString(e.to_string()))
}

/// Why the typed route stopped.
#[derive(Debug)]
enum Error {
    /// The bytes are not a valid encoding.
    Malformed(String),
    /// The value does not fit the type (raised by the type's `Deserialize`, or by us).
    Convert(String),
    /// Only the `Value` route can go on.
    NeedsValue,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(why) => write!(f, "malformed result: {why}"),
            Error::Convert(why) => f.write_str(why),
            Error::NeedsValue => f.write_str("the result needs a Value"),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Convert(msg.to_string())
    }
}

/// Reads bincode's standard encoding (little-endian, variable-length integers).
struct Reader<'de> {
    buf: &'de [u8],
    pos: usize,
}

impl<'de> Reader<'de> {
    fn new(buf: &'de [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn rest(&self) -> &'de [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8], Error> {
        let rest = self.rest();
        if n > rest.len() {
            return Err(Error::Malformed(format!(
                "needs {n} bytes at offset {}, {} left",
                self.pos,
                rest.len()
            )));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// An unsigned integer: one byte below 251, else a marker and 2, 4 or 8 bytes (16-byte
    /// values never fit what we read).
    fn varint(&mut self) -> Result<u64, Error> {
        let [first] = self.array::<1>()?;
        Ok(match first {
            0..=250 => u64::from(first),
            251 => u64::from(u16::from_le_bytes(self.array()?)),
            252 => u64::from(u32::from_le_bytes(self.array()?)),
            253 => u64::from_le_bytes(self.array()?),
            other => {
                return Err(Error::Malformed(format!(
                    "integer marker {other} at offset {}",
                    self.pos - 1
                )));
            }
        })
    }

    fn signed(&mut self) -> Result<i64, Error> {
        let n = self.varint()?;
        // Zigzag: 0, -1, 1, -2, … are 0, 1, 2, 3, …
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    /// A length, checked against the bytes left (every item takes at least one byte).
    fn len(&mut self) -> Result<usize, Error> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.rest().len() => Ok(n),
            _ => Err(Error::Malformed(format!(
                "length {n} at offset {} exceeds the {} bytes left",
                self.pos,
                self.rest().len()
            ))),
        }
    }

    fn bytes(&mut self) -> Result<&'de [u8], Error> {
        let n = self.len()?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'de str, Error> {
        let at = self.pos;
        std::str::from_utf8(self.bytes()?)
            .map_err(|e| Error::Malformed(format!("string at offset {at}: {e}")))
    }

    fn f64(&mut self) -> Result<f64, Error> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// The variant index of the next [`Value`](crate::Value).
    fn tag(&mut self) -> Result<Tag, Error> {
        let at = self.pos;
        match self.varint()? {
            n @ 0..=13 => Ok(Tag(n as u8)),
            n => Err(Error::Malformed(format!(
                "value variant {n} at offset {at}"
            ))),
        }
    }
}

/// A variant of [`Value`](crate::Value), by index.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Tag(u8);

impl Tag {
    const NONE: Tag = Tag(0);
    const STR: Tag = Tag(6);
    const DICT: Tag = Tag(10);
    const REF: Tag = Tag(13);

    /// What a mismatch error names for a value of this variant.
    fn unexpected(self) -> Unexpected<'static> {
        Unexpected::Other(match self.0 {
            0 => "None",
            1 => "boolean",
            2 => "integer",
            3 => "integer out of range",
            4 => "floating point",
            5 => "complex number",
            6 => "string",
            7 => "byte array",
            8 => "tuple",
            9 => "sequence",
            10 => "map",
            11 => "set",
            12 => "frozenset",
            _ => "remote object reference",
        })
    }
}

/// One encoded [`Value`](crate::Value), as a `Deserializer` for the caller's type.
struct ValueDe<'a, 'de> {
    r: &'a mut Reader<'de>,
}

impl<'de> de::Deserializer<'de> for ValueDe<'_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let tag = self.r.tag()?;
        visit(self.r, tag, visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.r.peek() == Some(Tag::NONE.0) {
            self.r.pos += 1;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if asks_for_value(name, variants) {
            return Err(Error::NeedsValue);
        }
        // A unit variant is a string; a variant with data is a one-entry dict
        // `{"Variant": data}`, as `Value::deserialize_into` reads them.
        match self.r.tag()? {
            Tag::STR => visitor.visit_enum(self.r.str()?.into_deserializer()),
            Tag::DICT => {
                let n = self.r.len()?;
                if n != 1 {
                    return Err(de::Error::invalid_type(Tag::DICT.unexpected(), &visitor));
                }
                let key = self.r.tag()?;
                if key != Tag::STR {
                    skip_after_tag(self.r, key)?;
                    return Err(de::Error::invalid_type(key.unexpected(), &"variant name"));
                }
                let variant = self.r.str()?;
                visitor.visit_enum(EnumDe { r: self.r, variant })
            }
            Tag::REF => Err(Error::NeedsValue),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.r.tag()? {
            Tag::NONE => visitor.visit_unit(),
            Tag::REF => Err(Error::NeedsValue),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// Visits the value of variant `tag`, whose payload comes next in `r`.
fn visit<'de, V: Visitor<'de>>(
    r: &mut Reader<'de>,
    tag: Tag,
    visitor: V,
) -> Result<V::Value, Error> {
    match tag.0 {
        0 => visitor.visit_unit(),
        1 => match r.array::<1>()? {
            [0] => visitor.visit_bool(false),
            [1] => visitor.visit_bool(true),
            [b] => Err(Error::Malformed(format!("bool byte {b}"))),
        },
        2 => visitor.visit_i64(r.signed()?),
        3 => visit_big_int(r.str()?, visitor),
        4 => visitor.visit_f64(r.f64()?),
        5 => {
            let (re, im) = (r.f64()?, r.f64()?);
            let mut seq = SeqDeserializer::<_, Error>::new([re, im].into_iter());
            let out = visitor.visit_seq(&mut seq)?;
            seq.end()?;
            Ok(out)
        }
        6 => visitor.visit_borrowed_str(r.str()?),
        7 => visitor.visit_borrowed_bytes(r.bytes()?),
        8 | 9 | 11 | 12 => {
            let _level = Nested::enter::<Error>()?;
            let n = r.len()?;
            let mut seq = Items { r, left: n };
            let out = visitor.visit_seq(&mut seq)?;
            match seq.left {
                0 => Ok(out),
                left => Err(de::Error::invalid_length(n, &ExpectedItems(n - left))),
            }
        }
        10 => {
            let _level = Nested::enter::<Error>()?;
            let n = r.len()?;
            let mut map = Entries { r, left: n };
            let out = visitor.visit_map(&mut map)?;
            match map.left {
                0 => Ok(out),
                left => Err(de::Error::invalid_length(left, &"fewer entries")),
            }
        }
        _ => Err(Error::NeedsValue),
    }
}

/// Reads past the payload of a value of variant `tag`.
fn skip_after_tag(r: &mut Reader<'_>, tag: Tag) -> Result<(), Error> {
    visit(r, tag, de::IgnoredAny).map(|_| ())
}

/// "N elements in sequence", as serde's `SeqDeserializer::end` words it.
struct ExpectedItems(usize);

impl de::Expected for ExpectedItems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 1 {
            f.write_str("1 element in sequence")
        } else {
            write!(f, "{} elements in sequence", self.0)
        }
    }
}

struct Items<'a, 'de> {
    r: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(ValueDe { r: self.r }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

struct Entries<'a, 'de> {
    r: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(ValueDe { r: self.r }).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(ValueDe { r: self.r })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// A variant with data: its name, and its payload next in the reader.
struct EnumDe<'a, 'de> {
    r: &'a mut Reader<'de>,
    variant: &'de str,
}

impl<'a, 'de> EnumAccess<'de> for EnumDe<'a, 'de> {
    type Error = Error;
    type Variant = ValueDe<'a, 'de>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, ValueDe<'a, 'de>), Error> {
        let name = seed.deserialize(self.variant.into_deserializer())?;
        Ok((name, ValueDe { r: self.r }))
    }
}

impl<'de> VariantAccess<'de> for ValueDe<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.r.tag()? {
            Tag::NONE => Ok(()),
            Tag::REF => Err(Error::NeedsValue),
            other => {
                skip_after_tag(self.r, other)?;
                Err(de::Error::invalid_type(other.unexpected(), &"unit variant"))
            }
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}
