//! Standard output and error that end quietly when their reader goes away.
//!
//! `println!` panics when stdout is a pipe whose reader has exited (`simfota card info | head`),
//! because the Rust runtime ignores SIGPIPE and the write fails with `EPIPE` instead. The
//! conventional outcome is the one SIGPIPE gives a C tool: the program ends at once, silently,
//! and the shell reports status 141 (128 + SIGPIPE). Restoring the signal's default action
//! needs `unsafe` (`signal(2)`), which this crate forbids, so every line goes through
//! [`outln!`]/[`out!`] instead: a broken pipe ends the process with [`CLOSED_PIPE`] and no
//! message; any other write failure (a full disk behind a redirect) is one line on stderr and
//! status 1. Messages for stderr use [`errln!`], which drops what cannot be written: there is
//! nowhere left to say it.

use std::io::{self, Write};

/// Exit status after stdout's reader went away: 128 + SIGPIPE (13), what a shell reports for a
/// tool the signal ended (`yes | head`, then `${PIPESTATUS[0]}`).
pub const CLOSED_PIPE: u8 = 141;

/// Writes formatted text to stdout; a closed or failed stdout ends the process (module doc).
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        drop(out);
        std::process::exit(i32::from(failed_status(&e)));
    }
}

/// Writes formatted text to stderr, ignoring a stderr that cannot be written.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// The status to end with after stdout failed with `e` (saying why first, unless the reader
/// simply went away).
fn failed_status(e: &io::Error) -> u8 {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return CLOSED_PIPE;
    }
    stderr(format_args!(
        "simfota: cannot write to standard output: {e}\n"
    ));
    1
}

/// `println!` that ends quietly on a closed stdout (see [`crate::output`]).
macro_rules! outln {
    () => {
        $crate::output::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends quietly on a closed stdout (see [`crate::output`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that drops what a closed stderr cannot take.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
