//! Object references ("netrefs"): how a remote Python object is named on the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The id of one reference in a connection's object table.
///
/// Ids are issued by the side that owns the object and are never reused within a connection, so
/// a released id can be told apart from a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetRefId(pub u64);

impl fmt::Display for NetRefId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A reference to an object that stays on the side that owns it: its id plus its type name.
///
/// The type name is the Python qualified name (`builtins.dict`, `os.PathLike`, …); it is carried
/// so that errors and `Debug` output can say what the reference points to without a round trip.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetRef {
    /// The id in the owner's object table.
    pub id: NetRefId,
    /// Qualified Python type name of the object.
    pub type_name: String,
}

impl fmt::Display for NetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<remote {} {}>", self.type_name, self.id)
    }
}
