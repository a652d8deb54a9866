//! The documents rules see: `profile` (built from profile.GetProfile), `context` (the request's),
//! `event` (a trigger's) and `now` (milliseconds), with the shapes used to refuse misspelt fields at save.

use std::sync::LazyLock;

use rapport_proto::profile::v1 as profile;
use rapport_rpc::convert::{millis, struct_to_json};
use rapport_rules::Shape;
use serde_json::{Value, json};

/// The shape of `profile`: the fields [`profile_document`] builds. Traits are free.
pub static PROFILE: LazyLock<Shape> = LazyLock::new(|| {
    Shape::fields([
        ("customer_id", Shape::Leaf),
        ("traits", Shape::Open),
        ("segments", Shape::Leaf),
        ("segment_names", Shape::Leaf),
        (
            "computed",
            Shape::fields([
                ("order_count", Shape::Leaf),
                ("total_revenue_minor", Shape::Leaf),
                ("currency", Shape::Leaf),
                ("average_order_value_minor", Shape::Leaf),
                ("first_order_at", Shape::Leaf),
                ("last_order_at", Shape::Leaf),
                ("days_since_last_order", Shape::Leaf),
                ("recency_score", Shape::Leaf),
                ("frequency_score", Shape::Leaf),
                ("monetary_score", Shape::Leaf),
                ("lifetime_value_minor", Shape::Leaf),
                ("high_value", Shape::Leaf),
                ("engagement_score", Shape::Leaf),
                ("interests", Shape::Leaf),
                ("top_interests", Shape::Leaf),
                ("preferred_channel", Shape::Leaf),
                ("lifecycle_stage", Shape::Leaf),
                (
                    "open_cart",
                    Shape::fields([
                        ("items", Shape::Leaf),
                        ("value_minor", Shape::Leaf),
                        ("currency", Shape::Leaf),
                        ("updated_at", Shape::Leaf),
                    ]),
                ),
            ]),
        ),
    ])
});

/// The shape of `event` in campaign rules: a profile event. Properties are free.
pub static EVENT: LazyLock<Shape> = LazyLock::new(|| {
    Shape::fields([
        ("name", Shape::Leaf),
        ("message_id", Shape::Leaf),
        ("occurred_at", Shape::Leaf),
        ("customer_id", Shape::Leaf),
        ("properties", Shape::Open),
        ("context", Shape::Open),
    ])
});

/// The variables of an offer's eligibility rule.
pub fn offer_shapes() -> [(&'static str, &'static Shape); 3] {
    static OPEN: Shape = Shape::Open;
    static LEAF: Shape = Shape::Leaf;
    [("profile", &PROFILE), ("context", &OPEN), ("now", &LEAF)]
}

/// The variables of a campaign's trigger and recheck rules.
pub fn campaign_shapes() -> [(&'static str, &'static Shape); 3] {
    static LEAF: Shape = Shape::Leaf;
    [("profile", &PROFILE), ("event", &EVENT), ("now", &LEAF)]
}

/// The `profile` document of a customer with no profile yet.
pub fn empty_profile(customer_id: &str) -> Value {
    json!({"customer_id": customer_id, "traits": {}, "segments": [], "segment_names": [], "computed": {
        "order_count": 0, "total_revenue_minor": 0, "average_order_value_minor": 0, "lifetime_value_minor": 0,
        "high_value": false, "engagement_score": 0.0, "interests": [], "top_interests": [], "recency_score": 0,
        "frequency_score": 0, "monetary_score": 0, "lifecycle_stage": "prospect", "preferred_channel": "",
        "currency": ""
    }})
}

