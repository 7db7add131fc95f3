//! `[naming]`: the TLDs answered here and the local records, and what makes them acceptable:
//! a TLD that would not hijack special-use names or the internet's, records that load.

use std::collections::BTreeMap;

use hickory_proto::rr::{LowerName, Name};
use serde::Deserialize;

use super::{ConfigError, MAX_TTL, invalid};

/// `[naming]`: the peer-to-peer names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamingConfig {
    /// Top-level domains answered by the naming subsystem instead of upstream: `p2p` from the
    /// local records, then the DHT; any other TLD from the local records only.
    pub tlds: Vec<String>,
    /// TTL for local records that do not give one, in seconds.
    pub default_ttl_secs: u32,
    /// Local names: owner name → records in master-file syntax (`[TTL] [IN] TYPE RDATA`, the
    /// type also as `TYPEnnn`, the RDATA also as `\\# LENGTH HEX`: RFC 3597 section 5).
    pub records: BTreeMap<String, Vec<String>>,
    /// Names (and their subdomains) whose network answers may hold private addresses.
    pub allow_private_answers: Vec<String>,
}

impl Default for NamingConfig {
    fn default() -> Self {
        Self {
            tlds: vec!["p2p".to_owned()],
            default_ttl_secs: 300,
            records: BTreeMap::new(),
            allow_private_answers: Vec::new(),
        }
    }
}

/// Special-use TLDs that `naming.tlds` may not take over, and what they are for. `test` and
/// `example` are allowed: RFC 6761 sections 6.2 and 6.5 keep them for tests and examples, and
/// no real name lives there; so are the names ICANN never delegates (`internal`, `lan`...).
const SPECIAL_TLDS: &[(&str, &str)] = &[
    (
        "localhost",
        "loopback names, always 127.0.0.1 and ::1 (RFC 6761 section 6.3)",
    ),
    (
        "invalid",
        "names that must never resolve (RFC 6761 section 6.4)",
    ),
    (
        "onion",
        "Tor onion services, which a Tor client resolves (RFC 7686)",
    ),
    (
        "local",
        "multicast DNS, which the machine's mDNS responder answers (RFC 6762)",
    ),
    (
        "arpa",
        "the infrastructure domain: reverse lookups, home.arpa... (RFC 3172)",
    ),
    (
        "alt",
        "names of other naming systems, which DNS must not answer (RFC 9476)",
    ),
];

/// The generic TLDs of RFC 1591; with every two-letter label (the country codes), TLDs of the
/// internet that a configuration could name by mistake.
const INTERNET_TLDS: &[&str] = &["com", "net", "org", "edu", "gov", "mil", "int"];

/// A `naming.tlds` entry: one DNS label, not a special-use TLD nor a TLD of the internet,
/// whose every name would otherwise be answered from the local table alone.
fn check_tld(tld: &str) -> Result<(), String> {
    let label = tld.to_ascii_lowercase();
    if label.is_empty()
        || label.len() > 63
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("{tld:?} is not a single DNS label"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!(
            "{tld:?} starts or ends with a hyphen, which no host name label may (RFC 1123 section 2.1)"
        ));
    }
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{tld:?} is all digits: a TLD never is, or names under it would read as IPv4 \
             addresses (RFC 3696 section 2)"
        ));
    }
    if let Some((_, what)) = SPECIAL_TLDS.iter().find(|(special, _)| *special == label) {
        return Err(format!(
            "{tld:?} is a special-use TLD for {what}; choose another"
        ));
    }
    // ISO 3166-1 keeps AA, QM to QZ, XA to XZ and ZZ for private use: never a country's TLD.
    let private_code = matches!(
        label.as_bytes(),
        [b'a', b'a'] | [b'q', b'm'..=b'z'] | [b'x', _] | [b'z', b'z']
    );
    if INTERNET_TLDS.contains(&label.as_str())
        || (label.len() == 2 && label.bytes().all(|b| b.is_ascii_alphabetic()) && !private_code)
    {
        return Err(format!(
            "{tld:?} is a TLD of the internet (RFC 1591): every name under it would be answered \
             from the local records only; choose a TLD that is not delegated, such as p2p"
        ));
    }
    Ok(())
}

impl NamingConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, tld) in self.tlds.iter().enumerate() {
            check_tld(tld).map_err(|why| invalid(&format!("naming.tlds[{i}]"), why))?;
            if let Some(first) = self.tlds[..i]
                .iter()
                .position(|t| t.eq_ignore_ascii_case(tld))
            {
                return Err(invalid(
                    &format!("naming.tlds[{i}]"),
                    format!("{tld:?} is listed already, as naming.tlds[{first}]"),
                ));
            }
        }
        if self.default_ttl_secs > MAX_TTL {
            return Err(invalid(
                "naming.default_ttl_secs",
                format!(
                    "{} is above {MAX_TTL} seconds (2^31 - 1), the largest TTL RFC 2181 section 8 allows",
                    self.default_ttl_secs
                ),
            ));
        }
        for (i, entry) in self.allow_private_answers.iter().enumerate() {
            self.check_allowed_name(entry)
                .map_err(|why| invalid(&format!("naming.allow_private_answers[{i}]"), why))?;
        }
        self.check_records()
    }

    /// Every record of `[naming.records]` loads (the daemon would refuse it at start anyway;
    /// `--check-config` and a reload say so the same way, naming the record's index).
    fn check_records(&self) -> Result<(), ConfigError> {
        let tlds: Vec<LowerName> = self
            .tlds
            .iter()
            .filter_map(|tld| Name::from_ascii(format!("{tld}.")).ok())
            .map(|tld| LowerName::new(&tld))
            .collect();
        crate::naming::LocalZone::from_table(&self.records, self.default_ttl_secs, &tlds)
            .map(drop)
            .map_err(|(key, error)| invalid(&key, crate::error::one_line(&error)))
    }

    /// An `allow_private_answers` entry must be a name under one of the TLDs: only their
    /// answers are filtered.
    fn check_allowed_name(&self, entry: &str) -> Result<(), String> {
        let name = hickory_proto::rr::Name::from_ascii(entry)
            .ok()
            .filter(|n| !n.is_root() && !n.is_wildcard())
            .ok_or_else(|| {
                format!("{entry:?} is not a domain name (write international names as xn--)")
            })?;
        let tld = name.iter().next_back().map(|l| l.to_ascii_lowercase());
        if self
            .tlds
            .iter()
            .any(|t| Some(t.to_ascii_lowercase().as_bytes()) == tld.as_deref())
        {
            return Ok(());
        }
        Err(format!(
            "{entry:?} is not under naming.tlds ({}): only their answers are filtered",
            self.tlds.join(", ")
        ))
    }
}
