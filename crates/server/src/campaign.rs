//! Campaigns: which devices get a package, in which waves, and when to stop.
//!
//! A campaign targets devices by model, by current firmware version and/or by group; its
//! devices are put in a fixed order (registration order) and split into waves by cumulative
//! percentages (`[10, 50, 100]`: the first 10 %, up to half, then everyone). Only released
//! waves are delivered. After every job result the campaign is re-evaluated over the released
//! jobs: at or above the error threshold (percent failed) it halts; at or above the success
//! threshold (percent succeeded) the next wave is released; when every job has ended it
//! completes. Operators pause, resume (also a halted campaign, after looking) and cancel.
//!
//! Job states follow the FUMO flow (OMA-TS-DM-FUMO-V1_0 §6 states, §8 result codes): a job is
//! `waiting` (wave not released), `pending` (to deliver in the device's next session),
//! `delivered` (token and Exec sent, the device accepted with 202: download/update under way),
//! then `succeeded` (result 200, or 250-299) or `failed` (any other FUMO result code, or a
//! success the card's receipt does not confirm), or `cancelled`.
//! Every state change is a compare-and-set in the database, so replicas never step on each
//! other.

use serde::{Deserialize, Serialize};
use simfota_syncml::{FumoResult, FumoState};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use sqlx::{AnyConnection, Connection as _};

use crate::db::{Db, RowExt, now_ms};
use crate::error::{Result, ServerError};

/// What a campaign does with a device that cannot take a card-gated update: one without the
/// SIMFOTA card subtree, or whose card never showed a certificate that verifies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CardMode {
    /// Its job fails, with the reason, counted against the error threshold.
    #[default]
    Required,
    /// It gets the update as plain FUMO (the payload's URL and the Exec, no delivery token),
    /// and its result is recorded as not card-attested (no proof bundle).
    Optional,
}

impl CardMode {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Optional => "optional",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "required" => Ok(Self::Required),
            "optional" => Ok(Self::Optional),
            other => Err(ServerError::internal(
                "stored campaign card mode",
                format!("{other:?} is neither required nor optional"),
            )),
        }
    }
}

/// A campaign's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Delivering released waves.
    Running,
    /// Stopped by an operator; resumable.
    Paused,
    /// Stopped because the error threshold was reached; resumable by an operator.
    Halted,
    /// Stopped for good; undelivered jobs cancelled.
    Cancelled,
    /// Every job ended.
    Completed,
}

impl CampaignState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Cancelled => "cancelled",
            Self::Completed => "completed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "running" => Self::Running,
            "paused" => Self::Paused,
            "halted" => Self::Halted,
            "cancelled" => Self::Cancelled,
            "completed" => Self::Completed,
            other => {
                return Err(ServerError::internal(
                    "stored campaign state",
                    format!("unknown state {other:?}"),
                ));
            }
        })
    }
}

/// A job's state (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Not offered: the device is already at or above the package (its version, or a
    /// sequence number it already took); terminal, counted apart from failures.
    Skipped,
    /// In a wave not yet released.
    Waiting,
    /// Released: delivered in the device's next DM session.
    Pending,
    /// Token and Exec sent; the device accepted (FUMO download/update in progress).
    Delivered,
    /// The device reported a FUMO success (200, 250-299), confirmed where a card is known.
    Succeeded,
    /// The device reported another FUMO result code.
    Failed,
    /// Cancelled before delivery.
    Cancelled,
}

impl JobState {
    /// Every state, for metrics.
    pub const ALL: [JobState; 7] = [
        Self::Skipped,
        Self::Waiting,
        Self::Pending,
        Self::Delivered,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                ServerError::internal("stored job state", format!("unknown state {s:?}"))
            })
    }

    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Skipped
        )
    }
}

/// What an operator asks for when creating a campaign.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// A label.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The package to deliver.
    pub package_id: i64,
    /// Only devices of this model (DevInfo/Mod).
    #[serde(default)]
    pub target_model: Option<String>,
    /// Only devices currently on this firmware version (DevDetail/FwV).
    #[serde(default)]
    pub target_fw: Option<String>,
    /// Only devices in this group.
    #[serde(default)]
    pub target_group: Option<String>,
    /// Cumulative wave sizes in percent, strictly increasing, ending at 100.
    #[serde(default = "default_waves")]
    pub waves: Vec<u8>,
    /// Percent of released jobs that must succeed before the next wave is released.
    #[serde(default = "default_success")]
    pub success_threshold: u8,
    /// Percent of released jobs failed at which the campaign halts.
    #[serde(default = "default_error")]
    pub error_threshold: u8,
    /// Devices without a usable SIMFOTA card: `required` (default) fails their job,
    /// `optional` delivers plain FUMO to them.
    #[serde(default)]
    pub card: CardMode,
    /// When pending jobs stop being offered (Unix ms, UTC): a job not delivered by then ends
    /// failed, reason "deadline passed".
    #[serde(default)]
    pub deadline_ms: Option<i64>,
    /// A daily maintenance window (UTC): updates are offered only inside it.
    #[serde(default)]
    pub window: Option<Window>,
    /// Percent of a wave's jobs (those not skipped) that may fail: one failure more and the
    /// campaign pauses itself, the reason recorded (`paused_reason`).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 99)]
    pub max_failure_pct: Option<u8>,
    /// Offer the package also to devices already at or above it (a deliberate reinstall, or
    /// a downgrade the operator wants the cards to judge: a card refuses a package below the
    /// sequence it runs). Off by default: such devices are skipped.
    #[serde(default)]
    pub include_up_to_date: bool,
}

/// A daily maintenance window in UTC, `"HH:MM"` each; a start after the end wraps midnight
/// (`22:00`-`04:00`). The start is inside, the end is not.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// First minute inside, `"HH:MM"` (UTC).
    pub start: String,
    /// First minute outside, `"HH:MM"` (UTC).
    pub end: String,
}

/// Minutes of the day of `"HH:MM"` (00:00 to 23:59).
fn minute_of_day(field: &str, v: &str) -> Result<i64> {
    let bad = || {
        ServerError::BadRequest(format!(
            "{field}: {v:?} is not a time HH:MM (00:00 to 23:59, UTC)"
        ))
    };
    let (h, m) = v.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Window {
    /// The window as minutes of the day, `(start, end)`; refuses malformed times and an
    /// empty window (start equal to end).
    pub fn minutes(&self) -> Result<(i64, i64)> {
        let start = minute_of_day("window.start", &self.start)?;
        let end = minute_of_day("window.end", &self.end)?;
        if start == end {
            return Err(ServerError::BadRequest(
                "window: start and end are the same minute (an empty window)".into(),
            ));
        }
        Ok((start, end))
    }

    fn from_minutes(start: i64, end: i64) -> Self {
        let t = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(60));
        Window {
            start: t(start),
            end: t(end),
        }
    }
}

/// Whether `minute` (of the UTC day) lies in the window `[start, end)`, which wraps midnight
/// when `start > end`.
pub fn in_window(minute: i64, start: i64, end: i64) -> bool {
    if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

fn default_waves() -> Vec<u8> {
    vec![100]
}
fn default_success() -> u8 {
    90
}
fn default_error() -> u8 {
    10
}

impl CampaignSpec {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty()
            || self.name.len() > 200
            || self.name.chars().any(char::is_control)
        {
            return Err(ServerError::BadRequest(
                "campaign name must be 1 to 200 bytes, no control characters".into(),
            ));
        }
        for (field, value, max) in [
            ("target_model", &self.target_model, 128),
            ("target_fw", &self.target_fw, 128),
            ("target_group", &self.target_group, 100),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.len() > max || v.chars().any(char::is_control))
            {
                return Err(ServerError::BadRequest(format!(
                    "{field}: 1 to {max} bytes, no control characters"
                )));
            }
        }
        if self.waves.is_empty() || self.waves.len() > 20 {
            return Err(ServerError::BadRequest(
                "waves: 1 to 20 cumulative percentages".into(),
            ));
        }
        let mut prev = 0u8;
        for &w in &self.waves {
            if w <= prev || w > 100 {
                return Err(ServerError::BadRequest(
                    "waves must strictly increase, each in 1..=100".into(),
                ));
            }
            prev = w;
        }
        if prev != 100 {
            return Err(ServerError::BadRequest(
                "the last wave must be 100 (everyone)".into(),
            ));
        }
        if self.success_threshold > 100 || self.error_threshold == 0 || self.error_threshold > 100 {
            return Err(ServerError::BadRequest(
                "success_threshold in 0..=100, error_threshold in 1..=100".into(),
            ));
        }
        if let Some(d) = self.deadline_ms
            && d <= now_ms()
        {
            return Err(ServerError::BadRequest(format!(
                "deadline_ms: {d} is not in the future (UTC epoch milliseconds)"
            )));
        }
        if let Some(w) = &self.window {
            w.minutes()?;
        }
        if self.max_failure_pct.is_some_and(|p| p > 99) {
            return Err(ServerError::BadRequest(
                "max_failure_pct: 0 to 99 (percent of a wave's jobs that may fail)".into(),
            ));
        }
        Ok(())
    }
}

/// For `total` devices and cumulative percentages, the wave index of each position.
/// Each wave holds at least one device when there are devices left, so a small fleet still
/// moves through every wave in order.
pub fn assign_waves(total: usize, waves: &[u8]) -> Vec<usize> {
    let mut out = Vec::with_capacity(total);
    let mut start = 0usize;
    for (i, &pct) in waves.iter().enumerate() {
        let mut end = (total * usize::from(pct)).div_ceil(100);
        if i + 1 == waves.len() {
            end = total;
        }
        let end = end.max((start + 1).min(total));
        for _ in start..end {
            out.push(i);
        }
        start = end;
    }
    out
}

