//! Delivery follows consent's unsubscribe links: a spent unsubscribe token that names one of our
//! messages becomes that message's UNSUBSCRIBED engagement (history and `delivery.engagement`, marked as
//! already recorded by consent), so the profile timeline and the decision log see it with the decision.

use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
use rapport_errors::Error;
use rapport_proto::common::v1::OutboxRecord;
use rapport_proto::consent::v1::{TokenUseKind, TokenUsed};
use rapport_proto::delivery::v1::EngagementKind;
use rapport_rpc::feed::FeedHandler;
use rapport_storage::Tx;

use crate::core::Core;
use crate::store::messages::Change;

/// The consumer's name, under which its cursor is stored.
pub const CONSUMER: &str = "delivery<-consent";

/// The consent topics followed.
pub fn topics() -> Vec<String> {
    vec!["consent.token_used".to_string()]
}

/// Records unsubscribes on their messages.
pub struct FollowConsent {
    pub core: Arc<Core>,
}

impl FeedHandler for FollowConsent {
    // The change commits in the queue's own transaction; its engagement id is the token's, so a replay
    // publishes the same engagement, which its consumers store once.
    fn prepare<'a>(&'a self, record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let any = record.payload.as_ref().ok_or_else(|| Error::internal("consent record without payload"))?;
            let used = TokenUsed::decode(any.value.as_slice())
                .map_err(|e| Error::internal(format!("consent record {}: {e}", record.sequence)))?;
            if used.kind != TokenUseKind::Unsubscribed as i32 || used.message_id.is_empty() {
                return Ok(());
            }
            let Some(row) = self.core.messages.get(&used.message_id).await? else { return Ok(()) };
            let detail = "unsubscribed through the link in the message";
            let event = self.core.engagement_event_id(
                &row,
                EngagementKind::Unsubscribed,
                "",
                detail,
                true,
                format!("eng_{}", used.token_id),
            );
            let change = Change {
                message_id: row.message_id.clone(),
                status: row.status as i32,
                detail: detail.into(),
                history: true,
                events: vec![event],
                ..Default::default()
            };
            self.core.messages.apply(&[change]).await?;
            Ok(())
        })
    }

    fn apply<'a>(&'a self, _tx: &'a mut Tx, _record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}
