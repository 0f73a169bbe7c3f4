//! `simfota device run` under a service manager: SIGTERM (and SIGINT) let the DM session in
//! progress finish, then the agent exits 0 with a one-line message.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn sigterm_stops_device_run_after_the_session_in_progress() {
    stops_after_the_session_in_progress("TERM");
}

#[test]
fn sigint_stops_device_run_after_the_session_in_progress() {
    stops_after_the_session_in_progress("INT");
}

fn stops_after_the_session_in_progress(sig: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A DM server that takes the session's request and answers only after a while, so the
    // signal arrives while a step is in progress.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, on_accept) = mpsc::channel();
    let (closed, on_close) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        accepted.send(()).unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        std::thread::sleep(Duration::from_millis(1500));
        closed.send(Instant::now()).unwrap();
        drop(conn);
    });
    std::fs::write(
        d.join("DEVICE.toml"),
        format!(
            "server_url = \"http://127.0.0.1:{port}\"\nserver_id = \"simfota-demo\"\n\
             imei = \"490154203237518\"\ndata_dir = \"data\"\npoll_interval_secs = 300\n\
             [credentials]\nusername = \"dev-1\"\npassword = \"a\"\nserver_password = \"b\"\n\
             [card]\nstate = \"CARD.state\"\n"
        ),
    )
    .unwrap();
    std::fs::write(d.join("v1.bin"), vec![7u8; 4096]).unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["device", "init", "--version", "1.0", "--config"])
        .arg(d.join("DEVICE.toml"))
        .arg("--image")
        .arg(d.join("v1.bin"))
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["device", "run", "--yes", "--config"])
        .arg(d.join("DEVICE.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if on_accept.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the agent never opened a session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success());
    let sent = Instant::now();
    let out = child.wait_with_output().unwrap();
    let exited = Instant::now();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    let closed_at = on_close.recv_timeout(Duration::from_secs(5)).unwrap();
    // The session in progress ran to its end (the server closed it) before the agent left.
    assert!(closed_at > sent && exited >= closed_at, "{err}");
    assert!(err.contains("session 1 (poll) failed: "), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("stopped on SIG{sig}: the step in progress finished, state saved"),
        "{err}"
    );
    // Only one session: the stop was seen before the next poll.
    assert_eq!(err.matches(") failed: ").count(), 1, "{err}");
}
