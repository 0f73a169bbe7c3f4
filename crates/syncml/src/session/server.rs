//! The DM server session: package 1 in, package 2 out, package 3 in, package 4 out
//! (DM Protocol 1.2 §8.3-§8.6).
//!
//! A [`ServerSession`] is plain data: the server stores it (e.g. as JSON) after every
//! [`ServerSession::reply`] and restores it, on any replica, when the next message of the
//! session arrives. Each round is: [`ServerSession::receive`] (events out), queue commands
//! (`get`, `replace`, `exec`, ...), [`ServerSession::reply`] (the message to return).

use super::common::{self, Chunk, Queued, Reassembly};
use super::{Outgoing, SessionError};
use crate::auth::{self, AuthError, AuthScheme, Credentials, Nonce};
use crate::codec::Encoding;
use crate::codes::{AlertCode, StatusCode};
use crate::limits::Limits;
use crate::model::{
    Alert, CmdId, Command, Data, Exec, Item, ItemCommand, Location, Message, Meta, MsgId, SyncHdr,
    VER_DTD, VER_PROTO,
};
use crate::tree::NodeValue;
use crate::uri::NodeUri;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The server's view of one device account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// Our `ServerID`.
    pub server_id: String,
    /// Our URL (`Source` LocURI of our messages).
    pub server_uri: String,
    /// An optional `RespURI` (e.g. a URL naming this session), sent in every reply.
    pub resp_uri: Option<String>,
    /// The device's credentials (DMAcc `AppAuth/Cli` as the server stores them).
    pub client_credentials: Credentials,
    /// Our credentials towards the device (DMAcc `AppAuth/Srv`).
    pub server_credentials: Credentials,
    /// The scheme.
    pub auth: AuthScheme,
    /// The encoding we send.
    pub encoding: Encoding,
    /// Size bounds.
    pub limits: Limits,
}

/// What a client message brought.
#[allow(clippy::large_enum_variant)] // a handful per message
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// The client's credentials verified.
    Authenticated {
        /// Its `Source` LocURI (DevId).
        client_id: String,
    },
    /// The client's credentials were refused with this status (a challenge was sent).
    AuthenticationRejected(StatusCode),
    /// The nonce the client must use from now on (store it with the account).
    NextClientNonce(Nonce),
    /// An Alert from the client: 1201/1200 (session start), 1226 (Generic Alert), ...
    ClientAlert(Alert),
    /// Data the client sent with Replace/Add (package 1 carries `./DevInfo`).
    DeviceData(Vec<Item>),
    /// The Status of one of our commands.
    Status {
        /// The handle returned when the command was queued.
        handle: CommandHandle,
        /// The command name.
        cmd: String,
        /// The code.
        code: StatusCode,
        /// `TargetRef`s and `SourceRef`s.
        refs: Vec<String>,
    },
    /// The Results of one of our Gets (large objects arrive reassembled).
    Results {
        /// The handle of the Get (`None` if the Results answer no Get of ours).
        handle: Option<CommandHandle>,
        /// The items.
        items: Vec<Item>,
    },
    /// The client rejected our credentials; they go again with the new nonce.
    ServerCredentialsRejected(StatusCode),
    /// The client aborted the session (Alert 1223).
    Aborted,
    /// The client's message was malformed; its SyncHdr gets this error's status and the
    /// session ends.
    Refused(crate::error::DecodeError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    AwaitingClient,
    Active,
    Finished,
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    handle: u32,
    cmd: String,
}

/// Names a command queued on a [`ServerSession`]; its Status and Results events carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandHandle(pub u32);

/// The key of a command we sent: JSON maps need string keys.
fn pending_key(msg: u32, cmd: u32) -> String {
    format!("{msg}:{cmd}")
}

