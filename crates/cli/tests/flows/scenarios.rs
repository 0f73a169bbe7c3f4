//! One function per flow of design §4 and per attack (or family of attacks) of §5. Each
//! starts its own servers, card and device in a temporary folder, drives them with the real
//! binaries, and asserts the user's view (the device's output and exit status), the server's
//! record (REST job result code, receipt status, stored card log) and the card's log entry.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::json;
use simfota_wire::{DenyReason, Event, FumoResult};

use super::relay::{self, Action, Hooks, Relay, Request, Response};
use super::world::*;

const V1_LEN: usize = 40_000;

/// The usual set-up: the operator's server, a card that authorizes it (plus `extra`
/// servers), a device registered there with firmware 1.0.
pub struct Setup {
    pub w: World,
    pub op: Server,
    pub card: Card,
    pub dev: Device,
    pub v1: Vec<u8>,
}

/// Set-up options.
pub struct Opts<'a> {
    pub policy: &'a str,
    pub pin_tries: u8,
    /// More servers on the card: (world key name, server id, rights).
    pub extra_servers: Vec<(&'a str, &'a str, &'a str)>,
    pub v1_len: usize,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            policy: "refuse",
            pin_tries: 3,
            extra_servers: Vec::new(),
            v1_len: V1_LEN,
        }
    }
}

pub fn setup(test: &str, cell: Cell, o: &Opts<'_>) -> Option<Setup> {
    let mut w = World::new(test, cell)?;
    let op = w.server("op", SERVER_ID);
    let extra: Vec<(String, std::path::PathBuf, String)> = o
        .extra_servers
        .iter()
        .map(|(name, id, rights)| ((*id).to_owned(), w.key(name).1, (*rights).to_owned()))
        .collect();
    let mut servers: Vec<(&str, &Path, &str)> = vec![(SERVER_ID, op.key.1.as_path(), "all")];
    for (id, key, rights) in &extra {
        servers.push((id.as_str(), key.as_path(), rights.as_str()));
    }
    let mut card = w.card("card", ICCID);
    card.personalize(
        &w.oem.1,
        &Perso {
            servers,
            policy: o.policy,
            pin_tries: o.pin_tries,
        },
    );
    op.register(IMEI, None);
    let v1 = firmware(o.v1_len, 1);
    let dev = w.device(&DeviceSpec {
        name: "dev",
        server_url: &op.url,
        server_id: SERVER_ID,
        imei: IMEI,
        v1: &v1,
        slots: None,
        notify_port: None,
        poll_secs: 300,
    });
    Some(Setup {
        w,
        op,
        card,
        dev,
        v1,
    })
}

/// Builds a full package and uploads it to `server`; answers its id.
pub fn publish(
    w: &World,
    server: &Server,
    name: &str,
    image: &[u8],
    version: &str,
    seq: u64,
) -> i64 {
    let (env, payload) = w.package(&PackageSpec::full(name, image, version, seq));
    server.upload(&env, &payload)
}

/// Points a device configuration at another DM server URL (a relay on the path).
pub fn point_to(dev: &Device, url: &str) {
    let text = std::fs::read_to_string(&dev.config).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("server_url") {
                format!("server_url = \"{url}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&dev.config, text).unwrap();
}

/// Asserts what the user sees for an update that ended with `code`.
#[track_caller]
pub fn assert_user_sees(out: &Out, code: u16, says: &str) {
    let exit = if (200..300).contains(&code) { 0 } else { 3 };
    out.says(exit, &format!("update result {code}"));
    out.says(exit, says);
}

/// Runs sessions without an update until the server's stored log satisfies `done`.
#[track_caller]
pub fn read_log(
    server: &Server,
    dev: &Device,
    card: &Card,
    done: impl Fn(&[Logged]) -> bool,
) -> Vec<Logged> {
    // The card answers a few entries per read (what fits its I/O buffer), one read per
    // session: a full log takes a dozen sessions.
    for _ in 0..24 {
        let log = server.card_log(ICCID);
        if done(&log) {
            return log;
        }
        dev.check_update(card, &[]).says(0, "no update offered");
    }
    let log = server.card_log(ICCID);
    assert!(
        done(&log),
        "the server's card log never got there: {log:#?}"
    );
    log
}

/// The entries of one update id (hex).
pub fn of_update<'a>(log: &'a [Logged], update_id: &str) -> Vec<&'a Logged> {
    log.iter()
        .filter(|e| e.json["update_id"].as_str() == Some(update_id))
        .collect()
}

/// Asserts that the card logged a refusal with `reason` for the job's update, verified by
/// the server, and that the update has no install entry.
#[track_caller]
pub fn assert_denied(log: &[Logged], update_id: &str, reason: DenyReason) {
    let entries = of_update(log, update_id);
    assert!(
        entries
            .iter()
            .any(|e| e.entry.event == Event::Denied(reason) && e.verified),
        "no verified denied({}) entry for update {update_id}: {log:#?}",
        reason.0
    );
    assert!(
        !entries
            .iter()
            .any(|e| matches!(e.entry.event, Event::Installed(_) | Event::Authorized)),
        "update {update_id} was authorized or installed: {entries:#?}"
    );
}

/// How many refusals with `reason` the verified refusal tallies of the log count (refusals
/// nothing authenticated are counted, not logged one by one).
pub fn counted(log: &[Logged], reason: DenyReason) -> u64 {
    log.iter()
        .filter(|e| e.verified)
        .filter_map(|e| match e.entry.event {
            Event::Refusals(t) => Some(t),
            _ => None,
        })
        .flat_map(|t| t.counts().to_vec())
        .filter(|(r, _)| *r == reason)
        .map(|(_, n)| u64::from(n))
        .sum()
}

/// Asserts that the card counted at least `n` refusals with `reason` (verified by the
/// server), that no tally names a server or an update (nothing in them was verified), and
/// that the unauthenticated update left no decision naming it.
#[track_caller]
pub fn assert_counted(log: &[Logged], update_id: &str, reason: DenyReason, n: u64) {
    assert!(
        counted(log, reason) >= n,
        "fewer than {n} counted refusals {}: {log:#?}",
        reason.0
    );
    for e in log {
        if matches!(e.entry.event, Event::Refusals(_)) {
            assert_eq!(
                (e.entry.server, e.entry.update_id),
                (None, None),
                "a tally names what nothing verified: {e:#?}"
            );
        }
    }
    assert!(
        of_update(log, update_id).is_empty(),
        "the unauthenticated update {update_id} is named in the log: {log:#?}"
    );
}

fn job_update_id(server: &Server, campaign: i64) -> String {
    server.job(campaign, IMEI)["update_id"]
        .as_str()
        .unwrap_or_else(|| panic!("job without update id: {}", server.job(campaign, IMEI)))
        .to_owned()
}

/// The installed firmware sequence number the card holds.
fn installed_sequence(card: &Card) -> u64 {
    card.info_field("installed sequence").parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// Flows (design §4)
// ---------------------------------------------------------------------------------------

/// §4 steps 1-9: a full update through the authorized server (1226 with a verified receipt,
/// FwV confirmed), then the card log read in a later session, verified, stored and
/// acknowledged; read again after more entries ("at any time").
pub fn full_update_and_log_read(test: &str, cell: Cell) {
    let Some(s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    let c = s.op.campaign(pkg);
    let out = s.dev.check_update(&s.card, &[]);
    assert_user_sees(&out, 200, "the server has the result");
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
    assert_eq!(s.dev.firmware(), "2.0");
    let device = s.op.get(&format!("devices/{IMEI}"));
    // FwV confirmed: the server stores the version the device reports after its reboot.
    assert_eq!(device["device"]["fw_version"], "2.0", "{device}");
    assert_eq!(device["device"]["iccid"], ICCID, "{device}");
    assert_eq!(installed_sequence(&s.card), 2);

    // The log: authorized, integrity ok, installed 200 for this update, all verified.
    let update = job_update_id(&s.op, c);
    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        l.iter()
            .any(|e| e.entry.event == Event::Installed(FumoResult(200)))
    });
    let events: Vec<Event> = of_update(&log, &update)
        .iter()
        .map(|e| e.entry.event)
        .collect();
    assert_eq!(
        events,
        [
            Event::Authorized,
            Event::IntegrityOk,
            Event::Installed(FumoResult(200))
        ]
    );
    assert!(log.iter().all(|e| e.verified), "{log:#?}");
    let head = log.last().unwrap().seq;
    // Acknowledged: the server recorded the ack the card took, the card agrees.
    let card_row = s.op.card(ICCID);
    assert_eq!(card_row["acked_seq"], head, "{card_row}");
    assert_eq!(card_row["log_status"], "ok", "{card_row}");
    let info = s.card.info();
    assert!(
        info.contains(&format!("acknowledged below {}", head + 1)),
        "{info}"
    );

    // At any time: a later entry (the same package offered again: a rollback, refused) is
    // read in a later session, chained to the acknowledged ones, and acknowledged in turn.
    let c = s.op.campaign(pkg);
    assert_user_sees(&s.dev.check_update(&s.card, &[]), 405, "rollback");
    let log = read_log(&s.op, &s.dev, &s.card, |l| l.len() > 3);
    let again = log.last().unwrap();
    assert_eq!(again.seq, head + 1);
    assert_eq!(again.entry.event, Event::Denied(DenyReason::ROLLBACK));
    assert_eq!(again.json["update_id"], job_update_id(&s.op, c));
    assert!(again.verified);
    assert_eq!(s.op.card(ICCID)["acked_seq"], head + 1);
}

