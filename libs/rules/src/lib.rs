//! The one rule language of Rapport: segments, offer eligibility and campaign triggers are CEL
//! expressions (<https://github.com/google/cel-spec>), compiled once when they are saved and evaluated
//! over JSON documents (`profile`, `event`, `context`, `now`). CEL is not Turing-complete, so a rule
//! always terminates; the source length is limited too.
//!
//! ```
//! use serde_json::json;
//! let rule = rapport_rules::Rule::compile("profile.computed.order_count >= 2 && 'shoes' in profile.interests", &["profile"]).unwrap();
//! let profile = json!({"computed": {"order_count": 3}, "interests": ["shoes", "bags"]});
//! assert!(rule.matches(&[("profile", &profile)]).unwrap());
//! ```

use std::sync::Arc;

use cel::{Context, Program};

/// The longest rule accepted, in bytes.
pub const MAX_RULE_BYTES: usize = 4096;

/// Why a rule was refused or could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// The source does not parse, is too long, or uses a variable that is not offered.
    #[error("{0}")]
    Invalid(String),
    /// Evaluation failed (a missing field, a type mismatch) or did not give a boolean.
    #[error("{0}")]
    Evaluation(String),
}

/// A compiled rule.
#[derive(Clone)]
pub struct Rule {
    source: Arc<str>,
    program: Arc<Program>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Rule").field(&self.source).finish()
    }
}

impl Rule {
    /// Compiles `source`, which may refer only to the variables in `variables`.
    pub fn compile(source: &str, variables: &[&str]) -> Result<Self, RuleError> {
        let trimmed = source.trim();
        if trimmed.is_empty() {
            return Err(RuleError::Invalid("the rule is empty".into()));
        }
        if trimmed.len() > MAX_RULE_BYTES {
            return Err(RuleError::Invalid(format!("the rule is longer than {MAX_RULE_BYTES} bytes")));
        }
        let program = Program::compile(trimmed).map_err(|e| RuleError::Invalid(format!("does not parse: {e}")))?;
        let references = program.references();
        let mut unknown: Vec<&str> = references.variables().into_iter().filter(|v| !variables.contains(v)).collect();
        unknown.sort_unstable();
        if !unknown.is_empty() {
            return Err(RuleError::Invalid(format!(
                "unknown variable(s) {}; a rule may use {}",
                unknown.join(", "),
                variables.join(", ")
            )));
        }
        Ok(Self { source: trimmed.into(), program: Arc::new(program) })
    }

    /// The rule as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the rule with `vars` bound; it must give a boolean. A field missing from the documents
    /// makes the rule false rather than an error, so that rules over optional traits are easy to write.
    pub fn matches(&self, vars: &[(&str, &serde_json::Value)]) -> Result<bool, RuleError> {
        let mut context = Context::default();
        for (name, value) in vars {
            let value = cel::to_value(value).map_err(|e| RuleError::Evaluation(format!("{name}: {e}")))?;
            context.add_variable_from_value(*name, value);
        }
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(RuleError::Evaluation(format!("the rule gave {other:?}, not true or false"))),
            Err(e) if e.to_string().contains("No such key") || e.to_string().contains("Undeclared") => Ok(false),
            Err(e) => Err(RuleError::Evaluation(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_match_over_json() {
        let rule = Rule::compile(
            "profile.computed.total_revenue_minor > 10000 && context.channel == 'email'",
            &["profile", "context"],
        )
        .unwrap();
        let profile = json!({"computed": {"total_revenue_minor": 20000}});
        assert!(rule.matches(&[("profile", &profile), ("context", &json!({"channel": "email"}))]).unwrap());
        assert!(!rule.matches(&[("profile", &profile), ("context", &json!({"channel": "sms"}))]).unwrap());
    }

    #[test]
    fn a_missing_field_is_false_not_an_error() {
        let rule = Rule::compile("profile.traits.city == 'Berlin'", &["profile"]).unwrap();
        assert!(!rule.matches(&[("profile", &json!({"traits": {}}))]).unwrap());
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        assert!(
            matches!(Rule::compile("profile.x ==", &["profile"]), Err(RuleError::Invalid(m)) if m.contains("parse"))
        );
        assert!(
            matches!(Rule::compile("customer.x == 1", &["profile"]), Err(RuleError::Invalid(m)) if m.contains("customer"))
        );
        assert!(matches!(Rule::compile("  ", &["profile"]), Err(RuleError::Invalid(_))));
        let not_bool = Rule::compile("profile.n + 1", &["profile"]).unwrap();
        assert!(matches!(not_bool.matches(&[("profile", &json!({"n": 1}))]), Err(RuleError::Evaluation(_))));
    }
}
