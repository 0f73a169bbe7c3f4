//! Package 0 (DM Notification 1.2): layout with fixed inputs, an independent spelling of the
//! digest formula, and refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers may fail loudly

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};
use simfota_syncml::auth::{Credentials, Nonce};
use simfota_syncml::notification::{
    Initiator, Notification, NotificationError, UiMode, UnverifiedNotification,
};

fn fixed() -> Notification {
    let mut n = Notification::new(0x1234, "dm.simfota.example", UiMode::UserInteraction);
    n.vendor = vec![0xCA, 0xFE];
    n
}

#[test]
fn layout_of_the_header_fields() {
    let bytes = fixed()
        .encode("server-pw", &Nonce(b"nonce-1".to_vec()))
        .unwrap();
    let h = &bytes[16..];
    // version 12 in 10 bits = 0b0000001100: first byte 0b00000011, then 0b00 in the top bits.
    assert_eq!(h[0], 0x03);
    // low version bits 00 | ui-mode 11 | initiator 1 | future use 000.
    assert_eq!(h[1], 0b0011_1000);
    assert_eq!(&h[2..5], &[0, 0, 0]);
    assert_eq!(&h[5..7], &[0x12, 0x34]);
    assert_eq!(h[7] as usize, "dm.simfota.example".len());
    assert_eq!(&h[8..8 + 18], b"dm.simfota.example");
    assert_eq!(&h[26..], &[0xCA, 0xFE]);
    assert_eq!(bytes.len(), 16 + 8 + 18 + 2);
}

#[test]
fn digest_matches_the_formula_written_out() {
    let nonce = b"nonce-1";
    let bytes = fixed().encode("server-pw", &Nonce(nonce.to_vec())).unwrap();
    // H(B64(H(server-id:password)):nonce:B64(H(notification))), H = MD5.
    let secret = B64.encode(Md5::digest(b"dm.simfota.example:server-pw"));
    let body = B64.encode(Md5::digest(&bytes[16..]));
    let mut input = Vec::new();
    input.extend_from_slice(secret.as_bytes());
    input.push(b':');
    input.extend_from_slice(nonce);
    input.push(b':');
    input.extend_from_slice(body.as_bytes());
    assert_eq!(bytes[..16], Md5::digest(&input)[..]);
}

#[test]
fn verify_accepts_the_genuine_and_refuses_the_rest() {
    let nonce = Nonce(b"nonce-1".to_vec());
    let bytes = fixed().encode("server-pw", &nonce).unwrap();
    let parsed = UnverifiedNotification::parse(&bytes).unwrap();
    assert_eq!(parsed.claimed_server_id(), "dm.simfota.example");
    let n = parsed
        .clone()
        .verify_with(&Credentials::new("dm.simfota.example", "server-pw"), &nonce)
        .unwrap();
    assert_eq!(n, fixed());
    assert_eq!(n.initiator, Initiator::Server);

    assert_eq!(
        parsed.clone().verify("dm.simfota.example", "wrong", &nonce),
        Err(NotificationError::BadDigest)
    );
    assert_eq!(
        parsed
            .clone()
            .verify("dm.simfota.example", "server-pw", &Nonce(b"other".to_vec())),
        Err(NotificationError::BadDigest)
    );
    assert!(matches!(
        parsed.verify("evil.example", "server-pw", &nonce),
        Err(NotificationError::UnknownServer(_))
    ));

    for i in [0, 17, 22, 30, bytes.len() - 1] {
        let mut t = bytes.clone();
        t[i] ^= 0x01;
        let r = UnverifiedNotification::parse(&t)
            .and_then(|u| u.verify("dm.simfota.example", "server-pw", &nonce));
        assert!(r.is_err(), "flip at {i} accepted");
    }
    assert_eq!(
        UnverifiedNotification::parse(&bytes[..20]),
        Err(NotificationError::TooShort(20))
    );
    let mut long_id = bytes.clone();
    long_id[23] = 200;
    assert_eq!(
        UnverifiedNotification::parse(&long_id),
        Err(NotificationError::BadServerIdLength)
    );
    let mut v13 = fixed();
    v13.version = 13;
    let other = v13.encode("server-pw", &nonce).unwrap();
    assert_eq!(
        UnverifiedNotification::parse(&other).unwrap().verify(
            "dm.simfota.example",
            "server-pw",
            &nonce
        ),
        Err(NotificationError::UnsupportedVersion(13))
    );
    let too_long = Notification::new(1, "x".repeat(256), UiMode::Background);
    assert_eq!(
        too_long.encode("pw", &nonce),
        Err(NotificationError::ServerIdTooLong)
    );
}

/// A server that keeps `B64(H(server-id:password))` instead of the password signs the same
/// package 0.
#[test]
fn the_server_secret_stands_in_for_the_password() {
    let n = Notification::new(7, "srv", UiMode::Background);
    let nonce = Nonce(b"abc".to_vec());
    let secret = simfota_syncml::auth::Credentials::new("srv", "pw").secret_digest();
    assert_eq!(
        n.encode_with_secret(&secret, &nonce).unwrap(),
        n.encode("pw", &nonce).unwrap()
    );
}
