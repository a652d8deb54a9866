//! The `[delivery]` section of the configuration: the queue and its workers, retries, quiet hours,
//! tracking, and the channel providers. Checked once at start-up; a mistake is one line naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rapport_config::Secret;
use serde::Deserialize;

use crate::domain::classify::ErrorRule;

/// How messages are queued, retried, tracked and handed to providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// The public base URL of the HTTP port for tracking links. Empty: `http://<server.http_listen>`.
    pub public_base_url: String,
    /// The HMAC key of tracking links. Empty: generated on first start and kept in the service database.
    pub tracking_secret: Secret,
    /// Whether email HTML gets an open pixel and click links are rewritten to the signed redirect.
    pub tracking: bool,
    /// Bearer token the bounce and complaint intake accepts (at least 16 characters). Empty: intake off.
    pub feedback_token: Secret,
    /// Messages being prepared and sent at once per process, over all providers (each provider bounds its
    /// own connections).
    pub workers: usize,
    /// Messages claimed from the queue per read.
    pub claim_batch: i64,
    /// Milliseconds between queue reads when the queue is empty (a Send wakes the workers at once).
    pub poll_interval_ms: u64,
    /// Seconds a claimed message belongs to its worker; after it another worker may take it over.
    pub lease_seconds: i64,
    /// Provider attempts before a message is dead-lettered.
    pub max_attempts: i32,
    /// First retry delay in milliseconds; doubled per attempt, with full jitter, up to `retry_max_ms`.
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    pub retry_max_ms: u64,
    /// Milliseconds a message waits (DEFERRED) when consent or profile cannot be reached.
    pub dependency_retry_ms: u64,
    /// Quiet hours for marketing in the recipient's time zone, "HH:MM"; equal values switch them off.
    pub quiet_hours_start: String,
    pub quiet_hours_end: String,
    /// The time zone of recipients whose profile has no `time_zone` trait (IANA name).
    pub default_time_zone: String,
    /// Messages per second to one recipient domain (email) over all providers; 0: unlimited.
    pub domain_rate_per_second: u32,
    /// The sender of email ("Name <address>").
    pub from_address: String,
    /// Region for phone numbers written without a country code.
    pub phone_default_region: String,
    /// Fuel of one template rendering (minijinja instructions); bounds loops and recursion.
    pub template_fuel: u64,
    /// Largest template body, in bytes.
    pub max_template_bytes: usize,
    /// Seconds between direct-mail runs (each open run is closed into a CSV and a manifest).
    pub direct_mail_run_seconds: u64,
    /// Extra rows of the provider error table, checked before the built-in ones.
    pub error_rules: Vec<ErrorRule>,
    /// The providers. Empty: a file sink for email, SMS, push and webhooks under `<data_dir>/outbox`,
    /// direct-mail files under `<data_dir>/direct-mail`, the call-centre queue and the in-app inbox.
    pub providers: Vec<ProviderSettings>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            public_base_url: String::new(),
            tracking_secret: Secret::default(),
            tracking: true,
            feedback_token: Secret::default(),
            workers: 256,
            claim_batch: 200,
            poll_interval_ms: 200,
            lease_seconds: 60,
            max_attempts: 8,
            retry_base_ms: 2_000,
            retry_max_ms: 3_600_000,
            dependency_retry_ms: 5_000,
            quiet_hours_start: "21:00".into(),
            quiet_hours_end: "08:00".into(),
            default_time_zone: "UTC".into(),
            domain_rate_per_second: 0,
            from_address: "Rapport <noreply@rapport.localhost>".into(),
            phone_default_region: "US".into(),
            template_fuel: 100_000,
            max_template_bytes: 256 * 1024,
            direct_mail_run_seconds: 3600,
            error_rules: Vec::new(),
            providers: Vec::new(),
        }
    }
}

