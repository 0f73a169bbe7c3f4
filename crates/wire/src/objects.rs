//! The card's small signed objects: policy, rights, receipts, log acknowledgements, log-read
//! requests, admin commands and the card certificate (design §3).
//!
//! Every simfota-defined payload is a CBOR map with small unsigned keys in increasing order;
//! key 0 holds the object's type code, so a signature over one kind of object can never be
//! presented as another kind. Unknown keys are refused (these formats are ours and versioned by
//! the type code).

use crate::cbor::{Key, Reader, Writer};
use crate::cose::{
    Es256Signer, PublicKey, Signed, SignedPayload, Verified, Verifier, check_type, sign_object,
};
use crate::error::{Error, Result};
use crate::ids::{Digest, Iccid, IssuerId, Nonce, OriginatorId, ServerId, UpdateId, Uuid};
use crate::limits::Limits;
use crate::log::FumoResult;

/// Type codes under key 0 of simfota payloads.
pub mod type_code {
    /// [`super::Receipt`].
    pub const RECEIPT: u64 = 1;
    /// [`super::LogAck`].
    pub const LOG_ACK: u64 = 2;
    /// [`super::LogReadRequest`].
    pub const LOG_READ_REQUEST: u64 = 3;
    /// [`super::AdminCommand`].
    pub const ADMIN_COMMAND: u64 = 4;
    /// Log export plaintext ([`crate::export`]).
    pub const LOG_EXPORT: u64 = 6;
}

fn unknown(object: &'static str, k: Key<'_>) -> Error {
    match k {
        Key::Int(key) => Error::UnknownField { object, key },
        _ => Error::UnknownField {
            object,
            key: i64::MIN,
        },
    }
}

/// Reads a simfota payload map: key 0 must come first with `type_code`; `f` handles the rest
/// and must return `true` for each key it consumed, unknown keys are errors.
fn read_object<'a, F>(
    r: &mut Reader<'a, '_>,
    name: &'static str,
    type_code: u64,
    mut f: F,
) -> Result<()>
where
    F: FnMut(&mut Reader<'a, '_>, i64) -> Result<bool>,
{
    let mut first = true;
    r.map(false, |r, k| {
        let was_first = first;
        first = false;
        match k {
            Key::Int(0) if was_first => {
                check_type(r, type_code)?;
                Ok(true)
            }
            Key::Int(0) => Err(Error::InvalidField("type code not first")),
            Key::Int(key) if !was_first => {
                if f(r, key)? {
                    Ok(true)
                } else {
                    Err(unknown(name, k))
                }
            }
            _ if was_first => Err(Error::MissingField("type code")),
            _ => Err(unknown(name, k)),
        }
    })?;
    if first {
        return Err(Error::MissingField("type code"));
    }
    Ok(())
}

/// Rights of an authorized server (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Rights(pub u8);

impl Rights {
    /// May authorize firmware updates (sign delivery tokens).
    pub const FIRMWARE_UPDATE: Rights = Rights(1);
    /// May read the log (signed log-read requests).
    pub const LOG_READ: Rights = Rights(2);
    /// May acknowledge the log (frees card log space).
    pub const LOG_ACK: Rights = Rights(4);
    /// Other DM activity (informational for the device).
    pub const DM_OTHER: Rights = Rights(8);
    /// All bits this version defines.
    pub const ALL: Rights = Rights(15);
    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
    fn checked(v: u64) -> Result<Self> {
        u8::try_from(v)
            .ok()
            .filter(|b| b & !Self::ALL.0 == 0)
            .map(Rights)
            .ok_or(Error::InvalidField("rights"))
    }
}

impl core::ops::BitOr for Rights {
    type Output = Rights;
    fn bitor(self, o: Rights) -> Rights {
        Rights(self.0 | o.0)
    }
}

/// What the card does when a delivery token comes from a server it does not list (R6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnauthorizedRule {
    /// Refuse the update (FUMO 405-family).
    Refuse,
    /// Warn the user and continue on confirmation.
    WarnConfirm,
    /// Continue only after confirmation and a correct PIN.
    ConfirmWithPin,
    /// Unlocked device: allow, log only.
    FreeDevice,
}

