//! Probabilistic matching of source records (batch): standardisation, blocking, comparison,
//! Fellegi-Sunter weights trained with EM, and clustering.
//!
//! The engine is pure, synchronous and in memory: [`match_records`] takes records from many
//! sources and returns a cluster per record, the matched pairs with their evidence, the pairs
//! for review, and the trained parameters.
//!
//! Pipeline:
//! 1. every record is standardised once ([`standardize`]), with phonetic codes and the term
//!    frequency of its names precomputed;
//! 2. candidate pairs come from the union of several blocking rules (email, phone, date of birth
//!    with either name's Soundex, names with city, postcode with surname, national id, company
//!    id and name, external id); a pair found by several rules is compared once;
//! 3. each pair gets a comparison level per attribute ([`compare`]);
//! 4. u probabilities are estimated from random pairs, m probabilities and the match rate by
//!    EM over the candidate pairs' level patterns (no labels);
//! 5. a pair's weight is the sum of `log2(m/u)` over attributes, with a term-frequency
//!    adjustment on exact names (a rare surname counts for more);
//! 6. clustering merges pairs greedily by descending weight, and only when no two records of
//!    the merged clusters are in hard conflict (different first names or dates of birth,
//!    national ids, company ids), so one weak link cannot chain two people together.

pub mod compare;
pub mod csv_input;
mod engine;
pub mod standardize;
pub mod synth;

use std::fmt;
use std::str::FromStr;

pub use compare::{COMPARISONS, LEVEL_NAMES, Levels, N_CMP};
pub use engine::{match_records, score_pair};
pub use standardize::DateOrder;

/// The kind of entity a record describes. Records never merge across kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum EntityKind {
    /// A consumer.
    #[default]
    Person,
    /// A B2B account (a company).
    Account,
    /// A site of an account.
    Site,
    /// A contact person at an account or site.
    Contact,
}

impl EntityKind {
    /// The kind's lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Person => "person",
            EntityKind::Account => "account",
            EntityKind::Site => "site",
            EntityKind::Contact => "contact",
        }
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EntityKind {
    type Err = MatchError;
    fn from_str(s: &str) -> Result<Self, MatchError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "person" | "customer" | "" => Ok(EntityKind::Person),
            "account" => Ok(EntityKind::Account),
            "site" => Ok(EntityKind::Site),
            "contact" => Ok(EntityKind::Contact),
            other => Err(MatchError::UnknownKind(other.to_owned())),
        }
    }
}

/// Errors building records.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatchError {
    /// An attribute name that the matcher does not know.
    #[error("unknown attribute `{0}`")]
    UnknownAttribute(String),
    /// An entity kind that is not person, account, site or contact.
    #[error("unknown entity kind `{0}`")]
    UnknownKind(String),
    /// An external id without a namespace (`namespace:value`).
    #[error("external id `{0}` has no namespace (expected namespace:value)")]
    BadExternalId(String),
}

macro_rules! attributes {
    ($($name:ident),* $(,)?) => {
        /// The raw attribute values of a source record (standardised later, by the matcher).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Attributes {
            $(#[allow(missing_docs)] pub $name: Option<String>,)*
        }

        /// Every attribute name [`Attributes::set`] accepts (besides `external_id`).
        pub const ATTRIBUTE_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl Attributes {
            /// Sets attribute `name`; empty values are stored as missing.
            pub fn set(&mut self, name: &str, value: impl Into<String>) -> Result<(), MatchError> {
                let value: String = value.into();
                let value = if value.trim().is_empty() { None } else { Some(value) };
                match name {
                    $(stringify!($name) => self.$name = value,)*
                    other => return Err(MatchError::UnknownAttribute(other.to_owned())),
                }
                Ok(())
            }

            /// The value of attribute `name`, if known and present.
            pub fn get(&self, name: &str) -> Option<&str> {
                match name {
                    $(stringify!($name) => self.$name.as_deref(),)*
                    _ => None,
                }
            }
        }
    };
}

attributes!(
    first_name,
    last_name,
    full_name,
    date_of_birth,
    email,
    phone,
    street,
    house_number,
    address_line2,
    city,
    postcode,
    region,
    country,
    national_id,
    company_name,
    company_id,
);

