//! Report and EvaluatePolicy: KPIs from the decision log and its outcomes.
//!
//! Per group: decisions; sends (decisions that reached the customer: shown on a non-message placement,
//! or sent by delivery); delivered, opens and clicks (decisions with at least one such outcome);
//! conversions (conversion outcomes) and their revenue (in the currency most conversions were in; others
//! are left out of the sum); click-through rate = clicks / sends; conversion rate = converting decisions /
//! decisions (so a holdout, which is sent nothing, compares on the same footing); average order value =
//! revenue / conversions; revenue per recipient = revenue / decisions.
//!
//! Uplift is the conversion-rate difference treatment - holdout with Newcombe's hybrid score 95% interval
//! (see `domain::stats`). The baseline is the same KPIs over the period of equal length just before the
//! range.

use std::collections::HashMap;

use rapport_errors::Error;
use rapport_proto::common::v1 as common;
use rapport_proto::decision::v1::{self as pb, OutcomeKind, report_request::Subject};
use rapport_rpc::convert::millis;
use rapport_storage::now_millis;
use rapport_storage::sql::{Exec, V};

use crate::campaigns::Campaigns;
use crate::domain::offers;
use crate::domain::stats::{self, Interval};
use crate::store::Store;

const DAY: i64 = 86_400_000;

/// Which decisions a report covers: a SQL condition over `decisions d` with its binds (from $3 on), and
/// an extra condition over `outcomes o` (an offer's report counts that offer's outcomes only).
struct Filter {
    decisions: String,
    outcomes: String,
    binds: Vec<V>,
}

/// The expected split of a report's groups: their names and weights.
type Split = Option<(Vec<String>, Vec<f64>)>;

/// A group of a report: its name and its extra condition over `d`.
struct Group {
    name: String,
    condition: String,
}

fn range_of(r: Option<&common::TimeRange>) -> Result<(i64, i64), Error> {
    let end = match r.and_then(|r| r.end.as_ref()) {
        Some(t) => millis(t).ok_or_else(|| Error::invalid("range.end", "is not a valid time"))?,
        None => now_millis() + 1,
    };
    let start = match r.and_then(|r| r.start.as_ref()) {
        Some(t) => millis(t).ok_or_else(|| Error::invalid("range.start", "is not a valid time"))?,
        None => end - 30 * DAY,
    };
    if start >= end {
        return Err(Error::invalid("range.end", "must be after range.start"));
    }
    Ok((start, end))
}

fn money(currency: &str, minor: f64) -> Option<common::Money> {
    (!currency.is_empty()).then(|| common::Money { currency: currency.to_string(), minor_units: minor.round() as i64 })
}

struct Counts {
    kpis: pb::Kpis,
    converting: i64,
}

async fn kpis(store: &Store, f: &Filter, g: &Group, start: i64, end: i64) -> Result<Counts, Error> {
    let mut binds = vec![V::I(start), V::I(end)];
    binds.extend(f.binds.iter().cloned());
    let scope = format!("d.decided_at >= $1 AND d.decided_at < $2 AND {} AND {}", f.decisions, g.condition);
    let totals: Vec<(i64, Option<i64>)> = Exec::Db(&store.db)
        .all(&format!("SELECT COUNT(*), CAST(SUM(d.sent) AS BIGINT) FROM decisions d WHERE {scope}"), &binds)
        .await?;
    let (decisions, sends) = totals.first().map(|(a, b)| (*a, b.unwrap_or(0))).unwrap_or_default();
    let rows: Vec<(i64, String, i64, i64, Option<i64>)> = Exec::Db(&store.db)
        .all(
            &format!(
                "SELECT o.kind, o.currency, COUNT(DISTINCT o.decision_id), COUNT(*), CAST(SUM(o.revenue_minor) AS BIGINT) \
                 FROM outcomes o JOIN decisions d ON d.decision_id = o.decision_id WHERE {scope} AND {} \
                 GROUP BY o.kind, o.currency",
                f.outcomes
            ),
            &binds,
        )
        .await?;
    let mut by_kind: HashMap<i32, i64> = HashMap::new();
    let mut converting = 0;
    let mut conversions = 0;
    let mut revenue_by_currency: HashMap<String, (i64, i64)> = HashMap::new();
    for (kind, currency, distinct, count, revenue) in rows {
        *by_kind.entry(kind as i32).or_default() += distinct;
        if kind as i32 == OutcomeKind::Converted as i32 {
            converting += distinct;
            conversions += count;
            let e = revenue_by_currency.entry(currency).or_default();
            e.0 += count;
            e.1 += revenue.unwrap_or(0);
        }
    }
    let (currency, (counted, revenue)) =
        revenue_by_currency.into_iter().filter(|(c, _)| !c.is_empty()).max_by_key(|(_, (n, _))| *n).unwrap_or_default();
    let _ = counted;
    let kind = |k: OutcomeKind| by_kind.get(&(k as i32)).copied().unwrap_or(0);
    let ratio = |a: f64, b: i64| if b > 0 { a / b as f64 } else { 0.0 };
    let kpis = pb::Kpis {
        group: g.name.clone(),
        decisions,
        sends,
        delivered: kind(OutcomeKind::Delivered),
        opens: kind(OutcomeKind::Opened),
        clicks: kind(OutcomeKind::Clicked),
        conversions,
        revenue: money(&currency, revenue as f64),
        click_through_rate: ratio(kind(OutcomeKind::Clicked) as f64, sends),
        conversion_rate: ratio(converting as f64, decisions),
        average_order_value: money(&currency, ratio(revenue as f64, conversions)),
        revenue_per_recipient: money(&currency, ratio(revenue as f64, decisions)),
    };
    Ok(Counts { kpis, converting })
}

