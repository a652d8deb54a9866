//! The profile store over gRPC: ingest resolved through identity, reads by any identifier with computed
//! traits, idempotency, bad input by index, merges followed from identity, segments and the audit.

use std::time::Duration;

use prost_types::{FieldMask, Struct, Timestamp};
use rapport_proto::common::v1::{CustomerRef, Identifier, IdentifierType, PageRequest, customer_ref::Ref};
use rapport_proto::identity::v1::{ResolveRequest, identity_service_client::IdentityServiceClient};
use rapport_proto::profile::v1::{self as pb, profile_service_client::ProfileServiceClient};
use rapport_rpc::convert::json_to_struct;
use rapport_testkit::TestSuite;
use serde_json::json;
use tonic::Code;

fn email(v: &str) -> Identifier {
    Identifier { r#type: IdentifierType::Email as i32, value: v.into(), namespace: String::new() }
}

fn props(v: serde_json::Value) -> Option<Struct> {
    Some(json_to_struct(v))
}

fn now() -> Timestamp {
    let ms = rapport_storage::now_millis();
    rapport_rpc::convert::timestamp(ms)
}

fn event(id: &str, name: &str, who: Identifier, p: serde_json::Value) -> pb::Event {
    pb::Event {
        message_id: id.into(),
        name: name.into(),
        occurred_at: Some(now()),
        properties: props(p),
        context: Some(pb::EventContext { source: "webshop".into(), channel: 1, ..Default::default() }),
        identifiers: vec![who],
        ..Default::default()
    }
}

fn by(i: Identifier) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::Identifier(i)) })
}

