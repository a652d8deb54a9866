//! The deterministic identity graph: resolve identifiers to one stable customer id, merge customers when
//! evidence joins them (within per-type limits), keep merged-away ids as aliases, record the evidence of
//! every change, and split a wrong merge exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rapport_errors::{Error, ErrorCode};
use rapport_storage::sqlx::{self, Row};
use rapport_storage::{Db, Outbox, OutboxMessage, Tx, now_millis, on_db, on_tx};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::normalize::{IdType, Ident};
use crate::settings::IdentitySettings;

/// PostgreSQL advisory lock that serialises graph writers across replicas ("identity" in ASCII).
const GRAPH_LOCK: i64 = 0x6964_656e_7469_7479;

/// Where the evidence of a write came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    /// The system that sent the identifiers.
    pub source: String,
    /// The event or record in that system.
    pub event_id: String,
}

/// An identifier left out of a merge, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Excluded {
    pub identifier: StoredIdent,
    pub reason: String,
}

/// An identifier as stored in evidence JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredIdent {
    #[serde(rename = "type")]
    pub id_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub value: String,
}

impl From<&Ident> for StoredIdent {
    fn from(i: &Ident) -> Self {
        Self { id_type: i.id_type.name().to_string(), namespace: i.namespace.clone(), value: i.value.clone() }
    }
}

impl StoredIdent {
    /// The typed identifier, if the type is known.
    pub fn to_ident(&self) -> Option<Ident> {
        Some(Ident {
            id_type: IdType::from_name(&self.id_type)?,
            namespace: self.namespace.clone(),
            value: self.value.clone(),
        })
    }
}

/// The evidence kept with a merge, a split or a refusal.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChangeEvidence {
    /// The identifiers of the request that joined the customers.
    #[serde(default)]
    pub identifiers: Vec<StoredIdent>,
    /// The identifiers the merged-away customer held at merge time (moved back by a split).
    #[serde(default)]
    pub moved: Vec<StoredIdent>,
    /// Older aliases of the merged-away customer, re-pointed to the survivor (restored by a split).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Identifiers left out because a limit would have been broken.
    #[serde(default)]
    pub excluded: Vec<Excluded>,
    /// For a split: the merge it undid, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<String>,
    /// A match weight, for merges proposed by probabilistic matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_weight: Option<f64>,
    /// For probabilistic merges: the matching run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// For merges and refusals decided in review: the task.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub review_task_id: String,
    /// For probabilistic merges: the two source records (source, record id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<(String, String)>,
    /// For probabilistic merges: how each attribute compared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<StoredComparison>,
}

/// One attribute's comparison, kept with a probabilistic merge.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StoredComparison {
    pub attribute: String,
    pub level: String,
    pub weight: f64,
    #[serde(default)]
    pub left: String,
    #[serde(default)]
    pub right: String,
}

/// One recorded change of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphChange {
    pub id: String,
    /// `merge`, `split`, `refusal`.
    pub kind: String,
    pub customer_id: String,
    pub other_id: Option<String>,
    pub rule: String,
    pub origin: Origin,
    pub evidence: ChangeEvidence,
    pub undone_by: Option<String>,
    pub created_at: i64,
}

/// What `resolve` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// The customer the identifiers belong to now.
    pub customer_id: String,
    /// Whether the customer was created by this call.
    pub created: bool,
    /// Customers merged into `customer_id` by this call (now aliases).
    pub merged: Vec<String>,
    /// The recorded merges, in the order of `merged`.
    pub merge_ids: Vec<String>,
    /// Identifiers attached to the customer by this call.
    pub attached: Vec<Ident>,
    /// Identifiers left out of the evidence, with the rule that left them out.
    pub excluded: Vec<Excluded>,
}

/// One identifier of a customer.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldIdent {
    pub ident: Ident,
    /// The customer holding it.
    pub owner: String,
    pub source: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A customer, its identifiers, aliases and history.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    pub customer_id: String,
    pub kind: String,
    pub created_at: i64,
    pub identifiers: Vec<HeldIdent>,
    pub aliases: Vec<String>,
    pub changes: Vec<GraphChange>,
}

/// Published on `identity.merged`, `identity.split`, `identity.created`, `identity.erased`: the JSON
/// fallback when no protobuf event applies.
pub const TOPIC_MERGED: &str = "identity.merged";
pub const TOPIC_SPLIT: &str = "identity.split";
pub const TOPIC_CREATED: &str = "identity.created";
pub const TOPIC_ERASED: &str = "identity.erased";

/// Who holds an identifier.
#[derive(Debug, Clone)]
struct Owner {
    customer_id: String,
    last_seen: i64,
    kind: String,
}

