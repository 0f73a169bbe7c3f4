//! Card log entries: fixed-size CBOR records, hash-chained (design §3, R1, R7, R12).
//!
//! A record is a CBOR array of 14 items (13 in records written before the unverified marks,
//! item 13), the last a zero-filled byte string that pads the record to exactly
//! [`LogEntry::RECORD_LEN`] bytes, so the card stores entries in fixed slots
//! and any CBOR decoder reads a record as is. `entry_hash` is SHA-256 over the whole record;
//! each entry carries the hash of the one before it (all zeros before the first).

use crate::cbor::{Key, Reader, Writer};
use crate::error::{Error, Result};
use crate::hash::sha256;
use crate::ids::{Digest, Imei, OriginatorId, ServerId, ShortText, UpdateId};
use crate::limits::Limits;

/// A FUMO result code (OMA FUMO 1.0 §6.3.x: 200 success, 4xx client/package errors, 5xx device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FumoResult(pub u16);

impl FumoResult {
    /// 200 Successful.
    pub const SUCCESSFUL: FumoResult = FumoResult(200);
    /// 401 User cancelled.
    pub const USER_CANCELLED: FumoResult = FumoResult(401);
    /// 402 Corrupted firmware update package.
    pub const CORRUPTED_PACKAGE: FumoResult = FumoResult(402);
    /// 403 Firmware update package - device mismatch.
    pub const DEVICE_MISMATCH: FumoResult = FumoResult(403);
    /// 404 Failed firmware update package validation.
    pub const VALIDATION_FAILED: FumoResult = FumoResult(404);
    /// 405 Firmware update package not acceptable.
    pub const NOT_ACCEPTABLE: FumoResult = FumoResult(405);
    pub(crate) fn read(r: &mut Reader<'_, '_>) -> Result<Self> {
        u16::try_from(r.u64()?)
            .map(FumoResult)
            .map_err(|_| Error::InvalidField("fumo result"))
    }
}

/// A card refusal reason code: the code a "denied" log entry ([`Event::Denied`]) carries, and
/// SW2 of the card's `66RR` refusal status word. This is the ONE table of these codes: the
/// card applet's `Reason` enum (crate `simfota-card`) takes its discriminants from these
/// constants, and `docs/apdu.md` / `docs/formats.md` list the same values. A code not listed
/// here (a newer card) still decodes, as a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DenyReason(pub u16);

