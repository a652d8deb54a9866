//! An open-loop load generator for the benchmarks in docs/BENCHMARKS.md: calls are started at a fixed
//! rate whether or not earlier ones have finished, so a slow server cannot slow the arrivals down and hide
//! its queueing (no coordinated omission). Each latency runs from the moment the call is issued to its
//! answer; the report also counts calls the generator itself issued late (more than 1 ms after they were
//! due, from timer granularity or a busy machine), so a run whose arrivals slipped is visible.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

/// How hard and how long to push.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Calls started per second.
    pub rate: u32,
    /// How long to keep starting calls (after the warm-up).
    pub duration: Duration,
    /// Calls started before measuring, at the same rate.
    pub warmup: Duration,
    /// Calls in flight at most; beyond it a call counts as dropped.
    pub max_in_flight: usize,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub dropped: u64,
    /// Calls issued more than 1 ms after they were due.
    pub late: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

impl LoadReport {
    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    /// One line per figure, as pasted into docs/BENCHMARKS.md.
    pub fn summary(&self, what: &str) -> String {
        format!(
            "{what}: {} calls in {:.1} s = {:.0}/s achieved; ok {}, errors {}, dropped {}, issued late {}\n\
             latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.sent as f64 / self.elapsed.as_secs_f64(),
            self.ok,
            self.errors,
            self.dropped,
            self.late,
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(1.0),
        )
    }
}

/// Calls `call(i)` at `spec.rate` per second for the warm-up and then the measured duration.
pub async fn run<F>(spec: &LoadSpec, call: F) -> LoadReport
where
    F: Fn(u64) -> BoxFuture<'static, Result<(), tonic::Status>> + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let interval = Duration::from_secs_f64(1.0 / f64::from(spec.rate.max(1)));
    let permits = Arc::new(Semaphore::new(spec.max_in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, u64, Option<String>)>();
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut i: u64 = 0;
    let mut dropped = 0;
    let mut sent = 0;
    let mut late = 0;
    loop {
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let measured = due >= measure_from;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if measured {
                dropped += 1;
            }
            i += 1;
            continue;
        };
        if measured {
            sent += 1;
            if due.elapsed() > Duration::from_millis(1) {
                late += 1;
            }
        }
        let call = call.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let issued = Instant::now();
            let result = call(i).await;
            let latency = issued.elapsed().as_micros() as u64;
            drop(permit);
            if measured {
                let _ =
                    tx.send((result.is_ok(), latency, result.err().map(|s| format!("{}: {}", s.code(), s.message()))));
            }
        });
        i += 1;
    }
    drop(tx);
    let mut report = LoadReport {
        sent,
        ok: 0,
        errors: 0,
        dropped,
        late,
        elapsed: spec.duration,
        latencies_us: Vec::with_capacity(sent as usize),
        first_error: None,
    };
    while let Some((ok, latency, error)) = rx.recv().await {
        if ok {
            report.ok += 1;
            report.latencies_us.push(latency);
        } else {
            report.errors += 1;
            if report.first_error.is_none() {
                report.first_error = error;
            }
        }
    }
    report.latencies_us.sort_unstable();
    report
}

/// A marketing grant for `contact` on `channel`, recorded now from the benchmark's web form.
pub fn bench_grant(
    contact: rapport_proto::common::v1::Identifier,
    channel: rapport_proto::common::v1::Channel,
) -> rapport_proto::consent::v1::EntryInput {
    use rapport_proto::common::v1::{Provenance, Purpose};
    use rapport_proto::consent::v1::{ConsentStatus, EntryInput, Proof, ProofMethod};
    EntryInput {
        contact_point: Some(contact),
        channel: channel as i32,
        purpose: Some(Purpose { name: "marketing".into() }),
        status: ConsentStatus::Granted as i32,
        provenance: Some(Provenance { source: "bench".into(), ..Default::default() }),
        proof: Some(Proof {
            notice_id: "bench".into(),
            notice_version: "1".into(),
            method: ProofMethod::WebForm as i32,
            ..Default::default()
        }),
        occurred_at: Some(now_ts()),
        region: "DE".into(),
        ..Default::default()
    }
}

