//! Sends a campaign's decision through delivery (Send / SendBatch): the offer's content for the channel
//! (template and variables), the decision and offer ids for attribution, and an idempotency key derived
//! from the timer or run, so a retried send is the same message.

use rapport_proto::common::v1::{self as common, customer_ref::Ref};
use rapport_proto::decision::v1 as pb;
use rapport_proto::delivery::v1 as delivery;

use crate::domain::offers::{class_of, purpose_of};

/// What delivery said about one send.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// Queued (or an earlier send with the same key): the message id.
    Queued(String),
    /// Refused for good (the message says why, e.g. UNIMPLEMENTED while delivery is not built).
    Refused(String),
    /// Worth retrying later.
    Retry(String),
}

/// The send request of `offer` chosen by `decision_id` for `customer_id`.
pub fn request(
    customer_id: &str,
    channel: i32,
    decision_id: &str,
    campaign_id: &str,
    offer: &pb::Offer,
    key: &str,
) -> delivery::SendRequest {
    let content = offer.content.iter().find(|c| c.channel == channel);
    delivery::SendRequest {
        customer: Some(common::CustomerRef { r#ref: Some(Ref::CustomerId(customer_id.to_string())) }),
        channel,
        template_id: content.map(|c| c.template_id.clone()).unwrap_or_default(),
        data: content.and_then(|c| c.variables.clone()),
        idempotency_key: key.to_string(),
        decision_id: decision_id.to_string(),
        offer_id: offer.offer_id.clone(),
        campaign_id: campaign_id.to_string(),
        message_class: class_of(offer) as i32,
        purpose: purpose_of(offer).to_string(),
        ..Default::default()
    }
}

/// The meaning of a delivery status for a send.
pub fn classify(status: &tonic::Status) -> Sent {
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::ResourceExhausted
        | tonic::Code::Aborted
        | tonic::Code::Internal
        | tonic::Code::Unknown => Sent::Retry(text),
        _ => Sent::Refused(text),
    }
}

/// Sends one message.
pub async fn send_one(clients: &rapport_rpc::Clients, r: delivery::SendRequest) -> Sent {
    let mut client = match clients.delivery() {
        Ok(c) => c,
        Err(s) => return classify(&s),
    };
    match client.send(r).await {
        Ok(a) => Sent::Queued(a.into_inner().message_id),
        Err(s) => classify(&s),
    }
}

/// Sends a batch (at most 1,000); one answer per request, in order.
pub async fn send_batch(clients: &rapport_rpc::Clients, requests: Vec<delivery::SendRequest>) -> Vec<Sent> {
    let n = requests.len();
    let mut client = match clients.delivery() {
        Ok(c) => c,
        Err(s) => return vec![classify(&s); n],
    };
    match client.send_batch(delivery::SendBatchRequest { messages: requests }).await {
        Ok(a) => {
            let mut out = vec![Sent::Retry("no answer for this message".into()); n];
            for r in a.into_inner().results {
                let i = r.index as usize;
                if i < n {
                    out[i] = match r.outcome {
                        Some(delivery::send_batch_result::Outcome::Sent(s)) => Sent::Queued(s.message_id),
                        Some(delivery::send_batch_result::Outcome::Error(e)) => Sent::Refused(e),
                        None => Sent::Retry("empty answer".into()),
                    };
                }
            }
            out
        }
        Err(s) => vec![classify(&s); n],
    }
}
