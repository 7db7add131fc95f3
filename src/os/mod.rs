//! The operating system around the daemon: installing it as a service with the resolver
//! integration ([`service`]), checking the whole path from a program to the network
//! ([`doctor`]) and readiness notification for `Type=notify` units ([`systemd`]).
//!
//! This module writes system files and runs system commands; nothing in the daemon's query
//! path depends on it but the readiness notification.

pub mod doctor;
pub mod service;
pub mod systemd;
