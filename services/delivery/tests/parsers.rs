//! Property-based tests of delivery's parsers of outside input: templates (any text compiles or is refused
//! naming its part and position; values are escaped in HTML and kept in text; a runaway template runs out
//! of fuel instead of hanging) and tracking links (a link made is a link accepted, anything altered or
//! made up is refused, whatever the HTML they are put into).

use proptest::prelude::*;
use rapport_delivery::domain::template::Compiled;
use rapport_delivery::domain::tracking::{LinkSigner, instrument_html};
use rapport_proto::delivery::v1::LocalizedContent;

const FUEL: u64 = 100_000;

fn content(subject: &str, html: &str, text: &str) -> LocalizedContent {
    LocalizedContent { locale: "en".into(), subject: subject.into(), html: html.into(), text: text.into() }
}

fn template_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z ,.!]{0,8}",
        Just("{{ profile.first_name }}".to_string()),
        Just("{{ offer.title | upper }}".to_string()),
        Just("{% if profile.vip %}".to_string()),
        Just("{% endif %}".to_string()),
        Just("{% for x in offer.items %}".to_string()),
        Just("{% endfor %}".to_string()),
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("{%".to_string()),
        Just("\n".to_string()),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

fn signer() -> LinkSigner {
    LinkSigner::new(b"a tracking key of the tests".to_vec(), "http://127.0.0.1:8080")
}

/// The `u` and `s` query parameters and the message id of a click link.
fn click_parts(link: &str) -> (String, String, String) {
    let url = url::Url::parse(link).unwrap();
    let get = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned()).unwrap_or_default();
    let id = url.path_segments().unwrap().next_back().unwrap().to_string();
    (id, get("u"), get("s"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_template_compiles_or_is_refused_naming_its_part_and_position(
        subject in prop_oneof![template_text(), "\\PC{0,30}"], html in template_text(), text in any::<String>(),
    ) {
        match Compiled::new(&[content(&subject, &html, &text)], "en", FUEL) {
            Ok(compiled) => {
                // Rendering against an empty context answers or names what is missing; never panics.
                let _ = compiled.render("en", &serde_json::json!({}));
            }
            Err(e) => {
                prop_assert!(e.field.starts_with("locales[0]."), "{:?}", e);
                prop_assert!(e.problem.contains("line") || e.problem.contains("position"), "{:?}", e);
            }
        }
    }

    #[test]
    fn values_are_escaped_in_html_and_kept_in_text(name in any::<String>()) {
        let compiled = Compiled::new(&[content("Hi {{ profile.first_name }}", "<p>{{ profile.first_name }}</p>", "Hi {{ profile.first_name }}")], "en", FUEL).unwrap();
        let r = compiled.render("en", &serde_json::json!({"profile": {"first_name": name}})).unwrap();
        let inner = r.html.strip_prefix("<p>").and_then(|h| h.strip_suffix("</p>")).unwrap_or_default();
        prop_assert!(!inner.contains(['<', '>', '"']), "the value is escaped: {}", r.html);
        prop_assert_eq!(r.text, format!("Hi {name}"));
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel(n in 1u64..10_000_000) {
        let compiled = Compiled::new(&[content("s", "", &format!("{{% for i in range({n}) %}}{{{{ i }}}}{{% endfor %}}"))], "en", FUEL).unwrap();
        match compiled.render("en", &serde_json::json!({})) {
            Ok(r) => prop_assert!(n < 100_000, "{} iterations cannot fit in the fuel ({} bytes)", n, r.text.len()),
            Err(e) => prop_assert!(!e.problem.is_empty()),
        }
    }

    #[test]
    fn a_click_link_made_is_accepted_and_anything_altered_is_refused(
        message_id in "msg_[a-z0-9]{1,26}",
        target in prop_oneof!["https://shop\\.example/[a-z0-9/?=&%._-]{0,30}", "http://[a-z]{1,10}\\.example/\\PC{0,20}"],
        other in "https://[a-z]{1,10}\\.example/[a-z]{0,10}",
        forged in "[A-Za-z0-9_-]{0,30}",
    ) {
        let s = signer();
        let (id, u, sig) = click_parts(&s.click_url(&message_id, &target));
        prop_assert_eq!(&id, &message_id);
        prop_assert_eq!(&u, &target);
        prop_assert!(s.verify_click(&id, &u, &sig));
        if other != target {
            prop_assert!(!s.verify_click(&id, &other, &sig), "the redirect cannot be pointed elsewhere");
        }
        prop_assert!(!s.verify_click(&format!("{id}x"), &u, &sig), "nor moved to another message");
        prop_assert!(!s.verify_click(&id, &u, &forged) || forged == sig);
        prop_assert!(!s.verify_click(&id, &format!("javascript:{u}"), &sig), "only http(s) targets");
        // The open pixel likewise.
        let pixel = s.open_url(&message_id);
        let signature = pixel.rsplit('/').next().unwrap().trim_end_matches(".gif");
        prop_assert!(s.verify_open(&message_id, signature));
        prop_assert!(!s.verify_open(&message_id, &forged) || forged == signature);
        let other_key = LinkSigner::new(b"another key".to_vec(), "http://127.0.0.1:8080");
        prop_assert!(!other_key.verify_open(&message_id, signature) && !other_key.verify_click(&id, &u, &sig));
    }

    #[test]
    fn any_html_gets_its_links_signed_and_one_pixel(
        html in prop::collection::vec(prop_oneof![
            "\\PC{0,12}",
            "[a-z]{1,8}".prop_map(|p| format!("<a href=\"https://shop.example/{p}\">x</a>")),
            Just("<a href=\"mailto:ann@example.com\">mail</a>".to_string()),
            Just("</body>".to_string()),
        ], 0..8).prop_map(|p| p.concat()),
    ) {
        let s = signer();
        let out = instrument_html(&html, "msg_1", &s, &[]);
        prop_assert_eq!(out.matches("/delivery/o/msg_1/").count(), html.matches("/delivery/o/msg_1/").count() + 1);
        prop_assert_eq!(out.matches("href=\"https://shop.example/").count(), 0, "every http link goes through the redirect");
        prop_assert_eq!(out.matches("mailto:").count(), html.matches("mailto:").count());
    }
}
