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
    pub const ALL: [JobState; 6] = [
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
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
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
    if p.released > 0 && p.failed * 100 >= i64::from(error_threshold) * p.released {
        return Step::Halt(format!(
            "{} of {} released jobs failed (error threshold {}%)",
            p.failed, p.released, error_threshold
        ));
    }
    let ended = p.succeeded + p.failed + p.cancelled;
    if more_waves {
        if p.succeeded * 100 >= i64::from(success_threshold) * p.released {
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
    /// Counts.
    pub progress: Progress,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// Updated (Unix ms).
    pub updated_ms: i64,
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
        progress: Progress {
            total: r.i64("jobs_total")?,
            released: r.i64("jobs_released")?,
            succeeded: r.i64("jobs_succeeded")?,
            failed: r.i64("jobs_failed")?,
            cancelled: r.i64("jobs_cancelled")?,
            delivered: r.i64("jobs_delivered")?,
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
    let exists = sqlx::query("SELECT id FROM packages WHERE id = $1")
        .bind(spec.package_id)
        .fetch_optional(db.pool())
        .await?;
    if exists.is_none() {
        return Err(ServerError::NotFound(format!(
            "package {}",
            spec.package_id
        )));
    }
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
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(
        "INSERT INTO campaigns (name, package_id, target_model, target_fw, target_group, waves, \
         success_threshold, error_threshold, state, current_wave, created_ms, updated_ms, card) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', 0, $9, $9, $10) RETURNING id",
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
    .fetch_one(&mut *tx)
    .await?;
    let id = row.i64("id")?;
    // NULL filters match everything; the group filter is a membership test.
    let devices = sqlx::query(
        "SELECT d.id FROM devices d WHERE ($1 IS NULL OR d.model = $1) \
         AND ($2 IS NULL OR d.fw_version = $2) \
         AND ($3 IS NULL OR EXISTS (SELECT 1 FROM group_members m JOIN device_groups g \
              ON g.id = m.group_id WHERE g.name = $3 AND m.device_id = d.id)) \
         ORDER BY d.id",
    )
    .bind(spec.target_model.clone())
    .bind(spec.target_fw.clone())
    .bind(spec.target_group.clone())
    .fetch_all(&mut *tx)
    .await?;
    let waves = assign_waves(devices.len(), &spec.waves);
    let jobs: Vec<(i64, i64)> = devices
        .iter()
        .zip(waves)
        .map(|(d, w)| Ok((d.i64("id")?, i64::try_from(w).unwrap_or(i64::MAX))))
        .collect::<Result<_>>()?;
    for chunk in jobs.chunks(JOB_ROWS_PER_STATEMENT) {
        insert_jobs(&mut tx, id, chunk, now).await?;
    }
    let first_wave = jobs.iter().filter(|(_, w)| *w == 0).count();
    sqlx::query("UPDATE campaigns SET jobs_total = $1, jobs_released = $2 WHERE id = $3")
        .bind(i64::try_from(jobs.len()).unwrap_or(i64::MAX))
        .bind(i64::try_from(first_wave).unwrap_or(i64::MAX))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    advance(&mut *db.conn().await?, id).await?;
    get(&mut *db.conn().await?, id).await
}

/// Job rows per INSERT statement when a campaign is created (6 parameters each: well under
/// both engines' limits on bound parameters).
const JOB_ROWS_PER_STATEMENT: usize = 500;

/// Inserts the jobs `(device, wave)` of campaign `id`: wave 0 pending, the others waiting.
async fn insert_jobs(
    conn: &mut AnyConnection,
    id: i64,
    jobs: &[(i64, i64)],
    now: i64,
) -> Result<()> {
    let rows: Vec<String> = (0..jobs.len())
        .map(|r| {
            let p: Vec<String> = (1..=6).map(|c| format!("${}", r * 6 + c)).collect();
            // created_ms and updated_ms are the same parameter.
            format!("({}, ${})", p.join(", "), r * 6 + 6)
        })
        .collect();
    let sql = format!(
        "INSERT INTO jobs (campaign_id, device_id, wave, state, correlator, created_ms, \
         updated_ms) VALUES {}",
        rows.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for &(device, wave) in jobs {
        let state = if wave == 0 {
            JobState::Pending
        } else {
            JobState::Waiting
        };
        q = q
            .bind(id)
            .bind(device)
            .bind(wave)
            .bind(state.as_str())
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(now);
    }
    q.execute(conn).await?;
    Ok(())
}

/// Reads a campaign.
pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Campaign> {
    let row = sqlx::query("SELECT * FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("campaign {id}")))?;
    campaign_from_row(&row)
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
    let current = get(&mut *db.conn().await?, id).await?;
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
        "UPDATE campaigns SET state = $1, halt_reason = NULL, updated_ms = $2 \
         WHERE id = $3 AND state = $4",
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
    let mut released_after = None;
    // Bounded: at most one step per wave, plus the final one.
    for _ in 0..32 {
        let c = get(&mut *conn, id).await?;
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
                        "UPDATE jobs SET state = 'pending', updated_ms = $1 \
                         WHERE campaign_id = $2 AND wave = $3 AND state = 'waiting'",
                    )
                    .bind(now)
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
        imei: r.text("imei")?,
        wave: r.i64("wave")?,
        state: JobState::parse(&r.text("state")?)?,
        fumo_state: r.opt_i64("fumo_state")?,
        result_code: r.opt_i64("result_code")?,
        correlator: r.text("correlator")?,
        update_id: r.opt_bytes("update_id")?.map(hex::encode),
        receipt_status: r.opt_text("receipt_status")?,
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
                "SELECT j.*, d.imei FROM jobs j JOIN devices d ON d.id = j.device_id \
                 WHERE j.campaign_id = $1 ORDER BY j.id",
            )
            .bind(c)
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query(
                "SELECT j.*, d.imei FROM jobs j JOIN devices d ON d.id = j.device_id \
                 ORDER BY j.id DESC LIMIT 1000",
            )
            .fetch_all(db.pool())
            .await?
        }
    };
    rows.iter().map(job_from_row).collect()
}

/// Most jobs [`device_jobs`] returns for one device: a device gets one job per campaign that
/// targeted it, so this bounds the answer without hiding anything in practice.
pub const DEVICE_JOBS_MAX: i64 = 500;

/// A device's jobs, newest first, at most [`DEVICE_JOBS_MAX`] (selected in SQL by device, so
/// other devices' jobs never push this device's out of the answer).
pub async fn device_jobs(db: &Db, device_id: i64) -> Result<Vec<Job>> {
    let rows = sqlx::query(
        "SELECT j.*, d.imei FROM jobs j JOIN devices d ON d.id = j.device_id \
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
    let row = sqlx::query(
        "SELECT j.*, d.imei FROM jobs j JOIN devices d ON d.id = j.device_id WHERE j.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ServerError::NotFound(format!("job {id}")))?;
    job_from_row(&row)
}

/// The job to deliver to a device now: its oldest pending job of a running campaign.
pub async fn next_job_for_device(conn: &mut AnyConnection, device_id: i64) -> Result<Option<Job>> {
    let row = sqlx::query(
        "SELECT j.*, d.imei FROM jobs j JOIN devices d ON d.id = j.device_id \
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
        "SELECT campaign_id, deliveries FROM jobs WHERE id = $1 AND state = 'delivered'",
    )
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(Reoffer::Unchanged);
    };
    let campaign_id = row.i64("campaign_id")?;
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
    let done = sqlx::query(
        "UPDATE jobs SET state = $1, detail = $2, updated_ms = $3 WHERE id = $4 AND state = 'delivered'",
    )
    .bind(state.as_str())
    .bind(detail)
    .bind(now_ms())
    .bind(job_id)
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
    if outcome == Reoffer::Failed {
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
    let Some(row) = sqlx::query(
        "UPDATE jobs SET state = 'failed', detail = $1, updated_ms = $2 \
         WHERE id = $3 AND state = 'pending' RETURNING campaign_id",
    )
    .bind(why.to_owned())
    .bind(now_ms())
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let campaign = row.i64("campaign_id")?;
    sqlx::query("UPDATE campaigns SET jobs_failed = jobs_failed + 1 WHERE id = $1")
        .bind(campaign)
        .execute(&mut *conn)
        .await?;
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
        "SELECT id, campaign_id FROM jobs WHERE state = 'delivered' AND updated_ms < $1 \
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
        let (job, campaign) = (r.i64("id")?, r.i64("campaign_id")?);
        let mut tx = db.begin_write().await?;
        // Only if it is still delivered and still old: a result that arrived meanwhile wins.
        let done = sqlx::query(
            "UPDATE jobs SET state = 'failed', detail = $1, updated_ms = $2 \
             WHERE id = $3 AND state = 'delivered' AND updated_ms < $4",
        )
        .bind(why.clone())
        .bind(now_ms())
        .bind(job)
        .bind(cutoff)
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
        let wave = advance(&mut tx, campaign).await?;
        tx.commit().await?;
        tracing::warn!(job, campaign, reason = %why, "delivered update timed out");
        if let Some(before) = wave {
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
    let done = sqlx::query(
        "UPDATE jobs SET state = 'delivered', update_id = $1, token = $2, fumo_state = 30, \
         deliveries = deliveries + 1, \
         updated_ms = $3 WHERE id = $4 AND state = 'pending'",
    )
    .bind(update_id.to_vec())
    .bind(token.to_vec())
    .bind(now_ms())
    .bind(job_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(ServerError::Conflict(format!(
            "job {job_id} is no longer pending"
        )));
    }
    sqlx::query(
        "UPDATE campaigns SET jobs_delivered = jobs_delivered + 1 \
         WHERE id = (SELECT campaign_id FROM jobs WHERE id = $1)",
    )
    .bind(job_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
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
    let done = sqlx::query(
        "UPDATE jobs SET state = $1, result_code = $2, fumo_state = $3, receipt = $4, \
         receipt_status = $5, detail = $6, updated_ms = $7 WHERE id = $8 AND state = 'delivered'",
    )
    .bind(state.as_str())
    .bind(i64::from(result_code))
    .bind(i64::from(fumo_state.value()))
    .bind(receipt.map(<[u8]>::to_vec))
    .bind(receipt_status.to_owned())
    .bind(detail.map(str::to_owned))
    .bind(now_ms())
    .bind(job_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(ServerError::Conflict(format!(
            "job {job_id} has no delivery awaiting a result"
        )));
    }
    let counter = if succeeded {
        "UPDATE campaigns SET jobs_delivered = jobs_delivered - 1, \
         jobs_succeeded = jobs_succeeded + 1 WHERE id = (SELECT campaign_id FROM jobs WHERE id = $1)"
    } else {
        "UPDATE campaigns SET jobs_delivered = jobs_delivered - 1, \
         jobs_failed = jobs_failed + 1 WHERE id = (SELECT campaign_id FROM jobs WHERE id = $1)"
    };
    sqlx::query(counter)
        .bind(job_id)
        .execute(&mut *conn)
        .await?;
    let j = job(&mut *conn, job_id).await?;
    let released_after = advance(&mut *conn, j.campaign_id).await?;
    Ok((j, released_after))
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
