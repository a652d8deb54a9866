//! The marketing side of `rapport demo`: the team's templates, contact policy and campaigns (three of the
//! shipped example campaigns, triggered, and an autumn newsletter to the runners segment with an A/B test
//! and a holdout), the customers answering the emails (opens and clicks through the real tracking links,
//! purchases tracked with the decision they follow, and some organic purchases), and the KPI reports.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rapport_decision::campaigns::definition::{CampaignFile, EXAMPLES};
use rapport_delivery::domain::tracking::LinkSigner;
use rapport_proto::common::v1::{Channel, CustomerRef, Money, customer_ref::Ref};
use rapport_proto::decision::v1 as pb;
use rapport_proto::delivery::v1 as delivery;
use rapport_proto::profile::v1 as profile;
use rapport_rpc::Clients;
use rapport_rpc::convert::{json_to_struct, timestamp};

use super::world::{CATALOGUE, World};

/// The templates: id, subject, the headline, where the button leads.
const TEMPLATES: [(&str, &str, &str); 5] = [
    ("tpl_abandoned_cart", "{{ profile.first_name }}, your cart is waiting", "cart"),
    ("tpl_win_back", "We miss you, {{ profile.first_name }}", "win-back"),
    ("tpl_welcome", "Welcome to the club, {{ profile.first_name }}", "welcome"),
    ("tpl_autumn_a", "Autumn running: 10% off your next pair", "autumn-a"),
    ("tpl_autumn_b", "Autumn running: free socks with every pair", "autumn-b"),
];

/// How recipients answer each template: P(open), P(click | open), P(buy | click).
fn response_rates(template_id: &str) -> (f64, f64, f64) {
    match template_id {
        "tpl_abandoned_cart" => (0.6, 0.5, 0.45),
        "tpl_win_back" => (0.5, 0.35, 0.4),
        "tpl_welcome" => (0.7, 0.4, 0.3),
        "tpl_autumn_a" => (0.55, 0.4, 0.5),
        "tpl_autumn_b" => (0.65, 0.5, 0.55),
        _ => (0.3, 0.2, 0.1),
    }
}

/// The chance that a runner buys in the autumn campaign's days without (or despite not) clicking: what the
/// holdout measures the campaign against.
const ORGANIC_PURCHASE: f64 = 0.06;

/// The triggered example campaigns the demo runs, with the wait it gives each (the abandoned cart's hour
/// and the welcome's five minutes become seconds; the lapsed trigger keeps its 60 days, and today's events
/// are dated so that they end now).
const TRIGGERED: [(&str, Option<i64>); 3] =
    [("abandoned_cart.toml", Some(3)), ("welcome_after_opt_in.toml", Some(2)), ("lapsed_high_value.toml", None)];

/// What the team set up.
#[derive(Debug)]
pub struct Setup {
    /// What to print.
    pub lines: Vec<String>,
    /// The triggered campaigns: name and id.
    pub triggered: Vec<(String, String)>,
}

/// The autumn newsletter.
#[derive(Debug)]
pub struct Autumn {
    pub line: String,
    pub campaign_id: String,
    pub experiment_id: String,
    /// When it runs (milliseconds).
    pub at_ms: i64,
}

fn status(what: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow::anyhow!("{what}: {:?}: {}", s.code(), s.message())
}

