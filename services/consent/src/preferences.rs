//! The preference centre: a customer's switches per channel, purpose and contact point, read and changed
//! by a trusted caller (by customer) or by the person (with a signed, reusable preference token).
//!
//! A switch shows what Check answers now (the same evaluation, cache included). A change goes through
//! Record's path (one transaction with its outbox events, then the Check cache's version moves, so a
//! withdrawal is seen by the very next Check) and, for a grant on a double opt-in channel, through
//! StartDoubleOptIn's (PENDING entries under a confirmation token).

use std::collections::BTreeMap;

use rapport_errors::{Error, ErrorCode};
use rapport_proto::common::v1 as common;
use rapport_proto::consent::v1 as pb;
use rapport_proto::identity::v1 as pb_identity;
use rapport_rpc::convert::timestamp;
use rapport_storage::now_millis;

use crate::grpc::{Consent, DoubleOptIn, channel, proof, provenance, status_error, ttl};
use crate::sql::Exec;
use crate::store::{Cp, NewEntry, cp_of};
use crate::tokens::{Claims, mask};

/// The kind claim of preference tokens.
pub const TOKEN_KIND: &str = "pref";
/// The most changes one UpdatePreferences may carry.
pub const MAX_CHANGES: usize = 100;
/// The provenance source of changes that name none.
pub const SOURCE: &str = "preference_centre";

/// Whose preferences, resolved.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The customer (canonical id).
    pub customer: String,
    /// Opened with a token: contact points are shown masked.
    pub masked: bool,
    /// The customer's contact points: identity's emails and phones, and those the ledger holds.
    pub contact_points: Vec<Cp>,
}

/// One switch of the centre.
#[derive(Debug, Clone)]
pub struct Switch {
    /// The contact point; `None` for customer-wide.
    pub cp: Option<Cp>,
    /// The row as GetPreferences answers it.
    pub row: pb::Preference,
    /// A stable name for the switch in a page's form that shows no contact point.
    pub key: String,
}

/// A validated change of one switch.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Its index in the request, for errors.
    pub index: usize,
    pub channel: i32,
    pub purpose: String,
    pub cp: Option<Cp>,
    pub allow: bool,
}

/// The channels a contact point of type `t` can be reached on.
fn reaches(t: i32, channel: i32) -> bool {
    use common::{Channel as C, IdentifierType as T};
    let channel = C::try_from(channel).unwrap_or(C::Unspecified);
    match T::try_from(t).unwrap_or(T::Unspecified) {
        T::Email => channel == C::Email,
        T::Phone => matches!(channel, C::Sms | C::PhoneCall),
        T::DeviceId => matches!(channel, C::Push | C::InApp),
        _ => false,
    }
}

/// Whether a double opt-in can be confirmed through `cp` (an email or a phone).
fn can_confirm(cp: &Cp) -> bool {
    matches!(common::IdentifierType::try_from(cp.t), Ok(common::IdentifierType::Email | common::IdentifierType::Phone))
}

fn channel_label(c: i32) -> String {
    common::Channel::try_from(c)
        .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase())
        .unwrap_or_else(|_| c.to_string())
}

impl Consent {
    /// The purposes the centre offers: the configured ones except service purposes (allowed unless
    /// suppressed, so no switch of the centre could change them).
    fn offered_purposes(&self) -> Vec<String> {
        let s = &self.store.settings;
        s.purposes.iter().filter(|p| !s.is_service(p)).cloned().collect()
    }

