//! `p2pdns doctor`: checks the whole path from a program to the daemon and on to the network,
//! and explains each problem with a fix. One line per check.

use std::{
    fmt::Write as _,
    fs,
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};

use crate::{
    control::{self, Request, Response, Status},
    naming::CHECK_HOST,
    os::service,
    p2p::{AddressSource, NodeStatus, Reachability, StunMapping},
};

/// How long one DNS probe waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Firefox's canary domain.
const DOH_CANARY: &str = "use-application-dns.net";

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// The checks' report and whether any failed.
pub struct Report {
    /// One line per check, with a fix under each problem.
    pub text: String,
    /// A check failed (the command exits 1).
    pub failed: bool,
}

#[derive(Default)]
struct Lines {
    text: String,
    failed: bool,
    /// Where a fix's setting goes: `in /path/p2pdns.toml`, or words for "the file in use".
    config: String,
}

impl Lines {
    fn add(&mut self, verdict: Verdict, what: &str, fix: Option<&str>) {
        let tag = match verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        self.failed |= verdict == Verdict::Fail;
        let _ = writeln!(self.text, "{tag}  {what}");
        if let Some(fix) = fix {
            let _ = writeln!(self.text, "      fix: {fix}");
        }
    }
}

/// Runs every check against the daemon using `data_dir`. The fixes name the configuration
/// file the daemon reports, else `cli_config` (the command's `--config`).
pub async fn run(data_dir: &Path, try_service: bool, cli_config: Option<&Path>) -> Report {
    let mut lines = Lines::default();
    let status = match control::call(data_dir, try_service, &Request::Status { peers: false }).await
    {
        Ok(Response::Status(status)) => Some(status),
        Ok(_) => None,
        Err(error) => {
            lines.add(
                Verdict::Fail,
                &format!("daemon: {error}"),
                Some("start it: `sudo systemctl start p2pdns` (installed service) or `sudo p2pdns run`"),
            );
            None
        }
    };
    lines.config = config_place(status.as_deref(), cli_config);
    match &status {
        Some(status) => daemon_checks(status, &mut lines),
        None => port_53_owner(&mut lines),
    }
    os_resolver(&mut lines, status.is_some());
    browsers(&mut lines);
    Report {
        text: lines.text,
        failed: lines.failed,
    }
}

/// Where the settings a fix names live: the file the daemon loaded, else the command's
/// `--config`; when neither is known, words that say how to find it.
fn config_place(status: Option<&Status>, cli_config: Option<&Path>) -> String {
    match status.and_then(|s| s.config_file.as_deref()).or(cli_config) {
        Some(path) => format!("in {}", path.display()),
        None => "in the configuration file in use (p2pdns run --check-config shows it)".to_owned(),
    }
}

fn daemon_checks(status: &Status, lines: &mut Lines) {
    lines.add(
        Verdict::Ok,
        &format!(
            "daemon: p2pdns {} running, DNS on {}",
            status.version,
            addr_list(&status.dns_addrs)
        ),
        None,
    );
    match status.dns_addrs.first().copied() {
        Some(addr) => match probe(addr, CHECK_HOST, RecordType::A) {
            Ok(reply) if !reply.answers.is_empty() => {
                lines.add(Verdict::Ok, &format!("dns: {addr} answers {CHECK_HOST}"), None)
            }
            Ok(reply) => lines.add(
                Verdict::Fail,
                &format!(
                    "dns: {addr} answered {CHECK_HOST} with {} and no address",
                    reply.metadata.response_code
                ),
                Some("another server may answer on this address: check `ss -lunp 'sport = :53'`"),
            ),
            Err(error) => lines.add(
                Verdict::Fail,
                &format!("dns: no answer from {addr}: {error}"),
                Some("the daemon is stuck or a firewall drops loopback DNS: see `journalctl -u p2pdns`"),
            ),
        },
        None => lines.add(Verdict::Fail, "dns: the daemon reports no DNS address", None),
    }
    if status.upstreams.is_empty() {
        lines.add(
            Verdict::Fail,
            "upstreams: none configured, names outside .p2p get SERVFAIL",
            Some(&format!(
                "set upstream.servers {}, or fix /etc/resolv.conf",
                lines.config
            )),
        );
    }
    for (i, &addr) in status.upstreams.iter().enumerate() {
        let server = status.upstream_servers.get(i);
        if let Some(server) = server.filter(|s| s.contains("://")) {
            // A plain question to a DoT or DoH port says nothing: the daemon's own tries do
            // (a refused certificate is logged once per spell, with its reason).
            lines.add(
                Verdict::Ok,
                &format!("upstream: {server} (encrypted; not probed here, the daemon's log names any failure)"),
                None,
            );
            continue;
        }
        match probe(addr, ".", RecordType::NS) {
            Ok(_) => lines.add(Verdict::Ok, &format!("upstream: {addr} answers"), None),
            Err(error) => lines.add(
                Verdict::Fail,
                &format!("upstream: {addr} does not answer: {error}"),
                Some(&format!(
                    "check the network, or set working servers in upstream.servers {}",
                    lines.config
                )),
            ),
        }
    }
    p2p_checks(status, lines);
}

