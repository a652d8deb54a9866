//! Durable timers of triggered campaigns. A worker claims due timers with a lease (a conditional update,
//! so two workers never hold one timer at once), re-checks the campaign's condition, decides and asks
//! delivery to send. A timer fires once: its decision id derives from the timer and its due time, its send
//! uses the timer id as idempotency key, so a worker that crashed between the decision and marking the
//! timer done is completed by the next worker after the lease, without a second decision or message.

use prost::Message;
use rapport_errors::{Error, ErrorCode};
use rapport_proto::decision::v1::{self as pb, CampaignState};
use rapport_proto::profile::v1 as profile;
use rapport_rules::Bindings;
use rapport_storage::sql::Exec;
use rapport_storage::{Outbox, Tx, now_millis};
use serde_json::{Value, json};

use super::Campaigns;
use super::send::{self, Sent};
use crate::decide::{self, Input, fetch_profile};
use crate::domain::document::{empty_profile, event_document, profile_document};
use crate::domain::offers;
use crate::store::message;

/// Sends are retried this many times before a timer fails.
const MAX_ATTEMPTS: i64 = 10;

struct Claimed {
    timer_id: String,
    campaign_id: String,
    customer_id: String,
    due_at: i64,
    event: profile::Event,
    attempts: i64,
}

