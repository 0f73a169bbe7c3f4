//! One simulated device: its DM account, its own personalized card in this process (the
//! applet over a RAM store), and one complete card-gated update driven with the device crate's
//! pieces, the way `simfota_device::agent::Agent` drives one (`crates/device/src/agent.rs`,
//! `update.rs`), minus the file system: the DM state, the FUMO job and the installed version
//! stay in memory, and nothing is written to an A/B slot.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use simfota_cardlink::card::CardMemory;
use simfota_cardlink::{AppletCard, CardClient, Crypto, InProcessChannel};
use simfota_device::cardnodes::SharedCard;
use simfota_device::config::{
    AuthScheme, CardConfig, Credentials, DeviceConfig, DeviceInfo, Encoding, Limits,
};
use simfota_device::dm::{self, DmState};
use simfota_device::download::{DownloadError, Downloader};
use simfota_device::fumo::{Job, Stage};
use simfota_device::update::open_card_session;
use simfota_syncml::AlertCode;
use simfota_syncml::uri::NodeUri;
use simfota_wire::{DeliveryToken, Digest, Imei};

use super::report::ErrorKind;

/// The card of a simulated device: the applet in this process, its persistent memory in RAM.
pub type FleetCard = InProcessChannel<AppletCard<CardMemory>>;

/// The FUMO result code of a successful update (OMA-TS-DM-FUMO-V1_0 §6.3).
const SUCCESSFUL: u16 = 200;

/// How often a step that found the server unreachable is tried, in all.
const ATTEMPTS: u32 = 40;
/// The pause before the first retry; each further one waits one more of these, up to
/// [`MAX_BACKOFF`]. With [`ATTEMPTS`] that covers about 15 s of a server being down.
const BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// Why one device's update did not complete.
#[derive(Debug)]
pub struct Failure {
    /// The step that failed.
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: String,
    /// The server could not be reached (refused or broken connection): worth another try.
    pub unreachable: bool,
}

fn failed(kind: ErrorKind) -> impl FnOnce(String) -> Failure {
    move |message| Failure {
        kind,
        message,
        unreachable: false,
    }
}

/// A failed DM session, marked unreachable when the transport failed.
fn session_failure(kind: ErrorKind, e: &dm::DmError) -> Failure {
    Failure {
        kind,
        message: e.to_string(),
        unreachable: matches!(e, dm::DmError::Unreachable { .. }),
    }
}

/// A failed fetch, marked unreachable when the transport failed.
fn fetch_failure(kind: ErrorKind, e: &DownloadError) -> Failure {
    Failure {
        kind,
        message: e.to_string(),
        unreachable: matches!(e, DownloadError::Unreachable { .. }),
    }
}

/// The pause before attempt `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    (BACKOFF * attempt).min(MAX_BACKOFF)
}

/// Runs `step` until it succeeds, fails other than by an unreachable server, or has been tried
/// [`ATTEMPTS`] times; each retry is noted in `timings`.
fn retrying<T>(
    timings: &mut Timings,
    mut step: impl FnMut(&mut Timings) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let mut attempt = 1;
    loop {
        match step(timings) {
            Err(f) if f.unreachable && attempt < ATTEMPTS => {
                timings.retried(ErrorKind::ServerUnreachableRetried, &f.message);
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
            Err(mut f) if f.unreachable => {
                f.message = format!("{} (tried {ATTEMPTS} times)", f.message);
                return Err(f);
            }
            other => return other,
        }
    }
}

/// How every device of the run behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Also fetch the payload over HTTP (and check it against the signed size and digest).
    pub download: bool,
    /// The payload the simulator uploaded: without `download`, the device hashes this copy
    /// (the image it would have fetched) for the card's integrity check.
    pub payload: Arc<Vec<u8>>,
}

/// What one complete update took.
#[derive(Debug, Default)]
pub struct Timings {
    /// Each DM session (delivery, result), wall time.
    pub sessions: Vec<Duration>,
    /// From the delivery session's first message to the result session's last answer.
    pub update: Duration,
    /// Steps tried again, with why (the server was down, or had not yet re-offered).
    pub retries: Vec<(ErrorKind, String)>,
}

impl Timings {
    fn retried(&mut self, kind: ErrorKind, why: &str) {
        self.retries.push((kind, why.to_owned()));
    }
}

/// A simulated device.
pub struct SimDevice {
    /// Its configuration (never written to disk; its data folder is never used).
    pub cfg: DeviceConfig,
    /// Its card's ICCID.
    pub iccid: String,
    card: SharedCard<FleetCard>,
    state: DmState,
    fw_version: String,
}

