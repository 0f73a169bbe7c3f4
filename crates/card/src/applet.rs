//! The applet: one entry point, [`Applet::process`], takes a command APDU and writes the
//! response (data + status word) into a caller-provided buffer. Everything else — the
//! response path (61xx + GET RESPONSE, 6Cxx), command chaining, dispatch — lives here; the
//! commands themselves live in their own modules.

use crate::apdu::Command;
use crate::layout::{Lifecycle, Persist};
pub(crate) use crate::platform::Platform;
use crate::platform::SoftwareSha256;
use crate::store::Store;
use crate::{CardError, StatusWord};

/// Capacity of the applet's transient I/O buffer: the largest command data (after chaining)
/// and the largest response it builds. Java Card: one `CLEAR_ON_DESELECT` byte array.
pub const IO_CAP: usize = 1536;

/// The applet's AID: a proprietary RID-less AID (ISO/IEC 7816-5 category `F`), "simfota" +
/// version 1.
pub const AID: [u8; 9] = [0xF0, 0x73, 0x69, 0x6D, 0x66, 0x6F, 0x74, 0x61, 0x01];

/// The applet version reported in card info (major, minor). 1.1: ACKNOWLEDGE LOG also takes
/// an acknowledgement bound to the export page it answers (`docs/apdu.md`), which servers use
/// from this version on.
pub const APPLET_VERSION: (u8, u8) = (1, 1);

/// Instruction bytes (see `docs/apdu.md`).
pub mod ins {
    /// SELECT (ISO/IEC 7816-4 §11.2.2), CLA `00`.
    pub const SELECT: u8 = 0xA4;
    /// MANAGE CHANNEL (ISO/IEC 7816-4 §11.1.2), CLA `00`: opens and closes logical channels.
    pub const MANAGE_CHANNEL: u8 = 0x70;
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
    /// GET DATA (ISO/IEC 7816-4, interindustry INS `CA`), CLA `00` or `80`: P1-P2 names the object (card
    /// info, servers, policy, ...).
    pub const GET_DATA: u8 = 0xCA;
    /// STORE DATA (GlobalPlatform Card Specification §11.11), CLA `80`: personalization.
    pub const STORE_DATA: u8 = 0xE2;
    /// BIND TERMINAL, CLA `80`: the device tells its IMEI at session open. (`80 10` would be
    /// ETSI TS 102 221 TERMINAL PROFILE: `docs/apdu.md`, "Instruction map".)
    pub const BIND_TERMINAL: u8 = 0x52;
    /// AUTHORIZE UPDATE, CLA `80`: delivery token + SUIT envelope.
    pub const AUTHORIZE_UPDATE: u8 = 0x54;
    /// RECORD CONSENT, CLA `80`: the user's answer for an unauthorized server.
    pub const RECORD_CONSENT: u8 = 0x56;
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
    pub const GET_RECEIPT: u8 = 0x58;
}

/// Logical channels open at once, the basic channel included. Their numbers may be any of
/// 0-19 (ISO/IEC 7816-4 §5.1.1: the first interindustry class codes 0-3, the further one 4-19);
/// each open channel takes one slot of per-channel state (`docs/card.md`, RAM).
pub const CHANNEL_SLOTS: usize = 4;

/// The highest logical channel number a class byte can name (ISO/IEC 7816-4 §5.1.1).
pub const MAX_CHANNEL: u8 = 19;

/// The transient I/O state: buffer, chaining and the pending response. One buffer serves
/// every channel: commands arrive one at a time.
pub(crate) struct Io {
    pub(crate) buf: [u8; IO_CAP],
    /// Bytes of command data accumulated by a chain in progress.
    len: u16,
    /// Header (INS, P1, P2) of the chain in progress.
    chain: Option<[u8; 3]>,
    /// The channel slot the chain in progress came on.
    chain_slot: u8,
    /// Slots (bit per slot) whose chain a command on another channel broke: their next
    /// command answers `6883`, as the card cannot tell where their chain would start again.
    broken: u8,
    /// Pending response: `buf[off..end]` still to be sent by GET RESPONSE, on `pending_slot`.
    off: u16,
    end: u16,
    pending_slot: u8,
}

