//! The card-level attack catalog of design §5, one named test each, with real keys and
//! signed objects. Each asserts the precise refusal (status word `66RR` = reason) and that
//! nothing was lost or gained.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use simfota_card::{Reason, StatusWord, fumo_result_for, ins};
use simfota_wire::contract::{CardInfo, ServerEntry};
use simfota_wire::{
    AdminChange, DenyReason, Event, IntegrityMode, Nonce, OriginatorId, UnauthorizedRule,
};

fn refused(r: Reason) -> StatusWord {
    StatusWord::refused(r.code())
}

/// Authorizes with a custom token; returns the status word.
fn try_token(
    w: &mut World,
    card: &mut Card,
    f: impl FnOnce(&World, &[u8], simfota_wire::Nonce, simfota_wire::Digest) -> Vec<u8>,
) -> StatusWord {
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = f(w, &cti, n, md);
    card.authorize(&tok, &env)
}

/// A token naming `iss`, signed by the rogue key, with a nonce the card never issued: a
/// request nothing authenticates.
fn rogue_signed(w: &World, iss: &str, cti: &[u8], nonce: u8, md: simfota_wire::Digest) -> Vec<u8> {
    w.token_with(
        &w.rogue,
        iss,
        cti,
        Nonce([nonce; 16]),
        ICCID,
        IMEI,
        md,
        NOW,
        NOW + 60,
    )
}

/// The counts of a refusal-tally record (panics on any other record).
fn tally(e: &simfota_wire::LogEntry) -> Vec<(DenyReason, u32)> {
    match e.event {
        Event::Refusals(t) => t.counts().to_vec(),
        other => panic!("expected a refusal tally, found {other:?}"),
    }
}

#[test]
fn replayed_token() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token(&cti, n, md);
    assert_eq!(card.authorize(&tok, &env), StatusWord::OK);
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
    // Same token again: its nonce was consumed.
    assert_eq!(
        card.authorize(&tok, &env),
        refused(Reason::NonceUnavailable)
    );
    // Even with a fresh nonce outstanding, the old token names the old one.
    card.nonce();
    assert_eq!(card.authorize(&tok, &env), refused(Reason::NonceMismatch));
    assert_eq!(fumo_result_for(refused(Reason::NonceMismatch)), Some(405));
    // A replay is the device's doing: both refusals are counted in one record that names
    // nothing from the replayed token.
    let last = w.read_all(&mut card).pop().unwrap();
    assert_eq!(
        tally(&last),
        vec![
            (Reason::NonceUnavailable.deny_reason(), 1),
            (Reason::NonceMismatch.deny_reason(), 1)
        ]
    );
    assert_eq!((last.server, last.update_id), (None, None));
}

#[test]
fn nonce_dies_with_a_reset() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token(&cti, n, md);
    card.applet.reset();
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    assert_eq!(
        card.authorize(&tok, &env),
        refused(Reason::NonceUnavailable)
    );
}

#[test]
fn failed_attempt_consumes_the_nonce() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    let good = w.token(&cti, n, md);
    let bad = w.token_with(
        &w.server,
        SERVER,
        &cti,
        n,
        ICCID,
        OTHER_IMEI,
        md,
        NOW,
        NOW + 60,
    );
    assert_eq!(card.authorize(&bad, &env), refused(Reason::WrongDevice));
    assert_eq!(
        card.authorize(&good, &env),
        refused(Reason::NonceUnavailable)
    );
}

#[test]
fn token_for_another_imei() {
    let mut w = World::new();
    let mut card = w.default_card();
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| {
        w.token_with(
            &w.server,
            SERVER,
            cti,
            n,
            ICCID,
            OTHER_IMEI,
            md,
            NOW,
            NOW + 60,
        )
    });
    assert_eq!(sw, refused(Reason::WrongDevice));
    assert_eq!(fumo_result_for(sw), Some(403));
}

#[test]
fn token_for_another_card() {
    let mut w = World::new();
    let mut card = w.default_card();
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| {
        w.token_with(
            &w.server,
            SERVER,
            cti,
            n,
            OTHER_ICCID,
            IMEI,
            md,
            NOW,
            NOW + 60,
        )
    });
    assert_eq!(sw, refused(Reason::WrongCard));
    assert_eq!(fumo_result_for(sw), Some(403));
}

#[test]
fn token_for_another_server() {
    // Names the listed server as issuer but is signed by another server's key.
    let mut w = World::new();
    let mut card = w.default_card();
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| {
        w.token_with(&w.rogue, SERVER, cti, n, ICCID, IMEI, md, NOW, NOW + 60)
    });
    assert_eq!(sw, refused(Reason::TokenSignature));
    assert_eq!(fumo_result_for(sw), Some(404));
}

