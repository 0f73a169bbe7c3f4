//! The agent: DM sessions, the FUMO job they start, and the loop of `simfota device run`.
//!
//! A session reports a finished job first (Generic Alert 1226, forgotten once the server answers
//! it with a success status), executes the server's commands on the DM tree, and, when the server
//! Execs `DownloadAndUpdate`, runs the update right after the session and opens a new session to
//! report it. `run` repeats this every poll interval and whenever a verified package 0 arrives.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use simfota_cardlink::Channel;
use simfota_syncml::AlertCode;
use simfota_syncml::notification::UnverifiedNotification;
use simfota_syncml::uri::NodeUri;
use simfota_wire::Imei;
use simfota_wire::contract::Node;

use crate::cardnodes::SharedCard;
use crate::config::{ConfigError, DeviceConfig};
use crate::dm::{self, DmError, DmState, FUMO_ROOT};
use crate::download::Downloader;
use crate::fumo::{Job, JobStore, JobStoreError, Stage};
use crate::outcome::code;
use crate::prompt::Prompter;
use crate::slots::{BootCheck, SlotError, SlotStore};
use crate::update::{ModelFilter, UpdateError, Updater, open_card_session};

/// Why the agent could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The slot folder is unusable.
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// The job file is unusable.
    #[error(transparent)]
    Jobs(#[from] JobStoreError),
    /// The DM session failed.
    #[error(transparent)]
    Dm(#[from] DmError),
    /// The update could not be driven further now.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// The notification socket could not be opened.
    #[error("cannot listen for notifications on UDP port {port}: {source}")]
    Listen {
        /// The port.
        port: u16,
        /// The cause.
        source: std::io::Error,
    },
}

/// What one `session` did.
#[derive(Debug, Default)]
pub struct SessionOutcome {
    /// The result code reported in this session's Generic Alert, and whether the server took it.
    pub reported: Option<(u16, bool)>,
    /// The update the server started in the session, run to its end (and reported).
    pub update: Option<Job>,
    /// Texts the server asked to display.
    pub displayed: Vec<String>,
    /// The server tried to start another update while one was unfinished; it was answered
    /// 425 (and, once the unfinished one was reported, a new session was opened for it).
    pub exec_refused: bool,
    /// Another follow-up session was called for after [`MAX_FOLLOW_UP_SESSIONS`]; it was left
    /// to the next session.
    pub follow_ups_exhausted: bool,
}

impl SessionOutcome {
    /// What the session came to, in one line (the line `simfota device run` prints for each).
    pub fn summary(&self) -> String {
        let mut line = match (&self.update, self.reported) {
            (Some(job), _) => match &job.stage {
                Stage::Reported {
                    result, message, ..
                } => {
                    let sent = match self.reported {
                        Some((_, true)) => "the server has the result",
                        _ => "the result is sent in the next session",
                    };
                    format!("update result {result}: {message} ({sent})")
                }
                _ => "an update started; it continues in the next session".to_owned(),
            },
            (None, Some((result, true))) => format!("reported the earlier update result {result}"),
            (None, Some((result, false))) => format!(
                "the earlier update result {result} is not yet taken by the server; sent again \
                 next session"
            ),
            (None, None) => "no update offered".to_owned(),
        };
        if self.exec_refused {
            line.push_str("; another update was refused until this one is reported");
        }
        line
    }
}

/// Follow-up sessions one [`Agent::session`] opens at most. A normal run needs two: one to
/// report the update the server started, after asking again for an update refused 425. The
/// bound ends the run of a server that answers every result with another update that fails
/// at once.
pub const MAX_FOLLOW_UP_SESSIONS: u32 = 4;

/// The client-initiated session a session calls for right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowUp {
    /// None.
    None,
    /// Report the result of the update the server started in it.
    Report,
    /// Ask again for the update refused 425 while the unfinished one is now reported.
    AskAgain,
}

/// The state `simfota device status` shows.
#[derive(Debug)]
pub struct StatusReport {
    /// The running firmware version.
    pub fw_version: String,
    /// The boot-control record.
    pub boot: crate::slots::BootRecord,
    /// The current FUMO job, if any.
    pub job: Option<Job>,
}

