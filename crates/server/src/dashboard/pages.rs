//! The pages: overview, lists (devices, campaigns, packages, cards), one device, one campaign
//! (with its live progress fragment), one card, the audit log.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use serde::Deserialize;
use sqlx::any::AnyRow;

use super::chart::{self, Point, Segment, WaveBar, colour};
use super::read::{self, Cond, Cursor, Listing, Spec, Val};
use super::time::When;
use super::{PageError, Ui, render, url_encode};
use crate::AppState;
use crate::db::{RowExt, now_ms};
use crate::error::ServerError;

// ---- Shared pieces ----

/// Links to the neighbouring pages of a list.
pub struct Pager {
    /// The previous page (`before=`), if any.
    pub prev: Option<String>,
    /// The next page (`after=`), if any.
    pub next: Option<String>,
    /// The first page, when this is not it.
    pub first: Option<String>,
    /// This page stopped after looking at [`read::WINDOW`] entries without filling up.
    pub window_ended: bool,
}

impl Pager {
    fn of(l: &Listing, base: &str, cursor: &Cursor) -> Self {
        let sep = if base.contains('?') { "&" } else { "?" };
        let link = |k: &str, v: &String| format!("{base}{sep}{k}={}", url_encode(v));
        let on_first = cursor.after.is_none() && cursor.before.is_none();
        Self {
            prev: l.prev.as_ref().map(|v| link("before", v)),
            next: l.next.as_ref().map(|v| link("after", v)),
            first: (!on_first && l.prev.is_some()).then(|| base.to_owned()),
            window_ended: l.window_ended,
        }
    }
}

/// `path?k=v&...` of the filters that are set (empty ones left out).
fn with_query(path: &str, pairs: &[(&str, &Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", url_encode(v)))
        })
        .collect();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// A filter value as typed: trimmed, empty as none.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn cursor(after: &Option<String>, before: &Option<String>) -> Cursor {
    Cursor {
        after: given(after).map(str::to_owned),
        before: given(before).map(str::to_owned),
    }
}

/// A job state's picture label and colour.
fn state_segment(state: &str) -> (&'static str, &'static str) {
    match state {
        "succeeded" => ("succeeded", colour::SUCCEEDED),
        "failed" => ("failed", colour::FAILED),
        "delivered" => ("in progress", colour::IN_PROGRESS),
        "pending" => ("pending", colour::PENDING),
        "waiting" => ("waiting", colour::WAITING),
        "cancelled" => ("cancelled", colour::CANCELLED),
        "skipped" => ("skipped", colour::SKIPPED),
        _ => ("other", colour::CANCELLED),
    }
}

/// The states in the order every picture stacks them.
const STACK: [&str; 8] = [
    "succeeded",
    "failed",
    "in progress",
    "pending",
    "waiting",
    "skipped",
    "cancelled",
    "other",
];

/// Counts per job state, stacked in [`STACK`] order.
#[derive(Debug, Clone, Default)]
struct Counts(Vec<(&'static str, &'static str, i64)>);

impl Counts {
    fn add(&mut self, state: &str, n: i64) {
        let (label, colour) = state_segment(state);
        match self.0.iter_mut().find(|c| c.0 == label) {
            Some(c) => c.2 += n,
            None => self.0.push((label, colour, n)),
        }
    }

    fn get(&self, label: &str) -> i64 {
        self.0.iter().find(|c| c.0 == label).map_or(0, |c| c.2)
    }

    fn segments(&self) -> Vec<Segment> {
        STACK
            .iter()
            .filter_map(|l| self.0.iter().find(|c| c.0 == *l))
            .map(|c| Segment {
                label: c.0,
                count: c.2,
                colour: c.1,
            })
            .collect()
    }
}

/// Why a job failed, in words: the card's refusal when the card logged one for this update
/// (`card refused: rollback`), else what the server recorded, else the FUMO result code's
/// meaning (FUMO 1.0 §8).
pub fn failure_words(
    reason: Option<&str>,
    deny_code: Option<i64>,
    result_code: Option<i64>,
    detail: Option<&str>,
) -> String {
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        return r.to_owned();
    }
    let device = result_code.and_then(|c| u16::try_from(c).ok()).map(|c| {
        format!(
            "device reported {c}: {}",
            simfota_syncml::codes::FumoResult(c).meaning()
        )
    });
    if let Some(code) = deny_code.and_then(|c| u16::try_from(c).ok()) {
        let name = crate::cardlog::deny_reason_name(simfota_wire::DenyReason(code));
        return format!("card refused: {}", name.replace('_', " "));
    }
    match (detail.filter(|d| !d.is_empty()), device) {
        (Some(d), _) => d.to_owned(),
        (None, Some(d)) => d,
        (None, None) => "no reason recorded".to_owned(),
    }
}

fn human_size(n: i64) -> String {
    match n {
        n if n >= 10 * 1024 * 1024 => format!("{} MiB", n / (1024 * 1024)),
        n if n >= 10 * 1024 => format!("{} KiB", n / 1024),
        n => format!("{n} bytes"),
    }
}

// ---- Overview ----

/// A campaign as a row of a list.
pub struct CampaignRow {
    id: i64,
    name: String,
    state: String,
    reason: Option<String>,
    package: String,
    bar: String,
    succeeded: i64,
    failed: i64,
    total: i64,
    created: When,
    updated: When,
}

fn campaign_row(r: &AnyRow, now: i64) -> Result<CampaignRow, ServerError> {
    let total = r.i64("jobs_total")?;
    let succeeded = r.i64("jobs_succeeded")?;
    let failed = r.i64("jobs_failed")?;
    let cancelled = r.i64("jobs_cancelled")?;
    let delivered = r.i64("jobs_delivered")?;
    let released = r.i64("jobs_released")?;
    let skipped = read::opt_col_i64(r, "jobs_skipped")?.unwrap_or(0);
    // From the counters kept with the campaign: no pass over its jobs for a list row.
    let pending = (released - succeeded - failed - delivered - skipped).max(0);
    let waiting = (total - succeeded - failed - delivered - skipped - cancelled - pending).max(0);
    let segments = [
        ("succeeded", succeeded),
        ("failed", failed),
        ("delivered", delivered),
        ("pending", pending),
        ("waiting", waiting),
        ("skipped", skipped),
        ("cancelled", cancelled),
    ]
    .into_iter()
    .map(|(s, n)| {
        let (label, colour) = state_segment(s);
        Segment {
            label,
            count: n,
            colour,
        }
    })
    .collect::<Vec<_>>();
    let package = match (r.opt_text("package_name")?, r.opt_text("package_version")?) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        _ => format!("package {} (deleted)", r.i64("package_id")?),
    };
    Ok(CampaignRow {
        id: r.i64("id")?,
        name: r.text("name")?,
        state: r.text("state")?,
        reason: read::opt_col_text(r, "paused_reason")?.or(r.opt_text("halt_reason")?),
        package,
        bar: chart::bar(&segments, 220, 14),
        succeeded,
        failed,
        total,
        created: When::at(now, r.i64("created_ms")?),
        updated: When::at(now, r.i64("updated_ms")?),
    })
}

const CAMPAIGN_SELECT: &str = "SELECT c.*, p.name AS package_name, p.version AS package_version \
     FROM campaigns c LEFT JOIN packages p ON p.id = c.package_id";

/// An audit entry as a row.
pub struct AuditRow {
    when: When,
    e: crate::auth::AuditEntry,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    who: Ui,
    section: &'static str,
    devices: i64,
    cards: i64,
    packages: i64,
    campaigns: i64,
    active: Vec<CampaignRow>,
    finished: Vec<CampaignRow>,
    audit: Vec<AuditRow>,
    /// The fleet by running firmware version, as bars.
    versions: String,
}

/// Firmware versions drawn on the overview, most common first.
const VERSIONS_SHOWN: usize = 10;

