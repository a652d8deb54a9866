//! The gRPC handlers: decode and validate, call the stores and the queue, encode. Bad input is
//! INVALID_ARGUMENT naming the field (`messages[3].to: is not an email address`).

use std::sync::Arc;

use prost::Message as _;
use rapport_errors::{Error, ErrorCode};
use rapport_proto::common::v1::{self as common, Channel, Identifier, MessageClass, customer_ref::Ref};
use rapport_proto::delivery::v1::{self as pb, delivery_service_server::DeliveryService};
use rapport_proto::identity::v1 as identity;
use rapport_rpc::convert::{json_to_struct, millis, page_size, struct_to_json, timestamp};
use rapport_rpc::feed::RecordStream;
use rapport_storage::{Outbox, now_millis};
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::core::{Core, channel_name};
use crate::domain::address::{self, AddressKind};
use crate::domain::template::{Compiled, is_locale};
use crate::store::messages::{Change, HistoryRow, MessageRow, NewMessage};
use crate::store::{event, new_id, page_position};

/// Messages in one SendBatch at most.
pub const MAX_BATCH: usize = 1000;

/// The delivery service.
pub struct Delivery {
    pub core: Arc<Core>,
    pub outbox: Outbox,
    pub shutdown: tokio_util::sync::CancellationToken,
}

fn id_field(field: &str, v: &str, max: usize) -> Result<String, Error> {
    let v = v.trim();
    if v.len() > max || v.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(field, format!("at most {max} visible characters")));
    }
    Ok(v.to_string())
}

/// Who a message is for, as Send resolved it.
struct Addressee {
    customer_id: String,
    recipient: String,
}

