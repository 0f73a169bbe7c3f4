//! Property tests: arbitrary bytes never panic the decoders or the session machines, and
//! arbitrary messages survive model -> XML -> model and model -> WBXML -> model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers may fail loudly

use proptest::prelude::*;
use simfota_syncml::auth::{AuthScheme, Credentials, Nonce};
use simfota_syncml::model::{
    Alert, Chal, CmdId, Command, Container, Cred, Data, Exec, Item, ItemCommand, Location, Message,
    Meta, MsgId, Results, Status, SyncHdr,
};
use simfota_syncml::notification::UnverifiedNotification;
use simfota_syncml::session::{ServerConfig, ServerSession};
use simfota_syncml::wbxml::{DataForm, PublicIdForm, WbxmlOptions, WbxmlVersion};
use simfota_syncml::{AlertCode, Encoding, Limits, StatusCode, wbxml, xml};

fn word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9./:_-][A-Za-z0-9./:_ -]{0,14}[A-Za-z0-9./:_-]|[A-Za-z0-9]"
}

/// Data text: anything XML carries, including markup characters and spaces.
fn data() -> BoxedStrategy<Data> {
    "[ -~\u{e9}\u{4e2d}\n\t]{0,40}".prop_map(Data::text).boxed()
}

fn meta() -> BoxedStrategy<Meta> {
    (
        proptest::option::of(word()),
        proptest::option::of(word()),
        proptest::option::of(word()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(word()),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(word(), 0..2),
    )
        .prop_map(
            |(format, mime_type, mark, size, next_nonce, max_msg_size, emi)| Meta {
                format,
                mime_type,
                mark,
                size: size.map(u64::from),
                version: None,
                next_nonce,
                max_msg_size: max_msg_size.map(u64::from),
                max_obj_size: None,
                emi,
            },
        )
        .boxed()
}

fn location() -> BoxedStrategy<Location> {
    (word(), proptest::option::of(word()))
        .prop_map(|(uri, name)| Location { uri, name })
        .boxed()
}

fn item() -> BoxedStrategy<Item> {
    (
        proptest::option::of(location()),
        proptest::option::of(location()),
        proptest::option::of(meta()),
        proptest::option::of(data()),
        any::<bool>(),
    )
        .prop_map(|(target, source, meta, data, more_data)| Item {
            target,
            source,
            meta,
            data,
            more_data,
        })
        .boxed()
}

fn cred() -> BoxedStrategy<Cred> {
    (meta(), word())
        .prop_map(|(meta, data)| Cred { meta, data })
        .boxed()
}

fn item_command() -> BoxedStrategy<ItemCommand> {
    (
        any::<bool>(),
        proptest::option::of(cred()),
        proptest::option::of(meta()),
        proptest::collection::vec(item(), 1..3),
    )
        .prop_map(|(no_resp, cred, meta, items)| ItemCommand {
            cmd_id: CmdId(0),
            no_resp,
            cred,
            meta,
            items,
        })
        .boxed()
}

fn leaf_command() -> BoxedStrategy<Command> {
    prop_oneof![
        item_command().prop_map(Command::Add),
        item_command().prop_map(Command::Replace),
        item_command().prop_map(Command::Get),
        item_command().prop_map(Command::Delete),
        item_command().prop_map(Command::Copy),
        (
            any::<u16>(),
            proptest::option::of(word()),
            proptest::collection::vec(item(), 0..2)
        )
            .prop_map(|(code, correlator, items)| {
                Command::Alert(Alert {
                    cmd_id: CmdId(0),
                    no_resp: false,
                    cred: None,
                    code: AlertCode(code),
                    correlator,
                    items,
                })
            }),
        (
            proptest::option::of(meta()),
            proptest::option::of(word()),
            item()
        )
            .prop_map(|(meta, correlator, item)| {
                Command::Exec(Exec {
                    cmd_id: CmdId(0),
                    no_resp: false,
                    cred: None,
                    meta,
                    correlator,
                    item,
                })
            }),
        (
            any::<u16>(),
            any::<u32>(),
            word(),
            proptest::collection::vec(word(), 0..2),
            proptest::option::of(meta())
        )
            .prop_map(|(code, cmd_ref, cmd, refs, chal)| Command::Status(Status {
                cmd_id: CmdId(0),
                msg_ref: Some(MsgId(1)),
                cmd_ref: CmdId(cmd_ref),
                cmd,
                target_refs: refs.clone(),
                source_refs: refs,
                cred: None,
                chal: chal.map(|meta| Chal { meta }),
                code: StatusCode(code),
                items: vec![],
            })),
        (any::<u32>(), proptest::collection::vec(item(), 1..3)).prop_map(|(cmd_ref, items)| {
            Command::Results(Results {
                cmd_id: CmdId(0),
                msg_ref: None,
                cmd_ref: CmdId(cmd_ref),
                meta: None,
                target_refs: vec![],
                source_refs: vec![],
                items,
            })
        }),
    ]
    .boxed()
}

fn command() -> BoxedStrategy<Command> {
    leaf_command()
        .prop_recursive(2, 8, 4, |inner| {
            (
                any::<bool>(),
                proptest::collection::vec(
                    inner.prop_filter("no Status/Results nested", |c| {
                        !matches!(c, Command::Status(_) | Command::Results(_))
                    }),
                    1..4,
                ),
            )
                .prop_map(|(atomic, commands)| {
                    let k = Container {
                        cmd_id: CmdId(0),
                        no_resp: false,
                        meta: None,
                        commands,
                    };
                    if atomic {
                        Command::Atomic(k)
                    } else {
                        Command::Sequence(k)
                    }
                })
        })
        .boxed()
}

fn renumber(cmds: &mut [Command], next: &mut u32) {
    for c in cmds {
        c.set_cmd_id(CmdId(*next));
        *next += 1;
        if let Command::Atomic(k) | Command::Sequence(k) = c {
            renumber(&mut k.commands, next);
        }
    }
}

fn message() -> BoxedStrategy<Message> {
    (
        word(),
        any::<u32>(),
        location(),
        location(),
        proptest::option::of(word()),
        proptest::option::of(cred()),
        proptest::option::of(meta()),
        proptest::collection::vec(command(), 0..5),
        any::<bool>(),
    )
        .prop_map(
            |(session_id, msg_id, target, source, resp_uri, cred, meta, mut body, is_final)| {
                renumber(&mut body, &mut 1);
                Message {
                    header: SyncHdr {
                        ver_dtd: "1.2".into(),
                        ver_proto: "DM/1.2".into(),
                        session_id,
                        msg_id: MsgId(msg_id),
                        target,
                        source,
                        resp_uri,
                        no_resp: false,
                        cred,
                        meta,
                    },
                    body,
                    is_final,
                }
            },
        )
        .boxed()
}

fn server() -> ServerSession {
    ServerSession::new(
        ServerConfig {
            server_id: "srv".into(),
            server_uri: "https://dm.example/".into(),
            resp_uri: None,
            client_credentials: Credentials::new("dev", "pw"),
            server_credentials: Credentials::new("srv", "spw"),
            auth: AuthScheme::Md5,
            encoding: Encoding::Wbxml,
            limits: Limits::default(),
        },
        Nonce(b"n".to_vec()),
        Nonce(b"s".to_vec()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits::default();
        let _ = xml::decode(&bytes, &limits);
        let _ = wbxml::decode(&bytes, &limits);
        let _ = UnverifiedNotification::parse(&bytes);
        let mut s = server();
        if s.receive(&bytes, None, Nonce::default()).is_ok() {
            let _ = s.reply();
        }
    }

    #[test]
    fn wbxml_like_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        // A valid SyncML 1.2 header in front, so the body tokens get exercised.
        let mut bytes = vec![0x02, 0xA4, 0x01, 0x6A, 0x00, 0x6D];
        bytes.extend_from_slice(&tail);
        let _ = wbxml::decode(&bytes, &Limits::default());
    }

    #[test]
    fn xml_round_trip(m in message()) {
        let x = xml::encode(&m).unwrap();
        prop_assert_eq!(xml::decode(&x, &Limits::default()).unwrap(), m);
    }

    #[test]
    fn wbxml_round_trip(m in message(), table in any::<bool>(), opaque in any::<bool>()) {
        let opts = WbxmlOptions {
            version: WbxmlVersion::V1_2,
            public_id: if table { PublicIdForm::StringTable } else { PublicIdForm::WellKnown },
            data: if opaque { DataForm::Opaque } else { DataForm::InlineWhenText },
        };
        let w = wbxml::encode_with(&m, &opts).unwrap();
        prop_assert_eq!(wbxml::decode(&w, &Limits::default()).unwrap(), m);
    }

    #[test]
    fn binary_data_round_trips_through_wbxml(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut m = xml::decode(include_bytes!("corpus/09_delete.xml"), &Limits::default()).unwrap();
        m.body.push(Command::Replace(ItemCommand {
            cmd_id: CmdId(7), no_resp: false, cred: None, meta: None,
            items: vec![Item { data: Some(Data(bytes)), ..Item::target("./X") }],
        }));
        let w = wbxml::encode(&m).unwrap();
        prop_assert_eq!(wbxml::decode(&w, &Limits::default()).unwrap(), m);
    }
}
