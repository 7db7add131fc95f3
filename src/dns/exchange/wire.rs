//! Lenient decoding of upstream responses at the resource-record framing level (RFC 1035
//! section 4.1, RFC 3597). hickory's `Message::from_vec` refuses any record with empty RDATA
//! outside an UPDATE and re-encodes some typed RDATA differently from the bytes received, so
//! a forwarder built on it either fails answers that other resolvers pass on, or changes
//! them. The rules here:
//!
//! - Every record is framed by hand (owner name, TYPE, CLASS, TTL, RDLENGTH) and its RDATA is
//!   kept as the octets received (`RData::Unknown`, whatever the type), so that it reaches the
//!   client byte for byte, empty or not.
//! - Types whose RDATA holds names (the table of `record::rdata::layout`: those a sender may
//!   compress by RFC 3597 section 4, DNAME for senders that compress it against RFC 6672, and
//!   KX) get those names expanded in place, so the octets stay meaningful outside this message.
//! - The types the daemon reads (A and AAAA for the rebinding filter, CNAME to follow a chain,
//!   SOA for negative caching) are decoded by hickory from the expanded octets, and only when
//!   hickory encodes them back to exactly those octets; otherwise the record is malformed.
//! - What cannot be framed (RDLENGTH past the end, a bad compression pointer, fields that do not
//!   fill RDATA) makes the answer or authority section, and so the response, malformed. In the
//!   additional section, which nothing depends on, it ends the section instead: the records
//!   before it stay (unbound does the same). With TC=1 nothing after the question is required.
//! - An OPT record gives the EDNS header fields (extended RCODE, version, DO); options that do
//!   not parse are dropped. OPT elsewhere than in the additional section is malformed.

use hickory_proto::{
    op::{Edns, Header, Message, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType, rdata::NULL},
    serialize::binary::{
        BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding, Restrict,
    },
};

use crate::record::rdata::{Field, layout};

/// The largest TTL a record may carry (RFC 2181 section 8: 2^31 - 1 seconds).
const MAX_TTL: u32 = i32::MAX as u32;

/// Why a response could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer than the 12 octets of a header.
    #[error("shorter than a DNS header")]
    Header,
    /// The question section runs past the end or holds a bad name.
    #[error("the question section does not parse")]
    Question,
    /// A record of the answer or authority section does not parse.
    #[error("record {index} of the {section} section does not parse")]
    Record {
        /// The section.
        section: Section,
        /// The record's position in it, from 0.
        index: u16,
        /// What is wrong with it.
        #[source]
        fault: Fault,
    },
}

/// A record section of a message (RFC 1035 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The answer section.
    Answer,
    /// The authority section.
    Authority,
    /// The additional section.
    Additional,
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Answer => "answer",
            Self::Authority => "authority",
            Self::Additional => "additional",
        })
    }
}

/// What is wrong with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The owner name is cut off or holds a bad label or compression pointer.
    #[error("bad owner name")]
    OwnerName,
    /// TYPE, CLASS, TTL or RDLENGTH is cut off, or RDLENGTH runs past the end of the message.
    #[error("cut off")]
    CutOff,
    /// A name inside RDATA is bad or runs past RDLENGTH.
    #[error("bad name in RDATA")]
    RdataName,
    /// The type's fields do not fill RDLENGTH exactly.
    #[error("RDATA does not match its RDLENGTH")]
    RdataLength,
    /// An A, AAAA, CNAME or SOA record whose RDATA is not of its type's form.
    #[error("RDATA not of its type's form")]
    RdataForm,
    /// An OPT record outside the additional section, or one not owned by the root.
    #[error("misplaced OPT record")]
    Opt,
}

/// The ID of a message, when it is long enough to have one.
pub fn message_id(wire: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*wire.first()?, *wire.get(1)?]))
}

/// A decoded response.
#[derive(Debug)]
pub struct Decoded {
    /// The response.
    pub message: Message,
    /// Octets that writing out compressed names (the question's, owners', names in RDATA)
    /// added: encoded again, the message may be this much longer than it came. A reply's size
    /// check relies on it: an upstream may compress a 255-octet question name into a pointer
    /// of two (the fuzzer found a reply over the client's UDP size that way).
    pub expanded_by: usize,
}

