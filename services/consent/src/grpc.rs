//! `rapport.consent.v1.ConsentService` over the store: wire types in and out, validation that names the
//! field. Contact points are personal data: they never reach logs or error messages.

use std::sync::Arc;

use rapport_errors::{Error, ErrorCode};
use rapport_proto::common::v1 as common;
use rapport_proto::consent::v1 as pb;
use rapport_proto::consent::v1::consent_service_server::ConsentService;
use rapport_rpc::convert::{json_to_struct, millis, timestamp};
use rapport_rpc::feed::RecordStream;
use rapport_storage::{Outbox, now_millis};
use tonic::{Request, Response, Status};

use crate::ledger::Stored;
use crate::sql::Exec;
use crate::store::{Appended, Cp, NewEntry, Scope, Store, TOPIC_TOKEN_USED};
use crate::tokens::{Claims, mask};

/// The most entries one Record may carry.
pub const MAX_ENTRIES: usize = 500;
/// The most checks of one CheckBatch.
pub const MAX_CHECKS: usize = 1000;
const FIVE_MINUTES: i64 = 5 * 60 * 1000;

/// The gRPC service.
pub struct Consent {
    pub store: Arc<Store>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The name of the authenticated caller.
pub(crate) fn caller<T>(request: &Request<T>) -> String {
    rapport_auth::Principal::of(request).map(|p| p.name.clone()).unwrap_or_else(|| "unknown".into())
}

/// A known channel other than UNSPECIFIED.
pub fn channel(field: &str, c: i32) -> Result<i32, Error> {
    match common::Channel::try_from(c) {
        Ok(common::Channel::Unspecified) => Err(Error::invalid(field, "is required")),
        Ok(_) => Ok(c),
        Err(_) => Err(Error::invalid(field, format!("unknown channel {c}"))),
    }
}

fn channel_name(c: i32) -> String {
    common::Channel::try_from(c)
        .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase())
        .unwrap_or_else(|_| c.to_string())
}

fn required_time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<i64, Error> {
    let t = t.ok_or_else(|| Error::invalid(field, "is required"))?;
    millis(t).ok_or_else(|| Error::invalid(field, "is out of range"))
}

fn optional_time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Error> {
    t.map(|t| millis(t).ok_or_else(|| Error::invalid(field, "is out of range"))).transpose()
}

pub(crate) fn ttl(field: &str, d: Option<&prost_types::Duration>, default_s: i64, max_s: i64) -> Result<i64, Error> {
    let s = match d {
        None => default_s,
        Some(d) if d.seconds <= 0 || d.seconds > max_s => {
            return Err(Error::invalid(field, format!("must be between 1 second and {max_s} seconds")));
        }
        Some(d) => d.seconds,
    };
    Ok(s * 1000)
}

pub(crate) fn provenance(field: &str, p: Option<&common::Provenance>) -> Result<common::Provenance, Error> {
    match p {
        Some(p) if !p.source.trim().is_empty() => {
            if p.source.len() > 128 || p.source_record_id.len() > 256 || p.actor.len() > 128 {
                return Err(Error::invalid(field, "source and actor at most 128 characters, record id 256"));
            }
            Ok(common::Provenance {
                source: p.source.trim().into(),
                source_record_id: p.source_record_id.trim().into(),
                actor: p.actor.trim().into(),
            })
        }
        _ => Err(Error::invalid(&format!("{field}.source"), "is required")),
    }
}

pub(crate) fn proof(
    field: &str,
    p: Option<&pb::Proof>,
    default_method: Option<pb::ProofMethod>,
) -> Result<pb::Proof, Error> {
    let mut p = match (p, default_method) {
        (Some(p), _) => p.clone(),
        (None, Some(_)) => pb::Proof::default(),
        (None, None) => return Err(Error::invalid(field, "is required")),
    };
    if p.method == 0 {
        match default_method {
            Some(m) => p.method = m as i32,
            None => return Err(Error::invalid(&format!("{field}.method"), "is required")),
        }
    }
    if pb::ProofMethod::try_from(p.method).is_err() {
        return Err(Error::invalid(&format!("{field}.method"), format!("unknown method {}", p.method)));
    }
    if !p.notice_id.is_empty() && p.notice_version.trim().is_empty() {
        return Err(Error::invalid(&format!("{field}.notice_version"), "is required with notice_id"));
    }
    if p.user_agent.len() > 1024 {
        return Err(Error::invalid(&format!("{field}.user_agent"), "at most 1,024 characters"));
    }
    if !p.ip_address.is_empty() && p.ip_address.parse::<std::net::IpAddr>().is_err() {
        return Err(Error::invalid(&format!("{field}.ip_address"), "is not an IP address"));
    }
    if let Some(d) = &p.details
        && d.encoded_len() > 8 * 1024
    {
        return Err(Error::invalid(&format!("{field}.details"), "at most 8 KiB"));
    }
    Ok(p)
}

use prost::Message as _;
use sha2::Digest as _;

fn region(field: &str, r: &str) -> Result<String, Error> {
    let r = r.trim().to_ascii_uppercase();
    if r.len() > 10 || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Error::invalid(field, "must be an ISO 3166 code such as DE or US-CA"));
    }
    Ok(r)
}

impl Consent {
    pub(crate) fn purpose(&self, field: &str, p: Option<&common::Purpose>) -> Result<String, Error> {
        let field = format!("{field}.name");
        let name = p.map(|p| p.name.trim()).unwrap_or_default();
        if name.is_empty() {
            return Err(Error::invalid(&field, "is required"));
        }
        if !self.store.settings.purposes.iter().any(|c| c == name) {
            let shown: String = name.chars().take(64).collect();
            return Err(Error::invalid(
                &field,
                format!("unknown purpose `{shown}`; configured: {}", self.store.settings.purposes.join(", ")),
            ));
        }
        Ok(name.to_string())
    }

    /// Normalises a contact point (EMAIL, PHONE or DEVICE_ID).
    pub fn contact_point(&self, field: &str, id: &common::Identifier) -> Result<Cp, Error> {
        crate::normalize::contact_point(&self.store.settings, field, id)
    }

    /// The customer a reference names: `Ok(None)` when an identifier is held by nobody.
    pub(crate) async fn customer(&self, field: &str, r: Option<&common::CustomerRef>) -> Result<Option<String>, Error> {
        match r.and_then(|r| r.r#ref.as_ref()) {
            None => Ok(None),
            Some(common::customer_ref::Ref::CustomerId(id)) => {
                let id = id.trim();
                if id.is_empty() || id.len() > 128 {
                    return Err(Error::invalid(&format!("{field}.customer_id"), "must be 1..128 characters"));
                }
                Ok(Some(self.store.canonical(&mut Exec::Db(&self.store.db), id).await?))
            }
            Some(common::customer_ref::Ref::Identifier(i)) => {
                let field = format!("{field}.identifier");
                let t = common::IdentifierType::try_from(i.r#type).unwrap_or(common::IdentifierType::Unspecified);
                let wire = match t {
                    common::IdentifierType::Email | common::IdentifierType::Phone => {
                        self.contact_point(&field, i)?.wire().unwrap_or_default()
                    }
                    common::IdentifierType::Unspecified => {
                        return Err(Error::invalid(&format!("{field}.type"), "must be a known identifier type"));
                    }
                    _ if i.value.trim().is_empty() => {
                        return Err(Error::invalid(&format!("{field}.value"), "is required"));
                    }
                    _ => i.clone(),
                };
                let mut client = self.store.clients.identity().map_err(status_error)?;
                match client.lookup(pb_identity::LookupRequest { identifier: Some(wire) }).await {
                    Ok(r) => Ok(Some(
                        self.store.canonical(&mut Exec::Db(&self.store.db), &r.into_inner().customer_id).await?,
                    )),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        Err(Error::invalid(&field, s.message().split_once(": ").map_or(s.message(), |x| x.1)))
                    }
                    Err(s) => Err(status_error(s)),
                }
            }
        }
    }

