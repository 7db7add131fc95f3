//! Answers built from a set of records as an authoritative server holding them gives them
//! (RFC 1034 section 4.3.2; the rules are docs/PROTOCOL.md section 10): one copy of each RR and
//! one TTL per RRset (RFC 2181 section 5), a CNAME standing alone at its name, CNAMEs followed
//! inside the set, wildcards (RFC 4592), NODATA and NXDOMAIN with the TLD's SOA (RFC 2308,
//! RFC 6604), and the addresses of MX and SRV targets as additional data.

use hickory_proto::{
    op::ResponseCode,
    rr::{DNSClass, LowerName, Name, RData, Record, RecordType, rdata::SOA},
};

use super::NamingAnswer;

/// Longest CNAME chain followed for one question, across sources.
pub(crate) const MAX_CNAME_CHAIN: usize = 8;
/// TTL and SOA minimum of the synthesized SOA: how long resolvers may cache "no such name",
/// the same time this resolver believes the DHT has no such name (docs/PROTOCOL.md section
/// 10): short, because a name may be published any moment.
pub(crate) const NEGATIVE_TTL: u32 = 10;

/// Where [`answer_from`] finds records: the local table or one signed name record.
pub(crate) trait RecordSource {
    /// The RRs owned by exactly `name`, in the source's order, duplicates and all.
    fn records_at(&self, name: &LowerName) -> Vec<Record>;
    /// Does a name strictly below `name` own RRs?
    fn has_below(&self, name: &LowerName) -> bool;
    /// Is `name` this source's to answer? A CNAME to a name it does not hold leaves it, and
    /// whoever holds the target answers the rest.
    fn holds(&self, name: &LowerName) -> bool;
}

/// Where the records of an answer came from: decides the DNS-rebinding filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The local table, the reserved names, the TLD's apex: this machine's own data.
    Local,
    /// A signed name record (one found in the DHT, or one this node publishes).
    Network,
    /// The local address of a tunnelled name (docs/PROTOCOL.md section 9.4).
    Tunnel,
}

/// One source's part of an answer.
#[derive(Debug)]
pub(crate) struct Built {
    /// The answer as far as this source goes.
    pub(crate) answer: NamingAnswer,
    /// The target of the last CNAME when it is a name the source does not hold: the answer
    /// goes on there.
    pub(crate) exit: Option<Name>,
    /// Where the records came from.
    pub(crate) origin: Origin,
}

impl RecordSource for super::LocalZone {
    fn records_at(&self, name: &LowerName) -> Vec<Record> {
        self.get(name).map(<[Record]>::to_vec).unwrap_or_default()
    }

    fn has_below(&self, name: &LowerName) -> bool {
        self.has_descendants(name)
    }

    fn holds(&self, name: &LowerName) -> bool {
        self.covers(name)
    }
}

impl Built {
    /// A complete answer of `origin`: nothing left to follow.
    pub(crate) fn done(answer: NamingAnswer, origin: Origin) -> Self {
        Self {
            answer,
            exit: None,
            origin,
        }
    }
}

/// What a name holds, by the rules of docs/PROTOCOL.md section 10.2.
enum Node {
    /// RRs, its own or a wildcard's, as answered: one copy each, one TTL per RRset, a CNAME
    /// alone; owner names set to the name asked.
    Data(Vec<Record>),
    /// The name exists without data: an empty non-terminal, or a wildcard that is one.
    Empty,
    /// No such name.
    Absent,
}

/// Answers `qtype` for `qname` from `source` (RFC 1034 section 4.3.2, steps 3 and 6),
/// following CNAMEs inside it. `seen` holds the names the chain has passed, across sources,
/// so that a loop ends: each CNAME is answered once, and the chain stops where it would repeat
/// a name or grow past [`MAX_CNAME_CHAIN`] names.
pub(crate) fn answer_from(
    source: &impl RecordSource,
    qname: &Name,
    qtype: RecordType,
    tld: &Name,
    seen: &mut Vec<LowerName>,
) -> Built {
    let mut answers = Vec::new();
    let mut name = qname.clone();
    loop {
        seen.push(LowerName::new(&name));
        let records = match node(source, &name, tld) {
            Node::Absent => return negative(answers, ResponseCode::NXDomain, tld),
            Node::Empty => return negative(answers, ResponseCode::NoError, tld),
            Node::Data(records) => records,
        };
        let cname = records.iter().find_map(|r| match &r.data {
            RData::CNAME(target) => Some((r, target.0.clone())),
            _ => None,
        });
        if let Some((record, target)) = cname
            && !matches!(qtype, RecordType::CNAME | RecordType::ANY)
        {
            answers.push(record.clone());
            let key = LowerName::new(&target);
            if seen.contains(&key) || seen.len() >= MAX_CNAME_CHAIN {
                // A loop or an over-long chain: what was followed, as nsd answers it.
                return Built::done(positive(answers), Origin::Local);
            }
            if !source.holds(&key) {
                return Built {
                    answer: positive(answers),
                    exit: Some(target),
                    origin: Origin::Local,
                };
            }
            name = target;
            continue;
        }
        let before = answers.len();
        answers.extend(
            records
                .into_iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype),
        );
        if answers.len() == before {
            return negative(answers, ResponseCode::NoError, tld);
        }
        let additionals = additionals(source, &answers, tld);
        let answer = NamingAnswer {
            additionals,
            ..positive(answers)
        };
        return Built::done(answer, Origin::Local);
    }
}

