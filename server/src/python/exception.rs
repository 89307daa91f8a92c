//! `PyErr` → [`RemoteException`].

use pyo3::prelude::*;
use rpyc_protocol::RemoteException;

use super::init::SUPPORT;

/// Converts a Python exception into its wire form: qualified type name, message, MRO and the
/// traceback text as Python prints it.
pub(super) fn to_remote(py: Python<'_>, err: &PyErr) -> RemoteException {
    let value = err.value(py);
    // One call into Python for all four parts (a call each cost a few microseconds per
    // exception); if it fails, each part is worked out on its own.
    let described = SUPPORT.get(py).and_then(|s| {
        s.bind(py)
            .call_method1("describe_exception", (value, err.traceback(py)))
            .and_then(|v| v.extract::<(String, String, String, Vec<String>)>())
            .ok()
    });
    if let Some((type_name, message, traceback, mro)) = described {
        return RemoteException {
            type_name,
            message,
            traceback,
            mro,
        };
    }
    let type_name = support_call(py, "qualified_name", value.get_type().as_any())
        .and_then(|v| v.extract::<String>().ok())
        .unwrap_or_else(|| {
            value
                .get_type()
                .qualname()
                .map(|q| q.to_string())
                .unwrap_or_else(|_| "BaseException".to_owned())
        });
    let message = value
        .str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "<exception str() failed>".to_owned());
    let traceback = format!("{type_name}: {message}\n");
    let mro = support_call(py, "exception_mro", value.as_any())
        .and_then(|v| v.extract::<Vec<String>>().ok())
        .unwrap_or_default();
    RemoteException {
        type_name,
        message,
        traceback,
        mro,
    }
}

/// One line describing a Python error, for server-side error messages.
pub(super) fn describe(py: Python<'_>, err: &PyErr) -> String {
    let remote = to_remote(py, err);
    if remote.traceback.is_empty() {
        format!("{}: {}", remote.type_name, remote.message)
    } else {
        remote.traceback.trim_end().to_owned()
    }
}

fn support_call<'py>(
    py: Python<'py>,
    name: &str,
    arg: &Bound<'py, PyAny>,
) -> Option<Bound<'py, PyAny>> {
    SUPPORT
        .get(py)
        .and_then(|s| s.bind(py).call_method1(name, (arg,)).ok())
}
