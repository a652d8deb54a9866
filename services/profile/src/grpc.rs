//! `rapport.profile.v1.ProfileService`: ingest (Track, Identify) resolved through identity, profile reads
//! by any identifier (cached, audited, with a consent summary), the timeline, segments and the audit.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use prost::{Message, Name};
use rapport_cache::Cache;
use rapport_errors::Error;
use rapport_proto::common::v1 as common;
use rapport_proto::consent::v1 as consent;
use rapport_proto::identity::v1 as identity;
use rapport_proto::profile::v1 as pb;
use rapport_proto::profile::v1::profile_service_server::ProfileService;
use rapport_rpc::Clients;
use rapport_rpc::convert::{json_to_struct, millis, page_size, struct_to_json, timestamp};
use rapport_rpc::feed::RecordStream;
use rapport_storage::{Audit, AuditWriter, Outbox, OutboxMessage, now_millis};
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

use crate::segments::SegmentDef;
use crate::store::{IDENTIFY_EVENT, NewEvent, Profile, ProfileEvents, Store};

/// The most events one Track call may carry.
pub const MAX_BATCH: usize = 1000;
/// How far in the future an event time may be.
const FUTURE_SLACK_MS: i64 = 24 * 3600 * 1000;
/// How long a cached profile lives at most (a change moves its version on at once).
const CACHE_TTL: Duration = Duration::from_secs(120);
/// How long a profile's cache version is kept after its last change; longer than `CACHE_TTL`.
pub const VERSION_WINDOW: Duration = Duration::from_secs(900);

/// The gRPC service.
pub struct Profiles {
    pub store: Store,
    pub clients: Clients,
    pub cache: Cache,
    pub outbox: Outbox,
    pub audit: AuditWriter,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Makes every replica stop serving the cached profile of `customer_id` (call after the change committed).
pub async fn invalidate(cache: &Cache, customer_id: &str) {
    if let Err(e) = cache.bump_version(&cache_key(customer_id), VERSION_WINDOW).await {
        tracing::warn!(error = %e, "profile cache invalidation failed");
    }
}

/// The cache key of a customer's profile.
pub fn cache_key(customer_id: &str) -> String {
    format!("profile:v1:{customer_id}")
}

fn caller<T>(request: &Request<T>) -> String {
    rapport_auth::Principal::of(request).map(|p| p.name.clone()).unwrap_or_else(|| "unknown".into())
}

fn is_event_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Who an event or trait update is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Customer(String),
    Identifiers(Vec<(i32, String, String)>),
}

fn who_of(field: &str, customer_id: &str, identifiers: &[common::Identifier]) -> Result<Who, Error> {
    if !customer_id.trim().is_empty() {
        return Ok(Who::Customer(customer_id.trim().to_string()));
    }
    if identifiers.is_empty() {
        return Err(Error::invalid(&format!("{field}.identifiers"), "an identifier or a customer_id is required"));
    }
    let mut ids: Vec<_> = identifiers.iter().map(|i| (i.r#type, i.value.clone(), i.namespace.clone())).collect();
    ids.sort();
    ids.dedup();
    Ok(Who::Identifiers(ids))
}

/// Checks properties of events the service understands, naming the field.
fn check_known_properties(field: &str, name: &str, p: &Map<String, Value>) -> Result<(), Error> {
    let int = |k: &str| match p.get(k) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_i64().is_some() => Ok(()),
        Some(_) => Err(Error::invalid(&format!("{field}.properties.{k}"), "must be a whole number")),
    };
    let items = || match p.get("items") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let f = format!("{field}.properties.items[{i}]");
                let obj = item.as_object().ok_or_else(|| Error::invalid(&f, "must be an object"))?;
                for k in ["quantity", "price_minor"] {
                    if obj.get(k).is_some_and(|v| v.as_i64().is_none()) {
                        return Err(Error::invalid(&format!("{f}.{k}"), "must be a whole number"));
                    }
                }
            }
            Ok(())
        }
        Some(_) => Err(Error::invalid(&format!("{field}.properties.items"), "must be a list")),
    };
    match name {
        "order_completed" => {
            int("revenue_minor")?;
            if let Some(c) = p.get("currency")
                && !c.as_str().is_some_and(|c| c.len() == 3 && c.chars().all(|x| x.is_ascii_alphabetic()))
            {
                return Err(Error::invalid(
                    &format!("{field}.properties.currency"),
                    "must be an ISO 4217 code like EUR",
                ));
            }
            items()
        }
        "cart_updated" | "checkout_started" => items(),
        _ => Ok(()),
    }
}

