//! The delivery service: templates, channel providers, a durable send queue in the service's own
//! database with consent re-checked at send time, status history, tracking links, bounce and complaint
//! intake, call-centre tasks and in-app inboxes. The exactly-once design is in docs/delivery.md.

use std::sync::Arc;
use std::time::Duration;

use rapport_proto::common::v1::Channel;
use rapport_proto::delivery::v1::delivery_service_server::DeliveryServiceServer;
use rapport_rpc::{Mounted, ServiceContext};
use rapport_storage::{Db, Outbox, sqlx::migrate::Migrator};

use crate::core::Core;
use crate::domain::classify::ErrorTable;
use crate::domain::tracking::LinkSigner;
use crate::providers::{Registry, Slot};
use crate::settings::{DeliverySettings, ProviderSettings};
use crate::store::Exec;
use crate::store::channels::Channels;
use crate::store::messages::Messages;
use crate::store::templates::Templates;

pub mod core;
pub mod domain;
pub mod dsr;
pub mod feed;
pub mod grpc;
pub mod http;
pub mod providers;
pub mod settings;
pub mod store;
pub mod worker;

/// The service's short name: its config section, database and schema.
pub const NAME: &str = "delivery";

static SQLITE: Migrator = rapport_storage::sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = rapport_storage::sqlx::migrate!("./migrations/postgres");

/// Applies the service's migrations (and the shared outbox tables) to `db`.
pub async fn migrate(db: &Db) -> Result<(), rapport_storage::StorageError> {
    rapport_storage::migrate(db, NAME, &SQLITE, &POSTGRES).await
}

/// A channel by its configuration name.
pub fn channel_by_name(name: &str) -> Option<Channel> {
    Channel::from_str_name(&format!("CHANNEL_{}", name.to_ascii_uppercase()))
}

/// The tracking key: configured, or generated once and kept in the service database.
async fn tracking_key(db: &Db, settings: &DeliverySettings) -> anyhow::Result<Vec<u8>> {
    if !settings.tracking_secret.is_empty() {
        return Ok(settings.tracking_secret.expose().as_bytes().to_vec());
    }
    let generated = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let mut exec = Exec::Db(db);
    exec.run(
        "INSERT INTO delivery_keys (name, secret) VALUES ('tracking', $1) ON CONFLICT DO NOTHING",
        &[generated.into()],
    )
    .await
    .map_err(|e| anyhow::anyhow!("delivery: cannot store the tracking key: {e}"))?;
    let key: Vec<(String,)> = exec
        .all("SELECT secret FROM delivery_keys WHERE name = 'tracking'", &[])
        .await
        .map_err(|e| anyhow::anyhow!("delivery: cannot read the tracking key: {e}"))?;
    Ok(key.into_iter().next().map(|k| k.0.into_bytes()).unwrap_or_default())
}

