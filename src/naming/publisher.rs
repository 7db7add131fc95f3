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
use tracing::{debug, info, warn};

use crate::{
    p2p::{NodeError, NodeHandle},
    record::{self, ContentError, NameRecord, RecordError, key_of_name, unix_now},
    state::{read_toml, write_toml},
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
    /// The P2P node did not take the record.
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
    /// The names file could not be written.
    #[error("failed to save {path}")]
    Save {
        /// `names.toml` in the data directory.
        path: PathBuf,
        /// Why the atomic write failed.
        #[source]
        source: std::io::Error,
    },
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
    keypair: ed25519::Keypair,
    path: PathBuf,
    /// Read by every `.p2p` query: held for map operations only, never across a file write.
    own: Mutex<OwnNames>,
    /// One save at a time, each writing the map as it is once it holds this: the last write
    /// is always the newest map.
    saving: Mutex<()>,
}

impl Publisher {
    /// The publisher signing with `keypair`, with the names saved in `data_dir`.
    pub fn load(node: NodeHandle, keypair: ed25519::Keypair, data_dir: &Path) -> Self {
        let path = data_dir.join(NAMES_FILE);
        let own = load_names(&path, &keypair);
        Self {
            node,
            keypair,
            path,
            own: Mutex::new(own),
            saving: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OwnNames> {
        // Every update is one map operation: a panic leaves nothing half-done.
        self.own.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's key name (`<key>.p2p.`).
    pub fn key_name(&self) -> Name {
        record::key_name(&self.keypair.public().to_bytes())
    }

    /// The unexpired record this node publishes under `name`, if any.
    pub fn get(&self, name: &LowerName) -> Option<Arc<NameRecord>> {
        self.lock()
            .get(name)
            .filter(|r| r.expires > unix_now())
            .cloned()
    }

    /// The names this node publishes, expired ones included (republishing re-signs them).
    pub fn names(&self) -> Vec<Arc<NameRecord>> {
        self.lock().values().cloned().collect()
    }

    /// Signs `records` under `name` with this node's key, saves them and pushes them to the
    /// DHT. Exact duplicates are dropped first ([`record::tidy`]). The sequence number rises
    /// with the clock, so it keeps rising even if the names file is lost.
    ///
    /// # Errors
    /// [`PublishError`]: an invalid name or record, records an authoritative server would not
    /// load together, another key's key name, a failed save, or the node not taking the record.
    pub async fn publish(
        &self,
        name: &Name,
        records: Vec<Record>,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let records = record::tidy(records)?;
        self.sign_and_push(name, records).await
    }

    /// Signs, saves and pushes `records` as they are: a record signed before the rules of
    /// [`record::tidy`] existed is re-signed unchanged rather than dropped (resolvers answer
    /// it by docs/PROTOCOL.md section 10.2).
    async fn sign_and_push(
        &self,
        name: &Name,
        records: Vec<Record>,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let name = name.to_lowercase();
        record::check_name(&name)?;
        if name.iter().next() == Some(record::RESERVED_LABEL.as_bytes()) {
            return Err(PublishError::Reserved(name.to_ascii()));
        }
        if let Some(key) = key_of_name(&name)
            && key != self.keypair.public().to_bytes()
        {
            return Err(PublishError::NotOurKeyName(name.to_ascii()));
        }
        let signed = {
            let mut own = self.lock();
            let key = LowerName::new(&name);
            let seq = (own.get(&key).map_or(0, |r| r.seq) + 1).max(unix_now());
            let expires = unix_now() + RECORD_LIFETIME.as_secs();
            let signed = NameRecord::sign(&self.keypair, &name, seq, expires, records)?;
            signed.verify(unix_now())?;
            let signed = Arc::new(signed);
            own.insert(key, signed.clone());
            signed
        };
        self.save()?;
        self.node.publish((*signed).clone()).await?;
        info!(name = %name, seq = signed.seq, "published");
        Ok(signed)
    }

    /// Stops publishing `name`; replicas expire on their own. Returns whether it was published.
    ///
    /// # Errors
    /// [`PublishError::Save`] when the names file cannot be written.
    pub fn unpublish(&self, name: &Name) -> Result<bool, PublishError> {
        let removed = self.lock().remove(&LowerName::new(name)).is_some();
        if removed {
            self.save()?;
        }
        Ok(removed)
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
            match self
                .sign_and_push(&record.name, record.records.clone())
                .await
            {
                Ok(_) => pushed += 1,
                Err(error) => warn!(name = %record.name, %error, "republishing failed"),
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

    fn save(&self) -> Result<(), PublishError> {
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let names = self
            .names()
            .iter()
            .map(|r| {
                let record = hex(&r.to_bytes());
                (r.name.to_ascii(), OwnName { record })
            })
            .collect();
        write_toml(&self.path, &NamesFile { names }).map_err(|source| PublishError::Save {
            path: self.path.clone(),
            source,
        })
    }
}

/// The names saved at `path` that `keypair` signed; others are skipped with a warning.
fn load_names(path: &Path, keypair: &ed25519::Keypair) -> OwnNames {
    let Some(file) = read_toml::<NamesFile>(path) else {
        return BTreeMap::new();
    };
    let own = keypair.public().to_bytes();
    let mut names = BTreeMap::new();
    for (name, entry) in file.names {
        let record = unhex(&entry.record).and_then(|b| NameRecord::from_bytes(&b).ok());
        match record {
            // Expired ones are kept too: republishing re-signs them.
            Some(record) if record.owner == own => {
                names.insert(LowerName::new(&record.name), Arc::new(record));
            }
            _ => warn!(%name, "ignoring an unreadable published name"),
        }
    }
    names
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
