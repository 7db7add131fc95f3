//! Local names: records given in master-file syntax (RFC 1035 section 5.1, with the generic
//! forms of RFC 3597 section 5), held in memory. The same parser reads the records of
//! `[naming.records]`, `p2pdns publish NAME TYPE VALUE` and `p2pdns publish NAME --zone FILE`,
//! so all three refuse alike: words the RDATA does not use, a class other than IN, a TTL above
//! 2^31 - 1, types that cannot be data.
//!
//! [`syntax`] finds the entries and words, [`rdata`] makes a record of each, [`presentation`]
//! prints records back. This module owns no state beyond [`LocalZone`] and touches no socket.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    slice,
};

use hickory_proto::rr::{LowerName, Name, Record};

mod presentation;
mod rdata;
mod syntax;
#[cfg(test)]
mod tests;

pub use presentation::presentation;
use rdata::MAX_TTL;
pub use rdata::RecordError;
use syntax::{Entry, Token};

/// Errors in a local record, a record line to publish or a zone file.
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
    /// A record (`[TTL] [IN] TYPE RDATA`) is refused; the source says why.
    #[error("record {record:?}")]
    Record {
        /// The record's text as given.
        record: String,
        /// What is wrong with it (boxed: a large enum, and errors travel by value).
        #[source]
        source: Box<RecordError>,
    },
    /// An entry of a zone file ([`parse_zone`]) is refused; the source says why.
    #[error("line {line} of the zone file ({text:?})")]
    ZoneLine {
        /// The line the entry starts on, from 1.
        line: usize,
        /// The entry's text, comments left out.
        text: String,
        /// What is wrong with it (boxed: a large enum, and errors travel by value).
        #[source]
        source: Box<RecordError>,
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
    /// The zone of a `[naming.records]` table (owner name → records), each record checked on
    /// its own so that a refusal names it.
    ///
    /// # Errors
    /// The dotted key of the first record refused (`naming.records."site.p2p"[1]`; without the
    /// index for an owner without records) and why ([`LocalZone::add`]).
    pub fn from_table(
        table: &BTreeMap<String, Vec<String>>,
        default_ttl: u32,
        tlds: &[LowerName],
    ) -> Result<Self, (String, ZoneError)> {
        let mut zone = Self::default();
        for (owner, records) in table {
            if records.is_empty() {
                zone.add(owner, &[], default_ttl, tlds)
                    .map_err(|e| (format!("naming.records.{owner:?}"), e))?;
            }
            for (i, record) in records.iter().enumerate() {
                zone.add(owner, slice::from_ref(record), default_ttl, tlds)
                    .map_err(|e| (format!("naming.records.{owner:?}[{i}]"), e))?;
            }
        }
        Ok(zone)
    }

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

/// Parses a zone file (RFC 1035 section 5 syntax, `$ORIGIN` and `$TTL` included) with
/// `origin` as the first `$ORIGIN`, for publishing. A TTL left out is the last `$TTL`, else
/// `default_ttl` seconds. `$INCLUDE` is refused: the text comes from a client and must not make
/// the daemon read files.
///
/// # Errors
/// [`ZoneError::ZoneLine`] for the first entry refused (see [`parse_record`]; also an owner
/// that is not a name, a directive other than `$ORIGIN` and `$TTL`). A zone without records
/// is no error: the caller decides.
pub fn parse_zone(origin: &Name, text: &str, default_ttl: u32) -> Result<Vec<Record>, ZoneError> {
    let entries = syntax::entries(text).map_err(|(line, source)| ZoneError::ZoneLine {
        line,
        text: text
            .lines()
            .nth(line - 1)
            .unwrap_or_default()
            .trim()
            .to_owned(),
        source: Box::new(source),
    })?;
    let mut state = ZoneState {
        origin: origin.clone(),
        ttl: default_ttl,
        owner: None,
    };
    let mut records = Vec::with_capacity(entries.len());
    for entry in &entries {
        let refused = |source| ZoneError::ZoneLine {
            line: entry.line,
            text: entry.text.to_owned(),
            source: Box::new(source),
        };
        if let Some(record) = state.entry(entry).map_err(refused)? {
            records.push(record);
        }
    }
    Ok(records)
}

/// What earlier entries of a zone file set for the later ones.
struct ZoneState {
    /// The last `$ORIGIN`.
    origin: Name,
    /// The last `$TTL`, in seconds.
    ttl: u32,
    /// The last owner named.
    owner: Option<Name>,
}

impl ZoneState {
    /// Applies a directive (`None`), or reads a record.
    fn entry(&mut self, entry: &Entry<'_>) -> Result<Option<Record>, RecordError> {
        let mut tokens = entry.tokens.as_slice();
        if !entry.blank_owner {
            let (owner, rest) = tokens.split_first().expect("entries hold tokens");
            tokens = rest;
            if owner.raw.starts_with('$') && !owner.quoted {
                self.directive(owner, rest)?;
                return Ok(None);
            }
            self.owner = Some(name_in(owner, &self.origin)?);
        }
        let owner = self.owner.as_ref().ok_or(RecordError::NoOwner)?;
        record(owner, &self.origin, tokens, self.ttl).map(Some)
    }

    fn directive(&mut self, word: &Token<'_>, args: &[Token<'_>]) -> Result<(), RecordError> {
        match args {
            [value] if word.is("$TTL") => self.ttl = rdata::ttl(value.raw)?,
            [value] if word.is("$ORIGIN") => self.origin = name_in(value, &self.origin)?,
            _ => return Err(RecordError::Directive(word.raw.to_owned())),
        }
        Ok(())
    }
}

