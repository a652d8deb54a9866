//! A service's outbox as the `Subscribe` server stream of its contract, and the consumer loop that
//! applies another service's feed with its cursor stored in the consumer's own database.

use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt};
use rapport_proto::common::v1::{OutboxRecord, SubscribeRequest};
use rapport_storage::{Outbox, OutboxRow};

/// The stream type of every `Subscribe` rpc.
pub type RecordStream = Pin<Box<dyn Stream<Item = Result<OutboxRecord, tonic::Status>> + Send + 'static>>;

/// The largest batch a subscriber may ask for.
pub const MAX_BATCH: i32 = 5_000;

/// Serves `request` from `outbox`: every record after `after_sequence`, then new ones as they commit.
/// The stream ends when `shutdown` is cancelled, so that subscribers do not hold up a graceful stop;
/// they resume from their last sequence on the next process. A position older than the outbox's horizon
/// (rows after it were pruned by `storage.outbox_retention_hours`) is refused with OUT_OF_RANGE, at once
/// and, should a prune overtake a slow subscriber, as the stream's last item.
pub async fn subscribe(
    outbox: &Outbox,
    request: SubscribeRequest,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<RecordStream, tonic::Status> {
    if request.after_sequence < 0 {
        return Err(tonic::Status::invalid_argument("after_sequence: must not be negative"));
    }
    if request.max_batch < 0 || request.max_batch > MAX_BATCH {
        return Err(tonic::Status::invalid_argument(format!("max_batch: must be between 0 and {MAX_BATCH}")));
    }
    if let Some((i, _)) = request.topics.iter().enumerate().find(|(_, t)| t.trim().is_empty()) {
        return Err(tonic::Status::invalid_argument(format!("topics[{i}]: must not be empty")));
    }
    outbox.check_position(request.after_sequence, &request.topics).await.map_err(tonic::Status::from)?;
    let batch = if request.max_batch == 0 { 500 } else { request.max_batch };
    let stream = outbox
        .stream(request.after_sequence, request.topics, i64::from(batch), Duration::from_millis(250))
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

/// Applies the records of another service's feed to this service's database.
pub trait FeedHandler: Send + Sync + 'static {
    /// Work that commits on its own before the record's transaction (for a store whose writes take
    /// their own transaction). It must be idempotent: a crash between it and the cursor's commit
    /// replays the record. An error is retried like one of `apply`.
    fn prepare<'a>(
        &'a self,
        _record: &'a OutboxRecord,
    ) -> futures::future::BoxFuture<'a, Result<(), rapport_errors::Error>> {
        Box::pin(async { Ok(()) })
    }

    /// Applies `record` inside `tx`; the consumer's cursor is saved in the same transaction, so a record
    /// is applied exactly once even across crashes. An error rolls back and the record is retried.
    fn apply<'a>(
        &'a self,
        tx: &'a mut rapport_storage::Tx,
        record: &'a OutboxRecord,
    ) -> futures::future::BoxFuture<'a, Result<(), rapport_errors::Error>>;

    /// Called after a record's transaction committed (to invalidate caches, wake waiters).
    fn committed<'a>(&'a self, _record: &'a OutboxRecord) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Opens a feed: calls the source service's `Subscribe` with the request (through `Clients`, so it works
/// in process and over the network alike).
pub type FeedSource = Box<
    dyn Fn(SubscribeRequest) -> futures::future::BoxFuture<'static, Result<RecordStream, tonic::Status>> + Send + Sync,
>;

/// The source for `Subscribe` of a generated client built by `client` (e.g. `clients.identity()`).
#[macro_export]
macro_rules! feed_source {
    ($clients:expr, $service:ident) => {{
        let clients = $clients.clone();
        let source: $crate::feed::FeedSource = Box::new(move |request| {
            let client = clients.$service();
            Box::pin(async move {
                let mut client = client?;
                let stream = client.subscribe(request).await?.into_inner();
                Ok(Box::pin(stream) as $crate::feed::RecordStream)
            })
        });
        source
    }};
}

/// Runs `handler` over the feed from `source` until `shutdown`: resumes after the cursor stored under
/// `consumer` in `db`, applies each record in its own transaction together with the cursor, and on any
/// failure (source unreachable, stream broken, apply failed) waits with backoff and resumes from the last
/// applied record.
pub fn consume(
    consumer: &'static str,
    db: rapport_storage::Db,
    source: FeedSource,
    topics: Vec<String>,
    handler: std::sync::Arc<dyn FeedHandler>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = run_once(consumer, &db, &source, &topics, handler.as_ref()) => r,
            };
            let mut wait = backoff;
            match outcome {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    failures = 0;
                }
                Err(e) if e.out_of_range => {
                    // Not transient: the records this consumer needs next are gone from the source.
                    tracing::error!(
                        consumer,
                        error = %e.message,
                        "feed consumer is behind the source's outbox retention and must be re-seeded (docs/operations.md)"
                    );
                    metrics::counter!("rapport_feed_consumer_errors_total", "consumer" => consumer).increment(1);
                    wait = OUT_OF_RANGE_RETRY;
                }
                Err(e) => {
                    let e = e.message;
                    failures += 1;
                    // The first failures of a starting system are expected (the source may start later).
                    if failures > 3 {
                        tracing::warn!(consumer, error = %e, retry_in_ms = backoff.as_millis() as u64, "feed consumer failed; retrying");
                    } else {
                        tracing::debug!(consumer, error = %e, "feed consumer failed; retrying");
                    }
                    metrics::counter!("rapport_feed_consumer_errors_total", "consumer" => consumer).increment(1);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

/// How often a consumer left behind by the source's retention retries (and logs it), in case an operator
/// moved its cursor.
const OUT_OF_RANGE_RETRY: Duration = Duration::from_secs(60);

/// Why a pass of the consumer stopped.
struct Failure {
    /// The source answered OUT_OF_RANGE: the cursor is older than its retention kept.
    out_of_range: bool,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self { out_of_range: false, message }
    }
}

impl Failure {
    fn status(s: tonic::Status) -> Self {
        Self { out_of_range: s.code() == tonic::Code::OutOfRange, message: format!("{}: {}", s.code(), s.message()) }
    }
}

/// How long opening a feed may take before the consumer gives up and retries.
const FEED_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

async fn run_once(
    consumer: &'static str,
    db: &rapport_storage::Db,
    source: &FeedSource,
    topics: &[String],
    handler: &dyn FeedHandler,
) -> Result<(), Failure> {
    let after = rapport_storage::Cursors::load(db, consumer).await.map_err(|e| e.to_string())?;
    let request = SubscribeRequest { after_sequence: after, topics: topics.to_vec(), max_batch: 0 };
    // A deadline on opening the stream (the remote transport's timeout covers only remote calls); a stream
    // that is open is kept alive by HTTP/2 keep-alive pings, so a dead peer breaks it and it is reopened.
    let mut stream = tokio::time::timeout(FEED_OPEN_TIMEOUT, source(request))
        .await
        .map_err(|_| format!("opening the feed took more than {} s", FEED_OPEN_TIMEOUT.as_secs()))?
        .map_err(Failure::status)?;
    while let Some(item) = stream.next().await {
        let record = item.map_err(Failure::status)?;
        handler.prepare(&record).await.map_err(|e| e.to_string())?;
        let mut tx = db.begin().await.map_err(|e| e.to_string())?;
        handler.apply(&mut tx, &record).await.map_err(|e| e.to_string())?;
        rapport_storage::Cursors::save(&mut tx, consumer, record.sequence).await.map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        handler.committed(&record).await;
        metrics::counter!("rapport_feed_records_applied_total", "consumer" => consumer).increment(1);
    }
    // The source ended the stream (it is shutting down): resubscribe after the backoff.
    Ok(())
}
