//! The rendezvous client: this node registers its external addresses at the rendezvous points
//! its bootstrap peers keep (renewed at half the lifetime), and discovers the other nodes
//! registered there: it dials a few that are reachable directly and remembers the addresses
//! of the rest for `connect`.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId, identify, rendezvous, swarm::SwarmEvent};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::p2p::{
    RendezvousStanding,
    addr::{is_relayed, peer_of, same_place},
    behaviour::{BehaviourEvent, NodeEvent, NodeSwarm},
};

/// The rendezvous namespace p2pdns nodes register under.
const NAMESPACE: &str = "p2pdns";
/// The lifetime a node asks for its registration, in seconds; it registers again at half of it.
const TTL: u64 = 7200;
/// The first wait before discovering again ([`RendezvousClient::due`] runs with the node's
/// periodic checks: every 10 s while connections come and go, every minute once settled).
const CHECK: Duration = Duration::from_secs(10);
/// A failed registration is retried after this long.
const RETRY: Duration = Duration::from_secs(300);
/// Other peers are discovered when the node registers, and again after [`CHECK`], then twice
/// as long each time up to this.
const DISCOVER_EVERY: Duration = Duration::from_secs(600);
/// Registrations asked for per discovery, and newly discovered peers dialed per discovery.
const DISCOVER_LIMIT: u64 = 64;
const DIALS: usize = 8;
/// Peers whose rendezvous addresses are remembered (for `connect`), at most, and addresses
/// kept per peer.
const PEERS: usize = 1024;
const ADDRS: usize = 8;

/// This node's standing at one rendezvous point.
#[derive(Debug, Default)]
struct RendezvousPoint {
    /// Registered until then (to be renewed at half its lifetime).
    registered_until: Option<Instant>,
    /// When to register next (None: now, as soon as the node has an external address).
    register_at: Option<Instant>,
    /// When to discover other peers next, and the wait after that (it doubles).
    discover_at: Option<Instant>,
    discover_every: Duration,
    /// The cookie from the last discovery: the next one returns only what is new.
    cookie: Option<rendezvous::Cookie>,
}

/// Registration and discovery at the bootstrap peers' rendezvous points.
pub(crate) struct RendezvousClient {
    /// Only bootstrap peers are asked.
    bootstrap: HashSet<PeerId>,
    /// Bootstrap peers that keep a rendezvous point, with what is due there.
    points: HashMap<PeerId, RendezvousPoint>,
    /// Addresses other peers registered at rendezvous points (for `connect`).
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
}

impl RendezvousClient {
    pub(crate) fn new(bootstrap: &[Multiaddr]) -> Self {
        Self {
            bootstrap: bootstrap.iter().filter_map(peer_of).collect(),
            points: HashMap::new(),
            addrs: HashMap::new(),
        }
    }

    /// Does any bootstrap peer keep a rendezvous point? Until one does, [`Self::due`] has
    /// nothing to do and its timer is not armed (an idle node must not wake up for it).
    pub(crate) fn has_points(&self) -> bool {
        !self.points.is_empty()
    }

