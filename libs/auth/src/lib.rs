//! Who may call what. Every rpc declares its scope in the contracts
//! (`rapport.common.v1.required_scope`); [`AuthLayer`] checks the caller's bearer token against it
//! before the call reaches a handler. A missing or invalid token gets UNAUTHENTICATED, a token without
//! the scope PERMISSION_DENIED. Health and reflection need no token.
//!
//! Accepted tokens: the admin token (a file in the data directory, created on first start), static API
//! keys configured by their SHA-256 only, and JWTs signed with HS256 (a shared secret) or RS256 (the
//! issuer's RSA public key), with `iss`, `aud`, `exp`, `sub` and scopes in `scope` (space separated),
//! `scopes` or `roles`. Roles ([`roles`]) are named scope bundles; [`mask`] hides parts of contact
//! details from callers that should not see them whole.

mod jwt;
mod layer;
pub mod mask;
pub mod roles;
pub mod scopes_doc;
mod token;

pub use layer::{AuthLayer, AuthService};
pub use mask::Mask;
pub use roles::{Role, Roles};
pub use token::{ensure_admin_token, generate_token, hash_token};

use std::collections::{BTreeSet, HashMap};

use rapport_config::AuthSettings;

/// The scope that grants every other scope.
pub const ADMIN_SCOPE: &str = "admin";
/// The pseudo-scope of rpcs that any valid token may call.
pub const AUTHENTICATED_SCOPE: &str = "authenticated";
/// The scope of profile reads.
pub const PROFILE_READ_SCOPE: &str = "profile:read";
/// Profile reads with email addresses and phone numbers shown only partly ([`mask`]). It grants the
/// `profile:read` rpcs listed in [`MASKED_READS`], not the timeline or the change feed.
pub const PROFILE_READ_MASKED_SCOPE: &str = "profile:read:masked";
/// The rpcs that `profile:read:masked` may call: their answers are masked or hold no contact details.
pub const MASKED_READS: [&str; 5] = [
    "/rapport.profile.v1.ProfileService/GetProfile",
    "/rapport.profile.v1.ProfileService/BatchGetProfiles",
    "/rapport.profile.v1.ProfileService/GetSegment",
    "/rapport.profile.v1.ProfileService/ListSegments",
    "/rapport.profile.v1.ProfileService/ListSegmentMembers",
];

/// Whether holding `scopes` lets a caller use the rpc at `path` that requires `scope`.
pub(crate) fn grants(scopes: &BTreeSet<String>, path: &str, scope: &str) -> bool {
    scope == AUTHENTICATED_SCOPE
        || scopes.contains(ADMIN_SCOPE)
        || scopes.contains(scope)
        || (scope == PROFILE_READ_SCOPE && scopes.contains(PROFILE_READ_MASKED_SCOPE) && MASKED_READS.contains(&path))
}

/// An authenticated caller, available to handlers in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who the caller is: an API key's name, a JWT's subject, `admin`, or `internal:<service>`.
    pub name: String,
    /// What the caller may do.
    pub scopes: BTreeSet<String>,
    /// Contact details the caller sees only partly.
    pub mask: Mask,
    /// Calls per second allowed to this caller; 0: the configured default.
    pub rate_limit_per_second: u32,
}

impl Principal {
    /// A caller holding `scopes` (and the mask they imply).
    pub fn new(name: impl Into<String>, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let scopes: BTreeSet<String> = scopes.into_iter().map(Into::into).collect();
        Self { name: name.into(), mask: Mask::implied_by(&scopes), scopes, rate_limit_per_second: 0 }
    }

    /// The identity of a service calling another inside the same process.
    pub fn internal(service: &str) -> Self {
        Self::new(format!("internal:{service}"), [ADMIN_SCOPE])
    }

    /// Whether the caller holds `scope` (or admin). Prefer [`Principal::allows_call`], which also knows
    /// the rpcs a masked read may call.
    pub fn allows(&self, scope: &str) -> bool {
        scope == AUTHENTICATED_SCOPE || self.scopes.contains(ADMIN_SCOPE) || self.scopes.contains(scope)
    }

    /// Whether the caller may use the rpc at `path`, which requires `scope`.
    pub fn allows_call(&self, path: &str, scope: &str) -> bool {
        grants(&self.scopes, path, scope)
    }

    /// Whether the caller holds the admin scope (the admin token, in-process calls).
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(ADMIN_SCOPE)
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

/// Checks bearer tokens.
pub struct Authenticator {
    /// Principals by the SHA-256 of their token. A lookup compares digests of the presented token, so its
    /// timing says nothing about the stored tokens themselves (see docs/security.md).
    by_hash: HashMap<String, Principal>,
    jwt: jwt::JwtVerifier,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.by_hash.len())
            .field("jwt", &self.jwt.algorithms())
            .finish()
    }
}

