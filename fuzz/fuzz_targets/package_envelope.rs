//! What the server parses of a package upload after axum's multipart extractor has split the
//! form (`crates/server/src/packages.rs`, `check_envelope`): the `envelope` part is decoded
//! as a SUIT envelope, verified under an originator key and severed of its integrated
//! payloads. Errors are fine; panics are not. An envelope that verifies must sever into an
//! envelope that decodes and verifies again with the same manifest digest (what the card is
//! handed).
//!
//! The key is the draft-ietf-suit-manifest example key, which signed the seeds taken from
//! crates/wire/tests/data/suit-corpus: mutations of their unsigned parts (integrated payloads,
//! severable members) get past the signature into the manifest checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simfota_wire::suit::{Envelope, sever};
use simfota_wire::{Limits, PublicKey};

const X: [u8; 32] = [
    0x84, 0x96, 0x81, 0x1a, 0xae, 0x0b, 0xaa, 0xab, 0xd2, 0x61, 0x57, 0x18, 0x9e, 0xec, 0xda, 0x26,
    0xbe, 0xaa, 0x8b, 0xf1, 0x1b, 0x6f, 0x3f, 0xe6, 0xe2, 0xb5, 0x65, 0x9c, 0x85, 0xdb, 0xc0, 0xad,
];
const Y: [u8; 32] = [
    0x3b, 0x1f, 0x2a, 0x4b, 0x6c, 0x09, 0x81, 0x31, 0xc0, 0xa3, 0x6d, 0xac, 0xd1, 0xd7, 0x8b, 0xd3,
    0x81, 0xdc, 0xdf, 0xb0, 0x9c, 0x05, 0x2d, 0xb3, 0x39, 0x91, 0xdb, 0x73, 0x38, 0xb4, 0xa8, 0x96,
];

#[global_allocator]
static ALLOC: simfota_fuzz::BoundedAlloc = simfota_fuzz::BoundedAlloc::new(16 << 20);

fuzz_target!(|data: &[u8]| {
    let limits = Limits::DEFAULT;
    let Ok(key) = PublicKey::from_xy(&X, &Y) else {
        panic!("the example key is a valid P-256 point")
    };
    let Ok(env) = Envelope::decode(data, &limits) else {
        assert!(
            sever(data, &limits).is_err(),
            "severed an envelope that does not decode"
        );
        return;
    };
    let severed = sever(data, &limits);
    let Ok(verified) = env.verify(&key) else {
        return;
    };
    let digest = verified.get().manifest_digest();
    let Ok(severed) = severed else {
        panic!("a verified envelope does not sever: {:?}", severed.err())
    };
    let again = Envelope::decode(&severed, &limits).expect("a severed envelope decodes");
    let again = again.verify(&key).expect("a severed envelope verifies");
    assert_eq!(again.get().manifest_digest(), digest);
});
