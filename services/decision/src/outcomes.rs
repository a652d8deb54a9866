//! Outcomes: what happened after a decision, from RecordOutcome, delivery's feed (delivered, opened,
//! clicked, bounced, unsubscribed) and profile's (orders). Idempotent by outcome id; attributed to the
//! decision named, or else to the customer's latest decision within the attribution window; a success
//! (click or conversion, as configured) counts once per decision and offer for the bandit.

use rapport_errors::Error;
use rapport_proto::common::v1 as common;
use rapport_proto::decision::v1::{self as pb, OutcomeKind};
use rapport_storage::sql::Exec;
use rapport_storage::{Outbox, Tx, now_millis};

use crate::decide::ignored_key;
use crate::store::{Store, message};

/// An outcome to record.
#[derive(Debug, Clone)]
pub struct NewOutcome {
    pub outcome_id: String,
    pub decision_id: String,
    pub customer_id: String,
    pub offer_id: String,
    pub kind: OutcomeKind,
    pub revenue: Option<common::Money>,
    pub occurred_at: i64,
}

/// What recording did, and what to apply once it committed.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub decision_id: String,
    pub duplicate: bool,
    /// (offer, segment) of a first success for the bandit.
    pub success: Option<(String, String)>,
    /// (customer, offer) who responded: their ignored sends start over.
    pub responded: Option<(String, String)>,
    pub kind: Option<OutcomeKind>,
    pub revenue: Option<common::Money>,
}

fn is_reward(kind: OutcomeKind, reward: &str) -> bool {
    match reward {
        "converted" => kind == OutcomeKind::Converted,
        _ => matches!(kind, OutcomeKind::Clicked | OutcomeKind::Converted),
    }
}

