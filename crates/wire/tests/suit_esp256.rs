//! SUIT examples signed with ESP256 (alg -9) from the trust-domains and firmware-encryption
//! drafts verify with the published key; tampering is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use simfota_wire::suit::Envelope;
use simfota_wire::{Error, Limits, PublicKey, pem};

fn suit_key() -> PublicKey {
    let pem =
        std::fs::read_to_string(common::vectors().join("suit/manifest-spec/pubkey.pem")).unwrap();
    pem::public_key_from_pem(&pem).unwrap()
}

fn verify(bytes: &[u8]) -> Result<u64, Error> {
    Envelope::decode(bytes, &Limits::DEFAULT)?
        .verify(&suit_key())
        .map(|m| m.sequence)
}

#[test]
fn esp256_examples_verify() {
    for f in [
        "suit/trust-domains/example0_dependent.hex",
        "suit/trust-domains/example1_process.hex",
        "suit/trust-domains/example2_integrated.hex",
        "suit/encryption/suit-manifest-es-ecdh-content.hex.signed",
    ] {
        let b = common::read_hex(f);
        let res = verify(&b);
        assert!(res.is_ok(), "{f}: {res:?}");
        let mut bad = b.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x01;
        assert!(verify(&bad).is_err(), "{f}: flipped byte accepted");
    }
}

#[test]
fn integrated_dependency_verifies_too() {
    let outer = common::read_hex("suit/trust-domains/example2_integrated.hex");
    let env = Envelope::decode(&outer, &Limits::DEFAULT).unwrap();
    let inner = env
        .integrated("#dependent.suit")
        .expect("integrated dependency");
    assert_eq!(verify(inner), Ok(0));
    // It is a dependency (named in dependency-resolution), not the image: no payload exposed.
    let m = env.verify(&suit_key()).unwrap();
    assert_eq!(m.payload, None);
}

#[test]
fn esp256_wrong_key_is_bad_signature() {
    let b = common::read_hex("suit/trust-domains/example0_dependent.hex");
    let env = Envelope::decode(&b, &Limits::DEFAULT).unwrap();
    assert!(env.verify(&suit_key()).is_ok());
    let other = PublicKey::from(&common::key(5));
    assert_eq!(env.verify(&other).unwrap_err(), Error::BadSignature);
}
