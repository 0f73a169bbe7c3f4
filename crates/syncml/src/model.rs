//! The SyncML DM 1.2 message model (SyncML RepPro 1.2 §5-§6, DM Protocol 1.2 §6) and its
//! mapping to and from the shared element tree.
//!
//! Reading is liberal: child order does not matter, `Meta` may sit at command or item level,
//! MetInf elements may be wrapped in `<MetInf>`, and elements the DTD defines but DM does not
//! use (`Lang`, `Archive`, `SftDel`, `NoResults`, `Filter`, parents, `Anchor`, `Mem`, ...)
//! are skipped. DS-only commands (`Sync`, `Map`, `Put`, `Search`, `Move`) decode as
//! [`Command::Unsupported`] so that a session answers them with 406. Writing follows the DTD
//! order exactly.

use crate::codes::{AlertCode, StatusCode};
use crate::element::{Element, Node, Tag, tag};
use crate::error::DecodeError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

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

// ---------------------------------------------------------------------------------------
// Element tree -> model
// ---------------------------------------------------------------------------------------

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Text content of a leaf element; opaque content counts if it is UTF-8.
fn raw_text(e: &Element) -> Result<String, DecodeError> {
    let mut out = String::new();
    for child in &e.children {
        match child {
            Node::Text(t) => out.push_str(t),
            Node::Opaque(bytes) => {
                out.push_str(std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?)
            }
            Node::Element(c) => {
                return Err(DecodeError::UnexpectedElement {
                    parent: e.tag.name,
                    child: c.tag.name.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// Text of a structural leaf: surrounding whitespace is layout, not content.
fn text(e: &Element) -> Result<String, DecodeError> {
    Ok(raw_text(e)?.trim().to_owned())
}

fn number<T: std::str::FromStr>(e: &Element) -> Result<T, DecodeError> {
    let t = text(e)?;
    t.parse().map_err(|_| DecodeError::InvalidValue {
        element: e.tag.name,
        value: shorten(&t),
    })
}

fn data_bytes(e: &Element) -> Result<Data, DecodeError> {
    let mut out = Vec::new();
    for child in &e.children {
        match child {
            Node::Text(t) => out.extend_from_slice(t.as_bytes()),
            Node::Opaque(bytes) => out.extend_from_slice(bytes),
            // Embedded XML in Data (DS device info) has no place in DM.
            Node::Element(c) => {
                return Err(DecodeError::UnexpectedElement {
                    parent: "Data",
                    child: c.tag.name.to_owned(),
                });
            }
        }
    }
    Ok(Data(out))
}

fn unexpected(parent: &'static str, child: &Element) -> DecodeError {
    DecodeError::UnexpectedElement {
        parent,
        child: child.tag.name.to_owned(),
    }
}

fn require<T>(
    value: Option<T>,
    parent: &'static str,
    child: &'static str,
) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::MissingElement { parent, child })
}

/// Text children of `Meta` outside the MetInf elements are ignored: RepPro allows PCDATA there
/// but DM gives it no meaning.
fn read_meta(e: &Element, meta: &mut Meta) -> Result<(), DecodeError> {
    for c in e.elements() {
        match c.tag {
            tag::FORMAT => meta.format = Some(text(c)?),
            tag::TYPE => meta.mime_type = Some(text(c)?),
            tag::MARK => meta.mark = Some(text(c)?),
            tag::SIZE => meta.size = Some(number(c)?),
            tag::VERSION => meta.version = Some(text(c)?),
            tag::NEXT_NONCE => meta.next_nonce = Some(text(c)?),
            tag::MAX_MSG_SIZE => meta.max_msg_size = Some(number(c)?),
            tag::MAX_OBJ_SIZE => meta.max_obj_size = Some(number(c)?),
            tag::EMI => meta.emi.push(text(c)?),
            tag::MET_INF => read_meta(c, meta)?,
            t if t.page == crate::element::CodePage::MetInf => {}
            _ => return Err(unexpected("Meta", c)),
        }
    }
    Ok(())
}

fn meta(e: &Element) -> Result<Meta, DecodeError> {
    let mut m = Meta::default();
    read_meta(e, &mut m)?;
    Ok(m)
}

fn location(e: &Element) -> Result<Location, DecodeError> {
    let mut uri = None;
    let mut name = None;
    for c in e.elements() {
        match c.tag {
            tag::LOC_URI => uri = Some(text(c)?),
            tag::LOC_NAME => name = Some(text(c)?),
            tag::FILTER => {}
            _ => return Err(unexpected(e.tag.name, c)),
        }
    }
    Ok(Location {
        uri: require(uri, e.tag.name, "LocURI")?,
        name,
    })
}

fn cred(e: &Element) -> Result<Cred, DecodeError> {
    let mut m = Meta::default();
    let mut data = None;
    for c in e.elements() {
        match c.tag {
            tag::META => read_meta(c, &mut m)?,
            tag::DATA => data = Some(text(c)?),
            _ => return Err(unexpected("Cred", c)),
        }
    }
    Ok(Cred {
        meta: m,
        data: require(data, "Cred", "Data")?,
    })
}

fn chal(e: &Element) -> Result<Chal, DecodeError> {
    let mut m = Meta::default();
    for c in e.elements() {
        match c.tag {
            tag::META => read_meta(c, &mut m)?,
            _ => return Err(unexpected("Chal", c)),
        }
    }
    Ok(Chal { meta: m })
}

fn item(e: &Element) -> Result<Item, DecodeError> {
    let mut it = Item::default();
    for c in e.elements() {
        match c.tag {
            tag::TARGET => it.target = Some(location(c)?),
            tag::SOURCE => it.source = Some(location(c)?),
            tag::META => it.meta = Some(meta(c)?),
            tag::DATA => it.data = Some(data_bytes(c)?),
            tag::MORE_DATA => it.more_data = true,
            tag::SOURCE_PARENT | tag::TARGET_PARENT => {}
            _ => return Err(unexpected("Item", c)),
        }
    }
    Ok(it)
}

fn item_command(e: &Element) -> Result<ItemCommand, DecodeError> {
    let mut cmd_id = None;
    let mut cmd = ItemCommand {
        cmd_id: CmdId(0),
        no_resp: false,
        cred: None,
        meta: None,
        items: Vec::new(),
    };
    for c in e.elements() {
        match c.tag {
            tag::CMD_ID => cmd_id = Some(CmdId(number(c)?)),
            tag::NO_RESP => cmd.no_resp = true,
            tag::CRED => cmd.cred = Some(cred(c)?),
            tag::META => cmd.meta = Some(meta(c)?),
            tag::ITEM => cmd.items.push(item(c)?),
            tag::LANG | tag::ARCHIVE | tag::SFT_DEL => {}
            _ => return Err(unexpected(e.tag.name, c)),
        }
    }
    cmd.cmd_id = require(cmd_id, e.tag.name, "CmdID")?;
    if cmd.items.is_empty() {
        return Err(DecodeError::MissingElement {
            parent: e.tag.name,
            child: "Item",
        });
    }
    Ok(cmd)
}

fn alert(e: &Element) -> Result<Alert, DecodeError> {
    let mut cmd_id = None;
    let mut code = None;
    let mut a = Alert {
        cmd_id: CmdId(0),
        no_resp: false,
        cred: None,
        code: AlertCode(0),
        correlator: None,
        items: Vec::new(),
    };
    for c in e.elements() {
        match c.tag {
            tag::CMD_ID => cmd_id = Some(CmdId(number(c)?)),
            tag::NO_RESP => a.no_resp = true,
            tag::CRED => a.cred = Some(cred(c)?),
            tag::DATA => code = Some(AlertCode(number(c)?)),
            tag::CORRELATOR => a.correlator = Some(text(c)?),
            tag::ITEM => a.items.push(item(c)?),
            _ => return Err(unexpected("Alert", c)),
        }
    }
    a.cmd_id = require(cmd_id, "Alert", "CmdID")?;
    a.code = require(code, "Alert", "Data")?;
    Ok(a)
}

fn exec(e: &Element) -> Result<Exec, DecodeError> {
    let mut cmd_id = None;
    let mut the_item = None;
    let mut x = Exec {
        cmd_id: CmdId(0),
        no_resp: false,
        cred: None,
        meta: None,
        correlator: None,
        item: Item::default(),
    };
    for c in e.elements() {
        match c.tag {
            tag::CMD_ID => cmd_id = Some(CmdId(number(c)?)),
            tag::NO_RESP => x.no_resp = true,
            tag::CRED => x.cred = Some(cred(c)?),
            tag::META => x.meta = Some(meta(c)?),
            tag::CORRELATOR => x.correlator = Some(text(c)?),
            // RepPro: exactly one Item in Exec.
            tag::ITEM if the_item.is_none() => the_item = Some(item(c)?),
            _ => return Err(unexpected("Exec", c)),
        }
    }
    x.cmd_id = require(cmd_id, "Exec", "CmdID")?;
    x.item = require(the_item, "Exec", "Item")?;
    Ok(x)
}

fn container(e: &Element, depth_guard: usize) -> Result<Container, DecodeError> {
    let mut cmd_id = None;
    let mut k = Container {
        cmd_id: CmdId(0),
        no_resp: false,
        meta: None,
        commands: Vec::new(),
    };
    for c in e.elements() {
        match c.tag {
            tag::CMD_ID => cmd_id = Some(CmdId(number(c)?)),
            tag::NO_RESP => k.no_resp = true,
            tag::META => k.meta = Some(meta(c)?),
            // Status, Results and Final cannot be nested (RepPro §6.6.3, §6.6.14).
            tag::STATUS | tag::RESULTS | tag::FINAL => return Err(unexpected(e.tag.name, c)),
            _ => match command(c, depth_guard + 1)? {
                Some(cmd) => k.commands.push(cmd),
                None => return Err(unexpected(e.tag.name, c)),
            },
        }
    }
    k.cmd_id = require(cmd_id, e.tag.name, "CmdID")?;
    Ok(k)
}

fn refs_and_items(
    parent: &'static str,
    c: &Element,
    target_refs: &mut Vec<String>,
    source_refs: &mut Vec<String>,
    items: &mut Vec<Item>,
) -> Result<bool, DecodeError> {
    match c.tag {
        tag::TARGET_REF => target_refs.push(text(c)?),
        tag::SOURCE_REF => source_refs.push(text(c)?),
        tag::ITEM => items.push(item(c)?),
        _ => {
            let _ = parent;
            return Ok(false);
        }
    }
    Ok(true)
}

fn status(e: &Element) -> Result<Status, DecodeError> {
    let (mut cmd_id, mut cmd_ref, mut cmd, mut code) = (None, None, None, None);
    let mut s = Status {
        cmd_id: CmdId(0),
        msg_ref: None,
        cmd_ref: CmdId(0),
        cmd: String::new(),
        target_refs: Vec::new(),
        source_refs: Vec::new(),
        cred: None,
        chal: None,
        code: StatusCode(0),
        items: Vec::new(),
    };
    for c in e.elements() {
        match c.tag {
            tag::CMD_ID => cmd_id = Some(CmdId(number(c)?)),
            tag::MSG_REF => s.msg_ref = Some(MsgId(number(c)?)),
            tag::CMD_REF => cmd_ref = Some(CmdId(number(c)?)),
            tag::CMD => cmd = Some(text(c)?),
            tag::CRED => s.cred = Some(cred(c)?),
            tag::CHAL => s.chal = Some(chal(c)?),
            tag::DATA => code = Some(StatusCode(number(c)?)),
            _ => {
                if !refs_and_items(
                    "Status",
                    c,
                    &mut s.target_refs,
                    &mut s.source_refs,
                    &mut s.items,
                )? {
                    return Err(unexpected("Status", c));
                }
            }
        }
    }
    s.cmd_id = require(cmd_id, "Status", "CmdID")?;
    s.cmd_ref = require(cmd_ref, "Status", "CmdRef")?;
    s.cmd = require(cmd, "Status", "Cmd")?;
    s.code = require(code, "Status", "Data")?;
    Ok(s)
}

fn results(e: &Element) -> Result<Results, DecodeError> {
    let (mut cmd_id, mut cmd_ref) = (None, None);
    let mut r = Results {
        cmd_id: CmdId(0),
        msg_ref: None,
        cmd_ref: CmdId(0),
        meta: None,
        target_refs: Vec::new(),
        source_refs: Vec::new(),
        items: Vec::new(),
    };
    for c in e.elements() {
        match c.tag {
            tag::CMD_ID => cmd_id = Some(CmdId(number(c)?)),
            tag::MSG_REF => r.msg_ref = Some(MsgId(number(c)?)),
            tag::CMD_REF => cmd_ref = Some(CmdId(number(c)?)),
            tag::META => r.meta = Some(meta(c)?),
            _ => {
                if !refs_and_items(
                    "Results",
                    c,
                    &mut r.target_refs,
                    &mut r.source_refs,
                    &mut r.items,
                )? {
                    return Err(unexpected("Results", c));
                }
            }
        }
    }
    r.cmd_id = require(cmd_id, "Results", "CmdID")?;
    r.cmd_ref = require(cmd_ref, "Results", "CmdRef")?;
    Ok(r)
}

fn unsupported(e: &Element) -> Result<Command, DecodeError> {
    let mut cmd_id = None;
    for c in e.elements() {
        if c.tag == tag::CMD_ID {
            cmd_id = Some(CmdId(number(c)?));
        }
    }
    Ok(Command::Unsupported {
        name: e.tag.name.to_owned(),
        cmd_id: require(cmd_id, e.tag.name, "CmdID")?,
    })
}

/// A command element, or `None` if `e` is not a command.
fn command(e: &Element, depth: usize) -> Result<Option<Command>, DecodeError> {
    Ok(Some(match e.tag {
        tag::ADD => Command::Add(item_command(e)?),
        tag::ALERT => Command::Alert(alert(e)?),
        tag::ATOMIC => Command::Atomic(container(e, depth)?),
        tag::COPY => Command::Copy(item_command(e)?),
        tag::DELETE => Command::Delete(item_command(e)?),
        tag::EXEC => Command::Exec(exec(e)?),
        tag::GET => Command::Get(item_command(e)?),
        tag::REPLACE => Command::Replace(item_command(e)?),
        tag::SEQUENCE => Command::Sequence(container(e, depth)?),
        tag::STATUS => Command::Status(status(e)?),
        tag::RESULTS => Command::Results(results(e)?),
        tag::SYNC | tag::MAP | tag::PUT | tag::SEARCH | tag::MOVE => unsupported(e)?,
        _ => return Ok(None),
    }))
}

fn header(e: &Element) -> Result<SyncHdr, DecodeError> {
    let (mut ver_dtd, mut ver_proto, mut session_id, mut msg_id, mut target, mut source) =
        (None, None, None, None, None, None);
    let mut h = SyncHdr {
        ver_dtd: String::new(),
        ver_proto: String::new(),
        session_id: String::new(),
        msg_id: MsgId(0),
        target: Location::new(""),
        source: Location::new(""),
        resp_uri: None,
        no_resp: false,
        cred: None,
        meta: None,
    };
    for c in e.elements() {
        match c.tag {
            tag::VER_DTD => ver_dtd = Some(text(c)?),
            tag::VER_PROTO => ver_proto = Some(text(c)?),
            tag::SESSION_ID => session_id = Some(text(c)?),
            tag::MSG_ID => msg_id = Some(MsgId(number(c)?)),
            tag::TARGET => target = Some(location(c)?),
            tag::SOURCE => source = Some(location(c)?),
            tag::RESP_URI => h.resp_uri = Some(text(c)?),
            tag::NO_RESP => h.no_resp = true,
            tag::CRED => h.cred = Some(cred(c)?),
            tag::META => h.meta = Some(meta(c)?),
            _ => return Err(unexpected("SyncHdr", c)),
        }
    }
    h.ver_dtd = require(ver_dtd, "SyncHdr", "VerDTD")?;
    h.ver_proto = require(ver_proto, "SyncHdr", "VerProto")?;
    h.session_id = require(session_id, "SyncHdr", "SessionID")?;
    h.msg_id = require(msg_id, "SyncHdr", "MsgID")?;
    h.target = require(target, "SyncHdr", "Target")?;
    h.source = require(source, "SyncHdr", "Source")?;
    Ok(h)
}

/// CmdIDs must be unique in a message, nested commands included (RepPro §5.1.3).
fn check_unique_ids(commands: &[Command], seen: &mut BTreeSet<u32>) -> Result<(), DecodeError> {
    for c in commands {
        if !seen.insert(c.cmd_id().0) {
            return Err(DecodeError::DuplicateCmdId(c.cmd_id().0));
        }
        if let Command::Atomic(k) | Command::Sequence(k) = c {
            check_unique_ids(&k.commands, seen)?;
        }
    }
    Ok(())
}

impl Message {
    /// Builds the model from a decoded element tree.
    pub fn from_element(root: &Element) -> Result<Message, DecodeError> {
        if root.tag != tag::SYNC_ML {
            return Err(DecodeError::NotSyncMl(root.tag.name.to_owned()));
        }
        let mut hdr = None;
        let mut body = None;
        for c in root.elements() {
            match c.tag {
                tag::SYNC_HDR if hdr.is_none() => hdr = Some(header(c)?),
                tag::SYNC_BODY if body.is_none() => body = Some(c),
                _ => return Err(unexpected("SyncML", c)),
            }
        }
        let header = require(hdr, "SyncML", "SyncHdr")?;
        let body_el = require(body, "SyncML", "SyncBody")?;
        let mut commands = Vec::new();
        let mut is_final = false;
        for c in body_el.elements() {
            if c.tag == tag::FINAL {
                is_final = true;
                continue;
            }
            match command(c, 0)? {
                Some(cmd) => commands.push(cmd),
                None => return Err(unexpected("SyncBody", c)),
            }
        }
        check_unique_ids(&commands, &mut BTreeSet::new())?;
        Ok(Message {
            header,
            body: commands,
            is_final,
        })
    }

    /// Reads only the SyncHdr of a decoded element tree: enough to answer a message whose
    /// body is refused with a Status on its header.
    pub fn header_from_element(root: &Element) -> Result<SyncHdr, DecodeError> {
        if root.tag != tag::SYNC_ML {
            return Err(DecodeError::NotSyncMl(root.tag.name.to_owned()));
        }
        let hdr = root.elements().find(|c| c.tag == tag::SYNC_HDR).ok_or(
            DecodeError::MissingElement {
                parent: "SyncML",
                child: "SyncHdr",
            },
        )?;
        header(hdr)
    }

    /// Builds the element tree, children in DTD order.
    pub fn to_element(&self) -> Element {
        let mut root = Element::new(tag::SYNC_ML);
        root.push(header_el(&self.header));
        let mut body = Element::new(tag::SYNC_BODY);
        for c in &self.body {
            body.push(command_el(c));
        }
        if self.is_final {
            body.push(Element::new(tag::FINAL));
        }
        root.push(body);
        root
    }
}

// ---------------------------------------------------------------------------------------
// Model -> element tree
// ---------------------------------------------------------------------------------------

fn leaf(t: Tag, text: impl Into<String>) -> Element {
    Element::text(t, text)
}

fn location_el(t: Tag, l: &Location) -> Element {
    let mut e = Element::new(t);
    e.push(leaf(tag::LOC_URI, &l.uri));
    if let Some(n) = &l.name {
        e.push(leaf(tag::LOC_NAME, n));
    }
    e
}

fn meta_el(m: &Meta) -> Element {
    let mut e = Element::new(tag::META);
    let opt = |e: &mut Element, t: Tag, v: &Option<String>| {
        if let Some(v) = v {
            e.push(leaf(t, v));
        }
    };
    let num = |e: &mut Element, t: Tag, v: Option<u64>| {
        if let Some(v) = v {
            e.push(leaf(t, v.to_string()));
        }
    };
    opt(&mut e, tag::FORMAT, &m.format);
    opt(&mut e, tag::TYPE, &m.mime_type);
    opt(&mut e, tag::MARK, &m.mark);
    num(&mut e, tag::SIZE, m.size);
    opt(&mut e, tag::VERSION, &m.version);
    opt(&mut e, tag::NEXT_NONCE, &m.next_nonce);
    num(&mut e, tag::MAX_MSG_SIZE, m.max_msg_size);
    num(&mut e, tag::MAX_OBJ_SIZE, m.max_obj_size);
    for x in &m.emi {
        e.push(leaf(tag::EMI, x));
    }
    e
}

fn cred_el(c: &Cred) -> Element {
    let mut e = Element::new(tag::CRED);
    if !c.meta.is_empty() {
        e.push(meta_el(&c.meta));
    }
    e.push(leaf(tag::DATA, &c.data));
    e
}

fn item_el(it: &Item) -> Element {
    let mut e = Element::new(tag::ITEM);
    if let Some(t) = &it.target {
        e.push(location_el(tag::TARGET, t));
    }
    if let Some(s) = &it.source {
        e.push(location_el(tag::SOURCE, s));
    }
    if let Some(m) = &it.meta {
        e.push(meta_el(m));
    }
    if let Some(d) = &it.data {
        e.push(data_el(d));
    }
    if it.more_data {
        e.push(Element::new(tag::MORE_DATA));
    }
    e
}

fn data_el(d: &Data) -> Element {
    if d.0.is_empty() {
        return Element::new(tag::DATA);
    }
    match d.as_text() {
        Some(t) => leaf(tag::DATA, t),
        None => Element {
            tag: tag::DATA,
            children: vec![Node::Opaque(d.0.clone())],
        },
    }
}

fn cmd_head(t: Tag, id: CmdId, no_resp: bool) -> Element {
    let mut e = Element::new(t);
    e.push(leaf(tag::CMD_ID, id.0.to_string()));
    if no_resp {
        e.push(Element::new(tag::NO_RESP));
    }
    e
}

fn item_command_el(t: Tag, c: &ItemCommand) -> Element {
    let mut e = cmd_head(t, c.cmd_id, c.no_resp);
    if let Some(cr) = &c.cred {
        e.push(cred_el(cr));
    }
    if let Some(m) = &c.meta {
        e.push(meta_el(m));
    }
    for it in &c.items {
        e.push(item_el(it));
    }
    e
}

fn refs(e: &mut Element, targets: &[String], sources: &[String]) {
    for r in targets {
        e.push(leaf(tag::TARGET_REF, r));
    }
    for r in sources {
        e.push(leaf(tag::SOURCE_REF, r));
    }
}

fn command_el(c: &Command) -> Element {
    match c {
        Command::Add(x) => item_command_el(tag::ADD, x),
        Command::Copy(x) => item_command_el(tag::COPY, x),
        Command::Delete(x) => item_command_el(tag::DELETE, x),
        Command::Get(x) => item_command_el(tag::GET, x),
        Command::Replace(x) => item_command_el(tag::REPLACE, x),
        Command::Alert(a) => {
            let mut e = cmd_head(tag::ALERT, a.cmd_id, a.no_resp);
            if let Some(cr) = &a.cred {
                e.push(cred_el(cr));
            }
            e.push(leaf(tag::DATA, a.code.0.to_string()));
            if let Some(k) = &a.correlator {
                e.push(leaf(tag::CORRELATOR, k));
            }
            for it in &a.items {
                e.push(item_el(it));
            }
            e
        }
        Command::Exec(x) => {
            let mut e = cmd_head(tag::EXEC, x.cmd_id, x.no_resp);
            if let Some(cr) = &x.cred {
                e.push(cred_el(cr));
            }
            if let Some(m) = &x.meta {
                e.push(meta_el(m));
            }
            if let Some(k) = &x.correlator {
                e.push(leaf(tag::CORRELATOR, k));
            }
            e.push(item_el(&x.item));
            e
        }
        Command::Atomic(k) | Command::Sequence(k) => {
            let t = if matches!(c, Command::Atomic(_)) {
                tag::ATOMIC
            } else {
                tag::SEQUENCE
            };
            let mut e = cmd_head(t, k.cmd_id, k.no_resp);
            if let Some(m) = &k.meta {
                e.push(meta_el(m));
            }
            for inner in &k.commands {
                e.push(command_el(inner));
            }
            e
        }
        Command::Status(s) => {
            let mut e = cmd_head(tag::STATUS, s.cmd_id, false);
            if let Some(m) = s.msg_ref {
                e.push(leaf(tag::MSG_REF, m.0.to_string()));
            }
            e.push(leaf(tag::CMD_REF, s.cmd_ref.0.to_string()));
            e.push(leaf(tag::CMD, &s.cmd));
            refs(&mut e, &s.target_refs, &s.source_refs);
            if let Some(cr) = &s.cred {
                e.push(cred_el(cr));
            }
            if let Some(ch) = &s.chal {
                let mut ce = Element::new(tag::CHAL);
                ce.push(meta_el(&ch.meta));
                e.push(ce);
            }
            e.push(leaf(tag::DATA, s.code.0.to_string()));
            for it in &s.items {
                e.push(item_el(it));
            }
            e
        }
        Command::Results(r) => {
            let mut e = cmd_head(tag::RESULTS, r.cmd_id, false);
            if let Some(m) = r.msg_ref {
                e.push(leaf(tag::MSG_REF, m.0.to_string()));
            }
            e.push(leaf(tag::CMD_REF, r.cmd_ref.0.to_string()));
            if let Some(m) = &r.meta {
                e.push(meta_el(m));
            }
            refs(&mut e, &r.target_refs, &r.source_refs);
            for it in &r.items {
                e.push(item_el(it));
            }
            e
        }
        Command::Unsupported { name, cmd_id } => {
            let t = Tag::by_name(name).unwrap_or(tag::SYNC);
            cmd_head(t, *cmd_id, false)
        }
    }
}

fn header_el(h: &SyncHdr) -> Element {
    let mut e = Element::new(tag::SYNC_HDR);
    e.push(leaf(tag::VER_DTD, &h.ver_dtd));
    e.push(leaf(tag::VER_PROTO, &h.ver_proto));
    e.push(leaf(tag::SESSION_ID, &h.session_id));
    e.push(leaf(tag::MSG_ID, h.msg_id.0.to_string()));
    e.push(location_el(tag::TARGET, &h.target));
    e.push(location_el(tag::SOURCE, &h.source));
    if let Some(r) = &h.resp_uri {
        e.push(leaf(tag::RESP_URI, r));
    }
    if h.no_resp {
        e.push(Element::new(tag::NO_RESP));
    }
    if let Some(c) = &h.cred {
        e.push(cred_el(c));
    }
    if let Some(m) = &h.meta {
        e.push(meta_el(m));
    }
    e
}