fn context_json(c: Option<&pb::EventContext>) -> Value {
    let Some(c) = c else { return json!({}) };
    let channel = common::Channel::try_from(c.channel)
        .ok()
        .filter(|ch| *ch != common::Channel::Unspecified)
        .map(|ch| ch.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase());
    let mut m = Map::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.to_string(), Value::String(v.to_string()));
        }
    };
    put("channel", channel.as_deref().unwrap_or_default());
    put("source", &c.source);
    put("campaign_id", &c.campaign_id);
    put("decision_id", &c.decision_id);
    put("store_id", &c.store_id);
    put("agent_id", &c.agent_id);
    put("offer_id", &c.offer_id);
    put("delivery_message_id", &c.delivery_message_id);
    Value::Object(m)
}

fn context_wire(v: &Value) -> pb::EventContext {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let channel = v
        .get("channel")
        .and_then(Value::as_str)
        .and_then(|c| common::Channel::from_str_name(&format!("CHANNEL_{}", c.to_ascii_uppercase())))
        .unwrap_or(common::Channel::Unspecified);
    pb::EventContext {
        channel: channel as i32,
        source: s("source"),
        campaign_id: s("campaign_id"),
        decision_id: s("decision_id"),
        store_id: s("store_id"),
        agent_id: s("agent_id"),
        offer_id: s("offer_id"),
        delivery_message_id: s("delivery_message_id"),
    }
}

fn money(minor: i64, currency: &str) -> Option<common::Money> {
    (!currency.is_empty()).then(|| common::Money { currency: currency.to_string(), minor_units: minor })
}

