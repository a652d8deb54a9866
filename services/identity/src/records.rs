//! Probabilistic matching over gRPC: stored source records, matching runs in a background task that feed
//! the identity graph (one customer per cluster, through the graph's merges with the run, rule and match
//! weight as evidence), the review queue of possible matches, and record comparison.
//!
//! Every run matches all stored records of the requested sources (the engine is fast enough that
//! comparing only changed records is not needed yet); applying a run only creates customers for new
//! records and merges customers, it never splits one (use Split).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use prost::Message;
use rapport_errors::{Error, ErrorCode};
use rapport_proto::identity::v1 as pb;
use rapport_rpc::convert::timestamp;
use rapport_storage::now_millis;
use rapport_storage::sql::{Exec, V};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::graph::{ChangeEvidence, Graph, GraphChange, Origin, StoredComparison, insert_change, new_change_id};
use crate::matching::{self, COMPARISONS, LEVEL_NAMES, MatchSettings, N_CMP, Parameters, ScoredPair, compare};
use crate::normalize::Normalizer;

/// Most records per SubmitRecords or DeleteRecords call.
pub const MAX_RECORDS: usize = 10_000;

/// The run in progress in this process, if any.
#[derive(Clone, Default)]
pub struct Runs {
    running: Arc<Mutex<Option<(String, CancellationToken)>>>,
}

fn hex_of<M: Message>(m: &M) -> String {
    hex::encode(m.encode_to_vec())
}

pub(crate) fn decode<M: Message + Default>(s: &str) -> Result<M, Error> {
    let bytes = hex::decode(s).map_err(Error::internal)?;
    M::decode(bytes.as_slice()).map_err(Error::internal)
}

fn placeholders(start: usize, n: usize) -> String {
    (start..start + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// The engine's kind of a wire kind; households are formed by linking, not by records.
fn engine_kind(kind: i32) -> Result<matching::EntityKind, &'static str> {
    match pb::EntityKind::try_from(kind) {
        Ok(pb::EntityKind::Unspecified | pb::EntityKind::Person) => Ok(matching::EntityKind::Person),
        Ok(pb::EntityKind::Account) => Ok(matching::EntityKind::Account),
        Ok(pb::EntityKind::Site) => Ok(matching::EntityKind::Site),
        Ok(pb::EntityKind::Contact) => Ok(matching::EntityKind::Contact),
        Ok(pb::EntityKind::Household) => Err("households are formed by linking persons, not by records"),
        Err(_) => Err("is not a known entity kind"),
    }
}

/// Checks one wire record and converts it for the engine; the error names the field under `field`.
pub fn to_engine(
    n: &Normalizer,
    region: Option<phonenumber::country::Id>,
    field: &str,
    r: &pb::SourceRecord,
) -> Result<matching::SourceRecord, Error> {
    let source = r.source.trim();
    if source.is_empty()
        || source.len() > 64
        || !source.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(&format!("{field}.source"), "must be 1..64 characters of [a-z0-9_-]"));
    }
    let record_id = r.record_id.trim();
    if record_id.is_empty() || record_id.chars().count() > 256 {
        return Err(Error::invalid(&format!("{field}.record_id"), "must be 1..256 characters"));
    }
    let kind = engine_kind(r.kind).map_err(|p| Error::invalid(&format!("{field}.kind"), p))?;
    let mut out = matching::SourceRecord::new(source, record_id, kind);
    let mut names: Vec<&String> = r.attributes.keys().collect();
    names.sort();
    for name in names {
        let value = &r.attributes[name];
        let f = format!("{field}.attributes.{name}");
        if !matching::ATTRIBUTE_NAMES.contains(&name.as_str()) {
            return Err(Error::invalid(&f, "unknown attribute"));
        }
        if value.chars().count() > 1024 {
            return Err(Error::invalid(&f, "longer than 1,024 characters"));
        }
        let present = !value.trim().is_empty();
        match name.as_str() {
            "date_of_birth"
                if present && matching::standardize::parse_date(value, matching::DateOrder::DayFirst).is_none() =>
            {
                return Err(Error::invalid(&f, "unreadable date"));
            }
            "email" if present && matching::standardize::standardize_email(value).is_none() => {
                return Err(Error::invalid(&f, "not an email address"));
            }
            "phone" if present && matching::standardize::standardize_phone(value, region).is_none() => {
                return Err(Error::invalid(&f, "not a phone number"));
            }
            _ => {}
        }
        out.set(name, value.clone()).map_err(|e| Error::invalid(&f, e))?;
    }
    for (j, id) in r.external_ids.iter().enumerate() {
        let f = format!("{field}.external_ids[{j}]");
        if let Some(ident) = crate::grpc::parse_identifier(n, &f, id)? {
            let ns = if ident.namespace.is_empty() { ident.id_type.name().to_string() } else { ident.namespace };
            out.external_ids.push((ns, ident.value));
        }
    }
    if let Some(p) = &r.parent
        && (p.source.trim().is_empty() || p.record_id.trim().is_empty())
    {
        return Err(Error::invalid(&format!("{field}.parent"), "needs source and record_id"));
    }
    Ok(out)
}

/// An engine record as the contract carries it (the inverse of [`to_engine`]): the attributes it has, its
/// external ids typed again where the namespace names an identifier type.
pub fn to_wire(r: &matching::SourceRecord) -> pb::SourceRecord {
    let attributes = matching::ATTRIBUTE_NAMES
        .iter()
        .filter_map(|&name| r.attributes.get(name).map(|v| (name.to_owned(), v.to_owned())))
        .collect();
    let external_ids = r
        .external_ids
        .iter()
        .map(|(ns, value)| {
            use crate::normalize::{IdType, Ident};
            let ident = match IdType::from_name(ns).filter(|t| *t != IdType::External) {
                Some(id_type) => Ident { id_type, namespace: String::new(), value: value.clone() },
                None => Ident { id_type: IdType::External, namespace: ns.clone(), value: value.clone() },
            };
            crate::grpc::to_wire(&ident)
        })
        .collect();
    pb::SourceRecord {
        source: r.source.clone(),
        record_id: r.record_id.clone(),
        kind: crate::grpc::kind_to_wire(r.kind.as_str()) as i32,
        attributes,
        external_ids,
        ..Default::default()
    }
}

/// The trained parameters as stored with a succeeded run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredParams {
    m: Vec<Vec<f64>>,
    u: Vec<Vec<f64>>,
    lambda: f64,
    prior_log2_odds: f64,
    match_threshold: f64,
    possible_threshold: f64,
}

