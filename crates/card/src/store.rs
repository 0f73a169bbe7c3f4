//! Persistent memory behind a trait with atomic transactions.
//!
//! A smart card keeps its state in EEPROM/flash and makes a group of writes atomic with a
//! transaction (Java Card `JCSystem.beginTransaction` / `commitTransaction`, Java Card 3
//! Runtime Environment §7): after a power loss, either every write of the transaction is there
//! or none. The applet opens exactly one transaction per state-changing step and commits it
//! before it answers, so each command leaves the card in the state before or after it.
//!
//! Three implementations:
//! - [`MemStore`]: a fixed-size image in RAM (tests, and a card platform's model);
//! - `FileStore` (feature `std`): the image in a file, replaced atomically on commit
//!   (write a temporary file, fsync, rename, fsync the directory) — for the virtual card;
//! - [`PowerCut`]: wraps any store, counts writes and bytes, and can cut the power at the Nth
//!   write (every later operation then fails, as on a card whose field went away).

/// Why a persistent-memory operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The range lies outside the store.
    #[error("persistent access outside the store")]
    OutOfBounds,
    /// A write outside a transaction, or a commit without one.
    #[error("persistent write outside a transaction")]
    NotInTransaction,
    /// `begin` while a transaction is open (transactions do not nest, as on Java Card).
    #[error("nested transaction")]
    Nested,
    /// The power went away (injected); nothing more can be done until a restart.
    #[error("power lost")]
    PowerLost,
    /// The backing file could not be read or written.
    #[error("backing file input/output failed")]
    Io,
}

/// Persistent memory with atomic transactions. Reads inside a transaction see its own writes.
pub trait Store {
    /// Size of the persistent area in bytes.
    fn capacity(&self) -> usize;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Opens a transaction.
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Writes `data` at `offset` inside the open transaction.
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StoreError>;
    /// Makes every write of the open transaction durable, atomically.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Drops the open transaction's writes (no-op without one).
    fn abort(&mut self);
}

fn range(offset: usize, len: usize, cap: usize) -> Result<core::ops::Range<usize>, StoreError> {
    let end = offset.checked_add(len).ok_or(StoreError::OutOfBounds)?;
    if end > cap {
        return Err(StoreError::OutOfBounds);
    }
    Ok(offset..end)
}

/// A persistent image of `N` bytes held in RAM: a committed image and a working copy.
#[derive(Clone)]
pub struct MemStore<const N: usize> {
    committed: [u8; N],
    working: [u8; N],
    open: bool,
}

impl<const N: usize> Default for MemStore<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> MemStore<N> {
    /// A blank (all zero) store, as a freshly installed applet's memory.
    pub const fn new() -> Self {
        Self {
            committed: [0; N],
            working: [0; N],
            open: false,
        }
    }

    /// Models a power cycle: the open transaction (if any) is lost, committed data stays.
    pub fn power_cycle(&mut self) {
        self.working = self.committed;
        self.open = false;
    }

    /// The committed image (what survives a power cut).
    pub fn image(&self) -> &[u8; N] {
        &self.committed
    }
}

impl<const N: usize> Store for MemStore<N> {
    fn capacity(&self) -> usize {
        N
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        let r = range(offset, buf.len(), N)?;
        buf.copy_from_slice(&self.working[r]);
        Ok(())
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if self.open {
            return Err(StoreError::Nested);
        }
        self.open = true;
        Ok(())
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        if !self.open {
            return Err(StoreError::NotInTransaction);
        }
        let r = range(offset, data.len(), N)?;
        self.working[r].copy_from_slice(data);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if !self.open {
            return Err(StoreError::NotInTransaction);
        }
        self.committed = self.working;
        self.open = false;
        Ok(())
    }

    fn abort(&mut self) {
        self.working = self.committed;
        self.open = false;
    }
}

/// Counts persistent operations and injects a power cut at the Nth write.
///
/// Writes and commits both count as writes (a commit is a write of the transaction's
/// commit record on a real card). With `cut_at = Some(n)`, write number `n` (1-based) fails
/// with [`StoreError::PowerLost`] and so does every later operation.
pub struct PowerCut<S> {
    inner: S,
    cut_at: Option<u32>,
    writes: u32,
    bytes: u64,
    dead: bool,
}

impl<S: Store> PowerCut<S> {
    /// Wraps `inner`; `cut_at = None` only counts.
    pub fn new(inner: S, cut_at: Option<u32>) -> Self {
        Self {
            inner,
            cut_at,
            writes: 0,
            bytes: 0,
            dead: false,
        }
    }

    /// Writes (including commits) seen so far.
    pub fn writes(&self) -> u32 {
        self.writes
    }

    /// Bytes written so far (write payloads only).
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Whether the power cut has happened.
    pub fn cut(&self) -> bool {
        self.dead
    }

    /// Arms a cut at write number `n` counted from now (`None` disarms) and resets counters.
    pub fn arm(&mut self, n: Option<u32>) {
        self.cut_at = n;
        self.writes = 0;
        self.bytes = 0;
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store (to power-cycle it and restart the applet).
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn tick(&mut self) -> Result<(), StoreError> {
        if self.dead {
            return Err(StoreError::PowerLost);
        }
        self.writes += 1;
        if self.cut_at == Some(self.writes) {
            self.dead = true;
            return Err(StoreError::PowerLost);
        }
        Ok(())
    }
}

impl<S: Store> Store for PowerCut<S> {
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        if self.dead {
            return Err(StoreError::PowerLost);
        }
        self.inner.read(offset, buf)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if self.dead {
            return Err(StoreError::PowerLost);
        }
        self.inner.begin()
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        self.tick()?;
        self.bytes += data.len() as u64;
        self.inner.write(offset, data)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.tick()?;
        self.inner.commit()
    }

