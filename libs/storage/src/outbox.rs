use std::{sync::Arc, time::Duration};

use futures::Stream;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// How far the retention pruned a feed (or the part of it some topics make up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Horizon {
    /// Every row at or below this sequence that matters to the reader is gone (0: nothing pruned).
    pub through_sequence: i64,
    /// The created_at cutoff of the last prune that moved it (ms since the epoch).
    pub pruned_before: i64,
    /// When that prune ran (ms since the epoch).
    pub pruned_at: i64,
}

/// Rows deleted per transaction by [`Outbox::prune`] when run by [`spawn_pruner`].
pub const PRUNE_BATCH: i64 = 1_000;

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

    /// Up to `limit` rows after `after`, in order, optionally only of `topics`. Fails with
    /// [`StorageError::OutOfRange`] when the retention pruned a row the read would have returned.
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
        // Checked after the read: a prune commits its deletes and its horizon together, so a read that
        // missed pruned rows is always followed by a check that sees the horizon past `after`.
        self.check_position(after, topics).await?;
        Ok(rows)
    }

    /// How far the retention pruned the rows of `topics` (all rows when empty).
    pub async fn horizon(&self, topics: &[String]) -> Result<Horizon, StorageError> {
        let mut sql = String::from(
            "SELECT MAX(through_sequence) AS through_sequence, MAX(pruned_before) AS pruned_before, \
             MAX(pruned_at) AS pruned_at FROM outbox_horizon",
        );
        if !topics.is_empty() {
            let marks: Vec<String> = (0..topics.len()).map(|i| format!("${}", i + 1)).collect();
            sql.push_str(&format!(" WHERE topic IN ({})", marks.join(", ")));
        }
        let row: (Option<i64>, Option<i64>, Option<i64>) = on_db!(&self.db, p => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
            for t in topics {
                q = q.bind(t);
            }
            q.fetch_one(p).await?
        });
        Ok(Horizon {
            through_sequence: row.0.unwrap_or(0),
            pruned_before: row.1.unwrap_or(0),
            pruned_at: row.2.unwrap_or(0),
        })
    }

    /// Fails with [`StorageError::OutOfRange`] when a row of `topics` after `after` was pruned, so that
    /// reading on from `after` would skip it. Position 0 (a consumer that never ran) is no exception: it
    /// expects the whole feed.
    pub async fn check_position(&self, after: i64, topics: &[String]) -> Result<(), StorageError> {
        let h = self.horizon(topics).await?;
        if after < h.through_sequence {
            let pruned_before = chrono::DateTime::from_timestamp_millis(h.pruned_before)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| h.pruned_before.to_string());
            return Err(StorageError::OutOfRange {
                after,
                horizon: h.through_sequence,
                retention_hours: ((h.pruned_at - h.pruned_before) as f64 / 3_600_000.0).round() as i64,
                pruned_before,
            });
        }
        Ok(())
    }

    /// Deletes the oldest part of the feed: every row up to the newest one created before `cutoff_ms`
    /// (a prefix, never a hole), `batch` rows per transaction, recording per topic the highest sequence
    /// pruned in the same transaction. Returns the number of rows deleted. Sequences are never reused,
    /// so appends after a prune keep counting up.
    pub async fn prune(&self, cutoff_ms: i64, batch: i64) -> Result<u64, StorageError> {
        let batch = batch.max(1);
        let target: Option<i64> = on_db!(&self.db, p => sqlx::query_scalar(
            "SELECT MAX(sequence) FROM outbox WHERE created_at < $1",
        )
        .bind(cutoff_ms)
        .fetch_one(p)
        .await?);
        let Some(target) = target else {
            return Ok(0);
        };
        let mut pruned = 0u64;
        loop {
            let mut tx = self.db.begin().await?;
            let upto: Option<i64> = on_tx!(&mut tx, t => sqlx::query_scalar(
                "SELECT MAX(sequence) FROM (SELECT sequence FROM outbox WHERE sequence <= $1 ORDER BY sequence LIMIT $2) AS b",
            )
            .bind(target)
            .bind(batch)
            .fetch_one(&mut **t)
            .await?);
            let Some(upto) = upto else {
                break;
            };
            let topics: Vec<(String, i64)> = on_tx!(&mut tx, t => sqlx::query_as(
                "SELECT topic, MAX(sequence) FROM outbox WHERE sequence <= $1 GROUP BY topic",
            )
            .bind(upto)
            .fetch_all(&mut **t)
            .await?);
            let now = now_millis();
            for (topic, through) in &topics {
                on_tx!(&mut tx, t => sqlx::query(
                    "INSERT INTO outbox_horizon (topic, through_sequence, pruned_before, pruned_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (topic) DO UPDATE SET \
                     through_sequence = CASE WHEN excluded.through_sequence > outbox_horizon.through_sequence \
                         THEN excluded.through_sequence ELSE outbox_horizon.through_sequence END, \
                     pruned_before = excluded.pruned_before, pruned_at = excluded.pruned_at",
                )
                .bind(topic)
                .bind(through)
                .bind(cutoff_ms)
                .bind(now)
                .execute(&mut **t)
                .await
                .map(|_| ()))?;
            }
            let deleted = on_tx!(&mut tx, t => sqlx::query("DELETE FROM outbox WHERE sequence <= $1")
                .bind(upto)
                .execute(&mut **t)
                .await
                .map(|r| r.rows_affected()))?;
            tx.commit().await?;
            pruned += deleted;
            if upto >= target {
                break;
            }
        }
        Ok(pruned)
    }

    /// The highest sequence written so far (0 when nothing was), for lag metrics; the horizon when the
    /// retention pruned every row.
    pub async fn head(&self) -> Result<i64, StorageError> {
        let head: Option<i64> = on_db!(&self.db, p => sqlx::query_scalar(
            "SELECT COALESCE((SELECT MAX(sequence) FROM outbox), (SELECT MAX(through_sequence) FROM outbox_horizon))",
        )
        .fetch_one(p)
        .await?);
        Ok(head.unwrap_or(0))
    }

    /// An endless stream of rows after `after`. It wakes at once on appends made through this process
    /// and polls every `poll` for appends made by other processes. Resuming is passing the last sequence
    /// the consumer applied. A position the retention left behind ends the stream with
    /// [`StorageError::OutOfRange`] (see [`Outbox::check_position`]).
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

/// Prunes `outbox` (the outbox of `service`) every `interval`, first at start: rows older than `retention`
/// go, [`PRUNE_BATCH`] per transaction. Counts them in `rapport_outbox_pruned_total{service}` and logs
/// counts only. Stops when `shutdown` is cancelled (an interrupted batch rolls back).
pub fn spawn_pruner(
    service: &'static str,
    outbox: Outbox,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let counter = metrics::counter!("rapport_outbox_pruned_total", "service" => service);
    counter.increment(0);
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        loop {
            let started = std::time::Instant::now();
            let cutoff = now_millis().saturating_sub(retention_ms);
            let pass = async {
                let pruned = outbox.prune(cutoff, PRUNE_BATCH).await?;
                let horizon = if pruned > 0 { outbox.horizon(&[]).await?.through_sequence } else { 0 };
                Ok::<_, StorageError>((pruned, horizon))
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = pass => match outcome {
                    Ok((0, _)) => tracing::debug!(service, "outbox prune: nothing older than the retention"),
                    Ok((pruned, horizon)) => {
                        counter.increment(pruned);
                        tracing::info!(
                            service,
                            pruned,
                            horizon,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "outbox pruned"
                        );
                    }
                    Err(e) => tracing::warn!(service, error = %e, "outbox prune failed; retrying at the next interval"),
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
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
