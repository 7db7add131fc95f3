//! The records a node stores for the network, kept across restarts: a snapshot of the record
//! store in the data directory ([`RECORDS_FILE`]), written a few seconds after the store
//! changed ([`SAVE_DELAY`], so a flood of PUTs costs one write every few seconds) and at a
//! clean shutdown, atomically and durably ([`crate::state::write_private`]): a crash or
//! `kill -9` leaves the last snapshot whole. Without it, restarting the only storage node of a
//! network of NATed nodes (its introduction server) forgot every name until owners pushed
//! again, and any key could take a name in use in the meantime (first come, first served).
//!
//! At start every record of the file goes through the checks of an inbound PUT
//! ([`InboundPuts::admit`]: signature, expiry, key, owner, the per-owner and total bounds), so
//! a damaged or tampered file can only lose records, never add one a peer could not have put.
//! Each keeps its signed expiry: a restart lengthens no record's life. A file that does not
//! decode, or holds records the checks refuse for anything but their age, is copied aside
//! whole (`stored-records.bin.corrupt-<unix time>`) with one warning, and what passed is kept.
//!
//! Format (version 1): [`MAGIC`], then for each record its DHT key and its value (the signed
//! record of docs/PROTOCOL.md section 3), each as a big-endian `u16` length and the bytes.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::FutureExt;
use libp2p::kad::{
    self, RecordKey,
    store::{MemoryStore, RecordStore},
};
use tokio::{
    task::{JoinError, JoinHandle},
    time::Instant,
};
use tracing::{info, warn};

use super::inbound::{InboundPuts, Refused};
use crate::{
    record::{MAX_RECORD_BYTES, RecordError},
    state::{self, SaveError},
};

/// The snapshot's file in the data directory.
pub const RECORDS_FILE: &str = "stored-records.bin";
/// What the file starts with: its format and version.
const MAGIC: &[u8] = b"p2pdns stored records v1\n";
/// How long after a change of the store the snapshot is written: changes within it are
/// written together.
pub(crate) const SAVE_DELAY: Duration = Duration::from_secs(5);
/// While a write is under way, a due one waits this long before it is tried again.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// The longest DHT key read: ours are [`crate::record::KEY_NAMESPACE`] and a SHA-256 hash.
const MAX_KEY_BYTES: usize = 64;

/// The snapshot of `store`'s records, in the file's format.
pub(crate) fn encode(store: &MemoryStore) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    for record in store.records() {
        for field in [record.key.as_ref(), record.value.as_slice()] {
            let len = u16::try_from(field.len()).expect("keys and values are bounded by the store");
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(field);
        }
    }
    bytes
}

/// The records of a snapshot, unchecked, and what is wrong with the file, if anything: the
/// records before a damaged or cut-off entry are returned.
fn decode(bytes: &[u8]) -> (Vec<kad::Record>, Option<&'static str>) {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return (
            Vec::new(),
            Some("not a snapshot of stored records (version 1)"),
        );
    };
    let mut records = Vec::new();
    loop {
        let key = match field(&mut rest, MAX_KEY_BYTES) {
            Ok(key) => key,
            Err(_) if rest.is_empty() => return (records, None),
            Err(why) => return (records, Some(why)),
        };
        match field(&mut rest, MAX_RECORD_BYTES) {
            Ok(value) => records.push(kad::Record::new(RecordKey::new(&key), value)),
            Err(why) => return (records, Some(why)),
        }
    }
}

/// The next field of `rest` (a `u16` length, then that many bytes, at most `max`), taken off.
fn field(rest: &mut &[u8], max: usize) -> Result<Vec<u8>, &'static str> {
    let (len, tail) = rest.split_at_checked(2).ok_or("cut off")?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > max {
        return Err("a field is longer than allowed");
    }
    let (value, tail) = tail.split_at_checked(len).ok_or("cut off")?;
    *rest = tail;
    Ok(value.to_vec())
}