/// Identity.Resolve load: each call resolves the email and loyalty id of one of `customers` synthetic
/// customers, so after the first pass over the pool most calls find a known customer, as in production
/// where the same people come back.
pub async fn resolve_load(
    spec: &LoadSpec,
    channels: Vec<tonic::transport::Channel>,
    token: Arc<str>,
    customers: u64,
) -> LoadReport {
    use futures::FutureExt as _;
    use rapport_proto::common::v1::{Identifier, IdentifierType, Provenance};
    use rapport_proto::identity::v1::{ResolveRequest, identity_service_client::IdentityServiceClient};
    let n = channels.len() as u64;
    let customers = customers.max(1);
    run(spec, move |i| {
        let mut client = IdentityServiceClient::new(channels[(i % n) as usize].clone());
        let token = token.clone();
        // A multiplicative hash spreads consecutive calls over the pool.
        let who = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % customers;
        let request = ResolveRequest {
            identifiers: vec![
                Identifier {
                    r#type: IdentifierType::Email as i32,
                    value: format!("bench{who}@example.com"),
                    namespace: String::new(),
                },
                Identifier {
                    r#type: IdentifierType::LoyaltyId as i32,
                    value: format!("L{who}"),
                    namespace: String::new(),
                },
            ],
            provenance: Some(Provenance {
                source: "bench".into(),
                source_record_id: String::new(),
                actor: String::new(),
            }),
            ..Default::default()
        };
        async move { client.resolve(authorized(request, &token)).await.map(|_| ()) }.boxed()
    })
    .await
}

