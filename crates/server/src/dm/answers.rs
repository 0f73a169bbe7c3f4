//! The session's requests and one function per kind of answer ([`Expect`]).

use rand_core::{OsRng, RngCore};
use simfota_syncml::model::Item;
use simfota_syncml::session::{CommandHandle, ServerEvent};
use simfota_syncml::tree::NodeValue;
use simfota_syncml::{AlertCode, FumoState as DmFumoState, NodeUri, StatusCode as DmStatus};
use simfota_wire::contract::{CardIdentity, Node};
use simfota_wire::{DeliveryToken, Digest, Iccid, Imei, Limits, Nonce, ServerId, UpdateId};

use super::account::ENROLMENT_NONCE_MS;
use super::flow::{CardList, Delivery, Expect, NonceUse};
use super::{AfterCommit, Step};
use crate::campaign::{self, CardMode, JobState};
use crate::db::{RowExt, now_ms};
use crate::error::{Result, ServerError};
use crate::http::valid::dm_text;

/// Longest DevInfo or DevDetail value stored for a device (`Mod`, `Man`, `FwV`).
const DM_TEXT_MAX: usize = 128;

/// A session this soon after the last one recorded does not move `devices.last_seen_ms`
/// (saves a write per session of a device that talks often, e.g. an update's two sessions).
const LAST_SEEN_GRANULARITY_MS: i64 = 60_000;

/// Lifetime of a delivery token: long enough for a slow download before authorization.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// The first applet version whose ACKNOWLEDGE LOG takes an acknowledgement bound to the
/// export page it answers (docs/apdu.md).
const PAGE_BOUND_ACKS: (u8, u8) = (1, 1);

/// `./DevInfo` leaves the device sends in package 1 (DM StdObj 1.2 §5.3).
const DEVINFO_MODEL: &str = "./DevInfo/Mod";
const DEVINFO_MANUFACTURER: &str = "./DevInfo/Man";

fn uri(node: Node) -> Result<NodeUri> {
    let s = node.uri();
    NodeUri::parse(s).map_err(|e| ServerError::internal("node URI", format!("{s}: {e}")))
}

/// The octets of `node`'s value in `item`, read by the Format the item declares (or the
/// node's own): b64 that is not base64, a Format the node does not take, or an oversized value
/// is refused, never taken raw. `None` (and a log line) when there is no usable value.
pub(super) fn item_value(node: Node, item: &Item) -> Option<Vec<u8>> {
    let data = item.data.as_ref()?;
    let format = item.meta.as_ref().and_then(|m| m.format.as_deref());
    match node.decode_value(format, &data.0) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(node = node.uri(), error = %e, "node value refused");
            None
        }
    }
}

/// `bytes` as the value of `node`, in its Format and MIME type.
fn node_value(node: Node, bytes: &[u8]) -> NodeValue {
    NodeValue {
        format: node.format().as_str().into(),
        mime_type: node.mime_type().map(Into::into),
        data: node.encode_value(bytes),
    }
}

pub(super) fn item_text(item: &Item) -> Option<String> {
    item.data
        .as_ref()
        .and_then(|d| std::str::from_utf8(&d.0).ok())
        .map(|s| s.trim().to_owned())
}

pub(super) fn item_uri(item: &Item) -> &str {
    item.source
        .as_ref()
        .or(item.target.as_ref())
        .map_or("", |l| l.uri.as_str())
}

/// What a delivery has from the device's card: a fresh nonce, or why there is none.
enum CardGate {
    /// The card's nonce for the delivery token.
    Nonce(Nonce),
    /// No nonce: the device has no SIMFOTA card subtree, or its card could not give one.
    Missing(String),
}

/// Values a device sends in package 1 besides `./DevInfo` (docs/dm-tree.md "Package 1"):
/// each one offered is used where the session would otherwise Get it.
#[derive(Default)]
pub(super) struct Offered {
    firmware_version: Option<Item>,
    card_info: Option<Item>,
    card_nonce: Option<Item>,
    fumo_state: Option<Item>,
}

impl Offered {
    /// The offered values among the message's device data.
    pub(super) fn from_events(events: &[ServerEvent]) -> Self {
        let mut o = Offered::default();
        for ev in events {
            let ServerEvent::DeviceData(items) = ev else {
                continue;
            };
            for item in items {
                let slot = match Node::from_uri(item_uri(item)) {
                    Some(Node::DevDetailFwV) => &mut o.firmware_version,
                    Some(Node::CardInfo) => &mut o.card_info,
                    Some(Node::CardNonce) => &mut o.card_nonce,
                    Some(Node::FumoState) => &mut o.fumo_state,
                    _ => continue,
                };
                *slot = Some(item.clone());
            }
        }
        o
    }
}

