//! `rapport demo` plays its retailer end to end and the same seed tells the same story.

use std::process::Command;

fn demo(seed: &str, dir: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["demo", "--seed", seed, "--people", "60", "--data-dir", dir.to_str().expect("utf-8 path")])
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "demo failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The lines of the report that do not depend on the clock or the directory.
fn story(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.starts_with("done in") && !l.contains("data in") && !l.starts_with("the messages are files"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_demo_merges_every_persons_records_and_is_deterministic() {
    let (a, b) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
    let first = demo("3", a.path());
    assert!(first.contains("became 60 customers (60 people; 0 of them still spread"), "{first}");
    assert!(first.contains(", 0 refused"), "{first}");
    // The campaigns ran: the triggers fired and the schedule sent, the recipients answered through the real
    // tracking links, and every campaign and arm has its report.
    let sent: u64 = first
        .lines()
        .find_map(|l| l.strip_suffix(" emails sent; the customers open, click and buy:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no send count: {first}"));
    assert!(sent > 10, "{first}");
    let emails = std::fs::read_dir(a.path().join("outbox").join("email")).expect("the email sink's directory").count();
    assert_eq!(emails as u64, sent, "every send is a file in the sink");
    for campaign in ["Abandoned cart", "Welcome after opt-in", "Lapsed high-value customer", "Autumn running"] {
        assert!(first.contains(&format!("campaign \"{campaign}\"\n  group")), "no report of {campaign}: {first}");
    }
    assert!(first.contains("== what it paid"), "{first}");
    assert!(first.contains("uplift in conversion rate against the holdout"), "{first}");
    assert!(first.contains("sample-ratio check: p = "), "{first}");
    assert!(first.lines().any(|l| l.starts_with("  a ") && l.contains('€')), "arm a: {first}");
    assert!(first.lines().any(|l| l.starts_with("  b ") && l.contains('€')), "arm b: {first}");
    assert_eq!(story(&first), story(&demo("3", b.path())), "the same seed plays the same story");
}
