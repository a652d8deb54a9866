//! Sliding-window limits ("at most 1 a day and 3 a week"), checked and counted atomically across
//! several limits at once: an admission is recorded under every limit or under none. In Redis each
//! windowed limit is a sorted set of admissions scored by time (one Lua script checks and records them
//! all); in process they are kept under one lock. A limit without a window ("ever") is a plain counter.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use crate::{Cache, CacheError, Store};

/// At most `max` admissions under `key` within `window` (zero: ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowLimit {
    pub key: String,
    pub max: i64,
    pub window: Duration,
}

/// What [`Cache::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Recorded under every limit.
    Admitted,
    /// Nothing recorded: the limit at this index is full.
    Full(usize),
}

/// Windowed admission logs in this process.
#[derive(Clone, Default)]
pub(crate) struct LocalWindows {
    logs: Arc<Mutex<HashMap<String, VecDeque<i64>>>>,
}

impl LocalWindows {
    fn count(logs: &mut HashMap<String, VecDeque<i64>>, limit: &WindowLimit, now: i64) -> i64 {
        let Some(log) = logs.get_mut(&limit.key) else { return 0 };
        if !limit.window.is_zero() {
            let from = now - limit.window.as_millis() as i64;
            while log.front().is_some_and(|t| *t <= from) {
                log.pop_front();
            }
        }
        log.len() as i64
    }

    fn counts(&self, limits: &[WindowLimit], now: i64) -> Vec<i64> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        limits.iter().map(|l| Self::count(&mut logs, l, now)).collect()
    }

    fn admit(&self, limits: &[WindowLimit], now: i64) -> Admission {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if logs.len() > 100_000 {
            logs.retain(|_, log| !log.is_empty());
        }
        for (i, l) in limits.iter().enumerate() {
            if Self::count(&mut logs, l, now) >= l.max {
                return Admission::Full(i);
            }
        }
        for l in limits {
            logs.entry(l.key.clone()).or_default().push_back(now);
        }
        Admission::Admitted
    }

    fn clear(&self, key: &str) {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// Checks every limit and, when none is full, records the admission under all of them.
/// KEYS: the limits; ARGV: now (ms), member, then max and window (ms) per key. Returns 0 when admitted,
/// else the 1-based index of the first full limit.
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local max = tonumber(ARGV[1 + 2 * i])
  local w = tonumber(ARGV[2 + 2 * i])
  local n
  if w > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - w)
    n = redis.call('ZCARD', key)
  else
    n = tonumber(redis.call('GET', key) or '0')
  end
  if n >= max then return i end
end
for i, key in ipairs(KEYS) do
  local w = tonumber(ARGV[2 + 2 * i])
  if w > 0 then
    redis.call('ZADD', key, now, ARGV[2])
    redis.call('PEXPIRE', key, w)
  else
    redis.call('INCR', key)
  end
end
return 0
",
    )
});

/// The admissions each limit holds now. KEYS: the limits; ARGV: now (ms), then the window (ms) per key.
static COUNTS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local w = tonumber(ARGV[1 + i])
  if w > 0 then
    out[i] = redis.call('ZCOUNT', key, '(' .. (now - w), '+inf')
  else
    out[i] = tonumber(redis.call('GET', key) or '0')
  end
end
return out
",
    )
});

impl Cache {
    /// How many admissions each of `limits` holds now (in the same order).
    pub async fn window_counts(&self, limits: &[WindowLimit], now_ms: i64) -> Result<Vec<i64>, CacheError> {
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        match &self.0 {
            Store::Local { windows, .. } => Ok(windows.counts(limits, now_ms)),
            Store::Redis(redis) => {
                let mut invocation = COUNTS.prepare_invoke();
                invocation.arg(now_ms);
                for l in limits {
                    invocation.key(&l.key).arg(l.window.as_millis() as i64);
                }
                redis.call(|mut c| async move { invocation.invoke_async(&mut c).await }).await
            }
        }
    }

    /// Records one admission named `member` (unique per admission, e.g. a decision id) under every one
    /// of `limits` if none of them is full, atomically across every process sharing the store.
    pub async fn admit(&self, limits: &[WindowLimit], member: &str, now_ms: i64) -> Result<Admission, CacheError> {
        if limits.is_empty() {
            return Ok(Admission::Admitted);
        }
        match &self.0 {
            Store::Local { windows, .. } => Ok(windows.admit(limits, now_ms)),
            Store::Redis(redis) => {
                let mut invocation = ADMIT.prepare_invoke();
                invocation.arg(now_ms).arg(member);
                for l in limits {
                    invocation.key(&l.key).arg(l.max).arg(l.window.as_millis() as i64);
                }
                let full: i64 = redis.call(|mut c| async move { invocation.invoke_async(&mut c).await }).await?;
                Ok(if full == 0 { Admission::Admitted } else { Admission::Full((full - 1) as usize) })
            }
        }
    }

    /// Forgets every admission under `key` (a limit that starts over, e.g. after the customer responded).
    pub async fn clear_window(&self, key: &str) -> Result<(), CacheError> {
        match &self.0 {
            Store::Local { windows, .. } => {
                windows.clear(key);
                Ok(())
            }
            Store::Redis(_) => self.invalidate(key).await,
        }
    }
}
