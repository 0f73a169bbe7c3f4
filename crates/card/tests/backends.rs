//! The card answers the same on both crypto back-ends: one session of every kind of command
//! (personalization, updates through a listed and an unlisted server, the payload streamed,
//! refusals of bad signatures, receipts again, an admin command, then the whole log read and
//! acknowledged) runs on the software back-end and on ring, from the same seeded generator.
//!
//! Every answer is compared byte for byte, except those that carry a card signature: ring
//! signs with random nonces, so there each answer must verify under the card key and state
//! the same facts (receipts), or decrypt to the same records (log export pages). The other
//! test suites run on either back-end with `SIMFOTA_CARD_CRYPTO=host` (docs/card.md, "Crypto
//! platform").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use simfota_card::{StatusWord, ins};
use simfota_wire::{AdminChange, Limits, Receipt, UnauthorizedRule};

/// What one back-end answered.
struct Run {
    transcript: Vec<Exchange>,
    card_key: simfota_wire::PublicKey,
    log: Vec<simfota_wire::LogEntry>,
    log_status: simfota_wire::contract::LogStatus,
}

fn run(crypto: Crypto) -> Run {
    let mut w = World::new();
    let mut card = Card::blank_on(crypto, "card rng");
    card.extended = true;
    card.transcript = Some(Vec::new());
    w.personalize(&mut card, &policy(UnauthorizedRule::ConfirmWithPin));
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);

    // A listed server's update, the payload digest from the device.
    let (first, _) = w.full_update(&mut card, 1);
    // Another, the card hashing the streamed payload itself.
    let (env, md) = w.package(2);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let payload = w.payload.clone();
    assert_eq!(card.stream(&payload, 700), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
    // Signatures that do not verify: a token signed by another key, a manifest by an
    // originator the card does not trust.
    let (env, md) = w.package(3);
    let n = card.nonce();
    let forged = w.token_with(
        &w.rogue,
        SERVER,
        b"forged",
        n,
        ICCID,
        IMEI,
        md,
        NOW,
        NOW + 60,
    );
    assert!(!card.authorize(&forged, &env).is_success());
    let (foreign, md) = w.package_by(&w.unknown_originator, 3, &payload, CLASS);
    let n = card.nonce();
    let tok = w.token(b"foreign", n, md);
    assert!(!card.authorize(&tok, &foreign).is_success());
    // An unlisted server, with the user's consent under PIN.
    let (env, md) = w.package(3);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
    assert_eq!(card.authorize(&tok, &env), StatusWord(0x660F));
    assert_eq!(card.verify_pin(PIN), StatusWord::OK);
    let req = request(&tok, &env);
    assert_eq!(
        card.cmd(0x80, ins::RECORD_CONSENT, 1, 0, &req).1,
        StatusWord::OK
    );
    assert_eq!(card.device_digest(&payload), StatusWord::OK);
    assert_eq!(card.report(410, &cti).1, StatusWord::OK);
    // Receipts again, an issuer's admin command, a forged one.
    assert_eq!(card.receipt(&first).1, StatusWord::OK);
    assert_eq!(card.receipt(&cti).1, StatusWord::OK);
    let k = key("new server");
    let cmd = w.admin(
        ICCID,
        admin_put_server("dm2.operator.example", &k, simfota_wire::Rights::ALL),
    );
    assert_eq!(card.cmd(0x80, ins::ADMIN, 0, 0, &cmd).1, StatusWord::OK);
    let forged = w.admin_signed(
        &w.rogue,
        ICCID,
        99,
        AdminChange::RemoveServer {
            id: simfota_wire::ServerId::new(SERVER).unwrap(),
        },
    );
    assert!(!card.cmd(0x80, ins::ADMIN, 0, 0, &forged).1.is_success());
    let card_key = card_public_key(&mut card);
    let transcript = card.transcript.take().unwrap();

    // The log, page by page (each page's ephemeral key and IV differ by back-end, and so the
    // nonces drawn after them), then acknowledged.
    let log = w.read_all(&mut card);
    let n = card.nonce();
    let last = log.last().unwrap().seq;
    let ack = w.log_ack(&w.reader, READER, n, last);
    assert_eq!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
    Run {
        transcript,
        card_key,
        log,
        log_status: card.log_status(),
    }
}

#[test]
fn both_back_ends_give_the_same_answers() {
    let soft = run(Crypto::Software);
    let host = run(Crypto::Host);
    assert_eq!(soft.card_key, host.card_key, "the same card key");
    assert_eq!(soft.transcript.len(), host.transcript.len());
    let open = |bytes: &[u8]| {
        Receipt::verify(bytes, &soft.card_key, &Limits::DEFAULT)
            .unwrap_or_else(|e| panic!("a receipt that does not verify: {e:?}"))
    };
    let mut signed = 0;
    for (i, (s, h)) in soft.transcript.iter().zip(&host.transcript).enumerate() {
        assert_eq!(s.command, h.command, "command {i}");
        if s.response == h.response {
            continue;
        }
        // Only the card's signatures may differ: same status, same facts, both valid.
        let (sd, ssw) = s.response.split_at(s.response.len() - 2);
        let (hd, hsw) = h.response.split_at(h.response.len() - 2);
        assert_eq!(ssw, hsw, "status of command {i}");
        assert!(
            matches!(s.command[1], ins::REPORT_RESULT | ins::GET_RECEIPT),
            "command {i} ({:02X?}) answered differently",
            &s.command[..4]
        );
        assert_eq!(open(sd), open(hd), "receipt of command {i}");
        signed += 1;
    }
    // Three results reported, two receipts fetched again.
    assert_eq!(signed, 5);
    assert_eq!(soft.log, host.log);
    assert!(chain_ok(&soft.log));
    assert_eq!(soft.log.len(), 12);
    assert_eq!(soft.log_status, host.log_status);
}