impl DenyReason {
    /// `01`: The token's issuer is not listed with the firmware-update right and the policy refuses
    /// unauthorized servers.
    pub const SERVER_NOT_AUTHORIZED: DenyReason = DenyReason(0x01);
    /// `02`: The delivery token's signature does not verify under the listed server's key.
    pub const TOKEN_SIGNATURE: DenyReason = DenyReason(0x02);
    /// `03`: No unused card nonce (a replayed token, or a card reset since GET CHALLENGE).
    pub const NONCE_UNAVAILABLE: DenyReason = DenyReason(0x03);
    /// `04`: The token carries another nonce than the one the card issued.
    pub const NONCE_MISMATCH: DenyReason = DenyReason(0x04);
    /// `05`: The token names another subscription (ICCID).
    pub const WRONG_CARD: DenyReason = DenyReason(0x05);
    /// `06`: The token (or a result) names another device (IMEI) than the bound one.
    pub const WRONG_DEVICE: DenyReason = DenyReason(0x06);
    /// `07`: The token's `exp` lies before the card's trusted time.
    pub const TOKEN_EXPIRED: DenyReason = DenyReason(0x07);
    /// `08`: The manifest's signer is not a trusted originator (unknown or removed).
    pub const ORIGINATOR_UNKNOWN: DenyReason = DenyReason(0x08);
    /// `09`: The manifest's signature or the envelope's integrity does not verify.
    pub const MANIFEST_SIGNATURE: DenyReason = DenyReason(0x09);
    /// `0A`: The manifest is not the one the token authorizes (digest differs).
    pub const MANIFEST_MISMATCH: DenyReason = DenyReason(0x0A);
    /// `0B`: The policy does not allow this vendor-id/class-id.
    pub const CLASS_NOT_ALLOWED: DenyReason = DenyReason(0x0B);
    /// `0C`: The manifest's sequence number is not above the installed one.
    pub const ROLLBACK: DenyReason = DenyReason(0x0C);
    /// `0D`: Every log slot holds an entry no server has acknowledged.
    pub const LOG_FULL: DenyReason = DenyReason(0x0D);
    /// `0E`: Unauthorized server, policy "warn and confirm": the user must confirm first.
    pub const CONSENT_REQUIRED: DenyReason = DenyReason(0x0E);
    /// `0F`: Unauthorized server, policy "confirm with PIN": the user must confirm with the PIN.
    pub const PIN_CONSENT_REQUIRED: DenyReason = DenyReason(0x0F);
    /// `10`: The user declined the update.
    pub const USER_DECLINED: DenyReason = DenyReason(0x10);
    /// `11`: The token or the envelope does not decode.
    pub const MALFORMED: DenyReason = DenyReason(0x11);
    /// `12`: Another authorized update has not ended yet.
    pub const UPDATE_PENDING: DenyReason = DenyReason(0x12);
    /// `13`: The token's `nbf` lies after the card's trusted time (RFC 8392 §3.1.5).
    pub const TOKEN_NOT_YET_VALID: DenyReason = DenyReason(0x13);
    /// `14`: The manifest verifies, but uses a SUIT command, condition or parameter the card
    /// does not process (draft-ietf-suit-manifest §8.4.6: such a manifest is not processed).
    pub const MANIFEST_UNSUPPORTED: DenyReason = DenyReason(0x14);
    /// `15`: Too many updates through unlisted servers wait for an authorized server to read
    /// the log; the rest of the log is kept for authorized servers (docs/card.md, the log).
    pub const UNVERIFIED_BUDGET: DenyReason = DenyReason(0x15);
    /// `20`: The payload digest differs from the signed one.
    pub const INTEGRITY_FAILED: DenyReason = DenyReason(0x20);
    /// `21`: The payload size differs from the signed one, or exceeds the card-digest cap.
    pub const SIZE_MISMATCH: DenyReason = DenyReason(0x21);
    /// `22`: The policy requires card-side hashing; a device digest is not enough.
    pub const CARD_DIGEST_REQUIRED: DenyReason = DenyReason(0x22);
    /// `23`: Success reported for an update whose integrity did not pass.
    pub const INTEGRITY_NOT_PASSED: DenyReason = DenyReason(0x23);
    /// `30`: A result for an update the card did not authorize, or that already ended.
    pub const UNKNOWN_UPDATE: DenyReason = DenyReason(0x30);
    /// `40`: The log-read request's server is not listed with the log-read right.
    pub const LOG_READ_NOT_AUTHORIZED: DenyReason = DenyReason(0x40);
    /// `41`: The acknowledgement's server is not listed with the log-ack right.
    pub const LOG_ACK_NOT_AUTHORIZED: DenyReason = DenyReason(0x41);
    /// `42`: The signature of a log-read request or acknowledgement is invalid.
    pub const REQUEST_SIGNATURE: DenyReason = DenyReason(0x42);
    /// `43`: The acknowledgement covers entries that do not exist.
    pub const ACK_BEYOND_LOG: DenyReason = DenyReason(0x43);
    /// `50`: The admin command's issuer signature is invalid.
    pub const ADMIN_SIGNATURE: DenyReason = DenyReason(0x50);
    /// `51`: The admin command targets another card.
    pub const ADMIN_WRONG_CARD: DenyReason = DenyReason(0x51);
    /// `52`: The admin command's counter does not grow (replay).
    pub const ADMIN_REPLAY: DenyReason = DenyReason(0x52);

