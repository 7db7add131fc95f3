//! What enters the record store: every record a peer asks this node to keep (Kademlia PUT_VALUE,
//! handed over by [`libp2p::kad::StoreInserts::FilterBoth`]) is checked in full first: a PUT
//! rate per peer, the signature and expiry, the key it is stored under, the owner of a name
//! already held, and the number of records of one owner key stored here. A copy of a record
//! held already (a storage node's hourly replication, a publisher's re-put) is a no-op that
//! costs its sender nothing. A peer that sends an invalid record is warned about once.
//!
//! Every map here is bounded: the store by `p2p.max_stored_records` (and
//! `p2p.max_records_per_owner` for one owner key), the PUT times by [`RATE_PEERS`] peers of
//! `p2p.max_puts_per_peer_per_minute` times each, the peers warned about by [`WARNED_PEERS`].

use std::{
    collections::{HashSet, VecDeque},
    fmt::Display,
    num::NonZeroUsize,
    time::Duration,
};

use libp2p::{
    PeerId,
    kad::{
        self,
        store::{MemoryStore, RecordStore},
    },
};
use lru::LruCache;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{
    config::P2pConfig,
    record::{NameRecord, RecordError, dht_key, unix_now},
};

/// Peers remembered as having sent an invalid record (so each is logged once).
const WARNED_PEERS: usize = 1024;
/// The window of the PUT rate limit.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Peers whose PUT times are kept, at most; the one heard from least recently is forgotten
/// first. A peer forgotten gets a fresh minute's allowance, which a new identity gets anyway.
const RATE_PEERS: usize = 10_000;

/// Peers that sent an invalid record (inbound or as a lookup's replica), each warned about
/// once; later ones are logged at debug.
#[derive(Default)]
pub(crate) struct InvalidRecords {
    order: VecDeque<PeerId>,
    warned: HashSet<PeerId>,
}

impl InvalidRecords {
    pub(crate) fn warn_once(&mut self, peer: PeerId, error: &dyn Display) {
        if self.warned.contains(&peer) {
            debug!(%peer, %error, "invalid record dropped");
            return;
        }
        warn!(%peer, %error, "peer sent an invalid record; dropped (further ones are logged at debug)");
        if self.order.len() >= WARNED_PEERS
            && let Some(old) = self.order.pop_front()
        {
            self.warned.remove(&old);
        }
        self.order.push_back(peer);
        self.warned.insert(peer);
    }
}

/// Why a record was not stored ([`InboundPuts::admit`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The record is invalid in itself: it does not decode, its signature does not verify,
    /// it expired or expires too far ahead (section 5 rules 1-7).
    #[error(transparent)]
    Invalid(RecordError),
    /// It is stored under another key than its name's.
    #[error("record stored under another name's key")]
    MisplacedKey,
    /// A valid record of another owner key is held for the name (first come, first served).
    #[error("record for a name owned by another key")]
    OtherOwner,
    /// The record held for the name is this one or a newer one of the same owner.
    #[error("record is not newer than the one held")]
    NotNewer,
    /// The owner key has `p2p.max_records_per_owner` records here already.
    #[error("the owner key's record limit is reached")]
    OwnerFull,
    /// The store refused it: `p2p.max_stored_records` records are held.
    #[error("the record store refused it")]
    Store(#[source] kad::store::Error),
}

/// The checks on records peers put here.
pub(crate) struct InboundPuts {
    max_puts_per_minute: usize,
    max_stored_records: usize,
    max_records_per_owner: usize,
    /// Recent PUT times per peer, for the rate limit.
    put_times: LruCache<PeerId, VecDeque<Instant>>,
}

impl InboundPuts {
    pub(crate) fn new(config: &P2pConfig) -> Self {
        Self {
            max_puts_per_minute: config.max_puts_per_peer_per_minute,
            max_stored_records: config.max_stored_records,
            max_records_per_owner: config.max_records_per_owner,
            put_times: LruCache::new(NonZeroUsize::new(RATE_PEERS).expect("nonzero constant")),
        }
    }

