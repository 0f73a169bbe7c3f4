//! What the demo prints while it runs: one numbered line per step, the device agent's own
//! lines and the details indented under it, the consent warning quoted as the user would
//! see it. Colours only when the stream is a terminal and `NO_COLOR` is unset
//! (<https://no-color.org>).
//!
//! With `--json` every human line goes to stderr, so stdout carries the JSON document alone.

use std::io::{IsTerminal, Write};

/// Number of steps `simfota demo` announces.
pub const STEPS: usize = 11;

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

/// The human output stream.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// Human lines go to stderr (stdout holds the JSON summary).
    to_stderr: bool,
    color: bool,
}

impl Out {
    /// The stream for this mode: stdout normally, stderr with `--json`.
    pub fn new(json: bool) -> Out {
        let tty = if json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        Out {
            to_stderr: json,
            color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn paint(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// Writes one line. A closed stream (`simfota demo | head`) is not worth failing for:
    /// the exit code still tells the outcome.
    pub fn line(&self, text: &str) {
        if self.to_stderr {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
    }

    /// `[n/11] text`, bold on a terminal.
    pub fn step(&self, n: usize, text: &str) {
        let tag = format!("[{n:>2}/{STEPS}]");
        self.line(&format!(
            "{} {}",
            self.paint(BOLD, &tag),
            self.paint(BOLD, text)
        ));
    }

    /// A detail under the current step.
    pub fn detail(&self, text: &str) {
        self.line(&format!("        {text}"));
    }

    /// A line the device agent printed (dimmed: it is the agent's own voice).
    pub fn device(&self, text: &str) {
        self.line(&format!(
            "        {}",
            self.paint(DIM, &format!("device: {text}"))
        ));
    }

    /// The consent warning, quoted as the device's user sees it.
    pub fn quote(&self, text: &str) {
        for l in text.lines() {
            self.line(&format!(
                "        {}",
                self.paint(YELLOW, &format!("| {l}"))
            ));
        }
    }

    /// An expectation that held.
    pub fn ok(&self, text: &str) {
        self.line(&format!("        {} {text}", self.paint(GREEN, "ok")));
    }

    /// An expectation that failed.
    pub fn fail(&self, text: &str) {
        self.line(&format!("        {} {text}", self.paint(RED, "FAILED")));
    }

    /// A heading of the summary.
    pub fn heading(&self, text: &str) {
        self.line("");
        self.line(&self.paint(BOLD, text));
    }

    /// Green or red, for a table cell that states a verdict.
    pub fn verdict(&self, good: bool, text: &str) -> String {
        self.paint(if good { GREEN } else { RED }, text)
    }
}
