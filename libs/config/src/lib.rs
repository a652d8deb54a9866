//! Layered configuration: embedded defaults, then a TOML file (`--config FILE`), then environment
//! variables named `RAPPORT__SECTION__KEY`, then command-line flags. An unknown key or a value of the
//! wrong type is an error that names the key.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::DeserializeOwned};

const DEFAULTS: &str = include_str!("defaults.toml");

/// The names of the five services, in dependency order.
pub const SERVICE_NAMES: [&str; 5] = ["identity", "consent", "profile", "decision", "delivery"];

/// A configuration problem, with the key or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given with `--config` cannot be read or parsed.
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// A key is unknown or its value has the wrong type.
    #[error("config: {0}")]
    Invalid(String),
}

/// A value that must never be printed (tokens, passwords, URLs with credentials).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// The `[server]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub grpc_listen: String,
    pub http_listen: String,
    pub data_dir: PathBuf,
    pub services: Vec<String>,
    pub shutdown_grace_seconds: u64,
    pub max_concurrent_requests: usize,
    pub max_message_bytes: usize,
    pub request_timeout_ms: u64,
}

/// The largest `storage.outbox_retention_hours` (100 years), so that the cutoff stays representable.
pub const MAX_OUTBOX_RETENTION_HOURS: u64 = 876_000;

/// The `[storage]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_seconds: u64,
    pub outbox_retention_hours: u64,
    pub outbox_prune_interval_seconds: u64,
}

/// The `[cache]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub url: Secret,
    pub capacity: u64,
    pub redis_timeout_ms: u64,
}

/// One static API key: the token is stored only as its SHA-256.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    pub name: String,
    pub sha256: String,
    /// Scopes granted directly.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Named scope bundles (built-in roles or `[auth.roles.NAME]`), added to `scopes`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Fields shown only partly in profile reads by this key: `email`, `phone`.
    #[serde(default)]
    pub mask: Vec<String>,
    /// Calls per second this key may make (a token bucket per process); 0: `limits.per_caller_per_second`.
    #[serde(default)]
    pub rate_limit_per_second: u32,
}

/// A named bundle of scopes (`[auth.roles.NAME]`), usable by API keys and JWTs; it adds to or replaces
/// a built-in role of the same name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub admin_token_file: String,
    pub api_keys: Vec<ApiKeySettings>,
    pub jwt_hs256_secret_file: String,
    /// PEM file with the RSA public key that verifies RS256 JWTs. Empty: RS256 JWTs are not accepted.
    pub jwt_rs256_public_key_file: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Seconds of clock difference tolerated when checking a JWT's `exp` and `nbf`.
    pub jwt_leeway_seconds: u64,
    /// Named scope bundles beside the built-in ones.
    pub roles: std::collections::BTreeMap<String, RoleSettings>,
}

/// The `[limits]` section: rate limits per caller (the admin token and in-process calls are exempt).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Calls per second per caller; 0: no limit (an API key's `rate_limit_per_second` still applies).
    pub per_caller_per_second: u32,
    /// Calls a caller may make at once after being idle; 0: one second's worth.
    pub per_caller_burst: u32,
}

/// The `[telemetry]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_filter: String,
    pub log_format: LogFormat,
    pub service_name: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The `[clients]` section: where services that are not in this process live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub identity: String,
    pub consent: String,
    pub profile: String,
    pub decision: String,
    pub delivery: String,
    pub token_file: String,
    pub timeout_ms: u64,
}

