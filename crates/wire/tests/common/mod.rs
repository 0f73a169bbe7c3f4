//! Helpers shared by the integration tests: vector files, keys, the Python checkers.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::PathBuf;
use std::process::Command;

use simfota_wire::p256::ecdsa::SigningKey;

/// The third-party vectors copied into this crate (tests/vectors/README.md says from where).
pub fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Reads a hex file (whitespace ignored).
pub fn read_hex(rel: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(vectors().join(rel)).expect("vector file");
    let clean: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    hex::decode(clean).expect("hex")
}

/// A deterministic P-256 key from a label (test keys only).
pub fn key(label: u8) -> SigningKey {
    let mut b = [0u8; 32];
    b[31] = label;
    b[0] = 0x42;
    SigningKey::from_bytes(&b.into()).expect("scalar")
}

/// A deterministic byte stream for ECDH ephemeral keys and IVs in tests.
pub struct TestRng(pub u64);

impl simfota_wire::rand_core::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), simfota_wire::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl simfota_wire::rand_core::CryptoRng for TestRng {}

/// The Python interpreter with pycose/cwt/cbor2, or `None` (after printing why) when the test
/// may be skipped (SIMFOTA_SKIP_EXTERNAL=1); panics when it is missing otherwise.
pub fn python() -> Option<PathBuf> {
    let require = std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1");
    let candidate = std::env::var_os("SIMFOTA_PYTHON").map(PathBuf::from);
    let ok = candidate.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import pycose, cwt, cbor2"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if ok {
        return candidate;
    }
    if require {
        panic!(
            "SIMFOTA_PYTHON with pycose, cwt and cbor2 is required (set SIMFOTA_SKIP_EXTERNAL=1 to skip instead)"
        );
    }
    eprintln!("skipped: SIMFOTA_PYTHON with pycose/cwt/cbor2 missing");
    None
}

/// Runs a checker script from tests/py with arguments; returns stdout, panics on failure.
pub fn run_py(py: &PathBuf, script: &str, args: &[&str]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(py)
        .arg(path)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
