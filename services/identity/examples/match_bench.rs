//! Benchmark of the probabilistic matcher on seeded synthetic data.
//!
//! `cargo run --release -p rapport-identity --example match_bench -- (--records N | --people N)
//! [--seed S] [--sources K] [--threads T] [--match-log2-odds X] [--ambiguity-margin B] [--diagnose N]`
//!
//! `--records N` generates people until there are N records (the last person's records may be
//! cut short); `--people N` generates N people (about 2.25 records each with 12 sources).

use std::time::Instant;

use std::collections::HashMap;

use rapport_identity::matching::{
    COMPARISONS, LEVEL_NAMES, MatchOutcome, MatchSettings, SourceRecord, match_records, score_pair, synth,
};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() -> anyhow::Result<()> {
    let mut people = 10_000usize;
    let mut want_records: Option<usize> = None;
    let mut seed = 1u64;
    let mut sources = 12usize;
    let mut settings = MatchSettings::default();
    let mut diagnose = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--people" => people = value()?.parse()?,
            "--records" => want_records = Some(value()?.parse()?),
            "--match-log2-odds" => settings.match_log2_odds = value()?.parse()?,
            "--match-threshold" => settings.match_threshold = value()?.parse()?,
            "--ambiguity-margin" => settings.ambiguity_margin = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--sources" => sources = value()?.parse()?,
            "--threads" => settings.threads = value()?.parse()?,
            "--diagnose" => diagnose = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let t0 = Instant::now();
    if let Some(n) = want_records {
        people = n * 100 / 215 + 10;
    }
    let (mut records, mut truth) = synth::generate(people, sources, seed);
    if let Some(n) = want_records {
        anyhow::ensure!(records.len() >= n, "generated {} records, fewer than {n}", records.len());
        records.truncate(n);
        truth.truncate(n);
        people = truth.last().map_or(0, |&t| t as usize + 1);
    }
    let generated = t0.elapsed().as_secs_f64();
    let rss_before = peak_rss_kib().unwrap_or(0);
    let t1 = Instant::now();
    let outcome = match_records(&records, &settings);
    let secs = t1.elapsed().as_secs_f64();
    let (precision, recall, f1) = synth::pairwise_scores(&outcome.cluster_of, &truth);
    let c = &outcome.counts;
    println!("people           {people}");
    println!("sources          {sources}");
    println!("seed             {seed}");
    println!("records          {}", records.len());
    println!("generate seconds {generated:.2}");
    println!("match seconds    {secs:.2}");
    println!("records/s        {:.0}", records.len() as f64 / secs);
    println!("precision        {precision:.4}");
    println!("recall           {recall:.4}");
    println!("f1               {f1:.4}");
    println!("candidate pairs  {}", c.candidate_pairs);
    println!("matched pairs    {}", c.matched_pairs);
    println!("possible pairs   {}", c.possible_pairs);
    println!("blocked merges   {}", c.blocked_merges);
    println!("skipped blocks   {}", c.skipped_blocks);
    println!("clusters         {} (true {})", c.clusters, people);
    println!("em iterations    {} (lambda {:.4})", outcome.params.iterations, outcome.params.lambda);
    println!(
        "thresholds       match {:.1} possible {:.1} (prior log2 odds {:.1})",
        outcome.params.match_threshold, outcome.params.possible_threshold, outcome.params.prior_log2_odds
    );
    println!(
        "peak RSS         {:.1} MiB (after generation {:.1} MiB)",
        peak_rss_kib().unwrap_or(0) as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    if diagnose > 0 {
        for (c, name) in COMPARISONS.iter().enumerate() {
            let row: Vec<String> = (1..LEVEL_NAMES[c].len())
                .map(|l| {
                    format!(
                        "{}: m {:.4} u {:.6} w {:.1}",
                        LEVEL_NAMES[c][l],
                        outcome.params.m[c][l],
                        outcome.params.u[c][l],
                        outcome.params.weight(c, l as u8)
                    )
                })
                .collect();
            println!("{name}: {}", row.join(" | "));
        }
        print_diagnosis(&records, &truth, &outcome, &settings, diagnose);
    }
    Ok(())
}

/// Prints up to `n` missed matches and `n` wrong merges with their comparison evidence.
fn print_diagnosis(
    records: &[SourceRecord],
    truth: &[u64],
    outcome: &MatchOutcome,
    settings: &MatchSettings,
    n: usize,
) {
    let show = |i: usize, j: usize| {
        let (p, conflict) = score_pair(&records[i], &records[j], &outcome.params, settings);
        println!("  {:?}", records[i].attributes);
        println!("  {:?}", records[j].attributes);
        let ev: Vec<String> = p.evidence().map(|e| format!("{}={}({:.1})", e.attribute, e.level, e.weight)).collect();
        println!("  weight {:.1} conflict {conflict}: {}", p.weight, ev.join(" "));
    };
    let mut by_truth: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, &t) in truth.iter().enumerate() {
        by_truth.entry(t).or_default().push(i);
    }
    println!("missed matches:");
    let possible: std::collections::HashSet<(usize, usize)> = outcome.possible.iter().map(|p| (p.a, p.b)).collect();
    let (mut in_review, mut conflicting, mut other, mut strong) = (0, 0, 0, 0);
    for members in by_truth.values() {
        for x in 0..members.len() {
            for y in x + 1..members.len() {
                let (i, j) = (members[x], members[y]);
                if outcome.cluster_of[i] == outcome.cluster_of[j] {
                    continue;
                }
                let (p, conflict) = score_pair(&records[i], &records[j], &outcome.params, settings);
                if possible.contains(&(i.min(j), i.max(j))) {
                    in_review += 1;
                    if in_review <= n && p.weight >= outcome.params.match_threshold {
                        println!("  [review, weight at match level]");
                        show(i, j);
                    }
                } else if conflict {
                    conflicting += 1;
                    if conflicting <= n {
                        println!("  [conflict]");
                        show(i, j);
                    }
                } else if p.weight >= outcome.params.match_threshold {
                    strong += 1;
                } else {
                    other += 1;
                    if other <= n {
                        println!("  [weak]");
                        show(i, j);
                    }
                }
            }
        }
    }
    println!("  in review {in_review}, hard conflict {conflicting}, strong but not linked {strong}, weak {other}");
    let mut shown = 0;
    for members in by_truth.values() {
        for x in 0..members.len() {
            for y in x + 1..members.len() {
                let (i, j) = (members[x], members[y]);
                if shown < n && outcome.cluster_of[i] != outcome.cluster_of[j] {
                    shown += 1;
                    show(i, j);
                }
            }
        }
    }
    println!("wrong merges:");
    let mut by_cluster: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &c) in outcome.cluster_of.iter().enumerate() {
        by_cluster.entry(c).or_default().push(i);
    }
    let mut shown = 0;
    for members in by_cluster.values() {
        for x in 0..members.len() {
            for y in x + 1..members.len() {
                let (i, j) = (members[x], members[y]);
                if shown < n && truth[i] != truth[j] {
                    shown += 1;
                    show(i, j);
                }
            }
        }
    }
}