    pub(crate) fn on_event(&mut self, swarm: &mut NodeSwarm, event: &NodeEvent) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let is_point = info.protocols.contains(&rendezvous::PROTOCOL_NAME);
                if is_point
                    && !self.points.contains_key(peer_id)
                    && self.bootstrap.contains(peer_id)
                {
                    self.points.insert(*peer_id, RendezvousPoint::default());
                    self.due(swarm);
                }
            }
            // A rendezvous point that went away may have lost the registration (a restart):
            // register and discover again once it is back.
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(point) = self.points.get_mut(peer_id) {
                    *point = RendezvousPoint::default();
                }
            }
            // Tell the rendezvous points the new addresses now: a relayed one as soon as a
            // relay grants the slot, and without one the node gave back (it would keep peers
            // from dialing it directly).
            SwarmEvent::ExternalAddrConfirmed { .. } | SwarmEvent::ExternalAddrExpired { .. } => {
                for point in self.points.values_mut() {
                    point.register_at = None;
                }
                self.due(swarm);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(event)) => {
                self.on_rendezvous(swarm, event);
            }
            _ => {}
        }
    }

    /// Registers where due (the node needs an external address for that: a confirmed one or a
    /// relayed one) and discovers other peers where due.
    pub(crate) fn due(&mut self, swarm: &mut NodeSwarm) {
        let now = Instant::now();
        let namespace = rendezvous::Namespace::from_static(NAMESPACE);
        let has_external = swarm.external_addresses().next().is_some();
        for (peer, point) in &mut self.points {
            if !swarm.is_connected(peer) {
                continue;
            }
            let register_due = point.register_at.is_none_or(|at| at <= now);
            if register_due && has_external {
                let client = &mut swarm.behaviour_mut().rendezvous;
                match client.register(namespace.clone(), *peer, Some(TTL)) {
                    Ok(()) => point.register_at = Some(now + RETRY),
                    Err(error) => debug!(%peer, %error, "cannot register at the rendezvous point"),
                }
            }
            if point.discover_at.is_none_or(|at| at <= now) {
                // Soon again at first (others are joining too), then less and less often.
                point.discover_every = (point.discover_every * 2).clamp(CHECK, DISCOVER_EVERY);
                point.discover_at = Some(now + point.discover_every);
                swarm.behaviour_mut().rendezvous.discover(
                    Some(namespace.clone()),
                    point.cookie.clone(),
                    Some(DISCOVER_LIMIT),
                    *peer,
                );
            }
        }
    }

    fn on_rendezvous(&mut self, swarm: &mut NodeSwarm, event: &rendezvous::client::Event) {
        use rendezvous::client::Event;
        match event {
            Event::Registered {
                rendezvous_node,
                ttl,
                ..
            } => self.registered(swarm, *rendezvous_node, *ttl),
            Event::RegisterFailed {
                rendezvous_node,
                error,
                ..
            } => {
                warn!(point = %rendezvous_node, ?error, "rendezvous point refused the registration");
                if let Some(point) = self.points.get_mut(rendezvous_node) {
                    point.register_at = Some(Instant::now() + RETRY);
                }
            }
            Event::Discovered {
                rendezvous_node,
                registrations,
                cookie,
            } => {
                if let Some(point) = self.points.get_mut(rendezvous_node) {
                    point.cookie = Some(cookie.clone());
                }
                self.discovered(swarm, *rendezvous_node, registrations);
            }
            Event::DiscoverFailed {
                rendezvous_node,
                error,
                ..
            } => debug!(point = %rendezvous_node, ?error, "rendezvous discovery failed"),
            Event::Expired { peer } => {
                self.addrs.remove(peer);
            }
        }
    }

    fn registered(&mut self, swarm: &mut NodeSwarm, node: PeerId, ttl: u64) {
        let Some(point) = self.points.get_mut(&node) else {
            return;
        };
        let now = Instant::now();
        let first = point.registered_until.is_none();
        point.registered_until = Some(now + Duration::from_secs(ttl));
        point.register_at = Some(now + Duration::from_secs(ttl / 2));
        if first {
            info!(point = %node, ttl, "registered at the rendezvous point");
            // Those who came before are there now: look.
            point.discover_at = None;
            self.due(swarm);
        }
    }

    /// Dials a few of the peers found that are reachable directly (no relayed address:
    /// relaying would spend the relay's circuits, and a node behind NAT would not answer), and
    /// remembers every peer's addresses.
    fn discovered(
        &mut self,
        swarm: &mut NodeSwarm,
        node: PeerId,
        registrations: &[rendezvous::Registration],
    ) {
        let me = *swarm.local_peer_id();
        let mut dials = 0;
        for registration in registrations {
            let peer = registration.record.peer_id();
            if peer == me {
                continue;
            }
            let addrs: Vec<Multiaddr> = registration
                .record
                .addresses()
                .iter()
                .take(ADDRS)
                .cloned()
                .collect();
            let reachable = !addrs.iter().any(is_relayed);
            if reachable && !swarm.is_connected(&peer) && dials < DIALS {
                dials += 1;
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addrs.clone())
                    .build();
                let _ = swarm.dial(opts);
            }
            if self.addrs.len() < PEERS || self.addrs.contains_key(&peer) {
                self.addrs.insert(peer, addrs);
            }
        }
        debug!(point = %node, dials, known = self.addrs.len(), "rendezvous discovery");
    }

    /// The addresses `peer` registered at a rendezvous point, if any.
    pub(crate) fn addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.addrs.get(peer).cloned().unwrap_or_default()
    }

    /// Another node answered at `addr` when `peer` was dialed there: the addresses `peer`
    /// registered once that lead to the same place are no longer its own, and are not dialed
    /// again for it.
    pub(crate) fn forget_addr(&mut self, peer: &PeerId, addr: &Multiaddr) {
        if let Some(addrs) = self.addrs.get_mut(peer) {
            addrs.retain(|a| !same_place(a, addr, *peer));
        }
    }

    /// This node's standing at each rendezvous point, as `status` shows it.
    pub(crate) fn standings(&self) -> Vec<RendezvousStanding> {
        let now = Instant::now();
        self.points
            .iter()
            .map(|(peer, point)| RendezvousStanding {
                point: *peer,
                registered: point.registered_until.is_some_and(|until| until > now),
            })
            .collect()
    }

    /// Peers learned from rendezvous points.
    pub(crate) fn peers_known(&self) -> usize {
        self.addrs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::addr::with_peer;

    #[test]
    fn an_address_where_another_node_answered_is_not_dialed_again() {
        let peer = PeerId::random();
        let relay = PeerId::random();
        let old: Multiaddr = "/ip4/198.18.0.11/udp/4747/quic-v1".parse().unwrap();
        let relayed: Multiaddr = format!("/ip4/198.18.0.2/tcp/4747/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap();
        let old_tcp: Multiaddr = "/ip4/198.18.0.11/tcp/4747".parse().unwrap();
        let other_port: Multiaddr = "/ip4/198.18.0.11/tcp/4748".parse().unwrap();
        let mut client = RendezvousClient::new(&[]);
        let all = vec![old.clone(), old_tcp, other_port.clone(), relayed.clone()];
        client.addrs.insert(peer, all.clone());
        // Another peer's failure at the same address leaves this one's alone.
        client.forget_addr(&PeerId::random(), &old);
        assert_eq!(client.addrs_of(&peer), all);
        // libp2p names the address it dialed with the peer's id appended; the TCP address on
        // the same IP and port goes too, another port stays.
        client.forget_addr(&peer, &with_peer(&old, peer));
        assert_eq!(client.addrs_of(&peer), vec![other_port, relayed]);
    }
}
