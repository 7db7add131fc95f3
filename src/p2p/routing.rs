//! Joining the DHT and filling the Kademlia routing table: the bootstrap peers (dialed at start
//! and again while the node has no peer at all), peers on the LAN (mDNS), and the addresses
//! peers announce (identify), kept only where others can use them.

use std::{collections::HashSet, sync::Arc, time::Duration};

use libp2p::{Multiaddr, identify, mdns, swarm::SwarmEvent};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{
    KAD_PROTOCOL, PeerEntry,
    addr::{Scope, peer_of, scope},
    behaviour::{BehaviourEvent, NodeEvent, NodeSwarm},
    connections::Connections,
};

/// How often a node without any peer dials its bootstrap peers again.
pub(crate) const REDIAL: Duration = Duration::from_secs(30);

/// The routing table's keeper.
pub(crate) struct Routing {
    bootstrap: Vec<Multiaddr>,
    /// A bootstrap query was started.
    bootstrapped: bool,
    /// Told when the first DHT peer is met.
    joined: Arc<Notify>,
}

impl Routing {
    pub(crate) fn new(bootstrap: Vec<Multiaddr>, joined: Arc<Notify>) -> Self {
        Self {
            bootstrap,
            bootstrapped: false,
            joined,
        }
    }

    /// Dials every bootstrap address, and puts those that name their peer into the routing
    /// table so that DHT queries can use them as soon as they answer.
    pub(crate) fn dial_bootstrap(&self, swarm: &mut NodeSwarm, first: bool) {
        for addr in &self.bootstrap {
            if let Some(peer) = peer_of(addr) {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            match swarm.dial(addr.clone()) {
                Ok(()) => {}
                Err(error) if first => warn!(%addr, %error, "cannot dial bootstrap peer"),
                Err(error) => debug!(%addr, %error, "cannot dial bootstrap peer"),
            }
        }
    }

    /// A daemon often starts before the network is up (a laptop at boot): while it has no peer
    /// at all, it dials its bootstrap peers again.
    pub(crate) fn redial(&self, swarm: &mut NodeSwarm) {
        if swarm.connected_peers().next().is_none() {
            self.dial_bootstrap(swarm, false);
        }
    }

    pub(crate) fn on_event(
        &mut self,
        swarm: &mut NodeSwarm,
        event: &NodeEvent,
        connections: &Connections,
    ) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                if !info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) {
                    return;
                }
                // rust-libp2p does not feed identify into Kademlia; without this, peers that
                // dialed us never get an address in the routing table. Only addresses others
                // can use are kept: a peer reached over the internet that lists 127.0.0.1 or
                // its LAN address would send every node that asks the DHT dialing itself.
                let seen_at = connections
                    .remote(connection_id)
                    .map_or(Scope::Global, scope);
                for addr in &info.listen_addrs {
                    if scope(addr) >= seen_at {
                        swarm.behaviour_mut().kad.add_address(peer_id, addr.clone());
                    }
                }
                if !self.bootstrapped {
                    // First DHT peer: look ourselves up to fill the routing table now rather
                    // than at the first periodic bootstrap.
                    self.bootstrapped = swarm.behaviour_mut().kad.bootstrap().is_ok();
                    self.joined.notify_one();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
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