/// Profile load. `track`: each call tracks `batch` page views of one of `customers` customers (by email,
/// so identity resolution is included). `get`: each call reads the profile of one of `customers`
/// customers by customer id (after a warm-up that creates and caches them).
pub async fn profile_load(
    spec: &LoadSpec,
    channels: Vec<tonic::transport::Channel>,
    token: Arc<str>,
    customers: u64,
    what: &str,
    batch: usize,
) -> LoadReport {
    use futures::FutureExt as _;
    use rapport_proto::common::v1::{CustomerRef, Identifier, IdentifierType, customer_ref::Ref};
    use rapport_proto::profile::v1::{
        Event, EventContext, GetProfileRequest, TrackRequest, profile_service_client::ProfileServiceClient,
    };
    let n = channels.len() as u64;
    let customers = customers.max(1);
    let track = what == "track";
    // Customer ids are learned from the first Track of each customer, so reads address real profiles.
    let known: Arc<std::sync::Mutex<Vec<String>>> = Arc::new(std::sync::Mutex::new(Vec::new()));
    if !track {
        let mut client = ProfileServiceClient::new(channels[0].clone());
        for who in 0..customers {
            let request = TrackRequest {
                events: vec![Event {
                    name: "page_viewed".into(),
                    occurred_at: Some(crate::bench::now_ts()),
                    identifiers: vec![Identifier {
                        r#type: IdentifierType::Email as i32,
                        value: format!("reader{who}@example.com"),
                        namespace: String::new(),
                    }],
                    context: Some(EventContext { source: "bench".into(), ..Default::default() }),
                    ..Default::default()
                }],
            };
            if let Ok(r) = client.track(authorized(request, &token)).await
                && let Some(first) = r.into_inner().results.first()
            {
                known.lock().expect("ids").push(first.customer_id.clone());
            }
        }
    }
    run(spec, move |i| {
        let mut client = ProfileServiceClient::new(channels[(i % n) as usize].clone());
        let token = token.clone();
        let who = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % customers;
        let known = known.clone();
        async move {
            if track {
                let events = (0..batch)
                    .map(|k| Event {
                        name: "page_viewed".into(),
                        occurred_at: Some(now_ts()),
                        identifiers: vec![Identifier {
                            r#type: IdentifierType::Email as i32,
                            value: format!("bench{who}@example.com"),
                            namespace: String::new(),
                        }],
                        message_id: format!("bench-{i}-{k}"),
                        context: Some(EventContext { source: "bench".into(), ..Default::default() }),
                        ..Default::default()
                    })
                    .collect();
                client.track(authorized(TrackRequest { events }, &token)).await.map(|_| ())
            } else {
                let id = {
                    let ids = known.lock().expect("ids");
                    ids[(who as usize) % ids.len().max(1)].clone()
                };
                let request = GetProfileRequest {
                    customer: Some(CustomerRef { r#ref: Some(Ref::CustomerId(id)) }),
                    field_mask: Some(prost_types::FieldMask {
                        paths: vec!["traits".into(), "computed".into(), "segments".into()],
                    }),
                    purpose: "bench".into(),
                };
                client.get_profile(authorized(request, &token)).await.map(|_| ())
            }
        }
        .boxed()
    })
    .await
}

/// Consent.Check load: first resolves `customers` customers in identity, each with an email address, and
/// records an email-marketing grant for each address (in batches of 100); then each call checks one
/// address (identity lookup, ledger and suppressions included).
pub async fn consent_load(
    spec: &LoadSpec,
    channels: Vec<tonic::transport::Channel>,
    token: Arc<str>,
    customers: u64,
) -> anyhow::Result<LoadReport> {
    use futures::FutureExt as _;
    use rapport_proto::common::v1::{Channel, Identifier, IdentifierType, Provenance, Purpose};
    use rapport_proto::consent::v1::{CheckRequest, RecordRequest, consent_service_client::ConsentServiceClient};
    let contact = |who: u64| Identifier {
        r#type: IdentifierType::Email as i32,
        value: format!("consent{who}@example.com"),
        namespace: String::new(),
    };
    let customers = customers.max(1);
    let mut identity =
        rapport_proto::identity::v1::identity_service_client::IdentityServiceClient::new(channels[0].clone());
    for who in 0..customers {
        let request = rapport_proto::identity::v1::ResolveRequest {
            identifiers: vec![contact(who)],
            provenance: Some(Provenance { source: "bench".into(), ..Default::default() }),
            ..Default::default()
        };
        identity.resolve(authorized(request, &token)).await?;
    }
    let mut client = ConsentServiceClient::new(channels[0].clone());
    let mut who = 0;
    while who < customers {
        let entries = (who..(who + 100).min(customers)).map(|w| bench_grant(contact(w), Channel::Email)).collect();
        client.record(authorized(RecordRequest { entries }, &token)).await?;
        who += 100;
    }
    let n = channels.len() as u64;
    Ok(run(spec, move |i| {
        let mut client = ConsentServiceClient::new(channels[(i % n) as usize].clone());
        let who = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % customers;
        let request = authorized(
            CheckRequest {
                contact_point: Some(contact(who)),
                channel: Channel::Email as i32,
                purpose: Some(Purpose { name: "marketing".into() }),
                region: "DE".into(),
                ..Default::default()
            },
            &token,
        );
        async move {
            let answer = client.check(request).await?.into_inner();
            if answer.allowed {
                Ok(())
            } else {
                Err(tonic::Status::internal(format!("denied: {}", answer.explanation)))
            }
        }
        .boxed()
    })
    .await)
}

/// Freshness under load: each call tracks an order of a new customer, then reads the profile by the same
/// email until its computed order count shows the order (or 2 s pass: an error). The latency reported is
/// from the Track call to the first read that reflects it.
pub async fn freshness_load(spec: &LoadSpec, channels: Vec<tonic::transport::Channel>, token: Arc<str>) -> LoadReport {
    use futures::FutureExt as _;
    use rapport_proto::common::v1::{CustomerRef, Identifier, IdentifierType, customer_ref::Ref};
    use rapport_proto::profile::v1::{
        Event, EventContext, GetProfileRequest, TrackRequest, profile_service_client::ProfileServiceClient,
    };
    let n = channels.len() as u64;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
    );
    run(spec, move |i| {
        let mut client = ProfileServiceClient::new(channels[(i % n) as usize].clone());
        let token = token.clone();
        let who = Identifier {
            r#type: IdentifierType::Email as i32,
            value: format!("fresh-{run_id}-{i}@example.com"),
            namespace: String::new(),
        };
        let message_id = format!("fresh-{run_id}-{i}");
        async move {
            let order = Event {
                message_id,
                name: "order_completed".into(),
                occurred_at: Some(now_ts()),
                identifiers: vec![who.clone()],
                properties: Some(rapport_rpc::convert::json_to_struct(
                    serde_json::json!({"revenue_minor": 1999, "currency": "EUR"}),
                )),
                context: Some(EventContext { source: "bench".into(), ..Default::default() }),
                ..Default::default()
            };
            client.track(authorized(TrackRequest { events: vec![order] }, &token)).await?;
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let read = client
                    .get_profile(authorized(
                        GetProfileRequest {
                            customer: Some(CustomerRef { r#ref: Some(Ref::Identifier(who.clone())) }),
                            field_mask: Some(prost_types::FieldMask { paths: vec!["computed".into()] }),
                            purpose: "bench".into(),
                        },
                        &token,
                    ))
                    .await;
                if let Ok(p) = read
                    && p.into_inner().computed.is_some_and(|c| c.order_count >= 1)
                {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(tonic::Status::deadline_exceeded("the order was not reflected within 2 s"));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        .boxed()
    })
    .await
}

/// `message` as a request carrying the bearer `token`.
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

/// Now as a protobuf timestamp.
pub fn now_ts() -> prost_types::Timestamp {
    let ms = chrono::Utc::now().timestamp_millis();
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}
