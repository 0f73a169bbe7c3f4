//! OMA DM 1.2 protocol core for simfota, shared by the device agent and the DM server.
//!
//! It holds the SyncML DM 1.2 message model ([`model`]), the XML and WBXML codecs ([`xml`],
//! [`wbxml`], [`codec`]), DM Security 1.2 authentication and HMAC integrity ([`auth`]),
//! DM Notification 1.2 package 0 ([`notification`]), the client and server session state
//! machines ([`session`]), and the client-side DM tree with ACLs, the standard objects and
//! the FUMO 1.0 object ([`tree`], [`fumo`]).
//!
//! The crate is sans-IO: it never opens a socket, speaks HTTP or touches a file. Sessions take
//! received bytes and give bytes to send plus events; the server session is `serde`-serializable
//! so that a stateless server can store it between HTTP requests. It does not generate nonces
//! (callers pass fresh random nonces in), does not implement DS synchronisation (`Sync`, `Map`
//! and friends are answered with 406), and does not speak OBEX or WSP transports.

#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod codes;
pub mod element;
pub mod error;
pub mod fumo;
pub mod limits;
pub mod model;
pub mod notification;
pub mod session;
pub mod tree;
pub mod uri;
pub mod wbxml;
pub mod xml;

pub use codec::Encoding;
pub use codes::{AlertCode, FumoResult, FumoState, StatusCode};
pub use error::{DecodeError, EncodeError};
pub use limits::Limits;
pub use model::{Command, Message};
pub use uri::NodeUri;
