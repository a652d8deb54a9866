//! Security over gRPC: roles as scope bundles (the call-centre example end to end), API keys and RS256
//! JWTs, masked profile reads, and the audit of reads, exports and erasures that no rpc can change.

use prost_types::Struct;
use rapport_auth::hash_token;
use rapport_proto::common::v1::{Channel, CustomerRef, Identifier, IdentifierType, Purpose, customer_ref::Ref};
use rapport_proto::consent::v1::{self as consent, consent_service_client::ConsentServiceClient};
use rapport_proto::decision::v1::{self as decision, decision_service_client::DecisionServiceClient};
use rapport_proto::profile::v1::{self as pb, profile_service_client::ProfileServiceClient};
use rapport_rpc::convert::{json_to_struct, struct_to_json};
use rapport_testkit::{SuiteOptions, TestSuite, with_token};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;

const RS_PRIVATE: &str = include_str!("../libs/auth/testdata/rs256-test-private.pem");
const RS_PUBLIC: &str = include_str!("../libs/auth/testdata/rs256-test-public.pem");

fn email(v: &str) -> Identifier {
    Identifier { r#type: IdentifierType::Email as i32, value: v.into(), namespace: String::new() }
}

fn phone(v: &str) -> Identifier {
    Identifier { r#type: IdentifierType::Phone as i32, value: v.into(), namespace: String::new() }
}

fn by(i: Identifier) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::Identifier(i)) })
}

fn by_id(id: &str) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::CustomerId(id.into())) })
}

fn traits(v: serde_json::Value) -> Option<Struct> {
    Some(json_to_struct(v))
}

/// A configuration with one API key per (name, token, TOML lines).
fn keys(entries: &[(&str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, token, extra)| {
            format!("[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n", hash_token(token))
        })
        .collect()
}

