//! Templates: minijinja, sandboxed (no file system, no imports of other templates, a fuel limit on every
//! rendering, the default recursion limit), with strict undefined variables, so a missing variable fails
//! the message instead of sending a blank. HTML parts are auto-escaped. Locales fall back from "de-AT" to
//! "de" (and to any "de-*"), then to the template's default locale.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use rapport_proto::delivery::v1::LocalizedContent;

use super::sms;

/// The parts of a message body.
pub const PARTS: [&str; 3] = ["subject", "html", "text"];

/// A rendered message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
    pub locale: String,
}

impl Rendered {
    /// The SMS length of the text part.
    pub fn sms(&self) -> sms::SmsLength {
        sms::measure(&self.text)
    }
}

fn part<'a>(c: &'a LocalizedContent, name: &str) -> &'a str {
    match name {
        "subject" => &c.subject,
        "html" => &c.html,
        _ => &c.text,
    }
}

/// A template compiled for rendering: one minijinja environment with a template per locale and part.
pub struct Compiled {
    env: Environment<'static>,
    variables: Vec<String>,
    locales: Vec<LocalizedContent>,
    default_locale: String,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("locales", &self.locales.len()).finish_non_exhaustive()
    }
}

fn environment(fuel: u64) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(fuel));
    env.set_auto_escape_callback(|name| if name.ends_with("/html") { AutoEscape::Html } else { AutoEscape::None });
    env
}