/// One provider: a channel adapter with its own connection settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// A unique name, shown on messages and in metrics.
    pub name: String,
    /// smtp, http_sms, http_push, webhook, direct_mail_file, call_centre_queue, in_app_inbox, file_sink.
    pub kind: String,
    /// The channels it serves: email, sms, push, phone_call, direct_mail, in_app, call_centre.
    pub channels: Vec<String>,
    /// Primary providers are tried first; a secondary takes over when the primary fails with a
    /// retryable error or is unhealthy.
    pub primary: bool,
    /// Messages per second through this provider; 0: unlimited.
    pub rate_per_second: u32,
    /// smtp: `smtp://host:port` (STARTTLS when offered), `smtp://host:port?tls=required`, `smtps://host:port`.
    /// http_sms, http_push, webhook: the endpoint URL.
    pub url: String,
    /// smtp: AUTH PLAIN user; the password is read from `password_file`.
    pub username: String,
    pub password_file: String,
    /// smtp: connections kept open to the server.
    pub connections: usize,
    /// Milliseconds one provider call may take.
    pub timeout_ms: u64,
    /// smtp: DKIM signing (all three set, or none).
    pub dkim_domain: String,
    pub dkim_selector: String,
    /// A PEM file with an RSA private key (PKCS#1 or PKCS#8).
    pub dkim_private_key_file: String,
    /// smtp: a message lookup of the relay (`GET {reconcile_url}/{message-id}` answers 200 with
    /// `{"received": N}`), asked only for a message whose hand-off was interrupted by a crash. Empty: such a
    /// message counts as sent (see docs/delivery.md).
    pub reconcile_url: String,
    /// http_*: request shape: "json" (a JSON body) or "form" (application/x-www-form-urlencoded).
    pub body_format: String,
    /// http_*: field names of the request body: `to`, `text`, `from`, `title`, `message_id`.
    pub fields: BTreeMap<String, String>,
    /// http_*: constant fields added to every body (e.g. the sender id).
    pub extra_fields: BTreeMap<String, String>,
    /// http_*: a file whose content is sent as `Authorization: Bearer ...`.
    pub token_file: String,
    /// http_*: header carrying the message id, so providers that honour it deduplicate retries.
    pub idempotency_header: String,
    /// webhook: a file holding the HMAC-SHA256 key of the `X-Rapport-Signature` header.
    pub secret_file: String,
    /// file_sink, direct_mail_file: the directory; empty: under `server.data_dir`.
    pub dir: String,
}

/// The provider kinds.
pub const KINDS: [&str; 8] =
    ["smtp", "http_sms", "http_push", "webhook", "direct_mail_file", "call_centre_queue", "in_app_inbox", "file_sink"];

/// Which channels a kind can serve.
pub fn kind_channels(kind: &str) -> &'static [&'static str] {
    match kind {
        "smtp" => &["email"],
        "http_sms" => &["sms"],
        "http_push" => &["push"],
        "direct_mail_file" => &["direct_mail"],
        "call_centre_queue" => &["call_centre", "phone_call"],
        "in_app_inbox" => &["in_app"],
        _ => &["email", "sms", "push", "phone_call", "direct_mail", "in_app", "call_centre"],
    }
}

fn hh_mm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

impl DeliverySettings {
    /// Quiet hours as minutes after midnight, `None` when switched off.
    pub fn quiet_hours(&self) -> Option<(u32, u32)> {
        let (s, e) = (hh_mm(&self.quiet_hours_start)?, hh_mm(&self.quiet_hours_end)?);
        (s != e).then_some((s, e))
    }

    /// Checks what serde cannot, naming the key. Files named by providers must be readable.
    pub fn validate(&self) -> Result<(), String> {
        if hh_mm(&self.quiet_hours_start).is_none() {
            return Err(format!("delivery.quiet_hours_start: `{}` is not HH:MM", self.quiet_hours_start));
        }
        if hh_mm(&self.quiet_hours_end).is_none() {
            return Err(format!("delivery.quiet_hours_end: `{}` is not HH:MM", self.quiet_hours_end));
        }
        if self.default_time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(format!("delivery.default_time_zone: `{}` is not an IANA time zone", self.default_time_zone));
        }
        if self.phone_default_region.parse::<phonenumber::country::Id>().is_err() {
            return Err(format!(
                "delivery.phone_default_region: `{}` is not an ISO 3166 region code",
                self.phone_default_region
            ));
        }
        if self.workers == 0 || self.workers > 4096 {
            return Err("delivery.workers: between 1 and 4096".into());
        }
        if !(1..=5000).contains(&self.claim_batch) {
            return Err("delivery.claim_batch: between 1 and 5000".into());
        }
        if self.lease_seconds < 2 {
            return Err("delivery.lease_seconds: at least 2".into());
        }
        if self.max_attempts < 1 {
            return Err("delivery.max_attempts: at least 1".into());
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err("delivery.retry_base_ms: must be positive and not above delivery.retry_max_ms".into());
        }
        if self.template_fuel < 1000 {
            return Err("delivery.template_fuel: at least 1000".into());
        }
        if crate::domain::address::parse_mailbox(&self.from_address).is_none() {
            return Err(format!("delivery.from_address: `{}` is not an email address", self.from_address));
        }
        if !self.feedback_token.is_empty() && self.feedback_token.expose().len() < 16 {
            return Err("delivery.feedback_token: at least 16 characters".into());
        }
        if !self.tracking_secret.is_empty() && self.tracking_secret.expose().len() < 16 {
            return Err("delivery.tracking_secret: at least 16 characters".into());
        }
        for (i, r) in self.error_rules.iter().enumerate() {
            r.validate().map_err(|e| format!("delivery.error_rules[{i}].{e}"))?;
        }
        let mut names = Vec::new();
        for (i, p) in self.providers.iter().enumerate() {
            let key = format!("delivery.providers[{i}]");
            p.validate(&key)?;
            if names.contains(&p.name) {
                return Err(format!("{key}.name: `{}` is used twice", p.name));
            }
            names.push(p.name.clone());
        }
        Ok(())
    }
}

