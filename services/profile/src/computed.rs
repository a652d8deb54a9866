//! Computed traits, updated incrementally on each event: orders and revenue, recency/frequency/monetary
//! scores, a lifetime-value estimate, engagement, the open cart, interests, the preferred channel and
//! the lifecycle stage. Everything here is a pure function of the previous state and the event, so the
//! same event always gives the same result and a profile can be rebuilt by replaying its timeline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// How computed traits are derived; the `[profile]` configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComputedSettings {
    /// Days without an order after which a customer counts as lapsed.
    pub lapsed_after_days: i64,
    /// Days without an order after which a customer counts as churned.
    pub churned_after_days: i64,
    /// Half-life of engagement and interest scores, in days.
    pub decay_half_life_days: f64,
    /// Expected customer lifetime in years, for the lifetime-value estimate.
    pub ltv_horizon_years: f64,
    /// Recency score 5..1 boundaries in days since the last order (ascending).
    pub recency_days: [i64; 4],
    /// Frequency score 1..5 boundaries in orders (ascending).
    pub frequency_orders: [i64; 4],
    /// Monetary score 1..5 boundaries in total revenue, minor units (ascending).
    pub monetary_minor: [i64; 4],
}

impl Default for ComputedSettings {
    fn default() -> Self {
        Self {
            lapsed_after_days: 90,
            churned_after_days: 365,
            decay_half_life_days: 30.0,
            ltv_horizon_years: 3.0,
            recency_days: [30, 90, 180, 365],
            frequency_orders: [2, 4, 8, 16],
            monetary_minor: [5_000, 20_000, 50_000, 200_000],
        }
    }
}

/// A cart line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CartItem {
    pub sku: String,
    pub quantity: i64,
    pub price_minor: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,
}

/// The customer's open cart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenCart {
    pub items: Vec<CartItem>,
    pub value_minor: i64,
    pub currency: String,
    pub updated_at: i64,
}

/// Every computed trait of one profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Computed {
    pub order_count: i64,
    /// Revenue in minor units of `currency` (the currency of the first order; orders in other currencies
    /// are counted but not summed, and reported in `other_currency_orders`).
    pub total_revenue_minor: i64,
    pub currency: String,
    pub other_currency_orders: i64,
    pub first_order_at: Option<i64>,
    pub last_order_at: Option<i64>,
    /// Engagement score: decayed count of opens, clicks, page and product views, visits and contacts.
    pub engagement: f64,
    /// When `engagement` was last decayed.
    pub engagement_at: i64,
    pub open_cart: Option<OpenCart>,
    /// Category affinities: decayed weight of views (1) and purchases (5).
    pub interests: BTreeMap<String, f64>,
    /// Engagement per channel, to pick the preferred one.
    pub channel_engagement: BTreeMap<String, f64>,
    /// For business contacts: the furthest relationship stage recorded.
    pub b2b_stage: Option<String>,
    /// The last event time seen.
    pub last_seen_at: i64,
}

/// Scores and stages derived from [`Computed`] at a point in time (they change with the clock too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    pub average_order_value_minor: i64,
    pub recency_score: i32,
    pub frequency_score: i32,
    pub monetary_score: i32,
    /// Historic value model: average order value x orders per year so far x the configured horizon.
    pub lifetime_value_minor: i64,
    pub engagement_score: f64,
    pub preferred_channel: String,
    pub top_interests: Vec<String>,
    pub lifecycle_stage: String,
}

/// The event fields computed traits look at.
#[derive(Debug, Clone, PartialEq)]
pub struct EventView<'a> {
    pub name: &'a str,
    pub occurred_at: i64,
    pub properties: &'a Value,
    pub channel: &'a str,
}

fn decay(value: f64, from: i64, to: i64, half_life_days: f64) -> f64 {
    if to <= from || half_life_days <= 0.0 {
        return value;
    }
    let days = (to - from) as f64 / DAY_MS as f64;
    value * 0.5f64.powf(days / half_life_days)
}

