//! Vetting an upstream's answer before it is cached or served: it must answer the question
//! that was asked, and it loses every record the question did not ask for (unbound's scrubber
//! is the model). An upstream, or whoever forges its answers (RFC 5452 section 1), may add
//! records for other names to a genuine answer; a cache that kept them would serve them to
//! every later client. What is kept:
//!
//! - answer section: the alias chain from the question's name (CNAMEs, and DNAMEs with the
//!   CNAME they synthesize, RFC 6672 sections 2.2 and 3.1), the records of the asked type at
//!   the chain's last name, and, when the client set DO, their RRSIGs (RFC 4035 section 3.2.1
//!   and RFC 3225 section 3: without DO they are stripped unless asked for by type);
//! - authority section: for a negative answer (NXDOMAIN, or no data at the chain's end) the
//!   SOA of a zone the last name is in (RFC 2308 sections 2.1 and 2.2); with DO, the
//!   NSEC/NSEC3 proofs in that zone or in the zone that signed the answer, and their RRSIGs;
//! - the additional section is the cache's to drop ([`super::cache`] keeps none of it).
//!
//! An answer whose records at the question's name (or an alias of it) are of another type or
//! class (AAAA asked, A answered), whose answer section holds nothing for the question, or
//! that is a referral is refused as a whole: the forwarder asks another upstream instead.

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
    serialize::binary::BinDecodable,
};

use super::cache::CacheKey;

/// Longest alias chain followed, in links; unbound restarts a query at most 11 times.
const MAX_CHAIN: usize = 12;

/// Why an upstream's answer does not answer the question.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// Records at the question's name, or at a name of the alias chain from it, have another
    /// type or class than asked and are no alias: the answer is to another question.
    #[error("the answer holds {rtype} records of class {class} for {name}, not what was asked")]
    NotAsked {
        /// Owner of the offending records.
        name: Name,
        /// Their type.
        rtype: RecordType,
        /// Their class.
        class: DNSClass,
    },
    /// The answer section holds records, but none for the question's name or an alias of it.
    #[error("no record of the answer section belongs to the question's name")]
    Unrelated,
    /// NOERROR without the data, without an SOA and with NS records in the authority section:
    /// a referral, which a recursive upstream never gives to a recursive query (a lame
    /// upstream, as unbound calls it).
    #[error("a referral to {zone}, not an answer")]
    Referral {
        /// The zone the NS records delegate.
        zone: Name,
    },
}

/// Checks that `response`, an upstream's NOERROR or NXDOMAIN to the question of `key` (class
/// IN: no other class is forwarded), answers it, and removes from its answer and authority
/// sections whatever does not belong to the answer (see the module documentation).
///
/// # Errors
/// [`Mismatch`] when the response does not answer the question; it is then left half
/// scrubbed and must not be used.
pub fn vet(response: &mut Message, key: &CacheKey) -> Result<(), Mismatch> {
    let chain = Chain::follow(&response.answers, Name::from(&key.name), key.qtype);
    let mut keep = Vec::with_capacity(response.answers.len());
    for (index, record) in response.answers.iter().enumerate() {
        keep.push(chain.judge(index, record, key.qtype)?);
    }
    if !response.answers.is_empty() && !chain.touches(&response.answers) {
        return Err(Mismatch::Unrelated);
    }
    keep_signatures(&response.answers, &mut keep, key.dnssec_ok);
    retain_marked(&mut response.answers, &keep);

    let positive = response
        .answers
        .iter()
        .any(|r| r.record_type() == key.qtype);
    let soa = if positive {
        None
    } else {
        relevant_soa(&response.authorities, chain.last())
    };
    if soa.is_none()
        && !positive
        && response.metadata.response_code == ResponseCode::NoError
        && !response.metadata.authoritative
        && let Some(zone) = delegation(&response.authorities, chain.last())
    {
        return Err(Mismatch::Referral { zone });
    }
    let mut zones: Vec<Name> = soa.iter().cloned().collect();
    if key.dnssec_ok {
        zones.extend(response.answers.iter().filter_map(signer));
    }
    scrub_authority(
        &mut response.authorities,
        soa.as_ref(),
        &zones,
        key.dnssec_ok,
    );
    Ok(())
}

/// The question's name and the alias chain from it, as the answer section spells it out.
struct Chain {
    /// From the question's name to the last alias target, in order, without repeats.
    names: Vec<Name>,
    /// Indexes of the answer records that link one name to the next (CNAME, DNAME).
    links: Vec<usize>,
}

