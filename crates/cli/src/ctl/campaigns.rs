//! `simfota ctl campaigns`: rolling a package out (`/api/v1/campaigns`, `/api/v1/jobs`).
//!
//! A campaign is created from flags, from a file (the API's JSON spec, or the same keys in
//! TOML), or from a file with flags overriding its keys. `watch` follows one until it is no
//! longer running: completed is success, paused, halted or cancelled exit with
//! [`Class::Stopped`].

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::render::{self, Fields, Table, text, when_long, when_short};
use super::time::now_ms;
use super::{Class, Context, Failure, Paging, Result};

/// `simfota ctl campaigns ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a campaign from flags, a file, or both (flags override the file's keys).
    Create(Box<CreateArgs>),
    /// List campaigns with their progress.
    #[command(visible_alias = "ls")]
    List {
        /// Only campaigns in this state (running, paused, halted, cancelled, completed).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One campaign: targets, thresholds, progress per wave, failures by reason.
    Show {
        /// The campaign's id.
        id: i64,
        /// Then follow its progress until it is no longer running.
        #[arg(long)]
        watch: bool,
        /// Seconds between two looks when watching.
        #[arg(long, default_value_t = 2, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Follow a campaign's progress until it is no longer running.
    Watch {
        /// The campaign's id.
        id: i64,
        /// Seconds between two looks.
        #[arg(long, default_value_t = 2, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Pause a running campaign (no new deliveries; delivered updates finish).
    Pause {
        /// The campaign's id.
        id: i64,
    },
    /// Resume a paused or halted campaign.
    Resume {
        /// The campaign's id.
        id: i64,
    },
    /// Cancel a campaign for good (undelivered jobs are cancelled).
    Cancel {
        /// The campaign's id.
        id: i64,
    },
    /// Offer the update again to the devices whose job failed.
    Retry {
        /// The campaign's id.
        id: i64,
        /// Only jobs that failed for this reason (repeat for several), as 'campaigns show'
        /// lists them.
        #[arg(long = "reason", value_name = "REASON")]
        reasons: Vec<String>,
    },
    /// The campaign's jobs, one per device.
    Jobs {
        /// The campaign's id.
        id: i64,
        /// Only jobs in this state (waiting, pending, delivered, succeeded, failed, skipped,
        /// cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only failed jobs with this reason.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
}

/// `campaigns create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A campaign spec: JSON (the API's body) or, for a .toml file, the same keys in TOML.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// A label.
    #[arg(long)]
    name: Option<String>,
    /// The package's id.
    #[arg(long, value_name = "ID")]
    package: Option<i64>,
    /// Only devices of this model.
    #[arg(long)]
    model: Option<String>,
    /// Only devices now running this firmware version.
    #[arg(long = "fw-version", value_name = "VERSION")]
    fw_version: Option<String>,
    /// Only devices of this group.
    #[arg(long)]
    group: Option<String>,
    /// Cumulative wave sizes in percent, ending at 100 (e.g. 10,50,100).
    #[arg(long, value_delimiter = ',', value_name = "PCT,...")]
    waves: Option<Vec<u8>>,
    /// Percent of a wave's jobs that must succeed before the next wave is released.
    #[arg(long, value_name = "PCT")]
    success_threshold: Option<u8>,
    /// Percent of released jobs failed at which the campaign halts.
    #[arg(long, value_name = "PCT")]
    error_threshold: Option<u8>,
    /// Devices without a usable SIMFOTA card: required (their job fails) or optional (plain
    /// FUMO).
    #[arg(long, value_parser = ["required", "optional"])]
    card: Option<String>,
    /// Pending jobs not delivered by then fail: a UTC time (2026-12-24T18:00Z) or a duration
    /// from now (48h, 7d).
    #[arg(long, value_name = "WHEN")]
    deadline: Option<String>,
    /// Offer updates only inside this daily window, UTC (22:00-04:00 wraps midnight).
    #[arg(long, value_name = "HH:MM-HH:MM")]
    window: Option<String>,
    /// Pause the campaign when a wave's failures exceed this percentage.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
    max_failure_pct: Option<u8>,
    /// Offer the package also to devices already at or above it (a reinstall, or a downgrade
    /// left for the cards to judge); without it they are skipped.
    #[arg(long)]
    include_up_to_date: bool,
    /// Then follow its progress until it is no longer running.
    #[arg(long)]
    watch: bool,
}

/// Runs `ctl campaigns ...`.
pub fn run(ctx: &Context, c: Command) -> Result<()> {
    match c {
        Command::Create(a) => create(ctx, &a),
        Command::List { state, paging } => list(ctx, state, &paging),
        Command::Show {
            id, watch: false, ..
        } => {
            let v = get(ctx, id)?;
            if ctx.json {
                render::json(&v);
            } else {
                print_campaign(&v);
            }
            Ok(())
        }
        Command::Show {
            id,
            watch: true,
            interval,
        }
        | Command::Watch { id, interval } => watch(ctx, id, interval),
        Command::Pause { id } => action(ctx, id, "pause", "paused"),
        Command::Resume { id } => action(ctx, id, "resume", "resumed"),
        Command::Cancel { id } => action(ctx, id, "cancel", "cancelled"),
        Command::Retry { id, reasons } => retry(ctx, id, &reasons),
        Command::Jobs {
            id,
            state,
            reason,
            paging,
        } => jobs(ctx, id, state, reason, &paging),
    }
}

fn get(ctx: &Context, id: i64) -> Result<Value> {
    ctx.client()?
        .get(&format!("show campaign {id}"), &format!("/campaigns/{id}"))
}

/// The spec file as a JSON object.
fn read_spec(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::local(format!(
            "cannot read the campaign file {}: {e}",
            path.display()
        ))
    })?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let value: Value = if is_toml {
        toml::from_str(&text).map_err(|e| {
            Failure::local(format!(
                "the campaign file {} is not valid TOML: {}",
                path.display(),
                e.message().trim()
            ))
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| {
            Failure::local(format!(
                "the campaign file {} is not valid JSON: {e}",
                path.display()
            ))
        })?
    };
    match value {
        Value::Object(m) => Ok(m),
        _ => Err(Failure::local(format!(
            "the campaign file {} must hold one object (name, package_id, ...)",
            path.display()
        ))),
    }
}

/// The request body: the file's keys, then the flags.
fn spec(a: &CreateArgs) -> Result<Value> {
    let mut m = match &a.file {
        Some(f) => read_spec(f)?,
        None => Map::new(),
    };
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put("name", a.name.clone().map(Value::from));
    put("package_id", a.package.map(Value::from));
    put("target_model", a.model.clone().map(Value::from));
    put("target_fw", a.fw_version.clone().map(Value::from));
    put("target_group", a.group.clone().map(Value::from));
    put("waves", a.waves.clone().map(|w| json!(w)));
    put("success_threshold", a.success_threshold.map(Value::from));
    put("error_threshold", a.error_threshold.map(Value::from));
    put("card", a.card.clone().map(Value::from));
    put("max_failure_pct", a.max_failure_pct.map(Value::from));
    if a.include_up_to_date {
        put("include_up_to_date", Some(Value::from(true)));
    }
    if let Some(d) = &a.deadline {
        let ms = super::time::parse_deadline(d, now_ms())
            .map_err(|why| Failure::usage(format!("--deadline: {why}")))?;
        put("deadline_ms", Some(Value::from(ms)));
    }
    if let Some(w) = &a.window {
        let (start, end) = super::time::parse_window(w)
            .map_err(|why| Failure::usage(format!("--window: {why}")))?;
        put("window", Some(json!({ "start": start, "end": end })));
    }
    for key in ["name", "package_id"] {
        if !m.contains_key(key) {
            let flag = if key == "name" { "--name" } else { "--package" };
            return Err(Failure::usage(format!(
                "a campaign needs {key}: give {flag}, or {key} in --file"
            )));
        }
    }
    Ok(Value::Object(m))
}

fn create(ctx: &Context, a: &CreateArgs) -> Result<()> {
    let body = spec(a)?;
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let v = ctx
        .client()?
        .post(&format!("create campaign '{name}'"), "/campaigns", &body)?;
    let id = v["id"].as_i64();
    if ctx.json && !a.watch {
        render::json(&v);
    } else if !ctx.json {
        let p = &v["progress"];
        outln!(
            "created campaign {}: '{}' of package {} to {} devices ({})",
            text(&v, "id"),
            text(&v, "name"),
            text(&v, "package_id"),
            text(p, "total"),
            text(&v, "state")
        );
    }
    match (a.watch, id) {
        (true, Some(id)) => watch(ctx, id, 2),
        _ => Ok(()),
    }
}

fn list(ctx: &Context, state: Option<String>, paging: &Paging) -> Result<()> {
    let client = ctx.client()?;
    let listed = client.list("list campaigns", "/campaigns", &[("state", state)], paging)?;
    if ctx.json {
        render::json(&Value::Array(listed.items.clone()));
    } else {
        let now = now_ms();
        let mut t = Table::new(&[
            "ID",
            "NAME",
            "PACKAGE",
            "STATE",
            "SUCCEEDED",
            "FAILED",
            "SKIPPED",
            "WAVE",
            "UPDATED",
        ]);
        for c in &listed.items {
            let p = &c["progress"];
            t.row(vec![
                text(c, "id"),
                text(c, "name"),
                text(c, "package_id"),
                text(c, "state"),
                format!("{}/{}", num(p, "succeeded"), num(p, "total")),
                num(p, "failed").to_string(),
                skipped(c).to_string(),
                wave(c),
                when_short(c, "updated_ms", now),
            ]);
        }
        t.print("no campaigns");
    }
    super::devices::more(&listed.next);
    Ok(())
}

fn num(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or(0)
}

/// Skipped jobs (devices already at or above the package), where the server counts them.
fn skipped(c: &Value) -> i64 {
    c["skipped"]
        .as_i64()
        .or_else(|| c["progress"]["skipped"].as_i64())
        .unwrap_or(0)
}

/// `2/3`: the newest released wave of all.
fn wave(c: &Value) -> String {
    let waves = c["waves"].as_array().map_or(0, Vec::len);
    format!("{}/{}", num(c, "current_wave") + 1, waves.max(1))
}

/// One line of progress: the state and every count.
fn summary(c: &Value) -> String {
    let p = &c["progress"];
    let (total, released) = (num(p, "total"), num(p, "released"));
    let (ok, failed, cancelled, delivered) = (
        num(p, "succeeded"),
        num(p, "failed"),
        num(p, "cancelled"),
        num(p, "delivered"),
    );
    let skipped = skipped(c);
    let pending = (released - ok - failed - cancelled - delivered - skipped).max(0);
    let mut s = format!(
        "{} wave {}: {ok}/{total} succeeded, {failed} failed, {delivered} delivered, {pending} \
         pending, {} waiting",
        text(c, "state"),
        wave(c),
        (total - released).max(0)
    );
    if skipped > 0 {
        s.push_str(&format!(", {skipped} skipped"));
    }
    if cancelled > 0 {
        s.push_str(&format!(", {cancelled} cancelled"));
    }
    s
}

fn print_campaign(c: &Value) {
    let now = now_ms();
    let mut f = Fields::new();
    f.add("id", text(c, "id"));
    f.add("name", text(c, "name"));
    f.add("package", text(c, "package_id"));
    f.add("state", text(c, "state"));
    for key in ["halt_reason", "paused_reason"] {
        if c[key].is_string() {
            f.add("why", text(c, key));
        }
    }
    let mut targets = Vec::new();
    for (key, label) in [
        ("target_model", "model"),
        ("target_fw", "firmware"),
        ("target_group", "group"),
    ] {
        if let Some(v) = c[key].as_str() {
            targets.push(format!("{label} {}", render::clean(v)));
        }
    }
    f.add(
        "targets",
        if targets.is_empty() {
            "every device".to_owned()
        } else {
            targets.join(", ")
        },
    );
    f.add(
        "waves",
        format!(
            "{} % (cumulative)",
            c["waves"]
                .as_array()
                .map(|w| w.iter().map(render::cell).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ),
    );
    f.add(
        "thresholds",
        format!(
            "next wave at {}% succeeded, halt at {}% failed",
            text(c, "success_threshold"),
            text(c, "error_threshold")
        ),
    );
    if c["max_failure_pct"].is_number() {
        f.add(
            "auto-pause",
            format!(
                "when a wave's failures exceed {}%",
                text(c, "max_failure_pct")
            ),
        );
    }
    f.add("card", text(c, "card"));
    if c["include_up_to_date"] == true {
        f.add("up to date", "offered too (not skipped)".to_owned());
    }
    if c["deadline_ms"].is_number() {
        f.add("deadline", when_long(c, "deadline_ms", now));
    }
    if c["window"].is_object() {
        f.add(
            "window",
            format!(
                "{}-{} UTC daily",
                text(&c["window"], "start"),
                text(&c["window"], "end")
            ),
        );
    }
    f.add("progress", summary(c));
    f.add("created", when_long(c, "created_ms", now));
    f.add("updated", when_long(c, "updated_ms", now));
    f.print();
    // Each wave's jobs by state (`wave` counts from 0 on the wire, from 1 for people).
    if let Some(waves) = c["wave_progress"].as_array().filter(|w| !w.is_empty()) {
        outln!();
        let mut t = Table::new(&[
            "WAVE",
            "PENDING",
            "WAITING",
            "DELIVERED",
            "SUCCEEDED",
            "FAILED",
            "SKIPPED",
            "CANCELLED",
        ]);
        for w in waves {
            t.row(vec![
                w["wave"]
                    .as_i64()
                    .map_or_else(|| "-".to_owned(), |n| (n + 1).to_string()),
                text(w, "pending"),
                text(w, "waiting"),
                text(w, "delivered"),
                text(w, "succeeded"),
                text(w, "failed"),
                text(w, "skipped"),
                text(w, "cancelled"),
            ]);
        }
        t.print("");
    }
    if let Some(failures) = c["failures"].as_array().filter(|f| !f.is_empty()) {
        outln!();
        let mut t = Table::new(&["FAILED", "REASON"]);
        for r in failures {
            t.row(vec![text(r, "count"), text(r, "reason")]);
        }
        t.print("");
    }
}

fn action(ctx: &Context, id: i64, verb: &str, done: &str) -> Result<()> {
    let v = ctx.client()?.post(
        &format!("{verb} campaign {id}"),
        &format!("/campaigns/{id}/{verb}"),
        &json!({}),
    )?;
    if ctx.json {
        render::json(&v);
    } else if v.is_object() {
        outln!("campaign {id} {done}: {}", summary(&v));
    } else {
        outln!("campaign {id} {done}");
    }
    Ok(())
}

fn retry(ctx: &Context, id: i64, reasons: &[String]) -> Result<()> {
    let body = if reasons.is_empty() {
        json!({})
    } else {
        json!({ "reasons": reasons })
    };
    let v = ctx.client()?.post(
        &format!("retry the failed jobs of campaign {id}"),
        &format!("/campaigns/{id}/retry"),
        &body,
    )?;
    if ctx.json {
        render::json(&v);
    } else {
        outln!("campaign {id}: failed jobs offered again: {}", summary(&v));
    }
    Ok(())
}

fn jobs(
    ctx: &Context,
    id: i64,
    state: Option<String>,
    reason: Option<String>,
    paging: &Paging,
) -> Result<()> {
    let client = ctx.client()?;
    let listed = client.list(
        &format!("list the jobs of campaign {id}"),
        "/jobs",
        &[
            ("campaign", Some(id.to_string())),
            ("state", state),
            ("reason", reason),
        ],
        paging,
    )?;
    if ctx.json {
        render::json(&Value::Array(listed.items.clone()));
    } else {
        let now = now_ms();
        let mut t = Table::new(&[
            "JOB", "IMEI", "WAVE", "STATE", "RESULT", "RECEIPT", "UPDATED", "DETAIL",
        ]);
        for j in &listed.items {
            t.row(vec![
                text(j, "id"),
                text(j, "imei"),
                j["wave"]
                    .as_i64()
                    .map_or_else(|| "-".to_owned(), |n| (n + 1).to_string()),
                text(j, "state"),
                text(j, "result_code"),
                text(j, "receipt_status"),
                when_short(j, "updated_ms", now),
                text(j, "detail"),
            ]);
        }
        t.print(&format!("campaign {id}: no jobs"));
    }
    super::devices::more(&listed.next);
    Ok(())
}

/// Follows the campaign until it is no longer running. At a terminal, one line rewritten in
/// place; otherwise a line at each change (with `--json`, the campaign as one JSON line).
fn watch(ctx: &Context, id: i64, interval: u64) -> Result<()> {
    let client = ctx.client()?;
    let tty = !ctx.json && std::io::stdout().is_terminal();
    let mut last = String::new();
    let mut misses = 0u32;
    loop {
        let c = match client.get(&format!("watch campaign {id}"), &format!("/campaigns/{id}")) {
            Ok(c) => {
                misses = 0;
                c
            }
            // A server restarting, or a load balancer between replicas: keep looking a while.
            Err(f) if f.class == Class::Unreachable && misses < 30 => {
                misses += 1;
                errln!("simfota: {} (trying again)", f.message);
                std::thread::sleep(Duration::from_secs(interval));
                continue;
            }
            Err(f) => return Err(f),
        };
        let state = c["state"].as_str().unwrap_or_default().to_owned();
        if ctx.json {
            let line = c.to_string();
            if line != last {
                outln!("{line}");
                last = line;
            }
        } else {
            let line = summary(&c);
            if tty {
                out!("\r\x1b[2K{}", line);
            } else if line != last {
                outln!("{} {line}", super::time::clock(now_ms()));
            }
            last = line;
        }
        if state != "running" {
            if tty {
                outln!();
            }
            if !ctx.json {
                outln!();
                print_campaign(&c);
            }
            return match state.as_str() {
                "completed" => Ok(()),
                other => {
                    let why = c["paused_reason"]
                        .as_str()
                        .or_else(|| c["halt_reason"].as_str())
                        .map(|w| format!(": {}", render::clean(w)))
                        .unwrap_or_default();
                    let next = match other {
                        "cancelled" => String::new(),
                        _ => format!(" (resume it with 'simfota ctl campaigns resume {id}')"),
                    };
                    Err(Failure::new(
                        Class::Stopped,
                        format!("campaign {id} is {other}{why}{next}"),
                    ))
                }
            };
        }
        std::thread::sleep(Duration::from_secs(interval));
    }
}
