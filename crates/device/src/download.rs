//! Resumable HTTP downloads (RFC 9110 §14 Range requests, §13.1.5 If-Range, §8.8.3 ETag).
//!
//! A download writes `<dir>/<name>.part` and keeps `<dir>/<name>.meta.json` (URL, ETag, total
//! length) beside it. After a dropped connection, a killed process or a power cut, the next
//! [`Downloader::fetch`] for the same URL asks only for the missing bytes with `Range` and
//! `If-Range: <etag>`; when the server's copy changed (new ETag, or a plain `200` answer), it starts
//! over. A partial download without an ETag is never resumed: there is no way to know the bytes
//! on disk belong to the same file. Every size is bounded; the SHA-256 of the whole file is
//! computed on the way (re-reading the kept prefix after a restart) and checked when expected.
//!
//! The one HTTP client of the device (DM messages and downloads alike) is built here
//! ([`http_agent_with`]): `https://` servers are checked against the system's CA bundle plus
//! the CA certificates of the configuration's `ca_file` ([`TlsTrust`]), and a refused
//! certificate comes back as a [`TlsProblem`] that names what is wrong with it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::config::ConfigError;
use crate::fsutil::{self, Faults};
use crate::progress::Progress;

/// Why a download failed. Partial data stays on disk for resumption unless stated otherwise.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The server could not be reached or the connection broke before an answer.
    #[error("cannot reach {url}: {message}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport's explanation.
        message: String,
    },
    /// The TLS connection was refused: the server's certificate, or the handshake.
    #[error("cannot reach {url} securely: {problem}")]
    Tls {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: TlsProblem,
    },
    /// The server has no such file (HTTP 404 / 410).
    #[error("the server has no file at {url} (HTTP {status})")]
    NotFound {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// Any other unexpected HTTP status.
    #[error("the server answered HTTP {status} for {url}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The file is larger than allowed; nothing past the limit is stored.
    #[error("the file at {url} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The server's length differs from the one the signed manifest promised.
    #[error("the file at {url} has {actual} bytes, the package says {expected}")]
    LengthMismatch {
        /// The URL.
        url: String,
        /// The signed size.
        expected: u64,
        /// What the server announced or sent.
        actual: u64,
    },
    /// The connection kept ending early; what arrived is kept for the next attempt.
    #[error("the download of {url} stopped at {got} of {expected} bytes (kept for resumption)")]
    Truncated {
        /// The URL.
        url: String,
        /// Bytes on disk.
        got: u64,
        /// Announced total.
        expected: u64,
    },
    /// The complete file does not have the expected SHA-256; it was deleted.
    #[error("the file at {url} is corrupt: SHA-256 {actual}, expected {expected} (deleted)")]
    DigestMismatch {
        /// The URL.
        url: String,
        /// Expected digest, hex.
        expected: String,
        /// Digest of what arrived, hex.
        actual: String,
    },
    /// The server's Content-Range does not fit the request.
    #[error("the server at {url} sent an unusable Content-Range `{value}`")]
    BadContentRange {
        /// The URL.
        url: String,
        /// The header value.
        value: String,
    },
    /// A local file operation failed.
    #[error("download file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl DownloadError {
    /// True when the failure is the network's or the server's availability, not the content
    /// (FUMO maps these to "server unavailable", the content ones to "corrupt").
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DownloadError::Unreachable { .. }
                | DownloadError::Tls { .. }
                | DownloadError::Status { .. }
                | DownloadError::Truncated { .. }
        )
    }
}

