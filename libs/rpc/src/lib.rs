//! The gRPC plumbing every service shares.
//!
//! - [`Transport`] and [`Clients`]: one client type per service that either calls the service in this
//!   process (no network hop, no serialisation to a socket) or over a tonic channel, so that all-in-one
//!   and split deployments run the same code.
//! - [`layers`]: the server-side tower layers: telemetry and metrics per rpc, and overload protection.
//! - [`limits`]: rate limits per caller with a retry hint.
//! - [`feed`]: a service's transactional outbox served as a resumable `Subscribe` server stream.
//! - [`ServiceContext`] and [`Mounted`]: what a service is given at start-up and what it hands back.

mod clients;
pub mod convert;
pub mod feed;
pub mod layers;
pub mod limits;
mod mount;

pub use clients::{BoxError, Clients, Transport, TransportError, local_transport, remote_transport};
pub use mount::{Mounted, ServiceContext};
