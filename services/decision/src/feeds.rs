//! The feeds decision consumes, each applied exactly once with its cursor in decision's own database:
//! delivery's (message status and engagement: outcomes of the decisions that sent them) and profile's
//! (orders: conversions; every event: campaign triggers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use prost::Message;
use rapport_errors::Error;
use rapport_proto::common::v1::{self as common, OutboxRecord};
use rapport_proto::decision::v1::OutcomeKind;
use rapport_proto::delivery::v1::{self as delivery, EngagementKind, MessageStatus};
use rapport_proto::profile::v1 as profile;
use rapport_rpc::convert::{millis, struct_to_json};
use rapport_rpc::feed::FeedHandler;
use rapport_storage::sql::Exec;
use rapport_storage::{Tx, now_millis};

use crate::outcomes::{self, NewOutcome, Recorded};
use crate::store::Store;

/// The cursor name of delivery's feed.
pub const DELIVERY_CONSUMER: &str = "decision.delivery";
/// The cursor name of profile's feed.
pub const PROFILE_CONSUMER: &str = "decision.profile";

fn decode<M: Message + Default>(record: &OutboxRecord) -> Result<M, Error> {
    let any = record.payload.as_ref().ok_or_else(|| Error::internal("feed record without payload"))?;
    M::decode(any.value.as_slice()).map_err(|e| Error::internal(format!("feed record {}: {e}", record.sequence)))
}

/// Effects of applied records, kept until their transaction commits.
#[derive(Default)]
struct Pending(Mutex<HashMap<i64, Vec<Recorded>>>);

impl Pending {
    fn put(&self, sequence: i64, r: Vec<Recorded>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(sequence, r);
    }
    fn take(&self, sequence: i64) -> Vec<Recorded> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&sequence).unwrap_or_default()
    }

    /// Applies the effects of the record at `sequence`, whose transaction committed.
    async fn apply(&self, store: &Store, sequence: i64) {
        for r in self.take(sequence) {
            outcomes::after_commit(store, &r).await;
        }
        store.outbox_committed();
    }
}

/// Outcomes from delivery.
pub struct DeliveryFeed {
    pub store: Arc<Store>,
    pending: Pending,
}

impl DeliveryFeed {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, pending: Pending::default() }
    }

    /// The topics consumed.
    pub fn topics() -> Vec<String> {
        vec!["delivery.status_changed".into(), "delivery.engagement".into()]
    }
}

fn outcome_of_status(s: MessageStatus) -> Option<OutcomeKind> {
    match s {
        MessageStatus::Delivered => Some(OutcomeKind::Delivered),
        MessageStatus::Opened => Some(OutcomeKind::Opened),
        MessageStatus::Clicked => Some(OutcomeKind::Clicked),
        MessageStatus::Bounced => Some(OutcomeKind::Bounced),
        _ => None,
    }
}

fn outcome_of_engagement(k: EngagementKind) -> Option<OutcomeKind> {
    match k {
        EngagementKind::Opened => Some(OutcomeKind::Opened),
        EngagementKind::Clicked => Some(OutcomeKind::Clicked),
        EngagementKind::HardBounce | EngagementKind::SoftBounce => Some(OutcomeKind::Bounced),
        EngagementKind::Complaint | EngagementKind::Unsubscribed => Some(OutcomeKind::Unsubscribed),
        EngagementKind::Unspecified => None,
    }
}

/// The outcome of a message event: one per message and kind (a status change and the engagement event
/// reporting the same open are one outcome).
fn message_outcome(
    message_id: &str,
    decision_id: &str,
    customer_id: &str,
    offer_id: &str,
    kind: OutcomeKind,
    at: i64,
) -> NewOutcome {
    NewOutcome {
        outcome_id: format!("delivery:{message_id}:{}", kind.as_str_name()),
        decision_id: decision_id.to_string(),
        customer_id: customer_id.to_string(),
        offer_id: offer_id.to_string(),
        kind,
        revenue: None,
        occurred_at: at,
    }
}

impl FeedHandler for DeliveryFeed {
    fn apply<'a>(&'a self, tx: &'a mut Tx, record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let at = record.created_at.as_ref().and_then(millis).unwrap_or_else(now_millis);
            let outcome = match record.topic.as_str() {
                "delivery.status_changed" => {
                    let m: delivery::MessageStatusChanged = decode(record)?;
                    let status = MessageStatus::try_from(m.status).unwrap_or(MessageStatus::Unspecified);
                    if m.decision_id.is_empty() {
                        return Ok(());
                    }
                    if status == MessageStatus::Sent {
                        self.store.mark_sent(&mut Exec::Tx(tx), &m.decision_id).await?;
                    }
                    outcome_of_status(status)
                        .map(|k| message_outcome(&m.message_id, &m.decision_id, &m.customer_id, &m.offer_id, k, at))
                }
                "delivery.engagement" => {
                    let e: delivery::Engagement = decode(record)?;
                    if e.decision_id.is_empty() {
                        return Ok(());
                    }
                    let at = e.at.as_ref().and_then(millis).unwrap_or(at);
                    outcome_of_engagement(EngagementKind::try_from(e.kind).unwrap_or(EngagementKind::Unspecified))
                        .map(|k| message_outcome(&e.message_id, &e.decision_id, &e.customer_id, &e.offer_id, k, at))
                }
                _ => None,
            };
            if let Some(o) = outcome {
                let r = outcomes::record_in(&self.store, tx, o, false).await?;
                self.pending.put(record.sequence, vec![r]);
            }
            Ok(())
        })
    }

    fn committed<'a>(&'a self, record: &'a OutboxRecord) -> BoxFuture<'a, ()> {
        Box::pin(self.pending.apply(&self.store, record.sequence))
    }
}

