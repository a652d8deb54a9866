//! The consent store: the append-only ledger, suppressions, tokens and the identity feed, over one
//! service database. Every write commits with its outbox events.

use std::sync::Arc;

use prost::{Message, Name};
use rapport_errors::{Error, ErrorCode};
use rapport_proto::common::v1 as common;
use rapport_proto::consent::v1 as pb;
use rapport_rpc::Clients;
use rapport_rpc::convert::{millis, timestamp};
use rapport_storage::{Db, Outbox, OutboxMessage, Tx, now_millis};
use sha2::{Digest, Sha256};

use crate::ledger::{self, Outcome, Stored};
use crate::settings::ConsentSettings;
use crate::sql::{Exec, V};
use crate::tokens::{Claims, Signer, TokenError};

/// A normalised contact point: type number and value. Type 0 and "" mean customer-wide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Cp {
    pub t: i32,
    pub v: String,
}

impl Cp {
    /// The wire form; `None` for customer-wide.
    pub fn wire(&self) -> Option<common::Identifier> {
        (self.t != 0).then(|| common::Identifier { r#type: self.t, value: self.v.clone(), namespace: String::new() })
    }

    /// The hash kept for an erased person's suppressions.
    pub fn hash(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(format!("{}:{}", self.t, self.v))))
    }
}

/// A validated entry to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub customer_id: String,
    pub cp: Cp,
    pub channel: i32,
    pub purpose: String,
    pub status: pb::ConsentStatus,
    pub legal_basis: i32,
    pub provenance: common::Provenance,
    pub proof: pb::Proof,
    pub occurred_at: i64,
    pub expires_at: Option<i64>,
    pub region: String,
    pub token_id: String,
    pub idempotency_key: String,
}

/// What `append` stored.
#[derive(Debug, Clone)]
pub struct Appended {
    pub entry: pb::ConsentEntry,
    pub in_force: bool,
}

/// The service's state and its dependencies.
pub struct Store {
    pub db: Db,
    pub outbox: Outbox,
    pub settings: Arc<ConsentSettings>,
    pub clients: Clients,
    pub signer: Signer,
    /// The public base URL of the HTTP port, without a trailing slash.
    pub base_url: String,
    /// Cached ledger reads for Check.
    pub checks: crate::check_cache::CheckCache,
    /// Cached alias resolutions, on the same version as `checks`.
    pub aliases: crate::check_cache::AliasCache,
}

/// Topics of the consent feed.
pub const TOPIC_RECORDED: &str = "consent.recorded";
pub const TOPIC_SUPPRESSION_ADDED: &str = "consent.suppression_added";
pub const TOPIC_SUPPRESSION_REMOVED: &str = "consent.suppression_removed";
pub const TOPIC_STATE_RECOMPUTED: &str = "consent.state_recomputed";
pub const TOPIC_TOKEN_USED: &str = "consent.token_used";
pub const TOPIC_ERASED: &str = "consent.erased";

fn event<M: Message + Name>(topic: &str, key: &str, m: &M) -> OutboxMessage {
    OutboxMessage::new(topic, key, M::full_name(), m.encode_to_vec())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

fn decode_entries(rows: Vec<(i64, Vec<u8>)>) -> Result<Vec<Stored>, Error> {
    rows.into_iter()
        .map(|(seq, body)| {
            pb::ConsentEntry::decode(body.as_slice()).map(|e| Stored::new(seq, e)).map_err(Error::internal)
        })
        .collect()
}

fn decode_suppressions(rows: Vec<(i64, Vec<u8>)>) -> Result<Vec<pb::Suppression>, Error> {
    rows.into_iter().map(|(_, body)| pb::Suppression::decode(body.as_slice()).map_err(Error::internal)).collect()
}

const ENTRY_COLUMNS: &str = "SELECT seq, body FROM consent_entries";

/// The people an evaluation is about: a customer with its merged-away ids, and a contact point.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The current customer id ("" if none).
    pub customer: String,
    /// The customer and its aliases.
    pub lineage: Vec<String>,
    /// When the latest merge into the customer happened.
    pub merged_at: Option<i64>,
    /// The contact point, if the question is about one.
    pub cp: Option<Cp>,
}

