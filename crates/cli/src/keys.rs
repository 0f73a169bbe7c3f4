//! `simfota keys`: P-256 key files.
//!
//! Private keys are PKCS#8 PEM (RFC 5208 / RFC 7468 "PRIVATE KEY"), written with mode 0600;
//! public keys are SubjectPublicKeyInfo PEM (RFC 5280 / RFC 7468 "PUBLIC KEY"), the form
//! OpenSSL and the SUIT examples' `pubkey.pem` use.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use p256::{PublicKey, SecretKey};
use rand_core::OsRng;

use crate::files::{self, Overwrite};

/// Arguments of `simfota keys`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate a P-256 private key (PKCS#8 PEM, file mode 0600).
    Gen {
        /// Where to write the key.
        #[arg(long, value_name = "KEY.pem")]
        out: PathBuf,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key (SPKI PEM) of a private key file.
    Pub {
        /// The private key (PKCS#8 or SEC1 PEM).
        #[arg(value_name = "KEY.pem")]
        key: PathBuf,
    },
}

/// Runs `simfota keys ...`.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        KeysCommand::Gen { out, force } => {
            let secret = SecretKey::random(&mut OsRng);
            let pem = secret
                .to_pkcs8_pem(LineEnding::LF)
                .context("cannot encode the new key")?;
            let overwrite = if force {
                Overwrite::Allow
            } else {
                Overwrite::Refuse
            };
            files::write_atomic(&out, pem.as_bytes(), 0o600, overwrite)?;
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Pub { key } => {
            let secret = load_private(&key)?;
            out!("{}", public_pem(&secret.public_key())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// SPKI PEM of a public key.
pub fn public_pem(key: &PublicKey) -> Result<String> {
    key.to_public_key_pem(LineEnding::LF)
        .context("cannot encode the public key")
}

/// Loads a P-256 private key from a PKCS#8 ("PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") PEM file.
pub fn load_private(path: &Path) -> Result<SecretKey> {
    let text = files::read_text(path, "private key")?;
    let label = pem_label(&text);
    match label {
        Some("PRIVATE KEY") => SecretKey::from_pkcs8_pem(&text).map_err(|e| {
            anyhow::anyhow!("{}: not a P-256 PKCS#8 private key ({e})", path.display())
        }),
        Some("EC PRIVATE KEY") => SecretKey::from_sec1_pem(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a P-256 SEC1 private key ({e})", path.display())),
        Some("PUBLIC KEY") => bail!(
            "{} holds a public key; a private key (PKCS#8 PEM, as 'simfota keys gen' writes) is needed",
            path.display()
        ),
        Some(other) => bail!(
            "{}: unexpected PEM block '{other}'; expected a P-256 private key",
            path.display()
        ),
        None => bail!(
            "{}: no PEM block found; expected a P-256 private key",
            path.display()
        ),
    }
}

/// Loads a P-256 public key from an SPKI ("PUBLIC KEY") PEM file; a private key file is
/// accepted too and its public half used.
pub fn load_public(path: &Path) -> Result<PublicKey> {
    let text = files::read_text(path, "public key")?;
    match pem_label(&text) {
        Some("PUBLIC KEY") => PublicKey::from_public_key_pem(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a P-256 public key ({e})", path.display())),
        Some("PRIVATE KEY" | "EC PRIVATE KEY") => Ok(load_private(path)?.public_key()),
        Some(other) => bail!(
            "{}: unexpected PEM block '{other}'; expected a P-256 public key",
            path.display()
        ),
        None => bail!(
            "{}: no PEM block found; expected a P-256 public key",
            path.display()
        ),
    }
}

/// The label of the first PEM block ("-----BEGIN <label>-----"), if any.
fn pem_label(text: &str) -> Option<&str> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(&rest[..end])
}
