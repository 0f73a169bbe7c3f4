//! The applet on a Cortex-M: the firmware (`thumbv7em-none-eabihf`, built by scripts/test)
//! runs under `qemu-system-arm -M mps2-an386` and gets every APDU of the card's APDU scripts
//! (`crates/card/tests/scripts/*.apdu`) and of a full update flow, over the emulated UART.
//! Each answer must be the host build's answer, byte for byte. The run then prints the code
//! size, RAM and stack high-water figures of docs/card.md, "The applet on a Cortex-M".
//!
//! A missing `qemu-system-arm` fails the test (it is skipped only with
//! `SIMFOTA_SKIP_EXTERNAL=1`); a missing or stale firmware fails it with the command that
//! builds it. `SIMFOTA_CARD_FIRMWARE=path` runs another build of the firmware (another
//! profile, say) instead of `target/thumbv7em-none-eabihf/release/simfota-card-firmware`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../card/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use common::*;
use simfota_card::{Applet, CardMemory, PowerCut, RngPlatform, StatusWord, ins};
use simfota_card_firmware::{
    BANNER, Measurement, OP_APDU, OP_EXIT, OP_MEASURE, OP_POWER_ON, OP_RESET, STATUS_OK,
};
use simfota_wire::{IntegrityMode, UnauthorizedRule};

const TARGET: &str = "thumbv7em-none-eabihf";
const BUILD: &str =
    "cargo build --locked --release --target thumbv7em-none-eabihf -p simfota-card-firmware";
/// How long one answer may take on the emulated board (an APDU with two signature checks
/// takes well under a second there).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// One step of a session, with the host build's answer.
enum Event {
    Reset,
    Apdu(Exchange),
}

/// A card from power-on: the generator's seed label and what happened to it.
struct Session {
    name: String,
    label: &'static str,
    events: Vec<Event>,
}

impl Session {
    fn new(name: String, label: &'static str) -> Self {
        Session {
            name,
            label,
            events: Vec::new(),
        }
    }

    /// Moves the card's recorded exchanges into the session.
    fn take(&mut self, card: &mut Card) {
        let recorded = card.transcript.as_mut().unwrap().drain(..);
        self.events.extend(recorded.map(Event::Apdu));
    }

    fn apdus(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Apdu(_)))
            .count()
    }
}

/// A blank recording card, as `Card::blank`, on the software crypto back-end: the
/// firmware's, whose signatures are deterministic.
fn recording(label: &str) -> Card {
    let mut card = Card::blank_on(Crypto::Software, label);
    card.transcript = Some(Vec::new());
    card
}

/// The scripts' "card personalized" (`World::default_card`), recorded from power-on.
fn personalized(session: &mut Session) -> Card {
    let w = World::new();
    let mut card = recording(session.label);
    w.personalize(
        &mut card,
        &World::policy(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest),
    );
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    // The recorded card is the one the scripts run on.
    assert_eq!(card.image(), w.default_card().image());
    session.take(&mut card);
    card
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(&s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

/// Every APDU script, run on the host build and recorded (the expected answers are checked
/// by the card crate's `scripts` test; here the host's answers are the reference).
fn script_sessions() -> Vec<Session> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../card/tests/scripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "apdu"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "APDU scripts in {}", dir.display());
    let mut sessions = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let mut card: Option<(Session, Card)> = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let at = format!("{name}:{}", i + 1);
            if line.is_empty() || line.starts_with('#') || line.starts_with('<') {
                continue;
            }
            if let Some(kind) = line.strip_prefix("card ") {
                if let Some((s, _)) = card.take() {
                    sessions.push(s);
                }
                card = Some(match kind {
                    "blank" => (Session::new(at, "script"), recording("script")),
                    "personalized" => {
                        let mut s = Session::new(at, "card rng");
                        let c = personalized(&mut s);
                        (s, c)
                    }
                    k => panic!("{at}: unknown card kind {k}"),
                });
            } else if line == "reset" {
                let (s, c) = card.as_mut().expect("card directive first");
                c.applet.reset();
                s.events.push(Event::Reset);
            } else if let Some(a) = line.strip_prefix('>') {
                let (s, c) = card.as_mut().expect("card directive first");
                c.raw(&hex(a));
                s.take(c);
            } else {
                panic!("{at}: cannot read {line:?}");
            }
        }
        if let Some((s, _)) = card.take() {
            sessions.push(s);
        }
    }
    sessions
}

