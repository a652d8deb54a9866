//! Standardisation of raw attribute values: case, accents, punctuation, whitespace, address
//! abbreviations, names (split or joined, nicknames), dates and phones.

use std::collections::HashMap;
use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Which order an ambiguous numeric date such as `03/04/1980` is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DateOrder {
    /// Day first (`03/04/1980` is 3 April), as in most of the world.
    #[default]
    DayFirst,
    /// Month first (`03/04/1980` is 4 March), as in the USA.
    MonthFirst,
}

impl std::str::FromStr for DateOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dmy" | "day_first" | "dd/mm/yyyy" | "%d/%m/%y" => Ok(DateOrder::DayFirst),
            "mdy" | "month_first" | "mm/dd/yyyy" | "%m/%d/%y" => Ok(DateOrder::MonthFirst),
            other => Err(format!("unknown date format hint `{other}` (use dmy or mdy)")),
        }
    }
}

/// Lower-cases, strips accents, turns punctuation into spaces and collapses whitespace.
pub fn clean_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    let mut push = |c: char, out: &mut String| {
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            for l in c.to_lowercase() {
                out.push(l);
            }
        } else if c == '\'' || c == '’' {
            // O'Brien -> obrien
        } else {
            pending_space = true;
        }
    };
    if s.is_ascii() {
        for c in s.chars() {
            push(c, &mut out);
        }
    } else {
        for c in s.nfkd() {
            if is_combining_mark(c) {
                continue;
            }
            match c {
                'ß' => {
                    push('s', &mut out);
                    push('s', &mut out);
                }
                'æ' | 'Æ' => {
                    push('a', &mut out);
                    push('e', &mut out);
                }
                'ø' | 'Ø' => push('o', &mut out),
                'ł' | 'Ł' => push('l', &mut out),
                'đ' | 'Đ' => push('d', &mut out),
                'œ' | 'Œ' => {
                    push('o', &mut out);
                    push('e', &mut out);
                }
                _ => push(c, &mut out),
            }
        }
    }
    out
}

