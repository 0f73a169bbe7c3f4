//! Element tree to model: the liberal reading described in the [module docs](super).

use super::{
    Alert, Chal, CmdId, Command, Container, Cred, Data, Exec, Item, ItemCommand, Location, Message,
    Meta, MsgId, Results, Status, SyncHdr,
};
use crate::codes::{AlertCode, StatusCode};
use crate::element::{Element, Node, tag};
use crate::error::DecodeError;
use std::collections::BTreeSet;

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
    c: &Element,
    target_refs: &mut Vec<String>,
    source_refs: &mut Vec<String>,
    items: &mut Vec<Item>,
) -> Result<bool, DecodeError> {
    match c.tag {
        tag::TARGET_REF => target_refs.push(text(c)?),
        tag::SOURCE_REF => source_refs.push(text(c)?),
        tag::ITEM => items.push(item(c)?),
        _ => return Ok(false),
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
                if !refs_and_items(c, &mut s.target_refs, &mut s.source_refs, &mut s.items)? {
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
                if !refs_and_items(c, &mut r.target_refs, &mut r.source_refs, &mut r.items)? {
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
}
