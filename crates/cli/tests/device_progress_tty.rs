//! The progress bars as a person sees them: the real `simfota device check-update` in a tmux
//! terminal, updating from a real `simfota server` over a slow link, the pane captured while
//! the payload comes in and after the update (a full image, then a delta whose rebuild shows
//! the same way). Needs `tmux` (Debian package `tmux`).
//!
//! The link: a TCP relay on loopback that passes the server's bytes at a cellular pace
//! (1 MiB/s), in front of a server that tells devices to come through it (`--public-url`, as
//! behind a load balancer), so that a 3 MiB payload takes about three seconds to arrive.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "flows/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::scenarios::{self as s, Opts};
use support::world::{IMEI, PackageSpec, SQLITE_INPROCESS, edited, firmware};

/// What the link passes from the server to the device, in bytes a second.
const LINK_RATE: u64 = 1 << 20;
/// The new firmware's size: about three seconds on the link.
const PAYLOAD: usize = 3 << 20;
/// The bar's width in the template (crates/device/src/progress.rs).
const BAR_WIDTH: usize = 30;

#[test]
fn the_progress_bars_at_a_terminal_count_up_in_place_and_give_way_to_one_closing_line() {
    const T: &str =
        "the_progress_bars_at_a_terminal_count_up_in_place_and_give_way_to_one_closing_line";
    if !tmux_or_skip(T) {
        return;
    }
    let Some(mut setup) = s::setup(T, SQLITE_INPROCESS, &Opts::default()) else {
        return;
    };
    let link = SlowLink::start(setup.op.url.trim_start_matches("http://"), LINK_RATE);
    setup.op.restart_with(&["--public-url", &link.url]);
    s::point_to(&setup.dev, &link.url);
    // Only its owner reads the configuration: the screen is about the progress.
    std::fs::set_permissions(&setup.dev.config, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A full image: the download bar.
    let v2 = firmware(PAYLOAD, 2);
    let pkg = s::publish(&setup.w, &setup.op, "v2", &v2, "2.0", 2);
    let campaign = setup.op.campaign(pkg);
    let (frames, screen) = check_update_in_tmux(&setup, "full", "download");
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();

    // While the payload came in: one bar, redrawn in place, counting up.
    let midway: Vec<&Bar> = frames
        .iter()
        .filter(|b| (1..=99).contains(&b.percent))
        .collect();
    assert!(
        midway.len() >= 3,
        "the download was seen mid-way in {} frames: {frames:#?}\n{screen}",
        midway.len()
    );
    for bar in &frames {
        bar.assert_consistent(PAYLOAD as u64);
    }
    for pair in frames.windows(2) {
        assert!(pair[0].done <= pair[1].done, "counts up: {pair:#?}");
    }
    let percents: std::collections::BTreeSet<u32> = midway.iter().map(|b| b.percent).collect();
    assert!(percents.len() >= 2, "the bar moved: {midway:#?}");
    // Once the link's rate is measured, the bar shows it and the time left.
    let timed = midway
        .iter()
        .rev()
        .find(|b| b.left.is_some())
        .unwrap_or_else(|| panic!("no frame shows the time left: {midway:#?}"));
    assert!(
        timed.rate > 0 && timed.rate <= 4 * LINK_RATE,
        "the rate is the link's (1 MiB/s), give or take: {timed:#?}"
    );

    // After: one closing line in the bar's place, between the lines around it.
    let at = closing_line_between(
        &lines,
        "download",
        "3.0 MiB",
        &format!("downloading firmware 2.0 ({PAYLOAD} bytes)"),
        "the card compares the image digest with the signed one",
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("download: ")).count(),
        1,
        "the closing line comes once:\n{screen}"
    );
    // The write into the slot shows the same way: its closing line only, once done.
    let install: Vec<&&str> = lines[at..]
        .iter()
        .filter(|l| l.starts_with("install"))
        .collect();
    assert_eq!(
        install.first().map(|l| l.starts_with("install: ")),
        Some(true),
        "{screen}"
    );
    closing_line(install[0], "install", "3.0 MiB");
    setup
        .op
        .assert_job(campaign, IMEI, "succeeded", 200, "verified");
    assert_eq!(setup.dev.firmware(), "2.0");

    // A delta: the rebuild of the 3 MiB image shows the same way, closing line and all.
    let v21 = edited(&v2);
    let (envelope, delta) = setup.w.package(&PackageSpec {
        base: Some(&v2),
        ..PackageSpec::full("v21", &v21, "2.1", 3)
    });
    let campaign = setup.op.campaign(setup.op.upload(&envelope, &delta));
    let (frames, screen) = check_update_in_tmux(&setup, "delta", "rebuild");
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    for bar in &frames {
        bar.assert_consistent(v21.len() as u64);
    }
    closing_line_between(
        &lines,
        "rebuild",
        "3.0 MiB",
        "rebuilding the new image from the delta and the running 2.0",
        "the card compares the image digest with the signed one",
    );
    setup
        .op
        .assert_job(campaign, IMEI, "succeeded", 200, "verified");
    assert_eq!(setup.dev.firmware(), "2.1");
}