    /// The code's name, as logs, the REST API and proof bundles print it (`nonce_mismatch`,
    /// `rollback`, ...): the constant's name in lower case. `None` for a code this build does
    /// not know (a newer card may log it).
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SERVER_NOT_AUTHORIZED => "server_not_authorized",
            Self::TOKEN_SIGNATURE => "token_signature",
            Self::NONCE_UNAVAILABLE => "nonce_unavailable",
            Self::NONCE_MISMATCH => "nonce_mismatch",
            Self::WRONG_CARD => "wrong_card",
            Self::WRONG_DEVICE => "wrong_device",
            Self::TOKEN_EXPIRED => "token_expired",
            Self::ORIGINATOR_UNKNOWN => "originator_unknown",
            Self::MANIFEST_SIGNATURE => "manifest_signature",
            Self::MANIFEST_MISMATCH => "manifest_mismatch",
            Self::CLASS_NOT_ALLOWED => "class_not_allowed",
            Self::ROLLBACK => "rollback",
            Self::LOG_FULL => "log_full",
            Self::CONSENT_REQUIRED => "consent_required",
            Self::PIN_CONSENT_REQUIRED => "pin_consent_required",
            Self::USER_DECLINED => "user_declined",
            Self::MALFORMED => "malformed",
            Self::UPDATE_PENDING => "update_pending",
            Self::TOKEN_NOT_YET_VALID => "token_not_yet_valid",
            Self::MANIFEST_UNSUPPORTED => "manifest_unsupported",
            Self::UNVERIFIED_BUDGET => "unverified_budget",
            Self::INTEGRITY_FAILED => "integrity_failed",
            Self::SIZE_MISMATCH => "size_mismatch",
            Self::CARD_DIGEST_REQUIRED => "card_digest_required",
            Self::INTEGRITY_NOT_PASSED => "integrity_not_passed",
            Self::UNKNOWN_UPDATE => "unknown_update",
            Self::LOG_READ_NOT_AUTHORIZED => "log_read_not_authorized",
            Self::LOG_ACK_NOT_AUTHORIZED => "log_ack_not_authorized",
            Self::REQUEST_SIGNATURE => "request_signature",
            Self::ACK_BEYOND_LOG => "ack_beyond_log",
            Self::ADMIN_SIGNATURE => "admin_signature",
            Self::ADMIN_WRONG_CARD => "admin_wrong_card",
            Self::ADMIN_REPLAY => "admin_replay",
            _ => return None,
        })
    }

    /// Every code of the table, in code order.
    pub const ALL: [DenyReason; 33] = [
        Self::SERVER_NOT_AUTHORIZED,
        Self::TOKEN_SIGNATURE,
        Self::NONCE_UNAVAILABLE,
        Self::NONCE_MISMATCH,
        Self::WRONG_CARD,
        Self::WRONG_DEVICE,
        Self::TOKEN_EXPIRED,
        Self::ORIGINATOR_UNKNOWN,
        Self::MANIFEST_SIGNATURE,
        Self::MANIFEST_MISMATCH,
        Self::CLASS_NOT_ALLOWED,
        Self::ROLLBACK,
        Self::LOG_FULL,
        Self::CONSENT_REQUIRED,
        Self::PIN_CONSENT_REQUIRED,
        Self::USER_DECLINED,
        Self::MALFORMED,
        Self::UPDATE_PENDING,
        Self::TOKEN_NOT_YET_VALID,
        Self::MANIFEST_UNSUPPORTED,
        Self::UNVERIFIED_BUDGET,
        Self::INTEGRITY_FAILED,
        Self::SIZE_MISMATCH,
        Self::CARD_DIGEST_REQUIRED,
        Self::INTEGRITY_NOT_PASSED,
        Self::UNKNOWN_UPDATE,
        Self::LOG_READ_NOT_AUTHORIZED,
        Self::LOG_ACK_NOT_AUTHORIZED,
        Self::REQUEST_SIGNATURE,
        Self::ACK_BEYOND_LOG,
        Self::ADMIN_SIGNATURE,
        Self::ADMIN_WRONG_CARD,
        Self::ADMIN_REPLAY,
    ];

    /// Whether the code is one of the table's (a newer card may log codes this build does
    /// not know).
    pub fn is_known(self) -> bool {
        Self::ALL.contains(&self)
    }
}

/// What a log entry records. Encoded as `[kind]` or `[kind, argument]`; an authorization
/// under the free-device policy is `[0, true]` (see [`LogEntry::free_device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// `[0]` update authorized.
    Authorized,
    /// `[1, reason]` update refused.
    Denied(DenyReason),
    /// `[2, pin-verified]` user consented to an unauthorized server (R7).
    Consent {
        /// Whether a PIN was verified with the consent.
        pin_verified: bool,
    },
    /// `[3]` payload integrity verified.
    IntegrityOk,
    /// `[4]` payload integrity check failed.
    IntegrityFailed,
    /// `[5, fumo-result]` install finished with this result.
    Installed(FumoResult),
    /// `[6, up-to-seq]` a server acknowledged entries up to this sequence number.
    Acknowledged(u32),
    /// `[7, counter]` an admin command was applied.
    AdminApplied(u64),
    /// `[8, first-trusted-time, first-device-time, {reason => count}]` refusals of requests
    /// nothing authenticated (no server signature with a fresh card nonce), counted instead of
    /// logged one by one: a device cannot fill the log with them (docs/card.md, the log).
    Refusals(RefusalTally),
}

