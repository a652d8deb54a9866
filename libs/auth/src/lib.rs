//! Who may call what. Every rpc declares its scope in the contracts
//! (`rapport.common.v1.required_scope`); [`AuthLayer`] checks the caller's bearer token against it
//! before the call reaches a handler. A missing or invalid token gets UNAUTHENTICATED, a token without
//! the scope PERMISSION_DENIED. Health and reflection need no token.
//!
//! Accepted tokens: the admin token (a file in the data directory, created on first start), static API
//! keys configured by their SHA-256 only, and HS256 JWTs with `iss`, `aud`, `exp` and a `scope` claim.

mod layer;
mod token;

pub use layer::{AuthLayer, AuthService};
pub use token::{ensure_admin_token, generate_token, hash_token};

use std::collections::{BTreeSet, HashMap};

use rapport_config::AuthSettings;

/// The scope that grants every other scope.
pub const ADMIN_SCOPE: &str = "admin";
/// The pseudo-scope of rpcs that any valid token may call.
pub const AUTHENTICATED_SCOPE: &str = "authenticated";

/// An authenticated caller, available to handlers in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who the caller is: an API key's name, a JWT's subject, `admin`, or `internal:<service>`.
    pub name: String,
    /// What the caller may do.
    pub scopes: BTreeSet<String>,
}

impl Principal {
    /// A caller holding `scopes`.
    pub fn new(name: impl Into<String>, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { name: name.into(), scopes: scopes.into_iter().map(Into::into).collect() }
    }

    /// The identity of a service calling another inside the same process.
    pub fn internal(service: &str) -> Self {
        Self::new(format!("internal:{service}"), [ADMIN_SCOPE])
    }

    /// Whether the caller may use an rpc that requires `scope`.
    pub fn allows(&self, scope: &str) -> bool {
        scope == AUTHENTICATED_SCOPE || self.scopes.contains(ADMIN_SCOPE) || self.scopes.contains(scope)
    }

    /// The caller of a request, if it went through [`AuthLayer`] or an in-process transport.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Principal> {
        request.extensions().get::<Principal>()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    #[error("token expired")]
    Expired,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Checks bearer tokens.
pub struct Authenticator {
    by_hash: HashMap<String, Principal>,
    jwt: Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.by_hash.len())
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Accepts `admin_token` with every scope, the configured API keys and, when a secret is given,
    /// HS256 JWTs.
    pub fn new(admin_token: &str, settings: &AuthSettings, jwt_secret: Option<&[u8]>) -> anyhow::Result<Self> {
        let mut by_hash = HashMap::new();
        by_hash.insert(hash_token(admin_token), Principal::new("admin", [ADMIN_SCOPE]));
        for (i, key) in settings.api_keys.iter().enumerate() {
            let hash = key.sha256.trim().to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("auth.api_keys[{i}].sha256: expected 64 hex digits (sha256 of the token)");
            }
            if key.name.is_empty() {
                anyhow::bail!("auth.api_keys[{i}].name: must not be empty");
            }
            by_hash.insert(hash, Principal::new(key.name.clone(), key.scopes.iter().cloned()));
        }
        let jwt = jwt_secret.map(|secret| {
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.set_issuer(&[settings.jwt_issuer.as_str()]);
            validation.set_audience(&[settings.jwt_audience.as_str()]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            (jsonwebtoken::DecodingKey::from_secret(secret), validation)
        });
        Ok(Self { by_hash, jwt })
    }

    /// The caller a token stands for.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if let Some(p) = self.by_hash.get(&hash_token(token)) {
            return Ok(p.clone());
        }
        if let Some((key, validation)) = &self.jwt
            && token.matches('.').count() == 2
        {
            return match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => {
                    let c = data.claims;
                    let scopes = c.scope.split_whitespace().map(str::to_string).chain(c.scopes);
                    Ok(Principal::new(format!("jwt:{}", c.sub), scopes))
                }
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    Err(AuthError::Expired)
                }
                Err(_) => Err(AuthError::Invalid),
            };
        }
        Err(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            admin_token_file: String::new(),
            api_keys: vec![rapport_config::ApiKeySettings {
                name: "call-centre".into(),
                sha256: hash_token("cc-token"),
                scopes: vec!["profile:read".into(), "consent:write".into()],
            }],
            jwt_hs256_secret_file: String::new(),
            jwt_issuer: "rapport".into(),
            jwt_audience: "rapport".into(),
        }
    }

    #[test]
    fn admin_and_api_keys() {
        let auth = Authenticator::new("adm", &settings(), None).unwrap();
        let admin = auth.authenticate("adm").unwrap();
        assert!(admin.allows("dsr:erase"));
        let cc = auth.authenticate("cc-token").unwrap();
        assert_eq!(cc.name, "call-centre");
        assert!(cc.allows("profile:read"));
        assert!(cc.allows(AUTHENTICATED_SCOPE));
        assert!(!cc.allows("dsr:export"));
        assert_eq!(auth.authenticate("nope"), Err(AuthError::Invalid));
        assert_eq!(auth.authenticate(""), Err(AuthError::Missing));
    }

    #[test]
    fn bad_api_key_hash_is_named() {
        let mut s = settings();
        s.api_keys[0].sha256 = "abc".into();
        let err = Authenticator::new("adm", &s, None).unwrap_err();
        assert!(err.to_string().contains("auth.api_keys[0].sha256"), "{err}");
    }

    #[test]
    fn jwt_hs256() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = Authenticator::new("adm", &settings(), Some(secret)).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = |exp: u64, aud: &str| {
            serde_json_like(
                &[("sub", "store-42"), ("iss", "rapport"), ("aud", aud), ("scope", "profile:read decision:decide")],
                exp,
            )
        };
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let good = jsonwebtoken::encode(&header, &claims(now + 600, "rapport"), &key).unwrap();
        let p = auth.authenticate(&good).unwrap();
        assert_eq!(p.name, "jwt:store-42");
        assert!(p.allows("decision:decide"));
        assert!(!p.allows("consent:write"));
        let expired = jsonwebtoken::encode(&header, &claims(now - 600, "rapport"), &key).unwrap();
        assert_eq!(auth.authenticate(&expired), Err(AuthError::Expired));
        let wrong_aud = jsonwebtoken::encode(&header, &claims(now + 600, "other"), &key).unwrap();
        assert_eq!(auth.authenticate(&wrong_aud), Err(AuthError::Invalid));
        let forged = jsonwebtoken::encode(
            &header,
            &claims(now + 600, "rapport"),
            &jsonwebtoken::EncodingKey::from_secret(b"another secret of enough length!"),
        )
        .unwrap();
        assert_eq!(auth.authenticate(&forged), Err(AuthError::Invalid));
    }

    fn serde_json_like(fields: &[(&str, &str)], exp: u64) -> std::collections::BTreeMap<String, serde_value::Value> {
        let mut m: std::collections::BTreeMap<String, serde_value::Value> =
            fields.iter().map(|(k, v)| (k.to_string(), serde_value::Value::String(v.to_string()))).collect();
        m.insert("exp".into(), serde_value::Value::U64(exp));
        m
    }

    mod serde_value {
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        pub enum Value {
            String(String),
            U64(u64),
        }
    }
}