/// How a timer ended (or that it waits again).
enum Fate {
    Finished { state: &'static str, detail: String, decision_id: String, message_id: String },
    Later { due_at: i64, detail: String },
}

fn finished(state: &'static str, detail: impl Into<String>, decision_id: &str) -> Fate {
    Fate::Finished { state, detail: detail.into(), decision_id: decision_id.to_string(), message_id: String::new() }
}

/// Claims and fires the timers that are due; returns how many were handled.
pub async fn run_due(campaigns: &Campaigns, owner: &str) -> Result<usize, Error> {
    let store = &campaigns.store;
    let now = now_millis();
    let token = format!("{owner}:{}", uuid::Uuid::now_v7().simple());
    let lease = now + store.settings.timer_lease_seconds * 1000;
    Exec::Db(&store.db)
        .run(
            "UPDATE campaign_timers SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE state = 'pending' AND due_at <= $3 AND lease_until < $3 AND timer_id IN \
             (SELECT timer_id FROM campaign_timers WHERE state = 'pending' AND due_at <= $3 AND lease_until < $3 \
              ORDER BY due_at LIMIT 50)",
            &[token.clone().into(), lease.into(), now.into()],
        )
        .await?;
    let rows: Vec<(String, String, String, i64, Vec<u8>, i64)> = Exec::Db(&store.db)
        .all(
            "SELECT timer_id, campaign_id, customer_id, due_at, trigger_event, attempts FROM campaign_timers \
             WHERE lease_owner = $1 AND state = 'pending' ORDER BY due_at",
            &[token.clone().into()],
        )
        .await?;
    let n = rows.len();
    for (timer_id, campaign_id, customer_id, due_at, event, attempts) in rows {
        let event = profile::Event::decode(event.as_slice()).unwrap_or_default();
        let timer = Claimed { timer_id, campaign_id, customer_id, due_at, event, attempts };
        let fate = match fire(campaigns, &timer).await {
            Ok(f) => f,
            Err(e) if e.code() == ErrorCode::Unavailable => {
                Fate::Later { due_at: now_millis() + 5_000, detail: format!("retrying: {e}") }
            }
            Err(e) => finished("failed", e.to_string(), ""),
        };
        settle(campaigns, &timer, &token, fate).await?;
    }
    Ok(n)
}

async fn settle(campaigns: &Campaigns, t: &Claimed, token: &str, fate: Fate) -> Result<(), Error> {
    let store = &campaigns.store;
    let mut tx: Tx = store.db.begin().await?;
    match fate {
        Fate::Later { due_at, detail } => {
            Exec::Tx(&mut tx)
                .run(
                    "UPDATE campaign_timers SET due_at = $1, lease_owner = '', lease_until = 0, detail = $2 \
                     WHERE timer_id = $3 AND lease_owner = $4",
                    &[due_at.into(), detail.into(), (&t.timer_id).into(), token.into()],
                )
                .await?;
        }
        Fate::Finished { state, detail, decision_id, message_id } => {
            let changed = Exec::Tx(&mut tx)
                .run(
                    "UPDATE campaign_timers SET state = $1, detail = $2, decision_id = $3, message_id = $4, fired_at = $5, \
                     lease_owner = '' WHERE timer_id = $6 AND lease_owner = $7 AND state = 'pending'",
                    &[state.into(), detail.into(), (&decision_id).into(), (&message_id).into(), now_millis().into(),
                      (&t.timer_id).into(), token.into()],
                )
                .await?;
            if changed > 0 && !message_id.is_empty() {
                let fired = pb::CampaignFired {
                    campaign_id: t.campaign_id.clone(),
                    customer_id: t.customer_id.clone(),
                    decision_id,
                    delivery_message_id: message_id,
                };
                Outbox::append(&mut tx, &[message("decision.campaign_fired", &t.customer_id, &fired)]).await?;
                metrics::counter!("rapport_campaign_sends_total", "kind" => "triggered").increment(1);
            }
        }
    }
    store.outbox.commit(tx).await?;
    Ok(())
}

/// The decision id of a timer's firing at `due_at`: the same on every retry of that firing.
fn decision_id_of(timer_id: &str, due_at: i64) -> String {
    format!("dec_{}_{due_at:x}", timer_id.trim_start_matches("tmr_"))
}

async fn fire(campaigns: &Campaigns, t: &Claimed) -> Result<Fate, Error> {
    let store = &campaigns.store;
    let campaign = match campaigns.get(&t.campaign_id).await {
        Ok(c) => c,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(finished("skipped", "the campaign is gone", "")),
        Err(e) => return Err(e),
    };
    match CampaignState::try_from(campaign.state) {
        Ok(CampaignState::Running) => {}
        Ok(CampaignState::Paused) => {
            return Ok(Fate::Later { due_at: now_millis() + 60_000, detail: "the campaign is paused".into() });
        }
        _ => return Ok(finished("skipped", "the campaign is not running", "")),
    }
    let decision_id = decision_id_of(&t.timer_id, t.due_at);
    // A firing that decided before a crash is finished with its own decision.
    let existing = store.decision(&mut Exec::Db(&store.db), &decision_id).await?;
    let (offer, holdout) = match existing {
        Some(d) => match d.decision.offers.first() {
            Some(first) => (Some(store.offer(&first.offer_id).await?), d.holdout),
            None => (None, d.holdout),
        },
        None => {
            let now = now_millis();
            if let Some(rule) = super::compile("recheck_rule", &campaign.recheck_rule)? {
                let p = fetch_profile(store, &t.customer_id).await.map_err(|s| Error::unavailable(s.message()))?;
                let doc = p.as_ref().map_or_else(|| empty_profile(&t.customer_id), |p| profile_document(p, now));
                let event = event_document(&t.event, &t.customer_id);
                let now_value = json!(now);
                let bindings = Bindings::new(&[("profile", &doc), ("event", &event), ("now", &now_value)])
                    .map_err(|e| Error::internal(format!("recheck bindings: {e}")))?;
                match rule.matches_in(&bindings) {
                    Ok(true) => {}
                    Ok(false) => return Ok(finished("skipped", "recheck_rule is false", "")),
                    Err(e) => return Ok(finished("skipped", format!("recheck_rule: {e}"), "")),
                }
            }
            let scope = campaigns.scope_of(&campaign.campaign_id, &t.customer_id).await?;
            let placement = offers::placement("placement", campaign.placement)?;
            let input = Input {
                customer_id: t.customer_id.clone(),
                placement,
                channel: offers::channel("channel", campaign.channel)?,
                context: json!({"campaign_id": campaign.campaign_id, "trigger": t.event.name}),
                limit: 1,
                dry_run: false,
                scope,
                decision_id: Some(decision_id.clone()),
            };
            let outcome = decide::decide(store, input).await.map_err(|s| Error::unavailable(s.message()))?;
            if outcome.response.holdout {
                return Ok(finished("done", "held out", &decision_id));
            }
            if outcome.chosen.is_empty() {
                if let Some(until) = outcome.quiet_until {
                    // Decided nothing because of quiet hours: the next firing decides anew at their end.
                    return Ok(Fate::Later { due_at: until, detail: "quiet hours".into() });
                }
                let why: Vec<String> =
                    outcome.response.excluded.iter().map(|e| format!("{}: {}", e.offer_id, e.detail)).collect();
                return Ok(finished("done", format!("no offer: {}", why.join("; ")), &decision_id));
            }
            (outcome.chosen.into_iter().next(), false)
        }
    };
    if holdout {
        return Ok(finished("done", "held out", &decision_id));
    }
    let Some(offer) = offer else { return Ok(finished("done", "no offer", &decision_id)) };
    let request =
        send::request(&t.customer_id, campaign.channel, &decision_id, &campaign.campaign_id, &offer, &t.timer_id);
    Ok(match send::send_one(&store.clients, request).await {
        Sent::Queued(message_id) => Fate::Finished { state: "done", detail: "sent".into(), decision_id, message_id },
        Sent::Refused(why) => finished("failed", format!("delivery refused: {why}"), &decision_id),
        Sent::Retry(why) if t.attempts >= MAX_ATTEMPTS => finished("failed", format!("delivery: {why}"), &decision_id),
        Sent::Retry(why) => Fate::Later { due_at: now_millis() + 1000 * (1 << t.attempts.min(8)), detail: why },
    })
}

/// A customer's timers, for data-subject exports.
pub async fn export(store: &crate::store::Store, customer_id: &str) -> Result<Vec<Value>, Error> {
    let rows: Vec<(String, String, i64, String, String)> = Exec::Db(&store.db)
        .all(
            "SELECT campaign_id, state, due_at, detail, decision_id FROM campaign_timers WHERE customer_id = $1 ORDER BY due_at",
            &[customer_id.into()],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(c, s, due, d, dec)| json!({"campaign_id": c, "state": s, "due_at": due, "detail": d, "decision_id": dec}),
        )
        .collect())
}

/// Removes a customer's timers inside an erasure.
pub async fn erase_in(tx: &mut Tx, customer_id: &str) -> Result<i64, Error> {
    Ok(Exec::Tx(tx).run("DELETE FROM campaign_timers WHERE customer_id = $1", &[customer_id.into()]).await? as i64)
}

/// The state of a customer's timers of a campaign, oldest first (for tests and operators).
pub async fn of(store: &crate::store::Store, campaign_id: &str) -> Result<Vec<(String, String, String)>, Error> {
    Exec::Db(&store.db)
        .all(
            "SELECT customer_id, state, detail FROM campaign_timers WHERE campaign_id = $1 ORDER BY created_at",
            &[campaign_id.into()],
        )
        .await
}
