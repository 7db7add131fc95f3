//! What the P2P node reports about itself: typed, serialized as is over the control socket
//! (JSON), and rendered for people only by the CLI. Nothing here is prose to be parsed back.

use std::{fmt, net::SocketAddr};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

/// What `p2pdns status` shows about the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node's libp2p identity.
    pub peer_id: PeerId,
    /// The addresses the node listens on (relayed ones included), without `/p2p/<id>`.
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers with at least one open connection.
    pub connected_peers: usize,
    /// Peers in the Kademlia routing table.
    pub routing_table_peers: usize,
    /// Records held in the node's store for the network.
    pub stored_records: usize,
    /// Whether the node answers DHT requests (server) or only asks (client).
    pub mode: KadMode,
    /// The peers this node knows: its routing table, then connected peers outside it. Empty
    /// unless asked for (`status --peers`).
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    /// Whether peers can dial this node (AutoNAT, judged as described on [`Reachability`]).
    pub reachability: Reachability,
    /// Addresses others can reach this node at, with how each was learned.
    pub external_addrs: Vec<ExternalAddr>,
    /// Relayed addresses: relays holding a reservation for this node.
    pub relay_reservations: Vec<Multiaddr>,
    /// Open connections through a relay.
    pub relayed_connections: usize,
    /// Open connections that go straight to the peer.
    pub direct_connections: usize,
    /// Rendezvous points (bootstrap peers that keep one).
    pub rendezvous_points: Vec<RendezvousStanding>,
    /// Peers learned from rendezvous points.
    pub rendezvous_peers: usize,
    /// The configured bootstrap peers (`p2p.bootstrap`, one entry per peer id) and whether this
    /// node is connected to each. Empty from daemons older than this field.
    #[serde(default)]
    pub bootstrap: Vec<BootstrapPeer>,
}

/// One configured bootstrap peer: its addresses as listed in `p2p.bootstrap` (those naming
/// the same peer id together), whether a connection to it is open, and why the last dial failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapPeer {
    /// The configured addresses of this peer (or one address that names no peer id).
    pub addrs: Vec<Multiaddr>,
    /// A connection to it is open now.
    pub connected: bool,
    /// Why the last dial failed, in plain words (`None` when no dial failed, or the last one
    /// succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The peer that answered instead when the last dial failed because another peer id
    /// answered at the address (the `/p2p/` part is wrong, or the server's key changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_as: Option<PeerId>,
}

impl BootstrapPeer {
    /// The addresses as `a, b`.
    pub fn addr_list(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        addrs.join(", ")
    }
}

/// The Kademlia mode (libp2p `kad::Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KadMode {
    /// Only asks; others are not told to ask it.
    Client,
    /// Answers DHT requests and stores records for others.
    Server,
}

impl From<libp2p::kad::Mode> for KadMode {
    fn from(mode: libp2p::kad::Mode) -> Self {
        match mode {
            libp2p::kad::Mode::Client => Self::Client,
            libp2p::kad::Mode::Server => Self::Server,
        }
    }
}

impl fmt::Display for KadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Server => "server",
        })
    }
}

/// Can peers dial this node? AutoNAT's verdict, with "public" split by whether it can be
/// trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Not probed yet.
    Unknown,
    /// Probes could not dial the node: it needs a relay.
    Private,
    /// Dialed at an address of its own interfaces, a UPnP mapping or a configured one.
    Public,
    /// Dialed at an address it does not have, by a peer it had contacted first: a NAT that
    /// filters by address lets such probers in and keeps strangers out, so the node keeps a
    /// relay slot.
    PublicBehindNat,
}

impl fmt::Display for Reachability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Private => "private",
            Self::Public => "public",
            Self::PublicBehindNat => "public behind NAT",
        })
    }
}

/// An address others may reach this node at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalAddr {
    /// The address.
    pub addr: Multiaddr,
    /// How the node learned it.
    pub source: AddressSource,
}

/// How an external address was learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AddressSource {
    /// `p2p.external_addresses` in the configuration.
    Configured,
    /// A port mapping on a UPnP gateway.
    UpnpMapping,
    /// A relay holds a reservation for this node.
    RelayReservation,
    /// Peers saw it (identify) and AutoNAT confirmed it.
    Observed,
    /// A STUN server saw this UDP address (RFC 8489 XOR-MAPPED-ADDRESS).
    Stun {
        /// The servers asked.
        servers: Vec<SocketAddr>,
        /// What asking two servers told about the NAT's mapping.
        mapping: StunMapping,
    },
}

