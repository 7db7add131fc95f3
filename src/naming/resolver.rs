//! `.p2p` names from the DHT: lookups within a time budget (one DHT query however many
//! clients ask), replica selection with pins (docs/PROTOCOL.md section 6), a cache of the
//! signed records found, and the answers built from a record (TTLs capped by its expiry).
//!
//! Lookup capacity is shared fairly among clients (by [`Requester`]); what needs no lookup never
//! waits for it: a cached record (fresh, or stale but unexpired when no capacity is left) and
//! the record the node's own store holds for others.

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use libp2p::PeerId;
use lru::LruCache;
use tokio::{
    sync::{Semaphore, SemaphorePermit, oneshot},
    time::Instant,
};
use tracing::{debug, warn};

use super::{
    AnswerNote, Built, Origin, RecordSource, answer_from,
    dht::DhtConfig,
    pins::Pins,
    shares::{Requester, Share, Shares},
};
use crate::{
    metrics::DhtMetrics,
    p2p::{NodeError, NodeHandle, Replicas},
    record::{NameRecord, key_of_name, unix_now},
};

/// Signed records and absences cached at most (least recently used first out).
const CACHE_ENTRIES: usize = 10_000;
/// How long "the DHT has no such name" is believed: as long as clients may cache it, the
/// `p2p.` SOA's TTL and minimum (one negative TTL, docs/PROTOCOL.md section 10).
const NEGATIVE_CACHE: Duration = Duration::from_secs(super::answer::NEGATIVE_TTL as u64);
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

/// What a lookup ends with: the DHT's answer, or why there is none (one of the SERVFAIL
/// notes).
type Outcome = Result<DhtAnswer, AnswerNote>;

/// Clients waiting on one DHT lookup.
type Waiters = Vec<oneshot::Sender<Outcome>>;

/// The cache and the lookups in flight, under one lock: a finished lookup fills the first and
/// leaves the second in one step, so no query falls between them.
struct State {
    cache: LruCache<LowerName, CacheEntry>,
    /// Queries waiting, by name looked up. Names: one per lookup task, and the node runs
    /// `p2p.max_lookups` at most (a task whose lookup it refuses ends at once). Waiters: those
    /// whose query gave up are dropped whenever another joins, so at most the queries waiting
    /// now (each holds a [`Share`]).
    inflight: HashMap<LowerName, Waiters>,
}

/// The DHT resolver.
pub struct Resolver {
    node: NodeHandle,
    /// Longest a DNS query waits for the DHT.
    budget: Duration,
    /// Valid replicas wanted before a lookup answers early.
    replicas: usize,
    /// Permits of queries waiting on the network (`dns.max_inflight`, shared with the
    /// forwarder).
    waiting: Arc<Semaphore>,
    /// The part of the lookup capacity each client may hold.
    shares: Arc<Shares>,
    pins: Arc<Pins>,
    state: Mutex<State>,
    /// Lookups counted, when metrics are on.
    metrics: Option<Arc<DhtMetrics>>,
}

