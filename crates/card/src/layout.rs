//! The persistent layout: every field at a fixed offset, allocated once at install time as a
//! Java Card applet allocates its persistent arrays in its constructor. `docs/card.md` draws
//! the same map for a porter. [`Persist`] wraps the store with typed accessors and the
//! one-transaction-per-step helper.

use crate::store::{Store, StoreError};

/// Log ring capacity (entries).
pub const LOG_CAPACITY: usize = 64;
/// Authorized-server table capacity.
pub const MAX_SERVERS: usize = 8;
/// Trusted-originator table capacity.
pub const MAX_ORIGINATORS: usize = 8;
/// Longest server or originator id stored (bytes of UTF-8).
pub const ID_MAX: usize = 32;
/// Longest update id (token `cti`) stored.
pub const UPDATE_ID_MAX: usize = 32;
/// A P-256 public key, SEC1 uncompressed (`04 || X || Y`).
pub const KEY_LEN: usize = 65;
/// Longest issuer-signed card certificate stored.
pub const CERT_MAX: usize = 400;
/// Longest encoded policy stored.
pub const POLICY_MAX: usize = simfota_wire::Policy::MAX_ENCODED_LEN;
/// Longest ICCID (ITU-T E.118: up to 20 digits, kept as ASCII).
pub const ICCID_MAX: usize = 20;
/// Longest IMSI (ITU-T E.212: up to 15 digits, kept as ASCII).
pub const IMSI_MAX: usize = 15;
/// IMEI length (3GPP TS 23.003 §6.2.1: 15 digits, kept as ASCII).
pub const IMEI_LEN: usize = 15;
/// Size of one log record (the wire crate's fixed record length).
pub const RECORD_LEN: usize = simfota_wire::LogEntry::RECORD_LEN;

/// Layout version written in the header; a change of layout changes it.
pub const LAYOUT_VERSION: u8 = 1;
const MAGIC: [u8; 3] = *b"SFC";

// Offsets. Each block follows the previous one; sizes in the comments.
pub(crate) const O_MAGIC: usize = 0; // 3 magic + 1 layout version
pub(crate) const O_LIFECYCLE: usize = 4; // 1: 0 blank, 1 personalizing, 2 operational
/// Log flags (1 byte in the header's padding, zero on cards written before it): bit 0 set
/// while the newest log record is an open refusal tally that may still count refusals.
pub(crate) const O_LOG_FLAGS: usize = 5;
/// Updates through unlisted servers authorized since the log was last acknowledged to its end
/// (1 byte in the header's padding, zero on cards written before it).
pub(crate) const O_UNVERIFIED_UPDATES: usize = 6;
pub(crate) const O_ICCID: usize = 8; // 1 len + 20
pub(crate) const O_IMSI: usize = O_ICCID + 1 + ICCID_MAX; // 1 len + 15
pub(crate) const O_CARD_SK: usize = O_IMSI + 1 + IMSI_MAX; // 32 scalar
pub(crate) const O_CARD_PK: usize = O_CARD_SK + 32; // 65 (first byte 04 when present)
pub(crate) const O_ISSUER_PK: usize = O_CARD_PK + KEY_LEN; // 65
pub(crate) const O_CERT: usize = O_ISSUER_PK + KEY_LEN; // 2 len + CERT_MAX
pub(crate) const O_PIN: usize = O_CERT + 2 + CERT_MAX; // 8 value + 1 tries + 1 max
pub(crate) const O_PUK: usize = O_PIN + PIN_SLOT_LEN; // same
pub(crate) const O_ADMIN_COUNTER: usize = O_PUK + PIN_SLOT_LEN; // 8
pub(crate) const O_INSTALLED_SEQ: usize = O_ADMIN_COUNTER + 8; // 8
pub(crate) const O_TRUSTED_TIME: usize = O_INSTALLED_SEQ + 8; // 8
pub(crate) const O_LOG_NEXT: usize = O_TRUSTED_TIME + 8; // 4: seq of the next entry
pub(crate) const O_LOG_ACKED: usize = O_LOG_NEXT + 4; // 4: every seq below is acknowledged
pub(crate) const O_LOG_HEAD: usize = O_LOG_ACKED + 4; // 32: hash of the newest entry
pub(crate) const O_PENDING: usize = O_LOG_HEAD + 32; // PENDING_LEN
pub(crate) const O_SERVERS: usize = O_PENDING + PENDING_LEN; // MAX_SERVERS * SERVER_LEN
pub(crate) const O_ORIGINATORS: usize = O_SERVERS + MAX_SERVERS * SERVER_LEN;
pub(crate) const O_POLICY: usize = O_ORIGINATORS + MAX_ORIGINATORS * ORIGINATOR_LEN; // 2 + max
pub(crate) const O_LOG: usize = O_POLICY + 2 + POLICY_MAX; // LOG_CAPACITY * RECORD_LEN
/// Total persistent bytes the applet allocates.
pub const PERSISTENT_SIZE: usize = O_LOG + LOG_CAPACITY * RECORD_LEN;

