//! Encode -> decode -> verify round trips of every object, and the refusals that matter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{TestRng, key};
use simfota_wire::suit::{self, BuildParams, Envelope, ImageSource};
use simfota_wire::*;

fn sample_token() -> DeliveryToken {
    DeliveryToken {
        iss: ServerId::new("dm.operator.example").unwrap(),
        iat: 1_790_000_000,
        exp: 1_790_000_600,
        cti: UpdateId::new(b"upd-0001").unwrap(),
        nonce: Nonce([7; 16]),
        iccid: Iccid::parse("89014103211118510720").unwrap(),
        imei: Imei::parse("490154203237518").unwrap(),
        manifest_digest: Digest([0xab; 32]),
        nbf: None,
        charging_ref: Some(ChargingRef::new("ch-42").unwrap()),
    }
}

#[test]
fn token_round_trip_and_refusals() {
    let k = key(1);
    let t = sample_token();
    let mut buf = [0u8; 512];
    let n = t.sign(&k, &mut buf).unwrap();
    let signed = DeliveryToken::decode(&buf[..n], &Limits::CARD).unwrap();
    assert_eq!(
        signed.dangerous_unverified().iss.as_str(),
        "dm.operator.example"
    );
    assert_eq!(signed.kid(), Some(&b"dm.operator.example"[..]));
    let v = signed.verify(&PublicKey::from(&k)).unwrap();
    assert_eq!(*v.get(), t);
    // Wrong key, flipped byte, truncation, small buffer.
    assert_eq!(
        DeliveryToken::verify(&buf[..n], &PublicKey::from(&key(2)), &Limits::CARD).unwrap_err(),
        Error::BadSignature
    );
    let mut bad = buf[..n].to_vec();
    bad[n - 70] ^= 1;
    assert!(DeliveryToken::verify(&bad, &PublicKey::from(&k), &Limits::CARD).is_err());
    assert!(DeliveryToken::decode(&buf[..n - 1], &Limits::CARD).is_err());
    assert_eq!(t.sign(&k, &mut [0u8; 100]), Err(Error::BufferTooSmall));
    // RFC 6979: same input, same bytes.
    let mut again = [0u8; 512];
    assert_eq!(t.sign(&k, &mut again).unwrap(), n);
    assert_eq!(buf[..n], again[..n]);
}

#[test]
fn a_receipt_is_not_a_log_ack() {
    let k = key(3);
    let r = Receipt {
        iccid: Iccid::parse("89014103211118510720").unwrap(),
        update_id: UpdateId::new(b"u1").unwrap(),
        result: FumoResult::SUCCESSFUL,
        log_seq: 7,
        chain_head: Digest([1; 32]),
    };
    let mut buf = [0u8; 300];
    let n = r.sign(&k, &mut buf).unwrap();
    assert_eq!(
        Receipt::verify(&buf[..n], &PublicKey::from(&k), &Limits::CARD)
            .unwrap()
            .into_inner(),
        r
    );
    assert_eq!(
        LogAck::decode(&buf[..n], &Limits::CARD).unwrap_err(),
        Error::WrongObjectType {
            expected: 2,
            found: 1
        }
    );
    assert!(DeliveryToken::decode(&buf[..n], &Limits::CARD).is_err());
}

#[test]
fn server_objects_round_trip() {
    let k = key(4);
    let pk = PublicKey::from(&k);
    let mut buf = [0u8; 400];
    let ack = LogAck {
        server: ServerId::new("s1").unwrap(),
        nonce: Nonce([9; 16]),
        up_to_seq: 41,
    };
    let n = ack.sign(&k, &mut buf).unwrap();
    assert_eq!(*LogAck::verify(&buf[..n], &pk, &Limits::CARD).unwrap(), ack);
    let req = LogReadRequest {
        server: ServerId::new("s1").unwrap(),
        nonce: Nonce([3; 16]),
        first_seq: 10,
        max_count: 4,
    };
    let n = req.sign(&k, &mut buf).unwrap();
    assert_eq!(
        *LogReadRequest::verify(&buf[..n], &pk, &Limits::CARD).unwrap(),
        req
    );
}

