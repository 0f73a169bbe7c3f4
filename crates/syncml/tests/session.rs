//! Client and server sessions talking to each other, with the server session stored as JSON
//! and restored between every message (as a stateless DM server does).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers may fail loudly

use simfota_syncml::auth::{AuthScheme, Credentials, Nonce};
use simfota_syncml::codes::fumo_alert_type;
use simfota_syncml::fumo::Fumo;
use simfota_syncml::model::{Command, Data};
use simfota_syncml::session::{
    ClientConfig, ClientEvent, ClientSession, CommandHandle, Outgoing, ServerConfig, ServerEvent,
    ServerSession, SessionError,
};
use simfota_syncml::tree::{DevDetail, DevInfo, DmTree, NodeValue};
use simfota_syncml::{AlertCode, Encoding, FumoResult, FumoState, Limits, NodeUri, StatusCode};

const SERVER: &str = "dm.simfota.example";

fn u(s: &str) -> NodeUri {
    NodeUri::parse(s).unwrap()
}

fn tree() -> DmTree {
    let info = DevInfo {
        dev_id: "IMEI:490154203237518".into(),
        manufacturer: "Acme".into(),
        model: "P1".into(),
        lang: "en".into(),
    };
    let detail = DevDetail {
        dev_type: "phone".into(),
        oem: "Acme".into(),
        fw_version: "1.0".into(),
        sw_version: "1.0".into(),
        hw_version: "A".into(),
    };
    let mut t = DmTree::with_standard_objects(&info, &detail).unwrap();
    t.mount_fumo(
        "./FUMO",
        &format!("Get=*&Replace={SERVER}&Exec={SERVER}&Add={SERVER}"),
        Fumo::new(u("./FUMO")),
    )
    .unwrap();
    t.put_interior(
        "./Vendor",
        &format!("Get={SERVER}&Add={SERVER}&Replace={SERVER}&Delete={SERVER}"),
    )
    .unwrap();
    t.put_leaf("./Vendor/Big", "", NodeValue::chr("")).unwrap();
    t
}

fn client_config(auth: AuthScheme, encoding: Encoding, password: &str) -> ClientConfig {
    ClientConfig {
        client_id: "IMEI:490154203237518".into(),
        server_id: SERVER.into(),
        server_uri: "https://dm.simfota.example/dm".into(),
        client_credentials: Credentials::new("dev1", password),
        server_credentials: Credentials::new(SERVER, "server-secret"),
        auth,
        require_server_auth: true,
        encoding,
        limits: Limits::default(),
    }
}

fn server_config(auth: AuthScheme, encoding: Encoding) -> ServerConfig {
    ServerConfig {
        server_id: SERVER.into(),
        server_uri: "https://dm.simfota.example/dm".into(),
        resp_uri: Some("https://dm.simfota.example/dm?s=1".into()),
        client_credentials: Credentials::new("dev1", "device-secret"),
        server_credentials: Credentials::new(SERVER, "server-secret"),
        auth,
        encoding,
        limits: Limits::default(),
    }
}

/// One HTTP round trip through a stored-and-restored server session.
fn round(
    stored: &mut String,
    req: &Outgoing,
    nonce: u8,
    plan: impl FnOnce(&mut ServerSession, &[ServerEvent]),
) -> (Outgoing, Vec<ServerEvent>) {
    let mut server: ServerSession = serde_json::from_str(stored).unwrap();
    let events = server
        .receive(&req.body, req.hmac.as_deref(), Nonce(vec![nonce; 8]))
        .unwrap();
    plan(&mut server, &events);
    let reply = server.reply().unwrap();
    *stored = serde_json::to_string(&server).unwrap();
    (reply, events)
}