/// A server session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSession {
    config: ServerConfig,
    phase: Phase,
    session_id: Option<String>,
    client_id: Option<String>,
    msg_id: u32,
    client_msgs: u32,
    client_nonce: Nonce,
    server_nonce: Nonce,
    authenticated: bool,
    server_authenticated: bool,
    auth_attempts: u8,
    server_auth_attempts: u8,
    auth_failed_now: bool,
    refused: bool,
    reply_due: bool,
    client_final: bool,
    client_asks_next: bool,
    statuses: Vec<Queued>,
    queue: VecDeque<Queued>,
    last_sent: Vec<Queued>,
    next_handle: u32,
    pending: BTreeMap<String, Pending>,
    client_max_msg: Option<usize>,
    reassembly: Option<Reassembly>,
}

impl ServerSession {
    /// A session expecting package 1. `client_nonce` is the nonce the device must use in its
    /// credentials, `server_nonce` the one we use in ours (both stored with the account).
    pub fn new(config: ServerConfig, client_nonce: Nonce, server_nonce: Nonce) -> ServerSession {
        ServerSession {
            config,
            phase: Phase::AwaitingClient,
            session_id: None,
            client_id: None,
            msg_id: 0,
            client_msgs: 0,
            client_nonce,
            server_nonce,
            authenticated: false,
            server_authenticated: false,
            auth_attempts: 0,
            server_auth_attempts: 0,
            auth_failed_now: false,
            refused: false,
            reply_due: false,
            client_final: false,
            client_asks_next: false,
            statuses: Vec::new(),
            queue: VecDeque::new(),
            last_sent: Vec::new(),
            next_handle: 1,
            pending: BTreeMap::new(),
            client_max_msg: None,
            reassembly: None,
        }
    }

    /// The SessionID, once package 1 arrived.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The client's `Source` LocURI, once package 1 arrived.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The nonce our credentials are computed with: the one given to [`ServerSession::new`]
    /// until the client challenges us with a `NextNonce` (DM Security 1.2 §5.4). Store it with
    /// the account: the next session, and the digest of a package 0 (DM Notification 1.2
    /// §6.3), use the nonce the client expects.
    pub fn server_nonce(&self) -> &Nonce {
        &self.server_nonce
    }

