//! `simfota pack`: signed SUIT update packages (draft-ietf-suit-manifest, RFC 9124 model).
//!
//! `build` describes an image in a manifest and signs it with the software originator's key
//! (COSE_Sign1 ES256 over the SUIT digest of the manifest, draft §8.3); `inspect` verifies a
//! package and shows what it says; `apply` rebuilds the image a delta package describes and
//! checks it against the signed digest. The encoding and the checks are `simfota-wire`'s;
//! this module adds files, deltas and presentation.
//!
//! Delta packages. The manifest states the digest and size of the *full new image* (what the
//! device ends up running and what the card compares), the digest of the image the delta
//! applies to (`PARAM_PRECURSOR_DIGEST`, -257) and the digest and size of the delta itself
//! (`PARAM_PAYLOAD_DIGEST` / `PARAM_PAYLOAD_SIZE`, -258 / -259): `suit::build_delta` signs all
//! of them. The payload is a `simfota-delta` container, carried inside the envelope as the
//! member `"#delta"` (draft §7.5 integrated payloads), or in a separate file the operator
//! hosts at the manifest's URI. Every delta is checked against its signed digest and size
//! before it is parsed (`Envelope::verify` does it for the integrated one, `apply` for a
//! `--payload` file); its container header must then name the signed precursor and image, and
//! `apply` checks the rebuilt image against the signed image digest before writing it.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use p256::ecdsa::{SigningKey, VerifyingKey};
use simfota_wire::suit::{self, BuildParams, Envelope, ImageSource, Manifest};
use simfota_wire::{Digest, Limits, PublicKey, Sha256Stream, Verified};

use crate::files::{self, Overwrite};
use crate::keys;

/// Read size for hashing payload files: small enough that the buffer the kernel copies into is
/// still in the CPU's L2 cache when SHA-256 reads it, large enough to keep system calls rare
/// (see docs/performance.md, "Package hashing").
const HASH_READ_LEN: usize = 256 << 10;

/// Arguments of `simfota pack`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: PackCommand,
}

#[derive(Debug, Subcommand)]
enum PackCommand {
    /// Build and sign a package (full, or a delta with --base).
    Build(BuildArgs),
    /// Verify a package and print what it says.
    Inspect(InspectArgs),
    /// Rebuild the image of a package and check it against the signed digest.
    Apply(ApplyArgs),
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The new firmware image.
    #[arg(long, value_name = "FW.bin")]
    image: PathBuf,
    /// The software originator's private key (PKCS#8 PEM).
    #[arg(long, value_name = "ORIGINATOR.pem")]
    key: PathBuf,
    /// Vendor id (UUID), checked by the device (SUIT condition-vendor-identifier).
    #[arg(long, value_name = "UUID")]
    vendor_id: uuid::Uuid,
    /// Class id (UUID): the device model (SUIT condition-class-identifier).
    #[arg(long, value_name = "UUID")]
    class_id: uuid::Uuid,
    /// Release version, e.g. 2.0.0 (SUIT text component-version).
    #[arg(long)]
    version: String,
    /// Anti-rollback sequence number (SUIT manifest-sequence-number).
    #[arg(long, value_name = "N")]
    sequence: u64,
    /// Build a delta against this image (the one devices run now).
    #[arg(long, value_name = "OLD.bin")]
    base: Option<PathBuf>,
    /// Payload URI; without it the payload is carried inside the envelope.
    #[arg(long, value_name = "URL")]
    uri: Option<String>,
    /// Release name (SUIT text manifest-description).
    #[arg(long, value_name = "TEXT")]
    name: Option<String>,
    /// With --base and --uri: where to write the delta payload to host at URL
    /// (default: OUT with ".delta" appended).
    #[arg(long, value_name = "PATH")]
    payload_out: Option<PathBuf>,
    /// Where to write the package.
    #[arg(long, value_name = "PKG.suit")]
    out: PathBuf,
    /// Replace the package (and the delta payload) if they exist.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The package.
    #[arg(value_name = "PKG.suit")]
    package: PathBuf,
    /// The software originator's public key (SPKI PEM; a private key file works too).
    #[arg(long, value_name = "PUB.pem")]
    key: PathBuf,
    /// Print the fields as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ApplyArgs {
    /// The package.
    #[arg(value_name = "PKG.suit")]
    package: PathBuf,
    /// The image the delta applies to (required for delta packages).
    #[arg(long, value_name = "OLD.bin")]
    base: Option<PathBuf>,
    /// Where to write the rebuilt image (written atomically).
    #[arg(long, value_name = "NEW.bin")]
    out: PathBuf,
    /// The software originator's public key: the package is verified before anything is
    /// rebuilt.
    #[arg(long, value_name = "PUB.pem", env = "SIMFOTA_ORIGINATOR_KEY")]
    key: Option<PathBuf>,
    /// The payload file, for packages that fetch it by URI.
    #[arg(long, value_name = "PATH")]
    payload: Option<PathBuf>,
    /// Replace the output image if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs `simfota pack ...`.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        PackCommand::Build(a) => build_cmd(a),
        PackCommand::Inspect(a) => inspect_cmd(a),
        PackCommand::Apply(a) => apply_cmd(a),
    }
    .map(|()| ExitCode::SUCCESS)
}