/// The device agent over a card channel `C`.
pub struct Agent<C: Channel + Send + 'static> {
    /// The configuration.
    pub cfg: DeviceConfig,
    /// The card, shared by the DM tree and the update executor.
    pub card: SharedCard<C>,
    /// Who answers consent questions.
    pub prompter: Box<dyn Prompter>,
    /// The boot check of a new slot.
    pub boot_check: Box<dyn BootCheck>,
    /// Show the progress of the download, of a delta's rebuild and of the slot write (a bar
    /// on a terminal, plain lines otherwise; see [`crate::progress`]).
    pub progress: bool,
    /// Where user-visible lines go.
    pub say: Box<dyn FnMut(&str)>,
}

impl<C: Channel + Send + 'static> Agent<C> {
    fn imei(&self) -> Result<Imei, ConfigError> {
        Imei::parse(&self.cfg.imei).map_err(|e| ConfigError::Invalid {
            field: "imei",
            reason: e.to_string(),
        })
    }

    fn jobs(&self) -> JobStore {
        JobStore::new(&self.cfg.data().fumo_state())
    }

    /// The device's model from the configuration (class-id / vendor-id), for the 403 check.
    pub fn model(&self) -> Result<ModelFilter, ConfigError> {
        Ok(ModelFilter {
            vendor_id: self.cfg.info.vendor_uuid()?,
            class_id: self.cfg.info.class_uuid()?,
        })
    }

    /// The state of slots and job.
    pub fn status(&self) -> Result<StatusReport, AgentError> {
        let store = SlotStore::open(self.cfg.data().slots())?;
        Ok(StatusReport {
            fw_version: store.active_version()?.to_owned(),
            boot: store.record().clone(),
            job: self.jobs().load()?,
        })
    }

    /// Drives the pending job (if any) to its reported stage. A job whose result waits for
    /// the card stays where it is (the error says why).
    pub fn resume(&mut self) -> Result<Option<Job>, AgentError> {
        let http = self.cfg.http_agent()?;
        self.resume_inner(true, &http)
    }

    /// `open`: open the card session first. Inside a DM session it is already open, and must
    /// stay as it is: the nonce the server read lives in that card session.
    /// `http`: the device's HTTP client (the session's, when inside one).
    fn resume_inner(&mut self, open: bool, http: &ureq::Agent) -> Result<Option<Job>, AgentError> {
        let jobs = self.jobs();
        let Some(mut job) = jobs.load()? else {
            return Ok(None);
        };
        if matches!(job.stage, Stage::Reported { .. }) {
            return Ok(Some(job));
        }
        if job.operation != "DownloadAndUpdate" && matches!(job.stage, Stage::Accepted) {
            // FUMO 1.0 §6.3 408: only DownloadAndUpdate is implemented (docs/dm-tree.md).
            job.stage = Stage::Reported {
                result: code::NOT_IMPLEMENTED.0,
                message: format!("{} is not supported; use DownloadAndUpdate", job.operation),
                receipt: None,
            };
            jobs.save(&job)?;
            return Ok(Some(job));
        }
        let imei = self.imei()?;
        let model = self.model()?;
        let data = self.cfg.data();
        data.create().map_err(|source| JobStoreError::Io {
            path: data.root().to_owned(),
            source,
        })?;
        let card = self.card.clone();
        let mut guard = match card.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if open && let Err(e) = open_card_session(&mut guard, &imei) {
            (self.say)(&format!(
                "the card does not answer ({e}); the update continues without it as far as it can"
            ));
        }
        let mut keep_going = |_: &Job| true;
        let mut updater = Updater {
            card: &mut guard,
            imei,
            downloader: Downloader::with_agent(data.downloads(), http.clone()),
            slots: data.slots().to_owned(),
            jobs: jobs.clone(),
            prompter: self.prompter.as_mut(),
            boot_check: self.boot_check.as_ref(),
            limits: self.cfg.limits,
            model,
            progress: self.progress,
            say: self.say.as_mut(),
            keep_going: &mut keep_going,
        };
        let job = updater.run(job)?;
        Ok(Some(job))
    }

    /// One DM session of kind `reason` (1201 client-initiated, 1200 after package 0 with its
    /// session id), with the user-request alert when `user_request` (check-update), and the
    /// client-initiated follow-up sessions it calls for: one to report an update the server
    /// started (right after the update ran), one to ask again for an update refused 425 while
    /// another was unfinished. At most [`MAX_FOLLOW_UP_SESSIONS`] follow-ups are opened, so a
    /// server that keeps starting updates that end at once cannot keep the agent in one run;
    /// what is left (a result not yet reported) goes out in the next session.
    pub fn session(
        &mut self,
        reason: AlertCode,
        session_id: Option<u16>,
        user_request: bool,
    ) -> Result<SessionOutcome, AgentError> {
        let (mut outcome, mut next) = self.one_session(reason, session_id, user_request)?;
        let mut follow_ups = 0;
        while next != FollowUp::None {
            if follow_ups == MAX_FOLLOW_UP_SESSIONS {
                outcome.follow_ups_exhausted = true;
                (self.say)(&format!(
                    "stopping after {MAX_FOLLOW_UP_SESSIONS} follow-up sessions in a row: the \
                     server keeps starting updates that end at once; {}",
                    match next {
                        FollowUp::Report => "the last result is reported in the next session",
                        _ => "its offer is taken up in the next session",
                    }
                ));
                break;
            }
            follow_ups += 1;
            if next == FollowUp::AskAgain {
                (self.say)("asking the server again for the update it offered");
            }
            let (again, then) = self.one_session(AlertCode::CLIENT_INITIATED_MGMT, None, false)?;
            outcome.displayed.extend(again.displayed);
            outcome.exec_refused |= again.exec_refused;
            if again.reported.is_some() {
                outcome.reported = again.reported;
            }
            if again.update.is_some() {
                outcome.update = again.update;
            }
            next = then;
        }
        Ok(outcome)
    }

    /// One DM session, and the follow-up session it calls for.
    fn one_session(
        &mut self,
        reason: AlertCode,
        session_id: Option<u16>,
        user_request: bool,
    ) -> Result<(SessionOutcome, FollowUp), AgentError> {
        let mut outcome = SessionOutcome::default();
        // One client for the session's DM messages and the downloads it starts.
        let http = self.cfg.http_agent()?;
        let job = match self.resume_inner(true, &http) {
            Ok(job) => job,
            Err(AgentError::Update(
                e @ (UpdateError::CardUnavailable { .. } | UpdateError::CardUnreadable { .. }),
            )) => {
                (self.say)(&e.to_string());
                self.jobs().load()?
            }
            Err(e) => return Err(e),
        };
        let mut alerts = Vec::new();
        let reporting = job.as_ref().and_then(dm::result_alert);
        if let (Some(alert), Some(Stage::Reported { result, .. })) =
            (reporting, job.as_ref().map(|j| &j.stage))
        {
            alerts.push(alert);
            outcome.reported = Some((*result, false));
        } else if user_request && job.is_none() {
            alerts.push(dm::user_request_alert());
        }
        let fw = SlotStore::open(self.cfg.data().slots())?
            .active_version()?
            .to_owned();
        let opened = match (self.imei(), self.card.lock()) {
            (Ok(imei), Ok(mut card)) => {
                open_card_session(&mut card, &imei).map_err(|e| e.to_string())
            }
            _ => Err("the card is not reachable".to_owned()),
        };
        if let Err(e) = opened {
            (self.say)(&format!("the card does not answer: {e}"));
        }
        let mut tree = dm::build_tree(&self.cfg, &fw, job.as_ref(), self.card.clone())?;
        let summary = dm::run_session(&self.cfg, &http, &mut tree, reason, session_id, alerts)?;
        outcome.displayed = summary.displayed.clone();
        let root = NodeUri::parse(FUMO_ROOT).map_err(|e| DmError::Tree(e.into()))?;
        // The server set a new PkgURL but its Exec found the node without Exec rights.
        outcome.exec_refused = job.is_some()
            && summary.exec.is_none()
            && tree
                .fumo(&root)
                .is_some_and(|f| !f.download_and_update_url.is_empty());
        if outcome.exec_refused {
            (self.say)(
                "the server asked for another update while one is unfinished; refused (425) \
                 until this one is reported",
            );
        }
        if let Some((result, taken)) = outcome.reported.as_mut() {
            *taken = !summary.alert_statuses.is_empty()
                && summary.alert_statuses.iter().all(|c| c.is_success());
            if *taken {
                self.jobs().clear()?;
                (self.say)(&format!("the server took the update result {result}"));
            } else {
                (self.say)(
                    "the server did not take the update result; it is sent again next session",
                );
            }
        }
        if outcome.exec_refused && matches!(outcome.reported, Some((_, true))) {
            // The unfinished update is reported and forgotten: ask for the refused one now
            // rather than at the next poll.
            return Ok((outcome, FollowUp::AskAgain));
        }
        let mut next = FollowUp::None;
        if let Some((uri, correlator)) = summary.exec {
            let Some(fumo) = tree.fumo(&root) else {
                return Ok((outcome, next));
            };
            let token = delivery_token(fumo);
            let operation = uri
                .rsplit('/')
                .next()
                .unwrap_or("DownloadAndUpdate")
                .to_owned();
            let url = fumo
                .job()
                .and_then(|j| j.pkg_url.clone())
                .unwrap_or_default();
            let server = fumo
                .job()
                .map(|j| j.server_id.clone())
                .unwrap_or_else(|| self.cfg.server_id.clone());
            let mut job = Job::new(&server, correlator.as_deref(), &url, &token);
            job.operation = operation;
            self.jobs().save(&job)?;
            (self.say)(&format!("the server started a firmware update ({url})"));
            match self.resume_inner(false, &http) {
                Ok(_) => {}
                Err(AgentError::Update(
                    e @ (UpdateError::CardUnavailable { .. } | UpdateError::CardUnreadable { .. }),
                )) => {
                    (self.say)(&e.to_string());
                }
                Err(e) => return Err(e),
            }
            let job = self.jobs().load()?;
            if let Some(Stage::Reported {
                result, message, ..
            }) = job.as_ref().map(|j| &j.stage)
            {
                (self.say)(&format!("update result {result}: {message}"));
                // Report it now, in a new client-initiated session.
                next = FollowUp::Report;
            }
            outcome.update = job;
        }
        Ok((outcome, next))
    }

    /// `simfota device check-update`: a client-initiated session asking for an update.
    pub fn check_update(&mut self) -> Result<SessionOutcome, AgentError> {
        self.session(AlertCode::CLIENT_INITIATED_MGMT, None, true)
    }

    /// `simfota device run`: polls every `poll_interval_secs` and answers verified package 0
    /// notifications, until `stop` is set (or after `max_sessions` sessions, for tests).
    pub fn run(&mut self, stop: &AtomicBool, max_sessions: Option<u32>) -> Result<(), AgentError> {
        let socket = match self.cfg.notification_port {
            Some(port) => {
                let s = UdpSocket::bind(("0.0.0.0", port))
                    .map_err(|source| AgentError::Listen { port, source })?;
                s.set_read_timeout(Some(Duration::from_millis(250)))
                    .map_err(|source| AgentError::Listen { port, source })?;
                Some(s)
            }
            None => None,
        };
        let poll = Duration::from_secs(self.cfg.poll_interval_secs);
        let mut sessions = 0u32;
        let mut next_poll = Instant::now();
        let mut notified: Option<u16> = None;
        while !stop.load(Ordering::Relaxed) {
            if max_sessions.is_some_and(|m| sessions >= m) {
                break;
            }
            if notified.is_some() || Instant::now() >= next_poll {
                let (reason, sid) = match notified.take() {
                    Some(sid) => (AlertCode::SERVER_INITIATED_MGMT, Some(sid)),
                    None => (AlertCode::CLIENT_INITIATED_MGMT, None),
                };
                sessions += 1;
                let why = if sid.is_some() {
                    "notified by the server"
                } else {
                    "poll"
                };
                match self.session(reason, sid, false) {
                    Ok(outcome) => {
                        for text in &outcome.displayed {
                            (self.say)(&format!("server says: {text}"));
                        }
                        (self.say)(&format!(
                            "session {sessions} ({why}): {}",
                            outcome.summary()
                        ));
                    }
                    // The agent keeps running: the next poll tries again.
                    Err(e) => (self.say)(&format!("session {sessions} ({why}) failed: {e}")),
                }
                next_poll = Instant::now() + poll;
                continue;
            }
            match &socket {
                Some(s) => {
                    let mut buf = [0u8; 1024];
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        match self.verify_notification(&buf[..n]) {
                            Ok(sid) => notified = Some(sid),
                            Err(why) => {
                                (self.say)(&format!("ignored a notification from {from}: {why}"))
                            }
                        }
                    }
                }
                None => std::thread::sleep(Duration::from_millis(250)),
            }
        }
        Ok(())
    }

    /// Checks a package 0 (OMA-TS-DM_Notification-V1_2 §6): it must name our server and carry
    /// the digest made with the server's credentials and nonce. Answers its session id.
    pub fn verify_notification(&self, bytes: &[u8]) -> Result<u16, String> {
        let unverified = UnverifiedNotification::parse(bytes).map_err(|e| e.to_string())?;
        if unverified.claimed_server_id() != self.cfg.server_id {
            return Err(format!(
                "it names server `{}`, not ours",
                unverified.claimed_server_id()
            ));
        }
        let state = DmState::load(&self.cfg.data().dm_state());
        let (_, server) = dm::credentials(&self.cfg);
        let n = unverified
            .verify_with(&server, &state.server_nonce())
            .map_err(|e| e.to_string())?;
        Ok(n.session_id)
    }
}