/// Decodes a response by the rules of this module.
///
/// # Errors
/// [`WireError`] when the header, the question or a record of the answer or authority
/// section does not parse (TC=1 excuses the record sections).
pub fn decode_response(wire: &[u8]) -> Result<Decoded, WireError> {
    let mut reader = Reader {
        wire,
        decoder: BinDecoder::new(wire),
        edns: None,
        expanded_by: 0,
    };
    let Header {
        mut metadata,
        counts,
    } = Header::read(&mut reader.decoder).map_err(|_| WireError::Header)?;
    let mut message = Message::new(metadata.id, metadata.message_type, metadata.op_code);
    for _ in 0..counts.queries {
        let at = reader.decoder.index();
        let query = Query::read(&mut reader.decoder).map_err(|_| WireError::Question)?;
        // The type and class follow the name: four octets.
        let read = (reader.decoder.index() - at).saturating_sub(4);
        reader.expanded_by += expansion(query.name(), read);
        message.queries.push(query);
    }
    'sections: for (section, count) in [
        (Section::Answer, counts.answers),
        (Section::Authority, counts.authorities),
        (Section::Additional, counts.additionals),
    ] {
        for index in 0..count {
            match reader.record(section) {
                Ok(Some(record)) => match section {
                    Section::Answer => message.answers.push(record),
                    Section::Authority => message.authorities.push(record),
                    Section::Additional => message.additionals.push(record),
                },
                Ok(None) => {}
                // The additional section ends at what does not parse; with TC=1 any does.
                Err(_) if section == Section::Additional || metadata.truncation => {
                    break 'sections;
                }
                Err(fault) => {
                    return Err(WireError::Record {
                        section,
                        index,
                        fault,
                    });
                }
            }
        }
    }
    if let Some(edns) = &reader.edns {
        metadata.response_code =
            ResponseCode::from(edns.rcode_high(), metadata.response_code.low());
    }
    message.metadata = metadata;
    message.edns = reader.edns;
    Ok(Decoded {
        message,
        expanded_by: reader.expanded_by,
    })
}

/// Octets `name`, read from `read` octets of a message, takes written out in full (RFC 1035
/// section 4.1.4: a pointer stands for the rest of a name).
fn expansion(name: &Name, read: usize) -> usize {
    let full = 1 + name.iter().map(|label| 1 + label.len()).sum::<usize>();
    full.saturating_sub(read)
}

/// A response being read, record by record.
struct Reader<'a> {
    /// The whole message, which compression pointers point into.
    wire: &'a [u8],
    decoder: BinDecoder<'a>,
    /// The first OPT record's EDNS.
    edns: Option<Edns>,
    /// Octets added so far by writing out names in RDATA.
    expanded_by: usize,
}

impl Reader<'_> {
    /// Reads the record at the decoder's position and moves past it. An OPT pseudo-record
    /// gives the message's EDNS instead (`None`), unless an earlier one did (then it is
    /// ignored).
    fn record(&mut self, section: Section) -> Result<Option<Record>, Fault> {
        let decoder = &mut self.decoder;
        let at = decoder.index();
        let name = Name::read(decoder).map_err(|_| Fault::OwnerName)?;
        self.expanded_by += expansion(&name, decoder.index() - at);
        let mut field = || decoder.read_u16().map(Restrict::unverified);
        let (rtype, class) = (field().map_err(cut)?, field().map_err(cut)?);
        let ttl = decoder.read_u32().map_err(cut)?.unverified();
        let rdlength = decoder.read_u16().map_err(cut)?.unverified();
        let start = decoder.index();
        let rdata = decoder
            .read_slice(usize::from(rdlength))
            .map_err(cut)?
            .unverified();
        let rtype = RecordType::from(rtype);
        if rtype == RecordType::OPT {
            if section != Section::Additional || !name.is_root() {
                return Err(Fault::Opt);
            }
            self.edns.get_or_insert_with(|| opt_edns(class, ttl, rdata));
            return Ok(None);
        }
        let octets = match layout(rtype) {
            Some(fields) => expand(self.wire, start, rdata.len(), fields)?,
            None => rdata.to_vec(),
        };
        self.expanded_by += octets.len().saturating_sub(rdata.len());
        let data = if matches!(
            rtype,
            RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::SOA
        ) {
            typed(rtype, &octets)?
        } else if octets.is_empty() {
            RData::Unknown {
                code: rtype,
                rdata: NULL::new(),
            }
        } else {
            RData::Unknown {
                code: rtype,
                rdata: NULL::with(octets),
            }
        };
        // RFC 2181 section 8: a TTL with the most significant bit set is treated as zero.
        let ttl = if ttl > MAX_TTL { 0 } else { ttl };
        let mut record = Record::from_rdata(name, ttl, data);
        record.dns_class = DNSClass::from(class);
        Ok(Some(record))
    }
}

