//! A connection's table of the objects its client holds references to.

use std::collections::HashMap;

use pyo3::prelude::*;
use rpyc_protocol::{NetRef, NetRefId, ServerError};

/// Objects handed to one client by reference, keyed by the id the client knows them by.
///
/// Every hand-out gets a fresh id (ids are never reused), so a client's release of one
/// reference never invalidates another reference to the same object.
#[derive(Debug, Default)]
pub(super) struct ObjectTable {
    next: u64,
    objects: HashMap<NetRefId, Py<PyAny>>,
}

impl ObjectTable {
    /// Stores an object and returns the reference that names it.
    pub(super) fn insert(&mut self, obj: &Bound<'_, PyAny>) -> NetRef {
        self.next += 1;
        let id = NetRefId(self.next);
        self.objects.insert(id, obj.clone().unbind());
        NetRef {
            id,
            type_name: type_name(obj),
        }
    }

    /// The object a reference names.
    pub(super) fn get<'py>(
        &self,
        py: Python<'py>,
        id: NetRefId,
    ) -> Result<Bound<'py, PyAny>, ServerError> {
        self.objects
            .get(&id)
            .map(|o| o.bind(py).clone())
            .ok_or(ServerError::UnknownReference(id))
    }

    /// Forgets references (the objects are freed if nothing else holds them). Must be called
    /// with the GIL held, which the `Python` token proves.
    pub(super) fn release(&mut self, _py: Python<'_>, ids: &[NetRefId]) {
        for id in ids {
            self.objects.remove(id);
        }
    }

    /// Forgets every reference (connection closed). GIL held, as for [`release`](Self::release).
    pub(super) fn clear(&mut self, _py: Python<'_>) {
        self.objects.clear();
    }

    /// How many references are live.
    pub(super) fn len(&self) -> usize {
        self.objects.len()
    }
}

/// `module.QualName` of an object's type.
pub(super) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let ty = obj.get_type();
    match (ty.module(), ty.qualname()) {
        (Ok(module), Ok(qualname)) => format!("{module}.{qualname}"),
        (Err(_), Ok(qualname)) => qualname.to_string(),
        _ => "builtins.object".to_owned(),
    }
}
