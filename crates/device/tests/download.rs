//! The resumable downloader against a real HTTP server on loopback.

mod common;

use common::{TestServer, content};
use sha2::{Digest, Sha256};
use simfota_device::download::{DownloadError, Downloader, FetchSpec};
use simfota_device::progress::Progress;

fn spec<'a>(url: &'a str) -> FetchSpec<'a> {
    FetchSpec {
        url,
        name: "payload",
        max_len: 10 << 20,
        expected_len: None,
        expected_sha256: None,
    }
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[test]
fn downloads_a_whole_file_with_its_digest() {
    let srv = TestServer::start();
    let body = content(300_000, 1);
    srv.put("/p", &body, Some("\"v1\""));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    let mut s = spec(&url);
    s.expected_len = Some(body.len() as u64);
    s.expected_sha256 = Some(sha(&body));
    let got = Downloader::new(dir.path())
        .fetch(&s, &Progress::hidden())
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    assert_eq!(got.sha256, sha(&body));
    assert_eq!((got.len, got.reused, got.restarts), (300_000, 0, 0));
    assert!(srv.seen()[0].range.is_none());
    // Metadata and partial file are gone once the download is complete.
    assert!(!dir.path().join("payload.part").exists());
    assert!(!dir.path().join("payload.meta.json").exists());
    // Asking again returns the finished file without a request.
    let again = Downloader::new(dir.path())
        .fetch(&s, &Progress::hidden())
        .unwrap();
    assert_eq!(again.sha256, got.sha256);
    assert_eq!(srv.seen().len(), 1);
}

#[test]
fn resumes_after_the_agent_was_stopped_midway() {
    let srv = TestServer::start();
    let body = content(300_000, 2);
    srv.put("/p", &body, Some("\"v1\""));
    srv.with(|s| s.cut_after = Some((120_000, 1)));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    // First run: one connection only, which breaks at 120 000 bytes.
    let err = Downloader::new(dir.path())
        .with_max_attempts(1)
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Truncated {
                got: 120_000,
                expected: 300_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("payload.part"))
            .unwrap()
            .len(),
        120_000
    );
    // Second run: a new downloader (as after a restart) asks for the rest only.
    let got = Downloader::new(dir.path())
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    assert_eq!(got.sha256, sha(&body));
    assert_eq!(got.reused, 120_000);
    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=120000-"));
    assert_eq!(seen[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(seen[1].status, 206);
}

#[test]
fn a_dropped_connection_is_resumed_within_one_fetch() {
    let srv = TestServer::start();
    let body = content(200_000, 3);
    srv.put("/p", &body, Some("\"e\""));
    srv.with(|s| s.cut_after = Some((50_000, 2)));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    let got = Downloader::new(dir.path())
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap();
    assert_eq!(got.sha256, sha(&body));
    let ranges: Vec<_> = srv.seen().iter().map(|s| s.range.clone()).collect();
    assert_eq!(
        ranges,
        vec![
            None,
            Some("bytes=50000-".to_owned()),
            Some("bytes=100000-".to_owned())
        ]
    );
}

#[test]
fn a_changed_etag_restarts_from_zero() {
    let srv = TestServer::start();
    let old = content(100_000, 4);
    srv.put("/p", &old, Some("\"old\""));
    srv.with(|s| s.cut_after = Some((30_000, 1)));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    Downloader::new(dir.path())
        .with_max_attempts(1)
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap_err();
    let new = content(90_000, 5);
    srv.put("/p", &new, Some("\"new\""));
    let got = Downloader::new(dir.path())
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), new);
    assert_eq!(got.restarts, 1);
    let seen = srv.seen();
    assert_eq!(seen[1].if_range.as_deref(), Some("\"old\""));
    assert_eq!(seen[1].status, 200);
}