/// One record from one source system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// The source system's name.
    pub source: String,
    /// The record's id in that source.
    pub record_id: String,
    /// The kind of entity.
    pub kind: EntityKind,
    /// The attribute values.
    pub attributes: Attributes,
    /// External ids as (namespace, value).
    pub external_ids: Vec<(String, String)>,
}

impl SourceRecord {
    /// A record without attributes.
    pub fn new(source: impl Into<String>, record_id: impl Into<String>, kind: EntityKind) -> Self {
        SourceRecord {
            source: source.into(),
            record_id: record_id.into(),
            kind,
            attributes: Attributes::default(),
            external_ids: Vec::new(),
        }
    }

    /// A record from (attribute name, value) pairs. `external_id` takes `namespace:value`, and
    /// `external_id.<namespace>` takes the bare value. An unknown name is an error naming it.
    pub fn from_pairs<K: AsRef<str>, V: Into<String>>(
        source: impl Into<String>,
        record_id: impl Into<String>,
        kind: EntityKind,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, MatchError> {
        let mut r = SourceRecord::new(source, record_id, kind);
        for (k, v) in pairs {
            r.set(k.as_ref(), v)?;
        }
        Ok(r)
    }

    /// Sets one attribute (see [`SourceRecord::from_pairs`]).
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> Result<(), MatchError> {
        let value: String = value.into();
        if let Some(ns) = name.strip_prefix("external_id.") {
            if !value.trim().is_empty() {
                self.external_ids.push((ns.to_owned(), value.trim().to_owned()));
            }
            return Ok(());
        }
        if name == "external_id" {
            if value.trim().is_empty() {
                return Ok(());
            }
            let (ns, v) = value
                .split_once(':')
                .filter(|(ns, v)| !ns.trim().is_empty() && !v.trim().is_empty())
                .ok_or_else(|| MatchError::BadExternalId(value.clone()))?;
            self.external_ids.push((ns.trim().to_owned(), v.trim().to_owned()));
            return Ok(());
        }
        self.attributes.set(name, value)
    }
}

/// Settings of the matcher.
#[derive(Debug, Clone)]
pub struct MatchSettings {
    /// Pairs whose total weight (log2 Bayes factor) reaches this are matches (a floor: see
    /// `match_log2_odds`).
    pub match_threshold: f64,
    /// Pairs at or above this (and below the match threshold) are possible matches for review;
    /// raised by as much as the match threshold is raised above `match_threshold`.
    pub possible_threshold: f64,
    /// Posterior log2 odds a pair needs to be a match: the match threshold is at least this
    /// minus the log2 prior odds that two records of the same kind match (estimated from the
    /// EM match rate of candidate pairs over all pairs). The more records, the smaller the
    /// prior, so a first name and date of birth shared by chance in a large population do not
    /// make a match although they would in a small one.
    pub match_log2_odds: f64,
    /// Region for phone numbers without a country code (ISO 3166 alpha-2).
    pub default_region: String,
    /// How ambiguous numeric dates are read.
    pub date_order: DateOrder,
    /// EM iterations for the m probabilities.
    pub em_iterations: usize,
    /// Random pairs sampled to estimate the u probabilities.
    pub u_sample_pairs: usize,
    /// Blocks larger than this are skipped (other rules still find their matches).
    pub max_block_size: usize,
    /// Clusters never grow beyond this many records.
    pub max_cluster_size: usize,
    /// Two clusters do not merge when any two of their records, compared directly, weigh less
    /// than this (strong evidence that they are different people), besides hard conflicts.
    pub min_link_weight: f64,
    /// A match-level link of record `x` to `y` does not merge when `x` also links, within this
    /// many bits of that weight, to a record that is a different person from `y` (a household
    /// record without first name links to every member): it goes to review instead.
    pub ambiguity_margin: f64,
    /// Bound on the term-frequency adjustment, in bits either way.
    pub max_tf_adjustment: f64,
    /// Worker threads (0: as many as the machine has).
    pub threads: usize,
    /// Seed of the u sampling.
    pub seed: u64,
}

impl Default for MatchSettings {
    fn default() -> Self {
        MatchSettings {
            match_threshold: 12.0,
            possible_threshold: 4.0,
            match_log2_odds: -1.5,
            default_region: "GB".to_owned(),
            date_order: DateOrder::DayFirst,
            em_iterations: 25,
            u_sample_pairs: 300_000,
            max_block_size: 300,
            max_cluster_size: 64,
            min_link_weight: -8.0,
            ambiguity_margin: 0.0,
            max_tf_adjustment: 6.0,
            threads: 0,
            seed: 0x5eed,
        }
    }
}

/// A scored pair of records (indexes into the input).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPair {
    /// Index of the first record.
    pub a: usize,
    /// Index of the second record.
    pub b: usize,
    /// Total weight (log2 Bayes factor).
    pub weight: f64,
    /// Comparison level per attribute (see [`COMPARISONS`], [`LEVEL_NAMES`]).
    pub levels: Levels,
    /// Weight per attribute, term-frequency adjustment included.
    pub weights: [f32; N_CMP],
}