    /// The customer's emails and phones as identity holds them; `None` when identity is neither here
    /// nor configured. NOT_FOUND (naming `field`) for a customer identity does not know.
    async fn identity_contact_points(&self, field: &str, customer: &str) -> Result<Option<Vec<Cp>>, Error> {
        if !self.store.clients.is_wired("identity") {
            return Ok(None);
        }
        let mut client = self.store.clients.identity().map_err(status_error)?;
        let request = pb_identity::GetCustomerRequest {
            customer_id: customer.to_string(),
            read_mask: Some(prost_types::FieldMask { paths: vec!["identifiers".into()] }),
        };
        let found = match client.get_customer(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {
                return Err(Error::not_found(format!("{field}: customer")));
            }
            Err(s) => return Err(status_error(s)),
        };
        if found.erased {
            return Err(Error::new(ErrorCode::FailedPrecondition, format!("{field}: the customer was erased")));
        }
        Ok(Some(
            found
                .identifiers
                .iter()
                .filter_map(|h| h.identifier.as_ref())
                .filter(|i| {
                    matches!(
                        common::IdentifierType::try_from(i.r#type),
                        Ok(common::IdentifierType::Email | common::IdentifierType::Phone)
                    )
                })
                .filter_map(|i| self.contact_point(field, i).ok())
                .collect(),
        ))
    }

    /// The subject for `customer` (canonical): its contact points from identity and from the ledger.
    async fn subject_of(&self, field: &str, customer: String, masked: bool) -> Result<Subject, Error> {
        self.refuse_erased(field, &customer).await?;
        let mut contact_points = self.identity_contact_points(field, &customer).await?.unwrap_or_default();
        let mut exec = Exec::Db(&self.store.db);
        let scope = self.store.scope(&mut exec, &customer, None).await?;
        for e in self.store.entries(&mut exec, &scope, None).await? {
            if let Some(cp) = cp_of(&e.entry).filter(|c| c.t != 0) {
                contact_points.push(cp);
            }
        }
        contact_points.sort();
        contact_points.dedup();
        Ok(Subject { customer, masked, contact_points })
    }

    /// The customer a reference names, known to identity when identity is wired.
    async fn known_customer(&self, field: &str, r: Option<&common::CustomerRef>) -> Result<Subject, Error> {
        if r.and_then(|r| r.r#ref.as_ref()).is_none() {
            return Err(Error::invalid(field, "is required"));
        }
        let customer = self
            .customer(field, r)
            .await?
            .ok_or_else(|| Error::not_found(format!("{field}: customer with this identifier")))?;
        self.subject_of(field, customer, false).await
    }

    /// Whose preferences a request names: a customer, or the customer of a valid preference token.
    pub async fn preference_subject(&self, s: Option<&pb::PreferenceSubject>) -> Result<Subject, Error> {
        match s.and_then(|s| s.subject.as_ref()) {
            None => Err(Error::invalid("subject", "is required: a customer or a preference token")),
            Some(pb::preference_subject::Subject::Customer(r)) => {
                self.known_customer("subject.customer", Some(r)).await
            }
            Some(pb::preference_subject::Subject::Token(t)) => self.token_preference_subject(t).await,
        }
    }

    /// The subject of a preference token: refused (naming `token`) when forged, altered or expired.
    pub async fn token_preference_subject(&self, token: &str) -> Result<Subject, Error> {
        if token.trim().is_empty() {
            return Err(Error::invalid("token", "is required"));
        }
        let claims = self.store.open_token(token, TOKEN_KIND).await?;
        let customer = self.store.canonical(&mut Exec::Db(&self.store.db), &claims.c).await?;
        self.subject_of("token", customer, true).await
    }

    /// Issues a reusable token opening the preference centre of the customer `r` names.
    pub async fn issue_preference_token_with(
        &self,
        r: Option<&common::CustomerRef>,
        ttl_in: Option<&prost_types::Duration>,
    ) -> Result<pb::IssuePreferenceTokenResponse, Error> {
        let ttl = ttl(
            "ttl",
            ttl_in,
            self.store.settings.preference_ttl_seconds,
            crate::settings::PREFERENCE_TTL_MAX_SECONDS,
        )?;
        let subject = self.known_customer("customer", r).await?;
        let claims = Claims {
            k: TOKEN_KIND.into(),
            id: format!("tok_{}", uuid::Uuid::now_v7().simple()),
            ct: 0,
            cv: String::new(),
            ch: 0,
            p: Vec::new(),
            c: subject.customer,
            exp: now_millis() + ttl,
            m: String::new(),
            d: String::new(),
            r: String::new(),
        };
        let token = self.store.signer.sign(&claims);
        Ok(pb::IssuePreferenceTokenResponse {
            url: format!("{}/consent/preferences?token={token}", self.store.base_url),
            token,
            expires_at: Some(timestamp(claims.exp)),
        })
    }

    /// Every switch of the subject's centre, as Check answers it now: customer-wide per offered channel
    /// and purpose, then per contact point on the offered channels it reaches.
    pub async fn switches(&self, subject: &Subject) -> Result<Vec<Switch>, Error> {
        let channels = self.store.settings.preference_channel_numbers();
        let purposes = self.offered_purposes();
        let mut keys: Vec<(Option<Cp>, i32)> = channels.iter().map(|c| (None, *c)).collect();
        for cp in &subject.contact_points {
            keys.extend(channels.iter().filter(|c| reaches(cp.t, **c)).map(|c| (Some(cp.clone()), *c)));
        }
        let now = now_millis();
        let mut out = Vec::with_capacity(keys.len() * purposes.len());
        for (cp, channel) in keys {
            let tag = cp.as_ref().map(|c| self.store.signer.tag(&format!("{}:{}", c.t, c.v))).unwrap_or_default();
            for purpose in &purposes {
                let o = self.decide(&subject.customer, cp.clone(), channel, purpose, now, "").await?;
                let contact_point = cp.as_ref().and_then(Cp::wire).map(|mut i| {
                    if subject.masked {
                        i.value = mask(&i.value);
                    }
                    i
                });
                out.push(Switch {
                    key: format!("{channel}.{purpose}.{tag}"),
                    cp: cp.clone(),
                    row: pb::Preference {
                        channel,
                        purpose: Some(common::Purpose { name: purpose.clone() }),
                        contact_point,
                        allowed: o.allowed,
                        status: o.entry.as_ref().map_or(0, |e| e.status),
                        entry_id: o.entry.map(|e| e.entry_id).unwrap_or_default(),
                        suppressed: o.reason == pb::CheckReason::Suppressed,
                    },
                });
            }
        }
        Ok(out)
    }

    /// The subject's preferences on the wire.
    pub async fn preferences(&self, subject: &Subject) -> Result<pb::Preferences, Error> {
        let preferences = self.switches(subject).await?.into_iter().map(|s| s.row).collect();
        Ok(pb::Preferences { customer_id: subject.customer.clone(), preferences })
    }

    /// The contact point `id` names among the subject's: by value, or by the masked form GetPreferences
    /// shows with a token.
    fn subject_contact_point(&self, subject: &Subject, field: &str, id: &common::Identifier) -> Result<Cp, Error> {
        let shown: Vec<&Cp> =
            subject.contact_points.iter().filter(|c| c.t == id.r#type && mask(&c.v) == id.value.trim()).collect();
        match shown.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            _ => return Err(Error::invalid(field, "matches more than one contact point of the customer")),
        }
        let cp = self.contact_point(field, id)?;
        subject
            .contact_points
            .iter()
            .find(|c| **c == cp)
            .cloned()
            .ok_or_else(|| Error::invalid(field, "is not a contact point of this customer"))
    }

    /// Validates the changes of an UpdatePreferences against the subject's switches, naming the field.
    pub async fn preference_changes(
        &self,
        subject: &Subject,
        changes: &[pb::PreferenceChange],
    ) -> Result<Vec<Change>, Error> {
        if changes.is_empty() || changes.len() > MAX_CHANGES {
            return Err(Error::invalid("changes", format!("between 1 and {MAX_CHANGES} changes")));
        }
        let offered = self.store.settings.preference_channel_numbers();
        let mut out: Vec<Change> = Vec::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            let field = format!("changes[{i}]");
            let channel = channel(&format!("{field}.channel"), c.channel)?;
            if !offered.contains(&channel) {
                return Err(Error::invalid(
                    &format!("{field}.channel"),
                    format!("`{}` is not offered in the preference centre", channel_label(channel)),
                ));
            }
            let purpose = self.purpose(&format!("{field}.purpose"), c.purpose.as_ref())?;
            if self.store.settings.is_service(&purpose) {
                return Err(Error::invalid(
                    &format!("{field}.purpose.name"),
                    format!("`{purpose}` is a service purpose, allowed unless suppressed: not a switch"),
                ));
            }
            let cp = c
                .contact_point
                .as_ref()
                .map(|id| self.subject_contact_point(subject, &format!("{field}.contact_point"), id))
                .transpose()?;
            if let Some(cp) = &cp
                && !reaches(cp.t, channel)
            {
                return Err(Error::invalid(
                    &format!("{field}.channel"),
                    format!("`{}` does not reach this contact point", channel_label(channel)),
                ));
            }
            let change = Change { index: i, channel, purpose, cp, allow: c.allow };
            if let Some(j) =
                out.iter().position(|o| (o.channel, &o.purpose, &o.cp) == (channel, &change.purpose, &change.cp))
            {
                return Err(Error::invalid(&field, format!("the same switch as changes[{j}]")));
            }
            out.push(change);
        }
        Ok(out)
    }

