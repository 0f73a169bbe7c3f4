//! Firmware update control: AUTHORIZE UPDATE, RECORD CONSENT, PAYLOAD INTEGRITY and REPORT
//! RESULT (design §4 steps 5-7, R7-R11).
//!
//! The authorization checks run in this order, each with its own refusal reason (see
//! `docs/apdu.md`):
//!
//! | # | check | reason |
//! |---|---|---|
//! | 0a | no other authorized update in progress | `UpdatePending` |
//! | 0b | room in the log for the whole update (3 entries, 4 with a consent) | `LogFull` |
//! | 0c | token and envelope decode | `Malformed` |
//! | 1 | token issuer listed with the firmware-update right (else: the policy decides) | `ServerNotAuthorized`, `ConsentRequired`, `PinConsentRequired` |
//! | 2 | token signature under that server's key | `TokenSignature` |
//! | 3 | the card's nonce is outstanding (it is consumed by this attempt) and equals the token's | `NonceUnavailable`, `NonceMismatch` |
//! | 4 | token ICCID = this card's | `WrongCard` |
//! | 5 | token IMEI = the IMEI bound at session open | `WrongDevice` |
//! | 6 | token `exp` after the trusted time (max of stored time and this token's `iat`), `iat` not after `exp`, `nbf` (if any) not after the trusted time | `TokenExpired`, `TokenNotYetValid` |
//! | 7 | manifest signer is a trusted originator, its signature verifies, and the card processes every SUIT command in it | `OriginatorUnknown`, `ManifestSignature`, `ManifestUnsupported` |
//! | 8 | manifest digest = token's | `ManifestMismatch` |
//! | 9 | vendor-id/class-id allowed by the policy | `ClassNotAllowed` |
//! | 10 | manifest sequence number > installed one | `Rollback` |
//! | 11 | card-digest mode: image size within the policy's cap | `SizeMismatch` |
//!
//! Through an unauthorized server (step 1 fails, policy other than "refuse"), steps 2-6 and
//! 8 do not apply (nothing in the token can be trusted: its names are logged as claims) but
//! 7, 9, 10, 11 and the later integrity check do, within a budget of [`UNVERIFIED_BUDGET`]
//! such updates between acknowledgements (`UnverifiedBudget`). Every decision is recorded in
//! the same transaction as its effects (trusted time, pending update): an authorization, or a
//! refusal of a listed server's fresh token (signature and nonce verified), as a log entry of
//! its own; any other refusal counted in the open refusal tally, naming nothing from the
//! request (docs/card.md, "What no device can do to the log").

use simfota_wire::DeliveryToken;
use simfota_wire::contract::{Integrity, PendingUpdate};
use simfota_wire::cose::PublicKey;
use simfota_wire::{Digest, Imei, Nonce, UpdateId};
use simfota_wire::{Event, FumoResult, LogEntry};
use simfota_wire::{IntegrityMode, Receipt, Rights, UnauthorizedRule, Unverified};
use subtle::ConstantTimeEq;

use crate::apdu::Command;
use crate::applet::{Core, Platform, Stream};
use crate::crypto::{self, LIMITS, ManifestFacts, Via};
use crate::layout::{
    ICCID_MAX, O_ICCID, O_INSTALLED_SEQ, O_PENDING, O_TRUSTED_TIME, O_UNVERIFIED_UPDATES, P_ENTRY,
    P_IMAGE_DIGEST, P_IMAGE_SIZE, P_INTEGRITY, P_SEQUENCE, P_STATE, PENDING_LEN, Persist,
    RECORD_LEN,
};
use crate::platform::Sha256Context as _;
use crate::store::Store;
use crate::{CardError, Reason, ring, tables};

/// Log entries an authorized update may still write: integrity verdict + install result.
const UPDATE_RESERVE: u32 = 2;

/// Updates through unlisted servers (the policy lets the device's user decide) that may be
/// authorized before an authorized server has read and acknowledged the log: each writes up to
/// four entries, so at most half of the 64-entry log holds them and the rest stays for
/// updates through authorized servers (docs/card.md, the log).
pub(crate) const UNVERIFIED_BUDGET: u8 = 8;

const INTEGRITY_NONE: u8 = Integrity::NotChecked.code();
const INTEGRITY_PASSED: u8 = Integrity::Passed.code();
const INTEGRITY_FAILED: u8 = Integrity::Failed.code();