impl Resolver {
    /// A resolver asking `node` with `config`'s budget and replicas, believing `pins`; a query
    /// that waits on a lookup holds one of `config`'s waiting permits and a share of its lookup
    /// capacity (none left: the cache or the node's store, else SERVFAIL at once).
    pub(super) fn new(node: NodeHandle, pins: Arc<Pins>, config: &DhtConfig) -> Self {
        let entries = NonZeroUsize::new(CACHE_ENTRIES).expect("nonzero constant");
        Self {
            node,
            budget: config.budget,
            replicas: config.replicas.max(1),
            waiting: config.waiting.clone(),
            shares: Shares::new(config.lookups),
            pins,
            state: Mutex::new(State {
                cache: LruCache::new(entries),
                inflight: HashMap::new(),
            }),
            metrics: config.metrics.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each update is a map operation or two: a panic leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pin store.
    pub fn pins(&self) -> &Arc<Pins> {
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

    /// Cache, else a DHT lookup within the budget for `requester`, within its share of the
    /// lookup capacity.
    ///
    /// # Errors
    /// Why there is no answer: no peers, none answered, not in time (the lookup goes on while
    /// the node has room and fills the cache for the next query), no capacity left for this
    /// requester or the node busy, the node stopped, or only records by other keys than the
    /// pinned owner's. A cached record still valid is served then, rather than nothing; and
    /// when capacity is what is missing, the record the node's own store holds.
    pub async fn resolve(
        self: &Arc<Self>,
        name: &Name,
        requester: Requester,
    ) -> Result<DhtAnswer, AnswerNote> {
        let key = LowerName::new(name);
        let admitted = {
            let mut state = self.lock();
            let stale = match state.cache.get(&key) {
                Some(entry) if entry.fresh() => return Ok(entry.value.clone()),
                Some(CacheEntry {
                    value: value @ DhtAnswer::Found(found),
                    ..
                }) if found.record.expires > unix_now() => Some(value.clone()),
                _ => None,
            };
            // Only a query that must wait on the network takes a share and a permit: cached
            // answers never wait for capacity.
            match self.admit(requester) {
                Some(held) => Ok((stale, self.join_or_start(&mut state, name, key), held)),
                None => Err(stale),
            }
        };
        let (stale, rx, _held) = match admitted {
            Ok(admitted) => admitted,
            Err(Some(stale)) => return Ok(stale),
            Err(None) => return self.held_here(name).await,
        };
        let outcome = match tokio::time::timeout(self.budget, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(AnswerNote::NodeStopped),
            Err(_) => Err(AnswerNote::Timeout),
        };
        match (outcome, stale) {
            (Ok(answer), _) | (Err(_), Some(answer)) => Ok(answer),
            (Err(AnswerNote::Busy), None) => self.held_here(name).await,
            (Err(note), None) => Err(note),
        }
    }

    /// A share of the lookup capacity for `requester` and a waiting permit, if both are free.
    fn admit(&self, requester: Requester) -> Option<(Share, SemaphorePermit<'_>)> {
        let share = self.shares.take(requester)?;
        let permit = self.waiting.try_acquire().ok()?;
        Some((share, permit))
    }

    /// The record the node's own store holds for `name` (it keeps it for another node), when
    /// no lookup can be had: one replica, not a majority, so it is neither cached nor pinned,
    /// and a record by another key than the pinned owner is no answer.
    async fn held_here(&self, name: &Name) -> Result<DhtAnswer, AnswerNote> {
        let stored = tokio::time::timeout(self.budget, self.node.stored(name.clone())).await;
        let Ok(Ok(Some(record))) = stored else {
            return Err(AnswerNote::Busy);
        };
        if key_of_name(name).is_none()
            && let Some(owner) = self.pins.owner(name, unix_now())
            && owner != record.owner
        {
            return Err(AnswerNote::Busy);
        }
        let record = Arc::new(record);
        Ok(DhtAnswer::Found(Resolved {
            record,
            agreeing: 1,
        }))
    }

    fn join_or_start(
        self: &Arc<Self>,
        state: &mut State,
        name: &Name,
        key: LowerName,
    ) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        if let Some(waiters) = state.inflight.get_mut(&key) {
            waiters.retain(|waiter| !waiter.is_closed());
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
        let started = Instant::now();
        let mut requests = 0;
        // An owner known beforehand (the key in a key name, a pin) decides with one replica:
        // the lookup need not wait for a majority (docs/PROTOCOL.md section 6).
        let owner = key_of_name(&name).or_else(|| self.pins.owner(&name, unix_now()));
        let replicas = self
            .node
            .lookup_for(name.clone(), self.replicas, answer_by, owner)
            .await;
        let outcome = match replicas {
            Ok(replicas) => {
                requests = replicas.requests;
                self.settle(&name, replicas)
            }
            Err(error) => {
                debug!(%name, %error, "DHT lookup failed");
                Err(match error {
                    NodeError::Busy => AnswerNote::Busy,
                    _ => AnswerNote::NodeStopped,
                })
            }
        };
        if let Some(metrics) = &self.metrics {
            metrics.lookup_ended(&outcome, started.elapsed(), requests);
        }
        let (outcome, waiters) = {
            let mut state = self.lock();
            let outcome = match outcome {
                Ok(DhtAnswer::Absent) => Ok(still_held(&state.cache, &key, &name)),
                other => other,
            };
            if let Ok(value) = &outcome {
                let fetched = Instant::now();
                let value = value.clone();
                state.cache.put(key.clone(), CacheEntry { value, fetched });
            }
            (outcome, state.inflight.remove(&key).unwrap_or_default())
        };
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Picks the record to believe among the replicas of `name` and updates its pin; when
    /// nothing usable came back, says why.
    fn settle(&self, name: &Name, replicas: Replicas) -> Outcome {
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
                Ok(DhtAnswer::Found(Resolved { record, agreeing }))
            }
            None if replicas.absent => Ok(DhtAnswer::Absent),
            None if pinned.is_some() && !replicas.records.is_empty() => {
                warn!(%name, "only records from another key than the pinned owner were found; refused");
                Err(AnswerNote::PinnedOwnerMissing)
            }
            // The query ended without asking anyone: the routing table is empty.
            None if replicas.requests == 0 => Err(AnswerNote::NotConnected),
            None if replicas.peers_answered == 0 => Err(AnswerNote::NoPeerAnswered),
            None => Err(AnswerNote::Timeout),
        }
    }

    /// The answer to `qtype` for `qname` from `record`, TTLs no longer than the record has
    /// left (`seen`: see [`answer_from`]).
    pub(crate) fn answer(
        record: &NameRecord,
        qname: &Name,
        qtype: RecordType,
        tld: &Name,
        seen: &mut Vec<LowerName>,
    ) -> Built {
        let mut built = answer_from(record, qname, qtype, tld, seen);
        let left = u32::try_from(record.expires.saturating_sub(unix_now())).unwrap_or(u32::MAX);
        let answer = &mut built.answer;
        for r in answer.answers.iter_mut().chain(&mut answer.additionals) {
            r.ttl = r.ttl.min(left);
        }
        built.origin = Origin::Network;
        built
    }
}

/// Section 6 of docs/PROTOCOL.md: the pinned owner's newest record; else the owner most
/// replicas agree on (ties: higher seq, then lower key), and that owner's newest record
/// ([`NameRecord::is_newer_than`]).
/// Returns the record and how many replicas carried its owner.
fn select(
    records: &[(Option<PeerId>, NameRecord)],
    pinned: Option<[u8; 32]>,
) -> Option<(NameRecord, usize)> {
    let mut by_owner: BTreeMap<[u8; 32], (usize, &NameRecord)> = BTreeMap::new();
    for (_, record) in records {
        let entry = by_owner.entry(record.owner).or_insert((0, record));
        entry.0 += 1;
        if record.is_newer_than(entry.1) {
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

    fn holds(&self, name: &LowerName) -> bool {
        LowerName::new(&self.name).zone_of(name)
    }
}

/// What to believe when a lookup of `name` found it absent from the DHT: the record cached
/// under `key` while it is valid, else the absence. The DHT drops a name only when its holders
/// lose it (stopped, replaced, their stores full) or it expires; an owner who takes a name's
/// data back publishes a signed empty record instead (docs/PROTOCOL.md), which a lookup finds.
/// So a signed record in hand outlives an "absent" from peers that never had it: the name
/// resolves here until the record expires, and a hostile or freshly started node answering
/// "none" cannot make it vanish.
fn still_held(cache: &LruCache<LowerName, CacheEntry>, key: &LowerName, name: &Name) -> DhtAnswer {
    match cache.peek(key) {
        Some(CacheEntry {
            value: held @ DhtAnswer::Found(found),
            ..
        }) if found.record.expires > unix_now() => {
            debug!(%name, "the DHT no longer holds this name; answering the record found before until it expires");
            held.clone()
        }
        _ => DhtAnswer::Absent,
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

    fn holds(&self, _: &LowerName) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RData;
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
}
