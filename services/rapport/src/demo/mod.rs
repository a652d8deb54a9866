//! `rapport demo`: the whole suite in this process on embedded storage, playing a small sports retailer
//! (see [`world`]): its three systems' records of the same people arrive and identity merges them, the
//! permissions collected at sign-up, at the till and by the call centre are recorded (some withdrawn), and
//! months of browsing, carts and orders are tracked. Deterministic for a `--seed`.

pub mod campaigns;
pub mod world;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use rapport_proto::common::v1::{Channel, Identifier, IdentifierType, Provenance, Purpose};
use rapport_proto::consent::v1::{ConsentStatus, EntryInput, LegalBasis, Proof, ProofMethod, RecordRequest};
use rapport_proto::identity::v1::LookupRequest;
use rapport_proto::profile::v1::{Event, EventContext, IdentifyRequest, TrackRequest};
use rapport_rpc::Clients;
use rapport_rpc::convert::{json_to_struct, timestamp};

use world::{Person, World};

/// How `rapport demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    pub people: usize,
    /// Where the embedded databases and the sinks go; a fresh directory when not given.
    pub data_dir: Option<PathBuf>,
    /// Leave the suite serving afterwards.
    pub keep_running: bool,
}

fn email(v: &str) -> Identifier {
    ident(IdentifierType::Email, v, "")
}