/// What the ledger holds for one question (a scope, a channel and a purpose).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Whether the person was erased.
    pub erased: bool,
    /// The scope's entries of the channel and purpose.
    pub entries: Vec<Stored>,
    /// The contact point's active suppressions on the channel, newest first.
    pub suppressions: Vec<pb::Suppression>,
}

impl Loaded {
    /// The answer at `at`: pure, so a cached read answers for any instant.
    pub fn decide(&self, settings: &ConsentSettings, scope: &Scope, purpose: &str, at: i64, region: &str) -> Outcome {
        if self.erased {
            return Outcome {
                allowed: false,
                reason: pb::CheckReason::Erased,
                explanation: "the person was erased".into(),
                entry: None,
                suppression: None,
                region: region.to_string(),
            };
        }
        let refs: Vec<&Stored> = self.entries.iter().collect();
        let winner = ledger::in_force(&refs, at, scope.merged_at, settings.merge());
        let suppression = self.suppressions.iter().find(|s| {
            millis_of(&s.created_at).is_none_or(|c| c <= at) && millis_of(&s.expires_at).is_none_or(|e| e > at)
        });
        let region = if region.is_empty() {
            self.entries
                .iter()
                .filter(|e| !e.entry.region.is_empty() && e.occurred <= at)
                .max_by_key(|e| (e.occurred, e.seq))
                .map(|e| e.entry.region.clone())
                .unwrap_or_default()
        } else {
            region.to_string()
        };
        ledger::decide(settings, purpose, winner, suppression, &region, at)
    }
}

fn millis_of(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().and_then(millis)
}

impl Store {
    /// The current id of `customer_id` (itself, or the survivor it was merged into).
    /// Outside a transaction the answer is kept in the Check cache's memo of aliases, which merges and
    /// splits invalidate with the ledger's version.
    pub async fn canonical(&self, exec: &mut Exec<'_>, customer_id: &str) -> Result<String, Error> {
        let version = match exec {
            Exec::Db(_) => self.aliases.version().await,
            Exec::Tx(_) => None,
        };
        if let Some(kept) = version.and_then(|v| self.aliases.get(&customer_id.to_string(), v)) {
            return Ok(kept.1.clone());
        }
        let row: Vec<(String,)> =
            exec.all("SELECT customer_id FROM consent_aliases WHERE alias_id = $1", &[customer_id.into()]).await?;
        let canonical = row.into_iter().next().map(|r| r.0).unwrap_or_else(|| customer_id.to_string());
        if let Some(v) = version {
            self.aliases.put(customer_id.to_string(), v, canonical.clone());
        }
        Ok(canonical)
    }

    /// The evaluation scope of `customer` (canonical) and `cp`.
    pub async fn scope(&self, exec: &mut Exec<'_>, customer: &str, cp: Option<Cp>) -> Result<Scope, Error> {
        let mut scope = Scope { customer: customer.to_string(), cp, ..Default::default() };
        if !customer.is_empty() {
            let aliases: Vec<(String, i64)> = exec
                .all("SELECT alias_id, merged_at FROM consent_aliases WHERE customer_id = $1", &[customer.into()])
                .await?;
            scope.merged_at = aliases.iter().map(|a| a.1).max();
            scope.lineage.push(customer.to_string());
            scope.lineage.extend(aliases.into_iter().map(|a| a.0));
        }
        Ok(scope)
    }