#[test]
fn admin_commands_round_trip() {
    let issuer = key(5);
    let target = Iccid::parse("89014103211118510720").unwrap();
    let mut policy = Policy::new(
        UnauthorizedRule::ConfirmWithPin,
        IntegrityMode::CardDigest { max_size: 1 << 20 },
    );
    policy.allow([1; 16], [2; 16]).unwrap();
    let changes = [
        AdminChange::PutServer {
            id: ServerId::new("dm1").unwrap(),
            key: PublicKey::from(&key(6)),
            rights: Rights::FIRMWARE_UPDATE | Rights::LOG_READ,
        },
        AdminChange::RemoveServer {
            id: ServerId::new("dm1").unwrap(),
        },
        AdminChange::PutOriginator {
            id: OriginatorId::new("oem").unwrap(),
            key: PublicKey::from(&key(7)),
        },
        AdminChange::RemoveOriginator {
            id: OriginatorId::new("oem").unwrap(),
        },
        AdminChange::SetPolicy(policy),
    ];
    for (i, change) in changes.into_iter().enumerate() {
        let cmd = AdminCommand {
            target,
            counter: i as u64 + 1,
            change,
        };
        let mut buf = [0u8; 400];
        let n = cmd.sign(&issuer, &mut buf).unwrap();
        let v = AdminCommand::verify(&buf[..n], &PublicKey::from(&issuer), &Limits::CARD).unwrap();
        assert_eq!(*v, cmd);
    }
    let mut pb = [0u8; Policy::MAX_ENCODED_LEN];
    let n = policy.encode(&mut pb).unwrap();
    assert_eq!(Policy::decode(&pb[..n], &Limits::CARD).unwrap(), policy);
    assert!(policy.permits(&[1; 16], &[2; 16]));
    assert!(!policy.permits(&[1; 16], &[3; 16]));
}

#[test]
fn card_certificate_round_trip() {
    let issuer = key(8);
    let cert = CardCertificate {
        issuer: IssuerId::new("operator-ca").unwrap(),
        iccid: Iccid::parse("89014103211118510720").unwrap(),
        card_key: PublicKey::from(&key(10)),
        imsi: Some(ShortText::new("001010123456789").unwrap()),
    };
    let mut buf = [0u8; 400];
    let n = cert.sign(&issuer, &mut buf).unwrap();
    assert_eq!(
        *CardCertificate::verify(&buf[..n], &PublicKey::from(&issuer), &Limits::CARD).unwrap(),
        cert
    );
}

fn sample_entry(seq: u32, prev: Digest) -> LogEntry {
    let mut e = LogEntry::new(seq, prev, Event::Installed(FumoResult::SUCCESSFUL));
    e.update_id = Some(UpdateId::new(b"upd-0001").unwrap());
    e.server = Some(ServerId::new("dm.operator.example").unwrap());
    e.originator = Some(OriginatorId::new("oem").unwrap());
    e.release = Some(ShortText::truncated("Spring release"));
    e.version = Some(ShortText::truncated("2.0.0"));
    e.manifest_digest = Some(Digest([5; 32]));
    e.imei = Some(Imei::parse("490154203237518").unwrap());
    e.trusted_time = Some(1_790_000_000);
    e.device_time = Some(1_790_000_100);
    e
}

