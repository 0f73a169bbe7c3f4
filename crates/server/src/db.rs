//! Storage: one code path over SQLite and PostgreSQL.
//!
//! The server talks to the database through sqlx's `Any` driver: every query is written once,
//! in the SQL both engines accept (`$1` placeholders, `RETURNING`, `ON CONFLICT`), and values are
//! limited to what `Any` carries across both (`i64`, `String`, `Vec<u8>`, `Option` of those;
//! times are Unix milliseconds). The alternative — a trait with two implementations — would
//! duplicate every query and let the two drift; the only engine-specific text left is the DDL,
//! kept in two migration folders with the same tables and columns (a test checks that).
//!
//! SQLite (the default, a file in the data folder) runs in WAL mode so readers do not block the
//! writer. PostgreSQL is for several stateless replicas sharing one database: no state that
//! matters lives in a process (DM sessions included).

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::error::{Result, ServerError};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// How SQLite makes a commit durable (`PRAGMA synchronous`, in WAL mode).
///
/// `Normal` (the default): a commit is written to the WAL without waiting for the disk; the
/// WAL is synced when it is checkpointed into the database. The database stays consistent
/// through a crash or power loss, but the last commits before a power loss may be lost (not
/// before a process crash: they are in the operating system's cache). For this server that
/// means a device repeats what it sent then: a result alert is repeated until it is answered,
/// a delivery whose record was lost is offered again, card log entries are read again. `Full`
/// syncs the WAL at every commit: nothing acknowledged is lost, at the cost of one fsync per
/// commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// Sync at checkpoints.
    #[default]
    Normal,
    /// Sync at every commit.
    Full,
}

impl SqliteSync {
    fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "PRAGMA synchronous = NORMAL",
            Self::Full => "PRAGMA synchronous = FULL",
        }
    }
}

/// The connection pool and its engine.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// The VALUES list of a multi-row INSERT: `rows` rows of `cols` placeholders numbered in
/// order, `($1, …, $cols), ($cols+1, …), …`, for binding row after row.
pub fn values_list(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 1..=cols {
            if c > 1 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(r * cols + c).to_string());
        }
        out.push(')');
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Creates `dir` (and its parents) if missing, readable by the owner only (0700); an existing
/// folder keeps its mode.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| ServerError::io("cannot create the data folder", dir, e))
}

