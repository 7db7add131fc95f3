//! Whether peers can dial this node, and what it does when they cannot: AutoNAT's verdict (with
//! "public" trusted only when it can be), the Kademlia mode that follows from it, relay
//! reservations on the bootstrap peers, and the external addresses it knows (configured, UPnP
//! mappings, relayed, observed, and what the STUN probe saw).
//!
//! A node takes a relay slot as soon as it meets a bootstrap peer that relays (identify lists
//! the circuit relay HOP protocol), before AutoNAT has judged it: the verdict takes seconds
//! (behind a NAT the probe waits for the dial-back to time out), and until it comes a node
//! behind NAT could not be reached at all. It gives the slots back once it is known to be
//! reachable directly (AutoNAT dialed it at an address of its own, or a UPnP gateway mapped
//! its port), and skips them from the start when the operator configured its addresses.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, autonat, core::transport::ListenerId, identify, kad, multiaddr::Protocol,
    relay, swarm::SwarmEvent, upnp,
};
use tracing::{debug, info, warn};

use crate::{
    config::{DhtMode, P2pConfig},
    nat::stun_probe::{StunReport, StunView},
    p2p::{
        AddressSource, ExternalAddr, Reachability,
        addr::{is_own_address, is_quic, is_relayed, peer_of},
        behaviour::{BehaviourEvent, NodeEvent, NodeSwarm},
    },
};

/// How often a node behind NAT checks that it still holds a relay reservation while it has
/// none, or connections come and go (once settled, every minute: the event loop's
/// `SETTLED_CHECK`).
pub(crate) const RELAY_CHECK: Duration = Duration::from_secs(10);

/// One relay listener: a reservation asked of a relay, then held.
struct RelaySlot {
    relay: PeerId,
    /// The relay granted it (its renewals keep it so).
    held: bool,
}

/// The node's standing behind (or outside) a NAT, and the policy that follows from it.
pub(crate) struct NatTraversal {
    dht_mode: DhtMode,
    /// `p2p.external_addresses`: the operator vouches for them.
    configured: Vec<Multiaddr>,
    /// One address per bootstrap peer that names its peer id: the relays to ask.
    relays: Vec<Multiaddr>,
    /// Those of them whose identify lists the HOP protocol: they grant slots (a relay lists it
    /// only once it knows its own public address).
    hop_relays: HashSet<PeerId>,
    /// External addresses mapped on a UPnP gateway.
    upnp_addrs: HashSet<Multiaddr>,
    /// Open relay listeners (a reservation asked for or held).
    relay_slots: HashMap<ListenerId, RelaySlot>,
    /// What the STUN probe learned last (its task owns it), and a way to ask it again.
    stun: StunView,
}

impl NatTraversal {
    pub(crate) fn new(config: &P2pConfig, stun: StunView) -> Self {
        Self {
            dht_mode: config.dht_mode,
            configured: config.external_addresses.clone(),
            relays: relay_candidates(&config.bootstrap)
                .into_iter()
                .cloned()
                .collect(),
            hop_relays: HashSet::new(),
            upnp_addrs: HashSet::new(),
            relay_slots: HashMap::new(),
            stun,
        }
    }

