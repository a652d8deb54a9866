//! The foundation end to end: health of every service, roles, authentication and scopes, reflection,
//! the HTTP endpoints and the outbox feed, over a real gRPC port.

use futures::StreamExt;
use rapport_proto::common::v1::{PingRequest, SubscribeRequest, diagnostics_service_client::DiagnosticsServiceClient};
use rapport_proto::consent::v1::consent_service_client::ConsentServiceClient;
use rapport_proto::identity::v1::identity_service_client::IdentityServiceClient;
use rapport_storage::{Outbox, OutboxMessage};
use rapport_testkit::{SuiteOptions, TestSuite, http_get, with_token};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const SERVICES: [&str; 5] = [
    "rapport.identity.v1.IdentityService",
    "rapport.consent.v1.ConsentService",
    "rapport.profile.v1.ProfileService",
    "rapport.decision.v1.DecisionService",
    "rapport.delivery.v1.DeliveryService",
];

async fn health(suite: &TestSuite, service: &str) -> Result<ServingStatus, Code> {
    let mut client = HealthClient::new(suite.channel().await);
    let request = HealthCheckRequest { service: service.to_string() };
    match client.check(request).await {
        Ok(r) => Ok(r.into_inner().status()),
        Err(s) => Err(s.code()),
    }
}

#[tokio::test]
async fn all_five_services_report_serving() {
    let suite = TestSuite::start().await;
    for service in SERVICES {
        assert_eq!(health(&suite, service).await, Ok(ServingStatus::Serving), "{service}");
    }
    assert_eq!(health(&suite, "").await, Ok(ServingStatus::Serving));
    suite.stop().await;
}

#[tokio::test]
async fn a_role_serves_only_its_services() {
    let suite = TestSuite::start_with(SuiteOptions::services(&["consent"])).await;
    assert_eq!(health(&suite, "rapport.consent.v1.ConsentService").await, Ok(ServingStatus::Serving));
    assert_eq!(health(&suite, "rapport.identity.v1.IdentityService").await, Err(Code::NotFound));
    // The identity rpcs are not routed in this process at all.
    let mut identity = IdentityServiceClient::new(suite.channel().await);
    let err =
        identity.subscribe(suite.admin(SubscribeRequest::default())).await.expect_err("identity is not served here");
    assert_eq!(err.code(), Code::Unimplemented);
    suite.stop().await;
}

#[tokio::test]
async fn calls_need_a_token_and_the_rpcs_scope() {
    let reader = "rpt_test_reader_token";
    let config = format!(
        "[[auth.api_keys]]\nname = \"store-till\"\nsha256 = \"{}\"\nscopes = [\"profile:read\"]\n",
        rapport_auth::hash_token(reader)
    );
    let suite = TestSuite::start_with(SuiteOptions::default().config(config)).await;
    let mut diagnostics = DiagnosticsServiceClient::new(suite.channel().await);

    let err = diagnostics.ping(PingRequest::default()).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("bearer token"), "{}", err.message());

    let err = diagnostics.ping(with_token(PingRequest::default(), "rpt_wrong")).await.expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Any valid token may ping; the answer names the caller.
    let pong = diagnostics
        .ping(with_token(PingRequest { payload: b"hi".to_vec() }, reader))
        .await
        .expect("api key accepted")
        .into_inner();
    assert_eq!(pong.payload, b"hi");
    assert_eq!(pong.principal, "store-till");

    // A scope the key lacks: PERMISSION_DENIED naming the scope.
    let mut consent = ConsentServiceClient::new(suite.channel().await);
    let err = consent.subscribe(with_token(SubscribeRequest::default(), reader)).await.expect_err("lacks the scope");
    assert_eq!(err.code(), Code::PermissionDenied);
    let scope = rapport_proto::required_scope("/rapport.consent.v1.ConsentService/Subscribe").unwrap();
    assert!(err.message().contains(scope), "{}", err.message());

    // The admin token holds every scope.
    let pong = diagnostics.ping(suite.admin(PingRequest::default())).await.expect("admin").into_inner();
    assert_eq!(pong.principal, "admin");
    suite.stop().await;
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let suite = TestSuite::start().await;
    let mut client = ServerReflectionClient::new(suite.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        client.server_reflection_info(futures::stream::iter([request])).await.expect("reflection answers").into_inner();
    let response = responses.next().await.expect("one answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in SERVICES {
        assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");
    }
    suite.stop().await;
}

#[tokio::test]
async fn http_port_serves_liveness_readiness_and_metrics() {
    let suite = TestSuite::start().await;
    let mut diagnostics = DiagnosticsServiceClient::new(suite.channel().await);
    diagnostics.ping(suite.admin(PingRequest::default())).await.expect("ping");

    assert_eq!(http_get(&format!("{}/healthz", suite.http_url)).await.0, 200);
    assert_eq!(http_get(&format!("{}/readyz", suite.http_url)).await.0, 200);
    let (status, metrics) = http_get(&format!("{}/metrics", suite.http_url)).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "rapport_grpc_requests_total{service=\"rapport.common.v1.DiagnosticsService\",method=\"Ping\",code=\"Ok\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("rapport_grpc_request_duration_seconds_bucket"), "{metrics}");
    suite.stop().await;
}

