//! Configuration: the TOML file, its embedded defaults, and the typed values the daemon runs on.
//!
//! Every key is documented in `config/p2pdns.toml`, which is also the text printed by
//! `p2pdns config default`. Values are parsed into typed form at load time so that a bad value
//! stops the daemon at start-up with the dotted key in the message, never later on the query path.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use libp2p::Multiaddr;
use serde::{Deserialize, Deserializer};
use tracing::warn;

pub use crate::intro::config::IntroConfig;
pub use metrics::{DEFAULT_METRICS_LISTEN, MetricsConfig};
pub use naming::NamingConfig;
pub use relations::ConfigWarning;
pub use upstream::{EncryptedServer, EncryptedTransport, UpstreamAddr, UpstreamServer};

/// The commented default configuration, shipped inside the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../config/p2pdns.toml");

/// Environment variable naming the configuration file (below `--config`, above the defaults).
const CONFIG_ENV: &str = "P2PDNS_CONFIG";
/// Environment variable naming the data directory (below `--data-dir`, above the file).
const DATA_DIR_ENV: &str = "P2PDNS_DATA_DIR";

/// Where the system-wide configuration file lives when no user configuration exists.
const SYSTEM_CONFIG_FILE: &str = "/etc/p2pdns/p2pdns.toml";
/// Data directory for a service user that has no home directory.
const SYSTEM_DATA_DIR: &str = "/var/lib/p2pdns";
/// Largest configuration file read, in bytes: a file of local records is far smaller, and a
/// path such as /dev/zero must not be read without end.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The largest TTL, in seconds: RFC 2181 section 8 keeps the top bit clear (2^31 - 1). Local
/// records with a larger one are refused by their parser; this bounds the default given to them.
const MAX_TTL: u32 = 0x7fff_ffff;

/// Errors while finding, reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("failed to read config file {path}")]
    Read {
        /// The file that was tried.
        path: PathBuf,
        /// Why reading failed: missing, not permitted, or not UTF-8.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key, wrong type).
    #[error("failed to load config file {path}")]
    Parse {
        /// Where the text came from: the file's path, or the name the caller gave it.
        path: String,
        /// The TOML parser's message: position, the offending line with a caret under the key
        /// or value, and what is wrong. Several lines; [`crate::cli::error_report`] keeps them.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value parsed but makes no sense (named by its dotted key).
    #[error("invalid config value {key}: {message}")]
    Invalid {
        /// The value's dotted key, such as `cache.min_ttl_secs` or `naming.tlds[0]`.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the daemon's state files. Empty means the platform default.
    pub data_dir: Option<PathBuf>,
    /// `[dns]`: the addresses served, who may ask, and per-query limits.
    pub dns: DnsConfig,
    /// `[upstream]`: the servers other names are forwarded to, and the forwarding timeouts.
    pub upstream: UpstreamConfig,
    /// `[cache]`: size and TTL bounds of the cache of forwarded answers, and serve-stale.
    pub cache: CacheConfig,
    /// `[naming]`: the TLDs answered here instead of upstream, and the local records.
    pub naming: NamingConfig,
    /// `[p2p]`: the P2P node: addresses, peers, NAT traversal, DHT mode and limits.
    pub p2p: P2pConfig,
    /// `[intro]`: what an introduction server grants; the resolver ignores it.
    pub intro: IntroConfig,
    /// `[tunnel]`: services exposed through tunnels, and the limits of tunnels.
    pub tunnel: crate::tunnel::TunnelConfig,
    /// `[metrics]`: the Prometheus endpoint, off by default.
    pub metrics: MetricsConfig,
}

/// `[dns]`: the DNS front end.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Addresses answered on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// Client networks that get answers; everyone else gets REFUSED.
    pub allow: Vec<IpNet>,
    /// Lets `allow` admit the whole internet on a non-loopback `listen` address (an open
    /// resolver, RFC 5358); without it such a configuration is refused.
    pub open_resolver: bool,
    /// Queries waiting on an upstream or on a DHT lookup at once, together; more that would
    /// wait get SERVFAIL at once (or a stale answer). Cached and local answers never wait.
    /// Clients share them fairly (an IPv4 address, an IPv6 /64): one alone may hold half of
    /// those waiting on upstreams, and with n clients waiting each may hold 1/(n+1).
    pub max_inflight: usize,
    /// Idle TCP connections are closed after this many seconds, and so is one whose client
    /// takes none of its answers for as long (counted from when its receive window closed).
    pub tcp_idle_timeout_secs: u64,
    /// TCP connections open at once, from every client together; at the cap a new one closes
    /// the oldest idle connection, or is closed itself when none is idle (RFC 7766 section
    /// 6.2.3).
    pub tcp_max_connections: usize,
    /// TCP connections open at once from one client address (an IPv6 client: its /64); at the
    /// cap a new one closes that client's oldest idle connection, or is closed itself.
    pub tcp_max_per_client: usize,
    /// Queries read from one TCP connection whose answers are not written yet; at this many the
    /// connection is not read until its client takes answers (pipelining backpressure).
    pub tcp_max_pending: usize,
    /// Largest UDP answer we send, in bytes (the client's EDNS size may lower it).
    pub udp_payload: u16,
    /// Answer CHAOS TXT `version.bind` and `id.server` to local clients.
    pub chaos: bool,
    /// Special-use zones answered locally by default that are forwarded upstream instead
    /// (`onion` to a Tor DNSPort, `alt` to a GNS resolver); see [`crate::dns::special`].
    pub forward_special: Vec<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            allow: vec![
                "127.0.0.0/8".parse().expect("static CIDR"),
                "::1/128".parse().expect("static CIDR"),
            ],
            open_resolver: false,
            max_inflight: 1024,
            tcp_idle_timeout_secs: 10,
            tcp_max_connections: 256,
            tcp_max_per_client: 64,
            tcp_max_pending: 32,
            udp_payload: 1232,
            chaos: true,
            forward_special: Vec::new(),
        }
    }
}

