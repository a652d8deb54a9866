//! What the decision service keeps: offers with their versions, placements and contact policies (held
//! compiled in memory as the catalog), the decision log written by group commit, outcomes and the
//! bandit's counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use prost::{Message, Name};
use rapport_cache::Cache;
use rapport_errors::{Error, ErrorCode};
use rapport_proto::decision::v1 as pb;
use rapport_rpc::Clients;
use rapport_rpc::convert::timestamp;
use rapport_rules::Rule;
use rapport_storage::sql::{Exec, V};
use rapport_storage::{Db, GroupCommit, Outbox, OutboxMessage, StorageError, Tx, now_millis};

use crate::domain::offers::{self, default_placement};
use crate::domain::thompson::Posterior;
use crate::settings::DecisionSettings;

/// An offer that can be chosen, with its compiled rule.
#[derive(Debug)]
pub struct LiveOffer {
    pub offer: pb::Offer,
    pub rule: Option<Rule>,
}

/// Everything Decide reads on every call, kept in memory and replaced whole when a definition changes.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Offers that are not archived.
    pub offers: Vec<Arc<LiveOffer>>,
    pub placements: HashMap<i32, pb::Placement>,
    pub policies: Vec<pb::ContactPolicy>,
    /// (offer id, version) of every offer, to notice changes made by other replicas.
    fingerprint: Vec<(String, i64)>,
    policy_count: usize,
}

impl Catalog {
    /// The arbitration of `kind` (the default when not configured).
    pub fn placement(&self, kind: pb::PlacementKind) -> pb::Placement {
        self.placements.get(&(kind as i32)).cloned().unwrap_or_else(|| default_placement(kind))
    }
}

/// A decision as logged.
#[derive(Debug, Clone)]
pub struct LoggedDecision {
    pub decision: pb::Decision,
    pub experiment_id: String,
    pub arm: String,
    pub holdout: bool,
    pub sent: bool,
    pub segment: String,
    /// Per offer of `decision.offers`: the probability it came first.
    pub first_probability: Vec<f64>,
    /// Every offer that was ranked (eligible and open), for off-policy evaluation.
    pub candidates: Vec<String>,
}

/// The bandit's counts: totals read from the database plus what this process added since its last
/// flush. Counting in memory keeps Decide free of a hot-row write; the flush adds the increments to the
/// shared rows and reads back what every replica added.
#[derive(Debug, Default)]
pub struct Bandit {
    state: Mutex<BanditState>,
}

#[derive(Debug, Default)]
struct BanditState {
    totals: HashMap<(String, String), Posterior>,
    pending: HashMap<(String, String), Posterior>,
}

impl Bandit {
    /// The posterior of `offer_id` in `segment`.
    pub fn posterior(&self, offer_id: &str, segment: &str) -> Posterior {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = (offer_id.to_string(), segment.to_string());
        let total = s.totals.get(&key).copied().unwrap_or_default();
        let pending = s.pending.get(&key).copied().unwrap_or_default();
        Posterior { trials: total.trials + pending.trials, successes: total.successes + pending.successes }
    }

    /// Counts a trial (an offer shown) and possibly a success.
    pub fn add(&self, offer_id: &str, segment: &str, trials: i64, successes: i64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let p = s.pending.entry((offer_id.to_string(), segment.to_string())).or_default();
        p.trials += trials;
        p.successes += successes;
    }

    /// Adds this process's increments to the database and reads back the totals of every replica.
    pub async fn flush(&self, db: &Db) -> Result<(), Error> {
        let pending: Vec<((String, String), Posterior)> = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut s.pending).into_iter().collect()
        };
        if !pending.is_empty() {
            let written = async {
                let mut tx = db.begin().await?;
                for ((offer, segment), p) in &pending {
                    Exec::Tx(&mut tx)
                        .run(
                            "INSERT INTO bandit_arms (offer_id, segment, trials, successes) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (offer_id, segment) DO UPDATE SET trials = bandit_arms.trials + excluded.trials, \
                             successes = bandit_arms.successes + excluded.successes",
                            &[offer.into(), segment.into(), p.trials.into(), p.successes.into()],
                        )
                        .await?;
                }
                tx.commit().await.map_err(Error::from)
            };
            if let Err(e) = written.await {
                // Keep the increments for the next flush.
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                for (key, p) in pending {
                    let e = s.pending.entry(key).or_default();
                    e.trials += p.trials;
                    e.successes += p.successes;
                }
                return Err(e);
            }
        }
        let rows: Vec<(String, String, i64, i64)> =
            Exec::Db(db).all("SELECT offer_id, segment, trials, successes FROM bandit_arms", &[]).await?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.totals =
            rows.into_iter().map(|(o, seg, trials, successes)| ((o, seg), Posterior { trials, successes })).collect();
        Ok(())
    }
}