    /// A peer asks us to store a record: check it fully before it touches the store
    /// (docs/PROTOCOL.md section 5). Returns whether the store changed.
    pub(crate) fn on_put(
        &mut self,
        store: &mut MemoryStore,
        source: PeerId,
        record: kad::Record,
        invalid: &mut InvalidRecords,
    ) -> bool {
        // The very record held (rule 8): storage nodes replicate what they hold every hour
        // and publishers re-put every 10 minutes, so copies are the bulk of PUTs. Comparing
        // bytes costs less than the rate check's bookkeeping and needs no signature check.
        if store
            .get(&record.key)
            .is_some_and(|held| held.value == record.value)
        {
            return false;
        }
        if !self.within_rate(source) {
            debug!(peer = %source, "PUT rate limit exceeded; record dropped");
            return false;
        }
        match self.admit(store, record) {
            Ok(()) => true,
            Err(error @ (Refused::Invalid(_) | Refused::MisplacedKey | Refused::OtherOwner)) => {
                invalid.warn_once(source, &error);
                false
            }
            Err(error) => {
                debug!(peer = %source, %error, "record not stored");
                false
            }
        }
    }

    /// The checks of section 5 past the PUT rate, and the store's bounds: stores `record`
    /// (its `publisher` and `expires` taken from the signed value, whatever they were) when it
    /// passes them all. Every record this node keeps for others comes through here, whether a
    /// peer put it or it was read back from the snapshot of an earlier run ([`super::snapshot`]).
    ///
    /// # Errors
    /// [`Refused`]: why it was not stored; the store is unchanged.
    pub(crate) fn admit(
        &self,
        store: &mut MemoryStore,
        mut record: kad::Record,
    ) -> Result<(), Refused> {
        let now = unix_now();
        let new = NameRecord::from_bytes(&record.value)
            .and_then(|r| r.verify(now).map(|()| r))
            .map_err(Refused::Invalid)?;
        if record.key.as_ref() != dht_key(&new.name).as_slice() {
            return Err(Refused::MisplacedKey);
        }
        let mut replaces = false;
        if let Some(held) = store.get(&record.key)
            && let Ok(held) = NameRecord::from_bytes(&held.value)
            && held.expires > now
        {
            if held.owner != new.owner {
                return Err(Refused::OtherOwner);
            }
            if new.seq <= held.seq {
                return Err(Refused::NotNewer);
            }
            // A newer version takes the old one's place: it adds nothing to any bound.
            replaces = true;
        }
        let stored = to_kad_record(&new);
        // Counted by owner key, not by sender (rule 10): a storage node replicating others'
        // records must not use up its own allowance, nor an owner's records be refused
        // because another node handed them over.
        let held_by_owner = || {
            store
                .records()
                .filter(|r| r.publisher == stored.publisher)
                .count()
        };
        if !replaces && held_by_owner() >= self.max_records_per_owner {
            return Err(Refused::OwnerFull);
        }
        record.value = stored.value;
        record.publisher = stored.publisher;
        record.expires = stored.expires;
        store.put(record).map_err(Refused::Store)
    }

    /// `p2p.max_stored_records`: the store holds this many records at most.
    pub(crate) fn max_stored_records(&self) -> usize {
        self.max_stored_records
    }