/// `[upstream]`: where ICANN names are forwarded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Upstream servers; empty means the `nameserver` lines of `resolv_conf`.
    pub servers: Vec<UpstreamServer>,
    /// The file read when `servers` is empty.
    pub resolv_conf: PathBuf,
    /// Longest wait for one upstream before trying the next, in milliseconds.
    pub timeout_ms: u64,
    /// Total time a client query may spend upstream, in milliseconds.
    pub query_timeout_ms: u64,
    /// Rounds over the upstream list before giving up.
    pub attempts: u32,
    /// EDNS UDP payload size advertised to upstreams.
    pub edns_payload: u16,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            timeout_ms: 1000,
            query_timeout_ms: 4000,
            attempts: 2,
            edns_payload: 1232,
        }
    }
}

/// `[cache]`: the answer cache for forwarded names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most answers held.
    pub max_entries: usize,
    /// Most bytes of answers held (wire size plus bookkeeping).
    pub max_bytes: usize,
    /// TTLs below this are raised to it, in seconds.
    pub min_ttl_secs: u32,
    /// TTLs above this are lowered to it, in seconds.
    pub max_ttl_secs: u32,
    /// Negative answers (NXDOMAIN, NODATA) are held at most this long, in seconds.
    pub max_negative_ttl_secs: u32,
    /// Answer from expired entries when every upstream fails (RFC 8767).
    pub serve_stale: bool,
    /// Expired entries are kept this long for serve-stale, in seconds.
    pub max_stale_secs: u32,
    /// TTL given to a stale answer, in seconds.
    pub stale_ttl_secs: u32,
    /// A stale answer is sent when the refresh takes longer than this, in milliseconds.
    pub stale_client_timeout_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 8 * 1024 * 1024,
            min_ttl_secs: 0,
            max_ttl_secs: 86_400,
            max_negative_ttl_secs: 3_600,
            serve_stale: true,
            max_stale_secs: 86_400,
            stale_ttl_secs: 30,
            stale_client_timeout_ms: 1_800,
        }
    }
}

