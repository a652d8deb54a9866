//! What the handlers, the workers and the HTTP endpoints share: the stores, the providers, the compiled
//! templates, the link signer, and the two group committers (hand-off marks and status changes) that let
//! a thousand messages a second cost a few transactions a second.

use std::sync::Arc;
use std::time::Duration;

use rapport_errors::Error;
use rapport_proto::common::v1::{Channel, Identifier};
use rapport_proto::delivery::v1 as pb;
use rapport_rpc::Clients;
use rapport_rpc::convert::timestamp;
use rapport_storage::{OutboxMessage, now_millis};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::domain::address::{self, Recipient};
use crate::domain::classify::ErrorTable;
use crate::domain::template::{Compiled, CompiledCache};
use crate::domain::tracking::LinkSigner;
use crate::providers::{Handoff, Registry};
use crate::settings::DeliverySettings;
use crate::store::channels::Channels;
use crate::store::messages::{Change, MessageRow, Messages};
use crate::store::templates::Templates;
use crate::store::{TOPIC_ENGAGEMENT, TOPIC_STATUS_CHANGED, event, new_id};

/// The shared state of the service.
pub struct Core {
    pub settings: Arc<DeliverySettings>,
    pub messages: Messages,
    pub templates: Templates,
    pub channels: Channels,
    pub compiled: CompiledCache,
    pub registry: Registry,
    pub clients: Clients,
    pub links: LinkSigner,
    pub errors: Arc<ErrorTable>,
    /// This process's lease owner name.
    pub owner: String,
    /// Woken by Send, so idle workers claim at once.
    pub wake: Notify,
    marks: mpsc::UnboundedSender<(String, String, oneshot::Sender<bool>)>,
    changes: mpsc::UnboundedSender<(Change, oneshot::Sender<bool>)>,
}

/// The receiving ends of the group committers, started with the background work.
pub struct Committers {
    marks: mpsc::UnboundedReceiver<(String, String, oneshot::Sender<bool>)>,
    changes: mpsc::UnboundedReceiver<(Change, oneshot::Sender<bool>)>,
}

/// The channel's name in paths, metrics and files ("email").
pub fn channel_name(c: i32) -> String {
    Channel::try_from(c)
        .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase())
        .unwrap_or_else(|_| c.to_string())
}