pub(crate) const PIN_SLOT_LEN: usize = 10;
/// Server record: used (1), rights (1), id len (1), id (32), key (65).
pub(crate) const SERVER_LEN: usize = 3 + ID_MAX + KEY_LEN;
/// Originator record: used (1), id len (1), id (32), key (65).
pub(crate) const ORIGINATOR_LEN: usize = 2 + ID_MAX + KEY_LEN;

// The pending (authorized, not yet ended) update.
pub(crate) const P_STATE: usize = 0; // 1: 0 none, 1 authorized
pub(crate) const P_INTEGRITY: usize = 1; // 1: 0 not checked, 1 passed, 2 failed
pub(crate) const P_SEQUENCE: usize = 2; // 8: manifest sequence number
pub(crate) const P_IMAGE_SIZE: usize = 10; // 8
pub(crate) const P_IMAGE_DIGEST: usize = 18; // 32
pub(crate) const P_ENTRY: usize = 50; // RECORD_LEN: the "authorized" log record, template of later ones
pub(crate) const PENDING_LEN: usize = P_ENTRY + RECORD_LEN;

/// The life-cycle state kept in the header (GlobalPlatform Card Specification §5.3, applet
/// states INSTALLED → SELECTABLE → PERSONALIZED, named for what they mean here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Freshly installed: nothing written yet.
    Blank,
    /// Personalization under way (STORE DATA accepted).
    Personalizing,
    /// Personalized and locked: personalization commands are refused from now on.
    Operational,
}

/// Which reference data a PIN operation addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSlot {
    /// The user PIN (ISO/IEC 7816-4 reference `81`).
    Pin,
    /// The unblocking key (reference `82`).
    Puk,
}

impl PinSlot {
    fn offset(self) -> usize {
        match self {
            PinSlot::Pin => O_PIN,
            PinSlot::Puk => O_PUK,
        }
    }
}

/// The store plus typed accessors for the fields above.
pub struct Persist<S> {
    store: S,
}

