//! Pieces both session machines use: packing commands into messages within the peer's
//! MaxMsgSize, chunking large objects, reassembling received chunks, building Status.

use super::SessionError;
use crate::codec::Encoding;
use crate::codes::{AlertCode, StatusCode};
use crate::model::{Alert, CmdId, Command, Item, Message, MsgId, Status, SyncHdr};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// A command waiting to be sent; `handle` lets the application match the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queued {
    pub handle: Option<u32>,
    pub cmd: Command,
    /// A chunk after the first of a large object (DM Pro §7.1.3).
    #[serde(default)]
    pub continuation: bool,
}

impl Queued {
    pub fn plain(cmd: Command) -> Queued {
        Queued {
            handle: None,
            cmd,
            continuation: false,
        }
    }
}

/// The Status answering `cmd` of message `msg_ref` (RepPro §6.6.14: TargetRef/SourceRef
/// echo the items' URIs).
pub(crate) fn status_for(cmd: &Command, msg_ref: MsgId, code: StatusCode) -> Status {
    let items = cmd.items();
    Status {
        cmd_id: CmdId(0),
        msg_ref: Some(msg_ref),
        cmd_ref: cmd.cmd_id(),
        cmd: cmd.name().to_owned(),
        target_refs: items
            .iter()
            .filter_map(|i| i.target.as_ref().map(|t| t.uri.clone()))
            .collect(),
        source_refs: items
            .iter()
            .filter_map(|i| i.source.as_ref().map(|s| s.uri.clone()))
            .collect(),
        cred: None,
        chal: None,
        code,
        items: Vec::new(),
    }
}

/// The Status for a received SyncHdr.
pub(crate) fn header_status(msg_ref: MsgId, hdr: &SyncHdr, code: StatusCode) -> Status {
    Status {
        cmd_id: CmdId(0),
        msg_ref: Some(msg_ref),
        cmd_ref: CmdId::HEADER,
        cmd: "SyncHdr".into(),
        target_refs: vec![hdr.target.uri.clone()],
        source_refs: vec![hdr.source.uri.clone()],
        cred: None,
        chal: None,
        code,
        items: Vec::new(),
    }
}

/// An Alert without items (1222, 1223).
pub(crate) fn simple_alert(code: AlertCode) -> Command {
    Command::Alert(Alert {
        cmd_id: CmdId(0),
        no_resp: false,
        cred: None,
        code,
        correlator: None,
        items: Vec::new(),
    })
}

/// Gives fresh CmdIDs to `cmd` and everything nested in it.
fn renumber(cmd: &mut Command, next: &mut u32) {
    cmd.set_cmd_id(CmdId(*next));
    *next += 1;
    if let Command::Atomic(k) | Command::Sequence(k) = cmd {
        for inner in &mut k.commands {
            renumber(inner, next);
        }
    }
}

fn chunk_item_mut(cmd: &mut Command) -> Option<&mut Item> {
    match cmd {
        Command::Add(c) | Command::Replace(c) if c.items.len() == 1 => c.items.first_mut(),
        Command::Results(r) if r.items.len() == 1 => r.items.first_mut(),
        _ => None,
    }
}

fn single_item(cmd: &Command) -> Option<&Item> {
    match cmd {
        Command::Add(_) | Command::Replace(_) | Command::Results(_) if cmd.items().len() == 1 => {
            cmd.items().first()
        }
        _ => None,
    }
}

/// Splits a command with one large item into chunks of at most `chunk` data bytes: all but
/// the last carry `MoreData`, the first carries the total `Size` (DM Protocol §7.1.3). UTF-8
/// text is cut on character boundaries so each chunk stays valid XML text.
fn split_large(cmd: &Command, chunk: usize) -> Option<Vec<Command>> {
    let data = single_item(cmd)?.data.as_ref()?.0.clone();
    if chunk == 0 || data.len() <= chunk {
        return None;
    }
    let text = std::str::from_utf8(&data).ok();
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let mut end = (start + chunk).min(data.len());
        if let Some(t) = text {
            while end > start && !t.is_char_boundary(end) {
                end -= 1;
            }
            if end == start {
                return None;
            }
        }
        pieces.push(data[start..end].to_vec());
        start = end;
    }
    let count = pieces.len();
    let mut out = Vec::with_capacity(count);
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut c = cmd.clone();
        let item = chunk_item_mut(&mut c)?;
        item.data = Some(crate::model::Data(piece));
        item.more_data = i + 1 < count;
        if i == 0 {
            let mut meta = item.meta.clone().unwrap_or_default();
            meta.size = Some(data.len() as u64);
            item.meta = Some(meta);
        } else if let Some(m) = item.meta.as_mut() {
            m.size = None;
        }
        out.push(c);
    }
    Some(out)
}

