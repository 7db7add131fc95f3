//! The command line. Names here are a contract: tests, docs and service files use them.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use libp2p::Multiaddr;

use crate::{
    config::{Config, UpstreamAddr},
    control::{ClientError, Request, Response, Status, call},
    p2p::{NodeStatus, Reachability, Transport},
};

#[derive(Debug, Parser)]
#[command(
    name = "p2pdns",
    version,
    about = "A local DNS resolver for a peer-to-peer name network"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides both flags.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Configuration file [default: $P2PDNS_CONFIG, ~/.config/p2pdns/p2pdns.toml,
    /// /etc/p2pdns/p2pdns.toml, else built-in defaults].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the daemon's state [default: $P2PDNS_DATA_DIR, data_dir from the config,
    /// ~/.local/share/p2pdns, /var/lib/p2pdns for service users].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Run(RunArgs),
    /// Run an introduction server in the foreground: a P2P-only node (no DNS) that new nodes
    /// bootstrap from; it prints the --bootstrap addresses to give them.
    Intro(IntroArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Install or remove the system service and the OS resolver integration.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Check the daemon, the OS resolver path, port 53, upstreams and peers; one line each,
    /// with a fix for what is wrong.
    Doctor,
    /// Show the running daemon's state: DNS, upstreams, the P2P node and its peers.
    Status {
        /// List every peer: routing table entries with their addresses, and connections.
        #[arg(long)]
        peers: bool,
    },
    /// Publish records under a .p2p name (added to the name's records), or a zone file.
    Publish(PublishArgs),
    /// Stop publishing a name (copies held by other nodes expire on their own).
    Unpublish {
        /// The name, e.g. site.p2p (".p2p" may be left out).
        name: String,
    },
    /// List the names this daemon publishes, with how many other nodes hold each.
    Names,
    /// Resolve a .p2p name through the daemon; shows the owner key, sequence number and how
    /// many replicas agreed.
    Resolve {
        name: String,
        /// Record type.
        #[arg(default_value = "A")]
        qtype: String,
    },
    /// Connect to the node serving a .p2p name (its owner), through an introduction server's
    /// relay when needed, and report whether the connection ended up direct.
    Connect {
        name: String,
        /// Seconds to wait for a relayed connection to become direct (hole punching).
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
    /// List pinned owners of human names, or remove a pin.
    Pins {
        #[command(subcommand)]
        command: Option<PinsCommand>,
    },
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The name, e.g. site.p2p or www.site.p2p (".p2p" may be left out).
    pub name: String,
    /// Record type (A, AAAA, CNAME, TXT, MX, SRV, CAA, HTTPS...).
    #[arg(required_unless_present = "zone")]
    pub rtype: Option<String>,
    /// Record data in zone-file syntax, e.g. `192.0.2.1` or `10 mail.site.p2p.` (the words
    /// are joined with spaces; quote TXT strings: '"hello world"').
    pub value: Vec<String>,
    /// TTL of the record in seconds [default: 300].
    #[arg(long)]
    pub ttl: Option<u32>,
    /// Publish this zone file (RFC 1035 syntax, names relative to NAME) as the name's records,
    /// replacing what it had.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rtype", "value", "ttl"])]
    pub zone: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PinsCommand {
    /// List the pins (the default).
    List,
    /// Forget the pinned owner of a name; the next owner seen is pinned.
    Remove { name: String },
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Answer DNS on this address, UDP and TCP (repeatable; replaces dns.listen).
    #[arg(long = "dns-listen", value_name = "ADDR:PORT")]
    pub dns_listen: Vec<SocketAddr>,
    /// Forward to this upstream server (repeatable; replaces upstream.servers).
    #[arg(long = "upstream", value_name = "ADDR[:PORT]")]
    pub upstreams: Vec<UpstreamAddr>,
    /// Listen for P2P connections on this multiaddr (repeatable; replaces p2p.listen).
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<libp2p::Multiaddr>,
    /// Join the network through this peer (repeatable; added to p2p.bootstrap).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Args)]
pub struct IntroArgs {
    /// Listen for P2P connections on this multiaddr (repeatable; replaces p2p.listen).
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<libp2p::Multiaddr>,
    /// An address at which other nodes reach this server, e.g. its public IP (repeatable;
    /// replaces p2p.external_addresses).
    #[arg(long = "external-addr", value_name = "MULTIADDR")]
    pub external_addrs: Vec<libp2p::Multiaddr>,
    /// Also join the network through this peer, e.g. another introduction server (repeatable;
    /// added to p2p.bootstrap).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Answer STUN binding requests (RFC 5389) on this UDP address (repeatable) [default:
    /// 0.0.0.0:3478]; `--stun-listen none` turns STUN off.
    #[arg(long = "stun-listen", value_name = "ADDR:PORT|none")]
    pub stun_listen: Vec<String>,
}

impl IntroArgs {
    /// The STUN addresses asked for, or the defaults.
    pub fn stun_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        if self.stun_listen.is_empty() {
            return Ok(vec!["0.0.0.0:3478".parse().expect("static address")]);
        }
        if self.stun_listen.iter().any(|a| a == "none") {
            return Ok(Vec::new());
        }
        self.stun_listen
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| format!("--stun-listen {a}: not an ADDR:PORT ({e})"))
            })
            .collect()
    }
}

