use std::{convert::Infallible, sync::Arc};

use rapport_cache::Cache;
use rapport_config::Settings;
use rapport_storage::Db;
use tokio_util::sync::CancellationToken;
use tonic::{body::Body, server::NamedService, service::RoutesBuilder};
use tower::Service;

use crate::{Clients, Transport, local_transport};

/// What a service is given when the process starts it.
#[derive(Clone)]
pub struct ServiceContext {
    /// The whole configuration; a service reads its own section with `settings.section(name)`.
    pub settings: Arc<Settings>,
    /// The service's own database, migrated.
    pub db: Db,
    /// The shared cache and counters.
    pub cache: Cache,
    /// Clients of the other services, local or remote.
    pub clients: Clients,
    /// Cancelled when the process shuts down; background work stops taking new work.
    pub shutdown: CancellationToken,
}

type Register = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;
type Background = Box<dyn FnOnce() -> Vec<tokio::task::JoinHandle<()>> + Send>;

/// What a service hands back: its gRPC server, an in-process transport to it, its HTTP routes and the
/// background work to start once every client is wired.
pub struct Mounted {
    /// Short name: identity, consent, profile, decision, delivery.
    pub name: &'static str,
    /// Full gRPC service name, e.g. `rapport.identity.v1.IdentityService`, used by health checks.
    pub grpc_name: &'static str,
    /// The in-process transport to this service.
    pub local: Transport,
    /// Extra HTTP routes on the HTTP port (tracking, unsubscribe).
    pub http: Option<axum::Router>,
    /// The service's database, for readiness.
    pub db: Db,
    register: Register,
    background: Option<Background>,
}

impl Mounted {
    /// Mounts `server`, a generated `...Server<Impl>`.
    pub fn new<S>(name: &'static str, db: Db, server: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let local = local_transport(server.clone());
        Self {
            name,
            grpc_name: S::NAME,
            local,
            http: None,
            db,
            register: Box::new(move |routes: &mut RoutesBuilder| {
                routes.add_service(server);
            }),
            background: None,
        }
    }

    /// Adds HTTP routes served on the HTTP port.
    pub fn with_http(mut self, router: axum::Router) -> Self {
        self.http = Some(router);
        self
    }

    /// Adds work started after every client is wired (consumers, workers, timers).
    pub fn with_background(
        mut self,
        start: impl FnOnce() -> Vec<tokio::task::JoinHandle<()>> + Send + 'static,
    ) -> Self {
        self.background = Some(Box::new(start));
        self
    }

    /// Adds the gRPC server to `routes`.
    pub fn register(&mut self, routes: &mut RoutesBuilder) {
        let register = std::mem::replace(&mut self.register, Box::new(|_| {}));
        register(routes);
    }

    /// Starts the background work.
    pub fn start_background(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        self.background.take().map(|start| start()).unwrap_or_default()
    }
}