/// What one download must satisfy.
#[derive(Debug, Clone)]
pub struct FetchSpec<'a> {
    /// The URL.
    pub url: &'a str,
    /// File name inside the download folder (no path separators).
    pub name: &'a str,
    /// Hard size limit.
    pub max_len: u64,
    /// The exact length the file must have (from the signed manifest), if known.
    pub expected_len: Option<u64>,
    /// The SHA-256 the file must have, if the device checks it itself.
    pub expected_sha256: Option<[u8; 32]>,
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The complete file.
    pub path: PathBuf,
    /// Its length.
    pub len: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Bytes that were already on disk from an earlier, interrupted run.
    pub reused: u64,
    /// How many times the download had to start over (server copy changed).
    pub restarts: u32,
}

/// Sees every byte of a download in file order from byte 0: after a restart the bytes an
/// earlier run left on disk first, then what arrives, as it arrives (design §4 step 6: the
/// card can hash the payload during the download). On a successful fetch the tap has seen
/// exactly the whole file since its last [`restart`](DownloadTap::restart).
pub trait DownloadTap {
    /// The file starts again at byte 0 (first bytes, or the server's copy changed): forget
    /// what was seen.
    fn restart(&mut self) -> Result<(), String>;
    /// The next bytes of the file. An error stops the download (the partial file is kept);
    /// it comes back as [`DownloadError::Io`] on the file, as a failed write would.
    fn data(&mut self, bytes: &[u8]) -> Result<(), String>;
}

/// A tap that looks at nothing.
struct NoTap;

impl DownloadTap for NoTap {
    fn restart(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn data(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// The SHA-256 of the file so far, and the tap that sees the same bytes.
struct Hashing<'t> {
    sha: Sha256,
    tap: &'t mut dyn DownloadTap,
    /// The file being written (named by a tap's refusal).
    path: &'t Path,
}

impl<'t> Hashing<'t> {
    fn new(path: &'t Path, tap: &'t mut dyn DownloadTap) -> Result<Self, DownloadError> {
        let mut h = Hashing {
            sha: Sha256::new(),
            tap,
            path,
        };
        h.restart()?;
        Ok(h)
    }

    fn stopped(&self, message: String) -> DownloadError {
        DownloadError::Io {
            path: self.path.to_owned(),
            source: io::Error::other(message),
        }
    }

    fn restart(&mut self) -> Result<(), DownloadError> {
        self.sha = Sha256::new();
        self.tap.restart().map_err(|m| self.stopped(m))
    }

    fn update(&mut self, bytes: &[u8]) -> Result<(), DownloadError> {
        self.sha.update(bytes);
        self.tap.data(bytes).map_err(|m| self.stopped(m))
    }

    /// Feeds the first `len` bytes of `file` (kept by an earlier run).
    fn prefix(&mut self, file: &mut File, len: u64) -> Result<(), DownloadError> {
        let path = self.path;
        let io = |source| DownloadError::Io {
            path: path.to_owned(),
            source,
        };
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut reader = (&mut *file).take(len);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Ok(());
            }
            self.update(&buf[..n])?;
        }
    }

