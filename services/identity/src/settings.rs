//! The `[identity]` section of the configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::normalize::IdType;

/// How identity normalises identifiers and when it merges customers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// Region used for phone numbers written without a country code (ISO 3166 alpha-2, e.g. "US", "DE").
    pub phone_default_region: String,
    /// Fold provider-specific email variants: dots in Gmail local parts and `+tag` suffixes everywhere.
    pub email_fold_provider_variants: bool,
    /// Extra blocked values, as regular expressions matched against the normalised value (whole match).
    pub blocked_patterns: Vec<String>,
    /// How many identifiers of a type one customer may hold, by type name (`user_id`, `email`, `phone`,
    /// `anonymous_id`, `device_id`, `loyalty_id`, `external`). Types not listed get `default_limit`.
    pub limits: BTreeMap<String, u32>,
    /// The limit for types not in `limits`.
    pub default_limit: u32,
    /// When non-zero, only identifiers seen within this many days count toward a limit.
    pub limit_window_days: u32,
    /// Identifier types from most to least trusted. When a merge would break a limit, the evidence of the
    /// lowest type in this order is left out first.
    pub priority: Vec<String>,
    /// When set, new customer ids are derived from this seed and the first identifier seen instead of
    /// being random, so a replay of the same input gives the same ids (`rapport demo`, tests). Leave it
    /// empty in production: derived ids reveal nothing, but random ones need no secret to stay unguessable.
    pub customer_id_seed: String,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            phone_default_region: "US".into(),
            email_fold_provider_variants: false,
            blocked_patterns: Vec::new(),
            limits: BTreeMap::from([("user_id".to_string(), 1)]),
            default_limit: 5,
            limit_window_days: 0,
            priority: ["user_id", "loyalty_id", "external", "email", "phone", "device_id", "anonymous_id"]
                .map(String::from)
                .to_vec(),
            customer_id_seed: String::new(),
        }
    }
}

impl IdentitySettings {
    /// Checks the values that serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.phone_default_region.parse::<phonenumber::country::Id>().is_err() {
            return Err(format!(
                "identity.phone_default_region: `{}` is not an ISO 3166 region code",
                self.phone_default_region
            ));
        }
        for (i, p) in self.blocked_patterns.iter().enumerate() {
            regex::Regex::new(p).map_err(|e| format!("identity.blocked_patterns[{i}]: {e}"))?;
        }
        for (name, limit) in &self.limits {
            IdType::from_name(name).ok_or_else(|| format!("identity.limits.{name}: unknown identifier type"))?;
            if *limit == 0 {
                return Err(format!("identity.limits.{name}: must be at least 1"));
            }
        }
        if self.default_limit == 0 {
            return Err("identity.default_limit: must be at least 1".into());
        }
        for (i, name) in self.priority.iter().enumerate() {
            IdType::from_name(name)
                .ok_or_else(|| format!("identity.priority[{i}]: unknown identifier type `{name}`"))?;
        }
        Ok(())
    }

    /// The most identifiers of `t` one customer may hold.
    pub fn limit_of(&self, t: IdType) -> u32 {
        self.limits.get(t.name()).copied().unwrap_or(self.default_limit)
    }

    /// The rank of `t` in the priority order: 0 is the most trusted; unlisted types rank last.
    pub fn rank_of(&self, t: IdType) -> usize {
        self.priority.iter().position(|p| p == t.name()).unwrap_or(self.priority.len())
    }
}