impl StoredParams {
    fn of(p: &Parameters) -> Self {
        Self {
            m: p.m.clone(),
            u: p.u.clone(),
            lambda: p.lambda,
            prior_log2_odds: p.prior_log2_odds,
            match_threshold: p.match_threshold,
            possible_threshold: p.possible_threshold,
        }
    }
    fn params(&self) -> Parameters {
        Parameters {
            m: self.m.clone(),
            u: self.u.clone(),
            lambda: self.lambda,
            iterations: 0,
            prior_log2_odds: self.prior_log2_odds,
            match_threshold: self.match_threshold,
            possible_threshold: self.possible_threshold,
        }
    }
}

/// A national id shown only by its last two characters (CompareRecords, review tasks, golden records).
pub(crate) fn mask(attribute: &str, v: String) -> String {
    if attribute == "national_id" && v.len() > 2 {
        format!("{}{}", "*".repeat(v.len() - 2), &v[v.len() - 2..])
    } else {
        v
    }
}

/// The standardised value of comparison `c` of a record.
fn std_value(s: &compare::Std, r: &matching::SourceRecord, c: usize) -> String {
    let v = match COMPARISONS[c] {
        "first_name" => s.first.clone(),
        "last_name" => s.last.clone(),
        "date_of_birth" if s.dob != 0 => matching::standardize::format_date(s.dob),
        "email" => s.email.clone(),
        "phone" if s.phone != 0 => matching::standardize::format_phone(s.phone),
        "street" => [s.house.as_str(), s.street.as_str()]
            .iter()
            .filter(|x| !x.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
        "postcode" => s.postcode.clone(),
        "city" => s.city.clone(),
        "national_id" => s.national_id.clone(),
        "company_name" => s.company.clone(),
        "company_id" => s.company_id.clone(),
        "external_id" => r.external_ids.iter().map(|(n, v)| format!("{n}:{v}")).collect::<Vec<_>>().join(","),
        _ => String::new(),
    };
    mask(COMPARISONS[c], v)
}

/// The comparisons of a scored pair, with standardised values.
fn comparisons(
    pair: &ScoredPair,
    a: &matching::SourceRecord,
    b: &matching::SourceRecord,
    settings: &MatchSettings,
) -> Vec<pb::AttributeComparison> {
    let region = settings.default_region.parse::<phonenumber::country::Id>().ok();
    let dm = rphonetic::DoubleMetaphone::default();
    let sa = compare::standardize(a, region, settings.date_order, &dm);
    let sb = compare::standardize(b, region, settings.date_order, &dm);
    (0..N_CMP)
        .map(|c| pb::AttributeComparison {
            attribute: COMPARISONS[c].to_string(),
            level: if pair.levels[c] == 0 { "missing".into() } else { LEVEL_NAMES[c][pair.levels[c] as usize].into() },
            weight: f64::from(pair.weights[c]),
            left_value: std_value(&sa, a, c),
            right_value: std_value(&sb, b, c),
            tf_adjusted: false,
        })
        .collect()
}

fn stored_comparisons(c: &[pb::AttributeComparison]) -> Vec<StoredComparison> {
    c.iter()
        .filter(|c| c.level != "missing")
        .map(|c| StoredComparison {
            attribute: c.attribute.clone(),
            level: c.level.clone(),
            weight: c.weight,
            left: c.left_value.clone(),
            right: c.right_value.clone(),
        })
        .collect()
}

/// Comparisons back to the wire, for Explain.
pub fn comparisons_to_wire(c: &[StoredComparison]) -> Vec<pb::AttributeComparison> {
    c.iter()
        .map(|c| pb::AttributeComparison {
            attribute: c.attribute.clone(),
            level: c.level.clone(),
            weight: c.weight,
            left_value: c.left.clone(),
            right_value: c.right.clone(),
            tf_adjusted: false,
        })
        .collect()
}

fn probability(weight: f64, prior_log2_odds: f64) -> f64 {
    1.0 / (1.0 + (-(weight + prior_log2_odds)).exp2())
}

/// The matching settings of identity's configuration.
pub fn engine_settings(graph: &Graph) -> MatchSettings {
    MatchSettings { default_region: graph.settings().phone_default_region.clone(), ..MatchSettings::default() }
}

fn state_name(s: pb::RunState) -> &'static str {
    match s {
        pb::RunState::Running => "running",
        pb::RunState::Succeeded => "succeeded",
        pb::RunState::Failed => "failed",
        pb::RunState::Cancelled => "cancelled",
        pb::RunState::Unspecified => "unspecified",
    }
}

fn review_state_name(s: pb::ReviewState) -> &'static str {
    match s {
        pb::ReviewState::Open => "open",
        pb::ReviewState::Same => "same",
        pb::ReviewState::Different => "different",
        pb::ReviewState::Obsolete => "obsolete",
        pb::ReviewState::Unspecified => "unspecified",
    }
}

/// The current customer of stored customer ids (an alias becomes its survivor).
pub(crate) const CURRENT: &str = "COALESCE(c.merged_into, c.id)";