impl ClientSettings {
    /// The configured address of a service, if it is remote.
    pub fn address_of(&self, service: &str) -> Option<&str> {
        let addr = match service {
            "identity" => &self.identity,
            "consent" => &self.consent,
            "profile" => &self.profile,
            "decision" => &self.decision,
            "delivery" => &self.delivery,
            _ => return None,
        };
        (!addr.is_empty()).then_some(addr.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Known {
    server: ServerSettings,
    storage: StorageSettings,
    cache: CacheSettings,
    auth: AuthSettings,
    limits: LimitSettings,
    telemetry: TelemetrySettings,
    clients: ClientSettings,
    // Per-service sections are checked by the service that reads them (see `Settings::section`).
    #[allow(dead_code)]
    identity: serde::de::IgnoredAny,
    #[allow(dead_code)]
    consent: serde::de::IgnoredAny,
    #[allow(dead_code)]
    profile: serde::de::IgnoredAny,
    #[allow(dead_code)]
    decision: serde::de::IgnoredAny,
    #[allow(dead_code)]
    delivery: serde::de::IgnoredAny,
}

/// The whole configuration after layering.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub cache: CacheSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub telemetry: TelemetrySettings,
    pub clients: ClientSettings,
    layered: config::Config,
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub grpc_listen: Option<String>,
    pub http_listen: Option<String>,
    pub services: Option<Vec<String>>,
}

/// The items of `value` when it is a TOML array of strings without commas (`["US", "CA"]`).
fn toml_array(value: &str) -> Option<Vec<String>> {
    let trimmed = value.trim();
    if !(trimmed.starts_with('[') && trimmed.ends_with(']')) {
        return None;
    }
    let parsed: toml::Table = toml::from_str(&format!("v = {trimmed}")).ok()?;
    let items = parsed.get("v")?.as_array()?;
    items.iter().map(|i| i.as_str().filter(|s| !s.contains(',')).map(str::to_string)).collect()
}

impl Settings {
    /// Loads defaults, then `file`, then the process environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overrides, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::File { path: path.to_path_buf(), message: e.to_string() })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let mut env: config::Map<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("RAPPORT__")).collect();
        // A list in the environment is written as a TOML array (`["US", "CA"]`); `server.services` also
        // takes a plain comma-separated list.
        let mut list_keys = vec!["server.services".to_string()];
        for (name, value) in env.iter_mut() {
            if let Some(items) = toml_array(value) {
                let key = name.trim_start_matches("RAPPORT__").to_ascii_lowercase().replace("__", ".");
                *value = items.join(",");
                list_keys.push(key);
            }
        }
        let mut environment = config::Environment::with_prefix("RAPPORT")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true);
        for key in list_keys {
            environment = environment.with_list_parse_key(&key);
        }
        builder = builder.add_source(environment.source(Some(env)));
        let set = |b: config::ConfigBuilder<config::builder::DefaultState>, key: &str, v: Option<String>| {
            b.set_override_option(key, v).map_err(invalid)
        };
        builder = set(builder, "server.data_dir", overrides.data_dir.as_ref().map(|p| p.display().to_string()))?;
        builder = set(builder, "server.grpc_listen", overrides.grpc_listen.clone())?;
        builder = set(builder, "server.http_listen", overrides.http_listen.clone())?;
        if let Some(services) = &overrides.services {
            builder = builder.set_override("server.services", services.clone()).map_err(invalid)?;
        }
        let layered = builder.build().map_err(|e| match (file, &e) {
            (Some(path), config::ConfigError::FileParse { .. } | config::ConfigError::Foreign(_)) => {
                ConfigError::File { path: path.to_path_buf(), message: e.to_string() }
            }
            _ => invalid(e),
        })?;
        let known: Known = layered.clone().try_deserialize().map_err(invalid)?;
        let settings = Settings {
            server: known.server,
            storage: known.storage,
            cache: known.cache,
            auth: known.auth,
            limits: known.limits,
            telemetry: known.telemetry,
            clients: known.clients,
            layered,
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for s in &self.server.services {
            if s != "all" && !SERVICE_NAMES.contains(&s.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "server.services: unknown service `{s}`, expected all or any of {}",
                    SERVICE_NAMES.join(", ")
                )));
            }
        }
        if self.storage.outbox_retention_hours > MAX_OUTBOX_RETENTION_HOURS {
            return Err(ConfigError::Invalid(format!(
                "storage.outbox_retention_hours: {} is more than {MAX_OUTBOX_RETENTION_HOURS} (100 years); 0 keeps \
                 the outbox forever",
                self.storage.outbox_retention_hours
            )));
        }
        if !(1..=86_400).contains(&self.storage.outbox_prune_interval_seconds) {
            return Err(ConfigError::Invalid(format!(
                "storage.outbox_prune_interval_seconds: must be between 1 and 86400, got {}",
                self.storage.outbox_prune_interval_seconds
            )));
        }
        Ok(())
    }

    /// How long outbox records are kept, `None` when they are kept forever (`storage.outbox_retention_hours`).
    pub fn outbox_retention(&self) -> Option<std::time::Duration> {
        match self.storage.outbox_retention_hours {
            0 => None,
            h => Some(std::time::Duration::from_secs(h * 3600)),
        }
    }

    /// The services this process runs.
    pub fn enabled_services(&self) -> Vec<&'static str> {
        if self.server.services.iter().any(|s| s == "all") || self.server.services.is_empty() {
            return SERVICE_NAMES.to_vec();
        }
        SERVICE_NAMES.into_iter().filter(|n| self.server.services.iter().any(|s| s == n)).collect()
    }

    /// Reads a per-service section (`[identity]`, ...) into the service's own settings type, which should
    /// use `#[serde(default, deny_unknown_fields)]` so that unknown keys are named in the error.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        self.layered.get::<T>(name).map_err(|e| ConfigError::Invalid(format!("[{name}] {e}")))
    }
}