impl<S: Store> Persist<S> {
    /// Wraps a store.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The wrapped store, mutably.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Unwraps the store.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Runs `f` inside one transaction: commits if it succeeds, rolls back otherwise.
    pub fn transaction<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        self.store.begin()?;
        match f(self) {
            Ok(v) => match self.store.commit() {
                Ok(()) => Ok(v),
                Err(e) => {
                    self.store.abort();
                    Err(e.into())
                }
            },
            Err(e) => {
                self.store.abort();
                Err(e)
            }
        }
    }

    /// Reads raw bytes.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        self.store.read(off, buf)
    }

    /// Writes raw bytes (inside a transaction).
    pub fn write(&mut self, off: usize, data: &[u8]) -> Result<(), StoreError> {
        self.store.write(off, data)
    }

    pub(crate) fn u8_at(&self, off: usize) -> Result<u8, StoreError> {
        let mut b = [0u8; 1];
        self.store.read(off, &mut b)?;
        Ok(b[0])
    }

    pub(crate) fn u16_at(&self, off: usize) -> Result<u16, StoreError> {
        let mut b = [0u8; 2];
        self.store.read(off, &mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    pub(crate) fn u32_at(&self, off: usize) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        self.store.read(off, &mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    pub(crate) fn u64_at(&self, off: usize) -> Result<u64, StoreError> {
        let mut b = [0u8; 8];
        self.store.read(off, &mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    pub(crate) fn put_u8(&mut self, off: usize, v: u8) -> Result<(), StoreError> {
        self.store.write(off, &[v])
    }

    pub(crate) fn put_u16(&mut self, off: usize, v: u16) -> Result<(), StoreError> {
        self.store.write(off, &v.to_be_bytes())
    }

    pub(crate) fn put_u32(&mut self, off: usize, v: u32) -> Result<(), StoreError> {
        self.store.write(off, &v.to_be_bytes())
    }

    pub(crate) fn put_u64(&mut self, off: usize, v: u64) -> Result<(), StoreError> {
        self.store.write(off, &v.to_be_bytes())
    }

    /// Reads a length-prefixed field (`len` byte + up to `max` bytes) into `buf`.
    pub(crate) fn lv_at<'b>(
        &self,
        off: usize,
        max: usize,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], StoreError> {
        let n = usize::from(self.u8_at(off)?).min(max).min(buf.len());
        self.store.read(off + 1, &mut buf[..n])?;
        Ok(&buf[..n])
    }

    /// Writes a length-prefixed field; the caller checked `data.len() <= max`.
    pub(crate) fn put_lv(&mut self, off: usize, data: &[u8]) -> Result<(), StoreError> {
        self.put_u8(off, data.len() as u8)?;
        self.store.write(off + 1, data)
    }

    /// Whether the header carries this layout's magic.
    pub fn formatted(&self) -> Result<bool, StoreError> {
        let mut b = [0u8; 4];
        self.store.read(O_MAGIC, &mut b)?;
        Ok(b[..3] == MAGIC && b[3] == LAYOUT_VERSION)
    }

    /// Writes the header (inside a transaction).
    pub(crate) fn format(&mut self) -> Result<(), StoreError> {
        let mut b = [0u8; 4];
        b[..3].copy_from_slice(&MAGIC);
        b[3] = LAYOUT_VERSION;
        self.store.write(O_MAGIC, &b)
    }

    /// The life-cycle state.
    pub fn lifecycle(&self) -> Result<Lifecycle, StoreError> {
        if !self.formatted()? {
            return Ok(Lifecycle::Blank);
        }
        Ok(match self.u8_at(O_LIFECYCLE)? {
            2 => Lifecycle::Operational,
            _ => Lifecycle::Personalizing,
        })
    }

    pub(crate) fn set_lifecycle(&mut self, l: Lifecycle) -> Result<(), StoreError> {
        let v = match l {
            Lifecycle::Blank => 0,
            Lifecycle::Personalizing => 1,
            Lifecycle::Operational => 2,
        };
        self.put_u8(O_LIFECYCLE, v)
    }

    /// Tries left for a PIN slot.
    pub fn pin_tries(&self, slot: PinSlot) -> Result<u8, StoreError> {
        self.u8_at(slot.offset() + 8)
    }

    pub(crate) fn set_pin_tries(&mut self, slot: PinSlot, v: u8) -> Result<(), StoreError> {
        self.put_u8(slot.offset() + 8, v)
    }

    /// The configured maximum tries of a PIN slot (0 = not set).
    pub fn pin_max(&self, slot: PinSlot) -> Result<u8, StoreError> {
        self.u8_at(slot.offset() + 9)
    }

    pub(crate) fn pin_value(&self, slot: PinSlot) -> Result<[u8; 8], StoreError> {
        let mut b = [0u8; 8];
        self.store.read(slot.offset(), &mut b)?;
        Ok(b)
    }

    pub(crate) fn set_pin(
        &mut self,
        slot: PinSlot,
        value: &[u8],
        max: u8,
    ) -> Result<(), StoreError> {
        self.store.write(slot.offset(), value)?;
        self.put_u8(slot.offset() + 8, max)?;
        self.put_u8(slot.offset() + 9, max)
    }

    pub(crate) fn set_pin_value(&mut self, slot: PinSlot, value: &[u8]) -> Result<(), StoreError> {
        self.store.write(slot.offset(), value)
    }
}

// Budget (issue 3 item 10): at most 32 KiB persistent with a 64-entry log, checked when
// the crate compiles.
const _: () = assert!(
    PERSISTENT_SIZE <= 32 * 1024,
    "persistent layout exceeds 32 KiB"
);
const _: () = assert!(LOG_CAPACITY == 64);
