//! Signed name records: the byte layout, signing, and the checks every node applies. The
//! format is specified in `docs/PROTOCOL.md`; keep the two in step.
//!
//! This module owns the record format, DHT names and keys, and their validity rules; it is
//! pure (no I/O, no clock but the `now` it is given or [`unix_now`]) and knows nothing of the
//! DHT, the cache or DNS sockets, which use it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::{
    rr::{DNSClass, LowerName, Name, Record},
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding},
};
use libp2p::identity::ed25519;
use sha2::{Digest, Sha256};

mod content;
pub mod rdata;
#[cfg(test)]
mod vectors;
mod zbase32;

pub use content::{ContentError, tidy};

/// Format version byte.
const VERSION: u8 = 1;
/// Largest encoded record, signature included.
pub const MAX_RECORD_BYTES: usize = 1024;
/// Longest a record may be valid for, counted from now.
const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Clock difference tolerated between publisher and checker.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Largest TTL of a resource record inside a name record, in seconds.
pub const MAX_RR_TTL: u32 = 86_400;
/// The TLD of names in the DHT.
pub const TLD: &str = "p2p";
/// The label of the reserved name `p2pdns.p2p.` (docs/PROTOCOL.md section 1).
pub const RESERVED_LABEL: &str = "p2pdns";
/// Prefix of the signed bytes: a record's signature can never be valid for anything else.
const SIGNING_CONTEXT: &[u8] = b"p2pdns-record-v1\0";
/// Prefix of the hashed name that gives the DHT key.
const KEY_CONTEXT: &[u8] = b"p2pdns-name-v1\0";
/// Namespace in front of the hash in a DHT key (docs/PROTOCOL.md section 2): stock go-, js-
/// and rust-libp2p Kademlia route `/namespace/...` keys to a per-namespace validator.
pub const KEY_NAMESPACE: &[u8] = b"/p2pdns/";
/// Length of a key name's label: 32 bytes of Ed25519 public key in z-base-32.
const KEY_LABEL_LEN: usize = 52;

/// Why a record is refused; the checks are those of `docs/PROTOCOL.md` section 5.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The encoded record (the size given, in bytes) is over [`MAX_RECORD_BYTES`], when
    /// signing or decoding; `usize::MAX` for more than 65535 resource records.
    #[error("record is {0} bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
    /// The bytes do not decode (empty, too short, a name or resource record cut short, RDATA
    /// without the form of its type, trailing bytes); or a resource record could not be
    /// encoded for signing.
    #[error("record is malformed: {0}")]
    Malformed(String),
    /// The record decodes but is not the one encoding section 3.1 allows: a compressed or
    /// upper-case name, resource records out of canonical order, or duplicates.
    #[error("record is not in canonical form: {0}")]
    NotCanonical(String),
    /// The version byte is not 1 (the byte found).
    #[error("unsupported record version {0}")]
    Version(u8),
    /// The name (as given) is not one lower-case LDH label under `.p2p` (section 1).
    #[error("{0} is not a DHT name (one label under .{TLD})")]
    BadName(String),
    /// The name is a key name, but of another key than the record's owner.
    #[error("key name {0} belongs to another key")]
    WrongKey(String),
    /// A resource record has a refused type (not a data type of RFC 6895, or NS, SOA, SIG,
    /// NXT, A6, OPT, RRSIG: [`rdata::allowed_type`]), a class other than IN, a TTL over [`MAX_RR_TTL`] seconds, or an owner outside the
    /// record's name.
    #[error("resource record {record} is not allowed in a name record: {why}")]
    BadResourceRecord {
        /// The resource record as name, type and TTL: `www.site.p2p. A 300`.
        record: String,
        /// The rule it breaks, with the limit: `its TTL is over the maximum of 86400 s`.
        why: String,
    },
    /// `expires` is not after `now`.
    #[error("record expired")]
    Expired,
    /// `expires` is more than 7 days and 1 hour (clock skew) after `now`.
    #[error("record expires too far in the future")]
    TooLong,
    /// The owner is not a valid Ed25519 key, or the signature does not verify with it.
    #[error("signature does not verify")]
    BadSignature,
    /// A valid record came back for another name (the one given) than the one looked up.
    #[error("record is for {0}, not the name looked up")]
    OtherName(String),
}

