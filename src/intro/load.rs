//! What an introduction server holds for others (relay reservations and circuits, rendezvous
//! registrations) and what it refused, summarized in the log now and then.

use std::{collections::HashMap, time::Duration};

use libp2p::{PeerId, relay, rendezvous, swarm::SwarmEvent};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::p2p::behaviour::{BehaviourEvent, NodeEvent};

/// How often an introduction server logs what it holds (when that changed).
const SUMMARY_EVERY: Duration = Duration::from_secs(600);

/// What an introduction server holds for others, for its periodic summary.
#[derive(Debug, Default)]
pub(crate) struct IntroLoad {
    /// Reservations per peer. libp2p reports a "reservation closed" for every closed connection
    /// of a peer, reserved or not, so a count never goes below zero and may run low for a peer
    /// that holds a reservation and also opens other connections.
    reservations: HashMap<PeerId, usize>,
    circuits: usize,
    /// Rendezvous registrations by peer and namespace, with when each expires.
    registrations: HashMap<(PeerId, String), Instant>,
    /// Requests refused since the last summary.
    refused_reservations: usize,
    refused_circuits: usize,
    refused_registrations: usize,
    /// Relayed connections asked since the last summary for peers that hold no reservation
    /// here: not a refusal of this server's (no limit, no bad request), the peer is offline or
    /// moved to another relay.
    circuits_to_absent: usize,
    /// Something changed since the last summary.
    changed: bool,
    last_summary: Option<Instant>,
}

