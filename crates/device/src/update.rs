//! Runs one FUMO `DownloadAndUpdate` job against the card, from whatever stage it reached.
//!
//! Design §4, steps 4-8, device side: fetch the (severed) SUIT envelope, have the card authorize
//! (asking the user when the card's policy wants a confirmation), download the payload
//! resumably, have the card check its integrity in the mode its policy requires, install into
//! the inactive A/B slot, boot-check it, report the result to the card and keep its receipt.
//! Every stage change is saved in the job file before the next step starts.
//!
//! The agent trusts nothing it relays: it reads the token's claims only to show the user who
//! asks and to name the update in the result report, and it takes the manifest's facts only
//! after verifying the manifest with an originator key the card itself lists.
//!
//! Delta packages (docs/formats.md §3): the manifest signs the digest and size of the delta
//! (SUIT parameters -258 / -259) besides those of the image it rebuilds. The delta, integrated
//! in the envelope or fetched by URI, is checked against that signed digest and size before a
//! byte of it is parsed, and it is applied only to an active image whose digest is the signed
//! precursor; the rebuilt image is then checked against the signed image digest, judged by the
//! card, and checked once more by the slot installer.

use std::path::{Path, PathBuf};

use simfota_cardlink::client::{ClientError, PendingUpdate};
use simfota_cardlink::wire::contract::Integrity;
use simfota_cardlink::wire::{self, DeliveryToken, Digest, Imei, IntegrityMode, Rights};
use simfota_cardlink::{CardClient, Channel};

use crate::config;
use crate::download::{self, Downloader, FetchSpec};
use crate::fumo::{Job, JobStore, JobStoreError, PackageFacts, Stage};
use crate::outcome::{Failure, code};
use crate::progress::Progress;
use crate::prompt::{Answer, ConsentRequest, Prompter};
use crate::slots::{BootCheck, BootOutcome, ImageSource, SlotError, SlotStore};

/// The download file name of the payload inside the download folder.
const PAYLOAD_NAME: &str = "payload";

/// Why a job could not be driven further now (its state is kept; run it again later).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The job file could not be written or read.
    #[error(transparent)]
    Store(#[from] JobStoreError),
    /// The slot folder is not usable (not initialized, damaged record).
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// The run was stopped between two stages (see [`Updater::keep_going`]).
    #[error("stopped; the update continues from its saved stage on the next run")]
    Stopped,
    /// The result must reach the card, and the card does not answer.
    #[error("the result ({result}) is kept until the card is back: {detail}")]
    CardUnavailable {
        /// The FUMO result waiting.
        result: u16,
        /// The link error.
        detail: String,
    },
    /// The result must reach the card, and the card's pending-update record cannot be read or
    /// decoded: whether the card still holds this update is unknown, so nothing is assumed.
    #[error(
        "the result ({result}) is kept until the card's pending-update record can be read: \
         {detail}"
    )]
    CardUnreadable {
        /// The FUMO result waiting.
        result: u16,
        /// What went wrong reading the record.
        detail: String,
    },
}

/// The device's own model, to refuse packages for another one before the download (403).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelFilter {
    /// Expected vendor id, if configured.
    pub vendor_id: Option<wire::Uuid>,
    /// Expected class id, if configured.
    pub class_id: Option<wire::Uuid>,
}

/// Everything the executor works with.
pub struct Updater<'a, C: Channel> {
    /// The card session (select + terminal binding are done by [`Updater::run`]).
    pub card: &'a mut CardClient<C>,
    /// This device's IMEI.
    pub imei: Imei,
    /// Downloads go here.
    pub downloader: Downloader,
    /// The A/B slot folder.
    pub slots: PathBuf,
    /// The job file.
    pub jobs: JobStore,
    /// Who answers consent questions.
    pub prompter: &'a mut dyn Prompter,
    /// The boot check of a new slot.
    pub boot_check: &'a dyn BootCheck,
    /// Size bounds.
    pub limits: config::Limits,
    /// The device's model.
    pub model: ModelFilter,
    /// Show the progress of the download, of a delta's rebuild and of the slot write.
    pub progress: bool,
    /// Where user-visible progress lines go.
    pub say: &'a mut dyn FnMut(&str),
    /// Asked after every saved stage; `false` stops the run there (the agent is shutting
    /// down; the next run continues from the saved stage).
    pub keep_going: &'a mut dyn FnMut(&Job) -> bool,
}

