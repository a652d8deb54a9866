//! Delivery over gRPC and HTTP: templates (validation, versions, locales, preview with SMS segments),
//! Send and SendBatch through the default file sink with consent re-checked at send time, idempotency,
//! bad input by field, blocked and failed messages, dead letters and replay, waiting while consent is
//! unreachable, failing when the profile read is refused for good, quiet hours, tracking links, call-centre
//! tasks and the in-app inbox.

use std::time::Duration;

use prost_types::Timestamp;
use rapport_proto::common::v1::{
    Channel, CustomerRef, Identifier, IdentifierType, MessageClass, Provenance, Purpose, customer_ref::Ref,
};
use rapport_proto::consent::v1::{self as consent, consent_service_client::ConsentServiceClient};
use rapport_proto::delivery::v1::{self as pb, MessageStatus, delivery_service_client::DeliveryServiceClient};
use rapport_proto::identity::v1::{self as id, identity_service_client::IdentityServiceClient};
use rapport_testkit::{SuiteOptions, TestSuite, http_get};
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;

/// Quiet hours off and short intervals, so that tests do not depend on the time of day or wait long.
const FAST: &str = "[delivery]\nquiet_hours_start = \"00:00\"\nquiet_hours_end = \"00:00\"\npoll_interval_ms = 20\n\
                    retry_base_ms = 50\nretry_max_ms = 200\ndependency_retry_ms = 100\ndirect_mail_run_seconds = 1\n";

fn email(v: &str) -> Identifier {
    Identifier { r#type: IdentifierType::Email as i32, value: v.into(), namespace: String::new() }
}

fn by(i: Identifier) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::Identifier(i)) })
}

fn customer(id: &str) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::CustomerId(id.into())) })
}

fn now() -> Option<Timestamp> {
    Some(rapport_rpc::convert::timestamp(rapport_storage::now_millis()))
}

fn data(v: serde_json::Value) -> Option<prost_types::Struct> {
    Some(rapport_rpc::convert::json_to_struct(v))
}

async fn start(extra: &str) -> (TestSuite, GrpcChannel) {
    let suite = TestSuite::start_with(SuiteOptions::default().config(format!("{FAST}{extra}"))).await;
    let channel = suite.channel().await;
    (suite, channel)
}