impl Profiles {
    /// The customer a Who is, resolving identifiers through identity (creating the customer if new).
    /// The customer `who` names, resolved through identity as seen at `seen_at` (the event time, in ms):
    /// identity refuses identifiers of a person erased after that time, so replays cannot re-create them.
    async fn resolve(&self, who: &Who, source: &str, seen_at: i64) -> Result<String, Status> {
        match who {
            Who::Customer(id) => Ok(self.store.canonical(id).await?),
            Who::Identifiers(ids) => {
                let request = identity::ResolveRequest {
                    identifiers: ids
                        .iter()
                        .map(|(t, v, n)| common::Identifier { r#type: *t, value: v.clone(), namespace: n.clone() })
                        .collect(),
                    provenance: Some(common::Provenance { source: source.to_string(), ..Default::default() }),
                    occurred_at: Some(timestamp(seen_at)),
                    ..Default::default()
                };
                let resolved = self.clients.identity()?.resolve(request).await?.into_inner();
                Ok(self.store.canonical(&resolved.customer_id).await?)
            }
        }
    }

    /// The customer a reference names, without creating anything.
    async fn customer_of(&self, field: &str, r: Option<&common::CustomerRef>) -> Result<String, Status> {
        match r.and_then(|r| r.r#ref.as_ref()) {
            Some(common::customer_ref::Ref::CustomerId(id)) if !id.trim().is_empty() => {
                Ok(self.store.canonical(id.trim()).await?)
            }
            Some(common::customer_ref::Ref::Identifier(i)) => {
                let request = identity::LookupRequest { identifier: Some(i.clone()) };
                match self.clients.identity()?.lookup(request).await {
                    Ok(r) => Ok(self.store.canonical(&r.into_inner().customer_id).await?),
                    // Identity names the field as `identifier...`; say where it is in this request.
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        Err(Status::invalid_argument(format!("{field}.{}", s.message())))
                    }
                    Err(s) => Err(s),
                }
            }
            _ => Err(Error::invalid(field, "is required: a customer_id or an identifier").into()),
        }
    }

    async fn invalidate(&self, customer_id: &str) {
        invalidate(&self.cache, customer_id).await;
    }

    /// Builds the wire profile (identifiers, traits, computed, segments), from the cache when possible.
    async fn load_wire(&self, customer_id: &str) -> Result<Option<pb::Profile>, Status> {
        let key = cache_key(customer_id);
        let cached = self.cache.get_versioned(&key).await;
        if let Some((_, Some(bytes))) = &cached
            && let Ok(p) = pb::Profile::decode(bytes.as_ref())
        {
            return Ok(Some(p));
        }
        let Some(profile) = self.store.get(customer_id).await? else { return Ok(None) };
        let identifiers = match self.clients.identity() {
            Ok(mut c) => match c
                .get_customer(identity::GetCustomerRequest {
                    customer_id: customer_id.to_string(),
                    ..Default::default()
                })
                .await
            {
                Ok(r) => r.into_inner().identifiers.into_iter().filter_map(|h| h.identifier).collect(),
                Err(_) => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        let since: BTreeMap<String, i64> =
            self.store.segments().since(&profile.customer_id).await?.into_iter().collect();
        let wire = self.to_wire(&profile, identifiers, &since);
        if let Some((version, _)) = cached {
            self.cache.set_versioned(&key, version, Bytes::from(wire.encode_to_vec()), CACHE_TTL).await;
        }
        Ok(Some(wire))
    }

    fn to_wire(&self, p: &Profile, identifiers: Vec<common::Identifier>, since: &BTreeMap<String, i64>) -> pb::Profile {
        let settings = &self.store.settings().computed;
        let d = p.computed.derive(now_millis(), settings);
        let c = &p.computed;
        let computed = pb::ComputedTraits {
            order_count: c.order_count,
            total_revenue: money(c.total_revenue_minor, &c.currency),
            average_order_value: money(d.average_order_value_minor, &c.currency),
            first_order_at: c.first_order_at.map(timestamp),
            last_order_at: c.last_order_at.map(timestamp),
            recency_score: d.recency_score,
            frequency_score: d.frequency_score,
            monetary_score: d.monetary_score,
            lifetime_value: money(d.lifetime_value_minor, &c.currency),
            lifetime_value_model: "historic_aov_x_frequency_x_horizon".into(),
            high_value: self.store.is_high_value(d.lifetime_value_minor),
            engagement_score: d.engagement_score,
            open_cart: c.open_cart.as_ref().map(|cart| pb::Cart {
                items: cart
                    .items
                    .iter()
                    .map(|i| pb::CartItem {
                        sku: i.sku.clone(),
                        quantity: i.quantity,
                        price_minor: i.price_minor,
                        category: i.category.clone(),
                    })
                    .collect(),
                value: money(cart.value_minor, &cart.currency),
                updated_at: Some(timestamp(cart.updated_at)),
            }),
            interests: d.top_interests,
            preferred_channel: d.preferred_channel,
            lifecycle_stage: d.lifecycle_stage,
        };
        pb::Profile {
            customer_id: p.customer_id.clone(),
            identifiers,
            traits: Some(json_to_struct(Value::Object(p.traits.clone()))),
            computed: Some(computed),
            segments: p
                .segments
                .iter()
                .map(|id| pb::SegmentMembership {
                    segment_id: id.clone(),
                    name: self.store.segments().name_of(id).unwrap_or_default(),
                    since: since.get(id).copied().map(timestamp),
                })
                .collect(),
            consent: None,
            version: p.version,
            created_at: Some(timestamp(p.created_at)),
            updated_at: Some(timestamp(p.updated_at)),
        }
    }

    /// Marketing consent per contact channel, live from the consent service (never cached).
    async fn consent_summary(&self, customer_id: &str) -> pb::ConsentSummary {
        let mut client = match self.clients.consent() {
            Ok(c) => c,
            Err(e) => return pb::ConsentSummary { channels: vec![], unavailable_reason: e.message().to_string() },
        };
        let mut channels = Vec::new();
        for channel in [common::Channel::Email, common::Channel::Sms, common::Channel::Push, common::Channel::PhoneCall]
        {
            let request = consent::CheckRequest {
                customer: Some(common::CustomerRef {
                    r#ref: Some(common::customer_ref::Ref::CustomerId(customer_id.to_string())),
                }),
                channel: channel as i32,
                purpose: Some(common::Purpose { name: "marketing".into() }),
                ..Default::default()
            };
            match client.check(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    channels.push(pb::ChannelConsent {
                        channel: channel as i32,
                        purpose: "marketing".into(),
                        allowed: r.allowed,
                        reason: consent::CheckReason::try_from(r.reason)
                            .map(|x| x.as_str_name().trim_start_matches("CHECK_REASON_").to_ascii_lowercase())
                            .unwrap_or_default(),
                    });
                }
                Err(e) => {
                    return pb::ConsentSummary {
                        channels: vec![],
                        unavailable_reason: format!("{}: {}", e.code(), e.message()),
                    };
                }
            }
        }
        pb::ConsentSummary { channels, unavailable_reason: String::new() }
    }

    async fn get_one(&self, request: &pb::GetProfileRequest, field: &str, who: &str) -> Result<pb::Profile, Status> {
        let id = self.customer_of(&format!("{field}customer"), request.customer.as_ref()).await?;
        const KNOWN: [&str; 5] = ["identifiers", "traits", "computed", "segments", "consent"];
        let paths =
            rapport_rpc::convert::mask_paths(&format!("{field}field_mask"), request.field_mask.as_ref(), &KNOWN)?;
        let wants = |p: &str| paths.is_empty() || paths.iter().any(|x| x == p);
        let mut profile = self
            .load_wire(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("{field}customer: no profile for customer {id}")))?;
        if !wants("identifiers") {
            profile.identifiers.clear();
        }
        if !wants("traits") {
            profile.traits = None;
        }
        if !wants("computed") {
            profile.computed = None;
        }
        if !wants("segments") {
            profile.segments.clear();
        }
        if wants("consent") {
            profile.consent = Some(self.consent_summary(&id).await);
        }
        let fields = if paths.is_empty() { "all".to_string() } else { paths.join(",") };
        self.audit.record(who, "profile.read", &id, format!("purpose={}; fields={fields}", request.purpose.trim()));
        Ok(profile)
    }
}

#[tonic::async_trait]
impl ProfileService for Profiles {
    async fn subscribe(&self, request: Request<common::SubscribeRequest>) -> Result<Response<RecordStream>, Status> {
        rapport_rpc::feed::subscribe(&self.outbox, request.into_inner(), &self.shutdown).await.map(Response::new)
    }

