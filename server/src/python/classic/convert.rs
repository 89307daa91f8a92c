//! Brine values ↔ Python objects, boxing and unboxing by RPyC's rules, and `id_pack`s.

use pyo3::exceptions::{PyKeyError, PyRecursionError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyComplex, PyFloat, PyFrozenSet, PyInt, PySlice, PyString, PyTuple,
};
use rpyc_protocol::brine::message::label;
use rpyc_protocol::brine::{MAX_DEPTH, Value};

use super::Conn;
use crate::python::convert::new_bytes;

/// Key of a connection's object table: `(class_id, instance_id)` of the `id_pack`.
pub(super) type ObjectKey = (i64, i64);

/// The brine value of a brine-dumpable object, `None` for anything that must go by reference.
///
/// The type tests are exact, as in `rpyc.core.brine.dumpable`: an `IntEnum`, a `str` subclass or
/// a namedtuple is not dumpable.
pub(super) fn dumpable(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Option<Value>> {
    if depth > MAX_DEPTH {
        return Err(PyRecursionError::new_err(
            "value nested too deeply to send to an RPyC client",
        ));
    }
    let py = obj.py();
    Ok(Some(if obj.is_none() {
        Value::None
    } else if let Ok(b) = obj.cast_exact::<PyBool>() {
        Value::Bool(b.is_true())
    } else if obj.is_exact_instance_of::<PyInt>() {
        match obj.extract::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(obj.str()?.to_str()?.to_owned()),
        }
    } else if let Ok(s) = obj.cast_exact::<PyString>() {
        Value::Str(s.to_str()?.to_owned())
    } else if let Ok(b) = obj.cast_exact::<PyBytes>() {
        Value::Bytes(b.as_bytes().to_vec())
    } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
        Value::Float(f.value())
    } else if let Ok(t) = obj.cast_exact::<PyTuple>() {
        match dumpable_all(t.iter(), depth)? {
            Some(items) => Value::Tuple(items),
            None => return Ok(None),
        }
    } else if let Ok(c) = obj.cast_exact::<PyComplex>() {
        Value::Complex {
            re: c.real(),
            im: c.imag(),
        }
    } else if obj.is(py.NotImplemented()) {
        Value::NotImplemented
    } else if obj.is(py.Ellipsis()) {
        Value::Ellipsis
    } else if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
        match dumpable_all(s.iter(), depth)? {
            Some(items) => Value::FrozenSet(items),
            None => return Ok(None),
        }
    } else if obj.is_exact_instance_of::<PySlice>() {
        let parts = ["start", "stop", "step"]
            .into_iter()
            .map(|name| obj.getattr(name))
            .collect::<PyResult<Vec<_>>>()?;
        match dumpable_all(parts.into_iter(), depth)?.map(<[Value; 3]>::try_from) {
            Some(Ok(parts)) => Value::Slice(Box::new(parts)),
            _ => return Ok(None),
        }
    } else {
        return Ok(None);
    }))
}

/// The brine values of `items` (one level deeper than `depth`), or `None` if any of them has
/// none.
fn dumpable_all<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    depth: usize,
) -> PyResult<Option<Vec<Value>>> {
    let mut out = Vec::new();
    for item in items {
        match dumpable(&item, depth + 1)? {
            Some(v) => out.push(v),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// The Python object of a brine value.
pub(super) fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    let seq = |items: &[Value]| -> PyResult<Vec<Bound<'py, PyAny>>> {
        items.iter().map(|v| to_python(py, v)).collect()
    };
    Ok(match value {
        Value::None => py.None().into_bound(py),
        Value::NotImplemented => py.NotImplemented().into_bound(py),
        Value::Ellipsis => py.Ellipsis().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => {
            let Ok(int) = i.into_pyobject(py);
            int.into_any()
        }
        Value::BigInt(s) => py.get_type::<PyInt>().call1((s.as_str(),))?,
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Complex { re, im } => PyComplex::from_doubles(py, *re, *im).into_any(),
        Value::Bytes(b) => new_bytes(py, b)?.into_any(),
        Value::Str(s) => PyString::new(py, s).into_any(),
        Value::Tuple(items) => PyTuple::new(py, seq(items)?)?.into_any(),
        Value::FrozenSet(items) => PyFrozenSet::new(py, seq(items)?)?.into_any(),
        Value::Slice(parts) => {
            let [start, stop, step] = parts.as_ref();
            let (start, stop, step) = (
                to_python(py, start)?,
                to_python(py, stop)?,
                to_python(py, step)?,
            );
            // SAFETY: GIL held; the three are live objects; PySlice_New returns a new reference
            // or null with an exception set.
            unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PySlice_New(start.as_ptr(), stop.as_ptr(), step.as_ptr()),
                )?
            }
        }
    })
}

