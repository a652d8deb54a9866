//! Named scope bundles (roles) that API keys and JWTs can be given instead of lists of scopes, and the
//! check that every configured scope exists in the contracts.

use std::collections::{BTreeMap, BTreeSet};

use rapport_config::RoleSettings;

use crate::{ADMIN_SCOPE, AUTHENTICATED_SCOPE, Mask, PROFILE_READ_MASKED_SCOPE};

/// A role: the scopes it grants and the fields it sees only partly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// What the role is for, shown by `rapport token roles` and in docs/security.md.
    pub description: String,
    pub scopes: BTreeSet<String>,
    pub mask: Mask,
}

/// The roles Rapport defines. `[auth.roles.NAME]` adds more or replaces one of these.
pub const BUILT_IN_ROLES: &[(&str, &str, &[&str])] = &[
    (
        "call-centre",
        "agents who look a caller up, see what they allowed and the offer to make, and record what happened; \
         no export, erasure, or offer, segment or template admin",
        &[
            "profile:read",
            "profile:write",
            "identity:read",
            "consent:read",
            "consent:write",
            "decision:decide",
            "decision:outcome",
            "delivery:agent",
        ],
    ),
    (
        "store-till",
        "tills and store systems: profiles with email and phone shown partly, purchases and consent at the till, \
         the offer to make",
        &[
            PROFILE_READ_MASKED_SCOPE,
            "profile:write",
            "consent:read",
            "consent:write",
            "decision:decide",
            "decision:outcome",
        ],
    ),
    (
        "marketer",
        "marketers and analysts: offers, campaigns, experiments, segments, templates and reports; profiles \
         with email and phone shown partly",
        &[
            PROFILE_READ_MASKED_SCOPE,
            "profile:admin",
            "consent:read",
            "decision:admin",
            "decision:decide",
            "decision:report",
            "delivery:admin",
        ],
    ),
    (
        "backend",
        "web shop, app, CRM and order systems: ingest, identity, consent, decisions and sends",
        &[
            "profile:read",
            "profile:write",
            "identity:read",
            "identity:write",
            "consent:read",
            "consent:write",
            "decision:decide",
            "decision:outcome",
            "delivery:read",
            "delivery:send",
        ],
    ),
    (
        "privacy-officer",
        "data-subject requests (export, erasure), suppressions and the audit log",
        &["profile:read", "identity:read", "consent:read", "consent:admin", "dsr:export", "dsr:erase", "audit:read"],
    ),
];

/// Every scope a token can usefully hold: those the contracts require, `admin`, and the masked read.
pub fn known_scopes() -> BTreeSet<&'static str> {
    let mut known: BTreeSet<&'static str> = rapport_proto::METHOD_SCOPES.iter().map(|(_, s)| *s).collect();
    known.remove(AUTHENTICATED_SCOPE);
    known.insert(ADMIN_SCOPE);
    known.insert(PROFILE_READ_MASKED_SCOPE);
    known
}

/// Checks that `scope` exists; `key` names the configuration entry in the error.
pub fn check_scope(key: &str, scope: &str) -> anyhow::Result<()> {
    if known_scopes().contains(scope) {
        return Ok(());
    }
    anyhow::bail!(
        "{key}: unknown scope `{scope}`; known: {}",
        known_scopes().into_iter().collect::<Vec<_>>().join(", ")
    )
}

/// The roles in force: the built-in ones, with `[auth.roles]` added or replacing.
#[derive(Debug, Clone)]
pub struct Roles {
    roles: BTreeMap<String, Role>,
}

impl Roles {
    /// The built-in roles only.
    pub fn built_in() -> Self {
        let roles = BUILT_IN_ROLES
            .iter()
            .map(|(name, description, scopes)| {
                let scopes: BTreeSet<String> = scopes.iter().map(|s| s.to_string()).collect();
                (
                    name.to_string(),
                    Role { description: description.to_string(), mask: Mask::implied_by(&scopes), scopes },
                )
            })
            .collect();
        Self { roles }
    }

    /// The built-in roles with `configured` (`[auth.roles]`) over them; an unknown scope or mask field is
    /// an error naming the role.
    pub fn with_config(configured: &BTreeMap<String, RoleSettings>) -> anyhow::Result<Self> {
        let mut roles = Self::built_in();
        for (name, role) in configured {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                anyhow::bail!("auth.roles.{name}: a role name is letters, digits, `-` or `_`");
            }
            for scope in &role.scopes {
                check_scope(&format!("auth.roles.{name}.scopes"), scope)?;
            }
            let scopes: BTreeSet<String> = role.scopes.iter().cloned().collect();
            let mask = Mask::implied_by(&scopes).union(Mask::parse(&format!("auth.roles.{name}.mask"), &role.mask)?);
            roles.roles.insert(name.clone(), Role { description: "configured in [auth.roles]".into(), scopes, mask });
        }
        Ok(roles)
    }

    /// The role called `name`.
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every role by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Role)> {
        self.roles.iter().map(|(n, r)| (n.as_str(), r))
    }

    /// The names of the roles that may call an rpc requiring `scope` at `path`.
    pub fn allowed_for(&self, path: &str, scope: &str) -> Vec<&str> {
        self.iter().filter(|(_, r)| crate::grants(&r.scopes, path, scope)).map(|(n, _)| n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roles_use_only_known_scopes() {
        for (name, _, scopes) in BUILT_IN_ROLES {
            for scope in *scopes {
                check_scope(name, scope).unwrap();
            }
        }
    }

    #[test]
    fn the_call_centre_may_not_export_erase_or_define_offers() {
        let roles = Roles::built_in();
        let cc = roles.get("call-centre").unwrap();
        for forbidden in ["dsr:export", "dsr:erase", "decision:admin", "profile:admin", "delivery:admin", ADMIN_SCOPE] {
            assert!(!cc.scopes.contains(forbidden), "{forbidden}");
        }
        for needed in ["profile:read", "consent:write", "decision:outcome"] {
            assert!(cc.scopes.contains(needed), "{needed}");
        }
        assert_eq!(cc.mask, Mask::NONE);
        assert_eq!(roles.get("store-till").unwrap().mask, Mask::EMAIL_AND_PHONE);
    }

    #[test]
    fn configured_roles_are_checked() {
        let mut configured = BTreeMap::new();
        configured.insert("auditor".to_string(), RoleSettings { scopes: vec!["audit:read".into()], mask: vec![] });
        let roles = Roles::with_config(&configured).unwrap();
        assert!(roles.get("auditor").unwrap().scopes.contains("audit:read"));
        assert!(roles.get("call-centre").is_some());

        configured.insert("typo".to_string(), RoleSettings { scopes: vec!["profile:raed".into()], mask: vec![] });
        let err = Roles::with_config(&configured).unwrap_err().to_string();
        assert!(err.contains("auth.roles.typo.scopes") && err.contains("profile:raed"), "{err}");

        configured.remove("typo");
        configured.insert("m".to_string(), RoleSettings { scopes: vec![], mask: vec!["iban".into()] });
        let err = Roles::with_config(&configured).unwrap_err().to_string();
        assert!(err.contains("auth.roles.m.mask") && err.contains("iban"), "{err}");
    }
}
