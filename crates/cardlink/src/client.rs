//! The typed client of the simfota applet, over any [`Channel`].
//!
//! One method per card command of `docs/apdu.md`; each builds the APDU from typed arguments,
//! sends it through the [`Link`] (so chaining, GET RESPONSE and extended length are handled
//! below), and turns the answer into a typed result or a typed refusal: a security refusal
//! (`66RR`) becomes [`ClientError::Refused`] with the card's [`Reason`] (which maps to a FUMO
//! result code), a wrong PIN [`ClientError::WrongPin`] with the tries left, a blocked PIN
//! [`ClientError::Blocked`], anything else [`ClientError::Status`] with the status word.
//!
//! The client keeps no secret and decides nothing: the card decides, the client reports.

use std::io::Read;

use simfota_card::info::tag;
use simfota_card::perso::dgi;
use simfota_card::{AID, Reason, ins};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::{
    CardCertificate, Digest, Iccid, Imei, IssuerId, Limits, Nonce, Policy, PublicKey, Rights,
    ShortText,
};

use crate::apdu::{Command, INS_MANAGE_CHANNEL, Response, StatusWord, cla_on_channel};
use crate::channel::{Channel, ResetKind};
use crate::error::LinkError;
use crate::link::Link;

pub use simfota_wire::contract::{
    Lifecycle, LogStatus, OriginatorEntry, PendingUpdate, ServerEntry,
};

/// Card information (GET DATA `0101`, the contract module's layout), owning its certificate.
pub type CardInfo = simfota_wire::contract::CardInfo<Vec<u8>>;

/// CLA of the ISO/IEC 7816-4 interindustry commands (SELECT, VERIFY, GET CHALLENGE, ...).
const CLA_ISO: u8 = 0x00;
/// CLA of the applet's proprietary commands.
const CLA_PROPRIETARY: u8 = 0x80;
/// Ne that asks for "everything": the link sends 256 in a short APDU and fetches the rest
/// through GET RESPONSE, or asks for all of it in one extended APDU.
const NE_ALL: usize = 65_536;
/// Reference data P2 of the PIN (ISO/IEC 7816-4 §7.5.6: specific reference data `81`).
const P2_PIN: u8 = 0x81;
/// Largest payload chunk per PAYLOAD command: what one short APDU carries, so a SIM without
/// extended length needs no chaining for streaming.
pub const PAYLOAD_CHUNK: usize = 255;

/// A refusal or failure of a card command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The link to the card failed (no card, removed, reset, ...).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A security check of the card refused the request (`66RR`).
    #[error("{command}: the card refused: {reason}")]
    Refused {
        /// The command.
        command: &'static str,
        /// Why.
        reason: Reason,
    },
    /// Wrong PIN or PUK (`63Cx`).
    #[error("{command}: wrong PIN or PUK, {tries_left} tries left")]
    WrongPin {
        /// The command.
        command: &'static str,
        /// Tries left before the reference is blocked.
        tries_left: u8,
    },
    /// The PIN or PUK is blocked (`6983`).
    #[error("{command}: blocked (no tries left; unblock the PIN with the PUK)")]
    Blocked {
        /// The command.
        command: &'static str,
    },
    /// Any other status word.
    #[error("{command}: the card answered {sw} ({})", sw.describe())]
    Status {
        /// The command.
        command: &'static str,
        /// The status word.
        sw: StatusWord,
    },
    /// The card's answer does not decode.
    #[error("{command}: malformed answer from the card: {detail}")]
    BadAnswer {
        /// The command.
        command: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// An argument cannot be sent (a PIN that is not 4-8 digits, an oversize object, ...).
    #[error("{0}")]
    Input(String),
    /// Reading the payload to stream failed.
    #[error("reading the payload: {0}")]
    Payload(#[source] std::io::Error),
}

impl ClientError {
    /// The card's refusal reason, for a security refusal.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ClientError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The FUMO result code a device reports for this refusal (design §4), if it ends an update.
    pub fn fumo_result(&self) -> Option<u16> {
        self.reason().and_then(Reason::fumo_result)
    }

    /// The status word behind a card refusal.
    pub fn status(&self) -> Option<StatusWord> {
        match self {
            ClientError::Refused { reason, .. } => {
                Some(StatusWord(0x6600 | u16::from(reason.code())))
            }
            ClientError::WrongPin { tries_left, .. } => {
                Some(StatusWord(0x63C0 | u16::from(*tries_left)))
            }
            ClientError::Blocked { .. } => Some(StatusWord(0x6983)),
            ClientError::Status { sw, .. } => Some(*sw),
            _ => None,
        }
    }
}

/// Turns a response into its data, or the typed refusal its status word stands for.
fn check(command: &'static str, r: Response) -> Result<Vec<u8>, ClientError> {
    let sw = r.sw;
    if sw == StatusWord::OK {
        return Ok(r.data);
    }
    Err(match (sw.sw1(), sw.sw2()) {
        (0x66, code) => match Reason::from_code(code) {
            Some(reason) => ClientError::Refused { command, reason },
            None => ClientError::Status { command, sw },
        },
        (0x63, x) if x & 0xF0 == 0xC0 => ClientError::WrongPin {
            command,
            tries_left: x & 0x0F,
        },
        (0x69, 0x83) => ClientError::Blocked { command },
        _ => ClientError::Status { command, sw },
    })
}

fn bad(command: &'static str, detail: impl std::fmt::Display) -> ClientError {
    ClientError::BadAnswer {
        command,
        detail: detail.to_string(),
    }
}

/// What SELECT answers (FCI proprietary template, `docs/apdu.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// Applet version (major, minor).
    pub version: (u8, u8),
    /// Life cycle.
    pub lifecycle: Lifecycle,
}

