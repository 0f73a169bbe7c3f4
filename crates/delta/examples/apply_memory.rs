//! Peak memory of applying a delta, in memory (`apply_with`) and streaming (`apply_to`), as
//! the device does with its slot files. Each mode runs in its own process so that the peak
//! (`VmHWM` in /proc/self/status) is that mode's alone:
//!
//! ```text
//! cargo run --release -p simfota-delta --example apply_memory -- make DIR 64
//! cargo run --release -p simfota-delta --example apply_memory -- memory DIR
//! cargo run --release -p simfota-delta --example apply_memory -- stream DIR
//! ```
//!
//! `make` writes a pseudo-random `old.bin` of the given size in MiB, `new.bin` with 2 % of its
//! 4 KiB blocks rewritten and 64 KiB inserted, and `delta`. Figures: docs/performance.md.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn noise(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

fn make(dir: &Path, mib: usize) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mut state = 0x5eed_u64;
    let mut old = vec![0u8; mib << 20];
    noise(&mut old, &mut state);
    let mut new = old.clone();
    let blocks = new.len() / 4096;
    for b in (0..blocks).step_by(50) {
        noise(&mut new[b * 4096..(b + 1) * 4096], &mut state);
    }
    let mut inserted = vec![0u8; 64 << 10];
    noise(&mut inserted, &mut state);
    let at = new.len() / 3;
    new.splice(at..at, inserted);
    let delta = simfota_delta::diff(&old, &new)?;
    std::fs::write(dir.join("old.bin"), &old)?;
    std::fs::write(dir.join("new.bin"), &new)?;
    std::fs::write(dir.join("delta"), &delta)?;
    println!(
        "old {} bytes, new {} bytes, delta {} bytes",
        old.len(),
        new.len(),
        delta.len()
    );
    Ok(())
}

fn run(mode: &str, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let delta = std::fs::read(dir.join("delta"))?;
    let start = Instant::now();
    let size = match mode {
        // What the device did before: both images in memory, then the new one written out.
        "memory" => {
            let old = std::fs::read(dir.join("old.bin"))?;
            let new = simfota_delta::apply_with(&old, &delta, &simfota_delta::Limits::default())?;
            std::fs::write(dir.join("out.bin"), &new)?;
            new.len() as u64
        }
        // What it does now: the old image read from its file, the new one written as made.
        "stream" => {
            let old = File::open(dir.join("old.bin"))?;
            let len = old.metadata()?.len();
            let mut out = BufWriter::with_capacity(256 << 10, File::create(dir.join("out.bin"))?);
            let applied = simfota_delta::apply_to(
                old,
                len,
                &delta,
                &mut out,
                &simfota_delta::Limits::default(),
            )?;
            out.flush()?;
            applied.size
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    let took = start.elapsed();
    let peak = peak_rss_mib();
    if std::fs::read(dir.join("out.bin"))? != std::fs::read(dir.join("new.bin"))? {
        return Err("the rebuilt image differs".into());
    }
    println!(
        "{mode}: {size} bytes rebuilt in {:.2} s, peak RSS {} MiB (before the check)",
        took.as_secs_f64(),
        peak.map_or_else(|| "?".to_owned(), |m| m.to_string())
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.as_slice() {
        [m, dir, mib] if m == "make" => match mib.parse() {
            Ok(mib) => make(Path::new(dir), mib),
            Err(e) => Err(e.into()),
        },
        [m, dir] => run(m, Path::new(dir)),
        _ => Err("usage: apply_memory make DIR MIB | memory DIR | stream DIR".into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apply_memory: {e}");
            ExitCode::FAILURE
        }
    }
}