impl Delivery {
    /// The customer a reference names (identifiers through identity, creating nobody). An identifier
    /// nobody holds is returned as the contact point itself when it is the channel's kind of address.
    async fn customer_of(
        &self,
        field: &str,
        r: Option<&common::CustomerRef>,
    ) -> Result<(String, Option<Identifier>), Status> {
        match r.and_then(|r| r.r#ref.as_ref()) {
            Some(Ref::CustomerId(id)) if !id.trim().is_empty() => {
                Ok((id_field(&format!("{field}.customer_id"), id, 128)?, None))
            }
            Some(Ref::Identifier(i)) if !i.value.trim().is_empty() => {
                let request = identity::LookupRequest { identifier: Some(i.clone()) };
                match self.core.clients.identity()?.lookup(request).await {
                    Ok(r) => Ok((r.into_inner().customer_id, Some(i.clone()))),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok((String::new(), Some(i.clone()))),
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        Err(Status::invalid_argument(format!("{field}.{}", s.message())))
                    }
                    Err(s) => Err(s),
                }
            }
            _ => Err(Error::invalid(field, "is required: a customer_id or an identifier").into()),
        }
    }

    /// The customer ids a data-subject request is about (the customer and its aliases).
    async fn subject_ids(&self, r: Option<&common::CustomerRef>) -> Result<Vec<String>, Status> {
        let (id, _) = self.customer_of("customer", r).await?;
        if id.is_empty() {
            return Err(Error::not_found("customer").into());
        }
        let mut ids = vec![id.clone()];
        if let Ok(mut c) = self.core.clients.identity()
            && let Ok(found) = c.get_customer(identity::GetCustomerRequest { customer_id: id, read_mask: None }).await
        {
            let found = found.into_inner();
            for a in std::iter::once(found.customer_id).chain(found.aliases) {
                if !ids.contains(&a) {
                    ids.push(a);
                }
            }
        }
        Ok(ids)
    }

    /// Validates one SendRequest and resolves who it goes to; `field` prefixes error fields.
    async fn admit(&self, field: &str, r: &pb::SendRequest) -> Result<NewMessage, Status> {
        let f = |name: &str| if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
        let settings = &self.core.settings;
        let channel = Channel::try_from(r.channel)
            .map_err(|_| Error::invalid(&f("channel"), format!("unknown channel {}", r.channel)))?;
        let kind = address::address_kind(channel).ok_or_else(|| {
            Error::invalid(&f("channel"), format!("{} is not a channel delivery sends on", channel.as_str_name()))
        })?;
        if !self.core.registry.serves(channel) {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("{}: no provider is configured for {}", f("channel"), channel.as_str_name()),
            )
            .into());
        }
        let key = r.idempotency_key.trim();
        if key.is_empty() {
            return Err(Error::invalid(&f("idempotency_key"), "is required: the same key never sends twice").into());
        }
        let key = id_field(&f("idempotency_key"), key, 200)?;
        let template_id = id_field(&f("template_id"), &r.template_id, 128)?;
        let has_content =
            r.content.as_ref().is_some_and(|c| !(c.subject.is_empty() && c.html.is_empty() && c.text.is_empty()));
        match (template_id.is_empty(), has_content) {
            (true, false) => {
                return Err(Error::invalid(&f("template_id"), "is required unless content is given").into());
            }
            (false, true) => {
                return Err(Error::invalid(&f("content"), "give a template_id or content, not both").into());
            }
            _ => {}
        }
        if let Some(c) = &r.content {
            let inline = [pb::LocalizedContent {
                locale: String::new(),
                subject: c.subject.clone(),
                html: c.html.clone(),
                text: c.text.clone(),
            }];
            if c.subject.len() + c.html.len() + c.text.len() > settings.max_template_bytes {
                return Err(Error::invalid(
                    &f("content"),
                    format!("larger than {} bytes", settings.max_template_bytes),
                )
                .into());
            }
            Compiled::new(&inline, "", settings.template_fuel).map_err(|e| {
                Error::invalid(&f(&format!("content.{}", e.field.rsplit('.').next().unwrap_or_default())), e.problem)
            })?;
            if channel == Channel::Email && c.subject.is_empty() {
                return Err(Error::invalid(&f("content.subject"), "an email needs a subject").into());
            }
        }
        let mut template_version = 0;
        if !template_id.is_empty() {
            let t = self
                .core
                .templates
                .get(&template_id, 0)
                .await?
                .ok_or_else(|| Error::invalid(&f("template_id"), format!("no template `{template_id}`")))?;
            if t.channel != channel as i32 {
                return Err(Error::invalid(
                    &f("template_id"),
                    format!("`{template_id}` is a {} template", channel_name(t.channel)),
                )
                .into());
            }
            template_version = t.version;
        }
        let class = match MessageClass::try_from(r.message_class) {
            Ok(MessageClass::Unspecified) => MessageClass::Marketing,
            Ok(c) => c,
            Err(_) => {
                return Err(Error::invalid(&f("message_class"), format!("unknown class {}", r.message_class)).into());
            }
        };
        let purpose = match r.purpose.trim() {
            "" if class == MessageClass::Service => "service_messages".to_string(),
            "" => "marketing".to_string(),
            p if p.len() <= 64 && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') => {
                p.to_string()
            }
            p => return Err(Error::invalid(&f("purpose"), format!("`{p}` is not a purpose name")).into()),
        };
        if !r.locale.is_empty() && !is_locale(&r.locale) {
            return Err(Error::invalid(&f("locale"), format!("`{}` is not a BCP 47 language tag", r.locale)).into());
        }
        let not_before = match &r.not_before {
            Some(t) => millis(t).ok_or_else(|| Error::invalid(&f("not_before"), "is not a time"))?,
            None => 0,
        };
        let decision_id = id_field(&f("decision_id"), &r.decision_id, 64)?;
        let offer_id = id_field(&f("offer_id"), &r.offer_id, 128)?;
        let campaign_id = id_field(&f("campaign_id"), &r.campaign_id, 128)?;
        if r.data.as_ref().is_some_and(|d| d.encoded_len() > 64 * 1024) {
            return Err(Error::invalid(&f("data"), "larger than 64 KiB").into());
        }
        if let Some(d) = &r.data
            && let Some(k) = ["profile", "message"].iter().find(|k| d.fields.contains_key(**k))
        {
            return Err(Error::invalid(&f(&format!("data.{k}")), "is reserved (the service fills it)").into());
        }
        // An explicit `to` first: it is validated whether or not a profile address exists.
        let to = if r.to.trim().is_empty() {
            None
        } else {
            Some(address::parse(kind, &r.to, &settings.phone_default_region).map_err(|e| Error::invalid(&f("to"), e))?)
        };
        let addressee = self.addressee(&f("customer"), r.customer.as_ref(), kind, to).await?;
        let mut request = r.clone();
        request.customer = None;
        request.to = String::new();
        Ok(NewMessage {
            message_id: new_id("msg"),
            idempotency_key: key,
            customer_id: addressee.customer_id,
            channel: channel as i32,
            message_class: class as i32,
            purpose,
            recipient: addressee.recipient,
            template_id,
            template_version,
            locale: r.locale.trim().to_string(),
            request: request.encode_to_vec(),
            decision_id,
            offer_id,
            campaign_id,
            next_attempt_at: not_before.max(now_millis()),
        })
    }

    async fn addressee(
        &self,
        field: &str,
        customer: Option<&common::CustomerRef>,
        kind: AddressKind,
        to: Option<address::Recipient>,
    ) -> Result<Addressee, Status> {
        let (customer_id, identifier) = self.customer_of(field, customer).await?;
        let wanted = address::identifier_type_of(kind);
        if customer_id.is_empty() {
            // Nobody holds the identifier: it can still be the address itself (a double opt-in mail).
            let Some(i) = identifier.filter(|i| Some(i.r#type) == wanted.map(|t| t as i32)) else {
                return Err(Error::not_found(format!("{field}: a customer with this identifier")).into());
            };
            let recipient = match to {
                Some(t) => t,
                None => address::parse(kind, &i.value, &self.core.settings.phone_default_region)
                    .map_err(|e| Error::invalid(&format!("{field}.identifier.value"), e))?,
            };
            return Ok(Addressee { customer_id, recipient: recipient.as_str().to_string() });
        }
        if let Some(t) = to {
            return Ok(Addressee { customer_id, recipient: t.as_str().to_string() });
        }
        let Some(wanted) = wanted else { return Ok(Addressee { customer_id, recipient: String::new() }) };
        // The identifier the caller named, when it is the right kind; else the customer's first one.
        if let Some(i) = identifier.filter(|i| i.r#type == wanted as i32)
            && let Ok(r) = address::parse(kind, &i.value, &self.core.settings.phone_default_region)
        {
            return Ok(Addressee { customer_id, recipient: r.as_str().to_string() });
        }
        let found = self
            .core
            .clients
            .identity()?
            .get_customer(identity::GetCustomerRequest {
                customer_id: customer_id.clone(),
                read_mask: Some(prost_types::FieldMask { paths: vec!["identifiers".into()] }),
            })
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    Error::not_found(format!("{field}: customer")).into()
                } else {
                    s
                }
            })?
            .into_inner();
        let held = found
            .identifiers
            .iter()
            .filter_map(|h| h.identifier.as_ref())
            .filter(|i| i.r#type == wanted as i32)
            .find_map(|i| address::parse(kind, &i.value, &self.core.settings.phone_default_region).ok());
        match held {
            Some(r) => Ok(Addressee { customer_id: found.customer_id, recipient: r.as_str().to_string() }),
            None => Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "{field}: the customer has no {} on record; pass `to`",
                    wanted.as_str_name().trim_start_matches("IDENTIFIER_TYPE_").to_ascii_lowercase()
                ),
            )
            .into()),
        }
    }

    /// Queues admitted messages; duplicates come back as the stored message.
    async fn enqueue(&self, rows: Vec<NewMessage>) -> Result<Vec<(MessageRow, bool)>, Status> {
        let core = self.core.clone();
        let stored = self
            .core
            .messages
            .insert(&rows, |m| {
                let row = MessageRow {
                    seq: 0,
                    message_id: m.message_id.clone(),
                    idempotency_key: m.idempotency_key.clone(),
                    customer_id: m.customer_id.clone(),
                    channel: i64::from(m.channel),
                    message_class: i64::from(m.message_class),
                    purpose: m.purpose.clone(),
                    recipient: String::new(),
                    template_id: m.template_id.clone(),
                    template_version: m.template_version,
                    locale: String::new(),
                    request: Vec::new(),
                    decision_id: m.decision_id.clone(),
                    offer_id: m.offer_id.clone(),
                    campaign_id: m.campaign_id.clone(),
                    status: 1,
                    provider: String::new(),
                    attempts: 0,
                    next_attempt_at: m.next_attempt_at,
                    lease_owner: None,
                    lease_until: None,
                    handoff_provider: None,
                    handoff_at: None,
                    subject: String::new(),
                    last_error: String::new(),
                    dead: 0,
                    created_at: 0,
                    updated_at: 0,
                };
                vec![core.status_event(&row, pb::MessageStatus::Queued, "")]
            })
            .await?;
        self.core.wake.notify_waiters();
        Ok(stored)
    }

    async fn wire(&self, rows: Vec<MessageRow>) -> Result<Vec<pb::Message>, Status> {
        let ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
        let history = self.core.messages.history(&ids).await?;
        Ok(rows.into_iter().map(|r| message_wire(r, &history)).collect())
    }
}

