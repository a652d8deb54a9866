//! Data-subject requests: export everything Rapport holds on a person, or erase it, across all five
//! services, tracked with the legal deadline, a step per service, and the result (the export document or
//! the erasure receipt).
//!
//! A request runs when it is started, one service after the other, and its progress is saved after every
//! step. Erasure runs identity last, and only once every other service is done: the other services find
//! the person through identity, and identity's erasure leaves the tombstone that keeps replayed events
//! from re-creating the person. A service that does not implement the call yet (it holds no customer data)
//! is a step with no data; a service that cannot be reached fails its step and leaves the request FAILED.
//!
//! Unfinished requests are carried on by a retrier (every `consent.request_retry_seconds`, and at start):
//! a FAILED request, or one left IN_PROGRESS by a process that stopped mid-request, is taken up again until
//! its deadline, skipping the steps already done (their receipt lines and export data are kept) and counting
//! attempts per step. A runner holds a request with a lease renewed at every save, so one runner at a time
//! works on it, whichever replica.

use prost::Message;
use rapport_errors::Error;
use rapport_proto::common::v1 as common;
use rapport_proto::consent::v1 as pb;
use rapport_rpc::Clients;
use rapport_rpc::convert::{json_to_struct, struct_to_json, timestamp};
use rapport_storage::{Db, now_millis};
use tonic::{Code, Status};

use crate::sql::{Exec, V};

/// The services asked, in erasure order (identity last).
const SERVICES: [&str; 5] = ["profile", "consent", "decision", "delivery", "identity"];

async fn export_at(
    clients: &Clients,
    service: &str,
    r: common::ExportCustomerRequest,
) -> Result<common::ExportCustomerResponse, Status> {
    Ok(match service {
        "identity" => clients.identity()?.export_customer(r).await?.into_inner(),
        "consent" => clients.consent()?.export_customer(r).await?.into_inner(),
        "profile" => clients.profile()?.export_customer(r).await?.into_inner(),
        "decision" => clients.decision()?.export_customer(r).await?.into_inner(),
        _ => clients.delivery()?.export_customer(r).await?.into_inner(),
    })
}

async fn erase_at(
    clients: &Clients,
    service: &str,
    r: common::EraseCustomerRequest,
) -> Result<common::EraseCustomerResponse, Status> {
    Ok(match service {
        "identity" => clients.identity()?.erase_customer(r).await?.into_inner(),
        "consent" => clients.consent()?.erase_customer(r).await?.into_inner(),
        "profile" => clients.profile()?.erase_customer(r).await?.into_inner(),
        "decision" => clients.decision()?.erase_customer(r).await?.into_inner(),
        _ => clients.delivery()?.erase_customer(r).await?.into_inner(),
    })
}

/// A step's outcome from a service's answer.
fn step(service: &str, answer: Result<i64, Status>) -> pb::ServiceStep {
    let mut s = pb::ServiceStep {
        service: service.into(),
        attempts: 1,
        finished_at: Some(timestamp(now_millis())),
        ..Default::default()
    };
    match answer {
        Ok(records) => {
            s.state = pb::RequestState::Completed as i32;
            s.records = records;
        }
        Err(e) if e.code() == Code::NotFound => s.state = pb::RequestState::NoData as i32,
        Err(e) if e.code() == Code::Unimplemented => {
            s.state = pb::RequestState::NoData as i32;
            s.error = "the service holds no customer data yet (UNIMPLEMENTED)".into();
        }
        Err(e) => {
            s.state = pb::RequestState::Failed as i32;
            s.error = format!("{:?}: {}", e.code(), e.message());
        }
    }
    s
}

/// Counts the records of an export document: the items of its top-level lists.
fn records_in(data: &serde_json::Value) -> i64 {
    match data {
        serde_json::Value::Object(m) => m.values().map(|v| v.as_array().map_or(0, |a| a.len() as i64)).sum(),
        _ => 0,
    }
}

