//! The P2P node. It owns the libp2p [`Swarm`](libp2p::Swarm), in one task running its event
//! loop, and the state of each concern of that loop: DHT lookups, inbound records, the routing
//! table, open connections; NAT traversal policy lives in [`crate::nat`] and is driven from
//! here. The rest of the program drives the node through a cloneable [`NodeHandle`] (commands
//! over a bounded channel, answers over oneshot channels) and reads its typed [`NodeStatus`].
//! It must not touch DNS, the naming layer's records and pins, or the control socket: it moves
//! signed records, it does not decide what names mean.
//!
//! - [`Node::bind`] builds the swarm (`behaviour`) and returns once every listener has an
//!   address; [`Node::run`] runs the event loop until shut down.
//! - The loop owns one struct per concern, each with an `on_event`: `lookups` (GET_VALUE
//!   queries and their answer times), `stalls` (peers that answer no request, set aside),
//!   `inbound` (PUT_VALUE checks), `routing`, `connections`; and from [`crate::nat`]
//!   reachability, rendezvous and `connect`. Every map a peer can grow in them is bounded
//!   (a config key or a constant, named in the doc comment of the map).
//! - `admission` admits incoming handshakes on each transport, shared fairly between
//!   address groups, so that no set of addresses can keep other peers out; `port_reuse` dials
//!   TCP from a fresh port when the listening port is held on another address.
//! - `addr` classifies addresses; `status` is what `p2pdns status` shows; [`own_port`] is the
//!   port a resolver's node listens on when the configuration sets none.

use std::{path::Path, sync::Arc, time::Duration};

use libp2p::{Multiaddr, swarm::SwarmEvent};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub(crate) mod addr;
pub(crate) mod admission;
pub(crate) mod behaviour;
mod connections;
mod dial_guard;
mod error;
mod event_loop;
pub(crate) mod fair_share;
mod handle;
pub mod identity;
mod inbound;
pub(crate) mod keep_alive;
mod lookups;
pub mod own_port;
mod port_reuse;
mod routing;
mod snapshot;
mod stalls;
mod status;

pub(crate) use addr::{Scope, ip_of, ip_scope};
pub use behaviour::{KAD_PROTOCOL, Role};
pub use error::NodeError;
pub(crate) use handle::Command;
pub use handle::{NodeHandle, Replicas};
pub use snapshot::RECORDS_FILE;
pub use status::{
    AddressSource, BootstrapPeer, ConnectionInfo, ConnectionPath, ExternalAddr, KadMode,
    NodeStatus, PeerEntry, Reachability, RendezvousStanding, StunMapping, Transport,
};

use crate::{config::P2pConfig, metrics::P2pMetrics};
use behaviour::{NodeSwarm, next_event};

/// Commands waiting for the event loop at most.
const COMMAND_QUEUE: usize = 256;
/// How long [`Node::bind`] waits for its listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// The node before its event loop runs: sockets bound, addresses known.
pub struct Node {
    swarm: NodeSwarm,
    commands: mpsc::Receiver<Command>,
    handle: NodeHandle,
    joined: watch::Sender<bool>,
    config: P2pConfig,
    role: Role,
    /// Swarm events and the node's gauges counted, when metrics are on.
    metrics: Option<Arc<P2pMetrics>>,
    /// The snapshot of the record store kept up to date, when the node has a data directory.
    snapshot: Option<snapshot::Snapshot>,
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
    /// It listens on [`P2pConfig::listen_addrs`]: an unset `listen` means the well-known port,
    /// an introduction server's; a resolver's daemon gives its node a port of its own first
    /// ([`own_port::resolve`]).
    ///
    /// # Errors
    /// [`NodeError::Build`] when the swarm cannot be built; [`NodeError::Listen`] when no
    /// listen address can be used (one that cannot, say an IPv6 one on a host without IPv6,
    /// is skipped with a warning); [`NodeError::NoListenAddress`] when every listener failed
    /// before it had an address.
    pub async fn bind_as(
        keypair: libp2p::identity::Keypair,
        config: &P2pConfig,
        role: Role,
    ) -> Result<Self, NodeError> {
        let peer_id = keypair.public().to_peer_id();
        let mut swarm = behaviour::build_swarm(keypair, config, role)?;
        let listening = listen(&mut swarm, &config.listen_addrs())?;
        wait_for_addresses(&mut swarm, listening).await?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (joined, joined_rx) = watch::channel(false);
        let streams = swarm.behaviour().stream.new_control();
        let keep_alive = swarm.behaviour().keep_alive.marks();
        Ok(Self {
            swarm,
            commands: rx,
            handle: NodeHandle::new(tx, peer_id, joined_rx, streams, keep_alive),
            joined,
            config: config.clone(),
            role,
            metrics: None,
            snapshot: None,
        })
    }

