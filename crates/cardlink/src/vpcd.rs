//! Serving a [`VirtualCard`] into the system's PC/SC stack through vsmartcard's vpcd driver.
//!
//! vpcd is a pcscd reader driver that listens on TCP (35963 for reader "Virtual PCD 00 00",
//! 35964 for "00 01"); a card "inserts" itself by connecting, and from then on every PC/SC
//! client on the machine (opensc-tool, scriptor, pyscard, our own [`crate::pcsc`] channel)
//! talks to it as to a card in a reader. The wire protocol is a 2-byte big-endian length, then
//! either one control byte (power off `00`, power on `01`, reset `02`, get ATR `04`) or an
//! APDU, answered by a message framed the same way; this module reads it ([`Message`]) and
//! passes power events to the card (which forgets its volatile state as a real card does).
//! The loop can be stopped from another thread.
//!
//! The protocol cannot tell a control byte from a one-byte APDU of the same value: vpcd frames
//! both as a 1-byte message. Power off, power on and reset are not answered, so serving a
//! one-byte APDU `00`, `01` or `02` as a control would leave vpcd waiting for an answer that
//! never comes, and the reader wedged. vpcd never sends a control without a next message close
//! behind (power on and reset are followed at once by a get-ATR, and pcscd asks for the ATR
//! every 400 ms to see whether the card is still there), while it sends nothing at all while it
//! waits for an answer. So such a byte is held for [`AMBIGUOUS_WAIT`]: when vpcd sends more,
//! it was a control; when vpcd stays silent, it was an APDU, and the card answers it (`6700`,
//! ISO/IEC 7816-4 §5.1: shorter than a command header). A one-byte APDU `04` is answered with
//! the ATR: vpcd waits for an answer to its get-ATR just the same, so nothing tells them apart.
//! An empty APDU never reaches the card: vpcd sends no message for it, then waits for an answer
//! (the card cannot tell that silence from an idle reader; PC/SC clients such as pyscard and
//! opensc refuse to send one).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::channel::VirtualCard;

/// The address of vpcd's first virtual reader ("Virtual PCD 00 00").
pub const DEFAULT_VPCD: &str = "127.0.0.1:35963";

/// How long a one-byte message that may be a power event or an APDU is held before it is
/// answered as an APDU (see the module documentation): five of pcscd's 400 ms presence polls.
pub const AMBIGUOUS_WAIT: Duration = Duration::from_secs(2);

/// A vpcd control code (vsmartcard's `vpcd.h`: `VPCD_CTRL_OFF`, `_ON`, `_RESET`, `_ATR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `00`: remove power.
    PowerOff,
    /// `01`: apply power.
    PowerOn,
    /// `02`: reset.
    Reset,
    /// `04`: send the ATR (the only control that is answered).
    GetAtr,
}

impl Control {
    /// The code byte.
    pub const fn code(self) -> u8 {
        match self {
            Self::PowerOff => 0x00,
            Self::PowerOn => 0x01,
            Self::Reset => 0x02,
            Self::GetAtr => 0x04,
        }
    }

    /// Whether vpcd waits for an answer to this control.
    pub const fn answered(self) -> bool {
        matches!(self, Self::GetAtr)
    }
}

/// One message from vpcd, by its body (the bytes after the length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A one-byte body with a control code; it may also be a one-byte APDU of that value.
    Control(Control),
    /// Anything else is a command APDU, passed to the card as it is: the card answers a
    /// malformed one (empty, shorter than its header, lengths that do not add up) with its
    /// status word, ISO/IEC 7816-4 §5.1.
    Apdu(&'a [u8]),
}

impl<'a> Message<'a> {
    /// Classifies a message body.
    pub fn parse(body: &'a [u8]) -> Self {
        match body {
            [0x00] => Self::Control(Control::PowerOff),
            [0x01] => Self::Control(Control::PowerOn),
            [0x02] => Self::Control(Control::Reset),
            [0x04] => Self::Control(Control::GetAtr),
            apdu => Self::Apdu(apdu),
        }
    }
}

