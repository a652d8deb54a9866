//! Standardised records and the per-attribute comparison levels.

use super::standardize::{self as st, DateOrder};
use super::{EntityKind, SourceRecord};

/// The compared attributes, in the order of [`Levels`].
pub const COMPARISONS: [&str; N_CMP] = [
    "first_name",
    "last_name",
    "date_of_birth",
    "email",
    "phone",
    "street",
    "postcode",
    "city",
    "national_id",
    "company_name",
    "company_id",
    "external_id",
];
/// Number of compared attributes.
pub const N_CMP: usize = 12;
/// Most levels any comparison has (level 0 is always "null": a value missing on either side).
pub const MAX_LEVELS: usize = 7;

/// Names of the levels of each comparison; the last level is always "disagree".
pub const LEVEL_NAMES: [&[&str]; N_CMP] = [
    &["null", "exact", "nickname", "jaro_winkler>=0.92", "jaro_winkler>=0.85_or_phonetic", "initial", "disagree"],
    &["null", "exact", "jaro_winkler>=0.92", "jaro_winkler>=0.85_or_phonetic", "disagree"],
    &["null", "exact", "day_month_swapped", "one_digit_off", "year_off_by_one", "disagree"],
    &["null", "exact", "same_user_or_one_edit", "disagree"],
    &["null", "exact", "one_digit_off", "disagree"],
    &["null", "exact", "same_street_other_number", "jaro_winkler>=0.9", "disagree"],
    &["null", "exact", "same_district", "disagree"],
    &["null", "exact", "jaro_winkler>=0.9", "disagree"],
    &["null", "exact", "one_edit", "disagree"],
    &["null", "exact", "jaro_winkler>=0.9", "disagree"],
    &["null", "exact", "disagree"],
    &["null", "exact", "disagree"],
];

/// Comparison levels of one pair, one per attribute.
pub type Levels = [u8; N_CMP];

pub(crate) const FIRST: usize = 0;
pub(crate) const LAST: usize = 1;
pub(crate) const DOB: usize = 2;
pub(crate) const STREET: usize = 5;
pub(crate) const POSTCODE: usize = 6;
pub(crate) const NATIONAL_ID: usize = 8;
pub(crate) const COMPANY_ID: usize = 10;

/// Number of levels of comparison `c` (including null).
pub fn n_levels(c: usize) -> usize {
    LEVEL_NAMES[c].len()
}

fn disagree(c: usize) -> u8 {
    (n_levels(c) - 1) as u8
}

/// A record standardised once, with phonetic codes and term frequencies precomputed.
#[derive(Debug, Clone, Default)]
pub struct Std {
    pub kind: EntityKind,
    pub first: String,
    pub first_canon: String,
    /// Formal names the first name may be a typo of (see [`st::fuzzy_first_names`]).
    pub first_alt: Vec<&'static str>,
    pub first_mp: u32,
    pub first_sx: u32,
    pub first_tf: f32,
    pub last: String,
    pub last_mp: u32,
    pub last_sx: u32,
    pub last_tf: f32,
    pub dob: u32,
    pub email: String,
    pub phone: u64,
    pub street: String,
    pub house: String,
    pub postcode: String,
    pub city: String,
    pub national_id: String,
    pub company: String,
    pub company_id: String,
    /// (namespace, value) hashes.
    pub ext: Vec<(u64, u64)>,
    /// Values that were present but unreadable (dates, phones, emails).
    pub unreadable: u8,
}

pub(crate) fn hash_str(s: &str) -> u64 {
    // FNV-1a: deterministic across runs and fast on short strings.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1
}