fn message_wire(r: MessageRow, history: &[HistoryRow]) -> pb::Message {
    pb::Message {
        history: history
            .iter()
            .filter(|h| h.message_id == r.message_id)
            .map(|h| pb::StatusChange { status: h.status as i32, at: Some(timestamp(h.at)), detail: h.detail.clone() })
            .collect(),
        message_id: r.message_id,
        customer_id: r.customer_id,
        channel: r.channel as i32,
        status: r.status as i32,
        template_id: r.template_id,
        template_version: r.template_version,
        decision_id: r.decision_id,
        offer_id: r.offer_id,
        campaign_id: r.campaign_id,
        message_class: r.message_class as i32,
        provider: r.provider,
        attempts: r.attempts as i32,
        created_at: Some(timestamp(r.created_at)),
        subject: r.subject,
    }
}

fn sent(row: &MessageRow, duplicate: bool) -> pb::SendResponse {
    pb::SendResponse { message_id: row.message_id.clone(), status: row.status as i32, duplicate }
}

fn validate_template(t: &pb::Template, settings: &crate::settings::DeliverySettings) -> Result<(), Error> {
    let id = t.template_id.trim();
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::invalid("template.template_id", "1-128 letters, digits, -, _ and ."));
    }
    let channel = Channel::try_from(t.channel).unwrap_or_default();
    if address::address_kind(channel).is_none() {
        return Err(Error::invalid("template.channel", "a channel delivery sends on is required"));
    }
    if t.locales.is_empty() {
        return Err(Error::invalid("template.locales", "at least one locale is required"));
    }
    let mut seen = Vec::new();
    for (i, l) in t.locales.iter().enumerate() {
        if !is_locale(&l.locale) {
            return Err(Error::invalid(
                &format!("template.locales[{i}].locale"),
                format!("`{}` is not a BCP 47 language tag", l.locale),
            ));
        }
        let norm = l.locale.to_ascii_lowercase();
        if seen.contains(&norm) {
            return Err(Error::invalid(
                &format!("template.locales[{i}].locale"),
                format!("`{}` appears twice", l.locale),
            ));
        }
        seen.push(norm);
        if l.subject.len() + l.html.len() + l.text.len() > settings.max_template_bytes {
            return Err(Error::invalid(
                &format!("template.locales[{i}]"),
                format!("larger than {} bytes", settings.max_template_bytes),
            ));
        }
        if channel == Channel::Email && l.subject.trim().is_empty() {
            return Err(Error::invalid(&format!("template.locales[{i}].subject"), "an email template needs a subject"));
        }
        if l.html.is_empty() && l.text.is_empty() {
            return Err(Error::invalid(&format!("template.locales[{i}].text"), "a body (html or text) is required"));
        }
        if matches!(channel, Channel::Sms | Channel::Push) && l.text.is_empty() {
            return Err(Error::invalid(
                &format!("template.locales[{i}].text"),
                "SMS and push send the text part; it is required",
            ));
        }
    }
    if !t.default_locale.is_empty() && !t.locales.iter().any(|l| l.locale.eq_ignore_ascii_case(&t.default_locale)) {
        return Err(Error::invalid(
            "template.default_locale",
            format!("`{}` is not one of the locales", t.default_locale),
        ));
    }
    Compiled::new(&t.locales, &t.default_locale, settings.template_fuel)
        .map_err(|e| Error::invalid(&format!("template.{}", e.field), e.problem))?;
    Ok(())
}

