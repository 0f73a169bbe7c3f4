//! READ LOG and ACKNOWLEDGE LOG (design §4 step 9, R4, R12): only a listed server with the
//! right, with a fresh card nonce, can read (an encrypted, card-signed page) or free space.

use simfota_wire::{
    ExportHeader, LogAck, LogEntry, LogReadRequest, PublicKey, Rights, build_export_with,
};

use crate::applet::{Core, IO_CAP, Platform};
use crate::crypto::{self, LIMITS};
use crate::layout::{ICCID_MAX, O_ICCID};
use crate::store::Store;
use crate::update::check_nonce;
use crate::{CardError, Reason, ring, tables};

/// Bytes of an export page besides its records (COSE heads, recipient, signature, header).
const EXPORT_OVERHEAD: usize = 300;
/// Bytes each record takes in an export page (record + bstr head).
const EXPORT_PER_RECORD: usize = LogEntry::RECORD_LEN + 3;

/// Most records one export page carries: what fits the I/O buffer, within the wire limit.
pub const PAGE_ENTRIES: u32 = {
    let fit = ((IO_CAP - EXPORT_OVERHEAD) / EXPORT_PER_RECORD) as u32;
    let limit = simfota_wire::Limits::CARD.max_export_entries;
    if fit < limit { fit } else { limit }
};

/// Finds `id`'s key if it is listed with `right`.
fn server_key_with<S: Store>(
    core: &Core<S, impl Platform>,
    id: &str,
    right: Rights,
    refusal: Reason,
) -> Result<PublicKey, CardError> {
    let s = tables::find_server(&core.p, id)?.ok_or(CardError::Refused(refusal))?;
    if !Rights(s.rights).contains(right) {
        return Err(CardError::Refused(refusal));
    }
    PublicKey::from_sec1(&s.key).map_err(|_| CardError::Internal("stored server key"))
}

/// READ LOG (CLA `80`, INS `1A`, P1-P2 `0000`): data = a server-signed LogReadRequest
/// (first sequence number, maximum count, the card's nonce). Checks in order: server listed
/// with the log-read right, signature, nonce (consumed). Answers one export page: at most
/// [`PAGE_ENTRIES`] records from `max(first, oldest still stored)`, encrypted to that server
/// and signed by the card. The server asks again (new nonce) from the next sequence number.
pub(crate) fn read_log<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    let nonce = core.session.chan_mut().nonce.take();
    let signed = LogReadRequest::decode(&io[..n], &LIMITS)
        .map_err(|_| CardError::WrongData("log-read request"))?;
    let claimed = signed.dangerous_unverified().server;
    let key = server_key_with(
        core,
        claimed.as_str(),
        Rights::LOG_READ,
        Reason::LogReadNotAuthorized,
    )?;
    core.ops.verify();
    let req = signed
        .verify_with(&crypto::Via(&core.platform), &key)
        .map_err(|_| CardError::Refused(Reason::RequestSignature))?;
    check_nonce(nonce, &req.nonce)?;

    let st = ring::state(&core.p)?;
    let first = req.first_seq.max(st.oldest()).min(st.next);
    let count = req.max_count.min(PAGE_ENTRIES).min(st.next - first);
    let mut iccid = [0u8; ICCID_MAX];
    let len = core.p.lv_at(O_ICCID, ICCID_MAX, &mut iccid)?.len();
    let iccid = core::str::from_utf8(&iccid[..len])
        .ok()
        .and_then(|s| simfota_wire::Iccid::parse(s).ok())
        .ok_or(CardError::Internal("stored ICCID"))?;
    let header = ExportHeader {
        iccid,
        nonce: req.nonce,
        first_seq: first,
        count,
        chain_head: simfota_wire::Digest(st.head),
        log_end: st.next,
    };
    // A page that shows an open refusal tally seals it first: what a server has seen never
    // changes (a later refusal starts a new record instead of rewriting this one).
    if count > 0 && first + count == st.next && crypto::tally_open(&core.p)? {
        core.p.transaction(crypto::seal_tally)?;
    }
    let card_key = crypto::card_key(&core.p)?;
    let kid = req.server;
    core.ops.ecdh();
    core.ops.sign();
    let Core { p, platform, .. } = core;
    let mut crypto = crypto::CardExport {
        platform,
        key: card_key,
    };
    build_export_with(
        &mut io[..IO_CAP],
        &header,
        &key,
        kid.as_str().as_bytes(),
        &mut crypto,
        |seq, slot| ring::read(p, seq, slot).is_ok(),
    )
    .map_err(|_| CardError::Internal("export page does not fit the I/O buffer"))
}

/// ACKNOWLEDGE LOG (CLA `80`, INS `1C`, P1-P2 `0000`): data = a server-signed LogAck ("I
/// stored every entry up to and including N", with the card's nonce). Checks: server listed
/// with the log-ack right, signature, nonce (consumed), N below the log end. Frees the slots
/// of entries 0..=N.
pub(crate) fn ack_log<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    let nonce = core.session.chan_mut().nonce.take();
    let signed = LogAck::decode(&io[..n], &LIMITS)
        .map_err(|_| CardError::WrongData("log acknowledgement"))?;
    let claimed = signed.dangerous_unverified().server;
    let key = server_key_with(
        core,
        claimed.as_str(),
        Rights::LOG_ACK,
        Reason::LogAckNotAuthorized,
    )?;
    core.ops.verify();
    let ack = signed
        .verify_with(&crypto::Via(&core.platform), &key)
        .map_err(|_| CardError::Refused(Reason::RequestSignature))?;
    check_nonce(nonce, &ack.nonce)?;
    let upto = ack
        .up_to_seq
        .checked_add(1)
        .ok_or(CardError::Refused(Reason::AckBeyondLog))?;
    core.p.transaction(|p| ring::acknowledge(p, upto))?;
    Ok(0)
}
