//! The names this node publishes: signed with its key, kept in `names.toml`, pushed to the DHT
//! and republished by [`Publisher::run`] before replicas forget them or they expire.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hickory_proto::rr::{LowerName, Name, Record};
use libp2p::identity::ed25519;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    p2p::{NodeError, NodeHandle},
    record::{self, ContentError, NameRecord, RecordError, key_of_name, unix_now},
    state::{LoadError, SaveError, load_toml, save_toml},
};

/// Lifetime of the records this node signs.
const RECORD_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);
/// File holding the names this node publishes.
const NAMES_FILE: &str = "names.toml";
/// How often own names are pushed to the DHT again, plus up to the jitter.
const REPUBLISH_EVERY: Duration = Duration::from_secs(600);
const REPUBLISH_JITTER_MS: u64 = 120_000;
/// The first push after start, once peers had a moment to connect.
const FIRST_PUSH: Duration = Duration::from_secs(3);
/// Wait after the first peer is met, so its bootstrap can find others, before pushing.
const AFTER_JOINING: Duration = Duration::from_secs(2);

/// Errors when publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The name or the records cannot make a valid record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The records break a rule of docs/PROTOCOL.md section 10.1 (a CNAME beside other data,
    /// several TTLs in one RRset, a DNAME).
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The P2P node did not take the record (it is saved, and pushed again later).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The name is the key name of another key, which only that key can publish under.
    #[error("{0} is a key name of another key")]
    NotOurKeyName(String),
    /// `p2pdns.p2p` and the names under it are reserved (docs/PROTOCOL.md section 1): never
    /// looked up in the DHT, so never published.
    #[error(
        "{0} is reserved (docs/PROTOCOL.md section 1) and is never looked up; choose another name"
    )]
    Reserved(String),
    /// The names file could not be written (a full disk says so): nothing changed, in memory
    /// or on disk, and nothing was acknowledged.
    #[error(transparent)]
    Save(#[from] SaveError),
    /// The names file could not be read at start: it is left as it is, and no change is made
    /// until it is readable and the daemon restarted.
    #[error("names cannot change until the names file is readable again and the daemon restarted")]
    Unloaded(#[source] Arc<LoadError>),
    /// Republishing found the name unpublished (or published anew) since it was chosen.
    #[error("{0} changed while it was being re-signed")]
    Withdrawn(String),
    /// The daemon is shutting down: the change was not made.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

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

/// Own names by lower-case name.
type OwnNames = BTreeMap<LowerName, Arc<NameRecord>>;

/// The owner of this node's names.
pub struct Publisher {
    node: NodeHandle,
    names: Arc<Names>,
}

/// This node's names and `names.toml`, whose only writer this is. What the map holds is always
/// on disk: a change is written (and synced) first and applied to the map after.
struct Names {
    keypair: ed25519::Keypair,
    path: PathBuf,
    /// Read by every `.p2p` query: held for map operations only, never across a file write.
    own: Mutex<OwnNames>,
    /// Entries of the file that did not load (signed by another key, or undecodable): written
    /// back as they are, so that no save loses them.
    kept: BTreeMap<String, OwnName>,
    /// Why the file could not be read at start, if it could not: then no save may replace it.
    unloaded: Option<Arc<LoadError>>,
    /// One change at a time, held from reading the map to applying the change: each write
    /// holds every change acknowledged before it.
    changing: Mutex<()>,
}

/// A change to the names.
enum Change {
    /// Sign `records` under `name` (already checked). With `if_seq`, only if the name still
    /// holds the record of that sequence number (republishing must not bring back a name
    /// unpublished meanwhile).
    Sign {
        name: Name,
        records: Vec<Record>,
        if_seq: Option<u64>,
    },
    /// Stop publishing a name.
    Remove(LowerName),
}

impl Publisher {
    /// The publisher signing with `keypair`, with the names saved in `data_dir`. A names file
    /// that cannot be read is left alone and turns publishing off ([`PublishError::Unloaded`]);
    /// a damaged one is moved aside ([`crate::state::load_toml`]).
    pub fn load(node: NodeHandle, keypair: ed25519::Keypair, data_dir: &Path) -> Self {
        Self {
            node,
            names: Arc::new(Names::load(keypair, data_dir)),
        }
    }

    /// This node's key name (`<key>.p2p.`).
    pub fn key_name(&self) -> Name {
        record::key_name(&self.names.keypair.public().to_bytes())
    }

    /// The unexpired record this node publishes under `name`, if any.
    pub fn get(&self, name: &LowerName) -> Option<Arc<NameRecord>> {
        self.names
            .lock()
            .get(name)
            .filter(|r| r.expires > unix_now())
            .cloned()
    }

    /// The names this node publishes, expired ones included (republishing re-signs them).
    pub fn names(&self) -> Vec<Arc<NameRecord>> {
        self.names.lock().values().cloned().collect()
    }

    /// Signs `records` under `name` with this node's key, saves them and pushes them to the
    /// DHT. Exact duplicates are dropped first ([`record::tidy`]). The sequence number rises
    /// with the clock, so it keeps rising even if the names file is lost. When this returns
    /// `Ok`, the record is on disk (synced) and survives a crash.
    ///
    /// # Errors
    /// [`PublishError`]: an invalid name or record, records an authoritative server would not
    /// load together, another key's key name, a failed save (then nothing changed), or the
    /// node not taking the record.
    pub async fn publish(
        &self,
        name: &Name,
        records: Vec<Record>,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let records = record::tidy(records)?;
        self.sign_and_push(name, records, None).await
    }

    /// Signs, saves and pushes `records` as they are: a record signed before the rules of
    /// [`record::tidy`] existed is re-signed unchanged rather than dropped (resolvers answer
    /// it by docs/PROTOCOL.md section 10.2).
    async fn sign_and_push(
        &self,
        name: &Name,
        records: Vec<Record>,
        if_seq: Option<u64>,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let name = name.to_lowercase();
        record::check_name(&name)?;
        if name.iter().next() == Some(record::RESERVED_LABEL.as_bytes()) {
            return Err(PublishError::Reserved(name.to_ascii()));
        }
        if let Some(key) = key_of_name(&name)
            && key != self.names.keypair.public().to_bytes()
        {
            return Err(PublishError::NotOurKeyName(name.to_ascii()));
        }
        let change = Change::Sign {
            name: name.clone(),
            records,
            if_seq,
        };
        // Signing and the synced write block: off the runtime's threads.
        let names = self.names.clone();
        let applied = tokio::task::spawn_blocking(move || names.apply(change)).await;
        let signed = match applied {
            Ok(result) => result?,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => return Err(PublishError::ShuttingDown),
            },
        };
        let Some(signed) = signed else {
            return Err(PublishError::Withdrawn(name.to_ascii()));
        };
        self.node.publish((*signed).clone()).await?;
        info!(name = %name, seq = signed.seq, "published");
        Ok(signed)
    }

    /// Stops publishing `name`; replicas expire on their own. Returns whether it was published.
    /// When this returns, the names file no longer holds it.
    ///
    /// # Errors
    /// [`PublishError::Save`] when the names file cannot be written (the name stays).
    pub fn unpublish(&self, name: &Name) -> Result<bool, PublishError> {
        let removed = self.names.apply(Change::Remove(LowerName::new(name)))?;
        Ok(removed.is_some())
    }

    /// Re-signs and pushes every own name whose record is past half its lifetime (or all of
    /// them, with `all`). Returns how many were pushed.
    pub async fn republish(&self, all: bool) -> usize {
        let now = unix_now();
        let due: Vec<Arc<NameRecord>> = self
            .names()
            .into_iter()
            .filter(|r| all || r.expires.saturating_sub(now) < RECORD_LIFETIME.as_secs() / 2)
            .collect();
        let mut pushed = 0;
        for record in due {
            let records = record.records.clone();
            match self
                .sign_and_push(&record.name, records, Some(record.seq))
                .await
            {
                Ok(_) => pushed += 1,
                Err(PublishError::Withdrawn(_)) => {}
                Err(error) => warn!(
                    name = %record.name,
                    "republishing failed: {}",
                    crate::error::one_line(&error)
                ),
            }
        }
        pushed
    }

    /// Pushes this node's names into the DHT until `stop`: soon after start, again once the
    /// first peer is met (names published while alone reached nobody), then every few minutes;
    /// records past half their lifetime are re-signed first.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut first = true;
        loop {
            let wait = if first {
                FIRST_PUSH
            } else {
                REPUBLISH_EVERY + Duration::from_millis(rand::random::<u64>() % REPUBLISH_JITTER_MS)
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.node.joined() => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(AFTER_JOINING) => {}
                    }
                }
            }
            let resigned = self.republish(false).await;
            self.push_all().await;
            if first || resigned > 0 {
                debug!(
                    names = self.names().len(),
                    resigned, "own names pushed to the DHT"
                );
            }
            first = false;
        }
    }

    /// Pushes every unexpired own name to the DHT as it is.
    async fn push_all(&self) {
        for record in self.names() {
            if record.expires > unix_now()
                && let Err(error) = self.node.publish((*record).clone()).await
            {
                warn!(name = %record.name, %error, "pushing a name to the DHT failed");
            }
        }
    }
}

