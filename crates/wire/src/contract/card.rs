//! The card's unsigned answers (GET DATA, docs/apdu.md) as the device relays them to the
//! server (docs/dm-tree.md "Card answers"): CBOR maps with small integer keys and lists of
//! arrays (RFC 8949), in the strict profile of `cbor.rs`.

use core::fmt;

use minicbor::data::Type;

use crate::cbor::{Key, Reader, Writer};
use crate::cose::PublicKey;
use crate::error::{Error, Result};
use crate::ids::{Digest, Iccid, OriginatorId, ServerId, UpdateId};
use crate::limits::Limits;
use crate::objects::Rights;

/// Most entries of a server or originator list (the applet holds 8 of each).
pub const MAX_LIST_ENTRIES: usize = 64;

/// Length of a SEC1 uncompressed P-256 point, the form the card stores keys in.
const SEC1_LEN: usize = 65;

// ---------------------------------------------------------------------------------------
// Typed readers: a member of the wrong CBOR type is `InvalidField(member)`, truncated input
// `BadCbor`.

fn is_uint(t: Type) -> bool {
    matches!(t, Type::U8 | Type::U16 | Type::U32 | Type::U64)
}

fn uint(r: &mut Reader<'_, '_>, member: &'static str) -> Result<u64> {
    if !is_uint(r.datatype()?) {
        return Err(Error::InvalidField(member));
    }
    r.u64()
}

fn uint32(r: &mut Reader<'_, '_>, member: &'static str) -> Result<u32> {
    u32::try_from(uint(r, member)?).map_err(|_| Error::InvalidField(member))
}

fn text<'a>(r: &mut Reader<'a, '_>, member: &'static str) -> Result<&'a str> {
    match r.datatype()? {
        Type::String | Type::StringIndef => r.str(),
        _ => Err(Error::InvalidField(member)),
    }
}

fn bstr<'a>(r: &mut Reader<'a, '_>, member: &'static str) -> Result<&'a [u8]> {
    match r.datatype()? {
        Type::Bytes | Type::BytesIndef => r.bytes(),
        _ => Err(Error::InvalidField(member)),
    }
}

fn boolean(r: &mut Reader<'_, '_>, member: &'static str) -> Result<bool> {
    if r.datatype()? != Type::Bool {
        return Err(Error::InvalidField(member));
    }
    r.bool()
}

fn array(r: &mut Reader<'_, '_>, member: &'static str) -> Result<usize> {
    match r.datatype()? {
        Type::Array | Type::ArrayIndef => r.array(),
        _ => Err(Error::InvalidField(member)),
    }
}

fn array_n(r: &mut Reader<'_, '_>, n: usize, member: &'static str) -> Result<()> {
    if array(r, member)? == n {
        Ok(())
    } else {
        Err(Error::InvalidField(member))
    }
}

fn sec1(r: &mut Reader<'_, '_>, member: &'static str) -> Result<PublicKey> {
    let b = bstr(r, member)?;
    if b.len() != SEC1_LEN {
        return Err(Error::InvalidField(member));
    }
    PublicKey::from_sec1(b)
}

/// Walks a map with small unsigned keys; unknown keys are skipped (a newer applet may add
/// members), text or negative keys are refused.
fn int_map<'a>(
    r: &mut Reader<'a, '_>,
    member: &'static str,
    mut f: impl FnMut(&mut Reader<'a, '_>, u64) -> Result<bool>,
) -> Result<()> {
    if !matches!(r.datatype()?, Type::Map | Type::MapIndef) {
        return Err(Error::InvalidField(member));
    }
    r.map(false, |r, k| match k {
        Key::Int(k) if k >= 0 => f(r, k as u64),
        _ => Err(Error::BadMapKey { at: r.position() }),
    })
}

fn required<T>(v: Option<T>, member: &'static str) -> Result<T> {
    v.ok_or(Error::MissingField(member))
}

// ---------------------------------------------------------------------------------------

/// A bounded string of ASCII decimal digits (ICCID, IMSI), possibly empty (a card not yet
/// personalized has none).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digits<const N: usize> {
    buf: [u8; N],
    len: u8,
}