    async fn track(&self, request: Request<pb::TrackRequest>) -> Result<Response<pb::TrackResponse>, Status> {
        let request = request.into_inner();
        if request.events.is_empty() || request.events.len() > MAX_BATCH {
            return Err(Error::invalid("events", format!("between 1 and {MAX_BATCH} events per call")).into());
        }
        let now = now_millis();
        let limit = self.store.settings().event_limit();
        let mut rejected = Vec::new();
        // Valid events grouped by who they are about, so each group is resolved and stored once.
        let mut groups: BTreeMap<(Who, String), Vec<(usize, NewEvent)>> = BTreeMap::new();
        for (i, e) in request.events.into_iter().enumerate() {
            let field = format!("events[{i}]");
            let checked = (|| -> Result<((Who, String), NewEvent), Error> {
                let name = e.name.trim();
                if !is_event_name(name) {
                    return Err(Error::invalid(
                        &format!("{field}.name"),
                        "1-64 lower-case letters, digits or `_`, starting with a letter",
                    ));
                }
                let occurred_at = e
                    .occurred_at
                    .as_ref()
                    .and_then(millis)
                    .ok_or_else(|| Error::invalid(&format!("{field}.occurred_at"), "is required"))?;
                if occurred_at > now + FUTURE_SLACK_MS {
                    return Err(Error::invalid(&format!("{field}.occurred_at"), "is more than 24 hours in the future"));
                }
                if e.message_id.len() > 128 {
                    return Err(Error::invalid(&format!("{field}.message_id"), "longer than 128 characters"));
                }
                let properties = e.properties.as_ref().map(struct_to_json).unwrap_or_default();
                check_known_properties(&field, name, &properties)?;
                let context = context_json(e.context.as_ref());
                let size = serde_json::to_vec(&properties).map(|v| v.len()).unwrap_or(0)
                    + serde_json::to_vec(&context).map(|v| v.len()).unwrap_or(0);
                if size > limit {
                    return Err(Error::invalid(&field, format!("{size} bytes is over the {limit}-byte limit")));
                }
                let who = who_of(&field, &e.customer_id, &e.identifiers)?;
                let source = context.get("source").and_then(Value::as_str).unwrap_or_default().to_string();
                let message_id = if e.message_id.trim().is_empty() {
                    format!("msg_{}", uuid::Uuid::now_v7().simple())
                } else {
                    e.message_id.trim().to_string()
                };
                Ok((
                    (who, source),
                    NewEvent {
                        message_id,
                        name: name.to_string(),
                        occurred_at,
                        properties: Value::Object(properties),
                        context,
                    },
                ))
            })();
            match checked {
                Ok((key, event)) => groups.entry(key).or_default().push((i, event)),
                Err(err) => rejected.push(pb::EventRejection { index: i as i32, reason: err.to_string() }),
            }
        }
        let mut results = Vec::new();
        let mut first_failure: Option<Status> = None;
        for ((who, source), events) in groups {
            // the newest event of the group: identifiers seen only before an erasure stay erased
            let seen_at = events.iter().map(|(_, e)| e.occurred_at).max().unwrap_or_else(now_millis);
            let customer = match self.resolve(&who, &source, seen_at).await {
                Ok(c) => c,
                Err(s) => {
                    for (i, _) in &events {
                        rejected.push(pb::EventRejection {
                            index: *i as i32,
                            reason: format!("events[{i}].{}", s.message()),
                        });
                    }
                    // a bad identifier or an erased person's old event is this group's answer; anything
                    // else (identity unreachable) is the call's
                    if !matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition) {
                        first_failure.get_or_insert(s);
                    }
                    continue;
                }
            };
            let batch: Vec<NewEvent> = events.iter().map(|(_, e)| e.clone()).collect();
            let appended = self.store.append(&customer, &batch, &source).await?;
            self.invalidate(&customer).await;
            for ((i, e), stored) in events.iter().zip(appended.stored) {
                results.push(pb::TrackResult {
                    index: *i as i32,
                    customer_id: customer.clone(),
                    message_id: e.message_id.clone(),
                    stored: stored.is_some(),
                });
            }
        }
        // Identity unreachable for every group: nothing was stored, say so rather than a list of rejections.
        if results.is_empty()
            && let Some(s) = first_failure
        {
            return Err(s);
        }
        results.sort_by_key(|r| r.index);
        rejected.sort_by_key(|r| r.index);
        Ok(Response::new(pb::TrackResponse { results, rejected }))
    }