/// PIN state as VERIFY without data reports it (ISO/IEC 7816-4 §7.5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStatus {
    /// Verified in this session.
    Verified,
    /// Not verified; this many tries left.
    TriesLeft(u8),
    /// Blocked.
    Blocked,
}

/// What a personalization stores (see `simfota card personalize`).
#[derive(Debug, Clone)]
pub struct Personalization {
    /// The issuer's name in the card certificate.
    pub issuer_name: String,
    /// ICCID.
    pub iccid: Iccid,
    /// IMSI digits.
    pub imsi: String,
    /// PIN (4-8 digits) and its try limit.
    pub pin: (String, u8),
    /// PUK (4-8 digits) and its try limit.
    pub puk: (String, u8),
    /// Authorized servers.
    pub servers: Vec<(String, PublicKey, Rights)>,
    /// Trusted originators.
    pub originators: Vec<(String, PublicKey)>,
    /// The policy.
    pub policy: Policy,
}

/// A PIN or PUK as the card's 8-byte reference block: 4-8 ASCII digits padded with `FF`
/// (ETSI TS 102 221 §9.5.1).
pub fn pin_block(pin: &str) -> Result<[u8; 8], ClientError> {
    if !(4..=8).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ClientError::Input(
            "a PIN or PUK is 4 to 8 decimal digits".to_owned(),
        ));
    }
    let mut block = [0xFF; 8];
    block[..pin.len()].copy_from_slice(pin.as_bytes());
    Ok(block)
}

fn dgi_bytes(tag: u16, value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&tag.to_be_bytes());
    // GlobalPlatform DGI length: one byte up to 254, else FF + two bytes.
    if value.len() < 0xFF {
        out.push(value.len() as u8);
    } else {
        out.push(0xFF);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(value);
}

/// A card-digest payload stream of this card session (PAYLOAD INTEGRITY P1 `01`/`02`/`03`):
/// what the card took so far and the bytes waiting to fill the next chunk.
#[derive(Debug, Default)]
struct PayloadStream {
    /// Whether the first chunk (P1 `01`, which restarts the card's hash) went out.
    started: bool,
    /// Bytes the card has hashed.
    sent: u64,
    /// Bytes held back until a whole chunk is there (or the stream finishes).
    held: Vec<u8>,
}

/// Which channel of the card the client speaks to the applet on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelMode {
    /// The basic channel (0): the client has the card to itself, as through a PC/SC reader.
    #[default]
    Basic,
    /// A logical channel the client opens with MANAGE CHANNEL (ISO/IEC 7816-4 §11.1.2), the
    /// card picking its number: how a phone or a module reaches a non-telecom applet while the
    /// modem keeps the basic channel (AT+CSIM, a reader shared with a phone stack). Opened at
    /// the first SELECT, again after a reset; [`CardClient::close_channel`] gives it back. On
    /// a channel that is the applet's logical channel already ([`Channel::is_applet_channel`]:
    /// AT+CCHO/AT+CGLA, OMAPI), the client sends no MANAGE CHANNEL and works there as it is.
    Logical,
}

