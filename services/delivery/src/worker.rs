//! The send workers: claim due messages, re-check consent and suppression, respect quiet hours,
//! personalise from the profile and the offer, render, hand over to a provider, and record what happened.
//!
//! Per claimed batch: one consent CheckBatch, one BatchGetProfiles (only for templates that read the
//! profile, or to find the recipient's time zone for quiet hours), one IssueUnsubscribeToken per marketing
//! email. Consent or profile unreachable: the message waits (DEFERRED), it is never sent unchecked. A profile
//! read refused for another reason (a bad request, a missing permission) fails the message with that reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prost::Message as _;
use rapport_proto::common::v1::{Channel, CustomerRef, Identifier, MessageClass, Purpose, customer_ref::Ref};
use rapport_proto::consent::v1 as consent;
use rapport_proto::delivery::v1::{self as pb, EngagementKind, MessageStatus};
use rapport_proto::profile::v1 as profile;
use rapport_rpc::convert::struct_to_json;
use rapport_storage::now_millis;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, Mark, channel_name};
use crate::domain::{backoff, quiet, tracking};
use crate::providers::{Outcome, Outgoing, Routed};
use crate::store::messages::{Change, MessageRow};

/// Runs the claim loop until `shutdown`.
pub fn spawn(core: Arc<Core>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(core.settings.workers));
        let domains: Option<Arc<DefaultKeyedRateLimiter<String>>> =
            std::num::NonZeroU32::new(core.settings.domain_rate_per_second)
                .map(|r| Arc::new(RateLimiter::keyed(Quota::per_second(r))));
        let poll = Duration::from_millis(core.settings.poll_interval_ms.max(1));
        let lease_ms = core.settings.lease_seconds * 1000;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Claim no more than can be sent now, so that claimed messages do not wait out their lease.
            // Claim in batches worth a consent CheckBatch: wait (briefly) for a quarter of the workers.
            let want = (core.settings.workers / 4).clamp(1, core.settings.claim_batch as usize) as u32;
            if permits.available_permits() < want as usize {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = permits.clone().acquire_many_owned(want) => drop(p),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            let free = permits.available_permits();
            if free == 0 {
                continue;
            }
            let limit = (free as i64).min(core.settings.claim_batch);
            let rows = match core.messages.claim(&core.owner, limit, lease_ms).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming from the send queue failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(poll) => {}
                    }
                    continue;
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = core.wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                continue;
            }
            let prepared = prepare(&core, rows).await;
            for p in prepared {
                match p {
                    Step::Done(change) => {
                        let core = core.clone();
                        tokio::spawn(async move {
                            core.record(change).await;
                        });
                    }
                    Step::Send(job) => {
                        let Ok(permit) = permits.clone().acquire_owned().await else { break };
                        let core = core.clone();
                        let domains = domains.clone();
                        tokio::spawn(async move {
                            let change = send(&core, *job, domains.as_deref()).await;
                            core.record(change).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
        // Let in-flight sends record their outcome before the pools close.
        let _ = tokio::time::timeout(Duration::from_secs(4), permits.acquire_many(core.settings.workers as u32)).await;
    })
}

/// A message ready to go.
struct Job {
    row: MessageRow,
    outgoing: Outgoing,
}

enum Step {
    /// Nothing to send: the change says why (blocked, deferred, failed, sent after reconciliation).
    Done(Change),
    Send(Box<Job>),
}

fn change(core: &Core, row: &MessageRow, status: MessageStatus, detail: impl Into<String>) -> Change {
    let detail = detail.into();
    Change {
        message_id: row.message_id.clone(),
        owner: Some(core.owner.clone()),
        status: status as i32,
        history: true,
        events: vec![core.status_event(row, status, &detail)],
        detail,
        ..Default::default()
    }
}

/// Waits until `at` without leaving the queue.
fn deferred(core: &Core, row: &MessageRow, at: i64, why: &str) -> Change {
    let mut c = change(core, row, MessageStatus::Deferred, why);
    c.next_attempt_at = Some(at);
    // Repeated deferrals (consent away for a while) are one history entry and one event.
    if row.status == MessageStatus::Deferred as i64 && row.last_error == why {
        c.history = false;
        c.events.clear();
    }
    c
}

/// Failed for good: dead-lettered.
fn failed(core: &Core, row: &MessageRow, why: impl Into<String>) -> Change {
    let mut c = change(core, row, MessageStatus::Failed, why);
    c.dead = true;
    metrics::counter!("rapport_messages_failed_total", "channel" => channel_name(row.channel as i32), "reason" => "final")
        .increment(1);
    c
}

fn customer_ref(id: &str) -> Option<CustomerRef> {
    (!id.is_empty()).then(|| CustomerRef { r#ref: Some(Ref::CustomerId(id.to_string())) })
}

/// The consent channel of a delivery channel: a call-centre script leads to a phone call.
fn consent_channel(c: i64) -> i32 {
    if c == Channel::CallCentre as i64 { Channel::PhoneCall as i32 } else { c as i32 }
}

fn unavailable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown
    ) || (s.code() == tonic::Code::Internal && s.message().contains("transport"))
}

/// Turns a claimed batch into sends and immediate outcomes.
async fn prepare(core: &Arc<Core>, rows: Vec<MessageRow>) -> Vec<Step> {
    let now = now_millis();
    let retry_at = now + core.settings.dependency_retry_ms as i64;
    let mut out = Vec::with_capacity(rows.len());
    let mut live = Vec::with_capacity(rows.len());
    for row in rows {
        if row.handoff_provider.is_some() {
            out.push(reconcile(core, row).await);
        } else {
            live.push(row);
        }
    }
    if live.is_empty() {
        return out;
    }
    // Consent and suppression, again, at send time.
    let checks: Vec<consent::CheckRequest> = live
        .iter()
        .map(|r| {
            let recipient = Core::recipient_of(r);
            consent::CheckRequest {
                customer: customer_ref(&r.customer_id),
                contact_point: recipient.identifier_type().map(|t| Identifier {
                    r#type: t as i32,
                    value: recipient.as_str().to_string(),
                    namespace: String::new(),
                }),
                channel: consent_channel(r.channel),
                purpose: Some(Purpose { name: r.purpose.clone() }),
                ..Default::default()
            }
        })
        .collect();
    let mut verdicts: Vec<Result<consent::CheckResponse, String>> = Vec::with_capacity(live.len());
    let mut consent_down = None;
    for chunk in checks.chunks(1000) {
        let answer = match core.clients.consent() {
            Ok(mut c) => c.check_batch(consent::CheckBatchRequest { checks: chunk.to_vec() }).await,
            Err(s) => Err(s),
        };
        match answer {
            Ok(r) => {
                let mut results = r.into_inner().results;
                results.sort_by_key(|r| r.index);
                for (i, _) in chunk.iter().enumerate() {
                    let item = results.iter().find(|r| r.index == i as i32).and_then(|r| r.outcome.clone());
                    verdicts.push(match item {
                        Some(consent::check_batch_result::Outcome::Response(resp)) => Ok(resp),
                        Some(consent::check_batch_result::Outcome::Error(e)) => {
                            Err(format!("{}: {}", e.code, e.message))
                        }
                        None => Err("consent answered without this check".into()),
                    });
                }
            }
            Err(s) => {
                consent_down = Some(if unavailable(&s) {
                    "consent is unreachable: waiting for it".to_string()
                } else {
                    format!("consent check failed: {:?}: {}", s.code(), s.message())
                });
                break;
            }
        }
    }
    if let Some(why) = consent_down {
        metrics::counter!("rapport_delivery_deferred_total", "reason" => "consent_unreachable")
            .increment(live.len() as u64);
        out.extend(live.iter().map(|r| Step::Done(deferred(core, r, retry_at, &why))));
        return out;
    }
    // Decode requests and templates; find who needs a profile.
    struct Pending {
        row: MessageRow,
        request: pb::SendRequest,
        compiled: Option<Arc<crate::domain::template::Compiled>>,
    }
    let mut pending = Vec::new();
    for (row, verdict) in live.into_iter().zip(verdicts) {
        match verdict {
            Ok(v) if v.allowed => {}
            Ok(v) => {
                metrics::counter!("rapport_delivery_blocked_total", "channel" => channel_name(row.channel as i32))
                    .increment(1);
                let reason =
                    consent::CheckReason::try_from(v.reason).map(|r| r.as_str_name().to_string()).unwrap_or_default();
                let c = change(core, &row, MessageStatus::Blocked, format!("{reason}: {}", v.explanation));
                out.push(Step::Done(c));
                continue;
            }
            Err(e) => {
                out.push(Step::Done(failed(core, &row, format!("consent refused the check: {e}"))));
                continue;
            }
        }
        let request = match pb::SendRequest::decode(row.request.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                out.push(Step::Done(failed(core, &row, format!("stored request unreadable: {e}"))));
                continue;
            }
        };
        let compiled = if row.template_id.is_empty() {
            None
        } else {
            match core.compiled(&row.template_id, row.template_version).await {
                Ok(c) => Some(c),
                Err(e) => {
                    out.push(Step::Done(failed(core, &row, format!("template {}: {e}", row.template_id))));
                    continue;
                }
            }
        };
        pending.push(Pending { row, request, compiled });
    }
    let quiet = core.settings.quiet_hours();
    let wanted: BTreeSet<String> = pending
        .iter()
        .filter(|p| needs_profile_row(&p.row, p.compiled.as_deref(), quiet.is_some()))
        .map(|p| p.row.customer_id.clone())
        .collect();
    let mut profiles: BTreeMap<String, Value> = BTreeMap::new();
    let mut profile_down = None;
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let wanted: Vec<String> = wanted.into_iter().collect();
    // BatchGetProfiles takes at most this many customers per call.
    const PROFILES_PER_CALL: usize = 100;
    for chunk in wanted.chunks(PROFILES_PER_CALL) {
        let request = profile::BatchGetProfilesRequest {
            requests: chunk
                .iter()
                .map(|id| profile::GetProfileRequest {
                    customer: customer_ref(id),
                    field_mask: Some(prost_types::FieldMask {
                        paths: vec!["traits".into(), "computed".into(), "segments".into()],
                    }),
                    purpose: "delivery_personalisation".into(),
                })
                .collect(),
        };
        let answer = match core.clients.profile() {
            Ok(mut c) => c.batch_get_profiles(request).await,
            Err(s) => Err(s),
        };
        match answer {
            Ok(r) => {
                for result in r.into_inner().results {
                    let Some(id) = chunk.get(result.index as usize) else { continue };
                    if let Some(profile::batch_get_profiles_result::Outcome::Profile(p)) = result.outcome {
                        profiles.insert(id.clone(), profile_json(&p));
                    }
                }
            }
            Err(s) if unavailable(&s) => {
                profile_down = Some(format!("profile is unreachable: waiting for it ({:?})", s.code()));
                break;
            }
            // Any other answer (a refused request, a missing permission) will not change by waiting: these
            // customers' messages fail with the reason, dead-lettered and replayable once it is fixed.
            Err(s) => {
                let why = format!("profile refused the read: {:?}: {}", s.code(), s.message());
                tracing::warn!(code = ?s.code(), customers = chunk.len(), "profile refused a batch read; the messages fail");
                refused.extend(chunk.iter().map(|id| (id.clone(), why.clone())));
            }
        }
    }
    for p in pending {
        let Pending { row, request, compiled } = p;
        let needs_profile = needs_profile_row(&row, compiled.as_deref(), quiet.is_some());
        if profile_down.is_some() && needs_profile {
            out.push(Step::Done(deferred(core, &row, retry_at, profile_down.as_deref().unwrap_or_default())));
            continue;
        }
        if let Some(why) = refused.get(&row.customer_id).filter(|_| needs_profile) {
            out.push(Step::Done(failed(core, &row, why.clone())));
            continue;
        }
        let profile =
            profiles.get(&row.customer_id).cloned().unwrap_or_else(|| json!({"customer_id": row.customer_id}));
        // Quiet hours for marketing, in the recipient's time zone.
        if let Some((start, end)) = quiet
            && row.message_class != MessageClass::Service as i64
        {
            let tz = profile
                .get("time_zone")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<chrono_tz::Tz>().ok())
                .or_else(|| core.settings.default_time_zone.parse().ok())
                .unwrap_or(chrono_tz::UTC);
            if let Some(release) = quiet::release_at(chrono::Utc::now(), tz, start, end) {
                metrics::counter!("rapport_delivery_deferred_total", "reason" => "quiet_hours").increment(1);
                let why = format!("quiet hours in {tz} until {}", release.to_rfc3339());
                out.push(Step::Done(deferred(core, &row, release.timestamp_millis(), &why)));
                continue;
            }
        }
        match build(core, &row, &request, compiled.as_deref(), &profile).await {
            Ok(outgoing) => out.push(Step::Send(Box::new(Job { row, outgoing }))),
            Err(Built::Defer(why)) => out.push(Step::Done(deferred(core, &row, retry_at, &why))),
            Err(Built::Fail(why)) => out.push(Step::Done(failed(core, &row, why))),
        }
    }
    out
}

