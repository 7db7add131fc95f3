//! NAT traversal policy: how a node behind a NAT becomes reachable and reaches others. It owns
//! AutoNAT's verdict and the relay reservations that follow (`reachability`), registration
//! and discovery at rendezvous points (`rendezvous`), the connect and hole-punching policy
//! ([`connect`]), port mappings on a UPnP gateway (`upnp`) and the STUN probe of the public
//! UDP address ([`stun_probe`]).
//!
//! Each piece keeps its own state and reacts to the swarm events handed to it; none owns the
//! libp2p swarm (the P2P node's event loop in [`crate::p2p`] does, and drives these pieces) or
//! knows about DNS, names or the control socket. The STUN wire protocol is [`crate::stun`]'s.

pub mod connect;
pub(crate) mod reachability;
pub(crate) mod rendezvous;
pub mod stun_probe;
pub(crate) mod upnp;
