//! The delivery database: the send queue and status history ([`messages`]), templates ([`templates`]),
//! call-centre tasks, in-app inboxes and direct-mail rows ([`channels`]). Queries are written once for
//! both backends; every status change commits with its outbox event.

pub mod channels;
pub mod messages;
pub mod templates;

pub use rapport_storage::sql::{Exec, V};

/// Topics of the delivery feed.
pub const TOPIC_STATUS_CHANGED: &str = "delivery.status_changed";
pub const TOPIC_ENGAGEMENT: &str = "delivery.engagement";
pub const TOPIC_TASK_COMPLETED: &str = "delivery.task_completed";

/// A new id with `prefix`, sortable by creation time.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// An outbox message carrying `m`.
pub fn event<M: prost::Message + prost::Name>(topic: &str, key: &str, m: &M) -> rapport_storage::OutboxMessage {
    rapport_storage::OutboxMessage::new(topic, key, M::full_name(), m.encode_to_vec())
}

/// Reads a page token (a decimal position); empty is the start.
pub fn page_position(field: &str, token: &str) -> Result<Option<i64>, rapport_errors::Error> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse::<i64>()
        .map(Some)
        .map_err(|_| rapport_errors::Error::invalid(field, "is not a page token of this list"))
}
