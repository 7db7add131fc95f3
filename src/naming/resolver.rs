//! `.p2p` names from the DHT: lookups within a time budget, replica selection and pins,
//! a cache of signed records, and the names this node publishes (kept on disk, republished
//! before they expire).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    num::NonZeroUsize,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, RData, Record, RecordType},
};
use libp2p::{PeerId, identity::ed25519};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{NamingAnswer, RecordSource, answer_from};
use crate::{
    p2p::{NodeError, NodeHandle, Replicas, Scope, ip_scope},
    record::{self, NameRecord, RecordError, key_of_name, record_name_for, unix_now},
    state::write_private,
};

/// Signed records cached at most.
const CACHE_ENTRIES: usize = 10_000;
/// How long "the DHT has no such name" is believed, in seconds: short, because a name may
/// be published any moment (clients cache NXDOMAIN for the p2p. SOA minimum on their own).
const NEGATIVE_CACHE_SECS: u64 = 10;
/// Lifetime of the records this node signs.
pub const RECORD_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);
/// File holding the names this node publishes.
const NAMES_FILE: &str = "names.toml";
/// File holding the pinned owners of human names.
const PINS_FILE: &str = "pins.toml";

/// Errors when publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{0} is a key name of another key")]
    NotOurKeyName(String),
    #[error("failed to save {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A cached DHT result.
#[derive(Clone)]
enum Cached {
    Found {
        record: Arc<NameRecord>,
        /// Replicas that agreed on it.
        agreeing: usize,
    },
    Absent,
}

struct CacheEntry {
    value: Cached,
    fetched: Instant,
}

/// One pinned owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// One name this node publishes.
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

/// What a resolve found (for `p2pdns resolve`).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub record: Arc<NameRecord>,
    /// Valid replicas that carried the chosen record's owner.
    pub agreeing: usize,
}

/// The DHT side of naming.
pub struct Dht {
    node: NodeHandle,
    keypair: ed25519::Keypair,
    data_dir: PathBuf,
    budget: Duration,
    replicas: usize,
    allow_private: Vec<LowerName>,
    cache: Mutex<LruCache<LowerName, CacheEntry>>,
    inflight: Mutex<HashMap<LowerName, Vec<oneshot::Sender<Option<Cached>>>>>,
    own: Mutex<BTreeMap<LowerName, Arc<NameRecord>>>,
    pins: Mutex<BTreeMap<String, Pin>>,
}

