//! Asking the user about an update from a server the card does not authorize (R6, R7).
//!
//! The card's policy decides what is needed: nothing (refuse), a confirmation, or a
//! confirmation with the card PIN. The agent tells the user plainly which server asks, what it
//! wants to install, and why the card does not trust it; then asks on the terminal (the PIN is
//! read without echo), or answers from `--yes` / `--no` / `--pin-file` when unattended. The
//! answer goes to the card (RECORD CONSENT), which logs it; the agent never decides alone.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use zeroize::Zeroizing;

/// What the user is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRequest {
    /// The server that asks (the delivery token's issuer, as the token claims it).
    pub server: String,
    /// The release offered (name and version from the manifest), if known.
    pub release: Option<String>,
    /// Why the card does not authorize that server.
    pub why: String,
    /// Whether the card PIN is required.
    pub needs_pin: bool,
    /// PIN tries left on the card, when known (after a wrong PIN).
    pub pin_tries_left: Option<u8>,
}

impl ConsentRequest {
    /// The warning shown to the user, in plain words.
    pub fn warning(&self) -> String {
        let release = self.release.as_deref().unwrap_or("a firmware update");
        let mut text = format!(
            "WARNING: server \"{}\" wants to install {release} on this device.\n\
             This server is NOT authorized by your SIM card: {}.\n",
            self.server, self.why
        );
        if self.needs_pin {
            text.push_str("Your card allows this only if you confirm it with your card PIN.\n");
        } else {
            text.push_str("Your card allows this only if you confirm it.\n");
        }
        text.push_str("Your answer is recorded on the card.\n");
        if let Some(n) = self.pin_tries_left {
            text.push_str(&format!(
                "The PIN was wrong: {n} tries left before it is blocked.\n"
            ));
        }
        text
    }
}

/// The user's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No.
    Declined,
    /// Yes (no PIN needed).
    Accepted,
    /// Yes, with this PIN.
    AcceptedWithPin(Zeroizing<String>),
}

/// Why no answer could be had.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The PIN file could not be read.
    #[error("cannot read the PIN file {path}: {source}")]
    PinFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The terminal could not be used.
    #[error("cannot ask on the terminal: {0}")]
    Terminal(std::io::Error),
}

/// Something that answers consent questions.
pub trait Prompter {
    /// Asks; a wrong PIN leads to another call with `pin_tries_left` set.
    fn ask(&mut self, request: &ConsentRequest) -> Result<Answer, PromptError>;
}

/// The command line's choice: `--yes`, `--no`, `--pin-file`, or ask on the terminal.
#[derive(Debug, Clone, Default)]
pub struct PromptChoice {
    /// `--yes`: accept without asking.
    pub yes: bool,
    /// `--no`: decline without asking.
    pub no: bool,
    /// `--pin-file`: the card PIN, for unattended confirmation with PIN.
    pub pin_file: Option<PathBuf>,
}

/// Answers from the command line flags, asking on the terminal only when no flag decides.
#[derive(Debug)]
pub struct StandardPrompter {
    choice: PromptChoice,
    /// Whether stdin and stderr are terminals (tests set it).
    interactive: bool,
    /// Whether a PIN from the file was already used (a wrong file PIN is not retried: each
    /// try costs one of the card's PIN tries).
    pin_file_used: bool,
}

impl StandardPrompter {
    /// A prompter for these flags; asks on the terminal when no flag decides and a terminal
    /// is attached.
    pub fn new(choice: PromptChoice) -> Self {
        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        StandardPrompter {
            choice,
            interactive,
            pin_file_used: false,
        }
    }

    /// Never asks on a terminal (for tests and daemons).
    pub fn unattended(choice: PromptChoice) -> Self {
        StandardPrompter {
            choice,
            interactive: false,
            pin_file_used: false,
        }
    }

    fn read_pin_file(&mut self) -> Result<Option<Zeroizing<String>>, PromptError> {
        let Some(path) = &self.choice.pin_file else {
            return Ok(None);
        };
        if self.pin_file_used {
            return Ok(None);
        }
        self.pin_file_used = true;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            PromptError::PinFile {
                path: path.clone(),
                source,
            }
        })?);
        Ok(Some(Zeroizing::new(text.trim().to_owned())))
    }
}