impl UnauthorizedRule {
    fn code(self) -> u64 {
        match self {
            Self::Refuse => 0,
            Self::WarnConfirm => 1,
            Self::ConfirmWithPin => 2,
            Self::FreeDevice => 3,
        }
    }
    fn from_code(c: u64) -> Result<Self> {
        Ok(match c {
            0 => Self::Refuse,
            1 => Self::WarnConfirm,
            2 => Self::ConfirmWithPin,
            3 => Self::FreeDevice,
            _ => return Err(Error::InvalidField("unauthorized-server rule")),
        })
    }
}

/// Who checks the payload digest (design §3, card budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegrityMode {
    /// The device hashes, the card compares with the signed digest.
    DeviceDigest,
    /// The card hashes the streamed payload itself, for payloads up to `max_size` bytes.
    CardDigest {
        /// Largest payload the card hashes.
        max_size: u64,
    },
}

/// The card's update policy (R6, R8, R9). Encoded as
/// `{1: rule, 2: integrity-mode, ? 3: card-digest-max-size, 4: [* [vendor-id, class-id]]}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Unauthorized-server rule.
    pub unauthorized: UnauthorizedRule,
    /// Integrity checking mode.
    pub integrity: IntegrityMode,
    allowed: [(Uuid, Uuid); Policy::MAX_ALLOWED],
    allowed_len: u8,
}

impl Policy {
    /// Capacity of the allowed (vendor-id, class-id) list.
    pub const MAX_ALLOWED: usize = 4;
    /// Largest encoding.
    pub const MAX_ENCODED_LEN: usize = 16 + Self::MAX_ALLOWED * 36;

    /// A policy allowing any vendor/class.
    pub fn new(unauthorized: UnauthorizedRule, integrity: IntegrityMode) -> Self {
        Policy {
            unauthorized,
            integrity,
            allowed: [([0; 16], [0; 16]); 4],
            allowed_len: 0,
        }
    }
    /// Adds an allowed (vendor-id, class-id) pair.
    pub fn allow(&mut self, vendor: Uuid, class: Uuid) -> Result<()> {
        let i = usize::from(self.allowed_len);
        if i >= Self::MAX_ALLOWED {
            return Err(Error::TooLarge {
                what: "policy allow list",
                max: Self::MAX_ALLOWED,
            });
        }
        self.allowed[i] = (vendor, class);
        self.allowed_len += 1;
        Ok(())
    }
    /// The allowed pairs (empty: any).
    pub fn allowed(&self) -> &[(Uuid, Uuid)] {
        &self.allowed[..usize::from(self.allowed_len)]
    }
    /// Whether a package for this vendor/class may be installed under this policy.
    pub fn permits(&self, vendor: &Uuid, class: &Uuid) -> bool {
        self.allowed_len == 0
            || self
                .allowed()
                .iter()
                .any(|(v, c)| v == vendor && c == class)
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<()> {
        let card = matches!(self.integrity, IntegrityMode::CardDigest { .. });
        w.map(3 + usize::from(card))?;
        w.u64(1)?.u64(self.unauthorized.code())?;
        match self.integrity {
            IntegrityMode::DeviceDigest => {
                w.u64(2)?.u64(0)?;
            }
            IntegrityMode::CardDigest { max_size } => {
                w.u64(2)?.u64(1)?.u64(3)?.u64(max_size)?;
            }
        }
        w.u64(4)?.array(self.allowed().len())?;
        for (v, c) in self.allowed() {
            w.array(2)?.bytes(v)?.bytes(c)?;
        }
        Ok(())
    }

    pub(crate) fn read(r: &mut Reader<'_, '_>) -> Result<Self> {
        let (mut rule, mut mode, mut max, mut list_seen) = (None, None, None, false);
        let mut p = Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest);
        r.map(false, |r, k| {
            match k {
                Key::Int(1) => rule = Some(UnauthorizedRule::from_code(r.u64()?)?),
                Key::Int(2) => mode = Some(r.u64()?),
                Key::Int(3) => max = Some(r.u64()?),
                Key::Int(4) => {
                    list_seen = true;
                    let n = r.array()?;
                    for _ in 0..n {
                        r.array_n(2)?;
                        let v = r.bytes_n::<16>("vendor-id")?;
                        let c = r.bytes_n::<16>("class-id")?;
                        p.allow(v, c)?;
                    }
                }
                _ => return Err(unknown("policy", k)),
            }
            Ok(true)
        })?;
        p.unauthorized = rule.ok_or(Error::MissingField("policy rule"))?;
        p.integrity = match (mode, max) {
            (Some(0), None) => IntegrityMode::DeviceDigest,
            (Some(1), Some(max_size)) => IntegrityMode::CardDigest { max_size },
            (None, _) => return Err(Error::MissingField("integrity mode")),
            _ => return Err(Error::InvalidField("integrity mode")),
        };
        if !list_seen {
            return Err(Error::MissingField("policy allow list"));
        }
        Ok(p)
    }

