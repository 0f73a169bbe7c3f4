//! APDU scripts as data files (tests/scripts/*.apdu): `> hex` sends one command APDU,
//! `< [data] SW` states the expected answer (`#n` = any n bytes, `*` = any data, `61*` = any
//! 61xx). Directives: `card blank` / `card personalized`, `reset`. Each script runs on both
//! crypto back-ends, which must answer it byte for byte alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(&s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

fn check(expect: &str, data: &[u8], sw: u16, where_: &str) {
    let toks: Vec<&str> = expect.split_whitespace().collect();
    let (sw_tok, data_toks) = toks.split_last().unwrap();
    if let Some(prefix) = sw_tok.strip_suffix('*') {
        assert_eq!(format!("{:02X}", sw >> 8), prefix, "{where_}: SW {sw:04X}");
    } else {
        assert_eq!(format!("{sw:04X}"), *sw_tok, "{where_}: SW");
    }
    match data_toks {
        [] => assert!(data.is_empty(), "{where_}: unexpected data {data:02X?}"),
        ["*"] => {}
        [n] if n.starts_with('#') => assert_eq!(
            data.len(),
            n[1..].parse::<usize>().unwrap(),
            "{where_}: data length"
        ),
        d => assert_eq!(data, &hex(&d.join(""))[..], "{where_}: data"),
    }
}

#[test]
fn apdu_scripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 4);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let answers = Crypto::ALL.map(|crypto| run(crypto, &name, &text));
        assert_eq!(answers[0], answers[1], "{name}: the back-ends answer alike");
    }
}

/// Runs one script on back-end `crypto`, checking each answer; returns the answers.
fn run(crypto: Crypto, name: &str, text: &str) -> Vec<(Vec<u8>, u16)> {
    let mut answers = Vec::new();
    let mut card: Option<Card> = None;
    let mut last: Option<(Vec<u8>, u16)> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let where_ = format!("{name}:{}", i + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(kind) = line.strip_prefix("card ") {
            card = Some(match kind {
                "blank" => Card::blank_on(crypto, "script"),
                "personalized" => {
                    World::new().card_on(crypto, &policy(simfota_wire::UnauthorizedRule::Refuse))
                }
                k => panic!("{where_}: unknown card kind {k}"),
            });
        } else if line == "reset" {
            card.as_mut().unwrap().applet.reset();
        } else if let Some(a) = line.strip_prefix('>') {
            let (d, sw) = card.as_mut().expect("card directive first").raw(&hex(a));
            answers.push((d.clone(), sw.0));
            last = Some((d, sw.0));
        } else if let Some(e) = line.strip_prefix('<') {
            let (d, sw) = last
                .take()
                .unwrap_or_else(|| panic!("{where_}: no command before"));
            check(e, &d, sw, &where_);
        } else {
            panic!("{where_}: cannot read {line:?}");
        }
    }
    answers
}
