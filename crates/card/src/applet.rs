//! The applet: one entry point, [`Applet::process`], takes a command APDU and writes the
//! response (data + status word) into a caller-provided buffer. Everything else — the
//! response path (61xx + GET RESPONSE, 6Cxx), command chaining, dispatch — lives here; the
//! commands themselves live in their own modules.

use rand_core::CryptoRngCore;

use crate::apdu::Command;
use crate::layout::{Lifecycle, Persist};
use crate::store::Store;
use crate::{CardError, StatusWord};

/// Capacity of the applet's transient I/O buffer: the largest command data (after chaining)
/// and the largest response it builds. Java Card: one `CLEAR_ON_DESELECT` byte array.
pub const IO_CAP: usize = 1536;

/// The applet's AID: a proprietary RID-less AID (ISO/IEC 7816-5 category `F`), "simfota" +
/// version 1.
pub const AID: [u8; 9] = [0xF0, 0x73, 0x69, 0x6D, 0x66, 0x6F, 0x74, 0x61, 0x01];

/// The applet version reported in card info (major, minor).
pub const APPLET_VERSION: (u8, u8) = (1, 0);

/// What the applet needs from its platform: a cryptographically secure random generator
/// (nonces, the card key pair, ECDH-ES ephemeral keys). A Java Card port uses
/// `RandomData.ALG_TRNG` and the crypto co-processor.
pub trait Platform {
    /// The generator type.
    type Rng: CryptoRngCore;
    /// The generator.
    fn rng(&mut self) -> &mut Self::Rng;
}

/// A platform made of just a random generator.
pub struct RngPlatform<R>(pub R);

impl<R: CryptoRngCore> Platform for RngPlatform<R> {
    type Rng = R;
    fn rng(&mut self) -> &mut R {
        &mut self.0
    }
}

/// Instruction bytes (see `docs/apdu.md`).
pub mod ins {
    /// SELECT (ISO/IEC 7816-4 §11.2.2), CLA `00`.
    pub const SELECT: u8 = 0xA4;
    /// GET RESPONSE (ISO/IEC 7816-4 §7.6.1), CLA `00`.
    pub const GET_RESPONSE: u8 = 0xC0;
    /// GET CHALLENGE (ISO/IEC 7816-4 §7.5.3), CLA `00`: the one-time nonce.
    pub const GET_CHALLENGE: u8 = 0x84;
    /// VERIFY (ISO/IEC 7816-4 §7.5.6), CLA `00`.
    pub const VERIFY: u8 = 0x20;
    /// CHANGE REFERENCE DATA (ISO/IEC 7816-4 §7.5.7), CLA `00`.
    pub const CHANGE_REFERENCE_DATA: u8 = 0x24;
    /// RESET RETRY COUNTER (ISO/IEC 7816-4 §7.5.10), CLA `00`.
    pub const RESET_RETRY_COUNTER: u8 = 0x2C;
    /// GENERATE ASYMMETRIC KEY PAIR (ISO/IEC 7816-8 §5.1), CLA `00`, personalization only.
    pub const GENERATE_KEY_PAIR: u8 = 0x46;
    /// GET DATA, CLA `80`: P1-P2 names the object (card info, servers, policy, ...).
    pub const GET_DATA: u8 = 0xCA;
    /// STORE DATA (GlobalPlatform Card Specification §11.11), CLA `80`: personalization.
    pub const STORE_DATA: u8 = 0xE2;
    /// BIND TERMINAL, CLA `80`: the device tells its IMEI at session open.
    pub const BIND_TERMINAL: u8 = 0x10;
    /// AUTHORIZE UPDATE, CLA `80`: delivery token + SUIT envelope.
    pub const AUTHORIZE_UPDATE: u8 = 0x12;
    /// RECORD CONSENT, CLA `80`: the user's answer for an unauthorized server.
    pub const RECORD_CONSENT: u8 = 0x14;
    /// PAYLOAD INTEGRITY, CLA `80`: device digest, or the streamed payload.
    pub const PAYLOAD: u8 = 0x16;
    /// REPORT RESULT, CLA `80`: the install result; answers a card-signed receipt.
    pub const REPORT_RESULT: u8 = 0x18;
    /// READ LOG, CLA `80`: server-signed request in, encrypted card-signed export out.
    pub const READ_LOG: u8 = 0x1A;
    /// ACKNOWLEDGE LOG, CLA `80`: server-signed acknowledgement.
    pub const ACK_LOG: u8 = 0x1C;
    /// ADMIN, CLA `80`: issuer-signed admin command.
    pub const ADMIN: u8 = 0x1E;
    /// GET RECEIPT, CLA `80`: the receipt of an update whose result the card recorded,
    /// signed again (for a device that lost it in a crash).
    pub const GET_RECEIPT: u8 = 0x22;
}

