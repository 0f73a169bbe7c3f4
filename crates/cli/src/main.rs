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
mod ctl;
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
    /// The operator's command line over the server's REST API: devices, cards, packages,
    /// campaigns, tokens, audit.
    Ctl(ctl::Args),
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
        Command::Ctl(args) => ctl::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("simfota: {}", chain_line(&e));
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

/// The error and its causes on one line, "reading x: No such file", each cause said once.
///
/// Many error types name their cause in their own text ("download file x: {source}") and
/// also hand it on as their `source()`, so the bare chain says the cause twice ("...: No such
/// file: No such file"). A cause whose text the line already holds adds nothing and is left
/// out; so is a layer that only repeats what it wraps.
fn chain_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = one_line(&cause.to_string());
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if line.is_empty() {
            line = text;
        } else if text.contains(&line) {
            // An outer layer whose whole text is repeated (and extended) by its cause.
            line = text;
        } else {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
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

    /// An error type that names its cause in its text and also hands it on as `source()`.
    #[derive(Debug)]
    struct Naming(std::io::Error);

    impl std::fmt::Display for Naming {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "download file /d/p: {}", self.0)
        }
    }

    impl std::error::Error for Naming {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// A layer that says what its cause says, and adds to it.
    #[derive(Debug)]
    struct Repeating(Naming);

    impl std::fmt::Display for Repeating {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "DM session: {}", self.0)
        }
    }

    impl std::error::Error for Repeating {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        use anyhow::Context as _;
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let named = anyhow::Error::from(Naming(missing()));
        assert_eq!(
            super::chain_line(&named),
            "download file /d/p: entity not found"
        );
        let wrapped = anyhow::Error::from(Repeating(Naming(missing())));
        assert_eq!(
            super::chain_line(&wrapped),
            "DM session: download file /d/p: entity not found"
        );
        // Context that does not repeat its cause keeps the cause after it.
        let context = Err::<(), _>(missing())
            .context("reading the card state x")
            .unwrap_err();
        assert_eq!(
            super::chain_line(&context),
            "reading the card state x: entity not found"
        );
        let both = Err::<(), _>(Naming(missing()))
            .context("fetching the payload")
            .unwrap_err();
        assert_eq!(
            super::chain_line(&both),
            "fetching the payload: download file /d/p: entity not found"
        );
    }
}
