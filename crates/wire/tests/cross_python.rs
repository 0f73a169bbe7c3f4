//! Independent implementations check our objects: pycose verifies every signature and decrypts
//! the export with the server's private key, python-cwt validates tokens, cbor2 decodes the
//! payloads; and objects made by python-cwt / pycose verify with ours.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{TestRng, key, python, run_py};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::suit::{self, BuildParams, Envelope, ImageSource};
use simfota_wire::*;

fn xy(k: &SigningKey) -> (String, String) {
    let (x, y) = PublicKey::from(k).xy();
    (hex::encode(x), hex::encode(y))
}

fn far_future() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400
}

#[test]
fn our_token_verifies_with_python_cwt_and_pycose() {
    let Some(py) = python() else { return };
    let k = key(21);
    let exp = far_future();
    let t = DeliveryToken {
        iss: ServerId::new("dm.operator.example").unwrap(),
        iat: exp - 600,
        exp,
        cti: UpdateId::new(b"upd-0001").unwrap(),
        nonce: Nonce([7; 16]),
        iccid: Iccid::parse("89014103211118510720").unwrap(),
        imei: Imei::parse("490154203237518").unwrap(),
        manifest_digest: Digest([0xab; 32]),
        nbf: None,
        charging_ref: Some(ChargingRef::new("ch-42").unwrap()),
    };
    let bytes = t.to_vec(&k).unwrap();
    let (x, y) = xy(&k);
    let out = run_py(&py, "check.py", &["token", &hex::encode(&bytes), &x, &y]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["1"], "dm.operator.example");
    assert_eq!(j["4"], exp);
    assert_eq!(j["7"], hex::encode(b"upd-0001"));
    assert_eq!(j["-65537"], hex::encode([7u8; 16]));
    assert_eq!(j["-65538"], "89014103211118510720");
    assert_eq!(j["-65539"], "490154203237518");
    assert_eq!(j["-65540"], hex::encode([0xab; 32]));
    assert_eq!(j["-65541"], "ch-42");
}

