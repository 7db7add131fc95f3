//! The P2P node: one task owns the libp2p [`Swarm`] and runs its event loop; the rest of the
//! program drives it through a cloneable [`NodeHandle`] (commands over a bounded channel,
//! answers over oneshot channels).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_proto::rr::Name;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport as _, autonat,
    connection_limits,
    core::transport::ListenerId,
    core::{transport::MemoryTransport, upgrade},
    dcutr, identify,
    kad::{self, store::MemoryStore, store::MemoryStoreConfig, store::RecordStore},
    mdns,
    multiaddr::Protocol,
    noise, ping, relay, rendezvous,
    swarm::{ConnectionId, NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle},
    tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub mod identity;
mod status;

pub use status::{
    AddressSource, ConnectionInfo, ConnectionPath, ExternalAddr, KadMode, NodeStatus, PeerEntry,
    Reachability, RendezvousStanding, StunMapping, Transport,
};

use crate::config::{DhtMode, IntroConfig, P2pConfig};
use crate::record::{NameRecord, RecordError, dht_key, unix_now};

/// Kademlia protocol id of the p2pdns network (never IPFS's).
pub const KAD_PROTOCOL: &str = "/p2pdns/kad/1.0.0";
/// Identify protocol version string.
const IDENTIFY_VERSION: &str = "/p2pdns/1.0.0";
/// Commands waiting for the event loop at most.
const COMMAND_QUEUE: usize = 256;
/// Lookups running at once at most; more are refused rather than queued without bound.
const MAX_LOOKUPS: usize = 512;
/// Peers remembered as having sent an invalid record (so each is logged once).
const WARNED_PEERS: usize = 1024;
/// How often a node without any peer dials its bootstrap peers again.
const BOOTSTRAP_REDIAL: Duration = Duration::from_secs(30);
/// Connections without traffic for this long are closed. A bootstrap's bucket refreshes touch
/// most peers of a small network; keeping those connections longer costs about 50 KiB each
/// (buffers) and brings nothing, while a peer asked again within a minute needs no handshake.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time to set up one connection (TCP connect or QUIC handshake, then Noise and
/// Yamux): a few round trips even over a satellite link, well under Kademlia's 10 s per peer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(6);
/// How often a node behind NAT checks that it still holds a relay reservation.
const RELAY_CHECK: Duration = Duration::from_secs(10);
/// The rendezvous namespace p2pdns nodes register under.
const RENDEZVOUS_NAMESPACE: &str = "p2pdns";
/// The lifetime a node asks for its rendezvous registration; it registers again at half of it.
const RENDEZVOUS_TTL: u64 = 7200;
/// How often registrations due and rediscovery are looked at; a failed registration is retried
/// after [`RENDEZVOUS_RETRY`]; other peers are discovered when the node registers, and again
/// after 10 s, then twice as long each time up to [`RENDEZVOUS_DISCOVER`].
const RENDEZVOUS_CHECK: Duration = Duration::from_secs(10);
const RENDEZVOUS_RETRY: Duration = Duration::from_secs(300);
const RENDEZVOUS_DISCOVER: Duration = Duration::from_secs(600);
/// Registrations asked for per discovery, and newly discovered peers dialed per discovery.
const RENDEZVOUS_DISCOVER_LIMIT: u64 = 64;
const RENDEZVOUS_DIALS: usize = 8;
/// Peers whose rendezvous addresses are remembered (for `connect`), at most, and addresses
/// kept per peer.
const RENDEZVOUS_PEERS: usize = 1024;
const RENDEZVOUS_ADDRS: usize = 8;
/// How long the DHT keeps asking after a caller's budget ran out (to warm the cache).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What an introduction server relays at most: it must stay useful to many and exhaustible by
/// none. libp2p-relay 0.22 refuses a peer only once it holds *more* than its per-peer maximum,
/// so it is given one less to grant exactly the configured number.
fn relay_limits(limits: &IntroConfig) -> relay::Config {
    relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: limits.max_reservations_per_peer.saturating_sub(1),
        reservation_duration: Duration::from_secs(limits.reservation_duration_secs),
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer.saturating_sub(1),
        max_circuit_duration: Duration::from_secs(limits.circuit_duration_secs),
        max_circuit_bytes: limits.circuit_bytes,
        ..relay::Config::default()
    }
}

/// The rendezvous point's bounds. libp2p-rendezvous 0.18 refuses only once it holds *more*
/// than its total, so it is given one less.
fn rendezvous_limits(limits: &IntroConfig) -> rendezvous::server::Config {
    rendezvous::server::Config::default()
        .with_min_ttl(limits.registration_min_ttl_secs)
        .with_max_ttl(limits.registration_max_ttl_secs)
        .with_max_registration_per_peer(limits.max_registrations_per_peer)
        .with_max_registration_total(limits.max_registrations.saturating_sub(1))
}

/// Errors of the P2P node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listen address could not be used.
    #[error("failed to listen on {addr}")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    /// The swarm could not be built (transport set-up).
    #[error("failed to start the P2P node: {0}")]
    Build(String),
    /// The event loop is gone (daemon shutting down).
    #[error("the P2P node is not running")]
    Stopped,
    /// Too many lookups are running.
    #[error("too many DHT lookups in flight")]
    Busy,
    /// No connection to a peer could be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The record could not be stored locally.
    #[error("failed to store the record: {0}")]
    Store(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Refuses connections past the configured limits (first, so that nothing else sees them).
    limits: connection_limits::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    /// Is this node reachable from outside? (AutoNAT v1; also answers others' probes.)
    autonat: autonat::Behaviour,
    /// Reservations on relays, and connections through them, for a node behind NAT.
    relay_client: relay::client::Behaviour,
    /// Upgrades relayed connections to direct ones (hole punching).
    dcutr: dcutr::Behaviour,
    /// Relaying for others: introduction servers only.
    relay_server: Toggle<relay::Behaviour>,
    /// Port mappings on a UPnP gateway (home routers that offer them).
    upnp: Toggle<crate::nat::upnp::Upnp>,
    /// A rendezvous point for others (introduction servers only): peers register their
    /// addresses for a while and discover each other's.
    rendezvous_server: Toggle<rendezvous::server::Behaviour>,
    /// Registers this node's addresses on rendezvous points and discovers other peers there.
    rendezvous: rendezvous::client::Behaviour,
}