/// Is the P2P node on, connected, and reachable by others?
fn p2p_checks(status: &Status, lines: &mut Lines) {
    match &status.p2p {
        None => lines.add(
            Verdict::Warn,
            "p2p: the P2P node is disabled; .p2p names come from local records only",
            Some(&format!("set enabled = true under [p2p] {}", lines.config)),
        ),
        Some(p2p) if p2p.node.connected_peers == 0 => lines.add(
            Verdict::Fail,
            &format!(
                "p2p: no peer connected ({} in the routing table); .p2p lookups will fail",
                p2p.node.routing_table_peers
            ),
            Some(&format!(
                "add an introduction server to p2p.bootstrap {}, or start a second node on the \
                 LAN (mDNS)",
                lines.config
            )),
        ),
        Some(p2p) => {
            lines.add(Verdict::Ok, &connected_line(&p2p.node), None);
            reachability_line(lines, &p2p.node);
        }
    }
    if let Some(p2p) = &status.p2p {
        bootstrap_lines(lines, &p2p.node);
    }
}

/// A warning for each configured bootstrap peer the node is not connected to, with why the
/// last dial failed: a node that met only a LAN neighbour (mDNS) looks connected, yet the
/// network's names stay out of reach.
fn bootstrap_lines(lines: &mut Lines, node: &NodeStatus) {
    for peer in node.bootstrap.iter().filter(|p| !p.connected) {
        let why = match &peer.last_error {
            Some(error) => error.clone(),
            None => "no dial has failed; it is dialed again only while this node has no peer \
                     at all"
                .to_owned(),
        };
        let fix = match peer.answered_as {
            Some(other) => format!(
                "copy the server's address again from its operator (`p2pdns intro` prints it as \
                 `--bootstrap addr=...`) into p2p.bootstrap {}; if its key changed on purpose, \
                 its /p2p/ part is now /p2p/{other}",
                lines.config
            ),
            None => format!(
                "check the address in p2p.bootstrap {}, that the server runs, and that its port \
                 is open to this machine (TCP and UDP); then restart the daemon",
                lines.config
            ),
        };
        lines.add(
            Verdict::Warn,
            &format!("bootstrap: not connected to {}: {why}", peer.addr_list()),
            Some(&fix),
        );
    }
}

/// The line for a node with peers: `p2p: 1 peer connected, 3 in the routing table, ...`.
fn connected_line(node: &NodeStatus) -> String {
    let peers = match node.connected_peers {
        1 => "peer",
        _ => "peers",
    };
    format!(
        "p2p: {} {peers} connected, {} in the routing table, DHT mode {}",
        node.connected_peers, node.routing_table_peers, node.mode
    )
}

/// Addresses as `a, b`.
fn addr_list(addrs: &[SocketAddr]) -> String {
    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    addrs.join(", ")
}