fn needs_profile_row(row: &MessageRow, compiled: Option<&crate::domain::template::Compiled>, quiet: bool) -> bool {
    !row.customer_id.is_empty()
        && (compiled.is_some_and(|c| c.variables().iter().any(|v| v == "profile"))
            || (quiet && row.message_class != MessageClass::Service as i64)
            || row.channel == Channel::DirectMail as i64)
}

/// The profile as templates see it: the traits at top level, plus `customer_id`, `computed`, `segments`.
fn profile_json(p: &profile::Profile) -> Value {
    let mut m = p.traits.as_ref().map(struct_to_json).unwrap_or_default();
    m.insert("customer_id".into(), Value::String(p.customer_id.clone()));
    if let Some(c) = &p.computed {
        m.insert(
            "computed".into(),
            json!({
                "order_count": c.order_count,
                "high_value": c.high_value,
                "interests": c.interests,
                "lifecycle_stage": c.lifecycle_stage,
                "preferred_channel": c.preferred_channel,
                "total_revenue_minor": c.total_revenue.as_ref().map(|m| m.minor_units),
                "currency": c.total_revenue.as_ref().map(|m| m.currency.clone()),
            }),
        );
        m.entry("interests".to_string()).or_insert_with(|| json!(c.interests));
    }
    m.insert("segments".into(), json!(p.segments.iter().map(|s| s.name.clone()).collect::<Vec<_>>()));
    Value::Object(m)
}

