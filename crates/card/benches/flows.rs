//! Cost of each card flow: APDUs (short + chaining, and extended), bytes each way, ECDSA and
//! ECDH operations, persistent bytes written, the host's own processing time, and the time
//! modeled on a reference SIM from published per-operation figures.
//!
//! Run: `cargo bench -p simfota-card --bench flows` (prints a Markdown table; the figures
//! in docs/performance.md, section "Card applet", come from it).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::*;
use simfota_card::{CryptoOps, PAGE_ENTRIES, StatusWord, ins};
use simfota_wire::UnauthorizedRule;

struct Row {
    flow: &'static str,
    short: Stats,
    ext: Stats,
    ops: CryptoOps,
    written: u64,
    writes: u32,
    host_us: u128,
}

/// Per-operation figures of a reference SIM.
struct Profile {
    name: &'static str,
    verify_ms: f64,
    sign_ms: f64,
    /// Ephemeral key generation + ECDH.
    ecdh_ms: f64,
    /// Per persistent write call (page programming), ms.
    write_ms: f64,
    /// Per APDU fixed overhead (T=1 framing, command processing), ms.
    apdu_ms: f64,
    /// Link speed, bytes per second.
    link_bps: f64,
}

const PROFILES: [Profile; 2] = [
    // Current JCOP-class SIM (ECDSA P-256 verify ~30 ms), fast T=1 link of 20 KB/s.
    Profile {
        name: "current SIM, 20 KB/s",
        verify_ms: 30.0,
        sign_ms: 35.0,
        ecdh_ms: 60.0,
        write_ms: 1.5,
        apdu_ms: 2.0,
        link_bps: 20_000.0,
    },
    // Older Java Card (ECTester figures: P-256 ECDSA sign ~150 ms, verify ~140 ms, ECDH
    // ~170 ms plus key generation), slow T=0 link of 1 KB/s.
    Profile {
        name: "older SIM, 1 KB/s",
        verify_ms: 140.0,
        sign_ms: 150.0,
        ecdh_ms: 320.0,
        write_ms: 3.0,
        apdu_ms: 5.0,
        link_bps: 1_000.0,
    },
];

fn modeled(p: &Profile, r: &Row, s: &Stats) -> f64 {
    let crypto = r.ops.ecdsa_verify as f64 * p.verify_ms
        + r.ops.ecdsa_sign as f64 * p.sign_ms
        + r.ops.ecdh as f64 * p.ecdh_ms;
    let link = (s.to_card + s.from_card) as f64 / p.link_bps * 1000.0 + s.apdus as f64 * p.apdu_ms;
    crypto + link + r.writes as f64 * p.write_ms
}

/// Runs `flow` on a card prepared by `setup` in both link modes.
fn measure(
    flow: &'static str,
    setup: impl Fn(&mut World, &mut Card),
    run: impl Fn(&mut World, &mut Card),
    pol: fn() -> Vec<u8>,
) -> Row {
    let mut stats = [Stats::default(); 2];
    let mut written = 0;
    let mut writes = 0;
    let mut host_us = 0;
    let mut ops = CryptoOps::default();
    for (i, extended) in [false, true].into_iter().enumerate() {
        let mut w = World::new();
        let mut card = w.card(&pol());
        setup(&mut w, &mut card);
        card.extended = extended;
        card.stats = Stats::default();
        card.applet.store_mut().arm(None);
        card.applet.take_crypto_ops();
        let t = Instant::now();
        run(&mut w, &mut card);
        ops = card.applet.take_crypto_ops();
        if !extended {
            host_us = t.elapsed().as_micros();
        }
        stats[i] = card.stats;
        written = card.applet.store().bytes_written();
        writes = card.applet.store().writes();
    }
    Row {
        flow,
        short: stats[0],
        ext: stats[1],
        ops,
        written,
        writes,
        host_us,
    }
}

fn refuse() -> Vec<u8> {
    policy(UnauthorizedRule::Refuse)
}

