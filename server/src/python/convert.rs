//! Python objects ↔ the wire.
//!
//! Results go out without a [`Value`] tree: [`encode_reply`] serializes the Python objects
//! straight into the connection's frame buffer, producing exactly the bytes the derived
//! `Serialize` of the equivalent [`Value`] would (pinned by the tests below). [`to_value`] builds
//! that `Value` where one is needed (items of an iteration batch, copied as they are produced).
//! Both follow the same rules, decided in one place ([`shape`]).
//!
//! Arguments come in as [`Value`]s and become Python objects with [`from_value`].

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;

use bytes::BytesMut;
use pyo3::exceptions::{PyOverflowError, PyRecursionError, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet,
    PyString, PyTuple,
};
use rpyc_protocol::{NetRef, NetRefId, ProtocolError, RequestId, ReturnMode, ServerError, Value};
use serde::Serialize;
use serde::ser::{SerializeSeq, SerializeStructVariant, SerializeTuple, Serializer};

use super::objects::{ObjectTable, type_name};
use super::worker::SharedList;

/// Nesting deeper than this is refused when copying by value (a self-referencing list would
/// otherwise recurse forever); in `Auto` mode a tuple nested deeper goes by reference.
const MAX_DEPTH: usize = 256;

/// Why a conversion of arguments failed.
pub(super) enum ConvertError {
    /// Python raised (or we raise a Python-style error, e.g. an uncopyable type).
    Py(PyErr),
    /// The value named an unknown reference.
    Server(ServerError),
}

impl From<PyErr> for ConvertError {
    fn from(e: PyErr) -> Self {
        ConvertError::Py(e)
    }
}

impl From<ServerError> for ConvertError {
    fn from(e: ServerError) -> Self {
        ConvertError::Server(e)
    }
}

/// A result of a request, ready to be written: built in Rust, or Python objects that are
/// serialized (by the rules of their [`ReturnMode`]) only when the frame is written.
pub(super) enum Reply<'py> {
    /// A value computed in Rust (a length, a bool, …).
    Value(Value),
    /// A Python object, returned by the rules of the mode.
    Object(Bound<'py, PyAny>, ReturnMode),
    /// `Op::Iter`'s `(iterator, [items…], exhausted)`: the iterator by reference, or `None`
    /// once exhausted.
    Iter {
        /// The iterator, unless exhausted.
        handle: Option<Bound<'py, PyAny>>,
        /// The batch (`Value` or `Object` replies).
        items: Vec<Reply<'py>>,
        /// Whether the iterator is exhausted.
        done: bool,
    },
    /// `Op::Next`'s `([items…], exhausted)`.
    Next {
        /// The batch (`Value` or `Object` replies).
        items: Vec<Reply<'py>>,
        /// Whether the iterator is exhausted.
        done: bool,
    },
}

/// Why a reply could not be encoded. The frame buffer is left as it was, and every reference
/// the attempt handed out is withdrawn again.
pub(super) enum EncodeFailure {
    /// The result cannot be converted (an uncopyable object, too deep, or Python raised).
    Py(PyErr),
    /// The encoded result is larger than a frame may be.
    TooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A bug (a panic, or an encoder error that is not ours).
    Internal(String),
}

/// Appends the frame of `Response { id, result: Ok(reply) }` to `buf`, serializing Python
/// objects straight into it. References are entered in `table` as the objects are met.
///
/// A large `bytes` object is not copied: a reference to it goes to `shared`, with its position
/// in `buf` (see [`ReplySink::send_with`](super::worker::ReplySink::send_with)).
pub(super) fn encode_reply(
    py: Python<'_>,
    id: RequestId,
    reply: &Reply<'_>,
    table: &mut ObjectTable,
    max_frame_bytes: usize,
    buf: &mut BytesMut,
    shared: &mut SharedList,
) -> Result<(), EncodeFailure> {
    let start = buf.len();
    let first_shared = shared.len();
    with_conv(table, |conv| {
        let mut share = |bytes: &[u8], at: usize| match conv.offered.borrow_mut().take() {
            Some(offer) if offer.is(bytes) => {
                shared.push((at, Box::new(offer)));
                true
            }
            _ => false,
        };
        let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            rpyc_protocol::codec::encode_response_frame_sharing(
                id,
                &ReplyOut { reply, conv },
                max_frame_bytes,
                buf,
                &mut share,
            )
        }));
        if !matches!(encoded, Ok(Ok(()))) {
            shared.truncate(first_shared);
        }
        let failure = match encoded {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(ProtocolError::TooLarge { size, max })) => EncodeFailure::TooLarge { size, max },
            Ok(Err(e)) => match conv.failure.borrow_mut().take() {
                Some(f) => EncodeFailure::Py(f.into_pyerr()),
                None => EncodeFailure::Internal(format!("cannot encode the result: {e}")),
            },
            Err(panic) => {
                buf.truncate(start);
                EncodeFailure::Internal(panic_message(&*panic))
            }
        };
        conv.rollback(py);
        Err(failure)
    })
}

/// The text of a panic payload.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Converts a Python object into a [`Value`], by the rules of `mode`.
pub(super) fn to_value(
    obj: &Bound<'_, PyAny>,
    mode: ReturnMode,
    table: &mut ObjectTable,
) -> Result<Value, PyErr> {
    with_conv(table, |conv| {
        build(obj, mode, 0, conv).map_err(|f| {
            conv.rollback(obj.py());
            f.into_pyerr()
        })
    })
}

