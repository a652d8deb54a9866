//! Reading sources (a `sources.toml` naming CSV files) into records, and writing clusters.
//!
//! ```toml
//! [[sources]]
//! name = "crm"
//! path = "crm.csv"          # relative to the toml file
//! id_column = "id"
//! kind = "person"           # optional: person (default), account, site, contact
//! date_format = "mdy"       # optional: how ambiguous dates are read (dmy, default, or mdy)
//! [sources.columns]         # attribute = column in this file
//! first_name = "given"
//! last_name = "family"
//! date_of_birth = "dob"
//! email = "mail"
//! ```
//!
//! A row with the wrong number of fields, no id, or an unreadable date is rejected with its
//! file and line, and the rest of the file is processed; every row read is either a record or
//! a rejection. Dates are rewritten as ISO `yyyy-mm-dd` so the source's hint is not lost.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use super::standardize::{DateOrder, format_date, parse_date};
use super::{EntityKind, MatchOutcome, SourceRecord};

/// One `[[sources]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The source's name (the `source` of its records).
    pub name: String,
    /// The CSV file, relative to the toml file.
    pub path: PathBuf,
    /// The column holding the record id.
    pub id_column: String,
    /// Entity kind of every record (default person).
    #[serde(default)]
    pub kind: Option<String>,
    /// How ambiguous dates are read: `dmy` (default) or `mdy`.
    #[serde(default)]
    pub date_format: Option<String>,
    /// Attribute name -> column name (`external_id.<namespace>` for external ids).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourcesFile {
    sources: Vec<SourceSpec>,
}

/// A row that was not turned into a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The CSV file.
    pub file: PathBuf,
    /// 1-based line of the row in the file.
    pub line: u64,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// What [`load_sources`] read.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The records, in file order.
    pub records: Vec<SourceRecord>,
    /// Rows rejected, with file, line and reason.
    pub rejected: Vec<Rejected>,
    /// Data rows read (records + rejected).
    pub rows_read: usize,
}

/// Reads `sources.toml` and every CSV it names. Configuration errors (unknown attribute or
/// kind, missing column, unreadable file) fail the whole load; bad rows are rejected one by one.
pub fn load_sources(toml_path: impl AsRef<Path>) -> anyhow::Result<Loaded> {
    let toml_path = toml_path.as_ref();
    let text = std::fs::read_to_string(toml_path).with_context(|| format!("reading {}", toml_path.display()))?;
    let file: SourcesFile = toml::from_str(&text).with_context(|| format!("parsing {}", toml_path.display()))?;
    let base = toml_path.parent().unwrap_or(Path::new("."));
    let mut loaded = Loaded::default();
    for spec in &file.sources {
        load_source(spec, base, &mut loaded).with_context(|| format!("source `{}`", spec.name))?;
    }
    Ok(loaded)
}

fn load_source(spec: &SourceSpec, base: &Path, out: &mut Loaded) -> anyhow::Result<()> {
    let kind: EntityKind = spec.kind.as_deref().unwrap_or("person").parse()?;
    let order: DateOrder = match spec.date_format.as_deref() {
        None => DateOrder::DayFirst,
        Some(f) => f.parse().map_err(anyhow::Error::msg)?,
    };
    // validate attribute names before reading anything
    let mut probe = SourceRecord::new("", "", kind);
    for attr in spec.columns.keys() {
        let sample = if attr == "external_id" { "x:y" } else { "x" };
        probe.set(attr, sample)?;
    }
    let path = base.join(&spec.path);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let headers = reader.headers().with_context(|| format!("reading the header of {}", path.display()))?.clone();
    let column = |name: &str| -> anyhow::Result<usize> {
        match headers.iter().position(|h| h.trim() == name) {
            Some(i) => Ok(i),
            None => bail!("{}: no column `{name}` in the header", path.display()),
        }
    };
    let id_col = column(&spec.id_column)?;
    let cols: Vec<(&str, usize)> =
        spec.columns.iter().map(|(attr, col)| Ok((attr.as_str(), column(col)?))).collect::<anyhow::Result<_>>()?;
    let mut row = csv::StringRecord::new();
    loop {
        let line_hint = reader.position().line();
        match reader.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                out.rows_read += 1;
                let line = e.position().map_or(line_hint, |p| p.line());
                out.rejected.push(Rejected { file: path.clone(), line, reason: format!("unreadable row: {e}") });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        }
        out.rows_read += 1;
        let line = row.position().map_or(line_hint, |p| p.line());
        let reject = |reason: String| Rejected { file: path.clone(), line, reason };
        if row.len() != headers.len() {
            out.rejected.push(reject(format!("{} fields, the header has {}", row.len(), headers.len())));
            continue;
        }
        let id = row.get(id_col).unwrap_or("").trim();
        if id.is_empty() {
            out.rejected.push(reject(format!("empty id column `{}`", spec.id_column)));
            continue;
        }
        let mut record = SourceRecord::new(&spec.name, id, kind);
        let mut bad = None;
        for &(attr, i) in &cols {
            let value = row.get(i).unwrap_or("").trim();
            if value.is_empty() {
                continue;
            }
            let value = if attr == "date_of_birth" {
                match parse_date(value, order) {
                    Some(d) => format_date(d),
                    None => {
                        bad = Some(format!("unreadable date `{value}` in column `{}`", headers.get(i).unwrap_or("")));
                        break;
                    }
                }
            } else {
                value.to_owned()
            };
            if let Err(e) = record.set(attr, value) {
                bad = Some(e.to_string());
                break;
            }
        }
        match bad {
            Some(reason) => out.rejected.push(reject(reason)),
            None => out.records.push(record),
        }
    }
    Ok(())
}

/// Writes `source,record_id,customer_id`, one row per record, `customer_id_of_cluster`
/// naming each cluster.
pub fn write_clusters(
    path: impl AsRef<Path>,
    records: &[SourceRecord],
    outcome: &MatchOutcome,
    customer_id_of_cluster: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let path = path.as_ref();
    let mut w = csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    w.write_record(["source", "record_id", "customer_id"])?;
    for (r, &c) in records.iter().zip(&outcome.cluster_of) {
        w.write_record([r.source.as_str(), r.record_id.as_str(), &customer_id_of_cluster(c)])?;
    }
    w.flush()?;
    Ok(())
}
