//! `serde::Deserializer` for [`Value`], so a reply converts straight into the caller's type.

use std::fmt;

use std::cell::{Cell, RefCell};

use bytes::Bytes;

use serde::de::value::{SeqDeserializer, StringDeserializer};
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde::forward_to_deserialize_any;

use super::Value;
use crate::codec::SHARE_MIN_BYTES;
use crate::netref::NetRef;

/// A [`Value`] did not fit the Rust type it was converted into.
///
/// The message names both sides, e.g. `invalid type: string "abc", expected i64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromValueError(String);

impl fmt::Display for FromValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FromValueError {}

impl de::Error for FromValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        FromValueError(msg.to_string())
    }
}

impl Value {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::None => Unexpected::Option,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Int(i) => Unexpected::Signed(*i),
            Value::BigInt(_) => Unexpected::Other("integer out of range"),
            Value::Float(x) => Unexpected::Float(*x),
            Value::Complex { .. } => Unexpected::Other("complex number"),
            Value::Str(s) => Unexpected::Str(s),
            Value::Bytes(b) => Unexpected::Bytes(b),
            Value::Tuple(_) => Unexpected::Other("tuple"),
            Value::List(_) => Unexpected::Seq,
            Value::Dict(_) => Unexpected::Map,
            Value::Set(_) => Unexpected::Other("set"),
            Value::FrozenSet(_) => Unexpected::Other("frozenset"),
            Value::Ref(_) => Unexpected::Other("remote object reference"),
        }
    }
}

/// Visits an `int` outside the `i64` range, given as decimal text: non-negative values as `u64`
/// or `u128`, so that unsigned targets accept them, negative ones as `i128`; beyond those, a
/// type error.
pub(crate) fn visit_big_int<'de, V: Visitor<'de>, E: de::Error>(
    s: &str,
    visitor: V,
) -> Result<V::Value, E> {
    if let Ok(u) = s.parse::<u64>() {
        visitor.visit_u64(u)
    } else if let Ok(u) = s.parse::<u128>() {
        visitor.visit_u128(u)
    } else if let Ok(i) = s.parse::<i128>() {
        visitor.visit_i128(i)
    } else {
        Err(E::invalid_type(
            Unexpected::Other("integer out of range"),
            &visitor,
        ))
    }
}

fn visit_seq<'de, V: Visitor<'de>>(
    items: Vec<Value>,
    visitor: V,
) -> Result<V::Value, FromValueError> {
    let mut seq = SeqDeserializer::new(items.into_iter());
    let out = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(out)
}

