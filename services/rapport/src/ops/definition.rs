//! Definition files (offers, campaigns) in TOML or JSON, read into the decision service's definition types
//! (`rapport_decision::campaigns::definition`). Every error names the file, the line where it can be
//! found, and the field: a syntax error or an unknown key by the parser's position, a bad value (a check
//! of the decision crate, or the server's INVALID_ARGUMENT, whose message starts with the field) by finding
//! the field's key in the file.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde::de::DeserializeOwned;

/// `put --file F [--json]`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The definition (TOML, or JSON for a `.json` file); the format is in the command's `--help`.
    #[arg(long)]
    pub file: PathBuf,
    /// Print what was saved as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A definition file's text and how to read it.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    /// JSON (a `.json` name or text starting with `{`); TOML otherwise.
    pub json: bool,
}

impl Source {
    /// Reads `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let json =
            path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) || text.trim_start().starts_with('{');
        Ok(Self { path: path.to_path_buf(), text, json })
    }

    /// The file parsed as `T`; a syntax error, an unknown key or a value of the wrong type names the line.
    pub fn parse<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        let file = self.path.display();
        if self.json {
            return serde_json::from_str(&self.text).map_err(|e| {
                let full = e.to_string();
                let message = full.rsplit_once(" at line ").map_or(full.as_str(), |(m, _)| m);
                anyhow::anyhow!("{file}:{}:{}: {message}", e.line(), e.column())
            });
        }
        toml::from_str(&self.text).map_err(|e| match e.span() {
            Some(span) => {
                let line = self.text[..span.start.min(self.text.len())].matches('\n').count() + 1;
                anyhow::anyhow!("{file}:{line}: {}", e.message().trim())
            }
            None => anyhow::anyhow!("{file}: {}", e.message().trim()),
        })
    }

    /// A problem with `field` (by the file's keys: `offers[1].placements[0]`) as one line:
    /// `FILE:LINE: FIELD: PROBLEM` (without the line when the key is not found).
    pub fn error(&self, field: &str, problem: &str) -> anyhow::Error {
        let file = self.path.display();
        match self.line_of(field) {
            Some(line) => anyhow::anyhow!("{file}:{line}: {field}: {problem}"),
            None => anyhow::anyhow!("{file}: {field}: {problem}"),
        }
    }

    /// A `field: problem` message (a service's INVALID_ARGUMENT, a check of the decision crate) as
    /// [`Source::error`].
    pub fn refusal(&self, message: &str) -> anyhow::Error {
        match message.split_once(": ") {
            Some((field, problem)) if !field.contains(' ') => self.error(field, problem),
            _ => anyhow::anyhow!("{}: {message}", self.path.display()),
        }
    }

    /// The line (1-based) where `field` (`offers[1].placements[0]`, `campaign.trigger_rule`) is written.
    pub fn line_of(&self, field: &str) -> Option<usize> {
        let lines: Vec<&str> = self.text.lines().collect();
        let segments: Vec<(&str, Option<usize>)> = field
            .split('.')
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('[') {
                Some((name, index)) => (name, index.trim_end_matches(']').parse().ok()),
                None => (s, None),
            })
            .collect();
        let mut at = 0;
        let mut found = None;
        for (k, (name, index)) in segments.iter().enumerate() {
            let Some(line) = (at..lines.len()).find(|&l| self.mentions(lines[l], name)) else {
                break;
            };
            at = line;
            found = Some(line);
            // The element of an array: the (index+1)-th `[[name]]` header, or else the (index+1)-th
            // occurrence of the next key.
            if let Some(i) = *index {
                let headers: Vec<usize> = (at..lines.len()).filter(|&l| is_header(lines[l], name, true)).collect();
                let starts: Vec<usize> = match (headers.is_empty(), segments.get(k + 1)) {
                    (false, _) => headers,
                    (true, Some((next, _))) => (at..lines.len()).filter(|&l| self.mentions(lines[l], next)).collect(),
                    (true, None) => Vec::new(),
                };
                if let Some(&l) = starts.get(i) {
                    at = l;
                    found = Some(l);
                }
            }
        }
        found.map(|l| l + 1)
    }

    /// Whether `line` writes the key `name` (or opens its table).
    fn mentions(&self, line: &str, name: &str) -> bool {
        if self.json {
            let quoted = format!("\"{name}\"");
            return line.match_indices(&quoted).any(|(i, _)| line[i + quoted.len()..].trim_start().starts_with(':'));
        }
        if line.trim_start().starts_with('#') {
            return false;
        }
        is_header(line, name, false)
            || line.match_indices(name).any(|(i, _)| {
                let before = line[..i].chars().next_back();
                let boundary = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
                boundary && line[i + name.len()..].trim_start().trim_start_matches('"').trim_start().starts_with('=')
            })
    }
}

/// `[name]` / `[a.name]`, or `[[name]]` when `array`.
fn is_header(line: &str, name: &str, array: bool) -> bool {
    let t = line.trim();
    let inner = if array {
        t.strip_prefix("[[").and_then(|t| t.strip_suffix("]]"))
    } else {
        t.strip_prefix('[').and_then(|t| t.strip_suffix(']')).map(|t| t.trim_start_matches('[').trim_end_matches(']'))
    };
    inner.is_some_and(|i| i.trim().rsplit('.').next() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Source {
        Source { path: "f.toml".into(), text: text.into(), json: false }
    }

    #[test]
    fn fields_are_found_on_their_line() {
        let s = toml(
            "# an offer\nname = \"a\"\nplacements = [\"email\"]\n[[content]]\nchannel = \"email\"\n\
             [[content]]\nchannel = \"sms\"\ntemplate_id = \"t\"\n",
        );
        assert_eq!(s.line_of("name"), Some(2));
        assert_eq!(s.line_of("placements[0]"), Some(3));
        assert_eq!(s.line_of("content[1].channel"), Some(7));
        assert_eq!(s.line_of("content[0].channel"), Some(5));
        assert_eq!(s.line_of("weight"), None);
        let c = toml("[campaign]\nname = \"c\"\n\n[[offers]]\nname = \"x\"\n[[offers]]\nname = \"y\"\nweight = 2\n");
        assert_eq!(c.line_of("campaign.name"), Some(2));
        assert_eq!(c.line_of("offers[1].name"), Some(7));
        assert_eq!(c.line_of("offers[1]"), Some(6));
        let j = Source {
            path: "f.json".into(),
            text: "{\n  \"name\": \"a\",\n  \"content\": [\n    {\"channel\": \"email\"},\n    {\"channel\": \"sms\"}\n  ]\n}\n"
                .into(),
            json: true,
        };
        assert_eq!(j.line_of("content[1].channel"), Some(5));
        assert_eq!(j.line_of("name"), Some(2));
    }

    #[test]
    fn refusals_name_the_file_line_and_field() {
        let s = toml("name = \"a\"\nplacements = [\"email\"]\neligibility_rule = \"x\"\n");
        let e = s.refusal("eligibility_rule: unknown field `x` at 1:1").to_string();
        assert_eq!(e, "f.toml:3: eligibility_rule: unknown field `x` at 1:1");
        assert_eq!(s.refusal("offer off_x not found").to_string(), "f.toml: offer off_x not found");
    }
}