    /// Whether any of `ids` was erased.
    pub async fn erased(&self, exec: &mut Exec<'_>, ids: &[String]) -> Result<bool, Error> {
        for id in ids {
            let hit: Vec<(String,)> =
                exec.all("SELECT customer_id FROM consent_erased WHERE customer_id = $1", &[id.into()]).await?;
            if !hit.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every entry of the scope (optionally of one channel and purpose): the lineage's entries (of every
    /// contact point, when the scope has none; else customer-wide only) and the contact point's own.
    pub async fn entries(
        &self,
        exec: &mut Exec<'_>,
        scope: &Scope,
        key: Option<(i32, &str)>,
    ) -> Result<Vec<Stored>, Error> {
        let filter = |base: &str| match key {
            Some(_) => format!("{ENTRY_COLUMNS} WHERE {base} AND channel = $3 AND purpose = $4"),
            None => format!("{ENTRY_COLUMNS} WHERE {base}"),
        };
        let key_binds: Vec<V> = key.map(|(c, p)| vec![c.into(), p.into()]).unwrap_or_default();
        let mut out = Vec::new();
        for id in &scope.lineage {
            let mut binds = vec![V::from(id), V::I(0)];
            binds.extend(key_binds.iter().cloned());
            let sql = match scope.cp {
                Some(_) => filter("recorded_customer_id = $1 AND cp_type = $2"),
                None => filter("recorded_customer_id = $1 AND cp_type >= $2"),
            };
            out.extend(decode_entries(exec.all(&sql, &binds).await?)?);
        }
        if let Some(cp) = &scope.cp {
            let mut binds = vec![V::from(&cp.v), V::I(i64::from(cp.t))];
            binds.extend(key_binds.iter().cloned());
            out.extend(decode_entries(exec.all(&filter("cp_value = $1 AND cp_type = $2"), &binds).await?)?);
        }
        out.sort_by_key(|e| e.seq);
        out.dedup_by_key(|e| e.seq);
        for e in &mut out {
            if scope.lineage.contains(&e.lineage) {
                e.entry.customer_id = scope.customer.clone();
            }
        }
        Ok(out)
    }

    /// Every active suppression of `cp` on `channel` (or on every channel), newest first, whatever its
    /// time window: [`Loaded::decide`] picks the one in force at the instant asked.
    pub async fn suppressions_of(
        &self,
        exec: &mut Exec<'_>,
        cp: &Cp,
        channel: i32,
    ) -> Result<Vec<pb::Suppression>, Error> {
        let rows: Vec<(i64, Vec<u8>)> = exec
            .all(
                "SELECT seq, body FROM consent_suppressions WHERE cp_type = $1 AND (cp_value = $2 OR cp_value = $3)
                 AND removed_at IS NULL AND (channel = 0 OR channel = $4) ORDER BY seq DESC",
                &[cp.t.into(), (&cp.v).into(), cp.hash().into(), channel.into()],
            )
            .await?;
        decode_suppressions(rows)
    }

    /// What the ledger holds for `scope` on `channel` and `purpose`: what Check decides on.
    pub async fn load(&self, exec: &mut Exec<'_>, scope: &Scope, channel: i32, purpose: &str) -> Result<Loaded, Error> {
        if self.erased(exec, &scope.lineage).await? {
            return Ok(Loaded { erased: true, entries: Vec::new(), suppressions: Vec::new() });
        }
        let entries = self.entries(exec, scope, Some((channel, purpose))).await?;
        let suppressions = match &scope.cp {
            Some(cp) => self.suppressions_of(exec, cp, channel).await?,
            None => Vec::new(),
        };
        Ok(Loaded { erased: false, entries, suppressions })
    }

    /// What Check answers for `scope` on `channel` and `purpose` at `at`.
    pub async fn evaluate(
        &self,
        exec: &mut Exec<'_>,
        scope: &Scope,
        channel: i32,
        purpose: &str,
        at: i64,
        region: &str,
    ) -> Result<Outcome, Error> {
        let loaded = self.load(exec, scope, channel, purpose).await?;
        Ok(loaded.decide(&self.settings, scope, purpose, at, region))
    }

    /// Commits a change to the ledger with its outbox events, then moves the Check cache's version.
    pub async fn commit(&self, tx: Tx) -> Result<(), Error> {
        self.outbox.commit(tx).await?;
        self.checks.changed().await;
        Ok(())
    }

    /// Appends `entries` inside `tx` (idempotent by caller and key) and queues their events.
    pub async fn append(
        &self,
        tx: &mut Tx,
        caller: &str,
        entries: Vec<NewEntry>,
        messages: &mut Vec<OutboxMessage>,
    ) -> Result<Vec<Appended>, Error> {
        let now = now_millis();
        let mut out = Vec::with_capacity(entries.len());
        for n in entries {
            let mut exec = Exec::Tx(&mut *tx);
            if !n.idempotency_key.is_empty() {
                let found: Vec<(i64, Vec<u8>)> = exec
                    .all(
                        "SELECT seq, body FROM consent_entries WHERE recorded_by = $1 AND idempotency_key = $2",
                        &[caller.into(), (&n.idempotency_key).into()],
                    )
                    .await?;
                if let Some(existing) = decode_entries(found)?.into_iter().next() {
                    let scope =
                        self.scope(&mut exec, &existing.entry.customer_id.clone(), cp_of(&existing.entry)).await?;
                    let all = self
                        .entries(
                            &mut exec,
                            &scope,
                            Some((existing.entry.channel, &existing.entry.purpose.clone().unwrap_or_default().name)),
                        )
                        .await?;
                    let refs: Vec<&Stored> = all.iter().collect();
                    let in_force = ledger::in_force(&refs, i64::MAX, scope.merged_at, self.settings.merge())
                        .is_some_and(|w| w.seq == existing.seq);
                    out.push(Appended { entry: existing.entry, in_force });
                    continue;
                }
            }
            let entry = pb::ConsentEntry {
                entry_id: new_id("cse"),
                customer_id: n.customer_id.clone(),
                contact_point: n.cp.wire(),
                channel: n.channel,
                purpose: Some(common::Purpose { name: n.purpose.clone() }),
                status: n.status as i32,
                legal_basis: n.legal_basis,
                provenance: Some(n.provenance.clone()),
                proof: Some(n.proof.clone()),
                occurred_at: Some(timestamp(n.occurred_at)),
                recorded_at: Some(timestamp(now)),
                expires_at: n.expires_at.map(timestamp),
                region: n.region.clone(),
                recorded_customer_id: n.customer_id.clone(),
                recorded_by: caller.to_string(),
                token_id: n.token_id.clone(),
                idempotency_key: n.idempotency_key.clone(),
            };
            let inserted = exec
                .run(
                    "INSERT INTO consent_entries (entry_id, recorded_customer_id, cp_type, cp_value, channel, purpose,
                     status, occurred_at, recorded_at, recorded_by, idempotency_key, body)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
                    &[
                        (&entry.entry_id).into(),
                        (&n.customer_id).into(),
                        n.cp.t.into(),
                        (&n.cp.v).into(),
                        n.channel.into(),
                        (&n.purpose).into(),
                        entry.status.into(),
                        n.occurred_at.into(),
                        now.into(),
                        caller.into(),
                        (&n.idempotency_key).into(),
                        V::B(entry.encode_to_vec()),
                    ],
                )
                .await?;
            if inserted == 0 {
                return Err(Error::new(ErrorCode::Aborted, "idempotency_key: a concurrent write used it; retry"));
            }
            let seq: Vec<(i64,)> =
                exec.all("SELECT seq FROM consent_entries WHERE entry_id = $1", &[(&entry.entry_id).into()]).await?;
            let seq = seq.first().map(|s| s.0).unwrap_or_default();
            let scope = self.scope(&mut exec, &n.customer_id, (n.cp.t != 0).then(|| n.cp.clone())).await?;
            let all = self.entries(&mut exec, &scope, Some((n.channel, &n.purpose))).await?;
            let refs: Vec<&Stored> = all.iter().collect();
            let policy = self.settings.merge();
            let winner = ledger::in_force(&refs, i64::MAX, scope.merged_at, policy);
            let in_force = winner.is_some_and(|w| w.seq == seq);
            let others: Vec<&Stored> = refs.iter().copied().filter(|e| e.seq != seq).collect();
            let before = ledger::in_force(&others, i64::MAX, scope.merged_at, policy);
            let changed_state = in_force && before.is_none_or(|b| b.status != entry.status);
            let allowed = ledger::decide(&self.settings, &n.purpose, winner, None, &n.region, now).allowed;
            let key = if n.customer_id.is_empty() { n.cp.v.clone() } else { n.customer_id.clone() };
            messages.push(event(
                TOPIC_RECORDED,
                &key,
                &pb::ConsentRecorded { entry: Some(entry.clone()), changed_state, allowed },
            ));
            out.push(Appended { entry, in_force });
        }
        Ok(out)
    }

    /// Appends `entries` in a transaction of their own.
    pub async fn record(&self, caller: &str, entries: Vec<NewEntry>) -> Result<Vec<Appended>, Error> {
        let mut tx = self.db.begin().await?;
        let mut messages = Vec::new();
        let out = self.append(&mut tx, caller, entries, &mut messages).await?;
        Outbox::append(&mut tx, &messages).await?;
        self.commit(tx).await?;
        Ok(out)
    }

    /// Adds a suppression (or returns the active one with the same contact point, channel and reason).
    #[allow(clippy::too_many_arguments)]
    pub async fn add_suppression(
        &self,
        tx: &mut Tx,
        cp: &Cp,
        channel: i32,
        reason: pb::SuppressionReason,
        provenance: common::Provenance,
        note: String,
        expires_at: Option<i64>,
        customer_id: &str,
        messages: &mut Vec<OutboxMessage>,
    ) -> Result<(pb::Suppression, bool), Error> {
        let now = now_millis();
        let mut exec = Exec::Tx(&mut *tx);
        let rows: Vec<(i64, Vec<u8>)> = exec
            .all(
                "SELECT seq, body FROM consent_suppressions WHERE cp_type = $1 AND cp_value = $2 AND channel = $3
                 AND reason = $4 AND removed_at IS NULL AND (expires_at IS NULL OR expires_at > $5) ORDER BY seq DESC",
                &[cp.t.into(), (&cp.v).into(), channel.into(), (reason as i32).into(), now.into()],
            )
            .await?;
        if let Some(existing) = decode_suppressions(rows)?.into_iter().next() {
            return Ok((existing, false));
        }
        let s = pb::Suppression {
            suppression_id: new_id("sup"),
            contact_point: cp.wire(),
            channel,
            reason: reason as i32,
            provenance: Some(provenance),
            note,
            created_at: Some(timestamp(now)),
            expires_at: expires_at.map(timestamp),
            removed_at: None,
            removed_by: String::new(),
            removal_reason: String::new(),
            customer_id: customer_id.to_string(),
        };
        exec.run(
            "INSERT INTO consent_suppressions (suppression_id, cp_type, cp_value, channel, reason, customer_id,
             created_at, expires_at, removed_at, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)",
            &[
                (&s.suppression_id).into(),
                cp.t.into(),
                (&cp.v).into(),
                channel.into(),
                (reason as i32).into(),
                customer_id.into(),
                now.into(),
                expires_at.into(),
                V::B(s.encode_to_vec()),
            ],
        )
        .await?;
        let key = if customer_id.is_empty() { cp.v.clone() } else { customer_id.to_string() };
        messages.push(event(TOPIC_SUPPRESSION_ADDED, &key, &pb::SuppressionAdded { suppression: Some(s.clone()) }));
        Ok((s, true))
    }