/// `[p2p]`: the peer-to-peer node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pConfig {
    /// Run the P2P node. Without it `.p2p` names come from local records only.
    pub enabled: bool,
    /// Multiaddrs listened on (QUIC and TCP). Unset (`None`): [`P2pConfig::default_listen`]
    /// on a port of the node's own ([`crate::p2p::own_port`]) for a resolver, on
    /// [`WELL_KNOWN_P2P_PORT`] for an introduction server.
    #[serde(deserialize_with = "optional_multiaddrs")]
    pub listen: Option<Vec<Multiaddr>>,
    /// Peers dialed at start to join the network.
    #[serde(deserialize_with = "multiaddrs")]
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses at which other nodes reach this one (public address, port forward).
    #[serde(deserialize_with = "multiaddrs")]
    pub external_addresses: Vec<Multiaddr>,
    /// Let reachability probes (AutoNAT) use private addresses: for intranets and labs whose
    /// nodes reach each other over private ranges.
    pub nat_probe_private_addresses: bool,
    /// Ask a UPnP gateway (home router) to forward the P2P ports.
    pub upnp: bool,
    /// Learn the public UDP address and the NAT's mapping behaviour from STUN servers.
    pub stun: bool,
    /// STUN servers (`host:port`); empty: each bootstrap peer's host on port 3478, where
    /// introduction servers answer.
    #[serde(deserialize_with = "host_ports")]
    pub stun_servers: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Kademlia mode: serve the DHT to others, only use it, or decide.
    pub dht_mode: DhtMode,
    /// Time a DNS query may wait for the DHT, in milliseconds; then SERVFAIL while the lookup
    /// goes on to warm the cache.
    pub lookup_budget_ms: u64,
    /// Valid replicas wanted before a lookup answers early.
    pub lookup_replicas: usize,
    /// Records this node stores for others at most.
    pub max_stored_records: usize,
    /// Records of any one owner key stored at most (docs/PROTOCOL.md section 5 rule 10), whichever
    /// peer put them: a storage node handing records on is not charged for them. Read from the
    /// key's earlier name `max_records_per_peer` too.
    #[serde(alias = "max_records_per_peer")]
    pub max_records_per_owner: usize,
    /// Records accepted from any one peer per minute at most.
    pub max_puts_per_peer_per_minute: usize,
    /// Open connections at most, in all. An introduction server counts incoming and outgoing
    /// ones apart (each at most this); at the cap it closes an incoming connection of the
    /// busiest address group, then address, then of the address that opened the most lately,
    /// to let in a newcomer from elsewhere, so up to 64 more may be open while those close.
    pub max_connections: u32,
    /// Open connections with any one peer at most.
    pub max_connections_per_peer: u32,
    /// Incoming connections still in their handshake at most, on each transport (TCP and QUIC
    /// apart). At the cap a newcomer takes the place of the oldest handshake of the busiest
    /// address group (IPv4 /24, IPv6 /48), then address, unless it comes from there itself
    /// (then it is refused).
    pub max_pending_incoming: u32,
    /// DHT lookups running at once at most. DNS clients share them (and `dns.max_inflight`)
    /// fairly: one client alone may hold half, and with n clients waiting each may hold
    /// 1/(n+1); a lookup past its answer time is ended first when another needs room.
    pub max_lookups: usize,
    /// Pinned owners kept at most (`pins.toml`); past it, expired pins go first, then the
    /// least recently used.
    pub max_pins: usize,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            bootstrap: Vec::new(),
            external_addresses: Vec::new(),
            nat_probe_private_addresses: false,
            upnp: true,
            stun: true,
            stun_servers: Vec::new(),
            mdns: true,
            dht_mode: DhtMode::Auto,
            lookup_budget_ms: 2000,
            lookup_replicas: 3,
            max_stored_records: 10_000,
            max_records_per_owner: 100,
            max_puts_per_peer_per_minute: 60,
            max_connections: 1024,
            max_connections_per_peer: 8,
            max_pending_incoming: 256,
            max_lookups: 512,
            max_pins: 10_000,
        }
    }
}

/// The port introduction servers listen on unless `p2p.listen` says otherwise: the one
/// bootstrap addresses name. A resolver's node takes a port of its own instead.
pub const WELL_KNOWN_P2P_PORT: u16 = 4747;

impl P2pConfig {
    /// The addresses listened on when `listen` is unset, on `port`: QUIC (preferred) and TCP,
    /// IPv4 and IPv6, every interface.
    pub fn default_listen(port: u16) -> Vec<Multiaddr> {
        [
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
            format!("/ip4/0.0.0.0/tcp/{port}"),
            format!("/ip6/::/udp/{port}/quic-v1"),
            format!("/ip6/::/tcp/{port}"),
        ]
        .iter()
        .map(|a| {
            a.parse()
                .expect("a multiaddr of a wildcard address and a port")
        })
        .collect()
    }

    /// The addresses to listen on: `listen`, or when it is unset the defaults on
    /// [`WELL_KNOWN_P2P_PORT`] (an introduction server's; a resolver's daemon sets its own
    /// port first, with [`crate::p2p::own_port::resolve`]).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen
            .clone()
            .unwrap_or_else(|| Self::default_listen(WELL_KNOWN_P2P_PORT))
    }
}