/// Opens the card session for an update: SELECT and BIND TERMINAL with this device's IMEI
/// (design §4 step 1). After a reset or a re-inserted card this is needed again.
pub fn open_card_session<C: Channel>(
    card: &mut CardClient<C>,
    imei: &Imei,
) -> Result<(), ClientError> {
    card.reopen(Some(imei)).map(|_| ())
}

/// A stage step either moves on or ends the update with a failure.
struct Fail {
    failure: Failure,
    /// Whether the card holds an authorization that the result must end.
    report_to_card: bool,
}

fn fail(failure: Failure, report_to_card: bool) -> Fail {
    Fail {
        failure,
        report_to_card,
    }
}

/// Maps a card client error to the failure it means for the update.
fn card_failure(e: &ClientError) -> Failure {
    match e {
        ClientError::Link(link) => Failure::CardUnavailable(link.to_string()),
        ClientError::Refused { reason, .. } => Failure::CardRefused {
            reason: reason.to_string(),
            fumo: reason.fumo_result().unwrap_or(code::NOT_ACCEPTABLE.0),
        },
        other => Failure::CardRefused {
            reason: other.to_string(),
            fumo: code::NOT_ACCEPTABLE.0,
        },
    }
}

/// Reads the card's pending-update record (GET DATA `0106`, the contract module's
/// `PendingUpdate`). A record that cannot be read or decoded is a failure, never "nothing
/// pending": the integrity verdict and the authorization it would hide are the card's.
fn read_pending<C: Channel>(card: &mut CardClient<C>) -> Result<Option<PendingUpdate>, Failure> {
    card.pending_update().map_err(|e| match e {
        ClientError::Link(link) => {
            Failure::CardUnavailable(format!("reading its pending-update record: {link}"))
        }
        other => Failure::CardRefused {
            reason: format!("its pending-update record cannot be read: {other}"),
            fumo: code::NOT_ACCEPTABLE.0,
        },
    })
}

/// Whether the card's pending update is the job's update.
fn names_update(pending: Option<&PendingUpdate>, update_id: Option<&Vec<u8>>) -> bool {
    matches!((pending, update_id), (Some(p), Some(id)) if p.update_id.as_bytes() == id.as_slice())
}

/// Where a server that severed an integrated payload from the envelope hosts it: `payload`
/// next to the envelope's URL (the simfota server's `/packages/{id}/envelope` and
/// `/packages/{id}/payload`; docs/dm-tree.md).
const SEVERED_PAYLOAD_REF: &str = "payload";

/// What the card receives: the envelope without integrated payloads (`suit::sever`; the
/// manifest, and so the token's binding to it, is unchanged byte for byte).
fn severed_for_card(envelope: &[u8]) -> Result<Vec<u8>, Fail> {
    wire::suit::sever(envelope, &wire::Limits::DEFAULT).map_err(|e| {
        fail(
            Failure::Corrupt(format!("the package description does not decode: {e}")),
            false,
        )
    })
}

/// Resolves the manifest's payload URI against the envelope's URL (RFC 3986 §5.2, with the
/// WHATWG URL parser): an absolute `http(s)` URL, an absolute path on the same origin, or a
/// path relative to the envelope's folder. Refused: an envelope URL or a result that is not
/// `http`/`https`, an empty reference and a bare fragment (an envelope member is named by
/// `#...` and never downloaded).
fn resolve_url(base: &str, uri: &str) -> Result<String, Failure> {
    let bad = || Failure::BadUrl(format!("payload URI `{uri}` (envelope at {base})"));
    let web = |u: &url::Url| matches!(u.scheme(), "http" | "https");
    if uri.is_empty() || uri.starts_with('#') {
        return Err(bad());
    }
    let base = url::Url::parse(base).map_err(|_| bad())?;
    if !web(&base) {
        return Err(bad());
    }
    let joined = base.join(uri).map_err(|_| bad())?;
    if !web(&joined) {
        return Err(bad());
    }
    Ok(joined.into())
}

