//! The `naming` subsystem: answers for names under the peer-to-peer TLDs (`.p2p` by default).
//!
//! The DNS front end only sees [`Naming::lookup`]; where the records come from is this module's
//! business: first the static table in the configuration (`[naming.records]`, [`LocalZone`]),
//! then, for `.p2p` only, the DHT of signed name records ([`Dht`]): this node's own names
//! ([`publisher`]), else a lookup ([`resolver`]) that believes the owners in [`pins`]. Other
//! TLDs in `naming.tlds` are answered from the local table alone. `answer` turns a set of
//! records into the answer an authoritative server would give (docs/PROTOCOL.md section 10),
//! [`Naming::lookup`] follows a CNAME chain from one source into the next, and `rebinding`
//! screens what came from the network. DHT lookups are shared fairly among the clients that
//! wait on them (`shares`, by [`Requester`]); answers that need none never wait for them. Why an answer is not plain data is an [`AnswerNote`],
//! which the DNS front end turns into an Extended DNS Error.
//!
//! This module owns TLD routing, the answers built from records, the published names and the
//! pins; it does not touch the libp2p swarm (it asks the P2P node through
//! [`crate::p2p::NodeHandle`]) nor DNS sockets.

mod answer;
mod dht;
mod local;
pub mod pins;
pub mod publisher;
pub mod pushes;
mod rebinding;
pub mod resolver;
mod shares;

use std::{future::Future, net::IpAddr, pin::Pin, sync::Arc};

use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, RData, Record, RecordType},
};

pub(crate) use answer::{Built, Origin, RecordSource, answer_from, nodata, positive, soa_record};
pub use dht::{Dht, DhtConfig};
pub use local::{LocalZone, RecordError, ZoneError, parse_record, parse_zone, presentation};
pub use rebinding::remove_private;
pub use shares::Requester;
pub(crate) use shares::{Share, Shares};

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
    /// An entry of `naming.allow_private_answers` is not a domain name.
    #[error("invalid config value naming.allow_private_answers: {entry:?} is not a domain name")]
    AllowPrivate {
        /// The entry as written.
        entry: String,
        /// Why it is not a name.
        #[source]
        source: hickory_proto::ProtoError,
    },
}

/// An answer from the naming subsystem, ready for the DNS front end.
#[derive(Debug, Clone, PartialEq)]
pub struct NamingAnswer {
    /// NOERROR (with or without records), NXDOMAIN, or SERVFAIL when no answer could be had
    /// (then [`NamingAnswer::note`] says why).
    pub rcode: ResponseCode,
    /// The answer section: the records of the asked type, preceded by the CNAMEs followed to
    /// them; the first owner name copies the query's letter case (docs/PROTOCOL.md section 10).
    pub answers: Vec<Record>,
    /// The TLD's SOA for negative answers, so clients can cache them (RFC 2308).
    pub authorities: Vec<Record>,
    /// The addresses of MX and SRV targets held by the same source (RFC 1034 section 4.3.2
    /// step 6).
    pub additionals: Vec<Record>,
    /// AA: every record comes from names this daemon answers itself (the local table, signed
    /// records). Cleared when an answer from upstream is appended (an ICANN CNAME target).
    pub authoritative: bool,
    /// Why the answer is not simply what the records say, for the Extended DNS Error
    /// (RFC 8914); `None` for a plain answer.
    pub note: Option<AnswerNote>,
    /// The answer holds data from the network and the question name may not have private
    /// addresses: anything appended from upstream (the target of a CNAME to an ICANN name)
    /// must pass [`remove_private`] too.
    pub screen_tail: bool,
    /// Some records came from signed name records (a DHT lookup, its cache, this node's own
    /// names): where the metrics count the answer.
    pub network: bool,
}

/// Why a `.p2p` answer is not simply what the records say. The DNS front end turns each into
/// an Extended DNS Error (RFC 8914); [`AnswerNote::text`] is its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerNote {
    /// SERVFAIL: the node has no DHT peer to ask (its routing table is empty).
    NotConnected,
    /// SERVFAIL: DHT peers were asked and none of them answered.
    NoPeerAnswered,
    /// SERVFAIL: the DHT gave no answer within the lookup budget.
    Timeout,
    /// SERVFAIL: too many DHT lookups are in flight.
    Busy,
    /// SERVFAIL: the P2P node is not running (the daemon is stopping).
    NodeStopped,
    /// SERVFAIL: the DHT only had records by other keys than the name's pinned owner.
    PinnedOwnerMissing,
    /// SERVFAIL: a tunnelled name whose port this machine cannot listen on.
    TunnelListen,
    /// SERVFAIL: a tunnelled name without a local address.
    TunnelAddress,
    /// SERVFAIL: the CNAME's target, an ICANN name, could not be resolved upstream.
    TargetFailed,
    /// Private addresses were removed from the answer (DNS rebinding protection).
    PrivateRemoved,
}

