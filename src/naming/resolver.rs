//! `.p2p` names from the DHT: lookups within a time budget (one DHT query however many
//! clients ask), replica selection with pins (docs/PROTOCOL.md section 6), a cache of the
//! signed records found, and the answers built from a record (TTLs capped by its expiry,
//! private addresses removed).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use libp2p::PeerId;
use lru::LruCache;
use tokio::{sync::oneshot, time::Instant};
use tracing::{debug, warn};

use super::{NamingAnswer, RecordSource, answer_from, pins::Pins};
use crate::{
    p2p::{NodeHandle, Replicas, Scope, ip_scope},
    record::{NameRecord, key_of_name, unix_now},
};

/// Signed records cached at most.
const CACHE_ENTRIES: usize = 10_000;
/// How long "the DHT has no such name" is believed: short, because a name may be published
/// any moment (clients cache NXDOMAIN for the p2p. SOA minimum on their own).
const NEGATIVE_CACHE: Duration = Duration::from_secs(10);
/// Freshness of a cached record that holds no resource record to take a TTL from.
const EMPTY_RECORD_TTL: u32 = 60;

/// What a resolve found (for `p2pdns resolve`).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The record believed, verified, among the replicas (docs/PROTOCOL.md section 6).
    pub record: Arc<NameRecord>,
    /// Valid replicas that carried the chosen record's owner.
    pub agreeing: usize,
}

/// What the DHT says about a name.
#[derive(Debug, Clone)]
pub enum DhtAnswer {
    /// The record chosen among the replicas.
    Found(Resolved),
    /// The lookup ended and no peer had a record.
    Absent,
}

struct CacheEntry {
    value: DhtAnswer,
    fetched: Instant,
}

impl CacheEntry {
    /// May the entry be served without asking the DHT again? A found record is fresh for its
    /// smallest TTL while it has not expired; an absence for [`NEGATIVE_CACHE`].
    fn fresh(&self) -> bool {
        let age = self.fetched.elapsed();
        match &self.value {
            DhtAnswer::Absent => age < NEGATIVE_CACHE,
            DhtAnswer::Found(found) => {
                let records = &found.record.records;
                let ttl = records.iter().map(|r| r.ttl).min();
                age < Duration::from_secs(ttl.unwrap_or(EMPTY_RECORD_TTL).into())
                    && found.record.expires > unix_now()
            }
        }
    }
}

/// Clients waiting on one DHT lookup.
type Waiters = Vec<oneshot::Sender<Option<DhtAnswer>>>;

/// The cache and the lookups in flight, under one lock: a finished lookup fills the first and
/// leaves the second in one step, so no query falls between them.
struct State {
    cache: LruCache<LowerName, CacheEntry>,
    inflight: HashMap<LowerName, Waiters>,
}

/// The DHT resolver.
pub struct Resolver {
    node: NodeHandle,
    /// Longest a DNS query waits for the DHT.
    budget: Duration,
    /// Valid replicas wanted before a lookup answers early.
    replicas: usize,
    /// Names (and their subdomains) whose answers may hold private addresses.
    allow_private: Vec<LowerName>,
    pins: Pins,
    state: Mutex<State>,
}

