//! The committed corpus of deliberately broken objects under `tests/data/broken/` (the model:
//! tough's `tests/data` of broken repositories): one file per way an object can be wrong, each
//! listed in `expected.json` with the call that must refuse it and the exact `Error` it must
//! give, so a change that makes some check refuse later, earlier or not at all shows up here.
//!
//! `corpus_refuses_each_file_as_listed` reads only the committed files. `generate` (ignored,
//! run by hand: `cargo test -p simfota-wire --test broken_corpus -- --ignored`) rebuilds the
//! files from deterministic test keys; it builds every object itself, byte by byte, checks
//! that its valid objects are byte-identical to what the library emits, and that each broken
//! variant fails with the variant it was made to provoke before writing it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce as GcmNonce};
use common::{TestRng, key};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::Sha256;
use simfota_wire::{
    AdminChange, AdminCommand, CardCertificate, DeliveryToken, Digest, Error, Event, ExportHeader,
    FumoResult, Iccid, Imei, IntegrityMode, IssuerId, Limits, LogAck, LogEntry, LogReadRequest,
    Nonce, Policy, PublicKey, Receipt, Rights, ServerId, ShortText, UnauthorizedRule, UpdateId,
    build_export, open_export, p256,
};

// ---- keys and the calls the corpus names ------------------------------------------------------

/// Issuer: signs admin commands and card certificates.
fn issuer() -> SigningKey {
    key(1)
}
/// Card: signs receipts and log exports.
fn card() -> SigningKey {
    key(2)
}
/// Server: signs delivery tokens, log acks and log-read requests; exports are encrypted to it.
fn server() -> SigningKey {
    key(3)
}
/// Nobody the verifier trusts.
fn attacker() -> SigningKey {
    key(4)
}
/// Another server (a wrong export recipient).
fn other_server() -> SigningKey {
    key(5)
}

fn pk(k: &SigningKey) -> PublicKey {
    PublicKey::from(k)
}

fn secret(k: &SigningKey) -> p256::SecretKey {
    p256::SecretKey::from_bytes(&k.to_bytes()).unwrap()
}

/// Runs the verification `call` names (as written in expected.json) on `bytes`, with the
/// default host limits and the keys above.
fn run(call: &str, bytes: &[u8]) -> Result<(), Error> {
    let lim = Limits::DEFAULT;
    match call {
        "Receipt::verify" => Receipt::verify(bytes, &pk(&card()), &lim).map(drop),
        "LogAck::verify" => LogAck::verify(bytes, &pk(&server()), &lim).map(drop),
        "LogReadRequest::verify" => LogReadRequest::verify(bytes, &pk(&server()), &lim).map(drop),
        "AdminCommand::verify" => AdminCommand::verify(bytes, &pk(&issuer()), &lim).map(drop),
        "CardCertificate::verify" => CardCertificate::verify(bytes, &pk(&issuer()), &lim).map(drop),
        "DeliveryToken::verify" => DeliveryToken::verify(bytes, &pk(&server()), &lim).map(drop),
        "Policy::decode" => Policy::decode(bytes, &lim).map(drop),
        "LogEntry::decode" => LogEntry::decode(bytes).map(drop),
        "open_export" => open_export(bytes, &pk(&card()), &secret(&server()), &lim).map(drop),
        "open_export+entries" => open_export(bytes, &pk(&card()), &secret(&server()), &lim)?
            .entries()
            .map(drop),
        other => panic!("expected.json names an unknown call {other:?}"),
    }
}