/// Cuts `rows` (read with one extra) to `limit`; the next page token, from the last row kept.
fn next_token<T>(rows: &mut Vec<T>, limit: i64, token: impl Fn(&T) -> String) -> String {
    if rows.len() as i64 <= limit {
        return String::new();
    }
    rows.truncate(limit as usize);
    rows.last().map(token).unwrap_or_default()
}

/// A `<time>:<id>` page token.
fn pair_token(token: &str) -> Result<Option<(i64, String)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page.page_token", "is not a page token of this list");
    let (at, id) = token.split_once(':').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, id.to_string())))
}

fn page_of(p: Option<&common::PageRequest>) -> (i32, String) {
    p.map(|p| (p.page_size, p.page_token.clone())).unwrap_or_default()
}

#[tonic::async_trait]
impl DeliveryService for Delivery {
    async fn subscribe(&self, request: Request<common::SubscribeRequest>) -> Result<Response<RecordStream>, Status> {
        rapport_rpc::feed::subscribe(&self.outbox, request.into_inner(), &self.shutdown).await.map(Response::new)
    }

    async fn send(&self, request: Request<pb::SendRequest>) -> Result<Response<pb::SendResponse>, Status> {
        let r = request.into_inner();
        if let Some(existing) =
            self.core.messages.by_keys(&[r.idempotency_key.trim().to_string()]).await?.into_iter().next()
        {
            return Ok(Response::new(sent(&existing, true)));
        }
        let row = self.admit("", &r).await?;
        let stored = self.enqueue(vec![row]).await?;
        let (row, duplicate) = stored.into_iter().next().ok_or_else(|| Error::internal("nothing queued"))?;
        Ok(Response::new(sent(&row, duplicate)))
    }

