//! SyncML DM 1.2 conformance of the `/dm` endpoint, against clients scripted message by
//! message from the specifications' rules rather than by the project's own client session:
//! one that re-sends only the commands answered 401/407, one that keeps its SessionID across
//! sessions, one that answers the server's credentials with 212 (or 200) and a new Chal, one
//! that sends every message twice (in turn, and at the same time), one that uses the DS MIME
//! types, one that splits its package over several messages or sends a large object in chunks,
//! one that announces a small MaxMsgSize, one that aborts. XML and WBXML, `syncml:auth-md5` and
//! HMAC; every test runs on SQLite and PostgreSQL.
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
    /// The reply's Content-Type.
    content_type: String,
    body: Vec<u8>,
    hmac: Option<String>,
    msg: Option<Message>,
}

impl Answer {
    fn msg(&self) -> &Message {
        self.msg.as_ref().unwrap_or_else(|| {
            panic!(
                "a SyncML reply, not HTTP {}: {}",
                self.http,
                String::from_utf8_lossy(&self.body)
            )
        })
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
    /// The MaxMsgSize our SyncHdr announces (RepPro §5.2 SyncHdr Meta), if any.
    max_msg: Option<u64>,
    /// The last message built, as sent.
    last_sent: Option<(Vec<u8>, Option<String>)>,
    /// The Content-Type we send, when not the DM one of our encoding.
    content_type: Option<&'static str>,
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
            max_msg: None,
            last_sent: None,
            content_type: None,
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

    /// A registered device whose account holds a provisioned nonce (DM Sec §5.4), so its
    /// first message is accepted without a challenge.
    async fn provisioned(s: &Server, n: u32, auth: AuthScheme, encoding: Encoding) -> Script {
        let mut c = Script::new(s, n, auth, encoding);
        c.nonce = Nonce(format!("provisioned-{n}").into_bytes());
        c.register(s, Some(&c.nonce.clone())).await;
        c
    }

    /// A new session: `session_id`, MsgIDs from 1 (RepPro §5.1 MsgID).
    fn begin(&mut self, session_id: &str) {
        self.session_id = session_id.into();
        self.msg_id = 0;
    }

    /// The next message: `body` numbered from CmdID 1, with our credentials when `cred`
    /// (in the SyncHdr for MD5, DM Pro §9.3; for HMAC the header of every message, DM Sec
    /// §5.5).
    fn message(&mut self, body: Vec<Command>, cred: bool) -> (Vec<u8>, Option<String>) {
        self.message_part(body, cred, true)
    }

    /// The next message, `last` when it ends our package (`Final`, DM Pro §8.2).
    fn message_part(
        &mut self,
        mut body: Vec<Command>,
        cred: bool,
        last: bool,
    ) -> (Vec<u8>, Option<String>) {
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
            meta: self.max_msg.map(|m| Meta {
                max_msg_size: Some(m),
                ..Meta::default()
            }),
        };
        let msg = Message {
            header,
            body,
            is_final: last,
        };
        let bytes = self.encoding.encode(&msg).unwrap();
        let hmac = (self.auth == AuthScheme::Hmac)
            .then(|| auth::hmac_header(&self.creds(), &self.nonce, &bytes));
        self.last_sent = Some((bytes.clone(), hmac.clone()));
        (bytes, hmac)
    }