/// The client of the applet over a channel.
pub struct CardClient<C> {
    link: Link<C>,
    limits: Limits,
    /// Basic or logical channel.
    mode: ChannelMode,
    /// The logical channel this client opened on the card, if any: every command goes there.
    logical: Option<u8>,
    /// The payload stream open on the card in this session, as far as the client knows. The
    /// card keeps its hash state in RAM (`docs/apdu.md`): a reset, SELECT, BIND TERMINAL, a
    /// new authorization or any verdict ends it, and so does any failure of a stream command.
    stream: Option<PayloadStream>,
}

impl<C: Channel> CardClient<C> {
    /// A client over `channel` (default link options).
    pub fn new(channel: C) -> Self {
        Self::with_link(Link::new(channel))
    }

    /// A client over a configured link.
    pub fn with_link(link: Link<C>) -> Self {
        Self {
            link,
            limits: Limits::default(),
            mode: ChannelMode::Basic,
            logical: None,
            stream: None,
        }
    }

    /// The same client on a basic or a logical channel (set before the first SELECT).
    pub fn with_channel_mode(mut self, mode: ChannelMode) -> Self {
        self.mode = mode;
        self
    }

    /// The channel mode.
    pub fn channel_mode(&self) -> ChannelMode {
        self.mode
    }

    /// The number of the channel commands go on: 0 (basic), or the logical channel open.
    pub fn channel_number(&self) -> u8 {
        self.logical.unwrap_or(0)
    }

    /// MANAGE CHANNEL open on the basic channel (ISO/IEC 7816-4 §11.1.2, P2 `00`: the card
    /// picks the number and answers it). Every later command goes on that channel.
    pub fn open_channel(&mut self) -> Result<u8, ClientError> {
        const C: &str = "MANAGE CHANNEL open";
        let response = self
            .link
            .transmit(&Command::new(0x00, INS_MANAGE_CHANNEL, 0x00, 0x00).with_ne(1))?;
        let number = match check(C, response)?.as_slice() {
            [n @ 1..=19] => *n,
            other => return Err(bad(C, format!("channel number {other:02X?}"))),
        };
        self.logical = Some(number);
        self.stream = None;
        Ok(number)
    }

    /// MANAGE CHANNEL close of the logical channel this client opened (its selection and
    /// session end on the card); commands go on the basic channel again until the next
    /// SELECT opens another one ([`ChannelMode::Logical`]). Nothing to do on the basic
    /// channel.
    pub fn close_channel(&mut self) -> Result<(), ClientError> {
        let Some(number) = self.logical.take() else {
            return Ok(());
        };
        self.stream = None;
        let response = self
            .link
            .transmit(&Command::new(0x00, INS_MANAGE_CHANNEL, 0x80, number))?;
        check("MANAGE CHANNEL close", response)?;
        Ok(())
    }

    /// The link (traffic counters, the channel).
    pub fn link(&self) -> &Link<C> {
        &self.link
    }

    /// The link, mutably.
    pub fn link_mut(&mut self) -> &mut Link<C> {
        &mut self.link
    }

    /// Gives the link back.
    pub fn into_link(self) -> Link<C> {
        self.link
    }

    fn run(&mut self, command: &'static str, mut apdu: Command) -> Result<Vec<u8>, ClientError> {
        // The class of every command names the channel (ISO/IEC 7816-4 §5.1.1).
        apdu.cla = cla_on_channel(apdu.cla, self.channel_number()).unwrap_or(apdu.cla);
        let response = self.link.transmit(&apdu)?;
        check(command, response)
    }

    /// Resets the card: its session (selection, nonce, binding, PIN status) is gone, and so
    /// are its logical channels.
    pub fn reset(&mut self, kind: ResetKind) -> Result<(), ClientError> {
        self.stream = None;
        self.logical = None;
        self.link.reset(kind)?;
        Ok(())
    }

    /// Opens a session again after a reset or a re-inserted card: reconnects if needed,
    /// selects the applet and, when given, binds the terminal's IMEI.
    pub fn reopen(&mut self, imei: Option<&Imei>) -> Result<Selected, ClientError> {
        if self.link.channel().atr().is_empty() {
            self.link.reconnect()?;
        }
        // A logical channel of the earlier session is closed (after a reset the card closed
        // it already: its answer does not matter); SELECT opens a fresh one.
        let _ = self.close_channel();
        let selected = match self.select() {
            Err(ClientError::Link(LinkError::CardRemoved { .. })) => {
                self.link.reconnect()?;
                self.select()?
            }
            other => other?,
        };
        if let Some(imei) = imei {
            self.bind_terminal(imei)?;
        }
        Ok(selected)
    }

