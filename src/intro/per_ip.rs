//! An introduction server's open incoming connections, shared fairly between addresses (IPv6:
//! /64s, which one host gets whole) and address groups (IPv4 /24s, IPv6 /48s).
//!
//! libp2p's `connection_limits` counts connections in all and per peer only, and a peer
//! identity costs nothing: connections from a few addresses, handshakes done and nothing asked
//! after, filled `p2p.max_connections` and kept every newcomer out. So one address holds at
//! most `intro.max_connections_per_ip`, and a full budget refuses no one outright: the
//! newcomer takes the place of a connection of the busiest group, then address, then of the
//! address that opened the most lately, the oldest of those, which is closed; unless the
//! newcomer ranks as high itself, in which case it is the one refused
//! ([`crate::p2p::fair_share::FairShare`], the rule the transports apply to handshakes in
//! flight, before this). A connection's use is not visible here; its address's behaviour is:
//! addresses that open again what is closed displace one another, and a peer that came once,
//! newcomer or long held, stays.
//!
//! Incoming connections still in their handshake are admitted by the transports
//! ([`crate::p2p::admission`]); outgoing ones (the server's own DHT queries, AutoNAT dial-backs)
//! are bounded by `connection_limits`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    net::IpAddr,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm,
        ListenFailure, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
        dummy,
    },
};

use super::config::IntroConfig;
use crate::p2p::fair_share::{FairShare, Refused, Source};

/// Connections closed to make room that may be closing at once; past it newcomers are refused
/// until some are gone (so the open connections exceed `p2p.max_connections` by this at most).
pub(crate) const CLOSING_AT_MOST: usize = 64;

/// Why a connection was refused, for the swarm's `IncomingConnectionError`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Exceeded {
    /// Its address holds as many as one may.
    #[error("open connections from {0} are at their limit of {1} (intro.max_connections_per_ip)")]
    Address(IpAddr, u32),
    /// All are taken and its address group holds the most.
    #[error(
        "open connections are at their limit of {0} (p2p.max_connections), and the address group of {1} holds the most"
    )]
    Busiest(u32, IpAddr),
    /// All are taken and enough are closing already.
    #[error(
        "open connections are at their limit of {0} (p2p.max_connections), and {CLOSING_AT_MOST} are closing to make room"
    )]
    Closing(u32),
}

/// The fair share of open incoming connections, as a behaviour of the node's swarm
/// (introduction servers only).
#[derive(Debug)]
pub(crate) struct PerIpLimits {
    max_connections: u32,
    /// The open incoming connections counted, by age; bounded by `p2p.max_connections`.
    open: FairShare<(ConnectionId, PeerId)>,
    /// The ticket of each connection in `open`.
    tickets: HashMap<ConnectionId, u64>,
    /// Connections displaced and not closed yet, at most [`CLOSING_AT_MOST`].
    closing: HashSet<ConnectionId>,
    /// Connections to ask the swarm to close (taken from `closing` as they are displaced).
    to_close: VecDeque<(PeerId, ConnectionId)>,
}

impl PerIpLimits {
    /// At most `max_connections` (`p2p.max_connections`, at least 1) open incoming connections,
    /// `config.max_connections_per_ip` of them from one address.
    pub(crate) fn new(config: &IntroConfig, max_connections: u32) -> Self {
        Self {
            max_connections,
            open: FairShare::new(
                usize::try_from(max_connections).unwrap_or(usize::MAX),
                Some(config.max_connections_per_ip),
            )
            .with_opens(),
            tickets: HashMap::new(),
            closing: HashSet::new(),
            to_close: VecDeque::new(),
        }
    }