    async fn post(&self, (body, hmac): &(Vec<u8>, Option<String>)) -> Answer {
        let mut req = http::Client::new()
            .post(format!("{}/dm", self.url))
            .header(
                "content-type",
                self.content_type
                    .unwrap_or_else(|| self.encoding.content_type()),
            )
            .body(body.clone());
        if let Some(h) = hmac {
            req = req.header("x-syncml-hmac", h);
        }
        let resp = req.send().await.unwrap();
        let http = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
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
            content_type,
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
    /// (RepPro §10), which the server takes as "not there" and moves on; an Alert (1222 "next
    /// message") is taken, 200.
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
                    code: if matches!(c, Command::Alert(_)) {
                        Dm::OK
                    } else {
                        Dm::NOT_FOUND
                    },
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
    async fn finish(&mut self, answer: Answer) -> Answer {
        self.finish_with(answer, false, |_| {}).await
    }

    /// [`Self::finish`], `accepted` when the server's credentials were answered already;
    /// `seen` looks at every answer on the way. A server message without `Final` is answered
    /// with its statuses and Alert 1222 in a message that is not final either (DM Pro §8.2:
    /// the client asks for the rest of the server's package).
    async fn finish_with(
        &mut self,
        mut answer: Answer,
        mut accepted: bool,
        mut seen: impl FnMut(&Answer),
    ) -> Answer {
        for _ in 0..40 {
            seen(&answer);
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
            let more = !answer.msg().is_final;
            if more {
                body.push(alert(AlertCode::NEXT_MESSAGE));
            }
            let cred = self.auth == AuthScheme::Hmac;
            let out = self.message_part(body, cred, !more);
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

/// An Alert without items.
fn alert(code: AlertCode) -> Command {
    Command::Alert(Alert {
        cmd_id: CmdId(0),
        no_resp: false,
        cred: None,
        code,
        correlator: None,
        items: Vec::new(),
    })
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

/// Failed authentications recorded for the device (aggregated rows count their attempts).
const AUTH_EVENTS: &str = "SELECT CAST(COALESCE(SUM(e.count), 0) AS BIGINT) \
                           FROM security_events e JOIN devices d ON d.id = e.device_id \
                           WHERE d.imei = $1 AND e.kind = 'device_auth'";
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

/// The device's open sessions (an ended one keeps its row a few minutes, marked).
const OPEN_SESSIONS: &str = "SELECT COUNT(*) FROM dm_sessions s JOIN devices d \
                             ON d.id = s.device_id WHERE d.imei = $1 AND s.ended_ms IS NULL";

/// A client labelling its messages with the DS MIME types (`application/vnd.syncml+xml`,
/// `+wbxml`, with or without parameters), as older DM clients do: the session completes, and
/// every reply comes under the type the client used (the one it is known to parse).
async fn ds_mime_types(env: Env) {
    let s = env.start().await;
    let cases = [
        (AuthScheme::Md5, Encoding::Xml, "application/vnd.syncml+xml"),
        (
            AuthScheme::Md5,
            Encoding::Wbxml,
            "application/vnd.syncml+wbxml",
        ),
        (
            AuthScheme::Hmac,
            Encoding::Wbxml,
            "application/vnd.syncml+wbxml; charset=UTF-8",
        ),
    ];
    for (n, (scheme, encoding, ds)) in cases.into_iter().enumerate() {
        let mut c = Script::provisioned(&s, 700 + n as u32, scheme, encoding).await;
        c.content_type = Some(ds);
        c.begin("1");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        assert_eq!(a.http, StatusCode::OK, "{ds}");
        c.accepted(&a);
        let base = ds.split(';').next().unwrap();
        let mut replies = 0;
        let last = c
            .finish_with(a, false, |a| {
                replies += 1;
                assert_eq!(a.content_type, base, "reply {replies}");
            })
            .await;
        assert!(last.ends());
        assert!(replies > 1, "the session went past its first reply");
        assert_eq!(count(&s, SEEN, &c.imei).await, 1);
    }
    s.stop().await;
}
both!(ds_mime_types_are_answered_in_kind, super::ds_mime_types);

/// A package 1 sent as two messages (DM Pro §8.2): the first, without `Final`, is answered
/// with its statuses and Alert 1222 ("next message") and nothing else; the server's own
/// commands come once the package is complete, and the second message's Replace is applied.
async fn client_package_in_two_messages(env: Env) {
    let s = env.start().await;
    for (n, (scheme, encoding)) in VARIANTS.into_iter().enumerate() {
        let mut c = Script::provisioned(&s, 800 + n as u32, scheme, encoding).await;
        c.begin("1");
        let mut p1 = c.package1();
        let replace = p1.pop().unwrap();
        let out = c.message_part(p1, true, false);
        let a = c.post(&out).await;
        c.accepted(&a);
        assert_eq!(a.status(1).code, Dm::OK, "the Alert 1201");
        assert!(!a.msg().is_final, "the server's package goes on");
        let cmds = a.commands();
        assert!(
            matches!(cmds.as_slice(), [Command::Alert(x)] if x.code == AlertCode::NEXT_MESSAGE),
            "{scheme:?} {encoding:?}: only Alert 1222 before the package is complete: {cmds:?}"
        );
        // The rest of package 1, final, after the statuses for the server's header and Alert.
        let mut body = vec![c.header_status(&a, Dm::AUTHENTICATION_ACCEPTED, None)];
        body.extend(c.answers(&a));
        let replace_id = body.len() as u32 + 1;
        body.push(replace);
        let out = c.message(body, scheme == AuthScheme::Hmac);
        let b = c.post(&out).await;
        assert_eq!(
            b.status(replace_id).code,
            Dm::OK,
            "the Replace of ./DevInfo"
        );
        assert!(
            b.commands().iter().any(|c| matches!(c, Command::Get(_))),
            "the session's Gets follow: {:?}",
            b.msg()
        );
        assert!(c.finish_with(b, true, |_| {}).await.ends());
        let model = "SELECT COUNT(*) FROM devices WHERE imei = $1 AND model = 'EX-1'";
        assert_eq!(count(&s, model, &c.imei).await, 1, "DevInfo from message 2");
    }
    s.stop().await;
}
both!(
    a_package_in_two_messages_gets_alert_1222,
    super::client_package_in_two_messages
);

/// A large object from the client (DM Pro §7.1.3): a Replace whose item goes in two chunks,
/// the first with `MoreData` and the total `Size`, in messages of their own. The first chunk
/// is answered 213 (buffered) with Alert 1222, the last 200 once the object is whole; a last
/// chunk that leaves the object short of its `Size` is answered 424.
async fn large_object(env: Env) {
    let s = env.start().await;
    let value: String = (0..2500)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for (n, (scheme, encoding)) in VARIANTS.into_iter().enumerate() {
        for short in [false, true] {
            let id = 900 + 10 * n as u32 + u32::from(short);
            let mut c = Script::provisioned(&s, id, scheme, encoding).await;
            let chunk = |data: &str, more: bool, size: Option<u64>| {
                Command::Replace(ItemCommand {
                    cmd_id: CmdId(0),
                    no_resp: false,
                    cred: None,
                    meta: None,
                    items: vec![Item {
                        target: Some(Location::new("./DevInfo/Ext/Notes")),
                        meta: Some(Meta {
                            format: Some("chr".into()),
                            size,
                            ..Meta::default()
                        }),
                        data: Some(Data::text(data)),
                        more_data: more,
                        ..Item::default()
                    }],
                })
            };
            c.begin("1");
            let mut p1 = c.package1();
            p1.push(chunk(&value[..1500], true, Some(value.len() as u64)));
            let out = c.message_part(p1, true, false);
            let a = c.post(&out).await;
            c.accepted(&a);
            assert_eq!(a.status(3).code, Dm::CHUNKED_ITEM_ACCEPTED, "first chunk");
            assert!(
                a.commands()
                    .iter()
                    .any(|c| matches!(c, Command::Alert(x) if x.code == AlertCode::NEXT_MESSAGE))
            );
            let rest = if short {
                &value[1500..2499]
            } else {
                &value[1500..]
            };
            let mut body = vec![c.header_status(&a, Dm::AUTHENTICATION_ACCEPTED, None)];
            body.extend(c.answers(&a));
            let last_id = body.len() as u32 + 1;
            body.push(chunk(rest, false, None));
            let out = c.message(body, scheme == AuthScheme::Hmac);
            let b = c.post(&out).await;
            let want = if short { Dm::SIZE_MISMATCH } else { Dm::OK };
            assert_eq!(
                b.status(last_id).code,
                want,
                "{scheme:?} {encoding:?} short: {short}"
            );
            assert!(c.finish_with(b, true, |_| {}).await.ends());
        }
    }
    s.stop().await;
}
both!(large_objects_are_reassembled, super::large_object);

/// A client announcing a small MaxMsgSize (RepPro §5.2 SyncHdr Meta; DM Pro §8.2): no reply
/// is larger, the server's package is split over messages without `Final`, continued on the
/// client's Alert 1222, and the session asks the very commands it asks an unconstrained
/// client.
async fn small_max_msg_size(env: Env) {
    let s = env.start().await;
    // What the server asks in a session, and the largest reply, with no limit announced.
    let session = |max_msg: Option<u64>, n: u32| {
        let s = &s;
        async move {
            let mut c = Script::provisioned(s, n, AuthScheme::Md5, Encoding::Xml).await;
            c.max_msg = max_msg;
            c.begin("1");
            let out = c.message(c.package1(), true);
            let a = c.post(&out).await;
            c.accepted(&a);
            let (mut asked, mut largest, mut split) = (Vec::new(), 0, 0);
            c.finish_with(a, false, |a| {
                largest = largest.max(a.body.len());
                split += usize::from(!a.msg().is_final);
                for cmd in a.commands() {
                    let targets: Vec<String> = cmd
                        .items()
                        .iter()
                        .filter_map(|i| i.target.as_ref().map(|t| t.uri.clone()))
                        .collect();
                    asked.push(format!("{} {}", cmd.name(), targets.join(",")));
                }
            })
            .await;
            asked.retain(|a| !a.starts_with("Alert"));
            asked.sort();
            (asked, largest, split)
        }
    };
    let (free, free_largest, free_split) = session(None, 1000).await;
    assert_eq!(free_split, 0);
    // Room for the SyncHdr with the server's credentials, the statuses and a command or two
    // in XML; the server floors any announced size at 1024 bytes.
    const MAX: u64 = 1500;
    assert!(
        free_largest > MAX as usize,
        "the unconstrained session's largest reply ({free_largest} bytes) must exceed {MAX} for this test to split anything"
    );
    let (small, small_largest, split) = session(Some(MAX), 1001).await;
    assert!(small_largest <= MAX as usize, "{small_largest} > {MAX}");
    assert!(split > 0, "the server's package was split");
    assert_eq!(small, free, "the same requests, packed smaller");
    s.stop().await;
}
both!(
    a_small_max_msg_size_splits_the_package,
    super::small_max_msg_size
);

/// Alert 1223 from the client (DM Pro §8.7, session abort): the server answers with the
/// statuses it owes, final, with no command of its own, and the session is over.
async fn client_abort(env: Env) {
    let s = env.start().await;
    for (n, (scheme, encoding)) in VARIANTS.into_iter().enumerate() {
        let mut c = Script::provisioned(&s, 1100 + n as u32, scheme, encoding).await;
        c.begin("1");
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        c.accepted(&a);
        assert!(!a.commands().is_empty());
        assert_eq!(
            count(&s, OPEN_SESSIONS, &c.imei).await,
            1,
            "the session is stored"
        );
        let body = vec![
            c.header_status(&a, Dm::AUTHENTICATION_ACCEPTED, None),
            alert(AlertCode::SESSION_ABORT),
        ];
        let out = c.message(body, scheme == AuthScheme::Hmac);
        let b = c.post(&out).await;
        assert_eq!(b.http, StatusCode::OK);
        assert!(b.ends(), "{scheme:?} {encoding:?}: {:?}", b.msg());
        assert_eq!(b.status(0).code, Dm::OK);
        assert_eq!(
            count(&s, OPEN_SESSIONS, &c.imei).await,
            0,
            "the session is over"
        );
    }
    s.stop().await;
}
both!(alert_1223_ends_the_session, super::client_abort);

/// Messages of one session sent at the same time (a client retrying before its first try was
/// answered, or one that does not wait): copies of one message all get its one reply and it
/// runs once; a different message under the same MsgID, racing it, is refused as out of order
/// (400); copies of the message that ended the session get the reply that ended it. Nothing
/// is answered 503.
async fn concurrent(env: Env) {
    let s = env.start().await;
    let mut c = Script::provisioned(&s, 1200, AuthScheme::Md5, Encoding::Xml).await;
    let (url, ct) = (format!("{}/dm", c.url), c.encoding.content_type());
    let race = |outs: Vec<(Vec<u8>, Option<String>)>| {
        let url = url.clone();
        async move {
            let tasks: Vec<_> = outs
                .into_iter()
                .map(|(body, _)| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        let r = http::Client::new()
                            .post(url)
                            .header("content-type", ct)
                            .body(body.clone())
                            .send()
                            .await
                            .unwrap();
                        (body, r.status(), r.bytes().await.unwrap().to_vec())
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.unwrap());
            }
            answers
        }
    };
    c.begin("1");
    let first = c.message(c.package1(), true);
    let answers = race(vec![first.clone(); 6]).await;
    for (_, http, body) in &answers {
        assert_eq!(*http, StatusCode::OK, "{}", String::from_utf8_lossy(body));
        assert_eq!(body, &answers[0].2, "one reply for every copy");
    }
    let version = "SELECT MAX(s.version) FROM dm_sessions s JOIN devices d \
                   ON d.id = s.device_id WHERE d.imei = $1";
    assert_eq!(count(&s, version, &c.imei).await, 1, "package 1 ran once");
    let a = c.post(&first).await;
    c.accepted(&a);

    // Two different messages numbered 2, each sent three times, all at once. Neither ends
    // the client's package (no Final: the server answers with Alert 1222, DM Pro §8.2), so the
    // session stays open and a late copy finds the winner's reply stored.
    let mut body = vec![c.header_status(&a, Dm::AUTHENTICATION_ACCEPTED, None)];
    body.extend(c.answers(&a));
    let one = c.message_part(body.clone(), false, false);
    c.msg_id -= 1;
    body[0] = c.header_status(&a, Dm::OK, None);
    let other = c.message_part(body, false, false);
    assert_ne!(one.0, other.0);
    let answers = race(vec![
        one.clone(),
        other.clone(),
        one.clone(),
        other.clone(),
        one.clone(),
        other,
    ])
    .await;
    let winner = answers
        .iter()
        .find(|(_, http, _)| *http == StatusCode::OK)
        .map(|(sent, _, reply)| (sent.clone(), reply.clone()))
        .expect("one of the racing messages is handled");
    for (sent, http, reply) in &answers {
        if *sent == winner.0 {
            assert_eq!(*http, StatusCode::OK);
            assert_eq!(reply, &winner.1, "one reply for every copy");
        } else {
            assert_eq!(
                *http,
                StatusCode::BAD_REQUEST,
                "the loser is out of order: {}",
                String::from_utf8_lossy(reply)
            );
        }
    }
    assert_eq!(count(&s, version, &c.imei).await, 2, "message 2 ran once");

    // The session runs to its end. Its last message sent again, at once and after the end,
    // gets the last reply (the ended session's row keeps it a few minutes); a message after
    // the end is refused; and nothing challenges the device: its nonce stays (a new session
    // would have moved it).
    let answer = c.post(&(winner.0, None)).await;
    assert_eq!(answer.body, winner.1);
    let end = c.finish_with(answer, true, |_| {}).await;
    let nonce = device_nonce(&s, &c.imei).await;
    let last = c.last_sent.clone().unwrap();
    for (_, http, reply) in race(vec![last.clone(); 4]).await {
        assert_eq!(http, StatusCode::OK);
        assert_eq!(reply, end.body, "the reply that ended the session");
    }
    let after = c.message(vec![c.header_status(&end, Dm::OK, None)], false);
    let refused = c.post(&after).await;
    assert_eq!(refused.http, StatusCode::BAD_REQUEST);
    let text = String::from_utf8_lossy(&refused.body);
    assert!(text.contains("ended"), "{text}");
    // A message of a session the server does not hold (swept, or never started) that is not
    // a package 1: refused too, nothing challenged.
    c.begin("77");
    c.msg_id = 1;
    let stray = c.message(vec![c.header_status(&end, Dm::OK, None)], false);
    let refused = c.post(&stray).await;
    assert_eq!(refused.http, StatusCode::BAD_REQUEST);
    let text = String::from_utf8_lossy(&refused.body);
    assert!(text.contains("not open"), "{text}");
    assert_eq!(device_nonce(&s, &c.imei).await, nonce);
    assert_eq!(count(&s, AUTH_EVENTS, &c.imei).await, 0);
    s.stop().await;
}
both!(concurrent_messages_of_a_session, super::concurrent);

/// A flood of unauthenticated messages (a registered device with a wrong password under a new
/// SessionID each time, and unknown devices under new DevIds) writes a bounded amount: each
/// kind of security event is one row per source and hour, counting every attempt, and the
/// device holds one unauthenticated session.
async fn unauthenticated_flood(env: Env) {
    let s = env.start().await;
    const N: u32 = 150;
    let mut c = Script::new(&s, 1300, AuthScheme::Md5, Encoding::Xml);
    c.register(&s, None).await;
    c.password = "not-the-password".into();
    for i in 0..N {
        c.begin(&format!("flood-{i}"));
        let out = c.message(c.package1(), true);
        let a = c.post(&out).await;
        assert_eq!(a.status(0).code, Dm::INVALID_CREDENTIALS);
    }
    for i in 0..N {
        let mut stranger = Script::new(&s, 20_000 + i, AuthScheme::Md5, Encoding::Wbxml);
        stranger.begin("1");
        let out = stranger.message(stranger.package1(), true);
        let a = stranger.post(&out).await;
        assert_eq!(a.status(0).code, Dm::INVALID_CREDENTIALS);
    }
    let pool = s.running.state().db.pool().clone();
    let events = |kind: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT COUNT(*), CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM security_events WHERE kind = $1",
            )
            .bind(kind)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        events("device_auth").await,
        (1, i64::from(N)),
        "one row counts them all"
    );
    // Unknown devices are recorded off the request path: wait for the last count.
    let mut unknown = (0, 0);
    for _ in 0..100 {
        unknown = events("unknown_device").await;
        if unknown.1 == i64::from(N) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        unknown,
        (1, i64::from(N)),
        "one source (the peer address), every attempt"
    );
    assert_eq!(
        count(&s, OPEN_SESSIONS, &c.imei).await,
        1,
        "one unauthenticated session"
    );
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dm_sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "unknown devices leave no session");
    s.stop().await;
}
both!(
    an_unauthenticated_flood_writes_a_bounded_amount,
    super::unauthenticated_flood
);
