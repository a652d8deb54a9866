//! Property-based tests of the CEL rules marketers write (segments, eligibility, triggers): any text
//! compiles or is refused with a position, never a panic; a compiled rule evaluates as the arithmetic it
//! spells, and evaluation over any document answers or fails, never panics.

use proptest::prelude::*;
use rapport_rules::{Rule, RuleError};

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e9f64..1e9).prop_map(serde_json::Value::from),
        "\\PC{0,10}".prop_map(serde_json::Value::from),
    ]
}

fn json_doc() -> impl Strategy<Value = serde_json::Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Rules built from the pieces marketers use, some valid, many not.
fn rule_text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("profile.computed.order_count".to_string()),
        Just("profile.traits.city".to_string()),
        Just("size(profile.segments)".to_string()),
        Just("now".to_string()),
        (0i64..1000).prop_map(|n| n.to_string()),
        "'[a-z]{0,6}'",
        Just("true".to_string()),
    ];
    let op = prop_oneof![
        Just(" && "),
        Just(" || "),
        Just(" == "),
        Just(" < "),
        Just(" >= "),
        Just(" + "),
        Just(" in "),
        Just(" ? "),
        Just(" : "),
        Just("("),
        Just(")"),
        Just("!"),
        Just("."),
        Just("["),
    ];
    prop::collection::vec((atom, op), 1..6)
        .prop_map(|parts| parts.into_iter().map(|(a, o)| format!("{a}{o}")).collect::<String>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_text_compiles_or_is_refused_with_a_position(source in prop_oneof![rule_text(), "\\PC{0,60}", any::<String>()]) {
        match Rule::compile(&source, &["profile", "now"]) {
            Ok(rule) => prop_assert_eq!(rule.source(), source.as_str()),
            Err(RuleError::Invalid(why)) => prop_assert!(!why.is_empty()),
            Err(RuleError::Evaluation(why)) => prop_assert!(false, "compiling is not evaluating: {}", why),
        }
    }

    #[test]
    fn a_compiled_rule_over_any_document_answers_or_fails_cleanly(source in rule_text(), doc in json_doc(), now in any::<i64>()) {
        if let Ok(rule) = Rule::compile(&source, &["profile", "now"]) {
            let now = serde_json::Value::from(now);
            match rule.matches(&[("profile", &doc), ("now", &now)]) {
                Ok(_) => {}
                Err(RuleError::Evaluation(why)) => prop_assert!(!why.is_empty()),
                Err(RuleError::Invalid(why)) => prop_assert!(false, "evaluation said invalid: {}", why),
            }
        }
    }

    #[test]
    fn comparisons_evaluate_as_the_arithmetic_they_spell(a in -1_000_000i64..1_000_000, b in -1_000_000i64..1_000_000, c in -2_000_000i64..2_000_000) {
        let rule = Rule::compile("x.a + x.b > x.c", &["x"]).unwrap();
        let doc = serde_json::json!({"a": a, "b": b, "c": c});
        prop_assert_eq!(rule.matches(&[("x", &doc)]).unwrap(), a + b > c);
        let membership = Rule::compile("x.name in x.list", &["x"]).unwrap();
        let list: Vec<String> = (0..(a.rem_euclid(5))).map(|i| format!("n{i}")).collect();
        let name = format!("n{}", b.rem_euclid(7));
        let doc = serde_json::json!({"name": name, "list": list});
        prop_assert_eq!(membership.matches(&[("x", &doc)]).unwrap(), list.contains(&name));
    }
}
