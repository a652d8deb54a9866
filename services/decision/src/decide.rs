//! Decide: the next best action for one customer, placement and channel.
//!
//! 1. Holdouts: the global holdout (configured share) and the campaign's own take nobody's offers, but
//!    the decision is logged so that reports can compare against them.
//! 2. Candidates: live offers for the placement, within their validity window, whose eligibility rule is
//!    true over the profile (profile.GetProfile), the request context and now. A rule that fails leaves its
//!    offer out with the error as the reason.
//! 3. Consent: consent.CheckBatch once per purpose needed, for the decision's channel; never bypassed.
//! 4. Contact policies of the channel and class (service messages bypass marketing policies), quiet hours
//!    in the customer's time zone, offers ignored too often, offer caps: read in one round trip.
//! 5. Arbitration per placement: score = propensity^a x value^b x context weight x lever^c, the
//!    propensity drawn from the offer's Beta posterior (Thompson sampling), choice probabilities estimated
//!    by Monte Carlo (see `domain::thompson`).
//! 6. The chosen offers are admitted atomically under their caps and the contact policies (a concurrent
//!    decision that filled a limit first pushes the next offer up), logged with group commit together
//!    with the `decision.made` outbox record, and counted as trials of the bandit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rapport_cache::{Admission, WindowLimit};
use rapport_errors::Error;
use rapport_proto::common::v1::{self as common, Channel, MessageClass};
use rapport_proto::consent::v1 as consent;
use rapport_proto::decision::v1::{self as pb, ExclusionReason, PlacementKind};
use rapport_proto::profile::v1 as profile;
use rapport_rpc::convert::{millis, timestamp};
use rapport_rules::Bindings;
use rapport_storage::now_millis;
use serde_json::{Value, json};
use tonic::Status;

use crate::domain::document::{at_path, empty_profile, profile_document};
use crate::domain::hash;
use crate::domain::offers::{class_of, is_message, purpose_of};
use crate::domain::policy::{QuietHours, applies, time_zone};
use crate::domain::thompson::{self, Candidate};
use crate::store::{LiveOffer, LoggedDecision, Store};

/// A limit an offer is admitted under, the reason it gives when full, and its explanation.
type Limit = (WindowLimit, ExclusionReason, String);

/// An experiment arm the customer is in.
#[derive(Debug, Clone, Default)]
pub struct ArmScope {
    pub experiment_id: String,
    pub arm: String,
    /// The offer the arm forces; empty for the normal decision.
    pub offer_id: String,
}

/// What a campaign (or an experiment) narrows a decision to.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub campaign_id: String,
    /// Only these offers; all when empty.
    pub offer_ids: Vec<String>,
    pub holdout_share: f64,
    /// Salt of the holdout hash (the campaign id unless the campaign names one).
    pub holdout_salt: String,
    pub arm: Option<ArmScope>,
}

/// A validated Decide request.
#[derive(Debug, Clone)]
pub struct Input {
    pub customer_id: String,
    pub placement: PlacementKind,
    pub channel: Channel,
    /// The request context (an object).
    pub context: Value,
    pub limit: usize,
    pub dry_run: bool,
    pub scope: Scope,
    /// The decision id to use (campaign timers and runs derive theirs, so a retry decides only once).
    pub decision_id: Option<String>,
}

/// A decision and what it needs to send: the response and, per chosen offer, its definition.
pub struct Outcome {
    pub response: pb::DecideResponse,
    /// When every offer was left out by quiet hours only: when they end (for campaigns to wait).
    pub quiet_until: Option<i64>,
    pub chosen: Vec<pb::Offer>,
}

fn exclusion(offer_id: &str, reason: ExclusionReason, detail: impl Into<String>) -> pb::Exclusion {
    pb::Exclusion { offer_id: offer_id.to_string(), reason: reason as i32, detail: detail.into() }
}

