//! DHT lookups: the Kademlia GET_VALUE queries that callers asked for, the valid replicas each
//! has collected, and the replies. A lookup answers once enough replicas are in, when its query
//! ends, or at its answer time (`answer_by`) if it has found something by then; one timer
//! sleeps until the earliest such time.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
};

use hickory_proto::rr::Name;
use libp2p::kad::{self, store::MemoryStore};
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

    /// A replica arrived for lookup `id`: keep it if valid, answer once enough are in.
    fn found(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        id: kad::QueryId,
        found: kad::PeerRecord,
        stats: &kad::QueryStats,
        invalid: &mut InvalidRecords,
    ) {
        let Some(lookup) = self.running.get_mut(&id) else {
            return;
        };
        match checked(&found.record.value, &lookup.name) {
            Ok(record) => lookup.replicas.records.push((found.peer, record)),
            Err(error) => {
                lookup.replicas.invalid += 1;
                if let Some(peer) = found.peer {
                    invalid.warn_once(peer, &error);
                }
            }
        }
        if lookup.answered || lookup.replicas.records.is_empty() {
            return;
        }
        if lookup.replicas.records.len() >= lookup.wanted {
            lookup.replicas.requests = stats.num_requests();
            lookup.replicas.peers_answered = stats.num_successes();
            lookup.answer();
            if let Some(mut query) = kad.query_mut(&id) {
                query.finish();
            }
        } else if lookup.overdue(Instant::now()) {
            lookup.answer();
        } else {
            return;
        }
        if let Some(key) = lookup.deadline.take() {
            self.deadlines.remove(&key);
        }
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
