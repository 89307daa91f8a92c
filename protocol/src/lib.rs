//! The wire protocol shared by the `rpyc-classic` server and the Rust client.
//!
//! A connection opens with a raw greeting ([`handshake`]), then carries length-prefixed frames
//! ([`codec::framing`]), each holding one bincode-encoded [`Message`]. Requests carry a
//! [`RequestId`] so that many can be in flight at once and a ping or cancel can overtake a long
//! call. Values travel as [`Value`]; objects that cannot be copied travel as [`NetRef`]s, and
//! Python exceptions as [`RemoteException`]s.
//!
//! # Layout
//! - [`message`]: [`Message`], [`Op`], [`RequestId`], [`ServerError`], [`ReturnMode`].
//! - [`value`]: [`Value`] and its conversions (`From` for arguments, serde for results).
//! - [`netref`]: [`NetRefId`], [`NetRef`].
//! - [`exception`][]: [`RemoteException`].
//! - [`handshake`]: the greeting, magic and version check.
//! - [`auth`]: token challenge–response.
//! - [`codec`]: framing and encoding.
//! - [`queue`]: [`FrameQueue`](queue::FrameQueue), outgoing frames whose large byte strings
//!   are written from their owners' memory.
//! - [`memory`]: buffers for large frames.
//! - [`brine`]: stock RPyC's serializer and message layer, for stock Python clients (issue 6).
//! - [`error`][]: [`ProtocolError`].
//!
//! # Example
//! ```
//! use rpyc_protocol::{codec, Message, Op, RequestId, ReturnMode};
//!
//! let request = Message::Request {
//!     id: RequestId(1),
//!     op: Op::Eval { expr: "1+1".into(), mode: ReturnMode::Value },
//! };
//! let payload = codec::encode(&request)?;
//! assert_eq!(codec::decode(&payload)?, request);
//! # Ok::<(), rpyc_protocol::ProtocolError>(())
//! ```

#![deny(clippy::unwrap_used)]

pub mod auth;
pub mod brine;
pub mod codec;
pub mod error;
pub mod exception;
pub mod handshake;
pub mod memory;
pub mod message;
pub mod netref;
pub mod queue;
pub mod value;

pub use error::ProtocolError;
pub use exception::RemoteException;
pub use message::{Args, CompareOp, Message, Op, RequestId, ReturnMode, ServerError, ServerInfo};
pub use netref::{NetRef, NetRefId};
pub use value::{FromValueError, Value};

/// The port `rpyc-classic` listens on unless told otherwise (the same as stock RPyC).
pub const DEFAULT_PORT: u16 = 18812;

/// Version of this protocol, exchanged in the greeting; both sides must speak the same one.
pub const PROTOCOL_VERSION: u16 = 2;