fn invalid(e: config::ConfigError) -> ConfigError {
    ConfigError::Invalid(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_with_env(None, &Overrides::default(), env(&[])).unwrap();
        assert_eq!(s.server.grpc_listen, "127.0.0.1:50051");
        assert_eq!(s.enabled_services().len(), 5);
        assert!(s.storage.url.is_empty());
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rapport.toml");
        std::fs::write(&path, "[server]\ngrpc_listen = \"127.0.0.1:1\"\nshutdown_grace_seconds = 3\n").unwrap();
        let s = Settings::load_with_env(
            Some(&path),
            &Overrides { http_listen: Some("127.0.0.1:3".into()), ..Default::default() },
            env(&[("RAPPORT__SERVER__GRPC_LISTEN", "127.0.0.1:2"), ("RAPPORT__SERVER__SERVICES", "consent,profile")]),
        )
        .unwrap();
        assert_eq!(s.server.grpc_listen, "127.0.0.1:2");
        assert_eq!(s.server.http_listen, "127.0.0.1:3");
        assert_eq!(s.server.shutdown_grace_seconds, 3);
        assert_eq!(s.enabled_services(), vec!["consent", "profile"]);
    }

    #[test]
    fn a_list_in_the_environment_is_a_toml_array() {
        #[derive(serde::Deserialize)]
        struct Consent {
            opt_out_regions: Vec<String>,
        }
        let s = Settings::load_with_env(
            None,
            &Overrides::default(),
            env(&[("RAPPORT__CONSENT__OPT_OUT_REGIONS", r#"["US", "CA"]"#)]),
        )
        .unwrap();
        let consent: Consent = s.section("consent").unwrap();
        assert_eq!(consent.opt_out_regions, vec!["US".to_string(), "CA".to_string()]);
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rapport.toml");
        std::fs::write(&path, "[server]\ngrpc_lisen = \"x\"\n").unwrap();
        let err = Settings::load_with_env(Some(&path), &Overrides::default(), env(&[])).unwrap_err();
        assert!(err.to_string().contains("grpc_lisen"), "{err}");
    }

    #[test]
    fn unknown_key_in_env_is_named() {
        let err =
            Settings::load_with_env(None, &Overrides::default(), env(&[("RAPPORT__STORAGE__URLL", "x")])).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
        let err = Settings::load_with_env(None, &Overrides::default(), env(&[("RAPPORT__NOPE__X", "1")])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Settings::load_with_env(
            None,
            &Overrides::default(),
            env(&[("RAPPORT__SERVER__SHUTDOWN_GRACE_SECONDS", "soon")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("shutdown_grace_seconds"), "{err}");
        let err =
            Settings::load_with_env(None, &Overrides::default(), env(&[("RAPPORT__SERVER__SERVICES", "billing")]))
                .unwrap_err();
        assert!(err.to_string().contains("billing"), "{err}");
    }

    #[test]
    fn outbox_retention_is_validated() {
        let s = Settings::load_with_env(None, &Overrides::default(), env(&[])).unwrap();
        assert_eq!(s.outbox_retention(), Some(std::time::Duration::from_secs(168 * 3600)));
        assert_eq!(s.storage.outbox_prune_interval_seconds, 3600);
        let s = Settings::load_with_env(
            None,
            &Overrides::default(),
            env(&[("RAPPORT__STORAGE__OUTBOX_RETENTION_HOURS", "0")]),
        )
        .unwrap();
        assert_eq!(s.outbox_retention(), None);
        for (key, value) in [
            ("RAPPORT__STORAGE__OUTBOX_RETENTION_HOURS", "-1"),
            ("RAPPORT__STORAGE__OUTBOX_RETENTION_HOURS", "a week"),
            ("RAPPORT__STORAGE__OUTBOX_RETENTION_HOURS", "876001"),
        ] {
            let err = Settings::load_with_env(None, &Overrides::default(), env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains("outbox_retention_hours"), "{value}: {err}");
        }
        for value in ["0", "86401", "-5"] {
            let err = Settings::load_with_env(
                None,
                &Overrides::default(),
                env(&[("RAPPORT__STORAGE__OUTBOX_PRUNE_INTERVAL_SECONDS", value)]),
            )
            .unwrap_err();
            assert!(err.to_string().contains("outbox_prune_interval_seconds"), "{value}: {err}");
        }
    }

    #[test]
    fn unreadable_file_is_named() {
        let err =
            Settings::load_with_env(Some(Path::new("/nonexistent/rapport.toml")), &Overrides::default(), env(&[]))
                .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/rapport.toml"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("postgres://u:hunter2@h/db");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn service_sections_check_their_own_keys() {
        #[derive(Deserialize, Debug)]
        #[serde(default, deny_unknown_fields)]
        struct Identity {
            default_region: String,
        }
        impl Default for Identity {
            fn default() -> Self {
                Self { default_region: "US".into() }
            }
        }
        let s = Settings::load_with_env(None, &Overrides::default(), env(&[])).unwrap();
        assert_eq!(s.section::<Identity>("identity").unwrap().default_region, "US");
        let s =
            Settings::load_with_env(None, &Overrides::default(), env(&[("RAPPORT__IDENTITY__DEFAULT_REGON", "GB")]))
                .unwrap();
        let err = s.section::<Identity>("identity").unwrap_err();
        assert!(err.to_string().contains("default_regon"), "{err}");
    }
}
