//! Values each fine on its own that contradict one another, or this machine: refused at load
//! with the key named (exit code 78), like a value out of its range, when the daemon could not
//! do what they ask or would do harm (an open resolver, a forwarding loop to itself, a limit
//! per peer above the limit for all peers); warned about at load ([`ConfigWarning`]) when the
//! daemon works but probably not as meant.

use std::net::SocketAddr;

use ipnet::{IpNet, Ipv6Net};

use super::{Config, ConfigError, invalid, ranges::RANGES};

/// Pairs of a limit for one peer (or client) and the limit for all of them together, by their
/// dotted keys: the first may not be above the second, whose cap it would never reach. Both
/// keys of a pair are in one section.
pub(crate) const WITHIN: &[(&str, &str)] = &[
    ("dns.tcp_max_per_client", "dns.tcp_max_connections"),
    ("p2p.max_records_per_owner", "p2p.max_stored_records"),
    ("p2p.max_connections_per_peer", "p2p.max_connections"),
    ("intro.max_reservations_per_peer", "intro.max_reservations"),
    ("intro.max_circuits_per_peer", "intro.max_circuits"),
    (
        "intro.max_registrations_per_peer",
        "intro.max_registrations",
    ),
    ("tunnel.max_streams_per_peer", "tunnel.max_streams"),
];

/// A value the daemon runs with, but probably not as the user meant; logged at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The value's dotted key, with the index of a list entry (`p2p.bootstrap[0]`).
    pub key: String,
    /// What the daemon will do with it, and what to write instead.
    pub message: String,
}

/// Fails on the first contradiction of `config`, naming its key.
pub(crate) fn check(config: &Config) -> Result<(), ConfigError> {
    if config.naming.tlds.is_empty() {
        return Err(invalid(
            "naming.tlds",
            "empty: the daemon would answer no .p2p name (every name would go upstream); \
             list at least \"p2p\"",
        ));
    }
    check_allow(config)?;
    check_listen(&config.dns.listen)?;
    check_metrics_listen(config)?;
    check_upstreams(config)?;
    for (part, whole) in WITHIN {
        let (part_value, whole_value) = (value(config, part), value(config, whole));
        if part_value > whole_value {
            return Err(invalid(
                part,
                format!(
                    "{part_value} is above {whole} ({whole_value}), the limit for all together, \
                     which it could never reach; lower it or raise {whole}"
                ),
            ));
        }
    }
    Ok(())
}

/// The value of the numeric `key` in `config`.
fn value(config: &Config, key: &str) -> u64 {
    let range = RANGES.iter().find(|r| r.key == key);
    (range.expect("every key of WITHIN has a range").value)(config)
}

/// `dns.allow` admits no client from the whole internet on a non-loopback address unless
/// `dns.open_resolver` says so, and has no entry that can match no client.
/// The metrics endpoint cannot share a DNS listener's TCP port (found by a newcomer:
/// `--check-config` said OK, the daemon then failed to bind).
fn check_metrics_listen(config: &Config) -> Result<(), ConfigError> {
    let metrics = config.metrics.listen;
    let clash = config.dns.listen.iter().find(|dns| {
        dns.port() == metrics.port()
            && dns.is_ipv4() == metrics.is_ipv4()
            && (dns.ip() == metrics.ip()
                || dns.ip().is_unspecified()
                || metrics.ip().is_unspecified())
    });
    match clash {
        Some(dns) if config.metrics.enabled && metrics.port() != 0 => Err(invalid(
            "metrics.listen",
            format!("{metrics} is the TCP port of dns.listen {dns}; choose another port"),
        )),
        _ => Ok(()),
    }
}

fn check_allow(config: &Config) -> Result<(), ConfigError> {
    let exposed = config
        .dns
        .listen
        .iter()
        .position(|addr| !addr.ip().to_canonical().is_loopback());
    for (i, net) in config.dns.allow.iter().enumerate() {
        let key = format!("dns.allow[{i}]");
        if let IpNet::V6(v6) = net
            && v6.prefix_len() >= 96
            && let Some(v4) = v6.network().to_ipv4_mapped()
        {
            let as_v4 = format!("{v4}/{}", v6.prefix_len() - 96);
            return Err(invalid(
                &key,
                format!(
                    "{net} is IPv4-mapped and matches no client: IPv4 clients are matched by \
                     their IPv4 address; write {as_v4}"
                ),
            ));
        }
        if let Some(j) = exposed
            && is_open(net)
            && !config.dns.open_resolver
        {
            let listen = config.dns.listen[j];
            return Err(invalid(
                &key,
                format!(
                    "{net} admits clients from the whole internet, and dns.listen[{j}] \
                     ({listen}) is not a loopback address: that is an open resolver, which \
                     floods against others are amplified through (RFC 5358); list the networks \
                     of your own clients, or set dns.open_resolver = true if you mean it"
                ),
            ));
        }
    }
    Ok(())
}

