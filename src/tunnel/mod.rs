//! Tunnels: `.p2p` names that carry TCP over the P2P connection to the name's owner (issue in
//! progress). So far it holds the local address table ([`addresses`]): the loopback address
//! each tunnelled name is answered with and listened on.
//!
//! This module will own the tunnel streams, the local listeners and the exposed services; it
//! must not own the libp2p swarm (the P2P node's event loop does) nor answer DNS itself (the
//! naming layer asks it for a name's address).

pub mod addresses;
