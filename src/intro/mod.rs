//! `p2pdns intro`: the introduction server. A P2P-only node (no DNS port) that always serves the
//! DHT, so that new nodes have a well-known peer to bootstrap from; it tells nodes their observed
//! address (identify) and whether they are reachable (AutoNAT), and relays for those that are
//! not (circuit relay v2, bounded), so that they can be reached and then punch holes (DCUtR).

use std::{net::SocketAddr, path::PathBuf};

use libp2p::{Multiaddr, multiaddr::Protocol};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{DhtMode, IntroConfig, P2pConfig},
    p2p::{
        Node, NodeError, Role, Scope,
        identity::{self, IdentityError},
        ip_of, ip_scope,
    },
};

/// Errors that stop the introduction server.
#[derive(Debug, thiserror::Error)]
pub enum IntroError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("failed to listen for STUN on UDP {addr}")]
    Stun {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the introduction server until `shutdown` is cancelled.
pub async fn run(
    mut config: P2pConfig,
    limits: IntroConfig,
    data_dir: PathBuf,
    stun_listen: Vec<SocketAddr>,
    shutdown: CancellationToken,
) -> Result<(), IntroError> {
    // It exists to be asked: always a DHT server, whatever the file says.
    config.dht_mode = DhtMode::Server;
    identity::create_data_dir(&data_dir)?;
    let keypair = identity::load_or_create(&data_dir)?;
    let node = Node::bind_as(keypair.into(), &config, Role::Intro(limits)).await?;
    // STUN on UDP: ordinary clients (and nodes) learn their public address and port.
    let mut stun = Vec::new();
    for addr in stun_listen {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| IntroError::Stun { addr, source })?;
        info!(addr = %socket.local_addr().unwrap_or(addr), "STUN listening (UDP)");
        stun.push(tokio::spawn(crate::stun::serve(socket, shutdown.clone())));
    }
    let peer_id = node.handle().peer_id();
    info!(%peer_id, "introduction server identity");
    let advertised = if config.external_addresses.is_empty() {
        node.listen_addrs()
    } else {
        config
            .external_addresses
            .iter()
            .map(|a| with_peer(a, peer_id))
            .collect()
    };
    for addr in &advertised {
        info!(%addr, "nodes join with --bootstrap");
    }
    if config.external_addresses.is_empty() && !advertised.iter().any(is_public) {
        warn!(
            "no public address: nodes outside this network cannot reach this server; \
             set --external-addr (or p2p.external_addresses) to the address they should dial"
        );
    }
    crate::os::systemd::notify(&format!(
        "READY=1\nSTATUS=introduction server {peer_id}, {} addresses",
        advertised.len()
    ));
    node.run(shutdown).await;
    crate::os::systemd::notify("STOPPING=1");
    for task in stun {
        let _ = task.await;
    }
    Ok(())
}

fn with_peer(addr: &Multiaddr, peer: libp2p::PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
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

    #[test]
    fn the_peer_id_is_appended_once() {
        let peer = libp2p::PeerId::random();
        let addr: Multiaddr = "/ip4/198.51.100.7/udp/4747/quic-v1".parse().unwrap();
        let once = with_peer(&addr, peer);
        assert_eq!(once.to_string(), format!("{addr}/p2p/{peer}"));
        assert_eq!(with_peer(&once, peer), once);
    }
}
