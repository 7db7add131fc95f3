//! The resource records inside a name record, read at the octet level (docs/PROTOCOL.md
//! section 3.1): framing, which types are allowed, the form each type's RDATA must have, and
//! the canonical order. Only the types listed in [`layout`] and A, AAAA and TXT have a form;
//! every other allowed type is opaque octets, so validity never depends on which types an
//! implementation models (hickory re-encodes some, such as HTTPS with SvcParams out of order,
//! differently from what it read).
//!
//! The layout table is also what the forwarder uses to find names a sender may compress in
//! upstream answers (`dns::exchange::wire`).

use std::cmp::Ordering;

use hickory_proto::{
    rr::{DNSClass, Name, RData, Record, RecordType, rdata::NULL},
    serialize::binary::{BinDecoder, BinEncodable, Restrict},
};

use super::{RecordError, canonical_encoder};

/// Longest domain name in wire form (RFC 1035 section 2.3.4), in octets.
const MAX_NAME_OCTETS: usize = 255;

/// One field of an RDATA layout, as far as names are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A domain name in wire form.
    Name,
    /// This many octets.
    Octets(usize),
    /// A `<character-string>`: a length octet and that many octets (RFC 1035 section 3.3).
    Text,
    /// Whatever is left of the RDATA (possibly nothing).
    Rest,
}

/// The layout of the RDATA of the types that hold domain names: those of RFC 3597 section 4,
/// KX (RFC 2230) and DNAME (RFC 6672). This is the list of RFC 4034 section 6.2 as RFC 6840
/// section 5.1 corrects it (NSEC out), without A6 (historic, RFC 6563, refused in records) and
/// HINFO (it holds no name). `None` for every other type.
pub fn layout(rtype: RecordType) -> Option<&'static [Field]> {
    use Field::{Name, Octets, Rest, Text};
    Some(match u16::from(rtype) {
        // NS, MD, MF, CNAME, MB, MG, MR, PTR, DNAME
        2 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 39 => &[Name],
        // SOA: MNAME, RNAME, then SERIAL, REFRESH, RETRY, EXPIRE, MINIMUM
        6 => &[Name, Name, Octets(20)],
        // MINFO, RP
        14 | 17 => &[Name, Name],
        // MX, AFSDB, RT, KX: a 16-bit preference or subtype, then a host
        15 | 18 | 21 | 36 => &[Octets(2), Name],
        // SIG (RFC 2535): 18 octets of fields, the signer's name, the signature
        24 => &[Octets(18), Name, Rest],
        // PX: preference, MAP822, MAPX400
        26 => &[Octets(2), Name, Name],
        // NXT: next name, type bitmap
        30 => &[Name, Rest],
        // SRV: priority, weight, port, target
        33 => &[Octets(6), Name],
        // NAPTR: order, preference, flags, services, regexp, replacement
        35 => &[Octets(4), Text, Text, Text, Name],
        _ => return None,
    })
}

/// Whether a name record may hold resource records of type `rtype` (section 3.1): data TYPEs
/// of RFC 6895 section 3.1 (1–127, 256–61439, private use 65280–65534) other than those that
/// belong to a zone's delegation or signatures (NS, SOA, SIG, NXT, RRSIG), A6 (historic) and
/// OPT (a pseudo-record).
pub fn allowed_type(rtype: u16) -> bool {
    let data_type = matches!(rtype, 1..=127 | 256..=61_439 | 65_280..=65_534);
    data_type && !matches!(rtype, 2 | 6 | 24 | 30 | 38 | 41 | 46)
}

/// One resource record of a name record, as octets: every field borrowed from the record.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rr<'a> {
    /// The owner name in wire form, lower case, uncompressed.
    owner: &'a [u8],
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: &'a [u8],
}