/// What loading a snapshot did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// Records put back in the store.
    pub(crate) kept: usize,
    /// Records whose signed expiry has passed, dropped.
    pub(crate) expired: usize,
    /// Records past `p2p.max_records_per_owner` or `p2p.max_stored_records`, or copies of a
    /// record kept: dropped, the file is not damaged for it (the limits may have been lowered).
    pub(crate) over_bounds: usize,
    /// Records the checks refused otherwise (a bad signature, another key's, another owner's
    /// name): the file was tampered with or damaged.
    pub(crate) refused: usize,
    /// What is wrong with the file's framing (it does not decode past some point).
    pub(crate) damage: Option<&'static str>,
}

impl Loaded {
    /// Is the file damaged (and to be copied aside)?
    fn damaged(&self) -> bool {
        self.refused > 0 || self.damage.is_some()
    }
}

/// Puts the records of the snapshot `bytes` in `store`, each through `puts`' checks.
pub(crate) fn restore(bytes: &[u8], store: &mut MemoryStore, puts: &InboundPuts) -> Loaded {
    let (records, damage) = decode(bytes);
    let mut loaded = Loaded {
        damage,
        ..Loaded::default()
    };
    for record in records {
        match puts.admit(store, record) {
            Ok(()) => loaded.kept += 1,
            Err(Refused::Invalid(RecordError::Expired)) => loaded.expired += 1,
            Err(Refused::OwnerFull | Refused::Store(_) | Refused::NotNewer) => {
                loaded.over_bounds += 1;
            }
            Err(_) => loaded.refused += 1,
        }
    }
    loaded
}

/// Loads the snapshot in `data_dir` into `store`, as [`restore`], and logs what it found. A
/// damaged file is copied aside and replaced by what was kept. Returns the snapshot to keep
/// up to date, or `None` when the file could not be read or set aside: then it is left as it
/// is, never written over, and the node stores in memory only (the log says why).
pub(crate) fn load(
    data_dir: &Path,
    store: &mut MemoryStore,
    puts: &InboundPuts,
) -> Option<Snapshot> {
    let path = data_dir.join(RECORDS_FILE);
    let max = u64::try_from(
        puts.max_stored_records()
            .saturating_mul(2 * 2 + MAX_KEY_BYTES + MAX_RECORD_BYTES),
    )
    .unwrap_or(u64::MAX)
    .saturating_add(MAGIC.len() as u64);
    let bytes = match state::read_bounded(&path, max) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Some(Snapshot::new(path));
        }
        Err(error) => {
            warn!(file = %path.display(), %error, "cannot read the stored records kept by the last run; starting without them, and not keeping them across restarts in this run");
            return None;
        }
    };
    let loaded = restore(&bytes, store, puts);
    if !loaded.damaged() {
        info!(file = %path.display(), kept = loaded.kept, expired = loaded.expired, over_bounds = loaded.over_bounds, "records stored for the network restored");
        return Some(Snapshot::new(path));
    }
    let why = loaded
        .damage
        .unwrap_or("records that fail the checks of a PUT");
    match state::set_aside_damaged(&path, &bytes, Some(encode(store).as_slice())) {
        Ok(aside) => {
            warn!(file = %path.display(), copied_to = %aside.display(), %why, kept = loaded.kept, refused = loaded.refused, expired = loaded.expired, "the stored records kept by the last run are damaged or tampered with: kept those that pass a PUT's checks, dropped the rest, and copied the file aside");
            Some(Snapshot::new(path))
        }
        Err(error) => {
            warn!(file = %path.display(), %why, kept = loaded.kept, error = %crate::error::one_line(&error), "the stored records kept by the last run are damaged and could not be copied aside: kept those that pass a PUT's checks; the file is left as it is and not kept up to date in this run");
            None
        }
    }
}

