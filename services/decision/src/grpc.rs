//! The gRPC handlers: decode and validate (errors name the field), call the store or the engine, encode.

use std::sync::Arc;

use rapport_errors::{Error, ErrorCode};
use rapport_proto::common::v1::{self as common, customer_ref::Ref};
use rapport_proto::decision::v1::{self as pb, decision_service_server::DecisionService};
use rapport_proto::identity::v1 as identity;
use rapport_rpc::convert::{json_to_struct, millis, page_size, struct_to_json};
use rapport_rpc::feed::RecordStream;
use rapport_storage::now_millis;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::decide::{self, Input, Scope};
use crate::domain::offers::{self, default_channel, validate_offer};
use crate::outcomes::{self, NewOutcome};
use crate::store::Store;

/// The decision service.
pub struct Decisions {
    pub store: Arc<Store>,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The campaign side (campaigns, experiments, reports).
    pub campaigns: Arc<crate::campaigns::Campaigns>,
}

/// The caller's principal name, for audit and `updated_by`.
pub fn caller<T>(request: &Request<T>) -> String {
    rapport_auth::Principal::of(request).map(|p| p.name.clone()).unwrap_or_else(|| "unknown".into())
}

/// The customer id `r` names: a customer id as given, or the holder of an identifier (identity.Lookup).
pub async fn customer_of(store: &Store, field: &str, r: Option<&common::CustomerRef>) -> Result<String, Status> {
    match r.and_then(|r| r.r#ref.as_ref()) {
        Some(Ref::CustomerId(id)) => {
            let id = id.trim();
            if id.is_empty() || id.len() > 128 {
                return Err(Error::invalid(&format!("{field}.customer_id"), "must be 1 to 128 characters").into());
            }
            Ok(id.to_string())
        }
        Some(Ref::Identifier(i)) => {
            if i.value.trim().is_empty() {
                return Err(Error::invalid(&format!("{field}.identifier.value"), "is required").into());
            }
            let request = identity::LookupRequest { identifier: Some(i.clone()) };
            match store.clients.identity()?.lookup(request).await {
                Ok(r) => Ok(r.into_inner().customer_id),
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    Err(Status::invalid_argument(format!("{field}.{}", s.message())))
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    Err(Status::not_found(format!("{field}: no customer holds this identifier")))
                }
                Err(s) => Err(s),
            }
        }
        None => Err(Error::invalid(field, "is required: a customer_id or an identifier").into()),
    }
}

const OFFER_PATHS: [&str; 12] = [
    "name",
    "content",
    "valid_from",
    "valid_until",
    "eligibility_rule",
    "business_value",
    "weight",
    "caps",
    "placements",
    "tags",
    "message_class",
    "purpose",
];

/// `current` with the fields of `update` named by `paths` (every field when empty).
fn merge_offer(current: &pb::Offer, update: pb::Offer, paths: &[String]) -> Result<pb::Offer, Error> {
    rapport_rpc::convert::check_paths("update_mask", paths, &OFFER_PATHS)?;
    let all = paths.is_empty();
    let wants = |p: &str| all || paths.iter().any(|x| x == p);
    let mut next = current.clone();
    if wants("name") {
        next.name = update.name;
    }
    if wants("content") {
        next.content = update.content;
    }
    if wants("valid_from") {
        next.valid_from = update.valid_from;
    }
    if wants("valid_until") {
        next.valid_until = update.valid_until;
    }
    if wants("eligibility_rule") {
        next.eligibility_rule = update.eligibility_rule;
    }
    if wants("business_value") {
        next.business_value = update.business_value;
    }
    if wants("weight") {
        next.weight = update.weight;
    }
    if wants("caps") {
        next.caps = update.caps;
    }
    if wants("placements") {
        next.placements = update.placements;
    }
    if wants("tags") {
        next.tags = update.tags;
    }
    if wants("message_class") {
        next.message_class = update.message_class;
    }
    if wants("purpose") {
        next.purpose = update.purpose;
    }
    Ok(next)
}

