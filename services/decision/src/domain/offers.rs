//! Offers, placements, contact policies, campaigns and experiments as they are saved: validated field by
//! field (errors name the field), eligibility rules compiled once.

use rapport_errors::Error;
use rapport_proto::common::v1::{self as common, Channel, MessageClass};
use rapport_proto::decision::v1::{self as pb, PlacementKind};
use rapport_rules::Rule;

use super::document::offer_shapes;

/// A known placement other than UNSPECIFIED.
pub fn placement(field: &str, p: i32) -> Result<PlacementKind, Error> {
    match PlacementKind::try_from(p) {
        Ok(PlacementKind::Unspecified) => Err(Error::invalid(field, "is required")),
        Ok(k) => Ok(k),
        Err(_) => Err(Error::invalid(field, format!("unknown placement {p}"))),
    }
}

/// A known channel other than UNSPECIFIED.
pub fn channel(field: &str, c: i32) -> Result<Channel, Error> {
    match Channel::try_from(c) {
        Ok(Channel::Unspecified) => Err(Error::invalid(field, "is required")),
        Ok(k) => Ok(k),
        Err(_) => Err(Error::invalid(field, format!("unknown channel {c}"))),
    }
}

/// The channel a placement delivers on when the request names none.
pub fn default_channel(p: PlacementKind) -> Channel {
    match p {
        PlacementKind::Email => Channel::Email,
        PlacementKind::Sms => Channel::Sms,
        PlacementKind::Push => Channel::Push,
        PlacementKind::WebBanner => Channel::Web,
        PlacementKind::CallCentreScript => Channel::CallCentre,
        PlacementKind::StoreTill => Channel::Store,
        PlacementKind::InApp | PlacementKind::Unspecified => Channel::InApp,
    }
}

/// Whether a placement is a message that delivery sends (its decision counts as a send only once
/// delivery sent it); the others are shown at once (a banner, a script, a till screen).
pub fn is_message(p: PlacementKind) -> bool {
    matches!(p, PlacementKind::Email | PlacementKind::Sms | PlacementKind::Push | PlacementKind::InApp)
}

/// The class of an offer (marketing unless it says service).
pub fn class_of(offer: &pb::Offer) -> MessageClass {
    if offer.message_class == MessageClass::Service as i32 { MessageClass::Service } else { MessageClass::Marketing }
}

/// The consent purpose of an offer.
pub fn purpose_of(offer: &pb::Offer) -> &str {
    if !offer.purpose.is_empty() {
        &offer.purpose
    } else if class_of(offer) == MessageClass::Service {
        "service_messages"
    } else {
        "marketing"
    }
}

/// Compiles an eligibility rule (empty: everyone).
pub fn compile_rule(field: &str, source: &str) -> Result<Option<Rule>, Error> {
    if source.trim().is_empty() {
        return Ok(None);
    }
    Rule::compile_with_shapes(source, &offer_shapes()).map(Some).map_err(|e| Error::invalid(field, e))
}

/// Checks an amount of money, naming `field`.
pub fn money(field: &str, m: &common::Money) -> Result<(), Error> {
    if m.currency.len() != 3 || !m.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(Error::invalid(&format!("{field}.currency"), "must be an ISO 4217 code such as EUR"));
    }
    if m.minor_units < 0 {
        return Err(Error::invalid(&format!("{field}.minor_units"), "must not be negative"));
    }
    Ok(())
}