/// Splits a command with several items into one command per item (RepPro allows a command
/// to carry one or more items; each part is answered on its own).
fn split_items(cmd: &Command) -> Option<Vec<Command>> {
    let mut parts = Vec::new();
    match cmd {
        Command::Add(c) | Command::Replace(c) | Command::Delete(c) | Command::Get(c)
            if c.items.len() > 1 =>
        {
            for item in &c.items {
                let mut part = cmd.clone();
                if let Command::Add(p)
                | Command::Replace(p)
                | Command::Delete(p)
                | Command::Get(p) = &mut part
                {
                    p.items = vec![item.clone()];
                }
                parts.push(part);
            }
        }
        Command::Results(r) if r.items.len() > 1 => {
            for item in &r.items {
                let mut part = r.clone();
                part.items = vec![item.clone()];
                parts.push(Command::Results(part));
            }
        }
        _ => return None,
    }
    Some(parts)
}

fn encoded_len(msg: &Message, enc: Encoding) -> Result<usize, SessionError> {
    Ok(enc.encode(msg)?.len())
}

/// Packs queued commands into one message of at most `max` bytes. Returns the message
/// (encoded body included) and the commands it carries. `Final` is set when the queue is
/// empty afterwards and `final_allowed`.
pub(crate) fn pack(
    header: SyncHdr,
    queue: &mut VecDeque<Queued>,
    max: usize,
    enc: Encoding,
    final_allowed: bool,
) -> Result<(Message, Vec<u8>, Vec<Queued>), SessionError> {
    let mut msg = Message {
        header,
        body: Vec::new(),
        is_final: true,
    };
    let base = encoded_len(&msg, enc)?;
    let mut used = base;
    let mut sent: Vec<Queued> = Vec::new();
    let mut next = 1u32;
    let mut ended_with_chunk = false;
    while let Some(mut q) = queue.pop_front() {
        let mut probe_next = next;
        renumber(&mut q.cmd, &mut probe_next);
        let alone = Message {
            header: msg.header.clone(),
            body: vec![q.cmd.clone()],
            is_final: true,
        };
        let size = encoded_len(&alone, enc)?.saturating_sub(base);
        if used + size > max {
            let only_statuses = sent.iter().all(|s| matches!(s.cmd, Command::Status(_)));
            if only_statuses || size > max.saturating_sub(base) {
                // Room for data: what is left once the command without data is counted.
                let mut bare = q.cmd.clone();
                if let Some(item) = chunk_item_mut(&mut bare) {
                    // One byte of data so that the Data element has its closing tag.
                    item.data = Some(crate::model::Data(vec![b'x']));
                    let mut meta = item.meta.clone().unwrap_or_default();
                    meta.size = Some(u64::MAX);
                    item.meta = Some(meta);
                    item.more_data = true;
                }
                let bare_size = encoded_len(
                    &Message {
                        header: msg.header.clone(),
                        body: vec![bare],
                        is_final: true,
                    },
                    enc,
                )?
                .saturating_sub(base);
                let room = max.saturating_sub(used + bare_size + 8);
                // XML escaping can grow text: leave a margin of a fifth.
                let chunk = if enc == Encoding::Xml {
                    room * 4 / 5
                } else {
                    room
                };
                if let Some(parts) = split_items(&q.cmd) {
                    for c in parts.into_iter().rev() {
                        queue.push_front(Queued {
                            handle: q.handle,
                            cmd: c,
                            continuation: false,
                        });
                    }
                    continue;
                }
                if let Some(chunks) = split_large(&q.cmd, chunk) {
                    for (i, c) in chunks.into_iter().enumerate().rev() {
                        queue.push_front(Queued {
                            handle: q.handle,
                            cmd: c,
                            continuation: i > 0 || q.continuation,
                        });
                    }
                    continue;
                }
                // A command that cannot shrink and does not fit even a message of its own can
                // never be sent. One that fits alone waits for the next message, which the
                // statuses sent now leave room for (DM Pro §8.2: the peer asks for it with
                // Alert 1222).
                if size > max.saturating_sub(base) {
                    return Err(SessionError::CommandTooLarge(q.cmd.cmd_id()));
                }
            }
            queue.push_front(q);
            break;
        }
        used += size;
        next = probe_next;
        let is_chunk = single_item(&q.cmd).is_some_and(|i| i.more_data);
        msg.body.push(q.cmd.clone());
        sent.push(q);
        if is_chunk {
            ended_with_chunk = true;
            break;
        }
    }
    msg.is_final = final_allowed && queue.is_empty() && !ended_with_chunk;
    let body = enc.encode(&msg)?;
    Ok((msg, body, sent))
}

