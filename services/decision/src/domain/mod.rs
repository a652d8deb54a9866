//! Pure decision logic: no I/O, so every rule of arbitration, learning, policy and statistics is tested
//! on its own.

pub mod document;
pub mod hash;
pub mod offers;
pub mod policy;
pub mod stats;
pub mod thompson;
