//! Special-use domain names (RFC 6761 and the IANA "Special-Use Domain Names" registry, plus the
//! locally served zones of RFC 6303): which ones this resolver answers itself, and how. The
//! rest of the registry (home.arpa, the private reverse zones, ipv4only.arpa, test, local...)
//! is forwarded like any name; README.md ("Special-use names") gives the table and the reasons.
//!
//! A zone answered here behaves like unbound's `static` local zones: its apex holds an SOA
//! (RFC 6303 section 3), the records listed for it are answered with AA=1, and every other
//! name in it is NXDOMAIN with that SOA, so clients cache the answer (RFC 2308). `localhost`
//! is a redirect: every name under it answers as `localhost.` does (RFC 6761 section 6.3).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use hickory_proto::{
    op::ResponseCode,
    rr::{
        LowerName, Name, RData, Record, RecordType,
        rdata::{NS, PTR, SOA},
    },
};

use crate::naming::NamingAnswer;

/// TTL of the records and SOA of the zones answered here (RFC 6303 section 3 uses 10800 s).
const LOCAL_TTL: u32 = 10_800;

/// How a zone of the table is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `localhost.` and every name under it: A 127.0.0.1 and AAAA ::1 (RFC 6761 section 6.3).
    Loopback,
    /// The reverse zone of a loopback address: its one name PTR `localhost.` (RFC 6303
    /// section 4.2 and 4.3).
    LoopbackReverse,
    /// A zone that exists nowhere: NXDOMAIN below the apex (RFC 6761 sections 6.4 and 6.5 of
    /// the registrations that ask for it, RFC 6303 section 4).
    Empty,
}

/// One zone answered here: its apex, how it is answered, and the RFC that asks for it.
struct Zone {
    apex: &'static str,
    kind: Kind,
    /// Users may have this zone forwarded instead (`dns.forward_special`): names a Tor or GNS
    /// resolver upstream answers. Loopback names are never forwarded.
    forwardable: bool,
}

const fn zone(apex: &'static str, kind: Kind, forwardable: bool) -> Zone {
    Zone {
        apex,
        kind,
        forwardable,
    }
}

/// The zones answered here. Kept in step with the README's table by a test.
const ZONES: &[Zone] = &[
    zone("localhost.", Kind::Loopback, false),
    zone("127.in-addr.arpa.", Kind::LoopbackReverse, false),
    zone(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
        Kind::LoopbackReverse,
        false,
    ),
    zone("invalid.", Kind::Empty, true),
    zone("onion.", Kind::Empty, true),
    zone("alt.", Kind::Empty, true),
    zone("resolver.arpa.", Kind::Empty, true),
    zone("eap-noob.arpa.", Kind::Empty, true),
    zone("0.in-addr.arpa.", Kind::Empty, true),
    zone("255.255.255.255.in-addr.arpa.", Kind::Empty, true),
    zone("2.0.192.in-addr.arpa.", Kind::Empty, true),
    zone("100.51.198.in-addr.arpa.", Kind::Empty, true),
    zone("113.0.203.in-addr.arpa.", Kind::Empty, true),
    zone("8.b.d.0.1.0.0.2.ip6.arpa.", Kind::Empty, true),
    zone(
        "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
        Kind::Empty,
        true,
    ),
];

/// The last labels of every zone in [`ZONES`]: names under other TLDs skip the table at once.
const TLDS: &[&[u8]] = &[b"localhost", b"arpa", b"invalid", b"onion", b"alt"];

/// `entry` of `dns.forward_special` is not a zone this resolver answers itself, or is one it
/// never forwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?} is not a special-use zone answered locally that may be forwarded (one of: {choices})"
)]
pub struct NotForwardable {
    /// The entry as written.
    pub entry: String,
    /// The zones that may be listed, comma-separated.
    pub choices: String,
}

/// Checks one `dns.forward_special` entry (a zone apex such as `onion` or `onion.`).
///
/// # Errors
/// [`NotForwardable`] when the entry names no zone of the table, or `localhost` and the loopback
/// reverse zones, which are always answered here.
pub fn check_forwardable(entry: &str) -> Result<(), NotForwardable> {
    let wanted = normalize(entry);
    if ZONES.iter().any(|z| z.forwardable && z.apex == wanted) {
        return Ok(());
    }
    let choices: Vec<&str> = ZONES
        .iter()
        .filter(|z| z.forwardable)
        .map(|z| z.apex.trim_end_matches('.'))
        .collect();
    Err(NotForwardable {
        entry: entry.to_owned(),
        choices: choices.join(", "),
    })
}

fn normalize(entry: &str) -> String {
    format!("{}.", entry.trim_end_matches('.').to_ascii_lowercase())
}

