//! `names.toml`: the signed records of this node's names, hex, by name. At start every entry is
//! checked as a resolver checks a record from the DHT; an entry that fails (edited, cut short,
//! signed by another key, another name's, a name twice) is never published, and the file as it
//! was is kept aside, saying which entry, why and how to recover, before the rest is written
//! back ([`crate::state::set_aside_damaged`]).

use std::{collections::BTreeMap, path::Path, sync::Arc};

use hickory_proto::rr::LowerName;
use serde::{Deserialize, Serialize};
use tracing::error;

use crate::{
    record::{self, NameRecord, RecordError, unix_now},
    state::{LoadError, SaveError, read_state, save_toml, set_aside_damaged},
};

/// One name this node publishes, as saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OwnName {
    /// The signed record, hex.
    record: String,
}

#[derive(Default, Serialize, Deserialize)]
struct NamesFile {
    #[serde(default)]
    names: BTreeMap<String, OwnName>,
}

impl NamesFile {
    fn of(names: &OwnNames) -> Self {
        let names = names
            .values()
            .map(|record| {
                let entry = OwnName {
                    record: hex::encode(record.to_bytes()),
                };
                (record.name.to_ascii(), entry)
            })
            .collect();
        Self { names }
    }
}

/// Own names by lower-case name.
pub(super) type OwnNames = BTreeMap<LowerName, Arc<NameRecord>>;

/// Why an entry of the names file is not published.
#[derive(Debug, thiserror::Error)]
pub(super) enum EntryFault {
    /// The lines do not parse as TOML entries (the parser's first line of complaint).
    #[error("these lines do not parse: {0}")]
    Unparsable(String),
    /// The record is not hex: cut short (an odd length) or edited.
    #[error("its record is not hexadecimal text (cut short or edited?)")]
    NotHex,
    /// The record fails a check of docs/PROTOCOL.md section 5 (its signature, its encoding).
    #[error("its record is refused as a resolver would refuse it from the DHT")]
    Invalid(#[source] RecordError),
    /// A valid record signed by another key (the owner's key name).
    #[error("its record is signed by another key ({0}), not this node's identity key")]
    OtherKey(String),
    /// A valid record of ours, for another name (the one given) than the entry's.
    #[error("its record is for {0}, not for the entry's name")]
    OtherName(String),
    /// Another entry holds a record for the same name, with a higher (or the same) sequence
    /// number; that one is kept.
    #[error("another entry holds {name} too, with sequence number {kept}, and is kept")]
    Duplicate {
        /// The name both entries hold.
        name: String,
        /// The kept record's sequence number.
        kept: u64,
    },
}

impl EntryFault {
    /// What the user can do about it.
    fn remedy(&self) -> &'static str {
        match self {
            Self::OtherKey(_) => {
                "if identity.key was replaced, stop the daemon, put the old key back and copy \
                 the entry from the kept file into names.toml; else publish the name again"
            }
            Self::Duplicate { .. } => {
                "nothing, unless this entry is the one wanted: then stop the daemon and copy it \
                 from the kept file over the other one in names.toml"
            }
            _ => {
                "publish the name again (`p2pdns publish`), or restore names.toml from a backup \
                 (with the daemon stopped)"
            }
        }
    }
}

/// An entry that is not published: which (`"site.p2p."`, or `lines 3-4`) and why.
pub(super) struct Refused {
    entry: String,
    fault: EntryFault,
}

