//! The DNS front end: sockets and server ([`server`]), per-query logic ([`handler`]),
//! forwarding to upstreams ([`forwarder`], [`upstream`]) and the answer cache ([`cache`]).

pub mod cache;
pub mod forwarder;
pub mod handler;
pub mod server;
pub mod upstream;

pub use server::{DnsError, DnsServer};