/// The NAT mapping behaviour a STUN probe found (RFC 4787 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StunMapping {
    /// One server only: the mapping behaviour cannot be told.
    Unknown,
    /// Both servers saw the same address: hole punching can work.
    EndpointIndependent,
    /// The servers saw different addresses (a symmetric NAT); `other` is what the second saw.
    EndpointDependent {
        /// The address the second server saw.
        other: SocketAddr,
    },
}

impl AddressSource {
    /// Did a STUN probe find the NAT's mapping endpoint-dependent (a symmetric NAT)?
    pub fn is_symmetric(&self) -> bool {
        matches!(
            self,
            Self::Stun {
                mapping: StunMapping::EndpointDependent { .. },
                ..
            }
        )
    }
}

impl fmt::Display for AddressSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Configured => f.write_str("configured"),
            Self::UpnpMapping => f.write_str("UPnP port mapping"),
            Self::RelayReservation => f.write_str("relay reservation"),
            Self::Observed => f.write_str("observed by peers (identify), confirmed by AutoNAT"),
            Self::Stun { servers, mapping } => {
                let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
                // The address is the STUN probe's socket as the router maps it: its IP is the
                // node's public one, its port no peer ever uses.
                write!(
                    f,
                    "STUN via {}: this node's public IP; the port is the STUN probe's own \
                     socket, not the P2P port; ",
                    servers.join(", ")
                )?;
                match mapping {
                    StunMapping::Unknown => f.write_str(
                        "one server: mapping behaviour unknown (telling it takes two STUN \
                         servers, as an introduction server started with two --stun-listen \
                         ports offers)",
                    ),
                    StunMapping::EndpointIndependent => {
                        f.write_str("endpoint-independent mapping: hole punching can work")
                    }
                    StunMapping::EndpointDependent { other } => write!(
                        f,
                        "endpoint-dependent (symmetric) NAT: another server saw {other}; hole \
                         punching will likely fail, so connections with peers behind NATs, \
                         tunnels included, stay relayed and within the relay's limits (a \
                         larger download is cut); forward the P2P port on the router, or enable \
                         UPnP there"
                    ),
                }
            }
        }
    }
}

/// This node's standing at one rendezvous point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RendezvousStanding {
    /// The rendezvous point.
    pub point: PeerId,
    /// Whether a registration of this node is held there now.
    pub registered: bool,
}

/// One peer in [`NodeStatus::peers`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The peer.
    pub peer_id: PeerId,
    /// Addresses known for it (routing table).
    pub addrs: Vec<Multiaddr>,
    /// At least one connection is open.
    pub connected: bool,
    /// It is in the Kademlia routing table.
    pub in_routing_table: bool,
    /// Its open connections.
    pub connections: Vec<ConnectionInfo>,
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Through a relay or straight to the peer.
    pub path: ConnectionPath,
    /// The remote address as libp2p gives it: for a connection this node made through a
    /// relay, the circuit address (`<relay>/p2p-circuit/p2p/<peer>`); for one relayed to this
    /// node, only `/p2p/<peer>`.
    pub remote: Multiaddr,
    /// For a relayed connection, the relay it runs through: its address and peer id
    /// (`/ip4/.../p2p/<relay>`), either way round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<Multiaddr>,
}

impl ConnectionInfo {
    /// The transport the connection runs over.
    pub fn transport(&self) -> Transport {
        if self.path == ConnectionPath::Relayed {
            return Transport::Relay;
        }
        Transport::of(&self.remote)
    }
}

/// Through a relay or straight to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionPath {
    /// Straight to the peer (possibly after hole punching).
    Direct,
    /// Through a relay (circuit relay v2), within the relay's limits.
    Relayed,
}

impl ConnectionPath {
    /// The path of `open`, a peer's open connections: direct if any is, else relayed; `None`
    /// when none is open.
    pub fn best_of(open: &[ConnectionInfo]) -> Option<Self> {
        if open.iter().any(|c| c.path == Self::Direct) {
            Some(Self::Direct)
        } else {
            open.first().map(|_| Self::Relayed)
        }
    }
}

