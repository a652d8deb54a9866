//! `rapport bench send`: email throughput to a real SMTP server (docs/BENCHMARKS.md, delivery).
//!
//! Sets up `--customers` customers (identity, a first name in the profile, an email-marketing grant) and
//! a personalised template, then submits `--messages` marketing emails with SendBatch at `--rate`
//! messages per second (open loop, batches of `--batch`), each with its own idempotency key, and
//! watches the SMTP sink's count (`--sink`, the stats URL of bench/smtp_sink.py) until every message has
//! arrived. It prints the submission rate, the delivery rate per second, the sustained delivery rate
//! (from 10% to 90% of the messages) and the sink's duplicate count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rapport_proto::common::v1::{
    Channel, CustomerRef, Identifier, IdentifierType, MessageClass, Provenance, customer_ref::Ref,
};
use rapport_proto::consent::v1 as consent;
use rapport_proto::delivery::v1 as pb;
use rapport_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;

use crate::bench::{authorized, bench_grant};

/// What to send.
#[derive(Debug, Clone)]
pub struct SendSpec {
    pub messages: u64,
    pub rate: u32,
    pub batch: usize,
    pub customers: u64,
    /// The sink's stats URL (`http://127.0.0.1:2580/stats`); empty: do not wait for delivery.
    pub sink: String,
    /// A prefix of the idempotency keys; the same run id submits the same messages again.
    pub run_id: String,
    /// Skip creating customers and the template (a second submission of the same run).
    pub skip_setup: bool,
}

async fn sink_stats(url: &str) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(url.starts_with("http://"), "--sink must be an http:// URL");
    let (_, body) = crate::http_client::get(url).await?;
    Ok(serde_json::from_str(&body)?)
}

fn bench_email(i: u64) -> String {
    format!("send{i}@bench.example")
}