/// Whether an authorized update is in progress.
pub(crate) fn pending_exists<S: Store>(p: &Persist<S>) -> Result<bool, CardError> {
    Ok(p.u8_at(O_PENDING + P_STATE)? == 1)
}

/// Log slots the update in progress still needs.
fn reserved<S: Store>(p: &Persist<S>) -> Result<u32, CardError> {
    if !pending_exists(p)? {
        return Ok(0);
    }
    Ok(if p.u8_at(O_PENDING + P_INTEGRITY)? == INTEGRITY_PASSED {
        1
    } else {
        UPDATE_RESERVE
    })
}

/// Whether an entry outside the pending update's reservation fits.
fn room_for_extra<S: Store>(p: &Persist<S>) -> Result<bool, CardError> {
    Ok(ring::state(p)?.free() > reserved(p)?)
}

fn load_pending_entry<S: Store>(p: &Persist<S>) -> Result<LogEntry, CardError> {
    let mut rec = [0u8; RECORD_LEN];
    p.read(O_PENDING + P_ENTRY, &mut rec)?;
    let mut entry = LogEntry::decode(&rec)
        .map_err(|_| CardError::Internal("pending update record is corrupt"))?;
    // The template for the update's later entries (integrity, result): the free-device flag
    // belongs to the authorization entry only.
    entry.free_device = false;
    Ok(entry)
}

fn card_iccid<S: Store>(p: &Persist<S>, buf: &mut [u8; ICCID_MAX]) -> Result<usize, CardError> {
    Ok(p.lv_at(O_ICCID, ICCID_MAX, buf)?.len())
}

/// AUTHORIZE UPDATE request data: `len(token) (2 bytes, big-endian) || token || envelope`.
fn split_request(data: &[u8]) -> Result<(&[u8], &[u8]), CardError> {
    let [a, b, rest @ ..] = data else {
        return Err(CardError::WrongLength);
    };
    let n = usize::from(u16::from_be_bytes([*a, *b]));
    if n == 0 || n >= rest.len() {
        return Err(CardError::WrongData("token length prefix"));
    }
    Ok(rest.split_at(n))
}

/// Why the checks stopped: the request is refused for a reason (recorded), or the card itself
/// failed (a persistent-memory read) — not the request's fault: answered as that failure
/// (`6581`), and nothing is recorded about the request.
#[derive(Debug)]
enum CheckError {
    Refused(Reason),
    Card(CardError),
}

impl From<Reason> for CheckError {
    fn from(r: Reason) -> Self {
        CheckError::Refused(r)
    }
}

impl From<CardError> for CheckError {
    fn from(e: CardError) -> Self {
        match e {
            CardError::Refused(r) => CheckError::Refused(r),
            e => CheckError::Card(e),
        }
    }
}

impl From<crate::store::StoreError> for CheckError {
    fn from(e: crate::store::StoreError) -> Self {
        CheckError::Card(e.into())
    }
}

/// What one authorization attempt learned, to log it whatever the verdict.
struct Attempt {
    entry: LogEntry,
    /// `iat` of a token whose signature verified (advances the trusted time).
    verified_iat: Option<u64>,
    facts: Option<ManifestFacts>,
    /// The server is not authorized and the free-device policy let the request through:
    /// an authorization is logged as such (`[0, true]`, docs/formats.md §5).
    free_device: bool,
    /// A listed server's token verified and carried the card's outstanding nonce: the
    /// request is that server's, now. Only such refusals get a log entry of their own; the
    /// rest are counted (a device can repeat them at will).
    fresh: bool,
    /// The request came through an unlisted server the policy let the user allow: its
    /// server and update id are claims.
    unlisted: bool,
}

