//! The consent prompt on a real terminal (tmux): the warning names the server, "y" confirms,
//! and the PIN is read without echo. Needs `tmux` (Debian package `tmux`).

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use simfota_device::prompt::{Answer, ConsentRequest, PromptChoice, Prompter, StandardPrompter};

/// The prompting side, run inside tmux by the tests below.
#[test]
#[ignore = "runs inside tmux for the_tty_prompt_reads_the_pin_without_echo"]
fn prompt_child() {
    let mut p = StandardPrompter::new(PromptChoice::default());
    let answer = p
        .ask(&ConsentRequest {
            server: "dm.rogue.example".into(),
            release: Some("\"firmware\" version 2.0".into()),
            why: "it is not on the card's list (the card lists: dm.operator.example)".into(),
            needs_pin: true,
            pin_tries_left: None,
        })
        .unwrap();
    match answer {
        Answer::AcceptedWithPin(pin) => println!(
            "ANSWER accepted-with-pin:{}:{}",
            pin.len(),
            pin.as_str() == "4321"
        ),
        Answer::Accepted => println!("ANSWER accepted"),
        Answer::Declined => println!("ANSWER declined"),
    }
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

struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str) -> Tmux {
        let socket = format!("simfota-device-{}-{name}", std::process::id());
        let cmd = format!(
            "{} --exact prompt_child --ignored --nocapture --test-threads=1; sleep 30",
            std::env::current_exe().unwrap().display()
        );
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
                &cmd,
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        Tmux { socket }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-S", "-100"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited for `{text}`, the screen shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["-L", &self.socket, "send-keys"];
        args.extend_from_slice(keys);
        assert!(Command::new("tmux").args(&args).status().unwrap().success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn the_tty_prompt_reads_the_pin_without_echo() {
    if !tmux_or_skip("the_tty_prompt_reads_the_pin_without_echo") {
        return;
    }
    let t = Tmux::start("pin");
    let s = t.wait_for("Install it anyway? [y/N]");
    assert!(s.contains("\"dm.rogue.example\""), "{s}");
    assert!(s.contains("NOT authorized"), "{s}");
    assert!(s.contains("card PIN"), "{s}");
    t.keys(&["y", "Enter"]);
    t.wait_for("Card PIN");
    t.keys(&["4321", "Enter"]);
    let s = t.wait_for("ANSWER");
    assert!(s.contains("ANSWER accepted-with-pin:4:true"), "{s}");
    assert!(
        !s.replace("ANSWER accepted-with-pin:4:true", "")
            .contains("4321"),
        "the PIN was echoed:\n{s}"
    );
}

#[test]
fn the_tty_prompt_declines_by_default() {
    if !tmux_or_skip("the_tty_prompt_declines_by_default") {
        return;
    }
    let t = Tmux::start("no");
    t.wait_for("Install it anyway? [y/N]");
    t.keys(&["Enter"]);
    let s = t.wait_for("ANSWER");
    assert!(s.contains("ANSWER declined"), "{s}");
}
