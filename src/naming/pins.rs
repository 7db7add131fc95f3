//! The pin store: for each human name (`site.p2p`, not a key name), the owner key whose record
//! this node believed, until that record expires (docs/PROTOCOL.md section 6). A pin makes a
//! later majority of another key powerless while it lasts. Kept in `pins.toml`.
//!
//! Every name resolved adds a pin, so the store is bounded (`p2p.max_pins`): expired pins count
//! for nothing and go first, then the least recently used. Lookups only touch the table in
//! memory; the file is written by [`Pins::run`], the one task that saves it, at most every
//! [`SAVE_EVERY`] and at shutdown, and by [`Pins::remove`], which the user waits on.

use std::{
    collections::BTreeMap,
    io,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hickory_proto::rr::Name;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    log_limit::LogLimit,
    record::{NameRecord, key_of_name, unix_now},
    state::{read_toml, write_toml},
};

/// Pins dropped at the cap: every new human name a client resolves drops one once the store
/// is full, so a client decides how often this is logged.
static EVICTED: LogLimit = LogLimit::new("pin dropped at the cap (p2p.max_pins)");

/// File holding the pinned owners of human names.
const PINS_FILE: &str = "pins.toml";
/// Longest a new or changed pin waits in memory before the file is written: new pins come with
/// lookups, which must not wait on the disk, and a burst of them is one write.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

/// One pinned owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The owner's key name.
    pub owner: String,
    /// Unix seconds when the newest record seen from the owner expires.
    pub expires: u64,
    /// Unix seconds when a lookup last relied on the pin (0: never, or a file from before
    /// this was kept); the pins used least recently are dropped first past the bound.
    #[serde(default)]
    pub used: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct PinsFile {
    #[serde(default)]
    pins: BTreeMap<String, Pin>,
}

/// The pins in memory, most recently used last.
struct Table {
    pins: LruCache<String, Pin>,
    /// Changed since the file was last written.
    dirty: bool,
    /// Unix seconds of the last sweep of expired pins (one per second at most when full).
    swept: u64,
}

impl Table {
    /// Drops the expired pins; returns how many went.
    fn sweep(&mut self, now: u64) -> usize {
        self.swept = now;
        let expired: Vec<String> = self
            .pins
            .iter()
            .filter(|(_, pin)| pin.expires <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            self.pins.pop(name);
        }
        self.dirty |= !expired.is_empty();
        expired.len()
    }
}

/// The pins, by lower-case name (`site.p2p.`), and the file they are saved in.
pub struct Pins {
    path: PathBuf,
    table: Mutex<Table>,
    /// Held while the file is written: writes never interleave, and each one writes the table
    /// as it is once the write before it is done.
    file: Mutex<()>,
    /// Told when the table changed, for [`Pins::run`] to save it.
    changed: Notify,
}

