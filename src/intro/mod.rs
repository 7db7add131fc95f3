//! `p2pdns intro`: the introduction server. A P2P-only node (no DNS port) that always serves the
//! DHT, so that new nodes have a well-known peer to bootstrap from; it tells nodes their observed
//! address (identify) and whether they are reachable (AutoNAT), relays for those that are not
//! (circuit relay v2, bounded), so that they can be reached and then punch holes (DCUtR), keeps
//! a rendezvous point, and answers STUN.
//!
//! It owns the server's STUN sockets and what it holds for others (`load`); the node itself
//! is [`crate::p2p`]'s (in [`Role::Intro`]) and the STUN wire protocol [`crate::stun`]'s. It
//! must not grow a DNS port, names or a control socket: those belong to the resolver daemon.
//! [`Intro::bind`] returns once every socket is bound, with the addresses to give nodes;
//! [`Intro::run`] serves until shut down.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use tokio::{net::UdpSocket, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{DhtMode, IntroConfig, MetricsConfig, P2pConfig},
    metrics::{Endpoint, MetricsError},
    p2p::{
        Node, NodeError, Role, Scope, Transport,
        addr::with_peer,
        identity::{self, IdentityError},
        ip_of, ip_scope,
    },
    state::{self, DataDirLock, LockError},
};

pub mod config;
pub(crate) mod load;
pub(crate) mod per_ip;

/// Errors that stop the introduction server.
#[derive(Debug, thiserror::Error)]
pub enum IntroError {
    /// The identity key could not be read or made.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The data directory is used by another process (a resolver daemon, say), or could not
    /// be locked.
    #[error(transparent)]
    DataDir(#[from] LockError),
    /// The P2P node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A STUN socket could not be bound.
    #[error("failed to listen for STUN on UDP {addr}")]
    Stun {
        /// The `--stun-listen` (or default) address.
        addr: SocketAddr,
        /// Why the bind failed.
        #[source]
        source: std::io::Error,
    },
    /// A STUN server task died (it panicked) while the server ran.
    #[error("a STUN server stopped")]
    StunStopped(#[source] tokio::task::JoinError),
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The metrics endpoint's task died (it panicked) while the server ran.
    #[error("the metrics endpoint stopped")]
    MetricsStopped(#[source] tokio::task::JoinError),
}

/// An introduction server whose sockets are bound.
pub struct Intro {
    node: Node,
    /// The data directory, this server's while it lives.
    _data_dir_lock: DataDirLock,
    stun: Vec<UdpSocket>,
    stun_addrs: Vec<SocketAddr>,
    bootstrap_addrs: Vec<Multiaddr>,
    /// The metrics endpoint, when `[metrics]` is on.
    metrics: Option<Endpoint>,
}

impl Intro {
    /// Loads (or makes) the identity in `data_dir`, binds the P2P node with `config` (always a
    /// DHT server, whatever the file says) and `limits`, and a STUN socket on each of
    /// `stun_listen`; logs the addresses nodes join with.
    pub async fn bind(
        mut config: P2pConfig,
        limits: IntroConfig,
        data_dir: &Path,
        stun_listen: &[SocketAddr],
    ) -> Result<Self, IntroError> {
        // It exists to be asked: always a DHT server.
        config.dht_mode = DhtMode::Server;
        identity::create_data_dir(data_dir)?;
        let data_dir_lock = state::take_data_dir(data_dir)?;
        let keypair = identity::load_or_create(data_dir)?;
        let node = Node::bind_as(keypair.into(), &config, Role::Intro(limits))
            .await?
            .keep_records_in(data_dir);
        // STUN on UDP: ordinary clients (and nodes) learn their public address and port.
        let mut stun = Vec::new();
        let mut stun_addrs = Vec::new();
        for &addr in stun_listen {
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|source| IntroError::Stun { addr, source })?;
            let bound = socket.local_addr().unwrap_or(addr);
            info!(addr = %bound, "STUN listening (UDP)");
            stun.push(socket);
            stun_addrs.push(bound);
        }
        let peer_id = node.handle().peer_id();
        info!(%peer_id, "introduction server identity");
        let bootstrap_addrs = if config.external_addresses.is_empty() {
            join_addrs(
                &config.listen_addrs(),
                &node.listen_addrs(),
                &interface_ips(),
            )
        } else {
            let external = config.external_addresses.iter();
            external.map(|a| with_peer(a, peer_id)).collect()
        };
        for addr in &bootstrap_addrs {
            info!(%addr, "nodes join with --bootstrap");
        }
        if config.external_addresses.is_empty() && !bootstrap_addrs.iter().any(is_public) {
            warn!(
                "no public address: the addresses above may not be reachable from other \
                 networks; set --external-addr (or p2p.external_addresses) to the address \
                 nodes outside should dial"
            );
        }
        Ok(Self {
            node,
            _data_dir_lock: data_dir_lock,
            stun,
            stun_addrs,
            bootstrap_addrs,
            metrics: None,
        })
    }

    /// Serves metrics as `config` says (nothing when it is off): the node's, with the relay
    /// reservations and circuits and the rendezvous registrations held for others.
    ///
    /// # Errors
    /// [`IntroError::Metrics`] when `metrics.listen` cannot be bound.
    pub async fn with_metrics(mut self, config: &MetricsConfig) -> Result<Self, IntroError> {
        if let Some(mut endpoint) = Endpoint::bind(config).await? {
            self.node = self.node.with_metrics(Some(endpoint.intro_meters()));
            self.metrics = Some(endpoint);
        }
        Ok(self)
    }

    /// The address of the metrics endpoint, when it is on (port 0 resolved).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(Endpoint::local_addr)
    }

    /// The server's libp2p identity.
    pub fn peer_id(&self) -> PeerId {
        self.node.handle().peer_id()
    }

    /// The addresses nodes join with (`--bootstrap`): the external addresses when configured,
    /// else the listen addresses; each ends in `/p2p/<peer id>`.
    pub fn bootstrap_addrs(&self) -> &[Multiaddr] {
        &self.bootstrap_addrs
    }

    /// The addresses the P2P node listens on, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.node.listen_addrs()
    }