/// What the node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A resolver's node.
    Resolver,
    /// An introduction server: also relays for nodes behind NAT and keeps a rendezvous point,
    /// within these limits.
    Intro(IntroConfig),
}

/// Valid replicas of a name found in the DHT so far.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    /// Each valid record, with the peer that returned it (`None`: this node's own store).
    pub records: Vec<(Option<PeerId>, NameRecord)>,
    /// Replicas that failed validation (forged, expired, hijacked...).
    pub invalid: usize,
    /// The query ended and no peer had any record: the name is absent from the DHT.
    pub absent: bool,
    /// Requests the query had sent to peers when this answer was given.
    pub requests: u32,
    /// Peers that had answered those requests.
    pub peers_answered: u32,
}

enum Command {
    Lookup {
        name: Name,
        wanted: usize,
        answer_by: Option<Instant>,
        reply: oneshot::Sender<Replicas>,
    },
    Publish {
        record: NameRecord,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Dial {
        addr: Multiaddr,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    Holds {
        name: Name,
        reply: oneshot::Sender<bool>,
    },
    Connect {
        peer: PeerId,
        /// Open a new relayed connection even when connected, so that the peers try hole
        /// punching again (a direct connection died right after it was made).
        through_relay: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Connections {
        peer: PeerId,
        reply: oneshot::Sender<Vec<ConnectionInfo>>,
    },
}

/// A cloneable handle to the running node.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    joined: std::sync::Arc<tokio::sync::Notify>,
}

impl NodeHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Completes once the node has met its first DHT peer (at once if it already has): the
    /// moment to push names published while it was alone.
    pub async fn joined(&self) {
        self.joined.notified().await;
    }

    /// Asks the DHT for `name` (a DHT name, `site.p2p.`) and returns the valid replicas found
    /// once `wanted` are in or the query ends. The caller bounds the wait; the query goes on
    /// without it.
    pub async fn lookup(&self, name: Name, wanted: usize) -> Result<Replicas, NodeError> {
        self.lookup_inner(name, wanted, None).await
    }

    /// As [`NodeHandle::lookup`], but answers after `answer_by` with the valid replicas found
    /// so far when there is at least one: a peer that never answers (a node behind NAT that
    /// the DHT still lists) must not hold a found record back.
    pub async fn lookup_within(
        &self,
        name: Name,
        wanted: usize,
        answer_by: Duration,
    ) -> Result<Replicas, NodeError> {
        self.lookup_inner(name, wanted, Some(Instant::now() + answer_by))
            .await
    }

    async fn lookup_inner(
        &self,
        name: Name,
        wanted: usize,
        answer_by: Option<Instant>,
    ) -> Result<Replicas, NodeError> {
        let (reply, rx) = oneshot::channel();
        // Never wait for room in the queue: a flood of made-up names must fail fast instead of
        // piling up tasks that wait to ask.
        self.commands
            .try_send(Command::Lookup {
                name,
                wanted,
                answer_by,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => NodeError::Busy,
                mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
            })?;
        rx.await.map_err(|_| NodeError::Busy)
    }

    /// Stores `record` locally and pushes it to the peers closest to its key.
    pub async fn publish(&self, record: NameRecord) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { record, reply }).await?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Dials a peer (bootstrap or test wiring).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.send(Command::Dial { addr }).await
    }

    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status { reply }).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Connects to `peer`: directly at addresses the DHT knows, else through a relay (each
    /// bootstrap peer, as the introduction server where the peer may hold a reservation).
    /// Returns once one connection is up, or the error of the last failed attempt.
    pub async fn connect(&self, peer: PeerId) -> Result<(), NodeError> {
        self.connect_inner(peer, false).await
    }

    /// Opens a new connection to `peer` through the relays, on which the two sides try hole
    /// punching again.
    pub async fn punch_again(&self, peer: PeerId) -> Result<(), NodeError> {
        self.connect_inner(peer, true).await
    }

    async fn connect_inner(&self, peer: PeerId, through_relay: bool) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Connect {
            peer,
            through_relay,
            reply,
        })
        .await?;
        rx.await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Connect)
    }

    /// The open connections to `peer`.
    pub async fn connections(&self, peer: PeerId) -> Result<Vec<ConnectionInfo>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Connections { peer, reply }).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Whether this node's store holds a record for `name` (diagnostics and benchmarks).
    pub async fn holds(&self, name: &Name) -> Result<bool, NodeError> {
        let (reply, rx) = oneshot::channel();
        let name = name.clone();
        self.send(Command::Holds { name, reply }).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    async fn send(&self, command: Command) -> Result<(), NodeError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NodeError::Stopped)
    }
}

/// A lookup being collected.
struct Lookup {
    /// The name looked up: a valid record for another name is no answer for this one.
    name: Name,
    wanted: usize,
    replicas: Replicas,
    replies: Vec<oneshot::Sender<Replicas>>,
    /// Replies already sent (quorum reached); later replicas are dropped.
    answered: bool,
    /// Answer with what is in by then, if anything.
    answer_by: Option<Instant>,
}

/// The node before its event loop runs: sockets bound, addresses known.
pub struct Node {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    handle: NodeHandle,
    listen_addrs: Vec<Multiaddr>,
    config: P2pConfig,
    role: Role,
}

impl Node {
    /// A resolver's node: [`Node::bind_as`] with [`Role::Resolver`].
    pub async fn bind(
        keypair: libp2p::identity::Keypair,
        config: &P2pConfig,
    ) -> Result<Self, NodeError> {
        Self::bind_as(keypair, config, Role::Resolver).await
    }

