//! The node's open connections, each with its peer, whether it goes through a relay and its
//! remote address: what `status` lists and what `connect` waits on.

use std::collections::HashMap;

use libp2p::{
    Multiaddr, PeerId,
    core::ConnectedPoint,
    ping,
    swarm::{ConnectionId, SwarmEvent},
};
use tracing::debug;

use super::{
    ConnectionInfo, ConnectionPath,
    addr::relay_of,
    behaviour::{BehaviourEvent, NodeEvent},
};

/// The connection to close, if `event` says its peer left a ping unanswered (libp2p's ping:
/// every 25 s, 20 s to answer) or the ping stream failed. libp2p keeps such a connection open:
/// a TCP connection whose far end vanished (its NAT's address changed, its host lost power)
/// otherwise stays "connected" until the kernel gives up retransmitting, about 15 minutes,
/// and tunnels and lookups keep choosing it. A peer that does not speak ping is left alone.
pub(crate) fn unanswered_ping(event: &NodeEvent) -> Option<ConnectionId> {
    let SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
        peer,
        connection,
        result: Err(failure),
    })) = event
    else {
        return None;
    };
    if matches!(failure, ping::Failure::Unsupported) {
        return None;
    }
    debug!(%peer, %failure, "ping failed: closing the connection");
    Some(*connection)
}

/// The relay a connection runs through (its address and peer id), if it is relayed. libp2p
/// gives a connection relayed to this node `/p2p/<peer>` as its remote address; the relay is
/// in the local address it arrived at (`<relay>/p2p-circuit`).
fn relay_through(endpoint: &ConnectedPoint) -> Option<Multiaddr> {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => relay_of(address),
        ConnectedPoint::Listener { local_addr, .. } => relay_of(local_addr),
    }
}

/// Open connections, by connection.
#[derive(Default)]
pub(crate) struct Connections {
    /// Bounded by `p2p.max_connections` (and `p2p.max_connections_per_peer` for one peer):
    /// connections past them are refused before they are established.
    open: HashMap<ConnectionId, (PeerId, ConnectionInfo)>,
}

impl Connections {
    pub(crate) fn on_event(&mut self, event: &NodeEvent) {
        match event {
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
                    relay: relay_through(endpoint),
                };
                self.open.insert(*connection_id, (*peer_id, info));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
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
                self.open.remove(connection_id);
            }
            _ => {}
        }
    }

    /// The open connections to `peer`.
    pub(crate) fn of(&self, peer: PeerId) -> Vec<ConnectionInfo> {
        self.open
            .values()
            .filter(|(p, _)| *p == peer)
            .map(|(_, info)| info.clone())
            .collect()
    }

    /// The relayed connections to `peer`.
    pub(crate) fn relayed_to(&self, peer: PeerId) -> Vec<ConnectionId> {
        self.open
            .iter()
            .filter(|(_, (p, info))| *p == peer && info.path == ConnectionPath::Relayed)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The remote address of connection `id`, while it is open.
    pub(crate) fn remote(&self, id: &ConnectionId) -> Option<&Multiaddr> {
        self.open.get(id).map(|(_, info)| &info.remote)
    }

    /// Every open connection, with its peer.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(PeerId, ConnectionInfo)> {
        self.open.values()
    }

    /// How many open connections go straight to the peer, and how many through a relay.
    pub(crate) fn direct_and_relayed(&self) -> (usize, usize) {
        let relayed = self
            .open
            .values()
            .filter(|(_, info)| info.path == ConnectionPath::Relayed)
            .count();
        (self.open.len() - relayed, relayed)
    }
}
