//! `simfota`: one command for every part of the system.
//!
//! This file only parses the command line and dispatches; each area (`keys`, `pack`, `bench`,
//! and the ones added later) is its own module with its own `Args` and `run`. Every failure
//! reaches the user as one line on stderr, `simfota: <what was refused>: <why>`, and a
//! non-zero exit status: never a panic, never a bare "error".

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod card;
mod demo;
mod device;
mod files;
mod keys;
mod pack;
mod proof;
mod server;

/// simfota: firmware-over-the-air updates controlled and audited through the subscriber's
/// smart card.
#[derive(Debug, Parser)]
#[command(name = "simfota", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system in one process: updates, attacks, the verified card log.
    Demo(demo::Args),
    /// Make and show P-256 keys (PEM files).
    Keys(keys::Args),
    /// Build, inspect and apply signed SUIT update packages.
    Pack(pack::Args),
    /// Measure payload hashing and delta packages on this machine.
    Bench(bench::Args),
    /// Card tools: serve a virtual card into PC/SC, personalize, inspect, administer.
    Card(card::Args),
    /// Run the operator's DM server (campaigns, package hosting, card logs, API, dashboard).
    Server(server::Args),
    /// Check an update's proof bundle offline against the card issuer's key.
    Proof(proof::Args),
    /// The device agent: OMA DM client with FUMO, card-gated updates, A/B slots.
    Device(device::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Keys(args) => keys::run(args),
        Command::Pack(args) => pack::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Card(args) => card::run(args),
        Command::Server(args) => server::run(args),
        Command::Proof(args) => proof::run(args),
        Command::Device(args) => device::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` joins the context chain on one line: "reading x: No such file".
            eprintln!("simfota: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as usual; a real usage error becomes one line.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Printing help can only fail on a closed stdout; nothing more to say then.
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // clap renders "error: <what>", maybe an indented list, a blank line, tips and
            // "Usage: simfota <sub> ...": keep the first paragraph and the command path.
            let text = e.render().to_string();
            let what: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let what = what.join(" ");
            let what = what.strip_prefix("error: ").unwrap_or(&what);
            let command: Vec<&str> = text
                .lines()
                .find_map(|l| l.strip_prefix("Usage: "))
                .unwrap_or("simfota")
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect();
            eprintln!("simfota: {what} (see '{} --help')", command.join(" "));
            ExitCode::from(2)
        }
    }
}

/// Messages from libraries can hold newlines; the user gets one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        // clap checks argument names, ids and defaults of every subcommand here, so a clash
        // (e.g. a `--version` argument against the automatic flag) fails the build's tests
        // instead of panicking in front of a user.
        super::Cli::command().debug_assert();
    }
}