/// The holders of `$idents` (`HashMap<Ident, (customer_id, last_seen)>`), read through `$exec`.
macro_rules! owners_of {
    ($exec:expr, $idents:expr) => {{
        let idents: &[Ident] = $idents;
        let mut sql = String::from(
            "SELECT i.id_type, i.namespace, i.value, i.customer_id, i.last_seen, c.kind FROM identifiers i JOIN customers c ON c.id = i.customer_id WHERE ",
        );
        for i in 0..idents.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!(
                "(i.id_type = ${} AND i.namespace = ${} AND i.value = ${})",
                3 * i + 1,
                3 * i + 2,
                3 * i + 3
            ));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for i in idents {
            q = q
                .bind(i.id_type.name())
                .bind(i.namespace.as_str())
                .bind(i.value.as_str());
        }
        let mut found: HashMap<Ident, Owner> = HashMap::new();
        for r in q.fetch_all($exec).await? {
            let id_type: String = r.get(0);
            if let Some(id_type) = IdType::from_name(&id_type) {
                found.insert(
                    Ident {
                        id_type,
                        namespace: r.get(1),
                        value: r.get(2),
                    },
                    Owner {
                        customer_id: r.get(3),
                        last_seen: r.get(4),
                        kind: r.get(5),
                    },
                );
            }
        }
        found
    }};
}

/// The identifiers `$owner` holds (`Vec<HeldIdent>`), read through `$exec`.
macro_rules! identifiers_of {
    ($exec:expr, $owner:expr) => {{
        let owner: &str = $owner;
        let rows = sqlx::query(
            "SELECT id_type, namespace, value, source, first_seen, last_seen FROM identifiers
             WHERE customer_id = $1 ORDER BY id_type, namespace, value",
        )
        .bind(owner)
        .fetch_all($exec)
        .await?;
        rows.into_iter()
            .filter_map(|r| {
                let id_type: String = r.get(0);
                Some(HeldIdent {
                    ident: Ident { id_type: IdType::from_name(&id_type)?, namespace: r.get(1), value: r.get(2) },
                    owner: owner.to_string(),
                    source: r.get(3),
                    first_seen: r.get(4),
                    last_seen: r.get(5),
                })
            })
            .collect::<Vec<HeldIdent>>()
    }};
}

/// The graph over one service database.
#[derive(Clone)]
pub struct Graph {
    db: Db,
    outbox: Outbox,
    settings: Arc<IdentitySettings>,
    writer: Arc<Mutex<()>>,
    events: Arc<dyn EventEncoder>,
    lookups: Option<rapport_cache::VersionedMemo<Ident, String>>,
}

/// Encodes the outbox payloads of graph changes (the gRPC layer supplies the protobuf encoding).
pub trait EventEncoder: Send + Sync {
    /// A new customer of `kind` (person, household, account, site, contact).
    fn created(&self, customer_id: &str, kind: &str, identifiers: &[Ident], origin: &Origin) -> OutboxMessage;
    fn merged(&self, change: &GraphChange) -> OutboxMessage;
    fn split(&self, change: &GraphChange, identifiers: &[Ident]) -> OutboxMessage;
    fn erased(&self, customer_id: &str, aliases: &[String]) -> OutboxMessage;
    /// A child placed under a parent, moved, or detached (`parent` empty).
    fn hierarchy_changed(&self, change: &crate::hierarchy::HierarchyChange) -> OutboxMessage {
        let json = serde_json::json!({
            "child_customer_id": change.child, "child_kind": change.child_kind,
            "previous_parent_customer_id": change.previous_parent, "parent_customer_id": change.parent,
            "parent_kind": change.parent_kind, "role": change.role,
        });
        OutboxMessage::new(
            crate::hierarchy::TOPIC_HIERARCHY_CHANGED,
            &change.child,
            "json",
            json.to_string().into_bytes(),
        )
    }
}

pub(crate) fn new_customer_id() -> String {
    format!("cus_{}", uuid::Uuid::now_v7().simple())
}

/// The customer id `seed` gives the customer first seen with `first`: "cus_" and 32 hex digits of
/// SHA-256 over the seed, the identifier and `attempt` (the next attempt when an id is taken).
pub fn seeded_customer_id(seed: &str, first: &Ident, attempt: u32) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in [seed, first.id_type.name(), &first.namespace, &first.value, &attempt.to_string()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("cus_{}", &hex::encode(h.finalize())[..32])
}

pub(crate) fn new_change_id() -> String {
    format!("chg_{}", uuid::Uuid::now_v7().simple())
}

/// Re-reads `last_seen` at most this often per identifier on the read-only path.
const LAST_SEEN_RESOLUTION_MS: i64 = 24 * 3600 * 1000;

impl Graph {
    /// The graph stored in `db`, publishing to `outbox`.
    pub fn new(db: Db, outbox: Outbox, settings: Arc<IdentitySettings>, events: Arc<dyn EventEncoder>) -> Self {
        Self { db, outbox, settings, writer: Arc::new(Mutex::new(())), events, lookups: None }
    }