    /// SELECT the applet by AID (ISO/IEC 7816-4 §11.2.2), on a logical channel opened first
    /// in [`ChannelMode::Logical`].
    pub fn select(&mut self) -> Result<Selected, ClientError> {
        const C: &str = "SELECT";
        // A channel that is the applet's logical channel already (AT+CCHO) needs no MANAGE
        // CHANNEL: SELECT there selects the applet again, which starts a fresh session on
        // that channel (ISO/IEC 7816-4 §11.2.2) and answers the FCI the modem kept.
        if self.mode == ChannelMode::Logical
            && self.logical.is_none()
            && !self.link.channel().is_applet_channel()
        {
            self.open_channel()?;
        }
        // SELECT clears the channel's session, a payload stream included.
        self.stream = None;
        let fci = self.run(
            C,
            Command::new(CLA_ISO, 0xA4, 0x04, 0x00)
                .with_data(AID.to_vec())
                .with_ne(256),
        )?;
        // 6F len A5 len 80 02 major minor 81 01 lifecycle
        let find = |tag: u8| -> Option<&[u8]> {
            let inner = fci.get(4..)?;
            let mut i = 0;
            while i + 2 <= inner.len() {
                let (t, l) = (inner[i], usize::from(inner[i + 1]));
                let v = inner.get(i + 2..i + 2 + l)?;
                if t == tag {
                    return Some(v);
                }
                i += 2 + l;
            }
            None
        };
        if fci.get(..1) != Some(&[0x6F]) || fci.get(2..3) != Some(&[0xA5]) {
            return Err(bad(C, "no FCI template"));
        }
        let version = match find(0x80) {
            Some([major, minor]) => (*major, *minor),
            _ => return Err(bad(C, "no applet version in the FCI")),
        };
        let lifecycle = find(0x81)
            .and_then(|v| v.first().copied())
            .and_then(Lifecycle::from_code)
            .ok_or_else(|| bad(C, "no life cycle in the FCI"))?;
        Ok(Selected { version, lifecycle })
    }

    fn get_data(&mut self, command: &'static str, which: u16) -> Result<Vec<u8>, ClientError> {
        let [p1, p2] = which.to_be_bytes();
        self.run(
            command,
            Command::new(CLA_PROPRIETARY, ins::GET_DATA, p1, p2).with_ne(NE_ALL),
        )
    }

    /// Card information (GET DATA `0101`).
    pub fn card_info(&mut self) -> Result<CardInfo, ClientError> {
        const C: &str = "GET DATA card info";
        let raw = self.get_data(C, tag::CARD_INFO)?;
        simfota_wire::contract::CardInfo::decode(&raw, &self.limits)
            .map(simfota_wire::contract::CardInfo::into_owned)
            .map_err(|e| bad(C, e))
    }

    /// The card's answer to GET DATA `0101` as it came, checked against the contract (what
    /// the device relays as `./SIMFOTA/Card/Info`).
    pub fn card_info_bytes(&mut self) -> Result<Vec<u8>, ClientError> {
        const C: &str = "GET DATA card info";
        let raw = self.get_data(C, tag::CARD_INFO)?;
        simfota_wire::contract::CardInfo::decode(&raw, &self.limits).map_err(|e| bad(C, e))?;
        Ok(raw)
    }

    /// The authorized servers (GET DATA `0102`), readable without authentication (R5).
    pub fn servers(&mut self) -> Result<Vec<ServerEntry>, ClientError> {
        const C: &str = "GET DATA servers";
        let raw = self.get_data(C, tag::SERVERS)?;
        ServerEntry::decode_vec(&raw, &self.limits).map_err(|e| bad(C, e))
    }

    /// The trusted originators (GET DATA `0104`), readable without authentication.
    pub fn originators(&mut self) -> Result<Vec<OriginatorEntry>, ClientError> {
        const C: &str = "GET DATA originators";
        let raw = self.get_data(C, tag::ORIGINATORS)?;
        OriginatorEntry::decode_vec(&raw, &self.limits).map_err(|e| bad(C, e))
    }

