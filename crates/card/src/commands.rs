//! Command dispatch and the session commands (nonce, terminal binding, PIN/PUK).

use crate::CardError;
use crate::apdu::Command;
use crate::applet::{Core, Platform, ins};
use crate::layout::{IMEI_LEN, Lifecycle, PinSlot};
use crate::pin::{self, PIN_LEN, valid_pin_block};
use crate::store::Store;
use rand_core::RngCore;

/// The applet's instructions, recognized once from the class (ISO or proprietary) and INS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instruction {
    GetChallenge,
    Verify,
    ChangeReferenceData,
    ResetRetryCounter,
    GenerateKeyPair,
    StoreData,
    GetData,
    BindTerminal,
    AuthorizeUpdate,
    RecordConsent,
    Payload,
    ReportResult,
    GetReceipt,
    ReadLog,
    AckLog,
    Admin,
}

/// The life-cycle phase an instruction runs in (GlobalPlatform Card Specification §5.3: an
/// applet personalized and locked refuses personalization; one not yet locked serves only it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Until the card is locked (STORE DATA with the last-block bit).
    Personalization,
    /// Once it is locked.
    Operational,
    /// Decided by the handler (GET DATA: card info is readable while personalizing).
    Handler,
}

impl Instruction {
    /// The instruction `cmd` names, or `6D00`.
    fn of(cmd: &Command<'_>) -> Result<Self, CardError> {
        use Instruction::*;
        Ok(match (!cmd.proprietary(), cmd.ins) {
            (true, ins::GET_CHALLENGE) => GetChallenge,
            (true, ins::VERIFY) => Verify,
            (true, ins::CHANGE_REFERENCE_DATA) => ChangeReferenceData,
            (true, ins::RESET_RETRY_COUNTER) => ResetRetryCounter,
            (true, ins::GENERATE_KEY_PAIR) => GenerateKeyPair,
            (false, ins::STORE_DATA) => StoreData,
            // GET DATA in the interindustry class and its proprietary twin alike.
            (_, ins::GET_DATA) => GetData,
            (false, ins::BIND_TERMINAL) => BindTerminal,
            (false, ins::AUTHORIZE_UPDATE) => AuthorizeUpdate,
            (false, ins::RECORD_CONSENT) => RecordConsent,
            (false, ins::PAYLOAD) => Payload,
            (false, ins::REPORT_RESULT) => ReportResult,
            (false, ins::GET_RECEIPT) => GetReceipt,
            (false, ins::READ_LOG) => ReadLog,
            (false, ins::ACK_LOG) => AckLog,
            (false, ins::ADMIN) => Admin,
            _ => return Err(CardError::InsNotSupported),
        })
    }

    fn phase(self) -> Phase {
        use Instruction::*;
        match self {
            GenerateKeyPair | StoreData => Phase::Personalization,
            GetData => Phase::Handler,
            _ => Phase::Operational,
        }
    }

    /// P1-P2 when the instruction takes exactly one value (`docs/apdu.md`); `None` when the
    /// handler reads them (PIN references, GET DATA tags, STORE DATA blocks, PAYLOAD steps,
    /// RECORD CONSENT's answer).
    fn fixed_p1p2(self) -> Option<(u8, u8)> {
        use Instruction::*;
        match self {
            GetChallenge | GenerateKeyPair | BindTerminal | AuthorizeUpdate | ReportResult
            | GetReceipt | ReadLog | AckLog | Admin => Some((0, 0)),
            Verify | ChangeReferenceData | ResetRetryCounter | StoreData | GetData
            | RecordConsent | Payload => None,
        }
    }
}

