//! Contact points normalised like identity's: emails trimmed and lower-cased, phones to E.164, device ids
//! trimmed. Values never appear in error messages.

use rapport_errors::Error;
use rapport_proto::common::v1::{Identifier, IdentifierType};

use crate::settings::ConsentSettings;
use crate::store::Cp;

const MAX_VALUE_LEN: usize = 512;

/// The normalised contact point at `field` (EMAIL, PHONE or DEVICE_ID).
pub fn contact_point(settings: &ConsentSettings, field: &str, id: &Identifier) -> Result<Cp, Error> {
    let t = IdentifierType::try_from(id.r#type).unwrap_or(IdentifierType::Unspecified);
    let value_field = format!("{field}.value");
    let raw = id.value.trim();
    if raw.is_empty() {
        return Err(Error::invalid(&value_field, "is required"));
    }
    if raw.len() > MAX_VALUE_LEN {
        return Err(Error::invalid(&value_field, format!("longer than {MAX_VALUE_LEN} bytes")));
    }
    if raw.chars().any(char::is_control) {
        return Err(Error::invalid(&value_field, "contains control characters"));
    }
    if !id.namespace.trim().is_empty() {
        return Err(Error::invalid(&format!("{field}.namespace"), "only external identifiers have one"));
    }
    let v = match t {
        IdentifierType::Email => {
            email(&raw.to_lowercase()).ok_or_else(|| Error::invalid(&value_field, "not an email address"))?
        }
        IdentifierType::Phone => {
            phone(settings, raw).ok_or_else(|| Error::invalid(&value_field, "not a valid phone number"))?
        }
        IdentifierType::DeviceId => raw.to_string(),
        _ => return Err(Error::invalid(&format!("{field}.type"), "must be EMAIL, PHONE or DEVICE_ID")),
    };
    Ok(Cp { t: t as i32, v })
}

fn email(lower: &str) -> Option<String> {
    let (local, domain) = lower.rsplit_once('@')?;
    let ok = !local.is_empty()
        && !domain.is_empty()
        && domain.contains('.')
        && !local.contains(char::is_whitespace)
        && !domain.contains(char::is_whitespace)
        && !domain.starts_with('.')
        && !domain.ends_with('.');
    ok.then(|| format!("{local}@{domain}"))
}

fn phone(settings: &ConsentSettings, raw: &str) -> Option<String> {
    let region: phonenumber::country::Id = settings.phone_default_region.parse().ok()?;
    let raw = raw.strip_prefix("00").map(|r| format!("+{r}")).unwrap_or_else(|| raw.to_string());
    let number = phonenumber::parse(Some(region), &raw).ok()?;
    phonenumber::is_valid(&number).then(|| number.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(t: IdentifierType, v: &str) -> Identifier {
        Identifier { r#type: t as i32, value: v.into(), namespace: String::new() }
    }

    #[test]
    fn contact_points_are_normalised_and_named_when_bad() {
        let s = ConsentSettings::default();
        assert_eq!(
            contact_point(&s, "cp", &id(IdentifierType::Email, " Ann@Example.COM ")).unwrap().v,
            "ann@example.com"
        );
        assert_eq!(contact_point(&s, "cp", &id(IdentifierType::Phone, "(415) 555-2671")).unwrap().v, "+14155552671");
        let err = contact_point(&s, "entries[0].contact_point", &id(IdentifierType::Email, "nope")).unwrap_err();
        assert!(err.to_string().starts_with("entries[0].contact_point.value:"), "{err}");
        assert!(!err.to_string().contains("nope"));
        let err = contact_point(&s, "cp", &id(IdentifierType::UserId, "u1")).unwrap_err();
        assert!(err.to_string().starts_with("cp.type:"));
    }
}
