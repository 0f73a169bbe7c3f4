//! Progress of the long steps (the payload download, the slot write) for whoever watches.
//!
//! On a terminal it is a bar redrawn in place: bytes, rate and time left. Anywhere else (a
//! pipe, a log file, a service manager's journal) redrawing would leave a mess, so it is
//! plain lines instead: one each time another tenth of the work is done, or five seconds
//! after the last line, whichever comes first, and a last line with the total time and rate.
//! [`Progress::hidden`] shows nothing (tests, `--json`, callers that report by themselves).
//!
//! Every call is cheap when nothing is shown: a byte count and a clock read under a lock,
//! once per chunk a download or a slot write handles.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a plain-line report may stay silent while bytes move.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Where plain lines go.
type LineSink = Box<dyn FnMut(&str) + Send>;

/// The progress of one step (see the module documentation).
pub struct Progress {
    label: String,
    kind: Kind,
}

enum Kind {
    Hidden,
    Bar(ProgressBar),
    Lines(Mutex<Lines>),
}

/// The plain-line reporter's state.
struct Lines {
    sink: LineSink,
    total: u64,
    pos: u64,
    /// Where this run started (a resumed download starts past 0): the rate counts only what
    /// moved since.
    first: Option<(Instant, u64)>,
    last_line: Instant,
    /// Tenths of `total` already reported.
    tenths: u64,
    finished: bool,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Hidden => "hidden",
            Kind::Bar(_) => "bar",
            Kind::Lines(_) => "lines",
        };
        f.debug_struct("Progress")
            .field("label", &self.label)
            .field("kind", &kind)
            .finish()
    }
}

impl Progress {
    /// Shows nothing.
    pub fn hidden() -> Progress {
        Progress {
            label: String::new(),
            kind: Kind::Hidden,
        }
    }

    /// On stderr: a bar when stderr is a terminal, plain lines otherwise.
    pub fn stderr(label: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::bar(label)
        } else {
            Progress::lines(
                label,
                Box::new(|line: &str| {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }),
            )
        }
    }

    /// A bar on stderr, redrawn in place.
    pub fn bar(label: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        Progress {
            label: label.to_owned(),
            kind: Kind::Bar(bar),
        }
    }

    /// Plain lines handed to `sink`.
    pub fn lines(label: &str, sink: LineSink) -> Progress {
        Progress {
            label: label.to_owned(),
            kind: Kind::Lines(Mutex::new(Lines {
                sink,
                total: 0,
                pos: 0,
                first: None,
                last_line: Instant::now(),
                tenths: 0,
                finished: false,
            })),
        }
    }

    /// The size of the whole work, in bytes (0: unknown).
    pub fn set_length(&self, total: u64) {
        match &self.kind {
            Kind::Hidden => {}
            Kind::Bar(bar) => bar.set_length(total),
            Kind::Lines(lines) => {
                let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
                l.total = total;
            }
        }
    }

    /// How many bytes of it are done.
    pub fn set_position(&self, pos: u64) {
        match &self.kind {
            Kind::Hidden => {}
            Kind::Bar(bar) => bar.set_position(pos),
            Kind::Lines(lines) => {
                let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
                l.advance(&self.label, pos, Instant::now());
            }
        }
    }

    /// The work is done: the bar stays as it is; plain lines end with the total.
    pub fn finish(&self) {
        match &self.kind {
            Kind::Hidden => {}
            Kind::Bar(bar) => bar.finish(),
            Kind::Lines(lines) => {
                let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
                l.finish(&self.label, Instant::now());
            }
        }
    }
}

