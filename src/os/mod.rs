//! The operating system around the daemon: installing it as a service with the resolver
//! integration ([`service`]), checking the whole path from a program to the network
//! ([`doctor`]), readiness notification for `Type=notify` units ([`systemd`]) and the
//! loopback aliases tunnelled names need on macOS ([`loopback`]), and the process limits the
//! daemon raises for itself at start ([`limits`]).
//!
//! This module owns everything p2pdns writes outside its own data directory (unit files,
//! resolver configuration, the install manifest) and every system command it runs (systemctl,
//! launchctl, ifconfig). It may not touch the daemon's runtime state: nothing in the query
//! path depends on it but the readiness notification and the loopback aliases, and the daemon
//! is reached only the way any program reaches it (the system resolver, the control socket).
//! Unix only: it uses Unix permissions, Unix sockets and the effective user id unconditionally.

pub mod doctor;
pub mod limits;
pub mod loopback;
pub mod service;
pub mod systemd;
