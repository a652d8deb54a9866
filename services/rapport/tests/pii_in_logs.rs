//! No personal data in logs or traces: the real binary runs the golden path as far as it exists
//! (Identify and Track with emails and phones, identity Resolve with a merge, GetProfile by email and
//! by phone, consent Record and Check, a refused bad phone number, an export and an erasure) with the log
//! filter at debug and at trace for Rapport's own crates, in both log formats, and nothing it printed
//! may contain an email address, a phone number or a name from the inputs. Span fields are printed with
//! the events inside them, so this covers what traces carry too.

mod support;

use prost_types::Struct;
use rapport_proto::common::v1::{
    Channel, CustomerRef, Identifier, IdentifierType, Provenance, Purpose, customer_ref::Ref,
};
use rapport_proto::consent::v1::{self as consent, consent_service_client::ConsentServiceClient};
use rapport_proto::identity::v1::{self as identity, identity_service_client::IdentityServiceClient};
use rapport_proto::profile::v1::{self as profile, profile_service_client::ProfileServiceClient};
use support::Rapport;

const EMAIL_A: &str = "Annabelle.Zwanziger@Example-Shop.com";
const EMAIL_B: &str = "quentin.oyelaran@mail-provider.net";
const PHONE_A: &str = "+49 176 1234 5678";
const PHONE_B: &str = "+33 6 12 34 56 78";
const BAD_PHONE: &str = "+49 0000 1111 2222 3333 4444";
const NAMES: [&str; 2] = ["Annabelle", "Zwanziger"];

/// The forms in which the inputs could show up: as sent, lower case, E.164, digits only.
fn needles() -> Vec<String> {
    let mut n = Vec::new();
    for e in [EMAIL_A, EMAIL_B] {
        n.push(e.to_string());
        n.push(e.to_ascii_lowercase());
        n.push(e.split('@').next().unwrap().to_ascii_lowercase());
    }
    for p in [PHONE_A, PHONE_B, BAD_PHONE] {
        let digits: String = p.chars().filter(char::is_ascii_digit).collect();
        n.push(p.to_string());
        n.push(format!("+{digits}"));
        n.push(digits[2..].to_string());
    }
    n.extend(NAMES.iter().map(|s| s.to_string()));
    n
}

fn email(v: &str) -> Identifier {
    Identifier { r#type: IdentifierType::Email as i32, value: v.into(), namespace: String::new() }
}

fn phone(v: &str) -> Identifier {
    Identifier { r#type: IdentifierType::Phone as i32, value: v.into(), namespace: String::new() }
}

fn by(i: Identifier) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::Identifier(i)) })
}

