//! The store: one SQLite file (default) or PostgreSQL, behind [`Db`].
//!
//! Queries are written once, in SQL both backends accept (`$1` placeholders, `RETURNING`,
//! integers for timestamps and ids), and run through [`on_db!`], which expands the same code
//! for each pool type. That keeps every query checked by the compiler against both drivers
//! without `sqlx::Any`'s reduced type set.
//!
//! Every transaction that changes configuration starts with [`BUMP_REVISION`]: taking the
//! write lock first serializes writers (no SQLite lock upgrade failures, no quota races on
//! PostgreSQL) and gives each change its revision.

use crate::error::ControlError;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// A connection pool to one of the two supported databases.
#[derive(Clone, Debug)]
pub enum Db {
    /// Embedded SQLite file.
    Sqlite(SqlitePool),
    /// PostgreSQL server.
    Postgres(PgPool),
}

/// Runs the same block for whichever pool `$db` holds, with the pool bound to `$pool`.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Begins a transaction. On SQLite it takes the write lock at its start (`BEGIN IMMEDIATE`),
/// waiting for it like every other write: a deferred transaction that reads and then writes
/// would have to upgrade its read snapshot, which fails at once with "database is locked"
/// (SQLITE_BUSY_SNAPSHOT) when another write committed in between, a 500 for the caller.
/// PostgreSQL's `BEGIN` has no such upgrade.
pub(crate) async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    match DB::NAME {
        "SQLite" => pool.begin_with("BEGIN IMMEDIATE").await,
        _ => pool.begin().await,
    }
}

/// How long a query waits for a connection or a lock before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

impl Db {
    /// Connects (SQLite: `<data_dir>/triggerfs.db`, created if missing) and applies the
    /// backend's migrations.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Db, ControlError> {
        let db = match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(url)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Db::Postgres(pool)
            }
            Some(url) if url.starts_with("sqlite:") => Db::Sqlite(
                open_sqlite(SqliteConnectOptions::from_str(url)?.create_if_missing(true)).await?,
            ),
            Some(other) => return Err(ControlError::UnsupportedDatabase(other.to_string())),
            None => {
                let path = data_dir.join("triggerfs.db");
                // SQLite gives its -wal and -shm files the database file's mode.
                for file in ["triggerfs.db", "triggerfs.db-wal", "triggerfs.db-shm"] {
                    make_private(&data_dir.join(file), file == "triggerfs.db")?;
                }
                Db::Sqlite(
                    open_sqlite(
                        SqliteConnectOptions::new()
                            .filename(path)
                            .create_if_missing(true),
                    )
                    .await?,
                )
            }
        };
        Ok(db)
    }
}

/// Makes `path` readable by its owner only (0600), creating it empty first when `create`.
fn make_private(path: &Path, create: bool) -> Result<(), ControlError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| ControlError::Io {
        what: "cannot make private",
        path: path.display().to_string(),
        source,
    };
    if create {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(()),
        other => other.map_err(io),
    }
}

async fn open_sqlite(options: SqliteConnectOptions) -> Result<SqlitePool, ControlError> {
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        // Writers wait for each other instead of failing at once.
        .busy_timeout(ACQUIRE_TIMEOUT);
    let pool = SqlitePoolOptions::new()
        // A handful is plenty: writes serialize on the file anyway.
        .max_connections(4)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_release(|conn, _| Box::pin(keep_after_release(conn)))
        .connect_with(options)
        .await?;
    SQLITE_MIGRATIONS.run(&pool).await?;
    Ok(pool)
}

/// Whether a connection given back to the pool may serve again: not when sqlx still counts a
/// transaction open on it. That happens when a dropped transaction's `ROLLBACK` failed (SQLite
/// had already ended it on an error, under a busy file): every later `BEGIN IMMEDIATE` on the
/// connection would fail ("attempted to call begin_with at non-zero transaction depth"), a 500
/// for one request in every few until the process restarts. Such a connection is closed (which
/// ends whatever SQLite still holds) and the pool opens a new one. A dropped transaction queues
/// its `ROLLBACK`; a ping runs after it, so the count is read once it has run.
async fn keep_after_release(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::{Connection, TransactionManager};
    type Manager = <sqlx::Sqlite as sqlx::Database>::TransactionManager;
    if Manager::get_transaction_depth(conn) > 0 {
        conn.ping().await?;
    }
    Ok(Manager::get_transaction_depth(conn) == 0)
}

/// Takes the write lock and returns the new revision; first statement of every
/// configuration-changing transaction.
pub const BUMP_REVISION: &str =
    "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision";

/// Reads the current revision.
pub const CURRENT_REVISION: &str = "SELECT revision FROM meta WHERE id = 1";

/// A revision as read from `meta` (which counts up from 0: a negative one is a store this
/// crate did not write, an error like any other value that does not decode).
pub fn revision(stored: i64) -> Result<u64, sqlx::Error> {
    u64::try_from(stored).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC text of a unix-millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction that SQLite ended behind sqlx's back (its `ROLLBACK` on drop then fails)
    /// does not poison the pool: the connection is closed when released, and every later
    /// transaction begins.
    #[tokio::test]
    async fn a_connection_left_in_a_transaction_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let Db::Sqlite(pool) = Db::open(dir.path(), None).await.unwrap() else {
            unreachable!("no database URL: SQLite")
        };
        {
            let mut conn = pool.acquire().await.unwrap();
            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
        }
        for _ in 0..8 {
            let mut tx = begin(&pool).await.expect("a transaction begins");
            sqlx::query(CURRENT_REVISION)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    }
}