#[test]
fn log_entry_fixed_records() {
    let e = sample_entry(3, Digest([1; 32]));
    let rec = e.encode().unwrap();
    assert_eq!(rec.len(), LogEntry::RECORD_LEN);
    assert_eq!(LogEntry::decode(&rec).unwrap(), e);
    assert_eq!(e.entry_hash().unwrap(), sha256(&rec));
    // The largest possible entry still fits.
    let mut big = LogEntry::new(u32::MAX, Digest([0xff; 32]), Event::AdminApplied(u64::MAX));
    big.update_id = Some(UpdateId::new(&[0xee; 16]).unwrap());
    big.server = Some(ServerId::new(&"s".repeat(32)).unwrap());
    big.originator = Some(OriginatorId::new(&"o".repeat(32)).unwrap());
    big.release = Some(ShortText::truncated(&"r".repeat(99)));
    big.version = Some(ShortText::truncated(&"v".repeat(99)));
    big.manifest_digest = Some(Digest([0xdd; 32]));
    big.imei = Some(Imei::parse("490154203237518").unwrap());
    big.trusted_time = Some(u64::MAX);
    big.device_time = Some(u64::MAX);
    let rec = big.encode().unwrap();
    assert_eq!(LogEntry::decode(&rec).unwrap(), big);
    // 256 bytes of fields, then the pad: head 0x58 with 30 zero bytes (docs/formats.md §5).
    assert_eq!(&rec[256..258], &[0x58, 30]);
    // The largest refusal tally (every reason slot, every count at its maximum) fits too.
    let mut tally = simfota_wire::RefusalTally::new(Some(u64::MAX), Some(u64::MAX));
    for code in 0..simfota_wire::RefusalTally::MAX_REASONS as u16 {
        assert!(tally.add(simfota_wire::DenyReason(0x100 + code)));
    }
    assert!(!tally.add(simfota_wire::DenyReason(1)), "no 17th reason");
    let mut max = LogEntry::new(u32::MAX, Digest([0xff; 32]), Event::Refusals(tally));
    max.imei = big.imei;
    max.trusted_time = Some(u64::MAX);
    max.device_time = Some(u64::MAX);
    max.unverified = Some(simfota_wire::Unverified::IMEI);
    let rec = max.encode().unwrap();
    assert_eq!(LogEntry::decode(&rec).unwrap(), max);
    // With 16 reasons counted once each, its fields take 166 of the 288 bytes (docs/card.md):
    // the pad head follows them. Each count can grow by 4 bytes (to a 5-byte u32), 230 at most.
    assert_eq!(&rec[166..168], &[0x58, (288 - 168) as u8]);
    // A record written before the unverified marks (13 items) still decodes, as such, and
    // encodes back to the same bytes.
    let mut old = sample_entry(4, Digest([2; 32]));
    old.unverified = None;
    let rec = old.encode().unwrap();
    assert_eq!(rec[0], 0x8D);
    assert_eq!(LogEntry::decode(&rec).unwrap(), old);
    let mut bad = rec;
    bad[LogEntry::RECORD_LEN - 1] = 1;
    assert_eq!(
        LogEntry::decode(&bad),
        Err(Error::InvalidField("log record padding"))
    );
}

#[test]
fn export_build_and_open() {
    let card = key(11);
    let server = key(12);
    let server_secret = p256::SecretKey::from(server.as_nonzero_scalar());
    let mut recs = Vec::new();
    let mut prev = Digest::default();
    for s in 0..5 {
        let e = sample_entry(s, prev);
        let r = e.encode().unwrap();
        prev = sha256(&r);
        recs.push(r);
    }
    let header = ExportHeader {
        iccid: Iccid::parse("89014103211118510720").unwrap(),
        nonce: Nonce([4; 16]),
        first_seq: 2,
        count: 3,
        chain_head: prev,
        log_end: 5,
        pin: Some(PinTries::new(2, Some(3)).unwrap()),
    };
    let mut out = vec![0u8; 2048];
    let n = build_export(
        &mut out,
        &header,
        &PublicKey::from(&server),
        b"s1",
        &card,
        &mut TestRng(1),
        |seq, slot| match recs.get(seq as usize) {
            Some(r) => {
                *slot = *r;
                true
            }
            None => false,
        },
    )
    .unwrap();
    let opened = open_export(
        &out[..n],
        &PublicKey::from(&card),
        &server_secret,
        &Limits::DEFAULT,
    )
    .unwrap();
    assert_eq!(opened.first_seq, 2);
    assert_eq!(opened.records, recs[2..5].to_vec());
    let entries = opened.entries().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(opened.nonce, Nonce([4; 16]));
    assert_eq!(opened.pin, header.pin);
    // Another server cannot read it; a changed byte fails the signature.
    let other = p256::SecretKey::from(key(13).as_nonzero_scalar());
    assert_eq!(
        open_export(&out[..n], &PublicKey::from(&card), &other, &Limits::DEFAULT).unwrap_err(),
        Error::DecryptFailed
    );
    let mut bad = out[..n].to_vec();
    bad[200] ^= 1;
    assert_eq!(
        open_export(
            &bad,
            &PublicKey::from(&card),
            &server_secret,
            &Limits::DEFAULT
        )
        .unwrap_err(),
        Error::BadSignature
    );
    // A missing record aborts, a small buffer is reported.
    let h2 = ExportHeader {
        first_seq: 4,
        count: 3,
        ..header
    };
    assert_eq!(
        build_export(
            &mut out,
            &h2,
            &PublicKey::from(&server),
            b"s1",
            &card,
            &mut TestRng(1),
            |s, slot| { recs.get(s as usize).map(|r| *slot = *r).is_some() }
        ),
        Err(Error::RecordUnavailable(5))
    );
    assert_eq!(
        build_export(
            &mut [0u8; 600],
            &header,
            &PublicKey::from(&server),
            b"s1",
            &card,
            &mut TestRng(1),
            |s, slot| { recs.get(s as usize).map(|r| *slot = *r).is_some() }
        ),
        Err(Error::BufferTooSmall)
    );
}