fn main() {
    let mut rows = Vec::new();
    rows.push(measure(
        "authorize (nonce + token + severed SUIT envelope)",
        |_, _| {},
        |w, c| {
            let (env, md) = w.package(5);
            let cti = w.next_cti();
            let n = c.nonce();
            assert_eq!(c.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
        },
        refuse,
    ));
    rows.push(measure(
        "consent with PIN (unauthorized server)",
        |_, _| {},
        |w, c| {
            let (env, md) = w.package(5);
            let cti = w.next_cti();
            let n = c.nonce();
            let t = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
            assert_eq!(c.authorize(&t, &env), StatusWord(0x660F));
            assert_eq!(c.verify_pin(PIN), StatusWord::OK);
            assert_eq!(
                c.cmd(0x80, ins::RECORD_CONSENT, 1, 0, &request(&t, &env)).1,
                StatusWord::OK
            );
        },
        || policy(UnauthorizedRule::ConfirmWithPin),
    ));
    let authorized = |w: &mut World, c: &mut Card| {
        let (env, md) = w.package(5);
        let cti = w.next_cti();
        let n = c.nonce();
        assert_eq!(c.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
    };
    rows.push(measure(
        "integrity, device digest",
        authorized,
        |w, c| {
            let p = w.payload.clone();
            assert_eq!(c.device_digest(&p), StatusWord::OK);
        },
        refuse,
    ));
    rows.push(measure(
        "integrity, card digest (3000-byte payload streamed)",
        authorized,
        |w, c| {
            let p = w.payload.clone();
            assert_eq!(c.stream(&p, 1024), StatusWord::OK);
        },
        simfota_wire_policy_card_digest,
    ));
    rows.push(measure(
        "report result (receipt)",
        |w, c| {
            let (env, md) = w.package(5);
            let cti = w.next_cti();
            let n = c.nonce();
            assert_eq!(c.authorize(&w.token(&cti, n, md), &env), StatusWord::OK);
            let p = w.payload.clone();
            assert_eq!(c.device_digest(&p), StatusWord::OK);
        },
        |w, c| {
            let cti = vec![0xC7, w.cti];
            assert_eq!(c.report(200, &cti).1, StatusWord::OK);
        },
        refuse,
    ));
    rows.push(measure(
        "log read, 64 entries",
        |w, c| {
            // 66 entries written, the first 60 acknowledged: the ring holds the newest 64.
            for s in 1..=20 {
                w.full_update(c, s);
            }
            let n = c.nonce();
            let ack = w.log_ack(&w.reader, READER, n, 59);
            assert_eq!(c.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
            w.full_update(c, 21);
            w.full_update(c, 22);
        },
        |w, c| {
            let got = w.read_all(c);
            assert_eq!(got.len(), 64);
        },
        refuse,
    ));
    rows.push(measure(
        "acknowledge",
        |w, c| {
            w.full_update(c, 1);
        },
        |w, c| {
            let n = c.nonce();
            let ack = w.log_ack(&w.reader, READER, n, 2);
            assert_eq!(c.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
        },
        refuse,
    ));
    rows.push(measure(
        "admin command (put server)",
        |_, _| {},
        |w, c| {
            let k = key("new server");
            let cmd = w.admin(
                ICCID,
                admin_put_server("dm2.operator.example", &k, simfota_wire::Rights::ALL),
            );
            assert_eq!(c.cmd(0x80, ins::ADMIN, 0, 0, &cmd).1, StatusWord::OK);
        },
        refuse,
    ));

    println!("Card applet flows (RAM state {} bytes, persistent image {} bytes, export page {} entries)\n",
        simfota_card::Applet::<simfota_card::CardMemory, simfota_card::RngPlatform<TestRng>>::ram_state_size(),
        simfota_card::PERSISTENT_SIZE, PAGE_ENTRIES);
    println!(
        "| flow | APDUs short+chaining | APDUs extended | bytes to card | bytes from card | ECDSA verify / sign | ECDH | persistent writes (bytes) | host time | modeled: {} | modeled: {} |",
        PROFILES[0].name, PROFILES[1].name
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} ({}) | {:.2} ms | {:.0} ms | {:.0} ms |",
            r.flow,
            r.short.apdus,
            r.ext.apdus,
            r.short.to_card,
            r.short.from_card,
            r.ops.ecdsa_verify,
            r.ops.ecdsa_sign,
            r.ops.ecdh,
            r.writes,
            r.written,
            r.host_us as f64 / 1000.0,
            modeled(&PROFILES[0], r, &r.short),
            modeled(&PROFILES[1], r, &r.short),
        );
    }
}

fn simfota_wire_policy_card_digest() -> Vec<u8> {
    World::policy(
        UnauthorizedRule::Refuse,
        simfota_wire::IntegrityMode::CardDigest { max_size: 1 << 20 },
    )
}