/// Standardises one record.
pub fn standardize(
    r: &SourceRecord,
    region: Option<phonenumber::country::Id>,
    order: DateOrder,
    dm: &rphonetic::DoubleMetaphone,
) -> Std {
    let a = &r.attributes;
    let mut s = Std { kind: r.kind, ..Std::default() };
    let mut first = a.first_name.as_deref().map(st::clean_name).unwrap_or_default();
    let mut last = a.last_name.as_deref().map(st::clean_name).unwrap_or_default();
    if (first.is_empty() || last.is_empty())
        && let Some(full) = a.full_name.as_deref()
    {
        let (f, l) = st::split_full_name(full);
        if first.is_empty() {
            first = f;
        }
        if last.is_empty() {
            last = l;
        }
    }
    s.first_canon = st::canonical_first_name(&first).to_owned();
    s.first_alt = st::fuzzy_first_names(&first);
    s.first_mp = st::metaphone(dm, &s.first_canon);
    s.first_sx = st::soundex(&s.first_canon);
    s.first = first;
    s.last_mp = st::metaphone(dm, &last);
    s.last_sx = st::soundex(&last);
    s.last = last;
    if let Some(d) = a.date_of_birth.as_deref() {
        match st::parse_date(d, order) {
            Some(d) => s.dob = d,
            None => s.unreadable += 1,
        }
    }
    if let Some(e) = a.email.as_deref() {
        match st::standardize_email(e) {
            Some(e) => s.email = e,
            None => s.unreadable += 1,
        }
    }
    if let Some(p) = a.phone.as_deref() {
        match st::standardize_phone(p, region) {
            Some(p) => s.phone = p,
            None => s.unreadable += 1,
        }
    }
    if let Some(street) = a.street.as_deref() {
        let (street, house) = st::standardize_street(street);
        s.street = street;
        s.house = house;
    }
    if let Some(h) = a.house_number.as_deref() {
        let h = st::clean_text(h).replace(' ', "");
        if !h.is_empty() {
            s.house = h;
        }
    }
    s.postcode = a.postcode.as_deref().map(st::alnum_upper).unwrap_or_default();
    s.city = a.city.as_deref().map(st::clean_text).unwrap_or_default();
    s.national_id = a.national_id.as_deref().map(st::alnum_upper).unwrap_or_default();
    s.company = a.company_name.as_deref().map(st::standardize_company).unwrap_or_default();
    s.company_id = a.company_id.as_deref().map(st::alnum_upper).unwrap_or_default();
    s.ext = r.external_ids.iter().map(|(ns, v)| (hash_str(&st::clean_text(ns)), hash_str(v.trim()))).collect();
    s
}

/// Jaro-Winkler similarity on bytes without allocating (strings up to 64 bytes).
pub fn jaro_winkler(a: &[u8], b: &[u8]) -> f64 {
    if a == b {
        return 1.0;
    }
    let (la, lb) = (a.len(), b.len());
    if la == 0 || lb == 0 {
        return 0.0;
    }
    if la > 64 || lb > 64 {
        return strsim::jaro_winkler(&String::from_utf8_lossy(a), &String::from_utf8_lossy(b));
    }
    let range = (la.max(lb) / 2).saturating_sub(1);
    let (mut a_flags, mut b_flags) = (0u64, 0u64);
    let mut m = 0usize;
    for (i, &ca) in a.iter().enumerate() {
        let lo = i.saturating_sub(range);
        let hi = (i + range + 1).min(lb);
        for (j, &cb) in b.iter().enumerate().take(hi).skip(lo) {
            if b_flags & (1 << j) == 0 && ca == cb {
                b_flags |= 1 << j;
                a_flags |= 1 << i;
                m += 1;
                break;
            }
        }
    }
    if m == 0 {
        return 0.0;
    }
    let mut t = 0usize;
    let mut j = 0usize;
    for (i, &ca) in a.iter().enumerate() {
        if a_flags & (1 << i) != 0 {
            while b_flags & (1 << j) == 0 {
                j += 1;
            }
            if ca != b[j] {
                t += 1;
            }
            j += 1;
        }
    }
    let mf = m as f64;
    let jaro = (mf / la as f64 + mf / lb as f64 + (mf - (t / 2) as f64) / mf) / 3.0;
    let prefix = a.iter().zip(b).take(4).take_while(|(x, y)| x == y).count();
    jaro + prefix as f64 * 0.1 * (1.0 - jaro)
}

