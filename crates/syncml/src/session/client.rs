//! The DM client session (the device side): package 1 out, packages 2/4 in, package 3 out
//! (DM Protocol 1.2 §8.3-§8.6), executing the server's commands on a [`DmTree`].

use super::common::{self, Chunk, Queued, Reassembly};
use super::{Outgoing, SessionError};
use crate::auth::{self, AuthError, AuthScheme, Credentials, Nonce};
use crate::codec::Encoding;
use crate::codes::{AlertCode, StatusCode};
use crate::limits::Limits;
use crate::model::{
    Alert, CmdId, Command, Container, Data, Exec, Item, ItemCommand, Location, Message, Meta,
    MsgId, Results, Status, SyncHdr, VER_DTD, VER_PROTO,
};
use crate::tree::{DmTree, ExecOutcome, ExecRequest};
use crate::uri::NodeUri;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// What the client needs to know to run a session with one server (its DMAcc entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Our `Source` LocURI (DevInfo `DevId`, e.g. `IMEI:...`).
    pub client_id: String,
    /// The server's `ServerID`: the principal ACLs are checked against.
    pub server_id: String,
    /// The server URL (`Target` LocURI, first request URI).
    pub server_uri: String,
    /// Our credentials towards the server (DMAcc `AppAuth/Cli`).
    pub client_credentials: Credentials,
    /// The server's credentials (DMAcc `AppAuth/Srv`).
    pub server_credentials: Credentials,
    /// The authentication scheme.
    pub auth: AuthScheme,
    /// Refuse to execute commands from a server that does not authenticate (DM Security §5.1
    /// mutual authentication).
    pub require_server_auth: bool,
    /// The encoding we send.
    pub encoding: Encoding,
    /// Size bounds.
    pub limits: Limits,
}

/// What happened while handling a server message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientEvent {
    /// The server accepted our credentials (212 or 200 on our SyncHdr).
    Authenticated,
    /// The server gave a nonce for our next credentials (store it in DMAcc `AAuthData`).
    NextNonce(Nonce),
    /// The server's credentials verified.
    ServerAuthenticated,
    /// The server's credentials were refused (401/407 sent back with a challenge).
    ServerRejected(StatusCode),
    /// A Status answering one of our commands (other than the SyncHdr).
    Status {
        /// The command answered (e.g. `Alert`).
        cmd: String,
        /// Its CmdID in our message.
        cmd_ref: CmdId,
        /// The code.
        code: StatusCode,
        /// `TargetRef`/`SourceRef`s.
        refs: Vec<String>,
        /// The Correlator of the Alert answered (a FUMO Generic Alert is delivered once its
        /// Status is 200; until then the device keeps it for the next session).
        correlator: Option<String>,
    },
    /// An Exec was accepted with 202: a job now waits in the handler (e.g. the FUMO object).
    ExecAccepted {
        /// The node executed.
        uri: NodeUri,
        /// The Correlator.
        correlator: Option<String>,
    },
    /// Alert 1100: a text to display.
    Display(String),
    /// The server aborted the session (Alert 1223).
    Aborted,
    /// The session ended normally.
    Finished,
}

/// The result of handling one server message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientStep {
    /// The message to send, if the session goes on.
    pub reply: Option<Outgoing>,
    /// Events in order.
    pub events: Vec<ClientEvent>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    Created,
    Waiting,
    Finished,
    Aborted,
}

/// A client session. Serializable, so a device can persist it (e.g. across a reboot while a
/// large object is in flight).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSession {
    config: ClientConfig,
    session_id: String,
    phase: Phase,
    msg_id: u32,
    client_nonce: Nonce,
    server_nonce: Nonce,
    fresh_nonce: Option<Nonce>,
    authenticated: bool,
    /// The server answered our credentials 200: they go again in the next message (DM
    /// Protocol 1.2 §9.1); only 212 ends them for the session.
    #[serde(default)]
    cred_again: bool,
    server_authenticated: bool,
    auth_attempts: u8,
    server_auth_attempts: u8,
    outbox: VecDeque<Queued>,
    last_sent: Vec<Queued>,
    server_max_msg: Option<usize>,
    resp_uri: Option<String>,
    reassembly: Option<Reassembly>,
    /// `"msg:cmd"` of each Alert we sent with a Correlator.
    sent_correlators: std::collections::BTreeMap<String, String>,
}

