//! Campaigns and experiments: definitions (validated, rules compiled at save), the scope a campaign
//! gives a decision (its offers, its holdout, its experiment arm), triggers from profile events, durable
//! timers, scheduled runs over a segment, and the sends through delivery.

pub mod definition;
pub mod scheduler;
pub mod send;
pub mod timers;
pub mod triggers;

use std::sync::{Arc, RwLock};

use prost::Message;
use rapport_errors::{Error, ErrorCode};
use rapport_proto::decision::v1::{self as pb, CampaignKind, CampaignState};
use rapport_rpc::convert::timestamp;
use rapport_rules::Rule;
use rapport_storage::now_millis;
use rapport_storage::sql::Exec;

use crate::decide::{ArmScope, Scope};
use crate::domain::document::campaign_shapes;
use crate::domain::hash;
use crate::domain::offers::{self, default_channel};
use crate::store::Store;

/// Checks what a campaign definition says on its own (everything but whether its offers and its
/// experiment exist), naming the field, and fills the default channel. Clients check a definition
/// with it before they store anything.
pub fn check_definition(mut c: pb::Campaign) -> Result<pb::Campaign, Error> {
    c.name = c.name.trim().to_string();
    if c.name.is_empty() || c.name.chars().count() > 100 {
        return Err(Error::invalid("campaign.name", "must be 1 to 100 characters"));
    }
    let kind = match CampaignKind::try_from(c.kind) {
        Ok(CampaignKind::Unspecified) => {
            return Err(Error::invalid("campaign.kind", "is required: triggered or scheduled"));
        }
        Ok(k) => k,
        Err(_) => return Err(Error::invalid("campaign.kind", format!("unknown kind {}", c.kind))),
    };
    match kind {
        CampaignKind::Triggered => {
            if c.trigger_events.is_empty() {
                return Err(Error::invalid(
                    "campaign.trigger_events",
                    "a triggered campaign needs at least one event name",
                ));
            }
            for (i, e) in c.trigger_events.iter().enumerate() {
                if !is_event_name(e) {
                    return Err(Error::invalid(
                        &format!("campaign.trigger_events[{i}]"),
                        "not an event name (lower-case letters, digits, _)",
                    ));
                }
            }
            compile("campaign.trigger_rule", &c.trigger_rule)?;
            compile("campaign.recheck_rule", &c.recheck_rule)?;
            if !(0..=366 * 86_400).contains(&c.wait_seconds) {
                return Err(Error::invalid("campaign.wait_seconds", "must be between 0 and a year"));
            }
        }
        CampaignKind::Scheduled => {
            if c.schedule.trim().is_empty() {
                return Err(Error::invalid("campaign.schedule", "a scheduled campaign needs a cron expression"));
            }
            cron("campaign.schedule", &c.schedule)?;
            if c.segment_id.trim().is_empty() {
                return Err(Error::invalid("campaign.segment_id", "a scheduled campaign needs a segment"));
            }
        }
        CampaignKind::Unspecified => {}
    }
    let placement = offers::placement("campaign.placement", c.placement)?;
    if c.channel == 0 {
        c.channel = default_channel(placement) as i32;
    } else {
        offers::channel("campaign.channel", c.channel)?;
    }
    if !(0.0..=0.5).contains(&c.holdout_share) {
        return Err(Error::invalid("campaign.holdout_share", "must be between 0 and 0.5"));
    }
    c.holdout_salt = c.holdout_salt.trim().to_string();
    if c.holdout_salt.chars().count() > 100 {
        return Err(Error::invalid("campaign.holdout_salt", "must be at most 100 characters"));
    }
    Ok(c)
}

/// A running triggered campaign with its compiled rules.
#[derive(Debug, Clone)]
pub struct LiveCampaign {
    pub campaign: pb::Campaign,
    pub trigger: Option<Rule>,
    pub recheck: Option<Rule>,
}

/// Campaign and experiment definitions.
pub struct Campaigns {
    pub store: Arc<Store>,
    triggered: RwLock<Arc<Vec<LiveCampaign>>>,
}