    /// Keeps [`Graph::lookup`]'s answers in process, versioned in `cache`. Only found customers are kept:
    /// an identifier's customer changes only by a merge, a split or an erasure, which move the version
    /// after they commit; attaching and creating do not change any kept answer.
    pub fn with_lookup_cache(mut self, cache: rapport_cache::Cache) -> Self {
        self.lookups = Some(rapport_cache::VersionedMemo::new(
            cache,
            "identity:owners",
            100_000,
            std::time::Duration::from_secs(30),
        ));
        self
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The encoder of outbox payloads.
    pub(crate) fn events(&self) -> &dyn EventEncoder {
        self.events.as_ref()
    }

    /// The identity settings.
    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    /// The customer `idents` (normalised, not blocked, at least one) belong to, creating, attaching and
    /// merging as the evidence and the limits allow.
    pub async fn resolve(&self, idents: Vec<Ident>, origin: Origin) -> Result<Resolved, Error> {
        self.resolve_kind(idents, origin, "person").await
    }

    /// Like [`Graph::resolve`] for an entity of `kind` (person, household, account, site, contact): a new
    /// customer gets that kind, and identifiers held by entities of another kind are left out, because
    /// entities never merge across kinds.
    pub async fn resolve_kind(&self, idents: Vec<Ident>, origin: Origin, kind: &str) -> Result<Resolved, Error> {
        self.resolve_seen(idents, origin, kind, None).await
    }

    /// Like [`Graph::resolve_kind`] for identifiers seen at `seen_at` (the event time; `None` is now): new
    /// identifiers that belonged to a customer erased at or after that time are refused with
    /// FAILED_PRECONDITION, so a replayed old event cannot re-create an erased person. (Seen after the
    /// erasure, they are a person coming back, and make a new customer.)
    pub async fn resolve_seen(
        &self,
        idents: Vec<Ident>,
        origin: Origin,
        kind: &str,
        seen_at: Option<i64>,
    ) -> Result<Resolved, Error> {
        let mut idents: Vec<Ident> = idents.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        if idents.is_empty() {
            return Err(Error::invalid("identifiers", "at least one usable identifier is required"));
        }
        // Read-only path: every identifier is known, held by one customer and seen recently.
        let known = on_db!(&self.db, p => owners_of!(p, &idents));
        let now = now_millis();
        if known.len() == idents.len() {
            let owners: BTreeSet<&String> = known.values().map(|o| &o.customer_id).collect();
            if owners.len() == 1
                && known.values().all(|o| now - o.last_seen < LAST_SEEN_RESOLUTION_MS && o.kind == kind)
            {
                let customer_id = (*owners.iter().next().expect("one owner")).clone();
                return Ok(Resolved { customer_id, ..Default::default() });
            }
        }
        // Only identifiers nobody holds can be an erased person's (erasure deletes what they held).
        let unknown: Vec<&Ident> = idents.iter().filter(|i| !known.contains_key(*i)).collect();
        self.refuse_erased(&unknown, seen_at.unwrap_or(now)).await?;
        idents.sort_by_key(|i| (self.settings.rank_of(i.id_type), i.clone()));
        let (_guard, mut tx) = self.begin_write().await?;
        let (resolved, messages) = self.resolve_in(&mut tx, idents, origin, kind, now).await?;
        self.finish(tx, messages).await?;
        Ok(resolved)
    }

    /// FAILED_PRECONDITION when one of `idents` belonged to a customer erased at or after `seen_at`.
    async fn refuse_erased(&self, idents: &[&Ident], seen_at: i64) -> Result<(), Error> {
        if idents.is_empty() {
            return Ok(());
        }
        let hashes: Vec<String> =
            idents.iter().map(|i| identifier_hash(i.id_type.name(), &i.namespace, &i.value)).collect();
        let marks: Vec<String> = (0..hashes.len()).map(|i| format!("${}", i + 1)).collect();
        let sql = format!("SELECT id_hash, erased_at FROM erased_identifiers WHERE id_hash IN ({})", marks.join(", "));
        let rows: Vec<(String, i64)> = on_db!(&self.db, p => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
            for h in &hashes {
                q = q.bind(h);
            }
            q.fetch_all(p).await?
        });
        for (hash, erased_at) in rows {
            if erased_at >= seen_at
                && let Some(i) = hashes.iter().position(|h| *h == hash)
            {
                let when =
                    chrono::DateTime::from_timestamp_millis(erased_at).map(|t| t.to_rfc3339()).unwrap_or_default();
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "identifiers: a {} identifier of a person erased at {when}, seen before the erasure (occurred_at); \
                         an old event cannot re-create an erased person",
                        idents[i].id_type.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Starts a write: the graph's write lock (in process, and across replicas on PostgreSQL) and a
    /// transaction. Dropping both without [`Graph::finish`] rolls back.
    pub(crate) async fn begin_write(&self) -> Result<(tokio::sync::MutexGuard<'_, ()>, Tx), Error> {
        let guard = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        if let Tx::Postgres(t) = &mut tx {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(GRAPH_LOCK).execute(&mut **t).await?;
        }
        Ok((guard, tx))
    }

    /// Appends `messages` to the outbox and commits.
    pub(crate) async fn finish(&self, mut tx: Tx, messages: Vec<OutboxMessage>) -> Result<(), Error> {
        Outbox::append(&mut tx, &messages).await?;
        self.outbox.commit(tx).await?;
        let moved = messages.iter().any(|m| [TOPIC_MERGED, TOPIC_SPLIT, TOPIC_ERASED].contains(&m.topic.as_str()));
        if let (Some(memo), true) = (&self.lookups, moved) {
            memo.changed().await;
        }
        Ok(())
    }

    async fn resolve_in(
        &self,
        tx: &mut Tx,
        mut evidence: Vec<Ident>,
        origin: Origin,
        kind: &str,
        now: i64,
    ) -> Result<(Resolved, Vec<OutboxMessage>), Error> {
        let window_start = match self.settings.limit_window_days {
            0 => i64::MIN,
            days => now - i64::from(days) * 24 * 3600 * 1000,
        };
        let mut excluded = Vec::new();
        let (owners, held) = loop {
            let known = on_tx!(tx, t => owners_of!(&mut **t, &evidence));
            // Entities never merge across kinds: identifiers of another kind's entity are left out.
            let other_kind: Vec<Ident> = known.iter().filter(|(_, o)| o.kind != kind).map(|(i, _)| i.clone()).collect();
            if !other_kind.is_empty() {
                for ident in &other_kind {
                    let owner = &known[ident];
                    excluded.push(Excluded {
                        identifier: StoredIdent::from(ident),
                        reason: format!("held by a {} entity; a {kind} never merges with it", owner.kind),
                    });
                }
                evidence.retain(|e| !other_kind.contains(e));
                if evidence.is_empty() {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("identifiers: every identifier belongs to an entity of another kind than {kind}"),
                    ));
                }
                continue;
            }
            let owners: BTreeSet<String> = known.values().map(|o| o.customer_id.clone()).collect();
            let mut held: Vec<HeldIdent> = Vec::new();
            for owner in &owners {
                held.extend(on_tx!(tx, t => identifiers_of!(&mut **t, owner)));
            }
            match self.broken_limit(&owners, &held, &evidence, &known, window_start) {
                None => break (owners, held),
                Some(broken) => {
                    // Leave the least trusted identifier out of the evidence and try again.
                    let dropped = evidence.pop().expect("a broken limit needs two identifiers");
                    excluded.push(Excluded {
                        identifier: StoredIdent::from(&dropped),
                        reason: format!(
                            "joining would give one customer more than {} {} identifier(s); the {} identifier ranks lowest",
                            self.settings.limit_of(broken),
                            broken.name(),
                            dropped.id_type.name()
                        ),
                    });
                }
            }
        };

        let mut messages = Vec::new();
        let mut resolved = Resolved { excluded: excluded.clone(), ..Default::default() };
        // The survivor is the oldest customer; it keeps its id.
        let survivor = match oldest(tx, &owners).await? {
            Some(id) => id,
            None => {
                let id = self.fresh_customer_id(tx, evidence.first()).await?;
                on_tx!(tx, t => sqlx::query("INSERT INTO customers (id, kind, created_at) VALUES ($1, $2, $3)")
                    .bind(&id).bind(kind).bind(now).execute(&mut **t).await?.rows_affected());
                resolved.created = true;
                id
            }
        };
        for other in owners.iter().filter(|o| **o != survivor) {
            let moved: Vec<StoredIdent> =
                held.iter().filter(|h| &h.owner == other).map(|h| StoredIdent::from(&h.ident)).collect();
            let base = ChangeEvidence {
                identifiers: evidence.iter().map(StoredIdent::from).collect(),
                moved,
                excluded: excluded.clone(),
                ..Default::default()
            };
            let change = self.merge(tx, &survivor, other, "shared_identifier", base, &origin, now).await?;
            messages.push(self.events.merged(&change));
            resolved.merged.push(other.clone());
            resolved.merge_ids.push(change.id.clone());
        }
        // Attach what is new; refresh what is known.
        for ident in &evidence {
            on_tx!(tx, t => sqlx::query(
                "INSERT INTO identifiers (id_type, namespace, value, customer_id, source, first_seen, last_seen)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)
                 ON CONFLICT (id_type, namespace, value) DO UPDATE SET last_seen = excluded.last_seen",
            )
            .bind(ident.id_type.name()).bind(&ident.namespace).bind(&ident.value).bind(&survivor)
            .bind(&origin.source).bind(now)
            .execute(&mut **t).await?.rows_affected());
            if !held.iter().any(|h| &h.ident == ident) {
                resolved.attached.push(ident.clone());
            }
        }
        if !excluded.is_empty() {
            let change = GraphChange {
                id: new_change_id(),
                kind: "refusal".into(),
                customer_id: survivor.clone(),
                other_id: None,
                rule: "identifier_limit".into(),
                origin: origin.clone(),
                evidence: ChangeEvidence {
                    identifiers: evidence.iter().map(StoredIdent::from).collect(),
                    excluded: excluded.clone(),
                    ..Default::default()
                },
                undone_by: None,
                created_at: now,
            };
            insert_change(tx, &change).await?;
        }
        if resolved.created {
            messages.push(self.events.created(&survivor, kind, &evidence, &origin));
        }
        resolved.customer_id = survivor;
        Ok((resolved, messages))
    }

    /// The type whose limit joining `evidence` with `owners` would break, if any. Identifiers seen before
    /// `window_start` do not count. A customer already over a limit (the limit was lowered) is not made
    /// worse by being seen again.
    fn broken_limit(
        &self,
        owners: &BTreeSet<String>,
        held: &[HeldIdent],
        evidence: &[Ident],
        known: &HashMap<Ident, Owner>,
        window_start: i64,
    ) -> Option<IdType> {
        if evidence.len() < 2 {
            return None;
        }
        let mut counts: BTreeMap<IdType, u32> = BTreeMap::new();
        for h in held.iter().filter(|h| h.last_seen >= window_start) {
            *counts.entry(h.ident.id_type).or_default() += 1;
        }
        for e in evidence.iter().filter(|e| !known.contains_key(*e)) {
            *counts.entry(e.id_type).or_default() += 1;
        }
        let single_owner_unchanged = owners.len() <= 1;
        IdType::ALL.into_iter().find(|t| {
            let count = counts.get(t).copied().unwrap_or(0);
            let limit = self.settings.limit_of(*t);
            if count <= limit {
                return false;
            }
            // Over the limit: only a problem if this call adds identifiers of the type or joins customers.
            let adds = evidence.iter().any(|e| e.id_type == *t && !known.contains_key(e));
            adds || !single_owner_unchanged
        })
    }

    /// Merges `other` into `survivor` inside `tx`, recording the change with `base` as its evidence (the
    /// aliases moved are filled in). The caller publishes the change.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn merge(
        &self,
        tx: &mut Tx,
        survivor: &str,
        other: &str,
        rule: &str,
        base: ChangeEvidence,
        origin: &Origin,
        now: i64,
    ) -> Result<GraphChange, Error> {
        let aliases: Vec<String> = on_tx!(tx, t => sqlx::query_scalar("SELECT id FROM customers WHERE merged_into = $1 ORDER BY id")
            .bind(other).fetch_all(&mut **t).await?);
        on_tx!(tx, t => sqlx::query("UPDATE identifiers SET customer_id = $1 WHERE customer_id = $2")
            .bind(survivor).bind(other).execute(&mut **t).await?.rows_affected());
        on_tx!(tx, t => sqlx::query("UPDATE customers SET merged_into = $1, merged_at = $2 WHERE id = $3 OR merged_into = $3")
            .bind(survivor).bind(now).bind(other).execute(&mut **t).await?.rows_affected());
        let change = GraphChange {
            id: new_change_id(),
            kind: "merge".into(),
            customer_id: survivor.to_string(),
            other_id: Some(other.to_string()),
            rule: rule.into(),
            origin: origin.clone(),
            evidence: ChangeEvidence { aliases, ..base },
            undone_by: None,
            created_at: now,
        };
        insert_change(tx, &change).await?;
        Ok(change)
    }

