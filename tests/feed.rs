//! The feed consumer: another service's outbox applied with the cursor in the consumer's database,
//! exactly once across failures and restarts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rapport_proto::common::v1::{Identifier, IdentifierType, OutboxRecord};
use rapport_proto::identity::v1::{ResolveRequest, identity_service_client::IdentityServiceClient};
use rapport_rpc::feed::{FeedHandler, consume};
use rapport_storage::Tx;
use rapport_testkit::{SuiteOptions, TestSuite};

/// Remembers applied sequences; fails the first attempt at the second record it sees.
struct Recorder {
    applied: Mutex<Vec<i64>>,
    failed_once: Mutex<bool>,
}

impl FeedHandler for Recorder {
    fn apply<'a>(
        &'a self,
        _tx: &'a mut Tx,
        _record: &'a OutboxRecord,
    ) -> BoxFuture<'a, Result<(), rapport_errors::Error>> {
        Box::pin(async move {
            let mut failed = self.failed_once.lock().unwrap();
            if self.applied.lock().unwrap().len() == 1 && !*failed {
                *failed = true;
                return Err(rapport_errors::Error::unavailable("simulated failure"));
            }
            Ok(())
        })
    }

    fn committed<'a>(&'a self, record: &'a OutboxRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.applied.lock().unwrap().push(record.sequence) })
    }
}

static NO_MIGRATIONS: rapport_storage::sqlx::migrate::Migrator = rapport_storage::sqlx::migrate::Migrator::DEFAULT;

async fn resolve(suite: &TestSuite, email: &str) {
    let mut client = IdentityServiceClient::new(suite.channel().await);
    let request = ResolveRequest {
        identifiers: vec![Identifier {
            r#type: IdentifierType::Email as i32,
            value: email.into(),
            namespace: String::new(),
        }],
        ..Default::default()
    };
    client.resolve(suite.admin(request)).await.unwrap();
}

async fn wait_for(recorder: &Recorder, n: usize) -> Vec<i64> {
    for _ in 0..200 {
        let applied = recorder.applied.lock().unwrap().clone();
        if applied.len() >= n {
            return applied;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {:?} applied", recorder.applied.lock().unwrap());
}

#[tokio::test]
async fn a_consumer_applies_each_record_once_across_failures_and_restarts() {
    let suite = TestSuite::start_with(SuiteOptions::services(&["identity"])).await;
    let clients = suite.clients().unwrap();
    let consumer_storage = rapport_storage::testing::TestDatabase::new().await;
    let db = consumer_storage.connect("consumer").await;
    rapport_storage::migrate(&db, "consumer", &NO_MIGRATIONS, &NO_MIGRATIONS).await.unwrap();

    for i in 0..3 {
        resolve(&suite, &format!("p{i}@example.com")).await;
    }
    let recorder = Arc::new(Recorder { applied: Mutex::new(vec![]), failed_once: Mutex::new(false) });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = consume(
        "test<-identity",
        db.clone(),
        rapport_rpc::feed_source!(clients, identity),
        vec![],
        recorder.clone(),
        shutdown.clone(),
    );
    let applied = wait_for(&recorder, 3).await;
    assert!(*recorder.failed_once.lock().unwrap(), "the simulated failure happened");
    assert_eq!(applied.len(), 3, "{applied:?}");
    assert!(applied.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates: {applied:?}");

    // Stop the consumer, write more, start a new one: it resumes after its cursor.
    shutdown.cancel();
    task.await.unwrap();
    resolve(&suite, "p3@example.com").await;
    let again = Arc::new(Recorder { applied: Mutex::new(vec![]), failed_once: Mutex::new(true) });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = consume(
        "test<-identity",
        db.clone(),
        rapport_rpc::feed_source!(clients, identity),
        vec![],
        again.clone(),
        shutdown.clone(),
    );
    let resumed = wait_for(&again, 1).await;
    assert_eq!(resumed.len(), 1);
    assert!(resumed[0] > applied[2]);
    shutdown.cancel();
    task.await.unwrap();
    db.close().await;
    suite.stop().await;
}

#[tokio::test]
async fn subscribe_from_a_pruned_position_is_out_of_range_and_from_the_horizon_works() {
    use rapport_proto::common::v1::SubscribeRequest;
    let suite = TestSuite::start_with(SuiteOptions::services(&["identity"])).await;
    for i in 0..3 {
        resolve(&suite, &format!("old{i}@example.com")).await;
    }
    // The retention passes over everything written so far (as the pruner does for rows older than
    // storage.outbox_retention_hours).
    let db = suite.storage.connect("identity").await;
    let outbox = rapport_storage::Outbox::new(db.clone());
    let pruned = outbox.prune(rapport_storage::now_millis() + 1_000, 2).await.unwrap();
    assert!(pruned >= 3, "{pruned}");
    let horizon = outbox.horizon(&[]).await.unwrap().through_sequence;
    assert!(horizon >= 3);

    let mut client = IdentityServiceClient::new(suite.channel().await);
    for after in [0, horizon - 1] {
        let status =
            match client.subscribe(suite.admin(SubscribeRequest { after_sequence: after, ..Default::default() })).await
            {
                Ok(response) => response.into_inner().message().await.expect_err("a pruned position"),
                Err(status) => status,
            };
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(status.message().contains(&format!("after_sequence: {after} ")), "{}", status.message());
        assert!(status.message().contains(&format!("horizon {horizon}")), "{}", status.message());
        assert!(status.message().contains("storage.outbox_retention_hours"), "{}", status.message());
    }

    // From the horizon nothing was lost: the next record written arrives.
    let mut stream = client
        .subscribe(suite.admin(SubscribeRequest { after_sequence: horizon, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    resolve(&suite, "new@example.com").await;
    let record = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert!(record.sequence > horizon, "{} after {horizon}", record.sequence);
    drop(stream);
    db.close().await;
    suite.stop().await;
}
