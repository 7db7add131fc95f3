//! DHT lookups: the Kademlia GET_VALUE queries that callers asked for, the valid replicas each
//! has collected, and the replies. A lookup answers once enough replicas are in, when its query
//! ends, or at its answer time (`answer_by`) if it has found something by then; one timer
//! sleeps until the earliest such time.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
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

use super::{Replicas, inbound::InvalidRecords};
use crate::record::{NameRecord, RecordError, dht_key, unix_now};

/// Lookups running at once at most; more are refused rather than queued without bound.
const MAX_LOOKUPS: usize = 512;

/// A lookup being collected.
struct Lookup {
    /// The name looked up: a valid record for another name is no answer for this one.
    name: Name,
    wanted: usize,
    replicas: Replicas,
    replies: Vec<oneshot::Sender<Replicas>>,
    /// Replies already sent (quorum reached); later replicas are dropped.
    answered: bool,
    /// Answer with what is in by then, if anything.
    answer_by: Option<Instant>,
    /// This lookup's key in [`Lookups::deadlines`], while it is there.
    deadline: Option<(Instant, u64)>,
}

impl Lookup {
    /// Sends what is in to every caller; the query may go on.
    fn answer(&mut self) {
        self.answered = true;
        for reply in self.replies.drain(..) {
            let _ = reply.send(self.replicas.clone());
        }
    }

    fn overdue(&self, now: Instant) -> bool {
        self.answer_by.is_some_and(|by| now >= by)
    }
}

