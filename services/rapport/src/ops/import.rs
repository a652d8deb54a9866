//! `rapport import customers|events --file data.csv --mapping mapping.toml`: a CSV export (with a header
//! row) through a column mapping into Profile.Identify (customers: identifiers and traits) or
//! Profile.Track (events), with a progress bar. Every row is accounted for: imported, or rejected with
//! its line and the reason (a row with the wrong number of fields, a value of the wrong type, or what the
//! server refused, naming the field). Re-running an import stores nothing twice: each row's message id
//! is derived from its source and content unless the mapping names a column for it.
//!
//! ```toml
//! source = "crm"                 # the system the file comes from (provenance of every row)
//! [identifiers]                  # identifier type = column; external ids as "external:NAMESPACE"
//! email = "mail"
//! "external:crm" = "id"
//! [traits]                       # customers: trait = column, or { column = "...", type = "int" }
//! first_name = "given"
//! [event]                        # events: the name (a column, or `name_value` for all rows), the time
//! name_value = "order_completed"
//! occurred_at = "ordered_at"
//! message_id = "order_id"        # optional: a column to use as the idempotency key
//! [properties]                   # events: property = column, or { column = "...", type = "int" }
//! revenue_minor = { column = "total_cents", type = "int" }
//! currency = "currency"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use rapport_proto::common::v1::Identifier;
use rapport_proto::profile::v1::{
    Event, EventContext, IdentifyRequest, TrackRequest, profile_service_client::ProfileServiceClient,
};
use rapport_rpc::convert::json_to_struct;
use serde::Deserialize;
use sha2::Digest as _;

use super::{authorized, identifier_type, parse_time};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportKind {
    /// One customer per row: identifiers and traits (Profile.Identify).
    Customers,
    /// One event per row (Profile.Track, in batches).
    Events,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// What the rows are.
    pub kind: ImportKind,
    /// The CSV file, with a header row.
    #[arg(long)]
    pub file: PathBuf,
    /// The column mapping (TOML; see `rapport import --help` and docs/api-guide.md).
    #[arg(long)]
    pub mapping: PathBuf,
    /// Events per Track call.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A column, with the type its values are sent as.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Column {
    Name(String),
    Typed {
        column: String,
        #[serde(default, rename = "type")]
        kind: ValueType,
    },
}

