//! The card behind a cellular modem, reached with AT commands over its serial port
//! (3GPP TS 27.007; feature `modem`).
//!
//! A module maker's device has no card reader: the SIM sits in the modem, and the host talks to
//! the modem through a serial port (`/dev/ttyUSB2`, `/dev/ttyACM0`, a UART). 27.007 gives the
//! host two ways to the card:
//!
//! - **Logical channel** (`AT+CCHO` §8.45, `AT+CGLA` §8.43, `AT+CCHC` §8.46). The modem opens
//!   a logical channel, selects the applet by AID on it, and answers a session id; every APDU
//!   then goes as `AT+CGLA=<session>,<length>,"<hex>"` and comes back as
//!   `+CGLA: <length>,"<hex>"`. The modem puts the channel number into the CLA byte (§8.45
//!   NOTE), so APDUs go as for the basic channel. The modem keeps the basic channel and its
//!   USIM.
//! - **Basic access** (`AT+CSIM` §8.17) for modems without logical channels: APDUs go as they
//!   are. The client then opens its own logical channel with MANAGE CHANNEL (the basic
//!   channel stays the modem's): use [`crate::ChannelMode::Logical`].
//!
//! `<length>` counts hex characters, two per byte, in both directions; an answer whose length
//! does not match its data is refused, not trusted. Every failure is a [`ModemError`]: a
//! `+CME ERROR` (§9.2) with its code and meaning, a plain `ERROR`, a silent modem (time-out),
//! a malformed line. Unsolicited result codes (`+CREG: ...`, `RING`) anywhere between a
//! command and its final result are skipped, and so is the command's echo.
//!
//! A failed `AT+CGLA` leaves the applet session unknown: the modem may have closed the
//! channel, the card may have been reset, the APDU may or may not have run. The channel then
//! reports [`ModemError::ChannelLost`] for that command and for every later one, and sends
//! nothing more on the session until [`Channel::reconnect`] (which `CardClient::reopen`
//! calls) opens a new one. It never sends a command twice on its own.

pub mod at;
pub mod emulator;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::termios::{self, ControlModes, OptionalActions, QueueSelector};

use crate::apdu::{INS_MANAGE_CHANNEL, Response, channel_of};
use crate::channel::{Capabilities, Channel, Protocol, ResetKind, Transmit};
use crate::error::LinkError;
use at::{AtError, CmeCode, Expect, Final, Line, LineBuffer};

/// Which AT access the link uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtMode {
    /// `AT+CCHO` first; `AT+CSIM` when the modem does not have it (it answers `ERROR`, or
    /// `+CME ERROR: 4`, operation not supported).
    #[default]
    Auto,
    /// Logical channel access only (`AT+CCHO` / `AT+CGLA` / `AT+CCHC`).
    Cgla,
    /// Basic access only (`AT+CSIM`).
    Csim,
}

/// How the modem link is set up.
#[derive(Debug, Clone)]
pub struct ModemOptions {
    /// Which AT access to use.
    pub at_mode: AtMode,
    /// How long the modem may take to answer one command line.
    pub timeout: Duration,
    /// Line speed of the serial port; `None` leaves it (a USB modem ignores it anyway).
    pub baud: Option<u32>,
    /// The application `AT+CCHO` opens: the simfota applet.
    pub aid: Vec<u8>,
}

impl Default for ModemOptions {
    fn default() -> Self {
        Self {
            at_mode: AtMode::Auto,
            timeout: Duration::from_secs(5),
            baud: None,
            aid: simfota_card::AID.to_vec(),
        }
    }
}