/// Refusals the card counted in one log record ([`Event::Refusals`]): per reason code, how
/// many, and when the first one happened; the record's own times are those of the last one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefusalTally {
    /// Card trusted time at the first refusal counted.
    pub first_trusted_time: Option<u64>,
    /// Device-reported time at the first refusal counted (not trusted).
    pub first_device_time: Option<u64>,
    counts: [(DenyReason, u32); RefusalTally::MAX_REASONS],
    len: u8,
}

impl core::fmt::Debug for RefusalTally {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RefusalTally")
            .field("first_trusted_time", &self.first_trusted_time)
            .field("first_device_time", &self.first_device_time)
            .field("counts", &self.counts())
            .finish()
    }
}

impl RefusalTally {
    /// Distinct reason codes one record counts (every code of the table fits).
    pub const MAX_REASONS: usize = 16;

    /// An empty tally that started at these times.
    pub const fn new(first_trusted_time: Option<u64>, first_device_time: Option<u64>) -> Self {
        RefusalTally {
            first_trusted_time,
            first_device_time,
            counts: [(DenyReason(0), 0); Self::MAX_REASONS],
            len: 0,
        }
    }

    /// Counts one more refusal for `reason` (saturating). `false` when the tally already
    /// holds [`Self::MAX_REASONS`] other codes.
    pub fn add(&mut self, reason: DenyReason) -> bool {
        let len = usize::from(self.len);
        if let Some((_, n)) = self.counts[..len].iter_mut().find(|(r, _)| *r == reason) {
            *n = n.saturating_add(1);
            return true;
        }
        if len == Self::MAX_REASONS {
            return false;
        }
        self.counts[len] = (reason, 1);
        self.len += 1;
        true
    }

    /// The counts, in the order the reasons first occurred.
    pub fn counts(&self) -> &[(DenyReason, u32)] {
        &self.counts[..usize::from(self.len)]
    }

    /// All refusals counted.
    pub fn total(&self) -> u64 {
        self.counts().iter().map(|(_, n)| u64::from(*n)).sum()
    }
}

/// Which of a log entry's fields the card took from the request without verifying them
/// (a bit set per field). The update id and server of a token whose signature did not verify
/// (an unlisted server the user allowed) are claims, not facts; the IMEI is verified when a
/// server's token bound it, otherwise it is the device's word. The originator, release,
/// version and manifest digest are only ever written once a trusted originator's signature
/// verified; the device time is never trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Unverified(pub u8);

impl Unverified {
    /// Every field verified.
    pub const NONE: Unverified = Unverified(0);
    /// The server id is a claim.
    pub const SERVER: Unverified = Unverified(1);
    /// The update id is a claim.
    pub const UPDATE_ID: Unverified = Unverified(2);
    /// The IMEI is the device's word (no server token bound it).
    pub const IMEI: Unverified = Unverified(4);
    const KNOWN: u8 = 7;

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Unverified) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    #[must_use]
    pub const fn with(self, other: Unverified) -> Unverified {
        Unverified(self.0 | other.0)
    }
}

