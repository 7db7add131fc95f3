//! The test vectors of docs/PROTOCOL.md section 11 (`docs/protocol-vectors.json`): DHT keys
//! and signed records from the published test key, valid and invalid, each with its verdict.
//! The test here builds every vector again (Ed25519 is deterministic), checks that the file
//! holds exactly them, and checks each verdict through the code a node runs. Another
//! implementation checks the same file (tests/foreign).
//!
//! `P2PDNS_WRITE_VECTORS=1 cargo test --lib record::vectors` writes the file after a format
//! change.

use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::NULL};
use libp2p::identity::ed25519;
use serde_json::{Value, json};

use super::*;

/// The secret key of RFC 8032 section 7.1, TEST 1.
const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// The time at which every verdict holds: 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;
/// Where the vectors live, from the crate root.
const FILE: &str = "docs/protocol-vectors.json";

mod content;
use content::bad_content;

fn test_key() -> ed25519::Keypair {
    let mut seed = hex::decode(SEED).expect("hex constant");
    let secret = ed25519::SecretKey::try_from_bytes(&mut seed).expect("32 octets");
    ed25519::Keypair::from(secret)
}

fn other_key() -> ed25519::Keypair {
    let mut seed = [7u8; 32];
    ed25519::Keypair::from(ed25519::SecretKey::try_from_bytes(&mut seed).expect("32 octets"))
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a valid name")
}

/// A name in wire form with its letters as written (upper case kept).
pub(super) fn wire(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in text.split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len()).expect("short label"));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// One resource record in wire form.
fn rr(owner: &str, rtype: u16, class: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut out = wire(owner);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&u16::try_from(rdata.len()).expect("short").to_be_bytes());
    out.extend_from_slice(rdata);
    out
}

fn a(owner: &str, ip: [u8; 4]) -> Vec<u8> {
    rr(owner, 1, 1, 300, &ip)
}

/// A record signed by `key` whose fields are given as octets, so that it can break any rule.
/// Four labels of 63 `a`s and the root: 257 bytes, two over the limit of a name.
fn long_name() -> Vec<u8> {
    let mut name = Vec::new();
    for _ in 0..4 {
        name.push(63);
        name.extend_from_slice(&[b'a'; 63]);
    }
    name.push(0);
    name
}

struct Raw {
    version: u8,
    name: Vec<u8>,
    owner: [u8; 32],
    seq: u64,
    expires: u64,
    count: Option<u16>,
    records: Vec<Vec<u8>>,
    trailing: Vec<u8>,
}

impl Raw {
    fn new(name: &str, records: Vec<Vec<u8>>) -> Self {
        Self {
            version: 1,
            name: wire(name),
            owner: test_key().public().to_bytes(),
            seq: 1,
            expires: NOW + 86_400,
            count: None,
            records,
            trailing: Vec::new(),
        }
    }

    fn signed(&self, key: &ed25519::Keypair) -> Vec<u8> {
        let mut out = self.unsigned();
        let signature = key.sign(&signing_input(&out));
        out.extend_from_slice(&signature);
        out
    }

    /// The record with `signature` in place of one made by a key.
    fn with_signature(&self, signature: &[u8; 64]) -> Vec<u8> {
        [self.unsigned(), signature.to_vec()].concat()
    }

    fn unsigned(&self) -> Vec<u8> {
        let mut out = vec![self.version];
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.owner);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        let count = self
            .count
            .unwrap_or(u16::try_from(self.records.len()).expect("few"));
        out.extend_from_slice(&count.to_be_bytes());
        for record in &self.records {
            out.extend_from_slice(record);
        }
        out.extend_from_slice(&self.trailing);
        out
    }
}

fn unknown(owner: &str, rtype: RecordType, rdata: &[u8]) -> Record {
    let rdata = if rdata.is_empty() {
        NULL::new()
    } else {
        NULL::with(rdata.to_vec())
    };
    Record::from_rdata(name(owner), 300, RData::Unknown { code: rtype, rdata })
}

fn typed(owner: &str, data: RData) -> Record {
    Record::from_rdata(name(owner), 300, data)
}

