//! `rapport.identity.v1.IdentityService` over the graph: wire types in and out, validation that names
//! the field, outbox payloads as protobuf.

use std::sync::Arc;

use prost::{Message, Name};
use rapport_errors::Error;
use rapport_proto::common::v1 as common;
use rapport_proto::identity::v1 as pb;
use rapport_proto::identity::v1::identity_service_server::IdentityService;
use rapport_rpc::convert::timestamp;
use rapport_rpc::feed::RecordStream;
use rapport_storage::{Outbox, OutboxMessage};
use tonic::{Request, Response, Status};

use crate::graph::{self, EventEncoder, Graph, GraphChange, Origin, StoredIdent};
use crate::normalize::{IdType, Ident, Normalizer, Rejection};

/// The most identifiers one Resolve may carry.
pub const MAX_IDENTIFIERS: usize = 50;

/// The gRPC service.
pub struct Identity {
    pub(crate) graph: Graph,
    pub(crate) normalizer: Arc<Normalizer>,
    pub(crate) outbox: Outbox,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    pub(crate) runs: crate::records::Runs,
    /// Audited reads (golden records), written off the request path.
    pub(crate) audit: rapport_storage::AuditWriter,
}

fn id_type_of(t: i32) -> Option<IdType> {
    Some(match common::IdentifierType::try_from(t).ok()? {
        common::IdentifierType::UserId => IdType::UserId,
        common::IdentifierType::Email => IdType::Email,
        common::IdentifierType::Phone => IdType::Phone,
        common::IdentifierType::AnonymousId => IdType::AnonymousId,
        common::IdentifierType::DeviceId => IdType::DeviceId,
        common::IdentifierType::LoyaltyId => IdType::LoyaltyId,
        common::IdentifierType::External => IdType::External,
        common::IdentifierType::Unspecified => return None,
    })
}

fn wire_type(t: IdType) -> common::IdentifierType {
    match t {
        IdType::UserId => common::IdentifierType::UserId,
        IdType::Email => common::IdentifierType::Email,
        IdType::Phone => common::IdentifierType::Phone,
        IdType::AnonymousId => common::IdentifierType::AnonymousId,
        IdType::DeviceId => common::IdentifierType::DeviceId,
        IdType::LoyaltyId => common::IdentifierType::LoyaltyId,
        IdType::External => common::IdentifierType::External,
    }
}

