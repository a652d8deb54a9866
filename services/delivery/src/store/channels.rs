//! The channels delivery serves itself: call-centre tasks, in-app inboxes and direct-mail rows. Each
//! row is keyed by its message, so writing it again after a crash changes nothing.

use rapport_errors::{Error, ErrorCode};
use rapport_proto::delivery::v1::TaskState;
use rapport_storage::{Db, now_millis};

use super::Exec;

/// A call-centre task.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub task_id: String,
    pub message_id: String,
    pub customer_id: String,
    pub phone: String,
    pub script: String,
    pub offer_id: String,
    pub decision_id: String,
    pub due_at: i64,
    pub state: i64,
    pub agent_id: String,
    pub outcome: String,
    pub notes: String,
}

const TASK_COLUMNS: &str =
    "task_id, message_id, customer_id, phone, script, offer_id, decision_id, due_at, state, agent_id, outcome, notes";

/// An inbox item.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxRow {
    pub message_id: String,
    pub customer_id: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

/// The stores of the internal channels.
#[derive(Clone)]
pub struct Channels {
    pub db: Db,
}

impl Channels {
    /// Creates the task of a message (once).
    pub async fn add_task(&self, t: &TaskRow) -> Result<(), Error> {
        let now = now_millis();
        Exec::Db(&self.db)
            .run(
                "INSERT INTO delivery_tasks (task_id, message_id, customer_id, phone, script, offer_id, decision_id, due_at,
                 state, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
                 ON CONFLICT (message_id) DO NOTHING",
                &[
                    (&t.task_id).into(),
                    (&t.message_id).into(),
                    (&t.customer_id).into(),
                    (&t.phone).into(),
                    (&t.script).into(),
                    (&t.offer_id).into(),
                    (&t.decision_id).into(),
                    t.due_at.into(),
                    (TaskState::Open as i32).into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Tasks due before `due_before`, open (and claimed when asked), by due time, after position `after`.
    pub async fn tasks(
        &self,
        due_before: i64,
        include_claimed: bool,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<TaskRow>, Error> {
        let states = if include_claimed { "(1, 2)" } else { "(1)" };
        let (at, id) = after.unwrap_or((i64::MIN, String::new()));
        Exec::Db(&self.db)
            .all(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM delivery_tasks WHERE state IN {states} AND due_at < $1
                     AND (due_at > $2 OR (due_at = $2 AND task_id > $3)) ORDER BY due_at, task_id LIMIT $4"
                ),
                &[due_before.into(), at.into(), id.into(), limit.into()],
            )
            .await
    }

    /// One task.
    pub async fn task(&self, task_id: &str) -> Result<Option<TaskRow>, Error> {
        let rows: Vec<TaskRow> = Exec::Db(&self.db)
            .all(&format!("SELECT {TASK_COLUMNS} FROM delivery_tasks WHERE task_id = $1"), &[task_id.into()])
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Gives an open task to `agent`; exactly one of concurrent claims wins (a claim by the holder again
    /// returns the task).
    pub async fn claim_task(&self, task_id: &str, agent: &str) -> Result<TaskRow, Error> {
        let now = now_millis();
        let n = Exec::Db(&self.db)
            .run(
                "UPDATE delivery_tasks SET state = $2, agent_id = $3, updated_at = $4 WHERE task_id = $1 AND state = $5",
                &[task_id.into(), (TaskState::Claimed as i32).into(), agent.into(), now.into(), (TaskState::Open as i32).into()],
            )
            .await?;
        let task = self.task(task_id).await?.ok_or_else(|| Error::not_found("task"))?;
        if n == 0 && !(task.state == TaskState::Claimed as i64 && task.agent_id == agent) {
            let why = if task.state == TaskState::Done as i64 { "is already done" } else { "is held by another agent" };
            return Err(Error::new(ErrorCode::FailedPrecondition, format!("task_id: the task {why}")));
        }
        Ok(task)
    }

    /// Closes a task held by `agent` with its outcome.
    pub async fn complete_task(
        &self,
        task_id: &str,
        agent: &str,
        outcome: &str,
        notes: &str,
    ) -> Result<TaskRow, Error> {
        let now = now_millis();
        let n = Exec::Db(&self.db)
            .run(
                "UPDATE delivery_tasks SET state = $2, outcome = $3, notes = $4, updated_at = $5
                 WHERE task_id = $1 AND agent_id = $6 AND state = $7",
                &[
                    task_id.into(),
                    (TaskState::Done as i32).into(),
                    outcome.into(),
                    notes.into(),
                    now.into(),
                    agent.into(),
                    (TaskState::Claimed as i32).into(),
                ],
            )
            .await?;
        let task = self.task(task_id).await?.ok_or_else(|| Error::not_found("task"))?;
        if n == 0 {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                "task_id: only the agent holding the task can complete it, once",
            ));
        }
        Ok(task)
    }

    /// Puts a message in a customer's inbox (once).
    pub async fn add_inbox(&self, item: &InboxRow) -> Result<(), Error> {
        Exec::Db(&self.db)
            .run(
                "INSERT INTO delivery_inbox (message_id, customer_id, subject, html, text, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
                &[
                    (&item.message_id).into(),
                    (&item.customer_id).into(),
                    (&item.subject).into(),
                    (&item.html).into(),
                    (&item.text).into(),
                    item.created_at.into(),
                ],
            )
            .await?;
        Ok(())
    }

    /// A customer's inbox, newest first, before `before` (created_at, message_id).
    pub async fn inbox(
        &self,
        customer_id: &str,
        unread_only: bool,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<InboxRow>, Error> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let unread = if unread_only { " AND read_at IS NULL" } else { "" };
        Exec::Db(&self.db)
            .all(
                &format!(
                    "SELECT message_id, customer_id, subject, html, text, created_at, read_at FROM delivery_inbox
                     WHERE customer_id = $1{unread} AND (created_at < $2 OR (created_at = $2 AND message_id < $3))
                     ORDER BY created_at DESC, message_id DESC LIMIT $4"
                ),
                &[
                    customer_id.into(),
                    at.into(),
                    if id.is_empty() { "\u{10FFFF}".into() } else { id.into() },
                    limit.into(),
                ],
            )
            .await
    }

    /// Marks inbox items of a customer read; the ids newly marked.
    pub async fn mark_read(&self, customer_id: &str, ids: &[String]) -> Result<Vec<String>, Error> {
        let now = now_millis();
        let mut marked = Vec::new();
        for id in ids {
            let n = Exec::Db(&self.db)
                .run(
                    "UPDATE delivery_inbox SET read_at = $3 WHERE message_id = $1 AND customer_id = $2 AND read_at IS NULL",
                    &[id.into(), customer_id.into(), now.into()],
                )
                .await?;
            if n == 1 {
                marked.push(id.clone());
            }
        }
        Ok(marked)
    }

    /// Adds a direct-mail row (once) to the open run of `provider`.
    pub async fn add_direct_mail(
        &self,
        message_id: &str,
        provider: &str,
        customer_id: &str,
        row: &serde_json::Value,
    ) -> Result<(), Error> {
        Exec::Db(&self.db)
            .run(
                "INSERT INTO delivery_direct_mail (message_id, provider, run_id, customer_id, row_json, created_at)
                 VALUES ($1, $2, '', $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
                &[message_id.into(), provider.into(), customer_id.into(), row.to_string().into(), now_millis().into()],
            )
            .await?;
        Ok(())
    }

    /// Closes the open run of `provider`: its rows get `run_id` and are returned in order.
    pub async fn close_run(&self, provider: &str, run_id: &str) -> Result<Vec<(String, String)>, Error> {
        let mut tx = self.db.begin().await?;
        Exec::Tx(&mut tx)
            .run(
                "UPDATE delivery_direct_mail SET run_id = $2 WHERE provider = $1 AND run_id = ''",
                &[provider.into(), run_id.into()],
            )
            .await?;
        let rows: Vec<(String, String)> = Exec::Tx(&mut tx)
            .all(
                "SELECT message_id, row_json FROM delivery_direct_mail WHERE provider = $1 AND run_id = $2 ORDER BY message_id",
                &[provider.into(), run_id.into()],
            )
            .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// The rows of a run (to rewrite its files after a crash).
    pub async fn run_rows(&self, provider: &str, run_id: &str) -> Result<Vec<(String, String)>, Error> {
        Exec::Db(&self.db)
            .all(
                "SELECT message_id, row_json FROM delivery_direct_mail WHERE provider = $1 AND run_id = $2 ORDER BY message_id",
                &[provider.into(), run_id.into()],
            )
            .await
    }

    /// Removes what the internal channels hold about these customers; the rows removed.
    pub async fn erase(&self, tx: &mut rapport_storage::Tx, ids: &[String]) -> Result<i64, Error> {
        let mut n = 0;
        for id in ids {
            for table in ["delivery_tasks", "delivery_inbox", "delivery_direct_mail"] {
                n += Exec::Tx(&mut *tx)
                    .run(&format!("DELETE FROM {table} WHERE customer_id = $1"), &[id.into()])
                    .await? as i64;
            }
        }
        Ok(n)
    }

    /// What the internal channels hold about a customer (for export).
    pub async fn export(&self, id: &str) -> Result<(Vec<TaskRow>, Vec<InboxRow>), Error> {
        let tasks = Exec::Db(&self.db)
            .all(&format!("SELECT {TASK_COLUMNS} FROM delivery_tasks WHERE customer_id = $1"), &[id.into()])
            .await?;
        let inbox = self.inbox(id, false, None, 10_000).await?;
        Ok((tasks, inbox))
    }
}
