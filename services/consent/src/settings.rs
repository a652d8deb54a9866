//! The `[consent]` section of the configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

/// How consent is checked, combined and signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentSettings {
    /// The purposes requests may name.
    pub purposes: Vec<String>,
    /// Purposes allowed unless suppressed (service messages); each must be in `purposes`.
    pub service_purposes: Vec<String>,
    /// Regions where marketing with nothing recorded is denied, e.g. "EU", "DE", "CA".
    pub opt_in_regions: Vec<String>,
    /// Regions where marketing with nothing recorded is allowed, e.g. "US".
    pub opt_out_regions: Vec<String>,
    /// The region assumed when none is known; empty means unknown (the default regime applies).
    pub default_region: String,
    /// The regime of regions in neither list: "opt_in" (default) or "opt_out".
    pub default_regime: String,
    /// How the consents of merged customers combine: "most_restrictive" (default) or "most_recent".
    pub merge_policy: String,
    /// Region for phone numbers written without a country code.
    pub phone_default_region: String,
    /// Default lifetime of double opt-in tokens, in seconds (7 days).
    pub double_opt_in_ttl_seconds: i64,
    /// Default lifetime of unsubscribe tokens, in seconds (90 days).
    pub unsubscribe_ttl_seconds: i64,
    /// Default lifetime of preference-centre tokens, in seconds (30 days).
    pub preference_ttl_seconds: i64,
    /// Channels the preference centre offers switches for (lower-case channel names, e.g. "email").
    pub preference_channels: Vec<String>,
    /// Channels on which a grant made in the preference centre goes through double opt-in.
    pub double_opt_in_channels: Vec<String>,
    /// The HMAC key of tokens. Empty: a key generated on first start and kept in the service database.
    pub token_secret: String,
    /// The public base URL of the HTTP port for links in messages. Empty: `http://<server.http_listen>`.
    pub public_base_url: String,
    /// Days allowed to answer a data-subject request.
    pub request_deadline_days: i32,
    /// Seconds between attempts to carry on data-subject requests left unfinished (a service that could
    /// not be reached, a process stopped mid-request); they are retried until their deadline.
    pub request_retry_seconds: u64,
    /// For TC strings: each purpose granted on the web channel when every listed TCF purpose (1..=11)
    /// has consent, and denied otherwise. Purposes not listed are not recorded from TC strings.
    pub tcf_purposes: BTreeMap<String, Vec<u32>>,
    /// For the Global Privacy Control signal: the purposes it denies on the web channel.
    pub gpc_purposes: Vec<String>,
}

impl Default for ConsentSettings {
    fn default() -> Self {
        Self {
            purposes: ["marketing", "personalisation", "analytics", "service_messages"].map(String::from).to_vec(),
            service_purposes: vec!["service_messages".into()],
            opt_in_regions: vec!["EU".into()],
            opt_out_regions: vec![],
            default_region: String::new(),
            default_regime: "opt_in".into(),
            merge_policy: "most_restrictive".into(),
            phone_default_region: "US".into(),
            double_opt_in_ttl_seconds: 7 * 24 * 3600,
            unsubscribe_ttl_seconds: 90 * 24 * 3600,
            preference_ttl_seconds: 30 * 24 * 3600,
            preference_channels: ["email", "sms", "push", "phone_call", "direct_mail"].map(String::from).to_vec(),
            double_opt_in_channels: vec![],
            token_secret: String::new(),
            public_base_url: String::new(),
            request_deadline_days: 30,
            request_retry_seconds: 60,
            tcf_purposes: [
                ("marketing", vec![1, 3, 4]),
                ("personalisation", vec![1, 5, 6]),
                ("analytics", vec![1, 8, 9]),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            gpc_purposes: vec!["marketing".into()],
        }
    }
}

/// How merged customers' consents combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergePolicy {
    MostRestrictive,
    MostRecent,
}