/// Runs one complete command whose data is `io[..n]`; the response data is written to the
/// start of `io` and its length returned. The life-cycle gate and fixed P1-P2 are checked
/// here, once, in that order, before any handler runs.
pub(crate) fn dispatch<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    let instruction = Instruction::of(cmd)?;
    match (instruction.phase(), core.p.lifecycle()?) {
        (Phase::Operational, Lifecycle::Operational)
        | (Phase::Personalization, Lifecycle::Blank | Lifecycle::Personalizing)
        | (Phase::Handler, _) => {}
        (Phase::Operational, _) => return Err(CardError::Conditions("card not personalized")),
        (Phase::Personalization, Lifecycle::Operational) => {
            return Err(CardError::Conditions(
                "card locked: personalization is over",
            ));
        }
    }
    if let Some((p1, p2)) = instruction.fixed_p1p2() {
        require_p1p2(cmd, p1, p2)?;
    }
    use Instruction::*;
    match instruction {
        GetChallenge => get_challenge(core, io),
        Verify => verify(core, cmd, &io[..n]),
        ChangeReferenceData => change_reference_data(core, cmd, &io[..n]),
        ResetRetryCounter => reset_retry_counter(core, cmd, &io[..n]),
        GenerateKeyPair => crate::perso::generate_key_pair(core, io),
        StoreData => crate::perso::store_data(core, cmd, io, n),
        GetData => crate::info::get_data(core, cmd, io),
        BindTerminal => bind_terminal(core, &io[..n]),
        AuthorizeUpdate => crate::update::authorize(core, io, n),
        RecordConsent => crate::update::record_consent(core, cmd, io, n),
        Payload => crate::update::payload(core, cmd, &io[..n]),
        ReportResult => crate::update::report_result(core, io, n),
        GetReceipt => crate::update::get_receipt(core, io, n),
        ReadLog => crate::logcmd::read_log(core, io, n),
        AckLog => crate::logcmd::ack_log(core, io, n),
        Admin => crate::admin::admin(core, io, n),
    }
}

/// Refuses what needs the operational phase before personalization is locked (the handlers
/// whose phase depends on their parameters: GET DATA).
pub(crate) fn require_operational<S: Store, P: Platform>(
    core: &Core<S, P>,
) -> Result<(), CardError> {
    match core.p.lifecycle()? {
        Lifecycle::Operational => Ok(()),
        _ => Err(CardError::Conditions("card not personalized")),
    }
}

fn require_p1p2(cmd: &Command<'_>, p1: u8, p2: u8) -> Result<(), CardError> {
    if cmd.p1 == p1 && cmd.p2 == p2 {
        Ok(())
    } else {
        Err(CardError::WrongP1P2)
    }
}

/// GET CHALLENGE: a fresh 16-byte one-time nonce, kept in RAM only (dies with a reset) and
/// replacing any earlier one. Every AUTHORIZE UPDATE, READ LOG and ACKNOWLEDGE LOG consumes it.
fn get_challenge<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
) -> Result<usize, CardError> {
    let mut nonce = [0u8; 16];
    core.platform.rng().fill_bytes(&mut nonce);
    core.session.chan_mut().nonce = Some(nonce);
    io[..16].copy_from_slice(&nonce);
    Ok(16)
}

/// BIND TERMINAL: the device states its IMEI (15 ASCII digits, 3GPP TS 23.003 §6.2.1,
/// Luhn check digit), optionally followed by its clock (8 bytes, big-endian seconds since
/// the Unix epoch; untrusted, logged as "device time"). Tokens must name this IMEI for the
/// rest of the session.
fn bind_terminal<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    data: &[u8],
) -> Result<usize, CardError> {
    let (imei, time) = match data.len() {
        IMEI_LEN => (data, None),
        23 => {
            let mut t = [0u8; 8];
            t.copy_from_slice(&data[IMEI_LEN..]);
            (&data[..IMEI_LEN], Some(u64::from_be_bytes(t)))
        }
        _ => return Err(CardError::WrongLength),
    };
    let text = core::str::from_utf8(imei).map_err(|_| CardError::WrongData("IMEI digits"))?;
    simfota_wire::Imei::parse(text).map_err(|_| CardError::WrongData("IMEI: 15 digits, Luhn"))?;
    let mut b = [0u8; IMEI_LEN];
    b.copy_from_slice(imei);
    let chan = core.session.chan_mut();
    chan.imei = Some(b);
    chan.set_device_time(time);
    // A new device binding starts a new question for the user on this channel.
    core.session.end_channel_questions();
    Ok(0)
}

