//! Values that travel by copy, and references for everything else.

mod de;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bytes::Bytes;
use serde::Serialize;

use crate::netref::NetRef;

pub use de::FromValueError;
pub(crate) use de::{Nested, SharedSource, asks_for_value, visit_big_int};

/// A Python value copied across the wire, or a reference to an object that stays remote.
///
/// Only the types Python users think of as plain data travel by value; anything else is a
/// [`Value::Ref`]. Integers that do not fit in `i64` travel as [`Value::BigInt`] (decimal text),
/// so no Python `int` is ever truncated.
///
/// A `Value` can be turned into any `serde::Deserialize` type with [`Value::deserialize_into`];
/// conversions from Rust types (for arguments) are `From` impls.
// `Deserialize` is written by hand (in `de.rs`): it reads what the derived one would, with a
// nesting limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Value {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` that fits in an `i64`.
    Int(i64),
    /// `int` outside the `i64` range, as decimal text (`-` sign, digits).
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
    /// `str`.
    Str(String),
    /// `bytes`. Decoded from a frame, a large byte string shares the frame's memory instead
    /// of being copied out of it.
    Bytes(#[serde(serialize_with = "serialize_bytes")] Bytes),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `list`.
    List(Vec<Value>),
    /// `dict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// `set`.
    Set(Vec<Value>),
    /// `frozenset`.
    FrozenSet(Vec<Value>),
    /// Any other object: a reference to it in its owner's object table.
    Ref(NetRef),
}

impl Value {
    /// Python's name for the type of this value (`int`, `str`, `dict`, …; for a reference, the
    /// referenced object's type).
    pub fn type_name(&self) -> &str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Complex { .. } => "complex",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
            Value::Ref(r) => &r.type_name,
        }
    }

    /// A `bytes` value (a `Vec<u8>` converts to a `list` of ints, as it would in Python). A
    /// `Vec<u8>` or `Bytes` is taken over without a copy.
    pub fn bytes(data: impl Into<Bytes>) -> Self {
        Value::Bytes(data.into())
    }

    /// Converts this value into a Rust type through serde.
    ///
    /// # Errors
    /// When the value does not fit the type; the error names both (for example
    /// `invalid type: string "abc", expected i64`).
    pub fn deserialize_into<T: serde::de::DeserializeOwned>(self) -> Result<T, FromValueError> {
        T::deserialize(self)
    }

    /// The reference, if this value is one.
    pub fn as_ref(&self) -> Option<&NetRef> {
        match self {
            Value::Ref(r) => Some(r),
            _ => None,
        }
    }
}

/// `Value::Bytes` as serde bytes (what `serde_bytes` writes for a `Vec<u8>`).
///
/// While [`codec::encode_frame_shared`](crate::codec::encode_frame_shared) runs on this thread,
/// a large byte string's `Bytes` is offered to it (see [`Sharing`]) for as long as it is being
/// written, so that the encoder can keep a handle on it rather than copy it.
fn serialize_bytes<S: serde::Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    let mode = SHARING.try_with(Cell::get).unwrap_or(Mode::Off);
    if bytes.len() < crate::codec::SHARE_MIN_BYTES || mode == Mode::Off {
        return serializer.serialize_bytes(bytes);
    }
    // A blob is written as an empty byte string (whose data pointer identifies it) and sent
    // after the message.
    let blob = mode == Mode::Blobs && bytes.len() >= crate::codec::BLOB_MIN_BYTES;
    let _ = OFFERED.try_with(|offered| offered.set(Some(bytes.clone())));
    let written = serializer.serialize_bytes(if blob { &bytes[..0] } else { bytes });
    // Not taken (declined, or the frame is past its limit): the slot is left empty.
    let left = OFFERED.try_with(Cell::take).ok().flatten();
    if blob && left.is_some() && written.is_ok() {
        // Never the case with the encoder that set the mode; refuse rather than lose the data.
        return Err(serde::ser::Error::custom(
            "a large byte string was left out of the message but not taken as a blob",
        ));
    }
    written
}

/// What a sharing encode does with large byte strings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No sharing encode runs.
    Off,
    /// Large byte strings are offered to be written from their own memory.
    Share,
    /// So are they, and the largest are sent as blobs.
    Blobs,
}

thread_local! {
    /// Whether a sharing encode runs on this thread, and of which kind.
    static SHARING: Cell<Mode> = const { Cell::new(Mode::Off) };
    /// The byte string being serialized right now, while a sharing encode runs.
    static OFFERED: Cell<Option<Bytes>> = const { Cell::new(None) };
}

