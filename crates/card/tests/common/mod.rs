//! Test support: real keys, real signed objects (through simfota-wire), a personalized card
//! and a small terminal that speaks short APDUs with chaining or extended APDUs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::too_many_arguments, clippy::if_same_then_else)]

use p256::ecdsa::SigningKey;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};
use simfota_card::perso::dgi;
use simfota_card::{Applet, CardMemory, PIN_LEN, PowerCut, StatusWord, Store, ins};
pub use simfota_cardlink::Crypto;
use simfota_cardlink::LocalPlatform;
use simfota_wire::contract::CardInfo;
use simfota_wire::suit::{BuildParams, ImageSource, build};
use simfota_wire::{
    AdminChange, AdminCommand, CardCertificate, DeliveryToken, Digest, Iccid, Imei, IntegrityMode,
    IssuerId, LogAck, LogReadRequest, Nonce, Policy, PublicKey, Rights, ServerId, UnauthorizedRule,
    UpdateId,
};

pub const ICCID: &str = "89014103211118510720";
pub const OTHER_ICCID: &str = "89014103211118510738";
pub const IMSI: &str = "310150123456789";
pub const IMEI: &str = "490154203237518";
pub const OTHER_IMEI: &str = "356938035643809";
pub const PIN: &[u8; 8] = b"1234\xFF\xFF\xFF\xFF";
pub const PUK: &[u8; 8] = b"87654321";
pub const VENDOR: [u8; 16] = *b"vendor-uuid-0001";
pub const CLASS: [u8; 16] = *b"class-uuid-00001";
pub const SERVER: &str = "dm.operator.example";
pub const ROGUE: &str = "dm.rogue.example";
pub const READER: &str = "log.operator.example";
pub const ORIGINATOR: &str = "oem.example";
pub const NOW: u64 = 1_790_000_000;

/// A deterministic generator for reproducible tests (SHA-256 in counter mode). Marked
/// `CryptoRng` only here, in tests.
pub struct TestRng {
    seed: [u8; 32],
    counter: u64,
}

impl TestRng {
    pub fn new(label: &str) -> Self {
        Self {
            seed: Sha256::digest(label.as_bytes()).into(),
            counter: 0,
        }
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let mut h = Sha256::new();
            h.update(self.seed);
            h.update(self.counter.to_be_bytes());
            self.counter += 1;
            let block: [u8; 32] = h.finalize().into();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for TestRng {}

pub fn key(label: &str) -> SigningKey {
    let d: [u8; 32] = Sha256::digest(label.as_bytes()).into();
    SigningKey::from_slice(&d).unwrap()
}

pub fn sec1(k: &SigningKey) -> [u8; 65] {
    PublicKey::from(k).to_sec1()
}

/// The test cards' platform: the crypto back-end `SIMFOTA_CARD_CRYPTO` names (`software`, the
/// default, or `host`), or the one a test asks for; randomness from a seeded [`TestRng`].
pub type TestPlatform = LocalPlatform<TestRng>;

pub type TestApplet = Applet<PowerCut<CardMemory>, TestPlatform>;

/// Link statistics for the measurements.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub apdus: u32,
    pub to_card: u64,
    pub from_card: u64,
}

/// `cla` (first interindustry coding, or its proprietary twin) moved to logical channel
/// `channel` (ISO/IEC 7816-4 §5.1.1): b2-b1 for 0-3, the further coding for 4-19.
pub fn on_channel(cla: u8, channel: u8) -> u8 {
    if channel < 4 {
        (cla & !0x03) | channel
    } else {
        (cla & 0x90) | 0x40 | (channel - 4)
    }
}

/// A terminal in front of the applet.
pub struct Card {
    pub applet: Box<TestApplet>,
    /// The crypto back-end it runs on (kept across power cycles).
    pub crypto: Crypto,
    pub extended: bool,
    /// The logical channel `cmd` and `select` send on (0: the basic channel).
    pub channel: u8,
    pub stats: Stats,
    /// When `Some`, every exchange as it happened. Another build of the applet replays it
    /// and must answer the same bytes (`crates/card-firmware/tests/qemu.rs`).
    pub transcript: Option<Vec<Exchange>>,
}

/// One APDU exchange as the terminal saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The reader's response buffer size.
    pub reader: usize,
    pub command: Vec<u8>,
    /// Response data ‖ SW1 SW2.
    pub response: Vec<u8>,
}