fn cut<E>(_: E) -> Fault {
    Fault::CutOff
}

/// The EDNS of an OPT record (RFC 6891 section 6.1.3): the sender's UDP size in CLASS; the
/// extended RCODE, version and DO bit in TTL; options in RDATA, dropped if they do not parse.
fn opt_edns(class: u16, ttl: u32, rdata: &[u8]) -> Edns {
    let [rcode_high, version, flags, _] = ttl.to_be_bytes();
    let mut edns = Edns::new();
    edns.set_max_payload(class.max(512))
        .set_rcode_high(rcode_high)
        .set_version(version)
        .set_dnssec_ok(flags & 0x80 != 0);
    let length = u16::try_from(rdata.len()).unwrap_or(u16::MAX);
    let options = RData::read(
        &mut BinDecoder::new(rdata),
        RecordType::OPT,
        Restrict::new(length),
    );
    if let Ok(RData::OPT(options)) = options {
        *edns.options_mut() = options;
    }
    edns
}

/// The RDATA of the message `message` at `start` (`len` octets) with every name of `fields`
/// written out uncompressed (compression pointers point anywhere before, RFC 1035 section
/// 4.1.4).
fn expand(message: &[u8], start: usize, len: usize, fields: &[Field]) -> Result<Vec<u8>, Fault> {
    let end = start + len;
    let mut at = start;
    let mut out = Vec::with_capacity(len + 32);
    let decoder = BinDecoder::new(message);
    for field in fields {
        match field {
            Field::Name => {
                let index = u16::try_from(at).map_err(|_| Fault::RdataName)?;
                let mut names = decoder.clone(index);
                let name = Name::read(&mut names).map_err(|_| Fault::RdataName)?;
                if names.index() > end {
                    return Err(Fault::RdataName);
                }
                at = names.index();
                for label in name.iter() {
                    out.push(u8::try_from(label.len()).map_err(|_| Fault::RdataName)?);
                    out.extend_from_slice(label);
                }
                out.push(0);
            }
            Field::Octets(n) => {
                let bytes = message.get(at..at + n).filter(|_| at + n <= end);
                out.extend_from_slice(bytes.ok_or(Fault::RdataLength)?);
                at += n;
            }
            Field::Text => {
                let n = 1 + usize::from(*message.get(at).ok_or(Fault::RdataLength)?);
                let bytes = message.get(at..at + n).filter(|_| at + n <= end);
                out.extend_from_slice(bytes.ok_or(Fault::RdataLength)?);
                at += n;
            }
            Field::Rest => {
                out.extend_from_slice(&message[at..end]);
                at = end;
            }
        }
    }
    if at != end {
        return Err(Fault::RdataLength);
    }
    Ok(out)
}

