//! The Rapport process: starts the selected services on one gRPC port and one HTTP port, wires the
//! clients between them (in process when a service runs here, over gRPC when `[clients]` names it),
//! and drains on shutdown. `main.rs` is the command line around it; the testkit starts it on port 0.

pub mod bench;
pub mod bench_decide;
pub mod bench_send;
pub mod demo;
pub mod diagnostics;
pub mod http_api;
pub mod http_client;
pub mod server;
pub mod services;

pub use server::{Server, start};