impl Core {
    /// The core and the committers to start.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Arc<DeliverySettings>,
        messages: Messages,
        templates: Templates,
        channels: Channels,
        registry: Registry,
        clients: Clients,
        links: LinkSigner,
        errors: Arc<ErrorTable>,
    ) -> (Self, Committers) {
        let (marks, marks_rx) = mpsc::unbounded_channel();
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let core = Self {
            settings,
            messages,
            templates,
            channels,
            compiled: CompiledCache::default(),
            registry,
            clients,
            links,
            errors,
            owner: format!("dlv-{}", uuid::Uuid::new_v4().simple()),
            wake: Notify::new(),
            marks,
            changes,
        };
        (core, Committers { marks: marks_rx, changes: changes_rx })
    }

    /// Records a change through the group committer; whether it applied.
    pub async fn record(&self, change: Change) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.changes.send((change, tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// The compiled template `id` at `version`.
    pub async fn compiled(&self, id: &str, version: i64) -> Result<Arc<Compiled>, Error> {
        let t = self.templates.get(id, version).await?.ok_or_else(|| Error::not_found(format!("template {id}")))?;
        self.compiled
            .get_or_compile(id, t.version, || Compiled::new(&t.locales, &t.default_locale, self.settings.template_fuel))
            .map_err(|e| Error::invalid(&e.field, e.problem))
    }

    /// The `delivery.status_changed` event of a message entering `status`.
    pub fn status_event(&self, row: &MessageRow, status: pb::MessageStatus, detail: &str) -> OutboxMessage {
        event(
            TOPIC_STATUS_CHANGED,
            &row.customer_id,
            &pb::MessageStatusChanged {
                message_id: row.message_id.clone(),
                customer_id: row.customer_id.clone(),
                status: status as i32,
                detail: detail.to_string(),
                decision_id: row.decision_id.clone(),
                offer_id: row.offer_id.clone(),
                campaign_id: row.campaign_id.clone(),
                channel: row.channel as i32,
            },
        )
    }

    /// The `delivery.engagement` event of something the recipient did with a message.
    pub fn engagement_event(
        &self,
        row: &MessageRow,
        kind: pb::EngagementKind,
        url: &str,
        detail: &str,
        consent_recorded: bool,
    ) -> OutboxMessage {
        self.engagement_event_id(row, kind, url, detail, consent_recorded, new_id("eng"))
    }

    /// [`Core::engagement_event`] with a given engagement id (stable when the same fact may be replayed).
    pub fn engagement_event_id(
        &self,
        row: &MessageRow,
        kind: pb::EngagementKind,
        url: &str,
        detail: &str,
        consent_recorded: bool,
        engagement_id: String,
    ) -> OutboxMessage {
        let contact_point = address::address_kind(Channel::try_from(row.channel as i32).unwrap_or_default())
            .filter(|_| !row.recipient.is_empty())
            .map(|k| address::stored(k, &row.recipient))
            .and_then(|r| {
                r.identifier_type().map(|t| Identifier {
                    r#type: t as i32,
                    value: r.as_str().to_string(),
                    namespace: String::new(),
                })
            });
        event(
            TOPIC_ENGAGEMENT,
            &row.customer_id,
            &pb::Engagement {
                message_id: row.message_id.clone(),
                customer_id: row.customer_id.clone(),
                kind: kind as i32,
                at: Some(timestamp(now_millis())),
                decision_id: row.decision_id.clone(),
                offer_id: row.offer_id.clone(),
                channel: row.channel as i32,
                url: url.to_string(),
                engagement_id,
                contact_point,
                purpose: row.purpose.clone(),
                campaign_id: row.campaign_id.clone(),
                consent_recorded,
                detail: detail.to_string(),
            },
        )
    }

    /// The recipient of a stored message.
    pub fn recipient_of(row: &MessageRow) -> Recipient {
        match address::address_kind(Channel::try_from(row.channel as i32).unwrap_or_default()) {
            Some(k) => address::stored(k, &row.recipient),
            None => Recipient::Customer,
        }
    }
}

/// The next item of a committer; after shutdown, only what arrives within a moment (the last sends
/// recording their outcome), then the committer ends.
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, shutdown: &tokio_util::sync::CancellationToken) -> Option<T> {
    if !shutdown.is_cancelled() {
        tokio::select! {
            item = rx.recv() => return item,
            _ = shutdown.cancelled() => {}
        }
    }
    tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.ok().flatten()
}

/// A hand-off mark for one message, written through the group committer.
pub struct Mark<'a> {
    pub core: &'a Core,
    pub message_id: &'a str,
}

#[tonic::async_trait]
impl Handoff for Mark<'_> {
    async fn commit(&self, provider: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.core.marks.send((self.message_id.to_string(), provider.to_string(), tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

impl Committers {
    /// Starts both committers; they end when the core is dropped.
    pub fn spawn(
        self,
        core: Arc<Core>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let Committers { mut marks, mut changes } = self;
        let messages = core.messages.clone();
        let owner = core.owner.clone();
        drop(core);
        let m = messages.clone();
        let stop = shutdown.clone();
        let mark_task = tokio::spawn(async move {
            while let Some(first) = next(&mut marks, &stop).await {
                let mut batch = vec![first];
                while batch.len() < 512 {
                    match marks.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                let pairs: Vec<(String, String)> = batch.iter().map(|(id, p, _)| (id.clone(), p.clone())).collect();
                let written = match m.mark_handoff(&pairs, &owner).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "hand-off marks not written; the sends are abandoned and retried");
                        vec![false; batch.len()]
                    }
                };
                for ((_, _, reply), ok) in batch.into_iter().zip(written) {
                    let _ = reply.send(ok);
                }
            }
        });
        let change_task = tokio::spawn(async move {
            while let Some(first) = next(&mut changes, &shutdown).await {
                let mut batch = vec![first];
                while batch.len() < 1000 {
                    match changes.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                let list: Vec<Change> = batch.iter().map(|(c, _)| c.clone()).collect();
                // An outcome must not be lost: keep retrying while the database is away. If the process
                // dies meanwhile, the hand-off mark (if any) tells the next owner what happened.
                let mut wait = Duration::from_millis(50);
                let applied = loop {
                    match messages.apply(&list).await {
                        Ok(a) => break a,
                        Err(e) => {
                            tracing::warn!(error = %e, changes = list.len(), "message changes not recorded yet; retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(2));
                        }
                    }
                };
                for ((_, reply), ok) in batch.into_iter().zip(applied) {
                    let _ = reply.send(ok);
                }
            }
        });
        vec![mark_task, change_task]
    }
}
