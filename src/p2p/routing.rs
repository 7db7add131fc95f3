//! Joining the DHT and filling the Kademlia routing table: the bootstrap peers (dialed at start
//! and again while the node has no peer at all), peers on the LAN (mDNS), and the addresses
//! peers announce (identify), kept only where others can use them, [`ADDRS_PER_PEER`] at most
//! per peer and announcement, and never for a peer set aside ([`Stalls`]).
//!
//! What a peer can grow here is bounded: the routing table by Kademlia (k = 20 peers per
//! bucket), `dialing` and `warned` by the bootstrap list.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, identify, mdns,
    swarm::{ConnectionId, SwarmEvent, dial_opts::DialOpts},
};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use super::{
    KAD_PROTOCOL, PeerEntry,
    addr::{Scope, peer_of, same_place, scope},
    behaviour::{BehaviourEvent, NodeEvent, NodeSwarm},
    connections::Connections,
    stalls::Stalls,
};

/// How often a node without any peer dials its bootstrap peers again.
pub(crate) const REDIAL: Duration = Duration::from_secs(30);
/// The first wait before dialing the bootstrap peers again while this node has no peer; it
/// doubles at each attempt up to [`REDIAL`]. A first dial can fail for a passing reason (the
/// peer still starting, a local port in use), and a node without peers serves no name.
const FIRST_REDIAL: Duration = Duration::from_secs(1);
/// Addresses the routing table takes for one peer from its announcements (identify, mDNS) at
/// most: a host has a few (IPv4 and IPv6, QUIC and TCP, a relay or two), and each one kept is
/// dialed by lookups. Kademlia itself keeps every address it is given, and a peer may announce
/// new ones again and again; room comes back as addresses fail when dialed.
pub(crate) const ADDRS_PER_PEER: usize = 8;

/// The routing table's keeper.
pub(crate) struct Routing {
    bootstrap: Vec<Multiaddr>,
    /// A bootstrap query was started.
    bootstrapped: bool,
    /// Set once the first DHT peer is met.
    joined: watch::Sender<bool>,
    /// When [`Routing::redial`] is due, and the wait after it while no peer comes.
    redial_at: Instant,
    redial_wait: Duration,
    /// Bootstrap dials under way, by connection, with the address dialed.
    dialing: HashMap<ConnectionId, Multiaddr>,
    /// Bootstrap addresses whose failure was logged as a warning (once, until one succeeds).
    warned: HashSet<Multiaddr>,
}