#[test]
fn fumo_session_over_both_encodings_and_all_auth_schemes() {
    for encoding in [Encoding::Xml, Encoding::Wbxml] {
        for auth in [AuthScheme::Md5, AuthScheme::Basic, AuthScheme::Hmac] {
            let mut t = tree();
            let mut client = ClientSession::new(
                client_config(auth, encoding, "device-secret"),
                7,
                Nonce(b"cn".to_vec()),
                Nonce(b"sn".to_vec()),
            );
            let mut stored = serde_json::to_string(&ServerSession::new(
                server_config(auth, encoding),
                Nonce(b"cn".to_vec()),
                Nonce(b"sn".to_vec()),
            ))
            .unwrap();

            let pkg1 = client
                .start(AlertCode::SERVER_INITIATED_MGMT, &mut t)
                .unwrap();
            assert_eq!(pkg1.content_type, encoding.content_type());
            let mut handles = (CommandHandle(0), CommandHandle(0));
            let (pkg2, events) = round(&mut stored, &pkg1, 1, |s, _| {
                s.replace(
                    &u("./FUMO/DownloadAndUpdate/PkgURL"),
                    &NodeValue::chr("https://pkg.example/p1.suit"),
                );
                s.add(
                    &u("./FUMO/Ext/Token"),
                    Some(&NodeValue::bin(vec![0xD2, 0x84, 0x00])),
                );
                handles.0 = s.exec(&u("./FUMO/DownloadAndUpdate"), Some("corr-1"), None);
                handles.1 = s.get(&u("./DevDetail/FwV"));
            });
            assert!(events.iter().any(|e| matches!(e, ServerEvent::Authenticated { client_id } if client_id == "IMEI:490154203237518")));
            assert!(events.iter().any(|e| matches!(e, ServerEvent::ClientAlert(a) if a.code == AlertCode::SERVER_INITIATED_MGMT)));
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, ServerEvent::DeviceData(items) if items.len() == 5))
            );
            assert_eq!(pkg2.uri, "IMEI:490154203237518");

            let step = client
                .receive(&pkg2.body, pkg2.hmac.as_deref(), &mut t)
                .unwrap();
            assert!(
                step.events.contains(&ClientEvent::Authenticated),
                "{auth:?} {:?}",
                step.events
            );
            assert!(step.events.contains(&ClientEvent::ServerAuthenticated));
            assert!(step.events.contains(&ClientEvent::ExecAccepted {
                uri: u("./FUMO/DownloadAndUpdate"),
                correlator: Some("corr-1".into())
            }));
            let pkg3 = step.reply.unwrap();
            assert_eq!(
                pkg3.uri, "https://dm.simfota.example/dm?s=1",
                "RespURI is followed"
            );

            let (pkg4, events) = round(&mut stored, &pkg3, 2, |_, _| {});
            assert!(events.contains(&ServerEvent::Status {
                handle: handles.0,
                cmd: "Exec".into(),
                code: StatusCode::ACCEPTED_FOR_PROCESSING,
                refs: vec!["./FUMO/DownloadAndUpdate".into()]
            }));
            let results = events.iter().find_map(|e| match e {
                ServerEvent::Results { handle, items } if *handle == Some(handles.1) => {
                    Some(items.clone())
                }
                _ => None,
            });
            assert_eq!(results.unwrap()[0].data, Some(Data::text("1.0")));
            let step = client
                .receive(&pkg4.body, pkg4.hmac.as_deref(), &mut t)
                .unwrap();
            assert!(step.reply.is_none());
            assert!(step.events.contains(&ClientEvent::Finished));
            let server: ServerSession = serde_json::from_str(&stored).unwrap();
            assert!(server.is_finished());

            // The device did the work; a second session carries the Generic Alert.
            let fumo = t.fumo_mut(&u("./FUMO")).unwrap();
            assert_eq!(fumo.state, FumoState::DOWNLOAD_PROGRESSING);
            assert_eq!(fumo.ext.get("Token"), Some(&vec![0xD2, 0x84, 0x00]));
            assert_eq!(
                fumo.job().unwrap().pkg_url.as_deref(),
                Some("https://pkg.example/p1.suit")
            );
            let alert = fumo.finish(FumoResult::SUCCESSFUL).unwrap();
            let next_nonce = client.client_nonce().clone();
            let mut client2 = ClientSession::new(
                client_config(auth, encoding, "device-secret"),
                8,
                next_nonce.clone(),
                Nonce(b"sn".to_vec()),
            );
            client2.queue_alert(alert);
            let mut stored2 = serde_json::to_string(&ServerSession::new(
                server_config(auth, encoding),
                next_nonce,
                Nonce(b"sn".to_vec()),
            ))
            .unwrap();
            let p1 = client2
                .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
                .unwrap();
            let (p2, events) = round(&mut stored2, &p1, 3, |_, _| {});
            let generic = events
                .iter()
                .find_map(|e| match e {
                    ServerEvent::ClientAlert(a) if a.code == AlertCode::GENERIC_ALERT => {
                        Some(a.clone())
                    }
                    _ => None,
                })
                .expect("generic alert reaches the server");
            assert_eq!(generic.correlator.as_deref(), Some("corr-1"));
            assert_eq!(
                generic.items[0].meta.as_ref().unwrap().mime_type.as_deref(),
                Some(fumo_alert_type::DOWNLOAD_AND_UPDATE)
            );
            assert_eq!(generic.items[0].data, Some(Data::text("200")));
            let step = client2
                .receive(&p2.body, p2.hmac.as_deref(), &mut t)
                .unwrap();
            assert!(step.events.iter().any(|e| matches!(e, ClientEvent::Status { cmd, code: StatusCode::OK, correlator: Some(c), .. } if cmd == "Alert" && c == "corr-1")));
            assert!(step.events.contains(&ClientEvent::Finished));
        }
    }
}

