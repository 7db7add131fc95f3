//! A serving peer that moved or vanished (issue 12, docs/PROTOCOL.md section 9). A site served
//! from a host on the internet moves, key and all, behind a home router, and another node takes
//! the host's address: a client that knew the old address must still reach the site on its
//! first try (the node that answers there now is a wrong peer, which ends libp2p's dial of the
//! address list, relayed addresses included). A home that drops off the network leaves its
//! peers' TCP connections to it dead but open: they must be closed within two minutes, not when
//! the kernel gives up retransmitting (about 15 minutes), or tunnels keep choosing them. A
//! client of a serving daemon that stopped says plainly that it is offline.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use crate::{
    nat::{Daemon, Home, Lab, Nat, Ns, Tools, Transport},
    process::{describe, tail},
    system::status_field,
    tunnel::{
        MARKER, ResolverFiles, TUNNEL_TIMEOUT, WEB_PORT, curl, expose, logs, start_web, tunnels,
        wait_relayed, wait_tunnel_address, web_root,
    },
};

/// `curl http://site.p2p/` in `ns` into `file` of the lab's directory: `Ok` when the page came,
/// else what curl said.
fn open_site(lab: &Lab, ns: &Ns, file: &str) -> Result<(), String> {
    let page = lab.dir.path().join(file);
    let out = curl(ns, "http://site.p2p/", &page);
    let body = fs::read_to_string(&page).unwrap_or_default();
    if body.contains(MARKER) {
        Ok(())
    } else {
        Err(describe(&out))
    }
}

/// The lines `status --peers` gives `peer`: its state, then its addresses and connections.
fn peer_block(status: &str, peer: &str) -> Option<String> {
    let mut lines = status.lines().skip_while(|l| {
        !l.trim_start()
            .strip_prefix("peer:")
            .is_some_and(|rest| rest.trim_start().starts_with(peer))
    });
    let head = lines.next()?;
    let rest: Vec<&str> = lines.take_while(|l| l.starts_with("    ")).collect();
    Some(format!("{head}\n{}", rest.join("\n")))
}

