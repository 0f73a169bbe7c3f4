//! End-to-end flows against the applet with real signed objects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use simfota_card::{Applet, CardMemory, StatusWord, ins};
use simfota_wire::contract::{CardInfo, OriginatorEntry, ServerEntry};
use simfota_wire::{Event, FumoResult, IntegrityMode, Receipt, UnauthorizedRule};

#[test]
fn authorized_update_end_to_end() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (cti, receipt) = w.full_update(&mut card, 5);
    let card_pk = card_public_key(&mut card);
    let r = Receipt::verify(&receipt, &card_pk, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!(r.update_id.as_bytes(), &cti[..]);
    assert_eq!(r.result, FumoResult::SUCCESSFUL);
    assert_eq!(r.log_seq, 2);
    let ci_bytes = card.info();
    let ci = CardInfo::decode(&ci_bytes, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!(ci.installed_sequence, 5);
    assert_eq!(ci.trusted_time, NOW);
    assert!(!ci.update_pending);
    let entries = w.read_all(&mut card);
    let events: Vec<Event> = entries.iter().map(|e| e.event).collect();
    assert_eq!(
        events,
        vec![
            Event::Authorized,
            Event::IntegrityOk,
            Event::Installed(FumoResult::SUCCESSFUL)
        ]
    );
    assert!(chain_ok(&entries));
    assert_eq!(r.chain_head, entries[2].entry_hash().unwrap());
    assert_eq!(entries[0].imei.unwrap().as_str(), IMEI);
    assert_eq!(entries[0].release.unwrap().as_str(), "Release 7");
    assert_eq!(entries[0].originator.unwrap().as_str(), ORIGINATOR);
}

#[test]
fn a_recorded_result_gives_its_receipt_again() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (first, first_receipt) = w.full_update(&mut card, 5);
    // The device lost the receipt (crash) and restarts: a new card session.
    let mut card = card.power_cycle();
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    let before = store_writes(&card);
    let (again, sw) = card.receipt(&first);
    assert_eq!(sw, StatusWord::OK);
    // A signature over the same facts (the very same bytes where signing is deterministic).
    assert!(same_receipt(&mut card, &again, &first_receipt));
    assert_eq!(store_writes(&card), before, "GET RECEIPT writes nothing");
    // A second report is still refused; the log holds one result.
    assert_eq!(
        card.report(200, &first).1,
        StatusWord::refused(simfota_card::Reason::UnknownUpdate.code())
    );
    // Later updates and refusals do not hide an earlier receipt while its record is stored.
    let (second, second_receipt) = w.full_update(&mut card, 6);
    let (env, md) = w.package(7);
    let cti = w.next_cti();
    let n = card.nonce();
    let stale = w.token_with(&w.server, SERVER, &cti, n, ICCID, IMEI, md, NOW, NOW);
    assert!(!card.authorize(&stale, &env).is_success());
    let again = card.receipt(&first).0;
    assert!(same_receipt(&mut card, &again, &first_receipt));
    let again = card.receipt(&second).0;
    assert!(same_receipt(&mut card, &again, &second_receipt));
    let card_pk = card_public_key(&mut card);
    let r = Receipt::verify(&second_receipt, &card_pk, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!((r.update_id.as_bytes(), r.log_seq), (&second[..], 5));
    let entries = w.read_all(&mut card);
    let installed = entries
        .iter()
        .filter(|e| matches!(e.event, Event::Installed(_)))
        .count();
    assert_eq!(installed, 2);
}

#[test]
fn a_failed_result_gives_its_receipt_again_in_extended_mode() {
    let mut w = World::new();
    let mut card = w.default_card();
    card.extended = true;
    let (env, md) = w.package(2);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let (receipt, sw) = card.report(410, &cti);
    assert_eq!(sw, StatusWord::OK);
    let (again, sw) = card.receipt(&cti);
    assert_eq!(sw, StatusWord::OK);
    assert!(same_receipt(&mut card, &again, &receipt));
    let card_pk = card_public_key(&mut card);
    let r = Receipt::verify(&receipt, &card_pk, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!(r.result, FumoResult(410));
    // The installed sequence did not move: a failure is no install.
    let ci_bytes = card.info();
    assert_eq!(
        CardInfo::decode(&ci_bytes, &simfota_wire::Limits::DEFAULT)
            .unwrap()
            .installed_sequence,
        0
    );
}

#[test]
fn extended_apdus_carry_the_same_flow() {
    let mut w = World::new();
    let mut card = w.default_card();
    card.extended = true;
    w.full_update(&mut card, 1);
    let entries = w.read_all(&mut card);
    assert_eq!(entries.len(), 3);
}

#[test]
fn card_digest_mode_hashes_the_streamed_payload() {
    let mut w = World::new();
    let mut card = w.card(&World::policy(
        UnauthorizedRule::Refuse,
        IntegrityMode::CardDigest { max_size: 1 << 20 },
    ));
    let (env, md) = w.package(3);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    // A device digest is not enough under this policy.
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord(0x6622));
    assert_eq!(card.stream(&p, 700), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
}

#[test]
fn consent_with_pin_through_unauthorized_server() {
    let mut w = World::new();
    let mut card = w.card(&policy(UnauthorizedRule::ConfirmWithPin));
    let (env, md) = w.package(2);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
    let req = request(&tok, &env);
    assert_eq!(
        card.authorize(&tok, &env),
        StatusWord(0x660F),
        "PIN consent required"
    );
    // Yes without PIN: refused until the PIN is verified.
    assert_eq!(
        card.cmd(0x80, ins::RECORD_CONSENT, 1, 0, &req).1,
        StatusWord::SECURITY_STATUS
    );
    assert_eq!(card.verify_pin(PIN), StatusWord::OK);
    assert_eq!(
        card.cmd(0x80, ins::RECORD_CONSENT, 1, 0, &req).1,
        StatusWord::OK
    );
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
    let entries = w.read_all(&mut card);
    assert_eq!(entries[0].event, Event::Consent { pin_verified: true });
    assert_eq!(entries[1].event, Event::Authorized);
    assert!(
        !entries[1].free_device,
        "a consent is not the free-device policy"
    );
    assert_eq!(entries[1].server.unwrap().as_str(), ROGUE);
    assert!(entries[..2].iter().all(|e| {
        e.unverified
            .unwrap()
            .contains(simfota_wire::Unverified::SERVER)
    }));
    assert!(chain_ok(&entries));
}

#[test]
fn warn_confirm_declined_is_logged() {
    let mut w = World::new();
    let mut card = w.card(&policy(UnauthorizedRule::WarnConfirm));
    let (env, md) = w.package(2);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
    assert_eq!(card.authorize(&tok, &env), StatusWord(0x660E));
    let sw = card
        .cmd(0x80, ins::RECORD_CONSENT, 0, 0, &request(&tok, &env))
        .1;
    assert_eq!(sw, StatusWord(0x6610));
    assert_eq!(simfota_card::fumo_result_for(sw), Some(401));
    let entries = w.read_all(&mut card);
    // The device's "no" is counted, like every refusal nothing authenticated.
    assert_eq!(entries.len(), 1);
    match entries[0].event {
        Event::Refusals(t) => {
            assert_eq!(t.counts(), &[(simfota_wire::DenyReason(0x10), 1)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(entries[0].server, None);
}

#[test]
fn free_device_policy_logs_but_still_checks_rollback() {
    let mut w = World::new();
    let mut card = w.card(&policy(UnauthorizedRule::FreeDevice));
    let (env, md) = w.package(4);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
    assert_eq!(card.authorize(&tok, &env), StatusWord::OK);
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
    let (env, md) = w.package(4);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
    assert_eq!(
        card.authorize(&tok, &env),
        StatusWord(0x660C),
        "rollback still refused"
    );
    // The log tells a free-device authorization from a normal one: the authorization entry
    // is flagged (`[0, true]`), the update's later entries and the refusal are not.
    let e = w.read_all(&mut card);
    let shape: Vec<_> = e.iter().map(|e| (e.event, e.free_device)).collect();
    let mut rollback = simfota_wire::RefusalTally::new(None, Some(NOW - 100));
    rollback.add(simfota_wire::DenyReason::ROLLBACK);
    assert_eq!(
        shape,
        [
            (Event::Authorized, true),
            (Event::IntegrityOk, false),
            (Event::Installed(simfota_wire::FumoResult(200)), false),
            (Event::Refusals(rollback), false),
        ]
    );
    // The unlisted server's names are logged as claims, never as verified facts.
    assert_eq!(e[0].server.unwrap().as_str(), ROGUE);
    let claims = simfota_wire::Unverified::SERVER
        .with(simfota_wire::Unverified::UPDATE_ID)
        .with(simfota_wire::Unverified::IMEI);
    assert!(e[..3].iter().all(|e| e.unverified == Some(claims)));
    assert_eq!(e[3].server, None);
}

#[test]
fn listed_server_authorization_is_not_flagged_free_device() {
    // Same policy, listed server: a plain authorization entry.
    let mut w = World::new();
    let mut card = w.card(&policy(UnauthorizedRule::FreeDevice));
    let (env, md) = w.package(4);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let e = w.read_all(&mut card);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].event, Event::Authorized);
    assert!(!e[0].free_device);
}

#[test]
fn authorized_update_survives_a_reboot_during_download() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(9);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let mut card = card.power_cycle();
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
}

#[test]
fn failed_install_does_not_advance_the_sequence() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(9);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.report(410, &cti).1, StatusWord::OK);
    let ci_bytes = card.info();
    assert_eq!(
        CardInfo::decode(&ci_bytes, &simfota_wire::Limits::DEFAULT)
            .unwrap()
            .installed_sequence,
        0
    );
    // The same release can be authorized again.
    w.full_update(&mut card, 9);
}

#[test]
fn pin_change_and_puk_unblock() {
    let w = World::new();
    let mut card = w.default_card();
    let mut d = PIN.to_vec();
    d.extend_from_slice(b"5555\xFF\xFF\xFF\xFF");
    assert_eq!(
        card.cmd(0x00, ins::CHANGE_REFERENCE_DATA, 0, 0x81, &d).1,
        StatusWord::OK
    );
    assert_eq!(card.verify_pin(PIN), StatusWord(0x63C2));
    assert_eq!(card.verify_pin(b"5555\xFF\xFF\xFF\xFF"), StatusWord::OK);
    for left in [2u8, 1, 0] {
        assert_eq!(card.verify_pin(PIN), StatusWord::tries_left(left));
    }
    assert_eq!(
        card.verify_pin(b"5555\xFF\xFF\xFF\xFF"),
        StatusWord::AUTH_BLOCKED
    );
    let mut d = PUK.to_vec();
    d.extend_from_slice(b"9999\xFF\xFF\xFF\xFF");
    assert_eq!(
        card.cmd(0x00, ins::RESET_RETRY_COUNTER, 0, 0x81, &d).1,
        StatusWord::OK
    );
    assert_eq!(card.verify_pin(b"9999\xFF\xFF\xFF\xFF"), StatusWord::OK);
    // Status query.
    assert_eq!(card.cmd(0x00, ins::VERIFY, 0, 0x81, &[]).1, StatusWord::OK);
}

/// Every export page states the PIN counter as it is when the card signs it: all tries after
/// personalization, one fewer after a wrong PIN (which writes no log entry), none when blocked,
/// all again after the PUK reset it.
#[test]
fn export_pages_state_the_pin_counter() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 5);
    let card_pk = card_public_key(&mut card);
    let secret = p256::SecretKey::from_slice(&w.reader.to_bytes()).unwrap();
    let page = |card: &mut Card| {
        let nonce = card.nonce();
        let req = w.log_read(&w.reader, READER, nonce, 0, 64);
        let (exp, sw) = card.cmd(0x80, ins::READ_LOG, 0, 0, &req);
        assert_eq!(sw, StatusWord::OK);
        simfota_wire::open_export(&exp, &card_pk, &secret, &simfota_wire::Limits::DEFAULT)
            .unwrap()
            .into_inner()
    };
    let counter = |card: &mut Card| {
        let p = page(card).pin.expect("the page states the PIN counter");
        (p.left(), p.max(), p.blocked())
    };
    assert_eq!(counter(&mut card), (3, Some(3), false));
    let log_end = page(&mut card).log_end;

    const WRONG: &[u8; 8] = b"9999\xFF\xFF\xFF\xFF";
    assert_eq!(card.verify_pin(WRONG), StatusWord::tries_left(2));
    let after = page(&mut card);
    assert_eq!(after.pin.map(|p| (p.left(), p.max())), Some((2, Some(3))));
    assert_eq!(after.log_end, log_end, "a wrong PIN is no log entry");
    // A new card session does not restore the counter (it is persistent).
    let mut card = card.power_cycle();
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    assert_eq!(counter(&mut card), (2, Some(3), false));
    for left in [1u8, 0] {
        assert_eq!(card.verify_pin(WRONG), StatusWord::tries_left(left));
    }
    assert_eq!(counter(&mut card), (0, Some(3), true));
    assert_eq!(
        card.cmd(0x00, ins::RESET_RETRY_COUNTER, 0x01, 0x81, PUK).1,
        StatusWord::OK
    );
    assert_eq!(counter(&mut card), (3, Some(3), false));
}