/// Can others reach this node (to connect to the names it publishes)?
fn reachability_line(lines: &mut Lines, node: &NodeStatus) {
    let symmetric = node.external_addrs.iter().any(|e| e.source.is_symmetric());
    let relay = node.relay_reservations.first();
    let ports = p2p_ports(node);
    let (verdict, text, hint) = match (node.reachability, relay) {
        (Reachability::Public, _) => (
            Verdict::Ok,
            "reachability: public, peers connect to this node directly".to_owned(),
            None,
        ),
        (Reachability::Unknown, _) => (
            Verdict::Ok,
            "reachability: not known: no peer has probed this node's reachability yet (AutoNAT)"
                .to_owned(),
            None,
        ),
        (reachability, None) => (
            Verdict::Warn,
            format!(
                "reachability: {reachability}, and no relay reservation: peers cannot connect to \
                 the names this node serves"
            ),
            Some(format!(
                "list an introduction server in p2p.bootstrap {} (it relays), or forward this \
                 node's P2P port ({ports}) on the router (or enable UPnP there)",
                lines.config
            )),
        ),
        (_, Some(relay)) if symmetric => (
            Verdict::Warn,
            format!(
                "reachability: behind a symmetric NAT (STUN), reachable through {relay}; hole \
                 punching fails against it, so connections from other homes stay relayed"
            ),
            Some(format!(
                "forward this node's P2P port ({ports}) on the router (or enable UPnP there) for \
                 direct connections"
            )),
        ),
        (_, Some(relay)) => (
            Verdict::Ok,
            format!(
                "reachability: behind NAT, reachable through {relay}; connections become direct \
                 by hole punching"
            ),
            None,
        ),
    };
    lines.add(verdict, &text, hint.as_deref());
    if symmetric && !text.contains("symmetric") {
        symmetric_nat_line(lines, node, &ports);
    }
}

/// A symmetric NAT that STUN found, named on its own line where the reachability line did not
/// (AutoNAT has not judged yet, or no relay holds a reservation): it decides whether
/// connections with other homes can ever become direct.
fn symmetric_nat_line(lines: &mut Lines, node: &NodeStatus, ports: &str) {
    let other = node.external_addrs.iter().find_map(|e| match &e.source {
        AddressSource::Stun {
            mapping: StunMapping::EndpointDependent { other },
            ..
        } => Some(format!("{} and {other}", e.addr)),
        _ => None,
    });
    let seen = other
        .map(|o| format!(" (two STUN servers saw {o})"))
        .unwrap_or_default();
    if node.reachability == Reachability::Public {
        lines.add(
            Verdict::Ok,
            &format!(
                "nat: endpoint-dependent (symmetric) NAT{seen}; peers still connect directly \
                 at the public address"
            ),
            None,
        );
        return;
    }
    lines.add(
        Verdict::Warn,
        &format!(
            "nat: endpoint-dependent (symmetric) NAT{seen}: hole punching fails against it, so \
             connections with peers in other homes, tunnels included, stay relayed and within \
             the relay's limits"
        ),
        Some(&format!(
            "forward this node's P2P port ({ports}) on the router (or enable UPnP there) for \
             direct connections"
        )),
    );
}

/// The node's P2P ports as a router's port-forwarding page asks for them, `UDP 23456, TCP
/// 23456`: each resolver has a port of its own (`p2p.listen`), so the fix names it.
fn p2p_ports(node: &NodeStatus) -> String {
    use libp2p::multiaddr::Protocol;
    let mut ports: Vec<(&str, u16)> = node
        .listen_addrs
        .iter()
        .filter(|a| !crate::p2p::addr::is_relayed(a))
        .filter_map(|a| {
            a.iter().find_map(|p| match p {
                Protocol::Udp(port) => Some(("UDP", port)),
                Protocol::Tcp(port) => Some(("TCP", port)),
                _ => None,
            })
        })
        .collect();
    ports.sort_unstable_by_key(|&(proto, port)| (port, std::cmp::Reverse(proto)));
    ports.dedup();
    if ports.is_empty() {
        return "see `listening:` in `p2pdns status`".to_owned();
    }
    let ports: Vec<String> = ports
        .iter()
        .map(|(proto, port)| format!("{proto} {port}"))
        .collect();
    ports.join(", ")
}

/// When no daemon answers: who holds port 53?
fn port_53_owner(lines: &mut Lines) {
    let owners = port_owners(53);
    if owners.is_empty() {
        lines.add(Verdict::Ok, "port 53: free", None);
    } else {
        let fix = format!(
            "p2pdns needs 127.0.0.1:53: stop that server, or give p2pdns another address \
             (dns.listen {}) and point the OS at it",
            lines.config
        );
        lines.add(
            Verdict::Warn,
            &format!("port 53: taken by {}", owners.join(", ")),
            Some(&fix),
        );
    }
}

