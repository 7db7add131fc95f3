//! Direct connections kept open after a tunnel used them.
//!
//! libp2p closes a connection that nothing has kept busy for a minute (the swarm's idle
//! timeout). For a tunnel between two homes that is the hole-punched connection: once it is
//! gone, the next tunnel connection needs the introduction server again (a relayed connection,
//! then a new hole punch), and while the introduction server is down the site cannot be opened
//! at all, though both homes are still there. So each side of a tunnel marks its peer when a
//! tunnel stream opens and when one ends ([`KeepAlive::mark`]), and its direct connections to
//! that peer stay open until [`KEEP_AFTER_USE`] after the last mark. A relayed connection is
//! never kept: the relay limits it anyway, and the next use should try to go direct.
//!
//! A kept connection costs its pings (one each way every 25 s) and its buffers. The marks are
//! bounded by [`MAX_PEERS`]; past it the mark that would end soonest goes first.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse, upgrade::DeniedUpgrade},
    swarm::{
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
        NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, ToSwarm,
        handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound},
    },
};
use tokio::time::Instant;

use super::addr::is_relayed;

/// How long a peer's direct connections stay open after a tunnel stream with it last opened or
/// ended.
pub(crate) const KEEP_AFTER_USE: Duration = Duration::from_secs(600);
/// Peers marked at once, at most.
pub(crate) const MAX_PEERS: usize = 1024;

/// The peers whose direct connections are kept open, each until a time. Cloned into the node's
/// handle (where tunnels mark peers) and into each connection's handler (which reads it).
#[derive(Debug, Clone, Default)]
pub(crate) struct KeepAlive {
    until: Arc<Mutex<HashMap<PeerId, Instant>>>,
}

impl KeepAlive {
    /// Keeps `peer`'s direct connections open until [`KEEP_AFTER_USE`] from now (a later mark
    /// extends it). Forgets the marks that ended; past [`MAX_PEERS`], the one ending soonest.
    pub(crate) fn mark(&self, peer: PeerId) {
        let now = Instant::now();
        let mut until = self.lock();
        until.retain(|_, end| *end > now);
        if until.len() >= MAX_PEERS
            && !until.contains_key(&peer)
            && let Some(soonest) = until.iter().min_by_key(|(_, end)| **end).map(|(p, _)| *p)
        {
            until.remove(&soonest);
        }
        until.insert(peer, now + KEEP_AFTER_USE);
    }

    /// Are `peer`'s direct connections to be kept open now?
    pub(crate) fn wanted(&self, peer: &PeerId) -> bool {
        self.lock()
            .get(peer)
            .is_some_and(|end| *end > Instant::now())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, Instant>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The behaviour: hands each connection a [`Handler`] that keeps it open while its peer is
/// marked and the connection is direct. It has no protocol and no event of its own.
#[derive(Debug, Default)]
pub(crate) struct Behaviour {
    keep: KeepAlive,
}

impl Behaviour {
    #[cfg(test)]
    fn new(keep: KeepAlive) -> Self {
        Self { keep }
    }

    /// The marks its handlers read, for the node's handle.
    pub(crate) fn marks(&self) -> KeepAlive {
        self.keep.clone()
    }

    fn handler(&self, peer: PeerId, direct: bool) -> Handler {
        Handler {
            keep: self.keep.clone(),
            peer,
            direct,
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // A connection relayed to this node arrived at `<relay>/p2p-circuit`.
        let direct = !is_relayed(local_addr) && !is_relayed(remote_addr);
        Ok(self.handler(peer, direct))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, !is_relayed(addr)))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: Infallible) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// One connection's part: keeps it open while [`KeepAlive::wanted`] says so for its peer and
/// it is direct. libp2p asks at each poll of the connection; a mark that ended is noticed at
/// the next one (the pings poll it), and the idle timeout runs from there.
#[derive(Debug)]
pub(crate) struct Handler {
    keep: KeepAlive,
    peer: PeerId,
    direct: bool,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.direct && self.keep.wanted(&self.peer)
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => match protocol {},
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol, ..
            }) => match protocol {},
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_mark_keeps_a_peer_for_a_while_and_the_marks_are_bounded() {
        let keep = KeepAlive::default();
        let peer = PeerId::random();
        assert!(!keep.wanted(&peer));
        keep.mark(peer);
        assert!(keep.wanted(&peer));
        tokio::time::advance(KEEP_AFTER_USE - Duration::from_secs(1)).await;
        assert!(keep.wanted(&peer));
        // A later mark extends it.
        keep.mark(peer);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(keep.wanted(&peer));
        tokio::time::advance(KEEP_AFTER_USE).await;
        assert!(!keep.wanted(&peer));

        let first = PeerId::random();
        keep.mark(first);
        tokio::time::advance(Duration::from_secs(1)).await;
        let others: Vec<PeerId> = (1..MAX_PEERS).map(|_| PeerId::random()).collect();
        for other in &others {
            keep.mark(*other);
        }
        assert!(keep.wanted(&first) && others.iter().all(|o| keep.wanted(o)));
        // One more: the mark ending soonest (the first) goes.
        let last = PeerId::random();
        keep.mark(last);
        assert!(!keep.wanted(&first) && keep.wanted(&last));
        assert_eq!(keep.lock().len(), MAX_PEERS);
    }

    #[test]
    fn only_direct_connections_of_marked_peers_are_kept() {
        let keep = KeepAlive::default();
        let mut behaviour = Behaviour::new(keep.clone());
        let peer = PeerId::random();
        let direct: Multiaddr = "/ip4/198.51.100.7/udp/4747/quic-v1".parse().unwrap();
        let relayed: Multiaddr = format!(
            "/ip4/198.51.100.9/tcp/4747/p2p/{}/p2p-circuit",
            PeerId::random()
        )
        .parse()
        .unwrap();
        let id = ConnectionId::new_unchecked(1);
        let out = |b: &mut Behaviour, addr: &Multiaddr| {
            b.handle_established_outbound_connection(
                id,
                peer,
                addr,
                Endpoint::Dialer,
                PortUse::Reuse,
            )
            .unwrap()
        };
        let (out_direct, out_relayed) =
            (out(&mut behaviour, &direct), out(&mut behaviour, &relayed));
        let local: Multiaddr = "/ip4/10.0.0.2/tcp/23456".parse().unwrap();
        let in_direct = behaviour
            .handle_established_inbound_connection(id, peer, &local, &direct)
            .unwrap();
        let in_relayed = behaviour
            .handle_established_inbound_connection(
                id,
                peer,
                &relayed,
                &format!("/p2p/{peer}").parse().unwrap(),
            )
            .unwrap();
        let kept = |h: &Handler| h.connection_keep_alive();
        assert!(!kept(&out_direct) && !kept(&in_direct));
        keep.mark(peer);
        assert!(kept(&out_direct) && kept(&in_direct));
        assert!(!kept(&out_relayed) && !kept(&in_relayed));
        let stranger = behaviour
            .handle_established_outbound_connection(
                id,
                PeerId::random(),
                &direct,
                Endpoint::Dialer,
                PortUse::Reuse,
            )
            .unwrap();
        assert!(!kept(&stranger));
    }
}
