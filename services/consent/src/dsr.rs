//! Data-subject requests: export everything Rapport holds on a person, or erase it, across all five
//! services, tracked with the legal deadline, a step per service, and the result (the export document or
//! the erasure receipt).
//!
//! A request runs when it is started, one service after the other. Erasure runs identity last: the other
//! services find the person through identity, and identity's erasure leaves the tombstone that keeps
//! replayed events from re-creating the person. A service that does not implement the call yet (it holds no
//! customer data) is a step with no data; a service that cannot be reached fails its step and the request.

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

/// The requests store and runner.
pub struct Requests<'a> {
    pub db: &'a Db,
    pub clients: &'a Clients,
    pub deadline_days: i32,
}

impl Requests<'_> {
    async fn save(&self, r: &pb::DataSubjectRequest, result: Option<Vec<u8>>, insert: bool) -> Result<(), Error> {
        let mut exec = Exec::Db(self.db);
        let received = r.received_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_default();
        let due = r.due_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_default();
        let result = result.map(V::B).unwrap_or(V::B(Vec::new()));
        if insert {
            exec.run(
                "INSERT INTO consent_requests (request_id, kind, state, received_at, due_at, body, result)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    (&r.request_id).into(),
                    i64::from(r.kind).into(),
                    i64::from(r.state).into(),
                    received.into(),
                    due.into(),
                    V::B(r.encode_to_vec()),
                    result,
                ],
            )
            .await?;
        } else {
            exec.run(
                "UPDATE consent_requests SET state = $2, body = $3, result = $4 WHERE request_id = $1",
                &[(&r.request_id).into(), i64::from(r.state).into(), V::B(r.encode_to_vec()), result],
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
        self.save(&request, None, true).await?;
        let result = match kind {
            pb::RequestKind::Erasure => self.erase(&mut request, &subject).await,
            _ => self.export(&mut request, &subject).await,
        };
        let states: Vec<i32> = request.steps.iter().map(|s| s.state).collect();
        request.state = if states.contains(&(pb::RequestState::Failed as i32)) {
            pb::RequestState::Failed
        } else if states.iter().all(|s| *s == pb::RequestState::NoData as i32) {
            pb::RequestState::NoData
        } else {
            pb::RequestState::Completed
        } as i32;
        request.completed_at = Some(timestamp(now_millis()));
        self.save(&request, Some(result.clone()), false).await?;
        tracing::info!(request_id = %request.request_id, kind = ?kind, state = request.state, "data-subject request finished");
        Ok((request, result))
    }

    async fn export(&self, request: &mut pb::DataSubjectRequest, subject: &common::CustomerRef) -> Vec<u8> {
        let mut services = serde_json::Map::new();
        for service in SERVICES {
            let answer =
                export_at(self.clients, service, common::ExportCustomerRequest { customer: Some(subject.clone()) })
                    .await;
            let answer = answer.map(|a| {
                if !a.customer_id.is_empty() && !request.customer_ids.contains(&a.customer_id) {
                    request.customer_ids.push(a.customer_id.clone());
                }
                let data = a.data.as_ref().map(|d| serde_json::Value::Object(struct_to_json(d))).unwrap_or_default();
                let records = records_in(&data);
                services.insert(service.to_string(), data);
                records
            });
            request.steps.push(step(service, answer));
        }
        let document = serde_json::json!({
            "request_id": request.request_id,
            "customer_ids": request.customer_ids,
            "generated_at": chrono::Utc::now().to_rfc3339(),
            "services": services,
        });
        json_to_struct(document).encode_to_vec()
    }

    async fn erase(&self, request: &mut pb::DataSubjectRequest, subject: &common::CustomerRef) -> Vec<u8> {
        // The customer ids first, while identity still knows the person.
        if let Ok(found) =
            export_at(self.clients, "identity", common::ExportCustomerRequest { customer: Some(subject.clone()) }).await
            && !found.customer_id.is_empty()
        {
            request.customer_ids.push(found.customer_id);
        }
        let mut receipt = pb::ErasureResult::default();
        for service in SERVICES {
            let answer = erase_at(
                self.clients,
                service,
                common::EraseCustomerRequest {
                    customer: Some(subject.clone()),
                    reason: format!("data-subject request {}", request.request_id),
                },
            )
            .await
            .map(|a| a.records_erased);
            if let Ok(count) = &answer {
                receipt.receipt.push(pb::ErasureReceiptLine {
                    service: service.to_string(),
                    kind: "records".into(),
                    count: *count,
                    erased_at: Some(timestamp(now_millis())),
                });
            }
            request.steps.push(step(service, answer));
        }
        receipt.encode_to_vec()
    }
}