impl Authenticator {
    /// Accepts `admin_token` with every scope, the configured API keys, and JWTs verified with the key
    /// files named in `settings`. A key file that cannot be read or is not a key is an error naming the
    /// setting.
    pub fn from_settings(admin_token: &str, settings: &AuthSettings) -> anyhow::Result<Self> {
        let keys = jwt::JwtKeys::load(settings)?;
        Self::with_keys(admin_token, settings, keys)
    }

    /// Like [`Authenticator::from_settings`] with the HS256 secret given (the RS256 key file is still read
    /// from `settings`).
    pub fn new(admin_token: &str, settings: &AuthSettings, jwt_secret: Option<&[u8]>) -> anyhow::Result<Self> {
        let mut keys = jwt::JwtKeys::load_rs256(settings)?;
        keys.hs256 = jwt_secret.map(<[u8]>::to_vec);
        Self::with_keys(admin_token, settings, keys)
    }

    fn with_keys(admin_token: &str, settings: &AuthSettings, keys: jwt::JwtKeys) -> anyhow::Result<Self> {
        let roles = Roles::with_config(&settings.roles)?;
        let mut by_hash = HashMap::new();
        by_hash.insert(hash_token(admin_token), Principal::new("admin", [ADMIN_SCOPE]));
        for (i, key) in settings.api_keys.iter().enumerate() {
            let at = format!("auth.api_keys[{i}]");
            let hash = key.sha256.trim().to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("{at}.sha256: expected 64 hex digits (sha256 of the token)");
            }
            if key.name.is_empty() {
                anyhow::bail!("{at}.name: must not be empty");
            }
            if by_hash.contains_key(&hash) {
                anyhow::bail!("{at}.sha256: the same token is configured twice (or is the admin token)");
            }
            for scope in &key.scopes {
                roles::check_scope(&format!("{at}.scopes"), scope)?;
            }
            let mut scopes: BTreeSet<String> = key.scopes.iter().cloned().collect();
            let mut mask = Mask::parse(&format!("{at}.mask"), &key.mask)?;
            for name in &key.roles {
                let role = roles.get(name).ok_or_else(|| {
                    let known: Vec<_> = roles.iter().map(|(n, _)| n).collect();
                    anyhow::anyhow!("{at}.roles: unknown role `{name}`; known: {}", known.join(", "))
                })?;
                scopes.extend(role.scopes.iter().cloned());
                mask = mask.union(role.mask);
            }
            if scopes.is_empty() {
                anyhow::bail!("{at}: grants nothing; give it scopes or roles");
            }
            let mut principal = Principal::new(key.name.clone(), scopes);
            principal.mask = principal.mask.union(mask);
            principal.rate_limit_per_second = key.rate_limit_per_second;
            by_hash.insert(hash, principal);
        }
        let jwt = jwt::JwtVerifier::new(settings, keys, roles)?;
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
        if token.matches('.').count() == 2 {
            return self.jwt.verify(token);
        }
        Err(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            api_keys: vec![rapport_config::ApiKeySettings {
                name: "call-centre".into(),
                sha256: hash_token("cc-token"),
                scopes: vec!["profile:read".into(), "consent:write".into()],
                ..Default::default()
            }],
            jwt_issuer: "rapport".into(),
            jwt_audience: "rapport".into(),
            jwt_leeway_seconds: 0,
            ..Default::default()
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

    const RS_PRIVATE: &str = include_str!("../testdata/rs256-test-private.pem");
    const RS_PUBLIC: &str = include_str!("../testdata/rs256-test-public.pem");

    fn rs256_encoding_key() -> jsonwebtoken::EncodingKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(RS_PRIVATE).unwrap();
        jsonwebtoken::EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes())
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn jwt_rs256_beside_hs256() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings();
        s.jwt_rs256_public_key_file = write(&dir, "rs.pem", RS_PUBLIC);
        s.jwt_hs256_secret_file = write(&dir, "hs.secret", "0123456789abcdef0123456789abcdef\n");
        s.jwt_issuer = "https://idp.example".into();
        s.jwt_audience = "rapport-api".into();
        let auth = Authenticator::from_settings("adm", &s).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = |iss: &str| {
            let mut c = serde_json_like(&[("sub", "till-7"), ("iss", iss), ("aud", "rapport-api")], now + 600);
            c.insert("roles".into(), serde_value::Value::List(vec!["store-till".into()]));
            c
        };
        let rs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        let good = jsonwebtoken::encode(&rs, &claims("https://idp.example"), &rs256_encoding_key()).unwrap();
        let p = auth.authenticate(&good).unwrap();
        assert_eq!(p.name, "jwt:till-7");
        assert!(p.allows_call("/rapport.profile.v1.ProfileService/GetProfile", "profile:read"));
        assert!(!p.allows_call("/rapport.profile.v1.ProfileService/GetTimeline", "profile:read"));
        assert_eq!(p.mask, Mask::EMAIL_AND_PHONE);
        let wrong_iss = jsonwebtoken::encode(&rs, &claims("https://evil.example"), &rs256_encoding_key()).unwrap();
        assert_eq!(auth.authenticate(&wrong_iss), Err(AuthError::Invalid));
        // The same claims under HS256 verify with the shared secret, not with the RSA key.
        let hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let hs_token = jsonwebtoken::encode(
            &hs,
            &claims("https://idp.example"),
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(auth.authenticate(&hs_token).unwrap().name, "jwt:till-7");
        // An HS256 token signed with the RSA public key's bytes (the classic confusion attack) is refused.
        let confused = jsonwebtoken::encode(
            &hs,
            &claims("https://idp.example"),
            &jsonwebtoken::EncodingKey::from_secret(RS_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.authenticate(&confused), Err(AuthError::Invalid));

        // Only RS256 configured: HS256 tokens are refused whatever their signature.
        let mut only_rs = s.clone();
        only_rs.jwt_hs256_secret_file = String::new();
        let auth = Authenticator::from_settings("adm", &only_rs).unwrap();
        assert_eq!(auth.authenticate(&hs_token), Err(AuthError::Invalid));
        assert!(auth.authenticate(&good).is_ok());
    }

    #[test]
    fn bad_key_files_are_named_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let check = |s: &AuthSettings, needle: &str| {
            let err = Authenticator::from_settings("adm", s).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle} not in: {err}");
        };
        let mut s = settings();
        s.jwt_rs256_public_key_file = "/nonexistent/key.pem".into();
        check(&s, "auth.jwt_rs256_public_key_file: cannot read /nonexistent/key.pem");
        s.jwt_rs256_public_key_file = write(&dir, "private.pem", RS_PRIVATE);
        check(&s, "holds a private key");
        s.jwt_rs256_public_key_file = write(&dir, "junk.pem", "hello");
        check(&s, "not a PEM public key");
        s.jwt_rs256_public_key_file =
            write(&dir, "broken.pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        check(&s, "not an RSA public key");
        let mut s = settings();
        s.jwt_hs256_secret_file = write(&dir, "short", "tooshort");
        check(&s, "at least 32");
        s.jwt_hs256_secret_file = "/nonexistent/secret".into();
        check(&s, "auth.jwt_hs256_secret_file: cannot read /nonexistent/secret");
    }

