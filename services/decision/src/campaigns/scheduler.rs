//! Scheduled campaigns: at each cron occurrence (UTC) after the campaign started running, a run decides
//! for every member of the campaign's segment (profile.ListSegmentMembers, page by page) and sends the
//! chosen offers with SendBatch, within contact policies (each decision is admitted under them). A run is
//! claimed with a lease and keeps its cursor (the last member done), so a crash resumes where it stopped;
//! decision ids and idempotency keys derive from the run and the customer, so a resumed batch neither
//! decides nor sends twice. Occurrences missed while nothing ran are skipped but the latest.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use prost::Message;
use rapport_errors::Error;
use rapport_proto::common::v1 as common;
use rapport_proto::decision::v1::{self as pb, CampaignKind, CampaignState};
use rapport_proto::profile::v1 as profile;
use rapport_storage::sql::Exec;
use rapport_storage::{Outbox, now_millis};
use serde_json::json;

use super::Campaigns;
use super::send::{self, Sent};
use crate::decide::{self, Input};
use crate::domain::hash::fnv1a64;
use crate::domain::offers;
use crate::store::message;

/// The latest occurrence of `cron` after `from` and at or before `now` (milliseconds).
pub fn due_occurrence(cron: &croner::Cron, from: i64, now: i64) -> Option<i64> {
    let mut at = DateTime::<Utc>::from_timestamp_millis(from)?;
    let now_t = DateTime::<Utc>::from_timestamp_millis(now)?;
    let mut due = None;
    for _ in 0..10_000 {
        match cron.find_next_occurrence(&at, false) {
            Ok(next) if next <= now_t => {
                due = Some(next.timestamp_millis());
                at = next;
            }
            _ => break,
        }
    }
    due
}

fn run_decision_id(campaign_id: &str, scheduled_for: i64, customer_id: &str) -> String {
    let key = format!("{campaign_id}:{scheduled_for}:{customer_id}");
    format!("dec_r{:016x}{:016x}", fnv1a64(key.as_bytes()), fnv1a64(format!("{key}:2").as_bytes()))
}

/// Opens the runs that are due and works on the runs this worker can claim.
pub async fn tick(campaigns: &Campaigns, owner: &str) -> Result<(), Error> {
    let store = &campaigns.store;
    let now = now_millis();
    let rows: Vec<(String, i64, Vec<u8>)> = Exec::Db(&store.db)
        .all(
            "SELECT campaign_id, running_since, body FROM campaigns WHERE state = $1",
            &[(CampaignState::Running as i32).into()],
        )
        .await?;
    for (campaign_id, since, body) in rows {
        let c = pb::Campaign::decode(body.as_slice()).map_err(|e| Error::internal(format!("stored campaign: {e}")))?;
        if c.kind != CampaignKind::Scheduled as i32 {
            continue;
        }
        let Ok(cron) = croner::Cron::from_str(c.schedule.trim()) else { continue };
        let last: Vec<(Option<i64>,)> = Exec::Db(&store.db)
            .all("SELECT MAX(scheduled_for) FROM campaign_runs WHERE campaign_id = $1", &[(&campaign_id).into()])
            .await?;
        let from = last.first().and_then(|(m,)| *m).unwrap_or(0).max(since);
        if let Some(due) = due_occurrence(&cron, from, now) {
            Exec::Db(&store.db)
                .run(
                    "INSERT INTO campaign_runs (campaign_id, scheduled_for, state) VALUES ($1, $2, 'running') \
                     ON CONFLICT (campaign_id, scheduled_for) DO NOTHING",
                    &[(&campaign_id).into(), due.into()],
                )
                .await?;
        }
    }
    let token = format!("{owner}:{}", uuid::Uuid::now_v7().simple());
    let lease = now + store.settings.timer_lease_seconds * 1000;
    Exec::Db(&store.db)
        .run(
            "UPDATE campaign_runs SET lease_owner = $1, lease_until = $2 WHERE state = 'running' AND lease_until < $3",
            &[token.clone().into(), lease.into(), now.into()],
        )
        .await?;
    let claimed: Vec<(String, i64, String)> = Exec::Db(&store.db)
        .all(
            "SELECT campaign_id, scheduled_for, cursor FROM campaign_runs WHERE lease_owner = $1 AND state = 'running'",
            &[token.clone().into()],
        )
        .await?;
    for (campaign_id, scheduled_for, cursor) in claimed {
        if let Err(e) = work(campaigns, &campaign_id, scheduled_for, cursor, &token).await {
            tracing::warn!(campaign = %campaign_id, error = %e, "scheduled run interrupted; it resumes after its lease");
        }
    }
    Ok(())
}

