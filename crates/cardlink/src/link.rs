//! The APDU rules every channel shares (ISO/IEC 7816-4 §5.1-§5.3, §7.6.1; 7816-3 §12.2).
//!
//! A caller hands a [`Command`] of any size to [`Link::transmit`] and gets the whole
//! [`Response`]. In between the link:
//! - sends it short when it fits; otherwise extended when the channel carries extended
//!   length, else as a chain of short commands (CLA b5 set on all but the last, §5.3.3);
//! - answers `61xx` with GET RESPONSE until the card has sent everything (§5.3.4, and the
//!   T=0 case 4 rule of 7816-3 §12.2.4 where the card cannot send data with the command);
//! - answers `6Cxx` by sending the same command again with Le = `xx` (7816-3 §12.2.3);
//! - falls back from extended length to chaining once if the card answers `6700` to an
//!   extended command (a reader that passed it on, a card that does not take it).

use crate::apdu::{
    CLA_CHAINING, Command, INS_GET_RESPONSE, Response, SHORT_MAX_DATA, SHORT_MAX_NE, StatusWord,
    channel_of, cla_on_channel,
};
use crate::channel::{Capabilities, Channel, ResetKind, Transmit};
use crate::error::LinkError;

/// Default bound on one assembled response (far above the card's largest object).
pub const DEFAULT_MAX_RESPONSE: usize = 64 * 1024;

/// Whether the link may use extended length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendedMode {
    /// When the channel reports that reader and card take it.
    Auto,
    /// Never: short APDUs, chaining and GET RESPONSE only (what every SIM takes).
    Never,
}

/// Link settings.
#[derive(Debug, Clone, Copy)]
pub struct LinkOptions {
    /// Extended-length use.
    pub extended: ExtendedMode,
    /// The most response bytes assembled from `61xx` rounds before giving up.
    pub max_response: usize,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            extended: ExtendedMode::Auto,
            max_response: DEFAULT_MAX_RESPONSE,
        }
    }
}

/// Counters of what went over the wire, for benchmarks and the card budget tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Command APDUs sent (every chain link and GET RESPONSE counts).
    pub apdus: u64,
    /// Bytes sent to the card.
    pub bytes_out: u64,
    /// Bytes received from the card (including status words).
    pub bytes_in: u64,
}

/// A channel plus the APDU rules.
pub struct Link<C> {
    channel: C,
    options: LinkOptions,
    extended: bool,
    stats: LinkStats,
}

impl<C: Channel> Link<C> {
    /// A link with default options.
    pub fn new(channel: C) -> Self {
        Self::with_options(channel, LinkOptions::default())
    }

    /// A link with the given options.
    pub fn with_options(channel: C, options: LinkOptions) -> Self {
        let extended = Self::extended_allowed(&channel.capabilities(), options);
        Self {
            channel,
            options,
            extended,
            stats: LinkStats::default(),
        }
    }

    fn extended_allowed(caps: &Capabilities, options: LinkOptions) -> bool {
        options.extended == ExtendedMode::Auto && caps.extended_length
    }

    /// The channel underneath.
    pub fn channel(&self) -> &C {
        &self.channel
    }

    /// The channel underneath, mutably (to reach an in-process card in tests).
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// Gives the channel back.
    pub fn into_channel(self) -> C {
        self.channel
    }

    /// Whether commands longer than 255 bytes go out as one extended APDU (else: chained).
    pub fn uses_extended(&self) -> bool {
        self.extended
    }

    /// Traffic so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Sets the counters back to zero.
    pub fn reset_stats(&mut self) {
        self.stats = LinkStats::default();
    }

    /// Resets the card; its volatile state (selection, nonce, PIN status) is gone afterwards.
    pub fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, LinkError> {
        let atr = self.channel.reset(kind)?;
        self.extended = Self::extended_allowed(&self.channel.capabilities(), self.options);
        Ok(atr)
    }

