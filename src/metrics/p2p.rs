//! The P2P node's metrics: libp2p's own (`libp2p-metrics`: swarm, Kademlia, identify, ping,
//! relay, DCUtR), the peers and connections open (direct and relayed), the routing table and
//! the store, what an introduction server holds for others, and the naming layer's DHT
//! lookups (outcome, time, requests).

use std::time::Duration;

use libp2p::{metrics::Recorder, swarm::SwarmEvent};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::histogram::AtomicHistogram;
use crate::{
    naming::{AnswerNote, resolver::DhtAnswer},
    p2p::behaviour::{BehaviourEvent, NodeEvent},
};

/// The node's metrics, fed by its event loop (the one task that sees swarm events).
pub struct P2pMetrics {
    libp2p: libp2p::metrics::Metrics,
    peers: Gauge,
    /// Open connections: direct, relayed.
    connections: [Gauge; 2],
    routing_table_peers: Gauge,
    stored_records: Gauge,
    /// Relayed addresses this node holds on relays (a node behind NAT).
    relay_reservations: Gauge,
    intro: Option<IntroGauges>,
}

/// What an introduction server holds for others.
#[derive(Debug, Default)]
struct IntroGauges {
    reservations: Gauge,
    circuits: Gauge,
    registrations: Gauge,
}

impl P2pMetrics {
    /// Registers the node's metrics in `registry`, with those of an introduction server when
    /// `intro`.
    pub fn register(registry: &mut Registry, intro: bool) -> Self {
        let libp2p = libp2p::metrics::Metrics::new(registry);
        let connections = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        let this = Self {
            libp2p,
            peers: Gauge::default(),
            connections: ["direct", "relayed"]
                .map(|path| connections.get_or_create_owned(&[("path", path)])),
            routing_table_peers: Gauge::default(),
            stored_records: Gauge::default(),
            relay_reservations: Gauge::default(),
            intro: intro.then(IntroGauges::default),
        };
        let gauges = [
            (
                "p2pdns_p2p_peers",
                "Peers with at least one open connection",
                &this.peers,
            ),
            (
                "p2pdns_p2p_routing_table_peers",
                "Peers in the Kademlia routing table",
                &this.routing_table_peers,
            ),
            (
                "p2pdns_p2p_stored_records",
                "Name records this node's DHT store holds (its own and others')",
                &this.stored_records,
            ),
            (
                "p2pdns_p2p_relay_reservations",
                "Reservations this node holds on relays (its relayed addresses)",
                &this.relay_reservations,
            ),
        ];
        register_gauges(registry, &gauges);
        registry.register(
            "p2pdns_p2p_connections",
            "Open connections, direct or through a relay",
            connections,
        );
        if let Some(intro) = &this.intro {
            let gauges = [
                (
                    "p2pdns_intro_relay_reservations",
                    "Relay reservations this introduction server holds for others",
                    &intro.reservations,
                ),
                (
                    "p2pdns_intro_relay_circuits",
                    "Relayed connections open through this introduction server",
                    &intro.circuits,
                ),
                (
                    "p2pdns_intro_rendezvous_registrations",
                    "Rendezvous registrations this introduction server holds",
                    &intro.registrations,
                ),
            ];
            register_gauges(registry, &gauges);
        }
        this
    }

