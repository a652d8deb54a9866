//! `rapport bench decide`: next-best-action decisions for a web banner at a fixed rate. Each call names the
//! visitor by email (so identity's lookup, the profile read, the consent check of every candidate, the
//! eligibility rules, Thompson sampling and the logged decision are all in it), for one of `customers`
//! visitors, each with a profile and a web marketing grant, over five offers with different rules.

use std::sync::Arc;

use futures::{FutureExt as _, StreamExt as _};
use rapport_proto::common::v1::{Channel, CustomerRef, Identifier, IdentifierType, Money, customer_ref::Ref};
use rapport_proto::consent::v1 as consent;
use rapport_proto::decision::v1 as pb;
use rapport_proto::decision::v1::decision_service_client::DecisionServiceClient;
use rapport_proto::profile::v1 as profile;
use rapport_rpc::convert::json_to_struct;

use crate::bench::{LoadReport, LoadSpec, authorized, bench_grant, now_ts, run};

fn visitor(who: u64) -> Identifier {
    Identifier {
        r#type: IdentifierType::Email as i32,
        value: format!("decide{who}@bench.example"),
        namespace: String::new(),
    }
}

/// The offers: name, eligibility rule, value in cents.
const OFFERS: [(&str, &str, i64); 5] = [
    ("Free delivery", "", 500),
    ("10% off running shoes", "profile.traits.favourite == 'running'", 1_500),
    ("Members' evening", "profile.traits.member", 800),
    ("Autumn collection", "context.page == 'home'", 1_000),
    ("Welcome back", "!has(profile.computed.last_order_at)", 700),
];

async fn set_up(channel: &tonic::transport::Channel, token: &str, customers: u64) -> anyhow::Result<()> {
    let profiles = profile::profile_service_client::ProfileServiceClient::new(channel.clone());
    let mut calls = futures::stream::iter((0..customers).map(|who| {
        let mut profiles = profiles.clone();
        let traits = serde_json::json!({
            "first_name": format!("Visitor {who}"), "country": "DE", "member": who % 3 == 0,
            "favourite": if who % 2 == 0 { "running" } else { "hiking" },
        });
        let request = profile::IdentifyRequest {
            identifiers: vec![visitor(who)],
            traits: Some(json_to_struct(traits)),
            source: "bench".into(),
            occurred_at: Some(now_ts()),
            ..Default::default()
        };
        let token = token.to_string();
        async move { profiles.identify(authorized(request, &token)).await }
    }))
    .buffer_unordered(16);
    while let Some(answer) = calls.next().await {
        answer.map_err(|s| anyhow::anyhow!("identify: {:?}: {}", s.code(), s.message()))?;
    }
    let mut consents = consent::consent_service_client::ConsentServiceClient::new(channel.clone());
    for first in (0..customers).step_by(100) {
        let entries =
            (first..(first + 100).min(customers)).map(|who| bench_grant(visitor(who), Channel::Web)).collect();
        consents
            .record(authorized(consent::RecordRequest { entries }, token))
            .await
            .map_err(|s| anyhow::anyhow!("consent: {:?}: {}", s.code(), s.message()))?;
    }
    let mut decisions = DecisionServiceClient::new(channel.clone());
    for (name, rule, value) in OFFERS {
        let offer = pb::Offer {
            name: format!("bench: {name}"),
            content: vec![pb::ChannelContent {
                channel: Channel::Web as i32,
                template_id: "tpl_bench_banner".into(),
                variables: None,
            }],
            eligibility_rule: rule.into(),
            business_value: Some(Money { currency: "EUR".into(), minor_units: value }),
            placements: vec![pb::PlacementKind::WebBanner as i32],
            tags: vec!["bench".into()],
            ..Default::default()
        };
        decisions
            .create_offer(authorized(pb::CreateOfferRequest { offer: Some(offer) }, token))
            .await
            .map_err(|s| anyhow::anyhow!("create offer: {:?}: {}", s.code(), s.message()))?;
    }
    Ok(())
}

/// Sets up `customers` visitors and the offers, then decides at `spec.rate`; a decision with no offer
/// counts as an error (the set-up gives every visitor at least one).
pub async fn decide_load(
    spec: &LoadSpec,
    channels: Vec<tonic::transport::Channel>,
    token: Arc<str>,
    customers: u64,
) -> anyhow::Result<LoadReport> {
    let customers = customers.max(1);
    set_up(&channels[0], &token, customers).await?;
    let n = channels.len() as u64;
    let context = json_to_struct(serde_json::json!({"page": "home"}));
    Ok(run(spec, move |i| {
        let mut client = DecisionServiceClient::new(channels[(i % n) as usize].clone());
        let who = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % customers;
        let request = authorized(
            pb::DecideRequest {
                customer: Some(CustomerRef { r#ref: Some(Ref::Identifier(visitor(who))) }),
                placement: pb::PlacementKind::WebBanner as i32,
                channel: Channel::Web as i32,
                context: Some(context.clone()),
                limit: 1,
                ..Default::default()
            },
            &token,
        );
        async move {
            let answer = client.decide(request).await?.into_inner();
            if answer.offers.is_empty() && !answer.holdout {
                let why: Vec<String> = answer.excluded.iter().map(|e| e.detail.clone()).take(3).collect();
                return Err(tonic::Status::internal(format!("no offer: {}", why.join("; "))));
            }
            Ok(())
        }
        .boxed()
    })
    .await)
}
