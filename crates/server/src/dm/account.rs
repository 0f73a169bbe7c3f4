//! Who is at the other end of a DM message: a registered device's account, an unknown device
//! that may enrol, or one that is refused (DM Security 1.2 §5.3, §5.4).

use axum::response::Response;
use rand_core::{OsRng, RngCore};
use simfota_syncml::auth::{AuthScheme, Credentials, Nonce as DmNonce};
use simfota_syncml::session::{ServerConfig as DmConfig, ServerSession};
use simfota_syncml::{Encoding, Limits as DmLimits};
use simfota_wire::Imei;

use super::store::{self, Stored};
use super::{reply, session_err};
use crate::AppState;
use crate::campaign::JobState;
use crate::db::{RowExt, now_ms};
use crate::error::{Result, ServerError};
use sqlx::Row as _;

/// How long the nonce a not yet enrolled device was challenged with stays valid.
pub const ENROLMENT_NONCE_MS: i64 = 3600 * 1000;

/// A device's DM account, as stored in `devices` (id 0: an enrolment candidate, stored once
/// it authenticated).
pub struct Account {
    pub id: i64,
    pub imei: String,
    pub username: String,
    /// `B64(H(user:password))` of the device's credentials (what MD5 and HMAC need).
    pub secret: String,
    /// `B64(H(server-id:password))` of the server's credentials towards the device.
    pub server_secret: String,
    pub auth: AuthScheme,
    pub device_nonce: Option<Vec<u8>>,
    pub server_nonce: Option<Vec<u8>>,
    pub iccid: Option<String>,
    /// When the server last read the lists of the card bound to this device (`None`: never,
    /// or they are due again).
    pub card_lists_read_ms: Option<i64>,
    /// The bound card as the log flow needs it, read with the account: `Some(None)` when the
    /// ICCID names no verified card, `None` when not known (another card was just bound).
    pub card: Option<Option<crate::cardlog::CardRow>>,
    /// The device's job to work on, read with the account: a delivered job awaiting its
    /// result, else its oldest pending job of a running campaign
    /// ([`crate::campaign::DEVICE_JOB_ID_SQL`]'s choice).
    pub job: Option<(i64, JobState)>,
    /// [`Account::job`] when it is delivered and awaits its result, with what the result
    /// alert is matched and checked against; taken once the message deals with it.
    pub delivered: Option<DeliveredJob>,
    /// [`Account::job`] when it is pending, with what its delivery needs (the columns of
    /// `answers`' delivery query, [`crate::campaign::OFFER_COLUMNS`] among them); taken by the
    /// delivery. The delivery's writes check the job is still pending.
    pub pending_offer: Option<sqlx::any::AnyRow>,
    /// When [`Account::job`] is delivered: the device's next pending job of a running
    /// campaign ([`crate::campaign::next_job_for_device`]'s choice), if any.
    pub next_pending: Option<i64>,
    /// Whether the issuer admin queue may hold a command for its card: read with the account,
    /// and set again when the message binds another card. `false`: nothing to look for.
    pub admin_queued: bool,
    /// When the device last started a session (Unix ms).
    pub last_seen_ms: Option<i64>,
    /// What the device reported last: a report that changes nothing writes nothing.
    pub fw_version: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
}

/// A delivered job as its result alert needs it (read with the account).
#[derive(Debug, Clone)]
pub struct DeliveredJob {
    /// `jobs.id`.
    pub id: i64,
    /// The Correlator of its FUMO Exec, which the alert repeats.
    pub correlator: String,
    /// The delivery's update id (the receipt names it).
    pub update_id: Option<Vec<u8>>,
    /// The delivery token; empty or `None` for plain FUMO.
    pub token: Option<Vec<u8>>,
}

/// A column value of [`DevicePatch`].
enum Column {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// What one message changes in the device's row, written as one UPDATE when the message has
/// been handled (and only when something changed).
#[derive(Default)]
pub struct DevicePatch {
    set: Vec<(&'static str, Column)>,
}

impl DevicePatch {
    fn put(&mut self, column: &'static str, value: Column) {
        self.set.retain(|(c, _)| *c != column);
        self.set.push((column, value));
    }