impl Card {
    /// A blank card on the back-end of the environment ([`Crypto::from_env`]).
    pub fn blank(label: &str) -> Self {
        Card::blank_on(Crypto::from_env(), label)
    }

    pub fn blank_on(crypto: Crypto, label: &str) -> Self {
        let store = PowerCut::new(CardMemory::new(), None);
        Card::from_store_on(crypto, store, label)
    }

    /// A card over `store` on the back-end of the environment.
    pub fn from_store(store: PowerCut<CardMemory>, label: &str) -> Self {
        Card::from_store_on(Crypto::from_env(), store, label)
    }

    pub fn from_store_on(crypto: Crypto, store: PowerCut<CardMemory>, label: &str) -> Self {
        Card {
            applet: Box::new(Applet::new(
                store,
                LocalPlatform::new(crypto, TestRng::new(label)),
            )),
            crypto,
            extended: false,
            channel: 0,
            stats: Stats::default(),
            transcript: None,
        }
    }

    /// One APDU exchange, exactly as given.
    pub fn raw(&mut self, apdu: &[u8]) -> (Vec<u8>, StatusWord) {
        let mut out = vec![0u8; if self.extended { 65_538 } else { 258 }];
        let n = self.applet.process(apdu, &mut out);
        self.stats.apdus += 1;
        self.stats.to_card += apdu.len() as u64;
        self.stats.from_card += n as u64;
        assert!(n >= 2, "a response always carries a status word");
        if let Some(t) = &mut self.transcript {
            t.push(Exchange {
                reader: out.len(),
                command: apdu.to_vec(),
                response: out[..n].to_vec(),
            });
        }
        let sw = StatusWord(u16::from_be_bytes([out[n - 2], out[n - 1]]));
        out.truncate(n - 2);
        (out, sw)
    }

