//! Erasure: queued messages of the person are cancelled, then every message keeps only what carries no
//! personal data (ids, channel, status history without provider text); addresses, subjects, requests,
//! inbox items, call-centre tasks and direct-mail rows are removed. Counted in the receipt.

use rapport_errors::Error;
use rapport_proto::delivery::v1::MessageStatus;
use rapport_storage::{Audit, Outbox, now_millis};

use crate::core::Core;
use crate::store::Exec;

/// Erases what delivery holds about `ids` (a customer and its aliases); the records touched.
pub async fn erase(core: &Core, ids: &[String], reason: &str) -> Result<i64, Error> {
    let rows = core.messages.of_customers(ids).await?;
    let now = now_millis();
    let mut tx = core.messages.db.begin().await?;
    let mut events = Vec::new();
    let mut n = 0;
    for r in &rows {
        let mut exec = Exec::Tx(&mut tx);
        if r.status == MessageStatus::Queued as i64 || r.status == MessageStatus::Deferred as i64 {
            let cancelled = exec
                .run(
                    "UPDATE delivery_messages SET status = $2, updated_at = $3, lease_owner = NULL, lease_until = NULL
                     WHERE message_id = $1 AND status IN (1, 2)",
                    &[(&r.message_id).into(), (MessageStatus::Cancelled as i32).into(), now.into()],
                )
                .await?;
            if cancelled == 1 {
                exec.run(
                    "INSERT INTO delivery_history (message_id, status, at, detail) VALUES ($1, $2, $3, 'cancelled: the customer was erased')",
                    &[(&r.message_id).into(), (MessageStatus::Cancelled as i32).into(), now.into()],
                )
                .await?;
                events.push(core.status_event(r, MessageStatus::Cancelled, "the customer was erased"));
            }
        }
        n += exec
            .run(
                "UPDATE delivery_messages SET recipient = '', subject = '', request = $2, last_error = '', customer_id = '',
                 dead = 0 WHERE message_id = $1",
                &[(&r.message_id).into(), rapport_storage::sql::V::B(Vec::new())],
            )
            .await? as i64;
        exec.run("UPDATE delivery_history SET detail = '' WHERE message_id = $1", &[(&r.message_id).into()]).await?;
    }
    n += core.channels.erase(&mut tx, ids).await?;
    for id in ids {
        Audit::record_in(&mut tx, "delivery", "customer.erase", id, reason).await?;
    }
    Outbox::append(&mut tx, &events).await?;
    core.messages.outbox.commit(tx).await?;
    Ok(n)
}