/// The transient I/O state: buffer, chaining and the pending response.
pub(crate) struct Io {
    pub(crate) buf: [u8; IO_CAP],
    /// Bytes of command data accumulated by a chain in progress.
    len: u16,
    /// Header (INS, P1, P2) of the chain in progress.
    chain: Option<[u8; 3]>,
    /// Pending response: `buf[off..end]` still to be sent by GET RESPONSE.
    off: u16,
    end: u16,
}

/// Card-digest streaming state (RAM only: a reset restarts the stream from byte 0).
pub(crate) struct Stream {
    pub(crate) hasher: sha2::Sha256,
    pub(crate) count: u64,
}

/// A question to the user about an unauthorized server, bound to one AUTHORIZE UPDATE
/// request.
#[derive(Clone, Copy)]
pub(crate) struct Consent {
    /// SHA-256 of the AUTHORIZE UPDATE data this consent is about.
    pub(crate) request: [u8; 32],
    /// Whether a PIN confirmation is required by the policy.
    pub(crate) needs_pin: bool,
}

/// Session state in RAM: dies with a reset or power loss (Java Card: `CLEAR_ON_RESET`).
pub(crate) struct Session {
    pub(crate) selected: bool,
    /// The outstanding one-time nonce (ISO/IEC 7816-4 GET CHALLENGE).
    pub(crate) nonce: Option<[u8; 16]>,
    /// The IMEI the device bound at session open.
    pub(crate) imei: Option<[u8; crate::layout::IMEI_LEN]>,
    /// The device's clock as it stated it at session open (untrusted, logged as is).
    pub(crate) device_time: Option<u64>,
    /// Whether the PIN was verified in this session.
    pub(crate) pin_verified: bool,
    /// The last consent question/answer.
    pub(crate) consent: Option<Consent>,
    /// Card-digest streaming in progress.
    pub(crate) stream: Option<Stream>,
}

impl Session {
    const fn new() -> Self {
        Self {
            selected: false,
            nonce: None,
            imei: None,
            device_time: None,
            pin_verified: false,
            consent: None,
            stream: None,
        }
    }
}

// Budget (issue 3 item 10): the applet's RAM state fits 2 KiB, checked when the crate
// compiles (for the host and the card target alike).
const _: () = assert!(
    core::mem::size_of::<Io>() + core::mem::size_of::<Session>() <= 2048,
    "applet RAM state exceeds 2 KiB"
);

/// Everything a command handler may touch besides the I/O buffer.
pub(crate) struct Core<S, P> {
    pub(crate) p: Persist<S>,
    pub(crate) platform: P,
    pub(crate) session: Session,
    /// Instrumentation: public-key operations performed (not applet state).
    pub(crate) ops: crate::crypto::OpCount,
}

/// How much of the persistent image is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistentUsage {
    /// Bytes the layout allocates (the whole image).
    pub allocated: usize,
    /// Bytes holding data: fixed fields, used table records, the policy area, stored records.
    pub in_use: usize,
    /// Log records stored (at most the log capacity).
    pub log_records: usize,
    /// Listed servers.
    pub servers: usize,
    /// Trusted originators.
    pub originators: usize,
}