/// Member 7 (the PIN counter) is optional: a page without it, as cards built before it sign
/// them, opens with `pin: None`; a blocked PIN and a counter without a maximum come back as
/// sent; a counter that contradicts itself is refused before it is built.
#[test]
fn export_pin_member_is_optional() {
    let card = key(11);
    let server = key(12);
    let server_secret = p256::SecretKey::from(server.as_nonzero_scalar());
    let rec = sample_entry(0, Digest::default()).encode().unwrap();
    let page = |pin: Option<PinTries>| {
        let header = ExportHeader {
            iccid: Iccid::parse("89014103211118510720").unwrap(),
            nonce: Nonce([4; 16]),
            first_seq: 0,
            count: 1,
            chain_head: sha256(&rec),
            log_end: 1,
            pin,
        };
        let mut out = vec![0u8; 1024];
        let n = build_export(
            &mut out,
            &header,
            &PublicKey::from(&server),
            b"s1",
            &card,
            &mut TestRng(1),
            |_, slot| {
                *slot = rec;
                true
            },
        )
        .unwrap();
        out.truncate(n);
        out
    };
    let open = |bytes: &[u8]| {
        open_export(
            bytes,
            &PublicKey::from(&card),
            &server_secret,
            &Limits::DEFAULT,
        )
        .unwrap()
        .into_inner()
    };
    let blocked = PinTries::new(0, Some(3)).unwrap();
    assert!(blocked.blocked());
    assert_eq!(open(&page(Some(blocked))).pin, Some(blocked));
    let unknown_max = PinTries::without_max(5);
    assert!(!unknown_max.blocked());
    assert_eq!(open(&page(Some(unknown_max))).pin, Some(unknown_max));
    // Without the counter the page is the one a card built before it signs: member 7 absent
    // (one byte each for the member's key and pair head, one per counter or null: 4 here, 5
    // with a maximum).
    let without = page(None);
    assert_eq!(open(&without).pin, None);
    assert_eq!(page(Some(unknown_max)).len(), without.len() + 4);
    // A page committed before the member existed (the broken corpus's original) still opens.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/broken/log_export/valid.hex");
    let text = std::fs::read_to_string(path).unwrap();
    let clean: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let old = open_export(
        &hex::decode(clean).unwrap(),
        &PublicKey::from(&key(2)),
        &p256::SecretKey::from(key(3).as_nonzero_scalar()),
        &Limits::DEFAULT,
    )
    .unwrap();
    assert_eq!((old.pin, old.entries().unwrap().len()), (None, 3));
    assert_eq!(
        PinTries::new(4, Some(3)),
        Err(Error::InvalidField("PIN tries left above the maximum"))
    );
    assert_eq!(
        PinTries::new(0, Some(0)),
        Err(Error::InvalidField("PIN maximum tries"))
    );
}