#[test]
fn token_from_server_without_update_right() {
    // The log reader is listed, but not for firmware updates: the policy (refuse) applies.
    let mut w = World::new();
    let mut card = w.default_card();
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| {
        w.token_with(&w.reader, READER, cti, n, ICCID, IMEI, md, NOW, NOW + 60)
    });
    assert_eq!(sw, refused(Reason::ServerNotAuthorized));
}

#[test]
fn expired_token() {
    let mut w = World::new();
    let mut card = w.default_card();
    // First a genuine token moves the trusted time to NOW.
    w.full_update(&mut card, 1);
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| {
        w.token_with(
            &w.server,
            SERVER,
            cti,
            n,
            ICCID,
            IMEI,
            md,
            NOW - 7200,
            NOW - 3600,
        )
    });
    assert_eq!(sw, refused(Reason::TokenExpired));
    assert_eq!(fumo_result_for(sw), Some(405));
}

#[test]
fn token_from_unlisted_server() {
    let mut w = World::new();
    let mut card = w.default_card();
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| {
        w.token_with(&w.rogue, ROGUE, cti, n, ICCID, IMEI, md, NOW, NOW + 60)
    });
    assert_eq!(sw, refused(Reason::ServerNotAuthorized));
    assert_eq!(fumo_result_for(sw), Some(405));
    // The rogue's name is not a fact the card verified: it is not logged.
    let e = w.read_all(&mut card);
    assert_eq!(tally(&e[0]), vec![(DenyReason(1), 1)]);
    assert_eq!(e[0].server, None);
}

#[test]
fn tampered_manifest() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (mut env, md) = w.package(10);
    // Flip a byte inside the manifest text ("Release 7" -> "Release 8").
    let at = env.windows(9).position(|x| x == b"Release 7").unwrap();
    env[at + 8] = b'8';
    let cti = w.next_cti();
    let n = card.nonce();
    let sw = card.authorize(&w.token(&cti, n, md), &env);
    assert_eq!(sw, refused(Reason::ManifestSignature));
    assert_eq!(fumo_result_for(sw), Some(404));
}

#[test]
fn token_for_another_manifest() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, _) = w.package(10);
    let (_, other_md) = w.package(11);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(
        card.authorize(&w.token(&cti, n, other_md), &env),
        refused(Reason::ManifestMismatch)
    );
}

#[test]
fn tampered_payload_one_byte() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let mut p = w.payload.clone();
    p[1234] ^= 1;
    let sw = card.device_digest(&p);
    assert_eq!(sw, refused(Reason::IntegrityFailed));
    assert_eq!(fumo_result_for(sw), Some(402));
    // And success cannot be reported for it.
    assert_eq!(
        card.report(200, &cti).1,
        refused(Reason::IntegrityNotPassed)
    );
    // The failure can.
    assert_eq!(card.report(402, &cti).1, StatusWord::OK);
    let e = w.read_all(&mut card);
    assert_eq!(e[1].event, Event::IntegrityFailed);
}

#[test]
fn tampered_payload_one_byte_card_digest() {
    let mut w = World::new();
    let mut card = w.card(&World::policy(
        UnauthorizedRule::Refuse,
        IntegrityMode::CardDigest { max_size: 1 << 20 },
    ));
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let mut p = w.payload.clone();
    p[0] ^= 0x80;
    assert_eq!(card.stream(&p, 500), refused(Reason::IntegrityFailed));
}

#[test]
fn truncated_payload() {
    let mut w = World::new();
    let mut card = w.card(&World::policy(
        UnauthorizedRule::Refuse,
        IntegrityMode::CardDigest { max_size: 1 << 20 },
    ));
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let p = w.payload[..w.payload.len() - 1].to_vec();
    assert_eq!(card.stream(&p, 500), refused(Reason::SizeMismatch));
    // Device-digest mode sees the size too.
    let mut w2 = World::new();
    let mut card = w2.default_card();
    let (env, md) = w2.package(10);
    let cti = w2.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w2.token(&cti, n, md), &env), StatusWord::OK);
    let p = w2.payload[..100].to_vec();
    assert_eq!(card.device_digest(&p), refused(Reason::SizeMismatch));
}

#[test]
fn oversized_payload_for_card_digest_is_refused_at_authorization() {
    let mut w = World::new();
    let mut card = w.card(&World::policy(
        UnauthorizedRule::Refuse,
        IntegrityMode::CardDigest { max_size: 1000 },
    ));
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| w.token(cti, n, md));
    assert_eq!(sw, refused(Reason::SizeMismatch));
}

#[test]
fn manifest_from_unknown_originator() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package_by(&w.unknown_originator, 10, &w.payload, CLASS);
    let cti = w.next_cti();
    let n = card.nonce();
    let sw = card.authorize(&w.token(&cti, n, md), &env);
    assert_eq!(sw, refused(Reason::OriginatorUnknown));
    assert_eq!(fumo_result_for(sw), Some(404));
}