impl Dht {
    /// Sets up the DHT side and loads the published names and pins from `data_dir`.
    pub fn new(
        node: NodeHandle,
        keypair: ed25519::Keypair,
        data_dir: PathBuf,
        budget: Duration,
        replicas: usize,
        allow_private: Vec<LowerName>,
    ) -> Self {
        let own = load_names(&data_dir, &keypair);
        let pins = load_toml::<PinsFile>(&data_dir.join(PINS_FILE))
            .map(|f| f.pins)
            .unwrap_or_default();
        Self {
            node,
            keypair,
            data_dir,
            budget,
            replicas: replicas.max(1),
            allow_private,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE_ENTRIES).expect("nonzero constant"),
            )),
            inflight: Mutex::new(HashMap::new()),
            own: Mutex::new(own),
            pins: Mutex::new(pins),
        }
    }

    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// This node's key name (`<key>.p2p.`).
    pub fn key_name(&self) -> Name {
        record::key_name(&self.keypair.public().to_bytes())
    }

    /// Answers a DNS question for a name under `.p2p`.
    pub async fn lookup(
        self: &Arc<Self>,
        qname: &Name,
        qtype: RecordType,
        tld: &Name,
    ) -> NamingAnswer {
        let lower = LowerName::new(qname);
        let Some(record_name) = record_name_for(&lower) else {
            return answer_from(&Empty, qname, qtype, tld);
        };
        let key = LowerName::new(&record_name);
        if let Some(own) = self.own_record(&key) {
            return self.answer(&own, qname, qtype, tld);
        }
        match self.resolve(&record_name).await {
            Some(Cached::Found { record, .. }) => self.answer(&record, qname, qtype, tld),
            Some(Cached::Absent) => answer_from(&Empty, qname, qtype, tld),
            None => NamingAnswer::rcode(ResponseCode::ServFail),
        }
    }

    /// Resolves a DHT name for `p2pdns resolve`: the chosen record and its support.
    pub async fn resolve_record(self: &Arc<Self>, name: &Name) -> Option<Resolved> {
        let key = LowerName::new(name);
        if let Some(own) = self.own_record(&key) {
            return Some(Resolved {
                record: own,
                agreeing: 1,
            });
        }
        match self.resolve(name).await {
            Some(Cached::Found { record, agreeing }) => Some(Resolved { record, agreeing }),
            _ => None,
        }
    }

    fn own_record(&self, key: &LowerName) -> Option<Arc<NameRecord>> {
        let own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        own.get(key).filter(|r| r.expires > unix_now()).cloned()
    }

    /// Cache, else a DHT lookup within the budget. `None`: no answer in time (the lookup goes
    /// on and fills the cache for the next query).
    async fn resolve(self: &Arc<Self>, name: &Name) -> Option<Cached> {
        let key = LowerName::new(name);
        let stale = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&key) {
                Some(entry) if fresh(entry) => return Some(entry.value.clone()),
                Some(entry) => match &entry.value {
                    Cached::Found { record, .. } if record.expires > unix_now() => {
                        Some(entry.value.clone())
                    }
                    _ => None,
                },
                None => None,
            }
        };
        let rx = self.join_or_start(name.clone(), key);
        match tokio::time::timeout(self.budget, rx).await {
            Ok(Ok(Some(found))) => Some(found),
            // No answer (or an error) in time: a signed record still valid is better than
            // nothing (serve stale).
            _ => stale,
        }
    }

    fn join_or_start(
        self: &Arc<Self>,
        name: Name,
        key: LowerName,
    ) -> oneshot::Receiver<Option<Cached>> {
        let (tx, rx) = oneshot::channel();
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiters) = inflight.get_mut(&key) {
            waiters.push(tx);
            return rx;
        }
        inflight.insert(key.clone(), vec![tx]);
        drop(inflight);
        // The lookup runs in its own task: when the DNS budget runs out first, it still
        // finishes and fills the cache for the next query.
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Answer within most of the DNS budget with what is in, rather than wait for
            // replicas that may never come.
            let answer_by = this.budget * 3 / 4;
            let result = this
                .node
                .lookup_within(name.clone(), this.replicas, answer_by)
                .await;
            let outcome = match result {
                Ok(replicas) => this.settle(&name, replicas),
                Err(error) => {
                    debug!(%name, %error, "DHT lookup failed");
                    None
                }
            };
            let waiters = this
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key)
                .unwrap_or_default();
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        });
        rx
    }

    fn answer(
        &self,
        record: &NameRecord,
        qname: &Name,
        qtype: RecordType,
        tld: &Name,
    ) -> NamingAnswer {
        let mut answer = answer_from(record, qname, qtype, tld);
        let left = u32::try_from(record.expires.saturating_sub(unix_now())).unwrap_or(u32::MAX);
        for r in &mut answer.answers {
            r.ttl = r.ttl.min(left);
        }
        let lower = LowerName::new(qname);
        let private_ok = self
            .allow_private
            .iter()
            .any(|allowed| allowed.zone_of(&lower));
        if !private_ok {
            let before = answer.answers.len();
            answer.answers.retain(|r| !is_private_answer(r));
            if answer.answers.len() < before {
                debug!(name = %qname, "removed private addresses from a .p2p answer (DNS rebinding protection)");
            }
        }
        answer
    }

    /// Signs `records` under `name` with this node's key, stores them and publishes them.
    pub async fn publish(
        &self,
        name: &Name,
        records: Vec<Record>,
    ) -> Result<Arc<NameRecord>, PublishError> {
        let name = name.to_lowercase();
        record::check_name(&name)?;
        let own_key = self.keypair.public().to_bytes();
        if let Some(key) = key_of_name(&name)
            && key != own_key
        {
            return Err(PublishError::NotOurKeyName(name.to_ascii()));
        }
        let key = LowerName::new(&name);
        let previous_seq = self
            .own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .map_or(0, |r| r.seq);
        // Time-based sequence numbers keep rising even if the names file is lost.
        let seq = (previous_seq + 1).max(unix_now());
        let expires = unix_now() + RECORD_LIFETIME.as_secs();
        let signed = Arc::new(NameRecord::sign(
            &self.keypair,
            &name,
            seq,
            expires,
            records,
        )?);
        signed.verify(unix_now())?;
        self.own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, signed.clone());
        self.save_names()?;
        self.node.publish((*signed).clone()).await?;
        info!(name = %name, seq, "published");
        Ok(signed)
    }

    /// Stops publishing `name`. Replicas expire on their own.
    pub fn unpublish(&self, name: &Name) -> Result<bool, PublishError> {
        let removed = self
            .own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&LowerName::new(name))
            .is_some();
        if removed {
            self.save_names()?;
        }
        Ok(removed)
    }

    /// The names this node publishes.
    pub fn own_names(&self) -> Vec<Arc<NameRecord>> {
        self.own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Re-signs and pushes every own name whose record is past half its lifetime (or all of
    /// them, with `all`). Returns how many were pushed.
    pub async fn republish(&self, all: bool) -> usize {
        let now = unix_now();
        let due: Vec<Arc<NameRecord>> = self
            .own_names()
            .into_iter()
            .filter(|r| all || r.expires.saturating_sub(now) < RECORD_LIFETIME.as_secs() / 2)
            .collect();
        let mut pushed = 0;
        for record in due {
            match self.publish(&record.name, record.records.clone()).await {
                Ok(_) => pushed += 1,
                Err(error) => warn!(name = %record.name, %error, "republishing failed"),
            }
        }
        pushed
    }

    fn save_names(&self) -> Result<(), PublishError> {
        let file = NamesFile {
            names: self
                .own_names()
                .iter()
                .map(|r| {
                    (
                        r.name.to_ascii(),
                        OwnName {
                            record: hex(&r.to_bytes()),
                        },
                    )
                })
                .collect(),
        };
        let path = self.data_dir.join(NAMES_FILE);
        let text = toml::to_string(&file).expect("names serialize");
        write_private(&path, text.as_bytes()).map_err(|source| PublishError::Save { path, source })
    }

    /// The pinned owners, by name.
    pub fn pins(&self) -> BTreeMap<String, Pin> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the pin of `name`. Returns whether there was one.
    pub fn remove_pin(&self, name: &Name) -> std::io::Result<bool> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        let removed = pins.remove(&name.to_lowercase().to_ascii()).is_some();
        if removed {
            save_pins(&self.data_dir.join(PINS_FILE), &pins)?;
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop(&LowerName::new(name));
        }
        Ok(removed)
    }
}