fn item_uri(item: &Item) -> Option<&str> {
    item.target.as_ref().map(|t| t.uri.as_str())
}

fn effective_meta<'a>(
    item: &'a Item,
    cmd_meta: Option<&'a Meta>,
) -> (Option<&'a str>, Option<&'a str>) {
    let fmt = item
        .meta
        .as_ref()
        .and_then(|m| m.format.as_deref())
        .or(cmd_meta.and_then(|m| m.format.as_deref()));
    let ty = item
        .meta
        .as_ref()
        .and_then(|m| m.mime_type.as_deref())
        .or(cmd_meta.and_then(|m| m.mime_type.as_deref()));
    (fmt, ty)
}

fn parse_target(item: &Item, limits: &Limits) -> Result<NodeUri, StatusCode> {
    let raw = item_uri(item).ok_or(StatusCode::INCOMPLETE_COMMAND)?;
    if raw.len() > limits.max_uri_bytes {
        return Err(StatusCode::URI_TOO_LONG);
    }
    // Queries (`?list=`, `?prop=`) are an optional DM feature we do not offer.
    if raw.contains('?') {
        return Err(StatusCode::OPTIONAL_FEATURE_NOT_SUPPORTED);
    }
    NodeUri::parse(raw).map_err(|e| match e {
        crate::uri::UriError::TooLong(_) => StatusCode::URI_TOO_LONG,
        _ => StatusCode::NOT_FOUND,
    })
}

fn item_status(cmd: &Command, item: Option<&Item>, msg_ref: MsgId, code: StatusCode) -> Status {
    let mut s = common::status_for(cmd, msg_ref, code);
    if let Some(it) = item {
        s.target_refs = it.target.iter().map(|t| t.uri.clone()).collect();
        s.source_refs = it.source.iter().map(|t| t.uri.clone()).collect();
    }
    s
}

/// What the commands of one server message asked of the reply.
struct BodyOutcome {
    /// The server refused our credentials: our last message goes again.
    resend: bool,
    /// The message carried commands to answer (not only Statuses and Results).
    has_commands: bool,
}

/// How an Add or Replace arrived (DM Protocol §7.1.3).
// One lives at a time, on the stack of `run`.
#[allow(clippy::large_enum_variant)]
enum Reassembled {
    /// Not a chunk: execute the command as received.
    AsReceived,
    /// The last chunk: execute this whole object.
    Whole(Command),
    /// A chunk answered on its own (213 buffered, or a refusal).
    Answered(StatusCode),
}

/// Which write an Add or Replace makes.
#[derive(Clone, Copy)]
enum Write {
    Add,
    Replace,
}

/// Alert from the server: 1222 and 1100 are answered here; confirmation and input alerts need
/// the user interface, which the device drives outside this crate.
fn run_alert(a: &Alert, events: &mut Vec<ClientEvent>) -> StatusCode {
    match a.code {
        AlertCode::NEXT_MESSAGE => StatusCode::OK,
        AlertCode::DISPLAY => {
            let text = a
                .items
                .iter()
                .filter_map(|i| i.data.as_ref().and_then(|d| d.as_text()))
                .collect::<Vec<_>>()
                .join("\n");
            events.push(ClientEvent::Display(text));
            StatusCode::OK
        }
        _ => StatusCode::OPTIONAL_FEATURE_NOT_SUPPORTED,
    }
}

impl ClientSession {
    /// A session with `session_id` (from package 0, or chosen by the client). `client_nonce`
    /// is the nonce for our credentials and `server_nonce` the one we expect in the server's
    /// (both from DMAcc `AAuthData`).
    pub fn new(
        config: ClientConfig,
        session_id: u16,
        client_nonce: Nonce,
        server_nonce: Nonce,
    ) -> ClientSession {
        ClientSession {
            config,
            session_id: session_id.to_string(),
            phase: Phase::Created,
            msg_id: 0,
            client_nonce,
            server_nonce,
            fresh_nonce: None,
            authenticated: false,
            cred_again: false,
            server_authenticated: false,
            auth_attempts: 0,
            server_auth_attempts: 0,
            outbox: VecDeque::new(),
            last_sent: Vec::new(),
            server_max_msg: None,
            resp_uri: None,
            reassembly: None,
            sent_correlators: std::collections::BTreeMap::new(),
        }
    }