enum Built {
    Defer(String),
    Fail(String),
}

/// Renders and assembles the outgoing message.
async fn build(
    core: &Core,
    row: &MessageRow,
    request: &pb::SendRequest,
    compiled: Option<&crate::domain::template::Compiled>,
    profile: &Value,
) -> Result<Outgoing, Built> {
    let channel = Channel::try_from(row.channel as i32).unwrap_or_default();
    let recipient = Core::recipient_of(row);
    let marketing = row.message_class != MessageClass::Service as i64;
    // The unsubscribe link of marketing email (List-Unsubscribe and the footer variable).
    let mut unsubscribe_url = String::new();
    if marketing && let Some(t) = recipient.identifier_type() {
        let issue = consent::IssueUnsubscribeTokenRequest {
            contact_point: Some(Identifier {
                r#type: t as i32,
                value: recipient.as_str().to_string(),
                namespace: String::new(),
            }),
            channel: consent_channel(row.channel),
            purpose: Some(Purpose { name: row.purpose.clone() }),
            customer_id: row.customer_id.clone(),
            message_id: row.message_id.clone(),
            decision_id: row.decision_id.clone(),
            ttl: None,
        };
        let answer = match core.clients.consent() {
            Ok(mut c) => c.issue_unsubscribe_token(issue).await,
            Err(s) => Err(s),
        };
        match answer {
            Ok(r) => unsubscribe_url = r.into_inner().url,
            Err(s) if unavailable(&s) => return Err(Built::Defer("consent is unreachable: waiting for it".into())),
            Err(s) => return Err(Built::Fail(format!("unsubscribe link: {:?}: {}", s.code(), s.message()))),
        }
    }
    let mut data = request.data.as_ref().map(struct_to_json).unwrap_or_default();
    let mut offer = match data.remove("offer") {
        Some(Value::Object(o)) => o,
        _ => serde_json::Map::new(),
    };
    if !row.offer_id.is_empty() {
        offer.entry("offer_id".to_string()).or_insert(Value::String(row.offer_id.clone()));
    }
    data.insert("profile".into(), profile.clone());
    data.insert("offer".into(), Value::Object(offer));
    data.insert(
        "message".into(),
        json!({"id": row.message_id, "unsubscribe_url": unsubscribe_url, "decision_id": row.decision_id, "campaign_id": row.campaign_id}),
    );
    let context = Value::Object(data);
    let mut rendered = match compiled {
        Some(c) => {
            c.render(&row.locale, &context).map_err(|e| Built::Fail(format!("template: {}: {}", e.field, e.problem)))?
        }
        None => {
            let content = request.content.clone().unwrap_or_default();
            let inline = [pb::LocalizedContent {
                locale: String::new(),
                subject: content.subject,
                html: content.html,
                text: content.text,
            }];
            let c = crate::domain::template::Compiled::new(&inline, "", core.settings.template_fuel).map_err(|e| {
                Built::Fail(format!("content.{}: {}", e.field.rsplit('.').next().unwrap_or_default(), e.problem))
            })?;
            c.render("", &context).map_err(|e| Built::Fail(format!("content.{}: {}", e.field, e.problem)))?
        }
    };
    if channel == Channel::Email && rendered.subject.is_empty() {
        return Err(Built::Fail("template: subject: an email needs a subject".into()));
    }
    if rendered.html.is_empty() && rendered.text.trim().is_empty() {
        return Err(Built::Fail("template: the message would be empty".into()));
    }
    if channel == Channel::Email && core.settings.tracking && !rendered.html.is_empty() {
        rendered.html =
            tracking::instrument_html(&rendered.html, &row.message_id, &core.links, &[unsubscribe_url.as_str()]);
    }
    let due_at = request.not_before.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or(row.created_at);
    Ok(Outgoing {
        message_id: row.message_id.clone(),
        customer_id: row.customer_id.clone(),
        channel,
        recipient,
        rendered,
        marketing,
        unsubscribe_url,
        decision_id: row.decision_id.clone(),
        offer_id: row.offer_id.clone(),
        campaign_id: row.campaign_id.clone(),
        traits: profile.clone(),
        due_at,
    })
}