/// Why a Python object cannot be converted.
enum Failure {
    /// Python raised.
    Py(PyErr),
    /// Not a type that can be copied by value. `path`: where, innermost segment first.
    Uncopyable {
        type_name: String,
        path: Vec<String>,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep { path: Vec<String> },
}

impl From<PyErr> for Failure {
    fn from(e: PyErr) -> Self {
        Failure::Py(e)
    }
}

impl Failure {
    /// The same failure, one level further out (`segment` is this level's `[i]` or `[key]`).
    fn within(mut self, segment: impl FnOnce() -> String) -> Self {
        if let Failure::Uncopyable { path, .. } | Failure::TooDeep { path } = &mut self {
            path.push(segment());
        }
        self
    }

    fn into_pyerr(self) -> PyErr {
        match self {
            Failure::Py(e) => e,
            Failure::TooDeep { path } => PyRecursionError::new_err(format!(
                "cannot copy by value: nesting deeper than {MAX_DEPTH} levels at {}",
                render_path(&path)
            )),
            Failure::Uncopyable { type_name, path } => PyTypeError::new_err(format!(
                "cannot copy an object of type '{type_name}' by value{}; only None, bool, int, \
                 float, complex, str, bytes, tuple, list, dict, set and frozenset can be copied \
                 (ask for a reference instead)",
                if path.is_empty() {
                    String::new()
                } else {
                    format!(" (at {})", render_path(&path))
                }
            )),
        }
    }
}

/// `result[1]['a']` from segments innermost first.
fn render_path(path: &[String]) -> String {
    if path.is_empty() {
        "the top level".to_owned()
    } else {
        let mut out = "result".to_owned();
        path.iter().rev().for_each(|s| out.push_str(s));
        out
    }
}

fn index_segment(i: usize) -> impl FnOnce() -> String {
    move || format!("[{i}]")
}

fn key_segment<'a>(key: &'a Bound<'_, PyAny>) -> impl FnOnce() -> String + 'a {
    move || {
        format!(
            "[{}]",
            key.repr().map(|r| r.to_string()).unwrap_or_default()
        )
    }
}

/// What one object becomes on the wire (the variant of [`Value`] it maps to).
enum Shape<'a, 'py> {
    None,
    Bool(bool),
    Int(i64),
    BigInt(String),
    Float(f64),
    Complex(f64, f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    ByteArray(&'a Bound<'py, PyByteArray>),
    Tuple(&'a Bound<'py, PyTuple>),
    List(&'a Bound<'py, PyList>),
    Dict(&'a Bound<'py, PyDict>),
    Set(&'a Bound<'py, PySet>),
    FrozenSet(&'a Bound<'py, PyFrozenSet>),
    Ref,
}

/// The rules of the return modes.
///
/// - `Ref`: always a reference.
/// - `Auto` (RPyC's): immutable simple values, and tuples of them, by value; everything else,
///   subclasses of the simple types included, by reference.
/// - `Value`: a deep copy; subclasses of the containers and of the scalar types copy as their
///   base type (an `OrderedDict` as a dict, an `IntEnum` as an int); anything else fails.
#[inline]
fn shape<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    mode: ReturnMode,
    depth: usize,
) -> Result<Shape<'a, 'py>, Failure> {
    match mode {
        ReturnMode::Ref => Ok(Shape::Ref),
        ReturnMode::Auto => {
            if let Some(s) = exact_scalar(obj)? {
                Ok(s)
            } else if let Ok(t) = obj.cast_exact::<PyTuple>()
                && depth < MAX_DEPTH
            {
                Ok(Shape::Tuple(t))
            } else {
                Ok(Shape::Ref)
            }
        }
        ReturnMode::Value => {
            if depth > MAX_DEPTH {
                return Err(Failure::TooDeep { path: Vec::new() });
            }
            if let Some(s) = exact_scalar(obj)? {
                return Ok(s);
            }
            Ok(if let Ok(t) = obj.cast::<PyTuple>() {
                Shape::Tuple(t)
            } else if let Ok(l) = obj.cast::<PyList>() {
                Shape::List(l)
            } else if let Ok(d) = obj.cast::<PyDict>() {
                Shape::Dict(d)
            } else if let Ok(s) = obj.cast::<PySet>() {
                Shape::Set(s)
            } else if let Ok(s) = obj.cast::<PyFrozenSet>() {
                Shape::FrozenSet(s)
            } else if let Ok(b) = obj.cast::<PyByteArray>() {
                Shape::ByteArray(b)
            } else if let Ok(b) = obj.cast::<PyBool>() {
                Shape::Bool(b.is_true())
            } else if obj.is_instance_of::<PyInt>() {
                int(obj)?
            } else if let Ok(f) = obj.cast::<PyFloat>() {
                Shape::Float(f.value())
            } else if let Ok(s) = obj.cast::<PyString>() {
                Shape::Str(s.to_str()?)
            } else if let Ok(b) = obj.cast::<PyBytes>() {
                Shape::Bytes(b.as_bytes())
            } else if let Ok(c) = obj.cast::<PyComplex>() {
                Shape::Complex(c.real(), c.imag())
            } else {
                return Err(Failure::Uncopyable {
                    type_name: type_name(obj),
                    path: Vec::new(),
                });
            })
        }
    }
}

/// The scalar types that are copied in every mode but `Ref` (exact types only).
#[inline(always)]
fn exact_scalar<'a, 'py>(obj: &'a Bound<'py, PyAny>) -> Result<Option<Shape<'a, 'py>>, PyErr> {
    Ok(Some(if obj.is_exact_instance_of::<PyInt>() {
        int(obj)?
    } else if obj.is_none() {
        Shape::None
    } else if let Ok(s) = obj.cast_exact::<PyString>() {
        Shape::Str(s.to_str()?)
    } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
        Shape::Float(f.value())
    } else if let Ok(b) = obj.cast_exact::<PyBool>() {
        Shape::Bool(b.is_true())
    } else if let Ok(b) = obj.cast_exact::<PyBytes>() {
        Shape::Bytes(b.as_bytes())
    } else if let Ok(c) = obj.cast_exact::<PyComplex>() {
        Shape::Complex(c.real(), c.imag())
    } else {
        return Ok(None);
    }))
}

