//! Property-based tests of identity's parsers of outside input: identifier normalisation and the dates of
//! source records. Whatever arrives, they answer (never panic), an answer is stable when fed back, and a
//! refusal says what is wrong without repeating the value (identifiers are PII).

use proptest::prelude::*;
use rapport_identity::matching::standardize::{DateOrder, parse_date};
use rapport_identity::normalize::{IdType, Normalizer, Rejection};
use rapport_identity::settings::IdentitySettings;

fn normalizers() -> [Normalizer; 2] {
    let folding = IdentitySettings {
        email_fold_provider_variants: true,
        phone_default_region: "DE".into(),
        ..IdentitySettings::default()
    };
    [Normalizer::new(&IdentitySettings::default()).unwrap(), Normalizer::new(&folding).unwrap()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any value of any type: normalised or refused, and a normalised value is a fixed point.
    #[test]
    fn any_identifier_is_normalised_or_refused_and_normal_forms_are_stable(
        t in 0..IdType::ALL.len(),
        namespace in prop_oneof![Just(String::new()), Just("crm".to_string()), "\\PC{0,12}"],
        value in prop_oneof!["\\PC{0,40}", "[a-zA-Z0-9._+-]{1,12}@[a-z0-9-]{1,10}\\.[a-z]{2,4}", "\\+?[0-9 ()./-]{3,20}", any::<String>()],
    ) {
        for n in normalizers() {
            match n.normalize(IdType::ALL[t], &namespace, &value) {
                Ok(ident) => {
                    prop_assert_eq!(ident.value.trim(), ident.value.as_str());
                    prop_assert!(!ident.value.is_empty());
                    let again = n.normalize(ident.id_type, &ident.namespace, &ident.value);
                    prop_assert_eq!(again.as_ref().ok(), Some(&ident), "normalising twice changes nothing");
                }
                Err(Rejection::Blocked) => {}
                Err(Rejection::Invalid(why)) => {
                    prop_assert!(!why.is_empty());
                    let v = value.trim();
                    if v.chars().count() >= 6 {
                        prop_assert!(!why.contains(v), "the refusal repeats the value: {why}");
                    }
                }
            }
        }
    }

    /// An email is the same customer whatever its case and surrounding spaces.
    #[test]
    fn emails_ignore_case_and_surrounding_space(
        local in "[a-z0-9._-]{1,16}", domain in "[a-z0-9-]{1,12}\\.(com|de|org|co\\.uk)", pad in " {0,3}",
    ) {
        let [n, _] = normalizers();
        let plain = n.normalize(IdType::Email, "", &format!("{local}@{domain}")).unwrap();
        let shouted = n.normalize(IdType::Email, "", &format!("{pad}{}{pad}", format!("{local}@{domain}").to_uppercase())).unwrap();
        prop_assert_eq!(plain, shouted);
    }

    /// A phone number written any common way is one E.164 number.
    #[test]
    fn phone_numbers_written_any_way_are_one_number(subscriber in 1_000_000u32..99_999_999, style in 0..5usize) {
        let [_, n] = normalizers();
        let digits = format!("{subscriber:08}");
        let (a, b) = digits.split_at(4);
        let written = match style {
            0 => format!("+49151{digits}"),
            1 => format!("+49 151 {a} {b}"),
            2 => format!("0151 {a}-{b}"),
            3 => format!("(0151) {a}{b}"),
            _ => format!("0049 151/{digits}"),
        };
        let e164 = n.normalize(IdType::Phone, "", &written).map(|i| i.value).ok();
        prop_assert_eq!(e164, Some(format!("+49151{digits}")), "{}", written);
    }

    /// Any text as a date: a date or nothing, never a panic; a real date in any supported format is found.
    #[test]
    fn dates_in_every_format_parse_to_the_same_day(
        y in 1920i32..2030, m in 1u32..=12, d in 1u32..=28, junk in "\\PC{0,20}", month_first in any::<bool>(),
    ) {
        let order = if month_first { DateOrder::MonthFirst } else { DateOrder::DayFirst };
        let _ = parse_date(&junk, order);
        let expected = (y as u32) * 10_000 + m * 100 + d;
        let date = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let mut formats = vec!["%Y-%m-%d", "%Y%m%d", "%d %b %Y", "%B %d, %Y"];
        formats.push(if month_first { "%m/%d/%Y" } else { "%d/%m/%Y" });
        formats.push(if month_first { "%m/%d/%Y" } else { "%d.%m.%Y" });
        for f in formats {
            let text = date.format(f).to_string();
            prop_assert_eq!(parse_date(&text, order), Some(expected), "{}", text);
        }
    }

    /// Days that do not exist are not dates.
    #[test]
    fn impossible_days_are_refused(y in 1920i32..2030, m in 13u32..=99, d in 32u32..=99) {
        prop_assert_eq!(parse_date(&format!("{y}-{m:02}-01"), DateOrder::DayFirst), None);
        prop_assert_eq!(parse_date(&format!("{y}-01-{d:02}"), DateOrder::DayFirst), None);
    }
}