fn now() -> Option<prost_types::Timestamp> {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    Some(prost_types::Timestamp { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

fn traits(fields: &[(&str, &str)]) -> Option<Struct> {
    Some(Struct {
        fields: fields
            .iter()
            .map(|(k, v)| {
                (k.to_string(), prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(v.to_string())) })
            })
            .collect(),
    })
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn golden_path(server: &Rapport) {
    let token = server.admin_token();
    let channel = server.channel().await;
    let mut profiles = ProfileServiceClient::new(channel.clone());
    let mut ids = IdentityServiceClient::new(channel.clone());
    let mut consents = ConsentServiceClient::new(channel.clone());

    let a = profiles
        .identify(authed(
            profile::IdentifyRequest {
                identifiers: vec![email(EMAIL_A), phone(PHONE_A)],
                traits: traits(&[("first_name", NAMES[0]), ("last_name", NAMES[1]), ("email", EMAIL_A)]),
                source: "crm".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    profiles
        .track(authed(
            profile::TrackRequest {
                events: vec![profile::Event {
                    name: "order_completed".into(),
                    occurred_at: now(),
                    identifiers: vec![email(EMAIL_A)],
                    properties: traits(&[("currency", "EUR"), ("contact", EMAIL_A)]),
                    context: Some(profile::EventContext { source: "webshop".into(), ..Default::default() }),
                    ..Default::default()
                }],
            },
            &token,
        ))
        .await
        .unwrap();
    // Another person, then evidence that joins them: a merge.
    ids.resolve(authed(
        identity::ResolveRequest {
            identifiers: vec![email(EMAIL_B), phone(PHONE_B)],
            provenance: Some(Provenance { source: "webshop".into(), ..Default::default() }),
            ..Default::default()
        },
        &token,
    ))
    .await
    .unwrap();
    ids.resolve(authed(
        identity::ResolveRequest {
            identifiers: vec![email(EMAIL_A), phone(PHONE_B)],
            provenance: Some(Provenance { source: "store".into(), ..Default::default() }),
            ..Default::default()
        },
        &token,
    ))
    .await
    .unwrap();
    // Refused input is answered to the caller; the value must not be logged.
    let bad = ids
        .resolve(authed(
            identity::ResolveRequest {
                identifiers: vec![phone(BAD_PHONE)],
                provenance: Some(Provenance { source: "webshop".into(), ..Default::default() }),
                ..Default::default()
            },
            &token,
        ))
        .await;
    assert!(bad.is_err(), "{bad:?}");
    for who in [email(EMAIL_A), phone(PHONE_A), email(EMAIL_B)] {
        profiles
            .get_profile(authed(profile::GetProfileRequest { customer: by(who), ..Default::default() }, &token))
            .await
            .unwrap();
    }
    consents
        .record(authed(
            consent::RecordRequest {
                entries: vec![consent::EntryInput {
                    customer: by(phone(PHONE_A)),
                    contact_point: Some(phone(PHONE_A)),
                    channel: Channel::Sms as i32,
                    purpose: Some(Purpose { name: "marketing".into() }),
                    status: consent::ConsentStatus::Granted as i32,
                    legal_basis: consent::LegalBasis::Consent as i32,
                    provenance: Some(Provenance { source: "store".into(), ..Default::default() }),
                    proof: Some(consent::Proof {
                        method: consent::ProofMethod::WebForm as i32,
                        notice_id: "n".into(),
                        notice_version: "1".into(),
                        ..Default::default()
                    }),
                    occurred_at: now(),
                    ..Default::default()
                }],
            },
            &token,
        ))
        .await
        .unwrap();
    consents
        .check(authed(
            consent::CheckRequest {
                contact_point: Some(email(EMAIL_A)),
                channel: Channel::Email as i32,
                purpose: Some(Purpose { name: "marketing".into() }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    profiles
        .get_timeline(authed(
            profile::GetTimelineRequest {
                customer: Some(CustomerRef { r#ref: Some(Ref::CustomerId(a.clone())) }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
    consents
        .start_export(authed(consent::StartExportRequest { subject: by(email(EMAIL_B)), ..Default::default() }, &token))
        .await
        .unwrap();
    consents
        .start_erasure(authed(
            consent::StartErasureRequest { subject: by(email(EMAIL_A)), ..Default::default() },
            &token,
        ))
        .await
        .unwrap();
}

const FILTER: &str = "debug,rapport=trace,rapport_identity=trace,rapport_consent=trace,rapport_profile=trace,\
rapport_decision=trace,rapport_delivery=trace,rapport_rpc=trace,rapport_auth=trace,rapport_storage=trace,\
rapport_cache=trace,rapport_telemetry=trace";

async fn run(format: &str) {
    // SQLite by default; the PostgreSQL and Redis of the test run when they are configured.
    let storage = rapport_storage::testing::TestDatabase::new().await;
    let redis = std::env::var("RAPPORT_TEST_REDIS_URL").unwrap_or_default();
    let mut server = Rapport::start(
        storage.data_dir.path(),
        &[
            ("RUST_LOG", FILTER),
            ("RAPPORT__TELEMETRY__LOG_FORMAT", format),
            ("RAPPORT__STORAGE__URL", &storage.url),
            ("RAPPORT__CACHE__URL", &redis),
        ],
        &[],
    );
    golden_path(&server).await;
    let (status, _) = server.terminate();
    assert!(status.success(), "{status:?}");
    let output = server.output();
    // The run logged at debug and trace (otherwise the test would prove nothing).
    assert!(output.contains("DEBUG") || output.contains("\"level\":\"DEBUG\""), "no debug lines in the output");
    assert!(output.len() > 10_000, "only {} bytes of logs", output.len());
    let lower = output.to_ascii_lowercase();
    let found: Vec<String> = needles()
        .into_iter()
        .filter(|n| lower.contains(&n.to_ascii_lowercase()))
        .map(|n| {
            let at = lower.find(&n.to_ascii_lowercase()).unwrap();
            let line_start = output[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = output[at..].find('\n').map_or(output.len(), |i| at + i);
            format!("`{n}` in: {}", &output[line_start..line_end])
        })
        .collect();
    assert!(found.is_empty(), "personal data in the {format} logs:\n{}", found.join("\n"));
}

#[tokio::test]
async fn the_golden_path_logs_no_personal_data_pretty() {
    run("pretty").await;
}

#[tokio::test]
async fn the_golden_path_logs_no_personal_data_json() {
    run("json").await;
}
