//! The client's error type.

use std::sync::Arc;
use std::time::Duration;

use rpyc_protocol::{FromValueError, ProtocolError, RemoteException, ServerError};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a client call failed.
///
/// Use the predicates ([`is_timeout`](Error::is_timeout), [`is_disconnected`](Error::is_disconnected),
/// [`is_remote`](Error::is_remote)) to sort errors without matching on variants, and
/// [`remote_exception`](Error::remote_exception) to inspect what remote Python raised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error: the address did not resolve, the connection was refused, a read or write
    /// failed. The message names the address.
    #[error(transparent)]
    Io(std::io::Error),
    /// The peer broke the protocol: a bad greeting, another protocol version, a malformed frame,
    /// or a message too large to send.
    #[error(transparent)]
    Protocol(ProtocolError),
    /// A request got no answer in time. The connection stays usable; the server was sent a
    /// cancel for the request.
    #[error("request timed out after {timeout:?}; the server was asked to cancel it")]
    Timeout {
        /// The timeout that expired.
        timeout: Duration,
    },
    /// Connecting (TCP connect, greeting and welcome) took longer than the connect timeout.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The address connected to.
        addr: String,
        /// The connect timeout that expired.
        timeout: Duration,
    },
    /// The connection is closed (by us, by the server, or by a network failure); calls made on
    /// it, or on the remote objects it produced, fail with this at once.
    #[error("connection to {peer} closed: {reason}")]
    Disconnected {
        /// The server's address.
        peer: String,
        /// Why the connection closed.
        reason: String,
    },
    /// A remote value did not fit the Rust type asked for (the message names both), or a reply
    /// did not have the shape the operation promises.
    #[error("cannot convert the remote value: {0}")]
    Decode(#[from] FromValueError),
    /// Remote Python code raised an exception; `Display` shows the remote traceback ending in
    /// `Type: message`, as Python prints it.
    #[error("{}", remote_message(.0))]
    Remote(Box<RemoteException>),
    /// The server refused or dropped the request (an unknown reference, an invalid request, a
    /// result too large for a frame, a cancelled request).
    #[error("server error: {0}")]
    Server(ServerError),
    /// A remote object was used after its connection was replaced by a reconnect (see
    /// [`ReconnectPolicy`](crate::ReconnectPolicy)). References never carry over to a new
    /// connection (the new server does not have the object): get a fresh one from the
    /// connection.
    #[error(
        "{reference} is from a previous connection to {peer} ({reason}); the client has \
         reconnected since and references do not carry over: get a fresh object"
    )]
    StaleReference {
        /// The reference, as `<remote TYPE #ID>`.
        reference: String,
        /// The server's address.
        peer: String,
        /// Why the previous connection closed.
        reason: String,
    },
    /// The connection was lost and reconnecting failed: every attempt the
    /// [`ReconnectPolicy`](crate::ReconnectPolicy) allows failed, or the setup script raised.
    /// The next call starts a new round of attempts.
    #[error("connection to {peer} lost; reconnecting failed after {attempts} attempt(s): {last}")]
    ReconnectFailed {
        /// The server's address.
        peer: String,
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt (an [`Error::Remote`] if the setup script raised).
        last: Arc<Error>,
    },
    /// The server requires a token and none was given.
    #[error(
        "the server at {peer} requires a token: pass it with ConnectionBuilder::token or an \
         rpyc://TOKEN@host:port address"
    )]
    AuthenticationRequired {
        /// The server's address.
        peer: String,
    },
    /// An argument held a reference to a remote object that does not belong to this connection
    /// (it comes from another connection, or it was already released).
    #[error(
        "{reference} does not belong to the connection to {peer}: it comes from another \
         connection or was already released"
    )]
    ForeignReference {
        /// The reference, as `<remote TYPE #ID>`.
        reference: String,
        /// The address of the connection it was sent on.
        peer: String,
    },
}

impl Error {
    /// Whether a request timed out ([`Error::Timeout`] or [`Error::ConnectTimeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. } | Error::ConnectTimeout { .. })
    }

    /// Whether the connection is closed: [`Error::Disconnected`], [`Error::StaleReference`] (the
    /// object's connection is closed) or [`Error::ReconnectFailed`].
    pub fn is_disconnected(&self) -> bool {
        matches!(
            self,
            Error::Disconnected { .. }
                | Error::StaleReference { .. }
                | Error::ReconnectFailed { .. }
        )
    }

    /// Whether a remote object from before a reconnect was used ([`Error::StaleReference`]).
    pub fn is_stale_reference(&self) -> bool {
        matches!(self, Error::StaleReference { .. })
    }

    /// Whether remote Python raised an exception ([`Error::Remote`]).
    pub fn is_remote(&self) -> bool {
        matches!(self, Error::Remote(_))
    }

    /// The exception remote Python raised, if that is what this error is.
    pub fn remote_exception(&self) -> Option<&RemoteException> {
        match self {
            Error::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// An error for a reply whose shape does not match what the operation promises.
    /// The server answered a request with a message that is not a response.
    pub(crate) fn unexpected_message(name: &str) -> Self {
        Error::Decode(serde::de::Error::custom(format_args!(
            "unexpected reply: expected a response, got a {name} message"
        )))
    }

    pub(crate) fn unexpected_reply(what: &str, got: &rpyc_protocol::Value) -> Self {
        const MAX: usize = 200;
        let mut shown = got.to_string();
        if let Some((cut, _)) = shown.char_indices().nth(MAX) {
            shown.truncate(cut);
            shown.push('…');
        }
        Error::Decode(serde::de::Error::custom(format_args!(
            "unexpected reply: expected {what}, got {} {shown}",
            got.type_name()
        )))
    }
}

/// `remote Python raised TYPE; remote traceback:` and the traceback, or just the exception line
/// when the server sent no traceback.
fn remote_message(e: &RemoteException) -> String {
    if e.traceback.trim().is_empty() {
        format!("remote Python raised {e}")
    } else {
        format!(
            "remote Python raised {}; remote traceback:\n{}",
            e.type_name,
            e.traceback.trim_end()
        )
    }
}

impl From<ServerError> for Error {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Exception(e) => Error::Remote(e),
            other => Error::Server(other),
        }
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed() {
        let e = Error::Timeout {
            timeout: Duration::from_millis(500),
        };
        assert_eq!(
            e.to_string(),
            "request timed out after 500ms; the server was asked to cancel it"
        );
        assert!(e.is_timeout());

        let e = Error::Disconnected {
            peer: "127.0.0.1:18812".into(),
            reason: "the server closed the connection".into(),
        };
        assert_eq!(
            e.to_string(),
            "connection to 127.0.0.1:18812 closed: the server closed the connection"
        );
        assert!(e.is_disconnected());

        let e = Error::from(ServerError::Exception(Box::new(RemoteException {
            type_name: "ZeroDivisionError".into(),
            message: "division by zero".into(),
            traceback: "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nZeroDivisionError: division by zero\n".into(),
            mro: vec!["ArithmeticError".into(), "Exception".into()],
        })));
        assert!(e.is_remote());
        let text = e.to_string();
        assert!(text.contains("remote traceback:\nTraceback"), "{text}");
        assert!(
            text.ends_with("ZeroDivisionError: division by zero"),
            "{text}"
        );
        assert!(
            e.remote_exception()
                .is_some_and(|x| x.is_instance("ArithmeticError"))
        );

        let e = Error::from(ServerError::Cancelled);
        assert!(matches!(e, Error::Server(ServerError::Cancelled)));
        assert_eq!(e.to_string(), "server error: request cancelled");
    }
}
