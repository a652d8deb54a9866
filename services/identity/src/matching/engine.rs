//! The matching pipeline: standardise, block, compare, train (EM), score, cluster.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::compare::{self, FIRST, LAST, Levels, MAX_LEVELS, N_CMP, POSTCODE, STREET, Std, hash_str, n_levels};
use super::{Counts, EntityKind, MatchOutcome, MatchSettings, Parameters, ScoredPair, SourceRecord};

/// Number of blocking rules.
const N_RULES: usize = 14;

fn threads_for(settings: &MatchSettings) -> usize {
    if settings.threads > 0 { settings.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) }
}

/// Runs `f` over `n_tasks` task indexes on `threads` threads (task `i` on thread `i % threads`)
/// and returns one result per thread.
fn par_tasks<R: Send>(threads: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    if threads <= 1 {
        return vec![f(0)];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || f(t))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("matching worker panicked")).collect()
    })
}

fn mix(h: u64, v: u64) -> u64 {
    // splitmix-style combination; never 0
    let mut x = h ^ v.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(h << 6);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    x | 1
}

/// Blocking keys of one record (0: the rule does not apply). The kind is part of every key,
/// so records of different kinds are never compared.
fn block_keys(s: &Std) -> [u64; N_RULES] {
    let base = mix(0, s.kind as u64 + 1);
    let key = |rule: u64, parts: &[u64]| -> u64 {
        if parts.contains(&0) {
            return 0;
        }
        parts.iter().fold(mix(base, rule), |h, &p| mix(h, p))
    };
    let hs = |t: &str| if t.is_empty() { 0 } else { hash_str(t) };
    // day and month in a fixed order, so a swapped day and month block together
    let dob = if s.dob == 0 {
        0
    } else {
        let (y, m, d) = (s.dob / 10_000, s.dob / 100 % 100, s.dob % 100);
        u64::from(y * 10_000 + m.min(d) * 100 + m.max(d))
    };
    let (fsx, lsx) = (u64::from(s.first_sx), u64::from(s.last_sx));
    let (lo, hi) = (fsx.min(lsx), fsx.max(lsx));
    let user = s.email.split('@').next().unwrap_or("");
    let ext = s.ext.iter().min().map_or(0, |&(ns, v)| mix(ns, v));
    [
        key(1, &[hs(&s.email)]),
        key(2, &[s.phone]),
        key(3, &[dob, lsx]),
        key(4, &[dob, fsx]),
        key(5, &[dob, lo, hi]),
        key(6, &[lo, hi, hs(&s.city)]),
        key(7, &[hs(&s.postcode), lsx]),
        key(8, &[hs(&s.national_id)]),
        key(9, &[hs(&s.company_id)]),
        key(10, &[hs(&s.company), lsx | 1]),
        key(11, &[ext]),
        key(12, &[if user.len() >= 4 { hs(user) } else { 0 }, lsx]),
        key(13, &[hs(&s.postcode), hs(&s.house)]),
        key(14, &[hs(&s.street), hs(&s.house)]),
    ]
}

/// Where the entity kind sits in a pattern key (above the levels).
const KIND_SHIFT: u32 = 40;

fn kind_of_pattern(p: u64) -> EntityKind {
    match (p >> KIND_SHIFT) & 7 {
        1 => EntityKind::Account,
        2 => EntityKind::Site,
        3 => EntityKind::Contact,
        _ => EntityKind::Person,
    }
}

/// A compared candidate pair.
#[derive(Clone, Copy)]
struct Cand {
    a: u32,
    b: u32,
    pattern: u64,
}

struct Blocking {
    pairs: Vec<Cand>,
    patterns: HashMap<u64, u64>,
    skipped_blocks: usize,
}

