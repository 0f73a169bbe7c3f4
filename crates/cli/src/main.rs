//! `simfota`: one command for every part of the system.
//!
//! This file only parses the command line and dispatches; each area (`keys`, `pack`, `bench`,
//! and the ones added later) is its own module with its own `Args` and `run`. Every failure
//! reaches the user as one line on stderr, `simfota: <what was refused>: <why>`, and a
//! non-zero exit status: never a panic, never a bare "error". Output to a pipe whose reader
//! has gone ends the program quietly (see [`output`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// First: the output macros the other modules use.
#[macro_use]
mod output;

mod bench;
mod card;
mod demo;
mod device;
mod files;
mod fleet;
mod keys;
mod pack;
mod proof;
mod server;
mod setup;

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
    /// Simulate a fleet of card-gated devices against a server; measure updates per second.
    Fleet(fleet::Args),
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
        Command::Fleet(args) => fleet::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` joins the context chain on one line: "reading x: No such file".
            errln!("simfota: {}", one_line(&format!("{e:#}")));
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
            // Printing help can only fail on a closed stdout: end as every command does then.
            if let Err(io) = e.print()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::from(output::CLOSED_PIPE);
            }
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // clap renders "error: <what>", maybe an indented list, a blank line, tips and
            // "Usage: ...": keep the first paragraph; the command path comes from the arguments.
            let text = e.render().to_string();
            let what: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let what = what.join(" ");
            let what = what.strip_prefix("error: ").unwrap_or(&what);
            let command = command_path(std::env::args().skip(1));
            errln!("simfota: {what} (see '{command} --help')");
            ExitCode::from(2)
        }
    }
}

/// The subcommand path the user typed ("simfota server", "simfota card admin"): the leading
/// arguments that name subcommands, followed down the real command tree. clap's rendered usage
/// line is no guide here, since value errors do not always carry one.
fn command_path(args: impl Iterator<Item = String>) -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut path = vec!["simfota".to_owned()];
    for arg in args {
        match cmd.find_subcommand(&arg) {
            Some(sub) => {
                path.push(sub.get_name().to_owned());
                cmd = sub.clone();
            }
            None => break,
        }
    }
    path.join(" ")
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

    #[test]
    fn usage_errors_name_the_subcommand_typed() {
        let path = |args: &[&str]| super::command_path(args.iter().map(|a| (*a).to_owned()));
        assert_eq!(path(&["server", "--listen", "nope"]), "simfota server");
        assert_eq!(
            path(&["card", "admin-sign", "--x"]),
            "simfota card admin-sign"
        );
        assert_eq!(path(&["--bogus"]), "simfota");
        assert_eq!(path(&["nosuch", "server"]), "simfota");
    }
}