/// Runs checks 0c-11. `consent` is `Some(pin_verified)` when the user already said yes to
/// this very request (RECORD CONSENT).
fn check<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    data: &[u8],
    nonce: Option<[u8; 16]>,
    consent: Option<bool>,
    att: &mut Attempt,
) -> Result<(), CheckError> {
    let p = &core.p;
    let platform = &core.platform;
    let ops = &core.ops;
    let (token_bytes, envelope) = split_request(data).map_err(|_| Reason::Malformed)?;
    let signed = DeliveryToken::decode(token_bytes, &LIMITS).map_err(|_| Reason::Malformed)?;
    let claims = *signed.dangerous_unverified();

    // 1. Server listed with the firmware-update right?
    let server = tables::find_server(p, claims.iss.as_str())?;
    let authorized =
        matches!(server, Some(s) if Rights(s.rights).contains(Rights::FIRMWARE_UPDATE));
    let policy = crypto::policy(p)?;
    if let (true, Some(s)) = (authorized, server) {
        // 2. Token signature.
        let key = PublicKey::from_sec1(&s.key).map_err(|_| Reason::TokenSignature)?;
        ops.verify();
        let token = signed
            .verify_with(&Via(platform), &key)
            .map_err(|_| Reason::TokenSignature)?;
        // A token issued after it expires was never valid (RFC 7519 §4.1.4, §4.1.6): its
        // `iat` is not a time the card takes (it is refused at step 6).
        let consistent = token.iat <= token.exp;
        if consistent {
            att.verified_iat = Some(token.iat);
        }
        // From here on the token's names are the listed server's own words.
        att.entry.update_id = Some(token.cti);
        att.entry.server = Some(token.iss);
        let stored_time = p.u64_at(O_TRUSTED_TIME)?;
        let now = if consistent {
            stored_time.max(token.iat)
        } else {
            stored_time
        };
        att.entry.trusted_time = (now != 0).then_some(now);
        // 3. Nonce: outstanding (consumed by the caller already) and equal.
        let ours = nonce.ok_or(Reason::NonceUnavailable)?;
        if !bool::from(ours.ct_eq(&token.nonce.0)) {
            return Err(Reason::NonceMismatch.into());
        }
        att.fresh = true;
        // 4. ICCID.
        let mut iccid = [0u8; ICCID_MAX];
        let n = card_iccid(p, &mut iccid)?;
        if token.iccid.as_str().as_bytes() != &iccid[..n] {
            return Err(Reason::WrongCard.into());
        }
        // 5. IMEI bound at session open.
        let bound = att.entry.imei.ok_or(Reason::WrongDevice)?;
        if token.imei != bound {
            return Err(Reason::WrongDevice.into());
        }
        att.entry.unverified = Some(Unverified::NONE);
        // 6. Validity window against the trusted time. RFC 8392 §3.1.4 / RFC 7519 §4.1.4:
        // not on or after `exp`; a token issued after it expires (`iat` > `exp`) was never
        // valid. RFC 8392 §3.1.5 / RFC 7519 §4.1.5: not before `nbf`. The profile requires
        // `iat` and `exp` (the token does not decode without them): a delivery must expire.
        if token.exp <= now || !consistent {
            return Err(Reason::TokenExpired.into());
        }
        if token.nbf.is_some_and(|nbf| nbf > now) {
            return Err(Reason::TokenNotYetValid.into());
        }
        // 7. Originator and manifest signature.
        let facts = crypto::verify_manifest(p, platform, ops, envelope, &mut att.entry)??;
        // 8. Manifest digest bound by the token.
        if facts.manifest_digest != token.manifest_digest {
            return Err(Reason::ManifestMismatch.into());
        }
        att.facts = Some(facts);
    } else {
        if policy.unauthorized == UnauthorizedRule::Refuse {
            return Err(Reason::ServerNotAuthorized.into());
        }
        // The user may allow this server: the token's names are claims, logged as such.
        att.unlisted = true;
        att.entry.update_id = Some(claims.cti);
        att.entry.server = Some(claims.iss);
        att.entry.unverified = Some(
            Unverified::SERVER
                .with(Unverified::UPDATE_ID)
                .with(Unverified::IMEI),
        );
        if p.u8_at(O_UNVERIFIED_UPDATES)? >= UNVERIFIED_BUDGET {
            return Err(Reason::UnverifiedBudget.into());
        }
        match policy.unauthorized {
            UnauthorizedRule::WarnConfirm if consent.is_none() => {
                return Err(Reason::ConsentRequired.into());
            }
            UnauthorizedRule::ConfirmWithPin if consent != Some(true) => {
                return Err(Reason::PinConsentRequired.into());
            }
            UnauthorizedRule::FreeDevice => att.free_device = true,
            _ => {}
        }
        att.entry.trusted_time = crypto::trusted_time(p)?;
        // 7. Originator and manifest signature still apply.
        att.facts = Some(crypto::verify_manifest(
            p,
            platform,
            ops,
            envelope,
            &mut att.entry,
        )??);
    }
    let facts = att
        .facts
        .as_ref()
        .ok_or(CardError::Internal("no manifest facts"))?;
    // 9. Vendor/class allowed by the policy.
    if !policy.permits(&facts.vendor, &facts.class) {
        return Err(Reason::ClassNotAllowed.into());
    }
    // 10. Anti-rollback.
    let installed = p.u64_at(O_INSTALLED_SEQ)?;
    if facts.sequence <= installed {
        return Err(Reason::Rollback.into());
    }
    // 11. Card-digest mode: the card must be able to hash the whole image.
    if let IntegrityMode::CardDigest { max_size } = policy.integrity
        && facts.image_size > max_size
    {
        return Err(Reason::SizeMismatch.into());
    }
    Ok(())
}

