//! The profile service.

use std::sync::Arc;
use std::time::Duration;

use rapport_proto::profile::v1::profile_service_server::ProfileServiceServer;
use rapport_rpc::{Mounted, ServiceContext};
use rapport_storage::{AuditWriter, Db, Outbox, sqlx::migrate::Migrator};

use crate::segments::Segments;
use crate::store::{Store, StoreSettings};

pub mod computed;
pub mod follow;
pub mod follow_delivery;
pub mod grpc;
pub mod segments;
pub mod store;

/// The service's short name: its config section, database and schema.
pub const NAME: &str = "profile";

static SQLITE: Migrator = rapport_storage::sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = rapport_storage::sqlx::migrate!("./migrations/postgres");

/// Applies the service's migrations (and the shared outbox tables) to `db`.
pub async fn migrate(db: &Db) -> Result<(), rapport_storage::StorageError> {
    rapport_storage::migrate(db, NAME, &SQLITE, &POSTGRES).await
}

/// Builds the service on its migrated database: the store, the identity follower, the audit writer and
/// the periodic evaluation pass.
pub async fn mount(ctx: ServiceContext) -> anyhow::Result<Mounted> {
    let settings: StoreSettings = ctx.settings.section(NAME)?;
    let outbox = Outbox::new(ctx.db.clone());
    let segments = Arc::new(Segments::load(ctx.db.clone()).await?);
    let interval = Duration::from_secs(settings.evaluation_interval_seconds.unwrap_or(60).max(1));
    let store = Store::new(ctx.db.clone(), outbox.clone(), Arc::new(settings), Arc::new(grpc::ProtoEvents), segments);
    let (audit, audit_task) = AuditWriter::spawn(ctx.db.clone(), Duration::from_millis(100), ctx.shutdown.clone());
    let service = grpc::Profiles {
        store: store.clone(),
        clients: ctx.clients.clone(),
        cache: ctx.cache.clone(),
        outbox,
        audit,
        shutdown: ctx.shutdown.clone(),
    };
    let cache = ctx.cache.clone();
    let periodic_cache = ctx.cache.clone();
    let invalidate: Arc<dyn Fn(Vec<String>) -> futures::future::BoxFuture<'static, ()> + Send + Sync> =
        Arc::new(move |customers: Vec<String>| {
            let cache = cache.clone();
            Box::pin(async move {
                for c in customers {
                    grpc::invalidate(&cache, &c).await;
                }
            })
        });
    let follower = Arc::new(follow::FollowIdentity { store: store.clone(), on_change: invalidate.clone() });
    let delivery_follower = Arc::new(follow_delivery::FollowDelivery { store: store.clone(), on_change: invalidate });
    let (db, clients, shutdown) = (ctx.db.clone(), ctx.clients.clone(), ctx.shutdown.clone());
    Ok(Mounted::new(NAME, ctx.db.clone(), ProfileServiceServer::new(service)).with_background(move || {
        let (delivery_db, delivery_shutdown) = (db.clone(), shutdown.clone());
        let consumer = rapport_rpc::feed::consume(
            follow::CONSUMER,
            db,
            rapport_rpc::feed_source!(clients, identity),
            follow::topics(),
            follower,
            shutdown.clone(),
        );
        let periodic = tokio::spawn(async move {
            loop {
                if let Err(e) = store.refresh_high_value_threshold().await {
                    tracing::warn!(error = %e, "high-value threshold refresh failed");
                }
                if let Err(e) = store.reevaluate_all(500).await {
                    tracing::warn!(error = %e, "segment evaluation pass failed");
                }
                match store.enforce_retention(500).await {
                    Ok(trimmed) => {
                        for c in trimmed {
                            grpc::invalidate(&periodic_cache, &c).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "event retention pass failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        let mut tasks = vec![consumer, periodic, audit_task];
        // Opens, clicks, bounces and call outcomes onto the timeline.
        if clients.is_wired("delivery") {
            tasks.push(rapport_rpc::feed::consume(
                follow_delivery::CONSUMER,
                delivery_db,
                rapport_rpc::feed_source!(clients, delivery),
                follow_delivery::topics(),
                delivery_follower,
                delivery_shutdown,
            ));
        }
        tasks
    }))
}
