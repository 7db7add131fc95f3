//! Test material shared by the codec's, the server's and the client's unit tests: the RFC 5769
//! test vectors and builders for requests.

use super::message::{BINDING_REQUEST, MAGIC_COOKIE, Message, Writer};

pub(super) const V4_SOURCE: &str = "192.0.2.1:32853";
pub(super) const V6_SOURCE: &str = "[2001:db8:1234:5678:11:2233:4455:6677]:32853";
/// The transaction id of the RFC 5769 test vectors.
pub(super) const VECTOR_ID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// Attributes to put in a test message: type and value.
pub(super) type AttributeList<'a> = &'a [(u16, &'a [u8])];

/// Bytes from hex digits; anything else (spaces, newlines) is skipped.
pub(super) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// RFC 5769 section 2.1: a Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED,
/// USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
pub(super) fn rfc5769_request() -> Vec<u8> {
    hex("0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
         8022 0010 5354554e 20746573 7420636c 69656e74
         0024 0004 6e0001ff
         8029 0008 932ff9b1 51263b36
         0006 0009 6576746a 3a683676 59202020
         0008 0014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
         8028 0004 e57a3bcf")
}

/// RFC 5769 section 2.2: a success response for 192.0.2.1:32853.
pub(super) fn rfc5769_response_v4() -> Vec<u8> {
    hex("0101 003c 2112a442 b7e7a701 bc34d686 fa87dfae
         8022 000b 74657374 20766563 746f7220
         0020 0008 0001a147 e112a643
         0008 0014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
         8028 0004 c07d4c96")
}

/// The magic cookie and [`VECTOR_ID`], as a message header carries them.
pub(super) fn vector_header_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&MAGIC_COOKIE);
    id[4..].copy_from_slice(&VECTOR_ID);
    id
}

/// A Binding request of transaction [`VECTOR_ID`] with these attributes.
pub(super) fn request(attributes: AttributeList<'_>) -> Vec<u8> {
    let mut writer = Writer::new(BINDING_REQUEST, &vector_header_id());
    for &(kind, value) in attributes {
        writer.attribute(kind, value);
    }
    writer.finish()
}

/// The value of the first attribute of type `kind`.
pub(super) fn attribute<'a>(message: &Message<'a>, kind: u16) -> Option<&'a [u8]> {
    message
        .attributes()
        .find(|&(k, _)| k == kind)
        .map(|(_, v)| v)
}