impl RecordError {
    /// The verdict's stable name used by the test vectors of docs/PROTOCOL.md section 11:
    /// `too-large`, `malformed`, `not-canonical`, `version`, `bad-name`, `wrong-key`,
    /// `bad-rr`, `expired`, `too-long`, `bad-signature`, `other-name`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too-large",
            Self::Malformed(_) => "malformed",
            Self::NotCanonical(_) => "not-canonical",
            Self::Version(_) => "version",
            Self::BadName(_) => "bad-name",
            Self::WrongKey(_) => "wrong-key",
            Self::BadResourceRecord { .. } => "bad-rr",
            Self::Expired => "expired",
            Self::TooLong => "too-long",
            Self::BadSignature => "bad-signature",
            Self::OtherName(_) => "other-name",
        }
    }
}

/// A name record: the DNS records one owner publishes under one name.
#[derive(Debug, Clone, PartialEq)]
pub struct NameRecord {
    /// The name, lower case, fully qualified: `site.p2p.`.
    pub name: Name,
    /// The owner's Ed25519 public key.
    pub owner: [u8; 32],
    /// Higher replaces lower.
    pub seq: u64,
    /// Unix seconds after which the record is void.
    pub expires: u64,
    /// DNS records at the name or below it, in canonical order (section 3.1).
    pub records: Vec<Record>,
    /// Ed25519 signature by `owner` over the context prefix and every byte before it
    /// (`docs/PROTOCOL.md` section 4).
    pub signature: [u8; 64],
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The DHT key a name's records are stored under (section 2): `/p2pdns/` and the 32 octets
/// of SHA-256 over the context and the name in wire form, 40 octets in all.
pub fn dht_key(name: &Name) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(KEY_CONTEXT);
    hasher.update(wire_name(name));
    let mut key = KEY_NAMESPACE.to_vec();
    key.extend_from_slice(&hasher.finalize());
    key
}

/// The key name (`<z-base-32 key>.p2p.`) of a public key.
pub fn key_name(owner: &[u8; 32]) -> Name {
    Name::from_ascii(format!("{}.{TLD}.", zbase32::encode(owner)))
        .expect("52 z-base-32 characters and a TLD make a valid name")
}

/// The public key a key name stands for, if `name` is one.
pub fn key_of_name(name: &Name) -> Option<[u8; 32]> {
    let label = name.iter().next()?;
    if label.len() != KEY_LABEL_LEN {
        return None;
    }
    let text = std::str::from_utf8(label).ok()?;
    zbase32::decode(text, 32)?.try_into().ok()
}

/// Turns what a user types (`site`, `site.p2p`, `WWW.Site.P2P.`) into a fully qualified,
/// lower-case name under the DHT TLD (`site.p2p.`); `.p2p` is added when left out.
///
/// # Errors
/// The text is not a domain name (an empty label, a label over 63 bytes...).
pub fn p2p_name(text: &str) -> Result<Name, hickory_proto::ProtoError> {
    let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let full = if text == TLD || text.ends_with(&format!(".{TLD}")) {
        format!("{text}.")
    } else {
        format!("{text}.{TLD}.")
    };
    if full.is_ascii() && !full.contains("xn--") {
        return Name::from_ascii(full);
    }
    // Internationalized names become A-labels by IDNA (UTS 46, as browsers do), and A-labels
    // given as such must decode: `bücher` is `xn--bcher-kva`, `xn--a` is refused.
    Name::from_utf8(full)
}