/// Writes the verdict in one transaction: trusted time, consent entry, decision entry (or
/// the refusal counted in the open tally) and, when allowed, the pending update record.
fn conclude<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    mut att: Attempt,
    verdict: Result<(), Reason>,
    consent: Option<bool>,
) -> Result<usize, CardError> {
    let room = room_for_extra(&core.p)?;
    let platform = &core.platform;
    core.p.transaction(|p| -> Result<(), CardError> {
        if let Some(iat) = att.verified_iat
            && iat > p.u64_at(O_TRUSTED_TIME)?
        {
            p.put_u64(O_TRUSTED_TIME, iat)?;
        }
        match verdict {
            Ok(()) => {
                if let Some(pin_verified) = consent {
                    // R7: the user's consent, written with the decision it led to.
                    let mut e = att.entry;
                    e.event = Event::Consent { pin_verified };
                    crypto::append_entry(p, platform, &mut e)?;
                }
                let facts = att
                    .facts
                    .as_ref()
                    .ok_or(CardError::Internal("no manifest facts"))?;
                att.entry.event = Event::Authorized;
                att.entry.free_device = att.free_device;
                crypto::append_entry(p, platform, &mut att.entry)?;
                if att.unlisted {
                    let n = p.u8_at(O_UNVERIFIED_UPDATES)?;
                    p.put_u8(O_UNVERIFIED_UPDATES, n.saturating_add(1))?;
                }
                let record = att
                    .entry
                    .encode()
                    .map_err(|_| CardError::Internal("log entry does not encode"))?;
                let mut pending = [0u8; PENDING_LEN];
                pending[P_STATE] = 1;
                pending[P_INTEGRITY] = INTEGRITY_NONE;
                pending[P_SEQUENCE..P_SEQUENCE + 8].copy_from_slice(&facts.sequence.to_be_bytes());
                pending[P_IMAGE_SIZE..P_IMAGE_SIZE + 8]
                    .copy_from_slice(&facts.image_size.to_be_bytes());
                pending[P_IMAGE_DIGEST..P_IMAGE_DIGEST + 32].copy_from_slice(&facts.image_digest.0);
                pending[P_ENTRY..P_ENTRY + RECORD_LEN].copy_from_slice(&record);
                p.write(O_PENDING, &pending)?;
            }
            Err(reason) if att.fresh => {
                // A listed server's fresh token: its names are verified facts.
                att.entry.event = Event::Denied(reason.deny_reason());
                crypto::append_entry(p, platform, &mut att.entry)?;
            }
            Err(reason) => {
                // Nothing authenticated this request: count it, name nothing from it.
                let at = crypto::RefusalContext {
                    imei: att.entry.imei,
                    trusted_time: att.entry.trusted_time,
                    device_time: att.entry.device_time,
                };
                crypto::count_refusal(p, platform, reason.deny_reason(), &at, room)?;
            }
        }
        Ok(())
    })?;
    core.session.consent = None;
    if verdict.is_ok() {
        // A new update starts: no stream of an earlier one may count for it.
        core.session.stream = None;
    }
    verdict.map(|()| 0).map_err(CardError::Refused)
}

fn new_attempt<S: Store, P: Platform>(core: &Core<S, P>) -> Result<Attempt, CardError> {
    let mut entry = LogEntry::new(0, Digest::default(), Event::Authorized);
    entry.imei = match core.session.chan().imei {
        Some(b) => Some(
            Imei::parse(core::str::from_utf8(&b).map_err(|_| CardError::Internal("imei"))?)
                .map_err(|_| CardError::Internal("imei"))?,
        ),
        None => None,
    };
    entry.device_time = core.session.chan().device_time();
    entry.trusted_time = crypto::trusted_time(&core.p)?;
    // The bound IMEI is the device's word until a server's token names the same one.
    entry.unverified = Some(Unverified::IMEI);
    Ok(Attempt {
        entry,
        verified_iat: None,
        facts: None,
        free_device: false,
        fresh: false,
        unlisted: false,
    })
}

