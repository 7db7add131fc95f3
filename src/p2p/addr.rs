//! What a multiaddr says about where it leads: its IP and that IP's scope, the peer it names,
//! whether it goes through a relay, and which transport it uses. Pure functions of addresses.

use std::net::IpAddr;

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

/// How far an address can be dialed from: the same host, the same network, anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    Host,
    Local,
    Global,
}

/// The scope of an IP address: loopback; private, link-local, carrier-grade NAT
/// (100.64.0.0/10, RFC 6598) and unique-local (RFC 4193); everything else. The one
/// classification behind the routing-table filter, the rebinding filter of `.p2p` answers and
/// the introduction server's public-address check.
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

/// The scope of a multiaddr's IP; an address without one (a DNS name) may lead anywhere.
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
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// Does the address go through a relay (`/p2p-circuit`)?
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay a relayed address goes through: the part before `/p2p-circuit`
/// (`/ip4/.../p2p/<relay>`); `None` for an address that names no relay.
pub(crate) fn relay_of(addr: &Multiaddr) -> Option<Multiaddr> {
    is_relayed(addr).then(|| {
        addr.iter()
            .take_while(|p| !matches!(p, Protocol::P2pCircuit))
            .collect()
    })
}

/// Is the address QUIC (hole punching works best over it)?
pub(crate) fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

/// Is `addr` (an address peers saw) on one of the node's own interfaces? The node is then not
/// behind a NAT. An address without an IP proves nothing.
pub(crate) fn is_own_address<'a>(
    addr: &Multiaddr,
    mut listeners: impl Iterator<Item = &'a Multiaddr>,
) -> bool {
    ip_of(addr).is_some_and(|seen| listeners.any(|own| ip_of(own) == Some(seen)))
}

/// Do `a` and `b`, addresses of `peer`, lead to the same place: the same IP address and port
/// (over TCP or QUIC, which a node listens for on one port), or for a relayed address the same
/// address? A node found at one is the node at the other.
pub(crate) fn same_place(a: &Multiaddr, b: &Multiaddr, peer: PeerId) -> bool {
    match (endpoint_of(a), endpoint_of(b)) {
        (Some(a), Some(b)) => a == b,
        _ => with_peer(a, peer) == with_peer(b, peer),
    }
}

/// The IP address and TCP or UDP port a direct address leads to.
fn endpoint_of(addr: &Multiaddr) -> Option<(IpAddr, u16)> {
    if is_relayed(addr) {
        return None;
    }
    let port = addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) | Protocol::Udp(port) => Some(port),
        _ => None,
    })?;
    Some((ip_of(addr)?, port))
}

/// `addr` ending in `/p2p/<peer>`, added unless it names a peer already.
pub(crate) fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match peer_of(addr) {
        Some(_) => addr.clone(),
        None => addr.clone().with(Protocol::P2p(peer)),
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
            ("/dns4/intro.example.org/tcp/4747", Scope::Global),
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
        assert!(!seen("/dns4/intro.example.org/tcp/4747"));
        assert!(!is_own_address(
            &"/ip4/10.1.0.2/tcp/4747".parse().unwrap(),
            [].iter()
        ));
    }

    #[test]
    fn the_peer_id_is_appended_once() {
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/198.51.100.7/udp/4747/quic-v1".parse().unwrap();
        let once = with_peer(&addr, peer);
        assert_eq!(once.to_string(), format!("{addr}/p2p/{peer}"));
        assert_eq!(with_peer(&once, peer), once);
    }
}
