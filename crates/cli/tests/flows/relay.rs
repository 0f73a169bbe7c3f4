//! A hostile network on loopback: an HTTP relay between the device and the real server that
//! lets a test read and rewrite every message. The device authenticates its DM session with
//! `syncml:auth-md5` (SyncML RepPro 1.2 §5.2: the digest covers the credentials and the
//! nonce, not the body), so an attacker on the path can change any command in a message; the
//! card is what must notice. The relay rewrites the server's own address in `/dm` answers to
//! its own, so the device also fetches the envelope and the payload through it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A request as the device sent it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The body as text (SyncML XML).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An answer on its way to the device.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (SyncML XML).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the relay does with a request.
pub enum Action {
    /// Pass it to the server.
    Forward,
    /// Answer it without the server.
    Respond(Response),
    /// Close the connection without an answer (the network or the server is gone).
    Drop,
}

/// The attacker's hands on the path. Both hooks see every exchange in order.
pub trait Hooks: Send + 'static {
    /// A request from the device, before it goes on (it may be changed).
    fn request(&mut self, _req: &mut Request) -> Action {
        Action::Forward
    }
    /// The server's answer, before the device sees it (it may be changed).
    fn response(&mut self, _req: &Request, _resp: &mut Response) {}
}

/// A running relay; stops when dropped.
pub struct Relay {
    pub url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl Relay {
    /// Listens on a free loopback port and relays to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, hooks: impl Hooks) -> Relay {
        Self::start_balanced(&[upstream], hooks)
    }

    /// A round-robin load balancer: each request goes to the next of `upstreams` in turn, so
    /// consecutive messages of one DM session reach different servers.
    pub fn start_balanced(upstreams: &[&str], hooks: impl Hooks) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let stop = Arc::new(AtomicBool::new(false));
        let hooks: Arc<Mutex<Box<dyn Hooks>>> = Arc::new(Mutex::new(Box::new(hooks)));
        let ups: Vec<String> = upstreams.iter().map(|u| (*u).to_owned()).collect();
        let (me, flag) = (url.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let http = simfota_device::download::http_agent();
            for (n, conn) in listener.incoming().enumerate() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                // One exchange per connection (the answer says `Connection: close`); a broken
                // exchange only concerns that connection.
                let _ = serve(conn, &http, &ups, n % ups.len(), &me, &hooks);
            }
        });
        Relay {
            url,
            stop,
            thread: Some(thread),
            port,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
    }))
}

const HOP_BY_HOP: [&str; 5] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
];

fn forward(http: &ureq::Agent, upstream: &str, req: &Request) -> Option<Response> {
    let url = format!("{upstream}{}", req.path);
    let headers = req
        .headers
        .iter()
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.to_ascii_lowercase().as_str()));
    let result = if req.method == "GET" {
        let mut b = http.get(&url);
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.call()
    } else {
        let mut b = http.post(&url);
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.send(&req.body[..])
    };
    let mut r = result.ok()?;
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = r.body_mut().read_to_vec().ok()?;
    Some(Response {
        status,
        headers,
        body,
    })
}

fn serve(
    conn: TcpStream,
    http: &ureq::Agent,
    upstreams: &[String],
    turn: usize,
    me: &str,
    hooks: &Mutex<Box<dyn Hooks>>,
) -> std::io::Result<()> {
    let upstream = upstreams[turn].as_str();
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(mut req) = read_request(&mut reader)? else {
        return Ok(());
    };
    let action = hooks.lock().unwrap().request(&mut req);
    let mut resp = match action {
        Action::Drop => return Ok(()),
        Action::Respond(r) => r,
        Action::Forward => match forward(http, upstream, &req) {
            Some(r) => r,
            None => return Ok(()),
        },
    };
    if req.path.starts_with("/dm") {
        // Keep the device on this path: package URLs and RespURI point back here.
        let mut text = resp.text();
        for up in upstreams {
            text = text.replace(up.as_str(), me);
        }
        resp.body = text.into_bytes();
    }
    hooks.lock().unwrap().response(&req, &mut resp);
    let mut out = conn;
    let reason = match resp.status {
        200 => "OK",
        206 => "Partial Content",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    ));
    out.write_all(head.as_bytes())?;
    out.write_all(&resp.body)?;
    out.flush()
}

/// The `<Data>` content of the item whose `<LocURI>` is `uri` (SyncML RepPro 1.2 §6.6.13),
/// as a byte range of `xml`.
pub fn data_range(xml: &str, uri: &str) -> Option<std::ops::Range<usize>> {
    let at = xml.find(&format!("<LocURI>{uri}</LocURI>"))?;
    // The Data of that Item: after the LocURI, before the Item ends.
    let item_end = xml[at..].find("</Item>").map(|i| at + i)?;
    let open = xml[at..item_end]
        .find("<Data>")
        .map(|i| at + i + "<Data>".len())?;
    let close = xml[open..item_end].find("</Data>").map(|i| open + i)?;
    Some(open..close)
}

/// The `<Data>` text of the item for `uri`.
pub fn data(xml: &str, uri: &str) -> Option<String> {
    data_range(xml, uri).map(|r| xml[r].to_owned())
}

/// Replaces the `<Data>` text of the item for `uri`; answers whether it was there.
pub fn set_data(xml: &mut String, uri: &str, new: &str) -> bool {
    match data_range(xml, uri) {
        Some(r) => {
            xml.replace_range(r, new);
            true
        }
        None => false,
    }
}

/// Base64 (RFC 4648 §4), as SyncML `b64` items carry it.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes a `b64` item (whitespace ignored).
pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .unwrap()
}