/// The special-use zones this resolver answers, less those the configuration forwards.
#[derive(Debug)]
pub struct SpecialUse {
    zones: HashMap<LowerName, Kind>,
}

impl SpecialUse {
    /// The zones of the README's table answered here, without the zones in `forward`
    /// (entries already checked with [`check_forwardable`]; others are ignored).
    pub fn new(forward: &[String]) -> Self {
        let forwarded: Vec<String> = forward.iter().map(|e| normalize(e)).collect();
        let zones = ZONES
            .iter()
            .filter(|z| !(z.forwardable && forwarded.iter().any(|f| f == z.apex)))
            .map(|z| (lower(z.apex), z.kind))
            .collect();
        Self { zones }
    }

    /// The local answer for `qtype` at `qname` (`name` is `qname` in lower case), or `None`
    /// when the name is not in a zone answered here and goes on to be resolved normally.
    pub fn answer(
        &self,
        name: &LowerName,
        qname: &Name,
        qtype: RecordType,
    ) -> Option<NamingAnswer> {
        let (kind, apex) = self.zone_of(name)?;
        Some(answer_in_zone(kind, &apex, qname, qtype))
    }

    /// Is `name` (lower case) in a zone answered here?
    pub fn covers(&self, name: &LowerName) -> bool {
        self.zone_of(name).is_some()
    }

    /// The zone answered here that holds `name`: how it is answered, and its apex.
    fn zone_of(&self, name: &LowerName) -> Option<(Kind, Name)> {
        let tld = name.iter().next_back()?;
        if !TLDS.iter().any(|t| t.eq_ignore_ascii_case(tld)) {
            return None;
        }
        let mut apex = Name::from(name);
        loop {
            if let Some(kind) = self.zones.get(&LowerName::new(&apex)) {
                return Some((*kind, apex));
            }
            if apex.num_labels() <= 1 {
                return None;
            }
            apex = apex.base_name();
        }
    }
}

fn lower(apex: &str) -> LowerName {
    LowerName::new(&Name::from_ascii(apex).expect("the table holds valid names"))
}

/// The answer to `qtype` at `qname` inside the zone at `apex`.
fn answer_in_zone(kind: Kind, apex: &Name, qname: &Name, qtype: RecordType) -> NamingAnswer {
    let at_apex = qname.num_labels() == apex.num_labels();
    let data: Vec<RData> = match kind {
        Kind::Loopback => vec![
            RData::A(Ipv4Addr::LOCALHOST.into()),
            RData::AAAA(Ipv6Addr::LOCALHOST.into()),
        ],
        Kind::LoopbackReverse if loopback_ptr(qname) => {
            vec![RData::PTR(PTR(localhost()))]
        }
        Kind::LoopbackReverse | Kind::Empty => Vec::new(),
    };
    let exists = at_apex || !data.is_empty() || kind == Kind::Loopback;
    if !exists {
        return negative(ResponseCode::NXDomain, apex);
    }
    let mut records: Vec<Record> = data
        .into_iter()
        .map(|d| Record::from_rdata(qname.clone(), LOCAL_TTL, d))
        .collect();
    if at_apex {
        records.push(Record::from_rdata(qname.clone(), LOCAL_TTL, soa(apex)));
        records.push(Record::from_rdata(
            qname.clone(),
            LOCAL_TTL,
            RData::NS(NS(apex.clone())),
        ));
    }
    records.retain(|r| qtype == RecordType::ANY || r.record_type() == qtype);
    if records.is_empty() {
        return negative(ResponseCode::NoError, apex);
    }
    NamingAnswer {
        answers: records,
        ..NamingAnswer::rcode(ResponseCode::NoError)
    }
}

/// Is `qname` the reverse name of 127.0.0.1 or ::1 (the one name of a loopback reverse zone)?
fn loopback_ptr(qname: &Name) -> bool {
    let text = qname.to_ascii().to_ascii_lowercase();
    text == "1.0.0.127.in-addr.arpa." || text == ZONES[2].apex
}

fn localhost() -> Name {
    Name::from_ascii("localhost.").expect("a valid name")
}

/// The zone's SOA as RFC 6303 section 3 writes it: the apex as MNAME, `nobody.invalid.` as
/// RNAME, 10800 s as negative TTL.
fn soa(apex: &Name) -> RData {
    let rname = Name::from_ascii("nobody.invalid.").expect("a valid name");
    RData::SOA(SOA::new(
        apex.clone(),
        rname,
        1,
        3600,
        1200,
        604_800,
        LOCAL_TTL,
    ))
}

