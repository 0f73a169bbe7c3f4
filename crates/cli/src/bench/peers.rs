//! `simfota bench delta --compare`: the delta tools a firmware engineer would pick instead,
//! run on the same image pair in the same invocation as simfota's own diff and apply.
//!
//! Each peer runs only when it is installed: `bsdiff`/`bspatch`, `xdelta3` and `zstd` from
//! Debian (`apt-get install bsdiff xdelta3 zstd`), `detools` and the `hdiffpatch` Python module
//! from PyPI (`pip install detools hdiffpatch`; the Python is `$SIMFOTA_PEERS_PYTHON`, else
//! `python3`). Times are wall-clock times of the peer's own command, files in and out, as a
//! user would run it (the HDiffPatch module is timed inside Python, around its diff and apply
//! calls, so that interpreter start-up and file reading do not count against it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One tool's figures on the pair.
pub(super) struct Row {
    pub(super) tool: String,
    pub(super) delta_len: u64,
    pub(super) diff: Duration,
    pub(super) apply: Duration,
}

/// How a command-line peer diffs and applies; `{old}`, `{new}`, `{patch}` and `{out}` stand
/// for the files.
struct Peer {
    tool: &'static str,
    program: &'static str,
    diff: &'static [&'static str],
    apply_program: &'static str,
    apply: &'static [&'static str],
}

const PEERS: &[Peer] = &[
    Peer {
        tool: "bsdiff 4 (bzip2)",
        program: "bsdiff",
        diff: &["{old}", "{new}", "{patch}"],
        apply_program: "bspatch",
        apply: &["{old}", "{out}", "{patch}"],
    },
    Peer {
        tool: "xdelta3 -9",
        program: "xdelta3",
        // -B: a source window as large as the source, so that no match is out of reach.
        diff: &[
            "-9", "-e", "-f", "-B", "{window}", "-s", "{old}", "{new}", "{patch}",
        ],
        apply_program: "xdelta3",
        apply: &[
            "-d", "-f", "-B", "{window}", "-s", "{old}", "{patch}", "{out}",
        ],
    },
    Peer {
        tool: "zstd -3 --patch-from",
        program: "zstd",
        diff: &[
            "-q",
            "-f",
            "-3",
            "--patch-from={old}",
            "{new}",
            "-o",
            "{patch}",
        ],
        apply_program: "zstd",
        apply: &[
            "-q",
            "-f",
            "-d",
            "--memory=2048MB",
            "--patch-from={old}",
            "{patch}",
            "-o",
            "{out}",
        ],
    },
    Peer {
        tool: "zstd -19 --patch-from",
        program: "zstd",
        diff: &[
            "-q",
            "-f",
            "-19",
            "--patch-from={old}",
            "{new}",
            "-o",
            "{patch}",
        ],
        apply_program: "zstd",
        apply: &[
            "-q",
            "-f",
            "-d",
            "--memory=2048MB",
            "--patch-from={old}",
            "{patch}",
            "-o",
            "{out}",
        ],
    },
    Peer {
        tool: "detools (bsdiff, lzma)",
        program: "detools",
        diff: &["create_patch", "-c", "lzma", "{old}", "{new}", "{patch}"],
        apply_program: "detools",
        apply: &["apply_patch", "{old}", "{patch}", "{out}"],
    },
    Peer {
        tool: "detools (hdiffpatch, lzma)",
        program: "detools",
        diff: &[
            "create_patch",
            "-c",
            "lzma",
            "-t",
            "hdiffpatch",
            "-a",
            "hdiffpatch",
            "{old}",
            "{new}",
            "{patch}",
        ],
        apply_program: "detools",
        apply: &["apply_patch", "{old}", "{patch}", "{out}"],
    },
];

/// Whether `program` is an executable file on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|dir| std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file()))
    })
}

