//! Peers that take DHT requests and answer none. Kademlia waits for each request it sends up to
//! a timeout, and a lookup cannot conclude that a name is absent while a request to one of the
//! closest peers is pending; a peer that hangs (overloaded, broken or hostile) makes every
//! lookup that meets it run to its end. Such a peer is noticed from the lookups themselves and
//! set aside for a while: out of the routing table, its connections closed and refused, so that
//! a lookup that hears of it from another peer fails it at once instead of waiting.
//!
//! A peer counts as not answering when, in several lookups in a row that ran long enough for
//! any live peer to answer, it was among the first peers asked and was not among those that
//! answered. A peer of the routing table that cannot be dialed at all (stopped, gone) is set
//! aside too, for a shorter while: Kademlia keeps it until its bucket needs room, other peers
//! keep naming it, and every dial waits for a handshake to time out (5 s over QUIC). Dials of a
//! peer set aside are refused at once ([`super::dial_guard`]); one that could not be dialed
//! comes back as soon as it connects to this node. Bootstrap peers are never set aside: they
//! are the way back into the network.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroUsize,
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId,
    kad::{self, KBucketKey, store::MemoryStore},
};
use lru::LruCache;
use tokio::time::Instant;
use tracing::{debug, info};

use super::addr::peer_of;

/// Peers a lookup asks first: Kademlia's parallelism (α = 3, libp2p's default, which
/// `behaviour` keeps): the lookup sends these their requests at once.
const FIRST_ASKED: usize = 3;
/// Lookups in a row a peer may leave unanswered before it is set aside.
const MISSES: u8 = 3;
/// A lookup shorter than this says nothing about who did not answer: a slow peer may still.
const MIN_RUN: Duration = Duration::from_secs(1);
/// How long a peer that does not answer stays set aside.
pub(crate) const SET_ASIDE: Duration = Duration::from_secs(600);
/// How long a peer that could not be dialed stays set aside: long enough that lookups stop
/// waiting for it, short enough that a node restarted at another address is soon asked again.
pub(crate) const UNREACHABLE_ASIDE: Duration = Duration::from_secs(60);
/// How long after a first failed dial a second one confirms that a peer is unreachable.
const UNREACHABLE_CONFIRM: Duration = Duration::from_secs(5);
/// Peers whose unanswered lookups are counted, at most (the least recent are forgotten first).
const TRACKED: usize = 1024;
/// Peers set aside at once, at most; never more than half the routing table either, so that a
/// node whose every peer looks slow (its own link is) does not cut itself off.
const MAX_SET_ASIDE: usize = 64;

/// What a lookup must remember for the check: when it began and whom it asked first.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    key: kad::RecordKey,
    first: Vec<PeerId>,
    started: Instant,
}

/// The peers that do not answer, and those set aside.
pub(crate) struct Stalls {
    bootstrap: HashSet<PeerId>,
    misses: LruCache<PeerId, u8>,
    /// The first failed dial of peers not reached since, for [`Stalls::unreachable`].
    dial_failures: LruCache<PeerId, Instant>,
    /// Until when, and whether for being unreachable (rather than for not answering).
    set_aside: HashMap<PeerId, (Instant, bool)>,
    /// Set aside since the event loop last acted on it.
    new: Vec<PeerId>,
    /// Back from aside since the event loop last acted on it.
    expired: Vec<PeerId>,
}

impl Stalls {
    pub(crate) fn new(bootstrap: &[Multiaddr]) -> Self {
        Self {
            bootstrap: bootstrap.iter().filter_map(peer_of).collect(),
            misses: LruCache::new(NonZeroUsize::new(TRACKED).expect("nonzero constant")),
            dial_failures: LruCache::new(NonZeroUsize::new(TRACKED).expect("nonzero constant")),
            set_aside: HashMap::new(),
            new: Vec::new(),
            expired: Vec::new(),
        }
    }

    /// What a lookup for `key` starting now must remember: the peers it asks first.
    pub(crate) fn probe(kad: &mut kad::Behaviour<MemoryStore>, key: &kad::RecordKey) -> Probe {
        let target = KBucketKey::new(key.clone());
        let first = kad
            .get_closest_local_peers(&target)
            .take(FIRST_ASKED)
            .map(|k| *k.preimage())
            .collect();
        Probe {
            key: key.clone(),
            first,
            started: Instant::now(),
        }
    }

