//! Benchmarks of the signed objects: verify time of each official SUIT example, token sign and
//! verify, export build and open, and SHA-256 throughput of the incremental payload hasher.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::suit::Envelope;
use simfota_wire::*;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn key(label: u8) -> SigningKey {
    let mut b = [0u8; 32];
    b[0] = 0x42;
    b[31] = label;
    SigningKey::from_bytes(&b.into()).unwrap()
}

struct Rng(u64);
impl rand_core::RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        for c in d.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> std::result::Result<(), rand_core::Error> {
        self.fill_bytes(d);
        Ok(())
    }
}
impl rand_core::CryptoRng for Rng {}

fn suit_examples(c: &mut Criterion) {
    let pem = std::fs::read_to_string(vectors().join("suit/manifest-spec/pubkey.pem")).unwrap();
    let key = pem::public_key_from_pem(&pem).unwrap();
    let mut g = c.benchmark_group("suit_verify");
    for i in 0..6 {
        let text = std::fs::read_to_string(
            vectors().join(format!("suit/manifest-spec/example{i}.signed.hex")),
        )
        .unwrap();
        let clean: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let bytes = hex::decode(clean).unwrap();
        g.bench_function(format!("example{i}"), |b| {
            b.iter(|| {
                let e = Envelope::decode(black_box(&bytes), &Limits::DEFAULT).unwrap();
                // Examples 3 and 5 are refused after their signature verifies (A/B slots, two
                // images): the same work, measured up to the refusal.
                black_box(e.verify_as_signer(&key).map(|m| m.sequence).ok())
            })
        });
    }
    g.finish();
}

fn token(c: &mut Criterion) {
    let k = key(1);
    let pk = PublicKey::from(&k);
    let t = DeliveryToken {
        iss: ServerId::new("dm.operator.example").unwrap(),
        iat: 1_790_000_000,
        exp: 1_790_000_600,
        cti: UpdateId::new(b"upd-0001").unwrap(),
        nonce: Nonce([7; 16]),
        iccid: Iccid::parse("89014103211118510720").unwrap(),
        imei: Imei::parse("490154203237518").unwrap(),
        manifest_digest: Digest([0xab; 32]),
        nbf: None,
        charging_ref: None,
    };
    let mut buf = [0u8; 512];
    let n = t.sign(&k, &mut buf).unwrap();
    let tok = buf[..n].to_vec();
    c.bench_function("token_sign", |b| {
        b.iter(|| black_box(t.sign(&k, &mut buf).unwrap()))
    });
    c.bench_function("token_verify", |b| {
        b.iter(|| {
            black_box(
                DeliveryToken::verify(black_box(&tok), &pk, &Limits::CARD)
                    .unwrap()
                    .iat,
            )
        })
    });
}

fn export(c: &mut Criterion) {
    let card = key(2);
    let server = key(3);
    let server_pub = PublicKey::from(&server);
    let secret = p256::SecretKey::from(server.as_nonzero_scalar());
    let mut recs = Vec::new();
    let mut prev = Digest::default();
    for s in 0..8u32 {
        let mut e = LogEntry::new(s, prev, Event::Installed(FumoResult::SUCCESSFUL));
        e.server = Some(ServerId::new("dm.operator.example").unwrap());
        e.manifest_digest = Some(Digest([5; 32]));
        let r = e.encode().unwrap();
        prev = sha256(&r);
        recs.push(r);
    }
    let header = ExportHeader {
        iccid: Iccid::parse("89014103211118510720").unwrap(),
        nonce: Nonce([1; 16]),
        first_seq: 0,
        count: 8,
        chain_head: prev,
        log_end: 8,
        pin: Some(PinTries::new(3, Some(3)).unwrap()),
    };
    let mut out = vec![0u8; 4096];
    let mut rng = Rng(1);
    let build = |out: &mut [u8], rng: &mut Rng| {
        build_export(out, &header, &server_pub, b"s1", &card, rng, |s, slot| {
            *slot = recs[s as usize];
            true
        })
        .unwrap()
    };
    let n = build(&mut out, &mut rng);
    let bytes = out[..n].to_vec();
    c.bench_function("export_build_8_entries", |b| {
        b.iter(|| black_box(build(&mut out, &mut rng)))
    });
    c.bench_function("export_open_8_entries", |b| {
        b.iter(|| {
            black_box(
                open_export(&bytes, &PublicKey::from(&card), &secret, &Limits::DEFAULT)
                    .unwrap()
                    .log_end,
            )
        })
    });
}

fn hashing(c: &mut Criterion) {
    let data = vec![0x5au8; 16 << 20];
    let mut g = c.benchmark_group("sha256_stream");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    g.bench_function("16MiB_in_1MiB_chunks", |b| {
        b.iter(|| {
            let mut h = Sha256Stream::new();
            for chunk in data.chunks(1 << 20) {
                h.update(chunk);
            }
            black_box(h.finish())
        })
    });
    g.finish();
}

criterion_group!(benches, suit_examples, token, export, hashing);
criterion_main!(benches);