/// With `--payload-access delivered` the package files are not public: the device reaches
/// them only through the signed URL of its delivery (the payload by its relative URI, inside
/// it), and the update goes through as with public files; the plain URLs answer 403.
pub fn update_through_signed_package_urls(test: &str, cell: Cell) {
    let Some(mut s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    s.op.restart_with(&["--payload-access", "delivered"]);
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    for part in ["envelope", "payload"] {
        let status = s.op.status_of(&format!("/packages/{pkg}/{part}"));
        assert_eq!(status, 403, "{part} is not public");
    }
    let c = s.op.campaign(pkg);
    let out = s.dev.check_update(&s.card, &[]);
    assert_user_sees(&out, 200, "the server has the result");
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
    assert_eq!(s.dev.firmware(), "2.0");
}

/// A delta update: the manifest names the running image as precursor, the device fetches
/// the (much smaller) delta from a distribution host, rebuilds the image and the card judges
/// the rebuilt image. The server takes the delta on upload (checked against the delta digest
/// and size the package signs); the manifest points the device at a test-side distribution
/// host by absolute URI, which counts what crosses the network.
pub fn delta_update(test: &str, cell: Cell) {
    let Some(s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    let v2 = edited(&s.v1);
    let served = Arc::new(Mutex::new(Vec::<(String, usize)>::new()));
    let files: Files = Arc::new(Mutex::new(Vec::new()));
    let cdn = Relay::start(
        &s.op.url,
        StaticHost {
            files: files.clone(),
            served: served.clone(),
        },
    );
    let uri = format!("{}/cdn/v2.delta", cdn.url);
    let (env, delta) = s.w.package(&PackageSpec {
        name: "v2d",
        image: &v2,
        version: "2.0",
        sequence: 2,
        base: Some(&s.v1),
        uri: Some(&uri),
        key: None,
    });
    let delta_bytes = std::fs::read(&delta).unwrap();
    assert!(
        delta_bytes.len() < v2.len() / 4,
        "delta {} bytes",
        delta_bytes.len()
    );
    files
        .lock()
        .unwrap()
        .push(("/cdn/v2.delta".to_owned(), delta_bytes.clone()));
    let pkg = s.op.upload(&env, &delta);
    let c = s.op.campaign(pkg);
    let out = s.dev.check_update(&s.card, &[]);
    assert_user_sees(&out, 200, "the server has the result");
    // The rebuild is shown like the download: stderr is a pipe here, so as plain lines,
    // closed by one with the rebuilt image's size (40017 bytes).
    out.says(0, "\nrebuild: 39.1 KiB done in ");
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
    assert_eq!(s.dev.firmware(), "2.0");
    let slot = std::fs::read(s.dev.slots.join("slot_b.img")).unwrap();
    assert_eq!(slot, v2, "slot B holds the rebuilt image");
    // Only the delta crossed the network for the payload.
    let served = served.lock().unwrap().clone();
    assert_eq!(served, [("/cdn/v2.delta".to_owned(), delta_bytes.len())]);
    let update = job_update_id(&s.op, c);
    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        l.iter()
            .any(|e| e.entry.event == Event::Installed(FumoResult(200)))
    });
    let events: Vec<Event> = of_update(&log, &update)
        .iter()
        .map(|e| e.entry.event)
        .collect();
    assert_eq!(
        events,
        [
            Event::Authorized,
            Event::IntegrityOk,
            Event::Installed(FumoResult(200))
        ]
    );
}

/// Files by path.
type Files = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A static file host (the distribution network a delta is fetched from).
struct StaticHost {
    files: Files,
    served: Arc<Mutex<Vec<(String, usize)>>>,
}

impl Hooks for StaticHost {
    fn request(&mut self, req: &mut Request) -> Action {
        let files = self.files.lock().unwrap();
        let Some((_, body)) = files.iter().find(|(p, _)| *p == req.path) else {
            return Action::Respond(Response {
                status: 404,
                headers: Vec::new(),
                body: Vec::new(),
            });
        };
        self.served
            .lock()
            .unwrap()
            .push((req.path.clone(), body.len()));
        Action::Respond(Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: body.clone(),
        })
    }
}

/// Card-digest integrity mode: the policy makes the card hash the streamed payload itself.
pub fn card_digest_update(test: &str, cell: Cell) {
    let Some(s) = setup(
        test,
        cell,
        &Opts {
            policy: "refuse:card-digest=1000000",
            ..Opts::default()
        },
    ) else {
        return;
    };
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    let c = s.op.campaign(pkg);
    let out = s.dev.check_update(&s.card, &[]);
    assert_user_sees(
        &out,
        200,
        "streaming the image to the card, which hashes it, as it downloads",
    );
    out.says(0, "the card accepted the image's integrity");
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
    assert_eq!(s.dev.firmware(), "2.0");
    let update = job_update_id(&s.op, c);
    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        l.iter()
            .any(|e| e.entry.event == Event::Installed(FumoResult(200)))
    });
    let events: Vec<Event> = of_update(&log, &update)
        .iter()
        .map(|e| e.entry.event)
        .collect();
    assert_eq!(
        events,
        [
            Event::Authorized,
            Event::IntegrityOk,
            Event::Installed(FumoResult(200))
        ]
    );
}

/// An update offered by a second real server that is not on the card, under each policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    Refuse,
    Confirm,
    ConfirmWithPin,
}

