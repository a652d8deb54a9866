//! Generated code of the rapport contracts in `proto/`, with the descriptor set used by server reflection
//! and the scope each rpc requires.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/rapport.rs"));
include!(concat!(env!("OUT_DIR"), "/method_scopes.rs"));

pub use rapport::*;

/// The encoded `FileDescriptorSet` of every contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rapport_descriptor.bin"));

/// The scope a method path (`/package.Service/Method`) requires, if the method is one of ours.
pub fn required_scope(path: &str) -> Option<&'static str> {
    METHOD_SCOPES.iter().find(|(p, _)| *p == path).map(|(_, s)| *s)
}