/// An `int` (or subclass): `Int` when it fits in an `i64`, else `BigInt` (its decimal value,
/// whatever the subclass's `__str__` says).
fn int<'a, 'py>(obj: &Bound<'py, PyAny>) -> Result<Shape<'a, 'py>, PyErr> {
    let py = obj.py();
    if let Some(v) = small_int(obj) {
        return Ok(Shape::Int(v));
    }
    if let Some(e) = PyErr::take(py) {
        return Err(e);
    }
    // SAFETY: GIL held; the result is a new reference to a str, or null with an exception set.
    let text = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyNumber_ToBase(obj.as_ptr(), 10))? };
    Ok(Shape::BigInt(text.cast::<PyString>()?.to_str()?.to_owned()))
}

/// The value of an `int` (or subclass) that fits in an `i64`; `None` if it does not, or if
/// Python raised (the exception is then set).
#[inline(always)]
fn small_int(obj: &Bound<'_, PyAny>) -> Option<i64> {
    let mut overflow = 0;
    // SAFETY: GIL held (`obj` is bound); `obj` is an int, so no Python code runs.
    let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
    // SAFETY: GIL held.
    (overflow == 0 && !(v == -1 && unsafe { !ffi::PyErr_Occurred().is_null() })).then_some(v)
}

/// State of one conversion: the object table (moved in for the conversion, see [`with_conv`]),
/// the ids handed out (withdrawn if the conversion fails), the failure that stopped the
/// serializer (a serde error can only carry text), and the `bytes` object being written, which
/// the frame writer may keep a reference to instead of copying it.
struct Conv {
    table: RefCell<ObjectTable>,
    inserted: RefCell<Vec<NetRefId>>,
    failure: RefCell<Option<Failure>>,
    offered: RefCell<Option<PyBytesView>>,
}

/// The contents of a Python `bytes` object, readable without the GIL: `bytes` are immutable,
/// and the reference held keeps the buffer alive.
pub(super) struct PyBytesView {
    pub(super) owner: Py<PyAny>,
    pub(super) data: *const u8,
    pub(super) len: usize,
}

// SAFETY: the view only reads an immutable buffer that its owner reference keeps alive;
// `Py<PyAny>` itself is Send and Sync (dropped without the GIL, its decref is deferred).
unsafe impl Send for PyBytesView {}
// SAFETY: as above; nothing is ever written through the pointer.
unsafe impl Sync for PyBytesView {}

impl PyBytesView {
    /// Whether `bytes` is this object's buffer (the slice the serializer was given).
    pub(super) fn is(&self, bytes: &[u8]) -> bool {
        std::ptr::eq(self.data, bytes.as_ptr()) && self.len == bytes.len()
    }
}

impl AsRef<[u8]> for PyBytesView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `data` and `len` are those of the `bytes` object `owner` keeps alive, whose
        // contents never change.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

/// Runs `f` with a conversion state holding the connection's table, and puts the table back
/// afterwards, even if `f` panics.
fn with_conv<R>(table: &mut ObjectTable, f: impl FnOnce(&Conv) -> R) -> R {
    struct Restore<'t> {
        table: &'t mut ObjectTable,
        conv: Conv,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            std::mem::swap(self.table, self.conv.table.get_mut());
        }
    }
    let restore = Restore {
        conv: Conv {
            table: RefCell::new(std::mem::take(table)),
            inserted: RefCell::new(Vec::new()),
            failure: RefCell::new(None),
            offered: RefCell::new(None),
        },
        table,
    };
    f(&restore.conv)
}

impl Conv {
    fn insert(&self, obj: &Bound<'_, PyAny>) -> NetRef {
        let r = self.table.borrow_mut().insert(obj);
        self.inserted.borrow_mut().push(r.id);
        r
    }

    fn rollback(&self, py: Python<'_>) {
        let ids = std::mem::take(&mut *self.inserted.borrow_mut());
        self.table.borrow_mut().release(py, &ids);
    }

    /// Keeps `failure` for the caller and stops the serializer.
    fn fail<E: serde::ser::Error>(&self, failure: Failure) -> E {
        *self.failure.borrow_mut() = Some(failure);
        E::custom("the result cannot be converted")
    }

    /// Adds this level's path segment to a failure from further in.
    fn within(&self, segment: impl FnOnce() -> String) {
        let mut failure = self.failure.borrow_mut();
        if let Some(f) = failure.take() {
            *failure = Some(f.within(segment));
        }
    }
}

fn build(
    obj: &Bound<'_, PyAny>,
    mode: ReturnMode,
    depth: usize,
    conv: &Conv,
) -> Result<Value, Failure> {
    fn items<'py>(
        iter: impl Iterator<Item = Bound<'py, PyAny>>,
        len: usize,
        mode: ReturnMode,
        depth: usize,
        conv: &Conv,
    ) -> Result<Vec<Value>, Failure> {
        let mut out = Vec::with_capacity(len);
        for (i, item) in iter.enumerate() {
            out.push(build(&item, mode, depth + 1, conv).map_err(|f| f.within(index_segment(i)))?);
        }
        Ok(out)
    }
    Ok(match shape(obj, mode, depth)? {
        Shape::None => Value::None,
        Shape::Bool(b) => Value::Bool(b),
        Shape::Int(i) => Value::Int(i),
        Shape::BigInt(s) => Value::BigInt(s),
        Shape::Float(f) => Value::Float(f),
        Shape::Complex(re, im) => Value::Complex { re, im },
        Shape::Str(s) => Value::Str(s.to_owned()),
        Shape::Bytes(b) => Value::bytes(b.to_vec()),
        Shape::ByteArray(b) => Value::bytes(b.to_vec()),
        Shape::Tuple(t) => Value::Tuple(items(t.iter(), t.len(), mode, depth, conv)?),
        Shape::List(l) => Value::List(items(l.iter(), l.len(), mode, depth, conv)?),
        Shape::Set(s) => Value::Set(items(s.iter(), s.len(), mode, depth, conv)?),
        Shape::FrozenSet(s) => Value::FrozenSet(items(s.iter(), s.len(), mode, depth, conv)?),
        Shape::Dict(d) => {
            let mut out = Vec::with_capacity(d.len());
            for (k, v) in d.iter() {
                let key = build(&k, mode, depth + 1, conv)?;
                let value =
                    build(&v, mode, depth + 1, conv).map_err(|f| f.within(key_segment(&k)))?;
                out.push((key, value));
            }
            Value::Dict(out)
        }
        Shape::Ref => Value::Ref(conv.insert(obj)),
    })
}