impl<const N: usize> Digits<N> {
    /// No digits.
    pub const EMPTY: Self = Digits {
        buf: [0; N],
        len: 0,
    };

    /// Validates: at most `N` ASCII digits.
    pub fn new(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        if b.len() > N || b.len() > usize::from(u8::MAX) || !b.iter().all(u8::is_ascii_digit) {
            return Err(Error::BadId("not a digit string of the allowed length"));
        }
        let mut buf = [0u8; N];
        buf[..b.len()].copy_from_slice(b);
        Ok(Digits {
            buf,
            len: b.len() as u8,
        })
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are stored.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// Whether there are no digits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> fmt::Debug for Digits<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl<const N: usize> fmt::Display for Digits<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> PartialEq<str> for Digits<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for Digits<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The applet's life cycle (docs/apdu.md, SELECT and card info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    /// Installed, nothing stored.
    Blank,
    /// Personalization begun, not locked.
    Personalizing,
    /// Locked and in service.
    Operational,
}

impl Lifecycle {
    /// The code on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::Blank => 0,
            Self::Personalizing => 1,
            Self::Operational => 2,
        }
    }

    /// The life cycle a code stands for.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Blank),
            1 => Some(Self::Personalizing),
            2 => Some(Self::Operational),
            _ => None,
        }
    }
}

/// The keys of the card-info map (docs/dm-tree.md "Card answers"; GET DATA `0101`).
pub mod card_info_key {
    /// ICCID, tstr (empty before personalization).
    pub const ICCID: u64 = 1;
    /// IMSI, tstr (empty before personalization).
    pub const IMSI: u64 = 2;
    /// Card public key, bstr (SEC1 uncompressed), or null before key generation.
    pub const CARD_KEY: u64 = 3;
    /// Issuer-signed card certificate, bstr (COSE_Sign1; empty before personalization).
    pub const CERTIFICATE: u64 = 4;
    /// `[major, minor]` of the applet.
    pub const VERSION: u64 = 5;
    /// Installed firmware sequence number.
    pub const INSTALLED_SEQUENCE: u64 = 6;
    /// Sequence number of the next log entry.
    pub const LOG_NEXT: u64 = 7;
    /// Every log entry below this one is acknowledged.
    pub const LOG_ACKED: u64 = 8;
    /// Free log slots.
    pub const LOG_FREE: u64 = 9;
    /// Whether an authorized update is in progress, bool.
    pub const UPDATE_PENDING: u64 = 10;
    /// Life cycle: 0 blank, 1 personalizing, 2 operational.
    pub const LIFECYCLE: u64 = 11;
    /// Trusted time (newest verified token `iat`).
    pub const TRUSTED_TIME: u64 = 12;
    /// Counter of the last applied admin command.
    pub const ADMIN_COUNTER: u64 = 13;
    /// Capacities `{1 log entries, 2 servers, 3 originators, 4 I/O buffer, 5 persistent
    /// bytes, 6 record length}`.
    pub const CAPACITIES: u64 = 14;
    /// Number of members of the map.
    pub const COUNT: usize = 14;
}

