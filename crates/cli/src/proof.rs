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
                println!("{}", serde_json::to_string_pretty(&proven)?);
            } else {
                println!("proof verified");
                println!("  card (ICCID)     {}", proven.iccid);
                println!("  device (IMEI)    {}", proven.imei);
                println!("  update id        {}", proven.update_id);
                println!("  manifest digest  {}", proven.manifest_digest);
                println!("  FUMO result      {}", proven.fumo_result);
                println!(
                    "  card log         entry {}: {}",
                    proven.log_seq,
                    proven.events.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