/// Counts of released jobs, for the thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// All jobs.
    pub total: i64,
    /// Jobs in released waves.
    pub released: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Cancelled.
    pub cancelled: i64,
    /// Delivered, not yet ended.
    pub delivered: i64,
    /// Skipped: the device was already at or above the package (always in a released wave).
    pub skipped: i64,
}

/// What the evaluation decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change.
    Stay,
    /// Release the next wave.
    NextWave,
    /// Halt: error threshold reached.
    Halt(String),
    /// Every job ended.
    Complete,
}

/// The decision over the released jobs (pure).
pub fn evaluate(
    p: &Progress,
    success_threshold: u8,
    error_threshold: u8,
    more_waves: bool,
) -> Step {
    // Skipped jobs are neither successes nor failures: the thresholds count the others.
    let offered = p.released - p.skipped;
    if offered > 0 && p.failed * 100 >= i64::from(error_threshold) * offered {
        return Step::Halt(format!(
            "{} of {} released jobs failed (error threshold {}%)",
            p.failed, offered, error_threshold
        ));
    }
    let ended = p.succeeded + p.failed + p.cancelled + p.skipped;
    if more_waves {
        if p.succeeded * 100 >= i64::from(success_threshold) * offered {
            return Step::NextWave;
        }
        return Step::Stay;
    }
    if ended == p.total {
        return Step::Complete;
    }
    Step::Stay
}

/// A campaign as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Campaign {
    /// Id.
    pub id: i64,
    /// Label.
    pub name: String,
    /// Package.
    pub package_id: i64,
    /// Model filter.
    pub target_model: Option<String>,
    /// Firmware filter.
    pub target_fw: Option<String>,
    /// Group filter.
    pub target_group: Option<String>,
    /// Cumulative wave percentages.
    pub waves: Vec<u8>,
    /// Success threshold (percent).
    pub success_threshold: u8,
    /// Error threshold (percent).
    pub error_threshold: u8,
    /// Devices without a usable SIMFOTA card: their job fails, or they get plain FUMO.
    pub card: CardMode,
    /// State.
    pub state: CampaignState,
    /// Index of the newest released wave.
    pub current_wave: i64,
    /// Why it halted.
    pub halt_reason: Option<String>,
    /// Why it paused itself (a wave's failures over `max_failure_pct`); `None` when an
    /// operator paused it or it runs.
    pub paused_reason: Option<String>,
    /// Deadline (Unix ms, UTC): pending jobs not delivered by then fail.
    pub deadline_ms: Option<i64>,
    /// Daily maintenance window (UTC): offers only inside it.
    pub window: Option<Window>,
    /// Percent of a wave's jobs that may fail before the campaign pauses itself.
    pub max_failure_pct: Option<u8>,
    /// Whether devices already at or above the package are offered it too.
    pub include_up_to_date: bool,
    /// Jobs skipped: their device was already at or above the package.
    pub skipped: i64,
    /// Failed jobs by reason, most frequent first.
    pub failures: Vec<FailureCount>,
    /// Each wave's jobs by state.
    pub wave_progress: Vec<WaveProgress>,
    /// Counts.
    pub progress: Progress,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// Updated (Unix ms).
    pub updated_ms: i64,
}

/// Failed jobs of one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FailureCount {
    /// The reason in words (`card refused: rollback`, `deadline passed`, ...).
    pub reason: String,
    /// Jobs that failed for it.
    pub count: i64,
}

/// One wave's jobs by state (`pending` counts the jobs of a wave not yet released too,
/// `waiting` those alone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WaveProgress {
    /// The wave's index (as a job's `wave`: the first is 0).
    pub wave: i64,
    /// Jobs not yet delivered (released or not).
    pub pending: i64,
    /// Of those, jobs in a wave not yet released.
    pub waiting: i64,
    /// Delivered, no result yet.
    pub delivered: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Skipped (device already at or above the package).
    pub skipped: i64,
    /// Cancelled.
    pub cancelled: i64,
}

fn wave_from_row(r: &AnyRow) -> Result<WaveProgress> {
    let waiting = r.i64("waiting")?;
    Ok(WaveProgress {
        wave: r.i64("wave")?,
        pending: r.i64("pending")? + waiting,
        waiting,
        delivered: r.i64("delivered")?,
        succeeded: r.i64("succeeded")?,
        failed: r.i64("failed")?,
        skipped: r.i64("skipped")?,
        cancelled: r.i64("cancelled")?,
    })
}

/// Moves one job of `wave` from `from` to `to` in the campaign's wave counts (the caller's
/// transaction, beside the job change). The columns of `campaign_waves` are named as the
/// states they count.
async fn tally(
    conn: &mut AnyConnection,
    campaign: i64,
    wave: i64,
    from: JobState,
    to: JobState,
) -> Result<()> {
    let (f, t) = (from.as_str(), to.as_str());
    sqlx::query(&format!(
        "UPDATE campaign_waves SET {f} = {f} - 1, {t} = {t} + 1 \
         WHERE campaign_id = $1 AND wave = $2"
    ))
    .bind(campaign)
    .bind(wave)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Counts the campaign's waves again from its jobs (after a change to many jobs at once:
/// creation, cancel, retry, a deadline, a deleted device).
async fn rebuild_waves(conn: &mut AnyConnection, campaign: i64) -> Result<()> {
    sqlx::query("DELETE FROM campaign_waves WHERE campaign_id = $1")
        .bind(campaign)
        .execute(&mut *conn)
        .await?;
    let sums: Vec<String> = JobState::ALL
        .iter()
        .map(|s| format!("SUM(CASE WHEN state = '{0}' THEN 1 ELSE 0 END)", s.as_str()))
        .collect();
    let cols: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
    sqlx::query(&format!(
        "INSERT INTO campaign_waves (campaign_id, wave, {}) SELECT campaign_id, wave, {} \
         FROM jobs WHERE campaign_id = $1 GROUP BY campaign_id, wave",
        cols.join(", "),
        sums.join(", ")
    ))
    .bind(campaign)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Counts the campaign's failures by reason again from its jobs.
async fn rebuild_failures(conn: &mut AnyConnection, campaign: i64) -> Result<()> {
    sqlx::query("DELETE FROM campaign_failures WHERE campaign_id = $1")
        .bind(campaign)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO campaign_failures (campaign_id, reason, n) \
         SELECT campaign_id, COALESCE(reason, 'unknown'), COUNT(*) FROM jobs \
         WHERE campaign_id = $1 AND state = 'failed' \
         GROUP BY campaign_id, COALESCE(reason, 'unknown')",
    )
    .bind(campaign)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One more failed job of `campaign` for `reason`; when `judged` (a failure of the device or
/// its update, not an operator's act or the deadline), a wave over the campaign's
/// `max_failure_pct` pauses it.
async fn count_failure(
    conn: &mut AnyConnection,
    campaign: i64,
    wave: i64,
    reason: &str,
    judged: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO campaign_failures (campaign_id, reason, n) VALUES ($1, $2, 1) \
         ON CONFLICT (campaign_id, reason) DO UPDATE SET n = campaign_failures.n + 1",
    )
    .bind(campaign)
    .bind(reason.to_owned())
    .execute(&mut *conn)
    .await?;
    if judged {
        pause_on_wave_failures(conn, campaign, wave).await?;
    }
    Ok(())
}

/// Pauses a running campaign whose wave `wave` has more failures than its `max_failure_pct`
/// allows, recording why (`paused_reason`).
async fn pause_on_wave_failures(conn: &mut AnyConnection, campaign: i64, wave: i64) -> Result<()> {
    let Some(row) = sqlx::query(
        "SELECT c.max_failure_pct, w.failed, w.skipped, w.waiting + w.pending + w.delivered + \
         w.succeeded + w.failed + w.skipped + w.cancelled AS total FROM campaigns c \
         JOIN campaign_waves w ON w.campaign_id = c.id AND w.wave = $2 \
         WHERE c.id = $1 AND c.state = 'running' AND c.max_failure_pct IS NOT NULL",
    )
    .bind(campaign)
    .bind(wave)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(());
    };
    let limit = row.i64("max_failure_pct")?;
    let failed = row.i64("failed")?;
    let offered = row.i64("total")? - row.i64("skipped")?;
    if failed * 100 <= limit * offered {
        return Ok(());
    }
    let reason = format!(
        "wave {wave}: {failed} of {offered} jobs failed, over the {limit}% allowed (max_failure_pct)"
    );
    let paused = sqlx::query(
        "UPDATE campaigns SET state = 'paused', paused_reason = $1, updated_ms = $2 \
         WHERE id = $3 AND state = 'running'",
    )
    .bind(reason.clone())
    .bind(now_ms())
    .bind(campaign)
    .execute(&mut *conn)
    .await?;
    if paused.rows_affected() == 1 {
        tracing::warn!(campaign, %reason, "campaign paused itself");
    }
    Ok(())
}

/// Fills in the failure breakdown and the wave counts of `campaigns` (one query each for
/// all of them).
async fn with_breakdown(conn: &mut AnyConnection, campaigns: &mut [Campaign]) -> Result<()> {
    if campaigns.is_empty() {
        return Ok(());
    }
    let ids = crate::db::values_list(1, campaigns.len());
    let sql = format!(
        "SELECT * FROM campaign_waves WHERE campaign_id IN {ids} ORDER BY campaign_id, wave"
    );
    let mut q = sqlx::query(&sql);
    for c in campaigns.iter() {
        q = q.bind(c.id);
    }
    for r in q.fetch_all(&mut *conn).await? {
        let id = r.i64("campaign_id")?;
        if let Some(c) = campaigns.iter_mut().find(|c| c.id == id) {
            c.wave_progress.push(wave_from_row(&r)?);
        }
    }
    let sql = format!(
        "SELECT campaign_id, reason, n FROM campaign_failures WHERE campaign_id IN {ids} \
         AND n > 0 ORDER BY campaign_id, n DESC, reason"
    );
    let mut q = sqlx::query(&sql);
    for c in campaigns.iter() {
        q = q.bind(c.id);
    }
    for r in q.fetch_all(&mut *conn).await? {
        let id = r.i64("campaign_id")?;
        if let Some(c) = campaigns.iter_mut().find(|c| c.id == id) {
            c.failures.push(FailureCount {
                reason: r.text("reason")?,
                count: r.i64("n")?,
            });
        }
    }
    Ok(())
}

/// A boolean SQL expression's value: a boolean in PostgreSQL, an integer in SQLite.
fn flag(r: &AnyRow, col: &str) -> Result<bool> {
    match r.try_get::<bool, _>(col) {
        Ok(b) => Ok(b),
        Err(_) => Ok(r.i64(col)? != 0),
    }
}

fn pct(v: i64) -> u8 {
    u8::try_from(v.clamp(0, 100)).unwrap_or(100)
}

fn campaign_from_row(r: &AnyRow) -> Result<Campaign> {
    let id = r.i64("id")?;
    let waves: Vec<u8> = serde_json::from_str(&r.text("waves")?).map_err(|e| {
        ServerError::internal("stored campaign waves", format!("campaign {id}: {e}"))
    })?;
    let current_wave = r.i64("current_wave")?;
    Ok(Campaign {
        id,
        name: r.text("name")?,
        package_id: r.i64("package_id")?,
        target_model: r.opt_text("target_model")?,
        target_fw: r.opt_text("target_fw")?,
        target_group: r.opt_text("target_group")?,
        waves,
        success_threshold: pct(r.i64("success_threshold")?),
        error_threshold: pct(r.i64("error_threshold")?),
        card: CardMode::parse(&r.text("card")?)?,
        state: CampaignState::parse(&r.text("state")?)?,
        current_wave,
        halt_reason: r.opt_text("halt_reason")?,
        paused_reason: r.opt_text("paused_reason")?,
        deadline_ms: r.opt_i64("deadline_ms")?,
        window: match (r.opt_i64("window_start")?, r.opt_i64("window_end")?) {
            (Some(start), Some(end)) => Some(Window::from_minutes(start, end)),
            _ => None,
        },
        max_failure_pct: r.opt_i64("max_failure_pct")?.map(pct),
        include_up_to_date: flag(r, "include_up_to_date")?,
        skipped: r.i64("jobs_skipped")?,
        failures: Vec::new(),
        wave_progress: Vec::new(),
        progress: Progress {
            total: r.i64("jobs_total")?,
            released: r.i64("jobs_released")?,
            succeeded: r.i64("jobs_succeeded")?,
            failed: r.i64("jobs_failed")?,
            cancelled: r.i64("jobs_cancelled")?,
            delivered: r.i64("jobs_delivered")?,
            skipped: r.i64("jobs_skipped")?,
        },
        created_ms: r.i64("created_ms")?,
        updated_ms: r.i64("updated_ms")?,
    })
}

/// Counts the campaign's jobs from scratch. The server reads the counters kept with the
/// campaign instead (changed with each job, [`Progress`]); this recount is what they must
/// always equal, for tests and checks.
pub async fn recount(
    conn: &mut AnyConnection,
    campaign_id: i64,
    current_wave: i64,
) -> Result<Progress> {
    Ok(count_jobs(conn, campaign_id, current_wave).await?.recount)
}

/// A campaign's counters next to a recount of its jobs: what an operator (or `simfota fleet`)
/// reads to check that the counters the engine decides on are true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Audit {
    /// The counters kept with the campaign.
    pub counters: Progress,
    /// The same counts, recounted from the jobs.
    pub recount: Progress,
    /// Jobs to deliver in their devices' next session (released, not yet delivered).
    pub pending: i64,
    /// Jobs in waves not yet released.
    pub waiting: i64,
    /// The counters equal the recount.
    pub consistent: bool,
}