fn outcome(call: &str, bytes: &[u8]) -> String {
    match run(call, bytes) {
        Ok(()) => "Ok".to_string(),
        Err(e) => format!("{e:?}"),
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/broken")
}

fn read_hex(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(clean).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hex_files(root: &Path, at: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(at).unwrap() {
        let p = e.unwrap().path();
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if p.is_dir() {
            hex_files(root, &p, out);
        } else if rel != "README.md" && rel != "expected.json" {
            out.insert(rel);
        }
    }
}

// ---- the test ---------------------------------------------------------------------------------

#[test]
fn corpus_refuses_each_file_as_listed() {
    let root = dir();
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("expected.json")).unwrap())
            .unwrap();
    let mut names = BTreeSet::new();
    let (mut valid, mut broken) = (BTreeSet::new(), 0usize);
    let mut failures = Vec::new();
    for entry in &listed {
        let file = entry["file"].as_str().unwrap();
        let call = entry["call"].as_str().unwrap();
        let want = entry["expected"].as_str().unwrap();
        assert!(
            !entry["why"].as_str().unwrap_or("").is_empty(),
            "{file}: no reason given"
        );
        assert!(names.insert(file.to_string()), "{file} listed twice");
        let got = outcome(call, &read_hex(&root.join(file)));
        if got != want {
            failures.push(format!("{file}: {call} gave {got}, expected {want}"));
        }
        let kind = file.split('/').next().unwrap();
        if file.ends_with("/valid.hex") {
            assert_eq!(want, "Ok", "{file}: an original must verify");
            valid.insert(kind.to_string());
        } else {
            assert_ne!(want, "Ok", "{file}: a broken file must be refused");
            broken += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let mut on_disk = BTreeSet::new();
    hex_files(&root, &root, &mut on_disk);
    let orphans: Vec<_> = on_disk.difference(&names).collect();
    let missing: Vec<_> = names.difference(&on_disk).collect();
    assert!(
        orphans.is_empty(),
        "files not in expected.json: {orphans:?}"
    );
    assert!(missing.is_empty(), "listed files missing: {missing:?}");

    let kinds: BTreeSet<String> = names
        .iter()
        .map(|f| f.split('/').next().unwrap().to_string())
        .collect();
    assert_eq!(kinds, valid, "every kind has a valid original");
    assert!(broken >= 40, "only {broken} broken files");
}

// ---- a tiny CBOR encoder, so the generator can write what the library never would -------------

#[derive(Clone, Debug)]
enum C {
    I(i64),
    B(Vec<u8>),
    T(String),
    A(Vec<C>),
    M(Vec<(C, C)>),
    /// Indefinite-length map (RFC 8949 §3.2.2), which every simfota decoder refuses.
    IndefM(Vec<(C, C)>),
    Tag(u64, Box<C>),
    Null,
    Bool(bool),
    /// An array head claiming `n` items followed by the given items (fewer, or more).
    ArrayClaiming(usize, Vec<C>),
}

fn head(major: u8, v: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    match v {
        0..=23 => out.push(m | v as u8),
        24..=0xff => out.extend([m | 24, v as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((v as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((v as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(v.to_be_bytes());
        }
    }
}

fn enc_into(c: &C, out: &mut Vec<u8>) {
    match c {
        C::I(n) if *n >= 0 => head(0, *n as u64, out),
        C::I(n) => head(1, (-1 - *n) as u64, out),
        C::B(b) => {
            head(2, b.len() as u64, out);
            out.extend(b);
        }
        C::T(s) => {
            head(3, s.len() as u64, out);
            out.extend(s.as_bytes());
        }
        C::A(items) => {
            head(4, items.len() as u64, out);
            items.iter().for_each(|i| enc_into(i, out));
        }
        C::ArrayClaiming(n, items) => {
            head(4, *n as u64, out);
            items.iter().for_each(|i| enc_into(i, out));
        }
        C::M(kv) | C::IndefM(kv) => {
            match c {
                C::M(_) => head(5, kv.len() as u64, out),
                _ => out.push(0xbf),
            }
            for (k, v) in kv {
                enc_into(k, out);
                enc_into(v, out);
            }
            if matches!(c, C::IndefM(_)) {
                out.push(0xff);
            }
        }
        C::Tag(t, inner) => {
            head(6, *t, out);
            enc_into(inner, out);
        }
        C::Null => out.push(0xf6),
        C::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
    }
}

fn enc(c: &C) -> Vec<u8> {
    let mut out = Vec::new();
    enc_into(c, &mut out);
    out
}

fn b(x: &[u8]) -> C {
    C::B(x.to_vec())
}
fn t(s: &str) -> C {
    C::T(s.to_string())
}

/// An int-keyed map as an editable list.
type Entries = Vec<(i64, C)>;

fn map(e: &Entries) -> C {
    C::M(e.iter().map(|(k, v)| (C::I(*k), v.clone())).collect())
}
fn set(e: &Entries, key: i64, v: C) -> Entries {
    let mut e = e.clone();
    e.iter_mut().find(|(k, _)| *k == key).unwrap().1 = v;
    e
}
fn without(e: &Entries, key: i64) -> Entries {
    e.iter().filter(|(k, _)| *k != key).cloned().collect()
}
fn plus(e: &Entries, key: i64, v: C) -> Entries {
    let mut e = e.clone();
    e.push((key, v));
    e
}
fn get(e: &Entries, key: i64) -> C {
    e.iter().find(|(k, _)| *k == key).unwrap().1.clone()
}

fn cose_key(k: &PublicKey) -> Entries {
    let (x, y) = k.xy();
    vec![(1, C::I(2)), (-1, C::I(1)), (-2, b(&x)), (-3, b(&y))]
}

// ---- COSE_Sign1 by hand -----------------------------------------------------------------------

const PROT_ES256: [u8; 3] = [0xa1, 0x01, 0x26];

/// ES256 over the Sig_structure (RFC 9052 §4.4), deterministic (RFC 6979).
fn signature(prot: &[u8], payload: &[u8], k: &SigningKey) -> Vec<u8> {
    let tbs = enc(&C::A(vec![t("Signature1"), b(prot), b(&[]), b(payload)]));
    let s: Signature = k.sign(&tbs);
    s.to_bytes().to_vec()
}

fn sign1(tag: Option<u64>, prot: &[u8], unprot: C, payload: Option<&[u8]>, sig: &[u8]) -> Vec<u8> {
    let body = C::A(vec![b(prot), unprot, payload.map_or(C::Null, b), b(sig)]);
    enc(&match tag {
        Some(n) => C::Tag(n, Box::new(body)),
        None => body,
    })
}

/// A tagged COSE_Sign1 with `prot` and `unprot`, correctly signed with `k`.
fn signed(prot: &[u8], unprot: C, payload: &[u8], k: &SigningKey) -> Vec<u8> {
    sign1(
        Some(18),
        prot,
        unprot,
        Some(payload),
        &signature(prot, payload, k),
    )
}

fn kid_map(kid: Option<&[u8]>, alg: bool) -> C {
    let mut e: Entries = Vec::new();
    if alg {
        e.push((1, C::I(-7)));
    }
    if let Some(k) = kid {
        e.push((4, b(k)));
    }
    map(&e)
}

// ---- the generator ----------------------------------------------------------------------------

struct Corpus {
    entries: Vec<(String, String, String, String, Vec<u8>)>,
}

impl Corpus {
    /// Adds a file after checking `bytes` fail under `call` as intended: `want` is either the
    /// exact Debug form, or a bare variant name whose offset/field the file then pins.
    fn add(&mut self, kind: &str, name: &str, call: &str, want: &str, why: &str, bytes: Vec<u8>) {
        let got = outcome(call, &bytes);
        let ok = got == want
            || (!want.contains(['(', '{'])
                && (got.starts_with(&format!("{want} {{"))
                    || got.starts_with(&format!("{want}("))));
        assert!(
            ok,
            "{kind}/{name}: {call} gave {got}, meant to provoke {want}"
        );
        self.entries.push((
            format!("{kind}/{name}.hex"),
            call.to_string(),
            got,
            why.to_string(),
            bytes,
        ));
    }

    fn write(&self) {
        let root = dir();
        for e in std::fs::read_dir(&root).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            }
        }
        let mut lines = Vec::new();
        for (file, call, expected, why, bytes) in &self.entries {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let hex = hex::encode(bytes);
            let mut text = String::new();
            for chunk in hex.as_bytes().chunks(64) {
                text.push_str(std::str::from_utf8(chunk).unwrap());
                text.push('\n');
            }
            std::fs::write(&path, text).unwrap();
            let q = |s: &str| serde_json::Value::from(s).to_string();
            lines.push(format!(
                "{{\"file\": {}, \"call\": {}, \"expected\": {}, \"why\": {}}}",
                q(file),
                q(call),
                q(expected),
                q(why)
            ));
        }
        std::fs::write(
            root.join("expected.json"),
            format!("[\n{}\n]\n", lines.join(",\n")),
        )
        .unwrap();
    }
}

const ICCID: &str = "89014103211118510720";
const IMEI: &str = "490154203237518";

/// One signed object kind: its payload as editable entries, the key and kid it is signed with,
/// and the bytes the library produced for it (the generator's payload must match them).
struct Kind {
    kind: &'static str,
    call: &'static str,
    key: SigningKey,
    kid: Option<Vec<u8>>,
    payload: Entries,
    library: Vec<u8>,
    /// A run of payload bytes inside a byte or text string, where one flipped bit still decodes.
    flip: Vec<u8>,
}

impl Kind {
    fn unprot(&self) -> C {
        kid_map(self.kid.as_deref(), false)
    }
    fn resigned(&self, payload: &C) -> Vec<u8> {
        signed(&PROT_ES256, self.unprot(), &enc(payload), &self.key)
    }

    /// The valid original and the COSE_Sign1-level breakages every signed object shares.
    fn common(&self, c: &mut Corpus) {
        let (kind, call) = (self.kind, self.call);
        let p = enc(&map(&self.payload));
        let valid = signed(&PROT_ES256, self.unprot(), &p, &self.key);
        assert_eq!(
            valid, self.library,
            "{kind}: hand-made encoding differs from the library's"
        );
        c.add(
            kind,
            "valid",
            call,
            "Ok",
            "The untouched original, signed with the right key; it must verify.",
            valid.clone(),
        );
        let sig = signature(&PROT_ES256, &p, &self.key);

        c.add(
            kind,
            "wrong_signer",
            call,
            "BadSignature",
            "Well-formed, but signed with a key the verifier does not hold (RFC 9052 §4.4).",
            signed(&PROT_ES256, self.unprot(), &p, &attacker()),
        );
        let mut s = sig.clone();
        s[10] ^= 0x01;
        c.add(
            kind,
            "signature_flipped",
            call,
            "BadSignature",
            "One bit of the signature's r value flipped.",
            sign1(Some(18), &PROT_ES256, self.unprot(), Some(&p), &s),
        );
        let at = p
            .windows(self.flip.len())
            .position(|w| w == self.flip)
            .unwrap();
        let mut q = p.clone();
        q[at] ^= 0x01;
        c.add(kind, "payload_flipped", call, "BadSignature",
            "One bit flipped inside a string of the payload: still decodes, no longer what was signed.",
            sign1(Some(18), &PROT_ES256, self.unprot(), Some(&q), &sig));
        c.add(kind, "protected_flipped", call, "BadSignature",
            "The protected header's alg byte changed from ES256 (-7) to ESP256 (-9), which the profile accepts, but the signature covers the original header bytes.",
            sign1(Some(18), &[0xa1, 0x01, 0x28], self.unprot(), Some(&p), &sig));
        c.add(kind, "alg_eddsa", call, "UnsupportedAlg(-8)",
            "Protected alg is EdDSA (-8), correctly signed over that header: the algorithm check refuses, not the signature.",
            signed(&[0xa1, 0x01, 0x27], self.unprot(), &p, &self.key));
        c.add(kind, "alg_unprotected", call, "AlgNotProtected",
            "alg moved to the unprotected bucket (empty protected header), re-signed: an attacker could change it.",
            signed(&[], kid_map(self.kid.as_deref(), true), &p, &self.key));
        c.add(kind, "alg_in_both_buckets", call, "DuplicateKey",
            "alg in the protected and again in the unprotected bucket (RFC 9052 §3: a label appears once).",
            signed(&PROT_ES256, kid_map(self.kid.as_deref(), true), &p, &self.key));
        let crit = enc(&map(&vec![(1, C::I(-7)), (2, C::A(vec![C::I(99)]))]));
        c.add(kind, "crit_unknown", call, "UnknownCritical(99)",
            "The protected header marks label 99 critical, which this implementation does not process (RFC 9052 §3.1).",
            signed(&crit, self.unprot(), &p, &self.key));
        c.add(
            kind,
            "wrong_cose_tag",
            call,
            "UnexpectedTag { found: 17 }",
            "Tag 17 (COSE_Mac0) instead of 18 (COSE_Sign1).",
            sign1(Some(17), &PROT_ES256, self.unprot(), Some(&p), &sig),
        );
        c.add(
            kind,
            "detached_payload",
            call,
            "MissingField(\"payload\")",
            "Payload nil (detached): these objects always carry their payload.",
            sign1(
                Some(18),
                &PROT_ES256,
                self.unprot(),
                None,
                &signature(&PROT_ES256, &p, &self.key),
            ),
        );
        let mut v = valid.clone();
        v.push(0x00);
        c.add(
            kind,
            "trailing_byte",
            call,
            "TrailingBytes",
            "One byte after the COSE_Sign1 (RFC 8949 §5.3: not ignored).",
            v,
        );
        c.add(
            kind,
            "truncated",
            call,
            "BadCbor",
            "The last byte of the signature cut off.",
            valid[..valid.len() - 1].to_vec(),
        );
        c.add(
            kind,
            "signature_short",
            call,
            "BadSignature",
            "A 63-byte signature: not an ES256 r||s.",
            sign1(Some(18), &PROT_ES256, self.unprot(), Some(&p), &sig[..63]),
        );
        let mut five = Vec::new();
        head(6, 18, &mut five);
        head(4, 5, &mut five);
        five.extend(enc(&b(&PROT_ES256)));
        five.extend(enc(&self.unprot()));
        five.extend(enc(&b(&p)));
        five.extend(enc(&b(&sig)));
        five.extend(enc(&C::Null));
        c.add(
            kind,
            "array_of_five",
            call,
            "BadCbor",
            "A COSE_Sign1 array of five items (RFC 9052 §4.2: four).",
            five,
        );

        let m = map(&self.payload);
        let C::M(kv) = &m else { unreachable!() };
        c.add(kind, "payload_indefinite_map", call, "IndefiniteLength { at: 0 }",
            "The payload map has indefinite length; this profile requires definite lengths. Re-signed.",
            self.resigned(&C::IndefM(kv.clone())));
        let mut dup = kv.clone();
        let last = dup.len() - 1;
        dup[last].0 = dup[last - 1].0.clone();
        c.add(
            kind,
            "payload_duplicate_key",
            call,
            "DuplicateKey",
            "The payload's last key repeats the one before it (RFC 8949 §5.6). Re-signed.",
            self.resigned(&C::M(dup)),
        );
        c.add(
            kind,
            "payload_trailing_byte",
            call,
            "TrailingBytes",
            "A byte after the payload map, inside the signed bstr. Re-signed.",
            {
                let mut q = p.clone();
                q.push(0);
                signed(&PROT_ES256, self.unprot(), &q, &self.key)
            },
        );
        c.add(
            kind,
            "payload_not_a_map",
            call,
            "BadCbor",
            "The payload is an array of the map's values. Re-signed.",
            self.resigned(&C::A(self.payload.iter().map(|(_, v)| v.clone()).collect())),
        );
    }

    /// A payload edit, re-signed with the right key so only the named check can refuse it.
    fn edit(&self, c: &mut Corpus, name: &str, want: &str, why: &str, payload: Entries) {
        c.add(
            self.kind,
            name,
            self.call,
            want,
            why,
            self.resigned(&map(&payload)),
        );
    }
}

fn receipt() -> Kind {
    let r = Receipt {
        iccid: Iccid::parse(ICCID).unwrap(),
        update_id: UpdateId::new(b"upd-0001").unwrap(),
        result: FumoResult::SUCCESSFUL,
        log_seq: 5,
        chain_head: Digest([0xdd; 32]),
    };
    let mut buf = [0u8; 512];
    let n = r.sign(&card(), &mut buf).unwrap();
    Kind {
        kind: "receipt",
        call: "Receipt::verify",
        key: card(),
        kid: None,
        payload: vec![
            (0, C::I(1)),
            (1, t(ICCID)),
            (2, b(b"upd-0001")),
            (3, C::I(200)),
            (4, C::I(5)),
            (5, b(&[0xdd; 32])),
        ],
        library: buf[..n].to_vec(),
        flip: vec![0xdd; 32],
    }
}

fn log_ack() -> Kind {
    let a = LogAck {
        server: ServerId::new("dm.example").unwrap(),
        nonce: Nonce([0x11; 16]),
        up_to_seq: 7,
    };
    let mut buf = [0u8; 512];
    let n = a.sign(&server(), &mut buf).unwrap();
    Kind {
        kind: "log_ack",
        call: "LogAck::verify",
        key: server(),
        kid: None,
        payload: vec![
            (0, C::I(2)),
            (1, t("dm.example")),
            (2, b(&[0x11; 16])),
            (3, C::I(7)),
        ],
        library: buf[..n].to_vec(),
        flip: vec![0x11; 16],
    }
}

fn log_read() -> Kind {
    let q = LogReadRequest {
        server: ServerId::new("dm.example").unwrap(),
        nonce: Nonce([0x22; 16]),
        first_seq: 10,
        max_count: 8,
    };
    let mut buf = [0u8; 512];
    let n = q.sign(&server(), &mut buf).unwrap();
    Kind {
        kind: "log_read_request",
        call: "LogReadRequest::verify",
        key: server(),
        kid: None,
        payload: vec![
            (0, C::I(3)),
            (1, t("dm.example")),
            (2, b(&[0x22; 16])),
            (3, C::I(10)),
            (4, C::I(8)),
        ],
        library: buf[..n].to_vec(),
        flip: vec![0x22; 16],
    }
}

fn put_server(key: &Entries, rights: i64) -> C {
    C::A(vec![C::I(1), t("dm.example"), map(key), C::I(rights)])
}

fn admin() -> Kind {
    let a = AdminCommand {
        target: Iccid::parse(ICCID).unwrap(),
        counter: 42,
        change: AdminChange::PutServer {
            id: ServerId::new("dm.example").unwrap(),
            key: pk(&server()),
            rights: Rights::FIRMWARE_UPDATE | Rights::LOG_READ,
        },
    };
    let mut buf = [0u8; 512];
    let n = a.sign(&issuer(), &mut buf).unwrap();
    Kind {
        kind: "admin_command",
        call: "AdminCommand::verify",
        key: issuer(),
        kid: None,
        payload: vec![
            (0, C::I(4)),
            (1, t(ICCID)),
            (2, C::I(42)),
            (3, put_server(&cose_key(&pk(&server())), 3)),
        ],
        library: buf[..n].to_vec(),
        flip: b"dm.example".to_vec(),
    }
}

fn certificate() -> Kind {
    let c = CardCertificate {
        issuer: IssuerId::new("issuer.example").unwrap(),
        iccid: Iccid::parse(ICCID).unwrap(),
        card_key: pk(&card()),
        imsi: Some(ShortText::new("001010123456789").unwrap()),
    };
    let mut buf = [0u8; 512];
    let n = c.sign(&issuer(), &mut buf).unwrap();
    Kind {
        kind: "card_certificate",
        call: "CardCertificate::verify",
        key: issuer(),
        kid: None,
        payload: vec![
            (1, t("issuer.example")),
            (2, t(ICCID)),
            (8, map(&vec![(1, map(&cose_key(&pk(&card()))))])),
            (-65542, t("001010123456789")),
        ],
        library: buf[..n].to_vec(),
        flip: b"issuer.example".to_vec(),
    }
}

fn token() -> Kind {
    let tk = DeliveryToken {
        iss: ServerId::new("dm.example").unwrap(),
        iat: 1_700_000_000,
        exp: 1_700_003_600,
        nbf: None,
        cti: UpdateId::new(b"upd-0001").unwrap(),
        nonce: Nonce([0x44; 16]),
        iccid: Iccid::parse(ICCID).unwrap(),
        imei: Imei::parse(IMEI).unwrap(),
        manifest_digest: Digest([0xab; 32]),
        charging_ref: None,
    };
    Kind {
        kind: "delivery_token",
        call: "DeliveryToken::verify",
        key: server(),
        kid: Some(b"dm.example".to_vec()),
        payload: vec![
            (1, t("dm.example")),
            (4, C::I(1_700_003_600)),
            (6, C::I(1_700_000_000)),
            (7, b(b"upd-0001")),
            (-65537, b(&[0x44; 16])),
            (-65538, t(ICCID)),
            (-65539, t(IMEI)),
            (-65540, b(&[0xab; 32])),
        ],
        library: tk.to_vec(&server()).unwrap(),
        flip: vec![0xab; 32],
    }
}

/// The typed objects (key 0 first): breakages of the type code and of the member set.
fn typed(k: &Kind, c: &mut Corpus, code: i64, other: &Kind) {
    let p = &k.payload;
    k.edit(c, "wrong_type_code", &format!("WrongObjectType {{ expected: {code}, found: 5 }}"),
        "Type code 5, which no object uses, re-signed: a signature over one kind is never read as another.",
        set(p, 0, C::I(5)));
    c.add(k.kind, &format!("is_{}", other.kind), k.call, "WrongObjectType",
        "A valid, correctly signed object of another kind presented as this one (type confusion): the type code refuses it before any key is tried.",
        other.library.clone());
    let mut swapped = p.clone();
    swapped.swap(0, 1);
    k.edit(
        c,
        "type_code_not_first",
        "MissingField(\"type code\")",
        "The type code moved behind the first member; it must come first. Re-signed.",
        swapped,
    );
    k.edit(
        c,
        "type_code_missing",
        "MissingField(\"type code\")",
        "No type code at all. Re-signed.",
        without(p, 0),
    );
    k.edit(
        c,
        "unknown_field",
        "UnknownField",
        "An extra member 9 these versioned formats do not define. Re-signed.",
        plus(p, 9, C::I(0)),
    );
    let last = p.last().unwrap().0;
    k.edit(
        c,
        "missing_last_field",
        "MissingField",
        "The last member left out. Re-signed.",
        without(p, last),
    );
}

fn signed_kinds(c: &mut Corpus) {
    let (rc, ack, rq, adm, cert, tok) = (
        receipt(),
        log_ack(),
        log_read(),
        admin(),
        certificate(),
        token(),
    );
    for k in [&rc, &ack, &rq, &adm, &cert, &tok] {
        k.common(c);
    }
    typed(&rc, c, 1, &ack);
    typed(&ack, c, 2, &rq);
    typed(&rq, c, 3, &ack);
    typed(&adm, c, 4, &rc);

    // receipt
    rc.edit(
        c,
        "iccid_bad_luhn",
        "BadIccid",
        "ICCID last digit changed so the Luhn check fails (ITU-T E.118). Re-signed.",
        set(&rc.payload, 1, t("89014103211118510721")),
    );
    rc.edit(
        c,
        "chain_head_31_bytes",
        "InvalidField(\"chain head\")",
        "The chain head is 31 bytes, not a SHA-256. Re-signed.",
        set(&rc.payload, 5, b(&[0xdd; 31])),
    );
    rc.edit(
        c,
        "log_seq_over_u32",
        "InvalidField(\"log seq\")",
        "Log sequence number 2^32 does not fit the card's u32. Re-signed.",
        set(&rc.payload, 4, C::I(1 << 32)),
    );
    rc.edit(
        c,
        "fumo_result_over_u16",
        "InvalidField(\"fumo result\")",
        "FUMO result 70000 is not a result code. Re-signed.",
        set(&rc.payload, 3, C::I(70_000)),
    );
    rc.edit(
        c,
        "update_id_oversized",
        "BadId",
        "A 17-byte update id (limit 16). Re-signed.",
        set(&rc.payload, 2, b(&[b'u'; 17])),
    );

    // log ack and read request
    ack.edit(
        c,
        "nonce_oversized",
        "InvalidField(\"nonce\")",
        "A 17-byte card nonce (always 16). Re-signed.",
        set(&ack.payload, 2, b(&[0x11; 17])),
    );
    ack.edit(
        c,
        "server_id_oversized",
        "BadId",
        "A 33-byte server id (limit 32). Re-signed.",
        set(&ack.payload, 1, t(&"d".repeat(33))),
    );
    ack.edit(
        c,
        "server_id_control_char",
        "BadId",
        "A server id with a newline in it. Re-signed.",
        set(&ack.payload, 1, t("dm.example\n")),
    );
    rq.edit(
        c,
        "nonce_short",
        "InvalidField(\"nonce\")",
        "A 15-byte card nonce (always 16). Re-signed.",
        set(&rq.payload, 2, b(&[0x22; 15])),
    );
    rq.edit(
        c,
        "max_count_negative",
        "BadCbor",
        "max-count -1: a negative integer where an unsigned one is required. Re-signed.",
        set(&rq.payload, 4, C::I(-1)),
    );
    let C::M(mut kv) = map(&rq.payload) else {
        unreachable!()
    };
    kv.push((t("x"), C::I(0)));
    c.add(
        rq.kind,
        "map_key_text",
        rq.call,
        "UnknownField",
        "A text map key \"x\" among the integer keys. Re-signed.",
        rq.resigned(&C::M(kv)),
    );

    // admin command
    let sk = cose_key(&pk(&server()));
    adm.edit(
        c,
        "change_kind_unknown",
        "InvalidField(\"admin change kind\")",
        "Change kind 9, which no version defines. Re-signed.",
        set(&adm.payload, 3, C::A(vec![C::I(9), t("dm.example")])),
    );
    adm.edit(
        c,
        "put_server_three_items",
        "BadCbor",
        "A put-server change without its rights item. Re-signed.",
        set(
            &adm.payload,
            3,
            C::A(vec![C::I(1), t("dm.example"), map(&sk)]),
        ),
    );
    adm.edit(
        c,
        "rights_unknown_bit",
        "InvalidField(\"rights\")",
        "Rights bit 16, which this version does not define. Re-signed.",
        set(&adm.payload, 3, put_server(&sk, 16)),
    );
    adm.edit(
        c,
        "cose_key_private_part",
        "InvalidField(\"COSE_Key with private part\")",
        "The server's COSE_Key carries its private scalar d (-4). Re-signed.",
        set(&adm.payload, 3, put_server(&plus(&sk, -4, b(&[1; 32])), 3)),
    );
    adm.edit(
        c,
        "cose_key_p384",
        "BadKey",
        "The server's COSE_Key names curve P-384 (crv 2). Re-signed.",
        set(&adm.payload, 3, put_server(&set(&sk, -1, C::I(2)), 3)),
    );
    let C::B(mut y) = get(&sk, -3) else {
        unreachable!()
    };
    y[31] ^= 0x01;
    adm.edit(c, "cose_key_off_curve", "BadKey",
        "The server's public key y coordinate has one bit flipped: not a point on P-256. Re-signed.",
        set(&adm.payload, 3, put_server(&set(&sk, -3, C::B(y)), 3)));
    adm.edit(
        c,
        "target_iccid_bad_luhn",
        "BadIccid",
        "The target ICCID fails its Luhn check. Re-signed.",
        set(&adm.payload, 1, t("89014103211118510721")),
    );
    adm.edit(
        c,
        "counter_negative",
        "BadCbor",
        "Counter -1. Re-signed.",
        set(&adm.payload, 2, C::I(-1)),
    );

    // card certificate (a CWT: no type code, unknown claims ignored)
    let cp = &cert.payload;
    cert.edit(
        c,
        "cnf_method_unknown",
        "InvalidField(\"cnf method\")",
        "The cnf claim holds method 3 (kid) instead of a COSE_Key (RFC 8747 §3.2). Re-signed.",
        set(cp, 8, map(&vec![(3, b(b"card"))])),
    );
    cert.edit(
        c,
        "imsi_letters",
        "InvalidField(\"imsi\")",
        "An IMSI with letters in it (3GPP TS 23.003 §2.2). Re-signed.",
        set(cp, -65542, t("00101abc")),
    );
    cert.edit(
        c,
        "sub_missing",
        "MissingField(\"sub\")",
        "No subject (the card's ICCID). Re-signed.",
        without(cp, 2),
    );
    cert.edit(
        c,
        "cnf_missing",
        "MissingField(\"cnf\")",
        "No confirmation key. Re-signed.",
        without(cp, 8),
    );
    cert.edit(
        c,
        "issuer_empty",
        "BadId",
        "An empty issuer name. Re-signed.",
        set(cp, 1, t("")),
    );
    c.add("card_certificate", "is_admin_command", cert.call, "BadCbor",
        "A valid issuer-signed admin command presented as a certificate: its member 2 (the counter) is an integer where the subject claim is text.",
        adm.library.clone());
    c.add(
        "receipt",
        "is_card_certificate",
        rc.call,
        "MissingField(\"type code\")",
        "A card certificate (a CWT without type code) presented as a receipt.",
        signed(&PROT_ES256, C::M(vec![]), &enc(&map(cp)), &card()),
    );
    // delivery token (a CWT: unknown claims ignored, duplicates refused)
    let tp = &tok.payload;
    tok.edit(
        c,
        "claim_duplicate_iss",
        "DuplicateKey",
        "iss appears twice (RFC 8392 §7.2: duplicate claims are refused). Re-signed.",
        plus(tp, 1, t("evil.example")),
    );
    tok.edit(
        c,
        "exp_missing",
        "MissingField(\"exp\")",
        "No expiry. Re-signed.",
        without(tp, 4),
    );
    tok.edit(
        c,
        "cti_oversized",
        "BadId",
        "A 17-byte cti (update id, limit 16). Re-signed.",
        set(tp, 7, b(&[b'u'; 17])),
    );
    tok.edit(
        c,
        "nonce_short",
        "InvalidField(\"nonce\")",
        "A 15-byte nonce claim. Re-signed.",
        set(tp, -65537, b(&[0x44; 15])),
    );
    tok.edit(
        c,
        "imei_bad_luhn",
        "BadImei",
        "IMEI check digit wrong (3GPP TS 23.003 §6.2.1). Re-signed.",
        set(tp, -65539, t("490154203237519")),
    );
    tok.edit(
        c,
        "manifest_digest_short",
        "InvalidField(\"manifest digest\")",
        "A 16-byte manifest digest (SHA-256 is 32). Re-signed.",
        set(tp, -65540, b(&[0xab; 16])),
    );
    tok.edit(
        c,
        "iss_oversized",
        "BadId",
        "A 33-byte issuer (limit 32). Re-signed.",
        set(tp, 1, t(&"d".repeat(33))),
    );
    tok.edit(
        c,
        "exp_text",
        "BadCbor",
        "exp as a text string, not a NumericDate. Re-signed.",
        set(tp, 4, t("tomorrow")),
    );
    let C::M(mut kv) = map(tp) else {
        unreachable!()
    };
    kv.push((b(b"k"), C::I(0)));
    c.add(
        tok.kind,
        "claim_key_bstr",
        tok.call,
        "BadMapKey",
        "A claim keyed by a byte string (RFC 8392 §3: keys are ints or text). Re-signed.",
        tok.resigned(&C::M(kv)),
    );
    c.add(tok.kind, "cwt_tag_around_untagged", tok.call, "MissingField(\"COSE_Sign1 tag inside CWT tag\")",
        "Tag 61 (CWT) around an untagged COSE_Sign1 (RFC 8392 §6: the inner message must be tagged).",
        {
            let mut v = vec![0xd8, 0x3d];
            v.extend(&tok.library[1..]);
            v
        });
    let pad = vec![0u8; 4100];
    let p = enc(&map(tp));
    let unprot = C::M(vec![(C::I(4), b(b"dm.example")), (t("pad"), C::B(pad))]);
    c.add(
        tok.kind,
        "oversized_object",
        tok.call,
        "TooLarge",
        "A 4 KiB unprotected header pushes the token over Limits::max_object_len (4096).",
        signed(&PROT_ES256, unprot, &p, &server()),
    );
}

// ---- log records (unsigned; fixed 288-byte slots) -------------------------------------------

/// The items of a record, padded to `RECORD_LEN` with the zero bstr the card writes.
fn record(items: &[C]) -> Vec<u8> {
    // The padding string is the array's last item.
    let mut r = enc(&C::ArrayClaiming(items.len() + 1, items.to_vec()));
    let pad = LogEntry::RECORD_LEN - r.len();
    r.extend([0x58, (pad - 2) as u8]);
    r.resize(LogEntry::RECORD_LEN, 0);
    r
}

fn log_records(c: &mut Corpus) {
    let (kind, call) = ("log_record", "LogEntry::decode");
    let mut e = LogEntry::new(
        10,
        Digest([0x77; 32]),
        Event::Installed(FumoResult::SUCCESSFUL),
    );
    e.update_id = Some(UpdateId::new(b"upd-0001").unwrap());
    e.server = Some(ServerId::new("dm.example").unwrap());
    e.manifest_digest = Some(Digest([0xab; 32]));
    e.imei = Some(Imei::parse(IMEI).unwrap());
    e.trusted_time = Some(1_700_000_000);
    let items = vec![
        C::I(10),
        b(&[0x77; 32]),
        C::A(vec![C::I(5), C::I(200)]),
        b(b"upd-0001"),
        t("dm.example"),
        C::Null,
        C::Null,
        C::Null,
        b(&[0xab; 32]),
        t(IMEI),
        C::I(1_700_000_000),
        C::Null,
        C::I(0),
    ];
    let valid = record(&items);
    assert_eq!(
        valid,
        e.encode().unwrap().to_vec(),
        "hand-made record differs"
    );
    c.add(
        kind,
        "valid",
        call,
        "Ok",
        "The untouched original record; it must decode.",
        valid.clone(),
    );
    let with = |i: usize, v: C| {
        let mut it = items.clone();
        it[i] = v;
        record(&it)
    };
    c.add(
        kind,
        "truncated",
        call,
        "InvalidField(\"log record length\")",
        "287 bytes: records fill exactly one 288-byte slot.",
        valid[..287].to_vec(),
    );
    let mut v = valid.clone();
    v.push(0);
    c.add(
        kind,
        "one_byte_long",
        call,
        "InvalidField(\"log record length\")",
        "289 bytes.",
        v,
    );
    let mut v = valid.clone();
    v[0] = 0x8f;
    c.add(
        kind,
        "item_count_15",
        call,
        "InvalidField(\"log record item count\")",
        "The record array claims 15 items (13 or 14 exist).",
        v,
    );
    let mut v = valid.clone();
    v[0] = 0x9f;
    c.add(
        kind,
        "indefinite_array",
        call,
        "IndefiniteLength { at: 0 }",
        "The record array has indefinite length.",
        v,
    );
    let mut v = valid.clone();
    v[287] = 1;
    c.add(
        kind,
        "padding_nonzero",
        call,
        "InvalidField(\"log record padding\")",
        "The last padding byte is 1: padding is all zeros, so a record has one encoding.",
        v,
    );
    let mut v = valid.clone();
    let pad_at = v.len() - v.iter().rev().position(|&x| x == 0x58).unwrap() - 1;
    v[pad_at + 1] -= 1;
    c.add(
        kind,
        "trailing_after_padding",
        call,
        "TrailingBytes",
        "The padding string one byte shorter, leaving a byte after the record array.",
        v,
    );
    c.add(
        kind,
        "event_kind_unknown",
        call,
        "InvalidField(\"event kind\")",
        "Event kind 9, which no version defines.",
        with(2, C::A(vec![C::I(9), C::I(0)])),
    );
    c.add(
        kind,
        "event_missing_argument",
        call,
        "BadCbor",
        "An installed event without its FUMO result.",
        with(2, C::A(vec![C::I(5)])),
    );
    c.add(
        kind,
        "free_device_false",
        call,
        "InvalidField(\"free-device flag\")",
        "[0, false]: not the one encoding of a plain authorization ([0]).",
        with(2, C::A(vec![C::I(0), C::Bool(false)])),
    );
    c.add(
        kind,
        "unverified_marks_unknown",
        call,
        "InvalidField(\"unverified marks\")",
        "Unverified-marks bit 8, which this version does not define.",
        with(12, C::I(8)),
    );
    c.add(
        kind,
        "seq_over_u32",
        call,
        "InvalidField(\"seq\")",
        "Sequence number 2^32.",
        with(0, C::I(1 << 32)),
    );
    c.add(
        kind,
        "prev_hash_31_bytes",
        call,
        "InvalidField(\"prev hash\")",
        "A 31-byte previous-entry hash.",
        with(1, b(&[0x77; 31])),
    );
    c.add(
        kind,
        "imei_bad_luhn",
        call,
        "BadImei",
        "IMEI check digit wrong.",
        with(9, t("490154203237519")),
    );
    c.add(
        kind,
        "fumo_result_over_u16",
        call,
        "InvalidField(\"fumo result\")",
        "FUMO result 70000.",
        with(2, C::A(vec![C::I(5), C::I(70_000)])),
    );
    c.add(
        kind,
        "update_id_oversized",
        call,
        "BadId",
        "A 17-byte update id.",
        with(3, b(&[b'u'; 17])),
    );
}

// ---- policy (unsigned; carried inside admin commands, stored by the card) ---------------------

fn policies(c: &mut Corpus) {
    let (kind, call) = ("policy", "Policy::decode");
    let mut p = Policy::new(
        UnauthorizedRule::WarnConfirm,
        IntegrityMode::CardDigest { max_size: 65_536 },
    );
    p.allow([0x01; 16], [0x02; 16]).unwrap();
    let mut buf = [0u8; Policy::MAX_ENCODED_LEN];
    let n = p.encode(&mut buf).unwrap();
    let pair = C::A(vec![b(&[0x01; 16]), b(&[0x02; 16])]);
    let e: Entries = vec![
        (1, C::I(1)),
        (2, C::I(1)),
        (3, C::I(65_536)),
        (4, C::A(vec![pair.clone()])),
    ];
    let valid = enc(&map(&e));
    assert_eq!(valid, buf[..n].to_vec(), "hand-made policy differs");
    c.add(
        kind,
        "valid",
        call,
        "Ok",
        "The untouched original policy; it must decode.",
        valid.clone(),
    );
    c.add(
        kind,
        "rule_unknown",
        call,
        "InvalidField(\"unauthorized-server rule\")",
        "Unauthorized-server rule 4, which no version defines.",
        enc(&map(&set(&e, 1, C::I(4)))),
    );
    c.add(
        kind,
        "card_digest_without_max",
        call,
        "InvalidField(\"integrity mode\")",
        "Card-digest mode without the largest size the card hashes.",
        enc(&map(&without(&e, 3))),
    );
    c.add(
        kind,
        "device_digest_with_max",
        call,
        "InvalidField(\"integrity mode\")",
        "Device-digest mode with a card-digest size, which only card-digest mode has.",
        enc(&map(&set(&e, 2, C::I(0)))),
    );
    c.add(
        kind,
        "mode_missing",
        call,
        "MissingField(\"integrity mode\")",
        "No integrity mode.",
        enc(&map(&without(&without(&e, 2), 3))),
    );
    c.add(
        kind,
        "allow_list_missing",
        call,
        "MissingField(\"policy allow list\")",
        "No allow list (an empty one means any).",
        enc(&map(&without(&e, 4))),
    );
    c.add(
        kind,
        "allow_list_too_long",
        call,
        "TooLarge { what: \"policy allow list\", max: 4 }",
        "Five allowed vendor/class pairs; the card holds four.",
        enc(&map(&set(&e, 4, C::A(vec![pair.clone(); 5])))),
    );
    c.add(
        kind,
        "vendor_id_15_bytes",
        call,
        "InvalidField(\"vendor-id\")",
        "A 15-byte vendor id (a UUID is 16).",
        enc(&map(&set(
            &e,
            4,
            C::A(vec![C::A(vec![b(&[1; 15]), b(&[2; 16])])]),
        ))),
    );
    c.add(
        kind,
        "unknown_key",
        call,
        "UnknownField { object: \"policy\", key: 5 }",
        "A member 5 this version does not define.",
        enc(&map(&plus(&e, 5, C::I(0)))),
    );
    c.add(
        kind,
        "duplicate_key",
        call,
        "DuplicateKey",
        "Rule given twice.",
        enc(&map(&plus(&e, 1, C::I(3)))),
    );
    let C::M(kv) = map(&e) else { unreachable!() };
    c.add(
        kind,
        "indefinite_map",
        call,
        "IndefiniteLength { at: 0 }",
        "An indefinite-length map.",
        enc(&C::IndefM(kv)),
    );
    let mut v = valid.clone();
    v.push(0);
    c.add(
        kind,
        "trailing_byte",
        call,
        "TrailingBytes",
        "A byte after the map.",
        v,
    );
    c.add(
        kind,
        "truncated",
        call,
        "BadCbor",
        "The last byte cut off.",
        valid[..valid.len() - 1].to_vec(),
    );
}

// ---- log export: COSE_Sign1(card) { COSE_Encrypt (ECDH-ES + HKDF-256, A128GCM) } --------------

const ENC_PROT: [u8; 3] = [0xa1, 0x01, 0x01];
const RCPT_PROT: [u8; 4] = [0xa1, 0x01, 0x38, 0x18];

/// Every part of an export page, valid by default; each broken file changes one.
#[derive(Clone)]
struct Export {
    plain: Vec<u8>,
    enc_tag: u64,
    enc_prot: Vec<u8>,
    /// The IV written into the header, when it is not the one used to encrypt.
    iv_sent: Option<Vec<u8>>,
    iv_missing: bool,
    rcpt_prot: Vec<u8>,
    encrypt_to: PublicKey,
    /// Replaces the ephemeral COSE_Key in the recipient's unprotected header (`None`: drop it).
    eph: Option<Option<C>>,
    rcpt_ct: Vec<u8>,
    /// Flip a bit this many bytes before the end of ciphertext || GCM tag.
    ct_flip_from_end: Option<usize>,
    signer: SigningKey,
}

impl Export {
    fn new(plain: Vec<u8>) -> Self {
        Export {
            plain,
            enc_tag: 96,
            enc_prot: ENC_PROT.to_vec(),
            iv_sent: None,
            iv_missing: false,
            rcpt_prot: RCPT_PROT.to_vec(),
            encrypt_to: pk(&server()),
            eph: None,
            rcpt_ct: vec![],
            ct_flip_from_end: None,
            signer: card(),
        }
    }

    /// RFC 9052 §5.1 / RFC 9053 §6.3.1, as `build_export` does it, with the same RNG draws
    /// (ephemeral scalar, then IV).
    fn build(&self) -> Vec<u8> {
        let mut rng = TestRng(7);
        let eph = p256::NonZeroScalar::random(&mut rng);
        let mut iv = [0u8; 12];
        simfota_wire::rand_core::RngCore::fill_bytes(&mut rng, &mut iv);
        let eph_pub = PublicKey::from(p256::ecdsa::VerifyingKey::from(
            p256::PublicKey::from_secret_scalar(&eph),
        ));
        let to = p256::PublicKey::from_sec1_bytes(&self.encrypt_to.to_sec1()).unwrap();
        let shared = p256::ecdh::diffie_hellman(eph, to.as_affine());
        let ctx = enc(&C::A(vec![
            C::I(1),
            C::A(vec![C::Null, C::Null, C::Null]),
            C::A(vec![C::Null, C::Null, C::Null]),
            C::A(vec![C::I(128), b(&self.rcpt_prot)]),
        ]));
        let mut cek = [0u8; 16];
        hkdf::Hkdf::<Sha256>::new(None, shared.raw_secret_bytes())
            .expand(&ctx, &mut cek)
            .unwrap();
        let aad = enc(&C::A(vec![t("Encrypt"), b(&self.enc_prot), b(&[])]));
        let mut ct = self.plain.clone();
        let tag = Aes128Gcm::new_from_slice(&cek)
            .unwrap()
            .encrypt_in_place_detached(&GcmNonce::from(iv), &aad, &mut ct)
            .unwrap();
        ct.extend(tag);
        if let Some(k) = self.ct_flip_from_end {
            let i = ct.len() - 1 - k;
            ct[i] ^= 0x01;
        }
        let iv_map: Entries = if self.iv_missing {
            vec![]
        } else {
            vec![(5, b(self.iv_sent.as_deref().unwrap_or(&iv)))]
        };
        let mut rcpt_unprot: Entries = vec![(4, b(b"dm.example"))];
        match &self.eph {
            None => rcpt_unprot.push((-1, map(&cose_key(&eph_pub)))),
            Some(Some(k)) => rcpt_unprot.push((-1, k.clone())),
            Some(None) => {}
        }
        let encrypt = C::Tag(
            self.enc_tag,
            Box::new(C::A(vec![
                b(&self.enc_prot),
                map(&iv_map),
                C::B(ct),
                C::A(vec![C::A(vec![
                    b(&self.rcpt_prot),
                    map(&rcpt_unprot),
                    b(&self.rcpt_ct),
                ])]),
            ])),
        );
        signed(&PROT_ES256, C::M(vec![]), &enc(&encrypt), &self.signer)
    }

    fn eph_pub(&self) -> PublicKey {
        let mut rng = TestRng(7);
        let eph = p256::NonZeroScalar::random(&mut rng);
        PublicKey::from(p256::ecdsa::VerifyingKey::from(
            p256::PublicKey::from_secret_scalar(&eph),
        ))
    }
}

fn chain(first_seq: u32, n: u32, prev: Digest) -> Vec<[u8; LogEntry::RECORD_LEN]> {
    let mut out = Vec::new();
    let mut prev = prev;
    for i in 0..n {
        let mut e = LogEntry::new(first_seq + i, prev, Event::Authorized);
        e.server = Some(ServerId::new("dm.example").unwrap());
        let rec = e.encode().unwrap();
        prev = LogEntry::record_hash(&rec);
        out.push(rec);
    }
    out
}

fn plaintext(records: &[Vec<u8>], head: Digest, log_end: u32) -> Entries {
    vec![
        (0, C::I(6)),
        (1, t(ICCID)),
        (2, b(&[0x33; 16])),
        (3, C::I(10)),
        (4, C::A(records.iter().map(|r| b(r)).collect())),
        (5, b(&head.0)),
        (6, C::I(i64::from(log_end))),
    ]
}

fn exports(c: &mut Corpus) {
    let kind = "log_export";
    let (call, entries) = ("open_export", "open_export+entries");
    let recs = chain(10, 3, Digest([0x77; 32]));
    let head = LogEntry::record_hash(&recs[2]);
    let raw: Vec<Vec<u8>> = recs.iter().map(|r| r.to_vec()).collect();
    let e = plaintext(&raw, head, 13);

    let header = ExportHeader {
        iccid: Iccid::parse(ICCID).unwrap(),
        nonce: Nonce([0x33; 16]),
        first_seq: 10,
        count: 3,
        chain_head: head,
        log_end: 13,
        pin: None,
    };
    let mut buf = vec![0u8; 2048];
    let n = build_export(
        &mut buf,
        &header,
        &pk(&server()),
        b"dm.example",
        &card(),
        &mut TestRng(7),
        |seq, slot| {
            *slot = recs[(seq - 10) as usize];
            true
        },
    )
    .unwrap();
    let base = Export::new(enc(&map(&e)));
    let valid = base.build();
    assert_eq!(valid, buf[..n].to_vec(), "hand-made export differs");
    c.add(
        kind,
        "valid",
        entries,
        "Ok",
        "The untouched original page of three chained records; it must open and its chain check.",
        valid.clone(),
    );

    let with = |f: &dyn Fn(&mut Export)| {
        let mut x = base.clone();
        f(&mut x);
        x.build()
    };
    let plain = |p: &Entries| with(&|x| x.plain = enc(&map(p)));

    c.add(
        kind,
        "wrong_signer",
        call,
        "BadSignature",
        "Signed by a key other than the card's.",
        with(&|x| x.signer = attacker()),
    );
    let mut v = valid.clone();
    let last = v.len() - 1;
    v[last] ^= 0x01;
    c.add(
        kind,
        "signature_flipped",
        call,
        "BadSignature",
        "One bit of the signature flipped.",
        v,
    );
    let mut v = valid.clone();
    v[100] ^= 0x01;
    c.add(kind, "ciphertext_flipped_unsigned", call, "BadSignature",
        "One ciphertext bit flipped after signing: the card's signature covers the ciphertext, so it is refused before decryption.", v);
    c.add(kind, "ciphertext_flipped", call, "DecryptFailed",
        "One ciphertext bit flipped, then re-signed with the card key: AES-GCM authentication refuses it.",
        with(&|x| x.ct_flip_from_end = Some(40)));
    c.add(
        kind,
        "gcm_tag_flipped",
        call,
        "DecryptFailed",
        "One bit of the GCM tag flipped, re-signed.",
        with(&|x| x.ct_flip_from_end = Some(0)),
    );
    c.add(kind, "wrong_recipient_key", call, "DecryptFailed",
        "Encrypted to another server's key (the kid still names this one): this server cannot decrypt.",
        with(&|x| x.encrypt_to = pk(&other_server())));
    c.add(
        kind,
        "wrong_nonce",
        call,
        "DecryptFailed",
        "The AES-GCM IV in the header differs in one bit from the one used to encrypt.",
        with(&|x| {
            let mut iv = [0u8; 12];
            let mut rng = TestRng(7);
            let _ = p256::NonZeroScalar::random(&mut rng);
            simfota_wire::rand_core::RngCore::fill_bytes(&mut rng, &mut iv);
            iv[0] ^= 0x01;
            x.iv_sent = Some(iv.to_vec());
        }),
    );
    c.add(
        kind,
        "nonce_11_bytes",
        call,
        "InvalidField(\"iv\")",
        "An 11-byte IV (A128GCM takes 12).",
        with(&|x| x.iv_sent = Some(vec![0; 11])),
    );
    c.add(
        kind,
        "nonce_missing",
        call,
        "MissingField(\"iv\")",
        "No IV in the COSE_Encrypt's unprotected header.",
        with(&|x| x.iv_missing = true),
    );
    c.add(
        kind,
        "content_alg_a256gcm",
        call,
        "UnsupportedAlg(3)",
        "Content algorithm A256GCM (3) instead of A128GCM (1).",
        with(&|x| x.enc_prot = vec![0xa1, 0x01, 0x03]),
    );
    c.add(
        kind,
        "content_alg_unprotected",
        call,
        "AlgNotProtected",
        "The COSE_Encrypt's protected header is an empty map: no protected algorithm.",
        with(&|x| x.enc_prot = vec![0xa0]),
    );
    c.add(
        kind,
        "recipient_alg_key_wrap",
        call,
        "UnsupportedAlg(-29)",
        "Recipient algorithm ECDH-ES + A128KW (-29) instead of ECDH-ES + HKDF-256 (-25).",
        with(&|x| x.rcpt_prot = vec![0xa1, 0x01, 0x38, 0x1c]),
    );
    c.add(
        kind,
        "wrong_encrypt_tag",
        call,
        "UnexpectedTag { found: 16 }",
        "Tag 16 (COSE_Encrypt0) instead of 96 (COSE_Encrypt).",
        with(&|x| x.enc_tag = 16),
    );
    let mut off = cose_key(&base.eph_pub());
    let C::B(mut y) = get(&off, -3) else {
        unreachable!()
    };
    y[31] ^= 0x01;
    off = set(&off, -3, C::B(y));
    c.add(kind, "ephemeral_key_off_curve", call, "BadKey",
        "The ephemeral key's y coordinate has a bit flipped: not on P-256 (an invalid-curve attack).",
        with(&|x| x.eph = Some(Some(map(&off)))));
    c.add(
        kind,
        "ephemeral_key_missing",
        call,
        "MissingField(\"ephemeral key\")",
        "The recipient carries no ephemeral key.",
        with(&|x| x.eph = Some(None)),
    );
    c.add(kind, "recipient_ciphertext_nonempty", call, "InvalidField(\"recipient ciphertext\")",
        "Direct key agreement carries an empty recipient ciphertext (RFC 9052 §5.1); this one has 16 bytes.",
        with(&|x| x.rcpt_ct = vec![0; 16]));
    c.add(
        kind,
        "plaintext_wrong_type_code",
        call,
        "WrongObjectType { expected: 6, found: 1 }",
        "The decrypted map carries the receipt type code.",
        plain(&set(&e, 0, C::I(1))),
    );
    c.add(
        kind,
        "plaintext_type_code_missing",
        call,
        "MissingField(\"type code\")",
        "The decrypted map has no type code.",
        plain(&without(&e, 0)),
    );
    let claims_more = set(
        &e,
        4,
        C::ArrayClaiming(4, raw.iter().map(|r| b(r)).collect()),
    );
    c.add(kind, "header_claims_more_entries", call, "BadCbor",
        "The record array claims four entries, three are carried: the chain-head key is read where a record should be.",
        plain(&claims_more));
    c.add(
        kind,
        "entries_over_limit",
        call,
        "TooLarge { what: \"export entries\", max: 64 }",
        "The record array claims 65 entries, over Limits::max_export_entries.",
        plain(&set(
            &e,
            4,
            C::ArrayClaiming(65, raw.iter().map(|r| b(r)).collect()),
        )),
    );
    c.add(
        kind,
        "record_287_bytes",
        call,
        "InvalidField(\"log record\")",
        "One record is 287 bytes, not a slot.",
        plain(&set(
            &e,
            4,
            C::A(vec![b(&raw[0]), b(&raw[1]), b(&raw[2][..287])]),
        )),
    );
    c.add(
        kind,
        "plaintext_unknown_field",
        call,
        "UnknownField { object: \"log export\", key: 8 }",
        "The decrypted map has a member 8.",
        plain(&plus(&e, 8, C::I(0))),
    );
    let pin = |left: C, max: C| plain(&plus(&e, 7, C::A(vec![left, max])));
    c.add(
        kind,
        "pin_tries_above_max",
        call,
        "InvalidField(\"PIN tries left above the maximum\")",
        "The PIN counter states 4 tries left of at most 3.",
        pin(C::I(4), C::I(3)),
    );
    c.add(
        kind,
        "pin_max_zero",
        call,
        "InvalidField(\"PIN maximum tries\")",
        "The PIN counter states a maximum of 0 tries (a card that knows no maximum sends null).",
        pin(C::I(0), C::I(0)),
    );
    c.add(
        kind,
        "pin_tries_over_a_byte",
        call,
        "InvalidField(\"PIN tries left\")",
        "The PIN counter states 256 tries left: the card's counter is one byte.",
        pin(C::I(256), C::Null),
    );
    c.add(
        kind,
        "pin_tries_not_a_pair",
        call,
        "BadCbor",
        "Member 7 is the bare number 2, not the pair [tries left, maximum].",
        plain(&plus(&e, 7, C::I(2))),
    );
    c.add(
        kind,
        "plaintext_duplicate_key",
        call,
        "DuplicateKey",
        "log-end given twice.",
        plain(&plus(&e, 6, C::I(99))),
    );
    c.add(
        kind,
        "plaintext_trailing_byte",
        call,
        "TrailingBytes",
        "A byte after the decrypted map.",
        with(&|x| {
            let mut p = enc(&map(&e));
            p.push(0);
            x.plain = p;
        }),
    );
    let mut v = valid.clone();
    v.push(0);
    c.add(
        kind,
        "trailing_byte",
        call,
        "TrailingBytes",
        "A byte after the COSE_Sign1.",
        v,
    );
    c.add(
        kind,
        "truncated",
        call,
        "BadCbor",
        "The last byte cut off.",
        valid[..valid.len() - 1].to_vec(),
    );

    // Well-signed, well-encrypted pages whose content contradicts itself: open_export accepts
    // them, ExportContents::entries refuses them.
    let mut broken = raw.clone();
    broken[1] = chain(11, 1, Digest([0x66; 32]))[0].to_vec();
    let h = LogEntry::record_hash(&broken[2].clone().try_into().unwrap());
    c.add(kind, "chain_break", entries, "DigestMismatch(\"log chain\")",
        "The middle record's prev-hash is not the hash of the first: an entry was replaced inside the page.",
        plain(&plaintext(&broken, h, 13)));
    let gap = chain(10, 4, Digest([0x77; 32]));
    let gap: Vec<Vec<u8>> = [&gap[0], &gap[1], &gap[3]]
        .iter()
        .map(|r| r.to_vec())
        .collect();
    c.add(
        kind,
        "sequence_gap",
        entries,
        "InvalidField(\"export sequence numbers\")",
        "Records 10, 11, 13: record 12 was dropped from the page.",
        plain(&plaintext(&gap, LogEntry::record_hash(&recs[2]), 14)),
    );
    c.add(
        kind,
        "chain_head_mismatch",
        entries,
        "DigestMismatch(\"chain head\")",
        "The page reaches log-end but its last record does not hash to the signed chain head.",
        plain(&set(&e, 5, b(&[0x99; 32]))),
    );
}

#[test]
#[ignore = "generator"]
fn generate() {
    let mut c = Corpus {
        entries: Vec::new(),
    };
    signed_kinds(&mut c);
    log_records(&mut c);
    policies(&mut c);
    exports(&mut c);
    c.write();
    eprintln!("wrote {} files", c.entries.len());
}