fn candidate_pairs(stds: &[Std], max_block: usize, threads: usize) -> Blocking {
    let keys: Vec<[u64; N_RULES]> = stds.iter().map(block_keys).collect();
    let mut skipped_blocks = 0;
    // (rule, entries sorted by key) and the blocks as ranges into them
    let mut sorted: Vec<Vec<(u64, u32)>> = Vec::with_capacity(N_RULES);
    let mut blocks: Vec<(u8, u32, u32)> = Vec::new();
    for rule in 0..N_RULES {
        let mut entries: Vec<(u64, u32)> =
            keys.iter().enumerate().filter(|(_, k)| k[rule] != 0).map(|(i, k)| (k[rule], i as u32)).collect();
        entries.sort_unstable();
        let mut start = 0;
        while start < entries.len() {
            let mut end = start + 1;
            while end < entries.len() && entries[end].0 == entries[start].0 {
                end += 1;
            }
            let size = end - start;
            if size > max_block {
                skipped_blocks += 1;
            } else if size > 1 {
                blocks.push((rule as u8, start as u32, end as u32));
            }
            start = end;
        }
        sorted.push(entries);
    }
    let results = par_tasks(threads, |t| {
        let mut pairs = Vec::new();
        let mut patterns: HashMap<u64, u64> = HashMap::new();
        for &(rule, start, end) in blocks.iter().skip(t).step_by(threads) {
            let rule = rule as usize;
            let block = &sorted[rule][start as usize..end as usize];
            for (x, &(_, i)) in block.iter().enumerate() {
                let ki = &keys[i as usize];
                for &(_, j) in &block[x + 1..] {
                    let kj = &keys[j as usize];
                    // compared already under an earlier rule?
                    if (0..rule).any(|r| ki[r] != 0 && ki[r] == kj[r]) {
                        continue;
                    }
                    let (a, b) = if i < j { (i, j) } else { (j, i) };
                    let levels = compare::compare(&stds[a as usize], &stds[b as usize]);
                    let kind = stds[a as usize].kind as u64;
                    let pattern = compare::pack(&levels) | (kind << KIND_SHIFT);
                    *patterns.entry(pattern).or_default() += 1;
                    pairs.push(Cand { a, b, pattern });
                }
            }
        }
        (pairs, patterns)
    });
    let mut pairs = Vec::with_capacity(results.iter().map(|r| r.0.len()).sum());
    let mut patterns: HashMap<u64, u64> = HashMap::new();
    for (p, pats) in results {
        pairs.extend(p);
        for (k, v) in pats {
            *patterns.entry(k).or_default() += v;
        }
    }
    Blocking { pairs, patterns, skipped_blocks }
}

/// Weight, in pairs, of the prior of the u probabilities of small inputs.
const SMALL_INPUT_PRIOR_PAIRS: u64 = 1000;

/// u probabilities from random pairs of records of the same kind.
fn estimate_u(stds: &[Std], settings: &MatchSettings) -> Vec<Vec<f64>> {
    let mut counts = [[0u64; MAX_LEVELS]; N_CMP];
    let n = stds.len();
    // Few records: every pair is compared once, and a prior of SMALL_INPUT_PRIOR_PAIRS pairs
    // that disagree (but for one pair in a thousand agreeing at each other level) keeps the
    // estimate sane, since a handful of records is mostly duplicates, not random pairs.
    let small = n * n.saturating_sub(1) / 2 < settings.u_sample_pairs;
    if small {
        for (c, row) in counts.iter_mut().enumerate() {
            let levels = n_levels(c);
            for v in &mut row[1..levels - 1] {
                *v += SMALL_INPUT_PRIOR_PAIRS / 1000;
            }
            row[levels - 1] += SMALL_INPUT_PRIOR_PAIRS - (levels as u64 - 2) * (SMALL_INPUT_PRIOR_PAIRS / 1000);
        }
        for i in 0..n {
            for j in i + 1..n {
                if stds[i].kind != stds[j].kind {
                    continue;
                }
                let l = compare::compare(&stds[i], &stds[j]);
                for c in 0..N_CMP {
                    counts[c][l[c] as usize] += 1;
                }
            }
        }
    } else if n >= 2 {
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let mut drawn = 0;
        let mut attempts = 0;
        while drawn < settings.u_sample_pairs && attempts < settings.u_sample_pairs * 4 {
            attempts += 1;
            let i = rng.random_range(0..n);
            let j = rng.random_range(0..n);
            if i == j || stds[i].kind != stds[j].kind {
                continue;
            }
            drawn += 1;
            let l = compare::compare(&stds[i], &stds[j]);
            for c in 0..N_CMP {
                counts[c][l[c] as usize] += 1;
            }
        }
    }
    (0..N_CMP)
        .map(|c| {
            let levels = n_levels(c);
            let nonnull: u64 = counts[c][1..levels].iter().sum();
            let mut u = vec![0.0; levels];
            for l in 1..levels {
                // a small pseudo-count keeps unseen levels (exact email) finite but rare
                u[l] = (counts[c][l] as f64 + 0.1) / (nonnull as f64 + 0.1 * levels as f64);
            }
            u
        })
        .collect()
}

