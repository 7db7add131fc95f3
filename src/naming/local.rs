//! Local names: records given in zone-file syntax, held in memory.

use std::collections::{HashMap, HashSet};

use hickory_proto::{
    rr::{LowerName, Name, Record, RecordType},
    serialize::txt::Parser,
};

/// Errors in a local record.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The owner is not a valid domain name.
    #[error("{name:?} is not a domain name")]
    Name {
        /// The owner as written.
        name: String,
        /// Why hickory refused it (bad label, too long).
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// The owner is not under one of the peer-to-peer TLDs.
    #[error("{name} is not under one of the TLDs in naming.tlds")]
    OutsideTlds {
        /// The owner, fully qualified.
        name: String,
    },
    /// A record did not parse as `[TTL] TYPE RDATA`, or a zone file did not parse.
    #[error("record {record:?} does not parse as \"[TTL] TYPE RDATA\": {message}")]
    Record {
        /// The record's text as given, or `zone file` for a whole zone ([`parse_zone`]).
        record: String,
        /// The parser's message, or why the text was refused (several lines, `$INCLUDE`).
        message: String,
    },
    /// The owner has a CNAME beside other data (RFC 1034 section 3.6.2 forbids it).
    #[error("{name} has a CNAME and other records; a CNAME must stand alone")]
    CnameAndOther {
        /// The owner, fully qualified.
        name: String,
    },
}

/// Records by owner name, with every ancestor remembered so empty non-terminals answer NODATA.
#[derive(Debug, Default)]
pub struct LocalZone {
    names: HashMap<LowerName, Vec<Record>>,
    ancestors: HashSet<LowerName>,
}

impl LocalZone {
    /// Adds `records` (zone-file syntax, names relative to `owner`) under `owner`.
    pub fn add(
        &mut self,
        owner: &str,
        records: &[String],
        default_ttl: u32,
        tlds: &[LowerName],
    ) -> Result<(), ZoneError> {
        let name = parse_owner(owner)?;
        let lower = LowerName::new(&name);
        if !tlds.iter().any(|tld| tld.zone_of(&lower) && *tld != lower) {
            return Err(ZoneError::OutsideTlds {
                name: name.to_ascii(),
            });
        }
        let mut parsed = Vec::with_capacity(records.len());
        for text in records {
            parsed.extend(parse_record(&name, text, default_ttl)?);
        }
        let has_cname = parsed.iter().any(|r| r.record_type() == RecordType::CNAME);
        if has_cname && parsed.len() > 1 {
            return Err(ZoneError::CnameAndOther {
                name: name.to_ascii(),
            });
        }
        let mut ancestor = name.base_name();
        while !ancestor.is_root() {
            self.ancestors.insert(LowerName::new(&ancestor));
            ancestor = ancestor.base_name();
        }
        self.names.entry(lower).or_default().extend(parsed);
        Ok(())
    }

    /// The records owned by exactly `name`, if it has any.
    pub fn get(&self, name: &LowerName) -> Option<&[Record]> {
        self.names.get(name).map(Vec::as_slice)
    }

    /// Does a name below `name` hold records?
    pub fn has_descendants(&self, name: &LowerName) -> bool {
        self.ancestors.contains(name)
    }

    /// Are answers for `name` ours to give: does it, a name above it or one below it hold
    /// local records? (Local names shadow the network, subdomains included.)
    pub fn covers(&self, name: &LowerName) -> bool {
        if self.ancestors.contains(name) {
            return true;
        }
        let mut name = Name::from(name);
        while !name.is_root() {
            if self.names.contains_key(&LowerName::new(&name)) {
                return true;
            }
            name = name.base_name();
        }
        false
    }