    /// Lifts the suppression `id`; `None` if there is none (or it is already lifted: then the stored one).
    pub async fn remove_suppression(
        &self,
        tx: &mut Tx,
        id: &str,
        by: &str,
        why: &str,
        messages: &mut Vec<OutboxMessage>,
    ) -> Result<Option<pb::Suppression>, Error> {
        let mut exec = Exec::Tx(&mut *tx);
        let rows: Vec<(i64, Vec<u8>)> =
            exec.all("SELECT seq, body FROM consent_suppressions WHERE suppression_id = $1", &[id.into()]).await?;
        let Some(mut s) = decode_suppressions(rows)?.into_iter().next() else { return Ok(None) };
        if s.removed_at.is_some() {
            return Ok(Some(s));
        }
        let now = now_millis();
        s.removed_at = Some(timestamp(now));
        s.removed_by = by.to_string();
        s.removal_reason = why.to_string();
        exec.run(
            "UPDATE consent_suppressions SET removed_at = $1, body = $2 WHERE suppression_id = $3",
            &[now.into(), V::B(s.encode_to_vec()), id.into()],
        )
        .await?;
        let key = if s.customer_id.is_empty() {
            s.contact_point.as_ref().map(|c| c.value.clone()).unwrap_or_default()
        } else {
            s.customer_id.clone()
        };
        messages.push(event(TOPIC_SUPPRESSION_REMOVED, &key, &pb::SuppressionRemoved { suppression: Some(s.clone()) }));
        Ok(Some(s))
    }

