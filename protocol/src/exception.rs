//! Exceptions raised by remote Python code, as they travel on the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An exception raised by Python code on the remote side.
///
/// `Display` prints it the way Python prints an uncaught exception: the remote traceback (which
/// already ends with the `Type: message` line), or just `Type: message` when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteException {
    /// Qualified name of the exception type: `ZeroDivisionError` for builtins, otherwise
    /// `module.QualName` (for example `json.decoder.JSONDecodeError`).
    pub type_name: String,
    /// `str(exception)`.
    pub message: String,
    /// The traceback as Python's `traceback.format_exception` prints it, frames of the client's
    /// code only.
    pub traceback: String,
    /// Qualified names of the exception's type and all its base classes (its MRO), most derived
    /// first, so a client can test "is this an `OSError`?" by name.
    pub mro: Vec<String>,
}

impl RemoteException {
    /// Whether the exception is an instance of the named class (qualified name as in
    /// [`type_name`](Self::type_name); for example `"ArithmeticError"` matches a
    /// `ZeroDivisionError`).
    pub fn is_instance(&self, type_name: &str) -> bool {
        self.type_name == type_name || self.mro.iter().any(|t| t == type_name)
    }
}

impl fmt::Display for RemoteException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.traceback.is_empty() {
            if self.message.is_empty() {
                write!(f, "{}", self.type_name)
            } else {
                write!(f, "{}: {}", self.type_name, self.message)
            }
        } else {
            f.write_str(self.traceback.trim_end())
        }
    }
}

impl std::error::Error for RemoteException {}