/// Sends one prepared message and turns the outcome into a change.
async fn send(core: &Core, job: Job, domains: Option<&DefaultKeyedRateLimiter<String>>) -> Change {
    let Job { row, outgoing } = job;
    if let (Some(limiter), Some(domain)) = (domains, outgoing.recipient.domain()) {
        let key = domain.to_string();
        let mut waited = Duration::ZERO;
        while let Err(not_until) = limiter.check_key(&key) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            if waited + wait > Duration::from_secs(2) {
                let at = now_millis() + wait.as_millis() as i64;
                return deferred(core, &row, at, &format!("rate limit of {domain}"));
            }
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    }
    let mark = Mark { core, message_id: &row.message_id };
    let routed = core.registry.send(&outgoing, &mark).await;
    if let Outcome::Unknown { detail } = &routed.outcome {
        // The answer to the final step was lost (the provider may still be processing it): keep the mark
        // and come back after a lease, when the provider is asked (or, without a lookup, it counts as sent).
        let mut c = change(core, &row, MessageStatus::Queued, format!("{detail}; the outcome is settled later"));
        c.next_attempt_at = Some(now_millis() + core.settings.lease_seconds * 1000);
        c.keep_handoff = true;
        c.provider = Some(routed.provider.clone());
        c.events.clear();
        return c;
    }
    outcome_change(core, &row, &outgoing, routed)
}