fn run(program: &str, args: &[String]) -> Result<Duration> {
    let start = Instant::now();
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// Runs every installed peer on `old` -> `new` (files in `dir`); `expected` is the new image,
/// which every peer's output must equal. A peer that fails is reported and skipped.
pub(super) fn run_all(dir: &Path, old: &Path, new: &Path, expected: &[u8], runs: u32) -> Vec<Row> {
    let window = std::fs::metadata(old)
        .map(|m| m.len().max(1 << 20).next_power_of_two().min(1 << 31))
        .unwrap_or(1 << 26)
        .to_string();
    let mut rows = Vec::new();
    for (i, peer) in PEERS.iter().enumerate() {
        if !on_path(peer.program) || !on_path(peer.apply_program) {
            outln!("  {:<28} not installed, skipped", peer.tool);
            continue;
        }
        let patch = dir.join(format!("peer{i}.patch"));
        let out = dir.join(format!("peer{i}.out"));
        let fill = |args: &[&str]| -> Vec<String> {
            args.iter()
                .map(|a| {
                    a.replace("{old}", &old.to_string_lossy())
                        .replace("{new}", &new.to_string_lossy())
                        .replace("{patch}", &patch.to_string_lossy())
                        .replace("{out}", &out.to_string_lossy())
                        .replace("{window}", &window)
                })
                .collect()
        };
        let result = (|| -> Result<Row> {
            let diff = run(peer.program, &fill(peer.diff))?;
            let delta_len = std::fs::metadata(&patch)
                .context("the peer wrote no patch")?
                .len();
            let mut apply = Duration::MAX;
            for _ in 0..runs {
                apply = apply.min(run(peer.apply_program, &fill(peer.apply))?);
            }
            if std::fs::read(&out).context("the peer wrote no image")? != expected {
                bail!("its rebuilt image differs from the new image");
            }
            Ok(Row {
                tool: peer.tool.to_owned(),
                delta_len,
                diff,
                apply,
            })
        })();
        let _ = std::fs::remove_file(&patch);
        let _ = std::fs::remove_file(&out);
        match result {
            Ok(row) => rows.push(row),
            Err(e) => outln!("  {:<28} failed: {e:#}", peer.tool),
        }
    }
    match hdiffpatch(old, new, runs) {
        Ok(Some(mut more)) => rows.append(&mut more),
        Ok(None) => outln!(
            "  {:<28} not installed, skipped",
            "HDiffPatch (Python module)"
        ),
        Err(e) => outln!("  {:<28} failed: {e:#}", "HDiffPatch (Python module)"),
    }
    rows
}

/// The Python that may have the `hdiffpatch` module.
fn python() -> PathBuf {
    std::env::var_os("SIMFOTA_PEERS_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// Diffs and applies with the HDiffPatch library through its PyPI module, once per coder
/// (zstd and LZMA2 at their strongest settings); timed in Python, the rebuilt image compared
/// there. `None` when the module is not installed.
fn hdiffpatch(old: &Path, new: &Path, runs: u32) -> Result<Option<Vec<Row>>> {
    const SCRIPT: &str = r#"
import sys, time
try:
    import hdiffpatch as h
except ImportError:
    print("missing"); sys.exit(0)
old = open(sys.argv[1], "rb").read(); new = open(sys.argv[2], "rb").read(); runs = int(sys.argv[3])
for name, comp in (("zstd", h.COMPRESSION_ZSTD), ("lzma2", h.COMPRESSION_LZMA2)):
    t = time.perf_counter(); d = h.diff(old, new, comp, validate=False); td = time.perf_counter() - t
    ta = None
    for _ in range(runs):
        t = time.perf_counter(); out = h.apply(old, d); x = time.perf_counter() - t
        ta = x if ta is None else min(ta, x)
    if out != new: raise SystemExit("hdiffpatch rebuilt a different image")
    print(name, len(d), td, ta)
"#;
    let out = match Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(old)
        .arg(new)
        .arg(runs.to_string())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("cannot run Python"),
    };
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim() == "missing" {
        return Ok(None);
    }
    let mut rows = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, len, diff, apply] = f[..] else {
            bail!("unexpected output from the HDiffPatch script: {line}");
        };
        let secs = |s: &str| -> Result<Duration> {
            Ok(Duration::from_secs_f64(s.parse().context("bad time")?))
        };
        rows.push(Row {
            tool: format!("HDiffPatch ({name}, PyPI module)"),
            delta_len: len.parse().context("bad size")?,
            diff: secs(diff)?,
            apply: secs(apply)?,
        });
    }
    Ok(Some(rows))
}