/// `id(obj)` as the int that goes into an `id_pack`.
fn id_of(obj: &Bound<'_, PyAny>) -> i64 {
    // Addresses of live objects are below 2^63 on every platform CPython supports.
    obj.as_ptr() as usize as i64
}

/// `rpyc.lib.get_id_pack` for a local (non-netref) object: `(name_pack, class_id,
/// instance_id)`; classes have instance id 0.
pub(super) fn id_pack(obj: &Bound<'_, PyAny>) -> PyResult<(String, i64, i64)> {
    let py = obj.py();
    let text = |o: PyResult<Bound<'_, PyAny>>| -> String {
        o.and_then(|o| o.str().map(|s| s.to_string()))
            .unwrap_or_else(|_| "None".to_owned())
    };
    let ty = obj.get_type();
    // SAFETY: GIL held; both checks only read the type's flags.
    let is_module = unsafe { ffi::PyModule_Check(obj.as_ptr()) } != 0;
    let is_class = unsafe { ffi::PyType_Check(obj.as_ptr()) } != 0;
    if is_module {
        let name = obj
            .getattr("__name__")
            .unwrap_or_else(|_| py.None().into_bound(py));
        let name_text = text(Ok(name.clone()));
        let name_pack = if name_text == "module" {
            // Stock's own (literal, not formatted) name for such a module.
            "{obj.__module__}.{obj_name}".to_owned()
        } else if py
            .import("sys")?
            .getattr("modules")?
            .contains(&name)
            .unwrap_or(false)
        {
            name_text
        } else {
            let cls = obj
                .getattr("__class__")
                .unwrap_or_else(|_| ty.clone().into_any());
            format!("{}.{name_text}", text(cls.getattr("__module__")))
        };
        return Ok((name_pack, id_of(ty.as_any()), id_of(obj)));
    }
    if is_class {
        let name_pack = format!(
            "{}.{}",
            text(obj.getattr("__module__")),
            text(obj.getattr("__name__"))
        );
        return Ok((name_pack, id_of(obj), 0));
    }
    let cls = obj
        .getattr("__class__")
        .unwrap_or_else(|_| ty.clone().into_any());
    let name_pack = format!(
        "{}.{}",
        text(cls.getattr("__module__")),
        text(cls.getattr("__name__"))
    );
    Ok((name_pack, id_of(ty.as_any()), id_of(obj)))
}

fn id_pack_value((name, class_id, instance_id): (String, i64, i64)) -> Value {
    Value::Tuple(vec![
        Value::Str(name),
        Value::Int(class_id),
        Value::Int(instance_id),
    ])
}

/// The table key named by an `id_pack` value.
pub(super) fn object_key(id_pack: &Value) -> Option<ObjectKey> {
    match id_pack.as_tuple()? {
        [_, class_id, instance_id] => Some((class_id.as_int()?, instance_id.as_int()?)),
        _ => None,
    }
}

impl Conn {
    /// `Connection._box`: by value if brine-dumpable, a tuple item by item, a netref of this
    /// connection as the client's own reference, anything else by reference (registered in the
    /// object table).
    pub(super) fn box_value(&self, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
        if let Some(v) = dumpable(obj, depth)? {
            return Ok(Value::Tuple(vec![Value::Int(label::VALUE), v]));
        }
        let py = obj.py();
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            let items = t
                .iter()
                .map(|item| self.box_value(&item, depth + 1))
                .collect::<PyResult<Vec<_>>>()?;
            return Ok(Value::Tuple(vec![
                Value::Int(label::TUPLE),
                Value::Tuple(items),
            ]));
        }
        let state = self.state(py)?;
        if obj.is_instance(state.netref_base.bind(py))? {
            // (ours, id_pack) for a netref; ours → the client's own object.
            let found = state
                .netref_id_pack
                .bind(py)
                .call1((obj, state.client.bind(py)))?;
            if !found.is_none() {
                let (ours, pack): (bool, Bound<'_, PyAny>) = found.extract()?;
                let pack_value = dumpable(&pack, 0)?.ok_or_else(|| {
                    PyValueError::new_err("a netref's id_pack is not brine-dumpable")
                })?;
                if ours {
                    return Ok(Value::Tuple(vec![Value::Int(label::LOCAL_REF), pack_value]));
                }
                // A netref of another connection: handed on as an object of ours, under its
                // original id_pack (as stock does for chained connections).
                let key = object_key(&pack_value)
                    .ok_or_else(|| PyValueError::new_err("malformed netref id_pack"))?;
                self.register(key, obj);
                return Ok(Value::Tuple(vec![
                    Value::Int(label::REMOTE_REF),
                    pack_value,
                ]));
            }
        }
        let pack = id_pack(obj)?;
        self.register((pack.1, pack.2), obj);
        Ok(Value::Tuple(vec![
            Value::Int(label::REMOTE_REF),
            id_pack_value(pack),
        ]))
    }