/// Reads the resource record at `*at` of `bytes` and moves past it, checking its form
/// (section 3.1): owner and RDATA names uncompressed and in lower case, RDATA of the types
/// with a form filled exactly by it.
///
/// # Errors
/// [`RecordError::Malformed`] for a record cut short or RDATA of the wrong shape,
/// [`RecordError::NotCanonical`] for a compressed or upper-case name.
pub(super) fn read<'a>(bytes: &'a [u8], at: &mut usize) -> Result<Rr<'a>, RecordError> {
    let start = *at;
    read_name(bytes, at)?;
    let owner = &bytes[start..*at];
    let fixed = take(bytes, at, 10).ok_or_else(|| malformed("resource record cut short"))?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let class = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let rdata = take(bytes, at, rdlength).ok_or_else(|| malformed("RDATA cut short"))?;
    check_form(RecordType::from(rtype), rdata)?;
    Ok(Rr {
        owner,
        rtype,
        class,
        ttl,
        rdata,
    })
}

/// The next `n` octets at `*at`, moving past them.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let taken = bytes.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(taken)
}

fn malformed(why: &str) -> RecordError {
    RecordError::Malformed(why.into())
}

/// Reads a domain name at `*at` and moves past it: labels of 1 to 63 octets ending with the
/// root label, at most 255 octets in all, no compression pointer and no upper-case ASCII
/// letter (section 3.1).
pub(super) fn read_name(bytes: &[u8], at: &mut usize) -> Result<(), RecordError> {
    let start = *at;
    loop {
        let len = *bytes.get(*at).ok_or_else(|| malformed("name cut short"))?;
        if len >= 0xC0 {
            return Err(RecordError::NotCanonical("a name is compressed".into()));
        }
        if len > 63 {
            return Err(malformed("a label is over 63 octets"));
        }
        *at += 1;
        let label = take(bytes, at, usize::from(len)).ok_or_else(|| malformed("name cut short"))?;
        if *at - start > MAX_NAME_OCTETS {
            return Err(malformed("a name is over 255 octets"));
        }
        if label.iter().any(u8::is_ascii_uppercase) {
            return Err(RecordError::NotCanonical(
                "a name has upper-case letters".into(),
            ));
        }
        if len == 0 {
            return Ok(());
        }
    }
}

/// The form rules of section 3.1 for the RDATA of `rtype` (the publisher checks RDATA given
/// as generic `\#` data with them: a record must never parse and then fail to sign).
///
/// # Errors
/// [`RecordError::Malformed`] for RDATA of the wrong shape, [`RecordError::NotCanonical`] for
/// a compressed or upper-case name in it.
pub fn check_form(rtype: RecordType, rdata: &[u8]) -> Result<(), RecordError> {
    let wrong = || RecordError::Malformed(format!("{rtype} RDATA has the wrong form"));
    let fields: &[Field] = match rtype {
        RecordType::A if rdata.len() == 4 => return Ok(()),
        RecordType::AAAA if rdata.len() == 16 => return Ok(()),
        RecordType::A | RecordType::AAAA => return Err(wrong()),
        // RFC 1035 section 3.3.14: one or more <character-string>s.
        RecordType::TXT if rdata.is_empty() => return Err(wrong()),
        RecordType::TXT => &[Field::Text; 1],
        _ => match layout(rtype) {
            Some(fields) => fields,
            None => return Ok(()),
        },
    };
    let mut at = 0;
    for field in fields {
        match field {
            Field::Name => read_name(rdata, &mut at).map_err(|e| match e {
                RecordError::Malformed(_) => wrong(),
                other => other,
            })?,
            Field::Octets(n) => {
                take(rdata, &mut at, *n).ok_or_else(wrong)?;
            }
            Field::Text => {
                let len = *rdata.get(at).ok_or_else(wrong)?;
                take(rdata, &mut at, 1 + usize::from(len)).ok_or_else(wrong)?;
            }
            Field::Rest => at = rdata.len(),
        }
    }
    // TXT repeats its one field until the RDATA ends.
    while rtype == RecordType::TXT && at < rdata.len() {
        let len = rdata[at];
        take(rdata, &mut at, 1 + usize::from(len)).ok_or_else(wrong)?;
    }
    if at == rdata.len() {
        Ok(())
    } else {
        Err(wrong())
    }
}

