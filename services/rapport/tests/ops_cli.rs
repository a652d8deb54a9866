//! The client commands for people, run as an operator would against a running suite: import customers
//! and events from CSV through a mapping (bad rows reported by line, a re-run stores nothing twice),
//! look the customer up, record and check consent, show the timeline; text and `--json` output. And
//! what a marketer does: offers and campaigns from TOML and JSON files (a bad file refused with the file,
//! the line and the field, and nothing stored), the catalogue and the campaign list, a test message
//! through delivery (in the file sink; blocked without consent), a campaign's report with its holdout.

use rapport_proto::common::v1::{Channel, CustomerRef, Identifier, IdentifierType, Money, customer_ref::Ref};
use rapport_proto::decision::v1::{self as decision, decision_service_client::DecisionServiceClient};
use rapport_proto::delivery::v1::{self as delivery, delivery_service_client::DeliveryServiceClient};
use rapport_proto::profile::v1::{IdentifyRequest, profile_service_client::ProfileServiceClient};
use rapport_rpc::convert::json_to_struct;
use rapport_testkit::TestSuite;

struct Cli<'a> {
    suite: &'a TestSuite,
}

impl Cli<'_> {
    /// Runs `rapport ARGS --endpoint ... --token ...`; the exit status, stdout and stderr.
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
            .args(args)
            .args(["--endpoint", &self.suite.grpc_url, "--token", &self.suite.admin_token])
            .env_remove("RUST_LOG")
            .output()
            .await
            .expect("the binary runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "rapport {args:?} failed: {err}\n{out}");
        out
    }

    /// Records a marketing grant on `channel` for `who` (`--email X`, `--customer ID`).
    async fn grant(&self, who: &[&str], channel: &str) {
        let notice = ["--notice", "privacy", "--notice-version", "1"];
        let args: Vec<&str> = ["consent", "record"].into_iter().chain(who.iter().copied()).collect();
        let args = [args.as_slice(), &["--channel", channel, "--status", "granted"], &notice].concat();
        self.ok(&args).await;
    }

    /// Runs a command that must fail; its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(!ok, "rapport {args:?} should have failed: {out}");
        err
    }

    async fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("rapport {args:?} printed no JSON ({e}): {out}"))
    }
}

