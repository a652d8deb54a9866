//! Quiet hours: marketing waits until the recipient's local morning.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// When a message due at `now` may go out: `None` if now, or the end of the quiet hours
/// (`start`..`end` in minutes after local midnight, possibly across midnight) in `tz`.
pub fn release_at(now: DateTime<Utc>, tz: Tz, start: u32, end: u32) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(&tz);
    let minute = local.hour() * 60 + local.minute();
    let quiet = if start < end { minute >= start && minute < end } else { minute >= start || minute < end };
    if !quiet {
        return None;
    }
    let end_time = NaiveTime::from_hms_opt(end / 60, end % 60, 0)?;
    let mut day = local.date_naive();
    if minute >= end {
        day += Duration::days(1);
    }
    // A local time skipped by a DST change: take the first valid instant after it.
    let naive = day.and_time(end_time);
    let resolved = tz
        .from_local_datetime(&naive)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(naive + Duration::hours(1))).earliest())?;
    Some(resolved.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn waits_until_the_local_morning() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 22:30 in Berlin (winter, UTC+1) -> 08:00 the next day.
        let r = release_at(at("2026-12-01T21:30:00Z"), berlin, 21 * 60, 8 * 60).unwrap();
        assert_eq!(r, at("2026-12-02T07:00:00Z"));
        // 03:00 in Berlin -> 08:00 the same day.
        let r = release_at(at("2026-12-02T02:00:00Z"), berlin, 21 * 60, 8 * 60).unwrap();
        assert_eq!(r, at("2026-12-02T07:00:00Z"));
        // 12:00 in Berlin: not quiet.
        assert_eq!(release_at(at("2026-12-02T11:00:00Z"), berlin, 21 * 60, 8 * 60), None);
    }

    #[test]
    fn quiet_hours_within_one_day() {
        let utc: Tz = "UTC".parse().unwrap();
        assert_eq!(release_at(at("2026-12-02T12:30:00Z"), utc, 12 * 60, 14 * 60), Some(at("2026-12-02T14:00:00Z")));
        assert_eq!(release_at(at("2026-12-02T14:00:00Z"), utc, 12 * 60, 14 * 60), None);
    }
}