impl Resolver {
    /// A resolver asking `node`, answering within `budget`, believing `pins`.
    pub fn new(
        node: NodeHandle,
        pins: Pins,
        budget: Duration,
        replicas: usize,
        allow_private: Vec<LowerName>,
    ) -> Self {
        let entries = NonZeroUsize::new(CACHE_ENTRIES).expect("nonzero constant");
        Self {
            node,
            budget,
            replicas: replicas.max(1),
            allow_private,
            pins,
            state: Mutex::new(State {
                cache: LruCache::new(entries),
                inflight: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each update is a map operation or two: a panic leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pin store.
    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// Forgets the pin of `name` and the record cached under it. Returns whether there was a
    /// pin.
    pub fn remove_pin(&self, name: &Name) -> std::io::Result<bool> {
        let removed = self.pins.remove(name)?;
        if removed {
            self.lock().cache.pop(&LowerName::new(name));
        }
        Ok(removed)
    }

    /// Cache, else a DHT lookup within the budget. `None`: no answer in time (the lookup goes
    /// on and fills the cache for the next query); a cached record still valid is served
    /// then, rather than nothing.
    pub async fn resolve(self: &Arc<Self>, name: &Name) -> Option<DhtAnswer> {
        let key = LowerName::new(name);
        let (stale, rx) = {
            let mut state = self.lock();
            let stale = match state.cache.get(&key) {
                Some(entry) if entry.fresh() => return Some(entry.value.clone()),
                Some(CacheEntry {
                    value: value @ DhtAnswer::Found(found),
                    ..
                }) if found.record.expires > unix_now() => Some(value.clone()),
                _ => None,
            };
            (stale, self.join_or_start(&mut state, name, key))
        };
        match tokio::time::timeout(self.budget, rx).await {
            Ok(Ok(Some(found))) => Some(found),
            _ => stale,
        }
    }

    fn join_or_start(
        self: &Arc<Self>,
        state: &mut State,
        name: &Name,
        key: LowerName,
    ) -> oneshot::Receiver<Option<DhtAnswer>> {
        let (tx, rx) = oneshot::channel();
        if let Some(waiters) = state.inflight.get_mut(&key) {
            waiters.push(tx);
            return rx;
        }
        state.inflight.insert(key.clone(), vec![tx]);
        // The lookup runs in its own task: when the DNS budget runs out first, it still
        // finishes and fills the cache for the next query.
        tokio::spawn(Arc::clone(self).look_up(name.clone(), key));
        rx
    }

    async fn look_up(self: Arc<Self>, name: Name, key: LowerName) {
        // Answer within most of the DNS budget with what is in, rather than wait for
        // replicas that may never come.
        let answer_by = self.budget * 3 / 4;
        let outcome = match self
            .node
            .lookup_within(name.clone(), self.replicas, answer_by)
            .await
        {
            Ok(replicas) => self.settle(&name, replicas),
            Err(error) => {
                debug!(%name, %error, "DHT lookup failed");
                None
            }
        };
        let waiters = {
            let mut state = self.lock();
            if let Some(value) = &outcome {
                let fetched = Instant::now();
                let value = value.clone();
                state.cache.put(key.clone(), CacheEntry { value, fetched });
            }
            state.inflight.remove(&key).unwrap_or_default()
        };
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Picks the record to believe among the replicas of `name` and updates its pin. `None`
    /// when nothing usable came back.
    fn settle(&self, name: &Name, replicas: Replicas) -> Option<DhtAnswer> {
        let human = key_of_name(name).is_none();
        let pinned = human.then(|| self.pins.owner(name, unix_now())).flatten();
        if replicas.invalid > 0 {
            debug!(%name, invalid = replicas.invalid, "dropped invalid replicas");
        }
        match select(&replicas.records, pinned) {
            Some((record, agreeing)) => {
                if human {
                    self.pins.pin(name, &record);
                }
                let record = Arc::new(record);
                Some(DhtAnswer::Found(Resolved { record, agreeing }))
            }
            None if replicas.absent => Some(DhtAnswer::Absent),
            None if pinned.is_some() && !replicas.records.is_empty() => {
                warn!(%name, "only records from another key than the pinned owner were found; refused");
                None
            }
            None => None,
        }
    }

    /// The answer to `qtype` for `qname` from `record`: TTLs no longer than the record has
    /// left, and private addresses removed unless allowed for the name.
    pub fn answer(
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
pub(super) struct Empty;

impl RecordSource for Empty {
    fn records_at(&self, _: &LowerName) -> Vec<Record> {
        Vec::new()
    }

    fn has_below(&self, _: &LowerName) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::ed25519;

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

    #[tokio::test(start_paused = true)]
    async fn absence_is_believed_briefly_and_a_record_for_its_ttl() {
        let name = Name::from_ascii("site.p2p.").unwrap();
        let a = Record::from_rdata(name.clone(), 30, RData::A("192.0.2.1".parse().unwrap()));
        let kp = ed25519::Keypair::generate();
        let record = NameRecord::sign(&kp, &name, 1, unix_now() + 3600, vec![a]).unwrap();
        let entry = |value| CacheEntry {
            value,
            fetched: Instant::now(),
        };
        let absent = entry(DhtAnswer::Absent);
        let found = entry(DhtAnswer::Found(Resolved {
            record: Arc::new(record),
            agreeing: 1,
        }));
        assert!(absent.fresh() && found.fresh());
        tokio::time::advance(NEGATIVE_CACHE).await;
        assert!(!absent.fresh(), "a name may be published any moment");
        assert!(found.fresh());
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!found.fresh(), "past the record's smallest TTL");
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
}
