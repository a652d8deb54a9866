//! Contact policies: which apply to a contact, and quiet hours in the customer's time zone.

use chrono::{NaiveTime, TimeZone, Timelike};
use rapport_proto::common::v1::MessageClass;
use rapport_proto::decision::v1 as pb;

/// A quiet period of the day, e.g. 21:00 to 08:00 (wrapping midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub from: NaiveTime,
    pub until: NaiveTime,
}

/// Parses "HH:MM" (24 hours).
pub fn parse_clock(s: &str) -> Option<NaiveTime> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

impl QuietHours {
    /// The quiet hours of a policy; `None` when it has none. Both ends are validated when saved.
    pub fn of(policy: &pb::ContactPolicy) -> Option<Self> {
        let from = parse_clock(&policy.quiet_from)?;
        let until = parse_clock(&policy.quiet_until)?;
        (from != until).then_some(Self { from, until })
    }

    fn contains(&self, t: NaiveTime) -> bool {
        if self.from < self.until { self.from <= t && t < self.until } else { t >= self.from || t < self.until }
    }

    /// Whether `now_ms` is quiet in `tz`; if so, when (milliseconds) the quiet period ends.
    pub fn quiet_until(&self, now_ms: i64, tz: chrono_tz::Tz) -> Option<i64> {
        let now = tz.timestamp_millis_opt(now_ms).single()?;
        let local = now.time().with_nanosecond(0)?;
        if !self.contains(local) {
            return None;
        }
        let mut day = now.date_naive();
        if local >= self.until {
            day = day.succ_opt()?;
        }
        let end = tz.from_local_datetime(&day.and_time(self.until)).earliest()?;
        Some(end.timestamp_millis())
    }
}

/// Whether `policy` governs a contact on `channel` of `class`. Marketing policies (class unspecified or
/// marketing) never apply to service messages, which bypass marketing limits; a service-class policy
/// applies to service messages only.
pub fn applies(policy: &pb::ContactPolicy, channel: i32, class: MessageClass) -> bool {
    if policy.channel != channel {
        return false;
    }
    let policy_class = MessageClass::try_from(policy.message_class).unwrap_or(MessageClass::Unspecified);
    match class {
        MessageClass::Service => policy_class == MessageClass::Service,
        _ => policy_class != MessageClass::Service,
    }
}

/// The time zone named by the `time_zone` trait, else `default`.
pub fn time_zone(trait_value: Option<&str>, default: chrono_tz::Tz) -> chrono_tz::Tz {
    trait_value.and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: chrono_tz::Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0).single().unwrap().timestamp_millis()
    }

    #[test]
    fn quiet_hours_wrap_midnight_in_the_customers_zone() {
        let q = QuietHours { from: parse_clock("21:00").unwrap(), until: parse_clock("08:00").unwrap() };
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let tokyo: chrono_tz::Tz = "Asia/Tokyo".parse().unwrap();
        // 22:30 in Berlin is quiet until 08:00 the next morning there.
        let late = at(berlin, 2026, 3, 10, 22, 30);
        assert_eq!(q.quiet_until(late, berlin), Some(at(berlin, 2026, 3, 11, 8, 0)));
        // 06:00 is quiet until 08:00 the same day; noon is not quiet.
        assert_eq!(q.quiet_until(at(berlin, 2026, 3, 10, 6, 0), berlin), Some(at(berlin, 2026, 3, 10, 8, 0)));
        assert_eq!(q.quiet_until(at(berlin, 2026, 3, 10, 12, 0), berlin), None);
        // The same instant is 06:30 in Tokyo: quiet there too, until 08:00 Tokyo time.
        assert_eq!(q.quiet_until(late, tokyo), Some(at(tokyo, 2026, 3, 11, 8, 0)));
        // Daytime quiet hours that do not wrap.
        let lunch = QuietHours { from: parse_clock("12:00").unwrap(), until: parse_clock("13:00").unwrap() };
        assert!(lunch.quiet_until(at(berlin, 2026, 3, 10, 12, 30), berlin).is_some());
        assert!(lunch.quiet_until(at(berlin, 2026, 3, 10, 13, 0), berlin).is_none());
        assert!(parse_clock("25:00").is_none() && parse_clock("8:00").is_none());
    }

    #[test]
    fn service_messages_bypass_marketing_policies() {
        let email = rapport_proto::common::v1::Channel::Email as i32;
        let marketing = pb::ContactPolicy { channel: email, ..Default::default() };
        let service =
            pb::ContactPolicy { channel: email, message_class: MessageClass::Service as i32, ..Default::default() };
        assert!(applies(&marketing, email, MessageClass::Marketing));
        assert!(!applies(&marketing, email, MessageClass::Service));
        assert!(applies(&service, email, MessageClass::Service));
        assert!(!applies(&service, email, MessageClass::Marketing));
        assert!(!applies(&marketing, email + 1, MessageClass::Marketing));
    }
}
