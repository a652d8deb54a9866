//! Definition files of offers and campaigns (TOML, or JSON with the same keys): a `[campaign]` and the
//! `[[offers]]` it sends, or one offer on its own. `rapport offer put` and `rapport campaign put` load
//! them (services/rapport/src/ops/offer.rs and campaign.rs document the keys), and so do tests. The four
//! ready examples are in services/decision/examples/campaigns/. Errors name the field by the file's keys
//! (`offers[1].placements[0]`).

use rapport_errors::Error;
use rapport_proto::common::v1::{self as common, Channel, MessageClass};
use rapport_proto::decision::v1::{self as pb, CampaignKind, CampaignState, PlacementKind};
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
    /// The campaign to change; otherwise one of the same name, or a new one.
    #[serde(default)]
    pub id: String,
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
    /// Offers that exist already, beside the file's `[[offers]]`.
    #[serde(default)]
    pub offer_ids: Vec<String>,
    #[serde(default)]
    pub experiment_id: String,
    /// draft, running, paused or stopped; empty leaves it as it is (a draft when new).
    #[serde(default)]
    pub state: String,
}

/// One offer: an offer file, or an `[[offers]]` entry of a campaign file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferDef {
    /// The offer to change; otherwise the active offer of the same name, or a new one.
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub placements: Vec<String>,
    /// With `template_id` (and `variables`): the content of one channel; or `content`, one per channel.
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub template_id: String,
    #[serde(default)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub content: Vec<ContentDef>,
    #[serde(default)]
    pub eligibility_rule: String,
    /// What a conversion is worth, in minor units of `currency`.
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
    #[serde(default)]
    pub purpose: String,
    /// RFC 3339 or a date (midnight UTC).
    #[serde(default)]
    pub valid_from: String,
    #[serde(default)]
    pub valid_until: String,
    #[serde(default)]
    pub caps: Vec<CapDef>,
}

/// A `[[content]]` entry of an offer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentDef {
    pub channel: String,
    pub template_id: String,
    #[serde(default)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A `[[caps]]` entry of an offer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapDef {
    pub max: i32,
    #[serde(default)]
    pub per_customer: bool,
    #[serde(default)]
    pub window_seconds: i64,
}

/// A lower-case name (`web_banner`, `call-centre`) as the enum value `PREFIX_NAME`, or an error naming `field`.
pub fn enum_value<E>(
    field: &str,
    text: &str,
    prefix: &str,
    parse: impl Fn(&str) -> Option<E>,
    choices: &str,
) -> Result<E, Error> {
    parse(&format!("{prefix}{}", text.trim().to_ascii_uppercase().replace('-', "_")))
        .ok_or_else(|| Error::invalid(field, format!("unknown value `{text}`; expected one of {choices}")))
}

/// A placement by name.
pub fn placement(field: &str, name: &str) -> Result<i32, Error> {
    let choices = "email, sms, push, web_banner, call_centre_script, store_till, in_app";
    match enum_value(field, name, "PLACEMENT_KIND_", PlacementKind::from_str_name, choices)? {
        PlacementKind::Unspecified => Err(Error::invalid(field, "must name a placement")),
        p => Ok(p as i32),
    }
}

/// A channel by name; empty is left unspecified.
pub fn channel(field: &str, name: &str) -> Result<i32, Error> {
    if name.trim().is_empty() {
        return Ok(0);
    }
    let choices = "email, sms, push, phone_call, direct_mail, in_app, web, call_centre, store";
    Ok(enum_value(field, name, "CHANNEL_", Channel::from_str_name, choices)? as i32)
}

fn variables(v: &Option<serde_json::Map<String, serde_json::Value>>) -> Option<prost_types::Struct> {
    v.as_ref().map(|m| rapport_rpc::convert::json_to_struct(serde_json::Value::Object(m.clone())))
}

fn time(field: &str, text: &str) -> Result<Option<prost_types::Timestamp>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let ms = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        t.timestamp_millis()
    } else if let Some(t) =
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0))
    {
        t.and_utc().timestamp_millis()
    } else {
        return Err(Error::invalid(
            field,
            format!("`{text}` is not an RFC 3339 time (2026-11-25T10:00:00Z) or a date"),
        ));
    };
    Ok(Some(rapport_rpc::convert::timestamp(ms)))
}

