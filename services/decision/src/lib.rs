//! The decision service: the next best action for a customer (offers, eligibility rules, arbitration,
//! Thompson sampling, contact policies and caps), outcomes and the bandit's learning, triggered and
//! scheduled campaigns with durable timers, experiments and holdouts, and KPI reports.
//!
//! - [`grpc`]: the handlers; [`decide`]: the engine; [`outcomes`]: attribution and learning;
//! - [`domain`]: pure logic (hashing, Thompson sampling, policies, documents, statistics);
//! - [`store`]: the catalog, the decision log (group commit), the bandit's counts;
//! - [`campaigns`]: definitions, triggers, timers, scheduled runs, sends; [`report`]: KPIs and IPS;
//! - [`feeds`]: delivery's, profile's and consent's feeds; [`dsr`]: export and erasure.

use std::sync::Arc;
use std::time::Duration;

use rapport_proto::decision::v1::decision_service_server::DecisionServiceServer;
use rapport_rpc::{Mounted, ServiceContext, feed_source};
use rapport_storage::{Db, sqlx::migrate::Migrator};

pub mod campaigns;
pub mod decide;
pub mod domain;
pub mod dsr;
pub mod feeds;
pub mod grpc;
pub mod outcomes;
pub mod report;
pub mod settings;
pub mod store;

use crate::settings::DecisionSettings;
use crate::store::Store;

/// The service's short name: its config section, database and schema.
pub const NAME: &str = "decision";

static SQLITE: Migrator = rapport_storage::sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = rapport_storage::sqlx::migrate!("./migrations/postgres");

/// Applies the service's migrations (and the shared outbox tables) to `db`.
pub async fn migrate(db: &Db) -> Result<(), rapport_storage::StorageError> {
    rapport_storage::migrate(db, NAME, &SQLITE, &POSTGRES).await
}

/// Runs `work` every `every` until `shutdown`, logging failures.
fn every<F, Fut>(
    what: &'static str,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    work: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), rapport_errors::Error>> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = work().await {
                tracing::warn!(task = what, error = %e, "decision background work failed; retrying");
            }
        }
    })
}

/// Builds the service on its migrated database.
pub async fn mount(ctx: ServiceContext) -> anyhow::Result<Mounted> {
    let settings: DecisionSettings = ctx.settings.section(NAME)?;
    settings.validate().map_err(anyhow::Error::msg)?;
    let settings = Arc::new(settings);
    let store = Arc::new(
        Store::open(ctx.db.clone(), settings.clone(), ctx.cache.clone(), ctx.clients.clone())
            .await
            .map_err(|e| anyhow::anyhow!("decision: cannot load the catalog: {e}"))?,
    );
    let campaigns = Arc::new(
        campaigns::Campaigns::open(store.clone())
            .await
            .map_err(|e| anyhow::anyhow!("decision: cannot load the campaigns: {e}"))?,
    );
    let service = Arc::new(grpc::Decisions {
        store: store.clone(),
        shutdown: ctx.shutdown.clone(),
        campaigns: campaigns.clone(),
    });
    let server = DecisionServiceServer::from_arc(service)
        .max_decoding_message_size(ctx.settings.server.max_message_bytes)
        .max_encoding_message_size(ctx.settings.server.max_message_bytes);
    let clients = ctx.clients.clone();
    let db = ctx.db.clone();
    let shutdown = ctx.shutdown.clone();
    Ok(Mounted::new(NAME, ctx.db.clone(), server).with_background(move || {
        let owner = format!("decision-{}", uuid::Uuid::new_v4().simple());
        let mut tasks = Vec::new();
        let hook = campaigns::triggers::hook(campaigns.clone());
        if clients.is_wired("delivery") {
            tasks.push(rapport_rpc::feed::consume(
                feeds::DELIVERY_CONSUMER,
                db.clone(),
                feed_source!(clients, delivery),
                feeds::DeliveryFeed::topics(),
                Arc::new(feeds::DeliveryFeed::new(store.clone())),
                shutdown.clone(),
            ));
        }
        if clients.is_wired("profile") {
            tasks.push(rapport_rpc::feed::consume(
                feeds::PROFILE_CONSUMER,
                db.clone(),
                feed_source!(clients, profile),
                feeds::ProfileFeed::topics(),
                Arc::new(feeds::ProfileFeed::new(store.clone(), Some(hook.clone()))),
                shutdown.clone(),
            ));
        }
        if clients.is_wired("consent") {
            tasks.push(rapport_rpc::feed::consume(
                feeds::CONSENT_CONSUMER,
                db.clone(),
                feed_source!(clients, consent),
                feeds::ConsentFeed::topics(),
                Arc::new(feeds::ConsentFeed { store: store.clone(), on_event: hook }),
                shutdown.clone(),
            ));
        }
        let s = store.clone();
        tasks.push(every(
            "bandit flush",
            Duration::from_secs_f64(settings.bandit_flush_seconds),
            shutdown.clone(),
            move || {
                let s = s.clone();
                async move { s.bandit.flush(&s.db).await }
            },
        ));
        let (s, c) = (store.clone(), campaigns.clone());
        tasks.push(every("catalog refresh", Duration::from_secs(2), shutdown.clone(), move || {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.refresh().await?;
                c.reload().await
            }
        }));
        let (c, o) = (campaigns.clone(), owner.clone());
        tasks.push(every(
            "campaign timers",
            Duration::from_millis(settings.timer_poll_ms),
            shutdown.clone(),
            move || {
                let (c, o) = (c.clone(), o.clone());
                async move { campaigns::timers::run_due(&c, &o).await.map(|_| ()) }
            },
        ));
        let (c, o) = (campaigns.clone(), owner);
        tasks.push(every(
            "scheduled campaigns",
            Duration::from_millis(settings.schedule_poll_ms),
            shutdown.clone(),
            move || {
                let (c, o) = (c.clone(), o.clone());
                async move { campaigns::scheduler::tick(&c, &o).await }
            },
        ));
        let s = store.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            // The last increments of the bandit reach the database at shutdown.
            stop.cancelled().await;
            if let Err(e) = s.bandit.flush(&s.db).await {
                tracing::warn!(error = %e, "the bandit's last counts were not saved");
            }
        }));
        tasks
    }))
}
