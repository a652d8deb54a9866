//! The five services by name: opening their databases, migrating and mounting them.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use rapport_config::Settings;
use rapport_rpc::{Mounted, ServiceContext};
use rapport_storage::{Db, PoolSettings};

/// Opens the database of `service` as configured.
pub async fn open_db(settings: &Settings, service: &str) -> anyhow::Result<Db> {
    let pool = PoolSettings {
        max_connections: settings.storage.max_connections,
        acquire_timeout: Duration::from_secs(settings.storage.acquire_timeout_seconds),
    };
    let db = rapport_storage::connect(settings.storage.url.expose(), &settings.server.data_dir, service, &pool).await?;
    Ok(db)
}

/// Applies the migrations of `service` to `db`.
pub async fn migrate(service: &str, db: &Db) -> anyhow::Result<()> {
    match service {
        "identity" => rapport_identity::migrate(db).await?,
        "consent" => rapport_consent::migrate(db).await?,
        "profile" => rapport_profile::migrate(db).await?,
        "decision" => rapport_decision::migrate(db).await?,
        "delivery" => rapport_delivery::migrate(db).await?,
        other => anyhow::bail!("unknown service `{other}`"),
    }
    Ok(())
}

/// Opens, migrates and mounts `service`.
pub async fn mount(service: &str, ctx: ServiceContext) -> anyhow::Result<Mounted> {
    let mounted = match service {
        "identity" => rapport_identity::mount(ctx).await,
        "consent" => rapport_consent::mount(ctx).await,
        "profile" => rapport_profile::mount(ctx).await,
        "decision" => rapport_decision::mount(ctx).await,
        "delivery" => rapport_delivery::mount(ctx).await,
        other => anyhow::bail!("unknown service `{other}`"),
    };
    mounted.with_context(|| format!("starting the {service} service"))
}

/// Runs the migrations of the enabled services and returns (for `rapport migrate`).
pub async fn migrate_all(settings: &Settings) -> anyhow::Result<Vec<&'static str>> {
    let services = settings.enabled_services();
    for service in &services {
        let db = open_db(settings, service).await?;
        migrate(service, &db).await?;
        db.close().await;
    }
    Ok(services)
}

/// The admin token file configured, or `<data_dir>/admin.token`.
pub fn admin_token_path(settings: &Settings) -> std::path::PathBuf {
    if settings.auth.admin_token_file.is_empty() {
        settings.server.data_dir.join("admin.token")
    } else {
        Path::new(&settings.auth.admin_token_file).to_path_buf()
    }
}

/// Shared handle type used by the server.
pub type SharedSettings = Arc<Settings>;
