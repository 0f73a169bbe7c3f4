//! The applet as a [`VirtualCard`] in this process, over a state file.
//!
//! This is the card that `--state CARD.state` opens and that `simfota card serve` puts into
//! pcscd. Its persistent memory is the card crate's file store: every command's writes are
//! one transaction, committed by an atomic file replacement before the answer leaves, so a
//! killed process leaves the card as it was before or after the command. Power-off and reset
//! clear the applet's RAM (nonce, terminal binding, PIN status, pending response), as on a
//! real card. A lock file next to the state keeps two processes from running one card.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use simfota_card::{Applet, FileStore, IO_CAP, PERSISTENT_SIZE, Store};

use crate::atr::virtual_card_atr;
use crate::channel::VirtualCard;
use crate::platform::{Crypto, LocalPlatform};

/// The platform of a host-run card: the operating system's random generator, and the crypto
/// back-end chosen when the card is made.
pub type CardPlatform = LocalPlatform<rand_core::OsRng>;

/// Why a state file cannot be opened as a card.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file cannot be read, or is not a card image.
    #[error("cannot open card state {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Another process runs this card.
    #[error(
        "card state {path} is in use by another process (a running `simfota card serve`?); use --reader to reach that card through PC/SC"
    )]
    InUse {
        /// The state file.
        path: PathBuf,
    },
}

/// The applet over a store, as a card in this process.
pub struct AppletCard<S: Store> {
    applet: Applet<S, CardPlatform>,
    out: Vec<u8>,
    // Held for the card's lifetime: the advisory lock on `<state>.lock`.
    _lock: Option<File>,
}

/// The applet over its state file.
pub type FileCard = AppletCard<FileStore>;

impl AppletCard<FileStore> {
    /// Opens the card whose persistent memory is `path` (a blank card if the file does not
    /// exist yet: the first committed write creates it).
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Self::open_with(path, Crypto::default())
    }

    /// [`AppletCard::open`] with the crypto back-end `crypto`. The state file is the same
    /// whichever back-end runs the card.
    pub fn open_with(path: &Path, crypto: Crypto) -> Result<Self, OpenError> {
        let lock_path = {
            let mut p = path.as_os_str().to_owned();
            p.push(".lock");
            PathBuf::from(p)
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| OpenError::State {
                path: path.to_owned(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(OpenError::InUse {
                    path: path.to_owned(),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(OpenError::State {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let store = FileStore::open(path, PERSISTENT_SIZE).map_err(|source| OpenError::State {
            path: path.to_owned(),
            source,
        })?;
        let mut card = Self::with_crypto(store, crypto);
        card._lock = Some(lock);
        Ok(card)
    }
}

impl<S: Store> AppletCard<S> {
    /// The applet over any store (a `MemStore` in tests), on the software crypto back-end.
    pub fn new(store: S) -> Self {
        Self::with_crypto(store, Crypto::default())
    }

    /// The applet over any store, on the crypto back-end `crypto`.
    pub fn with_crypto(store: S, crypto: Crypto) -> Self {
        Self {
            applet: Applet::new(store, LocalPlatform::new(crypto, rand_core::OsRng)),
            // The whole I/O buffer fits one answer when Ne allows it (extended length).
            out: vec![0; IO_CAP + 2],
            _lock: None,
        }
    }

    /// The applet (to inspect its store in tests).
    pub fn applet(&self) -> &Applet<S, CardPlatform> {
        &self.applet
    }

    /// Gives the store back (to restart the card from it).
    pub fn into_store(self) -> S {
        self.applet.into_store()
    }
}

impl<S: Store> VirtualCard for AppletCard<S> {
    fn atr(&self) -> Vec<u8> {
        virtual_card_atr(true)
    }

    fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        let n = self.applet.process(apdu, &mut self.out);
        self.out[..n].to_vec()
    }

    fn power_off(&mut self) {
        self.applet.reset();
    }

    fn power_on(&mut self) {
        // RAM was cleared at power-off; a first power-on finds it clear as well.
    }

    fn reset(&mut self) {
        self.applet.reset();
    }

    fn extended_length(&self) -> bool {
        true
    }
}