/// Checks an offer as it is to be saved, naming the field (`prefix` is e.g. "offer"), and fills defaults.
/// Returns the offer with its rule compiled.
pub fn validate_offer(prefix: &str, mut o: pb::Offer) -> Result<(pb::Offer, Option<Rule>), Error> {
    let f = |name: &str| format!("{prefix}.{name}");
    o.name = o.name.trim().to_string();
    if o.name.is_empty() || o.name.chars().count() > 100 {
        return Err(Error::invalid(&f("name"), "must be 1 to 100 characters"));
    }
    for (i, c) in o.content.iter().enumerate() {
        channel(&f(&format!("content[{i}].channel")), c.channel)?;
        if c.template_id.trim().is_empty() || c.template_id.len() > 128 {
            return Err(Error::invalid(&f(&format!("content[{i}].template_id")), "must be 1 to 128 characters"));
        }
        if o.content[..i].iter().any(|p| p.channel == c.channel) {
            return Err(Error::invalid(&f(&format!("content[{i}].channel")), "has content already"));
        }
    }
    if let (Some(from), Some(until)) = (&o.valid_from, &o.valid_until)
        && rapport_rpc::convert::millis(from) >= rapport_rpc::convert::millis(until)
    {
        return Err(Error::invalid(&f("valid_until"), "must be after valid_from"));
    }
    for (name, t) in [("valid_from", &o.valid_from), ("valid_until", &o.valid_until)] {
        if let Some(t) = t
            && rapport_rpc::convert::millis(t).is_none()
        {
            return Err(Error::invalid(&f(name), "is not a valid time"));
        }
    }
    let rule = compile_rule(&f("eligibility_rule"), &o.eligibility_rule)?;
    if let Some(v) = &o.business_value {
        money(&f("business_value"), v)?;
    }
    if !o.weight.is_finite() || o.weight < 0.0 {
        return Err(Error::invalid(&f("weight"), "must be a number of at least 0"));
    }
    if o.weight == 0.0 {
        o.weight = 1.0;
    }
    for (i, c) in o.caps.iter().enumerate() {
        if c.max < 1 {
            return Err(Error::invalid(&f(&format!("caps[{i}].max")), "must be at least 1"));
        }
        if c.window_seconds < 0 {
            return Err(Error::invalid(&f(&format!("caps[{i}].window_seconds")), "must not be negative"));
        }
    }
    if o.placements.is_empty() {
        return Err(Error::invalid(&f("placements"), "at least one placement is required"));
    }
    for (i, p) in o.placements.iter().enumerate() {
        placement(&f(&format!("placements[{i}]")), *p)?;
    }
    for (i, t) in o.tags.iter().enumerate() {
        if t.trim().is_empty() || t.len() > 64 {
            return Err(Error::invalid(&f(&format!("tags[{i}]")), "must be 1 to 64 characters"));
        }
    }
    match MessageClass::try_from(o.message_class) {
        Ok(MessageClass::Unspecified) => o.message_class = MessageClass::Marketing as i32,
        Ok(_) => {}
        Err(_) => return Err(Error::invalid(&f("message_class"), format!("unknown class {}", o.message_class))),
    }
    if !o.purpose.is_empty() && !o.purpose.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(Error::invalid(
            &f("purpose"),
            "must be a configured consent purpose (lower-case letters, digits, _)",
        ));
    }
    Ok((o, rule))
}

/// Checks a placement's arbitration settings and fills defaults (exponents 1).
pub fn validate_placement(mut p: pb::Placement) -> Result<pb::Placement, Error> {
    placement("placement.kind", p.kind)?;
    for (name, v) in [
        ("propensity_exponent", &mut p.propensity_exponent),
        ("value_exponent", &mut p.value_exponent),
        ("lever_exponent", &mut p.lever_exponent),
    ] {
        if !v.is_finite() || *v < 0.0 || *v > 10.0 {
            return Err(Error::invalid(&format!("placement.{name}"), "must be between 0 and 10"));
        }
    }
    if !(0.0..=1.0).contains(&p.epsilon) {
        return Err(Error::invalid("placement.epsilon", "must be between 0 and 1"));
    }
    Ok(p)
}

/// The arbitration of a placement nobody configured: every part counts once, no extra exploration.
pub fn default_placement(kind: PlacementKind) -> pb::Placement {
    pb::Placement {
        kind: kind as i32,
        propensity_exponent: 1.0,
        value_exponent: 1.0,
        lever_exponent: 1.0,
        epsilon: 0.0,
    }
}

