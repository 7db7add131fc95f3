//! NAT traversal policy: port mappings on a UPnP gateway (`upnp`) and the node's STUN probe
//! of its public UDP address and mapping behaviour ([`stun_probe`]).
//!
//! This module decides how a node behind a NAT becomes reachable; the libp2p swarm itself is
//! owned by the P2P node's event loop ([`crate::p2p`]), which drives these pieces.

pub mod stun_probe;
pub(crate) mod upnp;