    /// The UDP addresses STUN is answered on.
    pub fn stun_addrs(&self) -> &[SocketAddr] {
        &self.stun_addrs
    }

    /// Serves until `shutdown` is cancelled.
    ///
    /// # Errors
    /// [`IntroError::StunStopped`] when a STUN server task panicked (the node stops with it).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IntroError> {
        let mut stun = JoinSet::new();
        for socket in self.stun {
            stun.spawn(crate::stun::serve(socket, shutdown.clone()));
        }
        let mut metrics = JoinSet::new();
        if let Some(endpoint) = self.metrics {
            metrics.spawn(endpoint.serve(shutdown.clone()));
        }
        crate::os::systemd::notify(&format!(
            "READY=1\nSTATUS=introduction server {}, {} addresses",
            self.node.handle().peer_id(),
            self.bootstrap_addrs.len()
        ));
        // STUN servers return only once `shutdown` is cancelled: one that ends before has died.
        let result = tokio::select! {
            () = self.node.run(shutdown.clone()) => Ok(()),
            Some(Err(error)) = stun.join_next() => Err(IntroError::StunStopped(error)),
            Some(Err(error)) = metrics.join_next() => Err(IntroError::MetricsStopped(error)),
        };
        crate::os::systemd::notify("STOPPING=1");
        stun.shutdown().await;
        metrics.shutdown().await;
        result
    }
}

/// The addresses nodes join with when no external address is configured: the reported listen
/// addresses, and for a listener on a wildcard address (`0.0.0.0`, `::`), which reports its
/// loopback address first, the same port on each of `interfaces` of its family. Loopback ones
/// only when there is nothing else: a node on another machine cannot use them.
fn join_addrs(
    listen: &[Multiaddr],
    reported: &[Multiaddr],
    interfaces: &[IpAddr],
) -> Vec<Multiaddr> {
    let is_loopback = |a: &Multiaddr| ip_of(a).is_some_and(|ip| ip.is_loopback());
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for addr in reported {
        if is_loopback(addr) && on_wildcard(listen, addr) {
            let family = ip_of(addr).map(|ip| ip.is_ipv4());
            let usable = interfaces.iter().filter(|ip| {
                Some(ip.is_ipv4()) == family && !ip.is_loopback() && !is_link_local(**ip)
            });
            for ip in usable {
                let moved = with_ip(addr, *ip);
                if !addrs.contains(&moved) {
                    addrs.push(moved);
                }
            }
        }
        if !addrs.contains(addr) {
            addrs.push(addr.clone());
        }
    }
    let outside: Vec<Multiaddr> = addrs.iter().filter(|a| !is_loopback(a)).cloned().collect();
    if outside.is_empty() { addrs } else { outside }
}

/// A link-local address needs its interface named to be dialed: no use to a node elsewhere.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Was `addr` reported by a listener on a wildcard address of its family, transport and port
/// (a configured port 0 is any)?
fn on_wildcard(listen: &[Multiaddr], addr: &Multiaddr) -> bool {
    let family = ip_of(addr).map(|ip| ip.is_ipv4());
    let port = |a: &Multiaddr| {
        a.iter().find_map(|p| match p {
            Protocol::Tcp(port) | Protocol::Udp(port) => Some(port),
            _ => None,
        })
    };
    listen.iter().any(|l| {
        ip_of(l).is_some_and(|ip| ip.is_unspecified() && Some(ip.is_ipv4()) == family)
            && Transport::of(l) == Transport::of(addr)
            && (port(l) == Some(0) || port(l) == port(addr))
    })
}