/// Checks a contact policy.
pub fn validate_policy(mut p: pb::ContactPolicy) -> Result<pb::ContactPolicy, Error> {
    channel("policy.channel", p.channel)?;
    match MessageClass::try_from(p.message_class) {
        Ok(MessageClass::Unspecified) => p.message_class = MessageClass::Marketing as i32,
        Ok(_) => {}
        Err(_) => return Err(Error::invalid("policy.message_class", format!("unknown class {}", p.message_class))),
    }
    if p.max < 0 || (p.max > 0 && p.window_seconds <= 0) {
        return Err(Error::invalid("policy.window_seconds", "a limit (max > 0) needs a positive window"));
    }
    if p.suppress_after_ignored < 0 || (p.suppress_after_ignored > 0 && p.ignore_window_seconds <= 0) {
        return Err(Error::invalid("policy.ignore_window_seconds", "suppress_after_ignored needs a positive window"));
    }
    let from = p.quiet_from.trim();
    let until = p.quiet_until.trim();
    if from.is_empty() != until.is_empty() {
        return Err(Error::invalid("policy.quiet_until", "quiet hours need both quiet_from and quiet_until"));
    }
    for (name, v) in [("quiet_from", from), ("quiet_until", until)] {
        if !v.is_empty() && super::policy::parse_clock(v).is_none() {
            return Err(Error::invalid(&format!("policy.{name}"), "must be a time of day as HH:MM"));
        }
    }
    if p.max == 0 && p.suppress_after_ignored == 0 && from.is_empty() {
        return Err(Error::invalid("policy", "sets no limit: give max, suppress_after_ignored or quiet hours"));
    }
    if p.policy_id.is_empty() {
        p.policy_id = format!("pol_{}", uuid::Uuid::now_v7().simple());
    } else if p.policy_id.len() > 64 {
        return Err(Error::invalid("policy.policy_id", "at most 64 characters"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> pb::Offer {
        pb::Offer {
            name: "Spring sale".into(),
            placements: vec![PlacementKind::Email as i32],
            eligibility_rule: "profile.computed.order_count > 0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn offers_are_checked_field_by_field() {
        let (o, rule) = validate_offer("offer", offer()).unwrap();
        assert!(rule.is_some());
        assert_eq!(o.weight, 1.0);
        assert_eq!(o.message_class, MessageClass::Marketing as i32);
        let cases: Vec<(pb::Offer, &str)> = vec![
            (pb::Offer { name: " ".into(), ..offer() }, "offer.name"),
            (pb::Offer { placements: vec![], ..offer() }, "offer.placements"),
            (pb::Offer { placements: vec![99], ..offer() }, "offer.placements[0]"),
            (
                pb::Offer { eligibility_rule: "profile.computed.order_count >".into(), ..offer() },
                "offer.eligibility_rule",
            ),
            (
                pb::Offer { eligibility_rule: "profile.computed.ordercount > 1".into(), ..offer() },
                "offer.eligibility_rule",
            ),
            (pb::Offer { weight: -1.0, ..offer() }, "offer.weight"),
            (pb::Offer { caps: vec![pb::Cap { max: 0, ..Default::default() }], ..offer() }, "offer.caps[0].max"),
        ];
        for (o, field) in cases {
            let err = validate_offer("offer", o).unwrap_err();
            assert!(err.to_string().starts_with(field), "{field}: {err}");
        }
        let err = validate_offer(
            "offer",
            pb::Offer { eligibility_rule: "profile.computed.ordercount > 1".into(), ..offer() },
        )
        .unwrap_err();
        assert!(err.to_string().contains("1:"), "the position is named: {err}");
    }

    #[test]
    fn policies_need_a_limit_and_valid_hours() {
        let email = Channel::Email as i32;
        assert!(
            validate_policy(pb::ContactPolicy { channel: email, max: 1, window_seconds: 86_400, ..Default::default() })
                .is_ok()
        );
        let err = validate_policy(pb::ContactPolicy { channel: email, ..Default::default() }).unwrap_err();
        assert!(err.to_string().starts_with("policy"));
        let err = validate_policy(pb::ContactPolicy {
            channel: email,
            quiet_from: "21:00".into(),
            quiet_until: "8".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("policy.quiet_until"), "{err}");
        let err = validate_policy(pb::ContactPolicy { channel: 0, max: 1, window_seconds: 1, ..Default::default() })
            .unwrap_err();
        assert!(err.to_string().starts_with("policy.channel"));
    }
}
