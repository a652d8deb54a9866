//! Golden records (GetGoldenRecord): the surviving value of every attribute over the source records matched
//! to a customer, chosen per attribute by the rule of `[identity.survivorship]`.
//!
//! Values are compared standardised (as the matcher reads them, [`standardize_attribute`]). Every rule
//! breaks ties by recency (the record's `updated_at`, newest first), then by source name and record id, so
//! the same records always give the same golden record. A golden record's `updated_at` is the newest
//! `observed_at` of its surviving values: when the youngest record that contributes a value was updated.

use std::collections::HashMap;

use rapport_errors::Error;
use rapport_proto::identity::v1 as pb;
use rapport_rpc::convert::timestamp;
use rapport_storage::sql::Exec;

use crate::graph::Graph;
use crate::matching::ATTRIBUTE_NAMES;
use crate::matching::standardize::{DateOrder, standardize_attribute};
use crate::settings::{Rule, SurvivorshipSettings};

/// The read mask paths of GetGoldenRecord.
pub const PATHS: [&str; 3] = ["attributes", "records", "candidates"];

/// A matched source record as survivorship reads it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The source system.
    pub source: String,
    /// The record's id there.
    pub record_id: String,
    /// When the source last updated it (milliseconds since the epoch).
    pub at: i64,
    /// Its standardised attribute values by name (present values only).
    pub values: HashMap<&'static str, String>,
}

impl Observed {
    /// A stored record with its values standardised.
    pub fn of(r: &pb::SourceRecord, at: i64, region: Option<phonenumber::country::Id>, order: DateOrder) -> Observed {
        let values = ATTRIBUTE_NAMES
            .iter()
            .filter_map(|name| {
                let raw = r.attributes.get(*name)?;
                standardize_attribute(name, raw, region, order).map(|v| (*name, v))
            })
            .collect();
        Observed { source: r.source.clone(), record_id: r.record_id.clone(), at, values }
    }

    fn reference(&self) -> pb::SourceRecordRef {
        pb::SourceRecordRef { source: self.source.clone(), record_id: self.record_id.clone() }
    }
}

/// Newest first, then by source name and record id.
fn by_recency(a: &Observed, b: &Observed) -> std::cmp::Ordering {
    b.at.cmp(&a.at).then_with(|| a.source.cmp(&b.source)).then_with(|| a.record_id.cmp(&b.record_id))
}

/// The index in `holders` (sorted by recency, each holding `attribute`) of the record whose value survives.
fn survivor(rule: Rule, attribute: &str, holders: &[&Observed], settings: &SurvivorshipSettings) -> usize {
    let value = |i: usize| holders[i].values[attribute].as_str();
    // Smallest key wins; `min_by_key` keeps the first of equal keys, which is the most recent.
    let key = |i: usize| -> usize {
        match rule {
            Rule::MostRecent => 0,
            Rule::SourcePriority => settings.rank_of(&holders[i].source),
            Rule::MostFrequent => usize::MAX - holders.iter().filter(|h| h.values[attribute] == value(i)).count(),
            Rule::Longest => usize::MAX - value(i).chars().count(),
            Rule::MostCompleteRecord => usize::MAX - holders[i].values.len(),
        }
    };
    (0..holders.len()).min_by_key(|&i| key(i)).unwrap_or(0)
}

/// A national id shown only by its last two characters, as CompareRecords shows it.
fn shown(attribute: &str, value: &str) -> String {
    crate::records::mask(attribute, value.to_string())
}

