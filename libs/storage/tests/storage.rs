//! The storage suite: runs on SQLite, and on PostgreSQL when RAPPORT_TEST_DATABASE_URL is set.

use std::time::Duration;

use futures::StreamExt;
use rapport_storage::{Cursors, Db, Outbox, OutboxMessage, PoolSettings, connect, migrate, testing::TestDatabase};

static EMPTY: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations");

async fn open(t: &TestDatabase, service: &str) -> Db {
    let db = connect(&t.url, t.data_dir.path(), service, &PoolSettings::default()).await.unwrap();
    migrate(&db, service, &EMPTY, &EMPTY).await.unwrap();
    db
}

fn msg(topic: &str, key: &str, n: u8) -> OutboxMessage {
    OutboxMessage { topic: topic.into(), key: key.into(), payload_type: "test.Payload".into(), payload: vec![n] }
}

#[tokio::test]
async fn migrations_are_idempotent_and_per_service() {
    let t = TestDatabase::new().await;
    let a = open(&t, "identity").await;
    migrate(&a, "identity", &EMPTY, &EMPTY).await.unwrap();
    let b = open(&t, "consent").await;
    // Each service has its own outbox: a write to one is invisible in the other.
    let mut tx = a.begin().await.unwrap();
    Outbox::append(&mut tx, &[msg("t", "k", 1)]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(Outbox::new(a.clone()).head().await.unwrap(), 1);
    assert_eq!(Outbox::new(b.clone()).head().await.unwrap(), 0);
    a.ping().await.unwrap();
}

#[tokio::test]
async fn outbox_reads_in_order_with_topic_filter_and_rollback_publishes_nothing() {
    let t = TestDatabase::new().await;
    let db = open(&t, "profile").await;
    let outbox = Outbox::new(db.clone());
    let mut tx = db.begin().await.unwrap();
    Outbox::append(&mut tx, &[msg("a", "c1", 1), msg("b", "c1", 2), msg("a", "c2", 3)]).await.unwrap();
    outbox.commit(tx).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    Outbox::append(&mut tx, &[msg("a", "lost", 9)]).await.unwrap();
    drop(tx); // rolled back

    let all = outbox.read_after(0, &[], 100).await.unwrap();
    assert_eq!(all.iter().map(|r| r.payload[0]).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(all.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let only_a = outbox.read_after(0, &["a".to_string()], 100).await.unwrap();
    assert_eq!(only_a.iter().map(|r| r.payload[0]).collect::<Vec<_>>(), vec![1, 3]);
    let after_first = outbox.read_after(all[0].sequence, &[], 1).await.unwrap();
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].payload, vec![2]);
}

#[tokio::test]
async fn stream_resumes_from_a_cursor_and_wakes_on_append() {
    let t = TestDatabase::new().await;
    let db = open(&t, "decision").await;
    let outbox = Outbox::new(db.clone());
    for n in 1..=3u8 {
        let mut tx = db.begin().await.unwrap();
        Outbox::append(&mut tx, &[msg("t", "k", n)]).await.unwrap();
        outbox.commit(tx).await.unwrap();
    }
    // A consumer applies two rows and stores its cursor with them.
    let mut stream = Box::pin(outbox.stream(0, vec![], 10, Duration::from_secs(30)));
    let mut applied = Vec::new();
    for _ in 0..2 {
        let row = stream.next().await.unwrap().unwrap();
        let mut tx = db.begin().await.unwrap();
        Cursors::save(&mut tx, "decision<-test", row.sequence).await.unwrap();
        tx.commit().await.unwrap();
        applied.push(row.payload[0]);
    }
    drop(stream);
    // It restarts from the stored cursor and sees the third row, then a new one without polling.
    let cursor = Cursors::load(&db, "decision<-test").await.unwrap();
    let mut stream = Box::pin(outbox.stream(cursor, vec![], 10, Duration::from_secs(30)));
    applied.push(stream.next().await.unwrap().unwrap().payload[0]);
    let writer = {
        let db = db.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut tx = db.begin().await.unwrap();
            Outbox::append(&mut tx, &[msg("t", "k", 4)]).await.unwrap();
            outbox.commit(tx).await.unwrap();
        })
    };
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("woken by the append");
    applied.push(next.unwrap().unwrap().payload[0]);
    writer.await.unwrap();
    assert_eq!(applied, vec![1, 2, 3, 4]);
    assert_eq!(Cursors::load(&db, "nobody").await.unwrap(), 0);
}

#[tokio::test]
async fn concurrent_writers_never_publish_out_of_order() {
    let t = TestDatabase::new().await;
    let db = open(&t, "delivery").await;
    let outbox = Outbox::new(db.clone());
    let mut writers = Vec::new();
    for w in 0..8u8 {
        let db = db.clone();
        let outbox = outbox.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10u8 {
                let mut tx = db.begin().await.unwrap();
                Outbox::append(&mut tx, &[msg("t", &format!("w{w}"), i)]).await.unwrap();
                outbox.commit(tx).await.unwrap();
            }
        }));
    }
    // A reader following the feed while it is written must see every row exactly once.
    let mut seen = Vec::new();
    let mut position = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 80 && tokio::time::Instant::now() < deadline {
        for row in outbox.read_after(position, &[], 7).await.unwrap() {
            assert!(row.sequence > position);
            position = row.sequence;
            seen.push((row.key.clone(), row.payload[0]));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    seen.extend(outbox.read_after(position, &[], 1000).await.unwrap().into_iter().map(|r| (r.key, r.payload[0])));
    assert_eq!(seen.len(), 80);
    for w in 0..8u8 {
        let mine: Vec<u8> = seen.iter().filter(|(k, _)| *k == format!("w{w}")).map(|(_, n)| *n).collect();
        assert_eq!(mine, (0..10).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn the_audit_log_is_append_only() {
    let storage = rapport_storage::testing::TestDatabase::new().await;
    let db = storage.connect("audited").await;
    static NONE: rapport_storage::sqlx::migrate::Migrator = rapport_storage::sqlx::migrate::Migrator::DEFAULT;
    rapport_storage::migrate(&db, "audited", &NONE, &NONE).await.unwrap();
    rapport_storage::Audit::record(&db, "store-till", "profile.read", "cus_1", "fields=traits").await.unwrap();
    rapport_storage::Audit::record(&db, "admin", "customer.export", "cus_1", "").await.unwrap();
    let entries = rapport_storage::Audit::list(&db, "cus_1", 10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!((entries[0].principal.as_str(), entries[0].action.as_str()), ("store-till", "profile.read"));
    // Not even the service itself can change or remove an entry.
    let update = rapport_storage::on_db!(&db, p => rapport_storage::sqlx::query("UPDATE audit_log SET principal = 'x'").execute(p).await.map(|_| ()));
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = rapport_storage::on_db!(&db, p => rapport_storage::sqlx::query("DELETE FROM audit_log").execute(p).await.map(|_| ()));
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    assert_eq!(rapport_storage::Audit::list(&db, "cus_1", 10).await.unwrap().len(), 2);
    db.close().await;
}