/// Kademlia mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtMode {
    /// Serve the DHT while AutoNAT finds the node reachable from anywhere; only ask (and take
    /// relay slots) when it is private or behind a NAT.
    Auto,
    /// Always serve: store records for others and answer their queries.
    Server,
    /// Only ask: store nothing for others and stay out of their routing tables.
    Client,
}

fn multiaddrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<Multiaddr>()
                .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a multiaddr: {e}")))
        })
        .collect()
}

fn optional_multiaddrs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Multiaddr>>, D::Error> {
    multiaddrs(d).map(Some)
}

fn host_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let all = Vec::<String>::deserialize(d)?;
    for s in &all {
        let valid = s.rsplit_once(':').is_some_and(|(host, port)| {
            !host.trim_matches(['[', ']']).is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not host:port (e.g. \"stun.example.net:3478\" or \"[2001:db8::1]:3478\")"
            )));
        }
    }
    Ok(all)
}

impl Config {
    /// Parses and checks configuration text in full; `origin` names the source in error
    /// messages.
    #[cfg(test)]
    fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config = Self::parse(text, origin)?;
        config.check()?;
        Ok(config)
    }

    /// Parses configuration text and checks each value on its own (sections and ranges). The
    /// relations between values ([`relations::check`]) wait for the command line's flags, which
    /// may replace one side of them (`--dns-listen` over a listen address an upstream shares).
    fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })?;
        config.check_values()?;
        Ok(config)
    }

    /// Reads and checks a configuration file (warnings are [`Config::validate`]'s to log, once
    /// the command line's flags are applied).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::state::read_text_bounded(path, MAX_CONFIG_BYTES).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Finds the configuration: an explicit path, then `$P2PDNS_CONFIG`, then the user's and the
    /// system's file if one exists, else the embedded defaults. Returns the path it used, if any.
    pub fn discover(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        if let Some(path) = explicit.map(Path::to_owned).or(env) {
            return Ok((Self::load(&path)?, Some(path)));
        }
        let candidates = directories::ProjectDirs::from("", "", "p2pdns")
            .map(|dirs| dirs.config_dir().join("p2pdns.toml"))
            .into_iter()
            .chain([PathBuf::from(SYSTEM_CONFIG_FILE)]);
        for path in candidates {
            if path.is_file() {
                return Ok((Self::load(&path)?, Some(path)));
            }
        }
        Ok((Self::default(), None))
    }

    /// The data directory: the `--data-dir` flag, then `$P2PDNS_DATA_DIR`, then `data_dir` from
    /// the file, else the platform's per-user directory, else the system directory for services.
    pub fn data_dir(&self, flag: Option<&Path>) -> PathBuf {
        if let Some(dir) = self.chosen_data_dir(flag) {
            return dir;
        }
        // A service account (root or a system user) has no useful home: use the system path.
        let has_home = std::env::var_os("HOME").is_some_and(|h| !h.is_empty() && h != "/");
        match directories::ProjectDirs::from("", "", "p2pdns") {
            Some(dirs) if has_home => dirs.data_dir().to_owned(),
            _ => PathBuf::from(SYSTEM_DATA_DIR),
        }
    }

    /// The data directory when one was chosen (flag, environment or file), not defaulted.
    pub fn chosen_data_dir(&self, flag: Option<&Path>) -> Option<PathBuf> {
        let env = std::env::var_os(DATA_DIR_ENV).map(PathBuf::from);
        flag.map(Path::to_owned).or(env).or(self.data_dir.clone())
    }

    /// Checks the configuration as [`Config::check`] does, and logs its
    /// [`Config::warnings`] when it passes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()?;
        for warning in self.warnings() {
            warn!("config value {}: {}", warning.key, warning.message);
        }
        Ok(())
    }

    /// Checks relations between values that serde cannot express, section by section, then
    /// the ranges of numbers and the contradictions between sections; the error names the
    /// first bad value by its dotted key.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.check_values()?;
        relations::check(self)
    }

    /// The checks of [`Config::check`] that look at one value (or one section) at a time.
    fn check_values(&self) -> Result<(), ConfigError> {
        self.dns.validate()?;
        self.upstream.validate()?;
        self.cache.validate()?;
        self.naming.validate()?;
        self.p2p.validate()?;
        self.intro.validate()?;
        self.tunnel
            .validate()
            .map_err(|(key, message)| invalid(&key, message))?;
        self.metrics.validate()?;
        // After the sections' own checks, whose messages say more about a zero.
        ranges::check(self)
    }

    /// Values the daemon runs with but probably not as meant, each with what to write
    /// instead.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut warnings = relations::warnings(self);
        warnings.extend(self.metrics.warnings());
        warnings
    }
}

