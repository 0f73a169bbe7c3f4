//! `simfota ctl cards`: the subscribers' cards, their verified logs and the proof bundles of
//! their updates (`/api/v1/cards`, `/api/v1/updates/{id}/proof`).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value;

use super::client::encode;
use super::render::{self, Fields, Table, text};
use super::time::now_ms;
use super::{Context, Failure, Paging, Result};

/// `simfota ctl cards ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List cards.
    #[command(visible_alias = "ls")]
    List {
        /// Only ICCIDs starting with these digits.
        #[arg(long, value_name = "DIGITS")]
        iccid_prefix: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One card: certificate, log state, authorized servers, policy, originators, admin queue.
    Show {
        /// The card's ICCID.
        iccid: String,
    },
    /// The card's log as the server verified and stored it, oldest entry first.
    Log {
        /// The card's ICCID.
        iccid: String,
    },
    /// Export the proof bundle of one of the card's updates (check it offline with
    /// 'simfota proof verify').
    Proof {
        /// The card's ICCID.
        iccid: String,
        /// The update id (hex); default: the newest update in the card's log.
        #[arg(long, value_name = "HEX")]
        update: Option<String>,
        /// Write the bundle here (atomically) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long, requires = "out")]
        force: bool,
    },
}

/// Runs `ctl cards ...`.
pub fn run(ctx: &Context, c: Command) -> Result<()> {
    match c {
        Command::List {
            iccid_prefix,
            paging,
        } => list(ctx, iccid_prefix, &paging),
        Command::Show { iccid } => show(ctx, &iccid),
        Command::Log { iccid } => log(ctx, &iccid),
        Command::Proof {
            iccid,
            update,
            out,
            force,
        } => proof(ctx, &iccid, update, out, force),
    }
}

fn list(ctx: &Context, prefix: Option<String>, paging: &Paging) -> Result<()> {
    let client = ctx.client()?;
    let listed = client.list("list cards", "/cards", &[("q", prefix)], paging)?;
    if ctx.json {
        render::json(&Value::Array(listed.items.clone()));
    } else {
        let mut t = Table::new(&["ICCID", "IMSI", "CERTIFICATE", "LOG HEAD", "ACKED", "LOG"]);
        for c in &listed.items {
            t.row(vec![
                text(c, "iccid"),
                text(c, "imsi"),
                text(c, "cert_status"),
                text(c, "log_head_seq"),
                text(c, "acked_seq"),
                text(c, "log_status"),
            ]);
        }
        t.print("no cards");
    }
    super::devices::more(&listed.next);
    Ok(())
}

fn show(ctx: &Context, iccid: &str) -> Result<()> {
    let client = ctx.client()?;
    let path = format!("/cards/{}", encode(iccid));
    let card = client.get(&format!("show card {iccid}"), &path)?;
    let admin = client.get(
        &format!("list the admin commands of card {iccid}"),
        &format!("{path}/admin"),
    )?;
    if ctx.json {
        let mut v = card;
        if let Value::Object(m) = &mut v {
            m.insert("admin_commands".into(), admin);
        }
        render::json(&v);
        return Ok(());
    }
    let mut f = Fields::new();
    f.add("iccid", text(&card, "iccid"));
    f.add("imsi", text(&card, "imsi"));
    f.add("certificate", text(&card, "cert_status"));
    f.add("card key", text(&card, "card_pub"));
    f.add(
        "log",
        format!(
            "{} (stored up to {}, acknowledged up to {})",
            text(&card, "log_status"),
            text(&card, "log_head_seq"),
            text(&card, "acked_seq")
        ),
    );
    f.add("pin tries", pin_tries(&card["pin"], now_ms()));
    let p = &card["policy"];
    if p.is_null() {
        f.add("policy", "not read yet");
    } else {
        f.add(
            "policy",
            format!(
                "unauthorized servers: {}, integrity: {}",
                text(p, "unauthorized"),
                text(p, "integrity")
            ),
        );
    }
    f.print();
    outln!();
    let mut t = Table::new(&["SERVER", "RIGHTS", "KEY"]);
    for s in card["servers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        t.row(vec![text(s, "id"), text(s, "rights"), text(s, "key")]);
    }
    t.print("authorized servers: not read yet or none");
    outln!();
    let mut t = Table::new(&["ORIGINATOR", "KEY"]);
    for o in card["originators"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        t.row(vec![text(o, "id"), text(o, "key")]);
    }
    t.print("trusted originators: not read yet or none");
    let commands = admin.as_array().map(Vec::as_slice).unwrap_or_default();
    if !commands.is_empty() {
        outln!();
        let mut t = Table::new(&["ADMIN", "STATE", "RESULT", "NOTE"]);
        for a in commands {
            t.row(vec![
                text(a, "id"),
                text(a, "state"),
                text(a, "result"),
                text(a, "note"),
            ]);
        }
        t.print("");
    }
    Ok(())
}