impl Names {
    fn load(keypair: ed25519::Keypair, data_dir: &Path) -> Self {
        let path = data_dir.join(NAMES_FILE);
        let (own, kept, unloaded) = match load_toml::<NamesFile>(&path) {
            Ok(file) => {
                let (own, kept) = split_names(file.unwrap_or_default(), &keypair);
                (own, kept, None)
            }
            Err(error) => {
                error!(
                    "{}; publishing is off until it is fixed and the daemon restarted",
                    crate::error::one_line(&error)
                );
                (OwnNames::new(), BTreeMap::new(), Some(Arc::new(error)))
            }
        };
        Self {
            keypair,
            path,
            own: Mutex::new(own),
            kept,
            unloaded,
            changing: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OwnNames> {
        // Every update is one map operation: a panic leaves nothing half-done.
        self.own.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `change`: on disk (synced) first, then in the map. Returns the record signed or
    /// removed; `None` when there was nothing to remove, or the name to re-sign changed.
    /// Blocks on the disk.
    fn apply(&self, change: Change) -> Result<Option<Arc<NameRecord>>, PublishError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(error) = &self.unloaded {
            return Err(PublishError::Unloaded(error.clone()));
        }
        let mut next = self.lock().clone();
        let done = match change {
            Change::Sign {
                name,
                records,
                if_seq,
            } => {
                let key = LowerName::new(&name);
                let held = next.get(&key).map(|r| r.seq);
                if if_seq.is_some() && held != if_seq {
                    return Ok(None);
                }
                let seq = (held.unwrap_or(0) + 1).max(unix_now());
                let expires = unix_now() + RECORD_LIFETIME.as_secs();
                let signed = NameRecord::sign(&self.keypair, &name, seq, expires, records)?;
                signed.verify(unix_now())?;
                let signed = Arc::new(signed);
                next.insert(key, signed.clone());
                signed
            }
            Change::Remove(name) => match next.remove(&name) {
                Some(removed) => removed,
                None => return Ok(None),
            },
        };
        self.save(&next)?;
        *self.lock() = next;
        Ok(Some(done))
    }

    /// Writes `names`, with the entries kept from the file as they were.
    fn save(&self, names: &OwnNames) -> Result<(), SaveError> {
        let mut file = NamesFile {
            names: self.kept.clone(),
        };
        for record in names.values() {
            let record_hex = hex(&record.to_bytes());
            let entry = OwnName { record: record_hex };
            file.names.insert(record.name.to_ascii(), entry);
        }
        save_toml(&self.path, &file)
    }
}

/// The names of `file` that `keypair` signed, and the entries that are not (another key's,
/// undecodable), which are kept in the file untouched with a warning.
fn split_names(
    file: NamesFile,
    keypair: &ed25519::Keypair,
) -> (OwnNames, BTreeMap<String, OwnName>) {
    let own = keypair.public().to_bytes();
    let mut names = BTreeMap::new();
    let mut kept = BTreeMap::new();
    for (name, entry) in file.names {
        let record = unhex(&entry.record).and_then(|b| NameRecord::from_bytes(&b).ok());
        match record {
            // Expired ones are kept too: republishing re-signs them.
            Some(record) if record.owner == own => {
                names.insert(LowerName::new(&record.name), Arc::new(record));
            }
            Some(_) => {
                warn!(%name, "the names file holds a name signed by another key (was the identity key replaced?); it is kept in the file, not published");
                kept.insert(name, entry);
            }
            None => {
                warn!(%name, "the names file holds an unreadable entry; it is kept in the file, not published");
                kept.insert(name, entry);
            }
        }
    }
    (names, kept)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RData;
    use std::str::FromStr;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("p2pdns-names-{}", rand::random::<u64>()));
        crate::state::create_private_dir(&dir).unwrap();
        dir
    }

