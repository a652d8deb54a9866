//! JWT verification: HS256 with a shared secret, RS256 with the issuer's RSA public key (PEM), either or
//! both. The algorithm named in a token's header picks the key; a token for an algorithm without a
//! configured key is invalid, so an HS256 token can never be checked against the RSA key or the reverse.

use std::collections::BTreeSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rapport_config::AuthSettings;
use rsa::traits::PublicKeyParts;

use crate::{AuthError, Mask, Principal, Roles};

/// The shortest HS256 secret accepted (RFC 7518 section 3.2: at least the hash output, 256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The verification keys read from the files named in `[auth]`.
#[derive(Default)]
pub(crate) struct JwtKeys {
    pub hs256: Option<Vec<u8>>,
    pub rs256: Option<rsa::RsaPublicKey>,
}

impl JwtKeys {
    /// Reads both key files; each problem names its setting and file.
    pub fn load(settings: &AuthSettings) -> anyhow::Result<Self> {
        let mut keys = Self::load_rs256(settings)?;
        let key = "auth.jwt_hs256_secret_file";
        let path = settings.jwt_hs256_secret_file.trim();
        if !path.is_empty() {
            let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("{key}: cannot read {path}: {e}"))?;
            let secret = text.trim_ascii().to_vec();
            if secret.len() < MIN_HS256_SECRET_BYTES {
                anyhow::bail!(
                    "{key}: {path} holds {} bytes; an HS256 secret needs at least {MIN_HS256_SECRET_BYTES}",
                    secret.len()
                );
            }
            keys.hs256 = Some(secret);
        }
        Ok(keys)
    }

    /// Reads the RS256 public key file, if one is configured.
    pub fn load_rs256(settings: &AuthSettings) -> anyhow::Result<Self> {
        let key = "auth.jwt_rs256_public_key_file";
        let path = settings.jwt_rs256_public_key_file.trim();
        if path.is_empty() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{key}: cannot read {path}: {e}"))?;
        Ok(Self {
            hs256: None,
            rs256: Some(parse_rsa_public_key(&text).map_err(|e| anyhow::anyhow!("{key}: {path}: {e}"))?),
        })
    }
}

/// An RSA public key from PEM: `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo) or `BEGIN RSA PUBLIC KEY`
/// (PKCS#1). A private key or a certificate is refused with a message saying so.
pub fn parse_rsa_public_key(pem: &str) -> Result<rsa::RsaPublicKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    let pem = pem.trim();
    if pem.contains("PRIVATE KEY-----") {
        return Err("holds a private key; configure the issuer's public key only".into());
    }
    if pem.contains("BEGIN CERTIFICATE") {
        return Err("holds a certificate; configure the public key (openssl x509 -pubkey -noout -in CERT)".into());
    }
    let key = if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        rsa::RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("not a PKCS#1 RSA public key: {e}"))?
    } else if pem.starts_with("-----BEGIN PUBLIC KEY-----") {
        rsa::RsaPublicKey::from_public_key_pem(pem).map_err(|e| format!("not an RSA public key in PEM: {e}"))?
    } else {
        return Err("not a PEM public key (expected -----BEGIN PUBLIC KEY-----)".into());
    };
    if key.size() < 256 {
        return Err(format!("an RSA key of {} bits is too short; 2048 bits at least", key.size() * 8));
    }
    Ok(key)
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    mask: Vec<String>,
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies JWTs with the configured keys, issuer, audience and leeway.
pub(crate) struct JwtVerifier {
    hs256: Option<Verifier>,
    rs256: Option<Verifier>,
    roles: Roles,
}

