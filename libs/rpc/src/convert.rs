//! Conversions between wire types and what services store: JSON and `google.protobuf.Struct`,
//! milliseconds and `google.protobuf.Timestamp`, page sizes, field mask paths.

use prost_types::value::Kind;

/// A JSON value as a protobuf Struct (objects only; anything else is wrapped as `{"value": ...}`).
pub fn json_to_struct(v: serde_json::Value) -> prost_types::Struct {
    match json_to_value(v).kind {
        Some(Kind::StructValue(s)) => s,
        other => prost_types::Struct {
            fields: [("value".to_string(), prost_types::Value { kind: other })].into_iter().collect(),
        },
    }
}

/// A JSON value as a protobuf Value.
pub fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A protobuf Struct as a JSON object. Whole numbers stay integers (protobuf carries every number as a
/// double), so that `revenue_minor: 1999` reads back as 1999, not 1999.0.
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect()
}

/// A protobuf Value as JSON.
pub fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(s)),
    }
}

/// Milliseconds since the epoch as a Timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A Timestamp as milliseconds since the epoch; `None` when it is out of range.
pub fn millis(t: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds.checked_mul(1000).and_then(|s| s.checked_add(i64::from(t.nanos / 1_000_000)))
}

/// The page size of a request: the default when 0, an error naming `field` when negative or over `max`.
pub fn page_size(field: &str, requested: i32, default: i32, max: i32) -> Result<i64, rapport_errors::Error> {
    match requested {
        0 => Ok(i64::from(default)),
        n if n < 0 || n > max => Err(rapport_errors::Error::invalid(field, format!("must be between 0 and {max}"))),
        n => Ok(i64::from(n)),
    }
}

/// The paths of a read or update mask, each checked against `known` ([`check_paths`]). An unset mask gives
/// no paths: the caller's default.
pub fn mask_paths(
    field: &str,
    mask: Option<&prost_types::FieldMask>,
    known: &[&str],
) -> Result<Vec<String>, rapport_errors::Error> {
    let paths: Vec<String> = mask.map(|m| m.paths.iter().map(|p| p.trim().to_string()).collect()).unwrap_or_default();
    check_paths(field, &paths, known)?;
    Ok(paths)
}

/// Checks the paths of the field mask `field` against `known`: an unknown path is an error naming
/// `{field}.paths` and the path, with the known ones.
pub fn check_paths(field: &str, paths: &[String], known: &[&str]) -> Result<(), rapport_errors::Error> {
    match paths.iter().find(|p| !known.contains(&p.as_str())) {
        Some(bad) => Err(rapport_errors::Error::invalid(
            &format!("{field}.paths"),
            format!("unknown path `{bad}`; known: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_struct_keeping_integers() {
        let j = serde_json::json!({"revenue_minor": 1999, "ratio": 0.5, "items": [{"sku": "a"}], "gift": false, "note": null});
        let back = serde_json::Value::Object(struct_to_json(&json_to_struct(j.clone())));
        assert_eq!(back, j);
    }

    #[test]
    fn timestamps_round_trip() {
        for ms in [0, 1, 1_700_000_000_123, -1] {
            assert_eq!(millis(&timestamp(ms)), Some(ms));
        }
    }

    #[test]
    fn mask_paths_name_an_unknown_path() {
        let mask = prost_types::FieldMask { paths: vec!["records".into(), "colour".into()] };
        let err = mask_paths("read_mask", Some(&mask), &["attributes", "records"]).unwrap_err();
        assert!(err.to_string().starts_with("read_mask.paths: unknown path `colour`"), "{err}");
        assert_eq!(mask_paths("read_mask", None, &["records"]).unwrap(), Vec::<String>::new());
    }
}
