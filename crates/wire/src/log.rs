//! Card log entries: fixed-size CBOR records, hash-chained (design §3, R1, R7, R12).
//!
//! A record is a CBOR array of 13 items, the last a zero-filled byte string that pads the
//! record to exactly [`LogEntry::RECORD_LEN`] bytes, so the card stores entries in fixed slots
//! and any CBOR decoder reads a record as is. `entry_hash` is SHA-256 over the whole record;
//! each entry carries the hash of the one before it (all zeros before the first).

use crate::cbor::{Reader, Writer};
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

/// Why the card refused an update (logged with [`Event::Denied`]). The card owns the meaning
/// of each code; the constants are the ones simfota uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DenyReason(pub u16);

impl DenyReason {
    /// Token signature did not verify under any listed server key.
    pub const UNKNOWN_SERVER: DenyReason = DenyReason(1);
    /// Server lacks the right.
    pub const NO_RIGHT: DenyReason = DenyReason(2);
    /// Nonce unknown or already used.
    pub const REPLAY: DenyReason = DenyReason(3);
    /// Token for another ICCID.
    pub const WRONG_CARD: DenyReason = DenyReason(4);
    /// Token for another IMEI.
    pub const WRONG_DEVICE: DenyReason = DenyReason(5);
    /// Token expired against the card's trusted time.
    pub const EXPIRED: DenyReason = DenyReason(6);
    /// Manifest not signed by a listed originator.
    pub const BAD_ORIGINATOR: DenyReason = DenyReason(7);
    /// Sequence number not above the installed one.
    pub const ROLLBACK: DenyReason = DenyReason(8);
    /// Token's manifest digest differs from the manifest's.
    pub const MANIFEST_MISMATCH: DenyReason = DenyReason(9);
    /// Policy refuses unauthorized servers.
    pub const POLICY: DenyReason = DenyReason(10);
    /// Vendor/class not in the policy allow list.
    pub const NOT_ALLOWED: DenyReason = DenyReason(11);
    /// Log full of unacknowledged entries.
    pub const LOG_FULL: DenyReason = DenyReason(12);
    /// User declined or PIN failed.
    pub const USER_DECLINED: DenyReason = DenyReason(13);
    /// Malformed token or manifest.
    pub const MALFORMED: DenyReason = DenyReason(14);
}

/// What a log entry records. Encoded as `[kind]` or `[kind, argument]`.
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
        };
        Ok(())
    }
    fn read(r: &mut Reader<'_, '_>) -> Result<Self> {
        let at = r.position();
        let n = r.array()?;
        let kind = r.u64()?;
        let want = if matches!(kind, 0 | 3 | 4) { 1 } else { 2 };
        if n != want {
            return Err(Error::BadCbor { at });
        }
        Ok(match kind {
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
            _ => return Err(Error::InvalidField("event kind")),
        })
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
        }
    }

    /// Encodes into a fixed record.
    pub fn encode(&self) -> Result<[u8; Self::RECORD_LEN]> {
        let mut rec = [0u8; Self::RECORD_LEN];
        let mut w = Writer::new(&mut rec);
        w.array(13)?
            .u64(u64::from(self.seq))?
            .bytes(&self.prev_hash.0)?;
        self.event.write(&mut w)?;
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
        r.array_n(13)?;
        let seq = r.u32("seq")?;
        let prev_hash = Digest(r.bytes_n("prev hash")?);
        let event = Event::read(&mut r)?;
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
