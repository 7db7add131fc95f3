//! Local addresses for tunnelled names: each `.p2p` name served through a tunnel gets one IPv4
//! address of a loopback range (127.77.0.0/16 by default), which the daemon answers as the
//! name's A record and listens on. The assignment is stable: the same name gets the same
//! address while the daemon runs and after a restart (the table is kept in the data directory),
//! and two names never share one.
//!
//! A new name's address is derived from a hash of the name (so that even a lost table tends to
//! give the same addresses back), moving on to the next free one on a collision.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use hickory_proto::rr::Name;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::state::{SaveError, read_toml, save_toml};

/// File in the data directory holding the assignments.
pub const ADDRESSES_FILE: &str = "tunnel-addresses.toml";

/// Errors of the address table.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// The configured range is not on the loopback network (127.0.0.0/8), or leaves no usable
    /// address once its first and last addresses are set aside.
    #[error(
        "{range} is not a usable loopback range (it must lie in 127.0.0.0/8 and hold at least one address besides its first and last)"
    )]
    BadRange {
        /// The range configured.
        range: Ipv4Net,
    },
    /// Every usable address of the range is assigned to another name.
    #[error(
        "every address of {range} is assigned ({used} names); widen the range or remove tunnelled names"
    )]
    Exhausted {
        /// The range configured.
        range: Ipv4Net,
        /// How many names hold an address.
        used: usize,
    },
    /// The table could not be written (a full disk says so); the change was not made.
    #[error(transparent)]
    Save(#[from] SaveError),
}

#[derive(Default, Serialize, Deserialize)]
struct AddressesFile {
    /// Lower-case fully qualified name (`site.p2p.`) to address.
    #[serde(default)]
    names: BTreeMap<String, Ipv4Addr>,
}

/// The table of assigned addresses, owned by one task (the tunnel manager); kept on disk at
/// every change.
#[derive(Debug)]
pub struct AddressTable {
    range: Ipv4Net,
    path: PathBuf,
    by_name: BTreeMap<String, Ipv4Addr>,
}

impl AddressTable {
    /// Loads the table kept in `data_dir`, for addresses of `range`. Entries outside the range
    /// (it was changed) or sharing an address with an earlier entry are dropped with a
    /// warning; a missing or unreadable file starts an empty table.
    ///
    /// # Errors
    /// [`AddressError::BadRange`] when `range` is not a usable loopback range.
    pub fn load(data_dir: &Path, range: Ipv4Net) -> Result<Self, AddressError> {
        let range = range.trunc();
        if !Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8)
            .expect("a valid prefix")
            .contains(&range)
            || usable(range) == 0
        {
            return Err(AddressError::BadRange { range });
        }
        let path = data_dir.join(ADDRESSES_FILE);
        let file: AddressesFile = read_toml(&path).unwrap_or_default();
        let mut by_name = BTreeMap::new();
        let mut taken = std::collections::HashSet::new();
        for (name, addr) in file.names {
            if !is_usable(range, addr) || !taken.insert(addr) {
                warn!(%name, %addr, %range, "dropping a tunnel address outside the range or already used");
                continue;
            }
            by_name.insert(name, addr);
        }
        Ok(Self {
            range,
            path,
            by_name,
        })
    }

    /// The address assigned to `name`, if any.
    pub fn get(&self, name: &Name) -> Option<Ipv4Addr> {
        self.by_name.get(&key(name)).copied()
    }

    /// The address of `name`: the one it has, or a new one, saved before it is returned.
    ///
    /// # Errors
    /// [`AddressError::Exhausted`] when the range is full; [`AddressError::Save`] when the
    /// table cannot be written (the new assignment is then undone).
    pub fn assign(&mut self, name: &Name) -> Result<Ipv4Addr, AddressError> {
        let key = key(name);
        if let Some(addr) = self.by_name.get(&key) {
            return Ok(*addr);
        }
        let addr = self.free_address(&key)?;
        self.by_name.insert(key.clone(), addr);
        if let Err(error) = self.save() {
            self.by_name.remove(&key);
            return Err(error.into());
        }
        Ok(addr)
    }

    /// Frees `name`'s address. Returns whether it had one.
    ///
    /// # Errors
    /// [`AddressError::Save`] when the table cannot be written (the address stays assigned).
    pub fn release(&mut self, name: &Name) -> Result<bool, AddressError> {
        let key = key(name);
        let Some(addr) = self.by_name.remove(&key) else {
            return Ok(false);
        };
        if let Err(error) = self.save() {
            self.by_name.insert(key, addr);
            return Err(error.into());
        }
        Ok(true)
    }

    /// The names that hold an address (fully qualified, lower case).
    pub fn names(&self) -> Vec<Name> {
        self.by_name
            .keys()
            .filter_map(|name| Name::from_ascii(name).ok())
            .collect()
    }

    /// How many names hold an address.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no name holds an address.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The first free address at or after the one the name hashes to, wrapping around.
    fn free_address(&self, key: &str) -> Result<Ipv4Addr, AddressError> {
        let slots = usable(self.range);
        let used: std::collections::HashSet<Ipv4Addr> = self.by_name.values().copied().collect();
        if used.len() as u64 >= slots {
            return Err(AddressError::Exhausted {
                range: self.range,
                used: used.len(),
            });
        }
        let digest = Sha256::digest(key.as_bytes());
        let start = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % slots;
        let first = u32::from(self.range.network()) + 1;
        (0..slots)
            .map(|i| {
                let offset = u32::try_from((start + i) % slots).expect("within a /8");
                Ipv4Addr::from(first + offset)
            })
            .find(|addr| !used.contains(addr))
            .ok_or(AddressError::Exhausted {
                range: self.range,
                used: used.len(),
            })
    }

    fn save(&self) -> Result<(), SaveError> {
        let file = AddressesFile {
            names: self.by_name.clone(),
        };
        save_toml(&self.path, &file)
    }
}

