//! Consent over gRPC and HTTP: the ledger and Check, late entries, bad input by field, suppressions,
//! double opt-in and unsubscribe tokens (gRPC and the RFC 8058 one-click POST), concurrent writers, and
//! consent following identity's merges and splits.

use std::time::Duration;

use prost_types::Timestamp;
use rapport_proto::common::v1::{
    Channel, CustomerRef, Identifier, IdentifierType, Provenance, Purpose, customer_ref::Ref,
};
use rapport_proto::consent::v1::{self as pb, consent_service_client::ConsentServiceClient};
use rapport_proto::identity::v1::{self as id, identity_service_client::IdentityServiceClient};
use rapport_testkit::{SuiteOptions, TestSuite, http_get, http_post_form};
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;

fn email(v: &str) -> Identifier {
    Identifier { r#type: IdentifierType::Email as i32, value: v.into(), namespace: String::new() }
}

fn phone(v: &str) -> Identifier {
    Identifier { r#type: IdentifierType::Phone as i32, value: v.into(), namespace: String::new() }
}

fn by(i: Identifier) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::Identifier(i)) })
}

fn purpose(name: &str) -> Option<Purpose> {
    Some(Purpose { name: name.into() })
}

fn ago(minutes: i64) -> Option<Timestamp> {
    Some(rapport_rpc::convert::timestamp(rapport_storage::now_millis() - minutes * 60_000))
}

fn source(name: &str) -> Option<Provenance> {
    Some(Provenance { source: name.into(), source_record_id: String::new(), actor: "agent-7".into() })
}

fn web_form() -> Option<pb::Proof> {
    Some(pb::Proof {
        notice_id: "privacy-notice".into(),
        notice_version: "3".into(),
        method: pb::ProofMethod::WebForm as i32,
        ip_address: "203.0.113.9".into(),
        user_agent: "Mozilla/5.0".into(),
        ..Default::default()
    })
}

/// An email-marketing entry for `who`, made `minutes_ago`.
fn entry(who: Identifier, status: pb::ConsentStatus, minutes_ago: i64) -> pb::EntryInput {
    pb::EntryInput {
        customer: by(who.clone()),
        contact_point: Some(who),
        channel: Channel::Email as i32,
        purpose: purpose("marketing"),
        status: status as i32,
        legal_basis: pb::LegalBasis::Consent as i32,
        provenance: source("webshop"),
        proof: web_form(),
        occurred_at: ago(minutes_ago),
        ..Default::default()
    }
}

fn check(who: Identifier, purpose_name: &str, region: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        customer: None,
        contact_point: Some(who),
        channel: Channel::Email as i32,
        purpose: purpose(purpose_name),
        region: region.into(),
        ..Default::default()
    }
}