/// Smallest m probability of any level.
const M_FLOOR: f64 = 1e-3;

fn initial_m(c: usize) -> Vec<f64> {
    let levels = n_levels(c);
    let mut m = vec![0.0; levels];
    if levels == 3 {
        m[1] = 0.9;
        m[2] = 0.1;
    } else {
        m[1] = 0.7;
        for v in m.iter_mut().take(levels - 1).skip(2) {
            *v = 0.25 / (levels - 3) as f64;
        }
        m[levels - 1] = 0.05;
    }
    m
}

/// Fellegi-Sunter EM over the level patterns of the candidate pairs (no labels). Both classes
/// are re-estimated (the non-match class of candidate pairs holds households and namesakes, so
/// its level distribution is far from that of random pairs); the weights then use the m
/// probabilities of the match class and the u probabilities of random pairs.
fn train(patterns: &HashMap<u64, u64>, u: Vec<Vec<f64>>, iterations: usize) -> Parameters {
    // (levels, count, known non-match: a hard conflict)
    let pats: Vec<(Levels, f64, bool)> = patterns
        .iter()
        .map(|(&p, &n)| {
            let l = compare::unpack(p);
            (l, n as f64, compare::conflict(&l, kind_of_pattern(p)))
        })
        .collect();
    let total: f64 = pats.iter().map(|p| p.1).sum();
    let mut m: Vec<Vec<f64>> = (0..N_CMP).map(initial_m).collect();
    let mut u_candidates = u.clone();
    let mut lambda: f64 = 0.3;
    let mut run = 0;
    if total > 0.0 {
        for it in 0..iterations {
            run = it + 1;
            let ln =
                |p: &Vec<Vec<f64>>| -> Vec<Vec<f64>> { p.iter().map(|v| v.iter().map(|x| x.ln()).collect()).collect() };
            let (lm, lu) = (ln(&m), ln(&u_candidates));
            let mut acc_m = [[0f64; MAX_LEVELS]; N_CMP];
            let mut acc_u = [[0f64; MAX_LEVELS]; N_CMP];
            let mut matched = 0.0;
            for (l, n, known_non_match) in &pats {
                let mut sm = lambda.ln();
                let mut su = (1.0 - lambda).ln();
                for c in 0..N_CMP {
                    let v = l[c] as usize;
                    if v != 0 {
                        sm += lm[c][v];
                        su += lu[c][v];
                    }
                }
                let r = if *known_non_match { 0.0 } else { 1.0 / (1.0 + (su - sm).exp()) };
                matched += r * n;
                for c in 0..N_CMP {
                    let v = l[c] as usize;
                    // leave-one-out: how likely the pair is a match on the evidence of the
                    // other attributes, so an attribute cannot define the match class by itself
                    // (e.g. "same address" households, or moved addresses never learned)
                    let rc = if *known_non_match || v == 0 {
                        r
                    } else {
                        1.0 / (1.0 + ((su - lu[c][v]) - (sm - lm[c][v])).exp())
                    };
                    acc_m[c][v] += rc * n;
                    acc_u[c][v] += (1.0 - rc) * n;
                }
            }
            let new_lambda = (matched / total).clamp(1e-6, 1.0 - 1e-6);
            let mut change = (new_lambda - lambda).abs();
            lambda = new_lambda;
            for c in 0..N_CMP {
                let levels = n_levels(c);
                let sum_m: f64 = acc_m[c][1..levels].iter().sum();
                let sum_u: f64 = acc_u[c][1..levels].iter().sum();
                for v in 1..levels {
                    // a floor keeps every level possible for a match (no infinite weights)
                    let new = ((acc_m[c][v] + 1e-3) / (sum_m + 1e-3 * levels as f64)).max(M_FLOOR);
                    change = change.max((new - m[c][v]).abs());
                    m[c][v] = new;
                    u_candidates[c][v] = (acc_u[c][v] + 1e-3) / (sum_u + 1e-3 * levels as f64);
                }
            }
            if change < 1e-6 {
                break;
            }
        }
    }
    Parameters { m, u, lambda, iterations: run, prior_log2_odds: 0.0, match_threshold: 0.0, possible_threshold: 0.0 }
}