impl IntroArgs {
    /// Applies the flags over the file's `[p2p]` values.
    pub fn apply(&self, config: &mut Config) {
        if !self.p2p_listen.is_empty() {
            config.p2p.listen.clone_from(&self.p2p_listen);
        }
        if !self.external_addrs.is_empty() {
            config
                .p2p
                .external_addresses
                .clone_from(&self.external_addrs);
        }
        config.p2p.bootstrap.extend(self.bootstrap.iter().cloned());
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install and start the service, and send .p2p names to it (split DNS via
    /// systemd-resolved or /etc/resolver; --full makes it the system's only resolver).
    Install {
        /// Full mode: the system resolver points at p2pdns for every name, and p2pdns forwards
        /// to the servers the system used before.
        #[arg(long)]
        full: bool,
        /// The binary is already installed at this absolute path (by a package): the service
        /// runs it and nothing is copied [default: copy this program to /usr/local/bin].
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        #[command(flatten)]
        target: ServiceTarget,
    },
    /// Stop the service and remove exactly what install wrote, restoring what it replaced.
    Uninstall {
        #[command(flatten)]
        target: ServiceTarget,
    },
}

#[derive(Debug, Args)]
pub struct ServiceTarget {
    /// Write into this staging root instead of / (runs no system command).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The platform whose files to write [default: this one].
    #[arg(long, value_enum)]
    pub platform: Option<crate::os::service::Platform>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
}

impl RunArgs {
    /// Applies the flags over the file's values.
    pub fn apply(&self, config: &mut Config) {
        if !self.dns_listen.is_empty() {
            config.dns.listen.clone_from(&self.dns_listen);
        }
        if !self.upstreams.is_empty() {
            config.upstream.servers.clone_from(&self.upstreams);
        }
        if !self.p2p_listen.is_empty() {
            config.p2p.listen.clone_from(&self.p2p_listen);
        }
        config.p2p.bootstrap.extend(self.bootstrap.iter().cloned());
    }
}

/// Errors of the commands that talk to a running daemon.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("failed to read the zone file {path}")]
    Zone {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

impl Command {
    /// Runs a command that talks to the daemon using `data_dir`, returning what to print.
    /// `None` for commands that do not talk to a daemon.
    pub async fn call_daemon(
        &self,
        data_dir: &std::path::Path,
        try_service: bool,
    ) -> Option<Result<String, CommandError>> {
        let request = match self.request() {
            Ok(Some(request)) => request,
            Ok(None) => return None,
            Err(error) => return Some(Err(error)),
        };
        Some(
            call(data_dir, try_service, &request)
                .await
                .map(|r| render(&r))
                .map_err(CommandError::from),
        )
    }

    fn request(&self) -> Result<Option<Request>, CommandError> {
        Ok(Some(match self {
            Command::Run(_)
            | Command::Intro(_)
            | Command::Config(_)
            | Command::Service(_)
            | Command::Doctor => return Ok(None),
            Command::Status { peers } => Request::Status { peers: *peers },
            Command::Publish(args) => match &args.zone {
                Some(path) => Request::PublishZone {
                    name: args.name.clone(),
                    zone: std::fs::read_to_string(path).map_err(|source| CommandError::Zone {
                        path: path.clone(),
                        source,
                    })?,
                },
                None => {
                    let rtype = args.rtype.clone().unwrap_or_default();
                    if args.value.is_empty() {
                        return Err(CommandError::Usage(format!(
                            "publish {} {rtype} needs a value, e.g. `p2pdns publish {} A 192.0.2.1`",
                            args.name, args.name
                        )));
                    }
                    let ttl = args.ttl.map(|t| format!("{t} ")).unwrap_or_default();
                    Request::Publish {
                        name: args.name.clone(),
                        records: vec![format!("{ttl}{rtype} {}", args.value.join(" "))],
                    }
                }
            },
            Command::Unpublish { name } => Request::Unpublish { name: name.clone() },
            Command::Names => Request::Names,
            Command::Connect { name, wait } => Request::Connect {
                name: name.clone(),
                wait_direct_secs: *wait,
            },
            Command::Resolve { name, qtype } => Request::Resolve {
                name: name.clone(),
                qtype: qtype.clone(),
            },
            Command::Pins { command } => match command {
                None | Some(PinsCommand::List) => Request::Pins,
                Some(PinsCommand::Remove { name }) => Request::RemovePin { name: name.clone() },
            },
        }))
    }
}

/// Formats a response for people.
fn render(response: &Response) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    match response {
        Response::Error { message } => out.push_str(message),
        Response::Status(s) => render_status(&mut out, s),
        Response::Published {
            name,
            seq,
            expires,
            records,
        } => {
            let _ = writeln!(
                out,
                "published {name} (seq {seq}, expires {})",
                expiry(*expires)
            );
            for record in records {
                let _ = writeln!(out, "  {record}");
            }
        }
        Response::Unpublished { name, existed } => {
            let _ = writeln!(
                out,
                "{}",
                if *existed {
                    format!(
                        "{name} is no longer published; copies on other nodes expire on their own"
                    )
                } else {
                    format!("{name} was not published by this daemon")
                }
            );
        }
        Response::Names { names } => {
            if names.is_empty() {
                out.push_str("no names published (see `p2pdns publish`)\n");
            }
            for n in names {
                let _ = writeln!(
                    out,
                    "{}  seq {}  expires {}  held by {} other node(s)",
                    n.name,
                    n.seq,
                    expiry(n.expires),
                    n.replicas
                );
                for record in &n.records {
                    let _ = writeln!(out, "  {record}");
                }
            }
        }
        Response::Resolved(r) => {
            let _ = writeln!(out, "{} {}", r.name, r.rcode);
            for answer in &r.answers {
                let _ = writeln!(out, "  {answer}");
            }
            if let (Some(owner), Some(seq), Some(replicas)) = (&r.owner, r.seq, r.replicas) {
                let _ = writeln!(out, "owner:    {owner}");
                let _ = writeln!(out, "seq:      {seq}");
                let _ = writeln!(out, "replicas: {replicas} agreeing");
            }
        }
        Response::Connected {
            name,
            peer,
            path,
            via,
            upgraded,
            elapsed_ms,
        } => {
            let how = if *upgraded {
                " (relayed first, then hole punched)"
            } else {
                ""
            };
            let transport = transport_of(via.as_ref());
            let _ = writeln!(
                out,
                "{name}: {path} connection to {peer}{transport}{how} in {elapsed_ms} ms"
            );
        }
        Response::Pins { pins } => {
            if pins.is_empty() {
                out.push_str("no pins\n");
            }
            for pin in pins {
                let _ = writeln!(
                    out,
                    "{}  owner {}  record expires {}",
                    pin.name,
                    pin.owner,
                    expiry(pin.expires)
                );
            }
        }
        Response::PinRemoved { name, existed } => {
            let _ = writeln!(
                out,
                "{}",
                if *existed {
                    format!("pin for {name} removed")
                } else {
                    format!("{name} had no pin")
                }
            );
        }
    }
    out
}

/// " over QUIC (addr)" for a connection's address, or nothing when none is known.
fn transport_of(addr: Option<&Multiaddr>) -> String {
    addr.map(|addr| format!(" over {} ({addr})", Transport::of(addr)))
        .unwrap_or_default()
}

/// `p2pdns status`, for people.
fn render_status(out: &mut String, s: &Status) {
    use std::fmt::Write;
    let _ = writeln!(out, "p2pdns {}", s.version);
    let _ = writeln!(out, "dns:        {}", s.dns_addrs.join(", "));
    let upstreams = if s.upstreams.is_empty() {
        "none (names outside .p2p get SERVFAIL)".to_owned()
    } else {
        s.upstreams.join(", ")
    };
    let _ = writeln!(out, "upstreams:  {upstreams}");
    let _ = writeln!(out, "cache:      {} answers", s.cache_entries);
    match &s.p2p {
        Some(p) => render_node(out, &p.key_name, &p.node),
        None => out.push_str("p2p:        disabled\n"),
    }
}

/// The P2P node's part of `p2pdns status`.
fn render_node(out: &mut String, key_name: &str, p: &NodeStatus) {
    use std::fmt::Write;
    let _ = writeln!(out, "peer id:    {}", p.peer_id);
    let _ = writeln!(out, "key name:   {key_name}");
    let _ = writeln!(out, "dht mode:   {}", p.mode);
    let _ = writeln!(
        out,
        "peers:      {} connected, {} in the routing table; connections: {} direct, {} relayed",
        p.connected_peers, p.routing_table_peers, p.direct_connections, p.relayed_connections
    );
    let _ = writeln!(out, "reachable:  {} (AutoNAT)", p.reachability);
    if p.reachability == Reachability::PublicBehindNat {
        let _ = writeln!(
            out,
            "            (proven only from peers it contacted: its NAT may filter others, so it \
             keeps a relay slot)"
        );
    }
    for external in &p.external_addrs {
        let _ = writeln!(out, "external:   {} ({})", external.addr, external.source);
    }
    for addr in &p.relay_reservations {
        let _ = writeln!(out, "relayed at: {addr}");
    }
    for standing in &p.rendezvous_points {
        let state = if standing.registered {
            "registered"
        } else {
            "not registered yet"
        };
        let _ = writeln!(
            out,
            "rendezvous: {} ({state}; {} peers learned from rendezvous points)",
            standing.point, p.rendezvous_peers
        );
    }
    let _ = writeln!(
        out,
        "records:    {} stored for the network",
        p.stored_records
    );
    for addr in &p.listen_addrs {
        let _ = writeln!(out, "listening:  {addr}/p2p/{}", p.peer_id);
    }
    for peer in &p.peers {
        let state = match (peer.connected, peer.in_routing_table) {
            (true, true) => "connected, routing table",
            (true, false) => "connected",
            (false, _) => "routing table",
        };
        let _ = writeln!(out, "peer:       {} ({state})", peer.peer_id);
        for addr in &peer.addrs {
            let _ = writeln!(out, "              {addr}");
        }
        for connection in &peer.connections {
            let _ = writeln!(
                out,
                "              {} connection{}",
                connection.path,
                transport_of(Some(&connection.remote))
            );
        }
    }
}

/// A Unix time as seconds from now, for people.
fn expiry(unix: u64) -> String {
    let now = crate::record::unix_now();
    if unix <= now {
        return "already".to_owned();
    }
    let left = unix - now;
    match left {
        0..=119 => format!("in {left} s"),
        120..=7199 => format!("in {} min", left / 60),
        _ => format!("in {} h", left / 3600),
    }
}