#[tokio::test]
async fn subscribe_replays_the_outbox_then_follows_new_commits() {
    let suite = TestSuite::start().await;
    let settings = TestSuite::settings(&suite.storage, &SuiteOptions::default()).unwrap();
    let db = rapport::services::open_db(&settings, "identity").await.unwrap();
    let outbox = Outbox::new(db.clone());
    let append = |key: &'static str| {
        let outbox = outbox.clone();
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let message = OutboxMessage::new("identity.test", key, "rapport.common.v1.PingRequest", vec![1, 2, 3]);
            Outbox::append(&mut tx, &[message]).await.unwrap();
            outbox.commit(tx).await.unwrap();
        }
    };
    append("cus_1").await;
    append("cus_2").await;

    let mut identity = IdentityServiceClient::new(suite.channel().await);
    let mut stream =
        identity.subscribe(suite.admin(SubscribeRequest::default())).await.expect("subscribe").into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!((first.key.as_str(), second.key.as_str()), ("cus_1", "cus_2"));
    assert!(second.sequence > first.sequence);
    assert_eq!(first.topic, "identity.test");
    assert_eq!(first.payload.unwrap().type_url, "type.googleapis.com/rapport.common.v1.PingRequest");

    // A commit after the replay arrives live.
    append("cus_3").await;
    let third = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("live record within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(third.key, "cus_3");

    // Resuming after the second record starts at the third.
    let mut resumed = identity
        .subscribe(suite.admin(SubscribeRequest { after_sequence: second.sequence, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.next().await.unwrap().unwrap().key, "cus_3");

    // Bad input names the field.
    let err = identity
        .subscribe(suite.admin(SubscribeRequest { after_sequence: -1, ..Default::default() }))
        .await
        .expect_err("negative sequence");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("after_sequence"), "{}", err.message());
    drop(stream);
    drop(resumed);
    db.close().await;
    suite.stop().await;
}

#[tokio::test]
async fn a_split_deployment_calls_remote_services_with_a_token() {
    // consent alone in one process; a second process reaches it through clients.consent.
    let consent = TestSuite::start_with(SuiteOptions::services(&["consent"])).await;
    let options = SuiteOptions::services(&["identity"]).set("clients.consent", consent.grpc_url.clone());
    let token_file = consent.storage.data_dir.path().join("admin.token");
    let options = options.set("clients.token_file", token_file.display().to_string());
    let identity =
        TestSuite::start_on(std::sync::Arc::new(rapport_storage::testing::TestDatabase::new().await), options).await;
    let clients = identity.clients().expect("clients wired");
    assert!(clients.is_wired("consent"));
    let mut remote = clients.consent().expect("consent client");
    let err = remote
        .subscribe(SubscribeRequest { after_sequence: -5, ..Default::default() })
        .await
        .expect_err("validated by the remote consent service");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    identity.stop().await;
    consent.stop().await;
}

#[tokio::test]
async fn five_servers_one_per_service_work_as_one_suite() {
    let split = rapport_testkit::SplitSuite::start().await;
    for (service, part) in &split.parts {
        let name = format!("rapport.{service}.v1.{}Service", capitalised(service));
        assert_eq!(health(part, &name).await, Ok(ServingStatus::Serving), "{service}");
        let other = if *service == "identity" {
            "rapport.consent.v1.ConsentService"
        } else {
            "rapport.identity.v1.IdentityService"
        };
        assert_eq!(health(part, other).await, Err(Code::NotFound), "{service} serves only itself");
    }
    // A profile write travels to identity over gRPC and back.
    let mut profiles =
        rapport_proto::profile::v1::profile_service_client::ProfileServiceClient::new(split.channel("profile").await);
    let email = rapport_proto::common::v1::Identifier {
        r#type: 2,
        value: "split@example.com".into(),
        namespace: String::new(),
    };
    let traits = rapport_rpc::convert::json_to_struct(serde_json::json!({"city": "Kiel"}));
    let identified = profiles
        .identify(split.admin(rapport_proto::profile::v1::IdentifyRequest {
            identifiers: vec![email.clone()],
            traits: Some(traits),
            source: "crm".into(),
            ..Default::default()
        }))
        .await
        .expect("identify across servers")
        .into_inner();
    let mut identity = rapport_proto::identity::v1::identity_service_client::IdentityServiceClient::new(
        split.channel("identity").await,
    );
    let found = identity
        .lookup(split.admin(rapport_proto::identity::v1::LookupRequest { identifier: Some(email) }))
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(found.customer_id, identified.customer_id);
    split.stop().await;
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}