impl Rr<'_> {
    /// The canonical order of section 3.1: by owner name in the canonical order of RFC 4034
    /// section 6.1, then by TYPE, then by RDATA as a left-justified octet string (RFC 4034
    /// section 6.3). Class and TTL do not take part: two records that differ only there are
    /// duplicates.
    pub(super) fn canonical_cmp(&self, other: &Self) -> Ordering {
        compare_names(self.owner, other.owner)
            .then(self.rtype.cmp(&other.rtype))
            .then_with(|| self.rdata.cmp(other.rdata))
    }

    /// The record as hickory models it: typed RDATA when hickory encodes it back to exactly
    /// these octets, otherwise the octets as they are (RFC 3597), so that what is served is
    /// what was signed.
    ///
    /// # Errors
    /// [`RecordError::Malformed`] if hickory cannot read the owner name (it was checked, so
    /// this does not happen for a record that [`read`] returned).
    pub(super) fn to_record(self) -> Result<Record, RecordError> {
        let name = Name::from_labels(labels(self.owner)).map_err(|e| malformed(&e.to_string()))?;
        let rtype = RecordType::from(self.rtype);
        let data = typed(rtype, self.rdata).unwrap_or_else(|| RData::Unknown {
            code: rtype,
            rdata: if self.rdata.is_empty() {
                NULL::new()
            } else {
                NULL::with(self.rdata.to_vec())
            },
        });
        let mut record = Record::from_rdata(name, self.ttl, data);
        record.dns_class = DNSClass::from(self.class);
        Ok(record)
    }
}

/// The labels of a wire-form name that [`read_name`] accepted, root label left out.
fn labels(mut name: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(4);
    while let Some((&len, rest)) = name.split_first() {
        if len == 0 {
            break;
        }
        let (label, rest) = rest.split_at(usize::from(len));
        out.push(label);
        name = rest;
    }
    out
}

/// RFC 4034 section 6.1: names compare label by label from the most significant (rightmost)
/// label, each label as an octet string (both are lower case already); a name sorts before
/// the names below it.
fn compare_names(a: &[u8], b: &[u8]) -> Ordering {
    let (a, b) = (labels(a), labels(b));
    a.iter().rev().cmp(b.iter().rev())
}

/// `rdata` decoded by hickory as `rtype`, if hickory encodes it back to the same octets.
fn typed(rtype: RecordType, rdata: &[u8]) -> Option<RData> {
    let length = u16::try_from(rdata.len()).ok()?;
    let data = RData::read(&mut BinDecoder::new(rdata), rtype, Restrict::new(length)).ok()?;
    let mut again = Vec::with_capacity(rdata.len());
    data.emit(&mut canonical_encoder(&mut again)).ok()?;
    (again == rdata).then_some(data)
}

/// Encodes `records` in canonical form and order (section 3.1) and returns them as a decoder
/// would give them back, with their octets.
///
/// # Errors
/// [`RecordError::Malformed`] or [`RecordError::NotCanonical`] if a record does not have the
/// form of its type (a name with a label of upper-case octets given as unknown RDATA, an A
/// record of 3 octets) or two records are duplicates.
pub(super) fn canonical(records: &[Record]) -> Result<(Vec<Record>, Vec<u8>), RecordError> {
    let mut encoded = Vec::with_capacity(records.len());
    for record in records {
        let mut buf = Vec::with_capacity(64);
        record
            .emit(&mut canonical_encoder(&mut buf))
            .map_err(|e| malformed(&e.to_string()))?;
        encoded.push(buf);
    }
    for buf in &mut encoded {
        fold_case(buf);
    }
    let mut parsed = Vec::with_capacity(encoded.len());
    for buf in &encoded {
        let mut at = 0;
        parsed.push((read(buf, &mut at)?, buf.as_slice()));
    }
    parsed.sort_by(|a, b| a.0.canonical_cmp(&b.0));
    check_order(parsed.iter().map(|(rr, _)| rr))?;
    let mut bytes = Vec::with_capacity(encoded.iter().map(Vec::len).sum());
    let mut out = Vec::with_capacity(parsed.len());
    for (rr, buf) in parsed {
        bytes.extend_from_slice(buf);
        out.push(rr.to_record()?);
    }
    Ok((out, bytes))
}