/// One attribute's part of the evidence for a pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The attribute compared.
    pub attribute: &'static str,
    /// The comparison level reached.
    pub level: &'static str,
    /// Its weight in bits.
    pub weight: f64,
}

impl ScoredPair {
    /// The evidence, attribute by attribute (attributes missing on either side are left out).
    pub fn evidence(&self) -> impl Iterator<Item = Evidence> + '_ {
        (0..N_CMP).filter(|&c| self.levels[c] != 0).map(|c| Evidence {
            attribute: COMPARISONS[c],
            level: LEVEL_NAMES[c][self.levels[c] as usize],
            weight: f64::from(self.weights[c]),
        })
    }
}

/// The trained Fellegi-Sunter parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameters {
    /// m probability per comparison and level (index 0, null, unused).
    pub m: Vec<Vec<f64>>,
    /// u probability per comparison and level.
    pub u: Vec<Vec<f64>>,
    /// Share of candidate pairs that are matches, as estimated by EM.
    pub lambda: f64,
    /// EM iterations run.
    pub iterations: usize,
    /// log2 prior odds that two records of the same kind match.
    pub prior_log2_odds: f64,
    /// The match threshold applied (see [`MatchSettings::match_log2_odds`]).
    pub match_threshold: f64,
    /// The possible-match threshold applied.
    pub possible_threshold: f64,
}

impl Parameters {
    /// `log2(m/u)` of comparison `c` at level `level` (0 for null).
    pub fn weight(&self, c: usize, level: u8) -> f64 {
        if level == 0 { 0.0 } else { (self.m[c][level as usize] / self.u[c][level as usize]).log2() }
    }
}

/// Counts of a matching run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records in.
    pub records: usize,
    /// Distinct candidate pairs compared.
    pub candidate_pairs: usize,
    /// Pairs scored as matches and clustered together.
    pub matched_pairs: usize,
    /// Pairs queued for review.
    pub possible_pairs: usize,
    /// Pairs at match weight kept apart by a hard conflict inside the clusters.
    pub blocked_merges: usize,
    /// Clusters out.
    pub clusters: usize,
    /// Blocks skipped for being larger than `max_block_size`.
    pub skipped_blocks: usize,
    /// Values present but unreadable (dates, phones, emails), treated as missing.
    pub unreadable_values: usize,
}

/// The result of [`match_records`].
#[derive(Debug, Clone)]
pub struct MatchOutcome {
    /// Cluster index per input record (same order as the input); clusters are numbered from 0
    /// in order of first appearance.
    pub cluster_of: Vec<usize>,
    /// Matched pairs (in the same cluster), with evidence.
    pub matches: Vec<ScoredPair>,
    /// Possible matches for review: pairs between the thresholds, or at match weight but kept
    /// apart by clustering, whose records ended in different clusters.
    pub possible: Vec<ScoredPair>,
    /// The trained parameters.
    pub params: Parameters,
    /// Counts.
    pub counts: Counts,
}

#[cfg(test)]
mod tests;