impl Event {
    fn write(&self, w: &mut Writer<'_>) -> Result<()> {
        match *self {
            Event::Authorized => w.array(1)?.u64(0)?,
            Event::Denied(r) => w.array(2)?.u64(1)?.u64(u64::from(r.0))?,
            Event::Consent { pin_verified } => w.array(2)?.u64(2)?.bool(pin_verified)?,
            Event::IntegrityOk => w.array(1)?.u64(3)?,
            Event::IntegrityFailed => w.array(1)?.u64(4)?,
            Event::Installed(f) => w.array(2)?.u64(5)?.u64(u64::from(f.0))?,
            Event::Acknowledged(s) => w.array(2)?.u64(6)?.u64(u64::from(s))?,
            Event::AdminApplied(c) => w.array(2)?.u64(7)?.u64(c)?,
            Event::Refusals(t) => {
                w.array(4)?.u64(8)?;
                for v in [t.first_trusted_time, t.first_device_time] {
                    match v {
                        Some(v) => w.u64(v)?,
                        None => w.null()?,
                    };
                }
                w.map(usize::from(t.len))?;
                for (r, n) in t.counts() {
                    w.u64(u64::from(r.0))?.u64(u64::from(*n))?;
                }
                w
            }
        };
        Ok(())
    }
    /// Reads an event and the free-device flag (only `[0, true]` sets it).
    fn read(r: &mut Reader<'_, '_>) -> Result<(Self, bool)> {
        let at = r.position();
        let n = r.array()?;
        let kind = r.u64()?;
        if kind == 0 && n == 2 {
            // `[0, true]`: authorized under the free-device policy. `[0, false]` is not the
            // one encoding of a plain authorization (`[0]`), so it is refused.
            if !r.bool()? {
                return Err(Error::InvalidField("free-device flag"));
            }
            return Ok((Event::Authorized, true));
        }
        let want = match kind {
            0 | 3 | 4 => 1,
            8 => 4,
            _ => 2,
        };
        if n != want {
            return Err(Error::BadCbor { at });
        }
        let event = match kind {
            0 => Event::Authorized,
            1 => Event::Denied(DenyReason(
                u16::try_from(r.u64()?).map_err(|_| Error::InvalidField("deny reason"))?,
            )),
            2 => Event::Consent {
                pin_verified: r.bool()?,
            },
            3 => Event::IntegrityOk,
            4 => Event::IntegrityFailed,
            5 => Event::Installed(FumoResult::read(r)?),
            6 => Event::Acknowledged(r.u32("ack seq")?),
            7 => Event::AdminApplied(r.u64()?),
            8 => {
                let mut times = [None; 2];
                for t in &mut times {
                    *t = if r.is_null()? {
                        r.null()?;
                        None
                    } else {
                        Some(r.u64()?)
                    };
                }
                let mut tally = RefusalTally::new(times[0], times[1]);
                let mut bad = false;
                r.map(false, |r, k| {
                    let code = match k {
                        Key::Int(c) => u16::try_from(c).ok(),
                        _ => None,
                    };
                    let count = r.u32("refusal count")?;
                    match code {
                        Some(code)
                            if count > 0 && usize::from(tally.len) < RefusalTally::MAX_REASONS =>
                        {
                            let i = usize::from(tally.len);
                            tally.counts[i] = (DenyReason(code), count);
                            tally.len += 1;
                        }
                        _ => bad = true,
                    }
                    Ok(true)
                })?;
                if bad || tally.len == 0 {
                    return Err(Error::InvalidField("refusal counts"));
                }
                Event::Refusals(tally)
            }
            _ => return Err(Error::InvalidField("event kind")),
        };
        Ok((event, false))
    }
}

/// One card log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    /// Sequence number (0, 1, 2, ... per card).
    pub seq: u32,
    /// `entry_hash` of the previous entry (zeros for the first).
    pub prev_hash: Digest,
    /// What happened.
    pub event: Event,
    /// Update concerned, if any.
    pub update_id: Option<UpdateId>,
    /// Server concerned, if any.
    pub server: Option<ServerId>,
    /// Software originator, if any.
    pub originator: Option<OriginatorId>,
    /// Release name (SUIT text, truncated to 32 bytes).
    pub release: Option<ShortText<32>>,
    /// Release version (SUIT text, truncated to 16 bytes).
    pub version: Option<ShortText<16>>,
    /// Digest of the SUIT manifest concerned.
    pub manifest_digest: Option<Digest>,
    /// Device IMEI at the time.
    pub imei: Option<Imei>,
    /// Card's trusted time: newest verified token `iat` (seconds), if any yet.
    pub trusted_time: Option<u64>,
    /// Time the device reported (seconds), not trusted.
    pub device_time: Option<u64>,
    /// With [`Event::Authorized`] only: the token's server was not authorized (not listed,
    /// or without the firmware-update right) and the card let the update through because
    /// its policy is "free device" (log only, design R6). Encoded in the event as `[0, true]`;
    /// [`LogEntry::encode`] refuses the flag on any other event.
    pub free_device: bool,
    /// Which fields the card did not verify. `None` for records written before cards kept
    /// this mark (13-item records): nothing is known about them.
    pub unverified: Option<Unverified>,
}

