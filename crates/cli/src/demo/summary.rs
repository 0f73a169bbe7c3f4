//! The demo's summary: what each update ended with and the card's log, both as the servers
//! recorded them (REST API: `GET /devices/{imei}` for jobs, `GET /cards/{iccid}/log` for the
//! entries the authorized server read from the card and verified), checked against what each
//! step should show. The same [`Summary`] is printed as tables or, with `--json`, as one
//! JSON document (schema in docs/demo.md).
//!
//! What the demo itself remembers is only which campaign and which card log sequence numbers
//! belong to which step; results, codes, events and verification flags come from the server.

use serde::Serialize;
use serde_json::Value;
use simfota_wire::log::{Event, LogEntry};

use super::out::Out;

/// Schema identifier of the JSON document.
pub const SCHEMA: &str = "simfota-demo/1";

/// What a step should end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Installed: FUMO 200, card receipt verified by the server.
    Succeeded,
    /// Refused by the card with this FUMO result code, logged with one of these reasons
    /// (wire `DenyReason` names in snake case).
    Refused {
        /// The FUMO result code (OMA-TS-DM-FUMO-V1_0 §6.3; docs/dm-tree.md).
        fumo: u16,
        /// Acceptable card reasons.
        reasons: &'static [&'static str],
    },
}

/// Which update scenario a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// 1.0 → 2.0, full image, authorized server.
    Full,
    /// 2.0 → 2.1, delta against the running image, authorized server.
    Delta,
    /// 2.1 → 2.2 from a server not on the card, with the user's consent and PIN.
    Unauthorized,
    /// A delivery token the card already accepted, put back by a relay.
    Replay,
    /// A package with a lower sequence number.
    Rollback,
}

/// What the demo knows about a step it ran (not its result: that is the server's).
#[derive(Debug, Clone)]
pub struct StepRun {
    /// The scenario.
    pub kind: Kind,
    /// Human title.
    pub title: String,
    /// ServerID of the server that ran the campaign.
    pub server_id: String,
    /// Whether that server is on the card's list.
    pub authorized_server: bool,
    /// Release version offered.
    pub release: String,
    /// Its sequence number.
    pub sequence: u64,
    /// Whether the package is a delta.
    pub delta: bool,
    /// The campaign on that server.
    pub campaign_id: i64,
    /// Card log `next` before and after the step: the entries the card wrote meanwhile.
    pub log_range: (u32, u32),
    /// What the device agent printed.
    pub device_lines: Vec<String>,
    /// The consent warning was shown to the user.
    pub warning_shown: bool,
    /// The relay swapped a token during the step.
    pub token_swapped: bool,
    /// Index of the newest token the relay captured during the step.
    pub token_index: Option<usize>,
    /// What should happen.
    pub expected: Expected,
}

/// The summary document.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// Every expectation held.
    pub ok: bool,
    /// The demo folder.
    pub dir: String,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// The authorized server.
    pub server: ServerInfo,
    /// The device, as the authorized server and the device itself see it.
    pub device: DeviceInfo,
    /// Each update.
    pub updates: Vec<Update>,
    /// The card log as the authorized server read and verified it.
    pub card_log: CardLog,
    /// Each expectation that failed.
    pub failures: Vec<Failure>,
}

/// The authorized server.
#[derive(Debug, Serialize)]
pub struct ServerInfo {
    /// ServerID.
    pub server_id: String,
    /// Base URL.
    pub url: String,
    /// Dashboard URL.
    pub dashboard: String,
    /// File holding the operator API token.
    pub api_token_file: String,
}

/// The device.
#[derive(Debug, Serialize)]
pub struct DeviceInfo {
    /// IMEI.
    pub imei: String,
    /// ICCID of its card.
    pub iccid: String,
    /// Firmware version the authorized server recorded (DevDetail/FwV).
    pub fw_version: Option<String>,
    /// Version in the device's active slot.
    pub running_version: String,
}

/// One update.
#[derive(Debug, Serialize)]
pub struct Update {
    /// Scenario.
    pub step: Kind,
    /// Human title.
    pub title: String,
    /// Server that offered it.
    pub server_id: String,
    /// Whether that server is on the card's list.
    pub authorized_server: bool,
    /// Release version.
    pub release: String,
    /// Sequence number.
    pub sequence: u64,
    /// `full` or `delta`.
    pub package: &'static str,
    /// `succeeded` or `refused`.
    pub expected: &'static str,
    /// Job state the server recorded.
    pub state: Option<String>,
    /// FUMO result code the server recorded.
    pub fumo_result: Option<i64>,
    /// Card receipt status the server recorded.
    pub receipt: Option<String>,
    /// Update id the server issued (hex).
    pub update_id: Option<String>,
    /// Sequence numbers of the card log entries the step produced.
    pub card_log_seqs: Vec<u32>,
    /// Every expectation of the step held.
    pub ok: bool,
}