    pub(crate) fn on_event(&mut self, swarm: &mut NodeSwarm, event: &NodeEvent) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.reachability_changed(swarm, new.clone()),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identify(swarm, *peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                },
            )) => self.reservation_accepted(swarm, *relay_peer_id, *renewal),
            SwarmEvent::Behaviour(BehaviourEvent::Upnp(event)) => self.on_upnp(swarm, event),
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed");
            }
            // A relay restarted or refused: ask it again at the next check.
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.relay_slots.remove(listener_id);
            }
            _ => {}
        }
    }

    /// A bootstrap peer told what it runs: one that relays is asked for a slot at once, if the
    /// node wants one. Where it saw the node come from another public address than STUN found,
    /// the STUN probe runs again (only bootstrap peers are believed: any peer could claim one).
    fn on_identify(&mut self, swarm: &mut NodeSwarm, peer: PeerId, info: &identify::Info) {
        if !self.relays.iter().any(|r| peer_of(r) == Some(peer)) {
            return;
        }
        if self
            .stun
            .recheck_if_outdated(&info.observed_addr, swarm.listeners())
        {
            info!(%peer, observed = %info.observed_addr, "the public address changed: asking STUN again");
        }
        if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            self.hop_relays.insert(peer);
            self.update_relays(swarm, true);
        } else {
            self.hop_relays.remove(&peer);
        }
    }

    fn reservation_accepted(&mut self, swarm: &mut NodeSwarm, relay: PeerId, renewal: bool) {
        if renewal {
            debug!(%relay, "relay reservation renewed");
        } else {
            info!(
                %relay,
                reachability = %self.reachability(swarm),
                "relay reservation accepted: reachable through it"
            );
        }
        for slot in self.relay_slots.values_mut().filter(|s| s.relay == relay) {
            slot.held = true;
        }
        // A slot that became needless while it was asked for goes back now that it is held.
        if !self.wants_relay_slots(swarm) {
            self.release_relays(swarm);
        }
    }

    fn on_upnp(&mut self, swarm: &mut NodeSwarm, event: &upnp::Event) {
        match event {
            upnp::Event::NewExternalAddr { external_addr, .. } => {
                info!(address = %external_addr, "UPnP gateway mapped a port");
                self.upnp_addrs.insert(external_addr.clone());
                // A forwarded port lets anyone in: AutoNAT's earlier "public" now holds.
                let status = swarm.behaviour().autonat.nat_status();
                if matches!(status, autonat::NatStatus::Public(_)) {
                    self.reachability_changed(swarm, status);
                } else {
                    self.update_relays(swarm, true);
                }
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                info!(address = %external_addr, "UPnP port mapping expired");
                self.upnp_addrs.remove(external_addr);
                self.update_relays(swarm, true);
            }
            upnp::Event::GatewayNotFound => debug!("no UPnP gateway"),
            upnp::Event::NonRoutableGateway => {
                debug!("the UPnP gateway is not on the public internet; no mapping")
            }
        }
    }

    /// The periodic check: a relay that restarted or went away lost the reservation; ask
    /// again.
    pub(crate) fn check_relays(&mut self, swarm: &mut NodeSwarm) {
        self.update_relays(swarm, false);
    }

    /// Is there nothing for the periodic check to do about relay slots: every relay that
    /// grants slots holds one for this node where it wants them, none is held or asked for where
    /// it does not?
    pub(crate) fn relays_settled(&self, swarm: &NodeSwarm) -> bool {
        if self.wants_relay_slots(swarm) {
            self.hop_relays.iter().all(|relay| {
                self.relay_slots
                    .values()
                    .any(|slot| slot.relay == *relay && slot.held)
            })
        } else {
            self.relay_slots.is_empty()
        }
    }

    /// Did AutoNAT reach the node at an address that is not its own (and is neither a UPnP
    /// mapping nor configured)? It then sits behind a NAT that let the prober in, which may
    /// filter strangers.
    fn behind_nat(&self, status: &autonat::NatStatus, swarm: &NodeSwarm) -> bool {
        match status {
            autonat::NatStatus::Public(addr) => {
                !self.vouched_for() && !is_own_address(addr, swarm.listeners())
            }
            _ => false,
        }
    }

    /// Does the node know how peers reach it without AutoNAT: a UPnP mapping, or addresses the
    /// operator configured?
    fn vouched_for(&self) -> bool {
        !self.configured.is_empty() || !self.upnp_addrs.is_empty()
    }

    /// AutoNAT's verdict: the relay slots and the Kademlia mode follow ([`wants_relay_slots`],
    /// [`dht_mode`]).
    ///
    /// "Public" is trusted only when the confirmed address is the node's own (no NAT), a UPnP
    /// mapping, or the operator configured external addresses. Behind a NAT, a prober is always
    /// a peer the node has already sent to, so an address-restricted NAT lets it in and keeps
    /// strangers out: such a node still takes relay slots and stays a DHT client.
    fn reachability_changed(&mut self, swarm: &mut NodeSwarm, status: autonat::NatStatus) {
        if self.behind_nat(&status, swarm) {
            info!(
                ?status,
                "reachable behind NAT, but only proven from a peer this node contacted; \
                 keeping a relay slot"
            );
        } else {
            info!(?status, "reachability");
        }
        self.update_relays(swarm, true);
    }

    /// Whether the node wants relay slots now (see [`wants_relay_slots`]); never when the DHT
    /// mode is set by hand.
    fn wants_relay_slots(&self, swarm: &NodeSwarm) -> bool {
        let status = swarm.behaviour().autonat.nat_status();
        self.dht_mode == DhtMode::Auto
            && wants_relay_slots(&status, self.behind_nat(&status, swarm), self.vouched_for())
    }

    /// Asks the relays for slots where none is held or asked for, or gives them back, as the
    /// node's standing wants.
    fn update_relays(&mut self, swarm: &mut NodeSwarm, first: bool) {
        if self.wants_relay_slots(swarm) {
            self.reserve_relays(swarm, first);
        } else {
            self.release_relays(swarm);
        }
        self.follow_dht_mode(swarm);
    }

    /// Sets the Kademlia mode that follows from how peers reach the node ([`dht_mode`]),
    /// unless the mode is set by hand.
    fn follow_dht_mode(&self, swarm: &mut NodeSwarm) {
        if self.dht_mode != DhtMode::Auto {
            return;
        }
        let status = swarm.behaviour().autonat.nat_status();
        let behind_nat = self.behind_nat(&status, swarm);
        let relayed = !self.relay_slots.is_empty();
        if let Some(mode) = dht_mode(&status, behind_nat, self.vouched_for(), relayed)
            && mode != swarm.behaviour().kad.mode()
        {
            swarm.behaviour_mut().kad.set_mode(Some(mode));
        }
    }

    /// Asks each relay that offers slots for one (listening on `<relay>/p2p-circuit`), only
    /// where no request or reservation is alive: the relayed address lets others reach this
    /// node behind NAT.
    fn reserve_relays(&mut self, swarm: &mut NodeSwarm, first: bool) {
        let reachability = self.reachability(swarm);
        for relay in &self.relays {
            let Some(peer) = peer_of(relay) else {
                continue;
            };
            if !self.hop_relays.contains(&peer)
                || self.relay_slots.values().any(|s| s.relay == peer)
            {
                continue;
            }
            match swarm.listen_on(relay.clone().with(Protocol::P2pCircuit)) {
                Ok(id) => {
                    let slot = RelaySlot {
                        relay: peer,
                        held: false,
                    };
                    self.relay_slots.insert(id, slot);
                    if first {
                        info!(%relay, %reachability, "asking for a relay reservation");
                    } else {
                        debug!(%relay, %reachability, "asking for a relay reservation again");
                    }
                }
                Err(error) => warn!(%relay, %error, "cannot ask for a relay reservation"),
            }
        }
    }

    /// Gives back each slot a relay granted: closing its listener withdraws the relayed address
    /// and ends the renewals (the relay frees the slot when it expires). A slot still being
    /// asked for is given back once granted ([`NatTraversal::reservation_accepted`]):
    /// libp2p-relay 0.22 panics when a reservation is granted for a listener already closed.
    /// (A renewal under way has the same hazard; it lasts one round trip in the last quarter
    /// of the reservation's life, and cannot be seen from here.)
    fn release_relays(&mut self, swarm: &mut NodeSwarm) {
        self.relay_slots.retain(|&id, slot| {
            if !slot.held {
                return true;
            }
            info!(relay = %slot.relay, "reachable directly: giving the relay slot back");
            swarm.remove_listener(id);
            false
        });
    }

    /// AutoNAT's verdict as `status` shows it.
    pub(crate) fn reachability(&self, swarm: &NodeSwarm) -> Reachability {
        match swarm.behaviour().autonat.nat_status() {
            status @ autonat::NatStatus::Public(_) if self.behind_nat(&status, swarm) => {
                Reachability::PublicBehindNat
            }
            autonat::NatStatus::Public(_) => Reachability::Public,
            autonat::NatStatus::Private => Reachability::Private,
            autonat::NatStatus::Unknown => Reachability::Unknown,
        }
    }

    /// The swarm's external addresses with how each was learned, then the STUN probe's.
    pub(crate) fn external_addrs(&self, swarm: &NodeSwarm) -> Vec<ExternalAddr> {
        let mut addrs: Vec<ExternalAddr> = swarm
            .external_addresses()
            .map(|addr| {
                let source = if self.configured.contains(addr) {
                    AddressSource::Configured
                } else if self.upnp_addrs.contains(addr) {
                    AddressSource::UpnpMapping
                } else if is_relayed(addr) {
                    AddressSource::RelayReservation
                } else {
                    AddressSource::Observed
                };
                ExternalAddr {
                    addr: addr.clone(),
                    source,
                }
            })
            .collect();
        addrs.extend(self.stun.latest().as_ref().and_then(StunReport::external));
        addrs
    }
}

