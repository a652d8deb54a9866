//! Campaign definition files (TOML): a `[campaign]` and the `[[offers]]` it sends, loadable by
//! `rapport decision load-campaign FILE` and by tests. The four ready examples are in
//! services/decision/examples/campaigns/.

use rapport_proto::common::v1::{self as common, Channel, MessageClass};
use rapport_proto::decision::v1::{self as pb, CampaignKind, PlacementKind};
use serde::Deserialize;

/// A campaign file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignFile {
    pub campaign: CampaignDef,
    #[serde(default)]
    pub offers: Vec<OfferDef>,
}

/// The `[campaign]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignDef {
    pub name: String,
    /// "triggered" or "scheduled".
    pub kind: String,
    #[serde(default)]
    pub trigger_events: Vec<String>,
    #[serde(default)]
    pub trigger_rule: String,
    #[serde(default)]
    pub wait_seconds: i64,
    #[serde(default)]
    pub recheck_rule: String,
    #[serde(default)]
    pub schedule: String,
    #[serde(default)]
    pub segment_id: String,
    /// email, sms, push, web_banner, call_centre_script, store_till, in_app.
    pub placement: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub holdout_share: f64,
    /// Salt of the holdout hash; the campaign id when empty.
    #[serde(default)]
    pub holdout_salt: String,
}

/// One `[[offers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferDef {
    pub name: String,
    pub placements: Vec<String>,
    /// The delivery template for `channel`.
    pub template_id: String,
    pub channel: String,
    #[serde(default)]
    pub eligibility_rule: String,
    #[serde(default)]
    pub value_minor: i64,
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub weight: f64,
    #[serde(default)]
    pub tags: Vec<String>,
    /// "marketing" (default) or "service".
    #[serde(default)]
    pub class: String,
}

fn placement(name: &str) -> Result<i32, String> {
    PlacementKind::from_str_name(&format!("PLACEMENT_KIND_{}", name.to_ascii_uppercase()))
        .map(|p| p as i32)
        .ok_or_else(|| format!("unknown placement `{name}`"))
}

fn channel(name: &str) -> Result<i32, String> {
    if name.is_empty() {
        return Ok(0);
    }
    Channel::from_str_name(&format!("CHANNEL_{}", name.to_ascii_uppercase()))
        .map(|c| c as i32)
        .ok_or_else(|| format!("unknown channel `{name}`"))
}

impl CampaignFile {
    /// Parses a file's text; errors name the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The offers to create, as CreateOffer would take them.
    pub fn offers(&self) -> Result<Vec<pb::Offer>, String> {
        self.offers
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let ch = channel(&o.channel).map_err(|e| format!("offers[{i}].channel: {e}"))?;
                Ok(pb::Offer {
                    name: o.name.clone(),
                    content: vec![pb::ChannelContent {
                        channel: ch,
                        template_id: o.template_id.clone(),
                        variables: None,
                    }],
                    eligibility_rule: o.eligibility_rule.clone(),
                    business_value: (o.value_minor > 0)
                        .then(|| common::Money { currency: o.currency.clone(), minor_units: o.value_minor }),
                    weight: o.weight,
                    placements: o
                        .placements
                        .iter()
                        .map(|p| placement(p).map_err(|e| format!("offers[{i}].placements: {e}")))
                        .collect::<Result<_, _>>()?,
                    tags: o.tags.clone(),
                    message_class: if o.class == "service" { MessageClass::Service } else { MessageClass::Marketing }
                        as i32,
                    ..Default::default()
                })
            })
            .collect()
    }

    /// The campaign to create, restricted to `offer_ids` (the ids the offers got).
    pub fn campaign(&self, offer_ids: Vec<String>) -> Result<pb::Campaign, String> {
        let c = &self.campaign;
        let kind = match c.kind.as_str() {
            "triggered" => CampaignKind::Triggered,
            "scheduled" => CampaignKind::Scheduled,
            other => return Err(format!("campaign.kind: `{other}` must be triggered or scheduled")),
        };
        Ok(pb::Campaign {
            name: c.name.clone(),
            kind: kind as i32,
            trigger_events: c.trigger_events.clone(),
            trigger_rule: c.trigger_rule.clone(),
            wait_seconds: c.wait_seconds,
            recheck_rule: c.recheck_rule.clone(),
            schedule: c.schedule.clone(),
            segment_id: c.segment_id.clone(),
            placement: placement(&c.placement).map_err(|e| format!("campaign.placement: {e}"))?,
            channel: channel(&c.channel).map_err(|e| format!("campaign.channel: {e}"))?,
            offer_ids,
            holdout_share: c.holdout_share,
            holdout_salt: c.holdout_salt.clone(),
            ..Default::default()
        })
    }
}

/// The example campaigns shipped with the service, by file name.
pub const EXAMPLES: [(&str, &str); 4] = [
    ("abandoned_cart.toml", include_str!("../../examples/campaigns/abandoned_cart.toml")),
    ("lapsed_high_value.toml", include_str!("../../examples/campaigns/lapsed_high_value.toml")),
    ("welcome_after_opt_in.toml", include_str!("../../examples/campaigns/welcome_after_opt_in.toml")),
    ("cross_sell_after_purchase.toml", include_str!("../../examples/campaigns/cross_sell_after_purchase.toml")),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_parse_and_their_rules_compile() {
        for (name, text) in EXAMPLES {
            let file = CampaignFile::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let c = file.campaign(vec![]).unwrap_or_else(|e| panic!("{name}: {e}"));
            super::super::compile("trigger_rule", &c.trigger_rule).unwrap_or_else(|e| panic!("{name}: {e}"));
            super::super::compile("recheck_rule", &c.recheck_rule).unwrap_or_else(|e| panic!("{name}: {e}"));
            for o in file.offers().unwrap() {
                crate::domain::offers::validate_offer("offer", o).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}