/// Frames an answer: its length in two bytes, big-endian, then the bytes; `None` when it is
/// longer than the length field can say.
pub fn frame(answer: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(answer.len()).ok()?;
    let mut out = Vec::with_capacity(answer.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(answer);
    Some(out)
}

/// What happened on the virtual card, for a serve command that reports activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The reader applied power.
    PowerOn,
    /// The reader removed power.
    PowerOff,
    /// The reader reset the card.
    Reset,
    /// One command APDU was processed.
    Apdu {
        /// The command header (CLA INS P1 P2), as far as present.
        header: Vec<u8>,
        /// Command length in bytes.
        command_len: usize,
        /// Response length in bytes (data and status word).
        response_len: usize,
        /// The status word answered.
        sw: u16,
    },
}

/// Why serving ended with a failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No vpcd listens at the address.
    #[error(
        "cannot reach vpcd at {addr}: {source} (is pcscd running with vsmartcard-vpcd installed?)"
    )]
    Connect {
        /// The address tried.
        addr: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The address does not resolve.
    #[error("bad vpcd address {0:?} (expected HOST:PORT)")]
    Address(String),
    /// vpcd closed the connection (pcscd stopped) or the socket failed.
    #[error("the connection to vpcd ended: {0} (pcscd stopped?)")]
    Disconnected(#[source] io::Error),
}

/// How serving ended without failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// [`StopHandle::stop`] was called.
    Stopped,
}

/// Stops a running [`VpcdServer::serve`] from another thread (the card is "pulled").
#[derive(Debug, Clone)]
pub struct StopHandle {
    stream: Arc<TcpStream>,
    stopping: Arc<AtomicBool>,
}

impl StopHandle {
    /// Ends the connection; the reader sees the card removed and `serve` returns.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A virtual card connected to vpcd, not yet serving.
#[derive(Debug)]
pub struct VpcdServer {
    stream: Arc<TcpStream>,
    stopping: Arc<AtomicBool>,
    peer: SocketAddr,
    ambiguous_wait: Duration,
}

impl VpcdServer {
    /// Connects to vpcd at `addr` ("HOST:PORT"): the card is inserted from then on.
    pub fn connect(addr: &str) -> Result<Self, ServeError> {
        let resolved: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|_| ServeError::Address(addr.to_owned()))?
            .collect();
        let first = *resolved
            .first()
            .ok_or_else(|| ServeError::Address(addr.to_owned()))?;
        let stream = TcpStream::connect(&resolved[..]).map_err(|source| ServeError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
        // APDUs are small and answered one by one: send each at once.
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream: Arc::new(stream),
            stopping: Arc::new(AtomicBool::new(false)),
            peer: first,
            ambiguous_wait: AMBIGUOUS_WAIT,
        })
    }

    /// The vpcd address connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sets how long a byte that may be a power event or a one-byte APDU is held (default
    /// [`AMBIGUOUS_WAIT`]); shorter only against a peer that is known to poll faster.
    pub fn with_ambiguous_wait(mut self, wait: Duration) -> Self {
        self.ambiguous_wait = wait;
        self
    }

    /// A handle that stops [`VpcdServer::serve`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stream: Arc::clone(&self.stream),
            stopping: Arc::clone(&self.stopping),
        }
    }

    /// Serves `card` until stopped or until vpcd goes away; `observer` sees every event.
    pub fn serve<C: VirtualCard>(
        self,
        card: &mut C,
        observer: &mut dyn FnMut(&Event),
    ) -> Result<ServeEnd, ServeError> {
        match self.run(card, observer) {
            Ok(never) => match never {},
            Err(_) if self.stopping.load(Ordering::SeqCst) => Ok(ServeEnd::Stopped),
            Err(e) => Err(ServeError::Disconnected(e)),
        }
    }

    fn run<C: VirtualCard>(
        &self,
        card: &mut C,
        observer: &mut dyn FnMut(&Event),
    ) -> io::Result<std::convert::Infallible> {
        let mut stream: &TcpStream = &self.stream;
        // A power event that may still turn out to be a one-byte APDU (module documentation).
        let mut held: Option<Control> = None;
        loop {
            if let Some(control) = held.take() {
                if self.more_within(self.ambiguous_wait)? {
                    power_event(card, control, observer);
                } else {
                    let answer = execute(card, &[control.code()], observer);
                    send(&mut stream, &answer)?;
                    continue;
                }
            }
            let body = self.receive()?;
            match Message::parse(&body) {
                Message::Control(Control::GetAtr) => send(&mut stream, &card.atr())?,
                Message::Control(control) => held = Some(control),
                Message::Apdu(apdu) => {
                    let answer = execute(card, apdu, observer);
                    send(&mut stream, &answer)?;
                }
            }
        }
    }

    /// Whether vpcd sends something (or closes the connection) within `wait`.
    fn more_within(&self, wait: Duration) -> io::Result<bool> {
        // A zero timeout would mean "block forever".
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut probe = [0u8; 1];
        let seen = match self.stream.peek(&mut probe) {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        };
        self.stream.set_read_timeout(None)?;
        seen
    }

    /// Reads one message body.
    fn receive(&self) -> io::Result<Vec<u8>> {
        // vpcd writes a message's 2-byte length and its body in two sends without
        // TCP_NODELAY, so Nagle holds the body until the length is acknowledged; a delayed ACK
        // from us (up to 40 ms on Linux) would then stall every APDU. Acknowledge at once
        // instead (the flag is not sticky: set it before each read).
        #[cfg(target_os = "linux")]
        let _ = socket2::SockRef::from(&*self.stream).set_tcp_quickack(true);
        let mut stream: &TcpStream = &self.stream;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        #[cfg(target_os = "linux")]
        let _ = socket2::SockRef::from(&*self.stream).set_tcp_quickack(true);
        stream.read_exact(&mut body)?;
        Ok(body)
    }
}

