//! `simfota proof verify`: checks a proof bundle offline (crate `simfota-server`, module
//! `proof`) with nothing but the card issuer's public key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;

/// Arguments of `simfota proof`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ProofCommand,
}

#[derive(Debug, Subcommand)]
enum ProofCommand {
    /// Verify a proof bundle (from GET /api/v1/updates/{id}/proof) against the issuer key.
    Verify {
        /// The bundle (JSON).
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
        /// The card issuer's public key (SPKI PEM).
        #[arg(long, value_name = "ISSUER.pem")]
        issuer_pub: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `simfota proof ...`.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        ProofCommand::Verify {
            bundle,
            issuer_pub,
            json,
        } => {
            let text = std::fs::read_to_string(&bundle)
                .with_context(|| format!("reading {}", bundle.display()))?;
            let b: simfota_server::proof::Bundle = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a proof bundle", bundle.display()))?;
            let pem = std::fs::read_to_string(&issuer_pub)
                .with_context(|| format!("reading {}", issuer_pub.display()))?;
            let issuer = simfota_wire::pem::public_key_from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", issuer_pub.display()))?;
            let proven = simfota_server::proof::verify(&b, &issuer)
                .map_err(|e| anyhow::anyhow!("proof refused: {e}"))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&proven)?);
            } else {
                outln!("proof verified");
                outln!("  card (ICCID)     {}", proven.iccid);
                outln!("  device (IMEI)    {}", proven.imei);
                outln!("  update id        {}", proven.update_id);
                outln!("  manifest digest  {}", proven.manifest_digest);
                outln!("  FUMO result      {}", proven.fumo_result);
                outln!(
                    "  card log         entry {}: {}",
                    proven.log_seq,
                    proven.events.join(", ")
                );
                outln!(
                    "  server           {}",
                    if proven.free_device {
                        "not on the card's list; let through by the card's free-device policy"
                    } else if proven.consent.is_some() {
                        "not on the card's list; let through on the user's consent"
                    } else {
                        "on the card's list of authorized servers"
                    }
                );
                outln!(
                    "  user consent     {}",
                    match proven.consent {
                        Some(true) => "confirmed with the PIN",
                        Some(false) => "confirmed (no PIN)",
                        None => "none needed",
                    }
                );
                for e in &proven.entries {
                    outln!("  entry {:>5}      {}", e.seq, entry_line(e));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One decoded log entry on one line: event, release, server, IMEI (what is known).
fn entry_line(e: &simfota_server::proof::EntrySummary) -> String {
    let mut parts = vec![e.event.clone()];
    match (&e.release, &e.version) {
        (Some(r), Some(v)) => parts.push(format!("release {r} {v}")),
        (Some(r), None) => parts.push(format!("release {r}")),
        (None, Some(v)) => parts.push(format!("version {v}")),
        (None, None) => {}
    }
    // A field the card marked as a claim is shown as one.
    let claimed = |field: &str| {
        e.unverified_fields
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == field))
    };
    let tag = |field: &str| if claimed(field) { " (claimed)" } else { "" };
    if let Some(s) = &e.server {
        parts.push(format!("server {s}{}", tag("server_id")));
    }
    if let Some(o) = &e.originator {
        parts.push(format!("originator {o}"));
    }
    if let Some(i) = &e.imei {
        parts.push(format!("IMEI {i}{}", tag("imei")));
    }
    parts.join(" · ")
}