    /// The update policy (GET DATA `0103`), readable without authentication (R6).
    pub fn policy(&mut self) -> Result<Policy, ClientError> {
        const C: &str = "GET DATA policy";
        let raw = self.get_data(C, tag::POLICY)?;
        Policy::decode(&raw, &self.limits).map_err(|e| bad(C, e))
    }

    /// Log counters and chain head (GET DATA `0105`).
    pub fn log_status(&mut self) -> Result<LogStatus, ClientError> {
        const C: &str = "GET DATA log status";
        let raw = self.get_data(C, tag::LOG_STATUS)?;
        LogStatus::decode(&raw, &self.limits).map_err(|e| bad(C, e))
    }

    /// The authorized update in progress (GET DATA `0106`), `None` when there is none.
    pub fn pending_update(&mut self) -> Result<Option<PendingUpdate>, ClientError> {
        const C: &str = "GET DATA pending update";
        let raw = self.get_data(C, tag::PENDING_UPDATE)?;
        PendingUpdate::decode(&raw, &self.limits).map_err(|e| bad(C, e))
    }

    /// A fresh one-time nonce (GET CHALLENGE, ISO/IEC 7816-4 §7.5.3). It lives in card RAM
    /// until used or until a reset.
    pub fn get_nonce(&mut self) -> Result<Nonce, ClientError> {
        const C: &str = "GET CHALLENGE";
        let raw = self.run(
            C,
            Command::new(CLA_ISO, ins::GET_CHALLENGE, 0, 0).with_ne(16),
        )?;
        let nonce: [u8; 16] = raw
            .as_slice()
            .try_into()
            .map_err(|_| bad(C, format!("{} bytes instead of 16", raw.len())))?;
        Ok(Nonce(nonce))
    }

    /// BIND TERMINAL: tells the card the device's IMEI for this session.
    pub fn bind_terminal(&mut self, imei: &Imei) -> Result<(), ClientError> {
        self.stream = None;
        self.run(
            "BIND TERMINAL",
            Command::new(CLA_PROPRIETARY, ins::BIND_TERMINAL, 0, 0)
                .with_data(imei.as_str().as_bytes().to_vec()),
        )?;
        Ok(())
    }

    /// VERIFY the PIN.
    pub fn verify_pin(&mut self, pin: &str) -> Result<(), ClientError> {
        let block = pin_block(pin)?;
        self.run(
            "VERIFY",
            Command::new(CLA_ISO, ins::VERIFY, 0, P2_PIN).with_data(block.to_vec()),
        )?;
        Ok(())
    }

    /// The PIN status, without spending a try (VERIFY with no data).
    pub fn pin_status(&mut self) -> Result<PinStatus, ClientError> {
        match self.run("VERIFY", Command::new(CLA_ISO, ins::VERIFY, 0, P2_PIN)) {
            Ok(_) => Ok(PinStatus::Verified),
            Err(ClientError::WrongPin { tries_left, .. }) => Ok(PinStatus::TriesLeft(tries_left)),
            Err(ClientError::Blocked { .. }) => Ok(PinStatus::Blocked),
            Err(e) => Err(e),
        }
    }

    /// CHANGE REFERENCE DATA: replaces the PIN (the old one is checked under the try counter).
    pub fn change_pin(&mut self, old: &str, new: &str) -> Result<(), ClientError> {
        let mut data = pin_block(old)?.to_vec();
        data.extend_from_slice(&pin_block(new)?);
        self.run(
            "CHANGE REFERENCE DATA",
            Command::new(CLA_ISO, ins::CHANGE_REFERENCE_DATA, 0, P2_PIN).with_data(data),
        )?;
        Ok(())
    }

    /// RESET RETRY COUNTER: unblocks the PIN with the PUK, optionally setting a new PIN.
    pub fn unblock_pin(&mut self, puk: &str, new_pin: Option<&str>) -> Result<(), ClientError> {
        let mut data = pin_block(puk)?.to_vec();
        let p1 = match new_pin {
            Some(pin) => {
                data.extend_from_slice(&pin_block(pin)?);
                0x00
            }
            None => 0x01,
        };
        self.run(
            "RESET RETRY COUNTER",
            Command::new(CLA_ISO, ins::RESET_RETRY_COUNTER, p1, P2_PIN).with_data(data),
        )?;
        Ok(())
    }