/// The table's key for a name: lower case, fully qualified.
fn key(name: &Name) -> String {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    name.to_ascii()
}

/// Addresses of `range` a name may get: all but its first and last (as a subnet's network and
/// broadcast addresses, which some programs refuse to connect to).
fn usable(range: Ipv4Net) -> u64 {
    (1u64 << (32 - u32::from(range.prefix_len()))).saturating_sub(2)
}

fn is_usable(range: Ipv4Net, addr: Ipv4Addr) -> bool {
    range.contains(&addr) && addr != range.network() && addr != range.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("p2pdns-addr-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_name_keeps_its_address_across_restarts_and_letter_case() {
        let dir = temp_dir();
        let range: Ipv4Net = "127.77.0.0/16".parse().unwrap();
        let mut table = AddressTable::load(&dir, range).unwrap();
        let site = table.assign(&name("site.p2p.")).unwrap();
        assert!(is_usable(range, site), "{site}");
        assert_eq!(table.assign(&name("SITE.p2p")).unwrap(), site);
        let other = table.assign(&name("other.p2p.")).unwrap();
        assert_ne!(other, site);
        drop(table);
        let table = AddressTable::load(&dir, range).unwrap();
        assert_eq!(table.get(&name("site.p2p.")), Some(site));
        assert_eq!(table.get(&name("other.p2p.")), Some(other));
        assert_eq!(table.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_never_share_an_address_and_a_full_range_says_so() {
        let dir = temp_dir();
        // A /29 has 8 addresses, 6 of them usable.
        let range: Ipv4Net = "127.77.0.0/29".parse().unwrap();
        let mut table = AddressTable::load(&dir, range).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..6 {
            let addr = table.assign(&name(&format!("n{i}.p2p."))).unwrap();
            assert!(is_usable(range, addr), "{addr}");
            assert!(seen.insert(addr), "{addr} given twice");
        }
        let full = table.assign(&name("n6.p2p.")).unwrap_err();
        assert!(
            matches!(full, AddressError::Exhausted { used: 6, .. }),
            "{full}"
        );
        // A released address can be given again.
        assert!(table.release(&name("n0.p2p.")).unwrap());
        assert!(!table.release(&name("n0.p2p.")).unwrap());
        assert!(table.assign(&name("n6.p2p.")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_loopback_ranges_with_room_are_accepted() {
        let dir = temp_dir();
        for bad in ["10.0.0.0/16", "127.77.0.0/31", "127.77.0.1/32", "0.0.0.0/0"] {
            let range: Ipv4Net = bad.parse().unwrap();
            assert!(
                matches!(
                    AddressTable::load(&dir, range),
                    Err(AddressError::BadRange { .. })
                ),
                "{bad}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entries_outside_the_range_or_sharing_an_address_are_dropped_at_load() {
        let dir = temp_dir();
        std::fs::write(
            dir.join(ADDRESSES_FILE),
            "[names]\n\"a.p2p.\" = \"127.77.0.5\"\n\"b.p2p.\" = \"127.77.0.5\"\n\
             \"c.p2p.\" = \"10.0.0.1\"\n\"d.p2p.\" = \"127.77.0.0\"\n",
        )
        .unwrap();
        let table = AddressTable::load(&dir, "127.77.0.0/16".parse().unwrap()).unwrap();
        assert_eq!(
            table.get(&name("a.p2p.")),
            Some(Ipv4Addr::new(127, 77, 0, 5))
        );
        assert_eq!(table.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_save_undoes_the_assignment() {
        let dir = temp_dir();
        let mut table = AddressTable::load(&dir, "127.77.0.0/16".parse().unwrap()).unwrap();
        // The data directory is gone: the write fails.
        std::fs::remove_dir_all(&dir).unwrap();
        let error = table.assign(&name("site.p2p.")).unwrap_err();
        assert!(matches!(error, AddressError::Save { .. }), "{error}");
        assert!(table.is_empty());
    }
}