/// Card information: GET DATA `0101`, and the DM node `./SIMFOTA/Card/Info` (the same map).
///
/// `C` holds the certificate: `&[u8]` when decoded or encoded in place, `Vec<u8>` when owned
/// (`into_owned`, `std`). Nothing here is signed but the certificate: the server binds a card
/// only through [`CardIdentity::certificate`] verified under an issuer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardInfo<C> {
    /// ICCID digits (empty before personalization; otherwise a valid ICCID).
    pub iccid: Digits<20>,
    /// IMSI digits (empty before personalization).
    pub imsi: Digits<15>,
    /// Card public key, SEC1 uncompressed (absent before key generation); a valid P-256 point.
    pub card_key: Option<[u8; SEC1_LEN]>,
    /// Issuer-signed card certificate (COSE_Sign1), empty before personalization.
    pub certificate: C,
    /// Applet version (major, minor).
    pub version: (u8, u8),
    /// Installed firmware sequence number (anti-rollback).
    pub installed_sequence: u64,
    /// Sequence number of the next log entry.
    pub log_next: u32,
    /// Every entry below this one is acknowledged.
    pub log_acked: u32,
    /// Free log slots.
    pub log_free: u32,
    /// Whether an authorized update is in progress.
    pub update_pending: bool,
    /// Life cycle.
    pub lifecycle: Lifecycle,
    /// Trusted time: newest verified token `iat`.
    pub trusted_time: u64,
    /// Counter of the last applied admin command.
    pub admin_counter: u64,
    /// Log capacity in entries.
    pub log_capacity: u32,
    /// Server table capacity.
    pub max_servers: u32,
    /// Originator table capacity.
    pub max_originators: u32,
    /// I/O buffer size: largest command data after chaining and largest answer.
    pub io_capacity: u32,
    /// Persistent bytes the applet allocates.
    pub persistent_size: u32,
    /// Log record size in bytes.
    pub record_len: u32,
}

impl<C: AsRef<[u8]>> CardInfo<C> {
    /// The ICCID, once personalized.
    pub fn iccid(&self) -> Option<Iccid> {
        Iccid::parse(self.iccid.as_str()).ok()
    }