// Serialization. Every `Serialize` below produces what the derived `Serialize` of `Value`
// produces for the equivalent value: the same enum name, variant indices and names.

const VALUE: &str = "Value";

/// Serializes a [`Reply`].
struct ReplyOut<'a, 'py> {
    reply: &'a Reply<'py>,
    conv: &'a Conv,
}

impl Serialize for ReplyOut<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let conv = self.conv;
        match self.reply {
            Reply::Value(v) => v.serialize(s),
            Reply::Object(obj, mode) => Out {
                obj,
                mode: *mode,
                depth: 0,
                conv,
            }
            .serialize(s),
            Reply::Iter {
                handle,
                items,
                done,
            } => s.serialize_newtype_variant(
                VALUE,
                8,
                "Tuple",
                &Batch {
                    handle: Some(handle.as_ref()),
                    items,
                    done: *done,
                    conv,
                },
            ),
            Reply::Next { items, done } => s.serialize_newtype_variant(
                VALUE,
                8,
                "Tuple",
                &Batch {
                    handle: None,
                    items,
                    done: *done,
                    conv,
                },
            ),
        }
    }
}

/// The elements of an iteration reply's tuple.
struct Batch<'a, 'py> {
    /// `Some` for `Op::Iter` (whose tuple starts with the iterator or `None`).
    handle: Option<Option<&'a Bound<'py, PyAny>>>,
    items: &'a [Reply<'py>],
    done: bool,
    conv: &'a Conv,
}

impl Serialize for Batch<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let conv = self.conv;
        let mut seq = s.serialize_seq(Some(2 + usize::from(self.handle.is_some())))?;
        match self.handle {
            Some(Some(obj)) => seq.serialize_element(&Out {
                obj,
                mode: ReturnMode::Ref,
                depth: 0,
                conv,
            })?,
            Some(None) => seq.serialize_element(&Value::None)?,
            None => {}
        }
        seq.serialize_element(&Newtype(9, "List", &Replies(self.items, conv)))?;
        seq.serialize_element(&Value::Bool(self.done))?;
        seq.end()
    }
}

/// A sequence of replies.
struct Replies<'a, 'py>(&'a [Reply<'py>], &'a Conv);

impl Serialize for Replies<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for reply in self.0 {
            seq.serialize_element(&ReplyOut {
                reply,
                conv: self.1,
            })?;
        }
        seq.end()
    }
}

/// A variant of `Value` with one field.
struct Newtype<'a, T: ?Sized>(u32, &'static str, &'a T);

impl<T: Serialize + ?Sized> Serialize for Newtype<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant(VALUE, self.0, self.1, self.2)
    }
}

/// `serde_bytes`' encoding of `Value::Bytes`.
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// One Python object, serialized as the `Value` its mode makes of it.
struct Out<'a, 'py> {
    obj: &'a Bound<'py, PyAny>,
    mode: ReturnMode,
    depth: usize,
    conv: &'a Conv,
}

impl Out<'_, '_> {
    fn child<'b, 'py>(&'b self, obj: &'b Bound<'py, PyAny>) -> Out<'b, 'py> {
        Out {
            obj,
            mode: self.mode,
            depth: self.depth + 1,
            conv: self.conv,
        }
    }
}