    fn update_request(token: &[u8], envelope: &[u8]) -> Result<Vec<u8>, ClientError> {
        let len = u16::try_from(token.len())
            .map_err(|_| ClientError::Input("delivery token longer than 65535 bytes".into()))?;
        let mut data = Vec::with_capacity(2 + token.len() + envelope.len());
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(token);
        data.extend_from_slice(envelope);
        Ok(data)
    }

    /// AUTHORIZE UPDATE: the delivery token and the (severed) SUIT envelope. `Ok` means the
    /// card authorized the update and logged it; a refusal carries the reason (and so the
    /// FUMO result code), including `ConsentRequired` / `PinConsentRequired` for a server the
    /// card does not list under a confirming policy.
    pub fn authorize(&mut self, token: &[u8], envelope: &[u8]) -> Result<(), ClientError> {
        let data = Self::update_request(token, envelope)?;
        // A new authorization ends any stream of an earlier update on the card.
        self.stream = None;
        self.run(
            "AUTHORIZE UPDATE",
            Command::new(CLA_PROPRIETARY, ins::AUTHORIZE_UPDATE, 0, 0).with_data(data),
        )?;
        Ok(())
    }

    /// RECORD CONSENT: the user's answer for the same token and envelope. Yes (with the PIN
    /// verified before, if the policy wants it) runs the authorization; no logs the refusal.
    pub fn consent(
        &mut self,
        token: &[u8],
        envelope: &[u8],
        accept: bool,
    ) -> Result<(), ClientError> {
        let data = Self::update_request(token, envelope)?;
        self.stream = None;
        self.run(
            "RECORD CONSENT",
            Command::new(CLA_PROPRIETARY, ins::RECORD_CONSENT, u8::from(accept), 0).with_data(data),
        )?;
        Ok(())
    }

    /// PAYLOAD INTEGRITY, device-digest mode: the SHA-256 and size the device computed.
    pub fn payload_digest(&mut self, digest: &Digest, size: u64) -> Result<(), ClientError> {
        let mut data = digest.0.to_vec();
        data.extend_from_slice(&size.to_be_bytes());
        self.run(
            "PAYLOAD INTEGRITY",
            Command::new(CLA_PROPRIETARY, ins::PAYLOAD, 0, 0).with_data(data),
        )?;
        Ok(())
    }

    /// PAYLOAD INTEGRITY, card-digest mode: streams the payload to the card, which hashes it
    /// and compares with the signed digest at the end. Returns the bytes streamed. Starts a
    /// new stream (any stream open in this session is dropped on both sides).
    pub fn stream_payload(&mut self, payload: &mut dyn Read) -> Result<u64, ClientError> {
        self.payload_stream_start();
        let mut chunk = vec![0u8; PAYLOAD_CHUNK];
        loop {
            let n = read_full(payload, &mut chunk).inspect_err(|_| self.stream = None)?;
            if n == 0 {
                return self.payload_stream_finish();
            }
            self.payload_stream_feed(&chunk[..n])?;
        }
    }

    /// Opens a card-digest payload stream in this card session, replacing any earlier one:
    /// the first chunk goes out with P1 `01`, which restarts the card's hash from byte 0
    /// (after a restart mid-download the device streams the bytes on disk first, then the
    /// rest as it arrives). Nothing is sent until a whole chunk is there.
    pub fn payload_stream_start(&mut self) {
        self.stream = Some(PayloadStream::default());
    }

    /// Bytes fed into the open payload stream (sent or held back), or `None` when no stream
    /// is open in this card session as far as the client knows.
    pub fn payload_stream_len(&self) -> Option<u64> {
        self.stream.as_ref().map(|s| s.sent + s.held.len() as u64)
    }

