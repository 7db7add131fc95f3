//! DHT lookups: the Kademlia GET_VALUE queries that callers asked for, the valid replicas each
//! has collected, and the replies. A lookup answers once enough replicas are in, once those in
//! have decided the owner (docs/PROTOCOL.md section 6: a majority of those wanted agree, or one
//! is the known owner's) and a grace for a newer `seq` has passed, when its query ends, or at
//! its answer time (`answer_by`) if it has found something by then, and its query ends there:
//! one timer sleeps until the earliest such time.
//!
//! The grace is as long as the first replica from a peer took to come (5 ms at least): the
//! requests of that round had as long again to answer. Without it, a lookup whose owner was
//! decided by two replicas waited for a third from peers still being dialed: in a network of
//! 1,000 nodes with a fifth stopped (tests/integration/bench_dht.rs, on a loaded machine), the
//! first replica came within 48 ms and the third up to 160 ms later. With the grace, the wait
//! after the first replica stayed under 32 ms (p99 of two loaded runs: 190 and 107 ms before,
//! 61 and 96 ms after, the rest being the walk to the first replica).
//!
//! The table is bounded (`p2p.max_lookups`). A lookup past its answer time with nothing found
//! goes on while there is room (its answer warms the caller's cache), but it is the first to
//! end when a new lookup needs the room: a peer that never answers costs a lookup its answer
//! time, not the table.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    pin::Pin,
    time::Duration,
};

use hickory_proto::rr::Name;
use libp2p::{
    PeerId,
    kad::{self, store::MemoryStore},
};
use tokio::{
    sync::oneshot,
    time::{Instant, Sleep},
};
use tracing::debug;

use super::{
    Replicas,
    inbound::InvalidRecords,
    stalls::{Probe, Stalls},
};
use crate::record::{NameRecord, RecordError, dht_key, unix_now};

/// The shortest grace for a newer `seq` once the replicas in have decided the owner.
const GRACE_FLOOR: Duration = Duration::from_millis(5);

/// What a lookup waits for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    /// Valid replicas that answer the lookup at once (at least 1).
    pub(crate) replicas: usize,
    /// The owner key that alone may answer (a key name's, a pin's): one replica of it decides
    /// the owner. Without it, a majority of [`Wanted::replicas`] for one owner does.
    pub(crate) owner: Option<[u8; 32]>,
}

/// A lookup being collected.
struct Lookup {
    /// The name looked up: a valid record for another name is no answer for this one.
    name: Name,
    wanted: Wanted,
    replicas: Replicas,
    /// The caller, until answered (later replicas are dropped).
    reply: Option<oneshot::Sender<Replicas>>,
    /// Answer with what is in by then, if anything.
    answer_by: Option<Instant>,
    /// This lookup's key in [`Lookups::deadlines`], while it is there.
    deadline: Option<(Instant, u64)>,
    /// Whom the query asked first, for [`Stalls`].
    probe: Probe,
    /// When the lookup started, and when its first valid replica from a peer came (the
    /// node's own store answers at once: it says nothing of the network's round trips).
    started: Instant,
    first_found: Option<Instant>,
}

impl Lookup {
    /// Sends what is in to the caller, once.
    fn answer(&mut self, why: &'static str) {
        if let Some(reply) = self.reply.take() {
            let ms = |at: Instant| at.duration_since(self.started).as_secs_f64() * 1e3;
            debug!(
                target: "p2pdns::lookup_trace",
                name = %self.name,
                why,
                answer_ms = ms(Instant::now()),
                first_found_ms = self.first_found.map(ms),
                records = self.replicas.records.len(),
                requests = self.replicas.requests,
                answered = self.replicas.peers_answered,
                "lookup answered"
            );
            let _ = reply.send(self.replicas.clone());
        }
    }

    fn answered(&self) -> bool {
        self.reply.is_none()
    }

    fn overdue(&self, now: Instant) -> bool {
        self.answer_by.is_some_and(|by| now >= by)
    }

    /// When the lookup may answer with fewer replicas than wanted: the replicas in decide the
    /// owner, and the grace after the first one from a peer is over then. `None` while they
    /// do not.
    fn settled_at(&self) -> Option<Instant> {
        let first = self.first_found?;
        let records = &self.replicas.records;
        let decided = match self.wanted.owner {
            Some(owner) => records.iter().any(|(_, r)| r.owner == owner),
            None => {
                let agreeing =
                    |owner: [u8; 32]| records.iter().filter(|(_, r)| r.owner == owner).count();
                let most = records.iter().map(|(_, r)| agreeing(r.owner)).max();
                most.unwrap_or(0) > self.wanted.replicas / 2
            }
        };
        let grace = first.duration_since(self.started).max(GRACE_FLOOR);
        decided.then_some(first + grace)
    }
}

