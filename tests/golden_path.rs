//! The golden path of ARCHITECTURE.md as one story, run twice: on the five services in one process
//! (`TestSuite`, in-process clients) and on five servers calling each other over gRPC (`SplitSuite`); on
//! SQLite and the in-process cache, or on PostgreSQL and Redis when `RAPPORT_TEST_DATABASE_URL` and
//! `RAPPORT_TEST_REDIS_URL` are set (CI's second pass).
//!
//! 1. Three sources send what they know of the same person: the CRM (email, CRM id, name), the store
//!    till (loyalty card, phone, city) and the web shop (email in another spelling plus the loyalty card,
//!    with orders, one of them sent twice). Identity merges the CRM and store customers into one.
//! 2. Consent: an email-marketing grant for her; a second customer with orders has none.
//! 3. Profile: one profile under every identifier, traits from both sources, computed traits (two orders,
//!    not three: the replay is stored once), the segment she entered.
//! 4. Decision: a triggered abandoned-cart campaign fires after her cart update and decides for the email
//!    placement; the second customer gets nothing (no consent); a one-a-day contact policy then holds the
//!    next marketing decision back.
//! 5. Delivery: the campaign's message is rendered with her name into the file sink.
//! 6. Tracking: the open pixel and the click link on the HTTP port, then a purchase on the web shop
//!    carrying the decision id.
//! 7. The campaign's report: one send, one open, one click, one conversion and its revenue.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost_types::Timestamp;
use rapport_proto::common::v1::{self as common, Channel, CustomerRef, Identifier, IdentifierType, customer_ref::Ref};
use rapport_proto::consent::v1::{self as consent, consent_service_client::ConsentServiceClient};
use rapport_proto::decision::v1::{
    self as decision, ExclusionReason, PlacementKind, decision_service_client::DecisionServiceClient,
};
use rapport_proto::delivery::v1::{self as delivery, MessageStatus, delivery_service_client::DeliveryServiceClient};
use rapport_proto::identity::v1::{self as identity, identity_service_client::IdentityServiceClient};
use rapport_proto::profile::v1::{self as profile, profile_service_client::ProfileServiceClient};
use rapport_rpc::convert::{json_to_struct, timestamp};
use rapport_storage::now_millis;
use rapport_testkit::testing::TestDatabase;
use rapport_testkit::{SplitSuite, SuiteOptions, TestSuite, http_get, with_token};
use tonic::transport::Channel as Grpc;

/// Timers and schedules polled quickly, so the story takes seconds.
const FAST: [(&str, &str); 3] =
    [("decision.timer_poll_ms", "100"), ("decision.schedule_poll_ms", "200"), ("decision.bandit_flush_seconds", "0.2")];

/// Where each service answers: one port for all in process, five ports when split.
struct Deployment {
    identity: Grpc,
    consent: Grpc,
    profile: Grpc,
    decision: Grpc,
    delivery: Grpc,
    /// The HTTP port of delivery (tracking).
    delivery_http: String,
    token: String,
    storage: Arc<TestDatabase>,
}

impl Deployment {
    fn req<T>(&self, m: T) -> tonic::Request<T> {
        with_token(m, &self.token)
    }

    fn outbox(&self) -> PathBuf {
        self.storage.data_dir.path().join("outbox/email")
    }
}

fn id(kind: IdentifierType, value: &str) -> Identifier {
    Identifier { r#type: kind as i32, value: value.into(), namespace: String::new() }
}

fn external(namespace: &str, value: &str) -> Identifier {
    Identifier { r#type: IdentifierType::External as i32, value: value.into(), namespace: namespace.into() }
}

fn by_id(customer_id: &str) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::CustomerId(customer_id.into())) })
}

fn by(identifier: Identifier) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::Identifier(identifier)) })
}

