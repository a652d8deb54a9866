//! What delivery learns about a contact point changes permission: a hard bounce suppresses the address
//! (HARD_BOUNCE), a complaint suppresses it (COMPLAINT), an unsubscribe reported to delivery (an ESP's
//! list-unsubscribe, an SMS "STOP") records a WITHDRAWN entry and an UNSUBSCRIBED suppression. Applied
//! exactly once: the cursor commits with the effect. Unsubscribes made through consent's own link are
//! recorded at the source and skipped here.

use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
use rapport_errors::Error;
use rapport_proto::common::v1::{OutboxRecord, Provenance};
use rapport_proto::consent::v1 as pb;
use rapport_proto::delivery::v1::{Engagement, EngagementKind};
use rapport_rpc::feed::FeedHandler;
use rapport_storage::{Outbox, Tx, now_millis};

use crate::store::{NewEntry, Store};

/// The consumer name under which the cursor is kept.
pub const CONSUMER: &str = "consent.delivery";

/// The topics consumed.
pub fn topics() -> Vec<String> {
    vec!["delivery.engagement".to_string()]
}

/// Applies delivery's engagement feed.
pub struct DeliveryFeed {
    pub store: Arc<Store>,
}

impl DeliveryFeed {
    async fn apply_engagement(&self, tx: &mut Tx, e: &Engagement) -> Result<(), Error> {
        let kind = EngagementKind::try_from(e.kind).unwrap_or_default();
        let reason = match kind {
            EngagementKind::HardBounce => pb::SuppressionReason::HardBounce,
            EngagementKind::Complaint => pb::SuppressionReason::Complaint,
            EngagementKind::Unsubscribed if !e.consent_recorded => pb::SuppressionReason::Unsubscribed,
            _ => return Ok(()),
        };
        let Some(identifier) = &e.contact_point else { return Ok(()) };
        // An address consent cannot read is not one it could suppress; nothing to do.
        let Ok(cp) = crate::normalize::contact_point(&self.store.settings, "contact_point", identifier) else {
            return Ok(());
        };
        let provenance =
            Provenance { source: "delivery".into(), source_record_id: e.message_id.clone(), actor: String::new() };
        let mut messages = Vec::new();
        let note = format!("{} reported by delivery for message {}", reason.as_str_name(), e.message_id);
        self.store
            .add_suppression(tx, &cp, e.channel, reason, provenance.clone(), note, None, &e.customer_id, &mut messages)
            .await?;
        if reason == pb::SuppressionReason::Unsubscribed
            && !e.purpose.is_empty()
            && self.store.settings.purposes.contains(&e.purpose)
        {
            let occurred = e.at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_else(now_millis);
            let entry = NewEntry {
                customer_id: e.customer_id.clone(),
                cp: cp.clone(),
                channel: e.channel,
                purpose: e.purpose.clone(),
                status: pb::ConsentStatus::Withdrawn,
                legal_basis: pb::LegalBasis::Consent as i32,
                provenance,
                proof: pb::Proof { method: pb::ProofMethod::DeliveryFeedback as i32, ..Default::default() },
                occurred_at: occurred,
                expires_at: None,
                region: String::new(),
                token_id: String::new(),
                idempotency_key: format!("delivery:{}", e.engagement_id),
            };
            self.store.append(tx, "delivery", vec![entry], &mut messages).await?;
        }
        Outbox::append(tx, &messages).await?;
        Ok(())
    }
}

impl FeedHandler for DeliveryFeed {
    fn apply<'a>(&'a self, tx: &'a mut Tx, record: &'a OutboxRecord) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if record.topic != "delivery.engagement" {
                return Ok(());
            }
            let any = record.payload.as_ref().ok_or_else(|| Error::internal("delivery feed record without payload"))?;
            let e = Engagement::decode(any.value.as_slice())
                .map_err(|err| Error::internal(format!("delivery feed record {}: {err}", record.sequence)))?;
            self.apply_engagement(tx, &e).await
        })
    }

    fn committed<'a>(&'a self, _record: &'a OutboxRecord) -> BoxFuture<'a, ()> {
        Box::pin(self.store.checks.changed())
    }
}
