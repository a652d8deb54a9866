//! The send queue and the status history.
//!
//! A message is claimable while its status is QUEUED or DEFERRED, its `next_attempt_at` has come and no
//! live lease holds it. A claim takes a lease (`lease_owner`, `lease_until`) in one statement: on
//! PostgreSQL with `FOR UPDATE SKIP LOCKED`, so concurrent workers and replicas never claim the same row;
//! on SQLite the write lock makes the claimer single. Every later change by a worker is conditional on
//! still holding the lease, so a worker that lost its lease (it stalled past `lease_seconds`) cannot
//! overwrite the work of the one that took over. The hand-off mark (`handoff_provider`, `handoff_at`) is
//! written, under the lease, just before a provider's irrevocable step; see docs/delivery.md.

use rapport_errors::Error;
use rapport_proto::delivery::v1::MessageStatus;
use rapport_storage::{Backend, Db, Outbox, OutboxMessage, now_millis};

use super::{Exec, V};

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub message_id: String,
    pub idempotency_key: String,
    pub customer_id: String,
    pub channel: i32,
    pub message_class: i32,
    pub purpose: String,
    pub recipient: String,
    pub template_id: String,
    pub template_version: i64,
    pub locale: String,
    pub request: Vec<u8>,
    pub decision_id: String,
    pub offer_id: String,
    pub campaign_id: String,
    pub next_attempt_at: i64,
}

/// A stored message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub seq: i64,
    pub message_id: String,
    pub idempotency_key: String,
    pub customer_id: String,
    pub channel: i64,
    pub message_class: i64,
    pub purpose: String,
    pub recipient: String,
    pub template_id: String,
    pub template_version: i64,
    pub locale: String,
    pub request: Vec<u8>,
    pub decision_id: String,
    pub offer_id: String,
    pub campaign_id: String,
    pub status: i64,
    pub provider: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub handoff_provider: Option<String>,
    pub handoff_at: Option<i64>,
    pub subject: String,
    pub last_error: String,
    pub dead: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "seq, message_id, idempotency_key, customer_id, channel, message_class, purpose, recipient, \
    template_id, template_version, locale, request, decision_id, offer_id, campaign_id, status, provider, attempts, \
    next_attempt_at, lease_owner, lease_until, handoff_provider, handoff_at, subject, last_error, dead, created_at, \
    updated_at";

/// One status history entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryRow {
    pub message_id: String,
    pub status: i64,
    pub at: i64,
    pub detail: String,
}

/// A change of one message, applied with others in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub message_id: String,
    /// Only while this worker holds the lease; `None` for changes from outside the queue.
    pub owner: Option<String>,
    /// The new status.
    pub status: i32,
    /// Only if the current status is one of these (empty: any).
    pub from: Vec<i32>,
    /// The history detail (provider answer, reason).
    pub detail: String,
    /// The provider that handled it, if any.
    pub provider: Option<String>,
    /// Back into the queue at this time (QUEUED or DEFERRED); `None` leaves the queue.
    pub next_attempt_at: Option<i64>,
    /// Whether a provider was tried (counts towards `max_attempts`).
    pub attempted: bool,
    /// Dead-lettered.
    pub dead: bool,
    /// The rendered subject to keep.
    pub subject: Option<String>,
    /// Whether to record the change in the history (engagement repeats are not).
    pub history: bool,
    /// Keep the hand-off mark (an interrupted hand-off whose outcome is asked for later).
    pub keep_handoff: bool,
    /// Outbox events published with the change.
    pub events: Vec<OutboxMessage>,
}

/// The queue over the service database.
#[derive(Clone)]
pub struct Messages {
    pub db: Db,
    pub outbox: Outbox,
}