impl LogEntry {
    /// Size of every encoded record. The largest entry (all fields at their bounds) encodes to
    /// 255 bytes; the rest is the padding byte string (at least 26 bytes so its head is the
    /// two-byte form and the record length is always reachable).
    pub const RECORD_LEN: usize = 288;

    /// A new entry with only the required fields set.
    pub fn new(seq: u32, prev_hash: Digest, event: Event) -> Self {
        LogEntry {
            seq,
            prev_hash,
            event,
            update_id: None,
            server: None,
            originator: None,
            release: None,
            version: None,
            manifest_digest: None,
            imei: None,
            trusted_time: None,
            device_time: None,
            free_device: false,
            unverified: Some(Unverified::NONE),
        }
    }

    /// Encodes into a fixed record.
    pub fn encode(&self) -> Result<[u8; Self::RECORD_LEN]> {
        let mut rec = [0u8; Self::RECORD_LEN];
        let mut w = Writer::new(&mut rec);
        w.array(if self.unverified.is_some() { 14 } else { 13 })?
            .u64(u64::from(self.seq))?
            .bytes(&self.prev_hash.0)?;
        match (self.free_device, self.event) {
            (false, event) => event.write(&mut w)?,
            (true, Event::Authorized) => {
                w.array(2)?.u64(0)?.bool(true)?;
            }
            (true, _) => return Err(Error::InvalidField("free-device flag on this event")),
        }
        match &self.update_id {
            Some(u) => w.bytes(u.as_bytes())?,
            None => w.null()?,
        };
        for s in [
            self.server.as_ref().map(|s| s.as_str()),
            self.originator.as_ref().map(|s| s.as_str()),
            self.release.as_ref().map(|s| s.as_str()),
            self.version.as_ref().map(|s| s.as_str()),
        ] {
            match s {
                Some(s) => w.str(s)?,
                None => w.null()?,
            };
        }
        match &self.manifest_digest {
            Some(d) => w.bytes(&d.0)?,
            None => w.null()?,
        };
        match &self.imei {
            Some(i) => w.str(i.as_str())?,
            None => w.null()?,
        };
        for t in [self.trusted_time, self.device_time] {
            match t {
                Some(t) => w.u64(t)?,
                None => w.null()?,
            };
        }
        if let Some(u) = self.unverified {
            if u.0 & !Unverified::KNOWN != 0 {
                return Err(Error::InvalidField("unverified marks"));
            }
            w.u64(u64::from(u.0))?;
        }
        let used = w.len();
        let pad = Self::RECORD_LEN - used;
        // Padding bstr: head 0x58 <len> then zeros; pad >= 26 keeps <len> >= 24 (preferred form).
        if pad < 26 {
            return Err(Error::BufferTooSmall);
        }
        w.raw(&[0x58, (pad - 2) as u8])?;
        Ok(rec)
    }