#[tokio::test]
async fn track_then_read_the_profile_by_any_identifier() {
    let suite = TestSuite::start().await;
    let mut profiles = ProfileServiceClient::new(suite.channel().await);
    let order = json!({"revenue_minor": 4999, "currency": "EUR", "items": [{"sku": "s1", "quantity": 1, "price_minor": 4999, "category": "shoes"}]});
    let response = profiles
        .track(suite.admin(pb::TrackRequest {
            events: vec![
                event("m1", "product_viewed", email("kim@example.com"), json!({"category": "shoes"})),
                event("m2", "order_completed", email("kim@example.com"), order.clone()),
            ],
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(response.rejected.is_empty(), "{:?}", response.rejected);
    assert_eq!(response.results.len(), 2);
    let customer = response.results[0].customer_id.clone();
    assert!(response.results.iter().all(|r| r.stored && r.customer_id == customer));

    // A replay stores nothing.
    let replay =
        profiles
            .track(suite.admin(pb::TrackRequest {
                events: vec![event("m2", "order_completed", email("kim@example.com"), order)],
            }))
            .await
            .unwrap()
            .into_inner();
    assert!(!replay.results[0].stored);

    profiles
        .identify(suite.admin(pb::IdentifyRequest {
            identifiers: vec![email("KIM@example.com")],
            traits: props(json!({"first_name": "Kim", "city": "Lyon"})),
            source: "crm".into(),
            ..Default::default()
        }))
        .await
        .unwrap();

    let profile = profiles
        .get_profile(suite.admin(pb::GetProfileRequest {
            customer: by(email("kim@example.com")),
            purpose: "test".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profile.customer_id, customer);
    let computed = profile.computed.unwrap();
    assert_eq!(computed.order_count, 1);
    assert_eq!(computed.total_revenue.unwrap().minor_units, 4999);
    assert_eq!(computed.lifecycle_stage, "first_purchase");
    assert_eq!(computed.interests, vec!["shoes"]);
    let traits = rapport_rpc::convert::struct_to_json(&profile.traits.unwrap());
    assert_eq!(traits["first_name"], "Kim");
    assert_eq!(profile.identifiers.len(), 1);
    // The consent service answers or says why not; either way the profile is served.
    assert!(profile.consent.is_some());

    // A field mask limits what comes back.
    let masked = profiles
        .get_profile(suite.admin(pb::GetProfileRequest {
            customer: Some(CustomerRef { r#ref: Some(Ref::CustomerId(customer.clone())) }),
            field_mask: Some(FieldMask { paths: vec!["traits".into()] }),
            purpose: "store_checkout".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(masked.traits.is_some() && masked.computed.is_none() && masked.identifiers.is_empty());

    // Timeline, newest first, paged.
    let page1 = profiles
        .get_timeline(suite.admin(pb::GetTimelineRequest {
            customer: by(email("kim@example.com")),
            page: Some(PageRequest { page_size: 2, page_token: String::new() }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.events.len(), 2);
    let token = page1.page.unwrap().next_page_token;
    assert!(!token.is_empty());
    let page2 = profiles
        .get_timeline(suite.admin(pb::GetTimelineRequest {
            customer: by(email("kim@example.com")),
            page: Some(PageRequest { page_size: 2, page_token: token }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.events.len(), 1);

    // Every read is audited.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit = profiles
        .list_audit(suite.admin(pb::ListAuditRequest { customer: by(email("kim@example.com")), page: None }))
        .await
        .unwrap()
        .into_inner();
    let reads: Vec<_> = audit.entries.iter().filter(|e| e.action == "profile.read").collect();
    assert_eq!(reads.len(), 2);
    assert!(reads[1].detail.contains("purpose=store_checkout"), "{}", reads[1].detail);
    assert_eq!(reads[0].principal, "admin");
    suite.stop().await;
}

#[tokio::test]
async fn bad_events_are_refused_by_index_and_the_good_ones_stored() {
    let suite = TestSuite::start().await;
    let mut profiles = ProfileServiceClient::new(suite.channel().await);
    let mut future = event("f", "page_viewed", email("a@example.com"), json!({}));
    future.occurred_at = Some(Timestamp { seconds: rapport_storage::now_millis() / 1000 + 3 * 86_400, nanos: 0 });
    let mut nobody = event("n", "page_viewed", email("a@example.com"), json!({}));
    nobody.identifiers.clear();
    let big = event("b", "page_viewed", email("a@example.com"), json!({"blob": "x".repeat(40_000)}));
    let wrong_type = event("w", "order_completed", email("a@example.com"), json!({"revenue_minor": "lots"}));
    let bad_email = event("e", "page_viewed", email("not-an-email"), json!({}));
    let good = event("g", "page_viewed", email("a@example.com"), json!({"url": "/"}));
    let response = profiles
        .track(suite.admin(pb::TrackRequest { events: vec![future, nobody, big, wrong_type, bad_email, good] }))
        .await
        .unwrap()
        .into_inner();
    let reasons: Vec<(i32, String)> = response.rejected.iter().map(|r| (r.index, r.reason.clone())).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].1.starts_with("events[0].occurred_at"), "{reasons:?}");
    assert!(reasons[1].1.starts_with("events[1].identifiers"), "{reasons:?}");
    assert!(reasons[2].1.starts_with("events[2]") && reasons[2].1.contains("limit"), "{reasons:?}");
    assert!(reasons[3].1.starts_with("events[3].properties.revenue_minor"), "{reasons:?}");
    assert!(reasons[4].1.starts_with("events[4].identifiers[0].value"), "{reasons:?}");
    assert_eq!(response.results.len(), 1);
    assert_eq!(response.results[0].index, 5);

    let err = profiles.track(suite.admin(pb::TrackRequest { events: vec![] })).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = profiles
        .get_profile(suite.admin(pb::GetProfileRequest {
            customer: by(email("a@example.com")),
            field_mask: Some(FieldMask { paths: vec!["traitz".into()] }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("field_mask.paths"), "{}", err.message());
    suite.stop().await;
}

#[tokio::test]
async fn a_merge_in_identity_joins_the_timelines_and_segments_follow() {
    let suite = TestSuite::start().await;
    let mut profiles = ProfileServiceClient::new(suite.channel().await);
    let mut identity = IdentityServiceClient::new(suite.channel().await);
    let segment = profiles
        .create_segment(suite.admin(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                name: "two orders".into(),
                rule: "profile.computed.order_count >= 2".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let err = profiles
        .create_segment(suite.admin(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                name: "broken".into(),
                rule: "profile.computed.order_count >=".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("segment.rule"), "{}", err.message());

    let order = |id: &str, who: Identifier| {
        event(id, "order_completed", who, json!({"revenue_minor": 1000, "currency": "EUR"}))
    };
    let phone =
        Identifier { r#type: IdentifierType::Phone as i32, value: "+1 415 555 2671".into(), namespace: String::new() };
    let a = profiles
        .track(suite.admin(pb::TrackRequest { events: vec![order("o1", email("lee@example.com"))] }))
        .await
        .unwrap()
        .into_inner();
    let b = profiles
        .track(suite.admin(pb::TrackRequest { events: vec![order("o2", phone.clone())] }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(a.results[0].customer_id, b.results[0].customer_id);

    // The call centre learns both belong to one person.
    identity
        .resolve(
            suite.admin(ResolveRequest {
                identifiers: vec![email("lee@example.com"), phone.clone()],
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let mut merged = None;
    for _ in 0..100 {
        let p = profiles
            .get_profile(suite.admin(pb::GetProfileRequest { customer: by(phone.clone()), ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        if p.computed.as_ref().unwrap().order_count == 2 {
            merged = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let merged = merged.expect("the merge reached the profile store within 5 s");
    assert_eq!(merged.customer_id, a.results[0].customer_id);
    assert_eq!(
        merged.segments.iter().map(|s| s.segment_id.clone()).collect::<Vec<_>>(),
        vec![segment.segment_id.clone()]
    );
    let members = profiles
        .list_segment_members(
            suite.admin(pb::ListSegmentMembersRequest { segment_id: segment.segment_id.clone(), page: None }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.total, 1);
    suite.stop().await;
}