    /// The card key, once generated.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.card_key.and_then(|k| PublicKey::from_sec1(&k).ok())
    }

    /// Encodes into `out` (deterministic: keys in ascending order, preferred heads).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        use card_info_key as k;
        let mut w = Writer::new(out);
        w.map(k::COUNT)?;
        w.u64(k::ICCID)?.str(self.iccid.as_str())?;
        w.u64(k::IMSI)?.str(self.imsi.as_str())?;
        w.u64(k::CARD_KEY)?;
        match &self.card_key {
            Some(key) => w.bytes(key)?,
            None => w.null()?,
        };
        w.u64(k::CERTIFICATE)?.bytes(self.certificate.as_ref())?;
        w.u64(k::VERSION)?
            .array(2)?
            .u64(self.version.0.into())?
            .u64(self.version.1.into())?;
        w.u64(k::INSTALLED_SEQUENCE)?.u64(self.installed_sequence)?;
        w.u64(k::LOG_NEXT)?.u64(self.log_next.into())?;
        w.u64(k::LOG_ACKED)?.u64(self.log_acked.into())?;
        w.u64(k::LOG_FREE)?.u64(self.log_free.into())?;
        w.u64(k::UPDATE_PENDING)?.bool(self.update_pending)?;
        w.u64(k::LIFECYCLE)?.u64(self.lifecycle.code().into())?;
        w.u64(k::TRUSTED_TIME)?.u64(self.trusted_time)?;
        w.u64(k::ADMIN_COUNTER)?.u64(self.admin_counter)?;
        w.u64(k::CAPACITIES)?.map(6)?;
        for (i, v) in [
            self.log_capacity,
            self.max_servers,
            self.max_originators,
            self.io_capacity,
            self.persistent_size,
            self.record_len,
        ]
        .into_iter()
        .enumerate()
        {
            w.u64(i as u64 + 1)?.u64(v.into())?;
        }
        Ok(w.len())
    }

    /// Encodes into a new vector.
    #[cfg(feature = "std")]
    pub fn to_vec(&self) -> Result<std::vec::Vec<u8>> {
        let mut buf = std::vec![0u8; 256 + self.certificate.as_ref().len()];
        let n = self.encode(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The same information owning its certificate.
    #[cfg(feature = "std")]
    pub fn into_owned(self) -> CardInfo<std::vec::Vec<u8>> {
        CardInfo {
            iccid: self.iccid,
            imsi: self.imsi,
            card_key: self.card_key,
            certificate: self.certificate.as_ref().to_vec(),
            version: self.version,
            installed_sequence: self.installed_sequence,
            log_next: self.log_next,
            log_acked: self.log_acked,
            log_free: self.log_free,
            update_pending: self.update_pending,
            lifecycle: self.lifecycle,
            trusted_time: self.trusted_time,
            admin_counter: self.admin_counter,
            log_capacity: self.log_capacity,
            max_servers: self.max_servers,
            max_originators: self.max_originators,
            io_capacity: self.io_capacity,
            persistent_size: self.persistent_size,
            record_len: self.record_len,
        }
    }
}

impl<'a> CardInfo<&'a [u8]> {
    /// Decodes a card-info map that spans all of `bytes`; every member is required.
    pub fn decode(bytes: &'a [u8], limits: &Limits) -> Result<Self> {
        use card_info_key as k;
        let mut r = Reader::new(bytes, limits);
        let mut iccid = None;
        let mut imsi = None;
        let mut card_key = None;
        let mut certificate = None;
        let mut version = None;
        let mut installed_sequence = None;
        let mut log_next = None;
        let mut log_acked = None;
        let mut log_free = None;
        let mut update_pending = None;
        let mut lifecycle = None;
        let mut trusted_time = None;
        let mut admin_counter = None;
        let mut caps: [Option<u32>; 6] = [None; 6];
        int_map(&mut r, "card info", |r, key| {
            match key {
                k::ICCID => {
                    let s = text(r, "iccid")?;
                    if !s.is_empty() {
                        Iccid::parse(s)?;
                    }
                    iccid = Some(Digits::new(s).map_err(|_| Error::BadIccid)?);
                }
                k::IMSI => {
                    imsi = Some(
                        Digits::new(text(r, "imsi")?).map_err(|_| Error::InvalidField("imsi"))?,
                    )
                }
                k::CARD_KEY => {
                    card_key = Some(if r.is_null()? {
                        r.null()?;
                        None
                    } else {
                        Some(sec1(r, "card key")?.to_sec1())
                    })
                }
                k::CERTIFICATE => certificate = Some(bstr(r, "certificate")?),
                k::VERSION => version = Some(applet_version(r)?),
                k::INSTALLED_SEQUENCE => installed_sequence = Some(uint(r, "installed sequence")?),
                k::LOG_NEXT => log_next = Some(uint32(r, "log next")?),
                k::LOG_ACKED => log_acked = Some(uint32(r, "log acked")?),
                k::LOG_FREE => log_free = Some(uint32(r, "log free")?),
                k::UPDATE_PENDING => update_pending = Some(boolean(r, "update pending")?),
                k::LIFECYCLE => {
                    lifecycle = Some(
                        u8::try_from(uint(r, "life cycle")?)
                            .ok()
                            .and_then(Lifecycle::from_code)
                            .ok_or(Error::InvalidField("life cycle"))?,
                    )
                }
                k::TRUSTED_TIME => trusted_time = Some(uint(r, "trusted time")?),
                k::ADMIN_COUNTER => admin_counter = Some(uint(r, "admin counter")?),
                k::CAPACITIES => int_map(r, "capacities", |r, key| {
                    match caps.get_mut((key as usize).wrapping_sub(1)) {
                        Some(slot) if key >= 1 => *slot = Some(uint32(r, "capacity")?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        r.finish()?;
        let cap = |i: usize| required(caps[i], "capacities");
        Ok(CardInfo {
            iccid: required(iccid, "iccid")?,
            imsi: required(imsi, "imsi")?,
            card_key: required(card_key, "card key")?,
            certificate: required(certificate, "certificate")?,
            version: required(version, "version")?,
            installed_sequence: required(installed_sequence, "installed sequence")?,
            log_next: required(log_next, "log next")?,
            log_acked: required(log_acked, "log acked")?,
            log_free: required(log_free, "log free")?,
            update_pending: required(update_pending, "update pending")?,
            lifecycle: required(lifecycle, "life cycle")?,
            trusted_time: required(trusted_time, "trusted time")?,
            admin_counter: required(admin_counter, "admin counter")?,
            log_capacity: cap(0)?,
            max_servers: cap(1)?,
            max_originators: cap(2)?,
            io_capacity: cap(3)?,
            persistent_size: cap(4)?,
            record_len: cap(5)?,
        })
    }
}

/// The server's view of a card-info map: the claimed ICCID and the certificate, every other
/// member skipped (still well-formed CBOR). Both are optional here: what the server may
/// conclude from their absence is its own business (a claim without a certificate binds
/// nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardIdentity<'a> {
    /// The ICCID the device claims (unchecked text: only the certificate's ICCID counts).
    pub iccid: Option<&'a str>,
    /// The issuer-signed card certificate (COSE_Sign1), to verify; `None` when absent or empty.
    pub certificate: Option<&'a [u8]>,
    /// The applet version (major, minor) the device relays, which says what the card's
    /// commands accept (applet 1.1: acknowledgements bound to an export page); the device's
    /// word like the rest, so it only chooses between ways the card checks for itself.
    pub applet: Option<(u8, u8)>,
}

/// Card-info member 5: `[major, minor]`, each a byte.
fn applet_version(r: &mut Reader<'_, '_>) -> Result<(u8, u8)> {
    array_n(r, 2, "version")?;
    let major = u8::try_from(uint(r, "version")?);
    let minor = u8::try_from(uint(r, "version")?);
    match (major, minor) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(Error::InvalidField("version")),
    }
}

impl<'a> CardIdentity<'a> {
    /// Reads members 1, 4 and 5 of a card-info map that spans all of `bytes`.
    pub fn decode(bytes: &'a [u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(bytes, limits);
        let mut id = CardIdentity {
            iccid: None,
            certificate: None,
            applet: None,
        };
        int_map(&mut r, "card info", |r, key| {
            match key {
                card_info_key::ICCID => id.iccid = Some(text(r, "iccid")?),
                card_info_key::CERTIFICATE => {
                    id.certificate = Some(bstr(r, "certificate")?).filter(|c| !c.is_empty())
                }
                card_info_key::VERSION => id.applet = Some(applet_version(r)?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        r.finish()?;
        Ok(id)
    }
}

/// Where the card's integrity check of the pending update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integrity {
    /// Not checked yet.
    NotChecked,
    /// The payload matched the signed digest and size.
    Passed,
    /// It did not.
    Failed,
}

impl Integrity {
    /// The code on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::NotChecked => 0,
            Self::Passed => 1,
            Self::Failed => 2,
        }
    }

    /// The state a code stands for.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::NotChecked),
            1 => Some(Self::Passed),
            2 => Some(Self::Failed),
            _ => None,
        }
    }
}

/// The authorized update in progress (GET DATA `0106`): `{1: update id bstr, 2: integrity
/// uint, 3: sequence uint, 4: image size uint, 5: image digest bstr .size 32}`, or the empty
/// map `{}` when none is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingUpdate {
    /// Update id (the token's `cti`).
    pub update_id: UpdateId,
    /// Integrity check state.
    pub integrity: Integrity,
    /// Manifest sequence number.
    pub sequence: u64,
    /// Signed image size.
    pub image_size: u64,
    /// Signed image digest.
    pub image_digest: Digest,
}

impl PendingUpdate {
    /// Largest encoding.
    pub const MAX_ENCODED_LEN: usize = 1 + 2 + UpdateId::MAX_LEN + 2 + 2 * 10 + 2 + 34;

    /// Encodes `pending` (or the empty map for `None`) into `out`.
    pub fn encode(pending: Option<&PendingUpdate>, out: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(out);
        let Some(p) = pending else {
            w.map(0)?;
            return Ok(w.len());
        };
        w.map(5)?;
        w.u64(1)?.bytes(p.update_id.as_bytes())?;
        w.u64(2)?.u64(p.integrity.code().into())?;
        w.u64(3)?.u64(p.sequence)?;
        w.u64(4)?.u64(p.image_size)?;
        w.u64(5)?.bytes(&p.image_digest.0)?;
        Ok(w.len())
    }

    /// Decodes an answer that spans all of `bytes`: `None` for `{}`, otherwise every member
    /// is required.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Option<Self>> {
        let mut r = Reader::new(bytes, limits);
        let (mut id, mut integrity, mut sequence, mut size, mut digest) =
            (None, None, None, None, None);
        let mut any = false;
        int_map(&mut r, "pending update", |r, key| {
            any = true;
            match key {
                1 => id = Some(UpdateId::new(bstr(r, "update id")?)?),
                2 => {
                    integrity = Some(
                        u8::try_from(uint(r, "integrity")?)
                            .ok()
                            .and_then(Integrity::from_code)
                            .ok_or(Error::InvalidField("integrity"))?,
                    )
                }
                3 => sequence = Some(uint(r, "sequence")?),
                4 => size = Some(uint(r, "image size")?),
                5 => {
                    let b = bstr(r, "image digest")?;
                    digest = Some(Digest(
                        b.try_into()
                            .map_err(|_| Error::InvalidField("image digest"))?,
                    ));
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        r.finish()?;
        if !any {
            return Ok(None);
        }
        Ok(Some(PendingUpdate {
            update_id: required(id, "update id")?,
            integrity: required(integrity, "integrity")?,
            sequence: required(sequence, "sequence")?,
            image_size: required(size, "image size")?,
            image_digest: required(digest, "image digest")?,
        }))
    }
}

/// Log counters and chain head (GET DATA `0105`): `{1: next, 2: acknowledged below,
/// 3: unacknowledged, 4: free slots, 5: chain head bstr .size 32, 6: capacity}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStatus {
    /// Next sequence number.
    pub next: u32,
    /// Acknowledged below this.
    pub acked: u32,
    /// Free slots.
    pub free: u32,
    /// Chain head.
    pub head: [u8; 32],
    /// Log capacity in entries.
    pub capacity: u32,
}

impl LogStatus {
    /// Largest encoding.
    pub const MAX_ENCODED_LEN: usize = 1 + 5 * 6 + 2 + 34;

    /// Entries not acknowledged yet.
    pub fn unacked(&self) -> u32 {
        self.next.saturating_sub(self.acked)
    }

    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(out);
        w.map(6)?;
        w.u64(1)?.u64(self.next.into())?;
        w.u64(2)?.u64(self.acked.into())?;
        w.u64(3)?.u64(self.unacked().into())?;
        w.u64(4)?.u64(self.free.into())?;
        w.u64(5)?.bytes(&self.head)?;
        w.u64(6)?.u64(self.capacity.into())?;
        Ok(w.len())
    }

    /// Decodes an answer that spans all of `bytes`; every member is required, and the
    /// unacknowledged count must be `next - acked`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let mut r = Reader::new(bytes, limits);
        let mut v: [Option<u32>; 6] = [None; 6];
        let mut head = None;
        int_map(&mut r, "log status", |r, key| {
            match key {
                5 => {
                    let b = bstr(r, "log head")?;
                    head =
                        Some(<[u8; 32]>::try_from(b).map_err(|_| Error::InvalidField("log head"))?);
                }
                1..=6 => v[key as usize - 1] = Some(uint32(r, "log counter")?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        r.finish()?;
        let s = LogStatus {
            next: required(v[0], "log next")?,
            acked: required(v[1], "log acked")?,
            free: required(v[3], "log free")?,
            head: required(head, "log head")?,
            capacity: required(v[5], "log capacity")?,
        };
        if required(v[2], "log unacknowledged")? != s.unacked() || s.acked > s.next {
            return Err(Error::InvalidField("log unacknowledged"));
        }
        Ok(s)
    }
}

impl Rights {
    /// The one table of rights names (docs/dm-tree.md "Card answers"): the card, the device
    /// and the server show rights with these names.
    pub const NAMES: [(Rights, &'static str); 4] = [
        (Rights::FIRMWARE_UPDATE, "firmware_update"),
        (Rights::LOG_READ, "log_read"),
        (Rights::LOG_ACK, "log_ack"),
        (Rights::DM_OTHER, "dm_other"),
    ];

    /// The names of the bits set, in table order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(r, _)| self.contains(*r))
            .map(|(_, n)| n)
    }

    /// The right a name stands for.
    pub fn from_name(name: &str) -> Option<Rights> {
        Self::NAMES
            .into_iter()
            .find(|(_, n)| *n == name)
            .map(|(r, _)| r)
    }

    /// Rights from their bits; a bit this version does not define is refused.
    pub fn from_bits(bits: u64) -> Result<Rights> {
        u8::try_from(bits)
            .ok()
            .filter(|b| b & !Rights::ALL.0 == 0)
            .map(Rights)
            .ok_or(Error::InvalidField("rights"))
    }
}

/// One authorized DM server: GET DATA `0102` / node `Servers` is `[* [id tstr, key bstr
/// (SEC1 uncompressed), rights uint]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerEntry {
    /// Server id (a token's `iss`).
    pub id: ServerId,
    /// Its signature key.
    pub key: PublicKey,
    /// What it may do.
    pub rights: Rights,
}

/// One trusted software originator: GET DATA `0104` / node `Originators` is `[* [id tstr,
/// key bstr (SEC1 uncompressed)]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginatorEntry {
    /// Originator id.
    pub id: OriginatorId,
    /// Its manifest signing key.
    pub key: PublicKey,
}

// A listed id compares with the text it was listed under (`servers[0].id == "dm1"`).
impl PartialEq<&str> for ServerId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<&str> for OriginatorId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Reads a list header, bounded by [`MAX_LIST_ENTRIES`].
fn list_header(r: &mut Reader<'_, '_>, what: &'static str) -> Result<usize> {
    let n = array(r, what)?;
    if n > MAX_LIST_ENTRIES {
        return Err(Error::TooLarge {
            what,
            max: MAX_LIST_ENTRIES,
        });
    }
    Ok(n)
}

impl ServerEntry {
    /// Largest encoding of one entry.
    pub const MAX_ENCODED_LEN: usize = 1 + 2 + ServerId::MAX_LEN + 2 + SEC1_LEN + 2;

    /// Decodes a server list that spans all of `bytes`, handing each entry to `f` in order;
    /// returns how many there were. On an error, discard what `f` was given.
    pub fn decode_list(
        bytes: &[u8],
        limits: &Limits,
        mut f: impl FnMut(ServerEntry) -> Result<()>,
    ) -> Result<usize> {
        let mut r = Reader::new(bytes, limits);
        let n = list_header(&mut r, "server list")?;
        for _ in 0..n {
            array_n(&mut r, 3, "server entry")?;
            let id = ServerId::new(text(&mut r, "server id")?)?;
            let key = sec1(&mut r, "server key")?;
            let rights = Rights::from_bits(uint(&mut r, "rights")?)?;
            f(ServerEntry { id, key, rights })?;
        }
        r.finish()?;
        Ok(n)
    }

    /// Decodes a server list into a vector.
    #[cfg(feature = "std")]
    pub fn decode_vec(bytes: &[u8], limits: &Limits) -> Result<std::vec::Vec<ServerEntry>> {
        let mut v = std::vec::Vec::new();
        Self::decode_list(bytes, limits, |e| {
            v.push(e);
            Ok(())
        })?;
        Ok(v)
    }

    /// Encodes a whole list into a new vector.
    #[cfg(feature = "std")]
    pub fn encode_vec(entries: &[ServerEntry]) -> Result<std::vec::Vec<u8>> {
        let mut buf = std::vec![0u8; 9 + entries.len() * Self::MAX_ENCODED_LEN];
        let mut w = ServerListWriter::new(&mut buf, entries.len())?;
        for e in entries {
            w.push(e.id.as_str(), &e.key.to_sec1(), e.rights)?;
        }
        let n = w.finish()?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl OriginatorEntry {
    /// Largest encoding of one entry.
    pub const MAX_ENCODED_LEN: usize = 1 + 2 + OriginatorId::MAX_LEN + 2 + SEC1_LEN;

    /// Decodes an originator list that spans all of `bytes`, handing each entry to `f` in
    /// order; returns how many there were. On an error, discard what `f` was given.
    pub fn decode_list(
        bytes: &[u8],
        limits: &Limits,
        mut f: impl FnMut(OriginatorEntry) -> Result<()>,
    ) -> Result<usize> {
        let mut r = Reader::new(bytes, limits);
        let n = list_header(&mut r, "originator list")?;
        for _ in 0..n {
            array_n(&mut r, 2, "originator entry")?;
            let id = OriginatorId::new(text(&mut r, "originator id")?)?;
            let key = sec1(&mut r, "originator key")?;
            f(OriginatorEntry { id, key })?;
        }
        r.finish()?;
        Ok(n)
    }

    /// Decodes an originator list into a vector.
    #[cfg(feature = "std")]
    pub fn decode_vec(bytes: &[u8], limits: &Limits) -> Result<std::vec::Vec<OriginatorEntry>> {
        let mut v = std::vec::Vec::new();
        Self::decode_list(bytes, limits, |e| {
            v.push(e);
            Ok(())
        })?;
        Ok(v)
    }

    /// Encodes a whole list into a new vector.
    #[cfg(feature = "std")]
    pub fn encode_vec(entries: &[OriginatorEntry]) -> Result<std::vec::Vec<u8>> {
        let mut buf = std::vec![0u8; 9 + entries.len() * Self::MAX_ENCODED_LEN];
        let mut w = OriginatorListWriter::new(&mut buf, entries.len())?;
        for e in entries {
            w.push(e.id.as_str(), &e.key.to_sec1())?;
        }
        let n = w.finish()?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// Writes a server list entry by entry (the card writes from its table, without building
/// [`ServerEntry`] values: keys stay in their stored SEC1 form).
pub struct ServerListWriter<'b> {
    w: Writer<'b>,
    left: usize,
}

impl<'b> ServerListWriter<'b> {
    /// Starts a list of exactly `count` entries.
    pub fn new(out: &'b mut [u8], count: usize) -> Result<Self> {
        if count > MAX_LIST_ENTRIES {
            return Err(Error::TooLarge {
                what: "server list",
                max: MAX_LIST_ENTRIES,
            });
        }
        let mut w = Writer::new(out);
        w.array(count)?;
        Ok(Self { w, left: count })
    }

    /// Appends one entry; `id` must be a valid [`ServerId`].
    pub fn push(&mut self, id: &str, key: &[u8; SEC1_LEN], rights: Rights) -> Result<()> {
        ServerId::new(id)?;
        self.left = self
            .left
            .checked_sub(1)
            .ok_or(Error::InvalidField("server list count"))?;
        self.w
            .array(3)?
            .str(id)?
            .bytes(key)?
            .u64(Rights::from_bits(rights.0.into())?.0.into())?;
        Ok(())
    }

    /// Ends the list; returns the encoded length. Fails unless `count` entries were pushed.
    pub fn finish(self) -> Result<usize> {
        if self.left != 0 {
            return Err(Error::InvalidField("server list count"));
        }
        Ok(self.w.len())
    }
}

/// Writes an originator list entry by entry (see [`ServerListWriter`]).
pub struct OriginatorListWriter<'b> {
    w: Writer<'b>,
    left: usize,
}

impl<'b> OriginatorListWriter<'b> {
    /// Starts a list of exactly `count` entries.
    pub fn new(out: &'b mut [u8], count: usize) -> Result<Self> {
        if count > MAX_LIST_ENTRIES {
            return Err(Error::TooLarge {
                what: "originator list",
                max: MAX_LIST_ENTRIES,
            });
        }
        let mut w = Writer::new(out);
        w.array(count)?;
        Ok(Self { w, left: count })
    }

    /// Appends one entry; `id` must be a valid [`OriginatorId`].
    pub fn push(&mut self, id: &str, key: &[u8; SEC1_LEN]) -> Result<()> {
        OriginatorId::new(id)?;
        self.left = self
            .left
            .checked_sub(1)
            .ok_or(Error::InvalidField("originator list count"))?;
        self.w.array(2)?.str(id)?.bytes(key)?;
        Ok(())
    }

    /// Ends the list; returns the encoded length. Fails unless `count` entries were pushed.
    pub fn finish(self) -> Result<usize> {
        if self.left != 0 {
            return Err(Error::InvalidField("originator list count"));
        }
        Ok(self.w.len())
    }
}

#[cfg(test)]
#[cfg(feature = "std")]
#[path = "card_tests.rs"]
mod tests;
