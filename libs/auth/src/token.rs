use std::{io::Write, path::Path};

use base64::Engine;
use sha2::{Digest, Sha256};

/// The hex SHA-256 of a token: the only form in which API keys are configured or compared.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random bearer token (256 bits, URL-safe).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("rpt_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Reads the admin token from `path`, creating the file (mode 0600) with a new token when it does not
/// exist. Returns the token and whether it was created.
pub fn ensure_admin_token(path: &Path) -> anyhow::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                anyhow::bail!("admin token file {} is empty", path.display());
            }
            Ok((token, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            }
            let token = generate_token();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot create admin token file {}: {e}", path.display()))?;
            writeln!(file, "{token}")?;
            Ok((token, true))
        }
        Err(e) => Err(anyhow::anyhow!("cannot read admin token file {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let (t1, created) = ensure_admin_token(&path).unwrap();
        assert!(created);
        assert!(t1.starts_with("rpt_") && t1.len() > 40);
        let (t2, created) = ensure_admin_token(&path).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