    /// The current id of `customer_id` (itself, or the survivor it was merged into).
    pub async fn canonical(&self, customer_id: &str) -> Result<Option<String>, Error> {
        let row: Option<(String, Option<String>)> = on_db!(&self.db, p => sqlx::query_as("SELECT id, merged_into FROM customers WHERE id = $1")
            .bind(customer_id).fetch_optional(p).await?);
        Ok(row.map(|(id, merged_into)| merged_into.unwrap_or(id)))
    }

    /// The customer holding `ident`, if any.
    pub async fn lookup(&self, ident: &Ident) -> Result<Option<String>, Error> {
        let version = match &self.lookups {
            Some(memo) => memo.version().await,
            None => None,
        };
        if let (Some(memo), Some(v)) = (&self.lookups, version)
            && let Some(kept) = memo.get(ident, v)
        {
            return Ok(Some(kept.1.clone()));
        }
        let known = on_db!(&self.db, p => owners_of!(p, std::slice::from_ref(ident)));
        let found = known.into_values().next().map(|o| o.customer_id);
        if let (Some(memo), Some(v), Some(customer)) = (&self.lookups, version, &found) {
            memo.put(ident.clone(), v, customer.clone());
        }
        Ok(found)
    }

    /// The customer's identifiers, aliases and recorded changes.
    pub async fn explain(&self, customer_id: &str) -> Result<Explained, Error> {
        let id =
            self.canonical(customer_id).await?.ok_or_else(|| Error::not_found(format!("customer {customer_id}")))?;
        let (kind, created_at): (String, i64) = on_db!(&self.db, p => sqlx::query_as("SELECT kind, created_at FROM customers WHERE id = $1")
            .bind(&id).fetch_one(p).await?);
        let (identifiers, aliases, changes) = on_db!(&self.db, p => {
            let mut conn = p.acquire().await.map_err(rapport_storage::StorageError::from)?;
            let identifiers = identifiers_of!(&mut *conn, &id);
            let aliases: Vec<String> = sqlx::query_scalar("SELECT id FROM customers WHERE merged_into = $1 ORDER BY id")
                .bind(&id).fetch_all(&mut *conn).await?;
            let mut involved = aliases.clone();
            involved.push(id.clone());
            let mut changes = Vec::new();
            for who in &involved {
                let rows = sqlx::query(
                    "SELECT id, kind, customer_id, other_id, rule, source, event_id, evidence, undone_by, created_at
                     FROM graph_changes WHERE customer_id = $1 OR other_id = $1",
                ).bind(who).fetch_all(&mut *conn).await?;
                for r in rows {
                    changes.push(change_from_row(&r)?);
                }
            }
            changes.sort_by(|a: &GraphChange, b: &GraphChange| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            changes.dedup_by(|a, b| a.id == b.id);
            (identifiers, aliases, changes)
        });
        Ok(Explained { customer_id: id, kind, created_at, identifiers, aliases, changes })
    }

    /// Undoes a wrong merge. With `merge_id`, that merge is undone exactly: the merged-away customer gets
    /// its id, identifiers and aliases back. With `identifiers` only, those identifiers leave `customer_id`:
    /// if they are exactly what one merge brought in, that merge is undone; otherwise they form a new
    /// customer. Returns the customer split off and the change recorded.
    pub async fn split(
        &self,
        customer_id: &str,
        merge_id: Option<&str>,
        identifiers: Vec<Ident>,
        origin: Origin,
    ) -> Result<(String, GraphChange), Error> {
        let id =
            self.canonical(customer_id).await?.ok_or_else(|| Error::not_found(format!("customer {customer_id}")))?;
        let merge_id = merge_id.map(str::to_string);
        let (_guard, mut tx) = self.begin_write().await?;
        let (split, messages) = self.split_in(&mut tx, id, merge_id, identifiers, origin).await?;
        self.finish(tx, messages).await?;
        Ok(split)
    }

    async fn split_in(
        &self,
        tx: &mut Tx,
        id: String,
        merge_id: Option<String>,
        identifiers: Vec<Ident>,
        origin: Origin,
    ) -> Result<((String, GraphChange), Vec<OutboxMessage>), Error> {
        let now = now_millis();
        let held = on_tx!(tx, t => identifiers_of!(&mut **t, &id));
        let merges: Vec<GraphChange> = on_tx!(tx, t => sqlx::query(
            "SELECT id, kind, customer_id, other_id, rule, source, event_id, evidence, undone_by, created_at
             FROM graph_changes WHERE kind = 'merge' AND customer_id = $1 AND undone_by IS NULL ORDER BY created_at DESC",
        ).bind(&id).fetch_all(&mut **t).await?
            .iter()
            .map(change_from_row)
            .collect::<Result<_, _>>()?);
        let wanted: BTreeSet<StoredIdent> = identifiers.iter().map(StoredIdent::from).collect();
        for (i, w) in identifiers.iter().enumerate() {
            if !held.iter().any(|h| &h.ident == w) {
                return Err(Error::invalid(&format!("identifiers[{i}]"), format!("is not held by customer {id}")));
            }
        }
        let merge = match &merge_id {
            Some(m) => Some(merges.iter().find(|c| &c.id == m).cloned().ok_or_else(|| {
                Error::new(ErrorCode::NotFound, format!("merge_id: no merge {m} into customer {id} that is not undone"))
            })?),
            None if wanted.is_empty() => {
                return Err(Error::invalid("identifiers", "name the identifiers to split off, or give merge_id"));
            }
            None => merges
                .iter()
                .find(|c| {
                    let moved: BTreeSet<StoredIdent> = c.evidence.moved.iter().cloned().collect();
                    moved == wanted
                })
                .cloned(),
        };
        let split_id = new_change_id();
        let (other, moving, revived_aliases) = match &merge {
            Some(m) => {
                let other = m.other_id.clone().expect("a merge names the merged customer");
                let moving: Vec<Ident> = m
                    .evidence
                    .moved
                    .iter()
                    .filter_map(StoredIdent::to_ident)
                    .filter(|i| held.iter().any(|h| &h.ident == i))
                    .collect();
                on_tx!(tx, t => sqlx::query("UPDATE customers SET merged_into = NULL, merged_at = NULL WHERE id = $1")
                    .bind(&other).execute(&mut **t).await?.rows_affected());
                for alias in &m.evidence.aliases {
                    on_tx!(tx, t => sqlx::query("UPDATE customers SET merged_into = $1 WHERE id = $2 AND merged_into = $3")
                        .bind(&other).bind(alias).bind(&id).execute(&mut **t).await?.rows_affected());
                }
                on_tx!(tx, t => sqlx::query("UPDATE graph_changes SET undone_by = $1 WHERE id = $2")
                    .bind(&split_id).bind(&m.id).execute(&mut **t).await?.rows_affected());
                (other, moving, m.evidence.aliases.clone())
            }
            None => {
                let other = new_customer_id();
                // The new customer is of the same kind as the one split.
                on_tx!(tx, t => sqlx::query(
                    "INSERT INTO customers (id, kind, created_at) SELECT $1, kind, $2 FROM customers WHERE id = $3",
                )
                .bind(&other).bind(now).bind(&id).execute(&mut **t).await?.rows_affected());
                (other, identifiers.clone(), Vec::new())
            }
        };
        if moving.len() == held.len() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("identifiers: splitting them off would leave customer {id} with no identifier"),
            ));
        }
        for ident in &moving {
            on_tx!(tx, t => sqlx::query("UPDATE identifiers SET customer_id = $1 WHERE id_type = $2 AND namespace = $3 AND value = $4")
                .bind(&other).bind(ident.id_type.name()).bind(&ident.namespace).bind(&ident.value)
                .execute(&mut **t).await?.rows_affected());
        }
        let change = GraphChange {
            id: split_id,
            kind: "split".into(),
            customer_id: id.clone(),
            other_id: Some(other.clone()),
            rule: if merge.is_some() { "undo_merge".into() } else { "manual_split".into() },
            origin,
            evidence: ChangeEvidence {
                identifiers: identifiers.iter().map(StoredIdent::from).collect(),
                moved: moving.iter().map(StoredIdent::from).collect(),
                aliases: revived_aliases,
                undoes: merge.map(|m| m.id),
                ..Default::default()
            },
            undone_by: None,
            created_at: now,
        };
        insert_change(tx, &change).await?;
        let message = self.events.split(&change, &moving);
        Ok(((other, change), vec![message]))
    }

    /// Everything the graph holds about `customer_id` and its aliases, removed, with their source records
    /// and what matching stored about them ([`crate::records::erase_in`]), in one transaction. Returns the
    /// customer id and how many rows went.
    pub async fn erase(&self, customer_id: &str) -> Result<(String, u64), Error> {
        let id =
            self.canonical(customer_id).await?.ok_or_else(|| Error::not_found(format!("customer {customer_id}")))?;
        let (_guard, mut tx) = self.begin_write().await?;
        let t = &mut tx;
        let aliases: Vec<String> = on_tx!(t, c => sqlx::query_scalar("SELECT id FROM customers WHERE merged_into = $1")
            .bind(&id).fetch_all(&mut **c).await?);
        let mut erased = 0;
        let mut everyone = aliases.clone();
        everyone.push(id.clone());
        let erased_at = now_millis();
        for who in &everyone {
            // Each identifier leaves a hash, so that a replayed event seen before now cannot re-create them.
            let held: Vec<(String, String, String)> = on_tx!(t, c => sqlx::query_as(
                "SELECT id_type, namespace, value FROM identifiers WHERE customer_id = $1",
            )
            .bind(who).fetch_all(&mut **c).await?);
            for (id_type, namespace, value) in &held {
                on_tx!(t, c => sqlx::query(
                    "INSERT INTO erased_identifiers (id_hash, erased_at) VALUES ($1, $2)
                     ON CONFLICT (id_hash) DO UPDATE SET erased_at = excluded.erased_at",
                )
                .bind(identifier_hash(id_type, namespace, value)).bind(erased_at)
                .execute(&mut **c).await?.rows_affected());
            }
            erased += on_tx!(t, c => sqlx::query("DELETE FROM identifiers WHERE customer_id = $1")
                .bind(who).execute(&mut **c).await?.rows_affected());
            erased += on_tx!(t, c => sqlx::query("DELETE FROM graph_changes WHERE customer_id = $1 OR other_id = $1")
                .bind(who).execute(&mut **c).await?.rows_affected());
            // The ids stay, as erased tombstones, so that an old reference never resolves to someone else.
            on_tx!(t, c => sqlx::query("UPDATE customers SET kind = 'erased' WHERE id = $1")
                .bind(who).execute(&mut **c).await?.rows_affected());
        }
        // The probabilistic-matching data of the person: source records, review tasks, compared values.
        erased +=
            crate::records::erase_in(&mut rapport_storage::sql::Exec::Tx(&mut tx), &everyone, now_millis()).await?;
        let message = self.events.erased(&id, &aliases);
        self.finish(tx, vec![message]).await?;
        Ok((id, erased))
    }
}

