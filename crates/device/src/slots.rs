//! The A/B slot installer: two slot images and a boot-control record in one folder.
//!
//! ```text
//! <slots>/slot_a.img   <slots>/slot_b.img   <slots>/boot.json
//! ```
//!
//! `boot.json` names the active slot, what each slot holds (version, size, SHA-256) and the
//! pending slot with its remaining boot tries. The invariant a power cut cannot break: **the
//! active slot's image is complete and the record says so**. An install only ever writes the
//! inactive slot, and in this order (each record write is temp + fsync + rename + folder fsync):
//!
//! 1. the record forgets the inactive slot (so a half-written image is never referenced);
//! 2. the new image is written to a temp file, synced, checked against the signed digest and
//!    renamed over the inactive slot;
//! 3. the record marks that slot pending, with [`BOOT_TRIES`] tries.
//!
//! A delta is rebuilt by streaming ([`SlotStore::stage_delta`]): the active slot file is read
//! through the delta crate's window and the new image goes straight into the inactive slot's
//! temp file, hashed as it is written; [`ImageSource::Staged`] then installs that temp file
//! after checking its digest again (steps 1 and 3 as above).
//!
//! [`SlotStore::boot`] is the bootloader's view: it spends one try *before* running the boot
//! check (so a crash while booting counts as a failed try), switches the active slot when the
//! check passes, and rolls back to the old slot when the tries are spent.
//!
//! The images here are simulated firmware: [`StandardBootCheck`] verifies that the slot still
//! holds the bytes its record names, and nothing about what those bytes say. A firmware that does
//! not come up is simulated by handing [`SlotStore::boot`] another [`BootCheck`] (the tests do);
//! no image content makes the production check fail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::fsutil::{self, Faults};
use crate::progress::Progress;

/// Boot tries a new slot gets before the bootloader gives up on it.
pub const BOOT_TRIES: u8 = 3;
const RECORD: &str = "boot.json";
const RECORD_FORMAT: u32 = 1;

/// Why a slot operation failed. After any of these the active slot is still the old one.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The folder has no boot-control record yet.
    #[error("no A/B slots in {0} (run `simfota device init` first)")]
    NotInitialized(PathBuf),
    /// `init` on a folder that already has slots.
    #[error("{0} already holds A/B slots")]
    AlreadyInitialized(PathBuf),
    /// The boot-control record cannot be read.
    #[error("the boot-control record {path} is damaged: {message}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The written image is not the one the signed manifest describes.
    #[error(
        "the new image has SHA-256 {actual} and {actual_len} bytes; the package promised {expected} and {expected_len} bytes"
    )]
    ImageMismatch {
        /// Signed digest, hex.
        expected: String,
        /// Signed size.
        expected_len: u64,
        /// Digest of what was built, hex.
        actual: String,
        /// Size of what was built.
        actual_len: u64,
    },
    /// A delta could not be applied to the active image (wrong source, corrupt delta).
    #[error("the delta does not apply to the running image ({active_version}): {source}")]
    Delta {
        /// Version of the active image.
        active_version: String,
        /// The delta crate's reason.
        source: simfota_delta::DeltaError,
    },
    /// A file operation failed (or a power cut was injected).
    #[error("slot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Slot::A => "slot_a.img",
            Slot::B => "slot_b.img",
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Firmware version (DevDetail/FwV when active).
    pub version: String,
    /// Image size.
    pub size: u64,
    /// Image SHA-256, hex.
    pub sha256: String,
}

/// A slot waiting for its first good boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The slot.
    pub slot: Slot,
    /// Boot tries left.
    pub tries_left: u8,
}

/// How the last boot went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BootOutcome {
    /// Nothing was pending; the active slot booted.
    Unchanged,
    /// The pending slot passed its boot check and is active now.
    Switched {
        /// Old active slot.
        from: Slot,
        /// New active slot.
        to: Slot,
        /// Version now running.
        version: String,
    },
    /// The pending slot failed its check; tries remain; this boot used the old slot.
    Retrying {
        /// Tries left.
        tries_left: u8,
        /// Why the check failed.
        reason: String,
    },
    /// The pending slot failed its last try; the old slot stays active.
    RolledBack {
        /// The slot given up.
        failed: Slot,
        /// Why its check failed.
        reason: String,
    },
}