    /// Builds the swarm, starts listening and waits until every listener reports its address.
    pub async fn bind_as(
        keypair: libp2p::identity::Keypair,
        config: &P2pConfig,
        role: Role,
    ) -> Result<Self, NodeError> {
        let peer_id = keypair.public().to_peer_id();
        let store_config = MemoryStoreConfig {
            max_records: config.max_stored_records,
            max_value_bytes: crate::record::MAX_RECORD_BYTES,
            ..MemoryStoreConfig::default()
        };
        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_config
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_query_timeout(QUERY_TIMEOUT)
            .set_max_packet_size(16 * 1024)
            // Owners republish their own records; storage nodes re-replicate what they hold.
            .set_publication_interval(None)
            .set_replication_interval(Some(Duration::from_secs(3600)))
            .set_record_ttl(None);
        let mdns_enabled = config.mdns;
        let probe_private = config.nat_probe_private_addresses;
        let upnp_enabled = config.upnp;
        let connection_limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_incoming));
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_quic_config(|mut quic| {
                quic.handshake_timeout = DIAL_TIMEOUT;
                quic
            })
            // TCP with a bounded dial: a peer behind a NAT that drops unsolicited packets
            // (yet listed in the DHT) answers no SYN, and without a bound each query that
            // tries it waits for Kademlia's 10 s peer timeout.
            .with_other_transport(|key| {
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .upgrade(upgrade::Version::V1Lazy)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default())
                        .timeout(DIAL_TIMEOUT),
                )
            })
            .map_err(|e| NodeError::Build(e.to_string()))?
            // In-process peers (`/memory/N`): the large networks of the benchmarks. Nothing
            // outside this process can reach it.
            .with_other_transport(|key| {
                Ok(MemoryTransport::default()
                    .upgrade(upgrade::Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default()))
            })
            .map_err(|e| NodeError::Build(e.to_string()))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| NodeError::Build(e.to_string()))?
            .with_behaviour(|key, relay_client| {
                let mdns = if mdns_enabled {
                    Some(mdns::tokio::Behaviour::new(
                        mdns::Config::default(),
                        key.public().to_peer_id(),
                    )?)
                } else {
                    None
                };
                Ok(Behaviour {
                    kad: kad::Behaviour::with_config(
                        peer_id,
                        MemoryStore::with_config(peer_id, store_config),
                        kad_config,
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        IDENTIFY_VERSION.to_owned(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::default(),
                    mdns: Toggle::from(mdns),
                    autonat: autonat::Behaviour::new(
                        peer_id,
                        autonat::Config {
                            only_global_ips: !probe_private,
                            // A name's owner behind NAT is unreachable until it knows it and
                            // reserves a relay slot: probe soon after start, retry often
                            // while unsure (libp2p's defaults: 15 s and 90 s).
                            boot_delay: Duration::from_secs(3),
                            retry_interval: Duration::from_secs(20),
                            ..autonat::Config::default()
                        },
                    ),
                    relay_client,
                    dcutr: dcutr::Behaviour::new(peer_id),
                    relay_server: Toggle::from(match &role {
                        Role::Intro(limits) => {
                            Some(relay::Behaviour::new(peer_id, relay_limits(limits)))
                        }
                        Role::Resolver => None,
                    }),
                    rendezvous_server: Toggle::from(match &role {
                        Role::Intro(limits) => Some(rendezvous::server::Behaviour::new(
                            rendezvous_limits(limits),
                        )),
                        Role::Resolver => None,
                    }),
                    rendezvous: rendezvous::client::Behaviour::new(key.clone()),
                    limits: connection_limits::Behaviour::new(connection_limits),
                    upnp: Toggle::from(upnp_enabled.then(crate::nat::upnp::Upnp::default)),
                })
            })
            .map_err(|e| NodeError::Build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build();

        let mode = match config.dht_mode {
            DhtMode::Client => kad::Mode::Client,
            // Until reachability is probed (AutoNAT), a node that is not told otherwise serves
            // the DHT: LAN peers reach each other directly.
            DhtMode::Server | DhtMode::Auto => kad::Mode::Server,
        };
        swarm.behaviour_mut().kad.set_mode(Some(mode));
        for addr in &config.external_addresses {
            swarm.add_external_address(addr.clone());
        }

        // An address family the host lacks (IPv6 disabled, say) must not stop the node: skip
        // what cannot be used, fail only when nothing can.
        let mut listening = 0;
        let mut first_error = None;
        for addr in &config.listen {
            match swarm.listen_on(addr.clone()) {
                Ok(_) => listening += 1,
                Err(source) => {
                    warn!(%addr, error = ?source, "cannot listen on this P2P address; skipping it");
                    first_error.get_or_insert(NodeError::Listen {
                        addr: addr.clone(),
                        source,
                    });
                }
            }
        }
        if let (0, Some(error)) = (listening, first_error) {
            return Err(error);
        }
        // Drive the swarm until each listener has reported an address, so the bound ports are
        // known (port 0) before anyone is told about them.
        let mut listen_addrs = Vec::new();
        let mut reported = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while reported < listening {
            let event = tokio::time::timeout_at(deadline, futures_next(&mut swarm)).await;
            match event {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                    listen_addrs.push(address);
                    reported += 1;
                }
                Ok(SwarmEvent::ListenerError { error, .. })
                | Ok(SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                }) => {
                    warn!(%error, "a P2P listener failed");
                    reported += 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if listen_addrs.is_empty() {
            return Err(NodeError::Build(
                "no P2P listen address could be used".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        Ok(Self {
            swarm,
            commands: rx,
            handle: NodeHandle {
                commands: tx,
                peer_id,
                joined: std::sync::Arc::new(tokio::sync::Notify::new()),
            },
            listen_addrs,
            config: config.clone(),
            role,
        })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The addresses the node listens on (port 0 resolved), each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let peer = self.handle.peer_id;
        self.listen_addrs
            .iter()
            .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a))
            .collect()
    }

    /// Runs the event loop until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            mut swarm,
            mut commands,
            handle,
            mut listen_addrs,
            config,
            role,
        } = self;
        let stun_report = std::sync::Arc::new(std::sync::Mutex::new(None));
        let stun_servers = crate::nat::stun_probe::servers(&config.stun_servers, &config.bootstrap);
        // An introduction server answers STUN; it need not ask.
        let stun_task =
            (config.stun && role == Role::Resolver && !stun_servers.is_empty()).then(|| {
                tokio::spawn(crate::nat::stun_probe::run(
                    stun_servers,
                    stun_report.clone(),
                    shutdown.child_token(),
                ))
            });
        dial_bootstrap(&mut swarm, &config.bootstrap, true);
        // A daemon often starts before the network is up (a laptop at boot): while it has no
        // peer at all, it dials its bootstrap peers again.
        let mut redial = tokio::time::interval(BOOTSTRAP_REDIAL);
        redial.tick().await;
        let mut rendezvous_check = tokio::time::interval(RENDEZVOUS_CHECK);
        rendezvous_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut relay_check = tokio::time::interval(RELAY_CHECK);
        relay_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut partial = tokio::time::interval(Duration::from_millis(50));
        partial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut state = EventLoop {
            lookups: HashMap::new(),
            warned: VecDeque::new(),
            warned_set: HashSet::new(),
            put_times: HashMap::new(),
            config,
            bootstrapped: false,
            connections: HashMap::new(),
            connecting: HashMap::new(),
            upnp_addrs: HashSet::new(),
            joined: handle.joined.clone(),
            reserved: false,
            relay_listeners: HashMap::new(),
            stun_report,
            rendezvous_points: HashMap::new(),
            rendezvous_addrs: HashMap::new(),
            intro_load: IntroLoad::default(),
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(command) => state.command(&mut swarm, &listen_addrs, handle.peer_id, command),
                    None => break,
                },
                event = futures_next(&mut swarm) => {
                    match &event {
                        // A relay reports its addresses again when a reservation is renewed.
                        SwarmEvent::NewListenAddr { address, .. }
                            if !listen_addrs.contains(address) =>
                        {
                            listen_addrs.push(address.clone());
                        }
                        SwarmEvent::ExpiredListenAddr { address, .. } => {
                            listen_addrs.retain(|a| a != address);
                        }
                        SwarmEvent::ListenerClosed {
                            listener_id,
                            addresses,
                            ..
                        } => {
                            listen_addrs.retain(|a| !addresses.contains(a));
                            // A relay restarted or refused: ask it again at the next check.
                            state.relay_listeners.remove(listener_id);
                        }
                        _ => {}
                    }
                    state.event(&mut swarm, event);
                }
                _ = partial.tick() => state.answer_due_lookups(),
                _ = relay_check.tick() => {
                    if matches!(role, Role::Intro(_)) {
                        state.intro_load.summarize(
                            swarm.network_info().connection_counters().num_established() as usize,
                        );
                    }
                    // A relay restarted or went away: its reservation is gone; ask again.
                    if state.reserved {
                        reserve_relays(
                            &mut swarm,
                            &state.config.bootstrap,
                            &mut state.relay_listeners,
                            false,
                        );
                    }
                }
                _ = rendezvous_check.tick() => state.rendezvous_due(&mut swarm),
                _ = redial.tick() => {
                    if swarm.connected_peers().next().is_none() {
                        dial_bootstrap(&mut swarm, &state.config.bootstrap, false);
                    }
                }
            }
        }
        if let Some(task) = stun_task {
            task.abort();
        }
        debug!("P2P node stopped");
    }
}