impl Prompter for StandardPrompter {
    fn ask(&mut self, request: &ConsentRequest) -> Result<Answer, PromptError> {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(request.warning().as_bytes());
        if self.choice.no {
            let _ = writeln!(err, "Declined (--no).");
            return Ok(Answer::Declined);
        }
        if self.choice.yes {
            if !request.needs_pin {
                let _ = writeln!(err, "Confirmed (--yes).");
                return Ok(Answer::Accepted);
            }
            if let Some(pin) = self.read_pin_file()? {
                let _ = writeln!(err, "Confirmed (--yes) with the PIN from --pin-file.");
                return Ok(Answer::AcceptedWithPin(pin));
            }
            if !self.interactive {
                if self.pin_file_used && request.pin_tries_left.is_some() {
                    // Trying the same file again would only spend another of the card's tries.
                    let _ = writeln!(
                        err,
                        "Not confirmed: the PIN from --pin-file is wrong; it is not tried again."
                    );
                } else {
                    let _ = writeln!(
                        err,
                        "Declined: the card needs the PIN and no usable --pin-file was given."
                    );
                }
                return Ok(Answer::Declined);
            }
        }
        if !self.interactive {
            let _ = writeln!(err, "Declined: no terminal to ask on (use --yes or --no).");
            return Ok(Answer::Declined);
        }
        drop(err);
        if !self.choice.yes {
            eprint!("Install it anyway? [y/N] ");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(PromptError::Terminal)?;
            if !matches!(line.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
                eprintln!("Declined.");
                return Ok(Answer::Declined);
            }
        }
        if !request.needs_pin {
            return Ok(Answer::Accepted);
        }
        let pin = rpassword::prompt_password("Card PIN (empty to cancel): ")
            .map_err(PromptError::Terminal)?;
        let pin = Zeroizing::new(pin);
        if pin.trim().is_empty() {
            eprintln!("Declined.");
            return Ok(Answer::Declined);
        }
        Ok(Answer::AcceptedWithPin(Zeroizing::new(
            pin.trim().to_owned(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(needs_pin: bool) -> ConsentRequest {
        ConsentRequest {
            server: "rogue-dm".into(),
            release: Some("fw 2.0".into()),
            why: "it is not on the card's list of authorized servers (the card lists: demo)".into(),
            needs_pin,
            pin_tries_left: None,
        }
    }

    #[test]
    fn the_warning_names_the_server_the_release_and_the_reason() {
        let w = request(true).warning();
        assert!(w.contains("\"rogue-dm\""), "{w}");
        assert!(w.contains("fw 2.0"), "{w}");
        assert!(w.contains("NOT authorized"), "{w}");
        assert!(w.contains("the card lists: demo"), "{w}");
        assert!(w.contains("PIN"), "{w}");
        assert!(!request(false).warning().contains("PIN"));
    }

    #[test]
    fn flags_decide_without_a_terminal() {
        let no = PromptChoice {
            no: true,
            ..Default::default()
        };
        assert_eq!(
            StandardPrompter::unattended(no)
                .ask(&request(false))
                .unwrap(),
            Answer::Declined
        );
        let yes = PromptChoice {
            yes: true,
            ..Default::default()
        };
        assert_eq!(
            StandardPrompter::unattended(yes.clone())
                .ask(&request(false))
                .unwrap(),
            Answer::Accepted
        );
        // A PIN is needed and none is given: decline rather than guess.
        assert_eq!(
            StandardPrompter::unattended(yes)
                .ask(&request(true))
                .unwrap(),
            Answer::Declined
        );
        // Nothing given and no terminal: decline.
        assert_eq!(
            StandardPrompter::unattended(PromptChoice::default())
                .ask(&request(false))
                .unwrap(),
            Answer::Declined
        );
    }

    #[test]
    fn the_pin_file_is_used_once() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "1234\n").unwrap();
        let mut p = StandardPrompter::unattended(PromptChoice {
            yes: true,
            no: false,
            pin_file: Some(pin),
        });
        assert_eq!(
            p.ask(&request(true)).unwrap(),
            Answer::AcceptedWithPin(Zeroizing::new("1234".into()))
        );
        // The card said the PIN was wrong: the same file is not tried again.
        let mut again = request(true);
        again.pin_tries_left = Some(2);
        assert_eq!(p.ask(&again).unwrap(), Answer::Declined);
        let missing = PromptChoice {
            yes: true,
            no: false,
            pin_file: Some(dir.path().join("x")),
        };
        assert!(matches!(
            StandardPrompter::unattended(missing).ask(&request(true)),
            Err(PromptError::PinFile { .. })
        ));
    }
}