#[test]
fn manifest_from_removed_originator() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 1);
    let rm = w.admin(
        ICCID,
        AdminChange::RemoveOriginator {
            id: OriginatorId::new(ORIGINATOR).unwrap(),
        },
    );
    assert_eq!(card.cmd(0x80, ins::ADMIN, 0, 0, &rm).1, StatusWord::OK);
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| w.token(cti, n, md));
    assert_eq!(sw, refused(Reason::OriginatorUnknown));
}

#[test]
fn unauthorized_server_still_needs_a_trusted_originator() {
    let mut w = World::new();
    let mut card = w.card(&policy(UnauthorizedRule::FreeDevice));
    let (env, md) = w.package_by(&w.unknown_originator, 10, &w.payload, CLASS);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
    assert_eq!(
        card.authorize(&tok, &env),
        refused(Reason::OriginatorUnknown)
    );
}

#[test]
fn rollback_to_lower_sequence() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 10);
    for seq in [10, 9, 0] {
        let (env, md) = w.package(seq);
        let cti = w.next_cti();
        let n = card.nonce();
        let sw = card.authorize(&w.token(&cti, n, md), &env);
        assert_eq!(sw, refused(Reason::Rollback), "sequence {seq}");
        assert_eq!(fumo_result_for(sw), Some(405));
    }
}

#[test]
fn class_not_allowed_by_policy() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package_by(&w.originator, 10, &w.payload, *b"other-class-0001");
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(
        card.authorize(&w.token(&cti, n, md), &env),
        refused(Reason::ClassNotAllowed)
    );
}

#[test]
fn result_for_unknown_update() {
    let mut w = World::new();
    let mut card = w.default_card();
    assert_eq!(card.report(200, b"never").1, refused(Reason::UnknownUpdate));
    let (cti, _) = w.full_update(&mut card, 3);
    // Already ended: a second report is refused too.
    assert_eq!(card.report(200, &cti).1, refused(Reason::UnknownUpdate));
    // A report naming another update while one is pending.
    let (env, md) = w.package(4);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    assert_eq!(card.report(410, b"other").1, refused(Reason::UnknownUpdate));
}

#[test]
fn receipt_for_an_update_never_reported() {
    let mut w = World::new();
    let mut card = w.default_card();
    // Nothing in the log at all.
    assert_eq!(card.receipt(b"never").1, StatusWord::DATA_NOT_FOUND);
    // Authorized and pending, not reported: no receipt before the result.
    let (env, md) = w.package(4);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    assert_eq!(card.receipt(&cti).1, StatusWord::DATA_NOT_FOUND);
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.receipt(&cti).1, StatusWord::DATA_NOT_FOUND);
    // Refused at authorization (logged under its id): no result, no receipt.
    let (_, sw) = card.report(200, &cti);
    assert_eq!(sw, StatusWord::OK);
    let (env, md) = w.package(3);
    let refused_cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(
        card.authorize(&w.token(&refused_cti, n, md), &env),
        refused(Reason::Rollback)
    );
    assert_eq!(card.receipt(&refused_cti).1, StatusWord::DATA_NOT_FOUND);
    // Malformed ids are refused before any lookup.
    assert_eq!(card.receipt(&[]).1, StatusWord::WRONG_LENGTH);
    assert_eq!(card.receipt(&[7; 17]).1, StatusWord::WRONG_LENGTH);
    assert_eq!(
        card.cmd(0x80, ins::GET_RECEIPT, 1, 0, &cti).1,
        StatusWord::WRONG_P1P2
    );
}

#[test]
fn receipt_for_another_update_id() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (cti, receipt) = w.full_update(&mut card, 3);
    // Ids next to the recorded one (a prefix, an extension, one byte off) are not it.
    let mut longer = cti.clone();
    longer.push(0);
    let mut flipped = cti.clone();
    flipped[1] ^= 1;
    for other in [&cti[..1], &longer[..], &flipped[..]] {
        assert_eq!(
            card.receipt(other).1,
            StatusWord::DATA_NOT_FOUND,
            "{other:?}"
        );
    }
    // The one recorded answers its own receipt, naming its own id only: the same facts,
    // signed by the card; the same bytes where the card signs deterministically.
    let (again, sw) = card.receipt(&cti);
    assert_eq!(sw, StatusWord::OK);
    let card_key = card_public_key(&mut card);
    let open = |bytes: &[u8]| {
        simfota_wire::Receipt::verify(bytes, &card_key, &simfota_wire::Limits::DEFAULT).unwrap()
    };
    let r = open(&again);
    assert_eq!(r, open(&receipt));
    assert_eq!(again == receipt, card.crypto == Crypto::Software);
    assert_eq!(r.update_id.as_bytes(), &cti[..]);
}

