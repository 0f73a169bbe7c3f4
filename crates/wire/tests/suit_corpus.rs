//! The committed SUIT corpus (built outside this crate by scripts/suit_corpus.py, signed with
//! the draft-ietf-suit-manifest example key): each envelope gets the verdict expected.json
//! states, with the reported fields of an accepted one or the named refusal of a refused one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::PathBuf;

use serde_json::Value;
use simfota_wire::suit::{Envelope, SignerCheck};
use simfota_wire::{Digest, Error, Limits, PublicKey, pem};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/suit-corpus")
}

fn key() -> PublicKey {
    let pem = std::fs::read_to_string(corpus().join("pubkey.pem")).unwrap();
    pem::public_key_from_pem(&pem).unwrap()
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(corpus().join("expected.json")).unwrap();
    match serde_json::from_str(&text).unwrap() {
        Value::Object(m) => m,
        _ => panic!("expected.json is not an object"),
    }
}

fn hex_field(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn digest_hex(d: Option<Digest>) -> Option<String> {
    d.map(|d| hex::encode(d.0))
}

fn check_fields(name: &str, m: &simfota_wire::suit::Manifest<'_>, f: &Value) {
    assert_eq!(
        m.vendor_id.map(hex::encode),
        hex_field(&f["vendor_id"]),
        "{name}: vendor_id"
    );
    assert_eq!(
        m.class_id.map(hex::encode),
        hex_field(&f["class_id"]),
        "{name}: class_id"
    );
    assert_eq!(
        digest_hex(m.image_digest),
        hex_field(&f["image_digest"]),
        "{name}: image_digest"
    );
    assert_eq!(m.image_size, f["image_size"].as_u64(), "{name}: image_size");
    assert_eq!(m.uri, f["uri"].as_str(), "{name}: uri");
    assert_eq!(
        digest_hex(m.precursor_digest),
        hex_field(&f["precursor_digest"]),
        "{name}: precursor_digest"
    );
    assert_eq!(
        digest_hex(m.payload_digest),
        hex_field(&f["payload_digest"]),
        "{name}: payload_digest"
    );
    assert_eq!(
        m.payload_size,
        f["payload_size"].as_u64(),
        "{name}: payload_size"
    );
}

fn check_refusal(name: &str, got: &Error, want: &Value) {
    match (want["kind"].as_str().unwrap(), got) {
        ("UnsupportedSuit", Error::UnsupportedSuit { what, code }) => {
            assert_eq!(*what, want["what"].as_str().unwrap(), "{name}: what");
            assert_eq!(*code, want["code"].as_i64().unwrap(), "{name}: code");
        }
        ("TooDeep", Error::TooDeep) => {}
        (kind, e) => panic!("{name}: expected {kind}, got {e:?}"),
    }
}

#[test]
fn corpus_verdicts() {
    let key = key();
    let all = expected();
    assert!(all.len() >= 40, "corpus has {} cases", all.len());
    let (mut accepted, mut refused) = (0, 0);
    for (name, exp) in &all {
        let bytes = std::fs::read(corpus().join(format!("{name}.suit"))).unwrap();
        let env = Envelope::decode(&bytes, &Limits::DEFAULT)
            .unwrap_or_else(|e| panic!("{name}: does not decode: {e}"));
        let res = env.verify_as_signer(&key);
        match exp["verdict"].as_str().unwrap() {
            "accept" => {
                let m = res.unwrap_or_else(|e| panic!("{name}: refused: {e:?}"));
                assert_eq!(m.sequence, exp["sequence"].as_u64().unwrap(), "{name}");
                check_fields(name, &m, &exp["fields"]);
                accepted += 1;
            }
            "refuse" => match res {
                Ok(_) => panic!("{name}: accepted"),
                // Every refusal comes after the signature verified: the originator is known.
                Err(SignerCheck::NotSigned(e)) => panic!("{name}: signature refused: {e:?}"),
                Err(SignerCheck::Invalid(e)) => {
                    check_refusal(name, &e, &exp["error"]);
                    refused += 1;
                }
            },
            v => panic!("{name}: unknown verdict {v}"),
        }
    }
    eprintln!("corpus: {accepted} accepted, {refused} refused");
    assert!(accepted >= 8 && refused >= 30);
}

#[test]
fn corpus_is_signed_by_the_draft_key_only() {
    // A key other than the draft's: every envelope is NotSigned, none is even examined.
    let other = PublicKey::from(
        &simfota_wire::p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap(),
    );
    for name in expected().keys() {
        let bytes = std::fs::read(corpus().join(format!("{name}.suit"))).unwrap();
        let env = Envelope::decode(&bytes, &Limits::DEFAULT).unwrap();
        assert_eq!(
            env.verify_as_signer(&other).err(),
            Some(SignerCheck::NotSigned(Error::BadSignature)),
            "{name}"
        );
    }
}
