//! The hex examples in docs/formats.md are regenerated here byte for byte: deterministic keys,
//! RFC 6979 signatures, and a fixed byte stream for the export's ephemeral key and IV.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{TestRng, key};
use simfota_wire::suit::{self, BuildParams, ImageSource};
use simfota_wire::*;

fn iccid() -> Iccid {
    Iccid::parse("89014103211118510720").unwrap()
}

fn signed(f: impl FnOnce(&mut [u8]) -> Result<usize>) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = f(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// (name, bytes) of every example in the document.
fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let server = key(1);
    let card = key(2);
    let issuer = key(3);
    let oem = key(4);
    let sid = ServerId::new("dm.operator.example").unwrap();
    let token = DeliveryToken {
        iss: sid,
        iat: 1_790_000_000,
        exp: 1_790_000_600,
        cti: UpdateId::new(b"upd-0001").unwrap(),
        nonce: Nonce([0x11; 16]),
        iccid: iccid(),
        imei: Imei::parse("490154203237518").unwrap(),
        manifest_digest: Digest([0xab; 32]),
        nbf: None,
        charging_ref: Some(ChargingRef::new("CH-2026-0042").unwrap()),
    };
    let mut entry = LogEntry::new(
        0,
        Digest::default(),
        Event::Installed(FumoResult::SUCCESSFUL),
    );
    entry.update_id = Some(UpdateId::new(b"upd-0001").unwrap());
    entry.server = Some(sid);
    entry.originator = Some(OriginatorId::new("oem.example").unwrap());
    entry.release = Some(ShortText::truncated("Spring release"));
    entry.version = Some(ShortText::truncated("2.0.0"));
    entry.manifest_digest = Some(Digest([0xab; 32]));
    entry.imei = Some(Imei::parse("490154203237518").unwrap());
    entry.trusted_time = Some(1_790_000_000);
    entry.device_time = Some(1_790_000_123);
    let record = entry.encode().unwrap();
    let mut policy = Policy::new(
        UnauthorizedRule::ConfirmWithPin,
        IntegrityMode::DeviceDigest,
    );
    policy.allow([0x11; 16], [0x22; 16]).unwrap();
    let mut pbuf = [0u8; Policy::MAX_ENCODED_LEN];
    let pn = policy.encode(&mut pbuf).unwrap();

    let export = signed(|out| {
        let h = ExportHeader {
            iccid: iccid(),
            nonce: Nonce([0x22; 16]),
            first_seq: 0,
            count: 1,
            chain_head: sha256(&record),
            log_end: 1,
            pin: Some(PinTries::new(2, Some(3)).unwrap()),
        };
        build_export(
            out,
            &h,
            &PublicKey::from(&server),
            sid.as_str().as_bytes(),
            &card,
            &mut TestRng(2026),
            |_, slot| {
                *slot = record;
                true
            },
        )
    });
    let envelope = suit::build(
        &BuildParams {
            vendor_id: [0x11; 16],
            class_id: [0x22; 16],
            sequence: 7,
            image: ImageSource::Digest {
                digest: Digest([0xcc; 32]),
                size: 1_048_576,
            },
            name: Some("Spring release"),
            version: Some("2.0.0"),
            uri: Some("https://fota.example/fw-2.0.0.bin"),
            integrate: false,
            precursor_digest: None,
        },
        &oem,
    )
    .unwrap();

    vec![
        ("token", signed(|o| token.sign(&server, o))),
        (
            "receipt",
            signed(|o| {
                Receipt {
                    iccid: iccid(),
                    update_id: UpdateId::new(b"upd-0001").unwrap(),
                    result: FumoResult::SUCCESSFUL,
                    log_seq: 0,
                    chain_head: sha256(&record),
                }
                .sign(&card, o)
            }),
        ),
        (
            "log-ack",
            signed(|o| {
                LogAck {
                    server: sid,
                    nonce: Nonce([0x33; 16]),
                    up_to_seq: 0,
                }
                .sign(&server, o)
            }),
        ),
        (
            "log-read-request",
            signed(|o| {
                LogReadRequest {
                    server: sid,
                    nonce: Nonce([0x22; 16]),
                    first_seq: 0,
                    max_count: 8,
                }
                .sign(&server, o)
            }),
        ),
        (
            "admin-command",
            signed(|o| {
                AdminCommand {
                    target: iccid(),
                    counter: 1,
                    change: AdminChange::PutServer {
                        id: sid,
                        key: PublicKey::from(&server),
                        rights: Rights::FIRMWARE_UPDATE | Rights::LOG_READ | Rights::LOG_ACK,
                    },
                }
                .sign(&issuer, o)
            }),
        ),
        (
            "card-certificate",
            signed(|o| {
                CardCertificate {
                    issuer: IssuerId::new("operator-ca").unwrap(),
                    iccid: iccid(),
                    card_key: PublicKey::from(&card),
                    imsi: Some(ShortText::new("001010123456789").unwrap()),
                }
                .sign(&issuer, o)
            }),
        ),
        ("policy", pbuf[..pn].to_vec()),
        ("log-record", record.to_vec()),
        ("log-export", export),
        ("suit-envelope", envelope),
    ]
}

/// Extracts the hex of the fenced block that follows `<!-- example: NAME -->`.
fn doc_example(doc: &str, name: &str) -> Option<Vec<u8>> {
    let marker = format!("<!-- example: {name} -->");
    let at = doc.find(&marker)? + marker.len();
    let rest = &doc[at..];
    let start = rest.find("```hex")? + "```hex".len();
    let end = start + rest[start..].find("```")?;
    let clean: String = rest[start..end]
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    hex::decode(clean).ok()
}

fn wrap(b: &[u8]) -> String {
    hex::encode(b)
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn doc_examples_are_regenerated_byte_for_byte() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/formats.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut bad = Vec::new();
    for (name, bytes) in examples() {
        match doc_example(&doc, name) {
            Some(d) if d == bytes => {}
            _ => bad.push(format!(
                "<!-- example: {name} -->\n```hex\n{}\n```\n",
                wrap(&bytes)
            )),
        }
    }
    assert!(
        bad.is_empty(),
        "docs/formats.md examples differ; expected:\n{}",
        bad.join("\n")
    );
}

#[test]
fn doc_examples_verify() {
    let ex: std::collections::HashMap<_, _> = examples().into_iter().collect();
    let t = DeliveryToken::verify(&ex["token"], &PublicKey::from(&key(1)), &Limits::CARD).unwrap();
    assert_eq!(t.iss.as_str(), "dm.operator.example");
    let secret = p256::SecretKey::from(key(1).as_nonzero_scalar());
    let e = open_export(
        &ex["log-export"],
        &PublicKey::from(&key(2)),
        &secret,
        &Limits::DEFAULT,
    )
    .unwrap();
    assert_eq!(
        e.entries().unwrap()[0],
        LogEntry::decode(&ex["log-record"]).unwrap()
    );
    assert_eq!(e.pin, Some(PinTries::new(2, Some(3)).unwrap()));
    let m = suit::Envelope::decode(&ex["suit-envelope"], &Limits::CARD).unwrap();
    assert_eq!(m.verify(&PublicKey::from(&key(4))).unwrap().sequence, 7);
}
