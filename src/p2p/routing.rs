//! Joining the DHT and filling the Kademlia routing table: the bootstrap peers (dialed at start
//! and again while the node has no peer at all), peers on the LAN (mDNS), and the addresses
//! peers announce (identify), kept only where others can use them, [`ADDRS_PER_PEER`] at most
//! per peer and announcement, and never for a peer set aside ([`Stalls`]).
//!
//! What a peer can grow here is bounded: the routing table by Kademlia (k = 20 peers per
//! bucket), `dialing` by the bootstrap list.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, TransportError, identify, mdns,
    swarm::{ConnectionId, DialError, SwarmEvent, dial_opts::DialOpts},
};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use super::{
    BootstrapPeer, KAD_PROTOCOL, PeerEntry,
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

/// One dial of [`Routing::dial_bootstrap`]: a bootstrap peer's addresses, in the order listed
/// (never empty), or one address that names no peer; and what came of dialing it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BootstrapDial {
    peer: Option<PeerId>,
    addrs: Vec<Multiaddr>,
    /// The peer that answered the last successful dial (for an address without a peer id).
    reached: Option<PeerId>,
    /// Why the last dial failed, in plain words; cleared when one succeeds.
    last_error: Option<String>,
    /// Another peer id answered at the address in the last failed dial.
    answered_as: Option<PeerId>,
    /// Its failure was logged as a warning (once, until a dial succeeds).
    warned: bool,
}

impl std::fmt::Display for BootstrapDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, addr) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

/// Has the node no connection to any peer?
fn alone(swarm: &NodeSwarm) -> bool {
    swarm.connected_peers().next().is_none()
}

/// The bootstrap list as dials: one per peer id, with every address that names it, in the order
/// the peers first appear; one per address that names none.
fn bootstrap_dials(bootstrap: &[Multiaddr]) -> Vec<BootstrapDial> {
    let mut dials: Vec<BootstrapDial> = Vec::new();
    for addr in bootstrap {
        let peer = peer_of(addr);
        match dials.iter_mut().find(|d| peer.is_some() && d.peer == peer) {
            Some(dial) => dial.addrs.push(addr.clone()),
            None => dials.push(BootstrapDial {
                peer,
                addrs: vec![addr.clone()],
                reached: None,
                last_error: None,
                answered_as: None,
                warned: false,
            }),
        }
    }
    dials
}

/// The routing table's keeper.
pub(crate) struct Routing {
    /// The bootstrap list as dials, with what came of each.
    bootstrap: Vec<BootstrapDial>,
    /// A bootstrap query was started.
    bootstrapped: bool,
    /// Set once the first DHT peer is met.
    joined: watch::Sender<bool>,
    /// When [`Routing::redial`] is due, and the wait after it while no peer comes.
    redial_at: Instant,
    redial_wait: Duration,
    /// Bootstrap dials under way, by connection, as indices into `bootstrap` (a peer's
    /// addresses are dialed together: the first to connect is the connection).
    dialing: HashMap<ConnectionId, usize>,
}

impl Routing {
    pub(crate) fn new(bootstrap: Vec<Multiaddr>, joined: watch::Sender<bool>) -> Self {
        Self {
            bootstrap: bootstrap_dials(&bootstrap),
            bootstrapped: false,
            redial_at: Instant::now() + FIRST_REDIAL,
            redial_wait: FIRST_REDIAL,
            joined,
            dialing: HashMap::new(),
        }
    }

    /// Dials every bootstrap peer, and puts the addresses that name their peer into the routing
    /// table so that DHT queries can use them as soon as they answer. The addresses of one peer
    /// (its TCP and QUIC ones, say) are one dial, tried together: the first to connect is the
    /// node's one connection to that peer, instead of one connection per address, each pinged
    /// and kept alive for nothing. An address without a peer id is a dial of its own.
    pub(crate) fn dial_bootstrap(&mut self, swarm: &mut NodeSwarm, first: bool) {
        for (index, dial) in self.bootstrap.iter_mut().enumerate() {
            if let Some(peer) = dial.peer {
                for addr in &dial.addrs {
                    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                }
            }
            let opts = match dial.peer {
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(dial.addrs.clone())
                    .build(),
                None => DialOpts::from(dial.addrs[0].clone()),
            };
            let id = opts.connection_id();
            match swarm.dial(opts) {
                Ok(()) => {
                    self.dialing.insert(id, index);
                }
                Err(error) => {
                    let plain = dial_error_words(&error);
                    if first {
                        warn!(addr = %dial, error = %plain, "cannot dial bootstrap peer");
                    } else {
                        debug!(addr = %dial, error = %plain, "cannot dial bootstrap peer");
                    }
                    dial.last_error = Some(plain);
                }
            }
        }
    }