fn send(stream: &mut &TcpStream, answer: &[u8]) -> io::Result<()> {
    // The card's answers are bounded by its I/O buffer, far below 64 KiB; a longer one is
    // replaced by 6F00 (no precise diagnosis) rather than cut.
    let framed = frame(answer).unwrap_or_else(|| vec![0x00, 0x02, 0x6F, 0x00]);
    stream.write_all(&framed)
}

fn power_event<C: VirtualCard>(card: &mut C, control: Control, observer: &mut dyn FnMut(&Event)) {
    match control {
        Control::PowerOff => {
            card.power_off();
            observer(&Event::PowerOff);
        }
        Control::PowerOn => {
            card.power_on();
            observer(&Event::PowerOn);
        }
        Control::Reset => {
            card.reset();
            observer(&Event::Reset);
        }
        Control::GetAtr => {}
    }
}

fn execute<C: VirtualCard>(card: &mut C, apdu: &[u8], observer: &mut dyn FnMut(&Event)) -> Vec<u8> {
    let response = card.process(apdu);
    let sw = match response.as_slice() {
        [.., sw1, sw2] => u16::from_be_bytes([*sw1, *sw2]),
        _ => 0,
    };
    observer(&Event::Apdu {
        header: apdu.iter().take(4).copied().collect(),
        command_len: apdu.len(),
        response_len: response.len(),
        sw,
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::AppletCard;
    use simfota_card::CardMemory;
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn one_byte_bodies_with_a_control_code_are_controls_the_rest_apdus() {
        assert_eq!(Message::parse(&[0x00]), Message::Control(Control::PowerOff));
        assert_eq!(Message::parse(&[0x01]), Message::Control(Control::PowerOn));
        assert_eq!(Message::parse(&[0x02]), Message::Control(Control::Reset));
        assert_eq!(Message::parse(&[0x04]), Message::Control(Control::GetAtr));
        for body in [
            &[][..],
            &[0x03],
            &[0x80],
            &[0x00, 0xA4],
            &[0x00, 0xA4, 0x04, 0x00],
        ] {
            assert_eq!(Message::parse(body), Message::Apdu(body));
        }
        assert!(Control::GetAtr.answered());
        assert!(!Control::PowerOff.answered() && !Control::Reset.answered());
    }

    #[test]
    fn answers_are_framed_with_a_two_byte_length() {
        assert_eq!(frame(&[0x67, 0x00]), Some(vec![0x00, 0x02, 0x67, 0x00]));
        assert_eq!(frame(&[]), Some(vec![0x00, 0x00]));
        assert_eq!(frame(&vec![0; 65_535]).map(|f| f.len()), Some(65_537));
        assert_eq!(frame(&vec![0; 65_536]), None);
    }

    /// The vpcd side of the socket, played by the test.
    struct FakeVpcd(TcpStream);

    impl FakeVpcd {
        fn send(&mut self, body: &[u8]) {
            self.0.write_all(&frame(body).unwrap()).unwrap();
        }

        fn receive(&mut self) -> Vec<u8> {
            let mut len = [0u8; 2];
            self.0.read_exact(&mut len).unwrap();
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            self.0.read_exact(&mut body).unwrap();
            body
        }

        fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
            self.send(apdu);
            self.receive()
        }
    }

    fn served() -> (
        FakeVpcd,
        StopHandle,
        mpsc::Receiver<Event>,
        std::thread::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = VpcdServer::connect(&addr)
            .unwrap()
            .with_ambiguous_wait(Duration::from_millis(300));
        let (vpcd, _) = listener.accept().unwrap();
        vpcd.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let stop = server.stop_handle();
        let (events, seen) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut card = AppletCard::new(CardMemory::new());
            let end = server.serve(&mut card, &mut |e| {
                let _ = events.send(e.clone());
            });
            assert!(matches!(end, Ok(ServeEnd::Stopped)), "{end:?}");
        });
        (FakeVpcd(vpcd), stop, seen, thread)
    }

    const SELECT: [u8; 15] = [
        0x00, 0xA4, 0x04, 0x00, 0x09, 0xF0, 0x73, 0x69, 0x6D, 0x66, 0x6F, 0x74, 0x61, 0x01, 0x00,
    ];

    #[test]
    fn one_byte_apdus_vpcd_waits_on_are_answered_6700_and_the_link_goes_on() {
        let (mut vpcd, stop, seen, thread) = served();
        // vpcd sends the byte and waits: the card answers it as the APDU it was.
        for byte in [0x00, 0x01, 0x02] {
            assert_eq!(
                vpcd.transmit(&[byte]),
                [0x67, 0x00],
                "one-byte APDU {byte:02X}"
            );
        }
        // Bodies that can only be APDUs are answered at once, malformed ones with 6700.
        for apdu in [&[][..], &[0x80], &[0x80, 0xCA], &[0x80, 0xCA, 0x01]] {
            assert_eq!(vpcd.transmit(apdu), [0x67, 0x00], "{apdu:02X?}");
        }
        // None of the held bytes was taken for a power event.
        assert!(
            seen.try_iter()
                .all(|e| matches!(e, Event::Apdu { sw: 0x6700, .. })),
        );
        let answer = vpcd.transmit(&SELECT);
        assert_eq!(answer[answer.len() - 2..], [0x90, 0x00]);
        stop.stop();
        thread.join().unwrap();
    }

    #[test]
    fn power_events_followed_by_more_traffic_reach_the_card() {
        let (mut vpcd, stop, seen, thread) = served();
        let answer = vpcd.transmit(&SELECT);
        assert_eq!(answer[answer.len() - 2..], [0x90, 0x00]);
        // What pcscd does on a reset: the control, then at once a get-ATR.
        vpcd.send(&[Control::Reset.code()]);
        let atr = vpcd.transmit(&[Control::GetAtr.code()]);
        assert_eq!(atr, crate::atr::virtual_card_atr(true));
        // The reset cleared the selection: a card command is refused until SELECT again.
        let refused = vpcd.transmit(&[0x80, 0xCA, 0x01, 0x01, 0x00]);
        assert_eq!(refused, [0x69, 0x85]);
        // A power-off, then (no ATR request yet) a power-on and its get-ATR.
        vpcd.send(&[Control::PowerOff.code()]);
        vpcd.send(&[Control::PowerOn.code()]);
        assert_eq!(vpcd.transmit(&[Control::GetAtr.code()]), atr);
        let events: Vec<Event> = seen.try_iter().collect();
        let power: Vec<&Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::Apdu { .. }))
            .collect();
        assert_eq!(power, [&Event::Reset, &Event::PowerOff, &Event::PowerOn]);
        stop.stop();
        thread.join().unwrap();
    }
}
