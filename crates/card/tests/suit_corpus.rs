//! The committed SUIT corpus (crates/wire/tests/data/suit-corpus, built outside the crates by
//! scripts/suit_corpus.py) through a real applet: personalized with the draft-ietf-suit-manifest
//! example key as its trusted originator and a policy allowing the corpus' vendor and class,
//! each envelope goes through AUTHORIZE UPDATE with a valid delivery token. Accepted envelopes
//! answer 9000; refused ones the status word expected.json names (66 14 ManifestUnsupported for
//! a manifest the card does not process).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::path::PathBuf;

use common::{Card, IMEI, World};
use serde_json::Value;
use simfota_card::StatusWord;
use simfota_wire::suit::Envelope;
use simfota_wire::{IntegrityMode, Limits, Policy, UnauthorizedRule, pem};

/// Vendor and class ids of the draft examples, which the corpus uses.
const VENDOR: [u8; 16] = [
    0xfa, 0x6b, 0x4a, 0x53, 0xd5, 0xad, 0x5f, 0xdf, 0xbe, 0x9d, 0xe6, 0x63, 0xe4, 0xd4, 0x1f, 0xfe,
];
const CLASS: [u8; 16] = [
    0x14, 0x92, 0xaf, 0x14, 0x25, 0x69, 0x5e, 0x48, 0xbf, 0x42, 0x9b, 0x2d, 0x51, 0xf2, 0xab, 0x45,
];

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/data/suit-corpus")
}

fn policy() -> Vec<u8> {
    let mut p = Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest);
    p.allow(VENDOR, CLASS).unwrap();
    let mut b = [0u8; 200];
    let n = p.encode(&mut b).unwrap();
    b[..n].to_vec()
}

/// The test world with the draft's example key as the trusted originator.
fn world() -> World {
    let pem = std::fs::read_to_string(corpus().join("draft-example-key.pem")).unwrap();
    World {
        originator: pem::signing_key_from_pem(&pem).unwrap(),
        ..World::new()
    }
}

/// A fresh personalized card, selected, terminal bound: every envelope meets a card that has
/// authorized nothing yet (no sequence number to roll back from, no pending update).
fn card(w: &World) -> Card {
    let mut c = Card::blank("suit corpus card");
    w.personalize(&mut c, &policy());
    assert_eq!(c.select(), StatusWord::OK);
    assert_eq!(c.bind(IMEI), StatusWord::OK);
    c
}

#[test]
fn corpus_through_authorize_update() {
    let text = std::fs::read_to_string(corpus().join("expected.json")).unwrap();
    let Value::Object(all) = serde_json::from_str(&text).unwrap() else {
        panic!("expected.json is not an object");
    };
    let mut w = world();
    let mut unsupported = 0;
    for (name, exp) in &all {
        let env = std::fs::read(corpus().join(format!("{name}.suit"))).unwrap();
        let md = Envelope::decode(&env, &Limits::DEFAULT)
            .unwrap()
            .stated_manifest_digest();
        let mut c = card(&w);
        let cti = w.next_cti();
        let nonce = c.nonce();
        let token = w.token(&cti, nonce, md);
        let want = match exp["verdict"].as_str().unwrap() {
            "accept" => "9000",
            _ => exp["error"]["card"].as_str().unwrap(),
        };
        let want = StatusWord(u16::from_str_radix(want, 16).unwrap());
        if want == StatusWord(0x6614) {
            unsupported += 1;
        }
        assert_eq!(c.authorize(&token, &env), want, "{name}: {}", exp["why"]);
    }
    assert!(unsupported >= 30, "{unsupported} ManifestUnsupported cases");
}