fn pin_slot(p2: u8) -> Result<PinSlot, CardError> {
    match p2 {
        0x81 => Ok(PinSlot::Pin),
        0x82 => Ok(PinSlot::Puk),
        _ => Err(CardError::WrongP1P2),
    }
}

/// VERIFY (ISO/IEC 7816-4 §7.5.6): P2 `81` PIN. Empty data asks for the status: `9000`
/// if verified in this session, else `63Cx` with the tries left (`6983` if blocked).
fn verify<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    data: &[u8],
) -> Result<usize, CardError> {
    if cmd.p1 != 0 || pin_slot(cmd.p2)? != PinSlot::Pin {
        return Err(CardError::WrongP1P2);
    }
    if data.is_empty() {
        let left = core.p.pin_tries(PinSlot::Pin)?;
        return if core.session.chan().pin_verified {
            Ok(0)
        } else if left == 0 {
            Err(CardError::Blocked)
        } else {
            Err(CardError::WrongPin(left))
        };
    }
    core.session.chan_mut().pin_verified = false;
    pin::verify(&mut core.p, PinSlot::Pin, data)?;
    core.session.chan_mut().pin_verified = true;
    Ok(0)
}

/// CHANGE REFERENCE DATA (ISO/IEC 7816-4 §7.5.7): P1 `00`, P2 `81`, data = old PIN block
/// || new PIN block. The old PIN is verified under the try counter first.
fn change_reference_data<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    data: &[u8],
) -> Result<usize, CardError> {
    if cmd.p1 != 0 || pin_slot(cmd.p2)? != PinSlot::Pin {
        return Err(CardError::WrongP1P2);
    }
    if data.len() != 2 * PIN_LEN {
        return Err(CardError::WrongLength);
    }
    let (old, new) = data.split_at(PIN_LEN);
    if !valid_pin_block(new) {
        return Err(CardError::WrongData(
            "new PIN must be 4-8 digits padded with FF",
        ));
    }
    core.session.chan_mut().pin_verified = false;
    pin::verify(&mut core.p, PinSlot::Pin, old)?;
    core.p.transaction(|p| p.set_pin_value(PinSlot::Pin, new))?;
    core.session.chan_mut().pin_verified = true;
    Ok(0)
}

/// RESET RETRY COUNTER (ISO/IEC 7816-4 §7.5.10): P2 `81`; P1 `00` data = PUK || new PIN,
/// P1 `01` data = PUK (counter reset, PIN kept). The PUK has its own try counter; when it
/// reaches zero the PIN can no longer be unblocked (`6983`).
fn reset_retry_counter<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    data: &[u8],
) -> Result<usize, CardError> {
    if pin_slot(cmd.p2)? != PinSlot::Pin {
        return Err(CardError::WrongP1P2);
    }
    let new = match (cmd.p1, data.len()) {
        (0x00, 16) => Some(&data[PIN_LEN..]),
        (0x01, 8) => None,
        (0x00 | 0x01, _) => return Err(CardError::WrongLength),
        _ => return Err(CardError::WrongP1P2),
    };
    if let Some(new) = new
        && !valid_pin_block(new)
    {
        return Err(CardError::WrongData(
            "new PIN must be 4-8 digits padded with FF",
        ));
    }
    pin::verify(&mut core.p, PinSlot::Puk, &data[..PIN_LEN])?;
    core.p.transaction(|p| -> Result<(), CardError> {
        if let Some(new) = new {
            p.set_pin_value(PinSlot::Pin, new)?;
        }
        let max = p.pin_max(PinSlot::Pin)?;
        p.set_pin_tries(PinSlot::Pin, max)?;
        Ok(())
    })?;
    core.session.chan_mut().pin_verified = false;
    Ok(0)
}
