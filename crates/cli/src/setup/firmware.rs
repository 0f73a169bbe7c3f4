//! Firmware for the demo and the fleet simulator: deterministic pseudo-random images and the
//! originator-signed SUIT packages for them. The demo writes its images and envelopes to
//! `DIR/firmware/` so they can be looked at afterwards
//! (`simfota pack inspect DIR/firmware/fw-2.1.suit --key DIR/oem.pub.pem`); the fleet keeps
//! its one package in memory.
//!
//! Each image starts with a readable header naming its version; the rest is a SplitMix64
//! stream seeded per release, so every run builds the same bytes. Release 2.1 is 2.0 with a
//! few short regions rewritten, so its delta (crate `simfota-delta`) is a few hundred bytes
//! against an image of hundreds of KB. Packages fetch their payload by the relative URI
//! `payload`, which the device resolves against the envelope's URL on the server
//! (`/packages/{id}/payload`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use p256::ecdsa::SigningKey;
use simfota_wire::suit::{self, BuildParams, ImageSource};

use crate::files::{self, Overwrite};

/// SUIT vendor-id of the demo device (a fixed UUID).
pub const VENDOR_ID: [u8; 16] = *b"simfota-vendor-1";
/// SUIT class-id of the demo device model `EX-1` (a fixed UUID).
pub const CLASS_ID: [u8; 16] = *b"simfota-model-01";
/// The release name in every manifest.
pub const RELEASE_NAME: &str = "EX-1 firmware";

/// Size of the demo images: a few hundred KB, quick to move yet large next to a delta.
const IMAGE_LEN: usize = 320 * 1024;

/// A built package, ready to upload: the envelope and the payload the server hosts.
#[derive(Debug)]
pub struct Package {
    /// Release version (SUIT text component-version).
    pub version: String,
    /// Anti-rollback sequence number.
    pub sequence: u64,
    /// The signed envelope.
    pub envelope: Vec<u8>,
    /// The payload: the image, or the delta for a delta package.
    pub payload: Vec<u8>,
    /// Size of the image the device ends up with.
    pub image_len: usize,
    /// Whether the payload is a delta.
    pub delta: bool,
    /// Where the envelope was written.
    pub file: PathBuf,
}

/// SplitMix64: a tiny, well-mixed generator; enough for reproducible filler bytes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The image of release `version`: a header, then filler from `seed`.
pub fn image(version: &str, seed: u64) -> Vec<u8> {
    image_of_len(version, seed, IMAGE_LEN)
}

/// An image of exactly `len` bytes: the header of release `version` (cut short if `len` is
/// smaller), then filler from `seed`.
pub fn image_of_len(version: &str, seed: u64, len: usize) -> Vec<u8> {
    let mut out = format!("SIMFOTA-DEMO-FIRMWARE {version}\n").into_bytes();
    let mut rng = SplitMix(seed);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Release 2.1: `base` (2.0) with a new header and three short regions rewritten, the way a
/// bug-fix release touches a few functions.
pub fn patched(base: &[u8], version: &str) -> Vec<u8> {
    let mut out = base.to_vec();
    let header = format!("SIMFOTA-DEMO-FIRMWARE {version}\n");
    let mut rng = SplitMix(0x21);
    for (at, len) in [
        (0, header.len()),
        (40_000, 96),
        (150_000, 200),
        (300_000, 64),
    ] {
        let at = at.min(out.len());
        let end = (at + len).min(out.len());
        for b in &mut out[at..end] {
            *b = rng.next() as u8;
        }
    }
    let n = header.len().min(out.len());
    out[..n].copy_from_slice(&header.as_bytes()[..n]);
    out
}

fn params<'a>(
    image: &'a [u8],
    version: &'a str,
    sequence: u64,
    precursor: Option<&[u8]>,
) -> BuildParams<'a> {
    BuildParams {
        vendor_id: VENDOR_ID,
        class_id: CLASS_ID,
        sequence,
        image: ImageSource::Bytes(image),
        name: Some(RELEASE_NAME),
        version: Some(version),
        uri: Some("payload"),
        integrate: false,
        precursor_digest: precursor.map(simfota_wire::sha256),
    }
}

/// The signed SUIT envelope of a full package for `image` (payload fetched by the relative
/// URI `payload`).
pub fn full_envelope(
    image: &[u8],
    version: &str,
    sequence: u64,
    key: &SigningKey,
) -> Result<Vec<u8>> {
    suit::build(&params(image, version, sequence, None), key)
        .map_err(|e| anyhow!("cannot build the package for {version}: {e}"))
}

/// Builds a full package for `image` and writes `fw-<file_tag>.bin` and `.suit` in `dir`.
pub fn full(
    dir: &Path,
    file_tag: &str,
    image: &[u8],
    version: &str,
    sequence: u64,
    key: &SigningKey,
) -> Result<Package> {
    let envelope = full_envelope(image, version, sequence, key)?;
    let file = dir.join(format!("fw-{file_tag}.suit"));
    files::write_atomic(
        &dir.join(format!("fw-{file_tag}.bin")),
        image,
        0o644,
        Overwrite::Allow,
    )?;
    files::write_atomic(&file, &envelope, 0o644, Overwrite::Allow)?;
    Ok(Package {
        version: version.to_owned(),
        sequence,
        envelope,
        payload: image.to_vec(),
        image_len: image.len(),
        delta: false,
        file,
    })
}

/// Builds a delta package from `base` to `image` (the delta's own digest and size signed,
/// `suit::build_delta`), and writes `fw-<version>.bin`, `.delta` and `.suit` in `dir`.
pub fn delta(
    dir: &Path,
    base: &[u8],
    image: &[u8],
    version: &str,
    sequence: u64,
    key: &SigningKey,
) -> Result<Package> {
    let delta = simfota_delta::diff(base, image)
        .map_err(|e| anyhow!("cannot compute the delta for {version}: {e}"))?;
    let envelope = suit::build_delta(&params(image, version, sequence, Some(base)), &delta, key)
        .map_err(|e| anyhow!("cannot build the delta package for {version}: {e}"))?;
    let file = dir.join(format!("fw-{version}.suit"));
    files::write_atomic(
        &dir.join(format!("fw-{version}.bin")),
        image,
        0o644,
        Overwrite::Allow,
    )?;
    files::write_atomic(
        &dir.join(format!("fw-{version}.delta")),
        &delta,
        0o644,
        Overwrite::Allow,
    )?;
    files::write_atomic(&file, &envelope, 0o644, Overwrite::Allow)
        .context("cannot write the delta package")?;
    Ok(Package {
        version: version.to_owned(),
        sequence,
        envelope,
        payload: delta,
        image_len: image.len(),
        delta: true,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_reproducible_and_the_patch_is_small() {
        let a = image("2.0", 2);
        assert_eq!(a, image("2.0", 2));
        assert_eq!(a.len(), IMAGE_LEN);
        assert!(a.starts_with(b"SIMFOTA-DEMO-FIRMWARE 2.0\n"));
        assert_ne!(a, image("2.0", 3));
        let b = patched(&a, "2.1");
        assert!(b.starts_with(b"SIMFOTA-DEMO-FIRMWARE 2.1\n"));
        let changed = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(changed > 100 && changed < 500, "{changed}");
        let d = simfota_delta::diff(&a, &b).unwrap();
        assert!(d.len() < IMAGE_LEN / 50, "delta {} bytes", d.len());
        assert_eq!(simfota_delta::apply(&a, &d).unwrap(), b);
    }
}
