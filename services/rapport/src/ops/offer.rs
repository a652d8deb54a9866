//! `rapport offer put|list`: offers defined in a file (TOML or JSON) and the catalogue.
//!
//! An offer file holds one offer; the same keys make an `[[offers]]` entry of a campaign file (so the
//! examples in services/decision/examples/campaigns/ load as they are):
//!
//! ```toml
//! # id = "off_..."          # optional: the offer to change; otherwise the active offer of this name, or a new one
//! name = "Winter coats -20%"
//! placements = ["email", "web_banner"]   # email, sms, push, web_banner, call_centre_script, store_till, in_app
//! channel = "email"                      # with template_id: what the offer says on one channel...
//! template_id = "tpl_winter"
//! variables = { discount = "20%" }       # ...rendered with these variables
//! # [[content]]                          # ...or one table per channel: channel, template_id, variables
//! eligibility_rule = "profile.computed.order_count >= 1"   # CEL over profile, context and now; empty: everyone
//! value_minor = 2500                     # what a conversion is worth, in minor units...
//! currency = "EUR"                       # ...of this currency
//! weight = 1.0                           # the marketers' lever (default 1)
//! tags = ["winter"]
//! class = "marketing"                    # or "service" (bypasses marketing contact limits, never consent)
//! purpose = "marketing"                  # the consent purpose checked
//! valid_from = "2026-12-01"              # RFC 3339 or a date
//! valid_until = "2027-01-31"
//! [[caps]]                               # at most `max` times (per customer or in total) within the window
//! max = 1
//! per_customer = true
//! window_seconds = 604800
//! ```
//!
//! `put` checks the whole file with the decision service's own validation before anything is stored (an
//! error names the file, the line and the field), then creates the offer or saves a new version of it.

use clap::{Args, Subcommand};
use rapport_decision::campaigns::definition::{OfferDef, problem};
use rapport_proto::common::v1::{Channel, MessageClass, PageRequest};
use rapport_proto::decision::v1::{
    self as pb, CreateOfferRequest, ListOffersRequest, PlacementKind, UpdateOfferRequest,
    decision_service_client::DecisionServiceClient,
};

use super::definition::{PutArgs, Source};
use super::output::{enum_name, money, print_json, time};
use super::{authorized, status_error};

type Client = DecisionServiceClient<tonic::transport::Channel>;

#[derive(Debug, Subcommand)]
pub enum OfferCommand {
    /// Create an offer from a file, or save a new version of it (by `id`, or the active offer of that name).
    Put(PutArgs),
    /// The offers of the catalogue.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Archived offers too.
    #[arg(long)]
    pub archived: bool,
    /// Only offers with these tags (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tag: Vec<String>,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Every offer of the catalogue (archived ones too when `archived`).
pub async fn all_offers(
    client: &mut Client,
    token: &str,
    archived: bool,
    tags: &[String],
) -> anyhow::Result<Vec<pb::Offer>> {
    let mut offers = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListOffersRequest {
            include_archived: archived,
            tags: tags.to_vec(),
            page: Some(PageRequest { page_size: 1000, page_token }),
        };
        let r = client.list_offers(authorized(request, token)?).await.map_err(status_error)?.into_inner();
        offers.extend(r.offers);
        page_token = r.page.map(|p| p.next_page_token).unwrap_or_default();
        if page_token.is_empty() {
            return Ok(offers);
        }
    }
}

/// The offer a spec means: by its id, or the one active offer of its name; `None` for a new one.
pub fn existing<'a>(spec: &OfferDef, catalogue: &'a [pb::Offer]) -> Option<&'a pb::Offer> {
    if !spec.id.is_empty() {
        return catalogue.iter().find(|o| o.offer_id == spec.id);
    }
    catalogue.iter().find(|o| !o.archived && o.name == spec.name.trim())
}

