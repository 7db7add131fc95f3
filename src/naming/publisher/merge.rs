//! Adding resource records to those a name holds, as a DNS UPDATE adds them (RFC 2136 section
//! 3.4.2.2, what `nsupdate add` does): an RR already present (same owner name, class, type and
//! RDATA, RFC 2136 section 1.1.1: the TTL is not compared) is not added twice, and an added
//! RR's TTL becomes the TTL of its whole RRset (RFC 2181 section 5.2 wants one TTL per RRset).
//! An added CNAME replaces the CNAME its owner name held. Nothing else is refused here: the
//! result goes through the publisher's checks ([`crate::record::tidy`]) like any other.

use hickory_proto::rr::{Record, RecordType};

/// `held` with `added` added: the records, and whether they differ from `held` (a record
/// added, or a TTL changed).
pub(super) fn add(held: &[Record], added: Vec<Record>) -> (Vec<Record>, bool) {
    let mut merged = held.to_vec();
    let mut changed = false;
    for new in added {
        if new.record_type() == RecordType::CNAME {
            let before = merged.len();
            merged.retain(|r| {
                !(r.record_type() == RecordType::CNAME && r.name == new.name) || *r == new
            });
            changed |= merged.len() != before;
        }
        for same_set in merged.iter_mut().filter(|r| same_rrset(r, &new)) {
            if same_set.ttl != new.ttl {
                same_set.ttl = new.ttl;
                changed = true;
            }
        }
        if !merged.contains(&new) {
            merged.push(new);
            changed = true;
        }
    }
    (merged, changed)
}

/// Whether `a` and `b` are of one RRset: owner name (without regard to case), class and type.
fn same_rrset(a: &Record, b: &Record) -> bool {
    a.name == b.name && a.dns_class == b.dns_class && a.record_type() == b.record_type()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RData, rdata::CNAME};

    fn a(owner: &str, ip: &str, ttl: u32) -> Record {
        let name = Name::from_ascii(owner).unwrap();
        Record::from_rdata(name, ttl, RData::A(ip.parse().unwrap()))
    }

    fn cname(owner: &str, target: &str) -> Record {
        let name = Name::from_ascii(owner).unwrap();
        let target = CNAME(Name::from_ascii(target).unwrap());
        Record::from_rdata(name, 300, RData::CNAME(target))
    }

    /// (owner, RDATA, TTL) of each record, to compare TTLs too (`Record`'s `==` leaves them out).
    fn shown(records: &[Record]) -> Vec<(String, String, u32)> {
        records
            .iter()
            .map(|r| (r.name.to_ascii(), r.data.to_string(), r.ttl))
            .collect()
    }

    /// RFC 2136 section 3.4.2.2: a present RR is not added again, and the TTL given becomes
    /// the whole RRset's. Before, `publish ttlx A 203.0.113.1 --ttl 120` kept TTL 60 and
    /// adding another A with TTL 120 was refused for "different TTLs".
    #[test]
    fn an_added_ttl_becomes_the_rrsets() {
        let held = vec![
            a("ttlx.p2p.", "203.0.113.1", 60),
            a("www.ttlx.p2p.", "203.0.113.9", 60),
        ];
        let (merged, changed) = add(&held, vec![a("TTLX.p2p.", "203.0.113.1", 120)]);
        assert!(changed);
        assert_eq!(
            shown(&merged),
            shown(&[
                a("ttlx.p2p.", "203.0.113.1", 120),
                a("www.ttlx.p2p.", "203.0.113.9", 60)
            ])
        );
        let (merged, changed) = add(&held, vec![a("ttlx.p2p.", "203.0.113.2", 120)]);
        assert!(changed);
        assert_eq!(
            shown(&merged),
            shown(&[
                a("ttlx.p2p.", "203.0.113.1", 120),
                a("www.ttlx.p2p.", "203.0.113.9", 60),
                a("ttlx.p2p.", "203.0.113.2", 120)
            ])
        );
        let (merged, changed) = add(&held, vec![a("ttlx.p2p.", "203.0.113.1", 60)]);
        assert!(!changed, "the same RR with the same TTL changes nothing");
        assert_eq!(shown(&merged), shown(&held));
    }

    /// An added CNAME takes the place of the one its name held (RFC 2136 section 3.4.2.2).
    #[test]
    fn an_added_cname_replaces_the_names_cname() {
        let held = vec![
            cname("www.s.p2p.", "a.example."),
            a("s.p2p.", "192.0.2.1", 300),
        ];
        let (merged, changed) = add(&held, vec![cname("www.s.p2p.", "b.example.")]);
        assert!(changed);
        assert_eq!(
            shown(&merged),
            shown(&[
                a("s.p2p.", "192.0.2.1", 300),
                cname("www.s.p2p.", "b.example.")
            ])
        );
        let (_, changed) = add(&merged, vec![cname("www.s.p2p.", "b.example.")]);
        assert!(!changed);
    }
}
