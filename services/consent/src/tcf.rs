//! IAB TCF v2.2 consent strings: the core segment's fields Rapport records (who made the string, when,
//! under which policy, and which of the eleven TCF purposes have consent or legitimate interest).
//!
//! A TC string is one or more base64url segments joined by `.`; the first is the core segment, a bit
//! field read most significant bit first. Only version 2 is accepted.

use base64::Engine as _;

/// The decoded core segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcString {
    /// When the string was created, in milliseconds since the epoch.
    pub created_ms: i64,
    /// When it was last updated, in milliseconds since the epoch.
    pub last_updated_ms: i64,
    /// The CMP's registered id.
    pub cmp_id: u32,
    /// The CMP's version.
    pub cmp_version: u32,
    /// The consent screen the user acted on.
    pub consent_screen: u32,
    /// Two-letter ISO 639-1 language, upper case.
    pub consent_language: String,
    /// The Global Vendor List version.
    pub vendor_list_version: u32,
    /// The TCF policy version (4 for v2.2).
    pub policy_version: u32,
    /// Purposes 1..=24 with consent.
    pub purpose_consents: Vec<u32>,
    /// Purposes 1..=24 with legitimate interest established.
    pub purpose_legitimate_interests: Vec<u32>,
}

/// Bits the core segment must hold up to the publisher country code.
const CORE_BITS: usize = 213;

struct Bits<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: usize) -> u64 {
        let mut v = 0u64;
        for _ in 0..n {
            let byte = self.bytes[self.at / 8];
            let bit = (byte >> (7 - (self.at % 8))) & 1;
            v = (v << 1) | u64::from(bit);
            self.at += 1;
        }
        v
    }

    fn flags(&mut self, n: usize) -> Vec<u32> {
        (1..=n as u32).filter(|_| self.read(1) == 1).collect()
    }
}

/// Decodes `s`; the error says what is wrong, without echoing the string.
pub fn decode(s: &str) -> Result<TcString, String> {
    let core = s.trim().split('.').next().unwrap_or_default();
    if core.is_empty() {
        return Err("is empty".into());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(core.trim_end_matches('='))
        .map_err(|_| "the core segment is not base64url".to_string())?;
    if bytes.len() * 8 < CORE_BITS {
        return Err(format!("the core segment is {} bits, shorter than the {CORE_BITS} of a v2 core", bytes.len() * 8));
    }
    let mut bits = Bits { bytes: &bytes, at: 0 };
    let version = bits.read(6);
    if version != 2 {
        return Err(format!("version {version}; only TCF v2 strings are accepted"));
    }
    let created_ms = bits.read(36) as i64 * 100;
    let last_updated_ms = bits.read(36) as i64 * 100;
    let cmp_id = bits.read(12) as u32;
    let cmp_version = bits.read(12) as u32;
    let consent_screen = bits.read(6) as u32;
    let letter = |v: u64| char::from(b'A' + v as u8);
    let (l1, l2) = (bits.read(6), bits.read(6));
    if l1 > 25 || l2 > 25 {
        return Err("the consent language is not two letters".into());
    }
    let consent_language = [letter(l1), letter(l2)].iter().collect();
    let vendor_list_version = bits.read(12) as u32;
    let policy_version = bits.read(6) as u32;
    let _is_service_specific = bits.read(1);
    let _use_non_standard_texts = bits.read(1);
    let _special_feature_opt_ins = bits.read(12);
    let purpose_consents = bits.flags(24);
    let purpose_legitimate_interests = bits.flags(24);
    if cmp_id == 0 {
        return Err("the CMP id is 0".into());
    }
    Ok(TcString {
        created_ms,
        last_updated_ms,
        cmp_id,
        cmp_version,
        consent_screen,
        consent_language,
        vendor_list_version,
        policy_version,
        purpose_consents,
        purpose_legitimate_interests,
    })
}

/// Encodes `t` as a TC string core segment (publisher country DE, no vendors), as a CMP would: for tests
/// and demos.
pub fn encode(t: &TcString) -> String {
    let mut bits: Vec<bool> = Vec::new();
    let mut put = |v: u64, n: usize| {
        for i in (0..n).rev() {
            bits.push((v >> i) & 1 == 1);
        }
    };
    put(2, 6);
    put((t.created_ms / 100) as u64, 36);
    put((t.last_updated_ms / 100) as u64, 36);
    put(u64::from(t.cmp_id), 12);
    put(u64::from(t.cmp_version), 12);
    put(u64::from(t.consent_screen), 6);
    for c in t.consent_language.bytes() {
        put(u64::from(c - b'A'), 6);
    }
    put(u64::from(t.vendor_list_version), 12);
    put(u64::from(t.policy_version), 6);
    put(0, 1);
    put(0, 1);
    put(0, 12);
    for p in 1..=24 {
        put(u64::from(t.purpose_consents.contains(&p)), 1);
    }
    for p in 1..=24 {
        put(u64::from(t.purpose_legitimate_interests.contains(&p)), 1);
    }
    put(0, 1);
    put(u64::from(b'D' - b'A'), 6);
    put(u64::from(b'E' - b'A'), 6);
    put(0, 16 + 1 + 16 + 1 + 16);
    let mut bytes = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        if *b {
            bytes[i / 8] |= 1 << (7 - i % 8);
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(consents: &[u32]) -> TcString {
        TcString {
            created_ms: 1_764_000_000_000,
            last_updated_ms: 1_764_000_100_000,
            cmp_id: 300,
            cmp_version: 7,
            consent_screen: 1,
            consent_language: "DE".into(),
            vendor_list_version: 120,
            policy_version: 4,
            purpose_consents: consents.to_vec(),
            purpose_legitimate_interests: vec![2, 7, 10],
        }
    }

    #[test]
    fn a_core_segment_round_trips() {
        let t = sample(&[1, 3, 4, 7]);
        let s = format!("{}.YAAAAAAAAAAA", encode(&t));
        assert_eq!(decode(&s).unwrap(), t);
    }

    #[test]
    fn bad_strings_say_what_is_wrong() {
        assert_eq!(decode("").unwrap_err(), "is empty");
        assert!(decode("not base64!").unwrap_err().contains("base64url"));
        assert!(decode("CAAA").unwrap_err().contains("shorter"));
        let mut v1 = sample(&[1]);
        v1.cmp_id = 0;
        assert!(decode(&encode(&v1)).unwrap_err().contains("CMP id"));
        // Version 1 in the first six bits.
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encode(&sample(&[1]))).unwrap();
        bytes[0] = (bytes[0] & 0b0000_0011) | (1 << 2);
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        assert!(decode(&s).unwrap_err().contains("version 1"));
    }
}