fn ago(ms: i64) -> Option<Timestamp> {
    Some(timestamp(now_millis() - ms))
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn event(message_id: &str, name: &str, identifiers: Vec<Identifier>, props: serde_json::Value) -> profile::Event {
    profile::Event {
        message_id: message_id.into(),
        name: name.into(),
        occurred_at: ago(60_000),
        identifiers,
        properties: Some(json_to_struct(props)),
        context: Some(profile::EventContext { source: "webshop".into(), ..Default::default() }),
        ..Default::default()
    }
}

async fn track(d: &Deployment, events: Vec<profile::Event>) -> profile::TrackResponse {
    let r = ProfileServiceClient::new(d.profile.clone())
        .track(d.req(profile::TrackRequest { events }))
        .await
        .expect("track")
        .into_inner();
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    r
}

async fn identify(d: &Deployment, identifiers: Vec<Identifier>, traits: serde_json::Value, source: &str) -> String {
    ProfileServiceClient::new(d.profile.clone())
        .identify(d.req(profile::IdentifyRequest {
            identifiers,
            traits: Some(json_to_struct(traits)),
            source: source.into(),
            ..Default::default()
        }))
        .await
        .expect("identify")
        .into_inner()
        .customer_id
}

async fn lookup(d: &Deployment, identifier: Identifier) -> String {
    IdentityServiceClient::new(d.identity.clone())
        .lookup(d.req(identity::LookupRequest { identifier: Some(identifier) }))
        .await
        .expect("lookup")
        .into_inner()
        .customer_id
}

/// The email decision a customer would get now, recorded nowhere.
async fn preview(d: &Deployment, customer_id: &str) -> decision::DecideResponse {
    DecisionServiceClient::new(d.decision.clone())
        .decide(d.req(decision::DecideRequest {
            customer: by_id(customer_id),
            placement: PlacementKind::Email as i32,
            dry_run: true,
            ..Default::default()
        }))
        .await
        .expect("decide")
        .into_inner()
}

async fn golden_path(d: &Deployment) {
    let mut decisions = DecisionServiceClient::new(d.decision.clone());
    let mut deliveries = DeliveryServiceClient::new(d.delivery.clone());
    let mut profiles = ProfileServiceClient::new(d.profile.clone());

    // Set-up a marketer does once: a segment, a template, an offer, a contact policy, a campaign.
    let buyers = profiles
        .create_segment(d.req(profile::CreateSegmentRequest {
            segment: Some(profile::Segment {
                name: "repeat buyers".into(),
                rule: "profile.computed.order_count >= 2".into(),
                ..Default::default()
            }),
        }))
        .await
        .expect("segment")
        .into_inner();
    deliveries
        .put_template(d.req(delivery::PutTemplateRequest {
            template: Some(delivery::Template {
                template_id: "cart_reminder".into(),
                channel: Channel::Email as i32,
                locales: vec![delivery::LocalizedContent {
                    locale: "en".into(),
                    subject: "Your cart, {{ profile.first_name }}".into(),
                    html: "<p>Hi {{ profile.first_name }}, <a href=\"https://shop.example/cart\">{{ offer.title }}</a></p>"
                        .into(),
                    text: "Hi {{ profile.first_name }}: {{ offer.title }}".into(),
                }],
                ..Default::default()
            }),
        }))
        .await
        .expect("template");
    let offer = decisions
        .create_offer(d.req(decision::CreateOfferRequest {
            offer: Some(decision::Offer {
                name: "Cart reminder".into(),
                content: vec![decision::ChannelContent {
                    channel: Channel::Email as i32,
                    template_id: "cart_reminder".into(),
                    variables: Some(json_to_struct(
                        serde_json::json!({"offer": {"title": "Your trainers are waiting"}}),
                    )),
                }],
                eligibility_rule: "profile.computed.order_count >= 1".into(),
                placements: vec![PlacementKind::Email as i32],
                ..Default::default()
            }),
        }))
        .await
        .expect("offer")
        .into_inner();
    decisions
        .put_contact_policy(d.req(decision::PutContactPolicyRequest {
            policy: Some(decision::ContactPolicy {
                channel: Channel::Email as i32,
                message_class: common::MessageClass::Marketing as i32,
                max: 1,
                window_seconds: 86_400,
                ..Default::default()
            }),
        }))
        .await
        .expect("contact policy");
    let campaign = decisions
        .create_campaign(
            d.req(decision::CreateCampaignRequest {
                campaign: Some(decision::Campaign {
                    name: "Abandoned cart".into(),
                    kind: decision::CampaignKind::Triggered as i32,
                    trigger_events: vec!["cart_updated".into()],
                    trigger_rule: "has(profile.computed.open_cart)".into(),
                    wait_seconds: 1,
                    recheck_rule: "has(profile.computed.open_cart) && (!has(profile.computed.last_order_at) || \
                               profile.computed.last_order_at < event.occurred_at)"
                        .into(),
                    placement: PlacementKind::Email as i32,
                    offer_ids: vec![offer.offer_id.clone()],
                    state: decision::CampaignState::Running as i32,
                    ..Default::default()
                }),
            }),
        )
        .await
        .expect("campaign")
        .into_inner();

    // 1. Three sources, one person.
    let email = id(IdentifierType::Email, "ann.golden@example.com");
    let phone = id(IdentifierType::Phone, "+4915112345678");
    let loyalty = id(IdentifierType::LoyaltyId, "LOY-778812");
    let from_crm = identify(
        d,
        vec![email.clone(), external("crm", "C-1001")],
        serde_json::json!({"first_name": "Ann", "language": "en"}),
        "crm",
    )
    .await;
    let from_store =
        identify(d, vec![loyalty.clone(), phone.clone()], serde_json::json!({"city": "Hamburg"}), "store-till").await;
    assert_ne!(from_crm, from_store, "nothing joins them yet");
    let orders = |n: i64| {
        event(
            &format!("order-ann-{n}"),
            "order_completed",
            vec![id(IdentifierType::Email, " Ann.Golden@Example.com "), loyalty.clone()],
            serde_json::json!({"revenue_minor": 4000 + n * 1000, "currency": "EUR"}),
        )
    };
    let first = track(d, vec![orders(1), orders(2)]).await;
    let ann = first.results[0].customer_id.clone();
    assert!(ann == from_crm || ann == from_store, "the survivor is one of the two: {ann}");
    assert!(first.results.iter().all(|r| r.stored && r.customer_id == ann), "{first:?}");
    let replay = track(d, vec![orders(2)]).await;
    assert!(!replay.results[0].stored, "the same order twice is stored once: {replay:?}");
    for identifier in [email.clone(), phone.clone(), loyalty.clone(), external("crm", "C-1001")] {
        assert_eq!(lookup(d, identifier.clone()).await, ann, "{identifier:?}");
    }
    let merged_away = if ann == from_crm { &from_store } else { &from_crm };
    let explained = IdentityServiceClient::new(d.identity.clone())
        .explain(d.req(identity::ExplainRequest { customer_id: ann.clone() }))
        .await
        .expect("explain")
        .into_inner();
    assert!(format!("{explained:?}").contains(merged_away.as_str()), "the merge is explained: {explained:?}");

    // A second customer with orders and no consent.
    let bob_email = id(IdentifierType::Email, "bob.golden@example.com");
    identify(d, vec![bob_email.clone()], serde_json::json!({"first_name": "Bob", "language": "en"}), "crm").await;
    let bob_order = event(
        "order-bob-1",
        "order_completed",
        vec![bob_email.clone()],
        serde_json::json!({"revenue_minor": 2000, "currency": "EUR"}),
    );
    let bob = track(d, vec![bob_order]).await.results[0].customer_id.clone();

    // 2. Consent: Ann grants email marketing on the web shop's form.
    let recorded = ConsentServiceClient::new(d.consent.clone())
        .record(d.req(consent::RecordRequest {
            entries: vec![consent::EntryInput {
                contact_point: Some(email.clone()),
                channel: Channel::Email as i32,
                purpose: Some(common::Purpose { name: "marketing".into() }),
                status: consent::ConsentStatus::Granted as i32,
                legal_basis: consent::LegalBasis::Consent as i32,
                provenance: Some(common::Provenance { source: "webshop".into(), ..Default::default() }),
                proof: Some(consent::Proof {
                    notice_id: "privacy".into(),
                    notice_version: "3".into(),
                    method: consent::ProofMethod::WebForm as i32,
                    ..Default::default()
                }),
                occurred_at: ago(30_000),
                ..Default::default()
            }],
        }))
        .await
        .expect("consent")
        .into_inner();
    assert_eq!(recorded.entries[0].customer_id, ann);

    // 3. One profile under every identifier: traits of both sources, computed traits, the segment.
    let profile_by = |who: Option<CustomerRef>| {
        let mut profiles = profiles.clone();
        let request =
            d.req(profile::GetProfileRequest { customer: who, field_mask: None, purpose: "golden-path".into() });
        async move { profiles.get_profile(request).await.expect("profile").into_inner() }
    };
    let p = eventually("the segment to be entered", || async {
        let p = profile_by(by(phone.clone())).await;
        p.segments.iter().any(|s| s.segment_id == buyers.segment_id).then_some(p)
    })
    .await;
    assert_eq!(p.customer_id, ann);
    let traits = rapport_rpc::convert::struct_to_json(p.traits.as_ref().expect("traits"));
    assert_eq!((traits["first_name"].as_str(), traits["city"].as_str()), (Some("Ann"), Some("Hamburg")), "{traits:?}");
    let computed = p.computed.as_ref().expect("computed traits");
    assert_eq!(computed.order_count, 2, "{computed:?}");
    assert_eq!(computed.total_revenue.as_ref().map(|m| m.minor_units), Some(11_000), "{computed:?}");
    assert_eq!(computed.average_order_value.as_ref().map(|m| m.minor_units), Some(5_500), "{computed:?}");
    let summary = p.consent.as_ref().expect("consent summary");
    assert!(
        summary.channels.iter().any(|c| c.channel == Channel::Email as i32 && c.purpose == "marketing" && c.allowed),
        "{summary:?}"
    );
    assert_eq!(profile_by(by(email.clone())).await.customer_id, ann);
    assert_eq!(profile_by(by_id(merged_away)).await.customer_id, ann, "a merged-away id finds the survivor");

    // 4. Carts left behind: the campaign fires for Ann after its wait; Bob has no consent.
    let cart = serde_json::json!({"currency": "EUR", "items": [{"sku": "run-01", "quantity": 1, "price_minor": 8000}]});
    let mut ann_cart = event("cart-ann-1", "cart_updated", vec![email.clone()], cart.clone());
    ann_cart.occurred_at = ago(0);
    let mut bob_cart = event("cart-bob-1", "cart_updated", vec![bob_email.clone()], cart);
    bob_cart.occurred_at = ago(0);
    track(d, vec![ann_cart, bob_cart]).await;
    let message = eventually("the campaign's message to be sent", || {
        let mut deliveries = deliveries.clone();
        let request = d.req(delivery::ListMessagesRequest { customer: by_id(&ann), page: None });
        let campaign_id = campaign.campaign_id.clone();
        async move {
            let listed = deliveries.list_messages(request).await.expect("messages").into_inner().messages;
            listed.into_iter().find(|m| m.campaign_id == campaign_id && m.status == MessageStatus::Sent as i32)
        }
    })
    .await;
    assert_eq!(message.offer_id, offer.offer_id);
    assert_eq!(message.subject, "Your cart, Ann");
    let ann_decisions = decisions
        .list_decisions(d.req(decision::ListDecisionsRequest { customer: by_id(&ann), page: None }))
        .await
        .expect("decisions")
        .into_inner()
        .decisions;
    let fired: Vec<_> = ann_decisions.iter().filter(|x| x.campaign_id == campaign.campaign_id).collect();
    assert_eq!(fired.len(), 1, "{ann_decisions:?}");
    assert_eq!(fired[0].decision_id, message.decision_id);
    assert_eq!(fired[0].offers[0].offer_id, offer.offer_id);
    assert!(fired[0].offers[0].choice_probability > 0.0, "the propensity is logged");
    // Bob: no message, and asked directly, the offer is excluded for want of consent.
    let bob_asked = preview(d, &bob).await;
    assert!(bob_asked.offers.is_empty(), "{bob_asked:?}");
    let bob_reason = bob_asked.excluded.iter().find(|e| e.offer_id == offer.offer_id).map(|e| e.reason);
    assert_eq!(bob_reason, Some(ExclusionReason::NoConsent as i32), "{bob_asked:?}");
    let bob_messages = deliveries
        .list_messages(d.req(delivery::ListMessagesRequest { customer: by_id(&bob), page: None }))
        .await
        .expect("messages")
        .into_inner()
        .messages;
    assert!(bob_messages.is_empty(), "{bob_messages:?}");
    // Ann has had her one marketing email today: the contact policy holds the next one back.
    let again = preview(d, &ann).await;
    let held = again.excluded.iter().find(|e| e.offer_id == offer.offer_id);
    assert_eq!(held.map(|e| e.reason), Some(ExclusionReason::ContactPolicy as i32), "{again:?}");

    // 5. The message in the file sink, rendered with her name and the offer.
    let eml =
        std::fs::read_to_string(d.outbox().join(format!("{}.eml", message.message_id))).expect("in the file sink");
    assert!(eml.contains("Your cart, Ann"), "{eml}");
    assert!(eml.contains("To: ann.golden@example.com"), "{eml}");
    let html = eml.replace("=\r\n", "").replace("=3D", "=");
    assert!(html.contains("Hi Ann, ") && html.contains("Your trainers are waiting"), "{html}");

    // 6. She opens it, clicks, and buys on the web shop with the decision id the link carried.
    let pixel = html.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("an open pixel").to_string();
    let click = html
        .split("href=\"")
        .map(|s| s.split('"').next().unwrap_or_default().replace("&amp;", "&"))
        .find(|h| h.contains("/delivery/c/"))
        .expect("a tracked link");
    let path = |u: &str| u.split_once("//").map(|(_, r)| r[r.find('/').unwrap()..].to_string()).unwrap();
    assert_eq!(http_get(&format!("{}{}", d.delivery_http, path(&pixel))).await.0, 200);
    let (status, body) = http_get(&format!("{}{}", d.delivery_http, path(&click))).await;
    assert_eq!(status, 302, "{body}");
    let mut purchase = event(
        "order-ann-3",
        "order_completed",
        vec![email.clone()],
        serde_json::json!({"revenue_minor": 8000, "currency": "EUR"}),
    );
    purchase.occurred_at = ago(0);
    purchase.context = Some(profile::EventContext {
        source: "webshop".into(),
        decision_id: message.decision_id.clone(),
        offer_id: message.offer_id.clone(),
        campaign_id: campaign.campaign_id.clone(),
        ..Default::default()
    });
    track(d, vec![purchase]).await;

    // On the message and on the timeline.
    eventually("the click on the message", || {
        let mut deliveries = deliveries.clone();
        let request = d.req(delivery::GetMessageRequest { message_id: message.message_id.clone() });
        async move {
            let m = deliveries.get_message(request).await.expect("message").into_inner();
            let seen: Vec<i32> = m.history.iter().map(|h| h.status).collect();
            (seen.contains(&(MessageStatus::Opened as i32)) && seen.contains(&(MessageStatus::Clicked as i32)))
                .then_some(())
        }
    })
    .await;
    eventually("the engagement on the timeline", || {
        let mut profiles = profiles.clone();
        let request = d.req(profile::GetTimelineRequest {
            customer: by_id(&ann),
            names: vec!["message_opened".into(), "message_clicked".into()],
            ..Default::default()
        });
        async move {
            let events = profiles.get_timeline(request).await.expect("timeline").into_inner().events;
            (events.len() == 2).then_some(())
        }
    })
    .await;

    // 7. The outcome in the campaign's report.
    let report = eventually("the purchase in the report", || {
        let mut decisions = decisions.clone();
        let request = d.req(decision::ReportRequest {
            subject: Some(decision::report_request::Subject::CampaignId(campaign.campaign_id.clone())),
            range: None,
        });
        async move {
            let r = decisions.report(request).await.expect("report").into_inner();
            let all = r.groups.iter().find(|g| g.group == "all").cloned().expect("the all group");
            (all.conversions == 1 && all.clicks == 1 && all.opens == 1 && all.sends == 1).then_some(all)
        }
    })
    .await;
    let bob_fired = decisions
        .list_decisions(d.req(decision::ListDecisionsRequest { customer: by_id(&bob), page: None }))
        .await
        .expect("decisions")
        .into_inner()
        .decisions
        .iter()
        .filter(|x| x.campaign_id == campaign.campaign_id)
        .count() as i64;
    assert_eq!(report.decisions, 1 + bob_fired, "{report:?}");
    assert_eq!(report.revenue.as_ref().map(|m| (m.minor_units, m.currency.as_str())), Some((8000, "EUR")));
    assert_eq!(report.average_order_value.as_ref().map(|m| m.minor_units), Some(8000));
    assert!((report.click_through_rate - 1.0).abs() < 1e-9, "{report:?}");
    assert_eq!(report.revenue_per_recipient.as_ref().map(|m| m.minor_units), Some(8000 / report.decisions));
}

#[tokio::test]
async fn the_golden_path_in_one_process() {
    let mut options = SuiteOptions::default();
    for (k, v) in FAST {
        options = options.set(k, v);
    }
    let suite = TestSuite::start_with(options).await;
    let channel = suite.channel().await;
    let d = Deployment {
        identity: channel.clone(),
        consent: channel.clone(),
        profile: channel.clone(),
        decision: channel.clone(),
        delivery: channel,
        delivery_http: suite.http_url.clone(),
        token: suite.admin_token.clone(),
        storage: suite.storage.clone(),
    };
    golden_path(&d).await;
    suite.stop().await;
}

#[tokio::test]
async fn the_golden_path_across_five_processes() {
    let suite = SplitSuite::start_with(&FAST).await;
    let d = Deployment {
        identity: suite.channel("identity").await,
        consent: suite.channel("consent").await,
        profile: suite.channel("profile").await,
        decision: suite.channel("decision").await,
        delivery: suite.channel("delivery").await,
        delivery_http: suite.part("delivery").http_url.clone(),
        token: suite.admin_token.clone(),
        storage: suite.storage.clone(),
    };
    golden_path(&d).await;
    suite.stop().await;
}
