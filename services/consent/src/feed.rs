//! Consent follows the person: identity's merges, splits and erasures applied to the ledger's view of
//! who is who, exactly once (the cursor commits with the effect).

use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
use rapport_errors::Error;
use rapport_proto::common::v1::OutboxRecord;
use rapport_proto::identity::v1 as identity;
use rapport_rpc::feed::FeedHandler;
use rapport_storage::Tx;

use crate::store::Store;

/// The consumer name under which the cursor is kept.
pub const CONSUMER: &str = "consent.identity";

/// The topics consumed.
pub fn topics() -> Vec<String> {
    ["identity.merged", "identity.split", "identity.erased"].map(String::from).to_vec()
}

/// Applies identity's feed.
pub struct IdentityFeed {
    pub store: Arc<Store>,
}

fn decode<M: Message + Default>(record: &OutboxRecord) -> Result<M, Error> {
    let any = record.payload.as_ref().ok_or_else(|| Error::internal("identity feed record without payload"))?;
    M::decode(any.value.as_slice())
        .map_err(|e| Error::internal(format!("identity feed record {}: {e}", record.sequence)))
}

impl FeedHandler for IdentityFeed {
    fn apply<'a>(&'a self, tx: &'a mut Tx, record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            match record.topic.as_str() {
                "identity.merged" => self.store.apply_merge(tx, &decode::<identity::CustomersMerged>(record)?).await,
                "identity.split" => self.store.apply_split(tx, &decode::<identity::CustomerSplit>(record)?).await,
                "identity.erased" => {
                    let e = decode::<identity::CustomerErased>(record)?;
                    let mut ids = vec![e.customer_id.clone()];
                    ids.extend(e.aliases.iter().cloned());
                    self.store.erase_in(tx, &ids, "").await.map(|_| ())
                }
                _ => Ok(()),
            }
        })
    }

    fn committed<'a>(&'a self, _record: &'a OutboxRecord) -> BoxFuture<'a, ()> {
        Box::pin(self.store.checks.changed())
    }
}