struct Scorer {
    w: [[f64; MAX_LEVELS]; N_CMP],
    u_first_exact: f64,
    u_last_exact: f64,
    max_tf: f64,
}

impl Scorer {
    fn new(p: &Parameters, settings: &MatchSettings) -> Self {
        let mut w = [[0f64; MAX_LEVELS]; N_CMP];
        for (c, row) in w.iter_mut().enumerate() {
            for (l, v) in row.iter_mut().enumerate().take(n_levels(c)) {
                *v = p.weight(c, l as u8);
            }
        }
        Scorer { w, u_first_exact: p.u[FIRST][1], u_last_exact: p.u[LAST][1], max_tf: settings.max_tf_adjustment }
    }

    /// Per-attribute weights of a pair, term-frequency adjustment included.
    fn weights(&self, a: &Std, b: &Std, l: &Levels) -> [f32; N_CMP] {
        let mut out = [0f32; N_CMP];
        for c in 0..N_CMP {
            out[c] = self.w[c][l[c] as usize] as f32;
        }
        let adj = |u: f64, tf: f32| {
            if tf > 0.0 { (u / f64::from(tf)).log2().clamp(-self.max_tf, self.max_tf) } else { 0.0 }
        };
        // street and postcode are not independent: one address agreeing is one piece of
        // evidence, so an exact postcode adds nothing to an exact street and house number
        if l[STREET] == 1 && l[POSTCODE] == 1 {
            out[POSTCODE] = out[POSTCODE].min(0.0);
        }
        // the names as given (not crosswise) are equal: their frequency says how telling
        if matches!(l[FIRST], 1 | 2) && a.first_canon == b.first_canon {
            out[FIRST] += adj(self.u_first_exact, a.first_tf.max(b.first_tf)) as f32;
        }
        if l[LAST] == 1 && a.last == b.last {
            out[LAST] += adj(self.u_last_exact, a.last_tf.max(b.last_tf)) as f32;
        }
        out
    }

    fn total(&self, a: &Std, b: &Std, l: &Levels) -> f64 {
        self.weights(a, b, l).iter().map(|&x| f64::from(x)).sum()
    }
}

fn term_frequencies(stds: &mut [Std]) {
    let mut first: HashMap<u64, u32> = HashMap::new();
    let mut last: HashMap<u64, u32> = HashMap::new();
    let (mut nf, mut nl) = (0u32, 0u32);
    for s in stds.iter() {
        if !s.first_canon.is_empty() {
            *first.entry(hash_str(&s.first_canon)).or_default() += 1;
            nf += 1;
        }
        if !s.last.is_empty() {
            *last.entry(hash_str(&s.last)).or_default() += 1;
            nl += 1;
        }
    }
    for s in stds.iter_mut() {
        if !s.first_canon.is_empty() {
            s.first_tf = first[&hash_str(&s.first_canon)] as f32 / nf as f32;
        }
        if !s.last.is_empty() {
            s.last_tf = last[&hash_str(&s.last)] as f32 / nl as f32;
        }
    }
}

/// Sets the thresholds of a run: the prior odds that two records of the same kind match are
/// the expected matches among the candidate pairs (EM's match rate) over all pairs.
fn set_thresholds(params: &mut Parameters, stds: &[Std], candidate_pairs: usize, settings: &MatchSettings) {
    let mut per_kind: HashMap<EntityKind, f64> = HashMap::new();
    for s in stds {
        *per_kind.entry(s.kind).or_default() += 1.0;
    }
    let all_pairs: f64 = per_kind.values().map(|n| n * (n - 1.0) / 2.0).sum();
    let expected = params.lambda * candidate_pairs as f64;
    params.prior_log2_odds =
        if expected >= 1.0 && all_pairs > expected { (expected / (all_pairs - expected)).log2() } else { 0.0 };
    params.match_threshold = settings.match_threshold.max(settings.match_log2_odds - params.prior_log2_odds);
    params.possible_threshold = settings.possible_threshold + (params.match_threshold - settings.match_threshold);
}