/// The revenue of an order event (`revenue_minor` and `currency` properties).
pub fn order_revenue(e: &profile::Event) -> Option<common::Money> {
    let props = e.properties.as_ref().map(struct_to_json)?;
    let minor = props.get("revenue_minor").and_then(serde_json::Value::as_i64)?;
    let currency = props.get("currency").and_then(serde_json::Value::as_str).unwrap_or_default().to_ascii_uppercase();
    Some(common::Money { currency, minor_units: minor })
}

/// What a profile event means to decision beyond conversions (campaign triggers); set by the campaigns.
pub type EventHook =
    Arc<dyn for<'a> Fn(&'a mut Tx, &'a str, &'a profile::Event) -> BoxFuture<'a, Result<(), Error>> + Send + Sync>;

/// Conversions (and campaign triggers) from profile.
pub struct ProfileFeed {
    pub store: Arc<Store>,
    pub on_event: Option<EventHook>,
    pending: Pending,
}

impl ProfileFeed {
    pub fn new(store: Arc<Store>, on_event: Option<EventHook>) -> Self {
        Self { store, on_event, pending: Pending::default() }
    }

    /// The topics consumed.
    pub fn topics() -> Vec<String> {
        vec!["profile.events_appended".into()]
    }
}

impl FeedHandler for ProfileFeed {
    fn apply<'a>(&'a self, tx: &'a mut Tx, record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if record.topic != "profile.events_appended" {
                return Ok(());
            }
            let appended: profile::EventsAppended = decode(record)?;
            let mut recorded = Vec::new();
            for e in &appended.events {
                if e.name == "order_completed" {
                    let context = e.context.clone().unwrap_or_default();
                    let o = NewOutcome {
                        outcome_id: format!("order:{}", e.message_id),
                        decision_id: context.decision_id.clone(),
                        customer_id: appended.customer_id.clone(),
                        offer_id: context.offer_id.clone(),
                        kind: OutcomeKind::Converted,
                        revenue: order_revenue(e),
                        occurred_at: e.occurred_at.as_ref().and_then(millis).unwrap_or_else(now_millis),
                    };
                    recorded.push(outcomes::record_in(&self.store, tx, o, false).await?);
                }
                if let Some(hook) = &self.on_event {
                    hook(tx, &appended.customer_id, e).await?;
                }
            }
            self.pending.put(record.sequence, recorded);
            Ok(())
        })
    }

    fn committed<'a>(&'a self, record: &'a OutboxRecord) -> BoxFuture<'a, ()> {
        Box::pin(self.pending.apply(&self.store, record.sequence))
    }
}

/// The cursor name of consent's feed.
pub const CONSENT_CONSUMER: &str = "decision.consent";

/// Consent grants as trigger events (`consent_granted`, properties channel and purpose), for campaigns
/// such as the welcome after opt-in.
pub struct ConsentFeed {
    pub store: Arc<Store>,
    pub on_event: EventHook,
}

impl ConsentFeed {
    /// The topics consumed.
    pub fn topics() -> Vec<String> {
        vec!["consent.recorded".into()]
    }
}

impl FeedHandler for ConsentFeed {
    fn apply<'a>(&'a self, tx: &'a mut Tx, record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if record.topic != "consent.recorded" {
                return Ok(());
            }
            let r: rapport_proto::consent::v1::ConsentRecorded = decode(record)?;
            let Some(entry) = r.entry else { return Ok(()) };
            let granted = entry.status == rapport_proto::consent::v1::ConsentStatus::Granted as i32;
            if !(r.changed_state && r.allowed && granted) || entry.customer_id.is_empty() {
                return Ok(());
            }
            let channel = common::Channel::try_from(entry.channel)
                .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase())
                .unwrap_or_default();
            let purpose = entry.purpose.as_ref().map(|p| p.name.clone()).unwrap_or_default();
            let event = profile::Event {
                message_id: format!("consent:{}", entry.entry_id),
                name: crate::campaigns::triggers::CONSENT_GRANTED.into(),
                occurred_at: entry.occurred_at,
                properties: Some(rapport_rpc::convert::json_to_struct(
                    serde_json::json!({"channel": channel, "purpose": purpose}),
                )),
                customer_id: entry.customer_id.clone(),
                ..Default::default()
            };
            (self.on_event)(tx, &entry.customer_id, &event).await
        })
    }

    fn committed<'a>(&'a self, _record: &'a OutboxRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.store.outbox_committed() })
    }
}