/// The lookups in flight, by Kademlia query.
pub(crate) struct Lookups {
    /// Lookups running at once at most (`p2p.max_lookups`).
    max: usize,
    /// The lookups, [`Lookups::max`] at most (answered ones stay until Kademlia reports their
    /// queries finished, at its next poll).
    running: HashMap<kad::QueryId, Lookup>,
    /// Answer times of lookups not answered yet, earliest first (the number keeps equal times
    /// apart).
    deadlines: BTreeMap<(Instant, u64), kad::QueryId>,
    /// Lookups past their answer time with nothing found, oldest first: ended first when the
    /// table is full. Ids of lookups that ended meanwhile are skipped, and dropped whenever the
    /// queue outgrows the table twice over.
    overtime: VecDeque<kad::QueryId>,
    /// Lookups ended to make room, until Kademlia reports their queries finished (at its next
    /// poll); kept for [`Stalls`]. A backstop clears it past [`Lookups::max`].
    ending: HashMap<kad::QueryId, Probe>,
    next_number: u64,
    /// Sleeps until the earliest answer time (made at the first one).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Lookups {
    /// An empty table for `max` lookups at once (at least 1).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            running: HashMap::new(),
            deadlines: BTreeMap::new(),
            overtime: VecDeque::new(),
            ending: HashMap::new(),
            next_number: 0,
            timer: None,
        }
    }

    /// Starts a query for `name`; a table full of lookups still within their answer time drops
    /// `reply` (the caller sees the node busy).
    pub(crate) fn start(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        name: Name,
        wanted: Wanted,
        answer_by: Option<Instant>,
        reply: oneshot::Sender<Replicas>,
    ) {
        if self.running.len() >= self.max && !self.end_oldest_overtime(kad) {
            debug!(%name, "lookup table full; lookup refused");
            return;
        }
        let key = kad::RecordKey::new(&dht_key(&name));
        let probe = Stalls::probe(kad, &key);
        let id = kad.get_record(key);
        let wanted = Wanted {
            replicas: wanted.replicas.max(1),
            ..wanted
        };
        self.running.insert(
            id,
            Lookup {
                name: name.to_lowercase(),
                wanted,
                replicas: Replicas::default(),
                reply: Some(reply),
                answer_by,
                deadline: None,
                probe,
                started: Instant::now(),
                first_found: None,
            },
        );
        if let Some(at) = answer_by {
            self.answer_at(id, at);
        }
    }

    /// Lookup `id` is to answer by `at` if it has anything then (unless it is to earlier).
    fn answer_at(&mut self, id: kad::QueryId, at: Instant) {
        let Some(lookup) = self.running.get_mut(&id) else {
            return;
        };
        if lookup.deadline.is_some_and(|(by, _)| by <= at) {
            return;
        }
        if let Some(key) = lookup.deadline.take() {
            self.deadlines.remove(&key);
        }
        self.next_number += 1;
        let key = (at, self.next_number);
        self.deadlines.insert(key, id);
        lookup.deadline = Some(key);
    }

    /// Ends the lookup longest past its answer time, answering it with what the query knows
    /// (as if it had ended: absent when peers answered and none had a record). Returns whether
    /// there was one.
    fn end_oldest_overtime(&mut self, kad: &mut kad::Behaviour<MemoryStore>) -> bool {
        while let Some(id) = self.overtime.pop_front() {
            let Some(mut lookup) = self.running.remove(&id) else {
                continue;
            };
            if let Some(mut query) = kad.query_mut(&id) {
                let stats = *query.stats();
                lookup.replicas.absent = stats.num_successes() > 0;
                lookup.replicas.requests = stats.num_requests();
                lookup.replicas.peers_answered = stats.num_successes();
                query.finish();
            }
            debug!(name = %lookup.name, "lookup past its answer time ended to make room");
            lookup.answer("made room");
            if self.ending.len() >= self.max {
                self.ending.clear();
            }
            self.ending.insert(id, lookup.probe);
            return true;
        }
        false
    }

    /// Completes at the earliest answer time of a lookup not answered yet (never while there
    /// is none). Cancel-safe: the timer stays.
    pub(crate) async fn next_deadline(&mut self) {
        let Some(&(at, _)) = self.deadlines.keys().next() else {
            return std::future::pending().await;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().await;
    }

    /// Lookups past their answer time: those with a valid replica answer now and their queries
    /// end; those with none go on, as the first to end when room is needed, and answer as
    /// soon as a replica comes.
    pub(crate) fn answer_due(&mut self, kad: &mut kad::Behaviour<MemoryStore>) {
        let now = Instant::now();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            let Some(lookup) = self.running.get_mut(&id) else {
                continue;
            };
            lookup.deadline = None;
            if lookup.replicas.records.is_empty() {
                self.overtime.push_back(id);
            } else {
                lookup.answer(if lookup.overdue(now) {
                    "answer time"
                } else {
                    "settled"
                });
                if let Some(mut query) = kad.query_mut(&id) {
                    query.finish();
                }
            }
        }
        if self.overtime.len() > 2 * self.max {
            let running = &self.running;
            self.overtime.retain(|id| running.contains_key(id));
        }
    }

    /// Follows the queries' progress: replicas found, queries ended.
    pub(crate) fn on_event(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        event: kad::Event,
        invalid: &mut InvalidRecords,
        stalls: &mut Stalls,
    ) {
        let kad::Event::OutboundQueryProgressed {
            id, result, stats, ..
        } = event
        else {
            return;
        };
        match result {
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                if let Some(peer) = &found.peer {
                    stalls.answered(peer);
                }
                self.found(kad, id, found, &stats, invalid);
            }
            // Only peers that answered can say a name is absent; a query that reached nobody
            // (no peers yet) says nothing. Replicas that all failed validation are no record
            // either.
            kad::QueryResult::GetRecord(Err(kad::GetRecordError::NotFound {
                closest_peers,
                ..
            })) => {
                let table = kad.kbuckets().map(|b| b.num_entries()).sum();
                let probe = self.finish(id, &stats, stats.num_successes() > 0);
                if let Some(probe) = probe.or_else(|| self.ending.remove(&id)) {
                    stalls.ended(&probe, &closest_peers, table);
                }
            }
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord {
                ..
            })) => {
                self.finish(id, &stats, stats.num_successes() > 0);
                self.ending.remove(&id);
            }
            kad::QueryResult::GetRecord(Err(error)) => {
                debug!(%error, "DHT lookup ended");
                self.finish(id, &stats, false);
                self.ending.remove(&id);
            }
            _ => {}
        }
    }

    /// A replica arrived for lookup `id`: keep it if valid, answer once enough are in (and
    /// end the query then).
    fn found(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        id: kad::QueryId,
        found: kad::PeerRecord,
        stats: &kad::QueryStats,
        invalid: &mut InvalidRecords,
    ) {
        if let Some(lookup) = self.running.get_mut(&id) {
            lookup.replicas.requests = stats.num_requests();
            lookup.replicas.peers_answered = stats.num_successes();
        }
        if self.collect(id, found.peer, &found.record.value, invalid)
            && let Some(mut query) = kad.query_mut(&id)
        {
            query.finish();
        }
    }

    /// Keeps a valid replica, and answers when the lookup has all it wanted, is past its
    /// answer time, or is settled ([`Lookup::settled_at`]; until then, it is to answer at that
    /// time). Returns whether it answered (its query is to end).
    fn collect(
        &mut self,
        id: kad::QueryId,
        peer: Option<PeerId>,
        value: &[u8],
        invalid: &mut InvalidRecords,
    ) -> bool {
        let Some(lookup) = self.running.get_mut(&id) else {
            return false;
        };
        if lookup.answered() {
            return false;
        }
        let now = Instant::now();
        match checked(value, &lookup.name) {
            Ok(record) => {
                if peer.is_some() {
                    lookup.first_found.get_or_insert(now);
                }
                lookup.replicas.records.push((peer, record));
            }
            Err(error) => {
                lookup.replicas.invalid += 1;
                if let Some(peer) = peer {
                    invalid.warn_once(peer, &error);
                }
            }
        }
        if lookup.replicas.records.is_empty() {
            return false;
        }
        let enough = lookup.replicas.records.len() >= lookup.wanted.replicas;
        let settled = lookup.settled_at();
        let why = if enough {
            "enough"
        } else if lookup.overdue(now) {
            "answer time"
        } else if settled.is_some_and(|at| at <= now) {
            "settled"
        } else {
            if let Some(at) = settled {
                self.answer_at(id, at);
            }
            return false;
        };
        if let Some(key) = lookup.deadline.take() {
            self.deadlines.remove(&key);
        }
        lookup.answer(why);
        true
    }

    /// The query of lookup `id` ended: answers it if it was not, and returns what the lookup
    /// remembered for [`Stalls`] (`None` when it is not running).
    fn finish(
        &mut self,
        id: kad::QueryId,
        stats: &kad::QueryStats,
        peers_answered: bool,
    ) -> Option<Probe> {
        let mut lookup = self.running.remove(&id)?;
        if let Some(key) = lookup.deadline.take() {
            self.deadlines.remove(&key);
        }
        lookup.replicas.absent = peers_answered && lookup.replicas.records.is_empty();
        lookup.replicas.requests = stats.num_requests();
        lookup.replicas.peers_answered = stats.num_successes();
        debug!(
            target: "p2pdns::lookup_trace",
            name = %lookup.name,
            query_ms = stats.duration().map(|d| d.as_secs_f64() * 1e3),
            requests = stats.num_requests(),
            successes = stats.num_successes(),
            failures = stats.num_failures(),
            "lookup query ended"
        );
        lookup.answer("query ended");
        Some(lookup.probe)
    }

    /// The record `store` holds for `name`, if it is valid (a record held for another node).
    pub(crate) fn stored(store: &mut MemoryStore, name: &Name) -> Option<NameRecord> {
        use kad::store::RecordStore;
        let name = name.to_lowercase();
        let held = store.get(&kad::RecordKey::new(&dht_key(&name)))?;
        checked(&held.value, &name).ok()
    }
}

