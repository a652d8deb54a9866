//! Signed tracking links. An open pixel names its message; a click link names its message and target,
//! and both carry an HMAC-SHA256 (truncated to 128 bits) under the service's tracking key, so a link
//! cannot be forged or pointed elsewhere: the redirect is never open.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Signs and checks tracking links.
#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
    base_url: String,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

fn percent(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl LinkSigner {
    /// A signer with `key`, making links under `base_url` (no trailing slash).
    pub fn new(key: Vec<u8>, base_url: &str) -> Self {
        Self { key, base_url: base_url.trim_end_matches('/').to_string() }
    }

    fn hmac(&self, kind: &str, message_id: &str, url: &str) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in [kind, message_id, url] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        mac
    }

    fn signature(&self, kind: &str, message_id: &str, url: &str) -> String {
        URL_SAFE_NO_PAD.encode(&self.hmac(kind, message_id, url).finalize().into_bytes()[..16])
    }

    fn verify(&self, kind: &str, message_id: &str, url: &str, signature: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(signature.trim()) else { return false };
        given.len() == 16 && self.hmac(kind, message_id, url).verify_truncated_left(&given).is_ok()
    }

    /// The open pixel of a message.
    pub fn open_url(&self, message_id: &str) -> String {
        format!("{}/delivery/o/{}/{}.gif", self.base_url, message_id, self.signature("o", message_id, ""))
    }

    /// The signed redirect to `target` for a message.
    pub fn click_url(&self, message_id: &str, target: &str) -> String {
        format!(
            "{}/delivery/c/{}?u={}&s={}",
            self.base_url,
            message_id,
            percent(target),
            self.signature("c", message_id, target)
        )
    }

    /// Whether an open pixel's signature is ours.
    pub fn verify_open(&self, message_id: &str, signature: &str) -> bool {
        self.verify("o", message_id, "", signature)
    }

    /// Whether a click link is ours and unaltered; the target is only followed when it is.
    pub fn verify_click(&self, message_id: &str, target: &str, signature: &str) -> bool {
        (target.starts_with("https://") || target.starts_with("http://"))
            && self.verify("c", message_id, target, signature)
    }
}

/// Rewrites the `href="http(s)://..."` links of an HTML body to signed redirects and appends the open
/// pixel. Links of other schemes (mailto:, tel:) and the unsubscribe link are left alone.
pub fn instrument_html(html: &str, message_id: &str, signer: &LinkSigner, keep: &[&str]) -> String {
    static HREF: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = HREF.get_or_init(|| {
        regex::Regex::new(r#"(?i)href\s*=\s*"(https?://[^"]+)""#)
            .unwrap_or_else(|_| unreachable!("the pattern is valid"))
    });
    let rewritten = re.replace_all(html, |caps: &regex::Captures<'_>| {
        let target = html_unescape(&caps[1]);
        if keep.iter().any(|k| !k.is_empty() && target == *k) {
            return caps[0].to_string();
        }
        format!("href=\"{}\"", html_escape(&signer.click_url(message_id, &target)))
    });
    let pixel = format!(
        "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:none\">",
        html_escape(&signer.open_url(message_id))
    );
    match rewritten.rfind("</body>") {
        Some(i) => format!("{}{pixel}{}", &rewritten[..i], &rewritten[i..]),
        None => format!("{rewritten}{pixel}"),
    }
}

fn html_unescape(s: &str) -> String {
    s.replace("&amp;", "&").replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">")
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::new(b"0123456789abcdef0123".to_vec(), "http://t.example/")
    }

    #[test]
    fn click_links_verify_and_refuse_alteration() {
        let s = signer();
        let url = s.click_url("msg_1", "https://shop.example/p?a=1&b=2");
        let parsed = url::Url::parse(&url).unwrap();
        let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(q["u"], "https://shop.example/p?a=1&b=2");
        assert!(s.verify_click("msg_1", &q["u"], &q["s"]));
        assert!(!s.verify_click("msg_2", &q["u"], &q["s"]), "another message");
        assert!(!s.verify_click("msg_1", "https://evil.example/", &q["s"]), "another target");
        assert!(!s.verify_click("msg_1", &q["u"], "AAAA"), "a forged signature");
        let other = LinkSigner::new(b"another key of 16+ bytes".to_vec(), "http://t.example");
        assert!(!other.verify_click("msg_1", &q["u"], &q["s"]), "another key");
    }

    #[test]
    fn javascript_targets_are_never_followed() {
        let s = signer();
        let url = s.click_url("msg_1", "javascript:alert(1)");
        let parsed = url::Url::parse(&url).unwrap();
        let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert!(!s.verify_click("msg_1", &q["u"], &q["s"]));
    }

    #[test]
    fn html_links_are_rewritten_and_a_pixel_added() {
        let s = signer();
        let html = r#"<html><body><a href="https://shop.example/a?x=1&amp;y=2">A</a> <a href="mailto:x@y.z">m</a> <a href="https://u.example/unsub">u</a></body></html>"#;
        let out = instrument_html(html, "msg_1", &s, &["https://u.example/unsub"]);
        assert!(out.contains("/delivery/c/msg_1?u=https%3A%2F%2Fshop.example%2Fa%3Fx%3D1%26y%3D2"), "{out}");
        assert!(out.contains("mailto:x@y.z"));
        assert!(out.contains(r#"href="https://u.example/unsub""#));
        assert!(out.contains("/delivery/o/msg_1/"));
        assert!(out.ends_with("</body></html>"));
    }
}
