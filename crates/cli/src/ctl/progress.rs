//! Upload progress on stderr: at a terminal one line rewritten in place (bytes sent, rate,
//! time left), otherwise a plain line at every tenth of the way; nothing with `--json`.

use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

use super::render::bytes;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line rewritten in place.
    Terminal,
    /// A line at every tenth.
    Lines,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// The mode for this process: quiet with `--json`, else by whether stderr is a terminal.
    pub fn pick(json: bool) -> Mode {
        if json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Lines
        }
    }
}

/// A reader that reports how much of `total` bytes has gone through it.
pub struct Counting<R> {
    inner: R,
    label: String,
    total: u64,
    done: u64,
    mode: Mode,
    start: Instant,
    last_draw: Option<Instant>,
    last_tenth: u64,
}

impl<R: Read> Counting<R> {
    /// Counts `inner`, which holds `total` bytes.
    pub fn new(inner: R, label: &str, total: u64, mode: Mode) -> Self {
        Counting {
            inner,
            label: label.to_owned(),
            total,
            done: 0,
            mode,
            start: Instant::now(),
            last_draw: None,
            last_tenth: 0,
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 && left > 0 {
            format!(", {} left", duration(left as f64 / rate))
        } else {
            String::new()
        };
        let pct = (self.done * 100).checked_div(self.total).unwrap_or(100);
        format!(
            "{}: {} of {} ({pct}%), {}/s{eta}",
            self.label,
            bytes(self.done),
            bytes(self.total),
            bytes(rate as u64)
        )
    }

    fn report(&mut self) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Terminal => {
                let due = self
                    .last_draw
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
                if due || self.done == self.total {
                    self.last_draw = Some(Instant::now());
                    crate::output::stderr(format_args!("\r\x1b[2K{}", self.line()));
                }
            }
            Mode::Lines => {
                let tenth = (self.done * 10).checked_div(self.total).unwrap_or(10);
                if tenth > self.last_tenth {
                    self.last_tenth = tenth;
                    errln!("{}", self.line());
                }
            }
        }
    }

    /// Ends the progress line (at a terminal, the line is kept and a newline added).
    pub fn finish(&self) {
        if self.mode == Mode::Terminal && self.last_draw.is_some() {
            errln!("");
        }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        self.report();
        Ok(n)
    }
}

/// `45s`, `3m 20s`, `1h 05m`.
fn duration(secs: f64) -> String {
    let s = secs.ceil() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    }
}