    /// The customer holding `cp`, if identity knows one (and runs or is configured).
    async fn holder(&self, cp: &Cp) -> Result<Option<String>, Error> {
        if !self.store.clients.is_wired("identity") {
            return Ok(None);
        }
        let mut client = self.store.clients.identity().map_err(status_error)?;
        match client.lookup(pb_identity::LookupRequest { identifier: cp.wire() }).await {
            Ok(r) => Ok(Some(self.store.canonical(&mut Exec::Db(&self.store.db), &r.into_inner().customer_id).await?)),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => Ok(None),
            Err(s) => Err(status_error(s)),
        }
    }

    /// The customer of a request with a reference and/or a contact point.
    async fn person(
        &self,
        field: &str,
        r: Option<&common::CustomerRef>,
        cp: Option<&Cp>,
    ) -> Result<Option<String>, Error> {
        let named = r.and_then(|r| r.r#ref.as_ref()).is_some();
        match self.customer(field, r).await? {
            Some(c) => Ok(Some(c)),
            None if named && cp.is_none() => Err(Error::not_found("customer with this identifier")),
            None => match cp {
                Some(cp) => self.holder(cp).await,
                None => Ok(None),
            },
        }
    }

    async fn entry_input(&self, field: &str, e: &pb::EntryInput, now: i64) -> Result<NewEntry, Error> {
        let channel = channel(&format!("{field}.channel"), e.channel)?;
        let purpose = self.purpose(&format!("{field}.purpose"), e.purpose.as_ref())?;
        let status = match pb::ConsentStatus::try_from(e.status) {
            Ok(s @ (pb::ConsentStatus::Granted | pb::ConsentStatus::Denied | pb::ConsentStatus::Withdrawn)) => s,
            Ok(pb::ConsentStatus::Pending) => {
                return Err(Error::invalid(&format!("{field}.status"), "PENDING is recorded only by StartDoubleOptIn"));
            }
            _ => return Err(Error::invalid(&format!("{field}.status"), "must be GRANTED, DENIED or WITHDRAWN")),
        };
        let legal_basis = match pb::LegalBasis::try_from(e.legal_basis) {
            Ok(pb::LegalBasis::Unspecified) => pb::LegalBasis::Consent as i32,
            Ok(b) => b as i32,
            Err(_) => return Err(Error::invalid(&format!("{field}.legal_basis"), "unknown legal basis")),
        };
        let provenance = provenance(&format!("{field}.provenance"), e.provenance.as_ref())?;
        let proof = proof(&format!("{field}.proof"), e.proof.as_ref(), None)?;
        if status == pb::ConsentStatus::Granted
            && legal_basis == pb::LegalBasis::Consent as i32
            && proof.notice_id.trim().is_empty()
        {
            return Err(Error::invalid(
                &format!("{field}.proof.notice_id"),
                "is required for a grant given by consent",
            ));
        }
        let occurred_at = required_time(&format!("{field}.occurred_at"), e.occurred_at.as_ref())?;
        if occurred_at > now + FIVE_MINUTES {
            return Err(Error::invalid(&format!("{field}.occurred_at"), "is more than 5 minutes in the future"));
        }
        let expires_at = optional_time(&format!("{field}.expires_at"), e.expires_at.as_ref())?;
        if expires_at.is_some_and(|x| x <= occurred_at) {
            return Err(Error::invalid(&format!("{field}.expires_at"), "must follow occurred_at"));
        }
        if e.idempotency_key.len() > 128 {
            return Err(Error::invalid(&format!("{field}.idempotency_key"), "at most 128 characters"));
        }
        let cp =
            e.contact_point.as_ref().map(|c| self.contact_point(&format!("{field}.contact_point"), c)).transpose()?;
        if cp.is_none() && e.customer.as_ref().and_then(|c| c.r#ref.as_ref()).is_none() {
            return Err(Error::invalid(&format!("{field}.customer"), "customer or contact_point is required"));
        }
        let region = region(&format!("{field}.region"), &e.region)?;
        let customer = self.person(&format!("{field}.customer"), e.customer.as_ref(), cp.as_ref()).await?;
        Ok(NewEntry {
            customer_id: customer.unwrap_or_default(),
            cp: cp.unwrap_or_default(),
            channel,
            purpose,
            status,
            legal_basis,
            provenance,
            proof,
            occurred_at,
            expires_at,
            region,
            token_id: String::new(),
            idempotency_key: e.idempotency_key.trim().to_string(),
        })
    }

    pub(crate) async fn refuse_erased(&self, field: &str, customer: &str) -> Result<(), Error> {
        if !customer.is_empty() && self.store.erased(&mut Exec::Db(&self.store.db), &[customer.to_string()]).await? {
            return Err(Error::new(ErrorCode::FailedPrecondition, format!("{field}: the customer was erased")));
        }
        Ok(())
    }

    /// Check without the wire response.
    pub async fn check_one(&self, r: &pb::CheckRequest) -> Result<pb::CheckResponse, Error> {
        let channel = channel("channel", r.channel)?;
        let purpose = self.purpose("purpose", r.purpose.as_ref())?;
        let cp = r.contact_point.as_ref().map(|c| self.contact_point("contact_point", c)).transpose()?;
        if cp.is_none() && r.customer.as_ref().and_then(|c| c.r#ref.as_ref()).is_none() {
            return Err(Error::invalid("customer", "customer or contact_point is required"));
        }
        let at = optional_time("at", r.at.as_ref())?.unwrap_or_else(now_millis);
        let region = region("region", &r.region)?;
        let named = r.customer.as_ref().and_then(|c| c.r#ref.as_ref()).is_some();
        let customer = match self.customer("customer", r.customer.as_ref()).await? {
            Some(c) => Some(c),
            None if named && cp.is_none() => None,
            None => match &cp {
                Some(cp) => self.holder(cp).await?,
                None => None,
            },
        };
        let o = self.decide(customer.as_deref().unwrap_or_default(), cp, channel, &purpose, at, &region).await?;
        Ok(pb::CheckResponse {
            allowed: o.allowed,
            reason: o.reason as i32,
            explanation: o.explanation,
            entry: o.entry,
            suppression: o.suppression,
            customer_id: customer.unwrap_or_default(),
            region: o.region,
            at: Some(timestamp(at)),
        })
    }

    /// Check's answer for a resolved customer and contact point: from the cached ledger read when the
    /// ledger has not changed since it was made, else from the database.
    pub(crate) async fn decide(
        &self,
        customer: &str,
        cp: Option<Cp>,
        channel: i32,
        purpose: &str,
        at: i64,
        region: &str,
    ) -> Result<crate::ledger::Outcome, Error> {
        let checks = &self.store.checks;
        let version = checks.version().await;
        let key = match &cp {
            Some(cp) => format!("{customer}\u{1f}{}\u{1f}{}\u{1f}{channel}\u{1f}{purpose}", cp.t, cp.v),
            None => format!("{customer}\u{1f}\u{1f}\u{1f}{channel}\u{1f}{purpose}"),
        };
        if let Some(hit) = version.and_then(|v| checks.get(&key, v)) {
            let (scope, loaded) = &hit.1;
            return Ok(loaded.decide(&self.store.settings, scope, purpose, at, region));
        }
        let mut exec = Exec::Db(&self.store.db);
        let scope = self.store.scope(&mut exec, customer, cp).await?;
        let loaded = self.store.load(&mut exec, &scope, channel, purpose).await?;
        let outcome = loaded.decide(&self.store.settings, &scope, purpose, at, region);
        if let Some(version) = version {
            checks.put(key, version, (scope, loaded));
        }
        Ok(outcome)
    }

    /// Records what a browser signal (a TC string, GPC) says about `purposes` on the web channel, with the
    /// signal as proof. `key` makes a replayed signal record nothing new.
    #[allow(clippy::too_many_arguments)]
    async fn record_signal(
        &self,
        caller: &str,
        customer: Option<&common::CustomerRef>,
        provenance_in: Option<&common::Provenance>,
        proof_in: pb::Proof,
        occurred_at: i64,
        region_in: &str,
        purposes: Vec<(String, pb::ConsentStatus)>,
        key: &str,
    ) -> Result<Vec<pb::ConsentEntry>, Error> {
        if customer.and_then(|c| c.r#ref.as_ref()).is_none() {
            return Err(Error::invalid("customer", "is required"));
        }
        let provenance = provenance("provenance", provenance_in)?;
        let proof = proof("proof", Some(&proof_in), None)?;
        if occurred_at > now_millis() + FIVE_MINUTES {
            return Err(Error::invalid("occurred_at", "is more than 5 minutes in the future"));
        }
        let region = region("region", region_in)?;
        let customer_id = self.person("customer", customer, None).await?.unwrap_or_default();
        self.refuse_erased("customer", &customer_id).await?;
        let entries = purposes
            .into_iter()
            .map(|(purpose, status)| NewEntry {
                customer_id: customer_id.clone(),
                cp: Cp::default(),
                channel: common::Channel::Web as i32,
                idempotency_key: format!("{key}:{purpose}"),
                purpose,
                status,
                legal_basis: pb::LegalBasis::Consent as i32,
                provenance: provenance.clone(),
                proof: proof.clone(),
                occurred_at,
                expires_at: None,
                region: region.clone(),
                token_id: String::new(),
            })
            .collect();
        Ok(self.store.record(caller, entries).await?.into_iter().map(|a| a.entry).collect())
    }

    fn requests(&self) -> crate::dsr::Requests<'_> {
        crate::dsr::Requests {
            db: &self.store.db,
            clients: &self.store.clients,
            deadline_days: self.store.settings.request_deadline_days,
        }
    }

    async fn scope_of(&self, field: &str, r: Option<&common::CustomerRef>, cp: Option<Cp>) -> Result<Scope, Error> {
        let customer = self.person(field, r, cp.as_ref()).await?;
        self.store.scope(&mut Exec::Db(&self.store.db), customer.as_deref().unwrap_or_default(), cp).await
    }

    fn claims_response(&self, claims: &Claims, used: bool) -> pb::DescribeTokenResponse {
        let kind = match claims.k.as_str() {
            "doi" => pb::TokenKind::DoubleOptIn,
            crate::preferences::TOKEN_KIND => pb::TokenKind::Preferences,
            _ => pb::TokenKind::Unsubscribe,
        };
        let expired = claims.exp <= now_millis();
        pb::DescribeTokenResponse {
            kind: kind as i32,
            masked_contact_point: if claims.cv.is_empty() { String::new() } else { mask(&claims.cv) },
            channel: claims.ch,
            purposes: claims.p.iter().map(|p| common::Purpose { name: p.clone() }).collect(),
            expires_at: Some(timestamp(claims.exp)),
            used,
            valid: !used && !expired,
        }
    }

    /// Describes a token of any kind without spending it.
    pub async fn describe(&self, token: &str) -> Result<pb::DescribeTokenResponse, Error> {
        if token.trim().is_empty() {
            return Err(Error::invalid("token", "is required"));
        }
        let claims = self
            .store
            .signer
            .verify(token, "unsub")
            .or_else(|_| self.store.signer.verify(token, "doi"))
            .or_else(|_| self.store.signer.verify(token, crate::preferences::TOKEN_KIND))
            .map_err(|e| e.to_error())?;
        let used = self.store.is_spent(&claims.id).await?;
        Ok(self.claims_response(&claims, used))
    }

    /// The contact point a token names and the customer holding it now.
    async fn token_subject(&self, claims: &Claims) -> Result<(Cp, String), Error> {
        let cp = Cp { t: claims.ct, v: claims.cv.clone() };
        let customer = if claims.c.is_empty() {
            self.holder(&cp).await?.unwrap_or_default()
        } else {
            self.store.canonical(&mut Exec::Db(&self.store.db), &claims.c).await?
        };
        Ok((cp, customer))
    }

    /// Spends an unsubscribe token.
    pub async fn unsubscribe_with(
        &self,
        token: &str,
        proof_in: Option<&pb::Proof>,
        occurred: Option<i64>,
    ) -> Result<pb::UnsubscribeResponse, Error> {
        if token.trim().is_empty() {
            return Err(Error::invalid("token", "is required"));
        }
        let claims = self.store.open_token(token, "unsub").await?;
        let proof = proof("proof", proof_in, Some(pb::ProofMethod::UnsubscribeLink))?;
        let (cp, customer) = self.token_subject(&claims).await?;
        let mut tx = self.store.db.begin().await?;
        self.store.spend(&mut tx, &claims).await?;
        let mut messages = Vec::new();
        let source = common::Provenance {
            source: "unsubscribe".into(),
            source_record_id: claims.m.clone(),
            actor: String::new(),
        };
        let entries = token_entries(&claims, &customer, pb::ConsentStatus::Withdrawn, &source, &proof, occurred);
        let appended = self.store.append(&mut tx, "unsubscribe", entries, &mut messages).await?;
        let (suppression, _) = self
            .store
            .add_suppression(
                &mut tx,
                &cp,
                claims.ch,
                pb::SuppressionReason::Unsubscribed,
                source,
                String::new(),
                None,
                &customer,
                &mut messages,
            )
            .await?;
        messages.push(token_used(&claims, pb::TokenUseKind::Unsubscribed, &customer));
        Outbox::append(&mut tx, &messages).await?;
        self.store.commit(tx).await?;
        Ok(pb::UnsubscribeResponse {
            withdrawn: appended.into_iter().next().map(|a| a.entry),
            suppression_id: suppression.suppression_id,
        })
    }

    /// Spends a double opt-in token.
    pub async fn confirm_with(
        &self,
        token: &str,
        proof_in: Option<&pb::Proof>,
        occurred: Option<i64>,
    ) -> Result<pb::ConfirmDoubleOptInResponse, Error> {
        if token.trim().is_empty() {
            return Err(Error::invalid("token", "is required"));
        }
        let claims = self.store.open_token(token, "doi").await?;
        let mut proof = proof("proof", proof_in, Some(pb::ProofMethod::DoubleOptIn))?;
        if proof.notice_id.is_empty() {
            proof.notice_id = "double-opt-in".into();
            proof.notice_version = "1".into();
        }
        let (cp, customer) = self.token_subject(&claims).await?;
        let mut tx = self.store.db.begin().await?;
        self.store.spend(&mut tx, &claims).await?;
        let mut messages = Vec::new();
        let source = common::Provenance {
            source: "double_opt_in".into(),
            source_record_id: claims.id.clone(),
            actor: String::new(),
        };
        let entries = token_entries(&claims, &customer, pb::ConsentStatus::Granted, &source, &proof, occurred);
        let appended = self.store.append(&mut tx, "double_opt_in", entries, &mut messages).await?;
        // A confirmed opt-in lifts an unsubscribe of the contact point on the channel.
        for s in self
            .store
            .list_suppressions(Some(&cp), claims.ch, &[pb::SuppressionReason::Unsubscribed as i32], false)
            .await?
        {
            if s.channel == claims.ch {
                self.store
                    .remove_suppression(&mut tx, &s.suppression_id, "double_opt_in", "confirmed opt-in", &mut messages)
                    .await?;
            }
        }
        messages.push(token_used(&claims, pb::TokenUseKind::DoubleOptInConfirmed, &customer));
        Outbox::append(&mut tx, &messages).await?;
        self.store.commit(tx).await?;
        Ok(pb::ConfirmDoubleOptInResponse {
            granted: appended.into_iter().map(|a| a.entry).collect(),
            customer_id: customer,
        })
    }
}

/// A double opt-in to start: PENDING entries of a contact point on a channel for purposes, under a new
/// single-use confirmation token. StartDoubleOptIn and the preference centre's grants start them.
pub(crate) struct DoubleOptIn {
    pub customer: String,
    pub cp: Cp,
    pub channel: i32,
    pub purposes: Vec<String>,
    pub provenance: common::Provenance,
    pub proof: pb::Proof,
    pub occurred_at: i64,
    /// Token lifetime, milliseconds.
    pub ttl: i64,
    pub region: String,
}

impl DoubleOptIn {
    /// The token's claims and the PENDING entries to record, one per purpose.
    pub fn claims_and_entries(self, now: i64) -> (Claims, Vec<NewEntry>) {
        let claims = Claims {
            k: "doi".into(),
            id: format!("tok_{}", uuid::Uuid::now_v7().simple()),
            ct: self.cp.t,
            cv: self.cp.v.clone(),
            ch: self.channel,
            p: self.purposes.clone(),
            c: self.customer.clone(),
            exp: now + self.ttl,
            m: String::new(),
            d: String::new(),
            r: self.region.clone(),
        };
        let entries = self
            .purposes
            .into_iter()
            .map(|purpose| NewEntry {
                customer_id: self.customer.clone(),
                cp: self.cp.clone(),
                channel: self.channel,
                purpose,
                status: pb::ConsentStatus::Pending,
                legal_basis: pb::LegalBasis::Consent as i32,
                provenance: self.provenance.clone(),
                proof: self.proof.clone(),
                occurred_at: self.occurred_at,
                expires_at: None,
                region: self.region.clone(),
                token_id: claims.id.clone(),
                idempotency_key: String::new(),
            })
            .collect();
        (claims, entries)
    }
}

impl Consent {
    /// What StartDoubleOptIn answers for a recorded double opt-in.
    pub(crate) fn double_opt_in_response(
        &self,
        claims: &Claims,
        pending: Vec<pb::ConsentEntry>,
    ) -> pb::StartDoubleOptInResponse {
        let token = self.store.signer.sign(claims);
        pb::StartDoubleOptInResponse {
            pending,
            confirm_url: format!("{}/consent/confirm?token={token}", self.store.base_url),
            token,
            expires_at: Some(timestamp(claims.exp)),
            token_id: claims.id.clone(),
        }
    }
}

/// The entries a spent token records: one per purpose it names, on its contact point and channel.
fn token_entries(
    claims: &Claims,
    customer: &str,
    status: pb::ConsentStatus,
    provenance: &common::Provenance,
    proof: &pb::Proof,
    occurred: Option<i64>,
) -> Vec<NewEntry> {
    let occurred_at = occurred.unwrap_or_else(now_millis);
    claims
        .p
        .iter()
        .map(|p| NewEntry {
            customer_id: customer.to_string(),
            cp: Cp { t: claims.ct, v: claims.cv.clone() },
            channel: claims.ch,
            purpose: p.clone(),
            status,
            legal_basis: pb::LegalBasis::Consent as i32,
            provenance: provenance.clone(),
            proof: proof.clone(),
            occurred_at,
            expires_at: None,
            region: claims.r.clone(),
            token_id: claims.id.clone(),
            idempotency_key: String::new(),
        })
        .collect()
}

fn token_used(claims: &Claims, kind: pb::TokenUseKind, customer: &str) -> rapport_storage::OutboxMessage {
    use prost::Name;
    let e = pb::TokenUsed {
        token_id: claims.id.clone(),
        kind: kind as i32,
        contact_point: Some(common::Identifier {
            r#type: claims.ct,
            value: claims.cv.clone(),
            namespace: String::new(),
        }),
        channel: claims.ch,
        message_id: claims.m.clone(),
        decision_id: claims.d.clone(),
    };
    let key = if customer.is_empty() { claims.cv.clone() } else { customer.to_string() };
    rapport_storage::OutboxMessage::new(TOPIC_TOKEN_USED, key, pb::TokenUsed::full_name(), e.encode_to_vec())
}

use rapport_proto::identity::v1 as pb_identity;

pub(crate) fn status_error(s: Status) -> Error {
    let code = match s.code() {
        tonic::Code::Unavailable => ErrorCode::Unavailable,
        tonic::Code::NotFound => ErrorCode::NotFound,
        tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
        tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        _ => ErrorCode::Internal,
    };
    Error::new(code, s.message().to_string())
}

pub(crate) fn page(p: Option<&common::PageRequest>) -> Result<(usize, usize), Error> {
    let p = p.cloned().unwrap_or_default();
    let size = rapport_rpc::convert::page_size("page.page_size", p.page_size, 50, 1000)? as usize;
    let offset = if p.page_token.is_empty() {
        0
    } else {
        p.page_token.parse::<usize>().map_err(|_| Error::invalid("page.page_token", "is not a token of this list"))?
    };
    Ok((size, offset))
}

pub(crate) fn paged<T>(items: Vec<T>, size: usize, offset: usize) -> (Vec<T>, common::PageResponse) {
    let total = items.len();
    let items: Vec<T> = items.into_iter().skip(offset).take(size).collect();
    let next = if offset + size < total { (offset + size).to_string() } else { String::new() };
    (items, common::PageResponse { next_page_token: next })
}

fn entry_json(e: &pb::ConsentEntry) -> serde_json::Value {
    let name = |s: Option<&str>| s.unwrap_or_default().to_ascii_lowercase();
    let ms = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(millis);
    let proof = e.proof.clone().unwrap_or_default();
    let prov = e.provenance.clone().unwrap_or_default();
    serde_json::json!({
        "entry_id": e.entry_id,
        "customer_id": e.customer_id,
        "recorded_customer_id": e.recorded_customer_id,
        "contact_point": e.contact_point.as_ref().map(|c| serde_json::json!({
            "type": name(common::IdentifierType::try_from(c.r#type).ok().map(|t| t.as_str_name())),
            "value": c.value,
        })),
        "channel": channel_name(e.channel),
        "purpose": e.purpose.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
        "status": name(pb::ConsentStatus::try_from(e.status).ok().map(|s| s.as_str_name())),
        "legal_basis": name(pb::LegalBasis::try_from(e.legal_basis).ok().map(|s| s.as_str_name())),
        "source": prov.source, "source_record_id": prov.source_record_id, "actor": prov.actor,
        "proof": {
            "method": name(pb::ProofMethod::try_from(proof.method).ok().map(|s| s.as_str_name())),
            "notice_id": proof.notice_id, "notice_version": proof.notice_version,
            "ip_address": proof.ip_address, "user_agent": proof.user_agent, "evidence_ref": proof.evidence_ref,
        },
        "occurred_at_ms": ms(&e.occurred_at),
        "recorded_at_ms": ms(&e.recorded_at),
        "expires_at_ms": ms(&e.expires_at),
        "region": e.region,
        "recorded_by": e.recorded_by,
        "token_id": e.token_id,
    })
}

fn suppression_json(s: &pb::Suppression) -> serde_json::Value {
    let ms = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(millis);
    serde_json::json!({
        "suppression_id": s.suppression_id,
        "contact_point": s.contact_point.as_ref().map(|c| c.value.clone()),
        "channel": if s.channel == 0 { "all".to_string() } else { channel_name(s.channel) },
        "reason": pb::SuppressionReason::try_from(s.reason).map(|r| r.as_str_name().to_ascii_lowercase()).unwrap_or_default(),
        "note": s.note,
        "created_at_ms": ms(&s.created_at),
        "expires_at_ms": ms(&s.expires_at),
        "removed_at_ms": ms(&s.removed_at),
    })
}

#[tonic::async_trait]
impl ConsentService for Consent {
    async fn subscribe(&self, request: Request<common::SubscribeRequest>) -> Result<Response<RecordStream>, Status> {
        rapport_rpc::feed::subscribe(&self.store.outbox, request.into_inner(), &self.shutdown).await.map(Response::new)
    }

    async fn record(&self, request: Request<pb::RecordRequest>) -> Result<Response<pb::RecordResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        if request.entries.is_empty() || request.entries.len() > MAX_ENTRIES {
            return Err(Error::invalid("entries", format!("between 1 and {MAX_ENTRIES} entries")).into());
        }
        let now = now_millis();
        let mut inputs = Vec::with_capacity(request.entries.len());
        for (i, e) in request.entries.iter().enumerate() {
            let field = format!("entries[{i}]");
            let input = self.entry_input(&field, e, now).await?;
            self.refuse_erased(&format!("{field}.customer"), &input.customer_id).await?;
            inputs.push(input);
        }
        let appended: Vec<Appended> = self.store.record(&caller, inputs).await?;
        Ok(Response::new(pb::RecordResponse {
            in_force: appended.iter().map(|a| a.in_force).collect(),
            entries: appended.into_iter().map(|a| a.entry).collect(),
        }))
    }

    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(self.check_one(&request.into_inner()).await?))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let request = request.into_inner();
        if request.checks.is_empty() || request.checks.len() > MAX_CHECKS {
            return Err(Error::invalid("checks", format!("between 1 and {MAX_CHECKS} checks")).into());
        }
        let mut results = Vec::with_capacity(request.checks.len());
        for (i, c) in request.checks.iter().enumerate() {
            let outcome = match self.check_one(c).await {
                Ok(r) => pb::check_batch_result::Outcome::Response(r),
                Err(e) if e.code().grpc_code() == tonic::Code::Internal || e.code() == ErrorCode::Unavailable => {
                    return Err(e.into());
                }
                Err(e) => pb::check_batch_result::Outcome::Error(pb::ItemError {
                    code: format!("{:?}", e.code().grpc_code()).to_ascii_uppercase(),
                    message: format!("checks[{i}].{e}"),
                }),
            };
            results.push(pb::CheckBatchResult { index: i as i32, outcome: Some(outcome) });
        }
        Ok(Response::new(pb::CheckBatchResponse { results }))
    }