/// `GET /ui`: counts, the campaigns under way, the latest finished ones and operator actions.
pub async fn overview(who: Ui, State(s): State<AppState>) -> Result<Html<String>, PageError> {
    let now = now_ms();
    let counts = read::fetch(
        &s.db,
        "SELECT (SELECT COUNT(*) FROM cards) AS cards, \
         (SELECT COUNT(*) FROM packages) AS packages, \
         (SELECT COUNT(*) FROM campaigns) AS campaigns",
        &[],
    )
    .await?;
    let c = counts
        .first()
        .ok_or_else(|| ServerError::internal("overview counts", "no row"))?;
    let rows = |sql: String| {
        let db = s.db.clone();
        async move { read::fetch(&db, &sql, &[]).await }
    };
    let active = rows(format!(
        "{CAMPAIGN_SELECT} WHERE c.state IN ('running', 'paused', 'halted') ORDER BY c.id DESC \
         LIMIT 20"
    ))
    .await?
    .iter()
    .map(|r| campaign_row(r, now))
    .collect::<Result<_, _>>()?;
    let finished = rows(format!(
        "{CAMPAIGN_SELECT} WHERE c.state IN ('completed', 'cancelled') ORDER BY c.id DESC LIMIT 5"
    ))
    .await?
    .iter()
    .map(|r| campaign_row(r, now))
    .collect::<Result<_, _>>()?;
    let audit = if who.may_act() {
        crate::auth::audit(&s.db, 8, None)
            .await?
            .into_iter()
            .map(|e| AuditRow {
                when: When::at(now, e.created_ms),
                e,
            })
            .collect()
    } else {
        Vec::new()
    };
    // The fleet by firmware version: one walk of the version index (no table read).
    let mut versions: Vec<(String, i64)> = read::fetch(
        &s.db,
        "SELECT fw_version, COUNT(*) AS n FROM devices GROUP BY fw_version",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.opt_text("fw_version")?.map_or_else(
                || "not reported yet".to_owned(),
                |v| format!("firmware {v}"),
            ),
            r.i64("n")?,
        ))
    })
    .collect::<Result<_, ServerError>>()?;
    // The fleet's size is the sum: one pass over the version index for both.
    let device_count: i64 = versions.iter().map(|v| v.1).sum();
    versions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if versions.len() > VERSIONS_SHOWN {
        let rest: i64 = versions
            .split_off(VERSIONS_SHOWN - 1)
            .iter()
            .map(|v| v.1)
            .sum();
        versions.push(("other versions".to_owned(), rest));
    }
    let versions = if versions.is_empty() {
        String::new()
    } else {
        chart::bars(&versions, colour::PENDING, "devices by firmware version")
    };
    render(&Overview {
        versions,
        who,
        section: "overview",
        devices: device_count,
        cards: c.i64("cards")?,
        packages: c.i64("packages")?,
        campaigns: c.i64("campaigns")?,
        active,
        finished,
        audit,
    })
}

// ---- Devices ----

