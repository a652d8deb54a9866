//! Pure delivery logic, no I/O: recipient addresses, template rendering, SMS segments, the provider
//! error table, retry backoff, quiet hours and signed tracking links.

pub mod address;
pub mod backoff;
pub mod classify;
pub mod quiet;
pub mod sms;
pub mod template;
pub mod tracking;
