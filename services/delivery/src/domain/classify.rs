//! The provider error table: what a provider's answer means for the message. SMTP 4xx and HTTP 408, 429
//! and 5xx are worth a retry; SMTP 5xx and HTTP 4xx are final; a final answer that says the address does
//! not exist (SMTP 550/551/553, HTTP 410) is a hard bounce, which also suppresses the address. Network
//! failures are retried. Configuration adds rows that are checked first (`[[delivery.error_rules]]`).

use serde::Deserialize;

/// What a provider error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Try again later (backoff), possibly through the secondary provider.
    Retry,
    /// Give up: the message fails and is dead-lettered.
    Fail,
    /// Give up, and the address does not exist: a hard bounce.
    Bounce,
}

/// One row of the table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    /// "smtp" or "http".
    pub protocol: String,
    /// A status code ("550") or a class of them ("4xx").
    pub code: String,
    /// Optional text the provider's answer must contain (e.g. the enhanced status "5.7.1").
    #[serde(default)]
    pub contains: String,
    pub class: ErrorClass,
}

impl ErrorRule {
    /// Checks the row, naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.protocol.as_str(), "smtp" | "http") {
            return Err(format!("protocol: `{}` must be smtp or http", self.protocol));
        }
        let c = self.code.as_bytes();
        let ok = c.len() == 3
            && c[0].is_ascii_digit()
            && ((c[1].is_ascii_digit() && c[2].is_ascii_digit()) || (c[1] == b'x' && c[2] == b'x'));
        if !ok {
            return Err(format!("code: `{}` must be three digits or a class like 4xx", self.code));
        }
        Ok(())
    }

    fn matches(&self, protocol: &str, code: u16, text: &str) -> bool {
        let code = code.to_string();
        let code_ok = if self.code.ends_with("xx") { code.starts_with(&self.code[..1]) } else { code == self.code };
        self.protocol == protocol && code_ok && (self.contains.is_empty() || text.contains(&self.contains))
    }
}

/// The built-in rows, after the configured ones.
fn builtin(protocol: &str, code: u16) -> ErrorClass {
    match (protocol, code) {
        ("smtp", 550 | 551 | 553) => ErrorClass::Bounce,
        ("smtp", 400..=499) => ErrorClass::Retry,
        ("smtp", _) => ErrorClass::Fail,
        ("http", 408 | 425 | 429) => ErrorClass::Retry,
        ("http", 410) => ErrorClass::Bounce,
        ("http", 500..=599) => ErrorClass::Retry,
        _ => ErrorClass::Fail,
    }
}

/// The table: configured rows first, then the built-in ones.
#[derive(Debug, Clone, Default)]
pub struct ErrorTable {
    rules: Vec<ErrorRule>,
}

impl ErrorTable {
    /// A table with `rules` before the built-in rows.
    pub fn new(rules: Vec<ErrorRule>) -> Self {
        Self { rules }
    }

    /// The class of a `protocol` ("smtp", "http") answer with `code` and `text`.
    pub fn classify(&self, protocol: &str, code: u16, text: &str) -> ErrorClass {
        self.rules.iter().find(|r| r.matches(protocol, code, text)).map_or_else(|| builtin(protocol, code), |r| r.class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rows() {
        let t = ErrorTable::default();
        assert_eq!(t.classify("smtp", 451, "try later"), ErrorClass::Retry);
        assert_eq!(t.classify("smtp", 421, ""), ErrorClass::Retry);
        assert_eq!(t.classify("smtp", 550, "5.1.1 user unknown"), ErrorClass::Bounce);
        assert_eq!(t.classify("smtp", 554, "rejected"), ErrorClass::Fail);
        assert_eq!(t.classify("http", 429, ""), ErrorClass::Retry);
        assert_eq!(t.classify("http", 503, ""), ErrorClass::Retry);
        assert_eq!(t.classify("http", 400, ""), ErrorClass::Fail);
        assert_eq!(t.classify("http", 410, ""), ErrorClass::Bounce);
    }

    #[test]
    fn configured_rows_win() {
        let rule = |code: &str, contains: &str, class| ErrorRule {
            protocol: "smtp".into(),
            code: code.into(),
            contains: contains.into(),
            class,
        };
        let t = ErrorTable::new(vec![rule("554", "5.7.1", ErrorClass::Retry), rule("4xx", "", ErrorClass::Fail)]);
        assert_eq!(t.classify("smtp", 554, "5.7.1 greylisted"), ErrorClass::Retry);
        assert_eq!(t.classify("smtp", 554, "spam"), ErrorClass::Fail);
        assert_eq!(t.classify("smtp", 450, ""), ErrorClass::Fail);
        assert!(rule("4x", "", ErrorClass::Fail).validate().is_err());
        assert!(rule("5xx", "", ErrorClass::Fail).validate().is_ok());
    }
}
