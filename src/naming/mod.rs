//! The `naming` subsystem: answers for names under the peer-to-peer TLDs (`.p2p` by default).
//!
//! The DNS front end only sees [`Naming::lookup`]; where the records come from is this module's
//! business: first the static table in the configuration (`[naming.records]`, [`LocalZone`]),
//! then, for `.p2p` only, the DHT of signed name records ([`Dht`]): this node's own names
//! ([`publisher`]), else a lookup ([`resolver`]) that believes the owners in [`pins`]. Other
//! TLDs in `naming.tlds` are answered from the local table alone. `answer` turns a set of
//! records into the answer an authoritative server would give.
//!
//! This module owns TLD routing, the answers built from records, the published names and the
//! pins; it does not touch the libp2p swarm (it asks the P2P node through
//! [`crate::p2p::NodeHandle`]) nor DNS sockets.

mod answer;
mod dht;
mod local;
pub mod pins;
pub mod publisher;
pub mod resolver;

use std::sync::Arc;

use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, RData, Record, RecordType},
};

#[cfg(test)]
use answer::MAX_CNAME_CHAIN;
pub(crate) use answer::{RecordSource, answer_from, nodata, positive, soa_record};
pub use dht::{Dht, DhtConfig};
pub use local::{LocalZone, ZoneError, parse_record, parse_zone, presentation};

use crate::config::NamingConfig;

/// Errors while setting up the naming subsystem.
#[derive(Debug, thiserror::Error)]
pub enum NamingError {
    /// A record in `[naming.records]` did not parse or lies outside the TLDs.
    #[error("invalid config value naming.records.{name:?}")]
    Record {
        /// The owner name as written in the file (the table key).
        name: String,
        /// What is wrong with the owner or one of its records.
        #[source]
        source: ZoneError,
    },
}

/// An answer from the naming subsystem, ready for the DNS front end.
#[derive(Debug, Clone, PartialEq)]
pub struct NamingAnswer {
    /// NOERROR (with or without records), NXDOMAIN, or SERVFAIL when the DHT gave no answer
    /// within the lookup budget.
    pub rcode: ResponseCode,
    /// The answer section: the records of the asked type, preceded by the CNAMEs followed to
    /// them within the same source; owner names copy the query's letter case.
    pub answers: Vec<Record>,
    /// The TLD's SOA for negative answers, so clients can cache them (RFC 2308).
    pub authorities: Vec<Record>,
    /// Why a SERVFAIL is not the DHT's silence (the Extended DNS Error text, RFC 8914); `None`
    /// for every other answer.
    pub failure: Option<&'static str>,
}

/// The naming subsystem's handle.
pub struct Naming {
    tlds: Vec<LowerName>,
    local: LocalZone,
    dht: Option<Arc<Dht>>,
}

impl Naming {
    /// The naming subsystem for `config`'s TLDs and local records, without a DHT yet (see
    /// [`Naming::with_dht`]).
    ///
    /// # Errors
    /// [`NamingError::Record`] when an owner or record in `[naming.records]` is invalid or lies
    /// outside the TLDs.
    pub fn new(config: &NamingConfig) -> Result<Self, NamingError> {
        let tlds: Vec<LowerName> = config
            .tlds
            .iter()
            .map(|tld| {
                let name = Name::from_ascii(format!("{tld}."))
                    .expect("config validation checked that each TLD is one label");
                LowerName::new(&name)
            })
            .collect();
        let mut local = LocalZone::default();
        for (owner, records) in &config.records {
            local
                .add(owner, records, config.default_ttl_secs, &tlds)
                .map_err(|source| NamingError::Record {
                    name: owner.clone(),
                    source,
                })?;
        }
        Ok(Self {
            tlds,
            local,
            dht: None,
        })
    }

    /// Adds the DHT behind the local records.
    pub fn with_dht(mut self, dht: Arc<Dht>) -> Self {
        self.dht = Some(dht);
        self
    }

