//! [`Names`]: this node's names and `names.toml`, changed one at a time under a lock, each
//! change written (synced) before the map shows it. Every rule that needs the current records
//! of a name (an add's merge, the cap of names per key, re-signing only what was chosen,
//! taking a newer record of this key) is decided here, under that lock.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use hickory_proto::rr::{LowerName, Name, Record};
use libp2p::identity::ed25519;
use tracing::error;

use super::{
    MAX_NAMES_PER_KEY, NAMES_FILE, PublishError, RECORD_LIFETIME, merge,
    names_file::{self, OwnNames},
};
use crate::{
    record::{self, NameRecord, unix_now},
    state::{LoadError, SaveError},
};

/// This node's names and `names.toml`, whose only writer this is. What the map holds is always
/// on disk: a change is written (and synced) first and applied to the map after.
pub(super) struct Names {
    pub(super) keypair: ed25519::Keypair,
    path: PathBuf,
    /// Read by every `.p2p` query: held for map operations only, never across a file write.
    own: Mutex<OwnNames>,
    /// Why the file could not be read at start, if it could not: then no save may replace it.
    unloaded: Option<Arc<LoadError>>,
    /// One change at a time, held from reading the map to applying the change: each write
    /// holds every change acknowledged before it.
    changing: Mutex<()>,
    /// Changes applied to the map so far: what was made from the names before one is stale.
    changes: AtomicU64,
}

/// What signing a name does to the records it holds.
pub(super) enum Edit {
    /// Puts these in their place (a zone file, the services' announcement, a re-signing).
    Replace(Vec<Record>),
    /// Adds these to them ([`merge::add`], RFC 2136 section 3.4.2.2), under the names' lock:
    /// adds made at once all count. When this node holds no record of the name, they are
    /// added to the network's newest record of this key ([`Learned::base`]).
    Add(Vec<Record>),
}

/// What the network holds of a name from this key, looked up before a first publish here.
#[derive(Default)]
pub(super) struct Learned {
    /// The lowest sequence number to sign with: above what the network holds.
    pub(super) min_seq: u64,
    /// The records of the network's newest record of this key (another machine with the
    /// key published it), which [`Edit::Add`] adds to.
    pub(super) base: Option<Vec<Record>>,
}

/// A change to the names.
pub(super) enum Change {
    /// Sign `name` (checked) with the records `edit` makes. With `if_seq`, only if the name
    /// still holds the record of that sequence number (republishing must not bring back a
    /// name unpublished meanwhile).
    Sign {
        name: Name,
        edit: Edit,
        if_seq: Option<u64>,
        learned: Learned,
    },
    /// Take this record of this key, signed elsewhere (another machine with the key), as the
    /// name's, if it is newer than the one held (and one is held).
    Adopt(Arc<NameRecord>),
    /// Stop publishing a name.
    Remove(LowerName),
}

/// What [`Names::sign`] did.
enum Signing {
    /// Signed this record.
    Signed(Arc<NameRecord>),
    /// Left the name as it was: an add of nothing new (the record held).
    Unchanged(Arc<NameRecord>),
    /// Left the name alone: it changed since it was chosen for re-signing.
    Withdrawn,
}

impl Names {
    pub(super) fn load(keypair: ed25519::Keypair, data_dir: &Path) -> Self {
        let path = data_dir.join(NAMES_FILE);
        let (own, unloaded) = match names_file::load(&path, &keypair.public().to_bytes()) {
            Ok(own) => (own, None),
            Err(error) => {
                error!(
                    "{}; publishing is off until it is fixed and the daemon restarted",
                    crate::error::one_line(&error)
                );
                (OwnNames::new(), Some(Arc::new(error)))
            }
        };
        Self {
            keypair,
            path,
            own: Mutex::new(own),
            unloaded,
            changing: Mutex::new(()),
            changes: AtomicU64::new(0),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, OwnNames> {
        // Every update is one map operation: a panic leaves nothing half-done.
        self.own.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `change`: on disk (synced) first, then in the map. Returns the record signed,
    /// taken or removed (or the one held, when an add changes nothing); `None` when there was
    /// nothing to remove or take, or the name to re-sign changed. Blocks on the disk.
    pub(super) fn apply(&self, change: Change) -> Result<Option<Arc<NameRecord>>, PublishError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(error) = &self.unloaded {
            return Err(PublishError::Unloaded(error.clone()));
        }
        let mut next = self.lock().clone();
        let done = match change {
            Change::Sign {
                name,
                edit,
                if_seq,
                learned,
            } => match self.sign(&mut next, name, edit, if_seq, learned)? {
                Signing::Signed(signed) => signed,
                Signing::Unchanged(held) => return Ok(Some(held)),
                Signing::Withdrawn => return Ok(None),
            },
            Change::Adopt(newer) => {
                let key = LowerName::new(&newer.name);
                let held = next.get(&key).map(|r| r.seq);
                if held.is_none_or(|seq| seq >= newer.seq)
                    || newer.owner != self.keypair.public().to_bytes()
                {
                    return Ok(None);
                }
                newer.verify(unix_now())?;
                next.insert(key, newer.clone());
                newer
            }
            Change::Remove(name) => match next.remove(&name) {
                Some(removed) => removed,
                None => return Ok(None),
            },
        };
        self.save(&next)?;
        *self.lock() = next;
        self.changes.fetch_add(1, Ordering::Release);
        Ok(Some(done))
    }

    /// How many changes the map has had (see [`super::Publisher::changes`]).
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Signs `name` into `next` with the records `edit` makes of those held (or of
    /// `learned`'s, when none are held).
    fn sign(
        &self,
        next: &mut OwnNames,
        name: Name,
        edit: Edit,
        if_seq: Option<u64>,
        learned: Learned,
    ) -> Result<Signing, PublishError> {
        let key = LowerName::new(&name);
        let held = next.get(&key).cloned();
        if if_seq.is_some() && held.as_ref().map(|r| r.seq) != if_seq {
            return Ok(Signing::Withdrawn);
        }
        if held.is_none() && next.len() >= MAX_NAMES_PER_KEY {
            return Err(PublishError::TooManyNames {
                name: name.to_ascii(),
                limit: MAX_NAMES_PER_KEY,
            });
        }
        let records = match edit {
            Edit::Replace(records) => records,
            Edit::Add(added) => {
                let base = match (&held, &learned.base) {
                    (Some(held), _) => held.records.as_slice(),
                    (None, Some(base)) => base.as_slice(),
                    (None, None) => &[],
                };
                let (merged, changed) = merge::add(base, added);
                if let Some(held) = held.as_ref().filter(|h| !changed && h.expires > unix_now()) {
                    return Ok(Signing::Unchanged(held.clone()));
                }
                record::tidy(merged)?
            }
        };
        let held_seq = held.map_or(0, |r| r.seq);
        let seq = (held_seq + 1).max(unix_now()).max(learned.min_seq);
        let expires = unix_now() + RECORD_LIFETIME.as_secs();
        let signed = NameRecord::sign(&self.keypair, &name, seq, expires, records)?;
        signed.verify(unix_now())?;
        let signed = Arc::new(signed);
        next.insert(key, signed.clone());
        Ok(Signing::Signed(signed))
    }

    /// Writes `names` (synced).
    fn save(&self, names: &OwnNames) -> Result<(), SaveError> {
        names_file::save(&self.path, names)
    }
}
