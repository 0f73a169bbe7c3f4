//! Every card flow through the typed client, over whatever channel a test gives: the same
//! code runs against the in-process card and against the card served into pcscd.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use simfota_card::Reason;
use simfota_cardlink::Channel;
use simfota_cardlink::client::{CardClient, ClientError, Lifecycle, Personalization, PinStatus};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::suit::{self, BuildParams, ImageSource};
use simfota_wire::{
    AdminChange, AdminCommand, DeliveryToken, Iccid, Imei, IntegrityMode, Limits, LogAck,
    LogReadRequest, Nonce, OriginatorId, Policy, PublicKey, Receipt, Rights, ServerId,
    UnauthorizedRule, UpdateId, open_export, sha256,
};

pub const ICCID: &str = "89882110000000000010";
pub const OTHER_ICCID: &str = "89882110000000000028";
pub const IMSI: &str = "001010123456789";
pub const IMEI: &str = "490154203237518";
pub const PIN: &str = "1234";
pub const PUK: &str = "12345678";
pub const SERVER: &str = "dm.operator.example";
pub const ORIGINATOR: &str = "oem.example";

/// The keys of one test world.
pub struct World {
    pub issuer: SigningKey,
    pub server: SigningKey,
    pub rogue: SigningKey,
    pub originator: SigningKey,
}

impl World {
    pub fn new() -> Self {
        let mut rng = rand_core::OsRng;
        Self {
            issuer: SigningKey::random(&mut rng),
            server: SigningKey::random(&mut rng),
            rogue: SigningKey::random(&mut rng),
            originator: SigningKey::random(&mut rng),
        }
    }