    /// Suppressions, newest first, filtered.
    pub async fn list_suppressions(
        &self,
        cp: Option<&Cp>,
        channel: i32,
        reasons: &[i32],
        include_inactive: bool,
    ) -> Result<Vec<pb::Suppression>, Error> {
        let mut exec = Exec::Db(&self.db);
        let rows: Vec<(i64, Vec<u8>)> = match cp {
            Some(cp) => {
                exec.all(
                    "SELECT seq, body FROM consent_suppressions WHERE cp_type = $1 AND (cp_value = $2 OR cp_value = $3) ORDER BY seq DESC",
                    &[cp.t.into(), (&cp.v).into(), cp.hash().into()],
                )
                .await?
            }
            None => exec.all("SELECT seq, body FROM consent_suppressions ORDER BY seq DESC", &[]).await?,
        };
        let now = now_millis();
        Ok(decode_suppressions(rows)?
            .into_iter()
            .filter(|s| channel == 0 || s.channel == 0 || s.channel == channel)
            .filter(|s| reasons.is_empty() || reasons.contains(&s.reason))
            .filter(|s| {
                include_inactive
                    || (s.removed_at.is_none() && s.expires_at.as_ref().and_then(millis).is_none_or(|e| e > now))
            })
            .collect())
    }

    /// Spends the single-use token `claims.id` inside `tx`.
    pub async fn spend(&self, tx: &mut Tx, claims: &Claims) -> Result<(), Error> {
        let spent = Exec::Tx(&mut *tx)
            .run(
                "INSERT INTO consent_used_tokens (token_id, kind, used_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[(&claims.id).into(), (&claims.k).into(), now_millis().into()],
            )
            .await?;
        if spent == 0 {
            return Err(TokenError::Used.to_error());
        }
        Ok(())
    }

