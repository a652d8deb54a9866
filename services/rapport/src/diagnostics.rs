//! `rapport.common.v1.DiagnosticsService`: an empty round trip through the whole server stack (auth,
//! telemetry, overload protection), the latency floor that benchmarks are read against.

use rapport_proto::common::v1::{PingRequest, PingResponse, diagnostics_service_server::DiagnosticsService};

/// The diagnostics rpcs.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics;

#[tonic::async_trait]
impl DiagnosticsService for Diagnostics {
    async fn ping(&self, request: tonic::Request<PingRequest>) -> Result<tonic::Response<PingResponse>, tonic::Status> {
        let payload = request.into_inner().payload;
        Ok(tonic::Response::new(PingResponse { payload }))
    }
}