/// The DM account and identity of one device, as registered on the server.
#[derive(Debug, Clone)]
pub struct Identity {
    /// IMEI.
    pub imei: String,
    /// The card's ICCID.
    pub iccid: String,
    /// DM user name.
    pub username: String,
    /// The device's DM password.
    pub password: String,
    /// The server's DM password towards the device.
    pub server_password: String,
    /// The nonce of the device's first credentials (base64), provisioned with its account.
    pub nonce: String,
}

/// The protocol choices of the run.
#[derive(Debug, Clone, Copy)]
pub struct Protocol {
    /// SyncML encoding.
    pub encoding: Encoding,
    /// DM authentication scheme.
    pub auth: AuthScheme,
    /// Crypto back-end of the device's in-process card.
    pub card_crypto: Crypto,
}

impl SimDevice {
    /// A device with a blank card (personalize it through [`SimDevice::card`]).
    pub fn new(
        id: &Identity,
        server_url: &str,
        server_id: &str,
        model: &str,
        protocol: Protocol,
        fw_version: &str,
    ) -> SimDevice {
        let cfg = DeviceConfig {
            server_url: server_url.to_owned(),
            server_id: server_id.to_owned(),
            encoding: protocol.encoding,
            imei: id.imei.clone(),
            credentials: Credentials {
                nonce: None,
                auth: protocol.auth,
                username: id.username.clone(),
                password: id.password.clone(),
                server_password: id.server_password.clone(),
            },
            card: CardConfig {
                state: None,
                reader: None,
                channel: simfota_device::config::CardChannel::Basic,
                ..CardConfig::default()
            },
            data_dir: std::path::PathBuf::from("fleet-device-in-memory"),
            slot_dir: None,
            notification_port: None,
            poll_interval_secs: 300,
            ca_file: None,
            info: DeviceInfo {
                manufacturer: super::MANUFACTURER.to_owned(),
                model: model.to_owned(),
                vendor_id: Some(hex::encode(crate::setup::firmware::VENDOR_ID)),
                class_id: Some(hex::encode(crate::setup::firmware::CLASS_ID)),
                ..DeviceInfo::default()
            },
            limits: Limits::default(),
        };
        let card = AppletCard::with_crypto(CardMemory::new(), protocol.card_crypto);
        SimDevice {
            cfg,
            iccid: id.iccid.clone(),
            card: Arc::new(Mutex::new(CardClient::new(InProcessChannel::new(
                card,
                "in-process",
            )))),
            state: DmState {
                client_nonce: id.nonce.clone(),
                ..DmState::default()
            },
            fw_version: fw_version.to_owned(),
        }
    }

    /// The card, for personalization.
    pub fn card(&self) -> &SharedCard<FleetCard> {
        &self.card
    }

    /// The card's log as the card holds it: the next sequence number and the chain head.
    pub fn card_log(&self) -> Result<(u32, [u8; 32]), Failure> {
        self.open_card()?;
        let mut card = self.card.lock().unwrap_or_else(PoisonError::into_inner);
        let s = card
            .log_status()
            .map_err(|e| failed(ErrorKind::Card)(format!("reading the card's log status: {e}")))?;
        Ok((s.next, s.head))
    }

    fn open_card(&self) -> Result<(), Failure> {
        let imei = Imei::parse(&self.cfg.imei)
            .map_err(|e| failed(ErrorKind::Card)(format!("IMEI {}: {e}", self.cfg.imei)))?;
        let mut card = self.card.lock().unwrap_or_else(PoisonError::into_inner);
        open_card_session(&mut card, &imei)
            .map_err(|e| failed(ErrorKind::Card)(format!("opening the card session: {e}")))
    }

    /// One DM session over `http`, timed into `timings`.
    fn session(
        &mut self,
        http: &ureq::Agent,
        job: Option<&Job>,
        alerts: Vec<simfota_syncml::model::Alert>,
        kind: ErrorKind,
        timings: &mut Timings,
    ) -> Result<(dm::SessionSummary, simfota_syncml::tree::DmTree), Failure> {
        self.open_card()?;
        let mut tree = dm::build_tree(&self.cfg, &self.fw_version, job, self.card.clone())
            .map_err(|e| failed(kind)(e.to_string()))?;
        let started = Instant::now();
        let summary = dm::run_session_in_memory(
            &self.cfg,
            http,
            &mut tree,
            AlertCode::CLIENT_INITIATED_MGMT,
            None,
            alerts,
            &mut self.state,
        )
        .map_err(|e| session_failure(kind, &e))?;
        timings.sessions.push(started.elapsed());
        Ok((summary, tree))
    }

