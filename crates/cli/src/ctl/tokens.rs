//! `simfota ctl tokens`: the API tokens and their roles (admin; `/api/v1/tokens`).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use super::render::{self, Table, text, when_short};
use super::time::now_ms;
use super::{Class, Context, Failure, Paging, Result};

/// `simfota ctl tokens ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the tokens (never the tokens themselves).
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Issue a new token; it is shown (or written) this once.
    Issue {
        /// A name for people: who holds it, what for.
        name: String,
        /// viewer (reads), operator (runs the fleet) or admin (also tokens, card admin).
        #[arg(long, default_value = "operator", value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Write the token to this file (mode 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long, requires = "out")]
        force: bool,
    },
    /// Revoke a token by id or name; its dashboard sessions end.
    Revoke {
        /// The token's id, or its name.
        token: String,
    },
}

/// Runs `ctl tokens ...`.
pub fn run(ctx: &Context, c: Command) -> Result<()> {
    match c {
        Command::List { paging } => list(ctx, &paging),
        Command::Issue {
            name,
            role,
            out,
            force,
        } => issue(ctx, &name, &role, out, force),
        Command::Revoke { token } => revoke(ctx, &token),
    }
}

fn list(ctx: &Context, paging: &Paging) -> Result<()> {
    let listed = ctx.client()?.list("list tokens", "/tokens", &[], paging)?;
    if ctx.json {
        render::json(&Value::Array(listed.items.clone()));
    } else {
        let now = now_ms();
        let mut t = Table::new(&["ID", "NAME", "ROLE", "CREATED", "STATE"]);
        for k in &listed.items {
            t.row(vec![
                text(k, "id"),
                text(k, "name"),
                text(k, "role"),
                when_short(k, "created_ms", now),
                if k["revoked"].as_bool() == Some(true) {
                    "revoked"
                } else {
                    "live"
                }
                .to_owned(),
            ]);
        }
        t.print("no tokens");
    }
    super::devices::more(&listed.next);
    Ok(())
}

fn issue(ctx: &Context, name: &str, role: &str, out: Option<PathBuf>, force: bool) -> Result<()> {
    let v = ctx.client()?.post(
        &format!("issue token '{name}'"),
        "/tokens",
        &json!({ "name": name, "role": role }),
    )?;
    let token = v["token"].as_str().unwrap_or_default();
    let id = text(&v, "id");
    match out {
        Some(path) => {
            let overwrite = if force {
                crate::files::Overwrite::Allow
            } else {
                crate::files::Overwrite::Refuse
            };
            let written = crate::files::write_atomic(
                &path,
                format!("{token}\n").as_bytes(),
                0o600,
                overwrite,
            );
            if let Err(e) = written {
                // The token exists now: say so, or it would stay live unknown to anyone.
                return Err(Failure::local(format!(
                    "token {id} '{name}' was issued but not written: {e:#} (revoke it with \
                     'simfota ctl tokens revoke {id}')"
                )));
            }
            if ctx.json {
                render::json(&json!({
                    "id": v["id"], "role": v["role"], "file": path.display().to_string(),
                }));
            } else {
                outln!(
                    "issued token {id} '{}' with role {role}, written to {} (mode 0600)",
                    render::clean(name),
                    path.display()
                );
            }
        }
        None => {
            if ctx.json {
                render::json(&v);
            } else {
                errln!(
                    "issued token {id} '{}' with role {role}; it is shown this once:",
                    render::clean(name)
                );
                outln!("{token}");
            }
        }
    }
    Ok(())
}

fn revoke(ctx: &Context, which: &str) -> Result<()> {
    let client = ctx.client()?;
    let id = match which.parse::<i64>() {
        Ok(id) => id,
        Err(_) => {
            let every = Paging {
                limit: None,
                cursor: None,
                all: true,
                sort: None,
            };
            let listed = client.list("list tokens", "/tokens", &[], &every)?;
            let live: Vec<&Value> = listed
                .items
                .iter()
                .filter(|t| t["name"].as_str() == Some(which) && t["revoked"] != json!(true))
                .collect();
            match live.as_slice() {
                [one] => one["id"].as_i64().unwrap_or_default(),
                [] => {
                    return Err(Failure::new(
                        Class::NotFound,
                        format!("revoke token '{which}': no live token has that name"),
                    ));
                }
                many => {
                    let ids: Vec<String> = many.iter().map(|t| text(t, "id")).collect();
                    return Err(Failure::usage(format!(
                        "revoke token '{which}': {} live tokens have that name (ids {}); give \
                         the id",
                        many.len(),
                        ids.join(", ")
                    )));
                }
            }
        }
    };
    client.delete(&format!("revoke token {which}"), &format!("/tokens/{id}"))?;
    if ctx.json {
        render::json(&json!({ "revoked": id }));
    } else {
        outln!("revoked token {id}");
    }
    Ok(())
}
