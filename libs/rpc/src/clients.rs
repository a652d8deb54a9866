use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
    time::Duration,
};

use rapport_auth::Principal;
use rapport_proto::{
    consent::v1::consent_service_client::ConsentServiceClient,
    decision::v1::decision_service_client::DecisionServiceClient,
    delivery::v1::delivery_service_client::DeliveryServiceClient,
    identity::v1::identity_service_client::IdentityServiceClient,
    profile::v1::profile_service_client::ProfileServiceClient,
};
use tonic::body::Body;
use tower::{Service, ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a [`Transport`]: a named type rather than a bare trait object, so that futures of
/// generated clients stay `Send` in higher-ranked contexts (boxed closures, spawned tasks).
#[derive(Debug)]
pub struct TransportError(pub BoxError);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// How a client reaches a service: in process or over the network. Generated tonic clients take it as
/// their channel, so calling code does not know which.
pub type Transport = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, TransportError>;

/// A transport that calls `server` (a generated `...Server<Impl>`) in this process. Requests carry an
/// internal principal, since they never crossed the network.
pub fn local_transport<S>(server: S) -> Transport
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let principal = Principal::internal("in-process");
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .map_request(move |mut req: http::Request<Body>| {
                req.extensions_mut().insert(principal.clone());
                req
            })
            .service(server.map_err(|e: Infallible| -> TransportError { match e {} })),
    )
}

/// A transport to a service at `url` (`http://host:port`), sending `token` as its bearer token and the
/// current trace context with every call. The connection is made lazily and re-made after failures.
pub fn remote_transport(url: &str, token: &str, timeout: Duration) -> anyhow::Result<Transport> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("client address `{url}`: {e}"))?
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    let channel = endpoint.connect_lazy();
    let bearer = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("clients.token_file: the token holds characters not allowed in a header"))?;
    Ok(BoxCloneSyncService::new(
        ServiceBuilder::new()
            .map_request(move |mut req: http::Request<Body>| {
                req.headers_mut().insert(http::header::AUTHORIZATION, bearer.clone());
                rapport_telemetry::inject_current_context(req.headers_mut());
                req
            })
            .service(channel.map_err(|e| TransportError(Box::new(e)))),
    ))
}

const SERVICES: [&str; 5] = rapport_config::SERVICE_NAMES;

/// The transports to every service, filled at start-up: local ones as services are mounted, remote
/// ones from `[clients]`. Services get it before the others exist, which breaks dependency cycles
/// (consent fans data-subject requests out to profile, which checks consent).
#[derive(Clone, Default)]
pub struct Clients {
    slots: Arc<[OnceLock<Transport>; 5]>,
    max_message_bytes: Arc<OnceLock<usize>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wired: Vec<_> =
            SERVICES.iter().zip(self.slots.iter()).filter(|(_, s)| s.get().is_some()).map(|(n, _)| *n).collect();
        f.debug_struct("Clients").field("wired", &wired).finish()
    }
}

macro_rules! typed_client {
    ($fn:ident, $name:literal, $client:ident) => {
        #[doc = concat!("A client of the ", $name, " service, or UNAVAILABLE when it is neither here nor configured.")]
        pub fn $fn(&self) -> Result<$client<Transport>, tonic::Status> {
            let limit = self.max_message_bytes.get().copied().unwrap_or(4 * 1024 * 1024);
            Ok($client::new(self.transport($name)?).max_decoding_message_size(limit).max_encoding_message_size(limit))
        }
    };
}

impl Clients {
    /// An empty registry.
    pub fn new(max_message_bytes: usize) -> Self {
        let clients = Self::default();
        let _ = clients.max_message_bytes.set(max_message_bytes);
        clients
    }

    /// Wires `service` to `transport`; the first wiring wins.
    pub fn set(&self, service: &str, transport: Transport) {
        if let Some(i) = SERVICES.iter().position(|s| *s == service) {
            let _ = self.slots[i].set(transport);
        }
    }

    /// Whether `service` can be called.
    pub fn is_wired(&self, service: &str) -> bool {
        SERVICES.iter().position(|s| *s == service).is_some_and(|i| self.slots[i].get().is_some())
    }

    /// The transport to `service`.
    pub fn transport(&self, service: &str) -> Result<Transport, tonic::Status> {
        SERVICES.iter().position(|s| *s == service).and_then(|i| self.slots[i].get().cloned()).ok_or_else(|| {
            tonic::Status::unavailable(format!(
                "the {service} service is not running in this process and clients.{service} is not configured"
            ))
        })
    }

    typed_client!(identity, "identity", IdentityServiceClient);
    typed_client!(consent, "consent", ConsentServiceClient);
    typed_client!(profile, "profile", ProfileServiceClient);
    typed_client!(decision, "decision", DecisionServiceClient);
    typed_client!(delivery, "delivery", DeliveryServiceClient);
}
