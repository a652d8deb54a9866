//! The identity service.

use rapport_proto::common::v1::SubscribeRequest;
use rapport_proto::identity::v1::identity_service_server::{
    IdentityService, IdentityServiceServer,
};
use rapport_rpc::{Mounted, ServiceContext, feed::RecordStream};
use rapport_storage::{Db, Outbox, sqlx::migrate::Migrator};
use tonic::{Request, Response, Status};

pub mod graph;
pub mod matching;
pub mod normalize;
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
    let service = Identity {
        outbox: Outbox::new(ctx.db.clone()),
    };
    Ok(Mounted::new(
        NAME,
        ctx.db.clone(),
        IdentityServiceServer::new(service),
    ))
}

struct Identity {
    outbox: Outbox,
}

#[tonic::async_trait]
impl IdentityService for Identity {
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        rapport_rpc::feed::subscribe(&self.outbox, request.into_inner()).map(Response::new)
    }
}
