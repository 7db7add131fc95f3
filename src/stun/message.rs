//! The STUN message codec (RFC 8489 section 5 and section 14): the 20-byte header, the
//! attribute list, the address attributes (MAPPED-ADDRESS, and XOR-MAPPED-ADDRESS, XORed with
//! the magic cookie and transaction id), ERROR-CODE, UNKNOWN-ATTRIBUTES and FINGERPRINT.
//!
//! Parsing checks a datagram the way both roles need (section 6.3); deciding what a message
//! means (which method, which attributes must be understood) is the caller's job.

use std::net::{IpAddr, SocketAddr};

/// The fixed value of a STUN message's bytes 4..8 since RFC 5389.
pub(super) const MAGIC_COOKIE: [u8; 4] = 0x2112_A442_u32.to_be_bytes();
pub(super) const HEADER_LEN: usize = 20;

// Message types: the method (Binding, 0x001) with the class bits.
pub(super) const BINDING_REQUEST: u16 = 0x0001;
pub(super) const BINDING_SUCCESS: u16 = 0x0101;
pub(super) const BINDING_ERROR: u16 = 0x0111;

// Attribute types. Below 0x8000 an attribute is comprehension-required.
pub(super) const MAPPED_ADDRESS: u16 = 0x0001;
pub(super) const CHANGE_REQUEST: u16 = 0x0003;
pub(super) const SOURCE_ADDRESS: u16 = 0x0004;
pub(super) const CHANGED_ADDRESS: u16 = 0x0005;
pub(super) const MESSAGE_INTEGRITY: u16 = 0x0008;
pub(super) const ERROR_CODE: u16 = 0x0009;
pub(super) const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub(super) const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub(super) const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub(super) const SOFTWARE: u16 = 0x8022;
pub(super) const FINGERPRINT: u16 = 0x8028;
pub(super) const COMPREHENSION_OPTIONAL: u16 = 0x8000;

/// The CRC-32 of a message is XORed with this ("STUN") to make FINGERPRINT.
pub(super) const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Room for every message this crate writes (a reply with two IPv6 addresses and SOFTWARE is
/// the largest, [`super::MAX_RESPONSE`]) without growing the buffer.
const WRITER_CAPACITY: usize = 128;

/// What the SOFTWARE attribute says.
pub(super) const SOFTWARE_NAME: &str = concat!("p2pdns ", env!("CARGO_PKG_VERSION"));

/// A datagram that passed the checks of RFC 8489 section 6: a STUN header whose length matches
/// the datagram, attributes that fill it exactly, a FINGERPRINT (if any) last and correct.
#[derive(Debug, Clone, Copy)]
pub(super) struct Message<'a> {
    pub(super) kind: u16,
    /// Magic cookie and 96-bit transaction id, as a response echoes them; for an RFC 3489
    /// message, its 128-bit transaction id.
    pub(super) id: [u8; 16],
    attributes: &'a [u8],
}

impl<'a> Message<'a> {
    /// Whether the message lacks the magic cookie: it comes from an RFC 3489 implementation.
    pub(super) fn is_rfc3489(&self) -> bool {
        self.id[..4] != MAGIC_COOKIE
    }

    pub(super) fn attributes(&self) -> Attributes<'a> {
        Attributes(self.attributes)
    }
}

/// Checks `datagram` as both roles must before reading it (RFC 8489 section 6.3), or says
/// why it is not a STUN message.
pub(super) fn parse(datagram: &[u8]) -> Result<Message<'_>, &'static str> {
    let Some((header, body)) = datagram.split_first_chunk::<HEADER_LEN>() else {
        return Err("shorter than a STUN header");
    };
    let kind = u16::from_be_bytes([header[0], header[1]]);
    if kind & 0xC000 != 0 {
        return Err("not STUN: the first two bits are not zero");
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if length % 4 != 0 {
        return Err("message length not a multiple of 4");
    }
    if length != body.len() {
        return Err("message length does not match the datagram");
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&header[4..]);

    let mut rest = body;
    while !rest.is_empty() {
        let Some((kind, value, next)) = split_attribute(rest) else {
            return Err("truncated attribute");
        };
        if kind == FINGERPRINT {
            if !next.is_empty() {
                return Err("FINGERPRINT is not the last attribute");
            }
            let covered = &datagram[..datagram.len() - rest.len()];
            if value != (crc32(covered) ^ FINGERPRINT_XOR).to_be_bytes() {
                return Err("wrong FINGERPRINT");
            }
        }
        rest = next;
    }
    Ok(Message {
        kind,
        id,
        attributes: body,
    })
}

/// The first attribute of `buf`: its type, its value and what follows its padding.
fn split_attribute(buf: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    let (&[t0, t1, l0, l1], after) = buf.split_first_chunk::<4>()?;
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let value = after.get(..len)?;
    let rest = after.get(padded(len)..)?;
    Some((u16::from_be_bytes([t0, t1]), value, rest))
}

/// Attributes of a parsed message, in order.
pub(super) struct Attributes<'a>(&'a [u8]);

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (kind, value, rest) = split_attribute(self.0)?;
        self.0 = rest;
        Some((kind, value))
    }
}

/// Builds a message.
pub(super) struct Writer(Vec<u8>);

