//! p2pdns: a local DNS resolver that answers names under `.p2p` from a peer-to-peer network
//! and forwards every other name to the usual upstream servers, with a cache.
//!
//! # Layout
//!
//! Each folder is one thing a user or an RFC would name; its `mod.rs` says what it owns and
//! what it may not touch. Every subsystem is bound first and served second (`bind` returns a
//! handle once its sockets are bound), and one owner holds each piece of state.
//!
//! - [`cli`]: the command line: grammar, subcommands, exit codes, rendering for people.
//!   [`config`]: the TOML configuration, its embedded defaults and checks.
//! - [`daemon`]: binds every socket first ([`Daemon::bind`]), then supervises its tasks until a
//!   signal ([`signal`]) cancels it or one of them ends. [`state`]: the data directory and
//!   atomic state files. [`error`]: how an error's chain of causes reads as text.
//! - [`dns`]: the DNS front end: [`dns::server`] (UDP and TCP sockets), [`dns::handler`] (the
//!   client ACL, per-query checks, routing), [`dns::response`] (EDNS, EDE, truncation),
//!   [`dns::forwarder`] over [`dns::exchange`] (de-duplication, failover, TCP retry,
//!   serve-stale), [`dns::upstream`] (the upstream set, its source and health) and
//!   [`dns::cache`].
//! - [`naming`]: answers for the peer-to-peer TLDs: local records ([`naming::LocalZone`]), then
//!   the DHT ([`naming::Dht`]): own names ([`naming::publisher`]), lookups
//!   ([`naming::resolver`]) and pinned owners ([`naming::pins`]).
//! - [`record`]: the signed name record of `docs/PROTOCOL.md`: codec, signature, DHT key.
//! - [`p2p`]: the P2P node, one task owning the libp2p swarm, driven through a
//!   [`p2p::NodeHandle`] and reporting a typed [`p2p::NodeStatus`]; its identity key
//!   ([`p2p::identity`]).
//! - [`nat`]: NAT traversal policy: reachability and relay reservations, rendezvous, the
//!   connect and hole-punching policy, UPnP, the STUN probe.
//! - [`stun`]: STUN Binding (RFC 8489) codec, server and client.
//! - [`intro`]: the introduction server role ([`intro::Intro`]), a P2P-only bootstrap node with
//!   relay, rendezvous point and STUN server.
//! - [`control`]: the Unix socket through which the CLI talks to the running daemon, with its
//!   typed protocol.
//! - [`os`]: `service install/uninstall`, `doctor`, and systemd readiness notification.
//! - [`metrics`]: the opt-in Prometheus endpoint (`[metrics]`): the registry, the handles the
//!   subsystems count with, and the HTTP responder.
//! - [`tunnel`]: names that carry TCP over the P2P connection (in progress: the local
//!   address table).
//! - `fuzzing` (feature `fuzzing` only): the private parsers the fuzz targets of `tests/fuzz`
//!   drive.
//!
//! # A query's path
//!
//! ```text
//! client ─UDP/TCP─▶ hickory Server ─(ACL: REFUSED)─▶ Handler
//!                                                     ├─ checks: EDNS version, opcode, class, type
//!                                                     ├─ name under naming.tlds ─▶ Naming::lookup
//!                                                     └─ otherwise ─▶ Forwarder::resolve
//!                                                          cache ─▶ in-flight join ─▶ upstreams
//! ```

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod intro;
pub mod log_limit;
pub mod metrics;
pub mod naming;
pub mod nat;
pub mod os;
pub mod p2p;
pub mod record;
pub mod signal;
pub mod state;
pub mod stun;
pub mod tunnel;

pub use config::Config;
pub use daemon::{Daemon, DaemonError};
