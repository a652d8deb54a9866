//! Property-based tests of consent's parsers of outside input: the signed double opt-in and unsubscribe
//! tokens that come back in links (a token made is accepted, anything altered, of another kind or under
//! another key is refused, never a panic) and IAB TCF strings (any text decodes or is refused without
//! echoing it; what a CMP encodes decodes to the same choices).

use proptest::prelude::*;
use rapport_consent::tcf::{TcString, decode, encode};
use rapport_consent::tokens::{Claims, Signer, TokenError};

fn claims() -> impl Strategy<Value = Claims> {
    (
        prop_oneof![Just("doi".to_string()), Just("unsub".to_string())],
        "tok_[a-z0-9]{8,26}",
        1..8i32,
        "\\PC{1,40}",
        0..8i32,
        prop::collection::vec("[a-z_]{1,12}", 1..4),
        prop_oneof![Just(String::new()), "cus_[a-f0-9]{32}"],
        any::<i64>(),
    )
        .prop_map(|(k, id, ct, cv, ch, p, c, exp)| Claims {
            k,
            id,
            ct,
            cv,
            ch,
            p,
            c,
            exp,
            m: String::new(),
            d: String::new(),
            r: String::new(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_token_made_is_accepted_and_anything_altered_is_refused(
        c in claims(), at in any::<prop::sample::Index>(), with in "[A-Za-z0-9_.-]", junk in any::<String>(),
    ) {
        let signer = Signer::new(b"the consent key of the tests".to_vec());
        let token = signer.sign(&c);
        prop_assert_eq!(signer.verify(&token, &c.k), Ok(c.clone()));
        let other_kind = if c.k == "doi" { "unsub" } else { "doi" };
        prop_assert_eq!(signer.verify(&token, other_kind), Err(TokenError::BadSignature));
        prop_assert_eq!(Signer::new(b"another key".to_vec()).verify(&token, &c.k), Err(TokenError::BadSignature));
        // One character changed anywhere.
        let i = at.index(token.len());
        let mut altered = token.clone();
        altered.replace_range(i..i + 1, &with);
        if altered != token {
            prop_assert!(signer.verify(&altered, &c.k).is_err(), "altered at {}", i);
        }
        prop_assert!(signer.verify(&junk, "doi").is_err());
    }

    #[test]
    fn any_text_as_a_tcf_string_decodes_or_is_refused_without_echoing_it(s in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,80}(\\.[A-Za-z0-9_-]{0,20})?"]) {
        if let Err(why) = decode(&s) {
            prop_assert!(!why.is_empty());
            if s.trim().len() >= 8 {
                prop_assert!(!why.contains(s.trim()), "{}", why);
            }
        }
    }

    #[test]
    fn what_a_cmp_encodes_decodes_to_the_same_choices(
        created_s in 1_500_000_000i64..2_000_000_000, cmp_id in 1u32..4095, cmp_version in 0u32..4095,
        screen in 0u32..63, lang in "[A-Z]{2}", vendor_list_version in 1u32..4095, policy_version in 2u32..5,
        consents in prop::collection::btree_set(1u32..=24, 0..24), interests in prop::collection::btree_set(1u32..=24, 0..24),
    ) {
        let t = TcString {
            created_ms: created_s * 1000,
            last_updated_ms: created_s * 1000,
            cmp_id,
            cmp_version,
            consent_screen: screen,
            consent_language: lang,
            vendor_list_version,
            policy_version,
            purpose_consents: consents.into_iter().collect(),
            purpose_legitimate_interests: interests.into_iter().collect(),
        };
        let decoded = decode(&encode(&t)).unwrap();
        prop_assert_eq!(decoded, t);
    }
}
