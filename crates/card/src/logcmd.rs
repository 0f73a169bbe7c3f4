//! READ LOG and ACKNOWLEDGE LOG (design §4 step 9, R4, R12): only a listed server with the
//! right, with a fresh card nonce, can read (an encrypted, card-signed page) or free space;
//! the server a page was encrypted to may instead acknowledge it with the page's own nonce,
//! once.

use subtle::ConstantTimeEq;

use simfota_wire::{
    ExportHeader, LogAck, LogEntry, LogReadRequest, PinTries, PublicKey, Rights, ServerId,
    build_export_with,
};

use crate::applet::{Core, IO_CAP, Platform};
use crate::crypto::{self, LIMITS};
use crate::layout::{ICCID_MAX, O_ICCID, PinSlot};
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

/// The PIN retry counter as a page states it: the tries left, and the maximum unless it is
/// unset (0) or below the tries left (then the card does not know it).
fn pin_tries<S: Store>(core: &Core<S, impl Platform>) -> Result<PinTries, CardError> {
    let left = core.p.pin_tries(PinSlot::Pin)?;
    let max = core.p.pin_max(PinSlot::Pin)?;
    Ok(PinTries::new(left, Some(max)).unwrap_or(PinTries::without_max(left)))
}

/// The export page READ LOG answered last: the nonce it answered, the server it was
/// encrypted to and the channel it was read on. One acknowledgement from that server on that
/// channel may carry this nonce instead of a fresh one, which saves the server a GET
/// CHALLENGE round trip per page; any acknowledgement ends the binding, and the next READ LOG
/// replaces it.
#[derive(Clone, Copy)]
pub(crate) struct ExportBinding {
    nonce: [u8; 16],
    server: ServerId,
    slot: u8,
}

impl ExportBinding {
    /// The channel slot the page was read on.
    pub(crate) fn slot(&self) -> u8 {
        self.slot
    }
}

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
/// and signed by the card, with the PIN's tries left (and maximum) as they are now. The page
/// is remembered with its channel ([`ExportBinding`]) for its acknowledgement. The server asks
/// again (new nonce) from the next sequence number.
pub(crate) fn read_log<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    let nonce = core.session.chan_mut().nonce.take();
    // A new request ends what an earlier page allowed, whatever becomes of it.
    core.session.export = None;
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
        pin: Some(pin_tries(core)?),
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
    let n = build_export_with(
        &mut io[..IO_CAP],
        &header,
        &key,
        kid.as_str().as_bytes(),
        &mut crypto,
        |seq, slot| ring::read(p, seq, slot).is_ok(),
    )
    .map_err(|_| CardError::Internal("export page does not fit the I/O buffer"))?;
    core.session.export = Some(ExportBinding {
        nonce: req.nonce.0,
        server: kid,
        slot: core.session.current(),
    });
    Ok(n)
}

/// ACKNOWLEDGE LOG (CLA `80`, INS `1C`, P1-P2 `0000`): data = a server-signed LogAck ("I
/// stored every entry up to and including N", with a nonce). Checks: server listed with the
/// log-ack right, signature, nonce, N below the log end. The nonce is either the nonce of the
/// export page READ LOG answered last, on this channel, when the acknowledging server is the
/// one that page was encrypted to, or the channel's outstanding fresh nonce; both are consumed
/// by any acknowledgement, so none is taken twice. Frees the slots of entries 0..=N.
pub(crate) fn ack_log<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    let nonce = core.session.chan_mut().nonce.take();
    let export = core
        .session
        .export
        .take()
        .filter(|e| e.slot == core.session.current());
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
    if !answers_export(export, &ack) {
        check_nonce(nonce, &ack.nonce)?;
    }
    let upto = ack
        .up_to_seq
        .checked_add(1)
        .ok_or(CardError::Refused(Reason::AckBeyondLog))?;
    core.p.transaction(|p| ring::acknowledge(p, upto))?;
    Ok(0)
}

/// Whether a verified acknowledgement answers the export page `export` remembers: the page's
/// nonce, from the server the page was encrypted to.
fn answers_export(export: Option<ExportBinding>, ack: &LogAck) -> bool {
    export.is_some_and(|e| e.server == ack.server && bool::from(e.nonce.ct_eq(&ack.nonce.0)))
}