/// Card-digest streaming state (RAM only: a reset restarts the stream from byte 0). One
/// stream at a time on the card, owned by the channel it started on. `H` is the platform's
/// incremental SHA-256.
pub(crate) struct Stream<H> {
    pub(crate) hasher: H,
    pub(crate) count: u64,
    /// The channel slot that started it.
    pub(crate) slot: u8,
}

/// A question to the user about an unauthorized server, bound to one AUTHORIZE UPDATE
/// request and to the channel it was asked on.
#[derive(Clone, Copy)]
pub(crate) struct Consent {
    /// SHA-256 of the AUTHORIZE UPDATE data this consent is about.
    pub(crate) request: [u8; 32],
    /// Whether a PIN confirmation is required by the policy.
    pub(crate) needs_pin: bool,
    /// The channel slot it was asked on (its answer and PIN status are that channel's).
    pub(crate) slot: u8,
}

/// The state of one logical channel (ISO/IEC 7816-4 §5.1.1 and §11.1.2: each channel has its
/// own current selection and its own security status). Byte arrays rather than integers keep
/// the slot free of alignment padding.
#[derive(Clone, Copy)]
pub(crate) struct ChannelSession {
    /// Whether the channel is open (the basic channel always is).
    open: bool,
    /// Its number, 0-19.
    number: u8,
    /// Whether the applet is selected on it.
    pub(crate) selected: bool,
    /// The outstanding one-time nonce (ISO/IEC 7816-4 GET CHALLENGE).
    pub(crate) nonce: Option<[u8; 16]>,
    /// The IMEI the device bound at session open.
    pub(crate) imei: Option<[u8; crate::layout::IMEI_LEN]>,
    /// The device's clock as it stated it at session open (untrusted, logged as is),
    /// big-endian seconds.
    device_time: Option<[u8; 8]>,
    /// Whether the PIN was verified on this channel.
    pub(crate) pin_verified: bool,
}

impl ChannelSession {
    const CLOSED: Self = Self {
        open: false,
        number: 0,
        selected: false,
        nonce: None,
        imei: None,
        device_time: None,
        pin_verified: false,
    };

    /// A channel just opened: nothing bound, nothing verified.
    const fn opened(number: u8, selected: bool) -> Self {
        Self {
            open: true,
            number,
            selected,
            ..Self::CLOSED
        }
    }

    /// The device's clock as bound, seconds since the Unix epoch.
    pub(crate) fn device_time(&self) -> Option<u64> {
        self.device_time.map(u64::from_be_bytes)
    }

    pub(crate) fn set_device_time(&mut self, time: Option<u64>) {
        self.device_time = time.map(u64::to_be_bytes);
    }
}

/// Session state in RAM: dies with a reset or power loss (Java Card: `CLEAR_ON_RESET`).
pub(crate) struct Session<H> {
    /// Per-channel state; slot 0 is the basic channel.
    channels: [ChannelSession; CHANNEL_SLOTS],
    /// The slot of the channel the command being processed came on.
    current: u8,
    /// The last consent question, on the channel it was asked on.
    pub(crate) consent: Option<Consent>,
    /// Card-digest streaming in progress, on the channel it started on.
    pub(crate) stream: Option<Stream<H>>,
    /// The export page READ LOG answered last, on the channel it answered on, which one
    /// acknowledgement may answer instead of a fresh nonce (ACKNOWLEDGE LOG). One for the
    /// card, not one per channel: the RAM budget below.
    pub(crate) export: Option<crate::logcmd::ExportBinding>,
}

impl<H> Session<H> {
    const fn new() -> Self {
        let mut channels = [ChannelSession::CLOSED; CHANNEL_SLOTS];
        channels[0] = ChannelSession::opened(0, false);
        Self {
            channels,
            current: 0,
            consent: None,
            stream: None,
            export: None,
        }
    }

    /// The state of the channel the current command came on.
    pub(crate) fn chan(&self) -> &ChannelSession {
        &self.channels[usize::from(self.current)]
    }

    /// The state of the channel the current command came on, mutably.
    pub(crate) fn chan_mut(&mut self) -> &mut ChannelSession {
        &mut self.channels[usize::from(self.current)]
    }

    /// The slot of the channel the current command came on.
    pub(crate) fn current(&self) -> u8 {
        self.current
    }

    /// The consent question asked on this channel, if any.
    pub(crate) fn consent_here(&self) -> Option<Consent> {
        self.consent.filter(|c| c.slot == self.current)
    }