    pub fn int(&mut self, column: &'static str, value: i64) {
        self.put(column, Column::Int(value));
    }

    pub fn text(&mut self, column: &'static str, value: String) {
        self.put(column, Column::Text(value));
    }

    pub fn bytes(&mut self, column: &'static str, value: Vec<u8>) {
        self.put(column, Column::Bytes(value));
    }

    /// Writes the changes to device `id`; nothing when there are none.
    pub async fn write(self, conn: &mut sqlx::AnyConnection, id: i64) -> Result<()> {
        if self.set.is_empty() {
            return Ok(());
        }
        let assignments: Vec<String> = self
            .set
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{c} = ${}", i + 1))
            .collect();
        let sql = format!(
            "UPDATE devices SET {} WHERE id = ${}",
            assignments.join(", "),
            self.set.len() + 1
        );
        let mut q = sqlx::query(&sql);
        for (_, v) in self.set {
            q = match v {
                Column::Int(i) => q.bind(i),
                Column::Text(t) => q.bind(t),
                Column::Bytes(b) => q.bind(b),
            };
        }
        q.bind(id).execute(conn).await?;
        Ok(())
    }
}

pub fn fresh_nonce() -> DmNonce {
    let mut n = vec![0u8; 16];
    OsRng.fill_bytes(&mut n);
    DmNonce(n)
}

pub fn dm_limits() -> DmLimits {
    DmLimits::default()
}

/// The protocol session's configuration for this account.
pub fn dm_config(state: &AppState, a: &Account, encoding: Encoding) -> DmConfig {
    DmConfig {
        server_id: state.config.server_id.clone(),
        server_uri: format!("{}/dm", state.base_url),
        resp_uri: None,
        client_credentials: Credentials::from_digest(a.username.clone(), a.secret.clone()),
        server_credentials: Credentials::from_digest(
            state.config.server_id.clone(),
            a.server_secret.clone(),
        ),
        auth: a.auth,
        encoding,
        limits: dm_limits(),
    }
}

/// The IMEI in a DevId `IMEI:<15 digits>` (DM StdObj 1.2 §5.3.1).
pub fn imei_of(dev_id: &str) -> Option<&str> {
    dev_id
        .strip_prefix("IMEI:")
        .filter(|i| Imei::parse(i).is_ok())
}

/// The scheme a device account is stored with (`devices.auth_scheme`, written by the registry
/// as `md5` or `hmac`); `None` for anything else.
pub fn auth_scheme(stored: &str) -> Option<AuthScheme> {
    match stored {
        "md5" => Some(AuthScheme::Md5),
        "hmac" => Some(AuthScheme::Hmac),
        _ => None,
    }
}

/// A registered device and its stored session, if it has one by that id: `(session, version)`.
pub type Known = (Account, Option<(Stored, i64)>);

/// The device by IMEI ($1) with its session ($2), its card's lists time, its job and whether
/// its card's admin queue holds a command. The job is [`crate::campaign::DEVICE_JOB_ID_SQL`]'s
/// choice (on the (device_id, state) index), with what its delivery needs when it is pending
/// and the device's next pending job when it is delivered; the admin queue is only looked at
/// for existence.
static LOOKUP_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT d.id, d.imei, d.dm_username, d.dm_secret, d.server_secret, d.auth_scheme, \
         d.device_nonce, d.server_nonce, d.iccid, d.fw_version, d.model, d.manufacturer, \
         d.last_seen_ms, k.lists_read_ms, k.id AS card_id, k.cert_status, k.card_pub, \
         k.log_head_seq, k.log_head_hash, k.pin_tries_left, k.pin_max_tries, \
         s.state AS session_state, \
         s.version AS session_version, j.id AS job_id, j.state AS job_state, \
         j.correlator, j.update_id AS job_update_id, j.token AS job_token, \
         c.package_id, c.card, p.manifest_digest, {}, \
         CASE WHEN j.state = 'delivered' THEN (SELECT j3.id FROM jobs j3 \
         JOIN campaigns c3 ON c3.id = j3.campaign_id WHERE j3.device_id = d.id \
         AND j3.state = 'pending' AND c3.state = 'running' ORDER BY j3.id LIMIT 1) END \
         AS next_job_id, \
         EXISTS (SELECT 1 FROM admin_queue a WHERE a.card_id = k.id AND a.state = 'queued') \
         AS admin_queued \
         FROM devices d LEFT JOIN dm_sessions s ON s.device_id = d.id AND s.session_id = $2 \
         LEFT JOIN cards k ON k.iccid = d.iccid \
         LEFT JOIN jobs j ON j.id = ({}) \
         LEFT JOIN campaigns c ON c.id = j.campaign_id \
         LEFT JOIN packages p ON p.id = c.package_id \
         WHERE d.imei = $1",
        crate::campaign::OFFER_COLUMNS,
        crate::campaign::DEVICE_JOB_ID_SQL
    )
});