/// Streams a file through SHA-256; returns its digest and size.
pub fn hash_file(path: &Path, read_len: usize) -> Result<(Digest, u64)> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256Stream::new();
    let mut buf = vec![0u8; read_len];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finish(), size))
}

fn signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from(&keys::load_private(path)?))
}

fn public_key(path: &Path) -> Result<PublicKey> {
    let key = keys::load_public(path)?;
    Ok(PublicKey::from(VerifyingKey::from(key)))
}

fn params<'a>(
    a: &'a BuildArgs,
    image: ImageSource<'a>,
    integrate: bool,
    precursor: Option<Digest>,
) -> BuildParams<'a> {
    BuildParams {
        vendor_id: *a.vendor_id.as_bytes(),
        class_id: *a.class_id.as_bytes(),
        sequence: a.sequence,
        image,
        name: a.name.as_deref(),
        version: Some(a.version.as_str()),
        uri: if integrate { None } else { a.uri.as_deref() },
        integrate,
        precursor_digest: precursor,
    }
}

/// `--force` as the writes take it; without it an existing output is refused before any work
/// starts (and again at the rename, should the file appear meanwhile).
fn overwrite(force: bool, outputs: &[&Path]) -> Result<Overwrite> {
    if force {
        return Ok(Overwrite::Allow);
    }
    if let Some(existing) = outputs.iter().find(|p| p.exists()) {
        bail!(
            "{} already exists (use --force to replace it)",
            existing.display()
        );
    }
    Ok(Overwrite::Refuse)
}

/// Where a delta payload hosted by URI is written: `--payload-out`, or OUT with ".delta".
fn payload_out(a: &BuildArgs) -> PathBuf {
    a.payload_out.clone().unwrap_or_else(|| {
        let mut p = a.out.clone().into_os_string();
        p.push(".delta");
        PathBuf::from(p)
    })
}

