//! The profile store: the event timeline (idempotent by message id), traits (newest by event time wins,
//! with optional source priority), computed traits kept up to date on every event, and the merges and
//! splits identity decides, each applied in one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use rapport_errors::Error;
use rapport_storage::sqlx::{self, Row};
use rapport_storage::{Db, Outbox, OutboxMessage, Tx, now_millis, on_db, on_tx};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::computed::{Computed, ComputedSettings, EventView};
use crate::segments::Segments;

/// The name of the timeline event an `Identify` call appends; replaying it rebuilds traits.
pub const IDENTIFY_EVENT: &str = "identify";

/// An event to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub message_id: String,
    pub name: String,
    pub occurred_at: i64,
    pub properties: Value,
    pub context: Value,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub customer_id: String,
    pub message_id: String,
    pub name: String,
    pub occurred_at: i64,
    pub received_at: i64,
    pub properties: Value,
    pub context: Value,
}

/// When and from where a trait value came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraitMeta {
    pub at: i64,
    #[serde(default)]
    pub source: String,
}

/// A profile as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub customer_id: String,
    pub traits: Map<String, Value>,
    pub trait_meta: BTreeMap<String, TraitMeta>,
    pub computed: Computed,
    pub segments: Vec<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Profile {
    fn empty(customer_id: &str, now: i64) -> Self {
        Self {
            customer_id: customer_id.to_string(),
            traits: Map::new(),
            trait_meta: BTreeMap::new(),
            computed: Computed::default(),
            segments: Vec::new(),
            version: 0,
            created_at: now,
            updated_at: now,
        }
    }

    /// Applies one event: computed traits, and traits for `identify` events. Returns the names of traits
    /// that changed.
    pub fn apply(&mut self, e: &NewEvent, source: &str, settings: &StoreSettings) -> Vec<String> {
        let channel = e.context.get("channel").and_then(Value::as_str).unwrap_or_default();
        self.computed.apply(
            &EventView { name: &e.name, occurred_at: e.occurred_at, properties: &e.properties, channel },
            &settings.computed,
        );
        if e.name == IDENTIFY_EVENT
            && let Some(traits) = e.properties.as_object()
        {
            return self.set_traits(traits, e.occurred_at, source, settings);
        }
        Vec::new()
    }

    /// Sets traits whose value is newer (or from a higher-priority source) than the stored one.
    pub fn set_traits(
        &mut self,
        traits: &Map<String, Value>,
        at: i64,
        source: &str,
        settings: &StoreSettings,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, value) in traits {
            let wins = match self.trait_meta.get(name) {
                None => true,
                Some(old) => settings.rank(source, at) >= settings.rank(&old.source, old.at),
            };
            if wins {
                if self.traits.get(name) != Some(value) {
                    changed.push(name.clone());
                }
                self.traits.insert(name.clone(), value.clone());
                self.trait_meta.insert(name.clone(), TraitMeta { at, source: source.to_string() });
            }
        }
        changed
    }

    /// Folds `other` (a customer identity merged into this one) into this profile.
    pub fn absorb(&mut self, other: &Profile, settings: &StoreSettings) {
        for (name, value) in &other.traits {
            let meta = other.trait_meta.get(name).cloned().unwrap_or(TraitMeta { at: 0, source: String::new() });
            let one = Map::from_iter([(name.clone(), value.clone())]);
            self.set_traits(&one, meta.at, &meta.source, settings);
        }
        self.computed.absorb(&other.computed, &settings.computed);
        self.created_at = self.created_at.min(other.created_at);
    }
}

/// The first key of the advisory locks on profiles ("prof" in ASCII).
const PROFILE_LOCK_SPACE: i32 = 0x7072_6f66;

/// The `[profile]` configuration section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// How computed traits are derived.
    pub computed: ComputedSettings,
    /// Sources whose trait values win over others regardless of time, most trusted first.
    pub trait_source_priority: Vec<String>,
    /// Days to keep events, by event name; names not listed are kept forever.
    pub retention_days: BTreeMap<String, u32>,
    /// The largest event (properties and context as JSON) accepted, in bytes.
    pub max_event_bytes: Option<usize>,
    /// The share of customers (by estimated lifetime value) flagged high-value, e.g. 0.1 for the top 10%.
    pub high_value_top_share: Option<f64>,
    /// Seconds between passes that re-evaluate time-based segments and the high-value threshold.
    pub evaluation_interval_seconds: Option<u64>,
}