/// The registered device whose DevId this is, if any, with its stored session `session_id`
/// and what is known of its card (one statement for all of it).
pub async fn lookup(state: &AppState, dev_id: &str, session_id: &str) -> Result<Option<Known>> {
    let Some(imei) = imei_of(dev_id) else {
        return Ok(None);
    };
    let row = sqlx::query(&LOOKUP_SQL)
        .bind(imei.to_owned())
        .bind(session_id.to_owned())
        .fetch_optional(state.db.pool())
        .await?;
    let Some(r) = row else { return Ok(None) };
    let stored = r.text("auth_scheme")?;
    let Some(auth) = auth_scheme(&stored) else {
        // Guessing a scheme would authenticate the device some other way than the operator
        // registered it; the account is unusable until its scheme is fixed.
        tracing::error!(%imei, scheme = %stored, "stored auth scheme is neither md5 nor hmac: DM session refused");
        return Err(ServerError::internal(
            "stored auth scheme",
            format!("device {imei}: {stored:?} is neither md5 nor hmac; session refused"),
        ));
    };
    let session = match (r.opt_bytes("session_state")?, r.opt_i64("session_version")?) {
        (Some(bytes), Some(version)) => Some((store::decode(&bytes)?, version)),
        _ => None,
    };
    let job = match (r.opt_i64("job_id")?, r.opt_text("job_state")?) {
        (Some(id), Some(state)) => Some((id, JobState::parse(&state)?)),
        _ => None,
    };
    let delivered = match job {
        Some((id, JobState::Delivered)) => Some(DeliveredJob {
            id,
            correlator: r.text("correlator")?,
            update_id: r.opt_bytes("job_update_id")?,
            token: r.opt_bytes("job_token")?,
        }),
        _ => None,
    };
    let mut account = Account {
        id: r.i64("id")?,
        imei: r.text("imei")?,
        username: r.text("dm_username")?,
        secret: r.text("dm_secret")?,
        server_secret: r.text("server_secret")?,
        auth,
        device_nonce: r.opt_bytes("device_nonce")?,
        server_nonce: r.opt_bytes("server_nonce")?,
        iccid: r.opt_text("iccid")?,
        card_lists_read_ms: r.opt_i64("lists_read_ms")?,
        card: Some(crate::cardlog::CardRow::from_row(&r)?),
        job,
        delivered,
        pending_offer: None,
        next_pending: match job {
            Some((_, JobState::Delivered)) => r.opt_i64("next_job_id")?,
            _ => None,
        },
        // `EXISTS` is a boolean in PostgreSQL and an integer in SQLite.
        admin_queued: match r.try_get::<bool, _>("admin_queued") {
            Ok(b) => b,
            Err(_) => r.i64("admin_queued")? != 0,
        },
        last_seen_ms: r.opt_i64("last_seen_ms")?,
        fw_version: r.opt_text("fw_version")?,
        model: r.opt_text("model")?,
        manufacturer: r.opt_text("manufacturer")?,
    };
    if matches!(account.job, Some((_, JobState::Pending))) && r.opt_i64("package_id")?.is_some() {
        account.pending_offer = Some(r);
    }
    Ok(Some((account, session)))
}