impl ConsentSettings {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.purposes.is_empty() {
            return Err("consent.purposes: at least one purpose is required".into());
        }
        for (i, p) in self.purposes.iter().enumerate() {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                return Err(format!("consent.purposes[{i}]: `{p}` must be lower-case letters, digits and _"));
            }
        }
        for (i, p) in self.service_purposes.iter().enumerate() {
            if !self.purposes.contains(p) {
                return Err(format!("consent.service_purposes[{i}]: `{p}` is not in consent.purposes"));
            }
        }
        if !matches!(self.default_regime.as_str(), "opt_in" | "opt_out") {
            return Err(format!("consent.default_regime: `{}` must be opt_in or opt_out", self.default_regime));
        }
        if !matches!(self.merge_policy.as_str(), "most_restrictive" | "most_recent") {
            return Err(format!(
                "consent.merge_policy: `{}` must be most_restrictive or most_recent",
                self.merge_policy
            ));
        }
        if self.phone_default_region.parse::<phonenumber::country::Id>().is_err() {
            return Err(format!(
                "consent.phone_default_region: `{}` is not an ISO 3166 region code",
                self.phone_default_region
            ));
        }
        if self.request_retry_seconds == 0 || self.request_retry_seconds > 86_400 {
            return Err("consent.request_retry_seconds: must be between 1 and 86400".into());
        }
        if self.double_opt_in_ttl_seconds <= 0 {
            return Err("consent.double_opt_in_ttl_seconds: must be positive".into());
        }
        if self.unsubscribe_ttl_seconds <= 0 {
            return Err("consent.unsubscribe_ttl_seconds: must be positive".into());
        }
        if self.preference_ttl_seconds <= 0 || self.preference_ttl_seconds > PREFERENCE_TTL_MAX_SECONDS {
            return Err("consent.preference_ttl_seconds: must be between 1 second and 1 year".into());
        }
        for (key, list) in [
            ("preference_channels", &self.preference_channels),
            ("double_opt_in_channels", &self.double_opt_in_channels),
        ] {
            for (i, c) in list.iter().enumerate() {
                if channel_number(c).is_none() {
                    return Err(format!(
                        "consent.{key}[{i}]: `{c}` is not a channel (email, sms, push, phone_call, ...)"
                    ));
                }
            }
        }
        for (purpose, tcf) in &self.tcf_purposes {
            if !self.purposes.contains(purpose) {
                return Err(format!("consent.tcf_purposes.{purpose}: `{purpose}` is not in consent.purposes"));
            }
            if tcf.is_empty() || tcf.iter().any(|p| !(1..=11).contains(p)) {
                return Err(format!("consent.tcf_purposes.{purpose}: list TCF purposes between 1 and 11"));
            }
        }
        for (i, p) in self.gpc_purposes.iter().enumerate() {
            if !self.purposes.contains(p) {
                return Err(format!("consent.gpc_purposes[{i}]: `{p}` is not in consent.purposes"));
            }
        }
        if !self.token_secret.is_empty() && self.token_secret.len() < 16 {
            return Err("consent.token_secret: at least 16 characters".into());
        }
        Ok(())
    }

    /// The merge policy.
    pub fn merge(&self) -> MergePolicy {
        if self.merge_policy == "most_recent" { MergePolicy::MostRecent } else { MergePolicy::MostRestrictive }
    }

    /// The channels the preference centre offers, as numbers, in configuration order.
    pub fn preference_channel_numbers(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self.preference_channels.iter().filter_map(|c| channel_number(c)).collect();
        out.dedup();
        out
    }

    /// Whether a grant on `channel` (a number) goes through double opt-in.
    pub fn needs_double_opt_in(&self, channel: i32) -> bool {
        self.double_opt_in_channels.iter().any(|c| channel_number(c) == Some(channel))
    }

    /// Whether `purpose` is allowed unless suppressed.
    pub fn is_service(&self, purpose: &str) -> bool {
        self.service_purposes.iter().any(|p| p == purpose)
    }

    /// Whether marketing with nothing recorded is allowed in `region` (empty: unknown).
    pub fn opt_out(&self, region: &str) -> bool {
        let region = region.to_ascii_uppercase();
        let country = region.split('-').next().unwrap_or_default().to_string();
        let matches = |list: &[String]| {
            list.iter().any(|r| {
                let r = r.to_ascii_uppercase();
                r == region || r == country || (r == "EU" && EU.contains(&country.as_str()))
            })
        };
        if !region.is_empty() && matches(&self.opt_in_regions) {
            return false;
        }
        if !region.is_empty() && matches(&self.opt_out_regions) {
            return true;
        }
        self.default_regime == "opt_out"
    }
}

/// The longest a preference-centre token may live: one year.
pub const PREFERENCE_TTL_MAX_SECONDS: i64 = 366 * 24 * 3600;

/// The number of a channel named in configuration ("email", "phone_call"): `CHANNEL_<NAME>`.
pub fn channel_number(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_uppercase();
    match rapport_proto::common::v1::Channel::from_str_name(&format!("CHANNEL_{name}")) {
        Some(rapport_proto::common::v1::Channel::Unspecified) | None => None,
        Some(c) => Some(c as i32),
    }
}

/// Members of the EU and the EEA, for the region "EU".
const EU: [&str; 30] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU", "MT",
    "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_decide_the_regime() {
        let s = ConsentSettings { opt_out_regions: vec!["US".into()], ..Default::default() };
        assert!(s.opt_out("US"));
        assert!(s.opt_out("us-ca"));
        assert!(!s.opt_out("DE"), "DE is in the EU");
        assert!(!s.opt_out(""), "unknown region: the default regime");
        let s = ConsentSettings { default_regime: "opt_out".into(), ..Default::default() };
        assert!(s.opt_out("BR"));
        assert!(!s.opt_out("FR"));
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = ConsentSettings { service_purposes: vec!["x".into()], ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("consent.service_purposes[0]"));
        let bad = ConsentSettings { merge_policy: "random".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("consent.merge_policy"));
        let mut bad = ConsentSettings::default();
        bad.tcf_purposes.insert("marketing".into(), vec![12]);
        assert!(bad.validate().unwrap_err().starts_with("consent.tcf_purposes.marketing"));
        let bad = ConsentSettings { gpc_purposes: vec!["ads".into()], ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("consent.gpc_purposes[0]"));
        let bad = ConsentSettings { double_opt_in_channels: vec!["pigeon".into()], ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("consent.double_opt_in_channels[0]"));
        let bad = ConsentSettings { preference_ttl_seconds: 400 * 24 * 3600, ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("consent.preference_ttl_seconds"));
        let s = ConsentSettings { double_opt_in_channels: vec!["email".into()], ..Default::default() };
        assert!(s.needs_double_opt_in(1) && !s.needs_double_opt_in(2));
        assert!(ConsentSettings::default().validate().is_ok());
    }
}