#[test]
fn receipt_from_another_device() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (cti, _) = w.full_update(&mut card, 3);
    assert_eq!(card.bind(OTHER_IMEI), StatusWord::OK);
    assert_eq!(card.receipt(&cti).1, refused(Reason::WrongDevice));
    // No terminal bound at all (a fresh selection): the same refusal.
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.receipt(&cti).1, refused(Reason::WrongDevice));
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    assert_eq!(card.receipt(&cti).1, StatusWord::OK);
}

#[test]
fn receipt_is_gone_once_its_record_is_acknowledged_and_overwritten() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (cti, _) = w.full_update(&mut card, 1);
    // The reader stores and acknowledges everything, then later updates reuse the slots.
    let mut seq = 2;
    for sequence in 2..=23u64 {
        let n = card.nonce();
        let ack = w.log_ack(&w.reader, READER, n, seq);
        assert_eq!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
        w.full_update(&mut card, sequence);
        seq += 3;
    }
    // Entry 2 (the result) was in slot 2, now holding entry 66.
    assert!(card.log_status().next > 66);
    assert_eq!(card.receipt(&cti).1, StatusWord::DATA_NOT_FOUND);
}

#[test]
fn result_from_another_device() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(4);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    assert_eq!(card.bind(OTHER_IMEI), StatusWord::OK);
    assert_eq!(card.report(410, &cti).1, refused(Reason::WrongDevice));
}

#[test]
fn device_cannot_write_or_delete_log_entries() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 3);
    let before = w.read_all(&mut card);
    // No command writes entries: personalization is locked...
    assert_eq!(
        card.cmd(0x80, ins::STORE_DATA, 0x80, 0, &[0x01, 0x01, 0x01, 0x31])
            .1,
        StatusWord::CONDITIONS
    );
    // ...unknown instructions are refused...
    for i in [0x02u8, 0x04, 0x0E, 0x20, 0x2A, 0xD6, 0xDA, 0xE4] {
        assert_eq!(
            card.cmd(0x80, i, 0, 0, &[1, 2, 3]).1,
            StatusWord::INS_NOT_SUPPORTED
        );
    }
    // ...an acknowledgement (which frees space) signed by the device's own key is refused...
    let device_key = key("device");
    let n = card.nonce();
    let ack = w.log_ack(&device_key, READER, n, 10);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1,
        refused(Reason::RequestSignature)
    );
    // ...and so is a truncated or bit-flipped one.
    let n = card.nonce();
    let mut ack = w.log_ack(&w.reader, READER, n, 10);
    let l = ack.len();
    ack[l - 5] ^= 1;
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1,
        refused(Reason::RequestSignature)
    );
    let after = w.read_all(&mut card);
    assert_eq!(before, after);
    assert_eq!(card.log_status().free, 61);
}

#[test]
fn unauthorized_log_read() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 3);
    // Unlisted server.
    let n = card.nonce();
    let req = w.log_read(&w.rogue, ROGUE, n, 0, 8);
    assert_eq!(
        card.cmd(0x80, ins::READ_LOG, 0, 0, &req).1,
        refused(Reason::LogReadNotAuthorized)
    );
    // Listed name, wrong key.
    let n = card.nonce();
    let req = w.log_read(&w.rogue, READER, n, 0, 8);
    assert_eq!(
        card.cmd(0x80, ins::READ_LOG, 0, 0, &req).1,
        refused(Reason::RequestSignature)
    );
    // Replayed request (nonce used).
    let n = card.nonce();
    let req = w.log_read(&w.reader, READER, n, 0, 8);
    assert_eq!(card.cmd(0x80, ins::READ_LOG, 0, 0, &req).1, StatusWord::OK);
    assert_eq!(
        card.cmd(0x80, ins::READ_LOG, 0, 0, &req).1,
        refused(Reason::NonceUnavailable)
    );
}

#[test]
fn export_is_readable_only_by_the_requesting_server() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 3);
    let n = card.nonce();
    let req = w.log_read(&w.reader, READER, n, 0, 8);
    let (exp, sw) = card.cmd(0x80, ins::READ_LOG, 0, 0, &req);
    assert_eq!(sw, StatusWord::OK);
    let card_pk = card_public_key(&mut card);
    let wrong = p256::SecretKey::from_slice(&w.server.to_bytes()).unwrap();
    assert!(
        simfota_wire::open_export(&exp, &card_pk, &wrong, &simfota_wire::Limits::DEFAULT).is_err()
    );
}

/// Reads one page as the reader server with a fresh nonce; returns that nonce.
fn read_page(w: &World, card: &mut Card) -> Nonce {
    let n = card.nonce();
    let req = w.log_read(&w.reader, READER, n, 0, 8);
    assert_eq!(card.cmd(0x80, ins::READ_LOG, 0, 0, &req).1, StatusWord::OK);
    n
}