/// The snapshot file kept up to date by the event loop: written [`SAVE_DELAY`] after the
/// first change since the last write, one write at a time, off the loop's thread.
pub(crate) struct Snapshot {
    path: PathBuf,
    /// When the next write is due: `None` while the file is up to date.
    save_at: Option<Instant>,
    /// The write under way, if any.
    writing: Option<JoinHandle<Result<(), SaveError>>>,
}

impl Snapshot {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            save_at: None,
            writing: None,
        }
    }

    /// The store changed: a write is due within [`SAVE_DELAY`].
    pub(crate) fn changed(&mut self) {
        self.save_at
            .get_or_insert_with(|| Instant::now() + SAVE_DELAY);
    }

    /// When the next write is due, if one is.
    pub(crate) fn save_at(&self) -> Option<Instant> {
        self.save_at
    }

    /// Writes `store` now, unless a write is still under way (then soon after it).
    pub(crate) fn save(&mut self, store: &MemoryStore) {
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            self.save_at = Some(Instant::now() + BUSY_RETRY);
            return;
        }
        if let Some(done) = self.writing.take()
            && let Some(result) = done.now_or_never()
        {
            report(result);
        }
        self.save_at = None;
        self.writing = Some(self.write(store));
    }

    /// Writes `store`'s snapshot durably, off the caller's thread.
    fn write(&self, store: &MemoryStore) -> JoinHandle<Result<(), SaveError>> {
        let (path, bytes) = (self.path.clone(), encode(store));
        tokio::task::spawn_blocking(move || state::write_private(&path, &bytes))
    }

    /// At shutdown: waits for the write under way, then writes `store` if it changed since.
    pub(crate) async fn finish(&mut self, store: &MemoryStore) {
        if let Some(writing) = self.writing.take() {
            report(writing.await);
        }
        if self.save_at.take().is_some() {
            report(self.write(store).await);
        }
    }
}