impl Decisions {
    async fn decide_input(&self, r: pb::DecideRequest) -> Result<Input, Status> {
        let placement = offers::placement("placement", r.placement)?;
        let channel = if r.channel == 0 { default_channel(placement) } else { offers::channel("channel", r.channel)? };
        let limit = match r.limit {
            0 => 1,
            n @ 1..=20 => n as usize,
            _ => return Err(Error::invalid("limit", "must be between 1 and 20").into()),
        };
        let context =
            r.context.as_ref().map_or(Value::Object(Default::default()), |c| Value::Object(struct_to_json(c)));
        if serde_json::to_vec(&context).map_or(0, |v| v.len()) > 32 * 1024 {
            return Err(Error::invalid("context", "larger than 32 KiB").into());
        }
        let customer_id = customer_of(&self.store, "customer", r.customer.as_ref()).await?;
        let scope = if r.campaign_id.is_empty() {
            Scope::default()
        } else {
            self.campaigns.scope_of(&r.campaign_id, &customer_id).await?
        };
        Ok(Input { customer_id, placement, channel, context, limit, dry_run: r.dry_run, scope, decision_id: None })
    }
}

#[tonic::async_trait]
impl DecisionService for Decisions {
    async fn subscribe(&self, request: Request<common::SubscribeRequest>) -> Result<Response<RecordStream>, Status> {
        rapport_rpc::feed::subscribe(&self.store.outbox, request.into_inner(), &self.shutdown).await.map(Response::new)
    }