impl AnswerNote {
    /// The Extended DNS Error text.
    pub fn text(self) -> &'static str {
        match self {
            Self::NotConnected => "not connected to the p2p network: this node has no peers",
            Self::NoPeerAnswered => "no peer of the p2p network answered; try again",
            Self::Timeout => "no answer from the p2p network in time; try again",
            Self::Busy => "too many p2p lookups in flight",
            Self::NodeStopped => "the p2p node is not running",
            Self::PinnedOwnerMissing => {
                "only records by other keys than the pinned owner were found; see p2pdns pins"
            }
            Self::TunnelListen => {
                "a tunnelled name whose port this machine cannot listen on; see p2pdns tunnels"
            }
            Self::TunnelAddress => "no local address for a tunnelled name; see the daemon's log",
            Self::TargetFailed => "the CNAME's target did not resolve upstream",
            Self::PrivateRemoved => {
                "private addresses removed (DNS rebinding protection); see naming.allow_private_answers"
            }
        }
    }
}

/// The state of one question's CNAME chain across sources.
struct Chase {
    /// Names the chain has passed, lower case.
    seen: Vec<LowerName>,
    /// Part of the chain came from a signed record.
    network: bool,
    /// The question name may have private addresses (`naming.allow_private_answers`).
    private_ok: bool,
    /// Whose question it is, for the share of DHT lookups it may hold.
    requester: Requester,
}

/// The naming subsystem's handle.
pub struct Naming {
    tlds: Vec<LowerName>,
    local: LocalZone,
    /// Names (and their subdomains) whose answers may hold private addresses.
    allow_private: Vec<LowerName>,
    dht: Option<Arc<Dht>>,
}