/// Saves a checked offer: a new one, or a new version of `current`. Server refusals name the file's key.
pub async fn save(
    client: &mut Client,
    token: &str,
    source: &Source,
    spec: &OfferDef,
    at: &str,
    offer: pb::Offer,
    current: Option<&pb::Offer>,
) -> anyhow::Result<(pb::Offer, bool)> {
    let refused = |s: tonic::Status| {
        if s.code() == tonic::Code::InvalidArgument {
            source.error(&spec.key_of(s.message(), at), problem(s.message()))
        } else {
            status_error(s)
        }
    };
    match current {
        None => {
            let request = CreateOfferRequest { offer: Some(pb::Offer { offer_id: String::new(), ..offer }) };
            Ok((client.create_offer(authorized(request, token)?).await.map_err(refused)?.into_inner(), true))
        }
        Some(current) => {
            let request = UpdateOfferRequest {
                offer: Some(pb::Offer { offer_id: current.offer_id.clone(), ..offer }),
                update_mask: None,
                expected_version: current.version,
            };
            Ok((client.update_offer(authorized(request, token)?).await.map_err(refused)?.into_inner(), false))
        }
    }
}

/// Runs an offer command against `channel` with `token`.
pub async fn run(command: OfferCommand, channel: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    let mut client = DecisionServiceClient::new(channel);
    match command {
        OfferCommand::Put(args) => {
            let source = Source::read(&args.file)?;
            let spec: OfferDef = source.parse()?;
            let offer = spec.checked("").map_err(|e| source.refusal(&e.to_string()))?;
            let catalogue = all_offers(&mut client, token, true, &[]).await?;
            let current = existing(&spec, &catalogue);
            if !spec.id.is_empty() && current.is_none() {
                return Err(source.error("id", &format!("no offer {}", spec.id)));
            }
            let (saved, created) = save(&mut client, token, &source, &spec, "", offer, current).await?;
            if args.json {
                return print_json(&saved);
            }
            let verb = if created { "created" } else { "updated" };
            println!("{verb} offer {} \"{}\" (version {})", saved.offer_id, saved.name, saved.version);
            print_offer(&saved);
            Ok(())
        }
        OfferCommand::List(args) => {
            let offers = all_offers(&mut client, token, args.archived, &args.tag).await?;
            if args.json {
                return print_json(&pb::ListOffersResponse { offers, page: None });
            }
            if offers.is_empty() {
                println!("no offers");
            }
            for o in &offers {
                println!(
                    "{}  v{:<3} {}{}",
                    o.offer_id,
                    o.version,
                    o.name,
                    if o.archived { "  (archived)" } else { "" }
                );
                print_offer(o);
            }
            Ok(())
        }
    }
}

fn print_offer(o: &pb::Offer) {
    let placements: Vec<String> = o
        .placements
        .iter()
        .map(|p| enum_name(PlacementKind::try_from(*p).map(|p| p.as_str_name()).unwrap_or("?"), "PLACEMENT_KIND_"))
        .collect();
    let content: Vec<String> = o
        .content
        .iter()
        .map(|c| {
            let ch = Channel::try_from(c.channel).map(|c| c.as_str_name()).unwrap_or("?");
            format!("{} {}", enum_name(ch, "CHANNEL_"), c.template_id)
        })
        .collect();
    let class = MessageClass::try_from(o.message_class).map(|c| c.as_str_name()).unwrap_or("?");
    println!(
        "  placements {}; content {}; value {}; weight {}; class {}",
        placements.join(", "),
        if content.is_empty() { "-".to_string() } else { content.join(", ") },
        money(o.business_value.as_ref()),
        o.weight,
        enum_name(class, "MESSAGE_CLASS_")
    );
    if !o.eligibility_rule.is_empty() {
        println!("  eligible when {}", o.eligibility_rule);
    }
    if o.valid_from.is_some() || o.valid_until.is_some() {
        println!("  valid {} to {}", time(o.valid_from.as_ref()), time(o.valid_until.as_ref()));
    }
    for c in &o.caps {
        let scope = if c.per_customer { "per customer" } else { "in total" };
        let window = if c.window_seconds > 0 { format!("per {} s", c.window_seconds) } else { "ever".to_string() };
        println!("  cap: {} {scope} {window}", c.max);
    }
    if !o.tags.is_empty() {
        println!("  tags {}", o.tags.join(", "));
    }
    if !o.updated_by.is_empty() {
        println!("  saved {} by {}", time(o.updated_at.as_ref()), o.updated_by);
    }
}
