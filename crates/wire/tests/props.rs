//! Property tests: no decoder panics on any input (random bytes and mutated valid objects), and
//! encode -> decode is the identity for every object.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use proptest::prelude::*;
use simfota_wire::suit::{self, BuildParams, Envelope, ImageSource};
use simfota_wire::*;

fn all_decoders(b: &[u8]) {
    let k = PublicKey::from(&common::key(1));
    for lim in [Limits::DEFAULT, Limits::CARD] {
        if let Ok(s) = CoseSign1::decode(b, &lim) {
            let _ = s.verify(&k, &[], None);
        }
        let _ = DeliveryToken::verify(b, &k, &lim);
        let _ = Receipt::verify(b, &k, &lim);
        let _ = LogAck::verify(b, &k, &lim);
        let _ = LogReadRequest::verify(b, &k, &lim);
        let _ = AdminCommand::verify(b, &k, &lim);
        let _ = CardCertificate::verify(b, &k, &lim);
        let _ = Policy::decode(b, &lim);
        if let Ok(e) = Envelope::decode(b, &lim) {
            let _ = e.verify(&k);
        }
        let secret = p256::SecretKey::from(common::key(2).as_nonzero_scalar());
        let _ = open_export(b, &k, &secret, &lim);
    }
    let _ = LogEntry::decode(b);
}