/// Keeps only ASCII letters and digits, upper-cased (postcodes, national ids, company ids).
pub fn alnum_upper(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

const NAME_NOISE: &[&str] = &["mr", "mrs", "ms", "miss", "dr", "prof", "sir", "jr", "sr", "ii", "iii", "iv", "mx"];

fn name_tokens(s: &str) -> Vec<String> {
    clean_text(s).split(' ').filter(|t| !t.is_empty() && !NAME_NOISE.contains(t)).map(str::to_owned).collect()
}

/// Standardises a first or last name: cleaned, titles and suffixes removed, tokens joined
/// without spaces removed (so `Mary Ann` stays `mary ann`).
pub fn clean_name(s: &str) -> String {
    name_tokens(s).join(" ")
}

/// Splits a full name into (first, last): `Last, First` or `First [Middle] Last`.
pub fn split_full_name(full: &str) -> (String, String) {
    if let Some((last, first)) = full.split_once(',') {
        let first = name_tokens(first);
        return (first.first().cloned().unwrap_or_default(), clean_name(last));
    }
    let t = name_tokens(full);
    match t.len() {
        0 => (String::new(), String::new()),
        1 => (String::new(), t[0].clone()),
        n => (t[0].clone(), t[n - 1].clone()),
    }
}

const NICKNAMES: &[(&str, &str)] = &[
    ("bob", "robert"),
    ("bobby", "robert"),
    ("rob", "robert"),
    ("robbie", "robert"),
    ("bert", "robert"),
    ("bill", "william"),
    ("billy", "william"),
    ("will", "william"),
    ("willy", "william"),
    ("liam", "william"),
    ("jim", "james"),
    ("jimmy", "james"),
    ("jamie", "james"),
    ("mike", "michael"),
    ("mick", "michael"),
    ("mikey", "michael"),
    ("dave", "david"),
    ("davy", "david"),
    ("dick", "richard"),
    ("rick", "richard"),
    ("rich", "richard"),
    ("richie", "richard"),
    ("tom", "thomas"),
    ("tommy", "thomas"),
    ("chris", "christopher"),
    ("kit", "christopher"),
    ("dan", "daniel"),
    ("danny", "daniel"),
    ("joe", "joseph"),
    ("joey", "joseph"),
    ("jack", "john"),
    ("johnny", "john"),
    ("jon", "john"),
    ("tony", "anthony"),
    ("ant", "anthony"),
    ("steve", "stephen"),
    ("steven", "stephen"),
    ("ed", "edward"),
    ("eddie", "edward"),
    ("ted", "edward"),
    ("ned", "edward"),
    ("matt", "matthew"),
    ("andy", "andrew"),
    ("drew", "andrew"),
    ("pete", "peter"),
    ("sam", "samuel"),
    ("ben", "benjamin"),
    ("benny", "benjamin"),
    ("nick", "nicholas"),
    ("alex", "alexander"),
    ("sandy", "alexander"),
    ("greg", "gregory"),
    ("jeff", "jeffrey"),
    ("ken", "kenneth"),
    ("larry", "lawrence"),
    ("charlie", "charles"),
    ("chuck", "charles"),
    ("harry", "henry"),
    ("hank", "henry"),
    ("fred", "frederick"),
    ("freddie", "frederick"),
    ("tim", "timothy"),
    ("pat", "patrick"),
    ("paddy", "patrick"),
    ("phil", "philip"),
    ("ron", "ronald"),
    ("ronnie", "ronald"),
    ("don", "donald"),
    ("gerry", "gerald"),
    ("josh", "joshua"),
    ("nate", "nathan"),
    ("zach", "zachary"),
    ("liz", "elizabeth"),
    ("lizzie", "elizabeth"),
    ("beth", "elizabeth"),
    ("betty", "elizabeth"),
    ("eliza", "elizabeth"),
    ("kate", "katherine"),
    ("katie", "katherine"),
    ("kathy", "katherine"),
    ("cathy", "katherine"),
    ("catherine", "katherine"),
    ("kath", "katherine"),
    ("maggie", "margaret"),
    ("meg", "margaret"),
    ("peggy", "margaret"),
    ("jenny", "jennifer"),
    ("jen", "jennifer"),
    ("sue", "susan"),
    ("susie", "susan"),
    ("becky", "rebecca"),
    ("becca", "rebecca"),
    ("vicky", "victoria"),
    ("tori", "victoria"),
    ("debbie", "deborah"),
    ("deb", "deborah"),
    ("mandy", "amanda"),
    ("patty", "patricia"),
    ("trish", "patricia"),
    ("jess", "jessica"),
    ("jessie", "jessica"),
    ("abby", "abigail"),
    ("annie", "anne"),
    ("ann", "anne"),
    ("nancy", "anne"),
    ("polly", "mary"),
    ("molly", "mary"),
    ("sally", "sarah"),
    ("sara", "sarah"),
    ("chrissy", "christine"),
    ("tina", "christina"),
    ("steph", "stephanie"),
    ("sophie", "sophia"),
    ("ellie", "eleanor"),
    ("nell", "eleanor"),
    ("em", "emily"),
    ("emmy", "emily"),
    ("lucy", "lucia"),
    ("terry", "teresa"),
    ("tess", "teresa"),
    ("val", "valerie"),
    ("nat", "natalie"),
    ("fran", "frances"),
    ("frankie", "frances"),
    ("frank", "francis"),
    ("gabby", "gabrielle"),
    ("jo", "joanne"),
    ("rosie", "rose"),
    ("hattie", "harriet"),
    ("lottie", "charlotte"),
    ("charlie", "charles"),
];

fn nickname_map() -> &'static HashMap<&'static str, &'static str> {
    static MAP: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    MAP.get_or_init(|| NICKNAMES.iter().copied().collect())
}

/// The formal form of a (cleaned) first name: `bob` -> `robert`; other names unchanged.
pub fn canonical_first_name(first: &str) -> &str {
    let head = first.split(' ').next().unwrap_or(first);
    nickname_map().get(head).copied().unwrap_or(head)
}

/// Formal names a first name may stand for when it is one typo away from a known nickname or
/// formal name (`jakc` -> `john` through `jack`, `npick` -> `nicholas`). Empty for names that
/// are themselves known.
pub fn fuzzy_first_names(first: &str) -> Vec<&'static str> {
    let head = first.split(' ').next().unwrap_or(first);
    let map = nickname_map();
    if head.len() < 2 || map.contains_key(head) || NICKNAMES.iter().any(|(_, f)| *f == head) {
        return Vec::new();
    }
    let mut out: Vec<&'static str> = Vec::new();
    for (nick, formal) in NICKNAMES {
        let near = super::compare::within_one_edit(head.as_bytes(), nick.as_bytes())
            || super::compare::within_one_edit(head.as_bytes(), formal.as_bytes());
        if near && !out.contains(formal) {
            out.push(formal);
        }
    }
    out
}