    /// Whether the token was spent.
    pub async fn is_spent(&self, token_id: &str) -> Result<bool, Error> {
        let rows: Vec<(String,)> = Exec::Db(&self.db)
            .all("SELECT token_id FROM consent_used_tokens WHERE token_id = $1", &[token_id.into()])
            .await?;
        Ok(!rows.is_empty())
    }

    /// The claims of a valid, unexpired, unspent token of `kind`.
    pub async fn open_token(&self, token: &str, kind: &str) -> Result<Claims, Error> {
        let claims = self.signer.verify(token, kind).map_err(|e| e.to_error())?;
        if claims.exp <= now_millis() {
            return Err(TokenError::Expired.to_error());
        }
        if self.is_spent(&claims.id).await? {
            return Err(TokenError::Used.to_error());
        }
        Ok(claims)
    }

    /// Erases everything held under `ids` inside `tx`: entries deleted, suppressions keep only a hash of
    /// the contact point, tombstones written. Returns how many records went.
    pub async fn erase_in(&self, tx: &mut Tx, ids: &[String], request_id: &str) -> Result<i64, Error> {
        let now = now_millis();
        let mut exec = Exec::Tx(&mut *tx);
        let mut erased = 0i64;
        let mut entries = 0i64;
        for id in ids {
            let n = exec.run("DELETE FROM consent_entries WHERE recorded_customer_id = $1", &[id.into()]).await? as i64;
            entries += n;
            let sups: Vec<(i64, Vec<u8>)> =
                exec.all("SELECT seq, body FROM consent_suppressions WHERE customer_id = $1", &[id.into()]).await?;
            for s in decode_suppressions(sups)? {
                let cp = s.contact_point.as_ref().map(|c| Cp { t: c.r#type, v: c.value.clone() }).unwrap_or_default();
                let mut kept = s.clone();
                kept.contact_point =
                    Some(common::Identifier { r#type: cp.t, value: cp.hash(), namespace: String::new() });
                kept.customer_id = String::new();
                kept.note = String::new();
                exec.run(
                    "UPDATE consent_suppressions SET cp_value = $1, customer_id = '', body = $2 WHERE suppression_id = $3",
                    &[cp.hash().into(), V::B(kept.encode_to_vec()), (&s.suppression_id).into()],
                )
                .await?;
                erased += 1;
            }
            exec.run("DELETE FROM consent_aliases WHERE alias_id = $1 OR customer_id = $1", &[id.into()]).await?;
            exec.run(
                "INSERT INTO consent_erased (customer_id, erased_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[id.into(), now.into()],
            )
            .await?;
        }
        let message = event(
            TOPIC_ERASED,
            ids.first().map(String::as_str).unwrap_or_default(),
            &pb::ConsentErased {
                customer_ids: ids.to_vec(),
                request_id: request_id.to_string(),
                erased_at: Some(timestamp(now)),
                entries_erased: entries,
            },
        );
        rapport_storage::Outbox::append(tx, &[message]).await?;
        Ok(erased + entries)
    }

    /// Applies identity's merge of `merged` into `survivor`.
    pub async fn apply_merge(
        &self,
        tx: &mut Tx,
        e: &rapport_proto::identity::v1::CustomersMerged,
    ) -> Result<(), Error> {
        let now = now_millis();
        let mut exec = Exec::Tx(&mut *tx);
        if e.merged_customer_id.is_empty() || e.survivor_customer_id.is_empty() {
            return Ok(());
        }
        exec.run(
            "INSERT INTO consent_aliases (alias_id, customer_id, merge_id, merged_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (alias_id) DO UPDATE SET customer_id = excluded.customer_id, merge_id = excluded.merge_id,
             merged_at = excluded.merged_at",
            &[(&e.merged_customer_id).into(), (&e.survivor_customer_id).into(), (&e.merge_id).into(), now.into()],
        )
        .await?;
        exec.run(
            "UPDATE consent_aliases SET customer_id = $1, merged_at = $2 WHERE customer_id = $3",
            &[(&e.survivor_customer_id).into(), now.into(), (&e.merged_customer_id).into()],
        )
        .await?;
        let message = event(
            TOPIC_STATE_RECOMPUTED,
            &e.survivor_customer_id,
            &pb::ConsentStateRecomputed {
                customer_ids: vec![e.survivor_customer_id.clone(), e.merged_customer_id.clone()],
                identity_change_id: e.merge_id.clone(),
                policy: self.settings.merge_policy.clone(),
            },
        );
        Outbox::append(tx, &[message]).await?;
        Ok(())
    }

    /// Applies identity's split: an undone merge gives the split-off customer its entries back.
    pub async fn apply_split(&self, tx: &mut Tx, e: &rapport_proto::identity::v1::CustomerSplit) -> Result<(), Error> {
        let mut exec = Exec::Tx(&mut *tx);
        if e.split_customer_id.is_empty() {
            return Ok(());
        }
        exec.run("DELETE FROM consent_aliases WHERE alias_id = $1", &[(&e.split_customer_id).into()]).await?;
        for alias in &e.aliases {
            exec.run(
                "UPDATE consent_aliases SET customer_id = $1 WHERE alias_id = $2",
                &[(&e.split_customer_id).into(), alias.into()],
            )
            .await?;
        }
        let message = event(
            TOPIC_STATE_RECOMPUTED,
            &e.customer_id,
            &pb::ConsentStateRecomputed {
                customer_ids: vec![e.customer_id.clone(), e.split_customer_id.clone()],
                identity_change_id: e.split_id.clone(),
                policy: self.settings.merge_policy.clone(),
            },
        );
        Outbox::append(tx, &[message]).await?;
        Ok(())
    }
}

/// The contact point of a stored entry.
pub fn cp_of(e: &pb::ConsentEntry) -> Option<Cp> {
    e.contact_point.as_ref().map(|c| Cp { t: c.r#type, v: c.value.clone() })
}
