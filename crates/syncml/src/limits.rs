//! Every size bound the crate enforces, in one place.

use serde::{Deserialize, Serialize};

/// Bounds applied while decoding and while running sessions. Input beyond them is refused
/// with a precise error (and, in a session, the matching SyncML status) instead of being
/// buffered without end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest encoded message accepted (bytes). Also the `MaxMsgSize` we announce.
    pub max_message_bytes: usize,
    /// Largest object accepted, after reassembly of chunks (bytes). Also our `MaxObjSize`.
    pub max_object_bytes: usize,
    /// Deepest element nesting in a message.
    pub max_depth: usize,
    /// Most elements in one message.
    pub max_elements: usize,
    /// Longest text or opaque value of one element (bytes).
    pub max_text_bytes: usize,
    /// Longest node URI (bytes), DM TND 1.2 `MaxTotLen` style.
    pub max_uri_bytes: usize,
    /// Most authentication attempts in one session before it is aborted.
    pub max_auth_attempts: u8,
    /// Most messages in one session.
    pub max_messages: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_object_bytes: 1024 * 1024,
            max_depth: 32,
            max_elements: 20_000,
            max_text_bytes: 64 * 1024,
            max_uri_bytes: 1024,
            max_auth_attempts: 3,
            max_messages: 1000,
        }
    }
}