    /// Records a swarm event: libp2p's metrics of it, and the peers and connections open.
    pub(crate) fn on_event(&self, event: &NodeEvent) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.libp2p.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.libp2p.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.libp2p.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => self.libp2p.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => self.libp2p.record(e),
            SwarmEvent::Behaviour(_) => {}
            other => self.libp2p.record(other),
        }
        match event {
            SwarmEvent::ConnectionEstablished {
                endpoint,
                num_established,
                ..
            } => {
                self.connections[usize::from(endpoint.is_relayed())].inc();
                if num_established.get() == 1 {
                    self.peers.inc();
                }
            }
            SwarmEvent::ConnectionClosed {
                endpoint,
                num_established,
                ..
            } => {
                self.connections[usize::from(endpoint.is_relayed())].dec();
                if *num_established == 0 {
                    self.peers.dec();
                }
            }
            _ => {}
        }
    }

    /// Sets the gauges read now and then rather than on every event: the routing table's
    /// peers, the records stored, and the reservations held on relays.
    pub(crate) fn set_table(&self, routing_table_peers: usize, stored: usize, reservations: usize) {
        self.routing_table_peers
            .set(gauge_value(routing_table_peers));
        self.stored_records.set(gauge_value(stored));
        self.relay_reservations.set(gauge_value(reservations));
    }

    /// Sets what an introduction server holds for others.
    pub(crate) fn set_intro_load(
        &self,
        reservations: usize,
        circuits: usize,
        registrations: usize,
    ) {
        if let Some(intro) = &self.intro {
            intro.reservations.set(gauge_value(reservations));
            intro.circuits.set(gauge_value(circuits));
            intro.registrations.set(gauge_value(registrations));
        }
    }
}

impl std::fmt::Debug for P2pMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // libp2p's metrics are not Debug; they are in the registry, where they show.
        f.debug_struct("P2pMetrics")
            .field("peers", &self.peers)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// Registers each (name, help, gauge) in `registry`.
fn register_gauges(registry: &mut Registry, gauges: &[(&str, &str, &Gauge)]) {
    for (name, help, gauge) in gauges {
        registry.register(*name, *help, (*gauge).clone());
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `outcome` label of a DHT lookup.
const OUTCOMES: [&str; 8] = [
    "found",
    "absent",
    "not_connected",
    "no_peer_answered",
    "timeout",
    "pinned_owner_missing",
    "busy",
    "node_stopped",
];

/// The naming layer's DHT lookups (one per name however many queries wait on it).
#[derive(Debug)]
pub struct DhtMetrics {
    lookups: [Counter; OUTCOMES.len()],
    duration: AtomicHistogram,
    requests: AtomicHistogram,
}

impl DhtMetrics {
    /// Registers the DHT lookup metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let lookups = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let this = Self {
            lookups: OUTCOMES.map(|outcome| lookups.get_or_create_owned(&[("outcome", outcome)])),
            duration: AtomicHistogram::seconds(),
            requests: AtomicHistogram::counts(),
        };
        registry.register(
            "p2pdns_dht_lookups",
            "DHT lookups of .p2p names, by outcome",
            lookups,
        );
        registry.register(
            "p2pdns_dht_lookup_duration_seconds",
            "Time a DHT lookup took to give its answer (found, absent or failed)",
            this.duration.clone(),
        );
        registry.register(
            "p2pdns_dht_lookup_requests",
            "Requests a DHT lookup had sent to peers when it answered (Kademlia's hops times its parallelism)",
            this.requests.clone(),
        );
        this
    }

    /// Counts a lookup that ended with `outcome` after `elapsed`, having sent `requests`.
    pub fn lookup_ended(
        &self,
        outcome: &Result<DhtAnswer, AnswerNote>,
        elapsed: Duration,
        requests: u32,
    ) {
        let index = match outcome {
            Ok(DhtAnswer::Found(_)) => 0,
            Ok(DhtAnswer::Absent) => 1,
            Err(AnswerNote::NotConnected) => 2,
            Err(AnswerNote::NoPeerAnswered) => 3,
            Err(AnswerNote::PinnedOwnerMissing) => 5,
            Err(AnswerNote::Busy) => 6,
            Err(AnswerNote::NodeStopped) => 7,
            // Timeout, and the notes no lookup gives (a tunnel's).
            Err(_) => 4,
        };
        self.lookups[index].inc();
        self.duration.observe_duration(elapsed);
        self.requests.observe_whole(requests.into());
    }
}