fn iccid() -> impl Strategy<Value = Iccid> {
    // 17..19 random digits plus the Luhn check digit.
    proptest::collection::vec(0u8..10, 17..20).prop_map(|d| {
        for check in 0..10u8 {
            let s: String = d
                .iter()
                .chain([check].iter())
                .map(|x| char::from(b'0' + x))
                .collect();
            if let Ok(i) = Iccid::parse(&s) {
                return i;
            }
        }
        unreachable!("one check digit always fits")
    })
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z0-9.é-]{1,10}"
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Authorized),
        any::<u16>().prop_map(|r| Event::Denied(DenyReason(r))),
        any::<bool>().prop_map(|p| Event::Consent { pin_verified: p }),
        Just(Event::IntegrityOk),
        Just(Event::IntegrityFailed),
        any::<u16>().prop_map(|r| Event::Installed(FumoResult(r))),
        any::<u32>().prop_map(Event::Acknowledged),
        any::<u64>().prop_map(Event::AdminApplied),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        all_decoders(&b);
    }

    #[test]
    fn mutated_objects_never_panic(seed in 0usize..4, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let k = common::key(1);
        let mut buf = [0u8; 600];
        let base: Vec<u8> = match seed {
            0 => {
                let ack = LogAck { server: ServerId::new("s").unwrap(), nonce: Nonce([1; 16]), up_to_seq: 1 };
                let n = ack.sign(&k, &mut buf).unwrap();
                buf[..n].to_vec()
            }
            1 => common::read_hex("suit/manifest-spec/example2.signed.hex"),
            2 => common::read_hex("suit/manifest-spec/example4.signed.hex"),
            _ => LogEntry::new(1, Digest([0; 32]), Event::Authorized).encode().unwrap().to_vec(),
        };
        let mut b = base.clone();
        for (pos, v) in edits {
            let i = pos % b.len();
            b[i] = v;
        }
        all_decoders(&b);
        b.truncate(cut % (b.len() + 1));
        all_decoders(&b);
    }

    #[test]
    fn token_round_trip(iss in ident(), iat in any::<u64>(), exp in any::<u64>(), cti in proptest::collection::vec(any::<u8>(), 1..17),
                        nonce in any::<[u8; 16]>(), iccid in iccid(), md in digest(), cref in proptest::option::of(ident())) {
        let t = DeliveryToken {
            iss: ServerId::new(&iss).unwrap(), iat, exp, cti: UpdateId::new(&cti).unwrap(), nonce: Nonce(nonce), iccid,
            imei: Imei::parse("490154203237518").unwrap(), manifest_digest: md,
            nbf: None,
            charging_ref: cref.map(|c| ChargingRef::new(&c).unwrap()),
        };
        let k = common::key(3);
        let mut buf = [0u8; 600];
        let n = t.sign(&k, &mut buf).unwrap();
        prop_assert_eq!(*DeliveryToken::verify(&buf[..n], &PublicKey::from(&k), &Limits::CARD).unwrap(), t);
    }

    #[test]
    fn log_entry_round_trip(seq in any::<u32>(), prev in digest(), ev in event(), rel in proptest::option::of(".{0,40}"),
                            srv in proptest::option::of(ident()), tt in proptest::option::of(any::<u64>()), dt in proptest::option::of(any::<u64>()),
                            free in any::<bool>()) {
        let mut e = LogEntry::new(seq, prev, ev);
        // The free-device flag exists on authorizations only.
        e.free_device = free && ev == Event::Authorized;
        e.release = rel.as_deref().map(ShortText::truncated).filter(|t| !t.as_str().is_empty());
        e.server = srv.map(|s| ServerId::new(&s).unwrap());
        e.trusted_time = tt;
        e.device_time = dt;
        let rec = e.encode().unwrap();
        prop_assert_eq!(LogEntry::decode(&rec).unwrap(), e);
    }

    #[test]
    fn small_objects_round_trip(srv in ident(), nonce in any::<[u8; 16]>(), a in any::<u32>(), b in any::<u32>(), head in digest(),
                                iccid in iccid(), counter in any::<u64>(), rule in 0u8..4, card in proptest::option::of(any::<u64>()),
                                allowed in proptest::collection::vec((any::<[u8; 16]>(), any::<[u8; 16]>()), 0..5)) {
        let k = common::key(4);
        let pk = PublicKey::from(&k);
        let mut buf = [0u8; 600];
        let server = ServerId::new(&srv).unwrap();
        let ack = LogAck { server, nonce: Nonce(nonce), up_to_seq: a };
        let n = ack.sign(&k, &mut buf).unwrap();
        prop_assert_eq!(*LogAck::verify(&buf[..n], &pk, &Limits::CARD).unwrap(), ack);
        let req = LogReadRequest { server, nonce: Nonce(nonce), first_seq: a, max_count: b };
        let n = req.sign(&k, &mut buf).unwrap();
        prop_assert_eq!(*LogReadRequest::verify(&buf[..n], &pk, &Limits::CARD).unwrap(), req);
        let rc = Receipt { iccid, update_id: UpdateId::new(&nonce).unwrap(), result: FumoResult(b as u16), log_seq: a, chain_head: head };
        let n = rc.sign(&k, &mut buf).unwrap();
        prop_assert_eq!(*Receipt::verify(&buf[..n], &pk, &Limits::CARD).unwrap(), rc);
        let rule = [UnauthorizedRule::Refuse, UnauthorizedRule::WarnConfirm, UnauthorizedRule::ConfirmWithPin, UnauthorizedRule::FreeDevice][usize::from(rule)];
        let mut p = Policy::new(rule, card.map_or(IntegrityMode::DeviceDigest, |m| IntegrityMode::CardDigest { max_size: m }));
        for (v, c) in allowed.iter().take(Policy::MAX_ALLOWED) {
            p.allow(*v, *c).unwrap();
        }
        prop_assert_eq!(p.allow([0; 16], [0; 16]).is_ok(), allowed.len() < Policy::MAX_ALLOWED);
        let cmd = AdminCommand { target: iccid, counter, change: AdminChange::SetPolicy(p) };
        let n = cmd.sign(&k, &mut buf).unwrap();
        prop_assert_eq!(*AdminCommand::verify(&buf[..n], &pk, &Limits::CARD).unwrap(), cmd);
    }

    #[test]
    fn suit_round_trip(vendor in any::<[u8; 16]>(), class in any::<[u8; 16]>(), seq in any::<u64>(),
                       image in proptest::collection::vec(any::<u8>(), 0..2000), integrate in any::<bool>(),
                       name in proptest::option::of("[ -~]{1,60}"), version in proptest::option::of("[0-9.]{1,12}"),
                       pre in proptest::option::of(digest())) {
        let oem = common::key(6);
        let uri = if integrate { None } else { Some("https://fota.example/x.bin") };
        let p = BuildParams {
            vendor_id: vendor, class_id: class, sequence: seq, image: ImageSource::Bytes(&image),
            name: name.as_deref(), version: version.as_deref(), uri, integrate, precursor_digest: pre,
        };
        let env = suit::build(&p, &oem).unwrap();
        let m = Envelope::decode(&env, &Limits::DEFAULT).unwrap().verify(&PublicKey::from(&oem)).unwrap();
        prop_assert_eq!(m.sequence, seq);
        prop_assert_eq!(m.vendor_id, Some(vendor));
        prop_assert_eq!(m.class_id, Some(class));
        prop_assert_eq!(m.image_digest, Some(sha256(&image)));
        prop_assert_eq!(m.image_size, Some(image.len() as u64));
        prop_assert_eq!(m.name, name.as_deref());
        prop_assert_eq!(m.version, version.as_deref());
        prop_assert_eq!(m.precursor_digest, pre);
        prop_assert_eq!(m.payload, if integrate { Some(&image[..]) } else { None });
        let sev = suit::sever(&env, &Limits::DEFAULT).unwrap();
        let ms = Envelope::decode(&sev, &Limits::DEFAULT).unwrap().verify(&PublicKey::from(&oem)).unwrap();
        prop_assert_eq!(ms.manifest_digest(), m.manifest_digest());
    }
}