/// Reads campaign `id` and recounts its jobs (one pass over them: a million-job campaign
/// takes a fraction of a second).
pub async fn audit(conn: &mut AnyConnection, id: i64) -> Result<Audit> {
    let c = get(&mut *conn, id).await?;
    let mut a = count_jobs(conn, id, c.current_wave).await?;
    a.counters = c.progress;
    a.consistent = a.counters == a.recount;
    Ok(a)
}

/// Counts campaign `campaign_id`'s jobs by state (the `counters` field left at zero).
async fn count_jobs(
    conn: &mut AnyConnection,
    campaign_id: i64,
    current_wave: i64,
) -> Result<Audit> {
    let rows = sqlx::query(
        "SELECT state, wave <= $2 AS released, COUNT(*) AS n FROM jobs WHERE campaign_id = $1 \
         GROUP BY state, wave <= $2",
    )
    .bind(campaign_id)
    .bind(current_wave)
    .fetch_all(&mut *conn)
    .await?;
    let mut a = Audit {
        counters: Progress::default(),
        recount: Progress::default(),
        pending: 0,
        waiting: 0,
        consistent: false,
    };
    let p = &mut a.recount;
    for r in rows {
        let n = r.i64("n")?;
        // `wave <= $2` is a boolean in PostgreSQL and an integer in SQLite.
        let released = match r.try_get::<bool, _>("released") {
            Ok(b) => b,
            Err(_) => r.i64("released")? != 0,
        };
        p.total += n;
        if released {
            p.released += n;
        }
        match JobState::parse(&r.text("state")?)? {
            JobState::Succeeded => p.succeeded += n,
            JobState::Failed => p.failed += n,
            JobState::Cancelled => p.cancelled += n,
            JobState::Skipped => p.skipped += n,
            JobState::Delivered => p.delivered += n,
            JobState::Pending => a.pending += n,
            JobState::Waiting => a.waiting += n,
        }
    }
    Ok(a)
}

/// Creates a campaign and its jobs (first wave released), then evaluates it once.
pub async fn create(db: &Db, spec: &CampaignSpec) -> Result<Campaign> {
    spec.validate()?;
    let Some(package) =
        sqlx::query("SELECT version, sequence FROM packages WHERE id = $1 AND deleted_ms IS NULL")
            .bind(spec.package_id)
            .fetch_optional(db.pool())
            .await?
    else {
        return Err(ServerError::NotFound(format!(
            "package {}",
            spec.package_id
        )));
    };
    let (version, sequence) = (package.text("version")?, package.i64("sequence")?);
    if let Some(g) = &spec.target_group {
        let found = sqlx::query("SELECT id FROM device_groups WHERE name = $1")
            .bind(g.clone())
            .fetch_optional(db.pool())
            .await?;
        if found.is_none() {
            return Err(ServerError::NotFound(format!("group {g}")));
        }
    }
    let now = now_ms();
    let waves_json =
        serde_json::to_string(&spec.waves).map_err(|e| ServerError::BadRequest(e.to_string()))?;
    let window = spec.window.as_ref().map(Window::minutes).transpose()?;
    let mut tx = db.begin_write().await?;
    // The package's row, locked until the campaign is stored (PostgreSQL: a row lock; SQLite
    // writes one transaction at a time anyway): a deletion of the package waits for this
    // transaction and then sees the campaign (`packages::delete` locks the row first too),
    // and one that came first makes this find the package gone.
    let still_there = sqlx::query(
        "UPDATE packages SET created_ms = created_ms WHERE id = $1 AND deleted_ms IS NULL",
    )
    .bind(spec.package_id)
    .execute(&mut *tx)
    .await?;
    if still_there.rows_affected() != 1 {
        return Err(ServerError::NotFound(format!(
            "package {}",
            spec.package_id
        )));
    }
    let row = sqlx::query(
        "INSERT INTO campaigns (name, package_id, target_model, target_fw, target_group, waves, \
         success_threshold, error_threshold, state, current_wave, created_ms, updated_ms, card, \
         deadline_ms, window_start, window_end, max_failure_pct, include_up_to_date) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', 0, $9, $9, $10, $11, $12, $13, $14, \
         $15) \
         RETURNING id",
    )
    .bind(spec.name.clone())
    .bind(spec.package_id)
    .bind(spec.target_model.clone())
    .bind(spec.target_fw.clone())
    .bind(spec.target_group.clone())
    .bind(waves_json)
    .bind(i64::from(spec.success_threshold))
    .bind(i64::from(spec.error_threshold))
    .bind(now)
    .bind(spec.card.as_str())
    .bind(spec.deadline_ms)
    .bind(window.map(|w| w.0))
    .bind(window.map(|w| w.1))
    .bind(spec.max_failure_pct.map(i64::from))
    .bind(i64::from(spec.include_up_to_date))
    .fetch_one(&mut *tx)
    .await?;
    let id = row.i64("id")?;
    // NULL filters match everything; the group filter is a membership test. `at_sequence`:
    // the device already took a package of this sequence number or above (its card would
    // refuse this one as a rollback).
    let devices = sqlx::query(
        "SELECT d.id, d.imei, d.fw_version, EXISTS (SELECT 1 FROM jobs j \
              JOIN campaigns c ON c.id = j.campaign_id JOIN packages p ON p.id = c.package_id \
              WHERE j.device_id = d.id AND j.state = 'succeeded' AND p.sequence >= $4) \
              AS at_sequence \
         FROM devices d WHERE ($1 IS NULL OR d.model = $1) \
         AND ($2 IS NULL OR d.fw_version = $2) \
         AND ($3 IS NULL OR EXISTS (SELECT 1 FROM group_members m JOIN device_groups g \
              ON g.id = m.group_id WHERE g.name = $3 AND m.device_id = d.id)) \
         ORDER BY d.id",
    )
    .bind(spec.target_model.clone())
    .bind(spec.target_fw.clone())
    .bind(spec.target_group.clone())
    .bind(sequence)
    .fetch_all(&mut *tx)
    .await?;
    // Devices already at or above the package are skipped (in the first wave, released at
    // once); the waves split the others.
    let mut skipped = Vec::new();
    let mut offered = Vec::new();
    for d in &devices {
        let device = (d.i64("id")?, d.text("imei")?);
        let up_to_date = already_at(
            d.opt_text("fw_version")?.as_deref(),
            flag(d, "at_sequence")?,
            &version,
            sequence,
        );
        match up_to_date.filter(|_| !spec.include_up_to_date) {
            Some(why) => skipped.push((device, why)),
            None => offered.push(device),
        }
    }
    let waves = assign_waves(offered.len(), &spec.waves);
    let mut jobs: Vec<NewJob> = offered
        .into_iter()
        .zip(waves)
        .map(|((device, imei), w)| {
            let wave = i64::try_from(w).unwrap_or(i64::MAX);
            NewJob {
                device,
                imei,
                wave,
                state: if wave == 0 {
                    JobState::Pending
                } else {
                    JobState::Waiting
                },
                reason: None,
            }
        })
        .collect();
    let skipped_n = skipped.len();
    jobs.extend(skipped.into_iter().map(|((device, imei), why)| NewJob {
        device,
        imei,
        wave: 0,
        state: JobState::Skipped,
        reason: Some(why),
    }));
    for chunk in jobs.chunks(JOB_ROWS_PER_STATEMENT) {
        insert_jobs(&mut tx, id, chunk, now).await?;
    }
    let first_wave = jobs.iter().filter(|j| j.wave == 0).count();
    sqlx::query(
        "UPDATE campaigns SET jobs_total = $1, jobs_released = $2, jobs_skipped = $3 WHERE id = $4",
    )
    .bind(i64::try_from(jobs.len()).unwrap_or(i64::MAX))
    .bind(i64::try_from(first_wave).unwrap_or(i64::MAX))
    .bind(i64::try_from(skipped_n).unwrap_or(i64::MAX))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    rebuild_waves(&mut tx, id).await?;
    tx.commit().await?;
    advance(&mut *db.conn().await?, id).await?;
    get(&mut *db.conn().await?, id).await
}