impl Step<'_> {
    /// Dispatches one protocol event.
    pub(super) async fn on_event(&mut self, ev: ServerEvent) -> Result<()> {
        match ev {
            ServerEvent::Authenticated { .. } => self.on_authenticated().await,
            ServerEvent::AuthenticationRejected(code) => self.on_auth_rejected(code).await,
            ServerEvent::NextClientNonce(n) => self.on_next_client_nonce(n.0).await,
            ServerEvent::DeviceData(items) => self.on_device_data(&items).await,
            ServerEvent::Results {
                handle: Some(h),
                items,
            } => match self.flow.take_results(h) {
                Some(expect) => match items.first() {
                    Some(item) => self.on_results(expect, item).await,
                    None => Ok(()),
                },
                None => Ok(()),
            },
            ServerEvent::Status { handle, code, .. } => match self.flow.take_status(handle, code) {
                Some(expect) => self.on_status(expect, code).await,
                None => Ok(()),
            },
            ServerEvent::ClientAlert(alert) if alert.code == AlertCode::GENERIC_ALERT => {
                self.on_generic_alert(&alert).await
            }
            _ => Ok(()),
        }
    }

    fn get(&mut self, node: Node, what: Expect) -> Result<()> {
        let h = self.session.get(&uri(node)?);
        self.flow.expect(h, what);
        Ok(())
    }

    fn replace(&mut self, node: Node, bytes: &[u8]) -> Result<CommandHandle> {
        Ok(self.session.replace(&uri(node)?, &node_value(node, bytes)))
    }

    /// The device authenticated: an enrolment candidate is stored, and the first authenticated
    /// message of a session queues the session's requests.
    async fn on_authenticated(&mut self) -> Result<()> {
        self.notes.authenticated = true;
        if self.account.id == 0 {
            self.enrol().await?;
        }
        if !self.flow.open() {
            return Ok(());
        }
        self.state.metrics.dm_sessions.inc();
        let now = now_ms();
        if self
            .account
            .last_seen_ms
            .is_none_or(|seen| now - seen >= LAST_SEEN_GRANULARITY_MS)
        {
            self.device.int("last_seen_ms", now);
        }
        match self.offered.firmware_version.take() {
            Some(item) => self.on_firmware_version(&item).await?,
            None => self.get(Node::DevDetailFwV, Expect::FirmwareVersion)?,
        }
        match self.offered.card_info.take() {
            Some(item) => {
                if let Some(bytes) = item_value(Node::CardInfo, &item) {
                    self.on_card_info(&bytes).await?;
                }
            }
            None => self.get(Node::CardInfo, Expect::CardInfo)?,
        }
        if self.card_lists_due() {
            self.get(Node::CardServers, Expect::CardList(CardList::Servers))?;
            self.get(Node::CardPolicy, Expect::CardList(CardList::Policy))?;
            self.get(
                Node::CardOriginators,
                Expect::CardList(CardList::Originators),
            )?;
        }
        // One card nonce per session: it serves the delivery token when a job is pending, else
        // the log-read request (the card keeps one nonce at a time). A delivered job awaiting
        // its result is asked after first: the State answer comes before the nonce's, and an
        // idle device has it offered again (`on_fumo_state`), delivered with this nonce.
        // An offered nonce serves at once, unless a delivered job's fate waits for the FUMO
        // state the device did not offer.
        let mut nonce_now = true;
        let use_ = match self.account.job {
            Some((job, JobState::Delivered)) => {
                match self.offered.fumo_state.take() {
                    Some(item) => self.on_fumo_state(job, &item).await?,
                    None => {
                        self.get(Node::FumoState, Expect::FumoState { job })?;
                        nonce_now = false;
                    }
                }
                NonceUse::Deliver { job }
            }
            Some((job, _)) => NonceUse::Deliver { job },
            None => NonceUse::RequestLogPage,
        };
        match self.offered.card_nonce.take().filter(|_| nonce_now) {
            Some(item) => self.on_card_nonce(use_, &item).await?,
            None => self.get(Node::CardNonce, Expect::CardNonce(use_))?,
        }
        // Issuer admin relay: the next queued command for the card in this device.
        if self.account.admin_queued
            && let Some(iccid) = self.account.iccid.clone()
            && let Some((id, cmd)) = crate::admin::next_for_card(self.tx, &iccid).await?
        {
            self.replace(Node::CardAdmin, &cmd)?;
            self.get(Node::CardAdminResult, Expect::AdminResult { command: id })?;
        }
        Ok(())
    }

    /// Whether this session reads the card's lists: when the server's copy was never read, is
    /// older than `card_lists_refresh`, or an issuer admin command changed the card since;
    /// and when no card is bound yet (the session's Card Info may bind one).
    fn card_lists_due(&self) -> bool {
        let refresh =
            i64::try_from(self.state.config.card_lists_refresh.as_millis()).unwrap_or(i64::MAX);
        match (&self.account.iccid, self.account.card_lists_read_ms) {
            (Some(_), Some(read)) => now_ms().saturating_sub(read) >= refresh,
            _ => true,
        }
    }

    /// Stores a device that authenticated with the enrolment secret.
    async fn enrol(&mut self) -> Result<()> {
        let password = self
            .state
            .config
            .enrolment_password
            .clone()
            .unwrap_or_default();
        let a = &mut *self.account;
        let created = crate::registry::create_device(
            &mut *self.tx,
            &crate::registry::NewDevice {
                imei: a.imei.clone(),
                username: a.username.clone(),
                password: password.clone(),
                server_password: password,
                auth: "md5".into(),
                model: None,
                manufacturer: None,
                fw_version: None,
                notify_addr: None,
                groups: Vec::new(),
                nonce: None,
            },
            "enrolment",
            &self.state.config.server_id,
        )
        .await?;
        a.id = created.id;
        if let Some(n) = a.device_nonce.clone() {
            self.device.bytes("device_nonce", n);
        }
        sqlx::query("DELETE FROM enrolment_nonces WHERE dev_id = $1")
            .bind(format!("IMEI:{}", a.imei))
            .execute(&mut *self.tx)
            .await?;
        tracing::info!(imei = %a.imei, "device enrolled");
        Ok(())
    }

    async fn on_auth_rejected(&mut self, code: DmStatus) -> Result<()> {
        self.state
            .metrics
            .verification_failures
            .with_label_values(&["device_auth"])
            .inc();
        let id = (self.account.id > 0).then_some(self.account.id);
        let why = if code == DmStatus::MISSING_CREDENTIALS {
            "no credentials"
        } else {
            "credentials refused"
        };
        tracing::warn!(imei = %self.account.imei, code = code.value(), reason = why, "DM authentication failed");
        let source = match id {
            Some(id) => format!("device {id}"),
            None => super::events::peer_source(self.peer),
        };
        super::record_aggregated(
            &mut *self.tx,
            &self.state.event_sources,
            "device_auth",
            source,
            id,
            &format!("{why} ({})", code.value()),
        )
        .await
    }

    /// The nonce the device must use next: kept with the account, or for a device not enrolled
    /// yet, with its DevId until its retry.
    async fn on_next_client_nonce(&mut self, nonce: Vec<u8>) -> Result<()> {
        self.account.device_nonce = Some(nonce.clone());
        if self.account.id > 0 {
            self.device.bytes("device_nonce", nonce);
            return Ok(());
        }
        let now = now_ms();
        sqlx::query("DELETE FROM enrolment_nonces WHERE created_ms < $1")
            .bind(now - ENROLMENT_NONCE_MS)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(
            "INSERT INTO enrolment_nonces (dev_id, nonce, created_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (dev_id) DO UPDATE SET nonce = $2, created_ms = $3",
        )
        .bind(format!("IMEI:{}", self.account.imei))
        .bind(nonce)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// `./DevInfo` sent with package 1: model and manufacturer, written when they changed.
    async fn on_device_data(&mut self, items: &[Item]) -> Result<()> {
        if self.account.id <= 0 {
            return Ok(());
        }
        for item in items {
            // Only the values stored are checked: the other DevInfo items (a long DM version
            // list, say) are none of the server's business.
            let (column, known) = match item_uri(item) {
                DEVINFO_MODEL => ("model", &mut self.account.model),
                DEVINFO_MANUFACTURER => ("manufacturer", &mut self.account.manufacturer),
                _ => continue,
            };
            let Some(text) = item_text(item).and_then(|t| dm_text(column, &t, DM_TEXT_MAX)) else {
                continue;
            };
            if known.as_deref() == Some(text.as_str()) {
                continue;
            }
            *known = Some(text.clone());
            self.device.text(column, text);
        }
        Ok(())
    }

    /// The Results of one of the session's Gets.
    async fn on_results(&mut self, expect: Expect, item: &Item) -> Result<()> {
        match expect {
            Expect::FirmwareVersion => self.on_firmware_version(item).await,
            Expect::CardInfo => match item_value(Node::CardInfo, item) {
                Some(bytes) => self.on_card_info(&bytes).await,
                None => Ok(()),
            },
            Expect::CardList(which) => self.on_card_list(which, item).await,
            Expect::CardNonce(use_) => self.on_card_nonce(use_, item).await,
            Expect::FumoState { job } => self.on_fumo_state(job, item).await,
            Expect::AdminResult { command } => match item_value(Node::CardAdminResult, item)
                .and_then(|v| String::from_utf8(v).ok())
            {
                Some(answer) => crate::admin::record(self.tx, command, &answer).await,
                None => Ok(()),
            },
            Expect::LogPage => self.on_log_page(item).await,
            // Answered by a Status only (`Flow::take_results` never yields them).
            Expect::LogAck { .. } | Expect::Delivery(_) => Ok(()),
        }
    }

    /// The Status of a Replace or Exec, or the failure of a Get.
    async fn on_status(&mut self, expect: Expect, code: DmStatus) -> Result<()> {
        match expect {
            Expect::LogAck { up_to } if code == DmStatus::OK => match self.account.iccid.clone() {
                Some(iccid) => crate::cardlog::acked(self.tx, &iccid, up_to).await,
                None => Ok(()),
            },
            // Not asked again: the next session's page is acknowledged up to the stored head.
            Expect::LogAck { up_to } => {
                tracing::warn!(imei = %self.account.imei, up_to, code = code.value(), "card refused the log acknowledgement");
                Ok(())
            }
            Expect::Delivery(d) => self.on_exec_status(d, code).await,
            // No card nonce for a delivery: a device without the SIMFOTA card subtree (404),
            // or whose card cannot give one, cannot take a card-gated update. The job ends
            // failed with the reason, counted against the campaign's error threshold, instead
            // of waiting for ever.
            Expect::CardNonce(NonceUse::Deliver { job }) => {
                let why = format!(
                    "device has no SIMFOTA card (Get {} answered {})",
                    Node::CardNonce.uri(),
                    code.value()
                );
                self.deliver(job, CardGate::Missing(why)).await
            }
            get => {
                tracing::debug!(imei = %self.account.imei, ?get, code = code.value(), "Get failed");
                Ok(())
            }
        }
    }

    async fn on_firmware_version(&mut self, item: &Item) -> Result<()> {
        let Some(fw) = item_value(Node::DevDetailFwV, item)
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| dm_text("DevDetail/FwV", &v, DM_TEXT_MAX))
        else {
            return Ok(());
        };
        if self.account.fw_version.as_deref() == Some(fw.as_str()) {
            return Ok(());
        }
        self.device.text("fw_version", fw.clone());
        self.account.fw_version = Some(fw);
        Ok(())
    }

    async fn on_card_list(&mut self, which: CardList, item: &Item) -> Result<()> {
        use crate::cardinfo::Relayed;
        let (node, what) = match which {
            CardList::Servers => (Node::CardServers, Relayed::Servers),
            CardList::Policy => (Node::CardPolicy, Relayed::Policy),
            CardList::Originators => (Node::CardOriginators, Relayed::Originators),
        };
        let (Some(bytes), Some(iccid)) = (item_value(node, item), self.account.iccid.as_deref())
        else {
            return Ok(());
        };
        // Stored with the message's other card lists, in one statement (`Step::finish`).
        match &mut self.card_lists {
            Some((bound, lists)) if bound == iccid => lists.push((what, bytes)),
            slot => *slot = Some((iccid.to_owned(), vec![(what, bytes)])),
        }
        Ok(())
    }

    /// Card Info (docs/dm-tree.md "Card answers"): the claimed ICCID and the certificate.
    async fn on_card_info(&mut self, bytes: &[u8]) -> Result<()> {
        let id = match CardIdentity::decode(bytes, &Limits::DEFAULT) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(imei = %self.account.imei, error = %e, "card info not decodable");
                return Ok(());
            }
        };
        if let Some(open) = self.flow.as_open() {
            open.page_bound_acks = id.applet >= Some(PAGE_BOUND_ACKS);
        }
        match id.certificate {
            Some(cert) => self.bind_card(cert, id.iccid).await,
            None => self.on_claimed_iccid(id.iccid).await,
        }
    }

    /// A bare ICCID is only the device's word: it binds nothing (else a device could take over
    /// another device's verified card, and tokens for that card) and is recorded as an
    /// unverified claim; the device keeps whatever binding it had.
    async fn on_claimed_iccid(&mut self, claimed: Option<&str>) -> Result<()> {
        let Some(claimed) = claimed else {
            return Ok(());
        };
        // Device-chosen text: shown only once it parses as an ICCID.
        let claimed = Iccid::parse(claimed).map_or_else(
            |_| "(not a valid ICCID)".to_owned(),
            |i| i.as_str().to_owned(),
        );
        tracing::warn!(imei = %self.account.imei, iccid = %claimed, "card info claims an ICCID without a certificate; not bound");
        super::record_aggregated(
            &mut *self.tx,
            &self.state.event_sources,
            "card_claim",
            format!("device {}", self.account.id),
            Some(self.account.id),
            &format!("ICCID {claimed} claimed without a card certificate; not bound"),
        )
        .await
    }

    /// The ICCID the server binds tokens to is the one in a certificate that verified under
    /// an issuer key in this session.
    async fn bind_card(&mut self, cert: &[u8], claimed: Option<&str>) -> Result<()> {
        let state = self.state;
        // Whether the card's admin queue holds a command, when the registration read it
        // (a card remembered as verified is not stored again: its queue is looked at).
        let (iccid, admin_queued) = match state.verified_cards.get(cert) {
            Some(iccid) => (iccid, true),
            None => {
                match crate::registry::register_card_queued(
                    &mut *self.tx,
                    &state.keys.issuers,
                    cert,
                )
                .await
                {
                    Ok((card, queued)) => {
                        // Remembered once the registration commits with this message (a
                        // message that fails leaves the next session to verify again).
                        self.after.push(AfterCommit::RememberCard {
                            certificate: cert.to_vec(),
                            iccid: card.iccid.clone(),
                        });
                        (card.iccid, queued)
                    }
                    Err(ServerError::Verification(m)) => {
                        state
                            .metrics
                            .verification_failures
                            .with_label_values(&["certificate"])
                            .inc();
                        return super::record_event(
                            &mut *self.tx,
                            "card_certificate",
                            Some(self.account.id),
                            &m,
                        )
                        .await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if claimed.is_some_and(|i| i != iccid) {
            tracing::warn!(imei = %self.account.imei, "card info ICCID differs from its certificate; the certificate's is bound");
        }
        if self.account.iccid.as_deref() != Some(iccid.as_str()) {
            self.device.text("iccid", iccid.clone());
            self.account.iccid = Some(iccid);
            // What is known of the newly bound card (its lists, its admin queue) is not.
            self.account.card_lists_read_ms = None;
            self.account.card = None;
            self.account.admin_queued = admin_queued;
        }
        Ok(())
    }

    /// Fails pending `job` for `why` (the session's note says why nothing was delivered).
    async fn fail_pending(&mut self, job: i64, why: String) -> Result<()> {
        tracing::warn!(imei = %self.account.imei, job, reason = %why, "update not delivered: job failed");
        if let Some((campaign, Some(before_wave))) =
            campaign::fail_pending(self.tx, job, &why).await?
        {
            self.after.push(AfterCommit::NotifyReleased {
                campaign,
                before_wave,
            });
        }
        self.notes.not_delivered = Some(why);
        Ok(())
    }

    /// The device's FUMO state while `job` awaits its result (FUMO 1.0 §6.1). Idle (10) with no
    /// result reported in this session (a Generic Alert comes in package 1, before this
    /// answer) means the device no longer holds the update: it is offered again, up to
    /// [`campaign::MAX_DELIVERIES`] deliveries. Any other state is the device working on it or
    /// about to report.
    async fn on_fumo_state(&mut self, job: i64, item: &Item) -> Result<()> {
        let Some(state) = item_value(Node::FumoState, item)
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|t| t.trim().parse::<u8>().ok())
        else {
            return Ok(());
        };
        if state != DmFumoState::IDLE.value() {
            return Ok(());
        }
        let why = format!("the device reported FUMO state {state} (idle) without a result");
        let outcome = campaign::reoffer(self.tx, job, &why).await?;
        // No longer delivered (or already not): a result alert for it is not taken as such,
        // and a job pending again is delivered as such (read in this transaction).
        self.account.delivered = None;
        if outcome == campaign::Reoffer::Pending {
            self.account.job = Some((job, JobState::Pending));
        }
        tracing::warn!(job, imei = %self.account.imei, ?outcome, "delivered update lost by the device");
        Ok(())
    }

    /// A card nonce arrived: it serves the use it was asked for.
    async fn on_card_nonce(&mut self, use_: NonceUse, item: &Item) -> Result<()> {
        let Some(n) =
            item_value(Node::CardNonce, item).and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        else {
            tracing::warn!(imei = %self.account.imei, "card nonce missing or not 16 bytes");
            if let NonceUse::Deliver { .. } = use_ {
                self.notes.not_delivered =
                    Some("the card nonce was missing or not 16 bytes".into());
            }
            return Ok(());
        };
        match use_ {
            NonceUse::Deliver { job } => self.deliver(job, CardGate::Nonce(Nonce(n))).await,
            NonceUse::RequestLogPage => self.request_log_page(Nonce(n)).await,
            NonceUse::Acknowledge { up_to, more } => {
                let ack = crate::cardlog::ack(self.state, Nonce(n), up_to)?;
                let h = self.replace(Node::CardLogAck, &ack)?;
                self.flow.expect(h, Expect::LogAck { up_to });
                if more {
                    // The next page needs its own nonce; Got after the acknowledgement in the
                    // same package (the device runs commands in order, SyncML RepPro 1.2
                    // §6.1.11), so the ack consumes the previous one first.
                    self.get(Node::CardNonce, Expect::CardNonce(NonceUse::RequestLogPage))?;
                }
                Ok(())
            }
        }
    }

    /// Reads the bound card's row when the account does not hold it (a card bound in this
    /// message); the account lookup read it otherwise.
    pub(super) async fn know_card(&mut self) -> Result<()> {
        if self.account.card.is_none() {
            let card = match &self.account.iccid {
                Some(iccid) => crate::cardlog::CardRow::load(self.tx, iccid).await?,
                None => None,
            };
            self.account.card = Some(card);
        }
        Ok(())
    }

    /// Card subtree: Replace LogRequest (signed, answering `nonce`) then Get LogResponse in
    /// one package (the device processes them in order, docs/dm-tree.md).
    async fn request_log_page(&mut self, nonce: Nonce) -> Result<()> {
        self.know_card().await?;
        let Some(Some(card)) = &self.account.card else {
            return Ok(());
        };
        let (req, sent) = crate::cardlog::request(self.state, card, nonce)?;
        self.replace(Node::CardLogRequest, &req)?;
        self.get(Node::CardLogResponse, Expect::LogPage)?;
        // Kept with the session (its page comes back in it): one request awaits at a time.
        if let Some(open) = self.flow.as_open() {
            open.log_request = Some(sent);
        }
        Ok(())
    }

    /// An export page: verified and stored; an accepted page is acknowledged, and the page
    /// after it requested while the session's bound allows. A card of applet 1.1 or later
    /// takes the acknowledgement bound to the nonce the page answered (docs/apdu.md,
    /// ACKNOWLEDGE LOG): it goes in the reply to the page, with the Get of the next page's
    /// nonce after it (the device runs commands in order, SyncML RepPro 1.2 §6.1.11: the card
    /// sees the acknowledgement first). An older card's acknowledgement waits for a fresh
    /// nonce, one round trip later.
    async fn on_log_page(&mut self, item: &Item) -> Result<()> {
        let (Some(bytes), Some(iccid)) = (
            item_value(Node::CardLogResponse, item),
            self.account.iccid.clone(),
        ) else {
            return Ok(());
        };
        self.know_card().await?;
        let sent = self.flow.as_open().and_then(|o| o.log_request.take());
        let card = self.account.card.as_mut().and_then(Option::as_mut);
        let outcome = crate::cardlog::on_export(
            self.state,
            self.tx,
            card,
            &iccid,
            self.account.id,
            sent,
            &bytes,
        )
        .await?;
        let crate::cardlog::Outcome::Accepted {
            nonce,
            up_to: Some(up_to),
            more,
            ..
        } = outcome
        else {
            return Ok(());
        };
        self.notes.log_pages += 1;
        let Some(open) = self.flow.as_open() else {
            return Ok(());
        };
        open.log_pages += 1;
        let pages = open.log_pages;
        let next = more && pages < crate::cardlog::MAX_PAGES_PER_SESSION;
        if more && !next {
            tracing::info!(%iccid, pages, "card log: page bound of this session reached; the rest is read next session");
        }
        if !open.page_bound_acks {
            return self.get(
                Node::CardNonce,
                Expect::CardNonce(NonceUse::Acknowledge { up_to, more: next }),
            );
        }
        let ack = crate::cardlog::ack(self.state, nonce, up_to)?;
        let h = self.replace(Node::CardLogAck, &ack)?;
        self.flow.expect(h, Expect::LogAck { up_to });
        if next {
            self.get(Node::CardNonce, Expect::CardNonce(NonceUse::RequestLogPage))?;
        }
        Ok(())
    }

    /// What a delivery of `job_id` needs, if the job is pending: correlator, package, manifest
    /// digest, the campaign's card mode, and what decides whether it is offered now
    /// ([`campaign::OFFER_COLUMNS`]).
    async fn pending_delivery(&mut self, job_id: i64) -> Result<Option<sqlx::any::AnyRow>> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT j.correlator, c.package_id, c.card, p.manifest_digest, {} FROM jobs j \
                 JOIN campaigns c ON c.id = j.campaign_id JOIN packages p ON p.id = c.package_id \
                 WHERE j.id = $1 AND j.state = 'pending'",
                campaign::OFFER_COLUMNS
            )
        });
        Ok(sqlx::query(&SQL)
            .bind(job_id)
            .fetch_optional(&mut *self.tx)
            .await?)
    }

    /// Delivers `job_id` (or the device's next pending job): with the card's nonce and a
    /// verified card, the delivery token and the FUMO commands; without either, plain FUMO
    /// when the job's campaign takes devices without a card, else the job fails with why.
    async fn deliver(&mut self, job_id: i64, gate: CardGate) -> Result<()> {
        // The job asked for when it is (again) pending; else the device's next pending job,
        // if any (the one asked for ended in this session, or its device still works on it:
        // then the device answers 425 and keeps its update). With none, the nonce serves the
        // card log.
        // A job the account lookup found delivered is not looked for as pending: should it be
        // pending again (offered anew in this message), the device's next pending job below
        // finds it.
        // The account lookup read what the delivery needs when the job was pending then, and
        // the device's next pending job when its job was delivered.
        let delivered = self.account.job == Some((job_id, JobState::Delivered));
        let asked = if delivered {
            None
        } else if self.account.job == Some((job_id, JobState::Pending))
            && let Some(row) = self.account.pending_offer.take()
        {
            Some(row)
        } else {
            self.pending_delivery(job_id).await?
        };
        let found = match asked {
            Some(row) => Some((job_id, row)),
            None => {
                let next = if delivered {
                    self.account.next_pending.take()
                } else {
                    campaign::next_job_for_device(self.tx, self.account.id)
                        .await?
                        .map(|j| j.id)
                };
                match next {
                    Some(id) => self.pending_delivery(id).await?.map(|row| (id, row)),
                    None => None,
                }
            }
        };
        let Some((job_id, row)) = found else {
            return match gate {
                CardGate::Nonce(nonce) => self.request_log_page(nonce).await,
                CardGate::Missing(_) => Ok(()),
            };
        };
        // The campaign's own conditions: a device already at or above the package is
        // skipped, a deadline passed fails the job, outside the maintenance window it waits.
        let fw = self.account.fw_version.clone();
        let why = match campaign::offer_on(self.tx, job_id, &row, fw.as_deref()).await? {
            campaign::Offer::Deliver => None,
            campaign::Offer::NotNow(why) => Some(why),
            campaign::Offer::Ended { why, released } => {
                if let Some((campaign, before_wave)) = released {
                    self.after.push(AfterCommit::NotifyReleased {
                        campaign,
                        before_wave,
                    });
                }
                Some(why)
            }
        };
        if let Some(why) = why {
            tracing::info!(imei = %self.account.imei, job = job_id, reason = %why, "update not offered");
            self.notes.not_delivered = Some(why);
            return match gate {
                CardGate::Nonce(nonce) => self.request_log_page(nonce).await,
                CardGate::Missing(_) => Ok(()),
            };
        }
        let (nonce, iccid) = match (gate, self.account.iccid.clone()) {
            (CardGate::Nonce(nonce), Some(iccid)) => (nonce, iccid),
            (gate, _) => {
                let why = match gate {
                    CardGate::Missing(why) => why,
                    // A device whose card never showed a certificate that verifies under an
                    // issuer key: it cannot take a card-gated update.
                    CardGate::Nonce(_) => "no verified card in the device (no card \
                                           certificate that verifies under an issuer key)"
                        .to_owned(),
                };
                return match CardMode::parse(&row.text("card")?)? {
                    CardMode::Optional => self.deliver_plain(job_id, &row, &why),
                    CardMode::Required => self.fail_pending(job_id, why).await,
                };
            }
        };
        let md: [u8; 32] = row
            .bytes("manifest_digest")?
            .try_into()
            .map_err(|d: Vec<u8>| {
                ServerError::internal(
                    "stored manifest digest",
                    format!("{} bytes, not 32", d.len()),
                )
            })?;
        let mut cti = [0u8; 16];
        OsRng.fill_bytes(&mut cti);
        let iat = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let bad = ServerError::signing("delivery token");
        let state = self.state;
        let token = DeliveryToken {
            iss: ServerId::new(&state.config.server_id).map_err(bad)?,
            iat,
            exp: iat + TOKEN_LIFETIME_SECS,
            cti: UpdateId::new(&cti).map_err(bad)?,
            nonce,
            iccid: Iccid::parse(&iccid).map_err(bad)?,
            imei: Imei::parse(&self.account.imei).map_err(bad)?,
            manifest_digest: Digest(md),
            nbf: None,
            charging_ref: None,
        };
        let bytes = token.to_vec(&state.keys.server_signer).map_err(bad)?;
        self.replace(Node::FumoDeliveryToken, &bytes)?;
        self.pkg_url_and_exec(
            &row,
            "envelope",
            Delivery {
                job: job_id,
                update_id: cti.to_vec(),
                token: bytes,
            },
        )
    }

    /// Replaces `./FUMO/fw/DownloadAndUpdate/PkgURL` with the package's `part` URL
    /// (`envelope` or `payload`) and Execs DownloadAndUpdate with the job's Correlator,
    /// expecting its Status as `delivery`.
    fn pkg_url_and_exec(
        &mut self,
        row: &sqlx::any::AnyRow,
        part: &str,
        delivery: Delivery,
    ) -> Result<()> {
        let url =
            crate::packages::package_url(self.state, row.i64("package_id")?, part, delivery.job);
        self.replace(Node::FumoPkgUrl, url.as_bytes())?;
        let correlator = row.text("correlator")?;
        let h = self
            .session
            .exec(&uri(Node::FumoDownloadAndUpdate)?, Some(&correlator), None);
        self.flow.expect(h, Expect::Delivery(delivery));
        Ok(())
    }

    /// Plain FUMO for a device without a usable card, in a campaign that takes such devices
    /// (`card: optional`): the payload's URL and the Exec, no delivery token; the result will
    /// be recorded as not card-attested.
    fn deliver_plain(&mut self, job_id: i64, row: &sqlx::any::AnyRow, why: &str) -> Result<()> {
        tracing::info!(imei = %self.account.imei, job = job_id, reason = why, "delivering plain FUMO, not card-attested (campaign card: optional)");
        // An update id all the same (the job's key for its result), never shown to a card.
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        self.pkg_url_and_exec(
            row,
            "payload",
            Delivery {
                job: job_id,
                update_id: id.to_vec(),
                token: Vec::new(),
            },
        )
    }

    /// DM Protocol 1.2 §10: 202 accepted (the FUMO operation runs and reports later by Generic
    /// Alert), or 200 when the device finished it synchronously: the job is delivered.
    async fn on_exec_status(&mut self, d: Delivery, code: DmStatus) -> Result<()> {
        if code != DmStatus::ACCEPTED_FOR_PROCESSING && code != DmStatus::OK {
            tracing::warn!(
                job = d.job,
                code = code.value(),
                "device refused the FUMO Exec"
            );
            self.notes.not_delivered = Some(format!(
                "the device refused the FUMO Exec ({})",
                code.value()
            ));
            return Ok(());
        }
        match campaign::mark_delivered(&mut *self.tx, d.job, &d.update_id, &d.token).await {
            Ok(()) => {
                tracing::info!(job = d.job, imei = %self.account.imei, "update delivered");
                self.notes.delivered = Some(d.job);
                Ok(())
            }
            Err(ServerError::Conflict(m)) => {
                tracing::warn!(job = d.job, %m, "delivery not recorded");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