#[test]
fn md5_challenge_then_retry_succeeds() {
    let mut t = tree();
    // The client holds a stale nonce: the server challenges with a fresh one (401 + Chal).
    let mut client = ClientSession::new(
        client_config(AuthScheme::Md5, Encoding::Xml, "device-secret"),
        1,
        Nonce(b"stale".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let mut stored = serde_json::to_string(&ServerSession::new(
        server_config(AuthScheme::Md5, Encoding::Xml),
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    ))
    .unwrap();
    let p1 = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
        .unwrap();
    let (p2, events) = round(&mut stored, &p1, 9, |s, _| {
        s.get(&u("./DevInfo/Mod"));
    });
    assert!(events.contains(&ServerEvent::AuthenticationRejected(
        StatusCode::INVALID_CREDENTIALS
    )));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ServerEvent::ClientAlert(_))),
        "unauthenticated commands are not processed"
    );
    let step = client.receive(&p2.body, None, &mut t).unwrap();
    assert!(
        step.events
            .contains(&ClientEvent::NextNonce(Nonce(vec![9; 8])))
    );
    let p3 = step.reply.unwrap();
    let (p4, events) = round(&mut stored, &p3, 10, |_, _| {});
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ServerEvent::Authenticated { .. }))
    );
    assert!(events.iter().any(
        |e| matches!(e, ServerEvent::ClientAlert(a) if a.code == AlertCode::CLIENT_INITIATED_MGMT)
    ));
    // The Get queued during the failed round is sent now.
    let step = client.receive(&p4.body, None, &mut t).unwrap();
    assert!(step.events.contains(&ClientEvent::Authenticated));
    let p5 = step.reply.unwrap();
    let (_, events) = round(&mut stored, &p5, 11, |_, _| {});
    assert!(events.iter().any(|e| matches!(e, ServerEvent::Results { items, .. } if items[0].data == Some(Data::text("P1")))));
}

#[test]
fn wrong_password_ends_in_refusal_after_the_limit() {
    let mut t = tree();
    let mut client = ClientSession::new(
        client_config(AuthScheme::Md5, Encoding::Wbxml, "WRONG"),
        1,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let mut stored = serde_json::to_string(&ServerSession::new(
        server_config(AuthScheme::Md5, Encoding::Wbxml),
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    ))
    .unwrap();
    let mut req = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
        .unwrap();
    let mut rejections = 0;
    loop {
        let (reply, events) = round(&mut stored, &req, 5, |_, _| {});
        rejections += events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    ServerEvent::AuthenticationRejected(StatusCode::INVALID_CREDENTIALS)
                )
            })
            .count();
        let server: ServerSession = serde_json::from_str(&stored).unwrap();
        if server.is_over() {
            assert!(!server.is_finished());
            break;
        }
        match client.receive(&reply.body, None, &mut t) {
            Ok(step) => req = step.reply.unwrap(),
            Err(SessionError::AuthenticationFailed(_)) => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(rejections, Limits::default().max_auth_attempts as usize);
}

