//! The SyncML DM 1.2 message model (SyncML RepPro 1.2 §5-§6, DM Protocol 1.2 §6) and its
//! mapping to and from the shared element tree.
//!
//! Reading is liberal: child order does not matter, `Meta` may sit at command or item level,
//! MetInf elements may be wrapped in `<MetInf>`, and elements the DTD defines but DM does not
//! use (`Lang`, `Archive`, `SftDel`, `NoResults`, `Filter`, parents, `Anchor`, `Mem`, ...)
//! are skipped. DS-only commands (`Sync`, `Map`, `Put`, `Search`, `Move`) decode as
//! [`Command::Unsupported`] so that a session answers them with 406. Writing follows the DTD
//! order exactly.
//!
//! The types live here; [`Message::from_element`] and [`Message::header_from_element`] are in
//! `decode.rs`, [`Message::to_element`] in `encode.rs`.

use crate::codes::{AlertCode, StatusCode};
use serde::{Deserialize, Serialize};
use std::fmt;

mod decode;
mod encode;

/// SyncML `VerDTD` of DM 1.2.
pub const VER_DTD: &str = "1.2";
/// SyncML `VerProto` of DM 1.2.
pub const VER_PROTO: &str = "DM/1.2";

/// A command identifier, unique within one message (RepPro §5.1.3). `CmdRef` 0 names the
/// SyncHdr.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CmdId(pub u32);

impl CmdId {
    /// The `CmdRef` that designates the SyncHdr in a Status.
    pub const HEADER: CmdId = CmdId(0);
}

impl fmt::Debug for CmdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CmdId({})", self.0)
    }
}

/// A message identifier, unique within one session and direction (RepPro §5.1.7).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MsgId(pub u32);

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId({})", self.0)
    }
}

/// `Target` or `Source`: a location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// `LocURI`.
    pub uri: String,
    /// `LocName` (used as the user name with basic/MD5 auth in some clients).
    pub name: Option<String>,
}

impl Location {
    /// A location with a URI only.
    pub fn new(uri: impl Into<String>) -> Location {
        Location {
            uri: uri.into(),
            name: None,
        }
    }
}

/// `Meta` with the MetInf 1.2 elements DM uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// `Format` (chr, int, bool, bin, b64, node, xml, ...).
    pub format: Option<String>,
    /// `Type` (a MIME type, an auth type or a Generic Alert type).
    pub mime_type: Option<String>,
    /// `Mark` (e.g. the Generic Alert severity).
    pub mark: Option<String>,
    /// `Size`: the total size of a chunked large object.
    pub size: Option<u64>,
    /// `Version`.
    pub version: Option<String>,
    /// `NextNonce` (base64 text) inside a `Chal`.
    pub next_nonce: Option<String>,
    /// `MaxMsgSize`: the largest message the sender accepts.
    pub max_msg_size: Option<u64>,
    /// `MaxObjSize`: the largest object the sender accepts.
    pub max_obj_size: Option<u64>,
    /// `EMI` extensions.
    pub emi: Vec<String>,
}

impl Meta {
    /// True if no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Meta::default()
    }

    /// A Meta with a `Format` only.
    pub fn format(format: impl Into<String>) -> Meta {
        Meta {
            format: Some(format.into()),
            ..Meta::default()
        }
    }
}

/// `Cred`: credentials (RepPro §5.1.5, DM Security §5.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cred {
    /// `Meta` with the auth `Type` and `Format`.
    pub meta: Meta,
    /// `Data`: the credential text.
    pub data: String,
}

/// `Chal`: an authentication challenge (RepPro §5.1.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chal {
    /// `Meta` with `Type`, `Format` and `NextNonce`.
    pub meta: Meta,
}

/// `Data` content: text or (from WBXML opaque) bytes. Kept as bytes so that both encodings
/// compare equal when they carry the same octets.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Data(pub Vec<u8>);

impl Data {
    /// Data holding UTF-8 text.
    pub fn text(text: impl Into<String>) -> Data {
        Data(text.into().into_bytes())
    }

    /// The content as text, if it is UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The raw octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(text) => write!(f, "Data({text:?})"),
            None => write!(f, "Data({} bytes)", self.0.len()),
        }
    }
}