impl Dht {
    /// Picks the record to believe among the replicas of `name`, updates the pin and the
    /// cache, and returns the result. `None` when nothing usable came back.
    fn settle(&self, name: &Name, replicas: Replicas) -> Option<Cached> {
        let key = LowerName::new(name);
        let now = unix_now();
        let human = key_of_name(name).is_none();
        let pin_key = name.to_lowercase().to_ascii();
        let pinned = if human {
            self.pins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&pin_key)
                .filter(|pin| pin.expires > now)
                .and_then(|pin| key_of_name(&Name::from_ascii(&pin.owner).ok()?))
        } else {
            None
        };
        if replicas.invalid > 0 {
            debug!(%name, invalid = replicas.invalid, "dropped invalid replicas");
        }
        let value = match select(&replicas.records, pinned) {
            Some((record, agreeing)) => {
                if human {
                    self.pin(&pin_key, &record);
                }
                Cached::Found {
                    record: Arc::new(record),
                    agreeing,
                }
            }
            None if replicas.absent => Cached::Absent,
            None if pinned.is_some() && !replicas.records.is_empty() => {
                warn!(%name, "only records from another key than the pinned owner were found; refused");
                return None;
            }
            None => return None,
        };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(
            key,
            CacheEntry {
                value: value.clone(),
                fetched: Instant::now(),
            },
        );
        Some(value)
    }

    fn pin(&self, name: &str, record: &NameRecord) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        let owner = record.owner_name().to_ascii();
        let changed = match pins.get(name) {
            Some(pin) => pin.owner != owner || pin.expires < record.expires,
            None => true,
        };
        if !changed {
            return;
        }
        if pins.get(name).is_some_and(|p| p.owner != owner) {
            info!(name, %owner, "pinned owner changed after the old pin expired");
        }
        pins.insert(
            name.to_owned(),
            Pin {
                owner,
                expires: record.expires,
            },
        );
        if let Err(error) = save_pins(&self.data_dir.join(PINS_FILE), &pins) {
            warn!(%error, "failed to save pins");
        }
    }
}

/// Section 6 of docs/PROTOCOL.md: the pinned owner's newest record; else the owner most
/// replicas agree on (ties: higher seq, then lower key), and that owner's newest record.
/// Returns the record and how many replicas carried its owner.
fn select(
    records: &[(Option<PeerId>, NameRecord)],
    pinned: Option<[u8; 32]>,
) -> Option<(NameRecord, usize)> {
    let mut by_owner: BTreeMap<[u8; 32], (usize, &NameRecord)> = BTreeMap::new();
    for (_, record) in records {
        let entry = by_owner.entry(record.owner).or_insert((0, record));
        entry.0 += 1;
        if record.seq > entry.1.seq {
            entry.1 = record;
        }
    }
    if let Some(pin) = pinned {
        return by_owner
            .get(&pin)
            .map(|(count, record)| ((*record).clone(), *count));
    }
    by_owner
        .iter()
        .max_by(|a, b| {
            (a.1.0, a.1.1.seq)
                .cmp(&(b.1.0, b.1.1.seq))
                // Lower key wins a full tie: reverse the key order for max_by.
                .then_with(|| b.0.cmp(a.0))
        })
        .map(|(_, (count, record))| ((*record).clone(), *count))
}

