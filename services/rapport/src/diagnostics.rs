//! `rapport.common.v1.DiagnosticsService`: an empty round trip through the whole server stack (auth,
//! telemetry, overload protection), the latency floor that benchmarks are read against.

use rapport_auth::Principal;
use rapport_proto::common::v1::{PingRequest, PingResponse, diagnostics_service_server::DiagnosticsService};

/// The largest payload `Ping` echoes.
pub const MAX_PING_PAYLOAD: usize = 64 * 1024;

/// The diagnostics rpcs.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics;

#[tonic::async_trait]
impl DiagnosticsService for Diagnostics {
    async fn ping(&self, request: tonic::Request<PingRequest>) -> Result<tonic::Response<PingResponse>, tonic::Status> {
        let principal = request.extensions().get::<Principal>().map(|p| p.name.clone()).unwrap_or_default();
        let payload = request.into_inner().payload;
        if payload.len() > MAX_PING_PAYLOAD {
            return Err(tonic::Status::invalid_argument(format!(
                "payload: {} bytes is more than the {MAX_PING_PAYLOAD} allowed",
                payload.len()
            )));
        }
        Ok(tonic::Response::new(PingResponse { payload, principal }))
    }
}
