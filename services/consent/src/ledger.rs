//! The ledger's pure logic: which entry is in force, what Check answers. No I/O here.

use rapport_proto::consent::v1::{CheckReason, ConsentEntry, ConsentStatus, Suppression};

use crate::settings::{ConsentSettings, MergePolicy};

/// A stored entry with the values evaluation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Recording order.
    pub seq: i64,
    /// When the person acted (ms).
    pub occurred: i64,
    /// When Rapport stored it (ms).
    pub recorded: i64,
    /// When a grant lapses (ms).
    pub expires: Option<i64>,
    /// The status number.
    pub status: i32,
    /// The customer id it was recorded under ("" for a contact point nobody held).
    pub lineage: String,
    /// The entry as stored.
    pub entry: ConsentEntry,
}

fn ms(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().and_then(rapport_rpc::convert::millis)
}

impl Stored {
    /// Wraps a decoded entry.
    pub fn new(seq: i64, entry: ConsentEntry) -> Self {
        Self {
            seq,
            occurred: ms(&entry.occurred_at).unwrap_or_default(),
            recorded: ms(&entry.recorded_at).unwrap_or_default(),
            expires: ms(&entry.expires_at),
            status: entry.status,
            lineage: entry.recorded_customer_id.clone(),
            entry,
        }
    }

    /// Whether the entry allows contact at `at`.
    pub fn allows(&self, at: i64) -> bool {
        self.status == ConsentStatus::Granted as i32 && self.expires.is_none_or(|e| e > at)
    }

    fn order(&self) -> (i64, i64) {
        (self.occurred, self.seq)
    }
}

/// The entry in force at `at` among `entries` (all about one channel and purpose of one person): the one
/// the person made last (a late-arriving older entry never overrides a newer one). Under the
/// most-restrictive merge policy, for what was recorded before the latest merge (`merged_at`), each merged
/// customer's own choice is taken and a refusal of any of them wins over a grant of another; choices made
/// after the merge apply normally.
pub fn in_force<'a>(
    entries: &[&'a Stored],
    at: i64,
    merged_at: Option<i64>,
    policy: MergePolicy,
) -> Option<&'a Stored> {
    let visible: Vec<&Stored> = entries.iter().copied().filter(|e| e.occurred <= at).collect();
    let newest = |it: &mut dyn Iterator<Item = &'a Stored>| it.max_by_key(|e| e.order());
    let merged_at = match (policy, merged_at) {
        (MergePolicy::MostRestrictive, Some(m)) => m,
        _ => return newest(&mut visible.iter().copied()),
    };
    let (before, after): (Vec<&Stored>, Vec<&Stored>) = visible.iter().partition(|e| e.recorded < merged_at);
    let mut lineages: Vec<&str> = before.iter().map(|e| e.lineage.as_str()).collect();
    lineages.sort_unstable();
    lineages.dedup();
    let winners: Vec<&Stored> =
        lineages.iter().filter_map(|l| newest(&mut before.iter().copied().filter(|e| e.lineage == *l))).collect();
    let restrictive =
        newest(&mut winners.iter().copied().filter(|e| !e.allows(at))).or_else(|| newest(&mut winners.iter().copied()));
    newest(&mut after.iter().copied().chain(restrictive))
}

/// What Check answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub allowed: bool,
    pub reason: CheckReason,
    pub explanation: String,
    pub entry: Option<ConsentEntry>,
    pub suppression: Option<Suppression>,
    pub region: String,
}

