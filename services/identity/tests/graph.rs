//! The identity graph on both backends: resolve, limits and priority, aliases, evidence, exact split.

use std::sync::Arc;

use rapport_identity::graph::{EventEncoder, Graph, GraphChange, Origin};
use rapport_identity::normalize::{IdType, Ident, Normalizer};
use rapport_identity::settings::IdentitySettings;
use rapport_storage::testing::TestDatabase;
use rapport_storage::{Outbox, OutboxMessage};

struct JsonEvents;

impl EventEncoder for JsonEvents {
    fn created(&self, customer_id: &str, _: &str, _: &[Ident], _: &Origin) -> OutboxMessage {
        OutboxMessage::new("identity.created", customer_id, "test", vec![])
    }
    fn merged(&self, change: &GraphChange) -> OutboxMessage {
        OutboxMessage::new(
            "identity.merged",
            &change.customer_id,
            "test",
            change.other_id.clone().unwrap().into_bytes(),
        )
    }
    fn split(&self, change: &GraphChange, _: &[Ident]) -> OutboxMessage {
        OutboxMessage::new("identity.split", &change.customer_id, "test", change.other_id.clone().unwrap().into_bytes())
    }
    fn erased(&self, customer_id: &str, _: &[String]) -> OutboxMessage {
        OutboxMessage::new("identity.erased", customer_id, "test", vec![])
    }
}

struct Fixture {
    graph: Graph,
    outbox: Outbox,
    normalizer: Normalizer,
    _storage: TestDatabase,
}

async fn fixture(settings: IdentitySettings) -> Fixture {
    let storage = TestDatabase::new().await;
    let db = storage.connect("identity").await;
    rapport_identity::migrate(&db).await.unwrap();
    let outbox = Outbox::new(db.clone());
    let normalizer = Normalizer::new(&settings).unwrap();
    let graph = Graph::new(db, outbox.clone(), Arc::new(settings), Arc::new(JsonEvents));
    Fixture { graph, outbox, normalizer, _storage: storage }
}

impl Fixture {
    fn id(&self, t: IdType, v: &str) -> Ident {
        self.normalizer.normalize(t, if t == IdType::External { "crm" } else { "" }, v).unwrap()
    }

    async fn resolve(&self, ids: &[(IdType, &str)]) -> rapport_identity::graph::Resolved {
        let idents = ids.iter().map(|(t, v)| self.id(*t, v)).collect();
        self.graph.resolve(idents, Origin { source: "test".into(), event_id: "e1".into() }).await.unwrap()
    }

    async fn topics(&self) -> Vec<String> {
        self.outbox.read_after(0, &[], 1000).await.unwrap().into_iter().map(|r| r.topic).collect()
    }
}

use IdType::*;

#[tokio::test]
async fn the_same_identifiers_resolve_to_the_same_customer() {
    let f = fixture(IdentitySettings::default()).await;
    let a = f.resolve(&[(Email, "Ann@Example.com")]).await;
    assert!(a.created);
    assert!(a.customer_id.starts_with("cus_"));
    let again = f.resolve(&[(Email, " ann@example.com ")]).await;
    assert_eq!(again.customer_id, a.customer_id);
    assert!(!again.created);
    // A new identifier arriving with a known one is attached.
    let with_phone = f.resolve(&[(Email, "ann@example.com"), (Phone, "+1 415 555 2671")]).await;
    assert_eq!(with_phone.customer_id, a.customer_id);
    assert_eq!(with_phone.attached, vec![f.id(Phone, "+14155552671")]);
    assert_eq!(f.graph.lookup(&f.id(Phone, "(415) 555-2671")).await.unwrap(), Some(a.customer_id.clone()));
    assert_eq!(f.topics().await, vec!["identity.created"]);
}

#[tokio::test]
async fn identifiers_of_two_customers_arriving_together_merge_and_the_older_id_survives() {
    let f = fixture(IdentitySettings::default()).await;
    let web = f.resolve(&[(AnonymousId, "cookie-1"), (Email, "bob@example.com")]).await;
    let store = f.resolve(&[(LoyaltyId, "L-77")]).await;
    assert_ne!(web.customer_id, store.customer_id);
    let joined = f.resolve(&[(LoyaltyId, "L-77"), (Email, "bob@example.com")]).await;
    assert_eq!(joined.customer_id, web.customer_id, "the older customer survives");
    assert_eq!(joined.merged, vec![store.customer_id.clone()]);

    // The merged-away id is an alias: it still finds the survivor.
    assert_eq!(f.graph.canonical(&store.customer_id).await.unwrap(), Some(web.customer_id.clone()));
    let explained = f.graph.explain(&store.customer_id).await.unwrap();
    assert_eq!(explained.customer_id, web.customer_id);
    assert_eq!(explained.aliases, vec![store.customer_id.clone()]);
    assert_eq!(explained.identifiers.len(), 3);
    let merge = explained.changes.iter().find(|c| c.kind == "merge").expect("merge recorded");
    assert_eq!(merge.other_id.as_deref(), Some(store.customer_id.as_str()));
    assert_eq!(merge.origin.source, "test");
    assert_eq!(merge.evidence.identifiers.len(), 2);
    assert_eq!(merge.evidence.moved.len(), 1);
    assert!(f.topics().await.contains(&"identity.merged".to_string()));
}

