//! The HTTP port: `/healthz` (the process is up), `/readyz` (every service's database answers) and
//! `/metrics` (Prometheus). Services add their own routes (tracking, unsubscribe).

use std::sync::{Arc, OnceLock};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rapport_storage::Db;

/// What the HTTP handlers need.
#[derive(Clone)]
pub struct HttpState {
    dbs: Arc<Vec<(&'static str, Db)>>,
    metrics: Option<PrometheusHandle>,
}

impl HttpState {
    /// State for the services running here.
    pub fn new(dbs: Vec<(&'static str, Db)>) -> Self {
        Self { dbs: Arc::new(dbs), metrics: prometheus() }
    }
}

/// The process-wide Prometheus recorder, installed once.
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

/// The base routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let mut failing = Vec::new();
    for (name, db) in state.dbs.iter() {
        if db.ping().await.is_err() {
            failing.push(*name);
        }
    }
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: database of {} unreachable\n", failing.join(", ")))
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    match &state.metrics {
        Some(handle) => {
            (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
                .into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder unavailable\n").into_response(),
    }
}
