//! Data-subject requests: what decision holds about a person (decisions, outcomes, campaign timers) and
//! its erasure. Erasure anonymises the person's rows rather than deleting them, so that reports keep their
//! counts without the person; timers waiting for the person are removed.

use rapport_errors::Error;
use rapport_proto::common::v1::Channel;
use rapport_proto::decision::v1::{OutcomeKind, PlacementKind};
use rapport_storage::sql::Exec;
use rapport_storage::{Audit, Tx};
use serde_json::{Value, json};

use crate::store::Store;

/// The customer id erased rows are kept under.
pub const ERASED: &str = "erased";

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default()
}

fn enum_name(name: Option<&str>, prefix: &str) -> String {
    name.map(|n| n.trim_start_matches(prefix).to_ascii_lowercase()).unwrap_or_default()
}

/// Everything decision holds about `customer_id`, as JSON lists keyed by kind; `None` when nothing.
pub async fn export(store: &Store, customer_id: &str) -> Result<Option<Value>, Error> {
    let mut decisions = Vec::new();
    let mut before = None;
    loop {
        let page = store.decisions_of(customer_id, before.clone(), 500).await?;
        let done = page.len() < 500;
        for d in page {
            let at = d.decided_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_default();
            before = Some((at, d.decision_id.clone()));
            decisions.push(json!({
                "decision_id": d.decision_id,
                "decided_at": iso(at),
                "placement": enum_name(PlacementKind::try_from(d.placement).ok().map(|p| p.as_str_name()), "PLACEMENT_KIND_"),
                "channel": enum_name(Channel::try_from(d.channel).ok().map(|c| c.as_str_name()), "CHANNEL_"),
                "campaign_id": d.campaign_id,
                "offers": d.offers.iter().map(|o| json!({"offer_id": o.offer_id, "name": o.name, "score": o.score,
                    "choice_probability": o.choice_probability})).collect::<Vec<_>>(),
            }));
        }
        if done {
            break;
        }
    }
    let rows: Vec<(String, String, String, i64, i64, String, i64)> = Exec::Db(&store.db)
        .all(
            "SELECT outcome_id, decision_id, offer_id, kind, revenue_minor, currency, occurred_at FROM outcomes \
             WHERE customer_id = $1 ORDER BY occurred_at",
            &[customer_id.into()],
        )
        .await?;
    let outcomes: Vec<Value> = rows
        .into_iter()
        .map(|(id, decision, offer, kind, revenue, currency, at)| {
            json!({"outcome_id": id, "decision_id": decision, "offer_id": offer,
                "kind": enum_name(OutcomeKind::try_from(kind as i32).ok().map(|k| k.as_str_name()), "OUTCOME_KIND_"),
                "revenue_minor": revenue, "currency": currency, "occurred_at": iso(at)})
        })
        .collect();
    let timers = crate::campaigns::timers::export(store, customer_id).await?;
    if decisions.is_empty() && outcomes.is_empty() && timers.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({"decisions": decisions, "outcomes": outcomes, "campaign_timers": timers})))
}

/// Anonymises `customer_id`'s decisions and outcomes and removes its timers, audited with `reason`.
pub async fn erase(store: &Store, customer_id: &str, principal: &str, reason: &str) -> Result<i64, Error> {
    let mut tx: Tx = store.db.begin().await?;
    let mut n = 0;
    for sql in [
        "UPDATE decisions SET customer_id = $2 WHERE customer_id = $1",
        "UPDATE outcomes SET customer_id = $2 WHERE customer_id = $1",
    ] {
        n += Exec::Tx(&mut tx).run(sql, &[customer_id.into(), ERASED.into()]).await? as i64;
    }
    n += crate::campaigns::timers::erase_in(&mut tx, customer_id).await?;
    Audit::record_in(&mut tx, principal, "customer.erase", customer_id, &format!("decision log anonymised; {reason}"))
        .await?;
    tx.commit().await?;
    Ok(n)
}
