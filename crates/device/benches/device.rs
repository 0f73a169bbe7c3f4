//! Throughput of the device's local paths: a resumable download over loopback (HTTP server in
//! this process), and an A/B slot install (temp file, fsync, digest check, rename, record).
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use simfota_device::download::{Downloader, FetchSpec};
use simfota_device::progress::Progress;
use simfota_device::slots::{ImageSource, SlotStore};

const SIZE: usize = 16 * 1024 * 1024;

fn download(c: &mut Criterion) {
    let srv = common::TestServer::start();
    let body = common::content(SIZE, 1);
    srv.put("/p", &body, Some("\"b\""));
    let url = srv.url("/p");
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("device");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.bench_function("download 16 MiB over loopback (hash + fsync)", |b| {
        b.iter(|| {
            let d = Downloader::new(dir.path());
            d.discard("p").unwrap();
            let spec = FetchSpec {
                url: &url,
                name: "p",
                max_len: 1 << 30,
                expected_len: None,
                expected_sha256: None,
            };
            d.fetch(&spec, &Progress::hidden()).unwrap()
        })
    });
    let image = dir.path().join("image");
    std::fs::write(&image, &body).unwrap();
    let sha: [u8; 32] = Sha256::digest(&body).into();
    let slots = dir.path().join("slots");
    SlotStore::init(&slots, &image, "1.0").unwrap();
    g.bench_function("install 16 MiB into the inactive slot", |b| {
        b.iter(|| {
            let mut s = SlotStore::open(&slots).unwrap();
            s.install(ImageSource::Full(&image), "2.0", SIZE as u64, &sha)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, download);
criterion_main!(benches);
