//! Command dispatch and the session commands (nonce, terminal binding, PIN/PUK).

use crate::CardError;
use crate::apdu::Command;
use crate::applet::{Core, Platform, ins};
use crate::layout::{IMEI_LEN, Lifecycle, PinSlot};
use crate::pin::{self, PIN_LEN, valid_pin_block};
use crate::store::Store;
use rand_core::RngCore;

/// Runs one complete command whose data is `io[..n]`; the response data is written to the
/// start of `io` and its length returned.
pub(crate) fn dispatch<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    let iso = !cmd.proprietary();
    match (iso, cmd.ins) {
        (true, ins::GET_CHALLENGE) => get_challenge(core, cmd, io),
        (true, ins::VERIFY) => verify(core, cmd, &io[..n]),
        (true, ins::CHANGE_REFERENCE_DATA) => change_reference_data(core, cmd, &io[..n]),
        (true, ins::RESET_RETRY_COUNTER) => reset_retry_counter(core, cmd, &io[..n]),
        (true, ins::GENERATE_KEY_PAIR) => crate::perso::generate_key_pair(core, cmd, io),
        (false, ins::STORE_DATA) => crate::perso::store_data(core, cmd, io, n),
        (false, ins::GET_DATA) => crate::info::get_data(core, cmd, io),
        (false, ins::BIND_TERMINAL) => bind_terminal(core, cmd, &io[..n]),
        (false, ins::AUTHORIZE_UPDATE) => crate::update::authorize(core, cmd, io, n),
        (false, ins::RECORD_CONSENT) => crate::update::record_consent(core, cmd, io, n),
        (false, ins::PAYLOAD) => crate::update::payload(core, cmd, &io[..n]),
        (false, ins::REPORT_RESULT) => crate::update::report_result(core, cmd, io, n),
        (false, ins::GET_RECEIPT) => crate::update::get_receipt(core, cmd, io, n),
        (false, ins::READ_LOG) => crate::logcmd::read_log(core, cmd, io, n),
        (false, ins::ACK_LOG) => crate::logcmd::ack_log(core, cmd, io, n),
        (false, ins::ADMIN) => crate::admin::admin(core, cmd, io, n),
        _ => Err(CardError::InsNotSupported),
    }
}

/// Refuses commands of the operational phase before personalization is locked.
pub(crate) fn require_operational<S: Store, P: Platform>(
    core: &Core<S, P>,
) -> Result<(), CardError> {
    match core.p.lifecycle()? {
        Lifecycle::Operational => Ok(()),
        _ => Err(CardError::Conditions("card not personalized")),
    }
}

pub(crate) fn require_p1p2(cmd: &Command<'_>, p1: u8, p2: u8) -> Result<(), CardError> {
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
    cmd: &Command<'_>,
    io: &mut [u8],
) -> Result<usize, CardError> {
    require_operational(core)?;
    require_p1p2(cmd, 0, 0)?;
    let mut nonce = [0u8; 16];
    core.platform.rng().fill_bytes(&mut nonce);
    core.session.nonce = Some(nonce);
    io[..16].copy_from_slice(&nonce);
    Ok(16)
}

/// BIND TERMINAL: the device states its IMEI (15 ASCII digits, 3GPP TS 23.003 §6.2.1,
/// Luhn check digit), optionally followed by its clock (8 bytes, big-endian seconds since
/// the Unix epoch; untrusted, logged as "device time"). Tokens must name this IMEI for the
/// rest of the session.
fn bind_terminal<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    data: &[u8],
) -> Result<usize, CardError> {
    require_operational(core)?;
    require_p1p2(cmd, 0, 0)?;
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
    core.session.imei = Some(b);
    core.session.device_time = time;
    // A new device binding starts a new question for the user.
    core.session.consent = None;
    core.session.stream = None;
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
    require_operational(core)?;
    if cmd.p1 != 0 || pin_slot(cmd.p2)? != PinSlot::Pin {
        return Err(CardError::WrongP1P2);
    }
    if data.is_empty() {
        let left = core.p.pin_tries(PinSlot::Pin)?;
        return if core.session.pin_verified {
            Ok(0)
        } else if left == 0 {
            Err(CardError::Blocked)
        } else {
            Err(CardError::WrongPin(left))
        };
    }
    core.session.pin_verified = false;
    pin::verify(&mut core.p, PinSlot::Pin, data)?;
    core.session.pin_verified = true;
    Ok(0)
}

/// CHANGE REFERENCE DATA (ISO/IEC 7816-4 §7.5.7): P1 `00`, P2 `81`, data = old PIN block
/// || new PIN block. The old PIN is verified under the try counter first.
fn change_reference_data<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    data: &[u8],
) -> Result<usize, CardError> {
    require_operational(core)?;
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
    core.session.pin_verified = false;
    pin::verify(&mut core.p, PinSlot::Pin, old)?;
    core.p.transaction(|p| p.set_pin_value(PinSlot::Pin, new))?;
    core.session.pin_verified = true;
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
    require_operational(core)?;
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
    core.session.pin_verified = false;
    Ok(0)
}