/// Stores records; returns how many and the rejections.
pub async fn submit(
    graph: &Graph,
    n: &Normalizer,
    records: &[pb::SourceRecord],
) -> Result<pb::SubmitRecordsResponse, Error> {
    if records.is_empty() || records.len() > MAX_RECORDS {
        return Err(Error::invalid("records", format!("1..{MAX_RECORDS} records per call")));
    }
    let region = graph.settings().phone_default_region.parse::<phonenumber::country::Id>().ok();
    let mut rejected = Vec::new();
    let mut good = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match to_engine(n, region, &format!("records[{i}]"), r) {
            Ok(e) => good.push((i, r, e)),
            Err(e) => rejected.push(pb::RecordRejection { index: i as i32, reason: e.to_string() }),
        }
    }
    let now = now_millis();
    let mut tx = graph.db().begin().await?;
    let mut exec = Exec::Tx(&mut tx);
    // Records of erased customers are not stored again (their ids are tombstoned by EraseCustomer).
    let keys: Vec<(&str, &str)> = good.iter().map(|(_, _, e)| (e.source.as_str(), e.record_id.as_str())).collect();
    let erased = erased_among(&mut exec, &keys).await?;
    if !erased.is_empty() {
        good.retain(|(i, _, e)| {
            if !erased.contains(&record_hash(&e.source, &e.record_id)) {
                return true;
            }
            let reason = Error::invalid(
                &format!("records[{i}]"),
                "erased: the customer of this source record was erased (EraseCustomer); it is not stored again",
            );
            rejected.push(pb::RecordRejection { index: *i as i32, reason: reason.to_string() });
            false
        });
        rejected.sort_by_key(|r| r.index);
    }
    for (_, r, e) in &good {
        let mut stored = (*r).clone();
        stored.source = e.source.clone();
        stored.record_id = e.record_id.clone();
        let updated = stored.updated_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or(now);
        stored.updated_at = Some(timestamp(updated));
        exec.run(
            "INSERT INTO source_records (source, record_id, kind, data, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (source, record_id) DO UPDATE SET kind = excluded.kind, data = excluded.data, updated_at = excluded.updated_at",
            &[e.source.as_str().into(), e.record_id.as_str().into(), e.kind.as_str().into(), hex_of(&stored).into(), updated.into()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(pb::SubmitRecordsResponse { accepted: good.len() as i64, rejected })
}

/// The tombstone of an erased source record: SHA-256 over its source and record id (the id is not kept).
fn record_hash(source: &str, record_id: &str) -> String {
    crate::graph::tombstone_hash(&[source, record_id])
}

/// Which of `keys` (source, record id) belong to an erased customer.
async fn erased_among(exec: &mut Exec<'_>, keys: &[(&str, &str)]) -> Result<HashSet<String>, Error> {
    let mut out = HashSet::new();
    let any: Vec<(i64,)> = exec.all("SELECT COUNT(*) FROM (SELECT 1 FROM erased_records LIMIT 1) e", &[]).await?;
    if any.first().is_none_or(|n| n.0 == 0) {
        return Ok(out);
    }
    for chunk in keys.chunks(500) {
        let binds: Vec<V> = chunk.iter().map(|(s, r)| V::from(record_hash(s, r))).collect();
        let sql =
            format!("SELECT record_hash FROM erased_records WHERE record_hash IN ({})", placeholders(1, binds.len()));
        let rows: Vec<(String,)> = exec.all(&sql, &binds).await?;
        out.extend(rows.into_iter().map(|r| r.0));
    }
    Ok(out)
}

/// The matching data of erased customers `ids` (a customer and its aliases), removed inside the graph's
/// erase transaction: their source records (and with them the assignments), the review tasks involving
/// those records (with the records and comparisons they hold), and the compared values of any remaining
/// graph change whose evidence names one of the records. The record ids are tombstoned (by hash) so that a
/// re-submission is refused. Returns how many rows were deleted or blanked.
pub(crate) async fn erase_in(exec: &mut Exec<'_>, ids: &[String], now: i64) -> Result<u64, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let binds: Vec<V> = ids.iter().map(V::from).collect();
    let keys: Vec<(String, String)> = exec
        .all(
            &format!(
                "SELECT source, record_id FROM source_records WHERE customer_id IN ({})",
                placeholders(1, ids.len())
            ),
            &binds,
        )
        .await?;
    let mut erased = 0;
    for (source, record_id) in &keys {
        erased += exec
            .run(
                "DELETE FROM review_tasks WHERE (left_source = $1 AND left_record_id = $2) OR (right_source = $1 AND right_record_id = $2)",
                &[source.into(), record_id.into()],
            )
            .await?;
        // Changes of the erased customers are gone with the graph; this finds any other change whose
        // evidence names the record (its JSON holds the record id as a JSON string).
        let quoted = serde_json::to_string(record_id).map_err(Error::internal)?;
        let pattern = format!("%{}%", &quoted[1..quoted.len() - 1]);
        let changes: Vec<(String, String)> =
            exec.all("SELECT id, evidence FROM graph_changes WHERE evidence LIKE $1", &[pattern.into()]).await?;
        for (change_id, evidence) in changes {
            let mut e: ChangeEvidence = serde_json::from_str(&evidence).map_err(Error::internal)?;
            if !forget_record(&mut e, source, record_id) {
                continue;
            }
            let json = serde_json::to_string(&e).map_err(Error::internal)?;
            erased += exec
                .run("UPDATE graph_changes SET evidence = $1 WHERE id = $2", &[json.into(), change_id.into()])
                .await?;
        }
        exec.run(
            "INSERT INTO erased_records (record_hash, erased_at) VALUES ($1, $2) ON CONFLICT (record_hash) DO NOTHING",
            &[record_hash(source, record_id).into(), now.into()],
        )
        .await?;
    }
    erased += exec
        .run(&format!("DELETE FROM source_records WHERE customer_id IN ({})", placeholders(1, ids.len())), &binds)
        .await?;
    Ok(erased)
}

/// Takes record (`source`, `record_id`) out of a change's evidence with every compared value (the levels
/// say how the erased person's values compared with the other record's, so they go too); the weight and
/// the other record stay. Whether the evidence named the record.
fn forget_record(e: &mut ChangeEvidence, source: &str, record_id: &str) -> bool {
    let before = e.records.len();
    e.records.retain(|(s, r)| !(s == source && r == record_id));
    if e.records.len() == before {
        return false;
    }
    e.comparisons.clear();
    true
}

/// Removes records; returns how many were stored.
pub async fn delete(graph: &Graph, refs: &[pb::SourceRecordRef]) -> Result<i64, Error> {
    if refs.is_empty() || refs.len() > MAX_RECORDS {
        return Err(Error::invalid("records", format!("1..{MAX_RECORDS} records per call")));
    }
    let mut tx = graph.db().begin().await?;
    let mut exec = Exec::Tx(&mut tx);
    let mut deleted = 0;
    for r in refs {
        deleted += exec
            .run(
                "DELETE FROM source_records WHERE source = $1 AND record_id = $2",
                &[r.source.trim().into(), r.record_id.trim().into()],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(deleted as i64)
}

async fn save_run(exec: &mut Exec<'_>, run: &pb::MatchingRun, params: Option<&StoredParams>) -> Result<(), Error> {
    let state = state_name(pb::RunState::try_from(run.state).unwrap_or_default());
    let params = params.map(|p| serde_json::to_string(p).expect("parameters serialise")).unwrap_or_default();
    exec.run(
        "UPDATE matching_runs SET state = $1, data = $2, params = CASE WHEN $3 = '' THEN params ELSE $3 END WHERE id = $4",
        &[state.into(), hex_of(run).into(), params.into(), run.run_id.as_str().into()],
    )
    .await?;
    Ok(())
}

impl Runs {
    /// Marks runs left RUNNING by a process that stopped as failed.
    pub async fn recover(graph: &Graph) -> Result<(), Error> {
        let mut exec = Exec::Db(graph.db());
        let rows: Vec<(String,)> = exec.all("SELECT data FROM matching_runs WHERE state = 'running'", &[]).await?;
        for (data,) in rows {
            let mut run: pb::MatchingRun = decode(&data)?;
            run.state = pb::RunState::Failed as i32;
            run.error = "the server stopped while the run was working".into();
            run.finished_at = Some(timestamp(now_millis()));
            save_run(&mut exec, &run, None).await?;
        }
        Ok(())
    }

    /// Starts a run in the background.
    pub async fn start(
        &self,
        graph: &Graph,
        request: pb::RunMatchingRequest,
        started_by: String,
    ) -> Result<pb::MatchingRun, Error> {
        if let (Some(m), Some(p)) = (request.match_threshold, request.possible_match_threshold)
            && p > m
        {
            return Err(Error::invalid("possible_match_threshold", "must not exceed match_threshold"));
        }
        let mut running = self.running.lock().await;
        if let Some((id, _)) = running.as_ref() {
            return Err(Error::new(ErrorCode::FailedPrecondition, format!("run {id} is running")));
        }
        let now = now_millis();
        let run = pb::MatchingRun {
            run_id: format!("run_{}", uuid::Uuid::now_v7().simple()),
            state: pb::RunState::Running as i32,
            started_at: Some(timestamp(now)),
            request: Some(request.clone()),
            started_by,
            ..Default::default()
        };
        Exec::Db(graph.db())
            .run(
                "INSERT INTO matching_runs (id, state, started_at, data) VALUES ($1, 'running', $2, $3)",
                &[run.run_id.as_str().into(), now.into(), hex_of(&run).into()],
            )
            .await?;
        let cancel = CancellationToken::new();
        *running = Some((run.run_id.clone(), cancel.clone()));
        let (graph, runs, started) = (graph.clone(), self.clone(), run.clone());
        tokio::spawn(async move {
            let mut run = started;
            let result = execute(&graph, &mut run, &cancel).await;
            let finished = now_millis();
            run.finished_at = Some(timestamp(finished));
            run.seconds = (finished - now) as f64 / 1000.0;
            let outcome = match result {
                Ok(()) => Ok(()),
                Err(e) if cancel.is_cancelled() => {
                    tracing::info!(run_id = %run.run_id, "matching run cancelled: {e}");
                    run.state = pb::RunState::Cancelled as i32;
                    save_run(&mut Exec::Db(graph.db()), &run, None).await
                }
                Err(e) => {
                    tracing::warn!(run_id = %run.run_id, "matching run failed: {e}");
                    run.state = pb::RunState::Failed as i32;
                    run.error = e.to_string();
                    save_run(&mut Exec::Db(graph.db()), &run, None).await
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(run_id = %run.run_id, "matching run state not saved: {e}");
            }
            *runs.running.lock().await = None;
        });
        Ok(run)
    }

    /// Cancels the run if it is working here.
    pub async fn cancel(&self, graph: &Graph, run_id: &str) -> Result<pb::MatchingRun, Error> {
        let run = get_run(graph, run_id).await?;
        if run.state != pb::RunState::Running as i32 {
            return Err(Error::new(ErrorCode::FailedPrecondition, format!("run {run_id} is finished")));
        }
        let running = self.running.lock().await.clone();
        match running {
            Some((id, token)) if id == run_id => {
                token.cancel();
                let mut run = run;
                run.state = pb::RunState::Cancelled as i32;
                Ok(run)
            }
            _ => Err(Error::new(ErrorCode::FailedPrecondition, format!("run {run_id} is not working in this process"))),
        }
    }
}

/// A run by id.
pub async fn get_run(graph: &Graph, run_id: &str) -> Result<pb::MatchingRun, Error> {
    let rows: Vec<(String,)> =
        Exec::Db(graph.db()).all("SELECT data FROM matching_runs WHERE id = $1", &[run_id.into()]).await?;
    let (data,) = rows.into_iter().next().ok_or_else(|| Error::not_found(format!("run {run_id}")))?;
    decode(&data)
}

/// Runs newest first, from `offset`.
pub async fn list_runs(graph: &Graph, offset: usize, size: usize) -> Result<(Vec<pb::MatchingRun>, String), Error> {
    let rows: Vec<(String,)> = Exec::Db(graph.db())
        .all(
            "SELECT data FROM matching_runs ORDER BY started_at DESC, id DESC LIMIT $1 OFFSET $2",
            &[(size as i64 + 1).into(), (offset as i64).into()],
        )
        .await?;
    let more = rows.len() > size;
    let runs = rows.iter().take(size).map(|(d,)| decode(d)).collect::<Result<Vec<_>, _>>()?;
    Ok((runs, if more { (offset + size).to_string() } else { String::new() }))
}

/// Loads the stored records of `sources` (all when empty): (wire record, engine record, customer).
async fn load(
    graph: &Graph,
    sources: &[String],
) -> Result<Vec<(pb::SourceRecord, matching::SourceRecord, Option<String>)>, Error> {
    let rows: Vec<(String, Option<String>)> = Exec::Db(graph.db())
        .all(
            &format!(
                "SELECT r.data, {CURRENT} FROM source_records r LEFT JOIN customers c ON c.id = r.customer_id ORDER BY r.source, r.record_id"
            ),
            &[],
        )
        .await?;
    let normalizer = Normalizer::new(graph.settings()).map_err(Error::internal)?;
    let region = graph.settings().phone_default_region.parse::<phonenumber::country::Id>().ok();
    let mut out = Vec::new();
    for (data, customer) in rows {
        let wire: pb::SourceRecord = decode(&data)?;
        if !sources.is_empty() && !sources.contains(&wire.source) {
            continue;
        }
        let engine = to_engine(&normalizer, region, "record", &wire)?;
        out.push((wire, engine, customer));
    }
    Ok(out)
}

type Key = (String, String);

fn key_of(r: &matching::SourceRecord) -> Key {
    (r.source.clone(), r.record_id.clone())
}

/// Review decisions so far: pairs (both orders) by state.
async fn decisions(exec: &mut Exec<'_>) -> Result<HashMap<(Key, Key), String>, Error> {
    let rows: Vec<(String, String, String, String, String)> = exec
        .all("SELECT left_source, left_record_id, right_source, right_record_id, state FROM review_tasks", &[])
        .await?;
    let mut out = HashMap::new();
    for (ls, lr, rs, rr, state) in rows {
        out.insert(((ls.clone(), lr.clone()), (rs.clone(), rr.clone())), state.clone());
        out.insert(((rs, rr), (ls, lr)), state);
    }
    Ok(out)
}

struct Uf(Vec<usize>);
impl Uf {
    fn find(&mut self, x: usize) -> usize {
        let mut r = x;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut x = x;
        while self.0[x] != r {
            let next = self.0[x];
            self.0[x] = r;
            x = next;
        }
        r
    }
}

async fn execute(graph: &Graph, run: &mut pb::MatchingRun, cancel: &CancellationToken) -> Result<(), Error> {
    let request = run.request.clone().unwrap_or_default();
    let loaded_at = now_millis();
    let records = load(graph, &request.sources).await?;
    run.records = records.len() as i64;
    let mut settings = engine_settings(graph);
    if let Some(m) = request.match_threshold {
        settings.match_threshold = m;
    }
    if let Some(p) = request.possible_match_threshold {
        settings.possible_threshold = p;
    }
    let engine: Arc<Vec<matching::SourceRecord>> = Arc::new(records.iter().map(|r| r.1.clone()).collect());
    let (e2, s2) = (engine.clone(), settings.clone());
    let outcome =
        tokio::task::spawn_blocking(move || matching::match_records(&e2, &s2)).await.map_err(Error::internal)?;
    if cancel.is_cancelled() {
        return Err(Error::new(ErrorCode::FailedPrecondition, "cancelled"));
    }
    run.progress = 0.6;
    run.candidate_pairs = outcome.counts.candidate_pairs as i64;
    run.weights = (0..N_CMP)
        .flat_map(|c| {
            let p = &outcome.params;
            (1..LEVEL_NAMES[c].len()).map(move |l| pb::LevelWeight {
                attribute: COMPARISONS[c].into(),
                level: LEVEL_NAMES[c][l].into(),
                m: p.m[c][l],
                u: p.u[c][l],
                weight: p.weight(c, l as u8),
            })
        })
        .collect();
    let params = StoredParams::of(&outcome.params);

    let (writing, mut tx) = graph.begin_write().await?;
    let mut exec = Exec::Tx(&mut tx);
    // An erasure since the records were read: applying the run would store the erased records' values again.
    let erased: Vec<(i64,)> =
        exec.all("SELECT COUNT(*) FROM erased_records WHERE erased_at >= $1", &[loaded_at.into()]).await?;
    if erased.first().is_some_and(|n| n.0 > 0) {
        return Err(Error::new(
            ErrorCode::FailedPrecondition,
            "a customer was erased while the run read the records: run matching again",
        ));
    }
    let decided = decisions(&mut exec).await?;
    let keys: Vec<Key> = engine.iter().map(key_of).collect();
    // Clusters again from the matched pairs, keeping apart what review declared different.
    let mut matches = outcome.matches.clone();
    matches.sort_by(|x, y| y.weight.total_cmp(&x.weight));
    let different: Vec<(usize, usize)> = {
        let index: HashMap<&Key, usize> = keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
        decided
            .iter()
            .filter(|(_, s)| s.as_str() == "different")
            .filter_map(|((a, b), _)| Some((*index.get(a)?, *index.get(b)?)))
            .collect()
    };
    let mut uf = Uf((0..engine.len()).collect());
    let mut edges: Vec<&ScoredPair> = Vec::new();
    let mut refused = 0i64;
    for p in &matches {
        let (ra, rb) = (uf.find(p.a), uf.find(p.b));
        if ra == rb {
            continue;
        }
        if engine[p.a].kind != engine[p.b].kind {
            continue;
        }
        let apart = different.iter().any(|&(x, y)| {
            let (fx, fy) = (uf.find(x), uf.find(y));
            (fx == ra && fy == rb) || (fx == rb && fy == ra)
        });
        if apart {
            refused += 1;
            continue;
        }
        uf.0[rb] = ra;
        edges.push(p);
    }
    let mut clusters = BTreeSet::new();
    for i in 0..engine.len() {
        clusters.insert(uf.find(i));
    }
    run.matches = outcome.counts.matched_pairs as i64;
    run.clusters = clusters.len() as i64;
    let origin = Origin { source: "matching".into(), event_id: run.run_id.clone() };
    let now = now_millis();
    let mut messages = Vec::new();
    // Every record has a customer: the one it was given before, or a new one.
    let mut customer: Vec<String> = Vec::with_capacity(engine.len());
    for (wire, e, existing) in &records {
        match existing {
            Some(c) => customer.push(c.clone()),
            None => {
                let id = crate::graph::new_customer_id();
                exec.run(
                    "INSERT INTO customers (id, kind, created_at) VALUES ($1, $2, $3)",
                    &[id.as_str().into(), e.kind.as_str().into(), now.into()],
                )
                .await?;
                run.customers_created += 1;
                let rec_origin = Origin { source: wire.source.clone(), event_id: wire.record_id.clone() };
                messages.push(graph.events().created(&id, e.kind.as_str(), &[], &rec_origin));
                customer.push(id);
            }
        }
    }
    // Merges along the cluster edges, strongest first.
    let mut survivor_of: HashMap<String, String> = HashMap::new();
    fn current(map: &HashMap<String, String>, id: &str) -> String {
        let mut at = id.to_string();
        while let Some(next) = map.get(&at) {
            at = next.clone();
        }
        at
    }
    let mut strongest: HashMap<usize, f64> = HashMap::new();
    for p in &edges {
        for x in [p.a, p.b] {
            let w = strongest.entry(x).or_insert(p.weight);
            *w = w.max(p.weight);
        }
        let (ca, cb) = (current(&survivor_of, &customer[p.a]), current(&survivor_of, &customer[p.b]));
        if ca == cb {
            continue;
        }
        if graph.would_break_limit(&mut exec, &ca, &cb).await? {
            refused += 1;
            continue;
        }
        let (survivor, other) = graph.older_first(&mut exec, &ca, &cb).await?;
        let cmp = comparisons(p, &engine[p.a], &engine[p.b], &settings);
        let base = ChangeEvidence {
            match_weight: Some(p.weight),
            run_id: run.run_id.clone(),
            records: vec![keys[p.a].clone(), keys[p.b].clone()],
            comparisons: stored_comparisons(&cmp),
            ..Default::default()
        };
        let change =
            graph.merge_customers(&mut exec, &survivor, &other, "probabilistic_match", base, &origin, now).await?;
        messages.push(graph.events().merged(&change));
        survivor_of.insert(other, survivor);
        run.merges += 1;
    }
    // Assignments and the records' external ids.
    for (i, (_, e, _)) in records.iter().enumerate() {
        let c = current(&survivor_of, &customer[i]);
        let weight = strongest.get(&i).copied();
        // A record alone has no match weight (NULL; V has no typed NULL float).
        let (set_weight, w) = match weight {
            Some(w) => ("$3", V::F(w)),
            None => ("NULL", V::I(0)),
        };
        exec.run(
            &format!(
                "UPDATE source_records SET customer_id = $1, run_id = $2, match_weight = {set_weight} WHERE source = $4 AND record_id = $5 AND $3 = $3"
            ),
            &[c.as_str().into(), run.run_id.as_str().into(), w, e.source.as_str().into(), e.record_id.as_str().into()],
        )
        .await?;
        for (ns, value) in &e.external_ids {
            let (id_type, ns) = match crate::normalize::IdType::from_name(ns) {
                Some(t) if t != crate::normalize::IdType::External => (t.name(), ""),
                _ => ("external", ns.as_str()),
            };
            exec.run(
                "INSERT INTO identifiers (id_type, namespace, value, customer_id, source, first_seen, last_seen)
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id_type, namespace, value) DO NOTHING",
                &[
                    id_type.into(),
                    ns.into(),
                    value.as_str().into(),
                    c.as_str().into(),
                    e.source.as_str().into(),
                    now.into(),
                ],
            )
            .await?;
        }
    }
    // Possible matches between different customers become review tasks (once per pair).
    let mut asked: HashSet<(Key, Key)> = HashSet::new();
    for p in &outcome.possible {
        let (ka, kb) = (keys[p.a].clone(), keys[p.b].clone());
        if current(&survivor_of, &customer[p.a]) == current(&survivor_of, &customer[p.b])
            || engine[p.a].kind != engine[p.b].kind
            || decided.contains_key(&(ka.clone(), kb.clone()))
            || !asked.insert((ka.clone(), kb.clone()))
        {
            continue;
        }
        run.possible_matches += 1;
        if request.dry_run {
            continue;
        }
        let task = pb::ReviewTask {
            task_id: format!("rev_{}", uuid::Uuid::now_v7().simple()),
            left: Some(records[p.a].0.clone()),
            right: Some(records[p.b].0.clone()),
            match_weight: p.weight,
            comparisons: comparisons(p, &engine[p.a], &engine[p.b], &settings),
            state: pb::ReviewState::Open as i32,
            run_id: run.run_id.clone(),
            created_at: Some(timestamp(now)),
            match_probability: probability(p.weight, params.prior_log2_odds),
            ..Default::default()
        };
        exec.run(
            "INSERT INTO review_tasks (id, run_id, state, match_weight, left_source, left_record_id, right_source, right_record_id, data, created_at)
             VALUES ($1, $2, 'open', $3, $4, $5, $6, $7, $8, $9)",
            &[
                task.task_id.as_str().into(),
                run.run_id.as_str().into(),
                V::F(p.weight),
                ka.0.into(),
                ka.1.into(),
                kb.0.into(),
                kb.1.into(),
                hex_of(&task).into(),
                now.into(),
            ],
        )
        .await?;
        let event =
            pb::ReviewTaskCreated { task_id: task.task_id.clone(), run_id: run.run_id.clone(), match_weight: p.weight };
        messages.push(crate::grpc::event("identity.review_task_created", &task.task_id, &event));
    }
    run.refused = refused;
    if cancel.is_cancelled() {
        return Err(Error::new(ErrorCode::FailedPrecondition, "cancelled"));
    }
    if request.dry_run {
        // Counts only: nothing is applied.
        drop(tx);
        run.customers_created = 0;
        run.merges = 0;
        succeeded(run);
        save_run(&mut Exec::Db(graph.db()), run, None).await?;
        return Ok(());
    }
    // Applied, but still running until the hierarchy links the records name are made too, so that a
    // client that sees the run succeeded sees the whole result.
    run.progress = 0.95;
    save_run(&mut exec, run, Some(&params)).await?;
    graph.finish(tx, messages).await?;
    drop(writing); // linking takes the graph's write lock itself
    let wires: Vec<&pb::SourceRecord> = records.iter().map(|r| &r.0).collect();
    link_parents(graph, &wires, &run.run_id).await?;
    succeeded(run);
    let (_guard, mut tx) = graph.begin_write().await?;
    save_run(&mut Exec::Tx(&mut tx), run, Some(&params)).await?;
    let finished = crate::grpc::event(
        "identity.matching_run_finished",
        &run.run_id,
        &pb::MatchingRunFinished { run: Some(run.clone()) },
    );
    graph.finish(tx, vec![finished]).await?;
    Ok(())
}

/// Marks a run succeeded now.
fn succeeded(run: &mut pb::MatchingRun) {
    run.progress = 1.0;
    run.state = pb::RunState::Succeeded as i32;
    let finished = now_millis();
    run.finished_at = Some(timestamp(finished));
    run.seconds = (finished - millis_of(run.started_at.as_ref())) as f64 / 1000.0;
}

/// The hierarchy the records name: each record with a `parent` puts its customer under the customer of
/// that record (a site under its account, a contact under its site or account), through the same
/// LinkEntities path (allowed kind pairs, no cycles, one parent per kind, the change recorded and
/// published). Links already in place are left alone; a parent record not stored (or not matched yet) or a
/// link the hierarchy refuses is skipped and counted in the log (no values in it). Returns links made.
async fn link_parents(graph: &Graph, records: &[&pb::SourceRecord], run_id: &str) -> Result<usize, Error> {
    let (mut linked, mut missing, mut refused) = (0usize, 0usize, 0usize);
    for r in records {
        let Some(parent) = r.parent.as_ref() else { continue };
        let child = customer_of(&mut Exec::Db(graph.db()), &r.source, &r.record_id).await?;
        let up = customer_of(&mut Exec::Db(graph.db()), parent.source.trim(), parent.record_id.trim()).await?;
        if child.is_empty() || up.is_empty() {
            missing += 1;
            continue;
        }
        let (Some(child), Some(up)) = (graph.canonical(&child).await?, graph.canonical(&up).await?) else {
            missing += 1;
            continue;
        };
        if graph.parents(&child).await?.iter().any(|n| n.customer_id == up) {
            continue;
        }
        let origin = crate::hierarchy::LinkOrigin {
            source: r.source.clone(),
            event_id: r.record_id.clone(),
            actor: format!("matching {run_id}"),
        };
        match graph.link(&up, &child, "", &origin).await {
            Ok(_) => linked += 1,
            Err(e) if matches!(e.code(), ErrorCode::InvalidArgument | ErrorCode::FailedPrecondition) => {
                refused += 1;
            }
            Err(e) => return Err(e),
        }
    }
    if linked + missing + refused > 0 {
        tracing::info!(run_id, linked, missing, refused, "hierarchy links from the records' parents");
    }
    Ok(linked)
}

fn millis_of(t: Option<&prost_types::Timestamp>) -> i64 {
    t.and_then(rapport_rpc::convert::millis).unwrap_or_else(now_millis)
}

/// The parameters of the latest succeeded run.
async fn latest_params(graph: &Graph) -> Result<StoredParams, Error> {
    let rows: Vec<(String,)> = Exec::Db(graph.db())
        .all(
            "SELECT params FROM matching_runs WHERE state = 'succeeded' AND params <> '' ORDER BY started_at DESC LIMIT 1",
            &[],
        )
        .await?;
    let (json,) = rows.into_iter().next().ok_or_else(|| {
        Error::new(ErrorCode::FailedPrecondition, "no trained weights yet: run matching (RunMatching) first")
    })?;
    serde_json::from_str(&json).map_err(Error::internal)
}

/// Scores two records with the latest weights.
pub async fn compare_records(
    graph: &Graph,
    n: &Normalizer,
    left: Option<&pb::SourceRecord>,
    right: Option<&pb::SourceRecord>,
) -> Result<pb::CompareRecordsResponse, Error> {
    let region = graph.settings().phone_default_region.parse::<phonenumber::country::Id>().ok();
    let left = left.ok_or_else(|| Error::invalid("left", "is required"))?;
    let right = right.ok_or_else(|| Error::invalid("right", "is required"))?;
    let a = to_engine(n, region, "left", left)?;
    let b = to_engine(n, region, "right", right)?;
    if a.kind != b.kind {
        return Err(Error::invalid("right.kind", format!("is {}, the left record is {}", b.kind, a.kind)));
    }
    let stored = latest_params(graph).await?;
    let params = stored.params();
    let settings = engine_settings(graph);
    let (pair, conflict) = matching::score_pair(&a, &b, &params, &settings);
    let outcome = if !conflict && pair.weight >= params.match_threshold {
        pb::MatchOutcome::Match
    } else if !conflict && pair.weight >= params.possible_threshold {
        pb::MatchOutcome::PossibleMatch
    } else {
        pb::MatchOutcome::NonMatch
    };
    Ok(pb::CompareRecordsResponse {
        match_weight: pair.weight,
        match_probability: probability(pair.weight, params.prior_log2_odds),
        comparisons: comparisons(&pair, &a, &b, &settings),
        outcome: outcome as i32,
    })
}

/// The record's current customer (empty when not yet clustered).
async fn customer_of(exec: &mut Exec<'_>, source: &str, record_id: &str) -> Result<String, Error> {
    let rows: Vec<(Option<String>,)> = exec
        .all(
            &format!("SELECT {CURRENT} FROM source_records r LEFT JOIN customers c ON c.id = r.customer_id WHERE r.source = $1 AND r.record_id = $2"),
            &[source.into(), record_id.into()],
        )
        .await?;
    Ok(rows.into_iter().next().and_then(|r| r.0).unwrap_or_default())
}

async fn with_customers(exec: &mut Exec<'_>, mut task: pb::ReviewTask) -> Result<pb::ReviewTask, Error> {
    if let Some(l) = &task.left {
        task.left_customer_id = customer_of(exec, &l.source, &l.record_id).await?;
    }
    if let Some(r) = &task.right {
        task.right_customer_id = customer_of(exec, &r.source, &r.record_id).await?;
    }
    Ok(task)
}

/// One review task.
pub async fn get_task(graph: &Graph, task_id: &str) -> Result<pb::ReviewTask, Error> {
    let mut exec = Exec::Db(graph.db());
    let rows: Vec<(String,)> = exec.all("SELECT data FROM review_tasks WHERE id = $1", &[task_id.into()]).await?;
    let (data,) = rows.into_iter().next().ok_or_else(|| Error::not_found(format!("review task {task_id}")))?;
    with_customers(&mut exec, decode(&data)?).await
}

/// Review tasks, highest weight first.
pub async fn list_tasks(
    graph: &Graph,
    r: &pb::ListReviewTasksRequest,
    offset: usize,
    size: usize,
) -> Result<(Vec<pb::ReviewTask>, String), Error> {
    let mut sql = String::from("SELECT data FROM review_tasks WHERE 1 = 1");
    let mut binds: Vec<V> = Vec::new();
    if !r.include_decided {
        sql.push_str(" AND state = 'open'");
    }
    if !r.run_id.is_empty() {
        binds.push(r.run_id.as_str().into());
        sql.push_str(&format!(" AND run_id = ${}", binds.len()));
    }
    if !r.source.is_empty() {
        binds.push(r.source.as_str().into());
        sql.push_str(&format!(" AND (left_source = ${0} OR right_source = ${0})", binds.len()));
    }
    binds.push((size as i64 + 1).into());
    binds.push((offset as i64).into());
    sql.push_str(&format!(" ORDER BY match_weight DESC, id LIMIT ${} OFFSET ${}", binds.len() - 1, binds.len()));
    let mut exec = Exec::Db(graph.db());
    let rows: Vec<(String,)> = exec.all(&sql, &binds).await?;
    let more = rows.len() > size;
    let mut tasks = Vec::new();
    for (data,) in rows.iter().take(size) {
        tasks.push(with_customers(&mut exec, decode(data)?).await?);
    }
    Ok((tasks, if more { (offset + size).to_string() } else { String::new() }))
}

/// Decides a task: merge the records' customers, or keep them apart for good.
pub async fn resolve_task(
    graph: &Graph,
    task_id: &str,
    same: bool,
    note: &str,
    decided_by: &str,
) -> Result<pb::ReviewTask, Error> {
    let (_guard, mut tx) = graph.begin_write().await?;
    let mut exec = Exec::Tx(&mut tx);
    let rows: Vec<(String, String)> =
        exec.all("SELECT data, state FROM review_tasks WHERE id = $1", &[task_id.into()]).await?;
    let (data, state) = rows.into_iter().next().ok_or_else(|| Error::not_found(format!("review task {task_id}")))?;
    if state != "open" {
        return Err(Error::new(
            ErrorCode::FailedPrecondition,
            format!("task_id: task {task_id} is already decided ({state})"),
        ));
    }
    let mut task = with_customers(&mut exec, decode::<pb::ReviewTask>(&data)?).await?;
    let (l, r) = (task.left.clone().unwrap_or_default(), task.right.clone().unwrap_or_default());
    let (lc, rc) = (task.left_customer_id.clone(), task.right_customer_id.clone());
    if lc.is_empty() || rc.is_empty() {
        return Err(Error::new(ErrorCode::FailedPrecondition, "task_id: a record of the task is no longer stored"));
    }
    let now = now_millis();
    let origin = Origin { source: "review".into(), event_id: task_id.to_string() };
    let base = ChangeEvidence {
        match_weight: Some(task.match_weight),
        run_id: task.run_id.clone(),
        review_task_id: task_id.to_string(),
        records: vec![(l.source.clone(), l.record_id.clone()), (r.source.clone(), r.record_id.clone())],
        comparisons: stored_comparisons(&task.comparisons),
        ..Default::default()
    };
    let mut messages = Vec::new();
    if same && lc != rc {
        if graph.would_break_limit(&mut exec, &lc, &rc).await? {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("same: merging {lc} and {rc} would break an identifier limit"),
            ));
        }
        let (survivor, other) = graph.older_first(&mut exec, &lc, &rc).await?;
        let change = graph.merge_customers(&mut exec, &survivor, &other, "review_same", base, &origin, now).await?;
        messages.push(graph.events().merged(&change));
        exec.run(
            "UPDATE source_records SET customer_id = $1 WHERE customer_id = $2",
            &[survivor.as_str().into(), other.as_str().into()],
        )
        .await?;
    } else if !same {
        let change = GraphChange {
            id: new_change_id(),
            kind: "refusal".into(),
            customer_id: lc.clone(),
            other_id: Some(rc.clone()),
            rule: "review_different".into(),
            origin,
            evidence: base,
            undone_by: None,
            created_at: now,
        };
        insert_change(crate::graph::tx_of(&mut exec)?, &change).await?;
    }
    task.state = if same { pb::ReviewState::Same } else { pb::ReviewState::Different } as i32;
    task.decided_by = decided_by.to_string();
    task.decided_at = Some(timestamp(now));
    task.note = note.to_string();
    let stored = pb::ReviewTask { left_customer_id: String::new(), right_customer_id: String::new(), ..task.clone() };
    let state = review_state_name(pb::ReviewState::try_from(task.state).unwrap_or_default());
    exec.run(
        "UPDATE review_tasks SET state = $1, data = $2 WHERE id = $3",
        &[state.into(), hex_of(&stored).into(), task_id.into()],
    )
    .await?;
    let task = with_customers(&mut exec, task).await?;
    graph.finish(tx, messages).await?;
    Ok(task)
}

/// (source, record id, customer, run, match weight, open review tasks).
type AssignmentRow = (String, String, Option<String>, String, Option<f64>, i64);

/// Which customer each record belongs to, in (source, record id) order.
pub async fn assignments(
    graph: &Graph,
    r: &pb::ListRecordAssignmentsRequest,
    offset: usize,
    size: usize,
) -> Result<(Vec<pb::RecordAssignment>, String), Error> {
    let mut exec = Exec::Db(graph.db());
    let mut sql = format!(
        "SELECT r.source, r.record_id, {CURRENT}, r.run_id, r.match_weight,
           (SELECT COUNT(*) FROM review_tasks t WHERE t.state = 'open' AND ((t.left_source = r.source AND t.left_record_id = r.record_id) OR (t.right_source = r.source AND t.right_record_id = r.record_id)))
         FROM source_records r LEFT JOIN customers c ON c.id = r.customer_id WHERE 1 = 1"
    );
    let mut binds: Vec<V> = Vec::new();
    if !r.source.is_empty() {
        binds.push(r.source.as_str().into());
        sql.push_str(&format!(" AND r.source = ${}", binds.len()));
    }
    if !r.customer_id.trim().is_empty() {
        let id = graph
            .canonical(r.customer_id.trim())
            .await?
            .ok_or_else(|| Error::not_found(format!("customer_id: no customer {}", r.customer_id.trim())))?;
        binds.push(id.into());
        sql.push_str(&format!(" AND {CURRENT} = ${}", binds.len()));
    }
    binds.push((size as i64 + 1).into());
    binds.push((offset as i64).into());
    sql.push_str(&format!(" ORDER BY r.source, r.record_id LIMIT ${} OFFSET ${}", binds.len() - 1, binds.len()));
    let rows: Vec<AssignmentRow> = exec.all(&sql, &binds).await?;
    let more = rows.len() > size;
    let out = rows
        .into_iter()
        .take(size)
        .map(|(source, record_id, customer, run_id, weight, open)| pb::RecordAssignment {
            source,
            record_id,
            customer_id: customer.unwrap_or_default(),
            run_id,
            match_weight: weight,
            in_review: open > 0,
        })
        .collect();
    Ok((out, if more { (offset + size).to_string() } else { String::new() }))
}

/// The records matched to `ids` (a customer and its aliases).
pub async fn records_of(graph: &Graph, customer_id: &str) -> Result<Vec<pb::SourceRecordRef>, Error> {
    let rows: Vec<(String, String)> = Exec::Db(graph.db())
        .all(
            &format!("SELECT r.source, r.record_id FROM source_records r JOIN customers c ON c.id = r.customer_id WHERE {CURRENT} = $1 ORDER BY r.source, r.record_id"),
            &[customer_id.into()],
        )
        .await?;
    Ok(rows.into_iter().map(|(source, record_id)| pb::SourceRecordRef { source, record_id }).collect())
}

/// A display name from the customer's most recently updated record with a name.
pub(crate) async fn record_name(exec: &mut Exec<'_>, ids: &[String]) -> Result<Option<String>, Error> {
    let sql = format!(
        "SELECT data FROM source_records WHERE customer_id IN ({}) ORDER BY updated_at DESC LIMIT 20",
        placeholders(1, ids.len())
    );
    let binds: Vec<V> = ids.iter().map(V::from).collect();
    let rows: Vec<(String,)> = exec.all(&sql, &binds).await?;
    for (data,) in rows {
        let r: pb::SourceRecord = decode(&data)?;
        let get = |k: &str| r.attributes.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(name) = get("company_name") {
            return Ok(Some(name));
        }
        let name = [get("first_name"), get("last_name")].into_iter().flatten().collect::<Vec<_>>().join(" ");
        if !name.is_empty() {
            return Ok(Some(name));
        }
        if let Some(name) = get("full_name") {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_erased_record_leaves_evidence_without_compared_values_and_the_tombstone_is_a_hash() {
        let mut e = ChangeEvidence {
            match_weight: Some(12.5),
            records: vec![("crm".into(), "c-1".into()), ("shop".into(), "s-9".into())],
            comparisons: vec![StoredComparison {
                attribute: "first_name".into(),
                level: "exact".into(),
                weight: 4.0,
                left: "zephyrine".into(),
                right: "zephyrine".into(),
            }],
            ..Default::default()
        };
        assert!(!forget_record(&mut e, "crm", "s-9"), "another source's record of the same id");
        assert_eq!(e.comparisons.len(), 1);
        assert!(forget_record(&mut e, "crm", "c-1"));
        assert_eq!(e.records, vec![("shop".to_string(), "s-9".to_string())]);
        assert!(e.comparisons.is_empty() && e.match_weight == Some(12.5));
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("zephyrine") && !json.contains("c-1"), "{json}");

        let h = record_hash("crm", "c-1");
        assert_eq!(h.len(), 64);
        assert!(!h.contains("c-1"));
        assert_ne!(h, record_hash("crm", "c-"), "source and id are separated");
        assert_ne!(record_hash("crm", "c-1"), record_hash("crmc", "-1"));
    }
}