struct Clusters {
    parent: Vec<u32>,
    members: Vec<Vec<u32>>,
}

impl Clusters {
    fn new(n: usize) -> Self {
        Clusters { parent: (0..n as u32).collect(), members: (0..n as u32).map(|i| vec![i]).collect() }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    /// Merges the clusters of `a` and `b` unless that would put two conflicting records
    /// together or exceed `max_size`. Returns whether they are together afterwards.
    fn try_merge(&mut self, a: u32, b: u32, max_size: usize, compatible: impl Fn(u32, u32) -> bool) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return true;
        }
        let (ma, mb) = (&self.members[ra as usize], &self.members[rb as usize]);
        if ma.len() + mb.len() > max_size {
            return false;
        }
        for &x in ma {
            for &y in mb {
                if !compatible(x, y) {
                    return false;
                }
            }
        }
        let (big, small) = if ma.len() >= mb.len() { (ra, rb) } else { (rb, ra) };
        let moved = std::mem::take(&mut self.members[small as usize]);
        self.members[big as usize].extend(moved);
        self.parent[small as usize] = big;
        true
    }
}

/// Matches `records`: see the module documentation for the pipeline.
pub fn match_records(records: &[SourceRecord], settings: &MatchSettings) -> MatchOutcome {
    let threads = threads_for(settings).max(1);
    let region = settings.default_region.trim().to_ascii_uppercase().parse::<phonenumber::country::Id>().ok();
    let chunk = records.len().div_ceil(threads).max(1);
    let parts = par_tasks(threads, |t| {
        let dm = rphonetic::DoubleMetaphone::default();
        records
            .chunks(chunk)
            .nth(t)
            .unwrap_or(&[])
            .iter()
            .map(|r| compare::standardize(r, region, settings.date_order, &dm))
            .collect::<Vec<_>>()
    });
    let mut stds: Vec<Std> = parts.into_iter().flatten().collect();
    term_frequencies(&mut stds);
    let unreadable_values = stds.iter().map(|s| s.unreadable as usize).sum();

    let blocking = candidate_pairs(&stds, settings.max_block_size, threads);
    let u = estimate_u(&stds, settings);
    let mut params = train(&blocking.patterns, u, settings.em_iterations);
    set_thresholds(&mut params, &stds, blocking.pairs.len(), settings);
    let (match_threshold, possible_threshold) = (params.match_threshold, params.possible_threshold);
    let scorer = Scorer::new(&params, settings);

    // score; keep what can matter
    struct Kept {
        a: u32,
        b: u32,
        weight: f32,
        pattern: u64,
        conflict: bool,
    }
    let candidate_count = blocking.pairs.len();
    let pairs = blocking.pairs;
    let per_thread = par_tasks(threads, |t| {
        let mut kept = Vec::new();
        for p in pairs.iter().skip(t).step_by(threads) {
            let (a, b) = (&stds[p.a as usize], &stds[p.b as usize]);
            let l = compare::unpack(p.pattern);
            let w = scorer.total(a, b, &l);
            if w >= possible_threshold {
                kept.push(Kept {
                    a: p.a,
                    b: p.b,
                    weight: w as f32,
                    pattern: p.pattern,
                    conflict: compare::conflict(&l, a.kind),
                });
            }
        }
        kept
    });
    drop(pairs);
    let mut kept: Vec<Kept> = per_thread.into_iter().flatten().collect();
    kept.sort_unstable_by(|x, y| y.weight.total_cmp(&x.weight).then(x.a.cmp(&y.a)).then(x.b.cmp(&y.b)));

    // match-level links of each record (compressed rows), for the ambiguity check
    let links = |k: &Kept| !k.conflict && f64::from(k.weight) >= match_threshold;
    let mut offsets = vec![0u32; stds.len() + 1];
    for k in kept.iter().filter(|k| links(k)) {
        offsets[k.a as usize + 1] += 1;
        offsets[k.b as usize + 1] += 1;
    }
    for i in 0..stds.len() {
        offsets[i + 1] += offsets[i];
    }
    let mut fill = offsets.clone();
    let mut neighbours = vec![(0u32, 0f32); offsets[stds.len()] as usize];
    for k in kept.iter().filter(|k| links(k)) {
        neighbours[fill[k.a as usize] as usize] = (k.b, k.weight);
        fill[k.a as usize] += 1;
        neighbours[fill[k.b as usize] as usize] = (k.a, k.weight);
        fill[k.b as usize] += 1;
    }
    drop(fill);
    // `x` is ambiguous between `other` and another record it links to nearly as strongly that
    // is a different person from `other` (a household record without first name or date of
    // birth links to every member): such a link goes to review, not into a cluster
    let margin = settings.ambiguity_margin as f32;
    let ambiguous = |x: u32, other: u32, w: f32| {
        neighbours[offsets[x as usize] as usize..offsets[x as usize + 1] as usize].iter().any(|&(c, wc)| {
            c != other && wc >= w - margin && compare::hard_conflict(&stds[c as usize], &stds[other as usize])
        })
    };

    // cluster: greedy by descending weight, refusing merges that bring conflicts together
    let mut clusters = Clusters::new(stds.len());
    let mut blocked_merges = 0;
    for k in &kept {
        if !links(k) {
            continue;
        }
        if ambiguous(k.a, k.b, k.weight) || ambiguous(k.b, k.a, k.weight) {
            blocked_merges += 1;
            continue;
        }
        let compatible = |x: u32, y: u32| {
            let (a, b) = (&stds[x as usize], &stds[y as usize]);
            if compare::hard_conflict(a, b) {
                return false;
            }
            // strong evidence against any two records of the merged cluster also stops it
            scorer.total(a, b, &compare::compare(a, b)) >= settings.min_link_weight
        };
        if !clusters.try_merge(k.a, k.b, settings.max_cluster_size, compatible) {
            blocked_merges += 1;
        }
    }

    let scored = |k: &Kept| {
        let l = compare::unpack(k.pattern);
        let (a, b) = (&stds[k.a as usize], &stds[k.b as usize]);
        let weights = scorer.weights(a, b, &l);
        ScoredPair {
            a: k.a as usize,
            b: k.b as usize,
            weight: weights.iter().map(|&x| f64::from(x)).sum(),
            levels: l,
            weights,
        }
    };
    let mut matches = Vec::new();
    let mut possible = Vec::new();
    for k in &kept {
        if k.conflict {
            continue;
        }
        let together = clusters.find(k.a) == clusters.find(k.b);
        if together && f64::from(k.weight) >= match_threshold {
            matches.push(scored(k));
        } else if !together {
            possible.push(scored(k));
        }
    }

    let mut id_of_root: HashMap<u32, usize> = HashMap::new();
    let mut cluster_of = Vec::with_capacity(stds.len());
    for i in 0..stds.len() as u32 {
        let root = clusters.find(i);
        let next = id_of_root.len();
        cluster_of.push(*id_of_root.entry(root).or_insert(next));
    }
    let counts = Counts {
        records: records.len(),
        candidate_pairs: candidate_count,
        matched_pairs: matches.len(),
        possible_pairs: possible.len(),
        blocked_merges,
        clusters: id_of_root.len(),
        skipped_blocks: blocking.skipped_blocks,
        unreadable_values,
    };
    MatchOutcome { cluster_of, matches, possible, params, counts }
}

/// Compares two records with trained parameters (without term-frequency adjustment), for
/// explaining a pair that was never a candidate, or diagnosing a missed match.
pub fn score_pair(
    a: &SourceRecord,
    b: &SourceRecord,
    params: &Parameters,
    settings: &MatchSettings,
) -> (ScoredPair, bool) {
    let region = settings.default_region.trim().to_ascii_uppercase().parse::<phonenumber::country::Id>().ok();
    let dm = rphonetic::DoubleMetaphone::default();
    let sa = compare::standardize(a, region, settings.date_order, &dm);
    let sb = compare::standardize(b, region, settings.date_order, &dm);
    let levels = compare::compare(&sa, &sb);
    let mut weights = [0f32; N_CMP];
    for c in 0..N_CMP {
        weights[c] = params.weight(c, levels[c]) as f32;
    }
    let conflict = sa.kind != sb.kind || compare::conflict(&levels, sa.kind);
    (ScoredPair { a: 0, b: 1, weight: weights.iter().map(|&x| f64::from(x)).sum(), levels, weights }, conflict)
}