impl std::fmt::Display for BootOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootOutcome::Unchanged => f.write_str("unchanged (nothing was pending)"),
            BootOutcome::Switched { from, to, version } => {
                write!(
                    f,
                    "switched from slot {from} to slot {to}, now running {version}"
                )
            }
            BootOutcome::Retrying { tries_left, reason } => write!(
                f,
                "the new slot failed its boot check ({reason}); {tries_left} tries left"
            ),
            BootOutcome::RolledBack { failed, reason } => write!(
                f,
                "rolled back: slot {failed} failed its last boot check ({reason})"
            ),
        }
    }
}

/// The boot-control record (`boot.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// Record format version.
    pub format: u32,
    /// The slot that boots.
    pub active: Slot,
    /// What slot A holds (None: nothing valid).
    pub a: Option<SlotInfo>,
    /// What slot B holds (None: nothing valid).
    pub b: Option<SlotInfo>,
    /// The slot waiting for its first good boot.
    pub pending: Option<Pending>,
    /// How the last boot went.
    pub last_boot: Option<BootOutcome>,
}

impl BootRecord {
    /// What `slot` holds.
    pub fn info(&self, slot: Slot) -> Option<&SlotInfo> {
        match slot {
            Slot::A => self.a.as_ref(),
            Slot::B => self.b.as_ref(),
        }
    }

    fn set_info(&mut self, slot: Slot, info: Option<SlotInfo>) {
        match slot {
            Slot::A => self.a = info,
            Slot::B => self.b = info,
        }
    }
}

/// Decides whether an installed image comes up.
pub trait BootCheck {
    /// `Ok` when the image at `path` boots; the reason otherwise.
    fn check(&self, path: &Path, info: &SlotInfo) -> Result<(), String>;
}

/// The standard check: the slot's bytes still have the recorded size and digest.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandardBootCheck;

impl BootCheck for StandardBootCheck {
    fn check(&self, path: &Path, info: &SlotInfo) -> Result<(), String> {
        let (len, digest) =
            hash_path(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if len != info.size || hex::encode(digest) != info.sha256 {
            return Err("the slot's image does not match its recorded digest".into());
        }
        Ok(())
    }
}

/// Where the new image comes from.
#[derive(Debug, Clone, Copy)]
pub enum ImageSource<'a> {
    /// A complete image file.
    Full(&'a Path),
    /// A delta file (crates/delta format) against the active image, applied by streaming the
    /// active slot into the inactive slot's temp file.
    Delta(&'a Path),
    /// The image [`SlotStore::stage_delta`] already wrote to the inactive slot's temp file.
    Staged,
}

/// An image written to the inactive slot's temp file, not yet installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The temp file (what the card may be streamed, and what `ImageSource::Staged` installs).
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// The A/B slot folder.
#[derive(Debug)]
pub struct SlotStore {
    dir: PathBuf,
    record: BootRecord,
    faults: Faults,
    /// Shows the write of a full image into a slot.
    progress: Progress,
}

impl SlotStore {
    /// Creates slot A from `image` with `version`; slot B stays empty.
    pub fn init(dir: &Path, image: &Path, version: &str) -> Result<SlotStore, SlotError> {
        let record_path = dir.join(RECORD);
        if record_path.exists() {
            return Err(SlotError::AlreadyInitialized(dir.to_owned()));
        }
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mut store = SlotStore {
            dir: dir.to_owned(),
            record: BootRecord {
                format: RECORD_FORMAT,
                active: Slot::A,
                a: None,
                b: None,
                pending: None,
                last_boot: None,
            },
            faults: Faults::default(),
            progress: Progress::hidden(),
        };
        let mut src = File::open(image).map_err(io_at(image))?;
        let info = store.write_slot(Slot::A, &mut src, version)?;
        store.record.a = Some(info);
        store.save()?;
        Ok(store)
    }

    /// Opens an initialized slot folder.
    pub fn open(dir: &Path) -> Result<SlotStore, SlotError> {
        let path = dir.join(RECORD);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SlotError::NotInitialized(dir.to_owned()));
            }
            Err(source) => return Err(SlotError::Io { path, source }),
        };
        let record: BootRecord =
            serde_json::from_slice(&bytes).map_err(|e| SlotError::BadRecord {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if record.format != RECORD_FORMAT {
            return Err(SlotError::BadRecord {
                path,
                message: format!("unknown format {}", record.format),
            });
        }
        if record.info(record.active).is_none() {
            return Err(SlotError::BadRecord {
                path,
                message: "the active slot is empty".into(),
            });
        }
        Ok(SlotStore {
            dir: dir.to_owned(),
            record,
            faults: Faults::default(),
            progress: Progress::hidden(),
        })
    }

    #[cfg(test)]
    fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The boot-control record.
    pub fn record(&self) -> &BootRecord {
        &self.record
    }

    /// The active slot.
    pub fn active(&self) -> Slot {
        self.record.active
    }

    /// What the active slot holds.
    pub fn active_info(&self) -> Result<&SlotInfo, SlotError> {
        self.record
            .info(self.record.active)
            .ok_or_else(|| SlotError::BadRecord {
                path: self.dir.join(RECORD),
                message: "the active slot is empty".into(),
            })
    }

    /// The running firmware version (DevDetail/FwV).
    pub fn active_version(&self) -> Result<&str, SlotError> {
        Ok(&self.active_info()?.version)
    }

    /// Shows the progress of producing a new slot image on `progress` (hidden by default):
    /// the copy of a full image, or the rebuild of a delta ([`SlotStore::stage_delta`]), in
    /// bytes of the new image. One progress serves one step.
    pub fn set_progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    /// The image file of `slot`.
    pub fn slot_path(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.file_name())
    }