fn outcome_change(core: &Core, row: &MessageRow, outgoing: &Outgoing, routed: Routed) -> Change {
    let channel = channel_name(row.channel as i32);
    let provider = routed.provider.clone();
    let mut c = match routed.outcome {
        Outcome::Sent { detail } => {
            metrics::counter!("rapport_messages_sent_total", "channel" => channel, "provider" => provider.clone())
                .increment(1);
            let mut c = change(core, row, MessageStatus::Sent, detail);
            c.subject = Some(outgoing.rendered.subject.chars().take(500).collect());
            c
        }
        Outcome::Retry { detail } | Outcome::Unknown { detail } => {
            let attempt = row.attempts as i32 + 1;
            if attempt >= core.settings.max_attempts {
                failed(core, row, format!("{detail} (attempt {attempt} of {}; giving up)", core.settings.max_attempts))
            } else {
                metrics::counter!("rapport_messages_failed_total", "channel" => channel, "reason" => "retry")
                    .increment(1);
                let delay = backoff::jittered(
                    attempt,
                    Duration::from_millis(core.settings.retry_base_ms),
                    Duration::from_millis(core.settings.retry_max_ms),
                );
                let at = now_millis() + delay.as_millis() as i64;
                let why = format!("attempt {attempt} failed: {detail}; next attempt at {}", rfc3339(at));
                let mut c = change(core, row, MessageStatus::Queued, why);
                c.next_attempt_at = Some(at);
                c.events.clear();
                c
            }
        }
        Outcome::Failed { detail, bounce } => {
            if bounce {
                metrics::counter!("rapport_messages_failed_total", "channel" => channel, "reason" => "bounce")
                    .increment(1);
                let mut c = change(core, row, MessageStatus::Bounced, detail.clone());
                c.dead = true;
                c.events.push(core.engagement_event(row, EngagementKind::HardBounce, "", &detail, false));
                c
            } else {
                failed(core, row, detail)
            }
        }
    };
    c.attempted = true;
    c.provider = Some(provider);
    c
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// A message claimed with a hand-off mark: its last owner died between the mark and the outcome.
async fn reconcile(core: &Core, row: MessageRow) -> Step {
    let provider = row.handoff_provider.clone().unwrap_or_default();
    let slot = core.registry.get(&provider);
    let known = match &slot {
        Some(s) => s.provider.reconcile(&row.message_id).await,
        None => None,
    };
    metrics::counter!("rapport_delivery_handoffs_recovered_total", "provider" => provider.clone()).increment(1);
    let mut c = match known {
        Some(true) => change(
            core,
            &row,
            MessageStatus::Sent,
            "hand-off interrupted by a restart; the provider has it (reconciled)",
        ),
        Some(false) => {
            // Not received: send it again (it was never handed over).
            let mut c = change(
                core,
                &row,
                MessageStatus::Queued,
                "hand-off interrupted by a restart; not received, sending again",
            );
            c.next_attempt_at = Some(now_millis());
            c.events.clear();
            c
        }
        None => change(
            core,
            &row,
            MessageStatus::Sent,
            "hand-off interrupted by a restart after its final step began; assumed accepted (no reconciliation configured)",
        ),
    };
    c.provider = Some(provider);
    Step::Done(c)
}

/// Keeps `rapport_delivery_queue_depth{channel}` current.
pub fn spawn_depth(core: Arc<Core>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: BTreeSet<i64> = BTreeSet::new();
        loop {
            if let Ok(depths) = core.messages.depth().await {
                let now: BTreeMap<i64, i64> = depths.into_iter().collect();
                for c in seen.iter().chain(now.keys()) {
                    let n = now.get(c).copied().unwrap_or(0);
                    metrics::gauge!("rapport_delivery_queue_depth", "channel" => channel_name(*c as i32)).set(n as f64);
                }
                seen.extend(now.keys());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    })
}