    fn within_rate(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        let times = self.put_times.get_or_insert_mut(peer, VecDeque::new);
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= self.max_puts_per_minute {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// The Kademlia form of a record: value = encoded record, expiry from the signed field,
/// `publisher` = the peer ID of the owner key (libp2p's "original publisher"; the key the
/// per-owner count of section 5 rule 10 goes by).
// `kad::Record::expires` is a std Instant that Kademlia compares with its own clock; tokio's
// paused clock would not move it.
#[allow(clippy::disallowed_types)]
pub(crate) fn to_kad_record(record: &NameRecord) -> kad::Record {
    let publisher = libp2p::identity::ed25519::PublicKey::try_from_bytes(&record.owner)
        .ok()
        .map(|key| PeerId::from_public_key(&key.into()));
    let left = record.expires.saturating_sub(unix_now());
    kad::Record {
        key: kad::RecordKey::new(&dht_key(&record.name)),
        value: record.to_bytes(),
        publisher,
        expires: Some(std::time::Instant::now() + Duration::from_secs(left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peers by the ten thousand, fresh identities each: the PUT times kept stay bounded, and
    /// a peer still sending is still limited.
    #[test]
    fn put_times_are_kept_for_a_bounded_number_of_peers() {
        let config = P2pConfig {
            max_puts_per_peer_per_minute: 2,
            ..P2pConfig::default()
        };
        let mut puts = InboundPuts::new(&config);
        let steady = PeerId::random();
        assert!(puts.within_rate(steady) && puts.within_rate(steady));
        for _ in 0..RATE_PEERS + 5_000 {
            assert!(puts.within_rate(PeerId::random()));
            assert!(!puts.within_rate(steady), "the steady peer stays limited");
        }
        assert_eq!(puts.put_times.len(), RATE_PEERS);
    }

    /// An owner at its record limit can still update the records held here (a newer `seq`
    /// replaces, docs/PROTOCOL.md section 5 rule 10), but not add another.
    #[test]
    fn an_owner_at_its_record_limit_can_still_update_what_it_holds() {
        let config = P2pConfig {
            max_records_per_owner: 1,
            ..P2pConfig::default()
        };
        let mut puts = InboundPuts::new(&config);
        let peer = PeerId::random();
        let me = PeerId::random();
        let mut store = MemoryStore::new(me);
        let mut invalid = InvalidRecords::default();
        let key = libp2p::identity::ed25519::Keypair::generate();
        let record = |name: &str, seq| {
            let name = hickory_proto::rr::Name::from_ascii(name).expect("name");
            let signed = NameRecord::sign(&key, &name, seq, unix_now() + 600, Vec::new());
            to_kad_record(&signed.expect("signed"))
        };
        let seq_held = |store: &MemoryStore, name: &str| {
            let key = record(name, 0).key;
            store
                .get(&key)
                .map(|r| NameRecord::from_bytes(&r.value).expect("stored").seq)
        };
        puts.on_put(&mut store, peer, record("one.p2p.", 1), &mut invalid);
        puts.on_put(&mut store, peer, record("two.p2p.", 1), &mut invalid);
        assert_eq!(seq_held(&store, "one.p2p."), Some(1));
        assert_eq!(
            seq_held(&store, "two.p2p."),
            None,
            "over the per-peer limit"
        );
        puts.on_put(&mut store, peer, record("one.p2p.", 2), &mut invalid);
        assert_eq!(
            seq_held(&store, "one.p2p."),
            Some(2),
            "an update is no new record"
        );
        puts.on_put(&mut store, peer, record("one.p2p.", 1), &mut invalid);
        assert_eq!(
            seq_held(&store, "one.p2p."),
            Some(2),
            "an older one is refused"
        );
    }

    /// Records are counted by owner key, not by the peer that put them (section 5 rule 10),
    /// and a copy of a record held costs its sender no PUT allowance: a storage node
    /// replicating others' records every hour uses up neither.
    #[test]
    fn replication_is_charged_to_owners_not_to_the_node_handing_records_on() {
        let config = P2pConfig {
            max_records_per_owner: 1,
            max_puts_per_peer_per_minute: 3,
            ..P2pConfig::default()
        };
        let mut puts = InboundPuts::new(&config);
        let mut store = MemoryStore::new(PeerId::random());
        let mut invalid = InvalidRecords::default();
        let owners: Vec<_> = (0..3)
            .map(|_| libp2p::identity::ed25519::Keypair::generate())
            .collect();
        let record = |owner: usize, name: &str| {
            let name = hickory_proto::rr::Name::from_ascii(name).expect("name");
            let signed = NameRecord::sign(&owners[owner], &name, 1, unix_now() + 600, Vec::new());
            to_kad_record(&signed.expect("signed"))
        };
        let held = |store: &MemoryStore, r: &kad::Record| store.get(&r.key).is_some();
        let storage_node = PeerId::random();
        let first = record(0, "a.p2p.");
        puts.on_put(&mut store, storage_node, first.clone(), &mut invalid);
        for _ in 0..50 {
            puts.on_put(&mut store, storage_node, first.clone(), &mut invalid);
        }
        let (second, third) = (record(1, "b.p2p."), record(2, "c.p2p."));
        puts.on_put(&mut store, storage_node, second.clone(), &mut invalid);
        puts.on_put(&mut store, storage_node, third.clone(), &mut invalid);
        assert!(
            held(&store, &first) && held(&store, &second) && held(&store, &third),
            "three owners' records from one node, its 50 copies free of charge"
        );
        let fourth = record(0, "d.p2p.");
        puts.on_put(&mut store, PeerId::random(), fourth.clone(), &mut invalid);
        assert!(
            !held(&store, &fourth),
            "owner 0 is at its limit, whoever puts"
        );
    }
}
