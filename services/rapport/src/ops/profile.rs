//! `rapport profile get|timeline`: what a call-centre agent or an analyst looks up by hand.

use clap::{Args, Subcommand};
use rapport_proto::common::v1::{Channel, IdentifierType, PageRequest, TimeRange};
use rapport_proto::profile::v1::{
    GetProfileRequest, GetTimelineRequest, Profile, profile_service_client::ProfileServiceClient,
};
use rapport_rpc::convert::struct_to_json;

use super::output::{enum_name, money, print_json, time, value_text};
use super::{Who, authorized, parse_time, status_error};

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// A profile by customer id or any identifier: identifiers, traits, computed traits, segments and the
    /// consent summary (the read is audited with --purpose).
    Get(GetArgs),
    /// A customer's events, newest first.
    Timeline(TimelineArgs),
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub who: Who,
    /// Only these parts: identifiers, traits, computed, segments, consent (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub fields: Vec<String>,
    /// Why you read the profile, kept in the audit log.
    #[arg(long, default_value = "operator-lookup")]
    pub purpose: String,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TimelineArgs {
    #[command(flatten)]
    pub who: Who,
    /// Only events with these names (repeat or comma-separate).
    #[arg(long = "name", value_delimiter = ',')]
    pub names: Vec<String>,
    /// Only events at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// How many events at most (1-1000).
    #[arg(long, default_value_t = 50)]
    pub limit: i32,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a profile command against `channel` with `token`.
pub async fn run(command: ProfileCommand, channel: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    let mut client = ProfileServiceClient::new(channel);
    match command {
        ProfileCommand::Get(args) => {
            let request = GetProfileRequest {
                customer: Some(args.who.customer_ref()?),
                field_mask: (!args.fields.is_empty()).then(|| prost_types::FieldMask {
                    paths: args.fields.iter().map(|f| f.trim().to_string()).collect(),
                }),
                purpose: args.purpose,
            };
            let profile = client.get_profile(authorized(request, token)?).await.map_err(status_error)?.into_inner();
            if args.json {
                return print_json(&profile);
            }
            print_profile(&profile);
            Ok(())
        }
        ProfileCommand::Timeline(args) => {
            let range = match (&args.since, &args.until) {
                (None, None) => None,
                (since, until) => Some(TimeRange {
                    start: since.as_deref().map(parse_time).transpose()?,
                    end: until.as_deref().map(parse_time).transpose()?,
                }),
            };
            let request = GetTimelineRequest {
                customer: Some(args.who.customer_ref()?),
                names: args.names,
                range,
                page: Some(PageRequest { page_size: args.limit, page_token: String::new() }),
            };
            let timeline = client.get_timeline(authorized(request, token)?).await.map_err(status_error)?.into_inner();
            if args.json {
                return print_json(&timeline);
            }
            if timeline.events.is_empty() {
                println!("no events");
            }
            for e in &timeline.events {
                let props = e.properties.as_ref().map(|p| serde_json::Value::Object(struct_to_json(p)).to_string());
                let source = e.context.as_ref().map(|c| c.source.as_str()).unwrap_or("");
                println!(
                    "{}  {:<22} {:<10} {}",
                    time(e.occurred_at.as_ref()),
                    e.name,
                    source,
                    props.unwrap_or_default()
                );
            }
            if let Some(next) = timeline.page.filter(|p| !p.next_page_token.is_empty()) {
                println!(
                    "(more: older events follow; narrow with --since/--until or raise --limit; token {})",
                    next.next_page_token
                );
            }
            Ok(())
        }
    }
}

fn print_profile(p: &Profile) {
    println!("customer {}", p.customer_id);
    if !p.identifiers.is_empty() {
        let ids: Vec<String> = p
            .identifiers
            .iter()
            .map(|i| {
                let kind = IdentifierType::try_from(i.r#type).map(|t| t.as_str_name()).unwrap_or("?");
                let kind = enum_name(kind, "IDENTIFIER_TYPE_");
                if i.namespace.is_empty() {
                    format!("{kind} {}", i.value)
                } else {
                    format!("{kind} {}:{}", i.namespace, i.value)
                }
            })
            .collect();
        println!("identifiers: {}", ids.join(", "));
    }
    if let Some(traits) = p.traits.as_ref().filter(|t| !t.fields.is_empty()) {
        println!("traits:");
        let mut fields: Vec<_> = struct_to_json(traits).into_iter().collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in fields {
            println!("  {k}: {}", value_text(&v));
        }
    }
    if let Some(c) = &p.computed {
        println!("computed:");
        println!(
            "  orders {}, revenue {}, average order {}, first order {}, last order {}",
            c.order_count,
            money(c.total_revenue.as_ref()),
            money(c.average_order_value.as_ref()),
            time(c.first_order_at.as_ref()),
            time(c.last_order_at.as_ref())
        );
        println!(
            "  rfm {}/{}/{}, lifetime value {} ({}), high value {}, engagement {:.2}",
            c.recency_score,
            c.frequency_score,
            c.monetary_score,
            money(c.lifetime_value.as_ref()),
            if c.lifetime_value_model.is_empty() { "-" } else { &c.lifetime_value_model },
            if c.high_value { "yes" } else { "no" },
            c.engagement_score
        );
        println!(
            "  lifecycle {}, preferred channel {}, interests {}",
            if c.lifecycle_stage.is_empty() { "-" } else { &c.lifecycle_stage },
            if c.preferred_channel.is_empty() { "-" } else { &c.preferred_channel },
            if c.interests.is_empty() { "-".to_string() } else { c.interests.join(", ") }
        );
        if let Some(cart) = c.open_cart.as_ref().filter(|cart| !cart.items.is_empty()) {
            println!(
                "  open cart: {} item(s), {} (changed {})",
                cart.items.len(),
                money(cart.value.as_ref()),
                time(cart.updated_at.as_ref())
            );
        }
    }
    if !p.segments.is_empty() {
        let names: Vec<_> =
            p.segments.iter().map(|s| if s.name.is_empty() { s.segment_id.clone() } else { s.name.clone() }).collect();
        println!("segments: {}", names.join(", "));
    }
    if let Some(consent) = &p.consent {
        if !consent.unavailable_reason.is_empty() {
            println!("consent: unavailable ({})", consent.unavailable_reason);
        } else if !consent.channels.is_empty() {
            println!("consent:");
            for ch in &consent.channels {
                let channel = Channel::try_from(ch.channel).map(|c| c.as_str_name()).unwrap_or("?");
                println!(
                    "  {:<12} {:<16} {} ({})",
                    enum_name(channel, "CHANNEL_"),
                    ch.purpose,
                    if ch.allowed { "allowed" } else { "not allowed" },
                    ch.reason
                );
            }
        }
    }
}