/// The surviving value of every attribute some record has; `with_candidates` adds the other values.
pub fn survive(
    records: &[Observed],
    settings: &SurvivorshipSettings,
    with_candidates: bool,
) -> HashMap<String, pb::SurvivingValue> {
    let mut sorted: Vec<&Observed> = records.iter().collect();
    sorted.sort_by(|a, b| by_recency(a, b));
    let mut out = HashMap::new();
    for attribute in ATTRIBUTE_NAMES {
        let holders: Vec<&Observed> = sorted.iter().copied().filter(|r| r.values.contains_key(attribute)).collect();
        if holders.is_empty() {
            continue;
        }
        let rule = settings.rule_of(attribute);
        let chosen = holders[survivor(rule, attribute, &holders, settings)];
        let value = &chosen.values[attribute];
        let candidates = if with_candidates {
            holders
                .iter()
                .filter(|h| &h.values[attribute] != value)
                .map(|h| pb::CandidateValue {
                    value: shown(attribute, &h.values[attribute]),
                    record: Some(h.reference()),
                    observed_at: Some(timestamp(h.at)),
                })
                .collect()
        } else {
            Vec::new()
        };
        out.insert(
            attribute.to_string(),
            pb::SurvivingValue {
                value: shown(attribute, value),
                record: Some(chosen.reference()),
                rule: wire_rule(rule) as i32,
                observed_at: Some(timestamp(chosen.at)),
                record_count: holders.len() as i32,
                agreeing_count: holders.iter().filter(|h| &h.values[attribute] == value).count() as i32,
                candidates,
            },
        );
    }
    out
}

/// The wire form of a rule.
pub fn wire_rule(rule: Rule) -> pb::SurvivorshipRule {
    match rule {
        Rule::MostRecent => pb::SurvivorshipRule::MostRecent,
        Rule::SourcePriority => pb::SurvivorshipRule::SourcePriority,
        Rule::MostFrequent => pb::SurvivorshipRule::MostFrequent,
        Rule::Longest => pb::SurvivorshipRule::Longest,
        Rule::MostCompleteRecord => pb::SurvivorshipRule::MostCompleteRecord,
    }
}

/// The survivorship configuration on the wire (GetSettings).
pub fn settings_to_wire(s: &SurvivorshipSettings) -> pb::SurvivorshipSettings {
    pb::SurvivorshipSettings {
        default_rule: wire_rule(Rule::from_name(&s.default_rule).unwrap_or_default()) as i32,
        attribute_rules: s.attribute_rules.keys().map(|a| (a.clone(), wire_rule(s.rule_of(a)) as i32)).collect(),
        source_priority: s.source_priority.iter().map(|p| p.trim().to_string()).collect(),
    }
}