/// What `name` holds in `source`: its own RRs; else an empty non-terminal; else the RRs of
/// the wildcard at its closest encloser (RFC 4592 section 3.3.1), if there is one.
fn node(source: &impl RecordSource, name: &Name, tld: &Name) -> Node {
    let key = LowerName::new(name);
    let own = source.records_at(&key);
    if !own.is_empty() {
        return Node::Data(as_answered(own, name));
    }
    if source.has_below(&key) {
        return Node::Empty;
    }
    // The closest encloser: the nearest ancestor that exists. The TLD's apex always does.
    let mut encloser = name.base_name();
    while encloser.iter().count() > tld.iter().count() && !exists(source, &encloser) {
        encloser = encloser.base_name();
    }
    let Ok(wildcard) = encloser.prepend_label("*") else {
        return Node::Absent;
    };
    let wildcard = LowerName::new(&wildcard);
    let synthesized = source.records_at(&wildcard);
    if !synthesized.is_empty() {
        Node::Data(as_answered(synthesized, name))
    } else if source.has_below(&wildcard) {
        Node::Empty
    } else {
        Node::Absent
    }
}

fn exists(source: &impl RecordSource, name: &Name) -> bool {
    let key = LowerName::new(name);
    !source.records_at(&key).is_empty() || source.has_below(&key)
}

/// The RRs of one name as answered under `owner` (the name as asked, letter case kept): one
/// copy of each RR (RFC 2181 section 5), the lowest TTL of each RRset for all of it (section
/// 5.2), the first CNAME alone when there is one (RFC 1034 section 3.6.2), class IN.
fn as_answered(records: Vec<Record>, owner: &Name) -> Vec<Record> {
    let mut kept: Vec<Record> = Vec::with_capacity(records.len());
    for record in records {
        if !kept.contains(&record) {
            kept.push(record);
        }
    }
    if let Some(at) = kept
        .iter()
        .position(|r| r.record_type() == RecordType::CNAME)
    {
        kept = vec![kept.swap_remove(at)];
    }
    let lowest: Vec<(RecordType, u32)> = kept.iter().fold(Vec::new(), |mut lowest, r| {
        match lowest.iter_mut().find(|(t, _)| *t == r.record_type()) {
            Some((_, ttl)) => *ttl = (*ttl).min(r.ttl),
            None => lowest.push((r.record_type(), r.ttl)),
        }
        lowest
    });
    for record in &mut kept {
        record.name = owner.clone();
        record.dns_class = DNSClass::IN;
        record.ttl = lowest
            .iter()
            .find(|(t, _)| *t == record.record_type())
            .map_or(record.ttl, |(_, ttl)| *ttl);
    }
    kept
}

/// The A and AAAA RRsets, from `source`, of the MX and SRV targets in `answers` that the
/// source holds (RFC 1034 section 4.3.2 step 6; RFC 2782): wildcards apply, CNAMEs are not
/// followed, and records already in the answer are not repeated.
fn additionals(source: &impl RecordSource, answers: &[Record], tld: &Name) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for record in answers {
        let target = match &record.data {
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        let key = LowerName::new(target);
        if target.is_root() || !source.holds(&key) {
            continue;
        }
        let Node::Data(records) = node(source, target, tld) else {
            continue;
        };
        for record in records {
            let address = matches!(record.record_type(), RecordType::A | RecordType::AAAA);
            if address && !answers.contains(&record) && !out.contains(&record) {
                out.push(record);
            }
        }
    }
    out
}

/// NXDOMAIN or NODATA (`rcode` NOERROR) after the CNAMEs in `answers`, with the TLD's SOA
/// (RFC 2308 sections 2.1 and 2.2; RFC 6604: the RCODE is the last name's).
fn negative(answers: Vec<Record>, rcode: ResponseCode, tld: &Name) -> Built {
    let answer = NamingAnswer {
        rcode,
        answers,
        authorities: vec![soa_record(tld)],
        ..NamingAnswer::rcode(rcode)
    };
    Built::done(answer, Origin::Local)
}

/// NOERROR with `answers`.
pub(crate) fn positive(answers: Vec<Record>) -> NamingAnswer {
    NamingAnswer {
        answers,
        ..NamingAnswer::rcode(ResponseCode::NoError)
    }
}

/// NODATA: NOERROR, no answer, `soa` in the authority section.
pub(crate) fn nodata(soa: Record) -> NamingAnswer {
    NamingAnswer {
        authorities: vec![soa],
        ..NamingAnswer::rcode(ResponseCode::NoError)
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

#[cfg(test)]
mod tests;
