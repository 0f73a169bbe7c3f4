//! The card's crypto platform operations on each back-end: the software one (`RngPlatform`,
//! RustCrypto `p256` + `sha2`) and the host one (`HostPlatform`, ring). One ES256
//! verification and signature over a token-sized message, one ephemeral ECDH (the log
//! export's), and SHA-256 of one I/O buffer of payload.
//!
//! Run: `cargo bench -p simfota-card --bench platform` (the figures in docs/card.md, "Crypto
//! platform", come from it).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand_core::OsRng;
use simfota_card::Platform;
use simfota_cardlink::{Crypto, LocalPlatform};

fn platform_ops(c: &mut Criterion) {
    let message: [&[u8]; 3] = [
        b"\x84\x6aSignature1",
        &[0x43, 0xa1, 0x01, 0x26],
        &[0x5a; 300],
    ];
    let payload = [0xa5u8; 1536];
    let mut g = c.benchmark_group("card platform");
    for crypto in Crypto::ALL {
        let mut p = LocalPlatform::new(crypto, OsRng);
        let key = p.generate_key_pair().unwrap();
        let peer = p.generate_key_pair().unwrap().public;
        let sig = p.ecdsa_sign(&key, &message).unwrap();
        assert!(p.ecdsa_verify(&key.public, &message, &sig));
        let name = crypto.name();
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("ecdsa verify", name), |b| {
            b.iter(|| assert!(p.ecdsa_verify(&key.public, &message, &sig)))
        });
        g.bench_function(BenchmarkId::new("ecdsa sign", name), |b| {
            b.iter(|| p.ecdsa_sign(&key, &message).unwrap())
        });
        g.bench_function(BenchmarkId::new("ecdh ephemeral", name), |b| {
            b.iter(|| p.ecdh_ephemeral(&peer).unwrap())
        });
        g.throughput(Throughput::Bytes(payload.len() as u64));
        g.bench_function(BenchmarkId::new("sha256 1536 bytes", name), |b| {
            b.iter(|| p.sha256(&[&payload]))
        });
    }
    g.finish();
}

criterion_group!(benches, platform_ops);
criterion_main!(benches);
