//! `simfota bench download`: the device agent's payload download next to curl, fetching the
//! same URL of the same server on loopback in alternation (so the machine's noise falls on
//! both), each writing a file into the same folder; then the time to resume after a cut at a
//! few byte offsets.
//!
//! The servers: `simfota server` hosting the payload as a package, and nginx serving the same
//! file when it is installed (a server that is never the bottleneck: sendfile).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use simfota_device::download::{DownloadError, Downloader, FetchSpec};
use simfota_device::progress::Progress;
use simfota_wire::p256::ecdsa::SigningKey;

use super::Noise;
use super::serve::{Nginx, median, spread, upload, which};

/// Runs the comparison and the resume measurement; prints MiB/s as min / median / max.
pub fn run(size_mib: u32, runs: u32, dir: Option<&Path>) -> Result<()> {
    which("curl").context("curl is needed (Debian: apt-get install curl)")?;
    which("sync").context("sync is needed (coreutils)")?;
    let tmp = match dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("cannot create a temporary folder")?;
    let dir = tmp.path();
    let size = usize::try_from(size_mib)? * 1024 * 1024;
    let mut image = vec![0u8; size];
    Noise(0xd0_d0_d0).fill(&mut image);
    let digest = simfota_wire::sha256(&image).0;

    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let originator = SigningKey::random(&mut rand_core::OsRng);
    let key_path = dir.join("originator.pem");
    std::fs::write(
        &key_path,
        simfota_wire::pem::public_key_to_pem(&simfota_wire::PublicKey::from(&originator))?,
    )?;
    let mut cfg = simfota_server::config::ServerConfig::with_data_dir(dir.join("server"));
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.max_package_bytes = size + (1 << 20);
    cfg.originators = vec![simfota_server::config::OriginatorConfig {
        id: "bench".into(),
        key: key_path,
    }];
    let server = rt
        .block_on(simfota_server::start(cfg))
        .context("cannot start the server")?;
    let token = std::fs::read_to_string(dir.join("server/api-token"))?;
    let id = upload(server.base_url(), token.trim(), &image, &originator)?;
    let ours = format!("{}/packages/{id}/payload", server.base_url());

    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("payload"), &image)?;
    drop(image);
    let nginx = Nginx::start(dir, &www);
    if let Err(e) = &nginx {
        errln!("nginx not measured: {e:#}");
    }
    let mut sources = vec![("simfota server", ours.clone())];
    if let Ok(n) = &nginx {
        sources.push(("nginx", n.url.clone()));
    }

    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    outln!(
        "payload {size_mib} MiB, {runs} downloads each, loopback, into {}",
        out.display()
    );
    for (name, url) in &sources {
        let mut agent = Vec::new();
        let mut curl = Vec::new();
        let mut curl_sync = Vec::new();
        for _ in 0..runs {
            curl.push(curl_mib_per_s(url, size, &out.join("curl.bin"), false)?);
            curl_sync.push(curl_mib_per_s(url, size, &out.join("curl.bin"), true)?);
            agent.push(agent_mib_per_s(url, size, &digest, &out)?);
        }
        outln!("  from {name}");
        outln!("    curl -o              {}", spread(&mut curl));
        outln!("    curl -o, then sync   {}", spread(&mut curl_sync));
        outln!("    device agent         {}", spread(&mut agent));
        outln!(
            "    agent / curl (medians): {:.2}; agent / (curl, then sync): {:.2}",
            median(&agent) / median(&curl),
            median(&agent) / median(&curl_sync)
        );
    }

    // Resume: the first connection is cut after `cut` bytes of the body; a new downloader
    // (as after a restart) re-hashes what is on disk and asks for the rest.
    outln!("  resume after a cut, from simfota server ({runs} runs each)");
    const MIB: usize = 1024 * 1024;
    for cut in [1, 100 * MIB + 12_345, size.saturating_sub(1000)] {
        if cut == 0 || cut >= size {
            continue;
        }
        let mut secs = Vec::new();
        for _ in 0..runs {
            secs.push(resume_seconds(&ours, size, &digest, &out, cut)?);
        }
        secs.sort_by(f64::total_cmp);
        outln!(
            "    cut at byte {cut:>10}: resume to the end in {:.2} / {:.2} / {:.2} s (min / median / max), image hash checked",
            secs[0],
            secs[secs.len() / 2],
            secs[secs.len() - 1]
        );
    }
    rt.block_on(server.shutdown())?;
    Ok(())
}

