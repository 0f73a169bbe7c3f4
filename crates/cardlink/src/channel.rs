//! The one way the host reaches a card: a [`Channel`] moves raw APDU bytes, whatever the card is.
//!
//! Four kinds exist: [`InProcessChannel`] (a [`VirtualCard`] in this process, e.g. the applet
//! over its state file), [`crate::pcsc::PcscChannel`] (any reader of the system's PC/SC stack,
//! including the vpcd virtual readers), [`crate::modem::ModemChannel`] (the card in a cellular
//! modem, through AT commands) and anything a caller writes. The APDU-level rules
//! (GET RESPONSE, chaining, extended length) live once, in [`crate::link::Link`], above them.

use crate::apdu::Response;
use crate::error::LinkError;

/// The transmission protocol between reader and card (ISO/IEC 7816-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Character protocol: no extended length, case 4 commands answered with `61xx`.
    T0,
    /// Block protocol: extended length possible when the card announces it.
    T1,
    /// No transmission protocol: the card runs in this process.
    Direct,
}

/// What a channel can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The active protocol.
    pub protocol: Protocol,
    /// Whether extended-length APDUs reach the card (reader, protocol and card all support them).
    pub extended_length: bool,
}

/// How hard a reset hits the card (ISO/IEC 7816-3 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// Warm reset: RST toggled, power stays.
    Warm,
    /// Cold reset: power removed and applied again.
    Cold,
}

/// Sends one APDU and returns the card's raw answer (data followed by SW1 SW2).
pub trait Transmit {
    /// One command-response pair, bytes as on the wire.
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError>;
}

/// A connection to one card.
pub trait Channel {
    /// Runs `f` with exclusive access to the card: no other application's APDU comes between
    /// the APDUs `f` sends (so a GET RESPONSE or a command chain stays whole).
    fn exchange(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Transmit) -> Result<Response, LinkError>,
    ) -> Result<Response, LinkError>;

    /// Resets the card and returns the new ATR. Volatile card state is gone afterwards.
    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, LinkError>;

    /// Opens the connection again after the card was removed (and put back), or after any
    /// failure that left the handle unusable; returns the ATR.
    fn reconnect(&mut self) -> Result<Vec<u8>, LinkError>;

    /// The ATR of the current power-up.
    fn atr(&self) -> &[u8];

    /// What the channel carries.
    fn capabilities(&self) -> Capabilities;

    /// A name for messages: the reader name, or what the in-process card is.
    fn name(&self) -> &str;

    /// Whether the channel is itself one logical channel of the card, opened with the applet
    /// selected by the interface in between (a modem's `AT+CCHO`, OMAPI's
    /// `openLogicalChannel`). The interface then owns the channel number of the class byte
    /// and MANAGE CHANNEL is not the client's to send: [`crate::ChannelMode::Logical`] works
    /// on this channel as it is. `false` for a channel that carries APDUs to the card as they
    /// are (a reader, the in-process card, a modem's `AT+CSIM`).
    fn is_applet_channel(&self) -> bool {
        false
    }
}

/// A card that runs in this process: the applet over its store, or a test card.
///
/// The same trait feeds the in-process channel and the vpcd server, so the card a tool opens
/// with `--state FILE` and the card `simfota card serve` puts into pcscd behave the same.
pub trait VirtualCard {
    /// The Answer To Reset (ISO/IEC 7816-3 §8).
    fn atr(&self) -> Vec<u8>;

    /// Processes one command APDU and returns the response (data, SW1, SW2). A card never
    /// fails to answer: internal failures are status words (`6581` memory failure, ...).
    fn process(&mut self, apdu: &[u8]) -> Vec<u8>;

    /// Power is removed: everything volatile (selection, nonce, PIN status) is lost.
    fn power_off(&mut self);

    /// Power is applied again after [`VirtualCard::power_off`].
    fn power_on(&mut self);

    /// Warm reset: volatile state lost as at power-off, power stays.
    fn reset(&mut self);

    /// Whether the card accepts extended-length APDUs.
    fn extended_length(&self) -> bool;
}

impl<T: VirtualCard + ?Sized> VirtualCard for Box<T> {
    fn atr(&self) -> Vec<u8> {
        (**self).atr()
    }
    fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        (**self).process(apdu)
    }
    fn power_off(&mut self) {
        (**self).power_off();
    }
    fn power_on(&mut self) {
        (**self).power_on();
    }
    fn reset(&mut self) {
        (**self).reset();
    }
    fn extended_length(&self) -> bool {
        (**self).extended_length()
    }
}

/// A channel to a [`VirtualCard`] in this process.
pub struct InProcessChannel<C> {
    card: C,
    atr: Vec<u8>,
    name: String,
}

impl<C: VirtualCard> InProcessChannel<C> {
    /// Powers the card on and opens the channel.
    pub fn new(mut card: C, name: impl Into<String>) -> Self {
        card.power_on();
        let atr = card.atr();
        Self {
            card,
            atr,
            name: name.into(),
        }
    }

    /// The card (to inspect it in tests, or to power it off).
    pub fn card(&mut self) -> &mut C {
        &mut self.card
    }

    /// Closes the channel, powering the card off, and gives the card back.
    pub fn into_card(mut self) -> C {
        self.card.power_off();
        self.card
    }
}

struct Direct<'a, C>(&'a mut C);

impl<C: VirtualCard> Transmit for Direct<'_, C> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        Ok(self.0.process(apdu))
    }
}

impl<C: VirtualCard> Channel for InProcessChannel<C> {
    fn exchange(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Transmit) -> Result<Response, LinkError>,
    ) -> Result<Response, LinkError> {
        f(&mut Direct(&mut self.card))
    }

    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, LinkError> {
        match kind {
            ResetKind::Warm => self.card.reset(),
            ResetKind::Cold => {
                self.card.power_off();
                self.card.power_on();
            }
        }
        self.atr = self.card.atr();
        Ok(self.atr.clone())
    }

    fn reconnect(&mut self) -> Result<Vec<u8>, LinkError> {
        // An in-process card cannot be pulled; the session simply goes on.
        Ok(self.atr.clone())
    }

    fn atr(&self) -> &[u8] {
        &self.atr
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            protocol: Protocol::Direct,
            extended_length: self.card.extended_length(),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl<T: Channel + ?Sized> Channel for Box<T> {
    fn exchange(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Transmit) -> Result<Response, LinkError>,
    ) -> Result<Response, LinkError> {
        (**self).exchange(f)
    }
    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, LinkError> {
        (**self).reset(kind)
    }
    fn reconnect(&mut self) -> Result<Vec<u8>, LinkError> {
        (**self).reconnect()
    }
    fn atr(&self) -> &[u8] {
        (**self).atr()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn is_applet_channel(&self) -> bool {
        (**self).is_applet_channel()
    }
}