impl Naming {
    /// The naming subsystem for `config`'s TLDs and local records, without a DHT yet (see
    /// [`Naming::with_dht`]).
    ///
    /// # Errors
    /// [`NamingError::Record`] when an owner or record in `[naming.records]` is invalid or lies
    /// outside the TLDs; [`NamingError::AllowPrivate`] for an entry of
    /// `naming.allow_private_answers` that is not a domain name.
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
        let allow_private = config
            .allow_private_answers
            .iter()
            .map(|entry| {
                Name::from_ascii(entry)
                    .map(|name| LowerName::new(&name))
                    .map_err(|source| NamingError::AllowPrivate {
                        entry: entry.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            tlds,
            local,
            allow_private,
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

    /// A count that grows whenever this node's own names change ([`publisher::Publisher::changes`]); the
    /// local names of the configuration never change while it runs. Records of other nodes are
    /// not counted: the DNS front end sends an answer made from them again for a second at
    /// most.
    pub fn changes(&self) -> u64 {
        self.dht.as_ref().map_or(0, |dht| dht.publisher().changes())
    }

    /// Number of local names configured.
    pub fn local_names(&self) -> usize {
        self.local.len()
    }

    /// Answers `qtype` for `qname` to this machine's user (the control socket): as
    /// [`Naming::lookup_for`], with the operator's own share of DHT lookups.
    pub async fn lookup(&self, qname: &Name, qtype: RecordType) -> NamingAnswer {
        self.lookup_as(qname, qtype, Requester::Operator).await
    }

    /// Answers `qtype` for `qname` to the DNS client at `client` (docs/PROTOCOL.md section
    /// 10). `qname` keeps the client's letter case, which the answer's first owner names copy.
    /// Local records win over the DHT; a CNAME chain that leaves one source goes on in the one
    /// that holds its target, as long as that is under our TLDs. Addresses from the network
    /// are screened for DNS rebinding unless `naming.allow_private_answers` lists `qname`.
    /// DHT lookups the question needs take a share of the capacity the clients share
    /// ([`Requester::dns`]).
    pub async fn lookup_for(
        &self,
        qname: &Name,
        qtype: RecordType,
        client: IpAddr,
    ) -> NamingAnswer {
        self.lookup_as(qname, qtype, Requester::dns(client)).await
    }

    async fn lookup_as(
        &self,
        qname: &Name,
        qtype: RecordType,
        requester: Requester,
    ) -> NamingAnswer {
        let lower = LowerName::new(qname);
        let mut chase = Chase {
            seen: Vec::new(),
            network: false,
            private_ok: self.allow_private.iter().any(|a| a.zone_of(&lower)),
            requester,
        };
        let mut answer = self.chain(qname, qtype, &mut chase).await;
        answer.screen_tail = chase.network && !chase.private_ok;
        answer.network = chase.network;
        answer
    }

    /// The answer from the source that holds `qname`, completed by the sources that hold the
    /// targets of CNAMEs leaving it.
    fn chain<'a>(
        &'a self,
        qname: &'a Name,
        qtype: RecordType,
        chase: &'a mut Chase,
    ) -> Pin<Box<dyn Future<Output = NamingAnswer> + Send + 'a>> {
        Box::pin(async move {
            let Built {
                mut answer,
                exit,
                origin,
            } = self
                .step(qname, qtype, &mut chase.seen, chase.requester)
                .await;
            chase.network |= origin == Origin::Network;
            // A tunnel's local address leads to the tunnel only, never into the user's
            // network: it needs no screening.
            if chase.network && !chase.private_ok && origin != Origin::Tunnel {
                rebinding::screen(&mut answer, qtype, qname);
            }
            let Some(target) = exit.filter(|t| self.is_local(&LowerName::new(t))) else {
                return answer;
            };
            let mut tail = self.chain(&target, qtype, chase).await;
            if tail.rcode == ResponseCode::ServFail {
                return tail;
            }
            answer.answers.append(&mut tail.answers);
            tail.answers = answer.answers;
            tail.authoritative &= answer.authoritative;
            tail.note = tail.note.or(answer.note);
            tail
        })
    }

    /// The answer of the one source that holds `qname`, for `requester`.
    async fn step(
        &self,
        qname: &Name,
        qtype: RecordType,
        seen: &mut Vec<LowerName>,
        requester: Requester,
    ) -> Built {
        let lower = LowerName::new(qname);
        let Some(tld) = self.tld_of(&lower) else {
            // The front end only routes names under our TLDs here.
            return Built::done(NamingAnswer::rcode(ResponseCode::Refused), Origin::Local);
        };
        let tld = Name::from(tld);
        if lower == LowerName::new(&tld) {
            let soa = soa_record(&tld);
            let answer = if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                positive(vec![soa])
            } else {
                nodata(soa)
            };
            return Built::done(answer, Origin::Local);
        }
        if RESERVED_NAME.zone_of(&lower) {
            return Built::done(reserved_answer(qname, qtype, &tld), Origin::Local);
        }
        if self.local.covers(&lower) {
            return answer_from(&self.local, qname, qtype, &tld, seen);
        }
        match &self.dht {
            Some(dht) if tld.to_ascii() == format!("{}.", crate::record::TLD) => {
                dht.answer(qname, qtype, &tld, seen, requester).await
            }
            _ => answer_from(&self.local, qname, qtype, &tld, seen),
        }
    }
}

impl NamingAnswer {
    /// An answer with `rcode` and no records, authoritative, without a note.
    pub(crate) fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            authoritative: true,
            note: None,
            screen_tail: false,
            network: false,
        }
    }

    /// SERVFAIL because of `note`.
    pub(crate) fn failed(note: AnswerNote) -> Self {
        Self {
            note: Some(note),
            ..Self::rcode(ResponseCode::ServFail)
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

/// The answers under the reserved name: the check name is the only name in its subtree.
fn reserved_answer(qname: &Name, qtype: RecordType, tld: &Name) -> NamingAnswer {
    let lower = LowerName::new(qname);
    if lower == *CHECK_NAME {
        return check_answer(qname, qtype, tld);
    }
    let soa = soa_record(tld);
    if CHECK_NAME.zone_of(&lower) || lower == *RESERVED_NAME {
        nodata(soa)
    } else {
        NamingAnswer {
            authorities: vec![soa],
            ..NamingAnswer::rcode(ResponseCode::NXDomain)
        }
    }
}

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
    use super::answer::MAX_CNAME_CHAIN;
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
            ("a.p2p", &["CNAME b.p2p."]),
            ("b.p2p", &["CNAME c.p2p."]),
            ("c.p2p", &["CNAME a.p2p."]),
            ("long.p2p", &["CNAME l1.p2p."]),
            ("l1.p2p", &["CNAME l2.p2p."]),
            ("l2.p2p", &["CNAME l3.p2p."]),
            ("l3.p2p", &["CNAME l4.p2p."]),
            ("l4.p2p", &["CNAME l5.p2p."]),
            ("l5.p2p", &["CNAME l6.p2p."]),
            ("l6.p2p", &["CNAME l7.p2p."]),
            ("l7.p2p", &["CNAME l8.p2p."]),
            ("l8.p2p", &["A 192.0.2.8"]),
        ]);
        let a = n.lookup(&name("www.site.p2p."), RecordType::A).await;
        assert_eq!(a.answers.len(), 2, "{a:?}");
        assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(a.answers[1].data, RData::A("192.0.2.7".parse().unwrap()));
        // A loop: each CNAME once, then the chain stops (as nsd answers it).
        let looped = n.lookup(&name("loop.p2p."), RecordType::A).await;
        assert_eq!(
            (looped.rcode, looped.answers.len()),
            (ResponseCode::NoError, 1)
        );
        let looped = n.lookup(&name("a.p2p."), RecordType::A).await;
        assert_eq!(looped.answers.len(), 3, "{looped:?}");
        // A chain stops after MAX_CNAME_CHAIN names.
        let long = n.lookup(&name("long.p2p."), RecordType::A).await;
        assert_eq!(long.answers.len(), MAX_CNAME_CHAIN, "{long:?}");
        assert!(
            long.answers
                .iter()
                .all(|r| r.record_type() == RecordType::CNAME)
        );
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