async fn work(
    campaigns: &Campaigns,
    campaign_id: &str,
    scheduled_for: i64,
    mut cursor: String,
    token: &str,
) -> Result<(), Error> {
    let store = &campaigns.store;
    let campaign = campaigns.get(campaign_id).await?;
    let placement = offers::placement("placement", campaign.placement)?;
    let channel = offers::channel("channel", campaign.channel)?;
    let batch = store.settings.schedule_batch as i32;
    loop {
        if campaigns.get(campaign_id).await?.state != CampaignState::Running as i32 {
            return Ok(());
        }
        let page = store
            .clients
            .profile()
            .map_err(|s| Error::unavailable(s.message()))?
            .list_segment_members(profile::ListSegmentMembersRequest {
                segment_id: campaign.segment_id.clone(),
                page: Some(common::PageRequest { page_size: batch, page_token: cursor.clone() }),
            })
            .await
            .map_err(|s| Error::unavailable(format!("profile.ListSegmentMembers: {}", s.message())))?
            .into_inner();
        let mut requests = Vec::new();
        let mut decided = 0i64;
        for customer_id in &page.customer_ids {
            let decision_id = run_decision_id(campaign_id, scheduled_for, customer_id);
            let existing = store.decision(&mut Exec::Db(&store.db), &decision_id).await?;
            let offer = match existing {
                Some(d) if d.holdout => None,
                Some(d) => match d.decision.offers.first() {
                    Some(o) => Some(store.offer(&o.offer_id).await?),
                    None => None,
                },
                None => {
                    let scope = campaigns.scope_of(campaign_id, customer_id).await?;
                    let input = Input {
                        customer_id: customer_id.clone(),
                        placement,
                        channel,
                        context: json!({"campaign_id": campaign_id}),
                        limit: 1,
                        dry_run: false,
                        scope,
                        decision_id: Some(decision_id.clone()),
                    };
                    decided += 1;
                    decide::decide(store, input)
                        .await
                        .map_err(|s| Error::unavailable(s.message()))?
                        .chosen
                        .into_iter()
                        .next()
                }
            };
            if let Some(offer) = offer {
                let key = format!("run:{campaign_id}:{scheduled_for}:{customer_id}");
                requests.push((
                    customer_id.clone(),
                    decision_id.clone(),
                    send::request(customer_id, channel as i32, &decision_id, campaign_id, &offer, &key),
                ));
            }
        }
        let answers = if requests.is_empty() {
            vec![]
        } else {
            send::send_batch(&store.clients, requests.iter().map(|(_, _, r)| r.clone()).collect()).await
        };
        if answers.iter().any(|a| matches!(a, Sent::Retry(_))) {
            return Err(Error::unavailable("delivery asked to retry part of a batch"));
        }
        let mut tx = store.db.begin().await?;
        let mut fired = Vec::new();
        for ((customer_id, decision_id, _), answer) in requests.iter().zip(&answers) {
            match answer {
                Sent::Queued(message_id) => fired.push(message(
                    "decision.campaign_fired",
                    customer_id,
                    &pb::CampaignFired {
                        campaign_id: campaign_id.to_string(),
                        customer_id: customer_id.clone(),
                        decision_id: decision_id.clone(),
                        delivery_message_id: message_id.clone(),
                    },
                )),
                Sent::Refused(why) => {
                    tracing::info!(campaign = %campaign_id, %decision_id, reason = %why, "delivery refused a scheduled send")
                }
                Sent::Retry(_) => {}
            }
        }
        let sent = fired.len() as i64;
        Outbox::append(&mut tx, &fired).await?;
        cursor = page.customer_ids.last().cloned().unwrap_or(cursor);
        let done = page.page.as_ref().is_none_or(|p| p.next_page_token.is_empty());
        Exec::Tx(&mut tx)
            .run(
                "UPDATE campaign_runs SET cursor = $1, decided = decided + $2, sent = sent + $3, state = $4 \
                 WHERE campaign_id = $5 AND scheduled_for = $6 AND lease_owner = $7",
                &[
                    cursor.clone().into(),
                    decided.into(),
                    sent.into(),
                    (if done { "done" } else { "running" }).into(),
                    campaign_id.into(),
                    scheduled_for.into(),
                    token.into(),
                ],
            )
            .await?;
        store.outbox.commit(tx).await?;
        metrics::counter!("rapport_campaign_sends_total", "kind" => "scheduled").increment(sent as u64);
        if done {
            return Ok(());
        }
    }
}

/// The runs of a campaign: (scheduled_for, state, decided, sent).
pub async fn runs(store: &crate::store::Store, campaign_id: &str) -> Result<Vec<(i64, String, i64, i64)>, Error> {
    Exec::Db(&store.db)
        .all(
            "SELECT scheduled_for, state, decided, sent FROM campaign_runs WHERE campaign_id = $1 ORDER BY scheduled_for",
            &[campaign_id.into()],
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_missed_occurrence_is_due() {
        let cron = croner::Cron::from_str("0 9 * * *").unwrap();
        let day = 86_400_000;
        let t0 = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().timestamp_millis();
        assert_eq!(due_occurrence(&cron, t0, t0 + 1000), None);
        let three_days = due_occurrence(&cron, t0, t0 + 3 * day).unwrap();
        assert_eq!(three_days, DateTime::parse_from_rfc3339("2026-03-04T09:00:00Z").unwrap().timestamp_millis());
        assert_ne!(run_decision_id("c", 1, "a"), run_decision_id("c", 2, "a"));
    }
}
