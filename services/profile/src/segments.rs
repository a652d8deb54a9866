//! Segments: CEL rules over a profile, compiled once when saved and evaluated on every change of a
//! profile, plus a periodic pass for rules that depend on time ("no order for 60 days").

use std::sync::{Arc, RwLock};

use rapport_errors::{Error, ErrorCode};
use rapport_rules::Rule;
use rapport_storage::sqlx::{self, Row};
use rapport_storage::{Db, Tx, now_millis, on_db, on_tx};
use serde_json::{Value, json};

use crate::computed::ComputedSettings;
use crate::store::Profile;

/// The variables a segment rule may use.
pub const RULE_VARIABLES: [&str; 2] = ["profile", "now"];

/// A stored segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentDef {
    pub id: String,
    pub name: String,
    pub rule: String,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The segments of the store, with their compiled rules.
pub struct Segments {
    db: Db,
    compiled: RwLock<Arc<Vec<(SegmentDef, Rule)>>>,
}

/// The document a rule sees as `profile`.
pub fn rule_document(p: &Profile, now: i64, settings: &ComputedSettings) -> Value {
    let derived = p.computed.derive(now, settings);
    let mut computed = serde_json::to_value(&p.computed).unwrap_or(Value::Null);
    if let (Some(c), Ok(Value::Object(d))) = (computed.as_object_mut(), serde_json::to_value(&derived)) {
        c.extend(d);
    }
    json!({"customer_id": p.customer_id, "traits": p.traits, "computed": computed, "segments": p.segments})
}

fn validate_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::invalid("segment.name", "must be 1 to 100 characters"));
    }
    Ok(name.to_string())
}

/// Compiles a segment rule, naming `field` in the error.
pub fn compile(field: &str, rule: &str) -> Result<Rule, Error> {
    Rule::compile(rule, &RULE_VARIABLES).map_err(|e| Error::invalid(field, e))
}

impl Segments {
    /// Loads the segments stored in `db`.
    pub async fn load(db: Db) -> Result<Self, Error> {
        let s = Self { db, compiled: RwLock::new(Arc::new(Vec::new())) };
        s.reload().await?;
        Ok(s)
    }

    async fn reload(&self) -> Result<(), Error> {
        let defs = self.list().await?;
        let mut compiled = Vec::with_capacity(defs.len());
        for d in defs {
            match Rule::compile(&d.rule, &RULE_VARIABLES) {
                Ok(rule) => compiled.push((d, rule)),
                Err(e) => {
                    tracing::error!(segment = %d.id, error = %e, "stored segment rule no longer compiles; skipped")
                }
            }
        }
        *self.compiled.write().expect("segments lock") = Arc::new(compiled);
        Ok(())
    }