fn build_cmd(a: BuildArgs) -> Result<()> {
    let payload_out = (a.base.is_some() && a.uri.is_some()).then(|| payload_out(&a));
    let mut outputs = vec![a.out.as_path()];
    outputs.extend(payload_out.as_deref());
    let write = overwrite(a.force, &outputs)?;
    let key = signing_key(&a.key)?;
    let built = |p: &BuildParams<'_>| {
        suit::build(p, &key).map_err(|e| anyhow!("cannot build the package: {e}"))
    };
    if a.base.is_none()
        && let Some(uri) = &a.uri
    {
        // Full package by URI: the image is only hashed, streamed, never held in memory.
        let (digest, size) = hash_file(&a.image, HASH_READ_LEN)?;
        let envelope = built(&params(
            &a,
            ImageSource::Digest { digest, size },
            false,
            None,
        ))?;
        files::write_atomic(&a.out, &envelope, 0o644, write)?;
        outln!(
            "wrote {} ({} bytes): full package, sequence {}, image {size} bytes sha256 {digest}, payload by URI {uri}",
            a.out.display(),
            envelope.len(),
            a.sequence,
        );
        return Ok(());
    }
    let image = files::read(&a.image, "image")?;

    let Some(base_path) = &a.base else {
        // Full package: the payload is the image, integrated unless a URI is given.
        let envelope = built(&params(
            &a,
            ImageSource::Bytes(&image),
            a.uri.is_none(),
            None,
        ))?;
        files::write_atomic(&a.out, &envelope, 0o644, write)?;
        outln!(
            "wrote {} ({} bytes): full package, sequence {}, image {} bytes sha256 {}",
            a.out.display(),
            envelope.len(),
            a.sequence,
            image.len(),
            simfota_wire::sha256(&image)
        );
        return Ok(());
    };

    let base = files::read(base_path, "base image")?;
    let delta = simfota_delta::diff(&base, &image).map_err(|e| {
        anyhow!(
            "cannot compute the delta against {}: {e}",
            base_path.display()
        )
    })?;
    let target = ImageSource::Digest {
        digest: simfota_wire::sha256(&image),
        size: image.len() as u64,
    };
    let precursor = Some(simfota_wire::sha256(&base));
    // The delta's own digest and size are signed too (SUIT parameters -258 / -259): a device
    // checks the delta against them before it parses a byte of it.
    let envelope = suit::build_delta(
        &params(&a, target, a.uri.is_none(), precursor),
        &delta,
        &key,
    )
    .map_err(|e| anyhow!("cannot build the package: {e}"))?;
    let summary = format!(
        "delta package, sequence {}, image {} bytes, delta {} bytes ({:.1}%) sha256 {}",
        a.sequence,
        image.len(),
        delta.len(),
        100.0 * delta.len() as f64 / (image.len().max(1)) as f64,
        simfota_wire::sha256(&delta)
    );
    match &a.uri {
        None => {
            files::write_atomic(&a.out, &envelope, 0o644, write)?;
            outln!(
                "wrote {} ({} bytes): {summary}",
                a.out.display(),
                envelope.len()
            );
        }
        Some(_) => {
            let payload_out = payload_out.unwrap_or_else(|| self::payload_out(&a));
            files::write_atomic(&payload_out, &delta, 0o644, write)?;
            files::write_atomic(&a.out, &envelope, 0o644, write)?;
            outln!(
                "wrote {} ({} bytes) and payload {}: {summary}",
                a.out.display(),
                envelope.len(),
                payload_out.display()
            );
        }
    }
    Ok(())
}

/// A verified package and where its payload is.
struct Package<'a> {
    manifest: Verified<Manifest<'a>>,
    payload: Payload<'a>,
}

enum Payload<'a> {
    /// Full image inside the envelope (wire checked it against the signed digest and size).
    Integrated(&'a [u8]),
    /// Delta inside the envelope: wire checked it against the signed delta digest and size,
    /// and its header against the manifest.
    IntegratedDelta(&'a [u8], simfota_delta::Header),
    /// Fetched by URI (or not named at all, as in some official examples).
    External,
}

/// The signed facts of a delta package: the transported delta's digest and size.
struct SignedDelta {
    digest: Digest,
    size: u64,
}

/// A delta package must sign its delta (-258 / -259) as well as its precursor (-257); a
/// package signing one without the other is refused rather than half-checked.
fn signed_delta(m: &Manifest<'_>) -> Result<Option<SignedDelta>> {
    match (m.precursor_digest, m.payload_digest, m.payload_size) {
        (None, None, None) => Ok(None),
        (Some(_), Some(digest), Some(size)) => Ok(Some(SignedDelta { digest, size })),
        (Some(_), _, _) => bail!(
            "delta package without a signed delta digest and size (SUIT parameters -258/-259; \
             older simfota builds left the delta unsigned): rebuild it with `simfota pack build --base`"
        ),
        (None, _, _) => {
            bail!("the manifest signs a delta digest but names no precursor image")
        }
    }
}

fn open<'a>(path: &Path, bytes: &'a [u8], key: &PublicKey) -> Result<Package<'a>> {
    let envelope = Envelope::decode(bytes, &Limits::DEFAULT)
        .map_err(|e| anyhow!("{}: not a valid SUIT envelope: {e}", path.display()))?;
    let manifest = envelope
        .verify(key)
        .map_err(|e| anyhow!("{}: verification failed: {e}", path.display()))?;
    let delta = signed_delta(&manifest).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let payload = match (manifest.payload, delta) {
        (Some(p), None) => Payload::Integrated(p),
        (Some(d), Some(_)) => {
            let header = check_delta_header(&manifest, d)
                .map_err(|e| anyhow!("{}: delta payload refused: {e}", path.display()))?;
            Payload::IntegratedDelta(d, header)
        }
        (None, _) => Payload::External,
    };
    Ok(Package { manifest, payload })
}

