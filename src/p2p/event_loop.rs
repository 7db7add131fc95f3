//! The node's one task: it owns the swarm, waits on commands, swarm events and its timers, and
//! hands each to the concern that owns the state involved. The concerns never see each other
//! or this loop; what one needs from another is passed in.

use std::{collections::HashMap, sync::Arc, time::Duration};

use libp2p::{
    kad::{self, store::RecordStore},
    swarm::{DialError, SwarmEvent},
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::{JoinError, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    Command, NodeError, NodeStatus, Role,
    addr::is_relayed,
    behaviour::{BehaviourEvent, NodeEvent, NodeSwarm, listen_addrs, next_event},
    connections::Connections,
    inbound::{InboundPuts, InvalidRecords, to_kad_record},
    lookups::{Lookups, Wanted},
    routing::Routing,
    snapshot::Snapshot,
    stalls::Stalls,
};
use crate::{
    config::P2pConfig,
    intro::load::IntroLoad,
    metrics::P2pMetrics,
    nat::{
        connect::Dialer,
        reachability::{self, NatTraversal},
        rendezvous::RendezvousClient,
        stun_probe,
    },
    record::NameRecord,
};

/// The event loop and the state of each concern.
pub(super) struct EventLoop {
    swarm: NodeSwarm,
    commands: mpsc::Receiver<Command>,
    routing: Routing,
    connections: Connections,
    lookups: Lookups,
    /// Peers that answer no DHT request, set aside for a while.
    stalls: Stalls,
    inbound: InboundPuts,
    invalid: InvalidRecords,
    nat: NatTraversal,
    rendezvous: RendezvousClient,
    dialer: Dialer,
    /// What an introduction server holds for others (that role only).
    intro_load: Option<IntroLoad>,
    /// Tasks the node started (the STUN probe): supervised, a panic stops the node.
    tasks: JoinSet<()>,
    /// Own records being put, answered when their PUT query ends. Bounded by the queries
    /// running: each ends within Kademlia's query timeout, and the publisher paces them.
    puts: HashMap<kad::QueryId, oneshot::Sender<Result<(), NodeError>>>,
    /// Swarm events and the node's gauges counted, when metrics are on.
    metrics: Option<Arc<P2pMetrics>>,
    /// When the periodic checks run next ([`EventLoop::housekeeping`]).
    housekeeping_at: Instant,
    /// The record store's snapshot on disk, when it is kept.
    snapshot: Option<Snapshot>,
}

/// How soon the node looks after its relay slots, the peers it set aside and its rendezvous
/// registrations while something there is under way (a reservation asked for, a peer set aside,
/// connections coming and going), and always on an introduction server...
const BUSY_CHECK: Duration = reachability::RELAY_CHECK;
/// ...and once all is settled: a node in a quiet network wakes up for them once a minute.
const SETTLED_CHECK: Duration = Duration::from_secs(60);

impl EventLoop {
    pub(super) fn new(
        swarm: NodeSwarm,
        commands: mpsc::Receiver<Command>,
        joined: watch::Sender<bool>,
        config: &P2pConfig,
        role: Role,
        shutdown: &CancellationToken,
    ) -> Self {
        let (stun_probe, stun) = stun_probe::channel();
        let mut tasks = JoinSet::new();
        let stun_servers = stun_probe::servers(&config.stun_servers, &config.bootstrap);
        // An introduction server answers STUN; it need not ask.
        if config.stun && role == Role::Resolver && !stun_servers.is_empty() {
            tasks.spawn(stun_probe::run(
                stun_servers,
                stun_probe,
                shutdown.child_token(),
            ));
        }
        Self {
            swarm,
            commands,
            routing: Routing::new(config.bootstrap.clone(), joined),
            connections: Connections::default(),
            lookups: Lookups::new(config.max_lookups),
            stalls: Stalls::new(&config.bootstrap),
            inbound: InboundPuts::new(config),
            invalid: InvalidRecords::default(),
            nat: NatTraversal::new(config, stun),
            rendezvous: RendezvousClient::new(&config.bootstrap),
            dialer: Dialer::new(&config.bootstrap),
            intro_load: matches!(role, Role::Intro(_)).then(IntroLoad::default),
            tasks,
            puts: HashMap::new(),
            metrics: None,
            housekeeping_at: Instant::now(),
            snapshot: None,
        }
    }

    /// Counts events, peers and connections in `metrics`, when given.
    pub(super) fn with_metrics(mut self, metrics: Option<Arc<P2pMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Keeps the record store's snapshot up to date, when given.
    pub(super) fn with_snapshot(mut self, snapshot: Option<Snapshot>) -> Self {
        self.snapshot = snapshot;
        self
    }

    /// Runs until `shutdown` is cancelled; a panic of a task the node started is raised again
    /// here.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        self.routing.dial_bootstrap(&mut self.swarm, true);
        loop {
            let save_at = self.snapshot.as_ref().and_then(Snapshot::save_at);
            let redial_at = self.routing.redial_at(&self.swarm);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(save_at.unwrap_or_else(Instant::now)),
                    if save_at.is_some() => self.save_snapshot(),
                // No sender left (an introduction server has no user): events go on.
                Some(command) = self.commands.recv() => self.command(command),
                event = next_event(&mut self.swarm) => self.on_event(event),
                () = self.lookups.next_deadline() => {
                    self.lookups.answer_due(&mut self.swarm.behaviour_mut().kad);
                }
                // The checks look at peers: a node without any leaves the timer unarmed, so
                // that it idles without waking up.
                () = tokio::time::sleep_until(self.housekeeping_at), if self.intro_load.is_some()
                    || self.swarm.network_info().num_peers() > 0 => self.housekeeping(),
                () = tokio::time::sleep_until(redial_at.unwrap_or_else(Instant::now)),
                    if redial_at.is_some() => {
                    self.routing.redial(&mut self.swarm);
                }
                Some(ended) = self.tasks.join_next() => supervise(ended),
            }
        }
        self.tasks.shutdown().await;
        if let Some(snapshot) = &mut self.snapshot {
            snapshot
                .finish(self.swarm.behaviour_mut().kad.store_mut())
                .await;
        }
        debug!("P2P node stopped");
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Lookup {
                name,
                wanted,
                answer_by,
                owner,
                reply,
            } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let wanted = Wanted {
                    replicas: wanted,
                    owner,
                };
                self.lookups.start(kad, name, wanted, answer_by, reply);
            }
            Command::Publish { record, reply } => match self.publish(&record) {
                Ok(id) => {
                    self.store_changed();
                    self.puts.insert(id, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Command::Dial { addr } => {
                // Asked for by name: a peer set aside as unreachable is tried again.
                if let Some(peer) = super::addr::peer_of(&addr) {
                    self.stalls.forgive(&peer);
                    self.apply_stalls();
                }
                if let Err(error) = self.swarm.dial(addr.clone()) {
                    warn!(%addr, %error, "cannot dial peer");
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Connect {
                peer,
                through_relay,
                reply,
            } => {
                // Asked for by a user (a tunnel): a peer set aside as unreachable is tried
                // again, as with `Dial`.
                if self.stalls.forgive(&peer) {
                    self.apply_stalls();
                }
                let registered = self.rendezvous.addrs_of(&peer);
                self.dialer
                    .connect(&mut self.swarm, peer, through_relay, registered, reply);
            }
            Command::Connections { peer, reply } => {
                let _ = reply.send(self.connections.of(peer));
            }
            Command::CloseRelayed { peer, reply } => {
                let relayed = self.connections.relayed_to(peer);
                for id in &relayed {
                    self.swarm.close_connection(*id);
                }
                let _ = reply.send(relayed.len());
            }
            Command::Stored { name, reply } => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let _ = reply.send(Lookups::stored(store, &name));
            }
        }
    }

    /// Stores the node's own record and starts pushing it to the peers closest to its key.
    fn publish(&mut self, record: &NameRecord) -> Result<kad::QueryId, NodeError> {
        self.swarm
            .behaviour_mut()
            .kad
            .put_record(to_kad_record(record), kad::Quorum::One)
            .map_err(NodeError::Store)
    }

    /// The record store changed: its snapshot is written soon.
    fn store_changed(&mut self) {
        if let Some(snapshot) = &mut self.snapshot {
            snapshot.changed();
        }
    }

    /// Writes the record store's snapshot (off this thread).
    fn save_snapshot(&mut self) {
        if let Some(snapshot) = &mut self.snapshot {
            snapshot.save(self.swarm.behaviour_mut().kad.store_mut());
        }
    }

    /// Each concern sees the event and takes what is its own; the two events whose content
    /// must be moved go to their one owner.
    fn on_event(&mut self, event: NodeEvent) {
        if let SwarmEvent::NewListenAddr { address, .. } = &event {
            info!(%address, "P2P listening");
        }
        self.housekeeping_soon(&event);
        self.connections.on_event(&event);
        if let Some(dead) = super::connections::unanswered_ping(&event) {
            self.swarm.close_connection(dead);
        }
        self.count(&event);
        if let SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            ..
        } = &event
        {
            // Set aside for being unreachable, and here it is (restarted, or moved): let back.
            self.stalls.reached(peer_id);
            self.apply_stalls();
            if self.stalls.is_set_aside(peer_id) {
                // A peer that answers nothing: refused while set aside, so that a lookup that
                // hears of it from another peer fails it at once instead of waiting.
                self.swarm.close_connection(*connection_id);
                self.swarm.behaviour_mut().kad.remove_peer(peer_id);
            }
        }
        let swarm = &mut self.swarm;
        self.routing
            .on_event(swarm, &event, &self.connections, &self.stalls);
        self.nat.on_event(swarm, &event);
        self.rendezvous.on_event(swarm, &event);
        self.dialer.on_event(&event);
        if let Some(load) = &mut self.intro_load
            && load.on_event(&event)
            && let Some(metrics) = &self.metrics
        {
            let (reservations, circuits, registrations) = load.held();
            metrics.set_intro_load(reservations, circuits, registrations);
        }
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            })) => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                if self
                    .inbound
                    .on_put(store, source, record, &mut self.invalid)
                {
                    self.store_changed();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::PutRecord(result),
                step,
                ..
            })) if step.last => {
                // Storage nodes acknowledge what they then drop (docs/PROTOCOL.md section 5):
                // the outcome says only that the PUT went out; the publisher reads back.
                debug!(?result, "DHT put finished");
                if let Some(reply) = self.puts.remove(&id) {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let stalls = &mut self.stalls;
                self.lookups.on_event(kad, event, &mut self.invalid, stalls);
                self.apply_stalls();
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id: Some(peer),
                error,
            } if !self.swarm.is_connected(&peer) => self.dial_failed(connection_id, peer, error),
            _ => {}
        }
    }

    /// The dial `dial` of `peer`, not connected otherwise, failed.
    fn dial_failed(
        &mut self,
        dial: libp2p::swarm::ConnectionId,
        peer: libp2p::PeerId,
        error: DialError,
    ) {
        // Another node (or this one) answers there now: the address is not the peer's.
        if let DialError::WrongPeerId { address, .. } | DialError::LocalPeerId { address } = &error
        {
            super::routing::forget_addr(&mut self.swarm, &peer, address);
            self.rendezvous.forget_addr(&peer, address);
        }
        self.set_aside_if_unreachable(peer, &error);
        self.dialer.dial_failed(&mut self.swarm, dial, peer, error);
    }

    /// A dial of `peer` failed on every address: a peer of the routing table is set aside for
    /// a while. Only such peers (reachable from outside by definition): a peer behind a NAT
    /// fails direct dials and is still reached through a relay.
    fn set_aside_if_unreachable(&mut self, peer: libp2p::PeerId, error: &DialError) {
        let unreachable = matches!(
            error,
            DialError::Transport(_) | DialError::NoAddresses | DialError::WrongPeerId { .. }
        );
        let kad = &mut self.swarm.behaviour_mut().kad;
        let table: usize = kad.kbuckets().map(|b| b.num_entries()).sum();
        let in_table = kad.kbucket(peer).is_some_and(|bucket| {
            bucket
                .iter()
                .any(|entry| *entry.node.key.preimage() == peer)
        });
        if unreachable && in_table {
            self.stalls.unreachable(peer, table);
            self.apply_stalls();
        }
    }

    /// Peers newly set aside leave the routing table and are blocked; peers whose time aside
    /// is over are let in again.
    fn apply_stalls(&mut self) {
        for peer in self.stalls.take_new() {
            let behaviour = self.swarm.behaviour_mut();
            behaviour.kad.remove_peer(&peer);
            behaviour.dial_guard.refuse(peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for peer in self.stalls.take_expired() {
            self.swarm.behaviour_mut().dial_guard.allow(&peer);
        }
    }

    /// The periodic checks: peers set aside or back, the routing table's gauges, an
    /// introduction server's load, the relay slots, rendezvous registrations and discovery.
    /// Then the next one: soon while something is under way, else a minute later.
    fn housekeeping(&mut self) {
        self.apply_stalls();
        self.count_table();
        if let Some(load) = &mut self.intro_load {
            let info = self.swarm.network_info();
            load.summarize(info.connection_counters().num_established() as usize);
        }
        self.nat.check_relays(&mut self.swarm);
        if self.rendezvous.has_points() {
            self.rendezvous.due(&mut self.swarm);
        }
        let settled = self.intro_load.is_none()
            && self.nat.relays_settled(&self.swarm)
            && !self.stalls.busy();
        self.housekeeping_at = Instant::now() + if settled { SETTLED_CHECK } else { BUSY_CHECK };
    }

    /// Brings the next housekeeping forward to [`BUSY_CHECK`] from now when `event` may leave
    /// something to do (a connection or listener came or went, a dial failed).
    fn housekeeping_soon(&mut self, event: &NodeEvent) {
        if matches!(
            event,
            SwarmEvent::ConnectionEstablished { .. }
                | SwarmEvent::ConnectionClosed { .. }
                | SwarmEvent::OutgoingConnectionError { .. }
                | SwarmEvent::ListenerClosed { .. }
                | SwarmEvent::NewListenAddr { .. }
                | SwarmEvent::ExpiredListenAddr { .. }
        ) {
            self.housekeeping_at = self.housekeeping_at.min(Instant::now() + BUSY_CHECK);
        }
    }

    /// Counts `event` in the metrics, when they are on.
    fn count(&mut self, event: &NodeEvent) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.on_event(event);
        // The relay check, which reads the table's gauges, sleeps while no peer is left.
        let closed_last = matches!(
            event,
            SwarmEvent::ConnectionClosed {
                num_established: 0,
                ..
            }
        );
        if closed_last && self.swarm.network_info().num_peers() == 0 {
            self.count_table();
        }
    }

    /// Sets the metrics' gauges of the routing table, the store and the relay reservations
    /// held (read at each relay check rather than on every event).
    fn count_table(&mut self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let reservations = self.swarm.listeners().filter(|a| is_relayed(a)).count();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let table = kad.kbuckets().map(|b| b.num_entries()).sum();
        let stored = kad.store_mut().records().count();
        metrics.set_table(table, stored, reservations);
    }

    fn status(&mut self) -> NodeStatus {
        let (peers, routing_table_peers) = Routing::peers(&mut self.swarm, &self.connections);
        let (direct_connections, relayed_connections) = self.connections.direct_and_relayed();
        let listen_addrs = listen_addrs(&self.swarm);
        let bootstrap = self.routing.bootstrap_peers(&self.swarm);
        let kad = &mut self.swarm.behaviour_mut().kad;
        let stored_records = kad.store_mut().records().count();
        let mode = kad.mode().into();
        NodeStatus {
            peer_id: *self.swarm.local_peer_id(),
            relay_reservations: listen_addrs
                .iter()
                .filter(|a| is_relayed(a))
                .cloned()
                .collect(),
            listen_addrs,
            connected_peers: self.swarm.connected_peers().count(),
            routing_table_peers,
            stored_records,
            mode,
            peers,
            reachability: self.nat.reachability(&self.swarm),
            external_addrs: self.nat.external_addrs(&self.swarm),
            relayed_connections,
            direct_connections,
            rendezvous_points: self.rendezvous.standings(),
            rendezvous_peers: self.rendezvous.peers_known(),
            bootstrap,
        }
    }
}

/// A task of the node ended: raises its panic again, so that the node stops and the daemon
/// with it.
fn supervise(ended: Result<(), JoinError>) {
    if let Err(ended) = ended
        && ended.is_panic()
    {
        error!("a task of the P2P node panicked; stopping the node");
        std::panic::resume_unwind(ended.into_panic());
    }
}
