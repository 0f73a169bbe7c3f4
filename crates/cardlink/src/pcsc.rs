//! Cards in the readers of the system's PC/SC stack (pcsc-lite's `pcscd` on Linux), physical
//! or virtual (vsmartcard's vpcd readers, into which `simfota card serve` puts our applet).
//!
//! Each logical command runs inside one PC/SC transaction (`SCardBeginTransaction`), so another
//! application sharing the reader cannot slip an APDU between a chain's links or into a GET
//! RESPONSE sequence. A reset by anyone is reported once as [`LinkError::CardReset`] after the
//! channel has reconnected, so the caller knows the card's volatile state is gone and the next
//! command works again. A removed card is reported as [`LinkError::CardRemoved`] until
//! [`Channel::reconnect`] finds a card in the reader again.

use std::ffi::CString;

use pcsc::{Context, Disposition, Error as PcscError, Protocols, Scope, ShareMode};

use crate::apdu::Response;
use crate::atr;
use crate::channel::{Capabilities, Channel, Protocol, ResetKind, Transmit};
use crate::error::LinkError;

/// How the reader is shared with other applications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Share {
    /// Other applications may use the card between our commands (each command is still whole).
    #[default]
    Shared,
    /// Nobody else reaches the card while the channel is open.
    Exclusive,
}

impl Share {
    fn mode(self) -> ShareMode {
        match self {
            Share::Shared => ShareMode::Shared,
            Share::Exclusive => ShareMode::Exclusive,
        }
    }
}

fn map_error(error: PcscError, reader: &str) -> LinkError {
    let reader = reader.to_owned();
    match error {
        PcscError::NoService | PcscError::ServiceStopped | PcscError::CommDataLost => {
            LinkError::NoService
        }
        PcscError::NoReadersAvailable => LinkError::NoReaders,
        PcscError::NoSmartcard => LinkError::NoCard { reader },
        // A reader that vanished takes its card with it.
        PcscError::RemovedCard | PcscError::ReaderUnavailable => LinkError::CardRemoved { reader },
        PcscError::ResetCard => LinkError::CardReset { reader },
        PcscError::SharingViolation => LinkError::ReaderBusy { reader },
        // NotTransacted: the reader driver could not pass the command on (a mute card, or
        // one that vanished before pcscd noticed).
        PcscError::UnresponsiveCard
        | PcscError::UnpoweredCard
        | PcscError::NotTransacted
        | PcscError::CommError => LinkError::Unresponsive { reader },
        source => LinkError::Pcsc { reader, source },
    }
}

fn context() -> Result<Context, LinkError> {
    Context::establish(Scope::User).map_err(|e| map_error(e, "PC/SC context"))
}

fn reader_names(ctx: &Context) -> Result<Vec<String>, LinkError> {
    match ctx.list_readers_owned() {
        Ok(names) => Ok(names
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()),
        Err(PcscError::NoReadersAvailable) => Ok(Vec::new()),
        Err(e) => Err(map_error(e, "PC/SC context")),
    }
}

/// The names of the readers PC/SC knows (empty when there is none).
pub fn list_readers() -> Result<Vec<String>, LinkError> {
    reader_names(&context()?)
}

/// Picks a reader: the exact name, else the one reader whose name contains `wanted`
/// (case-insensitive), so `--reader "PCD 00 01"` works.
fn resolve(wanted: &str, available: &[String]) -> Result<String, LinkError> {
    if let Some(exact) = available.iter().find(|n| *n == wanted) {
        return Ok(exact.clone());
    }
    let needle = wanted.to_lowercase();
    let matches: Vec<&String> = available
        .iter()
        .filter(|n| n.to_lowercase().contains(&needle))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(LinkError::ReaderNotFound {
            name: wanted.to_owned(),
            available: available.to_vec(),
        }),
    }
}