    async fn send_batch(
        &self,
        request: Request<pb::SendBatchRequest>,
    ) -> Result<Response<pb::SendBatchResponse>, Status> {
        let r = request.into_inner();
        if r.messages.is_empty() || r.messages.len() > MAX_BATCH {
            return Err(Error::invalid("messages", format!("between 1 and {MAX_BATCH} messages per call")).into());
        }
        let keys: Vec<String> = r.messages.iter().map(|m| m.idempotency_key.trim().to_string()).collect();
        let known: std::collections::HashMap<String, MessageRow> =
            self.core.messages.by_keys(&keys).await?.into_iter().map(|m| (m.idempotency_key.clone(), m)).collect();
        let mut results: Vec<Option<pb::send_batch_result::Outcome>> = vec![None; r.messages.len()];
        let mut admitted = Vec::new();
        let mut positions = Vec::new();
        let mut first_key: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, m) in r.messages.iter().enumerate() {
            if let Some(row) = known.get(&keys[i]) {
                results[i] = Some(pb::send_batch_result::Outcome::Sent(sent(row, true)));
                continue;
            }
            if !keys[i].is_empty()
                && let Some(j) = first_key.get(&keys[i])
            {
                // The same key twice in one batch: the later one is the earlier's duplicate.
                positions.push((i, Some(*j)));
                continue;
            }
            match self.admit(&format!("messages[{i}]"), m).await {
                Ok(row) => {
                    first_key.insert(keys[i].clone(), i);
                    admitted.push(row);
                    positions.push((i, None));
                }
                Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Internal) => return Err(s),
                Err(s) => {
                    let code = format!("{:?}", s.code()).to_ascii_uppercase();
                    let code = match s.code() {
                        tonic::Code::InvalidArgument => "INVALID_ARGUMENT".to_string(),
                        tonic::Code::NotFound => "NOT_FOUND".to_string(),
                        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION".to_string(),
                        _ => code,
                    };
                    results[i] = Some(pb::send_batch_result::Outcome::Error(format!("{code}: {}", s.message())));
                }
            }
        }
        let stored = if admitted.is_empty() { Vec::new() } else { self.enqueue(admitted).await? };
        let mut stored = stored.into_iter();
        let mut by_index: std::collections::HashMap<usize, pb::SendResponse> = std::collections::HashMap::new();
        for (i, dup_of) in positions {
            match dup_of {
                None => {
                    if let Some((row, duplicate)) = stored.next() {
                        let resp = sent(&row, duplicate);
                        by_index.insert(i, resp.clone());
                        results[i] = Some(pb::send_batch_result::Outcome::Sent(resp));
                    }
                }
                Some(j) => {
                    if let Some(first) = by_index.get(&j) {
                        results[i] = Some(pb::send_batch_result::Outcome::Sent(pb::SendResponse {
                            duplicate: true,
                            ..first.clone()
                        }));
                    }
                }
            }
        }
        let results = results
            .into_iter()
            .enumerate()
            .map(|(i, outcome)| pb::SendBatchResult { index: i as i32, outcome })
            .collect();
        Ok(Response::new(pb::SendBatchResponse { results }))
    }

    async fn get_message(&self, request: Request<pb::GetMessageRequest>) -> Result<Response<pb::Message>, Status> {
        let id = request.into_inner().message_id;
        if id.trim().is_empty() {
            return Err(Error::invalid("message_id", "is required").into());
        }
        let row = self.core.messages.get(id.trim()).await?.ok_or_else(|| Error::not_found("message"))?;
        let mut wired = self.wire(vec![row]).await?;
        Ok(Response::new(wired.remove(0)))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let r = request.into_inner();
        let (size, token) = page_of(r.page.as_ref());
        let limit = page_size("page.page_size", size, 50, 1000)?;
        let before = page_position("page.page_token", &token)?;
        let (customer, _) = self.customer_of("customer", r.customer.as_ref()).await?;
        if customer.is_empty() {
            return Ok(Response::new(pb::ListMessagesResponse::default()));
        }
        let rows = self.core.messages.of_customer(&customer, before, limit + 1).await?;
        Ok(Response::new(self.page(rows, limit).await?))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let r = request.into_inner();
        let (size, token) = page_of(r.page.as_ref());
        let limit = page_size("page.page_size", size, 50, 1000)?;
        let before = page_position("page.page_token", &token)?;
        let rows = self.core.messages.dead(before, limit + 1).await?;
        Ok(Response::new(self.page(rows, limit).await?))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let r = request.into_inner();
        for (i, id) in r.message_ids.iter().enumerate() {
            if id.trim().is_empty() {
                return Err(Error::invalid(&format!("message_ids[{i}]"), "must not be empty").into());
            }
        }
        let core = self.core.clone();
        let requeued = self
            .core
            .messages
            .replay(&r.message_ids, |row| {
                vec![core.status_event(row, pb::MessageStatus::Queued, "replayed from the dead letters")]
            })
            .await?;
        self.core.wake.notify_waiters();
        Ok(Response::new(pb::ReplayDeadLettersResponse { requeued }))
    }

    async fn put_template(&self, request: Request<pb::PutTemplateRequest>) -> Result<Response<pb::Template>, Status> {
        let mut t = request.into_inner().template.ok_or_else(|| Error::invalid("template", "is required"))?;
        t.template_id = t.template_id.trim().to_string();
        validate_template(&t, &self.core.settings)?;
        if t.default_locale.is_empty() {
            t.default_locale = t.locales[0].locale.clone();
        }
        Ok(Response::new(self.core.templates.put(t).await?))
    }

    async fn get_template(&self, request: Request<pb::GetTemplateRequest>) -> Result<Response<pb::Template>, Status> {
        let r = request.into_inner();
        if r.template_id.trim().is_empty() {
            return Err(Error::invalid("template_id", "is required").into());
        }
        if r.version < 0 {
            return Err(Error::invalid("version", "must not be negative (0 is the latest)").into());
        }
        let t = self
            .core
            .templates
            .get(r.template_id.trim(), r.version)
            .await?
            .ok_or_else(|| Error::not_found("template"))?;
        Ok(Response::new(t))
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let (size, token) = page_of(request.into_inner().page.as_ref());
        let limit = page_size("page.page_size", size, 50, 1000)?;
        let mut templates = self.core.templates.list(&token, limit + 1).await?;
        let next = next_token(&mut templates, limit, |t| t.template_id.clone());
        Ok(Response::new(pb::ListTemplatesResponse {
            templates,
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn preview_template(
        &self,
        request: Request<pb::PreviewTemplateRequest>,
    ) -> Result<Response<pb::Rendered>, Status> {
        let r = request.into_inner();
        if r.template_id.trim().is_empty() {
            return Err(Error::invalid("template_id", "is required").into());
        }
        if !r.locale.is_empty() && !is_locale(&r.locale) {
            return Err(Error::invalid("locale", format!("`{}` is not a BCP 47 language tag", r.locale)).into());
        }
        let compiled = self.core.compiled(r.template_id.trim(), 0).await.map_err(|e| match e.code() {
            ErrorCode::NotFound => Status::not_found("template not found"),
            _ => Status::from(e),
        })?;
        let mut data = r.data.as_ref().map(struct_to_json).unwrap_or_default();
        if r.customer.as_ref().is_some_and(|c| c.r#ref.is_some()) {
            let (customer, _) = self.customer_of("customer", r.customer.as_ref()).await?;
            if customer.is_empty() {
                return Err(Error::not_found("customer").into());
            }
            let p = self
                .core
                .clients
                .profile()?
                .get_profile(rapport_proto::profile::v1::GetProfileRequest {
                    customer: Some(common::CustomerRef { r#ref: Some(Ref::CustomerId(customer.clone())) }),
                    field_mask: Some(prost_types::FieldMask {
                        paths: vec!["traits".into(), "computed".into(), "segments".into()],
                    }),
                    purpose: "delivery_preview".into(),
                })
                .await;
            let profile = match p {
                Ok(p) => {
                    let p = p.into_inner();
                    let mut m = p.traits.as_ref().map(struct_to_json).unwrap_or_default();
                    m.insert("customer_id".into(), json!(p.customer_id));
                    m.insert("segments".into(), json!(p.segments.iter().map(|s| s.name.clone()).collect::<Vec<_>>()));
                    serde_json::Value::Object(m)
                }
                Err(s) if s.code() == tonic::Code::NotFound => json!({"customer_id": customer}),
                Err(s) => return Err(s),
            };
            data.insert("profile".into(), profile);
        }
        data.entry("offer".to_string()).or_insert_with(|| json!({}));
        data.entry("message".to_string())
            .or_insert_with(|| json!({"id": "msg_preview", "unsubscribe_url": "https://example.invalid/unsubscribe"}));
        let rendered = compiled
            .render(&r.locale, &serde_json::Value::Object(data))
            .map_err(|e| Error::new(ErrorCode::FailedPrecondition, format!("template: {}: {}", e.field, e.problem)))?;
        let sms = rendered.sms();
        Ok(Response::new(pb::Rendered {
            subject: rendered.subject,
            html: rendered.html,
            text: rendered.text,
            sms_characters: sms.characters as i32,
            sms_segments: sms.segments as i32,
            locale: rendered.locale,
        }))
    }

    async fn list_providers(
        &self,
        _request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let mut providers = Vec::new();
        for (slot, channels) in self.core.registry.list() {
            let (healthy, last_error) = slot.health();
            for c in channels {
                providers.push(pb::Provider {
                    name: slot.provider.name().to_string(),
                    channel: c,
                    kind: slot.provider.kind().to_string(),
                    primary: slot.primary,
                    healthy,
                    last_error: last_error.clone(),
                });
            }
        }
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = request.into_inner();
        let (size, token) = page_of(r.page.as_ref());
        let limit = page_size("page.page_size", size, 50, 1000)?;
        let due_before = match &r.due_before {
            Some(t) => millis(t).ok_or_else(|| Error::invalid("due_before", "is not a time"))?,
            None => i64::MAX,
        };
        let after = pair_token(&token)?;
        let mut rows = self.core.channels.tasks(due_before, r.include_claimed, after, limit + 1).await?;
        let next = next_token(&mut rows, limit, |t| format!("{}:{}", t.due_at, t.task_id));
        Ok(Response::new(pb::ListTasksResponse {
            tasks: rows.into_iter().map(task_wire).collect(),
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn claim_task(&self, request: Request<pb::ClaimTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let r = request.into_inner();
        if r.task_id.trim().is_empty() {
            return Err(Error::invalid("task_id", "is required").into());
        }
        let agent = id_field("agent_id", &r.agent_id, 128)?;
        if agent.is_empty() {
            return Err(Error::invalid("agent_id", "is required").into());
        }
        Ok(Response::new(task_wire(self.core.channels.claim_task(r.task_id.trim(), &agent).await?)))
    }

    async fn complete_task(&self, request: Request<pb::CompleteTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let r = request.into_inner();
        if r.task_id.trim().is_empty() {
            return Err(Error::invalid("task_id", "is required").into());
        }
        let agent = id_field("agent_id", &r.agent_id, 128)?;
        if agent.is_empty() {
            return Err(Error::invalid("agent_id", "is required").into());
        }
        let outcome = r.outcome.trim();
        if outcome.is_empty()
            || outcome.len() > 64
            || !outcome.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        {
            return Err(Error::invalid(
                "outcome",
                "1-64 lower-case letters, digits and _ (reached, no_answer, accepted, ...)",
            )
            .into());
        }
        if r.notes.len() > 4000 {
            return Err(Error::invalid("notes", "at most 4,000 characters").into());
        }
        let task = self.core.channels.complete_task(r.task_id.trim(), &agent, outcome, &r.notes).await?;
        let message = self.core.messages.get(&task.message_id).await?;
        let done = pb::TaskCompleted {
            task_id: task.task_id.clone(),
            message_id: task.message_id.clone(),
            customer_id: task.customer_id.clone(),
            agent_id: agent.clone(),
            outcome: outcome.to_string(),
            decision_id: task.decision_id.clone(),
            offer_id: task.offer_id.clone(),
            at: Some(timestamp(now_millis())),
            campaign_id: message.as_ref().map(|m| m.campaign_id.clone()).unwrap_or_default(),
        };
        let completed = event(crate::store::TOPIC_TASK_COMPLETED, &task.customer_id, &done);
        let applied = match &message {
            Some(m) => {
                let change = Change {
                    message_id: m.message_id.clone(),
                    status: pb::MessageStatus::Delivered as i32,
                    from: vec![pb::MessageStatus::Sent as i32],
                    detail: format!("call made by {agent}: {outcome}"),
                    history: true,
                    events: vec![
                        self.core.status_event(m, pb::MessageStatus::Delivered, &format!("call outcome: {outcome}")),
                        completed.clone(),
                    ],
                    ..Default::default()
                };
                self.core.messages.apply(&[change]).await?.first().copied().unwrap_or(false)
            }
            None => false,
        };
        if !applied {
            self.core.messages.publish(&[completed]).await?;
        }
        Ok(Response::new(task_wire(task)))
    }

    async fn list_inbox(
        &self,
        request: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let r = request.into_inner();
        let (size, token) = page_of(r.page.as_ref());
        let limit = page_size("page.page_size", size, 50, 1000)?;
        let before = pair_token(&token)?;
        let (customer, _) = self.customer_of("customer", r.customer.as_ref()).await?;
        let mut rows = if customer.is_empty() {
            Vec::new()
        } else {
            self.core.channels.inbox(&customer, r.unread_only, before, limit + 1).await?
        };
        let next = next_token(&mut rows, limit, |i| format!("{}:{}", i.created_at, i.message_id));
        Ok(Response::new(pb::ListInboxResponse {
            items: rows
                .into_iter()
                .map(|i| pb::InboxItem {
                    message_id: i.message_id,
                    subject: i.subject,
                    html: i.html,
                    text: i.text,
                    created_at: Some(timestamp(i.created_at)),
                    read: i.read_at.is_some(),
                })
                .collect(),
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn mark_inbox_read(
        &self,
        request: Request<pb::MarkInboxReadRequest>,
    ) -> Result<Response<pb::MarkInboxReadResponse>, Status> {
        let r = request.into_inner();
        if r.message_ids.is_empty() || r.message_ids.len() > 1000 {
            return Err(Error::invalid("message_ids", "between 1 and 1,000 ids").into());
        }
        let (customer, _) = self.customer_of("customer", r.customer.as_ref()).await?;
        if customer.is_empty() {
            return Err(Error::not_found("customer").into());
        }
        let marked = self.core.channels.mark_read(&customer, &r.message_ids).await?;
        for id in &marked {
            if let Some(m) = self.core.messages.get(id).await? {
                crate::http::engage(&self.core, &m, pb::EngagementKind::Opened, "", "read in the inbox").await?;
            }
        }
        Ok(Response::new(pb::MarkInboxReadResponse { marked: marked.len() as i64 }))
    }

    async fn export_customer(
        &self,
        request: Request<common::ExportCustomerRequest>,
    ) -> Result<Response<common::ExportCustomerResponse>, Status> {
        let r = request.into_inner();
        let ids = self.subject_ids(r.customer.as_ref()).await?;
        let rows = self.core.messages.of_customers(&ids).await?;
        let history_ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
        let history = self.core.messages.history(&history_ids).await?;
        let messages: Vec<serde_json::Value> = rows
            .iter()
            .map(|m| {
                json!({
                    "message_id": m.message_id, "customer_id": m.customer_id, "channel": channel_name(m.channel as i32),
                    "to": m.recipient, "subject": m.subject, "status": pb::MessageStatus::try_from(m.status as i32).map(|s| s.as_str_name()).unwrap_or_default(),
                    "template_id": m.template_id, "template_version": m.template_version, "decision_id": m.decision_id,
                    "offer_id": m.offer_id, "campaign_id": m.campaign_id, "provider": m.provider,
                    "created_at": chrono::DateTime::from_timestamp_millis(m.created_at).map(|t| t.to_rfc3339()),
                    "history": history.iter().filter(|h| h.message_id == m.message_id).map(|h| json!({
                        "status": pb::MessageStatus::try_from(h.status as i32).map(|s| s.as_str_name()).unwrap_or_default(),
                        "at": chrono::DateTime::from_timestamp_millis(h.at).map(|t| t.to_rfc3339()),
                        "detail": h.detail,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut tasks = Vec::new();
        let mut inbox = Vec::new();
        for id in &ids {
            let (t, i) = self.core.channels.export(id).await?;
            tasks.extend(t.into_iter().map(|t| json!({"task_id": t.task_id, "message_id": t.message_id, "script": t.script, "due_at": t.due_at, "agent_id": t.agent_id, "outcome": t.outcome, "notes": t.notes})));
            inbox.extend(i.into_iter().map(|i| json!({"message_id": i.message_id, "subject": i.subject, "text": i.text, "read": i.read_at.is_some()})));
        }
        if messages.is_empty() && tasks.is_empty() && inbox.is_empty() {
            // Nothing held: the data-subject request records the step as "no data".
            return Err(Error::not_found("messages of this customer").into());
        }
        Ok(Response::new(common::ExportCustomerResponse {
            customer_id: ids[0].clone(),
            data: Some(json_to_struct(json!({"messages": messages, "call_centre_tasks": tasks, "inbox": inbox}))),
        }))
    }

    async fn erase_customer(
        &self,
        request: Request<common::EraseCustomerRequest>,
    ) -> Result<Response<common::EraseCustomerResponse>, Status> {
        let r = request.into_inner();
        if r.reason.trim().is_empty() {
            return Err(Error::invalid("reason", "is required").into());
        }
        let ids = self.subject_ids(r.customer.as_ref()).await?;
        let n = crate::dsr::erase(&self.core, &ids, &r.reason).await?;
        Ok(Response::new(common::EraseCustomerResponse { records_erased: n }))
    }
}

impl Delivery {
    async fn page(&self, mut rows: Vec<MessageRow>, limit: i64) -> Result<pb::ListMessagesResponse, Status> {
        let next = next_token(&mut rows, limit, |r| r.seq.to_string());
        Ok(pb::ListMessagesResponse {
            messages: self.wire(rows).await?,
            page: Some(common::PageResponse { next_page_token: next }),
        })
    }
}

fn task_wire(t: crate::store::channels::TaskRow) -> pb::Task {
    pb::Task {
        task_id: t.task_id,
        customer_id: t.customer_id,
        message_id: t.message_id,
        script: t.script,
        offer_id: t.offer_id,
        decision_id: t.decision_id,
        due_at: Some(timestamp(t.due_at)),
        state: t.state as i32,
        agent_id: t.agent_id,
        outcome: t.outcome,
    }
}