/// Checks that `name` is one lower-case LDH label under the DHT TLD.
pub fn check_name(name: &Name) -> Result<(), RecordError> {
    let bad = || RecordError::BadName(name.to_ascii());
    let labels: Vec<&[u8]> = name.iter().collect();
    if !name.is_fqdn() || labels.len() != 2 || labels[1] != TLD.as_bytes() {
        return Err(bad());
    }
    let label = labels[0];
    let ldh = label
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if label.is_empty() || !ldh || label[0] == b'-' || label[label.len() - 1] == b'-' {
        return Err(bad());
    }
    // A label of a key name's length is a key name or nothing: a look-alike (spare bits set,
    // a letter outside z-base-32) would pass for another key's name (section 1).
    if label.len() == KEY_LABEL_LEN && key_of_name(name).is_none() {
        return Err(bad());
    }
    Ok(())
}

/// The owner name of the record set that serves `name`: `www.site.p2p.` → `site.p2p.`.
pub fn record_name_for(name: &LowerName) -> Option<Name> {
    let name = Name::from(name);
    let labels = name.num_labels();
    if labels < 2 {
        return None;
    }
    Some(name.trim_to(2))
}

/// An encoder for the canonical form (RFC 4034 section 6.2): names uncompressed and in lower
/// case, also inside RDATA of the standard types.
fn canonical_encoder(buf: &mut Vec<u8>) -> BinEncoder<'_> {
    let mut encoder = BinEncoder::new(buf);
    encoder.set_canonical_form(true);
    encoder.set_name_encoding(NameEncoding::UncompressedLowercase);
    encoder
}

fn wire_name(name: &Name) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    name.emit(&mut canonical_encoder(&mut buf))
        .expect("a valid name encodes");
    buf
}

