//! SMS length: characters and segments. A text that fits the GSM 03.38 alphabet (with its extension
//! table, whose characters take two septets) is sent as GSM-7: 160 septets in one segment, 153 per
//! segment when concatenated. Anything else is UCS-2: 70 UTF-16 units in one segment, 67 per segment.

const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENSION: &str = "^{}\\[~]|€\u{000C}";

/// The encoding an SMS is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// The length of a text as an SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsLength {
    pub encoding: Encoding,
    /// Characters as the customer sees them.
    pub characters: usize,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    pub segments: usize,
}

/// Measures `text`.
pub fn measure(text: &str) -> SmsLength {
    let characters = text.chars().count();
    let mut septets = 0;
    let mut gsm = true;
    for c in text.chars() {
        if GSM_BASIC.contains(c) {
            septets += 1;
        } else if GSM_EXTENSION.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, part) =
        if gsm { (Encoding::Gsm7, septets, 160, 153) } else { (Encoding::Ucs2, text.encode_utf16().count(), 70, 67) };
    let segments = match units {
        0 => 0,
        n if n <= single => 1,
        n => n.div_ceil(part),
    };
    SmsLength { encoding, characters, units, segments }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_texts_fit_160_then_153() {
        assert_eq!(measure("").segments, 0);
        let m = measure(&"a".repeat(160));
        assert_eq!((m.encoding, m.segments), (Encoding::Gsm7, 1));
        assert_eq!(measure(&"a".repeat(161)).segments, 2);
        assert_eq!(measure(&"a".repeat(306)).segments, 2);
        assert_eq!(measure(&"a".repeat(307)).segments, 3);
    }

    #[test]
    fn extension_characters_take_two_septets() {
        let m = measure(&"€".repeat(80));
        assert_eq!((m.encoding, m.characters, m.units, m.segments), (Encoding::Gsm7, 80, 160, 1));
        assert_eq!(measure(&"€".repeat(81)).segments, 2);
    }

    #[test]
    fn other_characters_switch_to_ucs2() {
        let m = measure("Grüße aus Łódź");
        assert_eq!(m.encoding, Encoding::Ucs2);
        assert_eq!(m.segments, 1);
        assert_eq!(measure(&"ł".repeat(70)).segments, 1);
        assert_eq!(measure(&"ł".repeat(71)).segments, 2);
        assert_eq!(measure(&"ł".repeat(135)).segments, 3);
        // An emoji is two UTF-16 units.
        assert_eq!(measure("😀").units, 2);
    }
}
