//! A cellular modem on a pseudo-terminal, with a [`VirtualCard`] as its SIM: what the tests
//! (and anyone without a module at hand) open as `[card] modem = ...`.
//!
//! It speaks the AT commands of the modem link as 3GPP TS 27.007 gives them: `AT+CCHO`
//! (MANAGE CHANNEL open, then SELECT by AID on the new channel, answers `+CCHO: <session>`),
//! `AT+CGLA` (the channel number put into the CLA byte, §8.45 NOTE; MANAGE CHANNEL refused, as
//! the modem restricts the host to its channel), `AT+CCHC`, `AT+CSIM` (APDUs as they are),
//! `ATE0`/`ATE1`, `AT+CMEE=0|1|2` (plain `ERROR`, numeric or verbose `+CME ERROR`, §9.1).
//! Lengths count hex characters; a wrong one is `+CME ERROR: 50` (incorrect parameters), an
//! unknown session `+CME ERROR: 21` (invalid index). Session ids count up from 1 and are
//! never reused, so they differ from the channel numbers the card hands out.
//!
//! [`EmulatorOptions`] makes it a difficult modem: without logical channels (`ERROR` to
//! `AT+CCHO`, as a modem that does not know the command), echo that `ATE0` does not stop,
//! unsolicited result codes around every n-th answer, a channel dropped at the n-th
//! `AT+CGLA` (closed by the modem, card reset, card removed), or silence after n commands.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{self, OptionalActions};

use super::at;
use crate::apdu::{INS_MANAGE_CHANNEL, cla_on_channel};
use crate::channel::VirtualCard;

/// When the modem echoes command lines (V.250 §6.2.4, `E`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Echo {
    /// On until `ATE0` (V.250's default `E1`).
    #[default]
    UntilAte0,
    /// On whatever the host says (a modem whose `ATE0` does not hold).
    Always,
}

/// How the modem loses the applet's channel at the n-th `AT+CGLA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelDrop {
    /// The modem closes the channel (MANAGE CHANNEL close to the card) before it runs the
    /// command: that command and every later one on the session get `+CME ERROR: 21`.
    Closed,
    /// The command runs on the card, then the card is reset (every logical channel closed,
    /// the applet's RAM cleared); the answer is `+CME ERROR: 13` (SIM failure).
    CardReset,
    /// The card is gone before the command runs: `+CME ERROR: 10` (SIM not inserted) to
    /// every command that needs it from then on.
    CardRemoved,
}

/// What kind of modem the emulator is.
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    /// Whether `AT+CCHO`/`AT+CGLA`/`AT+CCHC` exist; without them they answer `ERROR`.
    pub no_logical_channels: bool,
    /// Echo behaviour.
    pub echo: Echo,
    /// An unsolicited result code before the answer of every n-th command line, and one
    /// between its information text and its final result code.
    pub unsolicited_every: Option<u32>,
    /// Drop the channel at this `AT+CGLA` (1 = the first).
    pub drop_channel: Option<(u32, ChannelDrop)>,
    /// Answer nothing after this many command lines.
    pub mute_after: Option<u32>,
}

/// A running emulated modem; stopped (and its thread joined) on drop.
pub struct ModemEmulator<C: VirtualCard + Send + 'static> {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<C>>,
}