impl IntroLoad {
    /// Follows what is held; returns whether `event` was the relay's or the rendezvous
    /// point's (what [`IntroLoad::held`] says may have changed).
    pub(crate) fn on_event(&mut self, event: &NodeEvent) -> bool {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(event)) => self.relay(event),
            SwarmEvent::Behaviour(BehaviourEvent::RendezvousServer(event)) => {
                self.rendezvous(event)
            }
            _ => return false,
        }
        true
    }

    /// Relay reservations, relayed connections and rendezvous registrations held now (a
    /// registration that lapsed unreported counts until the next summary).
    pub(crate) fn held(&self) -> (usize, usize, usize) {
        let reservations = self.reservations.values().sum();
        (reservations, self.circuits, self.registrations.len())
    }

    fn relay(&mut self, event: &relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => *self.reservations.entry(*src_peer_id).or_default() += 1,
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                match self.reservations.get_mut(src_peer_id) {
                    Some(1) => {
                        self.reservations.remove(src_peer_id);
                    }
                    Some(n) => *n -= 1,
                    None => return,
                }
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                debug!(peer = %src_peer_id, ?status, "relay reservation refused");
                self.refused_reservations += 1;
            }
            relay::Event::CircuitReqAccepted { .. } => self.circuits += 1,
            relay::Event::CircuitClosed { .. } => self.circuits = self.circuits.saturating_sub(1),
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status: relay::StatusCode::NoReservation,
            } => {
                debug!(src = %src_peer_id, dst = %dst_peer_id, "relayed connection asked for a peer with no reservation here (offline or moved)");
                self.circuits_to_absent += 1;
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                debug!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay circuit refused");
                self.refused_circuits += 1;
            }
            _ => return,
        }
        self.changed = true;
    }

    fn rendezvous(&mut self, event: &rendezvous::server::Event) {
        use rendezvous::server::Event;
        let now = Instant::now();
        match event {
            Event::PeerRegistered { peer, registration } => {
                let expires = now + Duration::from_secs(registration.ttl);
                self.registrations
                    .insert((*peer, registration.namespace.to_string()), expires);
            }
            Event::PeerNotRegistered {
                peer,
                namespace,
                error,
            } => {
                debug!(%peer, %namespace, ?error, "rendezvous registration refused");
                self.refused_registrations += 1;
            }
            Event::PeerUnregistered { peer, namespace } => {
                self.registrations.remove(&(*peer, namespace.to_string()));
            }
            // A registration renewed since has a later expiry: only a lapsed one goes.
            Event::RegistrationExpired(registration) => {
                let key = (
                    registration.record.peer_id(),
                    registration.namespace.to_string(),
                );
                if self.registrations.get(&key).is_some_and(|at| *at <= now) {
                    self.registrations.remove(&key);
                }
            }
            _ => return,
        }
        self.changed = true;
    }

    /// Logs what is held, at most every [`SUMMARY_EVERY`] and only after a change; refusals
    /// (limits reached) are a warning, relayed connections asked for peers not here are not.
    pub(crate) fn summarize(&mut self, connections: usize) {
        let now = Instant::now();
        if !self.changed || self.last_summary.is_some_and(|at| now - at < SUMMARY_EVERY) {
            return;
        }
        self.registrations.retain(|_, expires| *expires > now);
        let refused =
            self.refused_reservations + self.refused_circuits + self.refused_registrations;
        if refused > 0 {
            warn!(
                reservations = self.refused_reservations,
                circuits = self.refused_circuits,
                registrations = self.refused_registrations,
                "introduction server refused requests (limits reached or bad requests); \
                 the limits are in [intro] and [p2p] of the configuration"
            );
        }
        if self.circuits_to_absent > 0 {
            info!(
                "relayed connections asked for peers with no reservation here (offline or \
                 moved): {}",
                self.circuits_to_absent
            );
        }
        info!(
            reservations = self.reservations.values().sum::<usize>(),
            circuits = self.circuits,
            registrations = self.registrations.len(),
            connections,
            "introduction server load"
        );
        self.refused_reservations = 0;
        self.refused_circuits = 0;
        self.refused_registrations = 0;
        self.circuits_to_absent = 0;
        self.changed = false;
        self.last_summary = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_limit::LogLines;

    /// A relayed connection asked for a peer that holds no reservation here is no refusal of
    /// the server's: before, the summary warned "limits reached or bad requests" for it.
    #[test]
    fn circuits_asked_for_absent_peers_are_told_apart_from_refusals() {
        let log = LogLines::count();
        let mut load = IntroLoad::default();
        let denied = |status| relay::Event::CircuitReqDenied {
            src_peer_id: PeerId::random(),
            dst_peer_id: PeerId::random(),
            status,
        };
        load.relay(&denied(relay::StatusCode::NoReservation));
        load.relay(&denied(relay::StatusCode::NoReservation));
        assert_eq!((load.refused_circuits, load.circuits_to_absent), (0, 2));
        load.summarize(3);
        assert_eq!(log.warnings(), 0, "no warning for peers that are not here");
        assert_eq!(log.lines(), 2, "the absent peers' line and the load's");

        let mut load = IntroLoad::default();
        load.relay(&denied(relay::StatusCode::ResourceLimitExceeded));
        assert_eq!((load.refused_circuits, load.circuits_to_absent), (1, 0));
        load.summarize(3);
        assert_eq!(log.warnings(), 1, "a limit reached is a warning");
    }

    #[test]
    fn intro_load_counts_reservations_and_registrations_that_are_held() {
        let mut load = IntroLoad::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let accepted = |peer, renewed| relay::Event::ReservationReqAccepted {
            src_peer_id: peer,
            renewed,
        };
        load.relay(&accepted(a, false));
        load.relay(&accepted(a, false));
        load.relay(&accepted(a, true));
        assert_eq!(load.reservations.values().sum::<usize>(), 2);
        // libp2p reports a closed reservation for every closed connection: one of a peer that
        // never reserved changes nothing.
        load.changed = false;
        load.relay(&relay::Event::ReservationClosed { src_peer_id: b });
        assert!(!load.changed);
        load.relay(&relay::Event::ReservationTimedOut { src_peer_id: a });
        load.relay(&relay::Event::ReservationClosed { src_peer_id: a });
        load.relay(&relay::Event::ReservationClosed { src_peer_id: a });
        assert!(load.reservations.is_empty());
        assert!(load.changed);

        // A renewed registration outlives the expiry of the one it replaced.
        let key = libp2p::identity::Keypair::generate_ed25519();
        let registration = |ttl| rendezvous::Registration {
            namespace: rendezvous::Namespace::from_static("p2pdns"),
            record: libp2p::core::PeerRecord::new(&key, Vec::new()).unwrap(),
            ttl,
        };
        let peer = key.public().to_peer_id();
        load.rendezvous(&rendezvous::server::Event::PeerRegistered {
            peer,
            registration: registration(7200),
        });
        load.rendezvous(&rendezvous::server::Event::RegistrationExpired(
            registration(300),
        ));
        assert_eq!(load.registrations.len(), 1);
        load.rendezvous(&rendezvous::server::Event::PeerUnregistered {
            peer,
            namespace: rendezvous::Namespace::from_static("p2pdns"),
        });
        assert!(load.registrations.is_empty());
    }
}