/// What went wrong between the host and the modem.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModemError {
    /// The port cannot be opened or set up.
    #[error("cannot open the modem port {port}: {source}")]
    Open {
        /// The port.
        port: String,
        /// The cause.
        #[source]
        source: Arc<io::Error>,
    },
    /// Reading from or writing to the port failed.
    #[error("the modem port {port} failed during {command}: {source}")]
    Io {
        /// The port.
        port: String,
        /// The command in flight (its name only: APDU data such as a PIN is never quoted).
        command: &'static str,
        /// The cause.
        #[source]
        source: Arc<io::Error>,
    },
    /// No final result code within the time-out.
    #[error("the modem on {port} did not answer {command} within {} ms", timeout.as_millis())]
    Timeout {
        /// The port.
        port: String,
        /// The command.
        command: &'static str,
        /// The time-out.
        timeout: Duration,
    },
    /// `+CME ERROR: <err>` (27.007 §9.2).
    #[error("the modem on {port} answered {command} with +CME ERROR: {code}")]
    Cme {
        /// The port.
        port: String,
        /// The command.
        command: &'static str,
        /// The error code.
        code: CmeCode,
    },
    /// A plain `ERROR` (V.250 §5.7.1): a command the modem does not know, a syntax error, or
    /// any failure while `+CMEE=0`.
    #[error(
        "the modem on {port} answered {command} with ERROR (it does not know the command, or refused it without a reason)"
    )]
    Error {
        /// The port.
        port: String,
        /// The command.
        command: &'static str,
    },
    /// A line that is not what the command answers.
    #[error("the modem on {port} answered {command} with a malformed line {line:?}: {detail}")]
    Malformed {
        /// The port.
        port: String,
        /// The command.
        command: &'static str,
        /// The line (at most 80 characters of it).
        line: String,
        /// What is wrong.
        detail: AtError,
    },
    /// `at_mode = "cgla"`, and the modem has no logical channel access.
    #[error(
        "the modem on {port} cannot open a logical channel to the applet ({cause}); set at_mode to \"auto\" or \"csim\" to use AT+CSIM"
    )]
    NoLogicalChannel {
        /// The port.
        port: String,
        /// What AT+CCHO answered.
        #[source]
        cause: Box<ModemError>,
    },
    /// No logical channel to the applet is open (closed, or a reopening failed).
    #[error("no logical channel to the applet is open on {port}; open the card session again")]
    NoSession {
        /// The port.
        port: String,
    },
    /// The applet's logical channel is gone or in an unknown state: an `AT+CGLA` failed (the
    /// modem closed the channel, the card was reset or removed, the modem stopped
    /// answering). The command may or may not have run on the card.
    #[error(
        "the logical channel to the applet on {port} (session {session}) is lost: {cause}; the last command may or may not have run on the card, open the card session again"
    )]
    ChannelLost {
        /// The port.
        port: String,
        /// The session id the channel had.
        session: u32,
        /// The failure that lost it.
        #[source]
        cause: Box<ModemError>,
    },
}

impl ModemError {
    /// The `+CME ERROR` code behind this error, if any.
    pub fn cme(&self) -> Option<&CmeCode> {
        match self {
            ModemError::Cme { code, .. } => Some(code),
            ModemError::NoLogicalChannel { cause, .. } | ModemError::ChannelLost { cause, .. } => {
                cause.cme()
            }
            _ => None,
        }
    }
}

/// A byte stream to a modem that can wait for input with a time-out.
pub trait Port: Read + Write + Send {
    /// Waits until bytes can be read, at most `timeout`; `false` when the time ran out.
    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool>;
}

/// A serial port (a tty or a pseudo-terminal) in raw mode.
#[derive(Debug)]
pub struct SerialPort {
    file: File,
}

impl SerialPort {
    /// Opens the device file, not as controlling terminal, and sets raw mode (8 data bits,
    /// no echo, no line editing, no CR/LF translation: the line discipline of a tty would
    /// otherwise echo the modem's answers back to it and turn its CRs into LFs), receiver on,
    /// modem control lines ignored, and the speed when given. Input already waiting is
    /// dropped.
    pub fn open(path: &Path, baud: Option<u32>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(path)?;
        let mut t = termios::tcgetattr(&file)?;
        t.make_raw();
        t.control_modes |= ControlModes::CLOCAL | ControlModes::CREAD;
        if let Some(baud) = baud {
            t.set_speed(baud)?;
        }
        termios::tcsetattr(&file, OptionalActions::Now, &t)?;
        termios::tcflush(&file, QueueSelector::IFlush)?;
        Ok(Self { file })
    }
}

