//! Where the server is: its URL, the file holding the API token, a CA file for a private CA.
//!
//! Each setting comes from, in order: its flag (`--server`, `--token-file`, `--ca`), its
//! environment variable (`SIMFOTA_SERVER`, `SIMFOTA_TOKEN_FILE`, `SIMFOTA_CA_FILE`), the
//! configuration file. The file is TOML (`server`, `token_file`, `ca_file`; unknown keys are
//! refused), at `--config`, `SIMFOTA_CTL_CONFIG`, `$XDG_CONFIG_HOME/simfota/ctl.toml` or
//! `~/.config/simfota/ctl.toml`; relative paths in it are relative to the file. `ctl config
//! set` writes it (atomically), `ctl config show` shows each setting with where it came from.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::render::Fields;
use super::{Context, Failure, Global, Result};

/// `simfota ctl config ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set one setting in the configuration file: server URL, token-file or ca-file.
    Set {
        /// `server`, `token-file` or `ca-file`.
        #[arg(value_enum)]
        key: Key,
        /// The URL, or the path (made absolute).
        value: String,
    },
    /// Remove one setting from the configuration file.
    Unset {
        /// `server`, `token-file` or `ca-file`.
        #[arg(value_enum)]
        key: Key,
    },
    /// Show the settings in effect and where each comes from.
    Show,
}

/// A setting's name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Key {
    /// The server's base URL.
    Server,
    /// The file holding the API token.
    TokenFile,
    /// A PEM file of CA certificates.
    CaFile,
}

/// The configuration file's contents.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Its command-line flag.
    Flag(&'static str),
    /// Its environment variable.
    Env(&'static str),
    /// The configuration file.
    File,
}

/// A setting's value and source.
#[derive(Debug, Clone)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// The settings in effect.
#[derive(Debug)]
pub struct Settings {
    /// The configuration file (it may not exist).
    pub file: PathBuf,
    /// The server's base URL, without a trailing slash.
    pub server: Option<Setting<String>>,
    /// The API token file.
    pub token_file: Option<Setting<PathBuf>>,
    /// The CA file.
    pub ca_file: Option<Setting<PathBuf>>,
}

/// The variables read, in one place (`config show` names them).
const ENV_SERVER: &str = "SIMFOTA_SERVER";
const ENV_TOKEN_FILE: &str = "SIMFOTA_TOKEN_FILE";
const ENV_CA_FILE: &str = "SIMFOTA_CA_FILE";
const ENV_CONFIG: &str = "SIMFOTA_CTL_CONFIG";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The configuration file to use.
fn config_path(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = env(ENV_CONFIG) {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = env("XDG_CONFIG_HOME") {
        return Ok(Path::new(&dir).join("simfota").join("ctl.toml"));
    }
    match env("HOME") {
        Some(home) => Ok(Path::new(&home).join(".config/simfota/ctl.toml")),
        None => Err(Failure::usage(
            "no configuration file: HOME is not set (give --config FILE or SIMFOTA_CTL_CONFIG)",
        )),
    }
}

/// Reads the file; a missing file is an empty configuration.
fn load(path: &Path) -> Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => {
            return Err(Failure::local(format!(
                "cannot read the configuration file {}: {e}",
                path.display()
            )));
        }
    };
    let config: FileConfig = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" line {line}")
            })
            .unwrap_or_default();
        let message = e.message().trim();
        let keys = if message.contains("expected one of") {
            ""
        } else {
            " (keys: server, token_file, ca_file)"
        };
        Failure::local(format!(
            "the configuration file {}{at} is refused: {message}{keys}",
            path.display()
        ))
    })?;
    if let Some(url) = &config.server {
        check_url(url).map_err(|why| {
            Failure::local(format!(
                "the configuration file {} is refused: server: {why}",
                path.display()
            ))
        })?;
    }
    Ok(config)
}

/// A server URL `ctl` can use: http or https, a host, no query or fragment.
fn check_url(url: &str) -> std::result::Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("'{url}' is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("'{url}' names no host"));
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "'{url}' must be a base URL (no query, fragment or spaces)"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A path from the file, relative to the file's folder.
fn beside(file: &Path, p: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_owned(),
    }
}

impl Settings {
    /// Flags over environment over the file.
    pub fn resolve(g: &Global) -> Result<Settings> {
        let file = config_path(g.config.as_deref())?;
        let from_file = load(&file)?;
        let server = match (&g.server, env(ENV_SERVER)) {
            (Some(url), _) => Some(Setting {
                value: check_url(url).map_err(|why| Failure::usage(format!("--server: {why}")))?,
                source: Source::Flag("--server"),
            }),
            (None, Some(url)) => Some(Setting {
                value: check_url(&url)
                    .map_err(|why| Failure::usage(format!("{ENV_SERVER}: {why}")))?,
                source: Source::Env(ENV_SERVER),
            }),
            (None, None) => from_file.server.map(|url| Setting {
                // Checked when loaded.
                value: url.trim_end_matches('/').to_owned(),
                source: Source::File,
            }),
        };
        let path = |flag: &Option<PathBuf>,
                    name: &'static str,
                    var: &'static str,
                    in_file: Option<PathBuf>| {
            match (flag, env(var)) {
                (Some(p), _) => Some(Setting {
                    value: p.clone(),
                    source: Source::Flag(name),
                }),
                (None, Some(p)) => Some(Setting {
                    value: PathBuf::from(p),
                    source: Source::Env(var),
                }),
                (None, None) => in_file.map(|p| Setting {
                    value: beside(&file, &p),
                    source: Source::File,
                }),
            }
        };
        let token_file = path(
            &g.token_file,
            "--token-file",
            ENV_TOKEN_FILE,
            from_file.token_file,
        );
        let ca_file = path(&g.ca_file, "--ca", ENV_CA_FILE, from_file.ca_file);
        Ok(Settings {
            file,
            server,
            token_file,
            ca_file,
        })
    }
}