#[test]
fn log_ack_answers_its_export_page_once() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 3);
    // The acknowledgement carries the nonce the page answered: no GET CHALLENGE in between.
    let n = read_page(&w, &mut card);
    let ack = w.log_ack(&w.reader, READER, n, 2);
    assert_eq!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
    assert_eq!(card.log_status().acked, 3);
    // Replayed: the page's nonce is spent, and no fresh one is outstanding.
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1,
        refused(Reason::NonceUnavailable)
    );
    // Replayed while a fresh nonce is outstanding: not that nonce either (and it is spent).
    let _ = card.nonce();
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1,
        refused(Reason::NonceMismatch)
    );
    assert_eq!(card.log_status().acked, 3);
}

#[test]
fn export_bound_log_ack_only_from_the_server_it_was_encrypted_to() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 3);
    let free = card.log_status().free;
    // SERVER is listed with the acknowledge right, but the page was encrypted to READER.
    let n = read_page(&w, &mut card);
    let other = w.log_ack(&w.server, SERVER, n, 2);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &other).1,
        refused(Reason::NonceUnavailable)
    );
    // A refused acknowledgement ends the binding too: the reader's own is late now.
    let own = w.log_ack(&w.reader, READER, n, 2);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &own).1,
        refused(Reason::NonceUnavailable)
    );
    // An unlisted key claiming the reader's name cannot use the page's nonce either.
    let n = read_page(&w, &mut card);
    let forged = w.log_ack(&w.rogue, READER, n, 2);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &forged).1,
        refused(Reason::RequestSignature)
    );
    assert_eq!(card.log_status().free, free);
    assert_eq!(card.log_status().acked, 0);
}

#[test]
fn export_bound_log_ack_ends_with_the_next_read() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 3);
    let first = read_page(&w, &mut card);
    let second = read_page(&w, &mut card);
    let stale = w.log_ack(&w.reader, READER, first, 2);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &stale).1,
        refused(Reason::NonceUnavailable)
    );
    assert_eq!(card.log_status().acked, 0);
    // The refusal ended the second page's binding as well: a fresh nonce acknowledges.
    let late = w.log_ack(&w.reader, READER, second, 2);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &late).1,
        refused(Reason::NonceUnavailable)
    );
    let n = card.nonce();
    let fresh = w.log_ack(&w.reader, READER, n, 2);
    assert_eq!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &fresh).1, StatusWord::OK);
    assert_eq!(card.log_status().acked, 3);
}

#[test]
fn unauthorized_log_ack() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 3);
    let n = card.nonce();
    let ack = w.log_ack(&w.rogue, ROGUE, n, 2);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1,
        refused(Reason::LogAckNotAuthorized)
    );
    // A server with only the read right cannot acknowledge.
    let mut w2 = World::new();
    let put = w2.admin(
        ICCID,
        admin_put_server(READER, &w2.reader, simfota_wire::Rights::LOG_READ),
    );
    assert_eq!(card.cmd(0x80, ins::ADMIN, 0, 0, &put).1, StatusWord::OK);
    let n = card.nonce();
    let ack = w.log_ack(&w.reader, READER, n, 2);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1,
        refused(Reason::LogAckNotAuthorized)
    );
    // Ack beyond the log end.
    let mut w3 = World::new();
    w3.admin_counter = 1;
    let put = w3.admin(
        ICCID,
        admin_put_server(READER, &w.reader, simfota_wire::Rights::LOG_ACK),
    );
    assert_eq!(card.cmd(0x80, ins::ADMIN, 0, 0, &put).1, StatusWord::OK);
    let n = card.nonce();
    let ack = w.log_ack(&w.reader, READER, n, 3);
    assert_eq!(
        card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1,
        refused(Reason::AckBeyondLog)
    );
    assert_eq!(card.log_status().acked, 0);
}

#[test]
fn replayed_admin_command() {
    let mut w = World::new();
    let mut card = w.default_card();
    let cmd = w.admin(
        ICCID,
        AdminChange::RemoveOriginator {
            id: OriginatorId::new(ORIGINATOR).unwrap(),
        },
    );
    assert_eq!(card.cmd(0x80, ins::ADMIN, 0, 0, &cmd).1, StatusWord::OK);
    assert_eq!(
        card.cmd(0x80, ins::ADMIN, 0, 0, &cmd).1,
        refused(Reason::AdminReplay)
    );
    // An older counter is a replay too.
    let old = w.admin_signed(
        &w.issuer,
        ICCID,
        0,
        AdminChange::RemoveOriginator {
            id: OriginatorId::new(ORIGINATOR).unwrap(),
        },
    );
    assert_eq!(
        card.cmd(0x80, ins::ADMIN, 0, 0, &old).1,
        refused(Reason::AdminReplay)
    );
}

