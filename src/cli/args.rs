//! The command line's grammar (clap). Names here are a contract: tests, docs and service files
//! use them.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, UpstreamServer};

/// The whole command line: global flags and one subcommand.
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
    /// Seconds to wait for the daemon's answer, for the commands that talk to it [default: 30;
    /// connect: 30 plus --wait].
    #[arg(long, global = true, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each variant's doc is its line in `p2pdns --help`.
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
    /// Stop publishing a name (copies held by other nodes expire on their own, within about
    /// two days).
    Unpublish {
        /// The name, e.g. site.p2p (".p2p" may be left out).
        name: String,
    },
    /// List the names this daemon publishes, with how many other nodes held each at the last
    /// count (each listing starts a new count in the background).
    Names,
    /// Ask the daemon with this process id to reload, as SIGHUP does (the systemd unit's
    /// ExecReload runs it, so no `kill` binary is needed).
    Reload {
        /// The daemon's process id (systemd passes $MAINPID).
        #[arg(long)]
        pid: i32,
    },
    /// Resolve a .p2p name through the daemon; shows the owner key, sequence number and how
    /// many replicas agreed.
    ///
    /// Exit status: 0 when the name exists (with or without records of the type); 1 when it
    /// does not exist (NXDOMAIN), or no daemon runs; 75 when the lookup failed (SERVFAIL: no
    /// peer of the p2p network answered; trying again may work) or the daemon did not answer
    /// in time.
    Resolve {
        /// The name, e.g. site.p2p or www.site.p2p (".p2p" may be left out).
        name: String,
        /// Record type.
        #[arg(default_value = "A")]
        qtype: String,
    },
    /// Connect to the node serving a .p2p name (its owner), through an introduction server's
    /// relay when needed, and report whether the connection ended up direct.
    Connect {
        /// The name, e.g. site.p2p (".p2p" may be left out of a name of one label, `site`).
        name: String,
        /// Seconds to wait for a relayed connection to become direct (hole punching).
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
    /// Serve a local TCP service under a .p2p name: other nodes open it by name through a
    /// tunnel to this node, from behind any NAT (kept across restarts).
    Expose {
        /// The name, e.g. site.p2p or ssh.home.p2p (".p2p" may be left out).
        name: String,
        /// The port clients connect to, e.g. 80.
        port: u16,
        /// Where this node connects each tunnel [default: 127.0.0.1:PORT].
        #[arg(long, value_name = "HOST:PORT")]
        to: Option<String>,
        /// Let in only this client key name (repeat for several); without it, anyone may
        /// connect. A client's key name is the `key name` line of its `p2pdns status`.
        #[arg(long = "allow", value_name = "KEY_NAME")]
        allow: Vec<String>,
        /// A name below a site (`ssh.home.p2p`) is announced in the record of the site
        /// (`home.p2p`), which it then claims for this node's key: without this flag, that is
        /// refused unless this node publishes the site already.
        #[arg(long)]
        claim_parent: bool,
    },
    /// Stop serving a name's services through tunnels (one port, or all of them). The name
    /// stays claimed by this node's key, its record published without the service, until
    /// `unpublish`.
    Unexpose {
        /// The name, e.g. site.p2p (".p2p" may be left out).
        name: String,
        /// The port to stop serving [default: every port of the name].
        port: Option<u16>,
    },
    /// List the services this node exposes and the tunnelled names it opened, with open
    /// connections, bytes and the path (direct or relayed).
    Tunnels {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List pinned owners of human names, or remove a pin.
    Pins {
        /// What to do with the pins; none lists them.
        #[command(subcommand)]
        command: Option<PinsCommand>,
    },
}

/// `p2pdns publish`: records given on the command line, or a zone file.
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
    /// TTL of the record in seconds, at most 86400 [default: 300]; it becomes the TTL of every
    /// record of the same name and type (RFC 2136 section 3.4.2.2).
    #[arg(long)]
    pub ttl: Option<u32>,
    /// Publish this zone file (RFC 1035 syntax, names relative to NAME) as the name's records,
    /// replacing what it had.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rtype", "value", "ttl"])]
    pub zone: Option<PathBuf>,
    /// A name below a site (`www.site.p2p`) is published in the record of the site
    /// (`site.p2p`), which it then claims for this node's key: without this flag, that is
    /// refused unless this node publishes the site already.
    #[arg(long)]
    pub claim_parent: bool,
}