/// The golden record of `customer_id` (or of the survivor it was merged into). `paths` are the checked
/// read mask paths: none means attributes and records; "candidates" implies attributes. An erased customer
/// has an empty golden record.
pub async fn golden_record(graph: &Graph, customer_id: &str, paths: &[String]) -> Result<pb::GoldenRecord, Error> {
    let wants = |p: &str| paths.iter().any(|x| x == p);
    let with_candidates = wants("candidates");
    let with_attributes = paths.is_empty() || wants("attributes") || with_candidates;
    let with_records = paths.is_empty() || wants("records");
    let id = graph.canonical(customer_id).await?.ok_or_else(|| Error::not_found(format!("customer {customer_id}")))?;
    let mut exec = Exec::Db(graph.db());
    let kinds: Vec<(String,)> = exec.all("SELECT kind FROM customers WHERE id = $1", &[id.as_str().into()]).await?;
    let kind = kinds.into_iter().next().map(|k| k.0).unwrap_or_default();
    if kind == "erased" {
        // EraseCustomer keeps the id as a tombstone; nothing about the person is shown again.
        return Ok(pb::GoldenRecord { customer_id: id, kind: pb::EntityKind::Person as i32, ..Default::default() });
    }
    let rows: Vec<(String, String, String, i64)> = exec
        .all(
            &format!(
                "SELECT r.source, r.record_id, r.data, r.updated_at FROM source_records r JOIN customers c ON c.id = r.customer_id
                 WHERE {} = $1 ORDER BY r.source, r.record_id",
                crate::records::CURRENT
            ),
            &[id.as_str().into()],
        )
        .await?;
    let settings = crate::records::engine_settings(graph);
    let region = settings.default_region.parse::<phonenumber::country::Id>().ok();
    let mut observed = Vec::with_capacity(rows.len());
    for (_, _, data, at) in &rows {
        let record: pb::SourceRecord = crate::records::decode(data)?;
        observed.push(Observed::of(&record, *at, region, settings.date_order));
    }
    let attributes = survive(&observed, &graph.settings().survivorship, with_candidates);
    let updated_at = attributes.values().filter_map(|v| v.observed_at).max_by_key(|t| (t.seconds, t.nanos));
    Ok(pb::GoldenRecord {
        customer_id: id,
        kind: crate::grpc::kind_to_wire(&kind) as i32,
        attributes: if with_attributes { attributes } else { HashMap::new() },
        records: if with_records { observed.iter().map(Observed::reference).collect() } else { Vec::new() },
        updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(source: &str, id: &str, at: i64, pairs: &[(&str, &str)]) -> Observed {
        let r = pb::SourceRecord {
            source: source.into(),
            record_id: id.into(),
            attributes: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        Observed::of(&r, at, None, DateOrder::DayFirst)
    }

    fn settings(default_rule: &str, priority: &[&str]) -> SurvivorshipSettings {
        SurvivorshipSettings {
            default_rule: default_rule.into(),
            source_priority: priority.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn pick(records: &[Observed], s: &SurvivorshipSettings, attribute: &str) -> (String, String) {
        let v = survive(records, s, false).remove(attribute).unwrap();
        (v.value, v.record.unwrap().source)
    }

    #[test]
    fn each_rule_picks_its_value_and_ties_go_to_the_newest_then_the_source_name() {
        let records = [
            rec("crm", "1", 1_000, &[("first_name", "Katherine"), ("email", "kate@old.example"), ("city", "Leeds")]),
            rec("webshop", "9", 3_000, &[("first_name", "K."), ("email", "KATE@new.example")]),
            rec("loyalty", "4", 2_000, &[("first_name", "Kate"), ("email", "kate@old.example")]),
        ];
        assert_eq!(
            pick(&records, &settings("most_recent", &[]), "email"),
            ("kate@new.example".into(), "webshop".into())
        );
        assert_eq!(pick(&records, &settings("source_priority", &["crm"]), "email").1, "crm");
        // Unlisted sources tie: the newest of them.
        assert_eq!(pick(&records, &settings("source_priority", &["nobody"]), "email").1, "webshop");
        assert_eq!(
            pick(&records, &settings("most_frequent", &[]), "email"),
            ("kate@old.example".into(), "loyalty".into())
        );
        assert_eq!(pick(&records, &settings("longest", &[]), "first_name"), ("katherine".into(), "crm".into()));
        assert_eq!(pick(&records, &settings("most_complete_record", &[]), "first_name").1, "crm");
        // Same time, same value length: the source name decides.
        let tied = [rec("b", "1", 5, &[("city", "Ulm")]), rec("a", "1", 5, &[("city", "Ems")])];
        assert_eq!(pick(&tied, &settings("longest", &[]), "city"), ("ems".into(), "a".into()));
    }

    #[test]
    fn counts_candidates_and_masked_national_ids() {
        let records = [
            rec("crm", "1", 1, &[("national_id", "ab 12 34 56 c"), ("email", "a@x.example")]),
            rec("shop", "2", 2, &[("national_id", "AB123456C")]),
            rec("web", "3", 3, &[("national_id", "ZZ999999Z")]),
        ];
        let out = survive(&records, &settings("most_frequent", &[]), true);
        let nid = &out["national_id"];
        assert_eq!(nid.value, "*******6C");
        assert_eq!((nid.record_count, nid.agreeing_count), (3, 2));
        assert_eq!(nid.record.as_ref().unwrap().source, "shop", "the newer of the agreeing records");
        assert_eq!(nid.candidates.len(), 1);
        assert_eq!(nid.candidates[0].value, "*******9Z");
        assert!(!out.contains_key("phone"), "attributes no record has are absent");
        assert!(survive(&records, &settings("most_frequent", &[]), false)["national_id"].candidates.is_empty());
    }
}