    /// A fresh random nonce for the next challenge we send the server.
    pub fn set_fresh_nonce(&mut self, nonce: Nonce) {
        self.fresh_nonce = Some(nonce);
    }

    /// Queues an Alert (e.g. the FUMO Generic Alert from [`crate::fumo::Fumo::finish`]) for the
    /// next message (package 1 if called before [`ClientSession::start`]).
    pub fn queue_alert(&mut self, alert: Alert) {
        self.outbox.push_back(Queued::plain(Command::Alert(alert)));
    }

    /// Sends Alert 1223 (session abort, DM Pro §8.7) in place of anything queued, and ends
    /// the session.
    pub fn abort(&mut self) -> Result<Outgoing, SessionError> {
        if self.is_over() {
            return Err(SessionError::Ended);
        }
        self.outbox.clear();
        self.outbox.push_back(Queued::plain(common::simple_alert(
            AlertCode::SESSION_ABORT,
        )));
        let out = self.send(true)?;
        self.phase = Phase::Aborted;
        Ok(out)
    }

    /// True once the session is over (finished or aborted).
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Aborted)
    }

    /// The nonce our next credentials will use.
    pub fn client_nonce(&self) -> &Nonce {
        &self.client_nonce
    }

    /// Builds package 1: Alert `reason` (1200 after package 0, 1201 otherwise), `./DevInfo`
    /// as a Replace (DM Protocol §8.3), then the queued alerts.
    pub fn start(
        &mut self,
        reason: AlertCode,
        tree: &mut DmTree,
    ) -> Result<Outgoing, SessionError> {
        self.start_offering(reason, tree, &[])
    }

    /// [`ClientSession::start`], with the values of `offered` (read from the tree as the server
    /// would Get them, with the same access rights) sent in package 1's Replace after
    /// `./DevInfo`: a server that knows them need not Get them, which saves it a round trip. A
    /// node the server may not Get, or that has no value, is left out.
    pub fn start_offering(
        &mut self,
        reason: AlertCode,
        tree: &mut DmTree,
        offered: &[NodeUri],
    ) -> Result<Outgoing, SessionError> {
        if self.phase != Phase::Created {
            return Err(SessionError::OutOfOrder("start called twice"));
        }
        let mut items = Vec::new();
        let mut uris = Vec::with_capacity(5 + offered.len());
        for leaf in ["DevId", "Man", "Mod", "DmV", "Lang"] {
            uris.push(
                NodeUri::parse(&format!("./DevInfo/{leaf}"))
                    .map_err(|_| SessionError::OutOfOrder("DevInfo URI"))?,
            );
        }
        uris.extend(offered.iter().cloned());
        for (i, uri) in uris.iter().enumerate() {
            if let Ok(v) = tree.get(uri, &self.config.server_id) {
                let mut meta = Meta::format(v.format);
                // DevInfo goes as before (format only); an offered value keeps its type.
                if i >= 5 {
                    meta.mime_type = v.mime_type;
                }
                items.push(Item {
                    source: Some(Location::new(uri.as_str())),
                    meta: Some(meta),
                    data: Some(Data(v.data)),
                    ..Item::default()
                });
            }
        }
        let mut first = vec![Queued::plain(Command::Alert(Alert {
            cmd_id: CmdId(0),
            no_resp: false,
            cred: None,
            code: reason,
            correlator: None,
            items: Vec::new(),
        }))];
        if !items.is_empty() {
            first.push(Queued::plain(Command::Replace(ItemCommand {
                cmd_id: CmdId(0),
                no_resp: false,
                cred: None,
                meta: None,
                items,
            })));
        }
        for q in first.into_iter().rev() {
            self.outbox.push_front(q);
        }
        self.send(true)
    }

    fn header(&self) -> SyncHdr {
        let cred = if self.authenticated && !self.cred_again {
            None
        } else {
            auth::make_cred(
                self.config.auth,
                &self.config.client_credentials,
                &self.client_nonce,
            )
        };
        SyncHdr {
            ver_dtd: VER_DTD.into(),
            ver_proto: VER_PROTO.into(),
            session_id: self.session_id.clone(),
            msg_id: MsgId(self.msg_id),
            target: Location::new(&self.config.server_uri),
            source: Location {
                uri: self.config.client_id.clone(),
                name: Some(self.config.client_credentials.name.clone()),
            },
            resp_uri: None,
            no_resp: false,
            cred,
            meta: Some(Meta {
                max_msg_size: Some(self.config.limits.max_message_bytes as u64),
                max_obj_size: Some(self.config.limits.max_object_bytes as u64),
                ..Meta::default()
            }),
        }
    }

    fn send(&mut self, final_allowed: bool) -> Result<Outgoing, SessionError> {
        if self.msg_id >= self.config.limits.max_messages {
            self.phase = Phase::Aborted;
            return Err(SessionError::TooManyMessages(
                self.config.limits.max_messages,
            ));
        }
        self.msg_id += 1;
        let max = self
            .server_max_msg
            .unwrap_or(self.config.limits.max_message_bytes);
        let (_, body, sent) = common::pack(
            self.header(),
            &mut self.outbox,
            max,
            self.config.encoding,
            final_allowed,
        )?;
        for q in &sent {
            if let Command::Alert(Alert {
                cmd_id,
                correlator: Some(c),
                ..
            }) = &q.cmd
            {
                self.sent_correlators
                    .insert(format!("{}:{}", self.msg_id, cmd_id.0), c.clone());
            }
        }
        self.last_sent = sent;
        self.phase = Phase::Waiting;
        let hmac = (self.config.auth == AuthScheme::Hmac)
            .then(|| auth::hmac_header(&self.config.client_credentials, &self.client_nonce, &body));
        Ok(Outgoing {
            body,
            content_type: self.config.encoding.content_type(),
            hmac,
            uri: self
                .resp_uri
                .clone()
                .unwrap_or_else(|| self.config.server_uri.clone()),
        })
    }

    fn verify_server(
        &self,
        msg: &Message,
        body: &[u8],
        hmac: Option<&str>,
    ) -> Result<(), AuthError> {
        match self.config.auth {
            AuthScheme::Hmac => auth::verify_hmac(
                hmac,
                &self.config.server_credentials,
                &self.server_nonce,
                body,
            ),
            scheme => auth::verify_cred(
                msg.header.cred.as_ref(),
                scheme,
                &self.config.server_credentials,
                &self.server_nonce,
            ),
        }
    }

    /// Handles a server message: checks it, executes its commands on `tree`, and gives the
    /// reply (none when the session has ended).
    pub fn receive(
        &mut self,
        body: &[u8],
        hmac: Option<&str>,
        tree: &mut DmTree,
    ) -> Result<ClientStep, SessionError> {
        match self.phase {
            Phase::Created => return Err(SessionError::OutOfOrder("receive before start")),
            Phase::Finished | Phase::Aborted => return Err(SessionError::Ended),
            Phase::Waiting => {}
        }
        let msg = self.read_message(body)?;
        let mut events = Vec::new();
        let (header_status, server_ok) = self.authenticate_server(&msg, body, hmac, &mut events)?;
        let mut statuses = vec![Queued::plain(Command::Status(header_status))];
        let Some(body_outcome) =
            self.handle_body(&msg, server_ok, tree, &mut statuses, &mut events)?
        else {
            // Alert 1223 from the server.
            self.phase = Phase::Aborted;
            events.push(ClientEvent::Aborted);
            return Ok(ClientStep {
                reply: None,
                events,
            });
        };
        if body_outcome.resend {
            self.requeue_last_sent();
        }
        // DM Protocol §8.6: a final server package with no commands ends the session.
        if msg.is_final
            && !body_outcome.has_commands
            && !body_outcome.resend
            && self.outbox.is_empty()
        {
            self.phase = Phase::Finished;
            events.push(ClientEvent::Finished);
            return Ok(ClientStep {
                reply: None,
                events,
            });
        }
        let reply = self.answer(&msg, statuses)?;
        Ok(ClientStep {
            reply: Some(reply),
            events,
        })
    }

    /// Decodes a server message and checks that it belongs to this DM 1.2 session; notes
    /// the server's RespURI and MaxMsgSize.
    fn read_message(&mut self, body: &[u8]) -> Result<Message, SessionError> {
        let msg = Encoding::sniff(body).decode(body, &self.config.limits)?;
        if msg.header.session_id != self.session_id {
            return Err(SessionError::WrongSession {
                expected: self.session_id.clone(),
                got: msg.header.session_id,
            });
        }
        if msg.header.ver_proto != VER_PROTO {
            return Err(SessionError::UnsupportedProtocol(
                msg.header.ver_proto.chars().take(32).collect(),
            ));
        }
        if let Some(r) = &msg.header.resp_uri {
            self.resp_uri = Some(r.clone());
        }
        if let Some(m) = msg.header.meta.as_ref().and_then(|m| m.max_msg_size) {
            self.server_max_msg = Some(
                usize::try_from(m)
                    .unwrap_or(usize::MAX)
                    .min(self.config.limits.max_message_bytes.max(1024)),
            );
        }
        Ok(msg)
    }

    /// DM Security §5.1: the server authenticates (every message with HMAC, else once).
    /// Gives the Status for the server's SyncHdr (with a challenge when its credentials
    /// failed) and whether its commands may run.
    fn authenticate_server(
        &mut self,
        msg: &Message,
        body: &[u8],
        hmac: Option<&str>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(Status, bool), SessionError> {
        let mut header_code = StatusCode::OK;
        let mut header_chal = None;
        let needs_check = self.config.auth == AuthScheme::Hmac || !self.server_authenticated;
        let mut server_ok = true;
        if needs_check {
            match self.verify_server(msg, body, hmac) {
                Ok(()) => {
                    if !self.server_authenticated {
                        self.server_authenticated = true;
                        header_code = StatusCode::AUTHENTICATION_ACCEPTED;
                        events.push(ClientEvent::ServerAuthenticated);
                    }
                }
                Err(e) if self.config.require_server_auth => {
                    server_ok = false;
                    self.server_auth_attempts += 1;
                    if self.server_auth_attempts > self.config.limits.max_auth_attempts {
                        self.phase = Phase::Aborted;
                        return Err(SessionError::AuthenticationFailed(
                            self.server_auth_attempts,
                        ));
                    }
                    header_code = if e == AuthError::Missing {
                        StatusCode::MISSING_CREDENTIALS
                    } else {
                        StatusCode::INVALID_CREDENTIALS
                    };
                    let nonce = self
                        .fresh_nonce
                        .take()
                        .unwrap_or_else(|| self.server_nonce.clone());
                    header_chal = Some(auth::make_chal(self.config.auth, &nonce));
                    self.server_nonce = nonce;
                    events.push(ClientEvent::ServerRejected(header_code));
                }
                Err(_) => {}
            }
        }
        let mut hs = common::header_status(msg.header.msg_id, &msg.header, header_code);
        hs.chal = header_chal;
        Ok((hs, server_ok))
    }

    /// Takes the server's Statuses and executes its commands (answered 215 when the server
    /// did not authenticate). `None` when the server aborted the session (Alert 1223).
    fn handle_body(
        &mut self,
        msg: &Message,
        server_ok: bool,
        tree: &mut DmTree,
        statuses: &mut Vec<Queued>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<Option<BodyOutcome>, SessionError> {
        let msg_ref = msg.header.msg_id;
        let mut outcome = BodyOutcome {
            resend: false,
            has_commands: false,
        };
        for cmd in &msg.body {
            match cmd {
                Command::Status(s) => {
                    if self.handle_status(s, outcome.resend, events)? {
                        outcome.resend = true;
                    }
                }
                Command::Results(_) => {}
                Command::Alert(a) if a.code == AlertCode::SESSION_ABORT => return Ok(None),
                other => {
                    outcome.has_commands = true;
                    if server_ok {
                        self.execute(other, msg_ref, tree, statuses, events);
                    } else if !other.no_resp() {
                        statuses.push(Queued::plain(Command::Status(common::status_for(
                            other,
                            msg_ref,
                            StatusCode::NOT_EXECUTED,
                        ))));
                    }
                }
            }
        }
        Ok(Some(outcome))
    }

    /// The server refused our credentials: the commands of our last message go again, ahead
    /// of anything queued since.
    fn requeue_last_sent(&mut self) {
        let again: Vec<Queued> = std::mem::take(&mut self.last_sent)
            .into_iter()
            .filter(|q| !matches!(q.cmd, Command::Status(_)))
            .collect();
        for q in again.into_iter().rev() {
            self.outbox.push_front(q);
        }
    }

    /// Our reply: the statuses first, then what is queued; while the server's package goes
    /// on, Alert 1222 asks for its next message and our message is not final (§8.2).
    fn answer(
        &mut self,
        msg: &Message,
        mut statuses: Vec<Queued>,
    ) -> Result<Outgoing, SessionError> {
        let mut final_allowed = true;
        if !msg.is_final && !common::asks_next_message(msg) {
            statuses.push(Queued::plain(common::simple_alert(AlertCode::NEXT_MESSAGE)));
            final_allowed = false;
        }
        for q in statuses.into_iter().rev() {
            self.outbox.push_front(q);
        }
        self.send(final_allowed)
    }

    /// Returns true if our last message must be sent again (authentication challenge).
    fn handle_status(
        &mut self,
        s: &Status,
        resending: bool,
        events: &mut Vec<ClientEvent>,
    ) -> Result<bool, SessionError> {
        // DM Protocol 1.2 §9.1: a server that refused our header may answer each command
        // 401/407 too. Those commands go again with the whole message; their refusal is not
        // their answer.
        let auth_refusal = matches!(
            s.code,
            StatusCode::INVALID_CREDENTIALS | StatusCode::MISSING_CREDENTIALS
        );
        if s.cmd_ref != CmdId::HEADER && resending && auth_refusal {
            return Ok(false);
        }
        if s.cmd_ref != CmdId::HEADER {
            let mut refs = s.target_refs.clone();
            refs.extend(s.source_refs.iter().cloned());
            common::drop_refused_chunks(&mut self.outbox, s);
            let key = format!("{}:{}", s.msg_ref.map_or(self.msg_id, |m| m.0), s.cmd_ref.0);
            let correlator = self.sent_correlators.get(&key).cloned();
            events.push(ClientEvent::Status {
                cmd: s.cmd.clone(),
                cmd_ref: s.cmd_ref,
                code: s.code,
                refs,
                correlator,
            });
            return Ok(false);
        }
        if let Some(n) = s.chal.as_ref().and_then(|c| c.meta.next_nonce.as_deref())
            && let Ok(nonce) = Nonce::from_b64(n)
        {
            self.client_nonce = nonce.clone();
            events.push(ClientEvent::NextNonce(nonce));
        }
        match s.code {
            StatusCode::AUTHENTICATION_ACCEPTED | StatusCode::OK => {
                // §9.1: after 212 no further credentials in this session; after 200 to a
                // message that carried them, the same credentials (with a Chal's NextNonce,
                // adopted above) MUST go in the next message.
                self.cred_again =
                    s.code == StatusCode::OK && (!self.authenticated || self.cred_again);
                if !self.authenticated {
                    self.authenticated = true;
                    events.push(ClientEvent::Authenticated);
                }
                Ok(false)
            }
            StatusCode::INVALID_CREDENTIALS | StatusCode::MISSING_CREDENTIALS => {
                self.authenticated = false;
                self.auth_attempts += 1;
                if self.auth_attempts > self.config.limits.max_auth_attempts {
                    self.phase = Phase::Aborted;
                    return Err(SessionError::AuthenticationFailed(self.auth_attempts));
                }
                // The challenge may switch the scheme (e.g. basic -> md5).
                if let Some(t) = s
                    .chal
                    .as_ref()
                    .and_then(|c| c.meta.mime_type.as_deref())
                    .and_then(AuthScheme::from_type)
                {
                    self.config.auth = t;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn execute(
        &mut self,
        cmd: &Command,
        msg_ref: MsgId,
        tree: &mut DmTree,
        out: &mut Vec<Queued>,
        events: &mut Vec<ClientEvent>,
    ) {
        let mut produced = Vec::new();
        self.run(cmd, msg_ref, tree, &mut produced, events);
        if cmd.no_resp() {
            produced.retain(|c| !matches!(c, Command::Status(s) if s.cmd_ref == cmd.cmd_id()));
        }
        out.extend(produced.into_iter().map(Queued::plain));
    }

    /// Executes one command, pushing its Status (and Results) to `out`.
    fn run(
        &mut self,
        cmd: &Command,
        msg_ref: MsgId,
        tree: &mut DmTree,
        out: &mut Vec<Command>,
        events: &mut Vec<ClientEvent>,
    ) {
        let status = |code| Command::Status(common::status_for(cmd, msg_ref, code));
        let whole = match self.reassemble(cmd, out) {
            Reassembled::Answered(code) => return out.push(status(code)),
            Reassembled::AsReceived => None,
            Reassembled::Whole(c) => Some(c),
        };
        match whole.as_ref().unwrap_or(cmd) {
            Command::Get(c) => self.run_get(cmd, c, msg_ref, tree, out),
            Command::Add(c) => self.run_add_or_replace(cmd, c, Write::Add, msg_ref, tree, out),
            Command::Replace(c) => {
                self.run_add_or_replace(cmd, c, Write::Replace, msg_ref, tree, out)
            }
            Command::Delete(c) => self.run_delete(cmd, c, msg_ref, tree, out),
            Command::Copy(c) => self.run_copy(cmd, c, msg_ref, tree, out),
            Command::Exec(x) => out.push(status(self.run_exec(x, tree, events))),
            Command::Alert(a) => out.push(status(run_alert(a, events))),
            Command::Atomic(k) => self.run_atomic(cmd, k, msg_ref, tree, out, events),
            Command::Sequence(k) => {
                out.push(status(StatusCode::OK));
                for inner in &k.commands {
                    self.run(inner, msg_ref, tree, out, events);
                }
            }
            Command::Unsupported { .. } => {
                out.push(status(StatusCode::OPTIONAL_FEATURE_NOT_SUPPORTED))
            }
            Command::Status(_) | Command::Results(_) => {}
        }
    }

    /// Large objects (DM Protocol §7.1.3) arrive in Add/Replace chunks; any other command
    /// interrupts an object in flight, which is reported with Alert 1225.
    fn reassemble(&mut self, cmd: &Command, out: &mut Vec<Command>) -> Reassembled {
        if !matches!(cmd, Command::Add(_) | Command::Replace(_)) {
            if let Some(r) = self.reassembly.take() {
                out.push(common::no_end_of_data(r.key()));
            }
            return Reassembled::AsReceived;
        }
        match common::accept_chunk(
            &mut self.reassembly,
            cmd,
            self.config.limits.max_object_bytes,
        ) {
            Chunk::NotChunked => Reassembled::AsReceived,
            Chunk::Buffered => Reassembled::Answered(StatusCode::CHUNKED_ITEM_ACCEPTED),
            Chunk::Failed(code) => Reassembled::Answered(code),
            Chunk::Complete(c) => Reassembled::Whole(c),
        }
    }

    /// Get: a Status per item, and one Results with the values read.
    fn run_get(
        &self,
        cmd: &Command,
        c: &ItemCommand,
        msg_ref: MsgId,
        tree: &mut DmTree,
        out: &mut Vec<Command>,
    ) {
        let server = &self.config.server_id;
        let mut items = Vec::new();
        for item in &c.items {
            let got = parse_target(item, &self.config.limits)
                .and_then(|u| tree.get(&u, server).map(|v| (u, v)));
            let code = match got {
                Ok((u, v)) => {
                    let (format, data) = common::transport_value(self.config.encoding, &v);
                    items.push(Item {
                        source: Some(Location::new(u.as_str())),
                        meta: Some(Meta {
                            format: Some(format),
                            mime_type: v.mime_type,
                            ..Meta::default()
                        }),
                        data: Some(data),
                        ..Item::default()
                    });
                    StatusCode::OK
                }
                Err(code) => code,
            };
            out.push(Command::Status(item_status(cmd, Some(item), msg_ref, code)));
        }
        if !items.is_empty() {
            out.push(Command::Results(Results {
                cmd_id: CmdId(0),
                msg_ref: Some(msg_ref),
                cmd_ref: cmd.cmd_id(),
                meta: None,
                target_refs: Vec::new(),
                source_refs: Vec::new(),
                items,
            }));
        }
    }

    /// Add or Replace (`c` may be a reassembled large object; `cmd` is what is answered).
    fn run_add_or_replace(
        &self,
        cmd: &Command,
        c: &ItemCommand,
        write: Write,
        msg_ref: MsgId,
        tree: &mut DmTree,
        out: &mut Vec<Command>,
    ) {
        let server = &self.config.server_id;
        for item in &c.items {
            let code = parse_target(item, &self.config.limits)
                .and_then(|u| {
                    let (fmt, ty) = effective_meta(item, c.meta.as_ref());
                    let data = item.data.as_ref().map(|d| d.0.as_slice()).unwrap_or(&[]);
                    let value = common::received_value(fmt.unwrap_or("chr"), ty, data)?;
                    match write {
                        Write::Add => {
                            tree.add(&u, server, (value.format != "node").then_some(value))
                        }
                        Write::Replace => tree.replace(&u, server, value),
                    }
                })
                .map_or_else(|e| e, |()| StatusCode::OK);
            out.push(Command::Status(item_status(cmd, Some(item), msg_ref, code)));
        }
    }

    fn run_delete(
        &self,
        cmd: &Command,
        c: &ItemCommand,
        msg_ref: MsgId,
        tree: &mut DmTree,
        out: &mut Vec<Command>,
    ) {
        for item in &c.items {
            let code = parse_target(item, &self.config.limits)
                .and_then(|u| tree.delete(&u, &self.config.server_id))
                .map_or_else(|e| e, |()| StatusCode::OK);
            out.push(Command::Status(item_status(cmd, Some(item), msg_ref, code)));
        }
    }

    /// Copy: the source's value is added at the target, or replaces it if it exists.
    fn run_copy(
        &self,
        cmd: &Command,
        c: &ItemCommand,
        msg_ref: MsgId,
        tree: &mut DmTree,
        out: &mut Vec<Command>,
    ) {
        let server = &self.config.server_id;
        for item in &c.items {
            let code = (|| {
                let target = parse_target(item, &self.config.limits)?;
                let src = item.source.as_ref().ok_or(StatusCode::INCOMPLETE_COMMAND)?;
                let src = NodeUri::parse(&src.uri).map_err(|_| StatusCode::NOT_FOUND)?;
                let value = tree.get(&src, server)?;
                match tree.add(&target, server, Some(value.clone())) {
                    Err(StatusCode::ALREADY_EXISTS) => tree.replace(&target, server, value),
                    other => other,
                }
            })()
            .map_or_else(|e| e, |()| StatusCode::OK);
            out.push(Command::Status(item_status(cmd, Some(item), msg_ref, code)));
        }
    }

    /// Exec: 200 when the handler is done, 202 when it accepted a job for later.
    fn run_exec(&self, x: &Exec, tree: &mut DmTree, events: &mut Vec<ClientEvent>) -> StatusCode {
        parse_target(&x.item, &self.config.limits)
            .and_then(|u| {
                let req = ExecRequest {
                    server_id: &self.config.server_id,
                    data: x.item.data.as_ref().map(|d| d.0.as_slice()),
                    correlator: x.correlator.as_deref(),
                };
                let outcome = tree.exec(&u, req)?;
                if outcome == ExecOutcome::Accepted {
                    events.push(ClientEvent::ExecAccepted {
                        uri: u,
                        correlator: x.correlator.clone(),
                    });
                }
                Ok(outcome)
            })
            .map_or_else(
                |e| e,
                |o| match o {
                    ExecOutcome::Done => StatusCode::OK,
                    ExecOutcome::Accepted => StatusCode::ACCEPTED_FOR_PROCESSING,
                },
            )
    }

    /// Atomic (RepPro §6.6.3): all or nothing. Stored nodes are restored on failure; changes a
    /// subtree handler already made cannot be undone, which is reported as 516.
    fn run_atomic(
        &mut self,
        cmd: &Command,
        k: &Container,
        msg_ref: MsgId,
        tree: &mut DmTree,
        out: &mut Vec<Command>,
        events: &mut Vec<ClientEvent>,
    ) {
        let snapshot = tree.snapshot();
        let mut inner_out = Vec::new();
        let mut inner_events = Vec::new();
        for inner in &k.commands {
            self.run(inner, msg_ref, tree, &mut inner_out, &mut inner_events);
        }
        let failed = inner_out
            .iter()
            .any(|c| matches!(c, Command::Status(s) if !s.code.is_success()));
        if !failed {
            out.push(Command::Status(common::status_for(
                cmd,
                msg_ref,
                StatusCode::OK,
            )));
            out.extend(inner_out);
            events.extend(inner_events);
            return;
        }
        tree.restore(snapshot);
        let touched_handler = k.commands.iter().any(|c| !matches!(c, Command::Get(_)))
            && tree.has_mounts_under_targets(&k.commands);
        let code = if touched_handler {
            StatusCode::ATOMIC_ROLLBACK_FAILED
        } else {
            StatusCode::ATOMIC_FAILED
        };
        out.push(Command::Status(common::status_for(cmd, msg_ref, code)));
        // Results of a rolled back Atomic are dropped; successes become "rolled back".
        for c in inner_out {
            if let Command::Status(mut s) = c {
                if s.code.is_success() {
                    s.code = StatusCode::ATOMIC_ROLLBACK_OK;
                }
                out.push(Command::Status(s));
            }
        }
    }
}