impl Chain {
    /// Follows the aliases in `answers` from `qname`, however the section orders them, up to
    /// [`MAX_CHAIN`] links and stopping where the chain would loop. A CNAME question asks for
    /// the alias itself: nothing is followed.
    fn follow(answers: &[Record], qname: Name, qtype: RecordType) -> Self {
        let mut chain = Self {
            names: vec![qname],
            links: Vec::new(),
        };
        if qtype == RecordType::CNAME {
            return chain;
        }
        while chain.names.len() <= MAX_CHAIN {
            let Some((links, next)) = next_link(answers, chain.last()) else {
                break;
            };
            chain.links.extend(links);
            if chain.names.contains(&next) {
                break;
            }
            chain.names.push(next);
        }
        chain
    }

    /// The chain's last name: the one whose data, or absence of data, the answer gives.
    fn last(&self) -> &Name {
        self.names
            .last()
            .expect("a chain starts with the question's name")
    }

    /// Does any of `answers` belong to the question (a link, or a record at a chain name)?
    fn touches(&self, answers: &[Record]) -> bool {
        !self.links.is_empty() || answers.iter().any(|r| self.names.contains(&r.name))
    }

    /// Whether the answer record at `index` is kept; RRSIGs are judged later, by what they
    /// cover ([`keep_signatures`]).
    fn judge(&self, index: usize, record: &Record, qtype: RecordType) -> Result<bool, Mismatch> {
        if self.links.contains(&index) {
            return Ok(true);
        }
        // Records for names outside the chain are what RFC 5452 warns about: drop them.
        let Some(at) = self.names.iter().position(|n| *n == record.name) else {
            return Ok(false);
        };
        let rtype = record.record_type();
        if rtype != qtype && is_dnssec_meta(rtype) {
            return Ok(false);
        }
        if record.dns_class != DNSClass::IN {
            return Err(not_asked(record));
        }
        match rtype {
            // Data of the asked type beside an alias loses to the alias (RFC 2181 section
            // 10.1); data at the chain's end is the answer.
            _ if rtype == qtype || qtype == RecordType::ANY => Ok(at + 1 == self.names.len()),
            // A second alias at a name, or a CNAME that contradicts its DNAME.
            RecordType::CNAME | RecordType::DNAME => Ok(false),
            _ => Err(not_asked(record)),
        }
    }
}

/// The refusal of an answer that holds `record` where the question's data belongs.
fn not_asked(record: &Record) -> Mismatch {
    Mismatch::NotAsked {
        name: record.name.clone(),
        rtype: record.record_type(),
        class: record.dns_class,
    }
}

/// The link from `sname` to the next name of its chain, and the records that make it: a DNAME
/// at an ancestor of `sname` (RFC 6672 section 2.2; not at `sname` itself, section 2.3) with
/// the CNAME synthesized from it if the answer has one that agrees (section 3.4), else a
/// CNAME at `sname`.
fn next_link(answers: &[Record], sname: &Name) -> Option<(Vec<usize>, Name)> {
    let in_class = |r: &&Record| r.dns_class == DNSClass::IN;
    let dname = answers
        .iter()
        .enumerate()
        .filter(|(_, r)| in_class(r) && r.name != *sname && r.name.zone_of(sname))
        .find_map(|(i, r)| Some((i, substitute(sname, &r.name, &dname_target(r)?)?)));
    if let Some((index, target)) = dname {
        let synthesized = answers.iter().position(|r| {
            in_class(&r) && r.name == *sname && matches!(&r.data, RData::CNAME(c) if c.0 == target)
        });
        return Some(([index].into_iter().chain(synthesized).collect(), target));
    }
    answers.iter().enumerate().find_map(|(i, r)| match &r.data {
        RData::CNAME(target) if in_class(&r) && r.name == *sname => {
            Some((vec![i], target.0.clone()))
        }
        _ => None,
    })
}

/// The target of a DNAME record, which hickory does not model (its RDATA is one name, never
/// compressed: RFC 6672 section 2.5).
fn dname_target(record: &Record) -> Option<Name> {
    match &record.data {
        RData::Unknown { code, rdata } if *code == RecordType::DNAME => {
            Name::from_bytes(&rdata.anything).ok()
        }
        _ => None,
    }
}