#[test]
fn python_made_token_and_sign1_verify_with_ours() {
    let Some(py) = python() else { return };
    let k = key(22);
    let (x, y) = xy(&k);
    let d = hex::encode(k.to_bytes());
    let exp = far_future();
    let tok =
        hex::decode(run_py(&py, "check.py", &["mktoken", &x, &y, &d, &exp.to_string()]).trim())
            .unwrap();
    let v = DeliveryToken::verify(&tok, &PublicKey::from(&k), &Limits::CARD).unwrap();
    assert_eq!(v.iss.as_str(), "py.dm.example");
    assert_eq!(v.exp, exp);
    assert_eq!(v.nbf, Some(exp - 600));
    assert_eq!(v.nonce, Nonce(core::array::from_fn(|i| i as u8)));
    assert_eq!(v.manifest_digest, Digest([0xcd; 32]));
    assert_eq!(
        DeliveryToken::verify(&tok, &PublicKey::from(&key(23)), &Limits::CARD).unwrap_err(),
        Error::BadSignature
    );
    // The same with the CWT tag 61 around it (RFC 8392 §6).
    let tagged = hex::decode(
        run_py(
            &py,
            "check.py",
            &["mktoken", &x, &y, &d, &exp.to_string(), "1"],
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(&tagged[..2], &[0xd8, 0x3d]);
    assert_eq!(
        *DeliveryToken::verify(&tagged, &PublicKey::from(&k), &Limits::CARD).unwrap(),
        *v
    );
    // A pycose Sign1 over a log-ack payload we encoded: verifies as a LogAck with our code.
    let ack = LogAck {
        server: ServerId::new("s1").unwrap(),
        nonce: Nonce([1; 16]),
        up_to_seq: 9,
    };
    let mut buf = [0u8; 300];
    let n = ack.sign(&k, &mut buf).unwrap();
    let payload = CoseSign1::decode(&buf[..n], &Limits::CARD)
        .unwrap()
        .payload
        .unwrap();
    let py_ack = hex::decode(
        run_py(
            &py,
            "check.py",
            &["mksign1", &x, &y, &d, &hex::encode(payload)],
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(
        *LogAck::verify(&py_ack, &PublicKey::from(&k), &Limits::CARD).unwrap(),
        ack
    );
}

#[test]
fn card_and_server_objects_verify_with_pycose() {
    let Some(py) = python() else { return };
    let k = key(24);
    let (x, y) = xy(&k);
    let mut buf = [0u8; 600];
    let iccid = Iccid::parse("89014103211118510720").unwrap();
    let r = Receipt {
        iccid,
        update_id: UpdateId::new(b"u9").unwrap(),
        result: FumoResult(402),
        log_seq: 12,
        chain_head: Digest([6; 32]),
    };
    let n = r.sign(&k, &mut buf).unwrap();
    let j: serde_json::Value = serde_json::from_str(&run_py(
        &py,
        "check.py",
        &["sign1", &hex::encode(&buf[..n]), &x, &y],
    ))
    .unwrap();
    assert_eq!(j["0"], 1);
    assert_eq!(j["1"], "89014103211118510720");
    assert_eq!(j["3"], 402);
    assert_eq!(j["4"], 12);

    let ack = LogAck {
        server: ServerId::new("s1").unwrap(),
        nonce: Nonce([2; 16]),
        up_to_seq: 77,
    };
    let n = ack.sign(&k, &mut buf).unwrap();
    let j: serde_json::Value = serde_json::from_str(&run_py(
        &py,
        "check.py",
        &["sign1", &hex::encode(&buf[..n]), &x, &y],
    ))
    .unwrap();
    assert_eq!(j["3"], 77);

    let req = LogReadRequest {
        server: ServerId::new("s1").unwrap(),
        nonce: Nonce([3; 16]),
        first_seq: 5,
        max_count: 8,
    };
    let n = req.sign(&k, &mut buf).unwrap();
    let j: serde_json::Value = serde_json::from_str(&run_py(
        &py,
        "check.py",
        &["sign1", &hex::encode(&buf[..n]), &x, &y],
    ))
    .unwrap();
    assert_eq!(j["4"], 8);

    let cmd = AdminCommand {
        target: iccid,
        counter: 3,
        change: AdminChange::PutServer {
            id: ServerId::new("dm1").unwrap(),
            key: PublicKey::from(&key(25)),
            rights: Rights::ALL,
        },
    };
    let n = cmd.sign(&k, &mut buf).unwrap();
    let j: serde_json::Value = serde_json::from_str(&run_py(
        &py,
        "check.py",
        &["sign1", &hex::encode(&buf[..n]), &x, &y],
    ))
    .unwrap();
    assert_eq!(j["2"], 3);
    assert_eq!(j["3"][0], 1);
    assert_eq!(
        j["3"][2]["-2"],
        hex::encode(PublicKey::from(&key(25)).xy().0)
    );

    let cert = CardCertificate {
        issuer: IssuerId::new("ca").unwrap(),
        iccid,
        card_key: PublicKey::from(&key(26)),
        imsi: None,
    };
    let n = cert.sign(&k, &mut buf).unwrap();
    let j: serde_json::Value = serde_json::from_str(&run_py(
        &py,
        "check.py",
        &["sign1", &hex::encode(&buf[..n]), &x, &y],
    ))
    .unwrap();
    assert_eq!(j["2"], "89014103211118510720");
    assert_eq!(
        j["8"]["1"]["-3"],
        hex::encode(PublicKey::from(&key(26)).xy().1)
    );
}

#[test]
fn export_decrypts_with_pycose() {
    let Some(py) = python() else { return };
    let card = key(27);
    let server = key(28);
    let mut recs = Vec::new();
    let mut prev = Digest::default();
    for s in 0..3u32 {
        let mut e = LogEntry::new(s, prev, Event::Denied(DenyReason::NONCE_UNAVAILABLE));
        e.imei = Some(Imei::parse("490154203237518").unwrap());
        let r = e.encode().unwrap();
        prev = sha256(&r);
        recs.push(r);
    }
    let header = ExportHeader {
        iccid: Iccid::parse("89014103211118510720").unwrap(),
        nonce: Nonce([0x5a; 16]),
        first_seq: 0,
        count: 3,
        chain_head: prev,
        log_end: 3,
        pin: Some(PinTries::new(1, Some(3)).unwrap()),
    };
    let mut out = vec![0u8; 2048];
    let n = build_export(
        &mut out,
        &header,
        &PublicKey::from(&server),
        b"s1",
        &card,
        &mut TestRng(7),
        |s, slot| recs.get(s as usize).map(|r| *slot = *r).is_some(),
    )
    .unwrap();
    let (cx, cy) = xy(&card);
    let (sx, sy) = xy(&server);
    let sd = hex::encode(server.to_bytes());
    let j: serde_json::Value = serde_json::from_str(&run_py(
        &py,
        "check.py",
        &["export", &hex::encode(&out[..n]), &cx, &cy, &sx, &sy, &sd],
    ))
    .unwrap();
    assert_eq!(j["body"]["2"], hex::encode([0x5a; 16]));
    assert_eq!(j["records"].as_array().unwrap().len(), 3);
    assert_eq!(j["records"][1][0], 1);
    assert_eq!(j["records"][1][2], serde_json::json!([1, 3]));
    assert_eq!(j["hashes"][2], prev.to_string());
    assert_eq!(j["body"]["5"], prev.to_string());
    // The PIN counter as a generic CBOR decoder reads it: [tries left, maximum].
    assert_eq!(j["body"]["7"], serde_json::json!([1, 3]));
}

#[test]
fn envelopes_verify_with_pycose_and_cbor2() {
    let Some(py) = python() else { return };
    let oem = key(29);
    let (x, y) = xy(&oem);
    let image = vec![0x5c; 4096];
    let p = BuildParams {
        vendor_id: [1; 16],
        class_id: [2; 16],
        sequence: 17,
        image: ImageSource::Bytes(&image),
        name: Some("r"),
        version: Some("1.2.3"),
        uri: None,
        integrate: true,
        precursor_digest: None,
    };
    let env = suit::build(&p, &oem).unwrap();
    let m = Envelope::decode(&env, &Limits::DEFAULT)
        .unwrap()
        .verify(&PublicKey::from(&oem))
        .unwrap();
    for bytes in [env.clone(), suit::sever(&env, &Limits::DEFAULT).unwrap()] {
        let j: serde_json::Value = serde_json::from_str(&run_py(
            &py,
            "check.py",
            &["suit", &hex::encode(&bytes), &x, &y],
        ))
        .unwrap();
        assert_eq!(j["sequence"], 17);
        assert_eq!(j["digest"], m.manifest_digest().to_string());
    }
    // The official example through the same script, as a control of the checker itself.
    let ex = common::read_hex("suit/manifest-spec/example3.signed.hex");
    let j: serde_json::Value = serde_json::from_str(&run_py(
        &py,
        "check.py",
        &[
            "suit",
            &hex::encode(&ex),
            "8496811aae0baaabd26157189eecda26beaa8bf11b6f3fe6e2b5659c85dbc0ad",
            "3b1f2a4b6c098131c0a36dacd1d78bd381dcdfb09c052db33991db7338b4a896",
        ],
    ))
    .unwrap();
    assert_eq!(j["sequence"], 3);
}