impl Read for SerialPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for SerialPort {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Port for SerialPort {
    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        wait_readable(self.file.as_fd(), timeout)
    }
}

/// `poll` for input on `fd`, at most `timeout`; interrupted waits go on.
pub(crate) fn wait_readable(
    fd: std::os::fd::BorrowedFd<'_>,
    timeout: Duration,
) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// How the channel reaches the applet.
#[derive(Debug)]
enum Access {
    /// A logical channel the modem opened (`AT+CCHO`): its session id, or the failure that
    /// lost it.
    Logical {
        session: u32,
        lost: Option<Box<ModemError>>,
    },
    /// A logical channel lost and not opened again yet (the old session's id, closed or not).
    Closed { stale: Option<u32> },
    /// `AT+CSIM`; the logical channels opened through it by MANAGE CHANNEL.
    Basic { opened: Vec<u8> },
}

/// A channel to the card in a modem, through AT commands.
pub struct ModemChannel<P: Port = SerialPort> {
    port: P,
    name: String,
    port_name: String,
    options: ModemOptions,
    lines: LineBuffer,
    access: Access,
    unsolicited: u64,
}

impl ModemChannel<SerialPort> {
    /// Opens the modem's serial port at `path` and the way to the applet (see [`AtMode`]).
    pub fn open(path: &Path, options: ModemOptions) -> Result<Self, ModemError> {
        let port_name = path.display().to_string();
        let port = SerialPort::open(path, options.baud).map_err(|source| ModemError::Open {
            port: port_name.clone(),
            source: Arc::new(source),
        })?;
        Self::with_port(port, &port_name, options)
    }
}