    /// The DHT behind the local records; `None` when the P2P node is off.
    pub fn dht(&self) -> Option<&Arc<Dht>> {
        self.dht.as_ref()
    }

    /// Is `name` answered here rather than forwarded upstream?
    pub fn is_local(&self, name: &LowerName) -> bool {
        self.tld_of(name).is_some()
    }

    fn tld_of(&self, name: &LowerName) -> Option<&LowerName> {
        self.tlds.iter().find(|tld| tld.zone_of(name))
    }

    /// Number of local names configured.
    pub fn local_names(&self) -> usize {
        self.local.len()
    }

    /// Answers `qtype` for `qname`. `qname` keeps the client's letter case, which the answer's
    /// owner names copy. Local records win over the DHT.
    pub async fn lookup(&self, qname: &Name, qtype: RecordType) -> NamingAnswer {
        let lower = LowerName::new(qname);
        let Some(tld) = self.tld_of(&lower) else {
            // The front end only routes names under our TLDs here.
            return NamingAnswer::rcode(ResponseCode::Refused);
        };
        let tld = Name::from(tld);

        if lower == LowerName::new(&tld) {
            let soa = soa_record(&tld);
            return if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                positive(vec![soa])
            } else {
                nodata(soa)
            };
        }
        if RESERVED_NAME.zone_of(&lower) {
            return if lower == *CHECK_NAME {
                check_answer(qname, qtype, &tld)
            } else {
                // The check name is the only name in the reserved subtree.
                let soa = soa_record(&tld);
                if CHECK_NAME.zone_of(&lower) || lower == *RESERVED_NAME {
                    nodata(soa)
                } else {
                    NamingAnswer {
                        rcode: ResponseCode::NXDomain,
                        answers: Vec::new(),
                        authorities: vec![soa],
                        failure: None,
                    }
                }
            };
        }
        if self.local.covers(&lower) {
            return answer_from(&self.local, qname, qtype, &tld);
        }
        match &self.dht {
            Some(dht) if tld.to_ascii() == format!("{}.", crate::record::TLD) => {
                dht.lookup(qname, qtype, &tld).await
            }
            _ => answer_from(&self.local, qname, qtype, &tld),
        }
    }
}

impl NamingAnswer {
    pub(crate) fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            failure: None,
        }
    }
}

/// A name every p2pdns daemon answers itself, so that `p2pdns doctor` and `service install` can
/// tell whether the system resolver sends `.p2p` here: `check.p2pdns.p2p` has A 127.0.0.1 and
/// AAAA ::1. (`p2pdns.p2p` is reserved for this; see docs/PROTOCOL.md.)
pub const CHECK_HOST: &str = "check.p2pdns.p2p";

static CHECK_NAME: std::sync::LazyLock<LowerName> = std::sync::LazyLock::new(|| {
    LowerName::new(&Name::from_ascii(format!("{CHECK_HOST}.")).expect("a valid name"))
});
static RESERVED_NAME: std::sync::LazyLock<LowerName> = std::sync::LazyLock::new(|| {
    let reserved = format!("{}.{}.", crate::record::RESERVED_LABEL, crate::record::TLD);
    LowerName::new(&Name::from_ascii(reserved).expect("a valid name"))
});