/// The name `word` (`@` for `origin`), relative to `origin` unless it ends in a dot.
fn name_in(word: &Token<'_>, origin: &Name) -> Result<Name, RecordError> {
    if word.is("@") {
        return Ok(origin.clone());
    }
    let refused = |source| RecordError::Owner {
        name: word.raw.to_owned(),
        source,
    };
    if word.quoted {
        return Err(refused(hickory_proto::ProtoError::from("a quoted name")));
    }
    Name::parse(word.raw, Some(origin)).map_err(refused)
}

/// Parses one `[TTL] [IN] TYPE RDATA` line (the TTL and the class in either order, the type a
/// mnemonic or `TYPEnnn`, the RDATA in the type's own syntax or as `\# LENGTH HEX`), owned by
/// `owner`, which is also the origin for relative names. A TTL left out is `default_ttl`
/// seconds. Returns one record (a `Vec` so that callers treat lines and zones alike).
///
/// # Errors
/// [`ZoneError::Record`] when the text spans lines, is a directive, names a class other than
/// IN, a TTL above 2^31 - 1 or a type that cannot be data, holds RDATA its type refuses or
/// words after it, or is empty; the source ([`RecordError`]) says which.
pub fn parse_record(owner: &Name, text: &str, default_ttl: u32) -> Result<Vec<Record>, ZoneError> {
    let refused = |source| ZoneError::Record {
        record: text.to_owned(),
        source: Box::new(source),
    };
    if text.contains(['\n', '\r']) {
        return Err(refused(RecordError::Lines));
    }
    let entries = syntax::entries(text).map_err(|(_, source)| refused(source))?;
    let tokens = entries.first().map_or(&[][..], |e| e.tokens.as_slice());
    if let Some(first) = tokens
        .first()
        .filter(|t| t.raw.starts_with('$') && !t.quoted)
    {
        return Err(refused(RecordError::Directive(first.raw.to_owned())));
    }
    record(owner, owner, tokens, default_ttl)
        .map(|record| vec![record])
        .map_err(refused)
}

/// The record `tokens` (`[TTL] [IN] TYPE RDATA`) at `owner`, relative names in the RDATA under
/// `origin`.
fn record(
    owner: &Name,
    origin: &Name,
    tokens: &[Token<'_>],
    default_ttl: u32,
) -> Result<Record, RecordError> {
    let (ttl, rtype, words) = rdata::head(tokens)?;
    let ttl = ttl.unwrap_or(default_ttl);
    if ttl > MAX_TTL {
        return Err(RecordError::TtlTooLarge(ttl.into()));
    }
    let data = rdata::rdata(rtype, words, origin)?;
    rdata::check_wire(rtype, &data)?;
    let mut owner = owner.clone();
    owner.set_fqdn(true);
    Ok(Record::from_rdata(owner, ttl, data))
}