impl Pins {
    /// The pins saved in `data_dir` (none if the file is missing or unreadable), at most `max`
    /// of them: expired ones are left out, then the least recently used.
    pub fn load(data_dir: &Path, max: usize) -> Self {
        let path = data_dir.join(PINS_FILE);
        let saved = read_toml::<PinsFile>(&path)
            .map(|f| f.pins)
            .unwrap_or_default();
        let now = unix_now();
        let mut live: Vec<(String, Pin)> = saved
            .iter()
            .filter(|(_, pin)| pin.expires > now)
            .map(|(name, pin)| (name.clone(), pin.clone()))
            .collect();
        live.sort_by_key(|(_, pin)| pin.used);
        let mut pins = LruCache::new(NonZeroUsize::new(max).unwrap_or(NonZeroUsize::MIN));
        for (name, pin) in live {
            pins.push(name, pin);
        }
        let dirty = pins.len() < saved.len();
        Self {
            path,
            table: Mutex::new(Table {
                pins,
                dirty,
                swept: now,
            }),
            file: Mutex::new(()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Each update is a map operation or two: a panic leaves nothing half-done.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pin, by name.
    pub fn all(&self) -> BTreeMap<String, Pin> {
        let table = self.lock();
        table
            .pins
            .iter()
            .map(|(name, pin)| (name.clone(), pin.clone()))
            .collect()
    }

    /// The owner key pinned for `name` whose record has not expired at `now` (Unix seconds);
    /// the pin counts as used.
    pub fn owner(&self, name: &Name, now: u64) -> Option<[u8; 32]> {
        let mut table = self.lock();
        let pin = table
            .pins
            .get_mut(&pin_key(name))
            .filter(|pin| pin.expires > now)?;
        pin.used = now;
        key_of_name(&Name::from_ascii(&pin.owner).ok()?)
    }

    /// Pins `record`'s owner for `name`, or moves the pin's expiry to the record's. Past the
    /// bound, expired pins make room first, else the least recently used one goes.
    pub fn pin(&self, name: &Name, record: &NameRecord) {
        let name = pin_key(name);
        let owner = record.owner_name().to_ascii();
        let now = unix_now();
        let mut table = self.lock();
        match table.pins.get_mut(&name) {
            Some(pin) if pin.owner == owner && pin.expires >= record.expires => {
                pin.used = now;
                return;
            }
            Some(pin) if pin.owner != owner => {
                info!(%name, %owner, "pinned owner changed after the old pin expired");
            }
            _ => {}
        }
        let full = table.pins.len() == table.pins.cap().get() && !table.pins.contains(&name);
        if full && table.swept != now {
            table.sweep(now);
        }
        let pin = Pin {
            owner,
            expires: record.expires,
            used: now,
        };
        if let Some((dropped, _)) = table.pins.push(name.clone(), pin)
            && dropped != name
            && EVICTED.admit()
        {
            info!(name = %dropped, "pin store full (p2p.max_pins): dropped the least recently used pin");
        }
        table.dirty = true;
        drop(table);
        self.changed.notify_one();
    }

    /// Forgets the pin of `name` and writes the file now. Returns whether there was one.
    ///
    /// # Errors
    /// The pins file could not be written.
    pub fn remove(&self, name: &Name) -> io::Result<bool> {
        let removed = {
            let mut table = self.lock();
            let removed = table.pins.pop(&pin_key(name)).is_some();
            table.dirty |= removed;
            removed
        };
        if removed {
            self.save()?;
        }
        Ok(removed)
    }

    /// Writes the file if the table changed since the last write; expired pins are dropped
    /// first.
    ///
    /// # Errors
    /// The pins file could not be written (the table stays marked as changed).
    pub fn save(&self) -> io::Result<()> {
        let _file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let pins = {
            let mut table = self.lock();
            table.sweep(unix_now());
            if !table.dirty {
                return Ok(());
            }
            table.dirty = false;
            table
                .pins
                .iter()
                .map(|(name, pin)| (name.clone(), pin.clone()))
                .collect()
        };
        write_toml(&self.path, &PinsFile { pins }).inspect_err(|_| self.lock().dirty = true)
    }

    /// Saves the pins after each change, at most every [`SAVE_EVERY`], until `stop`; then once
    /// more.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.changed.notified() => {}
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(SAVE_EVERY) => {}
            }
            self.save_off_thread().await;
        }
        self.save_off_thread().await;
    }

