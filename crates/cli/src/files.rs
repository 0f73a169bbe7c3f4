//! File input and output shared by the subcommands: reads that name the file in their
//! error, and writes that are atomic (a temporary file in the target directory, synced, then
//! renamed over the target), so a crash or a refusal never leaves a half-written file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Reads a whole file; the error names the file and what it was meant to be.
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Reads a whole text file (PEM).
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    let bytes = read(path, what)?;
    String::from_utf8(bytes).with_context(|| format!("{what} {} is not text", path.display()))
}

/// Whether an existing file may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Refuse if the file exists.
    Refuse,
    /// Replace it.
    Allow,
}

/// Writes `bytes` to `path` atomically with the given Unix permission bits.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, overwrite: Overwrite) -> Result<()> {
    if overwrite == Overwrite::Refuse && path.exists() {
        bail!(
            "{} already exists (use --force to replace it)",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = || format!("cannot write {}", path.display());
    // The temporary file is created with mode 0600, so a secret is never readable by others,
    // not even for a moment.
    let mut tmp = tempfile::Builder::new()
        .prefix(".simfota-")
        .tempfile_in(dir)
        .with_context(fail)?;
    tmp.write_all(bytes).with_context(fail)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .with_context(fail)?;
    tmp.as_file().sync_all().with_context(fail)?;
    match overwrite {
        Overwrite::Allow => tmp.persist(path).map(drop).map_err(|e| e.error),
        // No-clobber rename: a file that appeared since the check above is not replaced.
        Overwrite::Refuse => tmp.persist_noclobber(path).map(drop).map_err(|e| e.error),
    }
    .with_context(fail)?;
    Ok(())
}