/// True when `a` and `b` differ by at most one insertion, deletion, substitution or
/// transposition of adjacent characters.
pub fn within_one_edit(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    let (la, lb) = (a.len(), b.len());
    if la.abs_diff(lb) > 1 {
        return false;
    }
    let p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if la == lb {
        // substitution or transposition
        if a[p + 1..] == b[p + 1..] {
            return true;
        }
        return p + 1 < la && a[p] == b[p + 1] && a[p + 1] == b[p] && a[p + 2..] == b[p + 2..];
    }
    let (long, short) = if la > lb { (a, b) } else { (b, a) };
    long[p + 1..] == short[p..]
}

fn dob_level(a: u32, b: u32) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    if a == b {
        return 1;
    }
    let (ya, ma, da) = (a / 10_000, a / 100 % 100, a % 100);
    let (yb, mb, db) = (b / 10_000, b / 100 % 100, b % 100);
    if ya == yb && ma == db && da == mb {
        return 2;
    }
    // one digit off in the 8 digit form
    let mut diff = 0;
    let (mut x, mut y) = (a, b);
    for _ in 0..8 {
        if x % 10 != y % 10 {
            diff += 1;
        }
        x /= 10;
        y /= 10;
    }
    if diff == 1 || (ya == yb && ma == mb && da.abs_diff(db) <= 2) {
        return 3;
    }
    if ma == mb && da == db && ya.abs_diff(yb) == 1 {
        return 4;
    }
    5
}

fn phone_level(a: u64, b: u64) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    if a == b {
        return 1;
    }
    let (mut x, mut y, mut diff) = (a, b, 0);
    while x > 0 || y > 0 {
        if x % 10 != y % 10 {
            diff += 1;
        }
        x /= 10;
        y /= 10;
    }
    if diff == 1 { 2 } else { 3 }
}

/// One side of a first-name comparison: the name, its formal form, its typo alternatives
/// and its phonetic code.
struct FirstName<'a> {
    raw: &'a str,
    canon: &'a str,
    alt: &'a [&'static str],
    mp: u32,
}

fn first_level_raw(x: FirstName<'_>, y: FirstName<'_>) -> u8 {
    if x.raw.is_empty() || y.raw.is_empty() {
        return 0;
    }
    if x.raw == y.raw {
        return 1;
    }
    if x.canon == y.canon {
        return 2;
    }
    let (xb, yb) = (x.raw.as_bytes(), y.raw.as_bytes());
    let jw = jaro_winkler(xb, yb).max(jaro_winkler(x.canon.as_bytes(), y.canon.as_bytes()));
    if jw >= 0.92 {
        return 3;
    }
    if jw >= 0.85
        || (x.mp == y.mp && x.mp != 0)
        || x.alt.contains(&y.canon)
        || y.alt.contains(&x.canon)
        || x.alt.iter().any(|a| y.alt.contains(a))
    {
        return 4;
    }
    // an initial or short abbreviation of the name or of its formal form
    let abbreviates = |short: &FirstName<'_>, long: &FirstName<'_>| {
        short.raw.len() <= 2 && (long.raw.starts_with(short.raw) || long.canon.starts_with(short.raw))
    };
    if abbreviates(&x, &y) || abbreviates(&y, &x) {
        return 5;
    }
    6
}

fn first_level(a: &Std, b: &Std) -> u8 {
    first_level_raw(
        FirstName { raw: &a.first, canon: &a.first_canon, alt: &a.first_alt, mp: a.first_mp },
        FirstName { raw: &b.first, canon: &b.first_canon, alt: &b.first_alt, mp: b.first_mp },
    )
}

