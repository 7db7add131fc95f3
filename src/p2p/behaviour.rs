//! The node's libp2p [`NetworkBehaviour`] and the swarm around it: which protocols run, with
//! which limits, over which transports. What a role turns on (relaying and a rendezvous point
//! for an introduction server, mDNS and UPnP as configured) is decided here, once.

use std::{error::Error, num::NonZeroU32, time::Duration};

use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport as _, autonat,
    connection_limits,
    core::{muxing::StreamMuxerBox, transport::Boxed, upgrade},
    dcutr, identify,
    identity::Keypair,
    kad::{self, store::MemoryStore, store::MemoryStoreConfig},
    mdns, noise, ping, quic, relay, rendezvous,
    swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle},
    tcp, yamux,
};

use super::{
    NodeError,
    admission::{Admission, AdmissionLimits, Alternate},
    port_reuse::FreshPortOnConflict,
};
use crate::config::{DhtMode, IntroConfig, P2pConfig};

/// Kademlia protocol id of the p2pdns network (never IPFS's).
pub const KAD_PROTOCOL: &str = "/p2pdns/kad/1.0.0";
/// Identify protocol version string.
const IDENTIFY_VERSION: &str = "/p2pdns/1.0.0";
/// How long the DHT keeps asking after a caller's budget ran out (to warm the cache).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections without traffic for this long are closed. A bootstrap's bucket refreshes touch
/// most peers of a small network; keeping those connections longer costs about 50 KiB each
/// (buffers) and brings nothing, while a peer asked again within a minute needs no handshake.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Each connection is pinged this often (libp2p ping, whose default is 15 s): a NAT keeps an
/// idle connection's mapping open for at least 30 s on most home routers (25 s is WireGuard's
/// persistent keepalive for the same reason), and a dead connection is closed within one
/// interval and [`PING_TIMEOUT`] (`connections::unanswered_ping`); rarely enough that a node in
/// a quiet network wakes up seldom.
const PING_INTERVAL: Duration = Duration::from_secs(25);
/// How long a ping may take to be answered (libp2p's default).
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// AutoNAT's next probe while the node's reachability is unknown (see where it is set).
const AUTONAT_RETRY: Duration = Duration::from_secs(90);
/// QUIC's own keep-alive (libp2p-quic's default: a PING frame every 5 s, twelve wake-ups a
/// minute per idle connection) and idle timeout (10 s). The pings above keep a live connection
/// busy, so the keep-alive mostly finds traffic younger than itself and sends nothing; the idle
/// timeout closes a connection whose peer vanished (its process killed, its home offline)
/// within 30 s, which matters most for the connection to a relay: a reservation asked for
/// again over a dead connection goes unanswered.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(15);
const QUIC_IDLE_TIMEOUT_MS: u32 = 30_000;
/// Longest time to set up one connection (TCP connect or QUIC handshake, then Noise and
/// Yamux): a few round trips even over a satellite link, well under Kademlia's 10 s per peer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(6);

/// What the node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A resolver's node.
    Resolver,
    /// An introduction server: also relays for nodes behind NAT and keeps a rendezvous point,
    /// within these limits.
    Intro(IntroConfig),
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Refuses dials of the peers set aside ([`super::stalls`]): a lookup that hears of one
    /// fails it at once instead of waiting for a handshake's timeout.
    pub(crate) dial_guard: super::dial_guard::DialGuard,
    /// Refuses connections past the configured limits (first, so that nothing else sees them).
    pub(crate) limits: connection_limits::Behaviour,
    /// Shares the open incoming connections fairly between addresses (introduction servers
    /// only): it may close one to make room, so it comes after the refusals of `limits`.
    per_ip: Toggle<crate::intro::per_ip::PerIpLimits>,
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    pub(crate) identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    /// Is this node reachable from outside? (AutoNAT v1; also answers others' probes.)
    pub(crate) autonat: autonat::Behaviour,
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
    pub(crate) rendezvous: rendezvous::client::Behaviour,
    /// Streams of protocols served outside the swarm (tunnels: [`crate::tunnel`]), opened and
    /// accepted through a [`libp2p_stream::Control`].
    pub(crate) stream: libp2p_stream::Behaviour,
    /// Keeps direct connections open a while after a tunnel used them.
    pub(crate) keep_alive: super::keep_alive::Behaviour,
}

/// The node's swarm and the events it yields.
pub(crate) type NodeSwarm = Swarm<Behaviour>;
pub(crate) type NodeEvent = SwarmEvent<BehaviourEvent>;