    fn finalize(self) -> [u8; 32] {
        self.sha.finalize().into()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PartialMeta {
    url: String,
    etag: Option<String>,
    total: Option<u64>,
}

/// A resumable downloader writing into one folder.
#[derive(Debug)]
pub struct Downloader {
    agent: ureq::Agent,
    dir: PathBuf,
    max_attempts: u32,
}

/// The size of one buffer between the connection, the hash and the file: the most one read of
/// the connection may give. Large enough that a fast connection needs few system calls and
/// hand-overs, small enough that the buffers in flight ([`BUFFERS`]) stay a few MiB.
const CHUNK: usize = 1024 * 1024;
/// Buffers in flight between the three stages of a download (see [`PartFile::append_body`]).
const BUFFERS: usize = 6;
/// How often the server's copy may change under one download before it counts as failing.
const MAX_RESTARTS: u32 = 3;
/// How often (in bytes written) the partial file is synced while the download runs, bounding
/// what a power cut can lose to this much (it is fetched again on resume); the whole file is
/// synced once more when a connection ends, before its length is trusted for a resume or the
/// file is committed. Syncing as it goes is also the fastest way to a durable file here: the
/// disk writes while the network delivers, instead of all at the end (docs/performance.md,
/// "Device agent"). The sync runs on the file stage, so the connection keeps being read while
/// it waits.
const SYNC_EVERY: u64 = 32 * 1024 * 1024;

/// Why a TLS connection was refused, in the words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    /// No trusted CA signed the chain (RFC 5280 §6.1: path validation found no trust anchor).
    #[error(
        "the server's certificate is not signed by a trusted CA (add the CA with ca_file in \
         the device configuration, or --ca)"
    )]
    UnknownIssuer,
    /// The certificate does not name the host the device connected to (RFC 6125 §6).
    #[error("the server's certificate is not valid for the host name {host}{names}")]
    WrongHost {
        /// The name the device asked for.
        host: String,
        /// ` (it is for a, b)` when the certificate's names are known, else empty.
        names: String,
    },
    /// The certificate's validity ended (RFC 5280 §4.1.2.5 notAfter).
    #[error("the server's certificate has expired")]
    Expired,
    /// The certificate's validity has not begun (notBefore in the future).
    #[error("the server's certificate is not valid yet (is the device clock right?)")]
    NotYetValid,
    /// The issuer revoked the certificate.
    #[error("the server's certificate is revoked")]
    Revoked,
    /// Any other reason the certificate was refused.
    #[error("the server's certificate is refused: {0}")]
    BadCertificate(String),
    /// The handshake failed for a reason other than the certificate.
    #[error("the TLS handshake failed: {0}")]
    Handshake(String),
}

impl TlsProblem {
    /// The TLS problem behind a transport error, if it is one. rustls's errors arrive either
    /// as they are or wrapped in the I/O error of the handshake.
    pub fn of(e: &ureq::Error) -> Option<TlsProblem> {
        let tls: &rustls::Error = match e {
            ureq::Error::Rustls(r) => r,
            ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
            ureq::Error::Tls(text) => return Some(TlsProblem::Handshake((*text).to_owned())),
            _ => return None,
        };
        use rustls::CertificateError as C;
        Some(match tls {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::UnknownIssuer => TlsProblem::UnknownIssuer,
                C::NotValidForNameContext {
                    expected,
                    presented,
                } => TlsProblem::WrongHost {
                    host: expected.to_str().into_owned(),
                    names: if presented.is_empty() {
                        " (it names no host)".to_owned()
                    } else {
                        let names: Vec<_> = presented.iter().map(|n| plain_name(n)).collect();
                        format!(" (it is for {})", names.join(", "))
                    },
                },
                C::NotValidForName => TlsProblem::WrongHost {
                    host: "asked for".to_owned(),
                    names: String::new(),
                },
                C::Expired | C::ExpiredContext { .. } => TlsProblem::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => TlsProblem::NotYetValid,
                C::Revoked => TlsProblem::Revoked,
                other => TlsProblem::BadCertificate(other.to_string()),
            },
            other => TlsProblem::Handshake(other.to_string()),
        })
    }
}

/// A certificate name as webpki presents it (`DnsName("a.example")`, `IpAddress(10.0.0.1)`),
/// without the wrapping.
fn plain_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

/// The CA certificates the device trusts for `https://`: the system's bundle, plus those of a
/// CA file (a private CA the operator runs its DM and package servers under).
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    /// The CA file's certificates (DER).
    extra: Vec<ureq::tls::Certificate<'static>>,
}

/// Where the system's CA bundle is, in the order looked at: `SSL_CERT_FILE` first (the
/// override OpenSSL honours too), then the bundles of Debian/Ubuntu/Alpine, Fedora/RHEL,
/// openSUSE, and BSD/macOS.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's CA certificates, read once per process (empty when no bundle is found).
fn system_roots() -> &'static [ureq::tls::Certificate<'static>] {
    static ROOTS: OnceLock<Vec<ureq::tls::Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
        from_env
            .into_iter()
            .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
            .find_map(|path| {
                let pem = fs::read(path).ok()?;
                let certs: Vec<_> = pem_certificates(&pem).filter_map(Result::ok).collect();
                (!certs.is_empty()).then_some(certs)
            })
            .unwrap_or_default()
    })
}

