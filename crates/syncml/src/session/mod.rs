//! Client and server session state machines (OMA DM Protocol 1.2 §7-§8).
//!
//! Both are sans-IO: they take a received body (and the `x-syncml-hmac` header, if any) and
//! give the body to send with its content type, plus events for the application. Their state
//! is plain data (`serde`), so a stateless server stores a [`ServerSession`] after each
//! message and any replica restores it for the next one.
//!
//! Shared rules implemented here:
//! * packages split over several messages: a message without `Final` and without an
//!   Alert 1222 is answered with statuses and Alert 1222 (§8.2, "next message");
//! * `MaxMsgSize` of the peer is respected when packing; commands that do not fit wait
//!   for the next message, and a single item too large for one message is sent as a large
//!   object in chunks with `MoreData` and the total `Size` in the first chunk (§7.1.3);
//! * received chunks are reassembled, answered with 213, checked against `Size` (424 on a
//!   mismatch, 413 beyond `MaxObjSize`), and an interrupted object gets Alert 1225;
//! * Alert 1223 aborts the session.

mod client;
mod common;
mod server;

pub use client::{ClientConfig, ClientEvent, ClientSession, ClientStep};
pub use server::{CommandHandle, ServerConfig, ServerEvent, ServerSession};

use crate::error::{DecodeError, EncodeError};
use crate::model::{CmdId, MsgId};
use thiserror::Error;

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The encoded message.
    pub body: Vec<u8>,
    /// Its Content-Type.
    pub content_type: &'static str,
    /// The `x-syncml-hmac` header value, when HMAC integrity is in use.
    pub hmac: Option<String>,
    /// Where to send it (the peer's `RespURI`, else the configured URI).
    pub uri: String,
}

/// Why a session could not go on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The received message does not decode.
    #[error("received message does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// Our message cannot be encoded.
    #[error("message cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    /// The message belongs to another session.
    #[error("message for session {got:?}, this is session {expected:?}")]
    WrongSession {
        /// Our session id.
        expected: String,
        /// The id in the message.
        got: String,
    },
    /// The peer is not DM 1.2.
    #[error("unsupported protocol {0:?} (only DM/1.2 is spoken)")]
    UnsupportedProtocol(String),
    /// Authentication failed more often than the limit allows.
    #[error("authentication failed {0} times; session aborted")]
    AuthenticationFailed(u8),
    /// The session has ended; no more messages are expected.
    #[error("the session has already ended")]
    Ended,
    /// A call out of order (e.g. `reply` before any message was received).
    #[error("out of order: {0}")]
    OutOfOrder(&'static str),
    /// The session ran over its message limit.
    #[error("the session exceeded {0} messages")]
    TooManyMessages(u32),
    /// The message is byte for byte the last one received: nothing of it runs again; the
    /// answer is the reply already given (RepPro 1.2 §5.1 MsgID: MsgIDs grow in a session).
    #[error("message {0:?} received again")]
    Repeated(MsgId),
    /// A package 1 (MsgID 1, Alert 1200/1201) reusing this session's SessionID: this session
    /// is done, and the message starts a new one (DM Protocol 1.2 §8.3).
    #[error("a new package 1 reuses this SessionID: it starts a new session")]
    NewSession,
    /// A message whose MsgID is not above the last one received, and not a repeat of it: out
    /// of order or replayed, never executed (RepPro 1.2 §5.1 MsgID).
    #[error("message {got:?} after message {last:?} of this session: out of order, refused")]
    StaleMessage {
        /// The MsgID of the last message received.
        last: MsgId,
        /// The MsgID of this one.
        got: MsgId,
    },
    /// A single command is too large for the peer's MaxMsgSize and cannot be chunked.
    #[error("command {0:?} does not fit the peer's maximum message size")]
    CommandTooLarge(CmdId),
}