    /// Counts the node's events, peers and connections in `metrics`, when given.
    pub fn with_metrics(mut self, metrics: Option<Arc<P2pMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Keeps the records this node stores for the network in `data_dir` across restarts
    /// ([`RECORDS_FILE`]): loads the last run's snapshot now, each record through
    /// the checks of an inbound PUT (an unreadable, damaged or tampered file is logged and
    /// costs only the records that fail), then keeps it up to date while the node runs.
    pub fn keep_records_in(mut self, data_dir: &Path) -> Self {
        let puts = inbound::InboundPuts::new(&self.config);
        let store = self.swarm.behaviour_mut().kad.store_mut();
        self.snapshot = snapshot::load(data_dir, store, &puts);
        self
    }

    /// A handle that drives the node once it runs.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The addresses the node listens on (port 0 resolved), each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        behaviour::listen_addrs(&self.swarm)
            .iter()
            .map(|a| addr::with_peer(a, self.handle.peer_id()))
            .collect()
    }

    /// Runs the event loop until `shutdown` is cancelled. A panic of a task the node started
    /// (the STUN probe) is raised again here.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            swarm,
            commands,
            joined,
            config,
            role,
            metrics,
            snapshot,
            ..
        } = self;
        event_loop::EventLoop::new(swarm, commands, joined, &config, role, &shutdown)
            .with_metrics(metrics)
            .with_snapshot(snapshot)
            .run(shutdown)
            .await;
    }
}

/// Listens on each address. An address family the host lacks (IPv6 disabled, say) must not
/// stop the node: what cannot be used is skipped, and only when nothing can is it an error.
/// Returns how many listeners started.
fn listen(swarm: &mut NodeSwarm, addrs: &[Multiaddr]) -> Result<usize, NodeError> {
    let mut listening = 0;
    let mut first_error = None;
    for addr in addrs {
        if let Some(taken) = tcp_port_taken(addr) {
            warn!(%addr, error = %taken, "cannot listen on this P2P address; skipping it");
            first_error.get_or_insert(NodeError::Listen {
                addr: addr.clone(),
                source: libp2p::TransportError::Other(taken),
            });
            continue;
        }
        match swarm.listen_on(addr.clone()) {
            Ok(_) => listening += 1,
            Err(source) => {
                warn!(%addr, error = %crate::error::one_line(&source), "cannot listen on this P2P address; skipping it");
                first_error.get_or_insert(NodeError::Listen {
                    addr: addr.clone(),
                    source,
                });
            }
        }
    }
    match (listening, first_error) {
        (0, Some(error)) => Err(error),
        _ => Ok(listening),
    }
}

/// Is the TCP port of `addr` held by another socket already (another p2pdns, say)? libp2p's
/// TCP listeners set SO_REUSEPORT (for hole punching), so a second daemon of the same user
/// would bind the same port without an error and take a share of the first one's incoming
/// connections. A probe bound without SO_REUSEPORT fails wherever any socket holds the port.
/// `None` for port 0, non-TCP addresses, and when the probe cannot tell.
fn tcp_port_taken(addr: &Multiaddr) -> Option<std::io::Error> {
    use libp2p::multiaddr::Protocol;
    use socket2::{Domain, Socket, Type};
    let mut ip = None;
    let mut port = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
            Protocol::Tcp(p) => port = Some(p),
            Protocol::Udp(_) | Protocol::P2pCircuit => return None,
            _ => {}
        }
    }
    let addr = std::net::SocketAddr::new(ip?, port.filter(|p| *p != 0)?);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).ok()?;
    if addr.is_ipv6() {
        // As libp2p's own listeners: an IPv6 wildcard does not take the IPv4 port too.
        socket.set_only_v6(true).ok()?;
    }
    // Connections of an earlier run lingering in TIME_WAIT do not hold the port.
    socket.set_reuse_address(true).ok()?;
    match socket.bind(&addr.into()) {
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Some(error),
        _ => None,
    }
}

/// Drives the swarm until each of `listening` listeners has reported an address (or failed),
/// so the bound ports are known (port 0) before anyone is told about them.
async fn wait_for_addresses(swarm: &mut NodeSwarm, listening: usize) -> Result<(), NodeError> {
    let mut reported = 0;
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    while reported < listening {
        let Ok(event) = tokio::time::timeout_at(deadline, next_event(swarm)).await else {
            break;
        };
        match event {
            SwarmEvent::NewListenAddr { .. } => reported += 1,
            SwarmEvent::ListenerError { error, .. }
            | SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => {
                warn!(%error, "a P2P listener failed");
                reported += 1;
            }
            _ => {}
        }
    }
    match swarm.listeners().next() {
        Some(_) => Ok(()),
        None => Err(NodeError::NoListenAddress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_port_held_by_another_socket_is_found_taken() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let at = |a: String| -> Multiaddr { a.parse().unwrap() };
        assert!(tcp_port_taken(&at(format!("/ip4/127.0.0.1/tcp/{port}"))).is_some());
        // The wildcard address covers 127.0.0.1 too.
        assert!(tcp_port_taken(&at(format!("/ip4/0.0.0.0/tcp/{port}"))).is_some());
        // Not TCP, or a port the system picks: nothing to probe.
        assert!(tcp_port_taken(&at(format!("/ip4/127.0.0.1/udp/{port}/quic-v1"))).is_none());
        assert!(tcp_port_taken(&at("/ip4/127.0.0.1/tcp/0".into())).is_none());
        drop(holder);
        assert!(tcp_port_taken(&at(format!("/ip4/127.0.0.1/tcp/{port}"))).is_none());
    }
}