#[test]
fn admin_command_for_another_card() {
    let mut w = World::new();
    let mut card = w.default_card();
    let cmd = w.admin(
        OTHER_ICCID,
        admin_put_server(ROGUE, &w.rogue, simfota_wire::Rights::ALL),
    );
    assert_eq!(
        card.cmd(0x80, ins::ADMIN, 0, 0, &cmd).1,
        refused(Reason::AdminWrongCard)
    );
}

#[test]
fn admin_command_not_from_the_issuer() {
    let w = World::new();
    let mut card = w.default_card();
    let cmd = w.admin_signed(
        &w.server,
        ICCID,
        99,
        admin_put_server(ROGUE, &w.rogue, simfota_wire::Rights::ALL),
    );
    assert_eq!(
        card.cmd(0x80, ins::ADMIN, 0, 0, &cmd).1,
        refused(Reason::AdminSignature)
    );
    let (d, _) = card.cmd(0x80, ins::GET_DATA, 0x01, 0x02, &[]);
    assert_eq!(
        ServerEntry::decode_vec(&d, &simfota_wire::Limits::DEFAULT)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn pin_brute_force() {
    let w = World::new();
    let mut card = w.card(&policy(UnauthorizedRule::ConfirmWithPin));
    for left in [2u8, 1, 0] {
        assert_eq!(
            card.verify_pin(b"0000\xFF\xFF\xFF\xFF"),
            StatusWord::tries_left(left)
        );
    }
    // Blocked: even the right PIN is refused, across power cycles.
    assert_eq!(card.verify_pin(PIN), StatusWord::AUTH_BLOCKED);
    let mut card = card.power_cycle();
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.verify_pin(PIN), StatusWord::AUTH_BLOCKED);
    // The PUK has its own counter: brute-forcing it kills unblocking for good.
    let mut d = b"00000000".to_vec();
    d.extend_from_slice(PIN);
    for left in (0..10u8).rev() {
        assert_eq!(
            card.cmd(0x00, ins::RESET_RETRY_COUNTER, 0, 0x81, &d).1,
            StatusWord::tries_left(left)
        );
    }
    let mut d = PUK.to_vec();
    d.extend_from_slice(PIN);
    assert_eq!(
        card.cmd(0x00, ins::RESET_RETRY_COUNTER, 0, 0x81, &d).1,
        StatusWord::AUTH_BLOCKED
    );
}

#[test]
fn pin_counter_is_spent_before_the_comparison() {
    // VERIFY writes twice: the decremented counter (write 1 + commit 2) BEFORE comparing,
    // then, on a match, the restored counter (write 3 + commit 4).
    let w = World::new();
    let card = w.card(&policy(UnauthorizedRule::ConfirmWithPin));
    let mut mem = card.applet.into_store().into_inner();
    mem.power_cycle();
    for (cut, pin, left_after) in [(2, PIN, 3u8), (4, PIN, 2), (2, b"0000\xFF\xFF\xFF\xFF", 3)] {
        let mut m = mem.clone();
        m.power_cycle();
        let mut card = Card::from_store(simfota_card::PowerCut::new(m, Some(cut)), "cut");
        assert_eq!(card.select(), StatusWord::OK);
        // Whatever the PIN, a cut answers a memory failure: the terminal learns nothing.
        assert_eq!(card.verify_pin(pin), StatusWord::MEMORY_FAILURE);
        let mut card = card.power_cycle();
        assert_eq!(card.select(), StatusWord::OK);
        assert_eq!(
            card.cmd(0x00, ins::VERIFY, 0, 0x81, &[]).1,
            StatusWord::tries_left(left_after)
        );
    }
}

#[test]
fn log_full_refuses_new_updates() {
    let mut w = World::new();
    let mut card = w.default_card();
    // Fill the log with refusals (each one entry).
    let (env, md) = w.package(10);
    let mut denied = 0;
    loop {
        let cti = w.next_cti();
        let n = card.nonce();
        let tok = w.token_with(
            &w.server,
            SERVER,
            &cti,
            n,
            OTHER_ICCID,
            IMEI,
            md,
            NOW,
            NOW + 60,
        );
        let sw = card.authorize(&tok, &env);
        if sw == refused(Reason::LogFull) {
            break;
        }
        assert_eq!(sw, refused(Reason::WrongCard));
        denied += 1;
    }
    // Room for a whole update (decision, integrity, result) is kept: 62 refusals of a
    // listed server's fresh tokens fit, each its own entry (the server made each one).
    assert_eq!(denied, 62);
    let cti = w.next_cti();
    let n = card.nonce();
    let sw = card.authorize(&w.token(&cti, n, md), &env);
    assert_eq!(sw, refused(Reason::LogFull));
    assert_eq!(fumo_result_for(sw), Some(405));
    // Nothing was dropped: all 62 entries are there and chained, and the LogFull refusals
    // are counted in one more record.
    let entries = w.read_all(&mut card);
    assert_eq!(entries.len(), 63);
    assert!(chain_ok(&entries));
    assert_eq!(
        tally(&entries[62]),
        vec![(Reason::LogFull.deny_reason(), 2)]
    );
    // An acknowledgement frees the space.
    let n = card.nonce();
    let ack = w.log_ack(&w.reader, READER, n, 62);
    assert_eq!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
    assert_eq!(card.log_status().free, 64);
    w.full_update(&mut card, 11);
    let ci_bytes = card.info();
    assert_eq!(
        CardInfo::decode(&ci_bytes, &simfota_wire::Limits::DEFAULT)
            .unwrap()
            .log_next,
        66
    );
}

#[test]
fn every_decision_is_logged() {
    let mut w = World::new();
    let mut card = w.default_card();
    let sw = try_token(&mut w, &mut card, |w, cti, n, md| {
        w.token_with(
            &w.server,
            SERVER,
            cti,
            n,
            ICCID,
            OTHER_IMEI,
            md,
            NOW,
            NOW + 60,
        )
    });
    assert_eq!(sw, refused(Reason::WrongDevice));
    w.full_update(&mut card, 2);
    let e = w.read_all(&mut card);
    let kinds: Vec<Event> = e.iter().map(|e| e.event).collect();
    assert_eq!(
        kinds[0],
        Event::Denied(DenyReason(u16::from(Reason::WrongDevice.code())))
    );
    assert_eq!(kinds[1], Event::Authorized);
    assert_eq!(e.len(), 4);
    assert!(chain_ok(&e));
}

#[test]
fn second_update_while_one_is_pending() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let (env2, md2) = w.package(11);
    let cti2 = w.next_cti();
    let n = card.nonce();
    let sw = card.authorize(&w.token(&cti2, n, md2), &env2);
    assert_eq!(sw, refused(Reason::UpdatePending));
    // The refusal is counted (it was decided before any check of the request, so it names
    // nothing from it), and the pending update goes on.
    let e = w.read_all(&mut card);
    assert_eq!(tally(&e[1]), vec![(Reason::UpdatePending.deny_reason(), 1)]);
    assert_eq!(e[1].update_id, None);
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
}

