//! The command line. Names here are a contract: tests, docs and service files use them.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, UpstreamAddr};

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
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Answer DNS on this address, UDP and TCP (repeatable; replaces dns.listen).
    #[arg(long = "dns-listen", value_name = "ADDR:PORT")]
    pub dns_listen: Vec<SocketAddr>,
    /// Forward to this upstream server (repeatable; replaces upstream.servers).
    #[arg(long = "upstream", value_name = "ADDR[:PORT]")]
    pub upstreams: Vec<UpstreamAddr>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    pub check_config: bool,
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
    }
}