/// The nickname table (nickname, formal name), used by the synthetic generator too.
pub fn nicknames() -> &'static [(&'static str, &'static str)] {
    NICKNAMES
}

const STREET_ABBREVIATIONS: &[(&str, &str)] = &[
    ("st", "street"),
    ("str", "street"),
    ("rd", "road"),
    ("ave", "avenue"),
    ("av", "avenue"),
    ("ln", "lane"),
    ("dr", "drive"),
    ("ct", "court"),
    ("pl", "place"),
    ("sq", "square"),
    ("cres", "crescent"),
    ("cr", "crescent"),
    ("gdns", "gardens"),
    ("gdn", "garden"),
    ("blvd", "boulevard"),
    ("hwy", "highway"),
    ("pk", "park"),
    ("tce", "terrace"),
    ("terr", "terrace"),
    ("cl", "close"),
    ("mt", "mount"),
    ("apt", "apartment"),
    ("fl", "flat"),
    ("n", "north"),
    ("s", "south"),
    ("e", "east"),
    ("w", "west"),
];

/// Standardises a street line, splitting off a leading or trailing house number.
/// Returns (street, house number found in the line).
pub fn standardize_street(s: &str) -> (String, String) {
    let cleaned = clean_text(s);
    let mut tokens: Vec<&str> = cleaned.split(' ').filter(|t| !t.is_empty()).collect();
    let mut house = String::new();
    let is_number = |t: &str| t.chars().next().is_some_and(|c| c.is_ascii_digit());
    if let Some(first) = tokens.first()
        && is_number(first)
    {
        house = (*first).to_owned();
        tokens.remove(0);
    } else if let Some(last) = tokens.last()
        && is_number(last)
        && tokens.len() > 1
    {
        house = (*last).to_owned();
        tokens.pop();
    }
    let n = tokens.len();
    let mut out = String::with_capacity(cleaned.len() + 8);
    for (i, t) in tokens.iter().enumerate() {
        let expanded = if *t == "st" && i == 0 && n > 1 {
            "saint"
        } else {
            STREET_ABBREVIATIONS.iter().find(|(a, _)| a == t).map(|(_, full)| *full).unwrap_or(t)
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(expanded);
    }
    (out, house)
}

const COMPANY_SUFFIXES: &[&str] = &[
    "ltd",
    "limited",
    "inc",
    "incorporated",
    "llc",
    "plc",
    "gmbh",
    "ag",
    "sa",
    "sarl",
    "bv",
    "nv",
    "co",
    "corp",
    "corporation",
    "company",
    "the",
    "llp",
];

/// Standardises a company name: cleaned, legal suffixes and `the` removed, `&` as `and`.
pub fn standardize_company(s: &str) -> String {
    let s = s.replace('&', " and ");
    clean_text(&s).split(' ').filter(|t| !t.is_empty() && !COMPANY_SUFFIXES.contains(t)).collect::<Vec<_>>().join(" ")
}

/// Standardises an email address (trimmed, lower-cased); `None` when it has no `@`.
pub fn standardize_email(s: &str) -> Option<String> {
    let e = s.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    Some(e)
}

/// Parses a phone number into its E.164 digits as an integer (`+447911123456` ->
/// 447911123456), using `region` for numbers without a country code.
pub fn standardize_phone(s: &str, region: Option<phonenumber::country::Id>) -> Option<u64> {
    let digits = s.chars().filter(|c| c.is_ascii_digit()).count();
    if !(6..=17).contains(&digits) {
        return None;
    }
    let number = phonenumber::parse(region, s).ok()?;
    let national = number.national().value();
    if national == 0 {
        return None;
    }
    let code = u64::from(number.code().value());
    let width = national.checked_ilog10().unwrap_or(0) + 1;
    Some(code * 10u64.pow(width) + national)
}

/// Formats E.164 digits back as `+digits`.
pub fn format_phone(p: u64) -> String {
    format!("+{p}")
}

fn month_from_name(t: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    if t.len() < 3 {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    MONTHS.iter().position(|m| lower.starts_with(m)).map(|i| i as u32 + 1)
}

fn ymd(y: i32, m: u32, d: u32) -> Option<u32> {
    if !(1850..=2100).contains(&y) {
        return None;
    }
    chrono::NaiveDate::from_ymd_opt(y, m, d)?;
    Some(y as u32 * 10_000 + m * 100 + d)
}

fn year_of(t: &str) -> Option<i32> {
    let v: i32 = t.parse().ok()?;
    match t.len() {
        4 => Some(v),
        2 => Some(if v <= 25 { 2000 + v } else { 1900 + v }),
        _ => None,
    }
}

/// Parses a date in many formats into `yyyymmdd`: `1980-03-12`, `19800312`, `12/03/1980`,
/// `03/12/1980` (month first when `order` says so, or when the day cannot be a month),
/// `12.03.80`, `12 Mar 1980`, `March 12, 1980`, `1980-03-12T00:00:00Z`.
pub fn parse_date(s: &str, order: DateOrder) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
        let (a, b, c) = (n(0..4)?, n(4..6)?, n(6..8)?);
        if let Some(d) = ymd(a as i32, b, c) {
            return Some(d);
        }
        let (p, q, y) = (n(0..2)?, n(2..4)?, n(4..8)? as i32);
        return numeric_dmy(p, q, y, order);
    }
    let tokens: Vec<&str> = s.split(|c: char| !c.is_ascii_alphanumeric()).filter(|t| !t.is_empty()).collect();
    if tokens.len() < 3 {
        return None;
    }
    // ISO-like: year first (optionally followed by a time).
    if tokens[0].len() == 4 && tokens[0].bytes().all(|b| b.is_ascii_digit()) {
        let y = tokens[0].parse().ok()?;
        let m = tokens[1].parse().ok().or_else(|| month_from_name(tokens[1]))?;
        let d = tokens[2].get(..2.min(tokens[2].len()))?.parse().ok()?;
        return ymd(y, m, d);
    }
    if tokens.len() != 3 {
        return None;
    }
    if let Some(m) = month_from_name(tokens[1]) {
        return ymd(year_of(tokens[2])?, m, tokens[0].parse().ok()?);
    }
    if let Some(m) = month_from_name(tokens[0]) {
        return ymd(year_of(tokens[2])?, m, tokens[1].parse().ok()?);
    }
    let p: u32 = tokens[0].parse().ok()?;
    let q: u32 = tokens[1].parse().ok()?;
    numeric_dmy(p, q, year_of(tokens[2])?, order)
}