/// The card log.
#[derive(Debug, Serialize)]
pub struct CardLog {
    /// The server that read it.
    pub read_by: String,
    /// Entries, in sequence order.
    pub entries: Vec<LogRow>,
    /// Entries the card holds (its next sequence number).
    pub card_entries: u32,
    /// Entries the card counts as acknowledged by an authorized server.
    pub card_acknowledged: u32,
    /// The newest stored entry's hash equals the card's chain head.
    pub chain_head_matches: bool,
}

/// One card log entry.
#[derive(Debug, Serialize)]
pub struct LogRow {
    /// Sequence number.
    pub seq: u32,
    /// Event, as the server names it.
    pub event: String,
    /// For `denied`: the card's reason (wire `DenyReason` name, snake case).
    pub reason: Option<String>,
    /// For `denied`: the reason code.
    pub reason_code: Option<u16>,
    /// For `refusals`: the refusals the card counted (nothing authenticated them), by reason
    /// name, with their count.
    pub counted: Vec<(String, u32)>,
    /// For `consent`: whether the PIN was verified.
    pub pin_verified: Option<bool>,
    /// For `installed`: the FUMO result.
    pub fumo_result: Option<u16>,
    /// Update id (hex).
    pub update_id: Option<String>,
    /// Server concerned.
    pub server_id: Option<String>,
    /// The card marked the server id as a claim it did not verify (an unlisted server).
    pub server_claimed: bool,
    /// Release version.
    pub version: Option<String>,
    /// The server verified the entry (card signature over the export, chain).
    pub verified: bool,
}

/// An expectation that did not hold.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The step (or `card log`, `firmware`).
    pub step: String,
    /// What was expected and what happened.
    pub message: String,
}

/// The reason's name from wire's `DenyReason` table (`unknown_0x..` for a code this build
/// does not know).
pub fn reason_name(code: u16) -> String {
    match simfota_wire::DenyReason(code).name() {
        Some(name) => name.to_owned(),
        None => format!("unknown_{code:#04x}"),
    }
}

/// A log row from the server's JSON entry; the typed fields come from the raw record the
/// card signed (wire `LogEntry`), which the server returns with each entry.
pub fn log_row(v: &Value) -> LogRow {
    let raw = v["raw"].as_str().and_then(|h| hex::decode(h).ok());
    let entry = raw.as_deref().and_then(|r| LogEntry::decode(r).ok());
    let (mut reason, mut reason_code, mut pin_verified, mut fumo) = (None, None, None, None);
    let mut counted = Vec::new();
    if let Some(e) = &entry {
        match e.event {
            Event::Refusals(t) => {
                counted = t
                    .counts()
                    .iter()
                    .map(|(r, n)| (reason_name(r.0), *n))
                    .collect();
            }
            Event::Denied(r) => {
                reason = Some(reason_name(r.0));
                reason_code = Some(r.0);
            }
            Event::Consent { pin_verified: p } => pin_verified = Some(p),
            Event::Installed(f) => fumo = Some(f.0),
            _ => {}
        }
    }
    LogRow {
        seq: v["seq"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(u32::MAX),
        event: v["event"].as_str().unwrap_or("?").to_owned(),
        reason,
        reason_code,
        counted,
        pin_verified,
        fumo_result: fumo,
        update_id: v["update_id"].as_str().map(str::to_owned),
        server_id: v["server_id"].as_str().map(str::to_owned),
        server_claimed: v["unverified_fields"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "server_id")),
        version: v["release_version"].as_str().map(str::to_owned),
        // An entry whose record does not decode here is not counted as verified.
        verified: v["verified"].as_bool().unwrap_or(false) && entry.is_some(),
    }
}