    pub fn personalization(&self) -> Personalization {
        Personalization {
            issuer_name: "operator.example".into(),
            iccid: Iccid::parse(ICCID).unwrap(),
            imsi: IMSI.into(),
            pin: (PIN.into(), 3),
            puk: (PUK.into(), 10),
            servers: vec![(SERVER.into(), PublicKey::from(&self.server), Rights::ALL)],
            originators: vec![(ORIGINATOR.into(), PublicKey::from(&self.originator))],
            policy: Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest),
        }
    }

    /// A severed SUIT envelope for `payload` at `sequence`.
    pub fn envelope(&self, payload: &[u8], sequence: u64) -> Vec<u8> {
        let env = suit::build(
            &BuildParams {
                vendor_id: [1; 16],
                class_id: [2; 16],
                sequence,
                image: ImageSource::Bytes(payload),
                name: Some("release"),
                version: Some("1.0"),
                uri: Some("https://fw.example/image.bin"),
                integrate: false,
                precursor_digest: None,
            },
            &self.originator,
        )
        .unwrap();
        suit::sever(&env, &Limits::default()).unwrap()
    }

    pub fn token(&self, key: &SigningKey, nonce: Nonce, envelope: &[u8], cti: &str) -> Vec<u8> {
        let limits = Limits::default();
        let digest = suit::Envelope::decode(envelope, &limits)
            .unwrap()
            .stated_manifest_digest();
        let now = now();
        DeliveryToken {
            iss: ServerId::new(SERVER).unwrap(),
            iat: now,
            exp: now + 3600,
            cti: UpdateId::new(cti.as_bytes()).unwrap(),
            nonce,
            iccid: Iccid::parse(ICCID).unwrap(),
            imei: Imei::parse(IMEI).unwrap(),
            manifest_digest: digest,
            nbf: None,
            charging_ref: None,
        }
        .to_vec(key)
        .unwrap()
    }

    pub fn admin(&self, counter: u64, change: AdminChange, target: &str) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let n = AdminCommand {
            target: Iccid::parse(target).unwrap(),
            counter,
            change,
        }
        .sign(&self.issuer, &mut buf)
        .unwrap();
        buf.truncate(n);
        buf
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Reason {
    match r {
        Err(ClientError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Personalizes a blank card and runs every flow of the command set through `client`.
pub fn every_flow<C: Channel>(client: &mut CardClient<C>, w: &World) {
    let limits = Limits::default();
    // Personalization (then the card locks).
    let card_key = client.personalize(&w.issuer, &w.personalization()).unwrap();
    let sel = client.select().unwrap();
    assert_eq!(sel.lifecycle, Lifecycle::Operational);
    assert!(client.personalize(&w.issuer, &w.personalization()).is_err());

    // Reading what the device may read.
    let info = client.card_info().unwrap();
    assert_eq!(info.iccid, ICCID);
    assert_eq!(info.imsi, IMSI);
    assert_eq!(info.card_key, Some(card_key.to_sec1()));
    assert_eq!(info.lifecycle, Lifecycle::Operational);
    assert_eq!(info.log_next, 0);
    let servers = client.servers().unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].id, SERVER);
    assert_eq!(servers[0].key, PublicKey::from(&w.server));
    assert_eq!(servers[0].rights, Rights::ALL);
    let originators = client.originators().unwrap();
    assert_eq!(originators.len(), 1);
    assert_eq!(originators[0].id, ORIGINATOR);
    assert_eq!(client.policy().unwrap(), w.personalization().policy);

    // Session open, authorization, integrity (device digest), result and receipt.
    let imei = Imei::parse(IMEI).unwrap();
    client.bind_terminal(&imei).unwrap();
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let envelope = w.envelope(&payload, 1);
    let nonce = client.get_nonce().unwrap();
    let token = w.token(&w.server, nonce, &envelope, "update-1");
    client.authorize(&token, &envelope).unwrap();
    // The same token again: an update is pending, and the nonce is spent anyway.
    assert_eq!(
        refused(client.authorize(&token, &envelope)),
        Reason::UpdatePending
    );
    client
        .payload_digest(&sha256(&payload), payload.len() as u64)
        .unwrap();
    let receipt_bytes = client.report_result(b"update-1", 200, Some(now())).unwrap();
    let receipt = Receipt::verify(&receipt_bytes, &card_key, &limits).unwrap();
    assert_eq!(receipt.get().result.0, 200);
    assert_eq!(client.card_info().unwrap().installed_sequence, 1);
    // A result for an update that already ended.
    let err = client.report_result(b"update-1", 200, None).unwrap_err();
    assert_eq!(err.reason(), Some(Reason::UnknownUpdate));
    // Its receipt again (a device that lost it), the same bytes; none for another id.
    assert_eq!(client.receipt(b"update-1").unwrap(), receipt_bytes);
    let err = client.receipt(b"update-9").unwrap_err();
    assert_eq!(err.status(), Some(simfota_cardlink::StatusWord(0x6A88)));

    // Replayed token (nonce spent) and a token from an unlisted server.
    let replay = refused(client.authorize(&token, &envelope));
    assert!(
        matches!(replay, Reason::NonceUnavailable | Reason::Rollback),
        "{replay:?}"
    );
    let envelope2 = w.envelope(&payload, 2);
    let nonce = client.get_nonce().unwrap();
    let rogue = w.token(&w.rogue, nonce, &envelope2, "update-2");
    let err = client.authorize(&rogue, &envelope2).unwrap_err();
    assert_eq!(err.reason(), Some(Reason::TokenSignature));
    assert_eq!(err.fumo_result(), Some(404));

    // PIN: a wrong try, the status, the right PIN.
    let err = client.verify_pin("9999").unwrap_err();
    assert!(
        matches!(err, ClientError::WrongPin { tries_left: 2, .. }),
        "{err}"
    );
    assert_eq!(client.pin_status().unwrap(), PinStatus::TriesLeft(2));
    client.verify_pin(PIN).unwrap();
    assert_eq!(client.pin_status().unwrap(), PinStatus::Verified);

    // The log: an encrypted, card-signed page for the server, then its acknowledgement.
    let server_secret = simfota_wire::p256::SecretKey::from(w.server.as_nonzero_scalar());
    let nonce = client.get_nonce().unwrap();
    let mut buf = vec![0u8; 1024];
    let n = LogReadRequest {
        server: ServerId::new(SERVER).unwrap(),
        nonce,
        first_seq: 0,
        max_count: 64,
    }
    .sign(&w.server, &mut buf)
    .unwrap();
    let export = client.read_log(&buf[..n]).unwrap();
    let contents = open_export(&export, &card_key, &server_secret, &limits).unwrap();
    let contents = contents.get();
    assert_eq!(contents.nonce, nonce);
    assert!(
        contents.records.len() >= 4,
        "{} records",
        contents.records.len()
    );
    let before = client.log_status().unwrap();
    let nonce = client.get_nonce().unwrap();
    let n = LogAck {
        server: ServerId::new(SERVER).unwrap(),
        nonce,
        up_to_seq: before.next - 1,
    }
    .sign(&w.server, &mut buf)
    .unwrap();
    client.ack_log(&buf[..n]).unwrap();
    let after = client.log_status().unwrap();
    assert!(after.free > before.free);

    // Admin: card-digest policy, then an update whose payload the card hashes itself.
    let policy = Policy::new(
        UnauthorizedRule::Refuse,
        IntegrityMode::CardDigest { max_size: 1 << 20 },
    );
    let set_policy = w.admin(1, AdminChange::SetPolicy(policy), ICCID);
    client.admin(&set_policy).unwrap();
    assert_eq!(refused(client.admin(&set_policy)), Reason::AdminReplay);
    let other_card = w.admin(2, AdminChange::SetPolicy(policy), OTHER_ICCID);
    assert_eq!(refused(client.admin(&other_card)), Reason::AdminWrongCard);
    let add = w.admin(
        2,
        AdminChange::PutOriginator {
            id: OriginatorId::new("second.oem").unwrap(),
            key: PublicKey::from(&w.rogue),
        },
        ICCID,
    );
    client.admin(&add).unwrap();
    assert_eq!(client.originators().unwrap().len(), 2);
    assert_eq!(client.policy().unwrap(), policy);

    let nonce = client.get_nonce().unwrap();
    let token = w.token(&w.server, nonce, &envelope2, "update-2");
    client.authorize(&token, &envelope2).unwrap();
    let err = client
        .payload_digest(&sha256(&payload), payload.len() as u64)
        .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::CardDigestRequired));
    // Streamed as a download delivers it: pieces of any size, a restart from byte 0 midway
    // (the card's hash starts over with the next first chunk), then the whole payload.
    client.payload_stream_start();
    for piece in payload[..3000].chunks(7) {
        client.payload_stream_feed(piece).unwrap();
    }
    assert_eq!(client.payload_stream_len(), Some(3000));
    client.payload_stream_start();
    for piece in payload.chunks(1000) {
        client.payload_stream_feed(piece).unwrap();
    }
    assert_eq!(client.payload_stream_len(), Some(payload.len() as u64));
    let streamed = client.payload_stream_finish().unwrap();
    assert_eq!(streamed, payload.len() as u64);
    assert_eq!(client.payload_stream_len(), None);
    let receipt_bytes = client.report_result(b"update-2", 200, None).unwrap();
    assert_eq!(client.card_info().unwrap().installed_sequence, 2);
    assert_eq!(client.receipt(b"update-2").unwrap(), receipt_bytes);
}

/// The wrong-PIN sequence to blocking, and the PUK unblocking (on a personalized card).
pub fn pin_to_blocking<C: Channel>(client: &mut CardClient<C>) {
    client.select().unwrap();
    for left in [2u8, 1, 0] {
        match client.verify_pin("0000") {
            Err(ClientError::WrongPin { tries_left, .. }) => assert_eq!(tries_left, left),
            Err(ClientError::Blocked { .. }) if left == 0 => {}
            other => panic!("try with {left} left: {other:?}"),
        }
    }
    assert_eq!(client.pin_status().unwrap(), PinStatus::Blocked);
    assert!(matches!(
        client.verify_pin(PIN),
        Err(ClientError::Blocked { .. })
    ));
    client.unblock_pin(PUK, Some("4321")).unwrap();
    client.verify_pin("4321").unwrap();
    client.change_pin("4321", PIN).unwrap();
}
