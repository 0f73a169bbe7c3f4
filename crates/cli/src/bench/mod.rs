//! `simfota bench`: measurements behind docs/performance.md.
//!
//! Benchmarks print figures; they never fail on a slow machine. Each one makes its own input
//! in a temporary directory (deterministic pseudo-random bytes) and removes it afterwards.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sha2::{Digest, Sha256};

use crate::pack;

mod download;
mod peers;
mod serve;

/// Arguments of `simfota bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Build and verify a package for a large image; payload hashing vs sha256sum.
    Hash {
        /// Image size in MiB.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
        size_mib: u32,
        /// Timed runs of each step (the best is reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
        /// Directory for the temporary image (default: the system temporary directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Delta size, diff and apply time for a realistic firmware change (or a given pair).
    Delta {
        /// Image size in MiB.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
        size_mib: u32,
        /// Percentage of 4 KiB blocks rewritten.
        #[arg(long, default_value_t = 2.0)]
        changed_pct: f64,
        /// What the image holds: incompressible bytes, or code-like words whose absolute call
        /// addresses move when code is inserted (what a recompiled firmware looks like).
        #[arg(long, value_enum, default_value_t = Content::Random)]
        content: Content,
        /// zstd level of the delta streams (1-19).
        #[arg(long, default_value_t = simfota_delta::DiffOptions::default().level,
              value_parser = clap::value_parser!(i32).range(1..=19))]
        level: i32,
        /// Coders tried per stream: the smaller of zstd and LZMA2, or zstd only.
        #[arg(long, value_enum, default_value_t = Coders::Smallest)]
        coders: Coders,
        /// Measure this pair of files (old image, new image) instead of a synthetic change
        /// (`scripts/delta-pairs` fetches real ones).
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        pair: Option<Vec<PathBuf>>,
        /// Also run the peer tools that are installed (bsdiff, xdelta3, zstd --patch-from,
        /// detools, HDiffPatch) on the same pair, in the same run.
        #[arg(long)]
        compare: bool,
        /// Timed apply runs per tool (the best is reported; each diff runs once).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
    },
    /// The device agent's payload download next to `curl -o` on loopback (same URL, same
    /// run), and the time to resume after a cut.
    Download {
        /// Payload size in MiB.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
        size_mib: u32,
        /// Downloads of each kind (min / median / max are reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// Directory for the server's data and the downloads (default: the system temporary
        /// directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Payload download speed from `simfota server` next to nginx serving the same file, both
    /// fetched by curl on loopback in alternation.
    Serve {
        /// Payload size in MiB.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
        size_mib: u32,
        /// Downloads from each server.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
    },
}

/// `--coders` of `bench delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Coders {
    /// zstd and LZMA2 per stream, the smaller kept.
    Smallest,
    /// zstd only.
    Zstd,
}

/// The kind of image `bench delta` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Content {
    /// Pseudo-random bytes: compressed or encrypted sections, the worst case.
    Random,
    /// 32-bit words: opcodes from a small vocabulary and absolute call addresses.
    Code,
}

/// Runs `simfota bench ...`.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        BenchCommand::Hash {
            size_mib,
            runs,
            dir,
        } => hash(size_mib, runs, dir.as_deref())?,
        BenchCommand::Delta {
            size_mib,
            changed_pct,
            content,
            level,
            coders,
            pair,
            compare,
            runs,
        } => {
            if !(0.0..=100.0).contains(&changed_pct) {
                bail!("--changed-pct must be between 0 and 100, got {changed_pct}");
            }
            let options = simfota_delta::DiffOptions {
                level,
                coders: match coders {
                    Coders::Smallest => simfota_delta::Coders::Smallest,
                    Coders::Zstd => simfota_delta::Coders::Zstd,
                },
                ..simfota_delta::DiffOptions::default()
            };
            let input = match pair.as_deref() {
                Some([old, new]) => DeltaInput::Files(old.clone(), new.clone()),
                _ => DeltaInput::Synthetic {
                    size_mib,
                    changed_pct,
                    content,
                },
            };
            delta(&input, &options, compare, runs)?
        }
        BenchCommand::Serve { size_mib, runs } => serve::run(size_mib, runs)?,
        BenchCommand::Download {
            size_mib,
            runs,
            dir,
        } => download::run(size_mib, runs, dir.as_deref())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible, like encrypted or