impl StoreSettings {
    /// Sort key of a trait value: listed sources outrank unlisted ones; then the newer value wins.
    fn rank(&self, source: &str, at: i64) -> (usize, i64) {
        let n = self.trait_source_priority.len();
        let p = self.trait_source_priority.iter().position(|s| s == source).map_or(0, |i| n - i);
        (p, at)
    }

    /// The event size limit (32 KiB by default).
    pub fn event_limit(&self) -> usize {
        self.max_event_bytes.unwrap_or(32 * 1024)
    }
}

/// What storing a batch did for one customer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Appended {
    /// Per input event: `Some(seq)` when stored, `None` when its message id was stored before.
    pub stored: Vec<Option<i64>>,
    pub changed_traits: Vec<String>,
    pub profile: Option<Profile>,
}

/// Encodes the outbox payloads of profile changes (the gRPC layer supplies protobuf).
pub trait ProfileEvents: Send + Sync {
    fn appended(&self, customer_id: &str, events: &[(i64, &NewEvent)]) -> Vec<OutboxMessage>;
    fn traits_changed(&self, profile: &Profile, names: &[String]) -> Vec<OutboxMessage>;
    fn merged(&self, survivor: &str, merged: &str) -> Vec<OutboxMessage>;
    /// Segments entered and exited, as (segment id, name).
    fn segments_changed(
        &self,
        customer_id: &str,
        entered: &[(String, String)],
        exited: &[(String, String)],
    ) -> Vec<OutboxMessage>;
}

/// The profile store over one service database.
#[derive(Clone)]
pub struct Store {
    db: Db,
    outbox: Outbox,
    settings: Arc<StoreSettings>,
    events: Arc<dyn ProfileEvents>,
    segments: Arc<Segments>,
    high_value_threshold: Arc<std::sync::atomic::AtomicI64>,
}

