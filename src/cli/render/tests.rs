use super::*;
use crate::{
    control::P2pStatus,
    p2p::{AddressSource, ConnectionPath, ExternalAddr, KadMode, RendezvousStanding},
};

/// The lab's tests read `held by N other node` off `names`; a name not counted yet says so
/// without a number they could misread.
#[test]
fn names_say_when_their_replicas_were_counted() {
    let now = crate::record::unix_now();
    let info = |replicas, counted_at| NameInfo {
        name: "site.p2p.".into(),
        seq: 7,
        expires: now + 3600,
        records: vec!["site.p2p. 300 IN A 192.0.2.1".into()],
        replicas,
        counted_at,
        taken_by: None,
    };
    let text = render(&Response::Names {
        names: vec![info(Some(1), Some(now - 300)), info(None, None)],
    });
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert!(
        lines[0].ends_with("held by 1 other node(s) (counted 5 min ago)"),
        "{text}"
    );
    let later = "held by: not counted yet (counting now: ask again in a few seconds)";
    assert!(lines[1].ends_with(later), "{text}");
    // Every line that is not a record line starts with a name.
    assert!(lines.iter().all(|l| l.starts_with("site.p2p. ")), "{text}");
}

/// A name another key holds says so, by key name, in `names` and `publish` (before, only the
/// logs did, and `names` showed "held by 0 other node(s)").
#[test]
fn a_name_taken_by_another_key_says_by_which() {
    let now = crate::record::unix_now();
    let owner = "k51qzi5uqu5dexample.p2p.";
    let text = render(&Response::Names {
        names: vec![NameInfo {
            name: "site.p2p.".into(),
            seq: 7,
            expires: now + 3600,
            records: vec!["site.p2p. 300 IN A 192.0.2.1".into()],
            replicas: Some(0),
            counted_at: Some(now),
            taken_by: Some(owner.into()),
        }],
    });
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("site.p2p. "), "{text}");
    assert!(first.contains("held by 0 other node(s)"), "{text}");
    assert!(first.contains(&format!("taken by {owner}")), "{text}");
    let text = render(&Response::Published {
        name: "site.p2p.".into(),
        seq: 7,
        expires: now + 3600,
        records: vec!["site.p2p. 300 IN A 192.0.2.1".into()],
        held_by: Some(0),
        peers_answered: Some(3),
        taken_by: Some(owner.into()),
    });
    assert!(text.contains(&format!("taken by {owner}")), "{text}");
    let untaken = render(&Response::Published {
        name: "site.p2p.".into(),
        seq: 7,
        expires: now + 3600,
        records: Vec::new(),
        held_by: Some(2),
        peers_answered: Some(3),
        taken_by: None,
    });
    assert!(!untaken.contains("taken by"), "{untaken}");
}

/// The lines the NAT lab and the system tests look for.
/// Encrypted upstreams are shown as configured (`tls://...#name`), not as a bare address that
/// `doctor` would probe with plain DNS; an older daemon's status without them still renders.
#[test]
fn encrypted_upstreams_show_as_configured() {
    let upstreams = |servers: Vec<String>| {
        let status = Status {
            version: "0.1.0".into(),
            dns_addrs: Vec::new(),
            upstreams: vec![
                "9.9.9.9:853".parse().unwrap(),
                "192.0.2.53:53".parse().unwrap(),
            ],
            upstream_servers: servers,
            cache_entries: 0,
            config_file: None,
            p2p: None,
            tunnels: None,
        };
        render(&Response::Status(Box::new(status)))
    };
    let configured = vec![
        "tls://9.9.9.9:853#dns.quad9.net".into(),
        "192.0.2.53:53".into(),
    ];
    assert!(
        upstreams(configured)
            .contains("upstreams:  tls://9.9.9.9:853#dns.quad9.net, 192.0.2.53:53\n"),
        "encrypted upstreams in their configured form"
    );
    assert!(
        upstreams(Vec::new()).contains("upstreams:  9.9.9.9:853, 192.0.2.53:53\n"),
        "a daemon that sends no configured forms"
    );
}

