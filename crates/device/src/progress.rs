//! Progress of the long steps (the payload download, the rebuild of a delta, the slot write)
//! for whoever watches.
//!
//! On a terminal it is a bar redrawn in place: percent, bytes, rate and time left, in the
//! words of the plain lines below; when the step ends, the bar gives way to the same closing
//! line as the plain lines, so that nothing of a half-drawn bar stays on the screen. Anywhere
//! else (a pipe, a log file, a service manager's journal) redrawing would leave a mess, so it
//! is plain lines instead: one each time another tenth of the work is done, or five seconds
//! after the last line, whichever comes first, and a last line with the total time and rate.
//! [`Progress::hidden`] shows nothing (tests, `--json`, callers that report by themselves).
//!
//! Every call is cheap: a byte count and a clock read under a lock, once per chunk a download
//! or a slot write handles (the bar redraws at most 20 times a second). A caller that moves
//! bytes in many small pieces (the delta rebuild) tells its position only a few times a
//! second.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

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
    Bar(ProgressBar, Mutex<Run>),
    Lines(Mutex<Lines>),
}

/// What both displays know of the step: its size, where this run of it started (a resumed
/// download starts past 0: the rate counts only what moved since) and where it is.
struct Run {
    total: u64,
    pos: u64,
    first: Option<(Instant, u64)>,
    finished: bool,
    /// The bar is drawn (see [`Progress::bar`]).
    shown: bool,
}

impl Run {
    fn new() -> Run {
        Run {
            total: 0,
            pos: 0,
            first: None,
            finished: false,
            shown: false,
        }
    }

    /// Starts drawing `bar` on stderr, once.
    fn show(&mut self, bar: &ProgressBar) {
        if !self.shown {
            self.shown = true;
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    /// Takes a new position; answers the line that says where a resumed step starts when
    /// this is its first position.
    fn start_or_move(&mut self, label: &str, pos: u64, now: Instant) -> Option<String> {
        self.pos = pos;
        if self.first.is_some() {
            return None;
        }
        self.first = Some((now, pos));
        (pos > 0 && self.total > 0)
            .then(|| format!("{label}: resuming at {} of {}", size(pos), size(self.total)))
    }

    /// The closing line: the size, the time since the first position and the rate.
    fn closing_line(&self, label: &str, now: Instant) -> String {
        let (since, from) = self.first.unwrap_or((now, self.pos));
        let elapsed = now.duration_since(since);
        let moved = self.pos.saturating_sub(from);
        format!(
            "{label}: {} done in {} ({}/s)",
            size(self.pos.max(self.total)),
            duration(elapsed.as_secs_f64()),
            size(per_second(moved, elapsed) as u64)
        )
    }
}

/// The plain-line reporter's state.
struct Lines {
    sink: LineSink,
    run: Run,
    last_line: Instant,
    /// Tenths of `total` already reported.
    tenths: u64,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Hidden => "hidden",
            Kind::Bar(..) => "bar",
            Kind::Lines(_) => "lines",
        };
        f.debug_struct("Progress")
            .field("label", &self.label)
            .field("kind", &kind)
            .finish()
    }
}

/// The bar while the size is known: `download [=====>     ]  37% 768.0 KiB of 2.0 MiB,
/// 256.0 KiB/s, about 5.0 s left` (the rate and the time left once there is a rate).
const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {percent:>3}% {done} of {size}, {rate}{left}";
/// The bar while the size is unknown: `download 768.0 KiB, 256.0 KiB/s`.
const COUNTER_TEMPLATE: &str = "{msg} {done}, {rate}";

