//! The profile store follows identity: a merge moves the merged customer's timeline and traits to the
//! survivor, a split moves them back, an erasure removes the person. Each record is applied in one
//! transaction together with the consumer's cursor.

use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
use rapport_errors::Error;
use rapport_proto::common::v1::OutboxRecord;
use rapport_proto::identity::v1 as identity;
use rapport_rpc::feed::FeedHandler;
use rapport_storage::{Outbox, Tx};

use crate::store::Store;

/// The consumer's name, under which its cursor is stored.
pub const CONSUMER: &str = "profile<-identity";

/// The identity topics the profile store applies.
pub fn topics() -> Vec<String> {
    ["identity.merged", "identity.split", "identity.erased"].map(String::from).to_vec()
}

/// Applies identity's changes to the store.
pub struct FollowIdentity {
    pub store: Store,
    /// Called with the customers whose profile changed once the change committed (cache invalidation).
    pub on_change: Arc<dyn Fn(Vec<String>) -> BoxFuture<'static, ()> + Send + Sync>,
}

fn decode<M: Message + Default>(record: &OutboxRecord) -> Result<M, Error> {
    let payload = record.payload.as_ref().ok_or_else(|| Error::internal("identity record without payload"))?;
    M::decode(payload.value.as_slice())
        .map_err(|e| Error::internal(format!("identity record {}: {e}", record.sequence)))
}

/// The customers a record touches.
fn touched(record: &OutboxRecord) -> Vec<String> {
    match record.topic.as_str() {
        "identity.merged" => decode::<identity::CustomersMerged>(record)
            .map(|m| vec![m.survivor_customer_id, m.merged_customer_id])
            .unwrap_or_default(),
        "identity.split" => decode::<identity::CustomerSplit>(record)
            .map(|s| vec![s.customer_id, s.split_customer_id])
            .unwrap_or_default(),
        "identity.erased" => decode::<identity::CustomerErased>(record)
            .map(|e| std::iter::once(e.customer_id).chain(e.aliases).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

impl FeedHandler for FollowIdentity {
    fn apply<'a>(&'a self, tx: &'a mut Tx, record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            match record.topic.as_str() {
                "identity.merged" => {
                    let m: identity::CustomersMerged = decode(record)?;
                    let messages = self.store.merge_in(tx, &m.survivor_customer_id, &m.merged_customer_id).await?;
                    Outbox::append(tx, &messages).await?;
                }
                "identity.split" => {
                    let s: identity::CustomerSplit = decode(record)?;
                    self.store.split_in(tx, &s.customer_id, &s.split_customer_id, &s.aliases).await?;
                }
                "identity.erased" => {
                    let e: identity::CustomerErased = decode(record)?;
                    self.store.erase_in(tx, &e.customer_id, &e.aliases).await?;
                }
                _ => {}
            }
            Ok(())
        })
    }

    fn committed<'a>(&'a self, record: &'a OutboxRecord) -> BoxFuture<'a, ()> {
        let customers = touched(record);
        (self.on_change)(customers)
    }
}