/// Compiles a campaign rule (empty: always true).
pub fn compile(field: &str, source: &str) -> Result<Option<Rule>, Error> {
    if source.trim().is_empty() {
        return Ok(None);
    }
    Rule::compile_with_shapes(source, &campaign_shapes()).map(Some).map_err(|e| Error::invalid(field, e))
}

fn is_event_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses a cron expression (five fields, or six with seconds), naming `field`.
pub fn cron(field: &str, expr: &str) -> Result<croner::Cron, Error> {
    expr.trim().parse::<croner::Cron>().map_err(|e| Error::invalid(field, format!("not a cron expression: {e}")))
}

/// The arm of `customer_id` in `e` (fnv1a64 of salt:customer over the arms' weights).
pub fn arm_of<'a>(e: &'a pb::Experiment, customer_id: &str) -> Option<&'a pb::Arm> {
    let arms: Vec<(String, f64)> = e.arms.iter().map(|a| (a.name.clone(), a.weight)).collect();
    let name = hash::assign(&e.salt, customer_id, &arms)?.to_string();
    e.arms.iter().find(|a| a.name == name)
}

impl Campaigns {
    /// The definitions in `store`, loaded.
    pub async fn open(store: Arc<Store>) -> Result<Self, Error> {
        let c = Self { store, triggered: RwLock::new(Arc::new(Vec::new())) };
        c.reload().await?;
        Ok(c)
    }