/// A large object being received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reassembly {
    key: String,
    cmd_name: String,
    expected: u64,
    data: Vec<u8>,
    first: Command,
    refused: Option<StatusCode>,
}

/// Remembers a refused object until its last chunk, so that every chunk gets `code`.
fn refuse(
    state: &mut Option<Reassembly>,
    key: String,
    cmd: &Command,
    more: bool,
    code: StatusCode,
) -> StatusCode {
    *state = more.then(|| Reassembly {
        key,
        cmd_name: cmd.name().to_owned(),
        expected: 0,
        data: Vec::new(),
        first: Command::Unsupported {
            name: String::new(),
            cmd_id: CmdId(0),
        },
        refused: Some(code),
    });
    code
}

impl Reassembly {
    /// The URI the object is for.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// What became of a received command with respect to large objects.
#[allow(clippy::large_enum_variant)] // short-lived, one per received command
pub(crate) enum Chunk {
    /// Not part of a large object.
    NotChunked,
    /// A chunk was buffered: answer 213.
    Buffered,
    /// The last chunk arrived: the command with the whole data.
    Complete(Command),
    /// The object is refused (412 no Size, 413 too large, 424 size mismatch).
    Failed(StatusCode),
}

fn item_key(item: &Item) -> String {
    item.target
        .as_ref()
        .or(item.source.as_ref())
        .map(|l| l.uri.clone())
        .unwrap_or_default()
}

/// Feeds a received command to the reassembly state.
pub(crate) fn accept_chunk(state: &mut Option<Reassembly>, cmd: &Command, max_obj: usize) -> Chunk {
    let Some(item) = single_item(cmd) else {
        return Chunk::NotChunked;
    };
    let key = item_key(item);
    let piece = item.data.as_ref().map(|d| d.0.as_slice()).unwrap_or(&[]);
    if let Some(r) = state.as_mut()
        && r.key == key
        && r.cmd_name == cmd.name()
    {
        // A refused object: the rest of its chunks get the same answer, and the last one
        // must not be taken for a whole value.
        if let Some(code) = r.refused {
            if !item.more_data {
                *state = None;
            }
            return Chunk::Failed(code);
        }
        let total = r.data.len() + piece.len();
        let refused = if total > max_obj {
            Some(StatusCode::REQUEST_ENTITY_TOO_LARGE)
        } else if total as u64 > r.expected {
            Some(StatusCode::SIZE_MISMATCH)
        } else {
            None
        };
        if let Some(code) = refused {
            let k = r.key.clone();
            return Chunk::Failed(refuse(state, k, cmd, item.more_data, code));
        }
        r.data.extend_from_slice(piece);
        if item.more_data {
            return Chunk::Buffered;
        }
        let Some(done) = state.take() else {
            return Chunk::Failed(StatusCode::COMMAND_FAILED);
        };
        if done.data.len() as u64 != done.expected {
            return Chunk::Failed(StatusCode::SIZE_MISMATCH);
        }
        let mut whole = done.first;
        if let Some(it) = chunk_item_mut(&mut whole) {
            it.data = Some(crate::model::Data(done.data));
            it.more_data = false;
            if let Some(m) = it.meta.as_mut() {
                m.size = None;
            }
        }
        return Chunk::Complete(whole);
    }
    if !item.more_data {
        return Chunk::NotChunked;
    }
    let size = item
        .meta
        .as_ref()
        .and_then(|m| m.size)
        .or_else(|| match cmd {
            Command::Add(c) | Command::Replace(c) => c.meta.as_ref().and_then(|m| m.size),
            Command::Results(r) => r.meta.as_ref().and_then(|m| m.size),
            _ => None,
        });
    let Some(expected) = size else {
        return Chunk::Failed(refuse(
            state,
            key,
            cmd,
            true,
            StatusCode::INCOMPLETE_COMMAND,
        ));
    };
    if expected > max_obj as u64 {
        return Chunk::Failed(refuse(
            state,
            key,
            cmd,
            true,
            StatusCode::REQUEST_ENTITY_TOO_LARGE,
        ));
    }
    if piece.len() as u64 > expected {
        return Chunk::Failed(refuse(state, key, cmd, true, StatusCode::SIZE_MISMATCH));
    }
    *state = Some(Reassembly {
        key,
        cmd_name: cmd.name().to_owned(),
        expected,
        data: piece.to_vec(),
        first: cmd.clone(),
        refused: None,
    });
    Chunk::Buffered
}

/// Alert 1225 for an object whose chunks stopped coming (DM Protocol §7.1.3).
pub(crate) fn no_end_of_data(key: &str) -> Command {
    Command::Alert(Alert {
        cmd_id: CmdId(0),
        no_resp: false,
        cred: None,
        code: AlertCode::NO_END_OF_DATA,
        correlator: None,
        items: vec![Item::target(key)],
    })
}

/// The format and data to send a node value with: XML cannot carry arbitrary octets, so a
/// value that is not XML text travels base64-encoded with format `b64` (TND §7.7.6).
pub(crate) fn transport_value(
    enc: Encoding,
    value: &crate::tree::NodeValue,
) -> (String, crate::model::Data) {
    use base64::Engine;
    if enc == Encoding::Xml && !crate::xml::is_xml_text(&value.data) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&value.data);
        return ("b64".into(), crate::model::Data::text(b64));
    }
    (value.format.clone(), crate::model::Data(value.data.clone()))
}