/// `octets` decoded as the typed RDATA of `rtype`, if hickory encodes them back unchanged.
fn typed(rtype: RecordType, octets: &[u8]) -> Result<RData, Fault> {
    let length = u16::try_from(octets.len()).map_err(|_| Fault::RdataForm)?;
    let data = RData::read(&mut BinDecoder::new(octets), rtype, Restrict::new(length))
        .map_err(|_| Fault::RdataForm)?;
    let mut again = Vec::with_capacity(octets.len());
    let mut encoder = BinEncoder::new(&mut again);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    data.emit(&mut encoder).map_err(|_| Fault::RdataForm)?;
    if again != octets {
        return Err(Fault::RdataForm);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name` in wire form, uncompressed.
    fn name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(u8::try_from(label.len()).unwrap());
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// A pointer to the question name, at offset 12.
    const QNAME: [u8; 2] = [0xc0, 12];

    fn rr(owner: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
        let mut out = owner.to_vec();
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&300u32.to_be_bytes());
        out.extend_from_slice(&u16::try_from(rdata.len()).unwrap().to_be_bytes());
        out.extend_from_slice(rdata);
        out
    }

    /// A response (ID 0x1234, QR, RD, RA) to `www.example. A` with these sections.
    fn response(flags: u8, sections: [&[Vec<u8>]; 3]) -> Vec<u8> {
        let mut out = vec![0x12, 0x34, 0x81 | flags, 0x80, 0, 1];
        for section in sections {
            out.extend_from_slice(&u16::try_from(section.len()).unwrap().to_be_bytes());
        }
        out.extend_from_slice(&name("www.example."));
        out.extend_from_slice(&[0, 1, 0, 1]);
        for record in sections.into_iter().flatten() {
            out.extend_from_slice(record);
        }
        out
    }

    fn answer_of(records: &[Vec<u8>]) -> Result<Message, WireError> {
        decode_response(&response(0, [records, &[], &[]])).map(|d| d.message)
    }

    /// The RDATA octets a record encodes to.
    fn encoded_rdata(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = BinEncoder::new(&mut out);
        encoder.set_name_encoding(NameEncoding::Uncompressed);
        record.emit(&mut encoder).unwrap();
        let owner = name(&record.name.to_ascii()).len();
        out[owner + 10..].to_vec()
    }

    #[test]
    fn records_of_any_type_keep_their_rdata_even_empty() {
        let caa = b"\x80IsSuE\"ca.example; account=1\"".to_vec();
        let svcb = [
            &[0, 1][..],
            &name("svc.example."),
            &[0xff, 0x00, 0, 2, 0xab, 0xcd],
        ]
        .concat();
        let cases: Vec<(u16, Vec<u8>)> = vec![
            (65280, Vec::new()),
            (10, Vec::new()), // NULL
            (16, Vec::new()), // TXT, empty
            (42, Vec::new()), // APL, empty by RFC 3123
            (65280, vec![1, 2, 3]),
            (16, b"\x00\x03a\x00b".to_vec()), // TXT: an empty string, then one with a NUL
            (257, caa),                       // CAA with the critical flag and a mixed-case tag
            (64, svcb),                       // SVCB with a private key and a mandatory-less list
        ];
        for (rtype, rdata) in cases {
            let message = answer_of(&[rr(&QNAME, rtype, &rdata)]).unwrap();
            let record = &message.answers[0];
            assert_eq!(u16::from(record.record_type()), rtype);
            assert_eq!(encoded_rdata(record), rdata, "type {rtype}");
            assert_eq!(record.ttl, 300);
        }
    }

    #[test]
    fn ttls_with_the_top_bit_set_are_zero() {
        for (ttl, expected) in [
            (0x7fff_ffff_u32, 0x7fff_ffff_u32),
            (0x8000_0000, 0),
            (0xffff_ffff, 0),
            (0, 0),
        ] {
            let mut record = rr(&QNAME, 1, &[192, 0, 2, 1]);
            record[6..10].copy_from_slice(&ttl.to_be_bytes());
            let message = answer_of(&[record]).unwrap();
            assert_eq!(message.answers[0].ttl, expected, "TTL {ttl:#x}");
        }
    }

    #[test]
    fn compressed_names_in_rdata_are_written_out() {
        let mx = [&[0, 10][..], &QNAME].concat();
        let srv = [
            &[0, 1, 0, 2, 0, 53][..],
            &[4, b'h', b'o', b's', b't', 0xc0, 12],
        ]
        .concat();
        let cases = [
            (15, mx, [&[0, 10][..], &name("www.example.")].concat()),
            (2, QNAME.to_vec(), name("www.example.")),
            (
                33,
                srv,
                [&[0, 1, 0, 2, 0, 53][..], &name("host.www.example.")].concat(),
            ),
        ];
        for (rtype, rdata, expanded) in cases {
            let message = answer_of(&[rr(&QNAME, rtype, &rdata)]).unwrap();
            assert_eq!(encoded_rdata(&message.answers[0]), expanded, "type {rtype}");
        }
        // The size check of replies learns how much longer the message became.
        let ns = rr(&QNAME, 2, &QNAME);
        let decoded = decode_response(&response(0, [&[ns], &[], &[]])).unwrap();
        // Its owner and its RDATA are both a pointer to the question name.
        assert_eq!(decoded.expanded_by, 2 * (name("www.example.").len() - 2));
        let cname = answer_of(&[rr(&QNAME, 5, &[3, b'w', b'e', b'b', 0xc0, 16])]).unwrap();
        match &cname.answers[0].data {
            RData::CNAME(target) => assert_eq!(target.0.to_ascii(), "web.example."),
            other => panic!("a typed CNAME expected, got {other:?}"),
        }
    }

    #[test]
    fn what_cannot_be_framed_is_malformed() {
        let bad = |records: &[Vec<u8>]| match answer_of(records) {
            Err(WireError::Record { fault, .. }) => fault,
            other => panic!("malformed expected, got {other:?}"),
        };
        assert_eq!(
            bad(&[rr(&QNAME, 1, &[192, 0, 2])]),
            Fault::RdataForm,
            "A of 3 octets"
        );
        assert_eq!(bad(&[rr(&QNAME, 1, &[])]), Fault::RdataForm, "empty A");
        assert_eq!(
            bad(&[rr(&QNAME, 15, &[0, 10, 0xc0, 12, 7])]),
            Fault::RdataLength
        );
        assert_eq!(
            bad(&[rr(&[0xc0, 200], 1, &[192, 0, 2, 1])]),
            Fault::OwnerName
        );
        assert_eq!(
            bad(&[rr(&QNAME, 5, &[0xc0, 40])]),
            Fault::RdataName,
            "pointer forward"
        );
        assert_eq!(
            bad(&[rr(&name(""), 41, &[])]),
            Fault::Opt,
            "OPT in the answer"
        );
        let mut cut = rr(&QNAME, 1, &[192, 0, 2, 1]);
        cut.truncate(cut.len() - 1);
        assert_eq!(bad(&[cut.clone()]), Fault::CutOff, "RDLENGTH past the end");
        assert_eq!(
            decode_response(&[0x12, 0x34, 0x81]).unwrap_err(),
            WireError::Header
        );
        let mut question = response(0, [&[], &[], &[]]);
        question.truncate(20);
        assert_eq!(decode_response(&question).unwrap_err(), WireError::Question);
        // With TC=1 the records need not parse: the answer is asked again over TCP.
        let truncated = decode_response(&response(0x02, [&[cut], &[], &[]]))
            .unwrap()
            .message;
        assert!(truncated.metadata.truncation && truncated.answers.is_empty());
    }

    #[test]
    fn a_bad_additional_section_ends_there_and_the_answer_stands() {
        let a = rr(&QNAME, 1, &[192, 0, 2, 1]);
        // EDNS with BADVERS's high bits and DO, then a record that runs past the end.
        let mut opt = name("");
        opt.extend_from_slice(&[0, 41, 0x04, 0xd0, 1, 0, 0x80, 0, 0, 0]);
        let garbage = vec![0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 9, 1];
        let message = decode_response(&response(0, [&[a], &[], &[opt, garbage]]))
            .unwrap()
            .message;
        assert_eq!(message.answers.len(), 1);
        assert!(message.additionals.is_empty());
        let edns = message
            .edns
            .as_ref()
            .expect("the OPT before the garbage counts");
        assert_eq!((edns.max_payload(), edns.flags().dnssec_ok), (1232, true));
        // 16: BADVERS (hickory names it BADSIG, which shares the code).
        assert_eq!(u16::from(message.metadata.response_code), 16);
    }

    #[test]
    fn an_opt_whose_options_do_not_parse_still_gives_edns() {
        let mut opt = name("");
        // Options that claim 9 octets of data and hold 1.
        opt.extend_from_slice(&[0, 41, 0x02, 0x00, 0, 0, 0, 0, 0, 5, 0, 10, 0, 9, 1]);
        let message = decode_response(&response(0, [&[], &[], &[opt]]))
            .unwrap()
            .message;
        let edns = message.edns.expect("EDNS without its options");
        assert_eq!(edns.max_payload(), 512);
        assert_eq!(edns.options().as_ref().len(), 0);
    }

    #[test]
    fn the_id_is_read_from_any_two_octets() {
        assert_eq!(message_id(&[0x12, 0x34]), Some(0x1234));
        assert_eq!(message_id(&[0x12]), None);
    }
}
