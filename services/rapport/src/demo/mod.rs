//! `rapport demo`: the whole suite in this process on embedded storage, playing a small sports retailer
//! (see [`world`]): its three systems' records of the same people arrive and identity merges them, the
//! permissions collected at sign-up, at the till and by the call centre are recorded (some withdrawn), and
//! months of browsing, carts and orders are tracked. Deterministic for a `--seed`.

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

/// The records each system holds of a person, written the way that system writes them.
fn source_records(p: &Person, now_ms: i64) -> Vec<IdentifyRequest> {
    let mut records = Vec::new();
    let traits = |v: serde_json::Value| Some(json_to_struct(v));
    if p.in_store {
        // The till types the phone number in national format and knows the loyalty card.
        let national = format!("0{}", &p.phone[3..]);
        records.push(IdentifyRequest {
            identifiers: vec![
                ident(IdentifierType::LoyaltyId, &p.loyalty_id, ""),
                ident(IdentifierType::Phone, &national, ""),
            ],
            traits: traits(serde_json::json!({"first_name": p.first_name, "city": p.city, "loyalty_member": true})),
            source: "store-loyalty".into(),
            occurred_at: Some(at_days_ago(now_ms, 200.0)),
            ..Default::default()
        });
    }
    if p.in_crm {
        // The CRM keeps the email as it was typed once, in capitals, and the phone in E.164.
        records.push(IdentifyRequest {
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
        });
    }
    if p.in_crm && p.index % 10 == 3 {
        // A duplicate in the CRM: entered again years later under a new id, same phone, a shortened name.
        records.push(IdentifyRequest {
            identifiers: vec![
                ident(IdentifierType::External, &format!("{}-dup", p.crm_id), "crm"),
                ident(IdentifierType::Phone, &p.phone, ""),
            ],
            traits: traits(serde_json::json!({"first_name": &p.first_name[..1], "last_name": p.last_name})),
            source: "crm".into(),
            occurred_at: Some(at_days_ago(now_ms, 400.0)),
            ..Default::default()
        });
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
        records.push(IdentifyRequest {
            identifiers,
            traits: traits(
                serde_json::json!({"first_name": p.first_name, "last_name": p.last_name, "email_verified": true}),
            ),
            source: "webshop".into(),
            occurred_at: Some(at_days_ago(now_ms, 100.0)),
            ..Default::default()
        });
    }
    records
}

/// The identifiers a source system puts on the events it sends.
fn identifiers_for(p: &Person, source: &str) -> Vec<Identifier> {
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
}

async fn ingest(clients: &Clients, world: &World, now_ms: i64) -> anyhow::Result<Ingested> {
    let mut done = Ingested::default();
    let profile = clients.profile()?;
    // The systems' records, one system after the other (store, CRM, web shop), as nightly exports would.
    let records: Vec<IdentifyRequest> = world.people.iter().flat_map(|p| source_records(p, now_ms)).collect();
    done.records = records.len();
    let mut calls = futures::stream::iter(records.into_iter().map(|r| {
        let mut profile = profile.clone();
        async move { profile.identify(r).await }
    }))
    .buffer_unordered(16);
    while let Some(result) = calls.next().await {
        result.map_err(|s| anyhow::anyhow!("identify: {}", s.message()))?;
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
        for record in source_records(p, now_ms) {
            for probe in record.identifiers {
                let found = identity
                    .clone()
                    .lookup(LookupRequest { identifier: Some(probe) })
                    .await
                    .map_err(|s| anyhow::anyhow!("lookup: {}", s.message()))?
                    .into_inner();
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

/// Runs the demo and prints what happened.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = match &options.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("rapport-demo-{}-{}", options.seed, std::process::id())),
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("--data-dir {}", data_dir.display()))?;
    let overrides = rapport_config::Overrides {
        data_dir: Some(data_dir.clone()),
        grpc_listen: Some("127.0.0.1:0".into()),
        http_listen: Some("127.0.0.1:0".into()),
        services: None,
    };
    let env = vec![
        ("RAPPORT__IDENTITY__PHONE_DEFAULT_REGION".to_string(), "DE".to_string()),
        ("RAPPORT__TELEMETRY__LOG_FILTER".to_string(), "warn".to_string()),
    ];
    let settings = rapport_config::Settings::load_with_env(None, &overrides, env)?;
    let _telemetry = rapport_telemetry::init(&settings.telemetry)?;
    let server = crate::start(settings).await?;
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
    println!();
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
