//! A cache and atomic windowed counters, in process by default and in Redis when `cache.url` is a
//! `redis://` URL.
//!
//! The cache is an accelerator: when Redis fails, reads miss and writes are dropped, with a warning, so
//! callers fall back to their database. Invalidation and counters report failures, because callers must
//! decide: a profile write whose invalidation failed must not let a stale copy be served, and a
//! marketing frequency cap that cannot be counted fails closed.
//!
//! Sliding-window limits ([`Cache::admit`], [`WindowLimit`]) check and count several limits at once
//! (contact policies, offer caps).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use redis::{AsyncCommands, aio::ConnectionManager};

mod limits;
mod memo;
pub use limits::{Admission, WindowLimit};
pub use memo::VersionedMemo;

/// A cache or counter backend failure.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// `cache.url` is malformed.
    #[error("cache.url: {0}")]
    BadUrl(String),
    /// Redis did not answer in time or refused.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

impl rapport_errors::DomainError for CacheError {
    fn error_code(&self) -> rapport_errors::ErrorCode {
        match self {
            CacheError::BadUrl(_) => rapport_errors::ErrorCode::InvalidArgument,
            CacheError::Unavailable(_) => rapport_errors::ErrorCode::Unavailable,
        }
    }
}

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        CacheError::Unavailable(e.to_string())
    }
}

/// Settings for [`Cache::connect`].
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Empty for in-process, or a `redis://` URL.
    pub url: String,
    /// Entries kept in process.
    pub capacity: u64,
    /// How long a Redis command may take.
    pub timeout: Duration,
}

#[derive(Clone)]
struct Entry {
    value: Bytes,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The shared store behind the cache and the counters.
#[derive(Clone)]
pub struct Cache(Store);

#[derive(Clone)]
enum Store {
    /// In this process only: right for one process (all-in-one, tests).
    Local { entries: moka::future::Cache<String, Entry>, counters: LocalCounters, windows: limits::LocalWindows },
    /// Shared by every replica.
    Redis(Redis),
}

/// How long the cache is bypassed after a Redis command failed or timed out, before a call tries it again.
const REDIS_COOLDOWN: Duration = Duration::from_secs(1);

/// A Redis connection with a deadline per command and a breaker: after a failure every command fails at
/// once for [`REDIS_COOLDOWN`] instead of each waiting out its timeout (a call touches the cache several
/// times; a frozen Redis would otherwise cost each of them the full timeout).
#[derive(Clone)]
struct Redis {
    conn: ConnectionManager,
    timeout: Duration,
    open_until: Arc<Mutex<Option<Instant>>>,
    /// Version bumps that failed (version key to its window), retried until Redis takes them.
    unbumped: Arc<Mutex<HashMap<String, Duration>>>,
}

/// How often failed version bumps are retried.
const BUMP_RETRY: Duration = Duration::from_millis(100);

impl Redis {
    /// Runs one command (or pipeline or script) on the connection, within the timeout and the breaker.
    async fn call<T, F, Fut>(&self, command: F) -> Result<T, CacheError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        {
            let mut open = self.open_until.lock().unwrap_or_else(|p| p.into_inner());
            match *open {
                Some(until) if Instant::now() < until => {
                    return Err(CacheError::Unavailable("bypassed after a recent failure".into()));
                }
                Some(_) => *open = None,
                None => {}
            }
        }
        let result = match tokio::time::timeout(self.timeout, command(self.conn.clone())).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => CacheError::from(e),
            Err(_) => CacheError::Unavailable(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        let mut open = self.open_until.lock().unwrap_or_else(|p| p.into_inner());
        if open.is_none() {
            tracing::warn!(error = %result, cooldown_ms = REDIS_COOLDOWN.as_millis() as u64, "redis failed; bypassing the cache, counters fail closed");
        }
        *open = Some(Instant::now() + REDIS_COOLDOWN);
        metrics::counter!("rapport_cache_redis_failures_total").increment(1);
        Err(result)
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Store::Local { .. } => "Cache::Local",
            Store::Redis(_) => "Cache::Redis",
        })
    }
}