/// The delta's own header must describe exactly the signed transition: from the precursor
/// image to the image whose digest and size the manifest states.
fn check_delta_header(m: &Manifest<'_>, delta: &[u8]) -> Result<simfota_delta::Header> {
    let (header, _) = simfota_delta::Header::parse(delta)?;
    let precursor = m
        .precursor_digest
        .context("the package carries a delta but its manifest names no precursor image")?;
    let image = m
        .image_digest
        .context("the manifest states no image digest")?;
    if header.source_digest != Some(precursor.0) {
        bail!("its source digest is not the signed precursor digest");
    }
    if header.target_digest != Some(image.0) {
        bail!("its target digest is not the signed image digest");
    }
    if Some(header.target_size) != m.image_size {
        bail!("its target size is not the signed image size");
    }
    Ok(header)
}

fn uuid_text(u: &Option<[u8; 16]>) -> Option<String> {
    u.map(|b| uuid::Uuid::from_bytes(b).to_string())
}

fn inspect_cmd(a: InspectArgs) -> Result<()> {
    let key = public_key(&a.key)?;
    let bytes = files::read(&a.package, "package")?;
    let pkg = open(&a.package, &bytes, &key)?;
    let m = &pkg.manifest;
    let kind = if m.precursor_digest.is_some() {
        "delta"
    } else {
        "full"
    };
    let (payload_kind, payload_len, header) = match &pkg.payload {
        Payload::Integrated(p) => ("integrated", Some(p.len()), None),
        Payload::IntegratedDelta(d, h) => ("integrated", Some(d.len()), Some(h)),
        Payload::External => (if m.uri.is_some() { "uri" } else { "none" }, None, None),
    };
    if a.json {
        // `open` refused a delta package without a signed delta digest and size.
        let delta = m.payload_digest.map(|digest| {
            serde_json::json!({
                "sha256": digest.to_string(),
                "size": m.payload_size,
                "source_size": header.map(|h| h.source_size),
                "target_size": header.map(|h| h.target_size),
                "matches_manifest": header.is_some(),
            })
        });
        let out = serde_json::json!({
            "file": a.package.display().to_string(),
            "size": bytes.len(),
            "signature": "valid",
            "kind": kind,
            "sequence": m.sequence,
            "vendor_id": uuid_text(&m.vendor_id),
            "class_id": uuid_text(&m.class_id),
            "name": m.name,
            "version": m.version,
            "image_digest": m.image_digest.map(|d| d.to_string()),
            "image_size": m.image_size,
            "precursor_digest": m.precursor_digest.map(|d| d.to_string()),
            "uri": m.uri,
            "reference_uri": m.reference_uri,
            "payload": { "kind": payload_kind, "size": payload_len },
            "delta": delta,
            "manifest_digest": m.manifest_digest().to_string(),
            "components": m.components,
        });
        outln!("{out}");
        return Ok(());
    }
    let mut t = String::new();
    let none = || "-".to_string();
    let _ = writeln!(
        t,
        "package           {} ({} bytes)",
        a.package.display(),
        bytes.len()
    );
    let _ = writeln!(
        t,
        "signature         valid (originator key {})",
        a.key.display()
    );
    let _ = writeln!(t, "kind              {kind}");
    let _ = writeln!(t, "sequence          {}", m.sequence);
    let _ = writeln!(
        t,
        "vendor-id         {}",
        uuid_text(&m.vendor_id).unwrap_or_else(none)
    );
    let _ = writeln!(
        t,
        "class-id          {}",
        uuid_text(&m.class_id).unwrap_or_else(none)
    );
    // Texts come from the package: control characters are shown escaped.
    let text = |s: Option<&str>| s.map_or_else(none, |s| s.escape_debug().to_string());
    let _ = writeln!(t, "name              {}", text(m.name));
    let _ = writeln!(t, "version           {}", text(m.version));
    let _ = writeln!(
        t,
        "image             sha256 {}, {} bytes",
        m.image_digest.map_or_else(none, |d| d.to_string()),
        m.image_size.map_or_else(none, |s| s.to_string())
    );
    if let Some(p) = m.precursor_digest {
        let _ = writeln!(t, "precursor         sha256 {p}");
    }
    match (&pkg.payload, m.uri) {
        (Payload::Integrated(p), _) => {
            let _ = writeln!(
                t,
                "payload           integrated, {} bytes, digest and size checked",
                p.len()
            );
        }
        (Payload::IntegratedDelta(d, h), _) => {
            let _ = writeln!(
                t,
                "payload           integrated delta, {} bytes, sha256 {} as signed ({} -> {} bytes, header matches the manifest)",
                d.len(),
                simfota_wire::sha256(d),
                h.source_size,
                h.target_size
            );
        }
        (Payload::External, Some(uri)) => match (m.payload_digest, m.payload_size) {
            (Some(d), Some(size)) => {
                let _ = writeln!(
                    t,
                    "payload           delta by URI {}, signed: {size} bytes, sha256 {d}",
                    uri.escape_debug()
                );
            }
            _ => {
                let _ = writeln!(t, "payload           by URI {}", uri.escape_debug());
            }
        },
        (Payload::External, None) => {
            let _ = writeln!(t, "payload           not named by the manifest");
        }
    }
    if let Some(r) = m.reference_uri {
        let _ = writeln!(t, "reference-uri     {}", r.escape_debug());
    }
    let _ = writeln!(t, "manifest          sha256 {}", m.manifest_digest());
    out!("{t}");
    Ok(())
}