fn pem_certificates(
    pem: &[u8],
) -> impl Iterator<Item = Result<ureq::tls::Certificate<'static>, String>> + '_ {
    ureq::tls::parse_pem(pem).filter_map(|item| match item {
        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
        Ok(_) => None,
        Err(e) => Some(Err(e.to_string())),
    })
}

impl TlsTrust {
    /// The system's CA bundle only.
    pub fn system() -> Self {
        TlsTrust::default()
    }

    /// The system's CA bundle plus every certificate of the PEM file `path`. A file that
    /// cannot be read, holds no PEM certificate, or a certificate that is no usable trust
    /// anchor is refused, naming the file and the reason.
    pub fn with_ca_file(path: &Path) -> Result<Self, ConfigError> {
        let refuse = |reason: String| ConfigError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = fs::read(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
        let mut extra = Vec::new();
        for (i, cert) in pem_certificates(&pem).enumerate() {
            let cert =
                cert.map_err(|e| refuse(format!("certificate {} is not PEM: {e}", i + 1)))?;
            // The same check rustls makes when the certificate becomes a root (RFC 5280 §4.1
            // structure, a subject and a key it can use), so a bad file fails here, not at
            // the first connection.
            rustls::RootCertStore::empty()
                .add(rustls::pki_types::CertificateDer::from(cert.der()))
                .map_err(|e| {
                    refuse(format!(
                        "certificate {} is not a usable CA certificate: {e}",
                        i + 1
                    ))
                })?;
            extra.push(cert);
        }
        if extra.is_empty() {
            return Err(refuse(
                "it holds no PEM certificate (a block starting -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        Ok(TlsTrust { extra })
    }

    /// How many certificates the CA file added.
    pub fn extra_count(&self) -> usize {
        self.extra.len()
    }

    fn root_certs(&self) -> ureq::tls::RootCerts {
        let system = system_roots();
        if self.extra.is_empty() {
            static SYSTEM: OnceLock<ureq::tls::RootCerts> = OnceLock::new();
            return SYSTEM
                .get_or_init(|| {
                    if system.is_empty() {
                        // No bundle on this system: the Mozilla list compiled into the client.
                        ureq::tls::RootCerts::WebPki
                    } else {
                        ureq::tls::RootCerts::Specific(Arc::new(system.to_vec()))
                    }
                })
                .clone();
        }
        let all: Vec<_> = system.iter().chain(&self.extra).cloned().collect();
        ureq::tls::RootCerts::Specific(Arc::new(all))
    }
}

/// The HTTP agent the device uses (DM messages and downloads alike) trusting the system's CA
/// bundle: no automatic redirects into other hosts beyond a few, statuses handled by the
/// caller, bounded waits.
pub fn http_agent() -> ureq::Agent {
    http_agent_with(&TlsTrust::system())
}

/// The HTTP agent the device uses, trusting `trust` for `https://`.
pub fn http_agent_with(trust: &TlsTrust) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(3)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("simfota-device/", env!("CARGO_PKG_VERSION")))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(trust.root_certs())
                .build(),
        )
        .build()
        .into()
}

impl Downloader {
    /// A downloader storing into `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Downloader {
            agent: http_agent(),
            dir: dir.into(),
            max_attempts: 3,
        }
    }

    /// A downloader storing into `dir` through `agent` (the one the DM session uses, with
    /// the configuration's CA trust).
    pub fn with_agent(dir: impl Into<PathBuf>, agent: ureq::Agent) -> Self {
        Downloader {
            agent,
            dir: dir.into(),
            max_attempts: 3,
        }
    }

    /// How many connections one [`fetch`](Self::fetch) may open before giving up (default 3).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The path a finished download of `name` has.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Forgets everything about `name` (finished file, partial file, metadata).
    pub fn discard(&self, name: &str) -> Result<(), DownloadError> {
        for path in [
            self.path_of(name),
            self.part_path(name),
            self.meta_path(name),
        ] {
            fsutil::remove_if_exists(&path).map_err(|source| DownloadError::Io { path, source })?;
        }
        Ok(())
    }

    fn part_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.part"))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.meta.json"))
    }

    /// Fetches a small object into memory (the SUIT envelope), refusing more than `max_len`.
    pub fn fetch_bytes(&self, url: &str, max_len: u64) -> Result<Vec<u8>, DownloadError> {
        let mut resp = self
            .agent
            .get(url)
            .call()
            .map_err(|e| unreachable(url, &e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(status_error(url, status));
        }
        let mut out = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(max_len.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| DownloadError::Unreachable {
                url: url.into(),
                message: e.to_string(),
            })?;
        if out.len() as u64 > max_len {
            return Err(DownloadError::TooLarge {
                url: url.into(),
                limit: max_len,
            });
        }
        Ok(out)
    }

    /// Downloads `spec.url` into the folder, resuming what an earlier run left, and returns the
    /// complete file. Calling it again after success returns the same file without a request.
    pub fn fetch(
        &self,
        spec: &FetchSpec<'_>,
        progress: &Progress,
    ) -> Result<Downloaded, DownloadError> {
        self.fetch_with_tap(spec, progress, &mut NoTap)
    }

    /// [`fetch`](Self::fetch), showing every byte of the file to `tap` in order as it is
    /// written (the kept prefix first after a restart).
    pub fn fetch_with_tap(
        &self,
        spec: &FetchSpec<'_>,
        progress: &Progress,
        tap: &mut dyn DownloadTap,
    ) -> Result<Downloaded, DownloadError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DownloadError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let dest = self.path_of(spec.name);
        let part = self.part_path(spec.name);
        let meta_path = self.meta_path(spec.name);
        let faults = Faults::default();

        if let Some(done) = reuse_finished(spec, &dest, &meta_path, tap)? {
            return Ok(done);
        }

        let mut meta = read_meta(&meta_path)
            .filter(|m| m.url == spec.url)
            .unwrap_or_default();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(io_err(&part))?;
        let mut offset = if meta.url.is_empty() || meta.etag.is_none() {
            // Nothing trustworthy to resume from.
            0
        } else {
            file.metadata().map_err(io_err(&part))?.len()
        };
        if meta.total.is_some_and(|t| offset > t) {
            offset = 0;
        }
        file.set_len(offset).map_err(io_err(&part))?;
        let mut hasher = Hashing::new(&part, tap)?;
        if offset > 0 {
            hasher.prefix(&mut file, offset)?;
        }
        let reused = offset;
        let mut restarts = 0u32;
        let mut attempts = 0u32;
        meta.url = spec.url.to_owned();

        loop {
            attempts += 1;
            let mut req = self.agent.get(spec.url);
            let resuming = offset > 0;
            if let (true, Some(etag)) = (resuming, &meta.etag) {
                req = req
                    .header("Range", format!("bytes={offset}-"))
                    .header("If-Range", etag);
            }
            let mut resp = match req.call() {
                Ok(r) => r,
                // A refused certificate stays refused: no point in asking again.
                Err(e) if TlsProblem::of(&e).is_some() => return Err(unreachable(spec.url, &e)),
                Err(_) if attempts < self.max_attempts => {
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempts)));
                    continue;
                }
                Err(e) => return Err(unreachable(spec.url, &e)),
            };
            let status = resp.status().as_u16();
            let etag = header(&resp, "etag");
            let total: Option<u64>;
            match status {
                206 if resuming => {
                    let value = header(&resp, "content-range").unwrap_or_default();
                    let bad = || DownloadError::BadContentRange {
                        url: spec.url.into(),
                        value: value.clone(),
                    };
                    let (start, complete) = parse_content_range(&value).ok_or_else(bad)?;
                    if start != offset {
                        return Err(bad());
                    }
                    if etag.is_some() && etag != meta.etag {
                        // The server's file changed under a server that ignores If-Range.
                        restarts += 1;
                        offset = 0;
                        hasher.restart()?;
                        file.set_len(0).map_err(io_err(&part))?;
                        meta.etag = None;
                        if attempts >= self.max_attempts.saturating_add(restarts.min(MAX_RESTARTS))
                        {
                            return Err(DownloadError::Truncated {
                                url: spec.url.into(),
                                got: 0,
                                expected: complete.unwrap_or(0),
                            });
                        }
                        continue;
                    }
                    total = complete.or(meta.total);
                }
                200 => {
                    if resuming {
                        // If-Range did not match: RFC 9110 §13.1.5 says the whole new file comes.
                        restarts += 1;
                    }
                    offset = 0;
                    hasher.restart()?;
                    file.set_len(0).map_err(io_err(&part))?;
                    meta.etag = etag;
                    total = resp.body().content_length();
                }
                416 if resuming && meta.total == Some(offset) => {
                    // Everything was already here.
                    total = meta.total;
                }
                _ => return Err(status_error(spec.url, status)),
            }
            check_announced(spec, total)?;
            meta.total = total;
            let meta_bytes = serde_json::to_vec(&meta).map_err(|e| DownloadError::Io {
                path: meta_path.clone(),
                source: io::Error::other(e),
            })?;
            fsutil::write_atomic(&meta_path, &meta_bytes, &faults).map_err(io_err(&meta_path))?;

            progress.set_length(total.unwrap_or(0));
            progress.set_position(offset);
            file.seek(SeekFrom::Start(offset)).map_err(io_err(&part))?;
            let mut broke = false;
            if status != 416 {
                let mut sink = PartFile {
                    file: &mut file,
                    path: &part,
                    hasher: &mut hasher,
                    progress,
                };
                let reader = resp.body_mut().as_reader();
                broke = sink.append_body(reader, &mut offset, total, spec)?;
            }
            file.sync_data().map_err(io_err(&part))?;
            let complete = match total {
                Some(t) => offset == t,
                None => !broke,
            };
            if complete {
                break;
            }
            if attempts >= self.max_attempts.saturating_add(restarts.min(MAX_RESTARTS)) {
                return Err(DownloadError::Truncated {
                    url: spec.url.into(),
                    got: offset,
                    expected: total.unwrap_or(offset),
                });
            }
        }
        drop(file);
        let sha256 = hasher.finalize();
        if let Some(expected) = spec.expected_sha256.filter(|&e| e != sha256) {
            self.discard(spec.name)?;
            return Err(DownloadError::DigestMismatch {
                url: spec.url.into(),
                expected: hex::encode(expected),
                actual: hex::encode(sha256),
            });
        }
        fsutil::commit_file(&part, &dest, &faults).map_err(io_err(&dest))?;
        fsutil::remove_if_exists(&meta_path).map_err(io_err(&meta_path))?;
        progress.finish();
        Ok(Downloaded {
            path: dest,
            len: offset,
            sha256,
            reused,
            restarts,
        })
    }
}