impl Column {
    fn name(&self) -> &str {
        match self {
            Column::Name(n) | Column::Typed { column: n, .. } => n,
        }
    }
    fn kind(&self) -> ValueType {
        match self {
            Column::Name(_) => ValueType::String,
            Column::Typed { kind, .. } => *kind,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ValueType {
    #[default]
    String,
    Int,
    Float,
    Bool,
    /// A date or time, sent as RFC 3339.
    Date,
    /// A JSON document (arrays, objects).
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventMapping {
    name: Option<String>,
    name_value: Option<String>,
    occurred_at: Option<String>,
    message_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapping {
    source: String,
    #[serde(default)]
    identifiers: BTreeMap<String, String>,
    #[serde(default)]
    traits: BTreeMap<String, Column>,
    #[serde(default)]
    event: EventMapping,
    #[serde(default)]
    properties: BTreeMap<String, Column>,
}

/// A row that was not imported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    pub line: u64,
    pub reason: String,
}

/// What an import did; every row read is either imported, a replay, or rejected.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub file: String,
    pub rows: u64,
    pub imported: u64,
    /// Rows the server already had: an event stored before, or traits it already held (an earlier run).
    pub already_stored: u64,
    pub rejected: Vec<Rejection>,
    pub customers: u64,
    pub seconds: f64,
}

/// What became of one row: its line, and whether it was stored (false: already there) and for whom, or why not.
type RowOutcome = (u64, Result<(bool, String), String>);
type Outcome = Vec<RowOutcome>;

/// A prepared row: its line and the call it becomes.
enum Prepared {
    Customer(u64, IdentifyRequest),
    Event(u64, Event),
}

fn load_mapping(path: &Path, kind: ImportKind) -> anyhow::Result<Mapping> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--mapping {}", path.display()))?;
    let mapping: Mapping = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let at = |what: &str| format!("{}: {what}", path.display());
    anyhow::ensure!(!mapping.source.trim().is_empty(), at("source: must name the system the file comes from"));
    for name in mapping.identifiers.keys() {
        let kind_name = name.split(':').next().unwrap_or_default();
        anyhow::ensure!(
            identifier_type(kind_name).is_some(),
            at(&format!("identifiers.{name}: unknown identifier type"))
        );
        if kind_name == "external" {
            anyhow::ensure!(
                name.split_once(':').is_some_and(|(_, ns)| !ns.is_empty()),
                at(&format!("identifiers.{name}: write external ids as \"external:NAMESPACE\""))
            );
        }
    }
    match kind {
        ImportKind::Customers => {
            anyhow::ensure!(!mapping.identifiers.is_empty(), at("identifiers: map at least one identifier column"));
            anyhow::ensure!(mapping.properties.is_empty(), at("properties: only events have properties (use traits)"));
        }
        ImportKind::Events => {
            anyhow::ensure!(mapping.traits.is_empty(), at("traits: events carry properties, not traits"));
            anyhow::ensure!(
                mapping.event.name.is_some() != mapping.event.name_value.is_some(),
                at("event: give either `name` (a column) or `name_value` (one name for every row)")
            );
            anyhow::ensure!(
                mapping.event.occurred_at.is_some(),
                at("event.occurred_at: name the column with the time of each event")
            );
        }
    }
    Ok(mapping)
}

/// The column index of every mapped column; a mapped column missing from the header is an error.
fn columns(headers: &csv::StringRecord, mapping: &Mapping) -> anyhow::Result<BTreeMap<String, usize>> {
    let wanted = mapping
        .identifiers
        .values()
        .map(String::as_str)
        .chain(mapping.traits.values().map(Column::name))
        .chain(mapping.properties.values().map(Column::name))
        .chain(
            [&mapping.event.name, &mapping.event.occurred_at, &mapping.event.message_id]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    let mut found = BTreeMap::new();
    for name in wanted {
        let i = headers.iter().position(|h| h.trim() == name).with_context(|| {
            format!(
                "column `{name}` is mapped but not in the header row ({})",
                headers.iter().collect::<Vec<_>>().join(",")
            )
        })?;
        found.insert(name.to_string(), i);
    }
    Ok(found)
}

fn typed(value: &str, kind: ValueType) -> Result<serde_json::Value, String> {
    let v = value.trim();
    Ok(match kind {
        ValueType::String => serde_json::Value::String(v.to_string()),
        ValueType::Int => {
            serde_json::Value::from(v.parse::<i64>().map_err(|_| format!("`{v}` is not a whole number"))?)
        }
        ValueType::Float => {
            serde_json::Number::from_f64(v.parse::<f64>().map_err(|_| format!("`{v}` is not a number"))?)
                .map(serde_json::Value::Number)
                .ok_or_else(|| format!("`{v}` is not a finite number"))?
        }
        ValueType::Bool => serde_json::Value::Bool(match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "y" => true,
            "false" | "no" | "0" | "n" => false,
            _ => return Err(format!("`{v}` is not true or false")),
        }),
        ValueType::Date => {
            let t = parse_time(v).map_err(|e| e.to_string())?;
            serde_json::Value::String(super::output::time(Some(&t)))
        }
        ValueType::Json => serde_json::from_str(v).map_err(|e| format!("not JSON: {e}"))?,
    })
}

/// The fields of `map` that have a value in `row`, converted; the first bad one names its column.
fn fields(
    row: &csv::StringRecord,
    map: &BTreeMap<String, Column>,
    at: &BTreeMap<String, usize>,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut out = serde_json::Map::new();
    for (name, column) in map {
        let raw = row.get(at[column.name()]).unwrap_or("");
        if raw.trim().is_empty() {
            continue;
        }
        let v = typed(raw, column.kind()).map_err(|e| format!("column `{}` ({name}): {e}", column.name()))?;
        out.insert(name.clone(), v);
    }
    Ok(out)
}

fn identifiers(row: &csv::StringRecord, mapping: &Mapping, at: &BTreeMap<String, usize>) -> Vec<Identifier> {
    mapping
        .identifiers
        .iter()
        .filter_map(|(name, column)| {
            let value = row.get(at[column.as_str()]).unwrap_or("").trim();
            if value.is_empty() {
                return None;
            }
            let (kind, namespace) = name.split_once(':').unwrap_or((name, ""));
            let kind = identifier_type(kind)?;
            Some(Identifier { r#type: kind as i32, value: value.to_string(), namespace: namespace.to_string() })
        })
        .collect()
}

/// A stable message id for a row: the same row of the same source always gets the same id.
fn row_id(source: &str, row: &csv::StringRecord) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(source.as_bytes());
    for field in row {
        hash.update([0u8]);
        hash.update(field.as_bytes());
    }
    format!("import:{}", hex::encode(&hash.finalize()[..12]))
}

fn prepare(
    kind: ImportKind,
    mapping: &Mapping,
    at: &BTreeMap<String, usize>,
    row: &csv::StringRecord,
    line: u64,
) -> Result<Prepared, String> {
    let ids = identifiers(row, mapping, at);
    if ids.is_empty() {
        return Err("no identifier: every mapped identifier column is empty".to_string());
    }
    match kind {
        ImportKind::Customers => {
            let traits = fields(row, &mapping.traits, at)?;
            if traits.is_empty() {
                return Err("no trait: every mapped trait column is empty".to_string());
            }
            Ok(Prepared::Customer(
                line,
                IdentifyRequest {
                    identifiers: ids,
                    customer_id: String::new(),
                    traits: Some(json_to_struct(serde_json::Value::Object(traits))),
                    occurred_at: None,
                    source: mapping.source.clone(),
                    message_id: row_id(&mapping.source, row),
                },
            ))
        }
        ImportKind::Events => {
            let name = match (&mapping.event.name_value, &mapping.event.name) {
                (Some(v), _) => v.clone(),
                (None, Some(col)) => row.get(at[col.as_str()]).unwrap_or("").trim().to_string(),
                (None, None) => String::new(),
            };
            if name.is_empty() {
                return Err("the event name column is empty".to_string());
            }
            let time_column = mapping.event.occurred_at.as_deref().unwrap_or_default();
            let occurred = row.get(at[time_column]).unwrap_or("");
            let occurred_at = parse_time(occurred).map_err(|e| format!("column `{time_column}`: {e}"))?;
            let message_id = match &mapping.event.message_id {
                Some(col) => {
                    let id = row.get(at[col.as_str()]).unwrap_or("").trim();
                    if id.is_empty() {
                        return Err(format!("column `{col}` (message id) is empty"));
                    }
                    format!("{}:{id}", mapping.source)
                }
                None => row_id(&mapping.source, row),
            };
            let properties = fields(row, &mapping.properties, at)?;
            Ok(Prepared::Event(
                line,
                Event {
                    message_id,
                    name,
                    occurred_at: Some(occurred_at),
                    properties: Some(json_to_struct(serde_json::Value::Object(properties))),
                    context: Some(EventContext { source: mapping.source.clone(), ..Default::default() }),
                    identifiers: ids,
                    ..Default::default()
                },
            ))
        }
    }
}

/// Runs the import and prints its summary.
pub async fn run(args: ImportArgs, channel: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    let summary = import(&args, channel, token).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{}: {} rows read, {} imported, {} already stored, {} rejected, {} customers, {:.1} s",
            summary.file,
            summary.rows,
            summary.imported,
            summary.already_stored,
            summary.rejected.len(),
            summary.customers,
            summary.seconds
        );
        for r in &summary.rejected {
            println!("  {}:{}: {}", summary.file, r.line, r.reason);
        }
    }
    if summary.imported + summary.already_stored + summary.rejected.len() as u64 != summary.rows {
        anyhow::bail!("internal error: rows unaccounted for");
    }
    Ok(())
}

/// Imports `args.file`; every row read ends up in the summary.
pub async fn import(args: &ImportArgs, channel: tonic::transport::Channel, token: &str) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mapping = load_mapping(&args.mapping, args.kind)?;
    anyhow::ensure!((1..=1000).contains(&args.batch), "--batch: must be between 1 and 1000");
    let file_name = args.file.display().to_string();
    let open = || {
        csv::ReaderBuilder::new().has_headers(true).from_path(&args.file).with_context(|| format!("--file {file_name}"))
    };
    let total = open()?.records().count() as u64;
    let mut reader = open()?;
    let headers = reader.headers().with_context(|| format!("{file_name}: the header row"))?.clone();
    let at = columns(&headers, &mapping).with_context(|| file_name.clone())?;

    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }

    let mut summary = Summary { file: file_name.clone(), ..Summary::default() };
    let mut prepared = Vec::new();
    for (i, record) in reader.records().enumerate() {
        summary.rows += 1;
        // Line numbers count the header as line 1; a record's own position is exact when the csv crate knows it.
        let fallback = i as u64 + 2;
        match record {
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(fallback);
                summary.rejected.push(Rejection { line, reason: e.to_string() });
                bar.inc(1);
            }
            Ok(row) => {
                let line = row.position().map(|p| p.line()).unwrap_or(fallback);
                match prepare(args.kind, &mapping, &at, &row, line) {
                    Ok(p) => prepared.push(p),
                    Err(reason) => {
                        summary.rejected.push(Rejection { line, reason });
                        bar.inc(1);
                    }
                }
            }
        }
    }

    let client = ProfileServiceClient::new(channel);
    let mut customers = std::collections::BTreeSet::new();
    let calls: Vec<futures::future::BoxFuture<'static, Outcome>> = match args.kind {
        ImportKind::Customers => prepared
            .into_iter()
            .filter_map(|p| match p {
                Prepared::Customer(line, request) => Some((line, request)),
                Prepared::Event(..) => None,
            })
            .map(|(line, request)| {
                let mut client = client.clone();
                let request = authorized(request, token);
                Box::pin(async move {
                    let result = match request {
                        Err(e) => Err(e.to_string()),
                        Ok(request) => match client.identify(request).await {
                            Ok(r) => {
                                // Nothing changed: the server already held these traits (a re-run).
                                let r = r.into_inner();
                                Ok((!r.changed_traits.is_empty(), r.customer_id))
                            }
                            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                        },
                    };
                    vec![(line, result)]
                }) as futures::future::BoxFuture<'static, Outcome>
            })
            .collect(),
        ImportKind::Events => {
            let events: Vec<(u64, Event)> = prepared
                .into_iter()
                .filter_map(|p| match p {
                    Prepared::Event(line, e) => Some((line, e)),
                    Prepared::Customer(..) => None,
                })
                .collect();
            events
                .chunks(args.batch)
                .map(|chunk| {
                    let lines: Vec<u64> = chunk.iter().map(|(l, _)| *l).collect();
                    let request =
                        authorized(TrackRequest { events: chunk.iter().map(|(_, e)| e.clone()).collect() }, token);
                    let mut client = client.clone();
                    Box::pin(async move {
                        let request = match request {
                            Ok(r) => r,
                            Err(e) => return lines.iter().map(|l| (*l, Err(e.to_string()))).collect(),
                        };
                        match client.track(request).await {
                            Err(s) => {
                                let reason = format!("{:?}: {}", s.code(), s.message());
                                lines.iter().map(|l| (*l, Err(reason.clone()))).collect()
                            }
                            Ok(r) => {
                                let r = r.into_inner();
                                let mut out: Outcome = Vec::new();
                                for rej in r.rejected {
                                    if let Some(line) = lines.get(rej.index as usize) {
                                        out.push((*line, Err(rej.reason)));
                                    }
                                }
                                for res in r.results {
                                    if let Some(line) = lines.get(res.index as usize) {
                                        out.push((*line, Ok((res.stored, res.customer_id))));
                                    }
                                }
                                out
                            }
                        }
                    }) as futures::future::BoxFuture<'static, Outcome>
                })
                .collect()
        }
    };
    let mut results = futures::stream::iter(calls).buffer_unordered(args.concurrency.max(1));
    while let Some(outcomes) = results.next().await {
        for (line, outcome) in outcomes {
            bar.inc(1);
            match outcome {
                Ok((stored, customer)) => {
                    if stored {
                        summary.imported += 1
                    } else {
                        summary.already_stored += 1
                    }
                    customers.insert(customer);
                }
                Err(reason) => summary.rejected.push(Rejection { line, reason }),
            }
        }
    }
    bar.finish_and_clear();
    summary.rejected.sort_by_key(|r| r.line);
    summary.customers = customers.len() as u64;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_to_their_declared_type_or_say_why_not() {
        assert_eq!(typed("42", ValueType::Int).unwrap(), serde_json::json!(42));
        assert!(typed("4.2", ValueType::Int).unwrap_err().contains("4.2"));
        assert_eq!(typed("yes", ValueType::Bool).unwrap(), serde_json::json!(true));
        assert_eq!(typed("2026-11-25", ValueType::Date).unwrap(), serde_json::json!("2026-11-25T00:00:00Z"));
        assert_eq!(typed("[1,2]", ValueType::Json).unwrap(), serde_json::json!([1, 2]));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any cell as any type: converted or refused with a reason, never a panic; whole numbers, booleans,
        /// dates and times come back as what they were written as.
        #[test]
        fn any_cell_converts_or_is_refused_and_values_survive(
            cell in any::<String>(), n in any::<i64>(), y in 1900i32..2100, m in 1u32..=12, d in 1u32..=28,
            h in 0u32..24, offset in -12i32..=14,
        ) {
            for kind in [ValueType::String, ValueType::Int, ValueType::Float, ValueType::Bool, ValueType::Date, ValueType::Json] {
                if let Err(why) = typed(&cell, kind) {
                    prop_assert!(!why.is_empty());
                }
            }
            prop_assert_eq!(typed(&format!(" {n} "), ValueType::Int).unwrap(), serde_json::json!(n));
            prop_assert_eq!(typed(&n.to_string(), ValueType::Bool).is_ok(), n == 0 || n == 1);
            let day = format!("{y:04}-{m:02}-{d:02}");
            prop_assert_eq!(typed(&day, ValueType::Date).unwrap(), serde_json::json!(format!("{day}T00:00:00Z")));
            // A time with an offset is the same instant in UTC.
            let local = format!("{day}T{h:02}:30:00{}{:02}:00", if offset < 0 { '-' } else { '+' }, offset.abs());
            let utc = chrono::DateTime::parse_from_rfc3339(&local).unwrap().with_timezone(&chrono::Utc);
            prop_assert_eq!(typed(&local, ValueType::Date).unwrap(), serde_json::json!(utc.format("%Y-%m-%dT%H:%M:%SZ").to_string()));
        }
    }

    #[test]
    fn row_ids_depend_on_source_and_content_only() {
        let a = csv::StringRecord::from(vec!["1", "ann@example.com"]);
        let b = csv::StringRecord::from(vec!["1", "bob@example.com"]);
        assert_eq!(row_id("crm", &a), row_id("crm", &a));
        assert_ne!(row_id("crm", &a), row_id("crm", &b));
        assert_ne!(row_id("crm", &a), row_id("shop", &a));
    }

    #[test]
    fn mappings_are_checked_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            let p = dir.path().join("m.toml");
            std::fs::write(&p, text).unwrap();
            p
        };
        let err =
            load_mapping(&write("source = \"crm\"\n[identifiers]\nshoe = \"s\"\n"), ImportKind::Customers).unwrap_err();
        assert!(err.to_string().contains("identifiers.shoe"), "{err}");
        let err =
            load_mapping(&write("source = \"crm\"\n[identifiers]\nemail = \"m\"\n"), ImportKind::Events).unwrap_err();
        assert!(err.to_string().contains("event"), "{err}");
        let err =
            load_mapping(&write("source = \"crm\"\n[identifiers]\nemail = \"m\"\n[traitz]\n"), ImportKind::Customers)
                .unwrap_err();
        assert!(format!("{err:#}").contains("traitz"), "{err:#}");
    }
}