    fn stream_chunk(&mut self, p1: u8, chunk: Vec<u8>) -> Result<(), ClientError> {
        let n = chunk.len() as u64;
        let sent = self.run(
            "PAYLOAD INTEGRITY",
            Command::new(CLA_PROPRIETARY, ins::PAYLOAD, p1, 0).with_data(chunk),
        );
        match (sent, self.stream.as_mut()) {
            (Ok(_), Some(s)) => {
                s.started = true;
                s.sent += n;
                Ok(())
            }
            (Ok(_), None) => Ok(()),
            (Err(e), _) => {
                // A refusal is the card's verdict (logged, stream over); any other failure
                // leaves the card's stream state unknown: either way it is gone.
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Feeds the next bytes of the payload into the open stream; whole 255-byte chunks go to
    /// the card at once (one short APDU each), the rest waits. A refusal here is the card's
    /// verdict (more bytes than signed: `SizeMismatch`, logged) and ends the stream.
    pub fn payload_stream_feed(&mut self, mut data: &[u8]) -> Result<(), ClientError> {
        loop {
            let Some(s) = self.stream.as_mut() else {
                return Err(ClientError::Input(
                    "no payload stream is open in this card session".into(),
                ));
            };
            let room = PAYLOAD_CHUNK - s.held.len();
            let take = room.min(data.len());
            s.held.extend_from_slice(&data[..take]);
            data = &data[take..];
            if s.held.len() < PAYLOAD_CHUNK {
                return Ok(());
            }
            let p1 = if s.started { 0x02 } else { 0x01 };
            let chunk = std::mem::take(&mut s.held);
            self.stream_chunk(p1, chunk)?;
        }
    }

    /// Ends the open stream (P1 `03`, with the bytes held back): the card compares size and
    /// digest with the signed ones and logs its verdict. Returns the bytes streamed in all.
    pub fn payload_stream_finish(&mut self) -> Result<u64, ClientError> {
        let Some(s) = self.stream.as_mut() else {
            return Err(ClientError::Input(
                "no payload stream is open in this card session".into(),
            ));
        };
        let held = std::mem::take(&mut s.held);
        if !s.started {
            // A payload shorter than one chunk: start with it, then finish with no data.
            self.stream_chunk(0x01, held)?;
            self.stream_chunk(0x03, Vec::new())?;
        } else {
            self.stream_chunk(0x03, held)?;
        }
        let total = self.stream.take().map_or(0, |s| s.sent);
        Ok(total)
    }

    /// REPORT RESULT: the install's FUMO result code for the authorized update `update_id`;
    /// answers the card-signed receipt (COSE_Sign1).
    pub fn report_result(
        &mut self,
        update_id: &[u8],
        fumo_result: u16,
        device_time: Option<u64>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut data = fumo_result.to_be_bytes().to_vec();
        data.extend_from_slice(&device_time.unwrap_or(0).to_be_bytes());
        data.extend_from_slice(update_id);
        self.run(
            "REPORT RESULT",
            Command::new(CLA_PROPRIETARY, ins::REPORT_RESULT, 0, 0)
                .with_data(data)
                .with_ne(NE_ALL),
        )
    }

    /// GET RECEIPT: the card-signed receipt (COSE_Sign1) of an update whose result the card
    /// already recorded, signed again — the same bytes REPORT RESULT answered. For a device
    /// that lost the receipt in a crash: the card refuses a second report. Refusals:
    /// `Status { sw: 6A88 }` when no result of `update_id` is in the card's log,
    /// `Refused { WrongDevice }` when it was reported from another device.
    pub fn receipt(&mut self, update_id: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.run(
            "GET RECEIPT",
            Command::new(CLA_PROPRIETARY, ins::GET_RECEIPT, 0, 0)
                .with_data(update_id.to_vec())
                .with_ne(NE_ALL),
        )
    }

    /// READ LOG: a server-signed log-read request in, the card-signed encrypted export out.
    pub fn read_log(&mut self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.run(
            "READ LOG",
            Command::new(CLA_PROPRIETARY, ins::READ_LOG, 0, 0)
                .with_data(request.to_vec())
                .with_ne(NE_ALL),
        )
    }

    /// ACKNOWLEDGE LOG: a server-signed acknowledgement; frees the acknowledged log space.
    pub fn ack_log(&mut self, ack: &[u8]) -> Result<(), ClientError> {
        self.run(
            "ACKNOWLEDGE LOG",
            Command::new(CLA_PROPRIETARY, ins::ACK_LOG, 0, 0).with_data(ack.to_vec()),
        )?;
        Ok(())
    }

    /// ADMIN: applies an issuer-signed admin command.
    pub fn admin(&mut self, signed: &[u8]) -> Result<(), ClientError> {
        self.run(
            "ADMIN",
            Command::new(CLA_PROPRIETARY, ins::ADMIN, 0, 0).with_data(signed.to_vec()),
        )?;
        Ok(())
    }

    /// GENERATE ASYMMETRIC KEY PAIR (personalization): the card makes its key, answers the
    /// public half.
    pub fn generate_card_key(&mut self) -> Result<PublicKey, ClientError> {
        const C: &str = "GENERATE ASYMMETRIC KEY PAIR";
        let raw = self.run(
            C,
            Command::new(CLA_ISO, ins::GENERATE_KEY_PAIR, 0, 0).with_ne(256),
        )?;
        PublicKey::from_sec1(&raw).map_err(|e| bad(C, e))
    }

    /// STORE DATA (personalization): one block of DGIs; `last` locks the card.
    pub fn store_data(&mut self, block: u8, dgis: &[u8], last: bool) -> Result<(), ClientError> {
        let p1 = if last { 0x80 } else { 0x00 };
        self.run(
            "STORE DATA",
            Command::new(CLA_PROPRIETARY, ins::STORE_DATA, p1, block).with_data(dgis.to_vec()),
        )?;
        Ok(())
    }

    /// Personalizes a blank card: key generation on the card, the issuer's certificate for
    /// that key, identity, PIN/PUK, servers, originators, policy, then the lock. Returns the
    /// card's public key.
    pub fn personalize(
        &mut self,
        issuer: &SigningKey,
        p: &Personalization,
    ) -> Result<PublicKey, ClientError> {
        let selected = self.select()?;
        if selected.lifecycle == Lifecycle::Operational {
            return Err(ClientError::Input(
                "the card is already personalized (locked); change it with admin commands".into(),
            ));
        }
        let card_key = self.generate_card_key()?;
        let imsi =
            ShortText::<15>::new(&p.imsi).map_err(|e| ClientError::Input(format!("IMSI: {e}")))?;
        let cert = CardCertificate {
            issuer: IssuerId::new(&p.issuer_name)
                .map_err(|e| ClientError::Input(format!("issuer name: {e}")))?,
            iccid: p.iccid,
            card_key,
            imsi: Some(imsi),
        };
        let mut cert_buf = [0u8; 1024];
        let cert_len = cert
            .sign(issuer, &mut cert_buf)
            .map_err(|e| ClientError::Input(format!("card certificate: {e}")))?;

        let mut blocks: Vec<Vec<u8>> = Vec::new();
        let mut identity = Vec::new();
        dgi_bytes(dgi::ICCID, p.iccid.as_str().as_bytes(), &mut identity);
        dgi_bytes(dgi::IMSI, p.imsi.as_bytes(), &mut identity);
        let mut pin = pin_block(&p.pin.0)?.to_vec();
        pin.push(p.pin.1);
        dgi_bytes(dgi::PIN, &pin, &mut identity);
        let mut puk = pin_block(&p.puk.0)?.to_vec();
        puk.push(p.puk.1);
        dgi_bytes(dgi::PUK, &puk, &mut identity);
        let issuer_pk = PublicKey::from(issuer);
        dgi_bytes(dgi::ISSUER_KEY, &issuer_pk.to_sec1(), &mut identity);
        blocks.push(identity);
        let mut cert_block = Vec::new();
        dgi_bytes(
            dgi::CARD_CERTIFICATE,
            &cert_buf[..cert_len],
            &mut cert_block,
        );
        blocks.push(cert_block);
        for (id, key, rights) in &p.servers {
            let mut value = vec![rights.0];
            value.extend_from_slice(&key.to_sec1());
            value.extend_from_slice(id.as_bytes());
            let mut b = Vec::new();
            dgi_bytes(dgi::SERVER, &value, &mut b);
            blocks.push(b);
        }
        for (id, key) in &p.originators {
            let mut value = key.to_sec1().to_vec();
            value.extend_from_slice(id.as_bytes());
            let mut b = Vec::new();
            dgi_bytes(dgi::ORIGINATOR, &value, &mut b);
            blocks.push(b);
        }
        let mut policy = [0u8; Policy::MAX_ENCODED_LEN];
        let n = p
            .policy
            .encode(&mut policy)
            .map_err(|e| ClientError::Input(format!("policy: {e}")))?;
        let mut b = Vec::new();
        dgi_bytes(dgi::POLICY, &policy[..n], &mut b);
        blocks.push(b);

        let count = blocks.len();
        for (i, block) in blocks.iter().enumerate() {
            self.store_data(i as u8, block, i + 1 == count)?;
        }
        Ok(card_key)
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize, ClientError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Payload(e)),
        }
    }
    Ok(filled)
}