fn readable(key: &str, path: &str) -> Result<(), String> {
    std::fs::read(path).map(|_| ()).map_err(|e| format!("{key}: cannot read {path}: {e}"))
}

impl ProviderSettings {
    fn validate(&self, key: &str) -> Result<(), String> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("{key}.name: `{}` must be letters, digits, - and _", self.name));
        }
        if !KINDS.contains(&self.kind.as_str()) {
            return Err(format!("{key}.kind: `{}` is not one of {}", self.kind, KINDS.join(", ")));
        }
        if self.channels.is_empty() {
            return Err(format!("{key}.channels: name at least one channel"));
        }
        for (j, c) in self.channels.iter().enumerate() {
            if !kind_channels(&self.kind).contains(&c.as_str()) {
                return Err(format!("{key}.channels[{j}]: a {} provider cannot serve `{c}`", self.kind));
            }
        }
        let needs_url = matches!(self.kind.as_str(), "smtp" | "http_sms" | "http_push" | "webhook");
        if needs_url {
            let url = url::Url::parse(&self.url).map_err(|e| format!("{key}.url: `{}`: {e}", self.url))?;
            let schemes: &[&str] = if self.kind == "smtp" { &["smtp", "smtps"] } else { &["http", "https"] };
            if !schemes.contains(&url.scheme()) {
                return Err(format!("{key}.url: the scheme must be {}", schemes.join(" or ")));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("{key}.url: names no host"));
            }
            if self.kind == "smtp"
                && let Some((_, v)) = url.query_pairs().find(|(k, _)| k == "tls")
                && !matches!(v.as_ref(), "required" | "opportunistic" | "none")
            {
                return Err(format!("{key}.url: tls must be required, opportunistic or none"));
            }
        } else if !self.url.is_empty() {
            return Err(format!("{key}.url: a {} provider takes no url", self.kind));
        }
        if !self.password_file.is_empty() {
            readable(&format!("{key}.password_file"), &self.password_file)?;
        }
        if !self.token_file.is_empty() {
            readable(&format!("{key}.token_file"), &self.token_file)?;
        }
        if self.kind == "webhook" {
            if self.secret_file.is_empty() {
                return Err(format!("{key}.secret_file: a webhook provider signs its requests; name the key file"));
            }
            readable(&format!("{key}.secret_file"), &self.secret_file)?;
        }
        let dkim = [&self.dkim_domain, &self.dkim_selector, &self.dkim_private_key_file];
        let set = dkim.iter().filter(|v| !v.is_empty()).count();
        if set != 0 && set != 3 {
            return Err(format!(
                "{key}.dkim_domain: set dkim_domain, dkim_selector and dkim_private_key_file together"
            ));
        }
        if set == 3 {
            let pem = std::fs::read_to_string(&self.dkim_private_key_file)
                .map_err(|e| format!("{key}.dkim_private_key_file: cannot read {}: {e}", self.dkim_private_key_file))?;
            crate::providers::smtp::dkim_key(&pem).map_err(|e| format!("{key}.dkim_private_key_file: {e}"))?;
        }
        if !matches!(self.body_format.as_str(), "" | "json" | "form") {
            return Err(format!("{key}.body_format: `{}` must be json or form", self.body_format));
        }
        if !self.reconcile_url.is_empty() {
            let url = url::Url::parse(&self.reconcile_url)
                .map_err(|e| format!("{key}.reconcile_url: `{}`: {e}", self.reconcile_url))?;
            if url.scheme() != "http" {
                return Err(format!("{key}.reconcile_url: only http:// lookups are supported"));
            }
        }
        Ok(())
    }

    /// The directory of a file-writing provider.
    pub fn dir_under(&self, data_dir: &Path, default: &str) -> PathBuf {
        if self.dir.is_empty() { data_dir.join(default) } else { PathBuf::from(&self.dir) }
    }

    /// The call timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(if self.timeout_ms == 0 { 10_000 } else { self.timeout_ms })
    }
}