/// NXDOMAIN or NODATA with the zone's SOA in the authority section (RFC 2308 section 3).
fn negative(rcode: ResponseCode, apex: &Name) -> NamingAnswer {
    NamingAnswer {
        authorities: vec![Record::from_rdata(apex.clone(), LOCAL_TTL, soa(apex))],
        ..NamingAnswer::rcode(rcode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(table: &SpecialUse, name: &str, qtype: RecordType) -> Option<NamingAnswer> {
        let qname = Name::from_ascii(name).unwrap();
        table.answer(&LowerName::new(&qname), &qname, qtype)
    }

    fn data(answer: &NamingAnswer) -> Vec<String> {
        answer.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn localhost_and_every_name_under_it_is_loopback() {
        let table = SpecialUse::new(&[]);
        for name in ["localhost.", "foo.localhost.", "a.b.LocalHost."] {
            let a = ask(&table, name, RecordType::A).unwrap();
            assert_eq!(data(&a), vec!["127.0.0.1"], "{name}");
            assert_eq!(a.answers[0].name.to_ascii(), name, "the question's case");
            let aaaa = ask(&table, name, RecordType::AAAA).unwrap();
            assert_eq!(data(&aaaa), vec!["::1"], "{name}");
            let mx = ask(&table, name, RecordType::MX).unwrap();
            assert_eq!((mx.rcode, mx.answers.len()), (ResponseCode::NoError, 0));
            assert_eq!(mx.authorities[0].record_type(), RecordType::SOA);
        }
        assert!(ask(&table, "localhost.example.", RecordType::A).is_none());
        assert!(ask(&table, "notlocalhost.", RecordType::A).is_none());
    }

    #[test]
    fn loopback_reverse_names_point_at_localhost_and_nothing_else_exists() {
        let table = SpecialUse::new(&[]);
        let ptr = ask(&table, "1.0.0.127.in-addr.arpa.", RecordType::PTR).unwrap();
        assert_eq!(data(&ptr), vec!["localhost."]);
        let six = ZONES[2].apex;
        assert_eq!(
            data(&ask(&table, six, RecordType::PTR).unwrap()),
            vec!["localhost."]
        );
        let other = ask(&table, "5.0.0.127.in-addr.arpa.", RecordType::PTR).unwrap();
        assert_eq!(other.rcode, ResponseCode::NXDomain);
        assert_eq!(
            other.authorities[0].name.to_ascii(),
            "127.in-addr.arpa.",
            "the zone's SOA"
        );
    }

    #[test]
    fn empty_zones_answer_nxdomain_below_their_apex_and_soa_at_it() {
        let table = SpecialUse::new(&[]);
        for name in [
            "foo.invalid.",
            "x.y.onion.",
            "gns.alt.",
            "_dns.resolver.arpa.",
        ] {
            let answer = ask(&table, name, RecordType::A).unwrap();
            assert_eq!(answer.rcode, ResponseCode::NXDomain, "{name}");
            assert_eq!(answer.authorities.len(), 1);
        }
        let apex = ask(&table, "invalid.", RecordType::SOA).unwrap();
        assert_eq!(apex.answers[0].record_type(), RecordType::SOA);
        let apex_a = ask(&table, "onion.", RecordType::A).unwrap();
        assert_eq!(
            (apex_a.rcode, apex_a.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let doc = ask(&table, "1.2.0.192.in-addr.arpa.", RecordType::PTR).unwrap();
        assert_eq!(doc.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn forwarded_names_are_left_alone() {
        let table = SpecialUse::new(&[]);
        for name in [
            "router.home.arpa.",
            "1.1.168.192.in-addr.arpa.",
            "ipv4only.arpa.",
            "printer.local.",
            "www.example.test.",
            "example.com.",
            "arpa.",
        ] {
            assert!(ask(&table, name, RecordType::A).is_none(), "{name}");
        }
        let tor = SpecialUse::new(&["onion".to_owned()]);
        assert!(ask(&tor, "x.onion.", RecordType::A).is_none());
        assert!(ask(&tor, "x.invalid.", RecordType::A).is_some());
    }

    #[test]
    fn only_forwardable_zones_may_be_configured() {
        assert!(check_forwardable("onion").is_ok());
        assert!(check_forwardable("Alt.").is_ok());
        let err = check_forwardable("localhost").unwrap_err();
        assert!(err.to_string().contains("onion"), "{err}");
        assert!(check_forwardable("com").is_err());
    }

    #[test]
    fn the_readme_table_lists_every_zone() {
        let readme = include_str!("../../README.md");
        for zone in ZONES {
            let apex = zone.apex.trim_end_matches('.');
            assert!(
                readme.contains(&format!("`{apex}`")),
                "README's special-use table lacks `{apex}`"
            );
        }
    }
}
