//! A service's outbox as the `Subscribe` server stream of its contract, and the consumer loop that
//! applies another service's feed with its cursor stored in the consumer's own database.

use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt};
use rapport_proto::common::v1::{OutboxRecord, SubscribeRequest};
use rapport_storage::{Outbox, OutboxRow};

/// The stream type of every `Subscribe` rpc.
pub type RecordStream =
    Pin<Box<dyn Stream<Item = Result<OutboxRecord, tonic::Status>> + Send + 'static>>;

/// The largest batch a subscriber may ask for.
pub const MAX_BATCH: i32 = 5_000;

/// Serves `request` from `outbox`: every record after `after_sequence`, then new ones as they commit.
/// The stream ends when `shutdown` is cancelled, so that subscribers do not hold up a graceful stop;
/// they resume from their last sequence on the next process.
pub fn subscribe(
    outbox: &Outbox,
    request: SubscribeRequest,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<RecordStream, tonic::Status> {
    if request.after_sequence < 0 {
        return Err(tonic::Status::invalid_argument(
            "after_sequence: must not be negative",
        ));
    }
    if request.max_batch < 0 || request.max_batch > MAX_BATCH {
        return Err(tonic::Status::invalid_argument(format!(
            "max_batch: must be between 0 and {MAX_BATCH}"
        )));
    }
    if let Some((i, _)) = request
        .topics
        .iter()
        .enumerate()
        .find(|(_, t)| t.trim().is_empty())
    {
        return Err(tonic::Status::invalid_argument(format!(
            "topics[{i}]: must not be empty"
        )));
    }
    let batch = if request.max_batch == 0 {
        500
    } else {
        request.max_batch
    };
    let stream = outbox
        .stream(
            request.after_sequence,
            request.topics,
            i64::from(batch),
            Duration::from_millis(250),
        )
        .map(|row| row.map(to_record).map_err(tonic::Status::from))
        .take_until(shutdown.clone().cancelled_owned());
    Ok(Box::pin(stream))
}

/// The wire form of an outbox row.
pub fn to_record(row: OutboxRow) -> OutboxRecord {
    OutboxRecord {
        sequence: row.sequence,
        topic: row.topic,
        key: row.key,
        payload: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/{}", row.payload_type),
            value: row.payload,
        }),
        created_at: Some(prost_types::Timestamp {
            seconds: row.created_at.div_euclid(1000),
            nanos: (row.created_at.rem_euclid(1000) * 1_000_000) as i32,
        }),
    }
}
