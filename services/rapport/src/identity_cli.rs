//! `rapport identity resolve --sources sources.toml --out clusters.csv`: the probabilistic
//! matcher of the identity service, in process, over CSV files named by a `sources.toml` (see
//! `rapport_identity::matching::csv_input`). Writes `source,record_id,customer_id`, one row per
//! record read, and prints a summary: rows read, rejected rows with file, line and reason,
//! clusters, possible matches and seconds.
//!
//! With `--endpoint URL` the same CSV files go to a running server instead: the records are stored
//! there (IdentityService.SubmitRecords, in batches; records the server refuses are listed with the
//! field and reason), one matching run over their sources feeds the server's identity graph
//! (RunMatching, followed until it ends), and the file holds the server's customer ids
//! (ListRecordAssignments). The summary has the same lines.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rapport_identity::matching::{MatchSettings, SourceRecord, csv_input, match_records};
use rapport_proto::common::v1::PageRequest;
use rapport_proto::identity::v1::{self as pb, identity_service_client::IdentityServiceClient};

use crate::ops::{authorized, status_error};

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
        /// Send the records to this running server (and use its matching and customer ids) instead of
        /// matching in process; `--token` (or RAPPORT_TOKEN, or the data directory's admin token) needs
        /// identity:write and identity:read.
        #[command(flatten)]
        client: crate::cli::ClientArgs,
    },
}

/// Runs `rapport identity ...` with the arguments after `identity`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = IdentityCli::parse_from(std::iter::once(OsString::from("rapport identity")).chain(args));
    let result = match cli.command {
        IdentityCommand::Resolve { sources, out, client } => match client.endpoint.is_some() {
            false => resolve(&sources, &out),
            true => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(resolve_remote(&sources, &out, &client))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(sources: &Path, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let loaded = csv_input::load_sources(sources)?;
    let outcome = match_records(&loaded.records, &MatchSettings::default());
    csv_input::write_clusters(out, &loaded.records, &outcome, |c| format!("cust-{c:08}"))?;
    let rejected: Vec<String> = loaded.rejected.iter().map(ToString::to_string).collect();
    let summary = Summary {
        rows_read: loaded.rows_read,
        matched: loaded.records.len(),
        rejected,
        clusters: outcome.counts.clusters,
        possible_matches: outcome.counts.possible_pairs,
    };
    summary.print(started, out);
    Ok(())
}

/// What `resolve` prints, whichever engine matched.
struct Summary {
    rows_read: usize,
    matched: usize,
    rejected: Vec<String>,
    clusters: usize,
    possible_matches: usize,
}

impl Summary {
    fn print(&self, started: Instant, out: &Path) {
        println!("rows read        {}", self.rows_read);
        println!("records matched  {}", self.matched);
        println!("rejected rows    {}", self.rejected.len());
        for r in &self.rejected {
            println!("  {r}");
        }
        println!("clusters         {}", self.clusters);
        println!("possible matches {}", self.possible_matches);
        println!("seconds          {:.2}", started.elapsed().as_secs_f64());
        println!("written          {}", out.display());
    }
}

/// Records per SubmitRecords call (the server takes up to 10,000).
const SUBMIT_BATCH: usize = 2_000;

/// `resolve` against a running server.
async fn resolve_remote(sources: &Path, out: &Path, client: &crate::cli::ClientArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let loaded = csv_input::load_sources(sources)?;
    let (channel, token) = crate::cli::connect(client).await?;
    let mut identity = IdentityServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut rejected: Vec<String> = loaded.rejected.iter().map(ToString::to_string).collect();

    // store the records; the server validates each alone
    let mut stored: Vec<&SourceRecord> = Vec::with_capacity(loaded.records.len());
    for batch in loaded.records.chunks(SUBMIT_BATCH) {
        let records = batch.iter().map(rapport_identity::records::to_wire).collect();
        let response = identity
            .submit_records(authorized(pb::SubmitRecordsRequest { records }, &token)?)
            .await
            .map_err(status_error)
            .context("SubmitRecords")?
            .into_inner();
        let refused: HashMap<usize, String> =
            response.rejected.into_iter().map(|r| (r.index as usize, r.reason)).collect();
        for (i, record) in batch.iter().enumerate() {
            match refused.get(&i) {
                // the server names the field under the record's index in the batch; source and id say more
                Some(reason) => {
                    let reason = reason.replacen(&format!("records[{i}]."), "", 1);
                    rejected.push(format!("{}/{}: {reason} (refused by the server)", record.source, record.record_id));
                }
                None => stored.push(record),
            }
        }
    }

    // one matching run over these sources, followed until it ends
    let mut names: Vec<String> = stored.iter().map(|r| r.source.clone()).collect();
    names.sort();
    names.dedup();
    let run = if names.is_empty() {
        None
    } else {
        let request = pb::RunMatchingRequest { sources: names.clone(), full: true, ..Default::default() };
        let run = identity
            .run_matching(authorized(request, &token)?)
            .await
            .map_err(status_error)
            .context("RunMatching")?
            .into_inner();
        Some(follow_run(&mut identity, &token, run).await?)
    };

    // the server's customer per record
    let mut customer_of: HashMap<(String, String), String> = HashMap::new();
    for source in &names {
        let mut page_token = String::new();
        loop {
            let request = pb::ListRecordAssignmentsRequest {
                source: source.clone(),
                page: Some(PageRequest { page_size: 1000, page_token: page_token.clone() }),
                customer_id: String::new(),
            };
            let page = identity
                .list_record_assignments(authorized(request, &token)?)
                .await
                .map_err(status_error)
                .context("ListRecordAssignments")?
                .into_inner();
            for a in page.assignments {
                customer_of.insert((a.source, a.record_id), a.customer_id);
            }
            page_token = page.page.map(|p| p.next_page_token).unwrap_or_default();
            if page_token.is_empty() {
                break;
            }
        }
    }
    let mut writer = csv::Writer::from_path(out).with_context(|| format!("creating {}", out.display()))?;
    writer.write_record(["source", "record_id", "customer_id"])?;
    let mut clusters = std::collections::HashSet::new();
    for r in &stored {
        let key = (r.source.clone(), r.record_id.clone());
        let customer = customer_of.get(&key).map(String::as_str).unwrap_or_default();
        anyhow::ensure!(!customer.is_empty(), "the server assigned no customer to {}/{}", r.source, r.record_id);
        clusters.insert(customer.to_owned());
        writer.write_record([r.source.as_str(), r.record_id.as_str(), customer])?;
    }
    writer.flush()?;
    let summary = Summary {
        rows_read: loaded.rows_read,
        matched: stored.len(),
        rejected,
        clusters: clusters.len(),
        possible_matches: run.map_or(0, |r| r.possible_matches as usize),
    };
    summary.print(started, out);
    Ok(())
}

/// Polls a matching run until it is no longer running; an error unless it succeeded.
async fn follow_run(
    identity: &mut IdentityServiceClient<tonic::transport::Channel>,
    token: &str,
    mut run: pb::MatchingRun,
) -> anyhow::Result<pb::MatchingRun> {
    while run.state() == pb::RunState::Running {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let request = pb::GetMatchingRunRequest { run_id: run.run_id.clone() };
        run = identity
            .get_matching_run(authorized(request, token)?)
            .await
            .map_err(status_error)
            .context("GetMatchingRun")?
            .into_inner();
    }
    match run.state() {
        pb::RunState::Succeeded => Ok(run),
        state => anyhow::bail!("matching run {} ended {:?}: {}", run.run_id, state, run.error),
    }
}
