//! SyncML DM 1.2 conformance of the `/dm` endpoint, against clients scripted message by
//! message from the specifications' rules rather than by the project's own client session:
//! one that re-sends only the commands answered 401/407, one that keeps its SessionID across
//! sessions, one that answers the server's credentials with 212 (or 200) and a new Chal, one
//! that sends every message twice. XML and WBXML, `syncml:auth-md5` and HMAC; every test runs
//! on SQLite and PostgreSQL.
//!
//! Specifications cited: OMA-TS-DM_Protocol-V1_2 (DM Pro), OMA-TS-DM_Security-V1_2 (DM Sec),
//! OMA-TS-DM_RepPro-V1_2 (DM RepPro), OMA-TS-SyncML_RepPro-V1_2 (RepPro).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine as _;
use common::http::{self, StatusCode};
use common::{Env, Server, imei};
use simfota_syncml::auth::{self, AuthScheme, Credentials, Nonce};
use simfota_syncml::model::{
    Alert, Chal, CmdId, Command, Data, Item, ItemCommand, Location, Message, Meta, MsgId, Status,
    SyncHdr, VER_DTD, VER_PROTO,
};
use simfota_syncml::{AlertCode, Encoding, Limits, StatusCode as Dm};

const SERVER_ID: &str = "simfota";
const SERVER_PASSWORD: &str = "srv-secret";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// What the server answered one message.
struct Answer {
    http: StatusCode,
    body: Vec<u8>,
    hmac: Option<String>,
    msg: Option<Message>,
}

impl Answer {
    fn msg(&self) -> &Message {
        self.msg.as_ref().expect("a SyncML reply")
    }

    /// The Status answering our command `cmd_ref` (0: our SyncHdr).
    fn status(&self, cmd_ref: u32) -> &Status {
        self.statuses()
            .into_iter()
            .find(|s| s.cmd_ref == CmdId(cmd_ref))
            .unwrap_or_else(|| panic!("no Status for command {cmd_ref}: {:?}", self.msg()))
    }