#[tokio::test]
async fn a_merge_that_would_break_a_limit_leaves_the_lowest_priority_identifier_out() {
    let f = fixture(IdentitySettings::default()).await;
    let ann = f.resolve(&[(UserId, "u-ann"), (Email, "family@example.com")]).await;
    let bob = f.resolve(&[(UserId, "u-bob")]).await;
    // Bob logs in on the family address: two user ids on one customer would break the limit of 1.
    let r = f.resolve(&[(UserId, "u-bob"), (Email, "family@example.com")]).await;
    assert_eq!(r.customer_id, bob.customer_id);
    assert!(r.merged.is_empty());
    assert_eq!(r.excluded.len(), 1);
    assert_eq!(r.excluded[0].identifier.id_type, "email");
    assert!(r.excluded[0].reason.contains("user_id"), "{}", r.excluded[0].reason);
    // The email stays with Ann, and the refusal is recorded for Explain.
    assert_eq!(f.graph.lookup(&f.id(Email, "family@example.com")).await.unwrap(), Some(ann.customer_id.clone()));
    let explained = f.graph.explain(&bob.customer_id).await.unwrap();
    assert!(explained.changes.iter().any(|c| c.kind == "refusal" && c.evidence.excluded.len() == 1));
}

#[tokio::test]
async fn per_type_limits_are_configurable() {
    let settings = IdentitySettings { default_limit: 2, ..Default::default() };
    let f = fixture(settings).await;
    let c = f.resolve(&[(DeviceId, "d1"), (DeviceId, "d2")]).await;
    let r = f.resolve(&[(DeviceId, "d1"), (DeviceId, "d3")]).await;
    // A third device would break the limit of two: d3 (equal rank, sorted last) is left out.
    assert_eq!(r.customer_id, c.customer_id);
    assert_eq!(r.excluded.len(), 1);
    assert_eq!(f.graph.lookup(&f.id(DeviceId, "d3")).await.unwrap(), None);
}