    /// `peer` answered a request: its count starts again.
    pub(crate) fn answered(&mut self, peer: &PeerId) {
        self.misses.pop(peer);
    }

    /// The lookup of `probe` ended without a record; `answered` are the peers closest to its
    /// key that answered (at most Kademlia's k of them, closest first), out of a routing table
    /// of `table` peers.
    pub(crate) fn ended(&mut self, probe: &Probe, answered: &[PeerId], table: usize) {
        for peer in answered {
            self.answered(peer);
        }
        if probe.started.elapsed() < MIN_RUN || answered.is_empty() {
            return;
        }
        let target = KBucketKey::new(probe.key.clone());
        let distance = |peer: &PeerId| target.distance(&KBucketKey::from(*peer));
        // The list stops at k peers: a peer farther than its last may have answered unlisted.
        let farthest = answered.iter().map(distance).max();
        let full = answered.len() >= kad::K_VALUE.get();
        for peer in &probe.first {
            if answered.contains(peer) || (full && Some(distance(peer)) > farthest) {
                continue;
            }
            let count = self.misses.get_or_insert_mut(*peer, || 0);
            *count += 1;
            if *count >= MISSES {
                self.misses.pop(peer);
                if self.set_aside(*peer, table, SET_ASIDE, false) {
                    info!(%peer, "peer answers no DHT request; set aside for {} s", SET_ASIDE.as_secs());
                }
            }
        }
    }

    /// A dial of `peer`, a peer of the routing table of `table` peers, failed on every
    /// address. A second such failure at least [`UNREACHABLE_CONFIRM`] after the first, with
    /// no connection in between, sets it aside for [`UNREACHABLE_ASIDE`]: one dial timing out
    /// on a loaded machine says little, a peer that stays unreachable fails every lookup.
    pub(crate) fn unreachable(&mut self, peer: PeerId, table: usize) {
        let now = Instant::now();
        let first = *self.dial_failures.get_or_insert(peer, || now);
        if now.duration_since(first) < UNREACHABLE_CONFIRM {
            return;
        }
        self.dial_failures.pop(&peer);
        if self.set_aside(peer, table, UNREACHABLE_ASIDE, true) {
            debug!(%peer, "peer cannot be dialed; set aside for {} s", UNREACHABLE_ASIDE.as_secs());
        }
    }

    /// `peer` was dialed on purpose (an operator, a bootstrap list): it is tried again.
    pub(crate) fn forgive(&mut self, peer: &PeerId) -> bool {
        self.dial_failures.pop(peer);
        self.reached(peer)
    }

    /// Sets `peer` aside for `span` unless it is a bootstrap peer, already aside, or too many
    /// are; returns whether it was.
    fn set_aside(&mut self, peer: PeerId, table: usize, span: Duration, unreachable: bool) -> bool {
        let now = self.sweep();
        if self.bootstrap.contains(&peer)
            || self.set_aside.contains_key(&peer)
            || self.set_aside.len() >= MAX_SET_ASIDE
            || self.set_aside.len() + 1 > table / 2
        {
            return false;
        }
        self.set_aside.insert(peer, (now + span, unreachable));
        self.new.push(peer);
        true
    }

    /// The peers back from aside (their time over, or reached since), for the event loop to
    /// let in again: the one place the dial guard learns of it.
    pub(crate) fn take_expired(&mut self) -> Vec<PeerId> {
        self.sweep();
        std::mem::take(&mut self.expired)
    }

    /// Moves the peers whose time aside is over to `expired`; returns the time it looked at.
    fn sweep(&mut self) -> Instant {
        let now = Instant::now();
        for (peer, (_, unreachable)) in self.set_aside.extract_if(|_, (until, _)| *until <= now) {
            if unreachable {
                // Back on probation: its next failed dial sets it aside at once.
                let confirmed = now.checked_sub(UNREACHABLE_CONFIRM).unwrap_or(now);
                self.dial_failures.put(peer, confirmed);
            }
            self.expired.push(peer);
        }
        now
    }

    /// Is `peer` set aside now?
    pub(crate) fn is_set_aside(&self, peer: &PeerId) -> bool {
        self.set_aside
            .get(peer)
            .is_some_and(|(until, _)| *until > Instant::now())
    }

    /// `peer` connected to this node: if it was set aside for being unreachable, that is over
    /// (it was restarted, or its address changed); returns whether it was.
    pub(crate) fn reached(&mut self, peer: &PeerId) -> bool {
        self.dial_failures.pop(peer);
        let unreachable = self
            .set_aside
            .get(peer)
            .is_some_and(|(_, unreachable)| *unreachable);
        if unreachable {
            self.set_aside.remove(peer);
            self.expired.push(*peer);
        }
        unreachable
    }