fn ident(kind: IdentifierType, value: &str, namespace: &str) -> Identifier {
    Identifier { r#type: kind as i32, value: value.to_string(), namespace: namespace.to_string() }
}

fn at_days_ago(now_ms: i64, days: f64) -> prost_types::Timestamp {
    timestamp(now_ms - (days * 86_400_000.0) as i64)
}

/// How many nightly exports the systems' records arrive in: the store's, the CRM's, the CRM's old
/// duplicates, the web shop's. One export is loaded before the next starts, so which record makes a
/// person's customer (and so their customer id under a seed) is the same on every run.
const STAGES: usize = 4;

/// The records each system holds of a person, written the way that system writes them, each with the
/// export (stage) it arrives in.
fn source_records(p: &Person, now_ms: i64) -> Vec<(usize, IdentifyRequest)> {
    let mut records = Vec::new();
    let traits = |v: serde_json::Value| Some(json_to_struct(v));
    if p.in_store {
        // The till types the phone number in national format and knows the loyalty card.
        let national = format!("0{}", &p.phone[3..]);
        records.push((
            0,
            IdentifyRequest {
                identifiers: vec![
                    ident(IdentifierType::LoyaltyId, &p.loyalty_id, ""),
                    ident(IdentifierType::Phone, &national, ""),
                ],
                traits: traits(serde_json::json!({"first_name": p.first_name, "city": p.city, "loyalty_member": true})),
                source: "store-loyalty".into(),
                occurred_at: Some(at_days_ago(now_ms, 200.0)),
                ..Default::default()
            },
        ));
    }
    if p.in_crm {
        // The CRM keeps the email as it was typed once, in capitals, and the phone in E.164.
        records.push((1, IdentifyRequest {
            identifiers: vec![
                ident(IdentifierType::External, &p.crm_id, "crm"),
                email(&format!(" {} ", p.email.to_uppercase())),
                ident(IdentifierType::Phone, &p.phone, ""),
            ],
            traits: traits(serde_json::json!({
                "first_name": p.first_name, "last_name": p.last_name, "city": p.city, "country": "DE", "language": "de",
                "time_zone": "Europe/Berlin"
            })),
            source: "crm".into(),
            occurred_at: Some(at_days_ago(now_ms, 150.0)),
            ..Default::default()
        }));
    }
    if p.in_crm && p.index % 10 == 3 {
        // A duplicate in the CRM: entered again years later under a new id, same phone, a shortened name.
        records.push((
            2,
            IdentifyRequest {
                identifiers: vec![
                    ident(IdentifierType::External, &format!("{}-dup", p.crm_id), "crm"),
                    ident(IdentifierType::Phone, &p.phone, ""),
                ],
                traits: traits(serde_json::json!({"first_name": &p.first_name[..1], "last_name": p.last_name})),
                source: "crm".into(),
                occurred_at: Some(at_days_ago(now_ms, 400.0)),
                ..Default::default()
            },
        ));
    }
    if p.in_shop {
        let mut identifiers = vec![
            ident(IdentifierType::UserId, &p.web_user_id, ""),
            email(&p.email),
            ident(IdentifierType::AnonymousId, &p.cookie, ""),
        ];
        if p.in_store {
            // Members type their loyalty card number into their web shop account.
            identifiers.push(ident(IdentifierType::LoyaltyId, &p.loyalty_id, ""));
        }
        records.push((
            3,
            IdentifyRequest {
                identifiers,
                traits: traits(
                    serde_json::json!({"first_name": p.first_name, "last_name": p.last_name, "email_verified": true}),
                ),
                source: "webshop".into(),
                occurred_at: Some(at_days_ago(now_ms, 100.0)),
                ..Default::default()
            },
        ));
    }
    records
}

/// The identifiers a source system puts on the events it sends.
pub(crate) fn identifiers_for(p: &Person, source: &str) -> Vec<Identifier> {
    match source {
        "store-till" if p.in_store => vec![ident(IdentifierType::LoyaltyId, &p.loyalty_id, "")],
        _ if p.in_shop => vec![ident(IdentifierType::UserId, &p.web_user_id, "")],
        _ if p.in_crm => vec![ident(IdentifierType::External, &p.crm_id, "crm")],
        _ => vec![ident(IdentifierType::LoyaltyId, &p.loyalty_id, "")],
    }
}

fn consent_entry(p: &Person, c: &world::ConsentAct, now_ms: i64) -> EntryInput {
    let (channel, contact) = match c.channel {
        "sms" => (Channel::Sms, ident(IdentifierType::Phone, &p.phone, "")),
        "phone_call" => (Channel::PhoneCall, ident(IdentifierType::Phone, &p.phone, "")),
        _ => (Channel::Email, email(&p.email)),
    };
    let method = match c.method {
        "in_store" => ProofMethod::InStore,
        "recorded_call" => ProofMethod::RecordedCall,
        "unsubscribe_link" => ProofMethod::UnsubscribeLink,
        _ => ProofMethod::WebForm,
    };
    let status = match (c.granted, c.method) {
        (true, _) => ConsentStatus::Granted,
        (false, "unsubscribe_link") => ConsentStatus::Withdrawn,
        (false, _) => ConsentStatus::Denied,
    };
    EntryInput {
        contact_point: Some(contact),
        channel: channel as i32,
        purpose: Some(Purpose { name: "marketing".into() }),
        status: status as i32,
        legal_basis: LegalBasis::Consent as i32,
        provenance: Some(Provenance {
            source: c.source.into(),
            source_record_id: String::new(),
            actor: c.actor.clone(),
        }),
        proof: Some(Proof {
            notice_id: "privacy".into(),
            notice_version: "3".into(),
            method: method as i32,
            ip_address: if method == ProofMethod::WebForm {
                format!("192.0.2.{}", p.index % 250 + 1)
            } else {
                String::new()
            },
            ..Default::default()
        }),
        occurred_at: Some(at_days_ago(now_ms, c.days_ago)),
        region: "DE".into(),
        ..Default::default()
    }
}

/// What the ingest phase did, for the summary.
#[derive(Debug, Default)]
struct Ingested {
    records: usize,
    customers: usize,
    consents: usize,
    events: usize,
    rejected: usize,
    /// People whose records did not all end up in one customer.
    split_people: usize,
    /// The customer id of each person (of their first record's first identifier).
    customer_of: Vec<String>,
}

async fn ingest(clients: &Clients, world: &World, now_ms: i64) -> anyhow::Result<Ingested> {
    let mut done = Ingested::default();
    let profile = clients.profile()?;
    // The systems' records, one export after the other (store, CRM, CRM duplicates, web shop).
    let records: Vec<(usize, IdentifyRequest)> = world.people.iter().flat_map(|p| source_records(p, now_ms)).collect();
    done.records = records.len();
    for stage in 0..STAGES {
        let export = records.iter().filter(|(s, _)| *s == stage).map(|(_, r)| r.clone());
        let mut calls = futures::stream::iter(export.map(|r| {
            let mut profile = profile.clone();
            async move { profile.identify(r).await }
        }))
        .buffer_unordered(16);
        while let Some(result) = calls.next().await {
            result.map_err(|s| anyhow::anyhow!("identify: {}", s.message()))?;
        }
    }

    let consent = clients.consent()?;
    let entries: Vec<EntryInput> =
        world.consents.iter().map(|c| consent_entry(&world.people[c.person], c, now_ms)).collect();
    done.consents = entries.len();
    for chunk in entries.chunks(200) {
        consent
            .clone()
            .record(RecordRequest { entries: chunk.to_vec() })
            .await
            .map_err(|s| anyhow::anyhow!("consent record: {}", s.message()))?;
    }

    let events: Vec<Event> = world
        .acts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let p = &world.people[a.person];
            Event {
                message_id: format!("demo-{i}"),
                name: a.name.into(),
                occurred_at: Some(at_days_ago(now_ms, a.days_ago)),
                properties: Some(json_to_struct(a.properties.clone())),
                context: Some(EventContext {
                    source: a.source.into(),
                    channel: if a.source == "store-till" { Channel::Store } else { Channel::Web } as i32,
                    ..Default::default()
                }),
                identifiers: identifiers_for(p, a.source),
                ..Default::default()
            }
        })
        .collect();
    done.events = events.len();
    for chunk in events.chunks(500) {
        let response = profile
            .clone()
            .track(TrackRequest { events: chunk.to_vec() })
            .await
            .map_err(|s| anyhow::anyhow!("track: {}", s.message()))?
            .into_inner();
        done.rejected += response.rejected.len();
    }

    // How many customers the systems' records became: every identifier of a person should lead to one id.
    let identity = clients.identity()?;
    let mut customers = BTreeSet::new();
    for p in &world.people {
        let mut mine = BTreeSet::new();
        for (_, record) in source_records(p, now_ms) {
            for probe in record.identifiers {
                let found = identity
                    .clone()
                    .lookup(LookupRequest { identifier: Some(probe) })
                    .await
                    .map_err(|s| anyhow::anyhow!("lookup: {}", s.message()))?
                    .into_inner();
                if mine.is_empty() {
                    done.customer_of.push(found.customer_id.clone());
                }
                mine.insert(found.customer_id);
            }
        }
        if mine.len() > 1 {
            done.split_people += 1;
        }
        customers.extend(mine);
    }
    done.customers = customers.len();
    Ok(done)
}