/// The node value a received item carries: `b64` data is decoded and stored as `bin`.
pub(crate) fn received_value(
    format: &str,
    mime_type: Option<&str>,
    data: &[u8],
) -> Result<crate::tree::NodeValue, StatusCode> {
    use base64::Engine;
    if format == "b64" {
        let text = std::str::from_utf8(data).map_err(|_| StatusCode::UNSUPPORTED_MEDIA_TYPE)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| StatusCode::UNSUPPORTED_MEDIA_TYPE)?;
        return Ok(crate::tree::NodeValue {
            format: "bin".into(),
            mime_type: mime_type.map(str::to_owned),
            data: raw,
        });
    }
    Ok(crate::tree::NodeValue {
        format: format.to_owned(),
        mime_type: mime_type.map(str::to_owned),
        data: data.to_vec(),
    })
}

/// After the peer refused a large object (412, 413, 424 on one of its chunks), the chunks
/// still queued for the same URI are dropped instead of sent.
pub(crate) fn drop_refused_chunks(queue: &mut VecDeque<Queued>, status: &Status) {
    if !matches!(
        status.code,
        StatusCode::INCOMPLETE_COMMAND
            | StatusCode::REQUEST_ENTITY_TOO_LARGE
            | StatusCode::SIZE_MISMATCH
    ) {
        return;
    }
    let refs: Vec<&str> = status
        .target_refs
        .iter()
        .chain(&status.source_refs)
        .map(String::as_str)
        .collect();
    queue.retain(|q| {
        !(q.continuation
            && single_item(&q.cmd).is_some_and(|i| refs.contains(&item_key(i).as_str())))
    });
}