/// A sharing encode on this thread, for as long as it lives: large `Value::Bytes` serialized
/// meanwhile are offered, one at a time, to [`Sharing::take_offer`] (or, with blobs, the
/// largest to [`Sharing::take_blob`]). Dropping it (also on an error or a panic) ends it and
/// leaves the slot empty.
pub(crate) struct Sharing {
    /// The mode before.
    was: Mode,
}

impl Sharing {
    pub(crate) fn enter(blobs: bool) -> Sharing {
        let mode = if blobs { Mode::Blobs } else { Mode::Share };
        Sharing {
            was: SHARING.try_with(|on| on.replace(mode)).unwrap_or(Mode::Off),
        }
    }

    /// The `Bytes` being serialized, if `contents` (what the encoder was given to write) is
    /// exactly its memory; the offer is withdrawn either way.
    pub(crate) fn take_offer(&self, contents: &[u8]) -> Option<Bytes> {
        let offer = OFFERED.try_with(Cell::take).ok().flatten()?;
        (offer.as_ptr() == contents.as_ptr() && offer.len() == contents.len()).then_some(offer)
    }

    /// The `Bytes` being serialized as a blob, if `contents` (an empty byte string the encoder
    /// was given to write) stands for it; otherwise the slot is left as it was.
    pub(crate) fn take_blob(&self, contents: &[u8]) -> Option<Bytes> {
        OFFERED
            .try_with(|offered| {
                let offer = offered.take()?;
                if contents.is_empty()
                    && offer.len() >= crate::codec::BLOB_MIN_BYTES
                    && offer.as_ptr() == contents.as_ptr()
                {
                    Some(offer)
                } else {
                    offered.set(Some(offer));
                    None
                }
            })
            .ok()
            .flatten()
    }
}

impl Drop for Sharing {
    fn drop(&mut self) {
        let _ = SHARING.try_with(|on| on.set(self.was));
        let _ = OFFERED.try_with(Cell::take);
    }
}

impl fmt::Display for Value {
    /// Formats the value roughly as Python's `repr` would.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn seq(
            f: &mut fmt::Formatter<'_>,
            open: &str,
            items: &[Value],
            close: &str,
        ) -> fmt::Result {
            f.write_str(open)?;
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{v}")?;
            }
            f.write_str(close)
        }
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(s) => f.write_str(s),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Complex { re, im } => write!(f, "({re:?}{im:+?}j)"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "b{:?}", String::from_utf8_lossy(b)),
            Value::Tuple(t) if t.len() == 1 => seq(f, "(", t, ",)"),
            Value::Tuple(t) => seq(f, "(", t, ")"),
            Value::List(l) => seq(f, "[", l, "]"),
            Value::Set(s) => seq(f, "{", s, "}"),
            Value::FrozenSet(s) => seq(f, "frozenset({", s, "})"),
            Value::Dict(d) => {
                f.write_str("{")?;
                for (i, (k, v)) in d.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
            Value::Ref(r) => write!(f, "{r}"),
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

macro_rules! from_wide_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                match i64::try_from(v) {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::BigInt(v.to_string()),
                }
            }
        }
    )*};
}
from_wide_int!(u64, i128, u128, usize, isize);

impl From<()> for Value {
    fn from((): ()) -> Self {
        Value::None
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Float(f64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<char> for Value {
    fn from(v: char) -> Self {
        Value::Str(v.to_string())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Str(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(Bytes::copy_from_slice(v))
    }
}
impl From<serde_bytes::ByteBuf> for Value {
    fn from(v: serde_bytes::ByteBuf) -> Self {
        Value::Bytes(v.into_vec().into())
    }
}
impl From<Bytes> for Value {
    fn from(v: Bytes) -> Self {
        Value::Bytes(v)
    }
}
impl From<NetRef> for Value {
    fn from(v: NetRef) -> Self {
        Value::Ref(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::None, Into::into)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}
impl<K: Into<Value>, V: Into<Value>, S> From<HashMap<K, V, S>> for Value {
    fn from(v: HashMap<K, V, S>) -> Self {
        Value::Dict(v.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}
impl<K: Into<Value>, V: Into<Value>> From<BTreeMap<K, V>> for Value {
    fn from(v: BTreeMap<K, V>) -> Self {
        Value::Dict(v.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

macro_rules! from_tuple {
    ($($name:ident),+) => {
        impl<$($name: Into<Value>),+> From<($($name,)+)> for Value {
            #[allow(non_snake_case)]
            fn from(($($name,)+): ($($name,)+)) -> Self {
                Value::Tuple(vec![$($name.into()),+])
            }
        }
    };
}
from_tuple!(A);
from_tuple!(A, B);
from_tuple!(A, B, C);
from_tuple!(A, B, C, D);
from_tuple!(A, B, C, D, E);
from_tuple!(A, B, C, D, E, F);
