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
    /// How golden records pick the surviving value of each attribute (`[identity.survivorship]`).
    pub survivorship: SurvivorshipSettings,
}

/// The `[identity.survivorship]` section: which rule picks each attribute's surviving value in a golden
/// record (GetGoldenRecord). Rule names: `most_recent`, `source_priority`, `most_frequent`, `longest`,
/// `most_complete_record`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SurvivorshipSettings {
    /// The rule of attributes without their own rule.
    pub default_rule: String,
    /// Rules by attribute name (a SourceRecord attribute: `first_name`, `email`, `date_of_birth`, ...).
    pub attribute_rules: BTreeMap<String, String>,
    /// Sources from most to least trusted, for `source_priority`; unlisted sources rank after them.
    pub source_priority: Vec<String>,
}

impl Default for SurvivorshipSettings {
    fn default() -> Self {
        Self { default_rule: "most_recent".into(), attribute_rules: BTreeMap::new(), source_priority: Vec::new() }
    }
}

impl SurvivorshipSettings {
    /// Checks rule and attribute names, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let rule = |key: &str, name: &str| {
            Rule::from_name(name).map(|_| ()).ok_or_else(|| {
                format!("identity.survivorship.{key}: unknown rule `{name}` (one of {})", Rule::NAMES.join(", "))
            })
        };
        rule("default_rule", &self.default_rule)?;
        for (attribute, name) in &self.attribute_rules {
            if !crate::matching::ATTRIBUTE_NAMES.contains(&attribute.as_str()) {
                return Err(format!("identity.survivorship.attribute_rules.{attribute}: unknown attribute"));
            }
            rule(&format!("attribute_rules.{attribute}"), name)?;
        }
        for (i, source) in self.source_priority.iter().enumerate() {
            if source.trim().is_empty() {
                return Err(format!("identity.survivorship.source_priority[{i}]: empty source name"));
            }
        }
        Ok(())
    }

    /// The rule of `attribute`.
    pub fn rule_of(&self, attribute: &str) -> Rule {
        let name = self.attribute_rules.get(attribute).unwrap_or(&self.default_rule);
        Rule::from_name(name).unwrap_or_default()
    }

    /// The rank of `source` in the priority list: 0 is the most trusted; unlisted sources rank last.
    pub fn rank_of(&self, source: &str) -> usize {
        self.source_priority.iter().position(|s| s.trim() == source).unwrap_or(self.source_priority.len())
    }
}

/// A survivorship rule (the SurvivorshipRule of golden.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rule {
    /// The value of the most recently updated record.
    #[default]
    MostRecent,
    /// The value of the record whose source ranks highest; ties by recency.
    SourcePriority,
    /// The value most records agree on; ties by recency.
    MostFrequent,
    /// The longest value; ties by recency.
    Longest,
    /// The value of the record with the most attributes; ties by recency.
    MostCompleteRecord,
}

impl Rule {
    /// The rule names of the configuration, in the order of the enum.
    pub const NAMES: [&str; 5] = ["most_recent", "source_priority", "most_frequent", "longest", "most_complete_record"];
    const ALL: [Rule; 5] =
        [Rule::MostRecent, Rule::SourcePriority, Rule::MostFrequent, Rule::Longest, Rule::MostCompleteRecord];

    /// The rule of a configuration name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Rule> {
        let name = name.trim().to_ascii_lowercase();
        Self::NAMES.iter().position(|n| *n == name).map(|i| Self::ALL[i])
    }

    /// The rule's configuration name.
    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|r| *r == self).unwrap_or(0)]
    }
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
            survivorship: SurvivorshipSettings::default(),
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
        self.survivorship.validate()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> IdentitySettings {
        toml::from_str(toml).expect("the identity section parses")
    }

    #[test]
    fn survivorship_parses_with_defaults_and_per_attribute_rules() {
        let defaults = IdentitySettings::default();
        assert_eq!(defaults.survivorship.rule_of("email"), Rule::MostRecent);
        let s = parse(
            "[survivorship]\ndefault_rule = \"source_priority\"\nsource_priority = [\"crm\", \"loyalty\"]\n\
             [survivorship.attribute_rules]\nfirst_name = \"LONGEST\"\ndate_of_birth = \"most_frequent\"\n",
        );
        s.validate().unwrap();
        assert_eq!(s.survivorship.rule_of("first_name"), Rule::Longest);
        assert_eq!(s.survivorship.rule_of("date_of_birth"), Rule::MostFrequent);
        assert_eq!(s.survivorship.rule_of("email"), Rule::SourcePriority);
        assert_eq!((s.survivorship.rank_of("crm"), s.survivorship.rank_of("loyalty")), (0, 1));
        assert_eq!(s.survivorship.rank_of("webshop"), 2, "unlisted sources rank last");
        assert_eq!(Rule::MostCompleteRecord.name(), "most_complete_record");
    }

    #[test]
    fn bad_survivorship_names_the_key() {
        let bad = parse("[survivorship]\ndefault_rule = \"newest\"\n");
        let err = bad.validate().unwrap_err();
        assert!(err.starts_with("identity.survivorship.default_rule: unknown rule `newest`"), "{err}");
        let bad = parse("[survivorship.attribute_rules]\nemail = \"longst\"\n");
        let err = bad.validate().unwrap_err();
        assert!(err.starts_with("identity.survivorship.attribute_rules.email: unknown rule `longst`"), "{err}");
        let bad = parse("[survivorship.attribute_rules]\nshoe_size = \"longest\"\n");
        assert_eq!(bad.validate().unwrap_err(), "identity.survivorship.attribute_rules.shoe_size: unknown attribute");
        assert!(toml::from_str::<IdentitySettings>("[survivorship]\nrule = \"longest\"\n").is_err());
    }
}
