//! Triggers: a profile event (or a consent grant, seen as the event `consent_granted`) that matches a
//! running triggered campaign's event names and trigger rule starts a durable timer for the customer. A
//! newer trigger of the same campaign and customer moves the pending timer (an abandoned cart updated
//! again waits from its last update).

use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
use rapport_errors::Error;
use rapport_proto::profile::v1 as profile;
use rapport_rpc::convert::millis;
use rapport_rules::Bindings;
use rapport_storage::sql::Exec;
use rapport_storage::{Tx, now_millis};
use serde_json::json;

use super::Campaigns;
use crate::decide::fetch_profile;
use crate::domain::document::{empty_profile, event_document, profile_document};
use crate::feeds::EventHook;

/// The name under which consent grants trigger campaigns.
pub const CONSENT_GRANTED: &str = "consent_granted";

/// Starts or moves the timers `event` of `customer_id` triggers.
pub async fn on_event(
    campaigns: &Campaigns,
    tx: &mut Tx,
    customer_id: &str,
    event: &profile::Event,
) -> Result<(), Error> {
    let live = campaigns.triggered();
    let matching: Vec<_> = live.iter().filter(|c| c.campaign.trigger_events.contains(&event.name)).collect();
    if matching.is_empty() || customer_id.is_empty() {
        return Ok(());
    }
    let now = now_millis();
    let event_doc = event_document(event, customer_id);
    let mut profile_doc = None;
    for c in matching {
        if let Some(rule) = &c.trigger {
            if profile_doc.is_none() {
                let p =
                    fetch_profile(&campaigns.store, customer_id).await.map_err(|s| Error::unavailable(s.message()))?;
                profile_doc = Some(p.as_ref().map_or_else(|| empty_profile(customer_id), |p| profile_document(p, now)));
            }
            let doc = profile_doc.as_ref().map_or(serde_json::Value::Null, Clone::clone);
            let now_value = json!(now);
            let bindings = Bindings::new(&[("profile", &doc), ("event", &event_doc), ("now", &now_value)])
                .map_err(|e| Error::internal(format!("trigger bindings: {e}")))?;
            match rule.matches_in(&bindings) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!(campaign = %c.campaign.campaign_id, error = %e, "trigger rule failed for an event");
                    continue;
                }
            }
        }
        let occurred = event.occurred_at.as_ref().and_then(millis).unwrap_or(now);
        let due = occurred + c.campaign.wait_seconds * 1000;
        Exec::Tx(tx)
            .run(
                "INSERT INTO campaign_timers (timer_id, campaign_id, customer_id, state, due_at, trigger_event, created_at) \
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6) \
                 ON CONFLICT (campaign_id, customer_id) WHERE state = 'pending' \
                 DO UPDATE SET due_at = excluded.due_at, trigger_event = excluded.trigger_event",
                &[
                    format!("tmr_{}", uuid::Uuid::now_v7().simple()).into(),
                    (&c.campaign.campaign_id).into(),
                    customer_id.into(),
                    due.into(),
                    event.encode_to_vec().into(),
                    now.into(),
                ],
            )
            .await?;
    }
    Ok(())
}

/// The hook the feeds call for every event.
pub fn hook(campaigns: Arc<Campaigns>) -> EventHook {
    Arc::new(move |tx: &mut Tx, customer_id: &str, event: &profile::Event| -> BoxFuture<'_, Result<(), Error>> {
        let campaigns = campaigns.clone();
        let customer_id = customer_id.to_string();
        let event = event.clone();
        Box::pin(async move { on_event(&campaigns, tx, &customer_id, &event).await })
    })
}