/// A tombstone: SHA-256 over `parts`, each ended by a NUL byte (what was erased is not kept).
pub(crate) fn tombstone_hash(parts: &[&str]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// The tombstone of an identifier of an erased customer.
fn identifier_hash(id_type: &str, namespace: &str, value: &str) -> String {
    tombstone_hash(&["identifier", id_type, namespace, value])
}

/// The transaction under `exec`.
pub(crate) fn tx_of<'a>(exec: &'a mut rapport_storage::sql::Exec<'_>) -> Result<&'a mut Tx, Error> {
    match exec {
        rapport_storage::sql::Exec::Tx(t) => Ok(&mut **t),
        rapport_storage::sql::Exec::Db(_) => Err(Error::internal("a graph write needs a transaction")),
    }
}

impl Graph {
    /// Merges `other` into `survivor` in `exec`'s transaction with `base` as the evidence; the caller
    /// publishes the change.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn merge_customers(
        &self,
        exec: &mut rapport_storage::sql::Exec<'_>,
        survivor: &str,
        other: &str,
        rule: &str,
        mut base: ChangeEvidence,
        origin: &Origin,
        now: i64,
    ) -> Result<GraphChange, Error> {
        let tx = tx_of(exec)?;
        let held = on_tx!(tx, t => identifiers_of!(&mut **t, other));
        base.moved = held.iter().map(|h| StoredIdent::from(&h.ident)).collect();
        self.merge(tx, survivor, other, rule, base, origin, now).await
    }

    /// Whether joining the identifiers of `a` and `b` would give one customer more identifiers of a type
    /// than its limit.
    pub(crate) async fn would_break_limit(
        &self,
        exec: &mut rapport_storage::sql::Exec<'_>,
        a: &str,
        b: &str,
    ) -> Result<bool, Error> {
        let tx = tx_of(exec)?;
        let mut held = on_tx!(tx, t => identifiers_of!(&mut **t, a));
        held.extend(on_tx!(tx, t => identifiers_of!(&mut **t, b)));
        let mut counts: BTreeMap<IdType, u32> = BTreeMap::new();
        let distinct: BTreeSet<&Ident> = held.iter().map(|h| &h.ident).collect();
        for i in distinct {
            *counts.entry(i.id_type).or_default() += 1;
        }
        Ok(counts.iter().any(|(t, n)| *n > self.settings.limit_of(*t)))
    }

    /// `a` and `b` as (older, newer): the older customer survives a merge and keeps its id.
    pub(crate) async fn older_first(
        &self,
        exec: &mut rapport_storage::sql::Exec<'_>,
        a: &str,
        b: &str,
    ) -> Result<(String, String), Error> {
        let tx = tx_of(exec)?;
        let owners = BTreeSet::from([a.to_string(), b.to_string()]);
        let survivor = oldest(tx, &owners).await?.unwrap_or_else(|| a.to_string());
        let other = if survivor == a { b } else { a };
        Ok((survivor, other.to_string()))
    }

    /// A new customer's id: random, or derived from `identity.customer_id_seed` and the first identifier
    /// when a seed is configured (demos and tests that must give the same ids on every run), skipping
    /// ids already taken (erased customers keep their row).
    async fn fresh_customer_id(&self, tx: &mut Tx, first: Option<&Ident>) -> Result<String, Error> {
        let (seed, first) = match (self.settings.customer_id_seed.as_str(), first) {
            ("", _) | (_, None) => return Ok(new_customer_id()),
            (seed, Some(first)) => (seed, first),
        };
        for attempt in 0..1_000 {
            let id = seeded_customer_id(seed, first, attempt);
            let taken: Option<i64> = on_tx!(tx, t => sqlx::query_scalar("SELECT created_at FROM customers WHERE id = $1")
                .bind(&id).fetch_optional(&mut **t).await?);
            if taken.is_none() {
                return Ok(id);
            }
        }
        Ok(new_customer_id())
    }
}