/// Reads the names file at `path`, signed by the key `own`: the entries that pass every
/// check. When some do not, the file as it was is kept aside and the rest written back (or
/// the file removed, when nothing passes); the log says which entries, why and how to
/// recover.
///
/// # Errors
/// [`LoadError`]: the file cannot be read, or has refused entries and cannot be kept aside;
/// it is then left in place and no save may replace it.
pub(super) fn load(path: &Path, own: &[u8; 32]) -> Result<OwnNames, LoadError> {
    let Some(bytes) = read_state(path)? else {
        return Ok(OwnNames::new());
    };
    // Bytes that are not UTF-8 can only be in a damaged entry: it is refused, not the file.
    let text = String::from_utf8_lossy(&bytes);
    let (entries, mut refused) = entries(&text);
    let names = checked(entries, own, &mut refused);
    if refused.is_empty() {
        return Ok(names);
    }
    let repaired = (!names.is_empty()).then(|| {
        toml::to_string(&NamesFile::of(&names)).expect("tables of strings serialize as TOML")
    });
    let aside = set_aside_damaged(path, &bytes, repaired.as_deref().map(str::as_bytes))?;
    error!(
        file = %path.display(),
        kept_at = %aside.display(),
        refused = refused.len(),
        published = names.len(),
        "entries of the names file do not load and are not published; the file as it was is \
         kept aside, the names that load are published"
    );
    for Refused { entry, fault } in &refused {
        error!(
            entry = %entry,
            kept_at = %aside.display(),
            "names file entry not published: {}; to recover: {}",
            crate::error::one_line(fault),
            fault.remedy()
        );
    }
    Ok(names)
}

/// Writes `names` to the names file at `path` ([`save_toml`]).
pub(super) fn save(path: &Path, names: &OwnNames) -> Result<(), SaveError> {
    save_toml(path, &NamesFile::of(names))
}

/// The entries of the file's text (as written, and the record's hex), and the parts that do
/// not parse. A file that does not parse whole (one damaged entry, a name written twice) is
/// parsed table by table, so that each fault costs only its own entry.
fn entries(text: &str) -> (Vec<(String, String)>, Vec<Refused>) {
    if let Ok(file) = toml::from_str::<NamesFile>(text) {
        let entries = file.names.into_iter().map(|(k, v)| (k, v.record));
        return (entries.collect(), Vec::new());
    }
    let mut entries = Vec::new();
    let mut refused = Vec::new();
    for (first, last, section) in sections(text) {
        match toml::from_str::<NamesFile>(&section) {
            Ok(file) => entries.extend(file.names.into_iter().map(|(k, v)| (k, v.record))),
            Err(error) => refused.push(Refused {
                entry: format!("lines {first}-{last}"),
                fault: EntryFault::Unparsable(
                    error
                        .message()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                ),
            }),
        }
    }
    (entries, refused)
}

/// The text cut before each line that opens a table (`[`), with its first and last line
/// numbers (from 1).
fn sections(text: &str) -> Vec<(usize, usize, String)> {
    let mut sections: Vec<(usize, usize, String)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        match sections.last_mut() {
            Some((_, last, section)) if !line.trim_start().starts_with('[') => {
                *last = number;
                section.push_str(line);
                section.push('\n');
            }
            _ => sections.push((number, number, format!("{line}\n"))),
        }
    }
    sections
}

/// The records of `entries` that pass every check, by name; the others go to `refused`.
fn checked(entries: Vec<(String, String)>, own: &[u8; 32], refused: &mut Vec<Refused>) -> OwnNames {
    let now = unix_now();
    let mut names = OwnNames::new();
    for (entry, text) in entries {
        let record = match check(&entry, &text, own, now) {
            Ok(record) => record,
            Err(fault) => {
                refused.push(Refused {
                    entry: format!("{entry:?}"),
                    fault,
                });
                continue;
            }
        };
        let key = LowerName::new(&record.name);
        let (kept, dropped) = match names.remove(&key) {
            Some(held) if held.seq >= record.seq => (held, record),
            Some(held) => (Arc::new(record), Arc::unwrap_or_clone(held)),
            None => {
                names.insert(key, Arc::new(record));
                continue;
            }
        };
        refused.push(Refused {
            entry: format!(
                "{:?} (sequence number {})",
                dropped.name.to_ascii(),
                dropped.seq
            ),
            fault: EntryFault::Duplicate {
                name: kept.name.to_ascii(),
                kept: kept.seq,
            },
        });
        names.insert(key, kept);
    }
    names
}