#[test]
fn a_server_ignoring_if_range_is_caught_by_its_etag() {
    let srv = TestServer::start();
    let old = content(100_000, 6);
    srv.put("/p", &old, Some("\"old\""));
    srv.with(|s| s.cut_after = Some((30_000, 1)));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    Downloader::new(dir.path())
        .with_max_attempts(1)
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap_err();
    let new = content(100_000, 7);
    srv.put("/p", &new, Some("\"new\""));
    srv.with(|s| s.ignore_if_range = true);
    let got = Downloader::new(dir.path())
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap();
    // Mixing 30 000 old bytes with 70 000 new ones would be silent corruption.
    assert_eq!(std::fs::read(&got.path).unwrap(), new);
    assert_eq!(got.restarts, 1);
}

#[test]
fn without_an_etag_a_partial_file_is_not_trusted() {
    let srv = TestServer::start();
    let body = content(80_000, 8);
    srv.put("/p", &body, None);
    srv.with(|s| s.cut_after = Some((20_000, 1)));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    Downloader::new(dir.path())
        .with_max_attempts(1)
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap_err();
    let got = Downloader::new(dir.path())
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap();
    assert_eq!(got.sha256, sha(&body));
    assert_eq!(got.reused, 0);
    assert!(srv.seen().iter().all(|s| s.range.is_none()));
}

#[test]
fn a_connection_that_keeps_breaking_reports_truncation_and_keeps_the_bytes() {
    let srv = TestServer::start();
    let body = content(100_000, 9);
    srv.put("/p", &body, Some("\"t\""));
    srv.with(|s| s.cut_after = Some((10_000, 100)));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    let err = Downloader::new(dir.path())
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Truncated {
                got: 30_000,
                expected: 100_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    assert!(err.to_string().contains("kept for resumption"));
}

#[test]
fn a_lying_content_length_is_truncation() {
    let srv = TestServer::start();
    srv.put("/p", &content(1000, 10), Some("\"l\""));
    srv.with(|s| s.announce_len = Some(5000));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    let err = Downloader::new(dir.path())
        .with_max_attempts(1)
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Truncated {
                got: 1000,
                expected: 5000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_corrupt_file_is_refused_and_deleted() {
    let srv = TestServer::start();
    let body = content(50_000, 11);
    srv.put("/p", &body, Some("\"c\""));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    let mut s = spec(&url);
    let mut wrong = sha(&body);
    wrong[0] ^= 1;
    s.expected_sha256 = Some(wrong);
    let err = Downloader::new(dir.path())
        .fetch(&s, &Progress::hidden())
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(!err.is_unavailable());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing corrupt is kept"
    );
}

#[test]
fn sizes_are_bounded() {
    let srv = TestServer::start();
    srv.put("/p", &content(50_000, 12), Some("\"s\""));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    let mut s = spec(&url);
    s.max_len = 49_999;
    let err = Downloader::new(dir.path())
        .fetch(&s, &Progress::hidden())
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::TooLarge { limit: 49_999, .. }),
        "{err:?}"
    );
    let mut s = spec(&url);
    s.expected_len = Some(40_000);
    let err = Downloader::new(dir.path())
        .fetch(&s, &Progress::hidden())
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::LengthMismatch {
                expected: 40_000,
                actual: 50_000,
                ..
            }
        ),
        "{err:?}"
    );
    let d = Downloader::new(dir.path());
    assert_eq!(d.fetch_bytes(&url, 50_000).unwrap().len(), 50_000);
    assert!(matches!(
        d.fetch_bytes(&url, 100),
        Err(DownloadError::TooLarge { limit: 100, .. })
    ));
}

#[test]
fn missing_file_and_missing_server_are_told_apart() {
    let srv = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/nothing");
    let err = Downloader::new(dir.path())
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::NotFound { status: 404, .. }),
        "{err:?}"
    );
    // A port nobody listens on: bind one, learn its number, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/p");
    let err = Downloader::new(dir.path())
        .with_max_attempts(2)
        .fetch(&spec(&url), &Progress::hidden())
        .unwrap_err();
    assert!(matches!(err, DownloadError::Unreachable { .. }), "{err:?}");
    assert!(err.is_unavailable());
}