#[test]
fn client_refuses_an_unauthenticated_server() {
    let mut t = tree();
    let mut client = ClientSession::new(
        client_config(AuthScheme::Md5, Encoding::Xml, "device-secret"),
        1,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let mut cfg = server_config(AuthScheme::Md5, Encoding::Xml);
    cfg.server_credentials.password = "impostor".into();
    let mut stored = serde_json::to_string(&ServerSession::new(
        cfg,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    ))
    .unwrap();
    let p1 = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
        .unwrap();
    let (p2, _) = round(&mut stored, &p1, 1, |s, _| {
        s.replace(&u("./Vendor/Big"), &NodeValue::chr("owned"));
    });
    let step = client.receive(&p2.body, None, &mut t).unwrap();
    assert!(step.events.contains(&ClientEvent::ServerRejected(
        StatusCode::INVALID_CREDENTIALS
    )));
    assert_eq!(
        t.get(&u("./Vendor/Big"), SERVER).unwrap().data,
        b"",
        "nothing executed"
    );
    let (_, events) = round(&mut stored, &step.reply.unwrap(), 2, |_, _| {});
    assert!(events.contains(&ServerEvent::ServerCredentialsRejected(
        StatusCode::INVALID_CREDENTIALS
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        ServerEvent::Status {
            code: StatusCode::NOT_EXECUTED,
            ..
        }
    )));
}

/// Drives a whole session where the server wants `plan` done; returns the server's events.
fn run_session(
    limits_client: Limits,
    limits_server: Limits,
    encoding: Encoding,
    t: &mut DmTree,
    plan: impl Fn(&mut ServerSession, u32),
) -> (Vec<ServerEvent>, usize) {
    let mut ccfg = client_config(AuthScheme::Md5, encoding, "device-secret");
    ccfg.limits = limits_client;
    let mut scfg = server_config(AuthScheme::Md5, encoding);
    scfg.limits = limits_server;
    let mut client = ClientSession::new(ccfg, 3, Nonce(b"cn".to_vec()), Nonce(b"sn".to_vec()));
    let mut stored = serde_json::to_string(&ServerSession::new(
        scfg,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    ))
    .unwrap();
    let mut req = client.start(AlertCode::CLIENT_INITIATED_MGMT, t).unwrap();
    let mut all = Vec::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 200, "session does not converge");
        let (reply, events) = round(&mut stored, &req, rounds as u8, |s, _| plan(s, rounds));
        assert!(req.body.len() <= limits_server.max_message_bytes);
        assert!(
            reply.body.len() <= limits_client.max_message_bytes,
            "{} > {}",
            reply.body.len(),
            limits_client.max_message_bytes
        );
        all.extend(events);
        let step = client
            .receive(&reply.body, reply.hmac.as_deref(), t)
            .unwrap();
        match step.reply {
            Some(r) => req = r,
            None => break,
        }
    }
    (all, rounds as usize)
}

