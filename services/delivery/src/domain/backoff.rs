//! Retry delays: exponential with full jitter (a random delay between zero and base * 2^(attempt-1),
//! capped), so that many messages failing together do not retry together.

use std::time::Duration;

/// The delay before retry number `attempt` (1 for the first retry), at most `max`, drawn with `unit`
/// in [0, 1) as the jitter.
pub fn delay(attempt: i32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = attempt.clamp(1, 30) - 1;
    let ceiling = base.saturating_mul(1u32 << exp).min(max);
    // Never retry sooner than a tenth of the base: a zero delay would spin on a failing provider.
    ceiling.mul_f64(unit.clamp(0.0, 1.0)).max(base / 10)
}

/// [`delay`] with a random jitter.
pub fn jittered(attempt: i32, base: Duration, max: Duration) -> Duration {
    delay(attempt, base, max, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_is_capped() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(delay(1, b, m, 1.0), Duration::from_secs(1));
        assert_eq!(delay(2, b, m, 1.0), Duration::from_secs(2));
        assert_eq!(delay(4, b, m, 1.0), Duration::from_secs(8));
        assert_eq!(delay(20, b, m, 1.0), Duration::from_secs(60));
        assert_eq!(delay(3, b, m, 0.5), Duration::from_secs(2));
        assert_eq!(delay(3, b, m, 0.0), Duration::from_millis(100));
    }
}