/// Preconditions shared by AUTHORIZE UPDATE and RECORD CONSENT: terminal bound, no update
/// pending, log room. `Ok(Some(reason))` is a refusal to count; `Err` one that cannot be
/// recorded at all (no terminal bound).
fn preconditions<S: Store, P: Platform>(
    core: &Core<S, P>,
    with_consent: bool,
) -> Result<Option<Reason>, CardError> {
    if core.session.chan().imei.is_none() {
        return Err(CardError::Conditions("bind the terminal (IMEI) first"));
    }
    let st = ring::state(&core.p)?;
    // 0a. One update at a time: the device must end the pending one with a result.
    if pending_exists(&core.p)? {
        return Ok(Some(Reason::UpdatePending));
    }
    // 0b. Room for the decision, the integrity verdict and the result (and a consent).
    let need = 1 + UPDATE_RESERVE + u32::from(with_consent);
    if st.free() < need {
        return Ok(Some(Reason::LogFull));
    }
    Ok(None)
}

/// Records a refusal decided before the checks: counted, naming nothing from the request.
fn refuse_early<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    att: Attempt,
    reason: Reason,
) -> Result<usize, CardError> {
    conclude(core, att, Err(reason), None)
}

/// AUTHORIZE UPDATE (CLA `80`, INS `54`, P1-P2 `0000`): data = `len(token) || token ||
/// envelope` (the SUIT envelope without its payload). Answers `9000` when authorized, `66RR`
/// otherwise.
pub(crate) fn authorize<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    // The nonce is consumed by this attempt whatever happens next, before any persistent
    // write: a power cut cannot leave it usable (it lives in RAM only).
    let nonce = core.session.chan_mut().nonce.take();
    let data = &io[..n];
    let mut att = new_attempt(core)?;
    if let Some(refusal) = preconditions(core, false)? {
        return refuse_early(core, att, refusal);
    }
    let verdict = match check(core, data, nonce, None, &mut att) {
        Ok(()) => Ok(()),
        Err(CheckError::Refused(r)) => Err(r),
        Err(CheckError::Card(e)) => return Err(e),
    };
    if let Err(r @ (Reason::ConsentRequired | Reason::PinConsentRequired)) = verdict {
        // A question for the user, not a decision: remember which request it is about.
        core.session.consent = Some(crate::applet::Consent {
            request: core.platform.sha256(&[data]),
            needs_pin: r == Reason::PinConsentRequired,
            slot: core.session.current(),
        });
        return Err(CardError::Refused(r));
    }
    conclude(core, att, verdict, None)
}

/// RECORD CONSENT (CLA `80`, INS `56`, P2 `00`): the user's answer to `ConsentRequired` /
/// `PinConsentRequired`. P1 `01` = yes, `00` = no; data = the same AUTHORIZE UPDATE data.
/// Yes: the consent (with whether the PIN was verified in this session) and the
/// authorization decision are logged together and the answer is AUTHORIZE UPDATE's. No: a
/// "denied: user declined" entry is logged.
pub(crate) fn record_consent<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    if cmd.p2 != 0 || cmd.p1 > 1 {
        return Err(CardError::WrongP1P2);
    }
    let data = &io[..n];
    let question = core.session.consent_here().ok_or(CardError::Conditions(
        "no consent question pending on this channel",
    ))?;
    let digest = core.platform.sha256(&[data]);
    if digest != question.request {
        return Err(CardError::Conditions("consent is for another request"));
    }
    let yes = cmd.p1 == 1;
    if yes && question.needs_pin && !core.session.chan().pin_verified {
        return Err(CardError::SecurityStatus("verify the PIN first"));
    }
    let mut att = new_attempt(core)?;
    if let Some(refusal) = preconditions(core, yes)? {
        return refuse_early(core, att, refusal);
    }
    if !yes {
        // The device's word alone: counted like any refusal nothing authenticated.
        return conclude(core, att, Err(Reason::UserDeclined), None);
    }
    let pin = core.session.chan().pin_verified;
    let verdict = match check(core, data, None, Some(pin), &mut att) {
        Ok(()) => Ok(()),
        Err(CheckError::Refused(r)) => Err(r),
        Err(CheckError::Card(e)) => return Err(e),
    };
    conclude(core, att, verdict, Some(pin))
}