pub fn unauthorized_server(test: &str, cell: Cell, policy: Unauthorized) {
    let Some(mut s) = setup(
        test,
        cell,
        &Opts {
            policy: match policy {
                Unauthorized::Refuse => "refuse",
                Unauthorized::Confirm => "warn-confirm",
                Unauthorized::ConfirmWithPin => "confirm-with-pin",
            },
            ..Opts::default()
        },
    ) else {
        return;
    };
    let rogue = s.w.server("rogue", ROGUE_ID);
    rogue.register(IMEI, None);
    let dev_r = s.w.device(&DeviceSpec {
        name: "dev-rogue",
        server_url: &rogue.url,
        server_id: ROGUE_ID,
        imei: IMEI,
        v1: &s.v1,
        slots: Some(&s.dev.slots),
        notify_port: None,
        poll_secs: 300,
    });
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &rogue, "v2", &v2, "2.0", 2);
    let c = rogue.campaign(pkg);
    let pin_file = s.w.path("pin.txt");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let pin_arg = pin_file.to_str().unwrap().to_owned();
    let out = match policy {
        Unauthorized::Refuse => dev_r.check_update(&s.card, &["--yes"]),
        Unauthorized::Confirm => dev_r.check_update(&s.card, &["--yes"]),
        Unauthorized::ConfirmWithPin => {
            dev_r.check_update(&s.card, &["--yes", "--pin-file", &pin_arg])
        }
    };
    let update = job_update_id(&rogue, c);
    match policy {
        Unauthorized::Refuse => {
            assert_user_sees(&out, 405, "the card refused the update");
            rogue.assert_job(c, IMEI, "failed", 405, "absent");
            assert_eq!(s.dev.firmware(), "1.0");
        }
        Unauthorized::Confirm | Unauthorized::ConfirmWithPin => {
            // The warning names the server and why it is not trusted.
            out.says(0, "rogue");
            out.says(0, "not on the card's list");
            assert_user_sees(&out, 200, "the server has the result");
            rogue.assert_job(c, IMEI, "succeeded", 200, "verified");
            assert_eq!(s.dev.firmware(), "2.0");
        }
    }
    // The operator's server reads the card log: the decision on the rogue server's update.
    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        counted(l, DenyReason::SERVER_NOT_AUTHORIZED) > 0
            || of_update(l, &update)
                .iter()
                .any(|e| matches!(e.entry.event, Event::Denied(_) | Event::Installed(_)))
    });
    let entries = of_update(&log, &update);
    assert!(entries.iter().all(|e| e.verified));
    // The rogue server's name is logged only as the claim it is.
    assert!(entries.iter().all(|e| {
        e.entry.server.map(|x| x.as_str().to_owned()) == Some(ROGUE_ID.to_owned())
            && e.entry
                .unverified
                .is_some_and(|u| u.contains(simfota_wire::Unverified::SERVER))
    }));
    match policy {
        Unauthorized::Refuse => {
            assert_counted(&log, &update, DenyReason::SERVER_NOT_AUTHORIZED, 1);
        }
        Unauthorized::Confirm | Unauthorized::ConfirmWithPin => {
            let pin = policy == Unauthorized::ConfirmWithPin;
            let events: Vec<Event> = entries.iter().map(|e| e.entry.event).collect();
            assert_eq!(
                events,
                [
                    Event::Consent { pin_verified: pin },
                    Event::Authorized,
                    Event::IntegrityOk,
                    Event::Installed(FumoResult(200))
                ],
                "{entries:#?}"
            );
        }
    }
    // The rogue server has no log-read right: it holds none of the card's entries.
    assert!(rogue.card_log(ICCID).is_empty());
    s.card.remove();
}

/// Notification: package 0 over UDP to `simfota device run`'s port starts the session that
/// takes the update (the poll interval is far longer than the test).
pub fn notification(test: &str, cell: Cell) {
    let Some(mut w) = World::new(test, cell) else {
        return;
    };
    let op = w.server("op", SERVER_ID);
    let mut card = w.card("card", ICCID);
    card.personalize(
        &w.oem.1,
        &Perso {
            servers: vec![(SERVER_ID, &op.key.1, "all")],
            policy: "refuse",
            pin_tries: 3,
        },
    );
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    op.register(IMEI, Some(&format!("127.0.0.1:{port}")));
    let v1 = firmware(V1_LEN, 1);
    let dev = w.device(&DeviceSpec {
        name: "dev",
        server_url: &op.url,
        server_id: SERVER_ID,
        imei: IMEI,
        v1: &v1,
        slots: None,
        notify_port: Some(port),
        poll_secs: 3600,
    });
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&w, &op, "v2", &v2, "2.0", 2);
    // One entry on the card, so that the agent's first session (at start) ends with a log
    // read and its acknowledgement: once the server has that ack, the session is over and
    // only package 0 can start the next one.
    card.in_hand(|c| {
        c.select().unwrap();
        c.bind_terminal(&simfota_wire::Imei::parse(IMEI).unwrap())
            .unwrap();
        let _ = c.authorize(b"x", b"y");
    });
    let child = dev.spawn_run(&card, &["--sessions", "2"]);
    wait_until(30, "the agent's first session", || {
        let known = op.get("cards");
        let known = known.as_array().is_some_and(|cards| {
            cards
                .iter()
                .any(|c| c["iccid"] == ICCID && c["acked_seq"] == 0)
        });
        known.then_some(())
    });
    // Creating the campaign sends package 0 to the device's address.
    let c = op.campaign(pkg);
    let job = wait_until(60, "the notified session's result", || {
        let j = op.job(c, IMEI);
        (j["state"] == "succeeded" || j["state"] == "failed").then_some(j)
    });
    let out = finish(child);
    assert_eq!(job["result_code"], 200, "{job}\n{}", out.text());
    assert_eq!(job["receipt_status"], "verified", "{job}");
    assert_eq!(out.code, 0, "{}", out.text());
    assert!(
        !out.stderr.contains("ignored a notification"),
        "{}",
        out.text()
    );
    assert_eq!(dev.firmware(), "2.0");
}