/// The lookups in flight, by Kademlia query.
#[derive(Default)]
pub(crate) struct Lookups {
    running: HashMap<kad::QueryId, Lookup>,
    /// Answer times of lookups not answered yet, earliest first (the number keeps equal times
    /// apart).
    deadlines: BTreeMap<(Instant, u64), kad::QueryId>,
    next_number: u64,
    /// Sleeps until the earliest answer time (made at the first one).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Lookups {
    /// Starts a query for `name`; a full table drops `reply` (the caller sees the node busy).
    pub(crate) fn start(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        name: Name,
        wanted: usize,
        answer_by: Option<Instant>,
        reply: oneshot::Sender<Replicas>,
    ) {
        if self.running.len() >= MAX_LOOKUPS {
            return;
        }
        let id = kad.get_record(kad::RecordKey::new(&dht_key(&name)));
        let deadline = answer_by.map(|at| {
            self.next_number += 1;
            self.deadlines.insert((at, self.next_number), id);
            (at, self.next_number)
        });
        self.running.insert(
            id,
            Lookup {
                name: name.to_lowercase(),
                wanted: wanted.max(1),
                replicas: Replicas::default(),
                replies: vec![reply],
                answered: false,
                answer_by,
                deadline,
            },
        );
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

    /// Lookups past their answer time with at least one valid replica answer now; their
    /// queries go on (more replicas may still be pinned or out-vote these). Those with none
    /// answer as soon as one comes.
    pub(crate) fn answer_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some(lookup) = self.running.get_mut(&id) {
                lookup.deadline = None;
                if !lookup.answered && !lookup.replicas.records.is_empty() {
                    lookup.answer();
                }
            }
        }
    }

    /// Follows the queries' progress: replicas found, queries ended.
    pub(crate) fn on_event(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        event: kad::Event,
        invalid: &mut InvalidRecords,
    ) {
        let kad::Event::OutboundQueryProgressed {
            id,
            result,
            step,
            stats,
        } = event
        else {
            return;
        };
        match result {
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                self.found(kad, id, found, &stats, invalid);
            }
            // Only peers that answered can say a name is absent; a query that reached nobody
            // (no peers yet) says nothing. Replicas that all failed validation are no record
            // either.
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord {
                ..
            }))
            | kad::QueryResult::GetRecord(Err(kad::GetRecordError::NotFound { .. })) => {
                self.finish(id, &stats, stats.num_successes() > 0);
            }
            kad::QueryResult::GetRecord(Err(error)) => {
                debug!(%error, "DHT lookup ended");
                self.finish(id, &stats, false);
            }
            kad::QueryResult::PutRecord(result) if step.last => {
                debug!(?result, "DHT put finished");
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
        if !self.collect(id, found.peer, &found.record.value, invalid) {
            return;
        }
        if let Some(lookup) = self.running.get_mut(&id) {
            lookup.replicas.requests = stats.num_requests();
            lookup.replicas.peers_answered = stats.num_successes();
            lookup.answer();
        }
        if let Some(mut query) = kad.query_mut(&id) {
            query.finish();
        }
    }

    /// Keeps a valid replica; a lookup past its answer time answers with it at once. Returns
    /// whether the lookup now has all it wanted (for the caller to answer and end it).
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
        match checked(value, &lookup.name) {
            Ok(record) => lookup.replicas.records.push((peer, record)),
            Err(error) => {
                lookup.replicas.invalid += 1;
                if let Some(peer) = peer {
                    invalid.warn_once(peer, &error);
                }
            }
        }
        if lookup.answered || lookup.replicas.records.is_empty() {
            return false;
        }
        let enough = lookup.replicas.records.len() >= lookup.wanted;
        if !enough && !lookup.overdue(Instant::now()) {
            return false;
        }
        if let Some(key) = lookup.deadline.take() {
            self.deadlines.remove(&key);
        }
        if !enough {
            lookup.answer();
        }
        enough
    }

    fn finish(&mut self, id: kad::QueryId, stats: &kad::QueryStats, peers_answered: bool) {
        let Some(mut lookup) = self.running.remove(&id) else {
            return;
        };
        if let Some(key) = lookup.deadline.take() {
            self.deadlines.remove(&key);
        }
        lookup.replicas.absent = peers_answered && lookup.replicas.records.is_empty();
        lookup.replicas.requests = stats.num_requests();
        lookup.replicas.peers_answered = stats.num_successes();
        lookup.answer();
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
        let a = Record::from_rdata(name.clone(), 300, RData::A("192.0.2.1".parse().unwrap()));
        let key = ed25519::Keypair::generate();
        let record = NameRecord::sign(&key, name, 1, unix_now() + 600, vec![a]).unwrap();
        record.to_bytes()
    }

    /// A lookup answers at its answer time with the one replica it has, not before; one that
    /// had none by then answers with the first valid one; the timer then has nothing to wait
    /// for.
    #[tokio::test]
    async fn a_lookup_answers_at_its_answer_time_with_what_it_has() {
        let me = PeerId::random();
        let mut kad = kad::Behaviour::new(me, MemoryStore::new(me));
        let mut lookups = Lookups::default();
        let mut invalid = InvalidRecords::default();
        let name = Name::from_ascii("site.p2p.").unwrap();
        let now = Instant::now();

        let (reply, mut answered) = oneshot::channel();
        let soon = Some(now + Duration::from_millis(100));
        lookups.start(&mut kad, name.clone(), 3, soon, reply);
        let id = *lookups.running.keys().next().unwrap();
        let peer = Some(PeerId::random());
        assert!(!lookups.collect(id, peer, &replica(&name), &mut invalid));
        assert!(!lookups.collect(id, peer, b"forged", &mut invalid));
        assert_eq!(answered.try_recv().unwrap_err(), TryRecvError::Empty);
        tokio::time::timeout(Duration::from_secs(2), lookups.next_deadline())
            .await
            .expect("the timer fires at the answer time");
        assert!(Instant::now() >= now + Duration::from_millis(100));
        lookups.answer_due();
        let replicas = answered.try_recv().expect("answered at the answer time");
        assert_eq!((replicas.records.len(), replicas.invalid), (1, 1));

        let (reply, mut late) = oneshot::channel();
        lookups.start(&mut kad, name.clone(), 3, Some(now), reply);
        let id = *lookups.running.keys().find(|k| **k != id).unwrap();
        lookups.answer_due();
        assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Empty);
        assert!(lookups.deadlines.is_empty());
        assert!(!lookups.collect(id, peer, &replica(&name), &mut invalid));
        assert_eq!(late.try_recv().unwrap().records.len(), 1);
        let idle = tokio::time::timeout(Duration::from_millis(50), lookups.next_deadline());
        assert!(idle.await.is_err(), "no answer time left to wait for");
    }
}