impl<'de> IntoDeserializer<'de, FromValueError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = FromValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FromValueError> {
        match self {
            Value::None => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::BigInt(ref s) => visit_big_int(s, visitor),
            Value::Float(x) => visitor.visit_f64(x),
            Value::Complex { re, im } => {
                visit_seq(vec![Value::Float(re), Value::Float(im)], visitor)
            }
            Value::Str(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(Vec::from(b)),
            Value::Tuple(items)
            | Value::List(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => visit_seq(items, visitor),
            Value::Dict(entries) => {
                let mut map = DictAccess {
                    entries: entries.into_iter(),
                    value: None,
                };
                let out = visitor.visit_map(&mut map)?;
                match map.entries.len() {
                    0 => Ok(out),
                    n => Err(de::Error::invalid_length(n, &"fewer entries")),
                }
            }
            Value::Ref(ref r) => Err(de::Error::invalid_type(
                Unexpected::Other(&format!("remote object reference of type {}", r.type_name)),
                &visitor,
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FromValueError> {
        match self {
            Value::None => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, FromValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FromValueError> {
        // Asking for a `Value` itself (`eval::<Value>`, `HashMap<String, Value>`, …) hands the
        // value over unchanged: `Value`'s own visitor takes it whole from `HANDOVER` (a list of
        // 100,000 items is not rebuilt item by item); any other visitor reads it through
        // `Identity` as before.
        if asks_for_value(name, variants) {
            let previous = HANDOVER.with(|h| h.replace(Some(self)));
            let result = visitor.visit_enum(Handover);
            HANDOVER.with(|h| h.set(previous));
            return result;
        }
        match self {
            // A unit variant is a string; a variant with data is a one-entry dict
            // `{"Variant": data}` (serde's externally tagged form).
            Value::Str(s) => visitor.visit_enum(s.into_deserializer()),
            Value::Dict(mut entries) if entries.len() == 1 => {
                let (key, value) = entries.remove(0);
                match key {
                    Value::Str(variant) => visitor.visit_enum(EnumValue { variant, value }),
                    other => Err(de::Error::invalid_type(other.unexpected(), &"variant name")),
                }
            }
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FromValueError> {
        match self {
            Value::None => visitor.visit_unit(),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// Containers nested deeper than this are refused when a [`Value`] is deserialized: the
/// decoder recurses once per level, and a small malicious frame could otherwise exhaust the
/// stack of whoever decodes it (a debug build on a 2 MiB stack still has room for this many).
/// The server copies results at most 256 levels deep.
const MAX_NESTING: usize = 300;

thread_local! {
    /// Containers being deserialized on this thread right now.
    static NESTING: Cell<usize> = const { Cell::new(0) };
}

/// One level of nesting, for as long as it lives.
pub(crate) struct Nested;

impl Nested {
    pub(crate) fn enter<E: de::Error>() -> Result<Nested, E> {
        NESTING.with(|n| {
            if n.get() >= MAX_NESTING {
                Err(E::custom(format_args!(
                    "value nested deeper than {MAX_NESTING} levels"
                )))
            } else {
                n.set(n.get() + 1);
                Ok(Nested)
            }
        })
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        NESTING.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Accepts the same input as `#[derive(Deserialize)]` would (variant by index or by name, the
/// field shapes of the derived `Serialize`), so any serde format reads what it wrote; written
/// by hand to limit nesting (`MAX_NESTING` levels): with the derived impl, a 400 kB frame of nested
/// lists overflowed the stack of the task decoding it and aborted the whole server.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_enum("Value", VALUE_VARIANTS, ValueVisitor)
    }
}

/// Items preallocated at most for a sequence, whatever length it claims.
const MAX_PREALLOCATED_ITEMS: usize = 1 << 16;

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("enum Value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // A `Value` being converted into a `Value` (see `deserialize_enum` of `Value`).
        if let Some(value) = HANDOVER.with(Cell::take) {
            return Ok(value);
        }
        let (variant, access) = data.variant::<VariantIndex>()?;
        Ok(match variant.0 {
            0 => {
                access.unit_variant()?;
                Value::None
            }
            1 => Value::Bool(access.newtype_variant()?),
            2 => Value::Int(access.newtype_variant()?),
            3 => Value::BigInt(access.newtype_variant()?),
            4 => Value::Float(access.newtype_variant()?),
            5 => access.struct_variant(COMPLEX_FIELDS, ComplexVisitor)?,
            6 => Value::Str(access.newtype_variant()?),
            7 => Value::Bytes(access.newtype_variant_seed(BytesSeed)?),
            8 => Value::Tuple(access.newtype_variant_seed(Items)?),
            9 => Value::List(access.newtype_variant_seed(Items)?),
            10 => Value::Dict(access.newtype_variant_seed(Entries)?),
            11 => Value::Set(access.newtype_variant_seed(Items)?),
            12 => Value::FrozenSet(access.newtype_variant_seed(Items)?),
            _ => Value::Ref(access.newtype_variant::<NetRef>()?),
        })
    }
}

/// A variant of [`Value`], by index (0..14) or by name.
struct VariantIndex(u8);

impl<'de> Deserialize<'de> for VariantIndex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(VariantVisitor)
    }
}

struct VariantVisitor;

impl Visitor<'_> for VariantVisitor {
    type Value = VariantIndex;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<VariantIndex, E> {
        match u8::try_from(v) {
            Ok(i) if usize::from(i) < VALUE_VARIANTS.len() => Ok(VariantIndex(i)),
            _ => Err(E::invalid_value(
                Unexpected::Unsigned(v),
                &"variant index 0 <= i < 14",
            )),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<VariantIndex, E> {
        match VALUE_VARIANTS.iter().position(|name| *name == v) {
            Some(i) => Ok(VariantIndex(i as u8)),
            None => Err(E::unknown_variant(v, VALUE_VARIANTS)),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<VariantIndex, E> {
        match VALUE_VARIANTS.iter().position(|name| name.as_bytes() == v) {
            Some(i) => Ok(VariantIndex(i as u8)),
            None => Err(E::unknown_variant(
                &String::from_utf8_lossy(v),
                VALUE_VARIANTS,
            )),
        }
    }
}

const COMPLEX_FIELDS: &[&str] = &["re", "im"];

/// `Value::Complex { re, im }`, as a sequence (bincode) or a map (self-describing formats).
struct ComplexVisitor;

impl<'de> Visitor<'de> for ComplexVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct variant Value::Complex")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let expected = &"struct variant Value::Complex with 2 elements";
        let re = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, expected))?;
        let im = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, expected))?;
        Ok(Value::Complex { re, im })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let (mut re, mut im) = (None, None);
        while let Some(key) = map.next_key::<ComplexField>()? {
            let (slot, name) = match key {
                ComplexField::Re => (&mut re, "re"),
                ComplexField::Im => (&mut im, "im"),
                ComplexField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::duplicate_field(name));
            }
            *slot = Some(map.next_value()?);
        }
        Ok(Value::Complex {
            re: re.ok_or_else(|| de::Error::missing_field("re"))?,
            im: im.ok_or_else(|| de::Error::missing_field("im"))?,
        })
    }
}

enum ComplexField {
    Re,
    Im,
    Other,
}

impl<'de> Deserialize<'de> for ComplexField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = ComplexField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("field identifier")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ComplexField, E> {
                Ok(match v {
                    0 => ComplexField::Re,
                    1 => ComplexField::Im,
                    _ => ComplexField::Other,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ComplexField, E> {
                self.visit_bytes(v.as_bytes())
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ComplexField, E> {
                Ok(match v {
                    b"re" => ComplexField::Re,
                    b"im" => ComplexField::Im,
                    _ => ComplexField::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

thread_local! {
    /// The buffer whose contents are being deserialized on this thread, if it is shared.
    static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
}

/// What [`SharedSource`] marks: the buffer, and a blob frame's blobs not yet placed.
struct Source {
    bytes: Bytes,
    /// Blobs with their positions in `bytes`, in order; `next` is the first not yet placed.
    blobs: Vec<(usize, Bytes)>,
    next: usize,
}

/// Marks `Bytes` as the buffer being deserialized on this thread, for as long as it lives, so
/// that large byte strings decoded from it share its memory.
pub(crate) struct SharedSource(Option<Source>);

impl SharedSource {
    pub(crate) fn enter(source: &Bytes) -> SharedSource {
        Self::enter_with_blobs(source, Vec::new())
    }

    /// [`enter`](Self::enter) for a blob frame's head: the empty byte string whose data starts
    /// at a blob's position (in order) is that blob.
    pub(crate) fn enter_with_blobs(source: &Bytes, blobs: Vec<(usize, Bytes)>) -> SharedSource {
        let source = Source {
            bytes: source.clone(),
            blobs,
            next: 0,
        };
        SharedSource(SOURCE.with(|s| s.replace(Some(source))))
    }

    /// The position of the first blob not placed so far, if any.
    pub(crate) fn unplaced(&self) -> Option<usize> {
        SOURCE.with(|s| {
            s.borrow()
                .as_ref()
                .and_then(|source| source.blobs.get(source.next).map(|(at, _)| *at))
        })
    }
}

impl Drop for SharedSource {
    fn drop(&mut self) {
        let previous = self.0.take();
        SOURCE.with(|s| *s.borrow_mut() = previous);
    }
}

/// `bytes` as a slice of the shared source when it lies inside it and is large (or is the whole
/// source), otherwise as a copy: a small value kept for long then does not pin a large frame.
/// An empty byte string at the position of the next blob of a blob frame is that blob.
fn share_or_copy(v: &[u8]) -> Bytes {
    SOURCE.with(|s| match &mut *s.borrow_mut() {
        Some(source) if v.is_empty() => {
            let at = (v.as_ptr() as usize).wrapping_sub(source.bytes.as_ptr() as usize);
            match source.blobs.get(source.next) {
                Some((position, blob)) if *position == at => {
                    source.next += 1;
                    blob.clone()
                }
                _ => Bytes::new(),
            }
        }
        Some(Source { bytes: source, .. })
            if v.len() >= SHARE_MIN_BYTES || v.len() == source.len() =>
        {
            let (start, end) = (
                source.as_ptr() as usize,
                source.as_ptr() as usize + source.len(),
            );
            let at = v.as_ptr() as usize;
            if at >= start && at + v.len() <= end {
                source.slice_ref(v)
            } else {
                Bytes::copy_from_slice(v)
            }
        }
        _ => Bytes::copy_from_slice(v),
    })
}

/// The payload of `Value::Bytes`.
struct BytesSeed;

impl<'de> DeserializeSeed<'de> for BytesSeed {
    type Value = Bytes;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for BytesSeed {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(share_or_copy(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }

    // Self-describing formats without a bytes type write a sequence of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(SHARE_MIN_BYTES));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Bytes::from(out))
    }
}

/// The items of a tuple, list or set: `Vec<Value>`.
struct Items;

impl<'de> DeserializeSeed<'de> for Items {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Value>, D::Error> {
        let _level = Nested::enter()?;
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED_ITEMS));
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(out)
    }
}

/// The entries of a dict: `Vec<(Value, Value)>`.
struct Entries;

impl<'de> DeserializeSeed<'de> for Entries {
    type Value = Vec<(Value, Value)>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Vec<(Value, Value)>, D::Error> {
        let _level = Nested::enter()?;
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries {
    type Value = Vec<(Value, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out =
            Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED_ITEMS / 2));
        while let Some(entry) = seq.next_element()? {
            out.push(entry);
        }
        Ok(out)
    }
}

/// Whether a `deserialize_enum` call comes from `Value`'s own `Deserialize` (the target is a
/// `Value`), which deserializers hand the value to whole rather than read field by field.
pub(crate) fn asks_for_value(name: &str, variants: &[&str]) -> bool {
    name == "Value" && variants == VALUE_VARIANTS
}

/// The variant names of [`Value`], as serde's derive lists them.
pub(crate) const VALUE_VARIANTS: &[&str] = &[
    "None",
    "Bool",
    "Int",
    "BigInt",
    "Float",
    "Complex",
    "Str",
    "Bytes",
    "Tuple",
    "List",
    "Dict",
    "Set",
    "FrozenSet",
    "Ref",
];

/// Deserializes a [`Value`] as itself, through the derived `Deserialize` of `Value`.
struct Identity(Value);

thread_local! {
    /// A `Value` handed to the visitor called right after it is set (see `deserialize_enum`).
    static HANDOVER: Cell<Option<Value>> = const { Cell::new(None) };
}

/// The `EnumAccess` for a value in `HANDOVER`: `Value`'s visitor takes the value from there
/// without using it; any other visitor reads the value as [`Identity`] would.
struct Handover;

impl<'de> EnumAccess<'de> for Handover {
    type Error = FromValueError;
    type Variant = Identity;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Identity), FromValueError> {
        match HANDOVER.with(Cell::take) {
            Some(value) => Identity(value).variant_seed(seed),
            None => Err(de::Error::custom("a value was read twice")),
        }
    }
}

impl<'de> EnumAccess<'de> for Identity {
    type Error = FromValueError;
    type Variant = Identity;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Identity), FromValueError> {
        let index = match &self.0 {
            Value::None => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::BigInt(_) => 3,
            Value::Float(_) => 4,
            Value::Complex { .. } => 5,
            Value::Str(_) => 6,
            Value::Bytes(_) => 7,
            Value::Tuple(_) => 8,
            Value::List(_) => 9,
            Value::Dict(_) => 10,
            Value::Set(_) => 11,
            Value::FrozenSet(_) => 12,
            Value::Ref(_) => 13,
        };
        let name: StringDeserializer<FromValueError> =
            VALUE_VARIANTS[index].to_owned().into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de> VariantAccess<'de> for Identity {
    type Error = FromValueError;

    fn unit_variant(self) -> Result<(), FromValueError> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, FromValueError> {
        // The payload of each variant, in a shape its field type deserializes from.
        let content = match self.0 {
            // Handed over as a slice of itself, which the seed takes without a copy.
            Value::Bytes(b) => {
                let _source = SharedSource::enter(&b);
                return seed.deserialize(serde::de::value::BytesDeserializer::new(&b));
            }
            Value::BigInt(s) => Value::Str(s),
            Value::Tuple(items) | Value::Set(items) | Value::FrozenSet(items) => Value::List(items),
            Value::Dict(entries) => Value::List(
                entries
                    .into_iter()
                    .map(|(k, v)| Value::Tuple(vec![k, v]))
                    .collect(),
            ),
            Value::Ref(r) => Value::Tuple(vec![Value::from(r.id.0), Value::Str(r.type_name)]),
            other => other,
        };
        seed.deserialize(content)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, FromValueError> {
        de::Deserializer::deserialize_any(self.0, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FromValueError> {
        match self.0 {
            Value::Complex { re, im } => {
                visit_seq(vec![Value::Float(re), Value::Float(im)], visitor)
            }
            other => de::Deserializer::deserialize_any(other, visitor),
        }
    }
}

struct DictAccess {
    entries: std::vec::IntoIter<(Value, Value)>,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for DictAccess {
    type Error = FromValueError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FromValueError> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, FromValueError> {
        match self.value.take() {
            Some(v) => seed.deserialize(v),
            None => Err(de::Error::custom("dict value requested before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumValue {
    variant: String,
    value: Value,
}

impl<'de> EnumAccess<'de> for EnumValue {
    type Error = FromValueError;
    type Variant = Value;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Value), FromValueError> {
        let de: StringDeserializer<FromValueError> = self.variant.into_deserializer();
        Ok((seed.deserialize(de)?, self.value))
    }
}

impl<'de> VariantAccess<'de> for Value {
    type Error = FromValueError;

    fn unit_variant(self) -> Result<(), FromValueError> {
        match self {
            Value::None => Ok(()),
            other => Err(de::Error::invalid_type(other.unexpected(), &"unit variant")),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, FromValueError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, FromValueError> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FromValueError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::{NetRef, NetRefId};

    #[test]
    fn converts_scalars_and_containers() {
        assert_eq!(Value::Int(2).deserialize_into::<i64>(), Ok(2));
        assert_eq!(Value::Int(2).deserialize_into::<f64>(), Ok(2.0));
        assert_eq!(
            Value::BigInt("170141183460469231731687303715884105727".into())
                .deserialize_into::<i128>(),
            Ok(i128::MAX)
        );
        assert_eq!(
            Value::Tuple(vec![Value::Int(1), Value::Str("a".into())])
                .deserialize_into::<(u8, String)>(),
            Ok((1, "a".to_owned()))
        );
        let dict = Value::Dict(vec![(Value::Str("Foo".into()), Value::Int(3))]);
        let map: HashMap<String, i64> = dict.deserialize_into().expect("dict");
        assert_eq!(map["Foo"], 3);
        let set = Value::Set(vec![Value::Int(2), Value::Int(1)]);
        assert_eq!(
            set.deserialize_into::<BTreeSet<i32>>(),
            Ok(BTreeSet::from([1, 2]))
        );
        assert_eq!(Value::None.deserialize_into::<Option<i32>>(), Ok(None));
        assert_eq!(Value::Int(5).deserialize_into::<Option<i32>>(), Ok(Some(5)));
        assert_eq!(
            Value::bytes(b"ab".to_vec()).deserialize_into::<serde_bytes::ByteBuf>(),
            Ok(serde_bytes::ByteBuf::from(b"ab".to_vec()))
        );
        assert_eq!(
            Value::Complex { re: 1.0, im: -2.0 }.deserialize_into::<(f64, f64)>(),
            Ok((1.0, -2.0))
        );
    }

    #[test]
    fn a_value_deserializes_into_itself() {
        let all = Value::List(vec![
            Value::None,
            Value::Bool(false),
            Value::Int(-3),
            Value::BigInt("123456789012345678901234567890".into()),
            Value::Float(0.5),
            Value::Complex { re: 1.0, im: 2.0 },
            Value::Str("s".into()),
            Value::bytes(vec![1, 2]),
            Value::Tuple(vec![Value::Int(1)]),
            Value::Dict(vec![(Value::Str("k".into()), Value::List(vec![]))]),
            Value::Set(vec![Value::Int(2)]),
            Value::FrozenSet(vec![Value::Int(3)]),
            Value::Ref(NetRef {
                id: NetRefId(u64::MAX),
                type_name: "builtins.object".into(),
            }),
        ]);
        assert_eq!(all.clone().deserialize_into::<Value>(), Ok(all.clone()));
        let map = Value::Dict(vec![(Value::Str("v".into()), all.clone())]);
        let got: HashMap<String, Value> = map.deserialize_into().expect("map of values");
        assert_eq!(got["v"], all);
    }

    fn nested(levels: usize) -> Value {
        let mut v = Value::Int(0);
        for i in 0..levels {
            v = if i % 2 == 0 {
                Value::List(vec![v])
            } else {
                Value::Dict(vec![(Value::None, v)])
            };
        }
        v
    }

    fn bincode_round_trip(v: &Value) -> Result<Value, String> {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(v, config).map_err(|e| e.to_string())?;
        let (back, used) = bincode::serde::decode_from_slice::<Value, _>(&bytes, config)
            .map_err(|e| e.to_string())?;
        assert_eq!(used, bytes.len());
        Ok(back)
    }

    fn every_variant() -> Value {
        Value::List(vec![
            Value::None,
            Value::Bool(true),
            Value::Int(i64::MIN),
            Value::BigInt("-123456789012345678901234567890".into()),
            Value::Float(-0.25),
            Value::Complex { re: 1.5, im: -2.0 },
            Value::Str("é".into()),
            Value::bytes(vec![0, 255]),
            Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![])]),
            Value::Dict(vec![
                (Value::Str("k".into()), Value::List(vec![])),
                (Value::Int(2), Value::Dict(vec![])),
            ]),
            Value::Set(vec![Value::Int(2)]),
            Value::FrozenSet(vec![Value::Str("f".into())]),
            Value::Ref(NetRef {
                id: NetRefId(u64::MAX),
                type_name: "builtins.object".into(),
            }),
        ])
    }

    #[test]
    fn deserializes_what_serialize_wrote() {
        let all = every_variant();
        assert_eq!(bincode_round_trip(&all), Ok(all.clone()));
        // A self-describing format (variants by name, struct variants as maps) too.
        let json = serde_json::to_string(&all).expect("to json");
        assert_eq!(
            serde_json::from_str::<Value>(&json).expect("from json"),
            all
        );
        let complex: Value =
            serde_json::from_str(r#"{"Complex": {"im": 2.0, "extra": 0, "re": 1.0}}"#)
                .expect("fields in any order");
        assert_eq!(complex, Value::Complex { re: 1.0, im: 2.0 });
        let err = serde_json::from_str::<Value>(r#""Nothing""#).expect_err("unknown variant");
        assert!(
            err.to_string().contains("unknown variant `Nothing`"),
            "{err}"
        );
    }

    #[test]
    fn nesting_is_limited() {
        // Run where the stack is as small as a tokio worker's, in a debug build.
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let deep = nested(MAX_NESTING);
                assert_eq!(bincode_round_trip(&deep), Ok(deep));
                let too_deep = nested(MAX_NESTING + 1);
                let err = bincode_round_trip(&too_deep).expect_err("too deep");
                assert!(err.contains("nested deeper than 300 levels"), "{err}");
                // The count is per thread and balanced: a shallow value decodes afterwards.
                assert_eq!(bincode_round_trip(&nested(3)), Ok(nested(3)));
            })
            .expect("spawn")
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn errors_name_both_types() {
        let err = Value::Str("abc".into())
            .deserialize_into::<i64>()
            .expect_err("str is not i64");
        assert_eq!(
            err.to_string(),
            "invalid type: string \"abc\", expected i64"
        );
        let err = Value::Int(300).deserialize_into::<u8>().expect_err("range");
        assert!(err.to_string().contains("300"), "{err}");
        let r = Value::Ref(NetRef {
            id: NetRefId(1),
            type_name: "socket.socket".into(),
        });
        let err = r.deserialize_into::<String>().expect_err("ref");
        assert!(err.to_string().contains("socket.socket"), "{err}");
        assert!(err.to_string().contains("expected a string"), "{err}");
    }

    #[test]
    fn converts_structs_and_enums() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Point {
            x: i32,
            y: i32,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        enum Shape {
            Empty,
            Dot(Point),
        }
        let p = Value::Dict(vec![
            (Value::Str("x".into()), Value::Int(1)),
            (Value::Str("y".into()), Value::Int(2)),
        ]);
        assert_eq!(
            p.clone().deserialize_into::<Point>(),
            Ok(Point { x: 1, y: 2 })
        );
        assert_eq!(
            Value::Str("Empty".into()).deserialize_into::<Shape>(),
            Ok(Shape::Empty)
        );
        assert_eq!(
            Value::Dict(vec![(Value::Str("Dot".into()), p)]).deserialize_into::<Shape>(),
            Ok(Shape::Dot(Point { x: 1, y: 2 }))
        );
    }
}