fn apply_cmd(a: ApplyArgs) -> Result<()> {
    let write = overwrite(a.force, &[a.out.as_path()])?;
    let key_path = a.key.as_ref().context(
        "the originator's public key is needed to verify the package first: give --key PUB.pem (or set SIMFOTA_ORIGINATOR_KEY)",
    )?;
    let key = public_key(key_path)?;
    let bytes = files::read(&a.package, "package")?;
    let pkg = open(&a.package, &bytes, &key)?;
    let m = &pkg.manifest;
    let image_digest = m.image_digest.with_context(|| {
        format!(
            "{}: the manifest states no image digest",
            a.package.display()
        )
    })?;
    let external;
    let payload: &[u8] = match &pkg.payload {
        Payload::Integrated(p) => p,
        Payload::IntegratedDelta(d, _) => d,
        Payload::External => {
            let path = a.payload.as_ref().with_context(|| {
                format!(
                    "{}: the payload is fetched by URI ({}); give the downloaded file with --payload",
                    a.package.display(),
                    m.uri.unwrap_or("none named")
                )
            })?;
            external = files::read(path, "payload")?;
            if let Some(delta) = signed_delta(m)? {
                // The delta is checked against its signed digest and size before it is parsed.
                let actual = simfota_wire::sha256(&external);
                if external.len() as u64 != delta.size || actual != delta.digest {
                    bail!(
                        "{} is not the signed delta ({} bytes, sha256 {actual}; the package signs {} bytes, sha256 {}); nothing written",
                        path.display(),
                        external.len(),
                        delta.size,
                        delta.digest
                    );
                }
                check_delta_header(m, &external)
                    .map_err(|e| anyhow!("{}: delta payload refused: {e}", path.display()))?;
            }
            &external
        }
    };

    let image = match m.precursor_digest {
        None => {
            if a.base.is_some() {
                errln!(
                    "simfota: note: {} is a full package; --base is not used",
                    a.package.display()
                );
            }
            payload.to_vec()
        }
        Some(precursor) => {
            let base_path = a.base.as_ref().with_context(|| {
                format!(
                    "{} is a delta package: give the current image with --base",
                    a.package.display()
                )
            })?;
            let base = files::read(base_path, "base image")?;
            if simfota_wire::sha256(&base) != precursor {
                bail!(
                    "{} is not the image this delta applies to (its sha256 differs from the signed precursor digest {precursor})",
                    base_path.display()
                );
            }
            // The signed size bounds what the patcher may allocate.
            let limits = simfota_delta::Limits {
                max_source: base.len() as u64,
                max_target: m
                    .image_size
                    .unwrap_or(simfota_delta::Limits::default().max_target),
            };
            simfota_delta::apply_with(&base, payload, &limits)
                .map_err(|e| anyhow!("cannot rebuild the image from the delta: {e}"))?
        }
    };
    // The check that matters: the rebuilt image is the one the originator signed.
    if simfota_wire::sha256(&image) != image_digest {
        bail!(
            "the rebuilt image does not match the signed image digest {image_digest}; nothing written"
        );
    }
    if m.image_size.is_some_and(|s| s != image.len() as u64) {
        bail!("the rebuilt image is not the signed size; nothing written");
    }
    files::write_atomic(&a.out, &image, 0o644, write)?;
    outln!(
        "wrote {} ({} bytes, sha256 {image_digest} as signed)",
        a.out.display(),
        image.len()
    );
    Ok(())
}