impl Lines {
    fn advance(&mut self, label: &str, pos: u64, now: Instant) {
        if self.finished {
            return;
        }
        self.pos = pos;
        let Some((since, from)) = self.first else {
            // The first position is where this run starts; say so when it is not the start.
            self.first = Some((now, pos));
            self.last_line = now;
            self.tenths = tenths(pos, self.total);
            if pos > 0 && self.total > 0 {
                let line = format!("{label}: resuming at {} of {}", size(pos), size(self.total));
                (self.sink)(&line);
            }
            return;
        };
        let reached = tenths(pos, self.total);
        let due = reached > self.tenths || now.duration_since(self.last_line) >= LINE_EVERY;
        if !due || (self.total > 0 && pos >= self.total) {
            // The last tenth is told by `finish`, with the total time.
            return;
        }
        self.tenths = reached;
        self.last_line = now;
        let elapsed = now.duration_since(since);
        let moved = pos.saturating_sub(from);
        let rate = per_second(moved, elapsed);
        let line = if self.total > 0 {
            let left = self.total.saturating_sub(pos);
            let eta = if rate > 0.0 {
                format!(", about {} left", duration(left as f64 / rate))
            } else {
                String::new()
            };
            format!(
                "{label}: {} of {} ({}%), {}/s{eta}",
                size(pos),
                size(self.total),
                pos.saturating_mul(100) / self.total,
                size(rate as u64)
            )
        } else {
            format!("{label}: {}, {}/s", size(pos), size(rate as u64))
        };
        (self.sink)(&line);
    }

    fn finish(&mut self, label: &str, now: Instant) {
        if self.finished {
            return;
        }
        self.finished = true;
        let (since, from) = self.first.unwrap_or((now, self.pos));
        let elapsed = now.duration_since(since);
        let moved = self.pos.saturating_sub(from);
        let line = format!(
            "{label}: {} done in {} ({}/s)",
            size(self.pos.max(self.total)),
            duration(elapsed.as_secs_f64()),
            size(per_second(moved, elapsed) as u64)
        );
        (self.sink)(&line);
    }
}

/// Whole tenths of `total` that `pos` has reached (0 when the total is unknown).
fn tenths(pos: u64, total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        (u128::from(pos) * 10 / u128::from(total)) as u64
    }
}

fn per_second(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 / secs
    }
}

/// A byte count the way people read it: `512 B`, `3.4 KiB`, `512.0 MiB`, `1.2 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration in seconds the way people read it: `0.4 s`, `12 s`, `3 min 4 s`.
fn duration(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 60.0 {
        format!("{} s", secs.round() as u64)
    } else {
        let s = secs.round() as u64;
        format!("{} min {} s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    fn recorder() -> (Arc<Mutex<Vec<String>>>, LineSink) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (
            seen,
            Box::new(move |l: &str| sink.lock().unwrap().push(l.to_owned())),
        )
    }

    /// One line per tenth, none for the last tenth but the closing one with the total.
    #[test]
    fn plain_lines_come_every_tenth_and_end_with_the_total() {
        let (seen, sink) = recorder();
        let mut l = Lines {
            sink,
            total: 100 << 20,
            pos: 0,
            first: None,
            last_line: Instant::now(),
            tenths: 0,
            finished: false,
        };
        let start = Instant::now();
        for mib in 0..=100u64 {
            l.advance(
                "download",
                mib << 20,
                start + Duration::from_millis(mib * 10),
            );
        }
        l.finish("download", start + Duration::from_secs(1));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 10, "{seen:#?}");
        assert_eq!(
            seen[0],
            "download: 10.0 MiB of 100.0 MiB (10%), 100.0 MiB/s, about 0.9 s left"
        );
        assert!(seen[8].starts_with("download: 90.0 MiB of 100.0 MiB (90%)"));
        assert_eq!(seen[9], "download: 100.0 MiB done in 1.0 s (100.0 MiB/s)");
    }

    /// A slow step still says something every five seconds; a resumed one says where.
    #[test]
    fn slow_and_resumed_work_is_told() {
        let (seen, sink) = recorder();
        let mut l = Lines {
            sink,
            total: 1000 << 20,
            pos: 0,
            first: None,
            last_line: Instant::now(),
            tenths: 0,
            finished: false,
        };
        let start = Instant::now();
        l.advance("download", 500 << 20, start);
        l.advance("download", 501 << 20, start + Duration::from_secs(1));
        l.advance("download", 505 << 20, start + Duration::from_secs(5));
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            [
                "download: resuming at 500.0 MiB of 1000.0 MiB",
                "download: 505.0 MiB of 1000.0 MiB (50%), 1.0 MiB/s, about 8 min 15 s left",
            ]
        );
    }

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 << 10), "3.0 KiB");
        assert_eq!(size(512 << 20), "512.0 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(duration(0.44), "0.4 s");
        assert_eq!(duration(12.4), "12 s");
        assert_eq!(duration(184.0), "3 min 4 s");
    }
}