/// The card applet over a persistent store `S` and a platform `P`.
pub struct Applet<S, P> {
    core: Core<S, P>,
    io: Io,
}

impl<S: Store, P: Platform> Applet<S, P> {
    /// Installs (or, with a store that already holds a card image, restarts) the applet.
    /// RAM state starts empty, as after a card reset.
    pub fn new(store: S, platform: P) -> Self {
        Self {
            core: Core {
                p: Persist::new(store),
                platform,
                session: Session::new(),
                ops: crate::crypto::OpCount::default(),
            },
            io: Io {
                buf: [0; IO_CAP],
                len: 0,
                chain: None,
                off: 0,
                end: 0,
            },
        }
    }

    /// A card reset or power cycle: every RAM object is cleared (nonce, bound IMEI, PIN
    /// status, consent, streaming, chaining, pending response); persistent state stays.
    pub fn reset(&mut self) {
        self.core.session = Session::new();
        self.io.len = 0;
        self.io.chain = None;
        self.io.off = 0;
        self.io.end = 0;
        self.io.buf = [0; IO_CAP];
    }

    /// The persistent store (read-only view).
    pub fn store(&self) -> &S {
        self.core.p.store()
    }

    /// The persistent store, mutably (hosts and tests: arming a power cut, say). Writes
    /// still need a transaction.
    pub fn store_mut(&mut self) -> &mut S {
        self.core.p.store_mut()
    }

    /// Takes the applet apart, giving back its store (to power-cycle it).
    pub fn into_store(self) -> S {
        self.core.p.into_store()
    }

    /// The life-cycle state in persistent memory.
    pub fn lifecycle(&self) -> Result<Lifecycle, CardError> {
        Ok(self.core.p.lifecycle()?)
    }

    /// Bytes of RAM the applet's own state takes (I/O buffer, session, chaining), the
    /// figure to compare with a SIM's ~2 KiB for applet state. The crypto stack (signature
    /// and hash contexts while a command runs) is not counted: a card keeps those in the
    /// crypto co-processor's memory.
    pub const fn ram_state_size() -> usize {
        core::mem::size_of::<Io>() + core::mem::size_of::<Session>()
    }

    /// The public-key operations performed since the last call (measurement instrumentation),
    /// and resets the count.
    pub fn take_crypto_ops(&mut self) -> crate::CryptoOps {
        let ops = self.core.ops.snapshot();
        self.core.ops.clear();
        ops
    }

    /// Persistent memory: allocated bytes and what is in use (fixed fields, listed servers
    /// and originators, stored log records).
    pub fn persistent_usage(&self) -> Result<PersistentUsage, CardError> {
        let p = &self.core.p;
        let st = crate::ring::state(p)?;
        let mut servers = 0;
        crate::tables::for_each_server(p, |_, _, _| {
            servers += 1;
            Ok(())
        })?;
        let mut originators = 0;
        crate::tables::for_each_originator(p, |_, _| {
            originators += 1;
            Ok(())
        })?;
        let records = (st.next as usize).min(crate::layout::LOG_CAPACITY);
        let fixed = crate::layout::O_SERVERS;
        let in_use = fixed
            + servers * crate::layout::SERVER_LEN
            + originators * crate::layout::ORIGINATOR_LEN
            + 2
            + crate::layout::POLICY_MAX
            + records * crate::layout::RECORD_LEN;
        Ok(PersistentUsage {
            allocated: crate::layout::PERSISTENT_SIZE,
            in_use,
            log_records: records,
            servers,
            originators,
        })
    }