impl NameRecord {
    /// Builds and signs a record; `records` are put in canonical order (section 3.1).
    ///
    /// # Errors
    /// [`RecordError::TooLarge`] over 1024 octets; [`RecordError::Malformed`] or
    /// [`RecordError::NotCanonical`] for a resource record without the form of its type, or
    /// duplicates (drop them first: `tidy` does).
    pub fn sign(
        keypair: &ed25519::Keypair,
        name: &Name,
        seq: u64,
        expires: u64,
        records: Vec<Record>,
    ) -> Result<Self, RecordError> {
        let (records, _) = rdata::canonical(&records)?;
        let mut record = Self {
            name: name.to_lowercase(),
            owner: keypair.public().to_bytes(),
            seq,
            expires,
            records,
            signature: [0; 64],
        };
        let unsigned = record.unsigned_bytes()?;
        let signature = keypair.sign(&signing_input(&unsigned));
        record.signature = signature
            .try_into()
            .expect("Ed25519 signatures are 64 bytes");
        let len = unsigned.len() + 64;
        if len > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(len));
        }
        Ok(record)
    }

    /// The bytes that are signed: everything but the signature.
    fn unsigned_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let mut buf = Vec::with_capacity(512);
        buf.push(VERSION);
        buf.extend_from_slice(&wire_name(&self.name));
        buf.extend_from_slice(&self.owner);
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.expires.to_be_bytes());
        let count =
            u16::try_from(self.records.len()).map_err(|_| RecordError::TooLarge(usize::MAX))?;
        buf.extend_from_slice(&count.to_be_bytes());
        let mut records = Vec::with_capacity(256);
        let mut encoder = canonical_encoder(&mut records);
        for record in &self.records {
            record.emit(&mut encoder).map_err(|e| match e {
                // The encoder's own bound (64 KiB): far over the record limit, which is what
                // the publisher of a zone of thousands of records needs to hear.
                hickory_proto::ProtoError::MaxBufferSizeExceeded(max) => {
                    RecordError::TooLarge(max + 1)
                }
                e => RecordError::Malformed(e.to_string()),
            })?;
        }
        buf.extend_from_slice(&records);
        Ok(buf)
    }

    /// The encoded record, as stored in the DHT.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self
            .unsigned_bytes()
            .expect("a record that was signed or decoded encodes again");
        bytes.extend_from_slice(&self.signature);
        bytes
    }

    /// Decodes a record without checking what [`NameRecord::verify`] checks next: rule 1 of
    /// section 5 (size, version, framing, the form of section 3.1).
    ///
    /// # Errors
    /// [`RecordError::TooLarge`], [`RecordError::Version`], [`RecordError::Malformed`],
    /// [`RecordError::NotCanonical`], in that order of checking.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let Some((&version, _)) = bytes.split_first() else {
            return Err(RecordError::Malformed("empty".into()));
        };
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        if bytes.len() < 1 + 1 + 32 + 8 + 8 + 2 + 64 {
            return Err(RecordError::Malformed("too short".into()));
        }
        let (body, signature) = bytes.split_at(bytes.len() - 64);
        let mut at = 1;
        rdata::read_name(body, &mut at)?;
        let name = Name::read(&mut BinDecoder::new(&body[1..at]))
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        let fixed = body
            .get(at..at + 50)
            .ok_or_else(|| RecordError::Malformed("too short".into()))?;
        at += 50;
        let owner: [u8; 32] = fixed[..32].try_into().expect("32 octets");
        let seq = u64::from_be_bytes(fixed[32..40].try_into().expect("8 octets"));
        let expires = u64::from_be_bytes(fixed[40..48].try_into().expect("8 octets"));
        let count = u16::from_be_bytes([fixed[48], fixed[49]]);
        let mut raw: Vec<rdata::Rr<'_>> = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let rr = rdata::read(body, &mut at)?;
            // Front to back (section 5, rule 1): a record out of order is the fault found
            // before a malformed one after it.
            if let Some(previous) = raw.last() {
                rdata::check_order([previous, &rr])?;
            }
            raw.push(rr);
        }
        if at != body.len() {
            return Err(RecordError::Malformed("trailing bytes".into()));
        }
        let records = raw
            .into_iter()
            .map(rdata::Rr::to_record)
            .collect::<Result<_, _>>()?;
        let record = Self {
            name,
            owner,
            seq,
            expires,
            records,
            signature: signature.try_into().expect("split off 64 bytes"),
        };
        // What was read must be what we would encode; the checks above make it so.
        if record.unsigned_bytes()? != body {
            return Err(RecordError::Malformed(
                "does not encode back to itself".into(),
            ));
        }
        Ok(record)
    }

    /// Checks everything a node checks before storing or using a record, at time `now`.
    pub fn verify(&self, now: u64) -> Result<(), RecordError> {
        check_name(&self.name)?;
        if let Some(key) = key_of_name(&self.name)
            && key != self.owner
        {
            return Err(RecordError::WrongKey(self.name.to_ascii()));
        }
        for record in &self.records {
            if let Some(why) = self.refusal(record) {
                return Err(RecordError::BadResourceRecord {
                    record: format!("{} {} {}", record.name, record.record_type(), record.ttl),
                    why,
                });
            }
        }
        if self.expires <= now {
            return Err(RecordError::Expired);
        }
        let horizon = now + (MAX_LIFETIME + CLOCK_SKEW).as_secs();
        if self.expires > horizon {
            return Err(RecordError::TooLong);
        }
        let unsigned = self.unsigned_bytes()?;
        if !verify_strict(&self.owner, &signing_input(&unsigned), &self.signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }

    /// Why `record` may not stand in this name record (section 5, rule 3), if it may not.
    fn refusal(&self, record: &Record) -> Option<String> {
        let rtype = record.record_type();
        if !rdata::allowed_type(rtype.into()) {
            Some(format!("type {rtype} is not allowed"))
        } else if record.dns_class != DNSClass::IN {
            Some(format!("its class is {}, not IN", record.dns_class))
        } else if record.ttl > MAX_RR_TTL {
            Some(format!("its TTL is over the maximum of {MAX_RR_TTL} s"))
        } else if !self.name.zone_of(&record.name) {
            Some(format!("its owner is outside {}", self.name))
        } else {
            None
        }
    }

    /// Whether this record wins over `other`, a record of the same owner and name, when a
    /// resolver chooses among replicas (docs/PROTOCOL.md section 6): the higher `seq`, then
    /// the later `expires`, then the lower encoding byte for byte. Two replicas with one
    /// `seq` can differ, since a storage node keeps the first it was given.
    pub fn is_newer_than(&self, other: &Self) -> bool {
        (self.seq, self.expires)
            .cmp(&(other.seq, other.expires))
            .then_with(|| other.to_bytes().cmp(&self.to_bytes()))
            .is_gt()
    }

    /// The owner's key name.
    pub fn owner_name(&self) -> Name {
        key_name(&self.owner)
    }
}

