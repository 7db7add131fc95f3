//! The daemon's responses as people read them. The text is a contract too: scripts and tests
//! look for lines such as `reachable:  public behind NAT ` or `relayed at: `.

use std::{fmt::Write, net::SocketAddr};

use libp2p::Multiaddr;

use crate::{
    control::{NameInfo, PinInfo, Resolution, Response, Status},
    p2p::{NodeStatus, PeerEntry, Reachability, Transport},
};

/// Formats a response for people.
pub(super) fn render(response: &Response) -> String {
    let mut out = String::new();
    match response {
        Response::Error { message } => out.push_str(message),
        Response::Status(s) => status(&mut out, s),
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
            indented(&mut out, records);
        }
        Response::Unpublished {
            name,
            existed: true,
        } => {
            let _ = writeln!(
                out,
                "{name} is no longer published; copies on other nodes expire on their own"
            );
        }
        Response::Unpublished {
            name,
            existed: false,
        } => {
            let _ = writeln!(out, "{name} was not published by this daemon");
        }
        Response::Names { names: list } => names(&mut out, list),
        Response::Resolved(r) => resolved(&mut out, r),
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
        Response::Pins { pins: list } => pins(&mut out, list),
        Response::PinRemoved {
            name,
            existed: true,
        } => {
            let _ = writeln!(out, "pin for {name} removed");
        }
        Response::PinRemoved {
            name,
            existed: false,
        } => {
            let _ = writeln!(out, "{name} had no pin");
        }
    }
    out
}

/// Lines indented by two spaces.
fn indented(out: &mut String, lines: &[String]) {
    for line in lines {
        let _ = writeln!(out, "  {line}");
    }
}

fn names(out: &mut String, names: &[NameInfo]) {
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
        indented(out, &n.records);
    }
}

fn resolved(out: &mut String, r: &Resolution) {
    let _ = writeln!(out, "{} {}", r.name, r.rcode);
    indented(out, &r.answers);
    if let (Some(owner), Some(seq), Some(replicas)) = (&r.owner, r.seq, r.replicas) {
        let _ = writeln!(out, "owner:    {owner}");
        let _ = writeln!(out, "seq:      {seq}");
        let _ = writeln!(out, "replicas: {replicas} agreeing");
    }
}

fn pins(out: &mut String, pins: &[PinInfo]) {
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

/// " over QUIC (addr)" for a connection's address, or nothing when none is known.
fn transport_of(addr: Option<&Multiaddr>) -> String {
    addr.map(|addr| format!(" over {} ({addr})", Transport::of(addr)))
        .unwrap_or_default()
}

fn joined(addrs: &[SocketAddr]) -> String {
    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    addrs.join(", ")
}

/// `p2pdns status`, for people.
fn status(out: &mut String, s: &Status) {
    let _ = writeln!(out, "p2pdns {}", s.version);
    let _ = writeln!(out, "dns:        {}", joined(&s.dns_addrs));
    let upstreams = if s.upstreams.is_empty() {
        "none (names outside .p2p get SERVFAIL)".to_owned()
    } else {
        joined(&s.upstreams)
    };
    let _ = writeln!(out, "upstreams:  {upstreams}");
    let _ = writeln!(out, "cache:      {} answers", s.cache_entries);
    match &s.p2p {
        Some(p) => node(out, &p.key_name, &p.node),
        None => out.push_str("p2p:        disabled\n"),
    }
}

/// The P2P node's part of `p2pdns status`.
fn node(out: &mut String, key_name: &str, p: &NodeStatus) {
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
        peer_lines(out, peer);
    }
}

/// One peer of `status --peers`: its state, addresses and connections.
fn peer_lines(out: &mut String, peer: &PeerEntry) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        control::P2pStatus,
        p2p::{AddressSource, ConnectionPath, ExternalAddr, KadMode, RendezvousStanding},
    };

    /// The lines the NAT lab and the system tests look for.
    #[test]
    fn status_lines_keep_their_wording() {
        let peer = libp2p::PeerId::random();
        let relayed: Multiaddr =
            format!("/ip4/198.51.100.7/udp/4747/quic-v1/p2p/{peer}/p2p-circuit")
                .parse()
                .unwrap();
        let status = Status {
            version: "0.1.0".into(),
            dns_addrs: vec!["127.0.0.1:53".parse().unwrap()],
            upstreams: Vec::new(),
            cache_entries: 0,
            p2p: Some(P2pStatus {
                key_name: "key.p2p.".into(),
                node: NodeStatus {
                    peer_id: peer,
                    listen_addrs: vec![relayed.clone()],
                    connected_peers: 1,
                    routing_table_peers: 1,
                    stored_records: 2,
                    mode: KadMode::Client,
                    peers: Vec::new(),
                    reachability: Reachability::PublicBehindNat,
                    external_addrs: vec![ExternalAddr {
                        addr: "/ip4/203.0.113.5/udp/4747/quic-v1".parse().unwrap(),
                        source: AddressSource::UpnpMapping,
                    }],
                    relay_reservations: vec![relayed],
                    relayed_connections: 0,
                    direct_connections: 1,
                    rendezvous_points: vec![RendezvousStanding {
                        point: peer,
                        registered: true,
                    }],
                    rendezvous_peers: 3,
                },
            }),
        };
        let text = render(&Response::Status(Box::new(status)));
        for line in [
            "dns:        127.0.0.1:53\n",
            "upstreams:  none (names outside .p2p get SERVFAIL)\n",
            "reachable:  public behind NAT (AutoNAT)\n",
            "external:   /ip4/203.0.113.5/udp/4747/quic-v1 (UPnP port mapping)\n",
            "relayed at: /ip4/198.51.100.7/",
            &format!("rendezvous: {peer} (registered; 3 peers learned from rendezvous points)\n"),
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        let connected = render(&Response::Connected {
            name: "site.p2p.".into(),
            peer,
            path: ConnectionPath::Direct,
            via: Some("/ip4/192.0.2.1/udp/4747/quic-v1".parse().unwrap()),
            upgraded: true,
            elapsed_ms: 42,
        });
        assert_eq!(
            connected,
            format!(
                "site.p2p.: direct connection to {peer} over QUIC (/ip4/192.0.2.1/udp/4747/quic-v1) \
                 (relayed first, then hole punched) in 42 ms\n"
            )
        );
    }
}
