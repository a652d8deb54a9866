//! The timeline follows delivery: what a customer did with a message (opened, clicked, bounced,
//! complained, unsubscribed) and what a call-centre agent recorded become events on the customer's
//! timeline, carrying the decision, offer and campaign, so the next conversation starts where this one
//! stopped. Each event's message id derives from the engagement, so a replayed record stores nothing new.

use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
use rapport_errors::Error;
use rapport_proto::common::v1::{Channel, OutboxRecord};
use rapport_proto::delivery::v1::{Engagement, EngagementKind, TaskCompleted};
use rapport_rpc::feed::FeedHandler;
use rapport_storage::{Tx, now_millis};
use serde_json::{Map, Value, json};

use crate::store::{NewEvent, Store};

/// The consumer's name, under which its cursor is stored.
pub const CONSUMER: &str = "profile<-delivery";

/// The delivery topics put on the timeline.
pub fn topics() -> Vec<String> {
    ["delivery.engagement", "delivery.task_completed"].map(String::from).to_vec()
}

/// Appends delivery's engagement to the timeline.
pub struct FollowDelivery {
    pub store: Store,
    /// Called with the customer whose profile changed (cache invalidation).
    pub on_change: Arc<dyn Fn(Vec<String>) -> BoxFuture<'static, ()> + Send + Sync>,
}

fn context(channel: i32, ids: &[(&str, &str)]) -> Value {
    let mut m = Map::new();
    if let Ok(c) = Channel::try_from(channel)
        && c != Channel::Unspecified
    {
        m.insert("channel".into(), json!(c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase()));
    }
    m.insert("source".into(), json!("delivery"));
    for (k, v) in ids {
        if !v.is_empty() {
            m.insert(k.to_string(), json!(v));
        }
    }
    Value::Object(m)
}

/// The timeline event of a record, with the customer it belongs to.
fn event_of(record: &OutboxRecord) -> Result<Option<(String, NewEvent)>, Error> {
    let payload = record.payload.as_ref().ok_or_else(|| Error::internal("delivery record without payload"))?;
    let bad = |e: prost::DecodeError| Error::internal(format!("delivery record {}: {e}", record.sequence));
    let at = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_else(now_millis)
    };
    match record.topic.as_str() {
        "delivery.engagement" => {
            let e = Engagement::decode(payload.value.as_slice()).map_err(bad)?;
            let name = match EngagementKind::try_from(e.kind).unwrap_or_default() {
                EngagementKind::Opened => "message_opened",
                EngagementKind::Clicked => "message_clicked",
                EngagementKind::HardBounce | EngagementKind::SoftBounce => "message_bounced",
                EngagementKind::Complaint => "message_complained",
                EngagementKind::Unsubscribed => "message_unsubscribed",
                EngagementKind::Unspecified => return Ok(None),
            };
            if e.customer_id.is_empty() {
                return Ok(None);
            }
            let mut properties = Map::new();
            if !e.url.is_empty() {
                properties.insert("url".into(), json!(e.url));
            }
            if e.kind == EngagementKind::SoftBounce as i32 || e.kind == EngagementKind::HardBounce as i32 {
                properties.insert("hard".into(), json!(e.kind == EngagementKind::HardBounce as i32));
            }
            let event = NewEvent {
                message_id: format!(
                    "delivery:{}",
                    if e.engagement_id.is_empty() { record.sequence.to_string() } else { e.engagement_id.clone() }
                ),
                name: name.into(),
                occurred_at: at(&e.at),
                properties: Value::Object(properties),
                context: context(
                    e.channel,
                    &[
                        ("decision_id", &e.decision_id),
                        ("offer_id", &e.offer_id),
                        ("campaign_id", &e.campaign_id),
                        ("delivery_message_id", &e.message_id),
                    ],
                ),
            };
            Ok(Some((e.customer_id, event)))
        }
        "delivery.task_completed" => {
            let t = TaskCompleted::decode(payload.value.as_slice()).map_err(bad)?;
            if t.customer_id.is_empty() {
                return Ok(None);
            }
            let event = NewEvent {
                message_id: format!("delivery:{}", t.task_id),
                name: "call_centre_contact".into(),
                occurred_at: at(&t.at),
                properties: json!({"outcome": t.outcome}),
                context: context(
                    Channel::CallCentre as i32,
                    &[
                        ("decision_id", &t.decision_id),
                        ("offer_id", &t.offer_id),
                        ("campaign_id", &t.campaign_id),
                        ("agent_id", &t.agent_id),
                        ("delivery_message_id", &t.message_id),
                    ],
                ),
            };
            Ok(Some((t.customer_id, event)))
        }
        _ => Ok(None),
    }
}

impl FeedHandler for FollowDelivery {
    // The store appends in its own transaction; the event's message id makes a replay store nothing.
    fn prepare<'a>(&'a self, record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if let Some((customer, event)) = event_of(record)? {
                self.store.append(&customer, &[event], "delivery").await?;
            }
            Ok(())
        })
    }

    fn apply<'a>(&'a self, _tx: &'a mut Tx, _record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn committed<'a>(&'a self, record: &'a OutboxRecord) -> BoxFuture<'a, ()> {
        let customers = event_of(record).ok().flatten().map(|(c, _)| vec![c]).unwrap_or_default();
        (self.on_change)(customers)
    }
}