/// A finished file from an earlier run (a crash between the rename and the caller's record):
/// reused when it is what `spec` asks for, removed otherwise.
fn reuse_finished(
    spec: &FetchSpec<'_>,
    dest: &Path,
    meta_path: &Path,
    tap: &mut dyn DownloadTap,
) -> Result<Option<Downloaded>, DownloadError> {
    if !dest.exists() || meta_path.exists() {
        return Ok(None);
    }
    let io_err = |source| DownloadError::Io {
        path: dest.to_owned(),
        source,
    };
    let mut file = File::open(dest).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let mut hasher = Hashing::new(dest, tap)?;
    hasher.prefix(&mut file, len)?;
    let sha256 = hasher.finalize();
    if spec.expected_len.is_none_or(|l| l == len)
        && spec.expected_sha256.is_none_or(|d| d == sha256)
    {
        return Ok(Some(Downloaded {
            path: dest.to_owned(),
            len,
            sha256,
            reused: len,
            restarts: 0,
        }));
    }
    fsutil::remove_if_exists(dest).map_err(io_err)?;
    Ok(None)
}

/// The length the server announced, against the caller's cap and expectation.
fn check_announced(spec: &FetchSpec<'_>, total: Option<u64>) -> Result<(), DownloadError> {
    let Some(t) = total else { return Ok(()) };
    if t > spec.max_len {
        return Err(DownloadError::TooLarge {
            url: spec.url.into(),
            limit: spec.max_len,
        });
    }
    if let Some(expected) = spec.expected_len.filter(|&e| e != t) {
        return Err(DownloadError::LengthMismatch {
            url: spec.url.into(),
            expected,
            actual: t,
        });
    }
    Ok(())
}

