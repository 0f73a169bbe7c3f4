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

impl CommandHandle {
    /// The handle given for a command offered to a session that is over (or closing): the
    /// command is not queued, and no event ever carries this handle (queued commands are
    /// numbered from 1).
    pub const NOT_QUEUED: CommandHandle = CommandHandle(0);
}

/// A server session.
///
/// Its state is one phase (opening, awaiting authentication, challenging, authenticated,
/// closing, over), each holding only what it needs: a session that is over has no command
/// queue, and only an authenticated client is sent commands. A session stored in an older
/// layout does not deserialize (a `serde` error, never a half-read session); sessions last
/// minutes, so the device simply starts a new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSession {
    config: ServerConfig,
    /// The nonce the client's credentials are checked with (DM Security 1.2 §5.4).
    client_nonce: Nonce,
    /// The nonce our credentials are computed with.
    server_nonce: Nonce,
    /// Client messages received so far, bounded by `Limits::max_messages`.
    received: u32,
    /// The MsgID and `B64(MD5(body))` of the client's last message, kept once the session is
    /// over: a copy of the message that ended it is still a repeat, not a stray message.
    #[serde(default)]
    last_received: Option<(u32, String)>,
    phase: Phase,
}

/// Where a session stands. Each round is `receive` (listening → a reply due) then `reply`
/// (a reply due → listening, or over).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// No message yet: package 1 names the session and the client (DM Protocol 1.2 §8.3).
    /// Commands may already be queued.
    Opening { outbox: Outbox },
    /// The session is named; the client has not authenticated yet (DM Security 1.2 §5.3).
    AwaitingAuthentication { link: Link, outbox: Outbox },
    /// The client's message failed authentication (fewer than `max_auth_attempts` times):
    /// the reply, its statuses with a challenge and none of our commands, is due.
    Challenging { link: Link, outbox: Outbox },
    /// The client authenticated: our commands go out in the replies.
    Authenticated {
        link: Link,
        outbox: Outbox,
        turn: Turn,
    },
    /// The message just received ends the session: the reply answering it, statuses only,
    /// is the last message.
    Closing {
        link: Link,
        statuses: Vec<Queued>,
        ending: Ending,
        client_authenticated: bool,
    },
    /// Nothing more is received or sent.
    Over {
        /// `None` for a session that ended before any message named it.
        peer: Option<Peer>,
        ending: Ending,
        client_authenticated: bool,
    },
}

/// Whose turn it is in an authenticated session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Turn {
    /// Waiting for the client's next message.
    Listening,
    /// A message arrived; this reply to it is due.
    Replying(Reply),
}

/// What the reply to an authenticated client carries after its statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Reply {
    /// The client's package continues: Alert 1222 asks for its next message (§8.2).
    NextMessage,
    /// Our queued commands, as many as fit.
    Commands,
    /// Nothing: the message failed its HMAC check (DM Security 1.2 §5.5 checks every
    /// message), and the reply challenges the client.
    Challenge,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Ending {
    /// A final package of ours without commands (DM Protocol 1.2 §8.6).
    Finished,
    /// We sent Alert 1223.
    AbortedByServer,
    /// The client sent Alert 1223.
    AbortedByClient,
    /// The client's message did not decode; its header got the error's status (RepPro §10).
    Refused,
    /// The client's credentials failed `max_auth_attempts` times.
    ClientNotAuthenticated,
    /// The client refused our credentials more than `max_auth_attempts` times.
    ServerNotAuthenticated,
    /// The client sent more than `max_messages` messages.
    TooManyMessages,
    /// A reply could not be encoded (e.g. a command too large for the client's
    /// MaxMsgSize); what it owed the client is lost, so the session cannot go on.
    Unsendable,
}

/// The two ends of a named session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Peer {
    /// The SessionID of package 1.
    session_id: String,
    /// The client's `Source` LocURI.
    client_id: String,
}

/// What writing to the client needs, from the message that named the session on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Link {
    peer: Peer,
    /// The MsgID of our last message.
    msg_id: u32,
    /// The client's MaxMsgSize.
    client_max_msg: Option<usize>,
    /// Our credentials go in every header until the client accepts them (DM Security §5.1).
    our_credentials: OurCredentials,
    /// Times the client refused our credentials.
    our_rejections: u8,
    /// Times the client's credentials failed.
    client_failures: u8,
    /// The MsgID of the client's last message: MsgIDs grow through a session (RepPro 1.2
    /// §5.1 MsgID, DM RepPro 1.2 §4.1.1 MsgID), so one that does not is a repeat or stale.
    #[serde(default)]
    client_msg_id: u32,
    /// `B64(MD5(body))` of that message: tells a byte-identical repeat (answered with the
    /// reply already given) from a different message reusing the MsgID.
    #[serde(default)]
    client_digest: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum OurCredentials {
    /// Not accepted yet: the header carries our `Cred`.
    Unconfirmed,
    /// The client answered our header 212: no further credentials for the rest of the
    /// session (DM Protocol 1.2 §9.1). A 200 asks for them again in the next message.
    Accepted,
}

impl Link {
    fn named_by(hdr: &SyncHdr) -> Link {
        Link {
            peer: Peer {
                session_id: hdr.session_id.clone(),
                client_id: hdr.source.uri.clone(),
            },
            msg_id: 0,
            client_max_msg: None,
            our_credentials: OurCredentials::Unconfirmed,
            our_rejections: 0,
            client_failures: 0,
            client_msg_id: 0,
            client_digest: String::new(),
        }
    }

    fn learn_max_msg(&mut self, hdr: &SyncHdr, limits: &Limits) {
        if let Some(m) = hdr.meta.as_ref().and_then(|m| m.max_msg_size) {
            self.client_max_msg = Some(
                usize::try_from(m)
                    .unwrap_or(usize::MAX)
                    .clamp(1024, limits.max_message_bytes),
            );
        }
    }
}

/// Commands on their way to the client, and what the client owes us.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Outbox {
    /// Statuses owed to the client; those that did not fit a reply go first in the next.
    statuses: Vec<Queued>,
    /// Our commands waiting to be sent.
    queue: VecDeque<Queued>,
    /// What our last message carried: sent again when the client refuses our credentials.
    last_sent: Vec<Queued>,
    next_handle: u32,
    /// The commands sent that carry a handle, by [`pending_key`].
    pending: BTreeMap<String, Pending>,
    /// A large object the client is sending in chunks.
    reassembly: Option<Reassembly>,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            statuses: Vec::new(),
            queue: VecDeque::new(),
            last_sent: Vec::new(),
            next_handle: 1,
            pending: BTreeMap::new(),
            reassembly: None,
        }
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

    fn answer(&mut self, cmd: &Command, msg_ref: MsgId, code: StatusCode) {
        if !cmd.no_resp() {
            self.statuses
                .push(Queued::plain(Command::Status(common::status_for(
                    cmd, msg_ref, code,
                ))));
        }
    }

    fn handle_of(&self, msg_ref: Option<MsgId>, cmd_ref: CmdId, our_msg: u32) -> Option<&Pending> {
        self.pending
            .get(&pending_key(msg_ref.map_or(our_msg, |m| m.0), cmd_ref.0))
    }
}