/// A bar style from `template`, its numbers written as the plain lines write them.
fn bar_style(template: &str) -> Option<ProgressStyle> {
    let style = ProgressStyle::with_template(template).ok()?;
    Some(
        style
            .progress_chars("=> ")
            .with_key("done", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&size(s.pos()));
            })
            .with_key("size", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&size(s.len().unwrap_or(0)));
            })
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/s", size(s.per_sec() as u64));
            })
            .with_key("left", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                if s.per_sec() > 0.0 && s.len().is_some() {
                    let _ = write!(w, ", about {} left", duration(s.eta().as_secs_f64()));
                }
            }),
    )
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

    /// A bar on stderr, redrawn in place. It is drawn from the first size or position on:
    /// a line said between its creation and then would otherwise leave an empty bar behind.
    pub fn bar(label: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        if let Some(style) = bar_style(COUNTER_TEMPLATE) {
            bar.set_style(style);
        }
        bar.set_message(label.to_owned());
        Progress {
            label: label.to_owned(),
            kind: Kind::Bar(bar, Mutex::new(Run::new())),
        }
    }

    /// Plain lines handed to `sink`.
    pub fn lines(label: &str, sink: LineSink) -> Progress {
        Progress {
            label: label.to_owned(),
            kind: Kind::Lines(Mutex::new(Lines::new(sink, Instant::now()))),
        }
    }

    /// The size of the whole work, in bytes (0: unknown).
    pub fn set_length(&self, total: u64) {
        match &self.kind {
            Kind::Hidden => {}
            Kind::Bar(bar, run) => {
                let mut run = lock(run);
                if run.finished {
                    return;
                }
                run.total = total;
                run.show(bar);
                let template = if total > 0 {
                    bar.set_length(total);
                    BAR_TEMPLATE
                } else {
                    bar.unset_length();
                    COUNTER_TEMPLATE
                };
                if let Some(style) = bar_style(template) {
                    bar.set_style(style);
                }
            }
            Kind::Lines(lines) => lock(lines).run.total = total,
        }
    }

    /// How many bytes of it are done.
    pub fn set_position(&self, pos: u64) {
        match &self.kind {
            Kind::Hidden => {}
            Kind::Bar(bar, run) => {
                let mut run = lock(run);
                if run.finished {
                    return;
                }
                run.show(bar);
                let first = run.first.is_none();
                let line = run.start_or_move(&self.label, pos, Instant::now());
                bar.set_position(pos);
                if first {
                    // The rate counts from here, not from 0 (a resumed download).
                    bar.reset_eta();
                }
                if let Some(line) = line {
                    bar.println(line);
                }
            }
            Kind::Lines(lines) => lock(lines).advance(&self.label, pos, Instant::now()),
        }
    }

    /// The work is done: the bar gives way to the closing line; plain lines end with it.
    pub fn finish(&self) {
        match &self.kind {
            Kind::Hidden => {}
            Kind::Bar(bar, run) => {
                let mut run = lock(run);
                if run.finished {
                    return;
                }
                run.finished = true;
                bar.finish_and_clear();
                let line = run.closing_line(&self.label, Instant::now());
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Kind::Lines(lines) => lock(lines).finish(&self.label, Instant::now()),
        }
    }
}

/// A lock that a panic elsewhere does not poison for the display.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lines {
    fn new(sink: LineSink, now: Instant) -> Lines {
        Lines {
            sink,
            run: Run::new(),
            last_line: now,
            tenths: 0,
        }
    }

    fn advance(&mut self, label: &str, pos: u64, now: Instant) {
        if self.run.finished {
            return;
        }
        let Some((since, from)) = self.run.first else {
            // The first position is where this run starts; say so when it is not the start.
            let line = self.run.start_or_move(label, pos, now);
            self.last_line = now;
            self.tenths = tenths(pos, self.run.total);
            if let Some(line) = line {
                (self.sink)(&line);
            }
            return;
        };
        self.run.pos = pos;
        let total = self.run.total;
        let reached = tenths(pos, total);
        let due = reached > self.tenths || now.duration_since(self.last_line) >= LINE_EVERY;
        if !due || (total > 0 && pos >= total) {
            // The last tenth is told by `finish`, with the total time.
            return;
        }
        self.tenths = reached;
        self.last_line = now;
        let elapsed = now.duration_since(since);
        let moved = pos.saturating_sub(from);
        let rate = per_second(moved, elapsed);
        let line = if total > 0 {
            let left = total.saturating_sub(pos);
            let eta = if rate > 0.0 {
                format!(", about {} left", duration(left as f64 / rate))
            } else {
                String::new()
            };
            format!(
                "{label}: {} of {} ({}%), {}/s{eta}",
                size(pos),
                size(total),
                pos.saturating_mul(100) / total,
                size(rate as u64)
            )
        } else {
            format!("{label}: {}, {}/s", size(pos), size(rate as u64))
        };
        (self.sink)(&line);
    }

    fn finish(&mut self, label: &str, now: Instant) {
        if self.run.finished {
            return;
        }
        self.run.finished = true;
        let line = self.run.closing_line(label, now);
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
        let mut l = Lines::new(sink, Instant::now());
        l.run.total = 100 << 20;
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
        let mut l = Lines::new(sink, Instant::now());
        l.run.total = 1000 << 20;
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