fn by_id(id: &str) -> Option<CustomerRef> {
    Some(CustomerRef { r#ref: Some(Ref::CustomerId(id.to_string())) })
}

fn euros(m: Option<&Money>) -> String {
    let minor = m.map_or(0, |m| m.minor_units);
    format!("€{}.{:02}", minor / 100, minor % 100)
}

async fn put_templates(clients: &Clients) -> anyhow::Result<()> {
    let mut d = clients.delivery()?;
    for (id, subject, slug) in TEMPLATES {
        let html = format!(
            "<p>Hallo {{{{ profile.first_name }}}},</p><p>{{{{ offer.title }}}}</p>\
             <p><a href=\"https://shop.example/{slug}\">To the shop</a></p>\
             <p><small><a href=\"{{{{ message.unsubscribe_url }}}}\">Unsubscribe</a></small></p>"
        );
        let text = format!(
            "Hallo {{{{ profile.first_name }}}},\n{{{{ offer.title }}}}\nhttps://shop.example/{slug}\n\
             Unsubscribe: {{{{ message.unsubscribe_url }}}}"
        );
        d.put_template(delivery::PutTemplateRequest {
            template: Some(delivery::Template {
                template_id: id.into(),
                name: id.trim_start_matches("tpl_").replace('_', " "),
                channel: Channel::Email as i32,
                locales: vec![delivery::LocalizedContent { locale: "en".into(), subject: subject.into(), html, text }],
                ..Default::default()
            }),
        })
        .await
        .map_err(status("put template"))?;
    }
    Ok(())
}

/// Creates `offers` (their name becomes `offer.title` in the template) and returns their ids.
async fn create_offers(clients: &Clients, offers: Vec<pb::Offer>) -> anyhow::Result<Vec<String>> {
    let mut d = clients.decision()?;
    let mut ids = Vec::new();
    for mut offer in offers {
        for content in &mut offer.content {
            content.variables = Some(json_to_struct(serde_json::json!({"offer": {"title": offer.name}})));
        }
        let created =
            d.create_offer(pb::CreateOfferRequest { offer: Some(offer) }).await.map_err(status("create offer"))?;
        ids.push(created.into_inner().offer_id);
    }
    Ok(ids)
}

/// Templates, the contact policy and the triggered campaigns, all running.
pub async fn set_up(clients: &Clients) -> anyhow::Result<Setup> {
    put_templates(clients).await?;
    let mut d = clients.decision()?;
    d.put_contact_policy(pb::PutContactPolicyRequest {
        policy: Some(pb::ContactPolicy {
            channel: Channel::Email as i32,
            message_class: rapport_proto::common::v1::MessageClass::Marketing as i32,
            max: 3,
            window_seconds: 86_400,
            ..Default::default()
        }),
    })
    .await
    .map_err(status("contact policy"))?;
    let mut setup = Setup {
        lines: vec![format!(
            "{} email templates; contact policy: at most 3 marketing emails a day per customer",
            TEMPLATES.len()
        )],
        triggered: Vec::new(),
    };
    for (file, wait) in TRIGGERED {
        let text = EXAMPLES.iter().find(|(name, _)| *name == file).map(|(_, t)| *t).unwrap_or_default();
        let mut def = CampaignFile::parse(text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        if let Some(seconds) = wait {
            def.campaign.wait_seconds = seconds;
        }
        // The same customers are held out on every run of the same seed.
        def.campaign.holdout_salt = format!("demo:{file}");
        let offers = create_offers(clients, def.offers().map_err(anyhow::Error::msg)?).await?;
        let mut campaign = def.campaign(offers).map_err(anyhow::Error::msg)?;
        campaign.state = pb::CampaignState::Running as i32;
        let created = d
            .create_campaign(pb::CreateCampaignRequest { campaign: Some(campaign) })
            .await
            .map_err(status("create campaign"))?
            .into_inner();
        let wait = match created.wait_seconds {
            s if s >= 86_400 => format!("{} days", s / 86_400),
            s => format!("{s} s"),
        };
        setup.lines.push(format!(
            "campaign \"{}\": when {} happens, wait {wait}, re-check, email; {:.0}% held out",
            created.name,
            created.trigger_events.join(", "),
            created.holdout_share * 100.0
        ));
        setup.triggered.push((created.name, created.campaign_id));
    }
    Ok(setup)
}

/// The autumn newsletter: the runners segment (waited for until its evaluation settles), two offers in an
/// A/B test, a 20% holdout, scheduled a few seconds from now.
pub async fn schedule(clients: &Clients, _setup: &Setup) -> anyhow::Result<Autumn> {
    let mut p = clients.profile()?;
    let segment = p
        .create_segment(profile::CreateSegmentRequest {
            segment: Some(profile::Segment {
                name: "runners".into(),
                rule: "'running' in profile.computed.interests".into(),
                description: "customers who looked at or bought running shoes".into(),
                ..Default::default()
            }),
        })
        .await
        .map_err(status("create segment"))?
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = -1;
    let members = loop {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let now = p
            .get_segment(profile::GetSegmentRequest { segment_id: segment.segment_id.clone() })
            .await
            .map_err(status("get segment"))?
            .into_inner()
            .member_count;
        if now > 0 && now == last {
            break now;
        }
        anyhow::ensure!(Instant::now() < deadline, "the runners segment did not settle in 30 s");
        last = now;
    };
    let offer = |name: &str, template: &str, value: i64| pb::Offer {
        name: name.into(),
        content: vec![pb::ChannelContent {
            channel: Channel::Email as i32,
            template_id: template.into(),
            variables: None,
        }],
        placements: vec![pb::PlacementKind::Email as i32],
        business_value: Some(Money { currency: "EUR".into(), minor_units: value }),
        tags: vec!["autumn".into()],
        ..Default::default()
    };
    let ids = create_offers(
        clients,
        vec![
            offer("10% off your next pair", "tpl_autumn_a", 1_200),
            offer("Free socks with every pair", "tpl_autumn_b", 1_300),
        ],
    )
    .await?;
    let mut d = clients.decision()?;
    let experiment = d
        .create_experiment(pb::CreateExperimentRequest {
            experiment: Some(pb::Experiment {
                name: "autumn: discount or socks".into(),
                arms: vec![
                    pb::Arm { name: "a".into(), weight: 1.0, offer_id: ids[0].clone() },
                    pb::Arm { name: "b".into(), weight: 1.0, offer_id: ids[1].clone() },
                ],
                salt: "autumn-2026".into(),
                ..Default::default()
            }),
        })
        .await
        .map_err(status("create experiment"))?
        .into_inner();
    // The cron expression of one second, three seconds from now (UTC).
    let at_ms = (rapport_storage::now_millis() / 1000 + 3) * 1000;
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
    let cron = at.format("%-S %-M %-H %-d %-m *").to_string();
    let campaign = d
        .create_campaign(pb::CreateCampaignRequest {
            campaign: Some(pb::Campaign {
                name: "Autumn running".into(),
                kind: pb::CampaignKind::Scheduled as i32,
                schedule: cron,
                segment_id: segment.segment_id.clone(),
                placement: pb::PlacementKind::Email as i32,
                channel: Channel::Email as i32,
                offer_ids: ids,
                holdout_share: 0.2,
                holdout_salt: "demo:autumn-running".into(),
                experiment_id: experiment.experiment_id.clone(),
                state: pb::CampaignState::Running as i32,
                ..Default::default()
            }),
        })
        .await
        .map_err(status("create campaign"))?
        .into_inner();
    Ok(Autumn {
        line: format!(
            "campaign \"Autumn running\": the {members} customers of segment runners, A/B test (a: 10% off, b: free socks), \
             20% held out, scheduled three seconds from now"
        ),
        campaign_id: campaign.campaign_id,
        experiment_id: experiment.experiment_id,
        at_ms,
    })
}

async fn report(clients: &Clients, subject: pb::report_request::Subject) -> anyhow::Result<pb::ReportResponse> {
    Ok(clients
        .decision()?
        .report(pb::ReportRequest { subject: Some(subject), range: None })
        .await
        .map_err(status("report"))?
        .into_inner())
}

fn campaign_ids<'a>(setup: &'a Setup, autumn: &'a Autumn) -> impl Iterator<Item = &'a str> {
    setup.triggered.iter().map(|(_, id)| id.as_str()).chain(std::iter::once(autumn.campaign_id.as_str()))
}

/// The "all" group of every campaign, summed.
async fn totals(clients: &Clients, setup: &Setup, autumn: &Autumn) -> anyhow::Result<pb::Kpis> {
    let mut sum = pb::Kpis::default();
    for id in campaign_ids(setup, autumn) {
        let r = report(clients, pb::report_request::Subject::CampaignId(id.to_string())).await?;
        if let Some(all) = r.groups.iter().find(|g| g.group == "all") {
            sum.decisions += all.decisions;
            sum.sends += all.sends;
            sum.opens += all.opens;
            sum.clicks += all.clicks;
            sum.conversions += all.conversions;
        }
    }
    Ok(sum)
}

/// Waits until every trigger's wait and the schedule are past and the decisions and sends stop growing;
/// returns how many emails went out.
pub async fn wait_for_sends(
    clients: &Clients,
    setup: &Setup,
    autumn: &Autumn,
    metrics_url: &str,
) -> anyhow::Result<i64> {
    let past = autumn.at_ms.max(rapport_storage::now_millis() + 4_500) + 1_000;
    let wait = (past - rapport_storage::now_millis()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (-1, -1);
    loop {
        super::settle(metrics_url).await?;
        let t = totals(clients, setup, autumn).await?;
        if (t.decisions, t.sends) == last && t.decisions > 0 {
            return Ok(t.sends);
        }
        anyhow::ensure!(Instant::now() < deadline, "the campaigns' sends did not settle in 60 s");
        last = (t.decisions, t.sends);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the recipients did.
#[derive(Debug, Default)]
pub struct Responses {
    pub opens: i64,
    pub clicks: i64,
    pub purchases: i64,
    pub organic: i64,
}

impl std::fmt::Display for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} opens and {} clicks (through the tracking links), {} purchases after a click, {} runners bought without one",
            self.opens, self.clicks, self.purchases, self.organic
        )
    }
}

/// A generator of its own for each person and subject, so what one recipient does does not depend on the
/// order the messages are read in.
fn rng_for(seed: u64, person: usize, subject: &str) -> StdRng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in person.to_le_bytes().iter().chain(subject.as_bytes()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    StdRng::seed_from_u64(h)
}

fn purchase(
    rng: &mut StdRng,
    world: &World,
    person: usize,
    id: String,
    decision: (&str, &str, &str),
) -> profile::Event {
    let p = &world.people[person];
    let favourite: Vec<_> = CATALOGUE.iter().filter(|(_, c, _)| *c == p.favourite).collect();
    let (sku, category, price) =
        favourite.get(rng.random_range(0..favourite.len().max(1))).map_or(CATALOGUE[0], |x| **x);
    let quantity = rng.random_range(1..=2);
    let (decision_id, offer_id, campaign_id) = decision;
    profile::Event {
        message_id: id,
        name: "order_completed".into(),
        occurred_at: Some(timestamp(rapport_storage::now_millis())),
        properties: Some(json_to_struct(serde_json::json!({
            "revenue_minor": price * quantity, "currency": "EUR",
            "items": [{"sku": sku, "category": category, "price_minor": price, "quantity": quantity}],
        }))),
        context: Some(profile::EventContext {
            source: "webshop".into(),
            channel: Channel::Web as i32,
            decision_id: decision_id.into(),
            offer_id: offer_id.into(),
            campaign_id: campaign_id.into(),
            ..Default::default()
        }),
        identifiers: super::identifiers_for(p, "webshop"),
        ..Default::default()
    }
}

/// The recipients read their email (the files the sink wrote): some open it (the pixel), some click (the
/// signed redirect), some of those buy (an order tracked with the decision); and runners of the autumn
/// campaign, held out or not, buy without any email at the organic rate.
pub async fn respond(
    clients: &Clients,
    world: &World,
    customer_of: &[String],
    data_dir: &Path,
    base_url: &str,
    seed: u64,
    autumn: &Autumn,
) -> anyhow::Result<Responses> {
    let person_of: HashMap<&str, usize> = customer_of.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let signer = LinkSigner::new(super::TRACKING_SECRET.as_bytes().to_vec(), base_url);
    let mut messages = Vec::new();
    let dir = data_dir.join("outbox").join("email");
    let mut d = clients.delivery()?;
    if dir.exists() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(id) =
                path.file_stem().and_then(|s| s.to_str()).filter(|_| path.extension().is_some_and(|e| e == "eml"))
            else {
                continue;
            };
            let m = d
                .get_message(delivery::GetMessageRequest { message_id: id.to_string() })
                .await
                .map_err(status("get message"))?
                .into_inner();
            if let Some(&person) = person_of.get(m.customer_id.as_str()) {
                messages.push((person, m));
            }
        }
    }
    messages.sort_by(|a, b| (a.0, &a.1.template_id).cmp(&(b.0, &b.1.template_id)));
    let mut done = Responses::default();
    let mut orders = Vec::new();
    let mut bought = std::collections::HashSet::new();
    for (person, m) in &messages {
        let mut rng = rng_for(seed, *person, &m.template_id);
        let (open, click, buy) = response_rates(&m.template_id);
        if !rng.random_bool(open) {
            continue;
        }
        let (code, _) = crate::http_client::get(&signer.open_url(&m.message_id)).await?;
        anyhow::ensure!(code == 200, "the open pixel answered {code}");
        done.opens += 1;
        if !rng.random_bool(click) {
            continue;
        }
        let (code, _) = crate::http_client::get(&signer.click_url(&m.message_id, "https://shop.example/")).await?;
        anyhow::ensure!(code == 302, "the click link answered {code}");
        done.clicks += 1;
        if rng.random_bool(buy) {
            done.purchases += 1;
            bought.insert(*person);
            let id = format!("demo-buy-{}", m.message_id);
            orders.push(purchase(&mut rng, world, *person, id, (&m.decision_id, &m.offer_id, &m.campaign_id)));
        }
    }
    // Organic purchases of the autumn campaign's audience, attributed to their decision (held out or not).
    let mut dec = clients.decision()?;
    for (person, customer) in customer_of.iter().enumerate() {
        if bought.contains(&person) {
            continue;
        }
        let decisions = dec
            .list_decisions(pb::ListDecisionsRequest { customer: by_id(customer), page: None })
            .await
            .map_err(status("list decisions"))?
            .into_inner()
            .decisions;
        let Some(decision) = decisions.iter().find(|x| x.campaign_id == autumn.campaign_id) else { continue };
        let mut rng = rng_for(seed, person, "organic");
        if rng.random_bool(ORGANIC_PURCHASE) {
            done.organic += 1;
            let id = format!("demo-organic-{}", decision.decision_id);
            orders.push(purchase(&mut rng, world, person, id, (&decision.decision_id, "", &autumn.campaign_id)));
        }
    }
    if !orders.is_empty() {
        clients.profile()?.track(profile::TrackRequest { events: orders }).await.map_err(status("track purchases"))?;
    }
    Ok(done)
}