/// A session taken apart for a message arriving while it listens.
struct Arrival {
    link: Link,
    outbox: Outbox,
    client_authenticated: bool,
}

/// Whether the commands of a message go on after one of them.
enum Flow {
    Continue,
    ClientAborted,
}

impl ServerSession {
    /// A session expecting package 1. `client_nonce` is the nonce the device must use in its
    /// credentials, `server_nonce` the one we use in ours (both stored with the account).
    pub fn new(config: ServerConfig, client_nonce: Nonce, server_nonce: Nonce) -> ServerSession {
        ServerSession {
            config,
            client_nonce,
            server_nonce,
            received: 0,
            last_received: None,
            phase: Phase::Opening {
                outbox: Outbox::new(),
            },
        }
    }

    fn peer(&self) -> Option<&Peer> {
        match &self.phase {
            Phase::Opening { .. } => None,
            Phase::AwaitingAuthentication { link, .. }
            | Phase::Challenging { link, .. }
            | Phase::Authenticated { link, .. }
            | Phase::Closing { link, .. } => Some(&link.peer),
            Phase::Over { peer, .. } => peer.as_ref(),
        }
    }

    fn link(&self) -> Option<&Link> {
        match &self.phase {
            Phase::AwaitingAuthentication { link, .. }
            | Phase::Challenging { link, .. }
            | Phase::Authenticated { link, .. }
            | Phase::Closing { link, .. } => Some(link),
            Phase::Opening { .. } | Phase::Over { .. } => None,
        }
    }

    fn outbox_mut(&mut self) -> Option<&mut Outbox> {
        match &mut self.phase {
            Phase::Opening { outbox }
            | Phase::AwaitingAuthentication { outbox, .. }
            | Phase::Challenging { outbox, .. }
            | Phase::Authenticated { outbox, .. } => Some(outbox),
            Phase::Closing { .. } | Phase::Over { .. } => None,
        }
    }

    /// Takes the phase out to build the next one. What stands in meanwhile is a session
    /// that is over, so a path that forgot to put a phase back fails closed.
    fn take_phase(&mut self) -> Phase {
        std::mem::replace(
            &mut self.phase,
            Phase::Over {
                peer: None,
                ending: Ending::Unsendable,
                client_authenticated: false,
            },
        )
    }

    fn end(&mut self, ending: Ending) {
        let client_authenticated = self.is_authenticated();
        let peer = self.peer().cloned();
        self.phase = Phase::Over {
            peer,
            ending,
            client_authenticated,
        };
    }

    /// The SessionID, once package 1 arrived.
    pub fn session_id(&self) -> Option<&str> {
        self.peer().map(|p| p.session_id.as_str())
    }

    /// The client's `Source` LocURI, once package 1 arrived.
    pub fn client_id(&self) -> Option<&str> {
        self.peer().map(|p| p.client_id.as_str())
    }

    /// The nonce our credentials are computed with: the one given to [`ServerSession::new`]
    /// until the client challenges us with a `NextNonce` (DM Security 1.2 §5.4). Store it with
    /// the account: the next session, and the digest of a package 0 (DM Notification 1.2
    /// §6.3), use the nonce the client expects.
    pub fn server_nonce(&self) -> &Nonce {
        &self.server_nonce
    }

    /// True once the client authenticated (and still after the session ended).
    pub fn is_authenticated(&self) -> bool {
        match &self.phase {
            Phase::Authenticated { .. } => true,
            Phase::Closing {
                client_authenticated,
                ..
            }
            | Phase::Over {
                client_authenticated,
                ..
            } => *client_authenticated,
            Phase::Opening { .. }
            | Phase::AwaitingAuthentication { .. }
            | Phase::Challenging { .. } => false,
        }
    }

