//! `rapport campaign put|list`: campaigns defined in a file (TOML or JSON) with the offers they send.
//!
//! The format is the decision service's campaign file (services/decision/examples/campaigns/), with a
//! few more keys:
//!
//! ```toml
//! [campaign]
//! # id = "cmp_..."               # optional: the campaign to change; otherwise the campaign of this name, or a new one
//! name = "Abandoned cart"
//! kind = "triggered"             # or "scheduled"
//! trigger_events = ["cart_updated"]                     # triggered: the events that start it...
//! trigger_rule = "has(profile.computed.open_cart)"      # ...when this CEL rule over event and profile holds,
//! wait_seconds = 3600                                   # ...then wait...
//! recheck_rule = "!has(profile.computed.last_order_at)" # ...and check again before deciding
//! # schedule = "0 0 9 * * Mon"   # scheduled: a cron expression (UTC)...
//! # segment_id = "seg_..."       # ...over the members of a segment
//! placement = "email"
//! channel = "email"              # default: the placement's channel
//! holdout_share = 0.1            # 0 to 0.5, held out for uplift
//! # holdout_salt = "winter"      # the holdout hash's salt (default: the campaign id): the same salt holds out the same customers
//! offer_ids = ["off_..."]        # offers that exist already, beside the [[offers]] below
//! experiment_id = "exp_..."      # optional
//! state = "running"              # draft (default for a new campaign), running, paused or stopped
//!
//! [[offers]]                     # offers created (or updated, by name) with the campaign: the keys of an
//! name = "Your cart is waiting"  # offer file (`rapport offer --help`)
//! placements = ["email"]
//! channel = "email"
//! template_id = "tpl_abandoned_cart"
//! ```
//!
//! `put` checks the whole file (the campaign's rules and schedule, every offer, that the named offers
//! and experiment exist) before anything is stored; an error names the file, the line and the field.

use clap::{Args, Subcommand};
use rapport_decision::campaigns::definition::CampaignFile;
use rapport_proto::common::v1::{Channel, PageRequest};
use rapport_proto::decision::v1::{
    self as pb, CampaignKind, CampaignState, CreateCampaignRequest, GetExperimentRequest, GetOfferRequest,
    ListCampaignsRequest, PlacementKind, SetCampaignStateRequest, UpdateCampaignRequest,
    decision_service_client::DecisionServiceClient,
};

use super::definition::{PutArgs, Source};
use super::offer;
use super::output::{enum_name, print_json, time};
use super::{authorized, status_error};

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign and its offers from a file, or change them (by `id`, or by name).
    Put(PutArgs),
    /// The campaigns, with their state.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Every campaign.
async fn all_campaigns(
    client: &mut DecisionServiceClient<tonic::transport::Channel>,
    token: &str,
) -> anyhow::Result<Vec<pb::Campaign>> {
    let mut campaigns = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListCampaignsRequest { page: Some(PageRequest { page_size: 1000, page_token }) };
        let r = client.list_campaigns(authorized(request, token)?).await.map_err(status_error)?.into_inner();
        campaigns.extend(r.campaigns);
        page_token = r.page.map(|p| p.next_page_token).unwrap_or_default();
        if page_token.is_empty() {
            return Ok(campaigns);
        }
    }
}

/// Runs a campaign command against `channel` with `token`.
pub async fn run(command: CampaignCommand, channel: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    let mut client = DecisionServiceClient::new(channel);
    match command {
        CampaignCommand::Put(args) => put(&mut client, token, args).await,
        CampaignCommand::List(args) => {
            let campaigns = all_campaigns(&mut client, token).await?;
            if args.json {
                return print_json(&pb::ListCampaignsResponse { campaigns, page: None });
            }
            if campaigns.is_empty() {
                println!("no campaigns");
            }
            for c in &campaigns {
                print_campaign(c);
            }
            Ok(())
        }
    }
}

