//! The six official SUIT examples (draft-ietf-suit-manifest-37) verify with the published key,
//! give the documented fields, and any single-byte change makes verification fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use simfota_wire::suit::{Envelope, SignerCheck};
use simfota_wire::{Digest, Error, Limits, PublicKey, pem};

fn suit_key() -> PublicKey {
    let pem =
        std::fs::read_to_string(common::vectors().join("suit/manifest-spec/pubkey.pem")).unwrap();
    pem::public_key_from_pem(&pem).unwrap()
}

fn example(i: usize) -> Vec<u8> {
    common::read_hex(&format!("suit/manifest-spec/example{i}.signed.hex"))
}

fn json(i: usize) -> serde_json::Value {
    let p = common::vectors().join(format!("suit/manifest-spec/example{i}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The manifest digest printed in exampleN.txt: the first `digest-bytes` value.
fn documented_manifest_digest(i: usize) -> Digest {
    let p = common::vectors().join(format!("suit/manifest-spec/example{i}.txt"));
    let text = std::fs::read_to_string(p).unwrap();
    let at = text.find("digest-bytes").unwrap();
    let rest = &text[at..];
    let start = rest.find("h'").unwrap() + 2;
    let end = start + rest[start..].find('\'').unwrap();
    let hexs: String = rest[start..end]
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    Digest(hex::decode(hexs).unwrap().try_into().unwrap())
}

fn uuid(s: &str) -> [u8; 16] {
    hex::decode(s.replace('-', "")).unwrap().try_into().unwrap()
}

/// Examples 3 and 5 are correctly signed but describe what simfota does not authorize, and
/// are refused by name once their signature has verified (docs/formats.md, SUIT section):
/// example 3 picks an A/B slot image by the device's running slot (parameter 5,
/// component-slot), example 5 installs two images (its second fetch is a second install
/// directive).
const REFUSED: [(usize, &str, i64); 2] = [(3, "parameter", 5), (5, "second install directive", 21)];

#[test]
fn official_examples_verify_with_documented_fields() {
    let key = suit_key();
    let sizes = [237, 272, 923, 396, 403, 382];
    for (i, size) in sizes.into_iter().enumerate() {
        let bytes = example(i);
        assert_eq!(bytes.len(), size, "example{i} size");
        let env = Envelope::decode(&bytes, &Limits::DEFAULT).unwrap();
        if let Some(&(_, what, code)) = REFUSED.iter().find(|r| r.0 == i) {
            assert_eq!(
                env.verify_as_signer(&key).err(),
                Some(SignerCheck::Invalid(Error::UnsupportedSuit { what, code })),
                "example{i}"
            );
            continue;
        }
        let m = env
            .verify(&key)
            .unwrap_or_else(|e| panic!("example{i}: {e}"));
        let j = json(i);
        assert_eq!(
            m.sequence,
            j["manifest-sequence-number"].as_u64().unwrap(),
            "example{i}"
        );
        assert_eq!(m.sequence, i as u64);
        assert_eq!(
            m.manifest_digest(),
            documented_manifest_digest(i),
            "example{i}"
        );
        let c0 = &j["components"][0];
        let want_digest = c0["install-digest"]["digest-bytes"].as_str().unwrap();
        assert_eq!(
            m.image_digest.unwrap().to_string(),
            want_digest,
            "example{i}"
        );
        assert_eq!(m.image_size, c0["install-size"].as_u64(), "example{i}");
        assert_eq!(m.vendor_id, Some(uuid(c0["vendor-id"].as_str().unwrap())));
        assert_eq!(m.class_id, Some(uuid(c0["class-id"].as_str().unwrap())));
        assert_eq!(m.uri, c0["uri"].as_str(), "example{i}");
        assert!(m.payload.is_none());
    }
}

#[test]
fn example2_text_and_reference_uri() {
    let bytes = example(2);
    let env = Envelope::decode(&bytes, &Limits::DEFAULT).unwrap();
    let m = env.verify(&suit_key()).unwrap();
    assert_eq!(m.reference_uri, Some("https://git.io/JJYoj"));
    assert!(m.name.unwrap().starts_with("## Example 2"));
    // The severed form (no install/text in the envelope) still verifies, without those fields.
    let severed = common::read_hex("suit/manifest-spec/example2.severed-signed.hex");
    let env = Envelope::decode(&severed, &Limits::DEFAULT).unwrap();
    let ms = env.verify(&suit_key()).unwrap();
    assert_eq!(ms.manifest_digest(), m.manifest_digest());
    assert_eq!(ms.name, None);
    assert_eq!(ms.uri, None);
}

fn check(bytes: &[u8], key: &PublicKey) -> Result<u64, Error> {
    let env = Envelope::decode(bytes, &Limits::DEFAULT)?;
    env.verify(key).map(|m| m.sequence)
}

#[test]
fn every_single_byte_change_is_refused() {
    let key = suit_key();
    for i in 0..6 {
        let orig = example(i);
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for pos in 0..orig.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = orig.clone();
                b[pos] ^= mask;
                match check(&b, &key) {
                    Ok(seq) => panic!("example{i}: byte {pos} ^ {mask:#04x} accepted (seq {seq})"),
                    Err(e) => {
                        let name = format!("{e:?}");
                        let name = name.split([' ', '(']).next().unwrap().to_string();
                        *kinds.entry(name).or_default() += 1;
                    }
                }
            }
        }
        eprintln!("example{i}: refusals by kind {kinds:?}");
        // The signature and digest checks are both exercised, not just the parser.
        assert!(kinds.contains_key("BadSignature"), "example{i}");
    }
}

#[test]
fn truncation_and_wrong_key_are_refused() {
    let key = suit_key();
    let other = PublicKey::from(&common::key(9));
    for i in 0..6 {
        let b = example(i);
        for cut in [1, b.len() / 2, b.len() - 1] {
            assert!(
                matches!(check(&b[..cut], &key), Err(Error::BadCbor { .. })),
                "example{i} cut {cut}"
            );
        }
        assert_eq!(check(&b, &other), Err(Error::BadSignature));
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            check(&longer, &key),
            Err(Error::TrailingBytes { .. })
        ));
    }
}
