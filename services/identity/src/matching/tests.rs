use super::*;

fn rec(source: &str, id: &str, pairs: &[(&str, &str)]) -> SourceRecord {
    SourceRecord::from_pairs(source, id, EntityKind::Person, pairs.iter().copied()).unwrap()
}

/// Test records appended to a synthetic background population, so that u probabilities and
/// term frequencies are realistic. Returns the outcome and the index of the first test record.
fn match_with_background(extra: Vec<SourceRecord>) -> (MatchOutcome, usize) {
    let (mut records, _) = synth::generate(400, 8, 7);
    let start = records.len();
    records.extend(extra);
    (match_records(&records, &MatchSettings::default()), start)
}

#[test]
fn unknown_attribute_is_rejected_by_name() {
    let err = SourceRecord::from_pairs("crm", "1", EntityKind::Person, [("first_name", "Ann"), ("shoe_size", "5")])
        .unwrap_err();
    assert_eq!(err, MatchError::UnknownAttribute("shoe_size".into()));
    assert!(err.to_string().contains("shoe_size"));
    let r = SourceRecord::from_pairs("crm", "1", EntityKind::Person, [("external_id", "loyalty:42"), ("email", " ")])
        .unwrap();
    assert_eq!(r.external_ids, vec![("loyalty".to_owned(), "42".to_owned())]);
    assert_eq!(r.attributes.email, None);
}

#[test]
fn typo_duplicate_merges_with_different_formats() {
    let a = rec(
        "crm",
        "a1",
        &[
            ("first_name", "Jonathan"),
            ("last_name", "Fairweather"),
            ("date_of_birth", "1984-07-23"),
            ("email", "jon.fairweather@example.com"),
            ("phone", "07700 900123"),
            ("street", "14 Larkspur Rd"),
            ("postcode", "OX4 2AB"),
            ("city", "Oxford"),
        ],
    );
    let b = rec(
        "shop",
        "b1",
        &[
            ("full_name", "FAIRWHEATHER, Jonathon"),
            ("date_of_birth", "19840723"),
            ("phone", "+44 7700 900123"),
            ("street", "Larkspur Road 14"),
            ("postcode", "ox42ab"),
        ],
    );
    let c = rec(
        "loyalty",
        "c1",
        &[
            ("first_name", "Jon"),
            ("last_name", "Fairweather"),
            ("date_of_birth", "23/07/1984"),
            ("email", "JON.FAIRWEATHER@example.com"),
        ],
    );
    let (out, s) = match_with_background(vec![a, b, c]);
    assert_eq!(out.cluster_of[s], out.cluster_of[s + 1]);
    assert_eq!(out.cluster_of[s], out.cluster_of[s + 2]);
    let pair = out.matches.iter().find(|p| p.a >= s && p.b >= s).expect("a matched pair with evidence");
    assert!(pair.weight >= MatchSettings::default().match_threshold);
    assert!(pair.evidence().any(|e| e.attribute == "date_of_birth"));
}

#[test]
fn twins_and_household_members_stay_apart() {
    let home = [
        ("last_name", "Quennell"),
        ("street", "7 Orchard Close"),
        ("postcode", "YO1 7HH"),
        ("city", "York"),
        ("phone", "01904 123456"),
    ];
    let with = |src: &str, id: &str, extra: &[(&str, &str)]| {
        let mut pairs: Vec<(&str, &str)> = home.to_vec();
        pairs.extend_from_slice(extra);
        rec(src, id, &pairs)
    };
    let records = vec![
        // twins: same surname, dob, address, landline
        with("crm", "t1", &[("first_name", "Harriet"), ("date_of_birth", "2001-05-09")]),
        with("crm", "t2", &[("first_name", "Imogen"), ("date_of_birth", "2001-05-09")]),
        with("shop", "t1", &[("first_name", "Hattie"), ("date_of_birth", "09/05/2001")]),
        with("shop", "t2", &[("first_name", "Imogen"), ("date_of_birth", "20010509")]),
        // parents in the same household
        with("crm", "p1", &[("first_name", "Graham"), ("date_of_birth", "1968-11-30")]),
        with("crm", "p2", &[("first_name", "Fiona"), ("date_of_birth", "1970-02-14")]),
        // a record with only the household's details (no first name, no dob)
        with("web", "h", &[]),
    ];
    let (out, s) = match_with_background(records);
    let c = |i: usize| out.cluster_of[s + i];
    assert_eq!(c(0), c(2), "Harriet = Hattie");
    assert_eq!(c(1), c(3), "Imogen = Imogen");
    assert_ne!(c(0), c(1), "twins apart");
    let people = [c(0), c(1), c(4), c(5)];
    for i in 0..4 {
        for j in i + 1..4 {
            assert_ne!(people[i], people[j], "household members {i} and {j} apart");
        }
    }
    // the record with only the household's details links to every member equally: ambiguous,
    // so it joins none of them (it is left for review)
    for (i, p) in people.iter().enumerate() {
        assert_ne!(c(6), *p, "household record merged into member {i}");
    }
    assert!(out.possible.iter().any(|p| p.a == s + 6 || p.b == s + 6), "household record queued for review");
}