/// The wire form of a normalised identifier.
pub fn to_wire(i: &Ident) -> common::Identifier {
    common::Identifier { r#type: wire_type(i.id_type) as i32, value: i.value.clone(), namespace: i.namespace.clone() }
}

fn stored_to_wire(s: &StoredIdent) -> common::Identifier {
    match s.to_ident() {
        Some(i) => to_wire(&i),
        None => common::Identifier { r#type: 0, value: s.value.clone(), namespace: s.namespace.clone() },
    }
}

/// Normalises the identifier at `field`; `Ok(None)` when it is a blocked placeholder.
pub fn parse_identifier(n: &Normalizer, field: &str, id: &common::Identifier) -> Result<Option<Ident>, Error> {
    let t = id_type_of(id.r#type)
        .ok_or_else(|| Error::invalid(&format!("{field}.type"), "must be set to a known identifier type"))?;
    match n.normalize(t, &id.namespace, &id.value) {
        Ok(i) => Ok(Some(i)),
        Err(Rejection::Blocked) => Ok(None),
        Err(Rejection::Invalid(problem)) if problem.starts_with("namespace") => {
            Err(Error::invalid(&format!("{field}.namespace"), problem.trim_start_matches("namespace: ")))
        }
        Err(Rejection::Invalid(problem)) => Err(Error::invalid(&format!("{field}.value"), problem)),
    }
}

fn origin_of(p: Option<&common::Provenance>) -> Origin {
    p.map(|p| Origin { source: p.source.clone(), event_id: p.source_record_id.clone() }).unwrap_or_default()
}

fn change_to_wire(c: &GraphChange) -> pb::GraphChange {
    let kind = match c.kind.as_str() {
        "merge" => pb::ChangeKind::Merge,
        "split" => pb::ChangeKind::Split,
        "refusal" => pb::ChangeKind::Refusal,
        _ => pb::ChangeKind::Unspecified,
    };
    pb::GraphChange {
        change_id: c.id.clone(),
        kind: kind as i32,
        customer_id: c.customer_id.clone(),
        other_customer_id: c.other_id.clone().unwrap_or_default(),
        rule: c.rule.clone(),
        provenance: Some(common::Provenance {
            source: c.origin.source.clone(),
            source_record_id: c.origin.event_id.clone(),
            actor: String::new(),
        }),
        evidence: c.evidence.identifiers.iter().map(stored_to_wire).collect(),
        moved: c.evidence.moved.iter().map(stored_to_wire).collect(),
        excluded: c
            .evidence
            .excluded
            .iter()
            .map(|e| pb::ExcludedIdentifier {
                identifier: Some(stored_to_wire(&e.identifier)),
                reason: e.reason.clone(),
                ..Default::default()
            })
            .collect(),
        undone_by: c.undone_by.clone().unwrap_or_default(),
        undoes: c.evidence.undoes.clone().unwrap_or_default(),
        match_weight: c.evidence.match_weight,
        created_at: Some(timestamp(c.created_at)),
        records: c
            .evidence
            .records
            .iter()
            .map(|(source, record_id)| pb::SourceRecordRef { source: source.clone(), record_id: record_id.clone() })
            .collect(),
        comparisons: crate::records::comparisons_to_wire(&c.evidence.comparisons),
        run_id: c.evidence.run_id.clone(),
        review_task_id: c.evidence.review_task_id.clone(),
    }
}

/// The wire kind of a stored kind name.
pub(crate) fn kind_to_wire(kind: &str) -> pb::EntityKind {
    match kind {
        "household" => pb::EntityKind::Household,
        "account" => pb::EntityKind::Account,
        "site" => pb::EntityKind::Site,
        "contact" => pb::EntityKind::Contact,
        _ => pb::EntityKind::Person,
    }
}

/// The stored kind name of a wire kind (unspecified is a person); `None` for an unknown number.
pub(crate) fn kind_name(kind: i32) -> Option<&'static str> {
    Some(match pb::EntityKind::try_from(kind).ok()? {
        pb::EntityKind::Unspecified | pb::EntityKind::Person => "person",
        pb::EntityKind::Household => "household",
        pb::EntityKind::Account => "account",
        pb::EntityKind::Site => "site",
        pb::EntityKind::Contact => "contact",
    })
}

fn node_to_wire(n: &crate::hierarchy::Node) -> pb::HierarchyNode {
    pb::HierarchyNode {
        customer_id: n.customer_id.clone(),
        kind: kind_to_wire(&n.kind) as i32,
        display_name: n.display_name.clone(),
        role: n.role.clone(),
        parent_customer_id: n.parent.clone(),
        child_count: n.child_count as i32,
    }
}

fn link_origin(p: Option<&common::Provenance>) -> crate::hierarchy::LinkOrigin {
    p.map(|p| crate::hierarchy::LinkOrigin {
        source: p.source.clone(),
        event_id: p.source_record_id.clone(),
        actor: p.actor.clone(),
    })
    .unwrap_or_default()
}

fn customer_to_wire(e: &graph::Explained) -> pb::Customer {
    let kind = kind_to_wire(&e.kind);
    pb::Customer {
        customer_id: e.customer_id.clone(),
        kind: kind as i32,
        created_at: Some(timestamp(e.created_at)),
        identifiers: e
            .identifiers
            .iter()
            .map(|h| pb::HeldIdentifier {
                identifier: Some(to_wire(&h.ident)),
                source: h.source.clone(),
                first_seen: Some(timestamp(h.first_seen)),
                last_seen: Some(timestamp(h.last_seen)),
            })
            .collect(),
        aliases: e.aliases.clone(),
        erased: e.kind == "erased",
        ..Default::default()
    }
}

/// The name of the authenticated caller, for the audit log.
fn caller<T>(request: &Request<T>) -> String {
    rapport_auth::Principal::of(request).map(|p| p.name.clone()).unwrap_or_else(|| "unknown".into())
}

fn required_id<'a>(field: &str, id: &'a str) -> Result<&'a str, Error> {
    let id = id.trim();
    if id.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if id.len() > 128 {
        return Err(Error::invalid(field, "longer than 128 characters"));
    }
    Ok(id)
}

