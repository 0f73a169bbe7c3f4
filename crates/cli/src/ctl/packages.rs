//! `simfota ctl packages`: signed SUIT packages on the server (`/api/v1/packages`).
//!
//! An upload streams its files: the multipart body is assembled as it is sent (its length
//! declared up front from the files' sizes), so a package of hundreds of MiB is never held in
//! memory.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};

use super::progress::{Counting, Mode};
use super::render::{self, Fields, Table, text, when_long, when_short};
use super::time::now_ms;
use super::{Context, Failure, Paging, Result};

/// `simfota ctl packages ...`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List packages.
    #[command(visible_alias = "ls")]
    List {
        /// Only release names starting with this text.
        #[arg(long, value_name = "TEXT")]
        name_prefix: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One package and its download URLs.
    Show {
        /// The package's id.
        id: i64,
    },
    /// Upload a package: its SUIT envelope, and its payload unless the envelope carries it.
    Upload {
        /// The SUIT envelope ('simfota pack build --out').
        envelope: PathBuf,
        /// The payload the manifest names by URI (the image, or the delta).
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
    },
    /// Delete a package no unfinished campaign uses.
    #[command(visible_alias = "rm")]
    Delete {
        /// The package's id.
        id: i64,
    },
}

/// Runs `ctl packages ...`.
pub fn run(ctx: &Context, c: Command) -> Result<()> {
    match c {
        Command::List {
            name_prefix,
            paging,
        } => list(ctx, name_prefix, &paging),
        Command::Show { id } => show(ctx, id),
        Command::Upload { envelope, payload } => upload(ctx, &envelope, payload.as_deref()),
        Command::Delete { id } => {
            ctx.client()?
                .delete(&format!("delete package {id}"), &format!("/packages/{id}"))?;
            if ctx.json {
                render::json(&json!({ "deleted": id }));
            } else {
                outln!("deleted package {id}");
            }
            Ok(())
        }
    }
}

fn kind(p: &Value) -> &'static str {
    if p["precursor_digest"].is_string() {
        "delta"
    } else {
        "full"
    }
}

fn list(ctx: &Context, prefix: Option<String>, paging: &Paging) -> Result<()> {
    let client = ctx.client()?;
    let listed = client.list("list packages", "/packages", &[("q", prefix)], paging)?;
    if ctx.json {
        render::json(&Value::Array(listed.items.clone()));
    } else {
        let now = now_ms();
        let mut t = Table::new(&[
            "ID",
            "NAME",
            "VERSION",
            "SEQUENCE",
            "KIND",
            "IMAGE",
            "ORIGINATOR",
            "UPLOADED",
        ]);
        for p in &listed.items {
            t.row(vec![
                text(p, "id"),
                text(p, "name"),
                text(p, "version"),
                text(p, "sequence"),
                kind(p).to_owned(),
                p["image_size"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), render::bytes),
                text(p, "originator"),
                when_short(p, "created_ms", now),
            ]);
        }
        t.print("no packages");
    }
    super::devices::more(&listed.next);
    Ok(())
}

fn show(ctx: &Context, id: i64) -> Result<()> {
    let v = ctx
        .client()?
        .get(&format!("show package {id}"), &format!("/packages/{id}"))?;
    if ctx.json {
        render::json(&v);
        return Ok(());
    }
    print_package(&v["package"]);
    let mut f = Fields::new();
    f.add("envelope URL", text(&v["urls"], "envelope"));
    f.add("payload URL", text(&v["urls"], "payload"));
    f.print();
    Ok(())
}

fn print_package(p: &Value) {
    let mut f = Fields::new();
    f.add("id", text(p, "id"));
    f.add("name", text(p, "name"));
    f.add("version", text(p, "version"));
    f.add("sequence", text(p, "sequence"));
    f.add("kind", kind(p));
    f.add("originator", text(p, "originator"));
    f.add("vendor id", text(p, "vendor_id"));
    f.add("class id", text(p, "class_id"));
    f.add(
        "image",
        format!(
            "{} ({}), sha256 {}",
            p["image_size"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), render::bytes),
            text(p, "image_size"),
            text(p, "image_digest")
        ),
    );
    if kind(p) == "delta" {
        f.add(
            "precursor",
            format!("sha256 {}", text(p, "precursor_digest")),
        );
    }
    f.add("manifest", format!("sha256 {}", text(p, "manifest_digest")));
    f.add("uploaded", when_long(p, "created_ms", now_ms()));
    f.print();
}

/// One part of the form: its header, then a file of `len` bytes.
struct Part {
    head: Vec<u8>,
    file: File,
    len: u64,
}

fn part(boundary: &str, name: &str, path: &Path) -> Result<Part> {
    let file = File::open(path)
        .map_err(|e| Failure::local(format!("cannot read the {name} {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .map_err(|e| Failure::local(format!("cannot read the {name} {}: {e}", path.display())))?
        .len();
    // RFC 7578 §4.2: the part's name; the file name is a fixed token (the server reads the
    // name only), so no path text has to be quoted into the header.
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    Ok(Part { head, file, len })
}

fn upload(ctx: &Context, envelope: &Path, payload: Option<&Path>) -> Result<()> {
    let client = ctx.client()?;
    let boundary = format!("simfota-{}", uuid::Uuid::new_v4().simple());
    let mut parts = vec![part(&boundary, "envelope", envelope)?];
    if let Some(p) = payload {
        parts.push(part(&boundary, "payload", p)?);
    }
    let tail = format!("--{boundary}--\r\n").into_bytes();
    let total: u64 = parts
        .iter()
        .map(|p| p.head.len() as u64 + p.len + 2)
        .sum::<u64>()
        + tail.len() as u64;
    // The body, in order: each part's header, its file, CRLF; then the closing boundary.
    let mut body: Box<dyn Read> = Box::new(Cursor::new(Vec::new()));
    for p in parts {
        body = Box::new(
            body.chain(Cursor::new(p.head))
                .chain(p.file.take(p.len))
                .chain(Cursor::new(b"\r\n".to_vec())),
        );
    }
    let body = body.chain(Cursor::new(tail));
    let label = format!(
        "uploading {}",
        payload
            .unwrap_or(envelope)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let mut counting = Counting::new(body, &label, total, Mode::pick(ctx.json));
    let result = client.post_stream(
        &format!("upload package {}", envelope.display()),
        "/packages",
        &format!("multipart/form-data; boundary={boundary}"),
        total,
        &mut counting,
    );
    counting.finish();
    let p = result?;
    if ctx.json {
        render::json(&p);
    } else {
        let release = match p["name"].as_str().filter(|n| !n.is_empty()) {
            Some(name) => format!("{} {}", render::clean(name), text(&p, "version")),
            None => format!("version {}", text(&p, "version")),
        };
        outln!(
            "uploaded package {}: {release} (sequence {})",
            text(&p, "id"),
            text(&p, "sequence")
        );
    }
    Ok(())
}