/// Builds the swarm for `role`: QUIC, TCP (and the in-memory transport with the
/// `test-support` feature), relayed connections, and the behaviour. Nothing listens yet.
pub(crate) fn build_swarm(
    keypair: Keypair,
    config: &P2pConfig,
    role: Role,
) -> Result<NodeSwarm, NodeError> {
    let build = |source: Box<dyn Error + Send + Sync>| NodeError::Build { source };
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| direct_transports(key, admission_limits(config, role)))
        .map_err(|e| build(e.into()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| build(e.into()))?
        .with_behaviour(|key, relay_client| {
            Behaviour::new(key, relay_client, config, role).map_err(Into::into)
        })
        .map_err(|e| build(e.into()))?
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
    Ok(swarm)
}

/// How many incoming handshakes each transport runs at once, and from one address.
fn admission_limits(config: &P2pConfig, role: Role) -> AdmissionLimits {
    AdmissionLimits {
        budget: usize::try_from(config.max_pending_incoming).unwrap_or(usize::MAX),
        per_address: match role {
            Role::Intro(limits) => Some(limits.max_pending_per_ip),
            Role::Resolver => None,
        },
    }
}

/// QUIC and TCP, each admitting incoming handshakes within its own `limits`
/// ([`super::admission`]: a TCP flood must not keep QUIC peers out), polled in turn, each with
/// a bounded handshake: a peer behind a NAT that drops unsolicited packets (yet listed in the
/// DHT) answers no SYN, and without a bound each query that tries it waits for Kademlia's
/// 10 s peer timeout. TCP dials from the listening port fall back to a fresh port when the
/// kernel refuses it ([`super::port_reuse`]).
fn direct_transports(
    key: &Keypair,
    limits: AdmissionLimits,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn Error + Send + Sync>> {
    let mut quic = quic::Config::new(key);
    quic.handshake_timeout = DIAL_TIMEOUT;
    quic.keep_alive_interval = QUIC_KEEP_ALIVE;
    quic.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
    let quic = Admission::new(quic::tokio::Transport::new(quic), limits)
        .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)))
        .boxed();
    let plain_tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let tcp = FreshPortOnConflict::new(plain_tcp)
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .timeout(DIAL_TIMEOUT);
    let tcp = Admission::new(tcp, limits)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed();
    #[cfg_attr(not(feature = "test-support"), expect(unused_mut))]
    let mut transports = vec![tcp, quic];
    // In-process peers (`/memory/N`): the large networks of the benchmarks. Nothing outside
    // this process can reach it.
    #[cfg(feature = "test-support")]
    transports.push(
        libp2p::core::transport::MemoryTransport::default()
            .upgrade(upgrade::Version::V1)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    );
    Ok(Alternate::new(transports).boxed())
}

impl Behaviour {
    fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &P2pConfig,
        role: Role,
    ) -> std::io::Result<Self> {
        let peer_id = key.public().to_peer_id();
        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                peer_id,
            )?)
        } else {
            None
        };
        let intro = match role {
            Role::Intro(limits) => Some(limits),
            Role::Resolver => None,
        };
        // No total of incoming handshakes here: each transport admits its own, within
        // `p2p.max_pending_incoming` ([`super::admission`]); one total refusing newcomers is
        // what floods filled. For the same reason an introduction server's open incoming
        // connections are counted by `per_ip`, which makes room for newcomers.
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(config.max_connections_per_peer));
        let limits = match intro {
            Some(_) => limits.with_max_established_outgoing(Some(config.max_connections)),
            None => limits.with_max_established(Some(config.max_connections)),
        };
        let per_ip = intro
            .map(|intro| crate::intro::per_ip::PerIpLimits::new(&intro, config.max_connections));
        Ok(Self {
            dial_guard: super::dial_guard::DialGuard::default(),
            limits: connection_limits::Behaviour::new(limits),
            per_ip: Toggle::from(per_ip),
            kad: kademlia(peer_id, config),
            // No address cache in identify: it would hand every listen address a peer sent
            // (its 127.0.0.1, its LAN's) to each dial of that peer, where they lead to this
            // host or to a stranger, and a wrong peer answering first ends the whole dial,
            // relayed addresses and all. Peers' addresses come from the routing table, which
            // takes only those usable from where the peer was seen (`routing`), and from
            // rendezvous registrations.
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.to_owned(), key.public()).with_cache_size(0),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_TIMEOUT),
            ),
            mdns: Toggle::from(mdns),
            autonat: autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    only_global_ips: !config.nat_probe_private_addresses,
                    // A name's owner behind NAT is unreachable until it knows it and reserves
                    // a relay slot: probe soon after start (libp2p's default: 15 s). While
                    // unsure, retry at libp2p's default: a server is asked at most once in
                    // `throttle_server_period` (90 s), so with one introduction server a retry
                    // sooner finds no server to ask; with none (a LAN-only network, a lone
                    // node) it only woke the node up three times a minute, for ever.
                    boot_delay: Duration::from_secs(3),
                    retry_interval: AUTONAT_RETRY,
                    ..autonat::Config::default()
                },
            ),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            relay_server: Toggle::from(
                intro.map(|limits| relay::Behaviour::new(peer_id, relay_limits(&limits))),
            ),
            upnp: Toggle::from(config.upnp.then(crate::nat::upnp::Upnp::default)),
            rendezvous_server: Toggle::from(
                intro.map(|limits| rendezvous::server::Behaviour::new(rendezvous_limits(&limits))),
            ),
            rendezvous: rendezvous::client::Behaviour::new(key.clone()),
            stream: libp2p_stream::Behaviour::new(),
            keep_alive: super::keep_alive::Behaviour::default(),
        })
    }
}