    /// Opens the channel again after the card was removed or the handle broke; returns the ATR.
    pub fn reconnect(&mut self) -> Result<Vec<u8>, LinkError> {
        let atr = self.channel.reconnect()?;
        self.extended = Self::extended_allowed(&self.channel.capabilities(), self.options);
        Ok(atr)
    }

    /// Sends one logical command and returns its whole response.
    pub fn transmit(&mut self, command: &Command) -> Result<Response, LinkError> {
        let use_extended = self.extended && !command.fits_short();
        let options = self.options;
        let mut stats = self.stats;
        let result = self.channel.exchange(&mut |tx| {
            let mut counted = Counted {
                inner: tx,
                stats: &mut stats,
            };
            run(&mut counted, command, use_extended, options.max_response)
        });
        self.stats = stats;
        match result {
            // A card that refuses the extended form: go short + chaining for good (see the
            // module comment). Wrong length means the command did not run, so resending is safe.
            Ok(response) if use_extended && response.sw == StatusWord::WRONG_LENGTH => {
                self.extended = false;
                let mut stats = self.stats;
                let retried = self.channel.exchange(&mut |tx| {
                    let mut counted = Counted {
                        inner: tx,
                        stats: &mut stats,
                    };
                    run(&mut counted, command, false, options.max_response)
                });
                self.stats = stats;
                retried
            }
            other => other,
        }
    }
}

struct Counted<'a, 'b> {
    inner: &'a mut dyn Transmit,
    stats: &'b mut LinkStats,
}

impl Transmit for Counted<'_, '_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        let raw = self.inner.transmit(apdu)?;
        self.stats.apdus += 1;
        self.stats.bytes_out += apdu.len() as u64;
        self.stats.bytes_in += raw.len() as u64;
        Ok(raw)
    }
}

fn exchange_one(tx: &mut dyn Transmit, apdu: &[u8]) -> Result<Response, LinkError> {
    let raw = tx.transmit(apdu)?;
    Response::from_bytes(&raw).ok_or(LinkError::MalformedResponse { len: raw.len() })
}

/// `61xx`/`6Cxx` SW2 to a length: `00` stands for 256 (ISO/IEC 7816-4 §5.6).
fn sw2_len(sw: StatusWord) -> usize {
    match sw.sw2() {
        0 => SHORT_MAX_NE,
        n => usize::from(n),
    }
}

/// The CLA for GET RESPONSE: the interindustry class on the command's logical channel (first
/// coding for 0-3, further coding for 4-19, ISO/IEC 7816-4 §5.1.1), except for the GSM class
/// `A0` whose cards answer GET RESPONSE only in that class (3GPP TS 51.011 §9).
fn get_response_cla(cla: u8) -> u8 {
    match channel_of(cla).and_then(|ch| cla_on_channel(0x00, ch)) {
        Some(iso) => iso,
        None if cla == 0xA0 => 0xA0,
        None => cla & 0x03,
    }
}