/// Records `o` inside `tx`. With `strict`, a decision id that is not in the log is NOT_FOUND; without,
/// the outcome is attributed by customer instead (feeds carry ids of messages not sent by decisions).
pub async fn record_in(store: &Store, tx: &mut Tx, mut o: NewOutcome, strict: bool) -> Result<Recorded, Error> {
    let seen: Vec<(String,)> =
        Exec::Tx(tx).all("SELECT decision_id FROM outcomes WHERE outcome_id = $1", &[(&o.outcome_id).into()]).await?;
    if let Some((decision_id,)) = seen.into_iter().next() {
        return Ok(Recorded { decision_id, duplicate: true, ..Default::default() });
    }
    let mut decision = None;
    if !o.decision_id.is_empty() {
        decision = store.decision(&mut Exec::Tx(tx), &o.decision_id).await?;
        if decision.is_none() {
            if strict {
                return Err(Error::not_found(format!("decision_id: decision {}", o.decision_id)));
            }
            o.decision_id.clear();
        }
    }
    if decision.is_none() && !o.customer_id.is_empty() {
        let window = store.settings.attribution_window_seconds * 1000;
        let mut sql = String::from(
            "SELECT d.decision_id FROM decisions d WHERE d.customer_id = $1 AND d.decided_at <= $2 AND d.decided_at > $3",
        );
        let mut binds = vec![(&o.customer_id).into(), o.occurred_at.into(), (o.occurred_at - window).into()];
        if !o.offer_id.is_empty() {
            sql.push_str(
                " AND (d.holdout = 1 OR EXISTS (SELECT 1 FROM decision_offers x WHERE x.decision_id = d.decision_id AND x.offer_id = $4))",
            );
            binds.push((&o.offer_id).into());
        }
        sql.push_str(" ORDER BY d.decided_at DESC LIMIT 1");
        let found: Vec<(String,)> = Exec::Tx(tx).all(&sql, &binds).await?;
        if let Some((id,)) = found.into_iter().next() {
            decision = store.decision(&mut Exec::Tx(tx), &id).await?;
        }
    }
    if decision.is_none() && !strict {
        // A feed event that no decision led to (an order without a campaign): nothing to attribute.
        return Ok(Recorded::default());
    }
    if let Some(d) = &decision {
        o.decision_id = d.decision.decision_id.clone();
        if o.customer_id.is_empty() {
            o.customer_id = d.decision.customer_id.clone();
        }
        if o.offer_id.is_empty()
            && let Some(first) = d.decision.offers.first()
        {
            o.offer_id = first.offer_id.clone();
        }
    }
    let (revenue_minor, currency) =
        o.revenue.as_ref().map_or((0, String::new()), |m| (m.minor_units, m.currency.clone()));
    // A first success of this decision and offer teaches the bandit (holdouts show nothing, teach nothing).
    let mut success = None;
    if let Some(d) = &decision
        && !d.holdout
        && is_reward(o.kind, &store.settings.reward)
        && d.decision.offers.iter().any(|x| x.offer_id == o.offer_id)
    {
        let kinds: Vec<i32> = [OutcomeKind::Clicked, OutcomeKind::Converted]
            .into_iter()
            .filter(|k| is_reward(*k, &store.settings.reward))
            .map(|k| k as i32)
            .collect();
        let marks: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 3)).collect();
        let mut binds = vec![(&o.decision_id).into(), (&o.offer_id).into()];
        binds.extend(kinds.iter().map(|k| (*k).into()));
        let earlier: Vec<(i64,)> = Exec::Tx(tx)
            .all(
                &format!(
                    "SELECT COUNT(*) FROM outcomes WHERE decision_id = $1 AND offer_id = $2 AND kind IN ({})",
                    marks.join(", ")
                ),
                &binds,
            )
            .await?;
        if earlier.first().is_none_or(|(n,)| *n == 0) {
            success = Some((o.offer_id.clone(), d.segment.clone()));
        }
    }
    Exec::Tx(tx)
        .run(
            "INSERT INTO outcomes (outcome_id, decision_id, customer_id, offer_id, kind, revenue_minor, currency, \
             occurred_at, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                (&o.outcome_id).into(),
                (&o.decision_id).into(),
                (&o.customer_id).into(),
                (&o.offer_id).into(),
                (o.kind as i32).into(),
                revenue_minor.into(),
                currency.into(),
                o.occurred_at.into(),
                now_millis().into(),
            ],
        )
        .await?;
    if matches!(o.kind, OutcomeKind::Delivered | OutcomeKind::Opened | OutcomeKind::Clicked)
        && !o.decision_id.is_empty()
    {
        store.mark_sent(&mut Exec::Tx(tx), &o.decision_id).await?;
    }
    let payload = pb::OutcomeRecorded {
        decision_id: o.decision_id.clone(),
        customer_id: o.customer_id.clone(),
        offer_id: o.offer_id.clone(),
        kind: o.kind as i32,
        revenue: o.revenue.clone(),
    };
    Outbox::append(tx, &[message("decision.outcome_recorded", &o.customer_id, &payload)]).await?;
    let responded = (matches!(o.kind, OutcomeKind::Opened | OutcomeKind::Clicked | OutcomeKind::Converted)
        && !o.offer_id.is_empty()
        && !o.customer_id.is_empty())
    .then(|| (o.customer_id.clone(), o.offer_id.clone()));
    Ok(Recorded {
        decision_id: o.decision_id,
        duplicate: false,
        success,
        responded,
        kind: Some(o.kind),
        revenue: o.revenue,
    })
}

/// Applies what a committed outcome implies: the bandit's success, ignored sends cleared, metrics.
pub async fn after_commit(store: &Store, r: &Recorded) {
    if r.duplicate {
        return;
    }
    if let Some((offer, segment)) = &r.success {
        store.bandit.add(offer, segment, 0, 1);
    }
    if let Some((customer, offer)) = &r.responded {
        for p in store.catalog().policies.iter().filter(|p| p.suppress_after_ignored > 0) {
            if let Err(e) = store.cache.clear_window(&ignored_key(&p.policy_id, offer, customer)).await {
                tracing::warn!(error = %e, "ignored sends could not be reset after a response");
            }
        }
    }
    if let Some(kind) = r.kind {
        let label = kind.as_str_name().trim_start_matches("OUTCOME_KIND_").to_ascii_lowercase();
        metrics::counter!("rapport_decision_outcomes_total", "kind" => label).increment(1);
        if kind == OutcomeKind::Converted {
            metrics::counter!("rapport_conversions_total").increment(1);
            if let Some(m) = &r.revenue {
                metrics::counter!("rapport_revenue_minor_units_total", "currency" => m.currency.clone())
                    .increment(m.minor_units.max(0) as u64);
            }
        }
    }
}

/// Records one outcome in its own transaction and applies its effects.
pub async fn record(store: &Store, o: NewOutcome) -> Result<Recorded, Error> {
    let mut tx = store.db.begin().await?;
    let r = record_in(store, &mut tx, o, true).await?;
    store.outbox.commit(tx).await?;
    after_commit(store, &r).await;
    Ok(r)
}