fn fresh(entry: &CacheEntry) -> bool {
    let age = entry.fetched.elapsed();
    match &entry.value {
        Cached::Absent => age < Duration::from_secs(NEGATIVE_CACHE_SECS),
        Cached::Found { record, .. } => {
            let ttl = record.records.iter().map(|r| r.ttl).min().unwrap_or(60);
            age < Duration::from_secs(ttl.into()) && record.expires > unix_now()
        }
    }
}

/// Loopback, private, link-local and unspecified addresses: a .p2p name must not point a
/// browser at the user's own network unless allowed (DNS rebinding).
fn is_private_answer(record: &Record) -> bool {
    let ip: IpAddr = match &record.data {
        RData::A(a) => IpAddr::V4(a.0),
        RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
        _ => return false,
    };
    let ip = ip.to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    ip_scope(ip) != Scope::Global || ip.is_unspecified() || broadcast
}

impl RecordSource for NameRecord {
    fn records_at(&self, name: &LowerName) -> Vec<Record> {
        self.records
            .iter()
            .filter(|r| LowerName::new(&r.name) == *name)
            .cloned()
            .collect()
    }

    fn has_below(&self, name: &LowerName) -> bool {
        self.records.iter().any(|r| {
            let owner = LowerName::new(&r.name);
            owner != *name && name.zone_of(&owner)
        })
    }
}

/// No records at all: NXDOMAIN for everything.
struct Empty;

impl RecordSource for Empty {
    fn records_at(&self, _: &LowerName) -> Vec<Record> {
        Vec::new()
    }

    fn has_below(&self, _: &LowerName) -> bool {
        false
    }
}

fn load_toml<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    match toml::from_str(&text) {
        Ok(value) => Some(value),
        Err(error) => {
            warn!(path = %path.display(), %error, "ignoring an unreadable state file");
            None
        }
    }
}

fn save_pins(path: &std::path::Path, pins: &BTreeMap<String, Pin>) -> std::io::Result<()> {
    let text = toml::to_string(&PinsFile { pins: pins.clone() }).expect("pins serialize");
    write_private(path, text.as_bytes())
}

fn load_names(
    dir: &std::path::Path,
    keypair: &ed25519::Keypair,
) -> BTreeMap<LowerName, Arc<NameRecord>> {
    let Some(file) = load_toml::<NamesFile>(&dir.join(NAMES_FILE)) else {
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

    fn rec(kp: &ed25519::Keypair, seq: u64) -> NameRecord {
        NameRecord::sign(
            kp,
            &Name::from_ascii("site.p2p.").unwrap(),
            seq,
            unix_now() + 60,
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn selection_prefers_pin_then_majority_then_seq() {
        let good = ed25519::Keypair::generate();
        let evil = ed25519::Keypair::generate();
        let replicas = vec![
            (None, rec(&good, 5)),
            (None, rec(&good, 6)),
            (None, rec(&evil, 99)),
        ];
        let (chosen, count) = select(&replicas, None).unwrap();
        assert_eq!(chosen.owner, good.public().to_bytes());
        assert_eq!(chosen.seq, 6);
        assert_eq!(count, 2);
        // A pin beats the majority.
        let (chosen, _) = select(&replicas, Some(evil.public().to_bytes())).unwrap();
        assert_eq!(chosen.seq, 99);
        // A pinned owner with no replica gives nothing, not the other key's record.
        let other = ed25519::Keypair::generate();
        assert!(select(&replicas, Some(other.public().to_bytes())).is_none());
    }

    #[test]
    fn private_addresses_are_recognized() {
        let name = Name::from_ascii("x.p2p.").unwrap();
        let a = |ip: &str| Record::from_rdata(name.clone(), 60, RData::A(ip.parse().unwrap()));
        let aaaa =
            |ip: &str| Record::from_rdata(name.clone(), 60, RData::AAAA(ip.parse().unwrap()));
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private_answer(&a(private)), "{private}");
        }
        for private in ["::1", "fd00::1", "fe80::1", "::ffff:192.168.1.1"] {
            assert!(is_private_answer(&aaaa(private)), "{private}");
        }
        assert!(!is_private_answer(&a("192.0.2.1")));
        assert!(!is_private_answer(&aaaa("2001:db8::1")));
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
