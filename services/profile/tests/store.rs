//! The profile store on both backends: idempotent events, trait precedence, merge and split.

use std::sync::Arc;

use rapport_profile::segments::Segments;
use rapport_profile::store::{IDENTIFY_EVENT, NewEvent, Profile, ProfileEvents, Store, StoreSettings};
use rapport_storage::testing::TestDatabase;
use rapport_storage::{Outbox, OutboxMessage};
use serde_json::json;

struct NoEvents;

impl ProfileEvents for NoEvents {
    fn appended(&self, customer_id: &str, events: &[(i64, &NewEvent)]) -> Vec<OutboxMessage> {
        vec![OutboxMessage::new("profile.events_appended", customer_id, "test", vec![events.len() as u8])]
    }
    fn traits_changed(&self, profile: &Profile, _: &[String]) -> Vec<OutboxMessage> {
        vec![OutboxMessage::new("profile.traits_changed", &profile.customer_id, "test", vec![])]
    }
    fn merged(&self, survivor: &str, _: &str) -> Vec<OutboxMessage> {
        vec![OutboxMessage::new("profile.merged", survivor, "test", vec![])]
    }
    fn segments_changed(
        &self,
        customer_id: &str,
        entered: &[(String, String)],
        exited: &[(String, String)],
    ) -> Vec<OutboxMessage> {
        let mut out = Vec::new();
        for (_, name) in entered {
            out.push(OutboxMessage::new("profile.segment_entered", customer_id, "test", name.clone().into_bytes()));
        }
        for (_, name) in exited {
            out.push(OutboxMessage::new("profile.segment_exited", customer_id, "test", name.clone().into_bytes()));
        }
        out
    }
}

async fn store(settings: StoreSettings) -> (Store, TestDatabase) {
    let storage = TestDatabase::new().await;
    let db = storage.connect("profile").await;
    rapport_profile::migrate(&db).await.unwrap();
    let outbox = Outbox::new(db.clone());
    let segments = Arc::new(Segments::load(db.clone()).await.unwrap());
    (Store::new(db, outbox, Arc::new(settings), Arc::new(NoEvents), segments), storage)
}

fn event(id: &str, name: &str, day: i64, properties: serde_json::Value) -> NewEvent {
    NewEvent { message_id: id.into(), name: name.into(), occurred_at: day * 86_400_000, properties, context: json!({}) }
}