fn numeric_dmy(p: u32, q: u32, y: i32, order: DateOrder) -> Option<u32> {
    if p > 12 {
        ymd(y, q, p)
    } else if q > 12 {
        ymd(y, p, q)
    } else {
        match order {
            DateOrder::DayFirst => ymd(y, q, p),
            DateOrder::MonthFirst => ymd(y, p, q),
        }
    }
}

/// The standardised value of one raw SourceRecord attribute, as the matcher reads it (golden records show
/// these): names cleaned, dates as ISO, phones as E.164, emails lower-cased, streets expanded with the house
/// number first, ids upper-case alphanumerics. `None` when nothing readable is left.
pub fn standardize_attribute(
    name: &str,
    raw: &str,
    region: Option<phonenumber::country::Id>,
    order: DateOrder,
) -> Option<String> {
    let value = match name {
        "first_name" | "last_name" | "full_name" => clean_name(raw),
        "date_of_birth" => format_date(parse_date(raw, order)?),
        "email" => standardize_email(raw)?,
        "phone" => format_phone(standardize_phone(raw, region)?),
        "street" => {
            let (street, house) = standardize_street(raw);
            [house, street].into_iter().filter(|x| !x.is_empty()).collect::<Vec<_>>().join(" ")
        }
        "house_number" => clean_text(raw).replace(' ', ""),
        "postcode" | "national_id" | "company_id" => alnum_upper(raw),
        "company_name" => standardize_company(raw),
        _ => clean_text(raw),
    };
    Some(value).filter(|v| !v.is_empty())
}

/// Formats `yyyymmdd` as ISO `yyyy-mm-dd`.
pub fn format_date(d: u32) -> String {
    format!("{:04}-{:02}-{:02}", d / 10_000, d / 100 % 100, d % 100)
}

