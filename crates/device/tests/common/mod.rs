//! A small real HTTP/1.1 file server on loopback for the device's tests: Range, ETag, If-Range,
//! and switches to misbehave (cut a response short, change the file, ignore If-Range).
#![allow(dead_code, clippy::unwrap_used)] // test support: a failure here is a test failure

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

pub mod dm;
pub mod real_server;

/// A simulated image starting with these bytes fails [`SelfTestBootCheck`].
pub const UNBOOTABLE: &[u8] = b"SIMFOTA-UNBOOTABLE";

/// The standard boot check plus a simulated self-test that fails for an image starting with
/// [`UNBOOTABLE`]: how the tests make a firmware that does not come up (the production check
/// looks at nothing but the slot's digest).
pub struct SelfTestBootCheck;

impl simfota_device::slots::BootCheck for SelfTestBootCheck {
    fn check(
        &self,
        path: &std::path::Path,
        info: &simfota_device::slots::SlotInfo,
    ) -> Result<(), String> {
        simfota_device::slots::StandardBootCheck.check(path, info)?;
        let image = std::fs::read(path).map_err(|e| e.to_string())?;
        if image.starts_with(UNBOOTABLE) {
            return Err(format!("firmware {} failed its self-test", info.version));
        }
        Ok(())
    }
}

/// One served file.
#[derive(Clone, Debug)]
pub struct Served {
    pub body: Vec<u8>,
    pub etag: Option<String>,
}

/// What the server saw for one request.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

#[derive(Default)]
pub struct State {
    pub files: HashMap<String, Served>,
    /// Close the connection after this many body bytes, for the next N responses.
    pub cut_after: Option<(usize, u32)>,
    /// Answer ranges even when If-Range does not match (a broken server).
    pub ignore_if_range: bool,
    /// Announce this Content-Length instead of the real one (full responses).
    pub announce_len: Option<usize>,
    /// Send bodies in pieces of this many bytes with this pause between them.
    pub throttle: Option<(usize, std::time::Duration)>,
    pub seen: Vec<Seen>,
}

pub struct TestServer {
    pub base: String,
    pub state: Arc<Mutex<State>>,
}

impl TestServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                thread::spawn(move || handle(stream, &st));
            }
        });
        TestServer { base, state }
    }

    pub fn put(&self, path: &str, body: &[u8], etag: Option<&str>) {
        self.state.lock().unwrap().files.insert(
            path.to_owned(),
            Served {
                body: body.to_vec(),
                etag: etag.map(str::to_owned),
            },
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

/// Deterministic test content.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn handle(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut st = state.lock().unwrap();
    let mut seen = Seen {
        path: path.clone(),
        range: headers.get("range").cloned(),
        if_range: headers.get("if-range").cloned(),
        status: 0,
    };
    let mut out = stream;
    let Some(file) = st.files.get(&path).cloned() else {
        seen.status = 404;
        st.seen.push(seen);
        let _ = out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let len = file.body.len();
    let etag_hdr = file
        .etag
        .as_ref()
        .map(|e| format!("ETag: {e}\r\n"))
        .unwrap_or_default();
    let if_range_ok = match (&seen.if_range, &file.etag) {
        (None, _) => true,
        (Some(a), Some(b)) => a == b || st.ignore_if_range,
        (Some(_), None) => st.ignore_if_range,
    };
    let range_start = seen
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    let (head, body): (String, &[u8]) = match range_start {
        Some(start) if if_range_ok && start >= len => {
            seen.status = 416;
            (
                format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n{etag_hdr}Connection: close\r\n\r\n"
                ),
                &[][..],
            )
        }
        Some(start) if if_range_ok => {
            seen.status = 206;
            (
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\nContent-Length: {}\r\n{etag_hdr}Connection: close\r\n\r\n",
                    len - 1,
                    len - start
                ),
                &file.body[start..],
            )
        }
        _ => {
            seen.status = 200;
            let announced = st.announce_len.unwrap_or(len);
            (
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\n{etag_hdr}Accept-Ranges: bytes\r\nConnection: close\r\n\r\n"
                ),
                &file.body[..],
            )
        }
    };
    let mut send = body.len();
    if let Some((cut, times)) = st.cut_after {
        send = send.min(cut);
        st.cut_after = if times > 1 {
            Some((cut, times - 1))
        } else {
            None
        };
    }
    st.seen.push(seen);
    let body = body[..send].to_vec();
    let throttle = st.throttle;
    drop(st);
    let _ = out.write_all(head.as_bytes());
    match throttle {
        Some((piece, pause)) => {
            for chunk in body.chunks(piece.max(1)) {
                if out.write_all(chunk).and_then(|_| out.flush()).is_err() {
                    return;
                }
                thread::sleep(pause);
            }
        }
        None => {
            let _ = out.write_all(&body);
        }
    }
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
}
