//! `simfota card` through the real PC/SC stack: the binary serves a card state into pcscd
//! (vpcd), and our own client, our card tools and third-party PC/SC clients (opensc-tool,
//! scriptor, a pyscard script) talk to it; then the card is pulled (the serve process killed)
//! and reset, and its state on disk must be whole.
//!
//! Needs `SIMFOTA_PCSCD=1` (pcscd running with vsmartcard-vpcd), opensc-tool, scriptor and
//! /usr/bin/python3 with pyscard; without them the tests fail, or skip under
//! `SIMFOTA_SKIP_EXTERNAL=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use simfota_cardlink::client::{CardClient, ClientError, PinStatus};
use simfota_cardlink::pcsc::PcscChannel;
use simfota_cardlink::wire::Imei;
use simfota_cardlink::{LinkError, ResetKind};

const READER: &str = "Virtual PCD 00 00";
const VPCD: &str = "127.0.0.1:35963";
const ICCID: &str = "89882110000000000010";
const IMEI: &str = "490154203237518";
const AID_SELECT: &str = "00 A4 04 00 09 F0 73 69 6D 66 6F 74 61 01 00";

static SLOT: Mutex<()> = Mutex::new(());

fn require(what: &str, present: bool, test: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
        panic!("{test}: {what} is required");
    }
    println!("skipped: {test}: {what} missing");
    false
}

fn pcscd(test: &str) -> Option<MutexGuard<'static, ()>> {
    let up = std::env::var("SIMFOTA_PCSCD").as_deref() == Ok("1");
    if !require("pcscd with vsmartcard-vpcd (SIMFOTA_PCSCD=1)", up, test) {
        return None;
    }
    Some(SLOT.lock().unwrap_or_else(|e| e.into_inner()))
}