    /// True once the client authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// True once the session is over (finished or aborted).
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Aborted)
    }

    /// True if the session ended normally.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Handles a client message. `fresh_nonce` is a new random nonce, used if this message
    /// calls for a challenge or for the next session's nonce.
    pub fn receive(
        &mut self,
        body: &[u8],
        hmac: Option<&str>,
        fresh_nonce: Nonce,
    ) -> Result<Vec<ServerEvent>, SessionError> {
        if self.is_over() {
            return Err(SessionError::Ended);
        }
        if self.reply_due {
            return Err(SessionError::OutOfOrder(
                "receive called again before reply",
            ));
        }
        self.client_msgs += 1;
        if self.client_msgs > self.config.limits.max_messages {
            self.phase = Phase::Aborted;
            return Err(SessionError::TooManyMessages(
                self.config.limits.max_messages,
            ));
        }
        let msg = match Encoding::sniff(body).decode(body, &self.config.limits) {
            Ok(m) => m,
            Err(e) => return self.refuse_malformed(body, e),
        };
        if msg.header.ver_proto != VER_PROTO {
            return Err(SessionError::UnsupportedProtocol(
                msg.header.ver_proto.chars().take(32).collect(),
            ));
        }
        match &self.session_id {
            None => {
                self.session_id = Some(msg.header.session_id.clone());
                self.client_id = Some(msg.header.source.uri.clone());
                self.phase = Phase::Active;
            }
            Some(id) if *id != msg.header.session_id => {
                return Err(SessionError::WrongSession {
                    expected: id.clone(),
                    got: msg.header.session_id.clone(),
                });
            }
            Some(_) => {}
        }
        if let Some(m) = msg.header.meta.as_ref().and_then(|m| m.max_msg_size) {
            self.client_max_msg = Some(
                usize::try_from(m)
                    .unwrap_or(usize::MAX)
                    .clamp(1024, self.config.limits.max_message_bytes),
            );
        }
        self.reply_due = true;
        self.auth_failed_now = false;
        self.refused = false;
        self.client_final = msg.is_final;
        self.client_asks_next = common::asks_next_message(&msg);
        let msg_ref = msg.header.msg_id;
        let mut events = Vec::new();

        // DM Security §5.3-§5.4: authenticate the client before anything else.
        if self.config.auth == AuthScheme::Hmac || !self.authenticated {
            let verdict = match self.config.auth {
                AuthScheme::Hmac => auth::verify_hmac(
                    hmac,
                    &self.config.client_credentials,
                    &self.client_nonce,
                    body,
                ),
                scheme => auth::verify_cred(
                    msg.header.cred.as_ref(),
                    scheme,
                    &self.config.client_credentials,
                    &self.client_nonce,
                ),
            };
            let newly = !self.authenticated;
            match verdict {
                Ok(()) if newly => {
                    self.authenticated = true;
                    events.push(ServerEvent::Authenticated {
                        client_id: msg.header.source.uri.clone(),
                    });
                    // 212 with a Chal carrying the nonce for the next session (§5.4).
                    let mut hs = common::header_status(
                        msg_ref,
                        &msg.header,
                        StatusCode::AUTHENTICATION_ACCEPTED,
                    );
                    if self.config.auth != AuthScheme::Basic {
                        hs.chal = Some(auth::make_chal(self.config.auth, &fresh_nonce));
                        self.client_nonce = fresh_nonce;
                        events.push(ServerEvent::NextClientNonce(self.client_nonce.clone()));
                    }
                    self.statuses.push(Queued::plain(Command::Status(hs)));
                }
                Ok(()) => {
                    self.statuses
                        .push(Queued::plain(Command::Status(common::header_status(
                            msg_ref,
                            &msg.header,
                            StatusCode::OK,
                        ))));
                }
                Err(e) => {
                    self.auth_attempts += 1;
                    self.auth_failed_now = true;
                    let code = if e == AuthError::Missing {
                        StatusCode::MISSING_CREDENTIALS
                    } else {
                        StatusCode::INVALID_CREDENTIALS
                    };
                    events.push(ServerEvent::AuthenticationRejected(code));
                    let mut hs = common::header_status(msg_ref, &msg.header, code);
                    if self.auth_attempts < self.config.limits.max_auth_attempts {
                        hs.chal = Some(auth::make_chal(self.config.auth, &fresh_nonce));
                        self.client_nonce = fresh_nonce;
                        events.push(ServerEvent::NextClientNonce(self.client_nonce.clone()));
                    }
                    self.statuses.push(Queued::plain(Command::Status(hs)));
                    // The commands of an unauthenticated message are not executed (215).
                    for c in &msg.body {
                        if !matches!(c, Command::Status(_) | Command::Results(_)) && !c.no_resp() {
                            self.statuses
                                .push(Queued::plain(Command::Status(common::status_for(
                                    c,
                                    msg_ref,
                                    StatusCode::NOT_EXECUTED,
                                ))));
                        }
                    }
                    return Ok(events);
                }
            }
        } else {
            self.statuses
                .push(Queued::plain(Command::Status(common::header_status(
                    msg_ref,
                    &msg.header,
                    StatusCode::OK,
                ))));
        }

        for cmd in &msg.body {
            self.handle_command(cmd, &msg, &mut events)?;
            if self.phase == Phase::Aborted {
                break;
            }
        }
        Ok(events)
    }

    /// A message whose header reads but whose body does not (unknown element, duplicate
    /// CmdID, ...) is answered with the decode error's status on its SyncHdr (RepPro §10:
    /// 400, 412, 413, 415) and ends the session; one without a readable header is an error
    /// for the transport layer to answer (HTTP 400).
    fn refuse_malformed(
        &mut self,
        body: &[u8],
        e: crate::error::DecodeError,
    ) -> Result<Vec<ServerEvent>, SessionError> {
        let Ok(hdr) = Encoding::sniff(body).decode_header(body, &self.config.limits) else {
            return Err(e.into());
        };
        match &self.session_id {
            Some(id) if *id != hdr.session_id => return Err(e.into()),
            Some(_) => {}
            None => {
                self.session_id = Some(hdr.session_id.clone());
                self.client_id = Some(hdr.source.uri.clone());
            }
        }
        self.statuses
            .push(Queued::plain(Command::Status(common::header_status(
                hdr.msg_id,
                &hdr,
                e.status(),
            ))));
        self.reply_due = true;
        self.refused = true;
        Ok(vec![ServerEvent::Refused(e)])
    }

    fn handle_command(
        &mut self,
        cmd: &Command,
        msg: &Message,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), SessionError> {
        let msg_ref = msg.header.msg_id;
        let status = |this: &mut Self, code| {
            if !cmd.no_resp() {
                this.statuses
                    .push(Queued::plain(Command::Status(common::status_for(
                        cmd, msg_ref, code,
                    ))));
            }
        };
        match cmd {
            Command::Status(s) => {
                common::drop_refused_chunks(&mut self.queue, s);
                if s.cmd_ref == CmdId::HEADER {
                    self.handle_header_status(s, events)?;
                } else if let Some(p) = self.pending.get(&pending_key(
                    s.msg_ref.map_or(self.msg_id, |m| m.0),
                    s.cmd_ref.0,
                )) {
                    let mut refs = s.target_refs.clone();
                    refs.extend(s.source_refs.iter().cloned());
                    events.push(ServerEvent::Status {
                        handle: CommandHandle(p.handle),
                        cmd: p.cmd.clone(),
                        code: s.code,
                        refs,
                    });
                }
            }
            Command::Results(r) => {
                let handle = self
                    .pending
                    .get(&pending_key(
                        r.msg_ref.map_or(self.msg_id, |m| m.0),
                        r.cmd_ref.0,
                    ))
                    .map(|p| CommandHandle(p.handle));
                match common::accept_chunk(
                    &mut self.reassembly,
                    cmd,
                    self.config.limits.max_object_bytes,
                ) {
                    Chunk::Buffered => status(self, StatusCode::CHUNKED_ITEM_ACCEPTED),
                    Chunk::Failed(code) => status(self, code),
                    Chunk::Complete(whole) => {
                        events.push(ServerEvent::Results {
                            handle,
                            items: whole.items().to_vec(),
                        });
                        status(self, StatusCode::OK);
                    }
                    Chunk::NotChunked => {
                        events.push(ServerEvent::Results {
                            handle,
                            items: r.items.clone(),
                        });
                        status(self, StatusCode::OK);
                    }
                }
            }
            Command::Alert(a) => match a.code {
                AlertCode::SESSION_ABORT => {
                    self.phase = Phase::Aborted;
                    events.push(ServerEvent::Aborted);
                }
                AlertCode::NEXT_MESSAGE => status(self, StatusCode::OK),
                AlertCode::NO_END_OF_DATA => {
                    self.reassembly = None;
                    status(self, StatusCode::OK);
                }
                _ => {
                    events.push(ServerEvent::ClientAlert(a.clone()));
                    status(self, StatusCode::OK);
                }
            },
            Command::Replace(c) | Command::Add(c) => match common::accept_chunk(
                &mut self.reassembly,
                cmd,
                self.config.limits.max_object_bytes,
            ) {
                Chunk::Buffered => status(self, StatusCode::CHUNKED_ITEM_ACCEPTED),
                Chunk::Failed(code) => status(self, code),
                Chunk::Complete(whole) => {
                    events.push(ServerEvent::DeviceData(whole.items().to_vec()));
                    status(self, StatusCode::OK);
                }
                Chunk::NotChunked => {
                    events.push(ServerEvent::DeviceData(c.items.clone()));
                    status(self, StatusCode::OK);
                }
            },
            // A DM server has no tree for the client to manage.
            _ => status(self, StatusCode::OPTIONAL_FEATURE_NOT_SUPPORTED),
        }
        Ok(())
    }

    fn handle_header_status(
        &mut self,
        s: &crate::model::Status,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), SessionError> {
        match s.code {
            StatusCode::AUTHENTICATION_ACCEPTED | StatusCode::OK => {
                self.server_authenticated = true
            }
            StatusCode::INVALID_CREDENTIALS | StatusCode::MISSING_CREDENTIALS => {
                self.server_authenticated = false;
                self.server_auth_attempts += 1;
                events.push(ServerEvent::ServerCredentialsRejected(s.code));
                if self.server_auth_attempts > self.config.limits.max_auth_attempts {
                    self.phase = Phase::Aborted;
                    return Err(SessionError::AuthenticationFailed(
                        self.server_auth_attempts,
                    ));
                }
                if let Some(n) = s.chal.as_ref().and_then(|c| c.meta.next_nonce.as_deref())
                    && let Ok(nonce) = Nonce::from_b64(n)
                {
                    self.server_nonce = nonce;
                }
                // The client executed none of that message: send its commands again.
                let again: Vec<Queued> = std::mem::take(&mut self.last_sent)
                    .into_iter()
                    .filter(|q| !matches!(q.cmd, Command::Status(_)) && q.handle.is_some())
                    .collect();
                for q in again.into_iter().rev() {
                    self.queue.push_front(q);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn enqueue(&mut self, cmd: Command) -> CommandHandle {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.queue.push_back(Queued {
            handle: Some(handle),
            cmd,
            continuation: false,
        });
        CommandHandle(handle)
    }

    fn item_command(items: Vec<Item>) -> ItemCommand {
        ItemCommand {
            cmd_id: CmdId(0),
            no_resp: false,
            cred: None,
            meta: None,
            items,
        }
    }

    fn value_item(&self, uri: &NodeUri, value: &NodeValue) -> Item {
        let (format, data) = super::common::transport_value(self.config.encoding, value);
        Item {
            target: Some(Location::new(uri.as_str())),
            meta: Some(Meta {
                format: Some(format),
                mime_type: value.mime_type.clone(),
                ..Meta::default()
            }),
            data: Some(data),
            ..Item::default()
        }
    }

    /// Queues a Get; the handle comes back in the Status and Results events.
    pub fn get(&mut self, uri: &NodeUri) -> CommandHandle {
        self.enqueue(Command::Get(Self::item_command(vec![Item::target(
            uri.as_str(),
        )])))
    }

    /// Queues a Replace.
    pub fn replace(&mut self, uri: &NodeUri, value: &NodeValue) -> CommandHandle {
        self.enqueue(Command::Replace(Self::item_command(vec![
            self.value_item(uri, value),
        ])))
    }

    /// Queues an Add (`None`: an interior node).
    pub fn add(&mut self, uri: &NodeUri, value: Option<&NodeValue>) -> CommandHandle {
        let item = match value {
            Some(v) => self.value_item(uri, v),
            None => Item {
                meta: Some(Meta::format("node")),
                ..Item::target(uri.as_str())
            },
        };
        self.enqueue(Command::Add(Self::item_command(vec![item])))
    }

    /// Queues a Delete.
    pub fn delete(&mut self, uri: &NodeUri) -> CommandHandle {
        self.enqueue(Command::Delete(Self::item_command(vec![Item::target(
            uri.as_str(),
        )])))
    }

    /// Queues an Exec (FUMO: the device answers 202 and reports later with a Generic Alert
    /// carrying `correlator`).
    pub fn exec(
        &mut self,
        uri: &NodeUri,
        correlator: Option<&str>,
        data: Option<Data>,
    ) -> CommandHandle {
        self.enqueue(Command::Exec(Exec {
            cmd_id: CmdId(0),
            no_resp: false,
            cred: None,
            meta: None,
            correlator: correlator.map(str::to_owned),
            item: Item {
                data,
                ..Item::target(uri.as_str())
            },
        }))
    }

    /// Queues any command (Atomic, Sequence, Alert 1100, ...).
    pub fn send_command(&mut self, cmd: Command) -> CommandHandle {
        self.enqueue(cmd)
    }

    /// Queues Alert 1223: the next reply aborts the session.
    pub fn abort(&mut self) {
        self.queue.clear();
        self.queue.push_back(Queued::plain(common::simple_alert(
            AlertCode::SESSION_ABORT,
        )));
    }

    fn header(&self) -> SyncHdr {
        let cred = if self.server_authenticated {
            None
        } else {
            auth::make_cred(
                self.config.auth,
                &self.config.server_credentials,
                &self.server_nonce,
            )
        };
        SyncHdr {
            ver_dtd: VER_DTD.into(),
            ver_proto: VER_PROTO.into(),
            session_id: self.session_id.clone().unwrap_or_default(),
            msg_id: MsgId(self.msg_id),
            target: Location::new(self.client_id.clone().unwrap_or_default()),
            source: Location::new(&self.config.server_uri),
            resp_uri: self.config.resp_uri.clone(),
            no_resp: false,
            cred,
            meta: Some(Meta {
                max_msg_size: Some(self.config.limits.max_message_bytes as u64),
                ..Meta::default()
            }),
        }
    }

    /// Builds the reply to the message given to [`ServerSession::receive`].
    pub fn reply(&mut self) -> Result<Outgoing, SessionError> {
        if !self.reply_due {
            return Err(SessionError::OutOfOrder("reply without a received message"));
        }
        self.reply_due = false;
        self.msg_id += 1;
        let mut out: VecDeque<Queued> = self.statuses.drain(..).collect();
        let mut final_allowed = true;
        let mut carry = VecDeque::new();
        if self.auth_failed_now || self.refused || self.phase == Phase::Aborted {
            // Only the statuses (with the challenge, or answering the client's abort).
        } else if !self.client_final && !self.client_asks_next {
            // The client's package continues: ask for its next message (§8.2).
            out.push_back(Queued::plain(common::simple_alert(AlertCode::NEXT_MESSAGE)));
            final_allowed = false;
        } else {
            carry = std::mem::take(&mut self.queue);
        }
        let status_count = out.len();
        out.append(&mut carry);
        let max = self
            .client_max_msg
            .unwrap_or(self.config.limits.max_message_bytes);
        let (msg, body, sent) = common::pack(
            self.header(),
            &mut out,
            max,
            self.config.encoding,
            final_allowed,
        )?;
        // Statuses that did not fit go first next time; commands go back to the queue.
        let mut left: Vec<Queued> = out.into_iter().collect();
        let left_statuses = status_count.saturating_sub(sent.len().min(status_count));
        for q in left.drain(..left_statuses.min(left.len())) {
            self.statuses.push(q);
        }
        for q in left.into_iter().rev() {
            self.queue.push_front(q);
        }
        for (q, c) in sent.iter().zip(&msg.body) {
            if let Some(h) = q.handle {
                self.pending.insert(
                    pending_key(self.msg_id, c.cmd_id().0),
                    Pending {
                        handle: h,
                        cmd: c.name().to_owned(),
                    },
                );
            }
        }
        self.last_sent = sent;
        let only_statuses = msg.body.iter().all(|c| matches!(c, Command::Status(_)));
        let aborting = msg
            .body
            .iter()
            .any(|c| matches!(c, Command::Alert(a) if a.code == AlertCode::SESSION_ABORT));
        if aborting
            || self.refused
            || (self.auth_failed_now && self.auth_attempts >= self.config.limits.max_auth_attempts)
        {
            self.phase = Phase::Aborted;
        } else if msg.is_final
            && only_statuses
            && self.authenticated
            && self.phase != Phase::Aborted
        {
            // §8.6: a final package without commands ends the session.
            self.phase = Phase::Finished;
        }
        let hmac = (self.config.auth == AuthScheme::Hmac)
            .then(|| auth::hmac_header(&self.config.server_credentials, &self.server_nonce, &body));
        Ok(Outgoing {
            body,
            content_type: self.config.encoding.content_type(),
            hmac,
            uri: self.client_id.clone().unwrap_or_default(),
        })
    }
}
