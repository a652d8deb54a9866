//! A small SMTP client (RFC 5321) with the one thing a general client does not offer: the data phase is
//! split, so the message body is sent and the final `<CRLF>.<CRLF>` is held back until the caller says
//! go. Closing the connection before that dot makes every conforming server discard the transaction,
//! which turns "sent but not recorded" into a window of one write (see docs/delivery.md).
//! STARTTLS and implicit TLS use rustls with the web PKI roots; AUTH PLAIN is supported.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A failed exchange: a reply code (0 for network and protocol failures) and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpError {
    pub code: u16,
    pub text: String,
}

impl std::fmt::Display for SmtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code == 0 { write!(f, "{}", self.text) } else { write!(f, "{} {}", self.code, self.text) }
    }
}

fn net(e: impl std::fmt::Display) -> SmtpError {
    SmtpError { code: 0, text: format!("smtp connection: {e}") }
}

/// How TLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS from the first byte (smtps).
    Implicit,
    /// STARTTLS, and refuse a server without it.
    Required,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// Plain text.
    None,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub hello: String,
    pub credentials: Option<(String, String)>,
    pub timeout: Duration,
}

/// An open SMTP session.
pub struct Connection {
    stream: BufReader<Box<dyn Io>>,
    extensions: Vec<String>,
    timeout: Duration,
}

pub fn tls_client_config() -> Arc<tokio_rustls::rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"));
            Arc::new(config)
        })
        .clone()
}

async fn tls_wrap(stream: Box<dyn Io>, host: &str) -> Result<Box<dyn Io>, SmtpError> {
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string()).map_err(net)?;
    let tls = tokio_rustls::TlsConnector::from(tls_client_config()).connect(name, stream).await.map_err(net)?;
    Ok(Box::new(tls))
}

impl Connection {
    /// Connects, reads the greeting, says EHLO, upgrades to TLS as configured and authenticates.
    pub async fn open(e: &Endpoint) -> Result<Self, SmtpError> {
        let tcp = tokio::time::timeout(e.timeout, TcpStream::connect((e.host.as_str(), e.port)))
            .await
            .map_err(|_| net("connect timed out"))?
            .map_err(net)?;
        tcp.set_nodelay(true).map_err(net)?;
        let mut stream: Box<dyn Io> = Box::new(tcp);
        if e.tls == Tls::Implicit {
            stream = tls_wrap(stream, &e.host).await?;
        }
        let mut c = Self { stream: BufReader::new(stream), extensions: Vec::new(), timeout: e.timeout };
        c.expect(220).await?;
        c.ehlo(&e.hello).await?;
        if matches!(e.tls, Tls::Required | Tls::Opportunistic) {
            if c.supports("STARTTLS") {
                c.command("STARTTLS", 220).await?;
                let inner = std::mem::replace(
                    &mut c.stream,
                    BufReader::new(Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()))),
                );
                c.stream = BufReader::new(tls_wrap(inner.into_inner(), &e.host).await?);
                c.ehlo(&e.hello).await?;
            } else if e.tls == Tls::Required {
                return Err(SmtpError { code: 0, text: "the server does not offer STARTTLS (tls=required)".into() });
            }
        }
        if let Some((user, password)) = &e.credentials {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            c.command(&format!("AUTH PLAIN {token}"), 235).await?;
        }
        Ok(c)
    }

    async fn ehlo(&mut self, hello: &str) -> Result<(), SmtpError> {
        let (_, text) = self.command(&format!("EHLO {hello}"), 250).await?;
        self.extensions = text.lines().skip(1).map(|l| l.trim().to_ascii_uppercase()).collect();
        Ok(())
    }

    /// Whether the server announced `extension` in its EHLO answer.
    pub fn supports(&self, extension: &str) -> bool {
        self.extensions.iter().any(|e| e.split_whitespace().next() == Some(extension))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        let w = self.stream.get_mut();
        tokio::time::timeout(self.timeout, async {
            w.write_all(bytes).await?;
            w.flush().await
        })
        .await
        .map_err(|_| net("write timed out"))?
        .map_err(net)
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Result<(u16, String), SmtpError> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.timeout, self.stream.read_line(&mut line))
                .await
                .map_err(|_| net("reply timed out"))?
                .map_err(net)?;
            if n == 0 {
                return Err(net("closed by the server"));
            }
            if line.len() < 4 || text.len() > 16 * 1024 {
                return Err(net("malformed reply"));
            }
            let code: u16 = line[..3].parse().map_err(|_| net("malformed reply code"))?;
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(line[4..].trim_end());
            if line.as_bytes()[3] != b'-' {
                return Ok((code, text));
            }
        }
    }

    async fn expect(&mut self, code: u16) -> Result<(u16, String), SmtpError> {
        let (got, text) = self.reply().await?;
        if got != code {
            return Err(SmtpError { code: got, text });
        }
        Ok((got, text))
    }

    /// Sends a command line and expects `code`.
    pub async fn command(&mut self, line: &str, code: u16) -> Result<(u16, String), SmtpError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.expect(code).await
    }

    /// Starts a transaction and sends the whole body except the terminating dot: MAIL, RCPT, DATA, body.
    pub async fn prepare(&mut self, from: &str, to: &str, body: &[u8]) -> Result<(), SmtpError> {
        let mut params = String::new();
        if !body.is_ascii() && self.supports("8BITMIME") {
            params.push_str(" BODY=8BITMIME");
        }
        if !(from.is_ascii() && to.is_ascii()) {
            if !self.supports("SMTPUTF8") {
                return Err(SmtpError { code: 553, text: "the address needs SMTPUTF8, which the server lacks".into() });
            }
            params.push_str(" SMTPUTF8");
        }
        self.command(&format!("MAIL FROM:<{from}>{params}"), 250).await?;
        self.command(&format!("RCPT TO:<{to}>"), 250).await?;
        self.command("DATA", 354).await?;
        self.write(&stuff(body)).await
    }

    /// Sends the terminating dot and reads the server's verdict.
    pub async fn finish(&mut self) -> Result<(u16, String), SmtpError> {
        self.write(b"\r\n.\r\n").await?;
        self.reply().await
    }

    /// Ends a finished transaction's session politely.
    pub async fn quit(mut self) {
        let _ = self.command("QUIT", 221).await;
    }

    /// Resets after a refused MAIL or RCPT, keeping the session.
    pub async fn reset(&mut self) -> Result<(), SmtpError> {
        self.command("RSET", 250).await.map(|_| ())
    }
}

/// Dot-stuffs a body (a line starting with "." gets another), with CRLF line ends, without the final dot.
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in body {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    // The terminator starts with CRLF; a body ending in CRLF would make an empty line before the dot.
    if out.ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_dot_stuffed() {
        assert_eq!(stuff(b"a\r\n.b\r\n..c\nd\r\n"), b"a\r\n..b\r\n...c\r\nd".to_vec());
        assert_eq!(stuff(b".start"), b"..start".to_vec());
    }
}
