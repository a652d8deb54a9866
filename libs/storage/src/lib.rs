//! Storage shared by every service: a pool from a URL (`sqlite://DIR` or `postgres://...`), each
//! service's migrations on both backends, the transactional outbox with a resumable reader, and the
//! persisted cursors of the feeds a service consumes.
//!
//! Code that must run on both backends matches on [`Db`] or [`Tx`] with [`on_db!`] and [`on_tx!`],
//! which expand the same body once per backend: queries are written once, with `$1`-style placeholders
//! that SQLite and PostgreSQL both understand.

mod audit;
mod circuit;
mod db;
mod group;
mod outbox;
pub mod sql;
pub mod testing;

pub use audit::{Audit, AuditEntry, AuditWriter};
pub use db::{Backend, Db, PoolSettings, Tx, connect, migrate};
pub use group::{GroupCommit, WriteBatch};
pub use outbox::{Cursors, Horizon, Outbox, OutboxMessage, OutboxRow, spawn_pruner};
pub use sqlx;

/// A storage failure. Connection problems are `Unavailable`, a feed position older than the retention
/// `OutOfRange`; everything else is internal.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL is malformed or names an unsupported backend.
    #[error("storage.url: {0}")]
    BadUrl(String),
    /// The database cannot be reached.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Migrations failed.
    #[error("migrations of {service} failed: {message}")]
    Migration { service: String, message: String },
    /// A query failed.
    #[error("query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A feed read from a position whose following rows the outbox retention pruned: answering would
    /// silently skip them. The consumer fell behind by more than the retention and must be re-seeded.
    #[error(
        "after_sequence: {after} is behind the outbox horizon {horizon}: the records up to sequence {horizon} \
         were pruned by the retention (storage.outbox_retention_hours, {retention_hours} h at the last prune, \
         records created before {pruned_before}); the consumer fell behind by more than the retention and must \
         be re-seeded"
    )]
    OutOfRange { after: i64, horizon: i64, retention_hours: i64, pruned_before: String },
}

impl StorageError {
    /// Whether the failure is a lost or refused connection, worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Unavailable(_) => true,
            StorageError::Query(e) => is_connection_error(e),
            _ => false,
        }
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}

impl rapport_errors::DomainError for StorageError {
    fn error_code(&self) -> rapport_errors::ErrorCode {
        if let StorageError::OutOfRange { .. } = self {
            return rapport_errors::ErrorCode::OutOfRange;
        }
        if self.is_unavailable() { rapport_errors::ErrorCode::Unavailable } else { rapport_errors::ErrorCode::Internal }
    }
}

impl From<StorageError> for rapport_errors::Error {
    fn from(e: StorageError) -> Self {
        use rapport_errors::DomainError as _;
        rapport_errors::Error::new(e.error_code(), e.to_string())
    }
}

impl From<StorageError> for tonic::Status {
    fn from(e: StorageError) -> Self {
        rapport_errors::to_status(&e)
    }
}

/// Milliseconds since the Unix epoch: the one time representation stored on both backends.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