    /// Installs a new image into the inactive slot and marks it pending. The image must have
    /// `expected_len` bytes and SHA-256 `expected_sha256` (from the signed manifest).
    pub fn install(
        &mut self,
        source: ImageSource<'_>,
        version: &str,
        expected_len: u64,
        expected_sha256: &[u8; 32],
    ) -> Result<Slot, SlotError> {
        let target = self.record.active.other();
        // Step 1: forget the inactive slot before its bytes change.
        if self.record.info(target).is_some() || self.record.pending.is_some() {
            self.record.set_info(target, None);
            self.record.pending = None;
            self.save()?;
        }
        // Step 2: build the image into a temp file, check it, rename it into place.
        let info = match source {
            ImageSource::Full(path) => {
                let mut src = File::open(path).map_err(io_at(path))?;
                let len = src.metadata().map_err(io_at(path))?.len();
                self.progress.set_length(len);
                self.progress.set_position(0);
                let info = self.write_slot(target, &mut src, version)?;
                self.progress.finish();
                info
            }
            ImageSource::Delta(path) => {
                let delta = fs::read(path).map_err(io_at(path))?;
                let staged = self.stage_delta(&delta, &simfota_delta::Limits::default())?;
                SlotInfo {
                    version: version.to_owned(),
                    size: staged.size,
                    sha256: staged.sha256,
                }
            }
            ImageSource::Staged => {
                // Hashed again: the temp file was written in an earlier step (maybe before a
                // restart), and only bytes with the signed digest become a slot.
                let tmp = fsutil::temp_path(&self.slot_path(target));
                let (size, digest) = hash_path(&tmp).map_err(io_at(&tmp))?;
                SlotInfo {
                    version: version.to_owned(),
                    size,
                    sha256: hex::encode(digest),
                }
            }
        };
        if info.size != expected_len || info.sha256 != hex::encode(expected_sha256) {
            let tmp = fsutil::temp_path(&self.slot_path(target));
            fsutil::remove_if_exists(&tmp).map_err(io_at(&tmp))?;
            return Err(SlotError::ImageMismatch {
                expected: hex::encode(expected_sha256),
                expected_len,
                actual: info.sha256,
                actual_len: info.size,
            });
        }
        let path = self.slot_path(target);
        fsutil::commit_file(&fsutil::temp_path(&path), &path, &self.faults)
            .map_err(io_at(&path))?;
        // Step 3: the slot is complete; mark it pending.
        self.record.set_info(target, Some(info));
        self.record.pending = Some(Pending {
            slot: target,
            tries_left: BOOT_TRIES,
        });
        self.save()?;
        Ok(target)
    }

