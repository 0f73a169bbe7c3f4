//! `simfota ctl audit`: the audit log, newest first (`/api/v1/audit`): every state-changing
//! request and dashboard sign-in, who, what, the answer, when, from where.

use serde_json::Value;

use super::render::{self, Table, text, when_short};
use super::time::now_ms;
use super::{Context, Paging, Result};

/// `simfota ctl audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    paging: Paging,
}

/// Runs `ctl audit`.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let listed = ctx
        .client()?
        .list("read the audit log", "/audit", &[], &a.paging)?;
    if ctx.json {
        render::json(&Value::Array(listed.items.clone()));
    } else {
        let now = now_ms();
        let mut t = Table::new(&["ID", "WHEN", "WHO", "ROLE", "ACTION", "STATUS", "FROM"]);
        for e in &listed.items {
            t.row(vec![
                text(e, "id"),
                when_short(e, "created_ms", now),
                text(e, "token_name"),
                text(e, "role"),
                text(e, "action"),
                text(e, "status"),
                text(e, "source"),
            ]);
        }
        t.print("the audit log is empty");
    }
    super::devices::more(&listed.next);
    Ok(())
}