/// Manifest fields the benchmark signs.
pub struct BuildFields {
    vendor_id: uuid::Uuid,
    class_id: uuid::Uuid,
}

impl BuildFields {
    /// Fixed fields for benchmarks.
    pub fn bench_defaults() -> Self {
        BuildFields {
            vendor_id: uuid::Uuid::from_u128(0x5369_6d46_4f54_4100_8000_0000_0000_0001),
            class_id: uuid::Uuid::from_u128(0x5369_6d46_4f54_4100_8000_0000_0000_0002),
        }
    }
}

/// What `pack build --uri` does for a large image: stream-hash the file, build, sign.
pub fn build_for_bench(image: &Path, key: &p256::SecretKey, f: &BuildFields) -> Result<Vec<u8>> {
    let (digest, size) = hash_file(image, HASH_READ_LEN)?;
    let params = BuildParams {
        vendor_id: *f.vendor_id.as_bytes(),
        class_id: *f.class_id.as_bytes(),
        sequence: 1,
        image: ImageSource::Digest { digest, size },
        name: Some("bench"),
        version: Some("1.0.0"),
        uri: Some("https://updates.example/bench.bin"),
        integrate: false,
        precursor_digest: None,
    };
    suit::build(&params, &SigningKey::from(key)).map_err(|e| anyhow!("cannot build: {e}"))
}

/// What a device does with a package and its downloaded payload: verify the signature, then
/// stream-hash the payload and compare digest and size with the signed ones.
pub fn verify_for_bench(envelope: &[u8], key: &p256::PublicKey, image: &Path) -> Result<()> {
    let key = PublicKey::from(VerifyingKey::from(*key));
    let env = Envelope::decode(envelope, &Limits::DEFAULT).map_err(|e| anyhow!("decode: {e}"))?;
    let m = env.verify(&key).map_err(|e| anyhow!("verify: {e}"))?;
    let (digest, size) = hash_file(image, HASH_READ_LEN)?;
    if Some(digest) != m.image_digest || Some(size) != m.image_size {
        bail!("payload does not match the signed digest");
    }
    Ok(())
}
