//! p2pdns: a local DNS resolver that answers names under `.p2p` from a peer-to-peer network
//! and forwards every other name to the usual upstream servers, with a cache.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`p2pdns run`, `p2pdns config default`).
//! - [`config`]: the TOML configuration, its embedded defaults and checks.
//! - [`daemon`]: binds every socket first ([`Daemon::bind`]), then serves until a signal
//!   ([`signal`]) cancels it or a subsystem fails.
//! - [`dns`]: the DNS front end.
//!   - [`dns::server`]: UDP and TCP sockets served by hickory-server, with the client ACL.
//!   - [`dns::handler`]: per-query protocol checks and routing, EDNS, truncation.
//!   - [`dns::forwarder`]: upstream queries with de-duplication, failover, TCP retry,
//!     serve-stale; [`dns::upstream`] tracks each server's health; [`dns::cache`] holds answers.
//! - [`naming`]: answers for the peer-to-peer TLDs: local records, then the DHT
//!   ([`naming::dht`]) of signed records ([`naming::record`]) kept by the P2P node
//!   ([`naming::node`], one task owning the libp2p swarm).
//! - [`control`]: the Unix socket through which the CLI talks to the running daemon.
//! - [`intro`]: the introduction server role (`p2pdns intro`), a P2P-only bootstrap node.
//! - [`doctor`]: `p2pdns doctor`, the checks from a program's getaddrinfo to the network.
//! - [`service`]: `p2pdns service install/uninstall` (systemd or launchd, split or full DNS).
//! - [`stun`]: STUN Binding server (introduction servers) and client (mapped address, NAT
//!   mapping behaviour).
//! - [`systemd`]: readiness notification for `Type=notify` services.
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
pub mod doctor;
pub mod intro;
pub mod naming;
pub mod service;
pub mod signal;
pub mod stun;
pub mod systemd;

pub use config::Config;
pub use daemon::{Daemon, DaemonError};
