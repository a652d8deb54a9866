//! The Check cache: what a Check read from the ledger, kept in process per question (customer, contact
//! point, channel, purpose) and used only while the ledger's version has not moved.
//!
//! Every write to the ledger (records, suppressions, tokens spent, merges, splits, erasures) moves the
//! version after its transaction commits; with Redis configured the version is shared by every replica,
//! so a withdrawal is seen by the very next Check anywhere ([`rapport_cache::VersionedMemo`]).

use std::time::Duration;

use rapport_cache::{Cache, VersionedMemo};

use crate::store::{Loaded, Scope};

/// How long a cached read may be used at most.
pub const TTL: Duration = Duration::from_secs(30);

/// Cached ledger reads for Check.
pub type CheckCache = VersionedMemo<String, (Scope, Loaded)>;

/// The cache of at most `capacity` reads.
pub fn new(versions: Cache, capacity: u64) -> CheckCache {
    VersionedMemo::new(versions, "consent:ledger", capacity, TTL)
}

/// Cached alias resolutions (customer id to the id it was merged into), moved with the ledger's version.
pub type AliasCache = VersionedMemo<String, String>;

/// The alias cache of at most `capacity` ids, on the same version as the Check cache.
pub fn aliases(versions: Cache, capacity: u64) -> AliasCache {
    VersionedMemo::new(versions, "consent:ledger", capacity, TTL)
}