/// A cut anywhere (the first byte, inside a buffer, at a buffer's edge, one byte before the
/// end) and a new downloader, as after a restart: only the missing bytes are asked for, and
/// the file is the exact image, its digest checked.
#[test]
fn resumes_after_a_cut_at_any_offset() {
    const MIB: usize = 1024 * 1024;
    let len = 3 * MIB + 4321;
    let body = content(len, 9);
    for cut in [
        1,
        12_345,
        MIB - 1,
        MIB,
        MIB + 1,
        2 * MIB + 777,
        len - 4321,
        len - 1,
    ] {
        let srv = TestServer::start();
        srv.put("/p", &body, Some("\"v1\""));
        srv.with(|s| s.cut_after = Some((cut, 1)));
        let dir = tempfile::tempdir().unwrap();
        let url = srv.url("/p");
        let mut s = spec(&url);
        s.expected_len = Some(len as u64);
        s.expected_sha256 = Some(sha(&body));
        let err = Downloader::new(dir.path())
            .with_max_attempts(1)
            .fetch(&s, &Progress::hidden())
            .unwrap_err();
        assert!(
            matches!(err, DownloadError::Truncated { got, .. } if got == cut as u64),
            "cut at {cut}: {err:?}"
        );
        let got = Downloader::new(dir.path())
            .fetch(&s, &Progress::hidden())
            .unwrap();
        assert_eq!(got.sha256, sha(&body), "cut at {cut}");
        assert_eq!(got.reused, cut as u64, "cut at {cut}");
        assert_eq!(std::fs::read(&got.path).unwrap(), body, "cut at {cut}");
        let seen = srv.seen();
        assert_eq!(seen.len(), 2, "cut at {cut}");
        assert_eq!(seen[1].range, Some(format!("bytes={cut}-")), "cut at {cut}");
    }
}

/// Plain progress lines (what a pipe or a journal gets) during a real download: a line per
/// tenth, the last one with the total.
#[test]
fn a_download_reports_progress_in_plain_lines() {
    let srv = TestServer::start();
    let body = content(20 << 20, 4);
    srv.put("/p", &body, Some("\"p\""));
    let dir = tempfile::tempdir().unwrap();
    let url = srv.url("/p");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let progress = Progress::lines(
        "download",
        Box::new(move |l: &str| sink.lock().unwrap().push(l.to_owned())),
    );
    let mut s = spec(&url);
    s.max_len = 64 << 20;
    Downloader::new(dir.path()).fetch(&s, &progress).unwrap();
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 10, "{lines:#?}");
    // The reads decide where each line falls: at or just past each tenth.
    for (i, line) in lines[..9].iter().enumerate() {
        let rest = line.strip_prefix("download: ").unwrap();
        let (done, rest) = rest.split_once(" MiB of 20.0 MiB (").unwrap();
        let (pct, rest) = rest.split_once("%), ").unwrap();
        let done: f64 = done.parse().unwrap();
        let pct: usize = pct.parse().unwrap();
        assert!(pct >= 10 * (i + 1) && pct < 10 * (i + 2), "{line}");
        assert!((done / 20.0 * 100.0) as usize == pct, "{line}");
        // The rate's unit follows its size (loopback may well exceed 1 GiB/s).
        let (rate, left) = rest
            .split_once("/s, about ")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            [" B", " KiB", " MiB", " GiB", " TiB"].iter().any(|u| rate
                .strip_suffix(u)
                .is_some_and(|n| n.parse::<f64>().is_ok())),
            "{line}"
        );
        assert!(left.ends_with(" left"), "{line}");
    }
    assert!(
        lines[9].starts_with("download: 20.0 MiB done in "),
        "{}",
        lines[9]
    );
}
