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
