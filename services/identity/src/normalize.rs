//! Typed identifiers and their normalisation: emails trimmed and lower-cased (provider variants folded
//! when configured), phones to E.164, external ids namespaced, and blocked values refused so they never
//! link two people.

use std::fmt;

use regex::Regex;

use crate::settings::IdentitySettings;

/// The kinds of identifier identity understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdType {
    UserId,
    Email,
    Phone,
    AnonymousId,
    DeviceId,
    LoyaltyId,
    External,
}

impl IdType {
    /// Every type, in declaration order.
    pub const ALL: [IdType; 7] = [
        IdType::UserId,
        IdType::Email,
        IdType::Phone,
        IdType::AnonymousId,
        IdType::DeviceId,
        IdType::LoyaltyId,
        IdType::External,
    ];

    /// The name used in configuration and storage.
    pub fn name(self) -> &'static str {
        match self {
            IdType::UserId => "user_id",
            IdType::Email => "email",
            IdType::Phone => "phone",
            IdType::AnonymousId => "anonymous_id",
            IdType::DeviceId => "device_id",
            IdType::LoyaltyId => "loyalty_id",
            IdType::External => "external",
        }
    }

    /// The type named `name`.
    pub fn from_name(name: &str) -> Option<IdType> {
        IdType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A normalised identifier: what is stored and compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident {
    pub id_type: IdType,
    /// The system of an external id (`crm`); empty for other types.
    pub namespace: String,
    pub value: String,
}

impl fmt::Display for Ident {
    /// `type:value` or `external:namespace:value`. Identifiers are PII: never log this.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}:{}", self.id_type.name(), self.value)
        } else {
            write!(f, "{}:{}:{}", self.id_type.name(), self.namespace, self.value)
        }
    }
}

/// Why an identifier was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed: the request is wrong. Carries what is wrong, without the value.
    Invalid(String),
    /// A placeholder such as `null`, `anonymous`, `0000`: accepted but never links anything.
    Blocked,
}

/// Normalises identifiers as configured.
#[derive(Debug, Clone)]
pub struct Normalizer {
    region: phonenumber::country::Id,
    fold_email: bool,
    blocked: Vec<Regex>,
}

const MAX_VALUE_LEN: usize = 512;

/// Values that mean "unknown" in every system that has ever exported data.
const BLOCKED_WORDS: [&str; 12] =
    ["null", "nil", "none", "undefined", "anonymous", "unknown", "n/a", "na", "test", "-", "-1", "0"];

impl Normalizer {
    /// A normaliser for `settings` (validated beforehand).
    pub fn new(settings: &IdentitySettings) -> Result<Self, String> {
        settings.validate()?;
        let blocked = settings
            .blocked_patterns
            .iter()
            .map(|p| Regex::new(&format!("^(?:{p})$")).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            region: settings.phone_default_region.parse().map_err(|_| "phone_default_region".to_string())?,
            fold_email: settings.email_fold_provider_variants,
            blocked,
        })
    }

    /// The normalised form of (`id_type`, `namespace`, `value`).
    pub fn normalize(&self, id_type: IdType, namespace: &str, value: &str) -> Result<Ident, Rejection> {
        let trimmed = value.trim();
        if trimmed.len() > MAX_VALUE_LEN {
            return Err(Rejection::Invalid(format!("longer than {MAX_VALUE_LEN} bytes")));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(Rejection::Invalid("contains control characters".into()));
        }
        let lower = trimmed.to_lowercase();
        if is_placeholder(&lower) {
            return Err(Rejection::Blocked);
        }
        let namespace = namespace.trim().to_lowercase();
        if id_type == IdType::External {
            if namespace.is_empty() {
                return Err(Rejection::Invalid("external identifiers need a namespace (e.g. `crm`)".into()));
            }
            if !namespace.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
                return Err(Rejection::Invalid("namespace: only letters, digits, `_`, `-` and `.`".into()));
            }
        } else if !namespace.is_empty() {
            return Err(Rejection::Invalid("namespace: only external identifiers have one".into()));
        }
        let value = match id_type {
            IdType::Email => self.email(&lower)?,
            IdType::Phone => self.phone(trimmed)?,
            // Ids from other systems are case-sensitive; keep them as given (trimmed).
            IdType::UserId | IdType::AnonymousId | IdType::DeviceId | IdType::LoyaltyId | IdType::External => {
                trimmed.to_string()
            }
        };
        if self.blocked.iter().any(|r| r.is_match(&value)) {
            return Err(Rejection::Blocked);
        }
        Ok(Ident { id_type, namespace, value })
    }

    fn email(&self, lower: &str) -> Result<String, Rejection> {
        let (local, domain) =
            lower.rsplit_once('@').ok_or_else(|| Rejection::Invalid("not an email address (no `@`)".into()))?;
        if local.is_empty()
            || domain.is_empty()
            || !domain.contains('.')
            || local.contains(char::is_whitespace)
            || domain.contains(char::is_whitespace)
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(Rejection::Invalid("not an email address".into()));
        }
        if !self.fold_email {
            return Ok(format!("{local}@{domain}"));
        }
        let local = local.split('+').next().unwrap_or(local);
        let (local, domain) = match domain {
            "gmail.com" | "googlemail.com" => (local.replace('.', ""), "gmail.com"),
            _ => (local.to_string(), domain),
        };
        if local.is_empty() {
            return Err(Rejection::Invalid("not an email address".into()));
        }
        Ok(format!("{local}@{domain}"))
    }

    fn phone(&self, raw: &str) -> Result<String, Rejection> {
        let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return Err(Rejection::Invalid("not a phone number (no digits)".into()));
        }
        if digits.chars().all(|c| c == '0') || digits.chars().all(|c| c == digits.as_bytes()[0] as char) {
            return Err(Rejection::Blocked);
        }
        let raw = raw.trim();
        let raw = raw.strip_prefix("00").map(|r| format!("+{r}")).unwrap_or_else(|| raw.to_string());
        let number =
            phonenumber::parse(Some(self.region), &raw).map_err(|_| Rejection::Invalid("not a phone number".into()))?;
        if !phonenumber::is_valid(&number) {
            return Err(Rejection::Invalid("not a valid phone number for its region".into()));
        }
        Ok(number.format().mode(phonenumber::Mode::E164).to_string())
    }
}

