//! `rapport identity resolve`: CSV sources in, one `source,record_id,customer_id` row per record
//! out, bad rows reported with file and line while the rest is processed.

use std::collections::HashMap;
use std::process::Command;

/// Two sources: Annabel and Dimitri in both, a short row and an unreadable date in the CRM, a phone
/// number only a server's validation refuses in the shop.
fn write_sources(d: &std::path::Path) {
    std::fs::write(
        d.join("sources.toml"),
        r#"
[[sources]]
name = "crm"
path = "crm.csv"
id_column = "id"
[sources.columns]
first_name = "given"
last_name = "family"
date_of_birth = "dob"
email = "mail"
external_id = "loyalty"

[[sources]]
name = "shop"
path = "shop.csv"
id_column = "ref"
[sources.columns]
full_name = "name"
date_of_birth = "birthday"
email = "email"
phone = "tel"
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("crm.csv"),
        "id,given,family,dob,mail,loyalty\n\
         1,Annabel,Fairweather,1990-01-02,annabel.fairweather@example.com,card:5501\n\
         2,Bob,Ray,1980-02-03\n\
         3,Cyril,Day,31/02/1999,cyril@example.com,\n\
         4,Dimitri,Okonkwo,19700405,dimitri.okonkwo@example.com,\n",
    )
    .unwrap();
    std::fs::write(
        d.join("shop.csv"),
        "ref,name,birthday,email,tel\n\
         x1,\"FAIRWEATHER, Annabel\",02/01/1990,ANNABEL.FAIRWEATHER@example.com,+44 7700 900123\n\
         x2,Dimitri Okonkwo,05/04/1970,,\n\
         x3,Eve Adams,01/01/1985,,not a phone\n",
    )
    .unwrap();
}

#[test]
fn resolve_writes_a_customer_per_record_and_reports_bad_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    write_sources(d);
    let out = d.join("clusters.csv");
    let output = Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["identity", "resolve", "--sources"])
        .arg(d.join("sources.toml"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    // every row is accounted for: 7 read, 5 records, 2 rejected with file, line and reason
    assert!(stdout.contains("rows read        7"), "{stdout}");
    assert!(stdout.contains("records matched  5"), "{stdout}");
    assert!(stdout.contains("rejected rows    2"), "{stdout}");
    assert!(stdout.contains("crm.csv:3: 4 fields, the header has 6"), "{stdout}");
    assert!(stdout.contains("crm.csv:4: unreadable date `31/02/1999` in column `dob`"), "{stdout}");
    assert!(stdout.contains("clusters         3"), "{stdout}");
    assert!(stdout.contains("seconds"), "{stdout}");

    let written = std::fs::read_to_string(&out).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("source,record_id,customer_id"));
    let rows: HashMap<(String, String), String> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 3, "{l}");
            ((f[0].to_owned(), f[1].to_owned()), f[2].to_owned())
        })
        .collect();
    assert_eq!(rows.len(), 5, "{written}");
    let customer = |s: &str, id: &str| rows[&(s.to_owned(), id.to_owned())].clone();
    assert_eq!(customer("crm", "1"), customer("shop", "x1"), "Annabel in both sources");
    assert_eq!(customer("crm", "4"), customer("shop", "x2"), "Dimitri in both sources");
    assert_ne!(customer("crm", "1"), customer("crm", "4"));
}

/// `--endpoint`: the same files go to a running server; its matching feeds its identity graph, the file
/// holds its customer ids, records it refuses are listed with the field, and a second run of the same
/// files keeps every customer id.
#[tokio::test(flavor = "multi_thread")]
async fn resolve_against_a_running_server_uses_its_customers() {
    let suite = rapport_testkit::TestSuite::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    write_sources(d);
    let run = |out: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_rapport"))
            .args(["identity", "resolve", "--sources"])
            .arg(d.join("sources.toml"))
            .arg("--out")
            .arg(out)
            .args(["--endpoint", &suite.grpc_url, "--token", &suite.admin_token])
            .env_remove("RUST_LOG")
            .output()
            .expect("the binary runs")
    };
    let read = |out: &std::path::Path| -> HashMap<(String, String), String> {
        let written = std::fs::read_to_string(out).unwrap();
        let mut lines = written.lines();
        assert_eq!(lines.next(), Some("source,record_id,customer_id"));
        lines
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                assert_eq!(f.len(), 3, "{l}");
                ((f[0].to_owned(), f[1].to_owned()), f[2].to_owned())
            })
            .collect()
    };

    let first = d.join("first.csv");
    let output = tokio::task::block_in_place(|| run(&first));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    // 7 rows: 2 refused while reading, 1 by the server (the phone), 4 matched into 2 customers
    assert!(stdout.contains("rows read        7"), "{stdout}");
    assert!(stdout.contains("records matched  4"), "{stdout}");
    assert!(stdout.contains("rejected rows    3"), "{stdout}");
    assert!(stdout.contains("crm.csv:3: 4 fields, the header has 6"), "{stdout}");
    assert!(stdout.contains("crm.csv:4: unreadable date `31/02/1999` in column `dob`"), "{stdout}");
    assert!(stdout.contains("shop/x3: ") && stdout.contains("attributes.phone"), "{stdout}");
    assert!(stdout.contains("refused by the server"), "{stdout}");
    assert!(stdout.contains("clusters         2"), "{stdout}");

    let rows = read(&first);
    assert_eq!(rows.len(), 4, "{rows:?}");
    let customer = |s: &str, id: &str| rows[&(s.to_owned(), id.to_owned())].clone();
    assert!(customer("crm", "1").starts_with("cus_"), "the server's customer ids: {rows:?}");
    assert_eq!(customer("crm", "1"), customer("shop", "x1"), "Annabel in both sources");
    assert_eq!(customer("crm", "4"), customer("shop", "x2"), "Dimitri in both sources");
    assert_ne!(customer("crm", "1"), customer("crm", "4"));

    // the server's graph holds the result: the loyalty card finds Annabel's customer
    let mut identity =
        rapport_proto::identity::v1::identity_service_client::IdentityServiceClient::new(suite.channel().await);
    let card = rapport_proto::common::v1::Identifier {
        r#type: rapport_proto::common::v1::IdentifierType::External as i32,
        value: "5501".into(),
        namespace: "card".into(),
    };
    let found = identity
        .lookup(suite.admin(rapport_proto::identity::v1::LookupRequest { identifier: Some(card) }))
        .await
        .expect("lookup by the record's external id")
        .into_inner();
    assert_eq!(found.customer_id, customer("crm", "1"), "{found:?}");

    // the same files again: stored once more (idempotent by source and record id), same customers
    let second = d.join("second.csv");
    let output = tokio::task::block_in_place(|| run(&second));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(read(&second), rows, "a second run keeps every customer id");
}
