//! Starting and stopping the process: listeners, storage, clients, the gRPC and HTTP servers, and the
//! background work of each service.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use rapport_auth::{AuthLayer, Authenticator, ensure_admin_token};
use rapport_cache::{Cache, CacheSettings};
use rapport_config::{SERVICE_NAMES, Settings};
use rapport_proto::common::v1::diagnostics_service_server::DiagnosticsServiceServer;
use rapport_rpc::{
    Clients, Mounted, ServiceContext,
    layers::{OverloadLayer, TelemetryLayer},
    remote_transport,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;

use crate::{diagnostics::Diagnostics, http_api, services};

/// A running Rapport process.
pub struct Server {
    /// Where gRPC is served (useful when the configuration asked for port 0).
    pub grpc_addr: SocketAddr,
    /// Where HTTP is served.
    pub http_addr: SocketAddr,
    /// The admin bearer token.
    pub admin_token: String,
    /// The file the admin token is kept in.
    pub admin_token_path: PathBuf,
    /// Whether this start created the admin token.
    pub admin_token_created: bool,
    /// The services running here.
    pub services: Vec<&'static str>,
    /// The clients of every service this process can reach, local or remote.
    pub clients: Clients,
    grace: Duration,
    health: tonic_health::server::HealthReporter,
    grpc_names: Vec<&'static str>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("{key}: cannot listen on {addr}: {e}"))
}

fn read_secret_file(key: &str, path: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{key}: cannot read {path}: {e}"))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        anyhow::bail!("{key}: {path} is empty");
    }
    Ok(text)
}