/// The `profile` document of `p` at `now` (milliseconds).
pub fn profile_document(p: &profile::Profile, now: i64) -> Value {
    let mut doc = empty_profile(&p.customer_id);
    if let Some(t) = &p.traits {
        doc["traits"] = Value::Object(struct_to_json(t));
    }
    doc["segments"] = json!(p.segments.iter().map(|s| s.segment_id.clone()).collect::<Vec<_>>());
    doc["segment_names"] = json!(p.segments.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    if let Some(c) = &p.computed {
        let minor = |m: &Option<rapport_proto::common::v1::Money>| m.as_ref().map_or(0, |m| m.minor_units);
        let currency = c.total_revenue.as_ref().map(|m| m.currency.clone()).unwrap_or_default();
        let last = c.last_order_at.as_ref().and_then(millis);
        let mut computed = json!({
            "order_count": c.order_count,
            "total_revenue_minor": minor(&c.total_revenue),
            "currency": currency,
            "average_order_value_minor": minor(&c.average_order_value),
            "recency_score": c.recency_score,
            "frequency_score": c.frequency_score,
            "monetary_score": c.monetary_score,
            "lifetime_value_minor": minor(&c.lifetime_value),
            "high_value": c.high_value,
            "engagement_score": c.engagement_score,
            "interests": c.interests,
            "top_interests": c.interests,
            "preferred_channel": c.preferred_channel,
            "lifecycle_stage": c.lifecycle_stage,
        });
        if let Some(first) = c.first_order_at.as_ref().and_then(millis) {
            computed["first_order_at"] = json!(first);
        }
        if let Some(last) = last {
            computed["last_order_at"] = json!(last);
            computed["days_since_last_order"] = json!((now - last).max(0) / 86_400_000);
        }
        if let Some(cart) = &c.open_cart {
            computed["open_cart"] = json!({
                "items": cart.items.iter().map(|i| json!({"sku": i.sku, "quantity": i.quantity,
                    "price_minor": i.price_minor, "category": i.category})).collect::<Vec<_>>(),
                "value_minor": minor(&cart.value),
                "currency": cart.value.as_ref().map(|m| m.currency.clone()).unwrap_or_default(),
                "updated_at": cart.updated_at.as_ref().and_then(millis).unwrap_or_default(),
            });
        }
        doc["computed"] = computed;
    }
    doc
}

/// The `event` document of a profile event.
pub fn event_document(e: &profile::Event, customer_id: &str) -> Value {
    let context = e.context.as_ref().map_or(json!({}), |c| {
        json!({"source": c.source, "campaign_id": c.campaign_id, "decision_id": c.decision_id,
            "offer_id": c.offer_id, "store_id": c.store_id, "delivery_message_id": c.delivery_message_id})
    });
    json!({
        "name": e.name,
        "message_id": e.message_id,
        "occurred_at": e.occurred_at.as_ref().and_then(millis).unwrap_or_default(),
        "customer_id": customer_id,
        "properties": e.properties.as_ref().map_or(json!({}), |p| Value::Object(struct_to_json(p))),
        "context": context,
    })
}

/// The value at a dotted `path` of a document ("computed.lifecycle_stage").
pub fn at_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, k| v.get(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field the builders write is in the shape, so a rule can read all of them.
    fn conforms(doc: &Value, shape: &Shape, path: &str) {
        let Value::Object(map) = doc else { return };
        match shape {
            Shape::Open => {}
            Shape::Leaf => panic!("{path} is an object but its shape is a leaf"),
            Shape::Fields(fields) => {
                for (k, v) in map {
                    let (_, s) =
                        fields.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("{path}.{k} not in the shape"));
                    conforms(v, s, &format!("{path}.{k}"));
                }
            }
        }
    }

    #[test]
    fn documents_conform_to_their_shapes() {
        let p = profile::Profile {
            customer_id: "cus_1".into(),
            computed: Some(profile::ComputedTraits {
                order_count: 2,
                last_order_at: Some(rapport_rpc::convert::timestamp(0)),
                first_order_at: Some(rapport_rpc::convert::timestamp(0)),
                open_cart: Some(profile::Cart::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let doc = profile_document(&p, 3 * 86_400_000);
        assert_eq!(doc["computed"]["days_since_last_order"], 3);
        conforms(&doc, &PROFILE, "profile");
        conforms(&empty_profile("cus_2"), &PROFILE, "profile");
        conforms(
            &event_document(
                &profile::Event { name: "x".into(), context: Some(Default::default()), ..Default::default() },
                "c",
            ),
            &EVENT,
            "event",
        );
    }
}