    /// Processes one command APDU and writes the response (data, then SW1-SW2) into `out`;
    /// returns the number of bytes written. `out` must hold at least 2 bytes; response data
    /// beyond `out.len() - 2` (or beyond Ne) waits for GET RESPONSE (`61xx`).
    pub fn process(&mut self, apdu: &[u8], out: &mut [u8]) -> usize {
        let cap = out.len().saturating_sub(2);
        if out.len() < 2 {
            return 0;
        }
        let (n, sw) = match self.step(apdu, &mut out[..cap]) {
            Ok(r) => r,
            Err(e) => {
                // A failed persistent step must not leave a transaction open.
                (0, e.status_word())
            }
        };
        out[n..n + 2].copy_from_slice(&sw.to_bytes());
        n + 2
    }

    /// Like [`process`](Self::process) but also returns the error behind a failure status
    /// word, for hosts that want to log the precise reason.
    pub fn process_detailed(&mut self, apdu: &[u8], out: &mut [u8]) -> (usize, Option<CardError>) {
        let cap = out.len().saturating_sub(2);
        if out.len() < 2 {
            return (0, Some(CardError::WrongLength));
        }
        let (n, sw, err) = match self.step(apdu, &mut out[..cap]) {
            Ok((n, sw)) => (n, sw, None),
            Err(e) => (0, e.status_word(), Some(e)),
        };
        out[n..n + 2].copy_from_slice(&sw.to_bytes());
        (n + 2, err)
    }

    fn step(&mut self, apdu: &[u8], out: &mut [u8]) -> Result<(usize, StatusWord), CardError> {
        let cmd = Command::parse(apdu).map_err(|_| CardError::WrongLength)?;
        // Only the first interindustry class (00/10) and its proprietary twin (80/90).
        if cmd.cla & 0x60 != 0 {
            return Err(CardError::ClaNotSupported);
        }
        if cmd.channel() != 0 {
            return Err(CardError::ChannelNotSupported);
        }
        if cmd.secure_messaging() {
            return Err(CardError::SecureMessagingNotSupported);
        }
        // GET RESPONSE continues the pending response (ISO/IEC 7816-4 §7.6.1).
        if cmd.ins == ins::GET_RESPONSE && !cmd.proprietary() {
            if cmd.p1 != 0 || cmd.p2 != 0 {
                return Err(CardError::WrongP1P2);
            }
            if self.io.off >= self.io.end {
                return Err(CardError::Conditions("no response data pending"));
            }
            return Ok(self.deliver(cmd.ne, out));
        }
        // Any other command drops what GET RESPONSE would have sent.
        self.io.off = 0;
        self.io.end = 0;

        if cmd.ins == ins::SELECT && !cmd.proprietary() {
            self.abort_chain();
            let n = self.select(&cmd)?;
            self.io.end = n as u16;
            return Ok(self.deliver(cmd.ne, out));
        }
        if !self.core.session.selected {
            return Err(CardError::Conditions("applet not selected"));
        }

        // Command chaining, ISO/IEC 7816-4 §5.4.1: accumulate, then run the last command.
        let header = [cmd.ins, cmd.p1, cmd.p2];
        if let Some(h) = self.io.chain {
            if h != header {
                self.abort_chain();
                return Err(CardError::ChainBroken);
            }
        } else {
            self.io.len = 0;
        }
        let start = usize::from(self.io.len);
        let end = start + cmd.data.len();
        if end > IO_CAP {
            self.abort_chain();
            return Err(CardError::WrongLength);
        }
        self.io.buf[start..end].copy_from_slice(cmd.data);
        if cmd.chained() {
            if !chaining_allowed(cmd.ins) {
                // ISO/IEC 7816-4 §5.6 table 6: `6884`, command chaining not supported.
                self.abort_chain();
                return Err(CardError::ChainingNotSupported);
            }
            self.io.len = end as u16;
            self.io.chain = Some(header);
            return Ok((0, StatusWord::OK));
        }
        self.io.chain = None;
        self.io.len = 0;

        let n = crate::commands::dispatch(&mut self.core, &cmd, &mut self.io.buf, end)?;
        // 6Cxx (ISO/IEC 7816-4 §5.6): a short Le below the exact length of an answer that
        // fits one short response, for commands that may simply be repeated.
        if let Some(ne) = cmd.ne
            && !cmd.extended
            && ne < n
            && n <= 256
            && idempotent(cmd.ins)
        {
            return Ok((0, StatusWord::wrong_le(n)));
        }
        self.io.off = 0;
        self.io.end = n as u16;
        Ok(self.deliver(cmd.ne, out))
    }

