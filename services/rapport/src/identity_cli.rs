//! `rapport identity resolve --sources sources.toml --out clusters.csv`: the probabilistic
//! matcher of the identity service, in process, over CSV files named by a `sources.toml` (see
//! `rapport_identity::matching::csv_input`). Writes `source,record_id,customer_id`, one row per
//! record read, and prints a summary: rows read, rejected rows with file, line and reason,
//! clusters, possible matches and seconds. Sending the records to a running server
//! (`--endpoint`) is not implemented yet.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use rapport_identity::matching::{MatchSettings, csv_input, match_records};

#[derive(Debug, Parser)]
#[command(name = "rapport identity", about = "identity resolution in process")]
struct IdentityCli {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Match the records of several sources into customers.
    Resolve {
        /// The sources file (TOML): CSV files, id columns and attribute columns.
        #[arg(long)]
        sources: PathBuf,
        /// Where to write `source,record_id,customer_id`.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs `rapport identity ...` with the arguments after `identity`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = IdentityCli::parse_from(std::iter::once(OsString::from("rapport identity")).chain(args));
    let result = match cli.command {
        IdentityCommand::Resolve { sources, out } => resolve(&sources, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(sources: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let loaded = csv_input::load_sources(sources)?;
    let outcome = match_records(&loaded.records, &MatchSettings::default());
    csv_input::write_clusters(out, &loaded.records, &outcome, |c| format!("cust-{c:08}"))?;
    println!("rows read        {}", loaded.rows_read);
    println!("records matched  {}", loaded.records.len());
    println!("rejected rows    {}", loaded.rejected.len());
    for r in &loaded.rejected {
        println!("  {r}");
    }
    println!("clusters         {}", outcome.counts.clusters);
    println!("possible matches {}", outcome.counts.possible_pairs);
    println!("seconds          {:.2}", started.elapsed().as_secs_f64());
    println!("written          {}", out.display());
    Ok(())
}