/// Does a node want relay slots, given AutoNAT's verdict `status`, whether that verdict was
/// proven only from behind a NAT (`behind_nat`), and whether the node is `vouched_for` (UPnP
/// mapping, configured addresses)? Until the verdict, yes unless vouched for: behind a NAT the
/// node is unreachable without one, and a public node only holds a slot for the seconds the
/// verdict takes. "Private" wants them even with a UPnP mapping (the mapping does not work);
/// "public" only when proven from behind a NAT.
fn wants_relay_slots(status: &autonat::NatStatus, behind_nat: bool, vouched_for: bool) -> bool {
    match status {
        autonat::NatStatus::Unknown => !vouched_for,
        autonat::NatStatus::Private => true,
        autonat::NatStatus::Public(_) => behind_nat,
    }
}

/// The bootstrap peers that name their peer id, one address each (QUIC first: hole punching
/// works best over it).
fn relay_candidates(bootstrap: &[Multiaddr]) -> Vec<&Multiaddr> {
    let mut chosen: Vec<&Multiaddr> = Vec::new();
    for addr in bootstrap.iter().filter(|a| peer_of(a).is_some()) {
        match chosen.iter_mut().find(|c| peer_of(c) == peer_of(addr)) {
            Some(c) if is_quic(addr) && !is_quic(c) => *c = addr,
            Some(_) => {}
            None => chosen.push(addr),
        }
    }
    chosen
}

