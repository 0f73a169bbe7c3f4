//! `simfota ctl dashboard`: a one-time sign-in link to the dashboard for the configured token
//! (`POST /api/v1/ui/links`), so the token itself never goes in a URL or a browser's history.

use serde_json::json;

use super::render::{self, text};
use super::{Context, Result};

/// `simfota ctl dashboard`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dashboard page to land on, e.g. /ui/campaigns/3 (default: the overview).
    #[arg(value_name = "PAGE")]
    page: Option<String>,
}

/// Runs `ctl dashboard`.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let body = match &a.page {
        Some(p) => json!({ "next": p }),
        None => json!({}),
    };
    let v = ctx
        .client()?
        .post("open a dashboard sign-in link", "/ui/links", &body)?;
    if ctx.json {
        render::json(&v);
    } else {
        errln!(
            "a one-time sign-in link, valid for {}s:",
            text(&v, "expires_in_secs")
        );
        outln!("{}", text(&v, "url"));
    }
    Ok(())
}