    /// Is anything here for the event loop to act on soon: peers set aside (their time will
    /// be over), or set aside or back since it last looked?
    pub(crate) fn busy(&self) -> bool {
        !self.set_aside.is_empty() || !self.new.is_empty() || !self.expired.is_empty()
    }

    /// The peers set aside since the last call, for the event loop to drop.
    pub(crate) fn take_new(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(first: &[PeerId], ran: Duration) -> Probe {
        Probe {
            key: kad::RecordKey::new(&b"site.p2p."),
            first: first.to_vec(),
            started: Instant::now() - ran,
        }
    }

    /// One failed dial sets no peer aside (a dial may time out on a loaded machine); failures
    /// 5 s apart do, and the peer comes back as soon as it connects or is dialed on purpose.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stays_unreachable_is_set_aside_until_it_connects() {
        let (gone, boot) = (PeerId::random(), PeerId::random());
        let bootstrap: Multiaddr = format!("/ip4/192.0.2.1/tcp/4747/p2p/{boot}")
            .parse()
            .unwrap();
        let mut stalls = Stalls::new(&[bootstrap]);
        stalls.unreachable(gone, 10);
        tokio::time::advance(Duration::from_secs(1)).await;
        stalls.unreachable(gone, 10);
        assert!(!stalls.is_set_aside(&gone), "two failures within a second");
        tokio::time::advance(UNREACHABLE_CONFIRM).await;
        stalls.unreachable(gone, 10);
        assert!(stalls.is_set_aside(&gone));
        assert_eq!(stalls.take_new(), [gone]);
        assert!(stalls.reached(&gone), "it connected");
        assert!(!stalls.is_set_aside(&gone));
        for _ in 0..3 {
            stalls.unreachable(boot, 10);
            tokio::time::advance(UNREACHABLE_CONFIRM).await;
        }
        assert!(!stalls.is_set_aside(&boot), "bootstrap peers stay");
        stalls.unreachable(gone, 10);
        tokio::time::advance(UNREACHABLE_CONFIRM).await;
        stalls.unreachable(gone, 10);
        assert!(stalls.forgive(&gone), "dialed on purpose");
        assert!(!stalls.is_set_aside(&gone));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_answers_is_set_aside_and_comes_back() {
        tokio::time::advance(Duration::from_secs(10)).await;
        let (slow, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
        let boot = PeerId::random();
        let bootstrap: Multiaddr = format!("/ip4/192.0.2.1/tcp/4747/p2p/{boot}")
            .parse()
            .unwrap();
        let mut stalls = Stalls::new(&[bootstrap]);
        let long = Duration::from_secs(2);
        // A short lookup tells nothing; an answer starts the count again.
        stalls.ended(&probe(&[slow, a, boot], Duration::ZERO), &[a], 10);
        stalls.ended(&probe(&[slow, a, boot], long), &[a], 10);
        stalls.ended(&probe(&[slow, a, boot], long), &[a, slow], 10);
        stalls.ended(&probe(&[slow, a, boot], long), &[a], 10);
        stalls.ended(&probe(&[slow, b, boot], long), &[b], 10);
        assert!(!stalls.is_set_aside(&slow));
        stalls.ended(&probe(&[slow, b, boot], long), &[b], 10);
        assert!(
            stalls.is_set_aside(&slow),
            "three lookups in a row unanswered"
        );
        assert!(
            !stalls.is_set_aside(&boot),
            "bootstrap peers are never set aside"
        );
        assert_eq!(stalls.take_new(), vec![slow]);
        assert!(stalls.take_new().is_empty());
        tokio::time::advance(SET_ASIDE).await;
        assert!(!stalls.is_set_aside(&slow), "for a while only");
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_table_keeps_half_its_peers() {
        tokio::time::advance(Duration::from_secs(10)).await;
        let mut stalls = Stalls::new(&[]);
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let answering = PeerId::random();
        for _ in 0..MISSES {
            stalls.ended(&probe(&peers[..3], Duration::from_secs(2)), &[answering], 5);
        }
        let aside = peers.iter().filter(|p| stalls.is_set_aside(p)).count();
        assert_eq!(aside, 2, "at most half of a routing table of 5");
    }
}
