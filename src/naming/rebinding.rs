//! DNS rebinding protection: an answer that holds data from the network (a signed record, or
//! an upstream answer reached through one) never points a browser at the user's own network
//! unless `naming.allow_private_answers` lists the question name (docs/PROTOCOL.md section
//! 10.4). What this machine configured itself (the local table) is not screened.

use std::net::IpAddr;

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};
use tracing::debug;

use super::{AnswerNote, NamingAnswer, soa_record};
use crate::p2p::{Scope, ip_scope};

/// Removes the A and AAAA records holding loopback, private, shared (CGNAT), link-local,
/// unspecified or broadcast addresses. Returns whether any were removed.
pub fn remove_private(records: &mut Vec<Record>) -> bool {
    let before = records.len();
    records.retain(|r| !is_private_answer(r));
    records.len() < before
}

/// Screens a `.p2p` answer for `qtype` at `qname`: private addresses leave the answer and
/// additional sections, the answer says so ([`AnswerNote::PrivateRemoved`]), and an answer left
/// without data of the asked type is NODATA with the SOA of `qname`'s TLD.
pub(super) fn screen(answer: &mut NamingAnswer, qtype: RecordType, qname: &Name) {
    remove_private(&mut answer.additionals);
    if !remove_private(&mut answer.answers) {
        return;
    }
    debug!(name = %qname, "removed private addresses from a .p2p answer (DNS rebinding protection)");
    answer.note = Some(AnswerNote::PrivateRemoved);
    let answered =
        qtype == RecordType::ANY || answer.answers.iter().any(|r| r.record_type() == qtype);
    if !answered && answer.rcode == ResponseCode::NoError && answer.authorities.is_empty() {
        answer.authorities.push(soa_record(&qname.trim_to(1)));
    }
}

/// Is `record` an address a `.p2p` name must not lead to unless allowed?
fn is_private_answer(record: &Record) -> bool {
    let ip: IpAddr = match &record.data {
        RData::A(a) => IpAddr::V4(a.0),
        RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
        _ => return false,
    };
    let ip = ip.to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    ip_scope(ip) != Scope::Global || ip.is_unspecified() || broadcast
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognized() {
        let name = Name::from_ascii("x.p2p.").unwrap();
        let a = |ip: &str| Record::from_rdata(name.clone(), 60, RData::A(ip.parse().unwrap()));
        let aaaa =
            |ip: &str| Record::from_rdata(name.clone(), 60, RData::AAAA(ip.parse().unwrap()));
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private_answer(&a(private)), "{private}");
        }
        for private in ["::1", "fd00::1", "fe80::1", "::ffff:192.168.1.1"] {
            assert!(is_private_answer(&aaaa(private)), "{private}");
        }
        assert!(!is_private_answer(&a("192.0.2.1")));
        assert!(!is_private_answer(&aaaa("2001:db8::1")));
    }

    #[test]
    fn a_screened_answer_without_data_is_nodata() {
        let name = Name::from_ascii("Site.p2p.").unwrap();
        let a = |ip: &str| Record::from_rdata(name.clone(), 60, RData::A(ip.parse().unwrap()));
        let mut mixed = super::super::positive(vec![a("192.168.1.1"), a("192.0.2.1")]);
        screen(&mut mixed, RecordType::A, &name);
        assert_eq!(mixed.answers, vec![a("192.0.2.1")]);
        assert_eq!(mixed.note, Some(AnswerNote::PrivateRemoved));
        assert!(mixed.authorities.is_empty());
        let mut private = super::super::positive(vec![a("10.0.0.1")]);
        screen(&mut private, RecordType::A, &name);
        assert!(private.answers.is_empty());
        assert_eq!(private.rcode, ResponseCode::NoError);
        assert_eq!(
            private.authorities[0].name,
            Name::from_ascii("p2p.").unwrap()
        );
        let mut public = super::super::positive(vec![a("192.0.2.1")]);
        screen(&mut public, RecordType::A, &name);
        assert_eq!(public.note, None);
    }
}
