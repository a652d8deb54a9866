//! Signed tokens: a URL-safe base64 JSON claim set and an HMAC-SHA256 over it. Double opt-in and
//! unsubscribe tokens are single use; their ids are recorded when spent. Preference tokens are reusable
//! until they expire and name only a customer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token says. Short keys keep tokens under 512 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Kind: "doi" (double opt-in), "unsub" (unsubscribe) or "pref" (preference centre).
    pub k: String,
    /// Token id ("tok_…"), recorded on entries and when spent.
    pub id: String,
    /// Contact point type (IdentifierType number) and normalised value.
    pub ct: i32,
    pub cv: String,
    /// Channel number.
    pub ch: i32,
    /// Purposes.
    pub p: Vec<String>,
    /// Customer id, if known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub c: String,
    /// Expiry, milliseconds since the epoch.
    pub exp: i64,
    /// Message and decision ids (unsubscribe tokens).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub m: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub d: String,
    /// Region kept with the entries (double opt-in).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub r: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of ours, or altered.
    BadSignature,
    /// Past its expiry.
    Expired,
    /// Single use, already spent.
    Used,
}

impl TokenError {
    /// The message a caller sees.
    pub fn message(&self) -> &'static str {
        match self {
            TokenError::BadSignature => "token: bad signature",
            TokenError::Expired => "token: expired",
            TokenError::Used => "token: already used",
        }
    }

    /// As a domain error.
    pub fn to_error(&self) -> rapport_errors::Error {
        let code = match self {
            TokenError::BadSignature => rapport_errors::ErrorCode::InvalidArgument,
            _ => rapport_errors::ErrorCode::FailedPrecondition,
        };
        rapport_errors::Error::new(code, self.message())
    }
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Signs and verifies tokens with one key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer with `key`.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let mac = URL_SAFE_NO_PAD.encode(hmac_sha256(&self.key, body.as_bytes()));
        format!("{body}.{mac}")
    }

    /// A short keyed tag of `value` (16 URL-safe characters): names a contact point in a page's form
    /// without showing it, and cannot be computed without the key.
    pub fn tag(&self, value: &str) -> String {
        let mac = hmac_sha256(&self.key, format!("tag:{value}").as_bytes());
        URL_SAFE_NO_PAD.encode(&mac[..12])
    }

    /// The claims of `token` if it is ours, unaltered and of `kind` (expiry is checked separately).
    pub fn verify(&self, token: &str, kind: &str) -> Result<Claims, TokenError> {
        let (body, mac) = token.trim().split_once('.').ok_or(TokenError::BadSignature)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::BadSignature)?;
        if !equal(&mac, &hmac_sha256(&self.key, body.as_bytes())) {
            return Err(TokenError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::BadSignature)?;
        if claims.k != kind {
            return Err(TokenError::BadSignature);
        }
        Ok(claims)
    }
}

/// `a***@example.com`, `+1******71`: a contact point fit for a page.
pub fn mask(value: &str) -> String {
    match value.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => {
            let chars: Vec<char> = value.chars().collect();
            if chars.len() <= 4 {
                return "*".repeat(chars.len());
            }
            let head: String = chars[..2].iter().collect();
            let tail: String = chars[chars.len() - 2..].iter().collect();
            format!("{head}{}{tail}", "*".repeat(chars.len() - 4))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            k: "unsub".into(),
            id: "tok_1".into(),
            ct: 2,
            cv: "ann@example.com".into(),
            ch: 1,
            p: vec!["marketing".into()],
            c: String::new(),
            exp: 10,
            m: String::new(),
            d: String::new(),
            r: String::new(),
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn tokens_round_trip_and_refuse_forgery() {
        let s = Signer::new(b"0123456789abcdef".to_vec());
        let t = s.sign(&claims());
        assert!(t.len() < 512);
        assert_eq!(s.verify(&t, "unsub").unwrap(), claims());
        assert_eq!(s.verify(&t, "doi"), Err(TokenError::BadSignature), "another kind");
        let other = Signer::new(b"fedcba9876543210".to_vec());
        assert_eq!(other.verify(&t, "unsub"), Err(TokenError::BadSignature));
        // Altered claims with the old signature.
        let (_, mac) = t.split_once('.').unwrap();
        let mut altered = claims();
        altered.cv = "bob@example.com".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&altered).unwrap());
        assert_eq!(s.verify(&format!("{body}.{mac}"), "unsub"), Err(TokenError::BadSignature));
        assert_eq!(s.verify("garbage", "unsub"), Err(TokenError::BadSignature));
    }

    #[test]
    fn tags_are_keyed_and_stable() {
        let s = Signer::new(b"0123456789abcdef".to_vec());
        assert_eq!(s.tag("2:ann@example.com"), s.tag("2:ann@example.com"));
        assert_eq!(s.tag("x").len(), 16);
        assert_ne!(s.tag("2:ann@example.com"), Signer::new(b"fedcba9876543210".to_vec()).tag("2:ann@example.com"));
    }

    #[test]
    fn masks_hide_most_of_the_value() {
        assert_eq!(mask("ann@example.com"), "a***@example.com");
        assert_eq!(mask("+14155552671"), "+1********71");
    }
}
