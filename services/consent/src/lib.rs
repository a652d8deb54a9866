//! The consent service: a provable, append-only ledger of permissions, the Check made before every
//! contact, suppressions, double opt-in and unsubscribe tokens, the preference centre, and consent that
//! follows the person through identity's merges and splits.

use std::sync::Arc;
use std::time::Duration;

use rapport_proto::consent::v1::consent_service_server::ConsentServiceServer;
use rapport_rpc::{Mounted, ServiceContext, feed_source};
use rapport_storage::{Db, Outbox, sqlx::migrate::Migrator};

use crate::settings::ConsentSettings;
use crate::sql::Exec;
use crate::store::Store;
use crate::tokens::Signer;

pub mod check_cache;
pub mod delivery_feed;
pub mod dsr;
pub mod feed;
pub mod grpc;
pub mod http;
pub mod ledger;
pub mod normalize;
pub mod preferences;
pub mod settings;
pub mod sql;
pub mod store;
pub mod tcf;
pub mod tokens;

/// The service's short name: its config section, database and schema.
pub const NAME: &str = "consent";

static SQLITE: Migrator = rapport_storage::sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = rapport_storage::sqlx::migrate!("./migrations/postgres");

/// Applies the service's migrations (and the shared outbox tables) to `db`.
pub async fn migrate(db: &Db) -> Result<(), rapport_storage::StorageError> {
    rapport_storage::migrate(db, NAME, &SQLITE, &POSTGRES).await
}

/// The token key: configured, or generated once and kept in the service database (shared by replicas).
async fn token_key(db: &Db, settings: &ConsentSettings) -> anyhow::Result<Vec<u8>> {
    if !settings.token_secret.is_empty() {
        return Ok(settings.token_secret.as_bytes().to_vec());
    }
    let generated = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let mut exec = Exec::Db(db);
    exec.run(
        "INSERT INTO consent_keys (name, secret) VALUES ('token', $1) ON CONFLICT DO NOTHING",
        &[generated.into()],
    )
    .await
    .map_err(|e| anyhow::anyhow!("consent: cannot store the token key: {e}"))?;
    let key: Vec<(String,)> = exec
        .all("SELECT secret FROM consent_keys WHERE name = 'token'", &[])
        .await
        .map_err(|e| anyhow::anyhow!("consent: cannot read the token key: {e}"))?;
    Ok(key.into_iter().next().map(|k| k.0.into_bytes()).unwrap_or_default())
}

/// Builds the service on its migrated database.
pub async fn mount(ctx: ServiceContext) -> anyhow::Result<Mounted> {
    let settings: ConsentSettings = ctx.settings.section(NAME)?;
    settings.validate().map_err(anyhow::Error::msg)?;
    let key = token_key(&ctx.db, &settings).await?;
    let base_url = if settings.public_base_url.is_empty() {
        format!("http://{}", ctx.settings.server.http_listen)
    } else {
        settings.public_base_url.trim_end_matches('/').to_string()
    };
    let store = Arc::new(Store {
        db: ctx.db.clone(),
        outbox: Outbox::new(ctx.db.clone()),
        settings: Arc::new(settings),
        clients: ctx.clients.clone(),
        signer: Signer::new(key),
        base_url,
        checks: check_cache::new(ctx.cache.clone(), 100_000),
        aliases: check_cache::aliases(ctx.cache.clone(), 100_000),
    });
    let consent = Arc::new(grpc::Consent { store: store.clone(), shutdown: ctx.shutdown.clone() });
    let server = ConsentServiceServer::from_arc(consent.clone());
    let clients = ctx.clients.clone();
    let db = ctx.db.clone();
    let shutdown = ctx.shutdown.clone();
    let retry = Duration::from_secs(store.settings.request_retry_seconds);
    let deadline_days = store.settings.request_deadline_days;
    Ok(Mounted::new(NAME, ctx.db.clone(), server).with_http(http::router(consent)).with_background(move || {
        let mut tasks = vec![dsr::retrier(db.clone(), clients.clone(), deadline_days, retry, shutdown.clone())];
        // Bounces, complaints and unsubscribes reported to delivery suppress the address.
        if clients.is_wired("delivery") {
            let handler = Arc::new(delivery_feed::DeliveryFeed { store: store.clone() });
            let source = feed_source!(clients, delivery);
            let (db, shutdown) = (db.clone(), shutdown.clone());
            tasks.push(rapport_rpc::feed::consume(
                delivery_feed::CONSUMER,
                db,
                source,
                delivery_feed::topics(),
                handler,
                shutdown,
            ));
        }
        if !clients.is_wired("identity") {
            tracing::info!("identity is neither here nor configured; consent does not follow merges");
            return tasks;
        }
        let handler = Arc::new(feed::IdentityFeed { store });
        tasks.push(rapport_rpc::feed::consume(
            feed::CONSUMER,
            db,
            feed_source!(clients, identity),
            feed::topics(),
            handler,
            shutdown,
        ));
        tasks
    }))
}