    /// [`Pins::save`] on a thread that may block (the write ends with an fsync).
    async fn save_off_thread(self: &Arc<Self>) {
        let pins = self.clone();
        let saved = tokio::task::spawn_blocking(move || pins.save()).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "failed to save pins; trying again later"),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

/// Pins are filed under the lower-case, fully qualified name.
fn pin_key(name: &Name) -> String {
    name.to_lowercase().to_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::ed25519;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("p2pdns-pins-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(owner: &ed25519::Keypair, name: &Name, expires: u64) -> NameRecord {
        NameRecord::sign(owner, &name.to_lowercase(), 1, expires, vec![]).unwrap()
    }

    fn name(i: usize) -> Name {
        Name::from_ascii(format!("site{i}.p2p.")).unwrap()
    }

    #[test]
    fn a_pin_holds_until_its_record_expires_and_survives_a_restart() {
        let dir = temp_dir();
        let name = Name::from_ascii("Site.P2p.").unwrap();
        let owner = ed25519::Keypair::generate();
        let expires = unix_now() + 60;
        let pins = Pins::load(&dir, 10);
        pins.pin(&name, &record(&owner, &name, expires));
        let key = owner.public().to_bytes();
        assert_eq!(pins.owner(&name, unix_now()), Some(key));
        assert_eq!(
            pins.owner(&name, expires),
            None,
            "expired pins do not count"
        );
        assert!(
            Pins::load(&dir, 10).all().is_empty(),
            "a new pin waits for the saver, not the lookup"
        );
        pins.save().unwrap();
        let again = Pins::load(&dir, 10);
        assert_eq!(again.all(), pins.all(), "pins are saved");
        assert!(
            again
                .remove(&Name::from_ascii("site.p2p.").unwrap())
                .unwrap()
        );
        assert!(!again.remove(&name).unwrap());
        assert!(
            Pins::load(&dir, 10).all().is_empty(),
            "a removal is saved at once"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 1,437 names resolved into a store of 100: it keeps 100, the recently used ones; expired
    /// pins go before any unexpired one, on the way in and from a saved file.
    #[test]
    fn the_store_is_bounded_and_keeps_the_pins_that_matter() {
        let logs = crate::log_limit::LogLines::count();
        let dir = temp_dir();
        let owner = ed25519::Keypair::generate();
        let now = unix_now();
        let pins = Pins::load(&dir, 100);
        // Pinned first and used again and again: the names this user resolves.
        for i in 0..10 {
            pins.pin(&name(i), &record(&owner, &name(i), now + 3600));
        }
        for i in 10..1437 {
            pins.pin(&name(i), &record(&owner, &name(i), now + 3600));
            pins.owner(&name(i % 10), now + 10);
        }
        let all = pins.all();
        assert_eq!(all.len(), 100);
        // 1,337 pins dropped, each a client's doing: logged at the rate of any such line.
        let bound = usize::try_from(crate::log_limit::BURST).unwrap() + 1;
        assert!(logs.lines() <= bound, "{} log lines", logs.lines());
        for i in 0..10 {
            assert!(all.contains_key(&name(i).to_ascii()), "used pins are kept");
        }
        assert!(all.contains_key(&name(1436).to_ascii()));
        assert!(
            !all.contains_key(&name(10).to_ascii()),
            "the least used went"
        );

        // A pin about to expire, then a full store: the expired pin goes, not a used one.
        let short = Name::from_ascii("short.p2p.").unwrap();
        pins.pin(&short, &record(&owner, &short, now + 1));
        assert!(pins.all().contains_key("short.p2p."));
        let oldest_used = pins.lock().pins.peek_lru().map(|(n, _)| n.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        let late = Name::from_ascii("late.p2p.").unwrap();
        pins.pin(&late, &record(&owner, &late, now + 3600));
        let all = pins.all();
        assert!(!all.contains_key("short.p2p."), "the expired pin made room");
        assert!(
            all.contains_key(&oldest_used),
            "no unexpired pin was dropped"
        );

        // A saved file with more pins than the bound, some expired: the load keeps the most
        // recently used unexpired ones and prunes the file at the next save.
        pins.save().unwrap();
        let mut file: PinsFile = read_toml(&dir.join(PINS_FILE)).unwrap();
        assert_eq!(file.pins.len(), 100);
        let expired = Pin {
            owner: "gone".into(),
            expires: now - 1,
            used: now + 1000,
        };
        file.pins.insert("gone.p2p.".into(), expired);
        write_toml(&dir.join(PINS_FILE), &file).unwrap();
        let small = Pins::load(&dir, 50);
        let kept = small.all();
        assert_eq!(kept.len(), 50);
        assert!(
            !kept.contains_key("gone.p2p."),
            "expired pins are not loaded"
        );
        assert!(
            kept.contains_key(&name(0).to_ascii()),
            "recently used pins are"
        );
        small.save().unwrap();
        let file: PinsFile = read_toml(&dir.join(PINS_FILE)).unwrap();
        assert_eq!(file.pins.len(), 50, "the file is pruned");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The saver writes a burst of new pins once, after [`SAVE_EVERY`], and at shutdown.
    #[tokio::test(start_paused = true)]
    async fn new_pins_are_saved_in_batches_and_at_shutdown() {
        let dir = temp_dir();
        let owner = ed25519::Keypair::generate();
        let pins = Arc::new(Pins::load(&dir, 100));
        let stop = CancellationToken::new();
        let saver = tokio::spawn(pins.clone().run(stop.clone()));
        let saved = || {
            read_toml::<PinsFile>(&dir.join(PINS_FILE))
                .map(|f| f.pins.len())
                .unwrap_or(0)
        };
        for i in 0..5 {
            pins.pin(&name(i), &record(&owner, &name(i), unix_now() + 3600));
        }
        tokio::time::sleep(SAVE_EVERY / 2).await;
        assert_eq!(saved(), 0, "not before SAVE_EVERY");
        tokio::time::sleep(SAVE_EVERY).await;
        // The write runs on a blocking thread, outside the paused clock.
        for _ in 0..100 {
            if saved() == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(saved(), 5, "the burst is saved once");
        pins.pin(&name(9), &record(&owner, &name(9), unix_now() + 3600));
        stop.cancel();
        saver.await.unwrap();
        assert_eq!(saved(), 6, "the last change is saved at shutdown");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
