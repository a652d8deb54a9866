//! Email over SMTP: messages built with lettre (MIME, headers, optional DKIM signature), a stable
//! Message-ID per message, List-Unsubscribe and List-Unsubscribe-Post (RFC 8058) on marketing mail, and a
//! pool of sessions that hold the final dot of DATA until the hand-off mark is recorded.

pub mod client;

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart, dkim};
use tokio::sync::Semaphore;

use self::client::{Connection, Endpoint, SmtpError, Tls};
use super::{Handoff, Outcome, Outgoing, Provider};
use crate::domain::classify::{ErrorClass, ErrorTable};
use crate::settings::ProviderSettings;

/// Parses a DKIM RSA key (PKCS#1 PEM).
pub fn dkim_key(pem: &str) -> Result<dkim::DkimSigningKey, String> {
    dkim::DkimSigningKey::new(pem, dkim::DkimSigningAlgorithm::Rsa)
        .map_err(|_| "not an RSA private key in PKCS#1 PEM (-----BEGIN RSA PRIVATE KEY-----)".to_string())
}

/// The domain of Message-IDs: the sender's.
fn id_domain(from: &Mailbox) -> String {
    from.email.domain().to_string()
}

/// The stable Message-ID of a message: the same on every attempt, so the recipient side can tell.
pub fn message_id_header(message_id: &str, from: &Mailbox) -> String {
    format!("<{message_id}@{}>", id_domain(from))
}

/// The formatted message (headers and MIME body), DKIM-signed when `dkim` is given.
pub fn build(m: &Outgoing, from: &Mailbox, dkim: Option<&dkim::DkimConfig>) -> Result<Vec<u8>, String> {
    let to = Mailbox::from_str(m.recipient.as_str()).map_err(|e| format!("recipient: {e}"))?;
    let mut b = lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(m.rendered.subject.clone())
        .message_id(Some(message_id_header(&m.message_id, from)))
        .date_now();
    if m.marketing && !m.unsubscribe_url.is_empty() {
        b = b
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{}>", m.unsubscribe_url),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_string(),
            ));
    }
    b = b.raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Rapport-Message-Id"), m.message_id.clone()));
    let (html, text) = (&m.rendered.html, &m.rendered.text);
    let mut message = match (html.is_empty(), text.is_empty()) {
        (false, false) => b.multipart(MultiPart::alternative_plain_html(text.clone(), html.clone())),
        (false, true) => b.singlepart(SinglePart::html(html.clone())),
        _ => b.singlepart(SinglePart::plain(text.clone())),
    }
    .map_err(|e| format!("message: {e}"))?;
    if let Some(config) = dkim {
        message.sign(config);
    }
    Ok(message.formatted())
}

/// An SMTP relay with a pool of sessions.
pub struct Smtp {
    name: String,
    endpoint: Endpoint,
    from: Mailbox,
    dkim: Option<dkim::DkimConfig>,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    errors: Arc<ErrorTable>,
    reconcile_url: String,
    timeout: std::time::Duration,
}