/// A free TCP port on 127.0.0.1 (the HTTP port must be known before the suite starts: tracking links
/// point at it).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until every feed consumer of the suite has applied everything (their applied counters stand
/// still for a second), so what happened before a step is settled when it starts.
async fn settle(metrics_url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (None, Instant::now());
    loop {
        let (_, body) = crate::http_client::get(metrics_url).await?;
        let applied: f64 = body
            .lines()
            .filter(|l| l.starts_with("rapport_feed_records_applied_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if last != Some(applied) {
            (last, since) = (Some(applied), Instant::now());
        } else if since.elapsed() >= Duration::from_secs(1) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the suite's feeds did not settle in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What happened today, for the summary.
#[derive(Debug, Default)]
struct Today {
    opt_ins: usize,
    carts: usize,
    bought_anyway: usize,
    lapsed: usize,
}

/// Today: newcomers opt in (the welcome campaign's trigger), carts are filled and some bought after
/// all (the abandoned-cart trigger, and its re-check), and the lapsed high-value customers' last
/// orders turn 60 days old in a few seconds (the lapsed trigger).
async fn today(clients: &Clients, world: &World, now_ms: i64) -> anyhow::Result<Today> {
    let mut done = Today::default();
    let opt_ins: Vec<EntryInput> =
        world.newcomer_opt_ins().iter().map(|c| consent_entry(&world.people[c.person], c, now_ms)).collect();
    done.opt_ins = opt_ins.len();
    if !opt_ins.is_empty() {
        clients
            .consent()?
            .record(RecordRequest { entries: opt_ins })
            .await
            .map_err(|s| anyhow::anyhow!("consent record: {}", s.message()))?;
    }
    let event = |id: String, name: &str, at: i64, source: &str, p: &Person, properties: serde_json::Value| Event {
        message_id: id,
        name: name.into(),
        occurred_at: Some(timestamp(at)),
        properties: Some(json_to_struct(properties)),
        context: Some(EventContext {
            source: source.into(),
            channel: if source == "store-till" { Channel::Store } else { Channel::Web } as i32,
            ..Default::default()
        }),
        identifiers: identifiers_for(p, source),
        ..Default::default()
    };
    let carts: Vec<Event> = world
        .open_carts
        .iter()
        .map(|c| {
            event(
                format!("today-cart-{}", c.person),
                "cart_updated",
                now_ms,
                "webshop",
                &world.people[c.person],
                c.cart.clone(),
            )
        })
        .collect();
    let lapsed: Vec<Event> = world
        .lapsed_last_orders
        .iter()
        .map(|(person, order)| {
            // 60 days minus 4 seconds ago, at the till: the 60 quiet days end 4 seconds from now.
            let at = now_ms - 60 * 86_400_000 + 4_000;
            event(
                format!("today-last-order-{person}"),
                "order_completed",
                at,
                "store-till",
                &world.people[*person],
                order.clone(),
            )
        })
        .collect();
    done.carts = carts.len();
    done.lapsed = lapsed.len();
    let profile = clients.profile()?;
    for events in [carts, lapsed] {
        if !events.is_empty() {
            profile
                .clone()
                .track(TrackRequest { events })
                .await
                .map_err(|s| anyhow::anyhow!("track: {}", s.message()))?;
        }
    }
    // Half a second later some fill-ups become orders: the trigger's re-check finds them and sends nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let orders: Vec<Event> = world
        .open_carts
        .iter()
        .filter(|c| c.buys_anyway)
        .map(|c| {
            let items = c.cart["items"].clone();
            let revenue: i64 = items
                .as_array()
                .map(|a| {
                    a.iter().map(|i| i["price_minor"].as_i64().unwrap_or(0) * i["quantity"].as_i64().unwrap_or(0)).sum()
                })
                .unwrap_or(0);
            let order = serde_json::json!({"revenue_minor": revenue, "currency": "EUR", "items": items});
            event(
                format!("today-order-{}", c.person),
                "order_completed",
                now_ms + 500,
                "webshop",
                &world.people[c.person],
                order,
            )
        })
        .collect();
    done.bought_anyway = orders.len();
    if !orders.is_empty() {
        profile
            .clone()
            .track(TrackRequest { events: orders })
            .await
            .map_err(|s| anyhow::anyhow!("track: {}", s.message()))?;
    }
    Ok(done)
}

/// The secret the demo's delivery signs tracking links with, so the simulated recipients can follow them.
const TRACKING_SECRET: &str = "rapport-demo-tracking-secret-not-for-production";

/// Runs the demo and prints what happened.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = match &options.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("rapport-demo-{}-{}", options.seed, std::process::id())),
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("--data-dir {}", data_dir.display()))?;
    let http_port = free_port()?;
    let overrides = rapport_config::Overrides {
        data_dir: Some(data_dir.clone()),
        grpc_listen: Some("127.0.0.1:0".into()),
        http_listen: Some(format!("127.0.0.1:{http_port}")),
        services: None,
    };
    let base_url = format!("http://127.0.0.1:{http_port}");
    let env: Vec<(String, String)> = [
        ("IDENTITY__PHONE_DEFAULT_REGION", "DE".to_string()),
        // The same seed gives the same customer ids, so the same story.
        ("IDENTITY__CUSTOMER_ID_SEED", format!("rapport-demo-{}", options.seed)),
        ("TELEMETRY__LOG_FILTER", "warn".into()),
        // A demo's minutes are seconds: traits and segments re-evaluated every second, timers and schedules
        // polled often, the bandit's counts flushed at once, no quiet hours.
        ("PROFILE__EVALUATION_INTERVAL_SECONDS", "1".into()),
        ("PROFILE__HIGH_VALUE_TOP_SHARE", "0.2".into()),
        ("DECISION__TIMER_POLL_MS", "200".into()),
        ("DECISION__SCHEDULE_POLL_MS", "300".into()),
        ("DECISION__BANDIT_FLUSH_SECONDS", "0.2".into()),
        ("DELIVERY__QUIET_HOURS_START", "00:00".into()),
        ("DELIVERY__QUIET_HOURS_END", "00:00".into()),
        ("DELIVERY__POLL_INTERVAL_MS", "50".into()),
        ("DELIVERY__TRACKING_SECRET", TRACKING_SECRET.into()),
        ("DELIVERY__PUBLIC_BASE_URL", base_url.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("RAPPORT__{k}"), v))
    .collect();
    let settings = rapport_config::Settings::load_with_env(None, &overrides, env)?;
    let _telemetry = rapport_telemetry::init(&settings.telemetry)?;
    let server = crate::start(settings).await?;
    let metrics_url = format!("{base_url}/metrics");
    println!("rapport demo (seed {}): the suite runs in this process, data in {}", options.seed, data_dir.display());

    let world = World::generate(options.seed, options.people);
    let now_ms = rapport_storage::now_millis();
    let (crm, shop, store) = world.source_counts();
    let ingested = ingest(&server.clients, &world, now_ms).await?;
    println!();
    println!("== who is who");
    println!(
        "{} people, known to the CRM ({crm}), the web shop ({shop}) and the store loyalty scheme ({store}):",
        world.people.len()
    );
    println!(
        "{} source records became {} customers ({} people; {} of them still spread over several customers)",
        ingested.records,
        ingested.customers,
        world.people.len(),
        ingested.split_people
    );
    println!("== what they allowed");
    let withdrawn = world.consents.iter().filter(|c| !c.granted).count();
    println!(
        "{} consent entries recorded (sign-up web forms, store tills, call-centre calls), {withdrawn} of them refusals or withdrawals",
        ingested.consents
    );
    println!("== what they did");
    println!("{} events tracked (views, carts, orders), {} refused", ingested.events, ingested.rejected);

    // The past is settled before the campaigns start, so only today's events trigger them.
    settle(&metrics_url).await?;
    println!();
    println!("== the marketing team sets up");
    let setup = campaigns::set_up(&server.clients).await?;
    for line in &setup.lines {
        println!("{line}");
    }

    println!();
    println!("== today");
    let today_ms = rapport_storage::now_millis();
    let done = today(&server.clients, &world, today_ms).await?;
    println!(
        "{} newcomers opted in to email; {} carts filled ({} bought a moment later); {} high-value customers' last orders turn 60 days old",
        done.opt_ins, done.carts, done.bought_anyway, done.lapsed
    );
    let autumn = campaigns::schedule(&server.clients, &setup).await?;
    println!("{}", autumn.line);
    let sent = campaigns::wait_for_sends(&server.clients, &setup, &autumn, &metrics_url).await?;
    println!("{sent} emails sent; the customers open, click and buy:");
    let responses =
        campaigns::respond(&server.clients, &world, &ingested.customer_of, &data_dir, &base_url, options.seed, &autumn)
            .await?;
    println!("{responses}");
    campaigns::wait_for_outcomes(&server.clients, &setup, &autumn, &metrics_url).await?;

    println!();
    println!("== what it paid");
    campaigns::print_reports(&server.clients, &setup, &autumn).await?;
    println!();
    println!("the messages are files under {}", data_dir.join("outbox").display());
    println!("done in {:.1} s", started.elapsed().as_secs_f64());

    if options.keep_running {
        println!();
        println!("the suite keeps running; explore it from another terminal:");
        let flags = format!("--endpoint http://{} --data-dir {}", server.grpc_addr, data_dir.display());
        if let Some(p) = world.people.iter().find(|p| p.in_store && p.in_crm) {
            println!("  rapport profile get --phone {} {flags}", p.phone);
            println!("  rapport consent history --email {} {flags}", p.email);
        }
        println!("Ctrl-C stops it.");
        server.run_until_signal().await
    } else {
        tokio::time::timeout(Duration::from_secs(30), server.shutdown())
            .await
            .context("the suite did not stop in 30 s")??;
        Ok(())
    }
}