impl Serialize for Out<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The commonest case first, without going through `Shape`.
        if self.mode != ReturnMode::Ref
            && self.depth <= MAX_DEPTH
            && self.obj.is_exact_instance_of::<PyInt>()
            && let Some(i) = small_int(self.obj)
        {
            return s.serialize_newtype_variant(VALUE, 2, "Int", &i);
        }
        let shape = shape(self.obj, self.mode, self.depth).map_err(|f| self.conv.fail(f))?;
        match shape {
            Shape::None => s.serialize_unit_variant(VALUE, 0, "None"),
            Shape::Bool(b) => s.serialize_newtype_variant(VALUE, 1, "Bool", &b),
            Shape::Int(i) => s.serialize_newtype_variant(VALUE, 2, "Int", &i),
            Shape::BigInt(t) => s.serialize_newtype_variant(VALUE, 3, "BigInt", t.as_str()),
            Shape::Float(f) => s.serialize_newtype_variant(VALUE, 4, "Float", &f),
            Shape::Complex(re, im) => {
                let mut v = s.serialize_struct_variant(VALUE, 5, "Complex", 2)?;
                v.serialize_field("re", &re)?;
                v.serialize_field("im", &im)?;
                v.end()
            }
            Shape::Str(t) => s.serialize_newtype_variant(VALUE, 6, "Str", t),
            Shape::Bytes(b) => {
                // A large `bytes` object (or subclass) may be sent from its own buffer.
                if b.len() >= rpyc_protocol::codec::SHARE_MIN_BYTES {
                    *self.conv.offered.borrow_mut() = Some(PyBytesView {
                        owner: self.obj.clone().unbind(),
                        data: b.as_ptr(),
                        len: b.len(),
                    });
                }
                let written = s.serialize_newtype_variant(VALUE, 7, "Bytes", &RawBytes(b));
                self.conv.offered.borrow_mut().take();
                written
            }
            Shape::ByteArray(b) => {
                // SAFETY: the slice is only copied into the frame; no Python code runs meanwhile,
                // so nothing can resize the bytearray.
                let data = unsafe { b.as_bytes() };
                s.serialize_newtype_variant(VALUE, 7, "Bytes", &RawBytes(data))
            }
            Shape::Tuple(t) => s.serialize_newtype_variant(
                VALUE,
                8,
                "Tuple",
                &Items {
                    out: self,
                    len: t.len(),
                    iter: || t.iter(),
                },
            ),
            Shape::List(l) => s.serialize_newtype_variant(
                VALUE,
                9,
                "List",
                &Items {
                    out: self,
                    len: l.len(),
                    iter: || l.iter(),
                },
            ),
            Shape::Dict(d) => s.serialize_newtype_variant(VALUE, 10, "Dict", &Entries(self, d)),
            Shape::Set(set) => s.serialize_newtype_variant(
                VALUE,
                11,
                "Set",
                &Items {
                    out: self,
                    len: set.len(),
                    iter: || set.iter(),
                },
            ),
            Shape::FrozenSet(set) => s.serialize_newtype_variant(
                VALUE,
                12,
                "FrozenSet",
                &Items {
                    out: self,
                    len: set.len(),
                    iter: || set.iter(),
                },
            ),
            Shape::Ref => {
                s.serialize_newtype_variant(VALUE, 13, "Ref", &self.conv.insert(self.obj))
            }
        }
    }
}

/// The items of a tuple, list or set; `len` is written first, so the items must number that.
struct Items<'a, 'py, F> {
    out: &'a Out<'a, 'py>,
    len: usize,
    iter: F,
}

impl<'py, F, I> Serialize for Items<'_, 'py, F>
where
    F: Fn() -> I,
    I: Iterator<Item = Bound<'py, PyAny>>,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let conv = self.out.conv;
        let mut seq = s.serialize_seq(Some(self.len))?;
        let mut n = 0;
        for item in (self.iter)() {
            if n == self.len {
                return Err(conv.fail(size_changed()));
            }
            seq.serialize_element(&self.out.child(&item))
                .inspect_err(|_| {
                    conv.within(index_segment(n));
                })?;
            n += 1;
        }
        if n != self.len {
            return Err(conv.fail(size_changed()));
        }
        seq.end()
    }
}

/// The entries of a dict, as `(key, value)` pairs.
struct Entries<'a, 'py>(&'a Out<'a, 'py>, &'a Bound<'py, PyDict>);

impl Serialize for Entries<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Entries(out, dict) = *self;
        let conv = out.conv;
        let len = dict.len();
        let mut seq = s.serialize_seq(Some(len))?;
        let mut n = 0;
        for (k, v) in dict.iter() {
            if n == len {
                return Err(conv.fail(size_changed()));
            }
            seq.serialize_element(&Entry(out, &k, &v))?;
            n += 1;
        }
        if n != len {
            return Err(conv.fail(size_changed()));
        }
        seq.end()
    }
}

struct Entry<'a, 'py>(
    &'a Out<'a, 'py>,
    &'a Bound<'py, PyAny>,
    &'a Bound<'py, PyAny>,
);

impl Serialize for Entry<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Entry(out, k, v) = *self;
        let mut pair = s.serialize_tuple(2)?;
        pair.serialize_element(&out.child(k))?;
        pair.serialize_element(&out.child(v)).inspect_err(|_| {
            out.conv.within(key_segment(k));
        })?;
        pair.end()
    }
}

fn size_changed() -> Failure {
    Failure::Py(PyRuntimeError::new_err(
        "the result changed size while it was being sent",
    ))
}

/// Converts a wire value into a Python object; references are looked up in the table.
pub(super) fn from_value<'py>(
    py: Python<'py>,
    value: &Value,
    table: &ObjectTable,
) -> Result<Bound<'py, PyAny>, ConvertError> {
    let seq = |items: &[Value]| -> Result<Vec<Bound<'py, PyAny>>, ConvertError> {
        items.iter().map(|v| from_value(py, v, table)).collect()
    };
    Ok(match value {
        Value::None => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => {
            let Ok(int) = i.into_pyobject(py);
            int.into_any()
        }
        Value::BigInt(s) => py
            .get_type::<PyInt>()
            .call1((s.as_str(),))
            .map_err(ConvertError::Py)?,
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Complex { re, im } => PyComplex::from_doubles(py, *re, *im).into_any(),
        Value::Str(s) => PyString::new(py, s).into_any(),
        // A blob of the request is handed over as the object it was read into.
        Value::Bytes(b) => match super::blob::object_for(py, b) {
            Some(obj) => obj,
            None => new_bytes(py, b)?.into_any(),
        },
        Value::Tuple(items) => PyTuple::new(py, seq(items)?)?.into_any(),
        Value::List(items) => PyList::new(py, seq(items)?)?.into_any(),
        Value::Set(items) => PySet::new(py, seq(items)?)?.into_any(),
        Value::FrozenSet(items) => PyFrozenSet::new(py, seq(items)?)?.into_any(),
        Value::Dict(entries) => {
            let dict = PyDict::new(py);
            for (k, v) in entries {
                dict.set_item(from_value(py, k, table)?, from_value(py, v, table)?)?;
            }
            dict.into_any()
        }
        Value::Ref(r) => table.get(py, r.id)?,
    })
}