    /// Every segment, by name.
    pub async fn list(&self) -> Result<Vec<SegmentDef>, Error> {
        let rows: Vec<(String, String, String, String, i64, i64)> = on_db!(&self.db, p => sqlx::query_as(
            "SELECT id, name, rule, description, created_at, updated_at FROM segments ORDER BY name",
        ).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(id, name, rule, description, created_at, updated_at)| SegmentDef {
                id,
                name,
                rule,
                description,
                created_at,
                updated_at,
            })
            .collect())
    }

    /// One segment.
    pub async fn get(&self, id: &str) -> Result<SegmentDef, Error> {
        self.list().await?.into_iter().find(|s| s.id == id).ok_or_else(|| Error::not_found(format!("segment {id}")))
    }

    /// Creates a segment. Its members are filled in by the next evaluation pass.
    pub async fn create(&self, name: &str, rule: &str, description: &str) -> Result<SegmentDef, Error> {
        let name = validate_name(name)?;
        compile("segment.rule", rule)?;
        let now = now_millis();
        let def = SegmentDef {
            id: format!("seg_{}", uuid::Uuid::now_v7().simple()),
            name,
            rule: rule.trim().to_string(),
            description: description.to_string(),
            created_at: now,
            updated_at: now,
        };
        let inserted = on_db!(&self.db, p => sqlx::query(
            "INSERT INTO segments (id, name, rule, description, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (name) DO NOTHING",
        ).bind(&def.id).bind(&def.name).bind(&def.rule).bind(&def.description).bind(now).execute(p).await?.rows_affected());
        if inserted == 0 {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("segment.name: a segment named `{}` exists", def.name),
            ));
        }
        self.reload().await?;
        Ok(def)
    }

    /// Changes a segment's name, rule or description.
    pub async fn update(
        &self,
        id: &str,
        name: Option<&str>,
        rule: Option<&str>,
        description: Option<&str>,
    ) -> Result<SegmentDef, Error> {
        let mut def = self.get(id).await?;
        if let Some(n) = name {
            def.name = validate_name(n)?;
        }
        if let Some(r) = rule {
            compile("segment.rule", r)?;
            def.rule = r.trim().to_string();
        }
        if let Some(d) = description {
            def.description = d.to_string();
        }
        def.updated_at = now_millis();
        on_db!(&self.db, p => sqlx::query("UPDATE segments SET name = $1, rule = $2, description = $3, updated_at = $4 WHERE id = $5")
            .bind(&def.name).bind(&def.rule).bind(&def.description).bind(def.updated_at).bind(id).execute(p).await?.rows_affected());
        self.reload().await?;
        Ok(def)
    }

    /// Removes a segment and its memberships.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        self.get(id).await?;
        on_db!(&self.db, p => sqlx::query("DELETE FROM segment_members WHERE segment_id = $1").bind(id).execute(p).await?.rows_affected());
        on_db!(&self.db, p => sqlx::query("DELETE FROM segments WHERE id = $1").bind(id).execute(p).await?.rows_affected());
        self.reload().await
    }

    /// How many customers are in `id`, and a page of them after `after` (customer id order).
    pub async fn members(&self, id: &str, after: &str, limit: i64) -> Result<(i64, Vec<String>), Error> {
        self.get(id).await?;
        let total: i64 = on_db!(&self.db, p => sqlx::query_scalar("SELECT COUNT(*) FROM segment_members WHERE segment_id = $1")
            .bind(id).fetch_one(p).await?);
        let page: Vec<String> = on_db!(&self.db, p => sqlx::query_scalar(
            "SELECT customer_id FROM segment_members WHERE segment_id = $1 AND customer_id > $2 ORDER BY customer_id LIMIT $3",
        ).bind(id).bind(after).bind(limit).fetch_all(p).await?);
        Ok((total, page))
    }

    /// When `customer_id` joined each of its segments.
    pub async fn since(&self, customer_id: &str) -> Result<Vec<(String, i64)>, Error> {
        let rows = on_db!(&self.db, p => sqlx::query("SELECT segment_id, since FROM segment_members WHERE customer_id = $1")
            .bind(customer_id).fetch_all(p).await?.into_iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect::<Vec<_>>());
        Ok(rows)
    }

    /// The name of a segment id, if it exists.
    pub fn name_of(&self, id: &str) -> Option<String> {
        self.compiled.read().expect("segments lock").iter().find(|(d, _)| d.id == id).map(|(d, _)| d.name.clone())
    }

    /// Evaluates every segment for `profile` and updates its memberships inside `tx`. Returns the
    /// segments entered and exited as (id, name).
    #[allow(clippy::type_complexity)]
    pub async fn evaluate_in(
        &self,
        tx: &mut Tx,
        profile: &mut Profile,
        now: i64,
        settings: &ComputedSettings,
    ) -> Result<(Vec<(String, String)>, Vec<(String, String)>), Error> {
        let compiled = self.compiled.read().expect("segments lock").clone();
        let doc = rule_document(profile, now, settings);
        let now_value = json!(now);
        let mut inside = Vec::new();
        for (def, rule) in compiled.iter() {
            match rule.matches(&[("profile", &doc), ("now", &now_value)]) {
                Ok(true) => inside.push(def.id.clone()),
                Ok(false) => {}
                Err(e) => tracing::debug!(segment = %def.id, error = %e, "segment rule failed for a profile"),
            }
        }
        inside.sort();
        let known: Vec<&String> = compiled.iter().map(|(d, _)| &d.id).collect();
        let name =
            |id: &str| compiled.iter().find(|(d, _)| d.id == id).map(|(d, _)| d.name.clone()).unwrap_or_default();
        let entered: Vec<String> = inside.iter().filter(|s| !profile.segments.contains(s)).cloned().collect();
        // Memberships of deleted segments just disappear; only known segments can be exited.
        let exited: Vec<String> =
            profile.segments.iter().filter(|s| !inside.contains(s) && known.contains(s)).cloned().collect();
        for id in &entered {
            on_tx!(tx, t => sqlx::query(
                "INSERT INTO segment_members (segment_id, customer_id, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            ).bind(id).bind(&profile.customer_id).bind(now).execute(&mut **t).await?.rows_affected());
        }
        for id in &exited {
            on_tx!(tx, t => sqlx::query("DELETE FROM segment_members WHERE segment_id = $1 AND customer_id = $2")
                .bind(id).bind(&profile.customer_id).execute(&mut **t).await?.rows_affected());
        }
        profile.segments = inside;
        Ok((
            entered.into_iter().map(|id| (name(&id), id)).map(|(n, id)| (id, n)).collect(),
            exited.into_iter().map(|id| (name(&id), id)).map(|(n, id)| (id, n)).collect(),
        ))
    }
}
