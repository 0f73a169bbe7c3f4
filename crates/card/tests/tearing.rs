//! Tearing: for every state-changing flow and every write N of its command, cut the power
//! at write N, restart, and check that the card is in the state before or after the command
//! (never between), that the log chain verifies, that no unacknowledged entry was lost and
//! that a consumed nonce is never usable again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use simfota_card::{PowerCut, StatusWord, ins};
use simfota_wire::{AdminChange, IntegrityMode, LogEntry, OriginatorId, UnauthorizedRule};

/// A command APDU's header and data.
type Apdu = (u8, u8, u8, u8, Vec<u8>);

/// A flow: builds the persistent pre-state, then does the RAM preparation (select, bind,
/// nonce, PIN...) and returns the command under test.
struct Flow {
    name: &'static str,
    policy: fn() -> Vec<u8>,
    before: fn(&mut World, &mut Card),
    command: fn(&mut World, &mut Card) -> Apdu,
    /// Whether replaying the same command after the restart must fail (its nonce or its
    /// RAM-only stream state died with the power). A report may be repeated: the cut left
    /// the update pending, and the device reports again.
    single_use: bool,
    /// The command may rewrite the newest record: an open refusal tally no export has shown
    /// (the test's own read of the pre-state is not one the card made in that state).
    counts_in_open_tally: bool,
}

/// A request that nothing authenticates: a token naming the listed server, signed by
/// another key (counted, never logged one by one).
fn forged_cmd(w: &mut World, _: &mut Card) -> Apdu {
    let (env, md) = w.package(5);
    let t = w.token_with(
        &w.rogue,
        SERVER,
        b"forged",
        simfota_wire::Nonce([9; 16]),
        ICCID,
        IMEI,
        md,
        NOW,
        NOW + 60,
    );
    (0x80, ins::AUTHORIZE_UPDATE, 0, 0, request(&t, &env))
}

fn one_forged_refusal(w: &mut World, c: &mut Card) {
    let (cla, ins, p1, p2, data) = forged_cmd(w, c);
    assert_eq!(c.cmd(cla, ins, p1, p2, &data).1, StatusWord(0x6602));
}

fn refuse() -> Vec<u8> {
    policy(UnauthorizedRule::Refuse)
}

fn nothing(_: &mut World, _: &mut Card) {}

