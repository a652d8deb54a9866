//! Client commands for people: what operators and analysts do by hand against a running server.
//! Every command prints readable text, or the response as JSON with `--json` (for scripts).
//!
//! - `rapport profile get|timeline`: a profile by any identifier, a timeline.
//! - `rapport consent record|check|history`: the consent ledger.
//! - `rapport import customers|events`: a CSV file through a column mapping, with a progress bar.
//! - `rapport offer put|list`, `rapport campaign put|list`: offers and campaigns from files (TOML or JSON).
//! - `rapport send`: a test message through delivery.
//! - `rapport report`: the KPIs of a campaign, offer or experiment.

pub mod campaign;
pub mod consent;
pub mod definition;
pub mod import;
pub mod offer;
pub mod output;
pub mod profile;
pub mod report;
pub mod send;

use anyhow::Context as _;
use clap::Args;
use rapport_proto::common::v1::{CustomerRef, Identifier, IdentifierType, customer_ref::Ref};

/// Who a command is about: a customer id or one identifier.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// A customer id (`cus_…`; a merged-away id finds its survivor).
    #[arg(long, value_name = "ID")]
    pub customer: Option<String>,
    /// An email address.
    #[arg(long, value_name = "ADDRESS")]
    pub email: Option<String>,
    /// A phone number (E.164, or national in the configured default region).
    #[arg(long, value_name = "NUMBER")]
    pub phone: Option<String>,
    /// Any identifier as TYPE:VALUE: user_id, email, phone, anonymous_id, device_id, loyalty_id, or
    /// external:NAMESPACE:VALUE (e.g. `loyalty_id:778812`, `external:crm:12345`).
    #[arg(long, value_name = "TYPE:VALUE")]
    pub id: Option<String>,
}

impl Who {
    /// The reference the contracts take.
    pub fn customer_ref(&self) -> anyhow::Result<CustomerRef> {
        let r = if let Some(c) = &self.customer {
            Ref::CustomerId(c.clone())
        } else {
            Ref::Identifier(self.identifier()?.context("--customer, --email, --phone or --id is required")?)
        };
        Ok(CustomerRef { r#ref: Some(r) })
    }

    /// The identifier given, if one was (not a customer id).
    pub fn identifier(&self) -> anyhow::Result<Option<Identifier>> {
        if let Some(e) = &self.email {
            return Ok(Some(identifier(IdentifierType::Email, e, "")));
        }
        if let Some(p) = &self.phone {
            return Ok(Some(identifier(IdentifierType::Phone, p, "")));
        }
        match &self.id {
            Some(id) => parse_identifier(id).map(Some).context("--id"),
            None => Ok(None),
        }
    }
}

fn identifier(kind: IdentifierType, value: &str, namespace: &str) -> Identifier {
    Identifier { r#type: kind as i32, value: value.to_string(), namespace: namespace.to_string() }
}

/// The identifier type named in a mapping or on the command line.
pub fn identifier_type(name: &str) -> Option<IdentifierType> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "user_id" => IdentifierType::UserId,
        "email" => IdentifierType::Email,
        "phone" => IdentifierType::Phone,
        "anonymous_id" => IdentifierType::AnonymousId,
        "device_id" => IdentifierType::DeviceId,
        "loyalty_id" => IdentifierType::LoyaltyId,
        "external" => IdentifierType::External,
        _ => return None,
    })
}

/// `TYPE:VALUE` or `external:NAMESPACE:VALUE`.
pub fn parse_identifier(text: &str) -> anyhow::Result<Identifier> {
    let (kind, rest) = text.split_once(':').context("expected TYPE:VALUE, e.g. email:ann@example.com")?;
    let kind = identifier_type(kind).with_context(|| {
        format!(
            "unknown identifier type `{kind}`: user_id, email, phone, anonymous_id, device_id, loyalty_id, external"
        )
    })?;
    if kind == IdentifierType::External {
        let (namespace, value) = rest
            .split_once(':')
            .context("an external identifier is external:NAMESPACE:VALUE, e.g. external:crm:12345")?;
        return Ok(identifier(kind, value, namespace));
    }
    Ok(identifier(kind, rest, ""))
}

/// `message` with the bearer token.
pub fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().context("--token holds characters not allowed in a header")?,
    );
    Ok(request)
}

/// A failed call as one line: the code and the server's message (which names the field at fault).
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// An RFC 3339 time or a date (midnight UTC) as a Timestamp.
pub fn parse_time(text: &str) -> anyhow::Result<prost_types::Timestamp> {
    let ms = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        t.timestamp_millis()
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or_default()
    } else {
        anyhow::bail!("`{text}` is not an RFC 3339 time (2026-11-25T10:00:00Z) or a date (2026-11-25)");
    };
    Ok(rapport_rpc::convert::timestamp(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_parse_with_their_type() {
        let e = parse_identifier("email:ann@example.com").unwrap();
        assert_eq!((e.r#type, e.value.as_str()), (IdentifierType::Email as i32, "ann@example.com"));
        let x = parse_identifier("external:crm:12:34").unwrap();
        assert_eq!((x.namespace.as_str(), x.value.as_str()), ("crm", "12:34"));
        assert!(parse_identifier("shoe:size").unwrap_err().to_string().contains("shoe"));
        assert!(parse_identifier("external:crm").is_err());
        assert!(parse_identifier("nocolon").is_err());
    }

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(parse_time("2026-11-25T10:00:00Z").unwrap().seconds, 1_795_600_800);
        assert_eq!(parse_time("2026-11-25").unwrap().seconds, 1_795_564_800);
        assert!(parse_time("25/11/2026").is_err());
    }
}