/// Lower-cases, in place, the ASCII letters of the names inside the RDATA of the encoded
/// resource record `rr` (the types of [`layout`]); hickory's canonical encoder does so only
/// for the types it models. What is not well formed is left for [`read`] to refuse.
fn fold_case(rr: &mut [u8]) {
    let mut at = 0;
    if read_name(rr, &mut at).is_err() || rr.len() < at + 10 {
        return;
    }
    let rtype = RecordType::from(u16::from_be_bytes([rr[at], rr[at + 1]]));
    at += 10;
    let Some(fields) = layout(rtype) else { return };
    for field in fields {
        match field {
            Field::Name => {
                while let Some(&len) = rr.get(at) {
                    let end = at + 1 + usize::from(len);
                    if len == 0 || len > 63 || end > rr.len() {
                        at += 1;
                        break;
                    }
                    rr[at + 1..end].make_ascii_lowercase();
                    at = end;
                }
            }
            Field::Octets(n) => at += n,
            Field::Text => at += 1 + rr.get(at).map_or(0, |&len| usize::from(len)),
            Field::Rest => return,
        }
    }
}

/// Checks that `records` are in strictly increasing canonical order: sorted, no duplicates.
///
/// # Errors
/// [`RecordError::NotCanonical`] naming the first pair out of order or duplicated.
pub(super) fn check_order<'a, 'b: 'a>(
    records: impl IntoIterator<Item = &'a Rr<'b>>,
) -> Result<(), RecordError> {
    let mut previous: Option<&Rr<'_>> = None;
    for rr in records {
        if let Some(previous) = previous {
            match previous.canonical_cmp(rr) {
                Ordering::Less => {}
                Ordering::Equal => {
                    return Err(RecordError::NotCanonical(
                        "two resource records are duplicates".into(),
                    ));
                }
                Ordering::Greater => {
                    return Err(RecordError::NotCanonical(
                        "resource records are not in canonical order".into(),
                    ));
                }
            }
        }
        previous = Some(rr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::NULL;

    fn unknown(rtype: u16, rdata: &[u8]) -> Record {
        let name = Name::from_ascii("site.p2p.").expect("name");
        let data = RData::Unknown {
            code: RecordType::from(rtype),
            rdata: NULL::with(rdata.to_vec()),
        };
        Record::from_rdata(name, 300, data)
    }

    #[test]
    fn names_inside_rdata_of_the_listed_types_are_lower_cased_before_signing() {
        // RP and KX, which hickory does not model: a publisher lower-cases them anyway.
        let rp = unknown(17, b"\x05Admin\x04SITE\x03p2p\x00\x00");
        let kx = unknown(36, b"\x00\x0a\x02KX\x04site\x03p2p\x00");
        let (records, bytes) = canonical(&[rp, kx]).expect("canonical");
        assert_eq!(records.len(), 2);
        assert!(!bytes.iter().any(u8::is_ascii_uppercase), "{bytes:?}");
        // An opaque type keeps its octets as given.
        let (_, bytes) = canonical(&[unknown(65_280, b"ABC")]).expect("opaque");
        assert!(bytes.ends_with(b"ABC"));
        // A compressed name cannot be made canonical.
        let compressed = unknown(15, b"\x00\x0a\xc0\x0c");
        assert!(matches!(
            canonical(&[compressed]),
            Err(RecordError::NotCanonical(_))
        ));
    }

    #[test]
    fn canonical_order_follows_rfc_4034() {
        let order = |a: &[u8], b: &[u8]| compare_names(a, b);
        // RFC 4034 section 6.1's example, in order.
        let names: Vec<Vec<u8>> = [
            "example.",
            "a.example.",
            "yljkjljk.a.example.",
            "z.a.example.",
            "zabc.a.example.",
            "z.example.",
            "\u{1}.z.example.",
            "*.z.example.",
        ]
        .iter()
        .map(|text| super::super::vectors::wire(text))
        .collect();
        for pair in names.windows(2) {
            assert_eq!(order(&pair[0], &pair[1]), Ordering::Less, "{pair:?}");
        }
        assert!(allowed_type(1) && allowed_type(65) && allowed_type(65_280));
        for refused in [0, 2, 6, 24, 30, 38, 41, 46, 128, 250, 255, 61_440, 65_535] {
            assert!(!allowed_type(refused), "{refused}");
        }
    }
}
