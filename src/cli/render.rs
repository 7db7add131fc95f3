//! The daemon's responses, the `--check-config` summary and the error that ends a command, as
//! people read them. The text is a contract too: scripts and tests look for lines such as
//! `reachable:  public behind NAT ` or `relayed at: `.

use std::{error::Error, fmt::Write, net::SocketAddr};

use libp2p::{Multiaddr, multiaddr::Protocol};

use super::Loaded;
use crate::{
    control::{NameInfo, PinInfo, Resolution, Response, Status},
    p2p::{NodeStatus, PeerEntry, Reachability, Transport, addr::relay_of},
    tunnel::{MappedName, Service, TunnelsReport},
};

/// The `error: ...` text for an error and its chain of causes. One-line causes follow on the
/// same line after `: `; a cause of several lines (the TOML parser's excerpt with a caret under
/// the bad key) starts on a line of its own, every line indented alike so the caret still
/// points at the key, and the causes after it start on a new line too.
pub fn error_report(error: &(dyn Error + 'static)) -> String {
    let mut out = String::from("error:");
    let mut after_block = false;
    for (i, text) in crate::error::causes(error).iter().enumerate() {
        if text.contains('\n') {
            out.push_str(if i == 0 { "" } else { ":" });
            for line in text.lines() {
                let _ = write!(out, "\n  {line}");
            }
            after_block = true;
        } else if after_block {
            let _ = write!(out, "\n  {text}");
            after_block = false;
        } else {
            let _ = write!(out, "{} {text}", if i == 0 { "" } else { ":" });
        }
    }
    out
}

/// What `run --check-config` found: where the configuration came from and what the daemon
/// would do with it.
pub(super) fn config_summary(loaded: &Loaded) -> String {
    let config = &loaded.config;
    let mut out = String::new();
    let _ = writeln!(out, "configuration OK: {}", loaded.source);
    let _ = writeln!(out, "dns:        {}", joined(&config.dns.listen));
    let upstreams = if config.upstream.servers.is_empty() {
        format!(
            "the nameservers in {}",
            config.upstream.resolv_conf.display()
        )
    } else {
        let servers: Vec<String> = config
            .upstream
            .servers
            .iter()
            .map(ToString::to_string)
            .collect();
        servers.join(", ")
    };
    let _ = writeln!(out, "upstreams:  {upstreams}");
    if config.p2p.enabled {
        let listen: Vec<String> = match &config.p2p.listen {
            Some(addrs) => addrs.iter().map(ToString::to_string).collect(),
            None => vec![crate::p2p::own_port::describe(&loaded.data_dir)],
        };
        let bootstrap = config.p2p.bootstrap.len();
        let _ = writeln!(
            out,
            "p2p:        on, listening on {}; {bootstrap} bootstrap peer{}",
            if listen.is_empty() {
                "no address".to_owned()
            } else {
                listen.join(", ")
            },
            if bootstrap == 1 { "" } else { "s" }
        );
    } else {
        out.push_str("p2p:        off (.p2p names come from local records only)\n");
    }
    if let Some(listen) = config.metrics.endpoint() {
        let _ = writeln!(out, "metrics:    http://{listen}/metrics");
    }
    let _ = writeln!(out, "data dir:   {}", loaded.data_dir.display());
    out
}

/// Formats a response for people.
pub(super) fn render(response: &Response) -> String {
    let mut out = String::new();
    match response {
        Response::Error { message } => out.push_str(message),
        Response::Status(s) => status(&mut out, s),
        Response::Published { .. } => published(&mut out, response),
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
            let transport = transport_of(via.as_ref(), None);
            let _ = writeln!(
                out,
                "{name}: {path} connection to {peer}{transport}{how} in {elapsed_ms} ms"
            );
        }
        Response::Pins { pins: list } => pins(&mut out, list),
        Response::Exposed {
            service,
            key_name,
            seq,
            replaced,
            unreachable,
        } => {
            exposed(&mut out, service, key_name, *seq);
            exposed_notes(&mut out, replaced.as_ref(), unreachable.as_deref());
        }
        Response::Unexposed { name, ports } => unexposed(&mut out, name, ports),
        Response::Tunnels(report) => tunnels(&mut out, report),
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

/// Who may use `service`: `anyone`, or its allow list.
fn open_to(service: &Service) -> String {
    if service.allow.is_empty() {
        "anyone".to_owned()
    } else {
        service.allow.join(", ")
    }
}

fn exposed(out: &mut String, service: &Service, key_name: &str, seq: Option<u64>) {
    let who = open_to(service);
    let _ = writeln!(
        out,
        "exposed {} port {} -> {} (open to {who})",
        service.name, service.port, service.to
    );
    if let Some(seq) = seq {
        let _ = writeln!(out, "  announced in the record of its name (seq {seq})");
    }
    let _ = writeln!(
        out,
        "  this node's key name, for others' --allow: {key_name}"
    );
}

/// What `expose` changed besides the service itself, and a target nothing answers at yet.
fn exposed_notes(out: &mut String, replaced: Option<&Service>, unreachable: Option<&str>) {
    if let Some(old) = replaced {
        let who = open_to(old);
        let _ = writeln!(
            out,
            "  replaces the earlier settings: -> {} (open to {who})",
            old.to
        );
    }
    if let Some(why) = unreachable {
        let _ = writeln!(
            out,
            "  warning: {why}; clients are refused until the service runs"
        );
    }
}

fn unexposed(out: &mut String, name: &str, ports: &[u16]) {
    if ports.is_empty() {
        let _ = writeln!(out, "{name} had no service exposed by this daemon");
        return;
    }
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "{name} no longer exposed on port {}", ports.join(", "));
    // The record stays: unexpose is not unpublish.
    let site = crate::record::p2p_name(name)
        .ok()
        .and_then(|n| crate::record::record_name_for(&hickory_proto::rr::LowerName::new(&n)))
        .map_or_else(
            || name.to_owned(),
            |s| s.to_ascii().trim_end_matches('.').to_owned(),
        );
    let _ = writeln!(
        out,
        "{site} stays claimed by this node's key (its record is still published) until \
         `p2pdns unpublish {site}`"
    );
}

fn tunnels(out: &mut String, report: &TunnelsReport) {
    if report.exposed.is_empty() {
        out.push_str("exposed: none (p2pdns expose NAME PORT)\n");
    } else {
        out.push_str("exposed:\n");
    }
    for e in &report.exposed {
        let s = &e.service;
        let who = if s.allow.is_empty() {
            "anyone".to_owned()
        } else {
            format!("{} key(s)", s.allow.len())
        };
        let origin = if e.from_config { ", from config" } else { "" };
        let _ = writeln!(
            out,
            "  {}:{} -> {} (open to {who}{origin}): {} open, {} since start, {} B out, {} B in",
            s.name, s.port, s.to, e.open, e.streams, e.sent, e.received
        );
    }
    let r = &report.refused;
    let refused = r.not_exposed + r.not_allowed + r.busy + r.unreachable + r.malformed;
    if refused > 0 {
        let _ = writeln!(
            out,
            "  refused: {} not exposed, {} not allowed, {} busy, {} service unreachable, {} malformed",
            r.not_exposed, r.not_allowed, r.busy, r.unreachable, r.malformed
        );
    }
    if report.mapped.is_empty() {
        out.push_str("tunnelled names: none yet\n");
        return;
    }
    out.push_str("tunnelled names:\n");
    for m in &report.mapped {
        let ports: Vec<String> = m.ports.iter().map(ToString::to_string).collect();
        let ports = if ports.is_empty() {
            "(none listened on)".to_owned()
        } else {
            ports.join(",")
        };
        let path = match (m.connected, m.path) {
            (Some(now), _) => now.to_string(),
            (None, Some(last)) => format!("no connection now; last tunnel {last}"),
            (None, None) => "no connection yet".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} -> {} ports {} via {} ({path}): {} open, {} since start, {} failed, {} B out, {} B in",
            m.name, m.address, ports, m.peer, m.open, m.connections, m.failed, m.sent, m.received
        );
        if let Some(error) = last_error(m) {
            let _ = writeln!(out, "    {error}");
        }
    }
}