/// Logs an integrity verdict and stores it with the pending update.
fn integrity_verdict<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    ok: bool,
    reason: Reason,
) -> Result<usize, CardError> {
    core.session.stream = None;
    let already_failed = core.p.u8_at(O_PENDING + P_INTEGRITY)? == INTEGRITY_FAILED;
    if !ok && already_failed {
        // The device may try again (a corrupted download fetched anew), but its failed tries
        // after the first are counted, not logged one by one.
        let room = room_for_extra(&core.p)?;
        let at = crypto::RefusalContext {
            imei: load_pending_entry(&core.p)?.imei,
            trusted_time: crypto::trusted_time(&core.p)?,
            device_time: core.session.chan().device_time(),
        };
        let platform = &core.platform;
        core.p
            .transaction(|p| crypto::count_refusal(p, platform, reason.deny_reason(), &at, room))?;
        return Err(CardError::Refused(reason));
    }
    if !ok && !room_for_extra(&core.p)? {
        // No room beyond the reservation: refuse without a new entry (the result report
        // will log the failure).
        return Err(CardError::Refused(Reason::LogFull));
    }
    let mut entry = load_pending_entry(&core.p)?;
    entry.event = if ok {
        Event::IntegrityOk
    } else {
        Event::IntegrityFailed
    };
    entry.trusted_time = crypto::trusted_time(&core.p)?;
    entry.device_time = core.session.chan().device_time();
    let platform = &core.platform;
    core.p.transaction(|p| -> Result<(), CardError> {
        crypto::append_entry(p, platform, &mut entry)?;
        p.put_u8(
            O_PENDING + P_INTEGRITY,
            if ok {
                INTEGRITY_PASSED
            } else {
                INTEGRITY_FAILED
            },
        )?;
        Ok(())
    })?;
    if ok {
        Ok(0)
    } else {
        Err(CardError::Refused(reason))
    }
}

/// PAYLOAD INTEGRITY (CLA `80`, INS `16`): P1 `00` device digest (data = SHA-256 (32) ||
/// size (8, big-endian)); P1 `01` start streaming, `02` continue, `03` finish (data =
/// payload bytes, any length up to the I/O buffer, chaining allowed). The stream state is in
/// RAM: after a reset the device streams again from byte 0.
pub(crate) fn payload<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    data: &[u8],
) -> Result<usize, CardError> {
    if cmd.p2 != 0 || cmd.p1 > 3 {
        return Err(CardError::WrongP1P2);
    }
    if !pending_exists(&core.p)? {
        return Err(CardError::Refused(Reason::UnknownUpdate));
    }
    if core.p.u8_at(O_PENDING + P_INTEGRITY)? == INTEGRITY_PASSED {
        return Err(CardError::Conditions("integrity already verified"));
    }
    let mut want = [0u8; 32];
    core.p.read(O_PENDING + P_IMAGE_DIGEST, &mut want)?;
    let size = core.p.u64_at(O_PENDING + P_IMAGE_SIZE)?;
    match cmd.p1 {
        0 => {
            if let IntegrityMode::CardDigest { .. } = crypto::policy(&core.p)?.integrity {
                return Err(CardError::Refused(Reason::CardDigestRequired));
            }
            if data.len() != 40 {
                return Err(CardError::WrongLength);
            }
            let got_size = u64::from_be_bytes([
                data[32], data[33], data[34], data[35], data[36], data[37], data[38], data[39],
            ]);
            let same = bool::from(data[..32].ct_eq(&want)) && got_size == size;
            let reason = if got_size != size {
                Reason::SizeMismatch
            } else {
                Reason::IntegrityFailed
            };
            integrity_verdict(core, same, reason)
        }
        p1 => {
            if p1 == 1 {
                // One stream on the card: starting one ends any other channel's.
                core.session.stream = Some(Stream {
                    hasher: core.platform.sha256_start(),
                    count: 0,
                    slot: core.session.current(),
                });
            }
            let stream = core.session.stream_here().ok_or(CardError::Conditions(
                "no payload stream started on this channel",
            ))?;
            stream.count += data.len() as u64;
            if stream.count > size {
                // Longer than signed: fail now rather than hash on.
                return integrity_verdict(core, false, Reason::SizeMismatch);
            }
            stream.hasher.update(data);
            if p1 != 3 {
                return Ok(0);
            }
            let Some(stream) = core.session.stream.take() else {
                return Err(CardError::Conditions("no payload stream started"));
            };
            if stream.count != size {
                // A truncated payload.
                return integrity_verdict(core, false, Reason::SizeMismatch);
            }
            let got = stream.hasher.finish();
            integrity_verdict(core, bool::from(got.ct_eq(&want)), Reason::IntegrityFailed)
        }
    }
}