#[test]
fn large_objects_travel_in_chunks_both_ways_within_max_msg_size() {
    let small = Limits {
        max_message_bytes: 2048,
        ..Limits::default()
    };
    let big_value: String = (0..6000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for encoding in [Encoding::Xml, Encoding::Wbxml] {
        let mut t = tree();
        let value = big_value.clone();
        let (events, rounds) = run_session(small, small, encoding, &mut t, move |s, round| {
            if round == 1 {
                s.replace(&u("./Vendor/Big"), &NodeValue::chr(value.clone()));
                s.get(&u("./Vendor/Big"));
            }
        });
        assert!(rounds > 4, "chunks need several messages ({rounds})");
        assert_eq!(
            t.get(&u("./Vendor/Big"), SERVER).unwrap().data,
            big_value.as_bytes()
        );
        let got = events.iter().find_map(|e| match e {
            ServerEvent::Results { items, .. } => items[0].data.clone(),
            _ => None,
        });
        assert_eq!(
            got,
            Some(Data::text(big_value.clone())),
            "Results reassembled on the server"
        );
        assert!(events.iter().any(|e| matches!(e, ServerEvent::Status { cmd, code: StatusCode::CHUNKED_ITEM_ACCEPTED, .. } if cmd == "Replace")));
    }
}

#[test]
fn many_commands_are_split_over_messages() {
    let small = Limits {
        max_message_bytes: 1500,
        ..Limits::default()
    };
    let mut t = tree();
    let (events, rounds) = run_session(small, small, Encoding::Xml, &mut t, |s, round| {
        if round == 1 {
            for i in 0..30 {
                s.add(&u(&format!("./Vendor/N{i}")), Some(&NodeValue::int(i)));
            }
        }
    });
    assert!(rounds > 3);
    let oks = events
        .iter()
        .filter(
            |e| matches!(e, ServerEvent::Status { cmd, code: StatusCode::OK, .. } if cmd == "Add"),
        )
        .count();
    assert_eq!(oks, 30);
    assert_eq!(t.get(&u("./Vendor/N29"), SERVER).unwrap().data, b"29");
}

#[test]
fn oversized_object_is_refused_with_413() {
    let client_limits = Limits {
        max_message_bytes: 2048,
        max_object_bytes: 3000,
        ..Limits::default()
    };
    let mut t = tree();
    let (events, _) = run_session(
        client_limits,
        Limits::default(),
        Encoding::Wbxml,
        &mut t,
        |s, round| {
            if round == 1 {
                s.replace(&u("./Vendor/Big"), &NodeValue::chr("x".repeat(5000)));
            }
        },
    );
    let refusals = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ServerEvent::Status {
                    code: StatusCode::REQUEST_ENTITY_TOO_LARGE,
                    ..
                }
            )
        })
        .count();
    // The first chunk announces 5000 bytes: refused, and the server sends no further chunk.
    assert_eq!(refusals, 1);
    assert!(!events.iter().any(|e| matches!(
        e,
        ServerEvent::Status {
            code: StatusCode::CHUNKED_ITEM_ACCEPTED,
            ..
        }
    )));
    assert_eq!(t.get(&u("./Vendor/Big"), SERVER).unwrap().data, b"");
}

#[test]
fn atomic_rolls_back_and_acl_refusals_are_reported() {
    let mut t = tree();
    let (events, _) = run_session(
        Limits::default(),
        Limits::default(),
        Encoding::Xml,
        &mut t,
        |s, round| {
            if round == 1 {
                let add = |uri: &str| {
                    Command::Add(simfota_syncml::model::ItemCommand {
                        cmd_id: simfota_syncml::model::CmdId(0),
                        no_resp: false,
                        cred: None,
                        meta: None,
                        items: vec![simfota_syncml::model::Item {
                            data: Some(Data::text("1")),
                            ..simfota_syncml::model::Item::target(uri)
                        }],
                    })
                };
                s.send_command(Command::Atomic(simfota_syncml::model::Container {
                    cmd_id: simfota_syncml::model::CmdId(0),
                    no_resp: false,
                    meta: None,
                    commands: vec![add("./Vendor/A1"), add("./DevInfo/Forbidden")],
                }));
                s.replace(&u("./DevInfo/Mod"), &NodeValue::chr("hacked"));
                s.get(&u("./Nowhere"));
            }
        },
    );
    assert!(events.iter().any(|e| matches!(e, ServerEvent::Status { cmd, code: StatusCode::ATOMIC_FAILED, .. } if cmd == "Atomic")));
    assert!(t.get(&u("./Vendor/A1"), SERVER).is_err(), "rolled back");
    assert!(events.iter().any(|e| matches!(e, ServerEvent::Status { cmd, code: StatusCode::PERMISSION_DENIED, .. } if cmd == "Replace")));
    assert!(events.iter().any(|e| matches!(e, ServerEvent::Status { cmd, code: StatusCode::NOT_FOUND, .. } if cmd == "Get")));
}