    /// The payload stream started on this channel, if any.
    pub(crate) fn stream_here(&mut self) -> Option<&mut Stream<H>> {
        let current = self.current;
        self.stream.as_mut().filter(|s| s.slot == current)
    }

    /// Ends what this channel started: its consent question and its payload stream.
    pub(crate) fn end_channel_questions(&mut self) {
        let current = self.current;
        if self.consent.is_some_and(|c| c.slot == current) {
            self.consent = None;
        }
        if self.stream.as_ref().is_some_and(|s| s.slot == current) {
            self.stream = None;
        }
    }

    /// The slot of open channel `number`.
    fn slot_of(&self, number: u8) -> Option<u8> {
        (0..CHANNEL_SLOTS as u8).find(|&i| {
            let c = &self.channels[usize::from(i)];
            c.open && c.number == number
        })
    }

    /// A slot no open channel uses.
    fn free_slot(&self) -> Option<u8> {
        (1..CHANNEL_SLOTS as u8).find(|&i| !self.channels[usize::from(i)].open)
    }
}

// The ATR's card capabilities announce the slot count in three bits (ISO/IEC 7816-4
// §8.1.1.2.7: y + 1 channels, y ≤ 7).
const _: () = assert!(CHANNEL_SLOTS >= 2 && CHANNEL_SLOTS <= 8);

// Budget (issue 3 item 10): the applet's RAM state fits 2 KiB, checked when the crate
// compiles (for the host and the card target alike), with the software platform's hash
// context (a card keeps its own in the crypto co-processor).
const _: () = assert!(
    core::mem::size_of::<Io>() + core::mem::size_of::<Session<SoftwareSha256>>() <= 2048,
    "applet RAM state exceeds 2 KiB"
);