    /// Sends a command (chaining in short mode as needed), collects the whole answer
    /// through GET RESPONSE.
    pub fn cmd(&mut self, cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8]) -> (Vec<u8>, StatusWord) {
        let cla = on_channel(cla, self.channel);
        let (mut resp, mut sw) = if self.extended {
            let mut a = vec![cla, ins, p1, p2];
            if !data.is_empty() {
                a.push(0);
                a.extend_from_slice(&(data.len() as u16).to_be_bytes());
                a.extend_from_slice(data);
                a.extend_from_slice(&[0, 0]);
            } else {
                a.extend_from_slice(&[0, 0, 0]);
            }
            self.raw(&a)
        } else {
            let chunks: Vec<&[u8]> = if data.is_empty() {
                vec![&[][..]]
            } else {
                data.chunks(255).collect()
            };
            let mut last = (Vec::new(), StatusWord::OK);
            for (i, c) in chunks.iter().enumerate() {
                let more = i + 1 < chunks.len();
                let mut a = vec![if more { cla | 0x10 } else { cla }, ins, p1, p2];
                if !c.is_empty() {
                    a.push(c.len() as u8);
                    a.extend_from_slice(c);
                }
                if !more {
                    a.push(0);
                }
                last = self.raw(&a);
                if more && last.1 != StatusWord::OK {
                    return last;
                }
            }
            last
        };
        while sw.sw1() == 0x61 {
            let le = if self.extended {
                vec![0, 0, 0]
            } else {
                vec![sw.sw2()]
            };
            let mut a = vec![on_channel(0x00, self.channel), ins::GET_RESPONSE, 0, 0];
            a.extend_from_slice(&le);
            let (more, s) = self.raw(&a);
            resp.extend_from_slice(&more);
            sw = s;
        }
        (resp, sw)
    }

    pub fn select(&mut self) -> StatusWord {
        let cla = on_channel(0x00, self.channel);
        let mut a = vec![cla, ins::SELECT, 0x04, 0x00, simfota_card::AID.len() as u8];
        a.extend_from_slice(&simfota_card::AID);
        self.raw(&a).1
    }

    /// Power cycle: RAM cleared, open transactions lost, persistent state kept.
    pub fn power_cycle(self) -> Card {
        let mut mem = self.applet.into_store().into_inner();
        mem.power_cycle();
        let mut c = Card::from_store_on(self.crypto, PowerCut::new(mem, None), "after power cycle");
        c.extended = self.extended;
        c
    }

    pub fn image(&self) -> Vec<u8> {
        self.applet.store().inner().image().to_vec()
    }

    pub fn bind(&mut self, imei: &str) -> StatusWord {
        let mut d = imei.as_bytes().to_vec();
        d.extend_from_slice(&(NOW - 100).to_be_bytes());
        self.cmd(0x80, ins::BIND_TERMINAL, 0, 0, &d).1
    }

    pub fn nonce(&mut self) -> Nonce {
        let (d, sw) = self.cmd(0x00, ins::GET_CHALLENGE, 0, 0, &[]);
        assert_eq!(sw, StatusWord::OK);
        Nonce(d.try_into().unwrap())
    }

    pub fn info(&mut self) -> Vec<u8> {
        let (d, sw) = self.cmd(0x80, ins::GET_DATA, 0x01, 0x01, &[]);
        assert_eq!(sw, StatusWord::OK);
        d
    }

    pub fn authorize(&mut self, token: &[u8], envelope: &[u8]) -> StatusWord {
        self.cmd(0x80, ins::AUTHORIZE_UPDATE, 0, 0, &request(token, envelope))
            .1
    }

    pub fn verify_pin(&mut self, pin: &[u8; PIN_LEN]) -> StatusWord {
        self.cmd(0x00, ins::VERIFY, 0x00, 0x81, pin).1
    }

    pub fn device_digest(&mut self, payload: &[u8]) -> StatusWord {
        let mut d = Sha256::digest(payload).to_vec();
        d.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        self.cmd(0x80, ins::PAYLOAD, 0, 0, &d).1
    }

    pub fn stream(&mut self, payload: &[u8], chunk: usize) -> StatusWord {
        let chunks: Vec<&[u8]> = payload.chunks(chunk).collect();
        let mut sw = StatusWord::OK;
        for (i, c) in chunks.iter().enumerate() {
            let p1 = if chunks.len() == 1 {
                1
            } else if i == 0 {
                1
            } else if i + 1 == chunks.len() {
                3
            } else {
                2
            };
            sw = self.cmd(0x80, ins::PAYLOAD, p1, 0, c).1;
            if sw != StatusWord::OK {
                return sw;
            }
        }
        if chunks.len() == 1 {
            sw = self.cmd(0x80, ins::PAYLOAD, 3, 0, &[]).1;
        }
        sw
    }

    pub fn report(&mut self, result: u16, update_id: &[u8]) -> (Vec<u8>, StatusWord) {
        let mut d = result.to_be_bytes().to_vec();
        d.extend_from_slice(&NOW.to_be_bytes());
        d.extend_from_slice(update_id);
        self.cmd(0x80, ins::REPORT_RESULT, 0, 0, &d)
    }

    /// GET RECEIPT: the receipt of a recorded result, signed again.
    pub fn receipt(&mut self, update_id: &[u8]) -> (Vec<u8>, StatusWord) {
        self.cmd(0x80, ins::GET_RECEIPT, 0, 0, update_id)
    }

    pub fn log_status(&mut self) -> simfota_wire::contract::LogStatus {
        let (d, sw) = self.cmd(0x80, ins::GET_DATA, 0x01, 0x05, &[]);
        assert_eq!(sw, StatusWord::OK);
        simfota_wire::contract::LogStatus::decode(&d, &simfota_wire::Limits::DEFAULT).unwrap()
    }
}

pub fn request(token: &[u8], envelope: &[u8]) -> Vec<u8> {
    let mut d = (token.len() as u16).to_be_bytes().to_vec();
    d.extend_from_slice(token);
    d.extend_from_slice(envelope);
    d
}