/// The resource records of the typical valid record, in no particular order: `sign` sorts.
fn typical_records() -> Vec<Record> {
    use hickory_proto::rr::rdata::{CNAME, MX, SRV, TXT};
    // HTTPS 1 . alpn=h2 port=443, SvcParams out of their required order: opaque octets here.
    let https = b"\x00\x01\x00\x00\x03\x01\xbb\x00\x01\x00\x03\x02h2";
    vec![
        typed("www.site.p2p.", RData::CNAME(CNAME(name("site.p2p.")))),
        typed("site.p2p.", RData::A("192.0.2.1".parse().expect("ip"))),
        typed("site.p2p.", RData::AAAA("2001:db8::1".parse().expect("ip"))),
        typed("site.p2p.", RData::MX(MX::new(10, name("mail.site.p2p.")))),
        typed(
            "site.p2p.",
            RData::TXT(TXT::new(vec!["v=1".into(), "Hello, World".into()])),
        ),
        typed(
            "_ssh._tcp.site.p2p.",
            RData::SRV(SRV::new(0, 0, 22, name("site.p2p."))),
        ),
        unknown("site.p2p.", RecordType::HTTPS, https),
        typed("site.p2p.", RData::A("192.0.2.2".parse().expect("ip"))),
        // NSEC is opaque (RFC 6840 section 5.1): its upper-case next name is kept as written.
        unknown(
            "site.p2p.",
            RecordType::NSEC,
            b"\x04NEXT\x03p2p\x00\x00\x01\x40",
        ),
        unknown("site.p2p.", RecordType::Unknown(65_280), b"Any Octets"),
        unknown("site.p2p.", RecordType::Unknown(65_281), b""),
    ]
}

fn valid(id: &str, lookup: &str, record: &NameRecord, note: &str) -> Value {
    json!({"id": id, "lookup": lookup, "record": hex::encode(record.to_bytes()),
           "verdict": "valid", "note": note})
}

fn invalid(id: &str, lookup: &str, bytes: &[u8], verdict: &str, note: &str) -> Value {
    json!({"id": id, "lookup": lookup, "record": hex::encode(bytes),
           "verdict": verdict, "note": note})
}

fn valid_records() -> Vec<Value> {
    let key = test_key();
    let site = name("site.p2p.");
    let sign = |name: &Name, seq, records| {
        NameRecord::sign(&key, name, seq, NOW + 86_400, records).expect("valid")
    };
    let own = key_name(&key.public().to_bytes());
    let filler = |fill: u8, len: usize| {
        let text = vec![fill; len];
        typed(
            "site.p2p.",
            RData::TXT(hickory_proto::rr::rdata::TXT::from_bytes(vec![&text[..]])),
        )
    };
    // Exactly 1024 octets: 125 octets of record without resource records, three TXT records
    // of 21 + 255 octets (owner 10, fixed fields 10, length octet 1, text) and one of 21 + 50.
    let full = vec![
        filler(b'x', 255),
        filler(b'y', 255),
        filler(b'z', 255),
        filler(b'w', 50),
    ];
    let www = Record::from_rdata(
        own.prepend_label("www").expect("a short name"),
        300,
        RData::A("198.51.100.7".parse().expect("ip")),
    );
    vec![
        valid(
            "empty",
            "site.p2p.",
            &sign(&site, 1, vec![]),
            "no resource records",
        ),
        valid(
            "typical",
            "site.p2p.",
            &sign(&site, NOW, typical_records()),
            "typed and opaque types, canonical order; seq is a Unix time",
        ),
        valid(
            "key-name",
            &own.to_ascii(),
            &sign(&own, 2, vec![www]),
            "the test key's own key name",
        ),
        valid(
            "largest",
            "site.p2p.",
            &sign(&site, 3, full),
            "exactly 1024 octets",
        ),
    ]
}