/// Job rows per INSERT statement when a campaign is created (8 parameters each: well under
/// both engines' limits on bound parameters).
const JOB_ROWS_PER_STATEMENT: usize = 500;

/// A job to create.
struct NewJob {
    device: i64,
    imei: String,
    wave: i64,
    state: JobState,
    reason: Option<String>,
}

/// Inserts the jobs of campaign `id`.
async fn insert_jobs(conn: &mut AnyConnection, id: i64, jobs: &[NewJob], now: i64) -> Result<()> {
    const COLS: usize = 8;
    let rows: Vec<String> = (0..jobs.len())
        .map(|r| {
            let p: Vec<String> = (1..=COLS).map(|c| format!("${}", r * COLS + c)).collect();
            // created_ms and updated_ms are the same parameter.
            format!("({}, ${})", p.join(", "), r * COLS + COLS)
        })
        .collect();
    let sql = format!(
        "INSERT INTO jobs (campaign_id, device_id, device_imei, wave, state, reason, correlator, \
         created_ms, updated_ms) VALUES {}",
        rows.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for j in jobs {
        q = q
            .bind(id)
            .bind(j.device)
            .bind(j.imei.clone())
            .bind(j.wave)
            .bind(j.state.as_str())
            .bind(j.reason.clone())
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(now);
    }
    q.execute(conn).await?;
    Ok(())
}

/// Why a device is not offered a package of `version` and `sequence`, if it is already at or
/// above it: its firmware version (DevDetail/FwV) is that version or a later one, or it took
/// a package of that sequence number or above (`at_sequence`; its card would refuse this one
/// as a rollback).
pub fn already_at(
    fw_version: Option<&str>,
    at_sequence: bool,
    version: &str,
    sequence: i64,
) -> Option<String> {
    if let Some(fw) = fw_version
        && version_at_least(fw, version)
    {
        return Some(format!("already at version {fw} (package {version})"));
    }
    at_sequence.then(|| format!("already took sequence {sequence} or above"))
}

/// Whether firmware version `have` is `want` or later: the same text, or both dotted numbers
/// (`2.10` > `2.9`, an optional leading `v`) with `have` the greater. Versions that are not
/// dotted numbers compare only for equality.
pub fn version_at_least(have: &str, want: &str) -> bool {
    if have == want {
        return true;
    }
    fn parts(v: &str) -> Option<Vec<u64>> {
        let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
        v.split('.').map(|p| p.parse::<u64>().ok()).collect()
    }
    match (parts(have), parts(want)) {
        (Some(mut h), Some(mut w)) => {
            // Trailing zeros do not make a version later: 2.0 is 2.
            let len = h.len().max(w.len());
            h.resize(len, 0);
            w.resize(len, 0);
            h >= w
        }
        _ => false,
    }
}

/// Reads a campaign's row (without its breakdown: what the engine decides on).
async fn get_row(conn: &mut AnyConnection, id: i64) -> Result<Campaign> {
    let row = sqlx::query("SELECT * FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("campaign {id}")))?;
    campaign_from_row(&row)
}

/// Reads a campaign with its failure breakdown and wave counts.
pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Campaign> {
    let mut c = [get_row(&mut *conn, id).await?];
    with_breakdown(conn, &mut c).await?;
    let [c] = c;
    Ok(c)
}

/// The orders of the campaign list besides `id`.
pub static CAMPAIGN_SORTS: [crate::listing::SortField; 2] = [
    crate::listing::SortField {
        name: "name",
        expr: "c.name",
        text: true,
    },
    crate::listing::SortField {
        name: "updated",
        expr: "c.updated_ms",
        text: false,
    },
];

/// A page of campaigns, of one state when asked, each with its breakdown.
pub async fn page(
    db: &Db,
    keys: &crate::listing::Keyset,
    state: Option<CampaignState>,
) -> Result<crate::listing::Page<Campaign>> {
    let mut f = crate::listing::Filters::default();
    f.opt(
        "c.state = ?",
        state.map(|s| crate::listing::Arg::Text(s.as_str().to_owned())),
    );
    let mut conn = db.conn().await?;
    let rows = f
        .fetch(&mut conn, keys, "SELECT c.* FROM campaigns c", "c.id")
        .await?;
    let mut page = keys.page(rows, campaign_from_row)?;
    with_breakdown(&mut conn, &mut page.items).await?;
    Ok(page)
}

/// Lists campaigns, newest first.
pub async fn list(db: &Db) -> Result<Vec<Campaign>> {
    let mut conn = db.conn().await?;
    let rows = sqlx::query("SELECT * FROM campaigns ORDER BY id DESC")
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(campaign_from_row(r)?);
    }
    with_breakdown(&mut conn, &mut out).await?;
    Ok(out)
}

/// Operator actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Running -> paused.
    Pause,
    /// Paused or halted -> running.
    Resume,
    /// Any but completed/cancelled -> cancelled; undelivered jobs cancelled.
    Cancel,
}

/// Applies an operator action (compare-and-set on the state).
pub async fn act(db: &Db, id: i64, action: Action) -> Result<Campaign> {
    let current = get_row(&mut *db.conn().await?, id).await?;
    let (from, to): (&[CampaignState], CampaignState) = match action {
        Action::Pause => (&[CampaignState::Running], CampaignState::Paused),
        Action::Resume => (
            &[CampaignState::Paused, CampaignState::Halted],
            CampaignState::Running,
        ),
        Action::Cancel => (
            &[
                CampaignState::Running,
                CampaignState::Paused,
                CampaignState::Halted,
            ],
            CampaignState::Cancelled,
        ),
    };
    if !from.contains(&current.state) {
        return Err(ServerError::Conflict(format!(
            "campaign {id} is {}: cannot {}",
            current.state.as_str(),
            match action {
                Action::Pause => "pause",
                Action::Resume => "resume",
                Action::Cancel => "cancel",
            }
        )));
    }
    let mut tx = db.pool().begin().await?;
    let done = sqlx::query(
        "UPDATE campaigns SET state = $1, halt_reason = NULL, paused_reason = NULL, \
         updated_ms = $2 WHERE id = $3 AND state = $4",
    )
    .bind(to.as_str())
    .bind(now_ms())
    .bind(id)
    .bind(current.state.as_str())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(ServerError::Conflict(format!(
            "campaign {id} changed meanwhile; retry"
        )));
    }
    if action == Action::Cancel {
        let cancelled = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', updated_ms = $1 WHERE campaign_id = $2 \
             AND state IN ('waiting', 'pending')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE campaigns SET jobs_cancelled = jobs_cancelled + $1 WHERE id = $2")
            .bind(i64::try_from(cancelled).unwrap_or(i64::MAX))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        rebuild_waves(&mut tx, id).await?;
    }
    tx.commit().await?;
    if action == Action::Resume {
        advance(&mut *db.conn().await?, id).await?;
    }
    get(&mut *db.conn().await?, id).await
}

/// Re-evaluates a running campaign after a change, releasing waves (possibly several, when a
/// wave is already fully decided), halting or completing it. Answers the wave the campaign was
/// at before the first wave it released, `None` when it released none (whose devices to
/// notify: [`crate::notify::released_since`]).
pub async fn advance(conn: &mut AnyConnection, id: i64) -> Result<Option<i64>> {
    advance_from(conn, id, None).await
}

