//! Pushing this node's records into the DHT within what storage nodes accept, and learning
//! which nodes really hold them (docs/PROTOCOL.md section 8.2). Storage nodes acknowledge
//! every PUT, also one they drop (section 5), so "the PUT went out" says nothing: after each
//! PUT the record is read back from the network, and the peers that return it (or a newer
//! record of the same key) are its holders.
//!
//! PUTs are spaced [`PUT_SPACING`] apart, in the order they were asked for: a storage node
//! takes at most 60 PUTs a minute from one peer, and every PUT of every name of this node can
//! reach the same few nodes in a small network.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use hickory_proto::rr::LowerName;
use tokio::time::{Instant, sleep_until};

use crate::{
    p2p::{NodeError, NodeHandle, Replicas},
    record::{NameRecord, unix_now},
};

/// Time between two PUTs of this node: 50 a minute, under the 60 a storage node takes from one
/// peer (docs/PROTOCOL.md section 5, rule 9).
pub const PUT_SPACING: Duration = Duration::from_millis(1200);
/// How long reading a record back may take: peers that have not answered by then are not
/// counted.
const READ_BACK: Duration = Duration::from_secs(5);

/// What reading a record back found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The sequence number pushed.
    pub seq: u64,
    /// Peers that returned this record or a newer one of the same owner.
    pub holders: usize,
    /// Peers that answered the read-back at all (those that hold nothing included).
    pub answered: u32,
    /// The highest sequence number of the same owner found above `seq`: another machine
    /// with this key, or an earlier run with the clock ahead, published it. Storage nodes
    /// refuse `seq` while they hold it.
    pub newer: Option<u64>,
    /// Another key whose valid record the network holds for this name (a human name taken
    /// before this node published it: storage nodes refuse this node's record).
    pub taken_by: Option<[u8; 32]>,
    /// When the read-back ended, Unix seconds.
    pub checked: u64,
}

impl Held {
    /// What `replicas` of the name of `record` say about it.
    pub fn from_replicas(record: &NameRecord, replicas: &Replicas) -> Self {
        let mut held = Self {
            seq: record.seq,
            holders: 0,
            answered: replicas.peers_answered,
            newer: None,
            taken_by: None,
            checked: unix_now(),
        };
        for (peer, replica) in &replicas.records {
            if peer.is_none() {
                // This node's own store: not a replica elsewhere.
                continue;
            }
            if replica.owner != record.owner {
                held.taken_by = Some(replica.owner);
                continue;
            }
            if replica.seq >= record.seq {
                held.holders += 1;
            }
            if replica.seq > record.seq {
                held.newer = held.newer.max(Some(replica.seq));
            }
        }
        held
    }
}

/// Spaced PUTs and what the last read-back of each name found.
pub struct Pushes {
    node: NodeHandle,
    /// When the last PUT went out; held while waiting for a turn, so turns go in order
    /// (tokio's mutex is fair).
    last_put: tokio::sync::Mutex<Option<Instant>>,
    /// The last read-back of each own name. Bounded by the names this node publishes: entries
    /// of names no longer published are dropped by [`Pushes::forget`].
    held: Mutex<HashMap<LowerName, Held>>,
}

impl Pushes {
    /// Pushes through `node`.
    pub fn new(node: NodeHandle) -> Self {
        Self {
            node,
            last_put: tokio::sync::Mutex::new(None),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for this node's turn to PUT, puts `record`, reads it back and remembers what it
    /// found.
    ///
    /// # Errors
    /// [`NodeError`] when the node refuses the record or is gone, or no lookup slot is free
    /// for the read-back.
    pub async fn push(&self, record: &NameRecord) -> Result<Held, NodeError> {
        {
            let mut last = self.last_put.lock().await;
            if let Some(last) = *last {
                sleep_until(last + PUT_SPACING).await;
            }
            *last = Some(Instant::now());
        }
        self.node.publish(record.clone()).await?;
        let replicas = self
            .node
            .lookup_within(record.name.clone(), usize::MAX, READ_BACK)
            .await?;
        let held = Held::from_replicas(record, &replicas);
        self.lock()
            .insert(LowerName::new(&record.name), held.clone());
        Ok(held)
    }

    /// What the last read-back of `name` found, if it was pushed since the daemon started.
    pub fn held(&self, name: &LowerName) -> Option<Held> {
        self.lock().get(name).cloned()
    }

    /// Forgets `name` (no longer published).
    pub fn forget(&self, name: &LowerName) {
        self.lock().remove(name);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<LowerName, Held>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one call.
        self.held
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
        let held = Held::from_replicas(&pushed, &replicas);
        assert_eq!(held.holders, 2, "{held:?}");
        assert_eq!(held.newer, Some(12));
        assert_eq!(held.taken_by, Some(theirs.public().to_bytes()));
        assert_eq!(held.answered, 5);
    }
}