/// A new `bytes` object holding a copy of `data`. A large one is allocated without the zero fill
/// `PyBytes::new_with` does and advised onto huge pages before the copy
/// (see [`rpyc_protocol::memory`]): for a 64 MiB upload that halves the time the copy takes.
pub(super) fn new_bytes<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    if data.len() < rpyc_protocol::memory::LARGE_BUFFER_BYTES {
        return Ok(PyBytes::new(py, data));
    }
    let len = ffi::Py_ssize_t::try_from(data.len())
        .map_err(|_| PyOverflowError::new_err("bytes too long for Python"))?;
    // SAFETY: with a null source, PyBytes_FromStringAndSize returns a new reference to a
    // `bytes` object of `len` uninitialised bytes (or null with an exception set, which
    // `from_owned_ptr_or_err` turns into an error). Nothing else has seen the object yet, so we
    // may fill its buffer, `len` bytes at PyBytes_AsString, before handing it out; every byte is
    // written by the copy below, which cannot overlap `data` (a different allocation).
    unsafe {
        let obj = Bound::from_owned_ptr_or_err(
            py,
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), len),
        )?
        .cast_into_unchecked::<PyBytes>();
        let buf = ffi::PyBytes_AsString(obj.as_ptr()).cast::<std::mem::MaybeUninit<u8>>();
        rpyc_protocol::memory::advise_large(std::slice::from_raw_parts_mut(buf, data.len()));
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf.cast::<u8>(), data.len());
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::sync::Once;

    use rpyc_protocol::{Message, codec};

    use super::*;

    const MAX: usize = codec::DEFAULT_MAX_FRAME_BYTES;

    const SETUP: &str = r#"
import collections, enum
class MyInt(int):
    def __str__(self): return "not a number"
class Color(enum.IntEnum):
    RED = 1
    BIG = 2**70
class S(str): pass
class B(bytes): pass
class F(float): pass
class C(complex): pass
class L(list): pass
class T(tuple): pass
class D(dict): pass
Point = collections.namedtuple('Point', 'x y')
def nested(n, wrap=lambda x: [x]):
    x = 0
    for _ in range(n):
        x = wrap(x)
    return x
