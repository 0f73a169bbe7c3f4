//! PostgreSQL for the command-line tests: a throw-away database per test, on the server the
//! machine runs (`SIMFOTA_POSTGRES_URL`). Shared by the test files that include it.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

/// Whether a missing outside tool fails the test (the default) rather than skipping it.
pub fn require_external() -> bool {
    std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1")
}

/// Runs `sql` on the admin URL; `false` when PostgreSQL is unreachable (a failure, or a skip
/// under SIMFOTA_SKIP_EXTERNAL=1).
pub fn pg(admin_url: &str, sql: &str) -> bool {
    use sqlx::Connection as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let done: Result<(), String> = rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(admin_url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(sql)
            .execute(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    });
    match done {
        Ok(()) => true,
        Err(why) => {
            if require_external() {
                panic!("PostgreSQL required (set SIMFOTA_SKIP_EXTERNAL=1 to skip instead): {why}");
            }
            println!("skipped: PostgreSQL missing ({why})");
            false
        }
    }
}

/// `url` with its database name replaced.
pub fn with_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base.rfind('/').unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Drops the database `name` when it goes out of scope.
pub struct DropDb {
    pub admin: String,
    pub name: String,
}

impl Drop for DropDb {
    fn drop(&mut self) {
        let _ = pg(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}