impl Messages {
    /// Queues `rows` in one transaction. A row whose idempotency key is taken is not stored; the stored
    /// message is returned with `true` (a duplicate). `events` builds the outbox events of a new row.
    pub async fn insert(
        &self,
        rows: &[NewMessage],
        events: impl Fn(&NewMessage) -> Vec<OutboxMessage>,
    ) -> Result<Vec<(MessageRow, bool)>, Error> {
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut messages = Vec::new();
        for m in rows {
            let mut exec = Exec::Tx(&mut tx);
            let inserted = exec
                .run(
                    "INSERT INTO delivery_messages (message_id, idempotency_key, customer_id, channel, message_class,
                     purpose, recipient, template_id, template_version, locale, request, decision_id, offer_id,
                     campaign_id, status, next_attempt_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17)
                     ON CONFLICT (idempotency_key) DO NOTHING",
                    &[
                        (&m.message_id).into(),
                        (&m.idempotency_key).into(),
                        (&m.customer_id).into(),
                        m.channel.into(),
                        m.message_class.into(),
                        (&m.purpose).into(),
                        (&m.recipient).into(),
                        (&m.template_id).into(),
                        m.template_version.into(),
                        (&m.locale).into(),
                        V::B(m.request.clone()),
                        (&m.decision_id).into(),
                        (&m.offer_id).into(),
                        (&m.campaign_id).into(),
                        (MessageStatus::Queued as i32).into(),
                        m.next_attempt_at.into(),
                        now.into(),
                    ],
                )
                .await?;
            if inserted == 1 {
                exec.run(
                    "INSERT INTO delivery_history (message_id, status, at, detail) VALUES ($1, $2, $3, $4)",
                    &[(&m.message_id).into(), (MessageStatus::Queued as i32).into(), now.into(), "".into()],
                )
                .await?;
                messages.extend(events(m));
            }
            let row: Vec<MessageRow> = exec
                .all(
                    &format!("SELECT {COLUMNS} FROM delivery_messages WHERE idempotency_key = $1"),
                    &[(&m.idempotency_key).into()],
                )
                .await?;
            let row = row.into_iter().next().ok_or_else(|| Error::internal("queued message not found"))?;
            out.push((row, inserted == 0));
        }
        Outbox::append(&mut tx, &messages).await?;
        self.outbox.commit(tx).await?;
        Ok(out)
    }

    /// The messages stored under these idempotency keys.
    pub async fn by_keys(&self, keys: &[String]) -> Result<Vec<MessageRow>, Error> {
        let binds: Vec<V> = keys.iter().map(V::from).collect();
        in_chunks(
            &self.db,
            &format!("SELECT {COLUMNS} FROM delivery_messages WHERE idempotency_key IN ({{in}})"),
            &binds,
        )
        .await
    }

    /// One message.
    pub async fn get(&self, message_id: &str) -> Result<Option<MessageRow>, Error> {
        let rows: Vec<MessageRow> = Exec::Db(&self.db)
            .all(&format!("SELECT {COLUMNS} FROM delivery_messages WHERE message_id = $1"), &[message_id.into()])
            .await?;
        Ok(rows.into_iter().next())
    }

    /// The history of messages, oldest first.
    pub async fn history(&self, message_ids: &[&str]) -> Result<Vec<HistoryRow>, Error> {
        let binds: Vec<V> = message_ids.iter().map(|s| V::from(*s)).collect();
        in_chunks(
            &self.db,
            "SELECT message_id, status, at, detail FROM delivery_history WHERE message_id IN ({in}) ORDER BY seq",
            &binds,
        )
        .await
    }

    /// A customer's messages, newest first, before position `before` (a `seq`), at most `limit`.
    pub async fn of_customer(
        &self,
        customer_id: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<MessageRow>, Error> {
        Exec::Db(&self.db)
            .all(
                &format!(
                    "SELECT {COLUMNS} FROM delivery_messages WHERE customer_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                ),
                &[customer_id.into(), before.unwrap_or(i64::MAX).into(), limit.into()],
            )
            .await
    }

    /// Dead-lettered messages, newest first.
    pub async fn dead(&self, before: Option<i64>, limit: i64) -> Result<Vec<MessageRow>, Error> {
        Exec::Db(&self.db)
            .all(
                &format!(
                    "SELECT {COLUMNS} FROM delivery_messages WHERE dead = 1 AND seq < $1 ORDER BY seq DESC LIMIT $2"
                ),
                &[before.unwrap_or(i64::MAX).into(), limit.into()],
            )
            .await
    }

    /// Puts dead letters (these, or all when empty) back in the queue with fresh attempts.
    pub async fn replay(
        &self,
        ids: &[String],
        events: impl Fn(&MessageRow) -> Vec<OutboxMessage>,
    ) -> Result<i64, Error> {
        let rows = if ids.is_empty() {
            Exec::Db(&self.db)
                .all::<MessageRow>(&format!("SELECT {COLUMNS} FROM delivery_messages WHERE dead = 1"), &[])
                .await?
        } else {
            let mut rows = Vec::new();
            for id in ids {
                if let Some(r) = self.get(id).await?
                    && r.dead == 1
                {
                    rows.push(r);
                }
            }
            rows
        };
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        let mut messages = Vec::new();
        let mut count = 0;
        for r in &rows {
            let mut exec = Exec::Tx(&mut tx);
            let changed = exec
                .run(
                    "UPDATE delivery_messages SET status = $2, dead = 0, attempts = 0, next_attempt_at = $3, lease_owner = NULL,
                     lease_until = NULL, handoff_provider = NULL, handoff_at = NULL, updated_at = $3
                     WHERE message_id = $1 AND dead = 1",
                    &[(&r.message_id).into(), (MessageStatus::Queued as i32).into(), now.into()],
                )
                .await?;
            if changed == 1 {
                exec.run(
                    "INSERT INTO delivery_history (message_id, status, at, detail) VALUES ($1, $2, $3, $4)",
                    &[
                        (&r.message_id).into(),
                        (MessageStatus::Queued as i32).into(),
                        now.into(),
                        "replayed from the dead letters".into(),
                    ],
                )
                .await?;
                messages.extend(events(r));
                count += 1;
            }
        }
        Outbox::append(&mut tx, &messages).await?;
        self.outbox.commit(tx).await?;
        Ok(count)
    }

    /// Claims up to `limit` due messages for `owner` for `lease_ms`.
    pub async fn claim(&self, owner: &str, limit: i64, lease_ms: i64) -> Result<Vec<MessageRow>, Error> {
        let now = now_millis();
        let lock = if self.db.backend() == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE delivery_messages SET lease_owner = $1, lease_until = $2, updated_at = $3
             WHERE seq IN (SELECT seq FROM delivery_messages WHERE status IN (1, 2) AND next_attempt_at <= $3
                           AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at LIMIT $4 {lock})
             RETURNING {COLUMNS}"
        );
        let mut tx = self.db.begin().await?;
        let rows: Vec<MessageRow> =
            Exec::Tx(&mut tx).all(&sql, &[owner.into(), (now + lease_ms).into(), now.into(), limit.into()]).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// The earliest time a queued message becomes due, if any.
    pub async fn next_due(&self) -> Result<Option<i64>, Error> {
        let rows: Vec<(Option<i64>,)> = Exec::Db(&self.db)
            .all("SELECT MIN(next_attempt_at) FROM delivery_messages WHERE status IN (1, 2)", &[])
            .await?;
        Ok(rows.into_iter().next().and_then(|r| r.0))
    }

    /// Writes the hand-off marks of `ids` (provider `provider`) while `owner` holds their leases, in one
    /// transaction. Returns, per id, whether the mark was written (false: the lease was lost).
    pub async fn mark_handoff(&self, marks: &[(String, String)], owner: &str) -> Result<Vec<bool>, Error> {
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        let mut out = Vec::with_capacity(marks.len());
        for (id, provider) in marks {
            let n = Exec::Tx(&mut tx)
                .run(
                    "UPDATE delivery_messages SET handoff_provider = $3, handoff_at = $4
                     WHERE message_id = $1 AND lease_owner = $2 AND lease_until > $4 AND status IN (1, 2)",
                    &[id.into(), owner.into(), provider.into(), now.into()],
                )
                .await?;
            out.push(n == 1);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Applies `changes` in one transaction; per change whether it applied (its lease and `from`
    /// condition held).
    pub async fn apply(&self, changes: &[Change]) -> Result<Vec<bool>, Error> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        let mut out = Vec::with_capacity(changes.len());
        let mut messages = Vec::new();
        for c in changes {
            let mut sql = String::from(
                "UPDATE delivery_messages SET status = $2, updated_at = $3, last_error = $4,
                 provider = COALESCE($5, provider), next_attempt_at = COALESCE($6, next_attempt_at),
                 attempts = attempts + $7, dead = $8, subject = COALESCE($9, subject)",
            );
            // Leaving the queue or going back to it releases the lease and clears the hand-off mark.
            if c.owner.is_some() {
                sql.push_str(", lease_owner = NULL, lease_until = NULL");
                if !c.keep_handoff {
                    sql.push_str(", handoff_provider = NULL, handoff_at = NULL");
                }
            }
            sql.push_str(" WHERE message_id = $1");
            let mut binds: Vec<V> = vec![
                (&c.message_id).into(),
                c.status.into(),
                now.into(),
                (&c.detail).into(),
                c.provider.clone().map_or(V::SN, V::S),
                c.next_attempt_at.into(),
                i64::from(c.attempted).into(),
                i64::from(c.dead).into(),
                c.subject.clone().map_or(V::SN, V::S),
            ];
            if let Some(owner) = &c.owner {
                binds.push(owner.into());
                sql.push_str(&format!(" AND lease_owner = ${}", binds.len()));
            }
            if !c.from.is_empty() {
                let marks: Vec<String> = c
                    .from
                    .iter()
                    .map(|s| {
                        binds.push((*s).into());
                        format!("${}", binds.len())
                    })
                    .collect();
                sql.push_str(&format!(" AND status IN ({})", marks.join(", ")));
            }
            let mut exec = Exec::Tx(&mut tx);
            let applied = exec.run(&sql, &binds).await? == 1;
            if applied {
                if c.history {
                    exec.run(
                        "INSERT INTO delivery_history (message_id, status, at, detail) VALUES ($1, $2, $3, $4)",
                        &[(&c.message_id).into(), c.status.into(), now.into(), (&c.detail).into()],
                    )
                    .await?;
                }
                messages.extend(c.events.iter().cloned());
            }
            out.push(applied);
        }
        Outbox::append(&mut tx, &messages).await?;
        self.outbox.commit(tx).await?;
        Ok(out)
    }

    /// Appends engagement events that change no status (repeated opens, clicks).
    pub async fn publish(&self, messages: &[OutboxMessage]) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        Outbox::append(&mut tx, messages).await?;
        self.outbox.commit(tx).await?;
        Ok(())
    }

    /// Messages waiting in the queue, by channel.
    pub async fn depth(&self) -> Result<Vec<(i64, i64)>, Error> {
        Exec::Db(&self.db)
            .all("SELECT channel, COUNT(*) FROM delivery_messages WHERE status IN (1, 2) GROUP BY channel", &[])
            .await
    }

    /// Every message of these customers (for export).
    pub async fn of_customers(&self, ids: &[String]) -> Result<Vec<MessageRow>, Error> {
        let mut out = Vec::new();
        for id in ids {
            out.extend(
                Exec::Db(&self.db)
                    .all::<MessageRow>(
                        &format!("SELECT {COLUMNS} FROM delivery_messages WHERE customer_id = $1 ORDER BY seq"),
                        &[id.into()],
                    )
                    .await?,
            );
        }
        Ok(out)
    }
}

/// Runs `sql` (with `{in}` where the placeholder list goes) over `values` in chunks of 500.
async fn in_chunks<O>(db: &Db, sql: &str, values: &[V]) -> Result<Vec<O>, Error>
where
    O: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin,
{
    let mut out = Vec::new();
    for chunk in values.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        out.extend(Exec::Db(db).all::<O>(&sql.replace("{in}", &marks.join(", ")), chunk).await?);
    }
    Ok(out)
}
