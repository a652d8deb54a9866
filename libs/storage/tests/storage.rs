//! The storage suite: runs on SQLite, and on PostgreSQL when RAPPORT_TEST_DATABASE_URL is set.

use std::time::Duration;

use futures::StreamExt;
use rapport_storage::{
    Cursors, Db, Outbox, OutboxMessage, PoolSettings, StorageError, connect, migrate, now_millis, on_db,
    testing::TestDatabase,
};

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

/// Appends one row per topic in `topics`, each in its own transaction, and returns their sequences.
async fn append_each(outbox: &Outbox, topics: &[&str]) -> Vec<i64> {
    let before = outbox.head().await.unwrap();
    for (i, topic) in topics.iter().enumerate() {
        let mut tx = outbox.db().begin().await.unwrap();
        Outbox::append(&mut tx, &[msg(topic, "k", i as u8)]).await.unwrap();
        outbox.commit(tx).await.unwrap();
    }
    let rows = outbox.read_after(before, &[], 1000).await.unwrap();
    rows.into_iter().map(|r| r.sequence).collect()
}

/// Makes the rows up to `sequence` look created at `at`.
async fn age(db: &Db, through: i64, at: i64) {
    on_db!(db, p => sqlx::query("UPDATE outbox SET created_at = $1 WHERE sequence <= $2")
        .bind(at)
        .bind(through)
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
}

fn out_of_range(e: StorageError) -> String {
    assert!(matches!(e, StorageError::OutOfRange { .. }), "{e}");
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    status.message().to_string()
}

#[tokio::test]
async fn prune_removes_an_old_prefix_in_batches_and_records_the_horizon() {
    let t = TestDatabase::new().await;
    let db = open(&t, "identity").await;
    let outbox = Outbox::new(db.clone());
    // Nothing pruned yet: a consumer that never ran reads from the start.
    assert_eq!(outbox.horizon(&[]).await.unwrap().through_sequence, 0);
    outbox.check_position(0, &[]).await.unwrap();
    let seqs = append_each(&outbox, &["a", "b", "a", "b", "a", "c", "a", "b", "c", "a"]).await;
    assert_eq!(seqs.len(), 10);
    // The first five are a day old, the rest new.
    let day = 24 * 3_600_000;
    let now = now_millis();
    age(&db, seqs[4], now - day).await;
    let cutoff = now - day / 2;

    // Batches of two: three transactions, five rows, only the old prefix.
    assert_eq!(outbox.prune(cutoff, 2).await.unwrap(), 5);
    let left = outbox.read_after(seqs[4], &[], 100).await.unwrap();
    assert_eq!(left.iter().map(|r| r.sequence).collect::<Vec<_>>(), seqs[5..].to_vec());
    assert_eq!(outbox.prune(cutoff, 2).await.unwrap(), 0, "nothing more is old enough");

    // The horizon of the feed and of each topic.
    let h = outbox.horizon(&[]).await.unwrap();
    assert_eq!(h.through_sequence, seqs[4]);
    assert_eq!(h.pruned_before, cutoff);
    assert_eq!(outbox.horizon(&["b".into()]).await.unwrap().through_sequence, seqs[3]);
    assert_eq!(outbox.horizon(&["c".into()]).await.unwrap().through_sequence, 0, "no c was pruned");

    // Below the horizon: OUT_OF_RANGE naming the position, the horizon and the retention.
    for after in [0, seqs[0], seqs[3]] {
        let message = out_of_range(outbox.read_after(after, &[], 100).await.unwrap_err());
        assert!(message.contains(&format!("after_sequence: {after} ")), "{message}");
        assert!(message.contains(&format!("horizon {}", seqs[4])), "{message}");
        assert!(message.contains("storage.outbox_retention_hours") && message.contains("12 h"), "{message}");
    }
    out_of_range(outbox.read_after(seqs[2], &["b".into()], 100).await.unwrap_err());
    // At or after the horizon (of the topics read) nothing was skipped.
    assert_eq!(outbox.read_after(seqs[4], &[], 100).await.unwrap().len(), 5);
    assert_eq!(outbox.read_after(seqs[3], &["b".into()], 100).await.unwrap().len(), 1);
    // A consumer of a topic none of whose rows were pruned is not behind, even from 0.
    assert_eq!(outbox.read_after(0, &["c".into()], 100).await.unwrap().len(), 2);
    // The stream ends with the same error.
    let mut stream = Box::pin(outbox.stream(0, vec![], 10, Duration::from_secs(30)));
    out_of_range(stream.next().await.unwrap().unwrap_err());
    let mut stream = Box::pin(outbox.stream(seqs[4], vec![], 10, Duration::from_secs(30)));
    assert_eq!(stream.next().await.unwrap().unwrap().sequence, seqs[5]);

    // Pruning everything: the sequences are not reused.
    assert_eq!(outbox.prune(now_millis() + 1_000, 3).await.unwrap(), 5);
    assert_eq!(outbox.read_after(seqs[9], &[], 100).await.unwrap().len(), 0, "empty");
    assert_eq!(outbox.head().await.unwrap(), seqs[9], "the head survives the prune");
    assert_eq!(outbox.horizon(&[]).await.unwrap().through_sequence, seqs[9]);
    assert_eq!(outbox.horizon(&["c".into()]).await.unwrap().through_sequence, seqs[8]);
    let next = append_each(&outbox, &["a"]).await;
    assert!(next[0] > seqs[9], "{next:?} after {seqs:?}");
    assert_eq!(outbox.read_after(seqs[9], &[], 100).await.unwrap().len(), 1);
    out_of_range(outbox.read_after(seqs[8], &[], 100).await.unwrap_err());
}

#[tokio::test]
async fn the_pruner_prunes_at_start_and_stops_on_shutdown() {
    let t = TestDatabase::new().await;
    let db = open(&t, "consent").await;
    let outbox = Outbox::new(db.clone());
    let seqs = append_each(&outbox, &["a", "a", "a"]).await;
    age(&db, seqs[1], now_millis() - 2 * 3_600_000).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = rapport_storage::spawn_pruner(
        "consent",
        outbox.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        shutdown.clone(),
    );
    let mut horizon = 0;
    for _ in 0..100 {
        horizon = outbox.horizon(&[]).await.unwrap().through_sequence;
        if horizon > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(horizon, seqs[1]);
    assert_eq!(outbox.read_after(seqs[1], &[], 10).await.unwrap().len(), 1, "the new row is kept");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops on shutdown").unwrap();
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