fn run(
    tx: &mut dyn Transmit,
    command: &Command,
    extended: bool,
    max_response: usize,
) -> Result<Response, LinkError> {
    // The last (or only) APDU of the command, the one whose answer carries the response.
    let last = if extended {
        command.clone()
    } else if command.data.len() > SHORT_MAX_DATA {
        // Command chaining, ISO/IEC 7816-4 §5.3.3: every link but the last has CLA b5 set and
        // must be answered 9000; a refusal ends the chain with the card's status word.
        let chunks: Vec<&[u8]> = command.data.chunks(SHORT_MAX_DATA).collect();
        let (tail, head): (&[u8], &[&[u8]]) = match chunks.split_last() {
            Some((tail, head)) => (tail, head),
            None => (&[], &[]),
        };
        for chunk in head {
            let link = Command::new(
                command.cla | CLA_CHAINING,
                command.ins,
                command.p1,
                command.p2,
            )
            .with_data(chunk.to_vec());
            let response = exchange_one(tx, &link.encode_short()?)?;
            if response.sw != StatusWord::OK {
                return Ok(response);
            }
        }
        let mut last =
            Command::new(command.cla, command.ins, command.p1, command.p2).with_data(tail.to_vec());
        last.ne = command.ne.map(|ne| ne.min(SHORT_MAX_NE));
        last
    } else {
        let mut last = command.clone();
        // More than 256 bytes come back through 61xx rounds.
        last.ne = command.ne.map(|ne| ne.min(SHORT_MAX_NE));
        last
    };
    let encode = |c: &Command| {
        if extended {
            c.encode_extended()
        } else {
            c.encode_short()
        }
    };

    let mut response = exchange_one(tx, &encode(&last)?)?;
    // 6Cxx: the card wants exactly xx as Le; the command did not run, so resend it once
    // (ISO/IEC 7816-3 §12.2.3).
    if response.sw.sw1() == 0x6C {
        let mut again = last.clone();
        again.ne = Some(sw2_len(response.sw));
        response = exchange_one(tx, &encode(&again)?)?;
    }

    let mut data = std::mem::take(&mut response.data);
    let gr_cla = get_response_cla(command.cla);
    while response.sw.sw1() == 0x61 {
        if data.len() >= max_response {
            return Err(LinkError::ResponseTooLong {
                limit: max_response,
            });
        }
        let wanted = sw2_len(response.sw);
        let get = Command::new(gr_cla, INS_GET_RESPONSE, 0, 0).with_ne(wanted);
        response = exchange_one(tx, &get.encode_short()?)?;
        if response.sw.sw1() == 0x6C {
            let get = Command::new(gr_cla, INS_GET_RESPONSE, 0, 0).with_ne(sw2_len(response.sw));
            response = exchange_one(tx, &get.encode_short()?)?;
        }
        data.extend_from_slice(&response.data);
    }
    if data.len() > max_response {
        return Err(LinkError::ResponseTooLong {
            limit: max_response,
        });
    }
    Ok(Response {
        data,
        sw: response.sw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{InProcessChannel, VirtualCard};

    /// A card with the transport habits of a T=0 SIM: it answers at most `chunk` bytes at a
    /// time through `61xx`, insists on an exact Le (`6Cxx`) for its one case 2 command, and
    /// takes long data only by chaining (or extended, when `extended` is set). Its command
    /// `80 E0` echoes the assembled data reversed; `80 CA` returns a 20-byte object.
    struct IsoCard {
        chunk: usize,
        extended: bool,
        pending: Vec<u8>,
        chain: Vec<u8>,
        log: Vec<Vec<u8>>,
    }

    impl IsoCard {
        fn new(chunk: usize, extended: bool) -> Self {
            Self {
                chunk,
                extended,
                pending: Vec::new(),
                chain: Vec::new(),
                log: Vec::new(),
            }
        }

        fn answer(&mut self, mut data: Vec<u8>) -> Vec<u8> {
            if data.len() <= self.chunk {
                data.extend_from_slice(&[0x90, 0x00]);
                return data;
            }
            self.pending = data.split_off(self.chunk);
            let left = self.pending.len().min(255) as u8;
            data.extend_from_slice(&[0x61, left]);
            data
        }
    }

    fn parse(apdu: &[u8]) -> Option<(u8, u8, Vec<u8>, Option<usize>)> {
        let (cla, ins) = (apdu[0], apdu[1]);
        let body = &apdu[4..];
        match body.len() {
            0 => Some((cla, ins, vec![], None)),
            1 => Some((cla, ins, vec![], Some(body[0] as usize))),
            _ if body[0] == 0 && body.len() >= 3 => {
                let n = u16::from_be_bytes([body[1], body[2]]) as usize;
                let rest = &body[3..];
                if rest.len() == n {
                    Some((cla, ins, rest.to_vec(), None))
                } else if rest.len() == n + 2 {
                    Some((cla, ins, rest[..n].to_vec(), Some(0)))
                } else {
                    None
                }
            }
            _ => {
                let n = body[0] as usize;
                let rest = &body[1..];
                if rest.len() == n {
                    Some((cla, ins, rest.to_vec(), None))
                } else if rest.len() == n + 1 {
                    Some((cla, ins, rest[..n].to_vec(), Some(rest[n] as usize)))
                } else {
                    None
                }
            }
        }
    }

    impl VirtualCard for IsoCard {
        fn atr(&self) -> Vec<u8> {
            vec![0x3B, 0x00]
        }
        fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
            self.log.push(apdu.to_vec());
            let Some((cla, ins, data, le)) = parse(apdu) else {
                return vec![0x67, 0x00];
            };
            if data.len() > 255 && !self.extended {
                return vec![0x67, 0x00];
            }
            match (cla, ins) {
                (0x00, 0xC0) => {
                    let n = self.pending.len().min(match le {
                        Some(0) => 256,
                        Some(n) => n,
                        None => 0,
                    });
                    let rest = self.pending.split_off(n);
                    let part = std::mem::replace(&mut self.pending, rest);
                    let mut out = part;
                    if self.pending.is_empty() {
                        out.extend_from_slice(&[0x90, 0x00]);
                    } else {
                        let left = self.pending.len().min(255) as u8;
                        out.extend_from_slice(&[0x61, left]);
                    }
                    out
                }
                (0x90, 0xE0) => {
                    self.chain.extend_from_slice(&data);
                    vec![0x90, 0x00]
                }
                (0x80, 0xE0) => {
                    self.chain.extend_from_slice(&data);
                    let mut all = std::mem::take(&mut self.chain);
                    all.reverse();
                    self.answer(all)
                }
                (0x80, 0xCA) => {
                    if le != Some(20) {
                        return vec![0x6C, 20];
                    }
                    self.answer((0..20).collect())
                }
                _ => vec![0x6D, 0x00],
            }
        }
        fn power_off(&mut self) {
            self.pending.clear();
            self.chain.clear();
        }
        fn power_on(&mut self) {}
        fn reset(&mut self) {
            self.power_off();
        }
        fn extended_length(&self) -> bool {
            self.extended
        }
    }

    fn link(chunk: usize, extended: bool) -> Link<InProcessChannel<IsoCard>> {
        Link::new(InProcessChannel::new(IsoCard::new(chunk, extended), "iso"))
    }

    #[test]
    fn long_command_is_chained_and_long_answer_fetched_with_get_response() {
        let mut link = link(200, false);
        let data: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        let r = link
            .transmit(
                &Command::new(0x80, 0xE0, 0, 0)
                    .with_data(data.clone())
                    .with_ne(256),
            )
            .unwrap();
        let mut want = data;
        want.reverse();
        assert_eq!(r.sw, StatusWord::OK);
        assert_eq!(r.data, want);
        let log = &link.channel_mut().card().log;
        // 3 chained links (255+255+190); the answer: 200 bytes + 6100-style status, then GET
        // RESPONSE rounds of at most 255 (what 61xx announces) for the other 500.
        assert_eq!(log.iter().filter(|a| a[0] == 0x90).count(), 2);
        assert_eq!(log.iter().filter(|a| a[1] == 0xC0).count(), 2);
        assert!(log.iter().all(|a| a.len() <= 5 + 255 + 1));
        assert_eq!(link.stats().apdus, 5);
    }

    #[test]
    fn extended_capable_card_gets_one_apdu() {
        let mut link = link(1000, true);
        assert!(link.uses_extended());
        let data = vec![7u8; 700];
        let r = link
            .transmit(
                &Command::new(0x80, 0xE0, 0, 0)
                    .with_data(data.clone())
                    .with_ne(1000),
            )
            .unwrap();
        assert_eq!(r.data, data);
        assert_eq!(link.stats().apdus, 1);
    }

    #[test]
    fn wrong_le_is_resent_with_the_exact_length() {
        let mut link = link(200, false);
        let r = link
            .transmit(&Command::new(0x80, 0xCA, 0, 0).with_ne(256))
            .unwrap();
        assert_eq!(r.data, (0..20).collect::<Vec<u8>>());
        let log = &link.channel_mut().card().log;
        assert_eq!(log.len(), 2);
        assert_eq!(log[1], [0x80, 0xCA, 0, 0, 20]);
    }

    #[test]
    fn refused_chain_link_ends_the_chain_with_the_cards_status() {
        let mut link = link(200, false);
        let r = link
            .transmit(&Command::new(0x80, 0xE4, 0, 0).with_data(vec![0; 600]))
            .unwrap();
        assert_eq!(r.sw, StatusWord::INS_NOT_SUPPORTED);
        assert_eq!(link.stats().apdus, 1);
    }

    #[test]
    fn extended_refused_with_6700_falls_back_to_chaining() {
        // Claims extended support but refuses data above 255 bytes like a short-only card.
        struct Liar(IsoCard);
        impl VirtualCard for Liar {
            fn atr(&self) -> Vec<u8> {
                self.0.atr()
            }
            fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
                if apdu.len() > 261 {
                    return vec![0x67, 0x00];
                }
                self.0.process(apdu)
            }
            fn power_off(&mut self) {}
            fn power_on(&mut self) {}
            fn reset(&mut self) {}
            fn extended_length(&self) -> bool {
                true
            }
        }
        let mut link = Link::new(InProcessChannel::new(Liar(IsoCard::new(300, true)), "liar"));
        let data = vec![1u8; 400];
        let r = link
            .transmit(
                &Command::new(0x80, 0xE0, 0, 0)
                    .with_data(data.clone())
                    .with_ne(256),
            )
            .unwrap();
        assert_eq!(r.data, data);
        assert!(!link.uses_extended());
    }

    #[test]
    fn endless_61xx_is_cut_at_the_limit() {
        struct Chatty;
        impl VirtualCard for Chatty {
            fn atr(&self) -> Vec<u8> {
                vec![0x3B, 0x00]
            }
            fn process(&mut self, _: &[u8]) -> Vec<u8> {
                let mut v = vec![0xAA; 256];
                v.extend_from_slice(&[0x61, 0x00]);
                v
            }
            fn power_off(&mut self) {}
            fn power_on(&mut self) {}
            fn reset(&mut self) {}
            fn extended_length(&self) -> bool {
                false
            }
        }
        let mut link = Link::with_options(
            InProcessChannel::new(Chatty, "chatty"),
            LinkOptions {
                extended: ExtendedMode::Never,
                max_response: 4096,
            },
        );
        let err = link
            .transmit(&Command::new(0x80, 0x01, 0, 0).with_ne(256))
            .unwrap_err();
        assert!(matches!(err, LinkError::ResponseTooLong { limit: 4096 }));
    }

    #[test]
    fn runt_response_is_a_link_error() {
        struct Runt;
        impl VirtualCard for Runt {
            fn atr(&self) -> Vec<u8> {
                vec![0x3B, 0x00]
            }
            fn process(&mut self, _: &[u8]) -> Vec<u8> {
                vec![0x90]
            }
            fn power_off(&mut self) {}
            fn power_on(&mut self) {}
            fn reset(&mut self) {}
            fn extended_length(&self) -> bool {
                false
            }
        }
        let mut link = Link::new(InProcessChannel::new(Runt, "runt"));
        let err = link.transmit(&Command::new(0x00, 0xA4, 4, 0)).unwrap_err();
        assert!(matches!(err, LinkError::MalformedResponse { len: 1 }));
    }
}