/// A full update on a personalized card (token and manifest signatures checked, device
/// digest, signed receipt), the receipt asked again, and the whole log read as the log
/// server (ECDH-ES, AES-GCM, a card signature per page): the deepest paths of the applet.
fn update_session() -> Session {
    let mut s = Session::new("full update, receipt, log export".into(), "card rng");
    let mut w = World::new();
    let mut card = personalized(&mut s);
    let (cti, receipt) = w.full_update(&mut card, 1);
    let (again, sw) = card.receipt(&cti);
    assert_eq!((sw, again), (StatusWord::OK, receipt));
    assert!(w.read_all(&mut card).len() >= 3);
    s.take(&mut card);
    s
}

/// The command an APDU carries, by its INS byte.
fn instruction(apdu: &[u8]) -> &'static str {
    match apdu.get(1).copied() {
        Some(ins::SELECT) => "SELECT",
        Some(ins::MANAGE_CHANNEL) => "MANAGE CHANNEL",
        Some(ins::GET_RESPONSE) => "GET RESPONSE",
        Some(ins::GET_CHALLENGE) => "GET CHALLENGE",
        Some(ins::VERIFY) => "VERIFY",
        Some(ins::CHANGE_REFERENCE_DATA) => "CHANGE REFERENCE DATA",
        Some(ins::RESET_RETRY_COUNTER) => "RESET RETRY COUNTER",
        Some(ins::GENERATE_KEY_PAIR) => "GENERATE ASYMMETRIC KEY PAIR",
        Some(ins::GET_DATA) => "GET DATA",
        Some(ins::STORE_DATA) => "STORE DATA",
        Some(ins::BIND_TERMINAL) => "BIND TERMINAL",
        Some(ins::AUTHORIZE_UPDATE) => "AUTHORIZE UPDATE",
        Some(ins::RECORD_CONSENT) => "RECORD CONSENT",
        Some(ins::PAYLOAD) => "PAYLOAD INTEGRITY",
        Some(ins::REPORT_RESULT) => "REPORT RESULT",
        Some(ins::READ_LOG) => "READ LOG",
        Some(ins::ACK_LOG) => "ACKNOWLEDGE LOG",
        Some(ins::ADMIN) => "ADMIN",
        Some(ins::GET_RECEIPT) => "GET RECEIPT",
        _ => "other instruction bytes",
    }
}

/// The firmware under QEMU, killed when dropped.
struct Board {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<Result<(u8, Vec<u8>), String>>,
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Board {
    fn start(elf: &Path) -> Board {
        let mut child = Command::new("qemu-system-arm")
            .args(["-M", "mps2-an386", "-display", "none", "-monitor", "none"])
            .args(["-serial", "stdio"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .arg("-kernel")
            .arg(elf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-arm: {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut head = [0u8; 3];
                if let Err(e) = stdout.read_exact(&mut head) {
                    let _ = tx.send(Err(format!("the UART closed: {e}")));
                    return;
                }
                let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[1], head[2]]))];
                if let Err(e) = stdout.read_exact(&mut body) {
                    let _ = tx.send(Err(format!("the UART closed inside a frame: {e}")));
                    return;
                }
                if tx.send(Ok((head[0], body))).is_err() {
                    return;
                }
            }
        });
        let mut board = Board {
            child,
            stdin,
            answers,
        };
        assert_eq!(board.answer("the banner"), BANNER, "the firmware's banner");
        board
    }

    /// The next answer, which must have status OK.
    fn answer(&mut self, what: &str) -> Vec<u8> {
        match self.answers.recv_timeout(ANSWER_TIMEOUT) {
            Ok(Ok((STATUS_OK, body))) => body,
            Ok(Ok((status, body))) => panic!(
                "firmware answered {what} with status {status}: {}",
                String::from_utf8_lossy(&body)
            ),
            Ok(Err(e)) => panic!("no answer to {what}: {e}"),
            Err(_) => panic!("no answer to {what} within {ANSWER_TIMEOUT:?}"),
        }
    }

    fn request(&mut self, op: u8, body: &[u8], what: &str) -> Vec<u8> {
        let mut frame = vec![op];
        frame.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(body);
        self.stdin
            .write_all(&frame)
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("cannot send {what} to the firmware: {e}"));
        self.answer(what)
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