    /// Rebuilds the new image from `delta` and the active slot into the inactive slot's temp
    /// file, streaming: the active image is read through the delta crate's window, the new
    /// image is written and hashed as it is produced (never both images in memory). The
    /// record is not touched: the slots stay as they are until [`SlotStore::install`] with
    /// [`ImageSource::Staged`]. On error the temp file is removed. The progress display
    /// ([`SlotStore::set_progress`]) counts the bytes of the new image written, out of the
    /// size the delta declares, and is told at most every [`REBUILD_PROGRESS_EVERY`].
    pub fn stage_delta(
        &self,
        delta: &[u8],
        limits: &simfota_delta::Limits,
    ) -> Result<Staged, SlotError> {
        let active_path = self.slot_path(self.record.active);
        let tmp = fsutil::temp_path(&self.slot_path(self.record.active.other()));
        let res = (|| {
            let src = File::open(&active_path).map_err(io_at(&active_path))?;
            let len = src.metadata().map_err(io_at(&active_path))?.len();
            let err = io_at(&tmp);
            self.faults.step("create slot temp file").map_err(&err)?;
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(&err)?;
            // A delta whose header does not parse is refused by `apply_to` just below.
            let target = simfota_delta::Header::parse(delta).map_or(0, |(h, _)| h.target_size);
            self.progress.set_length(target);
            self.progress.set_position(0);
            let mut out = Shown::new(
                io::BufWriter::with_capacity(256 << 10, file),
                &self.progress,
                Instant::now(),
            );
            let applied =
                simfota_delta::apply_to(src, len, delta, &mut out, limits).map_err(|source| {
                    match source {
                        simfota_delta::DeltaError::Io { kind, .. } => SlotError::Io {
                            path: tmp.clone(),
                            source: io::Error::new(kind, source.to_string()),
                        },
                        source => SlotError::Delta {
                            active_version: self
                                .record
                                .info(self.record.active)
                                .map(|i| i.version.clone())
                                .unwrap_or_default(),
                            source,
                        },
                    }
                })?;
            let file = out.inner.into_inner().map_err(|e| err(e.into_error()))?;
            self.faults.step("fsync slot image").map_err(&err)?;
            file.sync_all().map_err(&err)?;
            self.progress.set_position(applied.size);
            self.progress.finish();
            Ok(Staged {
                path: tmp.clone(),
                size: applied.size,
                sha256: hex::encode(applied.sha256),
            })
        })();
        if res.is_err() {
            let _ = fsutil::remove_if_exists(&tmp);
        }
        res
    }

    /// Removes a staged image that will not be installed.
    pub fn discard_staged(&self) -> Result<(), SlotError> {
        let tmp = fsutil::temp_path(&self.slot_path(self.record.active.other()));
        fsutil::remove_if_exists(&tmp).map_err(io_at(&tmp))
    }

    /// One boot: tries the pending slot (if any) and switches or rolls back.
    pub fn boot(&mut self, check: &dyn BootCheck) -> Result<BootOutcome, SlotError> {
        let Some(pending) = self.record.pending.clone() else {
            self.record.last_boot = Some(BootOutcome::Unchanged);
            return Ok(BootOutcome::Unchanged);
        };
        let from = self.record.active;
        let result = match (pending.tries_left, self.record.info(pending.slot).cloned()) {
            (0, _) => Err("no boot tries left".to_owned()),
            (_, None) => Err("the pending slot is empty".to_owned()),
            (tries, Some(info)) => {
                // Spend the try first: a crash inside the boot check counts as a failure.
                self.record.pending = Some(Pending {
                    slot: pending.slot,
                    tries_left: tries - 1,
                });
                self.save()?;
                check
                    .check(&self.slot_path(pending.slot), &info)
                    .map(|()| info)
            }
        };
        let outcome = match result {
            Ok(info) => {
                self.record.active = pending.slot;
                self.record.pending = None;
                BootOutcome::Switched {
                    from,
                    to: pending.slot,
                    version: info.version,
                }
            }
            Err(reason) => {
                let left = self.record.pending.as_ref().map_or(0, |p| p.tries_left);
                if left == 0 {
                    self.record.pending = None;
                    BootOutcome::RolledBack {
                        failed: pending.slot,
                        reason,
                    }
                } else {
                    BootOutcome::Retrying {
                        tries_left: left,
                        reason,
                    }
                }
            }
        };
        self.record.last_boot = Some(outcome.clone());
        self.save()?;
        Ok(outcome)
    }

    /// Boots until the pending slot is either active or given up (at most [`BOOT_TRIES`] boots).
    pub fn boot_until_settled(&mut self, check: &dyn BootCheck) -> Result<BootOutcome, SlotError> {
        loop {
            match self.boot(check)? {
                BootOutcome::Retrying { .. } => continue,
                settled => return Ok(settled),
            }
        }
    }

    fn save(&self) -> Result<(), SlotError> {
        let path = self.dir.join(RECORD);
        let bytes = serde_json::to_vec_pretty(&self.record).map_err(|e| SlotError::BadRecord {
            path: path.clone(),
            message: e.to_string(),
        })?;
        fsutil::write_atomic(&path, &bytes, &self.faults).map_err(io_at(&path))
    }