impl OfferDef {
    /// The offer as CreateOffer takes it; `at` is the definition's path in its file (empty, or `offers[1]`).
    pub fn to_offer(&self, at: &str) -> Result<pb::Offer, Error> {
        let f = |name: &str| if at.is_empty() { name.to_string() } else { format!("{at}.{name}") };
        let mut content = Vec::new();
        if !self.template_id.is_empty() || !self.channel.is_empty() {
            if !self.content.is_empty() {
                return Err(Error::invalid(
                    &f("template_id"),
                    "give channel and template_id, or [[content]], not both",
                ));
            }
            content.push(pb::ChannelContent {
                channel: channel(&f("channel"), &self.channel)?,
                template_id: self.template_id.clone(),
                variables: variables(&self.variables),
            });
        } else if self.variables.is_some() {
            return Err(Error::invalid(&f("variables"), "belong to a channel and template_id"));
        }
        for (i, c) in self.content.iter().enumerate() {
            content.push(pb::ChannelContent {
                channel: channel(&f(&format!("content[{i}].channel")), &c.channel)?,
                template_id: c.template_id.clone(),
                variables: variables(&c.variables),
            });
        }
        let message_class = match self.class.trim() {
            "" | "marketing" => MessageClass::Marketing,
            "service" => MessageClass::Service,
            other => {
                return Err(Error::invalid(
                    &f("class"),
                    format!("unknown value `{other}`; expected marketing or service"),
                ));
            }
        };
        if self.value_minor != 0 && self.currency.is_empty() {
            return Err(Error::invalid(&f("currency"), "is required with value_minor (an ISO 4217 code such as EUR)"));
        }
        Ok(pb::Offer {
            offer_id: self.id.clone(),
            name: self.name.clone(),
            content,
            valid_from: time(&f("valid_from"), &self.valid_from)?,
            valid_until: time(&f("valid_until"), &self.valid_until)?,
            eligibility_rule: self.eligibility_rule.clone(),
            business_value: (self.value_minor != 0 || !self.currency.is_empty())
                .then(|| common::Money { currency: self.currency.clone(), minor_units: self.value_minor }),
            weight: self.weight,
            caps: self
                .caps
                .iter()
                .map(|c| pb::Cap { max: c.max, per_customer: c.per_customer, window_seconds: c.window_seconds })
                .collect(),
            placements: self
                .placements
                .iter()
                .enumerate()
                .map(|(i, p)| placement(&f(&format!("placements[{i}]")), p))
                .collect::<Result<_, _>>()?,
            tags: self.tags.clone(),
            message_class: message_class as i32,
            purpose: self.purpose.clone(),
            ..Default::default()
        })
    }

    /// The offer, checked as CreateOffer will check it (the rule compiled against the profile's fields).
    pub fn checked(&self, at: &str) -> Result<pb::Offer, Error> {
        let offer = self.to_offer(at)?;
        crate::domain::offers::validate_offer("offer", offer.clone())
            .map_err(|e| Error::invalid(&self.key_of(&e.to_string(), at), problem(&e.to_string())))?;
        Ok(offer)
    }

    /// The file key of the field an `offer.FIELD: problem` message names (`business_value.currency` is
    /// `currency`, `content[0].template_id` of a one-channel offer is `template_id`), under `at`.
    pub fn key_of(&self, message: &str, at: &str) -> String {
        let field = message.split_once(": ").map_or("", |(f, _)| f);
        let field = field.strip_prefix("offer").unwrap_or(field).trim_start_matches('.');
        let key = match field {
            "business_value.currency" => "currency",
            "business_value.minor_units" | "business_value" => "value_minor",
            "message_class" => "class",
            k if self.content.is_empty() && k.starts_with("content[0].") => &k["content[0].".len()..],
            k => k,
        };
        match (at.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => at.to_string(),
            (false, false) => format!("{at}.{key}"),
        }
    }
}

/// The problem part of a `field: problem` message.
pub fn problem(message: &str) -> &str {
    message.split_once(": ").map_or(message, |(_, p)| p)
}

impl CampaignDef {
    /// The campaign as CreateCampaign takes it (its `offer_ids` those of the file; add the `[[offers]]`').
    pub fn to_campaign(&self) -> Result<pb::Campaign, Error> {
        let kind = match enum_value(
            "campaign.kind",
            &self.kind,
            "CAMPAIGN_KIND_",
            CampaignKind::from_str_name,
            "triggered, scheduled",
        )? {
            CampaignKind::Unspecified => return Err(Error::invalid("campaign.kind", "must be triggered or scheduled")),
            k => k,
        };
        let state = if self.state.trim().is_empty() {
            CampaignState::Unspecified
        } else {
            let choices = "draft, running, paused, stopped";
            enum_value("campaign.state", &self.state, "CAMPAIGN_STATE_", CampaignState::from_str_name, choices)?
        };
        Ok(pb::Campaign {
            campaign_id: self.id.clone(),
            name: self.name.clone(),
            kind: kind as i32,
            state: state as i32,
            trigger_events: self.trigger_events.clone(),
            trigger_rule: self.trigger_rule.clone(),
            wait_seconds: self.wait_seconds,
            recheck_rule: self.recheck_rule.clone(),
            schedule: self.schedule.clone(),
            segment_id: self.segment_id.clone(),
            placement: placement("campaign.placement", &self.placement)?,
            channel: channel("campaign.channel", &self.channel)?,
            offer_ids: self.offer_ids.clone(),
            holdout_share: self.holdout_share,
            holdout_salt: self.holdout_salt.clone(),
            experiment_id: self.experiment_id.clone(),
            ..Default::default()
        })
    }
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
            .map(|(i, o)| o.to_offer(&format!("offers[{i}]")).map_err(|e| e.to_string()))
            .collect()
    }

    /// The campaign to create, restricted to `offer_ids` (the ids the offers got) and those of the file.
    pub fn campaign(&self, offer_ids: Vec<String>) -> Result<pb::Campaign, String> {
        let mut c = self.campaign.to_campaign().map_err(|e| e.to_string())?;
        c.offer_ids.extend(offer_ids);
        Ok(c)
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
