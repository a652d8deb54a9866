//! `rapport token`: mint API keys (the token is printed once; the configuration keeps only its SHA-256),
//! hash an existing token, and print the roles and the scope of every rpc.

use std::collections::BTreeSet;

use clap::Subcommand;
use rapport_auth::{Mask, Roles, generate_token, hash_token, roles::check_scope, scopes_doc};
use rapport_config::Settings;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a new API key: prints the token once and the `[[auth.api_keys]]` entry that holds its hash.
    Create {
        /// The key's name, shown in the audit log and in logs as the caller (e.g. `store-berlin-till-3`).
        #[arg(long)]
        name: String,
        /// A role to grant (repeatable): call-centre, store-till, marketer, backend, privacy-officer, or
        /// one from `[auth.roles]`.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// A scope to grant (repeatable), e.g. `profile:read`.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A contact detail to show only partly in profile reads (repeatable): email, phone.
        #[arg(long = "mask", value_name = "FIELD")]
        mask: Vec<String>,
    },
    /// Print the SHA-256 of a token read from standard input (to configure a token you already have).
    Hash,
    /// Print the built-in roles and the scope every rpc requires (the table in docs/security.md).
    Scopes,
}

/// The configuration entry of a new key.
pub fn api_key_entry(name: &str, hash: &str, roles: &[String], scopes: &[String], mask: &[String]) -> String {
    let list = |items: &[String]| {
        items.iter().map(|i| toml::Value::String(i.clone()).to_string()).collect::<Vec<_>>().join(", ")
    };
    let mut entry = format!("[[auth.api_keys]]\nname = {}\nsha256 = \"{hash}\"\n", toml::Value::String(name.into()));
    if !roles.is_empty() {
        entry.push_str(&format!("roles = [{}]\n", list(roles)));
    }
    if !scopes.is_empty() {
        entry.push_str(&format!("scopes = [{}]\n", list(scopes)));
    }
    if !mask.is_empty() {
        entry.push_str(&format!("mask = [{}]\n", list(mask)));
    }
    entry
}

/// Runs a token command with the loaded configuration (used to refuse a name already configured and to
/// know the configured roles).
pub fn run(command: TokenCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, roles, scopes, mask } => {
            let name = name.trim().to_string();
            if name.is_empty() {
                anyhow::bail!("--name: must not be empty");
            }
            if settings.auth.api_keys.iter().any(|k| k.name == name) {
                anyhow::bail!(
                    "--name: a key named `{name}` is already configured in auth.api_keys; remove its entry to \
                     revoke it, or choose another name"
                );
            }
            if roles.is_empty() && scopes.is_empty() {
                anyhow::bail!("give the key at least one --role or --scope");
            }
            let known = Roles::with_config(&settings.auth.roles)?;
            for role in &roles {
                if known.get(role).is_none() {
                    let names: Vec<_> = known.iter().map(|(n, _)| n).collect();
                    anyhow::bail!("--role: unknown role `{role}`; known: {}", names.join(", "));
                }
            }
            for scope in &scopes {
                check_scope("--scope", scope)?;
            }
            Mask::parse("--mask", &mask)?;
            let roles: Vec<String> = roles.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
            let scopes: Vec<String> = scopes.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
            let token = generate_token();
            println!("token (shown only now; give it to the caller and keep it secret):");
            println!("{token}");
            println!();
            println!("add to the configuration file (it holds only the hash):");
            print!("{}", api_key_entry(&name, &hash_token(&token), &roles, &scopes, &mask));
            Ok(())
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            let token = token.trim();
            if token.is_empty() {
                anyhow::bail!("no token on standard input");
            }
            println!("{}", hash_token(token));
            Ok(())
        }
        TokenCommand::Scopes => {
            println!("{}", scopes_doc::generated_markdown());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_valid_toml_for_the_config() {
        let entry = api_key_entry("till \"3\"", &hash_token("t"), &["store-till".into()], &[], &["email".into()]);
        let parsed: toml::Table = toml::from_str(&entry).unwrap();
        let key = &parsed["auth"]["api_keys"][0];
        assert_eq!(key["name"].as_str(), Some("till \"3\""));
        assert_eq!(key["roles"][0].as_str(), Some("store-till"));
        assert_eq!(key["mask"][0].as_str(), Some("email"));
        assert!(key.get("scopes").is_none());
    }
}