/// [`advance`], starting from the campaign's row as `read` holds it when the caller's last
/// statement returned it (saves reading it again).
async fn advance_from(
    conn: &mut AnyConnection,
    id: i64,
    mut read: Option<Campaign>,
) -> Result<Option<i64>> {
    let mut released_after = None;
    // Bounded: at most one step per wave, plus the final one.
    for _ in 0..32 {
        let c = match read.take() {
            Some(c) => c,
            None => get_row(&mut *conn, id).await?,
        };
        if c.state != CampaignState::Running {
            return Ok(released_after);
        }
        let more = usize::try_from(c.current_wave + 1).unwrap_or(usize::MAX) < c.waves.len();
        let now = now_ms();
        match evaluate(&c.progress, c.success_threshold, c.error_threshold, more) {
            Step::Stay => return Ok(released_after),
            Step::Halt(reason) => {
                tracing::warn!(campaign = id, %reason, "campaign halted");
                sqlx::query(
                    "UPDATE campaigns SET state = 'halted', halt_reason = $1, updated_ms = $2 \
                     WHERE id = $3 AND state = 'running'",
                )
                .bind(reason)
                .bind(now)
                .bind(id)
                .execute(&mut *conn)
                .await?;
                return Ok(released_after);
            }
            Step::Complete => {
                sqlx::query(
                    "UPDATE campaigns SET state = 'completed', updated_ms = $1 \
                     WHERE id = $2 AND state = 'running'",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *conn)
                .await?;
                return Ok(released_after);
            }
            Step::NextWave => {
                let next = c.current_wave + 1;
                let mut tx = conn.begin().await?;
                let moved = sqlx::query(
                    "UPDATE campaigns SET current_wave = $1, updated_ms = $2 \
                     WHERE id = $3 AND current_wave = $4 AND state = 'running'",
                )
                .bind(next)
                .bind(now)
                .bind(id)
                .bind(c.current_wave)
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() == 1 {
                    sqlx::query(
                        "UPDATE jobs SET state = 'pending', updated_ms = $1, released_ms = $1 \
                         WHERE campaign_id = $2 AND wave = $3 AND state = 'waiting'",
                    )
                    .bind(now)
                    .bind(id)
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE campaign_waves SET pending = pending + waiting, waiting = 0 \
                         WHERE campaign_id = $1 AND wave = $2",
                    )
                    .bind(id)
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
                    // Released: every job of the wave, whatever its state.
                    sqlx::query(
                        "UPDATE campaigns SET jobs_released = jobs_released + \
                         (SELECT COUNT(*) FROM jobs WHERE campaign_id = $1 AND wave = $2) \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
                    released_after.get_or_insert(c.current_wave);
                    tracing::info!(campaign = id, wave = next, "next wave released");
                }
                tx.commit().await?;
            }
        }
    }
    Ok(released_after)
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// Id.
    pub id: i64,
    /// Campaign.
    pub campaign_id: i64,
    /// Device (database id).
    pub device_id: i64,
    /// Device IMEI.
    pub imei: String,
    /// Wave index.
    pub wave: i64,
    /// State.
    pub state: JobState,
    /// Last FUMO state the device reported (FUMO §6: 10 idle ... 100 update successful).
    pub fumo_state: Option<i64>,
    /// FUMO result code from the 1226 alert.
    pub result_code: Option<i64>,
    /// The Correlator of the Exec.
    pub correlator: String,
    /// Update id (the token's `cti`), hex.
    pub update_id: Option<String>,
    /// Whether the card receipt verified (`verified`, `invalid: ...`, `absent`).
    pub receipt_status: Option<String>,
    /// Why it failed or was skipped, in words (what the campaign's `failures` count).
    pub reason: Option<String>,
    /// A note (why it failed, why it was offered again, ...).
    pub detail: Option<String>,
    /// How many times it was delivered (more than once when its device lost it).
    pub deliveries: i64,
    /// Updated (Unix ms).
    pub updated_ms: i64,
}

fn job_from_row(r: &AnyRow) -> Result<Job> {
    Ok(Job {
        id: r.i64("id")?,
        campaign_id: r.i64("campaign_id")?,
        device_id: r.i64("device_id")?,
        imei: r.text("device_imei")?,
        wave: r.i64("wave")?,
        state: JobState::parse(&r.text("state")?)?,
        fumo_state: r.opt_i64("fumo_state")?,
        result_code: r.opt_i64("result_code")?,
        correlator: r.text("correlator")?,
        update_id: r.opt_bytes("update_id")?.map(hex::encode),
        receipt_status: r.opt_text("receipt_status")?,
        reason: r.opt_text("reason")?,
        detail: r.opt_text("detail")?,
        deliveries: r.i64("deliveries")?,
        updated_ms: r.i64("updated_ms")?,
    })
}

/// Lists jobs, optionally of one campaign (newest 1000 when across campaigns).
pub async fn jobs(db: &Db, campaign_id: Option<i64>) -> Result<Vec<Job>> {
    let rows = match campaign_id {
        Some(c) => {
            sqlx::query(
                "SELECT j.* FROM jobs j \
                 WHERE j.campaign_id = $1 ORDER BY j.id",
            )
            .bind(c)
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query(
                "SELECT j.* FROM jobs j \
                 ORDER BY j.id DESC LIMIT 1000",
            )
            .fetch_all(db.pool())
            .await?
        }
    };
    rows.iter().map(job_from_row).collect()
}

/// The orders of the job list besides `id`.
pub static JOB_SORTS: [crate::listing::SortField; 1] = [crate::listing::SortField {
    name: "updated",
    expr: "j.updated_ms",
    text: false,
}];

/// What `GET /jobs` filters on (every one optional).
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    /// Jobs of this campaign.
    pub campaign: Option<i64>,
    /// Jobs of the device with this IMEI (kept after the device is deleted).
    pub device: Option<String>,
    /// Jobs in this state.
    pub state: Option<JobState>,
    /// Jobs that failed or were skipped for this reason (as `failures` words it).
    pub reason: Option<String>,
}

/// A page of jobs.
pub async fn page_jobs(
    db: &Db,
    keys: &crate::listing::Keyset,
    f: &JobFilter,
) -> Result<crate::listing::Page<Job>> {
    use crate::listing::Arg;
    let mut filters = crate::listing::Filters::default();
    filters
        .opt("j.campaign_id = ?", f.campaign.map(Arg::Int))
        .opt("j.device_imei = ?", f.device.clone().map(Arg::Text))
        .opt(
            "j.state = ?",
            f.state.map(|s| Arg::Text(s.as_str().to_owned())),
        )
        .opt("j.reason = ?", f.reason.clone().map(Arg::Text));
    let rows = filters
        .fetch(
            &mut *db.conn().await?,
            keys,
            "SELECT j.* FROM jobs j",
            "j.id",
        )
        .await?;
    keys.page(rows, job_from_row)
}

/// Most jobs [`device_jobs`] returns for one device: a device gets one job per campaign that
/// targeted it, so this bounds the answer without hiding anything in practice.
pub const DEVICE_JOBS_MAX: i64 = 500;

/// A device's jobs, newest first, at most [`DEVICE_JOBS_MAX`] (selected in SQL by device, so
/// other devices' jobs never push this device's out of the answer).
pub async fn device_jobs(db: &Db, device_id: i64) -> Result<Vec<Job>> {
    let rows = sqlx::query(
        "SELECT j.* FROM jobs j \
         WHERE j.device_id = $1 ORDER BY j.id DESC LIMIT $2",
    )
    .bind(device_id)
    .bind(DEVICE_JOBS_MAX)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(job_from_row).collect()
}

/// Reads a job.
pub async fn job(conn: &mut AnyConnection, id: i64) -> Result<Job> {
    let row = sqlx::query("SELECT j.* FROM jobs j WHERE j.id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("job {id}")))?;
    job_from_row(&row)
}

/// The job to deliver to a device now: its oldest pending job of a running campaign.
pub async fn next_job_for_device(conn: &mut AnyConnection, device_id: i64) -> Result<Option<Job>> {
    let row = sqlx::query(
        "SELECT j.* FROM jobs j \
         JOIN campaigns c ON c.id = j.campaign_id \
         WHERE j.device_id = $1 AND j.state = 'pending' AND c.state = 'running' \
         ORDER BY j.id LIMIT 1",
    )
    .bind(device_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(job_from_row).transpose()
}

/// The job a device's session deals with, as an SQL subquery answering its id for the device
/// `d.id` of the enclosing query: a delivered one awaiting its result comes first (it may have
/// to be offered again), else its oldest pending job of a running campaign. The DM flow reads
/// it with the device's account (`dm::account::lookup`).
pub const DEVICE_JOB_ID_SQL: &str = "SELECT j2.id FROM jobs j2 \
     JOIN campaigns c2 ON c2.id = j2.campaign_id WHERE j2.device_id = d.id \
     AND (j2.state = 'delivered' OR (j2.state = 'pending' AND c2.state = 'running')) \
     ORDER BY CASE WHEN j2.state = 'delivered' THEN 0 ELSE 1 END, j2.id LIMIT 1";

/// Most deliveries of one job: a device that keeps losing its update (it reports FUMO state
/// idle with no result, session after session) fails the job rather than take it forever.
pub const MAX_DELIVERIES: i64 = 3;

/// What became of a delivered job its device no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reoffer {
    /// Pending again: the device's session delivers it anew.
    Pending,
    /// Failed: it was delivered [`MAX_DELIVERIES`] times.
    Failed,
    /// Nothing changed: the job is no longer delivered (its result arrived meanwhile).
    Unchanged,
}

/// A delivered job whose device holds no update (FUMO state idle, no result reported): offered
/// again, or failed once it was delivered [`MAX_DELIVERIES`] times; `why` is recorded as the
/// job's detail. The campaign's counters move in the same transaction.
pub async fn reoffer(conn: &mut AnyConnection, job_id: i64, why: &str) -> Result<Reoffer> {
    let Some(row) = sqlx::query(
        "SELECT campaign_id, wave, deliveries FROM jobs WHERE id = $1 AND state = 'delivered'",
    )
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(Reoffer::Unchanged);
    };
    let campaign_id = row.i64("campaign_id")?;
    let wave = row.i64("wave")?;
    let deliveries = row.i64("deliveries")?;
    let (state, outcome, detail, counter) = if deliveries >= MAX_DELIVERIES {
        (
            JobState::Failed,
            Reoffer::Failed,
            format!("{why}; failed after {deliveries} deliveries"),
            ", jobs_failed = jobs_failed + 1",
        )
    } else {
        (
            JobState::Pending,
            Reoffer::Pending,
            format!("{why}; offered again"),
            "",
        )
    };
    let reason = (outcome == Reoffer::Failed).then_some(REASON_LOST);
    let done = sqlx::query(
        "UPDATE jobs SET state = $1, detail = $2, updated_ms = $3, reason = $5 \
         WHERE id = $4 AND state = 'delivered'",
    )
    .bind(state.as_str())
    .bind(detail)
    .bind(now_ms())
    .bind(job_id)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Reoffer::Unchanged);
    }
    sqlx::query(&format!(
        "UPDATE campaigns SET jobs_delivered = jobs_delivered - 1{counter} WHERE id = $1"
    ))
    .bind(campaign_id)
    .execute(&mut *conn)
    .await?;
    tally(&mut *conn, campaign_id, wave, JobState::Delivered, state).await?;
    if let Some(reason) = reason {
        count_failure(&mut *conn, campaign_id, wave, reason, true).await?;
        advance(&mut *conn, campaign_id).await?;
    }
    Ok(outcome)
}

