//! The pin store: for each human name (`site.p2p`, not a key name), the owner key whose record
//! this node believed, until that record expires (docs/PROTOCOL.md section 6). A pin makes a
//! later majority of another key powerless while it lasts. Kept in `pins.toml`.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    record::{NameRecord, key_of_name},
    state::{read_toml, write_toml},
};

/// File holding the pinned owners of human names.
const PINS_FILE: &str = "pins.toml";

/// One pinned owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The owner's key name.
    pub owner: String,
    /// Unix seconds when the newest record seen from the owner expires.
    pub expires: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct PinsFile {
    #[serde(default)]
    pins: BTreeMap<String, Pin>,
}

/// The pins, by lower-case name (`site.p2p.`), and the file they are saved in.
pub struct Pins {
    path: PathBuf,
    pins: Mutex<BTreeMap<String, Pin>>,
}

impl Pins {
    /// The pins saved in `data_dir` (none if the file is missing or unreadable).
    pub fn load(data_dir: &Path) -> Self {
        let path = data_dir.join(PINS_FILE);
        let pins = read_toml::<PinsFile>(&path)
            .map(|f| f.pins)
            .unwrap_or_default();
        Self {
            path,
            pins: Mutex::new(pins),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Pin>> {
        // Each update is one map operation and a save: a panic leaves nothing half-done.
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pin, by name.
    pub fn all(&self) -> BTreeMap<String, Pin> {
        self.lock().clone()
    }

    /// The owner key pinned for `name` whose record has not expired at `now` (Unix seconds).
    pub fn owner(&self, name: &Name, now: u64) -> Option<[u8; 32]> {
        let pins = self.lock();
        let pin = pins.get(&pin_key(name)).filter(|pin| pin.expires > now)?;
        key_of_name(&Name::from_ascii(&pin.owner).ok()?)
    }

    /// Pins `record`'s owner for `name`, or moves the pin's expiry to the record's.
    pub fn pin(&self, name: &Name, record: &NameRecord) {
        let name = pin_key(name);
        let owner = record.owner_name().to_ascii();
        let mut pins = self.lock();
        match pins.get(&name) {
            Some(pin) if pin.owner == owner && pin.expires >= record.expires => return,
            Some(pin) if pin.owner != owner => {
                info!(%name, %owner, "pinned owner changed after the old pin expired");
            }
            _ => {}
        }
        pins.insert(
            name,
            Pin {
                owner,
                expires: record.expires,
            },
        );
        if let Err(error) = self.save(&pins) {
            warn!(%error, "failed to save pins");
        }
    }

    /// Forgets the pin of `name`. Returns whether there was one.
    pub fn remove(&self, name: &Name) -> io::Result<bool> {
        let mut pins = self.lock();
        let removed = pins.remove(&pin_key(name)).is_some();
        if removed {
            self.save(&pins)?;
        }
        Ok(removed)
    }

    fn save(&self, pins: &BTreeMap<String, Pin>) -> io::Result<()> {
        write_toml(&self.path, &PinsFile { pins: pins.clone() })
    }
}

/// Pins are filed under the lower-case, fully qualified name.
fn pin_key(name: &Name) -> String {
    name.to_lowercase().to_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::unix_now;
    use libp2p::identity::ed25519;

    #[test]
    fn a_pin_holds_until_its_record_expires_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("p2pdns-pins-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let name = Name::from_ascii("Site.P2p.").unwrap();
        let owner = ed25519::Keypair::generate();
        let expires = unix_now() + 60;
        let record = NameRecord::sign(&owner, &name.to_lowercase(), 1, expires, vec![]).unwrap();
        let pins = Pins::load(&dir);
        pins.pin(&name, &record);
        let key = owner.public().to_bytes();
        assert_eq!(pins.owner(&name, unix_now()), Some(key));
        assert_eq!(
            pins.owner(&name, expires),
            None,
            "expired pins do not count"
        );
        let again = Pins::load(&dir);
        assert_eq!(again.all(), pins.all(), "pins are saved");
        assert!(
            again
                .remove(&Name::from_ascii("site.p2p.").unwrap())
                .unwrap()
        );
        assert!(!again.remove(&name).unwrap());
        assert!(Pins::load(&dir).all().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