    async fn export_customer(
        &self,
        request: Request<common::ExportCustomerRequest>,
    ) -> Result<Response<common::ExportCustomerResponse>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let customer_id = customer_of(&self.store, "customer", r.customer.as_ref()).await?;
        let data = crate::dsr::export(&self.store, &customer_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("customer: decision holds nothing about {customer_id}")))?;
        rapport_storage::Audit::record(&self.store.db, &who, "customer.export", &customer_id, "decision log")
            .await
            .map_err(Status::from)?;
        Ok(Response::new(common::ExportCustomerResponse { customer_id, data: Some(json_to_struct(data)) }))
    }

    async fn erase_customer(
        &self,
        request: Request<common::EraseCustomerRequest>,
    ) -> Result<Response<common::EraseCustomerResponse>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        if r.reason.trim().is_empty() {
            return Err(Error::invalid("reason", "is required").into());
        }
        let customer_id = customer_of(&self.store, "customer", r.customer.as_ref()).await?;
        let records_erased = crate::dsr::erase(&self.store, &customer_id, &who, r.reason.trim()).await?;
        Ok(Response::new(common::EraseCustomerResponse { records_erased }))
    }

    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        let input = self.decide_input(request.into_inner()).await?;
        Ok(Response::new(decide::decide(&self.store, input).await?.response))
    }

    async fn record_outcome(
        &self,
        request: Request<pb::RecordOutcomeRequest>,
    ) -> Result<Response<pb::RecordOutcomeResponse>, Status> {
        let r = request.into_inner();
        let outcome_id = r.outcome_id.trim().to_string();
        if outcome_id.is_empty() || outcome_id.len() > 128 {
            return Err(Error::invalid("outcome_id", "is required (1 to 128 characters)").into());
        }
        let kind = match pb::OutcomeKind::try_from(r.kind) {
            Ok(pb::OutcomeKind::Unspecified) => return Err(Error::invalid("kind", "is required").into()),
            Ok(k) => k,
            Err(_) => return Err(Error::invalid("kind", format!("unknown outcome kind {}", r.kind)).into()),
        };
        if let Some(m) = &r.revenue {
            offers::money("revenue", m)?;
        }
        let now = now_millis();
        let occurred_at = match &r.occurred_at {
            Some(t) => millis(t).ok_or_else(|| Error::invalid("occurred_at", "is not a valid time"))?,
            None => now,
        };
        if occurred_at > now + 24 * 3600 * 1000 {
            return Err(Error::invalid("occurred_at", "is more than 24 hours in the future").into());
        }
        let decision_id = r.decision_id.trim().to_string();
        let customer_id = if r.customer.is_some() {
            customer_of(&self.store, "customer", r.customer.as_ref()).await?
        } else if decision_id.is_empty() {
            return Err(Error::invalid("decision_id", "a decision_id or a customer is required").into());
        } else {
            String::new()
        };
        let recorded = outcomes::record(
            &self.store,
            NewOutcome {
                outcome_id,
                decision_id,
                customer_id,
                offer_id: r.offer_id.trim().to_string(),
                kind,
                revenue: r.revenue,
                occurred_at,
            },
        )
        .await?;
        Ok(Response::new(pb::RecordOutcomeResponse {
            decision_id: recorded.decision_id,
            duplicate: recorded.duplicate,
        }))
    }

    async fn create_offer(&self, request: Request<pb::CreateOfferRequest>) -> Result<Response<pb::Offer>, Status> {
        let who = caller(&request);
        let offer = request.into_inner().offer.ok_or_else(|| Error::invalid("offer", "is required"))?;
        let (offer, _) = validate_offer("offer", offer)?;
        Ok(Response::new(self.store.create_offer(offer, &who).await?))
    }

    async fn update_offer(&self, request: Request<pb::UpdateOfferRequest>) -> Result<Response<pb::Offer>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let update = r.offer.ok_or_else(|| Error::invalid("offer", "is required"))?;
        if update.offer_id.is_empty() {
            return Err(Error::invalid("offer.offer_id", "is required").into());
        }
        let current = self.store.offer(&update.offer_id).await?;
        if current.archived {
            return Err(
                Error::new(ErrorCode::FailedPrecondition, format!("offer {} is archived", current.offer_id)).into()
            );
        }
        if r.expected_version != 0 && r.expected_version != current.version {
            return Err(Error::new(
                ErrorCode::Aborted,
                format!(
                    "expected_version: offer {} is at version {}, not {}",
                    current.offer_id, current.version, r.expected_version
                ),
            )
            .into());
        }
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let next = merge_offer(&current, update, &paths)?;
        let (next, _) = validate_offer("offer", next)?;
        Ok(Response::new(self.store.update_offer(&current, next, &who).await?))
    }

    async fn get_offer(&self, request: Request<pb::GetOfferRequest>) -> Result<Response<pb::Offer>, Status> {
        let r = request.into_inner();
        if r.offer_id.is_empty() {
            return Err(Error::invalid("offer_id", "is required").into());
        }
        if r.version < 0 {
            return Err(Error::invalid("version", "must not be negative").into());
        }
        let offer = if r.version == 0 {
            self.store.offer(&r.offer_id).await?
        } else {
            self.store.offer_version(&r.offer_id, r.version).await?
        };
        Ok(Response::new(offer))
    }

    async fn list_offers(
        &self,
        request: Request<pb::ListOffersRequest>,
    ) -> Result<Response<pb::ListOffersResponse>, Status> {
        let r = request.into_inner();
        let page = r.page.unwrap_or_default();
        let limit = page_size("page.page_size", page.page_size, 50, 1000)?;
        let offers = self.store.offers(r.include_archived, &r.tags, &page.page_token, limit).await?;
        let next = if offers.len() as i64 == limit {
            offers.last().map(|o| o.offer_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListOffersResponse { offers, page: Some(common::PageResponse { next_page_token: next }) }))
    }

    async fn list_offer_versions(
        &self,
        request: Request<pb::ListOfferVersionsRequest>,
    ) -> Result<Response<pb::ListOfferVersionsResponse>, Status> {
        let r = request.into_inner();
        if r.offer_id.is_empty() {
            return Err(Error::invalid("offer_id", "is required").into());
        }
        Ok(Response::new(pb::ListOfferVersionsResponse { versions: self.store.offer_versions(&r.offer_id).await? }))
    }

    async fn archive_offer(&self, request: Request<pb::ArchiveOfferRequest>) -> Result<Response<pb::Offer>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        if r.offer_id.is_empty() {
            return Err(Error::invalid("offer_id", "is required").into());
        }
        let current = self.store.offer(&r.offer_id).await?;
        if current.archived {
            return Ok(Response::new(current));
        }
        let next = pb::Offer { archived: true, ..current.clone() };
        Ok(Response::new(self.store.update_offer(&current, next, &who).await?))
    }

    async fn put_placement(
        &self,
        request: Request<pb::PutPlacementRequest>,
    ) -> Result<Response<pb::Placement>, Status> {
        let p = request.into_inner().placement.ok_or_else(|| Error::invalid("placement", "is required"))?;
        let p = offers::validate_placement(p)?;
        self.store.put_placement(&p).await?;
        Ok(Response::new(p))
    }

    async fn list_placements(
        &self,
        _request: Request<pb::ListPlacementsRequest>,
    ) -> Result<Response<pb::ListPlacementsResponse>, Status> {
        let catalog = self.store.catalog();
        let placements =
            (1..=7).filter_map(|k| pb::PlacementKind::try_from(k).ok()).map(|k| catalog.placement(k)).collect();
        Ok(Response::new(pb::ListPlacementsResponse { placements }))
    }

    async fn put_contact_policy(
        &self,
        request: Request<pb::PutContactPolicyRequest>,
    ) -> Result<Response<pb::ContactPolicy>, Status> {
        let p = request.into_inner().policy.ok_or_else(|| Error::invalid("policy", "is required"))?;
        let p = offers::validate_policy(p)?;
        self.store.put_policy(&p).await?;
        Ok(Response::new(p))
    }

    async fn list_contact_policies(
        &self,
        _request: Request<pb::ListContactPoliciesRequest>,
    ) -> Result<Response<pb::ListContactPoliciesResponse>, Status> {
        Ok(Response::new(pb::ListContactPoliciesResponse { policies: self.store.catalog().policies.clone() }))
    }

    async fn list_decisions(
        &self,
        request: Request<pb::ListDecisionsRequest>,
    ) -> Result<Response<pb::ListDecisionsResponse>, Status> {
        let r = request.into_inner();
        let customer_id = customer_of(&self.store, "customer", r.customer.as_ref()).await?;
        let page = r.page.unwrap_or_default();
        let limit = page_size("page.page_size", page.page_size, 50, 1000)?;
        let before = if page.page_token.is_empty() {
            None
        } else {
            let (at, id) = page
                .page_token
                .split_once(':')
                .and_then(|(a, id)| Some((a.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| Error::invalid("page.page_token", "is not a token this service issued"))?;
            Some((at, id))
        };
        let decisions = self.store.decisions_of(&customer_id, before, limit).await?;
        let next = match decisions.last() {
            Some(d) if decisions.len() as i64 == limit => {
                format!("{}:{}", d.decided_at.as_ref().and_then(millis).unwrap_or_default(), d.decision_id)
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListDecisionsResponse {
            decisions,
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let c = request.into_inner().campaign.ok_or_else(|| Error::invalid("campaign", "is required"))?;
        Ok(Response::new(self.campaigns.create(c).await?))
    }

    async fn update_campaign(
        &self,
        request: Request<pb::UpdateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let r = request.into_inner();
        let c = r.campaign.ok_or_else(|| Error::invalid("campaign", "is required"))?;
        Ok(Response::new(self.campaigns.update(c, r.update_mask.map(|m| m.paths).unwrap_or_default()).await?))
    }

    async fn get_campaign(&self, request: Request<pb::GetCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let r = request.into_inner();
        if r.campaign_id.is_empty() {
            return Err(Error::invalid("campaign_id", "is required").into());
        }
        Ok(Response::new(self.campaigns.get(&r.campaign_id).await?))
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let page = request.into_inner().page.unwrap_or_default();
        let limit = page_size("page.page_size", page.page_size, 50, 1000)?;
        let campaigns = self.campaigns.list(&page.page_token, limit).await?;
        let next = if campaigns.len() as i64 == limit {
            campaigns.last().map(|c| c.campaign_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListCampaignsResponse {
            campaigns,
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn set_campaign_state(
        &self,
        request: Request<pb::SetCampaignStateRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let r = request.into_inner();
        if r.campaign_id.is_empty() {
            return Err(Error::invalid("campaign_id", "is required").into());
        }
        Ok(Response::new(self.campaigns.set_state(&r.campaign_id, r.state).await?))
    }

    async fn create_experiment(
        &self,
        request: Request<pb::CreateExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        let e = request.into_inner().experiment.ok_or_else(|| Error::invalid("experiment", "is required"))?;
        Ok(Response::new(self.campaigns.create_experiment(e).await?))
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        let r = request.into_inner();
        if r.experiment_id.is_empty() {
            return Err(Error::invalid("experiment_id", "is required").into());
        }
        Ok(Response::new(self.campaigns.experiment(&r.experiment_id).await?))
    }

    async fn get_assignment(
        &self,
        request: Request<pb::GetAssignmentRequest>,
    ) -> Result<Response<pb::Assignment>, Status> {
        let r = request.into_inner();
        if r.experiment_id.is_empty() {
            return Err(Error::invalid("experiment_id", "is required").into());
        }
        let customer_id = customer_of(&self.store, "customer", r.customer.as_ref()).await?;
        let e = self.campaigns.experiment(&r.experiment_id).await?;
        let arm = crate::campaigns::arm_of(&e, &customer_id)
            .ok_or_else(|| Error::new(ErrorCode::FailedPrecondition, "experiment has no arm with a positive weight"))?;
        let arm = arm.name.clone();
        Ok(Response::new(pb::Assignment { experiment_id: e.experiment_id, customer_id, arm }))
    }

    async fn report(&self, request: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        Ok(Response::new(crate::report::report(&self.store, &self.campaigns, request.into_inner()).await?))
    }

    async fn evaluate_policy(
        &self,
        request: Request<pb::EvaluatePolicyRequest>,
    ) -> Result<Response<pb::EvaluatePolicyResponse>, Status> {
        Ok(Response::new(crate::report::evaluate_policy(&self.store, request.into_inner()).await?))
    }
}
