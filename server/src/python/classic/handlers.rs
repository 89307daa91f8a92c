//! The `HANDLE_*` requests a stock client sends, as `rpyc.core.protocol.Connection` serves them
//! under the classic configuration (every attribute allowed, pickling allowed).

use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use rpyc_protocol::brine::Value;
use rpyc_protocol::brine::message::{handler, label};

use super::Conn;

/// The attribute hooks a type may define to control access (`Service` does).
#[derive(Clone, Copy)]
enum Access {
    Get,
    Set,
    Del,
}

impl Access {
    fn hook(self) -> &'static str {
        match self {
            Access::Get => "_rpyc_getattr",
            Access::Set => "_rpyc_setattr",
            Access::Del => "_rpyc_delattr",
        }
    }
}

impl Conn {
    /// Runs one request; the result is boxed by the caller.
    pub(super) fn handle<'py>(
        &self,
        py: Python<'py>,
        handler: i64,
        boxed_args: &Value,
    ) -> PyResult<Bound<'py, PyAny>> {
        // Requests whose arguments are used as plain values are served without unboxing
        // (HANDLE_DEL must not look up the object as an argument would: it may be gone).
        match handler {
            handler::DEL => return self.handle_del(py, boxed_args),
            handler::INSPECT => {
                let args = self.unbox(py, boxed_args, 0)?;
                let args = args.cast::<PyTuple>()?;
                let id_pack =
                    super::convert::dumpable(&arg(args, 0, "INSPECT")?, 0)?.unwrap_or(Value::None);
                let obj = self.local_object(py, &id_pack)?;
                return self.support_call(py, "handle_inspect", (obj,));
            }
            _ => {}
        }
        let args = self.unbox(py, boxed_args, 0)?;
        let args = args
            .cast_into::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("the arguments of a request must be a tuple"))?;
        let name = handler::name(handler);
        let a = |i: usize| arg(&args, i, name);
        let opt = |i: usize| args.get_item(i).ok();
        let state = self.state(py)?;
        match handler {
            handler::PING => a(0),
            handler::CLOSE => Ok(py.None().into_bound(py)),
            handler::GETROOT => Ok(state.root.bind(py).clone()),
            handler::GETATTR => getattr(&a(0)?, &a(1)?),
            handler::SETATTR => {
                let obj = a(0)?;
                access(py, &obj, &a(1)?, Access::Set, Some(&a(2)?))?;
                Ok(py.None().into_bound(py))
            }
            handler::DELATTR => {
                let obj = a(0)?;
                access(py, &obj, &a(1)?, Access::Del, None)?;
                Ok(py.None().into_bound(py))
            }
            handler::CALL => call(&a(0)?, &a(1)?, opt(2)),
            handler::CALLATTR => call(&getattr(&a(0)?, &a(1)?)?, &a(2)?, opt(3)),
            handler::REPR => Ok(a(0)?.repr()?.into_any()),
            handler::STR => Ok(a(0)?.str()?.into_any()),
            handler::HASH => Ok(a(0)?.hash()?.into_pyobject(py)?.into_any()),
            handler::DIR => Ok(PyTuple::new(py, a(0)?.dir()?)?.into_any()),
            handler::CMP => {
                let op = opt(2).unwrap_or_else(|| PyString::new(py, "__cmp__").into_any());
                self.support_call(py, "handle_cmp", (a(0)?, a(1)?, op))
            }
            handler::PICKLE => self.support_call(py, "handle_pickle", (a(0)?, a(1)?)),
            handler::BUFFITER => self.support_call(py, "handle_buffiter", (a(0)?, a(1)?)),
            handler::CTXEXIT => self.support_call(py, "handle_ctxexit", (a(0)?, a(1)?)),
            handler::OLDSLICING => self.support_call(
                py,
                "handle_oldslicing",
                (a(0)?, a(1)?, a(2)?, a(3)?, a(4)?, a(5)?),
            ),
            handler::INSTANCECHECK => self.support_call(
                py,
                "handle_instancecheck",
                (state.client.bind(py), a(0)?, a(1)?),
            ),
            _ => Err(PyKeyError::new_err(handler)),
        }
    }

    fn support_call<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.state(py)?.support.bind(py).getattr(name)?.call1(args)
    }

    /// `HANDLE_DEL(obj, count=1)`: the client dropped its proxy, which it had received `count`
    /// times.
    fn handle_del<'py>(&self, py: Python<'py>, boxed_args: &Value) -> PyResult<Bound<'py, PyAny>> {
        // The usual shape: (LABEL_TUPLE, ((LABEL_LOCAL_REF, id_pack), (LABEL_VALUE, count))).
        let fast = boxed_args.as_tuple().and_then(|t| match t {
            [l, items] if l.as_int() == Some(label::TUPLE) => match items.as_tuple()? {
                [obj] => Some((obj, 1)),
                [obj, count] => match count.as_tuple()? {
                    [l, n] if l.as_int() == Some(label::VALUE) => Some((obj, n.as_int()?)),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        });
        let fast = fast.and_then(|(obj, count)| match obj.as_tuple()? {
            [l, id_pack] if l.as_int() == Some(label::LOCAL_REF) => Some((id_pack, count)),
            _ => None,
        });
        match fast {
            Some((id_pack, count)) => self.decref(py, id_pack, count)?,
            None => {
                // Anything else: unbox as stock does, and release the object's id_pack.
                let args = self.unbox(py, boxed_args, 0)?;
                let args = args.cast::<PyTuple>()?;
                let obj = arg(args, 0, "DEL")?;
                let count: i64 = match args.get_item(1) {
                    Ok(c) => c.extract()?,
                    Err(_) => 1,
                };
                let (name, class_id, instance_id) = super::convert::id_pack(&obj)?;
                let pack = Value::Tuple(vec![
                    Value::Str(name),
                    Value::Int(class_id),
                    Value::Int(instance_id),
                ]);
                self.decref(py, &pack, count)?;
            }
        }
        Ok(py.None().into_bound(py))
    }
}