pub(crate) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Fails on the first of `limits` (dotted key, value) that is zero.
pub(crate) fn at_least_one(limits: &[(&str, u64)]) -> Result<(), ConfigError> {
    match limits.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(invalid(key, "must be at least 1")),
        None => Ok(()),
    }
}

/// Fails when the lower bound `min` (at `min_key`) is above `max` (at `max_key`).
pub(crate) fn ordered(min_key: &str, min: u64, max_key: &str, max: u64) -> Result<(), ConfigError> {
    if min > max {
        return Err(invalid(
            min_key,
            format!("{min} is above {max_key} ({max})"),
        ));
    }
    Ok(())
}

impl DnsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("dns.listen", "at least one address is needed"));
        }
        for (i, addr) in self.listen.iter().enumerate() {
            if let Some(first) = self.listen[..i].iter().position(|a| a == addr) {
                return Err(invalid(
                    &format!("dns.listen[{i}]"),
                    format!("{addr} is listed already, as dns.listen[{first}]"),
                ));
            }
        }
        if self.allow.is_empty() {
            return Err(invalid(
                "dns.allow",
                "empty: every client would be refused (loopback is 127.0.0.0/8 and ::1/128)",
            ));
        }
        at_least_one(&[
            ("dns.max_inflight", self.max_inflight as u64),
            ("dns.tcp_idle_timeout_secs", self.tcp_idle_timeout_secs),
            ("dns.tcp_max_per_client", self.tcp_max_per_client as u64),
            ("dns.tcp_max_pending", self.tcp_max_pending as u64),
        ])?;
        if self.udp_payload < 512 {
            return Err(invalid("dns.udp_payload", "must be at least 512"));
        }
        for (i, entry) in self.forward_special.iter().enumerate() {
            crate::dns::special::check_forwardable(entry)
                .map_err(|e| invalid(&format!("dns.forward_special[{i}]"), e.to_string()))?;
        }
        Ok(())
    }
}

impl UpstreamConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, server) in self.servers.iter().enumerate() {
            server
                .check()
                .map_err(|why| invalid(&format!("upstream.servers[{i}]"), why))?;
        }
        if self.edns_payload < 512 {
            return Err(invalid("upstream.edns_payload", "must be at least 512"));
        }
        at_least_one(&[
            ("upstream.attempts", self.attempts.into()),
            ("upstream.timeout_ms", self.timeout_ms),
            ("upstream.query_timeout_ms", self.query_timeout_ms),
        ])?;
        ordered(
            "upstream.timeout_ms",
            self.timeout_ms,
            "upstream.query_timeout_ms",
            self.query_timeout_ms,
        )
    }
}

impl CacheConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ordered(
            "cache.min_ttl_secs",
            self.min_ttl_secs.into(),
            "cache.max_ttl_secs",
            self.max_ttl_secs.into(),
        )?;
        // Negative TTLs are clamped between the two as well.
        ordered(
            "cache.min_ttl_secs",
            self.min_ttl_secs.into(),
            "cache.max_negative_ttl_secs",
            self.max_negative_ttl_secs.into(),
        )
    }
}

impl P2pConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let store = "must be at least 1 (p2p.dht_mode = \"client\" stores nothing for others)";
        for (key, value) in [
            ("p2p.max_stored_records", self.max_stored_records),
            ("p2p.max_records_per_owner", self.max_records_per_owner),
            (
                "p2p.max_puts_per_peer_per_minute",
                self.max_puts_per_peer_per_minute,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, store));
            }
        }
        at_least_one(&[
            ("p2p.lookup_budget_ms", self.lookup_budget_ms),
            ("p2p.lookup_replicas", self.lookup_replicas as u64),
            ("p2p.max_connections", self.max_connections.into()),
            (
                "p2p.max_connections_per_peer",
                self.max_connections_per_peer.into(),
            ),
            ("p2p.max_pending_incoming", self.max_pending_incoming.into()),
            ("p2p.max_lookups", self.max_lookups as u64),
            ("p2p.max_pins", self.max_pins as u64),
        ])
    }
}

mod metrics;
mod naming;
pub(crate) mod ranges;
mod relations;
#[cfg(test)]
mod tests;
mod upstream;
