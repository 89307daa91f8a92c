//! [`Value`] ↔ Python objects.

use pyo3::exceptions::{PyRecursionError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet,
    PyString, PyTuple,
};
use rpyc_protocol::{ReturnMode, ServerError, Value};

use super::objects::{ObjectTable, type_name};

/// Nesting deeper than this is refused when copying by value (a self-referencing list would
/// otherwise recurse forever).
const MAX_DEPTH: usize = 256;

/// Why a conversion failed.
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

/// Converts a Python object for the wire, by the rules of `mode`.
pub(super) fn to_value(
    obj: &Bound<'_, PyAny>,
    mode: ReturnMode,
    table: &mut ObjectTable,
) -> Result<Value, PyErr> {
    match mode {
        ReturnMode::Ref => Ok(Value::Ref(table.insert(obj))),
        ReturnMode::Value => copy(obj, 0, &mut Vec::new()),
        ReturnMode::Auto => auto(obj, table),
    }
}

/// The scalar types that are copied in every mode.
fn scalar(obj: &Bound<'_, PyAny>) -> Result<Option<Value>, PyErr> {
    Ok(Some(if obj.is_none() {
        Value::None
    } else if let Ok(b) = obj.cast_exact::<PyBool>() {
        Value::Bool(b.is_true())
    } else if obj.is_exact_instance_of::<PyInt>() {
        int(obj)?
    } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
        Value::Float(f.value())
    } else if let Ok(s) = obj.cast_exact::<PyString>() {
        Value::Str(s.to_str()?.to_owned())
    } else if let Ok(b) = obj.cast_exact::<PyBytes>() {
        Value::Bytes(b.as_bytes().to_vec())
    } else if let Ok(c) = obj.cast_exact::<PyComplex>() {
        Value::Complex {
            re: c.real(),
            im: c.imag(),
        }
    } else {
        return Ok(None);
    }))
}

fn int(obj: &Bound<'_, PyAny>) -> Result<Value, PyErr> {
    match obj.extract::<i64>() {
        Ok(i) => Ok(Value::Int(i)),
        Err(_) => Ok(Value::BigInt(obj.str()?.to_str()?.to_owned())),
    }
}

/// RPyC's by-reference rules: immutable simple values (and tuples/frozensets of them) by value,
/// everything else (including subclasses of the simple types) by reference.
fn auto(obj: &Bound<'_, PyAny>, table: &mut ObjectTable) -> Result<Value, PyErr> {
    if let Some(v) = scalar(obj)? {
        return Ok(v);
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        let items = t
            .iter()
            .map(|item| auto(&item, table))
            .collect::<Result<_, _>>()?;
        return Ok(Value::Tuple(items));
    }
    Ok(Value::Ref(table.insert(obj)))
}

/// A deep copy; `path` names where in the structure we are, for the error message.
fn copy(obj: &Bound<'_, PyAny>, depth: usize, path: &mut Vec<String>) -> Result<Value, PyErr> {
    if depth > MAX_DEPTH {
        return Err(PyRecursionError::new_err(format!(
            "cannot copy by value: nesting deeper than {MAX_DEPTH} levels at {}",
            render_path(path)
        )));
    }
    if let Some(v) = scalar(obj)? {
        return Ok(v);
    }
    let seq = |iter: &mut dyn Iterator<Item = Bound<'_, PyAny>>,
               path: &mut Vec<String>|
     -> Result<Vec<Value>, PyErr> {
        let mut out = Vec::new();
        for (i, item) in iter.enumerate() {
            path.push(format!("[{i}]"));
            out.push(copy(&item, depth + 1, path)?);
            path.pop();
        }
        Ok(out)
    };
    // Subclasses of the containers copy as their base type (as pickle-free RPyC `obtain` users
    // expect from a dict subclass such as OrderedDict or defaultdict).
    if let Ok(t) = obj.cast::<PyTuple>() {
        return Ok(Value::Tuple(seq(&mut t.iter(), path)?));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return Ok(Value::List(seq(&mut l.iter(), path)?));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut out = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = copy(&k, depth + 1, path)?;
            path.push(format!(
                "[{}]",
                k.repr().map(|r| r.to_string()).unwrap_or_default()
            ));
            let value = copy(&v, depth + 1, path)?;
            path.pop();
            out.push((key, value));
        }
        return Ok(Value::Dict(out));
    }
    if let Ok(s) = obj.cast::<PySet>() {
        return Ok(Value::Set(seq(&mut s.iter(), path)?));
    }
    if let Ok(s) = obj.cast::<PyFrozenSet>() {
        return Ok(Value::FrozenSet(seq(&mut s.iter(), path)?));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Value::Bytes(b.to_vec()));
    }
    // Subclasses of the scalar types (IntEnum, str subclasses, …) copy as their base value.
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.is_truthy()?));
    }
    if obj.is_instance_of::<PyInt>() {
        return int(obj);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Str(s.to_str()?.to_owned()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "cannot copy an object of type '{}' by value{}; only None, bool, int, float, complex, \
         str, bytes, tuple, list, dict, set and frozenset can be copied (ask for a reference \
         instead)",
        type_name(obj),
        if path.is_empty() {
            String::new()
        } else {
            format!(" (at {})", render_path(path))
        }
    )))
}

fn render_path(path: &[String]) -> String {
    if path.is_empty() {
        "the top level".to_owned()
    } else {
        format!("result{}", path.concat())
    }
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
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
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