/// REPORT RESULT (CLA `80`, INS `18`, P1-P2 `0000`): data = FUMO result (2, big-endian) ||
/// device time (8, big-endian, seconds; 0 = unknown) || update id (the token's `cti`).
/// Accepted only for the update this card authorized and that has not ended, from the device
/// it was authorized for; success (2xx) only if integrity passed. Logs "installed" with the
/// result, advances the installed sequence number on success, ends the update, and answers
/// the card-signed receipt.
pub(crate) fn report_result<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    let data = &io[..n];
    if data.len() < 11 {
        return Err(CardError::WrongLength);
    }
    let result = FumoResult(u16::from_be_bytes([data[0], data[1]]));
    let mut t = [0u8; 8];
    t.copy_from_slice(&data[2..10]);
    let device_time = u64::from_be_bytes(t);
    let update_id = &data[10..];
    if !pending_exists(&core.p)? {
        return Err(CardError::Refused(Reason::UnknownUpdate));
    }
    let mut entry = load_pending_entry(&core.p)?;
    if entry.update_id.as_ref().map(|u| u.as_bytes()) != Some(update_id) {
        return Err(CardError::Refused(Reason::UnknownUpdate));
    }
    let bound = core.session.chan().imei;
    if entry
        .imei
        .map(|i| i.as_str().as_bytes() == &bound.unwrap_or([0; 15])[..])
        != Some(true)
    {
        return Err(CardError::Refused(Reason::WrongDevice));
    }
    let success = (200..300).contains(&result.0);
    if success && core.p.u8_at(O_PENDING + P_INTEGRITY)? != INTEGRITY_PASSED {
        return Err(CardError::Refused(Reason::IntegrityNotPassed));
    }
    let sequence = core.p.u64_at(O_PENDING + P_SEQUENCE)?;
    entry.event = Event::Installed(result);
    entry.trusted_time = crypto::trusted_time(&core.p)?;
    entry.device_time = if device_time == 0 {
        None
    } else {
        Some(device_time)
    };
    let platform = &core.platform;
    let (seq, head) = core
        .p
        .transaction(|p| -> Result<(u32, Digest), CardError> {
            let r = crypto::append_entry(p, platform, &mut entry)?;
            if success {
                p.put_u64(O_INSTALLED_SEQ, sequence)?;
            }
            p.write(O_PENDING, &[0u8; PENDING_LEN])?;
            Ok(r)
        })?;
    let update_id = entry.update_id.ok_or(CardError::Internal("update id"))?;
    sign_receipt(core, update_id, result, seq, head, io)
}

/// Signs the receipt `{ICCID, update id, result, log seq, chain head}` with the card key
/// into `io`. A receipt signed again by GET RECEIPT states the same facts as the one REPORT
/// RESULT answered; on a platform that signs deterministically (RFC 6979, the software one)
/// it is the same bytes.
fn sign_receipt<S: Store, P: Platform>(
    core: &Core<S, P>,
    update_id: UpdateId,
    result: FumoResult,
    log_seq: u32,
    chain_head: Digest,
    io: &mut [u8],
) -> Result<usize, CardError> {
    let mut iccid = [0u8; ICCID_MAX];
    let len = card_iccid(&core.p, &mut iccid)?;
    let iccid = core::str::from_utf8(&iccid[..len])
        .ok()
        .and_then(|s| simfota_wire::Iccid::parse(s).ok())
        .ok_or(CardError::Internal("stored ICCID"))?;
    let receipt = Receipt {
        iccid,
        update_id,
        result,
        log_seq,
        chain_head,
    };
    let signer = crypto::CardSigner {
        platform: &core.platform,
        key: crypto::card_key(&core.p)?,
    };
    core.ops.sign();
    receipt
        .sign(&signer, io)
        .map_err(|_| CardError::Internal("receipt does not fit the I/O buffer"))
}