// A table of vectors, one entry each: long by nature, not by logic.
#[allow(clippy::too_many_lines)]
fn bad_form() -> Vec<Value> {
    let key = test_key();
    let bad =
        |id, raw: Raw, verdict, note| invalid(id, "site.p2p.", &raw.signed(&key), verdict, note);
    let mx = |host: &[u8]| [&b"\x00\x0a"[..], host].concat();
    let site = |records| Raw::new("site.p2p.", records);
    vec![
        bad(
            "version-2",
            Raw {
                version: 2,
                ..site(vec![])
            },
            "version",
            "version byte 2",
        ),
        bad(
            "count-past-end",
            Raw {
                count: Some(2),
                ..site(vec![a("site.p2p.", [192, 0, 2, 1])])
            },
            "malformed",
            "count says 2, one resource record follows",
        ),
        bad(
            "trailing",
            Raw {
                trailing: vec![0],
                ..site(vec![])
            },
            "malformed",
            "one octet between the records and the signature",
        ),
        bad(
            "short-a",
            site(vec![rr("site.p2p.", 1, 1, 300, &[192, 0, 2])]),
            "malformed",
            "A RDATA of 3 octets",
        ),
        bad(
            "empty-txt",
            site(vec![rr("site.p2p.", 16, 1, 300, &[])]),
            "malformed",
            "TXT RDATA holds no character-string",
        ),
        bad(
            "txt-past-end",
            site(vec![rr("site.p2p.", 16, 1, 300, b"\x05ab")]),
            "malformed",
            "a TXT character-string runs past RDATA",
        ),
        bad(
            "mx-cut",
            site(vec![rr("site.p2p.", 15, 1, 300, &mx(b"\x04mail\x04site"))]),
            "malformed",
            "MX exchange name without its root label",
        ),
        bad(
            "upper-cname",
            site(vec![rr("www.site.p2p.", 5, 1, 300, &wire("Site.p2p."))]),
            "not-canonical",
            "CNAME target with an upper-case letter",
        ),
        bad(
            "upper-rp",
            site(vec![rr(
                "site.p2p.",
                17,
                1,
                300,
                &[wire("Admin.site.p2p."), wire("site.p2p.")].concat(),
            )]),
            "not-canonical",
            "RP mailbox with an upper-case letter",
        ),
        bad(
            "upper-owner",
            site(vec![a("WWW.site.p2p.", [192, 0, 2, 1])]),
            "not-canonical",
            "owner name with upper-case letters",
        ),
        bad(
            "upper-name",
            Raw::new("Site.p2p.", vec![]),
            "not-canonical",
            "the record's name with an upper-case letter",
        ),
        bad(
            "compressed-mx",
            site(vec![rr("site.p2p.", 15, 1, 300, &mx(b"\x04mail\xc0\x0b"))]),
            "not-canonical",
            "MX exchange name compressed",
        ),
        bad(
            "out-of-order",
            site(vec![
                a("www.site.p2p.", [192, 0, 2, 1]),
                a("site.p2p.", [192, 0, 2, 1]),
            ]),
            "not-canonical",
            "a name below site.p2p. sorts after it (RFC 4034 section 6.1)",
        ),
        bad(
            "rdata-order",
            site(vec![
                a("site.p2p.", [192, 0, 2, 2]),
                a("site.p2p.", [192, 0, 2, 1]),
            ]),
            "not-canonical",
            "RDATA 192.0.2.2 before 192.0.2.1",
        ),
        bad(
            "duplicate",
            site(vec![
                a("site.p2p.", [192, 0, 2, 1]),
                rr("site.p2p.", 1, 1, 60, &[192, 0, 2, 1]),
            ]),
            "not-canonical",
            "the same A record twice, with two TTLs",
        ),
        bad(
            "duplicate-other-class",
            site(vec![
                a("site.p2p.", [192, 0, 2, 1]),
                rr("site.p2p.", 1, 3, 60, &[192, 0, 2, 1]),
            ]),
            "not-canonical",
            "the same A record in class IN and in class CH: duplicates whatever the CLASS",
        ),
        bad(
            "ch-a-3-bytes",
            site(vec![rr("site.p2p.", 1, 3, 60, &[192, 0, 2])]),
            "malformed",
            "class CH, type A, 3 bytes of RDATA: the form is checked before the CLASS",
        ),
        bad(
            "name-over-255",
            site(vec![rr("site.p2p.", 5, 1, 60, &long_name())]),
            "malformed",
            "a CNAME target of four 63-byte labels: 257 bytes",
        ),
        invalid("no-bytes", "site.p2p.", &[], "malformed", "an empty value"),
        invalid(
            "one-byte",
            "site.p2p.",
            &[1],
            "malformed",
            "the version byte alone",
        ),
        bad(
            "label-64",
            Raw {
                name: [&[64][..], &[b'a'; 64], &wire("p2p.")].concat(),
                ..site(vec![])
            },
            "malformed",
            "a label length byte of 64 in the record's name",
        ),
        bad(
            "order-then-form",
            site(vec![
                a("www.site.p2p.", [192, 0, 2, 1]),
                a("site.p2p.", [192, 0, 2, 1]),
                rr("site.p2p.", 28, 1, 300, &[0x20, 0x01, 0x0d]),
            ]),
            "not-canonical",
            "the second RR is out of order, the third malformed: front to back, order first",
        ),
        invalid(
            "too-large",
            "site.p2p.",
            &{
                let mut big = Raw::new(
                    "site.p2p.",
                    vec![rr("site.p2p.", 65_280, 1, 300, &[0; 880])],
                );
                big.seq = 4;
                big.signed(&key)
            },
            "too-large",
            "1025 octets",
        ),
    ]
}