impl Identity {
    async fn customer_of(&self, field: &str, r: Option<&common::CustomerRef>) -> Result<String, Error> {
        match r.and_then(|r| r.r#ref.as_ref()) {
            Some(common::customer_ref::Ref::CustomerId(id)) => {
                let id = required_id(&format!("{field}.customer_id"), id)?;
                self.graph.canonical(id).await?.ok_or_else(|| Error::not_found(format!("customer {id}")))
            }
            Some(common::customer_ref::Ref::Identifier(i)) => {
                let ident =
                    parse_identifier(&self.normalizer, &format!("{field}.identifier"), i)?.ok_or_else(|| {
                        Error::invalid(&format!("{field}.identifier.value"), "is a blocked placeholder value")
                    })?;
                self.graph.lookup(&ident).await?.ok_or_else(|| Error::not_found("customer with this identifier"))
            }
            None => Err(Error::invalid(field, "is required: a customer_id or an identifier")),
        }
    }
}

#[tonic::async_trait]
impl IdentityService for Identity {
    async fn subscribe(&self, request: Request<common::SubscribeRequest>) -> Result<Response<RecordStream>, Status> {
        rapport_rpc::feed::subscribe(&self.outbox, request.into_inner(), &self.shutdown).await.map(Response::new)
    }

