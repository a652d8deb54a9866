//! Server-side tower layers, outermost first: [`OverloadLayer`] refuses work beyond the configured
//! concurrency at once with RESOURCE_EXHAUSTED instead of queueing it, and [`TelemetryLayer`] opens a
//! span per rpc (child of the caller's trace) and records the request metrics.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::Semaphore;
use tower::{Layer, Service};
use tracing::Instrument;

/// Refuses calls beyond `limit` in flight with RESOURCE_EXHAUSTED.
#[derive(Clone)]
pub struct OverloadLayer {
    permits: Arc<Semaphore>,
}

impl OverloadLayer {
    /// At most `limit` calls at once.
    pub fn new(limit: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit.max(1))) }
    }
}

impl<S> Layer<S> for OverloadLayer {
    type Service = OverloadService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OverloadService { inner, permits: self.permits.clone() }
    }
}

/// The service made by [`OverloadLayer`].
#[derive(Clone)]
pub struct OverloadService<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<http::Request<B>> for OverloadService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!("rapport_grpc_shed_total").increment(1);
            let status = tonic::Status::resource_exhausted("server overloaded: too many calls in flight, retry later");
            return futures::future::ready(Ok(status.into_http())).boxed();
        };
        let fut = self.inner.call(req);
        async move {
            let res = fut.await;
            drop(permit);
            res
        }
        .boxed()
    }
}

/// A span and request metrics per rpc: `rapport_grpc_requests_total{service,method,code}` and
/// `rapport_grpc_request_duration_seconds{service,method}`.
#[derive(Clone, Default)]
pub struct TelemetryLayer;

impl<S> Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService { inner }
    }
}

/// The service made by [`TelemetryLayer`].
#[derive(Clone)]
pub struct TelemetryService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TelemetryService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
        let (service, method) = (service.to_string(), method.to_string());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        rapport_telemetry::set_parent_from_headers(&span, req.headers());
        let start = Instant::now();
        let fut = self.inner.call(req);
        let record_span = span.clone();
        async move {
            let res = fut.await;
            // Errors of unary calls travel in the headers (trailers-only); success in the trailers.
            let code = match &res {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                Err(_) => tonic::Code::Internal as i32,
            };
            record_span.record("rpc.grpc.status_code", code);
            let code_name = format!("{:?}", tonic::Code::from_i32(code));
            metrics::counter!("rapport_grpc_requests_total", "service" => service.clone(), "method" => method.clone(), "code" => code_name)
                .increment(1);
            metrics::histogram!("rapport_grpc_request_duration_seconds", "service" => service, "method" => method)
                .record(start.elapsed().as_secs_f64());
            res
        }
        .instrument(span)
        .boxed()
    }
}
