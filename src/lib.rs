//! p2pdns: a local DNS resolver that answers names under `.p2p` from a peer-to-peer network
//! and forwards every other name to the usual upstream servers, with a cache.
//!
//! # Layout
//!
//! Each folder is one thing a user or an RFC would name; its `mod.rs` says what it owns.
//!
//! - [`cli`]: the command line (`p2pdns run`, `p2pdns publish`...); [`config`]: the TOML
//!   configuration, its embedded defaults and checks.
//! - [`daemon`]: binds every socket first ([`Daemon::bind`]), then serves until a signal
//!   ([`signal`]) cancels it or a subsystem fails. [`state`]: the data directory and atomic
//!   state files.
//! - [`dns`]: the DNS front end.
//!   - [`dns::server`]: UDP and TCP sockets served by hickory-server.
//!   - [`dns::handler`]: the client ACL, per-query protocol checks and routing, EDNS,
//!     truncation.
//!   - [`dns::forwarder`]: upstream queries with de-duplication, failover, TCP retry,
//!     serve-stale; [`dns::upstream`] tracks each server's health; [`dns::cache`] holds answers.
//! - [`naming`]: answers for the peer-to-peer TLDs: local records ([`naming::LocalZone`]), then
//!   the DHT ([`naming::resolver`]), as an authoritative server would give them.
//! - [`record`]: the signed name record of `docs/PROTOCOL.md`: codec, signature, DHT key.
//! - [`p2p`]: the P2P node, one task owning the libp2p swarm, driven through a
//!   [`p2p::NodeHandle`]; its identity key ([`p2p::identity`]).
//! - [`nat`]: NAT traversal policy: UPnP port mappings and the STUN probe.
//! - [`stun`]: STUN Binding (RFC 8489) server and client.
//! - [`intro`]: the introduction server role (`p2pdns intro`), a P2P-only bootstrap node.
//! - [`control`]: the Unix socket through which the CLI talks to the running daemon.
//! - [`os`]: `service install/uninstall`, `doctor`, and systemd readiness notification.
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
pub mod intro;
pub mod naming;
pub mod nat;
pub mod os;
pub mod p2p;
pub mod record;
pub mod signal;
pub mod state;
pub mod stun;

pub use config::Config;
pub use daemon::{Daemon, DaemonError};