async fn oldest(tx: &mut Tx, owners: &BTreeSet<String>) -> Result<Option<String>, Error> {
    let mut best: Option<(i64, String)> = None;
    for owner in owners {
        let created: i64 = on_tx!(tx, t => sqlx::query_scalar("SELECT created_at FROM customers WHERE id = $1")
            .bind(owner).fetch_one(&mut **t).await?);
        if best.as_ref().is_none_or(|(c, id)| (created, owner) < (*c, id)) {
            best = Some((created, owner.clone()));
        }
    }
    Ok(best.map(|(_, id)| id))
}

pub(crate) async fn insert_change(tx: &mut Tx, change: &GraphChange) -> Result<(), Error> {
    let evidence = serde_json::to_string(&change.evidence).map_err(Error::internal)?;
    on_tx!(tx, t => sqlx::query(
        "INSERT INTO graph_changes (id, kind, customer_id, other_id, rule, source, event_id, evidence, undone_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&change.id).bind(&change.kind).bind(&change.customer_id).bind(&change.other_id).bind(&change.rule)
    .bind(&change.origin.source).bind(&change.origin.event_id).bind(evidence).bind(&change.undone_by).bind(change.created_at)
    .execute(&mut **t).await?.rows_affected());
    Ok(())
}

fn change_from_row<R: Row>(r: &R) -> Result<GraphChange, Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let evidence: String = r.try_get("evidence")?;
    Ok(GraphChange {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        customer_id: r.try_get("customer_id")?,
        other_id: r.try_get("other_id")?,
        rule: r.try_get("rule")?,
        origin: Origin { source: r.try_get("source")?, event_id: r.try_get("event_id")? },
        evidence: serde_json::from_str(&evidence).map_err(Error::internal)?,
        undone_by: r.try_get("undone_by")?,
        created_at: r.try_get("created_at")?,
    })
}