/// compressed firmware sections, and cheap to make.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
    fn next(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

fn mib_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / t.as_secs_f64().max(1e-9)
}

fn best<T>(runs: u32, mut f: impl FnMut() -> Result<T>) -> Result<(Duration, T)> {
    let mut out = None;
    for _ in 0..runs {
        let start = Instant::now();
        let value = f()?;
        let took = start.elapsed();
        match &out {
            Some((t, _)) if *t <= took => {}
            _ => out = Some((took, value)),
        }
    }
    out.context("no run")
}

/// Hashes a file with `read` calls of `buf_len` bytes.
fn hash_file(path: &Path, buf_len: usize) -> Result<[u8; 32]> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; buf_len];
    loop {
        let n = file.read(&mut buf).context("read failed")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

fn sha256sum(path: &Path) -> Result<[u8; 32]> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("cannot run sha256sum (coreutils)")?;
    if !out.status.success() {
        bail!(
            "sha256sum failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hex_digest = text.split_whitespace().next().unwrap_or_default();
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut digest).context("unexpected sha256sum output")?;
    Ok(digest)
}

fn hash(size_mib: u32, runs: u32, dir: Option<&Path>) -> Result<()> {
    let tmp = match dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("cannot create a temporary directory")?;
    let image = tmp.path().join("image.bin");
    let size = u64::from(size_mib) << 20;
    {
        let mut w = BufWriter::with_capacity(
            1 << 20,
            File::create(&image).context("cannot create the image")?,
        );
        let mut noise = Noise(0x5eed_1234_abcd_0001);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..size_mib {
            noise.fill(&mut buf);
            w.write_all(&buf).context("cannot write the image")?;
        }
        w.flush().context("cannot write the image")?;
    }
    // One untimed pass so every timed run reads from the page cache alike.
    hash_file(&image, 1 << 20)?;

    outln!("simfota bench hash: {size_mib} MiB image, best of {runs} runs");
    outln!("cpu: {}", cpu_summary());
    let (t_ref, d_ref) = best(runs, || sha256sum(&image))?;
    outln!(
        "{:<44} {:>9.1} ms {:>9.1} MiB/s",
        "sha256sum (coreutils)",
        t_ref.as_secs_f64() * 1e3,
        mib_per_s(size, t_ref)
    );
    for buf_len in [16 << 10, 64 << 10, 256 << 10, 1 << 20, 8 << 20] {
        let (t, d) = best(runs, || hash_file(&image, buf_len))?;
        if d != d_ref {
            bail!("digest differs from sha256sum's");
        }
        outln!(
            "{:<44} {:>9.1} ms {:>9.1} MiB/s  {:.2}x sha256sum",
            format!("sha2 streaming, {} KiB reads", buf_len >> 10),
            t.as_secs_f64() * 1e3,
            mib_per_s(size, t),
            t_ref.as_secs_f64() / t.as_secs_f64().max(1e-9)
        );
    }

    // The same hash without any I/O: the CPU-bound ceiling (SHA-NI when the CPU has it).
    let in_memory = std::fs::read(&image).context("cannot read the image")?;
    let (t, d) = best(runs, || Ok(simfota_wire::sha256(&in_memory)))?;
    drop(in_memory);
    if d.0 != d_ref {
        bail!("digest differs from sha256sum's");
    }
    outln!(
        "{:<44} {:>9.1} ms {:>9.1} MiB/s  {:.2}x sha256sum",
        "sha2 in memory (no I/O)",
        t.as_secs_f64() * 1e3,
        mib_per_s(size, t),
        t_ref.as_secs_f64() / t.as_secs_f64().max(1e-9)
    );

    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let fields = pack::BuildFields::bench_defaults();
    let (t_build, envelope) = best(runs, || pack::build_for_bench(&image, &key, &fields))?;
    outln!(
        "{:<44} {:>9.1} ms {:>9.1} MiB/s  {:.2}x sha256sum",
        "pack build (hash + manifest + sign, by URI)",
        t_build.as_secs_f64() * 1e3,
        mib_per_s(size, t_build),
        t_ref.as_secs_f64() / t_build.as_secs_f64().max(1e-9)
    );
    let public = key.public_key();
    let (t_verify, ()) = best(runs, || pack::verify_for_bench(&envelope, &public, &image))?;
    outln!(
        "{:<44} {:>9.1} ms {:>9.1} MiB/s  {:.2}x sha256sum",
        "pack verify (signature + payload digest)",
        t_verify.as_secs_f64() * 1e3,
        mib_per_s(size, t_verify),
        t_ref.as_secs_f64() / t_verify.as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn cpu_summary() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let sha_ni = info
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{model}, {cores} cores, SHA-NI {}",
        if sha_ni { "yes" } else { "no" }
    )
}

/// Size of `data` compressed by zstd at `level` (the baseline a full package compares to).
fn zstd_size(data: &[u8], level: i32) -> Result<usize> {
    Ok(zstd::bulk::compress(data, level)
        .context("zstd failed")?
        .len())
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The firmware change the delta benchmark measures: `changed_pct` % of the 4 KiB blocks
/// rewritten with new bytes, 64 KiB inserted at one third (everything after it shifts), and
/// 16 KiB removed at two thirds (shifting back).
fn changed_image(old: &[u8], changed_pct: f64, noise: &mut Noise) -> (Vec<u8>, usize) {
    const BLOCK: usize = 4096;
    let mut new = old.to_vec();
    let blocks = new.len() / BLOCK;
    let target = ((blocks as f64) * changed_pct / 100.0).round() as usize;
    let mut changed = vec![false; blocks];
    let mut count = 0;
    while count < target.min(blocks) {
        let b = (noise.next() % blocks as u64) as usize;
        if !changed[b] {
            changed[b] = true;
            count += 1;
            noise.fill(&mut new[b * BLOCK..(b + 1) * BLOCK]);
        }
    }
    let mut inserted = vec![0u8; 64 << 10];
    noise.fill(&mut inserted);
    let at = new.len() / 3;
    new.splice(at..at, inserted);
    let cut = (2 * new.len() / 3).min(new.len().saturating_sub(16 << 10));
    new.drain(cut..(cut + (16 << 10)).min(new.len()));
    (new, count)
}

/// One 32-bit word of the synthetic code image.
#[derive(Clone, Copy)]
enum Word {
    /// An opcode from the vocabulary.
    Op(u32),
    /// A call to the word that was at this index of the old image.
    Call(usize),
}

/// Flash address of the image's first byte, as a microcontroller would map it.
const FLASH_BASE: u32 = 0x0800_0000;

fn random_word(noise: &mut Noise, vocabulary: &[u32], targets: usize) -> Word {
    let r = noise.next();
    if r % 10 < 3 {
        Word::Call(((r >> 8) % targets.max(1) as u64) as usize)
    } else {
        Word::Op(vocabulary[((r >> 8) % vocabulary.len() as u64) as usize])
    }
}

/// Lays the words out: a call becomes the absolute address of its target's current position
/// (targets that were removed keep their old address).
fn lay_out(words: &[(Word, Option<usize>)], old_len: usize) -> Vec<u8> {
    let mut position: Vec<Option<usize>> = vec![None; old_len];
    for (at, (_, origin)) in words.iter().enumerate() {
        if let Some(o) = origin {
            position[*o] = Some(at);
        }
    }
    let mut out = Vec::with_capacity(words.len() * 4);
    for (word, _) in words {
        let value = match *word {
            Word::Op(op) => op,
            Word::Call(t) => {
                let at = position.get(t).copied().flatten().unwrap_or(t);
                FLASH_BASE.wrapping_add((at as u32).wrapping_mul(4))
            }
        };
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// The code-like variant of [`changed_image`]: the same block rewrites, insertion and
/// removal, done on words, after which every call address is relinked, as a compiler and
/// linker would.
fn code_images(size: usize, changed_pct: f64, noise: &mut Noise) -> (Vec<u8>, Vec<u8>, usize) {
    const PER_BLOCK: usize = 1024;
    let n = size / 4;
    let vocabulary: Vec<u32> = (0..512).map(|_| noise.next() as u32).collect();
    let old_words: Vec<(Word, Option<usize>)> = (0..n)
        .map(|i| (random_word(noise, &vocabulary, n), Some(i)))
        .collect();
    let old = lay_out(&old_words, n);

    let mut words = old_words;
    let blocks = n / PER_BLOCK;
    let target = ((blocks as f64) * changed_pct / 100.0).round() as usize;
    let mut changed = vec![false; blocks];
    let mut count = 0;
    while count < target.min(blocks) {
        let b = (noise.next() % blocks as u64) as usize;
        if !changed[b] {
            changed[b] = true;
            count += 1;
            for slot in &mut words[b * PER_BLOCK..(b + 1) * PER_BLOCK] {
                *slot = (random_word(noise, &vocabulary, n), None);
            }
        }
    }
    let inserted: Vec<(Word, Option<usize>)> = (0..(64 << 10) / 4)
        .map(|_| (random_word(noise, &vocabulary, n), None))
        .collect();
    let at = words.len() / 3;
    words.splice(at..at, inserted);
    let cut = 2 * words.len() / 3;
    words.drain(cut..(cut + (16 << 10) / 4).min(words.len()));
    (old, lay_out(&words, n), count)
}

/// What `bench delta` measures.
enum DeltaInput {
    /// The benchmark's own change, made here (byte-exact across runs).
    Synthetic {
        size_mib: u32,
        changed_pct: f64,
        content: Content,
    },
    /// An old and a new image from files.
    Files(PathBuf, PathBuf),
}

fn delta(
    input: &DeltaInput,
    options: &simfota_delta::DiffOptions,
    compare: bool,
    runs: u32,
) -> Result<()> {
    let (old, new, random_floor) = match *input {
        DeltaInput::Synthetic {
            size_mib,
            changed_pct,
            content,
        } => {
            let size = (size_mib as usize) << 20;
            let mut noise = Noise(0x0dd_ba11_cafe_f00d);
            let (old, new, blocks) = match content {
                Content::Random => {
                    let mut old = vec![0u8; size];
                    noise.fill(&mut old);
                    let (new, blocks) = changed_image(&old, changed_pct, &mut noise);
                    (old, new, blocks)
                }
                Content::Code => code_images(size, changed_pct, &mut noise),
            };
            outln!(
                "simfota bench delta: {size_mib} MiB {} image, {blocks} of {} 4 KiB blocks rewritten ({changed_pct}%), 64 KiB inserted, 16 KiB removed",
                match content {
                    Content::Random => "random",
                    Content::Code => "code-like (call addresses relinked)",
                },
                size / 4096
            );
            let floor = (content == Content::Random).then_some(blocks * 4096 + (64 << 10));
            (old, new, floor)
        }
        DeltaInput::Files(ref old, ref new) => {
            let read =
                |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
            outln!(
                "simfota bench delta: {} -> {}",
                old.display(),
                new.display()
            );
            (read(old)?, read(new)?, None)
        }
    };
    outln!("cpu: {}", cpu_summary());
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (old_path, new_path) = (tmp.path().join("old.bin"), tmp.path().join("new.bin"));
    std::fs::write(&old_path, &old).context("cannot write the old image")?;
    std::fs::write(&new_path, &new).context("cannot write the new image")?;

    let start = Instant::now();
    let delta = simfota_delta::diff_with(&old, &new, options).context("diff failed")?;
    let t_diff = start.elapsed();
    let rss_after_diff = peak_rss_mib();
    // Apply as the device does: the old image streamed from its file, the new one written to
    // a file while hashed.
    let out_path = tmp.path().join("out.bin");
    let (t_apply, applied) = best(runs, || {
        let source = File::open(&old_path).context("cannot open the old image")?;
        let mut out = BufWriter::with_capacity(
            256 << 10,
            File::create(&out_path).context("cannot create the output")?,
        );
        let applied = simfota_delta::apply_to(
            source,
            old.len() as u64,
            &delta,
            &mut out,
            &simfota_delta::Limits::default(),
        )
        .context("apply failed")?;
        out.flush().context("cannot write the output")?;
        Ok(applied)
    })?;
    if applied.sha256 != <[u8; 32]>::from(Sha256::digest(&new))
        || std::fs::read(&out_path).context("cannot read the output")? != new
    {
        bail!("apply did not rebuild the new image");
    }
    // And in memory, as the HDiffPatch module is timed: both images held, no file.
    let (t_memory, rebuilt) = best(runs, || {
        simfota_delta::apply_with(&old, &delta, &simfota_delta::Limits::default())
            .context("apply failed")
    })?;
    if rebuilt != new {
        bail!("apply did not rebuild the new image");
    }
    drop(rebuilt);
    let (header, _) = simfota_delta::Header::parse(&delta).context("own delta unreadable")?;
    let full = new.len() as f64;
    let pct = |n: u64| 100.0 * n as f64 / full;
    outln!("target image      {:>12} bytes", new.len());
    let start = Instant::now();
    let compressed = zstd_size(&new, 9)?;
    outln!(
        "target, zstd -9   {:>12} bytes  ({:.2}% of the full image; {:.2} s): what a full package could shrink to",
        compressed,
        pct(compressed as u64),
        start.elapsed().as_secs_f64()
    );
    outln!(
        "delta             {:>12} bytes  ({:.2}% of the full image), format version {}",
        delta.len(),
        pct(delta.len() as u64),
        header.version
    );
    let [c, d, v] = header.codecs;
    outln!(
        "  control/difference/verbatim: {} ({c}) / {} ({d}) / {} ({v}) bytes",
        header.control_len,
        header.difference_len,
        header.verbatim_len
    );
    if let Some(rewritten) = random_floor {
        outln!(
            "  new bytes in the change: {rewritten} ({:.2}% of the image): the floor for random content; the delta is {:.2}% above it",
            pct(rewritten as u64),
            100.0 * (delta.len() as f64 / rewritten as f64 - 1.0)
        );
    }
    outln!("diff              {:>9.2} s", t_diff.as_secs_f64());
    outln!(
        "apply             {:>9.3} s (streamed from and to files, best of {runs}); {:.3} s in memory",
        t_apply.as_secs_f64(),
        t_memory.as_secs_f64()
    );
    if let Some(rss) = rss_after_diff {
        outln!("peak RSS          {rss:>9} MiB (whole process, after diff; images included)");
    }
    if compare {
        outln!();
        outln!("peers on the same pair (diff once, apply best of {runs}):");
        let mut rows = vec![
            peers::Row {
                tool: "simfota (apply streamed, files)".to_owned(),
                delta_len: delta.len() as u64,
                diff: t_diff,
                apply: t_apply,
            },
            peers::Row {
                tool: "simfota (apply in memory)".to_owned(),
                delta_len: delta.len() as u64,
                diff: t_diff,
                apply: t_memory,
            },
        ];
        rows.extend(peers::run_all(tmp.path(), &old_path, &new_path, &new, runs));
        outln!(
            "{:<34} {:>12} {:>8} {:>9} {:>9}",
            "tool",
            "delta bytes",
            "% image",
            "diff s",
            "apply s"
        );
        for row in &rows {
            outln!(
                "{:<34} {:>12} {:>7.2}% {:>9.2} {:>9.3}",
                row.tool,
                row.delta_len,
                pct(row.delta_len),
                row.diff.as_secs_f64(),
                row.apply.as_secs_f64()
            );
        }
    }
    Ok(())
}