/// `addr` with its IP address replaced by `ip` (of the same family).
fn with_ip(addr: &Multiaddr, ip: IpAddr) -> Multiaddr {
    addr.iter()
        .map(|p| match (p, ip) {
            (Protocol::Ip4(_), IpAddr::V4(v4)) => Protocol::Ip4(v4),
            (Protocol::Ip6(_), IpAddr::V6(v6)) => Protocol::Ip6(v6),
            (other, _) => other,
        })
        .collect()
}

/// This host's interface addresses (none when they cannot be listed).
fn interface_ips() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|i| {
            let address = i.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect()
}

/// Is the address one that hosts elsewhere on the internet can dial? (Global scope, and not
/// unspecified or a documentation range.)
fn is_public(addr: &Multiaddr) -> bool {
    ip_of(addr).is_some_and(|ip| {
        let documentation = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_documentation());
        ip_scope(ip) == Scope::Global && !ip.is_unspecified() && !documentation
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_addresses_count_as_public() {
        for (addr, public) in [
            ("/ip4/192.0.2.1/tcp/4747", false),
            ("/ip4/10.1.2.3/udp/4747/quic-v1", false),
            ("/ip4/100.100.1.1/tcp/4747", false),
            ("/ip4/127.0.0.1/tcp/4747", false),
            ("/ip4/8.8.8.8/tcp/4747", true),
            ("/ip6/fd00::1/tcp/4747", false),
            ("/ip6/2a00:1450::1/tcp/4747", true),
        ] {
            assert_eq!(is_public(&addr.parse().unwrap()), public, "{addr}");
        }
    }

    /// Started without --external-addr on `0.0.0.0`, the server printed only loopback
    /// addresses for nodes to join with: a wildcard listener reports its loopback address
    /// first. The interface addresses are given instead, loopback only when there is nothing
    /// else.
    #[test]
    fn nodes_are_told_the_interface_addresses_of_a_wildcard_listener() {
        let peer = PeerId::random();
        let parse = |list: &[&str]| -> Vec<Multiaddr> {
            list.iter()
                .map(|a| a.replace("PEER", &peer.to_string()).parse().unwrap())
                .collect()
        };
        let listen = parse(&[
            "/ip4/0.0.0.0/tcp/4747",
            "/ip4/0.0.0.0/udp/4747/quic-v1",
            "/ip6/::/tcp/4747",
            "/ip4/127.0.0.2/tcp/5000",
        ]);
        let reported = parse(&[
            "/ip4/127.0.0.1/tcp/4747/p2p/PEER",
            "/ip4/127.0.0.1/udp/4747/quic-v1/p2p/PEER",
            "/ip6/::1/tcp/4747/p2p/PEER",
            "/ip4/127.0.0.2/tcp/5000/p2p/PEER",
        ]);
        let interfaces: Vec<IpAddr> = [
            "127.0.0.1",
            "192.168.1.20",
            "::1",
            "fe80::1",
            "2001:db8::20",
        ]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
        assert_eq!(
            join_addrs(&listen, &reported, &interfaces),
            parse(&[
                "/ip4/192.168.1.20/tcp/4747/p2p/PEER",
                "/ip4/192.168.1.20/udp/4747/quic-v1/p2p/PEER",
                "/ip6/2001:db8::20/tcp/4747/p2p/PEER",
            ])
        );
        // Only loopback interfaces: loopback it is, rather than nothing.
        let lonely: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        assert_eq!(join_addrs(&listen, &reported, &lonely), reported);
    }

    /// The server runs in-process: bound on port 0, it tells its addresses without a log.
    #[tokio::test]
    async fn bind_tells_the_addresses_then_run_serves_until_shutdown() {
        let dir = std::env::temp_dir().join(format!("p2pdns-intro-{}", rand::random::<u64>()));
        let config = P2pConfig {
            listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]),
            mdns: false,
            upnp: false,
            ..P2pConfig::default()
        };
        let stun: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let intro = Intro::bind(config, IntroConfig::default(), &dir, &[stun])
            .await
            .expect("the introduction server binds");
        let peer = intro.peer_id();
        let addrs = intro.bootstrap_addrs().to_vec();
        assert_eq!(addrs, intro.listen_addrs());
        assert!(
            addrs
                .iter()
                .all(|a| a.to_string().ends_with(&format!("/p2p/{peer}"))
                    && !a.to_string().contains("/tcp/0/")),
            "{addrs:?}"
        );
        let stun = intro.stun_addrs()[0];
        assert_ne!(stun.port(), 0);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(intro.run(shutdown.clone()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let seen = crate::stun::binding(&client, stun, std::time::Duration::from_secs(5)).await;
        assert_eq!(seen.unwrap(), client.local_addr().unwrap());
        shutdown.cancel();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
