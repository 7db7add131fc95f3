//! Connecting to a given peer across NATs. In the event loop (`Dialer`): one dial at the
//! addresses the peer registered at rendezvous points and the DHT knows, and through each
//! bootstrap peer as a relay (QUIC first), answered when a connection is up or the dial failed.
//! Over the node's handle ([`connect_direct`]): the hole-punching policy, which waits for the
//! relayed connection to become direct and has the peers punch again when a direct connection
//! dies at once.

use std::{collections::HashMap, time::Duration};

use libp2p::{
    Multiaddr, PeerId, TransportError, dcutr,
    multiaddr::Protocol,
    relay::outbound::hop::ConnectError as RelayRefusal,
    swarm::{
        ConnectionId, DialError, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::{sync::oneshot, time::Instant};
use tracing::{debug, info};

use crate::p2p::{
    ConnectionInfo, ConnectionPath, NodeError, NodeHandle,
    addr::{is_quic, is_relayed, peer_of},
    behaviour::{BehaviourEvent, NodeEvent, NodeSwarm},
};

/// How long a direct connection must last before it counts: a hole-punched TCP connection can
/// be reset right after it opened (both sides dialled at once), within a round trip or so.
pub const DIRECT_SETTLE: Duration = Duration::from_millis(300);
/// How many times the peers are made to punch again when a direct connection died at once.
const MAX_PUNCHES: u32 = 2;
/// How long [`connect_direct`] waits for a first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often [`connect_direct`] looks at the open connections (a command to the event loop
/// each time, which is cheap; hole punching usually ends within tens of milliseconds).
const POLL: Duration = Duration::from_millis(25);

/// Where a `connect` command hears how its dial ended.
type ConnectReply = oneshot::Sender<Result<(), NodeError>>;

/// A `connect` call waiting for a first connection: its own dial, and whether that dial went
/// through the relays only.
struct Waiting {
    dial: ConnectionId,
    relays_only: bool,
    reply: ConnectReply,
}

/// The event loop's side of `connect`: the dials made for it and who waits on each.
pub(crate) struct Dialer {
    /// Bootstrap addresses that name their peer: the relays to go through.
    relays: Vec<Multiaddr>,
    /// `connect` calls waiting for a first connection, by peer.
    waiting: HashMap<PeerId, Vec<Waiting>>,
}

impl Dialer {
    pub(crate) fn new(bootstrap: &[Multiaddr]) -> Self {
        Self {
            relays: bootstrap
                .iter()
                .filter(|a| peer_of(a).is_some())
                .cloned()
                .collect(),
            waiting: HashMap::new(),
        }
    }

    /// Dials `peer` at `registered` (addresses from rendezvous points) and the DHT's, then
    /// through the relays; with `through_relay`, through the relays only, even when connected
    /// (a new relayed connection makes the two sides punch holes again).
    pub(crate) fn connect(
        &mut self,
        swarm: &mut NodeSwarm,
        peer: PeerId,
        through_relay: bool,
        registered: Vec<Multiaddr>,
        reply: ConnectReply,
    ) {
        if swarm.is_connected(&peer) && !through_relay {
            let _ = reply.send(Ok(()));
            return;
        }
        let addrs = if through_relay {
            Vec::new()
        } else {
            registered
        };
        self.dial(swarm, peer, addrs, through_relay, reply);
    }

    /// Starts a dial of its own to `peer` at `addrs` and through every relay (QUIC first: hole
    /// punching works best over it), even when another dial is under way (the DHT's, say, to
    /// an address a NAT filters): this one tries the relays too. Unless `relays_only`, the
    /// routing table adds its addresses for the peer.
    fn dial(
        &mut self,
        swarm: &mut NodeSwarm,
        peer: PeerId,
        mut addrs: Vec<Multiaddr>,
        relays_only: bool,
        reply: ConnectReply,
    ) {
        let mut relayed: Vec<Multiaddr> = self
            .relays
            .iter()
            .map(|relay| {
                relay
                    .clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(peer))
            })
            .collect();
        relayed.sort_by_key(|a| !is_quic(a));
        addrs.extend(relayed);
        let mut opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .addresses(addrs);
        if !relays_only {
            opts = opts.extend_addresses_through_behaviour();
        }
        let opts = opts.build();
        let dial = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => self.waiting.entry(peer).or_default().push(Waiting {
                dial,
                relays_only,
                reply,
            }),
            Err(source) => {
                let _ = reply.send(Err(NodeError::Connect {
                    peer,
                    source: Box::new(source),
                }));
            }
        }
    }

    /// A connection up answers everyone waiting for its peer; hole punching is logged.
    pub(crate) fn on_event(&mut self, event: &NodeEvent) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                for waiting in self.waiting.remove(peer_id).unwrap_or_default() {
                    let _ = waiting.reply.send(Ok(()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => info!(peer = %remote_peer_id, "hole punched: direct connection"),
                Err(error) => {
                    debug!(peer = %remote_peer_id, %error, "hole punching failed; staying relayed")
                }
            },
            _ => {}
        }
    }

    /// The dial `dial` to `peer` (not connected otherwise) failed: only the failure of
    /// `connect`'s own dial ends its wait. A dial that a wrong peer ended (another node, or
    /// this one, answering at an address the peer once had) is made again through the relays
    /// alone: libp2p ends a dial at the first handshake that completes, the relayed attempts
    /// still under way included.
    pub(crate) fn dial_failed(
        &mut self,
        swarm: &mut NodeSwarm,
        dial: ConnectionId,
        peer: PeerId,
        source: DialError,
    ) {
        let Some(waiting) = self.waiting.get_mut(&peer) else {
            return;
        };
        let Some(at) = waiting.iter().position(|w| w.dial == dial) else {
            return;
        };
        let failed = waiting.swap_remove(at);
        if waiting.is_empty() {
            self.waiting.remove(&peer);
        }
        let wrong_peer = matches!(
            source,
            DialError::WrongPeerId { .. } | DialError::LocalPeerId { .. }
        );
        if wrong_peer && !failed.relays_only && !self.relays.is_empty() {
            debug!(%peer, error = %crate::error::one_line(&source), "a wrong peer answered at a direct address: dialing through the relays alone");
            self.dial(swarm, peer, Vec::new(), true, failed.reply);
            return;
        }
        let _ = failed.reply.send(Err(NodeError::Connect {
            peer,
            source: Box::new(source),
        }));
    }
}

