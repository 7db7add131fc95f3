//! The control protocol: one JSON [`Request`] per line from the CLI, one JSON [`Response`] per
//! line back. Both sides use these types (the CLI renders them for people); an error travels as
//! its message text, causes included.

use std::net::SocketAddr;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::{
    p2p::{ConnectionPath, NodeStatus},
    tunnel::{Service, ServiceSpec, TunnelsReport},
};

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
    /// Adds records to a name, keeping the ones it has (RFC 2136 section 3.4.2.2: a record
    /// present is not added twice, an added record's TTL becomes its RRset's); answered by
    /// [`Response::Published`]. A new record set beyond the 100 one key may publish is
    /// refused.
    Publish {
        /// `site`, `site.p2p` or a name below it (`www.site.p2p`); `.p2p` is added when left out.
        name: String,
        /// Record lines, `[TTL] TYPE RDATA` in zone-file syntax (RFC 1035 section 5.1); TTL in
        /// seconds, 300 when left out.
        records: Vec<String>,
    },
    /// Replaces the records of a name's record set (`site.p2p.`) with a zone file's; answered
    /// by [`Response::Published`].
    PublishZone {
        /// `site`, `site.p2p` or a name below it: the origin of the zone's relative names.
        name: String,
        /// The zone file's text (RFC 1035 section 5); TTL 300 s where it gives none.
        zone: String,
    },
    /// Stops publishing a name; answered by [`Response::Unpublished`].
    Unpublish {
        /// `site` or `site.p2p`.
        name: String,
    },
    /// The names this daemon publishes, with their replica counts.
    Names,
    /// Resolves a name through the daemon, as DNS would answer it; answered by
    /// [`Response::Resolved`].
    Resolve {
        /// `site`, `site.p2p` or a name below it.
        name: String,
        /// A record type (`A`, `AAAA`, `TXT`...), any case.
        qtype: String,
    },
    /// The pinned owners of human names.
    Pins,
    /// Forgets the pinned owner of a name; answered by [`Response::PinRemoved`].
    RemovePin {
        /// `site` or `site.p2p`.
        name: String,
    },
    /// Connects to the peer that serves a name (its owner); answered by
    /// [`Response::Connected`].
    Connect {
        /// `site`, `site.p2p` or a name below it.
        name: String,
        /// Seconds to wait for a relayed connection to become direct; the daemon caps it at 60.
        wait_direct_secs: u64,
    },
    /// Serves a local TCP service under a name through tunnels (docs/PROTOCOL.md section 9);
    /// answered by [`Response::Exposed`].
    Expose(ServiceSpec),
    /// Stops serving a name's services; answered by [`Response::Unexposed`].
    Unexpose {
        /// `site`, `site.p2p` or a name below it.
        name: String,
        /// The port to stop serving; every port of the name when left out.
        #[serde(default)]
        port: Option<u16>,
    },
    /// The exposed services and the tunnelled names, with their counters.
    Tunnels,
}