fn check_answer(qname: &Name, qtype: RecordType, tld: &Name) -> NamingAnswer {
    let rdata = match qtype {
        RecordType::A => RData::A(std::net::Ipv4Addr::LOCALHOST.into()),
        RecordType::AAAA => RData::AAAA(std::net::Ipv6Addr::LOCALHOST.into()),
        _ => return nodata(soa_record(tld)),
    };
    positive(vec![Record::from_rdata(qname.clone(), 0, rdata)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn naming(records: &[(&str, &[&str])]) -> Naming {
        let mut map = BTreeMap::new();
        for (name, recs) in records {
            map.insert(
                name.to_string(),
                recs.iter().map(|r| r.to_string()).collect(),
            );
        }
        Naming::new(&NamingConfig {
            records: map,
            ..NamingConfig::default()
        })
        .unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[tokio::test]
    async fn answers_listed_records_and_keeps_letter_case() {
        let n = naming(&[("site.p2p", &["A 192.0.2.1", "A 192.0.2.2", "TXT \"hi\""])]);
        let a = n.lookup(&name("SiTe.P2p."), RecordType::A).await;
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 2);
        assert!(a.answers.iter().all(|r| r.name.eq_case(&name("SiTe.P2p."))));
        assert_eq!(a.answers[0].ttl, 300);
        let any = n.lookup(&name("site.p2p."), RecordType::ANY).await;
        assert_eq!(any.answers.len(), 3);
    }

    #[tokio::test]
    async fn the_check_name_is_answered_here_and_its_parent_is_reserved() {
        let n = naming(&[("p2pdns.p2p", &["A 192.0.2.9"])]);
        let a = n.lookup(&name("Check.P2pdns.p2p."), RecordType::A).await;
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(
            a.answers[0].data,
            RData::A(std::net::Ipv4Addr::LOCALHOST.into())
        );
        let aaaa = n.lookup(&name("check.p2pdns.p2p."), RecordType::AAAA).await;
        assert_eq!(
            aaaa.answers[0].data,
            RData::AAAA(std::net::Ipv6Addr::LOCALHOST.into())
        );
        let txt = n.lookup(&name("check.p2pdns.p2p."), RecordType::TXT).await;
        assert_eq!((txt.rcode, txt.answers.len()), (ResponseCode::NoError, 0));
        // Not even a local record can claim the reserved name.
        let parent = n.lookup(&name("p2pdns.p2p."), RecordType::A).await;
        assert_eq!(
            (parent.rcode, parent.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let other = n.lookup(&name("www.p2pdns.p2p."), RecordType::A).await;
        assert_eq!(other.rcode, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn negative_answers_carry_the_tld_soa() {
        let n = naming(&[("www.site.p2p", &["A 192.0.2.1"])]);
        let nx = n.lookup(&name("nope.p2p."), RecordType::A).await;
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(nx.authorities[0].name, name("p2p."));
        // Existing name, other type: NODATA.
        let nodata = n.lookup(&name("www.site.p2p."), RecordType::AAAA).await;
        assert_eq!(nodata.rcode, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities.len(), 1);
        // Empty non-terminal: NODATA, not NXDOMAIN.
        let ent = n.lookup(&name("site.p2p."), RecordType::A).await;
        assert_eq!(ent.rcode, ResponseCode::NoError);
        let apex = n.lookup(&name("p2p."), RecordType::SOA).await;
        assert_eq!(apex.answers[0].record_type(), RecordType::SOA);
    }

    #[tokio::test]
    async fn cnames_are_followed_within_local_names() {
        let n = naming(&[
            ("www.site.p2p", &["CNAME site"]),
            ("site.www.site.p2p", &["A 192.0.2.7"]),
            ("loop.p2p", &["CNAME loop.p2p."]),
        ]);
        let a = n.lookup(&name("www.site.p2p."), RecordType::A).await;
        assert_eq!(a.answers.len(), 2, "{a:?}");
        assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(a.answers[1].data, RData::A("192.0.2.7".parse().unwrap()));
        let looped = n.lookup(&name("loop.p2p."), RecordType::A).await;
        assert_eq!(looped.answers.len(), MAX_CNAME_CHAIN);
    }

    #[test]
    fn names_outside_the_tlds_are_rejected() {
        let mut records = BTreeMap::new();
        records.insert("example.com".to_owned(), vec!["A 192.0.2.1".to_owned()]);
        let Err(err) = Naming::new(&NamingConfig {
            records,
            ..NamingConfig::default()
        }) else {
            panic!("a name outside the TLDs was accepted");
        };
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("example.com"), "{chain}");
    }
}