/// Processes with a UDP socket or TCP listener on local `port`, each with its address, e.g.
/// `nsd (pid 42) on 127.0.0.2:53` (Linux /proc).
pub fn port_owners(port: u16) -> Vec<String> {
    // socket inode -> local address
    let mut sockets: Vec<(String, SocketAddr)> = Vec::new();
    for table in ["udp", "udp6", "tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            // TCP: only listeners (state 0A).
            let listening = !table.starts_with("tcp") || *state == "0A";
            if let Some(addr) = proc_net_addr(local)
                && addr.port() == port
                && listening
            {
                sockets.push((format!("socket:[{inode}]"), addr));
            }
        }
    }
    let mut owners = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            for (inode, addr) in &sockets {
                let owner = format!("{} (pid {pid}) on {addr}", name.trim());
                if target.as_os_str() == inode.as_str() && !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
        }
    }
    owners
}

/// A `/proc/net/{udp,tcp}[6]` local address: hex IP (32-bit words in host order) and port.
fn proc_net_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn os_resolver(lines: &mut Lines, daemon_up: bool) {
    match service::resolves(CHECK_HOST) {
        Ok(()) => lines.add(
            Verdict::Ok,
            &format!("os resolver: {CHECK_HOST} resolves through getaddrinfo, .p2p reaches p2pdns"),
            None,
        ),
        Err(error) => lines.add(
            Verdict::Fail,
            &format!("os resolver: {CHECK_HOST} does not resolve through getaddrinfo ({error})"),
            Some(if daemon_up {
                "the system does not send .p2p to p2pdns: `sudo p2pdns service install` (split DNS), \
                 or see README 'Installing it as a service'"
            } else {
                "start the daemon first"
            }),
        ),
    }
}

fn browsers(lines: &mut Lines) {
    match service::resolves(DOH_CANARY) {
        Err(_) => lines.add(
            Verdict::Ok,
            &format!("browsers: {DOH_CANARY} does not resolve, so Firefox keeps using the system resolver"),
            None,
        ),
        Ok(()) => lines.add(
            Verdict::Warn,
            &format!(
                "browsers: {DOH_CANARY} resolves, so Firefox may switch on DNS-over-HTTPS and \
                 bypass .p2p names"
            ),
            Some("route it to p2pdns (the installed resolved drop-in does), or set network.trr.mode = 5 in Firefox"),
        ),
    }
    for policy in [
        "/etc/firefox/policies/policies.json",
        "/usr/lib/firefox/distribution/policies.json",
        "/etc/chromium/policies/managed/doh.json",
        "/etc/opt/chrome/policies/managed/doh.json",
    ] {
        if let Ok(text) = fs::read_to_string(policy)
            && (text.contains("\"DNSOverHTTPS\"") || text.contains("\"DnsOverHttpsMode\""))
            && !text.contains("\"off\"")
            && !text.contains("\"Enabled\": false")
        {
            lines.add(
                Verdict::Warn,
                &format!("browsers: {policy} configures DNS-over-HTTPS, which bypasses .p2p names"),
                Some("turn it off for this machine, or exclude .p2p from it"),
            );
        }
    }
    lines.add(
        Verdict::Ok,
        "browsers: Chrome uses its secure DNS only for known DoH providers; 127.0.0.1 is not one",
        None,
    );
}

