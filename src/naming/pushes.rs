//! Pushing this node's records into the DHT within what storage nodes accept, and learning
//! which nodes really hold them (docs/PROTOCOL.md section 8.2). Storage nodes answer a PUT
//! the same whether they kept the record or not (section 5), so "the PUT went out" says
//! nothing: after each PUT the record is read back from the network, and the peers that
//! return it (or a newer record of the same key) are its holders.
//!
//! PUTs start [`PUT_SPACING`] apart, in the order names were queued: a storage node takes at
//! most 60 PUTs a minute from one peer, and in a small network every name of this node is put
//! to the same few nodes. The queue holds each name once (its record when its turn comes), so
//! it is bounded by the names this node publishes.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use hickory_proto::rr::LowerName;
use tokio::sync::Notify;

use crate::{
    p2p::{NodeError, NodeHandle, Replicas},
    record::{NameRecord, unix_now},
};

/// Time between the starts of two PUTs of this node: 50 a minute, under the 60 a storage node
/// takes from one peer (docs/PROTOCOL.md section 5, rule 9).
pub const PUT_SPACING: Duration = Duration::from_millis(1200);
/// How long reading a record back waits for peers: those that have not answered by then are
/// not counted.
pub const READ_BACK: Duration = Duration::from_secs(5);
/// PUTs with their read-backs running at once, at most.
pub const PUTS_IN_FLIGHT: usize = 16;

/// How many other nodes were found holding the record of one of this node's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaCount {
    /// The sequence number of the record counted.
    pub seq: u64,
    /// Other nodes that returned that record, or a newer one of the same owner.
    pub holders: usize,
    /// Peers that answered the lookup at all (those holding nothing included).
    pub answered: u32,
    /// The highest sequence number of this node's key found above `seq`: another machine
    /// with this key, or an earlier run with the clock ahead, published it, and storage nodes
    /// refuse `seq` while they hold it.
    pub newer: Option<u64>,
    /// Another key whose valid record the network holds for the name: a human name taken
    /// before this node published it (storage nodes refuse this node's record).
    pub taken_by: Option<[u8; 32]>,
    /// When it was counted: Unix time, seconds.
    pub counted_at: u64,
}

impl ReplicaCount {
    /// What `replicas` of the name of `record` say about it.
    pub fn of(record: &NameRecord, replicas: &Replicas) -> Self {
        let mut count = Self {
            seq: record.seq,
            holders: 0,
            answered: replicas.peers_answered,
            newer: None,
            taken_by: None,
            counted_at: unix_now(),
        };
        // `None` is this node's own store: not a replica elsewhere.
        for (_, replica) in replicas.records.iter().filter(|(peer, _)| peer.is_some()) {
            if replica.owner != record.owner {
                count.taken_by = Some(replica.owner);
            } else if replica.seq >= record.seq {
                count.holders += 1;
                if replica.seq > record.seq {
                    count.newer = count.newer.max(Some(replica.seq));
                }
            }
        }
        count
    }
}

/// What reading a record back after its PUT found.
#[derive(Debug)]
pub struct ReadBack {
    /// The holders.
    pub count: ReplicaCount,
    /// The newest record of the same owner above the one put that another node returned (the
    /// one whose `seq` is [`ReplicaCount::newer`]).
    pub newest: Option<NameRecord>,
}

/// Puts `record` into the DHT, waits for the PUT query to end, then reads the record back for
/// at most [`READ_BACK`].
///
/// # Errors
/// [`NodeError`] when the node refuses the record or is gone, or has no lookup slot free.
pub async fn put_and_count(node: &NodeHandle, record: &NameRecord) -> Result<ReadBack, NodeError> {
    node.publish(record.clone()).await?;
    let replicas = node
        .lookup_within(record.name.clone(), usize::MAX, READ_BACK)
        .await?;
    let count = ReplicaCount::of(record, &replicas);
    let newest = replicas
        .records
        .into_iter()
        .filter(|(peer, r)| peer.is_some() && r.owner == record.owner && r.seq > record.seq)
        .map(|(_, r)| r)
        .max_by_key(|r| r.seq);
    Ok(ReadBack { count, newest })
}

/// The names waiting for their PUT, each once, in order.
#[derive(Default)]
pub struct PushQueue {
    waiting: Mutex<(VecDeque<LowerName>, HashSet<LowerName>)>,
    added: Notify,
}

impl PushQueue {
    /// Queues `name`, unless it waits already (its turn then pushes its newest record).
    pub fn push(&self, name: LowerName) {
        let mut waiting = self.lock();
        if waiting.1.insert(name.clone()) {
            waiting.0.push_back(name);
            self.added.notify_one();
        }
    }

    /// The next name, waiting for one.
    pub async fn next(&self) -> LowerName {
        loop {
            let added = self.added.notified();
            {
                let mut waiting = self.lock();
                if let Some(name) = waiting.0.pop_front() {
                    waiting.1.remove(&name);
                    return name;
                }
            }
            added.await;
        }
    }

    /// Names waiting.
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// Whether no name waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, (VecDeque<LowerName>, HashSet<LowerName>)> {
        // Every change is one call: a panic elsewhere cannot leave the queue half-changed.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use libp2p::{PeerId, identity::ed25519};

    fn signed(key: &ed25519::Keypair, seq: u64) -> NameRecord {
        let name = Name::from_ascii("site.p2p.").expect("name");
        NameRecord::sign(key, &name, seq, unix_now() + 600, Vec::new()).expect("signed")
    }

    #[test]
    fn holders_are_the_peers_with_this_record_or_a_newer_one_of_the_same_key() {
        let (mine, theirs) = (ed25519::Keypair::generate(), ed25519::Keypair::generate());
        let pushed = signed(&mine, 10);
        let replicas = Replicas {
            records: vec![
                (None, pushed.clone()),
                (Some(PeerId::random()), pushed.clone()),
                (Some(PeerId::random()), signed(&mine, 9)),
                (Some(PeerId::random()), signed(&mine, 12)),
                (Some(PeerId::random()), signed(&theirs, 1)),
            ],
            invalid: 0,
            absent: false,
            requests: 5,
            peers_answered: 5,
        };
        let count = ReplicaCount::of(&pushed, &replicas);
        assert_eq!(count.holders, 2, "{count:?}");
        assert_eq!(count.newer, Some(12));
        assert_eq!(count.taken_by, Some(theirs.public().to_bytes()));
        assert_eq!(count.answered, 5);
    }

    #[tokio::test]
    async fn the_queue_holds_each_name_once_in_order() {
        let queue = PushQueue::default();
        let name = |text: &str| LowerName::new(&Name::from_ascii(text).expect("name"));
        queue.push(name("a.p2p."));
        queue.push(name("b.p2p."));
        queue.push(name("a.p2p."));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await, name("a.p2p."));
        queue.push(name("a.p2p."));
        assert_eq!(queue.next().await, name("b.p2p."));
        assert_eq!(queue.next().await, name("a.p2p."));
        assert!(queue.is_empty());
    }
}