/// The order of the Ed25519 group (RFC 8032 section 5.1), little-endian.
const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// Signatures that a loose Ed25519 check accepts and section 4 refuses.
fn weak_keys() -> Vec<Value> {
    // The identity point, of small order: R = that point and S = 0 verify for any message
    // under the cofactorless equation unless small-order keys are refused.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let forged: [u8; 64] = [identity, [0; 32]].concat().try_into().expect("64 octets");
    let weak_name = key_name(&identity).to_ascii();
    let human = Raw {
        owner: identity,
        ..Raw::new("site.p2p.", vec![a("site.p2p.", [192, 0, 2, 66])])
    };
    let keyed = Raw {
        owner: identity,
        ..Raw::new(&weak_name, vec![])
    };
    // S + L: the same signature with S not reduced (RFC 8032 section 5.1.7 refuses S >= L).
    let mut malleable = Raw::new("site.p2p.", vec![]).signed(&test_key());
    let s_at = malleable.len() - 32;
    let mut carry = 0u16;
    for (i, l) in GROUP_ORDER.iter().enumerate() {
        let sum = u16::from(malleable[s_at + i]) + u16::from(*l) + carry;
        malleable[s_at + i] = sum.to_le_bytes()[0];
        carry = sum >> 8;
    }
    vec![
        invalid(
            "small-order-key",
            "site.p2p.",
            &human.with_signature(&forged),
            "bad-signature",
            "owner is the identity point (small order), R = it, S = 0",
        ),
        invalid(
            "small-order-key-name",
            &weak_name,
            &keyed.with_signature(&forged),
            "bad-signature",
            "the same forgery for the identity point's own key name",
        ),
        invalid(
            "s-not-reduced",
            "site.p2p.",
            &malleable,
            "bad-signature",
            "a valid signature with L added to S",
        ),
    ]
}

fn dht_keys() -> Vec<Value> {
    let own = key_name(&test_key().public().to_bytes()).to_ascii();
    ["site.p2p.", "xn--bcher-kva.p2p.", "a.p2p.", &own]
        .iter()
        .map(|text| {
            let n = name(text);
            json!({"name": text, "wire": hex::encode(wire_name(&n)),
                   "key": hex::encode(dht_key(&n))})
        })
        .collect()
}

/// Every vector, as the file holds them.
fn vectors() -> Value {
    let key = test_key();
    let records = [valid_records(), bad_form(), bad_content()].concat();
    json!({
        "about": "p2pdns protocol v1 test vectors (docs/PROTOCOL.md section 11). Octets in hex.",
        "test_key": {"seed": SEED, "public": hex::encode(key.public().to_bytes()),
                     "key_name": key_name(&key.public().to_bytes()).to_ascii()},
        "now": NOW,
        "dht_keys": dht_keys(),
        "records": records,
    })
}

/// The verdict a node gives `bytes` looked up as `lookup` at [`NOW`].
fn verdict(lookup: &str, bytes: &[u8]) -> String {
    let checked = NameRecord::from_bytes(bytes).and_then(|record| {
        record.verify(NOW)?;
        if record.name != name(lookup) {
            return Err(RecordError::OtherName(record.name.to_ascii()));
        }
        Ok(())
    });
    checked.map_or_else(|e| e.code().to_string(), |()| "valid".to_string())
}

#[test]
fn the_published_vectors_are_what_this_code_builds_and_judges() {
    let built = vectors();
    let text = serde_json::to_string_pretty(&built).expect("json") + "\n";
    let path = format!("{}/{FILE}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("P2PDNS_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &text).expect("write the vectors");
    }
    let file = std::fs::read_to_string(&path).expect("docs/protocol-vectors.json is there");
    assert!(
        file == text,
        "{FILE} is stale: run with P2PDNS_WRITE_VECTORS=1"
    );
    let records = built["records"].as_array().expect("array");
    assert!(records.len() > 30, "{}", records.len());
    for vector in records {
        let bytes = hex::decode(vector["record"].as_str().expect("hex")).expect("hex");
        let lookup = vector["lookup"].as_str().expect("name");
        assert_eq!(
            verdict(lookup, &bytes),
            vector["verdict"].as_str().expect("verdict"),
            "vector {}: {}",
            vector["id"],
            vector["note"]
        );
    }
}

#[test]
fn the_largest_vector_is_exactly_the_limit() {
    let built = vectors();
    let size = |id: &str| {
        let records = built["records"].as_array().expect("array");
        let vector = records.iter().find(|v| v["id"] == id).expect("vector");
        vector["record"].as_str().expect("hex").len() / 2
    };
    assert_eq!(size("largest"), MAX_RECORD_BYTES);
    assert_eq!(size("too-large"), MAX_RECORD_BYTES + 1);
}