    async fn identify(&self, request: Request<pb::IdentifyRequest>) -> Result<Response<pb::IdentifyResponse>, Status> {
        let request = request.into_inner();
        let source = request.source.trim().to_string();
        if source.is_empty() {
            return Err(Error::invalid("source", "is required: the system the traits come from").into());
        }
        let traits = request.traits.as_ref().map(struct_to_json).unwrap_or_default();
        if traits.is_empty() {
            return Err(Error::invalid("traits", "at least one trait is required").into());
        }
        if let Some(bad) = traits.keys().find(|k| k.is_empty() || k.len() > 64) {
            return Err(Error::invalid(&format!("traits.{bad}"), "trait names are 1-64 characters").into());
        }
        let now = now_millis();
        let occurred_at = match request.occurred_at.as_ref() {
            None => now,
            Some(t) => millis(t)
                .filter(|t| *t <= now + FUTURE_SLACK_MS)
                .ok_or_else(|| Error::invalid("occurred_at", "is out of range or more than 24 hours in the future"))?,
        };
        let size = serde_json::to_vec(&traits).map(|v| v.len()).unwrap_or(0);
        if size > self.store.settings().event_limit() {
            return Err(Error::invalid("traits", format!("{size} bytes is over the size limit")).into());
        }
        let who = who_of("request", &request.customer_id, &request.identifiers)
            .map_err(|_| Error::invalid("identifiers", "an identifier or a customer_id is required"))?;
        let customer = self.resolve(&who, &source, occurred_at).await?;
        let message_id = if request.message_id.trim().is_empty() {
            format!("msg_{}", uuid::Uuid::now_v7().simple())
        } else {
            request.message_id.trim().to_string()
        };
        let event = NewEvent {
            message_id,
            name: IDENTIFY_EVENT.into(),
            occurred_at,
            properties: Value::Object(traits),
            context: json!({"source": source}),
        };
        let appended = self.store.append(&customer, &[event], &source).await?;
        self.invalidate(&customer).await;
        Ok(Response::new(pb::IdentifyResponse { customer_id: customer, changed_traits: appended.changed_traits }))
    }