    fn statuses(&self) -> Vec<&Status> {
        self.msg()
            .body
            .iter()
            .filter_map(|c| match c {
                Command::Status(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// The server's commands (everything but Status and Results).
    fn commands(&self) -> Vec<&Command> {
        self.msg()
            .body
            .iter()
            .filter(|c| !matches!(c, Command::Status(_) | Command::Results(_)))
            .collect()
    }

    /// The session is over: a final message of statuses only (DM Pro §8.6).
    fn ends(&self) -> bool {
        self.msg().is_final && self.commands().is_empty()
    }
}

fn next_nonce(s: &Status) -> Nonce {
    let n = s
        .chal
        .as_ref()
        .and_then(|c| c.meta.next_nonce.as_deref())
        .unwrap_or_else(|| panic!("no Chal with NextNonce on {s:?}"));
    Nonce::from_b64(n).unwrap()
}

/// A scripted DM client: builds each message itself from the model types.
struct Script {
    url: String,
    imei: String,
    password: String,
    auth: AuthScheme,
    encoding: Encoding,
    session_id: String,
    msg_id: u32,
    /// The nonce our credentials use (DM Sec §5.4).
    nonce: Nonce,
}

impl Script {
    fn new(s: &Server, n: u32, auth: AuthScheme, encoding: Encoding) -> Script {
        Script {
            url: s.url.clone(),
            imei: imei(n),
            password: format!("pw-{n}"),
            auth,
            encoding,
            session_id: "1".into(),
            msg_id: 0,
            nonce: Nonce(b"never-agreed".to_vec()),
        }
    }

    fn user(&self) -> String {
        format!("dev-{}", self.imei)
    }

    fn creds(&self) -> Credentials {
        Credentials::new(self.user(), self.password.clone())
    }

    /// Registers the device; `nonce`: the one provisioned with its account (DM Sec §5.4).
    async fn register(&self, s: &Server, nonce: Option<&Nonce>) {
        let mut body = serde_json::json!({
            "imei": self.imei, "username": self.user(), "password": self.password,
            "server_password": SERVER_PASSWORD,
            "auth": if self.auth == AuthScheme::Hmac { "hmac" } else { "md5" },
        });
        if let Some(n) = nonce {
            body["nonce"] = serde_json::json!(b64(&n.0));
        }
        let r = s.post("/api/v1/devices").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    /// A new session: `session_id`, MsgIDs from 1 (RepPro §5.1 MsgID).
    fn begin(&mut self, session_id: &str) {
        self.session_id = session_id.into();
        self.msg_id = 0;
    }

    /// The next message: `body` numbered from CmdID 1, with our credentials when `cred`
    /// (in the SyncHdr for MD5, DM Pro §9.3; for HMAC the header of every message, DM Sec
    /// §5.5).
    fn message(&mut self, mut body: Vec<Command>, cred: bool) -> (Vec<u8>, Option<String>) {
        self.msg_id += 1;
        for (i, c) in body.iter_mut().enumerate() {
            c.set_cmd_id(CmdId(i as u32 + 1));
        }
        let header = SyncHdr {
            ver_dtd: VER_DTD.into(),
            ver_proto: VER_PROTO.into(),
            session_id: self.session_id.clone(),
            msg_id: MsgId(self.msg_id),
            target: Location::new(format!("{}/dm", self.url)),
            source: Location {
                uri: format!("IMEI:{}", self.imei),
                name: Some(self.user()),
            },
            resp_uri: None,
            no_resp: false,
            cred: if cred && self.auth == AuthScheme::Md5 {
                auth::make_cred(AuthScheme::Md5, &self.creds(), &self.nonce)
            } else {
                None
            },
            meta: None,
        };
        let msg = Message {
            header,
            body,
            is_final: true,
        };
        let bytes = self.encoding.encode(&msg).unwrap();
        let hmac = (self.auth == AuthScheme::Hmac)
            .then(|| auth::hmac_header(&self.creds(), &self.nonce, &bytes));
        (bytes, hmac)
    }

    async fn post(&self, (body, hmac): &(Vec<u8>, Option<String>)) -> Answer {
        let mut req = http::Client::new()
            .post(format!("{}/dm", self.url))
            .header("content-type", self.encoding.content_type())
            .body(body.clone());
        if let Some(h) = hmac {
            req = req.header("x-syncml-hmac", h);
        }
        let resp = req.send().await.unwrap();
        let http = resp.status();
        let hmac = resp
            .headers()
            .get("x-syncml-hmac")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.bytes().await.unwrap().to_vec();
        let msg = (http == StatusCode::OK).then(|| {
            Encoding::sniff(&body)
                .decode(&body, &Limits::default())
                .unwrap()
        });
        Answer {
            http,
            body,
            hmac,
            msg,
        }
    }

    /// Package 1 (DM Pro §8.3): Alert 1201 and `./DevInfo` as a Replace.
    fn package1(&self) -> Vec<Command> {
        let leaf = |name: &str, value: &str| Item {
            source: Some(Location::new(format!("./DevInfo/{name}"))),
            meta: Some(Meta::format("chr")),
            data: Some(Data::text(value)),
            ..Item::default()
        };
        vec![
            Command::Alert(Alert {
                cmd_id: CmdId(0),
                no_resp: false,
                cred: None,
                code: AlertCode::CLIENT_INITIATED_MGMT,
                correlator: None,
                items: Vec::new(),
            }),
            Command::Replace(ItemCommand {
                cmd_id: CmdId(0),
                no_resp: false,
                cred: None,
                meta: None,
                items: vec![
                    leaf("DevId", &format!("IMEI:{}", self.imei)),
                    leaf("Man", "Acme"),
                    leaf("Mod", "EX-1"),
                    leaf("DmV", "1.2"),
                    leaf("Lang", "en"),
                ],
            }),
        ]
    }

    /// The Status of the server's SyncHdr, checking its credentials as a DM client must
    /// (DM Sec §5.1): `code` and an optional Chal giving the nonce the server must use next.
    fn header_status(&self, answer: &Answer, code: Dm, chal: Option<&Nonce>) -> Command {
        let hdr = &answer.msg().header;
        Command::Status(Status {
            cmd_id: CmdId(0),
            msg_ref: Some(hdr.msg_id),
            cmd_ref: CmdId::HEADER,
            cmd: "SyncHdr".into(),
            target_refs: vec![hdr.target.uri.clone()],
            source_refs: vec![hdr.source.uri.clone()],
            cred: None,
            chal: chal.map(|n| Chal {
                meta: Meta {
                    format: Some("b64".into()),
                    mime_type: Some(self.auth.type_str().into()),
                    next_nonce: Some(n.to_b64()),
                    ..Meta::default()
                },
            }),
            code,
            items: Vec::new(),
        })
    }

    /// Statuses for the server's commands: this client has no tree, so every one is 404
    /// (RepPro §10), which the server takes as "not there" and moves on.
    fn answers(&self, answer: &Answer) -> Vec<Command> {
        let msg_ref = answer.msg().header.msg_id;
        answer
            .commands()
            .into_iter()
            .filter(|c| !c.no_resp())
            .map(|c| {
                Command::Status(Status {
                    cmd_id: CmdId(0),
                    msg_ref: Some(msg_ref),
                    cmd_ref: c.cmd_id(),
                    cmd: c.name().to_owned(),
                    target_refs: c
                        .items()
                        .iter()
                        .filter_map(|i| i.target.as_ref().map(|t| t.uri.clone()))
                        .collect(),
                    source_refs: Vec::new(),
                    cred: None,
                    chal: None,
                    code: Dm::NOT_FOUND,
                    items: Vec::new(),
                })
            })
            .collect()
    }

    /// The server's credentials in `answer` were computed with `nonce` (DM Sec §5.3/§5.5).
    fn server_used(&self, answer: &Answer, nonce: &Nonce) -> bool {
        let srv = Credentials::new(SERVER_ID, SERVER_PASSWORD);
        match self.auth {
            AuthScheme::Hmac => {
                auth::verify_hmac(answer.hmac.as_deref(), &srv, nonce, &answer.body).is_ok()
            }
            _ => auth::verify_cred(
                answer.msg().header.cred.as_ref(),
                AuthScheme::Md5,
                &srv,
                nonce,
            )
            .is_ok(),
        }
    }

    /// Runs the session on from `answer` to its end, accepting the server (212, then 200)
    /// and answering every command 404. Returns the last answer.
    async fn finish(&mut self, mut answer: Answer) -> Answer {
        let mut accepted = false;
        for _ in 0..20 {
            if answer.ends() {
                return answer;
            }
            let code = if accepted {
                Dm::OK
            } else {
                Dm::AUTHENTICATION_ACCEPTED
            };
            accepted = true;
            let mut body = vec![self.header_status(&answer, code, None)];
            body.extend(self.answers(&answer));
            let cred = self.auth == AuthScheme::Hmac;
            let out = self.message(body, cred);
            answer = self.post(&out).await;
            assert_eq!(answer.http, StatusCode::OK);
        }
        panic!("the session did not end");
    }

    /// After the server's 212: MD5 keeps the nonce for the next session, HMAC uses it for
    /// the next message (DM Pro §9.1, DM Sec §5.5).
    fn accepted(&mut self, answer: &Answer) {
        let hs = answer.status(0);
        assert_eq!(hs.code, Dm::AUTHENTICATION_ACCEPTED, "{hs:?}");
        if self.auth != AuthScheme::Basic {
            self.nonce = next_nonce(hs);
        }
    }
}

async fn device_nonce(s: &Server, imei: &str) -> Option<Vec<u8>> {
    sqlx::query_scalar("SELECT device_nonce FROM devices WHERE imei = $1")
        .bind(imei.to_owned())
        .fetch_one(s.running.state().db.pool())
        .await
        .unwrap()
}

async fn server_nonce(s: &Server, imei: &str) -> Option<Vec<u8>> {
    sqlx::query_scalar("SELECT server_nonce FROM devices WHERE imei = $1")
        .bind(imei.to_owned())
        .fetch_one(s.running.state().db.pool())
        .await
        .unwrap()
}

async fn count(s: &Server, sql: &str, imei: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(imei.to_owned())
        .fetch_one(s.running.state().db.pool())
        .await
        .unwrap()
}

const AUTH_EVENTS: &str = "SELECT COUNT(*) FROM security_events e JOIN devices d \
                           ON d.id = e.device_id WHERE d.imei = $1 AND e.kind = 'device_auth'";
const SEEN: &str = "SELECT COUNT(*) FROM devices WHERE imei = $1 AND last_seen_ms IS NOT NULL";

const VARIANTS: [(AuthScheme, Encoding); 3] = [
    (AuthScheme::Md5, Encoding::Xml),
    (AuthScheme::Md5, Encoding::Wbxml),
    (AuthScheme::Hmac, Encoding::Wbxml),
];

/// A client that re-sends only the commands whose own Status is 401/407 completes its first
/// session, as one that re-sends the whole package does.
async fn selective_resend(env: Env) {
    let s = env.start().await;
    for (n, (scheme, encoding)) in VARIANTS.into_iter().enumerate() {
        let mut c = Script::new(&s, 100 + n as u32, scheme, encoding);
        c.register(&s, None).await;
        c.begin("1");
        let p1 = c.package1();
        let out = c.message(p1.clone(), true);
        let a = c.post(&out).await;
        // DM Pro §9.1: the nonce is not the agreed one, so 401; a Status MUST be given for
        // every command received, and a 401/407 Status MUST carry a Chal.
        let hs = a.status(0);
        assert_eq!(hs.code, Dm::INVALID_CREDENTIALS, "{scheme:?} {encoding:?}");
        let nonce = next_nonce(hs);
        for cmd_ref in [1, 2] {
            let st = a.status(cmd_ref);
            assert_eq!(st.code, Dm::INVALID_CREDENTIALS, "{st:?}");
            assert_eq!(next_nonce(st), nonce, "one challenge, one nonce");
        }
        // DM Pro §9.1: a response indicating an authentication failure holds Status only.
        assert!(a.commands().is_empty());
        assert_eq!(device_nonce(&s, &c.imei).await, Some(nonce.0.clone()));

        // Re-sends exactly the commands answered 401/407 (here: all of them), with the
        // credentials the Chal asks for (DM Pro §9.2), and the Status for the SyncHdr (§9.1).
        c.nonce = nonce;
        let refused: Vec<u32> = a
            .statuses()
            .iter()
            .filter(|s| {
                s.cmd_ref != CmdId::HEADER
                    && matches!(s.code, Dm::INVALID_CREDENTIALS | Dm::MISSING_CREDENTIALS)
            })
            .map(|s| s.cmd_ref.0)
            .collect();
        assert_eq!(refused, [1, 2]);
        let mut again = vec![c.header_status(&a, Dm::OK, None)];
        again.extend(
            p1.iter()
                .filter(|cmd| refused.contains(&cmd.cmd_id().0))
                .cloned(),
        );
        let out = c.message(again, true);
        let a = c.post(&out).await;
        c.accepted(&a);
        // DM Pro §8.3-§8.4: the session is open; its Gets follow.
        assert!(!a.commands().is_empty(), "{:?}", a.msg());
        let last = c.finish(a).await;
        assert!(last.ends());
        assert_eq!(count(&s, SEEN, &c.imei).await, 1, "the device became known");
        // DM Pro §9.1: the 212's NextNonce is the nonce of the next session.
        if scheme == AuthScheme::Md5 {
            assert_eq!(device_nonce(&s, &c.imei).await, Some(c.nonce.0.clone()));
        }
    }
    s.stop().await;
}
both!(
    a_client_resending_only_refused_commands_completes,
    super::selective_resend
);

/// The client answers the server's credentials with 212 and a Chal: the server keeps that
/// NextNonce for its next session and its package 0 (DM Pro §9.1: it MUST be used when the
/// next session starts; DM Notif §6.3).
async fn next_nonce_on_212(env: Env) {
    let s = env.start().await;
    for (n, (scheme, encoding)) in VARIANTS.into_iter().enumerate() {
        let mut c = Script::new(&s, 200 + n as u32, scheme, encoding);
        let provisioned = Nonce(vec![7; 8]);
        c.nonce = provisioned.clone();
        c.register(&s, Some(&provisioned)).await;
        c.begin("1");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        c.accepted(&a);
        assert!(
            c.server_used(&a, &Nonce(Vec::new())),
            "the stored (empty) nonce"
        );
        let wanted = Nonce(format!("next-{n}").into_bytes());
        let mut body = vec![c.header_status(&a, Dm::AUTHENTICATION_ACCEPTED, Some(&wanted))];
        body.extend(c.answers(&a));
        let out = c.message(body, scheme == AuthScheme::Hmac);
        let a = c.post(&out).await;
        assert_eq!(a.http, StatusCode::OK);
        // DM Pro §9.1: after 212 no further credentials in this session (MD5).
        if scheme == AuthScheme::Md5 {
            assert!(a.msg().header.cred.is_none());
        } else {
            // HMAC: every message is MACed, with the nonce the client asked for.
            assert!(c.server_used(&a, &wanted));
        }
        c.finish(a).await;
        assert_eq!(server_nonce(&s, &c.imei).await, Some(wanted.0.clone()));

        // The next session: the server's credentials use the nonce asked for.
        c.begin("2");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        c.accepted(&a);
        assert!(c.server_used(&a, &wanted), "{scheme:?} {encoding:?}");
        c.finish(a).await;
    }
    s.stop().await;
}
both!(
    a_next_nonce_given_with_212_is_used_next_session,
    super::next_nonce_on_212
);

/// The client answers the server's credentials with 200 and a Chal: the credentials MUST go
/// again in the next message, digested with the new nonce (DM Pro §9.1); 212 ends them.
async fn credentials_kept_on_200(env: Env) {
    let s = env.start().await;
    for (n, encoding) in [Encoding::Xml, Encoding::Wbxml].into_iter().enumerate() {
        let mut c = Script::new(&s, 300 + n as u32, AuthScheme::Md5, encoding);
        let provisioned = Nonce(vec![3; 8]);
        c.nonce = provisioned.clone();
        c.register(&s, Some(&provisioned)).await;
        c.begin("1");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        c.accepted(&a);
        assert!(
            a.msg().header.cred.is_some(),
            "DM Sec §5.1: the server authenticates"
        );
        let wanted = Nonce(b"again-with-this".to_vec());
        let mut body = vec![c.header_status(&a, Dm::OK, Some(&wanted))];
        body.extend(c.answers(&a));
        let out = c.message(body, false);
        let a = c.post(&out).await;
        assert!(
            a.msg().header.cred.is_some(),
            "200 to credentials: they go again"
        );
        assert!(c.server_used(&a, &wanted), "with the new nonce");
        assert_eq!(server_nonce(&s, &c.imei).await, Some(wanted.0.clone()));
    }
    s.stop().await;
}
both!(
    credentials_go_again_after_200_with_a_chal,
    super::credentials_kept_on_200
);

/// A client that keeps its SessionID: a new package 1 on it starts a new session (DM Pro
/// §8.3; MsgIDs from 1, RepPro §5.1 MsgID), it does not continue the stored one; and a
/// stale unauthenticated session on that id checks the device with the account's current
/// nonce, never challenging it away from it.
async fn same_session_id(env: Env) {
    let s = env.start().await;
    for (n, (scheme, encoding)) in VARIANTS.into_iter().enumerate() {
        let mut c = Script::new(&s, 400 + n as u32, scheme, encoding);
        let provisioned = Nonce(vec![4; 8]);
        c.nonce = provisioned.clone();
        c.register(&s, Some(&provisioned)).await;

        // Session "9": package 1 accepted, Gets queued, then the client goes away.
        c.begin("9");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        c.accepted(&a);
        let gets = a.commands().len();
        assert!(gets > 0);
        // HMAC clients took the NextNonce for their next message; the new session starts
        // from what the account holds, which is that nonce for both schemes.
        assert_eq!(device_nonce(&s, &c.imei).await, Some(c.nonce.0.clone()));

        // A new session with the same SessionID: package 1 again.
        c.begin("9");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        assert_eq!(
            a.msg().header.msg_id,
            MsgId(1),
            "a new session's first reply"
        );
        c.accepted(&a);
        assert_eq!(a.commands().len(), gets, "its own requests, queued afresh");
        assert_eq!(count(&s, AUTH_EVENTS, &c.imei).await, 0);
        c.finish(a).await;

        // A stale unauthenticated session: "5" is challenged and abandoned ...
        let current = c.nonce.clone();
        c.nonce = Nonce(b"wrong".to_vec());
        c.begin("5");
        let out = c.message(c.package1(), true);
        let stale = c.post(&out).await;
        let stale_challenge = next_nonce(stale.status(0));
        // ... another session "6" authenticates with that challenge's nonce and moves the
        // account's nonce on (212 + Chal) ...
        c.nonce = stale_challenge;
        c.begin("6");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        c.accepted(&a);
        c.finish(a).await;
        let events = count(&s, AUTH_EVENTS, &c.imei).await;
        // ... then the client continues "5" (MsgID 2) with the account's current nonce: it
        // is checked against that nonce (DM Sec §5.4), accepted, nothing challenged.
        assert_ne!(c.nonce, current);
        let mut body = vec![c.header_status(&stale, Dm::OK, None)];
        body.extend(c.package1());
        c.session_id = "5".into();
        c.msg_id = 1;
        let out = c.message(body, true);
        let a = c.post(&out).await;
        c.accepted(&a);
        assert_eq!(count(&s, AUTH_EVENTS, &c.imei).await, events);
    }
    s.stop().await;
}
both!(
    a_reused_session_id_starts_a_new_session,
    super::same_session_id
);

/// A client that sends every message twice: the second copy is answered with the very reply
/// of the first, and nothing of it runs again (RepPro §5.1 MsgID): no second challenge, no
/// second nonce, no second event.
async fn twice(env: Env) {
    let s = env.start().await;
    for (n, (scheme, encoding)) in VARIANTS.into_iter().enumerate() {
        let mut c = Script::new(&s, 500 + n as u32, scheme, encoding);
        c.register(&s, None).await;
        c.begin("1");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        let b = c.post(&out).await;
        assert_eq!(a.body, b.body, "{scheme:?} {encoding:?}");
        assert_eq!(a.hmac, b.hmac);
        let nonce = next_nonce(a.status(0));
        assert_eq!(device_nonce(&s, &c.imei).await, Some(nonce.0.clone()));
        assert_eq!(count(&s, AUTH_EVENTS, &c.imei).await, 1);

        c.nonce = nonce;
        let mut body = vec![c.header_status(&a, Dm::OK, None)];
        body.extend(c.package1());
        let out = c.message(body, true);
        let a = c.post(&out).await;
        let b = c.post(&out).await;
        assert_eq!(a.body, b.body);
        c.accepted(&a);
        // Each message of the session twice, to its end.
        let mut answer = a;
        let mut accepted = false;
        while !answer.ends() {
            let code = if accepted {
                Dm::OK
            } else {
                Dm::AUTHENTICATION_ACCEPTED
            };
            accepted = true;
            let mut body = vec![c.header_status(&answer, code, None)];
            body.extend(c.answers(&answer));
            let out = c.message(body, scheme == AuthScheme::Hmac);
            let first = c.post(&out).await;
            if !first.ends() {
                let second = c.post(&out).await;
                assert_eq!(first.body, second.body);
            }
            answer = first;
        }
        assert_eq!(count(&s, SEEN, &c.imei).await, 1);
        assert_eq!(count(&s, AUTH_EVENTS, &c.imei).await, 1);
    }
    s.stop().await;
}
both!(a_message_sent_twice_runs_once, super::twice);

/// An out-of-order message is refused and nothing of it runs: a different message reusing
/// the last MsgID (RepPro §5.1 MsgID: MsgIDs grow through a session).
async fn out_of_order(env: Env) {
    let s = env.start().await;
    let mut c = Script::new(&s, 600, AuthScheme::Md5, Encoding::Xml);
    let provisioned = Nonce(vec![6; 8]);
    c.nonce = provisioned.clone();
    c.register(&s, Some(&provisioned)).await;
    c.begin("1");
    let first = c.message(c.package1(), true);
    let a = c.post(&first).await;
    c.accepted(&a);
    let (pool, imei) = (s.running.state().db.pool().clone(), c.imei.clone());
    let state = || async {
        let row: (i64, Vec<u8>) = sqlx::query_as(
            "SELECT s.version, s.state FROM dm_sessions s JOIN devices d \
             ON d.id = s.device_id WHERE d.imei = $1",
        )
        .bind(imei.clone())
        .fetch_one(&pool)
        .await
        .unwrap();
        row
    };
    let before = (state().await, device_nonce(&s, &c.imei).await);
    // Not package 1, yet MsgID 1 again (the Gets' answers under the old number).
    c.msg_id = 0;
    let mut body = vec![c.header_status(&a, Dm::AUTHENTICATION_ACCEPTED, None)];
    body.extend(c.answers(&a));
    let reused = c.message(body.clone(), false);
    assert_eq!(c.post(&reused).await.http, StatusCode::BAD_REQUEST);
    let after = (state().await, device_nonce(&s, &c.imei).await);
    assert!(before == after, "nothing of a refused message is written");
    // The session goes on with MsgID 2.
    c.msg_id = 1;
    let next = c.message(body, false);
    let b = c.post(&next).await;
    assert_eq!(b.http, StatusCode::OK);
    assert_eq!(b.status(0).code, Dm::OK);
    s.stop().await;
}
both!(out_of_order_messages_never_run, super::out_of_order);