fn modified(p: &Path) -> SystemTime {
    p.metadata()
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The firmware ELF (`SIMFOTA_CARD_FIRMWARE`, or the release build in the target folder),
/// which must be newer than every source it was built from: the files its dep-info file
/// (`<elf>.d`, written by cargo) lists, and the memory map.
fn firmware() -> PathBuf {
    let elf = match std::env::var_os("SIMFOTA_CARD_FIRMWARE") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"))
            .join(TARGET)
            .join("release/simfota-card-firmware"),
    };
    let built = elf
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "no firmware at {} ({e}): build it with `{BUILD}` (scripts/test does)",
                elf.display()
            )
        });
    let dep_info = elf.with_extension("d");
    let deps = std::fs::read_to_string(&dep_info).unwrap_or_else(|e| {
        panic!(
            "no dep-info beside the firmware ({}: {e}): build it with `{BUILD}`",
            dep_info.display()
        )
    });
    // `target: dep dep …`, spaces inside a path escaped as `\ `.
    let (_, list) = deps.split_once(": ").expect("a dep-info line");
    let list = list.trim().replace("\\ ", "\0");
    let mut sources: Vec<PathBuf> = list
        .split_whitespace()
        .map(|p| PathBuf::from(p.replace('\0', " ")))
        .collect();
    sources.push(workspace().join("crates/card-firmware/memory.x"));
    assert!(sources.len() > 10, "the sources in {}", dep_info.display());
    for src in sources {
        assert!(
            modified(&src) <= built,
            "the firmware at {} is older than {}: rebuild it with `{BUILD}`",
            elf.display(),
            src.display()
        );
    }
    elf
}

/// Section sizes of an ELF32 file: (name, address, size, allocated).
fn sections(elf: &[u8]) -> Vec<(String, u32, u32, bool)> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    assert_eq!(&elf[..5], b"\x7fELF\x01", "a 32-bit ELF file");
    let shoff = u32_at(0x20) as usize;
    let shentsize = usize::from(u16_at(0x2E));
    let shnum = usize::from(u16_at(0x30));
    let strtab = shoff + usize::from(u16_at(0x32)) * shentsize;
    let names = u32_at(strtab + 0x10) as usize;
    (0..shnum)
        .map(|i| {
            let h = shoff + i * shentsize;
            let name_at = names + u32_at(h) as usize;
            let end = elf[name_at..].iter().position(|&b| b == 0).unwrap();
            let name = String::from_utf8_lossy(&elf[name_at..name_at + end]).to_string();
            const SHF_ALLOC: u32 = 2;
            (
                name,
                u32_at(h + 0x0C),
                u32_at(h + 0x14),
                u32_at(h + 8) & SHF_ALLOC != 0,
            )
        })
        .collect()
}

fn skip_without_qemu() -> bool {
    let ok = Command::new("qemu-system-arm")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return false;
    }
    if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() == Ok("1") {
        println!("skipped: qemu-system-arm is not installed");
        return true;
    }
    panic!(
        "qemu-system-arm is required (Debian package qemu-system-arm; set \
         SIMFOTA_SKIP_EXTERNAL=1 to skip instead) but not installed"
    );
}

