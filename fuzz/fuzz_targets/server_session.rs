//! The server session machine on arbitrary client messages: the input is split at 0xFF
//! into several messages, each received, answered, and the state saved and restored as JSON
//! between them, as the DM server does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simfota_syncml::auth::{AuthScheme, Credentials, Nonce};
use simfota_syncml::session::{ServerConfig, ServerSession};
use simfota_syncml::{Encoding, Limits, NodeUri};

#[global_allocator]
static ALLOC: simfota_fuzz::BoundedAlloc = simfota_fuzz::BoundedAlloc::new(16 << 20);

fuzz_target!(|data: &[u8]| {
    let config = ServerConfig {
        server_id: "srv".into(),
        server_uri: "https://dm.example/".into(),
        resp_uri: None,
        client_credentials: Credentials::new("dev", "pw"),
        server_credentials: Credentials::new("srv", "spw"),
        // Basic auth lets crafted inputs get past authentication and into the commands.
        auth: AuthScheme::Basic,
        encoding: Encoding::Xml,
        limits: Limits {
            max_message_bytes: 8192,
            max_object_bytes: 4096,
            ..Limits::default()
        },
    };
    let mut stored = match serde_json::to_string(&ServerSession::new(
        config,
        Nonce::default(),
        Nonce::default(),
    )) {
        Ok(s) => s,
        Err(_) => return,
    };
    for (i, msg) in data.split(|b| *b == 0xFF).enumerate().take(8) {
        let Ok(mut s) = serde_json::from_str::<ServerSession>(&stored) else {
            panic!("state does not restore")
        };
        if s.receive(msg, None, Nonce(vec![i as u8; 4])).is_ok() {
            if let Ok(uri) = NodeUri::parse("./FUMO/State") {
                s.get(&uri);
            }
            let _ = s.reply();
        }
        stored = match serde_json::to_string(&s) {
            Ok(j) => j,
            Err(_) => panic!("state does not serialize"),
        };
    }
});