    /// Streams `src` into the temp file of `slot` (synced) and returns what it holds. For slot
    /// initialisation the temp file is also renamed into place.
    fn write_slot(
        &self,
        slot: Slot,
        src: &mut dyn Read,
        version: &str,
    ) -> Result<SlotInfo, SlotError> {
        let path = self.slot_path(slot);
        let tmp = fsutil::temp_path(&path);
        let err = io_at(&tmp);
        self.faults.step("create slot temp file").map_err(&err)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(&err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut halfway_done = false;
        loop {
            let n = src.read(&mut buf).map_err(&err)?;
            if n == 0 {
                break;
            }
            if !halfway_done && size > 0 {
                // A cut in the middle of the image write.
                self.faults.step("write slot image").map_err(&err)?;
                halfway_done = true;
            }
            file.write_all(&buf[..n]).map_err(&err)?;
            hasher.update(&buf[..n]);
            size += n as u64;
            self.progress.set_position(size);
        }
        self.faults.step("fsync slot image").map_err(&err)?;
        file.sync_all().map_err(&err)?;
        drop(file);
        let info = SlotInfo {
            version: version.to_owned(),
            size,
            sha256: hex::encode(hasher.finalize()),
        };
        if self.record.info(self.record.active).is_none() {
            // First image (init): nothing to protect, commit directly.
            fsutil::commit_file(&tmp, &path, &self.faults).map_err(io_at(&path))?;
        }
        Ok(info)
    }
}

/// How often a delta rebuild tells the progress display how far it is: a few times a second
/// is all a person reads, and the rebuild writes in pieces far smaller than a download's.
pub const REBUILD_PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Bytes written between two looks at the clock during a rebuild: the writes themselves cost
/// no more than a sum and a comparison.
const REBUILD_CLOCK_BYTES: u64 = 256 << 10;

/// The new image on its way to the slot file, counted for the progress display.
struct Shown<'p, W> {
    inner: W,
    progress: &'p Progress,
    written: u64,
    /// `written` when the clock was last read.
    looked: u64,
    /// When the display may be told again.
    next: Instant,
}

impl<'p, W> Shown<'p, W> {
    fn new(inner: W, progress: &'p Progress, now: Instant) -> Self {
        Shown {
            inner,
            progress,
            written: 0,
            looked: 0,
            next: now + REBUILD_PROGRESS_EVERY,
        }
    }

    /// Counts `n` more bytes; tells the display when [`REBUILD_PROGRESS_EVERY`] has passed
    /// (`now` is read only every [`REBUILD_CLOCK_BYTES`]).
    fn count(&mut self, n: usize, now: impl FnOnce() -> Instant) {
        self.written += n as u64;
        if self.written - self.looked < REBUILD_CLOCK_BYTES {
            return;
        }
        self.looked = self.written;
        let now = now();
        if now >= self.next {
            self.next = now + REBUILD_PROGRESS_EVERY;
            self.progress.set_position(self.written);
        }
    }
}

impl<W: Write> Write for Shown<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count(n, Instant::now);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.to_owned(),
        source,
    }
}