/// `p2pdns pins` subcommands.
#[derive(Debug, Subcommand)]
pub enum PinsCommand {
    /// List the pins (the default).
    List,
    /// Forget the pinned owner of a name; the next owner seen is pinned.
    Remove {
        /// The name, e.g. site.p2p (".p2p" may be left out).
        name: String,
    },
}

/// `p2pdns run`: flags that override the configuration file.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Answer DNS on this address, UDP and TCP (repeatable; replaces dns.listen).
    #[arg(long = "dns-listen", value_name = "ADDR:PORT")]
    pub dns_listen: Vec<SocketAddr>,
    /// Forward to this upstream server (repeatable; replaces upstream.servers): plain DNS
    /// `IP[:PORT]`, DNS over TLS `tls://IP[:PORT]#NAME` (port 853), or DNS over HTTPS
    /// `https://IP[:PORT]/PATH#NAME` (port 443); NAME is what the certificate must be valid for.
    #[arg(long = "upstream", value_name = "SERVER")]
    pub upstreams: Vec<UpstreamServer>,
    /// Listen for P2P connections on this multiaddr (repeatable; replaces p2p.listen).
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<libp2p::Multiaddr>,
    /// Join the network through this peer (repeatable; added to p2p.bootstrap).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (turns metrics.enabled on and
    /// replaces metrics.listen).
    #[arg(long = "metrics-listen", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// `p2pdns intro`: flags that override the configuration file's `[p2p]` section, and the
/// STUN addresses.
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
    /// Answer STUN binding requests (RFC 8489) on this UDP address (repeatable) [default:
    /// 0.0.0.0:3478]; `--stun-listen none` turns STUN off.
    #[arg(long = "stun-listen", value_name = "ADDR:PORT|none")]
    pub stun_listen: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (turns metrics.enabled on and
    /// replaces metrics.listen).
    #[arg(long = "metrics-listen", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
}

/// A `--stun-listen` value that is neither an address nor `none`.
#[derive(Debug, thiserror::Error)]
#[error("--stun-listen {value}: not an ADDR:PORT")]
pub struct StunListenError {
    value: String,
    #[source]
    source: std::net::AddrParseError,
}

impl IntroArgs {
    /// The STUN addresses asked for, or the defaults.
    pub fn stun_addrs(&self) -> Result<Vec<SocketAddr>, StunListenError> {
        if self.stun_listen.is_empty() {
            return Ok(vec!["0.0.0.0:3478".parse().expect("static address")]);
        }
        if self.stun_listen.iter().any(|a| a == "none") {
            return Ok(Vec::new());
        }
        self.stun_listen
            .iter()
            .map(|value| {
                value.parse().map_err(|source| StunListenError {
                    value: value.clone(),
                    source,
                })
            })
            .collect()
    }

    /// Applies the flags over the file's `[p2p]` (and `[metrics]`) values.
    pub fn apply(&self, config: &mut Config) {
        apply_metrics_listen(self.metrics_listen, config);
        if !self.p2p_listen.is_empty() {
            config.p2p.listen = Some(self.p2p_listen.clone());
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

/// `p2pdns service` subcommands.
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
        /// Where to write, and for which platform.
        #[command(flatten)]
        target: ServiceTarget,
    },
    /// Stop the service and remove exactly what install wrote, restoring what it replaced.
    Uninstall {
        /// Where to remove from, and for which platform.
        #[command(flatten)]
        target: ServiceTarget,
    },
}

/// Where `service install/uninstall` write and which platform's files they write.
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

/// `p2pdns config` subcommands.
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
            config.p2p.listen = Some(self.p2p_listen.clone());
        }
        config.p2p.bootstrap.extend(self.bootstrap.iter().cloned());
        apply_metrics_listen(self.metrics_listen, config);
    }
}

/// `--metrics-listen`: the endpoint on, at that address.
fn apply_metrics_listen(listen: Option<SocketAddr>, config: &mut Config) {
    if let Some(listen) = listen {
        config.metrics.enabled = true;
        config.metrics.listen = listen;
    }
}