fn estimate(i: Interval) -> pb::Estimate {
    pb::Estimate { value: i.value, low: i.low, high: i.high }
}

/// The report of an offer, a campaign or an experiment.
pub async fn report(store: &Store, campaigns: &Campaigns, r: pb::ReportRequest) -> Result<pb::ReportResponse, Error> {
    let (start, end) = range_of(r.range.as_ref())?;
    let all = Group { name: "all".into(), condition: "1 = 1".into() };
    let treatment = Group { name: "treatment".into(), condition: "d.holdout = 0".into() };
    let holdout = Group { name: "holdout".into(), condition: "d.holdout = 1".into() };
    let (filter, groups, split): (Filter, Vec<Group>, Split) = match r.subject {
        Some(Subject::OfferId(id)) => {
            store.offer(&id).await?;
            (
                Filter {
                    decisions: "EXISTS (SELECT 1 FROM decision_offers x WHERE x.decision_id = d.decision_id AND x.offer_id = $3)".into(),
                    outcomes: "o.offer_id = $3".into(),
                    binds: vec![V::S(id)],
                },
                vec![all],
                None,
            )
        }
        Some(Subject::CampaignId(id)) => {
            let c = campaigns.get(&id).await?;
            let split = (c.holdout_share > 0.0).then(|| {
                (vec!["treatment".to_string(), "holdout".to_string()], vec![1.0 - c.holdout_share, c.holdout_share])
            });
            (
                Filter { decisions: "d.campaign_id = $3".into(), outcomes: "1 = 1".into(), binds: vec![V::S(id)] },
                vec![all, treatment, holdout],
                split,
            )
        }
        Some(Subject::ExperimentId(id)) => {
            let e = campaigns.experiment(&id).await?;
            let mut groups = vec![all];
            for (i, a) in e.arms.iter().enumerate() {
                groups.push(Group { name: a.name.clone(), condition: format!("d.holdout = 0 AND d.arm = ${}", 4 + i) });
            }
            groups.push(holdout);
            let mut binds = vec![V::S(id)];
            binds.extend(e.arms.iter().map(|a| V::S(a.name.clone())));
            let split = (e.arms.iter().map(|a| a.name.clone()).collect(), e.arms.iter().map(|a| a.weight).collect());
            (Filter { decisions: "d.experiment_id = $3".into(), outcomes: "1 = 1".into(), binds }, groups, Some(split))
        }
        None => return Err(Error::invalid("subject", "is required: an offer_id, campaign_id or experiment_id")),
    };
    let mut current = Vec::new();
    for g in &groups {
        current.push(kpis(store, &filter, g, start, end).await?);
    }
    let mut baseline = Vec::new();
    for g in &groups {
        baseline.push(kpis(store, &filter, g, start - (end - start), start).await?.kpis);
    }
    // Uplift: treatment (or every arm but "control") against the holdout (or the control arm).
    let find = |name: &str| current.iter().find(|c| c.kpis.group == name);
    let held = find("holdout").filter(|c| c.kpis.decisions > 0);
    let uplift = match (find("treatment"), held) {
        (Some(t), Some(h)) => Some(stats::difference(t.converting, t.kpis.decisions, h.converting, h.kpis.decisions)),
        _ => match (held, find("control")) {
            (Some(h), _) => {
                let arms: Vec<&Counts> =
                    current.iter().filter(|c| !["all", "holdout"].contains(&c.kpis.group.as_str())).collect();
                let k: i64 = arms.iter().map(|c| c.converting).sum();
                let n: i64 = arms.iter().map(|c| c.kpis.decisions).sum();
                Some(stats::difference(k, n, h.converting, h.kpis.decisions))
            }
            (None, Some(control)) => {
                let arms: Vec<&Counts> = current
                    .iter()
                    .filter(|c| !["all", "holdout", "control"].contains(&c.kpis.group.as_str()))
                    .collect();
                let k: i64 = arms.iter().map(|c| c.converting).sum();
                let n: i64 = arms.iter().map(|c| c.kpis.decisions).sum();
                (n > 0).then(|| stats::difference(k, n, control.converting, control.kpis.decisions))
            }
            (None, None) => None,
        },
    };
    // Sample-ratio mismatch over distinct customers per group.
    let sample_ratio_p_value = match split {
        Some((names, weights)) => {
            let mut observed = Vec::new();
            for name in &names {
                let g =
                    groups.iter().find(|g| g.name == *name).ok_or_else(|| Error::internal("report group missing"))?;
                let mut binds = vec![V::I(start), V::I(end)];
                binds.extend(filter.binds.iter().cloned());
                let n: Vec<(i64,)> = Exec::Db(&store.db)
                    .all(
                        &format!(
                            "SELECT COUNT(DISTINCT d.customer_id) FROM decisions d WHERE d.decided_at >= $1 AND d.decided_at < $2 \
                             AND {} AND {}",
                            filter.decisions, g.condition
                        ),
                        &binds,
                    )
                    .await?;
                observed.push(n.first().map_or(0, |x| x.0));
            }
            stats::sample_ratio_p_value(&observed, &weights)
        }
        None => 1.0,
    };
    Ok(pb::ReportResponse {
        groups: current.into_iter().map(|c| c.kpis).collect(),
        uplift: uplift.map(estimate),
        sample_ratio_p_value,
        baseline,
    })
}