/// Everything a command handler may touch besides the I/O buffer.
pub(crate) struct Core<S, P: Platform> {
    pub(crate) p: Persist<S>,
    pub(crate) platform: P,
    pub(crate) session: Session<P::Sha256>,
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
pub struct Applet<S, P: Platform> {
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
                chain_slot: 0,
                broken: 0,
                off: 0,
                end: 0,
                pending_slot: 0,
            },
        }
    }

    /// A card reset or power cycle: every RAM object is cleared (logical channels other than
    /// the basic one, selection, nonces, bound IMEIs, PIN status, consent, streaming,
    /// chaining, pending response); persistent state stays.
    pub fn reset(&mut self) {
        self.core.session = Session::new();
        self.io.len = 0;
        self.io.chain = None;
        self.io.broken = 0;
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
        core::mem::size_of::<Io>() + core::mem::size_of::<Session<P::Sha256>>()
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
        // The interindustry class codings and their proprietary twins (ISO/IEC 7816-4 §5.1.1).
        let channel = cmd.channel().ok_or(CardError::ClaNotSupported)?;
        if cmd.secure_messaging() {
            return Err(CardError::SecureMessagingNotSupported);
        }
        // A command on a channel that is not open (ISO/IEC 7816-4 §5.6, `6881`).
        let slot = self
            .core
            .session
            .slot_of(channel)
            .ok_or(CardError::ChannelNotSupported)?;
        self.core.session.current = slot;
        let iso = !cmd.proprietary();
        // GET RESPONSE continues the pending response of this channel (ISO/IEC 7816-4 §7.6.1).
        if cmd.ins == ins::GET_RESPONSE && iso {
            if cmd.chained() {
                return Err(CardError::ChainingNotSupported);
            }
            if cmd.p1 != 0 || cmd.p2 != 0 {
                return Err(CardError::WrongP1P2);
            }
            if self.io.off >= self.io.end || self.io.pending_slot != slot {
                return Err(CardError::Conditions("no response data pending"));
            }
            return Ok(self.deliver(cmd.ne, out));
        }
        // Any other command drops what GET RESPONSE would have sent (the buffer is shared).
        self.io.off = 0;
        self.io.end = 0;
        self.io.pending_slot = slot;
        // A command on another channel ends a chain in progress: the data of one chain is in
        // the buffer. The chain's own channel hears it at its next command.
        if self.io.chain.is_some() && self.io.chain_slot != slot {
            self.io.broken |= 1 << self.io.chain_slot;
            self.abort_chain();
        }

        if iso && matches!(cmd.ins, ins::SELECT | ins::MANAGE_CHANNEL) {
            self.io.broken &= !(1 << slot);
            self.abort_chain();
            if cmd.chained() {
                // ISO/IEC 7816-4 §5.6 table 6: `6884`, command chaining not supported.
                return Err(CardError::ChainingNotSupported);
            }
            let n = if cmd.ins == ins::SELECT {
                self.select(&cmd)?
            } else {
                self.manage_channel(&cmd)?
            };
            self.io.end = n as u16;
            return Ok(self.deliver(cmd.ne, out));
        }
        if self.io.broken & (1 << slot) != 0 {
            self.io.broken &= !(1 << slot);
            return Err(CardError::ChainBroken);
        }
        if !self.core.session.chan().selected {
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
            self.io.chain_slot = slot;
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
    /// Runs on the channel it came on: that channel's selection and session only.
    fn select(&mut self, cmd: &Command<'_>) -> Result<usize, CardError> {
        if cmd.p1 != 0x04 || (cmd.p2 & 0xF3) != 0x00 {
            return Err(CardError::WrongP1P2);
        }
        // A partial AID selects by prefix (ISO/IEC 7816-4 §12.2.2), at least the RID-part.
        // No match: the current selection stays as it was (ISO/IEC 7816-4 §11.2.2).
        if cmd.data.len() < 5 || cmd.data.len() > AID.len() || AID[..cmd.data.len()] != *cmd.data {
            return Err(CardError::AppletNotFound);
        }
        // Re-selection ends the channel's authentication state (Java Card: deselect), but
        // keeps its outstanding nonce and the export page an acknowledgement may answer.
        let session = &mut self.core.session;
        session.end_channel_questions();
        let chan = session.chan_mut();
        *chan = ChannelSession {
            nonce: chan.nonce,
            ..ChannelSession::opened(chan.number, true)
        };
        self.io.buf = [0; IO_CAP];
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

    /// MANAGE CHANNEL, ISO/IEC 7816-4 §11.1.2: P1 `00` opens a channel (P2 `00`: the card
    /// picks the number and answers it in one byte; P2 1-19: that number), P1 `80` closes
    /// channel P2. Status words as a Java Card runtime answers them (JCRE §4.5.1, §4.6.1).
    fn manage_channel(&mut self, cmd: &Command<'_>) -> Result<usize, CardError> {
        if !cmd.data.is_empty() {
            return Err(CardError::WrongLength);
        }
        if !matches!(cmd.p1, 0x00 | 0x80) || cmd.p2 > MAX_CHANNEL {
            return Err(CardError::FunctionNotSupported);
        }
        let session = &mut self.core.session;
        if cmd.p1 == 0x80 {
            // The basic channel cannot be closed.
            if cmd.p2 == 0 {
                return Err(CardError::FunctionNotSupported);
            }
            let Some(slot) = session.slot_of(cmd.p2) else {
                return Err(CardError::NothingToClose);
            };
            // Everything the channel held goes with it.
            let origin = session.current;
            session.current = slot;
            session.end_channel_questions();
            session.current = origin;
            if session.export.is_some_and(|e| e.slot() == slot) {
                session.export = None;
            }
            session.channels[usize::from(slot)] = ChannelSession::CLOSED;
            self.io.broken &= !(1 << slot);
            if self.io.chain.is_some() && self.io.chain_slot == slot {
                self.abort_chain();
            }
            return Ok(0);
        }
        let number = match cmd.p2 {
            0 => (1..=MAX_CHANNEL)
                .find(|&n| session.slot_of(n).is_none())
                .ok_or(CardError::FunctionNotSupported)?,
            n if session.slot_of(n).is_some() => return Err(CardError::WrongP1P2),
            n => n,
        };
        let Some(slot) = session.free_slot() else {
            // No room for another channel's state: `6A81` when the card picks the number,
            // `6A86` for the number asked for (JCRE §4.5.1).
            return Err(if cmd.p2 == 0 {
                CardError::FunctionNotSupported
            } else {
                CardError::WrongP1P2
            });
        };
        // Opened from another logical channel, the new one starts with that channel's
        // selection; from the basic channel, with none (this applet is not the card's default
        // application). Either way with a session of its own.
        let selected = session.current != 0 && session.chan().selected;
        session.channels[usize::from(slot)] = ChannelSession::opened(number, selected);
        if cmd.p2 == 0 {
            self.io.buf[0] = number;
            return Ok(1);
        }
        Ok(0)
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