/// Logs a write that failed; the next change writes again.
fn report(written: Result<Result<(), SaveError>, JoinError>) {
    let error = match written {
        Ok(Ok(())) => return,
        Ok(Err(error)) => crate::error::one_line(&error),
        Err(error) => error.to_string(),
    };
    warn!(%error, "failed to save the records stored for the network; the last snapshot stays");
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::Name;
    use libp2p::{PeerId, identity::ed25519::Keypair, kad::store::MemoryStoreConfig};

    use super::*;
    use crate::{
        config::P2pConfig,
        p2p::inbound::to_kad_record,
        record::{NameRecord, unix_now},
    };

    fn store(max_records: usize) -> MemoryStore {
        let config = MemoryStoreConfig {
            max_records,
            max_value_bytes: MAX_RECORD_BYTES + 1,
            ..MemoryStoreConfig::default()
        };
        MemoryStore::with_config(PeerId::random(), config)
    }

    fn signed(key: &Keypair, name: &str, expires: u64) -> NameRecord {
        let name = Name::from_ascii(name).expect("name");
        NameRecord::sign(key, &name, 1, expires, Vec::new()).expect("signed")
    }

    /// Puts `records` in a store as they are (no checks) and encodes it.
    fn snapshot_of(records: &[NameRecord]) -> Vec<u8> {
        let mut store = store(100);
        for record in records {
            store.put(to_kad_record(record)).expect("room");
        }
        encode(&store)
    }

    fn held(store: &MemoryStore) -> Vec<NameRecord> {
        let mut held: Vec<NameRecord> = store
            .records()
            .map(|r| NameRecord::from_bytes(&r.value).expect("stored records decode"))
            .collect();
        held.sort_by_key(|r| r.name.to_ascii());
        held
    }

    fn puts(max_records_per_owner: usize) -> InboundPuts {
        InboundPuts::new(&P2pConfig {
            max_records_per_owner,
            ..P2pConfig::default()
        })
    }

    /// What is written comes back as it was, each record with its signed expiry (a restart
    /// lengthens no record's life) and its owner as publisher.
    #[test]
    fn a_snapshot_comes_back_whole() {
        let (one, two) = (Keypair::generate(), Keypair::generate());
        let now = unix_now();
        let records = [
            signed(&one, "alpha.p2p.", now + 600),
            signed(&two, "beta.p2p.", now + 3600),
        ];
        let mut restored = store(100);
        let loaded = restore(&snapshot_of(&records), &mut restored, &puts(100));
        assert_eq!(
            loaded,
            Loaded {
                kept: 2,
                ..Loaded::default()
            }
        );
        assert_eq!(held(&restored), records);
        for record in restored.records() {
            let signed = NameRecord::from_bytes(&record.value).expect("decodes");
            let owner = libp2p::identity::ed25519::PublicKey::try_from_bytes(&signed.owner)
                .expect("owner key");
            assert_eq!(
                record.publisher,
                Some(PeerId::from_public_key(&owner.into()))
            );
            #[allow(clippy::disallowed_types)]
            let left = record
                .expires
                .expect("expires")
                .saturating_duration_since(std::time::Instant::now());
            assert!(
                left <= Duration::from_secs(signed.expires - now),
                "{left:?}"
            );
        }
        assert_eq!(encode(&restored).len(), snapshot_of(&records).len());
    }

    /// A file cut short keeps the records before the cut; one that is not a snapshot, or
    /// garbage after the header, keeps nothing and never panics.
    #[test]
    fn a_truncated_or_corrupt_file_keeps_what_decodes() {
        let key = Keypair::generate();
        let now = unix_now();
        let records = [
            signed(&key, "alpha.p2p.", now + 600),
            signed(&key, "beta.p2p.", now + 600),
        ];
        let bytes = snapshot_of(&records);
        let mut restored = store(100);
        let loaded = restore(&bytes[..bytes.len() - 10], &mut restored, &puts(100));
        assert_eq!((loaded.kept, loaded.damage), (1, Some("cut off")));
        assert_eq!(held(&restored).len(), 1);

        let mut restored = store(100);
        let loaded = restore(b"{\"not\": \"ours\"}", &mut restored, &puts(100));
        assert_eq!(loaded.kept, 0);
        assert!(loaded.damage.is_some());

        let mut rng_bytes = MAGIC.to_vec();
        let mut x: u32 = 2_463_534_242;
        for _ in 0..5000 {
            // xorshift: seeded garbage
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            rng_bytes.push(x.to_le_bytes()[0]);
        }
        let mut restored = store(100);
        let loaded = restore(&rng_bytes, &mut restored, &puts(100));
        assert_eq!(loaded.kept, 0);
        assert!(loaded.damaged());
        assert_eq!(restored.records().count(), 0);
    }

    /// A record altered in the file fails its signature and is dropped; the file counts as
    /// damaged, the other records stay.
    #[test]
    fn a_tampered_record_is_dropped() {
        let key = Keypair::generate();
        let now = unix_now();
        let records = [
            signed(&key, "alpha.p2p.", now + 600),
            signed(&key, "beta.p2p.", now + 600),
        ];
        let mut bytes = snapshot_of(&records);
        // The last byte is the second record's signature's.
        *bytes.last_mut().expect("not empty") ^= 1;
        let mut restored = store(100);
        let loaded = restore(&bytes, &mut restored, &puts(100));
        assert_eq!((loaded.kept, loaded.refused), (1, 1));
        assert!(loaded.damaged());
        assert_eq!(held(&restored).len(), 1);
    }

    /// A record whose signed expiry passed while the node was stopped is dropped; that is no
    /// damage.
    #[test]
    fn expired_records_are_dropped() {
        let key = Keypair::generate();
        let now = unix_now();
        let records = [
            signed(&key, "alpha.p2p.", now + 600),
            signed(&key, "old.p2p.", now - 1),
        ];
        let mut restored = store(100);
        let loaded = restore(&snapshot_of(&records), &mut restored, &puts(100));
        assert_eq!((loaded.kept, loaded.expired), (1, 1));
        assert!(!loaded.damaged());
        assert_eq!(held(&restored), records[..1]);
    }

    /// The bounds of an inbound PUT hold at load: `p2p.max_records_per_owner` and
    /// `p2p.max_stored_records` (lowered since the file was written, say).
    #[test]
    fn bounds_hold_at_load() {
        let (one, two) = (Keypair::generate(), Keypair::generate());
        let now = unix_now();
        let records = [
            signed(&one, "a.p2p.", now + 600),
            signed(&one, "b.p2p.", now + 600),
            signed(&two, "c.p2p.", now + 600),
            signed(&two, "d.p2p.", now + 600),
        ];
        let bytes = snapshot_of(&records);
        let mut restored = store(100);
        let loaded = restore(&bytes, &mut restored, &puts(1));
        assert_eq!((loaded.kept, loaded.over_bounds), (2, 2));
        assert!(!loaded.damaged());
        let mut small = store(3);
        let loaded = restore(&bytes, &mut small, &puts(100));
        assert_eq!((loaded.kept, loaded.over_bounds), (3, 1));
        assert_eq!(small.records().count(), 3);
    }

    /// Of two records for one name in the file (put there by hand), the second owner's is
    /// refused: first come, first served, as for PUTs.
    #[test]
    fn a_second_owner_of_a_name_in_the_file_is_refused() {
        let now = unix_now();
        let first = signed(&Keypair::generate(), "alpha.p2p.", now + 600);
        let second = signed(&Keypair::generate(), "alpha.p2p.", now + 600);
        let mut bytes = snapshot_of(std::slice::from_ref(&first));
        bytes.extend_from_slice(&snapshot_of(std::slice::from_ref(&second))[MAGIC.len()..]);
        let mut restored = store(100);
        let loaded = restore(&bytes, &mut restored, &puts(100));
        assert_eq!((loaded.kept, loaded.refused), (1, 1));
        assert_eq!(held(&restored), [first]);
    }

    /// A damaged file is copied aside whole and replaced by what passed; the snapshot is
    /// then written by the node as the store changes, and at shutdown.
    #[tokio::test]
    async fn a_damaged_file_is_set_aside_and_the_snapshot_kept_up_to_date() {
        let dir = std::env::temp_dir().join(format!("p2pdns-snapshot-{}", rand::random::<u64>()));
        state::create_private_dir(&dir).expect("dir");
        let key = Keypair::generate();
        let now = unix_now();
        let records = [
            signed(&key, "alpha.p2p.", now + 600),
            signed(&key, "beta.p2p.", now + 600),
        ];
        let mut bytes = snapshot_of(&records);
        *bytes.last_mut().expect("not empty") ^= 1;
        std::fs::write(dir.join(RECORDS_FILE), &bytes).expect("written");
        let mut restored = store(100);
        let mut snapshot = load(&dir, &mut restored, &puts(100)).expect("kept up to date");
        let aside: Vec<_> = std::fs::read_dir(&dir)
            .expect("listed")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("stored-records.bin.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(dir.join(&aside[0])).expect("copy"), bytes);
        let mut reloaded = store(100);
        let again = load(&dir, &mut reloaded, &puts(100));
        assert!(again.is_some());
        // The record written last (the store's order) lost a byte of its signature: the other
        // one is kept.
        let kept = held(&reloaded);
        assert!(kept.len() == 1 && records.contains(&kept[0]), "{kept:?}");

        restored
            .put(to_kad_record(&signed(&key, "gamma.p2p.", now + 600)))
            .expect("room");
        snapshot.changed();
        assert!(snapshot.save_at().is_some());
        snapshot.finish(&restored).await;
        assert!(snapshot.save_at().is_none());
        let mut reloaded = store(100);
        load(&dir, &mut reloaded, &puts(100)).expect("loads");
        assert_eq!(reloaded.records().count(), 2);
        std::fs::remove_dir_all(&dir).expect("removed");
    }
}