/// The issuer's admin command relayed by the server: queued through the API, delivered in
/// the next session, result recorded, change visible on the card; then the same command
/// replayed (card refuses: counter), and a command for another card (server refuses it; put
/// on the path by a relay, the card refuses it).
pub fn admin_relay(test: &str, cell: Cell) {
    let Some(s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    let extra = s.w.key("extra");
    let cmd = admin_sign(
        &s.w,
        "put-extra.cbor",
        ICCID,
        1,
        &[
            "put-server",
            &format!("extra={}:log-read", extra.1.display()),
        ],
    );
    // The card must be known to the server: one session first.
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    let command = relay::b64(&std::fs::read(&cmd).unwrap());
    let queued = s.op.post_ok(
        &format!("cards/{ICCID}/admin"),
        &json!({"command": command}),
    );
    assert_eq!(queued["state"], "queued", "{queued}");
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    let list = s.op.get(&format!("cards/{ICCID}/admin"));
    assert_eq!(list[0]["state"], "applied", "{list}");
    assert_eq!(list[0]["result"], "9000", "{list}");
    let mut servers = vec!["card".into(), "servers".into()];
    servers.extend(s.card.args());
    let listed = run(&servers).ok().stdout;
    assert!(listed.contains("extra\trights=log-read"), "{listed}");
    assert_eq!(s.card.info_field("admin counter"), "1");

    // Replayed: the server relays it (it cannot know the card's counter), the card refuses.
    s.op.post_ok(
        &format!("cards/{ICCID}/admin"),
        &json!({"command": command}),
    );
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    let list = s.op.get(&format!("cards/{ICCID}/admin"));
    assert_eq!(list[1]["state"], "refused", "{list}");
    assert_eq!(
        list[1]["result"],
        format!("66{:02X}", DenyReason::ADMIN_REPLAY.0),
        "{list}"
    );
    assert_eq!(s.card.info_field("admin counter"), "1");

    // For another card: the server refuses to queue it.
    let other_iccid = other_iccid();
    let other = admin_sign(
        &s.w,
        "other-card.cbor",
        &other_iccid,
        5,
        &["remove-server", SERVER_ID],
    );
    let other_b64 = relay::b64(&std::fs::read(&other).unwrap());
    let (status, answer) = s.op.post(
        &format!("cards/{ICCID}/admin"),
        &json!({"command": other_b64}),
    );
    assert_eq!(status, 400, "{answer}");
    // Put on the path by an attacker in place of a genuine one: the card refuses it.
    let cmd2 = admin_sign(
        &s.w,
        "put-extra2.cbor",
        ICCID,
        2,
        &["remove-server", "extra"],
    );
    s.op.post_ok(
        &format!("cards/{ICCID}/admin"),
        &json!({"command": relay::b64(&std::fs::read(&cmd2).unwrap())}),
    );
    let path = Relay::start(
        &s.op.url,
        SwapData {
            uri: "./SIMFOTA/Card/Admin",
            data: other_b64,
        },
    );
    point_to(&s.dev, &path.url);
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    let list = s.op.get(&format!("cards/{ICCID}/admin"));
    assert_eq!(list[2]["state"], "refused", "{list}");
    assert_eq!(
        list[2]["result"],
        format!("66{:02X}", DenyReason::ADMIN_WRONG_CARD.0),
        "{list}"
    );
    assert_eq!(s.card.info_field("admin counter"), "1");
    let listed = run(&servers).ok().stdout;
    assert!(listed.contains(SERVER_ID), "{listed}");
    // The card does not log admin commands (its log holds update events): its state is the
    // proof, the admin counter and the server list as the genuine command left them.
    point_to(&s.dev, &s.op.url);
}

/// `simfota card admin-sign` (the issuer's offline tool): answers the signed command's path.
pub fn admin_sign(
    w: &World,
    name: &str,
    iccid: &str,
    counter: u64,
    change: &[&str],
) -> std::path::PathBuf {
    let out = w.path(name);
    let mut args: Vec<std::ffi::OsString> = vec![
        "card".into(),
        "admin-sign".into(),
        "--issuer-key".into(),
        w.issuer.0.clone().into(),
        "--iccid".into(),
        iccid.into(),
        "--counter".into(),
        counter.to_string().into(),
        "--out".into(),
        out.clone().into(),
    ];
    args.extend(change.iter().map(Into::into));
    run(&args).ok();
    out
}

/// A valid ICCID that is not the card's.
pub fn other_iccid() -> String {
    (0..10)
        .map(|d| format!("8988211000000000002{d}"))
        .find(|s| simfota_wire::Iccid::parse(s).is_ok())
        .unwrap()
}

/// Replaces the data of one node in the server's answers.
struct SwapData {
    uri: &'static str,
    data: String,
}

impl Hooks for SwapData {
    fn response(&mut self, _req: &Request, resp: &mut Response) {
        let mut text = resp.text();
        if relay::set_data(&mut text, self.uri, &self.data) {
            resp.body = text.into_bytes();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attacks (design §5)
// ---------------------------------------------------------------------------------------

/// How the hostile relay treats the delivery token of the next session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// Pass it, and keep a copy.
    Capture,
    /// Put the kept copy in its place.
    Replay,
    /// Re-sign it (server key) for another IMEI.
    OtherImei,
    /// Re-sign it (server key) for another ICCID.
    OtherCard,
    /// Claim another listed server as issuer (signed with this server's key).
    OtherServer,
    /// Re-sign it (server key) with an expiry before its issue time.
    Expired,
    /// Re-sign it with a key the card does not list, under an unlisted server id.
    Unlisted,
}

/// The token forger on the path: it holds the server's key file (DATA/server-key.pem in a
/// real breach) and a key of its own.
struct TokenForger {
    mode: Arc<Mutex<TokenMode>>,
    kept: Option<String>,
    server_key: simfota_wire::p256::ecdsa::SigningKey,
    own_key: simfota_wire::p256::ecdsa::SigningKey,
}

const TOKEN_NODE: &str = "./FUMO/fw/Ext/DeliveryToken";

impl Hooks for TokenForger {
    fn response(&mut self, _req: &Request, resp: &mut Response) {
        use simfota_wire::{DeliveryToken, Iccid, Imei, Limits, ServerId};
        let mut text = resp.text();
        let Some(token_b64) = relay::data(&text, TOKEN_NODE) else {
            return;
        };
        let bytes = relay::unb64(&token_b64);
        let mut claims = *DeliveryToken::decode(&bytes, &Limits::DEFAULT)
            .unwrap()
            .dangerous_unverified();
        let mode = *self.mode.lock().unwrap();
        let forged = match mode {
            TokenMode::Capture => {
                self.kept = Some(token_b64);
                return;
            }
            TokenMode::Replay => self.kept.clone().unwrap(),
            TokenMode::OtherImei => {
                claims.imei = Imei::parse(OTHER_IMEI).unwrap();
                relay::b64(&claims.to_vec(&self.server_key).unwrap())
            }
            TokenMode::OtherCard => {
                let other = other_iccid();
                claims.iccid = Iccid::parse(&other).unwrap();
                relay::b64(&claims.to_vec(&self.server_key).unwrap())
            }
            TokenMode::OtherServer => {
                claims.iss = ServerId::new("second").unwrap();
                relay::b64(&claims.to_vec(&self.server_key).unwrap())
            }
            TokenMode::Expired => {
                claims.exp = claims.iat - 1;
                relay::b64(&claims.to_vec(&self.server_key).unwrap())
            }
            TokenMode::Unlisted => {
                claims.iss = ServerId::new(ROGUE_ID).unwrap();
                relay::b64(&claims.to_vec(&self.own_key).unwrap())
            }
        };
        relay::set_data(&mut text, TOKEN_NODE, &forged);
        resp.body = text.into_bytes();
    }
}

fn signing_key(path: &Path) -> simfota_wire::p256::ecdsa::SigningKey {
    simfota_wire::pem::signing_key_from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Replayed token; token for another IMEI, another card, another server; expired token;
/// token from an unlisted server. A hostile relay rewrites the token of each session; the
/// card refuses each with its own reason, the server records the FUMO code the device
/// reports, and the refusal is in the card log the server reads and verifies afterwards.
pub fn token_attacks(test: &str, cell: Cell) {
    let Some(s) = setup(
        test,
        cell,
        &Opts {
            extra_servers: vec![("second-key", "second", "all")],
            ..Opts::default()
        },
    ) else {
        return;
    };
    let mode = Arc::new(Mutex::new(TokenMode::Capture));
    let own = s.w.key("attacker");
    let path = Relay::start(
        &s.op.url,
        TokenForger {
            mode: mode.clone(),
            kept: None,
            server_key: signing_key(&s.op.key.0),
            own_key: signing_key(&own.0),
        },
    );
    point_to(&s.dev, &path.url);
    let v2 = firmware(V1_LEN, 2);
    let pkg2 = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    let first = s.op.campaign(pkg2);
    assert_user_sees(
        &s.dev.check_update(&s.card, &[]),
        200,
        "the server has the result",
    );
    s.op.assert_job(first, IMEI, "succeeded", 200, "verified");
    let v3 = firmware(V1_LEN, 3);
    let pkg3 = publish(&s.w, &s.op, "v3", &v3, "3.0", 3);
    let cases = [
        (
            TokenMode::Replay,
            405,
            DenyReason::NONCE_MISMATCH,
            "the token's nonce is not the card's",
        ),
        (
            TokenMode::OtherImei,
            403,
            DenyReason::WRONG_DEVICE,
            "the token is for another device",
        ),
        (
            TokenMode::OtherCard,
            403,
            DenyReason::WRONG_CARD,
            "the token is for another card",
        ),
        (
            TokenMode::OtherServer,
            404,
            DenyReason::TOKEN_SIGNATURE,
            "the delivery token's signature is invalid",
        ),
        (
            TokenMode::Expired,
            405,
            DenyReason::TOKEN_EXPIRED,
            "the token has expired",
        ),
        (
            TokenMode::Unlisted,
            405,
            DenyReason::SERVER_NOT_AUTHORIZED,
            "the server is not authorized for firmware updates",
        ),
    ];
    let mut updates = Vec::new();
    for (m, code, _, says) in cases {
        *mode.lock().unwrap() = m;
        let c = s.op.campaign(pkg3);
        let out = s.dev.check_update(&s.card, &[]);
        assert_user_sees(&out, code, says);
        s.op.assert_job(c, IMEI, "failed", i64::from(code), "absent");
        // The replayed token carries the first update's id: that is what the card logs.
        let update = if m == TokenMode::Replay {
            job_update_id(&s.op, first)
        } else {
            job_update_id(&s.op, c)
        };
        updates.push(update);
    }
    assert_eq!(s.dev.firmware(), "2.0");
    assert_eq!(installed_sequence(&s.card), 2);
    *mode.lock().unwrap() = TokenMode::Capture;
    // A listed server's fresh token refused (another device, card, expired) is an entry of
    // its own; a replay, a forged signature and an unlisted server are refusals nothing
    // authenticated: counted, naming nothing from the token.
    let own_entry = |r: DenyReason| {
        matches!(
            r,
            DenyReason::WRONG_DEVICE | DenyReason::WRONG_CARD | DenyReason::TOKEN_EXPIRED
        )
    };
    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        cases.iter().all(|c| own_entry(c.2) || counted(l, c.2) > 0)
            && l.iter()
                .filter(|e| matches!(e.entry.event, Event::Denied(_)))
                .count()
                >= 3
    });
    let denied: Vec<Event> = log
        .iter()
        .filter(|e| matches!(e.entry.event, Event::Denied(_)))
        .map(|e| e.entry.event)
        .collect();
    let want: Vec<Event> = cases
        .iter()
        .filter(|c| own_entry(c.2))
        .map(|c| Event::Denied(c.2))
        .collect();
    assert_eq!(denied, want, "{log:#?}");
    for ((m, _, reason, _), update) in cases.iter().zip(&updates) {
        if own_entry(*reason) {
            assert_denied(&log, update, *reason);
        } else if *m != TokenMode::Replay {
            // (The replayed token's update id is the first update's, which the log names.)
            assert_counted(&log, update, *reason, 1);
        } else {
            assert!(counted(&log, *reason) >= 1, "{log:#?}");
        }
    }
}

/// Rewrites envelopes and payloads on their way to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageMode {
    Pass,
    /// One byte of the manifest's signed text changed.
    TamperManifest,
    /// One byte of the payload flipped.
    TamperPayload,
    /// The payload cut short.
    Truncate,
    /// The envelope replaced by one an unknown originator signed.
    UnknownOriginator,
}

struct PackageTamperer {
    mode: Arc<Mutex<PackageMode>>,
    foreign_envelope: Vec<u8>,
}

impl Hooks for PackageTamperer {
    fn request(&mut self, req: &mut Request) -> Action {
        if *self.mode.lock().unwrap() == PackageMode::Truncate && req.path.ends_with("/payload") {
            // Always the same short payload: no range requests reach the server.
            req.headers.retain(|(k, _)| {
                !k.eq_ignore_ascii_case("range") && !k.eq_ignore_ascii_case("if-range")
            });
        }
        Action::Forward
    }

    fn response(&mut self, req: &Request, resp: &mut Response) {
        let mode = *self.mode.lock().unwrap();
        let envelope = req.path.ends_with("/envelope");
        let payload = req.path.ends_with("/payload");
        match mode {
            PackageMode::TamperManifest if envelope => {
                let at = find(&resp.body, b"firmware").expect("the release name in the manifest");
                resp.body[at] ^= 0x20;
            }
            PackageMode::UnknownOriginator if envelope => {
                resp.body = self.foreign_envelope.clone();
            }
            PackageMode::TamperPayload if payload => {
                let mid = resp.body.len() / 2;
                resp.body[mid] ^= 0x01;
            }
            PackageMode::Truncate if payload => {
                let keep = resp.body.len() - 1000;
                resp.body.truncate(keep);
                resp.headers
                    .retain(|(k, _)| !k.eq_ignore_ascii_case("content-range"));
            }
            _ => {}
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Tampered manifest; payload tampered (one byte) and truncated; manifest from an unknown
/// originator; rollback to a lower sequence; manifest from a removed originator (the issuer
/// removes it through the admin relay first).
pub fn package_attacks(test: &str, cell: Cell) {
    let Some(s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    let mode = Arc::new(Mutex::new(PackageMode::Pass));
    let stranger = s.w.key("stranger");
    let v3 = firmware(V1_LEN, 3);
    let (foreign, _) = s.w.package(&PackageSpec {
        key: Some(&stranger.0),
        ..PackageSpec::full("v3-foreign", &v3, "3.0", 3)
    });
    let path = Relay::start(
        &s.op.url,
        PackageTamperer {
            mode: mode.clone(),
            foreign_envelope: std::fs::read(&foreign).unwrap(),
        },
    );
    point_to(&s.dev, &path.url);
    let v2 = firmware(V1_LEN, 2);
    let pkg2 = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    let c = s.op.campaign(pkg2);
    assert_user_sees(
        &s.dev.check_update(&s.card, &[]),
        200,
        "the server has the result",
    );
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
    let pkg3 = publish(&s.w, &s.op, "v3", &v3, "3.0", 3);
    let v1b = firmware(V1_LEN, 9);
    let pkg_old = publish(&s.w, &s.op, "v1b", &v1b, "1.5", 1);

    // (mode, package, code, what the user sees, the card's verdict)
    enum Proof {
        Denied(DenyReason),
        /// The card judged the payload and refused it.
        IntegrityFailed,
        /// The device caught it first (size) and reported the failure to the card.
        Reported,
    }
    let cases = [
        (
            PackageMode::TamperManifest,
            pkg3,
            404,
            "the manifest's signature is invalid",
            Proof::Denied(DenyReason::MANIFEST_SIGNATURE),
        ),
        (
            PackageMode::TamperPayload,
            pkg3,
            402,
            "the payload digest differs from the signed one",
            Proof::IntegrityFailed,
        ),
        (
            PackageMode::Truncate,
            pkg3,
            402,
            "the update package is corrupt",
            Proof::Reported,
        ),
        (
            PackageMode::UnknownOriginator,
            pkg3,
            404,
            "the software originator is not trusted",
            Proof::Denied(DenyReason::ORIGINATOR_UNKNOWN),
        ),
        (
            PackageMode::Pass,
            pkg_old,
            405,
            "rollback: the sequence number is not above",
            Proof::Denied(DenyReason::ROLLBACK),
        ),
    ];
    let mut updates = Vec::new();
    for (m, pkg, code, says, _) in &cases {
        *mode.lock().unwrap() = *m;
        let c = s.op.campaign(*pkg);
        let out = s.dev.check_update(&s.card, &[]);
        assert_user_sees(&out, *code, says);
        s.op.assert_job(c, IMEI, "failed", i64::from(*code), "");
        updates.push(job_update_id(&s.op, c));
        assert_eq!(s.dev.firmware(), "2.0", "{m:?}");
    }
    *mode.lock().unwrap() = PackageMode::Pass;

    // The issuer removes the originator (admin relay); its packages are refused from then on.
    let cmd = admin_sign(
        &s.w,
        "remove-oem.cbor",
        ICCID,
        1,
        &["remove-originator", "oem"],
    );
    s.op.post_ok(
        &format!("cards/{ICCID}/admin"),
        &json!({"command": relay::b64(&std::fs::read(&cmd).unwrap())}),
    );
    // A session without an update delivers it (and reads the log so far).
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    assert_eq!(
        s.op.get(&format!("cards/{ICCID}/admin"))[0]["state"],
        "applied"
    );
    let c = s.op.campaign(pkg3);
    let out = s.dev.check_update(&s.card, &[]);
    assert_user_sees(&out, 404, "the software originator is not trusted");
    s.op.assert_job(c, IMEI, "failed", 404, "absent");
    let removed = job_update_id(&s.op, c);
    assert_eq!(installed_sequence(&s.card), 2);

    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        !of_update(l, &removed).is_empty()
    });
    for ((m, _, code, _, proof), update) in cases.iter().zip(&updates) {
        match proof {
            Proof::Denied(reason) => assert_denied(&log, update, *reason),
            Proof::IntegrityFailed => {
                let events: Vec<Event> = of_update(&log, update)
                    .iter()
                    .map(|e| e.entry.event)
                    .collect();
                assert_eq!(
                    events,
                    [
                        Event::Authorized,
                        Event::IntegrityFailed,
                        Event::Installed(FumoResult(*code))
                    ],
                    "{m:?}"
                );
            }
            Proof::Reported => {
                let events: Vec<Event> = of_update(&log, update)
                    .iter()
                    .map(|e| e.entry.event)
                    .collect();
                assert_eq!(
                    events,
                    [Event::Authorized, Event::Installed(FumoResult(*code))],
                    "{m:?}"
                );
            }
        }
    }
    assert_denied(&log, &removed, DenyReason::ORIGINATOR_UNKNOWN);
}

/// The log attacks. A device (or the path) forging entries: a byte of the export flipped on
/// its way to the server; deleting entries: an older export replayed in place of the fresh
/// one. Both rejected and counted by the server, nothing stored, the card not acknowledged.
/// An unauthorized server reading the log: the card refuses its request, it stores nothing.
/// An unauthorized acknowledgement put on the path: the card refuses it and keeps the entries.
pub fn log_attacks(test: &str, cell: Cell) {
    let Some(mut s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    let mode = Arc::new(Mutex::new(LogMode::Flip));
    let acted = Arc::new(Mutex::new(0u32));
    let own = s.w.key("attacker");
    let path = Relay::start(
        &s.op.url,
        LogTamperer {
            mode: mode.clone(),
            acted: acted.clone(),
            kept: None,
            own_key: signing_key(&own.0),
        },
    );
    point_to(&s.dev, &path.url);
    let failures = |s: &Server| s.metric("simfota_verification_failures_total{kind=\"export\"}");
    let took = |acted: &Arc<Mutex<u32>>| std::mem::take(&mut *acted.lock().unwrap());

    // Forged: one byte of every export changed on the way (entries to read: an update).
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    s.op.campaign(pkg);
    assert_user_sees(
        &s.dev.check_update(&s.card, &[]),
        200,
        "the server has the result",
    );
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    let flipped = took(&acted);
    assert!(flipped >= 1);
    assert!(
        s.op.card_log(ICCID).is_empty(),
        "a forged export was stored"
    );
    assert_eq!(failures(&s.op), f64::from(flipped));
    assert!(
        s.card.info().contains("acknowledged below 0"),
        "{}",
        s.card.info()
    );

    // A genuine read: the relay keeps the export for the replay below.
    *mode.lock().unwrap() = LogMode::Keep;
    let log = read_log(&s.op, &s.dev, &s.card, |l| l.len() >= 3);
    let stored = log.len();

    // Deleting entries: the older export in place of the one answering this session's request.
    *mode.lock().unwrap() = LogMode::Replay;
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    assert_eq!(took(&acted), 1, "no export to replace");
    assert_eq!(s.op.card_log(ICCID).len(), stored);
    assert_eq!(failures(&s.op), f64::from(flipped + 1));

    // An unauthorized acknowledgement: signed by a key the card does not list.
    *mode.lock().unwrap() = LogMode::ForgeAck;
    let before = s.card.info_field("log");
    for _ in 0..3 {
        s.dev
            .check_update(&s.card, &[])
            .says(0, "no update offered");
        if *acted.lock().unwrap() > 0 {
            break;
        }
    }
    assert_eq!(took(&acted), 1, "no acknowledgement to forge");
    assert_eq!(
        s.card.info_field("log"),
        before,
        "the card took a forged ack"
    );

    // An unauthorized server reading the log: a real second server the card does not list.
    *mode.lock().unwrap() = LogMode::Pass;
    let rogue = s.w.server("rogue", ROGUE_ID);
    rogue.register(IMEI, None);
    let dev_r = s.w.device(&DeviceSpec {
        name: "dev-rogue",
        server_url: &rogue.url,
        server_id: ROGUE_ID,
        imei: IMEI,
        v1: &s.v1,
        slots: Some(&s.dev.slots),
        notify_port: None,
        poll_secs: 300,
    });
    dev_r
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    dev_r
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    assert!(
        rogue.card_log(ICCID).is_empty(),
        "the rogue server read the log"
    );
    assert_eq!(s.card.info_field("log"), before);

    // The genuine server still reads, verifies and acknowledges everything, chain unbroken.
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    let log = s.op.card_log(ICCID);
    assert_eq!(log.len(), stored);
    assert!(log.iter().all(|e| e.verified));
    assert_eq!(s.op.card(ICCID)["log_status"], "ok");
    let info = s.card.info();
    assert!(
        info.contains(&format!("acknowledged below {stored}")),
        "{info}"
    );
    s.card.remove();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogMode {
    Pass,
    Flip,
    Keep,
    Replay,
    ForgeAck,
}

struct LogTamperer {
    mode: Arc<Mutex<LogMode>>,
    /// How many messages the hook changed.
    acted: Arc<Mutex<u32>>,
    kept: Option<String>,
    own_key: simfota_wire::p256::ecdsa::SigningKey,
}

const LOG_RESPONSE: &str = "./SIMFOTA/Card/LogResponse";
const LOG_ACK: &str = "./SIMFOTA/Card/LogAck";

impl Hooks for LogTamperer {
    fn request(&mut self, req: &mut Request) -> Action {
        let mode = *self.mode.lock().unwrap();
        let mut text = req.text();
        let Some(export) = relay::data(&text, LOG_RESPONSE) else {
            return Action::Forward;
        };
        match mode {
            LogMode::Flip => {
                let mut bytes = relay::unb64(&export);
                let at = bytes.len() - 40;
                bytes[at] ^= 0x01;
                relay::set_data(&mut text, LOG_RESPONSE, &relay::b64(&bytes));
                *self.acted.lock().unwrap() += 1;
            }
            LogMode::Keep if self.kept.is_none() => self.kept = Some(export),
            LogMode::Replay => {
                let kept = self.kept.clone().unwrap();
                relay::set_data(&mut text, LOG_RESPONSE, &kept);
                *self.acted.lock().unwrap() += 1;
            }
            _ => {}
        }
        req.body = text.into_bytes();
        Action::Forward
    }

    fn response(&mut self, _req: &Request, resp: &mut Response) {
        use simfota_wire::{Limits, LogAck, ServerId};
        if *self.mode.lock().unwrap() != LogMode::ForgeAck {
            return;
        }
        let mut text = resp.text();
        let Some(ack) = relay::data(&text, LOG_ACK) else {
            return;
        };
        let bytes = relay::unb64(&ack);
        let mut claims = *LogAck::decode(&bytes, &Limits::DEFAULT)
            .unwrap()
            .dangerous_unverified();
        claims.server = ServerId::new(ROGUE_ID).unwrap();
        let mut buf = vec![0u8; 512];
        let n = claims.sign(&self.own_key, &mut buf).unwrap();
        relay::set_data(&mut text, LOG_ACK, &relay::b64(&buf[..n]));
        resp.body = text.into_bytes();
        *self.acted.lock().unwrap() += 1;
    }
}

/// A device reporting a result for an update the card never authorized: the card refuses
/// the update (token from an unlisted key on the path), and the path then turns the 1226
/// alert into a success carrying the receipt of an earlier update. The server records the
/// claimed code but marks the receipt invalid; the card log has no install for that update.
pub fn forged_result(test: &str, cell: Cell) {
    let Some(s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    let own = s.w.key("attacker");
    let state = Arc::new(Mutex::new(ForgeState::default()));
    let path = Relay::start(
        &s.op.url,
        ResultForger {
            state: state.clone(),
            own_key: signing_key(&own.0),
        },
    );
    point_to(&s.dev, &path.url);
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    s.op.campaign(pkg);
    assert_user_sees(
        &s.dev.check_update(&s.card, &[]),
        200,
        "the server has the result",
    );
    assert!(state.lock().unwrap().receipt_item.is_some());
    state.lock().unwrap().forge = true;
    let v3 = firmware(V1_LEN, 3);
    let pkg3 = publish(&s.w, &s.op, "v3", &v3, "3.0", 3);
    let c = s.op.campaign(pkg3);
    let out = s.dev.check_update(&s.card, &[]);
    // The user's device tells the truth; the path lied to the server.
    assert_user_sees(&out, 405, "the card refused the update");
    let job = s.op.job(c, IMEI);
    assert_eq!(job["result_code"], 200, "{job}");
    let receipt = job["receipt_status"].as_str().unwrap_or_default();
    assert!(receipt.starts_with("invalid"), "{job}");
    let update = job_update_id(&s.op, c);
    state.lock().unwrap().forge = false;
    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        counted(l, DenyReason::SERVER_NOT_AUTHORIZED) > 0
    });
    assert_counted(&log, &update, DenyReason::SERVER_NOT_AUTHORIZED, 1);
    assert_eq!(installed_sequence(&s.card), 2);
}

#[derive(Default)]
struct ForgeState {
    forge: bool,
    receipt_item: Option<String>,
}

struct ResultForger {
    state: Arc<Mutex<ForgeState>>,
    own_key: simfota_wire::p256::ecdsa::SigningKey,
}

const RESULT_NODE: &str = "./FUMO/fw/DownloadAndUpdate";
const RECEIPT_NODE: &str = "./FUMO/fw/Ext/Receipt";

impl Hooks for ResultForger {
    fn request(&mut self, req: &mut Request) -> Action {
        let mut st = self.state.lock().unwrap();
        let mut text = req.text();
        if !text.contains("<Data>1226</Data>") {
            return Action::Forward;
        }
        if !st.forge {
            // Keep the genuine receipt item of a successful update.
            if let Some(at) = text.find(&format!("<LocURI>{RECEIPT_NODE}</LocURI>")) {
                let start = text[..at].rfind("<Item>").unwrap();
                let end = at + text[at..].find("</Item>").unwrap() + "</Item>".len();
                st.receipt_item = Some(text[start..end].to_owned());
            }
            return Action::Forward;
        }
        if relay::data(&text, RESULT_NODE).is_none() {
            return Action::Forward;
        }
        relay::set_data(&mut text, RESULT_NODE, "200");
        let text = text.replace("critical", "informational");
        // The stolen receipt after the result item.
        let at = text
            .find(&format!("<LocURI>{RESULT_NODE}</LocURI>"))
            .unwrap();
        let end = at + text[at..].find("</Item>").unwrap() + "</Item>".len();
        let mut forged = text.clone();
        forged.insert_str(end, st.receipt_item.as_deref().unwrap());
        req.body = forged.into_bytes();
        Action::Forward
    }

    fn response(&mut self, _req: &Request, resp: &mut Response) {
        use simfota_wire::{DeliveryToken, Limits, ServerId};
        if !self.state.lock().unwrap().forge {
            return;
        }
        let mut text = resp.text();
        let Some(token) = relay::data(&text, TOKEN_NODE) else {
            return;
        };
        let mut claims = *DeliveryToken::decode(&relay::unb64(&token), &Limits::DEFAULT)
            .unwrap()
            .dangerous_unverified();
        claims.iss = ServerId::new(ROGUE_ID).unwrap();
        let forged = relay::b64(&claims.to_vec(&self.own_key).unwrap());
        relay::set_data(&mut text, TOKEN_NODE, &forged);
        resp.body = text.into_bytes();
    }
}

/// PIN brute force: an unauthorized server under confirm-with-PIN, a wrong PIN from a file
/// each time; the card blocks after its tries, the user is told, and the right PIN no longer
/// helps. Each try is a declined update (401) on the server and in the card log.
pub fn pin_brute_force(test: &str, cell: Cell) {
    let Some(mut s) = setup(
        test,
        cell,
        &Opts {
            policy: "confirm-with-pin",
            pin_tries: 3,
            ..Opts::default()
        },
    ) else {
        return;
    };
    let rogue = s.w.server("rogue", ROGUE_ID);
    rogue.register(IMEI, None);
    let dev_r = s.w.device(&DeviceSpec {
        name: "dev-rogue",
        server_url: &rogue.url,
        server_id: ROGUE_ID,
        imei: IMEI,
        v1: &s.v1,
        slots: Some(&s.dev.slots),
        notify_port: None,
        poll_secs: 300,
    });
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &rogue, "v2", &v2, "2.0", 2);
    let wrong = s.w.path("wrong-pin.txt");
    std::fs::write(&wrong, "9999\n").unwrap();
    let right = s.w.path("pin.txt");
    std::fs::write(&right, format!("{PIN}\n")).unwrap();
    let mut updates = Vec::new();
    for attempt in 0..4 {
        let file = if attempt < 3 { &wrong } else { &right };
        let c = rogue.campaign(pkg);
        let out = dev_r.check_update(&s.card, &["--yes", "--pin-file", file.to_str().unwrap()]);
        // A wrong or blocked PIN is not a "no" from the user.
        let why = match attempt {
            0 => "was not confirmed: the card PIN was wrong (2 tries left)",
            1 => "was not confirmed: the card PIN was wrong (1 try left)",
            _ => "was not confirmed: the card PIN is blocked (unblock it with the PUK)",
        };
        assert_user_sees(&out, 401, why);
        if attempt >= 2 {
            out.says(3, "the card PIN is blocked");
        }
        rogue.assert_job(c, IMEI, "failed", 401, "absent");
        updates.push(job_update_id(&rogue, c));
    }
    assert_eq!(s.dev.firmware(), "1.0");
    let tries = s.card.in_hand(|c| {
        c.select().unwrap();
        c.pin_status().unwrap()
    });
    assert!(
        matches!(tries, simfota_cardlink::client::PinStatus::Blocked),
        "{tries:?}"
    );
    let n = updates.len() as u64;
    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        counted(l, DenyReason::USER_DECLINED) >= n
    });
    for u in &updates {
        assert_counted(&log, u, DenyReason::USER_DECLINED, n);
    }
    s.card.remove();
}

/// Log full: a card whose log holds only unacknowledged entries (filled on the card before
/// the flow, with refused requests) refuses a new update instead of dropping entries; the
/// server then reads every entry, acknowledges them, and the update goes through.
pub fn log_full(test: &str, cell: Cell) {
    let Some(mut s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    let server_key = signing_key(&s.op.key.0);
    let filled = s.card.in_hand(|c| {
        use simfota_wire::{DeliveryToken, Digest, Iccid, Imei, ServerId, UpdateId};
        c.select().unwrap();
        c.bind_terminal(&Imei::parse(IMEI).unwrap()).unwrap();
        // A flood of requests nothing authenticates (they do not even decode) takes one
        // record: the device alone cannot fill the log.
        for _ in 0..200 {
            let _ = c.authorize(b"x", b"y");
        }
        assert_eq!(c.card_info().unwrap().log_free, 63);
        // Refusals of the listed server's own fresh tokens each take an entry: a server that
        // keeps sending tokens for another card fills the log.
        let mut n = 1;
        while c.card_info().unwrap().log_free > 2 {
            let nonce = c.get_nonce().unwrap();
            let token = DeliveryToken {
                iss: ServerId::new(SERVER_ID).unwrap(),
                iat: 1_790_000_000,
                exp: 1_790_003_600,
                nbf: None,
                cti: UpdateId::new(&[0xF1, n as u8]).unwrap(),
                nonce,
                iccid: Iccid::parse(&other_iccid()).unwrap(),
                imei: Imei::parse(IMEI).unwrap(),
                manifest_digest: Digest([0; 32]),
                charging_ref: None,
            };
            let _ = c.authorize(&token.to_vec(&server_key).unwrap(), b"y");
            n += 1;
        }
        n
    });
    assert!(filled > 60, "{filled}");
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    let c = s.op.campaign(pkg);
    let out = s.dev.check_update(&s.card, &[]);
    assert_user_sees(&out, 405, "the log is full of unacknowledged entries");
    s.op.assert_job(c, IMEI, "failed", 405, "absent");
    // Nothing was dropped: the server reads the whole log, from entry 0, chain intact.
    let log = read_log(&s.op, &s.dev, &s.card, |l| l.len() >= filled);
    assert_eq!(log[0].seq, 0);
    assert!(log.iter().all(|e| e.verified));
    assert_eq!(counted(&log[..1], DenyReason::MALFORMED), 200);
    assert_eq!(
        log.iter()
            .filter(|e| e.entry.event == Event::Denied(DenyReason::WRONG_CARD))
            .count(),
        filled - 1
    );
    // Acknowledged, the space is free again: the next campaign installs.
    let c = s.op.campaign(pkg);
    assert_user_sees(
        &s.dev.check_update(&s.card, &[]),
        200,
        "the server has the result",
    );
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
    s.card.remove();
}

/// Power cut during install: the agent is killed (SIGKILL) once the card has verified the
/// image and installing has begun; the old slot still boots; the next run completes the
/// update and the result reaches the card and the server once.
pub fn power_cut_during_install(test: &str, cell: Cell) {
    const BIG: usize = 3 << 20;
    let Some(s) = setup(
        test,
        cell,
        &Opts {
            v1_len: BIG,
            ..Opts::default()
        },
    ) else {
        return;
    };
    let v2 = firmware(BIG, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    let c = s.op.campaign(pkg);
    let mut child = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["device", "check-update", "--config"])
        .arg(&s.dev.config)
        .args(s.card.args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Watch the job file closely: the kill must land between the card's integrity verdict
    // and the end of the install.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stage = loop {
        let stage = s.dev.job_stage();
        if matches!(stage.as_deref(), Some("verified" | "installed")) {
            let _ = child.kill();
            break stage.unwrap_or_default();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the agent finished ({status}) before the install could be cut: {stage:?}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no install stage: {stage:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let _ = child.wait();
    // The old firmware still runs (a verified stage has not switched slots yet; an installed
    // one waits for its boot check).
    let status = s.dev.status();
    assert!(status.contains("firmware   1.0"), "{stage}: {status}");
    let out = s.dev.check_update(&s.card, &[]);
    out.ok();
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
    assert_eq!(s.dev.firmware(), "2.0");
    let update = job_update_id(&s.op, c);
    let log = read_log(&s.op, &s.dev, &s.card, |l| {
        of_update(l, &update)
            .iter()
            .any(|e| matches!(e.entry.event, Event::Installed(_)))
    });
    let installs = of_update(&log, &update)
        .iter()
        .filter(|e| matches!(e.entry.event, Event::Installed(_)))
        .count();
    assert_eq!(installs, 1, "reported once");
}

/// Server crash mid-campaign: the server is killed (SIGKILL) the moment the device sends the
/// update's result; the device keeps the result, the restarted server (same database) takes
/// it in the next session, once, with the receipt verified, and the campaign completes.
pub fn server_crash_mid_campaign(test: &str, cell: Cell) {
    let Some(mut s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    let pid = s.op.pid();
    let path = Relay::start(&s.op.url, CrashOnResult { pid, done: false });
    point_to(&s.dev, &path.url);
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    let c = s.op.campaign(pkg);
    // The update itself completes; reporting it fails with the server gone (exit 1: the
    // server is unreachable) and the result stays in the job file.
    let out = s.dev.check_update(&s.card, &[]);
    out.says(1, "update result 200");
    assert_eq!(s.dev.firmware(), "2.0");
    s.op.restart();
    assert_eq!(s.op.job(c, IMEI)["state"], "delivered");
    let out = s.dev.check_update(&s.card, &[]);
    out.says(0, "reported the earlier update result 200");
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
    let campaign = s.op.get(&format!("campaigns/{c}"));
    assert_eq!(campaign["state"], "completed", "{campaign}");
    // A repeated alert would not be recorded twice; one more session changes nothing.
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
}

struct CrashOnResult {
    pid: u32,
    done: bool,
}

impl Hooks for CrashOnResult {
    fn request(&mut self, req: &mut Request) -> Action {
        if !self.done
            && req
                .text()
                .contains(&format!("<LocURI>{RESULT_NODE}</LocURI>"))
        {
            self.done = true;
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            // Wait until it is gone, so the result never reaches it.
            std::thread::sleep(std::time::Duration::from_millis(200));
            return Action::Drop;
        }
        Action::Forward
    }
}

/// Malformed SyncML and WBXML to the real server's `/dm`, and a flood of DM sessions: every
/// message gets an HTTP or SyncML status, the server never falls over, and a real device's
/// update afterwards goes through.
pub fn malformed_and_flood(test: &str, cell: Cell) {
    let Some(s) = setup(test, cell, &Opts::default()) else {
        return;
    };
    const XML: &str = "application/vnd.syncml.dm+xml";
    const WBXML: &str = "application/vnd.syncml.dm+wbxml";
    // A real first message to start from: what the device sends, captured on the path.
    let first = Arc::new(Mutex::new(None::<Vec<u8>>));
    let path = Relay::start(
        &s.op.url,
        Capture {
            first: first.clone(),
        },
    );
    point_to(&s.dev, &path.url);
    s.dev
        .check_update(&s.card, &[])
        .says(0, "no update offered");
    point_to(&s.dev, &s.op.url);
    let genuine = first.lock().unwrap().clone().unwrap();
    let text = String::from_utf8(genuine.clone()).unwrap();

    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("not XML", XML, b"\x00\x01garbage".to_vec()),
        (
            "truncated SyncML",
            XML,
            genuine[..genuine.len() / 2].to_vec(),
        ),
        (
            "no SyncHdr",
            XML,
            b"<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncBody><Final/></SyncBody></SyncML>".to_vec(),
        ),
        (
            "unknown command",
            XML,
            text.replacen("<Alert>", "<Frobnicate>", 1)
                .replacen("</Alert>", "</Frobnicate>", 1)
                .into_bytes(),
        ),
        (
            "bad WBXML",
            WBXML,
            vec![0x02, 0x00, 0x00, 0x6a, 0xff, 0xff, 0xff],
        ),
        ("empty WBXML", WBXML, Vec::new()),
        (
            "WBXML string table overflow",
            WBXML,
            vec![0x02, 0xa4, 0x01, 0x6a, 0x7f, 0x00],
        ),
        ("wrong media type", "text/plain", b"hello".to_vec()),
    ];
    for (what, ctype, body) in &cases {
        let (status, reply) = s.op.post_dm(ctype, body);
        assert!(
            matches!(status, 200 | 400 | 401 | 413 | 415),
            "{what}: HTTP {status}"
        );
        if status == 200 {
            let reply = String::from_utf8_lossy(&reply);
            assert!(reply.contains("<Status>"), "{what}: {reply}");
        }
    }
    // Too big: refused by size, not parsed.
    let (status, _) = s.op.post_dm(XML, &vec![b'<'; 300 * 1024]);
    assert_eq!(status, 413);

    // A flood: the genuine first message replayed by many clients at once.
    let url = format!("{}/dm", s.op.url);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), genuine.clone());
            std::thread::spawn(move || {
                let http = simfota_device::download::http_agent();
                let mut codes = Vec::new();
                for _ in 0..25 {
                    let r = http
                        .post(&url)
                        .header("Content-Type", XML)
                        .send(&body[..])
                        .unwrap();
                    codes.push(r.status().as_u16());
                }
                codes
            })
        })
        .collect();
    for t in threads {
        for code in t.join().unwrap() {
            assert!(matches!(code, 200 | 401 | 503), "flood answered {code}");
        }
    }
    let health = s.op.metrics();
    assert!(health.contains("simfota_dm_sessions_total"), "{health}");
    // Still correct: the device's update goes through.
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&s.w, &s.op, "v2", &v2, "2.0", 2);
    let c = s.op.campaign(pkg);
    let mut out = s.dev.check_update(&s.card, &[]);
    if out.code != 0 {
        // The flood moved the server's nonce for this device: one failed session is allowed
        // (the device learns the new nonce from the challenge), never a wrong result.
        out = s.dev.check_update(&s.card, &[]);
    }
    assert_user_sees(&out, 200, "the server has the result");
    s.op.assert_job(c, IMEI, "succeeded", 200, "verified");
}