/// The last error of a tunnelled name with its age, `last error (3 min ago): ...`; once
/// tunnels opened after it, `earlier error (3 min ago; 5 connections opened since): ...`.
fn last_error(m: &MappedName) -> Option<String> {
    let error = m.last_error.as_deref()?;
    let mut when = Vec::new();
    if let Some(at) = m.last_error_at {
        let age = crate::record::unix_now().saturating_sub(at);
        when.push(format!("{} ago", span(age)));
    }
    let label = if m.opened_since_error > 0 {
        when.push(format!(
            "{} connection{} opened since",
            m.opened_since_error,
            if m.opened_since_error == 1 { "" } else { "s" }
        ));
        "earlier error"
    } else {
        "last error"
    };
    let when = if when.is_empty() {
        String::new()
    } else {
        format!(" ({})", when.join("; "))
    };
    Some(format!("{label}{when}: {error}"))
}

/// Lines indented by two spaces.
fn indented(out: &mut String, lines: &[String]) {
    for line in lines {
        let _ = writeln!(out, "  {line}");
    }
}

fn published(out: &mut String, response: &Response) {
    let Response::Published {
        name,
        seq,
        expires,
        records,
        held_by,
        peers_answered,
        taken_by,
    } = response
    else {
        return;
    };
    let _ = writeln!(
        out,
        "published {name} (seq {seq}, expires {})",
        expiry(*expires)
    );
    indented(out, records);
    let held = match (held_by, peers_answered) {
        (Some(holders), Some(answered)) => {
            format!("held by {holders} other node(s); {answered} peer(s) answered the check")
        }
        _ => "saved; not confirmed by the network yet (it is being pushed: \
              `p2pdns names` shows how many nodes hold it)"
            .to_owned(),
    };
    let _ = writeln!(out, "{held}{}", taken_note(taken_by.as_deref()));
}