/// The record store's bounds: `p2p.max_stored_records` records of at most
/// [`crate::record::MAX_RECORD_BYTES`] each (docs/PROTOCOL.md section 3), that size included:
/// libp2p refuses values of `max_value_bytes` and more.
fn store_config(config: &P2pConfig) -> MemoryStoreConfig {
    MemoryStoreConfig {
        max_records: config.max_stored_records,
        max_value_bytes: crate::record::MAX_RECORD_BYTES + 1,
        ..MemoryStoreConfig::default()
    }
}

/// Kademlia on the p2pdns protocol, with the store bounded and every inbound record handed to
/// the node to check ([`kad::StoreInserts::FilterBoth`]).
fn kademlia(peer_id: PeerId, config: &P2pConfig) -> kad::Behaviour<MemoryStore> {
    let store = store_config(config);
    let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kad_config
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_query_timeout(QUERY_TIMEOUT)
        .set_max_packet_size(16 * 1024)
        // Owners republish their own records; storage nodes re-replicate what they hold.
        .set_publication_interval(None)
        .set_replication_interval(Some(Duration::from_secs(3600)))
        .set_record_ttl(None);
    kad::Behaviour::with_config(
        peer_id,
        MemoryStore::with_config(peer_id, store),
        kad_config,
    )
}

/// What an introduction server relays at most: it must stay useful to many and exhaustible by
/// none. libp2p-relay 0.22 refuses a peer only once it holds *more* than its per-peer maximum,
/// so it is given one less to grant exactly the configured number.
fn relay_limits(limits: &IntroConfig) -> relay::Config {
    let config = relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: limits.max_reservations_per_peer.saturating_sub(1),
        reservation_duration: Duration::from_secs(limits.reservation_duration_secs),
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer.saturating_sub(1),
        max_circuit_duration: Duration::from_secs(limits.circuit_duration_secs),
        max_circuit_bytes: limits.circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
        ..relay::Config::default()
    };
    // A token bucket per source peer and per source IP address: a burst of a minute's worth,
    // then one circuit every 60/rate seconds.
    let per_peer = limits.circuits_per_minute_per_peer.max(1);
    let per_ip = per_peer.saturating_mul(4);
    let every = |rate: u32| Duration::from_secs(60) / rate;
    config
        .circuit_src_per_peer(
            NonZeroU32::new(per_peer).expect("at least 1"),
            every(per_peer),
        )
        .circuit_src_per_ip(NonZeroU32::new(per_ip).expect("at least 1"), every(per_ip))
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

/// The addresses the swarm listens on, relayed ones included (the swarm keeps them: they come
/// and go with its listeners' events), in a stable order.
pub(crate) fn listen_addrs(swarm: &NodeSwarm) -> Vec<Multiaddr> {
    let mut addrs: Vec<Multiaddr> = swarm.listeners().cloned().collect();
    addrs.sort();
    addrs
}

/// The swarm's next event (its stream never ends).
pub(crate) async fn next_event(swarm: &mut NodeSwarm) -> NodeEvent {
    use futures_util::StreamExt;
    swarm
        .next()
        .await
        .expect("a swarm's event stream never ends")
}

#[cfg(test)]
mod tests {
    use libp2p::kad::{
        self, RecordKey,
        store::{MemoryStore, RecordStore},
    };

    use super::*;

    #[test]
    fn the_store_takes_records_of_the_largest_size_and_no_larger() {
        let mut store =
            MemoryStore::with_config(PeerId::random(), store_config(&P2pConfig::default()));
        let record =
            |len: usize| kad::Record::new(RecordKey::new(&len.to_be_bytes()), vec![0; len]);
        let largest = crate::record::MAX_RECORD_BYTES;
        assert!(store.put(record(largest)).is_ok(), "{largest} bytes");
        assert!(
            store.put(record(largest + 1)).is_err(),
            "{} bytes",
            largest + 1
        );
    }
}
