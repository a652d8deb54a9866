//! The cache suite: runs in process, and on Redis when RAPPORT_TEST_REDIS_URL is set.

use std::time::Duration;

use bytes::Bytes;
use rapport_cache::{Cache, CacheSettings};

async fn cache() -> Cache {
    let url = std::env::var("RAPPORT_TEST_REDIS_URL").unwrap_or_default();
    Cache::connect(&CacheSettings { url, capacity: 1000, timeout: Duration::from_secs(1) }).await.unwrap()
}

fn key(name: &str) -> String {
    format!("test:{}:{name}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn set_get_invalidate() {
    let c = cache().await;
    let k = key("profile");
    assert_eq!(c.get(&k).await, None);
    c.set(&k, Bytes::from_static(b"v1"), Duration::from_secs(60)).await;
    assert_eq!(c.get(&k).await, Some(Bytes::from_static(b"v1")));
    c.invalidate(&k).await.unwrap();
    assert_eq!(c.get(&k).await, None);
}

#[tokio::test]
async fn entries_expire() {
    let c = cache().await;
    let k = key("short");
    c.set(&k, Bytes::from_static(b"v"), Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get(&k).await, None);
}

#[tokio::test]
async fn counters_are_atomic_and_windowed() {
    let c = cache().await;
    let k = key("cap");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move { c.incr_window(&k, 1, Duration::from_secs(60)).await.unwrap() }));
    }
    let mut totals = Vec::new();
    for t in tasks {
        totals.push(t.await.unwrap());
    }
    totals.sort();
    assert_eq!(totals, (1..=20).collect::<Vec<_>>());
    assert_eq!(c.counter(&k).await.unwrap(), 20);

    let short = key("window");
    assert_eq!(c.incr_window(&short, 2, Duration::from_millis(100)).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.counter(&short).await.unwrap(), 0);
    assert_eq!(c.incr_window(&short, 1, Duration::from_millis(100)).await.unwrap(), 1);
}

#[tokio::test]
async fn set_if_absent_wins_once() {
    let c = cache().await;
    let k = key("idem");
    assert!(c.set_if_absent(&k, Duration::from_secs(60)).await.unwrap());
    assert!(!c.set_if_absent(&k, Duration::from_secs(60)).await.unwrap());
}

#[tokio::test]
async fn bad_url_is_named() {
    let err =
        Cache::connect(&CacheSettings { url: "memcached://x".into(), capacity: 1, timeout: Duration::from_secs(1) })
            .await
            .unwrap_err();
    assert!(err.to_string().contains("cache.url"), "{err}");
}

#[tokio::test]
async fn unreachable_redis_fails_at_start_up() {
    let err = Cache::connect(&CacheSettings {
        url: "redis://127.0.0.1:1".into(),
        capacity: 1,
        timeout: Duration::from_millis(300),
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("redis"), "{err}");
}

#[tokio::test]
async fn a_reader_that_loaded_before_a_change_cannot_cache_the_old_value() {
    let cache = cache().await;
    let key = format!("versioned-{}", std::process::id());
    let (v0, none) = cache.get_versioned(&key).await.expect("cache usable");
    assert!(none.is_none());
    // A reader loads the old value, then the source changes and bumps the version...
    cache.bump_version(&key, Duration::from_secs(60)).await.unwrap();
    // ...and only then the slow reader stores what it loaded.
    cache.set_versioned(&key, v0, Bytes::from_static(b"old"), Duration::from_secs(60)).await;
    let (v1, value) = cache.get_versioned(&key).await.unwrap();
    assert_ne!(v1, v0);
    assert!(value.is_none(), "the stale value is never served");
    cache.set_versioned(&key, v1, Bytes::from_static(b"new"), Duration::from_secs(60)).await;
    assert_eq!(cache.get_versioned(&key).await.unwrap().1.as_deref(), Some(&b"new"[..]));
}

#[tokio::test]
async fn window_limits_combine_and_admit_atomically() {
    use rapport_cache::{Admission, WindowLimit};
    let c = cache().await;
    let day = WindowLimit { key: key("day"), max: 1, window: Duration::from_secs(86_400) };
    let week = WindowLimit { key: key("week"), max: 3, window: Duration::from_secs(7 * 86_400) };
    let ever = WindowLimit { key: key("ever"), max: 10, window: Duration::ZERO };
    let limits = [day.clone(), week.clone(), ever.clone()];
    let t0 = 1_700_000_000_000i64;
    let day_ms = 86_400_000;
    // One a day: the second on the same day is refused by the daily limit and records nothing.
    assert_eq!(c.admit(&limits, "d1", t0).await.unwrap(), Admission::Admitted);
    assert_eq!(c.admit(&limits, "d2", t0 + 1000).await.unwrap(), Admission::Full(0));
    assert_eq!(c.window_counts(&limits, t0 + 1000).await.unwrap(), vec![1, 1, 1]);
    // The next days: admitted until the week holds three, then the weekly limit refuses.
    assert_eq!(c.admit(&limits, "d3", t0 + day_ms + 1).await.unwrap(), Admission::Admitted);
    assert_eq!(c.admit(&limits, "d4", t0 + 2 * day_ms + 2).await.unwrap(), Admission::Admitted);
    assert_eq!(c.admit(&limits, "d5", t0 + 3 * day_ms + 3).await.unwrap(), Admission::Full(1));
    // The window slides: a week after the first, one place is free again.
    assert_eq!(c.admit(&limits, "d6", t0 + 7 * day_ms + 5).await.unwrap(), Admission::Admitted);
    assert_eq!(c.window_counts(&limits, t0 + 7 * day_ms + 5).await.unwrap(), vec![1, 3, 4]);
    // Concurrent admissions never exceed a limit.
    let burst = WindowLimit { key: key("burst"), max: 5, window: Duration::from_secs(60) };
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let c = c.clone();
            let l = burst.clone();
            tokio::spawn(async move { c.admit(&[l], &format!("m{i}"), t0).await.unwrap() })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() == Admission::Admitted {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    c.clear_window(&burst.key).await.unwrap();
    assert_eq!(c.window_counts(std::slice::from_ref(&burst), t0).await.unwrap(), vec![0]);
}