/// Dials every bootstrap address, and puts those that name their peer into the routing table
/// so that DHT queries can use them as soon as they answer.
fn dial_bootstrap(swarm: &mut Swarm<Behaviour>, addrs: &[Multiaddr], first: bool) {
    for addr in addrs {
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

fn status(
    swarm: &mut Swarm<Behaviour>,
    listen_addrs: &[Multiaddr],
    peer_id: PeerId,
    state: &EventLoop,
) -> NodeStatus {
    let mut peers = Vec::new();
    let mut seen = HashSet::new();
    for bucket in swarm.behaviour_mut().kad.kbuckets() {
        for entry in bucket.iter() {
            let id = *entry.node.key.preimage();
            seen.insert(id);
            peers.push(PeerEntry {
                peer_id: id,
                addrs: entry.node.value.iter().cloned().collect(),
                connected: false,
                in_routing_table: true,
                connections: Vec::new(),
            });
        }
    }
    let routing_table_peers = peers.len();
    for peer in &mut peers {
        peer.connected = swarm.is_connected(&peer.peer_id);
    }
    let connected: Vec<PeerId> = swarm.connected_peers().copied().collect();
    for id in &connected {
        if !seen.contains(id) {
            peers.push(PeerEntry {
                peer_id: *id,
                addrs: Vec::new(),
                connected: true,
                in_routing_table: false,
                connections: Vec::new(),
            });
        }
    }
    for (peer, info) in state.connections.values() {
        if let Some(entry) = peers.iter_mut().find(|p| p.peer_id == *peer) {
            entry.connections.push(info.clone());
        }
    }
    let reachability = match swarm.behaviour().autonat.nat_status() {
        status @ autonat::NatStatus::Public(_) if state.behind_nat(&status, swarm) => {
            Reachability::PublicBehindNat
        }
        autonat::NatStatus::Public(_) => Reachability::Public,
        autonat::NatStatus::Private => Reachability::Private,
        autonat::NatStatus::Unknown => Reachability::Unknown,
    };
    let mut external_addrs: Vec<ExternalAddr> = swarm
        .external_addresses()
        .map(|addr| {
            let source = if state.config.external_addresses.contains(addr) {
                AddressSource::Configured
            } else if state.upnp_addrs.contains(addr) {
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
    let stun = state.stun_report.lock().ok().and_then(|r| {
        r.as_ref()
            .and_then(crate::nat::stun_probe::StunReport::external)
    });
    external_addrs.extend(stun);
    let relay_reservations = listen_addrs
        .iter()
        .filter(|a| is_relayed(a))
        .cloned()
        .collect();
    let relayed_connections = state
        .connections
        .values()
        .filter(|(_, info)| info.path == ConnectionPath::Relayed)
        .count();
    let direct_connections = state.connections.len() - relayed_connections;
    let kad = &mut swarm.behaviour_mut().kad;
    let now = Instant::now();
    NodeStatus {
        peer_id,
        listen_addrs: listen_addrs.to_vec(),
        connected_peers: connected.len(),
        routing_table_peers,
        stored_records: kad.store_mut().records().count(),
        mode: kad.mode().into(),
        peers,
        reachability,
        external_addrs,
        relay_reservations,
        relayed_connections,
        direct_connections,
        rendezvous_points: state
            .rendezvous_points
            .iter()
            .map(|(peer, point)| RendezvousStanding {
                point: *peer,
                registered: point.registered_until.is_some_and(|until| until > now),
            })
            .collect(),
        rendezvous_peers: state.rendezvous_addrs.len(),
    }
}

/// How far an address can be dialed from: the same host, the same network, anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    Host,
    Local,
    Global,
}

/// The scope of an IP address: loopback; private, link-local, carrier-grade NAT
/// (100.64.0.0/10) and unique-local; everything else. The one classification behind the
/// routing-table filter, the rebinding filter of `.p2p` answers and the introduction server's
/// public-address check.
pub(crate) fn ip_scope(ip: IpAddr) -> Scope {
    match ip {
        IpAddr::V4(ip) if ip.is_loopback() => Scope::Host,
        IpAddr::V4(ip)
            if ip.is_private()
                || ip.is_link_local()
                || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64) =>
        {
            Scope::Local
        }
        IpAddr::V6(ip) if ip.is_loopback() => Scope::Host,
        IpAddr::V6(ip)
            if (ip.segments()[0] & 0xfe00) == 0xfc00 || (ip.segments()[0] & 0xffc0) == 0xfe80 =>
        {
            Scope::Local
        }
        _ => Scope::Global,
    }
}

/// The scope of a multiaddr's IP (anything else, such as `/memory`, counts as global).
pub(crate) fn scope(addr: &Multiaddr) -> Scope {
    ip_of(addr).map_or(Scope::Global, ip_scope)
}

/// The IP address a multiaddr starts from, if any (a relayed address: the relay's).
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// The peer id an address ends with (`.../p2p/<id>`), if it names one.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// Does the address go through a relay?
fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Is `addr` (an address peers saw) on one of the node's own interfaces? The node is then not
/// behind a NAT. Addresses without an IP (memory transport) count as the node's own.
fn is_own_address<'a>(addr: &Multiaddr, listeners: impl Iterator<Item = &'a Multiaddr>) -> bool {
    match ip_of(addr) {
        None => true,
        Some(seen) => listeners.filter_map(ip_of).any(|own| own == seen),
    }
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
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

/// Asks each bootstrap peer that names its peer id for a relay slot (listening on
/// `<relay>/p2p-circuit`), once per peer and only where no request or reservation is alive:
/// the relayed address lets others reach this node behind NAT.
fn reserve_relays(
    swarm: &mut Swarm<Behaviour>,
    bootstrap: &[Multiaddr],
    held: &mut HashMap<ListenerId, PeerId>,
    first: bool,
) {
    for relay in relay_candidates(bootstrap) {
        let Some(peer) = peer_of(relay) else {
            continue;
        };
        if held.values().any(|p| *p == peer) {
            continue;
        }
        let circuit = relay.clone().with(Protocol::P2pCircuit);
        match swarm.listen_on(circuit) {
            Ok(id) => {
                held.insert(id, peer);
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

async fn futures_next(swarm: &mut Swarm<Behaviour>) -> SwarmEvent<BehaviourEvent> {
    use futures_util::StreamExt;
    swarm
        .next()
        .await
        .expect("a swarm's event stream never ends")
}

struct EventLoop {
    lookups: HashMap<kad::QueryId, Lookup>,
    warned: VecDeque<PeerId>,
    warned_set: HashSet<PeerId>,
    /// Recent PUT times per peer, for the rate limit.
    put_times: HashMap<PeerId, VecDeque<Instant>>,
    config: P2pConfig,
    /// A bootstrap query was started.
    bootstrapped: bool,
    /// Open connections, with their peer.
    connections: HashMap<ConnectionId, (PeerId, ConnectionInfo)>,
    /// External addresses mapped on a UPnP gateway.
    upnp_addrs: HashSet<Multiaddr>,
    /// Told when the first DHT peer is met.
    joined: std::sync::Arc<tokio::sync::Notify>,
    /// `connect` calls waiting for a first connection.
    connecting: HashMap<PeerId, Vec<(ConnectionId, ConnectReply)>>,
    /// Relay slots were asked for (the node found it is not reachable).
    reserved: bool,
    /// Open relay listeners (a reservation asked for or held), by the relay they are on.
    relay_listeners: HashMap<ListenerId, PeerId>,
    /// Bootstrap peers that keep a rendezvous point, with what is due there.
    rendezvous_points: HashMap<PeerId, RendezvousPoint>,
    /// Addresses other peers registered at rendezvous points (for `connect`).
    rendezvous_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// What an introduction server holds for others.
    intro_load: IntroLoad,
    /// What the STUN client learned last.
    stun_report: std::sync::Arc<std::sync::Mutex<Option<crate::nat::stun_probe::StunReport>>>,
}

/// Where `connect` hears how its dial ended.
type ConnectReply = oneshot::Sender<Result<(), String>>;

/// What an introduction server holds for others, for its periodic summary.
#[derive(Debug, Default)]
struct IntroLoad {
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
    /// Something changed since the last summary.
    changed: bool,
    last_summary: Option<Instant>,
}

/// How often an introduction server logs what it holds (when that changed).
const INTRO_SUMMARY: Duration = Duration::from_secs(600);

impl IntroLoad {
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

    /// Logs what is held, at most every [`INTRO_SUMMARY`] and only after a change; refusals
    /// (limits reached) are a warning.
    fn summarize(&mut self, connections: usize) {
        let now = Instant::now();
        if !self.changed || self.last_summary.is_some_and(|at| now - at < INTRO_SUMMARY) {
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
        self.changed = false;
        self.last_summary = Some(now);
    }
}

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

impl EventLoop {
    fn command(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        listen_addrs: &[Multiaddr],
        peer_id: PeerId,
        command: Command,
    ) {
        match command {
            Command::Lookup {
                name,
                wanted,
                answer_by,
                reply,
            } => {
                if self.lookups.len() >= MAX_LOOKUPS {
                    drop(reply);
                    return;
                }
                let key = kad::RecordKey::new(&dht_key(&name));
                let id = swarm.behaviour_mut().kad.get_record(key);
                self.lookups.insert(
                    id,
                    Lookup {
                        name: name.to_lowercase(),
                        wanted: wanted.max(1),
                        replicas: Replicas::default(),
                        replies: vec![reply],
                        answered: false,
                        answer_by,
                    },
                );
            }
            Command::Publish { record, reply } => {
                let kad_record = to_kad_record(&record, Some(peer_id));
                let result = swarm
                    .behaviour_mut()
                    .kad
                    .put_record(kad_record, kad::Quorum::One)
                    .map(|_| ())
                    .map_err(|e| NodeError::Store(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Dial { addr } => {
                if let Err(error) = swarm.dial(addr.clone()) {
                    warn!(%addr, %error, "cannot dial peer");
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(status(swarm, listen_addrs, peer_id, self));
            }
            Command::Connect {
                peer,
                through_relay,
                reply,
            } => {
                if swarm.is_connected(&peer) && !through_relay {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let mut relayed: Vec<Multiaddr> = self
                    .config
                    .bootstrap
                    .iter()
                    .filter(|a| peer_of(a).is_some())
                    .map(|relay| {
                        relay
                            .clone()
                            .with(Protocol::P2pCircuit)
                            .with(Protocol::P2p(peer))
                    })
                    .collect();
                // QUIC first: hole punching works best over it.
                relayed.sort_by_key(|a| !is_quic(a));
                let mut addrs = if through_relay {
                    Vec::new()
                } else {
                    self.rendezvous_addrs
                        .get(&peer)
                        .cloned()
                        .unwrap_or_default()
                };
                addrs.extend(relayed);
                // A dial of its own even when another is under way (the DHT's, say, to an
                // address a NAT filters): this one tries the relays too.
                let mut opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                    .addresses(addrs);
                if !through_relay {
                    opts = opts.extend_addresses_through_behaviour();
                }
                let opts = opts.build();
                let dial = opts.connection_id();
                match swarm.dial(opts) {
                    Ok(()) => self.connecting.entry(peer).or_default().push((dial, reply)),
                    Err(error) => {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
            }
            Command::Connections { peer, reply } => {
                let kinds = self
                    .connections
                    .values()
                    .filter(|(p, _)| *p == peer)
                    .map(|(_, info)| info.clone())
                    .collect();
                let _ = reply.send(kinds);
            }
            Command::Holds { name, reply } => {
                let key = kad::RecordKey::new(&dht_key(&name));
                let _ = reply.send(swarm.behaviour_mut().kad.store_mut().get(&key).is_some());
            }
        }
    }

    fn event(&mut self, swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "P2P listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                // rust-libp2p does not feed identify into Kademlia; without this, peers that
                // dialed us never get an address in the routing table. Only addresses others
                // can use are kept: a peer reached over the internet that lists 127.0.0.1 or
                // its LAN address would send every node that asks the DHT dialing itself.
                let is_point = info.protocols.contains(&rendezvous::PROTOCOL_NAME);
                if is_point
                    && !self.rendezvous_points.contains_key(&peer_id)
                    && self.is_bootstrap_peer(&peer_id)
                {
                    self.rendezvous_points
                        .insert(peer_id, RendezvousPoint::default());
                    self.rendezvous_due(swarm);
                }
                let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
                if speaks_kad {
                    let seen_at = self
                        .connections
                        .get(&connection_id)
                        .map_or(Scope::Global, |c| scope(&c.1.remote));
                    for addr in info.listen_addrs {
                        if scope(&addr) >= seen_at {
                            swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                    if !self.bootstrapped {
                        // First DHT peer: look ourselves up to fill the routing table now
                        // rather than at the first periodic bootstrap.
                        self.bootstrapped = swarm.behaviour_mut().kad.bootstrap().is_ok();
                        self.joined.notify_one();
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    debug!(%peer, %addr, "found a peer on the LAN");
                    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !swarm.is_connected(&peer) {
                        let _ = swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.kad_event(swarm, event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                debug!(%peer_id, relayed, "connected");
                let info = ConnectionInfo {
                    path: if relayed {
                        ConnectionPath::Relayed
                    } else {
                        ConnectionPath::Direct
                    },
                    remote: endpoint.get_remote_address().clone(),
                };
                self.connections.insert(connection_id, (peer_id, info));
                for (_, reply) in self.connecting.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id: Some(peer),
                error,
            } if !swarm.is_connected(&peer) => {
                // Only the failure of `connect`'s own dial ends its wait.
                if let Some(waiting) = self.connecting.get_mut(&peer) {
                    for (_, reply) in waiting.extract_if(.., |(dial, _)| *dial == connection_id) {
                        let _ = reply.send(Err(error.to_string()));
                    }
                    if waiting.is_empty() {
                        self.connecting.remove(&peer);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                endpoint,
                ..
            } => {
                debug!(
                    %peer_id,
                    addr = %endpoint.get_remote_address(),
                    cause = cause.as_ref().map_or("idle or closed by us".to_owned(), |c| c.to_string()),
                    "connection closed"
                );
                self.connections.remove(&connection_id);
                // A rendezvous point that went away may have lost the registration (a
                // restart): register and discover again once it is back.
                if num_established == 0
                    && let Some(point) = self.rendezvous_points.get_mut(&peer_id)
                {
                    *point = RendezvousPoint::default();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.reachability_changed(swarm, new),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                info!(relay = %relay_peer_id, "relay reservation accepted: reachable through it");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => info!(peer = %remote_peer_id, "hole punched: direct connection"),
                Err(error) => {
                    debug!(peer = %remote_peer_id, %error, "hole punching failed; staying relayed")
                }
            },
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed");
                // Tell the rendezvous points the new address now.
                for point in self.rendezvous_points.values_mut() {
                    point.register_at = None;
                }
                self.rendezvous_due(swarm);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(event)) => {
                self.rendezvous_event(swarm, event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(event)) => {
                self.intro_load.relay(&event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::RendezvousServer(event)) => {
                self.intro_load.rendezvous(&event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Upnp(event)) => match event {
                libp2p::upnp::Event::NewExternalAddr { external_addr, .. } => {
                    info!(address = %external_addr, "UPnP gateway mapped a port");
                    self.upnp_addrs.insert(external_addr);
                    // A forwarded port lets anyone in: AutoNAT's earlier "public" now holds.
                    let status = swarm.behaviour().autonat.nat_status();
                    if matches!(status, autonat::NatStatus::Public(_)) {
                        self.reachability_changed(swarm, status);
                    }
                }
                libp2p::upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                    info!(address = %external_addr, "UPnP port mapping expired");
                    self.upnp_addrs.remove(&external_addr);
                }
                libp2p::upnp::Event::GatewayNotFound => debug!("no UPnP gateway"),
                libp2p::upnp::Event::NonRoutableGateway => {
                    debug!("the UPnP gateway is not on the public internet; no mapping")
                }
            },
            _ => {}
        }
    }

    fn is_bootstrap_peer(&self, peer: &PeerId) -> bool {
        self.config
            .bootstrap
            .iter()
            .any(|a| peer_of(a) == Some(*peer))
    }

    /// Registers where due (the node needs an external address for that: a confirmed one or a
    /// relayed one) and discovers other peers where due.
    fn rendezvous_due(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        let namespace = rendezvous::Namespace::from_static(RENDEZVOUS_NAMESPACE);
        let has_external = swarm.external_addresses().next().is_some();
        for (peer, point) in &mut self.rendezvous_points {
            if !swarm.is_connected(peer) {
                continue;
            }
            let register_due = point.register_at.is_none_or(|at| at <= now);
            if register_due && has_external {
                match swarm.behaviour_mut().rendezvous.register(
                    namespace.clone(),
                    *peer,
                    Some(RENDEZVOUS_TTL),
                ) {
                    Ok(()) => point.register_at = Some(now + RENDEZVOUS_RETRY),
                    Err(error) => debug!(%peer, %error, "cannot register at the rendezvous point"),
                }
            }
            if point.discover_at.is_none_or(|at| at <= now) {
                // Soon again at first (others are joining too), then less and less often.
                point.discover_every =
                    (point.discover_every * 2).clamp(RENDEZVOUS_CHECK, RENDEZVOUS_DISCOVER);
                point.discover_at = Some(now + point.discover_every);
                swarm.behaviour_mut().rendezvous.discover(
                    Some(namespace.clone()),
                    point.cookie.clone(),
                    Some(RENDEZVOUS_DISCOVER_LIMIT),
                    *peer,
                );
            }
        }
    }

    fn rendezvous_event(&mut self, swarm: &mut Swarm<Behaviour>, event: rendezvous::client::Event) {
        use rendezvous::client::Event;
        match event {
            Event::Registered {
                rendezvous_node,
                ttl,
                ..
            } => {
                if let Some(point) = self.rendezvous_points.get_mut(&rendezvous_node) {
                    let now = Instant::now();
                    let first = point.registered_until.is_none();
                    point.registered_until = Some(now + Duration::from_secs(ttl));
                    point.register_at = Some(now + Duration::from_secs(ttl / 2));
                    if first {
                        info!(point = %rendezvous_node, ttl, "registered at the rendezvous point");
                        // Those who came before are there now: look.
                        point.discover_at = None;
                        self.rendezvous_due(swarm);
                    }
                }
            }
            Event::RegisterFailed {
                rendezvous_node,
                error,
                ..
            } => {
                warn!(point = %rendezvous_node, ?error, "rendezvous point refused the registration");
                if let Some(point) = self.rendezvous_points.get_mut(&rendezvous_node) {
                    point.register_at = Some(Instant::now() + RENDEZVOUS_RETRY);
                }
            }
            Event::Discovered {
                rendezvous_node,
                registrations,
                cookie,
            } => {
                if let Some(point) = self.rendezvous_points.get_mut(&rendezvous_node) {
                    point.cookie = Some(cookie);
                }
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
                        .take(RENDEZVOUS_ADDRS)
                        .cloned()
                        .collect();
                    // Only peers that are reachable directly (no relayed address): relaying
                    // would spend the relay's circuits, and a node behind NAT would not answer.
                    let reachable = !addrs.iter().any(is_relayed);
                    if reachable && !swarm.is_connected(&peer) && dials < RENDEZVOUS_DIALS {
                        dials += 1;
                        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                            .addresses(addrs.clone())
                            .build();
                        let _ = swarm.dial(opts);
                    }
                    if self.rendezvous_addrs.len() < RENDEZVOUS_PEERS
                        || self.rendezvous_addrs.contains_key(&peer)
                    {
                        self.rendezvous_addrs.insert(peer, addrs);
                    }
                }
                debug!(point = %rendezvous_node, dials, known = self.rendezvous_addrs.len(), "rendezvous discovery");
            }
            Event::DiscoverFailed {
                rendezvous_node,
                error,
                ..
            } => debug!(point = %rendezvous_node, ?error, "rendezvous discovery failed"),
            Event::Expired { peer } => {
                self.rendezvous_addrs.remove(&peer);
            }
        }
    }

    /// Did AutoNAT reach the node at an address that is not its own (and is neither a UPnP
    /// mapping nor configured)? It then sits behind a NAT that let the prober in, which may
    /// filter strangers.
    fn behind_nat(&self, status: &autonat::NatStatus, swarm: &Swarm<Behaviour>) -> bool {
        match status {
            autonat::NatStatus::Public(addr) => {
                self.config.external_addresses.is_empty()
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
    fn reachability_changed(&mut self, swarm: &mut Swarm<Behaviour>, status: autonat::NatStatus) {
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
        if self.config.dht_mode != DhtMode::Auto {
            return;
        }
        match status {
            autonat::NatStatus::Public(_) if !behind_nat => {
                swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
                // Reachable now: no new relay slots (those held expire on their own).
                self.reserved = false;
            }
            autonat::NatStatus::Public(_) | autonat::NatStatus::Private => {
                swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Client));
                if !self.reserved {
                    self.reserved = true;
                    reserve_relays(
                        swarm,
                        &self.config.bootstrap,
                        &mut self.relay_listeners,
                        true,
                    );
                }
            }
            autonat::NatStatus::Unknown => {}
        }
    }

    fn kad_event(&mut self, swarm: &mut Swarm<Behaviour>, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.inbound_put(swarm, source, record),
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => match result {
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                    self.found(swarm, id, found, &stats);
                }
                // Only peers that answered can say a name is absent; a query that reached
                // nobody (no peers yet) says nothing. Replicas that all failed validation are
                // no record either.
                kad::QueryResult::GetRecord(Ok(
                    kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. },
                ))
                | kad::QueryResult::GetRecord(Err(kad::GetRecordError::NotFound { .. })) => {
                    self.finish(id, &stats, stats.num_successes() > 0);
                }
                kad::QueryResult::GetRecord(Err(error)) => {
                    debug!(%error, "DHT lookup ended");
                    self.finish(id, &stats, false);
                }
                kad::QueryResult::PutRecord(result) if step.last => {
                    debug!(?result, "DHT put finished");
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// A replica arrived for lookup `id`: keep it if valid, answer once enough are in.
    fn found(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        id: kad::QueryId,
        found: kad::PeerRecord,
        stats: &kad::QueryStats,
    ) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        let now = unix_now();
        let checked = NameRecord::from_bytes(&found.record.value)
            .and_then(|r| r.verify(now).map(|()| r))
            .and_then(|r| {
                if r.name == lookup.name {
                    Ok(r)
                } else {
                    Err(RecordError::OtherName(r.name.to_ascii()))
                }
            });
        match checked {
            Ok(record) => lookup.replicas.records.push((found.peer, record)),
            Err(error) => {
                lookup.replicas.invalid += 1;
                if let Some(peer) = found.peer {
                    self.warn_once(peer, &error);
                }
            }
        }
        let lookup = self.lookups.get_mut(&id).expect("looked up above");
        if !lookup.answered && lookup.replicas.records.len() >= lookup.wanted {
            lookup.answered = true;
            lookup.replicas.requests = stats.num_requests();
            lookup.replicas.peers_answered = stats.num_successes();
            for reply in lookup.replies.drain(..) {
                let _ = reply.send(lookup.replicas.clone());
            }
            if let Some(mut query) = swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
        }
    }

    /// Lookups past their answer time with at least one valid replica answer now; their
    /// queries go on (more replicas may still be pinned or out-vote these).
    fn answer_due_lookups(&mut self) {
        let now = Instant::now();
        for lookup in self.lookups.values_mut() {
            if !lookup.answered
                && lookup.answer_by.is_some_and(|by| now >= by)
                && !lookup.replicas.records.is_empty()
            {
                lookup.answered = true;
                for reply in lookup.replies.drain(..) {
                    let _ = reply.send(lookup.replicas.clone());
                }
            }
        }
    }

    fn finish(&mut self, id: kad::QueryId, stats: &kad::QueryStats, peers_answered: bool) {
        let Some(mut lookup) = self.lookups.remove(&id) else {
            return;
        };
        lookup.replicas.absent = peers_answered && lookup.replicas.records.is_empty();
        lookup.replicas.requests = stats.num_requests();
        lookup.replicas.peers_answered = stats.num_successes();
        for reply in lookup.replies.drain(..) {
            let _ = reply.send(lookup.replicas.clone());
        }
    }

    /// A peer asks us to store a record: check it fully before it touches the store.
    fn inbound_put(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        source: PeerId,
        mut record: kad::Record,
    ) {
        if !self.within_rate(source) {
            debug!(peer = %source, "PUT rate limit exceeded; record dropped");
            return;
        }
        let now = unix_now();
        let parsed = NameRecord::from_bytes(&record.value).and_then(|r| r.verify(now).map(|()| r));
        let new = match parsed {
            Ok(new) => new,
            Err(error) => {
                self.warn_once(source, &error);
                return;
            }
        };
        if record.key.as_ref() != dht_key(&new.name).as_slice() {
            self.warn_once(source, &"record stored under another name's key");
            return;
        }
        let store = swarm.behaviour_mut().kad.store_mut();
        if let Some(held) = store.get(&record.key)
            && let Ok(held) = NameRecord::from_bytes(&held.value)
            && held.expires > now
        {
            if held.owner != new.owner {
                self.warn_once(source, &"record for a name owned by another key");
                return;
            }
            if new.seq <= held.seq {
                return;
            }
        }
        let held_by_source = store
            .records()
            .filter(|r| r.publisher == Some(source))
            .count();
        if held_by_source >= self.config.max_records_per_peer {
            debug!(peer = %source, "per-peer record limit reached; record dropped");
            return;
        }
        let stored = to_kad_record(&new, Some(source));
        record.value = stored.value;
        record.publisher = stored.publisher;
        record.expires = stored.expires;
        if let Err(error) = store.put(record) {
            debug!(%error, "record not stored");
        }
    }

    fn within_rate(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        let window = Duration::from_secs(60);
        if self.put_times.len() > 10_000 {
            self.put_times.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let times = self.put_times.entry(peer).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            times.pop_front();
        }
        if times.len() >= self.config.max_puts_per_peer_per_minute {
            return false;
        }
        times.push_back(now);
        true
    }

    fn warn_once(&mut self, peer: PeerId, error: &dyn std::fmt::Display) {
        if self.warned_set.contains(&peer) {
            debug!(%peer, %error, "invalid record dropped");
            return;
        }
        warn!(%peer, %error, "peer sent an invalid record; dropped (further ones are logged at debug)");
        if self.warned.len() >= WARNED_PEERS
            && let Some(old) = self.warned.pop_front()
        {
            self.warned_set.remove(&old);
        }
        self.warned.push_back(peer);
        self.warned_set.insert(peer);
    }
}

/// The Kademlia form of a record: value = encoded record, expiry from the signed field.
fn to_kad_record(record: &NameRecord, publisher: Option<PeerId>) -> kad::Record {
    let left = record.expires.saturating_sub(unix_now());
    kad::Record {
        key: kad::RecordKey::new(&dht_key(&record.name)),
        value: record.to_bytes(),
        publisher,
        expires: Some(Instant::now() + Duration::from_secs(left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_scoped_by_where_they_can_be_dialed_from() {
        for (addr, expected) in [
            ("/ip4/127.0.0.1/tcp/4747", Scope::Host),
            ("/ip6/::1/udp/4747/quic-v1", Scope::Host),
            ("/ip4/10.1.0.2/tcp/4747", Scope::Local),
            ("/ip4/192.168.1.9/tcp/4747", Scope::Local),
            ("/ip4/100.64.3.1/tcp/4747", Scope::Local),
            ("/ip6/fd00::2/tcp/4747", Scope::Local),
            ("/ip6/fe80::1/tcp/4747", Scope::Local),
            ("/ip4/198.51.100.7/tcp/4747", Scope::Global),
            ("/ip4/8.8.8.8/udp/4747/quic-v1", Scope::Global),
            ("/memory/1234", Scope::Global),
        ] {
            assert_eq!(scope(&addr.parse().unwrap()), expected, "{addr}");
        }
    }

    #[test]
    fn a_node_is_behind_nat_when_peers_see_an_address_it_does_not_have() {
        let own: Vec<Multiaddr> = ["/ip4/10.1.0.2/tcp/4747", "/ip4/127.0.0.1/tcp/4747"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let seen = |a: &str| is_own_address(&a.parse().unwrap(), own.iter());
        assert!(!seen("/ip4/198.18.1.1/tcp/4747"));
        assert!(seen("/ip4/10.1.0.2/tcp/31000"));
        assert!(seen("/memory/77"));
        assert!(!is_own_address(
            &"/ip4/10.1.0.2/tcp/4747".parse().unwrap(),
            [].iter()
        ));
    }

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