    async fn get_state(&self, request: Request<pb::GetStateRequest>) -> Result<Response<pb::ConsentState>, Status> {
        let request = request.into_inner();
        if request.customer.as_ref().and_then(|c| c.r#ref.as_ref()).is_none() {
            return Err(Error::invalid("customer", "is required").into());
        }
        let at = optional_time("at", request.at.as_ref())?.unwrap_or_else(now_millis);
        let region = region("region", &request.region)?;
        let scope = self.scope_of("customer", request.customer.as_ref(), None).await?;
        let mut exec = Exec::Db(&self.store.db);
        let all = self.store.entries(&mut exec, &scope, None).await?;
        let mut keys: Vec<(Option<Cp>, i32, String)> = all
            .iter()
            .map(|e| (crate::store::cp_of(&e.entry), e.entry.channel, e.entry.purpose.clone().unwrap_or_default().name))
            .collect();
        for c in 1..=9 {
            for p in &self.store.settings.purposes {
                keys.push((None, c, p.clone()));
            }
        }
        keys.sort();
        keys.dedup();
        let mut consents = Vec::new();
        let mut suppressions: Vec<pb::Suppression> = Vec::new();
        for (cp, channel, purpose) in keys {
            let key_scope = Scope { cp: cp.clone(), ..scope.clone() };
            let o = self.store.evaluate(&mut exec, &key_scope, channel, &purpose, at, &region).await?;
            if let Some(s) = &o.suppression
                && !suppressions.iter().any(|x| x.suppression_id == s.suppression_id)
            {
                suppressions.push(s.clone());
            }
            consents.push(pb::CurrentConsent {
                channel,
                purpose: Some(common::Purpose { name: purpose }),
                contact_point: cp.and_then(|c| c.wire()),
                allowed: o.allowed,
                reason: o.reason as i32,
                entry: o.entry,
            });
        }
        let region = if region.is_empty() { self.store.settings.default_region.clone() } else { region };
        Ok(Response::new(pb::ConsentState { customer_id: scope.customer, consents, suppressions, region }))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let request = request.into_inner();
        let cp = request.contact_point.as_ref().map(|c| self.contact_point("contact_point", c)).transpose()?;
        let named = request.customer.as_ref().and_then(|c| c.r#ref.as_ref()).is_some();
        if cp.is_none() && !named {
            return Err(Error::invalid("customer", "customer or contact_point is required").into());
        }
        for (i, c) in request.channels.iter().enumerate() {
            channel(&format!("channels[{i}]"), *c)?;
        }
        let mut purposes = Vec::new();
        for (i, p) in request.purposes.iter().enumerate() {
            purposes.push(self.purpose(&format!("purposes[{i}]"), Some(p))?);
        }
        let (size, offset) = page(request.page.as_ref())?;
        let range = request.occurred.unwrap_or_default();
        let start = optional_time("occurred.start", range.start.as_ref())?;
        let end = optional_time("occurred.end", range.end.as_ref())?;
        let customer = if named { self.customer("customer", request.customer.as_ref()).await? } else { None };
        if named && customer.is_none() && cp.is_none() {
            return Err(Error::not_found("customer with this identifier").into());
        }
        let mut exec = Exec::Db(&self.store.db);
        let scope = self.store.scope(&mut exec, customer.as_deref().unwrap_or_default(), None).await?;
        let mut all = if named { self.store.entries(&mut exec, &scope, None).await? } else { Vec::new() };
        if let Some(cp) = &cp {
            if named {
                all.retain(|e| crate::store::cp_of(&e.entry).as_ref() == Some(cp));
            } else {
                let only = Scope { cp: Some(cp.clone()), ..Default::default() };
                all = self.store.entries(&mut exec, &only, None).await?;
            }
        }
        all.retain(|e: &Stored| {
            (request.channels.is_empty() || request.channels.contains(&e.entry.channel))
                && (purposes.is_empty()
                    || purposes.iter().any(|p| e.entry.purpose.as_ref().is_some_and(|x| &x.name == p)))
                && start.is_none_or(|s| e.occurred >= s)
                && end.is_none_or(|x| e.occurred < x)
        });
        all.sort_by_key(|e| std::cmp::Reverse((e.occurred, e.seq)));
        let (entries, page) = paged(all.into_iter().map(|e| e.entry).collect(), size, offset);
        Ok(Response::new(pb::HistoryResponse { entries, page: Some(page) }))
    }

    async fn get_entry(&self, request: Request<pb::GetEntryRequest>) -> Result<Response<pb::ConsentEntry>, Status> {
        let id = request.into_inner().entry_id;
        if id.trim().is_empty() {
            return Err(Error::invalid("entry_id", "is required").into());
        }
        let rows: Vec<(i64, Vec<u8>)> = Exec::Db(&self.store.db)
            .all("SELECT seq, body FROM consent_entries WHERE entry_id = $1", &[id.trim().into()])
            .await?;
        let (_, body) = rows.into_iter().next().ok_or_else(|| Error::not_found(format!("entry {}", id.trim())))?;
        let mut e = pb::ConsentEntry::decode(body.as_slice()).map_err(Error::internal)?;
        if !e.recorded_customer_id.is_empty() {
            e.customer_id = self.store.canonical(&mut Exec::Db(&self.store.db), &e.recorded_customer_id).await?;
        }
        Ok(Response::new(e))
    }

    async fn get_policy(&self, _request: Request<pb::GetPolicyRequest>) -> Result<Response<pb::ConsentPolicy>, Status> {
        let s = &self.store.settings;
        Ok(Response::new(pb::ConsentPolicy {
            purposes: s
                .purposes
                .iter()
                .map(|p| pb::PurposeDefinition { name: p.clone(), service: s.is_service(p), ..Default::default() })
                .collect(),
            opt_in_regions: s.opt_in_regions.clone(),
            opt_out_regions: s.opt_out_regions.clone(),
            default_region: s.default_region.clone(),
            merge_policy: s.merge_policy.clone(),
            double_opt_in_channels: s
                .double_opt_in_channels
                .iter()
                .filter_map(|c| crate::settings::channel_number(c))
                .collect(),
            double_opt_in_ttl_seconds: s.double_opt_in_ttl_seconds,
            unsubscribe_ttl_seconds: s.unsubscribe_ttl_seconds,
            request_deadline_days: s.request_deadline_days,
        }))
    }

    async fn record_tcf_string(
        &self,
        request: Request<pb::RecordTcfStringRequest>,
    ) -> Result<Response<pb::RecordSignalResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        if r.tc_string.len() > 8 * 1024 {
            return Err(Error::invalid("tc_string", "at most 8 KiB").into());
        }
        let tc = crate::tcf::decode(&r.tc_string).map_err(|e| Error::invalid("tc_string", e))?;
        let occurred_at = optional_time("occurred_at", r.occurred_at.as_ref())?.unwrap_or(tc.last_updated_ms);
        let mut proof = r.proof.unwrap_or_default();
        proof.method = pb::ProofMethod::TcfString as i32;
        if proof.notice_id.is_empty() {
            proof.notice_id = format!("tcf-cmp-{}", tc.cmp_id);
            proof.notice_version = format!("policy {}, vendor list {}", tc.policy_version, tc.vendor_list_version);
        }
        proof.details = Some(json_to_struct(serde_json::json!({
            "tc_string": r.tc_string.trim(),
            "cmp_id": tc.cmp_id,
            "cmp_version": tc.cmp_version,
            "consent_screen": tc.consent_screen,
            "purpose_consents": tc.purpose_consents,
            "purpose_legitimate_interests": tc.purpose_legitimate_interests,
        })));
        let purposes = self
            .store
            .settings
            .tcf_purposes
            .iter()
            .map(|(purpose, needed)| {
                let all = needed.iter().all(|p| tc.purpose_consents.contains(p));
                (purpose.clone(), if all { pb::ConsentStatus::Granted } else { pb::ConsentStatus::Denied })
            })
            .collect();
        let digest = hex::encode(sha2::Sha256::digest(r.tc_string.trim().as_bytes()));
        let entries = self
            .record_signal(
                &caller,
                r.customer.as_ref(),
                r.provenance.as_ref(),
                proof,
                occurred_at,
                "",
                purposes,
                &format!("tcf:{}", &digest[..32]),
            )
            .await?;
        Ok(Response::new(pb::RecordSignalResponse {
            entries,
            tcf: Some(pb::TcfSummary {
                cmp_id: tc.cmp_id as i32,
                cmp_version: tc.cmp_version as i32,
                policy_version: tc.policy_version as i32,
                consent_language: tc.consent_language.to_ascii_lowercase(),
                purpose_consents: tc.purpose_consents.iter().map(|p| *p as i32).collect(),
                purpose_legitimate_interests: tc.purpose_legitimate_interests.iter().map(|p| *p as i32).collect(),
                last_updated: Some(timestamp(tc.last_updated_ms)),
            }),
        }))
    }