/// Runs `simfota device check-update` for the set-up's device in a tmux terminal of its
/// own, captures the screen every 40 ms until the command ends, and answers each frame of
/// the bar labelled `label` that was on the screen (at most one at a time: it is redrawn in
/// place), and the whole screen at the end, which must show success and no part of any bar.
fn check_update_in_tmux(setup: &s::Setup, name: &str, label: &str) -> (Vec<Bar>, String) {
    let mut command = vec![env!("CARGO_BIN_EXE_simfota").to_owned()];
    command.extend(["device", "check-update", "--config"].map(str::to_owned));
    command.push(setup.dev.config.display().to_string());
    command.extend(
        setup
            .card
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let tmux = Tmux::start(name, &command);
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let prefix = format!("{label} [");
    loop {
        let screen = tmux.screen();
        let bars: Vec<Bar> = screen
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| Bar::parse(label, l).unwrap_or_else(|| panic!("not a bar: {l:?}\n{screen}")))
            .collect();
        assert!(bars.len() <= 1, "the bar is redrawn in place:\n{screen}");
        frames.extend(bars);
        if screen.contains("exit status ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update did not end:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(40));
    }
    let screen = tmux.history();
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    assert!(
        lines.contains(&"exit status 0"),
        "check-update succeeded:\n{screen}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("update result 200: ")),
        "{screen}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(" [") || l.contains("=>")),
        "no part of a bar is left:\n{screen}"
    );
    (frames, screen)
}

/// Asserts that the closing line of `label` comes right after `before` and right before
/// `after` (nothing of the bar around it); answers its index.
#[track_caller]
fn closing_line_between(
    lines: &[&str],
    label: &str,
    size: &str,
    before: &str,
    after: &str,
) -> usize {
    let screen = lines.join("\n");
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no closing line of {label}:\n{screen}"));
    closing_line(lines[at], label, size);
    assert!(at > 0, "{screen}");
    assert_eq!(lines[at - 1], before, "{screen}");
    assert_eq!(lines.get(at + 1).copied(), Some(after), "{screen}");
    at
}

/// Asserts `line` is exactly a closing line: `LABEL: SIZE done in DURATION (RATE/s)`.
#[track_caller]
fn closing_line(line: &str, label: &str, size: &str) {
    let rest = line
        .strip_prefix(&format!("{label}: {size} done in "))
        .unwrap_or_else(|| panic!("not the closing line of {label} ({size}): {line:?}"));
    let (took, rate) = rest.split_once(" (").unwrap_or_else(|| panic!("{line:?}"));
    assert!(is_duration(took), "{line:?}");
    let rate = rate
        .strip_suffix("/s)")
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(bytes(rate).is_some(), "{line:?}");
}

/// One frame of the bar: `download [=====>      ]  37% 1.1 MiB of 3.0 MiB, 1.0 MiB/s, about
/// 1.9 s left`.
#[derive(Debug)]
struct Bar {
    line: String,
    filled: usize,
    percent: u32,
    done: u64,
    total: u64,
    rate: u64,
    left: Option<String>,
}

impl Bar {
    fn parse(label: &str, line: &str) -> Option<Bar> {
        let rest = line.trim_end().strip_prefix(label)?.strip_prefix(" [")?;
        let (bar, rest) = rest.split_once("] ")?;
        if bar.chars().count() != BAR_WIDTH || !bar.chars().all(|c| "=> ".contains(c)) {
            return None;
        }
        let filled = bar.chars().filter(|&c| c == '=').count();
        let (percent, rest) = rest.trim_start().split_once("% ")?;
        let (done, rest) = rest.split_once(" of ")?;
        let (total, rest) = rest.split_once(", ")?;
        let (rate, left) = match rest.split_once(", about ") {
            Some((rate, left)) => (rate, Some(left.strip_suffix(" left")?.to_owned())),
            None => (rest, None),
        };
        Some(Bar {
            line: line.to_owned(),
            filled,
            percent: percent.parse().ok()?,
            done: bytes(done)?,
            total: bytes(total)?,
            rate: bytes(rate.strip_suffix("/s")?)?,
            left,
        })
    }

    /// The numbers agree with each other and with the payload's size.
    #[track_caller]
    fn assert_consistent(&self, size: u64) {
        let line = &self.line;
        // Sizes are shown to a tenth of a unit: 3.0 MiB is 2.95 to 3.05 MiB.
        assert!(self.total.abs_diff(size) <= size / 60, "{line}");
        let shown = 100 * self.done / size;
        assert!(
            u64::from(self.percent).abs_diff(shown) <= 4,
            "percent and bytes disagree: {line}"
        );
        let cells = (self.percent as usize * BAR_WIDTH) / 100;
        assert!(
            self.filled.abs_diff(cells) <= 1,
            "the bar and the percent disagree: {line}"
        );
        if let Some(left) = &self.left {
            assert!(is_duration(left), "{line}");
        }
    }
}

/// A size as the progress display writes it (`512 B`, `3.4 KiB`, `1.0 MiB`), in bytes.
fn bytes(text: &str) -> Option<u64> {
    let (number, unit) = text.split_once(' ')?;
    let scale: u64 = match unit {
        "B" => return number.parse().ok(),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    let (whole, tenth) = number.split_once('.')?;
    if tenth.len() != 1 {
        return None;
    }
    let tenths: u64 = whole.parse::<u64>().ok()? * 10 + tenth.parse::<u64>().ok()?;
    Some(tenths * scale / 10)
}

/// A duration as the progress display writes it: `0.4 s`, `12 s`, `3 min 4 s`.
fn is_duration(text: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if let Some((min, sec)) = text.split_once(" min ") {
        return digits(min) && sec.strip_suffix(" s").is_some_and(digits);
    }
    match text.strip_suffix(" s") {
        Some(secs) => match secs.split_once('.') {
            Some((whole, tenth)) => digits(whole) && tenth.len() == 1 && digits(tenth),
            None => digits(secs),
        },
        None => false,
    }
}

/// A slow network link: a TCP relay on loopback that passes what the server sends at `rate`
/// bytes a second, and what the device sends as it comes. Stops when dropped.
struct SlowLink {
    url: String,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl SlowLink {
    fn start(upstream: &str, rate: u64) -> SlowLink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for device in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(device) = device else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                std::thread::spawn(move || relay(device, server, rate));
            }
        });
        SlowLink {
            url: format!("http://127.0.0.1:{port}"),
            stop,
            port,
        }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Passes one connection both ways, the server's side paced to `rate` bytes a second.
fn relay(device: TcpStream, server: TcpStream, rate: u64) {
    let (Ok(mut device_in), Ok(mut server_out)) = (device.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut device_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut from, mut to) = (server, device);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        // Ahead of the link's pace: wait until the bytes sent so far are due.
        let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn tmux_or_skip(test: &str) -> bool {
    if Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
        panic!("{test}: tmux is required (Debian package tmux)");
    }
    println!("skipped: {test}: tmux missing");
    false
}

/// A tmux server of its own, running one command in a 200 x 50 terminal; the shell prints
/// `exit status N` after it and keeps the pane open. Killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, command: &[String]) -> Tmux {
        let socket = format!("simfota-progress-{}-{name}", std::process::id());
        let quoted: Vec<String> = command
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        let script = format!("{}; echo \"exit status $?\"; sleep 600", quoted.join(" "));
        let ok = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
                &script,
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        Tmux { socket }
    }

    /// The visible screen.
    fn screen(&self) -> String {
        self.capture(&[])
    }

    /// The screen with what scrolled off it.
    fn history(&self) -> String {
        self.capture(&["-S", "-"])
    }

    fn capture(&self, extra: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux capture-pane: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}