fn tool(name: &str, probe: &[&str]) -> bool {
    Command::new(name)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn simfota(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simfota"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = simfota(dir, args);
    assert!(
        out.status.success(),
        "simfota {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Keys and a personalized card state in a fresh directory.
fn card_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for k in ["issuer", "server", "oem", "oem2"] {
        ok(d, &["keys", "gen", "--out", &format!("{k}.pem")]);
        let public = ok(d, &["keys", "pub", &format!("{k}.pem")]);
        std::fs::write(d.join(format!("{k}.pub.pem")), public).unwrap();
    }
    ok(
        d,
        &[
            "card",
            "personalize",
            "--state",
            "card.state",
            "--issuer-key",
            "issuer.pem",
            "--iccid",
            ICCID,
            "--imsi",
            "001010123456789",
            "--pin",
            "1234",
            "--puk",
            "12345678",
            "--server",
            "dm1=server.pub.pem:all",
            "--originator",
            "oem=oem.pub.pem",
            "--policy",
            "refuse",
        ],
    );
    dir
}

/// `simfota card serve` on the state, until dropped (then killed, as a pulled card).
struct Serve {
    child: Child,
}

impl Serve {
    fn start(dir: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_simfota"))
            .current_dir(dir)
            .args(["card", "serve", "--state", "card.state", "--vpcd", VPCD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let serve = Self { child };
        wait_for(
            || PcscChannel::connect(Some(READER)).is_ok(),
            "card inserted",
        );
        serve
    }

    fn kill(self) {
        drop(self);
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The next card must be a new insertion, not the dead one pcscd has not dropped yet.
        // (No panic here: a drop may run while a failed test unwinds.)
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && !matches!(
                PcscChannel::connect(Some(READER)),
                Err(LinkError::NoCard { .. })
            )
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cardlink/tests/scripts")
}

#[test]
fn pcsc_card_tools_and_third_party_clients() {
    let test = "pcsc_card_tools_and_third_party_clients";
    let Some(_slot) = pcscd(test) else { return };
    let have_opensc = require(
        "opensc-tool (opensc)",
        tool("opensc-tool", &["--version"]),
        test,
    );
    let have_scriptor = require("scriptor (pcsc-tools)", tool("scriptor", &["-h"]), test);
    let have_pyscard = require(
        "/usr/bin/python3 with pyscard (python3-pyscard)",
        Command::new("/usr/bin/python3")
            .args(["-c", "import smartcard"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false),
        test,
    );
    let dir = card_dir();
    let d = dir.path();
    let serve = Serve::start(d);

    // The card tools through the reader.
    let info = ok(d, &["card", "info", "--reader", READER]);
    assert!(info.contains(&format!("iccid: {ICCID}")), "{info}");
    assert!(info.contains("lifecycle: operational"), "{info}");
    let servers = ok(d, &["card", "servers", "--reader", READER]);
    assert!(
        servers.starts_with("dm1\trights=fw,log-read,log-ack,dm\t"),
        "{servers}"
    );
    // While served, the state file belongs to the serve process.
    let busy = simfota(d, &["card", "info", "--state", "card.state"]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use by another process"));

    // An offline-signed admin command, applied through the reader, once.
    ok(
        d,
        &[
            "card",
            "admin-sign",
            "--issuer-key",
            "issuer.pem",
            "--iccid",
            ICCID,
            "--counter",
            "1",
            "--out",
            "add.cbor",
            "put-originator",
            "oem2=oem2.pub.pem",
        ],
    );
    ok(d, &["card", "admin", "--reader", READER, "add.cbor"]);
    let originators = ok(d, &["card", "originators", "--reader", READER]);
    assert_eq!(originators.lines().count(), 2, "{originators}");
    let replay = simfota(d, &["card", "admin", "--reader", READER, "add.cbor"]);
    assert_eq!(replay.status.code(), Some(1));
    let err = String::from_utf8_lossy(&replay.stderr);
    assert!(
        err.starts_with("simfota: admin command add.cbor refused"),
        "{err}"
    );
    assert!(err.contains("already applied"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // opensc-tool: select the applet, read the card info.
    if have_opensc {
        let out = Command::new("opensc-tool")
            .args(["-r", READER, "-s", AID_SELECT, "-s", "80 CA 01 01 00"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert_eq!(text.matches("SW1=0x90, SW2=0x00").count(), 2, "{text}");
        // The FCI with version 1.0 and life cycle 2, then the ICCID digits "8988211..." in the info.
        assert!(text.contains("6F 09 A5 07 80 02 01 01 81 01 02"), "{text}");
        assert!(text.contains("38 39 38 38 32 31 31"), "{text}");
    }

    // scriptor: malformed APDUs get the documented status words.
    if have_scriptor {
        let out = Command::new("scriptor")
            .args(["-r", READER])
            .arg(scripts().join("malformed.scriptor"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let sws: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("< "))
            .map(|l| {
                let hex: Vec<&str> = l.split(" : ").next().unwrap_or("").split(' ').collect();
                hex[hex.len().saturating_sub(2)..].join("")
            })
            .collect();
        assert_eq!(
            sws,
            [
                "9000", "6700", "6700", "6D00", "6E00", "6881", "6A86", "63C2", "6700", "6700"
            ],
            "{text}"
        );
    }

    // pyscard: the server list, then the wrong-PIN sequence to blocking.
    if have_pyscard {
        let out = Command::new("/usr/bin/python3")
            .arg(scripts().join("pyscard_card.py"))
            .args([READER, "dm1"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("server dm1 rights 15"), "{text}");
        assert!(text.ends_with("ok\n"), "{text}");
        // Our client sees the same blocked PIN, and the PUK unblocks it.
        let mut client = CardClient::new(PcscChannel::connect(Some(READER)).unwrap());
        client.select().unwrap();
        assert_eq!(client.pin_status().unwrap(), PinStatus::Blocked);
        client.unblock_pin("12345678", None).unwrap();
        assert_eq!(client.pin_status().unwrap(), PinStatus::TriesLeft(3));
    }
    serve.kill();
    // Without a card, the tools say so in one line.
    let none = simfota(d, &["card", "info", "--reader", READER]);
    assert_eq!(none.status.code(), Some(1));
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("no card in Virtual PCD 00 00"), "{err}");
    let unknown = simfota(d, &["card", "info", "--reader", "No Such Reader"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no reader named"));
}

#[test]
fn pcsc_card_pulled_mid_flow_and_reset_keep_the_state_whole() {
    let test = "pcsc_card_pulled_mid_flow_and_reset_keep_the_state_whole";
    let Some(_slot) = pcscd(test) else { return };
    let dir = card_dir();
    let d = dir.path();
    let imei = Imei::parse(IMEI).unwrap();

    // A reset: the session is gone (nonce, PIN status), the card is not.
    let serve = Serve::start(d);
    let mut client = CardClient::new(PcscChannel::connect(Some(READER)).unwrap());
    client.reopen(Some(&imei)).unwrap();
    client.verify_pin("1234").unwrap();
    client.get_nonce().unwrap();
    client.reset(ResetKind::Warm).unwrap();
    assert!(
        client.card_info().is_err(),
        "applet still selected after a reset"
    );
    client.reopen(Some(&imei)).unwrap();
    assert_eq!(client.pin_status().unwrap(), PinStatus::TriesLeft(3));
    assert_eq!(client.card_info().unwrap().iccid, ICCID);

    // Pulled mid-flow: the serve process is killed while commands run.
    let worker = std::thread::spawn(move || {
        let mut last = None;
        for _ in 0..100_000 {
            let step = client
                .get_nonce()
                .and_then(|_| client.verify_pin("1234"))
                .and_then(|_| client.card_info().map(drop));
            if let Err(e) = step {
                last = Some(e);
                break;
            }
        }
        (client, last)
    });
    std::thread::sleep(Duration::from_millis(400));
    serve.kill();
    let (mut client, err) = worker.join().unwrap();
    let err = err.expect("the flow ran into the pulled card");
    assert!(
        matches!(
            err,
            ClientError::Link(LinkError::CardRemoved { .. } | LinkError::NoCard { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("Virtual PCD 00 00"), "{err}");
    // The next command says the same, clearly, instead of hanging.
    assert!(matches!(
        client.card_info(),
        Err(ClientError::Link(
            LinkError::CardRemoved { .. } | LinkError::NoCard { .. }
        ))
    ));

    // The state on disk is whole: the in-process card opens it, and so does a new serve.
    let info = ok(d, &["card", "info", "--state", "card.state"]);
    assert!(info.contains(&format!("iccid: {ICCID}")), "{info}");
    // A cut inside a commit may leave the next image half-written beside it; the image itself
    // is always a whole one (the replacement is a rename).
    assert_eq!(
        std::fs::metadata(d.join("card.state")).unwrap().len(),
        simfota_cardlink::card::PERSISTENT_SIZE as u64
    );
    let _serve = Serve::start(d);
    let selected = client.reopen(Some(&imei)).unwrap();
    assert_eq!(selected.version, (1, 1));
    // A cut between VERIFY's two transactions (try spent, then restored on a match) costs
    // that try, by design: the counter is committed before the comparison.
    let status = client.pin_status().unwrap();
    assert!(matches!(status, PinStatus::TriesLeft(2 | 3)), "{status:?}");
    client.verify_pin("1234").unwrap();
    client.reopen(Some(&imei)).unwrap();
    assert_eq!(client.pin_status().unwrap(), PinStatus::TriesLeft(3));
    let servers = client.servers().unwrap();
    assert_eq!(servers[0].id, "dm1");
}

/// The card tools on a state file (no PC/SC needed), and their one-line refusals.
#[test]
fn card_tools_on_a_state_file_and_their_refusals() {
    let dir = card_dir();
    let d = dir.path();
    let info = ok(d, &["card", "info", "--state", "card.state"]);
    assert!(info.contains(&format!("iccid: {ICCID}")), "{info}");
    assert!(info.contains("admin counter: 0"), "{info}");
    let policy = ok(d, &["card", "policy", "--state", "card.state"]);
    assert!(policy.contains("unauthorized servers: refuse"), "{policy}");
    ok(
        d,
        &[
            "card",
            "admin-sign",
            "--issuer-key",
            "issuer.pem",
            "--iccid",
            ICCID,
            "--counter",
            "7",
            "--out",
            "policy.cbor",
            "set-policy",
            "confirm-with-pin:card-digest=4096",
        ],
    );
    ok(
        d,
        &["card", "admin", "--state", "card.state", "policy.cbor"],
    );
    let policy = ok(d, &["card", "policy", "--state", "card.state"]);
    assert!(policy.contains("confirm-with-pin"), "{policy}");
    assert!(
        policy.contains("card-digest (payloads up to 4096 bytes)"),
        "{policy}"
    );
    let info = ok(d, &["card", "info", "--state", "card.state"]);
    assert!(info.contains("admin counter: 7"), "{info}");

    let fails = |args: &[&str], code: i32, needle: &str| {
        let out = simfota(d, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    // Replayed, for another card, signed by someone else.
    fails(
        &["card", "admin", "--state", "card.state", "policy.cbor"],
        1,
        "already applied",
    );
    ok(
        d,
        &[
            "card",
            "admin-sign",
            "--issuer-key",
            "issuer.pem",
            "--iccid",
            "89882110000000000028",
            "--counter",
            "8",
            "--out",
            "other.cbor",
            "remove-server",
            "dm1",
        ],
    );
    fails(
        &["card", "admin", "--state", "card.state", "other.cbor"],
        1,
        "for another card",
    );
    ok(
        d,
        &[
            "card",
            "admin-sign",
            "--issuer-key",
            "server.pem",
            "--iccid",
            ICCID,
            "--counter",
            "9",
            "--out",
            "forged.cbor",
            "remove-server",
            "dm1",
        ],
    );
    fails(
        &["card", "admin", "--state", "card.state", "forged.cbor"],
        1,
        "signature is invalid",
    );
    // Personalization happens once.
    fails(
        &[
            "card",
            "personalize",
            "--state",
            "card.state",
            "--issuer-key",
            "issuer.pem",
            "--iccid",
            ICCID,
            "--imsi",
            "001010123456789",
            "--pin",
            "1234",
            "--puk",
            "12345678",
        ],
        1,
        "already personalized",
    );
    // Bad input, missing card, no vpcd.
    fails(
        &[
            "card",
            "personalize",
            "--state",
            "new.state",
            "--issuer-key",
            "issuer.pem",
            "--iccid",
            "1234",
            "--imsi",
            "001010123456789",
            "--pin",
            "1234",
            "--puk",
            "12345678",
        ],
        1,
        "Luhn",
    );
    fails(
        &["card", "info", "--state", "missing.state"],
        1,
        "no card state at missing.state",
    );
    fails(
        &[
            "card",
            "admin-sign",
            "--issuer-key",
            "issuer.pem",
            "--iccid",
            ICCID,
            "--counter",
            "1",
            "--out",
            "x.cbor",
            "set-policy",
            "maybe",
        ],
        1,
        "unknown policy rule",
    );
    fails(&["card", "info"], 2, "--reader");
    fails(
        &[
            "card",
            "serve",
            "--state",
            "card.state",
            "--vpcd",
            "127.0.0.1:9",
        ],
        1,
        "cannot reach vpcd at 127.0.0.1:9",
    );
}