/// First and last name levels, trying the names crosswise when they disagree straight (one
/// record has first and last name swapped).
fn name_levels(a: &Std, b: &Std) -> (u8, u8) {
    let f = first_level(a, b);
    let l = last_level(&a.last, &b.last, a.last_mp, b.last_mp);
    if f == 6 || l == 4 {
        let cf = first_level_raw(
            FirstName { raw: &a.last, canon: st::canonical_first_name(&a.last), alt: &[], mp: 0 },
            FirstName { raw: &b.first, canon: &b.first_canon, alt: &b.first_alt, mp: 0 },
        );
        let cl = last_level(&a.first, &b.last, 0, 0);
        if !matches!(cf, 0 | 6) && !matches!(cl, 0 | 4) {
            return (cf, cl);
        }
    }
    (f, l)
}

fn last_level(a: &str, b: &str, amp: u32, bmp: u32) -> u8 {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    if a == b {
        return 1;
    }
    let jw = jaro_winkler(a.as_bytes(), b.as_bytes());
    if jw >= 0.92 {
        2
    } else if jw >= 0.85 || (amp == bmp && amp != 0) {
        3
    } else {
        4
    }
}

fn text_level(a: &str, b: &str, jw_min: f64) -> u8 {
    if a.is_empty() || b.is_empty() {
        0
    } else if a == b {
        1
    } else if jaro_winkler(a.as_bytes(), b.as_bytes()) >= jw_min {
        2
    } else {
        3
    }
}

/// Compares two standardised records attribute by attribute.
pub fn compare(a: &Std, b: &Std) -> Levels {
    let mut l = [0u8; N_CMP];
    (l[FIRST], l[LAST]) = name_levels(a, b);
    l[DOB] = dob_level(a.dob, b.dob);
    l[3] = if a.email.is_empty() || b.email.is_empty() {
        0
    } else if a.email == b.email {
        1
    } else {
        let ua = a.email.split('@').next().unwrap_or("");
        let ub = b.email.split('@').next().unwrap_or("");
        if (ua == ub && ua.len() >= 4) || within_one_edit(a.email.as_bytes(), b.email.as_bytes()) { 2 } else { 3 }
    };
    l[4] = phone_level(a.phone, b.phone);
    l[5] = if a.street.is_empty() || b.street.is_empty() {
        0
    } else if a.street == b.street {
        if a.house == b.house { 1 } else { 2 }
    } else if jaro_winkler(a.street.as_bytes(), b.street.as_bytes()) >= 0.9 {
        3
    } else {
        4
    };
    l[6] = if a.postcode.is_empty() || b.postcode.is_empty() {
        0
    } else if a.postcode == b.postcode {
        1
    } else {
        fn outward(p: &str) -> &str {
            let n = p.len();
            if n > 3 { &p[..n - 3] } else { p }
        }
        if outward(&a.postcode) == outward(&b.postcode) { 2 } else { 3 }
    };
    l[7] = text_level(&a.city, &b.city, 0.9);
    l[NATIONAL_ID] = national_id_level(a, b);
    l[9] = text_level(&a.company, &b.company, 0.9);
    l[COMPANY_ID] = company_id_level(a, b);
    l[11] = {
        let mut level = 0u8;
        for (ns, v) in &a.ext {
            for (ns2, v2) in &b.ext {
                if ns == ns2 {
                    if v == v2 {
                        level = 1;
                    } else if level == 0 {
                        level = 2;
                    }
                }
            }
        }
        level
    };
    l
}

fn national_id_level(a: &Std, b: &Std) -> u8 {
    if a.national_id.is_empty() || b.national_id.is_empty() {
        0
    } else if a.national_id == b.national_id {
        1
    } else if within_one_edit(a.national_id.as_bytes(), b.national_id.as_bytes()) {
        2
    } else {
        3
    }
}

fn company_id_level(a: &Std, b: &Std) -> u8 {
    if a.company_id.is_empty() || b.company_id.is_empty() {
        0
    } else if a.company_id == b.company_id {
        1
    } else {
        2
    }
}

/// [`conflict`] of two records, computing only the levels it needs. Records of different
/// kinds always conflict.
pub fn hard_conflict(a: &Std, b: &Std) -> bool {
    if a.kind != b.kind {
        return true;
    }
    let mut l = [0u8; N_CMP];
    l[FIRST] = name_levels(a, b).0;
    l[DOB] = dob_level(a.dob, b.dob);
    l[NATIONAL_ID] = national_id_level(a, b);
    l[COMPANY_ID] = company_id_level(a, b);
    conflict(&l, a.kind)
}

