//! Field-level masking for callers that may see a profile but not every contact detail in full (store
//! tills, marketers): an email address becomes `a***@example.com`, a phone number `+49******89`.
//!
//! A caller is masked when its token holds `profile:read:masked` instead of `profile:read`, or when its
//! API key, role or JWT lists `mask = ["email", "phone"]`. The profile service applies the mask to what
//! GetProfile and BatchGetProfiles answer: typed identifiers, and traits whose name or value is an email
//! address or a phone number.

use std::collections::BTreeSet;

use prost_types::{Struct, Value, value::Kind};
use rapport_proto::common::v1::IdentifierType;
use rapport_proto::profile::v1 as pb;

use crate::{PROFILE_READ_MASKED_SCOPE, PROFILE_READ_SCOPE, Principal};

/// Which contact details a caller sees only partly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mask {
    pub email: bool,
    pub phone: bool,
}

impl Mask {
    /// Nothing masked.
    pub const NONE: Mask = Mask { email: false, phone: false };
    /// Email addresses and phone numbers masked.
    pub const EMAIL_AND_PHONE: Mask = Mask { email: true, phone: true };
    /// The field names accepted in `mask = [...]`.
    pub const FIELDS: [&'static str; 2] = ["email", "phone"];

    /// Parses `mask = ["email", "phone"]`; `key` names the configuration entry in the error.
    pub fn parse(key: &str, fields: &[String]) -> anyhow::Result<Mask> {
        let mut mask = Mask::NONE;
        for f in fields {
            match f.trim() {
                "email" => mask.email = true,
                "phone" => mask.phone = true,
                other => anyhow::bail!("{key}: unknown field `{other}`; known: {}", Mask::FIELDS.join(", ")),
            }
        }
        Ok(mask)
    }

    /// The mask a set of scopes implies: email and phone when it holds the masked read but not the full one.
    pub fn implied_by(scopes: &BTreeSet<String>) -> Mask {
        if scopes.contains(PROFILE_READ_MASKED_SCOPE)
            && !scopes.contains(PROFILE_READ_SCOPE)
            && !scopes.contains(crate::ADMIN_SCOPE)
        {
            Mask::EMAIL_AND_PHONE
        } else {
            Mask::NONE
        }
    }

    /// Both masks together.
    pub fn union(self, other: Mask) -> Mask {
        Mask { email: self.email || other.email, phone: self.phone || other.phone }
    }

    /// Whether anything is masked.
    pub fn is_none(self) -> bool {
        self == Mask::NONE
    }

    /// The mask of a request's caller (none for in-process calls without a principal).
    pub fn of<T>(request: &tonic::Request<T>) -> Mask {
        Principal::of(request).map(|p| p.mask).unwrap_or_default()
    }

    /// Masks the contact details of a profile in place.
    pub fn apply_to_profile(self, profile: &mut pb::Profile) {
        if self.is_none() {
            return;
        }
        for identifier in &mut profile.identifiers {
            match IdentifierType::try_from(identifier.r#type) {
                Ok(IdentifierType::Email) if self.email => identifier.value = mask_email(&identifier.value),
                Ok(IdentifierType::Phone) if self.phone => identifier.value = mask_phone(&identifier.value),
                _ => {}
            }
        }
        if let Some(traits) = &mut profile.traits {
            self.apply_to_struct(traits);
        }
    }

    /// Masks every profile of a BatchGetProfiles answer in place.
    pub fn apply_to_batch(self, response: &mut pb::BatchGetProfilesResponse) {
        for result in &mut response.results {
            if let Some(pb::batch_get_profiles_result::Outcome::Profile(p)) = &mut result.outcome {
                self.apply_to_profile(p);
            }
        }
    }

    /// Masks string values in a JSON-like struct: by the field name (`email`, `work_email`, `phone`,
    /// `mobile`) and by the value's form (anything that looks like an address or a number).
    pub fn apply_to_struct(self, s: &mut Struct) {
        for (name, value) in s.fields.iter_mut() {
            self.apply_to_value(&name.to_ascii_lowercase(), value);
        }
    }

    fn apply_to_value(self, name: &str, value: &mut Value) {
        match &mut value.kind {
            Some(Kind::StringValue(text)) => {
                let named_email = name.contains("email");
                let named_phone = name.contains("phone") || name.contains("mobile");
                if self.email && (named_email || looks_like_email(text)) {
                    *text = mask_email(text);
                } else if self.phone && (named_phone || looks_like_phone(text)) {
                    *text = mask_phone(text);
                }
            }
            Some(Kind::StructValue(inner)) => self.apply_to_struct(inner),
            Some(Kind::ListValue(list)) => {
                for v in &mut list.values {
                    self.apply_to_value(name, v);
                }
            }
            _ => {}
        }
    }
}

/// Whether `text` has the form of an email address (`local@domain.tld`).
pub fn looks_like_email(text: &str) -> bool {
    let text = text.trim();
    match text.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !text.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// Whether `text` has the form of a phone number: international (`+49 ...`) or national (`0151 ...`,
/// `(030) ...`), 7 to 15 digits with spaces, dots, dashes or parentheses between them. Other digit
/// strings (dates, order numbers) are left alone unless the field is named as a phone.
pub fn looks_like_phone(text: &str) -> bool {
    let text = text.trim();
    let digits = text.chars().filter(char::is_ascii_digit).count();
    let body = text.strip_prefix('+').unwrap_or(text);
    (7..=15).contains(&digits)
        && body.chars().all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
        && (text.starts_with('+') || text.starts_with('0') || text.starts_with('('))
}

/// `anna.berg@example.com` -> `a***@example.com`: the first character of the local part and the domain.
pub fn mask_email(email: &str) -> String {
    let email = email.trim();
    match email.rsplit_once('@') {
        Some((local, domain)) => match local.chars().next() {
            Some(first) => format!("{first}***@{domain}"),
            None => format!("***@{domain}"),
        },
        None => "***".to_string(),
    }
}

/// `+4915123456789` -> `+49*********89`: a leading `+`, the first two and the last two digits; every other
/// digit is a `*` and separators are dropped. Numbers of six digits or fewer are masked whole.
pub fn mask_phone(phone: &str) -> String {
    let phone = phone.trim();
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    let plus = if phone.starts_with('+') { "+" } else { "" };
    if digits.len() <= 6 {
        return format!("{plus}{}", "*".repeat(digits.len().max(3)));
    }
    let n = digits.len();
    let head: String = digits[..2].iter().collect();
    let tail: String = digits[n - 2..].iter().collect();
    format!("{plus}{head}{}{tail}", "*".repeat(n - 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_proto::common::v1::Identifier;

    #[test]
    fn emails_and_phones() {
        assert_eq!(mask_email("anna.berg@example.com"), "a***@example.com");
        assert_eq!(mask_email("@example.com"), "***@example.com");
        assert_eq!(mask_email("nonsense"), "***");
        assert_eq!(mask_phone("+4915123456789"), "+49*********89");
        assert_eq!(mask_phone("+49 151 2345 6789"), "+49*********89");
        assert_eq!(mask_phone("+49123456789"), "+49*******89");
        assert_eq!(mask_phone("12345"), "*****");
        assert!(looks_like_email("a.b@c.de") && !looks_like_email("a@b") && !looks_like_email("x y@c.de"));
        assert!(looks_like_phone("+49 151 2345 6789") && looks_like_phone("(030) 1234567"));
        assert!(!looks_like_phone("2024-01-05") && !looks_like_phone("12345") && !looks_like_phone("abc1234567"));
    }

    #[test]
    fn masked_fields_come_from_scopes_and_config() {
        let scopes = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(Mask::implied_by(&scopes(&["profile:read:masked"])), Mask::EMAIL_AND_PHONE);
        assert_eq!(Mask::implied_by(&scopes(&["profile:read:masked", "profile:read"])), Mask::NONE);
        assert_eq!(Mask::parse("k", &["phone".into()]).unwrap(), Mask { email: false, phone: true });
        assert!(Mask::parse("auth.api_keys[0].mask", &["iban".into()]).unwrap_err().to_string().contains("iban"));
    }

    #[test]
    fn a_profile_is_masked_in_identifiers_and_traits() {
        let traits = rapport_rpc_like_struct(&[
            ("email", "kim@example.com"),
            ("contact", "kim.alt@example.org"),
            ("mobile", "+33 6 12 34 56 78"),
            ("city", "Lyon"),
        ]);
        let mut profile = pb::Profile {
            identifiers: vec![
                Identifier {
                    r#type: IdentifierType::Email as i32,
                    value: "kim@example.com".into(),
                    namespace: String::new(),
                },
                Identifier {
                    r#type: IdentifierType::Phone as i32,
                    value: "+33612345678".into(),
                    namespace: String::new(),
                },
                Identifier { r#type: IdentifierType::LoyaltyId as i32, value: "L-1".into(), namespace: String::new() },
            ],
            traits: Some(traits),
            ..Default::default()
        };
        let mut email_only = profile.clone();
        Mask { email: true, phone: false }.apply_to_profile(&mut email_only);
        assert_eq!(email_only.identifiers[0].value, "k***@example.com");
        assert_eq!(email_only.identifiers[1].value, "+33612345678");
        Mask::EMAIL_AND_PHONE.apply_to_profile(&mut profile);
        assert_eq!(profile.identifiers[0].value, "k***@example.com");
        assert_eq!(profile.identifiers[1].value, "+33*******78");
        assert_eq!(profile.identifiers[2].value, "L-1");
        let t = &profile.traits.unwrap().fields;
        let s = |k: &str| match &t[k].kind {
            Some(Kind::StringValue(v)) => v.clone(),
            _ => panic!("{k}"),
        };
        assert_eq!(s("email"), "k***@example.com");
        assert_eq!(s("contact"), "k***@example.org");
        assert_eq!(s("mobile"), "+33*******78");
        assert_eq!(s("city"), "Lyon");
    }

    fn rapport_rpc_like_struct(fields: &[(&str, &str)]) -> Struct {
        Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value { kind: Some(Kind::StringValue(v.to_string())) }))
                .collect(),
        }
    }
}