/// Filters of the device list.
#[derive(Debug, Default, Deserialize)]
pub struct DeviceFilter {
    /// IMEI prefix.
    q: Option<String>,
    /// Model (exact).
    model: Option<String>,
    /// Running firmware version (exact).
    version: Option<String>,
    /// Group name.
    group: Option<String>,
    /// `day` (seen in the last 24 h), `stale` (not in 7 days), `never`.
    seen: Option<String>,
    /// `with` or `without` a card.
    card: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

/// A device as a row of the list.
pub struct DeviceRow {
    imei: String,
    model: String,
    version: String,
    iccid: Option<String>,
    last_seen: Option<When>,
    registered: When,
    /// The newest job: (campaign id, campaign name, state).
    job: Option<(i64, String, String)>,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    who: Ui,
    section: &'static str,
    f: DeviceFilter,
    problem: Option<String>,
    total: i64,
    groups: Vec<String>,
    rows: Vec<DeviceRow>,
    pager: Pager,
}

impl DeviceFilter {
    fn text(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or("")
    }
    fn q(&self) -> &str {
        Self::text(&self.q)
    }
    fn model(&self) -> &str {
        Self::text(&self.model)
    }
    fn version(&self) -> &str {
        Self::text(&self.version)
    }
    fn group(&self) -> &str {
        Self::text(&self.group)
    }
    fn seen(&self) -> &str {
        Self::text(&self.seen)
    }
    fn card(&self) -> &str {
        Self::text(&self.card)
    }
    fn any(&self) -> bool {
        [
            &self.q,
            &self.model,
            &self.version,
            &self.group,
            &self.seen,
            &self.card,
        ]
        .iter()
        .any(|v| given(v).is_some())
    }
}

/// The device list for the filters `f` (and a problem with the search, to show).
fn device_spec(f: &DeviceFilter, now: i64) -> (Spec<'static>, Option<String>) {
    let mut problem = None;
    let mut indexed: Vec<Cond> = Vec::new();
    let mut filters: Vec<Cond> = Vec::new();
    if let Some(q) = given(&f.q) {
        if q.len() > 15 || !q.bytes().all(|b| b.is_ascii_digit()) {
            problem = Some("Search by IMEI: up to 15 digits, the start of the IMEI.".to_owned());
            indexed.push(("1 = 0".into(), vec![]));
        } else {
            indexed.push(("{a}imei >= ?".into(), vec![Val::T(q.to_owned())]));
            if let Some(end) = read::digits_end(q) {
                indexed.push(("{a}imei < ?".into(), vec![Val::T(end)]));
            }
        }
    }
    // With a model or a firmware version and no IMEI search, the list is in registration
    // order and the first of them is the prefix of its index (model or version, id); any other
    // filter is checked row by row, written so that no index but the key's can drive the
    // walk (`COALESCE`, `EXISTS`: no sort of a model's or a group's million devices by IMEI).
    let by_id = given(&f.q).is_none() && (given(&f.model).is_some() || given(&f.version).is_some());
    for (column, value) in [
        ("model", given(&f.model)),
        ("fw_version", given(&f.version)),
    ] {
        let Some(v) = value else { continue };
        let cond = vec![Val::T(v.to_owned())];
        if by_id
            && !indexed
                .iter()
                .any(|c| c.0.starts_with("{a}model") || c.0.starts_with("{a}fw_version"))
        {
            indexed.push((format!("{{a}}{column} = ?"), cond));
        } else {
            filters.push((format!("COALESCE({{a}}{column}, '') = ?"), cond));
        }
    }
    if let Some(g) = given(&f.group) {
        filters.push((
            "EXISTS (SELECT 1 FROM group_members m JOIN device_groups g ON g.id = m.group_id \
             WHERE m.device_id = {a}id AND g.name = ?)"
                .into(),
            vec![Val::T(g.to_owned())],
        ));
    }
    match given(&f.seen) {
        Some("day") => filters.push((
            "{a}last_seen_ms >= ?".into(),
            vec![Val::I(now - 86_400_000)],
        )),
        Some("stale") => filters.push((
            "({a}last_seen_ms IS NULL OR {a}last_seen_ms < ?)".into(),
            vec![Val::I(now - 7 * 86_400_000)],
        )),
        Some("never") => filters.push(("{a}last_seen_ms IS NULL".into(), vec![])),
        _ => {}
    }
    match given(&f.card) {
        Some("with") => filters.push(("{a}iccid IS NOT NULL".into(), vec![])),
        Some("without") => filters.push(("{a}iccid IS NULL".into(), vec![])),
        _ => {}
    }
    let spec = Spec {
        select: "SELECT d.id, d.imei, d.model, d.fw_version, d.iccid, d.last_seen_ms, \
                 d.created_ms, (SELECT MAX(j.id) FROM jobs j \
                 WHERE j.device_id = d.id) AS job_id FROM devices d",
        table: "devices",
        alias: "d.",
        key: if by_id { "id" } else { "imei" },
        int_key: by_id,
        desc: false,
        indexed,
        filters,
    };
    (spec, problem)
}

/// `GET /ui/devices`: every device, by IMEI, 50 a page; search by IMEI prefix; filters.
pub async fn devices(
    who: Ui,
    State(s): State<AppState>,
    Query(f): Query<DeviceFilter>,
) -> Result<Html<String>, PageError> {
    let now = now_ms();
    let (spec, problem) = device_spec(&f, now);
    let cur = cursor(&f.after, &f.before);
    let l = read::page(&s.db, &spec, &cur).await?;
    // The newest job of each device shown, with its campaign: one query for the page.
    let job_ids: Vec<i64> = l
        .rows
        .iter()
        .filter_map(|r| r.opt_i64("job_id").ok().flatten())
        .collect();
    let mut jobs = std::collections::HashMap::new();
    if !job_ids.is_empty() {
        let marks = vec!["?"; job_ids.len()].join(", ");
        let vals: Vec<Val> = job_ids.iter().map(|i| Val::I(*i)).collect();
        for r in read::fetch(
            &s.db,
            &format!(
                "SELECT j.id, j.state, c.id AS campaign_id, c.name FROM jobs j \
                 JOIN campaigns c ON c.id = j.campaign_id WHERE j.id IN ({marks})"
            ),
            &vals,
        )
        .await?
        {
            jobs.insert(
                r.i64("id")?,
                (r.i64("campaign_id")?, r.text("name")?, r.text("state")?),
            );
        }
    }
    let rows = l
        .rows
        .iter()
        .map(|r| {
            Ok(DeviceRow {
                imei: r.text("imei")?,
                model: r.opt_text("model")?.unwrap_or_default(),
                version: r.opt_text("fw_version")?.unwrap_or_default(),
                iccid: r.opt_text("iccid")?,
                last_seen: When::opt(now, r.opt_i64("last_seen_ms")?),
                registered: When::at(now, r.i64("created_ms")?),
                job: r.opt_i64("job_id")?.and_then(|id| jobs.get(&id).cloned()),
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    let base = with_query(
        "/ui/devices",
        &[
            ("q", &f.q),
            ("model", &f.model),
            ("version", &f.version),
            ("group", &f.group),
            ("seen", &f.seen),
            ("card", &f.card),
        ],
    );
    let pager = Pager::of(&l, &base, &cur);
    let total = read::fetch(&s.db, "SELECT COUNT(*) AS n FROM devices", &[])
        .await?
        .first()
        .map(|r| r.i64("n"))
        .transpose()?
        .unwrap_or(0);
    let groups = read::fetch(
        &s.db,
        "SELECT name FROM device_groups ORDER BY name LIMIT 200",
        &[],
    )
    .await?
    .iter()
    .map(|r| r.text("name"))
    .collect::<Result<_, _>>()?;
    render(&DevicesPage {
        who,
        section: "devices",
        f,
        problem,
        total,
        groups,
        rows,
        pager,
    })
}

/// A job as a row of a device's history or a campaign's job list.
#[derive(Clone)]
pub struct JobRow {
    id: i64,
    imei: String,
    campaign_id: i64,
    campaign: String,
    release: String,
    wave: i64,
    state: String,
    /// Why it failed, in words (failed jobs only).
    reason: Option<String>,
    /// A note for a job that did not fail (why it was offered again, ...).
    note: Option<String>,
    result_code: Option<i64>,
    receipt: String,
    deliveries: i64,
    updated: When,
    /// The update id (hex) whose proof can be downloaded.
    proof: Option<String>,
}

/// A job's columns as its rows show them: the IMEI and the reason in words are the job's own
/// (a job outlives its device, and its reason is what the failure breakdown counts).
const JOB_COLUMNS: &str = "j.id, j.campaign_id, j.wave, j.state, j.result_code, j.detail, \
     j.reason, j.receipt_status, j.deliveries, j.updated_ms, j.update_id, j.device_imei AS imei";

fn job_row(r: &AnyRow, now: i64) -> Result<JobRow, ServerError> {
    let state = r.text("state")?;
    let detail = r.opt_text("detail")?;
    let result_code = r.opt_i64("result_code")?;
    let reason = (state == "failed").then(|| {
        failure_words(
            read::opt_col_text(r, "reason").ok().flatten().as_deref(),
            None,
            result_code,
            detail.as_deref(),
        )
    });
    let receipt = r.opt_text("receipt_status")?.unwrap_or_default();
    let proof = r
        .opt_bytes("update_id")?
        .filter(|_| receipt == "verified")
        .map(hex::encode);
    let release = match (
        read::opt_col_text(r, "package_name")?,
        read::opt_col_text(r, "package_version")?,
    ) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        _ => String::new(),
    };
    Ok(JobRow {
        id: r.i64("id")?,
        imei: r.text("imei")?,
        campaign_id: r.i64("campaign_id")?,
        campaign: read::opt_col_text(r, "campaign_name")?.unwrap_or_default(),
        release,
        wave: r.i64("wave")? + 1,
        state,
        note: if reason.is_none() { detail } else { None },
        reason,
        result_code,
        receipt,
        deliveries: r.i64("deliveries")?,
        updated: When::at(now, r.i64("updated_ms")?),
        proof,
    })
}

/// A card-log entry as a row, with its dates.
pub struct LogRow {
    seq: i64,
    event: String,
    /// The refusal by name, the free-device or consent flag, other event details.
    details: String,
    release: String,
    server: String,
    imei: String,
    result: String,
    /// The card's trusted time when it wrote the entry (newest verified token's `iat`).
    card_time: Option<When>,
    /// The time the device gave (not trusted).
    device_time: Option<String>,
    /// When the server stored the verified entry.
    stored: When,
}

fn log_row(r: &AnyRow, now: i64) -> Result<LogRow, ServerError> {
    use simfota_wire::{Event, LogEntry};
    let raw = r.bytes("raw")?;
    let decoded = LogEntry::decode(&raw).ok();
    let deny = r
        .opt_i64("deny_code")?
        .and_then(|c| u16::try_from(c).ok())
        .map(|c| crate::cardlog::deny_reason_name(simfota_wire::DenyReason(c)));
    let pin = r.opt_i64("consent_pin")?.map(|p| p != 0);
    let details = match (deny, pin) {
        (Some(d), _) => format!("refused: {d}"),
        (None, Some(true)) => "user confirmed with PIN".to_owned(),
        (None, Some(false)) => "user confirmed".to_owned(),
        (None, None) if r.i64("free_device")? != 0 => {
            "free device: server not authorized, policy allows".to_owned()
        }
        (None, None) => r.opt_text("detail")?.unwrap_or_default(),
    };
    let details = match decoded.as_ref().map(|e| e.event) {
        Some(Event::Refusals(t)) => format!(
            "refusals counted: {}",
            t.counts()
                .iter()
                .map(|(reason, n)| format!("{n} × {}", crate::cardlog::deny_reason_name(*reason)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => details,
    };
    let claimed: Vec<&str> = decoded
        .as_ref()
        .and_then(crate::cardlog::unverified_fields)
        .unwrap_or_default();
    // A claim the card did not verify is shown as such, never as a fact.
    let mark = |v: Option<String>, field: &str| match v {
        Some(v) if claimed.contains(&field) => format!("{v} (claimed, unverified)"),
        v => v.unwrap_or_default(),
    };
    let release = [r.opt_text("release_name")?, r.opt_text("release_version")?]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    // Card and device times are seconds (the token's `iat`, the device's clock).
    let secs = |v: Option<i64>| v.filter(|t| *t > 0).map(|t| t.saturating_mul(1000));
    Ok(LogRow {
        seq: r.i64("seq")?,
        event: r.text("event")?,
        details,
        release,
        server: mark(r.opt_text("server_id")?, "server_id"),
        imei: mark(r.opt_text("imei")?, "imei"),
        result: r
            .opt_i64("fumo_result")?
            .map(|v| v.to_string())
            .unwrap_or_default(),
        card_time: When::opt(now, secs(r.opt_i64("trusted_time")?)),
        device_time: secs(r.opt_i64("device_time")?).map(super::time::utc),
        stored: When::at(now, r.i64("stored_ms")?),
    })
}

/// One page of a card's log, newest first.
async fn log_page(
    s: &AppState,
    card_id: i64,
    cur: &Cursor,
    base: &str,
) -> Result<(Vec<LogRow>, Pager), PageError> {
    let now = now_ms();
    let spec = Spec {
        select: "SELECT e.* FROM card_log_entries e",
        table: "card_log_entries",
        alias: "e.",
        key: "seq",
        int_key: true,
        desc: true,
        indexed: vec![("{a}card_id = ?".into(), vec![Val::I(card_id)])],
        filters: vec![],
    };
    let l = read::page(&s.db, &spec, cur).await?;
    let rows = l
        .rows
        .iter()
        .map(|r| log_row(r, now))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, Pager::of(&l, base, cur)))
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    who: Ui,
    section: &'static str,
    device: crate::registry::Device,
    registered: When,
    last_seen: Option<When>,
    current: Option<JobRow>,
    jobs: Vec<JobRow>,
    card_id: Option<i64>,
    entries: Vec<LogRow>,
    pager: Pager,
}

/// Jobs of one device shown on its page (newest first).
const DEVICE_JOBS_SHOWN: i64 = 100;

/// Where a page of a card's log starts (device and card pages).
#[derive(Debug, Default, Deserialize)]
pub struct LogCursor {
    after: Option<String>,
    before: Option<String>,
}

/// `GET /ui/devices/{imei}`: the device, its running firmware, when it was last seen, its
/// jobs and campaigns, its card's log.
pub async fn device(
    who: Ui,
    State(s): State<AppState>,
    Path(imei): Path<String>,
    Query(c): Query<LogCursor>,
) -> Result<Html<String>, PageError> {
    let now = now_ms();
    let device = crate::registry::get_device(&mut *s.db.conn().await?, &imei).await?;
    let created = read::fetch(
        &s.db,
        "SELECT created_ms FROM devices WHERE id = ?",
        &[Val::I(device.id)],
    )
    .await?
    .first()
    .map(|r| r.i64("created_ms"))
    .transpose()?
    .unwrap_or(0);
    let jobs = read::fetch(
        &s.db,
        &format!(
            "SELECT {JOB_COLUMNS}, c.name AS campaign_name, p.name AS package_name, \
             p.version AS package_version FROM jobs j JOIN campaigns c ON c.id = j.campaign_id \
             LEFT JOIN packages p ON p.id = c.package_id WHERE j.device_imei = ? \
             ORDER BY j.id DESC LIMIT {DEVICE_JOBS_SHOWN}"
        ),
        &[Val::T(device.imei.clone())],
    )
    .await?
    .iter()
    .map(|r| job_row(r, now))
    .collect::<Result<Vec<_>, _>>()?;
    let current = jobs
        .iter()
        .find(|j| matches!(j.state.as_str(), "pending" | "delivered" | "waiting"))
        .cloned();
    let card_id = match &device.iccid {
        Some(i) => read::fetch(
            &s.db,
            "SELECT id FROM cards WHERE iccid = ?",
            &[Val::T(i.clone())],
        )
        .await?
        .first()
        .map(|r| r.i64("id"))
        .transpose()?,
        None => None,
    };
    let base = format!("/ui/devices/{}", url_encode(&device.imei));
    let cur = cursor(&c.after, &c.before);
    let (entries, pager) = match card_id {
        Some(id) => log_page(&s, id, &cur, &base).await?,
        None => (
            Vec::new(),
            Pager {
                prev: None,
                next: None,
                first: None,
                window_ended: false,
            },
        ),
    };
    render(&DevicePage {
        who,
        section: "devices",
        registered: When::at(now, created),
        last_seen: When::opt(now, device.last_seen_ms),
        device,
        current,
        jobs,
        card_id,
        entries,
        pager,
    })
}

// ---- Cards ----

/// Filters of the card list.
#[derive(Debug, Default, Deserialize)]
pub struct CardFilter {
    /// ICCID prefix.
    q: Option<String>,
    /// `problem`: a certificate that did not verify or a log with a gap or fork.
    status: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

impl CardFilter {
    fn q(&self) -> &str {
        self.q.as_deref().unwrap_or("")
    }
    fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("")
    }
}

/// A card as a row of the list.
pub struct CardRow {
    iccid: String,
    imsi: String,
    cert_status: String,
    log_status: String,
    log_head: Option<i64>,
    acked: Option<i64>,
    last_entry: Option<When>,
    updated: When,
}

#[derive(Template)]
#[template(path = "cards.html")]
struct CardsPage {
    who: Ui,
    section: &'static str,
    f: CardFilter,
    problem: Option<String>,
    rows: Vec<CardRow>,
    pager: Pager,
}

/// `GET /ui/cards`: every card, by ICCID; search by ICCID prefix; cards with a problem.
pub async fn cards(
    who: Ui,
    State(s): State<AppState>,
    Query(f): Query<CardFilter>,
) -> Result<Html<String>, PageError> {
    let now = now_ms();
    let mut problem = None;
    let mut indexed: Vec<Cond> = Vec::new();
    let mut filters: Vec<Cond> = Vec::new();
    if let Some(q) = given(&f.q) {
        if q.len() > 20 || !q.bytes().all(|b| b.is_ascii_digit()) {
            problem = Some("Search by ICCID: up to 20 digits, the start of the ICCID.".into());
            indexed.push(("1 = 0".into(), vec![]));
        } else {
            indexed.push(("{a}iccid >= ?".into(), vec![Val::T(q.to_owned())]));
            if let Some(end) = read::digits_end(q) {
                indexed.push(("{a}iccid < ?".into(), vec![Val::T(end)]));
            }
        }
    }
    if given(&f.status) == Some("problem") {
        filters.push((
            "({a}cert_status <> 'verified' OR {a}log_status <> 'ok')".into(),
            vec![],
        ));
    }
    let spec = Spec {
        select: "SELECT c.iccid, c.imsi, c.cert_status, c.log_status, c.log_head_seq, \
                 c.acked_seq, c.updated_ms, (SELECT e.stored_ms FROM card_log_entries e \
                 WHERE e.card_id = c.id ORDER BY e.seq DESC LIMIT 1) AS last_entry_ms \
                 FROM cards c",
        table: "cards",
        alias: "c.",
        key: "iccid",
        int_key: false,
        desc: false,
        indexed,
        filters,
    };
    let cur = cursor(&f.after, &f.before);
    let l = read::page(&s.db, &spec, &cur).await?;
    let rows = l
        .rows
        .iter()
        .map(|r| {
            Ok(CardRow {
                iccid: r.text("iccid")?,
                imsi: r.opt_text("imsi")?.unwrap_or_default(),
                cert_status: r.text("cert_status")?,
                log_status: r.text("log_status")?,
                log_head: r.opt_i64("log_head_seq")?,
                acked: r.opt_i64("acked_seq")?,
                last_entry: When::opt(now, r.opt_i64("last_entry_ms")?),
                updated: When::at(now, r.i64("updated_ms")?),
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    let base = with_query("/ui/cards", &[("q", &f.q), ("status", &f.status)]);
    let pager = Pager::of(&l, &base, &cur);
    render(&CardsPage {
        who,
        section: "cards",
        f,
        problem,
        rows,
        pager,
    })
}

/// An authorized server as the card lists it.
pub struct ServerRow {
    id: String,
    rights: String,
    key: String,
}

/// A trusted originator as the card lists it.
pub struct OriginatorRow {
    id: String,
    key: String,
}

/// An issuer admin command queued for the card.
pub struct AdminRow {
    counter: u64,
    state: String,
    note: String,
    result: String,
    queued: When,
    sent: Option<When>,
    done: Option<When>,
}

/// The first bytes of a key (hex) for display: enough to tell keys apart.
fn key_prefix(v: &serde_json::Value) -> String {
    let k = v["key"].as_str().unwrap_or_default();
    // SEC1 uncompressed keys start with 04; the X coordinate's head tells them apart.
    format!("{}…", k.get(..18).unwrap_or(k))
}

fn rights_text(e: &serde_json::Value) -> String {
    e["rights"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x.as_str())
                .map(|x| x.replace('_', " "))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn policy_lines(p: &serde_json::Value) -> Vec<(String, String)> {
    let text = |k: &str| p[k].as_str().unwrap_or("?").replace('_', " ");
    let mut lines = vec![
        ("Unauthorized servers".to_owned(), text("unauthorized")),
        ("Integrity check".to_owned(), text("integrity")),
    ];
    if let Some(max) = p["card_digest_max_bytes"].as_u64() {
        lines.push((
            "Card hashes payloads up to".to_owned(),
            format!("{max} bytes"),
        ));
    }
    let classes: Vec<String> = p["allowed_classes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "vendor {} / class {}",
                        c["vendor_id"].as_str().unwrap_or("?"),
                        c["class_id"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    lines.push((
        "Allowed device classes".to_owned(),
        if classes.is_empty() {
            "any".to_owned()
        } else {
            classes.join("; ")
        },
    ));
    lines
}

#[derive(Template)]
#[template(path = "card.html")]
struct CardPage {
    who: Ui,
    section: &'static str,
    card: crate::registry::Card,
    updated: When,
    lists_read: Option<When>,
    servers: Option<Vec<ServerRow>>,
    originators: Option<Vec<OriginatorRow>>,
    /// Policy lines: (what, value).
    policy: Option<Vec<(String, String)>>,
    devices: Vec<(String, Option<When>)>,
    admin: Vec<AdminRow>,
    consents: i64,
    /// When the server stored the export page that stated the PIN counter shown.
    pin_reported: Option<When>,
    entries: Vec<LogRow>,
    pager: Pager,
}

/// Devices listed as holding one card, at most.
const CARD_DEVICES_SHOWN: i64 = 20;

/// `GET /ui/cards/{iccid}`: certificate and log status, the devices holding it, its lists and
/// policy as last read, its admin queue, its verified log with dates, the evidence export.
pub async fn card(
    who: Ui,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
    Query(c): Query<LogCursor>,
) -> Result<Html<String>, PageError> {
    let now = now_ms();
    let card = crate::registry::get_card(&mut *s.db.conn().await?, &iccid).await?;
    let times = read::fetch(
        &s.db,
        "SELECT updated_ms, lists_read_ms FROM cards WHERE id = ?",
        &[Val::I(card.id)],
    )
    .await?;
    let t = times
        .first()
        .ok_or_else(|| ServerError::NotFound(format!("card {iccid}")))?;
    let servers = card.servers.as_ref().and_then(|v| v.as_array()).map(|a| {
        a.iter()
            .map(|e| ServerRow {
                id: e["id"].as_str().unwrap_or("?").to_owned(),
                rights: rights_text(e),
                key: key_prefix(e),
            })
            .collect()
    });
    let originators = card
        .originators
        .as_ref()
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|e| OriginatorRow {
                    id: e["id"].as_str().unwrap_or("?").to_owned(),
                    key: key_prefix(e),
                })
                .collect()
        });
    let policy = card.policy.as_ref().map(policy_lines);
    let devices = read::fetch(
        &s.db,
        &format!(
            "SELECT imei, last_seen_ms FROM devices WHERE iccid = ? ORDER BY imei \
             LIMIT {CARD_DEVICES_SHOWN}"
        ),
        &[Val::T(iccid.clone())],
    )
    .await?
    .iter()
    .map(|r| Ok((r.text("imei")?, When::opt(now, r.opt_i64("last_seen_ms")?))))
    .collect::<Result<Vec<_>, ServerError>>()?;
    let counters: std::collections::HashMap<i64, u64> = crate::admin::list(&s, &iccid)
        .await?
        .into_iter()
        .map(|q| (q.id, q.counter))
        .collect();
    let admin = read::fetch(
        &s.db,
        "SELECT id, note, state, result, created_ms, sent_ms, done_ms FROM admin_queue \
         WHERE card_id = ? ORDER BY id DESC LIMIT 100",
        &[Val::I(card.id)],
    )
    .await?
    .iter()
    .map(|r| {
        let id = r.i64("id")?;
        Ok(AdminRow {
            counter: counters.get(&id).copied().unwrap_or(0),
            state: r.text("state")?,
            note: r.opt_text("note")?.unwrap_or_default(),
            result: r
                .opt_bytes("result")?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            queued: When::at(now, r.i64("created_ms")?),
            sent: When::opt(now, r.opt_i64("sent_ms")?),
            done: When::opt(now, r.opt_i64("done_ms")?),
        })
    })
    .collect::<Result<Vec<_>, ServerError>>()?;
    let consents = read::fetch(
        &s.db,
        "SELECT COUNT(*) AS n FROM card_log_entries WHERE card_id = ? AND consent_pin = 1",
        &[Val::I(card.id)],
    )
    .await?
    .first()
    .map(|r| r.i64("n"))
    .transpose()?
    .unwrap_or(0);
    let pin_reported = When::opt(now, card.pin.as_ref().map(|p| p.reported_ms));
    let base = format!("/ui/cards/{}", url_encode(&card.iccid));
    let cur = cursor(&c.after, &c.before);
    let (entries, pager) = log_page(&s, card.id, &cur, &base).await?;
    render(&CardPage {
        who,
        section: "cards",
        updated: When::at(now, t.i64("updated_ms")?),
        lists_read: When::opt(now, t.opt_i64("lists_read_ms")?),
        card,
        servers,
        originators,
        policy,
        devices,
        admin,
        consents,
        pin_reported,
        entries,
        pager,
    })
}

// ---- Packages ----

/// Filters of the package list.
#[derive(Debug, Default, Deserialize)]
pub struct PackageFilter {
    /// Part of the release name.
    q: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

impl PackageFilter {
    fn q(&self) -> &str {
        self.q.as_deref().unwrap_or("")
    }
}

/// A package as a row.
pub struct PackageRow {
    id: i64,
    release: String,
    originator: String,
    sequence: i64,
    size: String,
    digest: String,
    campaigns: i64,
    uploaded: When,
    deleted: Option<When>,
}

#[derive(Template)]
#[template(path = "packages.html")]
struct PackagesPage {
    who: Ui,
    section: &'static str,
    f: PackageFilter,
    rows: Vec<PackageRow>,
    pager: Pager,
}

/// `GET /ui/packages`: packages, newest first; search by release name.
pub async fn packages(
    who: Ui,
    State(s): State<AppState>,
    Query(f): Query<PackageFilter>,
) -> Result<Html<String>, PageError> {
    let now = now_ms();
    let mut filters: Vec<Cond> = Vec::new();
    if let Some(q) = given(&f.q) {
        filters.push((
            "LOWER({a}name) LIKE ? ESCAPE '\\'".into(),
            vec![Val::T(read::like_anywhere(q))],
        ));
    }
    let spec = Spec {
        select: "SELECT p.id, p.name, p.version, p.originator, p.sequence, p.image_size, \
                 p.image_digest, p.created_ms, p.deleted_ms, (SELECT COUNT(*) FROM campaigns c \
                 WHERE c.package_id = p.id) AS campaigns FROM packages p",
        table: "packages",
        alias: "p.",
        key: "id",
        int_key: true,
        desc: true,
        indexed: vec![],
        filters,
    };
    let cur = cursor(&f.after, &f.before);
    let l = read::page(&s.db, &spec, &cur).await?;
    let rows = l
        .rows
        .iter()
        .map(|r| {
            Ok(PackageRow {
                id: r.i64("id")?,
                release: format!("{} {}", r.text("name")?, r.text("version")?),
                originator: r.text("originator")?,
                sequence: r.i64("sequence")?,
                size: human_size(r.i64("image_size")?),
                digest: hex::encode(r.bytes("image_digest")?)
                    .get(..16)
                    .unwrap_or_default()
                    .to_owned(),
                campaigns: r.i64("campaigns")?,
                uploaded: When::at(now, r.i64("created_ms")?),
                deleted: When::opt(now, read::opt_col_i64(r, "deleted_ms")?),
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    let base = with_query("/ui/packages", &[("q", &f.q)]);
    let pager = Pager::of(&l, &base, &cur);
    render(&PackagesPage {
        who,
        section: "packages",
        f,
        rows,
        pager,
    })
}

// ---- Campaigns ----

/// Filters of the campaign list.
#[derive(Debug, Default, Deserialize)]
pub struct CampaignFilter {
    /// Part of the name.
    q: Option<String>,
    /// A state.
    state: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

impl CampaignFilter {
    fn q(&self) -> &str {
        self.q.as_deref().unwrap_or("")
    }
    fn state(&self) -> &str {
        self.state.as_deref().unwrap_or("")
    }
}

const CAMPAIGN_STATES: [&str; 5] = ["running", "paused", "halted", "completed", "cancelled"];

#[derive(Template)]
#[template(path = "campaigns.html")]
struct CampaignsPage {
    who: Ui,
    section: &'static str,
    f: CampaignFilter,
    states: [&'static str; 5],
    rows: Vec<CampaignRow>,
    pager: Pager,
}

/// `GET /ui/campaigns`: campaigns, newest first, with their progress; by state, by name.
pub async fn campaigns(
    who: Ui,
    State(s): State<AppState>,
    Query(f): Query<CampaignFilter>,
) -> Result<Html<String>, PageError> {
    let now = now_ms();
    let mut filters: Vec<Cond> = Vec::new();
    if let Some(q) = given(&f.q) {
        filters.push((
            "LOWER({a}name) LIKE ? ESCAPE '\\'".into(),
            vec![Val::T(read::like_anywhere(q))],
        ));
    }
    let mut indexed: Vec<Cond> = Vec::new();
    if let Some(st) = given(&f.state) {
        indexed.push(("{a}state = ?".into(), vec![Val::T(st.to_owned())]));
    }
    let spec = Spec {
        select: CAMPAIGN_SELECT,
        table: "campaigns",
        alias: "c.",
        key: "id",
        int_key: true,
        desc: true,
        indexed,
        filters,
    };
    let cur = cursor(&f.after, &f.before);
    let l = read::page(&s.db, &spec, &cur).await?;
    let rows = l
        .rows
        .iter()
        .map(|r| campaign_row(r, now))
        .collect::<Result<Vec<_>, _>>()?;
    let base = with_query("/ui/campaigns", &[("q", &f.q), ("state", &f.state)]);
    let pager = Pager::of(&l, &base, &cur);
    render(&CampaignsPage {
        who,
        section: "campaigns",
        f,
        states: CAMPAIGN_STATES,
        rows,
        pager,
    })
}

/// What the campaign page and its live fragment show of a campaign.
pub struct CampaignView {
    row: CampaignRow,
    package_id: i64,
    targets: String,
    waves_text: String,
    thresholds: String,
    card: String,
    /// Other settings, as (what, value): deadline, window, failure limit when set.
    settings: Vec<(String, String)>,
    /// Still moving: the page refreshes its progress.
    live: bool,
    may_pause: bool,
    may_resume: bool,
    may_cancel: bool,
    /// Failed jobs may be offered again (not once cancelled or past the deadline).
    may_retry: bool,
    /// The overall bar.
    bar: String,
    legend: String,
    waves: String,
    counts: Counts,
}

impl CampaignView {
    fn pending(&self) -> i64 {
        self.counts.get("pending") + self.counts.get("waiting")
    }
}

async fn campaign_view(s: &AppState, id: i64) -> Result<CampaignView, PageError> {
    let now = now_ms();
    let rows = read::fetch(
        &s.db,
        &format!("{CAMPAIGN_SELECT} WHERE c.id = ?"),
        &[Val::I(id)],
    )
    .await?;
    let r = rows
        .first()
        .ok_or_else(|| ServerError::NotFound(format!("campaign {id}")))?;
    let row = campaign_row(r, now)?;
    let waves: Vec<u8> = serde_json::from_str(&r.text("waves")?).unwrap_or_default();
    // Per wave and state: the counts kept with the campaign, changed with each job.
    let mut per_wave: Vec<Counts> = vec![Counts::default(); waves.len().max(1)];
    let mut counts = Counts::default();
    for w in read::fetch(
        &s.db,
        "SELECT * FROM campaign_waves WHERE campaign_id = ? ORDER BY wave",
        &[Val::I(id)],
    )
    .await?
    {
        let i = usize::try_from(w.i64("wave")?).unwrap_or(0);
        if per_wave.len() <= i {
            per_wave.resize(i + 1, Counts::default());
        }
        for state in JOB_STATES {
            let n = w.i64(state)?;
            per_wave[i].add(state, n);
            counts.add(state, n);
        }
    }
    let current_wave = r.i64("current_wave")?;
    let bars: Vec<WaveBar> = per_wave
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let share = waves
                .get(i)
                .map(|p| format!(" · to {p}%"))
                .unwrap_or_default();
            let released = i64::try_from(i).unwrap_or(0) <= current_wave;
            WaveBar {
                label: format!("Wave {}{share}", i + 1),
                released,
                segments: c.segments(),
            }
        })
        .collect();
    let state = row.state.clone();
    let targets = [
        r.opt_text("target_model")?.map(|m| format!("model {m}")),
        r.opt_text("target_fw")?.map(|v| format!("firmware {v}")),
        r.opt_text("target_group")?.map(|g| format!("group {g}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    let mut settings = Vec::new();
    if let Some(d) = read::opt_col_i64(r, "deadline_ms")? {
        let w = When::at(now, d);
        settings.push(("Deadline".to_owned(), format!("{} UTC ({})", w.abs, w.rel)));
    }
    if let (Some(a), Some(b)) = (
        read::opt_col_i64(r, "window_start")?,
        read::opt_col_i64(r, "window_end")?,
    ) {
        let hm = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(60));
        settings.push((
            "Maintenance window".to_owned(),
            format!("{}–{} UTC, daily", hm(a), hm(b)),
        ));
    }
    if let Some(p) = read::opt_col_i64(r, "max_failure_pct")? {
        settings.push((
            "Pauses itself when a wave's failures exceed".to_owned(),
            format!("{p}%"),
        ));
    }
    let segments = counts.segments();
    Ok(CampaignView {
        package_id: r.i64("package_id")?,
        targets: if targets.is_empty() {
            "every device".to_owned()
        } else {
            targets.join(", ")
        },
        waves_text: waves
            .iter()
            .map(|w| format!("{w}%"))
            .collect::<Vec<_>>()
            .join(" → "),
        thresholds: format!(
            "next wave at {}% succeeded · halts at {}% failed",
            r.i64("success_threshold")?,
            r.i64("error_threshold")?
        ),
        card: r.text("card")?,
        settings,
        live: matches!(state.as_str(), "running" | "paused" | "halted"),
        may_pause: state == "running",
        may_resume: matches!(state.as_str(), "paused" | "halted"),
        may_cancel: matches!(state.as_str(), "running" | "paused" | "halted"),
        may_retry: state != "cancelled"
            && read::opt_col_i64(r, "deadline_ms")?.is_none_or(|d| d > now),
        bar: chart::bar(&segments, 760, 22),
        // The legend names what there is; succeeded and failed always (a zero there is news).
        legend: chart::legend(
            &segments
                .iter()
                .filter(|g| g.count > 0 || matches!(g.label, "succeeded" | "failed"))
                .cloned()
                .collect::<Vec<_>>(),
        ),
        waves: chart::waves(&bars),
        counts,
        row,
    })
}

/// Filters of a campaign's job list.
#[derive(Debug, Default, Deserialize)]
pub struct JobFilter {
    /// A job state.
    state: Option<String>,
    /// A failure reason, in the words the breakdown shows.
    reason: Option<String>,
    /// A wave (1-based, as shown).
    wave: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

impl JobFilter {
    fn state(&self) -> &str {
        self.state.as_deref().unwrap_or("")
    }
    fn wave(&self) -> &str {
        self.wave.as_deref().unwrap_or("")
    }
    fn reason(&self) -> Option<&str> {
        given(&self.reason)
    }
}

const JOB_STATES: [&str; 7] = [
    "waiting",
    "pending",
    "delivered",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
];

#[derive(Template)]
#[template(path = "campaign.html")]
struct CampaignPage {
    who: Ui,
    section: &'static str,
    v: CampaignView,
    timeline: Timeline,
    failures: Vec<(String, i64)>,
    failures_chart: String,
    f: JobFilter,
    job_states: [&'static str; 7],
    jobs: Vec<JobRow>,
    pager: Pager,
}

#[derive(Template)]
#[template(path = "progress.html")]
struct ProgressFragment {
    who: Ui,
    v: CampaignView,
}

/// Failed jobs of a campaign by reason in words, most frequent first (the counts kept with the
/// campaign, changed with each job: no pass over the jobs).
async fn failure_breakdown(s: &AppState, id: i64) -> Result<Vec<(String, i64)>, PageError> {
    read::fetch(
        &s.db,
        "SELECT reason, n FROM campaign_failures WHERE campaign_id = ? AND n > 0 \
         ORDER BY n DESC, reason",
        &[Val::I(id)],
    )
    .await?
    .iter()
    .map(|r| Ok((r.text("reason")?, r.i64("n")?)))
    .collect::<Result<_, ServerError>>()
    .map_err(PageError)
}

/// Campaigns with more jobs than this have their progress over time drawn from a sample.
const TIMELINE_EXACT_MAX: i64 = 50_000;
/// About how many jobs such a sample holds.
const TIMELINE_SAMPLE: i64 = 20_000;

/// The smallest prime at least `n` (2 at least).
fn prime_from(n: i64) -> i64 {
    let is_prime = |p: i64| p >= 2 && (2..).take_while(|d| d * d <= p).all(|d| p % d != 0);
    (n.max(2)..).find(|p| is_prime(*p)).unwrap_or(n)
}

/// A campaign's jobs (those of the sample: device id a multiple of the stride), grouped by
/// their state and the steps of the picture in which each was offered, delivered and ended
/// (parameters: the start and the step length, three times; the campaign; the stride).
///
/// What is recorded: a job of a later wave was offered when its wave was released
/// (`released_ms`), one of the first wave when the campaign was created; `delivered_ms` is its
/// latest delivery, which counts only for a job delivered or finished now (a job offered
/// again keeps the time of a delivery that is over); a finished job ended at its last change.
/// A job released or delivered before those times were recorded has them NULL: a pending or
/// delivered job's last change stands in for the missing one (it is that time), the others
/// are counted in `unrecorded` and show from the first time known.
///
/// `device_id >= 0` (every id) names the campaign's `(campaign_id, device_id)` index to the
/// planner: the stride is checked in the index, and only the sampled rows are read from the
/// table.
const TIMELINE_SQL: &str = "SELECT \
     (COALESCE(released_ms, CASE WHEN wave = 0 THEN created_ms \
          WHEN state = 'pending' THEN updated_ms END) - ?) / ? AS offered, \
     (CASE WHEN state = 'delivered' THEN COALESCE(delivered_ms, updated_ms) \
          WHEN state IN ('succeeded', 'failed') THEN delivered_ms END - ?) / ? AS delivered, \
     (CASE WHEN state IN ('succeeded', 'failed', 'cancelled', 'skipped') THEN updated_ms END \
          - ?) / ? AS ended, \
     state, COUNT(*) AS n, MAX(updated_ms) AS latest, \
     SUM(CASE WHEN deliveries > 0 AND state IN ('delivered', 'succeeded', 'failed') \
          AND ((delivered_ms IS NULL AND state <> 'delivered') \
               OR (released_ms IS NULL AND wave > 0)) THEN 1 ELSE 0 END) AS unrecorded \
     FROM jobs WHERE campaign_id = ? AND device_id >= 0 AND device_id % ? = 0 \
     GROUP BY offered, delivered, ended, state";

/// How a finished job ended, as the progress over time counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    /// Cancelled or skipped: counted no more.
    Neither,
}

/// Jobs that went the same way: offered, delivered and ended in the same steps of the
/// picture (numbered from the campaign's start; `None`: not, or not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Passage {
    offered: Option<i64>,
    delivered: Option<i64>,
    ended: Option<i64>,
    /// How they ended, when they did.
    outcome: Outcome,
    /// How many jobs.
    n: i64,
}

/// The jobs in each state after each step in which any changed, from `passages` (step `b`
/// ends at `start + (b + 1) * step`; a step before the start counts as the first). A job is
/// pending from its offer, in progress from its delivery, and counted by its outcome from
/// its end. A step it has no time for is passed over (a job that failed before any delivery
/// goes from pending to failed; one whose offer is not known shows from its delivery), and a
/// step never comes before the one it follows (a delivery recorded before its offer, by
/// replicas whose clocks differ, counts as the offer too), so no count goes negative.
fn progress_series(passages: &[Passage], start: i64, step: i64) -> Vec<Point> {
    let sooner = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // The changes in each step, as a point of differences.
    let mut changes: std::collections::BTreeMap<i64, Point> = std::collections::BTreeMap::new();
    for p in passages {
        let n = p.n;
        let ended = p.ended.map(|b| b.max(0));
        let left_pending = sooner(p.delivered.map(|b| b.max(0)), ended);
        let Some(offered) = sooner(p.offered.map(|b| b.max(0)), left_pending) else {
            continue;
        };
        changes.entry(offered).or_default().pending += n;
        if let Some(b) = left_pending {
            let c = changes.entry(b).or_default();
            c.pending -= n;
            c.in_progress += n;
        }
        if let Some(b) = ended {
            let c = changes.entry(b).or_default();
            c.in_progress -= n;
            match p.outcome {
                Outcome::Succeeded => c.succeeded += n,
                Outcome::Failed => c.failed += n,
                Outcome::Neither => {}
            }
        }
    }
    let mut now = Point::default();
    changes
        .into_iter()
        .map(|(b, c)| {
            now.succeeded += c.succeeded;
            now.failed += c.failed;
            now.in_progress += c.in_progress;
            now.pending += c.pending;
            Point {
                t_ms: start.saturating_add(b.saturating_add(1).saturating_mul(step)),
                ..now
            }
        })
        .collect()
}

/// The progress over time as the campaign page shows it.
struct Timeline {
    /// The picture.
    svg: String,
    /// Its legend, with the counts at its right edge.
    legend: String,
    /// Drawn from one job in this many.
    sampled: Option<i64>,
    /// How many jobs were released or delivered before those times were recorded (an
    /// estimate when sampled), in words (`1 job was`, `1 200 jobs were`), if any.
    unrecorded: Option<String>,
}

/// Progress over time: how many jobs were pending, in progress, succeeded and failed at each
/// moment since the start, every wave together. A large campaign is drawn from one job in `k`
/// (by device id, from the campaign's own index), scaled to the campaign's size, with the
/// counts kept with the campaign (`current`) at the right edge; the page says so.
async fn progress_over_time(
    s: &AppState,
    id: i64,
    (start, updated, live): (i64, i64, bool),
    (total, current): (i64, Point),
) -> Result<Timeline, PageError> {
    let now = now_ms();
    let end = if live { now } else { updated.max(start + 1) };
    // Sixty steps over the campaign's life, a second at least.
    let step = ((end - start) / 60).max(1000);
    // A prime stride, so that no periodic pattern in device ids decides the sample.
    let k = if total > TIMELINE_EXACT_MAX {
        prime_from(total / TIMELINE_SAMPLE)
    } else {
        1
    };
    let rows = read::fetch(
        &s.db,
        TIMELINE_SQL,
        &[start, step, start, step, start, step, id, k].map(Val::I),
    )
    .await?;
    let (mut sampled, mut unrecorded, mut latest) = (0, 0, end);
    let mut passages = Vec::with_capacity(rows.len());
    for r in &rows {
        let n = r.i64("n")?;
        sampled += n;
        unrecorded += r.i64("unrecorded")?;
        latest = latest.max(r.i64("latest")?);
        passages.push(Passage {
            offered: r.opt_i64("offered")?,
            delivered: r.opt_i64("delivered")?,
            ended: r.opt_i64("ended")?,
            outcome: match r.text("state")?.as_str() {
                "succeeded" => Outcome::Succeeded,
                "failed" => Outcome::Failed,
                _ => Outcome::Neither,
            },
            n,
        });
    }
    // A result after a finished campaign's last change (a delivery of a cancelled campaign
    // reports later) widens the picture; the last step ends at the picture's end.
    let end = latest;
    let mut points: Vec<Point> = Vec::new();
    for p in progress_series(&passages, start, step) {
        let p = Point {
            t_ms: p.t_ms.min(end),
            ..p
        };
        match points.last_mut() {
            Some(last) if last.t_ms == p.t_ms => *last = p,
            _ => points.push(p),
        }
    }
    // A sample's counts scaled to the campaign's size; at the right edge, the exact counts.
    let scale = total as f64 / sampled.max(1) as f64;
    let scaled = |v: i64| (v as f64 * scale).round() as i64;
    if k > 1 {
        for p in &mut points {
            *p = Point {
                t_ms: p.t_ms,
                succeeded: scaled(p.succeeded),
                failed: scaled(p.failed),
                in_progress: scaled(p.in_progress),
                pending: scaled(p.pending),
            };
        }
        if points.last().is_some_and(|p| p.t_ms == end) {
            points.pop();
        }
        points.push(Point {
            t_ms: end,
            ..current
        });
        unrecorded = scaled(unrecorded);
    }
    let at_end = points.last().copied().unwrap_or_default();
    Ok(Timeline {
        svg: chart::timeline(start, end, total, &points),
        legend: chart::legend(&at_end.layers()),
        sampled: (k > 1).then_some(k),
        unrecorded: (unrecorded > 0).then(|| {
            let about = if k > 1 { "about " } else { "" };
            match unrecorded {
                1 => format!("{about}1 job was"),
                n => format!("{about}{} jobs were", chart::grouped(n)),
            }
        }),
    })
}

/// A campaign's job list, 50 a page.
const JOB_SELECT: &str = "SELECT j.id, j.campaign_id, j.wave, j.state, j.result_code, \
     j.detail, j.reason, j.receipt_status, j.deliveries, j.updated_ms, j.update_id, \
     j.device_imei AS imei, j.device_id FROM jobs j";

/// The job list of campaign `id` for the filters `f`.
fn job_spec(id: i64, f: &JobFilter) -> Result<Spec<'static>, ServerError> {
    // The campaign with a state or a reason is an index prefix (jobs by campaign, state or
    // reason, id); a wave is checked row by row.
    let mut indexed: Vec<Cond> = vec![("{a}campaign_id = ?".into(), vec![Val::I(id)])];
    let mut filters: Vec<Cond> = Vec::new();
    if let Some(st) = given(&f.state) {
        indexed.push(("{a}state = ?".into(), vec![Val::T(st.to_owned())]));
    }
    if let Some(r) = given(&f.reason) {
        indexed.push(("{a}reason = ?".into(), vec![Val::T(r.to_owned())]));
    }
    if let Some(w) = given(&f.wave) {
        let w: i64 = w
            .parse()
            .map_err(|_| ServerError::BadRequest("wave: a number".into()))?;
        filters.push(("{a}wave = ?".into(), vec![Val::I(w - 1)]));
    }
    // By job id within a state or a reason (their indexes end with the id); else by device,
    // the order of the campaign's own index (campaign, device): a million jobs are never
    // sorted for a page.
    let by_id = given(&f.state).is_some() || given(&f.reason).is_some();
    let spec = Spec {
        select: JOB_SELECT,
        table: "jobs",
        alias: "j.",
        key: if by_id { "id" } else { "device_id" },
        int_key: true,
        desc: false,
        indexed,
        filters,
    };
    Ok(spec)
}

/// `GET /ui/campaigns/{id}`: settings, progress by state and by wave, progress over time,
/// failures by reason, the operator's actions, the jobs.
pub async fn campaign(
    who: Ui,
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Query(f): Query<JobFilter>,
) -> Result<Html<String>, PageError> {
    let now = now_ms();
    let v = campaign_view(&s, id).await?;
    let times = read::fetch(
        &s.db,
        "SELECT created_ms, updated_ms FROM campaigns WHERE id = ?",
        &[Val::I(id)],
    )
    .await?;
    let t = times
        .first()
        .ok_or_else(|| ServerError::NotFound(format!("campaign {id}")))?;
    let current = Point {
        t_ms: now,
        succeeded: v.counts.get("succeeded"),
        failed: v.counts.get("failed"),
        in_progress: v.counts.get("in progress"),
        pending: v.counts.get("pending"),
    };
    let timeline = progress_over_time(
        &s,
        id,
        (t.i64("created_ms")?, t.i64("updated_ms")?, v.live),
        (v.row.total, current),
    )
    .await?;
    let failures = failure_breakdown(&s, id).await?;
    let failures_chart = if failures.is_empty() {
        String::new()
    } else {
        chart::reasons(&failures)
    };
    let spec = job_spec(id, &f)?;
    let cur = cursor(&f.after, &f.before);
    let l = read::page(&s.db, &spec, &cur).await?;
    let jobs = l
        .rows
        .iter()
        .map(|r| job_row(r, now))
        .collect::<Result<Vec<_>, _>>()?;
    let base = with_query(
        &format!("/ui/campaigns/{id}"),
        &[
            ("state", &f.state),
            ("reason", &f.reason),
            ("wave", &f.wave),
        ],
    );
    let pager = Pager::of(&l, &base, &cur);
    render(&CampaignPage {
        who,
        section: "campaigns",
        v,
        timeline,
        failures,
        failures_chart,
        f,
        job_states: JOB_STATES,
        jobs,
        pager,
    })
}

/// `GET /ui/campaigns/{id}/progress`: the live part of the campaign page (htmx swaps it in).
pub async fn progress(
    who: Ui,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Html<String>, PageError> {
    let v = campaign_view(&s, id).await?;
    render(&ProgressFragment { who, v })
}

// ---- Audit ----

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    who: Ui,
    section: &'static str,
    rows: Vec<AuditRow>,
    next: Option<String>,
}

/// Where a page of the audit log starts: entries older than this id.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

/// Audit entries per page.
const AUDIT_PAGE: i64 = 100;

/// `GET /ui/audit`: the audit log, newest first (operators and admins, as the API's).
pub async fn audit(
    who: Ui,
    State(s): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Html<String>, PageError> {
    if !who.may_act() {
        return Err(PageError(ServerError::Forbidden(
            "the audit log is for operators and admins".into(),
        )));
    }
    let now = now_ms();
    let entries = crate::auth::audit(&s.db, AUDIT_PAGE, q.before).await?;
    let next = (i64::try_from(entries.len()).unwrap_or(0) == AUDIT_PAGE)
        .then(|| entries.last().map(|e| format!("/ui/audit?before={}", e.id)))
        .flatten();
    let rows = entries
        .into_iter()
        .map(|e| AuditRow {
            when: When::at(now, e.created_ms),
            e,
        })
        .collect();
    render(&AuditPage {
        who,
        section: "audit",
        rows,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps of SQLite's plan for `sql` that read a table or sort (subqueries' own
    /// steps included; their headings left out).
    async fn plan(db: &crate::db::Db, sql: &str, vals: &[Val]) -> Vec<String> {
        read::fetch(db, &format!("EXPLAIN QUERY PLAN {sql}"), vals)
            .await
            .unwrap()
            .iter()
            .map(|r| r.text("detail").unwrap())
            .filter(|d| !d.contains("SUBQUERY"))
            .collect()
    }

    /// Every list page walks an index in its own order: no table scan, no sort of the table
    /// (what keeps a page as fast at a million devices as at ten).
    #[tokio::test]
    async fn list_pages_walk_indexes() {
        let (_dir, db) = crate::db::scratch_sqlite().await;
        let t = |v: &str| Some(v.to_owned());
        let devices = [
            DeviceFilter::default(),
            DeviceFilter {
                q: t("3512"),
                ..Default::default()
            },
            DeviceFilter {
                model: t("Alpha"),
                ..Default::default()
            },
            DeviceFilter {
                version: t("1.0"),
                seen: t("never"),
                ..Default::default()
            },
            DeviceFilter {
                q: t("35"),
                model: t("Alpha"),
                group: t("lab"),
                card: t("with"),
                ..Default::default()
            },
            DeviceFilter {
                seen: t("stale"),
                ..Default::default()
            },
        ];
        let mut specs: Vec<(String, Spec<'static>)> = devices
            .iter()
            .map(|f| (format!("{f:?}"), device_spec(f, 0).0))
            .collect();
        for f in [
            JobFilter::default(),
            JobFilter {
                state: t("failed"),
                ..Default::default()
            },
            JobFilter {
                state: t("failed"),
                reason: t("deadline passed"),
                ..Default::default()
            },
            JobFilter {
                wave: t("2"),
                ..Default::default()
            },
        ] {
            specs.push((format!("{f:?}"), job_spec(1, &f).unwrap()));
        }
        for (what, spec) in &specs {
            let key = if spec.int_key { "5" } else { "35" };
            for cursor in [
                Cursor::default(),
                Cursor {
                    after: t(key),
                    before: None,
                },
                Cursor {
                    after: None,
                    before: t(key),
                },
            ] {
                let mut statements = vec![read::page_sql(spec, &cursor, None).unwrap()];
                if let Some(w) = read::window_sql(spec, &cursor).unwrap() {
                    statements.push(w);
                    statements.push(read::page_sql(spec, &cursor, Some(key)).unwrap());
                }
                for (sql, vals) in statements {
                    for step in plan(&db, &sql, &vals).await {
                        let by_index = step.starts_with("SEARCH")
                            || step.contains("USING INDEX")
                            || step.contains("USING COVERING INDEX");
                        assert!(
                            by_index && !step.contains("TEMP B-TREE"),
                            "{what} {cursor:?}: {step}\n{sql}"
                        );
                    }
                }
            }
        }
        db.close().await;
    }

    /// The progress over time walks the campaign's `(campaign_id, device_id)` index, sampled
    /// or not: the stride is checked in the index, no table is scanned.
    #[tokio::test]
    async fn progress_over_time_walks_the_campaign_index() {
        let (_dir, db) = crate::db::scratch_sqlite().await;
        for k in [1, 53] {
            let vals = [0, 1000, 0, 1000, 0, 1000, 7, k].map(Val::I);
            let steps = plan(&db, TIMELINE_SQL, &vals).await;
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with("SEARCH jobs USING INDEX")
                        && s.contains("(campaign_id=? AND device_id>?)")),
                "stride {k}: {steps:?}"
            );
            for step in &steps {
                assert!(!step.starts_with("SCAN"), "stride {k}: {step}");
            }
        }
        db.close().await;
    }

    fn passage(
        (offered, delivered, ended): (Option<i64>, Option<i64>, Option<i64>),
        outcome: Outcome,
    ) -> Passage {
        Passage {
            offered,
            delivered,
            ended,
            outcome,
            n: 1,
        }
    }

    fn counts(p: &Point) -> (i64, i64, i64, i64, i64) {
        (p.t_ms, p.pending, p.in_progress, p.succeeded, p.failed)
    }

    #[test]
    fn each_job_is_pending_then_in_progress_then_counted_by_its_outcome() {
        use Outcome::*;
        let series = progress_series(
            &[
                // Offered in step 0, delivered in 2, succeeded in 5.
                passage((Some(0), Some(2), Some(5)), Succeeded),
                // Offered in step 0, failed in 3 without a delivery.
                passage((Some(0), None, Some(3)), Failed),
                // Offered in step 1, cancelled in 4: counted no more.
                passage((Some(1), None, Some(4)), Neither),
                // Its offer not known: shows from its delivery (3), still in progress.
                passage((None, Some(3), None), Neither),
                // Waiting: nothing to show.
                passage((None, None, None), Neither),
            ],
            1000,
            10,
        );
        let (t, p, i, s, f) = (1000, 0, 0, 0, 0);
        assert_eq!(
            series.iter().map(counts).collect::<Vec<_>>(),
            [
                (t + 10, 2, i, s, f),
                (t + 20, 3, i, s, f),
                (t + 30, 2, 1, s, f),
                (t + 40, 1, 2, s, 1),
                (t + 50, p, 2, s, 1),
                (t + 60, p, 1, 1, 1),
            ]
        );
    }

    #[test]
    fn a_job_never_goes_back_in_its_steps() {
        // A delivery recorded before the offer (clocks apart between replicas) and a step
        // before the start count as the earliest step they allow: no count goes negative.
        let series = progress_series(
            &[
                passage((Some(4), Some(2), Some(6)), Outcome::Failed),
                passage((Some(-3), Some(-1), None), Outcome::Neither),
            ],
            0,
            100,
        );
        assert_eq!(
            series.iter().map(counts).collect::<Vec<_>>(),
            [(100, 0, 1, 0, 0), (300, 0, 2, 0, 0), (700, 0, 1, 0, 1)]
        );
        assert!(progress_series(&[], 0, 100).is_empty());
    }

    #[test]
    fn samples_stride_by_primes() {
        assert_eq!(prime_from(50), 53);
        assert_eq!(prime_from(1), 2);
        assert_eq!(prime_from(97), 97);
    }

    #[test]
    fn failures_read_in_words() {
        assert_eq!(
            failure_words(None, Some(0x10), Some(405), None),
            "card refused: user declined"
        );
        assert_eq!(
            failure_words(None, None, Some(405), None),
            "device reported 405: firmware update package not acceptable"
        );
        assert_eq!(
            failure_words(None, None, None, Some("deadline passed")),
            "deadline passed"
        );
        assert_eq!(
            failure_words(Some("device deleted"), None, Some(405), None),
            "device deleted"
        );
        assert_eq!(failure_words(None, None, None, None), "no reason recorded");
    }

    #[test]
    fn list_links_keep_their_filters() {
        assert_eq!(
            with_query(
                "/ui/devices",
                &[
                    ("q", &Some("35".into())),
                    ("model", &None),
                    ("seen", &Some(String::new()))
                ]
            ),
            "/ui/devices?q=35"
        );
        let l = Listing {
            rows: vec![],
            next: Some("352".into()),
            prev: Some("351".into()),
            window_ended: false,
        };
        let p = Pager::of(
            &l,
            "/ui/devices?q=35",
            &Cursor {
                after: Some("1".into()),
                before: None,
            },
        );
        assert_eq!(p.next.as_deref(), Some("/ui/devices?q=35&after=352"));
        assert_eq!(p.prev.as_deref(), Some("/ui/devices?q=35&before=351"));
        assert_eq!(p.first.as_deref(), Some("/ui/devices?q=35"));
    }
}
