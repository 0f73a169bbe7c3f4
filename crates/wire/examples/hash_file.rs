//! Hashes a file with the crate's incremental SHA-256 and prints the digest and throughput,
//! to compare with `sha256sum` on the same file (docs/performance.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: hash_file FILE");
    let start = Instant::now();
    let (digest, n) = simfota_wire::sha256_reader(std::fs::File::open(&path)?)?;
    let secs = start.elapsed().as_secs_f64();
    println!("{digest}  {path}");
    eprintln!(
        "{n} bytes in {secs:.3} s = {:.0} MiB/s",
        n as f64 / secs / 1048576.0
    );
    Ok(())
}