/// Under `shared-secret` enrolment, an unknown device with a valid IMEI DevId may authenticate
/// with the enrolment password (user name: its `Source/LocName`, else the DevId); it is stored
/// only once that authentication succeeded (id 0 until then). The nonce it was challenged
/// with lives in `enrolment_nonces` meanwhile (DM Security 1.2 §5.4: the retry's digest uses
/// it, and the retry may reach another replica).
pub async fn enrol_candidate(
    state: &AppState,
    dev_id: &str,
    loc_name: Option<&str>,
) -> Result<Option<Account>> {
    if state.config.enrolment != crate::config::Enrolment::SharedSecret {
        return Ok(None);
    }
    let (Some(imei), Some(pw)) = (imei_of(dev_id), state.config.enrolment_password.clone()) else {
        return Ok(None);
    };
    let nonce =
        sqlx::query("SELECT nonce FROM enrolment_nonces WHERE dev_id = $1 AND created_ms > $2")
            .bind(dev_id.to_owned())
            .bind(now_ms() - ENROLMENT_NONCE_MS)
            .fetch_optional(state.db.pool())
            .await?
            .map(|r| r.bytes("nonce"))
            .transpose()?;
    Ok(Some(Account {
        id: 0,
        imei: imei.to_owned(),
        username: loc_name.unwrap_or(dev_id).to_owned(),
        secret: Credentials::new(loc_name.unwrap_or(dev_id), pw.as_str()).secret_digest(),
        server_secret: Credentials::new(state.config.server_id.as_str(), pw.as_str())
            .secret_digest(),
        auth: AuthScheme::Md5,
        device_nonce: nonce,
        server_nonce: None,
        iccid: None,
        card_lists_read_ms: None,
        card: Some(None),
        job: None,
        delivered: None,
        pending_offer: None,
        next_pending: None,
        admin_queued: false,
        last_seen_ms: None,
        fw_version: None,
        model: None,
        manufacturer: None,
    }))
}

/// An unknown device under `preregistered`: the protocol session runs with credentials no
/// device can know, so the device gets 401 with a challenge; the attempt is recorded.
pub fn refuse_unknown(
    state: &AppState,
    encoding: Encoding,
    dev_id: &str,
    peer: Option<std::net::SocketAddr>,
    body: &[u8],
    hmac: Option<&str>,
) -> Response {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let config = DmConfig {
        server_id: state.config.server_id.clone(),
        server_uri: format!("{}/dm", state.base_url),
        resp_uri: None,
        client_credentials: Credentials::new(dev_id.to_owned(), hex::encode(secret)),
        server_credentials: Credentials::new(state.config.server_id.clone(), hex::encode(secret)),
        auth: AuthScheme::Md5,
        encoding,
        limits: dm_limits(),
    };
    let mut s = ServerSession::new(config, fresh_nonce(), fresh_nonce());
    if let Err(e) = s.receive(body, hmac, fresh_nonce()) {
        return session_err(e);
    }
    state
        .metrics
        .verification_failures
        .with_label_values(&["device_auth"])
        .inc();
    let state = state.clone();
    let detail = format!(
        "unknown device {}",
        dev_id.chars().take(64).collect::<String>()
    );
    tokio::spawn(async move {
        let recorded = match state.db.conn().await {
            Ok(mut conn) => {
                super::record_aggregated(
                    &mut conn,
                    &state.event_sources,
                    "unknown_device",
                    super::events::peer_source(peer),
                    None,
                    &detail,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "security event not recorded");
        }
    });
    match s.reply() {
        Ok(out) => reply(out),
        Err(e) => session_err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_registry_spellings_are_auth_schemes() {
        assert_eq!(auth_scheme("md5"), Some(AuthScheme::Md5));
        assert_eq!(auth_scheme("hmac"), Some(AuthScheme::Hmac));
        for unknown in ["", "MD5", "sha256", "basic", "hmac "] {
            assert_eq!(auth_scheme(unknown), None, "{unknown:?}");
        }
    }
}