/// `Item`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// `Target`.
    pub target: Option<Location>,
    /// `Source`.
    pub source: Option<Location>,
    /// Item-level `Meta`.
    pub meta: Option<Meta>,
    /// `Data`.
    pub data: Option<Data>,
    /// `MoreData`: this item is a chunk and more follow (DM Protocol §7.1.3).
    pub more_data: bool,
}

impl Item {
    /// An item addressing `uri` as its target.
    pub fn target(uri: impl Into<String>) -> Item {
        Item {
            target: Some(Location::new(uri)),
            ..Item::default()
        }
    }

    /// An item naming `uri` as its source.
    pub fn source(uri: impl Into<String>) -> Item {
        Item {
            source: Some(Location::new(uri)),
            ..Item::default()
        }
    }
}

/// Add, Copy, Delete, Get and Replace share this shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCommand {
    /// `CmdID`.
    pub cmd_id: CmdId,
    /// `NoResp`: the recipient sends no Status.
    pub no_resp: bool,
    /// `Cred`.
    pub cred: Option<Cred>,
    /// Command-level `Meta` (applies to every item without its own).
    pub meta: Option<Meta>,
    /// `Item`s.
    pub items: Vec<Item>,
}

/// `Alert`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `CmdID`.
    pub cmd_id: CmdId,
    /// `NoResp`.
    pub no_resp: bool,
    /// `Cred`.
    pub cred: Option<Cred>,
    /// `Data`: the alert code.
    pub code: AlertCode,
    /// `Correlator` (Generic Alert answering an asynchronous Exec).
    pub correlator: Option<String>,
    /// `Item`s.
    pub items: Vec<Item>,
}

/// `Exec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// `CmdID`.
    pub cmd_id: CmdId,
    /// `NoResp`.
    pub no_resp: bool,
    /// `Cred`.
    pub cred: Option<Cred>,
    /// `Meta`.
    pub meta: Option<Meta>,
    /// `Correlator`: echoed in the Generic Alert that reports the result later.
    pub correlator: Option<String>,
    /// The one `Item`: the node to execute, with optional data.
    pub item: Item,
}

/// `Atomic` or `Sequence`: a container of commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// `CmdID`.
    pub cmd_id: CmdId,
    /// `NoResp`.
    pub no_resp: bool,
    /// `Meta`.
    pub meta: Option<Meta>,
    /// The contained commands.
    pub commands: Vec<Command>,
}

/// `Status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `CmdID`.
    pub cmd_id: CmdId,
    /// `MsgRef`: the message of the command answered.
    pub msg_ref: Option<MsgId>,
    /// `CmdRef`: the command answered (0 = SyncHdr).
    pub cmd_ref: CmdId,
    /// `Cmd`: the name of the command answered.
    pub cmd: String,
    /// `TargetRef`s.
    pub target_refs: Vec<String>,
    /// `SourceRef`s.
    pub source_refs: Vec<String>,
    /// `Cred`.
    pub cred: Option<Cred>,
    /// `Chal`.
    pub chal: Option<Chal>,
    /// `Data`: the status code.
    pub code: StatusCode,
    /// `Item`s.
    pub items: Vec<Item>,
}

/// `Results`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// `CmdID`.
    pub cmd_id: CmdId,
    /// `MsgRef`.
    pub msg_ref: Option<MsgId>,
    /// `CmdRef`: the Get answered.
    pub cmd_ref: CmdId,
    /// `Meta`.
    pub meta: Option<Meta>,
    /// `TargetRef`s.
    pub target_refs: Vec<String>,
    /// `SourceRef`s.
    pub source_refs: Vec<String>,
    /// `Item`s.
    pub items: Vec<Item>,
}

/// A SyncBody command.
// Commands are built a few at a time per message; boxing the larger variants would only
// make pattern matching clumsier for users.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `Add`.
    Add(ItemCommand),
    /// `Alert`.
    Alert(Alert),
    /// `Atomic`.
    Atomic(Container),
    /// `Copy`.
    Copy(ItemCommand),
    /// `Delete`.
    Delete(ItemCommand),
    /// `Exec`.
    Exec(Exec),
    /// `Get`.
    Get(ItemCommand),
    /// `Replace`.
    Replace(ItemCommand),
    /// `Sequence`.
    Sequence(Container),
    /// `Status`.
    Status(Status),
    /// `Results`.
    Results(Results),
    /// A SyncML command DM does not define (Sync, Map, Put, Search, Move): answered with 406.
    Unsupported {
        /// The element name.
        name: String,
        /// Its CmdID.
        cmd_id: CmdId,
    },
}