    /// One complete update: the delivery session (token + Exec 202), the envelope fetch, the
    /// card's authorization, the download (`--download`), the card's integrity verdict and
    /// result report, and the result session whose Generic Alert 1226 (with the receipt) the
    /// server accepts. In that session the server also reads and acknowledges the card log
    /// page the update wrote (design §4 step 9); the device only relays.
    pub fn update(
        &mut self,
        http: &ureq::Agent,
        behaviour: &Behaviour,
        timings: &mut Timings,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        // 1-3: the delivery session. The user-request alert is what `simfota device
        // check-update` sends (FUMO §8.2, client-initiated update request).
        // A session the server's death cut short may have left the job delivered on the
        // server: the next session reports FUMO state idle, the server puts the job back to
        // pending (and counts the delivery) and offers it in the session after.
        let mut lost = false;
        let mut attempt = 1;
        let (tree, correlator) = loop {
            let tried = retrying(timings, |t| {
                self.session(
                    http,
                    None,
                    vec![dm::user_request_alert()],
                    ErrorKind::DeliverySession,
                    t,
                )
            });
            let (summary, tree) = tried?;
            lost |= !timings.retries.is_empty();
            match summary.exec {
                Some((_, correlator)) => break (tree, correlator),
                None if lost && attempt < ATTEMPTS => {
                    timings.retried(
                        ErrorKind::NoUpdateRetried,
                        "no update offered after a lost delivery session",
                    );
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                None => {
                    return Err(failed(ErrorKind::NoUpdate)(
                        "the server started no update in the session".into(),
                    ));
                }
            }
        };
        let root = NodeUri::parse(dm::FUMO_ROOT)
            .map_err(|e| failed(ErrorKind::DeliverySession)(e.to_string()))?;
        let fumo = tree.fumo(&root).ok_or_else(|| {
            failed(ErrorKind::DeliverySession)("the DM tree has no FUMO object".into())
        })?;
        let token = fumo
            .ext
            .get("DeliveryToken")
            .map(|t| b64_or_raw(t))
            .unwrap_or_default();
        let envelope_url = fumo
            .job()
            .and_then(|j| j.pkg_url.clone())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| failed(ErrorKind::DeliverySession)("the server set no PkgURL".into()))?;
        drop(tree);
        let update_id = DeliveryToken::decode(&token, &simfota_wire::Limits::DEFAULT)
            .map(|t| t.dangerous_unverified().cti.as_bytes().to_vec())
            .map_err(|e| failed(ErrorKind::DeliverySession)(format!("the delivery token: {e}")))?;

        // 4: the envelope, over HTTP.
        let fetch = Downloader::with_agent("fleet-downloads-in-memory", http.clone());
        let envelope = retrying(timings, |_| {
            fetch
                .fetch_bytes(&envelope_url, self.cfg.limits.max_envelope_bytes)
                .map_err(|e| fetch_failure(ErrorKind::Envelope, &e))
        })?;
        let severed = simfota_wire::suit::sever(&envelope, &simfota_wire::Limits::DEFAULT)
            .map_err(|e| failed(ErrorKind::Envelope)(format!("the envelope: {e}")))?;

        // 5: the card decides (token signature, nonce, identities, originator signature).
        let mut card = self.card.lock().unwrap_or_else(PoisonError::into_inner);
        card.authorize(&token, &severed)
            .map_err(|e| failed(ErrorKind::Authorize)(e.to_string()))?;
        // The package facts, from a manifest verified under an originator the card lists
        // (as `Updater::package_facts` takes them).
        let env = simfota_wire::suit::Envelope::decode(&severed, &simfota_wire::Limits::DEFAULT)
            .map_err(|e| failed(ErrorKind::Envelope)(e.to_string()))?;
        let originators = card
            .originators()
            .map_err(|e| failed(ErrorKind::Card)(e.to_string()))?;
        let verified = originators
            .iter()
            .find_map(|o| env.verify(&o.key).ok())
            .ok_or_else(|| {
                failed(ErrorKind::Envelope)(
                    "no originator the card lists signed the package".into(),
                )
            })?;
        let m = verified.get();
        let (Some(digest), Some(size)) = (m.image_digest, m.image_size) else {
            return Err(failed(ErrorKind::Envelope)(
                "the manifest states no image digest or size".into(),
            ));
        };
        let version = m.version.unwrap_or("unknown").to_owned();
        let payload_uri = m.uri.unwrap_or("payload").to_owned();

        // 6: the payload: fetched, or the copy the device holds in this simulation.
        let got = if behaviour.download {
            let url = payload_url(&envelope_url, &payload_uri);
            let max = self.cfg.limits.max_payload_bytes;
            let bytes = retrying(timings, |_| {
                fetch
                    .fetch_bytes(&url, max)
                    .map_err(|e| fetch_failure(ErrorKind::Download, &e))
            })?;
            simfota_wire::sha256(&bytes)
        } else {
            simfota_wire::sha256(&behaviour.payload)
        };
        let len = if behaviour.download {
            size
        } else {
            behaviour.payload.len() as u64
        };
        if got.0 != digest.0 {
            return Err(failed(ErrorKind::Download)(
                "the payload is not the signed image".into(),
            ));
        }
        // 6'': the card compares the device's digest with the signed one (device-digest
        // policy) and logs the verdict.
        card.payload_digest(&Digest(got.0), len)
            .map_err(|e| failed(ErrorKind::Integrity)(e.to_string()))?;

        // 7: installed (in memory), and the result to the card, which signs a receipt.
        self.fw_version = version.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok();
        let receipt = card
            .report_result(&update_id, SUCCESSFUL, now)
            .map_err(|e| failed(ErrorKind::Report)(e.to_string()))?;
        drop(card);

        // 8-9: the result session: Generic Alert 1226 with the receipt.
        let mut job = Job::new(
            &self.cfg.server_id,
            correlator.as_deref(),
            &envelope_url,
            &token,
        );
        job.update_id = Some(update_id);
        job.stage = Stage::Reported {
            result: SUCCESSFUL,
            message: format!("update to {version} installed and running"),
            receipt: Some(receipt),
        };
        let alert = dm::result_alert(&job).ok_or_else(|| {
            failed(ErrorKind::ResultSession)("no result alert for the job".into())
        })?;
        // The device repeats the alert until the server answers it; a result the server
        // recorded before it died is taken again as already recorded.
        let (summary, _) = retrying(timings, |t| {
            self.session(
                http,
                Some(&job),
                vec![alert.clone()],
                ErrorKind::ResultSession,
                t,
            )
        })?;
        let taken = !summary.alert_statuses.is_empty()
            && summary.alert_statuses.iter().all(|c| c.is_success());
        if !taken {
            return Err(failed(ErrorKind::ResultRefused)(format!(
                "the server answered the result alert with {}",
                summary
                    .alert_statuses
                    .iter()
                    .map(|c| c.0.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        timings.update = started.elapsed();
        Ok(())
    }
}

/// A node value that arrived as `b64` is bytes already; one that arrived as `chr` base64 text
/// is decoded (the agent does the same).
fn b64_or_raw(v: &[u8]) -> Vec<u8> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|t| B64.decode(t.trim()).ok())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| v.to_vec())
}

/// The manifest's payload URI resolved against the envelope's URL: an absolute `http(s)` URL
/// as it is, anything else relative to the envelope's folder (the server hosts the payload
/// at `/packages/{id}/payload`, next to `/packages/{id}/envelope`).
fn payload_url(envelope_url: &str, uri: &str) -> String {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return uri.to_owned();
    }
    let uri = if uri.starts_with('#') { "payload" } else { uri };
    if uri.starts_with('/') {
        // An absolute path on the envelope's origin.
        let origin_end = envelope_url
            .find("://")
            .and_then(|s| envelope_url[s + 3..].find('/').map(|p| s + 3 + p))
            .unwrap_or(envelope_url.len());
        return format!("{}{uri}", &envelope_url[..origin_end]);
    }
    match envelope_url.rfind('/') {
        Some(cut) => format!("{}/{uri}", &envelope_url[..cut]),
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_urls_resolve_next_to_the_envelope() {
        assert_eq!(
            payload_url("http://h:1/packages/3/envelope", "payload"),
            "http://h:1/packages/3/payload"
        );
        assert_eq!(
            payload_url("http://h:1/packages/3/envelope", "#image"),
            "http://h:1/packages/3/payload"
        );
        assert_eq!(
            payload_url("http://h:1/packages/3/envelope", "https://cdn/p"),
            "https://cdn/p"
        );
        assert_eq!(
            payload_url("http://h:1/packages/3/envelope", "/p/9"),
            "http://h:1/p/9"
        );
    }
}
