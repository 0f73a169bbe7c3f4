//! Serving a [`VirtualCard`] into the system's PC/SC stack through vsmartcard's vpcd driver.
//!
//! vpcd is a pcscd reader driver that listens on TCP (35963 for reader "Virtual PCD 00 00",
//! 35964 for "00 01"); a card "inserts" itself by connecting, and from then on every PC/SC
//! client on the machine (opensc-tool, scriptor, pyscard, our own [`crate::pcsc`] channel)
//! talks to it as to a card in a reader. The wire protocol (a 2-byte length, then either one
//! control byte: power off / power on / reset / get ATR, or an APDU) is handled by the `vpicc`
//! crate; this module adds the card side: power events reach the card (which forgets its
//! volatile state as a real card does), and the loop can be stopped from another thread.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::channel::VirtualCard;

/// The address of vpcd's first virtual reader ("Virtual PCD 00 00").
pub const DEFAULT_VPCD: &str = "127.0.0.1:35963";

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
    connection: vpicc::Connection,
    stream: Arc<TcpStream>,
    stopping: Arc<AtomicBool>,
    peer: SocketAddr,
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
        let control = stream.try_clone().map_err(ServeError::Disconnected)?;
        Ok(Self {
            connection: vpicc::Connection::from(stream),
            stream: Arc::new(control),
            stopping: Arc::new(AtomicBool::new(false)),
            peer: first,
        })
    }

    /// The vpcd address connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
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
        mut self,
        card: &mut C,
        observer: &mut dyn FnMut(&Event),
    ) -> Result<ServeEnd, ServeError> {
        let mut adapter = Adapter {
            atr: card.atr(),
            card,
            observer,
        };
        loop {
            // vpcd writes a message's 2-byte length and its body in two sends without
            // TCP_NODELAY, so Nagle holds the body until the length is acknowledged; a delayed
            // ACK from us (up to 40 ms on Linux) would then stall every APDU. Acknowledge at
            // once instead (the flag is not sticky: set it before each read).
            #[cfg(target_os = "linux")]
            let _ = socket2::SockRef::from(&*self.stream).set_tcp_quickack(true);
            match self.connection.poll(&mut adapter) {
                Ok(()) => {}
                Err(_) if self.stopping.load(Ordering::SeqCst) => return Ok(ServeEnd::Stopped),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // A one-byte message that is no control code: vpcd framed a 1-byte
                    // "APDU" (too short for a header, ISO/IEC 7816-4 §5.1). Answer 6700 so
                    // the reader's exchange completes instead of hanging.
                    use std::io::Write;
                    let mut stream: &TcpStream = &self.stream;
                    stream
                        .write_all(&[0x00, 0x02, 0x67, 0x00])
                        .map_err(ServeError::Disconnected)?;
                }
                Err(e) => return Err(ServeError::Disconnected(e)),
            }
        }
    }
}

struct Adapter<'a, C> {
    card: &'a mut C,
    atr: Vec<u8>,
    observer: &'a mut dyn FnMut(&Event),
}

impl<C: VirtualCard> vpicc::VSmartCard for Adapter<'_, C> {
    fn atr(&self) -> &[u8] {
        &self.atr
    }

    fn power_on(&mut self) {
        self.card.power_on();
        self.atr = self.card.atr();
        (self.observer)(&Event::PowerOn);
    }

    fn power_off(&mut self) {
        self.card.power_off();
        (self.observer)(&Event::PowerOff);
    }

    fn reset(&mut self) {
        self.card.reset();
        self.atr = self.card.atr();
        (self.observer)(&Event::Reset);
    }

    fn execute(&mut self, msg: &[u8]) -> Vec<u8> {
        let response = self.card.process(msg);
        let sw = match response.as_slice() {
            [.., sw1, sw2] => u16::from_be_bytes([*sw1, *sw2]),
            _ => 0,
        };
        (self.observer)(&Event::Apdu {
            header: msg.iter().take(4).copied().collect(),
            command_len: msg.len(),
            response_len: response.len(),
            sw,
        });
        response
    }
}