    async fn get_profile(&self, request: Request<pb::GetProfileRequest>) -> Result<Response<pb::Profile>, Status> {
        let who = caller(&request);
        let mut profile = self.get_one(request.get_ref(), "", &who).await?;
        rapport_auth::Mask::of(&request).apply_to_profile(&mut profile);
        Ok(Response::new(profile))
    }

    async fn batch_get_profiles(
        &self,
        request: Request<pb::BatchGetProfilesRequest>,
    ) -> Result<Response<pb::BatchGetProfilesResponse>, Status> {
        let who = caller(&request);
        let mask = rapport_auth::Mask::of(&request);
        let request = request.into_inner();
        if request.requests.is_empty() || request.requests.len() > 100 {
            return Err(Error::invalid("requests", "between 1 and 100 per call").into());
        }
        let mut results = Vec::new();
        for (i, r) in request.requests.iter().enumerate() {
            let outcome = match self.get_one(r, &format!("requests[{i}]."), &who).await {
                Ok(p) => pb::batch_get_profiles_result::Outcome::Profile(p),
                Err(s) => pb::batch_get_profiles_result::Outcome::Error(format!("{:?}: {}", s.code(), s.message())),
            };
            results.push(pb::BatchGetProfilesResult { index: i as i32, outcome: Some(outcome) });
        }
        let mut response = pb::BatchGetProfilesResponse { results };
        mask.apply_to_batch(&mut response);
        Ok(Response::new(response))
    }