/// How [`connect_direct`] ended.
#[derive(Debug, Clone)]
pub struct Connected {
    /// Straight to the peer, or still through a relay when the wait ran out.
    pub path: ConnectionPath,
    /// The address the connection runs over, when one is open.
    pub via: Option<Multiaddr>,
    /// The first connection went through a relay and was upgraded (hole punching).
    pub upgraded: bool,
    /// From the start of the call to the first connection on `path`.
    pub elapsed: Duration,
}

/// Errors of [`connect_direct`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection at all came up in time.
    #[error("no connection to {peer} within {after:?}")]
    Timeout {
        /// The peer dialled.
        peer: PeerId,
        /// How long the dial was given.
        after: Duration,
    },
    /// Every address tried failed. libp2p's error, which lists each address and its failure,
    /// is logged at debug level rather than carried as the cause: the user reads why in plain
    /// words.
    #[error(
        "peer {peer} is not reachable: {} (tried {tried} address{})",
        if *.offline {
            "it is offline or has no relay reservation at the introduction server(s)"
        } else {
            "no connection at any of its addresses"
        },
        if *.tried == 1 { "" } else { "es" }
    )]
    Unreachable {
        /// The peer dialled.
        peer: PeerId,
        /// Addresses tried, relayed ones included.
        tried: usize,
        /// A relay said the peer holds no reservation there, and no relay said anything else:
        /// the peer is offline (or registered at relays this node does not use).
        offline: bool,
    },
    /// The node could not dial, or is gone.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Connects to `peer` and waits up to `wait_direct` for a direct connection: a relayed one
/// becomes direct when the peers punch a hole (DCUtR); a direct one that dies at once (both
/// sides dialled at the same time) has them punch again, up to `MAX_PUNCHES` times.
pub async fn connect_direct(
    node: &NodeHandle,
    peer: PeerId,
    wait_direct: Duration,
) -> Result<Connected, ConnectError> {
    connect_direct_settling(node, peer, wait_direct, DIRECT_SETTLE).await
}