/// Where a syntax error is: "line 3, column 7".
fn position(source: &str, e: &minijinja::Error) -> String {
    match (e.line(), e.range()) {
        (_, Some(r)) => {
            let before = &source[..r.start.min(source.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        }
        (Some(line), None) => format!("line {line}"),
        _ => "unknown position".into(),
    }
}

/// Why a template is refused when saved: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

impl Compiled {
    /// Compiles every part of every locale, naming the first broken one as
    /// `locales[i].html: syntax error: ... at line 3, column 7`.
    pub fn new(locales: &[LocalizedContent], default_locale: &str, fuel: u64) -> Result<Self, Invalid> {
        let mut env = environment(fuel);
        for (i, c) in locales.iter().enumerate() {
            for name in PARTS {
                let source = part(c, name);
                if source.is_empty() {
                    continue;
                }
                let key = format!("{i}/{name}");
                env.add_template_owned(key, source.to_string()).map_err(|e| Invalid {
                    field: format!("locales[{i}].{name}"),
                    problem: format!(
                        "{}: {} at {}",
                        e.kind(),
                        e.detail().unwrap_or("cannot be parsed"),
                        position(source, &e)
                    ),
                })?;
            }
        }
        let mut variables = std::collections::BTreeSet::new();
        for (_, t) in env.templates() {
            variables.extend(t.undeclared_variables(false));
        }
        let variables = variables.into_iter().collect();
        Ok(Self { env, variables, locales: locales.to_vec(), default_locale: default_locale.to_string() })
    }

    /// The variables the template reads at top level (e.g. `profile`, `offer`, `coupon`).
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// The index of the locale that serves `requested`: exact, then its language, then any locale of
    /// that language, then the default locale, then the first.
    pub fn choose(&self, requested: &str) -> Option<usize> {
        choose_locale(&self.locales, requested, &self.default_locale)
    }

    /// Renders the locale serving `requested` with `context`. A missing variable, a type error or a
    /// template that runs out of fuel fails with the part and the reason.
    pub fn render(&self, requested: &str, context: &serde_json::Value) -> Result<Rendered, Invalid> {
        let i = self
            .choose(requested)
            .ok_or_else(|| Invalid { field: "template".into(), problem: "has no content in any locale".into() })?;
        let ctx = minijinja::Value::from(minijinja::value::Serde(context));
        let mut out = Rendered { locale: self.locales[i].locale.clone(), ..Default::default() };
        for name in PARTS {
            if part(&self.locales[i], name).is_empty() {
                continue;
            }
            let t = self
                .env
                .get_template(&format!("{i}/{name}"))
                .map_err(|e| Invalid { field: name.into(), problem: e.to_string() })?;
            let text = t.render(&ctx).map_err(|e| Invalid {
                field: name.into(),
                problem: match (e.kind(), e.line()) {
                    (minijinja::ErrorKind::UndefinedError, Some(line)) => {
                        format!("undefined variable at line {line} (strict: every variable must be given)")
                    }
                    (_, Some(line)) => format!("{}: {} at line {line}", e.kind(), e.detail().unwrap_or_default()),
                    _ => e.to_string(),
                },
            })?;
            match name {
                "subject" => out.subject = text.trim().to_string(),
                "html" => out.html = text,
                _ => out.text = text,
            }
        }
        Ok(out)
    }
}

/// The locale of `locales` serving `requested` (BCP 47, case-insensitive).
pub fn choose_locale(locales: &[LocalizedContent], requested: &str, default_locale: &str) -> Option<usize> {
    let norm = |s: &str| s.trim().replace('_', "-").to_ascii_lowercase();
    let lang = |s: &str| norm(s).split('-').next().unwrap_or_default().to_string();
    let req = norm(requested);
    let by = |pred: &dyn Fn(&LocalizedContent) -> bool| locales.iter().position(pred);
    if !req.is_empty() {
        let req_lang = lang(&req);
        if let Some(i) = by(&|c| norm(&c.locale) == req)
            .or_else(|| by(&|c| norm(&c.locale) == req_lang))
            .or_else(|| by(&|c| lang(&c.locale) == req_lang))
        {
            return Some(i);
        }
    }
    by(&|c| norm(&c.locale) == norm(default_locale)).or(if locales.is_empty() { None } else { Some(0) })
}

/// A BCP 47 tag as accepted in requests: letters, digits and `-`, 2 to 35 characters.
pub fn is_locale(s: &str) -> bool {
    (2..=35).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// Compiled templates by id and version, shared by the workers.
#[derive(Default)]
pub struct CompiledCache {
    entries: std::sync::Mutex<BTreeMap<(String, i64), Arc<Compiled>>>,
}

impl CompiledCache {
    /// The compiled template, compiling and keeping it on first use (versions never change).
    pub fn get_or_compile(
        &self,
        id: &str,
        version: i64,
        compile: impl FnOnce() -> Result<Compiled, Invalid>,
    ) -> Result<Arc<Compiled>, Invalid> {
        let key = (id.to_string(), version);
        if let Some(c) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let compiled = Arc::new(compile()?);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(key, compiled.clone());
        Ok(compiled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(locale: &str, subject: &str, html: &str, text: &str) -> LocalizedContent {
        LocalizedContent { locale: locale.into(), subject: subject.into(), html: html.into(), text: text.into() }
    }

    #[test]
    fn renders_with_strict_variables_and_escaped_html() {
        let c = Compiled::new(
            &[content("en", "Hi {{ profile.first_name }}", "<p>{{ profile.first_name }}</p>", "{{ offer.title }}")],
            "en",
            10_000,
        )
        .unwrap();
        let r = c.render("en", &json!({"profile": {"first_name": "<Ann>"}, "offer": {"title": "10% off"}})).unwrap();
        assert_eq!(r.subject, "Hi <Ann>");
        assert_eq!(r.html, "<p>&lt;Ann&gt;</p>");
        assert_eq!(r.text, "10% off");
        let err = c.render("en", &json!({"profile": {}, "offer": {"title": "x"}})).unwrap_err();
        assert_eq!(err.field, "subject");
        assert!(err.problem.contains("undefined"), "{}", err.problem);
        let mut vars = c.variables().to_vec();
        vars.sort();
        assert_eq!(vars, vec!["offer".to_string(), "profile".to_string()]);
    }

    #[test]
    fn syntax_errors_name_the_field_and_position() {
        let err = Compiled::new(
            &[content("en", "ok", "", "line one\nHello {{ name }"), content("de", "", "", "")],
            "en",
            10_000,
        )
        .unwrap_err();
        assert_eq!(err.field, "locales[0].text");
        assert!(err.problem.contains("line 2"), "{}", err.problem);
    }

    #[test]
    fn endless_templates_run_out_of_fuel() {
        let c = Compiled::new(
            &[content("en", "", "", "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}")],
            "en",
            10_000,
        )
        .unwrap();
        let err = c.render("en", &json!({})).unwrap_err();
        assert!(err.problem.to_lowercase().contains("fuel"), "{}", err.problem);
    }

    #[test]
    fn locales_fall_back() {
        let ls = [content("en", "", "", "en"), content("de", "", "", "de"), content("fr-CA", "", "", "fr")];
        assert_eq!(choose_locale(&ls, "de-AT", "en"), Some(1));
        assert_eq!(choose_locale(&ls, "DE", "en"), Some(1));
        assert_eq!(choose_locale(&ls, "fr-FR", "en"), Some(2));
        assert_eq!(choose_locale(&ls, "it", "en"), Some(0));
        assert_eq!(choose_locale(&ls, "", "de"), Some(1));
        assert_eq!(choose_locale(&[], "en", "en"), None);
    }
}