/// The card's PIN counter (the card view's `pin`) in words: `2 of 3 left, as of <UTC> (3m
/// ago)`, `blocked (no try left), as of …`, or `not reported yet`.
fn pin_tries(pin: &Value, now: i64) -> String {
    let Some(left) = pin["tries_left"].as_u64() else {
        return "not reported yet".to_owned();
    };
    let count = if pin["blocked"].as_bool() == Some(true) {
        "blocked (no try left)".to_owned()
    } else {
        match pin["max_tries"].as_u64() {
            Some(max) => format!("{left} of {max} left"),
            None => format!("{left} left (maximum not stated)"),
        }
    };
    match pin["reported_ms"].as_i64() {
        Some(ms) => format!("{count}, as of {}", super::time::long(ms, now)),
        None => count,
    }
}

/// A card-log entry's event with its details, in words.
fn event(e: &Value) -> String {
    let mut s = text(e, "event");
    if let Some(r) = e["deny_reason"].as_str() {
        s.push_str(&format!(": {}", render::clean(r)));
    }
    if e["free_device"].as_bool() == Some(true) {
        s.push_str(" (free device)");
    }
    match e["consent_pin_verified"].as_bool() {
        Some(true) => s.push_str(" (PIN verified)"),
        Some(false) => s.push_str(" (no PIN)"),
        None => {}
    }
    s
}

fn log(ctx: &Context, iccid: &str) -> Result<()> {
    let client = ctx.client()?;
    let v = client.get(
        &format!("read the log of card {iccid}"),
        &format!("/cards/{}/log", encode(iccid)),
    )?;
    if ctx.json {
        render::json(&v);
        return Ok(());
    }
    let now = now_ms();
    let mut t = Table::new(&[
        "SEQ", "DATE", "EVENT", "RELEASE", "SERVER", "IMEI", "RESULT", "UPDATE", "VERIFIED",
    ]);
    for e in v["entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        // The card's trusted time (the newest verified token's iat, seconds), else the
        // device's clock as the card recorded it.
        let date = e["trusted_time"]
            .as_i64()
            .or_else(|| e["device_time"].as_i64())
            .map_or_else(
                || "-".to_owned(),
                |s| super::time::short(s.saturating_mul(1000), now),
            );
        let release = match (e["release_name"].as_str(), e["release_version"].as_str()) {
            (Some(n), Some(v)) => render::clean(&format!("{n} {v}")),
            (None, Some(v)) => render::clean(v),
            (Some(n), None) => render::clean(n),
            (None, None) => "-".to_owned(),
        };
        let update: String = text(e, "update_id").chars().take(12).collect();
        t.row(vec![
            text(e, "seq"),
            date,
            event(e),
            release,
            text(e, "server_id"),
            text(e, "imei"),
            text(e, "fumo_result"),
            update,
            text(e, "verified"),
        ]);
    }
    t.print(&format!("card {iccid}: no log entry stored yet"));
    Ok(())
}

fn proof(
    ctx: &Context,
    iccid: &str,
    update: Option<String>,
    out: Option<PathBuf>,
    force: bool,
) -> Result<()> {
    let client = ctx.client()?;
    let update = match update {
        Some(u) => u,
        None => {
            let v = client.get(
                &format!("read the log of card {iccid}"),
                &format!("/cards/{}/log", encode(iccid)),
            )?;
            v["entries"]
                .as_array()
                .and_then(|es| es.iter().rev().find_map(|e| e["update_id"].as_str()))
                .map(str::to_owned)
                .ok_or_else(|| {
                    Failure::new(
                        super::Class::NotFound,
                        format!("card {iccid}: its stored log holds no update yet"),
                    )
                })?
        }
    };
    let (_, body) = client.get_raw(
        &format!("export the proof of update {update}"),
        &format!("/updates/{}/proof", encode(&update)),
    )?;
    match out {
        Some(path) => {
            let overwrite = if force {
                crate::files::Overwrite::Allow
            } else {
                crate::files::Overwrite::Refuse
            };
            crate::files::write_atomic(&path, body.as_bytes(), 0o644, overwrite)
                .map_err(|e| Failure::local(format!("{e:#}")))?;
            if ctx.json {
                render::json(&serde_json::json!({
                    "update_id": update, "file": path.display().to_string(),
                }));
            } else {
                outln!(
                    "wrote the proof of update {update} (card {iccid}) to {}; check it with \
                     'simfota proof verify {} --issuer-pub ISSUER.pem'",
                    path.display(),
                    path.display()
                );
            }
        }
        None => {
            out!("{body}");
            if !body.ends_with('\n') {
                outln!();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_tries_read_in_words() {
        let now = 1_796_428_800_000;
        let at = now - 180_000;
        let pin = |v: Value| pin_tries(&v, now);
        assert_eq!(
            pin(
                serde_json::json!({"tries_left": 2, "max_tries": 3, "blocked": false, "reported_ms": at})
            ),
            "2 of 3 left, as of 2026-12-04 23:57:00 UTC (3m ago)"
        );
        assert_eq!(
            pin(
                serde_json::json!({"tries_left": 0, "max_tries": 3, "blocked": true, "reported_ms": at})
            ),
            "blocked (no try left), as of 2026-12-04 23:57:00 UTC (3m ago)"
        );
        assert_eq!(
            pin(
                serde_json::json!({"tries_left": 5, "max_tries": null, "blocked": false, "reported_ms": at})
            ),
            "5 left (maximum not stated), as of 2026-12-04 23:57:00 UTC (3m ago)"
        );
        assert_eq!(pin(Value::Null), "not reported yet");
    }
}