/// The largest page the applet signs still fits its I/O buffer with the PIN counter: the most
/// records a page carries, the longest server id as `kid`, the largest sequence numbers and
/// counters.
#[test]
fn the_largest_export_page_fits_the_io_buffer() {
    let card = key("card");
    let server = simfota_wire::PublicKey::from(&key("server"));
    let record = [0u8; simfota_wire::LogEntry::RECORD_LEN];
    let header = simfota_wire::ExportHeader {
        iccid: simfota_wire::Iccid::parse(ICCID).unwrap(),
        nonce: simfota_wire::Nonce([0xff; 16]),
        first_seq: u32::MAX - simfota_card::PAGE_ENTRIES,
        count: simfota_card::PAGE_ENTRIES,
        chain_head: simfota_wire::Digest([0xff; 32]),
        log_end: u32::MAX,
        pin: Some(simfota_wire::PinTries::new(255, Some(255)).unwrap()),
    };
    let mut io = [0u8; simfota_card::IO_CAP];
    let n = simfota_wire::build_export(
        &mut io,
        &header,
        &server,
        &[b'k'; 32],
        &card,
        &mut TestRng::new("largest page"),
        |_, slot| {
            *slot = record;
            true
        },
    )
    .expect("the largest page fits");
    assert!(n <= simfota_card::IO_CAP);
}

