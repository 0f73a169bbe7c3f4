//! Decode and encode throughput of a typical server package 2 (FUMO delivery): SyncHdr with
//! MD5 credentials, the Status of the client's header, a Replace of the delivery token under
//! `./FUMO/Ext`, a Replace of the package URL, an Exec of DownloadAndUpdate with a Correlator
//! and a Get of three nodes. Run: `cargo bench -p simfota-syncml --bench codec`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // benchmark set-up; criterion_group! makes an undocumented fn

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use simfota_syncml::auth::{self, AuthScheme, Credentials, Nonce};
use simfota_syncml::model::{
    CmdId, Command, Data, Exec, Item, ItemCommand, Location, Message, Meta, MsgId, Status, SyncHdr,
};
use simfota_syncml::{Limits, StatusCode, wbxml, xml};
use std::hint::black_box;

fn typical_server_package() -> Message {
    let cred = auth::make_cred(
        AuthScheme::Md5,
        &Credentials::new("dm.simfota.example", "secret"),
        &Nonce(b"nonce".to_vec()),
    );
    let header = SyncHdr {
        ver_dtd: "1.2".into(),
        ver_proto: "DM/1.2".into(),
        session_id: "4711".into(),
        msg_id: MsgId(1),
        target: Location::new("IMEI:490154203237518"),
        source: Location::new("https://dm.simfota.example/dm"),
        resp_uri: Some("https://dm.simfota.example/dm?s=4711".into()),
        no_resp: false,
        cred,
        meta: Some(Meta {
            max_msg_size: Some(65536),
            ..Meta::default()
        }),
    };
    let replace = |id, uri: &str, format: &str, data: String| {
        Command::Replace(ItemCommand {
            cmd_id: CmdId(id),
            no_resp: false,
            cred: None,
            meta: None,
            items: vec![Item {
                meta: Some(Meta::format(format)),
                data: Some(Data::text(data)),
                ..Item::target(uri)
            }],
        })
    };
    // A CWT delivery token is about 300 bytes; b64 makes it 400 characters.
    let token: String = (0..400)
        .map(|i| {
            char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i % 64])
        })
        .collect();
    let body = vec![
        Command::Status(Status {
            cmd_id: CmdId(1),
            msg_ref: Some(MsgId(1)),
            cmd_ref: CmdId(0),
            cmd: "SyncHdr".into(),
            target_refs: vec!["https://dm.simfota.example/dm".into()],
            source_refs: vec!["IMEI:490154203237518".into()],
            cred: None,
            chal: Some(auth::make_chal(
                AuthScheme::Md5,
                &Nonce(b"next-nonce".to_vec()),
            )),
            code: StatusCode::AUTHENTICATION_ACCEPTED,
            items: vec![],
        }),
        replace(2, "./FUMO/Ext/Token", "b64", token),
        replace(
            3,
            "./FUMO/DownloadAndUpdate/PkgURL",
            "chr",
            "https://pkg.simfota.example/acme/p1/2.4.1.suit".into(),
        ),
        Command::Exec(Exec {
            cmd_id: CmdId(4),
            no_resp: false,
            cred: None,
            meta: None,
            correlator: Some("upd-2026-11-29-0001".into()),
            item: Item::target("./FUMO/DownloadAndUpdate"),
        }),
        Command::Get(ItemCommand {
            cmd_id: CmdId(5),
            no_resp: false,
            cred: None,
            meta: None,
            items: ["./FUMO/State", "./DevDetail/FwV", "./SIMFOTA/Nonce"]
                .iter()
                .map(|u| Item::target(*u))
                .collect(),
        }),
    ];
    Message {
        header,
        body,
        is_final: true,
    }
}

fn bench(c: &mut Criterion) {
    let msg = typical_server_package();
    let limits = Limits::default();
    let xml_bytes = xml::encode(&msg).unwrap();
    let wbxml_bytes = wbxml::encode(&msg).unwrap();
    assert_eq!(xml::decode(&xml_bytes, &limits).unwrap(), msg);
    assert_eq!(wbxml::decode(&wbxml_bytes, &limits).unwrap(), msg);

    let mut g = c.benchmark_group("server_package_xml");
    g.throughput(Throughput::Bytes(xml_bytes.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| xml::decode(black_box(&xml_bytes), &limits).unwrap())
    });
    g.bench_function("encode", |b| {
        b.iter(|| xml::encode(black_box(&msg)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("server_package_wbxml");
    g.throughput(Throughput::Bytes(wbxml_bytes.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| wbxml::decode(black_box(&wbxml_bytes), &limits).unwrap())
    });
    g.bench_function("encode", |b| {
        b.iter(|| wbxml::encode(black_box(&msg)).unwrap())
    });
    g.finish();
    eprintln!(
        "message sizes: XML {} bytes, WBXML {} bytes",
        xml_bytes.len(),
        wbxml_bytes.len()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench
}
criterion_main!(benches);