fn items(properties: &Value) -> Vec<CartItem> {
    properties
        .get("items")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|i| CartItem {
                    sku: i.get("sku").and_then(Value::as_str).unwrap_or_default().to_string(),
                    quantity: i.get("quantity").and_then(Value::as_i64).unwrap_or(1),
                    price_minor: i.get("price_minor").and_then(Value::as_i64).unwrap_or(0),
                    category: i.get("category").and_then(Value::as_str).unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Business relationship stages in order; a later stage is never replaced by an earlier one.
pub const B2B_STAGES: [&str; 6] =
    ["no_relationship", "key_player_known", "early_dialogue", "mid_dialogue", "late_dialogue", "handed_to_sales"];

impl Computed {
    /// Applies one event. Events may arrive out of order: order counts and sums are order-independent;
    /// the cart only moves forward in time.
    pub fn apply(&mut self, e: &EventView<'_>, s: &ComputedSettings) {
        let t = e.occurred_at;
        self.last_seen_at = self.last_seen_at.max(t);
        let engagement_weight = match e.name {
            "message_opened" => 1.0,
            "message_clicked" => 2.0,
            "page_viewed" | "search" => 0.5,
            "product_viewed" => 1.0,
            "store_visit" | "call_centre_contact" => 2.0,
            "order_completed" => 5.0,
            _ => 0.0,
        };
        if engagement_weight > 0.0 {
            let now = self.engagement_at.max(t);
            self.engagement = decay(self.engagement, self.engagement_at, now, s.decay_half_life_days)
                + decay(engagement_weight, t, now, s.decay_half_life_days);
            self.engagement_at = now;
            if !e.channel.is_empty() {
                *self.channel_engagement.entry(e.channel.to_string()).or_default() += engagement_weight;
            }
        }
        match e.name {
            "order_completed" => {
                self.order_count += 1;
                let revenue = e.properties.get("revenue_minor").and_then(Value::as_i64).unwrap_or(0);
                let currency = e.properties.get("currency").and_then(Value::as_str).unwrap_or_default().to_uppercase();
                if self.currency.is_empty() {
                    self.currency = currency.clone();
                }
                if currency == self.currency {
                    self.total_revenue_minor += revenue;
                } else {
                    self.other_currency_orders += 1;
                }
                self.first_order_at = Some(self.first_order_at.map_or(t, |f| f.min(t)));
                self.last_order_at = Some(self.last_order_at.map_or(t, |l| l.max(t)));
                for item in items(e.properties) {
                    if !item.category.is_empty() {
                        *self.interests.entry(item.category).or_default() += 5.0;
                    }
                }
                // An order closes the cart it was placed from.
                if self.open_cart.as_ref().is_some_and(|c| c.updated_at <= t) {
                    self.open_cart = None;
                }
            }
            // Only a newer cart update replaces the cart.
            "cart_updated" if self.open_cart.as_ref().is_none_or(|c| c.updated_at <= t) => {
                let items = items(e.properties);
                let value = items.iter().map(|i| i.price_minor * i.quantity).sum();
                let currency = e.properties.get("currency").and_then(Value::as_str).unwrap_or_default().to_uppercase();
                self.open_cart =
                    (!items.is_empty()).then_some(OpenCart { items, value_minor: value, currency, updated_at: t });
            }
            "product_viewed" => {
                if let Some(c) = e.properties.get("category").and_then(Value::as_str) {
                    *self.interests.entry(c.to_string()).or_default() += 1.0;
                }
            }
            "b2b_stage_changed" => {
                if let Some(stage) = e.properties.get("stage").and_then(Value::as_str) {
                    let rank = |x: &str| B2B_STAGES.iter().position(|s| *s == x);
                    if rank(stage).is_some() && rank(stage) > self.b2b_stage.as_deref().and_then(rank) {
                        self.b2b_stage = Some(stage.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    /// Scores and stages as of `now`.
    pub fn derive(&self, now: i64, s: &ComputedSettings) -> Derived {
        let aov = if self.order_count > 0 { self.total_revenue_minor / self.order_count } else { 0 };
        let days_since = self.last_order_at.map(|l| (now - l).max(0) / DAY_MS);
        let recency_score = match days_since {
            None => 0,
            Some(d) => 5 - s.recency_days.iter().filter(|b| d > **b).count() as i32,
        };
        let bucket = |v: i64, bounds: &[i64; 4]| 1 + bounds.iter().filter(|b| v >= **b).count() as i32;
        let frequency_score = if self.order_count == 0 { 0 } else { bucket(self.order_count, &s.frequency_orders) };
        let monetary_score =
            if self.order_count == 0 { 0 } else { bucket(self.total_revenue_minor, &s.monetary_minor) };
        let lifetime_value_minor = match self.first_order_at {
            Some(first) if self.order_count > 0 => {
                let years = ((now - first) as f64 / (365.0 * DAY_MS as f64)).max(1.0 / 12.0);
                let per_year = self.order_count as f64 / years;
                (aov as f64 * per_year * s.ltv_horizon_years).round() as i64
            }
            _ => 0,
        };
        let engagement_score = decay(self.engagement, self.engagement_at, now, s.decay_half_life_days);
        let preferred_channel = self
            .channel_engagement
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(c, _)| c.clone())
            .unwrap_or_default();
        let mut interests: Vec<_> = self.interests.iter().collect();
        interests.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let top_interests = interests.into_iter().take(5).map(|(c, _)| c.clone()).collect();
        let lifecycle_stage = if let Some(stage) = &self.b2b_stage {
            stage.clone()
        } else {
            match (self.order_count, days_since) {
                (0, _) => "prospect".to_string(),
                (_, Some(d)) if d > s.churned_after_days => "churned".to_string(),
                (_, Some(d)) if d > s.lapsed_after_days => "lapsed".to_string(),
                (1, _) => "first_purchase".to_string(),
                _ => "repeat".to_string(),
            }
        };
        Derived {
            average_order_value_minor: aov,
            recency_score,
            frequency_score,
            monetary_score,
            lifetime_value_minor,
            engagement_score,
            preferred_channel,
            top_interests,
            lifecycle_stage,
        }
    }

    /// Folds another profile's computed traits into this one (identity merged the two customers).
    pub fn absorb(&mut self, other: &Computed, s: &ComputedSettings) {
        self.order_count += other.order_count;
        if self.currency.is_empty() || self.currency == other.currency {
            self.currency = other.currency.clone();
            self.total_revenue_minor += other.total_revenue_minor;
        } else {
            self.other_currency_orders += other.order_count;
        }
        self.other_currency_orders += other.other_currency_orders;
        self.first_order_at = [self.first_order_at, other.first_order_at].into_iter().flatten().min();
        self.last_order_at = [self.last_order_at, other.last_order_at].into_iter().flatten().max();
        let now = self.engagement_at.max(other.engagement_at);
        self.engagement = decay(self.engagement, self.engagement_at, now, s.decay_half_life_days)
            + decay(other.engagement, other.engagement_at, now, s.decay_half_life_days);
        self.engagement_at = now;
        if other.open_cart.as_ref().map(|c| c.updated_at) > self.open_cart.as_ref().map(|c| c.updated_at) {
            self.open_cart = other.open_cart.clone();
        }
        for (k, v) in &other.interests {
            *self.interests.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.channel_engagement {
            *self.channel_engagement.entry(k.clone()).or_default() += v;
        }
        let rank = |x: &Option<String>| x.as_deref().and_then(|x| B2B_STAGES.iter().position(|s| *s == x));
        if rank(&other.b2b_stage) > rank(&self.b2b_stage) {
            self.b2b_stage = other.b2b_stage.clone();
        }
        self.last_seen_at = self.last_seen_at.max(other.last_seen_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev<'a>(name: &'a str, at_day: i64, p: &'a Value) -> EventView<'a> {
        EventView { name, occurred_at: at_day * DAY_MS, properties: p, channel: "email" }
    }

    #[test]
    fn orders_revenue_and_scores() {
        let s = ComputedSettings::default();
        let mut c = Computed::default();
        let o1 = json!({"revenue_minor": 10_000, "currency": "eur", "items": [{"sku": "a", "category": "shoes", "price_minor": 10_000}]});
        let o2 = json!({"revenue_minor": 30_000, "currency": "EUR"});
        c.apply(&ev("order_completed", 100, &o1), &s);
        assert_eq!(c.derive(101 * DAY_MS, &s).lifecycle_stage, "first_purchase");
        c.apply(&ev("order_completed", 110, &o2), &s);
        let d = c.derive(120 * DAY_MS, &s);
        assert_eq!((c.order_count, c.total_revenue_minor, c.currency.as_str()), (2, 40_000, "EUR"));
        assert_eq!(d.average_order_value_minor, 20_000);
        assert_eq!(d.lifecycle_stage, "repeat");
        assert_eq!(d.recency_score, 5);
        assert_eq!(d.frequency_score, 2);
        assert_eq!(d.monetary_score, 3);
        assert_eq!(d.top_interests, vec!["shoes"]);
        assert!(d.lifetime_value_minor > 0);
        assert_eq!(c.derive((110 + 200) * DAY_MS, &s).lifecycle_stage, "lapsed");
        assert_eq!(c.derive((110 + 400) * DAY_MS, &s).lifecycle_stage, "churned");
    }

    #[test]
    fn cart_opens_and_an_order_closes_it_even_out_of_order() {
        let s = ComputedSettings::default();
        let mut c = Computed::default();
        let cart = json!({"currency": "EUR", "items": [{"sku": "a", "quantity": 2, "price_minor": 1500}]});
        c.apply(&ev("cart_updated", 10, &cart), &s);
        assert_eq!(c.open_cart.as_ref().unwrap().value_minor, 3000);
        // An older cart update arriving late does not replace the newer cart.
        let old = json!({"items": [{"sku": "b", "price_minor": 1}]});
        c.apply(&ev("cart_updated", 5, &old), &s);
        assert_eq!(c.open_cart.as_ref().unwrap().items[0].sku, "a");
        c.apply(&ev("order_completed", 11, &json!({"revenue_minor": 3000, "currency": "EUR"})), &s);
        assert!(c.open_cart.is_none());
    }

    #[test]
    fn engagement_decays_and_picks_the_preferred_channel() {
        let s = ComputedSettings::default();
        let mut c = Computed::default();
        let none = json!({});
        c.apply(&EventView { name: "message_clicked", occurred_at: 0, properties: &none, channel: "sms" }, &s);
        c.apply(&EventView { name: "message_opened", occurred_at: 0, properties: &none, channel: "email" }, &s);
        let d0 = c.derive(0, &s);
        let d30 = c.derive(30 * DAY_MS, &s);
        assert!((d0.engagement_score - 3.0).abs() < 1e-9);
        assert!((d30.engagement_score - 1.5).abs() < 1e-9, "{}", d30.engagement_score);
        assert_eq!(d0.preferred_channel, "sms");
        assert_eq!(d0.lifecycle_stage, "prospect");
    }

    #[test]
    fn b2b_stages_only_move_forward_and_merges_add_up() {
        let s = ComputedSettings::default();
        let mut a = Computed::default();
        a.apply(&ev("b2b_stage_changed", 1, &json!({"stage": "mid_dialogue"})), &s);
        a.apply(&ev("b2b_stage_changed", 2, &json!({"stage": "early_dialogue"})), &s);
        assert_eq!(a.derive(3 * DAY_MS, &s).lifecycle_stage, "mid_dialogue");
        let mut b = Computed::default();
        b.apply(&ev("order_completed", 1, &json!({"revenue_minor": 500, "currency": "EUR"})), &s);
        b.apply(&ev("b2b_stage_changed", 2, &json!({"stage": "handed_to_sales"})), &s);
        a.absorb(&b, &s);
        assert_eq!(a.order_count, 1);
        assert_eq!(a.b2b_stage.as_deref(), Some("handed_to_sales"));
    }
}