/// The service's state.
pub struct Store {
    pub db: Db,
    pub outbox: Outbox,
    pub settings: Arc<DecisionSettings>,
    pub cache: Cache,
    pub clients: Clients,
    pub bandit: Bandit,
    catalog: RwLock<Arc<Catalog>>,
    log: GroupCommit<LoggedDecision>,
}

fn decode<M: Message + Default>(what: &str, body: &[u8]) -> Result<M, Error> {
    M::decode(body).map_err(|e| Error::internal(format!("stored {what} does not decode: {e}")))
}

/// An outbox message carrying `payload`.
pub fn message<M: Name>(topic: &str, key: &str, payload: &M) -> OutboxMessage {
    OutboxMessage::new(topic, key, M::full_name(), payload.encode_to_vec())
}

fn offer_changed(o: &pb::Offer) -> OutboxMessage {
    message("decision.offer_changed", &o.offer_id, &pb::OfferChanged { offer: Some(o.clone()) })
}

async fn write_decisions(tx: &mut Tx, items: &[LoggedDecision]) -> Result<(), StorageError> {
    let mut messages = Vec::with_capacity(items.len());
    for d in items {
        let decided_at = d.decision.decided_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_default();
        let mut body = d.decision.clone();
        body.customer_id.clear();
        let insert = Exec::Tx(tx)
            .run(
                "INSERT INTO decisions (decision_id, customer_id, placement, channel, campaign_id, experiment_id, arm, \
                 holdout, segment, sent, decided_at, candidates, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                &[
                    (&d.decision.decision_id).into(),
                    (&d.decision.customer_id).into(),
                    d.decision.placement.into(),
                    d.decision.channel.into(),
                    (&d.decision.campaign_id).into(),
                    (&d.experiment_id).into(),
                    (&d.arm).into(),
                    d.holdout.into(),
                    (&d.segment).into(),
                    d.sent.into(),
                    decided_at.into(),
                    d.candidates.join(" ").into(),
                    body.encode_to_vec().into(),
                ],
            )
            .await;
        insert.map_err(|e| StorageError::Unavailable(e.to_string()))?;
        for (rank, o) in d.decision.offers.iter().enumerate() {
            Exec::Tx(tx)
                .run(
                    "INSERT INTO decision_offers (decision_id, offer_id, rank, choice_probability, first_probability, \
                     decided_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        (&d.decision.decision_id).into(),
                        (&o.offer_id).into(),
                        (rank as i64).into(),
                        o.choice_probability.into(),
                        d.first_probability.get(rank).copied().unwrap_or(o.choice_probability).into(),
                        decided_at.into(),
                    ],
                )
                .await
                .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        }
        messages.push(message(
            "decision.made",
            &d.decision.customer_id,
            &pb::DecisionMade { decision: Some(d.decision.clone()) },
        ));
    }
    Outbox::append(tx, &messages).await
}

impl Store {
    /// The store on `db`, with the catalog loaded.
    pub async fn open(db: Db, settings: Arc<DecisionSettings>, cache: Cache, clients: Clients) -> Result<Self, Error> {
        let outbox = Outbox::new(db.clone());
        let log = GroupCommit::spawn(
            outbox.clone(),
            256,
            Arc::new(|tx: &mut Tx, items: &[LoggedDecision]| Box::pin(write_decisions(tx, items))),
        );
        let store = Self {
            db,
            outbox,
            settings,
            cache,
            clients,
            bandit: Bandit::default(),
            catalog: RwLock::new(Arc::new(Catalog::default())),
            log,
        };
        store.reload().await?;
        store.bandit.flush(&store.db).await?;
        Ok(store)
    }