#[test]
fn device_reads_servers_policy_originators_without_authentication() {
    let w = World::new();
    let mut card = w.default_card();
    let (d, sw) = card.cmd(0x80, ins::GET_DATA, 0x01, 0x02, &[]);
    assert_eq!(sw, StatusWord::OK);
    let servers = ServerEntry::decode_vec(&d, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0].id.as_str(), SERVER);
    assert_eq!(servers[0].key.to_sec1(), sec1(&w.server));
    assert_eq!(servers[0].rights, simfota_wire::Rights::ALL);
    let (d, sw) = card.cmd(0x80, ins::GET_DATA, 0x01, 0x03, &[]);
    assert_eq!(sw, StatusWord::OK);
    let p = simfota_wire::Policy::decode(&d, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!(p.unauthorized, UnauthorizedRule::Refuse);
    let (d, sw) = card.cmd(0x80, ins::GET_DATA, 0x01, 0x04, &[]);
    assert_eq!(sw, StatusWord::OK);
    let originators = OriginatorEntry::decode_vec(&d, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!(originators.len(), 1);
    assert_eq!(originators[0].id.as_str(), ORIGINATOR);
}

#[test]
fn card_info_reports_identity_and_capacities() {
    let w = World::new();
    let mut card = w.default_card();
    let b = card.info();
    let ci = CardInfo::decode(&b, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!((ci.iccid.as_str(), ci.imsi.as_str()), (ICCID, IMSI));
    assert_eq!(ci.log_capacity, 64);
    assert_eq!(ci.log_free, 64);
    assert_eq!(ci.version, simfota_card::APPLET_VERSION);
    // The certificate binds this card's key under the issuer key.
    let cert = simfota_wire::CardCertificate::verify(
        ci.certificate,
        &simfota_wire::PublicKey::from(&w.issuer),
        &simfota_wire::Limits::DEFAULT,
    )
    .unwrap();
    assert_eq!(&cert.card_key.to_sec1()[..], ci.card_key.unwrap());
}

#[test]
fn personalization_locks_the_card() {
    let w = World::new();
    let mut card = w.default_card();
    assert_eq!(
        card.cmd(0x00, ins::GENERATE_KEY_PAIR, 0, 0, &[]).1,
        StatusWord::CONDITIONS
    );
    assert_eq!(
        card.cmd(0x80, ins::STORE_DATA, 0x80, 0, &[0x01, 0x02, 0x01, 0x31])
            .1,
        StatusWord::CONDITIONS
    );
}

#[test]
fn incomplete_personalization_cannot_lock() {
    let mut card = Card::blank("x");
    assert_eq!(card.select(), StatusWord::OK);
    let mut d = vec![0x01, 0x01, ICCID.len() as u8];
    d.extend_from_slice(ICCID.as_bytes());
    assert_eq!(
        card.cmd(0x80, ins::STORE_DATA, 0x80, 0, &d).1,
        StatusWord::CONDITIONS
    );
    // Nothing of that command was kept.
    assert_eq!(
        card.cmd(0x00, ins::GET_CHALLENGE, 0, 0, &[]).1,
        StatusWord::CONDITIONS
    );
}

#[test]
fn ram_and_persistent_budget() {
    let ram = Applet::<CardMemory, simfota_card::RngPlatform<TestRng>>::ram_state_size();
    println!(
        "RAM state: {ram} bytes; persistent: {} bytes",
        simfota_card::PERSISTENT_SIZE
    );
    assert!(ram <= 2048, "RAM state {ram} bytes exceeds 2 KiB");
    const { assert!(simfota_card::PERSISTENT_SIZE <= 32 * 1024) };
    // A full log: usage reaches the whole image minus free table slots.
    let mut w = World::new();
    let mut card = w.default_card();
    let empty = card.applet.persistent_usage().unwrap();
    assert_eq!(
        (empty.servers, empty.originators, empty.log_records),
        (2, 1, 0)
    );
    for s in 1..=3 {
        w.full_update(&mut card, s);
    }
    let used = card.applet.persistent_usage().unwrap();
    assert_eq!(used.log_records, 9);
    assert_eq!(
        used.in_use - empty.in_use,
        9 * simfota_wire::LogEntry::RECORD_LEN
    );
    assert!(used.in_use <= used.allocated);
    println!(
        "persistent in use after 9 entries: {} of {} bytes",
        used.in_use, used.allocated
    );
}

#[test]
fn pending_update_is_readable_after_a_reboot() {
    use simfota_wire::contract::{Integrity, PendingUpdate};
    let lim = simfota_wire::Limits::DEFAULT;
    let mut w = World::new();
    let mut card = w.default_card();
    let (d, sw) = card.cmd(0x80, ins::GET_DATA, 0x01, 0x06, &[]);
    assert_eq!(sw, StatusWord::OK);
    assert_eq!(PendingUpdate::decode(&d, &lim).unwrap(), None);
    let (env, md) = w.package(8);
    let cti = w.next_cti();
    let n = card.nonce();
    assert_eq!(card.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    let mut card = card.power_cycle();
    assert_eq!(card.select(), StatusWord::OK);
    let (d, sw) = card.cmd(0x80, ins::GET_DATA, 0x01, 0x06, &[]);
    assert_eq!(sw, StatusWord::OK);
    let p = PendingUpdate::decode(&d, &lim).unwrap().unwrap();
    assert_eq!(p.update_id.as_bytes(), &cti[..]);
    assert_eq!(
        (p.integrity, p.sequence, p.image_size),
        (Integrity::NotChecked, 8, w.payload.len() as u64)
    );
    assert_eq!(
        &p.image_digest.0[..],
        &<sha2::Sha256 as sha2::Digest>::digest(&w.payload)[..]
    );
}