fn to_json(v: &impl Serialize) -> Result<String, Error> {
    serde_json::to_string(v).map_err(Error::internal)
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, Error> {
    serde_json::from_str(s).map_err(Error::internal)
}

macro_rules! load_profile {
    ($exec:expr, $id:expr) => {{
        let row = sqlx::query(
            "SELECT customer_id, traits, trait_meta, computed, segments, version, created_at, updated_at
             FROM profiles WHERE customer_id = $1",
        )
        .bind($id)
        .fetch_optional($exec)
        .await?;
        match row {
            None => None,
            Some(r) => Some(Profile {
                customer_id: r.get(0),
                traits: from_json(&r.get::<String, _>(1))?,
                trait_meta: from_json(&r.get::<String, _>(2))?,
                computed: from_json(&r.get::<String, _>(3))?,
                segments: from_json(&r.get::<String, _>(4))?,
                version: r.get(5),
                created_at: r.get(6),
                updated_at: r.get(7),
            }),
        }
    }};
}

impl Store {
    /// The store in `db`, publishing to `outbox`.
    pub fn new(
        db: Db,
        outbox: Outbox,
        settings: Arc<StoreSettings>,
        events: Arc<dyn ProfileEvents>,
        segments: Arc<Segments>,
    ) -> Self {
        let high_value_threshold = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
        Self { db, outbox, settings, events, segments, high_value_threshold }
    }

    /// Whether a lifetime value is in the configured top share (as of the last threshold refresh).
    pub fn is_high_value(&self, lifetime_value_minor: i64) -> bool {
        lifetime_value_minor > 0
            && lifetime_value_minor >= self.high_value_threshold.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Recomputes the lifetime value above which a customer is in the top share. Returns the threshold.
    pub async fn refresh_high_value_threshold(&self) -> Result<i64, Error> {
        let share = self.settings.high_value_top_share.unwrap_or(0.1).clamp(0.0, 1.0);
        let now = now_millis();
        let mut values: Vec<i64> = Vec::new();
        let mut after = String::new();
        loop {
            let rows: Vec<(String, String)> = on_db!(&self.db, p => sqlx::query_as(
                "SELECT customer_id, computed FROM profiles WHERE customer_id > $1 ORDER BY customer_id LIMIT 1000",
            ).bind(&after).fetch_all(p).await?);
            let Some((last, _)) = rows.last().cloned() else { break };
            for (_, computed) in rows {
                let c: Computed = from_json(&computed)?;
                let ltv = c.derive(now, &self.settings.computed).lifetime_value_minor;
                if ltv > 0 {
                    values.push(ltv);
                }
            }
            after = last;
        }
        values.sort_unstable_by(|a, b| b.cmp(a));
        let threshold = if values.is_empty() || share == 0.0 {
            i64::MAX
        } else {
            let n = ((values.len() as f64 * share).ceil() as usize).clamp(1, values.len());
            values[n - 1]
        };
        self.high_value_threshold.store(threshold, std::sync::atomic::Ordering::Relaxed);
        Ok(threshold)
    }

    /// The segments.
    pub fn segments(&self) -> &Segments {
        &self.segments
    }

    /// Re-evaluates segments for `profile`, saves it and returns the outbox messages of the change.
    async fn save_evaluated(&self, tx: &mut Tx, profile: &mut Profile, now: i64) -> Result<Vec<OutboxMessage>, Error> {
        let (entered, exited) = self.segments.evaluate_in(tx, profile, now, &self.settings.computed).await?;
        self.save(tx, profile).await?;
        if entered.is_empty() && exited.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.events.segments_changed(&profile.customer_id, &entered, &exited))
    }

    /// Re-evaluates every profile's segments (for rules that depend on time and for new or changed
    /// segments), a page at a time. Returns how many profiles changed membership.
    pub async fn reevaluate_all(&self, page: i64) -> Result<u64, Error> {
        let mut after = String::new();
        let mut changed = 0;
        loop {
            let ids: Vec<String> = on_db!(&self.db, p => sqlx::query_scalar(
                "SELECT customer_id FROM profiles WHERE customer_id > $1 ORDER BY customer_id LIMIT $2",
            ).bind(&after).bind(page).fetch_all(p).await?);
            let Some(last) = ids.last().cloned() else { return Ok(changed) };
            for id in ids {
                let now = now_millis();
                let mut tx = self.db.begin().await?;
                self.lock_profiles(&mut tx, &[&id]).await?;
                let Some(mut profile) = on_tx!(&mut tx, t => load_profile!(&mut **t, &id)) else { continue };
                let before = profile.segments.clone();
                let (entered, exited) =
                    self.segments.evaluate_in(&mut tx, &mut profile, now, &self.settings.computed).await?;
                if profile.segments != before {
                    changed += 1;
                    self.save(&mut tx, &profile).await?;
                    let messages = self.events.segments_changed(&id, &entered, &exited);
                    Outbox::append(&mut tx, &messages).await?;
                    self.outbox.commit(tx).await?;
                }
            }
            after = last;
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The settings.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// The current id of `customer_id`: itself, or the survivor identity merged it into.
    pub async fn canonical(&self, customer_id: &str) -> Result<String, Error> {
        let survivor: Option<String> = on_db!(&self.db, p => sqlx::query_scalar("SELECT survivor FROM profile_aliases WHERE customer_id = $1")
            .bind(customer_id).fetch_optional(p).await?);
        Ok(survivor.unwrap_or_else(|| customer_id.to_string()))
    }

    /// The profile of `customer_id` (aliases followed), if it has one.
    pub async fn get(&self, customer_id: &str) -> Result<Option<Profile>, Error> {
        let id = self.canonical(customer_id).await?;
        Ok(on_db!(&self.db, p => load_profile!(p, &id)))
    }

    /// Stores `events` of one customer (already resolved) and updates the profile, in one transaction.
    pub async fn append(&self, customer_id: &str, events: &[NewEvent], source: &str) -> Result<Appended, Error> {
        let id = self.canonical(customer_id).await?;
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        self.lock_profiles(&mut tx, &[&id]).await?;
        let mut profile =
            on_tx!(&mut tx, t => load_profile!(&mut **t, &id)).unwrap_or_else(|| Profile::empty(&id, now));
        let mut out = Appended::default();
        let mut appended = Vec::new();
        for e in events {
            let seq: Option<i64> = on_tx!(&mut tx, t => sqlx::query_scalar(
                "INSERT INTO events (customer_id, message_id, origin_customer_id, name, occurred_at, received_at, properties, context)
                 VALUES ($1, $2, $1, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING RETURNING seq",
            )
            .bind(&id).bind(&e.message_id).bind(&e.name).bind(e.occurred_at).bind(now)
            .bind(to_json(&e.properties)?).bind(to_json(&e.context)?)
            .fetch_optional(&mut **t).await?);
            out.stored.push(seq);
            if let Some(seq) = seq {
                for name in profile.apply(e, source, &self.settings) {
                    if !out.changed_traits.contains(&name) {
                        out.changed_traits.push(name);
                    }
                }
                appended.push((seq, e));
            }
        }
        if appended.is_empty() {
            return Ok(Appended { profile: Some(profile), ..out });
        }
        profile.version += 1;
        profile.updated_at = now;
        let segment_messages = self.save_evaluated(&mut tx, &mut profile, now).await?;
        let mut messages = self.events.appended(&id, &appended);
        messages.extend(segment_messages);
        if !out.changed_traits.is_empty() {
            messages.extend(self.events.traits_changed(&profile, &out.changed_traits));
        }
        Outbox::append(&mut tx, &messages).await?;
        self.outbox.commit(tx).await?;
        out.profile = Some(profile);
        Ok(out)
    }

    async fn save(&self, tx: &mut Tx, p: &Profile) -> Result<(), Error> {
        on_tx!(tx, t => sqlx::query(
            "INSERT INTO profiles (customer_id, traits, trait_meta, computed, segments, version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (customer_id) DO UPDATE SET traits = excluded.traits, trait_meta = excluded.trait_meta,
               computed = excluded.computed, segments = excluded.segments, version = excluded.version,
               updated_at = excluded.updated_at",
        )
        .bind(&p.customer_id).bind(to_json(&p.traits)?).bind(to_json(&p.trait_meta)?).bind(to_json(&p.computed)?)
        .bind(to_json(&p.segments)?).bind(p.version).bind(p.created_at).bind(p.updated_at)
        .execute(&mut **t).await?.rows_affected());
        Ok(())
    }

    /// The customer's events, newest first, optionally only `names` and within [from, to), after the
    /// position `before_seq` (0 for the first page), at most `limit`.
    pub async fn timeline(
        &self,
        customer_id: &str,
        names: &[String],
        from: Option<i64>,
        to: Option<i64>,
        before: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, Error> {
        let id = self.canonical(customer_id).await?;
        let mut sql = String::from(
            "SELECT seq, customer_id, message_id, name, occurred_at, received_at, properties, context FROM events
             WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3
               AND (occurred_at < $4 OR (occurred_at = $4 AND seq < $5))",
        );
        if !names.is_empty() {
            let marks: Vec<String> = (0..names.len()).map(|i| format!("${}", i + 7)).collect();
            sql.push_str(&format!(" AND name IN ({})", marks.join(", ")));
        }
        sql.push_str(" ORDER BY occurred_at DESC, seq DESC LIMIT $6");
        let (before_at, before_seq) = before.unwrap_or((i64::MAX, i64::MAX));
        let rows = on_db!(&self.db, p => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&id).bind(from.unwrap_or(i64::MIN)).bind(to.unwrap_or(i64::MAX))
                .bind(before_at).bind(before_seq).bind(limit);
            for n in names {
                q = q.bind(n);
            }
            let mut out = Vec::new();
            for r in q.fetch_all(p).await? {
                out.push(StoredEvent {
                    seq: r.get(0),
                    customer_id: r.get(1),
                    message_id: r.get(2),
                    name: r.get(3),
                    occurred_at: r.get(4),
                    received_at: r.get(5),
                    properties: from_json(&r.get::<String, _>(6))?,
                    context: from_json(&r.get::<String, _>(7))?,
                });
            }
            out
        });
        Ok(rows)
    }

    /// Applies identity's merge inside `tx` (the feed consumer's transaction): `merged`'s events move to
    /// `survivor`, its traits and computed traits are folded in, and its id becomes an alias.
    pub async fn merge_in(&self, tx: &mut Tx, survivor: &str, merged: &str) -> Result<Vec<OutboxMessage>, Error> {
        let now = now_millis();
        self.lock_profiles(tx, &[survivor, merged]).await?;
        let other = on_tx!(tx, t => load_profile!(&mut **t, merged));
        on_tx!(tx, t => sqlx::query("UPDATE events SET customer_id = $1 WHERE customer_id = $2")
            .bind(survivor).bind(merged).execute(&mut **t).await?.rows_affected());
        on_tx!(tx, t => sqlx::query("UPDATE profile_aliases SET survivor = $1 WHERE survivor = $2")
            .bind(survivor).bind(merged).execute(&mut **t).await?.rows_affected());
        on_tx!(tx, t => sqlx::query(
            "INSERT INTO profile_aliases (customer_id, survivor) VALUES ($1, $2)
             ON CONFLICT (customer_id) DO UPDATE SET survivor = excluded.survivor",
        ).bind(merged).bind(survivor).execute(&mut **t).await?.rows_affected());
        if let Some(other) = other {
            let mut profile =
                on_tx!(tx, t => load_profile!(&mut **t, survivor)).unwrap_or_else(|| Profile::empty(survivor, now));
            profile.absorb(&other, &self.settings);
            profile.version += 1;
            profile.updated_at = now;
            let mut messages = self.save_evaluated(tx, &mut profile, now).await?;
            on_tx!(tx, t => sqlx::query("DELETE FROM profiles WHERE customer_id = $1")
                .bind(merged).execute(&mut **t).await?.rows_affected());
            on_tx!(tx, t => sqlx::query("DELETE FROM segment_members WHERE customer_id = $1")
                .bind(merged).execute(&mut **t).await?.rows_affected());
            messages.extend(self.events.merged(survivor, merged));
            return Ok(messages);
        }
        Ok(self.events.merged(survivor, merged))
    }

    /// Applies identity's split inside `tx`: the events first resolved to `split` (or to its `aliases`)
    /// move back to it, it stops being an alias, and both profiles are rebuilt from their timelines.
    pub async fn split_in(&self, tx: &mut Tx, customer: &str, split: &str, aliases: &[String]) -> Result<(), Error> {
        self.lock_profiles(tx, &[customer, split]).await?;
        let mut origins = aliases.to_vec();
        origins.push(split.to_string());
        for origin in &origins {
            on_tx!(tx, t => sqlx::query("UPDATE events SET customer_id = $1 WHERE customer_id = $2 AND origin_customer_id = $3")
                .bind(split).bind(customer).bind(origin).execute(&mut **t).await?.rows_affected());
        }
        on_tx!(tx, t => sqlx::query("DELETE FROM profile_aliases WHERE customer_id = $1")
            .bind(split).execute(&mut **t).await?.rows_affected());
        for alias in aliases {
            on_tx!(tx, t => sqlx::query("UPDATE profile_aliases SET survivor = $1 WHERE customer_id = $2")
                .bind(split).bind(alias).execute(&mut **t).await?.rows_affected());
        }
        self.rebuild_in(tx, customer).await?;
        self.rebuild_in(tx, split).await?;
        Ok(())
    }

    /// Deletes events older than their name's retention (`[profile] retention_days`), at most `batch`
    /// customers per event name per call, and recomputes each affected profile from what is left.
    /// Returns the customers whose timelines were trimmed (their cached profiles must be invalidated).
    pub async fn enforce_retention(&self, batch: i64) -> Result<Vec<String>, Error> {
        let now = now_millis();
        let mut trimmed = Vec::new();
        for (name, days) in &self.settings.retention_days {
            let cutoff = now - i64::from(*days) * 86_400_000;
            let customers: Vec<String> = on_db!(&self.db, p => sqlx::query_scalar(
                "SELECT DISTINCT customer_id FROM events WHERE name = $1 AND occurred_at < $2 LIMIT $3",
            ).bind(name).bind(cutoff).bind(batch).fetch_all(p).await?);
            for customer in customers {
                let mut tx = self.db.begin().await?;
                self.lock_profiles(&mut tx, &[&customer]).await?;
                on_tx!(&mut tx, t => sqlx::query("DELETE FROM events WHERE customer_id = $1 AND name = $2 AND occurred_at < $3")
                    .bind(&customer).bind(name).bind(cutoff).execute(&mut **t).await?.rows_affected());
                self.rebuild_in(&mut tx, &customer).await?;
                self.outbox.commit(tx).await?;
                trimmed.push(customer);
            }
        }
        Ok(trimmed)
    }

    /// Serialises writers of the same profiles on PostgreSQL for the rest of `tx` (a profile update reads,
    /// changes and writes the row); SQLite serialises every writer already. Ids are locked in order, so two
    /// writers never wait for each other crosswise.
    async fn lock_profiles(&self, tx: &mut Tx, ids: &[&str]) -> Result<(), Error> {
        if let Tx::Postgres(t) = tx {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(PROFILE_LOCK_SPACE)
                    .bind(id)
                    .execute(&mut **t)
                    .await?;
            }
        }
        Ok(())
    }

    /// Recomputes a profile from its timeline.
    async fn rebuild_in(&self, tx: &mut Tx, customer: &str) -> Result<(), Error> {
        let now = now_millis();
        let old = on_tx!(tx, t => load_profile!(&mut **t, customer));
        let rows: Vec<(String, String, i64, String, String)> = on_tx!(tx, t => sqlx::query_as(
            "SELECT message_id, name, occurred_at, properties, context FROM events WHERE customer_id = $1 ORDER BY occurred_at, seq",
        ).bind(customer).fetch_all(&mut **t).await?);
        let mut profile = Profile::empty(customer, old.as_ref().map_or(now, |o| o.created_at));
        profile.version = old.as_ref().map_or(0, |o| o.version) + 1;
        for (message_id, name, occurred_at, properties, context) in rows {
            let context: Value = from_json(&context)?;
            let source = context.get("source").and_then(Value::as_str).unwrap_or_default().to_string();
            let e = NewEvent { message_id, name, occurred_at, properties: from_json(&properties)?, context };
            profile.apply(&e, &source, &self.settings);
        }
        profile.segments = old.map(|o| o.segments).unwrap_or_default();
        profile.updated_at = now;
        let messages = self.save_evaluated(tx, &mut profile, now).await?;
        Outbox::append(tx, &messages).await?;
        Ok(())
    }

    /// Removes everything stored about `customer_id` and its aliases. Returns the rows removed.
    pub async fn erase(&self, customer_id: &str) -> Result<u64, Error> {
        let id = self.canonical(customer_id).await?;
        let mut tx = self.db.begin().await?;
        let n = self.erase_in(&mut tx, &id, &[]).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Removes `customer_id`, the given `aliases` and every alias stored for it, inside `tx`.
    pub async fn erase_in(&self, tx: &mut Tx, customer_id: &str, aliases: &[String]) -> Result<u64, Error> {
        self.lock_profiles(tx, &[customer_id]).await?;
        let mut everyone: Vec<String> = on_tx!(tx, c => sqlx::query_scalar("SELECT customer_id FROM profile_aliases WHERE survivor = $1")
            .bind(customer_id).fetch_all(&mut **c).await?);
        everyone.extend(aliases.iter().cloned());
        everyone.push(customer_id.to_string());
        everyone.sort();
        everyone.dedup();
        let mut n = 0;
        for who in &everyone {
            n += on_tx!(tx, c => sqlx::query("DELETE FROM events WHERE customer_id = $1").bind(who).execute(&mut **c).await?.rows_affected());
            n += on_tx!(tx, c => sqlx::query("DELETE FROM profiles WHERE customer_id = $1").bind(who).execute(&mut **c).await?.rows_affected());
            n += on_tx!(tx, c => sqlx::query("DELETE FROM profile_aliases WHERE customer_id = $1 OR survivor = $1").bind(who).execute(&mut **c).await?.rows_affected());
            n += on_tx!(tx, c => sqlx::query("DELETE FROM segment_members WHERE customer_id = $1").bind(who).execute(&mut **c).await?.rows_affected());
        }
        Ok(n)
    }
}
