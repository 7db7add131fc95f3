//! Answers built from a set of records, as an authoritative server holding them would give:
//! CNAMEs followed inside the set, NODATA and NXDOMAIN with the TLD's SOA (RFC 2308).

use hickory_proto::{
    op::ResponseCode,
    rr::{DNSClass, LowerName, Name, RData, Record, RecordType, rdata::SOA},
};

use super::{LocalZone, NamingAnswer};

/// Longest CNAME chain followed inside the local names.
pub(crate) const MAX_CNAME_CHAIN: usize = 8;
/// TTL and SOA minimum of the synthesized SOA: how long resolvers may cache "no such name".
const NEGATIVE_TTL: u32 = 60;

/// Where [`answer_from`] finds records: the local table or one signed name record.
pub(crate) trait RecordSource {
    /// The records owned by `name`.
    fn records_at(&self, name: &LowerName) -> Vec<Record>;
    /// Does a name below `name` hold records?
    fn has_below(&self, name: &LowerName) -> bool;
}

impl RecordSource for LocalZone {
    fn records_at(&self, name: &LowerName) -> Vec<Record> {
        self.get(name).map(<[Record]>::to_vec).unwrap_or_default()
    }

    fn has_below(&self, name: &LowerName) -> bool {
        self.has_descendants(name)
    }
}

/// Answers `qtype` for `qname` from `source`, following CNAMEs inside it.
pub(crate) fn answer_from(
    source: &impl RecordSource,
    qname: &Name,
    qtype: RecordType,
    tld: &Name,
) -> NamingAnswer {
    let mut answers = Vec::new();
    let mut owner = qname.clone();
    for _ in 0..MAX_CNAME_CHAIN {
        let key = LowerName::new(&owner);
        let records = source.records_at(&key);
        if records.is_empty() {
            if !answers.is_empty() {
                // The chain left the records we hold; the client resolves the rest.
                return positive(answers);
            }
            return if source.has_below(&key) {
                nodata(soa_record(tld))
            } else {
                NamingAnswer {
                    rcode: ResponseCode::NXDomain,
                    answers: Vec::new(),
                    authorities: vec![soa_record(tld)],
                    failure: None,
                }
            };
        }
        let cname = records
            .iter()
            .find(|r| r.record_type() == RecordType::CNAME);
        match cname {
            Some(cname) if !matches!(qtype, RecordType::CNAME | RecordType::ANY) => {
                let mut record = cname.clone();
                record.name = owner.clone();
                let RData::CNAME(target) = &cname.data else {
                    unreachable!("record type was checked to be CNAME")
                };
                owner = target.0.clone();
                answers.push(record);
            }
            _ => {
                answers.extend(
                    records
                        .into_iter()
                        .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                        .map(|mut r| {
                            r.name = owner.clone();
                            r
                        }),
                );
                return if answers.is_empty() {
                    nodata(soa_record(tld))
                } else {
                    positive(answers)
                };
            }
        }
    }
    // A CNAME loop or an over-long chain: answer what we followed.
    positive(answers)
}

pub(crate) fn positive(answers: Vec<Record>) -> NamingAnswer {
    NamingAnswer {
        rcode: ResponseCode::NoError,
        answers,
        authorities: Vec::new(),
        failure: None,
    }
}

pub(crate) fn nodata(soa: Record) -> NamingAnswer {
    NamingAnswer {
        rcode: ResponseCode::NoError,
        answers: Vec::new(),
        authorities: vec![soa],
        failure: None,
    }
}

/// The SOA served for a peer-to-peer TLD. Nothing is delegated, so the fields only matter for
/// negative caching: TTL and minimum give how long "no such name" may be cached.
pub(crate) fn soa_record(tld: &Name) -> Record {
    let mname = Name::from_ascii("localhost.").expect("static name");
    let rname = Name::from_ascii("nobody.invalid.").expect("static name");
    let soa = SOA::new(mname, rname, 1, 3600, 600, 86_400, NEGATIVE_TTL);
    let mut record = Record::from_rdata(tld.clone(), NEGATIVE_TTL, RData::SOA(soa));
    record.dns_class = DNSClass::IN;
    record
}
