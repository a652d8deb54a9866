//! Channel providers and how a message reaches one: the primary providers of its channel first
//! (healthy ones before unhealthy ones), then the secondaries when a primary fails with a retryable
//! error. A provider that may have received the message (its hand-off began) is never followed by
//! another: that is how failover keeps "once".

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rapport_proto::common::v1::Channel;

use crate::domain::address::Recipient;
use crate::domain::template::Rendered;

pub mod file_sink;
pub mod http;
pub mod internal;
pub mod smtp;

/// A message ready for a provider.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message_id: String,
    pub customer_id: String,
    pub channel: Channel,
    pub recipient: Recipient,
    pub rendered: Rendered,
    /// Marketing mail carries List-Unsubscribe headers.
    pub marketing: bool,
    /// The consent unsubscribe link (RFC 8058 one-click target), if any.
    pub unsubscribe_url: String,
    pub decision_id: String,
    pub offer_id: String,
    pub campaign_id: String,
    /// The profile's traits (direct mail reads name and postal address from them).
    pub traits: serde_json::Value,
    /// When a call-centre task is due (milliseconds).
    pub due_at: i64,
}

/// What a provider did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted it.
    Sent { detail: String },
    /// Not accepted; worth trying again (possibly elsewhere).
    Retry { detail: String },
    /// Not accepted, for good; `bounce` when the address does not exist.
    Failed { detail: String, bounce: bool },
    /// The hand-off began and its answer was lost (connection dropped after the final step): the provider
    /// may have the message. Never retried blindly.
    Unknown { detail: String },
}

/// Records, durably, that a message is about to be handed over for good (see docs/delivery.md). A
/// provider calls it right before its irrevocable step and stops if it returns false.
#[tonic::async_trait]
pub trait Handoff: Send + Sync {
    async fn commit(&self, provider: &str) -> bool;
}

/// A hand-off that needs no mark: the provider's write is idempotent by message id.
pub struct NoMark;

#[tonic::async_trait]
impl Handoff for NoMark {
    async fn commit(&self, _provider: &str) -> bool {
        true
    }
}

/// A channel adapter.
#[tonic::async_trait]
pub trait Provider: Send + Sync {
    /// The configured name.
    fn name(&self) -> &str;
    /// smtp, http_sms, ...
    fn kind(&self) -> &'static str;
    /// Hands `m` over.
    async fn send(&self, m: &Outgoing, handoff: &dyn Handoff) -> Outcome;
    /// After an interrupted hand-off: whether the provider has the message; `None` when it cannot tell.
    async fn reconcile(&self, _message_id: &str) -> Option<bool> {
        None
    }
}

/// A provider with its place, limit and health.
pub struct Slot {
    pub provider: Arc<dyn Provider>,
    pub primary: bool,
    pub limiter: Option<DefaultDirectRateLimiter>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failures: u32,
    last_error: String,
    unhealthy_until: Option<Instant>,
}

impl Slot {
    /// A slot for `provider`, limited to `rate` per second (0: unlimited).
    pub fn new(provider: Arc<dyn Provider>, primary: bool, rate: u32) -> Self {
        let limiter = std::num::NonZeroU32::new(rate).map(|r| RateLimiter::direct(Quota::per_second(r)));
        Self { provider, primary, limiter, health: Mutex::new(Health::default()) }
    }

    /// Whether the provider answered recently, and its last error.
    pub fn health(&self) -> (bool, String) {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        (h.unhealthy_until.is_none_or(|t| t < Instant::now()), h.last_error.clone())
    }

    fn record(&self, outcome: &Outcome) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Outcome::Retry { detail } | Outcome::Unknown { detail } => {
                h.failures += 1;
                h.last_error = detail.clone();
                if h.failures >= 3 {
                    h.unhealthy_until = Some(Instant::now() + Duration::from_secs(30));
                }
            }
            _ => {
                h.failures = 0;
                h.unhealthy_until = None;
            }
        }
    }
}

/// The providers of every channel.
#[derive(Default)]
pub struct Registry {
    channels: BTreeMap<i32, Vec<Arc<Slot>>>,
    all: Vec<Arc<Slot>>,
    by_name: BTreeMap<String, Arc<Slot>>,
}

/// The outcome of a send through the registry, with the provider that produced it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub provider: String,
    pub outcome: Outcome,
}

impl Registry {
    /// Adds a provider for `channels`.
    pub fn add(&mut self, slot: Slot, channels: &[Channel]) {
        let slot = Arc::new(slot);
        for c in channels {
            let list = self.channels.entry(*c as i32).or_default();
            list.push(slot.clone());
            list.sort_by_key(|s| !s.primary);
        }
        self.by_name.insert(slot.provider.name().to_string(), slot.clone());
        self.all.push(slot);
    }

    /// Whether a channel has a provider.
    pub fn serves(&self, channel: Channel) -> bool {
        self.channels.get(&(channel as i32)).is_some_and(|l| !l.is_empty())
    }

    /// Every provider with the channels it serves.
    pub fn list(&self) -> Vec<(Arc<Slot>, Vec<i32>)> {
        self.all
            .iter()
            .map(|s| {
                let channels = self
                    .channels
                    .iter()
                    .filter(|(_, l)| l.iter().any(|x| Arc::ptr_eq(x, s)))
                    .map(|(c, _)| *c)
                    .collect();
                (s.clone(), channels)
            })
            .collect()
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.by_name.get(name).cloned()
    }

    /// Sends `m` through the providers of its channel: healthy primaries, then the others, moving on
    /// only after a retryable failure.
    pub async fn send(&self, m: &Outgoing, handoff: &dyn Handoff) -> Routed {
        let Some(slots) = self.channels.get(&(m.channel as i32)) else {
            return Routed {
                provider: String::new(),
                outcome: Outcome::Failed { detail: "no provider serves this channel".into(), bounce: false },
            };
        };
        let mut order: Vec<&Arc<Slot>> = slots.iter().collect();
        // Stable: primaries first, and among them healthy ones first.
        order.sort_by_key(|s| (!s.primary, !s.health().0));
        let mut last = None;
        for slot in order {
            if let Some(l) = &slot.limiter {
                l.until_ready().await;
            }
            let started = Instant::now();
            let outcome = slot.provider.send(m, handoff).await;
            let name = slot.provider.name().to_string();
            metrics::histogram!("rapport_delivery_provider_seconds", "provider" => name.clone())
                .record(started.elapsed().as_secs_f64());
            slot.record(&outcome);
            let retry = matches!(outcome, Outcome::Retry { .. });
            last = Some(Routed { provider: name, outcome });
            if !retry {
                break;
            }
        }
        last.unwrap_or(Routed {
            provider: String::new(),
            outcome: Outcome::Failed { detail: "no provider serves this channel".into(), bounce: false },
        })
    }
}