    /// Encodes into `out` (what the card stores and the device reads).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(out);
        self.write(&mut w)?;
        Ok(w.len())
    }

    /// Decodes a policy that spans all of `bytes`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(bytes, limits);
        let p = Self::read(&mut r)?;
        r.finish()?;
        Ok(p)
    }
}

macro_rules! signed_api {
    ($t:ty, $doc_sign:literal, $doc_verify:literal) => {
        impl $t {
            #[doc = $doc_sign]
            pub fn sign(&self, key: &(impl Es256Signer + ?Sized), out: &mut [u8]) -> Result<usize> {
                sign_object(self, key, None, out)
            }
            /// Decodes without verifying (pick the key from `dangerous_unverified()`).
            pub fn decode<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Signed<'a, Self>> {
                Signed::decode(bytes, limits)
            }
            #[doc = $doc_verify]
            pub fn verify(
                bytes: &[u8],
                key: &PublicKey,
                limits: &Limits,
            ) -> Result<Verified<Self>> {
                Self::decode(bytes, limits)?.verify(key)
            }
            /// Decodes and verifies with the crypto of `verifier`.
            pub fn verify_with(
                bytes: &[u8],
                verifier: &(impl Verifier + ?Sized),
                key: &PublicKey,
                limits: &Limits,
            ) -> Result<Verified<Self>> {
                Self::decode(bytes, limits)?.verify_with(verifier, key)
            }
        }
    };
}

/// The card's receipt for an install result (design §4 step 7):
/// `{0: 1, 1: iccid, 2: update-id, 3: fumo-result, 4: log-seq, 5: chain-head}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The card's subscription.
    pub iccid: Iccid,
    /// Which update.
    pub update_id: UpdateId,
    /// The FUMO result the device reported.
    pub result: FumoResult,
    /// Sequence number of the log entry that records it.
    pub log_seq: u32,
    /// Hash of that log entry (the chain head after it).
    pub chain_head: Digest,
}

signed_api!(
    Receipt,
    "Signs with the card key into `out`.",
    "Decodes and verifies with the card key."
);