    /// Stores an object sent by reference: a new entry counts 0, each further send adds 1
    /// (`RefCountingColl.add`).
    fn register(&self, key: ObjectKey, obj: &Bound<'_, PyAny>) {
        let mut objects = super::lock(&self.objects);
        match objects.get_mut(&key) {
            Some(entry) => entry.1 += 1,
            None => {
                objects.insert(key, (obj.clone().unbind(), 0));
            }
        }
    }

    /// The object the client names by `id_pack` (a `LOCAL_REF` from its side).
    pub(super) fn local_object<'py>(
        &self,
        py: Python<'py>,
        id_pack: &Value,
    ) -> PyResult<Bound<'py, PyAny>> {
        let found = object_key(id_pack).and_then(|key| {
            super::lock(&self.objects)
                .get(&key)
                .map(|(obj, _)| obj.clone_ref(py))
        });
        match found {
            Some(obj) => Ok(obj.into_bound(py)),
            None => Err(PyKeyError::new_err(to_python(py, id_pack)?.unbind())),
        }
    }

    /// `RefCountingColl.decref`: drops the entry once every send has been released.
    pub(super) fn decref(&self, py: Python<'_>, id_pack: &Value, count: i64) -> PyResult<()> {
        let key = object_key(id_pack);
        let removed = {
            let mut objects = super::lock(&self.objects);
            match key.and_then(|k| objects.get_mut(&k).map(|e| (k, e))) {
                None => None,
                Some((key, entry)) => {
                    if (entry.1 as i128) < i128::from(count) {
                        objects.remove(&key).map(Some)
                    } else {
                        entry.1 -= count.max(0) as u64;
                        Some(None)
                    }
                }
            }
        };
        match removed {
            // Freed here, outside the lock: a __del__ may run and call back into us.
            Some(entry) => {
                drop(entry);
                Ok(())
            }
            None => Err(PyKeyError::new_err(to_python(py, id_pack)?.unbind())),
        }
    }

    /// `Connection._unbox`.
    pub(super) fn unbox<'py>(
        &self,
        py: Python<'py>,
        boxed: &Value,
        depth: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        if depth > MAX_DEPTH {
            return Err(PyRecursionError::new_err("boxed value nested too deeply"));
        }
        let Some([label, payload]) = boxed
            .as_tuple()
            .and_then(|t| <&[Value; 2]>::try_from(t).ok())
        else {
            return Err(PyValueError::new_err(format!(
                "invalid boxed value {}",
                short(boxed)
            )));
        };
        match label.as_int() {
            Some(label::VALUE) => to_python(py, payload),
            Some(label::TUPLE) => {
                let items = payload.as_tuple().ok_or_else(|| {
                    PyValueError::new_err(format!("invalid boxed tuple {}", short(payload)))
                })?;
                let items = items
                    .iter()
                    .map(|item| self.unbox(py, item, depth + 1))
                    .collect::<PyResult<Vec<_>>>()?;
                Ok(PyTuple::new(py, items)?.into_any())
            }
            Some(label::LOCAL_REF) => self.local_object(py, payload),
            Some(label::REMOTE_REF) => {
                let pack = to_python(py, payload)?;
                self.state(py)?
                    .client
                    .bind(py)
                    .call_method1("proxy", (pack,))
            }
            _ => Err(PyValueError::new_err(format!(
                "invalid label {}",
                short(label)
            ))),
        }
    }
}

/// A value for an error message, cut short.
fn short(value: &Value) -> String {
    let mut s = value.to_string();
    if s.len() > 120 {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}