    fn abort(&mut self) {
        // After a cut nothing runs any more; the restart drops the open transaction.
        if !self.dead {
            self.inner.abort();
        }
    }
}

#[cfg(feature = "std")]
pub use file::FileStore;

#[cfg(feature = "std")]
mod file {
    extern crate std;
    use super::{Store, StoreError, range};
    use std::fs;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::vec;
    use std::vec::Vec;

    /// The persistent image in a file; a commit replaces the file atomically (write
    /// `<path>.tmp`, fsync it, rename over `<path>`, fsync the directory), so a crash leaves
    /// either the old or the new image.
    pub struct FileStore {
        path: PathBuf,
        committed: Vec<u8>,
        working: Vec<u8>,
        open: bool,
    }

    impl FileStore {
        /// Opens the image at `path`, or starts a blank one of `capacity` bytes if the file
        /// does not exist. An existing file of another size is refused.
        pub fn open(path: impl AsRef<Path>, capacity: usize) -> std::io::Result<Self> {
            let path = path.as_ref().to_path_buf();
            let committed = match fs::read(&path) {
                Ok(bytes) if bytes.len() == capacity => bytes,
                Ok(bytes) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        std::format!(
                            "card image {} has {} bytes, expected {capacity}",
                            path.display(),
                            bytes.len()
                        ),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![0; capacity],
                Err(e) => return Err(e),
            };
            Ok(Self {
                path,
                working: committed.clone(),
                committed,
                open: false,
            })
        }

        /// Where the image lives.
        pub fn path(&self) -> &Path {
            &self.path
        }

        fn persist(&self, image: &[u8]) -> std::io::Result<()> {
            let mut tmp = self.path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            // The image holds the card's keys and PINs: readable by its owner only.
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(image)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                // Make the rename itself durable (POSIX: fsync of the directory).
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        }
    }

    impl Store for FileStore {
        fn capacity(&self) -> usize {
            self.committed.len()
        }

        fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
            let r = range(offset, buf.len(), self.working.len())?;
            buf.copy_from_slice(&self.working[r]);
            Ok(())
        }

        fn begin(&mut self) -> Result<(), StoreError> {
            if self.open {
                return Err(StoreError::Nested);
            }
            self.open = true;
            Ok(())
        }

        fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StoreError> {
            if !self.open {
                return Err(StoreError::NotInTransaction);
            }
            let r = range(offset, data.len(), self.working.len())?;
            self.working[r].copy_from_slice(data);
            Ok(())
        }

        fn commit(&mut self) -> Result<(), StoreError> {
            if !self.open {
                return Err(StoreError::NotInTransaction);
            }
            self.persist(&self.working).map_err(|_| StoreError::Io)?;
            self.committed.copy_from_slice(&self.working);
            self.open = false;
            Ok(())
        }

        fn abort(&mut self) {
            self.working.copy_from_slice(&self.committed);
            self.open = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_all_or_nothing() {
        let mut s = MemStore::<16>::new();
        assert_eq!(s.write(0, &[1]), Err(StoreError::NotInTransaction));
        s.begin().unwrap();
        s.write(0, &[1, 2]).unwrap();
        let mut b = [0; 2];
        s.read(0, &mut b).unwrap();
        assert_eq!(b, [1, 2], "a transaction reads its own writes");
        s.power_cycle();
        s.read(0, &mut b).unwrap();
        assert_eq!(b, [0, 0], "uncommitted writes die with the power");
        s.begin().unwrap();
        s.write(14, &[7, 8]).unwrap();
        assert_eq!(s.write(15, &[7, 8]), Err(StoreError::OutOfBounds));
        s.commit().unwrap();
        s.power_cycle();
        s.read(14, &mut b).unwrap();
        assert_eq!(b, [7, 8]);
    }

    /// The file image holds the card's keys and PINs: only its owner may read it, also when
    /// it replaces a file others could read.
    #[cfg(all(feature = "std", unix))]
    #[test]
    fn file_image_is_readable_by_its_owner_only() {
        extern crate std;
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.state");
        std::fs::write(&path, [0u8; 8]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut s = FileStore::open(&path, 8).unwrap();
        s.begin().unwrap();
        s.write(0, &[1]).unwrap();
        s.commit().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(std::fs::read(&path).unwrap()[0], 1);
    }

    #[test]
    fn power_cut_fails_nth_write_and_everything_after() {
        let mut s = PowerCut::new(MemStore::<8>::new(), Some(2));
        s.begin().unwrap();
        s.write(0, &[1]).unwrap();
        assert_eq!(s.write(1, &[1]), Err(StoreError::PowerLost));
        assert_eq!(s.commit(), Err(StoreError::PowerLost));
        assert_eq!(s.read(0, &mut [0]), Err(StoreError::PowerLost));
        let mut m = s.into_inner();
        m.power_cycle();
        assert_eq!(m.image(), &[0; 8]);
    }
}
