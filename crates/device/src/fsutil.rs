//! Durable file writes: temp file, fsync, rename, fsync of the folder.
//!
//! Every state file of the agent (boot-control record, FUMO job, download metadata) and every slot
//! image is replaced through [`write_atomic`] or [`commit_file`], so a power cut leaves either the
//! old or the new content, never a mix. [`Faults`] lets tests cut the power before any step.

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Power-cut injection: the `n`-th durable step (counting from 0) fails as if the power went off
/// just before it. The default plan never fails.
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    fail_at: Option<u32>,
    steps: Cell<u32>,
}

impl Faults {
    /// A plan that fails at step `n`.
    #[cfg(test)]
    pub(crate) fn at(n: u32) -> Self {
        Faults {
            fail_at: Some(n),
            steps: Cell::new(0),
        }
    }

    /// How many steps ran (or were attempted) so far.
    #[cfg(test)]
    pub(crate) fn steps(&self) -> u32 {
        self.steps.get()
    }

    /// Counts one step; fails when this is the step chosen for the power cut.
    pub(crate) fn step(&self, what: &str) -> io::Result<()> {
        let n = self.steps.get();
        self.steps.set(n.saturating_add(1));
        if self.fail_at == Some(n) {
            return Err(io::Error::other(format!(
                "injected power cut before: {what}"
            )));
        }
        Ok(())
    }
}

/// The temporary name used while `path` is being replaced (same folder, so rename is atomic).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Flushes a folder's entries (the rename) to disk. POSIX leaves a rename volatile until the
/// folder itself is synced.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], faults: &Faults) -> io::Result<()> {
    let tmp = temp_path(path);
    faults.step("create temp file")?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let half = bytes.len() / 2;
    file.write_all(&bytes[..half])?;
    faults.step("write second half")?;
    file.write_all(&bytes[half..])?;
    faults.step("fsync temp file")?;
    file.sync_all()?;
    drop(file);
    commit_file(&tmp, path, faults)
}

/// Renames a fully written and synced `tmp` over `path`, then syncs the folder.
pub(crate) fn commit_file(tmp: &Path, path: &Path, faults: &Faults) -> io::Result<()> {
    faults.step("rename")?;
    fs::rename(tmp, path)?;
    faults.step("fsync folder")?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Removes a file if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_old_content_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        fs::write(&path, b"old content").unwrap();
        let mut cut = 0;
        loop {
            let faults = Faults::at(cut);
            match write_atomic(&path, b"new content, longer", &faults) {
                Ok(()) => break,
                Err(_) => {
                    // Before the rename the old file is intact; a cut at the folder fsync comes
                    // after the rename, and the new content is already complete.
                    let want: &[u8] = if cut <= 3 {
                        b"old content"
                    } else {
                        b"new content, longer"
                    };
                    assert_eq!(fs::read(&path).unwrap(), want, "cut {cut}");
                }
            }
            cut += 1;
        }
        assert_eq!(cut, 5);
        assert_eq!(fs::read(&path).unwrap(), b"new content, longer");
    }
}