/// Makes the SQLite database `file` owner-only (0600): created so when missing, narrowed when
/// an older server left it readable to others. SQLite gives its `-wal` and `-shm` files the
/// mode of the database file.
fn protect_sqlite_file(file: &Path) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(file)
        .map_err(|e| ServerError::io("cannot open the database", file, e))?;
    #[cfg(unix)]
    for path in [
        file.to_path_buf(),
        sidecar(file, "-wal"),
        sidecar(file, "-shm"),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ServerError::io("cannot restrict the database file", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn sidecar(file: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

impl Db {
    /// Connects to `url` (or to `simfota.db` in `data_dir` when `url` is `None`), creating the
    /// SQLite file if needed, and applies the migrations.
    pub async fn open(
        url: Option<&str>,
        data_dir: &Path,
        acquire_timeout: Duration,
        sync: SqliteSync,
    ) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let url = match url {
            Some(u) => u.to_owned(),
            None => {
                let file = data_dir.join("simfota.db");
                protect_sqlite_file(&file)?;
                let file = file.to_str().ok_or_else(|| {
                    ServerError::Config(format!(
                        "data folder path is not UTF-8: {}",
                        file.display()
                    ))
                })?;
                format!("sqlite://{file}?mode=rwc")
            }
        };
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 10,
            })
            .acquire_timeout(acquire_timeout)
            // A PostgreSQL connection that died while idle (database restarted) is noticed and
            // replaced before use, so the server recovers by itself when the database returns.
            // A SQLite file does not go away while idle: there the check would only cost every
            // acquisition a round trip to the connection's worker thread.
            .test_before_acquire(backend == Backend::Postgres)
            // `synchronous` is a property of each connection, not of the file.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        sqlx::query(sync.pragma()).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy(&url)
            .map_err(ServerError::from)?;
        let db = Self { pool, backend };
        if backend == Backend::Postgres {
            reach(&url, acquire_timeout).await?;
            db.create_if_missing(&url).await?;
        }
        if backend == Backend::Sqlite {
            // WAL is a property of the file: set once, it stays. Readers then never block the writer.
            sqlx::query("PRAGMA journal_mode=WAL")
                .fetch_all(&db.pool)
                .await?;
        }
        db.migrate().await?;
        Ok(db)
    }

    /// First run on PostgreSQL: when the database the URL names does not exist (SQLSTATE 3D000,
    /// "invalid catalog name"), creates it (as `createdb` does, through the maintenance
    /// database; the role needs CREATEDB). An existing database is never touched here, so a
    /// role without access to the maintenance database works once the database exists.
    async fn create_if_missing(&self, url: &str) -> Result<()> {
        use sqlx::migrate::MigrateDatabase as _;
        let missing = match sqlx::query("SELECT 1").fetch_one(&self.pool).await {
            Ok(_) => false,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => true,
            Err(e) => return Err(e.into()),
        };
        if !missing {
            return Ok(());
        }
        match sqlx::Postgres::create_database(url).await {
            Ok(()) => {
                tracing::info!("created the PostgreSQL database (first run)");
                Ok(())
            }
            // Another replica created it meanwhile (42P04 duplicate_database).
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
            Err(e) => Err(ServerError::Migrate(format!(
                "the database does not exist and cannot be created: {}",
                ServerError::from(e)
            ))),
        }
    }

    /// Applies the pending migrations of this engine.
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// The pool (for queries).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A pooled connection, for a series of queries (functions that may also run inside the
    /// caller's transaction take `&mut AnyConnection`).
    pub async fn conn(&self) -> Result<PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes later fails
    /// with `SQLITE_BUSY` when another connection committed in between, instead of waiting.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Answers `Ok` when the database can run a query now.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection (graceful shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Connects once, directly, before the pool is used: a database that does not answer is then
/// reported with its address and the cause (refused, unknown host, password refused, no answer
/// in time), where the pool would only say that it timed out. A database that does not exist
/// yet answers, so it counts as reached (the caller creates it).
async fn reach(url: &str, timeout: Duration) -> Result<()> {
    use sqlx::Connection as _;
    let unreachable = |cause: String| ServerError::DbUnreachable {
        url: crate::config::redact_url(url),
        cause,
    };
    match tokio::time::timeout(timeout, sqlx::AnyConnection::connect(url)).await {
        Err(_) => Err(unreachable(format!(
            "no answer within {} ms (db_acquire_timeout)",
            timeout.as_millis()
        ))),
        Ok(Ok(conn)) => {
            // Closing politely is a courtesy: the attempt already succeeded.
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
    }
}

/// A fresh SQLite database with every migration applied, in a folder removed when the
/// returned guard drops: for the unit tests that look at real query plans and rows.
#[cfg(test)]
pub(crate) async fn scratch_sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let db = Db::open(
        None,
        dir.path(),
        Duration::from_secs(5),
        SqliteSync::default(),
    )
    .await
    .expect("a fresh SQLite database");
    (dir, db)
}

/// Typed column access on an `Any` row with the error mapped.
pub trait RowExt {
    /// An `i64` column.
    fn i64(&self, col: &str) -> Result<i64>;
    /// A nullable `i64` column.
    fn opt_i64(&self, col: &str) -> Result<Option<i64>>;
    /// A text column.
    fn text(&self, col: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// A blob column.
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
    /// A nullable blob column.
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>>;
}

impl RowExt for AnyRow {
    fn i64(&self, col: &str) -> Result<i64> {
        Ok(self.try_get::<i64, _>(col)?)
    }
    fn opt_i64(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get::<Option<i64>, _>(col)?)
    }
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get::<String, _>(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get::<Option<String>, _>(col)?)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        Ok(self.try_get::<Vec<u8>, _>(col)?)
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get::<Option<Vec<u8>>, _>(col)?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_list_numbers_the_placeholders_row_after_row() {
        assert_eq!(super::values_list(1, 1), "($1)");
        assert_eq!(super::values_list(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::values_list(0, 3), "");
    }

    /// Drops the lines from `-- begin FLAVOUR only` to `-- end FLAVOUR only`: a change one
    /// engine makes its own way (SQLite rebuilds a table to drop a foreign key; PostgreSQL
    /// drops the constraint).
    fn without_own_way(lines: Vec<String>, flavour: &str) -> Vec<String> {
        let (begin, end) = (
            format!("-- begin {flavour} only"),
            format!("-- end {flavour} only"),
        );
        let mut inside = false;
        lines
            .into_iter()
            .filter(|l| {
                if *l == begin {
                    inside = true;
                } else if *l == end {
                    inside = false;
                    return false;
                }
                !inside
            })
            .collect()
    }

    /// The two DDL flavours must describe the same schema: the PostgreSQL file is the SQLite file
    /// with the type names mapped, nothing else (but a change marked as one engine's own way).
    #[test]
    fn migration_flavours_match() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut names: Vec<_> = std::fs::read_dir(dir.join("sqlite"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert!(!names.is_empty());
        for name in names {
            let lite = std::fs::read_to_string(dir.join("sqlite").join(&name)).unwrap();
            let pg = std::fs::read_to_string(dir.join("postgres").join(&name)).unwrap();
            let mapped: Vec<String> = lite
                .lines()
                .skip(1) // the first comment line names the flavour
                .map(|l| {
                    l.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
                        .replace("BLOB", "BYTEA")
                        .replace("INTEGER", "BIGINT")
                })
                .collect();
            let pg_lines: Vec<String> = pg.lines().skip(1).map(str::to_owned).collect();
            let (mapped, pg_lines) = (
                without_own_way(mapped, "sqlite"),
                without_own_way(pg_lines, "postgres"),
            );
            assert_eq!(mapped, pg_lines, "{name:?}: flavours differ");
        }
    }

    /// The durability setting reaches every pooled connection (it is per connection).
    #[tokio::test]
    async fn sqlite_synchronous_is_set_on_every_connection() {
        for (sync, expected) in [(super::SqliteSync::Normal, 1), (super::SqliteSync::Full, 2)] {
            let dir = tempfile::tempdir().unwrap();
            let db = super::Db::open(None, dir.path(), std::time::Duration::from_secs(3), sync)
                .await
                .unwrap();
            let mut conns = Vec::new();
            for _ in 0..3 {
                let mut c = db.conn().await.unwrap();
                let v: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&mut *c)
                    .await
                    .unwrap();
                assert_eq!(v, expected, "{sync:?}");
                conns.push(c);
            }
            drop(conns);
            db.close().await;
        }
    }
}
