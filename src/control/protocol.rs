//! The control protocol: one JSON [`Request`] per line from the CLI, one JSON [`Response`] per
//! line back. Both sides use these types (the CLI renders them for people); an error travels as
//! its message text, causes included.

use std::net::SocketAddr;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::p2p::{ConnectionPath, NodeStatus};

/// A request from the CLI.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's state ([`Status`]).
    Status {
        /// Include the peer list.
        #[serde(default)]
        peers: bool,
    },
    /// Adds records (`[TTL] TYPE RDATA` lines) to a name.
    Publish { name: String, records: Vec<String> },
    /// Replaces a name's records with a zone file's.
    PublishZone { name: String, zone: String },
    /// Stops publishing a name.
    Unpublish { name: String },
    /// The names this daemon publishes, with their replica counts.
    Names,
    /// Resolves a name through the daemon (`qtype`: a record type such as `A`).
    Resolve { name: String, qtype: String },
    /// The pinned owners of human names.
    Pins,
    /// Forgets the pinned owner of a name.
    RemovePin { name: String },
    /// Connects to the peer that serves a name (its owner), waiting up to `wait_direct_secs`
    /// for a relayed connection to become direct.
    Connect { name: String, wait_direct_secs: u64 },
}

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// The request failed; the message names the cause chain.
    Error {
        message: String,
    },
    Status(Box<Status>),
    Published {
        name: String,
        seq: u64,
        /// Unix time, seconds.
        expires: u64,
        records: Vec<String>,
    },
    Unpublished {
        name: String,
        existed: bool,
    },
    Names {
        names: Vec<NameInfo>,
    },
    Resolved(Resolution),
    Pins {
        pins: Vec<PinInfo>,
    },
    Connected {
        name: String,
        peer: PeerId,
        /// Whether the connection goes straight to the peer.
        path: ConnectionPath,
        /// The address the connection runs over, when one is open.
        via: Option<Multiaddr>,
        /// The first connection went through a relay and was upgraded (hole punching).
        upgraded: bool,
        elapsed_ms: u64,
    },
    PinRemoved {
        name: String,
        existed: bool,
    },
}

/// What `p2pdns status` shows.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The addresses DNS is served on.
    pub dns_addrs: Vec<SocketAddr>,
    /// The upstream servers names outside the peer-to-peer TLDs are forwarded to.
    pub upstreams: Vec<SocketAddr>,
    /// Answers in the cache.
    pub cache_entries: usize,
    /// The P2P node's report, when it runs.
    pub p2p: Option<P2pStatus>,
}

/// The P2P part of [`Status`]: the node's own report, with the key name the DHT side adds.
#[derive(Debug, Serialize, Deserialize)]
pub struct P2pStatus {
    /// This node's key name (`<key>.p2p.`).
    pub key_name: String,
    /// What the node reports; its peer list is filled only when asked for (`status --peers`).
    #[serde(flatten)]
    pub node: NodeStatus,
}

/// One name this daemon publishes.
#[derive(Debug, Serialize, Deserialize)]
pub struct NameInfo {
    /// The name (`site.p2p.`).
    pub name: String,
    /// The record's sequence number.
    pub seq: u64,
    /// Unix time, seconds.
    pub expires: u64,
    /// Its records, in zone-file syntax.
    pub records: Vec<String>,
    /// Other nodes found holding exactly this record.
    pub replicas: usize,
}

/// A name resolved through the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub struct Resolution {
    /// The name asked for, fully qualified.
    pub name: String,
    /// The answer records, in zone-file syntax.
    pub answers: Vec<String>,
    /// The response code (`NOERROR`, `NXDOMAIN`...).
    pub rcode: String,
    /// For DHT names: the owner's key name...
    pub owner: Option<String>,
    /// ...the record's sequence number...
    pub seq: Option<u64>,
    /// ...and how many valid replicas agreed on the owner.
    pub replicas: Option<usize>,
}

/// A pinned owner of a human name.
#[derive(Debug, Serialize, Deserialize)]
pub struct PinInfo {
    /// The human name.
    pub name: String,
    /// The pinned owner's key name.
    pub owner: String,
    /// Unix time, seconds.
    pub expires: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        let text = serde_json::to_string(&Request::Publish {
            name: "site".into(),
            records: vec!["A 192.0.2.1".into()],
        })
        .unwrap();
        assert!(text.contains("\"request\":\"publish\""), "{text}");
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Request::Publish { .. }));
    }
}