"#;

    fn with_py<R>(f: impl FnOnce(Python<'_>) -> R) -> R {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            super::super::init::init(&super::super::init::PythonConfig::default())
                .expect("the interpreter starts");
        });
        Python::attach(f)
    }

    fn eval<'py>(py: Python<'py>, expr: &str) -> Bound<'py, PyAny> {
        let globals = PyDict::new(py);
        globals.set_item("__name__", "__main__").expect("set");
        let code = CString::new(format!("{SETUP}\nresult = {expr}")).expect("no NUL");
        py.run(&code, Some(&globals), None)
            .expect("the snippet runs");
        globals
            .get_item("result")
            .expect("lookup")
            .expect("result is set")
    }

    fn describe(f: EncodeFailure) -> String {
        match f {
            EncodeFailure::Py(e) => format!("Py({e})"),
            EncodeFailure::TooLarge { size, max } => format!("TooLarge({size}, {max})"),
            EncodeFailure::Internal(e) => format!("Internal({e})"),
        }
    }

    /// Frame of the new path (written after a prefix that must stay untouched), with the
    /// shared byte strings spliced in where they go, and how many there were.
    fn encode_counting(
        py: Python<'_>,
        id: u64,
        reply: &Reply<'_>,
        table: &mut ObjectTable,
        max: usize,
    ) -> Result<(BytesMut, usize), EncodeFailure> {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let mut shared = Vec::new();
        let result = encode_reply(py, RequestId(id), reply, table, max, &mut buf, &mut shared);
        assert_eq!(&buf[..6], b"prefix", "the prefix is untouched");
        match result {
            Ok(()) => {
                let mut stream = BytesMut::new();
                let mut pos = 6;
                for (at, bytes) in &shared {
                    stream.extend_from_slice(&buf[pos..*at]);
                    stream.extend_from_slice((**bytes).as_ref());
                    pos = *at;
                }
                stream.extend_from_slice(&buf[pos..]);
                Ok((stream, shared.len()))
            }
            Err(e) => {
                assert_eq!(buf.len(), 6, "nothing is left behind on failure");
                assert!(
                    shared.is_empty(),
                    "nothing shared is left behind on failure"
                );
                Err(e)
            }
        }
    }

    fn encode(
        py: Python<'_>,
        id: u64,
        reply: &Reply<'_>,
        table: &mut ObjectTable,
        max: usize,
    ) -> Result<BytesMut, EncodeFailure> {
        encode_counting(py, id, reply, table, max).map(|(frame, _)| frame)
    }

    fn frame_of(id: u64, value: Value) -> BytesMut {
        let mut buf = BytesMut::new();
        codec::encode_frame(
            &Message::Response {
                id: RequestId(id),
                result: Ok(value),
            },
            MAX,
            &mut buf,
        )
        .expect("encodes");
        buf
    }

    fn decoded(frame: &[u8]) -> Value {
        match codec::decode(&frame[codec::LENGTH_PREFIX_BYTES..]).expect("decodes") {
            Message::Response { result: Ok(v), .. } => v,
            other => panic!("not a result: {other:?}"),
        }
    }

    /// Replaces reference ids by their order of appearance (two conversions of the same object
    /// hand out different ids).
    fn renumber(v: &mut Value, next: &mut u64) {
        match v {
            Value::Ref(r) => {
                r.id = NetRefId(*next);
                *next += 1;
            }
            Value::Tuple(items)
            | Value::List(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => {
                items.iter_mut().for_each(|v| renumber(v, next));
            }
            Value::Dict(entries) => entries.iter_mut().for_each(|(k, v)| {
                renumber(k, next);
                renumber(v, next);
            }),
            _ => {}
        }
    }

    /// The reference conversion: a `Value` built by the same rules, the way `encode_frame`
    /// encodes results.
    fn reference(reply: &Reply<'_>, table: &mut ObjectTable) -> Value {
        let items = |items: &[Reply<'_>], table: &mut ObjectTable| {
            Value::List(items.iter().map(|r| reference(r, table)).collect())
        };
        match reply {
            Reply::Value(v) => v.clone(),
            Reply::Object(obj, mode) => to_value(obj, *mode, table).expect("converts"),
            Reply::Iter {
                handle,
                items: batch,
                done,
            } => Value::Tuple(vec![
                match handle {
                    Some(h) => to_value(h, ReturnMode::Ref, table).expect("converts"),
                    None => Value::None,
                },
                items(batch, table),
                Value::Bool(*done),
            ]),
            Reply::Next { items: batch, done } => {
                Value::Tuple(vec![items(batch, table), Value::Bool(*done)])
            }
        }
    }

    /// The new path gives exactly the bytes `encode_frame` gives for the equivalent `Value`, and
    /// the references it hands out name the right objects.
    fn check(py: Python<'_>, reply: &Reply<'_>) -> Value {
        let mut table = ObjectTable::default();
        let frame = encode(py, 7, reply, &mut table, MAX)
            .unwrap_or_else(|f| panic!("encode failed: {}", describe(f)));
        let got = decoded(&frame);
        assert_eq!(
            frame,
            frame_of(7, got.clone()),
            "byte-identical to encode_frame"
        );
        let mut refs = Vec::new();
        collect_refs(&got, &mut refs);
        assert_eq!(table.len(), refs.len(), "one table entry per reference");
        for r in &refs {
            let obj = table.get(py, r.id).expect("the reference is live");
            assert_eq!(type_name(&obj), r.type_name);
        }
        let mut other_table = ObjectTable::default();
        let mut want = reference(reply, &mut other_table);
        let mut normalized = got.clone();
        renumber(&mut want, &mut 0);
        renumber(&mut normalized, &mut 0);
        assert_eq!(
            normalized, want,
            "same value as the Value-building conversion"
        );
        if refs.is_empty() {
            let want = reference(reply, &mut other_table);
            assert_eq!(frame, frame_of(7, want));
        }
        got
    }

    fn collect_refs(v: &Value, out: &mut Vec<NetRef>) {
        match v {
            Value::Ref(r) => out.push(r.clone()),
            Value::Tuple(items)
            | Value::List(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => {
                items.iter().for_each(|v| collect_refs(v, out));
            }
            Value::Dict(entries) => entries.iter().for_each(|(k, v)| {
                collect_refs(k, out);
                collect_refs(v, out);
            }),
            _ => {}
        }
    }

    fn object<'py>(py: Python<'py>, expr: &str, mode: ReturnMode) -> Reply<'py> {
        Reply::Object(eval(py, expr), mode)
    }

    const VALUES: &[&str] = &[
        "None",
        "[None, True, False, 0, 1, -1, 127, 128, -129, 2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64, -2**200]",
        "[1.5, -0.0, float('inf'), 1e308, 1+2j, -3.5j, 'héllo ☃', '', b'', b'\\x00\\xff', bytearray(b'ba')]",
        "[MyInt(5), MyInt(2**80), MyInt(-2**80), Color.RED, Color.BIG, F(2.5), C(3-4j), S('sub'), B(b'xy')]",
        "(1, 'a', (), [], {}, set(), frozenset())",
        "{'a': 1, 2: [3, (4, 5)], (6, 7): {'x': {8}}, None: frozenset({9})}",
        "[Point(1, 2), L([1, 2]), T((3,)), D(x=1), collections.OrderedDict(a=1), collections.defaultdict(int, b=2)]",
        "list(range(-1000, 100000, 7))",
        "{str(i): i * 1.5 for i in range(1000)}",
        "bytes(range(256)) * 4096",
        "nested(256)",
        "[[[[[[[[[[[[[[[[[[[['deep']]]]]]]]]]]]]]]]]]]]",
    ];

    #[test]
    fn values_encode_like_the_value_tree() {
        with_py(|py| {
            for expr in VALUES {
                let got = check(py, &object(py, expr, ReturnMode::Value));
                assert_ne!(got.type_name(), "", "{expr}");
            }
            let got = check(
                py,
                &object(py, "[MyInt(2**80), Color.BIG]", ReturnMode::Value),
            );
            assert_eq!(
                got,
                Value::List(vec![
                    Value::BigInt((1u128 << 80).to_string()),
                    Value::BigInt((1u128 << 70).to_string()),
                ])
            );
            let got = check(
                py,
                &object(py, "collections.OrderedDict(a=S('b'))", ReturnMode::Value),
            );
            assert_eq!(
                got,
                Value::Dict(vec![(Value::Str("a".into()), Value::Str("b".into()))])
            );
        });
    }

    #[test]
    fn auto_and_ref_modes_hand_out_references() {
        with_py(|py| {
            for expr in VALUES {
                check(py, &object(py, expr, ReturnMode::Auto));
                check(py, &object(py, expr, ReturnMode::Ref));
            }
            let got = check(
                py,
                &object(
                    py,
                    "(1, 'a', (2.5, None, b'x'), [1], object(), MyInt(3), 2**70)",
                    ReturnMode::Auto,
                ),
            );
            let Value::Tuple(items) = &got else {
                panic!("{got:?}")
            };
            assert_eq!(items[0], Value::Int(1));
            assert_eq!(
                items[2],
                Value::Tuple(vec![
                    Value::Float(2.5),
                    Value::None,
                    Value::bytes(b"x".to_vec())
                ])
            );
            assert_eq!(items[3].type_name(), "builtins.list");
            assert_eq!(items[4].type_name(), "builtins.object");
            assert_eq!(items[5].type_name(), "__main__.MyInt");
            assert_eq!(items[6], Value::BigInt((1u128 << 70).to_string()));
            // Tuples nested past the depth limit go by reference rather than recursing on.
            let got = check(py, &object(py, "nested(1)", ReturnMode::Auto));
            assert_eq!(got.type_name(), "builtins.list");
            let got = check(
                py,
                &object(py, "nested(300, lambda x: (x,))", ReturnMode::Auto),
            );
            assert_eq!(got.type_name(), "tuple");
            let got = check(py, &object(py, "5", ReturnMode::Ref));
            assert_eq!(got.type_name(), "builtins.int");
        });
    }

    #[test]
    fn composite_replies_encode_like_the_value_tree() {
        with_py(|py| {
            let items = || {
                vec![
                    Reply::Value(Value::List(vec![Value::Int(1)])),
                    Reply::Object(eval(py, "(1, [2])"), ReturnMode::Auto),
                    Reply::Object(eval(py, "3"), ReturnMode::Ref),
                ]
            };
            check(
                py,
                &Reply::Iter {
                    handle: Some(eval(py, "iter([1])")),
                    items: items(),
                    done: false,
                },
            );
            check(
                py,
                &Reply::Iter {
                    handle: None,
                    items: Vec::new(),
                    done: true,
                },
            );
            check(
                py,
                &Reply::Next {
                    items: items(),
                    done: true,
                },
            );
            check(py, &Reply::Value(Value::Str("plain".into())));
        });
    }

    /// Both conversions fail the same way, and the new one leaves nothing behind.
    fn failure(py: Python<'_>, expr: &str, mode: ReturnMode) -> String {
        let obj = eval(py, expr);
        let mut table = ObjectTable::default();
        let f = encode(py, 1, &Reply::Object(obj.clone(), mode), &mut table, MAX)
            .err()
            .unwrap_or_else(|| panic!("{expr} should fail"));
        assert_eq!(table.len(), 0, "references handed out are withdrawn");
        let EncodeFailure::Py(e) = f else {
            panic!("{expr}: {}", describe(f))
        };
        let built = to_value(&obj, mode, &mut table).expect_err("fails too");
        assert_eq!(table.len(), 0);
        assert_eq!(e.to_string(), built.to_string());
        e.to_string()
    }

    #[test]
    fn uncopyable_objects_are_named_with_their_path() {
        with_py(|py| {
            let msg = failure(py, "[1, {'a': (2, object())}]", ReturnMode::Value);
            assert!(
                msg.starts_with(
                    "TypeError: cannot copy an object of type 'builtins.object' by value (at \
                     result[1]['a'][1]); only None"
                ),
                "{msg}"
            );
            let msg = failure(py, "object()", ReturnMode::Value);
            assert!(
                msg.starts_with(
                    "TypeError: cannot copy an object of type 'builtins.object' by value; only"
                ),
                "{msg}"
            );
            let msg = failure(py, "{1: 2, 'k': {3: iter([])}}", ReturnMode::Value);
            assert!(
                msg.contains("'builtins.list_iterator' by value (at result['k'][3])"),
                "{msg}"
            );
            let msg = failure(py, "nested(300)", ReturnMode::Value);
            assert!(
                msg.starts_with(&format!(
                    "RecursionError: cannot copy by value: nesting deeper than 256 levels at result{}",
                    "[0]".repeat(257)
                )),
                "{msg}"
            );
            let msg = failure(py, "['ok', '\\ud800']", ReturnMode::Value);
            assert!(msg.starts_with("UnicodeEncodeError"), "{msg}");
            // In auto mode, references handed out before the failure are withdrawn.
            let msg = failure(py, "(object(), [1], '\\ud800')", ReturnMode::Auto);
            assert!(msg.starts_with("UnicodeEncodeError"), "{msg}");
        });
    }

    #[test]
    fn large_bytes_are_sent_from_the_object() {
        with_py(|py| {
            let mut table = ObjectTable::default();
            let expr =
                "[b'x' * 65535, b'y' * 65536, B(b'z' * 100000), bytearray(70000), 'w' * 70000]";
            for mode in [ReturnMode::Value, ReturnMode::Auto] {
                let reply = object(py, &format!("tuple({expr})"), mode);
                let (_, shared) = encode_counting(py, 1, &reply, &mut table, MAX)
                    .unwrap_or_else(|f| panic!("{}", describe(f)));
                // `bytes` from 64 KiB on, subclasses too in Value mode (Auto sends them by
                // reference); never a bytearray (mutable) or a str.
                let want = if mode == ReturnMode::Value { 2 } else { 1 };
                assert_eq!(shared, want, "{mode:?}");
                check(py, &reply);
            }
            // Too large: what was shared is dropped with the rest.
            let reply = object(py, "(b'a' * 70000, b'b' * 70000)", ReturnMode::Value);
            assert!(matches!(
                encode(py, 1, &reply, &mut table, 100_000),
                Err(EncodeFailure::TooLarge { .. })
            ));
        });
    }

    #[test]
    fn a_result_too_large_leaves_nothing_behind() {
        with_py(|py| {
            let reply = object(py, "(object(), b'x' * 1000, object())", ReturnMode::Auto);
            let mut table = ObjectTable::default();
            let full = encode(py, 3, &reply, &mut table, MAX)
                .unwrap_or_else(|f| panic!("{}", describe(f)))
                .len()
                - codec::LENGTH_PREFIX_BYTES;
            let mut table = ObjectTable::default();
            match encode(py, 3, &reply, &mut table, 100) {
                Err(EncodeFailure::TooLarge { size, max: 100 }) => assert_eq!(size, full),
                Err(f) => panic!("{}", describe(f)),
                Ok(_) => panic!("should not fit"),
            }
            assert_eq!(table.len(), 0, "references handed out are withdrawn");
        });
    }
}