impl Cache {
    /// An in-process cache of `capacity` entries.
    pub fn local(capacity: u64) -> Self {
        let entries = moka::future::Cache::builder().max_capacity(capacity).expire_after(PerEntryTtl).build();
        Cache(Store::Local { entries, counters: LocalCounters::default(), windows: limits::LocalWindows::default() })
    }

    /// The configured backend; a Redis URL must answer at start-up.
    pub async fn connect(settings: &CacheSettings) -> Result<Self, CacheError> {
        if settings.url.is_empty() {
            return Ok(Self::local(settings.capacity));
        }
        if !(settings.url.starts_with("redis://") || settings.url.starts_with("rediss://")) {
            return Err(CacheError::BadUrl("expected empty (in-process) or redis://host:port".into()));
        }
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| CacheError::BadUrl(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            settings.timeout.max(Duration::from_secs(2)),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| CacheError::Unavailable("timed out connecting to redis".into()))??;
        Ok(Cache(Store::Redis(Redis {
            conn,
            timeout: settings.timeout,
            open_until: Arc::default(),
            unbumped: Arc::default(),
        })))
    }

    /// Whether the store is shared between processes.
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Store::Redis(_))
    }

    /// The cached value, or `None` on a miss or when Redis fails.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        match &self.0 {
            Store::Local { entries, .. } => entries.get(key).await.map(|e| e.value),
            Store::Redis(redis) => {
                let read = redis.call(|mut c| async move { c.get::<_, Option<Vec<u8>>>(key).await }).await;
                read.ok().flatten().map(Bytes::from)
            }
        }
    }

    /// Stores a value for `ttl`; a Redis failure is logged and ignored.
    pub async fn set(&self, key: &str, value: Bytes, ttl: Duration) {
        match &self.0 {
            Store::Local { entries, .. } => entries.insert(key.to_string(), Entry { value, ttl }).await,
            Store::Redis(redis) => {
                let ms = ttl.as_millis().max(1) as u64;
                let _ = redis.call(|mut c| async move { c.pset_ex::<_, _, ()>(key, value.as_ref(), ms).await }).await;
            }
        }
    }

    /// Removes a key. Callers that cache derived state must treat an error as "the cache may be stale".
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        match &self.0 {
            Store::Local { entries, .. } => {
                entries.invalidate(key).await;
                Ok(())
            }
            Store::Redis(redis) => redis.call(|mut c| async move { c.del::<_, ()>(key).await }).await,
        }
    }

    /// Adds `by` to the counter `key` in the fixed window that started when the key was first counted,
    /// and returns the new total. Atomic across every process sharing the store.
    pub async fn incr_window(&self, key: &str, by: i64, window: Duration) -> Result<i64, CacheError> {
        match &self.0 {
            Store::Local { counters, .. } => Ok(counters.incr(key, by, window)),
            Store::Redis(redis) => {
                // INCRBY and PEXPIRE NX in one transaction: the window starts at the first increment.
                let ms = window.as_millis().max(1) as u64;
                let mut pipe = redis::pipe();
                pipe.atomic().incr(key, by).cmd("PEXPIRE").arg(key).arg(ms).arg("NX").ignore();
                let (total,): (i64,) = redis.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
                Ok(total)
            }
        }
    }

    /// The current value of a counter (0 when absent or expired).
    pub async fn counter(&self, key: &str) -> Result<i64, CacheError> {
        match &self.0 {
            Store::Local { counters, .. } => Ok(counters.get(key)),
            Store::Redis(redis) => {
                let v: Option<i64> = redis.call(|mut c| async move { c.get(key).await }).await?;
                Ok(v.unwrap_or(0))
            }
        }
    }

    /// Reads a versioned entry: the current version of `key` and the value cached for that version.
    /// `None` when the cache cannot be used (Redis unreachable): the caller reads its database.
    ///
    /// Versioned entries make invalidation safe against a concurrent reader: a reader that loaded the
    /// old value before a change stores it under the old version, which no later reader asks for,
    /// because [`Cache::bump_version`] moved the version on after the change committed.
    pub async fn get_versioned(&self, key: &str) -> Option<(i64, Option<Bytes>)> {
        let version = self.version(key).await?;
        let value = self.get(&format!("{key}@{version}")).await;
        Some((version, value))
    }

    /// The current version of `key` alone; `None` when it cannot be read.
    ///
    /// Also `None` while a bump of `key` made by this process has not reached Redis yet: the version read
    /// would be the one from before the change, under which a stale value may be cached.
    pub async fn version(&self, key: &str) -> Option<i64> {
        let version_key = format!("{key}#v");
        if let Store::Redis(redis) = &self.0
            && redis.unbumped.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&version_key)
        {
            return None;
        }
        self.counter(&version_key).await.ok()
    }

    /// Caches `value` as `key` at `version` (as read by [`Cache::get_versioned`]).
    pub async fn set_versioned(&self, key: &str, version: i64, value: Bytes, ttl: Duration) {
        self.set(&format!("{key}@{version}"), value, ttl).await;
    }

    /// Moves `key` to a new version after its source changed; the version is kept for `window` after
    /// the last change, which must be longer than the TTL of the entries.
    ///
    /// A bump that fails (Redis unreachable) is retried in the background until Redis takes it, and until
    /// then this process reads no cached value of `key`. Without that, the change would be hidden once
    /// Redis answered again: the version would still be the old one, and the value cached under it from
    /// before the change would be served until its TTL. (Other processes see the change once the retry
    /// lands; the error is returned so that the caller can log it.)
    pub async fn bump_version(&self, key: &str, window: Duration) -> Result<(), CacheError> {
        let version_key = format!("{key}#v");
        let bumped = self.incr_window(&version_key, 1, window).await.map(|_| ());
        if let (Err(_), Store::Redis(redis)) = (&bumped, &self.0) {
            let first = {
                let mut unbumped = redis.unbumped.lock().unwrap_or_else(|p| p.into_inner());
                let first = unbumped.is_empty();
                unbumped.insert(version_key, window);
                first
            };
            if first {
                let cache = self.clone();
                tokio::spawn(async move { cache.retry_bumps().await });
            }
        }
        bumped
    }

    /// Retries the failed version bumps until none is left.
    async fn retry_bumps(&self) {
        let Store::Redis(redis) = &self.0 else { return };
        loop {
            tokio::time::sleep(BUMP_RETRY).await;
            let due: Vec<(String, Duration)> =
                redis.unbumped.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, w)| (k.clone(), *w)).collect();
            for (key, window) in due {
                if self.incr_window(&key, 1, window).await.is_ok() {
                    redis.unbumped.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                }
            }
            if redis.unbumped.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                tracing::info!("cache versions that could not be moved during the redis outage are moved");
                return;
            }
        }
    }

    /// Sets `key` only if it does not exist, for `ttl`; true when this call set it (idempotency keys).
    pub async fn set_if_absent(&self, key: &str, ttl: Duration) -> Result<bool, CacheError> {
        match &self.0 {
            Store::Local { counters, .. } => Ok(counters.incr(key, 1, ttl) == 1),
            Store::Redis(redis) => {
                let ms = ttl.as_millis().max(1) as u64;
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(1).arg("NX").arg("PX").arg(ms);
                let set: Option<String> = redis.call(|mut c| async move { cmd.query_async(&mut c).await }).await?;
                Ok(set.is_some())
            }
        }
    }
}

/// One shard of counters: key to (value, expiry).
type CounterShard = Mutex<HashMap<String, (i64, Instant)>>;

/// Windowed counters in this process, sharded to keep lock hold times short.
#[derive(Clone, Default)]
struct LocalCounters {
    shards: Arc<[CounterShard; 16]>,
}

impl LocalCounters {
    fn shard(&self, key: &str) -> &CounterShard {
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        &self.shards[(h % 16) as usize]
    }

    fn incr(&self, key: &str, by: i64, window: Duration) -> i64 {
        let now = Instant::now();
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, (_, expires)| *expires > now);
        }
        let entry = map.entry(key.to_string()).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 += by;
        entry.0
    }

    fn get(&self, key: &str) -> i64 {
        let now = Instant::now();
        let map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|(_, e)| *e > now).map(|(v, _)| *v).unwrap_or(0)
    }
}
