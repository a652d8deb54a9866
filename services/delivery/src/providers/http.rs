//! HTTP providers: an SMS gateway and a push service through one configurable adapter (a JSON or form
//! body with configurable field names, a bearer token, the message id as an idempotency header), and
//! signed webhooks (`X-Rapport-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`) retried on
//! the published schedule of docs/delivery.md. HTTP 408/425/429/5xx retry, other 4xx are final, 410 is a
//! hard bounce (the error table decides).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rapport_proto::common::v1::Channel;

use super::{Handoff, Outcome, Outgoing, Provider};
use crate::domain::classify::{ErrorClass, ErrorTable};
use crate::settings::ProviderSettings;

/// One HTTP request over a fresh connection (http or https); the status and the body (at most 64 KiB).
pub async fn request(
    method: http::Method,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let u = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = u.host_str().ok_or("url has no host")?.to_string();
    let port = u.port_or_known_default().ok_or("url has no port")?;
    let path = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut req = http::Request::builder().method(method).uri(path).header(http::header::HOST, &host);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        macro_rules! exchange {
            ($io:expr) => {{
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new($io)).await.map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let limited = http_body_util::Limited::new(resp.into_body(), 64 * 1024);
                let body = limited.collect().await.map_err(|e| e.to_string())?.to_bytes();
                Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
            }};
        }
        if u.scheme() == "https" {
            let name =
                tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(super::smtp::client::tls_client_config())
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            exchange!(tls)
        } else {
            exchange!(tcp)
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "timed out".to_string())?
}

/// A GET of `url`.
pub async fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    request(http::Method::GET, url, &[], Vec::new(), timeout).await
}

/// The HMAC-SHA256 webhook signature of `body` at `t` (unix seconds): `t=<t>,v1=<hex>`.
pub fn webhook_signature(key: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("any key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What kind of HTTP adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Sms,
    Push,
    Webhook,
}

/// An HTTP provider.
pub struct HttpProvider {
    name: String,
    flavour: Flavour,
    url: String,
    form: bool,
    fields: BTreeMap<String, String>,
    extra: BTreeMap<String, String>,
    token: Option<String>,
    secret: Option<Vec<u8>>,
    idempotency_header: String,
    timeout: Duration,
    errors: Arc<ErrorTable>,
}

impl HttpProvider {
    /// The provider described by `p`.
    pub fn new(p: &ProviderSettings, flavour: Flavour, errors: Arc<ErrorTable>) -> Result<Self, String> {
        let read = |key: &str, path: &str| -> Result<Option<String>, String> {
            if path.is_empty() {
                return Ok(None);
            }
            std::fs::read_to_string(path).map(|s| Some(s.trim().to_string())).map_err(|e| format!("{key}: {e}"))
        };
        Ok(Self {
            name: p.name.clone(),
            flavour,
            url: p.url.clone(),
            form: p.body_format == "form",
            fields: p.fields.clone(),
            extra: p.extra_fields.clone(),
            token: read("token_file", &p.token_file)?,
            secret: read("secret_file", &p.secret_file)?.map(String::into_bytes),
            idempotency_header: if p.idempotency_header.is_empty() {
                "Idempotency-Key".into()
            } else {
                p.idempotency_header.clone()
            },
            timeout: p.timeout(),
            errors,
        })
    }

    fn field(&self, name: &str) -> String {
        self.fields.get(name).cloned().unwrap_or_else(|| name.to_string())
    }

    fn body(&self, m: &Outgoing) -> (Vec<u8>, &'static str) {
        let mut pairs: Vec<(String, String)> = match self.flavour {
            Flavour::Sms => {
                vec![(self.field("to"), m.recipient.as_str().into()), (self.field("text"), m.rendered.text.clone())]
            }
            Flavour::Push => vec![
                (self.field("to"), m.recipient.as_str().into()),
                (self.field("title"), m.rendered.subject.clone()),
                (self.field("text"), m.rendered.text.clone()),
            ],
            Flavour::Webhook => {
                let doc = serde_json::json!({
                    "message_id": m.message_id, "customer_id": m.customer_id,
                    "channel": m.channel.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase(),
                    "to": m.recipient.as_str(), "subject": m.rendered.subject, "html": m.rendered.html,
                    "text": m.rendered.text, "decision_id": m.decision_id, "offer_id": m.offer_id,
                    "campaign_id": m.campaign_id,
                });
                return (doc.to_string().into_bytes(), "application/json");
            }
        };
        pairs.push((self.field("message_id"), m.message_id.clone()));
        pairs.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        if self.form {
            let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
            (body.into_bytes(), "application/x-www-form-urlencoded")
        } else {
            let map: serde_json::Map<String, serde_json::Value> =
                pairs.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
            (serde_json::Value::Object(map).to_string().into_bytes(), "application/json")
        }
    }
}

#[tonic::async_trait]
impl Provider for HttpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        match self.flavour {
            Flavour::Sms => "http_sms",
            Flavour::Push => "http_push",
            Flavour::Webhook => "webhook",
        }
    }

    async fn send(&self, m: &Outgoing, handoff: &dyn Handoff) -> Outcome {
        if self.flavour == Flavour::Sms && m.channel != Channel::Sms && m.rendered.text.is_empty() {
            return Outcome::Failed { detail: "an SMS needs a text part".into(), bounce: false };
        }
        let (body, content_type) = self.body(m);
        let mut headers = vec![
            ("content-type".to_string(), content_type.to_string()),
            (self.idempotency_header.clone(), m.message_id.clone()),
        ];
        if let Some(t) = &self.token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        if let Some(key) = &self.secret {
            headers.push(("x-rapport-signature".into(), webhook_signature(key, chrono::Utc::now().timestamp(), &body)));
        }
        // The request carries the message id as its idempotency key: after a crash it is sent again
        // with the same key, and the provider (if it honours the key) keeps one.
        if !handoff.commit(self.name()).await {
            return Outcome::Retry { detail: "the hand-off could not be recorded".into() };
        }
        match request(http::Method::POST, &self.url, &headers, body, self.timeout).await {
            Ok((status, text)) if (200..300).contains(&status) => {
                Outcome::Sent { detail: format!("{status} {}", text.chars().take(200).collect::<String>()) }
            }
            Ok((status, text)) => {
                let detail = format!("{status} {}", text.chars().take(200).collect::<String>());
                match self.errors.classify("http", status, &text) {
                    ErrorClass::Retry => Outcome::Retry { detail },
                    ErrorClass::Fail => Outcome::Failed { detail, bounce: false },
                    ErrorClass::Bounce => Outcome::Failed { detail, bounce: true },
                }
            }
            Err(e) => Outcome::Retry { detail: format!("{}: {e}", self.kind()) },
        }
    }

    async fn reconcile(&self, _message_id: &str) -> Option<bool> {
        // Resending carries the same idempotency key.
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures_are_hmac_sha256_of_time_and_body() {
        let s = webhook_signature(b"key", 1700000000, b"{}");
        assert!(s.starts_with("t=1700000000,v1="));
        assert_eq!(s.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(s, webhook_signature(b"key", 1700000001, b"{}"));
    }
}