#[tokio::test]
async fn a_replayed_event_is_stored_once() {
    let (s, _storage) = store(StoreSettings::default()).await;
    let order = event("m1", "order_completed", 10, json!({"revenue_minor": 1000, "currency": "EUR"}));
    let first = s.append("cus_a", std::slice::from_ref(&order), "shop").await.unwrap();
    assert!(first.stored[0].is_some());
    let again = s.append("cus_a", &[order], "shop").await.unwrap();
    assert_eq!(again.stored, vec![None]);
    let p = s.get("cus_a").await.unwrap().unwrap();
    assert_eq!(p.computed.order_count, 1);
    assert_eq!(s.timeline("cus_a", &[], None, None, None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_newest_trait_wins_unless_a_source_has_priority() {
    let (s, _storage) = store(StoreSettings { trait_source_priority: vec!["crm".into()], ..Default::default() }).await;
    s.append("c", &[event("1", IDENTIFY_EVENT, 5, json!({"city": "Berlin", "language": "de"}))], "crm").await.unwrap();
    // Newer, but from a lower-priority source: city stays; a new trait is taken.
    s.append("c", &[event("2", IDENTIFY_EVENT, 6, json!({"city": "Hamburg", "gender": "f"}))], "web").await.unwrap();
    // Older, from the same source: ignored.
    let r = s.append("c", &[event("3", IDENTIFY_EVENT, 1, json!({"language": "en"}))], "crm").await.unwrap();
    assert!(r.changed_traits.is_empty());
    let p = s.get("c").await.unwrap().unwrap();
    assert_eq!(p.traits["city"], "Berlin");
    assert_eq!(p.traits["gender"], "f");
    assert_eq!(p.traits["language"], "de");
}

#[tokio::test]
async fn merge_moves_the_timeline_and_split_moves_it_back() {
    let (s, _storage) = store(StoreSettings::default()).await;
    s.append("a", &[event("a1", "order_completed", 1, json!({"revenue_minor": 100, "currency": "EUR"}))], "shop")
        .await
        .unwrap();
    s.append("b", &[event("b1", "order_completed", 2, json!({"revenue_minor": 200, "currency": "EUR"}))], "shop")
        .await
        .unwrap();
    s.append("b", &[event("b2", IDENTIFY_EVENT, 2, json!({"first_name": "Bo"}))], "shop").await.unwrap();

    let mut tx = s.db().begin().await.unwrap();
    s.merge_in(&mut tx, "a", "b").await.unwrap();
    tx.commit().await.unwrap();
    let merged = s.get("b").await.unwrap().unwrap();
    assert_eq!(merged.customer_id, "a", "the alias finds the survivor");
    assert_eq!((merged.computed.order_count, merged.computed.total_revenue_minor), (2, 300));
    assert_eq!(merged.traits["first_name"], "Bo");
    assert_eq!(s.timeline("a", &[], None, None, None, 10).await.unwrap().len(), 3);

    let mut tx = s.db().begin().await.unwrap();
    s.split_in(&mut tx, "a", "b", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let a = s.get("a").await.unwrap().unwrap();
    let b = s.get("b").await.unwrap().unwrap();
    assert_eq!((a.computed.order_count, a.computed.total_revenue_minor), (1, 100));
    assert_eq!((b.customer_id.as_str(), b.computed.order_count, b.computed.total_revenue_minor), ("b", 1, 200));
    assert!(a.traits.get("first_name").is_none());
    assert_eq!(b.traits["first_name"], "Bo");
    let names = [String::from("order_completed")];
    assert_eq!(s.timeline("b", &names, None, None, None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn segments_are_entered_and_left_as_profiles_change() {
    let (s, _storage) = store(StoreSettings::default()).await;
    let repeat = s.segments().create("repeat buyers", "profile.computed.order_count >= 2", "").await.unwrap();
    let err = s.segments().create("bad", "profile.computed.order_count >=", "").await.unwrap_err();
    assert!(err.to_string().starts_with("segment.rule"), "{err}");
    let err = s.segments().create("repeat buyers", "true", "").await.unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");

    let order = |id: &str, day| event(id, "order_completed", day, json!({"revenue_minor": 100, "currency": "EUR"}));
    s.append("c", &[order("o1", 1)], "shop").await.unwrap();
    assert!(s.get("c").await.unwrap().unwrap().segments.is_empty());
    s.append("c", &[order("o2", 2)], "shop").await.unwrap();
    assert_eq!(s.get("c").await.unwrap().unwrap().segments, vec![repeat.id.clone()]);
    let (total, members) = s.segments().members(&repeat.id, "", 10).await.unwrap();
    assert_eq!((total, members), (1, vec!["c".to_string()]));

    // A stricter rule: the periodic pass takes the member out.
    s.segments().update(&repeat.id, None, Some("profile.computed.order_count >= 3"), None).await.unwrap();
    assert_eq!(s.reevaluate_all(100).await.unwrap(), 1);
    assert!(s.get("c").await.unwrap().unwrap().segments.is_empty());
    let topics: Vec<String> = rapport_storage::Outbox::new(s.db().clone())
        .read_after(0, &[], 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.topic)
        .filter(|t| t.starts_with("profile.segment"))
        .collect();
    assert_eq!(topics, vec!["profile.segment_entered", "profile.segment_exited"]);
}

#[tokio::test]
async fn events_past_their_retention_are_deleted_and_the_profile_recomputed() {
    let settings = StoreSettings {
        retention_days: [("order_completed".to_string(), 365)].into_iter().collect(),
        ..StoreSettings::default()
    };
    let (s, _storage) = store(settings).await;
    let today = rapport_storage::now_millis() / 86_400_000;
    let old = event("m1", "order_completed", today - 400, json!({"revenue_minor": 1000, "currency": "EUR"}));
    let recent = event("m2", "order_completed", today - 10, json!({"revenue_minor": 500, "currency": "EUR"}));
    let view = event("m3", "page_viewed", today - 900, json!({}));
    s.append("cus_a", &[old, recent, view], "shop").await.unwrap();
    assert_eq!(s.get("cus_a").await.unwrap().unwrap().computed.order_count, 2);

    let trimmed = s.enforce_retention(100).await.unwrap();
    assert_eq!(trimmed, vec!["cus_a".to_string()]);
    let left: Vec<String> =
        s.timeline("cus_a", &[], None, None, None, 100).await.unwrap().into_iter().map(|e| e.message_id).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&"m1".to_string()), "the expired order is still there: {left:?}");
    assert!(left.contains(&"m3".to_string()), "page views have no retention and stay");
    let p = s.get("cus_a").await.unwrap().unwrap();
    assert_eq!((p.computed.order_count, p.computed.total_revenue_minor), (1, 500));
    // Nothing left to trim.
    assert!(s.enforce_retention(100).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_events_of_one_customer_are_all_counted() {
    let (s, _storage) = store(StoreSettings::default()).await;
    let s = Arc::new(s);
    let today = rapport_storage::now_millis() / 86_400_000;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let order =
                event(&format!("m{i}"), "order_completed", today - 1, json!({"revenue_minor": 100, "currency": "EUR"}));
            s.append("cus_a", &[order], "shop").await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let p = s.get("cus_a").await.unwrap().unwrap();
    assert_eq!((p.computed.order_count, p.computed.total_revenue_minor), (16, 1600));
}