#[test]
fn suit_build_verify_sever() {
    let oem = key(14);
    let image: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let p = BuildParams {
        vendor_id: [0x11; 16],
        class_id: [0x22; 16],
        sequence: 42,
        image: ImageSource::Bytes(&image),
        name: Some("Spring release"),
        version: Some("2.0.0"),
        uri: None,
        integrate: true,
        precursor_digest: Some(Digest([0x33; 32])),
    };
    let env = suit::build(&p, &oem).unwrap();
    let e = Envelope::decode(&env, &Limits::DEFAULT).unwrap();
    let m = e.verify(&PublicKey::from(&oem)).unwrap();
    assert_eq!(m.sequence, 42);
    assert_eq!(m.vendor_id, Some([0x11; 16]));
    assert_eq!(m.class_id, Some([0x22; 16]));
    assert_eq!(m.image_digest, Some(sha256(&image)));
    assert_eq!(m.image_size, Some(10_000));
    assert_eq!(m.name, Some("Spring release"));
    assert_eq!(m.version, Some("2.0.0"));
    assert_eq!(m.uri, Some(suit::INTEGRATED_NAME));
    assert_eq!(m.precursor_digest, Some(Digest([0x33; 32])));
    assert_eq!(m.payload, Some(&image[..]));
    // Severed: small, same manifest digest, verifies within the card's limits.
    let sev = suit::sever(&env, &Limits::DEFAULT).unwrap();
    assert!(sev.len() < 500, "severed size {}", sev.len());
    let ms = Envelope::decode(&sev, &Limits::CARD)
        .unwrap()
        .verify(&PublicKey::from(&oem))
        .unwrap();
    assert_eq!(ms.manifest_digest(), m.manifest_digest());
    assert_eq!(ms.payload, None);
    // A changed payload byte is caught by the digest check.
    let mut bad = env.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        Envelope::decode(&bad, &Limits::DEFAULT)
            .unwrap()
            .verify(&PublicKey::from(&oem))
            .unwrap_err(),
        Error::DigestMismatch("integrated payload")
    );
    // A truncated integrated payload (re-attached to the severed envelope) is refused too.
    let mut trunc = sev.clone();
    assert_eq!(trunc[2], 0xa2);
    trunc[2] = 0xa3;
    trunc.extend_from_slice(&[0x66]);
    trunc.extend_from_slice(suit::INTEGRATED_NAME.as_bytes());
    trunc.extend_from_slice(&[0x59, 0x27, 0x0f]);
    trunc.extend_from_slice(&image[..9_999]);
    assert_eq!(
        Envelope::decode(&trunc, &Limits::DEFAULT)
            .unwrap()
            .verify(&PublicKey::from(&oem))
            .unwrap_err(),
        Error::DigestMismatch("integrated payload")
    );
    // Digest-only build with a URI.
    let p2 = BuildParams {
        image: ImageSource::Digest {
            digest: Digest([1; 32]),
            size: 5,
        },
        integrate: false,
        uri: Some("https://pkg.example/fw.bin"),
        precursor_digest: None,
        ..p
    };
    let env2 = suit::build(&p2, &oem).unwrap();
    let m2 = Envelope::decode(&env2, &Limits::CARD)
        .unwrap()
        .verify(&PublicKey::from(&oem))
        .unwrap();
    assert_eq!(m2.uri, Some("https://pkg.example/fw.bin"));
    assert_eq!(m2.image_digest, Some(Digest([1; 32])));
    assert_eq!(m2.precursor_digest, None);
}

#[test]
fn suit_delta_packages_sign_the_delta() {
    let oem = key(15);
    let pk = PublicKey::from(&oem);
    let base = vec![1u8; 3000];
    let image = vec![2u8; 3100];
    let delta = b"not a real delta, just bytes".to_vec();
    let p = BuildParams {
        vendor_id: [0x11; 16],
        class_id: [0x22; 16],
        sequence: 3,
        image: ImageSource::Digest {
            digest: sha256(&image),
            size: image.len() as u64,
        },
        name: None,
        version: Some("3.0"),
        uri: None,
        integrate: true,
        precursor_digest: Some(sha256(&base)),
    };
    let env = suit::build_delta(&p, &delta, &oem).unwrap();
    let m = Envelope::decode(&env, &Limits::DEFAULT)
        .unwrap()
        .verify(&pk)
        .unwrap();
    assert_eq!(m.uri, Some(suit::DELTA_NAME));
    assert_eq!(m.payload, Some(&delta[..]));
    assert_eq!(m.payload_digest, Some(sha256(&delta)));
    assert_eq!(m.payload_size, Some(delta.len() as u64));
    assert_eq!(m.image_digest, Some(sha256(&image)));
    assert_eq!(m.precursor_digest, Some(sha256(&base)));
    // A changed delta byte is refused before anyone patches with it.
    let mut bad = env.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x20;
    assert_eq!(
        Envelope::decode(&bad, &Limits::DEFAULT)
            .unwrap()
            .verify(&pk)
            .unwrap_err(),
        Error::DigestMismatch("integrated payload")
    );
    // By URI: no member, the digest still signed; a delta needs its precursor.
    let p2 = BuildParams {
        integrate: false,
        uri: Some("https://fota.example/3.0.delta"),
        ..p
    };
    let env2 = suit::build_delta(&p2, &delta, &oem).unwrap();
    let m2 = Envelope::decode(&env2, &Limits::CARD)
        .unwrap()
        .verify(&pk)
        .unwrap();
    assert_eq!(m2.payload, None);
    assert_eq!(m2.payload_digest, Some(sha256(&delta)));
    let p3 = BuildParams {
        precursor_digest: None,
        ..p
    };
    assert_eq!(
        suit::build_delta(&p3, &delta, &oem),
        Err(Error::MissingField("precursor digest of a delta"))
    );
}
