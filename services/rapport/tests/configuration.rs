//! docs/configuration.md documents every configuration key: each field of every settings struct (the
//! shared sections of libs/config and each service's own section) has a row `| \`section.key\` |` there,
//! and every row names a key that exists. The fields are read from the structs themselves: deserialising
//! an unknown key makes serde list the fields it expected.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;

const DOC: &str = include_str!("../../../docs/configuration.md");
const DEFAULTS: &str = include_str!("../../../libs/config/src/defaults.toml");

/// The fields of `T`, as serde names them.
fn fields<T: DeserializeOwned>() -> Vec<String> {
    let err = match toml::from_str::<T>("undocumented_probe_key = 1") {
        Ok(_) => panic!("{} accepted an unknown key: is deny_unknown_fields missing?", std::any::type_name::<T>()),
        Err(e) => e.to_string(),
    };
    let expected =
        err.split_once("expected").map(|(_, rest)| rest).unwrap_or_else(|| panic!("no field list in `{err}`"));
    let names: Vec<String> = expected.split('`').skip(1).step_by(2).map(str::to_string).collect();
    assert!(!names.is_empty(), "no field names in `{err}`");
    names
}

/// Every key path: `section.key`, `section.table[].key` for arrays of tables, `auth.roles.<name>.key`.
fn keys() -> Vec<String> {
    use rapport_config as c;
    let sections: Vec<(&str, Vec<String>)> = vec![
        ("server", fields::<c::ServerSettings>()),
        ("storage", fields::<c::StorageSettings>()),
        ("cache", fields::<c::CacheSettings>()),
        ("auth", fields::<c::AuthSettings>()),
        ("auth.api_keys[]", fields::<c::ApiKeySettings>()),
        ("auth.roles.<name>", fields::<c::RoleSettings>()),
        ("limits", fields::<c::LimitSettings>()),
        ("telemetry", fields::<c::TelemetrySettings>()),
        ("clients", fields::<c::ClientSettings>()),
        ("identity", fields::<rapport_identity::settings::IdentitySettings>()),
        ("identity.survivorship", fields::<rapport_identity::settings::SurvivorshipSettings>()),
        ("consent", fields::<rapport_consent::settings::ConsentSettings>()),
        ("profile", fields::<rapport_profile::store::StoreSettings>()),
        ("profile.computed", fields::<rapport_profile::computed::ComputedSettings>()),
        ("decision", fields::<rapport_decision::settings::DecisionSettings>()),
        ("delivery", fields::<rapport_delivery::settings::DeliverySettings>()),
        ("delivery.providers[]", fields::<rapport_delivery::settings::ProviderSettings>()),
        ("delivery.error_rules[]", fields::<rapport_delivery::domain::classify::ErrorRule>()),
    ];
    sections.into_iter().flat_map(|(section, names)| names.into_iter().map(move |n| format!("{section}.{n}"))).collect()
}

/// The keys of the doc's table rows.
fn documented() -> BTreeSet<String> {
    DOC.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn every_settings_field_is_documented() {
    let documented = documented();
    let missing: Vec<String> = keys().into_iter().filter(|k| !documented.contains(k)).collect();
    assert!(missing.is_empty(), "docs/configuration.md has no row for: {}", missing.join(", "));
}

#[test]
fn every_documented_key_exists() {
    let known: BTreeSet<String> = keys().into_iter().collect();
    let stale: Vec<String> = documented().into_iter().filter(|k| !known.contains(k)).collect();
    assert!(stale.is_empty(), "docs/configuration.md documents keys that do not exist: {}", stale.join(", "));
}

#[test]
fn every_section_of_the_defaults_is_covered() {
    let defaults: toml::Table = toml::from_str(DEFAULTS).expect("the embedded defaults parse");
    let covered: BTreeSet<String> =
        keys().iter().map(|k| k.split('.').next().unwrap_or_default().to_string()).collect();
    for section in defaults.keys() {
        assert!(covered.contains(section), "section [{section}] is not checked against docs/configuration.md");
    }
    for service in rapport_config::SERVICE_NAMES {
        assert!(covered.contains(service), "[{service}]");
    }
}