/// A replica as a record for `name`: decoded, signature and expiry verified.
fn checked(value: &[u8], name: &Name) -> Result<NameRecord, RecordError> {
    let record = NameRecord::from_bytes(value)?;
    record.verify(unix_now())?;
    if record.name != *name {
        return Err(RecordError::OtherName(record.name.to_ascii()));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hickory_proto::rr::{RData, Record};
    use libp2p::identity::ed25519;
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    fn replica(name: &Name) -> Vec<u8> {
        signed(&ed25519::Keypair::generate(), name, 1)
    }

    fn signed(key: &ed25519::Keypair, name: &Name, seq: u64) -> Vec<u8> {
        let a = Record::from_rdata(name.clone(), 300, RData::A("192.0.2.1".parse().unwrap()));
        let record = NameRecord::sign(key, name, seq, unix_now() + 600, vec![a]).unwrap();
        record.to_bytes()
    }

    /// A Kademlia behaviour, a table of 8 lookups, and the name they look up.
    fn table_of_eight() -> (kad::Behaviour<MemoryStore>, Lookups, InvalidRecords, Name) {
        let me = PeerId::random();
        let kad = kad::Behaviour::new(me, MemoryStore::new(me));
        let name = Name::from_ascii("site.p2p.").unwrap();
        (kad, Lookups::new(8), InvalidRecords::default(), name)
    }

    fn three() -> Wanted {
        Wanted {
            replicas: 3,
            owner: None,
        }
    }

    /// A lookup answers at its answer time with the one replica it has, not before; one that
    /// had none by then answers with the first valid one; the timer then has nothing to wait
    /// for.
    #[tokio::test]
    async fn a_lookup_answers_at_its_answer_time_with_what_it_has() {
        let (mut kad, mut lookups, mut invalid, name) = table_of_eight();
        let now = Instant::now();

        let (reply, mut answered) = oneshot::channel();
        let soon = Some(now + Duration::from_millis(100));
        lookups.start(&mut kad, name.clone(), three(), soon, reply);
        let id = *lookups.running.keys().next().unwrap();
        let peer = Some(PeerId::random());
        assert!(!lookups.collect(id, peer, &replica(&name), &mut invalid));
        assert!(!lookups.collect(id, peer, b"forged", &mut invalid));
        assert_eq!(answered.try_recv().unwrap_err(), TryRecvError::Empty);
        tokio::time::timeout(Duration::from_secs(2), lookups.next_deadline())
            .await
            .expect("the timer fires at the answer time");
        assert!(Instant::now() >= now + Duration::from_millis(100));
        lookups.answer_due(&mut kad);
        let replicas = answered.try_recv().expect("answered at the answer time");
        assert_eq!((replicas.records.len(), replicas.invalid), (1, 1));

        let (reply, mut late) = oneshot::channel();
        lookups.start(&mut kad, name.clone(), three(), Some(now), reply);
        let id = *lookups.running.keys().find(|k| **k != id).unwrap();
        lookups.answer_due(&mut kad);
        assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Empty);
        assert!(lookups.deadlines.is_empty());
        assert!(lookups.collect(id, peer, &replica(&name), &mut invalid));
        assert_eq!(late.try_recv().unwrap().records.len(), 1);
        assert!(
            !lookups.collect(id, peer, &replica(&name), &mut invalid),
            "answered once; later replicas are dropped"
        );
        let idle = tokio::time::timeout(Duration::from_millis(50), lookups.next_deadline());
        assert!(idle.await.is_err(), "no answer time left to wait for");
    }

    /// A full table makes room by ending the lookup longest past its answer time (which
    /// answers with what it has); lookups still within theirs are never ended for another.
    #[tokio::test]
    async fn a_full_table_ends_the_lookup_longest_past_its_answer_time() {
        let me = PeerId::random();
        let mut kad = kad::Behaviour::new(me, MemoryStore::new(me));
        let mut lookups = Lookups::new(2);
        let now = Instant::now();
        let later = Some(now + Duration::from_secs(60));
        let start = |lookups: &mut Lookups, kad: &mut kad::Behaviour<_>, name: &str, by| {
            let (reply, rx) = oneshot::channel();
            lookups.start(kad, Name::from_ascii(name).unwrap(), three(), by, reply);
            rx
        };
        let mut overdue = start(&mut lookups, &mut kad, "junk.p2p.", Some(now));
        let mut waiting = start(&mut lookups, &mut kad, "site.p2p.", later);
        lookups.answer_due(&mut kad);
        assert_eq!(overdue.try_recv().unwrap_err(), TryRecvError::Empty);
        assert_eq!(lookups.overtime.len(), 1);

        let mut third = start(&mut lookups, &mut kad, "other.p2p.", later);
        let ended = overdue.try_recv().expect("the overdue lookup answered");
        assert!(ended.records.is_empty());
        assert_eq!(lookups.running.len(), 2);
        assert_eq!(
            lookups.ending.len(),
            1,
            "kept until Kademlia reports its end"
        );

        let mut refused = start(&mut lookups, &mut kad, "more.p2p.", later);
        assert_eq!(refused.try_recv().unwrap_err(), TryRecvError::Closed);
        assert_eq!(waiting.try_recv().unwrap_err(), TryRecvError::Empty);
        assert_eq!(third.try_recv().unwrap_err(), TryRecvError::Empty);
    }

    /// Replicas that decide the owner (three of five wanted agree, or one is the known owner's)
    /// answer once the grace after the first from a peer is over, not before, with what came
    /// meanwhile; a replica of another owner, or the node's own store, decides nothing.
    #[tokio::test(start_paused = true)]
    async fn a_lookup_settles_once_its_replicas_decide_the_owner_and_the_grace_is_over() {
        let (mut kad, mut lookups, mut invalid, name) = table_of_eight();
        let (owner, other) = (ed25519::Keypair::generate(), ed25519::Keypair::generate());
        let started = Instant::now();
        let later = Some(started + Duration::from_secs(60));
        let peer = Some(PeerId::random());
        let ms = Duration::from_millis;

        let (reply, mut answered) = oneshot::channel();
        let five = Wanted {
            replicas: 5,
            owner: None,
        };
        lookups.start(&mut kad, name.clone(), five, later, reply);
        let id = *lookups.running.keys().next().unwrap();
        assert!(!lookups.collect(id, None, &signed(&owner, &name, 1), &mut invalid));
        tokio::time::advance(ms(20)).await;
        assert!(!lookups.collect(id, peer, &signed(&other, &name, 9), &mut invalid));
        assert!(!lookups.collect(id, peer, &signed(&owner, &name, 2), &mut invalid));
        assert!(
            !lookups.collect(id, peer, &signed(&owner, &name, 3), &mut invalid),
            "three of five agree, but within the grace (20 ms after the first, at 20 ms)"
        );
        tokio::time::timeout(Duration::from_secs(1), lookups.next_deadline())
            .await
            .expect("the timer fires when the grace is over");
        assert!(Instant::now() >= started + ms(40));
        lookups.answer_due(&mut kad);
        let replicas = answered.try_recv().expect("settled");
        assert_eq!(replicas.records.len(), 4);

        // One replica of the known owner decides; another owner's does not.
        let (reply, mut answered) = oneshot::channel();
        let wanted = Wanted {
            replicas: 3,
            owner: Some(owner.public().to_bytes()),
        };
        lookups.start(&mut kad, name.clone(), wanted, later, reply);
        let id = *lookups.running.keys().find(|k| **k != id).unwrap();
        assert!(!lookups.collect(id, peer, &signed(&other, &name, 9), &mut invalid));
        tokio::time::advance(ms(50)).await;
        assert_eq!(answered.try_recv().unwrap_err(), TryRecvError::Empty);
        assert!(
            lookups.collect(id, peer, &signed(&owner, &name, 1), &mut invalid),
            "the known owner's replica comes after the grace: it answers at once"
        );
        assert_eq!(answered.try_recv().unwrap().records.len(), 2);
    }
}