impl Smtp {
    /// The provider described by `p`, checked at start-up.
    pub fn new(p: &ProviderSettings, from: Mailbox, errors: Arc<ErrorTable>) -> Result<Self, String> {
        let url = url::Url::parse(&p.url).map_err(|e| e.to_string())?;
        let tls = match (url.scheme(), url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.to_string())) {
            ("smtps", _) => Tls::Implicit,
            (_, Some(v)) if v == "required" => Tls::Required,
            (_, Some(v)) if v == "none" => Tls::None,
            _ => Tls::Opportunistic,
        };
        let credentials = if p.username.is_empty() {
            None
        } else {
            let password = std::fs::read_to_string(&p.password_file)
                .map_err(|e| format!("password_file: cannot read {}: {e}", p.password_file))?;
            Some((p.username.clone(), password.trim().to_string()))
        };
        let dkim = if p.dkim_domain.is_empty() {
            None
        } else {
            let pem = std::fs::read_to_string(&p.dkim_private_key_file).map_err(|e| e.to_string())?;
            Some(dkim::DkimConfig::default_config(p.dkim_selector.clone(), p.dkim_domain.clone(), dkim_key(&pem)?))
        };
        let endpoint = Endpoint {
            host: url.host_str().unwrap_or_default().to_string(),
            port: url.port().unwrap_or(if tls == Tls::Implicit { 465 } else { 25 }),
            tls,
            hello: id_domain(&from),
            credentials,
            timeout: p.timeout(),
        };
        Ok(Self {
            name: p.name.clone(),
            endpoint,
            from,
            dkim,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(if p.connections == 0 { 8 } else { p.connections }),
            errors,
            reconcile_url: p.reconcile_url.trim_end_matches('/').to_string(),
            timeout: p.timeout(),
        })
    }

    fn classify(&self, e: &SmtpError) -> Outcome {
        let detail = e.to_string();
        if e.code == 0 {
            return Outcome::Retry { detail };
        }
        match self.errors.classify("smtp", e.code, &e.text) {
            ErrorClass::Retry => Outcome::Retry { detail },
            ErrorClass::Fail => Outcome::Failed { detail, bounce: false },
            ErrorClass::Bounce => Outcome::Failed { detail, bounce: true },
        }
    }

    async fn session(&self) -> Result<Connection, SmtpError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) => Ok(c),
            None => Connection::open(&self.endpoint).await,
        }
    }

    fn give_back(&self, c: Connection) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }
}

#[tonic::async_trait]
impl Provider for Smtp {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, m: &Outgoing, handoff: &dyn Handoff) -> Outcome {
        let body = match build(m, &self.from, self.dkim.as_ref()) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed { detail: e, bounce: false },
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return Outcome::Retry { detail: "smtp provider closed".into() };
        };
        // A pooled session may have been closed by the server while idle: one fresh try.
        let mut conn = None;
        let mut prepared = Err(SmtpError { code: 0, text: String::new() });
        for fresh in [false, true] {
            let mut c = if fresh { Connection::open(&self.endpoint).await } else { self.session().await };
            match &mut c {
                Ok(c) => prepared = c.prepare(self.from.email.as_ref(), m.recipient.as_str(), &body).await,
                Err(e) => prepared = Err(e.clone()),
            }
            let network = matches!(&prepared, Err(e) if e.code == 0);
            conn = c.ok();
            if !network {
                break;
            }
            conn = None;
        }
        let Some(mut conn) = conn else {
            return self.classify(&prepared.err().unwrap_or(SmtpError { code: 0, text: "no session".into() }));
        };
        if let Err(e) = prepared {
            // A refused MAIL or RCPT: the session is still good after RSET.
            if conn.reset().await.is_ok() {
                self.give_back(conn);
            }
            return self.classify(&e);
        }
        // The body is with the server, but without the final dot it is not a message yet. Record the
        // hand-off, then send the dot. If the mark cannot be written, drop the session: the server
        // discards the unfinished transaction.
        if !handoff.commit(self.name()).await {
            drop(conn);
            return Outcome::Retry {
                detail: "the hand-off could not be recorded; the transaction was abandoned".into(),
            };
        }
        match conn.finish().await {
            Ok((250, text)) => {
                self.give_back(conn);
                Outcome::Sent { detail: format!("250 {text}") }
            }
            Ok((code, text)) => {
                let e = SmtpError { code, text };
                let outcome = self.classify(&e);
                self.give_back(conn);
                outcome
            }
            Err(e) => Outcome::Unknown { detail: format!("no answer to the end of data: {e}") },
        }
    }

    async fn reconcile(&self, message_id: &str) -> Option<bool> {
        if self.reconcile_url.is_empty() {
            return None;
        }
        let id = message_id_header(message_id, &self.from);
        let id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let url = format!("{}/{id}", self.reconcile_url);
        match super::http::get(&url, self.timeout).await {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                Some(v.get("received").and_then(|r| r.as_i64()).unwrap_or(0) > 0)
            }
            Ok((404, _)) => Some(false),
            Ok((status, _)) => {
                tracing::warn!(provider = %self.name, status, "smtp reconciliation lookup failed");
                None
            }
            Err(e) => {
                tracing::warn!(provider = %self.name, error = %e, "smtp reconciliation lookup failed");
                None
            }
        }
    }
}