    /// The catalog as it is now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads every definition again and compiles the offers' rules.
    pub async fn reload(&self) -> Result<(), Error> {
        let rows: Vec<(Vec<u8>,)> =
            Exec::Db(&self.db).all("SELECT body FROM offers WHERE archived = 0 ORDER BY offer_id", &[]).await?;
        let mut live = Vec::with_capacity(rows.len());
        let mut fingerprint = Vec::with_capacity(rows.len());
        for (body,) in rows {
            let offer: pb::Offer = decode("offer", &body)?;
            fingerprint.push((offer.offer_id.clone(), offer.version));
            match offers::compile_rule("eligibility_rule", &offer.eligibility_rule) {
                Ok(rule) => live.push(Arc::new(LiveOffer { offer, rule })),
                Err(e) => {
                    tracing::error!(offer = %offer.offer_id, error = %e, "a stored rule no longer compiles; the offer is skipped")
                }
            }
        }
        let placements: Vec<(i64, Vec<u8>)> = Exec::Db(&self.db).all("SELECT kind, body FROM placements", &[]).await?;
        let placements = placements
            .into_iter()
            .map(|(k, b)| Ok((k as i32, decode::<pb::Placement>("placement", &b)?)))
            .collect::<Result<HashMap<_, _>, Error>>()?;
        let policies: Vec<(Vec<u8>,)> =
            Exec::Db(&self.db).all("SELECT body FROM contact_policies ORDER BY policy_id", &[]).await?;
        let policies = policies
            .into_iter()
            .map(|(b,)| decode("contact policy", &b))
            .collect::<Result<Vec<pb::ContactPolicy>, _>>()?;
        let catalog = Catalog { offers: live, policy_count: policies.len(), placements, policies, fingerprint };
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        Ok(())
    }

    /// Reloads when another replica changed a definition (checked cheaply by versions and counts).
    pub async fn refresh(&self) -> Result<(), Error> {
        let current: Vec<(String, i64)> = Exec::Db(&self.db)
            .all("SELECT offer_id, version FROM offers WHERE archived = 0 ORDER BY offer_id", &[])
            .await?;
        let counts: Vec<(i64, i64)> = Exec::Db(&self.db)
            .all("SELECT (SELECT COUNT(*) FROM contact_policies), (SELECT COUNT(*) FROM placements)", &[])
            .await?;
        let catalog = self.catalog();
        let (policies, placements) = counts.first().copied().unwrap_or_default();
        if current != catalog.fingerprint
            || policies as usize != catalog.policy_count
            || placements as usize != catalog.placements.len()
        {
            self.reload().await?;
        }
        Ok(())
    }

    /// Wakes this service's feed readers after a change committed outside [`Outbox::commit`].
    pub fn outbox_committed(&self) {
        self.outbox.notify();
    }

    /// Logs a decision (group commit with every concurrent one); durable when this returns.
    pub async fn log_decision(&self, d: LoggedDecision) -> Result<(), Error> {
        self.log.write(d).await.map_err(Error::from)
    }

    // ---- offers ----

    /// The current version of an offer, archived or not.
    pub async fn offer(&self, offer_id: &str) -> Result<pb::Offer, Error> {
        let rows: Vec<(Vec<u8>,)> =
            Exec::Db(&self.db).all("SELECT body FROM offers WHERE offer_id = $1", &[offer_id.into()]).await?;
        let (body,) = rows.into_iter().next().ok_or_else(|| Error::not_found(format!("offer {offer_id}")))?;
        decode("offer", &body)
    }

    /// A saved version of an offer.
    pub async fn offer_version(&self, offer_id: &str, version: i64) -> Result<pb::Offer, Error> {
        let rows: Vec<(Vec<u8>,)> = Exec::Db(&self.db)
            .all(
                "SELECT body FROM offer_versions WHERE offer_id = $1 AND version = $2",
                &[offer_id.into(), version.into()],
            )
            .await?;
        let (body,) =
            rows.into_iter().next().ok_or_else(|| Error::not_found(format!("offer {offer_id} version {version}")))?;
        decode("offer", &body)
    }