fn dgi(tag: u16, v: &[u8]) -> Vec<u8> {
    let mut d = tag.to_be_bytes().to_vec();
    if v.len() < 0xFF {
        d.push(v.len() as u8);
    } else {
        d.push(0xFF);
        d.extend_from_slice(&(v.len() as u16).to_be_bytes());
    }
    d.extend_from_slice(v);
    d
}

/// The actors' keys and the objects they sign.
pub struct World {
    pub issuer: SigningKey,
    pub server: SigningKey,
    pub rogue: SigningKey,
    pub reader: SigningKey,
    pub originator: SigningKey,
    pub unknown_originator: SigningKey,
    pub payload: Vec<u8>,
    pub admin_counter: u64,
    pub cti: u8,
}

impl World {
    pub fn new() -> Self {
        World {
            issuer: key("issuer"),
            server: key("server"),
            rogue: key("rogue server"),
            reader: key("log reader"),
            originator: key("originator"),
            unknown_originator: key("unknown originator"),
            payload: (0..3000u32).map(|i| (i * 7 + 3) as u8).collect(),
            admin_counter: 0,
            cti: 0,
        }
    }

    pub fn policy(rule: UnauthorizedRule, integrity: IntegrityMode) -> Vec<u8> {
        let mut p = Policy::new(rule, integrity);
        p.allow(VENDOR, CLASS).unwrap();
        let mut b = [0u8; 200];
        let n = p.encode(&mut b).unwrap();
        b[..n].to_vec()
    }

    /// Personalizes a blank card: key generation, identity, PIN/PUK, issuer key and
    /// certificate, one server with every right, one log reader (read + ack), one
    /// originator, and `policy`; then locks it.
    pub fn personalize(&self, card: &mut Card, policy: &[u8]) {
        assert_eq!(card.select(), StatusWord::OK);
        let (pk, sw) = card.cmd(0x00, ins::GENERATE_KEY_PAIR, 0, 0, &[]);
        assert_eq!(sw, StatusWord::OK);
        let card_key = PublicKey::from_sec1(&pk).unwrap();
        let cert = CardCertificate {
            issuer: IssuerId::new("issuer.example").unwrap(),
            iccid: Iccid::parse(ICCID).unwrap(),
            card_key,
            imsi: Some(simfota_wire::ShortText::new(IMSI).unwrap()),
        };
        let mut cb = [0u8; 512];
        let n = cert.sign(&self.issuer, &mut cb).unwrap();
        let mut pin = PIN.to_vec();
        pin.push(3);
        let mut puk = PUK.to_vec();
        puk.push(10);
        let mut block1 = Vec::new();
        block1.extend(dgi(dgi::ICCID, ICCID.as_bytes()));
        block1.extend(dgi(dgi::IMSI, IMSI.as_bytes()));
        block1.extend(dgi(dgi::PIN, &pin));
        block1.extend(dgi(dgi::PUK, &puk));
        block1.extend(dgi(dgi::ISSUER_KEY, &sec1(&self.issuer)));
        block1.extend(dgi(dgi::CARD_CERTIFICATE, &cb[..n]));
        assert_eq!(
            card.cmd(0x80, ins::STORE_DATA, 0x00, 0x00, &block1).1,
            StatusWord::OK
        );
        let mut block2 = Vec::new();
        let mut s = vec![Rights::ALL.0];
        s.extend_from_slice(&sec1(&self.server));
        s.extend_from_slice(SERVER.as_bytes());
        block2.extend(dgi(dgi::SERVER, &s));
        let mut r = vec![(Rights::LOG_READ | Rights::LOG_ACK).0];
        r.extend_from_slice(&sec1(&self.reader));
        r.extend_from_slice(READER.as_bytes());
        block2.extend(dgi(dgi::SERVER, &r));
        let mut o = sec1(&self.originator).to_vec();
        o.extend_from_slice(ORIGINATOR.as_bytes());
        block2.extend(dgi(dgi::ORIGINATOR, &o));
        block2.extend(dgi(dgi::POLICY, policy));
        assert_eq!(
            card.cmd(0x80, ins::STORE_DATA, 0x80, 0x01, &block2).1,
            StatusWord::OK
        );
        let info = card.info();
        let ci = CardInfo::decode(&info, &simfota_wire::Limits::DEFAULT).unwrap();
        assert_eq!(ci.lifecycle, simfota_wire::contract::Lifecycle::Operational);
    }