/// GET RECEIPT (CLA `80`, INS `58`, P1-P2 `0000`): data = update id (the token's `cti`).
/// Answers the card-signed receipt of that update again, for a device that crashed between
/// REPORT RESULT and saving its answer (the card refuses a second report).
///
/// Nothing new is stored for this: the receipt is a signed pointer into the log, and the
/// log already holds every fact it states. The card looks for the newest "installed"
/// record of that update still in its slot (newest first, at most the ring's capacity),
/// takes the result from it, its sequence number as `log_seq` and its hash as the chain
/// head REPORT RESULT answered, and signs them again. The record stays in its slot until a
/// server has acknowledged it and the ring wrapped round (design §3: slots are reused only
/// after acknowledgement) — by then that server holds the result from the log itself. The
/// command writes nothing, so it adds no tearing case.
///
/// Refusals: no such record (never reported, reported under another id, or its slot
/// reused) `6A88`; the update was authorized for another device than the bound one `6606`
/// (as REPORT RESULT).
pub(crate) fn get_receipt<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    if n == 0 || n > UpdateId::MAX_LEN {
        return Err(CardError::WrongLength);
    }
    let wanted = UpdateId::new(&io[..n]).map_err(|_| CardError::WrongData("update id"))?;
    let st = ring::state(&core.p)?;
    let mut rec = [0u8; RECORD_LEN];
    let mut seq = st.next;
    let (entry, result) = loop {
        if seq <= st.oldest() {
            return Err(CardError::NotFound);
        }
        seq -= 1;
        ring::read(&core.p, seq, &mut rec)?;
        let entry =
            LogEntry::decode(&rec).map_err(|_| CardError::Internal("log record is corrupt"))?;
        if let Event::Installed(result) = entry.event
            && entry.update_id == Some(wanted)
        {
            break (entry, result);
        }
    };
    let bound = core.session.chan().imei;
    if entry
        .imei
        .map(|i| i.as_str().as_bytes() == &bound.unwrap_or([0; 15])[..])
        != Some(true)
    {
        return Err(CardError::Refused(Reason::WrongDevice));
    }
    let head = crypto::record_hash(&core.platform, &rec);
    sign_receipt(core, wanted, result, seq, head, io)
}

/// GET DATA `0106`: the pending-update record of the contract module
/// (`simfota_wire::contract::PendingUpdate`), or an empty map when no update is in progress.
pub(crate) fn encode_pending<S: Store>(p: &Persist<S>, out: &mut [u8]) -> Result<usize, CardError> {
    let fits = |_| CardError::Internal("answer does not fit the I/O buffer");
    if !pending_exists(p)? {
        return PendingUpdate::encode(None, out).map_err(fits);
    }
    let entry = load_pending_entry(p)?;
    let mut digest = [0u8; 32];
    p.read(O_PENDING + P_IMAGE_DIGEST, &mut digest)?;
    let pending = PendingUpdate {
        // An authorization always names its update (the token's `cti` is required).
        update_id: entry
            .update_id
            .ok_or(CardError::Internal("pending update has no id"))?,
        integrity: Integrity::from_code(p.u8_at(O_PENDING + P_INTEGRITY)?)
            .ok_or(CardError::Internal("pending integrity state is corrupt"))?,
        sequence: p.u64_at(O_PENDING + P_SEQUENCE)?,
        image_size: p.u64_at(O_PENDING + P_IMAGE_SIZE)?,
        image_digest: Digest(digest),
    };
    PendingUpdate::encode(Some(&pending), out).map_err(fits)
}

/// Checks a received nonce against the outstanding one (already taken out of RAM).
pub(crate) fn check_nonce(ours: Option<[u8; 16]>, theirs: &Nonce) -> Result<(), Reason> {
    let ours = ours.ok_or(Reason::NonceUnavailable)?;
    if bool::from(ours.ct_eq(&theirs.0)) {
        Ok(())
    } else {
        Err(Reason::NonceMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_split_is_strict() {
        assert_eq!(
            split_request(&[0, 2, 1, 2, 3]).unwrap(),
            (&[1u8, 2][..], &[3u8][..])
        );
        // The token may not be empty, and an envelope must follow.
        assert!(split_request(&[0, 0, 1]).is_err());
        assert!(split_request(&[0, 3, 1, 2, 3]).is_err());
        assert!(split_request(&[0]).is_err());
    }

    #[test]
    fn nonce_check_is_exact() {
        let n = [7u8; 16];
        assert_eq!(check_nonce(None, &Nonce(n)), Err(Reason::NonceUnavailable));
        assert_eq!(
            check_nonce(Some(n), &Nonce([8; 16])),
            Err(Reason::NonceMismatch)
        );
        assert_eq!(check_nonce(Some(n), &Nonce(n)), Ok(()));
    }
}