#[test]
fn server_abort_ends_both_sides() {
    let mut t = tree();
    let mut client = ClientSession::new(
        client_config(AuthScheme::Md5, Encoding::Xml, "device-secret"),
        1,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let mut stored = serde_json::to_string(&ServerSession::new(
        server_config(AuthScheme::Md5, Encoding::Xml),
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    ))
    .unwrap();
    let p1 = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
        .unwrap();
    let (p2, _) = round(&mut stored, &p1, 1, |s, _| s.abort());
    let server: ServerSession = serde_json::from_str(&stored).unwrap();
    assert!(server.is_over() && !server.is_finished());
    let step = client.receive(&p2.body, None, &mut t).unwrap();
    assert_eq!(step.events.last(), Some(&ClientEvent::Aborted));
    assert!(step.reply.is_none());
    assert_eq!(
        client.receive(&p2.body, None, &mut t),
        Err(SessionError::Ended)
    );
}

#[test]
fn garbage_and_foreign_sessions_are_refused_without_panic() {
    let mut t = tree();
    let mut client = ClientSession::new(
        client_config(AuthScheme::Md5, Encoding::Xml, "device-secret"),
        1,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let p1 = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
        .unwrap();
    let mut server = ServerSession::new(
        server_config(AuthScheme::Md5, Encoding::Xml),
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let err = server
        .receive(b"<SyncML><oops", None, Nonce::default())
        .unwrap_err();
    assert!(matches!(err, SessionError::Decode(ref e) if e.status() == StatusCode::BAD_REQUEST));
    server.receive(&p1.body, None, Nonce::default()).unwrap();
    assert!(matches!(
        server.receive(&p1.body, None, Nonce::default()),
        Err(SessionError::OutOfOrder(_))
    ));
    server.get(&u("./DevInfo/Mod"));
    server.reply().unwrap();
    let other = String::from_utf8(p1.body.clone())
        .unwrap()
        .replace("<SessionID>1</SessionID>", "<SessionID>2</SessionID>");
    assert!(matches!(
        server.receive(other.as_bytes(), None, Nonce::default()),
        Err(SessionError::WrongSession { .. })
    ));
}

#[test]
fn malformed_body_gets_its_status_on_the_header() {
    let mut t = tree();
    let mut client = ClientSession::new(
        client_config(AuthScheme::Md5, Encoding::Xml, "device-secret"),
        1,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let p1 = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
        .unwrap();
    let text = String::from_utf8(p1.body).unwrap();
    for (broken, code) in [
        (
            text.replace("<Final/>", "<LocURI>x</LocURI><Final/>"),
            StatusCode::BAD_REQUEST,
        ),
        (
            text.replace("<CmdID>2</CmdID>", "<CmdID>1</CmdID>"),
            StatusCode::BAD_REQUEST,
        ),
        (
            text.replace("<Data>1201</Data>", ""),
            StatusCode::INCOMPLETE_COMMAND,
        ),
    ] {
        let mut server = ServerSession::new(
            server_config(AuthScheme::Md5, Encoding::Xml),
            Nonce(b"cn".to_vec()),
            Nonce(b"sn".to_vec()),
        );
        let events = server
            .receive(broken.as_bytes(), None, Nonce::default())
            .unwrap();
        assert!(matches!(events.as_slice(), [ServerEvent::Refused(e)] if e.status() == code));
        let reply = server.reply().unwrap();
        assert!(server.is_over());
        let m = simfota_syncml::xml::decode(&reply.body, &Limits::default()).unwrap();
        assert!(
            matches!(m.body.as_slice(), [Command::Status(s)] if s.code == code && s.cmd == "SyncHdr")
        );
    }
    // An element no DTD defines stops the reader before the header is known: the transport
    // answers with the error's status (HTTP 400).
    let mut server = ServerSession::new(
        server_config(AuthScheme::Md5, Encoding::Xml),
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let e = server
        .receive(
            text.replace("<Final/>", "<Bogus/><Final/>").as_bytes(),
            None,
            Nonce::default(),
        )
        .unwrap_err();
    assert!(matches!(e, SessionError::Decode(ref d) if d.status() == StatusCode::BAD_REQUEST));
}

/// A client for feeding the hand-written server messages of the corpus (SessionID 4711).
fn corpus_client(t: &mut DmTree) -> ClientSession {
    let mut cfg = client_config(AuthScheme::Md5, Encoding::Xml, "device-secret");
    cfg.require_server_auth = false;
    let mut c = ClientSession::new(cfg, 4711, Nonce(b"cn".to_vec()), Nonce(b"sn".to_vec()));
    c.start(AlertCode::CLIENT_INITIATED_MGMT, t).unwrap();
    c
}

fn corpus_file(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus")
            .join(name),
    )
    .unwrap()
}

fn statuses(reply: &Outgoing) -> Vec<(String, u16)> {
    let m = simfota_syncml::xml::decode(&reply.body, &Limits::default()).unwrap();
    m.body
        .iter()
        .filter_map(|c| match c {
            Command::Status(s) => Some((s.cmd.clone(), s.code.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn client_executes_corpus_commands() {
    let mut t = tree();
    t.put_interior("./Vendor/Old", "").unwrap();
    t.put_interior("./Vendor/Backup", "").unwrap();
    let mut c = corpus_client(&mut t);
    // Copy ./DevDetail/FwV to ./Vendor/Backup/FwV: Get on the source is allowed to all.
    let step = c
        .receive(&corpus_file("10_copy.xml"), None, &mut t)
        .unwrap();
    assert_eq!(
        statuses(step.reply.as_ref().unwrap()),
        [("SyncHdr".into(), 200), ("Copy".into(), 200)]
    );
    assert_eq!(
        t.get(&u("./Vendor/Backup/FwV"), SERVER).unwrap().data,
        b"1.0"
    );

    let mut c = corpus_client(&mut t);
    // Sequence (NoResp: no Status for it) of Add, Atomic(Delete), Get.
    let step = c
        .receive(&corpus_file("12_sequence_nested_atomic.xml"), None, &mut t)
        .unwrap();
    let reply = step.reply.unwrap();
    assert_eq!(
        statuses(&reply),
        [
            ("SyncHdr".into(), 200),
            ("Add".into(), 200),
            ("Atomic".into(), 200),
            ("Delete".into(), 200),
            ("Get".into(), 200)
        ]
    );
    assert!(t.get(&u("./Vendor/Old"), SERVER).is_err());
    let m = simfota_syncml::xml::decode(&reply.body, &Limits::default()).unwrap();
    assert!(
        m.body
            .iter()
            .any(|c| matches!(c, Command::Results(r) if r.items[0].data == Some(Data::text("a"))))
    );

    let mut c = corpus_client(&mut t);
    // Delete under ./FUMO: the mount point's ACL grants no Delete, so 425 before the handler.
    let step = c
        .receive(&corpus_file("09_delete.xml"), None, &mut t)
        .unwrap();
    assert_eq!(
        statuses(step.reply.as_ref().unwrap())[1],
        ("Delete".into(), 425)
    );

    let mut c = corpus_client(&mut t);
    // Display alert: 200 and the text for the UI; the first chunk of a large object: 213.
    let step = c
        .receive(&corpus_file("18_display_alert.xml"), None, &mut t)
        .unwrap();
    assert!(step.events.contains(&ClientEvent::Display(
        "MINDT=10\nA firmware update for your phone is ready.".into()
    )));
    let mut c = corpus_client(&mut t);
    let step = c
        .receive(
            &corpus_file("16_large_object_first_chunk.xml"),
            None,
            &mut t,
        )
        .unwrap();
    let reply = step.reply.unwrap();
    assert_eq!(statuses(&reply)[1], ("Replace".into(), 213));
    // The server's package goes on: the client asks for the next message.
    let m = simfota_syncml::xml::decode(&reply.body, &Limits::default()).unwrap();
    assert!(
        m.body
            .iter()
            .any(|c| matches!(c, Command::Alert(a) if a.code == AlertCode::NEXT_MESSAGE))
    );
    assert!(!m.is_final);
    // A new command instead of the next chunk: Alert 1225 for the interrupted object.
    let step = c
        .receive(&corpus_file("09_delete.xml"), None, &mut t)
        .unwrap();
    let m = simfota_syncml::xml::decode(&step.reply.unwrap().body, &Limits::default()).unwrap();
    assert!(m.body.iter().any(|c| matches!(c, Command::Alert(a) if a.code == AlertCode::NO_END_OF_DATA && a.items[0].target.as_ref().unwrap().uri == "./Vendor/Big")));
}

#[test]
fn hmac_protects_the_exact_body() {
    let mut t = tree();
    let mut client = ClientSession::new(
        client_config(AuthScheme::Hmac, Encoding::Wbxml, "device-secret"),
        2,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let p1 = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
        .unwrap();
    assert!(
        p1.hmac
            .as_deref()
            .unwrap()
            .starts_with("algorithm=MD5, username=\"dev1\", mac=")
    );
    let mut tampered = p1.body.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x01;
    let mut server = ServerSession::new(
        server_config(AuthScheme::Hmac, Encoding::Wbxml),
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let events = server
        .receive(&tampered, p1.hmac.as_deref(), Nonce(vec![1; 8]))
        .unwrap_or_default();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ServerEvent::Authenticated { .. }))
    );
    let mut server = ServerSession::new(
        server_config(AuthScheme::Hmac, Encoding::Wbxml),
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let events = server.receive(&p1.body, None, Nonce(vec![1; 8])).unwrap();
    assert!(events.contains(&ServerEvent::AuthenticationRejected(
        StatusCode::MISSING_CREDENTIALS
    )));
}

#[test]
fn overlong_uri_is_414() {
    let mut t = tree();
    let mut c = corpus_client(&mut t);
    let long = format!("./Vendor/{}", "x".repeat(2000));
    let msg = String::from_utf8(corpus_file("09_delete.xml"))
        .unwrap()
        .replace("./FUMO/Ext/Token", &long);
    let step = c.receive(msg.as_bytes(), None, &mut t).unwrap();
    assert_eq!(
        statuses(step.reply.as_ref().unwrap())[1],
        ("Delete".into(), 414)
    );
}

#[test]
fn client_abort_ends_both_sides() {
    let mut t = tree();
    let mut client = ClientSession::new(
        client_config(AuthScheme::Md5, Encoding::Wbxml, "device-secret"),
        1,
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    );
    let mut stored = serde_json::to_string(&ServerSession::new(
        server_config(AuthScheme::Md5, Encoding::Wbxml),
        Nonce(b"cn".to_vec()),
        Nonce(b"sn".to_vec()),
    ))
    .unwrap();
    let p1 = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut t)
        .unwrap();
    let (p2, _) = round(&mut stored, &p1, 1, |s, _| {
        s.get(&u("./DevInfo/Mod"));
    });
    client.receive(&p2.body, None, &mut t).unwrap();
    let bye = client.abort().unwrap();
    assert!(client.is_over());
    assert_eq!(client.abort(), Err(SessionError::Ended));
    let (_, events) = round(&mut stored, &bye, 2, |_, _| {});
    assert!(events.contains(&ServerEvent::Aborted));
    let server: ServerSession = serde_json::from_str(&stored).unwrap();
    assert!(server.is_over() && !server.is_finished());
}

/// A session stored by the server before the session state was one phase enum (the layout
/// with `reply_due`, `auth_failed_now`, `refused`, ... flags) does not load: the server gets
/// a `serde` error for that message, never a half-read session, and the device starts a new
/// session.
#[test]
fn a_session_stored_in_the_boolean_layout_is_refused_cleanly() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/stored/server-session-boolean-layout.json"
    );
    let json = std::fs::read_to_string(path).unwrap();
    let old: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(old["reply_due"], serde_json::Value::Bool(false));
    let err = serde_json::from_str::<ServerSession>(&json).unwrap_err();
    assert!(err.is_data(), "{err}");
}
