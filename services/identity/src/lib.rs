//! The identity service.

use std::sync::Arc;

use rapport_proto::identity::v1::identity_service_server::IdentityServiceServer;
use rapport_rpc::{Mounted, ServiceContext};
use rapport_storage::{AuditWriter, Db, Outbox, sqlx::migrate::Migrator};

use crate::graph::Graph;
use crate::normalize::Normalizer;
use crate::settings::IdentitySettings;

pub mod golden;
pub mod graph;
pub mod grpc;
pub mod hierarchy;
pub mod matching;
pub mod normalize;
pub mod records;
pub mod settings;

/// The service's short name: its config section, database and schema.
pub const NAME: &str = "identity";

static SQLITE: Migrator = rapport_storage::sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = rapport_storage::sqlx::migrate!("./migrations/postgres");

/// Applies the service's migrations (and the shared outbox tables) to `db`.
pub async fn migrate(db: &Db) -> Result<(), rapport_storage::StorageError> {
    rapport_storage::migrate(db, NAME, &SQLITE, &POSTGRES).await
}

/// Builds the service on its migrated database.
pub async fn mount(ctx: ServiceContext) -> anyhow::Result<Mounted> {
    let settings: IdentitySettings = ctx.settings.section(NAME)?;
    let normalizer = Normalizer::new(&settings).map_err(anyhow::Error::msg)?;
    let outbox = Outbox::new(ctx.db.clone());
    let graph = Graph::new(ctx.db.clone(), outbox.clone(), Arc::new(settings), Arc::new(grpc::ProtoEvents))
        .with_lookup_cache(ctx.cache.clone());
    records::Runs::recover(&graph).await?;
    let (audit, audit_task) =
        AuditWriter::spawn(ctx.db.clone(), std::time::Duration::from_millis(100), ctx.shutdown.clone());
    let service = grpc::Identity {
        graph,
        normalizer: Arc::new(normalizer),
        outbox,
        shutdown: ctx.shutdown.clone(),
        runs: records::Runs::default(),
        audit,
    };
    Ok(Mounted::new(NAME, ctx.db.clone(), IdentityServiceServer::new(service))
        .with_background(move || vec![audit_task]))
}
