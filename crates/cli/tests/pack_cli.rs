//! `simfota pack` through the real binary: build, inspect (text and JSON) and apply of full
//! and delta packages, every refusal class of inspect, the official SUIT examples, and bad
//! command lines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const VENDOR: &str = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe";
const CLASS: &str = "1492af14-2569-5e48-bf42-9b2d51f2ab45";

fn simfota(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(args)
        .current_dir(dir)
        .env_remove("SIMFOTA_ORIGINATOR_KEY")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A refusal is a non-zero exit and exactly one line on stderr.
fn assert_refused(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "stderr not one line: {err:?}");
    assert!(lines[0].starts_with("simfota: "), "{err:?}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{err:?} lacks {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err:?}");
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A temporary directory with an originator key pair, an old and a new image.
struct Setup {
    dir: tempfile::TempDir,
    old: Vec<u8>,
    new: Vec<u8>,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        ok(simfota(&["keys", "gen", "--out", "orig.pem"], dir.path()));
        let public = ok(simfota(&["keys", "pub", "orig.pem"], dir.path()));
        std::fs::write(dir.path().join("orig.pub.pem"), public).unwrap();
        let old = noise(200_000, 1);
        let mut new = old.clone();
        new[50_000..54_096].copy_from_slice(&noise(4096, 2));
        new.splice(120_000..120_000, noise(3000, 3));
        std::fs::write(dir.path().join("old.bin"), &old).unwrap();
        std::fs::write(dir.path().join("new.bin"), &new).unwrap();
        Setup { dir, old, new }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        simfota(args, self.dir.path())
    }

    fn build(&self, out: &str, extra: &[&str]) {
        let mut args = vec![
            "pack",
            "build",
            "--image",
            "new.bin",
            "--key",
            "orig.pem",
            "--vendor-id",
            VENDOR,
            "--class-id",
            CLASS,
            "--version",
            "2.0.0",
            "--sequence",
            "7",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        ok(self.run(&args));
    }

    fn inspect_json(&self, pkg: &str) -> serde_json::Value {
        let out = ok(self.run(&["pack", "inspect", pkg, "--key", "orig.pub.pem", "--json"]));
        assert_eq!(out.trim_end().lines().count(), 1, "JSON is one line: {out}");
        serde_json::from_str(&out).unwrap()
    }
}

#[test]
fn full_integrated_package_round_trip() {
    let s = Setup::new();
    s.build("full.suit", &["--name", "Release 2"]);

    let text = ok(s.run(&["pack", "inspect", "full.suit", "--key", "orig.pub.pem"]));
    assert!(text.contains("signature         valid"), "{text}");
    assert!(
        text.contains(&format!("vendor-id         {VENDOR}")),
        "{text}"
    );
    assert!(text.contains("version           2.0.0"), "{text}");
    assert!(text.contains(&hex_sha256(&s.new)), "{text}");

    let j = s.inspect_json("full.suit");
    assert_eq!(j["signature"], "valid");
    assert_eq!(j["kind"], "full");
    assert_eq!(j["sequence"], 7);
    assert_eq!(j["vendor_id"], VENDOR);
    assert_eq!(j["class_id"], CLASS);
    assert_eq!(j["name"], "Release 2");
    assert_eq!(j["version"], "2.0.0");
    assert_eq!(j["image_digest"], hex_sha256(&s.new));
    assert_eq!(j["image_size"], s.new.len());
    assert_eq!(j["payload"]["kind"], "integrated");
    assert_eq!(j["payload"]["size"], s.new.len());
    assert!(j["precursor_digest"].is_null());

    ok(s.run(&[
        "pack",
        "apply",
        "full.suit",
        "--out",
        "out.bin",
        "--key",
        "orig.pub.pem",
    ]));
    assert_eq!(std::fs::read(s.path("out.bin")).unwrap(), s.new);
}

#[test]
fn full_package_by_uri() {
    let s = Setup::new();
    s.build(
        "uri.suit",
        &["--uri", "https://updates.example/fw-2.0.0.bin"],
    );
    let j = s.inspect_json("uri.suit");
    assert_eq!(j["payload"]["kind"], "uri");
    assert_eq!(j["uri"], "https://updates.example/fw-2.0.0.bin");
    assert_eq!(j["image_digest"], hex_sha256(&s.new));
    // The envelope is small: the payload is not inside.
    assert!(std::fs::metadata(s.path("uri.suit")).unwrap().len() < 1024);

    let out = s.run(&[
        "pack",
        "apply",
        "uri.suit",
        "--out",
        "o.bin",
        "--key",
        "orig.pub.pem",
    ]);
    assert_refused(&out, "--payload");
    ok(s.run(&[
        "pack",
        "apply",
        "uri.suit",
        "--out",
        "o.bin",
        "--key",
        "orig.pub.pem",
        "--payload",
        "new.bin",
    ]));
    assert_eq!(std::fs::read(s.path("o.bin")).unwrap(), s.new);
    // The wrong payload file is refused against the signed digest, and nothing is written.
    let out = s.run(&[
        "pack",
        "apply",
        "uri.suit",
        "--out",
        "o2.bin",
        "--key",
        "orig.pub.pem",
        "--payload",
        "old.bin",
    ]);
    assert_refused(&out, "signed image digest");
    assert!(!s.path("o2.bin").exists());
}

#[test]
fn delta_integrated_package_round_trip() {
    let s = Setup::new();
    s.build("delta.suit", &["--base", "old.bin"]);
    let size = std::fs::metadata(s.path("delta.suit")).unwrap().len() as usize;
    assert!(size < s.new.len() / 10, "delta package is {size} bytes");

    let j = s.inspect_json("delta.suit");
    assert_eq!(j["kind"], "delta");
    assert_eq!(j["image_digest"], hex_sha256(&s.new));
    assert_eq!(j["image_size"], s.new.len());
    assert_eq!(j["precursor_digest"], hex_sha256(&s.old));
    assert_eq!(j["delta"]["source_size"], s.old.len());
    assert_eq!(j["delta"]["target_size"], s.new.len());
    assert_eq!(j["delta"]["matches_manifest"], true);
    assert_eq!(j["uri"], "#delta");
    // The delta's own digest and size are signed, and are those of the integrated member.
    let size = j["delta"]["size"].as_u64().unwrap() as usize;
    assert_eq!(j["payload"]["size"], size);
    let pkg = std::fs::read(s.path("delta.suit")).unwrap();
    let delta = &pkg[pkg.len() - size..];
    assert!(delta.starts_with(b"SFDELTA\0"));
    assert_eq!(j["delta"]["sha256"], hex_sha256(delta));
    let text = ok(s.run(&["pack", "inspect", "delta.suit", "--key", "orig.pub.pem"]));
    assert!(text.contains(&format!("precursor         sha256 {}", hex_sha256(&s.old))));

    ok(s.run(&[
        "pack",
        "apply",
        "delta.suit",
        "--base",
        "old.bin",
        "--out",
        "new2.bin",
        "--key",
        "orig.pub.pem",
    ]));
    assert_eq!(std::fs::read(s.path("new2.bin")).unwrap(), s.new);
}

#[test]
fn delta_key_from_environment() {
    let s = Setup::new();
    s.build("delta.suit", &["--base", "old.bin"]);
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args([
            "pack",
            "apply",
            "delta.suit",
            "--base",
            "old.bin",
            "--out",
            "n.bin",
        ])
        .current_dir(s.dir.path())
        .env("SIMFOTA_ORIGINATOR_KEY", s.path("orig.pub.pem"))
        .output()
        .unwrap();
    ok(out);
    assert_eq!(std::fs::read(s.path("n.bin")).unwrap(), s.new);
    // Without a key, apply refuses to use an unverified package.
    let out = s.run(&[
        "pack",
        "apply",
        "delta.suit",
        "--base",
        "old.bin",
        "--out",
        "m.bin",
    ]);
    assert_refused(&out, "--key");
    assert!(!s.path("m.bin").exists());
}

#[test]
fn delta_package_by_uri() {
    let s = Setup::new();
    s.build(
        "d.suit",
        &["--base", "old.bin", "--uri", "https://updates.example/d"],
    );
    let delta = std::fs::read(s.path("d.suit.delta")).unwrap();
    assert!(delta.starts_with(b"SFDELTA\0"));
    let j = s.inspect_json("d.suit");
    assert_eq!(j["kind"], "delta");
    assert_eq!(j["payload"]["kind"], "uri");
    assert_eq!(j["delta"]["sha256"], hex_sha256(&delta));
    assert_eq!(j["delta"]["size"], delta.len());
    assert_eq!(j["delta"]["matches_manifest"], false);
    let text = ok(s.run(&["pack", "inspect", "d.suit", "--key", "orig.pub.pem"]));
    assert!(
        text.contains(&format!(
            "delta by URI https://updates.example/d, signed: {} bytes, sha256 {}",
            delta.len(),
            hex_sha256(&delta)
        )),
        "{text}"
    );
    // A payload file that is not the signed delta is refused before it is parsed.
    let mut tampered = delta.clone();
    let at = tampered.len() - 10;
    tampered[at] ^= 0x01;
    std::fs::write(s.path("tampered.delta"), &tampered).unwrap();
    let apply = |payload: &str, base: &str| {
        s.run(&[
            "pack",
            "apply",
            "d.suit",
            "--base",
            base,
            "--out",
            "never.bin",
            "--key",
            "orig.pub.pem",
            "--payload",
            payload,
        ])
    };
    assert_refused(
        &apply("tampered.delta", "old.bin"),
        "is not the signed delta",
    );
    // The full image given as the payload of a delta package: not the signed delta either.
    assert_refused(&apply("new.bin", "old.bin"), "is not the signed delta");
    // The right delta on the wrong base.
    assert_refused(&apply("d.suit.delta", "new.bin"), "precursor");
    assert!(!s.path("never.bin").exists());
    ok(s.run(&[
        "pack",
        "apply",
        "d.suit",
        "--base",
        "old.bin",
        "--out",
        "n.bin",
        "--key",
        "orig.pub.pem",
        "--payload",
        "d.suit.delta",
    ]));
    assert_eq!(std::fs::read(s.path("n.bin")).unwrap(), s.new);
}

#[test]
fn delta_apply_refusals_write_nothing() {
    let s = Setup::new();
    s.build("delta.suit", &["--base", "old.bin"]);
    let apply = |base: &str, pkg: &str| {
        s.run(&[
            "pack",
            "apply",
            pkg,
            "--base",
            base,
            "--out",
            "never.bin",
            "--key",
            "orig.pub.pem",
        ])
    };
    // Wrong base image: refused against the signed precursor digest.
    assert_refused(&apply("new.bin", "delta.suit"), "precursor");
    // No base at all.
    let out = s.run(&[
        "pack",
        "apply",
        "delta.suit",
        "--out",
        "never.bin",
        "--key",
        "orig.pub.pem",
    ]);
    assert_refused(&out, "--base");

    // A flipped byte deep inside the delta streams: the signed delta digest no longer
    // matches, so the package is refused before the delta is parsed; nothing is written.
    let mut pkg = std::fs::read(s.path("delta.suit")).unwrap();
    let at = pkg.len() - 40;
    pkg[at] ^= 0x01;
    std::fs::write(s.path("bad.suit"), &pkg).unwrap();
    assert_refused(
        &apply("old.bin", "bad.suit"),
        "digest mismatch: integrated payload",
    );
    assert!(!s.path("never.bin").exists());
}

#[test]
fn inspect_refusal_classes() {
    let s = Setup::new();
    s.build("full.suit", &[]);
    s.build("delta.suit", &["--base", "old.bin"]);
    let pkg = std::fs::read(s.path("full.suit")).unwrap();
    let inspect = |file: &str, key: &str| s.run(&["pack", "inspect", file, "--key", key]);

    // Bad CBOR.
    std::fs::write(s.path("junk.suit"), b"this is not CBOR at all").unwrap();
    assert_refused(
        &inspect("junk.suit", "orig.pub.pem"),
        "not a valid SUIT envelope",
    );
    std::fs::write(s.path("empty.suit"), b"").unwrap();
    assert_refused(
        &inspect("empty.suit", "orig.pub.pem"),
        "not a valid SUIT envelope",
    );

    // Wrong key.
    ok(s.run(&["keys", "gen", "--out", "other.pem"]));
    assert_refused(
        &inspect("full.suit", "other.pem"),
        "signature does not verify",
    );

    // Flipped payload byte (the integrated image is the tail of the envelope).
    let mut flipped = pkg.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x80;
    std::fs::write(s.path("flipped.suit"), &flipped).unwrap();
    assert_refused(&inspect("flipped.suit", "orig.pub.pem"), "digest mismatch");

    // Flipped manifest byte (the signed part).
    let mut flipped = pkg.clone();
    let at = flipped.windows(5).position(|w| w == b"2.0.0").unwrap();
    flipped[at] = b'3';
    std::fs::write(s.path("manifest.suit"), &flipped).unwrap();
    assert_refused(
        &inspect("manifest.suit", "orig.pub.pem"),
        "verification failed",
    );

    // Truncated file, at several lengths.
    for cut in [1, 10, pkg.len() / 2, pkg.len() - 1] {
        std::fs::write(s.path("cut.suit"), &pkg[..cut]).unwrap();
        assert_refused(&inspect("cut.suit", "orig.pub.pem"), "cut.suit");
    }

    // An integrated delta changed after signing (here its header's target digest): refused
    // against the signed delta digest.
    let mut d = std::fs::read(s.path("delta.suit")).unwrap();
    let at = d.windows(8).position(|w| w == b"SFDELTA\0").unwrap() + 56 + 32;
    d[at] ^= 1;
    std::fs::write(s.path("dhdr.suit"), &d).unwrap();
    assert_refused(
        &inspect("dhdr.suit", "orig.pub.pem"),
        "digest mismatch: integrated payload",
    );

    // Missing package and missing key files.
    assert_refused(&inspect("absent.suit", "orig.pub.pem"), "absent.suit");
    assert_refused(&inspect("full.suit", "absent.pem"), "absent.pem");
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/vectors/suit/manifest-spec")
}

/// The sequence number an example's diagnostic notation states.
fn documented_sequence(txt: &str) -> u64 {
    let at = txt.find("/ manifest-sequence-number / 2:").unwrap() + 31;
    txt[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn official_examples_inspect_ok() {
    let dir = tempfile::tempdir().unwrap();
    let pubkey = vectors().join("pubkey.pem");
    for n in 0..6 {
        let hex_text =
            std::fs::read_to_string(vectors().join(format!("example{n}.signed.hex"))).unwrap();
        let clean: String = hex_text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let bytes = hex::decode(clean).unwrap();
        let file = dir.path().join(format!("example{n}.suit"));
        std::fs::write(&file, &bytes).unwrap();
        let out = simfota(
            &[
                "pack",
                "inspect",
                file.to_str().unwrap(),
                "--key",
                pubkey.to_str().unwrap(),
                "--json",
            ],
            dir.path(),
        );
        // Example 3 chooses an A/B slot image on the device, example 5 installs two images:
        // correctly signed, and refused by name (docs/formats.md, SUIT section).
        let refusal = match n {
            3 => Some("unsupported SUIT parameter 5"),
            5 => Some("unsupported SUIT second install directive 21"),
            _ => None,
        };
        if let Some(why) = refusal {
            assert_refused(&out, why);
            continue;
        }
        let j: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
        let txt = std::fs::read_to_string(vectors().join(format!("example{n}.txt"))).unwrap();
        assert_eq!(j["sequence"], documented_sequence(&txt), "example {n}");
        assert_eq!(j["signature"], "valid");
        // Text mode too.
        let out = simfota(
            &[
                "pack",
                "inspect",
                file.to_str().unwrap(),
                "--key",
                pubkey.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(ok(out).contains("signature         valid"));

        // And they are refused under another key.
        ok(simfota(
            &["keys", "gen", "--out", "k.pem", "--force"],
            dir.path(),
        ));
        let out = simfota(
            &["pack", "inspect", file.to_str().unwrap(), "--key", "k.pem"],
            dir.path(),
        );
        assert_refused(&out, "signature does not verify");
    }
}

#[test]
fn bad_command_lines_are_refused_clearly() {
    let s = Setup::new();
    let build = |vendor: &str, image: &str| {
        s.run(&[
            "pack",
            "build",
            "--image",
            image,
            "--key",
            "orig.pem",
            "--vendor-id",
            vendor,
            "--class-id",
            CLASS,
            "--version",
            "1",
            "--sequence",
            "1",
            "--out",
            "x.suit",
        ])
    };
    let out = build("not-a-uuid", "new.bin");
    assert_refused(&out, "--vendor-id");
    assert_eq!(out.status.code(), Some(2));
    assert_refused(&build(VENDOR, "missing.bin"), "missing.bin");
    assert!(!s.path("x.suit").exists());

    let out = s.run(&[
        "pack",
        "build",
        "--image",
        "new.bin",
        "--key",
        "orig.pem",
        "--vendor-id",
        VENDOR,
        "--class-id",
        CLASS,
        "--version",
        "1",
        "--sequence",
        "minus-one",
        "--out",
        "x.suit",
    ]);
    assert_refused(&out, "--sequence");
    // A public key where the originator's private key is needed.
    let out = s.run(&[
        "pack",
        "build",
        "--image",
        "new.bin",
        "--key",
        "orig.pub.pem",
        "--vendor-id",
        VENDOR,
        "--class-id",
        CLASS,
        "--version",
        "1",
        "--sequence",
        "1",
        "--out",
        "x.suit",
    ]);
    assert_refused(&out, "holds a public key");
    assert_refused(&s.run(&["pack", "inspect", "x.suit"]), "--key");
}

/// A delta package that signs its precursor but not its delta (the layout of earlier builds,
/// whose delta travelled unsigned) is refused by inspect and apply.
#[test]
fn delta_package_without_a_signed_delta_is_refused() {
    use p256::pkcs8::DecodePrivateKey;
    use simfota_wire::suit::{self, BuildParams, ImageSource};
    let s = Setup::new();
    let pem = std::fs::read_to_string(s.path("orig.pem")).unwrap();
    let key = p256::ecdsa::SigningKey::from(p256::SecretKey::from_pkcs8_pem(&pem).unwrap());
    let env = suit::build(
        &BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 3,
            image: ImageSource::Digest {
                digest: simfota_wire::sha256(&s.new),
                size: s.new.len() as u64,
            },
            name: None,
            version: Some("2.0.0"),
            uri: Some("https://updates.example/d"),
            integrate: false,
            precursor_digest: Some(simfota_wire::sha256(&s.old)),
        },
        &key,
    )
    .unwrap();
    std::fs::write(s.path("old-layout.suit"), &env).unwrap();
    let out = s.run(&[
        "pack",
        "inspect",
        "old-layout.suit",
        "--key",
        "orig.pub.pem",
    ]);
    assert_refused(&out, "without a signed delta digest and size");
    ok(s.run(&[
        "pack",
        "build",
        "--image",
        "new.bin",
        "--key",
        "orig.pem",
        "--vendor-id",
        VENDOR,
        "--class-id",
        CLASS,
        "--version",
        "2",
        "--sequence",
        "3",
        "--base",
        "old.bin",
        "--uri",
        "https://updates.example/d",
        "--out",
        "d.suit",
    ]));
    let out = s.run(&[
        "pack",
        "apply",
        "old-layout.suit",
        "--base",
        "old.bin",
        "--out",
        "never.bin",
        "--key",
        "orig.pub.pem",
        "--payload",
        "d.suit.delta",
    ]);
    assert_refused(&out, "-258/-259");
    assert!(!s.path("never.bin").exists());
}

/// `pack build` and `pack apply` treat an existing output as `keys gen` does: refused before
/// any work unless `--force`, and then replaced.
#[test]
fn existing_outputs_are_replaced_only_with_force() {
    let s = Setup::new();
    s.build("full.suit", &[]);
    let before = std::fs::read(s.path("full.suit")).unwrap();
    let again = [
        "pack",
        "build",
        "--image",
        "new.bin",
        "--key",
        "orig.pem",
        "--vendor-id",
        VENDOR,
        "--class-id",
        CLASS,
        "--version",
        "2.0.1",
        "--sequence",
        "8",
        "--out",
        "full.suit",
    ];
    let out = s.run(&again);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "simfota: full.suit already exists (use --force to replace it)\n"
    );
    assert_eq!(std::fs::read(s.path("full.suit")).unwrap(), before);
    let mut forced = again.to_vec();
    forced.push("--force");
    ok(s.run(&forced));
    assert_ne!(std::fs::read(s.path("full.suit")).unwrap(), before);

    // A delta by URI writes two files: either one existing is refused, and nothing is written.
    std::fs::write(s.path("d.suit.delta"), b"kept").unwrap();
    let out = s.run(&[
        "pack",
        "build",
        "--image",
        "new.bin",
        "--base",
        "old.bin",
        "--uri",
        "http://x/d",
        "--key",
        "orig.pem",
        "--vendor-id",
        VENDOR,
        "--class-id",
        CLASS,
        "--version",
        "2.0.0",
        "--sequence",
        "7",
        "--out",
        "d.suit",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "simfota: d.suit.delta already exists (use --force to replace it)\n"
    );
    assert!(!s.path("d.suit").exists());
    assert_eq!(std::fs::read(s.path("d.suit.delta")).unwrap(), b"kept");

    std::fs::write(s.path("out.bin"), b"old").unwrap();
    let apply = [
        "pack",
        "apply",
        "full.suit",
        "--out",
        "out.bin",
        "--key",
        "orig.pub.pem",
    ];
    let out = s.run(&apply);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "simfota: out.bin already exists (use --force to replace it)\n"
    );
    let mut forced = apply.to_vec();
    forced.push("--force");
    ok(s.run(&forced));
    assert_eq!(std::fs::read(s.path("out.bin")).unwrap(), s.new);
}