impl<C: Channel> Updater<'_, C> {
    /// Drives `job` to [`Stage::Reported`] (saving each stage), and returns it. The caller
    /// opens the card session first ([`open_card_session`]) and, after this, sends the Generic
    /// Alert and clears the job.
    pub fn run(&mut self, mut job: Job) -> Result<Job, UpdateError> {
        loop {
            let step = match job.stage.clone() {
                Stage::Accepted => match self.prepare(&mut job) {
                    Ok(()) => {
                        self.jobs.save(&job)?;
                        self.authorize(&job)
                    }
                    Err(f) => Err(f),
                },
                Stage::Authorized { package } => self.download(package, job.envelope.as_deref()),
                Stage::Downloaded {
                    package,
                    payload,
                    payload_sha256,
                    payload_size,
                } => self.integrity(package, payload, &payload_sha256, payload_size),
                Stage::Verified { package, payload } => self.install(package, &payload),
                Stage::Installed { package } => self.boot(&package),
                Stage::Finished {
                    result,
                    message,
                    report_to_card,
                } => {
                    let receipt = self.report(&job, result, report_to_card)?;
                    let _ = self.downloader.discard(PAYLOAD_NAME);
                    // An image rebuilt from a delta but never installed.
                    if let Ok(store) = SlotStore::open(&self.slots) {
                        let _ = store.discard_staged();
                    }
                    job.stage = Stage::Reported {
                        result,
                        message,
                        receipt,
                    };
                    self.jobs.save(&job)?;
                    return Ok(job);
                }
                Stage::Reported { .. } => return Ok(job),
            };
            job.stage = match step {
                Ok(stage) => stage,
                Err(Fail {
                    failure,
                    report_to_card,
                }) => {
                    (self.say)(&format!("{failure}"));
                    Stage::Finished {
                        result: failure.fumo_result().0,
                        message: failure.to_string(),
                        report_to_card,
                    }
                }
            };
            self.jobs.save(&job)?;
            if !(self.keep_going)(&job) {
                return Err(UpdateError::Stopped);
            }
        }
    }

    /// Fetches the envelope and reads the update id from the token (unverified: it only names
    /// the update in the result report, the card checks it).
    fn prepare(&mut self, job: &mut Job) -> Result<(), Fail> {
        if job.envelope.is_none() {
            (self.say)(&format!(
                "fetching the package description from {}",
                job.envelope_url
            ));
            let e = self
                .downloader
                .fetch_bytes(&job.envelope_url, self.limits.max_envelope_bytes)
                .map_err(|e| fail(Failure::from_download(&e), false))?;
            job.envelope = Some(e);
        }
        let claims = DeliveryToken::decode(&job.token, &wire::Limits::DEFAULT)
            .ok()
            .map(|t| *t.dangerous_unverified());
        job.update_id = claims.map(|c| c.cti.as_bytes().to_vec());
        Ok(())
    }

    /// Authorization (with consent when needed) and package facts. `job` was saved with its
    /// envelope and update id before: after a crash the same authorization is recognised on
    /// the card.
    fn authorize(&mut self, job: &Job) -> Result<Stage, Fail> {
        let envelope = severed_for_card(job.envelope.as_deref().unwrap_or_default())?;
        let claims = DeliveryToken::decode(&job.token, &wire::Limits::DEFAULT)
            .ok()
            .map(|t| *t.dangerous_unverified());
        let pending = read_pending(self.card).map_err(|f| fail(f, false))?;
        let already = names_update(pending.as_ref(), job.update_id.as_ref());
        if already {
            (self.say)("the card had already authorized this update; continuing");
        } else {
            self.card_authorize(job, &envelope, claims.as_ref())?;
            (self.say)("the card authorized the update");
        }
        let package = self
            .package_facts(&envelope, &job.envelope_url)
            .map_err(|f| fail(f, true))?;
        Ok(Stage::Authorized { package })
    }

    fn card_authorize(
        &mut self,
        job: &Job,
        envelope: &[u8],
        claims: Option<&DeliveryToken>,
    ) -> Result<(), Fail> {
        use simfota_cardlink::card::Reason;
        let needs_pin = match self.card.authorize(&job.token, envelope) {
            Ok(()) => return Ok(()),
            Err(ClientError::Refused {
                reason: Reason::ConsentRequired,
                ..
            }) => false,
            Err(ClientError::Refused {
                reason: Reason::PinConsentRequired,
                ..
            }) => true,
            Err(e) => return Err(fail(card_failure(&e), false)),
        };
        let server = claims.map_or_else(|| job.server_id.clone(), |c| c.iss.as_str().to_owned());
        let listed: Vec<String> = self
            .card
            .servers()
            .map(|list| {
                list.into_iter()
                    .filter(|s| s.rights.contains(Rights::FIRMWARE_UPDATE))
                    .map(|s| s.id.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let why = if listed.is_empty() {
            "the card lists no server authorized for firmware updates".to_owned()
        } else {
            format!(
                "it is not on the card's list of servers authorized for firmware updates (the \
                 card lists: {})",
                listed.join(", ")
            )
        };
        let release = self
            .package_facts(envelope, &job.envelope_url)
            .ok()
            .map(|f| format!("\"{}\" version {}", f.name, f.version));
        let mut request = ConsentRequest {
            server: server.clone(),
            release,
            why,
            needs_pin,
            pin_tries_left: None,
        };
        // A wrong or blocked PIN, kept so that a "no" after it is told as what it is.
        let mut pin_problem: Option<String> = None;
        loop {
            let answer = self.prompter.ask(&request).map_err(|e| {
                fail(
                    Failure::NotConfirmed {
                        server: server.clone(),
                        why: e.to_string(),
                    },
                    false,
                )
            })?;
            let accept = match answer {
                Answer::Declined => false,
                Answer::Accepted => true,
                Answer::AcceptedWithPin(pin) => match self.card.verify_pin(&pin) {
                    Ok(()) => true,
                    Err(ClientError::WrongPin { tries_left, .. }) if tries_left > 0 => {
                        (self.say)(&format!(
                            "the card PIN is wrong ({tries_left} {} left)",
                            if tries_left == 1 { "try" } else { "tries" }
                        ));
                        pin_problem = Some(format!(
                            "the card PIN was wrong ({tries_left} {} left)",
                            if tries_left == 1 { "try" } else { "tries" }
                        ));
                        request.pin_tries_left = Some(tries_left);
                        continue;
                    }
                    Err(ClientError::WrongPin { .. } | ClientError::Blocked { .. }) => {
                        (self.say)("the card PIN is blocked; the update is not confirmed");
                        pin_problem =
                            Some("the card PIN is blocked (unblock it with the PUK)".to_owned());
                        false
                    }
                    Err(ClientError::Input(msg)) => {
                        (self.say)(&msg);
                        request.pin_tries_left = None;
                        continue;
                    }
                    Err(e) => return Err(fail(card_failure(&e), false)),
                },
            };
            let declined = || match pin_problem.clone() {
                Some(why) => Failure::NotConfirmed {
                    server: server.clone(),
                    why,
                },
                None => Failure::UserDeclined {
                    server: server.clone(),
                },
            };
            return match (self.card.consent(&job.token, envelope, accept), accept) {
                (Ok(()), true) => Ok(()),
                // A "no" is logged by the card; it answers with success or with the refusal.
                (
                    Ok(())
                    | Err(ClientError::Refused {
                        reason: Reason::UserDeclined,
                        ..
                    }),
                    false,
                ) => Err(fail(declined(), false)),
                (Err(e), _) => Err(fail(card_failure(&e), false)),
            };
        }
    }

    /// Verifies the manifest with the card's trusted originators and takes its facts.
    fn package_facts(&mut self, envelope: &[u8], base_url: &str) -> Result<PackageFacts, Failure> {
        let limits = wire::Limits::DEFAULT;
        let env = wire::suit::Envelope::decode(envelope, &limits).map_err(|e| {
            Failure::Corrupt(format!("the package description does not decode: {e}"))
        })?;
        let originators = self.card.originators().map_err(|e| card_failure(&e))?;
        let verified = originators
            .iter()
            .find_map(|o| env.verify(&o.key).ok())
            .ok_or_else(|| {
                Failure::Invalid("no originator trusted by the card signed this package".into())
            })?;
        let m = verified.get();
        if let (Some(want), Some(got)) = (self.model.vendor_id, m.vendor_id)
            && want != got
        {
            return Err(Failure::WrongDevice(
                "the package is for another vendor".into(),
            ));
        }
        if let (Some(want), Some(got)) = (self.model.class_id, m.class_id)
            && want != got
        {
            return Err(Failure::WrongDevice(
                "the package is for another device model".into(),
            ));
        }
        let (Some(digest), Some(size)) = (m.image_digest, m.image_size) else {
            return Err(Failure::Corrupt(
                "the manifest states no image digest or size".into(),
            ));
        };
        let uri = m
            .uri
            .ok_or_else(|| Failure::Corrupt("the manifest names no payload".into()))?;
        // A delta must sign its own digest and size as well as its precursor: the device
        // checks the delta against them before parsing it (docs/formats.md §3).
        let (payload_sha256, payload_size) =
            match (m.precursor_digest, m.payload_digest, m.payload_size) {
                (None, None, None) => (None, None),
                (Some(_), Some(d), Some(s)) => (Some(hex::encode(d.0)), Some(s)),
                (Some(_), _, _) => {
                    return Err(Failure::Invalid(
                        "the delta package does not sign the delta's digest and size (SUIT \
                         parameters -258/-259)"
                            .into(),
                    ));
                }
                (None, _, _) => {
                    return Err(Failure::Invalid(
                        "the package signs a delta digest but names no precursor image".into(),
                    ));
                }
            };
        // "#name": an envelope member (draft §7.5). The envelope fetched may still carry it;
        // a server that severed it hosts it next to the envelope.
        let (payload_url, integrated) = match uri.strip_prefix('#') {
            Some(_) => (
                resolve_url(base_url, SEVERED_PAYLOAD_REF)?,
                Some(uri.to_owned()),
            ),
            None => (resolve_url(base_url, uri)?, None),
        };
        Ok(PackageFacts {
            payload_url,
            image_size: size,
            image_sha256: hex::encode(digest.0),
            name: m.name.unwrap_or("firmware").to_owned(),
            version: m.version.unwrap_or("unknown").to_owned(),
            sequence: m.sequence,
            precursor_sha256: m.precursor_digest.map(|d| hex::encode(d.0)),
            payload_sha256,
            payload_size,
            integrated,
        })
    }

    fn download(&mut self, package: PackageFacts, envelope: Option<&[u8]>) -> Result<Stage, Fail> {
        // What the payload must be: a delta is held to its own signed digest and size (checked
        // here, before it is ever parsed); a full image to the signed size, its digest being
        // the card's to judge (design §4 step 6).
        let (expected_len, expected_sha256) = match &package.precursor_sha256 {
            None => (package.image_size, None),
            Some(pre) => {
                let (Some(size), Some(sha)) = (package.payload_size, &package.payload_sha256)
                else {
                    return Err(fail(
                        Failure::Invalid(
                            "the delta package does not sign the delta's digest and size".into(),
                        ),
                        true,
                    ));
                };
                let mut d = [0u8; 32];
                hex::decode_to_slice(sha, &mut d)
                    .map_err(|e| fail(Failure::Corrupt(e.to_string()), true))?;
                // A delta must fit the running image before anything is downloaded.
                let store = SlotStore::open(&self.slots)
                    .map_err(|e| fail(Failure::from_slots(&e), true))?;
                let active = store
                    .active_info()
                    .map_err(|e| fail(Failure::from_slots(&e), true))?;
                if &active.sha256 != pre {
                    return Err(fail(
                        Failure::WrongDevice(format!(
                            "the delta applies to another image than the running {}",
                            active.version
                        )),
                        true,
                    ));
                }
                (size, Some(d))
            }
        };
        let carried = package.integrated.as_deref().and_then(|name| {
            envelope
                .and_then(|e| wire::suit::Envelope::decode(e, &wire::Limits::DEFAULT).ok())
                .and_then(|e| e.integrated(name))
        });
        if let Some(bytes) = carried {
            return self.take_integrated(package, bytes, expected_len, expected_sha256);
        }
        (self.say)(&format!(
            "downloading {} {} ({} bytes{})",
            package.name,
            package.version,
            expected_len,
            if package.precursor_sha256.is_some() {
                ", a delta"
            } else {
                ""
            }
        ));
        let bar = if self.progress {
            Progress::stderr("download")
        } else {
            Progress::hidden()
        };
        let spec = FetchSpec {
            url: &package.payload_url,
            name: PAYLOAD_NAME,
            max_len: self.limits.max_payload_bytes,
            expected_len: Some(expected_len),
            expected_sha256,
        };
        // Card-digest policy and a full image: the card hashes each chunk as it arrives, so
        // the integrity verdict needs no second pass over the file (design §4 step 6).
        let card_hashes = package.precursor_sha256.is_none()
            && matches!(
                self.card.policy().map(|p| p.integrity),
                Ok(IntegrityMode::CardDigest { .. })
            );
        let got = if card_hashes {
            (self.say)("streaming the image to the card, which hashes it, as it downloads");
            let mut tap = CardTap {
                card: &mut *self.card,
                refusal: None,
            };
            let got = self.downloader.fetch_with_tap(&spec, &bar, &mut tap);
            if let Some(e) = tap.refusal {
                // The card's verdict (more bytes than signed), logged on the card.
                return Err(fail(card_failure(&e), true));
            }
            got
        } else {
            self.downloader.fetch(&spec, &bar)
        }
        .map_err(|e| fail(Failure::from_download(&e), true))?;
        Ok(Stage::Downloaded {
            package,
            payload: got.path,
            payload_sha256: hex::encode(got.sha256),
            payload_size: got.len,
        })
    }

    /// The payload travels inside the envelope: it is checked like a download (signed size,
    /// and the signed digest for a delta) and stored where a download would be.
    fn take_integrated(
        &mut self,
        package: PackageFacts,
        bytes: &[u8],
        expected_len: u64,
        expected_sha256: Option<[u8; 32]>,
    ) -> Result<Stage, Fail> {
        let sha = simfota_wire::sha256(bytes).0;
        if bytes.len() as u64 != expected_len || expected_sha256.is_some_and(|d| d != sha) {
            return Err(fail(
                Failure::Corrupt(format!(
                    "the payload carried in the package ({} bytes, SHA-256 {}) is not the signed one ({expected_len} bytes{})",
                    bytes.len(),
                    hex::encode(sha),
                    expected_sha256
                        .map_or_else(String::new, |d| format!(", SHA-256 {}", hex::encode(d)))
                )),
                true,
            ));
        }
        (self.say)(&format!(
            "the package carries its payload ({} bytes, as signed)",
            bytes.len()
        ));
        let path = self.downloader.path_of(PAYLOAD_NAME);
        let io = |e: std::io::Error| fail(Failure::from_io(&e), true);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        crate::fsutil::write_atomic(&path, bytes, &crate::fsutil::Faults::default()).map_err(io)?;
        Ok(Stage::Downloaded {
            package,
            payload: path,
            payload_sha256: hex::encode(sha),
            payload_size: bytes.len() as u64,
        })
    }

    /// Has the card judge the image's integrity, in the mode its policy requires. For a delta
    /// package the image is first rebuilt from the running one: the card compares (or hashes)
    /// what will be installed, which is what the manifest's digest describes.
    fn integrity(
        &mut self,
        package: PackageFacts,
        payload: PathBuf,
        payload_sha256: &str,
        payload_size: u64,
    ) -> Result<Stage, Fail> {
        let (image, image_sha256, image_size) = match &package.precursor_sha256 {
            None => (payload, payload_sha256.to_owned(), payload_size),
            Some(_) => self.rebuild(&payload, &package)?,
        };
        // The card holds an authorization from here on: a failure must end it (report).
        let pending = read_pending(self.card).map_err(|f| fail(f, true))?;
        if pending.map(|p| p.integrity) != Some(Integrity::Passed) {
            let policy = self
                .card
                .policy()
                .map_err(|e| fail(card_failure(&e), true))?;
            match policy.integrity {
                IntegrityMode::DeviceDigest => {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(&image_sha256, &mut d)
                        .map_err(|e| fail(Failure::Corrupt(e.to_string()), true))?;
                    (self.say)("the card compares the image digest with the signed one");
                    self.card
                        .payload_digest(&Digest(d), image_size)
                        .map_err(|e| fail(card_failure(&e), true))?;
                }
                IntegrityMode::CardDigest { .. }
                    if package.precursor_sha256.is_none()
                        && self.card.payload_stream_len() == Some(image_size) =>
                {
                    (self.say)("the card hashed the image during the download; it compares now");
                    self.card
                        .payload_stream_finish()
                        .map_err(|e| fail(card_failure(&e), true))?;
                }
                IntegrityMode::CardDigest { .. } => {
                    (self.say)("streaming the image from disk to the card, which hashes it");
                    let mut file = std::fs::File::open(&image)
                        .map_err(|e| fail(Failure::InstallFailed(e.to_string()), true))?;
                    self.card
                        .stream_payload(&mut file)
                        .map_err(|e| fail(card_failure(&e), true))?;
                }
            }
        }
        (self.say)("the card accepted the image's integrity");
        Ok(Stage::Verified {
            package,
            payload: image,
        })
    }

    /// Rebuilds the new image from the delta and the running image, straight into the
    /// inactive slot's temp file (streamed: neither image is held in memory; the slot record
    /// is untouched until the install); answers the staged image with its digest and size. The
    /// delta is checked against its signed digest and size right before it is applied (the
    /// file may have sat on disk across a restart), and the rebuilt image against the signed
    /// image digest and size.
    fn rebuild(
        &mut self,
        delta_path: &Path,
        package: &PackageFacts,
    ) -> Result<(PathBuf, String, u64), Fail> {
        let mut store =
            SlotStore::open(&self.slots).map_err(|e| fail(Failure::from_slots(&e), true))?;
        let active = store
            .active_info()
            .map_err(|e| fail(Failure::from_slots(&e), true))?;
        if package.precursor_sha256.as_ref() != Some(&active.sha256) {
            return Err(fail(
                Failure::WrongDevice(format!(
                    "the delta applies to another image than the running {}",
                    active.version
                )),
                true,
            ));
        }
        let io = |e: std::io::Error| fail(Failure::from_io(&e), true);
        let delta = std::fs::read(delta_path).map_err(io)?;
        let delta_sha = hex::encode(simfota_wire::sha256(&delta).0);
        if Some(delta.len() as u64) != package.payload_size
            || Some(&delta_sha) != package.payload_sha256.as_ref()
        {
            return Err(fail(
                Failure::Corrupt(format!(
                    "the delta ({} bytes, SHA-256 {delta_sha}) is not the one the package signs",
                    delta.len()
                )),
                true,
            ));
        }
        (self.say)(&format!(
            "rebuilding the new image from the delta and the running {}",
            active.version
        ));
        // The signed image size bounds what the patcher may produce.
        let limits = simfota_delta::Limits {
            max_source: active.size,
            max_target: package.image_size,
        };
        if self.progress {
            store.set_progress(Progress::stderr("rebuild"));
        }
        let staged = store
            .stage_delta(&delta, &limits)
            .map_err(|e| fail(Failure::from_slots(&e), true))?;
        if staged.sha256 != package.image_sha256 || staged.size != package.image_size {
            let _ = store.discard_staged();
            return Err(fail(
                Failure::Corrupt(format!(
                    "the image rebuilt from the delta ({} bytes, SHA-256 {}) is not the signed image",
                    staged.size, staged.sha256
                )),
                true,
            ));
        }
        Ok((staged.path, staged.sha256, staged.size))
    }

    /// Writes the (rebuilt) image into the inactive slot; the slot installer checks it against
    /// the signed digest again before it is marked bootable.
    fn install(&mut self, package: PackageFacts, image: &Path) -> Result<Stage, Fail> {
        let mut store =
            SlotStore::open(&self.slots).map_err(|e| fail(Failure::from_slots(&e), true))?;
        let mut sha = [0u8; 32];
        hex::decode_to_slice(&package.image_sha256, &mut sha)
            .map_err(|e| fail(Failure::Corrupt(e.to_string()), true))?;
        // A delta was rebuilt into the inactive slot's temp file already (`rebuild`).
        let source = if package.precursor_sha256.is_some() {
            ImageSource::Staged
        } else {
            ImageSource::Full(image)
        };
        if self.progress && matches!(source, ImageSource::Full(_)) {
            store.set_progress(Progress::stderr("install"));
        }
        let slot = store
            .install(source, &package.version, package.image_size, &sha)
            .map_err(|e| fail(Failure::from_slots(&e), true))?;
        (self.say)(&format!(
            "installed {} into slot {slot}; booting it",
            package.version
        ));
        Ok(Stage::Installed { package })
    }

    fn boot(&mut self, package: &PackageFacts) -> Result<Stage, Fail> {
        let mut store =
            SlotStore::open(&self.slots).map_err(|e| fail(Failure::from_slots(&e), true))?;
        let outcome = if store.record().pending.is_some() {
            store
                .boot_until_settled(self.boot_check)
                .map_err(|e| fail(Failure::from_slots(&e), true))?
        } else {
            // Booted before a crash: the record tells how it went.
            store
                .record()
                .last_boot
                .clone()
                .unwrap_or(BootOutcome::Unchanged)
        };
        match outcome {
            BootOutcome::Switched { version, .. } if version == package.version => {
                let message = format!("update to {} installed and running", package.version);
                (self.say)(&message);
                Ok(Stage::Finished {
                    result: code::SUCCESSFUL.0,
                    message,
                    report_to_card: true,
                })
            }
            BootOutcome::RolledBack { reason, .. } => Err(fail(
                Failure::InstallFailed(format!("the new firmware did not boot: {reason}")),
                true,
            )),
            other => Err(fail(
                Failure::InstallFailed(format!("unexpected boot state: {other}")),
                true,
            )),
        }
    }

    /// Tells the card the result once; answers the receipt.
    fn report(
        &mut self,
        job: &Job,
        result: u16,
        report_to_card: bool,
    ) -> Result<Option<Vec<u8>>, UpdateError> {
        let Some(update_id) = job.update_id.as_ref().filter(|_| report_to_card) else {
            return Ok(None);
        };
        let unavailable = |e: &ClientError| UpdateError::CardUnavailable {
            result,
            detail: e.to_string(),
        };
        let pending = match self.card.pending_update() {
            Ok(pending) => pending,
            Err(e @ ClientError::Link(_)) => return Err(unavailable(&e)),
            Err(e) => {
                return Err(UpdateError::CardUnreadable {
                    result,
                    detail: e.to_string(),
                });
            }
        };
        if !names_update(pending.as_ref(), Some(update_id)) {
            // The card no longer holds this update: the result reached it before a crash, or
            // it never authorized it. Never report twice; ask for the receipt of a result the
            // card already recorded (GET RECEIPT), so the 1226 still carries it.
            return match self.card.receipt(update_id) {
                Ok(receipt) => {
                    (self.say)(
                        "the card had already recorded the result; it signed the receipt again",
                    );
                    Ok(Some(receipt))
                }
                Err(e @ ClientError::Link(_)) => Err(unavailable(&e)),
                Err(_) => Ok(None),
            };
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok();
        match self.card.report_result(update_id, result, now) {
            Ok(receipt) => {
                (self.say)(&format!(
                    "the card recorded result {result} and signed a receipt"
                ));
                Ok(Some(receipt))
            }
            Err(e @ ClientError::Link(_)) => Err(unavailable(&e)),
            Err(e) => {
                (self.say)(&format!("the card did not take the result: {e}"));
                Ok(None)
            }
        }
    }
}

/// Streams the payload to the card as the downloader writes it (card-digest policy): every
/// byte from 0, the prefix kept on disk first after a restart, so the card's hash — RAM
/// state that died with any earlier card session — starts over cleanly with P1 `01`.
struct CardTap<'c, C: Channel> {
    card: &'c mut CardClient<C>,
    /// The card's refusal (its integrity verdict), which ends the download.
    refusal: Option<ClientError>,
}

impl<C: Channel> download::DownloadTap for CardTap<'_, C> {
    fn restart(&mut self) -> Result<(), String> {
        self.card.payload_stream_start();
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.card.payload_stream_len().is_none() {
            // The stream broke earlier (card link): the download goes on, and the integrity
            // step streams the file again.
            return Ok(());
        }
        match self.card.payload_stream_feed(bytes) {
            Ok(()) => Ok(()),
            Err(e @ ClientError::Refused { .. }) => {
                let message = e.to_string();
                self.refusal = Some(e);
                Err(message)
            }
            // A link failure or an unexpected status ends only the streaming.
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_uris_resolve_like_a_browser_would() {
        let base = "http://127.0.0.1:8443/packages/7/envelope";
        assert_eq!(
            resolve_url(base, "/packages/7/payload").unwrap(),
            "http://127.0.0.1:8443/packages/7/payload"
        );
        assert_eq!(
            resolve_url(base, "payload").unwrap(),
            "http://127.0.0.1:8443/packages/7/payload"
        );
        assert_eq!(
            resolve_url(base, "https://cdn.example/p").unwrap(),
            "https://cdn.example/p"
        );
        assert!(resolve_url(base, "#image").is_err());
        assert!(resolve_url("nonsense", "/p").is_err());
        assert_eq!(resolve_url("http://h:1", "/p").unwrap(), "http://h:1/p");
        assert_eq!(
            resolve_url("https://h/a/b/envelope", "../payload").unwrap(),
            "https://h/a/payload"
        );
        // Other schemes, in the reference or the base, are refused.
        assert!(resolve_url(base, "ftp://h/p").is_err());
        assert!(resolve_url(base, "file:///etc/passwd").is_err());
        assert!(resolve_url(base, "mailto:x@example.net").is_err());
        assert!(resolve_url("ftp://h/envelope", "payload").is_err());
        assert!(resolve_url(base, "").is_err());
    }

    #[test]
    fn the_pending_record_names_an_update_by_its_id() {
        let p = PendingUpdate {
            update_id: wire::UpdateId::new(&[1, 2]).unwrap(),
            integrity: Integrity::NotChecked,
            sequence: 5,
            image_size: 1,
            image_digest: Digest([0; 32]),
        };
        assert!(names_update(Some(&p), Some(&vec![1, 2])));
        assert!(!names_update(Some(&p), Some(&vec![1])));
        assert!(!names_update(Some(&p), None));
        assert!(!names_update(None, Some(&vec![1, 2])));
    }
}