/// Fails a pending job the device cannot take (`why` recorded in its `detail`), its campaign's
/// counters moved in the caller's transaction and the campaign re-evaluated. Answers the
/// campaign and, when it released a wave, the wave it was at (whose devices to notify);
/// `None` when the job is no longer pending (nothing changed).
pub async fn fail_pending(
    conn: &mut AnyConnection,
    job_id: i64,
    why: &str,
) -> Result<Option<(i64, Option<i64>)>> {
    end_pending(conn, job_id, JobState::Failed, REASON_NO_CARD, why, true).await
}

/// Ends pending job `job_id` as `state` (failed or skipped) for `reason` (words, counted in
/// the campaign's breakdown when failed), `detail` recorded; counters moved and the campaign
/// re-evaluated in the caller's transaction. `judged`: a failure that counts towards the
/// wave's `max_failure_pct`. Answers as [`fail_pending`].
async fn end_pending(
    conn: &mut AnyConnection,
    job_id: i64,
    state: JobState,
    reason: &str,
    detail: &str,
    judged: bool,
) -> Result<Option<(i64, Option<i64>)>> {
    let Some(row) = sqlx::query(
        "UPDATE jobs SET state = $1, reason = $2, detail = $3, updated_ms = $4 \
         WHERE id = $5 AND state = 'pending' RETURNING campaign_id, wave",
    )
    .bind(state.as_str())
    .bind(reason.to_owned())
    .bind(detail.to_owned())
    .bind(now_ms())
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let (campaign, wave) = (row.i64("campaign_id")?, row.i64("wave")?);
    let counter = match state {
        JobState::Skipped => "jobs_skipped",
        _ => "jobs_failed",
    };
    sqlx::query(&format!(
        "UPDATE campaigns SET {counter} = {counter} + 1 WHERE id = $1"
    ))
    .bind(campaign)
    .execute(&mut *conn)
    .await?;
    tally(&mut *conn, campaign, wave, JobState::Pending, state).await?;
    if state == JobState::Failed {
        count_failure(&mut *conn, campaign, wave, reason, judged).await?;
    }
    Ok(Some((campaign, advance(&mut *conn, campaign).await?)))
}

/// Most delivered jobs one sweep of [`time_out_deliveries`] fails (the next sweep takes the
/// rest).
const TIMEOUTS_PER_SWEEP: i64 = 1000;

/// Fails the delivered jobs that have had no result for `timeout` (the device took the update
/// and never reported, or is gone), each in its own transaction with its campaign's counters
/// and the campaign re-evaluated. Answers the campaigns that released a wave, with the wave
/// each was at before (whose devices to notify).
pub async fn time_out_deliveries(
    db: &crate::db::Db,
    timeout: std::time::Duration,
) -> Result<Vec<(i64, i64)>> {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms().saturating_sub(timeout_ms);
    let rows = sqlx::query(
        "SELECT id, campaign_id, wave FROM jobs WHERE state = 'delivered' AND updated_ms < $1 \
         ORDER BY id LIMIT $2",
    )
    .bind(cutoff)
    .bind(TIMEOUTS_PER_SWEEP)
    .fetch_all(db.pool())
    .await?;
    let why = format!(
        "no result within {} of its delivery: timed out",
        human_duration(timeout)
    );
    let mut released = Vec::new();
    for r in rows {
        let (job, campaign, wave) = (r.i64("id")?, r.i64("campaign_id")?, r.i64("wave")?);
        let mut tx = db.begin_write().await?;
        // Only if it is still delivered and still old: a result that arrived meanwhile wins.
        let done = sqlx::query(
            "UPDATE jobs SET state = 'failed', detail = $1, updated_ms = $2, reason = $5 \
             WHERE id = $3 AND state = 'delivered' AND updated_ms < $4",
        )
        .bind(why.clone())
        .bind(now_ms())
        .bind(job)
        .bind(cutoff)
        .bind(REASON_TIMED_OUT)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            continue;
        }
        sqlx::query(
            "UPDATE campaigns SET jobs_delivered = jobs_delivered - 1, \
             jobs_failed = jobs_failed + 1 WHERE id = $1",
        )
        .bind(campaign)
        .execute(&mut *tx)
        .await?;
        tally(
            &mut tx,
            campaign,
            wave,
            JobState::Delivered,
            JobState::Failed,
        )
        .await?;
        count_failure(&mut tx, campaign, wave, REASON_TIMED_OUT, true).await?;
        let moved = advance(&mut tx, campaign).await?;
        tx.commit().await?;
        tracing::warn!(job, campaign, reason = %why, "delivered update timed out");
        if let Some(before) = moved {
            released.push((campaign, before));
        }
    }
    Ok(released)
}

/// `secs` as days, hours, minutes or seconds, whichever divides it.
fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        s if s > 0 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s > 0 && s % 3600 == 0 => (s / 3600, "hour"),
        s if s > 0 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Marks a pending job delivered (token issued, Exec accepted), recording the update id and
/// token. Fails with `Conflict` if the job is no longer pending (another replica took it, or it
/// was cancelled).
pub async fn mark_delivered(
    conn: &mut AnyConnection,
    job_id: i64,
    update_id: &[u8],
    token: &[u8],
) -> Result<()> {
    // The card the update goes to is kept with the job: its proof reads that card's log,
    // whatever card the device holds later (or after the device is deleted).
    let Some(done) = sqlx::query(
        "UPDATE jobs SET state = 'delivered', update_id = $1, token = $2, fumo_state = 30, \
         deliveries = deliveries + 1, iccid = (SELECT d.iccid FROM devices d \
         WHERE d.id = jobs.device_id), \
         updated_ms = $3, delivered_ms = $3 WHERE id = $4 AND state = 'pending' \
         RETURNING campaign_id, wave",
    )
    .bind(update_id.to_vec())
    .bind(token.to_vec())
    .bind(now_ms())
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Err(ServerError::Conflict(format!(
            "job {job_id} is no longer pending"
        )));
    };
    let (campaign, wave) = (done.i64("campaign_id")?, done.i64("wave")?);
    sqlx::query("UPDATE campaigns SET jobs_delivered = jobs_delivered + 1 WHERE id = $1")
        .bind(campaign)
        .execute(&mut *conn)
        .await?;
    tally(conn, campaign, wave, JobState::Pending, JobState::Delivered).await
}

/// Records the FUMO result of a delivered job (from the 1226 Generic Alert) and re-evaluates
/// its campaign. A result for a job that is not `delivered` is refused (`Conflict`): results are
/// recorded once.
pub async fn record_result(
    conn: &mut AnyConnection,
    job_id: i64,
    result_code: u16,
    receipt: Option<&[u8]>,
    receipt_status: &str,
    detail: Option<&str>,
) -> Result<Job> {
    // OMA-TS-DM-FUMO-V1_0 §6.3: 200 Successful, and 250-299 "Successful - Vendor Specified".
    let ok = FumoResult(result_code).is_success();
    record(
        conn,
        job_id,
        (result_code, ok),
        receipt,
        receipt_status,
        detail,
    )
    .await
    .map(|(job, _)| job)
}

/// Records a success code the server could not confirm (the card's receipt is missing or does
/// not verify, for a device whose card the server knows): the code is kept as reported, the job
/// counts as `failed` for the campaign, `detail` says why.
pub async fn record_unconfirmed_result(
    conn: &mut AnyConnection,
    job_id: i64,
    result_code: u16,
    receipt: Option<&[u8]>,
    receipt_status: &str,
    detail: Option<&str>,
) -> Result<Job> {
    record(
        conn,
        job_id,
        (result_code, false),
        receipt,
        receipt_status,
        detail,
    )
    .await
    .map(|(job, _)| job)
}

