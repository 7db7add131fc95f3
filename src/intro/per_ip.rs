//! Per-address connection limits of an introduction server: incoming connections still in their
//! handshake, and open ones, per source IP address (IPv6: per /64, which one host gets whole).
//! libp2p's `connection_limits` counts them in all and per peer only, and a peer identity costs
//! nothing: 300 idle TCP connections from one address filled every handshake slot and kept
//! every other node out, QUIC included. A connection past its address's limit is refused at
//! once, before it takes a slot of the totals.
//!
//! Connections that never finish their handshake are cut by the transports' handshake timeout
//! (`DIAL_TIMEOUT` in [`crate::p2p`]), which frees their slot here.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv6Addr},
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    multiaddr::Protocol,
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure,
        NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};

use super::config::IntroConfig;

/// Why a connection was refused, for the swarm's `IncomingConnectionError`.
#[derive(Debug, thiserror::Error)]
#[error("{kind} from {source_ip} are at their limit of {limit} (intro.{key})")]
pub(crate) struct Exceeded {
    kind: &'static str,
    source_ip: IpAddr,
    limit: u32,
    key: &'static str,
}

/// Connections counted for one source address.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    pending: u32,
    established: u32,
}

/// The per-address limits, as a behaviour of the node's swarm (introduction servers only).
#[derive(Debug)]
pub(crate) struct PerIpLimits {
    max_pending: u32,
    max_established: u32,
    /// The source of every connection counted, and whether it is open (else pending).
    sources: HashMap<ConnectionId, (IpAddr, bool)>,
    /// Counts per source; an address with none is removed.
    counts: HashMap<IpAddr, Counts>,
}

impl PerIpLimits {
    pub(crate) fn new(config: &IntroConfig) -> Self {
        Self {
            max_pending: config.max_pending_per_ip,
            max_established: config.max_connections_per_ip,
            sources: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    /// Forgets connection `id`, from the count it is in.
    fn release(&mut self, id: ConnectionId) {
        let Some((ip, established)) = self.sources.remove(&id) else {
            return;
        };
        if let Some(counts) = self.counts.get_mut(&ip) {
            let count = if established {
                &mut counts.established
            } else {
                &mut counts.pending
            };
            *count = count.saturating_sub(1);
            if *counts == Counts::default() {
                self.counts.remove(&ip);
            }
        }
    }

    /// Counts connection `id` from `ip` as open (`established`) or pending, unless `ip` holds
    /// as many as its limit allows.
    fn admit(
        &mut self,
        id: ConnectionId,
        ip: IpAddr,
        established: bool,
    ) -> Result<(), ConnectionDenied> {
        let counts = self.counts.entry(ip).or_default();
        let (count, limit, kind, key) = if established {
            let kind = "open connections";
            (
                &mut counts.established,
                self.max_established,
                kind,
                "max_connections_per_ip",
            )
        } else {
            let kind = "connections in their handshake";
            (
                &mut counts.pending,
                self.max_pending,
                kind,
                "max_pending_per_ip",
            )
        };
        // Limits are at least 1 (config ranges): a refused address holds a connection, so
        // its entry is not left empty.
        if *count >= limit {
            return Err(ConnectionDenied::new(Exceeded {
                kind,
                source_ip: ip,
                limit,
                key,
            }));
        }
        *count += 1;
        self.sources.insert(id, (ip, established));
        Ok(())
    }
}

/// The address a connection is counted under: its IP, or its /64 for IPv6; `None` for a
/// relayed connection (it takes no socket of this server's) or an address without an IP.
fn source_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => {
                let prefix = u128::from(ip) & !((1u128 << 64) - 1);
                Some(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        },
        _ => None,
    }
}

impl NetworkBehaviour for PerIpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = source_of(remote_addr) else {
            return Ok(());
        };
        self.admit(connection_id, ip, false)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.release(connection_id);
        let Some(ip) = source_of(remote_addr) else {
            return Ok(dummy::ConnectionHandler);
        };
        // Counted now rather than once every behaviour accepted it: a refusal by a later one
        // comes back as a `ListenFailure`, which releases it.
        self.admit(connection_id, ip, true)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            // A handshake that failed or timed out, or a connection a later behaviour refused.
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.release(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn connections_are_counted_per_address_and_per_ipv6_64() {
        for (text, source) in [
            ("/ip4/192.0.2.7/tcp/4747", Some("192.0.2.7")),
            (
                "/ip6/2001:db8:1:2:3:4:5:6/udp/1/quic-v1",
                Some("2001:db8:1:2::"),
            ),
            ("/ip6/::ffff:192.0.2.7/tcp/1", Some("192.0.2.7")),
            (
                "/ip4/192.0.2.7/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
                None,
            ),
            ("/dns4/example.com/tcp/1", None),
        ] {
            let source = source.map(|s| s.parse::<IpAddr>().unwrap());
            assert_eq!(source_of(&addr(text)), source, "{text}");
        }
    }

    /// Past its address's limits a connection is refused; others' addresses are not; a slot
    /// comes back when its connection goes, however it goes.
    #[test]
    fn one_address_fills_only_its_own_slots() {
        let config = IntroConfig {
            max_pending_per_ip: 2,
            max_connections_per_ip: 1,
            ..IntroConfig::default()
        };
        let mut limits = PerIpLimits::new(&config);
        let local = addr("/ip4/127.0.0.1/tcp/4747");
        let one = addr("/ip4/192.0.2.1/tcp/5000");
        let other = addr("/ip4/192.0.2.2/tcp/5000");
        let ids: Vec<ConnectionId> = (1..=6).map(ConnectionId::new_unchecked).collect();
        let pending = |limits: &mut PerIpLimits, id, remote: &Multiaddr| {
            limits
                .handle_pending_inbound_connection(id, &local, remote)
                .is_ok()
        };
        assert!(pending(&mut limits, ids[0], &one));
        assert!(pending(&mut limits, ids[1], &one));
        assert!(!pending(&mut limits, ids[2], &one));
        assert!(pending(&mut limits, ids[3], &other));
        // One finishes its handshake: a pending slot is free, the open one is taken.
        let peer = PeerId::random();
        assert!(
            limits
                .handle_established_inbound_connection(ids[0], peer, &local, &one)
                .is_ok()
        );
        assert!(pending(&mut limits, ids[2], &one));
        assert!(
            limits
                .handle_established_inbound_connection(ids[1], peer, &local, &one)
                .is_err()
        );
        // A refused or failed handshake frees its slot.
        let error = libp2p::swarm::ListenError::Aborted;
        limits.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local,
            send_back_addr: &one,
            error: &error,
            connection_id: ids[2],
            peer_id: None,
        }));
        assert_eq!(
            limits.counts.get(&one_ip()).copied().unwrap_or_default(),
            Counts {
                pending: 0,
                established: 1
            }
        );
        // Relayed connections are not this server's sockets: never counted.
        let relayed = addr(
            "/ip4/192.0.2.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
        );
        assert!(pending(&mut limits, ids[4], &relayed));
        assert!(pending(&mut limits, ids[5], &relayed));
        assert_eq!(limits.counts.len(), 2);
    }

    fn one_ip() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }
}