async fn resolve(suite: &TestSuite, channel: &GrpcChannel, ids: Vec<Identifier>) -> id::ResolveResponse {
    IdentityServiceClient::new(channel.clone())
        .resolve(suite.admin(id::ResolveRequest { identifiers: ids, provenance: source("crm"), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
}

async fn record(suite: &TestSuite, c: &mut ConsentServiceClient<GrpcChannel>, e: pb::EntryInput) -> pb::ConsentEntry {
    let r = c.record(suite.admin(pb::RecordRequest { entries: vec![e] })).await.unwrap().into_inner();
    r.entries.into_iter().next().expect("one entry")
}

async fn ask(suite: &TestSuite, c: &mut ConsentServiceClient<GrpcChannel>, r: pb::CheckRequest) -> pb::CheckResponse {
    c.check(suite.admin(r)).await.unwrap().into_inner()
}

#[tokio::test]
async fn check_follows_the_ledger_and_a_late_older_entry_never_wins() {
    let suite = TestSuite::start_with(SuiteOptions::default().config("[consent]\nopt_out_regions = [\"US\"]\n")).await;
    let channel = suite.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let kim = email("Kim@Example.com");
    resolve(&suite, &channel, vec![kim.clone()]).await;

    // Nothing recorded: opt-in region denies marketing, opt-out region allows it, service messages pass.
    let eu = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(!eu.allowed);
    assert_eq!(eu.reason, pb::CheckReason::NoRecordOptInRegion as i32);
    let us = ask(&suite, &mut consent, check(kim.clone(), "marketing", "US")).await;
    assert!(us.allowed);
    assert_eq!(us.reason, pb::CheckReason::NoRecordOptOutRegion as i32);
    let service = ask(&suite, &mut consent, check(kim.clone(), "service_messages", "DE")).await;
    assert!(service.allowed);
    assert_eq!(service.reason, pb::CheckReason::ServiceMessage as i32);

    // A grant: allowed, and the answer names the entry it rests on.
    let grant = record(&suite, &mut consent, entry(kim.clone(), pb::ConsentStatus::Granted, 10)).await;
    assert!(!grant.customer_id.is_empty());
    let after_grant = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(after_grant.allowed, "{after_grant:?}");
    assert_eq!(after_grant.reason, pb::CheckReason::Granted as i32);
    assert_eq!(after_grant.entry.as_ref().unwrap().entry_id, grant.entry_id);
    assert_eq!(after_grant.customer_id, grant.customer_id);

    // A withdrawal the customer made earlier, arriving late, does not override the newer grant.
    let late = record(&suite, &mut consent, entry(kim.clone(), pb::ConsentStatus::Withdrawn, 60)).await;
    let still = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(still.allowed);
    assert_eq!(still.entry.as_ref().unwrap().entry_id, grant.entry_id);

    // A withdrawal now takes effect on the very next Check.
    let withdrawal = record(&suite, &mut consent, entry(kim.clone(), pb::ConsentStatus::Withdrawn, 0)).await;
    let denied = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(!denied.allowed);
    assert_eq!(denied.reason, pb::CheckReason::Withdrawn as i32);
    assert_eq!(denied.entry.as_ref().unwrap().entry_id, withdrawal.entry_id);

    // Check at a past instant answers from the ledger as it stood then.
    let mut then = check(kim.clone(), "marketing", "DE");
    then.at = ago(5);
    assert!(ask(&suite, &mut consent, then).await.allowed);

    // The history is readable by the identifier, nothing updated in place, with who and how.
    let history = consent
        .history(suite.admin(pb::HistoryRequest { customer: by(email("kim@example.com")), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = history.entries.iter().map(|e| e.entry_id.as_str()).collect();
    for e in [&grant, &late, &withdrawal] {
        assert!(ids.contains(&e.entry_id.as_str()), "{ids:?} lacks {}", e.entry_id);
    }
    assert_eq!(history.entries.len(), 3);
    let stored = history.entries.iter().find(|e| e.entry_id == grant.entry_id).unwrap();
    assert_eq!(stored.provenance.as_ref().unwrap().actor, "agent-7");
    assert_eq!(stored.proof.as_ref().unwrap().ip_address, "203.0.113.9");
    assert_eq!(stored.proof.as_ref().unwrap().notice_version, "3");
    suite.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_records_nothing() {
    let suite = TestSuite::start().await;
    let mut consent = ConsentServiceClient::new(suite.channel().await);
    let kim = email("kim@example.com");
    let cases: Vec<(pb::EntryInput, &str)> = vec![
        (
            pb::EntryInput { purpose: purpose("astrology"), ..entry(kim.clone(), pb::ConsentStatus::Granted, 0) },
            "entries[0].purpose.name",
        ),
        (pb::EntryInput { channel: 0, ..entry(kim.clone(), pb::ConsentStatus::Granted, 0) }, "entries[0].channel"),
        (pb::EntryInput { channel: 99, ..entry(kim.clone(), pb::ConsentStatus::Granted, 0) }, "entries[0].channel"),
        (
            pb::EntryInput { provenance: None, ..entry(kim.clone(), pb::ConsentStatus::Granted, 0) },
            "entries[0].provenance.source",
        ),
        (pb::EntryInput { status: 0, ..entry(kim.clone(), pb::ConsentStatus::Granted, 0) }, "entries[0].status"),
        (
            pb::EntryInput { occurred_at: None, ..entry(kim.clone(), pb::ConsentStatus::Granted, 0) },
            "entries[0].occurred_at",
        ),
        (
            pb::EntryInput {
                contact_point: Some(email("not-an-email")),
                customer: None,
                ..entry(kim.clone(), pb::ConsentStatus::Granted, 0)
            },
            "entries[0].contact_point",
        ),
    ];
    for (input, field) in cases {
        // A valid entry first: the whole request is refused, so it is not recorded either.
        let good = entry(email("lee@example.com"), pb::ConsentStatus::Granted, 0);
        let err = consent.record(suite.admin(pb::RecordRequest { entries: vec![input, good] })).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {}", err.message());
        assert!(err.message().contains(field), "{field} not named in `{}`", err.message());
    }
    let err = consent.check(suite.admin(check(kim.clone(), "astrology", ""))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("purpose"), "{}", err.message());
    let err = consent
        .check(suite.admin(pb::CheckRequest { channel: 0, ..check(kim.clone(), "marketing", "") }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("channel"), "{}", err.message());

    // Nothing was recorded by any refused request.
    for who in [kim, email("lee@example.com")] {
        let history = consent
            .history(suite.admin(pb::HistoryRequest { contact_point: Some(who), ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        assert!(history.entries.is_empty(), "{:?}", history.entries);
    }
    suite.stop().await;
}

#[tokio::test]
async fn a_suppression_wins_over_any_grant_until_removed() {
    let suite = TestSuite::start().await;
    let mut consent = ConsentServiceClient::new(suite.channel().await);
    let kim = email("kim@example.com");
    record(&suite, &mut consent, entry(kim.clone(), pb::ConsentStatus::Granted, 1)).await;
    assert!(ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await.allowed);

    let added = consent
        .add_suppression(suite.admin(pb::AddSuppressionRequest {
            contact_point: Some(email("KIM@example.com")),
            channel: Channel::Email as i32,
            reason: pb::SuppressionReason::HardBounce as i32,
            provenance: source("delivery"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(added.created);
    let suppression = added.suppression.unwrap();
    for purpose_name in ["marketing", "service_messages"] {
        let answer = ask(&suite, &mut consent, check(kim.clone(), purpose_name, "DE")).await;
        assert!(!answer.allowed, "{purpose_name}");
        assert_eq!(answer.reason, pb::CheckReason::Suppressed as i32);
        assert_eq!(answer.suppression.unwrap().suppression_id, suppression.suppression_id);
    }
    // SMS is another channel: untouched.
    let sms = ask(
        &suite,
        &mut consent,
        pb::CheckRequest { channel: Channel::Sms as i32, ..check(kim.clone(), "service_messages", "DE") },
    )
    .await;
    assert!(sms.allowed);

    let missing_reason =
        consent.add_suppression(suite.admin(pb::AddSuppressionRequest { reason: 0, ..Default::default() })).await;
    assert_eq!(missing_reason.unwrap_err().code(), Code::InvalidArgument);

    consent
        .remove_suppression(suite.admin(pb::RemoveSuppressionRequest {
            suppression_id: suppression.suppression_id.clone(),
            reason: "address fixed".into(),
        }))
        .await
        .unwrap();
    assert!(ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await.allowed);
    suite.stop().await;
}

#[tokio::test]
async fn double_opt_in_grants_once_and_bad_tokens_change_nothing() {
    let suite = TestSuite::start().await;
    let mut consent = ConsentServiceClient::new(suite.channel().await);
    let kim = email("kim@example.com");
    let started = consent
        .start_double_opt_in(suite.admin(pb::StartDoubleOptInRequest {
            contact_point: Some(kim.clone()),
            channel: Channel::Email as i32,
            purposes: vec![Purpose { name: "marketing".into() }],
            provenance: source("newsletter-form"),
            proof: web_form(),
            occurred_at: ago(0),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.pending.len(), 1);
    assert!(started.confirm_url.contains("/consent/confirm?token="), "{}", started.confirm_url);
    let pending = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(!pending.allowed);
    assert_eq!(pending.reason, pb::CheckReason::Pending as i32);

    // An altered token: refused, nothing changes.
    let mut altered = started.token.clone().into_bytes();
    let last = altered.len() - 2;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let err = consent
        .confirm_double_opt_in(suite.admin(pb::ConfirmDoubleOptInRequest { token: altered, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(!ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await.allowed);

    let confirmed = consent
        .confirm_double_opt_in(
            suite.admin(pb::ConfirmDoubleOptInRequest { token: started.token.clone(), ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.granted.len(), 1);
    assert_eq!(confirmed.granted[0].status, pb::ConsentStatus::Granted as i32);
    let granted = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(granted.allowed);
    assert_eq!(granted.entry.unwrap().entry_id, confirmed.granted[0].entry_id);

    // Reused: refused, and no second grant is written.
    let err = consent
        .confirm_double_opt_in(
            suite.admin(pb::ConfirmDoubleOptInRequest { token: started.token, ..Default::default() }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let history = consent
        .history(suite.admin(pb::HistoryRequest { contact_point: Some(kim), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries.len(), 2, "pending then granted: {:?}", history.entries);
    suite.stop().await;
}

#[tokio::test]
async fn one_click_unsubscribe_over_http_withdraws_and_suppresses_once() {
    let suite = TestSuite::start().await;
    let mut consent = ConsentServiceClient::new(suite.channel().await);
    let kim = email("kim@example.com");
    record(&suite, &mut consent, entry(kim.clone(), pb::ConsentStatus::Granted, 1)).await;
    let issued = consent
        .issue_unsubscribe_token(suite.admin(pb::IssueUnsubscribeTokenRequest {
            contact_point: Some(kim.clone()),
            channel: Channel::Email as i32,
            purpose: purpose("marketing"),
            message_id: "msg-1".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.list_unsubscribe_post, "List-Unsubscribe=One-Click");
    let path = issued.url.split_once("/consent/").map(|(_, p)| format!("/consent/{p}")).expect("an unsubscribe url");
    let url = format!("{}{path}", suite.http_url);

    // GET shows a page and changes nothing (mail scanners follow links); the address is masked.
    let (status, body) = http_get(&url).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<form"), "{body}");
    assert!(!body.contains("kim@example.com"), "the page shows the address unmasked: {body}");
    assert!(ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await.allowed);

    // A forged token: a plain error page, nothing changes.
    let (status, body) = http_post_form(&format!("{url}x"), "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 400, "{body}");
    assert!(ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await.allowed);

    // The RFC 8058 one-click POST: withdrawn and suppressed.
    let (status, body) = http_post_form(&url, "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 200, "{body}");
    let after = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(!after.allowed);
    assert_eq!(after.reason, pb::CheckReason::Suppressed as i32);

    // Used twice: a plain page, and no second withdrawal.
    let (status, _) = http_post_form(&url, "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 409);
    let history = consent
        .history(suite.admin(pb::HistoryRequest { contact_point: Some(kim), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let withdrawn = history.entries.iter().filter(|e| e.status == pb::ConsentStatus::Withdrawn as i32).count();
    assert_eq!(withdrawn, 1);
    suite.stop().await;
}

#[tokio::test]
async fn concurrent_writers_for_one_person_lose_nothing() {
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    let kim = email("kim@example.com");
    resolve(&suite, &channel, vec![kim.clone()]).await;
    let writers = 24;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let mut consent = ConsentServiceClient::new(channel.clone());
        let request = suite.admin(pb::RecordRequest {
            entries: vec![pb::EntryInput {
                channel: [Channel::Email, Channel::Sms, Channel::Push][i % 3] as i32,
                purpose: purpose(["marketing", "personalisation", "analytics"][i % 3]),
                status: if i % 2 == 0 { pb::ConsentStatus::Granted } else { pb::ConsentStatus::Denied } as i32,
                idempotency_key: format!("writer-{i}"),
                ..entry(kim.clone(), pb::ConsentStatus::Granted, i as i64)
            }],
        });
        tasks.push(tokio::spawn(async move { consent.record(request).await.map(|r| r.into_inner()) }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut consent = ConsentServiceClient::new(channel);
    let history = consent
        .history(suite.admin(pb::HistoryRequest {
            customer: by(kim),
            page: Some(rapport_proto::common::v1::PageRequest { page_size: 100, page_token: String::new() }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut keys: Vec<String> = history.entries.iter().map(|e| e.idempotency_key.clone()).collect();
    keys.sort();
    let mut expected: Vec<String> = (0..writers).map(|i| format!("writer-{i}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
    suite.stop().await;
}

#[tokio::test]
async fn consent_follows_merges_most_restrictive_and_a_split_restores_it() {
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let web = email("kim@example.com");
    let store = phone("+14155550100");
    let a = resolve(&suite, &channel, vec![web.clone()]).await.customer_id;
    let b = resolve(&suite, &channel, vec![store.clone()]).await.customer_id;
    assert_ne!(a, b);
    let by_id = |c: &str| Some(CustomerRef { r#ref: Some(Ref::CustomerId(c.into())) });
    let sms_marketing = |customer| pb::CheckRequest {
        customer,
        channel: Channel::Sms as i32,
        purpose: purpose("marketing"),
        region: "DE".into(),
        ..Default::default()
    };
    // The web customer granted SMS marketing; the store customer refused it.
    let for_customer = |c: &str, status, minutes| pb::EntryInput {
        customer: by_id(c),
        contact_point: None,
        channel: Channel::Sms as i32,
        ..entry(web.clone(), status, minutes)
    };
    record(&suite, &mut consent, for_customer(&a, pb::ConsentStatus::Granted, 1)).await;
    record(&suite, &mut consent, for_customer(&b, pb::ConsentStatus::Denied, 30)).await;
    assert!(ask(&suite, &mut consent, sms_marketing(by_id(&a))).await.allowed);

    let merged = resolve(&suite, &channel, vec![web.clone(), store.clone()]).await;
    assert_eq!(merged.merged_customer_ids.len(), 1);
    let survivor = merged.customer_id.clone();
    let merge_id = merged.merge_ids[0].clone();

    // The merge reaches consent through identity's feed; the older refusal wins over the newer grant.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = ask(&suite, &mut consent, sms_marketing(by_id(&survivor))).await;
        let merged_away = if survivor == a { &b } else { &a };
        let alias = ask(&suite, &mut consent, sms_marketing(by_id(merged_away))).await;
        if !now.allowed && !alias.allowed {
            assert_eq!(now.reason, pb::CheckReason::Denied as i32);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the merge did not reach consent: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    IdentityServiceClient::new(channel.clone())
        .split(suite.admin(id::SplitRequest {
            customer_id: survivor,
            merge_id,
            identifiers: vec![],
            provenance: source("support"),
        }))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let web_side = ask(&suite, &mut consent, sms_marketing(by(web.clone()))).await;
        let store_side = ask(&suite, &mut consent, sms_marketing(by(store.clone()))).await;
        if web_side.allowed && !store_side.allowed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the split did not restore consent: {web_side:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    suite.stop().await;
}

#[tokio::test]
async fn tc_strings_and_gpc_record_web_consent_with_the_signal_as_proof() {
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let kim = email("kim@example.com");
    resolve(&suite, &channel, vec![kim.clone()]).await;
    let web = |purpose_name: &str| pb::CheckRequest {
        customer: by(kim.clone()),
        channel: Channel::Web as i32,
        purpose: purpose(purpose_name),
        region: "DE".into(),
        ..Default::default()
    };

    // Consent to TCF purposes 1, 3, 4 (marketing by default) but not 5 and 6 (personalisation).
    let now = rapport_storage::now_millis();
    let tc = rapport_consent::tcf::encode(&rapport_consent::tcf::TcString {
        created_ms: now - 60_000,
        last_updated_ms: now - 60_000,
        cmp_id: 300,
        cmp_version: 7,
        consent_screen: 1,
        consent_language: "DE".into(),
        vendor_list_version: 120,
        policy_version: 4,
        purpose_consents: vec![1, 3, 4],
        purpose_legitimate_interests: vec![],
    });
    let request = || pb::RecordTcfStringRequest {
        customer: by(kim.clone()),
        tc_string: tc.clone(),
        provenance: source("cmp"),
        proof: Some(pb::Proof { ip_address: "203.0.113.9".into(), ..Default::default() }),
        occurred_at: None,
    };
    let recorded = consent.record_tcf_string(suite.admin(request())).await.unwrap().into_inner();
    let summary = recorded.tcf.unwrap();
    assert_eq!((summary.cmp_id, summary.policy_version, summary.consent_language.as_str()), (300, 4, "de"));
    assert_eq!(summary.purpose_consents, vec![1, 3, 4]);
    assert_eq!(recorded.entries.len(), 3, "marketing, personalisation and analytics are mapped by default");
    let marketing = ask(&suite, &mut consent, web("marketing")).await;
    assert!(marketing.allowed, "{marketing:?}");
    let proof = marketing.entry.unwrap().proof.unwrap();
    assert_eq!(proof.method, pb::ProofMethod::TcfString as i32);
    assert_eq!(proof.notice_id, "tcf-cmp-300");
    assert!(!ask(&suite, &mut consent, web("personalisation")).await.allowed);

    // The same string again records nothing new.
    consent.record_tcf_string(suite.admin(request())).await.unwrap();
    let history = consent
        .history(suite.admin(pb::HistoryRequest { customer: by(kim.clone()), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries.len(), 3);

    // A broken string: refused naming the field, nothing recorded.
    let err = consent
        .record_tcf_string(suite.admin(pb::RecordTcfStringRequest { tc_string: "CPX!".into(), ..request() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("tc_string"), "{}", err.message());

    // Global Privacy Control denies marketing on the web from now on.
    let gpc = consent
        .record_gpc_signal(suite.admin(pb::RecordGpcSignalRequest {
            customer: by(kim.clone()),
            provenance: source("webshop"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gpc.entries.len(), 1);
    let after = ask(&suite, &mut consent, web("marketing")).await;
    assert!(!after.allowed);
    assert_eq!(after.entry.unwrap().proof.unwrap().method, pb::ProofMethod::GpcSignal as i32);
    suite.stop().await;
}

#[tokio::test]
async fn data_subject_requests_export_and_erase_across_the_services() {
    use rapport_proto::profile::v1::{self as profile, profile_service_client::ProfileServiceClient};
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let mut profiles = ProfileServiceClient::new(channel.clone());
    let ann = email("ann@example.com");
    let order = profile::Event {
        message_id: "m1".into(),
        name: "order_completed".into(),
        occurred_at: ago(1),
        identifiers: vec![ann.clone()],
        context: Some(profile::EventContext { source: "webshop".into(), ..Default::default() }),
        properties: Some(rapport_rpc::convert::json_to_struct(
            serde_json::json!({"revenue_minor": 4999, "currency": "EUR"}),
        )),
        ..Default::default()
    };
    profiles.track(suite.admin(profile::TrackRequest { events: vec![order.clone()] })).await.unwrap();
    record(&suite, &mut consent, entry(ann.clone(), pb::ConsentStatus::Granted, 1)).await;

    // Bad input names the field; an unknown request is not found.
    let err = consent.start_export(suite.admin(pb::StartExportRequest::default())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("subject"), "{}", err.message());
    let err =
        consent.get_export(suite.admin(pb::GetExportRequest { request_id: "dsr_nothing".into() })).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Export: one document with every service's part, a step per service, the legal deadline.
    let export = consent
        .start_export(suite.admin(pb::StartExportRequest {
            subject: by(ann.clone()),
            reference: "ticket-42".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.state, pb::RequestState::Completed as i32, "{export:?}");
    assert_eq!(export.customer_ids.len(), 1);
    let step = |r: &pb::DataSubjectRequest, s: &str| r.steps.iter().find(|x| x.service == s).cloned().unwrap();
    for s in ["identity", "profile", "consent"] {
        let st = step(&export, s);
        assert_eq!(st.state, pb::RequestState::Completed as i32, "{st:?}");
        assert!(st.records > 0, "{st:?}");
    }
    for s in ["decision", "delivery"] {
        assert_eq!(step(&export, s).state, pb::RequestState::NoData as i32);
    }
    let received = rapport_rpc::convert::millis(export.received_at.as_ref().unwrap()).unwrap();
    let due = rapport_rpc::convert::millis(export.due_at.as_ref().unwrap()).unwrap();
    assert_eq!(due - received, 30 * 86_400_000);
    let result = consent
        .get_export(suite.admin(pb::GetExportRequest { request_id: export.request_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    let document = rapport_rpc::convert::struct_to_json(result.document.as_ref().unwrap());
    let services = document["services"].as_object().unwrap();
    for s in ["identity", "profile", "consent"] {
        assert!(services.contains_key(s), "the export lacks {s}: {document:?}");
    }

    // Erasure: a receipt line per service that held data; afterwards nobody finds the person.
    let erasure = consent
        .start_erasure(suite.admin(pb::StartErasureRequest { subject: by(ann.clone()), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erasure.state, pb::RequestState::Completed as i32, "{erasure:?}");
    let receipt = consent
        .get_erasure(suite.admin(pb::GetErasureRequest { request_id: erasure.request_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    for s in ["identity", "profile", "consent"] {
        let line = receipt.receipt.iter().find(|l| l.service == s).unwrap_or_else(|| panic!("no {s} line"));
        assert!(line.count > 0, "{line:?}");
    }
    let lookup = IdentityServiceClient::new(channel.clone())
        .lookup(suite.admin(id::LookupRequest { identifier: Some(ann.clone()) }))
        .await
        .unwrap_err();
    assert_eq!(lookup.code(), Code::NotFound);
    let read = profiles
        .get_profile(suite.admin(profile::GetProfileRequest {
            customer: by(ann.clone()),
            purpose: "dsr check".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::NotFound);

    // The old event replayed (seen before the erasure): refused by identity's tombstone, nothing re-created.
    let replay = profiles.track(suite.admin(profile::TrackRequest { events: vec![order] })).await.unwrap().into_inner();
    assert!(replay.results.is_empty(), "{replay:?}");
    let reason = &replay.rejected[0].reason;
    assert!(reason.starts_with("events[0].identifiers: a email identifier of a person erased"), "{reason}");
    assert!(!reason.contains("ann@"), "no personal data in the refusal: {reason}");
    let lookup = IdentityServiceClient::new(channel.clone())
        .lookup(suite.admin(id::LookupRequest { identifier: Some(ann.clone()) }))
        .await
        .unwrap_err();
    assert_eq!(lookup.code(), Code::NotFound, "the replay re-created nobody");
    // Seen after the erasure, the same address is a person coming back: a new customer.
    let back = IdentityServiceClient::new(channel.clone())
        .resolve(suite.admin(id::ResolveRequest { identifiers: vec![ann.clone()], ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert!(back.created && !erasure.customer_ids.contains(&back.customer_id), "{back:?}");

    // Both requests are tracked with their state.
    let listed = consent
        .list_data_subject_requests(suite.admin(pb::ListDataSubjectRequestsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.requests.len(), 2);
    let erasures =
        consent
            .list_data_subject_requests(suite.admin(pb::ListDataSubjectRequestsRequest {
                kind: pb::RequestKind::Erasure as i32,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(erasures.requests.len(), 1);
    assert_eq!(erasures.requests[0].request_id, erasure.request_id);
    suite.stop().await;
}

/// An erasure that cannot reach a service is FAILED with the step's error, identity is left for last (the
/// person stays findable), and the request is carried on by itself: after a restart with the service back,
/// the retrier finishes it, keeping the receipt lines already made and counting attempts per step.
#[tokio::test]
async fn an_unfinished_erasure_is_carried_on_after_a_restart() {
    let storage = std::sync::Arc::new(rapport_testkit::testing::TestDatabase::new().await);
    // delivery "runs elsewhere" and is down
    let without_delivery = SuiteOptions::services(&["identity", "consent", "profile", "decision"])
        .config("[clients]\ndelivery = \"http://127.0.0.1:1\"\n[consent]\nrequest_retry_seconds = 3600\n");
    let suite = TestSuite::start_on(storage.clone(), without_delivery).await;
    let channel = suite.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let ann = email("ann@example.com");
    IdentityServiceClient::new(channel.clone())
        .resolve(suite.admin(id::ResolveRequest { identifiers: vec![ann.clone()], ..Default::default() }))
        .await
        .unwrap();
    record(&suite, &mut consent, entry(ann.clone(), pb::ConsentStatus::Granted, 1)).await;
    let erasure = consent
        .start_erasure(suite.admin(pb::StartErasureRequest {
            subject: by(ann.clone()),
            reference: "ticket-7".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erasure.state, pb::RequestState::Failed as i32, "{erasure:?}");
    let step = |r: &pb::DataSubjectRequest, s: &str| r.steps.iter().find(|x| x.service == s).cloned();
    let delivery = step(&erasure, "delivery").expect("a delivery step");
    assert_eq!(delivery.state, pb::RequestState::Failed as i32, "{delivery:?}");
    assert!(delivery.error.starts_with("Unavailable"), "{delivery:?}");
    for s in ["profile", "consent", "decision"] {
        let st = step(&erasure, s).unwrap();
        assert!([pb::RequestState::Completed as i32, pb::RequestState::NoData as i32].contains(&st.state), "{st:?}");
    }
    assert!(step(&erasure, "identity").is_none(), "identity waits for the others: {erasure:?}");
    IdentityServiceClient::new(channel.clone())
        .lookup(suite.admin(id::LookupRequest { identifier: Some(ann.clone()) }))
        .await
        .expect("the person is still findable for the retry");
    let first = consent
        .get_erasure(suite.admin(pb::GetErasureRequest { request_id: erasure.request_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    suite.stop().await;

    // Back with every service here: the retrier takes the request up at start and finishes it.
    let suite = TestSuite::start_on(storage, SuiteOptions::default()).await;
    let channel = suite.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = consent
            .get_erasure(suite.admin(pb::GetErasureRequest { request_id: erasure.request_id.clone() }))
            .await
            .unwrap()
            .into_inner();
        let request = r.request.clone().unwrap();
        if request.state == pb::RequestState::Completed as i32 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "never carried on: {request:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let request = done.request.clone().unwrap();
    assert_eq!(step(&request, "delivery").unwrap().attempts, 2, "{request:?}");
    assert_eq!(step(&request, "consent").unwrap().attempts, 1, "done steps are not asked again: {request:?}");
    assert_eq!(step(&request, "identity").unwrap().state, pb::RequestState::Completed as i32);
    assert!(request.completed_at.is_some());
    for line in &first.receipt {
        assert!(done.receipt.contains(line), "the first attempt's line is kept: {line:?} in {done:?}");
    }
    assert!(done.receipt.iter().any(|l| l.service == "identity" && l.count > 0), "{done:?}");
    let lookup = IdentityServiceClient::new(channel.clone())
        .lookup(suite.admin(id::LookupRequest { identifier: Some(ann.clone()) }))
        .await
        .unwrap_err();
    assert_eq!(lookup.code(), Code::NotFound, "erased at last");
    suite.stop().await;
}

fn by_id(customer_id: &str) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::CustomerId(customer_id.into())) })
}

fn subject_token(token: &str) -> Option<pb::PreferenceSubject> {
    Some(pb::PreferenceSubject { subject: Some(pb::preference_subject::Subject::Token(token.into())) })
}

fn subject_customer(customer_id: &str) -> Option<pb::PreferenceSubject> {
    Some(pb::PreferenceSubject {
        subject: Some(pb::preference_subject::Subject::Customer(by_id(customer_id).unwrap())),
    })
}

fn switch(channel: Channel, purpose_name: &str, cp: Option<Identifier>, allow: bool) -> pb::PreferenceChange {
    pb::PreferenceChange { channel: channel as i32, purpose: purpose(purpose_name), contact_point: cp, allow }
}

async fn update(
    suite: &TestSuite,
    c: &mut ConsentServiceClient<GrpcChannel>,
    subject: Option<pb::PreferenceSubject>,
    changes: Vec<pb::PreferenceChange>,
) -> Result<pb::UpdatePreferencesResponse, tonic::Status> {
    c.update_preferences(suite.admin(pb::UpdatePreferencesRequest { subject, changes, ..Default::default() }))
        .await
        .map(|r| r.into_inner())
}

async fn history_len(suite: &TestSuite, c: &mut ConsentServiceClient<GrpcChannel>, customer_id: &str) -> usize {
    let r = pb::HistoryRequest { customer: by_id(customer_id), ..Default::default() };
    c.history(suite.admin(r)).await.unwrap().into_inner().entries.len()
}

/// The row of `channel` and `purpose` for the contact point of type `t` (0: customer-wide).
fn row(p: &pb::Preferences, channel: Channel, purpose_name: &str, t: IdentifierType) -> pb::Preference {
    p.preferences
        .iter()
        .find(|r| {
            r.channel == channel as i32
                && r.purpose.as_ref().is_some_and(|x| x.name == purpose_name)
                && r.contact_point.as_ref().map_or(0, |c| c.r#type) == t as i32
        })
        .cloned()
        .unwrap_or_else(|| panic!("no row {channel:?} {purpose_name} {t:?} in {p:?}"))
}

#[tokio::test]
async fn the_preference_centre_switches_what_check_answers() {
    let config = "[consent]\ndouble_opt_in_channels = [\"sms\"]\n";
    let suite = TestSuite::start_with(SuiteOptions::default().config(config)).await;
    let channel = suite.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let kim = email("kim@example.com");
    let kim_phone = phone("+14155552671");
    let customer = resolve(&suite, &channel, vec![kim.clone(), kim_phone.clone()]).await.customer_id;

    // A reusable token, linked on the HTTP port; a ttl over a year, no customer or an unknown one refused.
    let issued = consent
        .issue_preference_token(suite.admin(pb::IssuePreferenceTokenRequest { customer: by(kim.clone()), ttl: None }))
        .await
        .unwrap()
        .into_inner();
    assert!(issued.url.contains("/consent/preferences?token="), "{}", issued.url);
    let described =
        consent.describe_token(suite.admin(pb::DescribeTokenRequest { token: issued.token.clone() })).await.unwrap();
    let described = described.into_inner();
    assert_eq!((described.kind, described.valid), (pb::TokenKind::Preferences as i32, true), "{described:?}");
    let days = (issued.expires_at.unwrap().seconds - rapport_storage::now_millis() / 1000) / 86_400;
    assert!((29..=30).contains(&days), "30 days by default: {days}");
    let too_long = prost_types::Duration { seconds: 400 * 86_400, nanos: 0 };
    let err = consent
        .issue_preference_token(
            suite.admin(pb::IssuePreferenceTokenRequest { customer: by_id(&customer), ttl: Some(too_long) }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("ttl:"), "{}", err.message());
    let err =
        consent.issue_preference_token(suite.admin(pb::IssuePreferenceTokenRequest::default())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("customer"), "{}", err.message());
    let err = consent
        .issue_preference_token(
            suite.admin(pb::IssuePreferenceTokenRequest { customer: by(email("nobody@example.com")), ttl: None }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().starts_with("customer"), "{}", err.message());
    let err = consent
        .issue_preference_token(
            suite.admin(pb::IssuePreferenceTokenRequest { customer: by_id("cus_unknown"), ttl: None }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());

    // By customer: customer-wide rows per offered channel and purpose (service purposes are no switch),
    // plus the email's and the phone's rows on the channels that reach them; all as Check answers.
    let get = |subject| pb::GetPreferencesRequest { subject };
    let by_customer =
        consent.get_preferences(suite.admin(get(subject_customer(&customer)))).await.unwrap().into_inner();
    assert_eq!(by_customer.customer_id, customer);
    assert_eq!(by_customer.preferences.len(), 5 * 3 + 3 + 2 * 3, "{by_customer:?}");
    assert!(by_customer.preferences.iter().all(|r| !r.allowed && r.status == 0 && r.entry_id.is_empty()));
    assert!(!by_customer.preferences.iter().any(|r| r.purpose.as_ref().unwrap().name == "service_messages"));
    let email_row = row(&by_customer, Channel::Email, "marketing", IdentifierType::Email);
    assert_eq!(email_row.contact_point.unwrap().value, "kim@example.com");
    // By token: the same rows, contact points masked.
    let by_token = consent.get_preferences(suite.admin(get(subject_token(&issued.token)))).await.unwrap().into_inner();
    assert_eq!(by_token.preferences.len(), by_customer.preferences.len());
    let shown = row(&by_token, Channel::Email, "marketing", IdentifierType::Email).contact_point.unwrap();
    assert_eq!(shown.value, "k***@example.com");
    assert!(!format!("{by_token:?}").contains("kim@example.com") && !format!("{by_token:?}").contains("5552671"));

    // Grants through the token (the contact point named as the page shows it): Check allows at once.
    let granted = update(
        &suite,
        &mut consent,
        subject_token(&issued.token),
        vec![
            switch(Channel::Email, "marketing", Some(shown.clone()), true),
            switch(Channel::Email, "analytics", None, true),
        ],
    )
    .await
    .unwrap();
    assert_eq!(granted.entries.len(), 2, "{granted:?}");
    for e in &granted.entries {
        assert_eq!(e.status, pb::ConsentStatus::Granted as i32);
        assert_eq!(e.proof.as_ref().unwrap().method, pb::ProofMethod::PreferenceCentre as i32);
        assert_eq!(e.provenance.as_ref().unwrap().source, "preference_centre");
        assert_eq!(e.customer_id, customer);
    }
    let allowed = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(allowed.allowed, "{allowed:?}");
    assert_eq!(allowed.entry.unwrap().entry_id, granted.entries[0].entry_id);
    let after = granted.preferences.unwrap();
    let on = row(&after, Channel::Email, "marketing", IdentifierType::Email);
    assert!(on.allowed && on.status == pb::ConsentStatus::Granted as i32 && on.entry_id == granted.entries[0].entry_id);
    assert!(row(&after, Channel::Email, "analytics", IdentifierType::Unspecified).allowed);

    // Unchanged switches record nothing.
    let before = history_len(&suite, &mut consent, &customer).await;
    let unchanged = vec![
        switch(Channel::Email, "marketing", Some(kim.clone()), true),
        switch(Channel::Push, "marketing", None, false),
    ];
    let same = update(&suite, &mut consent, subject_customer(&customer), unchanged).await.unwrap();
    assert!(same.entries.is_empty(), "{same:?}");
    assert_eq!(history_len(&suite, &mut consent, &customer).await, before);

    // A withdrawal is seen by the very next Check (the previous Check's read was cached).
    let off = vec![switch(Channel::Email, "marketing", Some(kim.clone()), false)];
    let withdrawn = update(&suite, &mut consent, subject_customer(&customer), off).await.unwrap();
    assert_eq!(withdrawn.entries.len(), 1);
    assert_eq!(withdrawn.entries[0].status, pb::ConsentStatus::Withdrawn as i32);
    let denied = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert!(!denied.allowed);
    assert_eq!(denied.reason, pb::CheckReason::Withdrawn as i32);
    // Published as Record publishes: consent.recorded per entry, the withdrawal changing the state.
    let topics = vec!["consent.recorded".to_string()];
    let mut feed = consent
        .subscribe(suite.admin(rapport_proto::common::v1::SubscribeRequest { topics, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let mut published = Vec::new();
    while published.len() < 3 {
        let record = tokio::time::timeout(Duration::from_secs(10), feed.message()).await.unwrap().unwrap().unwrap();
        let event = <pb::ConsentRecorded as prost::Message>::decode(record.payload.unwrap().value.as_slice()).unwrap();
        assert_eq!(record.key, customer);
        published.push(event);
    }
    let ids: Vec<&str> = published.iter().map(|e| e.entry.as_ref().unwrap().entry_id.as_str()).collect();
    assert_eq!(ids, [&granted.entries[0].entry_id, &granted.entries[1].entry_id, &withdrawn.entries[0].entry_id]);
    assert!(published[2].changed_state && !published[2].allowed);

    // A grant on a double opt-in channel is PENDING under a confirmation token; confirming grants it.
    let sms_on = vec![switch(Channel::Sms, "marketing", Some(kim_phone.clone()), true)];
    let sms = update(&suite, &mut consent, subject_customer(&customer), sms_on).await.unwrap();
    assert_eq!(sms.entries.len(), 1);
    assert_eq!(sms.entries[0].status, pb::ConsentStatus::Pending as i32);
    assert_eq!(sms.double_opt_ins.len(), 1);
    assert!(sms.double_opt_ins[0].confirm_url.contains("/consent/confirm?token="));
    let sms_check = |cp: Identifier| pb::CheckRequest {
        contact_point: Some(cp),
        channel: Channel::Sms as i32,
        purpose: purpose("marketing"),
        ..Default::default()
    };
    let pending = ask(&suite, &mut consent, sms_check(kim_phone.clone())).await;
    assert_eq!(pending.reason, pb::CheckReason::Pending as i32, "{pending:?}");
    let err =
        update(&suite, &mut consent, subject_customer(&customer), vec![switch(Channel::Sms, "analytics", None, true)])
            .await
            .unwrap_err();
    assert!(err.message().starts_with("changes[0].contact_point"), "{}", err.message());
    consent
        .confirm_double_opt_in(
            suite.admin(pb::ConfirmDoubleOptInRequest {
                token: sms.double_opt_ins[0].token.clone(),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert!(ask(&suite, &mut consent, sms_check(kim_phone.clone())).await.allowed);

    // Bad requests name the field and record nothing.
    let before = history_len(&suite, &mut consent, &customer).await;
    let one = switch(Channel::Email, "marketing", None, true);
    for (changes, field) in [
        (vec![], "changes"),
        (vec![one.clone(); 101], "changes"),
        (vec![pb::PreferenceChange { channel: 99, ..one.clone() }], "changes[0].channel"),
        (vec![switch(Channel::Email, "ads", None, true)], "changes[0].purpose.name"),
        (vec![switch(Channel::Email, "marketing", Some(email("eve@example.com")), true)], "changes[0].contact_point"),
        (vec![switch(Channel::Sms, "marketing", Some(kim.clone()), false)], "changes[0].channel"),
        (vec![one.clone(), one.clone()], "changes[1]"),
    ] {
        let err = update(&suite, &mut consent, subject_customer(&customer), changes).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {}", err.message());
        assert!(err.message().starts_with(&format!("{field}:")), "{field}: {}", err.message());
    }

    // A forged or altered token and an expired one: refused naming `token`, nothing recorded.
    let mut altered = issued.token.clone().into_bytes();
    let last = altered.len() - 2;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let unsubscribe_token = consent
        .issue_unsubscribe_token(suite.admin(pb::IssueUnsubscribeTokenRequest {
            contact_point: Some(kim.clone()),
            channel: Channel::Email as i32,
            purpose: purpose("marketing"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    for forged in [altered, unsubscribe_token, "garbage".to_string()] {
        let err = update(&suite, &mut consent, subject_token(&forged), vec![one.clone()]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().starts_with("token:"), "{}", err.message());
        let err = consent.get_preferences(suite.admin(get(subject_token(&forged)))).await.unwrap_err();
        assert!(err.message().starts_with("token:"), "{}", err.message());
    }
    let short = consent
        .issue_preference_token(suite.admin(pb::IssuePreferenceTokenRequest {
            customer: by_id(&customer),
            ttl: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        }))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = update(&suite, &mut consent, subject_token(&short.token), vec![one.clone()]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(err.message(), "token: expired");
    assert_eq!(history_len(&suite, &mut consent, &customer).await, before, "refusals record nothing");
    assert!(!ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await.allowed);

    // The token is reusable: it still reads after the changes it made.
    consent.get_preferences(suite.admin(get(subject_token(&issued.token)))).await.unwrap();
    suite.stop().await;
}

/// The `row` key the page gives the switch on `label` (e.g. "<td>email</td><td>marketing</td><td>k***").
fn page_key(body: &str, label: &str) -> String {
    let tr = body.split("<tr>").find(|tr| tr.contains(label)).unwrap_or_else(|| panic!("no row {label} in {body}"));
    let value = tr.split("name=\"row\" value=\"").nth(1).expect("a row key");
    value.split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn the_preference_centre_page_shows_masked_switches_and_its_form_changes_them() {
    let suite = TestSuite::start().await;
    let channel = suite.channel().await;
    let mut consent = ConsentServiceClient::new(channel.clone());
    let kim = email("kim@example.com");
    let customer = resolve(&suite, &channel, vec![kim.clone()]).await.customer_id;
    record(&suite, &mut consent, entry(kim.clone(), pb::ConsentStatus::Granted, 5)).await;
    let issued = consent
        .issue_preference_token(suite.admin(pb::IssuePreferenceTokenRequest { customer: by_id(&customer), ttl: None }))
        .await
        .unwrap()
        .into_inner();
    let path = issued.url.split_once("/consent/").map(|(_, p)| format!("/consent/{p}")).expect("a preferences url");
    let url = format!("{}{path}", suite.http_url);

    // GET shows the switches with the address masked, and no other personal data; it changes nothing.
    let (status, body) = http_get(&url).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<form") && body.contains("k***@example.com"), "{body}");
    assert!(!body.contains("kim@example.com") && !body.contains(&customer), "{body}");
    let marketing = page_key(&body, "<td>email</td><td>marketing</td><td>k***@example.com");
    let analytics = page_key(&body, "<td>email</td><td>analytics</td><td>all your contact points");
    assert!(body.contains(&format!("value=\"{marketing}\" checked")), "the granted switch is on: {body}");
    let before = history_len(&suite, &mut consent, &customer).await;

    // A bad token: a plain error page, nothing changes.
    let form = format!("row={marketing}&row={analytics}&on={analytics}");
    for bad in [format!("{url}x"), format!("{}/consent/preferences?token=garbage", suite.http_url)] {
        let (status, body) = http_get(&bad).await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = http_post_form(&bad, &form).await;
        assert_eq!(status, 400, "{body}");
        assert!(!body.contains("<form"), "{body}");
    }
    assert_eq!(history_len(&suite, &mut consent, &customer).await, before);

    // The form: marketing unticked (withdrawn), analytics ticked (granted), the rest unchanged.
    let (status, body) = http_post_form(&url, &form).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("saved"), "{body}");
    assert!(!body.contains("kim@example.com"), "{body}");
    assert_eq!(history_len(&suite, &mut consent, &customer).await, before + 2);
    let denied = ask(&suite, &mut consent, check(kim.clone(), "marketing", "DE")).await;
    assert_eq!(denied.reason, pb::CheckReason::Withdrawn as i32, "{denied:?}");
    assert_eq!(denied.entry.unwrap().proof.unwrap().method, pb::ProofMethod::PreferenceCentre as i32);
    assert!(ask(&suite, &mut consent, check(kim.clone(), "analytics", "DE")).await.allowed);

    // The same form again records nothing.
    let (status, _) = http_post_form(&url, &form).await;
    assert_eq!(status, 200);
    assert_eq!(history_len(&suite, &mut consent, &customer).await, before + 2);
    suite.stop().await;
}