/// `"; taken by <key name>: ..."` when a count found another key's record of the name, which
/// storage nodes keep instead of this node's; nothing otherwise.
fn taken_note(taken_by: Option<&str>) -> String {
    taken_by.map_or_else(String::new, |owner| {
        format!(
            "; taken by {owner}: storage nodes keep that key's record of the name, not this \
             node's (choose another name, or wait until that record expires)"
        )
    })
}

fn names(out: &mut String, names: &[NameInfo]) {
    if names.is_empty() {
        out.push_str("no names published (see `p2pdns publish`)\n");
    }
    for n in names {
        let held = match (n.replicas, n.counted_at) {
            (Some(holders), Some(at)) => {
                let age = crate::record::unix_now().saturating_sub(at);
                format!(
                    "held by {holders} other node(s) (counted {} ago)",
                    span(age)
                )
            }
            (Some(holders), None) => format!("held by {holders} other node(s)"),
            // No number here: scripts read "held by N" (and each line's first word as a name).
            (None, _) => {
                "held by: not counted yet (counting now: ask again in a few seconds)".to_owned()
            }
        };
        let _ = writeln!(
            out,
            "{}  seq {}  expires {}  {held}{}",
            n.name,
            n.seq,
            expiry(n.expires),
            taken_note(n.taken_by.as_deref()),
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

/// How a connection runs, for people: " over QUIC (addr)" straight to the peer, " through the
/// relay <id> at <addr>" through the relay `relay` (or the one `addr` goes through), nothing
/// when nothing is known.
fn transport_of(addr: Option<&Multiaddr>, relay: Option<&Multiaddr>) -> String {
    if let Some(relay) = relay.cloned().or_else(|| addr.and_then(relay_of)) {
        let mut at = relay;
        return match at.pop() {
            Some(Protocol::P2p(id)) => format!(" through the relay {id} at {at}"),
            Some(last) => format!(" through the relay at {}", at.with(last)),
            None => " through a relay".to_owned(),
        };
    }
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
    } else if s.upstream_servers.len() == s.upstreams.len() {
        s.upstream_servers.join(", ")
    } else {
        joined(&s.upstreams)
    };
    let _ = writeln!(out, "upstreams:  {upstreams}");
    let _ = writeln!(out, "cache:      {} answers", s.cache_entries);
    match &s.p2p {
        Some(p) => node(out, &p.key_name, &p.node),
        None => out.push_str("p2p:        disabled\n"),
    }
    if let Some(t) = &s.tunnels {
        tunnels_summary(out, t);
    }
}

/// The one-line tunnels part of `p2pdns status`, and the last error of each tunnelled name
/// that no tunnel opened since.
fn tunnels_summary(out: &mut String, t: &TunnelsReport) {
    let serving: u64 = t.exposed.iter().map(|e| e.open).sum();
    let using: u64 = t.mapped.iter().map(|m| m.open).sum();
    let _ = writeln!(
        out,
        "tunnels:    {} exposed ({serving} open), {} tunnelled names ({using} open); p2pdns tunnels for more",
        t.exposed.len(),
        t.mapped.len()
    );
    for m in t.mapped.iter().filter(|m| m.opened_since_error == 0) {
        if let Some(error) = last_error(m) {
            let _ = writeln!(out, "            {}: {error}", m.name);
        }
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
    for peer in p.bootstrap.iter().filter(|b| !b.connected) {
        let why = peer.last_error.as_deref().unwrap_or("no dial failed");
        let _ = writeln!(
            out,
            "bootstrap:  not connected to {}: {why}",
            peer.addr_list()
        );
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
    // A relayed address names this node already (`.../p2p-circuit/p2p/<id>`).
    for addr in &p.listen_addrs {
        let addr = crate::p2p::addr::with_peer(addr, p.peer_id);
        let _ = writeln!(out, "listening:  {addr}");
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
            transport_of(Some(&connection.remote), connection.relay.as_ref())
        );
    }
}

/// A Unix time as seconds from now, for people.
fn expiry(unix: u64) -> String {
    let now = crate::record::unix_now();
    if unix <= now {
        return "already".to_owned();
    }
    format!("in {}", span(unix - now))
}

/// A span of seconds for people: `90 s`, `12 min`, `48 h`.
fn span(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

#[cfg(test)]
mod tests;