#[test]
fn status_lines_keep_their_wording() {
    let peer = libp2p::PeerId::random();
    let relayed: Multiaddr = format!("/ip4/198.51.100.7/udp/4747/quic-v1/p2p/{peer}/p2p-circuit")
        .parse()
        .unwrap();
    let status = Status {
        version: "0.1.0".into(),
        dns_addrs: vec!["127.0.0.1:53".parse().unwrap()],
        upstreams: Vec::new(),
        upstream_servers: Vec::new(),
        cache_entries: 0,
        config_file: None,
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
                bootstrap: Vec::new(),
            },
        }),
        tunnels: Some(TunnelsReport {
            exposed: Vec::new(),
            refused: crate::tunnel::RefusalCounts::default(),
            mapped: vec![crate::tunnel::MappedName {
                name: "site.p2p".into(),
                address: "127.77.0.9".parse().unwrap(),
                peer,
                ports: vec![80],
                path: Some(ConnectionPath::Relayed),
                connected: Some(ConnectionPath::Relayed),
                open: 1,
                connections: 3,
                failed: 1,
                sent: 10,
                received: 20,
                last_error: Some("the tunnel was cut".into()),
                last_error_at: Some(crate::record::unix_now() - 180),
                opened_since_error: 0,
            }],
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
        "tunnels:    0 exposed (0 open), 1 tunnelled names (1 open)",
        "            site.p2p: last error (3 min ago): the tunnel was cut\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
}

/// `tunnels` says when the last error of a name happened, and once tunnels opened after it,
/// that it is history; `status` then leaves it out.
#[test]
fn a_tunnelled_name_shows_its_last_error_with_its_age_until_tunnels_open_again() {
    let now = crate::record::unix_now();
    let mapped = |opened_since_error| crate::tunnel::MappedName {
        name: "site.p2p".into(),
        address: "127.77.0.9".parse().unwrap(),
        peer: libp2p::PeerId::random(),
        ports: vec![80],
        path: Some(ConnectionPath::Direct),
        connected: None,
        open: 0,
        connections: 9,
        failed: 4,
        sent: 10,
        received: 20,
        last_error: Some("the serving peer refused: busy".into()),
        last_error_at: Some(now - 90),
        opened_since_error,
    };
    let report = |m| TunnelsReport {
        exposed: Vec::new(),
        refused: crate::tunnel::RefusalCounts::default(),
        mapped: vec![m],
    };
    let text = render(&Response::Tunnels(report(mapped(0))));
    assert!(
        text.contains("\n    last error (90 s ago): the serving peer refused: busy\n"),
        "{text}"
    );
    // No connection open to the peer now: the last tunnel's path is history, and says so.
    assert!(
        text.contains("(no connection now; last tunnel direct): 0 open"),
        "{text}"
    );
    let mut relayed_now = mapped(0);
    relayed_now.connected = Some(ConnectionPath::Relayed);
    let text = render(&Response::Tunnels(report(relayed_now)));
    assert!(text.contains(" (relayed): 0 open"), "{text}");
    let text = render(&Response::Tunnels(report(mapped(5))));
    assert!(
        text.contains(
            "\n    earlier error (90 s ago; 5 connections opened since): the serving peer refused: busy\n"
        ),
        "{text}"
    );
    let mut summary = String::new();
    tunnels_summary(&mut summary, &report(mapped(5)));
    assert!(!summary.contains("error"), "{summary}");
    tunnels_summary(&mut summary, &report(mapped(0)));
    assert!(
        summary.contains("site.p2p: last error (90 s ago): "),
        "{summary}"
    );
}

#[test]
fn a_connection_reads_as_its_path_and_transport() {
    let peer = libp2p::PeerId::random();
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

/// A relayed connection names its relay, both ways round: before, one relayed to this node
/// read "relayed connection over another transport (/p2p/<peer>)".
#[test]
fn a_relayed_connection_names_its_relay() {
    let (peer, relay) = (libp2p::PeerId::random(), libp2p::PeerId::random());
    let at = "/ip4/198.51.100.7/udp/4001/quic-v1";
    let connected = render(&Response::Connected {
        name: "site.p2p.".into(),
        peer,
        path: ConnectionPath::Relayed,
        via: Some(
            format!("{at}/p2p/{relay}/p2p-circuit/p2p/{peer}")
                .parse()
                .unwrap(),
        ),
        upgraded: false,
        elapsed_ms: 42,
    });
    assert_eq!(
        connected,
        format!(
            "site.p2p.: relayed connection to {peer} through the relay {relay} at {at} in 42 ms\n"
        )
    );
    let mut out = String::new();
    peer_lines(
        &mut out,
        &PeerEntry {
            peer_id: peer,
            addrs: Vec::new(),
            connected: true,
            in_routing_table: false,
            connections: vec![crate::p2p::ConnectionInfo {
                path: ConnectionPath::Relayed,
                remote: format!("/p2p/{peer}").parse().unwrap(),
                relay: Some(format!("{at}/p2p/{relay}").parse().unwrap()),
            }],
        },
    );
    assert!(
        out.contains(&format!(
            "\n              relayed connection through the relay {relay} at {at}\n"
        )),
        "{out}"
    );
}

/// An error with causes.
#[derive(Debug)]
struct Chain(&'static str, Option<Box<Chain>>);

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Error for Chain {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.1.as_deref().map(|c| c as &(dyn Error + 'static))
    }
}

fn chain(messages: &[&'static str]) -> Chain {
    messages
        .iter()
        .rev()
        .fold(None, |cause, m| Some(Chain(m, cause.map(Box::new))))
        .unwrap()
}

#[test]
fn one_line_causes_share_the_error_line() {
    let error = chain(&[
        "failed to bind DNS UDP socket on 127.0.0.1:53",
        "permission denied",
    ]);
    assert_eq!(
        error_report(&error),
        "error: failed to bind DNS UDP socket on 127.0.0.1:53: permission denied"
    );
}

#[test]
fn empty_and_repeated_causes_are_left_out() {
    // libp2p's TransportError::Other prints nothing; io errors repeat below it.
    let error = chain(&[
        "failed to listen on /ip4/127.0.0.1/tcp/4747",
        "",
        "Address already in use (os error 98)",
        "Address already in use (os error 98)",
    ]);
    assert_eq!(
        error_report(&error),
        "error: failed to listen on /ip4/127.0.0.1/tcp/4747: Address already in use (os error 98)"
    );
}

#[test]
fn a_cause_of_several_lines_keeps_its_lines_and_its_caret() {
    let toml = "TOML parse error at line 3, column 1\n  |\n3 | lisen = 1\n  | ^^^^^\n\
                unknown field `lisen`\n";
    let error = chain(&["failed to load config file /etc/p2pdns/p2pdns.toml", toml]);
    let expected = [
        "error: failed to load config file /etc/p2pdns/p2pdns.toml:",
        "  TOML parse error at line 3, column 1",
        "    |",
        "  3 | lisen = 1",
        "    | ^^^^^",
        "  unknown field `lisen`",
    ];
    assert_eq!(error_report(&error), expected.join("\n"));
    let error = chain(&["outer", "two\nlines", "after", "last"]);
    assert_eq!(
        error_report(&error),
        "error: outer:\n  two\n  lines\n  after: last"
    );
}

#[test]
fn the_config_summary_says_what_the_daemon_would_do() {
    let mut config = crate::Config::default();
    config.upstream.servers = vec!["9.9.9.9".parse().unwrap()];
    config.p2p.listen = Some(vec!["/ip4/0.0.0.0/udp/4747/quic-v1".parse().unwrap()]);
    config.p2p.bootstrap = vec!["/ip4/192.0.2.1/tcp/4747".parse().unwrap()];
    let mut loaded = Loaded {
        config,
        path: None,
        source: "built-in defaults".into(),
        data_dir: "/var/lib/p2pdns".into(),
    };
    assert_eq!(
        config_summary(&loaded),
        "configuration OK: built-in defaults\n\
         dns:        127.0.0.1:53\n\
         upstreams:  9.9.9.9:53\n\
         p2p:        on, listening on /ip4/0.0.0.0/udp/4747/quic-v1; 1 bootstrap peer\n\
         data dir:   /var/lib/p2pdns\n"
    );
    loaded.config.upstream.servers.clear();
    loaded.config.p2p.enabled = false;
    let text = config_summary(&loaded);
    assert!(
        text.contains("upstreams:  the nameservers in /etc/resolv.conf\n"),
        "{text}"
    );
    assert!(text.contains("p2p:        off"), "{text}");
}

/// `unexpose` stops serving but keeps the name claimed: it says so, and what releases it.
#[test]
fn unexpose_says_the_name_stays_claimed_until_unpublished() {
    let text = render(&Response::Unexposed {
        name: "ssh.home.p2p".into(),
        ports: vec![22],
    });
    assert_eq!(
        text,
        "ssh.home.p2p no longer exposed on port 22\n\
         home.p2p stays claimed by this node's key (its record is still published) until \
         `p2pdns unpublish home.p2p`\n"
    );
}

/// A relayed listen address ends in this node's id already: `listening:` showed
/// `.../p2p-circuit/p2p/<id>/p2p/<id>`.
#[test]
fn listen_addresses_name_the_node_once() {
    let peer = libp2p::PeerId::random();
    let relay = libp2p::PeerId::random();
    let relayed: Multiaddr =
        format!("/ip4/198.51.100.7/udp/4747/quic-v1/p2p/{relay}/p2p-circuit/p2p/{peer}")
            .parse()
            .unwrap();
    let direct: Multiaddr = "/ip4/10.0.0.2/udp/4747/quic-v1".parse().unwrap();
    let status = NodeStatus {
        peer_id: peer,
        listen_addrs: vec![direct.clone(), relayed.clone()],
        connected_peers: 0,
        routing_table_peers: 0,
        stored_records: 0,
        mode: KadMode::Client,
        peers: Vec::new(),
        reachability: Reachability::Private,
        external_addrs: Vec::new(),
        relay_reservations: vec![relayed.clone()],
        relayed_connections: 0,
        direct_connections: 0,
        rendezvous_points: Vec::new(),
        rendezvous_peers: 0,
        bootstrap: vec![crate::p2p::BootstrapPeer {
            addrs: vec![
                format!("/ip4/198.51.100.7/udp/4747/quic-v1/p2p/{peer}")
                    .parse()
                    .unwrap(),
            ],
            connected: false,
            last_error: Some("answers as another peer id (12D3KooW...)".into()),
            answered_as: Some(relay),
        }],
    };
    let mut text = String::new();
    node(&mut text, "key.p2p.", &status);
    assert!(
        text.contains(&format!("listening:  {direct}/p2p/{peer}\n"))
            && text.contains(&format!("listening:  {relayed}\n")),
        "{text}"
    );
    // A bootstrap peer not connected is named with why (doctor says it too, with a fix).
    assert!(
        text.contains(&format!(
            "bootstrap:  not connected to /ip4/198.51.100.7/udp/4747/quic-v1/p2p/{peer}: answers \
             as another peer id (12D3KooW...)\n"
        )),
        "{text}"
    );
}
