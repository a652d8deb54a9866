//! `rapport consent record|check|history`: the ledger by hand (a store clerk's paper form, a call-centre
//! agent's recorded call, checking before a manual contact).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rapport_proto::common::v1::{Channel, PageRequest, Provenance, Purpose};
use rapport_proto::consent::v1::{
    CheckReason, CheckRequest, ConsentEntry, ConsentStatus, EntryInput, HistoryRequest, LegalBasis, Proof, ProofMethod,
    RecordRequest, consent_service_client::ConsentServiceClient,
};

use super::output::{enum_name, print_json, time};
use super::{Who, authorized, parse_time, status_error};

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Record what a person allowed or refused (one ledger entry; nothing is ever updated in place).
    Record(RecordArgs),
    /// May we contact this person on this channel for this purpose now? With the reason and the entry.
    Check(CheckArgs),
    /// The person's ledger entries, newest first.
    History(HistoryArgs),
}

/// Whose permission, for which channel and purpose, in which region.
#[derive(Debug, Args)]
pub struct Permission {
    #[command(flatten)]
    pub who: Who,
    /// email, sms, push, phone_call, direct_mail, in_app, web, call_centre, store.
    #[arg(long)]
    pub channel: String,
    /// A configured purpose (marketing, personalisation, analytics, service_messages by default).
    #[arg(long, default_value = "marketing")]
    pub purpose: String,
    /// The person's region (ISO country), for opt-in/opt-out rules.
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub permission: Permission,
    /// granted, denied, withdrawn or pending.
    #[arg(long)]
    pub status: String,
    /// consent, contract or legitimate_interest.
    #[arg(long, default_value = "consent")]
    pub legal_basis: String,
    /// The system the permission was given in.
    #[arg(long, default_value = "cli")]
    pub source: String,
    /// The person who took it (a clerk's or agent's id).
    #[arg(long)]
    pub actor: Option<String>,
    /// The privacy notice shown, and its version.
    #[arg(long)]
    pub notice: Option<String>,
    #[arg(long)]
    pub notice_version: Option<String>,
    /// How it was given: web_form, recorded_call, paper_form, in_store, import...
    #[arg(long, default_value = "paper_form")]
    pub method: String,
    /// When the person acted (RFC 3339 or YYYY-MM-DD) [default: now].
    #[arg(long)]
    pub at: Option<String>,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub permission: Permission,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub who: Who,
    /// How many entries at most (1-1000).
    #[arg(long, default_value_t = 50)]
    pub limit: i32,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

fn named<E>(
    flag: &str,
    text: &str,
    prefix: &str,
    parse: impl Fn(&str) -> Option<E>,
    choices: &str,
) -> anyhow::Result<E> {
    rapport_decision::campaigns::definition::enum_value(&format!("--{flag}"), text, prefix, parse, choices)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A channel by name, for a `--channel` flag.
pub(super) fn channel(text: &str) -> anyhow::Result<i32> {
    let c = named(
        "channel",
        text,
        "CHANNEL_",
        Channel::from_str_name,
        "email, sms, push, phone_call, direct_mail, in_app, web, call_centre, store",
    )?;
    anyhow::ensure!(c != Channel::Unspecified, "--channel: must name a channel");
    Ok(c as i32)
}

/// With an identifier the entry is about that contact point; with a customer id about the customer.
fn subject(
    who: &Who,
) -> anyhow::Result<(Option<rapport_proto::common::v1::CustomerRef>, Option<rapport_proto::common::v1::Identifier>)> {
    Ok(match who.identifier()? {
        Some(contact_point) => (None, Some(contact_point)),
        None => (Some(who.customer_ref()?), None),
    })
}

/// Runs a consent command against `channel` with `token`.
pub async fn run(command: ConsentCommand, grpc: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    let mut client = ConsentServiceClient::new(grpc);
    match command {
        ConsentCommand::Record(args) => {
            let p = args.permission;
            let (customer, contact_point) = subject(&p.who)?;
            let status = named(
                "status",
                &args.status,
                "CONSENT_STATUS_",
                ConsentStatus::from_str_name,
                "granted, denied, withdrawn, pending",
            )?;
            let legal_basis = named(
                "legal-basis",
                &args.legal_basis,
                "LEGAL_BASIS_",
                LegalBasis::from_str_name,
                "consent, contract, legitimate_interest",
            )?;
            let method = named(
                "method",
                &args.method,
                "PROOF_METHOD_",
                ProofMethod::from_str_name,
                "web_form, recorded_call, paper_form, in_store, import",
            )?;
            let occurred_at = match &args.at {
                Some(t) => parse_time(t).context("--at")?,
                None => rapport_rpc::convert::timestamp(chrono::Utc::now().timestamp_millis()),
            };
            let entry = EntryInput {
                customer,
                contact_point,
                channel: channel(&p.channel)?,
                purpose: Some(Purpose { name: p.purpose }),
                status: status as i32,
                legal_basis: legal_basis as i32,
                provenance: Some(Provenance {
                    source: args.source,
                    source_record_id: String::new(),
                    actor: args.actor.unwrap_or_default(),
                }),
                proof: Some(Proof {
                    notice_id: args.notice.unwrap_or_default(),
                    notice_version: args.notice_version.unwrap_or_default(),
                    method: method as i32,
                    ..Default::default()
                }),
                occurred_at: Some(occurred_at),
                region: p.region.unwrap_or_default(),
                ..Default::default()
            };
            let response = client
                .record(authorized(RecordRequest { entries: vec![entry] }, token)?)
                .await
                .map_err(status_error)?
                .into_inner();
            if args.json {
                return print_json(&response);
            }
            for (e, in_force) in response.entries.iter().zip(response.in_force.iter().chain(std::iter::repeat(&false)))
            {
                println!("recorded {} for customer {}", e.entry_id, e.customer_id);
                print_entry(e);
                if !in_force {
                    println!("  note: a newer entry is in force; this older one does not change the current state");
                }
            }
            Ok(())
        }
        ConsentCommand::Check(args) => {
            let p = args.permission;
            let (customer, contact_point) = subject(&p.who)?;
            let request = CheckRequest {
                customer,
                contact_point,
                channel: channel(&p.channel)?,
                purpose: Some(Purpose { name: p.purpose }),
                at: None,
                region: p.region.unwrap_or_default(),
            };
            let r = client.check(authorized(request, token)?).await.map_err(status_error)?.into_inner();
            if args.json {
                return print_json(&r);
            }
            let reason = CheckReason::try_from(r.reason).map(|c| c.as_str_name()).unwrap_or("?");
            println!("{} ({})", if r.allowed { "allowed" } else { "NOT allowed" }, enum_name(reason, "CHECK_REASON_"));
            if !r.explanation.is_empty() {
                println!("  {}", r.explanation);
            }
            if let Some(e) = &r.entry {
                println!("  rests on entry {}:", e.entry_id);
                print_entry(e);
            }
            if let Some(s) = &r.suppression {
                println!("  suppressed since {} ({})", time(s.created_at.as_ref()), s.suppression_id);
            }
            Ok(())
        }
        ConsentCommand::History(args) => {
            let (customer, contact_point) = subject(&args.who)?;
            let request = HistoryRequest {
                customer,
                contact_point,
                page: Some(PageRequest { page_size: args.limit, page_token: String::new() }),
                ..Default::default()
            };
            let r = client.history(authorized(request, token)?).await.map_err(status_error)?.into_inner();
            if args.json {
                return print_json(&r);
            }
            if r.entries.is_empty() {
                println!("no entries");
            }
            for e in &r.entries {
                println!("{}", e.entry_id);
                print_entry(e);
            }
            Ok(())
        }
    }
}

fn print_entry(e: &ConsentEntry) {
    let channel = Channel::try_from(e.channel).map(|c| c.as_str_name()).unwrap_or("?");
    let status = ConsentStatus::try_from(e.status).map(|c| c.as_str_name()).unwrap_or("?");
    let purpose = e.purpose.as_ref().map(|p| p.name.as_str()).unwrap_or("");
    let source = e.provenance.as_ref().map(|p| p.source.as_str()).unwrap_or("");
    println!(
        "  {} {} {}: {} at {} (source {source}{})",
        enum_name(channel, "CHANNEL_"),
        purpose,
        if e.contact_point.is_some() { "(contact point)" } else { "(customer)" },
        enum_name(status, "CONSENT_STATUS_"),
        time(e.occurred_at.as_ref()),
        e.provenance.as_ref().filter(|p| !p.actor.is_empty()).map(|p| format!(", by {}", p.actor)).unwrap_or_default()
    );
}