/// [`connect_direct`], with a direct connection counted once it lasted `settle`: a caller
/// that a user waits on (the first connection of a tunnel) takes a shorter one.
pub async fn connect_direct_settling(
    node: &NodeHandle,
    peer: PeerId,
    wait_direct: Duration,
    settle: Duration,
) -> Result<Connected, ConnectError> {
    let started = Instant::now();
    tokio::time::timeout(CONNECT_TIMEOUT, node.connect(peer))
        .await
        .map_err(|_| ConnectError::Timeout {
            peer,
            after: CONNECT_TIMEOUT,
        })?
        .map_err(plainly)?;
    let first = node.connections(peer).await?;
    let started_relayed = !first.is_empty() && !first.iter().any(is_direct);
    let deadline = Instant::now() + wait_direct;
    let mut punches = 0;
    loop {
        let open = node.connections(peer).await?;
        if open.iter().any(is_direct) {
            let seen = started.elapsed();
            tokio::time::sleep(settle).await;
            if let Some(direct) = node.connections(peer).await?.into_iter().find(is_direct) {
                return Ok(Connected {
                    path: ConnectionPath::Direct,
                    via: Some(direct.remote),
                    upgraded: started_relayed,
                    elapsed: seen,
                });
            }
            if punches < MAX_PUNCHES && Instant::now() < deadline {
                punches += 1;
                // A fresh relayed connection makes the two sides punch again.
                let _ = node.punch_again(peer).await;
            }
        }
        if Instant::now() >= deadline {
            return Ok(Connected {
                path: ConnectionPath::Relayed,
                via: open.into_iter().next().map(|c| c.remote),
                upgraded: false,
                elapsed: started.elapsed(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A failed dial as a user reads it ([`ConnectError::Unreachable`]); libp2p's own error, every
/// address and its failure, goes to the debug log.
fn plainly(error: NodeError) -> ConnectError {
    let NodeError::Connect { peer, source } = &error else {
        return error.into();
    };
    let (tried, offline) = match source.as_ref() {
        DialError::Transport(failures) => (failures.len(), relays_say_offline(failures)),
        DialError::NoAddresses => (0, false),
        _ => return error.into(),
    };
    let peer = *peer;
    debug!(%peer, error = %crate::error::one_line(&error), "dial failed");
    ConnectError::Unreachable {
        peer,
        tried,
        offline,
    }
}

/// Whether relays were tried and each said the peer holds no reservation with it.
fn relays_say_offline(failures: &[(Multiaddr, TransportError<std::io::Error>)]) -> bool {
    let mut relayed = failures
        .iter()
        .filter(|(addr, _)| is_relayed(addr))
        .peekable();
    relayed.peek().is_some()
        && relayed
            .all(|(_, failure)| matches!(relay_refusal(failure), Some(RelayRefusal::NoReservation)))
}

/// What the relay answered to a relayed dial that failed, if it answered: it sits in the chain
/// of causes, below the transport's and the upgrade's wrappers.
fn relay_refusal<'a>(failure: &'a (dyn std::error::Error + 'static)) -> Option<&'a RelayRefusal> {
    let mut next = Some(failure);
    while let Some(error) = next {
        // An I/O error's source skips what it wraps: look at that too.
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<RelayRefusal>());
        if let Some(refusal) = error.downcast_ref::<RelayRefusal>().or(wrapped) {
            return Some(refusal);
        }
        next = error.source();
    }
    None
}

fn is_direct(connection: &ConnectionInfo) -> bool {
    connection.path == ConnectionPath::Direct
}

#[cfg(test)]
mod tests {
    use std::io;

    use libp2p::{core::transport::upgrade::TransportUpgradeError, relay};

    use super::*;

    /// A relayed dial's failure as the swarm reports it: the relay's answer under the relay
    /// transport's, the upgrade's and the boxed transport's wrappers.
    fn refused_by_relay(refusal: RelayRefusal) -> TransportError<io::Error> {
        let transport = relay::client::transport::Error::Connect(refusal);
        let upgrade = TransportUpgradeError::<_, io::Error>::Transport(transport);
        TransportError::Other(io::Error::other(upgrade))
    }

    /// A dial of `peer` that failed at a direct address and at a relay, which answered
    /// `refusal`.
    fn failed_dial(peer: PeerId, refusal: RelayRefusal) -> NodeError {
        let relay: PeerId = PeerId::random();
        let direct: Multiaddr = "/ip4/198.51.100.4/tcp/4001".parse().unwrap();
        let relayed: Multiaddr =
            format!("/ip4/203.0.113.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}")
                .parse()
                .unwrap();
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        NodeError::Connect {
            peer,
            source: Box::new(DialError::Transport(vec![
                (direct, TransportError::Other(refused)),
                (relayed, refused_by_relay(refusal)),
            ])),
        }
    }

    #[test]
    fn a_peer_without_a_reservation_at_the_relays_reads_as_offline_in_one_line() {
        let peer = PeerId::random();
        let error = plainly(failed_dial(peer, RelayRefusal::NoReservation));
        assert!(
            matches!(
                error,
                ConnectError::Unreachable {
                    tried: 2,
                    offline: true,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            crate::error::one_line(&error),
            format!(
                "peer {peer} is not reachable: it is offline or has no relay reservation at the \
                 introduction server(s) (tried 2 addresses)"
            )
        );
    }

    #[test]
    fn a_relay_that_refuses_for_another_reason_does_not_say_offline() {
        let peer = PeerId::random();
        let error = plainly(failed_dial(peer, RelayRefusal::ResourceLimitExceeded));
        assert_eq!(
            error.to_string(),
            format!(
                "peer {peer} is not reachable: no connection at any of its addresses (tried 2 addresses)"
            )
        );
        // Nothing tried through a relay: nothing says the peer is offline.
        let lone = NodeError::Connect {
            peer,
            source: Box::new(DialError::Transport(vec![(
                "/ip4/198.51.100.4/tcp/4001".parse().unwrap(),
                TransportError::Other(io::Error::from(io::ErrorKind::TimedOut)),
            )])),
        };
        assert!(matches!(
            plainly(lone),
            ConnectError::Unreachable {
                tried: 1,
                offline: false,
                ..
            }
        ));
        // A dial that failed otherwise keeps libp2p's words.
        let aborted = NodeError::Connect {
            peer,
            source: Box::new(DialError::Aborted),
        };
        assert!(matches!(plainly(aborted), ConnectError::Node(_)));
    }
}