fn authorized(w: &mut World, c: &mut Card) {
    let (env, md) = w.package(5);
    let cti = w.next_cti();
    let n = c.nonce();
    assert_eq!(c.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
}

fn authorized_and_checked(w: &mut World, c: &mut Card) {
    authorized(w, c);
    let p = w.payload.clone();
    assert_eq!(c.device_digest(&p), StatusWord::OK);
}

fn authorize_cmd(w: &mut World, c: &mut Card) -> Apdu {
    let (env, md) = w.package(5);
    let cti = w.next_cti();
    let n = c.nonce();
    (
        0x80,
        ins::AUTHORIZE_UPDATE,
        0,
        0,
        request(&w.token(&cti, n, md), &env),
    )
}

fn flows() -> Vec<Flow> {
    vec![
        Flow {
            name: "authorize",
            policy: refuse,
            before: nothing,
            command: authorize_cmd,
            single_use: true,
            counts_in_open_tally: false,
        },
        Flow {
            name: "authorize refused (logged)",
            policy: refuse,
            before: nothing,
            command: |w, c| {
                let (env, md) = w.package(5);
                let cti = w.next_cti();
                let n = c.nonce();
                let t = w.token_with(
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
                (0x80, ins::AUTHORIZE_UPDATE, 0, 0, request(&t, &env))
            },
            single_use: true,
            counts_in_open_tally: false,
        },
        Flow {
            name: "refusal counted in a new tally",
            policy: refuse,
            before: nothing,
            command: forged_cmd,
            single_use: false,
            counts_in_open_tally: false,
        },
        Flow {
            name: "refusal counted in the open tally",
            policy: refuse,
            before: one_forged_refusal,
            command: forged_cmd,
            single_use: false,
            counts_in_open_tally: true,
        },
        Flow {
            name: "log read seals the open tally",
            policy: refuse,
            before: one_forged_refusal,
            command: |w, c| {
                let n = c.nonce();
                (
                    0x80,
                    ins::READ_LOG,
                    0,
                    0,
                    w.log_read(&w.reader, READER, n, 0, 64),
                )
            },
            single_use: true,
            counts_in_open_tally: false,
        },
        Flow {
            name: "consent with PIN",
            policy: || policy(UnauthorizedRule::ConfirmWithPin),
            before: nothing,
            command: |w, c| {
                let (env, md) = w.package(5);
                let cti = w.next_cti();
                let n = c.nonce();
                let t = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
                assert_eq!(c.authorize(&t, &env), StatusWord(0x660F));
                assert_eq!(c.verify_pin(PIN), StatusWord::OK);
                (0x80, ins::RECORD_CONSENT, 1, 0, request(&t, &env))
            },
            single_use: true,
            counts_in_open_tally: false,
        },
        Flow {
            name: "device digest",
            policy: refuse,
            before: authorized,
            command: |w, _| {
                let mut d = sha2::Digest::finalize(
                    <sha2::Sha256 as sha2::Digest>::new_with_prefix(&w.payload),
                )
                .to_vec();
                d.extend_from_slice(&(w.payload.len() as u64).to_be_bytes());
                (0x80, ins::PAYLOAD, 0, 0, d)
            },
            single_use: false,
            counts_in_open_tally: false,
        },
        Flow {
            name: "card digest (stream end)",
            policy: || {
                World::policy(
                    UnauthorizedRule::Refuse,
                    IntegrityMode::CardDigest { max_size: 1 << 20 },
                )
            },
            before: authorized,
            command: |w, c| {
                let p = w.payload.clone();
                assert_eq!(
                    c.cmd(0x80, ins::PAYLOAD, 1, 0, &p[..1200]).1,
                    StatusWord::OK
                );
                assert_eq!(
                    c.cmd(0x80, ins::PAYLOAD, 2, 0, &p[1200..2400]).1,
                    StatusWord::OK
                );
                (0x80, ins::PAYLOAD, 3, 0, p[2400..].to_vec())
            },
            single_use: true,
            counts_in_open_tally: false,
        },
        Flow {
            name: "report result",
            policy: refuse,
            before: authorized_and_checked,
            command: |w, _| {
                let mut d = 200u16.to_be_bytes().to_vec();
                d.extend_from_slice(&NOW.to_be_bytes());
                d.extend_from_slice(&[0xC7, w.cti]);
                (0x80, ins::REPORT_RESULT, 0, 0, d)
            },
            single_use: false,
            counts_in_open_tally: false,
        },
        Flow {
            name: "acknowledge",
            policy: refuse,
            before: |w, c| {
                w.full_update(c, 3);
            },
            command: |w, c| {
                let n = c.nonce();
                (0x80, ins::ACK_LOG, 0, 0, w.log_ack(&w.reader, READER, n, 1))
            },
            single_use: true,
            counts_in_open_tally: false,
        },
        Flow {
            name: "admin command",
            policy: refuse,
            before: nothing,
            command: |w, _| {
                let d = w.admin(
                    ICCID,
                    AdminChange::RemoveOriginator {
                        id: OriginatorId::new(ORIGINATOR).unwrap(),
                    },
                );
                (0x80, ins::ADMIN, 0, 0, d)
            },
            single_use: false,
            counts_in_open_tally: false,
        },
        Flow {
            name: "change PIN",
            policy: refuse,
            before: nothing,
            command: |_, _| {
                let mut d = PIN.to_vec();
                d.extend_from_slice(b"2468\xFF\xFF\xFF\xFF");
                (0x00, ins::CHANGE_REFERENCE_DATA, 0, 0x81, d)
            },
            single_use: false,
            counts_in_open_tally: false,
        },
        Flow {
            name: "unblock PIN with PUK",
            policy: refuse,
            before: |_, c| {
                for _ in 0..3 {
                    c.verify_pin(b"0000\xFF\xFF\xFF\xFF");
                }
                assert_eq!(c.verify_pin(PIN), StatusWord::AUTH_BLOCKED);
            },
            command: |_, _| {
                let mut d = PUK.to_vec();
                d.extend_from_slice(b"2468\xFF\xFF\xFF\xFF");
                (0x00, ins::RESET_RETRY_COUNTER, 0, 0x81, d)
            },
            single_use: false,
            counts_in_open_tally: false,
        },
        Flow {
            name: "verify wrong PIN",
            policy: refuse,
            before: nothing,
            command: |_, _| (0x00, ins::VERIFY, 0, 0x81, b"0000\xFF\xFF\xFF\xFF".to_vec()),
            single_use: false,
            counts_in_open_tally: false,
        },
    ]
}

/// A card in the flow's pre-state, prepared for the command; returns the command.
fn prepare(flow: &Flow) -> (World, Card, Apdu) {
    let mut w = World::new();
    let mut card = w.card(&(flow.policy)());
    (flow.before)(&mut w, &mut card);
    let cmd = (flow.command)(&mut w, &mut card);
    (w, card, cmd)
}

fn entries_after_restart(w: &World, card: Card) -> (Card, Vec<LogEntry>) {
    let mut card = card.power_cycle();
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    let e = w.read_all(&mut card);
    (card, e)
}

#[test]
fn power_cut_at_every_write_of_every_flow() {
    let mut total_cuts = 0;
    for flow in flows() {
        // Reference run without a cut: the image before and after, and the write count.
        let (w, mut card, (cla, ins, p1, p2, data)) = prepare(&flow);
        let before_entries = {
            let mut probe = Card::from_store(
                PowerCut::new(card.applet.store().inner().clone(), None),
                "probe",
            );
            probe.applet.reset();
            let (_, e) = entries_after_restart(&w, probe);
            e
        };
        let mut pre = card.applet.store().inner().clone();
        pre.power_cycle();
        let before = pre.image().to_vec();
        card.applet.store_mut().arm(None);
        let (_, sw) = card.cmd(cla, ins, p1, p2, &data);
        let writes = card.applet.store().writes();
        let after = card.image();
        assert!(writes > 0, "{}: the command writes", flow.name);
        assert!(
            sw.is_success() || sw.sw1() == 0x66 || sw.sw1() == 0x63,
            "{}: {sw:?}",
            flow.name
        );

        for n in 1..=writes {
            total_cuts += 1;
            let (w, mut card, (cla, ins, p1, p2, data)) = prepare(&flow);
            card.applet.store_mut().arm(Some(n));
            let (_, sw) = card.cmd(cla, ins, p1, p2, &data);
            assert_eq!(
                sw,
                StatusWord::MEMORY_FAILURE,
                "{} cut at write {n}",
                flow.name
            );
            let mut mem = card.applet.into_store().into_inner();
            mem.power_cycle();
            let image = mem.image().to_vec();
            // Before or after, never between. VERIFY/CHANGE commit the spent try on their
            // own first (tearing-safe PIN counter): that state is "before, one try spent".
            let pin_flow = ins == ins::VERIFY
                || ins == ins::CHANGE_REFERENCE_DATA
                || ins == ins::RESET_RETRY_COUNTER;
            if !pin_flow {
                assert!(
                    image == before || image == after,
                    "{} cut at write {n}: state between before and after",
                    flow.name
                );
            } else {
                let diff: Vec<usize> = (0..image.len())
                    .filter(|&i| image[i] != before[i])
                    .collect();
                assert!(
                    image == before || image == after || diff.len() == 1,
                    "{} cut at write {n}",
                    flow.name
                );
            }
            let card = Card::from_store(PowerCut::new(mem, None), "restarted");
            let (mut card, entries) = entries_after_restart(&w, card);
            assert!(chain_ok(&entries), "{} cut at {n}: chain", flow.name);
            // No entry lost: every entry there before is still there, unchanged (but an open
            // tally, which may still count).
            assert!(
                entries.len() >= before_entries.len(),
                "{} cut at {n}: entries lost",
                flow.name
            );
            let kept = before_entries.len() - usize::from(flow.counts_in_open_tally);
            assert_eq!(
                &entries[..kept],
                &before_entries[..kept],
                "{} cut at {n}",
                flow.name
            );
            // The nonce died with the power: the same command cannot succeed now.
            if flow.single_use {
                let (_, sw) = card.cmd(cla, ins, p1, p2, &data);
                assert_ne!(
                    sw,
                    StatusWord::OK,
                    "{} cut at {n}: replay after restart",
                    flow.name
                );
            }
        }
    }
    assert!(total_cuts > 20, "{total_cuts} cuts");
}

#[test]
fn power_cut_at_every_write_of_personalization() {
    // Reference: the whole personalization without a cut, counting the writes of the
    // locking STORE DATA (the last block, which also checks the certificate).
    let w = World::new();
    let mut reference = Card::blank("perso");
    w.personalize(&mut reference, &refuse());
    let after = reference.image();
    let mut n = 1;
    loop {
        // Personalize with a cut armed at write n counted from the first command.
        let mut card = Card::blank("perso");
        card.applet.store_mut().arm(Some(n));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            w.personalize(&mut card, &refuse());
        }));
        if result.is_ok() {
            // n is past the last write: the run completed.
            assert_eq!(card.image(), after);
            break;
        }
        let mut card = card.power_cycle();
        let image = card.image();
        // Whatever was cut, the card is either fully personalized or not locked, and a
        // fresh personalization (or its missing part) can still complete it.
        let (info, sw) = card.cmd(0x80, ins::GET_DATA, 0x01, 0x01, &[]);
        assert_eq!(card.select(), StatusWord::OK);
        let _ = (info, sw);
        if image != after {
            let life = image[4];
            assert_ne!(life, 2, "cut at {n}: locked without being complete");
            let mut again = Card::from_store(
                PowerCut::new(card.applet.into_store().into_inner(), None),
                "again",
            );
            w.personalize(&mut again, &refuse());
        }
        n += 1;
        assert!(n < 100, "personalization writes are bounded");
    }
}