/// A card in a PC/SC reader.
pub struct PcscChannel {
    context: Context,
    card: Option<pcsc::Card>,
    reader: CString,
    name: String,
    share: Share,
    atr: Vec<u8>,
    protocol: Protocol,
    extended: bool,
}

impl std::fmt::Debug for PcscChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscChannel")
            .field("reader", &self.name)
            .field("protocol", &self.protocol)
            .field("extended", &self.extended)
            .finish()
    }
}

impl PcscChannel {
    /// Connects (shared) to the card in `reader`, or, with `None`, to the first reader that
    /// holds a card.
    pub fn connect(reader: Option<&str>) -> Result<Self, LinkError> {
        Self::connect_with(reader, Share::Shared)
    }

    /// Connects with the given sharing.
    pub fn connect_with(reader: Option<&str>, share: Share) -> Result<Self, LinkError> {
        let context = context()?;
        let available = reader_names(&context)?;
        if available.is_empty() {
            return Err(LinkError::NoReaders);
        }
        let candidates = match reader {
            Some(wanted) => vec![resolve(wanted, &available)?],
            None => available,
        };
        let mut last = None;
        for name in &candidates {
            let Ok(c_name) = CString::new(name.as_str()) else {
                continue;
            };
            match context.connect(&c_name, share.mode(), Protocols::ANY) {
                Ok(card) => {
                    let mut channel = Self {
                        context,
                        card: Some(card),
                        reader: c_name,
                        name: name.clone(),
                        share,
                        atr: Vec::new(),
                        protocol: Protocol::T1,
                        extended: false,
                    };
                    channel.refresh()?;
                    return Ok(channel);
                }
                Err(PcscError::NoSmartcard | PcscError::RemovedCard) if reader.is_none() => {
                    last = Some(LinkError::NoCard {
                        reader: "any reader".to_owned(),
                    });
                }
                Err(e) => {
                    if reader.is_some() {
                        return Err(map_error(e, name));
                    }
                    last = Some(map_error(e, name));
                }
            }
        }
        Err(last.unwrap_or(LinkError::NoReaders))
    }

    /// The reader's name.
    pub fn reader(&self) -> &str {
        &self.name
    }

    /// Reads ATR and protocol of the current connection and derives the capabilities.
    fn refresh(&mut self) -> Result<(), LinkError> {
        let card = self.card.as_ref().ok_or_else(|| LinkError::CardRemoved {
            reader: self.name.clone(),
        })?;
        let status = card.status2_owned().map_err(|e| map_error(e, &self.name))?;
        self.atr = status.atr().to_vec();
        self.protocol = match status.protocol2() {
            Some(pcsc::Protocol::T0) => Protocol::T0,
            _ => Protocol::T1,
        };
        let info = atr::parse(&self.atr).unwrap_or_default();
        // Extended length needs T=1 (T=0 would need ENVELOPE, 7816-4 §7.6.2) and the card's
        // announcement in its ATR; a reader that cannot pass it makes the link fall back.
        self.extended = self.protocol == Protocol::T1 && info.extended_length;
        Ok(())
    }

    /// After a reset by someone else the handle must be reconnected before it works again.
    fn recover_from_reset(&mut self) -> Result<(), LinkError> {
        if let Some(card) = self.card.as_mut() {
            card.reconnect(self.share.mode(), Protocols::ANY, Disposition::LeaveCard)
                .map_err(|e| map_error(e, &self.name))?;
        }
        self.refresh()
    }
}

struct PcscTransmit<'a> {
    card: &'a pcsc::Card,
    name: &'a str,
    buffer: Vec<u8>,
}

impl Transmit for PcscTransmit<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        match self.card.transmit(apdu, &mut self.buffer) {
            // Every response ends with SW1 SW2 (ISO/IEC 7816-4 §5.1); an empty one, or a
            // driver that could not pass the command on, means the card went mute
            // mid-command. vpcd answers so when its virtual card disconnects, before pcscd
            // has noticed the removal: wait for pcscd to tell which it was.
            Ok([]) | Err(PcscError::NotTransacted | PcscError::CommError) => Err(self.why_mute()),
            Ok(raw) => Ok(raw.to_vec()),
            Err(e) => Err(map_error(e, self.name)),
        }
    }
}