impl Command {
    /// The element name (`Cmd` in a Status answering it).
    pub fn name(&self) -> &str {
        match self {
            Command::Add(_) => "Add",
            Command::Alert(_) => "Alert",
            Command::Atomic(_) => "Atomic",
            Command::Copy(_) => "Copy",
            Command::Delete(_) => "Delete",
            Command::Exec(_) => "Exec",
            Command::Get(_) => "Get",
            Command::Replace(_) => "Replace",
            Command::Sequence(_) => "Sequence",
            Command::Status(_) => "Status",
            Command::Results(_) => "Results",
            Command::Unsupported { name, .. } => name,
        }
    }

    /// The CmdID.
    pub fn cmd_id(&self) -> CmdId {
        match self {
            Command::Add(c)
            | Command::Copy(c)
            | Command::Delete(c)
            | Command::Get(c)
            | Command::Replace(c) => c.cmd_id,
            Command::Alert(c) => c.cmd_id,
            Command::Atomic(c) | Command::Sequence(c) => c.cmd_id,
            Command::Exec(c) => c.cmd_id,
            Command::Status(c) => c.cmd_id,
            Command::Results(c) => c.cmd_id,
            Command::Unsupported { cmd_id, .. } => *cmd_id,
        }
    }

    /// Sets the CmdID.
    pub fn set_cmd_id(&mut self, id: CmdId) {
        match self {
            Command::Add(c)
            | Command::Copy(c)
            | Command::Delete(c)
            | Command::Get(c)
            | Command::Replace(c) => c.cmd_id = id,
            Command::Alert(c) => c.cmd_id = id,
            Command::Atomic(c) | Command::Sequence(c) => c.cmd_id = id,
            Command::Exec(c) => c.cmd_id = id,
            Command::Status(c) => c.cmd_id = id,
            Command::Results(c) => c.cmd_id = id,
            Command::Unsupported { cmd_id, .. } => *cmd_id = id,
        }
    }

    /// True if the sender asked for no Status (`NoResp`).
    pub fn no_resp(&self) -> bool {
        match self {
            Command::Add(c)
            | Command::Copy(c)
            | Command::Delete(c)
            | Command::Get(c)
            | Command::Replace(c) => c.no_resp,
            Command::Alert(c) => c.no_resp,
            Command::Atomic(c) | Command::Sequence(c) => c.no_resp,
            Command::Exec(c) => c.no_resp,
            Command::Status(_) | Command::Results(_) | Command::Unsupported { .. } => false,
        }
    }

    /// The items the command carries (containers carry none themselves).
    pub fn items(&self) -> &[Item] {
        match self {
            Command::Add(c)
            | Command::Copy(c)
            | Command::Delete(c)
            | Command::Get(c)
            | Command::Replace(c) => &c.items,
            Command::Alert(c) => &c.items,
            Command::Exec(c) => std::slice::from_ref(&c.item),
            Command::Status(c) => &c.items,
            Command::Results(c) => &c.items,
            Command::Atomic(_) | Command::Sequence(_) | Command::Unsupported { .. } => &[],
        }
    }
}

/// `SyncHdr`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncHdr {
    /// `VerDTD` ("1.2").
    pub ver_dtd: String,
    /// `VerProto` ("DM/1.2").
    pub ver_proto: String,
    /// `SessionID`.
    pub session_id: String,
    /// `MsgID`.
    pub msg_id: MsgId,
    /// `Target`: the recipient.
    pub target: Location,
    /// `Source`: the sender.
    pub source: Location,
    /// `RespURI`: where the next message goes.
    pub resp_uri: Option<String>,
    /// `NoResp`.
    pub no_resp: bool,
    /// `Cred`.
    pub cred: Option<Cred>,
    /// `Meta` (MaxMsgSize, MaxObjSize).
    pub meta: Option<Meta>,
}

/// A SyncML message: header, body commands and the `Final` flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `SyncHdr`.
    pub header: SyncHdr,
    /// The `SyncBody` commands in order.
    pub body: Vec<Command>,
    /// `Final`: the last message of its package.
    pub is_final: bool,
}