    /// A fresh personalized card, selected, terminal bound, on the back-end of the
    /// environment.
    pub fn card(&self, policy: &[u8]) -> Card {
        self.card_on(Crypto::from_env(), policy)
    }

    /// [`World::card`] on the back-end `crypto`.
    pub fn card_on(&self, crypto: Crypto, policy: &[u8]) -> Card {
        let mut c = Card::blank_on(crypto, "card rng");
        self.personalize(&mut c, policy);
        assert_eq!(c.select(), StatusWord::OK);
        assert_eq!(c.bind(IMEI), StatusWord::OK);
        c
    }

    pub fn default_card(&self) -> Card {
        self.card(&Self::policy(
            UnauthorizedRule::Refuse,
            IntegrityMode::DeviceDigest,
        ))
    }

    pub fn package_by(
        &self,
        key: &SigningKey,
        sequence: u64,
        payload: &[u8],
        class: [u8; 16],
    ) -> (Vec<u8>, Digest) {
        let env = build(
            &BuildParams {
                vendor_id: VENDOR,
                class_id: class,
                sequence,
                image: ImageSource::Bytes(payload),
                name: Some("Release 7"),
                version: Some("7.0.1"),
                uri: Some("https://fw.example/r7.bin"),
                integrate: false,
                precursor_digest: None,
            },
            key,
        )
        .unwrap();
        let e = simfota_wire::suit::Envelope::decode(&env, &simfota_wire::Limits::DEFAULT).unwrap();
        let md = e.stated_manifest_digest();
        (env, md)
    }

    /// A severed envelope for `sequence`, signed by the trusted originator.
    pub fn package(&self, sequence: u64) -> (Vec<u8>, Digest) {
        self.package_by(&self.originator, sequence, &self.payload, CLASS)
    }

    pub fn next_cti(&mut self) -> Vec<u8> {
        self.cti += 1;
        vec![0xC7, self.cti]
    }

    pub fn token_with(
        &self,
        key: &SigningKey,
        iss: &str,
        cti: &[u8],
        nonce: Nonce,
        iccid: &str,
        imei: &str,
        md: Digest,
        iat: u64,
        exp: u64,
    ) -> Vec<u8> {
        let t = DeliveryToken {
            iss: ServerId::new(iss).unwrap(),
            iat,
            exp,
            cti: UpdateId::new(cti).unwrap(),
            nonce,
            iccid: Iccid::parse(iccid).unwrap(),
            imei: Imei::parse(imei).unwrap(),
            manifest_digest: md,
            nbf: None,
            charging_ref: None,
        };
        let mut b = [0u8; 1024];
        let n = t.sign(key, &mut b).unwrap();
        b[..n].to_vec()
    }

    pub fn token(&self, cti: &[u8], nonce: Nonce, md: Digest) -> Vec<u8> {
        self.token_with(
            &self.server,
            SERVER,
            cti,
            nonce,
            ICCID,
            IMEI,
            md,
            NOW,
            NOW + 3600,
        )
    }

    pub fn log_read(
        &self,
        key: &SigningKey,
        server: &str,
        nonce: Nonce,
        first: u32,
        max: u32,
    ) -> Vec<u8> {
        let r = LogReadRequest {
            server: ServerId::new(server).unwrap(),
            nonce,
            first_seq: first,
            max_count: max,
        };
        let mut b = [0u8; 512];
        let n = r.sign(key, &mut b).unwrap();
        b[..n].to_vec()
    }

    pub fn log_ack(&self, key: &SigningKey, server: &str, nonce: Nonce, upto: u32) -> Vec<u8> {
        let r = LogAck {
            server: ServerId::new(server).unwrap(),
            nonce,
            up_to_seq: upto,
        };
        let mut b = [0u8; 512];
        let n = r.sign(key, &mut b).unwrap();
        b[..n].to_vec()
    }

    pub fn admin(&mut self, target: &str, change: AdminChange) -> Vec<u8> {
        self.admin_counter += 1;
        self.admin_signed(&self.issuer.clone(), target, self.admin_counter, change)
    }

