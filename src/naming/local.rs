//! Local names: records given in zone-file syntax, held in memory.

use std::collections::{HashMap, HashSet};

use std::fmt::Write as _;

use hickory_proto::{
    rr::{LowerName, Name, RData, Record},
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
    /// The owner's records break a rule of docs/PROTOCOL.md section 10.1 (a CNAME beside
    /// other data, several TTLs in an RRset...), which local records follow like published
    /// ones.
    #[error(transparent)]
    Content(#[from] crate::record::ContentError),
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
        // An owner written twice (`site.p2p` and `Site.p2p`) is one name: check them together.
        let mut all = self.names.get(&lower).cloned().unwrap_or_default();
        all.extend(parsed);
        let all = crate::record::tidy(all)?;
        let mut ancestor = name.base_name();
        while !ancestor.is_root() {
            self.ancestors.insert(LowerName::new(&ancestor));
            ancestor = ancestor.base_name();
        }
        self.names.insert(lower, all);
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
    /// local records, or a wildcard that matches it (`*.site.p2p` for `www.site.p2p`)? (Local
    /// names shadow the network, subdomains included.)
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
            let wildcard = name.prepend_label("*").map(|w| LowerName::new(&w));
            if wildcard.is_ok_and(|w| self.names.contains_key(&w)) {
                return true;
            }
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

/// A record in zone-file presentation format, `NAME TTL CLASS TYPE RDATA`, as `dig` and
/// [`parse_record`] read it: character-strings (TXT, HINFO) each in double quotes with `"` and
/// `\` escaped (RFC 1035 section 5.1), other types as hickory prints them. hickory's own
/// `Display` runs a TXT record's strings together unquoted, so `"hello" "world"` would show as
/// `helloworld`.
pub fn presentation(record: &Record) -> String {
    let mut out = format!(
        "{} {} {} {} ",
        record.name,
        record.ttl,
        record.dns_class,
        record.record_type()
    );
    match &record.data {
        RData::TXT(txt) => {
            for (i, string) in txt.txt_data.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                push_character_string(&mut out, string);
            }
        }
        RData::HINFO(hinfo) => {
            push_character_string(&mut out, &hinfo.cpu);
            out.push(' ');
            push_character_string(&mut out, &hinfo.os);
        }
        data => {
            let _ = write!(out, "{data}");
        }
    }
    out
}

/// Appends `bytes` as a quoted character-string. Valid UTF-8 stays readable; control
/// characters and bytes that are not UTF-8 become `\DDD` (decimal, one per byte), so the line
/// stays one line and says exactly which bytes the string holds.
fn push_character_string(out: &mut String, bytes: &[u8]) {
    let decimal = |out: &mut String, byte: u8| {
        let _ = write!(out, "\\{byte:03}");
    };
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(ch);
                }
                ch if ch.is_control() => {
                    let mut buf = [0; 4];
                    for byte in ch.encode_utf8(&mut buf).bytes() {
                        decimal(out, byte);
                    }
                }
                ch => out.push(ch),
            }
        }
        for &byte in chunk.invalid() {
            decimal(out, byte);
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{RData, RecordType};

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
        assert!(
            matches!(
                err,
                ZoneError::Content(crate::record::ContentError::CnameAndOther { .. })
            ),
            "{err}"
        );
        assert!(
            zone.add("p2p", &["A 192.0.2.1".to_owned()], 300, &tlds())
                .is_err()
        );
        assert!(zone.is_empty());
    }

    #[test]
    fn presentation_quotes_character_strings() {
        let owner = parse_owner("site.p2p").unwrap();
        let shown = |text: &str| {
            let records = parse_record(&owner, text, 300).unwrap_or_else(|e| panic!("{text}: {e}"));
            presentation(&records[0])
        };
        for (text, expected) in [
            (
                r#"TXT "hello world" "second""#,
                r#"site.p2p. 300 IN TXT "hello world" "second""#,
            ),
            ("TXT hello world", r#"site.p2p. 300 IN TXT "hello" "world""#),
            (
                r#"TXT "say \"hi\" \\ bye""#,
                r#"site.p2p. 300 IN TXT "say \"hi\" \\ bye""#,
            ),
            (r#"TXT """#, r#"site.p2p. 300 IN TXT """#),
            ("TXT café", r#"site.p2p. 300 IN TXT "café""#),
            (
                r#"HINFO "Intel x86" Linux"#,
                r#"site.p2p. 300 IN HINFO "Intel x86" "Linux""#,
            ),
            ("60 A 192.0.2.1", "site.p2p. 60 IN A 192.0.2.1"),
            ("MX 10 mail", "site.p2p. 300 IN MX 10 mail.site.p2p."),
        ] {
            assert_eq!(shown(text), expected, "{text}");
        }
    }

    #[test]
    fn presentation_escapes_bytes_that_are_not_text() {
        let name = Name::from_ascii("site.p2p.").unwrap();
        let txt = hickory_proto::rr::rdata::TXT::from_bytes(vec![b"a\tb\n", b"\xff\x00z"]);
        let record = Record::from_rdata(name, 60, RData::TXT(txt));
        assert_eq!(
            presentation(&record),
            r#"site.p2p. 60 IN TXT "a\009b\010" "\255\000z""#
        );
    }

    #[test]
    fn presentation_parses_back_to_the_same_record() {
        let owner = parse_owner("site.p2p").unwrap();
        for text in [
            "A 192.0.2.1",
            "AAAA 2001:db8::1",
            "CNAME other.p2p.",
            r#"TXT "hello world" "two" "quote \" and \\ backslash""#,
            r#"HINFO "Intel x86" Linux"#,
            "MX 10 mail",
            "SRV 0 5 443 web.site.p2p.",
            r#"CAA 0 issue "letsencrypt.org""#,
        ] {
            let record = parse_record(&owner, text, 300).unwrap().remove(0);
            let shown = presentation(&record);
            let (_, rest) = shown.split_once(' ').unwrap();
            let again = parse_record(&owner, rest, 1).unwrap_or_else(|e| panic!("{shown}: {e}"));
            assert_eq!(again.len(), 1, "{shown}");
            assert_eq!(again[0], record, "{text} shown as {shown}");
            assert_eq!(again[0].ttl, record.ttl, "{shown}");
        }
    }
}
