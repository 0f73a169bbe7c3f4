//! The demo folder: a fresh `./simfota-demo-<UTC time>` by default, or `--dir DIR`.
//!
//! `--dir` takes a missing or empty folder, or a folder an earlier `simfota demo` made (it
//! holds the marker file [`MARKER`]): the demo then removes what it wrote there before and
//! starts over. Any other non-empty folder is refused with its first unknown entry named,
//! so the demo never deletes a file it did not write. A running demo keeps its marker file
//! locked, so a second run refuses to clear the folder under it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// The marker that makes a folder a demo folder.
pub const MARKER: &str = ".simfota-demo";

/// Every entry the demo writes at the top of its folder (and may remove on a rerun).
const OWNED: &[&str] = &[
    MARKER,
    "issuer.pem",
    "issuer.pub.pem",
    "oem.pem",
    "oem.pub.pem",
    "card.state",
    "card.state.lock",
    "server",
    "unlisted-server",
    "firmware",
    "device",
    "summary.json",
];

/// What happened to the folder, for the first progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// Created now.
    Created,
    /// Existed and was empty.
    Empty,
    /// An earlier demo's folder, cleared.
    Reused,
}

/// The default folder name: `simfota-demo-YYYYMMDD-HHMMSS` (UTC), in the current folder.
pub fn default_dir() -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from(format!("simfota-demo-{}", utc_stamp(secs)))
}

/// `YYYYMMDD-HHMMSS` of a Unix time (proleptic Gregorian calendar, UTC).
fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01: the era-based conversion (eras of
/// 400 years, 146 097 days; March-based years so the leap day ends the year).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A demo folder in use: the marker file, locked for as long as this value lives, so a
/// second `simfota demo --dir` cannot clear the folder of a demo that still runs.
#[derive(Debug)]
pub struct Claimed {
    /// What happened to the folder.
    pub prepared: Prepared,
    _lock: File,
}

/// Opens and locks the marker file (creating it).
fn lock_marker(dir: &Path) -> Result<File> {
    let path = dir.join(MARKER);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot write in the demo folder {}", dir.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "{} is in use by a running `simfota demo`; stop it or give another folder",
            dir.display()
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.write_all(b"simfota demo folder\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

/// Makes `dir` ready for a demo run (see the module documentation).
pub fn prepare(dir: &Path) -> Result<Claimed> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the demo folder {}", dir.display()))?;
        return Ok(Claimed {
            _lock: lock_marker(dir)?,
            prepared: Prepared::Created,
        });
    }
    if !dir.is_dir() {
        bail!("{} exists and is not a folder", dir.display());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?
    {
        let entry = entry.with_context(|| format!("cannot read the folder {}", dir.display()))?;
        names.push(entry.file_name());
    }
    names.sort();
    if names.is_empty() {
        return Ok(Claimed {
            _lock: lock_marker(dir)?,
            prepared: Prepared::Empty,
        });
    }
    if !names.iter().any(|n| n == MARKER) {
        bail!(
            "{} is not empty and is not a folder made by `simfota demo` (no {MARKER} in it); \
             give an empty or new folder",
            dir.display()
        );
    }
    if let Some(foreign) = names.iter().find(|n| !OWNED.iter().any(|o| *n == *o)) {
        bail!(
            "{} holds {:?}, which `simfota demo` did not write; move it away or give another \
             folder",
            dir.display(),
            foreign
        );
    }
    // Locked before anything is removed; the marker itself stays (and stays locked).
    let lock = lock_marker(dir)?;
    for name in names.iter().filter(|n| *n != MARKER) {
        let path = dir.join(name);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot clear {}", path.display()))?;
    }
    Ok(Claimed {
        _lock: lock,
        prepared: Prepared::Reused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // 2000-02-29 (a leap day of a century divisible by 400) 12:34:56.
        assert_eq!(utc_stamp(951_827_696), "20000229-123456");
        // 2024-12-31 23:59:59.
        assert_eq!(utc_stamp(1_735_689_599), "20241231-235959");
    }

    #[test]
    fn only_empty_or_earlier_demo_folders_are_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("new");
        let first = prepare(&fresh).unwrap();
        assert_eq!(first.prepared, Prepared::Created);
        // In use by a running demo: refused, and nothing removed.
        std::fs::create_dir_all(fresh.join("server")).unwrap();
        let e = prepare(&fresh).unwrap_err().to_string();
        assert!(e.contains("in use by a running `simfota demo`"), "{e}");
        assert!(fresh.join("server").exists());
        drop(first);

        std::fs::write(fresh.join("server/x"), b"x").unwrap();
        assert_eq!(prepare(&fresh).unwrap().prepared, Prepared::Reused);
        assert!(!fresh.join("server").exists());
        assert!(fresh.join(MARKER).exists());

        std::fs::write(fresh.join("notes.txt"), b"mine").unwrap();
        let e = prepare(&fresh).unwrap_err().to_string();
        assert!(e.contains("notes.txt"), "{e}");
        assert!(fresh.join("notes.txt").exists());

        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("a"), b"a").unwrap();
        let e = prepare(&foreign).unwrap_err().to_string();
        assert!(e.contains("not a folder made by `simfota demo`"), "{e}");

        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(prepare(&empty).unwrap().prepared, Prepared::Empty);
    }
}
