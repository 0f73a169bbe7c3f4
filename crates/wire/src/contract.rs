//! The contract between the card, the device and the DM server: every object that crosses
//! card <-> device <-> server and is not a signed object, defined once (docs/dm-tree.md
//! "Card answers", docs/apdu.md GET DATA).
//!
//! - [`Node`]: the DM nodes the project uses (`./SIMFOTA/Card/*`, the FUMO nodes,
//!   `./DevDetail/FwV`), each with its URI, its DM Format ([`Format`], OMA-TS-DM_TND-V1_2
//!   §7.7.6) and MIME type. Both sides encode and decode a node's value by the Format the
//!   node declares (`Node::decode_value`, `Node::encode_value`, `std`), never by guessing.
//! - [`CardInfo`] (GET DATA `0101`, node `Info`), and [`CardIdentity`], the server's view of
//!   the same map (ICCID and certificate only).
//! - [`PendingUpdate`] (GET DATA `0106`), [`LogStatus`] (GET DATA `0105`).
//! - [`ServerEntry`] lists (GET DATA `0102`, node `Servers`) with [`Rights`] and its one table
//!   of names ([`Rights::NAMES`]), [`OriginatorEntry`] lists (GET DATA `0104`, node
//!   `Originators`), and the [`Policy`] (GET DATA `0103`, node `Policy`).
//!
//! The card answers are the same bytes on both hops: the card encodes them into its I/O
//! buffer, the device decodes them, and relays them to the server encoded the same way.
//! Decoders are strict (definite lengths, no duplicate keys, no trailing bytes, bounded by
//! [`Limits`](crate::Limits) and [`MAX_LIST_ENTRIES`]) and refuse malformed input with an
//! [`Error`](crate::Error) naming the member; encoders write into caller buffers (no heap).
//! Unknown integer keys of the answer maps are skipped, so an applet may add members that an
//! older host ignores; a missing member is refused.

mod card;
mod node;

pub use crate::objects::{Policy, Rights};
pub use card::{
    CardIdentity, CardInfo, Digits, Integrity, Lifecycle, LogStatus, MAX_LIST_ENTRIES,
    OriginatorEntry, OriginatorListWriter, PendingUpdate, ServerEntry, ServerListWriter,
    card_info_key,
};
#[cfg(feature = "std")]
pub use node::ValueError;
pub use node::{Format, Node};