    async fn get_timeline(
        &self,
        request: Request<pb::GetTimelineRequest>,
    ) -> Result<Response<pb::GetTimelineResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let id = self.customer_of("customer", request.customer.as_ref()).await?;
        let page = request.page.unwrap_or_default();
        let limit = page_size("page.page_size", page.page_size, 50, 1000)?;
        let before = if page.page_token.is_empty() {
            None
        } else {
            let parsed = page.page_token.split_once('.').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            Some(parsed.ok_or_else(|| Error::invalid("page.page_token", "is not a token this service issued"))?)
        };
        let range = request.range.unwrap_or_default();
        let from = range
            .start
            .as_ref()
            .map(|t| millis(t).ok_or_else(|| Error::invalid("range.start", "out of range")))
            .transpose()?;
        let to = range
            .end
            .as_ref()
            .map(|t| millis(t).ok_or_else(|| Error::invalid("range.end", "out of range")))
            .transpose()?;
        for (i, n) in request.names.iter().enumerate() {
            if !is_event_name(n) {
                return Err(Error::invalid(&format!("names[{i}]"), "is not an event name").into());
            }
        }
        let events = self.store.timeline(&id, &request.names, from, to, before, limit + 1).await?;
        let more = events.len() as i64 > limit;
        let events: Vec<_> = events.into_iter().take(limit as usize).collect();
        let next_page_token = match (more, events.last()) {
            (true, Some(last)) => format!("{}.{}", last.occurred_at, last.seq),
            _ => String::new(),
        };
        self.audit.record(&who, "profile.timeline_read", &id, String::new());
        Ok(Response::new(pb::GetTimelineResponse {
            events: events
                .into_iter()
                .map(|e| pb::Event {
                    message_id: e.message_id,
                    name: e.name,
                    occurred_at: Some(timestamp(e.occurred_at)),
                    received_at: Some(timestamp(e.received_at)),
                    properties: Some(json_to_struct(e.properties)),
                    context: Some(context_wire(&e.context)),
                    identifiers: vec![],
                    customer_id: e.customer_id,
                })
                .collect(),
            page: Some(common::PageResponse { next_page_token }),
        }))
    }

    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        let s = request.into_inner().segment.ok_or_else(|| Error::invalid("segment", "is required"))?;
        let def = self.store.segments().create(&s.name, &s.rule, &s.description).await?;
        self.kick_segments();
        Ok(Response::new(segment_wire(&def, 0)))
    }

    async fn update_segment(
        &self,
        request: Request<pb::UpdateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        let request = request.into_inner();
        let s = request.segment.ok_or_else(|| Error::invalid("segment", "is required"))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(
                Error::invalid("update_mask.paths", "name the fields to change: name, rule, description").into()
            );
        }
        rapport_rpc::convert::check_paths("update_mask", &paths, &["name", "rule", "description"])?;
        let has = |p: &str| paths.iter().any(|x| x == p);
        let def = self
            .store
            .segments()
            .update(
                &s.segment_id,
                has("name").then_some(s.name.as_str()),
                has("rule").then_some(s.rule.as_str()),
                has("description").then_some(s.description.as_str()),
            )
            .await?;
        self.kick_segments();
        let (count, _) = self.store.segments().members(&def.id, "", 0).await?;
        Ok(Response::new(segment_wire(&def, count)))
    }

    async fn get_segment(&self, request: Request<pb::GetSegmentRequest>) -> Result<Response<pb::Segment>, Status> {
        let id = request.into_inner().segment_id;
        let def = self.store.segments().get(&id).await?;
        let (count, _) = self.store.segments().members(&id, "", 0).await?;
        Ok(Response::new(segment_wire(&def, count)))
    }

    async fn list_segments(
        &self,
        _request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let mut segments = Vec::new();
        for def in self.store.segments().list().await? {
            let (count, _) = self.store.segments().members(&def.id, "", 0).await?;
            segments.push(segment_wire(&def, count));
        }
        Ok(Response::new(pb::ListSegmentsResponse { segments, page: Some(common::PageResponse::default()) }))
    }

    async fn delete_segment(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        self.store.segments().delete(&request.into_inner().segment_id).await?;
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    async fn list_segment_members(
        &self,
        request: Request<pb::ListSegmentMembersRequest>,
    ) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        let limit = page_size("page.page_size", page.page_size, 100, 1000)?;
        let (total, ids) = self.store.segments().members(&request.segment_id, &page.page_token, limit).await?;
        let next_page_token =
            if ids.len() as i64 == limit { ids.last().cloned().unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListSegmentMembersResponse {
            customer_ids: ids,
            total,
            page: Some(common::PageResponse { next_page_token }),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let request = request.into_inner();
        let id = self.customer_of("customer", request.customer.as_ref()).await?;
        let limit = page_size("page.page_size", request.page.unwrap_or_default().page_size, 100, 1000)?;
        let entries = Audit::list(self.store.db(), &id, limit).await?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    at: Some(timestamp(e.at)),
                    principal: e.principal,
                    action: e.action,
                    customer_id: e.customer_id,
                    detail: e.detail,
                })
                .collect(),
            page: Some(common::PageResponse::default()),
        }))
    }

    async fn export_customer(
        &self,
        request: Request<common::ExportCustomerRequest>,
    ) -> Result<Response<common::ExportCustomerResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        let id = self.customer_of("customer", request.customer.as_ref()).await?;
        let profile = self.store.get(&id).await?;
        let events = self.store.timeline(&id, &[], None, None, None, i64::MAX).await?;
        let data = json!({
            "customer_id": id,
            "traits": profile.as_ref().map(|p| Value::Object(p.traits.clone())),
            "computed": profile.as_ref().map(|p| serde_json::to_value(&p.computed).unwrap_or(Value::Null)),
            "segments": profile.as_ref().map(|p| p.segments.clone()),
            "events": events.iter().map(|e| json!({
                "message_id": e.message_id, "name": e.name, "occurred_at_ms": e.occurred_at,
                "received_at_ms": e.received_at, "properties": e.properties, "context": e.context,
            })).collect::<Vec<_>>(),
        });
        Audit::record(self.store.db(), &who, "customer.export", &id, "profile and timeline").await?;
        Ok(Response::new(common::ExportCustomerResponse { customer_id: id, data: Some(json_to_struct(data)) }))
    }

    async fn erase_customer(
        &self,
        request: Request<common::EraseCustomerRequest>,
    ) -> Result<Response<common::EraseCustomerResponse>, Status> {
        let who = caller(&request);
        let request = request.into_inner();
        if request.reason.trim().is_empty() {
            return Err(Error::invalid("reason", "is required for the audit log").into());
        }
        let id = self.customer_of("customer", request.customer.as_ref()).await?;
        let n = self.store.erase(&id).await?;
        self.invalidate(&id).await;
        Audit::record(
            self.store.db(),
            &who,
            "customer.erase",
            &id,
            &format!("{n} rows; reason: {}", request.reason.trim()),
        )
        .await?;
        Ok(Response::new(common::EraseCustomerResponse { records_erased: n as i64 }))
    }
}

