//! Model to element tree, children in the DTD's order (SyncML RepPro 1.2 §5-§6).

use super::{
    Alert, CmdId, Command, Container, Cred, Data, Exec, Item, ItemCommand, Location, Message, Meta,
    Results, Status, SyncHdr,
};
use crate::element::{Element, Node, Tag, tag};

impl Message {
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
        Command::Alert(a) => alert_el(a),
        Command::Exec(x) => exec_el(x),
        Command::Atomic(k) => container_el(tag::ATOMIC, k),
        Command::Sequence(k) => container_el(tag::SEQUENCE, k),
        Command::Status(s) => status_el(s),
        Command::Results(r) => results_el(r),
        Command::Unsupported { name, cmd_id } => {
            let t = Tag::by_name(name).unwrap_or(tag::SYNC);
            cmd_head(t, *cmd_id, false)
        }
    }
}

fn alert_el(a: &Alert) -> Element {
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

fn exec_el(x: &Exec) -> Element {
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

fn container_el(t: Tag, k: &Container) -> Element {
    let mut e = cmd_head(t, k.cmd_id, k.no_resp);
    if let Some(m) = &k.meta {
        e.push(meta_el(m));
    }
    for inner in &k.commands {
        e.push(command_el(inner));
    }
    e
}

fn status_el(s: &Status) -> Element {
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

fn results_el(r: &Results) -> Element {
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