impl PcscTransmit<'_> {
    fn why_mute(&self) -> LinkError {
        for _ in 0..20 {
            match self.card.status2_owned() {
                Err(e) => return map_error(e, self.name),
                Ok(status) if status.status().contains(pcsc::Status::ABSENT) => {
                    return LinkError::CardRemoved {
                        reader: self.name.to_owned(),
                    };
                }
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        LinkError::Unresponsive {
            reader: self.name.to_owned(),
        }
    }
}

impl Channel for PcscChannel {
    fn exchange(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Transmit) -> Result<Response, LinkError>,
    ) -> Result<Response, LinkError> {
        let name = self.name.clone();
        let card = self.card.as_mut().ok_or_else(|| LinkError::CardRemoved {
            reader: name.clone(),
        })?;
        let result = match card.transaction2() {
            Ok(tx) => {
                let mut t = PcscTransmit {
                    card: &tx,
                    name: &name,
                    buffer: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
                };
                let result = f(&mut t);
                // Ending fails only when the card went away; the result says so already.
                let _ = tx.end(Disposition::LeaveCard);
                result
            }
            Err((_, e)) => Err(map_error(e, &name)),
        };
        match result {
            Err(LinkError::CardReset { reader }) => {
                self.recover_from_reset()?;
                Err(LinkError::CardReset { reader })
            }
            Err(LinkError::CardRemoved { reader }) => {
                // The handle is dead; only reconnect() brings a card back.
                if let Some(card) = self.card.take() {
                    let _ = card.disconnect(Disposition::LeaveCard);
                }
                Err(LinkError::CardRemoved { reader })
            }
            other => other,
        }
    }

    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, LinkError> {
        let disposition = match kind {
            ResetKind::Warm => Disposition::ResetCard,
            ResetKind::Cold => Disposition::UnpowerCard,
        };
        let name = self.name.clone();
        let card = self.card.as_mut().ok_or(LinkError::CardRemoved {
            reader: name.clone(),
        })?;
        card.reconnect(self.share.mode(), Protocols::ANY, disposition)
            .map_err(|e| map_error(e, &name))?;
        self.refresh()?;
        Ok(self.atr.clone())
    }

    fn reconnect(&mut self) -> Result<Vec<u8>, LinkError> {
        if let Some(card) = self.card.take() {
            let _ = card.disconnect(Disposition::LeaveCard);
        }
        let card = self
            .context
            .connect(&self.reader, self.share.mode(), Protocols::ANY)
            .map_err(|e| map_error(e, &self.name))?;
        self.card = Some(card);
        self.refresh()?;
        Ok(self.atr.clone())
    }

    fn atr(&self) -> &[u8] {
        &self.atr
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            protocol: self.protocol,
            extended_length: self.extended,
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PcscChannel {
    fn drop(&mut self) {
        // pcsc::Card's own drop resets the card; leaving it as it is keeps a session that
        // another process (or a later connection of ours) continues, as a phone would.
        if let Some(card) = self.card.take() {
            let _ = card.disconnect(Disposition::LeaveCard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_names_resolve_exactly_or_by_unique_part() {
        let readers = vec![
            "Virtual PCD 00 00".to_owned(),
            "Virtual PCD 00 01".to_owned(),
        ];
        assert_eq!(resolve("Virtual PCD 00 01", &readers).unwrap(), readers[1]);
        assert_eq!(resolve("pcd 00 00", &readers).unwrap(), readers[0]);
        assert!(matches!(
            resolve("Virtual PCD", &readers),
            Err(LinkError::ReaderNotFound { .. })
        ));
        assert!(matches!(
            resolve("Gemalto", &readers),
            Err(LinkError::ReaderNotFound { .. })
        ));
    }
}
