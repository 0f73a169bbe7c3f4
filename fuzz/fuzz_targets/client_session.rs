//! The client session machine on arbitrary server messages, executing them on a DM tree with
//! the standard objects and a FUMO object. Messages are separated by 0xFF in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simfota_syncml::auth::{AuthScheme, Credentials, Nonce};
use simfota_syncml::fumo::Fumo;
use simfota_syncml::session::{ClientConfig, ClientSession};
use simfota_syncml::tree::{DevDetail, DevInfo, DmTree};
use simfota_syncml::{AlertCode, Encoding, Limits, NodeUri};

fn tree() -> Option<DmTree> {
    let info = DevInfo {
        dev_id: "IMEI:1".into(),
        manufacturer: "m".into(),
        model: "p".into(),
        lang: "en".into(),
    };
    let detail = DevDetail {
        dev_type: "t".into(),
        oem: "o".into(),
        fw_version: "1".into(),
        sw_version: "1".into(),
        hw_version: "1".into(),
    };
    let mut t = DmTree::with_standard_objects(&info, &detail).ok()?;
    t.mount_fumo(
        "./FUMO",
        "Get=*&Replace=*&Exec=*&Add=*&Delete=*",
        Fumo::new(NodeUri::parse("./FUMO").ok()?),
    )
    .ok()?;
    t.put_interior("./V", "Get=*&Replace=*&Exec=*&Add=*&Delete=*")
        .ok()?;
    Some(t)
}

#[global_allocator]
static ALLOC: simfota_fuzz::BoundedAlloc = simfota_fuzz::BoundedAlloc::new(16 << 20);

fuzz_target!(|data: &[u8]| {
    let Some(mut t) = tree() else { return };
    let config = ClientConfig {
        client_id: "IMEI:1".into(),
        server_id: "srv".into(),
        server_uri: "https://dm.example/".into(),
        client_credentials: Credentials::new("dev", "pw"),
        server_credentials: Credentials::new("srv", "spw"),
        auth: AuthScheme::Basic,
        // Crafted inputs need not authenticate: the command paths are what is fuzzed.
        require_server_auth: false,
        encoding: Encoding::Wbxml,
        limits: Limits {
            max_message_bytes: 8192,
            max_object_bytes: 4096,
            ..Limits::default()
        },
    };
    let mut c = ClientSession::new(config, 4711, Nonce::default(), Nonce::default());
    if c.start(AlertCode::CLIENT_INITIATED_MGMT, &mut t).is_err() {
        return;
    }
    for msg in data.split(|b| *b == 0xFF).take(8) {
        let _ = c.receive(msg, None, &mut t);
    }
});