/// A customer with this email and a name, and (when `grant`) an email-marketing grant.
async fn customer_with(suite: &TestSuite, channel: &GrpcChannel, address: &str, grant: bool) -> String {
    let resolved = IdentityServiceClient::new(channel.clone())
        .resolve(suite.admin(id::ResolveRequest {
            identifiers: vec![email(address)],
            provenance: Some(Provenance { source: "crm".into(), ..Default::default() }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    rapport_proto::profile::v1::profile_service_client::ProfileServiceClient::new(channel.clone())
        .identify(suite.admin(rapport_proto::profile::v1::IdentifyRequest {
            customer_id: resolved.customer_id.clone(),
            traits: data(serde_json::json!({"first_name": "Ann", "city": "Berlin", "language": "de-AT"})),
            source: "crm".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    if grant {
        record(suite, channel, address, consent::ConsentStatus::Granted).await;
    }
    resolved.customer_id
}

async fn record(suite: &TestSuite, channel: &GrpcChannel, address: &str, status: consent::ConsentStatus) {
    ConsentServiceClient::new(channel.clone())
        .record(suite.admin(consent::RecordRequest {
            entries: vec![consent::EntryInput {
                customer: by(email(address)),
                contact_point: Some(email(address)),
                channel: Channel::Email as i32,
                purpose: Some(Purpose { name: "marketing".into() }),
                status: status as i32,
                legal_basis: consent::LegalBasis::Consent as i32,
                provenance: Some(Provenance { source: "webshop".into(), ..Default::default() }),
                proof: Some(consent::Proof {
                    notice_id: "privacy".into(),
                    notice_version: "1".into(),
                    method: consent::ProofMethod::WebForm as i32,
                    ..Default::default()
                }),
                occurred_at: now(),
                ..Default::default()
            }],
        }))
        .await
        .unwrap();
}

fn template(id: &str, channel: Channel, locales: Vec<(&str, &str, &str, &str)>) -> pb::Template {
    pb::Template {
        template_id: id.into(),
        name: id.into(),
        channel: channel as i32,
        locales: locales
            .into_iter()
            .map(|(l, s, h, t)| pb::LocalizedContent {
                locale: l.into(),
                subject: s.into(),
                html: h.into(),
                text: t.into(),
            })
            .collect(),
        default_locale: String::new(),
        ..Default::default()
    }
}

async fn put(suite: &TestSuite, d: &mut DeliveryServiceClient<GrpcChannel>, t: pb::Template) -> pb::Template {
    d.put_template(suite.admin(pb::PutTemplateRequest { template: Some(t) })).await.unwrap().into_inner()
}

fn welcome() -> pb::Template {
    template(
        "welcome",
        Channel::Email,
        vec![
            (
                "en",
                "Welcome {{ profile.first_name }}",
                "<p>Hi {{ profile.first_name }}, <a href=\"https://shop.example/offer?id={{ offer.offer_id }}\">see {{ offer.title }}</a></p>",
                "Hi {{ profile.first_name }} from {{ profile.city }}: {{ offer.title }}",
            ),
            ("de", "Willkommen {{ profile.first_name }}", "", "Hallo {{ profile.first_name }}: {{ offer.title }}"),
        ],
    )
}

fn send_request(who: Option<CustomerRef>, key: &str) -> pb::SendRequest {
    pb::SendRequest {
        customer: who,
        channel: Channel::Email as i32,
        template_id: "welcome".into(),
        data: data(serde_json::json!({"offer": {"title": "10% off"}})),
        idempotency_key: key.into(),
        decision_id: "dec_1".into(),
        offer_id: "off_1".into(),
        campaign_id: "cmp_1".into(),
        message_class: MessageClass::Marketing as i32,
        ..Default::default()
    }
}

/// Waits until the message reaches one of `wanted`.
async fn wait_for(
    suite: &TestSuite,
    d: &mut DeliveryServiceClient<GrpcChannel>,
    message_id: &str,
    wanted: &[MessageStatus],
) -> pb::Message {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = d
            .get_message(suite.admin(pb::GetMessageRequest { message_id: message_id.into() }))
            .await
            .unwrap()
            .into_inner();
        if wanted.iter().any(|s| *s as i32 == m.status) {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "message never reached {wanted:?}: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn statuses(m: &pb::Message) -> Vec<i32> {
    m.history.iter().map(|h| h.status).collect()
}

#[tokio::test]
async fn templates_are_validated_versioned_and_previewed_with_locales_and_sms_segments() {
    let (suite, channel) = start("").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    // A syntax error names the field and its position.
    let mut broken = welcome();
    broken.locales[1].text = "Hallo\n{{ profile.first_name }".into();
    let err = d.put_template(suite.admin(pb::PutTemplateRequest { template: Some(broken) })).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("template.locales[1].text:"), "{}", err.message());
    assert!(err.message().contains("line 2"), "{}", err.message());
    // Other bad templates by field.
    let mut no_subject = welcome();
    no_subject.locales[0].subject.clear();
    let err = d.put_template(suite.admin(pb::PutTemplateRequest { template: Some(no_subject) })).await.unwrap_err();
    assert!(err.message().starts_with("template.locales[0].subject"), "{}", err.message());
    let mut bad_locale = welcome();
    bad_locale.locales[0].locale = "??".into();
    let err = d.put_template(suite.admin(pb::PutTemplateRequest { template: Some(bad_locale) })).await.unwrap_err();
    assert!(err.message().starts_with("template.locales[0].locale"), "{}", err.message());

    // Versions.
    let v1 = put(&suite, &mut d, welcome()).await;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.default_locale, "en");
    let mut changed = welcome();
    changed.locales[0].subject = "Hello {{ profile.first_name }}".into();
    let v2 = put(&suite, &mut d, changed).await;
    assert_eq!(v2.version, 2);
    let old = d
        .get_template(suite.admin(pb::GetTemplateRequest { template_id: "welcome".into(), version: 1 }))
        .await
        .unwrap();
    assert_eq!(old.into_inner().locales[0].subject, "Welcome {{ profile.first_name }}");
    let list = d.list_templates(suite.admin(pb::ListTemplatesRequest::default())).await.unwrap().into_inner();
    assert_eq!(list.templates.len(), 1);
    assert_eq!(list.templates[0].version, 2);

    // Preview for a customer: personalised from the profile; "de-AT" is served by "de".
    let ann = customer_with(&suite, &channel, "ann@example.com", false).await;
    let preview = d
        .preview_template(suite.admin(pb::PreviewTemplateRequest {
            template_id: "welcome".into(),
            customer: customer(&ann),
            data: data(serde_json::json!({"offer": {"title": "10% off"}})),
            locale: "de-AT".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.locale, "de");
    assert_eq!(preview.subject, "Willkommen Ann");
    assert_eq!(preview.text, "Hallo Ann: 10% off");
    // A locale nobody wrote falls back to the default.
    let fallback = d
        .preview_template(suite.admin(pb::PreviewTemplateRequest {
            template_id: "welcome".into(),
            customer: customer(&ann),
            data: data(serde_json::json!({"offer": {"title": "x", "offer_id": "off_1"}})),
            locale: "it".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fallback.locale, "en");
    // A missing variable is refused with the reason, never a half-filled text.
    let err = d
        .preview_template(suite.admin(pb::PreviewTemplateRequest {
            template_id: "welcome".into(),
            customer: customer(&ann),
            data: None,
            locale: "en".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("undefined"), "{}", err.message());

    // SMS: characters and GSM-7 / UCS-2 segments.
    put(&suite, &mut d, template("sms-gsm", Channel::Sms, vec![("en", "", "", &"a".repeat(161))])).await;
    let r = d
        .preview_template(
            suite.admin(pb::PreviewTemplateRequest { template_id: "sms-gsm".into(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.sms_characters, r.sms_segments), (161, 2));
    put(&suite, &mut d, template("sms-ucs2", Channel::Sms, vec![("en", "", "", "Grüße aus Łódź {{ name }}")])).await;
    let r = d
        .preview_template(suite.admin(pb::PreviewTemplateRequest {
            template_id: "sms-ucs2".into(),
            data: data(serde_json::json!({"name": "Ann"})),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.sms_characters, r.sms_segments), (18, 1));
    suite.stop().await;
}

#[tokio::test]
async fn a_message_is_sent_once_per_key_through_the_file_sink_with_its_history() {
    let (suite, channel) = start("").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let ann = customer_with(&suite, &channel, "ann@example.com", true).await;

    let first = d.send(suite.admin(send_request(customer(&ann), "welcome-ann"))).await.unwrap().into_inner();
    assert!(!first.duplicate);
    assert_eq!(first.status, MessageStatus::Queued as i32);
    let again = d.send(suite.admin(send_request(customer(&ann), "welcome-ann"))).await.unwrap().into_inner();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);

    let m = wait_for(&suite, &mut d, &first.message_id, &[MessageStatus::Sent]).await;
    assert_eq!(m.customer_id, ann);
    assert_eq!(m.subject, "Welcome Ann");
    assert_eq!(m.provider, "file-sink");
    assert_eq!(m.attempts, 1);
    assert_eq!(m.decision_id, "dec_1");
    assert_eq!(m.template_version, 1);
    assert_eq!(statuses(&m), vec![MessageStatus::Queued as i32, MessageStatus::Sent as i32]);

    // The file: one message, with a stable Message-ID and the RFC 8058 headers of marketing mail.
    let file = suite.storage.data_dir.path().join("outbox/email").join(format!("{}.eml", first.message_id));
    let eml = std::fs::read_to_string(&file).unwrap();
    assert!(eml.contains(&format!("Message-ID: <{}@rapport.localhost>", first.message_id)), "{eml}");
    assert!(eml.contains("List-Unsubscribe: <http://"), "{eml}");
    assert!(eml.contains("/consent/unsubscribe?token="), "{eml}");
    assert!(eml.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"), "{eml}");
    assert!(eml.contains("Hi Ann from Berlin: 10% off"), "{eml}");
    let files = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "eml"))
        .count();
    assert_eq!(files, 1);

    // By the identifier too, and listed newest first.
    let by_email =
        d.send(suite.admin(send_request(by(email("ANN@example.com")), "welcome-ann-2"))).await.unwrap().into_inner();
    wait_for(&suite, &mut d, &by_email.message_id, &[MessageStatus::Sent]).await;
    let listed = d
        .list_messages(suite.admin(pb::ListMessagesRequest { customer: by(email("ann@example.com")), page: None }))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, vec![by_email.message_id.as_str(), first.message_id.as_str()]);
    suite.stop().await;
}

#[tokio::test]
async fn a_batch_of_more_customers_than_one_profile_read_takes_is_sent_whole() {
    // BatchGetProfiles takes at most 100 customers; a claim of 150 messages to 150 customers must read
    // their profiles in several calls, not wait forever for a profile service that refuses the call.
    let (suite, channel) = start("claim_batch = 200\n").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let mut requests = Vec::new();
    for i in 0..150 {
        let who = customer_with(&suite, &channel, &format!("reader{i}@example.com"), true).await;
        requests.push(send_request(customer(&who), &format!("batch-{i}")));
    }
    let sent = d.send_batch(suite.admin(pb::SendBatchRequest { messages: requests })).await.unwrap().into_inner();
    assert_eq!(sent.results.len(), 150);
    for r in sent.results {
        let Some(pb::send_batch_result::Outcome::Sent(s)) = r.outcome else { panic!("refused: {r:?}") };
        let m = wait_for(&suite, &mut d, &s.message_id, &[MessageStatus::Sent]).await;
        assert_eq!(m.subject, "Welcome Ann", "personalised from the profile");
    }
    suite.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_at_send_naming_the_field_and_a_batch_reports_per_index() {
    let (suite, channel) = start("").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let ann = customer_with(&suite, &channel, "ann@example.com", true).await;
    let cases: Vec<(pb::SendRequest, &str)> = vec![
        (
            pb::SendRequest { to: "not-an-address".into(), ..send_request(customer(&ann), "k1") },
            "to: is not an email address",
        ),
        (pb::SendRequest { idempotency_key: String::new(), ..send_request(customer(&ann), "") }, "idempotency_key"),
        (pb::SendRequest { channel: Channel::Web as i32, ..send_request(customer(&ann), "k2") }, "channel"),
        (pb::SendRequest { template_id: "nope".into(), ..send_request(customer(&ann), "k3") }, "template_id"),
        (pb::SendRequest { customer: None, ..send_request(None, "k4") }, "customer"),
        (pb::SendRequest { locale: "!!".into(), ..send_request(customer(&ann), "k5") }, "locale"),
        (
            pb::SendRequest {
                channel: Channel::Sms as i32,
                template_id: String::new(),
                content: Some(pb::Content { text: "hi".into(), ..Default::default() }),
                to: "12".into(),
                ..send_request(customer(&ann), "k6")
            },
            "to: is not",
        ),
        (
            pb::SendRequest {
                template_id: String::new(),
                content: Some(pb::Content { subject: "s".into(), text: "{{ oops".into(), ..Default::default() }),
                ..send_request(customer(&ann), "k7")
            },
            "content.text",
        ),
    ];
    for (request, field) in cases {
        let err = d.send(suite.admin(request)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {}", err.message());
        assert!(err.message().contains(field), "`{field}` not in `{}`", err.message());
    }
    // A customer without a phone number cannot get an SMS without `to`.
    let err = d
        .send(suite.admin(pb::SendRequest {
            channel: Channel::Sms as i32,
            template_id: String::new(),
            content: Some(pb::Content { text: "hi".into(), ..Default::default() }),
            ..send_request(customer(&ann), "k8")
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("no phone"), "{}", err.message());

    // A batch: each message on its own, errors by index, duplicates within the batch found.
    let batch = d
        .send_batch(suite.admin(pb::SendBatchRequest {
            messages: vec![
                send_request(customer(&ann), "b1"),
                pb::SendRequest { to: "bad".into(), ..send_request(customer(&ann), "b2") },
                send_request(customer(&ann), "b1"),
                send_request(by(email("nobody-known@example.com")), "b3"),
            ],
        }))
        .await
        .unwrap()
        .into_inner();
    use pb::send_batch_result::Outcome;
    let outcome = |i: usize| batch.results[i].outcome.clone().unwrap();
    let Outcome::Sent(b1) = outcome(0) else { panic!("{:?}", outcome(0)) };
    assert!(!b1.duplicate);
    let Outcome::Error(e) = outcome(1) else { panic!("{:?}", outcome(1)) };
    assert_eq!(e, "INVALID_ARGUMENT: messages[1].to: is not an email address");
    let Outcome::Sent(dup) = outcome(2) else { panic!("{:?}", outcome(2)) };
    assert!(dup.duplicate);
    assert_eq!(dup.message_id, b1.message_id);
    // An address nobody holds is still an address: the message goes to it (and consent decides).
    let Outcome::Sent(unknown) = outcome(3) else { panic!("{:?}", outcome(3)) };
    let m = wait_for(&suite, &mut d, &unknown.message_id, &[MessageStatus::Blocked]).await;
    assert!(m.customer_id.is_empty());
    let err = d.send_batch(suite.admin(pb::SendBatchRequest { messages: vec![] })).await.unwrap_err();
    assert!(err.message().starts_with("messages"), "{}", err.message());
    suite.stop().await;
}

#[tokio::test]
async fn consent_is_checked_again_at_send_time_and_a_missing_variable_fails_the_message() {
    let (suite, channel) = start("").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let ann = customer_with(&suite, &channel, "ann@example.com", true).await;
    // Withdrawn after the decision was made: the message is blocked, not sent.
    record(&suite, &channel, "ann@example.com", consent::ConsentStatus::Withdrawn).await;
    let blocked = d.send(suite.admin(send_request(customer(&ann), "blocked"))).await.unwrap().into_inner();
    let m = wait_for(&suite, &mut d, &blocked.message_id, &[MessageStatus::Blocked]).await;
    assert!(m.history.last().unwrap().detail.starts_with("CHECK_REASON_WITHDRAWN"), "{m:?}");
    // A service message still goes.
    let service = d
        .send(suite.admin(pb::SendRequest {
            message_class: MessageClass::Service as i32,
            ..send_request(customer(&ann), "service")
        }))
        .await
        .unwrap()
        .into_inner();
    wait_for(&suite, &mut d, &service.message_id, &[MessageStatus::Sent]).await;

    // The template needs `offer.title`: without it the message fails with the reason and is dead-lettered.
    let bob = customer_with(&suite, &channel, "bob@example.com", true).await;
    let failing = d
        .send(suite.admin(pb::SendRequest { data: None, ..send_request(customer(&bob), "no-offer") }))
        .await
        .unwrap()
        .into_inner();
    let m = wait_for(&suite, &mut d, &failing.message_id, &[MessageStatus::Failed]).await;
    let reason = &m.history.last().unwrap().detail;
    assert!(reason.starts_with("template: subject") || reason.starts_with("template: "), "{reason}");
    assert!(reason.contains("undefined"), "{reason}");
    let file = suite.storage.data_dir.path().join("outbox/email").join(format!("{}.eml", failing.message_id));
    assert!(!file.exists(), "nothing half-filled was written");
    let dead = d.list_dead_letters(suite.admin(pb::ListDeadLettersRequest::default())).await.unwrap().into_inner();
    assert_eq!(
        dead.messages.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(),
        vec![failing.message_id.clone()]
    );
    // Replay checks and renders again (and fails again the same way, since the data is the same).
    let replayed = d
        .replay_dead_letters(
            suite.admin(pb::ReplayDeadLettersRequest { message_ids: vec![failing.message_id.clone()] }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.requeued, 1);
    let m = wait_for(&suite, &mut d, &failing.message_id, &[MessageStatus::Failed]).await;
    let seen: Vec<i32> = statuses(&m);
    assert_eq!(
        seen,
        vec![
            MessageStatus::Queued as i32,
            MessageStatus::Failed as i32,
            MessageStatus::Queued as i32,
            MessageStatus::Failed as i32
        ]
    );
    suite.stop().await;
}

#[tokio::test]
async fn without_consent_a_message_waits_and_is_never_sent_unchecked() {
    // Delivery alone, with consent configured at an address where nothing answers.
    let suite = TestSuite::start_with(
        SuiteOptions::services(&["delivery"]).config(FAST).set("clients.consent", "http://127.0.0.1:9"),
    )
    .await;
    let mut d = DeliveryServiceClient::new(suite.channel().await);
    let queued = d
        .send(suite.admin(pb::SendRequest {
            customer: customer("cus_someone"),
            to: "someone@example.com".into(),
            template_id: String::new(),
            content: Some(pb::Content { subject: "Hi".into(), text: "Hello".into(), ..Default::default() }),
            ..send_request(None, "no-consent")
        }))
        .await
        .unwrap()
        .into_inner();
    let m = wait_for(&suite, &mut d, &queued.message_id, &[MessageStatus::Deferred]).await;
    assert!(m.history.last().unwrap().detail.contains("consent"), "{m:?}");
    // It keeps waiting: still deferred later, never sent, one history entry for the whole wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = wait_for(&suite, &mut d, &queued.message_id, &[MessageStatus::Deferred]).await;
    assert_eq!(statuses(&m), vec![MessageStatus::Queued as i32, MessageStatus::Deferred as i32]);
    let file = suite.storage.data_dir.path().join("outbox/email").join(format!("{}.eml", queued.message_id));
    assert!(!file.exists());
    suite.stop().await;
}

#[tokio::test]
async fn marketing_waits_for_the_end_of_quiet_hours() {
    // Quiet hours around the current minute (UTC), so the test does not depend on the time of day.
    let minute = (rapport_storage::now_millis() / 60_000) % (24 * 60);
    let hhmm = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(1440) % 60);
    let (start, end) = (hhmm(minute - 60), hhmm(minute + 60));
    let options = SuiteOptions::default()
        .config(FAST)
        .set("delivery.quiet_hours_start", start)
        .set("delivery.quiet_hours_end", end);
    let suite = TestSuite::start_with(options).await;
    let channel = suite.channel().await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let ann = customer_with(&suite, &channel, "ann@example.com", true).await;
    let marketing = d.send(suite.admin(send_request(customer(&ann), "quiet"))).await.unwrap().into_inner();
    let m = wait_for(&suite, &mut d, &marketing.message_id, &[MessageStatus::Deferred]).await;
    assert!(m.history.last().unwrap().detail.starts_with("quiet hours in UTC until"), "{m:?}");
    // Service messages are not held.
    let service = d
        .send(suite.admin(pb::SendRequest {
            message_class: MessageClass::Service as i32,
            ..send_request(customer(&ann), "svc")
        }))
        .await
        .unwrap()
        .into_inner();
    wait_for(&suite, &mut d, &service.message_id, &[MessageStatus::Sent]).await;
    suite.stop().await;
}

#[tokio::test]
async fn tracking_links_record_opens_and_clicks_and_refuse_forgery() {
    let (suite, channel) = start("").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let ann = customer_with(&suite, &channel, "ann@example.com", true).await;
    let sent = d.send(suite.admin(send_request(customer(&ann), "tracked"))).await.unwrap().into_inner();
    wait_for(&suite, &mut d, &sent.message_id, &[MessageStatus::Sent]).await;
    let eml = std::fs::read_to_string(
        suite.storage.data_dir.path().join("outbox/email").join(format!("{}.eml", sent.message_id)),
    )
    .unwrap();
    // The HTML part is quoted-printable: undo soft breaks and =3D before looking for links.
    let html = eml.replace("=\r\n", "").replace("=3D", "=");
    let pixel = html.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("an open pixel").to_string();
    let click = html
        .split("href=\"")
        .map(|s| s.split('"').next().unwrap_or_default().replace("&amp;", "&"))
        .find(|h| h.contains("/delivery/c/"))
        .expect("a rewritten link");
    let path = |u: &str| u.split_once("//").map(|(_, r)| r[r.find('/').unwrap()..].to_string()).unwrap();

    let (status, _) = http_get(&format!("{}{}", suite.http_url, path(&pixel))).await;
    assert_eq!(status, 200);
    let m = wait_for(&suite, &mut d, &sent.message_id, &[MessageStatus::Opened]).await;
    assert_eq!(m.status, MessageStatus::Opened as i32);
    let (status, body) = http_get(&format!("{}{}", suite.http_url, path(&click))).await;
    assert_eq!(status, 302, "{body}");
    wait_for(&suite, &mut d, &sent.message_id, &[MessageStatus::Clicked]).await;

    // A forged or altered link is a 400 page and redirects nowhere.
    let altered = path(&click).replace("shop.example", "evil.example");
    let (status, body) = http_get(&format!("{}{altered}", suite.http_url)).await;
    assert_eq!(status, 400);
    assert!(body.contains("Invalid link"));
    let (status, _) = http_get(&format!(
        "{}/delivery/c/{}?u=https%3A%2F%2Fevil.example%2F&s=AAAAAAAAAAAAAAAAAAAAAA",
        suite.http_url, sent.message_id
    ))
    .await;
    assert_eq!(status, 400);
    let (status, _) = http_get(&format!("{}/delivery/o/{}/forged.gif", suite.http_url, sent.message_id)).await;
    assert_eq!(status, 400);
    suite.stop().await;
}

#[tokio::test]
async fn call_centre_tasks_are_claimed_by_one_agent_and_inbox_reads_are_opens() {
    let (suite, channel) = start("").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    let ann = customer_with(&suite, &channel, "ann@example.com", false).await;
    let call = d
        .send(suite.admin(pb::SendRequest {
            customer: customer(&ann),
            channel: Channel::CallCentre as i32,
            to: "+1 415 555 2671".into(),
            content: Some(pb::Content { text: "Offer {{ offer.title }} to the caller".into(), ..Default::default() }),
            data: data(serde_json::json!({"offer": {"title": "upgrade"}})),
            idempotency_key: "call-1".into(),
            offer_id: "off_9".into(),
            decision_id: "dec_9".into(),
            message_class: MessageClass::Service as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    wait_for(&suite, &mut d, &call.message_id, &[MessageStatus::Sent]).await;
    let tasks = d.list_tasks(suite.admin(pb::ListTasksRequest::default())).await.unwrap().into_inner().tasks;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].script, "Offer upgrade to the caller");
    assert_eq!(tasks[0].decision_id, "dec_9");
    let task_id = tasks[0].task_id.clone();
    // Two agents at once: one wins.
    let claim = |agent: &str| {
        let mut d = d.clone();
        let request = suite.admin(pb::ClaimTaskRequest { task_id: task_id.clone(), agent_id: agent.into() });
        async move { d.claim_task(request).await }
    };
    let (a, b) = tokio::join!(claim("agent-a"), claim("agent-b"));
    assert_eq!([a.is_ok(), b.is_ok()].iter().filter(|x| **x).count(), 1, "{a:?} {b:?}");
    let (winner, loser) = match (a, b) {
        (Ok(_), Err(e)) => ("agent-a", e),
        (Err(e), Ok(_)) => ("agent-b", e),
        other => panic!("exactly one claim wins: {other:?}"),
    };
    assert_eq!(loser.code(), Code::FailedPrecondition);
    let open = d.list_tasks(suite.admin(pb::ListTasksRequest::default())).await.unwrap().into_inner().tasks;
    assert!(open.is_empty(), "a claimed task is not listed as open");
    let done = d
        .complete_task(suite.admin(pb::CompleteTaskRequest {
            task_id: task_id.clone(),
            agent_id: winner.into(),
            outcome: "accepted".into(),
            notes: "wants the upgrade".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, pb::TaskState::Done as i32);
    assert_eq!(done.outcome, "accepted");
    wait_for(&suite, &mut d, &call.message_id, &[MessageStatus::Delivered]).await;

    // In-app: the inbox, and reading is an open.
    let note = d
        .send(suite.admin(pb::SendRequest {
            customer: customer(&ann),
            channel: Channel::InApp as i32,
            content: Some(pb::Content { subject: "Hi".into(), text: "Your points".into(), ..Default::default() }),
            idempotency_key: "inapp-1".into(),
            message_class: MessageClass::Service as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    wait_for(&suite, &mut d, &note.message_id, &[MessageStatus::Sent]).await;
    let inbox = d
        .list_inbox(suite.admin(pb::ListInboxRequest { customer: customer(&ann), unread_only: true, page: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inbox.items.len(), 1);
    assert_eq!(inbox.items[0].text, "Your points");
    let marked = d
        .mark_inbox_read(
            suite.admin(pb::MarkInboxReadRequest {
                customer: customer(&ann),
                message_ids: vec![note.message_id.clone()],
            }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(marked.marked, 1);
    wait_for(&suite, &mut d, &note.message_id, &[MessageStatus::Opened]).await;
    let unread = d
        .list_inbox(suite.admin(pb::ListInboxRequest { customer: customer(&ann), unread_only: true, page: None }))
        .await
        .unwrap()
        .into_inner();
    assert!(unread.items.is_empty());
    suite.stop().await;
}

#[tokio::test]
async fn export_lists_the_messages_and_erasure_cancels_queued_ones_and_wipes_content() {
    let (suite, channel) = start("").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let ann = customer_with(&suite, &channel, "ann@example.com", true).await;
    let sent = d.send(suite.admin(send_request(customer(&ann), "dsr-1"))).await.unwrap().into_inner();
    wait_for(&suite, &mut d, &sent.message_id, &[MessageStatus::Sent]).await;
    let later = d
        .send(suite.admin(pb::SendRequest {
            not_before: Some(rapport_rpc::convert::timestamp(rapport_storage::now_millis() + 3_600_000)),
            ..send_request(customer(&ann), "dsr-2")
        }))
        .await
        .unwrap()
        .into_inner();
    let export = d
        .export_customer(
            suite.admin(rapport_proto::common::v1::ExportCustomerRequest { customer: by(email("ann@example.com")) }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.customer_id, ann);
    let doc = rapport_rpc::convert::struct_to_json(export.data.as_ref().unwrap());
    let messages = doc["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().any(|m| m["to"] == "ann@example.com" && m["subject"] == "Welcome Ann"), "{doc:?}");

    let erased = d
        .erase_customer(suite.admin(rapport_proto::common::v1::EraseCustomerRequest {
            customer: customer(&ann),
            reason: "ticket-7".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(erased.records_erased >= 2);
    let cancelled = wait_for(&suite, &mut d, &later.message_id, &[MessageStatus::Cancelled]).await;
    assert!(cancelled.customer_id.is_empty());
    let old = d
        .get_message(suite.admin(pb::GetMessageRequest { message_id: sent.message_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(old.subject.is_empty() && old.customer_id.is_empty(), "{old:?}");
    let err = d
        .export_customer(suite.admin(rapport_proto::common::v1::ExportCustomerRequest { customer: customer(&ann) }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    suite.stop().await;
}

/// Waits until the customer's timeline has an event named `name`.
async fn timeline_event(
    suite: &TestSuite,
    channel: &GrpcChannel,
    customer_id: &str,
    name: &str,
) -> rapport_proto::profile::v1::Event {
    let mut p = rapport_proto::profile::v1::profile_service_client::ProfileServiceClient::new(channel.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = p
            .get_timeline(suite.admin(rapport_proto::profile::v1::GetTimelineRequest {
                customer: customer(customer_id),
                names: vec![name.into()],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        if let Some(e) = t.events.into_iter().next() {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "no {name} on the timeline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn check_email(suite: &TestSuite, channel: &GrpcChannel, address: &str) -> consent::CheckResponse {
    ConsentServiceClient::new(channel.clone())
        .check(suite.admin(consent::CheckRequest {
            contact_point: Some(email(address)),
            channel: Channel::Email as i32,
            purpose: Some(Purpose { name: "marketing".into() }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn bounces_complaints_and_unsubscribes_flow_into_consent_and_the_timeline() {
    let (suite, channel) = start("feedback_token = \"intake-token-0123456789\"\n").await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let ann = customer_with(&suite, &channel, "ann@example.com", true).await;
    let bob = customer_with(&suite, &channel, "bob@example.com", true).await;
    let to_ann = d.send(suite.admin(send_request(customer(&ann), "fb-ann"))).await.unwrap().into_inner();
    let to_bob = d.send(suite.admin(send_request(customer(&bob), "fb-bob"))).await.unwrap().into_inner();
    wait_for(&suite, &mut d, &to_ann.message_id, &[MessageStatus::Sent]).await;
    wait_for(&suite, &mut d, &to_bob.message_id, &[MessageStatus::Sent]).await;

    // The intake refuses a wrong token and bad reports by field.
    let post = |token: &str, body: String| {
        let url = format!("{}/delivery/feedback", suite.http_url);
        let token = token.to_string();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let rest = url.strip_prefix("http://").unwrap();
            let (authority, path) = rest.split_at(rest.find('/').unwrap());
            let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
            let req = format!(
                "POST {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            let status: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
            (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
        }
    };
    let (status, _) = post("wrong", r#"{"events":[]}"#.into()).await;
    assert_eq!(status, 401);
    let (status, body) =
        post("intake-token-0123456789", r#"{"events":[{"message_id":"x","type":"explosion"}]}"#.into()).await;
    assert_eq!(status, 400);
    assert!(body.contains("events[0].type"), "{body}");

    // Ann's address bounces for good, Bob complains.
    let report = serde_json::json!({"events": [
        {"message_id": format!("<{}@rapport.localhost>", to_ann.message_id), "type": "hard_bounce", "detail": "550 5.1.1 no such user"},
        {"message_id": to_bob.message_id, "type": "complaint", "detail": "abuse"},
        {"message_id": "msg_unknown", "type": "delivered"},
    ]});
    let (status, body) = post("intake-token-0123456789", report.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"accepted\":2") && body.contains("msg_unknown"), "{body}");
    let m = wait_for(&suite, &mut d, &to_ann.message_id, &[MessageStatus::Bounced]).await;
    assert!(m.history.last().unwrap().detail.contains("550"), "{m:?}");

    // Consent suppresses both addresses (the feed is asynchronous: wait for it).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (
            check_email(&suite, &channel, "ann@example.com").await,
            check_email(&suite, &channel, "bob@example.com").await,
        );
        if !a.allowed && !b.allowed {
            assert_eq!(a.reason, consent::CheckReason::Suppressed as i32);
            assert_eq!(a.suppression.unwrap().reason, consent::SuppressionReason::HardBounce as i32);
            assert_eq!(b.suppression.unwrap().reason, consent::SuppressionReason::Complaint as i32);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no suppression: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The timeline shows the bounce with the decision that led to the message.
    let bounced = timeline_event(&suite, &channel, &ann, "message_bounced").await;
    let ctx = bounced.context.unwrap();
    assert_eq!((ctx.decision_id.as_str(), ctx.delivery_message_id.as_str()), ("dec_1", to_ann.message_id.as_str()));
    // The next marketing email to Ann is blocked at send time.
    let next = d.send(suite.admin(send_request(customer(&ann), "fb-ann-2"))).await.unwrap().into_inner();
    let m = wait_for(&suite, &mut d, &next.message_id, &[MessageStatus::Blocked]).await;
    assert!(m.history.last().unwrap().detail.starts_with("CHECK_REASON_SUPPRESSED"), "{m:?}");

    // Unsubscribing through the link in the message: consent records it, the message and timeline show it.
    let cleo = customer_with(&suite, &channel, "cleo@example.com", true).await;
    let to_cleo = d.send(suite.admin(send_request(customer(&cleo), "fb-cleo"))).await.unwrap().into_inner();
    wait_for(&suite, &mut d, &to_cleo.message_id, &[MessageStatus::Sent]).await;
    let eml = std::fs::read_to_string(
        suite.storage.data_dir.path().join("outbox/email").join(format!("{}.eml", to_cleo.message_id)),
    )
    .unwrap();
    let link =
        eml.lines().find_map(|l| l.strip_prefix("List-Unsubscribe: <")).unwrap().trim_end_matches('>').to_string();
    let path = &link[link.find("/consent/").unwrap()..];
    let (status, _) =
        rapport_testkit::http_post_form(&format!("{}{path}", suite.http_url), "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 200);
    let unsubscribed = timeline_event(&suite, &channel, &cleo, "message_unsubscribed").await;
    assert_eq!(unsubscribed.context.unwrap().delivery_message_id, to_cleo.message_id);
    let m = d
        .get_message(suite.admin(pb::GetMessageRequest { message_id: to_cleo.message_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(m.history.iter().any(|h| h.detail.contains("unsubscribed")), "{m:?}");
    assert!(!check_email(&suite, &channel, "cleo@example.com").await.allowed);
    suite.stop().await;
}

/// Split deployment with a misconfigured client token: delivery calls the profile service of another
/// process with a key that lacks `profile:read`. The real profile service refuses the read
/// (PERMISSION_DENIED), which waiting will not change: a message whose template reads the profile fails
/// with the reason (dead-lettered, replayable once the token is fixed) instead of waiting forever, and a
/// template that does not read the profile is still sent.
#[tokio::test]
async fn a_profile_read_refused_for_good_fails_the_message_with_the_reason() {
    let token = "delivery-without-profile-read";
    let key = format!(
        "[[auth.api_keys]]\nname = \"delivery\"\nsha256 = \"{}\"\nscopes = [\"consent:read\", \"identity:read\"]\n",
        rapport_auth::hash_token(token)
    );
    let profile = TestSuite::start_with(SuiteOptions::services(&["profile"]).config(key)).await;
    let token_file = profile.storage.data_dir.path().join("delivery-client.token");
    std::fs::write(&token_file, token).unwrap();
    let clients =
        format!("{FAST}[clients]\nprofile = \"{}\"\ntoken_file = \"{}\"\n", profile.grpc_url, token_file.display());
    let here = SuiteOptions::services(&["identity", "consent", "delivery"]).config(clients);
    let suite = TestSuite::start_with(here).await;
    let channel = suite.channel().await;
    let mut d = DeliveryServiceClient::new(channel.clone());
    put(&suite, &mut d, welcome()).await;
    let plain = template("plain", Channel::Email, vec![("en", "News", "", "Hello: {{ offer.title }}")]);
    put(&suite, &mut d, plain).await;
    let ann = IdentityServiceClient::new(channel.clone())
        .resolve(suite.admin(id::ResolveRequest { identifiers: vec![email("ann@example.com")], ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    record(&suite, &channel, "ann@example.com", consent::ConsentStatus::Granted).await;

    let refused = d.send(suite.admin(send_request(customer(&ann), "reads-profile"))).await.unwrap().into_inner();
    let m = wait_for(&suite, &mut d, &refused.message_id, &[MessageStatus::Failed, MessageStatus::Sent]).await;
    assert_eq!(m.status, MessageStatus::Failed as i32, "{m:?}");
    let reason = &m.history.last().unwrap().detail;
    assert!(reason.starts_with("profile refused the read: PermissionDenied"), "{reason}");
    assert!(reason.contains("profile:read"), "the reason names the missing scope: {reason}");
    assert!(!statuses(&m).contains(&(MessageStatus::Deferred as i32)), "never left waiting: {m:?}");
    let dead = d.list_dead_letters(suite.admin(pb::ListDeadLettersRequest::default())).await.unwrap().into_inner();
    assert!(dead.messages.iter().any(|x| x.message_id == refused.message_id), "dead-lettered: {dead:?}");

    // Quiet hours are off, so a template without profile variables needs no profile read: it goes.
    let sent = d
        .send(suite.admin(pb::SendRequest { template_id: "plain".into(), ..send_request(customer(&ann), "plain") }))
        .await
        .unwrap()
        .into_inner();
    wait_for(&suite, &mut d, &sent.message_id, &[MessageStatus::Sent]).await;
    suite.stop().await;
    profile.stop().await;
}