/// Creates Kim (email and phone, traits with contact details) through the admin token.
async fn kim(suite: &TestSuite, channel: &GrpcChannel) -> String {
    ProfileServiceClient::new(channel.clone())
        .identify(suite.admin(pb::IdentifyRequest {
            identifiers: vec![email("kim.berg@example.com"), phone("+4915123456789")],
            traits: traits(json!({
                "first_name": "Kim",
                "email": "kim.berg@example.com",
                "work": {"contact": "kim@corp.example.org", "mobile": "+49 170 1234567"},
                "city": "Berlin",
            })),
            source: "crm".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .customer_id
}

fn jwt_rs256(claims: serde_json::Value) -> String {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(RS_PRIVATE).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap()
}

fn in_ten_minutes() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600
}

/// What a call-centre token may and may not do: read profiles, record consent and outcomes; not export,
/// erase, or define offers or segments. Checked for an API key with the role and for an RS256 JWT
/// naming the role.
#[tokio::test]
async fn the_call_centre_role_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let public_key = dir.path().join("idp.pem");
    std::fs::write(&public_key, RS_PUBLIC).unwrap();
    let config = format!(
        "{}\n[auth]\njwt_rs256_public_key_file = \"{}\"\njwt_issuer = \"https://idp.example\"\njwt_audience = \"rapport\"\n",
        keys(&[("call-centre-hamburg", "cc-token", "roles = [\"call-centre\"]")]),
        public_key.display()
    );
    let suite = TestSuite::start_with(SuiteOptions::default().config(config)).await;
    let channel = suite.channel().await;
    let customer = kim(&suite, &channel).await;
    let jwt = jwt_rs256(json!({
        "sub": "agent-17", "iss": "https://idp.example", "aud": "rapport", "exp": in_ten_minutes(),
        "roles": ["call-centre"],
    }));

    for token in ["cc-token", jwt.as_str()] {
        let mut profiles = ProfileServiceClient::new(channel.clone());
        let mut consents = ConsentServiceClient::new(channel.clone());
        let mut decisions = DecisionServiceClient::new(channel.clone());

        // May: look the caller up by phone, see it in full, record consent and what happened.
        let profile = profiles
            .get_profile(with_token(
                pb::GetProfileRequest {
                    customer: by(phone("+4915123456789")),
                    purpose: "call_centre_contact".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(profile.customer_id, customer);
        assert!(profile.identifiers.iter().any(|i| i.value == "kim.berg@example.com"), "{:?}", profile.identifiers);
        let recorded = consents
            .record(with_token(
                consent::RecordRequest {
                    entries: vec![consent::EntryInput {
                        customer: by_id(&customer),
                        contact_point: Some(phone("+4915123456789")),
                        channel: Channel::Sms as i32,
                        purpose: Some(Purpose { name: "marketing".into() }),
                        status: consent::ConsentStatus::Denied as i32,
                        legal_basis: consent::LegalBasis::Consent as i32,
                        provenance: Some(rapport_proto::common::v1::Provenance {
                            source: "call_centre".into(),
                            actor: "agent-17".into(),
                            ..Default::default()
                        }),
                        occurred_at: Some(rapport_rpc::convert::timestamp(rapport_storage::now_millis())),
                        proof: Some(consent::Proof {
                            method: consent::ProofMethod::RecordedCall as i32,
                            notice_id: "call-script".into(),
                            notice_version: "1".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                },
                token,
            ))
            .await;
        assert!(recorded.is_ok(), "{recorded:?}");
        profiles
            .track(with_token(
                pb::TrackRequest {
                    events: vec![pb::Event {
                        name: "call_completed".into(),
                        occurred_at: Some(rapport_rpc::convert::timestamp(rapport_storage::now_millis())),
                        customer_id: customer.clone(),
                        context: Some(pb::EventContext {
                            source: "call_centre".into(),
                            agent_id: "agent-17".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                },
                token,
            ))
            .await
            .unwrap();
        // RecordOutcome is allowed: whatever decision answers, it is not a refusal of the token.
        let outcome = decisions
            .record_outcome(with_token(
                decision::RecordOutcomeRequest {
                    outcome_id: format!("o-{}", token.len()),
                    customer: by_id(&customer),
                    ..Default::default()
                },
                token,
            ))
            .await;
        if let Err(s) = &outcome {
            assert!(![Code::PermissionDenied, Code::Unauthenticated].contains(&s.code()), "{s:?}");
        }

        // May not: export, erase, define offers or segments, read the audit.
        let denied = |r: Result<(), tonic::Status>, what: &str| {
            let s = r.expect_err(what);
            assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
        };
        denied(
            consents
                .start_export(with_token(
                    consent::StartExportRequest { subject: by_id(&customer), ..Default::default() },
                    token,
                ))
                .await
                .map(|_| ()),
            "StartExport",
        );
        denied(
            consents
                .start_erasure(with_token(
                    consent::StartErasureRequest { subject: by_id(&customer), ..Default::default() },
                    token,
                ))
                .await
                .map(|_| ()),
            "StartErasure",
        );
        denied(
            profiles
                .erase_customer(with_token(
                    rapport_proto::common::v1::EraseCustomerRequest {
                        customer: by_id(&customer),
                        reason: "test".into(),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            "EraseCustomer",
        );
        denied(
            decisions.create_offer(with_token(decision::CreateOfferRequest::default(), token)).await.map(|_| ()),
            "CreateOffer",
        );
        denied(
            profiles.create_segment(with_token(pb::CreateSegmentRequest::default(), token)).await.map(|_| ()),
            "CreateSegment",
        );
        denied(
            profiles
                .list_audit(with_token(pb::ListAuditRequest { customer: by_id(&customer), page: None }, token))
                .await
                .map(|_| ()),
            "ListAudit",
        );
    }

    // A JWT from another issuer, an expired one, and no token at all are refused.
    let mut profiles = ProfileServiceClient::new(channel.clone());
    let request = || pb::GetProfileRequest { customer: by_id(&customer), ..Default::default() };
    for (token, what) in [
        (
            jwt_rs256(
                json!({"sub": "x", "iss": "https://evil.example", "aud": "rapport", "exp": in_ten_minutes(), "roles": ["call-centre"]}),
            ),
            "foreign issuer",
        ),
        (
            jwt_rs256(
                json!({"sub": "x", "iss": "https://idp.example", "aud": "rapport", "exp": 1_000_000, "roles": ["call-centre"]}),
            ),
            "expired",
        ),
    ] {
        let s = profiles.get_profile(with_token(request(), &token)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{what}");
    }
    let s = profiles.get_profile(tonic::Request::new(request())).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);

    // The audit names the key and the JWT subject for the reads they made (written within 100 ms).
    let mut audit = pb::ListAuditResponse::default();
    for _ in 0..100 {
        audit = profiles
            .list_audit(suite.admin(pb::ListAuditRequest { customer: by_id(&customer), page: None }))
            .await
            .unwrap()
            .into_inner();
        if audit.entries.iter().filter(|e| e.action == "profile.read").count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for who in ["call-centre-hamburg", "jwt:agent-17"] {
        assert!(
            audit.entries.iter().any(|e| e.principal == who && e.action == "profile.read"),
            "{who} not in {:?}",
            audit.entries
        );
    }
    suite.stop().await;
}

fn text(s: &Struct, path: &[&str]) -> String {
    let mut v = serde_json::Value::Object(struct_to_json(s));
    for p in path {
        v = v[*p].clone();
    }
    v.as_str().unwrap_or_default().to_string()
}

/// A store till (`profile:read:masked` through its role) sees contact details only partly, in identifiers
/// and traits, in GetProfile and BatchGetProfiles; it may not read the timeline. A key with
/// `mask = ["phone"]` sees the email in full and the phone masked. The admin sees everything.
#[tokio::test]
async fn masked_profile_reads() {
    let config = keys(&[
        ("till-3", "till-token", "roles = [\"store-till\"]"),
        ("crm", "crm-token", "roles = [\"backend\"]\nmask = [\"phone\"]"),
    ]);
    let suite = TestSuite::start_with(SuiteOptions::default().config(config)).await;
    let channel = suite.channel().await;
    let customer = kim(&suite, &channel).await;
    let mut profiles = ProfileServiceClient::new(channel.clone());
    let get = |token: &str| {
        with_token(
            pb::GetProfileRequest {
                customer: by(email("kim.berg@example.com")),
                purpose: "store_checkout".into(),
                ..Default::default()
            },
            token,
        )
    };
    let value_of = |p: &pb::Profile, t: IdentifierType| {
        p.identifiers.iter().find(|i| i.r#type == t as i32).map(|i| i.value.clone()).unwrap_or_default()
    };

    // The phone as identity stores it (E.164), seen in full by the admin.
    let stored_phone = value_of(
        &profiles.get_profile(suite.admin(get("").into_inner())).await.unwrap().into_inner(),
        IdentifierType::Phone,
    );
    assert!(stored_phone.starts_with("+49") && stored_phone.ends_with("89"), "{stored_phone}");
    let masked_phone = rapport_auth::mask::mask_phone(&stored_phone);
    assert!(masked_phone.starts_with("+49*") && masked_phone.ends_with("*89"), "{masked_phone}");

    let till = profiles.get_profile(get("till-token")).await.unwrap().into_inner();
    assert_eq!(value_of(&till, IdentifierType::Email), "k***@example.com");
    assert_eq!(value_of(&till, IdentifierType::Phone), masked_phone);
    let t = till.traits.as_ref().unwrap();
    assert_eq!(text(t, &["email"]), "k***@example.com");
    assert_eq!(text(t, &["work", "contact"]), "k***@corp.example.org");
    assert_eq!(text(t, &["work", "mobile"]), "+49********67");
    assert_eq!(text(t, &["first_name"]), "Kim");
    assert_eq!(text(t, &["city"]), "Berlin");

    let batch = profiles
        .batch_get_profiles(with_token(
            pb::BatchGetProfilesRequest {
                requests: vec![pb::GetProfileRequest { customer: by_id(&customer), ..Default::default() }],
            },
            "till-token",
        ))
        .await
        .unwrap()
        .into_inner();
    match &batch.results[0].outcome {
        Some(pb::batch_get_profiles_result::Outcome::Profile(p)) => {
            assert_eq!(value_of(p, IdentifierType::Email), "k***@example.com")
        }
        other => panic!("{other:?}"),
    }
    let s = profiles
        .get_timeline(with_token(
            pb::GetTimelineRequest { customer: by_id(&customer), ..Default::default() },
            "till-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);

    let crm = profiles.get_profile(get("crm-token")).await.unwrap().into_inner();
    assert_eq!(value_of(&crm, IdentifierType::Email), "kim.berg@example.com");
    assert_eq!(value_of(&crm, IdentifierType::Phone), masked_phone);

    // The cache holds the profile unmasked: the admin reads it in full after the masked reads.
    let admin = profiles.get_profile(suite.admin(get("").into_inner())).await.unwrap().into_inner();
    assert_eq!(value_of(&admin, IdentifierType::Email), "kim.berg@example.com");
    assert_eq!(value_of(&admin, IdentifierType::Phone), stored_phone);
    assert_eq!(text(admin.traits.as_ref().unwrap(), &["work", "mobile"]), "+49 170 1234567");
    suite.stop().await;
}

/// Reads, exports and erasures leave audit entries that name the caller; the entries survive the
/// erasure; the database refuses to change or delete them; and no rpc of the contracts could.
#[tokio::test]
async fn audit_of_reads_exports_and_erasures_cannot_be_changed() {
    let config = keys(&[
        ("dpo", "dpo-token", "roles = [\"privacy-officer\"]"),
        ("till-3", "till-token", "roles = [\"store-till\"]"),
    ]);
    let suite = TestSuite::start_with(SuiteOptions::default().config(config)).await;
    let channel = suite.channel().await;
    let customer = kim(&suite, &channel).await;
    let mut profiles = ProfileServiceClient::new(channel.clone());
    let mut consents = ConsentServiceClient::new(channel.clone());
    profiles
        .get_profile(with_token(
            pb::GetProfileRequest {
                customer: by_id(&customer),
                purpose: "store_checkout".into(),
                ..Default::default()
            },
            "till-token",
        ))
        .await
        .unwrap();
    profiles
        .get_timeline(with_token(
            pb::GetTimelineRequest { customer: by_id(&customer), ..Default::default() },
            "dpo-token",
        ))
        .await
        .unwrap();
    let export = consents
        .start_export(with_token(
            consent::StartExportRequest {
                subject: by_id(&customer),
                reference: "ticket-7".into(),
                ..Default::default()
            },
            "dpo-token",
        ))
        .await
        .unwrap()
        .into_inner();
    consents
        .get_export(with_token(consent::GetExportRequest { request_id: export.request_id.clone() }, "dpo-token"))
        .await
        .unwrap();
    let erasure = consents
        .start_erasure(with_token(
            consent::StartErasureRequest {
                subject: by_id(&customer),
                reference: "ticket-8".into(),
                ..Default::default()
            },
            "dpo-token",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erasure.state, consent::RequestState::Completed as i32, "{erasure:?}");

    // Profile's log, through the API, after the erasure: the reads, the export and the erasure. Reads are
    // written in batches off the request path (every 100 ms), so wait for them.
    let mut audit = pb::ListAuditResponse::default();
    for _ in 0..100 {
        audit = profiles
            .list_audit(with_token(pb::ListAuditRequest { customer: by_id(&customer), page: None }, "dpo-token"))
            .await
            .unwrap()
            .into_inner();
        if audit.entries.iter().filter(|e| e.action.starts_with("profile.")).count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let has = |who: &str, action: &str| audit.entries.iter().any(|e| e.principal == who && e.action == action);
    assert!(has("till-3", "profile.read"), "{:?}", audit.entries);
    assert!(has("dpo", "profile.timeline_read"), "{:?}", audit.entries);
    assert!(audit.entries.iter().any(|e| e.action == "customer.export"), "{:?}", audit.entries);
    assert!(audit.entries.iter().any(|e| e.action == "customer.erase"), "{:?}", audit.entries);

    // Consent's log names the person who asked for each request and who read the export.
    let consent_db = rapport_storage::connect(
        &suite.storage.url,
        suite.storage.data_dir.path(),
        "consent",
        &rapport_storage::PoolSettings { max_connections: 1, acquire_timeout: std::time::Duration::from_secs(5) },
    )
    .await
    .unwrap();
    let entries = rapport_storage::Audit::list(&consent_db, &customer, 100).await.unwrap();
    for action in ["dsr.export_started", "dsr.export_read", "dsr.erasure_started"] {
        assert!(entries.iter().any(|e| e.principal == "dpo" && e.action == action), "{action}: {entries:?}");
    }
    assert!(entries.iter().any(|e| e.detail.contains("ticket-8")), "{entries:?}");

    // The database refuses to change or remove entries, on SQLite and on PostgreSQL alike.
    for statement in ["UPDATE audit_log SET principal = 'nobody'", "DELETE FROM audit_log"] {
        let refused = rapport_storage::on_db!(&consent_db, p => rapport_storage::sqlx::query(statement).execute(p).await.map(|_| ()));
        assert!(refused.is_err(), "{statement} was accepted");
    }
    assert_eq!(rapport_storage::Audit::list(&consent_db, &customer, 100).await.unwrap(), entries);
    consent_db.close().await;

    // No rpc of any contract changes or deletes an audit log: the only audit rpc is the read.
    let audit_rpcs: Vec<_> =
        rapport_proto::METHOD_SCOPES.iter().filter(|(path, _)| path.to_ascii_lowercase().contains("audit")).collect();
    assert_eq!(audit_rpcs, vec![&("/rapport.profile.v1.ProfileService/ListAudit", "audit:read")]);
    suite.stop().await;
}

/// A caller over its rate gets RESOURCE_EXHAUSTED at once with a retry hint (metadata and
/// google.rpc.RetryInfo); other callers and the admin are not affected; after the hinted wait it is
/// served again. A message over `server.max_message_bytes` is refused before it reaches a handler.
#[tokio::test]
async fn rate_limits_per_caller_and_request_size() {
    use rapport_proto::common::v1::{PingRequest, diagnostics_service_client::DiagnosticsServiceClient};
    use tonic_types::StatusExt;
    let config = format!(
        "{}\n[server]\nmax_message_bytes = 65536\n[limits]\nper_caller_per_second = 1000\n",
        keys(&[
            ("till-3", "till-token", "roles = [\"store-till\"]\nrate_limit_per_second = 2"),
            ("crm", "crm-token", "roles = [\"backend\"]"),
        ])
    );
    let suite = TestSuite::start_with(SuiteOptions::default().config(config)).await;
    let mut ping = DiagnosticsServiceClient::new(suite.channel().await);
    let mut refused = Vec::new();
    let mut served = 0;
    for _ in 0..10 {
        match ping.ping(with_token(PingRequest::default(), "till-token")).await {
            Ok(_) => served += 1,
            Err(s) => refused.push(s),
        }
    }
    assert!((1..=3).contains(&served), "served {served} of 10 at 2/s");
    let first = &refused[0];
    assert_eq!(first.code(), Code::ResourceExhausted, "{first:?}");
    assert!(first.message().contains("till-3"), "{}", first.message());
    let hint: u64 = first.metadata().get("retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
    let retry = first.get_details_retry_info().and_then(|r| r.retry_delay).expect("RetryInfo detail");
    assert!(hint > 0 && hint <= 1000 && retry <= std::time::Duration::from_secs(1), "{hint} {retry:?}");
    // Another key and the admin are served meanwhile.
    for _ in 0..20 {
        ping.ping(with_token(PingRequest::default(), "crm-token")).await.unwrap();
        ping.ping(suite.admin(PingRequest::default())).await.unwrap();
    }
    let last_hint: u64 =
        refused.last().unwrap().metadata().get("retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(last_hint + 10)).await;
    ping.ping(with_token(PingRequest::default(), "till-token")).await.unwrap();

    // 100 KiB against a 64 KiB limit.
    let big = ping.ping(suite.admin(PingRequest { payload: vec![b'x'; 100 * 1024] })).await.unwrap_err();
    assert!([Code::OutOfRange, Code::ResourceExhausted].contains(&big.code()), "{big:?}");
    assert!(big.message().contains("65536"), "{}", big.message());
    suite.stop().await;
}