    /// A daemon often starts before the network is up (a laptop at boot), and a bootstrap peer
    /// restarts: while the node has no peer at all, it dials its bootstrap peers again. When
    /// that [`Routing::redial`] is due: `None` while the node has a peer, or has no bootstrap
    /// peer to dial, so that an idle node keeps no timer for it.
    pub(crate) fn redial_at(&self, swarm: &NodeSwarm) -> Option<Instant> {
        (alone(swarm) && !self.bootstrap.is_empty()).then_some(self.redial_at)
    }

    /// Dials the bootstrap peers again if this node has no peer: 1 s after start or after its
    /// last peer left, then at doubling intervals up to [`REDIAL`].
    pub(crate) fn redial(&mut self, swarm: &mut NodeSwarm) {
        if alone(swarm) {
            self.dial_bootstrap(swarm, false);
            self.redial_at = Instant::now() + self.redial_wait;
            self.redial_wait = (self.redial_wait * 2).min(REDIAL);
        }
    }

    /// A connection opened: the next time the node has no peer, the redials back off anew.
    fn met_a_peer(&mut self) {
        self.redial_wait = FIRST_REDIAL;
    }

    /// A connection closed: if it was the node's last, the first redial waits [`FIRST_REDIAL`]
    /// from now (a peer restarting is back within seconds).
    fn lost_a_peer(&mut self, swarm: &NodeSwarm) {
        if alone(swarm) {
            self.redial_at = Instant::now() + self.redial_wait;
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
            SwarmEvent::ConnectionEstablished {
                connection_id,
                peer_id,
                ..
            } => {
                self.met_a_peer();
                self.dial_succeeded(connection_id, *peer_id);
            }
            SwarmEvent::ConnectionClosed { .. } => self.lost_a_peer(swarm),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => self.dial_failed(connection_id, error),
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

    /// A connection opened: if it was a bootstrap dial, the peer is reached.
    fn dial_succeeded(&mut self, connection: &ConnectionId, peer: PeerId) {
        if let Some(dial) = self.take_dial(connection) {
            dial.reached = Some(peer);
            dial.last_error = None;
            dial.answered_as = None;
            if std::mem::take(&mut dial.warned) {
                info!(addr = %dial, "reached the bootstrap peer");
            }
        }
    }

    /// A dial failed. A bootstrap peer that cannot be reached leaves the node alone in the
    /// network: say so once per peer (and again only after it was reached in between), and keep
    /// the reason for `status` and `doctor`.
    fn dial_failed(&mut self, connection: &ConnectionId, error: &DialError) {
        let Some(dial) = self.take_dial(connection) else {
            return;
        };
        let plain = dial_error_words(error);
        if !std::mem::replace(&mut dial.warned, true) {
            warn!(addr = %dial, error = %plain, "cannot reach the bootstrap peer; dialing it again while this node has no peer (after 1 s, doubling up to {} s)", REDIAL.as_secs());
        } else {
            debug!(addr = %dial, error = %plain, "cannot reach the bootstrap peer");
        }
        dial.last_error = Some(plain);
        dial.answered_as = match error {
            DialError::WrongPeerId { obtained, .. } => Some(*obtained),
            _ => None,
        };
    }

    /// The bootstrap dial that `connection` was, if it was one.
    fn take_dial(&mut self, connection: &ConnectionId) -> Option<&mut BootstrapDial> {
        let index = self.dialing.remove(connection)?;
        self.bootstrap.get_mut(index)
    }

    /// The configured bootstrap peers, each with whether a connection to it is open and why
    /// its last dial failed.
    pub(crate) fn bootstrap_peers(&self, swarm: &NodeSwarm) -> Vec<BootstrapPeer> {
        self.bootstrap
            .iter()
            .map(|dial| BootstrapPeer {
                addrs: dial.addrs.clone(),
                connected: dial
                    .peer
                    .or(dial.reached)
                    .is_some_and(|p| swarm.is_connected(&p)),
                last_error: dial.last_error.clone(),
                answered_as: dial.answered_as,
            })
            .collect()
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

/// Why a dial failed, in words a user can act on (shown after the addresses dialed): a wrong
/// peer id says which part of the address is wrong; other failures give each address's cause,
/// naming the address when several were tried.
fn dial_error_words(error: &DialError) -> String {
    match error {
        DialError::WrongPeerId { obtained, .. } => format!(
            "answers as another peer id ({obtained}): the /p2p/ part of the address is wrong or \
             the server's key changed"
        ),
        DialError::LocalPeerId { .. } => "answers as this node itself".to_owned(),
        DialError::Transport(errors) => {
            let mut causes: Vec<String> = Vec::new();
            for (addr, error) in errors {
                let cause = match error {
                    TransportError::MultiaddrNotSupported(_) => {
                        "this kind of address is not supported".to_owned()
                    }
                    TransportError::Other(error) => transport_cause(error),
                };
                causes.push(match errors.len() {
                    1 => cause,
                    _ => format!("{addr}: {cause}"),
                });
            }
            causes.join("; ")
        }
        other => crate::error::one_line(other),
    }
}

/// The innermost useful text of a transport error (libp2p wraps the socket's error in layers
/// that say nothing of their own, or repeat it).
fn transport_cause(error: &std::io::Error) -> String {
    let causes = crate::error::causes(error);
    causes
        .last()
        .cloned()
        .unwrap_or_else(|| error.kind().to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_failures_read_in_plain_words() {
        let addr: Multiaddr = "/ip4/198.51.100.7/tcp/4747".parse().unwrap();
        let other = PeerId::random();
        let wrong = DialError::WrongPeerId {
            obtained: other,
            address: addr.clone(),
        };
        assert_eq!(
            dial_error_words(&wrong),
            format!(
                "answers as another peer id ({other}): the /p2p/ part of the address is wrong \
                 or the server's key changed"
            )
        );
        let refused = || {
            TransportError::Other(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "Connection refused (os error 111)",
            ))
        };
        let one = DialError::Transport(vec![(addr.clone(), refused())]);
        assert_eq!(dial_error_words(&one), "Connection refused (os error 111)");
        let quic: Multiaddr = "/ip4/198.51.100.7/udp/4747/quic-v1".parse().unwrap();
        let two = DialError::Transport(vec![(addr.clone(), refused()), (quic.clone(), refused())]);
        assert_eq!(
            dial_error_words(&two),
            format!(
                "{addr}: Connection refused (os error 111); {quic}: Connection refused (os error \
                 111)"
            )
        );
    }

    #[test]
    fn a_bootstrap_peers_addresses_are_one_dial() {
        let one = "12D3KooWGmYqn1UUrhPPwRnXa5VTHLeE5ddjpeZw2pYCvsSrmvCA";
        let two = "12D3KooWBrbywv3zgSz9dB6vgr2wN1Kkqn4yExsUthnH73DAuwrD";
        let list: Vec<Multiaddr> = [
            format!("/ip4/198.51.100.7/tcp/4747/p2p/{one}"),
            "/dns4/intro.example.org/tcp/4747".to_owned(),
            format!("/ip4/198.51.100.9/udp/4747/quic-v1/p2p/{two}"),
            format!("/ip4/198.51.100.7/udp/4747/quic-v1/p2p/{one}"),
            "/dns4/intro.example.org/udp/4747/quic-v1".to_owned(),
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let dials = bootstrap_dials(&list);
        let shape: Vec<(Option<String>, Vec<&Multiaddr>)> = dials
            .iter()
            .map(|d| (d.peer.map(|p| p.to_string()), d.addrs.iter().collect()))
            .collect();
        assert_eq!(
            shape,
            [
                (Some(one.to_owned()), vec![&list[0], &list[3]]),
                (None, vec![&list[1]]),
                (Some(two.to_owned()), vec![&list[2]]),
                (None, vec![&list[4]]),
            ]
        );
        assert_eq!(dials[0].to_string(), format!("{}, {}", list[0], list[3]));
    }
}