    /// Applies validated changes: an entry per changed switch (GRANTED, PENDING through double opt-in on
    /// the configured channels, or WITHDRAWN), all in one transaction through Record's path.
    pub async fn update_preferences_with(
        &self,
        caller: &str,
        subject: &Subject,
        changes: Vec<Change>,
        proof_in: Option<&pb::Proof>,
        provenance_in: Option<&common::Provenance>,
    ) -> Result<pb::UpdatePreferencesResponse, Error> {
        let mut proof = proof("proof", proof_in, Some(pb::ProofMethod::PreferenceCentre))?;
        if proof.notice_id.is_empty() {
            proof.notice_id = "preference-centre".into();
            proof.notice_version = "1".into();
        }
        let mut given = provenance_in.cloned().unwrap_or_default();
        if given.source.trim().is_empty() {
            given.source = SOURCE.into();
        }
        let provenance = provenance("provenance", Some(&given))?;
        let current = self.switches(subject).await?;
        let now = now_millis();
        let mut entries = Vec::new();
        let mut double_opt_ins: BTreeMap<(Cp, i32), Vec<String>> = BTreeMap::new();
        for c in changes {
            let row = current
                .iter()
                .find(|s| {
                    s.cp == c.cp
                        && s.row.channel == c.channel
                        && s.row.purpose.as_ref().is_some_and(|p| p.name == c.purpose)
                })
                .map(|s| &s.row);
            let pending = row.is_some_and(|r| r.status == pb::ConsentStatus::Pending as i32);
            if row.is_some_and(|r| r.allowed == c.allow) || (c.allow && pending) {
                continue;
            }
            if c.allow && self.store.settings.needs_double_opt_in(c.channel) {
                match &c.cp {
                    Some(cp) if can_confirm(cp) => {
                        double_opt_ins.entry((cp.clone(), c.channel)).or_default().push(c.purpose);
                        continue;
                    }
                    _ => {
                        return Err(Error::invalid(
                            &format!("changes[{}].contact_point", c.index),
                            format!(
                                "an email or phone is required: grants on `{}` go through double opt-in",
                                channel_label(c.channel)
                            ),
                        ));
                    }
                }
            }
            entries.push(NewEntry {
                customer_id: subject.customer.clone(),
                cp: c.cp.unwrap_or_default(),
                channel: c.channel,
                purpose: c.purpose,
                status: if c.allow { pb::ConsentStatus::Granted } else { pb::ConsentStatus::Withdrawn },
                legal_basis: pb::LegalBasis::Consent as i32,
                provenance: provenance.clone(),
                proof: proof.clone(),
                occurred_at: now,
                expires_at: None,
                region: String::new(),
                token_id: String::new(),
                idempotency_key: String::new(),
            });
        }
        let doi_ttl = self.store.settings.double_opt_in_ttl_seconds * 1000;
        let mut started = Vec::new();
        for ((cp, channel), purposes) in double_opt_ins {
            let start = DoubleOptIn {
                customer: subject.customer.clone(),
                cp,
                channel,
                purposes,
                provenance: provenance.clone(),
                proof: proof.clone(),
                occurred_at: now,
                ttl: doi_ttl,
                region: String::new(),
            };
            let (claims, pending) = start.claims_and_entries(now);
            entries.extend(pending);
            started.push(claims);
        }
        let recorded = if entries.is_empty() { Vec::new() } else { self.store.record(caller, entries).await? };
        let recorded: Vec<pb::ConsentEntry> = recorded
            .into_iter()
            .map(|a| {
                let mut e = a.entry;
                if subject.masked
                    && let Some(cp) = e.contact_point.as_mut()
                {
                    cp.value = mask(&cp.value);
                }
                e
            })
            .collect();
        let double_opt_ins = started
            .iter()
            .map(|claims| {
                let pending = recorded.iter().filter(|e| e.token_id == claims.id).cloned().collect();
                self.double_opt_in_response(claims, pending)
            })
            .collect();
        Ok(pb::UpdatePreferencesResponse {
            entries: recorded,
            preferences: Some(self.preferences(subject).await?),
            double_opt_ins,
        })
    }
}