/// The partial file a response body is appended to, with its running hash and progress.
struct PartFile<'a, 't> {
    file: &'a mut File,
    path: &'a Path,
    hasher: &'a mut Hashing<'t>,
    progress: &'a Progress,
}

/// What the connection stage hands on: bytes in file order, then how the body ended.
enum Received {
    /// The next bytes: the first `.1` bytes of the buffer (what one read of the connection
    /// gave).
    Bytes(Vec<u8>, usize),
    /// The connection broke before the body ended.
    Broke,
}

impl PartFile<'_, '_> {
    /// Appends the body at `offset` (moved forward as bytes land), never past the announced
    /// `total` (or the cap when none was announced). Answers whether the connection broke
    /// before the body ended.
    ///
    /// Three stages work at once, so that the slowest of them, not their sum, sets the pace:
    /// a thread reads the connection into buffers, this thread hashes them and shows them to
    /// the tap (which is not `Send`: a card behind it), and a thread writes them to the file
    /// (syncing it every [`SYNC_EVERY`] bytes). Buffers come back
    /// to the reader when written, so at most [`BUFFERS`] are in flight. Bytes reach the file
    /// in order, and each is hashed before it is written: when this returns, the file, the
    /// hash and `offset` agree.
    fn append_body(
        &mut self,
        reader: impl Read + Send,
        offset: &mut u64,
        total: Option<u64>,
        spec: &FetchSpec<'_>,
    ) -> Result<bool, DownloadError> {
        let path = self.path;
        let io_err = |source| DownloadError::Io {
            path: path.to_owned(),
            source,
        };
        let file = &mut *self.file;
        let limit = total.unwrap_or(spec.max_len);
        std::thread::scope(|scope| {
            let (received_tx, received_rx) = mpsc::sync_channel::<Received>(BUFFERS);
            let (write_tx, write_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
            let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
            for _ in 0..BUFFERS {
                // Cannot fail: the receiver is alive, in this scope.
                let _ = free_tx.send(vec![0u8; CHUNK]);
            }
            scope.spawn(move || read_stage(reader, &free_rx, &received_tx));
            let writer = scope.spawn(move || write_stage(file, &write_rx, &free_tx));

            let mut outcome = Ok(false);
            for received in &received_rx {
                let (buf, len) = match received {
                    Received::Bytes(buf, len) => (buf, len),
                    Received::Broke => {
                        outcome = Ok(true);
                        break;
                    }
                };
                let n = len as u64;
                if *offset + n > limit {
                    outcome = Err(if total.is_none() {
                        DownloadError::TooLarge {
                            url: spec.url.into(),
                            limit: spec.max_len,
                        }
                    } else {
                        // More than announced: the stream is not what the headers said.
                        DownloadError::LengthMismatch {
                            url: spec.url.into(),
                            expected: limit,
                            actual: *offset + n,
                        }
                    });
                    break;
                }
                if let Err(e) = self.hasher.update(&buf[..len]) {
                    outcome = Err(e);
                    break;
                }
                if write_tx.send((buf, len)).is_err() {
                    // The writer stopped on an error; it is collected below.
                    break;
                }
                *offset += n;
                self.progress.set_position(*offset);
            }
            // Stops the reader (its next hand-over fails) and lets the writer finish.
            drop(received_rx);
            drop(write_tx);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the file writer stopped")));
            // A failed write or sync outranks what the connection did: the file is not what
            // `offset` says.
            written.map_err(io_err)?;
            outcome
        })
    }
}

/// The connection stage: reads the body into free buffers and hands each read on at once, in
/// order (a slow connection's bytes reach the file as they come, not when a buffer is full).
/// Ends at the body's end, when the connection breaks (handing on [`Received::Broke`]), or
/// when the next stage stops taking buffers.
fn read_stage(mut reader: impl Read, free: &Receiver<Vec<u8>>, out: &SyncSender<Received>) {
    while let Ok(mut buf) = free.recv() {
        let n = loop {
            match reader.read(&mut buf) {
                Ok(n) => break Some(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        match n {
            Some(0) => return,
            Some(n) => {
                if out.send(Received::Bytes(buf, n)).is_err() {
                    return;
                }
            }
            None => {
                let _ = out.send(Received::Broke);
                return;
            }
        }
    }
}

/// The file stage: writes buffers in order, returns them to the reader, and syncs the file
/// every [`SYNC_EVERY`] bytes.
fn write_stage(
    file: &mut File,
    bufs: &Receiver<(Vec<u8>, usize)>,
    free: &mpsc::Sender<Vec<u8>>,
) -> io::Result<()> {
    let mut since_sync = 0u64;
    for (buf, len) in bufs {
        file.write_all(&buf[..len])?;
        since_sync += len as u64;
        if since_sync >= SYNC_EVERY {
            file.sync_data()?;
            since_sync = 0;
        }
        // The reader may have ended already; the buffer is then simply dropped.
        let _ = free.send(buf);
    }
    Ok(())
}

/// The error for a request that got no answer: the TLS problem when there is one.
fn unreachable(url: &str, e: &ureq::Error) -> DownloadError {
    match TlsProblem::of(e) {
        Some(problem) => DownloadError::Tls {
            url: url.into(),
            problem,
        },
        None => DownloadError::Unreachable {
            url: url.into(),
            message: e.to_string(),
        },
    }
}

fn status_error(url: &str, status: u16) -> DownloadError {
    match status {
        404 | 410 => DownloadError::NotFound {
            url: url.into(),
            status,
        },
        _ => DownloadError::Status {
            url: url.into(),
            status,
        },
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Parses `bytes START-END/TOTAL` (or `/*`) per RFC 9110 §14.4; returns START and TOTAL.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if end >= t {
                return None;
            }
            Some(t)
        }
    };
    Some((start, total))
}

fn read_meta(path: &Path) -> Option<PartialMeta> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = (&mut *file).take(len);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(())
}

/// Length and SHA-256 of a file (optionally of its first `limit` bytes).
pub fn hash_file(path: &Path, limit: Option<u64>) -> io::Result<(u64, [u8; 32])> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let len = limit.unwrap_or(file.metadata()?.len());
    hash_prefix(&mut file, len, &mut hasher)?;
    Ok((len, hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_lose_their_wrapping() {
        assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 10-19/20"), Some((10, Some(20))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 10-19/15"), None);
        assert_eq!(parse_content_range("bytes 19-10/20"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes x-1/2"), None);
    }
}