    /// True once the session is over (finished or aborted): no further client message is
    /// accepted and no command queued. The reply answering the message that ended it may
    /// still be due.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. } | Phase::Over { .. })
    }

    /// True if the session ended normally.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.phase,
            Phase::Over {
                ending: Ending::Finished,
                ..
            }
        )
    }

    /// Why a message cannot be received now, if it cannot.
    fn not_listening(&self) -> Option<SessionError> {
        match &self.phase {
            Phase::Opening { .. }
            | Phase::AwaitingAuthentication { .. }
            | Phase::Authenticated {
                turn: Turn::Listening,
                ..
            } => None,
            Phase::Challenging { .. }
            | Phase::Authenticated {
                turn: Turn::Replying(_),
                ..
            } => Some(SessionError::OutOfOrder(
                "receive called again before reply",
            )),
            Phase::Closing { .. } | Phase::Over { .. } => Some(SessionError::Ended),
        }
    }

    /// Takes a listening session apart for a message with header `hdr` (package 1 names the
    /// session). The phase must have been checked with [`ServerSession::not_listening`].
    fn arrive(&mut self, hdr: &SyncHdr, body: &[u8]) -> Result<Arrival, SessionError> {
        let (mut link, outbox, client_authenticated) = match self.take_phase() {
            Phase::Opening { outbox } => (Link::named_by(hdr), outbox, false),
            Phase::AwaitingAuthentication { link, outbox } => (link, outbox, false),
            Phase::Authenticated {
                link,
                outbox,
                turn: Turn::Listening,
            } => (link, outbox, true),
            other => {
                self.phase = other;
                return Err(self
                    .not_listening()
                    .unwrap_or(SessionError::OutOfOrder("message while not listening")));
            }
        };
        link.client_msg_id = hdr.msg_id.0;
        link.client_digest = body_digest(body);
        self.last_received = Some((link.client_msg_id, link.client_digest.clone()));
        Ok(Arrival {
            link,
            outbox,
            client_authenticated,
        })
    }

    /// A message of another session leaves this one as it was.
    fn check_session_id(&self, got: &str) -> Result<(), SessionError> {
        match self.peer() {
            Some(p) if p.session_id != got => Err(SessionError::WrongSession {
                expected: p.session_id.clone(),
                got: got.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Where a message stands in the session's order of messages, checked before it changes
    /// anything. MsgIDs grow through a session (RepPro 1.2 §5.1 MsgID; DM RepPro 1.2
    /// §4.1.1 MsgID): a message whose MsgID is not above the last one received is never executed
    /// again. The same bytes again are [`SessionError::Repeated`] (the caller answers with the
    /// reply it already gave); a package 1 (MsgID 1 with Alert 1200 or 1201, DM Protocol 1.2
    /// §8.3) reusing the SessionID is [`SessionError::NewSession`] (this session is done, a
    /// new one takes the message); anything else is [`SessionError::StaleMessage`]. A message
    /// of another session is left to [`ServerSession::check_session_id`].
    fn check_sequence(
        &self,
        hdr: &SyncHdr,
        msg: Option<&Message>,
        body: &[u8],
    ) -> Result<(), SessionError> {
        let last = self.last_received.clone().or_else(|| {
            self.link()
                .map(|l| (l.client_msg_id, l.client_digest.clone()))
        });
        let (Some(peer), Some((last_id, last_digest))) = (self.peer(), last) else {
            return Ok(());
        };
        if hdr.session_id != peer.session_id || hdr.msg_id.0 > last_id {
            return Ok(());
        }
        if hdr.msg_id.0 == last_id && body_digest(body) == last_digest {
            return Err(SessionError::Repeated(hdr.msg_id));
        }
        if hdr.msg_id == MsgId(1) && msg.is_some_and(starts_session) {
            return Err(SessionError::NewSession);
        }
        Err(SessionError::StaleMessage {
            last: MsgId(last_id),
            got: hdr.msg_id,
        })
    }

    /// For a stored session the client has not authenticated in yet: the nonce its
    /// credentials are checked with becomes `nonce`, the one the account holds now. The
    /// account's nonce is the one the device was last told (DM Security 1.2 §5.4, DM Protocol
    /// 1.2 §9.1); another session may have moved it since this one was stored, and a stale
    /// session must not check the device against, or challenge it away from, an older one.
    /// An authenticated session keeps its own.
    pub fn refresh_client_nonce(&mut self, nonce: Nonce) {
        if !self.is_authenticated() {
            self.client_nonce = nonce;
        }
    }

    /// The nonce the client's credentials are checked with.
    pub fn client_nonce(&self) -> &Nonce {
        &self.client_nonce
    }

    /// Handles a client message. `fresh_nonce` is a new random nonce, used if this message
    /// calls for a challenge or for the next session's nonce.
    pub fn receive(
        &mut self,
        body: &[u8],
        hmac: Option<&str>,
        fresh_nonce: Nonce,
    ) -> Result<Vec<ServerEvent>, SessionError> {
        if let Some(e) = self.not_listening() {
            // A session that is over still tells a copy of its last message (Repeated) and
            // a new package 1 on its SessionID (NewSession) from anything else (Ended).
            if matches!(self.phase, Phase::Over { .. }) {
                let decoded = Encoding::sniff(body).decode(body, &self.config.limits);
                match &decoded {
                    Ok(m) => self.check_sequence(&m.header, Some(m), body)?,
                    Err(_) => {
                        if let Ok(hdr) =
                            Encoding::sniff(body).decode_header(body, &self.config.limits)
                        {
                            self.check_sequence(&hdr, None, body)?;
                        }
                    }
                }
            }
            return Err(e);
        }
        let decoded = Encoding::sniff(body).decode(body, &self.config.limits);
        match &decoded {
            Ok(m) => self.check_sequence(&m.header, Some(m), body)?,
            Err(_) => {
                if let Ok(hdr) = Encoding::sniff(body).decode_header(body, &self.config.limits) {
                    self.check_sequence(&hdr, None, body)?;
                }
            }
        }
        self.received += 1;
        if self.received > self.config.limits.max_messages {
            self.end(Ending::TooManyMessages);
            return Err(SessionError::TooManyMessages(
                self.config.limits.max_messages,
            ));
        }
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => return self.refuse_malformed(body, e),
        };
        if msg.header.ver_proto != VER_PROTO {
            return Err(SessionError::UnsupportedProtocol(
                msg.header.ver_proto.chars().take(32).collect(),
            ));
        }
        self.check_session_id(&msg.header.session_id)?;
        let Arrival {
            mut link,
            mut outbox,
            client_authenticated,
        } = self.arrive(&msg.header, body)?;
        link.learn_max_msg(&msg.header, &self.config.limits);
        let mut events = Vec::new();

        // DM Security §5.3-§5.4: authenticate the client before anything else.
        let checked = self.config.auth == AuthScheme::Hmac || !client_authenticated;
        if checked && let Err(e) = self.verify_client(&msg, body, hmac) {
            let arrival = Arrival {
                link,
                outbox,
                client_authenticated,
            };
            self.phase = self.challenge(arrival, &msg, e, fresh_nonce, &mut events);
            return Ok(events);
        }
        let hs = self.header_accepted(&msg, client_authenticated, fresh_nonce, &mut events);
        outbox.statuses.push(Queued::plain(Command::Status(hs)));
        self.run_commands(&msg, link, outbox, &mut events)?;
        Ok(events)
    }

    /// The Status on the SyncHdr of an authenticated message: 212 the first time, with a
    /// Chal carrying the nonce for the next session (DM Security §5.4), 200 after that.
    fn header_accepted(
        &mut self,
        msg: &Message,
        client_authenticated: bool,
        fresh_nonce: Nonce,
        events: &mut Vec<ServerEvent>,
    ) -> crate::model::Status {
        if client_authenticated {
            return common::header_status(msg.header.msg_id, &msg.header, StatusCode::OK);
        }
        let mut hs = common::header_status(
            msg.header.msg_id,
            &msg.header,
            StatusCode::AUTHENTICATION_ACCEPTED,
        );
        events.push(ServerEvent::Authenticated {
            client_id: msg.header.source.uri.clone(),
        });
        if self.config.auth != AuthScheme::Basic {
            hs.chal = Some(auth::make_chal(self.config.auth, &fresh_nonce));
            self.client_nonce = fresh_nonce;
            events.push(ServerEvent::NextClientNonce(self.client_nonce.clone()));
        }
        hs
    }

    /// Handles the commands of an authenticated message and sets the phase it leaves: a
    /// reply due, or closing after the client's Alert 1223, or over when the client refused
    /// our credentials too often.
    fn run_commands(
        &mut self,
        msg: &Message,
        mut link: Link,
        mut outbox: Outbox,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), SessionError> {
        for cmd in &msg.body {
            match self.handle_command(cmd, msg, &mut link, &mut outbox, events) {
                Ok(Flow::Continue) => {}
                Ok(Flow::ClientAborted) => {
                    self.phase = Phase::Closing {
                        link,
                        statuses: outbox.statuses,
                        ending: Ending::AbortedByClient,
                        client_authenticated: true,
                    };
                    return Ok(());
                }
                Err(e) => {
                    self.phase = Phase::Over {
                        peer: Some(link.peer),
                        ending: Ending::ServerNotAuthenticated,
                        client_authenticated: true,
                    };
                    return Err(e);
                }
            }
        }
        let reply = if !msg.is_final && !common::asks_next_message(msg) {
            Reply::NextMessage
        } else {
            Reply::Commands
        };
        self.phase = Phase::Authenticated {
            link,
            outbox,
            turn: Turn::Replying(reply),
        };
        Ok(())
    }

    fn verify_client(
        &self,
        msg: &Message,
        body: &[u8],
        hmac: Option<&str>,
    ) -> Result<(), AuthError> {
        match self.config.auth {
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
        }
    }

    /// The client's credentials failed: its header gets 401 or 407 with a challenge (none
    /// once the attempts are spent, and the session closes), and its commands are not
    /// executed (215).
    fn challenge(
        &mut self,
        arrival: Arrival,
        msg: &Message,
        error: AuthError,
        fresh_nonce: Nonce,
        events: &mut Vec<ServerEvent>,
    ) -> Phase {
        let Arrival {
            mut link,
            mut outbox,
            client_authenticated,
        } = arrival;
        let msg_ref = msg.header.msg_id;
        link.client_failures = link.client_failures.saturating_add(1);
        let code = if error == AuthError::Missing {
            StatusCode::MISSING_CREDENTIALS
        } else {
            StatusCode::INVALID_CREDENTIALS
        };
        events.push(ServerEvent::AuthenticationRejected(code));
        let mut hs = common::header_status(msg_ref, &msg.header, code);
        let spent = link.client_failures >= self.config.limits.max_auth_attempts;
        let chal = (!spent).then(|| auth::make_chal(self.config.auth, &fresh_nonce));
        if !spent {
            self.client_nonce = fresh_nonce;
            events.push(ServerEvent::NextClientNonce(self.client_nonce.clone()));
        }
        hs.chal = chal.clone();
        outbox.statuses.push(Queued::plain(Command::Status(hs)));
        // DM Protocol 1.2 §9.1: a Status for every command received, none executed. Each
        // request (message or command) that needs authentication is answered 401/407, and
        // such a Status MUST carry the Chal: so a client that re-sends only the commands
        // answered 401/407 re-sends them all, as one that re-sends its whole package 1 does
        // (§9: it MUST resend the Alert and DevInfo). Once the attempts are spent nothing is
        // asked again: the commands get 215, not executed.
        for c in &msg.body {
            if matches!(c, Command::Status(_) | Command::Results(_)) || c.no_resp() {
                continue;
            }
            let mut st = common::status_for(c, msg_ref, StatusCode::NOT_EXECUTED);
            if let Some(ch) = &chal {
                st.code = code;
                st.chal = Some(ch.clone());
            }
            outbox.statuses.push(Queued::plain(Command::Status(st)));
        }
        if spent {
            Phase::Closing {
                link,
                statuses: outbox.statuses,
                ending: Ending::ClientNotAuthenticated,
                client_authenticated,
            }
        } else if client_authenticated {
            Phase::Authenticated {
                link,
                outbox,
                turn: Turn::Replying(Reply::Challenge),
            }
        } else {
            Phase::Challenging { link, outbox }
        }
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
        if self.check_session_id(&hdr.session_id).is_err() {
            return Err(e.into());
        }
        let Arrival {
            link,
            outbox,
            client_authenticated,
        } = self.arrive(&hdr, body)?;
        let mut statuses = outbox.statuses;
        statuses.push(Queued::plain(Command::Status(common::header_status(
            hdr.msg_id,
            &hdr,
            e.status(),
        ))));
        self.phase = Phase::Closing {
            link,
            statuses,
            ending: Ending::Refused,
            client_authenticated,
        };
        Ok(vec![ServerEvent::Refused(e)])
    }

    /// Handles one command of an authenticated message.
    fn handle_command(
        &mut self,
        cmd: &Command,
        msg: &Message,
        link: &mut Link,
        outbox: &mut Outbox,
        events: &mut Vec<ServerEvent>,
    ) -> Result<Flow, SessionError> {
        let msg_ref = msg.header.msg_id;
        match cmd {
            Command::Status(s) => {
                common::drop_refused_chunks(&mut outbox.queue, s);
                if s.cmd_ref == CmdId::HEADER {
                    self.handle_header_status(s, link, outbox, events)?;
                } else if let Some(p) = outbox.handle_of(s.msg_ref, s.cmd_ref, link.msg_id) {
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
                let handle = outbox
                    .handle_of(r.msg_ref, r.cmd_ref, link.msg_id)
                    .map(|p| CommandHandle(p.handle));
                let max_obj = self.config.limits.max_object_bytes;
                match common::accept_chunk(&mut outbox.reassembly, cmd, max_obj) {
                    Chunk::Buffered => {
                        outbox.answer(cmd, msg_ref, StatusCode::CHUNKED_ITEM_ACCEPTED)
                    }
                    Chunk::Failed(code) => outbox.answer(cmd, msg_ref, code),
                    Chunk::Complete(whole) => {
                        events.push(ServerEvent::Results {
                            handle,
                            items: whole.items().to_vec(),
                        });
                        outbox.answer(cmd, msg_ref, StatusCode::OK);
                    }
                    Chunk::NotChunked => {
                        events.push(ServerEvent::Results {
                            handle,
                            items: r.items.clone(),
                        });
                        outbox.answer(cmd, msg_ref, StatusCode::OK);
                    }
                }
            }
            Command::Alert(a) => match a.code {
                AlertCode::SESSION_ABORT => {
                    events.push(ServerEvent::Aborted);
                    return Ok(Flow::ClientAborted);
                }
                AlertCode::NEXT_MESSAGE => outbox.answer(cmd, msg_ref, StatusCode::OK),
                AlertCode::NO_END_OF_DATA => {
                    outbox.reassembly = None;
                    outbox.answer(cmd, msg_ref, StatusCode::OK);
                }
                _ => {
                    events.push(ServerEvent::ClientAlert(a.clone()));
                    outbox.answer(cmd, msg_ref, StatusCode::OK);
                }
            },
            Command::Replace(c) | Command::Add(c) => {
                let max_obj = self.config.limits.max_object_bytes;
                match common::accept_chunk(&mut outbox.reassembly, cmd, max_obj) {
                    Chunk::Buffered => {
                        outbox.answer(cmd, msg_ref, StatusCode::CHUNKED_ITEM_ACCEPTED)
                    }
                    Chunk::Failed(code) => outbox.answer(cmd, msg_ref, code),
                    Chunk::Complete(whole) => {
                        events.push(ServerEvent::DeviceData(whole.items().to_vec()));
                        outbox.answer(cmd, msg_ref, StatusCode::OK);
                    }
                    Chunk::NotChunked => {
                        events.push(ServerEvent::DeviceData(c.items.clone()));
                        outbox.answer(cmd, msg_ref, StatusCode::OK);
                    }
                }
            }
            // A DM server has no tree for the client to manage.
            _ => outbox.answer(cmd, msg_ref, StatusCode::OPTIONAL_FEATURE_NOT_SUPPORTED),
        }
        Ok(Flow::Continue)
    }

    /// The client's Status on our SyncHdr: whether it accepted our credentials (DM Security
    /// §5.1). A refusal sends our last commands again, with the nonce of its challenge.
    fn handle_header_status(
        &mut self,
        s: &crate::model::Status,
        link: &mut Link,
        outbox: &mut Outbox,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), SessionError> {
        // DM Protocol 1.2 §9.1: whatever the code, a Chal's NextNonce is the nonce of our
        // next credentials: with 212 in the next session (and the digest of a package 0, DM
        // Notification 1.2 §6.3), with 200 or 401/407 in our next message. The caller stores
        // it with the account (`server_nonce`).
        if let Some(n) = s.chal.as_ref().and_then(|c| c.meta.next_nonce.as_deref())
            && let Ok(nonce) = Nonce::from_b64(n)
        {
            self.server_nonce = nonce;
        }
        match s.code {
            // §9.1: 212, no further authentication in this session.
            StatusCode::AUTHENTICATION_ACCEPTED => {
                link.our_credentials = OurCredentials::Accepted;
            }
            // §9.1: 200 to a message with credentials: the same credentials (with the
            // NextNonce of a Chal, a new digest) MUST go in the next message. 200 to one
            // without credentials changes nothing.
            StatusCode::OK => {}
            StatusCode::INVALID_CREDENTIALS | StatusCode::MISSING_CREDENTIALS => {
                link.our_credentials = OurCredentials::Unconfirmed;
                link.our_rejections = link.our_rejections.saturating_add(1);
                events.push(ServerEvent::ServerCredentialsRejected(s.code));
                if link.our_rejections > self.config.limits.max_auth_attempts {
                    return Err(SessionError::AuthenticationFailed(link.our_rejections));
                }
                // The client executed none of that message: send its commands again.
                let again: Vec<Queued> = std::mem::take(&mut outbox.last_sent)
                    .into_iter()
                    .filter(|q| !matches!(q.cmd, Command::Status(_)) && q.handle.is_some())
                    .collect();
                for q in again.into_iter().rev() {
                    outbox.queue.push_front(q);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Queues `cmd` for the next reply to an authenticated client; a session that is over
    /// takes none ([`CommandHandle::NOT_QUEUED`]).
    fn enqueue(&mut self, cmd: Command) -> CommandHandle {
        match self.outbox_mut() {
            Some(outbox) => outbox.enqueue(cmd),
            None => CommandHandle::NOT_QUEUED,
        }
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

    /// Queues Alert 1223 in place of anything queued: the next reply to an authenticated
    /// client aborts the session. A session that is over is left as it is.
    pub fn abort(&mut self) {
        if let Some(outbox) = self.outbox_mut() {
            outbox.queue.clear();
            outbox.queue.push_back(Queued::plain(common::simple_alert(
                AlertCode::SESSION_ABORT,
            )));
        }
    }

    fn header(&self, link: &Link) -> SyncHdr {
        let cred = match link.our_credentials {
            OurCredentials::Accepted => None,
            OurCredentials::Unconfirmed => auth::make_cred(
                self.config.auth,
                &self.config.server_credentials,
                &self.server_nonce,
            ),
        };
        SyncHdr {
            ver_dtd: VER_DTD.into(),
            ver_proto: VER_PROTO.into(),
            session_id: link.peer.session_id.clone(),
            msg_id: MsgId(link.msg_id),
            target: Location::new(link.peer.client_id.clone()),
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
        match self.take_phase() {
            Phase::Challenging {
                mut link,
                mut outbox,
            } => {
                let (_, out) = self.send_statuses(&mut link, &mut outbox, false)?;
                self.phase = Phase::AwaitingAuthentication { link, outbox };
                Ok(out)
            }
            Phase::Authenticated {
                link,
                outbox,
                turn: Turn::Replying(reply),
            } => self.reply_authenticated(link, outbox, reply),
            Phase::Closing {
                mut link,
                statuses,
                ending,
                client_authenticated,
            } => {
                let mut outbox = Outbox::new();
                outbox.statuses = statuses;
                let (_, out) = self.send_statuses(&mut link, &mut outbox, client_authenticated)?;
                self.phase = Phase::Over {
                    peer: Some(link.peer),
                    ending,
                    client_authenticated,
                };
                Ok(out)
            }
            other => {
                let over = matches!(other, Phase::Over { .. });
                self.phase = other;
                Err(if over {
                    SessionError::Ended
                } else {
                    SessionError::OutOfOrder("reply without a received message")
                })
            }
        }
    }

    /// The reply to an authenticated client: its statuses, then Alert 1222 or our commands.
    /// A final message of statuses alone ends the session (§8.6), one carrying our Alert
    /// 1223 aborts it.
    fn reply_authenticated(
        &mut self,
        mut link: Link,
        mut outbox: Outbox,
        reply: Reply,
    ) -> Result<Outgoing, SessionError> {
        let mut out: VecDeque<Queued> = outbox.statuses.drain(..).collect();
        let mut final_allowed = true;
        if reply == Reply::NextMessage {
            out.push_back(Queued::plain(common::simple_alert(AlertCode::NEXT_MESSAGE)));
            final_allowed = false;
        }
        let status_count = out.len();
        if reply == Reply::Commands {
            out.append(&mut outbox.queue);
        }
        let (msg, outgoing) = self.send(
            &mut link,
            &mut outbox,
            out,
            status_count,
            final_allowed,
            true,
        )?;
        let only_statuses = msg.body.iter().all(|c| matches!(c, Command::Status(_)));
        let aborting = msg
            .body
            .iter()
            .any(|c| matches!(c, Command::Alert(a) if a.code == AlertCode::SESSION_ABORT));
        self.phase = if aborting {
            Phase::Over {
                peer: Some(link.peer),
                ending: Ending::AbortedByServer,
                client_authenticated: true,
            }
        } else if reply == Reply::Commands && msg.is_final && only_statuses {
            Phase::Over {
                peer: Some(link.peer),
                ending: Ending::Finished,
                client_authenticated: true,
            }
        } else {
            Phase::Authenticated {
                link,
                outbox,
                turn: Turn::Listening,
            }
        };
        Ok(outgoing)
    }

    /// A reply of the statuses owed, none of our commands.
    fn send_statuses(
        &mut self,
        link: &mut Link,
        outbox: &mut Outbox,
        client_authenticated: bool,
    ) -> Result<(Message, Outgoing), SessionError> {
        let out: VecDeque<Queued> = outbox.statuses.drain(..).collect();
        let status_count = out.len();
        self.send(link, outbox, out, status_count, true, client_authenticated)
    }

    /// Packs `out` (statuses first, `status_count` of them) into our next message within the
    /// client's MaxMsgSize. What does not fit waits in `outbox`: statuses go first next time,
    /// commands back to the front of the queue. A message that cannot be encoded ends the
    /// session.
    fn send(
        &mut self,
        link: &mut Link,
        outbox: &mut Outbox,
        mut out: VecDeque<Queued>,
        status_count: usize,
        final_allowed: bool,
        client_authenticated: bool,
    ) -> Result<(Message, Outgoing), SessionError> {
        link.msg_id += 1;
        let max = link
            .client_max_msg
            .unwrap_or(self.config.limits.max_message_bytes);
        let packed = common::pack(
            self.header(link),
            &mut out,
            max,
            self.config.encoding,
            final_allowed,
        );
        let (msg, body, sent) = match packed {
            Ok(p) => p,
            Err(e) => {
                self.phase = Phase::Over {
                    peer: Some(link.peer.clone()),
                    ending: Ending::Unsendable,
                    client_authenticated,
                };
                return Err(e);
            }
        };
        let mut left: Vec<Queued> = out.into_iter().collect();
        let left_statuses = status_count.saturating_sub(sent.len().min(status_count));
        outbox
            .statuses
            .extend(left.drain(..left_statuses.min(left.len())));
        for q in left.into_iter().rev() {
            outbox.queue.push_front(q);
        }
        for (q, c) in sent.iter().zip(&msg.body) {
            if let Some(h) = q.handle {
                outbox.pending.insert(
                    pending_key(link.msg_id, c.cmd_id().0),
                    Pending {
                        handle: h,
                        cmd: c.name().to_owned(),
                    },
                );
            }
        }
        outbox.last_sent = sent;
        let hmac = (self.config.auth == AuthScheme::Hmac)
            .then(|| auth::hmac_header(&self.config.server_credentials, &self.server_nonce, &body));
        let outgoing = Outgoing {
            body,
            content_type: self.config.encoding.content_type(),
            hmac,
            uri: link.peer.client_id.clone(),
        };
        Ok((msg, outgoing))
    }
}

/// `B64(MD5(body))`: names a received message's exact bytes.
fn body_digest(body: &[u8]) -> String {
    auth::body_digest(body)
}

/// A package 1: its body opens a session with Alert 1200 or 1201 (DM Protocol 1.2 §8.3).
fn starts_session(msg: &Message) -> bool {
    msg.body.iter().any(|c| {
        matches!(c, Command::Alert(a)
            if a.code == AlertCode::CLIENT_INITIATED_MGMT || a.code == AlertCode::SERVER_INITIATED_MGMT)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ClientConfig, ClientSession};
    use crate::tree::{DevDetail, DevInfo, DmTree};

    fn tree() -> DmTree {
        let info = DevInfo {
            dev_id: "IMEI:1".into(),
            manufacturer: "Acme".into(),
            model: "P1".into(),
            lang: "en".into(),
        };
        let detail = DevDetail {
            dev_type: "phone".into(),
            oem: "Acme".into(),
            fw_version: "1.0".into(),
            sw_version: "1.0".into(),
            hw_version: "A".into(),
        };
        DmTree::with_standard_objects(&info, &detail).unwrap()
    }

    fn client(auth: AuthScheme, password: &str, client_nonce: &[u8]) -> ClientSession {
        ClientSession::new(
            ClientConfig {
                client_id: "IMEI:1".into(),
                server_id: "srv".into(),
                server_uri: "https://dm.example/".into(),
                client_credentials: Credentials::new("dev1", password),
                server_credentials: Credentials::new("srv", "spw"),
                auth,
                require_server_auth: true,
                encoding: Encoding::Xml,
                limits: Limits::default(),
            },
            1,
            Nonce(client_nonce.to_vec()),
            Nonce(b"s".to_vec()),
        )
    }

    fn server(auth: AuthScheme) -> ServerSession {
        ServerSession::new(
            ServerConfig {
                server_id: "srv".into(),
                server_uri: "https://dm.example/".into(),
                resp_uri: None,
                client_credentials: Credentials::new("dev1", "pw"),
                server_credentials: Credentials::new("srv", "spw"),
                auth,
                encoding: Encoding::Xml,
                limits: Limits::default(),
            },
            Nonce(b"c".to_vec()),
            Nonce(b"s".to_vec()),
        )
    }

    fn fresh(n: u8) -> Nonce {
        Nonce(vec![n; 8])
    }

    fn uri(s: &str) -> NodeUri {
        NodeUri::parse(s).unwrap()
    }

    /// The command names of a reply, in order.
    fn commands(out: &Outgoing) -> Vec<String> {
        let msg = Encoding::Xml.decode(&out.body, &Limits::default()).unwrap();
        msg.body.iter().map(|c| c.name().to_owned()).collect()
    }

    fn ending(s: &ServerSession) -> Option<Ending> {
        match &s.phase {
            Phase::Closing { ending, .. } | Phase::Over { ending, .. } => Some(*ending),
            _ => None,
        }
    }

    fn turn(s: &ServerSession) -> Option<Turn> {
        match &s.phase {
            Phase::Authenticated { turn, .. } => Some(*turn),
            _ => None,
        }
    }

    /// The client authenticates with package 1 and the server answers with nothing to do:
    /// the session is over and finished.
    fn finished_session() -> ServerSession {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"c");
        let mut s = server(AuthScheme::Md5);
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        assert_eq!(turn(&s), Some(Turn::Replying(Reply::Commands)));
        s.reply().unwrap();
        assert_eq!(ending(&s), Some(Ending::Finished));
        s
    }

    #[test]
    fn a_round_goes_from_opening_through_replying_to_listening() {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"c");
        let mut s = server(AuthScheme::Md5);
        assert!(matches!(s.phase, Phase::Opening { .. }));
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        assert_eq!(turn(&s), Some(Turn::Replying(Reply::Commands)));
        let h = s.get(&uri("./DevDetail/FwV"));
        assert_ne!(h, CommandHandle::NOT_QUEUED);
        let p2 = s.reply().unwrap();
        // SyncHdr, Alert 1201 and the DevInfo Replace are answered before the Get.
        assert_eq!(commands(&p2), ["Status", "Status", "Status", "Get"]);
        assert_eq!(turn(&s), Some(Turn::Listening));
        assert!(s.is_authenticated() && !s.is_over());
    }

    #[test]
    fn no_reply_before_a_message_arrived() {
        let mut s = server(AuthScheme::Md5);
        s.get(&uri("./DevDetail/FwV"));
        let before = s.clone();
        assert_eq!(
            s.reply(),
            Err(SessionError::OutOfOrder("reply without a received message"))
        );
        assert_eq!(s, before, "a refused reply leaves the session as it was");
    }

    #[test]
    fn a_command_offered_after_the_session_is_over_is_not_queued() {
        let mut s = finished_session();
        let before = s.clone();
        assert_eq!(s.get(&uri("./DevDetail/FwV")), CommandHandle::NOT_QUEUED);
        assert_eq!(
            s.exec(&uri("./FUMO/fw/DownloadAndUpdate"), Some("c"), None),
            CommandHandle::NOT_QUEUED
        );
        s.abort();
        assert_eq!(s, before, "nothing was stored in a session that is over");
        assert_eq!(s.reply(), Err(SessionError::Ended));
        assert!(s.is_finished());
    }

    #[test]
    fn an_unauthenticated_client_is_sent_statuses_and_a_challenge_only() {
        // The client starts with a nonce the server does not expect: 401 and a challenge,
        // then the retry with the new nonce succeeds (DM Security 1.2 §5.3-§5.4).
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"stale");
        let mut s = server(AuthScheme::Md5);
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        assert!(matches!(s.phase, Phase::Challenging { .. }));
        let h = s.get(&uri("./DevDetail/FwV"));
        let p2 = s.reply().unwrap();
        assert!(commands(&p2).iter().all(|c| c == "Status"));
        assert!(matches!(s.phase, Phase::AwaitingAuthentication { .. }));
        assert!(!s.is_authenticated());

        let retry = c.receive(&p2.body, None, &mut t).unwrap().reply.unwrap();
        s.receive(&retry.body, None, fresh(2)).unwrap();
        assert!(s.is_authenticated());
        let p4 = s.reply().unwrap();
        assert!(
            commands(&p4).contains(&"Get".to_owned()),
            "queued while challenging"
        );
        let msg = Encoding::Xml.decode(&p4.body, &Limits::default()).unwrap();
        let get = msg.body.iter().find(|c| c.name() == "Get").unwrap();
        let Phase::Authenticated { outbox, .. } = &s.phase else {
            panic!("not authenticated")
        };
        let sent = outbox.handle_of(None, get.cmd_id(), 2).unwrap();
        assert_eq!(CommandHandle(sent.handle), h);
    }

    #[test]
    fn spent_authentication_attempts_close_the_session_at_once() {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "wrong", b"c");
        let mut s = server(AuthScheme::Md5);
        let mut msg = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        for attempt in 1..=Limits::default().max_auth_attempts {
            s.receive(&msg.body, None, fresh(attempt)).unwrap();
            if attempt < Limits::default().max_auth_attempts {
                assert!(matches!(s.phase, Phase::Challenging { .. }));
                let answer = s.reply().unwrap();
                msg = c
                    .receive(&answer.body, None, &mut t)
                    .unwrap()
                    .reply
                    .unwrap();
            }
        }
        assert_eq!(ending(&s), Some(Ending::ClientNotAuthenticated));
        assert!(s.is_over() && !s.is_authenticated());
        assert_eq!(s.get(&uri("./DevDetail/FwV")), CommandHandle::NOT_QUEUED);
        let last = s.reply().unwrap();
        assert!(commands(&last).iter().all(|c| c == "Status"));
        assert!(matches!(
            s.phase,
            Phase::Over {
                ending: Ending::ClientNotAuthenticated,
                ..
            }
        ));
        // A copy of the message that ended it is still known; any later message is not.
        assert!(matches!(
            s.receive(&msg.body, None, fresh(9)),
            Err(SessionError::Repeated(_))
        ));
        let text = String::from_utf8(msg.body.clone()).unwrap();
        let n = Limits::default().max_auth_attempts;
        let later = text.replace(
            &format!("<MsgID>{n}</MsgID>"),
            &format!("<MsgID>{}</MsgID>", n + 1),
        );
        assert_ne!(later, text);
        assert_eq!(
            s.receive(later.as_bytes(), None, fresh(9)),
            Err(SessionError::Ended)
        );
    }

    #[test]
    fn a_failed_hmac_check_of_an_authenticated_client_is_challenged_and_the_session_goes_on() {
        let mut t = tree();
        let mut c = client(AuthScheme::Hmac, "pw", b"c");
        let mut s = server(AuthScheme::Hmac);
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, p1.hmac.as_deref(), fresh(1)).unwrap();
        s.get(&uri("./DevDetail/FwV"));
        let p2 = s.reply().unwrap();
        let p3 = c
            .receive(&p2.body, p2.hmac.as_deref(), &mut t)
            .unwrap()
            .reply
            .unwrap();
        let forged = "algorithm=MD5, username=\"dev1\", mac=AAAAAAAAAAAAAAAAAAAAAA==";
        let events = s.receive(&p3.body, Some(forged), fresh(2)).unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ServerEvent::AuthenticationRejected(_)))
        );
        assert_eq!(turn(&s), Some(Turn::Replying(Reply::Challenge)));
        s.get(&uri("./DevInfo/Mod"));
        let p4 = s.reply().unwrap();
        assert!(commands(&p4).iter().all(|c| c == "Status"));
        // A challenge never ends the session: the client answers it with the new nonce.
        assert_eq!(turn(&s), Some(Turn::Listening));
        assert!(!s.is_over());
        let p5 = c
            .receive(&p4.body, p4.hmac.as_deref(), &mut t)
            .unwrap()
            .reply
            .unwrap();
        s.receive(&p5.body, p5.hmac.as_deref(), fresh(3)).unwrap();
        assert_eq!(turn(&s), Some(Turn::Replying(Reply::Commands)));
        assert!(commands(&s.reply().unwrap()).contains(&"Get".to_owned()));
    }

    #[test]
    fn a_client_abort_closes_the_session_and_its_reply_is_the_last() {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"c");
        let mut s = server(AuthScheme::Md5);
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        s.get(&uri("./DevDetail/FwV"));
        let p2 = s.reply().unwrap();
        c.receive(&p2.body, None, &mut t).unwrap();
        let abort = c.abort().unwrap();
        let events = s.receive(&abort.body, None, fresh(2)).unwrap();
        assert_eq!(events.last(), Some(&ServerEvent::Aborted));
        assert!(matches!(
            s.phase,
            Phase::Closing {
                ending: Ending::AbortedByClient,
                ..
            }
        ));
        assert!(s.is_over() && s.is_authenticated());
        assert_eq!(s.get(&uri("./DevInfo/Mod")), CommandHandle::NOT_QUEUED);
        let last = s.reply().unwrap();
        assert!(commands(&last).iter().all(|c| c == "Status"));
        assert_eq!(ending(&s), Some(Ending::AbortedByClient));
        assert!(matches!(s.phase, Phase::Over { .. }));
        assert_eq!(s.reply(), Err(SessionError::Ended));
    }

    #[test]
    fn our_abort_waits_for_an_authenticated_reply() {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"stale");
        let mut s = server(AuthScheme::Md5);
        s.abort();
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        let p2 = s.reply().unwrap();
        assert!(!commands(&p2).contains(&"Alert".to_owned()));
        assert!(!s.is_over());
        let retry = c.receive(&p2.body, None, &mut t).unwrap().reply.unwrap();
        s.receive(&retry.body, None, fresh(2)).unwrap();
        let p4 = s.reply().unwrap();
        assert!(commands(&p4).contains(&"Alert".to_owned()));
        assert_eq!(ending(&s), Some(Ending::AbortedByServer));
        assert!(s.is_over() && !s.is_finished());
    }

    #[test]
    fn a_malformed_message_closes_the_session_with_its_status() {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"c");
        let mut s = server(AuthScheme::Md5);
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        let text = String::from_utf8(p1.body).unwrap();
        let bad = text.replace("<CmdID>2</CmdID>", "<CmdID>1</CmdID>");
        assert_ne!(bad, text);
        let events = s.receive(bad.as_bytes(), None, fresh(1)).unwrap();
        assert!(matches!(events.as_slice(), [ServerEvent::Refused(_)]));
        assert_eq!(ending(&s), Some(Ending::Refused));
        assert_eq!(s.session_id(), Some("1"));
        s.reply().unwrap();
        assert!(matches!(
            s.phase,
            Phase::Over {
                ending: Ending::Refused,
                ..
            }
        ));
    }

    #[test]
    fn a_reply_that_cannot_be_encoded_ends_the_session() {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"c");
        let mut s = server(AuthScheme::Md5);
        s.config.limits.max_message_bytes = 2048;
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        // An Exec is never chunked (DM Protocol §7.1.3 chunks Add and Replace items).
        s.exec(&uri("./FUMO/fw/Update"), None, Some(Data(vec![b'x'; 4096])));
        assert!(matches!(s.reply(), Err(SessionError::CommandTooLarge(_))));
        assert_eq!(ending(&s), Some(Ending::Unsendable));
        assert_eq!(s.session_id(), Some("1"));
        assert!(s.is_over());
    }

    #[test]
    fn too_many_messages_end_the_session() {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"c");
        let mut s = server(AuthScheme::Md5);
        s.config.limits.max_messages = 1;
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        s.get(&uri("./DevDetail/FwV"));
        let p2 = s.reply().unwrap();
        let p3 = c.receive(&p2.body, None, &mut t).unwrap().reply.unwrap();
        assert_eq!(
            s.receive(&p3.body, None, fresh(2)),
            Err(SessionError::TooManyMessages(1))
        );
        assert_eq!(ending(&s), Some(Ending::TooManyMessages));
        assert_eq!(s.client_id(), Some("IMEI:1"));
    }

    /// The statuses of a reply, as (CmdRef, code, Chal's NextNonce).
    fn statuses(out: &Outgoing) -> Vec<(u32, u16, Option<String>)> {
        let msg = Encoding::Xml.decode(&out.body, &Limits::default()).unwrap();
        msg.body
            .iter()
            .filter_map(|c| match c {
                Command::Status(s) => Some((
                    s.cmd_ref.0,
                    s.code.value(),
                    s.chal.as_ref().and_then(|c| c.meta.next_nonce.clone()),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_command_of_a_refused_message_gets_401_with_the_challenge() {
        // DM Protocol 1.2 §9.1: a Status for every command, 401/407 with a Chal.
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"stale");
        let mut s = server(AuthScheme::Md5);
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        let p2 = s.reply().unwrap();
        let nonce = Some(fresh(1).to_b64());
        assert_eq!(
            statuses(&p2),
            [
                (0, 401, nonce.clone()),
                (1, 401, nonce.clone()),
                (2, 401, nonce)
            ]
        );
        // Our client re-sends the whole message; the 401s are not its commands' answers.
        let step = c.receive(&p2.body, None, &mut t).unwrap();
        assert!(
            !step
                .events
                .iter()
                .any(|e| matches!(e, crate::session::ClientEvent::Status { .. }))
        );
        s.receive(&step.reply.unwrap().body, None, fresh(2))
            .unwrap();
        assert!(s.is_authenticated());
    }

    #[test]
    fn spent_attempts_answer_the_commands_215() {
        let mut s = server(AuthScheme::Md5);
        s.config.limits.max_auth_attempts = 1;
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "wrong", b"c");
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        let out = s.reply().unwrap();
        assert_eq!(
            statuses(&out),
            [(0, 401, None), (1, 215, None), (2, 215, None)]
        );
    }

    /// The client's Status on our SyncHdr, with a Chal giving `next`.
    fn client_answer(s: &mut ServerSession, reply: &Outgoing, code: StatusCode, next: &[u8]) {
        let got = Encoding::Xml
            .decode(&reply.body, &Limits::default())
            .unwrap();
        let mut hs = common::header_status(got.header.msg_id, &got.header, code);
        hs.chal = Some(auth::make_chal(AuthScheme::Md5, &Nonce(next.to_vec())));
        let msg = Message {
            header: SyncHdr {
                ver_dtd: VER_DTD.into(),
                ver_proto: VER_PROTO.into(),
                session_id: "1".into(),
                msg_id: MsgId(2),
                target: Location::new("https://dm.example/"),
                source: Location::new("IMEI:1"),
                resp_uri: None,
                no_resp: false,
                cred: None,
                meta: None,
            },
            body: vec![Command::Status(hs)],
            is_final: true,
        };
        let body = Encoding::Xml.encode(&msg).unwrap();
        s.receive(&body, None, fresh(3)).unwrap();
    }

    /// An MD5 session the server opened: package 1 received, a Get queued and replied to.
    /// Answers the client's tree, the client, the server, package 1 and the server's reply.
    fn opened_md5() -> (DmTree, ClientSession, ServerSession, Outgoing, Outgoing) {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"c");
        let mut s = server(AuthScheme::Md5);
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        s.get(&uri("./DevDetail/FwV"));
        let p2 = s.reply().unwrap();
        (t, c, s, p1, p2)
    }

    fn our_cred(out: &Outgoing) -> Option<crate::model::Cred> {
        Encoding::Xml
            .decode(&out.body, &Limits::default())
            .unwrap()
            .header
            .cred
    }

    #[test]
    fn a_next_nonce_with_212_is_adopted_and_ends_our_credentials() {
        let (_, _, mut s, _, p2) = opened_md5();
        assert!(our_cred(&p2).is_some());
        client_answer(&mut s, &p2, StatusCode::AUTHENTICATION_ACCEPTED, b"n212");
        assert_eq!(s.server_nonce(), &Nonce(b"n212".to_vec()));
        s.get(&uri("./DevInfo/Mod"));
        assert_eq!(our_cred(&s.reply().unwrap()), None);
    }

    #[test]
    fn a_200_with_a_chal_asks_for_our_credentials_again_with_its_nonce() {
        let (_, _, mut s, _, p2) = opened_md5();
        client_answer(&mut s, &p2, StatusCode::OK, b"n200");
        s.get(&uri("./DevInfo/Mod"));
        let p4 = s.reply().unwrap();
        let want = auth::make_cred(
            AuthScheme::Md5,
            &Credentials::new("srv", "spw"),
            &Nonce(b"n200".to_vec()),
        );
        assert_eq!(our_cred(&p4), want);
    }

    #[test]
    fn repeated_stale_and_restarting_messages_change_nothing() {
        let (mut t, mut c, mut s, p1, p2) = opened_md5();
        let p3 = c.receive(&p2.body, None, &mut t).unwrap().reply.unwrap();
        let before = s.clone();
        assert_eq!(
            s.receive(&p1.body, None, fresh(2)),
            Err(SessionError::Repeated(MsgId(1))),
            "package 1 again, byte for byte, is the last message: a repeat"
        );
        assert_eq!(s, before);
        s.receive(&p3.body, None, fresh(2)).unwrap();
        s.get(&uri("./DevInfo/Mod"));
        s.reply().unwrap();
        let before = s.clone();
        assert_eq!(
            s.receive(&p3.body, None, fresh(3)),
            Err(SessionError::Repeated(MsgId(2)))
        );
        assert_eq!(
            s.receive(&p1.body, None, fresh(3)),
            Err(SessionError::NewSession)
        );
        let other = String::from_utf8(p3.body.clone())
            .unwrap()
            .replace("<MsgID>2</MsgID>", "<MsgID>1</MsgID>");
        assert_eq!(
            s.receive(other.as_bytes(), None, fresh(3)),
            Err(SessionError::StaleMessage {
                last: MsgId(2),
                got: MsgId(1)
            })
        );
        assert_eq!(s, before, "nothing of a refused message is kept");
    }

    #[test]
    fn a_stored_unauthenticated_session_takes_the_accounts_nonce() {
        let mut s = server(AuthScheme::Md5);
        s.refresh_client_nonce(fresh(7));
        assert_eq!(s.client_nonce(), &fresh(7));
        let s = finished_session();
        let mut after = s.clone();
        after.refresh_client_nonce(fresh(8));
        assert_eq!(after, s, "an authenticated session keeps its own");
    }

    #[test]
    fn every_phase_survives_storage() {
        let mut t = tree();
        let mut c = client(AuthScheme::Md5, "pw", b"stale");
        let mut s = server(AuthScheme::Md5);
        let check = |s: &ServerSession| {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(&serde_json::from_str::<ServerSession>(&json).unwrap(), s);
        };
        check(&s); // opening
        let p1 = c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).unwrap();
        s.receive(&p1.body, None, fresh(1)).unwrap();
        check(&s); // challenging
        let p2 = s.reply().unwrap();
        check(&s); // awaiting authentication
        let p3 = c.receive(&p2.body, None, &mut t).unwrap().reply.unwrap();
        s.receive(&p3.body, None, fresh(2)).unwrap();
        check(&s); // authenticated, replying
        s.get(&uri("./DevDetail/FwV"));
        s.reply().unwrap();
        check(&s); // authenticated, listening
        let abort = c.abort().unwrap();
        s.receive(&abort.body, None, fresh(3)).unwrap();
        check(&s); // closing
        s.reply().unwrap();
        check(&s); // over
    }
}
