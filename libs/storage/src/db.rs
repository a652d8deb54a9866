use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, Connection,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};

use crate::StorageError;

/// Expands `$body` once per backend with `$pool` bound to the backend's pool.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

/// Expands `$body` once per backend with `$conn` bound to the transaction's connection
/// (usable as an executor: `&mut **$conn`).
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::Tx::Sqlite($conn) => $body,
            $crate::Tx::Postgres($conn) => $body,
        }
    };
}

/// Which database a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One service's database.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction on a [`Db`].
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Db {
    /// The backend of this pool.
    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Starts a transaction. On SQLite the transaction takes the write lock at once (`BEGIN IMMEDIATE`),
    /// so concurrent writers queue instead of failing with "database is locked" when they upgrade.
    pub async fn begin(&self) -> Result<Tx, StorageError> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await.map_err(connection_error)?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await.map_err(connection_error)?),
        })
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        on_db!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()).map_err(connection_error))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        on_db!(self, p => p.close().await)
    }
}

impl Tx {
    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), StorageError> {
        on_tx!(self, t => t.commit().await.map_err(StorageError::from))
    }

    /// The backend of this transaction.
    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }
}

fn connection_error(e: sqlx::Error) -> StorageError {
    if crate::is_connection_error(&e) { StorageError::Unavailable(e.to_string()) } else { StorageError::Query(e) }
}

/// Pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self { max_connections: 16, acquire_timeout: Duration::from_secs(5) }
    }
}

/// Opens the database of `service`. `url` is empty (SQLite under `data_dir`), `sqlite://DIR` (one file
/// per service in DIR), `sqlite::memory:` (tests), or a PostgreSQL URL, where each service works in its
/// own schema named after it.
pub async fn connect(url: &str, data_dir: &Path, service: &str, settings: &PoolSettings) -> Result<Db, StorageError> {
    if url.is_empty() {
        return connect_sqlite_dir(data_dir, service, settings).await;
    }
    if url == "sqlite::memory:" {
        let opts = SqliteConnectOptions::from_str(url).map_err(|e| StorageError::BadUrl(e.to_string()))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        return Ok(Db::Sqlite(pool));
    }
    if let Some(dir) = url.strip_prefix("sqlite://") {
        return connect_sqlite_dir(Path::new(dir), service, settings).await;
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return connect_postgres(url, service, settings).await;
    }
    Err(StorageError::BadUrl(format!("unsupported scheme in `{}`, expected sqlite://DIR or postgres://", redact(url))))
}

async fn connect_sqlite_dir(dir: &Path, service: &str, settings: &PoolSettings) -> Result<Db, StorageError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StorageError::Unavailable(format!("cannot create data directory {}: {e}", dir.display())))?;
    let file = dir.join(format!("{service}.db"));
    let opts = SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(opts)
        .await
        .map_err(|e| StorageError::Unavailable(format!("cannot open {}: {e}", file.display())))?;
    Ok(Db::Sqlite(pool))
}

async fn connect_postgres(url: &str, service: &str, settings: &PoolSettings) -> Result<Db, StorageError> {
    if !service.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(StorageError::BadUrl(format!("schema name `{service}` must be lower-case letters, digits and _")));
    }
    let base = PgConnectOptions::from_str(url).map_err(|e| StorageError::BadUrl(format!("{}: {e}", redact(url))))?;
    let unreachable = |e: sqlx::Error| {
        StorageError::Unavailable(format!("storage.url: cannot connect to postgres at {}: {e}", redact(url)))
    };
    // Create the service's schema before any pooled connection sets its search path to it.
    let mut conn = tokio::time::timeout(settings.acquire_timeout, base.clone().connect())
        .await
        .map_err(|_| {
            StorageError::Unavailable(format!("storage.url: cannot connect to postgres at {}: timed out", redact(url)))
        })?
        .map_err(unreachable)?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {service}")))
        .execute(&mut conn)
        .await
        .or_else(|e| match &e {
            // Two processes creating the schema at once: the loser sees a unique violation.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => Ok(Default::default()),
            _ => Err(e),
        })?;
    conn.close().await.ok();
    let opts = base.options([("search_path", service)]);
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(opts.clone())
        .await
        .map_err(unreachable)?;
    crate::circuit::watch(&pool, opts);
    Ok(Db::Postgres(pool))
}

/// A URL with its password replaced, fit for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

/// Applies the outbox migrations and then the service's own, for the backend of `db`.
/// Service migrations are numbered from 0100; the shared ones below that.
pub async fn migrate(db: &Db, service: &str, sqlite: &Migrator, postgres: &Migrator) -> Result<(), StorageError> {
    static OUTBOX_SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
    static OUTBOX_POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");
    let (shared, own) = match db.backend() {
        Backend::Sqlite => (&OUTBOX_SQLITE, sqlite),
        Backend::Postgres => (&OUTBOX_POSTGRES, postgres),
    };
    let mut all: Vec<_> = shared.iter().chain(own.iter()).cloned().collect();
    all.sort_by_key(|m| m.version);
    let migrator = Migrator::with_migrations(all);
    let failed = |e: sqlx::migrate::MigrateError| StorageError::Migration {
        service: service.to_string(),
        message: e.to_string(),
    };
    on_db!(db, p => migrator.run(p).await.map_err(failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert!(!redact("postgres://u:secret@h/db").contains("secret"));
    }

    #[tokio::test]
    async fn unknown_scheme_is_named() {
        let err = connect("mysql://h/db", Path::new("/tmp"), "identity", &PoolSettings::default()).await.unwrap_err();
        assert!(err.to_string().contains("storage.url"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_postgres_fails_fast_and_clearly() {
        let settings = PoolSettings { acquire_timeout: Duration::from_secs(2), ..Default::default() };
        let err =
            connect("postgres://u:pw@127.0.0.1:1/db", Path::new("/tmp"), "identity", &settings).await.unwrap_err();
        assert!(err.is_unavailable());
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}