    /// Every saved version of an offer, oldest first.
    pub async fn offer_versions(&self, offer_id: &str) -> Result<Vec<pb::Offer>, Error> {
        let rows: Vec<(Vec<u8>,)> = Exec::Db(&self.db)
            .all("SELECT body FROM offer_versions WHERE offer_id = $1 ORDER BY version", &[offer_id.into()])
            .await?;
        if rows.is_empty() {
            return Err(Error::not_found(format!("offer {offer_id}")));
        }
        rows.into_iter().map(|(b,)| decode("offer", &b)).collect()
    }

    /// Offers after `after` (offer id order), at most `limit`, optionally with archived ones and only
    /// those carrying every one of `tags`.
    pub async fn offers(
        &self,
        include_archived: bool,
        tags: &[String],
        after: &str,
        limit: i64,
    ) -> Result<Vec<pb::Offer>, Error> {
        let mut out = Vec::new();
        let mut cursor = after.to_string();
        // Tags are filtered after reading, so read pages until the page is full or the table ends.
        loop {
            let rows: Vec<(String, i64, Vec<u8>)> = Exec::Db(&self.db)
                .all(
                    "SELECT offer_id, archived, body FROM offers WHERE offer_id > $1 ORDER BY offer_id LIMIT $2",
                    &[cursor.clone().into(), 500i64.into()],
                )
                .await?;
            let done = rows.len() < 500;
            for (id, archived, body) in rows {
                cursor = id;
                if archived != 0 && !include_archived {
                    continue;
                }
                let o: pb::Offer = decode("offer", &body)?;
                if tags.iter().all(|t| o.tags.contains(t)) {
                    out.push(o);
                    if out.len() as i64 >= limit {
                        return Ok(out);
                    }
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    async fn save_offer(&self, tx: &mut Tx, o: &pb::Offer, previous: Option<i64>) -> Result<(), Error> {
        let at = o.updated_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_else(now_millis);
        let body = o.encode_to_vec();
        match previous {
            None => {
                Exec::Tx(tx)
                    .run(
                        "INSERT INTO offers (offer_id, version, archived, body, updated_at) VALUES ($1, $2, $3, $4, $5)",
                        &[(&o.offer_id).into(), o.version.into(), o.archived.into(), body.clone().into(), at.into()],
                    )
                    .await?;
            }
            Some(v) => {
                let changed = Exec::Tx(tx)
                    .run(
                        "UPDATE offers SET version = $1, archived = $2, body = $3, updated_at = $4 \
                         WHERE offer_id = $5 AND version = $6",
                        &[
                            o.version.into(),
                            o.archived.into(),
                            body.clone().into(),
                            at.into(),
                            (&o.offer_id).into(),
                            v.into(),
                        ],
                    )
                    .await?;
                if changed == 0 {
                    return Err(Error::new(
                        ErrorCode::Aborted,
                        format!("offer {} was changed concurrently; read it again and retry", o.offer_id),
                    ));
                }
            }
        }
        Exec::Tx(tx)
            .run(
                "INSERT INTO offer_versions (offer_id, version, body, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5)",
                &[(&o.offer_id).into(), o.version.into(), body.into(), at.into(), (&o.updated_by).into()],
            )
            .await?;
        Outbox::append(tx, &[offer_changed(o)]).await?;
        Ok(())
    }

    /// Creates an offer (already validated) saved by `who`.
    pub async fn create_offer(&self, mut o: pb::Offer, who: &str) -> Result<pb::Offer, Error> {
        o.offer_id = format!("off_{}", uuid::Uuid::now_v7().simple());
        o.version = 1;
        o.archived = false;
        o.updated_at = Some(timestamp(now_millis()));
        o.updated_by = who.to_string();
        let mut tx = self.db.begin().await?;
        self.save_offer(&mut tx, &o, None).await?;
        self.outbox.commit(tx).await?;
        self.reload().await?;
        Ok(o)
    }

    /// Saves `next` as the new version of an offer whose stored version is `current.version`.
    pub async fn update_offer(&self, current: &pb::Offer, mut next: pb::Offer, who: &str) -> Result<pb::Offer, Error> {
        next.offer_id = current.offer_id.clone();
        next.version = current.version + 1;
        next.updated_at = Some(timestamp(now_millis()));
        next.updated_by = who.to_string();
        let mut tx = self.db.begin().await?;
        self.save_offer(&mut tx, &next, Some(current.version)).await?;
        self.outbox.commit(tx).await?;
        self.reload().await?;
        Ok(next)
    }

    // ---- placements and policies ----

    /// Saves a placement's arbitration.
    pub async fn put_placement(&self, p: &pb::Placement) -> Result<(), Error> {
        Exec::Db(&self.db)
            .run(
                "INSERT INTO placements (kind, body) VALUES ($1, $2) ON CONFLICT (kind) DO UPDATE SET body = excluded.body",
                &[p.kind.into(), p.encode_to_vec().into()],
            )
            .await?;
        self.reload().await
    }

    /// Saves a contact policy.
    pub async fn put_policy(&self, p: &pb::ContactPolicy) -> Result<(), Error> {
        Exec::Db(&self.db)
            .run(
                "INSERT INTO contact_policies (policy_id, body) VALUES ($1, $2) \
                 ON CONFLICT (policy_id) DO UPDATE SET body = excluded.body",
                &[(&p.policy_id).into(), p.encode_to_vec().into()],
            )
            .await?;
        self.reload().await
    }

    // ---- the decision log ----

    /// A logged decision with its customer, campaign, holdout flag and bandit segment.
    pub async fn decision(&self, exec: &mut Exec<'_>, decision_id: &str) -> Result<Option<StoredDecision>, Error> {
        let rows: Vec<(String, String, i64, String, Vec<u8>, i64)> = exec
            .all(
                "SELECT customer_id, campaign_id, holdout, segment, body, decided_at FROM decisions WHERE decision_id = $1",
                &[decision_id.into()],
            )
            .await?;
        let Some((customer_id, campaign_id, holdout, segment, body, decided_at)) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut decision: pb::Decision = decode("decision", &body)?;
        decision.customer_id = customer_id;
        Ok(Some(StoredDecision { decision, campaign_id, holdout: holdout != 0, segment, decided_at }))
    }

    /// The decisions of `customer_id`, newest first, before the position `before` ((decided_at, id)).
    pub async fn decisions_of(
        &self,
        customer_id: &str,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<pb::Decision>, Error> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let rows: Vec<(String, Vec<u8>)> = Exec::Db(&self.db)
            .all(
                "SELECT customer_id, body FROM decisions WHERE customer_id = $1 AND \
                 (decided_at < $2 OR (decided_at = $2 AND decision_id < $3)) \
                 ORDER BY decided_at DESC, decision_id DESC LIMIT $4",
                &[customer_id.into(), at.into(), id.into(), limit.into()],
            )
            .await?;
        rows.into_iter()
            .map(|(c, b)| {
                let mut d: pb::Decision = decode("decision", &b)?;
                d.customer_id = c;
                Ok(d)
            })
            .collect()
    }

    /// Marks a decision as sent (delivery accepted or sent it).
    pub async fn mark_sent(&self, exec: &mut Exec<'_>, decision_id: &str) -> Result<(), Error> {
        exec.run("UPDATE decisions SET sent = 1 WHERE decision_id = $1", &[decision_id.into()]).await?;
        Ok(())
    }
}

/// A decision read back from the log.
#[derive(Debug, Clone)]
pub struct StoredDecision {
    pub decision: pb::Decision,
    pub campaign_id: String,
    pub holdout: bool,
    pub segment: String,
    pub decided_at: i64,
}

/// Builds `V` binds for an `IN (...)` list starting at placeholder `$from`.
pub fn in_list(values: &[String], from: usize) -> (String, Vec<V>) {
    let marks: Vec<String> = (0..values.len()).map(|i| format!("${}", from + i)).collect();
    (marks.join(", "), values.iter().map(V::from).collect())
}