/// The profile of `customer_id` (traits, computed traits, segments); `None` when there is none yet.
pub async fn fetch_profile(store: &Store, customer_id: &str) -> Result<Option<profile::Profile>, Status> {
    let request = profile::GetProfileRequest {
        customer: Some(common::CustomerRef {
            r#ref: Some(common::customer_ref::Ref::CustomerId(customer_id.to_string())),
        }),
        field_mask: Some(prost_types::FieldMask { paths: vec!["traits".into(), "computed".into(), "segments".into()] }),
        purpose: "decision".into(),
    };
    match store.clients.profile()?.get_profile(request).await {
        Ok(p) => Ok(Some(p.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(Status::unavailable(format!("profile: {}", s.message()))),
    }
}

/// The multiplier the request context gives an offer: `context.offer_weights[offer_id]` times
/// `context.tag_weights[tag]` for each of its tags (1 when absent).
pub fn context_weight(context: &Value, offer: &pb::Offer) -> f64 {
    let mut w =
        context.get("offer_weights").and_then(|m| m.get(&offer.offer_id)).and_then(Value::as_f64).unwrap_or(1.0);
    if let Some(tags) = context.get("tag_weights") {
        for t in &offer.tags {
            if let Some(x) = tags.get(t).and_then(Value::as_f64) {
                w *= x;
            }
        }
    }
    if w.is_finite() { w.max(0.0) } else { 1.0 }
}

/// What one conversion of `offer` is worth, in major units (1 when not set).
pub fn value_of(offer: &pb::Offer) -> f64 {
    offer.business_value.as_ref().map_or(1.0, |m| m.minor_units.max(0) as f64 / 100.0)
}

fn cap_key(offer_id: &str, customer_id: &str, i: usize, cap: &pb::Cap) -> String {
    if cap.per_customer {
        format!("decision:cap:{offer_id}:{i}:{customer_id}")
    } else {
        format!("decision:cap:{offer_id}:{i}:all")
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// The limits an offer is admitted under: its caps and, per policy, its ignored sends.
fn offer_limits(offer: &pb::Offer, customer_id: &str, policies: &[&pb::ContactPolicy]) -> Vec<Limit> {
    let mut out = Vec::new();
    for (i, cap) in offer.caps.iter().enumerate() {
        let scope = if cap.per_customer { "per customer" } else { "in total" };
        let window = if cap.window_seconds > 0 { format!("within {} s", cap.window_seconds) } else { "ever".into() };
        out.push((
            WindowLimit {
                key: cap_key(&offer.offer_id, customer_id, i, cap),
                max: i64::from(cap.max),
                window: secs(cap.window_seconds),
            },
            ExclusionReason::Capped,
            format!("caps[{i}]: at most {} {scope} {window}", cap.max),
        ));
    }
    for p in policies.iter().filter(|p| p.suppress_after_ignored > 0) {
        out.push((
            WindowLimit {
                key: ignored_key(&p.policy_id, &offer.offer_id, customer_id),
                max: i64::from(p.suppress_after_ignored),
                window: secs(p.ignore_window_seconds),
            },
            ExclusionReason::IgnoredTooOften,
            format!(
                "policy {}: {} sends without a response within {} s",
                p.policy_id, p.suppress_after_ignored, p.ignore_window_seconds
            ),
        ));
    }
    out
}

/// The key counting sends of an offer to a customer without a response, under one policy.
pub fn ignored_key(policy_id: &str, offer_id: &str, customer_id: &str) -> String {
    format!("decision:ignored:{policy_id}:{offer_id}:{customer_id}")
}

/// The contact limits of a class of messages on a channel.
fn class_limits(customer_id: &str, policies: &[&pb::ContactPolicy]) -> Vec<Limit> {
    policies
        .iter()
        .filter(|p| p.max > 0)
        .map(|p| {
            (
                WindowLimit {
                    key: format!("decision:contact:{}:{customer_id}", p.policy_id),
                    max: i64::from(p.max),
                    window: secs(p.window_seconds),
                },
                ExclusionReason::ContactPolicy,
                format!("policy {}: at most {} contacts within {} s", p.policy_id, p.max, p.window_seconds),
            )
        })
        .collect()
}

/// Consent for each purpose on `channel`: allowed, or why not.
async fn consent_for(
    store: &Store,
    customer_id: &str,
    channel: Channel,
    purposes: &BTreeSet<String>,
    region: &str,
) -> HashMap<String, Result<(), String>> {
    let checks: Vec<consent::CheckRequest> = purposes
        .iter()
        .map(|p| consent::CheckRequest {
            customer: Some(common::CustomerRef {
                r#ref: Some(common::customer_ref::Ref::CustomerId(customer_id.to_string())),
            }),
            channel: channel as i32,
            purpose: Some(common::Purpose { name: p.clone() }),
            region: region.to_string(),
            ..Default::default()
        })
        .collect();
    let mut out = HashMap::new();
    let answer = match store.clients.consent() {
        Ok(mut c) => c.check_batch(consent::CheckBatchRequest { checks }).await.map(|r| r.into_inner()),
        Err(e) => Err(e),
    };
    match answer {
        Ok(r) => {
            for (purpose, result) in purposes.iter().zip(r.results) {
                let verdict = match result.outcome {
                    Some(consent::check_batch_result::Outcome::Response(c)) if c.allowed => Ok(()),
                    Some(consent::check_batch_result::Outcome::Response(c)) => Err(format!(
                        "{}: {}",
                        consent::CheckReason::try_from(c.reason).map(|r| r.as_str_name()).unwrap_or("DENIED"),
                        c.explanation
                    )),
                    Some(consent::check_batch_result::Outcome::Error(e)) => Err(format!("{}: {}", e.code, e.message)),
                    None => Err("no answer".into()),
                };
                out.insert(purpose.clone(), verdict);
            }
        }
        Err(s) => {
            // Never contact without an answer from consent.
            for p in purposes {
                out.insert(p.clone(), Err(format!("consent unavailable: {}", s.message())));
            }
        }
    }
    out
}

/// Makes a decision.
pub async fn decide(store: &Store, input: Input) -> Result<Outcome, Status> {
    let now = now_millis();
    let settings = &store.settings;
    let catalog = store.catalog();
    let customer_id = input.customer_id.clone();
    let mut excluded: Vec<pb::Exclusion> = Vec::new();

    // Candidates by placement, window and scope.
    let forced = input.scope.arm.as_ref().map(|a| a.offer_id.clone()).filter(|o| !o.is_empty());
    let mut candidates: Vec<&LiveOffer> = Vec::new();
    for live in &catalog.offers {
        let o = &live.offer;
        if !input.scope.offer_ids.is_empty() && !input.scope.offer_ids.contains(&o.offer_id) {
            continue;
        }
        if forced.as_ref().is_some_and(|f| *f != o.offer_id) {
            continue;
        }
        if !o.placements.contains(&(input.placement as i32)) {
            excluded.push(exclusion(
                &o.offer_id,
                ExclusionReason::WrongPlacement,
                format!("not offered on {}", input.placement.as_str_name()),
            ));
            continue;
        }
        let from = o.valid_from.as_ref().and_then(millis);
        let until = o.valid_until.as_ref().and_then(millis);
        if from.is_some_and(|f| now < f) || until.is_some_and(|u| now >= u) {
            excluded.push(exclusion(&o.offer_id, ExclusionReason::OutsideWindow, "outside its validity window"));
            continue;
        }
        candidates.push(live);
    }

    let global_holdout = hash::in_holdout(&settings.global_holdout_salt, &customer_id, settings.global_holdout_share);
    let campaign_holdout = !input.scope.campaign_id.is_empty()
        && hash::in_holdout(&input.scope.holdout_salt, &customer_id, input.scope.holdout_share);
    let decision_id = match (&input.decision_id, input.dry_run) {
        (_, true) => String::new(),
        (Some(id), false) => id.clone(),
        (None, false) => format!("dec_{}", uuid::Uuid::now_v7().simple()),
    };
    let (experiment_id, arm) =
        input.scope.arm.as_ref().map(|a| (a.experiment_id.clone(), a.arm.clone())).unwrap_or_default();
    let decision = |offers: Vec<pb::ScoredOffer>| pb::Decision {
        decision_id: decision_id.clone(),
        customer_id: customer_id.clone(),
        placement: input.placement as i32,
        channel: input.channel as i32,
        offers,
        decided_at: Some(timestamp(now)),
        campaign_id: input.scope.campaign_id.clone(),
    };
    if global_holdout || campaign_holdout {
        let detail = if global_holdout { "in the global holdout" } else { "in the campaign's holdout" };
        for c in &candidates {
            excluded.push(exclusion(&c.offer.offer_id, ExclusionReason::Holdout, detail));
        }
        if !input.dry_run {
            store
                .log_decision(LoggedDecision {
                    decision: decision(vec![]),
                    experiment_id,
                    arm,
                    holdout: true,
                    sent: false,
                    segment: String::new(),
                    first_probability: vec![],
                    candidates: vec![],
                })
                .await?;
            metrics::counter!("rapport_decisions_total", "placement" => placement_label(input.placement), "holdout" => "true").increment(1);
        }
        return Ok(Outcome {
            response: pb::DecideResponse { decision_id, customer_id, offers: vec![], excluded, holdout: true },
            quiet_until: None,
            chosen: vec![],
        });
    }

    // Eligibility over the profile, the context and now.
    let profile = fetch_profile(store, &customer_id).await?;
    let doc = profile.as_ref().map_or_else(|| empty_profile(&customer_id), |p| profile_document(p, now));
    let segment = if settings.bandit_segment_field.is_empty() {
        String::new()
    } else {
        match at_path(&doc, &settings.bandit_segment_field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    };
    let now_value = json!(now);
    let bindings = Bindings::new(&[("profile", &doc), ("context", &input.context), ("now", &now_value)])
        .map_err(|e| Error::invalid("context", e))?;
    let mut eligible: Vec<&LiveOffer> = Vec::new();
    for c in candidates {
        match &c.rule {
            None => eligible.push(c),
            Some(rule) => match rule.matches_in(&bindings) {
                Ok(true) => eligible.push(c),
                Ok(false) => {
                    excluded.push(exclusion(&c.offer.offer_id, ExclusionReason::RuleFalse, "eligibility_rule is false"))
                }
                Err(e) => excluded.push(exclusion(
                    &c.offer.offer_id,
                    ExclusionReason::RuleError,
                    format!("eligibility_rule: {e}"),
                )),
            },
        }
    }

    // Consent, once per purpose.
    let purposes: BTreeSet<String> = eligible.iter().map(|c| purpose_of(&c.offer).to_string()).collect();
    let region = match doc["traits"].get("country").and_then(Value::as_str) {
        Some(c) if c.len() == 2 => c.to_ascii_uppercase(),
        _ => settings.default_region.clone(),
    };
    let verdicts = if purposes.is_empty() {
        HashMap::new()
    } else {
        consent_for(store, &customer_id, input.channel, &purposes, &region).await
    };
    let mut permitted: Vec<&LiveOffer> = Vec::new();
    for c in eligible {
        match verdicts.get(purpose_of(&c.offer)) {
            Some(Ok(())) => permitted.push(c),
            Some(Err(why)) => excluded.push(exclusion(
                &c.offer.offer_id,
                ExclusionReason::NoConsent,
                format!("{}: {why}", purpose_of(&c.offer)),
            )),
            None => excluded.push(exclusion(&c.offer.offer_id, ExclusionReason::NoConsent, "no consent answer")),
        }
    }

    // Contact policies per class, quiet hours, ignored sends and caps.
    let default_tz = settings.default_time_zone.parse().unwrap_or(chrono_tz::UTC);
    let tz = time_zone(doc["traits"].get("time_zone").and_then(Value::as_str), default_tz);
    let policies_of = |class: MessageClass| -> Vec<&pb::ContactPolicy> {
        catalog.policies.iter().filter(|p| applies(p, input.channel as i32, class)).collect()
    };
    let classes: BTreeMap<i32, Vec<&pb::ContactPolicy>> =
        [MessageClass::Marketing, MessageClass::Service].into_iter().map(|c| (c as i32, policies_of(c))).collect();
    let mut quiet: HashMap<i32, i64> = HashMap::new();
    for (class, policies) in &classes {
        for p in policies {
            if let Some(q) = QuietHours::of(p)
                && let Some(until) = q.quiet_until(now, tz)
            {
                let e = quiet.entry(*class).or_insert(until);
                *e = (*e).max(until);
            }
        }
    }
    let mut limits_by_offer: Vec<Vec<Limit>> = Vec::new();
    let mut unquiet: Vec<&LiveOffer> = Vec::new();
    let mut quiet_end: Option<i64> = None;
    for c in permitted {
        let class = class_of(&c.offer) as i32;
        if let Some(until) = quiet.get(&class) {
            let when = chrono::DateTime::from_timestamp_millis(*until).map(|t| t.to_rfc3339()).unwrap_or_default();
            excluded.push(exclusion(
                &c.offer.offer_id,
                ExclusionReason::QuietHours,
                format!("quiet hours in {tz} until {when}"),
            ));
            quiet_end = Some(quiet_end.map_or(*until, |q: i64| q.max(*until)));
            continue;
        }
        let policies = classes.get(&class).cloned().unwrap_or_default();
        let mut limits = class_limits(&customer_id, &policies);
        limits.extend(offer_limits(&c.offer, &customer_id, &policies));
        limits_by_offer.push(limits);
        unquiet.push(c);
    }
    let all_limits: Vec<WindowLimit> = limits_by_offer.iter().flatten().map(|(l, _, _)| l.clone()).collect();
    let counts = store.cache.window_counts(&all_limits, now).await;
    let mut open: Vec<(&LiveOffer, Vec<Limit>)> = Vec::new();
    let mut at = 0;
    for (c, limits) in unquiet.into_iter().zip(limits_by_offer) {
        let n = limits.len();
        let blocked = match &counts {
            Ok(counts) => limits
                .iter()
                .zip(&counts[at..at + n])
                .find(|((l, _, _), count)| **count >= l.max)
                .map(|((_, r, d), _)| (*r, d.clone())),
            Err(e) if n > 0 => Some((ExclusionReason::ContactPolicy, format!("contact counters unavailable: {e}"))),
            Err(_) => None,
        };
        at += n;
        match blocked {
            Some((reason, detail)) => excluded.push(exclusion(&c.offer.offer_id, reason, detail)),
            None => open.push((c, limits)),
        }
    }

    // Arbitration.
    let placement = catalog.placement(input.placement);
    let parts: Vec<(f64, f64, f64)> = open
        .iter()
        .map(|(c, _)| (value_of(&c.offer), context_weight(&input.context, &c.offer), c.offer.weight))
        .collect();
    let ranked_in: Vec<Candidate> = open
        .iter()
        .zip(&parts)
        .map(|((c, _), (value, ctx, lever))| Candidate {
            posterior: store.bandit.posterior(&c.offer.offer_id, &segment),
            rest: value.powf(placement.value_exponent) * ctx * lever.powf(placement.lever_exponent),
        })
        .collect();
    let ranking = {
        let mut rng = rand::rng();
        thompson::rank(
            &ranked_in,
            placement.propensity_exponent,
            placement.epsilon,
            input.limit,
            settings.choice_probability_draws,
            &mut rng,
        )
    };

    // Admission in rank order until `limit` offers are in.
    let mut chosen: Vec<usize> = Vec::new();
    let mut admitted_classes: BTreeSet<i32> = BTreeSet::new();
    let mut rest: Vec<usize> = Vec::new();
    for &i in &ranking.order {
        if chosen.len() >= input.limit {
            rest.push(i);
            continue;
        }
        let (c, limits) = &open[i];
        if input.dry_run {
            chosen.push(i);
            continue;
        }
        let class = class_of(&c.offer) as i32;
        // A decision is one contact however many offers it carries: the class limits count once.
        let skip_class = admitted_classes.contains(&class);
        let these: Vec<&Limit> =
            limits.iter().filter(|(_, r, _)| !(skip_class && *r == ExclusionReason::ContactPolicy)).collect();
        let keys: Vec<WindowLimit> = these.iter().map(|(l, _, _)| l.clone()).collect();
        match store.cache.admit(&keys, &decision_id, now).await {
            Ok(Admission::Admitted) => {
                admitted_classes.insert(class);
                chosen.push(i);
            }
            Ok(Admission::Full(k)) => {
                let (_, reason, detail) = these[k];
                excluded.push(exclusion(&c.offer.offer_id, *reason, detail.clone()));
            }
            Err(e) => excluded.push(exclusion(
                &c.offer.offer_id,
                ExclusionReason::ContactPolicy,
                format!("contact counters unavailable: {e}"),
            )),
        }
    }
    for i in rest {
        excluded.push(exclusion(
            &open[i].0.offer.offer_id,
            ExclusionReason::RankedLower,
            format!("score {:.6}", ranking.score[i]),
        ));
    }

    let scored: Vec<pb::ScoredOffer> = chosen
        .iter()
        .map(|&i| {
            let o = &open[i].0.offer;
            let (value, ctx, lever) = parts[i];
            pb::ScoredOffer {
                offer_id: o.offer_id.clone(),
                offer_version: o.version,
                name: o.name.clone(),
                content: o.content.iter().find(|c| c.channel == input.channel as i32).cloned(),
                score: ranking.score[i],
                propensity: ranking.propensity[i],
                value,
                context_weight: ctx,
                lever,
                choice_probability: ranking.chosen[i],
                experiment_id: experiment_id.clone(),
                arm: arm.clone(),
            }
        })
        .collect();
    let first_probability: Vec<f64> = chosen.iter().map(|&i| ranking.first[i]).collect();
    let chosen_offers: Vec<pb::Offer> = chosen.iter().map(|&i| open[i].0.offer.clone()).collect();
    if !input.dry_run {
        let sent = !scored.is_empty() && !is_message(input.placement);
        store
            .log_decision(LoggedDecision {
                decision: decision(scored.clone()),
                experiment_id,
                arm,
                holdout: false,
                sent,
                segment: segment.clone(),
                first_probability,
                candidates: open.iter().map(|(c, _)| c.offer.offer_id.clone()).collect(),
            })
            .await?;
        for s in &scored {
            store.bandit.add(&s.offer_id, &segment, 1, 0);
        }
        metrics::counter!("rapport_decisions_total", "placement" => placement_label(input.placement), "holdout" => "false").increment(1);
    }
    let quiet_until = if scored.is_empty() { quiet_end } else { None };
    Ok(Outcome {
        response: pb::DecideResponse { decision_id, customer_id, offers: scored, excluded, holdout: false },
        quiet_until,
        chosen: chosen_offers,
    })
}

/// The metrics label of a placement ("email", "web_banner").
pub fn placement_label(p: PlacementKind) -> String {
    p.as_str_name().trim_start_matches("PLACEMENT_KIND_").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_weighs_offers_by_id_and_tag() {
        let o = pb::Offer { offer_id: "off_1".into(), tags: vec!["shoes".into(), "sale".into()], ..Default::default() };
        assert_eq!(context_weight(&json!({}), &o), 1.0);
        let ctx = json!({"offer_weights": {"off_1": 2.0}, "tag_weights": {"shoes": 1.5, "bags": 9}});
        assert!((context_weight(&ctx, &o) - 3.0).abs() < 1e-12);
        assert_eq!(context_weight(&json!({"offer_weights": {"off_1": -4}}), &o), 0.0);
        assert_eq!(value_of(&o), 1.0);
        let valued =
            pb::Offer { business_value: Some(common::Money { currency: "EUR".into(), minor_units: 2550 }), ..o };
        assert!((value_of(&valued) - 25.5).abs() < 1e-12);
    }
}
