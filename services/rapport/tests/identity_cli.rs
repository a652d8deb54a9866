//! `rapport identity resolve`: CSV sources in, one `source,record_id,customer_id` row per record
//! out, bad rows reported with file and line while the rest is processed.

use std::collections::HashMap;
use std::process::Command;

#[test]
fn resolve_writes_a_customer_per_record_and_reports_bad_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
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
        "id,given,family,dob,mail\n\
         1,Annabel,Fairweather,1990-01-02,annabel.fairweather@example.com\n\
         2,Bob,Ray,1980-02-03\n\
         3,Cyril,Day,31/02/1999,cyril@example.com\n\
         4,Dimitri,Okonkwo,19700405,dimitri.okonkwo@example.com\n",
    )
    .unwrap();
    std::fs::write(
        d.join("shop.csv"),
        "ref,name,birthday,email,tel\n\
         x1,\"FAIRWEATHER, Annabel\",02/01/1990,ANNABEL.FAIRWEATHER@example.com,07700 900123\n\
         x2,Dimitri Okonkwo,05/04/1970,,\n",
    )
    .unwrap();
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

    // every row is accounted for: 6 read, 4 records, 2 rejected with file, line and reason
    assert!(stdout.contains("rows read        6"), "{stdout}");
    assert!(stdout.contains("records matched  4"), "{stdout}");
    assert!(stdout.contains("rejected rows    2"), "{stdout}");
    assert!(stdout.contains("crm.csv:3: 4 fields, the header has 5"), "{stdout}");
    assert!(stdout.contains("crm.csv:4: unreadable date `31/02/1999` in column `dob`"), "{stdout}");
    assert!(stdout.contains("clusters         2"), "{stdout}");
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
    assert_eq!(rows.len(), 4, "{written}");
    let customer = |s: &str, id: &str| rows[&(s.to_owned(), id.to_owned())].clone();
    assert_eq!(customer("crm", "1"), customer("shop", "x1"), "Annabel in both sources");
    assert_eq!(customer("crm", "4"), customer("shop", "x2"), "Dimitri in both sources");
    assert_ne!(customer("crm", "1"), customer("crm", "4"));
}