fn spec<'a>(url: &'a str, size: usize, digest: &[u8; 32]) -> FetchSpec<'a> {
    FetchSpec {
        url,
        name: "payload",
        max_len: size as u64,
        expected_len: Some(size as u64),
        expected_sha256: Some(*digest),
    }
}

/// One download by the device agent's downloader (hash checked), then its file removed.
fn agent_mib_per_s(url: &str, size: usize, digest: &[u8; 32], out: &Path) -> Result<f64> {
    let downloader = Downloader::new(out);
    let start = Instant::now();
    let got = downloader
        .fetch(&spec(url, size, digest), &Progress::hidden())
        .with_context(|| format!("device download of {url}"))?;
    let took = start.elapsed();
    downloader.discard("payload")?;
    Ok(super::mib_per_s(got.len, took))
}

/// A download cut after `cut` body bytes, then the time a new downloader takes to complete it.
fn resume_seconds(
    url: &str,
    size: usize,
    digest: &[u8; 32],
    out: &Path,
    cut: usize,
) -> Result<f64> {
    let proxy = CuttingProxy::start(url, cut)?;
    let first = Downloader::new(out).with_max_attempts(1);
    match first.fetch(&spec(&proxy.url, size, digest), &Progress::hidden()) {
        Err(DownloadError::Truncated { got, .. }) if got == cut as u64 => {}
        other => bail!("the cut at byte {cut} did not leave {cut} bytes: {other:?}"),
    }
    let again = Downloader::new(out);
    let start = Instant::now();
    let got = again
        .fetch(&spec(&proxy.url, size, digest), &Progress::hidden())
        .context("resuming")?;
    let took = start.elapsed().as_secs_f64();
    if got.reused != cut as u64 || got.sha256 != *digest {
        bail!("the resumed download did not reuse {cut} bytes or does not match");
    }
    again.discard("payload")?;
    Ok(took)
}

/// One download with `curl -o FILE` (what an operator would compare with); answers MiB/s.
/// `sync`: the time includes `sync FILE` (coreutils: fsync of the file) after curl, the
/// durability the device agent gives its download before it trusts it.
fn curl_mib_per_s(url: &str, size: usize, file: &Path, sync: bool) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-w", "%{size_download}", "-o"])
        .arg(file)
        .arg(url)
        .output()
        .context("cannot run curl")?;
    if sync {
        let synced = Command::new("sync")
            .arg(file)
            .status()
            .context("cannot run sync")?;
        if !synced.success() {
            bail!("sync {} failed", file.display());
        }
    }
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let got: usize = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    if got != size {
        bail!("curl {url}: {got} bytes, expected {size}");
    }
    std::fs::remove_file(file)?;
    Ok(super::mib_per_s(got as u64, took))
}

/// An HTTP proxy whose first connection forwards the answer's head and the first `cut` bytes
/// of its body, then closes both sides: a connection that breaks at a chosen byte. Later
/// connections pass whole (the download keeps its URL across the resume).
struct CuttingProxy {
    url: String,
}

impl CuttingProxy {
    fn start(upstream: &str, cut: usize) -> Result<Self> {
        let rest = upstream
            .strip_prefix("http://")
            .context("the proxy takes http:// URLs")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let authority = authority.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}{path}", listener.local_addr()?);
        // The first connection is cut; the ones after it (the resume) are forwarded whole.
        std::thread::spawn(move || {
            let mut cut = cut;
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let authority = authority.clone();
                std::thread::spawn(move || forward_cut(client, &authority, cut));
                cut = usize::MAX;
            }
        });
        Ok(CuttingProxy { url })
    }
}

fn forward_cut(mut client: TcpStream, authority: &str, cut: usize) -> std::io::Result<()> {
    let mut server = TcpStream::connect(authority)?;
    let mut to_server = client.try_clone()?;
    let mut from_client = server.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut to_server, &mut from_client);
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut body_sent: Option<usize> = None;
    loop {
        let n = server.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        if body_sent.is_none() {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            client.write_all(&head[..end + 4])?;
            body_sent = Some(0);
            let already = head.len() - (end + 4);
            data = &buf[n - already..n];
        }
        let sent = body_sent.unwrap_or(0);
        let take = data.len().min(cut.saturating_sub(sent));
        client.write_all(&data[..take])?;
        body_sent = Some(sent + take);
        if sent + take == cut {
            break;
        }
        if take < data.len() {
            break;
        }
    }
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    Ok(())
}