    async fn resolve(&self, request: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        let request = request.into_inner();
        if request.identifiers.is_empty() {
            return Err(Error::invalid("identifiers", "at least one identifier is required").into());
        }
        if request.identifiers.len() > MAX_IDENTIFIERS {
            return Err(Error::invalid("identifiers", format!("at most {MAX_IDENTIFIERS} per call")).into());
        }
        let mut idents = Vec::with_capacity(request.identifiers.len());
        let mut ignored = Vec::new();
        for (i, id) in request.identifiers.iter().enumerate() {
            match parse_identifier(&self.normalizer, &format!("identifiers[{i}]"), id)? {
                Some(ident) => idents.push(ident),
                None => ignored.push(i as i32),
            }
        }
        if idents.is_empty() {
            return Err(Error::invalid(
                "identifiers",
                "every identifier is a blocked placeholder value; nothing can be resolved",
            )
            .into());
        }
        let kind = kind_name(request.kind).ok_or_else(|| Error::invalid("kind", "is not a known entity kind"))?;
        let seen_at = match &request.occurred_at {
            Some(t) => Some(
                rapport_rpc::convert::millis(t).ok_or_else(|| Error::invalid("occurred_at", "is not a valid time"))?,
            ),
            None => None,
        };
        let resolved = self.graph.resolve_seen(idents, origin_of(request.provenance.as_ref()), kind, seen_at).await?;
        Ok(Response::new(pb::ResolveResponse {
            customer_id: resolved.customer_id,
            created: resolved.created,
            merged_customer_ids: resolved.merged,
            merge_ids: resolved.merge_ids,
            attached: resolved.attached.iter().map(to_wire).collect(),
            excluded: resolved
                .excluded
                .iter()
                .map(|e| pb::ExcludedIdentifier {
                    identifier: Some(stored_to_wire(&e.identifier)),
                    reason: e.reason.clone(),
                    ..Default::default()
                })
                .collect(),
            ignored,
        }))
    }

    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let request = request.into_inner();
        let id = request.identifier.as_ref().ok_or_else(|| Error::invalid("identifier", "is required"))?;
        let ident = parse_identifier(&self.normalizer, "identifier", id)?
            .ok_or_else(|| Error::invalid("identifier.value", "is a blocked placeholder value"))?;
        let customer_id =
            self.graph.lookup(&ident).await?.ok_or_else(|| Error::not_found("customer with this identifier"))?;
        Ok(Response::new(pb::LookupResponse { customer_id }))
    }

    async fn get_customer(&self, request: Request<pb::GetCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let request = request.into_inner();
        let id = required_id("customer_id", &request.customer_id)?;
        let explained = self.graph.explain(id).await?;
        let mut customer = customer_to_wire(&explained);
        customer.parents = self.graph.parents(&explained.customer_id).await?.iter().map(node_to_wire).collect();
        Ok(Response::new(customer))
    }

    async fn explain(&self, request: Request<pb::ExplainRequest>) -> Result<Response<pb::ExplainResponse>, Status> {
        let request = request.into_inner();
        let id = required_id("customer_id", &request.customer_id)?;
        let explained = self.graph.explain(id).await?;
        Ok(Response::new(pb::ExplainResponse {
            customer: Some(customer_to_wire(&explained)),
            changes: explained.changes.iter().map(change_to_wire).collect(),
            records: crate::records::records_of(&self.graph, &explained.customer_id).await?,
        }))
    }

    async fn split(&self, request: Request<pb::SplitRequest>) -> Result<Response<pb::SplitResponse>, Status> {
        let request = request.into_inner();
        let id = required_id("customer_id", &request.customer_id)?;
        let provenance = request.provenance.as_ref();
        if provenance.is_none_or(|p| p.source.trim().is_empty()) {
            return Err(Error::invalid("provenance.source", "is required: who asked for the split").into());
        }
        let merge_id = Some(request.merge_id.trim()).filter(|m| !m.is_empty());
        if merge_id.is_some() && !request.identifiers.is_empty() {
            return Err(Error::invalid("identifiers", "give either merge_id or identifiers, not both").into());
        }
        let mut idents = Vec::new();
        for (i, w) in request.identifiers.iter().enumerate() {
            let field = format!("identifiers[{i}]");
            let ident = parse_identifier(&self.normalizer, &field, w)?
                .ok_or_else(|| Error::invalid(&format!("{field}.value"), "is a blocked placeholder value"))?;
            idents.push(ident);
        }
        let (split_id, change) = self.graph.split(id, merge_id, idents, origin_of(provenance)).await?;
        Ok(Response::new(pb::SplitResponse {
            customer_id: change.customer_id.clone(),
            split_customer_id: split_id,
            change: Some(change_to_wire(&change)),
        }))
    }

    async fn submit_records(
        &self,
        request: Request<pb::SubmitRecordsRequest>,
    ) -> Result<Response<pb::SubmitRecordsResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(crate::records::submit(&self.graph, &self.normalizer, &request.records).await?))
    }

    async fn delete_records(
        &self,
        request: Request<pb::DeleteRecordsRequest>,
    ) -> Result<Response<pb::DeleteRecordsResponse>, Status> {
        let request = request.into_inner();
        let deleted = crate::records::delete(&self.graph, &request.records).await?;
        Ok(Response::new(pb::DeleteRecordsResponse { deleted }))
    }

    async fn run_matching(
        &self,
        request: Request<pb::RunMatchingRequest>,
    ) -> Result<Response<pb::MatchingRun>, Status> {
        let caller = caller(&request);
        let run = self.runs.start(&self.graph, request.into_inner(), caller).await?;
        Ok(Response::new(run))
    }

    async fn get_matching_run(
        &self,
        request: Request<pb::GetMatchingRunRequest>,
    ) -> Result<Response<pb::MatchingRun>, Status> {
        let id = required_id("run_id", &request.get_ref().run_id)?;
        Ok(Response::new(crate::records::get_run(&self.graph, id).await?))
    }

    async fn list_matching_runs(
        &self,
        request: Request<pb::ListMatchingRunsRequest>,
    ) -> Result<Response<pb::ListMatchingRunsResponse>, Status> {
        let page = request.into_inner().page.unwrap_or_default();
        let size = rapport_rpc::convert::page_size("page.page_size", page.page_size, 50, 1000)? as usize;
        let (runs, next) = crate::records::list_runs(&self.graph, offset_of(&page.page_token)?, size).await?;
        Ok(Response::new(pb::ListMatchingRunsResponse {
            runs,
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn cancel_matching_run(
        &self,
        request: Request<pb::CancelMatchingRunRequest>,
    ) -> Result<Response<pb::MatchingRun>, Status> {
        let id = required_id("run_id", &request.get_ref().run_id)?;
        Ok(Response::new(self.runs.cancel(&self.graph, id).await?))
    }

    async fn list_record_assignments(
        &self,
        request: Request<pb::ListRecordAssignmentsRequest>,
    ) -> Result<Response<pb::ListRecordAssignmentsResponse>, Status> {
        let request = request.into_inner();
        let page = request.page.clone().unwrap_or_default();
        let size = rapport_rpc::convert::page_size("page.page_size", page.page_size, 50, 1000)? as usize;
        let (assignments, next) =
            crate::records::assignments(&self.graph, &request, offset_of(&page.page_token)?, size).await?;
        Ok(Response::new(pb::ListRecordAssignmentsResponse {
            assignments,
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn compare_records(
        &self,
        request: Request<pb::CompareRecordsRequest>,
    ) -> Result<Response<pb::CompareRecordsResponse>, Status> {
        let r = request.into_inner();
        let out =
            crate::records::compare_records(&self.graph, &self.normalizer, r.left.as_ref(), r.right.as_ref()).await?;
        Ok(Response::new(out))
    }

    async fn list_review_tasks(
        &self,
        request: Request<pb::ListReviewTasksRequest>,
    ) -> Result<Response<pb::ListReviewTasksResponse>, Status> {
        let request = request.into_inner();
        let page = request.page.clone().unwrap_or_default();
        let size = rapport_rpc::convert::page_size("page.page_size", page.page_size, 50, 1000)? as usize;
        let (tasks, next) =
            crate::records::list_tasks(&self.graph, &request, offset_of(&page.page_token)?, size).await?;
        Ok(Response::new(pb::ListReviewTasksResponse {
            tasks,
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn get_review_task(
        &self,
        request: Request<pb::GetReviewTaskRequest>,
    ) -> Result<Response<pb::ReviewTask>, Status> {
        let id = required_id("task_id", &request.get_ref().task_id)?;
        Ok(Response::new(crate::records::get_task(&self.graph, id).await?))
    }

    async fn resolve_review_task(
        &self,
        request: Request<pb::ResolveReviewTaskRequest>,
    ) -> Result<Response<pb::ReviewTask>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let id = required_id("task_id", &r.task_id)?;
        if r.note.chars().count() > 1000 {
            return Err(Error::invalid("note", "longer than 1,000 characters").into());
        }
        Ok(Response::new(crate::records::resolve_task(&self.graph, id, r.same, r.note.trim(), &caller).await?))
    }

    async fn get_settings(
        &self,
        _request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::IdentitySettings>, Status> {
        let s = self.graph.settings();
        Ok(Response::new(pb::IdentitySettings {
            phone_default_region: s.phone_default_region.clone(),
            email_fold_provider_variants: s.email_fold_provider_variants,
            blocked_patterns: s.blocked_patterns.clone(),
            limits: IdType::ALL
                .iter()
                .map(|t| pb::IdentifierLimit { r#type: wire_type(*t) as i32, max: s.limit_of(*t) })
                .collect(),
            limit_window_days: s.limit_window_days,
            priority: s.priority.iter().filter_map(|p| IdType::from_name(p)).map(|t| wire_type(t) as i32).collect(),
            matching: None,
            survivorship: Some(crate::golden::settings_to_wire(&s.survivorship)),
        }))
    }

    async fn get_golden_record(
        &self,
        request: Request<pb::GetGoldenRecordRequest>,
    ) -> Result<Response<pb::GoldenRecord>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let id = required_id("customer_id", &request.customer_id)?;
        let paths = rapport_rpc::convert::mask_paths("read_mask", request.read_mask.as_ref(), &crate::golden::PATHS)?;
        let golden = crate::golden::golden_record(&self.graph, id, &paths).await?;
        let parts = if paths.is_empty() { "attributes,records".to_string() } else { paths.join(",") };
        self.audit.record(&caller, "golden_record.read", &golden.customer_id, format!("parts={parts}"));
        Ok(Response::new(golden))
    }

    async fn link_entities(
        &self,
        request: Request<pb::LinkEntitiesRequest>,
    ) -> Result<Response<pb::LinkEntitiesResponse>, Status> {
        let request = request.into_inner();
        let parent = required_id("parent_customer_id", &request.parent_customer_id)?;
        let child = required_id("child_customer_id", &request.child_customer_id)?;
        let role = request.role.trim();
        if role.chars().count() > 128 {
            return Err(Error::invalid("role", "longer than 128 characters").into());
        }
        let (node, previous) = self.graph.link(parent, child, role, &link_origin(request.provenance.as_ref())).await?;
        Ok(Response::new(pb::LinkEntitiesResponse {
            child: Some(node_to_wire(&node)),
            previous_parent_customer_id: previous.unwrap_or_default(),
        }))
    }

    async fn unlink_entities(
        &self,
        request: Request<pb::UnlinkEntitiesRequest>,
    ) -> Result<Response<pb::UnlinkEntitiesResponse>, Status> {
        let request = request.into_inner();
        let child = required_id("child_customer_id", &request.child_customer_id)?;
        let parent = required_id("parent_customer_id", &request.parent_customer_id)?;
        self.graph.unlink(child, parent, &link_origin(request.provenance.as_ref())).await?;
        Ok(Response::new(pb::UnlinkEntitiesResponse {}))
    }

    async fn get_hierarchy(
        &self,
        request: Request<pb::GetHierarchyRequest>,
    ) -> Result<Response<pb::GetHierarchyResponse>, Status> {
        let request = request.into_inner();
        let id = required_id("customer_id", &request.customer_id)?;
        if !(0..=crate::hierarchy::MAX_DEPTH).contains(&request.depth) {
            return Err(
                Error::invalid("depth", format!("must be between 0 and {}", crate::hierarchy::MAX_DEPTH)).into()
            );
        }
        let page = request.page.unwrap_or_default();
        let size = rapport_rpc::convert::page_size("page.page_size", page.page_size, 50, 1000)? as usize;
        let offset = offset_of(&page.page_token)?;
        let h = self.graph.hierarchy(id, request.depth).await?;
        let (children, next) = page_of(&h.descendants, offset, size);
        Ok(Response::new(pb::GetHierarchyResponse {
            ancestors: h.ancestors.iter().map(node_to_wire).collect(),
            entity: Some(node_to_wire(&h.entity)),
            children: children.iter().map(node_to_wire).collect(),
            page: Some(common::PageResponse { next_page_token: next }),
        }))
    }

    async fn export_customer(
        &self,
        request: Request<common::ExportCustomerRequest>,
    ) -> Result<Response<common::ExportCustomerResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let id = self.customer_of("customer", request.customer.as_ref()).await?;
        let explained = self.graph.explain(&id).await?;
        rapport_storage::Audit::record(self.graph.db(), &caller, "customer.export", &id, "identity graph").await?;
        let json = serde_json::json!({
            "customer_id": explained.customer_id,
            "kind": explained.kind,
            "created_at_ms": explained.created_at,
            "aliases": explained.aliases,
            "identifiers": explained.identifiers.iter().map(|h| serde_json::json!({
                "type": h.ident.id_type.name(),
                "namespace": h.ident.namespace,
                "value": h.ident.value,
                "source": h.source,
                "first_seen_ms": h.first_seen,
                "last_seen_ms": h.last_seen,
            })).collect::<Vec<_>>(),
            "changes": explained.changes.iter().map(|c| serde_json::json!({
                "id": c.id, "kind": c.kind, "customer_id": c.customer_id, "other_id": c.other_id,
                "rule": c.rule, "source": c.origin.source, "event_id": c.origin.event_id,
                "evidence": c.evidence, "created_at_ms": c.created_at,
            })).collect::<Vec<_>>(),
        });
        Ok(Response::new(common::ExportCustomerResponse { customer_id: id, data: Some(json_to_struct(json)) }))
    }

    async fn erase_customer(
        &self,
        request: Request<common::EraseCustomerRequest>,
    ) -> Result<Response<common::EraseCustomerResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        if request.reason.trim().is_empty() {
            return Err(Error::invalid("reason", "is required for the audit log").into());
        }
        let id = self.customer_of("customer", request.customer.as_ref()).await?;
        let (_, erased) = self.graph.erase(&id).await?;
        let detail = format!("{erased} rows; reason: {}", request.reason.trim());
        rapport_storage::Audit::record(self.graph.db(), &caller, "customer.erase", &id, &detail).await?;
        tracing::info!(customer_id = %id, rows = erased, "customer erased from the identity graph");
        Ok(Response::new(common::EraseCustomerResponse { records_erased: erased as i64 }))
    }
}

pub use rapport_rpc::convert::json_to_struct;

/// The offset a page token stands for (tokens are offsets into the ordered list).
pub(crate) fn offset_of(token: &str) -> Result<usize, Error> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse::<usize>().map_err(|_| Error::invalid("page.page_token", "is not a token of this list"))
}

/// One page of `items` from `offset`, and the next page's token.
pub(crate) fn page_of<T>(items: &[T], offset: usize, size: usize) -> (&[T], String) {
    let start = offset.min(items.len());
    let end = (start + size).min(items.len());
    let next = if end < items.len() { end.to_string() } else { String::new() };
    (&items[start..end], next)
}

fn provenance(o: &Origin) -> common::Provenance {
    common::Provenance { source: o.source.clone(), source_record_id: o.event_id.clone(), actor: String::new() }
}

/// Outbox payloads as the protobuf events of the contract.
pub struct ProtoEvents;

/// An outbox message carrying `m`.
pub(crate) fn event<M: Message + Name>(topic: &str, key: &str, m: &M) -> OutboxMessage {
    message(topic, key, m)
}

fn message<M: Message + Name>(topic: &str, key: &str, m: &M) -> OutboxMessage {
    OutboxMessage::new(topic, key, M::full_name(), m.encode_to_vec())
}

impl EventEncoder for ProtoEvents {
    fn created(&self, customer_id: &str, kind: &str, identifiers: &[Ident], origin: &Origin) -> OutboxMessage {
        let event = pb::CustomerCreated {
            customer_id: customer_id.to_string(),
            identifiers: identifiers.iter().map(to_wire).collect(),
            provenance: Some(common::Provenance {
                source: origin.source.clone(),
                source_record_id: origin.event_id.clone(),
                actor: String::new(),
            }),
            kind: kind_to_wire(kind) as i32,
            occurred_at: None,
        };
        message(graph::TOPIC_CREATED, customer_id, &event)
    }

    fn merged(&self, change: &GraphChange) -> OutboxMessage {
        let event = pb::CustomersMerged {
            survivor_customer_id: change.customer_id.clone(),
            merged_customer_id: change.other_id.clone().unwrap_or_default(),
            merge_id: change.id.clone(),
            moved: change.evidence.moved.iter().map(stored_to_wire).collect(),
            rule: change.rule.clone(),
            provenance: Some(provenance(&change.origin)),
            match_weight: change.evidence.match_weight,
            moved_aliases: change.evidence.aliases.clone(),
        };
        message(graph::TOPIC_MERGED, &change.customer_id, &event)
    }

    fn split(&self, change: &GraphChange, identifiers: &[Ident]) -> OutboxMessage {
        let event = pb::CustomerSplit {
            customer_id: change.customer_id.clone(),
            split_customer_id: change.other_id.clone().unwrap_or_default(),
            undoes_merge_id: change.evidence.undoes.clone().unwrap_or_default(),
            identifiers: identifiers.iter().map(to_wire).collect(),
            split_id: change.id.clone(),
            aliases: change.evidence.aliases.clone(),
            provenance: Some(provenance(&change.origin)),
        };
        message(graph::TOPIC_SPLIT, &change.customer_id, &event)
    }

    fn erased(&self, customer_id: &str, aliases: &[String]) -> OutboxMessage {
        let event = pb::CustomerErased {
            customer_id: customer_id.to_string(),
            aliases: aliases.to_vec(),
            erased_at: Some(timestamp(rapport_storage::now_millis())),
        };
        message(graph::TOPIC_ERASED, customer_id, &event)
    }

    fn hierarchy_changed(&self, c: &crate::hierarchy::HierarchyChange) -> OutboxMessage {
        let event = pb::HierarchyChanged {
            child_customer_id: c.child.clone(),
            child_kind: kind_to_wire(&c.child_kind) as i32,
            previous_parent_customer_id: c.previous_parent.clone(),
            parent_customer_id: c.parent.clone(),
            parent_kind: kind_to_wire(&c.parent_kind) as i32,
            role: c.role.clone(),
        };
        message(crate::hierarchy::TOPIC_HIERARCHY_CHANGED, &c.child, &event)
    }
}