async fn setup(channel: &tonic::transport::Channel, token: &str, customers: u64) -> anyhow::Result<Vec<String>> {
    let mut identity =
        rapport_proto::identity::v1::identity_service_client::IdentityServiceClient::new(channel.clone());
    let mut profiles = rapport_proto::profile::v1::profile_service_client::ProfileServiceClient::new(channel.clone());
    let mut consents = consent::consent_service_client::ConsentServiceClient::new(channel.clone());
    let mut ids = Vec::with_capacity(customers as usize);
    for i in 0..customers {
        let who = Identifier { r#type: IdentifierType::Email as i32, value: bench_email(i), namespace: String::new() };
        let resolved = identity
            .resolve(authorized(
                rapport_proto::identity::v1::ResolveRequest {
                    identifiers: vec![who],
                    provenance: Some(Provenance { source: "bench".into(), ..Default::default() }),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner();
        profiles
            .identify(authorized(
                rapport_proto::profile::v1::IdentifyRequest {
                    customer_id: resolved.customer_id.clone(),
                    traits: Some(rapport_rpc::convert::json_to_struct(
                        serde_json::json!({"first_name": format!("Reader {i}")}),
                    )),
                    source: "bench".into(),
                    ..Default::default()
                },
                token,
            ))
            .await?;
        ids.push(resolved.customer_id);
    }
    for chunk in (0..customers).collect::<Vec<_>>().chunks(100) {
        let entries = chunk
            .iter()
            .map(|i| {
                let email = Identifier {
                    r#type: IdentifierType::Email as i32,
                    value: bench_email(*i),
                    namespace: String::new(),
                };
                bench_grant(email, Channel::Email)
            })
            .collect();
        consents.record(authorized(consent::RecordRequest { entries }, token)).await?;
    }
    let template = pb::Template {
        template_id: "bench-email".into(),
        name: "benchmark".into(),
        channel: Channel::Email as i32,
        locales: vec![pb::LocalizedContent {
            locale: "en".into(),
            subject: "Hello {{ profile.first_name }}".into(),
            html: "<p>Hello {{ profile.first_name }}, here is <a href=\"https://shop.example/o/{{ offer.offer_id }}\">{{ offer.title }}</a>.</p>\
                   <p><a href=\"{{ message.unsubscribe_url }}\">Unsubscribe</a></p>"
                .into(),
            text: "Hello {{ profile.first_name }}, here is {{ offer.title }}. Unsubscribe: {{ message.unsubscribe_url }}".into(),
        }],
        default_locale: "en".into(),
        ..Default::default()
    };
    DeliveryServiceClient::new(channel.clone())
        .put_template(authorized(pb::PutTemplateRequest { template: Some(template) }, token))
        .await?;
    Ok(ids)
}

/// Runs the scenario and prints its figures.
pub async fn run(spec: &SendSpec, channels: Vec<tonic::transport::Channel>, token: Arc<str>) -> anyhow::Result<()> {
    let started = Instant::now();
    let ids = if spec.skip_setup {
        // Customers are addressed by email through identity when setup is skipped.
        Vec::new()
    } else {
        setup(&channels[0], &token, spec.customers.max(1)).await?
    };
    println!("setup: {} customers in {:.1} s", ids.len(), started.elapsed().as_secs_f64());
    let before = if spec.sink.is_empty() { 0 } else { sink_stats(&spec.sink).await?["messages"].as_u64().unwrap_or(0) };
    let batches = spec.messages.div_ceil(spec.batch as u64);
    let interval = Duration::from_secs_f64(spec.batch as f64 / f64::from(spec.rate.max(1)));
    let submit_start = Instant::now();
    let ids = Arc::new(ids);
    let mut handles = Vec::new();
    for b in 0..batches {
        tokio::time::sleep_until((submit_start + interval.mul_f64(b as f64)).into()).await;
        let mut client = DeliveryServiceClient::new(channels[(b as usize) % channels.len()].clone());
        let first = b * spec.batch as u64;
        let last = (first + spec.batch as u64).min(spec.messages);
        let ids = ids.clone();
        let customers = spec.customers.max(1);
        let messages: Vec<pb::SendRequest> = (first..last)
            .map(|i| {
                let who = i % customers;
                pb::SendRequest {
                    customer: Some(CustomerRef {
                        r#ref: Some(match ids.get(who as usize) {
                            Some(id) => Ref::CustomerId(id.clone()),
                            None => Ref::Identifier(Identifier {
                                r#type: IdentifierType::Email as i32,
                                value: bench_email(who),
                                namespace: String::new(),
                            }),
                        }),
                    }),
                    channel: Channel::Email as i32,
                    template_id: "bench-email".into(),
                    data: Some(rapport_rpc::convert::json_to_struct(
                        serde_json::json!({"offer": {"title": "10% off"}}),
                    )),
                    idempotency_key: format!("{}-{i}", spec.run_id),
                    offer_id: "off_bench".into(),
                    decision_id: format!("dec_bench_{i}"),
                    message_class: MessageClass::Marketing as i32,
                    ..Default::default()
                }
            })
            .collect();
        let token = token.clone();
        handles.push(tokio::spawn(async move {
            let r = client.send_batch(authorized(pb::SendBatchRequest { messages }, &token)).await;
            match r {
                Ok(r) => r
                    .into_inner()
                    .results
                    .iter()
                    .filter(|x| matches!(x.outcome, Some(pb::send_batch_result::Outcome::Error(_))))
                    .count(),
                Err(e) => {
                    eprintln!("SendBatch failed: {}: {}", e.code(), e.message());
                    (last - first) as usize
                }
            }
        }));
    }
    let mut refused = 0;
    for h in handles {
        refused += h.await.unwrap_or(0);
    }
    let submitted = submit_start.elapsed();
    println!(
        "submitted {} messages in {:.1} s = {:.0}/s ({} refused)",
        spec.messages,
        submitted.as_secs_f64(),
        spec.messages as f64 / submitted.as_secs_f64(),
        refused
    );
    if spec.sink.is_empty() {
        return Ok(());
    }
    // Watch the sink: one sample per second until every message arrived (or nothing moves for 30 s).
    let target = spec.messages;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut last_change = Instant::now();
    let mut last = 0;
    loop {
        let stats = sink_stats(&spec.sink).await?;
        let got = stats["messages"].as_u64().unwrap_or(0).saturating_sub(before);
        let t = submit_start.elapsed().as_secs_f64();
        if got != last {
            last_change = Instant::now();
            last = got;
        }
        samples.push((t, got));
        if got >= target || last_change.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let at = |share: f64| samples.iter().find(|(_, n)| *n as f64 >= share * target as f64).map(|(t, _)| *t);
    let stats = sink_stats(&spec.sink).await?;
    println!("sink: {stats}");
    if let (Some(t10), Some(t90)) = (at(0.1), at(0.9))
        && t90 > t10
    {
        println!("sustained delivery (10% to 90% of the messages): {:.0} emails/s", 0.8 * target as f64 / (t90 - t10));
    }
    if let Some((t, n)) = samples.last() {
        println!("delivered {n} of {target} in {t:.1} s since the first SendBatch = {:.0}/s overall", *n as f64 / t);
    }
    Ok(())
}