#[test]
fn firmware_answers_as_the_host_build() {
    if skip_without_qemu() {
        return;
    }
    let elf = firmware();
    let mut sessions = script_sessions();
    sessions.push(update_session());

    let mut board = Board::start(&elf);
    // Stack high-water per session and per instruction, each command measured on its own
    // (the firmware paints the stack again after each measurement).
    let mut per_ins: BTreeMap<&'static str, u32> = BTreeMap::new();
    let measure = |board: &mut Board, what: &str| {
        let m = Measurement::from_bytes(&board.request(OP_MEASURE, &[], "measure")).unwrap();
        assert!(
            m.stack_untouched > 0,
            "{what}: the stack reached the bottom of the measured window"
        );
        m
    };
    let idle = measure(&mut board, "start-up");
    println!("| session | APDUs | stack high-water (bytes) |");
    println!("|---|---|---|");
    println!("| start-up, no card | 0 | {} |", idle.stack_high_water);
    let mut deepest = idle.stack_high_water;
    let mut last = idle;
    for s in &sessions {
        board.request(OP_POWER_ON, s.label.as_bytes(), "power on");
        let power_on = measure(&mut board, "power on").stack_high_water;
        let entry = per_ins.entry("power on (P)").or_default();
        *entry = (*entry).max(power_on);
        let mut session = power_on;
        for (i, e) in s.events.iter().enumerate() {
            match e {
                Event::Reset => {
                    board.request(OP_RESET, &[], "reset");
                }
                Event::Apdu(Exchange {
                    reader,
                    command,
                    response,
                }) => {
                    let mut body = u16::try_from(*reader)
                        .unwrap_or(u16::MAX)
                        .to_be_bytes()
                        .to_vec();
                    body.extend_from_slice(command);
                    let got = board.request(OP_APDU, &body, "an APDU");
                    assert!(
                        got == *response,
                        "{}, step {i}: command {}\n  host answered     {}\n  firmware answered {}",
                        s.name,
                        hex::encode_upper(command),
                        hex::encode_upper(response),
                        hex::encode_upper(&got),
                    );
                    last = measure(&mut board, &s.name);
                    session = session.max(last.stack_high_water);
                    let entry = per_ins.entry(instruction(command)).or_default();
                    *entry = (*entry).max(last.stack_high_water);
                }
            }
        }
        deepest = deepest.max(session);
        println!("| {} | {} | {session} |", s.name, s.apdus());
    }
    let mut by_depth: Vec<_> = per_ins.into_iter().collect();
    by_depth.sort_by_key(|&(name, depth)| (std::cmp::Reverse(depth), name));
    println!();
    println!("| command | stack high-water (bytes) |");
    println!("|---|---|");
    for (name, depth) in by_depth {
        println!("| {name} | {depth} |");
    }
    board.request(OP_EXIT, &[], "exit");
    let status = board.child.wait().unwrap();
    assert!(status.success(), "QEMU ended with {status}");

    // The applet's RAM state on the Cortex-M is the figure the card crate checks at compile
    // time for this target (≤ 2048 bytes).
    type HostApplet = Applet<PowerCut<CardMemory>, RngPlatform<TestRng>>;
    assert!(last.ram_state as usize <= 2048);
    let bytes = std::fs::read(&elf).unwrap();
    let secs = sections(&bytes);
    let size = |n: &str| secs.iter().find(|s| s.0 == n).map_or(0, |s| s.2);
    let flash: u32 = secs
        .iter()
        .filter(|s| s.3 && s.1 < 0x2000_0000)
        .map(|s| s.2)
        .sum::<u32>()
        + size(".data");
    let ram: u32 = secs
        .iter()
        .filter(|s| s.3 && s.1 >= 0x2000_0000)
        .map(|s| s.2)
        .sum();
    println!();
    println!(
        "code: .vector_table {} + .text {} + .rodata {} (+ .data's image {}) = {flash} bytes of flash",
        size(".vector_table"),
        size(".text"),
        size(".rodata"),
        size(".data")
    );
    println!(
        "RAM: .data {} + .bss {} = {ram} bytes of statics (card image {}: two copies of the {}-byte image and a flag, applet object {}, \
         of which RAM state {} (host: {}), link buffers {})",
        size(".data"),
        size(".bss"),
        std::mem::size_of::<CardMemory>(),
        simfota_card::PERSISTENT_SIZE,
        last.applet_object,
        last.ram_state,
        HostApplet::ram_state_size(),
        simfota_card_firmware::MAX_REQUEST + simfota_card_firmware::RESPONSE_CAP,
    );
    println!("stack: {deepest} bytes at most (high-water over every session)");
}