    /// Decodes a record (exactly `RECORD_LEN` bytes, padding all zeros).
    pub fn decode(rec: &[u8]) -> Result<Self> {
        if rec.len() != Self::RECORD_LEN {
            return Err(Error::InvalidField("log record length"));
        }
        let lim = Limits::CARD;
        let mut r = Reader::new(rec, &lim);
        let items = r.array()?;
        if items != 13 && items != 14 {
            return Err(Error::InvalidField("log record item count"));
        }
        let seq = r.u32("seq")?;
        let prev_hash = Digest(r.bytes_n("prev hash")?);
        let (event, free_device) = Event::read(&mut r)?;
        fn opt<'a, T>(
            r: &mut Reader<'a, '_>,
            f: impl FnOnce(&mut Reader<'a, '_>) -> Result<T>,
        ) -> Result<Option<T>> {
            if r.is_null()? {
                r.null()?;
                Ok(None)
            } else {
                f(r).map(Some)
            }
        }
        let update_id = opt(&mut r, |r| UpdateId::new(r.bytes()?))?;
        let server = opt(&mut r, |r| ServerId::new(r.str()?))?;
        let originator = opt(&mut r, |r| OriginatorId::new(r.str()?))?;
        let release = opt(&mut r, |r| ShortText::new(r.str()?))?;
        let version = opt(&mut r, |r| ShortText::new(r.str()?))?;
        let manifest_digest = opt(&mut r, |r| r.bytes_n("manifest digest").map(Digest))?;
        let imei = opt(&mut r, |r| Imei::parse(r.str()?))?;
        let trusted_time = opt(&mut r, |r| r.u64())?;
        let device_time = opt(&mut r, |r| r.u64())?;
        let unverified = if items == 14 {
            let v = u8::try_from(r.u64()?)
                .ok()
                .filter(|v| v & !Unverified::KNOWN == 0)
                .ok_or(Error::InvalidField("unverified marks"))?;
            Some(Unverified(v))
        } else {
            None
        };
        let pad = r.bytes()?;
        if pad.iter().any(|&b| b != 0) || pad.len() < 24 {
            return Err(Error::InvalidField("log record padding"));
        }
        r.finish()?;
        Ok(LogEntry {
            seq,
            prev_hash,
            event,
            update_id,
            server,
            originator,
            release,
            version,
            manifest_digest,
            imei,
            trusted_time,
            device_time,
            free_device,
            unverified,
        })
    }

    /// SHA-256 of the encoded record: the chain link the next entry carries.
    pub fn entry_hash(&self) -> Result<Digest> {
        Ok(sha256(&self.encode()?))
    }

    /// SHA-256 of an already encoded record.
    pub fn record_hash(rec: &[u8; Self::RECORD_LEN]) -> Digest {
        sha256(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_deny_reason_has_its_own_name() {
        let mut names = [""; DenyReason::ALL.len()];
        for (slot, r) in names.iter_mut().zip(DenyReason::ALL) {
            *slot = r.name().unwrap_or_else(|| panic!("{r:?} has no name"));
            assert!(
                slot.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{slot}"
            );
        }
        names.sort_unstable();
        assert!(names.windows(2).all(|w| w[0] != w[1]), "{names:?}");
        assert_eq!(DenyReason(0x16).name(), None);
    }

    #[test]
    fn deny_reason_table_is_ordered_unique_and_one_byte() {
        // The codes travel as SW2 of the card's `66RR` too: one byte each, no duplicates.
        for w in DenyReason::ALL.windows(2) {
            assert!(w[0].0 < w[1].0, "{:?} before {:?}", w[0], w[1]);
        }
        assert!(DenyReason::ALL.iter().all(|r| r.0 < 0x100 && r.0 != 0));
        assert!(DenyReason::NONCE_UNAVAILABLE.is_known());
        assert!(!DenyReason(0x16).is_known());
    }

    #[test]
    fn denied_entries_carry_the_code() {
        for r in DenyReason::ALL.into_iter().chain([DenyReason(0x99)]) {
            let e = LogEntry::new(7, Digest::default(), Event::Denied(r));
            let back = LogEntry::decode(&e.encode().unwrap()).unwrap();
            assert_eq!(back.event, Event::Denied(r));
        }
    }

    #[test]
    fn free_device_authorization_is_its_own_event_form() {
        let plain = LogEntry::new(1, Digest::default(), Event::Authorized);
        let mut free = plain;
        free.free_device = true;
        let (a, b) = (plain.encode().unwrap(), free.encode().unwrap());
        // Same record length; the event is `[0]` (81 00) vs `[0, true]` (82 00 F5), right
        // after the seq (01) and the prev-hash (58 20 + 32 bytes) at offset 1 + 1 + 34.
        assert_eq!(a.len(), b.len());
        assert_eq!(&a[36..38], &[0x81, 0x00]);
        assert_eq!(&b[36..39], &[0x82, 0x00, 0xF5]);
        assert_eq!(LogEntry::decode(&b).unwrap(), free);
        assert!(!LogEntry::decode(&a).unwrap().free_device);
        // `[0, false]` is not an encoding of anything.
        let mut c = b;
        c[38] = 0xF4;
        assert!(LogEntry::decode(&c).is_err());
        // The flag belongs to authorizations only.
        let mut bad = free;
        bad.event = Event::IntegrityOk;
        assert!(bad.encode().is_err());
    }
}