/// Ed25519 verification as docs/PROTOCOL.md section 4 fixes it, so that every implementation
/// gives the same verdict: the key a canonical encoding of a point that is not of small
/// order, S below the group order, R not of small order, and the cofactorless equation
/// compared as encodings (ed25519-dalek's `verify_strict`, libsodium's
/// `crypto_sign_verify_detached`). A looser check lets anyone sign for the eight small-order
/// keys, whose key names could then be taken.
fn verify_strict(owner: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(owner) else {
        return false;
    };
    if key.is_weak() || key.to_edwards().compress().to_bytes() != *owner {
        return false;
    }
    let signature = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &signature).is_ok()
}

fn signing_input(unsigned: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(SIGNING_CONTEXT.len() + unsigned.len());
    input.extend_from_slice(SIGNING_CONTEXT);
    input.extend_from_slice(unsigned);
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RData;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn a(name: &str, ip: &str) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            300,
            RData::A(ip.parse().unwrap()),
        )
    }

    fn signed(kp: &ed25519::Keypair, name: &str, seq: u64) -> NameRecord {
        let expires = unix_now() + 3600;
        NameRecord::sign(
            kp,
            &Name::from_ascii(name).unwrap(),
            seq,
            expires,
            vec![a(name, "192.0.2.1"), a(&format!("www.{name}"), "192.0.2.2")],
        )
        .unwrap()
    }

    #[test]
    fn internationalized_names_become_a_labels_and_bad_a_labels_are_refused() {
        let name = |text: &str| p2p_name(text).map(|n| n.to_ascii());
        assert_eq!(name("bücher").unwrap(), "xn--bcher-kva.p2p.");
        assert_eq!(name("Bücher.p2p").unwrap(), "xn--bcher-kva.p2p.");
        assert_eq!(name("xn--bcher-kva").unwrap(), "xn--bcher-kva.p2p.");
        assert_eq!(name("Site").unwrap(), "site.p2p.");
        for bad in ["xn--a", "xn--bcher-kva-", "xn--ab-cd-\u{e9}"] {
            assert!(name(bad).is_err(), "{bad}: {:?}", name(bad));
        }
    }

    /// Thousands of records (a zone file) are over the limit, and said so: the encoder's own
    /// 64 KiB bound gave "record is malformed: maximum buffer size exceeded".
    #[test]
    fn a_huge_record_set_is_too_large_not_malformed() {
        let kp = ed25519::Keypair::generate();
        let records = (0..3000u32)
            .map(|i| {
                a(
                    "site.p2p.",
                    &std::net::Ipv4Addr::from(0xc000_0000 + i).to_string(),
                )
            })
            .collect();
        let name = Name::from_ascii("site.p2p.").unwrap();
        let signed = NameRecord::sign(&kp, &name, 1, unix_now() + 60, records);
        assert!(
            matches!(signed, Err(RecordError::TooLarge(_))),
            "{signed:?}"
        );
    }

    #[test]
    fn round_trip_and_verify() {
        let kp = ed25519::Keypair::generate();
        let record = signed(&kp, "site.p2p.", 7);
        let bytes = record.to_bytes();
        assert!(bytes.len() < 300, "{} bytes", bytes.len());
        let decoded = NameRecord::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, record);
        decoded.verify(unix_now()).unwrap();
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let kp = ed25519::Keypair::generate();
        let record = signed(&kp, "site.p2p.", 1);
        let mut bumped = record.clone();
        bumped.seq = 2;
        assert_eq!(bumped.verify(unix_now()), Err(RecordError::BadSignature));
        let other = ed25519::Keypair::generate();
        let mut stolen = record.clone();
        stolen.owner = other.public().to_bytes();
        assert_eq!(stolen.verify(unix_now()), Err(RecordError::BadSignature));
        let mut bytes = record.to_bytes();
        let last = bytes.len() - 70;
        bytes[last] ^= 1;
        let result = NameRecord::from_bytes(&bytes).and_then(|r| r.verify(unix_now()));
        assert!(result.is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let kp = ed25519::Keypair::generate();
        let name = Name::from_ascii("big.p2p.").unwrap();
        let many = (0..80)
            .map(|i| a("big.p2p.", &format!("192.0.2.{i}")))
            .collect();
        assert!(matches!(
            NameRecord::sign(&kp, &name, 1, unix_now() + 60, many),
            Err(RecordError::TooLarge(_))
        ));
        let expired = NameRecord::sign(&kp, &name, 1, unix_now() - 1, vec![]).unwrap();
        assert_eq!(expired.verify(unix_now()), Err(RecordError::Expired));
        let far = unix_now() + MAX_LIFETIME.as_secs() * 2;
        let forever = NameRecord::sign(&kp, &name, 1, far, vec![]).unwrap();
        assert_eq!(forever.verify(unix_now()), Err(RecordError::TooLong));
        let outside = NameRecord::sign(
            &kp,
            &name,
            1,
            unix_now() + 60,
            vec![a("x.com.", "192.0.2.1")],
        )
        .unwrap();
        assert_eq!(
            outside.verify(unix_now()).unwrap_err().to_string(),
            "resource record x.com. A 300 is not allowed in a name record: \
             its owner is outside big.p2p."
        );
        let mut long = a("big.p2p.", "192.0.2.1");
        long.ttl = MAX_RR_TTL + 1;
        let long = NameRecord::sign(&kp, &name, 1, unix_now() + 60, vec![long]).unwrap();
        assert_eq!(
            long.verify(unix_now()).unwrap_err().to_string(),
            "resource record big.p2p. A 86401 is not allowed in a name record: \
             its TTL is over the maximum of 86400 s"
        );
        let mut longest = a("big.p2p.", "192.0.2.1");
        longest.ttl = MAX_RR_TTL;
        NameRecord::sign(&kp, &name, 1, unix_now() + 60, vec![longest])
            .unwrap()
            .verify(unix_now())
            .unwrap();
        for bad in ["a.b.p2p.", "site.com.", "x_y.p2p.", "UPPER.p2p.", "p2p."] {
            let n = Name::from_ascii(bad).unwrap();
            assert!(check_name(&n).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_names_belong_to_their_key() {
        let kp = ed25519::Keypair::generate();
        let name = key_name(&kp.public().to_bytes());
        assert_eq!(key_of_name(&name), Some(kp.public().to_bytes()));
        let own = NameRecord::sign(&kp, &name, 1, unix_now() + 60, vec![]).unwrap();
        own.verify(unix_now()).unwrap();
        let thief = ed25519::Keypair::generate();
        let stolen = NameRecord::sign(&thief, &name, 1, unix_now() + 60, vec![]).unwrap();
        assert!(matches!(
            stolen.verify(unix_now()),
            Err(RecordError::WrongKey(_))
        ));
    }

    #[test]
    fn dht_keys_ignore_case_and_differ_by_name() {
        let a = dht_key(&Name::from_ascii("Site.P2P.").unwrap());
        let b = dht_key(&Name::from_ascii("site.p2p.").unwrap());
        let c = dht_key(&Name::from_ascii("other.p2p.").unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 40);
        assert!(a.starts_with(b"/p2pdns/"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
        for len in 0..600 {
            let mut with_version = vec![0u8; len];
            rng.fill(&mut with_version[..]);
            if let Some(first) = with_version.first_mut() {
                *first = VERSION;
            }
            assert!(
                NameRecord::from_bytes(&with_version)
                    .and_then(|r| r.verify(0))
                    .is_err()
            );
        }
    }
}