    fn sign(names: &Names, name: &str) -> Result<Option<Arc<NameRecord>>, PublishError> {
        let name = Name::from_ascii(name).unwrap();
        let a = RData::A("192.0.2.1".parse().unwrap());
        names.apply(Change::Sign {
            records: vec![Record::from_rdata(name.clone(), 300, a)],
            name,
            if_seq: None,
        })
    }

    fn names_in(names: &Names) -> Vec<String> {
        names.lock().keys().map(ToString::to_string).collect()
    }

    /// A change that cannot be saved is not made: what the map holds is on disk.
    #[test]
    fn a_change_that_cannot_be_saved_is_not_made() {
        let dir = temp_dir();
        let names = Names::load(ed25519::Keypair::generate(), &dir);
        sign(&names, "kept.p2p.").unwrap().unwrap();
        // The data directory is gone: every write fails.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            sign(&names, "new.p2p."),
            Err(PublishError::Save(_))
        ));
        let removed = names.apply(Change::Remove(LowerName::from_str("kept.p2p.").unwrap()));
        assert!(matches!(removed, Err(PublishError::Save(_))));
        assert_eq!(names_in(&names), ["kept.p2p."]);
    }

    /// Entries the key cannot load are written back as they were; a file that cannot be read
    /// is never replaced.
    #[test]
    fn what_did_not_load_is_never_overwritten() {
        let dir = temp_dir();
        let other = Names::load(ed25519::Keypair::generate(), &dir);
        sign(&other, "theirs.p2p.").unwrap();
        drop(other);
        let path = dir.join(NAMES_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("[names.\"junk.p2p.\"]\nrecord = \"zz\"\n");
        std::fs::write(&path, &text).unwrap();
        let names = Names::load(ed25519::Keypair::generate(), &dir);
        assert!(names_in(&names).is_empty());
        sign(&names, "ours.p2p.").unwrap();
        let saved: NamesFile = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let saved: Vec<&String> = saved.names.keys().collect();
        assert_eq!(saved, ["junk.p2p.", "ours.p2p.", "theirs.p2p."]);

        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let names = Names::load(ed25519::Keypair::generate(), &dir);
        assert!(matches!(
            sign(&names, "a.p2p."),
            Err(PublishError::Unloaded(_))
        ));
        assert!(path.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Re-signing for republication leaves a name that changed meanwhile alone.
    #[test]
    fn republishing_does_not_bring_back_an_unpublished_name() {
        let dir = temp_dir();
        let names = Names::load(ed25519::Keypair::generate(), &dir);
        let first = sign(&names, "site.p2p.").unwrap().unwrap();
        let key = LowerName::from_str("site.p2p.").unwrap();
        names.apply(Change::Remove(key)).unwrap().unwrap();
        let resign = names.apply(Change::Sign {
            name: first.name.clone(),
            records: first.records.clone(),
            if_seq: Some(first.seq),
        });
        assert!(matches!(resign, Ok(None)));
        assert!(names_in(&names).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
