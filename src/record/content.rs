//! What a publisher checks in the resource records of a name record before it signs them
//! (docs/PROTOCOL.md section 10.1): the rules an authoritative server applies when it loads a
//! zone, so that every record answers the way an authoritative server holding it would.
//! Storage nodes do not apply them (section 5 is the whole of validity); resolvers answer
//! records that break them by the fixed rules of section 10.2.

use std::collections::BTreeMap;

use hickory_proto::rr::{LowerName, Record, RecordType};

/// Why resource records cannot be published together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// A name holds a CNAME beside other data (RFC 1034 section 3.6.2, RFC 2181 section 10.1).
    #[error(
        "{name} has a CNAME and {other} records; a CNAME must stand alone at its name \
         (RFC 1034 section 3.6.2): move the other records to the CNAME's target"
    )]
    CnameAndOther {
        /// The owner name.
        name: String,
        /// The first other type found there.
        other: RecordType,
    },
    /// A name holds more than one CNAME (RFC 2181 section 10.1).
    #[error(
        "{name} has {count} CNAMEs; a name is an alias of one name only (RFC 2181 section 10.1)"
    )]
    SeveralCnames {
        /// The owner name.
        name: String,
        /// How many different CNAMEs it holds.
        count: usize,
    },
    /// The records of one RRset carry different TTLs (RFC 2181 section 5.2).
    #[error(
        "the {rtype} records of {name} have different TTLs ({ttls}); an RRset has one TTL \
         (RFC 2181 section 5.2): give them the same one"
    )]
    TtlMismatch {
        /// The owner name.
        name: String,
        /// The RRset's type.
        rtype: RecordType,
        /// The TTLs found, in seconds, lowest first: `60 s, 300 s`.
        ttls: String,
    },
    /// A DNAME, which resolvers answer as plain data only (docs/PROTOCOL.md section 10.2).
    #[error(
        "{name} has a DNAME; resolvers do not rewrite names below a DNAME in a name record \
         (docs/PROTOCOL.md section 10): use a CNAME for each name, or a wildcard CNAME"
    )]
    Dname {
        /// The owner name.
        name: String,
    },
}

/// The resource records as they are signed: checked, with exact duplicates dropped (RFC 2181
/// section 5: an RRset holds each RR once; equality ignores the TTL and the letter case of
/// names). Order is kept otherwise.
///
/// # Errors
/// [`ContentError`] for a CNAME beside other data or beside another CNAME, an RRset with
/// several TTLs (a duplicate with another TTL counts), or a DNAME.
pub fn tidy(records: Vec<Record>) -> Result<Vec<Record>, ContentError> {
    let mut by_name: BTreeMap<LowerName, Vec<&Record>> = BTreeMap::new();
    for record in &records {
        by_name
            .entry(LowerName::new(&record.name))
            .or_default()
            .push(record);
    }
    for (name, at) in &by_name {
        check_name(&name.to_string(), at)?;
    }
    let mut kept: Vec<Record> = Vec::with_capacity(records.len());
    for record in records {
        if !kept.contains(&record) {
            kept.push(record);
        }
    }
    Ok(kept)
}

/// The rules for the records `at` one owner `name`.
fn check_name(name: &str, at: &[&Record]) -> Result<(), ContentError> {
    let mut ttls: BTreeMap<RecordType, Vec<u32>> = BTreeMap::new();
    for record in at {
        let rtype = record.record_type();
        if rtype == RecordType::DNAME {
            return Err(ContentError::Dname { name: name.into() });
        }
        ttls.entry(rtype).or_default().push(record.ttl);
    }
    if ttls.contains_key(&RecordType::CNAME) {
        if let Some(&other) = ttls.keys().find(|t| **t != RecordType::CNAME) {
            return Err(ContentError::CnameAndOther {
                name: name.into(),
                other,
            });
        }
        let mut cnames: Vec<&Record> = Vec::new();
        for record in at {
            if !cnames.contains(record) {
                cnames.push(record);
            }
        }
        if cnames.len() > 1 {
            return Err(ContentError::SeveralCnames {
                name: name.into(),
                count: cnames.len(),
            });
        }
    }
    for (rtype, mut ttls) in ttls {
        ttls.sort_unstable();
        ttls.dedup();
        if ttls.len() > 1 {
            let ttls: Vec<String> = ttls.iter().map(|t| format!("{t} s")).collect();
            return Err(ContentError::TtlMismatch {
                name: name.into(),
                rtype,
                ttls: ttls.join(", "),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RData, rdata::CNAME};

    fn a(name: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(ip.parse().unwrap()),
        )
    }

    fn cname(name: &str, target: &str) -> Record {
        let target = CNAME(Name::from_ascii(target).unwrap());
        Record::from_rdata(Name::from_ascii(name).unwrap(), 300, RData::CNAME(target))
    }

    #[test]
    fn duplicates_are_dropped_and_order_is_kept() {
        let records = vec![
            a("site.p2p.", 300, "192.0.2.2"),
            a("SITE.p2p.", 300, "192.0.2.1"),
            a("site.p2p.", 300, "192.0.2.2"),
            cname("www.site.p2p.", "site.p2p."),
            cname("www.site.p2p.", "SITE.P2P."),
        ];
        let kept = tidy(records).unwrap();
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert_eq!(kept[0].data, RData::A("192.0.2.2".parse().unwrap()));
        assert_eq!(kept[1].data, RData::A("192.0.2.1".parse().unwrap()));
        assert!(
            tidy(Vec::new()).unwrap().is_empty(),
            "a record may hold no RR"
        );
    }

    #[test]
    fn what_an_authoritative_server_would_not_load_is_refused() {
        let refused = |records: Vec<Record>| tidy(records).unwrap_err().to_string();
        let err = refused(vec![
            a("www.site.p2p.", 300, "192.0.2.1"),
            cname("WWW.site.p2p.", "site.p2p."),
        ]);
        assert!(
            err.contains("www.site.p2p. has a CNAME and A records"),
            "{err}"
        );
        let err = refused(vec![
            cname("www.site.p2p.", "a.site.p2p."),
            cname("www.site.p2p.", "b.site.p2p."),
        ]);
        assert!(err.contains("has 2 CNAMEs"), "{err}");
        let err = refused(vec![
            a("site.p2p.", 300, "192.0.2.1"),
            a("site.p2p.", 60, "192.0.2.2"),
        ]);
        assert!(err.contains("different TTLs (60 s, 300 s)"), "{err}");
        // The same RR twice with two TTLs is one RRset with two TTLs.
        let err = refused(vec![
            a("site.p2p.", 300, "192.0.2.1"),
            a("site.p2p.", 60, "192.0.2.1"),
        ]);
        assert!(err.contains("different TTLs"), "{err}");
        // hickory has no DNAME type: one read from the wire is kept as unknown data.
        let dname = Record::from_rdata(
            Name::from_ascii("old.site.p2p.").unwrap(),
            300,
            RData::Unknown {
                code: RecordType::DNAME,
                rdata: hickory_proto::rr::rdata::NULL::with(b"\x04site\x03p2p\x00".to_vec()),
            },
        );
        assert!(refused(vec![dname]).contains("DNAME"));
        // The same TTL at other names, or other types, is no concern.
        tidy(vec![
            a("site.p2p.", 300, "192.0.2.1"),
            a("www.site.p2p.", 60, "192.0.2.1"),
            cname("*.site.p2p.", "site.p2p."),
        ])
        .unwrap();
    }
}