/// Records in consent's audit log who started a data-subject request or read its result: the per-service
/// entries of the fan-out name the consent service as the caller, this entry names the person who asked.
pub async fn audit(db: &Db, caller: &str, action: &str, request: &pb::DataSubjectRequest) -> Result<(), Error> {
    let detail = format!("request {}; reference {}", request.request_id, request.reference);
    if request.customer_ids.is_empty() {
        rapport_storage::Audit::record(db, caller, action, "", &detail).await?;
    }
    for customer in &request.customer_ids {
        rapport_storage::Audit::record(db, caller, action, customer, &detail).await?;
    }
    Ok(())
}

/// How long a runner holds a request between two saves; a stopped runner's requests are free after it.
const LEASE_MS: i64 = 60_000;

/// Whether a step is finished for good.
fn finished(state: i32) -> bool {
    state == pb::RequestState::Completed as i32 || state == pb::RequestState::NoData as i32
}

/// The step of `service`, if one was made.
fn step_of<'r>(request: &'r pb::DataSubjectRequest, service: &str) -> Option<&'r pb::ServiceStep> {
    request.steps.iter().find(|s| s.service == service)
}

/// The request's state from its steps: done when every service is, no data when none had any.
fn overall(request: &pb::DataSubjectRequest) -> pb::RequestState {
    let states: Vec<i32> = SERVICES.iter().map(|s| step_of(request, s).map_or(0, |st| st.state)).collect();
    if !states.iter().all(|s| finished(*s)) {
        pb::RequestState::Failed
    } else if states.iter().all(|s| *s == pb::RequestState::NoData as i32) {
        pb::RequestState::NoData
    } else {
        pb::RequestState::Completed
    }
}

/// The requests store and runner.
pub struct Requests<'a> {
    pub db: &'a Db,
    pub clients: &'a Clients,
    pub deadline_days: i32,
}

