//! SUIT examples signed with ESP256 (alg -9) from the trust-domains and firmware-encryption
//! drafts verify with the published key; tampering is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use simfota_wire::suit::{Envelope, SignerCheck};
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

/// The signature check on its own: `Err(Invalid(_))` means the ESP256 signature verified and
/// a later check refused the manifest.
fn signer_check(bytes: &[u8]) -> Result<u64, SignerCheck> {
    Envelope::decode(bytes, &Limits::DEFAULT)
        .map_err(SignerCheck::NotSigned)?
        .verify_as_signer(&suit_key())
        .map(|m| m.sequence)
}

/// Each example's signature verifies under the published key; each manifest then uses what
/// simfota does not process (write with parameter-content 18, dependencies in common), so it
/// is refused by name (draft-ietf-suit-manifest §8.4.6; docs/formats.md, SUIT section).
#[test]
fn esp256_examples_verify() {
    let content = Error::UnsupportedSuit {
        what: "parameter",
        code: 18,
    };
    let dependencies = Error::UnsupportedSuit {
        what: "common member",
        code: 1,
    };
    for (f, why) in [
        ("suit/trust-domains/example0_dependent.hex", content),
        ("suit/trust-domains/example1_process.hex", dependencies),
        ("suit/trust-domains/example2_integrated.hex", dependencies),
        (
            "suit/encryption/suit-manifest-es-ecdh-content.hex.signed",
            content,
        ),
    ] {
        let b = common::read_hex(f);
        assert_eq!(signer_check(&b), Err(SignerCheck::Invalid(why)), "{f}");
        let mut bad = b.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x01;
        assert!(
            !matches!(signer_check(&bad), Err(SignerCheck::Invalid(e)) if e == why),
            "{f}: flipped byte still verified"
        );
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
    // Signed by the same key, and refused for the same reason as example0_dependent.
    assert_eq!(
        signer_check(inner),
        Err(SignerCheck::Invalid(Error::UnsupportedSuit {
            what: "parameter",
            code: 18
        }))
    );
    // The outer manifest depends on it: dependencies are not processed, so no payload is
    // exposed either.
    assert!(matches!(
        env.verify_as_signer(&suit_key()),
        Err(SignerCheck::Invalid(Error::UnsupportedSuit { code: 1, .. }))
    ));
}

#[test]
fn esp256_wrong_key_is_bad_signature() {
    let b = common::read_hex("suit/trust-domains/example0_dependent.hex");
    let env = Envelope::decode(&b, &Limits::DEFAULT).unwrap();
    assert!(matches!(
        env.verify_as_signer(&suit_key()),
        Err(SignerCheck::Invalid(_))
    ));
    let other = PublicKey::from(&common::key(5));
    assert_eq!(
        env.verify_as_signer(&other).unwrap_err(),
        SignerCheck::NotSigned(Error::BadSignature)
    );
}
