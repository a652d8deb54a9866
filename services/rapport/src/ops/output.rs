//! How client commands print: readable text by default, the response message as JSON with `--json`
//! (the protobuf JSON mapping, through the descriptors of the contracts).

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

fn pool() -> anyhow::Result<&'static DescriptorPool> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(rapport_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the contracts' descriptors do not decode: {e}"))
}

/// `message` in the protobuf JSON mapping (field names in lowerCamelCase, enums by name).
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<serde_json::Value> {
    let descriptor = pool()?
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| anyhow::anyhow!("no descriptor for {}", M::full_name()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())?;
    let options = SerializeOptions::new().skip_default_fields(true);
    Ok(dynamic.serialize_with_options(serde_json::value::Serializer, &options)?)
}

/// Prints `message` as pretty JSON.
pub fn print_json<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&to_json(message)?)?);
    Ok(())
}

/// An amount in minor units as text: `49.99 EUR`.
pub fn money(m: Option<&rapport_proto::common::v1::Money>) -> String {
    match m {
        Some(m) if !m.currency.is_empty() => {
            let sign = if m.minor_units < 0 { "-" } else { "" };
            let abs = m.minor_units.unsigned_abs();
            format!("{sign}{}.{:02} {}", abs / 100, abs % 100, m.currency)
        }
        _ => "-".to_string(),
    }
}

/// A timestamp as RFC 3339 (UTC, seconds), or `-` when unset.
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".to_string())
}

/// An enum value's name without its type prefix, lower case: `CHANNEL_EMAIL` -> `email`.
pub fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_ascii_lowercase()
}

/// A JSON value of a Struct field as short text.
pub fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_proto::common::v1::Money;

    #[test]
    fn money_prints_in_major_units() {
        assert_eq!(money(Some(&Money { currency: "EUR".into(), minor_units: 4999 })), "49.99 EUR");
        assert_eq!(money(Some(&Money { currency: "EUR".into(), minor_units: -5 })), "-0.05 EUR");
        assert_eq!(money(None), "-");
    }

    #[test]
    fn messages_print_as_protobuf_json() {
        let m = Money { currency: "EUR".into(), minor_units: 4999 };
        assert_eq!(to_json(&m).unwrap(), serde_json::json!({"currency": "EUR", "minorUnits": "4999"}));
    }
}