/// The record of the entry `entry`, checked as a resolver checks a record from the DHT (p2p's
/// lookups: decoded, verified, for the name asked), and signed by `own`. The clock alone does
/// not refuse one: an own record past its time (or signed under a clock running ahead) is
/// re-signed by the next republication, not lost.
fn check(entry: &str, text: &str, own: &[u8; 32], now: u64) -> Result<NameRecord, EntryFault> {
    let bytes = hex::decode(text).map_err(|_| EntryFault::NotHex)?;
    let record = NameRecord::from_bytes(&bytes).map_err(EntryFault::Invalid)?;
    match record.verify(now) {
        Err(RecordError::Expired | RecordError::TooLong) => {
            record.verify(record.expires.saturating_sub(1))
        }
        verdict => verdict,
    }
    .map_err(EntryFault::Invalid)?;
    if record.owner != *own {
        return Err(EntryFault::OtherKey(record.owner_name().to_ascii()));
    }
    if record::p2p_name(entry).ok().as_ref() != Some(&record.name) {
        return Err(EntryFault::OtherName(record.name.to_ascii()));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RData, Record};
    use libp2p::identity::ed25519;

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("p2pdns-file-{}", rand::random::<u64>()));
        crate::state::create_private_dir(&dir).unwrap();
        dir
    }

    /// The hex of a record of `name` signed by `key`, with one A record `ip`.
    fn signed(key: &ed25519::Keypair, name: &str, seq: u64, expires: u64, ip: &str) -> String {
        let name = Name::from_ascii(name).unwrap();
        let a = Record::from_rdata(name.clone(), 300, RData::A(ip.parse().unwrap()));
        hex::encode(
            NameRecord::sign(key, &name, seq, expires, vec![a])
                .unwrap()
                .to_bytes(),
        )
    }

    fn entry(name: &str, record: &str) -> String {
        format!("[names.\"{name}\"]\nrecord = \"{record}\"\n")
    }

    /// Flips the last bit of the hex byte at `from_end` bytes before the end.
    fn flip(text: &str, from_end: usize) -> String {
        let mut bytes = hex::decode(text).unwrap();
        let at = bytes.len() - from_end;
        bytes[at] ^= 1;
        hex::encode(bytes)
    }

    /// Loads `text` as the names file of `key`: the names published, what is in place of the
    /// file afterwards, and the copies kept aside.
    fn load_text(key: &ed25519::Keypair, text: &str) -> (Vec<String>, Option<String>, Vec<String>) {
        let dir = temp_dir();
        let path = dir.join("names.toml");
        std::fs::write(&path, text).unwrap();
        let names = load(&path, &key.public().to_bytes()).unwrap();
        let in_place = std::fs::read_to_string(&path).ok();
        let aside = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        let names = names.keys().map(ToString::to_string).collect();
        (names, in_place, aside)
    }

    /// Each kind of damage to one entry costs that entry only: the good names load, the file
    /// as it was is kept aside byte for byte, and what is left in place loads cleanly.
    #[test]
    fn a_damaged_entry_costs_only_itself() {
        let key = ed25519::Keypair::generate();
        let other = ed25519::Keypair::generate();
        let later = unix_now() + 3600;
        let good = signed(&key, "good.p2p.", 5, later, "192.0.2.1");
        let bad = signed(&key, "bad.p2p.", 5, later, "192.0.2.2");
        // 192.0.2.2 is c0000202 in the A record's RDATA; 192.0.2.99 is what an editor made.
        let edited_value = bad.replace("c0000202", "c0000263");
        assert_ne!(edited_value, bad);
        let variants: [(&str, String); 8] = [
            ("flipped signature byte", entry("bad.p2p.", &flip(&bad, 1))),
            ("edited value", entry("bad.p2p.", &edited_value)),
            (
                "signed by another key",
                entry(
                    "bad.p2p.",
                    &signed(&other, "bad.p2p.", 5, later, "192.0.2.2"),
                ),
            ),
            ("truncated", entry("bad.p2p.", &bad[..bad.len() - 3])),
            ("cut at a byte", entry("bad.p2p.", &bad[..bad.len() - 2])),
            ("not hex", entry("bad.p2p.", "zz")),
            ("filed under another name", entry("bad.p2p.", &good)),
            (
                "unparsable entry",
                "[names.\"bad.p2p.\"]\nrecord = \"01\n".to_owned(),
            ),
        ];
        for (what, bad_entry) in variants {
            let text = format!("{}{bad_entry}", entry("good.p2p.", &good));
            let (names, in_place, aside) = load_text(&key, &text);
            assert_eq!(names, ["good.p2p."], "{what}");
            assert_eq!(aside, [text.as_str()], "{what}: kept aside byte for byte");
            let in_place = in_place.unwrap_or_else(|| panic!("{what}: the good name is saved"));
            assert_eq!(in_place, entry("good.p2p.", &good), "{what}");
        }
        // A clean file is left as it is, and nothing is kept aside.
        let text = entry("good.p2p.", &good);
        assert_eq!(
            load_text(&key, &text),
            (vec!["good.p2p.".into()], Some(text), vec![])
        );
    }

    /// A name twice: as a TOML table written twice (the file does not parse whole), or under
    /// two spellings; the higher sequence number is published, the other kept aside.
    #[test]
    fn a_name_twice_publishes_the_newer_record() {
        let key = ed25519::Keypair::generate();
        let later = unix_now() + 3600;
        let old = signed(&key, "twice.p2p.", 3, later, "192.0.2.3");
        let new = signed(&key, "twice.p2p.", 4, later, "192.0.2.4");
        let other = signed(&key, "other.p2p.", 1, later, "192.0.2.5");
        for text in [
            format!(
                "{}{}{}",
                entry("twice.p2p.", &new),
                entry("other.p2p.", &other),
                entry("twice.p2p.", &old)
            ),
            format!("{}{}", entry("twice.p2p.", &old), entry("twice.p2p", &new)),
        ] {
            let dir = temp_dir();
            let path = dir.join("names.toml");
            std::fs::write(&path, &text).unwrap();
            let names = load(&path, &key.public().to_bytes()).unwrap();
            let twice = names.get(&LowerName::from(Name::from_ascii("twice.p2p.").unwrap()));
            assert_eq!(twice.map(|r| r.seq), Some(4), "{text}");
            assert!(std::fs::read_dir(&dir).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".corrupt-")
            }));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// An own record past its time, or signed under a clock running ahead, is authentic: it
    /// loads (republication re-signs it); one expiring at 0 cannot be checked and does not.
    #[test]
    fn the_clock_alone_refuses_no_own_record() {
        let key = ed25519::Keypair::generate();
        let now = unix_now();
        let past = signed(&key, "past.p2p.", 1, now - 10, "192.0.2.1");
        let ahead = signed(&key, "ahead.p2p.", 1, now + 30 * 24 * 3600, "192.0.2.1");
        let text = format!(
            "{}{}",
            entry("past.p2p.", &past),
            entry("ahead.p2p.", &ahead)
        );
        let (names, _, aside) = load_text(&key, &text);
        assert_eq!(names, ["ahead.p2p.", "past.p2p."]);
        assert!(aside.is_empty());
        let never = signed(&key, "never.p2p.", 1, 0, "192.0.2.1");
        let (names, _, _) = load_text(&key, &entry("never.p2p.", &never));
        assert!(names.is_empty());
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            hex::decode(hex::encode([0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(hex::decode("abc").is_err());
        assert!(hex::decode("zz").is_err());
    }
}
