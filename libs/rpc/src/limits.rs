//! Rate limits per caller. [`RateLimitLayer`] sits inside the auth layer (it needs the caller's
//! `Principal`) and gives each caller a token bucket: `limits.per_caller_per_second` calls per second
//! with bursts of `limits.per_caller_burst`, or the caller's own `rate_limit_per_second` from its API
//! key. A call over the limit is refused at once with RESOURCE_EXHAUSTED, a message that names the
//! caller and the limit, a `retry-after-ms` header and a `google.rpc.RetryInfo` detail saying when the
//! next call will be accepted. The admin token and in-process calls are not limited.
//!
//! Buckets are kept per process: with N replicas a caller may make N times the limit in all.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::{BoxFuture, FutureExt};
use rapport_auth::Principal;
use rapport_config::LimitSettings;
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

/// Buckets kept before idle full ones are dropped.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The token buckets of every caller of this process.
#[derive(Debug)]
pub struct RateLimiter {
    default_per_second: u32,
    burst: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Limits from `[limits]`.
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            default_per_second: settings.per_caller_per_second,
            burst: settings.per_caller_burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The rate that applies to `principal`, if any.
    fn rate_of(&self, principal: &Principal) -> Option<u32> {
        if principal.is_admin() {
            return None;
        }
        match principal.rate_limit_per_second {
            0 if self.default_per_second == 0 => None,
            0 => Some(self.default_per_second),
            own => Some(own),
        }
    }

    /// Takes one call from the caller's bucket: `Ok(())`, or how long until the next call is accepted.
    pub fn check(&self, principal: &Principal, now: Instant) -> Result<(), (u32, Duration)> {
        let Some(rate) = self.rate_of(principal) else { return Ok(()) };
        let rate_f = f64::from(rate);
        let capacity = f64::from(if self.burst == 0 { rate } else { self.burst.max(1) });
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&principal.name) {
            // Drop the buckets that have refilled: forgetting them changes nothing.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate_f < capacity);
        }
        let bucket = buckets.entry(principal.name.clone()).or_insert(Bucket { tokens: capacity, at: now });
        let refilled = (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate_f).min(capacity);
        bucket.at = now;
        if refilled >= 1.0 {
            bucket.tokens = refilled - 1.0;
            Ok(())
        } else {
            bucket.tokens = refilled;
            let wait = Duration::from_secs_f64((1.0 - refilled) / rate_f).max(Duration::from_millis(1));
            Err((rate, wait))
        }
    }
}

/// The refusal of a call over the caller's limit.
pub fn rate_limited(caller: &str, rate: u32, retry_after: Duration) -> tonic::Status {
    let ms = retry_after.as_millis().max(1) as u64;
    let mut status = tonic::Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!("rate limit of {rate} calls/s for caller `{caller}` exceeded; retry in {ms} ms"),
        ErrorDetails::with_retry_info(Some(retry_after)),
    );
    if let Ok(v) = ms.to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", v);
    }
    status
}

/// Applies a [`RateLimiter`] to every call that carries a principal.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    /// A layer with the limits of `[limits]`.
    pub fn new(settings: &LimitSettings) -> Self {
        Self { limiter: Arc::new(RateLimiter::new(settings)) }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService { inner, limiter: self.limiter.clone() }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S, B> Service<http::Request<B>> for RateLimitService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(principal) = req.extensions().get::<Principal>()
            && let Err((rate, wait)) = self.limiter.check(principal, Instant::now())
        {
            metrics::counter!("rapport_grpc_rate_limited_total").increment(1);
            tracing::debug!(caller = %principal.name, rate, "rate limited");
            return futures::future::ready(Ok(rate_limited(&principal.name, rate, wait).into_http())).boxed();
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        async move { inner.call(req).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(&LimitSettings { per_caller_per_second: per_second, per_caller_burst: burst })
    }

    #[test]
    fn a_bucket_per_caller_refills_over_time() {
        let l = limiter(10, 3);
        let till = Principal::new("till", ["profile:read"]);
        let other = Principal::new("other", ["profile:read"]);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(&till, t0).is_ok());
        }
        let (rate, wait) = l.check(&till, t0).unwrap_err();
        assert_eq!(rate, 10);
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Another caller has its own bucket.
        assert!(l.check(&other, t0).is_ok());
        // After the hinted wait the next call is accepted.
        assert!(l.check(&till, t0 + wait).is_ok());
    }

    #[test]
    fn admin_is_not_limited_and_keys_have_their_own_rate() {
        let l = limiter(1, 1);
        let admin = Principal::new("admin", ["admin"]);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(l.check(&admin, t0).is_ok());
        }
        let mut crm = Principal::new("crm", ["profile:write"]);
        crm.rate_limit_per_second = 5;
        let accepted = (0..10).filter(|_| l.check(&crm, t0).is_ok()).count();
        assert_eq!(accepted, 1, "burst 1 whatever the rate");
        let off = limiter(0, 0);
        assert!((0..100).all(|_| off.check(&Principal::new("x", ["a"]), t0).is_ok()));
    }

    #[test]
    fn the_refusal_carries_a_retry_hint() {
        let status = rate_limited("till", 10, Duration::from_millis(250));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("till") && status.message().contains("250 ms"), "{}", status.message());
        assert_eq!(status.metadata().get("retry-after-ms").unwrap(), "250");
        assert_eq!(status.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_millis(250)));
    }

    /// The overload limit refuses at once while the slow calls are still running: no queue forms.
    #[tokio::test]
    async fn overload_refuses_fast_instead_of_queueing() {
        use tower::ServiceExt;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let slow = {
            let gate = gate.clone();
            tower::service_fn(move |_req: http::Request<()>| {
                let gate = gate.clone();
                async move {
                    let _permit = gate.acquire().await.map_err(|_| "closed")?;
                    Ok::<_, &'static str>(http::Response::new(tonic::body::Body::empty()))
                }
            })
        };
        let service = crate::layers::OverloadLayer::new(4).layer(slow);
        let in_flight: Vec<_> = (0..4).map(|_| tokio::spawn(service.clone().oneshot(http::Request::new(())))).collect();
        tokio::task::yield_now().await;
        // 200 more calls while the four hold every permit: each is answered, RESOURCE_EXHAUSTED, before any
        // slow call finished.
        for _ in 0..200 {
            let response = service.clone().oneshot(http::Request::new(())).await.unwrap();
            let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0");
            assert_eq!(code, (tonic::Code::ResourceExhausted as i32).to_string());
        }
        assert!(in_flight.iter().all(|t| !t.is_finished()), "the slow calls are still running");
        gate.add_permits(4);
        for t in in_flight {
            let response = t.await.unwrap().unwrap();
            assert!(response.headers().get("grpc-status").is_none(), "the slow calls complete normally");
        }
        // With the permits back, calls pass again.
        gate.add_permits(1);
        let response = service.clone().oneshot(http::Request::new(())).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none());
    }
}