/// The delivery token the server wrote to `Ext/DeliveryToken`, read by the Format it was
/// written with (the contract's node table: `b64`, which the session already decoded to
/// octets, or base64 text sent as `chr`). A value that is neither gives no token: the card
/// then refuses the update for want of one, and the refusal is reported.
fn delivery_token(fumo: &simfota_syncml::fumo::Fumo) -> Vec<u8> {
    let Some(value) = fumo.ext.get("DeliveryToken") else {
        return Vec::new();
    };
    let format = fumo.ext_format.get("DeliveryToken").map(String::as_str);
    Node::FumoDeliveryToken
        .decode_value(format, value)
        .unwrap_or_default()
}

#[cfg(test)]
mod token_tests {
    #![allow(clippy::unwrap_used)]
    use super::delivery_token;
    use simfota_syncml::fumo::Fumo;
    use simfota_syncml::uri::NodeUri;

    fn fumo_with(format: Option<&str>, value: &[u8]) -> Fumo {
        let mut f = Fumo::new(NodeUri::parse("./FUMO/fw").unwrap());
        f.ext.insert("DeliveryToken".into(), value.to_vec());
        if let Some(format) = format {
            f.ext_format.insert("DeliveryToken".into(), format.into());
        }
        f
    }

    /// The token is read by the Format it was written with, never guessed.
    #[test]
    fn the_token_is_read_by_its_format() {
        // Sent as b64: the session already decoded it (format bin).
        assert_eq!(
            delivery_token(&fumo_with(Some("bin"), b"\xd2\x84")),
            b"\xd2\x84"
        );
        // Sent as chr: base64 text, decoded here.
        assert_eq!(
            delivery_token(&fumo_with(Some("chr"), b"0oQ=")),
            b"\xd2\x84"
        );
        // chr that is not base64 is no token, not the raw text.
        assert!(delivery_token(&fumo_with(Some("chr"), b"not base64!")).is_empty());
        // Octets that happen to look like base64 text stay octets when they came as bin.
        assert_eq!(delivery_token(&fumo_with(Some("bin"), b"0oQ=")), b"0oQ=");
        // Nothing written yet.
        assert!(delivery_token(&fumo_with(None, b"")).is_empty());
    }
}
