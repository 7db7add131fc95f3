//! `[intro]`: what an introduction server grants at most (the resolver ignores it).

use serde::Deserialize;

use crate::config::{ConfigError, ordered};

/// `[intro]`: what an introduction server (`p2pdns intro`) grants at most. Relay circuits only
/// carry the start of a connection (hole punching replaces them), so they are short and small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntroConfig {
    /// Relay reservations held at once, in all (a reservation is the slot through which a node
    /// behind NAT is reached).
    pub max_reservations: usize,
    /// Relay reservations held at once for any one peer.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the node must renew it, in seconds.
    pub reservation_duration_secs: u64,
    /// Relayed connections open at once, in all.
    pub max_circuits: usize,
    /// Relayed connections open at once with any one peer.
    pub max_circuits_per_peer: usize,
    /// A relayed connection is cut after this many seconds.
    pub circuit_duration_secs: u64,
    /// A relayed connection is cut after this many bytes, both directions together.
    pub circuit_bytes: u64,
    /// Relayed connections any one peer may open per minute, after a burst of as many
    /// (libp2p's default, 30 an hour, starves tunnels that stay relayed); for one source IP
    /// address, four times as many.
    pub circuits_per_minute_per_peer: u32,
    /// Rendezvous registrations held at once, in all.
    pub max_registrations: usize,
    /// Rendezvous registrations held at once for any one peer (one per namespace). A peer
    /// renews a registration only while it holds fewer than this (libp2p counts the one being
    /// replaced), so keep it above the namespaces peers use (p2pdns uses one).
    pub max_registrations_per_peer: usize,
    /// Shortest lifetime a rendezvous registration may ask for, in seconds.
    pub registration_min_ttl_secs: u64,
    /// Longest lifetime a rendezvous registration may ask for, in seconds; at least
    /// `registration_min_ttl_secs`.
    pub registration_max_ttl_secs: u64,
    /// Incoming connections still in their handshake from any one IP address (IPv6: any one
    /// /64) at once, on each transport; more from that address are refused at once. (Many
    /// addresses cannot keep others out either: `p2p.max_pending_incoming` is shared by
    /// address group.)
    pub max_pending_per_ip: u32,
    /// Open incoming connections from any one IP address (IPv6: any one /64): nodes behind
    /// one NAT share an address, one host with many identities does too. (`p2p.max_connections`
    /// is shared by address group.)
    pub max_connections_per_ip: u32,
}

impl Default for IntroConfig {
    fn default() -> Self {
        Self {
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            reservation_duration_secs: 3600,
            max_circuits: 256,
            max_circuits_per_peer: 8,
            circuit_duration_secs: 120,
            circuit_bytes: 1 << 20,
            circuits_per_minute_per_peer: 30,
            max_registrations: 10_000,
            max_registrations_per_peer: 4,
            registration_min_ttl_secs: 300,
            registration_max_ttl_secs: 7200,
            max_pending_per_ip: 8,
            max_connections_per_ip: 64,
        }
    }
}

impl IntroConfig {
    /// Checks what the ranges of [`crate::config`] cannot: the registration lifetimes in order.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        ordered(
            "intro.registration_min_ttl_secs",
            self.registration_min_ttl_secs,
            "intro.registration_max_ttl_secs",
            self.registration_max_ttl_secs,
        )
    }
}
