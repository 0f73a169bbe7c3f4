//! `simfota ctl`: the operator's command line over the server's REST API (`/api/v1`).
//!
//! Where the server is (URL, API token file, CA file) is set once with `ctl config set` and can
//! be overridden per call by a flag or an environment variable ([`config`]). Every command
//! prints a readable table, or with `--json` (`--output json`) the API's own JSON
//! ([`render`]). Every request goes through one client ([`client`]): a failure is one line
//! naming the server, the HTTP status and the server's `{"error"}` message, and the exit status
//! says its class ([`Class`]), as docs/cli.md documents.

mod audit;
mod campaigns;
mod cards;
mod client;
mod config;
mod dashboard;
mod devices;
mod packages;
mod progress;
mod render;
mod time;
mod tokens;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

/// `simfota ctl`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 done; 1 refused or failed; 2 usage; 3 not found; \
                        4 token missing or not allowed; 5 server unreachable or unavailable; \
                        6 conflict with the current state; 7 a watched campaign stopped short \
                        (paused, halted, cancelled)."
)]
pub struct Args {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every `ctl` command takes, before or after its name.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The server's base URL, e.g. https://dm.example:8443 (else SIMFOTA_SERVER, else the
    /// configuration file).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL"
    )]
    server: Option<String>,
    /// The file holding the API token (else SIMFOTA_TOKEN_FILE, else the configuration file).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for an https:// server, besides the system's (else
    /// SIMFOTA_CA_FILE, else the configuration file).
    #[arg(
        long = "ca",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    ca_file: Option<PathBuf>,
    /// The configuration file (else SIMFOTA_CTL_CONFIG, else ~/.config/simfota/ctl.toml).
    #[arg(
        long = "config",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, help_heading = "Global options", value_enum, default_value_t = Format::Table)]
    output: Format,
    /// The same as --output json.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Readable tables and lines.
    Table,
    /// The API's JSON.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set once where the server is, the token file and the CA; show them with their sources.
    #[command(subcommand)]
    Config(config::Command),
    /// Devices: list with filters, show, import a CSV provisioning file, delete, notify.
    #[command(subcommand, visible_alias = "device")]
    Devices(devices::Command),
    /// Cards: list, show, their verified log, proof bundles.
    #[command(subcommand, visible_alias = "card")]
    Cards(cards::Command),
    /// Packages: upload (with progress), list, show, delete.
    #[command(subcommand, visible_alias = "package")]
    Packages(packages::Command),
    /// Campaigns: create, list, show, watch, pause, resume, cancel, retry, jobs.
    #[command(subcommand, visible_alias = "campaign")]
    Campaigns(campaigns::Command),
    /// API tokens: issue, list, revoke (admin).
    #[command(subcommand, visible_alias = "token")]
    Tokens(tokens::Command),
    /// The audit log, newest first.
    Audit(audit::Args),
    /// A one-time dashboard sign-in link for the configured token.
    Dashboard(dashboard::Args),
}

/// What a failure is, and so the exit status (docs/cli.md, `simfota ctl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The server refused the request, or a local file or the configuration is unusable.
    Failed,
    /// The command line is wrong, or no server is configured.
    Usage,
    /// The server has no such object (HTTP 404).
    NotFound,
    /// No usable token, or the server did not accept it (HTTP 401, 403).
    NotAllowed,
    /// No answer from the server (connection, name, TLS), or it is unavailable (HTTP 502-504).
    Unreachable,
    /// The object's state does not allow it (HTTP 409).
    Conflict,
    /// `campaigns watch` saw the campaign stop without completing.
    Stopped,
}

impl Class {
    /// The exit status of this class.
    pub fn code(self) -> u8 {
        match self {
            Class::Failed => 1,
            Class::Usage => 2,
            Class::NotFound => 3,
            Class::NotAllowed => 4,
            Class::Unreachable => 5,
            Class::Conflict => 6,
            Class::Stopped => 7,
        }
    }
}

/// A failed `ctl` command: one line for the user and its class.
#[derive(Debug)]
pub struct Failure {
    /// The class (exit status).
    pub class: Class,
    /// The line shown after `simfota: `.
    pub message: String,
}

impl Failure {
    /// A failure of class `class`.
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        Failure {
            class,
            message: message.into(),
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::new(Class::Usage, message)
    }

    /// A local problem (a file, the configuration).
    pub fn local(message: impl Into<String>) -> Self {
        Failure::new(Class::Failed, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A command's result.
pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// What every command needs: the resolved settings and the output format.
pub struct Context {
    /// Settings after flags, environment and file.
    pub settings: config::Settings,
    /// `--json` / `--output json`.
    pub json: bool,
}

impl Context {
    /// The API client for the configured server.
    pub fn client(&self) -> Result<client::Client> {
        client::Client::new(&self.settings)
    }
}

/// Runs `simfota ctl`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let json = args.global.json || args.global.output == Format::Json;
    let outcome = config::Settings::resolve(&args.global).and_then(|settings| {
        let ctx = Context { settings, json };
        match args.command {
            Command::Config(c) => config::run(&ctx, c),
            Command::Devices(c) => devices::run(&ctx, c),
            Command::Cards(c) => cards::run(&ctx, c),
            Command::Packages(c) => packages::run(&ctx, c),
            Command::Campaigns(c) => campaigns::run(&ctx, c),
            Command::Tokens(c) => tokens::run(&ctx, c),
            Command::Audit(a) => audit::run(&ctx, a),
            Command::Dashboard(a) => dashboard::run(&ctx, a),
        }
    });
    Ok(match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            errln!("simfota: {}", one_line(&f.message));
            ExitCode::from(f.class.code())
        }
    })
}

/// The user reads one line: text from a server or a library can hold newlines.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `--limit`, `--cursor`, `--all`: how much of a list to fetch.
#[derive(Debug, Clone, clap::Args)]
pub struct Paging {
    /// Items per page (1-1000; the server's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
    /// Start at this page (the cursor a previous list printed).
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    cursor: Option<String>,
    /// Follow every page to the end of the list.
    #[arg(long)]
    all: bool,
    /// Order by this field (`-field` for descending), as the server documents per list.
    #[arg(long, value_name = "FIELD", allow_hyphen_values = true)]
    sort: Option<String>,
}