#[test]
fn common_names_in_one_city_stay_apart() {
    let records = vec![
        rec(
            "crm",
            "1",
            &[
                ("first_name", "John"),
                ("last_name", "Smith"),
                ("city", "London"),
                ("date_of_birth", "1970-01-01"),
                ("email", "js1@example.com"),
            ],
        ),
        rec(
            "crm",
            "2",
            &[
                ("first_name", "John"),
                ("last_name", "Smith"),
                ("city", "London"),
                ("date_of_birth", "1982-06-15"),
                ("email", "js2@example.com"),
            ],
        ),
        rec(
            "shop",
            "3",
            &[("first_name", "John"), ("last_name", "Smith"), ("city", "London"), ("street", "1 High Street")],
        ),
    ];
    let (out, s) = match_with_background(records);
    assert_ne!(out.cluster_of[s], out.cluster_of[s + 1]);
    // the sparse third record may be reviewed but is not merged on name and city alone
    assert_ne!(out.cluster_of[s], out.cluster_of[s + 2]);
    assert_ne!(out.cluster_of[s + 1], out.cluster_of[s + 2]);
}

#[test]
fn kinds_never_merge() {
    let pairs = [
        ("company_name", "Acme Widgets Ltd"),
        ("company_id", "123456789"),
        ("email", "info@acme.example"),
        ("street", "1 Mill Lane"),
        ("postcode", "CB1 1AA"),
    ];
    let records = vec![
        SourceRecord::from_pairs("crm", "a", EntityKind::Account, pairs).unwrap(),
        SourceRecord::from_pairs("erp", "a", EntityKind::Account, pairs).unwrap(),
        SourceRecord::from_pairs("crm", "s", EntityKind::Site, pairs).unwrap(),
    ];
    let (out, s) = match_with_background(records);
    assert_eq!(out.cluster_of[s], out.cluster_of[s + 1]);
    assert_ne!(out.cluster_of[s], out.cluster_of[s + 2]);
}

#[test]
fn f1_on_seeded_synthetic_set() {
    let (records, truth) = synth::generate(2_000, 12, 42);
    let out = match_records(&records, &MatchSettings::default());
    let (p, r, f1) = synth::pairwise_scores(&out.cluster_of, &truth);
    assert!(f1 >= 0.97, "precision {p:.4} recall {r:.4} f1 {f1:.4}");
    assert_eq!(out.cluster_of.len(), records.len());
    assert_eq!(out.counts.clusters, out.cluster_of.iter().max().unwrap() + 1);
    // EM learned that exact emails are strong evidence and that differing dobs are not
    assert!(out.params.weight(3, 1) > 10.0);
    assert!(out.params.weight(2, 5) < -3.0);
}

#[test]
fn pairwise_scores_count_pairs() {
    // truth {0,1,2} {3}; predicted {0,1} {2,3}
    let (p, r, f1) = synth::pairwise_scores(&[0, 0, 1, 1], &[7, 7, 7, 9]);
    assert!((p - 0.5).abs() < 1e-9);
    assert!((r - 1.0 / 3.0).abs() < 1e-9);
    assert!((f1 - 0.4).abs() < 1e-9);
}

#[test]
fn csv_bad_rows_are_reported_and_the_rest_processed() {
    let dir = std::env::temp_dir().join(format!("rapport-matching-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sources.toml"),
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
name = "us_shop"
path = "shop.csv"
id_column = "ref"
date_format = "mdy"
[sources.columns]
full_name = "name"
date_of_birth = "birthday"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("crm.csv"),
        "id,given,family,dob,mail\n\
         1,Ann,Lee,1990-01-02,ann@example.com\n\
         2,Bob,Ray,1980-02-03\n\
         3,Cy,Day,31/02/1999,cy@example.com\n\
         4,Di,Fox,19700405,di@example.com\n",
    )
    .unwrap();
    std::fs::write(dir.join("shop.csv"), "ref,name,birthday\nx1,Ann Lee,01/02/1990\n").unwrap();
    let loaded = csv_input::load_sources(dir.join("sources.toml")).unwrap();
    assert_eq!(loaded.rows_read, 5);
    assert_eq!(loaded.records.len(), 3);
    assert_eq!(loaded.rejected.len(), 2);
    assert_eq!(loaded.rejected[0].line, 3);
    assert!(loaded.rejected[0].file.ends_with("crm.csv"));
    assert!(loaded.rejected[0].reason.contains("fields"));
    assert_eq!(loaded.rejected[1].line, 4);
    assert!(loaded.rejected[1].reason.contains("31/02/1999"));
    // the US source's hint: 01/02/1990 is 2 January
    let shop = loaded.records.iter().find(|r| r.source == "us_shop").unwrap();
    assert_eq!(shop.attributes.date_of_birth.as_deref(), Some("1990-01-02"));
    let di = &loaded.records[1];
    assert_eq!(di.attributes.date_of_birth.as_deref(), Some("1970-04-05"));

    let out = match_records(&loaded.records, &MatchSettings::default());
    let path = dir.join("clusters.csv");
    csv_input::write_clusters(&path, &loaded.records, &out, |c| format!("cust-{c}")).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.starts_with("source,record_id,customer_id\n"));
    assert_eq!(written.lines().count(), 4);

    // an unknown attribute in the configuration is named
    std::fs::write(
        dir.join("bad.toml"),
        "[[sources]]\nname='x'\npath='crm.csv'\nid_column='id'\n[sources.columns]\nshoe='given'\n",
    )
    .unwrap();
    let err = csv_input::load_sources(dir.join("bad.toml")).unwrap_err();
    assert!(format!("{err:#}").contains("shoe"), "{err:#}");
    std::fs::remove_dir_all(&dir).ok();
}