struct Capture {
    first: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Hooks for Capture {
    fn request(&mut self, req: &mut Request) -> Action {
        let mut first = self.first.lock().unwrap();
        if first.is_none() && req.path.starts_with("/dm") {
            *first = Some(req.body.clone());
        }
        Action::Forward
    }
}

/// Stateless replicas (design §6): two `simfota server` processes on one PostgreSQL
/// database, behind a round-robin balancer, so consecutive messages of the device's DM
/// sessions and its downloads alternate between them. The package is uploaded through one
/// replica, the campaign started through the other; the update and the log read complete
/// as with one server, and both processes did part of the work.
pub fn replicas(test: &str, cell: Cell) {
    assert_eq!(
        cell.storage,
        Storage::Postgres,
        "replicas share a PostgreSQL database"
    );
    let Some(mut w) = World::new(test, cell) else {
        return;
    };
    let a = w.server("op", SERVER_ID);
    let b = w.replica(&a, "op-b");
    let balancer = Relay::start_balanced(&[&a.url, &b.url], PassThrough);
    let mut card = w.card("card", ICCID);
    card.personalize(
        &w.oem.1,
        &Perso {
            servers: vec![(SERVER_ID, a.key.1.as_path(), "all")],
            policy: "refuse",
            pin_tries: 3,
        },
    );
    a.register(IMEI, None);
    let v1 = firmware(V1_LEN, 1);
    let dev = w.device(&DeviceSpec {
        name: "dev",
        server_url: &balancer.url,
        server_id: SERVER_ID,
        imei: IMEI,
        v1: &v1,
        slots: None,
        notify_port: None,
        poll_secs: 300,
    });
    let v2 = firmware(V1_LEN, 2);
    let pkg = publish(&w, &b, "v2", &v2, "2.0", 2);
    let c = a.campaign(pkg);
    let out = dev.check_update(&card, &[]);
    assert_user_sees(&out, 200, "the server has the result");
    // One database: each replica tells the same story.
    a.assert_job(c, IMEI, "succeeded", 200, "verified");
    b.assert_job(c, IMEI, "succeeded", 200, "verified");
    assert_eq!(dev.firmware(), "2.0");
    let log = read_log(&a, &dev, &card, |l| {
        l.iter()
            .any(|e| e.entry.event == Event::Installed(FumoResult(200)))
    });
    assert!(log.iter().all(|e| e.verified), "{log:#?}");
    assert_eq!(b.card_log(ICCID).len(), log.len());
    // Both processes took DM messages of the same sessions.
    let (ma, mb) = (
        a.metric("simfota_dm_messages_total"),
        b.metric("simfota_dm_messages_total"),
    );
    assert!(ma >= 2.0 && mb >= 2.0, "DM messages: {ma} and {mb}");
}

/// A relay that changes nothing (a plain load balancer).
struct PassThrough;

impl Hooks for PassThrough {}