#[test]
fn forged_token_flood_takes_one_record_and_blocks_nothing() {
    // A bound device sends AUTHORIZE UPDATE again and again, without GET CHALLENGE, with a
    // token naming a listed server but signed by another key, and with garbage: nothing
    // authenticates these requests, so the card counts them in one record and a genuine
    // update still goes through.
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let forged = rogue_signed(&w, SERVER, b"chosen-id", 7, md);
    for _ in 0..80 {
        assert_eq!(
            card.authorize(&forged, &env),
            refused(Reason::TokenSignature)
        );
    }
    for _ in 0..5 {
        assert_eq!(
            card.authorize(&[0xA1, 0x00], &env),
            refused(Reason::Malformed)
        );
    }
    assert_eq!(card.log_status().free, 63);
    w.full_update(&mut card, 11);
    let e = w.read_all(&mut card);
    assert_eq!(e.len(), 4);
    assert_eq!(
        tally(&e[0]),
        vec![
            (Reason::TokenSignature.deny_reason(), 80),
            (Reason::Malformed.deny_reason(), 5)
        ]
    );
    // The attacker's names are not in the log as facts: the tally names no server or update.
    assert_eq!(
        (e[0].server, e[0].update_id, e[0].originator),
        (None, None, None)
    );
    assert!(
        e[0].unverified
            .unwrap()
            .contains(simfota_wire::Unverified::IMEI)
    );
    assert_eq!(e[1].event, Event::Authorized);
    assert_eq!(e[1].unverified, Some(simfota_wire::Unverified::NONE));
    assert!(chain_ok(&e));
}

#[test]
fn an_exported_tally_is_never_rewritten() {
    // What a server has read stays as it read it: a refusal after an export starts a new
    // record, and the chain read across both exports holds (no fork at the old head).
    let w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let forged = rogue_signed(&w, SERVER, b"x", 7, md);
    assert_eq!(
        card.authorize(&forged, &env),
        refused(Reason::TokenSignature)
    );
    let first = w.read_all(&mut card);
    assert_eq!(
        tally(&first[0]),
        vec![(Reason::TokenSignature.deny_reason(), 1)]
    );
    for _ in 0..3 {
        assert_eq!(
            card.authorize(&forged, &env),
            refused(Reason::TokenSignature)
        );
    }
    let second = w.read_all(&mut card);
    assert_eq!(second.len(), 2);
    assert_eq!(second[0], first[0], "the exported record is unchanged");
    assert_eq!(
        tally(&second[1]),
        vec![(Reason::TokenSignature.deny_reason(), 3)]
    );
    assert!(chain_ok(&second));
}