impl Request {
    /// Whether the daemon answers it from its own state at once, without writing a file or
    /// asking the network: such a request never waits behind others, and changes nothing.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Self::Status { .. } | Self::Names | Self::Pins | Self::Tunnels
        )
    }

    /// The CLI command that sends it (`names`, `publish`...), for messages.
    pub fn command(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::Publish { .. } | Self::PublishZone { .. } => "publish",
            Self::Unpublish { .. } => "unpublish",
            Self::Names => "names",
            Self::Resolve { .. } => "resolve",
            Self::Pins => "pins",
            Self::RemovePin { .. } => "pins remove",
            Self::Connect { .. } => "connect",
            Self::Expose(_) => "expose",
            Self::Unexpose { .. } => "unexpose",
            Self::Tunnels => "tunnels",
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// The request failed.
    Error {
        /// The error and its causes, joined by `": "`.
        message: String,
    },
    /// Answer to [`Request::Status`].
    Status(Box<Status>),
    /// Answer to [`Request::Publish`] and [`Request::PublishZone`]: the record now published.
    Published {
        /// The record set's name, fully qualified (`site.p2p.`).
        name: String,
        /// The record's sequence number.
        seq: u64,
        /// When the record expires: Unix time, seconds.
        expires: u64,
        /// All of the name's records, in zone-file syntax.
        records: Vec<String>,
        /// Other nodes found holding the record when it was read back after its PUT
        /// (docs/PROTOCOL.md section 8.2); `None` when that had not happened within 10 s
        /// (the push goes on: `names` shows the count later).
        #[serde(default)]
        held_by: Option<usize>,
        /// Peers that answered that read-back.
        #[serde(default)]
        peers_answered: Option<u32>,
        /// The key name of another key whose record of the name that read-back found:
        /// storage nodes keep that one, not this node's (docs/PROTOCOL.md section 5 rule 7).
        #[serde(default)]
        taken_by: Option<String>,
    },
    /// Answer to [`Request::Unpublish`].
    Unpublished {
        /// The name, fully qualified.
        name: String,
        /// Whether this daemon published it (false: nothing was done).
        existed: bool,
    },
    /// Answer to [`Request::Names`].
    Names {
        /// One entry per published name.
        names: Vec<NameInfo>,
    },
    /// Answer to [`Request::Resolve`].
    Resolved(Resolution),
    /// Answer to [`Request::Pins`].
    Pins {
        /// One entry per pinned name.
        pins: Vec<PinInfo>,
    },
    /// Answer to [`Request::Connect`]: a connection to the name's owner is open.
    Connected {
        /// The record set's name, fully qualified.
        name: String,
        /// The owner's peer ID (its owner key).
        peer: PeerId,
        /// Whether the connection goes straight to the peer.
        path: ConnectionPath,
        /// The address the connection runs over, when one is open.
        via: Option<Multiaddr>,
        /// The first connection went through a relay and was upgraded (hole punching).
        upgraded: bool,
        /// Milliseconds from the request to the first connection on `path`.
        elapsed_ms: u64,
    },
    /// Answer to [`Request::Expose`]: the service is served, and announced in the record.
    Exposed {
        /// The service as stored (name normalized, target filled in).
        service: Service,
        /// The key name clients put on allow lists (this node's).
        key_name: String,
        /// The sequence number of the record that announces it.
        seq: Option<u64>,
        /// The service of the same name and port this one replaced, if any.
        #[serde(default)]
        replaced: Option<Service>,
        /// Why nothing answers at the target yet, if nothing does (clients are refused until
        /// something does).
        #[serde(default)]
        unreachable: Option<String>,
    },
    /// Answer to [`Request::Unexpose`].
    Unexposed {
        /// The name, `site.p2p`.
        name: String,
        /// The ports no longer served (empty: none was).
        ports: Vec<u16>,
    },
    /// Answer to [`Request::Tunnels`].
    Tunnels(TunnelsReport),
    /// Answer to [`Request::RemovePin`].
    PinRemoved {
        /// The name, fully qualified.
        name: String,
        /// Whether the name had a pin (false: nothing was done).
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
    /// The same servers as configured, in the same order: `tls://...` and `https://...` for
    /// encrypted ones ([`crate::config::UpstreamServer`]'s form).
    #[serde(default)]
    pub upstream_servers: Vec<String>,
    /// Answers in the cache.
    pub cache_entries: usize,
    /// The configuration file the daemon loaded (`None` when it runs on defaults, or is older
    /// than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<std::path::PathBuf>,
    /// The P2P node's report, when it runs.
    pub p2p: Option<P2pStatus>,
    /// The tunnels' report (`p2pdns tunnels` shows it whole), when the P2P node runs.
    #[serde(default)]
    pub tunnels: Option<TunnelsReport>,
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
    /// When the record expires: Unix time, seconds.
    pub expires: u64,
    /// Its records, in zone-file syntax.
    pub records: Vec<String>,
    /// Other nodes found holding exactly this record by the last count (those that answered
    /// within 5 s); `None` before one was made. Each `names` asks for a new count, in the
    /// background: the answer never waits for the network.
    #[serde(default)]
    pub replicas: Option<usize>,
    /// When `replicas` was counted: Unix time, seconds.
    #[serde(default)]
    pub counted_at: Option<u64>,
    /// The key name of another key whose record of the name the last count found: storage
    /// nodes keep that one, not this node's (docs/PROTOCOL.md section 5 rule 7).
    #[serde(default)]
    pub taken_by: Option<String>,
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
    /// When the newest record seen from the owner expires: Unix time, seconds.
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
