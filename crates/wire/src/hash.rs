//! SHA-256 helpers. The `sha2` crate picks the SHA-NI / ARMv8 instructions at run time where
//! the CPU has them, so hosts hash large images at memory speed with this same code.

use sha2::Digest as _;

use crate::ids::Digest;

/// Incremental SHA-256 for payloads that arrive in pieces (streamed downloads, 256 MiB images).
#[derive(Clone, Default)]
pub struct Sha256Stream(sha2::Sha256);

impl Sha256Stream {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// One-shot SHA-256.
pub fn sha256(bytes: &[u8]) -> Digest {
    Digest(sha2::Sha256::digest(bytes).into())
}

/// Hashes everything a reader yields (host side), returning the digest and the byte count.
#[cfg(feature = "std")]
pub fn sha256_reader<R: std::io::Read>(mut r: R) -> std::io::Result<(Digest, u64)> {
    let mut h = Sha256Stream::new();
    let mut buf = std::vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((h.finish(), total))
}