/// The server's job for `campaign_id` in a `GET /devices/{imei}` answer.
pub fn job_of(device: &Value, campaign_id: i64) -> Option<&Value> {
    device["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["campaign_id"].as_i64() == Some(campaign_id))
}

/// Checks one step against the server's job and the verified log; answers the update row
/// and the failures.
pub fn check_step(run: &StepRun, job: Option<&Value>, log: &[LogRow]) -> (Update, Vec<String>) {
    let mut bad = Vec::new();
    let seqs: Vec<u32> = (run.log_range.0..run.log_range.1).collect();
    let entries: Vec<&LogRow> = seqs
        .iter()
        .filter_map(|s| log.iter().find(|e| e.seq == *s))
        .collect();
    if entries.len() != seqs.len() {
        bad.push(format!(
            "the card wrote entries {}..{} but the server holds only {} of them",
            run.log_range.0,
            run.log_range.1,
            entries.len()
        ));
    }
    let state = job.and_then(|j| j["state"].as_str()).map(str::to_owned);
    let fumo = job.and_then(|j| j["result_code"].as_i64());
    let receipt = job
        .and_then(|j| j["receipt_status"].as_str())
        .map(str::to_owned);
    if job.is_none() {
        bad.push(format!(
            "server {} recorded no job for campaign {}",
            run.server_id, run.campaign_id
        ));
    }
    let has = |event: &str, pred: &dyn Fn(&LogRow) -> bool| {
        entries.iter().any(|e| e.event == event && pred(e))
    };
    match run.expected {
        Expected::Succeeded => {
            if state.as_deref() != Some("succeeded") || fumo != Some(200) {
                bad.push(format!(
                    "expected success with FUMO 200; the server recorded {} with {}",
                    state.as_deref().unwrap_or("nothing"),
                    fumo.map_or("no result".to_owned(), |c| format!("FUMO {c}"))
                ));
            }
            if receipt.as_deref() != Some("verified") {
                bad.push(format!(
                    "the card's receipt is not verified by the server ({})",
                    receipt.as_deref().unwrap_or("none")
                ));
            }
            if !has("installed", &|e| e.fumo_result == Some(200)) {
                bad.push("no `installed` entry with result 200 in the card log".into());
            }
        }
        Expected::Refused {
            fumo: want,
            reasons,
        } => {
            if state.as_deref() != Some("failed") || fumo != Some(i64::from(want)) {
                bad.push(format!(
                    "expected a refusal with FUMO {want}; the server recorded {} with {}",
                    state.as_deref().unwrap_or("nothing"),
                    fumo.map_or("no result".to_owned(), |c| format!("FUMO {c}"))
                ));
            }
            // A refusal of a listed server's fresh token is an entry of its own; one nothing
            // authenticated (a replay) is counted in a refusal tally.
            let denied = has("denied", &|e| {
                e.reason.as_deref().is_some_and(|r| reasons.contains(&r))
            });
            let counted = has("refusals", &|e| {
                e.counted.iter().any(|(r, _)| reasons.contains(&r.as_str()))
            });
            if !denied && !counted {
                bad.push(format!(
                    "no `denied` entry or counted refusal with reason {} in the card log",
                    reasons.join(" or ")
                ));
            }
        }
    }
    match run.kind {
        Kind::Delta => {
            if !run
                .device_lines
                .iter()
                .any(|l| l.contains("rebuilding the new image from the delta"))
            {
                bad.push("the device did not rebuild the image from the delta".into());
            }
        }
        Kind::Unauthorized => {
            if !run.warning_shown {
                bad.push("the user was not warned about the unauthorized server".into());
            }
            if !has("consent", &|e| e.pin_verified == Some(true)) {
                bad.push("no `consent` entry with the PIN verified in the card log".into());
            }
        }
        Kind::Replay => {
            if !run.token_swapped {
                bad.push("the relay found no delivery token to swap".into());
            }
        }
        Kind::Full | Kind::Rollback => {}
    }
    let update = Update {
        step: run.kind,
        title: run.title.clone(),
        server_id: run.server_id.clone(),
        authorized_server: run.authorized_server,
        release: run.release.clone(),
        sequence: run.sequence,
        package: if run.delta { "delta" } else { "full" },
        expected: match run.expected {
            Expected::Succeeded => "succeeded",
            Expected::Refused { .. } => "refused",
        },
        state,
        fumo_result: fumo,
        receipt,
        update_id: job.and_then(|j| j["update_id"].as_str()).map(str::to_owned),
        card_log_seqs: seqs,
        ok: bad.is_empty(),
    };
    (update, bad)
}

/// Checks the log as a whole: every entry the card holds was read, verified and
/// acknowledged, and the newest stored entry is the card's chain head.
pub fn check_log(log: &CardLog) -> Vec<String> {
    let mut bad = Vec::new();
    let unverified: Vec<String> = log
        .entries
        .iter()
        .filter(|e| !e.verified)
        .map(|e| e.seq.to_string())
        .collect();
    if !unverified.is_empty() {
        bad.push(format!("entries not verified: {}", unverified.join(", ")));
    }
    let contiguous = log
        .entries
        .iter()
        .enumerate()
        .all(|(i, e)| u32::try_from(i).is_ok_and(|i| i == e.seq));
    if !contiguous || log.entries.len() != log.card_entries as usize {
        bad.push(format!(
            "the card holds {} entries; the server stored {} ({})",
            log.card_entries,
            log.entries.len(),
            if contiguous {
                "in sequence"
            } else {
                "with gaps"
            }
        ));
    }
    if log.card_acknowledged != log.card_entries {
        bad.push(format!(
            "the card counts {} of {} entries as acknowledged",
            log.card_acknowledged, log.card_entries
        ));
    }
    if !log.chain_head_matches {
        bad.push("the newest stored entry is not the card's chain head".into());
    }
    bad
}

fn cell(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

/// Pads `text` to `width` characters (before any colouring).
fn pad(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n >= width {
        text.to_owned()
    } else {
        format!("{text}{}", " ".repeat(width - n))
    }
}

/// Prints the summary as tables.
pub fn print(out: &Out, s: &Summary) {
    out.heading("Updates (results as the servers recorded them)");
    out.line(&format!(
        "  {} {} {} {} {} {}",
        pad("step", 34),
        pad("server", 21),
        pad("result", 20),
        pad("receipt", 9),
        pad("card log", 9),
        "as expected"
    ));
    for u in &s.updates {
        let result = match (u.state.as_deref(), u.fumo_result) {
            (Some(st), Some(c)) => format!("{st} {c}"),
            (Some(st), None) => st.to_owned(),
            _ => "no job".to_owned(),
        };
        let seqs = match (u.card_log_seqs.first(), u.card_log_seqs.last()) {
            (Some(a), Some(b)) if a == b => format!("#{a}"),
            (Some(a), Some(b)) => format!("#{a}-{b}"),
            _ => "-".to_owned(),
        };
        out.line(&format!(
            "  {} {} {} {} {} {}",
            pad(&u.title, 34),
            pad(&u.server_id, 13),
            pad(&result, 20),
            pad(cell(u.receipt.as_deref()), 9),
            pad(&seqs, 9),
            out.verdict(u.ok, if u.ok { "yes" } else { "NO" })
        ));
    }
    out.heading(&format!(
        "Card log (read from the card, verified and acknowledged by {})",
        s.card_log.read_by
    ));
    out.line(&format!(
        "  {} {} {} {} {} {} {}",
        pad("#", 3),
        pad("event", 13),
        pad("detail", 18),
        pad("update", 9),
        pad("server", 21),
        pad("version", 8),
        "verified"
    ));
    for e in &s.card_log.entries {
        let counted = e
            .counted
            .iter()
            .map(|(r, n)| format!("{r}×{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let detail = match (&e.reason, e.pin_verified, e.fumo_result) {
            _ if !counted.is_empty() => counted,
            (Some(r), _, _) => r.clone(),
            (_, Some(true), _) => "PIN verified".to_owned(),
            (_, Some(false), _) => "confirmed, no PIN".to_owned(),
            (_, _, Some(f)) => format!("FUMO {f}"),
            _ => String::new(),
        };
        // The first bytes of the update id are enough to tell updates apart (and to see
        // that the replayed token carries the id of an earlier update).
        let update = e
            .update_id
            .as_deref()
            .map_or("-".to_owned(), |u| u.chars().take(8).collect());
        out.line(&format!(
            "  {} {} {} {} {} {} {}",
            pad(&e.seq.to_string(), 3),
            pad(&e.event, 13),
            pad(&detail, 18),
            pad(&update, 9),
            pad(
                &match (&e.server_id, e.server_claimed) {
                    (Some(s), true) => format!("{s} (claimed)"),
                    (s, _) => cell(s.as_deref()).to_owned(),
                },
                21
            ),
            pad(cell(e.version.as_deref()), 8),
            out.verdict(e.verified, if e.verified { "yes" } else { "NO" })
        ));
    }
    out.line("");
    out.line(&format!(
        "Card: {} entries, {} acknowledged, chain head {}. Firmware running: {} (server records {}).",
        s.card_log.card_entries,
        s.card_log.card_acknowledged,
        if s.card_log.chain_head_matches {
            "matches the server's copy"
        } else {
            "DIFFERS from the server's copy"
        },
        s.device.running_version,
        cell(s.device.fw_version.as_deref()),
    ));
    if s.ok {
        out.line(&out.verdict(
            true,
            &format!(
                "Every step behaved as expected ({:.1} s). Files: {}",
                s.seconds, s.dir
            ),
        ));
    } else {
        for f in &s.failures {
            out.line(&out.verdict(false, &format!("FAILED {}: {}", f.step, f.message)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_follow_the_wire_table() {
        use simfota_wire::DenyReason;
        assert_eq!(reason_name(DenyReason::ROLLBACK.0), "rollback");
        assert_eq!(reason_name(DenyReason::NONCE_MISMATCH.0), "nonce_mismatch");
        assert_eq!(
            reason_name(DenyReason::PIN_CONSENT_REQUIRED.0),
            "pin_consent_required"
        );
        assert_eq!(reason_name(0x7f), "unknown_0x7f");
        // Every code of the table has a name of its own.
        let names: std::collections::BTreeSet<String> =
            DenyReason::ALL.iter().map(|r| reason_name(r.0)).collect();
        assert_eq!(names.len(), DenyReason::ALL.len());
        assert!(
            names.iter().all(|n| !n.starts_with("unknown_0x")),
            "{names:?}"
        );
    }

    fn row(seq: u32, event: &str) -> LogRow {
        LogRow {
            seq,
            event: event.into(),
            reason: None,
            reason_code: None,
            counted: Vec::new(),
            pin_verified: None,
            fumo_result: None,
            update_id: None,
            server_id: None,
            server_claimed: false,
            version: None,
            verified: true,
        }
    }

    fn run(kind: Kind, expected: Expected, range: (u32, u32)) -> StepRun {
        StepRun {
            kind,
            title: "t".into(),
            server_id: "s".into(),
            authorized_server: true,
            release: "2.0".into(),
            sequence: 2,
            delta: false,
            campaign_id: 7,
            log_range: range,
            device_lines: Vec::new(),
            warning_shown: false,
            token_swapped: false,
            token_index: None,
            expected,
        }
    }

    #[test]
    fn a_refusal_needs_the_code_and_the_logged_reason() {
        let job = serde_json::json!({"campaign_id": 7, "state": "failed", "result_code": 405});
        let mut denied = row(3, "denied");
        denied.reason = Some("rollback".into());
        let expected = Expected::Refused {
            fumo: 405,
            reasons: &["rollback"],
        };
        let (u, bad) = check_step(
            &run(Kind::Rollback, expected, (3, 4)),
            Some(&job),
            &[denied],
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert!(u.ok);
        // Wrong reason logged, and the code differs.
        let mut other = row(3, "denied");
        other.reason = Some("token_expired".into());
        let job = serde_json::json!({"campaign_id": 7, "state": "failed", "result_code": 404});
        let (u, bad) = check_step(&run(Kind::Rollback, expected, (3, 4)), Some(&job), &[other]);
        assert!(!u.ok);
        assert_eq!(bad.len(), 2, "{bad:?}");
        // No job at all, and the entry never reached the server.
        let (_, bad) = check_step(&run(Kind::Rollback, expected, (3, 4)), None, &[]);
        assert!(bad.iter().any(|b| b.contains("no job")), "{bad:?}");
        assert!(bad.iter().any(|b| b.contains("holds only 0")), "{bad:?}");
    }

    #[test]
    fn a_success_needs_the_receipt_and_the_installed_entry() {
        let job = serde_json::json!({"campaign_id": 7, "state": "succeeded", "result_code": 200,
            "receipt_status": "verified"});
        let mut installed = row(2, "installed");
        installed.fumo_result = Some(200);
        let log = [row(0, "authorized"), row(1, "integrity_ok"), installed];
        let (_, bad) = check_step(
            &run(Kind::Full, Expected::Succeeded, (0, 3)),
            Some(&job),
            &log,
        );
        assert!(bad.is_empty(), "{bad:?}");
        // The same, but the device never rebuilt from a delta.
        let (_, bad) = check_step(
            &run(Kind::Delta, Expected::Succeeded, (0, 3)),
            Some(&job),
            &log,
        );
        assert_eq!(bad.len(), 1, "{bad:?}");
        let job = serde_json::json!({"campaign_id": 7, "state": "succeeded", "result_code": 200,
            "receipt_status": "missing"});
        let (_, bad) = check_step(
            &run(Kind::Full, Expected::Succeeded, (0, 3)),
            Some(&job),
            &log,
        );
        assert!(bad[0].contains("receipt"), "{bad:?}");
    }

    #[test]
    fn the_log_must_be_complete_verified_and_acknowledged() {
        let mut log = CardLog {
            read_by: "s".into(),
            entries: vec![row(0, "authorized"), row(1, "denied")],
            card_entries: 2,
            card_acknowledged: 2,
            chain_head_matches: true,
        };
        assert!(check_log(&log).is_empty());
        log.entries[1].verified = false;
        log.card_entries = 3;
        log.card_acknowledged = 2;
        log.chain_head_matches = false;
        assert_eq!(check_log(&log).len(), 4, "{:?}", check_log(&log));
    }
}