/// Records `result_code` for a delivered job; `succeeded` says whether it counts as a success
/// for the campaign (what [`record_result`] and [`record_unconfirmed_result`] decide). Answers
/// the job and what [`advance`] answered: the wave before the waves the result released.
pub(crate) async fn record(
    conn: &mut AnyConnection,
    job_id: i64,
    (result_code, succeeded): (u16, bool),
    receipt: Option<&[u8]>,
    receipt_status: &str,
    detail: Option<&str>,
) -> Result<(Job, Option<i64>)> {
    // FUMO 1.0 §7.1 states as the device reports them: update successful or failed, no data.
    let fumo_state = if FumoResult(result_code).is_success() {
        FumoState::UPDATE_SUCCESSFUL_NO_DATA
    } else {
        FumoState::UPDATE_FAILED_NO_DATA
    };
    let state = if succeeded {
        JobState::Succeeded
    } else {
        JobState::Failed
    };
    let reason = if succeeded {
        None
    } else {
        Some(result_reason(&mut *conn, job_id, result_code).await?)
    };
    let Some(done) = sqlx::query(
        "UPDATE jobs SET state = $1, result_code = $2, fumo_state = $3, receipt = $4, \
         receipt_status = $5, detail = $6, updated_ms = $7, reason = $9 \
         WHERE id = $8 AND state = 'delivered' RETURNING *",
    )
    .bind(state.as_str())
    .bind(i64::from(result_code))
    .bind(i64::from(fumo_state.value()))
    .bind(receipt.map(<[u8]>::to_vec))
    .bind(receipt_status.to_owned())
    .bind(detail.map(str::to_owned))
    .bind(now_ms())
    .bind(job_id)
    .bind(reason.clone())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Err(ServerError::Conflict(format!(
            "job {job_id} has no delivery awaiting a result"
        )));
    };
    let (campaign, wave) = (done.i64("campaign_id")?, done.i64("wave")?);
    // The campaign row as the counters leave it is what `advance` re-evaluates, unless a
    // failure counted below may pause the campaign: then it is read again. (The campaign is
    // changed before its waves, as everywhere: one lock order for concurrent transactions.)
    let counter = if succeeded {
        "UPDATE campaigns SET jobs_delivered = jobs_delivered - 1, \
         jobs_succeeded = jobs_succeeded + 1 WHERE id = $1 RETURNING *"
    } else {
        "UPDATE campaigns SET jobs_delivered = jobs_delivered - 1, \
         jobs_failed = jobs_failed + 1 WHERE id = $1 RETURNING *"
    };
    let c = sqlx::query(counter)
        .bind(campaign)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("campaign {campaign}")))?;
    let c = campaign_from_row(&c)?;
    tally(&mut *conn, campaign, wave, JobState::Delivered, state).await?;
    let read = match &reason {
        Some(reason) => {
            count_failure(&mut *conn, campaign, wave, reason, true).await?;
            None
        }
        None => Some(c),
    };
    // The job as recorded, from the UPDATE itself (no statement to read it back).
    let j = job_from_row(&done)?;
    let released_after = advance_from(&mut *conn, campaign, read).await?;
    Ok((j, released_after))
}

/// Reason of a job whose device has no usable card, in a campaign that requires one.
pub const REASON_NO_CARD: &str = "no usable SIMFOTA card";
/// Reason of a job its device lost after every delivery.
pub const REASON_LOST: &str = "update lost by the device after every delivery";
/// Reason of a delivered job with no result in time.
pub const REASON_TIMED_OUT: &str = "no result in time";
/// Reason of a job not delivered by its campaign's deadline.
pub const REASON_DEADLINE: &str = "deadline passed";
/// Reason of a job whose device was deleted before the job ended.
pub const REASON_DEVICE_DELETED: &str = "device deleted";

/// A FUMO result code in words (OMA-TS-DM-FUMO-V1_0 §6.3).
pub fn fumo_words(code: u16) -> String {
    let words = match code {
        400 => "management client error",
        401 => "user cancelled",
        402 => "corrupted firmware update package",
        403 => "package for another device",
        404 => "package validation failed",
        405 => "package not acceptable",
        406 => "alternate download authentication failure",
        407 => "alternate download request timed out",
        408 => "not implemented",
        409 => "undefined error",
        410 => "firmware update failed",
        411 => "malformed or bad package URL",
        412 => "alternate download server unavailable",
        500 => "alternate download server error",
        501 => "download failed: device out of memory",
        502 => "update failed: device out of memory",
        503 => "download failed: network issues",
        _ => "",
    };
    if words.is_empty() {
        format!("device reported {code}")
    } else {
        format!("device reported {code}: {words}")
    }
}

/// The reason in words of a result `code` that does not count as a success for job `job_id`:
/// the card's own refusal when its log already holds it for this update, else the FUMO code.
async fn result_reason(conn: &mut AnyConnection, job_id: i64, code: u16) -> Result<String> {
    if FumoResult(code).is_success() {
        return Ok("success not confirmed by the card's receipt".into());
    }
    let refusal = sqlx::query(
        "SELECT e.detail FROM card_log_entries e JOIN jobs j ON j.update_id = e.update_id \
         WHERE j.id = $1 AND e.event = 'denied' ORDER BY e.id DESC LIMIT 1",
    )
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(
        match refusal.map(|r| r.opt_text("detail")).transpose()?.flatten() {
            Some(name) => format!("card refused: {name}"),
            None => fumo_words(code),
        },
    )
}

/// The card's log shows it refused update `update_id` for `name` (a `DenyReason` name): a
/// failed job of that update takes "card refused: NAME" as its reason, in place of the FUMO
/// code its device reported (the log is often read after the result).
pub async fn card_refused(conn: &mut AnyConnection, update_id: &[u8], name: &str) -> Result<()> {
    let Some(row) = sqlx::query(
        "SELECT id, campaign_id, wave, reason FROM jobs WHERE update_id = $1 AND state = 'failed'",
    )
    .bind(update_id.to_vec())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(());
    };
    let reason = format!("card refused: {name}");
    let old = row.opt_text("reason")?;
    if old.as_deref() == Some(reason.as_str()) {
        return Ok(());
    }
    let (campaign, wave) = (row.i64("campaign_id")?, row.i64("wave")?);
    sqlx::query("UPDATE jobs SET reason = $1 WHERE id = $2")
        .bind(reason.clone())
        .bind(row.i64("id")?)
        .execute(&mut *conn)
        .await?;
    if let Some(old) = old {
        sqlx::query(
            "UPDATE campaign_failures SET n = n - 1 WHERE campaign_id = $1 AND reason = $2",
        )
        .bind(campaign)
        .bind(old)
        .execute(&mut *conn)
        .await?;
    }
    count_failure(conn, campaign, wave, &reason, false).await
}

/// What a device's session does with its pending job ([`offer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Deliver it now.
    Deliver,
    /// Not now (outside the campaign's maintenance window): the job stays pending.
    NotNow(String),
    /// The job ended without a delivery (skipped, or failed at the deadline): why, and the
    /// campaign with the wave it was at when the change released waves (to notify).
    Ended {
        /// Why, in words.
        why: String,
        /// `(campaign, wave before)` when waves were released.
        released: Option<(i64, i64)>,
    },
}

/// Decides, in the session's transaction, whether pending job `job_id` is offered now to its
/// device, whose firmware version is `fw_version`: a device already at or above the package
/// has the job skipped; past the campaign's deadline the job fails ("deadline passed");
/// outside its maintenance window it waits. A job no longer pending is left to the caller.
pub async fn offer(
    conn: &mut AnyConnection,
    job_id: i64,
    fw_version: Option<&str>,
) -> Result<Offer> {
    let Some(row) = sqlx::query(&format!(
        "SELECT {OFFER_COLUMNS} FROM jobs j JOIN campaigns c ON c.id = j.campaign_id \
         JOIN packages p ON p.id = c.package_id WHERE j.id = $1 AND j.state = 'pending'"
    ))
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(Offer::Deliver);
    };
    offer_on(conn, job_id, &row, fw_version).await
}

/// What [`offer_on`] reads, as columns of a query joining the job `j`, its campaign `c` and
/// their package `p` (the DM flow reads them with the rest of a delivery, in the account
/// lookup of every message: the history search runs only for a pending job, the one offered).
pub const OFFER_COLUMNS: &str = "c.deadline_ms, c.window_start, c.window_end, \
     c.include_up_to_date, p.version, \
     p.sequence, CASE WHEN j.state = 'pending' THEN EXISTS (SELECT 1 FROM jobs j2 \
     JOIN campaigns c2 ON c2.id = j2.campaign_id JOIN packages p2 ON p2.id = c2.package_id \
     WHERE j2.device_id = j.device_id AND j2.state = 'succeeded' \
     AND p2.sequence >= p.sequence) ELSE FALSE END AS at_sequence";

/// [`offer`] for a pending job whose [`OFFER_COLUMNS`] the caller read in `row`.
pub async fn offer_on(
    conn: &mut AnyConnection,
    job_id: i64,
    row: &sqlx::any::AnyRow,
    fw_version: Option<&str>,
) -> Result<Offer> {
    let now = now_ms();
    let (version, sequence) = (row.text("version")?, row.i64("sequence")?);
    let ended = |why: String, r: Option<(i64, Option<i64>)>| Offer::Ended {
        why,
        released: r.and_then(|(c, w)| w.map(|w| (c, w))),
    };
    if !flag(row, "include_up_to_date")?
        && let Some(why) = already_at(fw_version, flag(row, "at_sequence")?, &version, sequence)
    {
        let r = end_pending(conn, job_id, JobState::Skipped, &why, &why, false).await?;
        tracing::info!(job = job_id, reason = %why, "job skipped");
        return Ok(ended(why, r));
    }
    if let Some(deadline) = row.opt_i64("deadline_ms")?
        && now >= deadline
    {
        let detail = format!("not delivered by the campaign's deadline ({deadline} ms UTC)");
        let r = end_pending(
            conn,
            job_id,
            JobState::Failed,
            REASON_DEADLINE,
            &detail,
            false,
        )
        .await?;
        return Ok(ended(REASON_DEADLINE.to_owned(), r));
    }
    if let (Some(start), Some(end)) = (row.opt_i64("window_start")?, row.opt_i64("window_end")?) {
        let minute = now.rem_euclid(86_400_000) / 60_000;
        if !in_window(minute, start, end) {
            let w = Window::from_minutes(start, end);
            return Ok(Offer::NotNow(format!(
                "outside the campaign's maintenance window ({}-{} UTC)",
                w.start, w.end
            )));
        }
    }
    Ok(Offer::Deliver)
}

/// Most reasons one retry names.
pub const RETRY_REASONS_MAX: usize = 100;