async fn put(
    client: &mut DecisionServiceClient<tonic::transport::Channel>,
    token: &str,
    args: PutArgs,
) -> anyhow::Result<()> {
    let source = Source::read(&args.file)?;
    let file: CampaignFile = source.parse()?;
    // Everything is checked before anything is stored.
    let mut offers = Vec::new();
    for (i, spec) in file.offers.iter().enumerate() {
        offers.push(spec.checked(&format!("offers[{i}]")).map_err(|e| source.refusal(&e.to_string()))?);
    }
    let mut campaign = file.campaign.to_campaign().map_err(|e| source.refusal(&e.to_string()))?;
    let checked =
        rapport_decision::campaigns::check_definition(campaign.clone()).map_err(|e| source.refusal(&e.to_string()))?;
    campaign.channel = checked.channel;
    for (i, id) in file.campaign.offer_ids.iter().enumerate() {
        let request = GetOfferRequest { offer_id: id.clone(), version: 0 };
        if let Err(s) = client.get_offer(authorized(request, token)?).await {
            return Err(source.error(&format!("campaign.offer_ids[{i}]"), s.message()));
        }
    }
    if !campaign.experiment_id.is_empty() {
        let request = GetExperimentRequest { experiment_id: campaign.experiment_id.clone() };
        if let Err(s) = client.get_experiment(authorized(request, token)?).await {
            return Err(source.error("campaign.experiment_id", s.message()));
        }
    }
    let campaigns = all_campaigns(client, token).await?;
    let current = if campaign.campaign_id.is_empty() {
        campaigns.iter().find(|c| c.name == campaign.name.trim())
    } else {
        let found = campaigns.iter().find(|c| c.campaign_id == campaign.campaign_id);
        if found.is_none() {
            return Err(source.error("campaign.id", &format!("no campaign {}", campaign.campaign_id)));
        }
        found
    };
    let catalogue = offer::all_offers(client, token, true, &[]).await?;
    let mut saved_offers = Vec::new();
    for (i, (spec, o)) in file.offers.iter().zip(offers).enumerate() {
        let existing = offer::existing(spec, &catalogue);
        let (saved, created) = offer::save(client, token, &source, spec, &format!("offers[{i}]"), o, existing).await?;
        if !campaign.offer_ids.contains(&saved.offer_id) {
            campaign.offer_ids.push(saved.offer_id.clone());
        }
        saved_offers.push((saved, created));
    }
    let refused = |s: tonic::Status| {
        if s.code() == tonic::Code::InvalidArgument { source.refusal(s.message()) } else { status_error(s) }
    };
    let wanted = campaign.state;
    let (mut saved, created) = match current {
        None => {
            let request = CreateCampaignRequest { campaign: Some(campaign) };
            (client.create_campaign(authorized(request, token)?).await.map_err(refused)?.into_inner(), true)
        }
        Some(current) => {
            campaign.campaign_id = current.campaign_id.clone();
            let request = UpdateCampaignRequest { campaign: Some(campaign), update_mask: None };
            (client.update_campaign(authorized(request, token)?).await.map_err(refused)?.into_inner(), false)
        }
    };
    if wanted != CampaignState::Unspecified as i32
        && wanted != saved.state
        && !(created && wanted == CampaignState::Draft as i32)
    {
        let request = SetCampaignStateRequest { campaign_id: saved.campaign_id.clone(), state: wanted };
        saved = client.set_campaign_state(authorized(request, token)?).await.map_err(refused)?.into_inner();
    }
    if args.json {
        return print_json(&saved);
    }
    for (o, created) in &saved_offers {
        let verb = if *created { "created" } else { "updated" };
        println!("{verb} offer {} \"{}\" (version {})", o.offer_id, o.name, o.version);
    }
    println!("{} campaign {}", if created { "created" } else { "updated" }, saved.campaign_id);
    print_campaign(&saved);
    Ok(())
}

fn print_campaign(c: &pb::Campaign) {
    let kind = CampaignKind::try_from(c.kind).map(|k| k.as_str_name()).unwrap_or("?");
    let state = CampaignState::try_from(c.state).map(|s| s.as_str_name()).unwrap_or("?");
    let placement = PlacementKind::try_from(c.placement).map(|p| p.as_str_name()).unwrap_or("?");
    let channel = Channel::try_from(c.channel).map(|p| p.as_str_name()).unwrap_or("?");
    println!(
        "{}  {:<8} {:<10} {}",
        c.campaign_id,
        enum_name(state, "CAMPAIGN_STATE_"),
        enum_name(kind, "CAMPAIGN_KIND_"),
        c.name
    );
    if c.kind == CampaignKind::Triggered as i32 {
        println!(
            "  on {}{}{}",
            c.trigger_events.join(", "),
            if c.trigger_rule.is_empty() { String::new() } else { format!(" when {}", c.trigger_rule) },
            if c.wait_seconds > 0 { format!(", after {} s", c.wait_seconds) } else { String::new() }
        );
        if !c.recheck_rule.is_empty() {
            println!("  still when {}", c.recheck_rule);
        }
    } else {
        println!("  at `{}` for segment {}", c.schedule, c.segment_id);
    }
    println!(
        "  {} via {}; offers {}; holdout {:.0}%{}; created {}",
        enum_name(placement, "PLACEMENT_KIND_"),
        enum_name(channel, "CHANNEL_"),
        if c.offer_ids.is_empty() { "all eligible".to_string() } else { c.offer_ids.join(", ") },
        c.holdout_share * 100.0,
        if c.experiment_id.is_empty() { String::new() } else { format!("; experiment {}", c.experiment_id) },
        time(c.created_at.as_ref())
    );
}