/// Whether the levels hold a hard conflict that no other evidence may override: different
/// first names (not a nickname, typo, phonetic variant or initial), dates of birth that are
/// not near misses, different national ids, or (for accounts and sites) different company ids.
/// This is what keeps twins and household members apart.
pub fn conflict(levels: &Levels, kind: EntityKind) -> bool {
    levels[FIRST] == disagree(FIRST)
        || levels[DOB] == disagree(DOB)
        || levels[NATIONAL_ID] == disagree(NATIONAL_ID)
        || (matches!(kind, EntityKind::Account | EntityKind::Site) && levels[COMPANY_ID] == disagree(COMPANY_ID))
}

/// Packs levels into a pattern key (3 bits each).
pub fn pack(l: &Levels) -> u64 {
    l.iter().enumerate().fold(0u64, |acc, (i, &v)| acc | (u64::from(v) << (3 * i)))
}

/// Unpacks a pattern key.
pub fn unpack(p: u64) -> Levels {
    let mut l = [0u8; N_CMP];
    for (i, v) in l.iter_mut().enumerate() {
        *v = ((p >> (3 * i)) & 7) as u8;
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaro_winkler_matches_strsim() {
        for (a, b) in
            [("martha", "marhta"), ("dwayne", "duane"), ("dixon", "dicksonx"), ("smith", "smyth"), ("abc", "xyz")]
        {
            let ours = jaro_winkler(a.as_bytes(), b.as_bytes());
            let theirs = strsim::jaro_winkler(a, b);
            assert!((ours - theirs).abs() < 1e-9, "{a} {b} {ours} {theirs}");
        }
    }

    #[test]
    fn swapped_names_compare_crosswise() {
        let dm = rphonetic::DoubleMetaphone::default();
        let std_of = |pairs: &[(&str, &str)]| {
            let r = SourceRecord::from_pairs("s", "1", EntityKind::Person, pairs.iter().copied()).unwrap();
            standardize(&r, None, DateOrder::DayFirst, &dm)
        };
        let a = std_of(&[("first_name", "Clarke"), ("last_name", "Jennifer")]);
        let b = std_of(&[("first_name", "J"), ("last_name", "Clarke")]);
        let c = std_of(&[("first_name", "Jenny"), ("last_name", "Clarke")]);
        assert_eq!(name_levels(&a, &b), (5, 1));
        assert_eq!(name_levels(&a, &c), (2, 1));
        assert!(!hard_conflict(&a, &c));
        let d = std_of(&[("first_name", "Imogen"), ("last_name", "Clarke")]);
        assert!(hard_conflict(&c, &d));
    }

    #[test]
    fn one_edit() {
        assert!(within_one_edit(b"smith", b"smith"));
        assert!(within_one_edit(b"smith", b"smyth"));
        assert!(within_one_edit(b"smith", b"smth"));
        assert!(within_one_edit(b"smith", b"msith"));
        assert!(!within_one_edit(b"smith", b"jones"));
        assert!(!within_one_edit(b"smith", b"smiht1"));
    }

    #[test]
    fn date_levels_include_swapped_day_month() {
        assert_eq!(dob_level(19800309, 19800310), 3);
        assert_eq!(dob_level(19800312, 19800312), 1);
        assert_eq!(dob_level(19800312, 19801203), 2);
        assert_eq!(dob_level(19800312, 19800313), 3);
        assert_eq!(dob_level(19800312, 19810312), 3);
        assert_eq!(dob_level(19800312, 19790312), 4);
        assert_eq!(dob_level(19800312, 19650101), 5);
    }

    #[test]
    fn pack_roundtrip() {
        let l = [6, 4, 5, 3, 3, 4, 3, 3, 3, 3, 2, 2];
        assert_eq!(unpack(pack(&l)), l);
    }
}