/// Re-queues campaign `id`'s failed jobs (those failed for one of `reasons`, or all; never
/// those of deleted devices) as pending, to be offered again; a completed campaign runs
/// again. Refused (409) for a cancelled campaign and after its deadline.
pub async fn retry(db: &Db, id: i64, reasons: Option<&[String]>) -> Result<Campaign> {
    if let Some(r) = reasons
        && (r.is_empty() || r.len() > RETRY_REASONS_MAX)
    {
        return Err(ServerError::BadRequest(format!(
            "reasons: 1 to {RETRY_REASONS_MAX} reasons, as the campaign's failures name them \
             (leave it out to retry every failed job)"
        )));
    }
    let mut tx = db.begin_write().await?;
    let c = get_row(&mut tx, id).await?;
    if c.state == CampaignState::Cancelled {
        return Err(ServerError::Conflict(format!(
            "campaign {id} is cancelled: nothing is retried"
        )));
    }
    if c.deadline_ms.is_some_and(|d| now_ms() >= d) {
        return Err(ServerError::Conflict(format!(
            "campaign {id} is past its deadline: nothing is retried"
        )));
    }
    // The reasons are parameters $5, $6, ... (after the campaign, the time, its wave and the
    // reason never retried).
    let filter = match reasons {
        Some(r) => {
            let p: Vec<String> = (5..5 + r.len()).map(|i| format!("${i}")).collect();
            format!(" AND reason IN ({})", p.join(", "))
        }
        None => String::new(),
    };
    let sql = format!(
        "UPDATE jobs SET state = CASE WHEN wave <= $3 THEN 'pending' ELSE 'waiting' END, \
         detail = 'offered again (retry) after: ' || COALESCE(reason, 'an unknown failure'), \
         reason = NULL, result_code = NULL, fumo_state = NULL, receipt = NULL, \
         receipt_status = NULL, deliveries = 0, updated_ms = $2, delivered_ms = NULL, \
         released_ms = CASE WHEN wave <= $3 THEN $2 ELSE NULL END \
         WHERE campaign_id = $1 AND state = 'failed' AND COALESCE(reason, '') <> $4{filter}"
    );
    // A deleted device's job is never offered again: no device would ever take it. A job of
    // a wave not yet released (failed when its device was deleted) waits for its wave.
    let mut q = sqlx::query(&sql)
        .bind(id)
        .bind(now_ms())
        .bind(c.current_wave)
        .bind(REASON_DEVICE_DELETED);
    for r in reasons.unwrap_or_default() {
        q = q.bind(r.clone());
    }
    let n = i64::try_from(q.execute(&mut *tx).await?.rows_affected()).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE campaigns SET jobs_failed = jobs_failed - $1, updated_ms = $2, \
         state = CASE WHEN state = 'completed' AND $1 > 0 THEN 'running' ELSE state END \
         WHERE id = $3",
    )
    .bind(n)
    .bind(now_ms())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    rebuild_waves(&mut tx, id).await?;
    rebuild_failures(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(campaign = id, jobs = n, "failed jobs offered again");
    advance(&mut *db.conn().await?, id).await?;
    get(&mut *db.conn().await?, id).await
}

/// Ends the jobs of every campaign whose deadline has passed and that still has jobs to
/// deliver: each fails ("deadline passed"), every wave counts as released, and a campaign
/// with no delivery awaiting a result completes. Answers how many jobs ended.
pub async fn sweep_deadlines(db: &Db) -> Result<u64> {
    let now = now_ms();
    let due = sqlx::query(
        "SELECT c.id FROM campaigns c WHERE c.deadline_ms IS NOT NULL AND c.deadline_ms <= $1 \
         AND c.state IN ('running', 'paused', 'halted') AND EXISTS (SELECT 1 FROM jobs j \
         WHERE j.campaign_id = c.id AND j.state IN ('waiting', 'pending'))",
    )
    .bind(now)
    .fetch_all(db.pool())
    .await?;
    let mut ended = 0;
    for r in due {
        let id = r.i64("id")?;
        let mut tx = db.begin_write().await?;
        let c = get_row(&mut tx, id).await?;
        let detail = format!(
            "not delivered by the campaign's deadline ({} ms UTC)",
            c.deadline_ms.unwrap_or(now)
        );
        let n = sqlx::query(
            "UPDATE jobs SET state = 'failed', reason = $1, detail = $2, updated_ms = $3 \
             WHERE campaign_id = $4 AND state IN ('waiting', 'pending')",
        )
        .bind(REASON_DEADLINE)
        .bind(detail)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let last_wave = i64::try_from(c.waves.len()).unwrap_or(1) - 1;
        sqlx::query(
            "UPDATE campaigns SET jobs_failed = jobs_failed + $1, jobs_released = jobs_total, \
             current_wave = $2, updated_ms = $3, \
             state = CASE WHEN jobs_delivered = 0 THEN 'completed' ELSE state END WHERE id = $4",
        )
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .bind(last_wave.max(c.current_wave))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        rebuild_waves(&mut tx, id).await?;
        rebuild_failures(&mut tx, id).await?;
        tx.commit().await?;
        tracing::info!(campaign = id, jobs = n, "campaign deadline passed");
        ended += n;
    }
    Ok(ended)
}

/// Ends the unfinished jobs of device `device_id` (being deleted) as failed, "device
/// deleted", in the caller's transaction; each campaign's counters move and it is
/// re-evaluated. Answers the campaigns that released waves, with the wave each was at.
pub async fn end_device_jobs(conn: &mut AnyConnection, device_id: i64) -> Result<Vec<(i64, i64)>> {
    let rows = sqlx::query(
        "SELECT id, campaign_id, wave, state FROM jobs WHERE device_id = $1 \
         AND state IN ('waiting', 'pending', 'delivered')",
    )
    .bind(device_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut released = Vec::new();
    for r in rows {
        let (job, campaign, wave) = (r.i64("id")?, r.i64("campaign_id")?, r.i64("wave")?);
        let from = JobState::parse(&r.text("state")?)?;
        sqlx::query(
            "UPDATE jobs SET state = 'failed', reason = $1, detail = $1, updated_ms = $2 \
             WHERE id = $3",
        )
        .bind(REASON_DEVICE_DELETED)
        .bind(now_ms())
        .bind(job)
        .execute(&mut *conn)
        .await?;
        let delivered = if from == JobState::Delivered { 1 } else { 0 };
        sqlx::query(
            "UPDATE campaigns SET jobs_failed = jobs_failed + 1, \
             jobs_delivered = jobs_delivered - $1 WHERE id = $2",
        )
        .bind(delivered)
        .bind(campaign)
        .execute(&mut *conn)
        .await?;
        tally(&mut *conn, campaign, wave, from, JobState::Failed).await?;
        count_failure(&mut *conn, campaign, wave, REASON_DEVICE_DELETED, false).await?;
        if let Some(before) = advance(&mut *conn, campaign).await? {
            released.push((campaign, before));
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_split_in_order_and_never_empty() {
        assert_eq!(
            assign_waves(10, &[10, 50, 100]),
            vec![0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
        );
        assert_eq!(assign_waves(3, &[10, 50, 100]), vec![0, 1, 2]);
        assert_eq!(assign_waves(2, &[10, 50, 100]), vec![0, 1]);
        assert_eq!(assign_waves(0, &[100]), Vec::<usize>::new());
        assert_eq!(assign_waves(4, &[100]), vec![0, 0, 0, 0]);
    }

    #[test]
    fn thresholds() {
        let p = |released, succeeded, failed| Progress {
            total: 10,
            released,
            succeeded,
            failed,
            cancelled: 0,
            delivered: 0,
            skipped: 0,
        };
        assert_eq!(evaluate(&p(2, 2, 0), 90, 10, true), Step::NextWave);
        assert_eq!(evaluate(&p(2, 1, 0), 90, 10, true), Step::Stay);
        assert!(matches!(evaluate(&p(2, 1, 1), 50, 50, true), Step::Halt(_)));
        assert_eq!(evaluate(&p(10, 9, 0), 90, 10, false), Step::Stay);
        let mut done = p(10, 9, 0);
        done.cancelled = 1;
        assert_eq!(evaluate(&done, 90, 10, false), Step::Complete);
    }

    #[test]
    fn skipped_jobs_are_neither_successes_nor_failures() {
        let p = Progress {
            total: 10,
            released: 5,
            succeeded: 1,
            failed: 0,
            cancelled: 0,
            delivered: 0,
            skipped: 4,
        };
        // 1 of the 1 offered succeeded: the next wave goes.
        assert_eq!(evaluate(&p, 90, 10, true), Step::NextWave);
        // 1 of the 1 offered failed: halted, counted over the offered only.
        let failed = Progress {
            succeeded: 0,
            failed: 1,
            ..p
        };
        assert_eq!(
            evaluate(&failed, 90, 50, true),
            Step::Halt("1 of 1 released jobs failed (error threshold 50%)".into())
        );
        // Every job skipped: complete, never halted.
        let all = Progress {
            total: 3,
            released: 3,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
            delivered: 0,
            skipped: 3,
        };
        assert_eq!(evaluate(&all, 90, 10, false), Step::Complete);
    }

    #[test]
    fn spec_validation() {
        let mut s = CampaignSpec {
            name: "x".into(),
            package_id: 1,
            target_model: None,
            target_fw: None,
            target_group: None,
            waves: vec![10, 50, 100],
            success_threshold: 90,
            error_threshold: 10,
            card: CardMode::Required,
            deadline_ms: None,
            window: None,
            max_failure_pct: None,
            include_up_to_date: false,
        };
        assert!(s.validate().is_ok());
        s.waves = vec![50, 50, 100];
        assert!(s.validate().is_err());
        s.waves = vec![10, 50];
        assert!(s.validate().is_err());
        s.waves = vec![100];
        s.error_threshold = 0;
        assert!(s.validate().is_err());
    }
}