    /// The running triggered campaigns.
    pub fn triggered(&self) -> Arc<Vec<LiveCampaign>> {
        self.triggered.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the running triggered campaigns again.
    pub async fn reload(&self) -> Result<(), Error> {
        let rows: Vec<(Vec<u8>,)> = Exec::Db(&self.store.db)
            .all(
                "SELECT body FROM campaigns WHERE state = $1 ORDER BY campaign_id",
                &[(CampaignState::Running as i32).into()],
            )
            .await?;
        let mut live = Vec::new();
        for (body,) in rows {
            let campaign =
                pb::Campaign::decode(body.as_slice()).map_err(|e| Error::internal(format!("stored campaign: {e}")))?;
            if campaign.kind != CampaignKind::Triggered as i32 {
                continue;
            }
            match (compile("trigger_rule", &campaign.trigger_rule), compile("recheck_rule", &campaign.recheck_rule)) {
                (Ok(trigger), Ok(recheck)) => live.push(LiveCampaign { campaign, trigger, recheck }),
                _ => {
                    tracing::error!(campaign = %campaign.campaign_id, "a stored campaign rule no longer compiles; skipped")
                }
            }
        }
        *self.triggered.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        Ok(())
    }

    async fn validate(&self, c: pb::Campaign) -> Result<pb::Campaign, Error> {
        let c = check_definition(c)?;
        for (i, id) in c.offer_ids.iter().enumerate() {
            if let Err(e) = self.store.offer(id).await {
                if e.code() == ErrorCode::NotFound {
                    return Err(Error::invalid(&format!("campaign.offer_ids[{i}]"), format!("unknown offer {id}")));
                }
                return Err(e);
            }
        }
        if !c.experiment_id.is_empty() && self.experiment(&c.experiment_id).await.is_err() {
            return Err(Error::invalid("campaign.experiment_id", format!("unknown experiment {}", c.experiment_id)));
        }
        Ok(c)
    }

    async fn save(&self, c: &pb::Campaign, insert: bool, started: bool) -> Result<(), Error> {
        let created = c.created_at.as_ref().and_then(rapport_rpc::convert::millis).unwrap_or_else(now_millis);
        let mut exec = Exec::Db(&self.store.db);
        if insert {
            exec.run(
                "INSERT INTO campaigns (campaign_id, state, running_since, body, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[(&c.campaign_id).into(), c.state.into(), (if started { now_millis() } else { 0 }).into(), c.encode_to_vec().into(), created.into()],
            )
            .await?;
        } else if started {
            exec.run(
                "UPDATE campaigns SET state = $1, body = $2, running_since = $3 WHERE campaign_id = $4",
                &[c.state.into(), c.encode_to_vec().into(), now_millis().into(), (&c.campaign_id).into()],
            )
            .await?;
        } else {
            exec.run(
                "UPDATE campaigns SET state = $1, body = $2 WHERE campaign_id = $3",
                &[c.state.into(), c.encode_to_vec().into(), (&c.campaign_id).into()],
            )
            .await?;
        }
        self.reload().await
    }

    /// Creates a campaign (a draft unless it asks to run at once).
    pub async fn create(&self, c: pb::Campaign) -> Result<pb::Campaign, Error> {
        let mut c = self.validate(c).await?;
        c.state = match CampaignState::try_from(c.state) {
            Ok(CampaignState::Unspecified) | Ok(CampaignState::Draft) => CampaignState::Draft as i32,
            Ok(CampaignState::Running) => CampaignState::Running as i32,
            _ => return Err(Error::invalid("campaign.state", "a new campaign is a draft or running")),
        };
        c.campaign_id = format!("cmp_{}", uuid::Uuid::now_v7().simple());
        c.created_at = Some(timestamp(now_millis()));
        self.save(&c, true, c.state == CampaignState::Running as i32).await?;
        Ok(c)
    }

    /// Changes the fields of a campaign named by `paths` (all when empty).
    pub async fn update(&self, update: pb::Campaign, paths: Vec<String>) -> Result<pb::Campaign, Error> {
        if update.campaign_id.is_empty() {
            return Err(Error::invalid("campaign.campaign_id", "is required"));
        }
        let current = self.get(&update.campaign_id).await?;
        const PATHS: [&str; 14] = [
            "name",
            "trigger_events",
            "trigger_rule",
            "wait_seconds",
            "recheck_rule",
            "schedule",
            "segment_id",
            "placement",
            "channel",
            "offer_ids",
            "holdout_share",
            "holdout_salt",
            "experiment_id",
            "kind",
        ];
        rapport_rpc::convert::check_paths("update_mask", &paths, &PATHS)?;
        let wants = |p: &str| paths.is_empty() || paths.iter().any(|x| x == p);
        let mut next = current.clone();
        macro_rules! take {
            ($($f:ident),*) => { $( if wants(stringify!($f)) { next.$f = update.$f.clone(); } )* };
        }
        take!(
            name,
            trigger_events,
            trigger_rule,
            wait_seconds,
            recheck_rule,
            schedule,
            segment_id,
            placement,
            channel,
            offer_ids,
            holdout_share,
            holdout_salt,
            experiment_id,
            kind
        );
        let next = self.validate(next).await?;
        self.save(&next, false, false).await?;
        Ok(next)
    }

    /// One campaign.
    pub async fn get(&self, campaign_id: &str) -> Result<pb::Campaign, Error> {
        let rows: Vec<(Vec<u8>,)> = Exec::Db(&self.store.db)
            .all("SELECT body FROM campaigns WHERE campaign_id = $1", &[campaign_id.into()])
            .await?;
        let (body,) = rows.into_iter().next().ok_or_else(|| Error::not_found(format!("campaign {campaign_id}")))?;
        pb::Campaign::decode(body.as_slice()).map_err(|e| Error::internal(format!("stored campaign: {e}")))
    }

    /// Campaigns after `after` (id order).
    pub async fn list(&self, after: &str, limit: i64) -> Result<Vec<pb::Campaign>, Error> {
        let rows: Vec<(Vec<u8>,)> = Exec::Db(&self.store.db)
            .all(
                "SELECT body FROM campaigns WHERE campaign_id > $1 ORDER BY campaign_id LIMIT $2",
                &[after.into(), limit.into()],
            )
            .await?;
        rows.into_iter()
            .map(|(b,)| {
                pb::Campaign::decode(b.as_slice()).map_err(|e| Error::internal(format!("stored campaign: {e}")))
            })
            .collect()
    }

    /// Starts, pauses or stops a campaign. A stopped campaign stays stopped.
    pub async fn set_state(&self, campaign_id: &str, state: i32) -> Result<pb::Campaign, Error> {
        let target = match CampaignState::try_from(state) {
            Ok(s @ (CampaignState::Running | CampaignState::Paused | CampaignState::Stopped)) => s,
            _ => return Err(Error::invalid("state", "must be running, paused or stopped")),
        };
        let mut c = self.get(campaign_id).await?;
        if c.state == CampaignState::Stopped as i32 && target != CampaignState::Stopped {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("campaign {campaign_id} is stopped for good"),
            ));
        }
        let starting = target == CampaignState::Running && c.state != CampaignState::Running as i32;
        c.state = target as i32;
        self.save(&c, false, starting).await?;
        Ok(c)
    }

    /// What `campaign_id` narrows a decision for `customer_id` to.
    pub async fn scope_of(&self, campaign_id: &str, customer_id: &str) -> Result<Scope, Error> {
        let c = match self.get(campaign_id).await {
            Ok(c) => c,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Err(Error::invalid("campaign_id", format!("unknown campaign {campaign_id}")));
            }
            Err(e) => return Err(e),
        };
        let arm = if c.experiment_id.is_empty() {
            None
        } else {
            let e = self.experiment(&c.experiment_id).await?;
            arm_of(&e, customer_id).map(|a| ArmScope {
                experiment_id: e.experiment_id.clone(),
                arm: a.name.clone(),
                offer_id: a.offer_id.clone(),
            })
        };
        let holdout_salt = if c.holdout_salt.is_empty() { c.campaign_id.clone() } else { c.holdout_salt };
        Ok(Scope {
            campaign_id: c.campaign_id,
            offer_ids: c.offer_ids,
            holdout_share: c.holdout_share,
            holdout_salt,
            arm,
        })
    }

    /// Creates an experiment.
    pub async fn create_experiment(&self, mut e: pb::Experiment) -> Result<pb::Experiment, Error> {
        e.name = e.name.trim().to_string();
        if e.name.is_empty() || e.name.chars().count() > 100 {
            return Err(Error::invalid("experiment.name", "must be 1 to 100 characters"));
        }
        if e.arms.len() < 2 || e.arms.len() > 20 {
            return Err(Error::invalid("experiment.arms", "between 2 and 20 arms"));
        }
        for (i, a) in e.arms.iter().enumerate() {
            if a.name.trim().is_empty() || a.name.len() > 64 {
                return Err(Error::invalid(&format!("experiment.arms[{i}].name"), "must be 1 to 64 characters"));
            }
            if e.arms[..i].iter().any(|b| b.name == a.name) {
                return Err(Error::invalid(&format!("experiment.arms[{i}].name"), "is used by another arm"));
            }
            if !a.weight.is_finite() || a.weight <= 0.0 {
                return Err(Error::invalid(&format!("experiment.arms[{i}].weight"), "must be positive"));
            }
            if !a.offer_id.is_empty() && self.store.offer(&a.offer_id).await.is_err() {
                return Err(Error::invalid(
                    &format!("experiment.arms[{i}].offer_id"),
                    format!("unknown offer {}", a.offer_id),
                ));
            }
        }
        if let (Some(s), Some(t)) = (&e.started_at, &e.ended_at)
            && rapport_rpc::convert::millis(s) >= rapport_rpc::convert::millis(t)
        {
            return Err(Error::invalid("experiment.ended_at", "must be after started_at"));
        }
        e.experiment_id = format!("exp_{}", uuid::Uuid::now_v7().simple());
        if e.salt.is_empty() {
            e.salt = e.experiment_id.clone();
        }
        if e.started_at.is_none() {
            e.started_at = Some(timestamp(now_millis()));
        }
        Exec::Db(&self.store.db)
            .run(
                "INSERT INTO experiments (experiment_id, body) VALUES ($1, $2)",
                &[(&e.experiment_id).into(), e.encode_to_vec().into()],
            )
            .await?;
        Ok(e)
    }

    /// One experiment.
    pub async fn experiment(&self, experiment_id: &str) -> Result<pb::Experiment, Error> {
        let rows: Vec<(Vec<u8>,)> = Exec::Db(&self.store.db)
            .all("SELECT body FROM experiments WHERE experiment_id = $1", &[experiment_id.into()])
            .await?;
        let (body,) = rows.into_iter().next().ok_or_else(|| Error::not_found(format!("experiment {experiment_id}")))?;
        pb::Experiment::decode(body.as_slice()).map_err(|e| Error::internal(format!("stored experiment: {e}")))
    }
}