/// With the serving daemon stopped (the flood test of [`crate::tunnel`] stops it, and its
/// relay reservation goes with it), a connection from B fails, and B's `tunnels` and log say
/// plainly that the peer is offline, not libp2p's error for each address ("... Relay has no
/// reservation for destination"), which goes to the debug log. B's "not opened" lines are
/// limited to 10 a minute, which the flood may have used up: B tries until one is logged.
pub(crate) fn offline_is_said_plainly(lab: &Lab, b_home: &Home, b: &Daemon) {
    let offline = "is not reachable: it is offline or has no relay reservation";
    let page = lab.dir.path().join("offline.html");
    let started = Instant::now();
    loop {
        let out = curl(&b_home.host, "http://site.p2p/", &page);
        let report = tunnels(b);
        let error = report["mapped"][0]["last_error"]
            .as_str()
            .unwrap_or_default();
        let log = b.proc.stderr();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("tunnel to site.p2p not opened"))
            .collect();
        if error.contains(offline) && lines.iter().any(|l| l.contains(offline)) {
            assert!(!out.status.success(), "{}", describe(&out));
            assert!(
                lines
                    .iter()
                    .all(|l| !l.contains("Relay has no reservation")),
                "libp2p's own error stays at debug level: {lines:#?}"
            );
            return;
        }
        assert!(
            started.elapsed() < 2 * TUNNEL_TIMEOUT,
            "B never said the serving peer is offline: {report:#}\nB log:\n{}",
            tail(&log, 40)
        );
        thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn a_site_that_moved_behind_a_nat_is_reached_though_another_node_took_its_old_address() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let (public, public_addr) = lab.public_host();
    let b_home = lab.home(Nat::Eim);
    let a_home = lab.home(Nat::Eim);
    let _b_files = ResolverFiles::new(&b_home.host);
    let intro = lab.start_intro();
    let (root, _) = web_root(&lab);
    let target = format!("127.0.0.1:{WEB_PORT}");

    // A serves the site from a host on the internet; B is served directly and keeps A's
    // public address in its routing table.
    let web = start_web(&tools, &lab, &public, &root);
    let mut a = lab.start_daemon_with(&public, &intro.bootstrap, "");
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    a.wait_joined();
    b.wait_joined();
    let a_id = status_field(&a.status(), "peer id:");
    expose(&a, &["site", "80", "--to", &target]);
    wait_tunnel_address(&b, "site.p2p");
    if let Err(said) = open_site(&lab, &b_home.host, "before.html") {
        panic!("B is served by A on the internet: {said}\n{}", logs(&a, &b));
    }
    let old_addr = format!("/ip4/{public_addr}/");
    b.wait_status(
        "A's public address in the routing table",
        TUNNEL_TIMEOUT,
        |status| {
            peer_block(status, &a_id)
                .filter(|block| block.contains("routing table") && block.contains(&old_addr))
                .map(|_| ())
        },
    );

    // A moves behind a home router with its data (its key, its exposed site); a new node, C,
    // starts on the host A left, at the same address and port.
    let a_data = a.data.clone();
    drop(a);
    drop(web);
    let moved = lab.dir.subdir("daemon-h2").join("data");
    fs::rename(&a_data, &moved).unwrap_or_else(|e| panic!("cannot move A's data: {e}"));
    let mut c = lab.start_daemon_with(&public, &intro.bootstrap, "");
    c.wait_joined();
    let c_id = status_field(&c.status(), "peer id:");
    assert_ne!(c_id, a_id, "C has a key of its own");
    let _web = start_web(&tools, &lab, &a_home.host, &root);
    let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
    a.wait_joined();
    assert_eq!(
        status_field(&a.status(), "peer id:"),
        a_id,
        "A kept its key"
    );
    wait_relayed(&a);
    // B's connections to A's old place are gone (its QUIC ones end when C resets them or at
    // their idle timeout); B still has the old address.
    b.wait_status("no connection to A's old place", TUNNEL_TIMEOUT, |status| {
        let block = peer_block(status, &a_id).unwrap_or_default();
        (!block.contains(" connection")).then_some(())
    });

    // B's first connection reaches A, through the relay or a hole punched to A's new place.
    if let Err(said) = open_site(&lab, &b_home.host, "after.html") {
        panic!(
            "B's first try after the move reaches A: {said}\ntunnels: {:#}\nB status:\n{}\n{}",
            tunnels(&b),
            b.status(),
            logs(&a, &b)
        );
    }
    // And so does every later one: the address where C answers is no longer A's.
    for round in 0..3 {
        thread::sleep(Duration::from_millis(500));
        if let Err(said) = open_site(&lab, &b_home.host, &format!("again-{round}.html")) {
            panic!("B reaches A again ({round}): {said}\n{}", logs(&a, &b));
        }
    }
    // Whether B met C at all is a race: a relayed or hole-punched connection that completes
    // first ends the dial before C answers. When B did meet C (its connect was retried through
    // the relays, which B logs), the address is gone from A's entry.
    let status = b.status();
    let block = peer_block(&status, &a_id).unwrap_or_default();
    if b.proc
        .stderr()
        .contains("a wrong peer answered at a direct address")
    {
        assert!(
            !block.contains(&old_addr),
            "B dropped the address where C answers from A's entry:\n{status}"
        );
    }
}

#[test]
fn a_tcp_connection_to_a_home_that_dropped_off_the_network_is_closed_within_two_minutes() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    lab.transport = Transport::Tcp;
    let a_home = lab.home(Nat::Eim);
    let b_home = lab.home(Nat::Eim);
    let _b_files = ResolverFiles::new(&b_home.host);
    let intro = lab.start_intro();
    let (root, _) = web_root(&lab);
    let _web = start_web(&tools, &lab, &a_home.host, &root);
    let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    a.wait_joined();
    b.wait_joined();
    wait_relayed(&a);
    let a_id = status_field(&a.status(), "peer id:");
    expose(
        &a,
        &["site", "80", "--to", &format!("127.0.0.1:{WEB_PORT}")],
    );
    wait_tunnel_address(&b, "site.p2p");
    if let Err(said) = open_site(&lab, &b_home.host, "before.html") {
        panic!("B is served by A: {said}\n{}", logs(&a, &b));
    }
    b.wait_status("a connection to A", TUNNEL_TIMEOUT, |status| {
        let block = peer_block(status, &a_id).unwrap_or_default();
        block.contains(" connection").then_some(())
    });

    // A's home drops off the network: nothing it had open answers any more, and nothing
    // closes either (no FIN, no RST).
    let cut = Instant::now();
    a_home.router.ip(&["link", "set", "wan", "down"]);
    b.wait_status(
        "no connection to A two minutes after its home dropped off",
        Duration::from_secs(120),
        |status| {
            let block = peer_block(status, &a_id).unwrap_or_default();
            (!block.contains(" connection")).then_some(())
        },
    );
    eprintln!(
        "B closed its connections to A {:?} after the cut",
        cut.elapsed()
    );
}