impl JwtVerifier {
    pub fn new(settings: &AuthSettings, keys: JwtKeys, roles: Roles) -> anyhow::Result<Self> {
        if (keys.hs256.is_some() || keys.rs256.is_some())
            && (settings.jwt_issuer.trim().is_empty() || settings.jwt_audience.trim().is_empty())
        {
            anyhow::bail!("auth.jwt_issuer and auth.jwt_audience: both are required when JWTs are accepted");
        }
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[settings.jwt_issuer.as_str()]);
            v.set_audience(&[settings.jwt_audience.as_str()]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.leeway = settings.jwt_leeway_seconds;
            v.validate_nbf = true;
            v
        };
        let hs256 = keys.hs256.map(|secret| Verifier {
            key: DecodingKey::from_secret(&secret),
            validation: validation(Algorithm::HS256),
        });
        let rs256 = keys.rs256.map(|k| Verifier {
            key: DecodingKey::from_rsa_raw_components(&k.n().to_bytes_be(), &k.e().to_bytes_be()),
            validation: validation(Algorithm::RS256),
        });
        Ok(Self { hs256, rs256, roles })
    }

    /// The algorithms accepted, for diagnostics.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.hs256.is_some() {
            v.push("HS256");
        }
        if self.rs256.is_some() {
            v.push("RS256");
        }
        v
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let verifier = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or(AuthError::Invalid)?;
        let claims = match jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation) {
            Ok(data) => data.claims,
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                return Err(AuthError::Expired);
            }
            Err(_) => return Err(AuthError::Invalid),
        };
        if claims.sub.trim().is_empty() {
            return Err(AuthError::Invalid);
        }
        let mut scopes: BTreeSet<String> =
            claims.scope.split_whitespace().map(str::to_string).chain(claims.scopes).collect();
        // A mask the issuer asked for and Rapport does not know would show data the issuer meant to hide:
        // such a token is refused rather than served unmasked.
        let mut mask = Mask::parse("mask", &claims.mask).map_err(|_| AuthError::Invalid)?;
        for name in &claims.roles {
            match self.roles.get(name) {
                Some(role) => {
                    scopes.extend(role.scopes.iter().cloned());
                    mask = mask.union(role.mask);
                }
                None => tracing::debug!(role = %name, "jwt names an unknown role; ignored"),
            }
        }
        let mut principal = Principal::new(format!("jwt:{}", claims.sub), scopes);
        principal.mask = principal.mask.union(mask);
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"a secret of thirty-two bytes or more, for tests";

    fn verifier() -> JwtVerifier {
        let settings = AuthSettings {
            jwt_issuer: "https://idp.example".into(),
            jwt_audience: "rapport".into(),
            ..Default::default()
        };
        let keys = JwtKeys { hs256: Some(SECRET.to_vec()), rs256: None };
        JwtVerifier::new(&settings, keys, Roles::built_in()).unwrap()
    }

    fn token(claims: &serde_json::Value, secret: &[u8]) -> String {
        let header = jsonwebtoken::Header::new(Algorithm::HS256);
        jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any bearer text is refused or accepted, never a panic; only a token signed with the key, for the
        /// configured issuer and audience, unexpired and naming a subject, is accepted, with its scopes.
        #[test]
        fn only_well_made_tokens_are_accepted(
            junk in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{1,40}\\.[A-Za-z0-9_-]{1,60}\\.[A-Za-z0-9_-]{0,43}"],
            sub in "[a-z0-9-]{1,20}", scope in "(profile:read|consent:write| ){0,4}",
            iss_ok in any::<bool>(), aud_ok in any::<bool>(), expired in any::<bool>(), right_key in any::<bool>(),
        ) {
            let v = verifier();
            prop_assert!(v.verify(&junk).is_err());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
            let claims = serde_json::json!({
                "sub": sub, "scope": scope,
                "iss": if iss_ok { "https://idp.example" } else { "https://evil.example" },
                "aud": if aud_ok { "rapport" } else { "someone-else" },
                "exp": if expired { now - 3_600 } else { now + 3_600 },
            });
            let t = token(&claims, if right_key { SECRET } else { b"another secret of thirty-two bytes or more" });
            let answer = v.verify(&t);
            if iss_ok && aud_ok && !expired && right_key {
                let p = answer.unwrap();
                for s in scope.split_whitespace() {
                    prop_assert!(p.allows(s), "{}", s);
                }
            } else {
                prop_assert!(answer.is_err());
            }
            // A token changed after signing is refused.
            let mut altered = t.clone().into_bytes();
            let i = altered.len() - 10;
            altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            prop_assert!(v.verify(&altered).is_err());
        }
    }
}