impl Routing {
    pub(crate) fn new(bootstrap: Vec<Multiaddr>, joined: watch::Sender<bool>) -> Self {
        Self {
            bootstrap,
            bootstrapped: false,
            redial_at: Instant::now() + FIRST_REDIAL,
            redial_wait: FIRST_REDIAL,
            joined,
            dialing: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    /// Dials every bootstrap address, and puts those that name their peer into the routing
    /// table so that DHT queries can use them as soon as they answer.
    pub(crate) fn dial_bootstrap(&mut self, swarm: &mut NodeSwarm, first: bool) {
        for addr in &self.bootstrap {
            if let Some(peer) = peer_of(addr) {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            let opts = DialOpts::from(addr.clone());
            let id = opts.connection_id();
            match swarm.dial(opts) {
                Ok(()) => {
                    self.dialing.insert(id, addr.clone());
                }
                Err(error) if first => warn!(%addr, %error, "cannot dial bootstrap peer"),
                Err(error) => debug!(%addr, %error, "cannot dial bootstrap peer"),
            }
        }
    }

    /// A daemon often starts before the network is up (a laptop at boot): while it has no peer
    /// at all, it dials its bootstrap peers again.
    /// When [`Routing::redial`] is due next.
    pub(crate) fn redial_at(&self) -> Instant {
        self.redial_at
    }

    /// Dials the bootstrap peers again if this node has no peer: 1 s after start, then at
    /// doubling intervals up to [`REDIAL`]; with peers it only checks every [`REDIAL`].
    pub(crate) fn redial(&mut self, swarm: &mut NodeSwarm) {
        if swarm.connected_peers().next().is_none() {
            self.dial_bootstrap(swarm, false);
            self.redial_at = Instant::now() + self.redial_wait;
            self.redial_wait = (self.redial_wait * 2).min(REDIAL);
        } else {
            self.redial_wait = FIRST_REDIAL;
            self.redial_at = Instant::now() + REDIAL;
        }
    }

    pub(crate) fn on_event(
        &mut self,
        swarm: &mut NodeSwarm,
        event: &NodeEvent,
        connections: &Connections,
        stalls: &Stalls,
    ) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                if !info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL)
                    || stalls.is_set_aside(peer_id)
                {
                    return;
                }
                // rust-libp2p does not feed identify into Kademlia; without this, peers that
                // dialed us never get an address in the routing table. Only addresses others
                // can use are kept: a peer reached over the internet that lists 127.0.0.1 or
                // its LAN address would send every node that asks the DHT dialing itself.
                let seen_at = connections
                    .remote(connection_id)
                    .map_or(Scope::Global, scope);
                let room = ADDRS_PER_PEER.saturating_sub(addresses_held(swarm, peer_id));
                let usable = info.listen_addrs.iter().filter(|a| scope(a) >= seen_at);
                for addr in usable.take(room) {
                    swarm.behaviour_mut().kad.add_address(peer_id, addr.clone());
                }
                if !self.bootstrapped {
                    // First DHT peer: look ourselves up to fill the routing table now rather
                    // than at the first periodic bootstrap.
                    self.bootstrapped = swarm.behaviour_mut().kad.bootstrap().is_ok();
                    self.joined.send_replace(true);
                }
            }
            SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                if let Some(addr) = self.dialing.remove(connection_id)
                    && self.warned.remove(&addr)
                {
                    info!(%addr, "reached the bootstrap peer");
                }
            }
            // A bootstrap peer that cannot be reached leaves the node alone in the network:
            // say so once per address (and again only after it was reached in between).
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some(addr) = self.dialing.remove(connection_id) {
                    if self.warned.insert(addr.clone()) {
                        warn!(%addr, error = %crate::error::one_line(error), "cannot reach the bootstrap peer; dialing it again while this node has no peer (after 1 s, doubling up to {} s)", REDIAL.as_secs());
                    } else {
                        debug!(%addr, error = %crate::error::one_line(error), "cannot reach the bootstrap peer");
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut taken: HashMap<PeerId, usize> = HashMap::new();
                for (peer, addr) in found {
                    let count = taken
                        .entry(*peer)
                        .or_insert_with(|| addresses_held(swarm, peer));
                    *count += 1;
                    if *count > ADDRS_PER_PEER || stalls.is_set_aside(peer) {
                        continue;
                    }
                    debug!(%peer, %addr, "found a peer on the LAN");
                    swarm.behaviour_mut().kad.add_address(peer, addr.clone());
                    if !swarm.is_connected(peer) {
                        let _ = swarm.dial(addr.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// The peers this node knows: its routing table, then connected peers outside it, each
    /// with its open connections; and the size of the routing table.
    pub(crate) fn peers(
        swarm: &mut NodeSwarm,
        connections: &Connections,
    ) -> (Vec<PeerEntry>, usize) {
        let mut peers = Vec::new();
        for bucket in swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                peers.push(PeerEntry {
                    peer_id: *entry.node.key.preimage(),
                    addrs: entry.node.value.iter().cloned().collect(),
                    connected: false,
                    in_routing_table: true,
                    connections: Vec::new(),
                });
            }
        }
        let routing_table_peers = peers.len();
        let in_table: HashSet<_> = peers.iter().map(|p| p.peer_id).collect();
        for peer in &mut peers {
            peer.connected = swarm.is_connected(&peer.peer_id);
        }
        for id in swarm.connected_peers().filter(|id| !in_table.contains(id)) {
            peers.push(PeerEntry {
                peer_id: *id,
                addrs: Vec::new(),
                connected: true,
                in_routing_table: false,
                connections: Vec::new(),
            });
        }
        for (peer, info) in connections.iter() {
            if let Some(entry) = peers.iter_mut().find(|p| p.peer_id == *peer) {
                entry.connections.push(info.clone());
            }
        }
        (peers, routing_table_peers)
    }
}

/// How many addresses the routing table holds for `peer`.
fn addresses_held(swarm: &mut NodeSwarm, peer: &PeerId) -> usize {
    addresses_of(swarm, peer).len()
}

/// The addresses the routing table holds for `peer`.
fn addresses_of(swarm: &mut NodeSwarm, peer: &PeerId) -> Vec<Multiaddr> {
    let kad = &mut swarm.behaviour_mut().kad;
    kad.kbucket(*peer)
        .and_then(|bucket| {
            bucket
                .iter()
                .find(|entry| entry.node.key.preimage() == peer)
                .map(|entry| entry.node.value.iter().cloned().collect())
        })
        .unwrap_or_default()
}

/// Another node answered at `addr` when `peer` was dialed there: the routing table drops the
/// addresses of `peer` that lead to the same place (its TCP and its QUIC address alike).
pub(crate) fn forget_addr(swarm: &mut NodeSwarm, peer: &PeerId, addr: &Multiaddr) {
    for held in addresses_of(swarm, peer) {
        if same_place(&held, addr, *peer) {
            swarm.behaviour_mut().kad.remove_address(peer, &held);
        }
    }
}