/// The providers as configured, or the defaults: a file sink for email, SMS and push, direct-mail files,
/// the call-centre queue and the in-app inbox. Internal channels nobody configured get their defaults too.
fn registry(
    settings: &DeliverySettings,
    data_dir: &std::path::Path,
    channels: &Channels,
    errors: &Arc<ErrorTable>,
) -> anyhow::Result<(Registry, Vec<Arc<providers::internal::DirectMail>>)> {
    let from = domain::address::parse_mailbox(&settings.from_address)
        .ok_or_else(|| anyhow::anyhow!("delivery.from_address: not an email address"))?;
    let mut configured = settings.providers.clone();
    let serves = |list: &[ProviderSettings], c: &str| list.iter().any(|p| p.channels.iter().any(|x| x == c));
    if !serves(&configured, "email") && !serves(&configured, "sms") && !serves(&configured, "push") {
        configured.push(ProviderSettings {
            name: "file-sink".into(),
            kind: "file_sink".into(),
            channels: vec!["email".into(), "sms".into(), "push".into()],
            primary: true,
            ..Default::default()
        });
    }
    for (kind, name, chans) in [
        ("direct_mail_file", "direct-mail", vec!["direct_mail"]),
        ("call_centre_queue", "call-centre", vec!["call_centre", "phone_call"]),
        ("in_app_inbox", "inbox", vec!["in_app"]),
    ] {
        if chans.iter().all(|c| !serves(&configured, c)) {
            configured.push(ProviderSettings {
                name: name.into(),
                kind: kind.into(),
                channels: chans.into_iter().map(String::from).collect(),
                primary: true,
                ..Default::default()
            });
        }
    }
    let mut registry = Registry::default();
    let mut direct_mail = Vec::new();
    for (i, p) in configured.iter().enumerate() {
        let key = format!("delivery.providers[{i}]");
        let provider: Arc<dyn providers::Provider> = match p.kind.as_str() {
            "smtp" => Arc::new(
                providers::smtp::Smtp::new(p, from.clone(), errors.clone())
                    .map_err(|e| anyhow::anyhow!("{key}: {e}"))?,
            ),
            "http_sms" | "http_push" | "webhook" => {
                let flavour = match p.kind.as_str() {
                    "http_sms" => providers::http::Flavour::Sms,
                    "http_push" => providers::http::Flavour::Push,
                    _ => providers::http::Flavour::Webhook,
                };
                Arc::new(
                    providers::http::HttpProvider::new(p, flavour, errors.clone())
                        .map_err(|e| anyhow::anyhow!("{key}: {e}"))?,
                )
            }
            "direct_mail_file" => {
                let dm = Arc::new(providers::internal::DirectMail {
                    name: p.name.clone(),
                    store: channels.clone(),
                    dir: p.dir_under(data_dir, "direct-mail"),
                });
                direct_mail.push(dm.clone());
                dm
            }
            "call_centre_queue" => {
                Arc::new(providers::internal::CallCentre { name: p.name.clone(), store: channels.clone() })
            }
            "in_app_inbox" => Arc::new(providers::internal::Inbox { name: p.name.clone(), store: channels.clone() }),
            _ => Arc::new(providers::file_sink::FileSink::new(&p.name, p.dir_under(data_dir, "outbox"), from.clone())),
        };
        let chans: Vec<Channel> = p.channels.iter().filter_map(|c| channel_by_name(c)).collect();
        registry.add(Slot::new(provider, p.primary, p.rate_per_second), &chans);
    }
    Ok((registry, direct_mail))
}

/// Builds the service on its migrated database. A provider misconfiguration fails here, naming the key.
pub async fn mount(ctx: ServiceContext) -> anyhow::Result<Mounted> {
    let settings: DeliverySettings = ctx.settings.section(NAME)?;
    settings.validate().map_err(anyhow::Error::msg)?;
    let settings = Arc::new(settings);
    let errors = Arc::new(ErrorTable::new(settings.error_rules.clone()));
    let channels = Channels { db: ctx.db.clone() };
    let (registry, direct_mail) = registry(&settings, &ctx.settings.server.data_dir, &channels, &errors)?;
    let base_url = if settings.public_base_url.is_empty() {
        format!("http://{}", ctx.settings.server.http_listen)
    } else {
        settings.public_base_url.trim_end_matches('/').to_string()
    };
    let links = LinkSigner::new(tracking_key(&ctx.db, &settings).await?, &base_url);
    let outbox = Outbox::new(ctx.db.clone());
    let messages = Messages { db: ctx.db.clone(), outbox: outbox.clone() };
    let (core, committers) = Core::new(
        settings.clone(),
        messages,
        Templates { db: ctx.db.clone() },
        channels,
        registry,
        ctx.clients.clone(),
        links,
        errors,
    );
    let core = Arc::new(core);
    let service = grpc::Delivery { core: core.clone(), outbox, shutdown: ctx.shutdown.clone() };
    let max = ctx.settings.server.max_message_bytes;
    let server = DeliveryServiceServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
    let shutdown = ctx.shutdown.clone();
    let run_every = Duration::from_secs(settings.direct_mail_run_seconds.max(1));
    let background_core = core.clone();
    let (clients, db) = (ctx.clients.clone(), ctx.db.clone());
    Ok(Mounted::new(NAME, ctx.db.clone(), server).with_http(http::router(core)).with_background(move || {
        let core = background_core;
        let mut tasks = committers.spawn(core.clone(), shutdown.clone());
        tasks.push(worker::spawn(core.clone(), shutdown.clone()));
        tasks.push(worker::spawn_depth(core.clone(), shutdown.clone()));
        if clients.is_wired("consent") {
            let handler = Arc::new(feed::FollowConsent { core: core.clone() });
            let source = rapport_rpc::feed_source!(clients, consent);
            tasks.push(rapport_rpc::feed::consume(
                feed::CONSUMER,
                db,
                source,
                feed::topics(),
                handler,
                shutdown.clone(),
            ));
        }
        for dm in direct_mail {
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(run_every) => {}
                    }
                    match dm.close_run().await {
                        Ok(Some(run)) => tracing::info!(provider = %dm.name, run = %run, "direct-mail run written"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(provider = %dm.name, error = %e, "direct-mail run not written"),
                    }
                }
            }));
        }
        tasks
    }))
}
