//! Queries written once with `$1` placeholders: the shared helper of `rapport-storage`.

pub use rapport_storage::sql::{Exec, V};