/// Argument `i` of a handler, or the `TypeError` Python gives for a missing one.
fn arg<'py>(args: &Bound<'py, PyTuple>, i: usize, handler: &str) -> PyResult<Bound<'py, PyAny>> {
    args.get_item(i).map_err(|_| {
        PyTypeError::new_err(format!(
            "_handle_{}() missing required argument {} ({} given)",
            handler.to_lowercase(),
            i + 1,
            args.len()
        ))
    })
}

/// `getattr` with stock's access rules.
fn getattr<'py>(obj: &Bound<'py, PyAny>, name: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    access(obj.py(), obj, name, Access::Get, None)
}

/// `Connection._access_attr`: the name as a str (bytes are decoded), then the type's hook if it
/// defines one, else the plain builtin.
fn access<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
    what: Access,
    value: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let name = if let Ok(s) = name.cast_exact::<PyString>() {
        s.clone()
    } else if let Ok(b) = name.cast_exact::<PyBytes>() {
        PyString::new(
            py,
            std::str::from_utf8(b.as_bytes())
                .map_err(|e| pyo3::exceptions::PyUnicodeDecodeError::new_err(e.to_string()))?,
        )
    } else {
        return Err(PyTypeError::new_err("name must be a string"));
    };
    if let Some(hook) = hook(obj, what.hook())? {
        return match value {
            Some(v) => hook.call1((obj, name, v)),
            None => hook.call1((obj, name)),
        };
    }
    match what {
        Access::Get => obj.getattr(name),
        Access::Set => {
            obj.setattr(
                name,
                value.map_or_else(|| py.None().into_bound(py), Clone::clone),
            )?;
            Ok(py.None().into_bound(py))
        }
        Access::Del => {
            obj.delattr(name)?;
            Ok(py.None().into_bound(py))
        }
    }
}

/// `getattr(type(obj), hook, None)`. Built-in (static) types cannot define one, so only
/// classes created in Python pay for the lookup.
fn hook<'py>(obj: &Bound<'py, PyAny>, hook: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    let ty = obj.get_type();
    // SAFETY: GIL held; reads the type's flags.
    let flags = unsafe { ffi::PyType_GetFlags(ty.as_type_ptr()) };
    if flags & ffi::Py_TPFLAGS_HEAPTYPE == 0 {
        return Ok(None);
    }
    let found = ty.getattr_opt(hook)?;
    Ok(found.filter(|h| !h.is_none()))
}

/// `obj(*args, **dict(kwargs))`.
fn call<'py>(
    obj: &Bound<'py, PyAny>,
    args: &Bound<'py, PyAny>,
    kwargs: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let args = match args.cast::<PyTuple>() {
        Ok(t) => t.clone(),
        Err(_) => PyTuple::new(py, args.try_iter()?.collect::<PyResult<Vec<_>>>()?)?,
    };
    let kwargs = match kwargs {
        Some(k) if k.is_truthy()? => Some(PyDict::from_sequence(&k)?),
        _ => None,
    };
    obj.call(args, kwargs.as_ref())
}