/// True if the message asks for our next message (Alert 1222).
pub(crate) fn asks_next_message(msg: &Message) -> bool {
    msg.body
        .iter()
        .any(|c| matches!(c, Command::Alert(a) if a.code == AlertCode::NEXT_MESSAGE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Data, ItemCommand, Location};

    fn hdr() -> SyncHdr {
        SyncHdr {
            ver_dtd: "1.2".into(),
            ver_proto: "DM/1.2".into(),
            session_id: "1".into(),
            msg_id: MsgId(1),
            target: Location::new("https://dm.example/"),
            source: Location::new("IMEI:1"),
            resp_uri: None,
            no_resp: false,
            cred: None,
            meta: None,
        }
    }

    fn replace(data: &str) -> Command {
        Command::Replace(ItemCommand {
            cmd_id: CmdId(0),
            no_resp: false,
            cred: None,
            meta: None,
            items: vec![Item {
                target: Some(Location::new("./X")),
                data: Some(Data::text(data)),
                ..Item::default()
            }],
        })
    }

    #[test]
    fn large_item_is_chunked_and_reassembled() {
        let big: String = "abcdé".repeat(400);
        for enc in [Encoding::Xml, Encoding::Wbxml] {
            let mut queue = VecDeque::from([Queued::plain(replace(&big))]);
            let mut state = None;
            let mut whole = None;
            let mut rounds = 0;
            while !queue.is_empty() {
                rounds += 1;
                let (msg, body, _) = pack(hdr(), &mut queue, 900, enc, true).unwrap();
                assert!(body.len() <= 900, "{} > 900", body.len());
                for c in &msg.body {
                    match accept_chunk(&mut state, c, 1 << 20) {
                        Chunk::Buffered => assert!(!msg.is_final),
                        Chunk::Complete(c) => whole = Some(c),
                        _ => panic!("unexpected chunk outcome"),
                    }
                }
            }
            assert!(rounds > 3);
            assert_eq!(
                whole.unwrap().items()[0].data.as_ref().unwrap().as_text(),
                Some(big.as_str())
            );
        }
    }

    /// A Get (never chunked) that fits a message alone but not behind the statuses owed goes
    /// in the next message: the statuses go now, in a message without `Final`.
    #[test]
    fn a_command_that_fits_alone_waits_behind_statuses() {
        let status = |n: u32| {
            Queued::plain(Command::Status(crate::model::Status {
                cmd_id: CmdId(0),
                msg_ref: Some(MsgId(1)),
                cmd_ref: CmdId(n),
                cmd: "Replace".into(),
                target_refs: vec![format!("./DevInfo/Ext/Node{n}")],
                source_refs: Vec::new(),
                cred: None,
                chal: None,
                code: StatusCode::OK,
                items: Vec::new(),
            }))
        };
        let get = Command::Get(ItemCommand {
            cmd_id: CmdId(0),
            no_resp: false,
            cred: None,
            meta: None,
            items: vec![Item::target("./DevDetail/FwV")],
        });
        for enc in [Encoding::Xml, Encoding::Wbxml] {
            let empty = Message {
                header: hdr(),
                body: Vec::new(),
                is_final: true,
            };
            let base = encoded_len(&empty, enc).unwrap();
            let with = |body: Vec<Command>| {
                encoded_len(
                    &Message {
                        header: hdr(),
                        body,
                        is_final: true,
                    },
                    enc,
                )
                .unwrap()
            };
            let statuses: Vec<Queued> = (1..=6).map(status).collect();
            let all: Vec<Command> = statuses.iter().map(|q| q.cmd.clone()).collect();
            let get_alone = with(vec![get.clone()]);
            // Room for the six statuses, and for the Get alone, not for both.
            let max = with(all).max(get_alone);
            assert!(
                max < with(
                    statuses
                        .iter()
                        .map(|q| q.cmd.clone())
                        .chain([get.clone()])
                        .collect()
                )
            );
            assert!(get_alone - base > 0);
            let mut queue: VecDeque<Queued> = statuses.into_iter().collect();
            queue.push_back(Queued::plain(get.clone()));
            let (msg, body, sent) = pack(hdr(), &mut queue, max, enc, true).unwrap();
            assert!(body.len() <= max);
            assert_eq!(sent.len(), 6, "{enc:?}: the statuses go now");
            assert!(!msg.is_final, "the package goes on");
            assert_eq!(queue.len(), 1, "the Get waits");
            let (msg, _, sent) = pack(hdr(), &mut queue, max, enc, true).unwrap();
            assert_eq!(sent.len(), 1);
            assert!(matches!(msg.body.as_slice(), [Command::Get(_)]));
            assert!(msg.is_final);
        }
    }

    #[test]
    fn reassembly_detects_size_mismatch_and_missing_size() {
        let mut first = replace("abc");
        if let Some(i) = chunk_item_mut(&mut first) {
            i.more_data = true;
        }
        assert!(matches!(
            accept_chunk(&mut None, &first, 100),
            Chunk::Failed(StatusCode::INCOMPLETE_COMMAND)
        ));
        if let Some(i) = chunk_item_mut(&mut first) {
            i.meta = Some(crate::model::Meta {
                size: Some(10),
                ..Default::default()
            });
        }
        let mut st = None;
        assert!(matches!(
            accept_chunk(&mut st, &first, 100),
            Chunk::Buffered
        ));
        assert!(matches!(
            accept_chunk(&mut st, &replace("de"), 100),
            Chunk::Failed(StatusCode::SIZE_MISMATCH)
        ));
        let mut st = None;
        assert!(matches!(
            accept_chunk(&mut st, &first, 5),
            Chunk::Failed(StatusCode::REQUEST_ENTITY_TOO_LARGE)
        ));
    }
}
