use std::{sync::Arc, time::Duration};

use futures::Stream;
use sqlx::Row;
use tokio::sync::Notify;

use crate::{Backend, Db, StorageError, Tx, now_millis, on_db, on_tx};

/// A change to publish, written in the same transaction as the change itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// What happened, e.g. `identity.merged`.
    pub topic: String,
    /// What it happened to, usually a customer id; consumers may partition on it.
    pub key: String,
    /// The full protobuf name of the payload message, e.g. `rapport.identity.v1.CustomersMerged`.
    pub payload_type: String,
    /// The encoded payload.
    pub payload: Vec<u8>,
}

impl OutboxMessage {
    /// A message about `key` on `topic` carrying the encoded protobuf message named `payload_type`.
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<String>,
        payload_type: impl Into<String>,
        payload: Vec<u8>,
    ) -> Self {
        Self { topic: topic.into(), key: key.into(), payload_type: payload_type.into(), payload }
    }
}

/// A published change with its position in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub sequence: i64,
    pub topic: String,
    pub key: String,
    pub payload_type: String,
    pub payload: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// The transactional outbox of one service database.
///
/// Sequences are handed out in commit order: on PostgreSQL every appending transaction first takes a
/// transaction-scoped advisory lock, so a reader that has seen sequence N can never later find a
/// smaller one committed (SQLite has a single writer and needs nothing).
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Db,
    appended: Arc<Notify>,
}

/// The advisory lock key that serialises outbox writers on PostgreSQL ("rapport" in ASCII).
const OUTBOX_LOCK: i64 = 0x0072_6170_706f_7274;

impl Outbox {
    /// The outbox stored in `db`.
    pub fn new(db: Db) -> Self {
        Self { db, appended: Arc::new(Notify::new()) }
    }

    /// Appends messages inside the caller's transaction; they become visible when it commits.
    pub async fn append(tx: &mut Tx, messages: &[OutboxMessage]) -> Result<(), StorageError> {
        if messages.is_empty() {
            return Ok(());
        }
        if let Tx::Postgres(t) = tx {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(OUTBOX_LOCK).execute(&mut **t).await?;
        }
        let now = now_millis();
        for m in messages {
            on_tx!(tx, t => sqlx::query(
                "INSERT INTO outbox (topic, key, payload_type, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&m.topic)
            .bind(&m.key)
            .bind(&m.payload_type)
            .bind(&m.payload)
            .bind(now)
            .execute(&mut **t)
            .await
            .map(|_| ()))?;
        }
        Ok(())
    }

    /// Commits a transaction that appended to this outbox and wakes the in-process readers.
    pub async fn commit(&self, tx: Tx) -> Result<(), StorageError> {
        tx.commit().await?;
        self.appended.notify_waiters();
        Ok(())
    }

    /// Wakes the in-process readers after a transaction that appended to this outbox was committed some
    /// other way (e.g. by a feed consumer, which commits its cursor with the change).
    pub fn notify(&self) {
        self.appended.notify_waiters();
    }

    /// Up to `limit` rows after `after`, in order, optionally only of `topics`.
    pub async fn read_after(&self, after: i64, topics: &[String], limit: i64) -> Result<Vec<OutboxRow>, StorageError> {
        let mut sql = String::from(
            "SELECT sequence, topic, key, payload_type, payload, created_at FROM outbox WHERE sequence > $1",
        );
        if !topics.is_empty() {
            let marks: Vec<String> = (0..topics.len()).map(|i| format!("${}", i + 3)).collect();
            sql.push_str(&format!(" AND topic IN ({})", marks.join(", ")));
        }
        sql.push_str(" ORDER BY sequence LIMIT $2");
        let rows = on_db!(&self.db, p => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(after).bind(limit);
            for t in topics {
                q = q.bind(t);
            }
            q.fetch_all(p).await?.into_iter().map(|r| -> Result<OutboxRow, sqlx::Error> {
                Ok(OutboxRow {
                    sequence: r.try_get("sequence")?,
                    topic: r.try_get("topic")?,
                    key: r.try_get("key")?,
                    payload_type: r.try_get("payload_type")?,
                    payload: r.try_get("payload")?,
                    created_at: r.try_get("created_at")?,
                })
            }).collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// The highest sequence written so far (0 when empty), for lag metrics.
    pub async fn head(&self) -> Result<i64, StorageError> {
        let head: Option<i64> =
            on_db!(&self.db, p => sqlx::query_scalar("SELECT MAX(sequence) FROM outbox").fetch_one(p).await?);
        Ok(head.unwrap_or(0))
    }

    /// An endless stream of rows after `after`. It wakes at once on appends made through this process
    /// and polls every `poll` for appends made by other processes. Resuming is passing the last sequence
    /// the consumer applied.
    pub fn stream(
        &self,
        after: i64,
        topics: Vec<String>,
        batch: i64,
        poll: Duration,
    ) -> impl Stream<Item = Result<OutboxRow, StorageError>> + Send + 'static {
        let outbox = self.clone();
        async_stream::try_stream! {
            let mut position = after;
            loop {
                let notified = outbox.appended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let rows = outbox.read_after(position, &topics, batch.max(1)).await?;
                if rows.is_empty() {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                    continue;
                }
                for row in rows {
                    position = row.sequence;
                    yield row;
                }
            }
        }
    }

    /// The database this outbox lives in.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// Positions of the feeds a service consumes, stored in the consumer's own database so that applying a
/// change and advancing the cursor commit together: nothing is lost and nothing is applied twice.
pub struct Cursors;

impl Cursors {
    /// The last position `consumer` applied (0 when it never ran).
    pub async fn load(db: &Db, consumer: &str) -> Result<i64, StorageError> {
        let pos: Option<i64> = on_db!(db, p => sqlx::query_scalar("SELECT position FROM consumer_cursors WHERE consumer = $1")
            .bind(consumer)
            .fetch_optional(p)
            .await?);
        Ok(pos.unwrap_or(0))
    }

    /// Records `position` for `consumer` inside the transaction that applied it.
    pub async fn save(tx: &mut Tx, consumer: &str, position: i64) -> Result<(), StorageError> {
        let now = now_millis();
        on_tx!(tx, t => sqlx::query(
            "INSERT INTO consumer_cursors (consumer, position, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(consumer)
        .bind(position)
        .bind(now)
        .execute(&mut **t)
        .await
        .map(|_| ()))?;
        Ok(())
    }
}

impl Backend {
    /// The name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}