#[tokio::test]
async fn an_operator_imports_looks_up_and_records_consent() {
    let suite = TestSuite::start().await;
    let cli = Cli { suite: &suite };
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let path = |name: &str| d.join(name).to_str().expect("utf-8 path").to_string();

    std::fs::write(
        d.join("customers.csv"),
        "id,mail,given,town,vip\n\
         c1,lena.ops@example.com,Lena,Hamburg,yes\n\
         c2,omar.ops@example.com,Omar,Köln\n\
         ,,Nobody,Bremen,no\n\
         c4,ida.ops@example.com,Ida,Kiel,perhaps\n\
         c5,not-an-email,Max,Ulm,no\n",
    )
    .unwrap();
    std::fs::write(
        d.join("customers.toml"),
        "source = \"crm\"\n[identifiers]\nemail = \"mail\"\n\"external:crm\" = \"id\"\n\
         [traits]\nfirst_name = \"given\"\ncity = \"town\"\nvip = { column = \"vip\", type = \"bool\" }\n",
    )
    .unwrap();
    let args =
        ["import", "customers", "--file", &path("customers.csv"), "--mapping", &path("customers.toml"), "--json"];
    let summary = cli.json(&args).await;
    assert_eq!(summary["rows"], 5, "{summary}");
    assert_eq!(summary["imported"], 1, "{summary}");
    let rejected: Vec<(u64, String)> = summary["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["reason"].as_str().unwrap().to_string()))
        .collect();
    let lines: Vec<u64> = rejected.iter().map(|r| r.0).collect();
    assert_eq!(lines, vec![3, 4, 5, 6], "{rejected:?}");
    assert!(rejected[0].1.contains("field"), "wrong number of fields: {}", rejected[0].1);
    assert!(rejected[1].1.contains("identifier"), "{}", rejected[1].1);
    assert!(rejected[2].1.contains("vip") && rejected[2].1.contains("perhaps"), "{}", rejected[2].1);
    assert!(
        rejected[3].1.contains("INVALID_ARGUMENT") || rejected[3].1.contains("InvalidArgument"),
        "{}",
        rejected[3].1
    );
    assert!(rejected[3].1.contains("identifiers"), "the server's reason names the field: {}", rejected[3].1);

    // The same file again stores nothing new.
    let again = cli.json(&args).await;
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["already_stored"], 1, "{again}");

    std::fs::write(
        d.join("orders.csv"),
        "order,mail,at,total,cur\n\
         o1,lena.ops@example.com,2026-11-20T10:00:00Z,4999,EUR\n\
         o2,lena.ops@example.com,2026-11-21,2500,EUR\n\
         o3,lena.ops@example.com,yesterday,100,EUR\n",
    )
    .unwrap();
    std::fs::write(
        d.join("orders.toml"),
        "source = \"shop\"\n[identifiers]\nemail = \"mail\"\n\
         [event]\nname_value = \"order_completed\"\noccurred_at = \"at\"\nmessage_id = \"order\"\n\
         [properties]\nrevenue_minor = { column = \"total\", type = \"int\" }\ncurrency = \"cur\"\n",
    )
    .unwrap();
    let out = cli.ok(&["import", "events", "--file", &path("orders.csv"), "--mapping", &path("orders.toml")]).await;
    assert!(out.contains("3 rows read, 2 imported"), "{out}");
    assert!(out.contains(":4:") && out.contains("`at`"), "the bad time is reported with its line and column: {out}");

    let profile = cli.json(&["profile", "get", "--email", "lena.ops@example.com", "--json"]).await;
    assert_eq!(profile["traits"]["city"], "Hamburg", "{profile}");
    assert_eq!(profile["traits"]["vip"], true, "{profile}");
    assert_eq!(profile["computed"]["orderCount"], "2", "{profile}");
    let text = cli.ok(&["profile", "get", "--id", "external:crm:c1"]).await;
    assert!(text.contains("orders 2, revenue 74.99 EUR"), "{text}");
    assert!(text.contains("city: Hamburg"), "{text}");

    let recorded = cli
        .ok(&[
            "consent",
            "record",
            "--email",
            "lena.ops@example.com",
            "--channel",
            "email",
            "--status",
            "granted",
            "--source",
            "store-till",
            "--actor",
            "clerk-17",
            "--method",
            "in_store",
            "--notice",
            "privacy",
            "--notice-version",
            "4",
        ])
        .await;
    assert!(recorded.contains("recorded"), "{recorded}");
    let check =
        cli.ok(&["consent", "check", "--email", "lena.ops@example.com", "--channel", "email", "--region", "DE"]).await;
    assert!(check.starts_with("allowed (granted)"), "{check}");
    let denied =
        cli.ok(&["consent", "check", "--email", "omar.ops@example.com", "--channel", "sms", "--region", "DE"]).await;
    assert!(denied.starts_with("NOT allowed"), "{denied}");
    let history = cli.json(&["consent", "history", "--email", "lena.ops@example.com", "--json"]).await;
    assert_eq!(history["entries"].as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(history["entries"][0]["provenance"]["actor"], "clerk-17", "{history}");

    let (ok, _, err) = cli.run(&["consent", "check", "--email", "lena.ops@example.com", "--channel", "pigeon"]).await;
    assert!(!ok && err.contains("--channel") && err.contains("pigeon"), "{err}");

    let timeline =
        cli.ok(&["profile", "timeline", "--email", "lena.ops@example.com", "--name", "order_completed"]).await;
    assert_eq!(timeline.lines().filter(|l| l.contains("order_completed")).count(), 2, "{timeline}");

    let (ok, _, err) = cli.run(&["profile", "get", "--email", "nobody.ops@example.com"]).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    suite.stop().await;
}

/// A customer with an email address and a first name, known to identity and profile.
async fn customer(suite: &TestSuite, email: &str, first_name: &str) -> String {
    let mut profiles = ProfileServiceClient::new(suite.channel().await);
    let identifier = Identifier { r#type: IdentifierType::Email as i32, value: email.into(), namespace: String::new() };
    profiles
        .identify(suite.admin(IdentifyRequest {
            identifiers: vec![identifier],
            traits: Some(json_to_struct(serde_json::json!({"first_name": first_name, "language": "en"}))),
            source: "crm".into(),
            ..Default::default()
        }))
        .await
        .expect("identify")
        .into_inner()
        .customer_id
}

fn offer_count(list: &serde_json::Value) -> usize {
    list["offers"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_marketer_defines_offers_and_campaigns_sends_a_test_and_reads_the_report() {
    let suite = TestSuite::start().await;
    let cli = Cli { suite: &suite };
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().expect("utf-8 path").to_string()
    };

    // An offer from TOML: created, listed, and a second put saves version 2 of the same offer.
    let winter = "name = \"Winter coats\"\nplacements = [\"email\", \"web_banner\"]\nchannel = \"email\"\n\
                  template_id = \"welcome\"\nvariables = { title = \"20% off coats\" }\n\
                  eligibility_rule = \"profile.traits.first_name != ''\"\nvalue_minor = 2500\ncurrency = \"EUR\"\n\
                  tags = [\"winter\"]\n[[caps]]\nmax = 1\nper_customer = true\nwindow_seconds = 86400\n";
    let file = write("winter.toml", winter);
    let out = cli.ok(&["offer", "put", "--file", &file]).await;
    assert!(out.starts_with("created offer off_") && out.contains("(version 1)"), "{out}");
    assert!(out.contains("placements email, web_banner") && out.contains("value 25.00 EUR"), "{out}");
    assert!(out.contains("cap: 1 per customer per 86400 s"), "{out}");
    let again =
        cli.json(&["offer", "put", "--file", &write("winter.toml", &winter.replace("2500", "3000")), "--json"]).await;
    assert_eq!(again["version"], "2", "{again}");
    assert_eq!(again["businessValue"]["minorUnits"], "3000", "{again}");
    assert_eq!(again["content"][0]["variables"]["title"], "20% off coats", "{again}");
    // The same from JSON, with one [[content]] per channel.
    let json = write(
        "banner.json",
        "{\n  \"name\": \"Store banner\",\n  \"placements\": [\"web_banner\"],\n  \"content\": [\n    \
         {\"channel\": \"web\", \"template_id\": \"banner\"}\n  ],\n  \"weight\": 2.5\n}\n",
    );
    let banner = cli.json(&["offer", "put", "--file", &json, "--json"]).await;
    assert_eq!((banner["name"].as_str(), banner["weight"].as_f64()), (Some("Store banner"), Some(2.5)), "{banner}");
    let list = cli.json(&["offer", "list", "--json"]).await;
    assert_eq!(offer_count(&list), 2, "{list}");
    let text = cli.ok(&["offer", "list", "--tag", "winter"]).await;
    assert!(text.contains("Winter coats") && !text.contains("Store banner"), "{text}");

    // Bad files: the file, the line and the field; nothing stored.
    let bad = [
        ("unknown-key.toml", "name = \"x\"\nplacemnts = [\"email\"]\n", ":2:", "placemnts"),
        ("placement.toml", "name = \"x\"\nplacements = [\"email\", \"billboard\"]\n", ":2: placements[1]", "billboard"),
        (
            "rule.toml",
            "name = \"x\"\nplacements = [\"email\"]\n\neligibility_rule = \"profile.computed.ordr_count > 1\"\n",
            ":4: eligibility_rule",
            "ordr_count",
        ),
        (
            "money.toml",
            "name = \"x\"\nplacements = [\"email\"]\nvalue_minor = 100\ncurrency = \"euro\"\n",
            ":4: currency",
            "ISO 4217",
        ),
        ("when.toml", "name = \"x\"\nplacements = [\"email\"]\nvalid_from = \"soon\"\n", ":3: valid_from", "soon"),
        ("syntax.json", "{\n  \"name\": \"x\",\n  \"placements\": [\"email\"\n}\n", ".json:4:", ""),
        (
            "type.json",
            "{\n  \"name\": \"x\",\n  \"placements\": [\"email\"],\n  \"weight\": \"heavy\"\n}\n",
            ".json:4:",
            "heavy",
        ),
    ];
    for (name, text, at, names) in bad {
        let err = cli.fails(&["offer", "put", "--file", &write(name, text)]).await;
        assert!(err.contains(name) && err.contains(at) && err.contains(names), "{name}: {err}");
    }
    assert_eq!(offer_count(&cli.json(&["offer", "list", "--json"]).await), 2, "nothing stored by a bad file");

    // A campaign with its offers; a bad rule in the campaign stores neither the campaign nor its offers.
    let campaign = "[campaign]\nname = \"Banner week\"\nkind = \"triggered\"\ntrigger_events = [\"page_viewed\"]\n\
                    trigger_rule = \"event.properties.path == '/sale'\"\nplacement = \"web_banner\"\n\
                    holdout_share = 0.5\nstate = \"running\"\n\n\
                    [[offers]]\nname = \"Sale banner\"\nplacements = [\"web_banner\"]\nchannel = \"web\"\n\
                    template_id = \"sale\"\nvalue_minor = 1000\ncurrency = \"EUR\"\n";
    let bad_campaigns = [
        (
            "broken.toml",
            campaign.replace("event.properties.path", "event.propertis.path"),
            ":5: campaign.trigger_rule",
            "propertis",
        ),
        ("offer.toml", campaign.replace("[\"web_banner\"]", "[\"kiosk\"]"), ":12: offers[0].placements[0]", "kiosk"),
        (
            "ids.toml",
            campaign.replace("state =", "offer_ids = [\"off_nope\"]\nstate ="),
            ":8: campaign.offer_ids[0]",
            "off_nope",
        ),
    ];
    for (name, text, at, names) in bad_campaigns {
        let err = cli.fails(&["campaign", "put", "--file", &write(name, &text)]).await;
        assert!(err.contains(&format!("{name}{at}")) && err.contains(names), "{name}: {err}");
    }
    assert_eq!(offer_count(&cli.json(&["offer", "list", "--json"]).await), 2, "nothing stored by a bad campaign");
    assert_eq!(cli.ok(&["campaign", "list"]).await.trim(), "no campaigns");

    let out = cli.ok(&["campaign", "put", "--file", &write("banner-week.toml", campaign)]).await;
    assert!(out.contains("created offer off_") && out.contains("\"Sale banner\""), "{out}");
    assert!(out.contains("created campaign cmp_") && out.contains("running"), "{out}");
    // The examples shipped with the decision service load as they are; a second put updates, by name.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../decision/examples/campaigns/abandoned_cart.toml");
    let cart = cli.json(&["campaign", "put", "--file", example, "--json"]).await;
    assert_eq!(
        (cart["name"].as_str(), cart["state"].as_str()),
        (Some("Abandoned cart"), Some("CAMPAIGN_STATE_DRAFT")),
        "{cart}"
    );
    let cart_again = cli.json(&["campaign", "put", "--file", example, "--json"]).await;
    assert_eq!(cart_again["campaignId"], cart["campaignId"], "{cart_again}");
    let campaigns = cli.json(&["campaign", "list", "--json"]).await;
    assert_eq!(campaigns["campaigns"].as_array().map(Vec::len), Some(2), "{campaigns}");
    assert_eq!(offer_count(&cli.json(&["offer", "list", "--json"]).await), 4, "Sale banner and the cart offer, once");
    let text = cli.ok(&["campaign", "list"]).await;
    assert!(text.contains("Banner week") && text.contains("on page_viewed when event.properties.path"), "{text}");
    let banner_week =
        campaigns["campaigns"].as_array().unwrap().iter().find(|c| c["name"] == "Banner week").expect("listed").clone();
    let campaign_id = banner_week["campaignId"].as_str().unwrap().to_string();

    // A test message: sent to the file sink with the customer's name; without consent it is blocked.
    DeliveryServiceClient::new(suite.channel().await)
        .put_template(suite.admin(delivery::PutTemplateRequest {
            template: Some(delivery::Template {
                template_id: "welcome".into(),
                channel: Channel::Email as i32,
                locales: vec![delivery::LocalizedContent {
                    locale: "en".into(),
                    subject: "Hello {{ profile.first_name }}".into(),
                    text: "{{ offer.title }} for you".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }))
        .await
        .expect("template");
    let ann = customer(&suite, "ann.cli@example.com", "Ann").await;
    customer(&suite, "bob.cli@example.com", "Bob").await;
    cli.grant(&["--email", "ann.cli@example.com"], "email").await;
    let data = r#"{"offer": {"title": "Coats 20% off"}}"#;
    let out = cli
        .ok(&["send", "--email", "ann.cli@example.com", "--template", "welcome", "--data", data, "--wait", "30"])
        .await;
    assert!(out.contains(&format!("to customer {ann}: sent")) && out.contains("subject: Hello Ann"), "{out}");
    let message_id = out.split_whitespace().nth(1).expect("message id").to_string();
    let eml =
        std::fs::read_to_string(suite_outbox(&suite).join(format!("{message_id}.eml"))).expect("in the file sink");
    assert!(eml.contains("Coats 20% off for you"), "{eml}");
    let err =
        cli.fails(&["send", "--email", "bob.cli@example.com", "--template", "welcome", "--data", data, "--wait"]).await;
    assert!(err.contains("was blocked"), "{err}");
    let err = cli.fails(&["send", "--email", "ann.cli@example.com", "--template", "welcome", "--data", "[1]"]).await;
    assert!(err.contains("--data"), "{err}");
    let keyed =
        ["send", "--email", "ann.cli@example.com", "--template", "welcome", "--key", "k1", "--data", data, "--json"];
    let queued = cli.json(&keyed).await;
    let repeat = cli.json(&keyed).await;
    assert_eq!((repeat["messageId"].clone(), repeat["duplicate"].as_bool()), (queued["messageId"].clone(), Some(true)));

    // The campaign's report: decisions on the banner, opens, clicks and two purchases.
    let mut decisions = DecisionServiceClient::new(suite.channel().await);
    let (mut held, mut treated) = (Vec::new(), Vec::new());
    for i in 0..16 {
        let email = format!("r{i}.cli@example.com");
        let id = customer(&suite, &email, "R").await;
        cli.grant(&["--customer", &id], "web").await;
        let r = decisions
            .decide(suite.admin(decision::DecideRequest {
                customer: Some(CustomerRef { r#ref: Some(Ref::CustomerId(id)) }),
                placement: decision::PlacementKind::WebBanner as i32,
                campaign_id: campaign_id.clone(),
                ..Default::default()
            }))
            .await
            .expect("decide")
            .into_inner();
        if r.holdout { held.push(r) } else { treated.push(r) }
    }
    assert!(!held.is_empty() && treated.len() >= 3, "{} held out of 16", held.len());
    let outcome = |id: String, d: &decision::DecideResponse, kind: decision::OutcomeKind, minor: i64| {
        decision::RecordOutcomeRequest {
            outcome_id: id,
            decision_id: d.decision_id.clone(),
            offer_id: d.offers.first().map(|o| o.offer_id.clone()).unwrap_or_default(),
            kind: kind as i32,
            revenue: (minor > 0).then(|| Money { currency: "EUR".into(), minor_units: minor }),
            occurred_at: None,
            customer: None,
        }
    };
    for (i, d) in treated.iter().take(3).enumerate() {
        decisions
            .record_outcome(suite.admin(outcome(format!("open-{i}"), d, decision::OutcomeKind::Opened, 0)))
            .await
            .unwrap();
        decisions
            .record_outcome(suite.admin(outcome(format!("click-{i}"), d, decision::OutcomeKind::Clicked, 0)))
            .await
            .unwrap();
    }
    for (i, minor) in [(0, 4000), (1, 6000)] {
        let d = &treated[i];
        decisions
            .record_outcome(suite.admin(outcome(format!("buy-{i}"), d, decision::OutcomeKind::Converted, minor)))
            .await
            .unwrap();
    }
    let report = cli.json(&["report", "--campaign", &campaign_id, "--json"]).await;
    let group = |name: &str| report["groups"].as_array().unwrap().iter().find(|g| g["group"] == name).cloned().unwrap();
    let (all, treatment, holdout) = (group("all"), group("treatment"), group("holdout"));
    assert_eq!(all["decisions"], "16", "{report}");
    assert_eq!(holdout["decisions"], held.len().to_string(), "{report}");
    assert_eq!(
        treatment["sends"],
        treated.len().to_string(),
        "the banner was shown to every treated customer: {report}"
    );
    assert_eq!((treatment["opens"].as_str(), treatment["clicks"].as_str()), (Some("3"), Some("3")), "{report}");
    assert_eq!(treatment["conversions"], "2", "{report}");
    assert_eq!(treatment["revenue"]["minorUnits"], "10000", "{report}");
    assert_eq!(treatment["averageOrderValue"]["minorUnits"], "5000", "{report}");
    let per_recipient = (10000.0 / treated.len() as f64).round() as i64;
    assert_eq!(treatment["revenuePerRecipient"]["minorUnits"], per_recipient.to_string(), "{report}");
    let ctr = treatment["clickThroughRate"].as_f64().unwrap();
    assert!((ctr - 3.0 / treated.len() as f64).abs() < 1e-9, "{report}");
    let uplift = &report["uplift"];
    let expected = 2.0 / treated.len() as f64;
    assert!((uplift["value"].as_f64().unwrap() - expected).abs() < 1e-9, "the holdout bought nothing: {report}");
    assert!(uplift["low"].as_f64().unwrap() <= expected && expected <= uplift["high"].as_f64().unwrap(), "{report}");
    let text = cli.ok(&["report", "--campaign", &campaign_id]).await;
    assert!(text.starts_with(&format!("campaign {campaign_id}")), "{text}");
    let treatment_line = text.lines().find(|l| l.starts_with("treatment")).expect("a treatment row");
    assert!(treatment_line.contains("100.00 EUR") && treatment_line.contains("50.00 EUR"), "{text}");
    assert!(text.contains("uplift in conversion rate against holdout: +"), "{text}");
    let err = cli.fails(&["report", "--campaign", "cmp_nope"]).await;
    assert!(err.contains("NotFound"), "{err}");
    let err = cli.fails(&["report"]).await;
    assert!(err.contains("--campaign"), "{err}");
    suite.stop().await;
}

fn suite_outbox(suite: &TestSuite) -> std::path::PathBuf {
    suite.storage.data_dir.path().join("outbox/email")
}