#[test]
fn alternating_refusal_reasons_share_the_open_record() {
    let w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let rogue = rogue_signed(&w, ROGUE, b"r", 1, md);
    let forged = rogue_signed(&w, SERVER, b"f", 1, md);
    for _ in 0..30 {
        assert_eq!(
            card.authorize(&rogue, &env),
            refused(Reason::ServerNotAuthorized)
        );
        assert_eq!(
            card.authorize(&forged, &env),
            refused(Reason::TokenSignature)
        );
        card.nonce();
        assert_eq!(
            card.authorize(&forged, &env),
            refused(Reason::TokenSignature)
        );
    }
    let e = w.read_all(&mut card);
    assert_eq!(e.len(), 1);
    assert_eq!(
        tally(&e[0]),
        vec![
            (Reason::ServerNotAuthorized.deny_reason(), 30),
            (Reason::TokenSignature.deny_reason(), 60)
        ]
    );
}

#[test]
fn unlisted_server_updates_have_a_budget() {
    // Free-device policy: the device alone decides, so its updates through unlisted servers
    // may hold at most half the log; then it must wait for an authorized server to read and
    // acknowledge, and updates through the listed server still go through meanwhile.
    let mut w = World::new();
    let mut card = w.card(&policy(UnauthorizedRule::FreeDevice));
    let (env, md) = w.package(10);
    let mut refused_at = None;
    for i in 0..20 {
        let cti = w.next_cti();
        let n = card.nonce();
        let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
        let sw = card.authorize(&tok, &env);
        if sw != StatusWord::OK {
            assert_eq!(sw, refused(Reason::UnverifiedBudget));
            refused_at = Some(i);
            break;
        }
        assert_eq!(card.report(500, &cti).1, StatusWord::OK);
    }
    assert_eq!(refused_at, Some(8));
    assert_eq!(
        fumo_result_for(refused(Reason::UnverifiedBudget)),
        Some(405)
    );
    // The listed server's update goes through.
    w.full_update(&mut card, 11);
    // Once a server stored everything, the budget is back.
    let e = w.read_all(&mut card);
    let last = e.last().unwrap().seq;
    let n = card.nonce();
    let ack = w.log_ack(&w.reader, READER, n, last);
    assert_eq!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
    let (env, md) = w.package(12);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
    assert_eq!(card.authorize(&tok, &env), StatusWord::OK);
}

#[test]
fn repeated_integrity_failures_are_counted() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let mut bad = w.payload.clone();
    bad[0] ^= 1;
    for _ in 0..40 {
        assert_eq!(card.device_digest(&bad), refused(Reason::IntegrityFailed));
    }
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
    let e = w.read_all(&mut card);
    let kinds: Vec<_> = e.iter().map(|e| e.event).collect();
    assert_eq!(kinds[0], Event::Authorized);
    assert_eq!(kinds[1], Event::IntegrityFailed);
    assert_eq!(
        tally(&e[2]),
        vec![(Reason::IntegrityFailed.deny_reason(), 39)]
    );
    assert_eq!(kinds[3], Event::IntegrityOk);
    assert_eq!(e.len(), 5);
}

#[test]
fn untrusted_signer_with_an_unsupported_algorithm_names_no_originator() {
    // An envelope signed by a key the card does not trust, with an algorithm the card does
    // not implement: no trusted originator's signature verifies, so the refusal is
    // "originator unknown" and names no originator.
    let mut w = World::new();
    let mut card = w.default_card();
    let payload = w.payload.clone();
    let (mut env, _) = w.package_by(&w.unknown_originator, 10, &payload, CLASS);
    // The protected header {1: -7} (A1 01 26) becomes {1: -35} (A1 01 38 22 would change the
    // length); use ES512 -36 in one byte's place: 0x26 (-7) -> 0x23 (-4, not a signature alg).
    let at = env
        .windows(3)
        .position(|x| x == [0xA1, 0x01, 0x26])
        .unwrap();
    env[at + 2] = 0x23;
    let md = simfota_wire::suit::Envelope::decode(&env, &simfota_wire::Limits::DEFAULT)
        .unwrap()
        .stated_manifest_digest();
    let cti = w.next_cti();
    let n = card.nonce();
    let sw = card.authorize(&w.token(&cti, n, md), &env);
    assert_eq!(sw, refused(Reason::OriginatorUnknown));
    let e = w.read_all(&mut card);
    assert_eq!(
        e[0].event,
        Event::Denied(Reason::OriginatorUnknown.deny_reason())
    );
    assert_eq!(e[0].originator, None);
    assert_eq!(
        e[0].manifest_digest, None,
        "an unverified manifest digest is not logged"
    );
    // The listed server's fresh token made this request: its names are facts.
    assert_eq!(e[0].server.unwrap().as_str(), SERVER);
    assert_eq!(e[0].unverified, Some(simfota_wire::Unverified::NONE));
}
