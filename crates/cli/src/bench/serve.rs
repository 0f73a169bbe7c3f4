//! `simfota bench serve`: how fast `simfota server` hands out a payload, next to nginx serving
//! the same file (sendfile on), both on loopback, each download made by curl, the two servers
//! taken in turn so the machine's noise falls on both.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use simfota_wire::p256::ecdsa::SigningKey;

use super::Noise;

/// Runs the comparison and prints MiB/s (min / median / max) for each server.
pub fn run(size_mib: u32, runs: u32) -> Result<()> {
    which("curl").context("curl is needed (Debian: apt-get install curl)")?;
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let size = usize::try_from(size_mib)? * 1024 * 1024;
    let mut image = vec![0u8; size];
    Noise(0x5eed_5eed).fill(&mut image);

    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let originator = SigningKey::random(&mut rand_core::OsRng);
    let key_path = dir.path().join("originator.pem");
    std::fs::write(
        &key_path,
        simfota_wire::pem::public_key_to_pem(&simfota_wire::PublicKey::from(&originator))?,
    )?;
    let mut cfg = simfota_server::config::ServerConfig::with_data_dir(dir.path().join("server"));
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.max_package_bytes = size + (1 << 20);
    cfg.originators = vec![simfota_server::config::OriginatorConfig {
        id: "bench".into(),
        key: key_path,
    }];
    let server = rt
        .block_on(simfota_server::start(cfg))
        .context("cannot start the server")?;
    let token = std::fs::read_to_string(dir.path().join("server/api-token"))?;
    let id = upload(server.base_url(), token.trim(), &image, &originator)?;
    let ours = format!("{}/packages/{id}/payload", server.base_url());

    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("payload"), &image)?;
    drop(image);
    let nginx = Nginx::start(dir.path(), &www);
    if let Err(e) = &nginx {
        eprintln!("nginx not measured: {e:#}");
    }

    let mut simfota = Vec::new();
    let mut reference = Vec::new();
    for _ in 0..runs {
        simfota.push(curl_mib_per_s(&ours, size)?);
        if let Ok(n) = &nginx {
            reference.push(curl_mib_per_s(&n.url, size)?);
        }
    }
    println!("payload {size_mib} MiB, {runs} downloads each, curl on loopback");
    println!("  simfota server  {}", spread(&mut simfota));
    if !reference.is_empty() {
        println!("  nginx           {}", spread(&mut reference));
        println!(
            "  simfota / nginx (medians): {:.2}",
            median(&simfota) / median(&reference)
        );
    }
    rt.block_on(server.shutdown())?;
    Ok(())
}

pub(super) fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        bail!("{program} not found on PATH")
    }
}

/// Uploads a package for `image` signed by `key`; answers its id.
pub(super) fn upload(base: &str, token: &str, image: &[u8], key: &SigningKey) -> Result<i64> {
    let envelope = simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 1,
            image: simfota_wire::suit::ImageSource::Bytes(image),
            name: Some("bench"),
            version: Some("1.0"),
            uri: Some("payload"),
            integrate: false,
            precursor_digest: None,
        },
        key,
    )?;
    let boundary = "simfota-bench-boundary";
    let mut body = Vec::with_capacity(image.len() + envelope.len() + 512);
    for (name, bytes) in [("envelope", &envelope[..]), ("payload", image)] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\
                 content-type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut answer = ureq::post(&format!("{base}/api/v1/packages"))
        .header("authorization", &format!("Bearer {token}"))
        .header(
            "content-type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send(&body[..])
        .context("package upload failed")?;
    let v: serde_json::Value = serde_json::from_str(&answer.body_mut().read_to_string()?)?;
    v["id"]
        .as_i64()
        .context("the upload answered no package id")
}

/// One download with curl; answers MiB/s, after checking the size.
fn curl_mib_per_s(url: &str, size: usize) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            url,
        ])
        .output()
        .context("cannot run curl")?;
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
    Ok(super::mib_per_s(got as u64, took))
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

pub(super) fn spread(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:8.0} / {:8.0} / {:8.0} MiB/s (min / median / max)",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

/// nginx serving `www` on a free loopback port, stopped when dropped.
pub(super) struct Nginx {
    child: Child,
    pub(super) url: String,
}

impl Nginx {
    pub(super) fn start(dir: &Path, www: &Path) -> Result<Self> {
        let program = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context("nginx is not installed (Debian: apt-get install nginx-light)")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {p};\n\
                   server {{ listen 127.0.0.1:{port}; root {w}; }} }}\n",
                p = prefix.display(),
                w = www.display(),
            ),
        )?;
        let child = Command::new(program)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        let mut nginx = Self {
            child,
            url: format!("http://127.0.0.1:{port}/payload"),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || nginx.child.try_wait()?.is_some() {
                bail!(
                    "nginx did not come up (see {})",
                    prefix.join("logs/error.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    /// SIGTERM first: the master then stops its workers (a SIGKILL would leave them running).
    fn drop(&mut self) {
        let asked = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if asked {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