impl Requests<'_> {
    /// Saves a request and its result so far; `held` keeps (or renews) the runner's lease, otherwise the
    /// request is released.
    async fn save(&self, r: &pb::DataSubjectRequest, result: &[u8], insert: bool, held: bool) -> Result<(), Error> {
        let mut exec = Exec::Db(self.db);
        let received = r.received_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_default();
        let due = r.due_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_default();
        let lease = if held { now_millis() + LEASE_MS } else { 0 };
        if insert {
            exec.run(
                "INSERT INTO consent_requests (request_id, kind, state, received_at, due_at, body, result, lease_until)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    (&r.request_id).into(),
                    i64::from(r.kind).into(),
                    i64::from(r.state).into(),
                    received.into(),
                    due.into(),
                    V::B(r.encode_to_vec()),
                    V::B(result.to_vec()),
                    lease.into(),
                ],
            )
            .await?;
        } else {
            exec.run(
                "UPDATE consent_requests SET state = $2, body = $3, result = $4, lease_until = $5 WHERE request_id = $1",
                &[
                    (&r.request_id).into(),
                    i64::from(r.state).into(),
                    V::B(r.encode_to_vec()),
                    V::B(result.to_vec()),
                    lease.into(),
                ],
            )
            .await?;
        }
        Ok(())
    }
    /// Loads a request and its stored result.
    pub async fn get(
        &self,
        request_id: &str,
        kind: pb::RequestKind,
    ) -> Result<(pb::DataSubjectRequest, Vec<u8>), Error> {
        if request_id.trim().is_empty() {
            return Err(Error::invalid("request_id", "is required"));
        }
        let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = Exec::Db(self.db)
            .all(
                "SELECT body, result FROM consent_requests WHERE request_id = $1 AND kind = $2",
                &[request_id.trim().into(), i64::from(kind as i32).into()],
            )
            .await?;
        let (body, result) = rows.into_iter().next().ok_or_else(|| Error::not_found("data-subject request"))?;
        let request = pb::DataSubjectRequest::decode(body.as_slice()).map_err(Error::internal)?;
        Ok((request, result.unwrap_or_default()))
    }

    /// Every request matching the filter, oldest deadline first.
    pub async fn list(&self, r: &pb::ListDataSubjectRequestsRequest) -> Result<Vec<pb::DataSubjectRequest>, Error> {
        let due_before = match &r.due_before {
            Some(t) => rapport_rpc::convert::millis(t).ok_or_else(|| Error::invalid("due_before", "is not a time"))?,
            None => i64::MAX,
        };
        let rows: Vec<(Vec<u8>,)> = Exec::Db(self.db)
            .all(
                "SELECT body FROM consent_requests WHERE due_at < $1 ORDER BY due_at, request_id",
                &[due_before.into()],
            )
            .await?;
        let mut out = Vec::new();
        for (body,) in rows {
            let request = pb::DataSubjectRequest::decode(body.as_slice()).map_err(Error::internal)?;
            if (r.kind == 0 || r.kind == request.kind) && (r.states.is_empty() || r.states.contains(&request.state)) {
                out.push(request);
            }
        }
        Ok(out)
    }

    /// Starts and runs a request of `kind` about `subject`.
    pub async fn run(
        &self,
        caller: &str,
        kind: pb::RequestKind,
        subject: Option<&common::CustomerRef>,
        received_at: Option<&prost_types::Timestamp>,
        reference: &str,
    ) -> Result<(pb::DataSubjectRequest, Vec<u8>), Error> {
        let subject = match subject {
            Some(s) if s.r#ref.is_some() => s.clone(),
            _ => return Err(Error::invalid("subject", "is required: a customer id or an identifier")),
        };
        if let Some(common::customer_ref::Ref::Identifier(i)) = &subject.r#ref
            && i.value.trim().is_empty()
        {
            return Err(Error::invalid("subject.identifier.value", "is required"));
        }
        if reference.len() > 256 {
            return Err(Error::invalid("reference", "at most 256 characters"));
        }
        let received = match received_at {
            Some(t) => rapport_rpc::convert::millis(t).ok_or_else(|| Error::invalid("received_at", "is not a time"))?,
            None => now_millis(),
        };
        if received > now_millis() + 5 * 60 * 1000 {
            return Err(Error::invalid("received_at", "is in the future"));
        }
        let mut request = pb::DataSubjectRequest {
            request_id: format!("dsr_{}", uuid::Uuid::now_v7().simple()),
            kind: kind as i32,
            state: pb::RequestState::InProgress as i32,
            subject: Some(subject.clone()),
            received_at: Some(timestamp(received)),
            due_at: Some(timestamp(received + i64::from(self.deadline_days) * 86_400_000)),
            reference: reference.trim().to_string(),
            submitted_by: caller.to_string(),
            ..Default::default()
        };
        self.save(&request, &[], true, true).await?;
        let result = self.advance(&mut request, Vec::new()).await?;
        Ok((request, result))
    }

    /// Carries a request on from where it is: every service whose step is not finished is asked (again),
    /// progress saved after each; then the request is released with its state.
    async fn advance(&self, request: &mut pb::DataSubjectRequest, mut result: Vec<u8>) -> Result<Vec<u8>, Error> {
        let subject = request.subject.clone().unwrap_or_default();
        let erasure = request.kind == pb::RequestKind::Erasure as i32;
        request.state = pb::RequestState::InProgress as i32;
        if erasure && request.customer_ids.is_empty() {
            // The customer ids first, while identity still knows the person.
            if let Ok(found) =
                export_at(self.clients, "identity", common::ExportCustomerRequest { customer: Some(subject.clone()) })
                    .await
                && !found.customer_id.is_empty()
            {
                request.customer_ids.push(found.customer_id);
            }
        }
        for service in SERVICES {
            let previous = step_of(request, service).cloned();
            if previous.as_ref().is_some_and(|p| finished(p.state)) {
                continue;
            }
            if erasure
                && service == "identity"
                && SERVICES
                    .iter()
                    .filter(|s| **s != "identity")
                    .any(|s| !step_of(request, s).is_some_and(|p| finished(p.state)))
            {
                break; // identity keeps the person findable until everything else is erased
            }
            let answer = if erasure {
                self.erase(request, &subject, service, &mut result).await
            } else {
                self.export(request, &subject, service, &mut result).await
            };
            let mut step = step(service, answer);
            step.attempts = previous.map_or(0, |p| p.attempts) + 1;
            match request.steps.iter_mut().find(|s| s.service == service) {
                Some(s) => *s = step,
                None => request.steps.push(step),
            }
            self.save(request, &result, false, true).await?;
        }
        request.state = overall(request) as i32;
        if request.state != pb::RequestState::Failed as i32 {
            request.completed_at = Some(timestamp(now_millis()));
        }
        self.save(request, &result, false, false).await?;
        tracing::info!(request_id = %request.request_id, kind = request.kind, state = request.state, "data-subject request advanced");
        Ok(result)
    }

    /// Takes up every unfinished request before its deadline that no runner holds; returns how many.
    pub async fn retry_unfinished(&self) -> Result<usize, Error> {
        let now = now_millis();
        let rows: Vec<(String, Vec<u8>, Option<Vec<u8>>)> = Exec::Db(self.db)
            .all(
                "SELECT request_id, body, result FROM consent_requests
                 WHERE state IN ($1, $2) AND lease_until < $3 AND due_at > $3 ORDER BY due_at",
                &[
                    i64::from(pb::RequestState::InProgress as i32).into(),
                    i64::from(pb::RequestState::Failed as i32).into(),
                    now.into(),
                ],
            )
            .await?;
        let mut taken = 0;
        for (id, body, result) in rows {
            // claim it: only one runner wins the lease
            let claimed = Exec::Db(self.db)
                .run(
                    "UPDATE consent_requests SET lease_until = $2 WHERE request_id = $1 AND lease_until < $3",
                    &[id.as_str().into(), (now_millis() + LEASE_MS).into(), now_millis().into()],
                )
                .await?;
            if claimed != 1 {
                continue;
            }
            let mut request = pb::DataSubjectRequest::decode(body.as_slice()).map_err(Error::internal)?;
            self.advance(&mut request, result.unwrap_or_default()).await?;
            taken += 1;
        }
        Ok(taken)
    }

    /// One service's export, merged into the document so far.
    async fn export(
        &self,
        request: &mut pb::DataSubjectRequest,
        subject: &common::CustomerRef,
        service: &str,
        result: &mut Vec<u8>,
    ) -> Result<i64, Status> {
        let a =
            export_at(self.clients, service, common::ExportCustomerRequest { customer: Some(subject.clone()) }).await?;
        if !a.customer_id.is_empty() && !request.customer_ids.contains(&a.customer_id) {
            request.customer_ids.push(a.customer_id.clone());
        }
        let data = a.data.as_ref().map(|d| serde_json::Value::Object(struct_to_json(d))).unwrap_or_default();
        let records = records_in(&data);
        let mut document = prost_types::Struct::decode(result.as_slice())
            .map(|d| serde_json::Value::Object(struct_to_json(&d)))
            .unwrap_or_default();
        if !document.is_object() {
            document = serde_json::json!({});
        }
        document["request_id"] = request.request_id.clone().into();
        document["customer_ids"] = serde_json::json!(request.customer_ids);
        document["generated_at"] = chrono::Utc::now().to_rfc3339().into();
        if !document["services"].is_object() {
            document["services"] = serde_json::json!({});
        }
        document["services"][service] = data;
        *result = json_to_struct(document).encode_to_vec();
        Ok(records)
    }

    /// One service's erasure, its line added to the receipt so far.
    async fn erase(
        &self,
        request: &pb::DataSubjectRequest,
        subject: &common::CustomerRef,
        service: &str,
        result: &mut Vec<u8>,
    ) -> Result<i64, Status> {
        let reason = format!("data-subject request {}", request.request_id);
        let erased =
            erase_at(self.clients, service, common::EraseCustomerRequest { customer: Some(subject.clone()), reason })
                .await?
                .records_erased;
        let mut receipt = pb::ErasureResult::decode(result.as_slice()).unwrap_or_default();
        receipt.receipt.push(pb::ErasureReceiptLine {
            service: service.to_string(),
            kind: "records".into(),
            count: erased,
            erased_at: Some(timestamp(now_millis())),
        });
        *result = receipt.encode_to_vec();
        Ok(erased)
    }
}

/// Carries on unfinished requests: once at start (a request a stopped process left behind), then every
/// `every`, until shutdown.
pub fn retrier(
    db: Db,
    clients: Clients,
    deadline_days: i32,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let requests = Requests { db: &db, clients: &clients, deadline_days };
            match requests.retry_unfinished().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(requests = n, "unfinished data-subject requests carried on"),
                Err(e) => tracing::warn!(error = %e, "carrying on data-subject requests failed; trying again later"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}