/// Inverse propensity scoring of a candidate policy on the logged first choices of a placement:
/// V = (1/n) sum pi(a_i | x_i) r_i / p_i over the logged decisions, where a_i is the offer shown first,
/// p_i the logged probability that it came first, r_i 1 when the decision earned a success (the configured
/// reward) for it, and pi the candidate's probability of choosing a_i among the offers that were ranked.
/// Not self-normalised; the interval is the normal approximation of the mean of the terms.
pub async fn evaluate_policy(store: &Store, r: pb::EvaluatePolicyRequest) -> Result<pb::EvaluatePolicyResponse, Error> {
    let placement = offers::placement("placement", r.placement)?;
    let (start, end) = range_of(r.range.as_ref())?;
    let policy = r.policy.trim().to_string();
    if policy.is_empty() {
        return Err(Error::invalid("policy", "is required: an offer id, \"uniform\" or \"greedy\""));
    }
    if policy != "uniform" && policy != "greedy" && store.offer(&policy).await.is_err() {
        return Err(Error::invalid("policy", format!("`{policy}` is neither an offer, \"uniform\" nor \"greedy\"")));
    }
    let reward_kinds = if store.settings.reward == "converted" { "4" } else { "3, 4" };
    let rows: Vec<(String, String, String, f64, i64)> = Exec::Db(&store.db)
        .all(
            &format!(
                "SELECT d.decision_id, d.candidates, x.offer_id, x.first_probability, \
                 (SELECT COUNT(*) FROM outcomes o WHERE o.decision_id = d.decision_id AND o.offer_id = x.offer_id \
                  AND o.kind IN ({reward_kinds})) \
                 FROM decisions d JOIN decision_offers x ON x.decision_id = d.decision_id AND x.rank = 0 \
                 WHERE d.placement = $1 AND d.holdout = 0 AND d.decided_at >= $2 AND d.decided_at < $3 LIMIT 200000"
            ),
            &[(placement as i32).into(), start.into(), end.into()],
        )
        .await?;
    let catalog = store.catalog();
    let arbitration = catalog.placement(placement);
    let greedy_score = |offer_id: &str| {
        let mean = store.bandit.posterior(offer_id, "").mean();
        match catalog.offers.iter().find(|o| o.offer.offer_id == offer_id) {
            Some(o) => {
                mean.powf(arbitration.propensity_exponent)
                    * crate::decide::value_of(&o.offer).powf(arbitration.value_exponent)
                    * o.offer.weight.powf(arbitration.lever_exponent)
            }
            None => mean,
        }
    };
    let mut terms = Vec::with_capacity(rows.len());
    let mut logged = 0.0;
    for (_, candidates, shown, p, rewards) in &rows {
        let reward = if *rewards > 0 { 1.0 } else { 0.0 };
        logged += reward;
        let set: Vec<&str> = candidates.split_whitespace().collect();
        let pi = match policy.as_str() {
            "uniform" => {
                if set.is_empty() {
                    1.0
                } else {
                    1.0 / set.len() as f64
                }
            }
            "greedy" => {
                let best = set
                    .iter()
                    .copied()
                    .max_by(|a, b| greedy_score(a).partial_cmp(&greedy_score(b)).unwrap_or(std::cmp::Ordering::Equal));
                if best.unwrap_or(shown.as_str()) == shown { 1.0 } else { 0.0 }
            }
            fixed => {
                if fixed == shown {
                    1.0
                } else {
                    0.0
                }
            }
        };
        if *p > 0.0 {
            terms.push(pi * reward / p);
        }
    }
    let n = rows.len() as i64;
    Ok(pb::EvaluatePolicyResponse {
        value: Some(estimate(stats::mean_interval(&terms))),
        logged_value: if n > 0 { logged / n as f64 } else { 0.0 },
        decisions: n,
    })
}
