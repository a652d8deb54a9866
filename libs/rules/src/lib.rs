//! The one rule language of Rapport: segments, offer eligibility and campaign triggers are CEL
//! expressions (<https://github.com/google/cel-spec>), compiled once when they are saved and evaluated
//! over JSON documents (`profile`, `event`, `context`, `now`).
//!
//! A rule's cost is bounded: CEL is not Turing-complete (no loops, no recursion), the source is at most
//! [`MAX_RULE_BYTES`], comprehensions (`all`, `exists`, `map`, `filter`) nest at most
//! [`MAX_COMPREHENSION_DEPTH`] deep, and the documents are bounded by the services that build them. An
//! evaluation that fails (or would panic inside the interpreter) is an [`RuleError::Evaluation`], never a
//! crash of the caller.
//!
//! ```
//! use serde_json::json;
//! let rule = rapport_rules::Rule::compile("profile.computed.order_count >= 2 && 'shoes' in profile.interests", &["profile"]).unwrap();
//! let profile = json!({"computed": {"order_count": 3}, "interests": ["shoes", "bags"]});
//! assert!(rule.matches(&[("profile", &profile)]).unwrap());
//! ```

use std::sync::{Arc, LazyLock};

use cel::{Context, Env, Program};

mod shape;
pub use shape::Shape;

/// The longest rule accepted, in bytes.
pub const MAX_RULE_BYTES: usize = 4096;

/// How deeply comprehensions may nest (each level multiplies the work by a list's length).
pub const MAX_COMPREHENSION_DEPTH: usize = 2;

/// Why a rule was refused or could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// The source does not parse, is too long, uses a variable that is not offered or a field its
    /// document does not have; the message gives the position (`line:column`).
    #[error("{0}")]
    Invalid(String),
    /// Evaluation failed (a missing field, a type mismatch) or did not give a boolean.
    #[error("{0}")]
    Evaluation(String),
}

/// The standard CEL environment, built once per process.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

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

/// Documents bound once and shared by the evaluation of many rules (every offer of a decision sees the
/// same profile and context), so they are converted to CEL values once.
pub struct Bindings {
    context: Context<'static, 'static>,
}

/// A JSON document as a CEL value. Whole numbers are `int` whenever they fit (as CEL literals are), so
/// `profile.computed.order_count + 1` and arithmetic between fields of either sign work; only numbers
/// beyond i64 are `uint`.
fn cel_value(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(Arc::new(s.clone())),
        J::Array(items) => cel::Value::List(Arc::new(items.iter().map(cel_value).collect())),
        J::Object(fields) => cel::Value::Map(cel::objects::Map {
            map: Arc::new(
                fields.iter().map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), cel_value(v))).collect(),
            ),
        }),
    }
}

impl Bindings {
    /// Binds each `(name, document)`.
    pub fn new(vars: &[(&str, &serde_json::Value)]) -> Result<Self, RuleError> {
        let mut context = Context::with_env(ENV.clone());
        for (name, value) in vars {
            context.add_variable_from_value(*name, cel_value(value));
        }
        Ok(Self { context })
    }
}

impl Rule {
    /// Compiles `source`, which may refer only to the variables in `variables`.
    pub fn compile(source: &str, variables: &[&str]) -> Result<Self, RuleError> {
        let shapes: Vec<(&str, &Shape)> = variables.iter().map(|v| (*v, &Shape::Open)).collect();
        Self::compile_with_shapes(source, &shapes)
    }