impl Profiles {
    fn kick_segments(&self) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.reevaluate_all(500).await {
                tracing::warn!(error = %e, "segment evaluation pass failed");
            }
        });
    }
}

fn segment_wire(d: &SegmentDef, member_count: i64) -> pb::Segment {
    pb::Segment {
        segment_id: d.id.clone(),
        name: d.name.clone(),
        rule: d.rule.clone(),
        description: d.description.clone(),
        member_count,
        created_at: Some(timestamp(d.created_at)),
        updated_at: Some(timestamp(d.updated_at)),
    }
}

/// Outbox payloads as the protobuf events of the contract.
pub struct ProtoEvents;

fn message<M: Message + Name>(topic: &str, key: &str, m: &M) -> OutboxMessage {
    OutboxMessage::new(topic, key, M::full_name(), m.encode_to_vec())
}

impl ProfileEvents for ProtoEvents {
    fn appended(&self, customer_id: &str, events: &[(i64, &NewEvent)]) -> Vec<OutboxMessage> {
        let event = pb::EventsAppended {
            customer_id: customer_id.to_string(),
            events: events
                .iter()
                .map(|(_, e)| pb::Event {
                    message_id: e.message_id.clone(),
                    name: e.name.clone(),
                    occurred_at: Some(timestamp(e.occurred_at)),
                    received_at: Some(timestamp(now_millis())),
                    properties: Some(json_to_struct(e.properties.clone())),
                    context: Some(context_wire(&e.context)),
                    identifiers: vec![],
                    customer_id: customer_id.to_string(),
                })
                .collect(),
        };
        vec![message("profile.events_appended", customer_id, &event)]
    }

    fn traits_changed(&self, profile: &Profile, names: &[String]) -> Vec<OutboxMessage> {
        let traits: Map<String, Value> =
            names.iter().filter_map(|n| profile.traits.get(n).map(|v| (n.clone(), v.clone()))).collect();
        let event = pb::TraitsChanged {
            customer_id: profile.customer_id.clone(),
            names: names.to_vec(),
            traits: Some(json_to_struct(Value::Object(traits))),
        };
        vec![message("profile.traits_changed", &profile.customer_id, &event)]
    }

    fn merged(&self, survivor: &str, merged: &str) -> Vec<OutboxMessage> {
        let event = pb::ProfilesMerged { survivor_customer_id: survivor.into(), merged_customer_id: merged.into() };
        vec![message("profile.merged", survivor, &event)]
    }

    fn segments_changed(
        &self,
        customer_id: &str,
        entered: &[(String, String)],
        exited: &[(String, String)],
    ) -> Vec<OutboxMessage> {
        let mut out = Vec::new();
        for (id, name) in entered {
            let e = pb::SegmentEntered {
                customer_id: customer_id.into(),
                segment_id: id.clone(),
                segment_name: name.clone(),
            };
            out.push(message("profile.segment_entered", customer_id, &e));
        }
        for (id, name) in exited {
            let e = pb::SegmentExited {
                customer_id: customer_id.into(),
                segment_id: id.clone(),
                segment_name: name.clone(),
            };
            out.push(message("profile.segment_exited", customer_id, &e));
        }
        out
    }
}
