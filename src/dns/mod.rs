//! The DNS front end: it owns the DNS sockets and the server on them ([`server`]), the
//! per-query protocol rules and routing ([`handler`]), the building and sizing of replies
//! ([`response`]), forwarding to upstreams ([`forwarder`], through [`exchange`]), the
//! vetting of their answers ([`scrub`]), the upstream set and its source ([`upstream`]), the
//! answer cache ([`cache`]) and the encoded replies sent again from it ([`memo`]), and the
//! special-use names answered without asking anyone ([`special`]). Names under the peer-to-peer TLDs are handed to [`crate::naming`] as they
//! are; this module never builds their answers, never touches the P2P node, and reads no
//! configuration file itself (it gets its config sections from the daemon).

pub mod cache;
pub mod exchange;
pub mod forwarder;
pub mod handler;
pub mod memo;
pub mod response;
pub mod scrub;
pub mod server;
pub mod special;
pub mod upstream;

pub use server::{DnsError, DnsServer};
