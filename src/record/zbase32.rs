//! z-base-32 (the human-oriented base-32 of Zooko O'Whielacronx), used for key names: an
//! Ed25519 public key of 32 bytes is 52 characters, all valid in a DNS label and case-free.

const ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Encodes `bytes`, most significant bit first, without padding.
pub(super) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity((bytes.len() * 8).div_ceil(5));
    let mut buffer: u16 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[usize::from((buffer >> bits) & 0x1f)]));
        }
    }
    if bits > 0 {
        out.push(char::from(
            ALPHABET[usize::from((buffer << (5 - bits)) & 0x1f)],
        ));
    }
    out
}

/// Decodes text made by [`encode`] for exactly `len` bytes; `None` for anything else
/// (characters outside the alphabet, wrong length, non-zero padding bits).
pub(super) fn decode(text: &str, len: usize) -> Option<Vec<u8>> {
    if text.len() != (len * 8).div_ceil(5) {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    let mut buffer: u16 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c.to_ascii_lowercase())?;
        buffer = (buffer << 5) | value as u16;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    // Leftover bits are padding and must be zero, so each key has exactly one spelling.
    if buffer & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // From the z-base-32 specification's examples and pkarr's key format.
        assert_eq!(encode(&[0xf0, 0xbf, 0xc7]), "6n9hq");
        assert_eq!(encode(&[0xd4, 0x7a, 0x04]), "4t7ye");
        assert_eq!(encode(&[0u8; 32]).len(), 52);
        assert_eq!(encode(&[0u8; 32]), "y".repeat(52));
    }

    #[test]
    fn round_trips_and_rejects() {
        let key: Vec<u8> = (0..32).map(|i| i * 7 + 3).collect();
        let text = encode(&key);
        assert_eq!(decode(&text, 32).unwrap(), key);
        assert_eq!(decode(&text.to_uppercase(), 32).unwrap(), key);
        assert!(decode(&text[..51], 32).is_none());
        assert!(decode(&text.replace(text.chars().next().unwrap(), "0"), 32).is_none());
        // The last character carries 1 data bit and 4 padding bits: other paddings are refused.
        // 'n' is 0b00010: its padding bits are not zero.
        let mut bad = text.clone();
        bad.pop();
        bad.push('n');
        assert!(decode(&bad, 32).is_none());
    }
}