    /// Compiles `source` over documents of known shapes: a variable not listed, or a field that its
    /// document's shape does not have, is refused with its position.
    pub fn compile_with_shapes(source: &str, shapes: &[(&str, &Shape)]) -> Result<Self, RuleError> {
        let trimmed = source.trim();
        if trimmed.is_empty() {
            return Err(RuleError::Invalid("the rule is empty".into()));
        }
        if trimmed.len() > MAX_RULE_BYTES {
            return Err(RuleError::Invalid(format!("the rule is longer than {MAX_RULE_BYTES} bytes")));
        }
        let program = Program::compile(trimmed).map_err(|e| {
            let first = e.errors.first();
            match first {
                Some(p) => {
                    RuleError::Invalid(format!("does not parse at {}:{}: {}", p.pos.0.max(1), p.pos.1 + 1, p.msg))
                }
                None => RuleError::Invalid(format!("does not parse: {e}")),
            }
        })?;
        let variables: Vec<&str> = shapes.iter().map(|(n, _)| *n).collect();
        // Comprehension variables (`items.all(i, ...)`) are bound by the rule itself.
        let mut unknown: Vec<String> = shape::free_variables(program.expression())
            .into_iter()
            .filter(|v| !variables.contains(&v.as_str()))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            return Err(RuleError::Invalid(format!(
                "unknown variable(s) {}; a rule may use {}",
                unknown.join(", "),
                variables.join(", ")
            )));
        }
        if let Some(u) = shape::check(&program, trimmed, shapes) {
            let known = if u.known.is_empty() {
                format!("{} has no fields", u.parent)
            } else {
                format!("{} has {}", u.parent, u.known)
            };
            return Err(RuleError::Invalid(format!("unknown field `{}` at {}:{} ({known})", u.path, u.line, u.column)));
        }
        let depth = shape::comprehension_depth(program.expression());
        if depth > MAX_COMPREHENSION_DEPTH {
            return Err(RuleError::Invalid(format!(
                "comprehensions nest {depth} deep; at most {MAX_COMPREHENSION_DEPTH} are allowed"
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
        self.matches_in(&Bindings::new(vars)?)
    }

    /// Evaluates the rule over documents bound once (see [`Bindings`]).
    pub fn matches_in(&self, bindings: &Bindings) -> Result<bool, RuleError> {
        let program = &self.program;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(&bindings.context)));
        match run {
            Err(_) => Err(RuleError::Evaluation("the rule could not be evaluated (interpreter failure)".into())),
            Ok(Ok(cel::Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(RuleError::Evaluation(format!("the rule gave {other:?}, not true or false"))),
            Ok(Err(e)) if e.to_string().contains("No such key") || e.to_string().contains("Undeclared") => Ok(false),
            Ok(Err(e)) => Err(RuleError::Evaluation(e.to_string())),
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

    #[test]
    fn parse_errors_give_the_position() {
        let err = Rule::compile("profile.a == 1 &&\n  profile.b ==", &["profile"]).unwrap_err();
        assert!(matches!(&err, RuleError::Invalid(m) if m.contains("at 2:")), "{err}");
    }

    fn profile_shape() -> Shape {
        Shape::fields([
            ("traits", Shape::Open),
            ("computed", Shape::leaves(&["order_count", "high_value"])),
            ("customer_id", Shape::Leaf),
        ])
    }

    #[test]
    fn unknown_fields_are_refused_with_their_position() {
        let shape = profile_shape();
        let open = Shape::Open;
        let shapes = [("profile", &shape), ("context", &open)];
        let err = Rule::compile_with_shapes("profile.traits.city == 'x' && profile.computed.ordr_count > 1", &shapes)
            .unwrap_err();
        let RuleError::Invalid(m) = err else { panic!("not invalid") };
        assert!(m.contains("`profile.computed.ordr_count`"), "{m}");
        assert!(m.contains("1:"), "{m}");
        assert!(m.contains("order_count"), "names the known fields: {m}");
        let err = Rule::compile_with_shapes("profile.customer_id.x == 1", &shapes).unwrap_err();
        assert!(matches!(&err, RuleError::Invalid(m) if m.contains("has no fields")), "{err}");
        // Free documents, has(), comprehension variables and indexes are accepted.
        for ok in [
            "context.page.anything == 'home'",
            "has(profile.traits.city)",
            "profile.computed.high_value && [1, 2].exists(computed, computed > 1)",
            "profile.traits['time_zone'] == 'UTC'",
        ] {
            Rule::compile_with_shapes(ok, &shapes).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn nesting_of_comprehensions_is_bounded() {
        let deep = "[1].all(a, [2].all(b, [3].all(c, a + b + c > 0)))";
        assert!(matches!(Rule::compile(deep, &["profile"]), Err(RuleError::Invalid(m)) if m.contains("nest")));
        assert!(Rule::compile("[1].all(a, [2].all(b, a + b > 0))", &["profile"]).is_ok());
    }

    #[test]
    fn bindings_are_shared_by_many_rules() {
        let p = json!({"computed": {"order_count": 3}});
        let bindings = Bindings::new(&[("profile", &p)]).unwrap();
        let a = Rule::compile("profile.computed.order_count > 2", &["profile"]).unwrap();
        let b = Rule::compile("profile.computed.order_count > 5", &["profile"]).unwrap();
        assert!(a.matches_in(&bindings).unwrap());
        assert!(!b.matches_in(&bindings).unwrap());
        let bad = Rule::compile("profile.computed.order_count / 0 > 1", &["profile"]).unwrap();
        assert!(matches!(bad.matches_in(&bindings), Err(RuleError::Evaluation(_))));
    }
}