    async fn record_gpc_signal(
        &self,
        request: Request<pb::RecordGpcSignalRequest>,
    ) -> Result<Response<pb::RecordSignalResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let occurred_at = optional_time("occurred_at", r.occurred_at.as_ref())?.unwrap_or_else(now_millis);
        let mut proof = r.proof.unwrap_or_default();
        proof.method = pb::ProofMethod::GpcSignal as i32;
        let purposes =
            self.store.settings.gpc_purposes.iter().map(|p| (p.clone(), pb::ConsentStatus::Denied)).collect();
        // Browsers send the signal with every request: one entry per person, purpose and day.
        let key = format!("gpc:{}", occurred_at.div_euclid(86_400_000));
        let entries = self
            .record_signal(
                &caller,
                r.customer.as_ref(),
                r.provenance.as_ref(),
                proof,
                occurred_at,
                &r.region,
                purposes,
                &key,
            )
            .await?;
        Ok(Response::new(pb::RecordSignalResponse { entries, tcf: None }))
    }

    async fn start_export(
        &self,
        request: Request<pb::StartExportRequest>,
    ) -> Result<Response<pb::DataSubjectRequest>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let (request, _) = self
            .requests()
            .run(&caller, pb::RequestKind::Export, r.subject.as_ref(), r.received_at.as_ref(), &r.reference)
            .await?;
        crate::dsr::audit(&self.store.db, &caller, "dsr.export_started", &request).await?;
        Ok(Response::new(request))
    }

    async fn get_export(&self, request: Request<pb::GetExportRequest>) -> Result<Response<pb::ExportResult>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let (request, result) = self.requests().get(&r.request_id, pb::RequestKind::Export).await?;
        crate::dsr::audit(&self.store.db, &caller, "dsr.export_read", &request).await?;
        let document = prost_types::Struct::decode(result.as_slice()).map_err(Error::internal)?;
        Ok(Response::new(pb::ExportResult { request: Some(request), document: Some(document) }))
    }

    async fn start_erasure(
        &self,
        request: Request<pb::StartErasureRequest>,
    ) -> Result<Response<pb::DataSubjectRequest>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let (request, _) = self
            .requests()
            .run(&caller, pb::RequestKind::Erasure, r.subject.as_ref(), r.received_at.as_ref(), &r.reference)
            .await?;
        crate::dsr::audit(&self.store.db, &caller, "dsr.erasure_started", &request).await?;
        Ok(Response::new(request))
    }

    async fn get_erasure(
        &self,
        request: Request<pb::GetErasureRequest>,
    ) -> Result<Response<pb::ErasureResult>, Status> {
        let r = request.into_inner();
        let (request, result) = self.requests().get(&r.request_id, pb::RequestKind::Erasure).await?;
        let stored = pb::ErasureResult::decode(result.as_slice()).map_err(Error::internal)?;
        Ok(Response::new(pb::ErasureResult { request: Some(request), receipt: stored.receipt }))
    }

    async fn list_data_subject_requests(
        &self,
        request: Request<pb::ListDataSubjectRequestsRequest>,
    ) -> Result<Response<pb::ListDataSubjectRequestsResponse>, Status> {
        let r = request.into_inner();
        let (size, offset) = page(r.page.as_ref())?;
        let all = self.requests().list(&r).await?;
        let (requests, page) = paged(all, size, offset);
        Ok(Response::new(pb::ListDataSubjectRequestsResponse { requests, page: Some(page) }))
    }

    async fn add_suppression(
        &self,
        request: Request<pb::AddSuppressionRequest>,
    ) -> Result<Response<pb::AddSuppressionResponse>, Status> {
        let r = request.into_inner();
        let cp = r.contact_point.as_ref().ok_or_else(|| Error::invalid("contact_point", "is required"))?;
        let cp = self.contact_point("contact_point", cp)?;
        if r.channel != 0 {
            channel("channel", r.channel)?;
        }
        let reason = match pb::SuppressionReason::try_from(r.reason) {
            Ok(pb::SuppressionReason::Unspecified) => return Err(Error::invalid("reason", "is required").into()),
            Ok(reason) => reason,
            Err(_) => return Err(Error::invalid("reason", format!("unknown reason {}", r.reason)).into()),
        };
        let provenance = provenance("provenance", r.provenance.as_ref())?;
        if r.note.chars().count() > 1000 {
            return Err(Error::invalid("note", "at most 1,000 characters").into());
        }
        let expires_at = optional_time("expires_at", r.expires_at.as_ref())?;
        if expires_at.is_some_and(|e| e <= now_millis()) {
            return Err(Error::invalid("expires_at", "must be in the future").into());
        }
        let customer = self.holder(&cp).await?.unwrap_or_default();
        let mut tx = self.store.db.begin().await.map_err(Error::from)?;
        let mut messages = Vec::new();
        let (suppression, created) = self
            .store
            .add_suppression(&mut tx, &cp, r.channel, reason, provenance, r.note, expires_at, &customer, &mut messages)
            .await?;
        Outbox::append(&mut tx, &messages).await.map_err(Error::from)?;
        self.store.commit(tx).await?;
        Ok(Response::new(pb::AddSuppressionResponse { suppression: Some(suppression), created }))
    }

    async fn remove_suppression(
        &self,
        request: Request<pb::RemoveSuppressionRequest>,
    ) -> Result<Response<pb::Suppression>, Status> {
        let by = caller(&request);
        let r = request.into_inner();
        if r.suppression_id.trim().is_empty() {
            return Err(Error::invalid("suppression_id", "is required").into());
        }
        if r.reason.trim().is_empty() {
            return Err(Error::invalid("reason", "is required").into());
        }
        let mut tx = self.store.db.begin().await.map_err(Error::from)?;
        let mut messages = Vec::new();
        let removed = self
            .store
            .remove_suppression(&mut tx, r.suppression_id.trim(), &by, r.reason.trim(), &mut messages)
            .await?
            .ok_or_else(|| Error::not_found(format!("suppression {}", r.suppression_id.trim())))?;
        Outbox::append(&mut tx, &messages).await.map_err(Error::from)?;
        self.store.commit(tx).await?;
        Ok(Response::new(removed))
    }

    async fn list_suppressions(
        &self,
        request: Request<pb::ListSuppressionsRequest>,
    ) -> Result<Response<pb::ListSuppressionsResponse>, Status> {
        let r = request.into_inner();
        let cp = r.contact_point.as_ref().map(|c| self.contact_point("contact_point", c)).transpose()?;
        if r.channel != 0 {
            channel("channel", r.channel)?;
        }
        for (i, reason) in r.reasons.iter().enumerate() {
            if !matches!(pb::SuppressionReason::try_from(*reason), Ok(x) if x != pb::SuppressionReason::Unspecified) {
                return Err(Error::invalid(&format!("reasons[{i}]"), "unknown reason").into());
            }
        }
        let (size, offset) = page(r.page.as_ref())?;
        let all = self.store.list_suppressions(cp.as_ref(), r.channel, &r.reasons, r.include_inactive).await?;
        let (suppressions, page) = paged(all, size, offset);
        Ok(Response::new(pb::ListSuppressionsResponse { suppressions, page: Some(page) }))
    }

    async fn start_double_opt_in(
        &self,
        request: Request<pb::StartDoubleOptInRequest>,
    ) -> Result<Response<pb::StartDoubleOptInResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let cp = r.contact_point.as_ref().ok_or_else(|| Error::invalid("contact_point", "is required"))?;
        if !matches!(
            common::IdentifierType::try_from(cp.r#type),
            Ok(common::IdentifierType::Email | common::IdentifierType::Phone)
        ) {
            return Err(Error::invalid("contact_point.type", "must be EMAIL or PHONE").into());
        }
        let cp = self.contact_point("contact_point", cp)?;
        let channel = channel("channel", r.channel)?;
        if r.purposes.is_empty() {
            return Err(Error::invalid("purposes", "at least one purpose is required").into());
        }
        let mut purposes = Vec::new();
        for (i, p) in r.purposes.iter().enumerate() {
            purposes.push(self.purpose(&format!("purposes[{i}]"), Some(p))?);
        }
        purposes.dedup();
        let provenance = provenance("provenance", r.provenance.as_ref())?;
        let proof = proof("proof", r.proof.as_ref(), None)?;
        let occurred_at = required_time("occurred_at", r.occurred_at.as_ref())?;
        let now = now_millis();
        if occurred_at > now + FIVE_MINUTES {
            return Err(Error::invalid("occurred_at", "is more than 5 minutes in the future").into());
        }
        let ttl = ttl("ttl", r.ttl.as_ref(), self.store.settings.double_opt_in_ttl_seconds, 30 * 24 * 3600)?;
        let region = region("region", &r.region)?;
        let customer = self.person("customer", r.customer.as_ref(), Some(&cp)).await?.unwrap_or_default();
        self.refuse_erased("customer", &customer).await?;
        let start = DoubleOptIn { customer, cp, channel, purposes, provenance, proof, occurred_at, ttl, region };
        let (claims, entries) = start.claims_and_entries(now);
        let pending = self.store.record(&caller, entries).await?;
        Ok(Response::new(self.double_opt_in_response(&claims, pending.into_iter().map(|a| a.entry).collect())))
    }

    async fn confirm_double_opt_in(
        &self,
        request: Request<pb::ConfirmDoubleOptInRequest>,
    ) -> Result<Response<pb::ConfirmDoubleOptInResponse>, Status> {
        let r = request.into_inner();
        let occurred = optional_time("occurred_at", r.occurred_at.as_ref())?;
        Ok(Response::new(self.confirm_with(&r.token, r.proof.as_ref(), occurred).await?))
    }

    async fn issue_unsubscribe_token(
        &self,
        request: Request<pb::IssueUnsubscribeTokenRequest>,
    ) -> Result<Response<pb::IssueUnsubscribeTokenResponse>, Status> {
        let r = request.into_inner();
        let cp = r.contact_point.as_ref().ok_or_else(|| Error::invalid("contact_point", "is required"))?;
        let cp = self.contact_point("contact_point", cp)?;
        let channel = channel("channel", r.channel)?;
        let purpose = self.purpose("purpose", r.purpose.as_ref())?;
        let ttl = ttl("ttl", r.ttl.as_ref(), self.store.settings.unsubscribe_ttl_seconds, 2 * 366 * 24 * 3600)?;
        if r.customer_id.len() > 128 || r.message_id.len() > 64 || r.decision_id.len() > 64 {
            return Err(Error::invalid("customer_id", "ids at most 128 (customer) or 64 characters").into());
        }
        let claims = Claims {
            k: "unsub".into(),
            id: format!("tok_{}", uuid::Uuid::now_v7().simple()),
            ct: cp.t,
            cv: cp.v,
            ch: channel,
            p: vec![purpose],
            c: r.customer_id.trim().to_string(),
            exp: now_millis() + ttl,
            m: r.message_id.trim().to_string(),
            d: r.decision_id.trim().to_string(),
            r: String::new(),
        };
        let token = self.store.signer.sign(&claims);
        Ok(Response::new(pb::IssueUnsubscribeTokenResponse {
            url: format!("{}/consent/unsubscribe?token={token}", self.store.base_url),
            token,
            list_unsubscribe_post: "List-Unsubscribe=One-Click".into(),
            expires_at: Some(timestamp(claims.exp)),
        }))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let r = request.into_inner();
        let occurred = optional_time("occurred_at", r.occurred_at.as_ref())?;
        Ok(Response::new(self.unsubscribe_with(&r.token, r.proof.as_ref(), occurred).await?))
    }

    async fn issue_preference_token(
        &self,
        request: Request<pb::IssuePreferenceTokenRequest>,
    ) -> Result<Response<pb::IssuePreferenceTokenResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.issue_preference_token_with(r.customer.as_ref(), r.ttl.as_ref()).await?))
    }

    async fn get_preferences(
        &self,
        request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let subject = self.preference_subject(request.into_inner().subject.as_ref()).await?;
        Ok(Response::new(self.preferences(&subject).await?))
    }

    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::UpdatePreferencesResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let subject = self.preference_subject(r.subject.as_ref()).await?;
        let changes = self.preference_changes(&subject, &r.changes).await?;
        Ok(Response::new(
            self.update_preferences_with(&caller, &subject, changes, r.proof.as_ref(), r.provenance.as_ref()).await?,
        ))
    }

    async fn describe_token(
        &self,
        request: Request<pb::DescribeTokenRequest>,
    ) -> Result<Response<pb::DescribeTokenResponse>, Status> {
        Ok(Response::new(self.describe(&request.into_inner().token).await?))
    }

    async fn export_customer(
        &self,
        request: Request<common::ExportCustomerRequest>,
    ) -> Result<Response<common::ExportCustomerResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        if r.customer.as_ref().and_then(|c| c.r#ref.as_ref()).is_none() {
            return Err(Error::invalid("customer", "is required").into());
        }
        let scope = self.scope_of("customer", r.customer.as_ref(), None).await?;
        if scope.customer.is_empty() {
            return Err(Error::not_found("customer with this identifier").into());
        }
        let mut exec = Exec::Db(&self.store.db);
        let mut entries = self.store.entries(&mut exec, &scope, None).await?;
        entries.sort_by_key(|e| (e.occurred, e.seq));
        let mut suppressions = Vec::new();
        for id in &scope.lineage {
            let rows: Vec<(i64, Vec<u8>)> = exec
                .all("SELECT seq, body FROM consent_suppressions WHERE customer_id = $1 ORDER BY seq", &[id.into()])
                .await?;
            for (_, body) in rows {
                suppressions.push(pb::Suppression::decode(body.as_slice()).map_err(Error::internal)?);
            }
        }
        rapport_storage::Audit::record(&self.store.db, &caller, "customer.export", &scope.customer, "consent ledger")
            .await
            .map_err(Error::from)?;
        let json = serde_json::json!({
            "customer_id": scope.customer,
            "aliases": scope.lineage.iter().skip(1).collect::<Vec<_>>(),
            "consent_entries": entries.iter().map(|e| entry_json(&e.entry)).collect::<Vec<_>>(),
            "suppressions": suppressions.iter().map(suppression_json).collect::<Vec<_>>(),
        });
        Ok(Response::new(common::ExportCustomerResponse {
            customer_id: scope.customer.clone(),
            data: Some(json_to_struct(json)),
        }))
    }

    async fn erase_customer(
        &self,
        request: Request<common::EraseCustomerRequest>,
    ) -> Result<Response<common::EraseCustomerResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        if r.customer.as_ref().and_then(|c| c.r#ref.as_ref()).is_none() {
            return Err(Error::invalid("customer", "is required").into());
        }
        if r.reason.trim().is_empty() {
            return Err(Error::invalid("reason", "is required for the audit log").into());
        }
        let scope = self.scope_of("customer", r.customer.as_ref(), None).await?;
        if scope.customer.is_empty() {
            return Err(Error::not_found("customer with this identifier").into());
        }
        let mut tx = self.store.db.begin().await.map_err(Error::from)?;
        let erased = self.store.erase_in(&mut tx, &scope.lineage, "").await?;
        let detail = format!("{erased} records; reason: {}", r.reason.trim());
        rapport_storage::Audit::record_in(&mut tx, &caller, "customer.erase", &scope.customer, &detail)
            .await
            .map_err(Error::from)?;
        self.store.commit(tx).await?;
        tracing::info!(customer_id = %scope.customer, records = erased, "customer erased from the consent ledger");
        Ok(Response::new(common::EraseCustomerResponse { records_erased: erased }))
    }
}