impl fmt::Display for ConnectionPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
        })
    }
}

/// The transport an address uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A `/p2p-circuit` address: through a relay.
    Relay,
    /// QUIC v1 over UDP.
    Quic,
    /// TCP with Noise and Yamux.
    Tcp,
    /// Anything else.
    Other,
}

impl Transport {
    /// The transport of `addr`.
    pub fn of(addr: &Multiaddr) -> Self {
        let has = |wanted: fn(&Protocol<'_>) -> bool| addr.iter().any(|p| wanted(&p));
        if has(|p| matches!(p, Protocol::P2pCircuit)) {
            Self::Relay
        } else if has(|p| matches!(p, Protocol::QuicV1)) {
            Self::Quic
        } else if has(|p| matches!(p, Protocol::Tcp(_))) {
            Self::Tcp
        } else {
            Self::Other
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Relay => "a relay",
            Self::Quic => "QUIC",
            Self::Tcp => "TCP",
            Self::Other => "another transport",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_as_json() {
        let peer = PeerId::random();
        let status = NodeStatus {
            peer_id: peer,
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/4747".parse().unwrap()],
            connected_peers: 1,
            routing_table_peers: 1,
            stored_records: 0,
            mode: KadMode::Client,
            peers: vec![PeerEntry {
                peer_id: peer,
                addrs: Vec::new(),
                connected: true,
                in_routing_table: false,
                connections: vec![ConnectionInfo {
                    path: ConnectionPath::Relayed,
                    remote: format!("/p2p/{peer}").parse().unwrap(),
                    relay: Some("/ip4/198.51.100.7/udp/1/quic-v1".parse().unwrap()),
                }],
            }],
            reachability: Reachability::PublicBehindNat,
            external_addrs: vec![ExternalAddr {
                addr: "/ip4/203.0.113.5/udp/4000".parse().unwrap(),
                source: AddressSource::Stun {
                    servers: vec!["198.51.100.7:3478".parse().unwrap()],
                    mapping: StunMapping::EndpointDependent {
                        other: "203.0.113.5:4001".parse().unwrap(),
                    },
                },
            }],
            relay_reservations: Vec::new(),
            relayed_connections: 1,
            direct_connections: 0,
            rendezvous_points: vec![RendezvousStanding {
                point: peer,
                registered: true,
            }],
            rendezvous_peers: 3,
            bootstrap: Vec::new(),
        };
        let text = serde_json::to_string(&status).unwrap();
        let back: NodeStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(back.reachability, Reachability::PublicBehindNat);
        assert_eq!(back.external_addrs, status.external_addrs);
        assert_eq!(back.peers[0].connections[0].transport(), Transport::Relay);
        assert_eq!(back.peers[0].connections[0], status.peers[0].connections[0]);
        assert_eq!(back.rendezvous_points, status.rendezvous_points);
    }

    /// With one STUN server, `external: /ip4/203.0.113.10/udp/56066 (STUN via …)` left users
    /// looking for port 56066, which is the probe's own socket and no peer ever dials.
    #[test]
    fn a_stun_address_says_its_port_is_the_probes() {
        let source = AddressSource::Stun {
            servers: vec!["198.51.100.7:3478".parse().unwrap()],
            mapping: StunMapping::Unknown,
        };
        let text = source.to_string();
        assert!(
            text.starts_with(
                "STUN via 198.51.100.7:3478: this node's public IP; the port is the STUN \
                 probe's own socket, not the P2P port; one server: mapping behaviour unknown"
            ) && text.contains("two --stun-listen ports"),
            "{text}"
        );
    }

    #[test]
    fn transports_are_told_by_address() {
        let of = |a: &str| Transport::of(&a.parse().unwrap());
        assert_eq!(of("/ip4/192.0.2.1/udp/1/quic-v1"), Transport::Quic);
        assert_eq!(of("/ip4/192.0.2.1/tcp/1"), Transport::Tcp);
        assert_eq!(
            of(
                "/ip4/192.0.2.1/tcp/1/p2p-circuit/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
            ),
            Transport::Relay
        );
        assert_eq!(of("/ip4/192.0.2.1/udp/1"), Transport::Other);
    }
}