/// The Kademlia mode for a node whose standing is `status` (`behind_nat`, `vouched_for` as
/// in [`wants_relay_slots`]) and that holds or asks for relay slots (`relayed`), or `None` to
/// keep the mode it has. A server only when peers can dial it directly; a client when they
/// reach it only through a relay, since a relayed address never makes a node a DHT server
/// (peers that learned it would spend the relay's short circuits on DHT requests). Unjudged
/// and without relay slots, it keeps the server mode it starts in: LAN peers reach each other
/// directly.
fn dht_mode(
    status: &autonat::NatStatus,
    behind_nat: bool,
    vouched_for: bool,
    relayed: bool,
) -> Option<kad::Mode> {
    match status {
        autonat::NatStatus::Public(_) if !behind_nat => Some(kad::Mode::Server),
        autonat::NatStatus::Public(_) | autonat::NatStatus::Private => Some(kad::Mode::Client),
        autonat::NatStatus::Unknown if vouched_for => Some(kad::Mode::Server),
        autonat::NatStatus::Unknown if relayed => Some(kad::Mode::Client),
        autonat::NatStatus::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_relay_address_per_peer_with_quic_preferred() {
        let a = PeerId::random();
        let b = PeerId::random();
        let addrs: Vec<Multiaddr> = [
            format!("/ip4/198.18.0.2/tcp/4747/p2p/{a}"),
            format!("/ip4/198.18.0.2/udp/4747/quic-v1/p2p/{a}"),
            "/ip4/198.18.0.9/tcp/4747".to_owned(),
            format!("/ip4/198.18.0.3/tcp/4747/p2p/{b}"),
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let chosen: Vec<String> = relay_candidates(&addrs)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            chosen,
            [
                format!("/ip4/198.18.0.2/udp/4747/quic-v1/p2p/{a}"),
                format!("/ip4/198.18.0.3/tcp/4747/p2p/{b}"),
            ]
        );
    }

    #[test]
    fn relay_slots_are_wanted_until_the_node_is_known_to_be_reachable_directly() {
        use autonat::NatStatus::{Private, Public, Unknown};
        let public = Public("/ip4/198.18.1.1/tcp/4747".parse().unwrap());
        // (verdict, proven only from behind a NAT, UPnP mapping or configured, slots wanted)
        for (status, behind_nat, vouched_for, wanted) in [
            (&Unknown, false, false, true),
            (&Unknown, false, true, false),
            (&Private, false, false, true),
            (&Private, false, true, true),
            (&public, true, false, true),
            (&public, false, false, false),
            (&public, false, true, false),
        ] {
            assert_eq!(
                wants_relay_slots(status, behind_nat, vouched_for),
                wanted,
                "{status:?}, behind NAT: {behind_nat}, vouched for: {vouched_for}"
            );
        }
    }

    #[test]
    fn a_node_serves_the_dht_only_where_peers_dial_it_directly() {
        use autonat::NatStatus::{Private, Public, Unknown};
        use kad::Mode::{Client, Server};
        let public = Public("/ip4/198.18.1.1/tcp/4747".parse().unwrap());
        // (verdict, behind NAT, UPnP mapping or configured, relay slots, mode)
        for (status, behind_nat, vouched_for, relayed, mode) in [
            (&Unknown, false, false, false, None),
            (&Unknown, false, false, true, Some(Client)),
            (&Unknown, false, true, false, Some(Server)),
            (&Private, false, false, true, Some(Client)),
            (&Private, false, true, true, Some(Client)),
            (&public, true, false, true, Some(Client)),
            (&public, false, false, true, Some(Server)),
            (&public, false, true, false, Some(Server)),
        ] {
            assert_eq!(
                dht_mode(status, behind_nat, vouched_for, relayed),
                mode,
                "{status:?}, behind NAT: {behind_nat}, vouched for: {vouched_for}, \
                 relayed: {relayed}"
            );
        }
    }
}