/// Waits until the engagement and the orders reached the reports.
pub async fn wait_for_outcomes(
    clients: &Clients,
    setup: &Setup,
    autumn: &Autumn,
    metrics_url: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        super::settle(metrics_url).await?;
        let t = totals(clients, setup, autumn).await?;
        let now = (t.opens, t.clicks, t.conversions);
        if last == Some(now) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the outcomes did not reach the reports in 60 s");
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_groups(groups: &[pb::Kpis]) {
    println!(
        "  {:<10} {:>9} {:>6} {:>6} {:>7} {:>6} {:>11} {:>10} {:>9} {:>9}",
        "group", "decisions", "sends", "opens", "CTR", "conv.", "conv. rate", "revenue", "AOV", "rev/recip."
    );
    for g in groups {
        println!(
            "  {:<10} {:>9} {:>6} {:>6} {:>6.1}% {:>6} {:>10.1}% {:>10} {:>9} {:>9}",
            g.group,
            g.decisions,
            g.sends,
            g.opens,
            g.click_through_rate * 100.0,
            g.conversions,
            g.conversion_rate * 100.0,
            euros(g.revenue.as_ref()),
            euros(g.average_order_value.as_ref()),
            euros(g.revenue_per_recipient.as_ref()),
        );
    }
}

fn print_uplift(r: &pb::ReportResponse, against: &str) {
    match &r.uplift {
        Some(u) => println!(
            "  uplift in conversion rate against {against}: {:+.1} points (95% interval {:+.1} to {:+.1})",
            u.value * 100.0,
            u.low * 100.0,
            u.high * 100.0
        ),
        None => println!("  uplift: not measurable (nobody in {against})"),
    }
}

/// The KPI report of every campaign, and of the autumn experiment by arm.
pub async fn print_reports(clients: &Clients, setup: &Setup, autumn: &Autumn) -> anyhow::Result<()> {
    let names = setup.triggered.iter().map(|(n, id)| (n.as_str(), id.as_str()));
    for (name, id) in names.chain(std::iter::once(("Autumn running", autumn.campaign_id.as_str()))) {
        let r = report(clients, pb::report_request::Subject::CampaignId(id.to_string())).await?;
        println!("campaign \"{name}\"");
        print_groups(&r.groups);
        print_uplift(&r, "the holdout");
    }
    let r = report(clients, pb::report_request::Subject::ExperimentId(autumn.experiment_id.clone())).await?;
    println!("experiment \"autumn: discount or socks\" (a: 10% off, b: free socks)");
    print_groups(&r.groups);
    print_uplift(&r, "the holdout");
    println!(
        "  sample-ratio check: p = {:.3} (a small p means the split is not the one configured)",
        r.sample_ratio_p_value
    );
    Ok(())
}