impl<C: VirtualCard + Send + 'static> ModemEmulator<C> {
    /// Opens a pseudo-terminal and starts the modem on its master side, `card` as its SIM
    /// (powered on); [`ModemEmulator::path`] is the serial port to open.
    pub fn start(mut card: C, options: EmulatorOptions) -> io::Result<Self> {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let path = PathBuf::from(OsStr::from_bytes(name.as_bytes()));
        // The modem keeps the terminal side open itself, so the host may open and close it
        // at will (a pty whose last slave closes reports a hang-up), and sets it raw before
        // any byte crosses it.
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(&path)?;
        let mut t = termios::tcgetattr(&slave)?;
        t.make_raw();
        termios::tcsetattr(&slave, OptionalActions::Now, &t)?;
        card.power_on();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut modem = Modem {
            card,
            echo: true,
            cmee: 0,
            sessions: Vec::new(),
            next_session: 1,
            cgla: 0,
            lines: 0,
            removed: false,
            turn: 0,
            log: Arc::clone(&log),
            options,
        };
        let master = File::from(master);
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("modem-emulator".into())
            .spawn(move || {
                let _slave = slave;
                modem.serve(master, &flag);
                modem.card
            })?;
        Ok(Self {
            path,
            stop,
            log,
            thread: Some(thread),
        })
    }

    /// The serial port of the modem (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every command line received so far, in order.
    pub fn commands(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the modem and gives its card back; `None` if the modem's thread failed.
    pub fn stop(mut self) -> Option<C> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl<C: VirtualCard + Send + 'static> Drop for ModemEmulator<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Unsolicited result codes the modem scatters (27.007 §7.2 `+CREG`, §10.1.19 `+CGEV`,
/// 27.005 `+CMTI`, V.250 `RING`).
const UNSOLICITED: [&str; 4] = ["+CREG: 1", "RING", "+CMTI: \"SM\",3", "+CGEV: ME PDN ACT 1"];

struct Modem<C> {
    card: C,
    options: EmulatorOptions,
    echo: bool,
    cmee: u8,
    /// Open sessions: (session id, channel number).
    sessions: Vec<(u32, u8)>,
    next_session: u32,
    cgla: u32,
    lines: u32,
    removed: bool,
    turn: usize,
    log: Arc<Mutex<Vec<String>>>,
}

/// What a command line gets back.
enum Reply {
    Ok(Option<String>),
    Error,
    Cme(u16),
}

impl<C: VirtualCard> Modem<C> {
    fn serve(&mut self, mut port: File, stop: &AtomicBool) {
        let mut line = Vec::new();
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            match super::wait_readable(port.as_fd(), Duration::from_millis(20)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => return,
            }
            let n = match port.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.echo && !self.muted() {
                let _ = port.write_all(&buf[..n]);
            }
            for &b in &buf[..n] {
                if b == b'\r' || b == b'\n' {
                    let text = String::from_utf8_lossy(&line).trim().to_owned();
                    line.clear();
                    if !text.is_empty() {
                        let out = self.command(&text);
                        if !out.is_empty() {
                            let _ = port.write_all(out.as_bytes());
                        }
                    }
                } else {
                    line.push(b);
                }
            }
        }
    }

    /// Whether the modem has gone silent.
    fn muted(&self) -> bool {
        self.options.mute_after.is_some_and(|m| self.lines >= m)
    }

    /// Runs one command line; the bytes to send back.
    fn command(&mut self, text: &str) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(text.to_owned());
        if self.muted() {
            return String::new();
        }
        self.lines += 1;
        let reply = self.run(text);
        let urc = self
            .options
            .unsolicited_every
            .is_some_and(|n| n > 0 && self.lines.is_multiple_of(n));
        let mut out = String::new();
        let mut unsolicited = |out: &mut String| {
            out.push_str("\r\n");
            out.push_str(UNSOLICITED[self.turn % UNSOLICITED.len()]);
            out.push_str("\r\n");
            self.turn += 1;
        };
        if urc {
            unsolicited(&mut out);
        }
        match reply {
            Reply::Ok(info) => {
                if let Some(info) = info {
                    out.push_str("\r\n");
                    out.push_str(&info);
                    out.push_str("\r\n");
                    if urc {
                        unsolicited(&mut out);
                    }
                }
                out.push_str("\r\nOK\r\n");
            }
            Reply::Error => out.push_str("\r\nERROR\r\n"),
            Reply::Cme(code) => {
                let text = match self.cmee {
                    0 => "ERROR".to_owned(),
                    1 => format!("+CME ERROR: {code}"),
                    _ => format!("+CME ERROR: {}", at::CmeCode::Numeric(code).describe()),
                };
                out.push_str("\r\n");
                out.push_str(&text);
                out.push_str("\r\n");
            }
        }
        out
    }

    fn run(&mut self, text: &str) -> Reply {
        let (name, args) = match text.split_once('=') {
            Some((n, a)) => (n.to_ascii_uppercase(), Some(a.trim())),
            None => (text.to_ascii_uppercase(), None),
        };
        match (name.as_str(), args) {
            ("AT", None) => Reply::Ok(None),
            ("ATE0", None) => {
                self.echo = self.options.echo == Echo::Always;
                Reply::Ok(None)
            }
            ("ATE" | "ATE1", None) => {
                self.echo = true;
                Reply::Ok(None)
            }
            ("AT+CMEE", Some(n @ ("0" | "1" | "2"))) => {
                self.cmee = n.as_bytes()[0] - b'0';
                Reply::Ok(None)
            }
            ("AT+CCHO" | "AT+CGLA" | "AT+CCHC", _) if self.options.no_logical_channels => {
                Reply::Error
            }
            ("AT+CCHO", Some(args)) => self.ccho(args),
            ("AT+CCHC", Some(args)) => self.cchc(args),
            ("AT+CGLA", Some(args)) => self.cgla(args),
            ("AT+CSIM", Some(args)) => self.csim(args),
            _ => Reply::Error,
        }
    }

    fn ccho(&mut self, args: &str) -> Reply {
        if self.removed {
            return Reply::Cme(10);
        }
        let aid = match args
            .strip_prefix('"')
            .and_then(|a| a.strip_suffix('"'))
            .map(at::unhex)
        {
            Some(Ok(aid)) if (1..=16).contains(&aid.len()) => aid,
            _ => return Reply::Cme(50),
        };
        let opened = self
            .card
            .process(&[0x00, INS_MANAGE_CHANNEL, 0x00, 0x00, 0x01]);
        let channel = match opened.as_slice() {
            [n @ 1..=19, 0x90, 0x00] => *n,
            _ => return Reply::Cme(3),
        };
        let mut select = vec![
            cla_on_channel(0x00, channel).unwrap_or(0x00),
            0xA4,
            0x04,
            0x00,
            aid.len() as u8,
        ];
        select.extend_from_slice(&aid);
        select.push(0x00);
        let answer = self.card.process(&select);
        if !matches!(answer.as_slice(), [.., 0x90 | 0x61, _]) {
            self.card
                .process(&[0x00, INS_MANAGE_CHANNEL, 0x80, channel]);
            return Reply::Cme(3);
        }
        let session = self.next_session;
        self.next_session += 1;
        self.sessions.push((session, channel));
        Reply::Ok(Some(format!("+CCHO: {session}")))
    }

    fn channel_of(&self, session: u32) -> Option<u8> {
        self.sessions
            .iter()
            .find(|(s, _)| *s == session)
            .map(|(_, c)| *c)
    }

    fn cchc(&mut self, args: &str) -> Reply {
        let Ok(session) = args.parse::<u32>() else {
            return Reply::Cme(50);
        };
        let Some(channel) = self.channel_of(session) else {
            return Reply::Cme(21);
        };
        self.sessions.retain(|(s, _)| *s != session);
        if !self.removed {
            self.card
                .process(&[0x00, INS_MANAGE_CHANNEL, 0x80, channel]);
        }
        Reply::Ok(None)
    }

    fn cgla(&mut self, args: &str) -> Reply {
        let Some((session, rest)) = args.split_once(',') else {
            return Reply::Cme(50);
        };
        let Ok(session) = session.trim().parse::<u32>() else {
            return Reply::Cme(50);
        };
        let mut apdu = match at::parse_length_and_hex(rest) {
            Ok(apdu) if apdu.len() >= 4 => apdu,
            _ => return Reply::Cme(50),
        };
        if self.removed {
            return Reply::Cme(10);
        }
        self.cgla += 1;
        let drop = match self.options.drop_channel {
            Some((n, kind)) if n == self.cgla => Some(kind),
            _ => None,
        };
        match drop {
            Some(ChannelDrop::Closed) => {
                if let Some(channel) = self.channel_of(session) {
                    self.card
                        .process(&[0x00, INS_MANAGE_CHANNEL, 0x80, channel]);
                }
                self.sessions.retain(|(s, _)| *s != session);
            }
            Some(ChannelDrop::CardRemoved) => {
                self.removed = true;
                self.sessions.clear();
                self.card.power_off();
                return Reply::Cme(10);
            }
            Some(ChannelDrop::CardReset) | None => {}
        }
        let Some(channel) = self.channel_of(session) else {
            return Reply::Cme(21);
        };
        if apdu[1] == INS_MANAGE_CHANNEL {
            // The modem restricts the host to its channel (27.007 §8.45).
            return Reply::Cme(3);
        }
        if matches!(apdu[0], 0x00..=0x1F | 0x40..=0x7F | 0x80..=0x9F | 0xC0..=0xFE) {
            apdu[0] = cla_on_channel(apdu[0], channel).unwrap_or(apdu[0]);
        }
        let response = self.card.process(&apdu);
        if drop == Some(ChannelDrop::CardReset) {
            self.card.reset();
            self.sessions.clear();
            return Reply::Cme(13);
        }
        Reply::Ok(Some(format!(
            "+CGLA: {},\"{}\"",
            response.len() * 2,
            at::hex(&response)
        )))
    }

    fn csim(&mut self, args: &str) -> Reply {
        let apdu = match at::parse_length_and_hex(args) {
            Ok(apdu) if apdu.len() >= 4 => apdu,
            _ => return Reply::Cme(50),
        };
        if self.removed {
            return Reply::Cme(10);
        }
        let response = self.card.process(&apdu);
        Reply::Ok(Some(format!(
            "+CSIM: {},\"{}\"",
            response.len() * 2,
            at::hex(&response)
        )))
    }
}