/// American Soundex packed into a u32 (0 for no letters). Allocation free.
pub fn soundex(s: &str) -> u32 {
    fn code(c: u8) -> u8 {
        match c {
            b'b' | b'f' | b'p' | b'v' => 1,
            b'c' | b'g' | b'j' | b'k' | b'q' | b's' | b'x' | b'z' => 2,
            b'd' | b't' => 3,
            b'l' => 4,
            b'm' | b'n' => 5,
            b'r' => 6,
            b'h' | b'w' => 7, // transparent
            _ => 0,           // vowels and others separate
        }
    }
    let mut letters = s.bytes().filter(u8::is_ascii_alphabetic).map(|b| b.to_ascii_lowercase());
    let Some(first) = letters.next() else {
        return 0;
    };
    let mut out = u32::from(first) << 24;
    let mut last = code(first);
    let mut n = 0;
    for c in letters {
        let k = code(c);
        if k == 7 {
            continue;
        }
        if k != 0 && k != last {
            out |= u32::from(k) << (16 - 8 * n);
            n += 1;
            if n == 3 {
                break;
            }
        }
        last = k;
    }
    out
}

/// The primary Double Metaphone code packed into a u32 (codes are at most 4 characters).
pub fn metaphone(encoder: &rphonetic::DoubleMetaphone, s: &str) -> u32 {
    if s.is_empty() {
        return 0;
    }
    let code = encoder.double_metaphone(s).primary();
    let mut out = 0u32;
    for (i, b) in code.bytes().take(4).enumerate() {
        out |= u32::from(b) << (24 - 8 * i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_case_accents_punctuation_whitespace() {
        assert_eq!(clean_text("  José   O'Brien-Núñez "), "jose obrien nunez");
        assert_eq!(clean_text("STRAßE"), "strasse");
        assert_eq!(clean_name("Dr. John  SMITH Jr."), "john smith");
    }

    #[test]
    fn splits_full_names() {
        assert_eq!(split_full_name("Smith, John"), ("john".into(), "smith".into()));
        assert_eq!(split_full_name("Mr John Paul Smith"), ("john".into(), "smith".into()));
    }

    #[test]
    fn expands_street_abbreviations_and_splits_house_number() {
        assert_eq!(standardize_street("12 High St."), ("high street".into(), "12".into()));
        assert_eq!(standardize_street("High Street 12"), ("high street".into(), "12".into()));
        assert_eq!(standardize_street("St John's Rd"), ("saint johns road".into(), String::new()));
        assert_eq!(standardize_company("The Acme Co. Ltd"), "acme");
    }

    #[test]
    fn parses_dates_in_many_formats() {
        let d = DateOrder::DayFirst;
        assert_eq!(parse_date("1980-03-12", d), Some(19800312));
        assert_eq!(parse_date("19800312", d), Some(19800312));
        assert_eq!(parse_date("12031980", d), Some(19800312));
        assert_eq!(parse_date("12/03/1980", d), Some(19800312));
        assert_eq!(parse_date("12/03/1980", DateOrder::MonthFirst), Some(19801203));
        // the day cannot be a month: the order is clear whatever the hint
        assert_eq!(parse_date("03/25/1980", DateOrder::DayFirst), Some(19800325));
        assert_eq!(parse_date("12 Mar 1980", d), Some(19800312));
        assert_eq!(parse_date("March 12, 1980", d), Some(19800312));
        assert_eq!(parse_date("12.03.80", d), Some(19800312));
        assert_eq!(parse_date("1980-03-12T00:00:00Z", d), Some(19800312));
        assert_eq!(parse_date("1980-02-30", d), None);
        assert_eq!(parse_date("not a date", d), None);
    }

    #[test]
    fn phones_to_e164() {
        let gb = Some(phonenumber::country::Id::GB);
        let want = Some(447911123456);
        assert_eq!(standardize_phone("07911 123456", gb), want);
        assert_eq!(standardize_phone("+44 7911 123-456", gb), want);
        assert_eq!(standardize_phone("0044 7911 123456", gb), want);
        assert_eq!(standardize_phone("12", gb), None);
    }

    #[test]
    fn phonetic_codes_and_nicknames() {
        assert_eq!(soundex("Robert"), soundex("Rupert"));
        assert_ne!(soundex("Robert"), soundex("Smith"));
        assert_eq!(canonical_first_name("bob"), "robert");
        assert_eq!(canonical_first_name("robert"), "robert");
        let dm = rphonetic::DoubleMetaphone::default();
        assert_eq!(metaphone(&dm, "smith"), metaphone(&dm, "smyth"));
    }
}