impl Writer {
    /// A message of type `kind` whose header carries `id` (magic cookie and transaction id).
    pub(super) fn new(kind: u16, id: &[u8; 16]) -> Self {
        let mut buf = Vec::with_capacity(WRITER_CAPACITY);
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(id);
        Writer(buf)
    }

    /// Appends an attribute, padded to a multiple of 4 bytes with zeros.
    pub(super) fn attribute(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(value.len()).expect("attributes we write are short");
        self.0.extend_from_slice(&kind.to_be_bytes());
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(value);
        self.0
            .resize(self.0.len() + padded(value.len()) - value.len(), 0);
    }

    /// UNKNOWN-ATTRIBUTES, padded by repeating the last type, as RFC 3489 required (RFC 8489
    /// lets the padding be anything).
    pub(super) fn unknown_attributes(&mut self, kinds: &[u16]) {
        let len = u16::try_from(2 * kinds.len()).expect("at most MAX_UNKNOWN types");
        self.0.extend_from_slice(&UNKNOWN_ATTRIBUTES.to_be_bytes());
        self.0.extend_from_slice(&len.to_be_bytes());
        for kind in kinds {
            self.0.extend_from_slice(&kind.to_be_bytes());
        }
        if kinds.len() % 2 == 1
            && let Some(last) = kinds.last()
        {
            self.0.extend_from_slice(&last.to_be_bytes());
        }
    }

    /// The message, with the length field of its header filled in.
    pub(super) fn finish(mut self) -> Vec<u8> {
        let len = u16::try_from(self.0.len() - HEADER_LEN).expect("messages we write are short");
        self.0[2..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// The value of MAPPED-ADDRESS, or of XOR-MAPPED-ADDRESS when given the message's cookie and
/// transaction id to XOR with.
pub(super) fn encode_address(addr: SocketAddr, xor: Option<&[u8; 16]>) -> Vec<u8> {
    let (family, mut ip) = match addr.ip() {
        IpAddr::V4(ip) => (1, ip.octets().to_vec()),
        IpAddr::V6(ip) => (2, ip.octets().to_vec()),
    };
    let mut port = addr.port().to_be_bytes();
    if let Some(key) = xor {
        port.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
        ip.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
    }
    let mut value = vec![0, family];
    value.extend_from_slice(&port);
    value.extend_from_slice(&ip);
    value
}

/// The address in a MAPPED-ADDRESS value, or in an XOR-MAPPED-ADDRESS value when given the
/// message's cookie and transaction id; `None` if the family and the length disagree.
pub(super) fn decode_address(value: &[u8], xor: Option<&[u8; 16]>) -> Option<SocketAddr> {
    let (&[_, family, p0, p1], ip) = value.split_first_chunk::<4>()?;
    let mut port = [p0, p1];
    let mut ip: Vec<u8> = ip.to_vec();
    if let Some(key) = xor {
        port.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
        ip.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
    }
    let ip = match (
        family,
        <[u8; 4]>::try_from(&ip[..]),
        <[u8; 16]>::try_from(&ip[..]),
    ) {
        (1, Ok(v4), _) => IpAddr::from(v4),
        (2, _, Ok(v6)) => IpAddr::from(v6),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

/// The value of ERROR-CODE: `code` (300..=699) as class and number, then the reason phrase.
pub(super) fn encode_error(code: u16, reason: &str) -> Vec<u8> {
    let class = u8::try_from(code / 100).expect("error codes are 300..=699");
    let number = u8::try_from(code % 100).expect("below 100");
    let mut value = vec![0, 0, class, number];
    value.extend_from_slice(reason.as_bytes());
    value
}

/// `len` rounded up to a multiple of 4.
pub(super) const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// CRC-32 (ISO-HDLC, as zlib computes it), which FINGERPRINT uses.
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::test_vectors::*;

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn rfc5769_vectors_parse_and_fingerprints_check() {
        let request = rfc5769_request();
        let message = parse(&request).unwrap();
        assert_eq!(message.kind, BINDING_REQUEST);
        assert!(!message.is_rfc3489());
        assert_eq!(message.attributes().count(), 6);

        let response = rfc5769_response_v4();
        let message = parse(&response).unwrap();
        assert_eq!(message.kind, BINDING_SUCCESS);
        assert_eq!(message.attributes().count(), 4);

        // One bit changed anywhere before the FINGERPRINT: dropped.
        let mut corrupt = rfc5769_request();
        corrupt[30] ^= 0x01;
        assert_eq!(parse(&corrupt).unwrap_err(), "wrong FINGERPRINT");
    }

    #[test]
    fn xor_mapped_address_v4_and_v6_match_rfc5769() {
        let id = vector_header_id();
        let v4: SocketAddr = V4_SOURCE.parse().unwrap();
        assert_eq!(encode_address(v4, Some(&id)), hex("0001a147 e112a643"));
        // RFC 5769 section 2.3.
        let v6: SocketAddr = V6_SOURCE.parse().unwrap();
        let value = hex("0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9");
        assert_eq!(encode_address(v6, Some(&id)), value);
        assert_eq!(decode_address(&value, Some(&id)), Some(v6));
        assert_eq!(decode_address(&encode_address(v6, None), None), Some(v6));
        // A family that does not fit its length.
        assert_eq!(
            decode_address(&hex("0001a147 0113a9fa a5d3f179"), None),
            None
        );
        assert_eq!(decode_address(&hex("0003a147 e112a643"), None), None);
        assert_eq!(decode_address(&hex("0001a1"), None), None);
    }
}