impl SignedPayload for Receipt {
    const TYPE: Option<u64> = Some(type_code::RECEIPT);
    const NAME: &'static str = "receipt";
    fn write_payload(&self, w: &mut Writer<'_>) -> Result<()> {
        w.map(6)?.u64(0)?.u64(type_code::RECEIPT)?;
        w.u64(1)?.str(self.iccid.as_str())?;
        w.u64(2)?.bytes(self.update_id.as_bytes())?;
        w.u64(3)?.u64(u64::from(self.result.0))?;
        w.u64(4)?.u64(u64::from(self.log_seq))?;
        w.u64(5)?.bytes(&self.chain_head.0)?;
        Ok(())
    }
    fn read_payload(r: &mut Reader<'_, '_>) -> Result<Self> {
        let (mut iccid, mut uid, mut res, mut seq, mut head) = (None, None, None, None, None);
        read_object(r, Self::NAME, type_code::RECEIPT, |r, k| {
            match k {
                1 => iccid = Some(Iccid::parse(r.str()?)?),
                2 => uid = Some(UpdateId::new(r.bytes()?)?),
                3 => res = Some(FumoResult::read(r)?),
                4 => seq = Some(r.u32("log seq")?),
                5 => head = Some(Digest(r.bytes_n("chain head")?)),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Receipt {
            iccid: iccid.ok_or(Error::MissingField("iccid"))?,
            update_id: uid.ok_or(Error::MissingField("update id"))?,
            result: res.ok_or(Error::MissingField("result"))?,
            log_seq: seq.ok_or(Error::MissingField("log seq"))?,
            chain_head: head.ok_or(Error::MissingField("chain head"))?,
        })
    }
}

/// A server's acknowledgement: "I stored every entry up to `up_to_seq`" (design §3):
/// `{0: 2, 1: server-id, 2: card-nonce, 3: up-to-seq}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAck {
    /// The acknowledging server (needs the LOG_ACK right).
    pub server: ServerId,
    /// The card's one-time nonce.
    pub nonce: Nonce,
    /// Highest sequence number stored by the server.
    pub up_to_seq: u32,
}

signed_api!(
    LogAck,
    "Signs with the server key into `out`.",
    "Decodes and verifies with the server key."
);

impl SignedPayload for LogAck {
    const TYPE: Option<u64> = Some(type_code::LOG_ACK);
    const NAME: &'static str = "log ack";
    fn write_payload(&self, w: &mut Writer<'_>) -> Result<()> {
        w.map(4)?.u64(0)?.u64(type_code::LOG_ACK)?;
        w.u64(1)?.str(self.server.as_str())?;
        w.u64(2)?.bytes(&self.nonce.0)?;
        w.u64(3)?.u64(u64::from(self.up_to_seq))?;
        Ok(())
    }
    fn read_payload(r: &mut Reader<'_, '_>) -> Result<Self> {
        let (mut server, mut nonce, mut seq) = (None, None, None);
        read_object(r, Self::NAME, type_code::LOG_ACK, |r, k| {
            match k {
                1 => server = Some(ServerId::new(r.str()?)?),
                2 => nonce = Some(Nonce(r.bytes_n("nonce")?)),
                3 => seq = Some(r.u32("up-to seq")?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(LogAck {
            server: server.ok_or(Error::MissingField("server id"))?,
            nonce: nonce.ok_or(Error::MissingField("nonce"))?,
            up_to_seq: seq.ok_or(Error::MissingField("up-to seq"))?,
        })
    }
}

/// A server's request to read the log (R4):
/// `{0: 3, 1: server-id, 2: card-nonce, 3: first-seq, 4: max-count}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogReadRequest {
    /// The requesting server (needs the LOG_READ right; the export is encrypted to its key).
    pub server: ServerId,
    /// The card's one-time nonce.
    pub nonce: Nonce,
    /// First sequence number wanted.
    pub first_seq: u32,
    /// Most entries wanted in this page.
    pub max_count: u32,
}

signed_api!(
    LogReadRequest,
    "Signs with the server key into `out`.",
    "Decodes and verifies with the server key."
);

impl SignedPayload for LogReadRequest {
    const TYPE: Option<u64> = Some(type_code::LOG_READ_REQUEST);
    const NAME: &'static str = "log read request";
    fn write_payload(&self, w: &mut Writer<'_>) -> Result<()> {
        w.map(5)?.u64(0)?.u64(type_code::LOG_READ_REQUEST)?;
        w.u64(1)?.str(self.server.as_str())?;
        w.u64(2)?.bytes(&self.nonce.0)?;
        w.u64(3)?.u64(u64::from(self.first_seq))?;
        w.u64(4)?.u64(u64::from(self.max_count))?;
        Ok(())
    }
    fn read_payload(r: &mut Reader<'_, '_>) -> Result<Self> {
        let (mut server, mut nonce, mut first, mut max) = (None, None, None, None);
        read_object(r, Self::NAME, type_code::LOG_READ_REQUEST, |r, k| {
            match k {
                1 => server = Some(ServerId::new(r.str()?)?),
                2 => nonce = Some(Nonce(r.bytes_n("nonce")?)),
                3 => first = Some(r.u32("first seq")?),
                4 => max = Some(r.u32("max count")?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(LogReadRequest {
            server: server.ok_or(Error::MissingField("server id"))?,
            nonce: nonce.ok_or(Error::MissingField("nonce"))?,
            first_seq: first.ok_or(Error::MissingField("first seq"))?,
            max_count: max.ok_or(Error::MissingField("max count"))?,
        })
    }
}

/// One change an admin command makes. Encoded as an array whose first item is the kind:
/// `[1, server-id, COSE_Key, rights] / [2, server-id] / [3, originator-id, COSE_Key] /
/// [4, originator-id] / [5, policy]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminChange {
    /// Adds or replaces an authorized server.
    PutServer {
        /// Server id (matches token `iss`).
        id: ServerId,
        /// Its signature key.
        key: PublicKey,
        /// What it may do.
        rights: Rights,
    },
    /// Removes a server.
    RemoveServer {
        /// Server id.
        id: ServerId,
    },
    /// Adds or replaces a trusted software originator.
    PutOriginator {
        /// Originator id.
        id: OriginatorId,
        /// Its manifest signing key.
        key: PublicKey,
    },
    /// Removes an originator.
    RemoveOriginator {
        /// Originator id.
        id: OriginatorId,
    },
    /// Replaces the update policy.
    SetPolicy(Policy),
}

impl AdminChange {
    fn write(&self, w: &mut Writer<'_>) -> Result<()> {
        match self {
            Self::PutServer { id, key, rights } => {
                w.array(4)?.u64(1)?.str(id.as_str())?;
                key.write_cose_key(w)?;
                w.u64(u64::from(rights.0))?;
            }
            Self::RemoveServer { id } => {
                w.array(2)?.u64(2)?.str(id.as_str())?;
            }
            Self::PutOriginator { id, key } => {
                w.array(3)?.u64(3)?.str(id.as_str())?;
                key.write_cose_key(w)?;
            }
            Self::RemoveOriginator { id } => {
                w.array(2)?.u64(4)?.str(id.as_str())?;
            }
            Self::SetPolicy(p) => {
                w.array(2)?.u64(5)?;
                p.write(w)?;
            }
        }
        Ok(())
    }

    fn read(r: &mut Reader<'_, '_>) -> Result<Self> {
        let at = r.position();
        let n = r.array()?;
        let kind = r.u64()?;
        let want = match kind {
            1 => 4,
            3 => 3,
            2 | 4 | 5 => 2,
            _ => return Err(Error::InvalidField("admin change kind")),
        };
        if n != want {
            return Err(Error::BadCbor { at });
        }
        Ok(match kind {
            1 => Self::PutServer {
                id: ServerId::new(r.str()?)?,
                key: PublicKey::read_cose_key(r)?,
                rights: Rights::checked(r.u64()?)?,
            },
            2 => Self::RemoveServer {
                id: ServerId::new(r.str()?)?,
            },
            3 => Self::PutOriginator {
                id: OriginatorId::new(r.str()?)?,
                key: PublicKey::read_cose_key(r)?,
            },
            4 => Self::RemoveOriginator {
                id: OriginatorId::new(r.str()?)?,
            },
            _ => Self::SetPolicy(Policy::read(r)?),
        })
    }
}

/// An issuer-signed change to the card's lists or policy (design §3):
/// `{0: 4, 1: target-iccid, 2: counter, 3: change}`. The card applies it only if the ICCID is
/// its own and the counter is greater than the last one applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminCommand {
    /// The one card this command is for.
    pub target: Iccid,
    /// Strictly increasing per card.
    pub counter: u64,
    /// The change.
    pub change: AdminChange,
}

signed_api!(
    AdminCommand,
    "Signs with the issuer key into `out`.",
    "Decodes and verifies with the issuer key."
);

impl SignedPayload for AdminCommand {
    const TYPE: Option<u64> = Some(type_code::ADMIN_COMMAND);
    const NAME: &'static str = "admin command";
    fn write_payload(&self, w: &mut Writer<'_>) -> Result<()> {
        w.map(4)?.u64(0)?.u64(type_code::ADMIN_COMMAND)?;
        w.u64(1)?.str(self.target.as_str())?;
        w.u64(2)?.u64(self.counter)?;
        w.u64(3)?;
        self.change.write(w)
    }
    fn read_payload(r: &mut Reader<'_, '_>) -> Result<Self> {
        let (mut target, mut counter, mut change) = (None, None, None);
        read_object(r, Self::NAME, type_code::ADMIN_COMMAND, |r, k| {
            match k {
                1 => target = Some(Iccid::parse(r.str()?)?),
                2 => counter = Some(r.u64()?),
                3 => change = Some(AdminChange::read(r)?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(AdminCommand {
            target: target.ok_or(Error::MissingField("target iccid"))?,
            counter: counter.ok_or(Error::MissingField("counter"))?,
            change: change.ok_or(Error::MissingField("change"))?,
        })
    }
}

/// CWT claim keys of the card certificate: `iss` 1, `sub` 2 (RFC 8392 §3.1), `cnf` 8 holding
/// `{1: COSE_Key}` (RFC 8747 §3.2), and the private-use IMSI claim.
pub mod cert_claims {
    /// Issuer name.
    pub const ISS: i64 = 1;
    /// Subject: the card's ICCID.
    pub const SUB: i64 = 2;
    /// Confirmation: the card public key.
    pub const CNF: i64 = 8;
    /// Optional IMSI digits (tstr), private use.
    pub const IMSI: i64 = -65542;
}

/// The issuer's certificate for a card key: a CWT binding ICCID (+ IMSI) to the card's
/// public key, signed with the issuer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardCertificate {
    /// Issuer name.
    pub issuer: IssuerId,
    /// The card's ICCID.
    pub iccid: Iccid,
    /// The card's public key.
    pub card_key: PublicKey,
    /// Optional IMSI (5..=15 digits, 3GPP TS 23.003 §2.2).
    pub imsi: Option<crate::ids::ShortText<15>>,
}

signed_api!(
    CardCertificate,
    "Signs with the issuer key into `out`.",
    "Decodes and verifies with the issuer key."
);

impl SignedPayload for CardCertificate {
    const TYPE: Option<u64> = None;
    const NAME: &'static str = "card certificate";
    fn write_payload(&self, w: &mut Writer<'_>) -> Result<()> {
        w.map(3 + usize::from(self.imsi.is_some()))?;
        w.i64(cert_claims::ISS)?.str(self.issuer.as_str())?;
        w.i64(cert_claims::SUB)?.str(self.iccid.as_str())?;
        w.i64(cert_claims::CNF)?.map(1)?.u64(1)?;
        self.card_key.write_cose_key(w)?;
        if let Some(i) = &self.imsi {
            w.i64(cert_claims::IMSI)?.str(i.as_str())?;
        }
        Ok(())
    }
    fn read_payload(r: &mut Reader<'_, '_>) -> Result<Self> {
        let (mut iss, mut sub, mut key, mut imsi) = (None, None, None, None);
        r.map(false, |r, k| {
            match k {
                Key::Int(cert_claims::ISS) => iss = Some(IssuerId::new(r.str()?)?),
                Key::Int(cert_claims::SUB) => sub = Some(Iccid::parse(r.str()?)?),
                Key::Int(cert_claims::CNF) => {
                    let mut got = None;
                    r.map(false, |r, k| {
                        if k == Key::Int(1) {
                            got = Some(PublicKey::read_cose_key(r)?);
                            Ok(true)
                        } else {
                            Err(Error::InvalidField("cnf method"))
                        }
                    })?;
                    key = Some(got.ok_or(Error::MissingField("cnf COSE_Key"))?);
                }
                Key::Int(cert_claims::IMSI) => {
                    let s = r.str()?;
                    if !(5..=15).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(Error::InvalidField("imsi"));
                    }
                    imsi = Some(crate::ids::ShortText::new(s)?);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(CardCertificate {
            issuer: iss.ok_or(Error::MissingField("iss"))?,
            iccid: sub.ok_or(Error::MissingField("sub"))?,
            card_key: key.ok_or(Error::MissingField("cnf"))?,
            imsi,
        })
    }
}
