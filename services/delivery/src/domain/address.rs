//! Recipients: email addresses (RFC 5321 syntax, through lettre's parser), phone numbers (E.164, through
//! libphonenumber's rules) and push device tokens, parsed once at the edge.

use std::str::FromStr;

use rapport_proto::common::v1::{Channel, IdentifierType};

/// A validated recipient of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// A lower-cased email address.
    Email(String),
    /// A phone number in E.164.
    Phone(String),
    /// A push device token.
    Device(String),
    /// The customer themself (in-app inbox, direct mail to the profile's postal address).
    Customer,
}

impl Recipient {
    /// The stored form.
    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Email(v) | Recipient::Phone(v) | Recipient::Device(v) => v,
            Recipient::Customer => "",
        }
    }

    /// The identifier type consent knows the contact point by; `None` for the customer itself.
    pub fn identifier_type(&self) -> Option<IdentifierType> {
        match self {
            Recipient::Email(_) => Some(IdentifierType::Email),
            Recipient::Phone(_) => Some(IdentifierType::Phone),
            Recipient::Device(_) => Some(IdentifierType::DeviceId),
            Recipient::Customer => None,
        }
    }

    /// The recipient's email domain, for per-domain rate limits.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Recipient::Email(v) => v.rsplit_once('@').map(|(_, d)| d),
            _ => None,
        }
    }
}

/// What kind of address a channel sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Email,
    Phone,
    Device,
    Customer,
}

/// The address kind of a deliverable channel; `None` for channels delivery does not send on.
pub fn address_kind(channel: Channel) -> Option<AddressKind> {
    match channel {
        Channel::Email => Some(AddressKind::Email),
        Channel::Sms | Channel::PhoneCall | Channel::CallCentre => Some(AddressKind::Phone),
        Channel::Push => Some(AddressKind::Device),
        Channel::InApp | Channel::DirectMail => Some(AddressKind::Customer),
        Channel::Unspecified | Channel::Web | Channel::Store => None,
    }
}

/// The identifier type holding a channel's address.
pub fn identifier_type_of(kind: AddressKind) -> Option<IdentifierType> {
    match kind {
        AddressKind::Email => Some(IdentifierType::Email),
        AddressKind::Phone => Some(IdentifierType::Phone),
        AddressKind::Device => Some(IdentifierType::DeviceId),
        AddressKind::Customer => None,
    }
}

/// An email address: a local part and a domain with at least one dot, as lettre parses it; the domain
/// and the local part are lower-cased.
pub fn parse_email(value: &str) -> Result<String, &'static str> {
    let v = value.trim();
    if v.is_empty() {
        return Err("is empty");
    }
    if v.len() > 254 {
        return Err("is longer than 254 characters");
    }
    let address = lettre::Address::from_str(v).map_err(|_| "is not an email address")?;
    // Lower-cased whole, as identity and consent normalise addresses, so that all three agree.
    let domain = address.domain().to_ascii_lowercase();
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err("is not an email address: the domain needs a dot");
    }
    Ok(format!("{}@{domain}", address.user().to_lowercase()))
}

/// A mailbox ("Name <address>" or a bare address).
pub fn parse_mailbox(value: &str) -> Option<lettre::message::Mailbox> {
    lettre::message::Mailbox::from_str(value.trim()).ok()
}

/// A phone number in E.164; numbers without a country code are read in `default_region`.
pub fn parse_phone(value: &str, default_region: &str) -> Result<String, &'static str> {
    let region = default_region.parse::<phonenumber::country::Id>().ok();
    let number = phonenumber::parse(region, value.trim()).map_err(|_| "is not a phone number")?;
    if !phonenumber::is_valid(&number) {
        return Err("is not a valid phone number");
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// A push device token: 8 to 4096 visible characters.
pub fn parse_device(value: &str) -> Result<String, &'static str> {
    let v = value.trim();
    if v.len() < 8 || v.len() > 4096 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("is not a device token (8 to 4096 visible characters)");
    }
    Ok(v.to_string())
}

/// Parses `value` as the address of `kind`.
pub fn parse(kind: AddressKind, value: &str, default_region: &str) -> Result<Recipient, &'static str> {
    match kind {
        AddressKind::Email => parse_email(value).map(Recipient::Email),
        AddressKind::Phone => parse_phone(value, default_region).map(Recipient::Phone),
        AddressKind::Device => parse_device(value).map(Recipient::Device),
        AddressKind::Customer => Ok(Recipient::Customer),
    }
}

/// A stored recipient of `kind` back as a value (it was validated when stored).
pub fn stored(kind: AddressKind, value: &str) -> Recipient {
    match kind {
        AddressKind::Email => Recipient::Email(value.to_string()),
        AddressKind::Phone => Recipient::Phone(value.to_string()),
        AddressKind::Device => Recipient::Device(value.to_string()),
        AddressKind::Customer => Recipient::Customer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_domains_lower_cased() {
        assert_eq!(parse_email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        assert!(parse_email("not-an-address").is_err());
        assert!(parse_email("ann@localhost").is_err());
        assert!(parse_email("ann@@example.com").is_err());
        assert!(parse_email("").is_err());
    }

    #[test]
    fn phones_become_e164() {
        assert_eq!(parse_phone("+44 7911 123456", "US").unwrap(), "+447911123456");
        assert_eq!(parse_phone("(415) 555-2671", "US").unwrap(), "+14155552671");
        assert!(parse_phone("12", "US").is_err());
        assert!(parse_phone("call me", "US").is_err());
    }

    #[test]
    fn device_tokens_have_no_spaces() {
        assert!(parse_device("abcdef0123456789").is_ok());
        assert!(parse_device("abc def 0123").is_err());
        assert!(parse_device("short").is_err());
    }
}
