//! Whether peers can dial this node, and what it does when they cannot: AutoNAT's verdict (with
//! "public" trusted only when it can be), the Kademlia mode that follows from it, relay
//! reservations on the bootstrap peers for a node behind NAT, and the external addresses it
//! knows (configured, UPnP mappings, relayed, observed, and what the STUN probe saw).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, autonat, core::transport::ListenerId, kad, multiaddr::Protocol, relay,
    swarm::SwarmEvent, upnp,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    config::{DhtMode, P2pConfig},
    nat::stun_probe::StunReport,
    p2p::{
        AddressSource, ExternalAddr, Reachability,
        addr::{is_own_address, is_quic, is_relayed, peer_of},
        behaviour::{BehaviourEvent, NodeEvent, NodeSwarm},
    },
};

/// How often a node behind NAT checks that it still holds a relay reservation.
pub(crate) const RELAY_CHECK: Duration = Duration::from_secs(10);

/// The node's standing behind (or outside) a NAT, and the policy that follows from it.
pub(crate) struct NatTraversal {
    dht_mode: DhtMode,
    /// `p2p.external_addresses`: the operator vouches for them.
    configured: Vec<Multiaddr>,
    /// One address per bootstrap peer that names its peer id: the relays to ask.
    relays: Vec<Multiaddr>,
    /// External addresses mapped on a UPnP gateway.
    upnp_addrs: HashSet<Multiaddr>,
    /// Relay slots were asked for (the node found it is not reachable).
    reserving: bool,
    /// Open relay listeners (a reservation asked for or held), by the relay they are on.
    relay_listeners: HashMap<ListenerId, PeerId>,
    /// What the STUN probe learned last (its task owns the sender).
    stun: watch::Receiver<Option<StunReport>>,
}

impl NatTraversal {
    pub(crate) fn new(config: &P2pConfig, stun: watch::Receiver<Option<StunReport>>) -> Self {
        Self {
            dht_mode: config.dht_mode,
            configured: config.external_addresses.clone(),
            relays: relay_candidates(&config.bootstrap)
                .into_iter()
                .cloned()
                .collect(),
            upnp_addrs: HashSet::new(),
            reserving: false,
            relay_listeners: HashMap::new(),
            stun,
        }
    }

    pub(crate) fn on_event(&mut self, swarm: &mut NodeSwarm, event: &NodeEvent) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.reachability_changed(swarm, new.clone()),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                info!(relay = %relay_peer_id, "relay reservation accepted: reachable through it");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Upnp(event)) => self.on_upnp(swarm, event),
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed");
            }
            // A relay restarted or refused: ask it again at the next check.
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.relay_listeners.remove(listener_id);
            }
            _ => {}
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
                }
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                info!(address = %external_addr, "UPnP port mapping expired");
                self.upnp_addrs.remove(external_addr);
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
        if self.reserving {
            self.reserve_relays(swarm, false);
        }
    }

    /// Did AutoNAT reach the node at an address that is not its own (and is neither a UPnP
    /// mapping nor configured)? It then sits behind a NAT that let the prober in, which may
    /// filter strangers.
    fn behind_nat(&self, status: &autonat::NatStatus, swarm: &NodeSwarm) -> bool {
        match status {
            autonat::NatStatus::Public(addr) => {
                self.configured.is_empty()
                    && self.upnp_addrs.is_empty()
                    && !is_own_address(addr, swarm.listeners())
            }
            _ => false,
        }
    }

    /// AutoNAT's verdict: a reachable node serves the DHT, an unreachable one only asks (others
    /// could not dial it) and takes relay slots so that it can still be reached. A relayed
    /// address never makes a node a DHT server.
    ///
    /// "Public" is trusted only when the confirmed address is the node's own (no NAT), a UPnP
    /// mapping, or the operator configured external addresses. Behind a NAT, a prober is always
    /// a peer the node has already sent to, so an address-restricted NAT lets it in and keeps
    /// strangers out: such a node still takes relay slots and stays a DHT client.
    fn reachability_changed(&mut self, swarm: &mut NodeSwarm, status: autonat::NatStatus) {
        let behind_nat = self.behind_nat(&status, swarm);
        if behind_nat {
            info!(
                ?status,
                "reachable behind NAT, but only proven from a peer this node contacted; \
                 keeping a relay slot"
            );
        } else {
            info!(?status, "reachability");
        }
        if self.dht_mode != DhtMode::Auto {
            return;
        }
        match status {
            autonat::NatStatus::Public(_) if !behind_nat => {
                swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
                // Reachable now: no new relay slots (those held expire on their own).
                self.reserving = false;
            }
            autonat::NatStatus::Public(_) | autonat::NatStatus::Private => {
                swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Client));
                if !self.reserving {
                    self.reserving = true;
                    self.reserve_relays(swarm, true);
                }
            }
            autonat::NatStatus::Unknown => {}
        }
    }

    /// Asks each relay for a slot (listening on `<relay>/p2p-circuit`), only where no request
    /// or reservation is alive: the relayed address lets others reach this node behind NAT.
    fn reserve_relays(&mut self, swarm: &mut NodeSwarm, first: bool) {
        for relay in &self.relays {
            let Some(peer) = peer_of(relay) else {
                continue;
            };
            if self.relay_listeners.values().any(|p| *p == peer) {
                continue;
            }
            match swarm.listen_on(relay.clone().with(Protocol::P2pCircuit)) {
                Ok(id) => {
                    self.relay_listeners.insert(id, peer);
                    if first {
                        info!(%relay, "asking for a relay reservation");
                    } else {
                        debug!(%relay, "asking for a relay reservation again");
                    }
                }
                Err(error) => warn!(%relay, %error, "cannot ask for a relay reservation"),
            }
        }
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
        addrs.extend(self.stun.borrow().as_ref().and_then(StunReport::external));
        addrs
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
}
