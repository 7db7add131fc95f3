//! Refuses dials to the peers set aside ([`super::stalls`]) at once, so that a lookup that
//! hears of one from another peer fails it instead of waiting for a handshake to time out (5 s
//! over QUIC, past a lookup's 2 s budget). Connections such a peer opens are let in: a node
//! that was stopped and started again reaches its neighbours at once, and its connection ends
//! its time aside.

use std::{
    collections::HashSet,
    convert::Infallible,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm, dummy,
    },
};

/// The peers not to dial; bounded by the peers set aside (at most 64).
#[derive(Default)]
pub(crate) struct DialGuard {
    refused: HashSet<PeerId>,
}

/// Why a dial was refused.
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is set aside: it did not answer or could not be dialed lately")]
struct SetAside(PeerId);

impl DialGuard {
    /// Dials of `peer` are refused from now on.
    pub(crate) fn refuse(&mut self, peer: PeerId) {
        self.refused.insert(peer);
    }

    /// Dials of `peer` go out again.
    pub(crate) fn allow(&mut self, peer: &PeerId) {
        self.refused.remove(peer);
    }
}

impl NetworkBehaviour for DialGuard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        match peer {
            Some(peer) if self.refused.contains(&peer) => {
                Err(ConnectionDenied::new(SetAside(peer)))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
