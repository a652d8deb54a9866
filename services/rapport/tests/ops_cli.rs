//! The client commands for people, run as an operator would against a running suite: import customers
//! and events from CSV through a mapping (bad rows reported by line, a re-run stores nothing twice),
//! look the customer up, record and check consent, show the timeline; text and `--json` output.

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