/// The device's crash window seen from the card: the power goes at any write of REPORT
/// RESULT. After the restart the card either still holds the update (no receipt yet; the
/// report goes through once) or has recorded the result (GET RECEIPT answers the receipt
/// the uncut report gave, byte for byte); never both, never neither.
#[test]
fn power_cut_during_report_then_receipt_or_report_exactly_once() {
    let report = |w: &World| {
        let mut d = 200u16.to_be_bytes().to_vec();
        d.extend_from_slice(&NOW.to_be_bytes());
        d.extend_from_slice(&[0xC7, w.cti]);
        d
    };
    let fresh = || {
        let mut w = World::new();
        let mut card = w.card(&refuse());
        authorized_and_checked(&mut w, &mut card);
        (w, card)
    };
    let (w, mut card) = fresh();
    card.applet.store_mut().arm(None);
    let (reference, sw) = card.cmd(0x80, ins::REPORT_RESULT, 0, 0, &report(&w));
    assert_eq!(sw, StatusWord::OK);
    let writes = card.applet.store().writes();
    let cti = [0xC7, w.cti];
    let mut seen = (0, 0);
    for n in 1..=writes + 1 {
        let (w, mut card) = fresh();
        card.applet.store_mut().arm(Some(n));
        let (answer, sw) = card.cmd(0x80, ins::REPORT_RESULT, 0, 0, &report(&w));
        if sw == StatusWord::OK {
            // Past the last write: the command completed, then the device died.
            assert!(same_receipt(&mut card, &answer, &reference));
        } else {
            assert_eq!(sw, StatusWord::MEMORY_FAILURE, "cut at write {n}");
        }
        let mut card = card.power_cycle();
        assert_eq!(card.select(), StatusWord::OK);
        assert_eq!(card.bind(IMEI), StatusWord::OK);
        let (receipt, sw) = card.receipt(&cti);
        if sw == StatusWord::OK {
            seen.1 += 1;
            assert!(
                same_receipt(&mut card, &receipt, &reference),
                "cut at write {n}"
            );
            assert_eq!(
                card.cmd(0x80, ins::REPORT_RESULT, 0, 0, &report(&w)).1,
                StatusWord::refused(simfota_card::Reason::UnknownUpdate.code()),
                "cut at write {n}: reported twice"
            );
        } else {
            seen.0 += 1;
            assert_eq!(sw, StatusWord::DATA_NOT_FOUND, "cut at write {n}");
            let (again, sw) = card.cmd(0x80, ins::REPORT_RESULT, 0, 0, &report(&w));
            assert_eq!(sw, StatusWord::OK, "cut {n}");
            assert!(same_receipt(&mut card, &again, &reference), "cut {n}");
            let again = card.receipt(&cti).0;
            assert!(same_receipt(&mut card, &again, &reference), "cut {n}");
        }
        let entries = w.read_all(&mut card);
        assert!(chain_ok(&entries));
        let results = entries
            .iter()
            .filter(|e| matches!(e.event, simfota_wire::Event::Installed(_)))
            .count();
        assert_eq!(results, 1, "cut at write {n}: one result in the log");
    }
    // Every cut inside the command left "before"; the run past its end left "after".
    assert_eq!(seen, (writes as usize, 1));
}