#[tokio::test]
async fn split_undoes_a_wrong_merge_exactly() {
    let f = fixture(IdentitySettings::default()).await;
    let a = f.resolve(&[(Email, "a@example.com"), (Phone, "+1 415 555 2671")]).await;
    let b = f.resolve(&[(LoyaltyId, "L-1"), (External, "991")]).await;
    let c = f.resolve(&[(DeviceId, "dev-c")]).await;
    // c is merged into b first, so b carries an alias when b is (wrongly) merged into a.
    f.resolve(&[(DeviceId, "dev-c"), (LoyaltyId, "L-1")]).await;
    let wrong = f.resolve(&[(Phone, "+1 415 555 2671"), (External, "991")]).await;
    assert_eq!(wrong.customer_id, a.customer_id);
    assert_eq!(f.graph.canonical(&c.customer_id).await.unwrap(), Some(a.customer_id.clone()));

    let before = f.graph.explain(&a.customer_id).await.unwrap();
    let merge = before
        .changes
        .iter()
        .rev()
        .find(|m| m.kind == "merge" && m.other_id.as_deref() == Some(&b.customer_id))
        .unwrap();
    let (revived, split) = f
        .graph
        .split(&a.customer_id, Some(&merge.id), vec![], Origin { source: "ops".into(), event_id: "ticket-9".into() })
        .await
        .unwrap();
    assert_eq!(revived, b.customer_id, "the merged-away customer gets its id back");
    assert_eq!(split.evidence.undoes.as_deref(), Some(merge.id.as_str()));
    let a_after = f.graph.explain(&a.customer_id).await.unwrap();
    let b_after = f.graph.explain(&b.customer_id).await.unwrap();
    let values = |e: &rapport_identity::graph::Explained| {
        let mut v: Vec<String> = e.identifiers.iter().map(|h| h.ident.value.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(values(&a_after), vec!["+14155552671", "a@example.com"]);
    assert_eq!(values(&b_after), vec!["991", "L-1", "dev-c"]);
    // b's own alias follows it back.
    assert_eq!(f.graph.canonical(&c.customer_id).await.unwrap(), Some(b.customer_id.clone()));
    // The merge is marked undone; the split is on both histories.
    assert!(a_after.changes.iter().any(|m| m.id == merge.id && m.undone_by.as_deref() == Some(split.id.as_str())));
    assert!(b_after.changes.iter().any(|m| m.kind == "split"));
    assert!(f.topics().await.contains(&"identity.split".to_string()));
}

#[tokio::test]
async fn split_by_identifiers_makes_a_new_customer_and_bad_requests_are_named() {
    let f = fixture(IdentitySettings::default()).await;
    let a = f.resolve(&[(Email, "x@example.com"), (DeviceId, "shared-tablet")]).await;
    let err =
        f.graph.split(&a.customer_id, None, vec![f.id(DeviceId, "not-held")], Origin::default()).await.unwrap_err();
    assert!(err.to_string().starts_with("identifiers[0]"), "{err}");
    let (new_id, _) =
        f.graph.split(&a.customer_id, None, vec![f.id(DeviceId, "shared-tablet")], Origin::default()).await.unwrap();
    assert_ne!(new_id, a.customer_id);
    assert_eq!(f.graph.lookup(&f.id(DeviceId, "shared-tablet")).await.unwrap(), Some(new_id));
    let err =
        f.graph.split(&a.customer_id, None, vec![f.id(Email, "x@example.com")], Origin::default()).await.unwrap_err();
    assert!(err.to_string().contains("no identifier"), "{err}");
}

#[tokio::test]
async fn erase_removes_identifiers_and_history() {
    let f = fixture(IdentitySettings::default()).await;
    let a = f.resolve(&[(Email, "gone@example.com")]).await;
    let b = f.resolve(&[(Phone, "+1 415 555 2671")]).await;
    f.resolve(&[(Email, "gone@example.com"), (Phone, "+1 415 555 2671")]).await;
    let (id, rows) = f.graph.erase(&b.customer_id).await.unwrap();
    assert_eq!(id, a.customer_id);
    assert!(rows >= 3, "{rows}");
    assert_eq!(f.graph.lookup(&f.id(Email, "gone@example.com")).await.unwrap(), None);
    let explained = f.graph.explain(&a.customer_id).await.unwrap();
    assert!(explained.identifiers.is_empty() && explained.changes.is_empty());
    assert_eq!(explained.kind, "erased");
}

#[tokio::test]
async fn concurrent_resolves_of_new_identifiers_create_one_customer() {
    let f = fixture(IdentitySettings::default()).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let graph = f.graph.clone();
        let id = f.id(Email, "race@example.com");
        tasks.push(tokio::spawn(async move { graph.resolve(vec![id], Origin::default()).await.unwrap().customer_id }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn entities_of_different_kinds_never_merge() {
    let f = fixture(IdentitySettings::default()).await;
    let ids = |v: &[(IdType, &str)]| v.iter().map(|(t, x)| f.id(*t, x)).collect::<Vec<_>>();
    let account = f.graph.resolve_kind(ids(&[(External, "ACME-1")]), Origin::default(), "account").await.unwrap();
    let contact = f.graph.resolve_kind(ids(&[(Email, "jo@acme.example")]), Origin::default(), "contact").await.unwrap();
    let r = f
        .graph
        .resolve_kind(ids(&[(Email, "jo@acme.example"), (External, "ACME-1")]), Origin::default(), "contact")
        .await
        .unwrap();
    assert_eq!(r.customer_id, contact.customer_id);
    assert!(r.merged.is_empty());
    assert_eq!(r.excluded.len(), 1);
    assert!(r.excluded[0].reason.contains("account"), "{}", r.excluded[0].reason);
    assert_eq!(f.graph.lookup(&f.id(External, "ACME-1")).await.unwrap(), Some(account.customer_id.clone()));
    assert_eq!(f.graph.explain(&account.customer_id).await.unwrap().kind, "account");
}

#[tokio::test]
async fn a_customer_id_seed_gives_the_same_ids_on_every_run_and_random_ids_without_it() {
    let seeded = || IdentitySettings { customer_id_seed: "demo-1".into(), ..IdentitySettings::default() };
    let (one, two) = (fixture(seeded()).await, fixture(seeded()).await);
    let a1 = one.resolve(&[(Email, "ann@example.com"), (Phone, "+1 415 555 2671")]).await;
    let a2 = two.resolve(&[(Email, "ann@example.com"), (Phone, "+1 415 555 2671")]).await;
    assert_eq!(a1.customer_id, a2.customer_id, "same seed, same input: same id");
    let expected = rapport_identity::graph::seeded_customer_id("demo-1", &one.id(Email, "ann@example.com"), 0);
    assert_eq!(a1.customer_id, expected);
    assert_eq!(a1.customer_id.len(), "cus_".len() + 32);

    // An erased customer keeps its row, so the same identifier arriving again gets the next id, not the old one.
    one.graph.erase(&a1.customer_id).await.unwrap();
    let again = one.resolve(&[(Email, "ann@example.com")]).await;
    assert!(again.created);
    assert_ne!(again.customer_id, a1.customer_id);
    assert_eq!(
        again.customer_id,
        rapport_identity::graph::seeded_customer_id("demo-1", &one.id(Email, "ann@example.com"), 1)
    );

    // Another seed, other ids; no seed, random ids.
    let other = fixture(IdentitySettings { customer_id_seed: "demo-2".into(), ..IdentitySettings::default() }).await;
    assert_ne!(other.resolve(&[(Email, "ann@example.com")]).await.customer_id, a1.customer_id);
    let (r1, r2) = (fixture(IdentitySettings::default()).await, fixture(IdentitySettings::default()).await);
    assert_ne!(
        r1.resolve(&[(Email, "ann@example.com")]).await.customer_id,
        r2.resolve(&[(Email, "ann@example.com")]).await.customer_id
    );
}