fn is_placeholder(lower: &str) -> bool {
    lower.is_empty()
        || BLOCKED_WORDS.contains(&lower)
        || lower.chars().all(|c| c == '0' || c == '-' || c == ' ')
        || lower.chars().all(|c| c == 'x' || c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> Normalizer {
        Normalizer::new(&IdentitySettings::default()).unwrap()
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        let id = n().normalize(IdType::Email, "", "  Ann.Lee+News@GMail.com ").unwrap();
        assert_eq!(id.value, "ann.lee+news@gmail.com");
        assert_eq!(
            n().normalize(IdType::Email, "", "no-at-sign"),
            Err(Rejection::Invalid("not an email address (no `@`)".into()))
        );
    }

    #[test]
    fn provider_variants_fold_when_configured() {
        let settings = IdentitySettings { email_fold_provider_variants: true, ..Default::default() };
        let n = Normalizer::new(&settings).unwrap();
        assert_eq!(n.normalize(IdType::Email, "", "Ann.Lee+News@googlemail.com").unwrap().value, "annlee@gmail.com");
        assert_eq!(n.normalize(IdType::Email, "", "ann.lee+x@example.com").unwrap().value, "ann.lee@example.com");
    }

    #[test]
    fn phones_become_e164_in_the_default_region() {
        assert_eq!(n().normalize(IdType::Phone, "", "(415) 555-2671").unwrap().value, "+14155552671");
        assert_eq!(n().normalize(IdType::Phone, "", "0044 20 7946 0958").unwrap().value, "+442079460958");
        let de = IdentitySettings { phone_default_region: "DE".into(), ..Default::default() };
        let n = Normalizer::new(&de).unwrap();
        assert_eq!(n.normalize(IdType::Phone, "", "030 1234567").unwrap().value, "+49301234567");
        assert!(matches!(n.normalize(IdType::Phone, "", "12"), Err(Rejection::Invalid(_))));
    }

    #[test]
    fn placeholders_are_blocked() {
        for v in ["", "  ", "null", "NULL", "anonymous", "0000000", "-1", "undefined"] {
            assert_eq!(n().normalize(IdType::UserId, "", v), Err(Rejection::Blocked), "{v:?}");
        }
        assert_eq!(n().normalize(IdType::Phone, "", "000-000-0000"), Err(Rejection::Blocked));
        let custom = IdentitySettings { blocked_patterns: vec!["guest-.*".into()], ..Default::default() };
        let n = Normalizer::new(&custom).unwrap();
        assert_eq!(n.normalize(IdType::AnonymousId, "", "guest-42"), Err(Rejection::Blocked));
        assert!(n.normalize(IdType::AnonymousId, "", "a-guest-42").is_ok());
    }

    #[test]
    fn external_ids_need_a_namespace() {
        let id = n().normalize(IdType::External, "CRM", "12345").unwrap();
        assert_eq!((id.namespace.as_str(), id.value.as_str()), ("crm", "12345"));
        assert!(matches!(n().normalize(IdType::External, "", "12345"), Err(Rejection::Invalid(_))));
        assert!(matches!(n().normalize(IdType::Email, "crm", "a@b.co"), Err(Rejection::Invalid(_))));
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = IdentitySettings { phone_default_region: "XX".into(), ..Default::default() };
        assert!(Normalizer::new(&bad).unwrap_err().contains("identity.phone_default_region"));
        let bad = IdentitySettings { priority: vec!["emial".into()], ..Default::default() };
        assert!(Normalizer::new(&bad).unwrap_err().contains("identity.priority[0]"));
    }
}