fn hash_path(path: &Path) -> io::Result<(u64, [u8; 32])> {
    crate::download::hash_file(path, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated image starting with these bytes fails [`SelfTest`].
    const UNBOOTABLE: &[u8] = b"SIMFOTA-UNBOOTABLE";

    /// The standard check, plus a simulated self-test that fails for an image starting with
    /// [`UNBOOTABLE`]: how these tests make a firmware that does not come up.
    struct SelfTest;

    impl BootCheck for SelfTest {
        fn check(&self, path: &Path, info: &SlotInfo) -> Result<(), String> {
            StandardBootCheck.check(path, info)?;
            let image = fs::read(path).map_err(|e| e.to_string())?;
            if image.starts_with(UNBOOTABLE) {
                return Err(format!("firmware {} failed its self-test", info.version));
            }
            Ok(())
        }
    }

    fn image(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2246822519).to_be_bytes()[1] ^ seed)
            .collect()
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        slots: PathBuf,
        v1: Vec<u8>,
        v2_path: PathBuf,
        v2: Vec<u8>,
    }

    fn fixture(v2: Vec<u8>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let v1 = image(200_000, 1);
        let v1_path = dir.path().join("v1.bin");
        fs::write(&v1_path, &v1).unwrap();
        let v2_path = dir.path().join("v2.bin");
        fs::write(&v2_path, &v2).unwrap();
        let slots = dir.path().join("slots");
        SlotStore::init(&slots, &v1_path, "1.0").unwrap();
        Fixture {
            _dir: dir,
            slots,
            v1,
            v2_path,
            v2,
        }
    }

    fn assert_boots_old(f: &Fixture, what: &str) {
        let store = SlotStore::open(&f.slots).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(store.active(), Slot::A, "{what}");
        assert_eq!(store.active_version().unwrap(), "1.0", "{what}");
        assert_eq!(fs::read(store.slot_path(Slot::A)).unwrap(), f.v1, "{what}");
        let info = store.active_info().unwrap().clone();
        StandardBootCheck
            .check(&store.slot_path(Slot::A), &info)
            .unwrap();
    }

    #[test]
    fn install_then_boot_switches_and_reports_the_new_version() {
        let f = fixture(image(150_000, 2));
        let mut store = SlotStore::open(&f.slots).unwrap();
        let slot = store
            .install(
                ImageSource::Full(&f.v2_path),
                "2.0",
                f.v2.len() as u64,
                &sha(&f.v2),
            )
            .unwrap();
        assert_eq!(slot, Slot::B);
        // Installed but not booted: still running 1.0.
        assert_eq!(
            SlotStore::open(&f.slots).unwrap().active_version().unwrap(),
            "1.0"
        );
        let outcome = store.boot(&StandardBootCheck).unwrap();
        assert_eq!(
            outcome,
            BootOutcome::Switched {
                from: Slot::A,
                to: Slot::B,
                version: "2.0".into()
            }
        );
        let again = SlotStore::open(&f.slots).unwrap();
        assert_eq!(again.active_version().unwrap(), "2.0");
        assert_eq!(fs::read(again.slot_path(Slot::B)).unwrap(), f.v2);
        assert_eq!(again.record().last_boot, Some(outcome));
    }

    #[test]
    fn an_image_that_fails_its_boot_check_is_rolled_back_after_its_tries() {
        let mut bad = UNBOOTABLE.to_vec();
        bad.extend(image(10_000, 3));
        let f = fixture(bad);
        let mut store = SlotStore::open(&f.slots).unwrap();
        store
            .install(
                ImageSource::Full(&f.v2_path),
                "2.0",
                f.v2.len() as u64,
                &sha(&f.v2),
            )
            .unwrap();
        for left in (1..BOOT_TRIES).rev() {
            match store.boot(&SelfTest).unwrap() {
                BootOutcome::Retrying { tries_left, reason } => {
                    assert_eq!(tries_left, left);
                    assert!(reason.contains("self-test"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        match store.boot(&SelfTest).unwrap() {
            BootOutcome::RolledBack {
                failed: Slot::B,
                reason,
            } => assert!(reason.contains("2.0")),
            other => panic!("{other:?}"),
        }
        assert_boots_old(&f, "after rollback");
        assert_eq!(store.boot(&SelfTest).unwrap(), BootOutcome::Unchanged);
    }

    #[test]
    fn an_image_that_does_not_match_the_signed_digest_is_never_installed() {
        let f = fixture(image(150_000, 4));
        let mut store = SlotStore::open(&f.slots).unwrap();
        let mut wrong = sha(&f.v2);
        wrong[31] ^= 0x80;
        let err = store
            .install(
                ImageSource::Full(&f.v2_path),
                "2.0",
                f.v2.len() as u64,
                &wrong,
            )
            .unwrap_err();
        assert!(matches!(err, SlotError::ImageMismatch { .. }), "{err}");
        assert!(store.record().pending.is_none());
        assert_boots_old(&f, "after refused image");
        assert!(!fsutil::temp_path(&store.slot_path(Slot::B)).exists());
    }

    #[test]
    fn a_delta_is_applied_against_the_active_image() {
        let mut v2 = image(200_000, 1);
        v2[1000..1100].copy_from_slice(&[7u8; 100]);
        v2.extend_from_slice(b"new tail");
        let f = fixture(v2.clone());
        let delta = simfota_delta::diff(&f.v1, &v2).unwrap();
        let delta_path = f.slots.parent().unwrap().join("d.delta");
        fs::write(&delta_path, &delta).unwrap();
        let mut store = SlotStore::open(&f.slots).unwrap();
        store
            .install(
                ImageSource::Delta(&delta_path),
                "2.1",
                v2.len() as u64,
                &sha(&v2),
            )
            .unwrap();
        store.boot_until_settled(&StandardBootCheck).unwrap();
        assert_eq!(store.active_version().unwrap(), "2.1");
        assert_eq!(fs::read(store.slot_path(store.active())).unwrap(), v2);
        // The same delta no longer applies: the running image is now 2.1.
        let err = store
            .install(
                ImageSource::Delta(&delta_path),
                "2.1",
                v2.len() as u64,
                &sha(&v2),
            )
            .unwrap_err();
        assert!(matches!(err, SlotError::Delta { .. }), "{err}");
        assert_eq!(store.active_version().unwrap(), "2.1");
    }

    #[test]
    fn a_staged_delta_image_installs_only_with_the_signed_digest() {
        let mut v2 = image(200_000, 1);
        v2[70_000..70_100].copy_from_slice(&[9u8; 100]);
        let f = fixture(v2.clone());
        let delta = simfota_delta::diff(&f.v1, &v2).unwrap();
        let mut store = SlotStore::open(&f.slots).unwrap();
        let staged = store
            .stage_delta(&delta, &simfota_delta::Limits::default())
            .unwrap();
        assert_eq!(staged.size, v2.len() as u64);
        assert_eq!(staged.sha256, hex::encode(sha(&v2)));
        assert_eq!(fs::read(&staged.path).unwrap(), v2);
        // Staging changes no slot: the record and both slot files are as before.
        assert_eq!(SlotStore::open(&f.slots).unwrap().record(), store.record());
        assert!(!store.slot_path(Slot::B).exists());
        // Bytes changed between staging and install are refused against the signed digest.
        let mut tampered = v2.clone();
        tampered[5] ^= 1;
        fs::write(&staged.path, &tampered).unwrap();
        let err = store
            .install(ImageSource::Staged, "2.1", v2.len() as u64, &sha(&v2))
            .unwrap_err();
        assert!(matches!(err, SlotError::ImageMismatch { .. }), "{err}");
        assert_boots_old(&f, "after a tampered staged image");
        // Staged again and installed.
        store
            .stage_delta(&delta, &simfota_delta::Limits::default())
            .unwrap();
        store
            .install(ImageSource::Staged, "2.1", v2.len() as u64, &sha(&v2))
            .unwrap();
        store.boot_until_settled(&StandardBootCheck).unwrap();
        assert_eq!(store.active_version().unwrap(), "2.1");
        assert!(!staged.path.exists());
        // A delta for another source is refused and leaves no temp file behind.
        let err = store
            .stage_delta(&delta, &simfota_delta::Limits::default())
            .unwrap_err();
        assert!(matches!(err, SlotError::Delta { .. }), "{err}");
        assert!(!fsutil::temp_path(&store.slot_path(Slot::A)).exists());
    }

    /// Plain progress lines, kept for the assertions.
    fn recorded(label: &str) -> (std::sync::Arc<std::sync::Mutex<Vec<String>>>, Progress) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let progress = Progress::lines(
            label,
            Box::new(move |l: &str| sink.lock().unwrap().push(l.to_owned())),
        );
        (seen, progress)
    }

    /// A rebuild is shown in bytes of the new image, and ends with its closing line.
    #[test]
    fn a_delta_rebuild_shows_its_progress() {
        let mut v2 = image(200_000, 1);
        v2.splice(90_000..90_000, [7u8; 5_000]);
        let f = fixture(v2.clone());
        let delta = simfota_delta::diff(&f.v1, &v2).unwrap();
        let (seen, progress) = recorded("rebuild");
        let mut store = SlotStore::open(&f.slots).unwrap();
        store.set_progress(progress);
        let staged = store
            .stage_delta(&delta, &simfota_delta::Limits::default())
            .unwrap();
        assert_eq!(staged.size, 205_000);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert!(
            seen[0].starts_with("rebuild: 200.2 KiB done in "),
            "{seen:#?}"
        );
    }

    /// The display hears of a rebuild every REBUILD_PROGRESS_EVERY at most, whatever the
    /// pace of the writes, and the clock is read once per REBUILD_CLOCK_BYTES.
    #[test]
    fn a_rebuild_tells_the_display_a_few_times_a_second() {
        let (seen, progress) = recorded("rebuild");
        progress.set_length(100 << 20);
        progress.set_position(0);
        let start = Instant::now();
        let mut out = Shown::new(io::sink(), &progress, start);
        // 100 MiB in one second, a MiB every 10 ms: the display is told at 200, 400, 600
        // and 800 ms (and at 1 s, the end, which the closing line tells).
        for ms in 1..=100u64 {
            out.count(1 << 20, || start + Duration::from_millis(ms * 10));
        }
        let seen = seen.lock().unwrap();
        let said: Vec<&str> = seen
            .iter()
            .map(|l| l.split_once(", ").map_or(l.as_str(), |(head, _)| head))
            .collect();
        assert_eq!(
            said,
            [
                "rebuild: 20.0 MiB of 100.0 MiB (20%)",
                "rebuild: 40.0 MiB of 100.0 MiB (40%)",
                "rebuild: 60.0 MiB of 100.0 MiB (60%)",
                "rebuild: 80.0 MiB of 100.0 MiB (80%)",
            ]
        );
        drop(seen);

        // Small writes: the clock is looked at once per 256 KiB.
        let looks = std::cell::Cell::new(0u32);
        let mut out = Shown::new(io::sink(), &progress, start);
        for _ in 0..1000 {
            out.count(4096, || {
                looks.set(looks.get() + 1);
                start
            });
        }
        assert_eq!(
            looks.get(),
            15,
            "4000 KiB in 4 KiB pieces: a look per 256 KiB"
        );
    }

    #[test]
    fn a_power_cut_at_any_install_step_leaves_the_old_slot_bootable() {
        let f = fixture(image(150_000, 5));
        // A second install replaces an already-filled inactive slot: cover that path too.
        for round in 0..2 {
            let mut cut = 0;
            loop {
                let store = SlotStore::open(&f.slots)
                    .unwrap()
                    .with_faults(Faults::at(cut));
                let mut store = store;
                let res = store.install(
                    ImageSource::Full(&f.v2_path),
                    "2.0",
                    f.v2.len() as u64,
                    &sha(&f.v2),
                );
                let steps = store.faults.steps();
                drop(store);
                assert_boots_old(&f, &format!("round {round} cut {cut}"));
                let mut after = SlotStore::open(&f.slots).unwrap();
                if res.is_ok() {
                    assert!(cut >= steps, "no cut happened");
                    break;
                }
                // After the cut, the next boot either ignores the slot or boots a complete one.
                if let Some(p) = after.record().pending.clone() {
                    assert_eq!(fs::read(after.slot_path(p.slot)).unwrap(), f.v2);
                }
                let _ = after.boot(&StandardBootCheck).unwrap();
                // Undo any switch the boot made, so the next cut starts from 1.0 again.
                after.record.active = Slot::A;
                after.record.pending = None;
                after.save().unwrap();
                cut += 1;
            }
            assert!(cut >= 8, "only {cut} steps were exercised");
        }
    }

    #[test]
    fn a_power_cut_while_booting_never_loses_the_old_slot() {
        let mut bad = UNBOOTABLE.to_vec();
        bad.extend(image(1000, 6));
        let f = fixture(bad);
        let mut store = SlotStore::open(&f.slots).unwrap();
        store
            .install(
                ImageSource::Full(&f.v2_path),
                "2.0",
                f.v2.len() as u64,
                &sha(&f.v2),
            )
            .unwrap();
        for cut in 0..40 {
            let mut s = SlotStore::open(&f.slots)
                .unwrap()
                .with_faults(Faults::at(cut));
            let res = s.boot(&SelfTest);
            assert_boots_old(&f, &format!("boot cut {cut}"));
            if matches!(
                res,
                Ok(BootOutcome::RolledBack { .. } | BootOutcome::Unchanged)
            ) {
                return;
            }
        }
        panic!("the failing slot was never given up");
    }

    #[test]
    fn an_image_starting_with_the_former_test_magic_boots_with_the_standard_check() {
        let mut v2 = UNBOOTABLE.to_vec();
        v2.extend(image(10_000, 7));
        let f = fixture(v2);
        let mut store = SlotStore::open(&f.slots).unwrap();
        store
            .install(
                ImageSource::Full(&f.v2_path),
                "2.0",
                f.v2.len() as u64,
                &sha(&f.v2),
            )
            .unwrap();
        assert_eq!(
            store.boot(&StandardBootCheck).unwrap(),
            BootOutcome::Switched {
                from: Slot::A,
                to: Slot::B,
                version: "2.0".into()
            }
        );
        assert_eq!(fs::read(store.slot_path(Slot::B)).unwrap(), f.v2);
    }
}
