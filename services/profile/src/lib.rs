//! The profile service.

use rapport_proto::common::v1::SubscribeRequest;
use rapport_proto::profile::v1::profile_service_server::{ProfileService, ProfileServiceServer};
use rapport_rpc::{Mounted, ServiceContext, feed::RecordStream};
use rapport_storage::{Db, Outbox, sqlx::migrate::Migrator};
use tonic::{Request, Response, Status};

pub mod computed;
pub mod follow;
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

/// Builds the service on its migrated database.
pub async fn mount(ctx: ServiceContext) -> anyhow::Result<Mounted> {
    let service = Profile { outbox: Outbox::new(ctx.db.clone()), shutdown: ctx.shutdown.clone() };
    Ok(Mounted::new(NAME, ctx.db.clone(), ProfileServiceServer::new(service)))
}

struct Profile {
    outbox: Outbox,
    shutdown: tokio_util::sync::CancellationToken,
}

#[tonic::async_trait]
impl ProfileService for Profile {
    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<RecordStream>, Status> {
        rapport_rpc::feed::subscribe(&self.outbox, request.into_inner(), &self.shutdown).map(Response::new)
    }
}
