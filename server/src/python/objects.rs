//! A connection's table of the objects its client holds references to.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use rpyc_protocol::{NetRef, NetRefId, ServerError};

/// Objects handed to one client by reference, keyed by the id the client knows them by.
///
/// Every hand-out gets a fresh id, unique in the whole process and starting from a random base
/// at each start, so a client's release of one reference never invalidates another reference
/// to the same object, and a reference from another connection (or from before a server
/// restart) can never name a live object by accident: it is an unknown-reference error.
#[derive(Debug, Default)]
pub(super) struct ObjectTable {
    objects: HashMap<NetRefId, Py<PyAny>>,
}

/// The next reference id of this process.
fn next_id() -> NetRefId {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let mut seed = [0u8; 4];
        // Without randomness, fall back to the clock: still different across restarts.
        let base = match getrandom::fill(&mut seed) {
            Ok(()) => u64::from(u32::from_le_bytes(seed)),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| u64::from(d.subsec_nanos())),
        };
        AtomicU64::new((base << 32) | 1)
    });
    NetRefId(next.fetch_add(1, Ordering::Relaxed))
}

impl ObjectTable {
    /// Stores an object and returns the reference that names it.
    pub(super) fn insert(&mut self, obj: &Bound<'_, PyAny>) -> NetRef {
        let id = next_id();
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