    /// Number of owner names holding records.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Holds no local names at all?
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn parse_owner(owner: &str) -> Result<Name, ZoneError> {
    let mut name = Name::from_ascii(owner).map_err(|source| ZoneError::Name {
        name: owner.to_owned(),
        source,
    })?;
    name.set_fqdn(true);
    Ok(name)
}

/// Parses a zone file (RFC 1035 syntax) with `origin` as `$ORIGIN`, for publishing.
/// `$INCLUDE` is refused: the text comes from a client and must not make the daemon read files.
pub fn parse_zone(origin: &Name, text: &str, default_ttl: u32) -> Result<Vec<Record>, ZoneError> {
    let error = |message: String| ZoneError::Record {
        record: "zone file".to_owned(),
        message,
    };
    if text.to_ascii_uppercase().contains("$INCLUDE") {
        return Err(error("$INCLUDE is not allowed".into()));
    }
    let zone = format!("$TTL {default_ttl}\n{text}\n");
    let (_, sets) = Parser::new(zone, None, Some(origin.clone()))
        .parse()
        .map_err(|e| error(e.to_string()))?;
    Ok(sets
        .into_values()
        .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
        .collect())
}

/// Parses one `[TTL] TYPE RDATA` line through hickory's zone-file parser, owned by `owner`,
/// which is also the origin for relative names. A TTL left out is `default_ttl` seconds.
///
/// # Errors
/// [`ZoneError::Record`] when the text spans lines, holds a directive, does not parse or holds
/// no record.
pub fn parse_record(owner: &Name, text: &str, default_ttl: u32) -> Result<Vec<Record>, ZoneError> {
    let error = |message: String| ZoneError::Record {
        record: text.to_owned(),
        message,
    };
    if text.contains(['\n', '\r', '$']) {
        return Err(error("a record is a single line without directives".into()));
    }
    let zone = format!("$TTL {default_ttl}\n@ {text}\n");
    let (_, sets) = Parser::new(zone, None, Some(owner.clone()))
        .parse()
        .map_err(|e| error(e.to_string()))?;
    let records: Vec<Record> = sets
        .into_values()
        .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
        .collect();
    if records.is_empty() {
        return Err(error("no record found".into()));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RData;

    fn tlds() -> Vec<LowerName> {
        vec![LowerName::new(&Name::from_ascii("p2p.").unwrap())]
    }

    #[test]
    fn parses_common_types() {
        let owner = parse_owner("site.p2p").unwrap();
        for (text, rtype) in [
            ("A 192.0.2.1", RecordType::A),
            ("AAAA 2001:db8::1", RecordType::AAAA),
            ("CNAME other.p2p.", RecordType::CNAME),
            ("TXT \"hello world\" \"two\"", RecordType::TXT),
            ("MX 10 mail", RecordType::MX),
            ("SRV 0 5 443 web.site.p2p.", RecordType::SRV),
            ("CAA 0 issue \"letsencrypt.org\"", RecordType::CAA),
            ("HTTPS 1 . alpn=h2", RecordType::HTTPS),
            ("60 IN A 192.0.2.9", RecordType::A),
        ] {
            let records = parse_record(&owner, text, 300).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(records[0].record_type(), rtype, "{text}");
        }
        let mx = parse_record(&owner, "MX 10 mail", 300).unwrap();
        let RData::MX(mx) = &mx[0].data else { panic!() };
        assert_eq!(mx.exchange, Name::from_ascii("mail.site.p2p.").unwrap());
        let ttl = parse_record(&owner, "60 A 192.0.2.9", 300).unwrap();
        assert_eq!(ttl[0].ttl, 60);
    }

    #[test]
    fn rejects_bad_records() {
        let mut zone = LocalZone::default();
        for bad in [
            "A 999.1.1.1",
            "BOGUS x",
            "",
            "A 192.0.2.1\n$INCLUDE /etc/passwd",
        ] {
            assert!(
                zone.add("x.p2p", &[bad.to_owned()], 300, &tlds()).is_err(),
                "{bad:?} was accepted"
            );
        }
        let err = zone
            .add(
                "c.p2p",
                &["CNAME a.p2p.".to_owned(), "A 192.0.2.1".to_owned()],
                300,
                &tlds(),
            )
            .unwrap_err();
        assert!(matches!(err, ZoneError::CnameAndOther { .. }));
        assert!(
            zone.add("p2p", &["A 192.0.2.1".to_owned()], 300, &tlds())
                .is_err()
        );
        assert!(zone.is_empty());
    }
}