    #[test]
    fn api_keys_with_roles_masks_and_checked_scopes() {
        let mut s = settings();
        s.api_keys.push(rapport_config::ApiKeySettings {
            name: "till".into(),
            sha256: hash_token("till-token"),
            roles: vec!["store-till".into()],
            ..Default::default()
        });
        s.api_keys.push(rapport_config::ApiKeySettings {
            name: "crm".into(),
            sha256: hash_token("crm-token"),
            roles: vec!["backend".into()],
            mask: vec!["phone".into()],
            rate_limit_per_second: 50,
            ..Default::default()
        });
        let auth = Authenticator::new("adm", &s, None).unwrap();
        let till = auth.authenticate("till-token").unwrap();
        assert_eq!(till.mask, Mask::EMAIL_AND_PHONE);
        assert!(till.allows_call("/rapport.profile.v1.ProfileService/BatchGetProfiles", "profile:read"));
        assert!(!till.allows_call("/rapport.profile.v1.ProfileService/Subscribe", "profile:read"));
        assert!(!till.allows_call("/rapport.consent.v1.ConsentService/StartExport", "dsr:export"));
        let crm = auth.authenticate("crm-token").unwrap();
        assert_eq!(crm.mask, Mask { email: false, phone: true });
        assert_eq!(crm.rate_limit_per_second, 50);
        assert!(crm.allows_call("/rapport.profile.v1.ProfileService/GetTimeline", "profile:read"));

        let named = |s: &AuthSettings, needle: &str| {
            let err = Authenticator::new("adm", s, None).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle} not in: {err}");
        };
        let mut bad = s.clone();
        bad.api_keys[1].roles = vec!["call-center".into()];
        named(&bad, "auth.api_keys[1].roles: unknown role `call-center`");
        let mut bad = s.clone();
        bad.api_keys[0].scopes = vec!["profile:reed".into()];
        named(&bad, "auth.api_keys[0].scopes: unknown scope `profile:reed`");
        let mut bad = s.clone();
        bad.api_keys[2].sha256 = hash_token("adm");
        named(&bad, "auth.api_keys[2].sha256: the same token is configured twice");
        let mut bad = s.clone();
        bad.api_keys[1].roles.clear();
        named(&bad, "auth.api_keys[1]: grants nothing");
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
            List(Vec<String>),
        }
    }
}