/// One DNS query over UDP.
fn probe(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message, String> {
    let name = Name::from_ascii(name).map_err(|e| e.to_string())?;
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, qtype));
    let bytes = message.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("static")
    } else {
        "[::]:0".parse().expect("static")
    };
    let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    socket.send_to(&bytes, server).map_err(|e| e.to_string())?;
    let mut buf = [0; 4096];
    loop {
        let (n, from) = socket.recv_from(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("timed out after {PROBE_TIMEOUT:?}")
            }
            _ => e.to_string(),
        })?;
        if from != server {
            continue;
        }
        let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
        if reply.metadata.id == message.metadata.id {
            return Ok(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::{BootstrapPeer, ExternalAddr, KadMode};

    #[test]
    fn proc_net_addresses_decode() {
        assert_eq!(
            proc_net_addr("0100007F:0035"),
            Some("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            proc_net_addr("00000000000000000000000001000000:0035"),
            Some("[::1]:53".parse().unwrap())
        );
        assert_eq!(proc_net_addr("junk"), None);
    }

    /// A client-mode node with one connected peer.
    fn node(reachability: Reachability) -> NodeStatus {
        NodeStatus {
            peer_id: libp2p::PeerId::random(),
            listen_addrs: Vec::new(),
            connected_peers: 1,
            routing_table_peers: 1,
            stored_records: 0,
            mode: KadMode::Client,
            peers: Vec::new(),
            reachability,
            external_addrs: Vec::new(),
            relay_reservations: Vec::new(),
            relayed_connections: 0,
            direct_connections: 1,
            rendezvous_points: Vec::new(),
            rendezvous_peers: 0,
            bootstrap: Vec::new(),
        }
    }

    #[test]
    fn peer_counts_agree_in_number() {
        let mut node = node(Reachability::Unknown);
        let line = connected_line(&node);
        assert!(
            line.starts_with("p2p: 1 peer connected, 1 in the routing table"),
            "{line}"
        );
        node.connected_peers = 2;
        let line = connected_line(&node);
        assert!(line.starts_with("p2p: 2 peers connected"), "{line}");
    }

    #[test]
    fn reachability_says_how_peers_reach_the_node() {
        let check = |reachability, relay: &[&str], external: Vec<ExternalAddr>| {
            let node = NodeStatus {
                external_addrs: external,
                relay_reservations: relay.iter().map(|a| a.parse().unwrap()).collect(),
                ..node(reachability)
            };
            let mut lines = Lines::default();
            reachability_line(&mut lines, &node);
            lines.text
        };
        let relay = "/ip4/198.51.100.7/udp/4747/quic-v1/p2p-circuit";
        let out = check(Reachability::Public, &[], Vec::new());
        assert!(out.starts_with("ok    reachability: public"), "{out}");
        // Two nodes on loopback never probe each other: no promise of an answer soon.
        let out = check(Reachability::Unknown, &[], Vec::new());
        assert_eq!(
            out,
            "ok    reachability: not known: no peer has probed this node's reachability yet \
             (AutoNAT)\n"
        );
        let out = check(Reachability::Private, &[], Vec::new());
        assert!(
            out.starts_with("warn  ")
                && out.contains("no relay reservation: peers cannot connect to the names"),
            "{out}"
        );
        let out = check(Reachability::Private, &[relay], Vec::new());
        assert!(out.starts_with("ok    ") && out.contains(relay), "{out}");
        let stun = ExternalAddr {
            addr: "/ip4/203.0.113.5/udp/4000".parse().unwrap(),
            source: AddressSource::Stun {
                servers: vec!["198.51.100.7:3478".parse().unwrap()],
                mapping: StunMapping::EndpointDependent {
                    other: "203.0.113.5:4001".parse().unwrap(),
                },
            },
        };
        // Without a reservation, or before AutoNAT judged, the symmetric NAT has its own line.
        for reachability in [Reachability::Unknown, Reachability::Private] {
            let out = check(reachability, &[], vec![stun.clone()]);
            assert!(
                out.contains(
                    "\nwarn  nat: endpoint-dependent (symmetric) NAT (two STUN servers saw \
                     /ip4/203.0.113.5/udp/4000 and 203.0.113.5:4001): hole punching fails"
                ) && out.contains("fix: forward this node's P2P port"),
                "{reachability}: {out}"
            );
        }
        let out = check(Reachability::Public, &[], vec![stun.clone()]);
        assert!(
            out.contains("\nok    nat: endpoint-dependent (symmetric) NAT"),
            "{out}"
        );
        let out = check(Reachability::PublicBehindNat, &[relay], vec![stun]);
        assert_eq!(out.matches("symmetric").count(), 1, "named once: {out}");
        assert!(
            out.starts_with("warn  ") && out.contains("symmetric NAT (STUN), reachable through"),
            "{out}"
        );
        assert!(!out.contains("  hole"), "no gaps mid-sentence: {out}");
        assert!(
            out.contains("P2P port (see `listening:` in `p2pdns status`) on"),
            "{out}"
        );
    }

    #[test]
    fn an_unreached_bootstrap_peer_is_named_with_its_failure() {
        let wrong =
            "/ip4/198.51.100.7/tcp/4747/p2p/12D3KooWGmYqn1UUrhPPwRnXa5VTHLeE5ddjpeZw2pYCvsSrmvCA";
        let good =
            "/ip4/198.51.100.8/tcp/4747/p2p/12D3KooWBrbywv3zgSz9dB6vgr2wN1Kkqn4yExsUthnH73DAuwrD";
        let answered = libp2p::PeerId::random();
        let node = NodeStatus {
            bootstrap: vec![
                BootstrapPeer {
                    addrs: vec![wrong.parse().unwrap()],
                    connected: false,
                    last_error: Some(format!(
                        "answers as another peer id ({answered}): the /p2p/ part of the \
                         address is wrong or the server's key changed"
                    )),
                    answered_as: Some(answered),
                },
                BootstrapPeer {
                    addrs: vec![good.parse().unwrap()],
                    connected: true,
                    last_error: None,
                    answered_as: None,
                },
            ],
            ..node(Reachability::Unknown)
        };
        let mut lines = Lines::default();
        bootstrap_lines(&mut lines, &node);
        let out = lines.text;
        assert!(
            out.starts_with(&format!("warn  bootstrap: not connected to {wrong}: "))
                && out.contains("the /p2p/ part of the address is wrong")
                && out.contains("fix: copy the server's address again")
                && out.contains(&format!("/p2p/{answered}")),
            "{out}"
        );
        assert!(
            !out.contains(good),
            "a connected bootstrap peer is fine: {out}"
        );
        assert_eq!(out.matches("warn").count(), 1, "{out}");
    }

    /// `doctor --config /some/file.toml` told to set things in /etc/p2pdns/p2pdns.toml.
    #[test]
    fn fixes_name_the_configuration_file_in_use() {
        let status = |config_file: Option<&str>| Status {
            version: "0.1.0".into(),
            dns_addrs: Vec::new(),
            upstreams: Vec::new(),
            upstream_servers: Vec::new(),
            cache_entries: 0,
            config_file: config_file.map(Into::into),
            p2p: None,
            tunnels: None,
        };
        let flag = Path::new("/some/file.toml");
        let daemon = status(Some("/srv/p2pdns.toml"));
        assert_eq!(
            config_place(Some(&daemon), Some(flag)),
            "in /srv/p2pdns.toml"
        );
        assert_eq!(
            config_place(Some(&status(None)), Some(flag)),
            "in /some/file.toml"
        );
        assert_eq!(config_place(None, Some(flag)), "in /some/file.toml");
        assert_eq!(
            config_place(Some(&status(None)), None),
            "in the configuration file in use (p2pdns run --check-config shows it)"
        );
        let mut lines = Lines {
            config: config_place(Some(&daemon), None),
            ..Lines::default()
        };
        p2p_checks(&daemon, &mut lines);
        assert!(
            lines
                .text
                .contains("fix: set enabled = true under [p2p] in /srv/p2pdns.toml\n"),
            "{}",
            lines.text
        );
        assert!(!lines.text.contains("/etc/p2pdns"), "{}", lines.text);
    }

    #[test]
    fn the_fix_names_the_ports_to_forward() {
        let node = NodeStatus {
            listen_addrs: [
                "/ip4/10.0.0.2/udp/23456/quic-v1",
                "/ip4/10.0.0.2/tcp/23456",
                "/ip6/::1/tcp/23456",
                "/ip4/198.51.100.7/udp/4747/quic-v1/p2p-circuit",
            ]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
            ..node(Reachability::Private)
        };
        let mut lines = Lines::default();
        reachability_line(&mut lines, &node);
        assert!(
            lines
                .text
                .contains("forward this node's P2P port (UDP 23456, TCP 23456) on"),
            "{}",
            lines.text
        );
    }

    #[test]
    fn a_socket_bound_by_this_process_is_found_with_its_owner() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let owners = port_owners(port);
        let me = format!("(pid {}) on 127.0.0.1:{port}", std::process::id());
        assert!(owners.iter().any(|o| o.ends_with(&me)), "{owners:?}");
    }
}