/// Wider than any one operator's network and holding addresses of the internet: an IPv4
/// network wider than a /8 (the largest block ever assigned to one holder), an IPv6 one wider
/// than a /16 that overlaps the global unicast space (RFC 4291 section 2.4: 2000::/3).
fn is_open(net: &IpNet) -> bool {
    match net {
        IpNet::V4(v4) => v4.prefix_len() < 8,
        IpNet::V6(v6) => {
            let global = Ipv6Net::new("2000::".parse().expect("a static address"), 3)
                .expect("a valid prefix length");
            v6.prefix_len() < 16 && (v6.contains(&global) || global.contains(v6))
        }
    }
}

/// No listen address is also taken by a wildcard one: the second bind would fail, and the
/// message would blame another program.
fn check_listen(listen: &[SocketAddr]) -> Result<(), ConfigError> {
    for (i, addr) in listen.iter().enumerate() {
        let covering = listen[..i].iter().position(|other| {
            other.port() == addr.port()
                && addr.port() != 0
                && other.is_ipv4() == addr.is_ipv4()
                && (other.ip().is_unspecified() || addr.ip().is_unspecified())
        });
        if let Some(j) = covering {
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(invalid(
                &format!("dns.listen[{i}]"),
                format!(
                    "{addr} overlaps dns.listen[{j}] ({}): a wildcard address already takes \
                     port {} on every {family} address of this machine, so both cannot be \
                     bound; keep one",
                    listen[j],
                    addr.port()
                ),
            ));
        }
    }
    Ok(())
}

/// Every upstream is listed once, and none is this daemon itself.
fn check_upstreams(config: &Config) -> Result<(), ConfigError> {
    let servers = &config.upstream.servers;
    for (i, server) in servers.iter().enumerate() {
        let key = format!("upstream.servers[{i}]");
        if let Some(j) = servers[..i].iter().position(|other| other == server) {
            return Err(invalid(
                &key,
                format!("{server} is listed already, as upstream.servers[{j}]"),
            ));
        }
        let listen = &config.dns.listen;
        let own = (0..listen.len()).find(|&j| {
            crate::dns::upstream::is_own_address(server.addr(), std::slice::from_ref(&listen[j]))
        });
        if let Some(j) = own {
            return Err(invalid(
                &key,
                format!(
                    "{server} is this daemon's own address (dns.listen[{j}] is {}): every \
                     query forwarded there would come back here, a forwarding loop; name the \
                     server this daemon should ask",
                    listen[j]
                ),
            ));
        }
    }
    Ok(())
}

/// What in `config` works, but probably not as meant.
pub(crate) fn warnings(config: &Config) -> Vec<ConfigWarning> {
    let mut warnings = Vec::new();
    let mut warn = |key: String, message: String| warnings.push(ConfigWarning { key, message });
    for (i, addr) in config.p2p.bootstrap.iter().enumerate() {
        if crate::p2p::addr::peer_of(addr).is_none() {
            warn(
                format!("p2p.bootstrap[{i}]"),
                format!(
                    "{addr} names no peer (/p2p/<peer id>): whoever answers at that address is \
                     taken as the bootstrap peer, since it cannot be authenticated, and it is \
                     not used as a relay nor a rendezvous point; append /p2p/<peer id> (an \
                     introduction server logs its addresses with it)"
                ),
            );
        }
    }
    if config.p2p.enabled
        && !config
            .naming
            .tlds
            .iter()
            .any(|t| t.eq_ignore_ascii_case("p2p"))
    {
        warn(
            "naming.tlds".into(),
            "does not list \"p2p\": names under .p2p are forwarded upstream, and the P2P node \
             (p2p.enabled) answers none of them"
                .into(),
        );
    }
    let loopback_only = config.dns.allow.iter().all(|net| match net {
        IpNet::V4(v4) => v4.network().is_loopback(),
        IpNet::V6(v6) => v6.prefix_len() == 128 && v6.network().is_loopback(),
    });
    // A wildcard address serves loopback clients too; a specific other one serves none.
    let unreachable = config.dns.listen.iter().enumerate().filter(|(_, addr)| {
        loopback_only && !addr.ip().is_loopback() && !addr.ip().is_unspecified()
    });
    for (i, addr) in unreachable {
        warn(
            format!("dns.listen[{i}]"),
            format!(
                "{addr} is not a loopback address, but dns.allow admits loopback clients only: \
                 every client that reaches the daemon there gets REFUSED; add their network to \
                 dns.allow"
            ),
        );
    }
    let p2p = &config.p2p;
    if !p2p.enabled && !p2p.bootstrap.is_empty() {
        warn(
            "p2p.bootstrap".into(),
            "is set but p2p.enabled = false: the node does not run, so no peer is dialed".into(),
        );
    }
    if p2p.enabled && p2p.listen.as_ref().is_some_and(Vec::is_empty) {
        warn(
            "p2p.listen".into(),
            "is empty: the node listens on no address, so no peer can reach it (it can still \
             dial out and resolve names)"
                .into(),
        );
    }
    for (i, server) in p2p.stun_servers.iter().enumerate() {
        if p2p.stun_servers[..i].contains(server) {
            warn(
                format!("p2p.stun_servers[{i}]"),
                format!("{server} is listed twice; it is asked once"),
            );
        }
    }
    warnings
}