/// The answer for one channel and purpose given the entry in force, the active suppression and the region.
pub fn decide(
    settings: &ConsentSettings,
    purpose: &str,
    entry: Option<&Stored>,
    suppression: Option<&Suppression>,
    region: &str,
    at: i64,
) -> Outcome {
    let region = if region.is_empty() { settings.default_region.clone() } else { region.to_string() };
    let out = |allowed, reason, explanation: String| Outcome {
        allowed,
        reason,
        explanation,
        entry: entry.map(|e| e.entry.clone()),
        suppression: None,
        region: region.clone(),
    };
    if let Some(s) = suppression {
        let reason = rapport_proto::consent::v1::SuppressionReason::try_from(s.reason)
            .map(|r| r.as_str_name().trim_start_matches("SUPPRESSION_REASON_").to_ascii_lowercase())
            .unwrap_or_default();
        let mut o = out(false, CheckReason::Suppressed, format!("suppressed ({reason}); suppressions win over grants"));
        o.suppression = Some(s.clone());
        return o;
    }
    if settings.is_service(purpose) {
        return out(true, CheckReason::ServiceMessage, "service message, not suppressed".into());
    }
    let date = |t: i64| chrono::DateTime::from_timestamp_millis(t).map(|d| d.format("%Y-%m-%d").to_string());
    match entry {
        Some(e) => {
            let on = date(e.occurred).unwrap_or_default();
            let source = e.entry.provenance.as_ref().map(|p| p.source.as_str()).unwrap_or_default();
            match ConsentStatus::try_from(e.status).unwrap_or(ConsentStatus::Unspecified) {
                ConsentStatus::Granted if e.allows(at) => {
                    out(true, CheckReason::Granted, format!("granted on {on} via {source}"))
                }
                ConsentStatus::Granted => out(
                    false,
                    CheckReason::Expired,
                    format!("granted on {on}, expired on {}", e.expires.and_then(date).unwrap_or_default()),
                ),
                ConsentStatus::Denied => out(false, CheckReason::Denied, format!("denied on {on} via {source}")),
                ConsentStatus::Withdrawn => {
                    out(false, CheckReason::Withdrawn, format!("withdrawn on {on} via {source}"))
                }
                ConsentStatus::Pending => out(false, CheckReason::Pending, format!("double opt-in pending since {on}")),
                ConsentStatus::Unspecified => out(false, CheckReason::Denied, "unreadable entry".into()),
            }
        }
        None if settings.opt_out(&region) => {
            out(true, CheckReason::NoRecordOptOutRegion, "nothing recorded; the region is opt-out".into())
        }
        None => out(false, CheckReason::NoRecordOptInRegion, "nothing recorded; the region is opt-in".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, lineage: &str, status: ConsentStatus, occurred: i64, recorded: i64) -> Stored {
        Stored {
            seq,
            occurred,
            recorded,
            expires: None,
            status: status as i32,
            lineage: lineage.into(),
            entry: ConsentEntry { entry_id: format!("cse_{seq}"), ..Default::default() },
        }
    }

    #[test]
    fn the_newest_choice_wins_and_late_older_entries_do_not_override() {
        let granted = entry(1, "c", ConsentStatus::Granted, 100, 100);
        let withdrawn = entry(2, "c", ConsentStatus::Withdrawn, 200, 200);
        let late = entry(3, "c", ConsentStatus::Granted, 150, 300);
        let all = [&granted, &withdrawn, &late];
        assert_eq!(in_force(&all, 1000, None, MergePolicy::MostRestrictive).unwrap().seq, 2);
        // Checked in the past, before the withdrawal.
        assert_eq!(in_force(&all, 160, None, MergePolicy::MostRestrictive).unwrap().seq, 3);
        assert!(in_force(&all, 50, None, MergePolicy::MostRestrictive).is_none());
    }

    #[test]
    fn merges_combine_most_restrictively_until_the_person_chooses_again() {
        let a = entry(1, "a", ConsentStatus::Withdrawn, 100, 100);
        let b = entry(2, "b", ConsentStatus::Granted, 200, 200);
        let all = [&a, &b];
        assert_eq!(in_force(&all, 1000, Some(500), MergePolicy::MostRestrictive).unwrap().seq, 1);
        assert_eq!(in_force(&all, 1000, Some(500), MergePolicy::MostRecent).unwrap().seq, 2);
        let again = entry(3, "b", ConsentStatus::Granted, 600, 600);
        let all = [&a, &b, &again];
        assert_eq!(in_force(&all, 1000, Some(500), MergePolicy::MostRestrictive).unwrap().seq, 3);
    }

    #[test]
    fn decisions() {
        let s = ConsentSettings { opt_out_regions: vec!["US".into()], ..Default::default() };
        let d = decide(&s, "marketing", None, None, "US", 0);
        assert!(d.allowed);
        assert_eq!(d.reason, CheckReason::NoRecordOptOutRegion);
        let d = decide(&s, "marketing", None, None, "", 0);
        assert_eq!((d.allowed, d.reason), (false, CheckReason::NoRecordOptInRegion));
        let d = decide(&s, "service_messages", None, None, "DE", 0);
        assert_eq!((d.allowed, d.reason), (true, CheckReason::ServiceMessage));
        let mut g = entry(1, "c", ConsentStatus::Granted, 100, 100);
        g.expires = Some(200);
        assert_eq!(decide(&s, "marketing", Some(&g), None, "", 150).reason, CheckReason::Granted);
        assert_eq!(decide(&s, "marketing", Some(&g), None, "", 250).reason, CheckReason::Expired);
        let sup = Suppression { reason: 2, ..Default::default() };
        let d = decide(&s, "marketing", Some(&g), Some(&sup), "", 150);
        assert_eq!((d.allowed, d.reason), (false, CheckReason::Suppressed));
    }
}
