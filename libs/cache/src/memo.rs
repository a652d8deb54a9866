//! Values derived from a database, kept in this process and used only while a shared version has not
//! moved since they were read.
//!
//! The writer commits, then calls [`VersionedMemo::changed`], which moves the version in the [`Cache`]
//! (in Redis when configured, so every replica sees it). A reader takes the version before it reads the
//! database and stores what it read under that version; a read that raced a write is stored under the
//! old version, which no later reader accepts. When the version cannot be read (Redis unreachable) the
//! reader must go to the database. Values also expire after a TTL, which bounds what a version bump
//! that failed after its commit can leave behind (that failure is logged).

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::Cache;

/// A versioned in-process memo of `V` by `K`.
pub struct VersionedMemo<K, V> {
    versions: Cache,
    version_key: &'static str,
    window: Duration,
    reads: moka::sync::Cache<K, Arc<(i64, V)>>,
}

impl<K, V> Clone for VersionedMemo<K, V> {
    fn clone(&self) -> Self {
        Self {
            versions: self.versions.clone(),
            version_key: self.version_key,
            window: self.window,
            reads: self.reads.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for VersionedMemo<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionedMemo").field("version_key", &self.version_key).finish_non_exhaustive()
    }
}

impl<K, V> VersionedMemo<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// At most `capacity` values, each used for at most `ttl`, versioned by `version_key` in `versions`.
    pub fn new(versions: Cache, version_key: &'static str, capacity: u64, ttl: Duration) -> Self {
        Self {
            versions,
            version_key,
            // The version must outlive every value read under it (see `Cache::bump_version`).
            window: (ttl * 4).max(Duration::from_secs(3600)),
            reads: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
        }
    }

    /// The current version; `None` when it cannot be read, and then nothing may be served from memory.
    pub async fn version(&self) -> Option<i64> {
        self.versions.version(self.version_key).await
    }

    /// The value kept for `key` if it was read at `version`.
    pub fn get(&self, key: &K, version: i64) -> Option<Arc<(i64, V)>> {
        self.reads.get(key).filter(|kept| kept.0 == version)
    }

    /// Keeps `value`, read at `version`.
    pub fn put(&self, key: K, version: i64, value: V) {
        self.reads.insert(key, Arc::new((version, value)));
    }

    /// Moves the version on: call it after every committed change to the source.
    pub async fn changed(&self) {
        self.reads.invalidate_all();
        if let Err(e) = self.versions.bump_version(self.version_key, self.window).await {
            tracing::error!(error = %e, key = self.version_key, "a memo version could not be moved; other replicas may use values read before the change until they expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_read_before_a_change_is_never_used_after_it() {
        let memo: VersionedMemo<String, i32> =
            VersionedMemo::new(Cache::local(100), "test:memo", 100, Duration::from_secs(60));
        let before = memo.version().await.expect("local versions answer");
        memo.put("k".into(), before, 1);
        assert_eq!(memo.get(&"k".to_string(), before).map(|v| v.1), Some(1));
        // A reader took the version, then a writer committed and moved it; the reader stores late.
        let raced = memo.version().await.unwrap();
        memo.changed().await;
        memo.put("k".into(), raced, 2);
        let after = memo.version().await.unwrap();
        assert_ne!(after, raced);
        assert!(memo.get(&"k".to_string(), after).is_none(), "a read from before the change was served");
        memo.put("k".into(), after, 3);
        assert_eq!(memo.get(&"k".to_string(), after).map(|v| v.1), Some(3));
    }
}
