//! Secrets at rest: the data folder and every file holding a secret are the owner's only, and
//! a start that fails leaves nothing behind. (DM passwords stored as digests: tests/dm.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::http::StatusCode;
use common::{Env, Server, imei};
use serde_json::json;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn register(s: &Server, n: u32, password: &str, server_password: &str) {
    let r = s
        .post("/api/v1/devices")
        .json(&json!({"imei": imei(n), "username": format!("dev-{n}"),
                      "password": password, "server_password": server_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_and_its_secret_files_are_the_owners_only() {
    let Some(env) = Env::new(common::Engine::Sqlite).await else {
        return;
    };
    let s = env.start().await;
    register(&s, 1, "pw", "spw").await;
    let data = env.path("data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("packages")), 0o700);
    for file in [
        "simfota.db",
        "simfota.db-wal",
        "simfota.db-shm",
        "server-key.pem",
        "api-token",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    s.stop().await;
    // A database an older server left readable to others is narrowed at the next start.
    for file in ["simfota.db", "simfota.db-wal", "simfota.db-shm"] {
        let path = data.join(file);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let s = env.start().await;
    assert_eq!(mode(&data.join("simfota.db")), 0o600);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_writes_nothing() {
    let Some(env) = Env::new(common::Engine::Sqlite).await else {
        return;
    };
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = env.config("data-port");
    config.listen = taken.local_addr().unwrap();
    let e = simfota_server::start(config)
        .await
        .err()
        .expect("the port is taken");
    assert!(e.to_string().contains("listen"), "{e}");
    assert!(!env.path("data-port").exists(), "nothing written");
    // The database does not answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = env.config("data-db");
    config.database = Some(format!("postgres://postgres@127.0.0.1:{port}/none"));
    config.db_acquire_timeout = std::time::Duration::from_millis(500);
    let e = simfota_server::start(config)
        .await
        .err()
        .expect("the database does not answer");
    // The address and the cause are named, not only a pool that timed out.
    let said = e.to_string();
    assert!(
        said.starts_with(&format!(
            "cannot reach the database at postgres://postgres@127.0.0.1:{port}/none: "
        )) && said.contains("refused"),
        "{said}"
    );
    assert!(!env.path("data-db").exists(), "nothing written");
}