impl<P: Port> ModemChannel<P> {
    /// The link over any port: switches echo off (`ATE0`), asks for numeric `+CME ERROR`
    /// codes (`AT+CMEE=1`) and opens the applet's logical channel, or settles for `AT+CSIM`.
    pub fn with_port(port: P, port_name: &str, options: ModemOptions) -> Result<Self, ModemError> {
        let mut channel = Self {
            port,
            name: format!("modem {port_name}"),
            port_name: port_name.to_owned(),
            options,
            lines: LineBuffer::new(),
            access: Access::Closed { stale: None },
            unsolicited: 0,
        };
        channel.init()?;
        channel.access = match channel.options.at_mode {
            AtMode::Csim => Access::Basic { opened: Vec::new() },
            mode => match channel.open_logical() {
                Ok(session) => Access::Logical {
                    session,
                    lost: None,
                },
                Err(e) if mode == AtMode::Auto && lacks_command(&e) => {
                    Access::Basic { opened: Vec::new() }
                }
                Err(e) if lacks_command(&e) => {
                    return Err(ModemError::NoLogicalChannel {
                        port: channel.port_name.clone(),
                        cause: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            },
        };
        Ok(channel)
    }

    /// The access in use: [`AtMode::Cgla`] or [`AtMode::Csim`].
    pub fn at_mode(&self) -> AtMode {
        match self.access {
            Access::Basic { .. } => AtMode::Csim,
            _ => AtMode::Cgla,
        }
    }

    /// The session id of the applet's logical channel, while it is open and not lost.
    pub fn session(&self) -> Option<u32> {
        match self.access {
            Access::Logical {
                session,
                lost: None,
            } => Some(session),
            _ => None,
        }
    }

    /// Unsolicited result codes skipped so far.
    pub fn unsolicited_skipped(&self) -> u64 {
        self.unsolicited
    }

    /// Closes the applet's logical channel (`AT+CCHC`), if one is open.
    pub fn close(&mut self) -> Result<(), ModemError> {
        let stale = match &self.access {
            Access::Logical { session, .. } => Some(*session),
            Access::Closed { stale } => *stale,
            Access::Basic { .. } => return Ok(()),
        };
        self.access = Access::Closed { stale: None };
        match stale {
            Some(session) => self
                .command("AT+CCHC", &at::cchc(session), Expect::Nothing)
                .map(|_| ()),
            None => Ok(()),
        }
    }

    fn init(&mut self) -> Result<(), ModemError> {
        self.command("ATE0", "ATE0", Expect::Nothing)?;
        // Numeric codes where the modem can give them; a modem that refuses keeps plain
        // ERROR, which the link reports as such.
        match self.command("AT+CMEE", "AT+CMEE=1", Expect::Nothing) {
            Ok(_) | Err(ModemError::Error { .. } | ModemError::Cme { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn open_logical(&mut self) -> Result<u32, ModemError> {
        const C: &str = "AT+CCHO";
        let line = at::ccho(&self.options.aid);
        let answer = self.command(C, &line, Expect::SessionId)?;
        let answer =
            answer.ok_or_else(|| self.malformed(C, "", AtError::BadSessionId(String::new())))?;
        at::parse_session_id(&answer).map_err(|e| self.malformed(C, &answer, e))
    }

    fn malformed(&self, command: &'static str, line: &str, detail: AtError) -> ModemError {
        ModemError::Malformed {
            port: self.port_name.clone(),
            command,
            line: line.chars().take(80).collect(),
            detail,
        }
    }

    fn io(&self, command: &'static str, source: io::Error) -> ModemError {
        ModemError::Io {
            port: self.port_name.clone(),
            command,
            source: Arc::new(source),
        }
    }

    /// Drops what the modem sent while no command was in flight (late answers of a command
    /// that timed out, unsolicited result codes).
    fn drain(&mut self, command: &'static str) -> Result<(), ModemError> {
        let mut buf = [0u8; 512];
        while self
            .port
            .wait_readable(Duration::ZERO)
            .map_err(|e| self.io(command, e))?
        {
            match self.port.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(command, e)),
            }
        }
        self.lines.clear();
        Ok(())
    }

    /// Sends one command line and waits for its final result code: the awaited answer line
    /// on `OK`, a typed error otherwise.
    fn command(
        &mut self,
        command: &'static str,
        line: &str,
        expect: Expect,
    ) -> Result<Option<String>, ModemError> {
        self.drain(command)?;
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\r');
        self.port
            .write_all(&out)
            .and_then(|()| self.port.flush())
            .map_err(|e| self.io(command, e))?;
        let deadline = Instant::now() + self.options.timeout;
        let mut answer = None;
        let mut buf = [0u8; 1024];
        loop {
            let next = self
                .lines
                .pop()
                .map_err(|e| self.malformed(command, "", e))?;
            let Some(text) = next else {
                let left = deadline.saturating_duration_since(Instant::now());
                let ready = self
                    .port
                    .wait_readable(left)
                    .map_err(|e| self.io(command, e))?;
                if !ready {
                    return Err(ModemError::Timeout {
                        port: self.port_name.clone(),
                        command,
                        timeout: self.options.timeout,
                    });
                }
                match self.port.read(&mut buf) {
                    Ok(0) => {
                        return Err(self.io(
                            command,
                            io::Error::new(io::ErrorKind::UnexpectedEof, "the port was closed"),
                        ));
                    }
                    Ok(n) => self.lines.push(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io(command, e)),
                }
                continue;
            };
            match at::classify(&text, line, expect) {
                Line::Echo => {}
                Line::Unsolicited(_) => self.unsolicited += 1,
                Line::Answer(a) => {
                    if answer.is_some() {
                        return Err(self.malformed(
                            command,
                            &a,
                            AtError::Prefix {
                                expected: "one answer line, not two",
                            },
                        ));
                    }
                    answer = Some(a);
                }
                Line::Final(Final::Ok) => return Ok(answer),
                Line::Final(Final::Error) => {
                    return Err(ModemError::Error {
                        port: self.port_name.clone(),
                        command,
                    });
                }
                Line::Final(Final::Cme(code)) => {
                    return Err(ModemError::Cme {
                        port: self.port_name.clone(),
                        command,
                        code,
                    });
                }
            }
        }
    }

    /// One APDU through `AT+CGLA` or `AT+CSIM`.
    fn apdu(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ModemError> {
        match self.access {
            Access::Logical {
                session,
                lost: None,
            } => {
                const C: &str = "AT+CGLA";
                let result = self
                    .command(C, &at::cgla(session, apdu), Expect::Prefix("+CGLA:"))
                    .and_then(|answer| self.decode(C, "+CGLA:", answer));
                result.map_err(|cause| {
                    // The session is in an unknown state from here on: nothing more is sent
                    // on it until a reconnect opens a new one.
                    let lost = ModemError::ChannelLost {
                        port: self.port_name.clone(),
                        session,
                        cause: Box::new(cause),
                    };
                    self.access = Access::Logical {
                        session,
                        lost: Some(Box::new(lost.clone())),
                    };
                    lost
                })
            }
            Access::Logical {
                lost: Some(ref lost),
                ..
            } => Err((**lost).clone()),
            Access::Closed { .. } => Err(ModemError::NoSession {
                port: self.port_name.clone(),
            }),
            Access::Basic { .. } => {
                const C: &str = "AT+CSIM";
                let answer = self.command(C, &at::csim(apdu), Expect::Prefix("+CSIM:"))?;
                let response = self.decode(C, "+CSIM:", answer)?;
                self.track_manage_channel(apdu, &response);
                Ok(response)
            }
        }
    }

    fn decode(
        &self,
        command: &'static str,
        prefix: &'static str,
        answer: Option<String>,
    ) -> Result<Vec<u8>, ModemError> {
        let answer = answer
            .ok_or_else(|| self.malformed(command, "OK", AtError::Prefix { expected: prefix }))?;
        at::parse_hex_answer(prefix, &answer).map_err(|e| self.malformed(command, &answer, e))
    }

    /// Notes the logical channels opened and closed with MANAGE CHANNEL through `AT+CSIM`,
    /// so a reset can close them (ISO/IEC 7816-4 §11.1.2).
    fn track_manage_channel(&mut self, apdu: &[u8], response: &[u8]) {
        let Access::Basic { opened } = &mut self.access else {
            return;
        };
        let ok = response.ends_with(&[0x90, 0x00]);
        match (apdu, response) {
            ([_, INS_MANAGE_CHANNEL, 0x00, 0x00, ..], [n, 0x90, 0x00]) => opened.push(*n),
            ([_, INS_MANAGE_CHANNEL, 0x00, p2, ..], _) if ok && *p2 != 0 => opened.push(*p2),
            ([cla, INS_MANAGE_CHANNEL, 0x80, p2, ..], _) if ok => {
                let n = if *p2 == 0 {
                    channel_of(*cla).unwrap_or(0)
                } else {
                    *p2
                };
                opened.retain(|&c| c != n);
            }
            _ => {}
        }
    }
}

/// Whether AT+CCHO failed because the modem does not have the command.
fn lacks_command(e: &ModemError) -> bool {
    match e {
        ModemError::Error { .. } => true,
        ModemError::Cme { code, .. } => code.is_not_supported(),
        _ => false,
    }
}

struct Exchange<'a, P: Port>(&'a mut ModemChannel<P>);

impl<P: Port> Transmit for Exchange<'_, P> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        Ok(self.0.apdu(apdu)?)
    }
}

impl<P: Port> Channel for ModemChannel<P> {
    fn exchange(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Transmit) -> Result<Response, LinkError>,
    ) -> Result<Response, LinkError> {
        f(&mut Exchange(self))
    }

    /// 27.007 gives the host no card reset. On a logical channel the link closes the channel
    /// and opens a new one: the card ends everything the applet held for that channel
    /// (selection, binding, nonce, PIN status), as a reset would. Through `AT+CSIM` it closes
    /// the logical channels opened through it (MANAGE CHANNEL close), which ends their
    /// sessions the same way; the basic channel is the modem's and stays as it is.
    fn reset(&mut self, _kind: ResetKind) -> Result<Vec<u8>, LinkError> {
        match &mut self.access {
            Access::Basic { opened } => {
                for n in std::mem::take(opened) {
                    // Its answer does not matter: a channel the card closed already is gone.
                    let _ = self.apdu(&[0x00, INS_MANAGE_CHANNEL, 0x80, n]);
                }
            }
            _ => {
                // A channel that will not close (lost already) is the modem's to forget.
                let _ = self.close();
                let session = self.open_logical()?;
                self.access = Access::Logical {
                    session,
                    lost: None,
                };
            }
        }
        Ok(Vec::new())
    }

    /// Opens the applet's logical channel again once it was lost (closing the old session
    /// first; its answer does not matter); echo is switched off again, in case the modem
    /// restarted. Nothing is done while the channel is fine.
    fn reconnect(&mut self) -> Result<Vec<u8>, LinkError> {
        match &self.access {
            Access::Logical { lost: None, .. } => {}
            Access::Basic { .. } => self.init()?,
            Access::Logical { .. } | Access::Closed { .. } => {
                self.init()?;
                let _ = self.close();
                let session = self.open_logical()?;
                self.access = Access::Logical {
                    session,
                    lost: None,
                };
            }
        }
        Ok(Vec::new())
    }

    /// Empty: 27.007 has no command that gives the host the card's ATR.
    fn atr(&self) -> &[u8] {
        &[]
    }

    /// The modem does not say which protocol it runs with the card, nor whether its AT
    /// interface takes extended APDUs: short APDUs, chaining and GET RESPONSE, which every
    /// SIM and every modem takes.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            protocol: Protocol::T0,
            extended_length: false,
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn is_applet_channel(&self) -> bool {
        !matches!(self.access, Access::Basic { .. })
    }
}

impl<P: Port> Drop for ModemChannel<P> {
    fn drop(&mut self) {
        // The applet's channel goes back to the modem (AT+CCHC), best effort and with a short
        // wait: a modem that does not answer closes it anyway when the card resets.
        if matches!(self.access, Access::Logical { .. }) {
            self.options.timeout = self.options.timeout.min(Duration::from_secs(1));
            let _ = self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::collections::VecDeque;

    use super::*;

    /// A modem that answers each command line with the next scripted text.
    struct Scripted {
        answers: VecDeque<String>,
        pending: Vec<u8>,
        sent: Vec<String>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent
                .push(String::from_utf8_lossy(buf).trim_end().to_owned());
            if let Some(answer) = self.answers.pop_front() {
                self.pending.extend_from_slice(answer.as_bytes());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Port for Scripted {
        fn wait_readable(&mut self, _: Duration) -> io::Result<bool> {
            Ok(!self.pending.is_empty())
        }
    }

    fn modem(answers: &[&str]) -> Result<ModemChannel<Scripted>, ModemError> {
        let port = Scripted {
            answers: answers.iter().map(|a| (*a).to_owned()).collect(),
            pending: Vec::new(),
            sent: Vec::new(),
        };
        ModemChannel::with_port(port, "script", ModemOptions::default())
    }

    const OPEN: [&str; 3] = ["\r\nOK\r\n", "\r\nOK\r\n", "\r\n3\r\n\r\nOK\r\n"];

    fn apdu_error(answer: &str) -> ModemError {
        let mut answers = OPEN.to_vec();
        answers.push(answer);
        let mut m = modem(&answers).unwrap();
        assert_eq!(
            m.session(),
            Some(3),
            "the bare session id of 27.007 Table 105"
        );
        let err = m.apdu(&[0x80, 0xCA, 0x01, 0x01, 0x00]).unwrap_err();
        match err {
            ModemError::ChannelLost {
                session: 3, cause, ..
            } => *cause,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn malformed_cgla_answers_lose_the_session_with_the_reason() {
        let cases: [(&str, AtError); 4] = [
            (
                "\r\n+CGLA: 2,\"9000\"\r\n\r\nOK\r\n",
                AtError::LengthMismatch {
                    stated: 2,
                    actual: 4,
                },
            ),
            ("\r\n+CGLA: 4,9000\r\n\r\nOK\r\n", AtError::MissingQuotes),
            ("\r\n+CGLA: 3,\"900\"\r\n\r\nOK\r\n", AtError::OddHex(3)),
            ("\r\nOK\r\n", AtError::Prefix { expected: "+CGLA:" }),
        ];
        for (answer, want) in cases {
            match apdu_error(answer) {
                ModemError::Malformed {
                    command: "AT+CGLA",
                    detail,
                    ..
                } => assert_eq!(detail, want, "{answer:?}"),
                other => panic!("{answer:?}: {other}"),
            }
        }
        let cause = apdu_error("\r\n+CME ERROR: 14\r\n");
        assert_eq!(cause.cme(), Some(&CmeCode::Numeric(14)));
        assert!(cause.to_string().contains("SIM busy"), "{cause}");
        assert!(matches!(
            apdu_error("\r\nERROR\r\n"),
            ModemError::Error {
                command: "AT+CGLA",
                ..
            }
        ));
    }

    #[test]
    fn ccho_refusals_fall_back_only_when_the_modem_lacks_the_command() {
        let csim = modem(&["\r\nOK\r\n", "\r\nOK\r\n", "\r\n+CME ERROR: 4\r\n"]).unwrap();
        assert_eq!(csim.at_mode(), AtMode::Csim);
        let csim = modem(&["\r\nOK\r\n", "\r\nERROR\r\n", "\r\nERROR\r\n"]).unwrap();
        assert_eq!(
            csim.at_mode(),
            AtMode::Csim,
            "AT+CMEE refused, AT+CCHO unknown"
        );
        for (code, meaning) in [
            (3, "operation not allowed"),
            (13, "SIM failure"),
            (100, "unknown"),
        ] {
            let answer = format!("\r\n+CME ERROR: {code}\r\n");
            let err = modem(&["\r\nOK\r\n", "\r\nOK\r\n", &answer]).err().unwrap();
            assert_eq!(err.cme(), Some(&CmeCode::Numeric(code)));
            assert!(
                err.to_string()
                    .ends_with(&format!("AT+CCHO with +CME ERROR: {code} ({meaning})")),
                "{err}"
            );
        }
        let err = modem(&["\r\nOK\r\n", "\r\nOK\r\n", "\r\n+CCHO: x\r\n\r\nOK\r\n"])
            .err()
            .unwrap();
        assert!(matches!(
            err,
            ModemError::Malformed {
                detail: AtError::BadSessionId(_),
                ..
            }
        ));
    }

    #[test]
    fn apdu_data_never_appears_in_errors() {
        let mut answers = OPEN.to_vec();
        answers.push("\r\n+CME ERROR: 3\r\n");
        let mut m = modem(&answers).unwrap();
        let verify = [
            0x00, 0x20, 0x00, 0x81, 0x08, b'1', b'2', b'3', b'4', 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        let text = m.apdu(&verify).unwrap_err().to_string();
        assert!(
            !text.contains("31323334") && !text.contains("0020"),
            "{text}"
        );
    }
}