    pub fn admin_signed(
        &self,
        key: &SigningKey,
        target: &str,
        counter: u64,
        change: AdminChange,
    ) -> Vec<u8> {
        let c = AdminCommand {
            target: Iccid::parse(target).unwrap(),
            counter,
            change,
        };
        let mut b = [0u8; 512];
        let n = c.sign(key, &mut b).unwrap();
        b[..n].to_vec()
    }

    /// A full authorized update on `card`: nonce, token, authorize, device digest, report 200.
    /// Returns the update id and the receipt.
    pub fn full_update(&mut self, card: &mut Card, sequence: u64) -> (Vec<u8>, Vec<u8>) {
        let (env, md) = self.package(sequence);
        let cti = self.next_cti();
        let nonce = card.nonce();
        let tok = self.token(&cti, nonce, md);
        assert_eq!(card.authorize(&tok, &env), StatusWord::OK);
        assert_eq!(card.device_digest(&self.payload.clone()), StatusWord::OK);
        let (receipt, sw) = card.report(200, &cti);
        assert_eq!(sw, StatusWord::OK);
        (cti, receipt)
    }

    /// Reads the whole log through export pages, verifying each, as the reader server.
    pub fn read_all(&self, card: &mut Card) -> Vec<simfota_wire::LogEntry> {
        let card_pk = card_public_key(card);
        let secret = p256::SecretKey::from_slice(&self.reader.to_bytes()).unwrap();
        let mut first = 0;
        let mut entries = Vec::new();
        loop {
            let nonce = card.nonce();
            let req = self.log_read(&self.reader, READER, nonce, first, 64);
            let (exp, sw) = card.cmd(0x80, ins::READ_LOG, 0, 0, &req);
            assert_eq!(sw, StatusWord::OK, "log read");
            let page =
                simfota_wire::open_export(&exp, &card_pk, &secret, &simfota_wire::Limits::DEFAULT)
                    .unwrap();
            let page = page.into_inner();
            assert_eq!(page.nonce, nonce);
            let got = page.entries().unwrap();
            if got.is_empty() {
                break;
            }
            first = got.last().unwrap().seq + 1;
            entries.extend(got);
            if first >= page.log_end {
                break;
            }
        }
        entries
    }
}

pub fn card_public_key(card: &mut Card) -> PublicKey {
    let info = card.info();
    let ci = CardInfo::decode(&info, &simfota_wire::Limits::DEFAULT).unwrap();
    PublicKey::from_sec1(&ci.card_key.unwrap()).unwrap()
}

/// Whether two receipts are the same answer of `card`: both verify under its key and state
/// the same facts, and on the software back-end, whose signatures are deterministic (RFC
/// 6979), they are the same bytes (ring signs with random nonces).
pub fn same_receipt(card: &mut Card, a: &[u8], b: &[u8]) -> bool {
    let key = card_public_key(card);
    let open = |bytes: &[u8]| {
        simfota_wire::Receipt::verify(bytes, &key, &simfota_wire::Limits::DEFAULT)
            .ok()
            .map(simfota_wire::Verified::into_inner)
    };
    let facts = matches!((open(a), open(b)), (Some(x), Some(y)) if x == y);
    facts && (card.crypto != Crypto::Software || a == b)
}

/// Checks the hash chain of consecutive entries.
pub fn chain_ok(entries: &[simfota_wire::LogEntry]) -> bool {
    entries
        .windows(2)
        .all(|w| w[1].seq == w[0].seq + 1 && w[1].prev_hash == w[0].entry_hash().unwrap())
}

/// Polices used by tests.
pub fn policy(rule: UnauthorizedRule) -> Vec<u8> {
    World::policy(rule, IntegrityMode::DeviceDigest)
}

pub fn admin_put_server(id: &str, k: &SigningKey, rights: Rights) -> AdminChange {
    AdminChange::PutServer {
        id: ServerId::new(id).unwrap(),
        key: PublicKey::from(k),
        rights,
    }
}

pub fn store_writes(card: &Card) -> u32 {
    card.applet.store().writes()
}

pub fn _unused(_: &dyn Store) {}
