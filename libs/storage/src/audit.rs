//! The audit log every service keeps in its own database: who read, exported or erased whose data, and
//! when. Rows are only ever appended; the database itself refuses updates and deletes.

use sqlx::Row;

use crate::{Db, StorageError, Tx, now_millis, on_db, on_tx};

/// One audited access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// The caller (API key name, JWT subject, `admin`, `internal:<service>`).
    pub principal: String,
    /// What was done: `profile.read`, `customer.export`, `customer.erase`, ...
    pub action: String,
    /// Whose data.
    pub customer_id: String,
    /// Free text without personal data (the fields read, the reason given).
    pub detail: String,
}

/// The audit log of one service database.
pub struct Audit;

impl Audit {
    /// Appends an entry on its own.
    pub async fn record(
        db: &Db,
        principal: &str,
        action: &str,
        customer_id: &str,
        detail: &str,
    ) -> Result<(), StorageError> {
        on_db!(db, p => sqlx::query(
            "INSERT INTO audit_log (at, principal, action, customer_id, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_millis()).bind(principal).bind(action).bind(customer_id).bind(detail)
        .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Appends an entry inside a transaction (so that an erasure and its audit commit together).
    pub async fn record_in(
        tx: &mut Tx,
        principal: &str,
        action: &str,
        customer_id: &str,
        detail: &str,
    ) -> Result<(), StorageError> {
        on_tx!(tx, t => sqlx::query(
            "INSERT INTO audit_log (at, principal, action, customer_id, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_millis()).bind(principal).bind(action).bind(customer_id).bind(detail)
        .execute(&mut **t).await.map(|_| ()))?;
        Ok(())
    }

    /// The entries about `customer_id`, oldest first, at most `limit`.
    pub async fn list(db: &Db, customer_id: &str, limit: i64) -> Result<Vec<AuditEntry>, StorageError> {
        let rows = on_db!(db, p => sqlx::query(
            "SELECT id, at, principal, action, customer_id, detail FROM audit_log WHERE customer_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(customer_id).bind(limit)
        .fetch_all(p).await?
        .into_iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            at: r.get(1),
            principal: r.get(2),
            action: r.get(3),
            customer_id: r.get(4),
            detail: r.get(5),
        })
        .collect::<Vec<_>>());
        Ok(rows)
    }
}

/// Appends audit entries off the request path: entries are queued and written in batches, one
/// transaction at most every `interval`, so that audited reads cost no database write each. Entries
/// still queued are written when the writer is dropped at shutdown (`close`).
#[derive(Clone)]
pub struct AuditWriter {
    queue: tokio::sync::mpsc::UnboundedSender<AuditEntry>,
}

impl AuditWriter {
    /// Starts the writer for `db`; it stops after `shutdown` once the queue is written.
    pub fn spawn(
        db: Db,
        interval: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<AuditEntry>();
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                let stop = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tokio::time::sleep(interval) => false,
                };
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                if !batch.is_empty() {
                    match write_batch(&db, &batch).await {
                        Ok(()) => batch.clear(),
                        Err(e) => {
                            tracing::error!(error = %e, queued = batch.len(), "audit entries not written yet; retrying")
                        }
                    }
                }
                if stop {
                    return;
                }
            }
        });
        (Self { queue }, task)
    }

    /// Queues an entry; it is written within the interval.
    pub fn record(&self, principal: &str, action: &str, customer_id: &str, detail: String) {
        let entry = AuditEntry {
            id: 0,
            at: now_millis(),
            principal: principal.to_string(),
            action: action.to_string(),
            customer_id: customer_id.to_string(),
            detail,
        };
        if self.queue.send(entry).is_err() {
            tracing::error!("audit writer stopped; an audit entry was not queued");
        }
    }
}

async fn write_batch(db: &Db, batch: &[AuditEntry]) -> Result<(), StorageError> {
    let mut tx = db.begin().await?;
    for e in batch {
        on_tx!(&mut tx, t => sqlx::query(
            "INSERT INTO audit_log (at, principal, action, customer_id, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(e.at).bind(&e.principal).bind(&e.action).bind(&e.customer_id).bind(&e.detail)
        .execute(&mut **t).await.map(|_| ()))?;
    }
    tx.commit().await
}