    /// Counts connection `id` of `peer` from `source`, displacing another if need be.
    fn admit(&mut self, id: ConnectionId, peer: PeerId, source: Source) -> Result<(), Exceeded> {
        if self.open.is_full() && self.closing.len() >= CLOSING_AT_MOST {
            return Err(Exceeded::Closing(self.max_connections));
        }
        match self.open.admit(source, (id, peer)) {
            Err(Refused::AddressLimit) => Err(Exceeded::Address(
                source.address,
                self.open.per_address().unwrap_or(u32::MAX),
            )),
            Err(Refused::Busiest) => Err(Exceeded::Busiest(self.max_connections, source.address)),
            Ok((ticket, displaced)) => {
                self.tickets.insert(id, ticket);
                if let Some((id, peer)) = displaced {
                    self.tickets.remove(&id);
                    self.closing.insert(id);
                    self.to_close.push_back((peer, id));
                }
                Ok(())
            }
        }
    }

    /// Forgets connection `id`, open or closing.
    fn release(&mut self, id: ConnectionId) {
        if let Some(ticket) = self.tickets.remove(&id) {
            self.open.remove(ticket);
        }
        self.closing.remove(&id);
    }
}

impl NetworkBehaviour for PerIpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Relayed connections take no socket of this server's: never counted.
        if let Some(source) = Source::of(remote_addr) {
            // Counted now rather than once every behaviour accepted it: a refusal by a later
            // one comes back as a `ListenFailure`, which releases it.
            self.admit(connection_id, peer, source)
                .map_err(ConnectionDenied::new)?;
        }
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
            // A connection a later behaviour refused, or one that closed.
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

    // The swarm polls its behaviours again after each connection it hands them, so a
    // connection displaced there is asked to close without a waker.
    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.to_close.pop_front() {
            Some((peer_id, id)) => Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(id),
            }),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    /// Past its address's limit a connection is refused, others' addresses are not; a full
    /// budget closes the oldest connection of the busiest group for a newcomer from another;
    /// a place comes back when its connection goes, however it goes.
    #[test]
    fn one_address_fills_only_its_own_places() {
        let config = IntroConfig {
            max_connections_per_ip: 2,
            ..IntroConfig::default()
        };
        let mut limits = PerIpLimits::new(&config, 3);
        let local = addr("/ip4/127.0.0.1/tcp/4747");
        let one = addr("/ip4/192.0.2.1/tcp/5000");
        let other = addr("/ip4/198.51.100.2/tcp/5000");
        let third = addr("/ip4/203.0.113.3/tcp/5000");
        let ids: Vec<ConnectionId> = (1..=8).map(ConnectionId::new_unchecked).collect();
        let peers: Vec<PeerId> = ids.iter().map(|_| PeerId::random()).collect();
        let open = |limits: &mut PerIpLimits, i: usize, remote: &Multiaddr| {
            limits
                .handle_established_inbound_connection(ids[i], peers[i], &local, remote)
                .is_ok()
        };
        assert!(open(&mut limits, 0, &one));
        assert!(open(&mut limits, 1, &one));
        assert!(!open(&mut limits, 2, &one), "past the address's limit");
        assert!(open(&mut limits, 3, &other));
        // Full: the newcomer from a third group displaces the oldest of 192.0.2.0/24.
        assert!(open(&mut limits, 4, &third));
        let close = |limits: &mut PerIpLimits| match limits.poll(&mut Context::from_waker(
            futures_util::task::noop_waker_ref(),
        )) {
            Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(id),
            }) => Some((peer_id, id)),
            _ => None,
        };
        assert_eq!(close(&mut limits), Some((peers[0], ids[0])));
        assert_eq!(close(&mut limits), None);
        // Every group holds one now, and 192.0.2.1 opened the most: a newcomer from it is
        // refused.
        assert!(!open(&mut limits, 5, &one));
        // A refused connection or a closed one frees its place.
        let error = libp2p::swarm::ListenError::Aborted;
        limits.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local,
            send_back_addr: &other,
            error: &error,
            connection_id: ids[3],
            peer_id: Some(peers[3]),
        }));
        assert!(open(&mut limits, 5, &other));
        // Relayed connections are not this server's sockets: never counted.
        let relayed = addr(
            "/ip4/192.0.2.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
        );
        assert!(open(&mut limits, 6, &relayed));
        assert!(open(&mut limits, 7, &relayed));
        assert_eq!(limits.tickets.len(), 3);
        assert_eq!(limits.closing.len(), 1);
    }
}