    fn abort_chain(&mut self) {
        self.io.chain = None;
        self.io.len = 0;
    }

    /// Sends as much of the pending response as Ne and `out` allow; `61xx` announces the rest.
    fn deliver(&mut self, ne: Option<usize>, out: &mut [u8]) -> (usize, StatusWord) {
        let avail = usize::from(self.io.end - self.io.off);
        if avail == 0 {
            self.io.off = 0;
            self.io.end = 0;
            return (0, StatusWord::OK);
        }
        // No Le (case 3, as a T=0 case-4 command arrives): data waits for GET RESPONSE.
        let n = avail.min(ne.unwrap_or(0)).min(out.len());
        let off = usize::from(self.io.off);
        out[..n].copy_from_slice(&self.io.buf[off..off + n]);
        self.io.off += n as u16;
        let left = avail - n;
        if left == 0 {
            self.io.off = 0;
            self.io.end = 0;
            (n, StatusWord::OK)
        } else {
            (n, StatusWord::bytes_remaining(left))
        }
    }

    /// SELECT by DF name (AID), ISO/IEC 7816-4 §11.2.2; P1 `04`, P2 `00` (first or only
    /// occurrence, return FCI — here: nothing, or the applet version when Le is present).
    fn select(&mut self, cmd: &Command<'_>) -> Result<usize, CardError> {
        if cmd.p1 != 0x04 || (cmd.p2 & 0xF3) != 0x00 {
            return Err(CardError::WrongP1P2);
        }
        // A partial AID selects by prefix (ISO/IEC 7816-4 §12.2.2), at least the RID-part.
        if cmd.data.len() < 5 || cmd.data.len() > AID.len() || AID[..cmd.data.len()] != *cmd.data {
            self.core.session.selected = false;
            return Err(CardError::AppletNotFound);
        }
        // Re-selection ends the session's authentication state (Java Card: deselect).
        let nonce = self.core.session.nonce;
        self.reset();
        self.core.session.nonce = nonce;
        self.core.session.selected = true;
        // FCI proprietary template (tag A5) with the applet version and life cycle.
        let life = match self.core.p.lifecycle()? {
            Lifecycle::Blank => 0,
            Lifecycle::Personalizing => 1,
            Lifecycle::Operational => 2,
        };
        let fci = [
            0x6F,
            0x09,
            0xA5,
            0x07,
            0x80,
            0x02,
            APPLET_VERSION.0,
            APPLET_VERSION.1,
            0x81,
            0x01,
            life,
        ];
        self.io.buf[..fci.len()].copy_from_slice(&fci);
        Ok(if cmd.ne.is_some() { fci.len() } else { 0 })
    }
}

/// Commands whose data may exceed one short APDU.
fn chaining_allowed(ins: u8) -> bool {
    matches!(
        ins,
        ins::STORE_DATA
            | ins::RECORD_CONSENT
            | ins::AUTHORIZE_UPDATE
            | ins::PAYLOAD
            | ins::REPORT_RESULT
            | ins::READ_LOG
            | ins::ACK_LOG
            | ins::ADMIN
    )
}

/// Commands with no side effect that a terminal may repeat after `6Cxx`.
fn idempotent(ins: u8) -> bool {
    matches!(ins, ins::GET_DATA | ins::GET_CHALLENGE)
}