/// `sname` with its suffix `owner` replaced by `target` (RFC 6672 section 2.2); `None` when
/// the result is too long to be a name.
fn substitute(sname: &Name, owner: &Name, target: &Name) -> Option<Name> {
    // Counted label by label: `num_labels` leaves out a leading `*`.
    let prefix = sname.iter().count() - owner.iter().count();
    Name::from_labels(sname.iter().take(prefix))
        .ok()?
        .append_name(target)
        .ok()
}

/// Types that only prove or sign other records (RFC 4035 section 3.2.1's "authenticating
/// DNSSEC RRs").
fn is_dnssec_meta(rtype: RecordType) -> bool {
    matches!(
        rtype,
        RecordType::RRSIG | RecordType::NSEC | RecordType::NSEC3
    )
}

/// The type an RRSIG covers (the first field of its RDATA, RFC 4034 section 3.1); hickory
/// without its DNSSEC features leaves RRSIGs as unknown records.
fn covered(record: &Record) -> Option<RecordType> {
    match &record.data {
        RData::Unknown { code, rdata } if *code == RecordType::RRSIG => {
            let bytes = rdata.anything.get(..2)?;
            Some(RecordType::from(u16::from_be_bytes([bytes[0], bytes[1]])))
        }
        _ => None,
    }
}

/// The zone that made an RRSIG (its Signer's Name, never compressed: RFC 4034 section
/// 3.1.7).
fn signer(record: &Record) -> Option<Name> {
    covered(record)?;
    match &record.data {
        RData::Unknown { rdata, .. } => Name::from_bytes(rdata.anything.get(18..)?).ok(),
        _ => None,
    }
}

/// Marks the RRSIGs kept: with DO, those that cover a kept RRset (same owner, covered type);
/// without DO, none (RFC 3225 section 3), except those already kept because they were asked
/// for by type.
fn keep_signatures(records: &[Record], keep: &mut [bool], dnssec_ok: bool) {
    if !dnssec_ok {
        return;
    }
    for (index, record) in records.iter().enumerate() {
        let Some(rtype) = covered(record) else {
            continue;
        };
        if !keep[index] {
            keep[index] = records
                .iter()
                .zip(keep.iter())
                .any(|(r, &kept)| kept && r.record_type() == rtype && r.name == record.name);
        }
    }
}

/// Keeps the records of `records` whose mark in `keep` is set.
fn retain_marked(records: &mut Vec<Record>, keep: &[bool]) {
    let mut marks = keep.iter();
    records.retain(|_| marks.next().copied().unwrap_or(false));
}

/// The first SOA in `authorities` of a zone that holds `last` (the name a negative answer is
/// about); an SOA of another zone proves nothing about it.
fn relevant_soa(authorities: &[Record], last: &Name) -> Option<Name> {
    authorities
        .iter()
        .find(|r| {
            r.record_type() == RecordType::SOA
                && r.dns_class == DNSClass::IN
                && r.name.zone_of(last)
        })
        .map(|r| r.name.clone())
}

/// The zone delegated by NS records in `authorities` on the way to `last`, if any.
fn delegation(authorities: &[Record], last: &Name) -> Option<Name> {
    authorities
        .iter()
        .find(|r| r.record_type() == RecordType::NS && r.name.zone_of(last))
        .map(|r| r.name.clone())
}

/// Keeps in `authorities` the SOA of a negative answer (`soa`, its zone, once), with DO the
/// NSEC and NSEC3 records in `zones` and the RRSIGs over what is kept; nothing else (NS
/// records, out-of-zone junk).
fn scrub_authority(
    authorities: &mut Vec<Record>,
    soa: Option<&Name>,
    zones: &[Name],
    dnssec_ok: bool,
) {
    let mut soa_taken = false;
    let mut keep: Vec<bool> = authorities
        .iter()
        .map(|r| match r.record_type() {
            RecordType::SOA if !soa_taken && r.dns_class == DNSClass::IN => {
                soa_taken = soa == Some(&r.name);
                soa_taken
            }
            RecordType::NSEC | RecordType::NSEC3 => {
                dnssec_ok && zones.iter().any(|z| z.zone_of(&r.name))
            }
            _ => false,
        })
        .collect();
    keep_signatures(authorities, &mut keep, dnssec_ok);
    retain_marked(authorities, &keep);
}

#[cfg(test)]
mod tests;
