//! `simfota ctl devices`: the fleet's devices (`/api/v1/devices`).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::encode;
use super::render::{self, Fields, Table, text, when_long, when_short};
use super::time::now_ms;
use super::{Context, Failure, Paging, Result};

/// `simfota ctl devices ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List devices; filters combine.
    #[command(visible_alias = "ls")]
    List {
        /// Only this model (DevInfo/Mod).
        #[arg(long)]
        model: Option<String>,
        /// Only members of this group.
        #[arg(long)]
        group: Option<String>,
        /// Only devices running this firmware version.
        #[arg(long = "fw-version", value_name = "VERSION")]
        fw_version: Option<String>,
        /// Only IMEIs starting with these digits.
        #[arg(long, value_name = "DIGITS")]
        imei_prefix: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One device and its jobs, newest first.
    Show {
        /// The device's IMEI.
        imei: String,
    },
    /// Register the devices of a CSV provisioning file, all or none.
    Import {
        /// The file: a header line naming the columns (imei, username, password,
        /// server_password; auth, model, manufacturer, fw_version, notify_addr, groups, nonce).
        file: PathBuf,
    },
    /// Delete devices (their unfinished jobs fail; card-log entries and proofs are kept).
    #[command(visible_alias = "rm")]
    Delete {
        /// The IMEIs.
        #[arg(required = true)]
        imei: Vec<String>,
    },
    /// Wake a device now (DM package 0 to its notification address).
    Notify {
        /// The device's IMEI.
        imei: String,
    },
}

/// Runs `ctl devices ...`.
pub fn run(ctx: &Context, c: Command) -> Result<()> {
    match c {
        Command::List {
            model,
            group,
            fw_version,
            imei_prefix,
            paging,
        } => list(ctx, model, group, fw_version, imei_prefix, &paging),
        Command::Show { imei } => show(ctx, &imei),
        Command::Import { file } => import(ctx, &file),
        Command::Delete { imei } => delete(ctx, &imei),
        Command::Notify { imei } => notify(ctx, &imei),
    }
}

fn list(
    ctx: &Context,
    model: Option<String>,
    group: Option<String>,
    version: Option<String>,
    prefix: Option<String>,
    paging: &Paging,
) -> Result<()> {
    let client = ctx.client()?;
    let listed = client.list(
        "list devices",
        "/devices",
        &[
            ("model", model),
            ("group", group),
            ("version", version),
            ("q", prefix),
        ],
        paging,
    )?;
    if ctx.json {
        render::json(&Value::Array(listed.items.clone()));
    } else {
        let now = now_ms();
        let mut t = Table::new(&["IMEI", "MODEL", "FIRMWARE", "CARD", "GROUPS", "LAST SEEN"]);
        for d in &listed.items {
            t.row(vec![
                text(d, "imei"),
                text(d, "model"),
                text(d, "fw_version"),
                text(d, "iccid"),
                text(d, "groups"),
                d["last_seen_ms"]
                    .as_i64()
                    .map_or_else(|| "never".to_owned(), |ms| super::time::short(ms, now)),
            ]);
        }
        t.print("no devices");
    }
    more(&listed.next);
    Ok(())
}

/// Says on stderr that a list goes on, and how to get the rest.
pub fn more(next: &Option<String>) {
    if let Some(c) = next {
        errln!("more follow: add --all, or --cursor {c} for the next page");
    }
}

fn show(ctx: &Context, imei: &str) -> Result<()> {
    let client = ctx.client()?;
    let v = client.get(
        &format!("show device {imei}"),
        &format!("/devices/{}", encode(imei)),
    )?;
    if ctx.json {
        render::json(&v);
        return Ok(());
    }
    let d = &v["device"];
    let now = now_ms();
    let mut f = Fields::new();
    f.add("imei", text(d, "imei"));
    f.add("model", text(d, "model"));
    f.add("manufacturer", text(d, "manufacturer"));
    f.add("firmware", text(d, "fw_version"));
    f.add("card", text(d, "iccid"));
    f.add("groups", text(d, "groups"));
    f.add("notify address", text(d, "notify_addr"));
    f.add(
        "DM user",
        format!("{} ({})", text(d, "username"), text(d, "auth")),
    );
    f.add("registered by", text(d, "enrolled_by"));
    f.add("last seen", when_long(d, "last_seen_ms", now));
    f.print();
    let jobs = v["jobs"].as_array().map(Vec::as_slice).unwrap_or_default();
    outln!();
    let mut t = Table::new(&[
        "JOB", "CAMPAIGN", "STATE", "RESULT", "RECEIPT", "UPDATED", "DETAIL",
    ]);
    for j in jobs {
        t.row(job_row(j, now));
    }
    t.print("no jobs");
    Ok(())
}

/// A job as a table row: id, campaign, state, result, receipt, updated, detail.
pub fn job_row(j: &Value, now: i64) -> Vec<String> {
    vec![
        text(j, "id"),
        text(j, "campaign_id"),
        text(j, "state"),
        text(j, "result_code"),
        text(j, "receipt_status"),
        when_short(j, "updated_ms", now),
        text(j, "detail"),
    ]
}

fn import(ctx: &Context, file: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(file).map_err(|e| {
        Failure::local(format!(
            "cannot read the device file {}: {e}",
            file.display()
        ))
    })?;
    let client = ctx.client()?;
    let len = bytes.len() as u64;
    let v = client.post_stream(
        &format!("import devices from {}", file.display()),
        "/devices/bulk",
        "text/csv",
        len,
        &mut &bytes[..],
    )?;
    if ctx.json {
        render::json(&v);
    } else {
        outln!(
            "imported {} devices from {}",
            v["created"].as_i64().unwrap_or(0),
            file.display()
        );
    }
    Ok(())
}

fn delete(ctx: &Context, imeis: &[String]) -> Result<()> {
    let client = ctx.client()?;
    let mut deleted = Vec::new();
    let mut first_failure: Option<Failure> = None;
    for imei in imeis {
        match client.delete(
            &format!("delete device {imei}"),
            &format!("/devices/{}", encode(imei)),
        ) {
            Ok(()) => {
                if !ctx.json {
                    outln!("deleted device {imei} (its card-log entries and proofs are kept)");
                }
                deleted.push(imei.clone());
            }
            Err(f) => {
                // Every IMEI is tried; each refusal is said, the first decides the status.
                if imeis.len() > 1 {
                    errln!("simfota: {}", f.message);
                }
                first_failure.get_or_insert(f);
            }
        }
    }
    if ctx.json {
        render::json(&json!({ "deleted": deleted }));
    }
    match first_failure {
        Some(f) if imeis.len() > 1 => Err(Failure::new(
            f.class,
            format!("deleted {} of {} devices", deleted.len(), imeis.len()),
        )),
        Some(f) => Err(f),
        None => Ok(()),
    }
}

fn notify(ctx: &Context, imei: &str) -> Result<()> {
    let client = ctx.client()?;
    let v = client.post(
        &format!("notify device {imei}"),
        &format!("/devices/{}/notify", encode(imei)),
        &json!({}),
    )?;
    if ctx.json {
        render::json(&v);
    } else {
        outln!(
            "notified device {imei} (session {})",
            text(&v, "session_id")
        );
    }
    Ok(())
}