/// Starts every enabled service. Returns once both ports listen and every service is migrated and
/// mounted; configuration, storage and port problems are returned as errors that name the key.
pub async fn start(settings: Settings) -> anyhow::Result<Server> {
    let settings = Arc::new(settings);
    let data_dir = &settings.server.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("server.data_dir: cannot create {}: {e}", data_dir.display()))?;

    let admin_token_path = services::admin_token_path(&settings);
    let (admin_token, admin_token_created) = ensure_admin_token(&admin_token_path)?;
    let auth = Arc::new(Authenticator::from_settings(&admin_token, &settings.auth)?);

    // Ports first, so that a port in use is reported before anything else happens.
    let grpc_listener = bind("server.grpc_listen", &settings.server.grpc_listen).await?;
    let http_listener = bind("server.http_listen", &settings.server.http_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let cache = Cache::connect(&CacheSettings {
        url: settings.cache.url.expose().to_string(),
        capacity: settings.cache.capacity,
        timeout: Duration::from_millis(settings.cache.redis_timeout_ms),
    })
    .await?;

    let enabled = settings.enabled_services();
    let clients = Clients::new(settings.server.max_message_bytes);
    let client_token = match settings.clients.token_file.as_str() {
        "" => admin_token.clone(),
        path => read_secret_file("clients.token_file", path)?,
    };
    for name in SERVICE_NAMES {
        if let Some(addr) = settings.clients.address_of(name)
            && !enabled.contains(&name)
        {
            let transport = remote_transport(addr, &client_token, Duration::from_millis(settings.clients.timeout_ms))
                .with_context(|| format!("clients.{name}"))?;
            clients.set(name, transport);
        }
    }

    let shutdown = CancellationToken::new();
    let mut mounted: Vec<Mounted> = Vec::new();
    for name in &enabled {
        let db = services::open_db(&settings, name).await?;
        services::migrate(name, &db).await?;
        let ctx = ServiceContext {
            settings: settings.clone(),
            db,
            cache: cache.clone(),
            clients: clients.clone(),
            shutdown: shutdown.child_token(),
        };
        let m = services::mount(name, ctx).await?;
        clients.set(name, m.local.clone());
        mounted.push(m);
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    for m in &mounted {
        health.set_service_status(m.grpc_name, ServingStatus::Serving).await;
    }
    health.set_service_status("", ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rapport_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let max_message = settings.server.max_message_bytes;
    let mut routes = RoutesBuilder::default();
    routes.add_service(health_service);
    routes.add_service(reflection);
    routes.add_service(
        DiagnosticsServiceServer::new(Diagnostics)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
    );
    for m in &mut mounted {
        m.register(&mut routes);
    }

    let layers = ServiceBuilder::new()
        .layer(OverloadLayer::new(settings.server.max_concurrent_requests))
        .layer(TelemetryLayer)
        .layer(AuthLayer::new(auth))
        .layer(rapport_rpc::limits::RateLimitLayer::new(&settings.limits))
        .into_inner();
    // The builder's tcp_nodelay applies only to listeners tonic binds itself; an accepted stream keeps
    // Nagle's algorithm unless the incoming sets it, and a response flushed in two writes then waits
    // for the client's delayed ACK (40 ms on Linux).
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc = tonic::transport::Server::builder()
        .timeout(Duration::from_millis(settings.server.request_timeout_ms))
        .layer(layers)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());

    let mut router =
        http_api::router(http_api::HttpState::new(mounted.iter().map(|m| (m.name, m.db.clone())).collect()));
    for m in &mut mounted {
        if let Some(r) = m.http.take() {
            router = router.merge(r);
        }
    }
    let http = axum::serve(http_listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned());

    let mut background = Vec::new();
    for m in &mut mounted {
        background.extend(m.start_background());
    }
    // The retention of each service's outbox (storage.outbox_retention_hours; 0 keeps it forever).
    if let Some(retention) = settings.outbox_retention() {
        let interval = Duration::from_secs(settings.storage.outbox_prune_interval_seconds);
        for m in &mounted {
            let outbox = rapport_storage::Outbox::new(m.db.clone());
            background.push(rapport_storage::spawn_pruner(m.name, outbox, retention, interval, shutdown.child_token()));
        }
    }
    let dbs: Vec<_> = mounted.iter().map(|m| m.db.clone()).collect();
    let grpc_names = mounted.iter().map(|m| m.grpc_name).collect();

    let task = tokio::spawn(async move {
        let (grpc, http) = tokio::join!(grpc, async move { http.await });
        for task in background {
            // Background work watches the shutdown token; give it a moment to finish its item.
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("a background task did not stop within 5 s");
            }
        }
        for db in dbs {
            db.close().await;
        }
        grpc.context("grpc server")?;
        http.context("http server")?;
        Ok(())
    });

    tracing::info!(grpc = %grpc_addr, http = %http_addr, services = ?enabled, "rapport is serving");
    Ok(Server {
        grpc_addr,
        http_addr,
        admin_token,
        admin_token_path,
        admin_token_created,
        services: enabled,
        clients,
        grace: Duration::from_secs(settings.server.shutdown_grace_seconds),
        health,
        grpc_names,
        shutdown,
        task,
    })
}

impl Server {
    /// Stops taking calls, lets in-flight calls finish within the grace period, and stops.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        for name in &self.grpc_names {
            self.health.set_service_status(*name, ServingStatus::NotServing).await;
        }
        self.health.set_service_status("", ServingStatus::NotServing).await;
        self.shutdown.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(self.grace, self.task).await {
            Ok(joined) => joined.context("server task")?,
            Err(_) => {
                tracing::warn!(
                    grace_seconds = self.grace.as_secs(),
                    "calls still in flight after the grace period, stopping"
                );
                abort.abort();
                Ok(())
            }
        }
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        self.run_until(StopSignal::install()).await
    }

    /// Serves until `signal` arrives (it may have arrived already, during start-up), then shuts down.
    pub async fn run_until(self, signal: StopSignal) -> anyhow::Result<()> {
        signal.received().await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment it is installed: install it before starting
/// the server, and a SIGTERM sent while the process is still starting (Kubernetes stopping a pod that is
/// not ready yet) is a clean shutdown as soon as the start completes, not death by the default action.
pub struct StopSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignal {
    /// Starts listening; must be called inside the runtime.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = signal(SignalKind::terminate()).ok().zip(signal(SignalKind::interrupt()).ok());
            Self { signals }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Waits for the first of them.
    pub async fn received(self) {
        #[cfg(unix)]
        match self.signals {
            Some((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