/// Runs `ctl config ...`.
pub fn run(ctx: &Context, c: Command) -> Result<()> {
    match c {
        Command::Show => show(ctx),
        Command::Set { key, value } => set(ctx, key, Some(value)),
        Command::Unset { key } => set(ctx, key, None),
    }
}

fn source_text(s: &Source, file: &Path) -> String {
    match s {
        Source::Flag(f) => format!("flag {f}"),
        Source::Env(v) => format!("environment {v}"),
        Source::File => format!("file {}", file.display()),
    }
}

fn show(ctx: &Context) -> Result<()> {
    let s = &ctx.settings;
    let file_state = if s.file.exists() {
        "exists"
    } else {
        "not written yet"
    };
    if ctx.json {
        let entry = |value: Option<String>, source: Option<&Source>| {
            json!({
                "value": value,
                "source": source.map(|src| match src {
                    Source::Flag(f) => format!("flag {f}"),
                    Source::Env(v) => format!("env {v}"),
                    Source::File => "file".to_owned(),
                }),
            })
        };
        super::render::json(&json!({
            "file": s.file.display().to_string(),
            "file_exists": s.file.exists(),
            "server": entry(s.server.as_ref().map(|x| x.value.clone()),
                            s.server.as_ref().map(|x| &x.source)),
            "token_file": entry(s.token_file.as_ref().map(|x| x.value.display().to_string()),
                                s.token_file.as_ref().map(|x| &x.source)),
            "ca_file": entry(s.ca_file.as_ref().map(|x| x.value.display().to_string()),
                             s.ca_file.as_ref().map(|x| &x.source)),
        }));
        return Ok(());
    }
    let mut f = Fields::new();
    f.add(
        "configuration",
        format!("{} ({file_state})", s.file.display()),
    );
    let line = |value: Option<String>, source: Option<&Source>, unset: &str| match (value, source) {
        (Some(v), Some(src)) => format!("{v}  (from {})", source_text(src, &s.file)),
        _ => unset.to_owned(),
    };
    f.add(
        "server",
        line(
            s.server.as_ref().map(|x| x.value.clone()),
            s.server.as_ref().map(|x| &x.source),
            "not set (simfota ctl config set server URL)",
        ),
    );
    f.add(
        "token file",
        line(
            s.token_file.as_ref().map(|x| x.value.display().to_string()),
            s.token_file.as_ref().map(|x| &x.source),
            "not set (simfota ctl config set token-file FILE)",
        ),
    );
    f.add(
        "CA file",
        line(
            s.ca_file.as_ref().map(|x| x.value.display().to_string()),
            s.ca_file.as_ref().map(|x| &x.source),
            "none (the system's CA certificates only)",
        ),
    );
    f.print();
    Ok(())
}

fn set(ctx: &Context, key: Key, value: Option<String>) -> Result<()> {
    let file = &ctx.settings.file;
    let mut config = load(file)?;
    let absolute = |v: &str| -> Result<PathBuf> {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            return Ok(p);
        }
        std::env::current_dir()
            .map(|d| d.join(&p))
            .map_err(|e| Failure::local(format!("cannot make {v} absolute: {e}")))
    };
    let name = match key {
        Key::Server => {
            config.server = value
                .as_deref()
                .map(|v| check_url(v).map_err(Failure::usage))
                .transpose()?;
            "server"
        }
        Key::TokenFile => {
            config.token_file = value.as_deref().map(absolute).transpose()?;
            "token_file"
        }
        Key::CaFile => {
            config.ca_file = value.as_deref().map(absolute).transpose()?;
            "ca_file"
        }
    };
    let text = toml::to_string(&config)
        .map_err(|e| Failure::local(format!("cannot write the configuration: {e}")))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::local(format!("cannot create {}: {e}", dir.display())))?;
    }
    crate::files::write_atomic(file, text.as_bytes(), 0o644, crate::files::Overwrite::Allow)
        .map_err(|e| Failure::local(format!("{e:#}")))?;
    if !ctx.json {
        let now = match key {
            Key::Server => config.server.clone(),
            Key::TokenFile => config.token_file.as_ref().map(|p| p.display().to_string()),
            Key::CaFile => config.ca_file.as_ref().map(|p| p.display().to_string()),
        };
        match now {
            Some(v) => outln!("{name} = {v} (in {})", file.display()),
            None => outln!("{name} removed (from {})", file.display()),
        }
    } else {
        super::render::json(&json!({ "file": file.display().to_string(), "key": name }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            check_url("https://dm.example:8443/").as_deref(),
            Ok("https://dm.example:8443")
        );
        assert!(check_url("dm.example").is_err());
        assert!(check_url("http:///x").is_err());
        assert!(check_url("http://h/?a=b").is_err());
    }
}
