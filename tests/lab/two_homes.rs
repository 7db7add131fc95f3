//! Two machines of one household, behind one home router, each serving a site through a tunnel,
//! opened from behind another router (issue: the second one never went direct). Both run the
//! default `[p2p] listen`, as a user who never set it does. Were both on one fixed port, the
//! router would map the second one's flows to another port wherever the first one already talks
//! to the same destination (the introduction server, the client), and keep the port elsewhere:
//! a mapping that depends on the destination, which hole punching cannot get through, so the
//! second site stayed on the relay and its downloads were cut at the relay's byte limit.

use std::{fs, path::Path};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    nat::{Daemon, Lab, Nat, Ns, Tools, Transport},
    process::{describe, tail},
    tunnel::{
        ResolverFiles, WEB_PORT, curl, expose, start_web, tunnels, wait_relayed,
        wait_tunnel_address, web_root,
    },
};

/// The router's connection tracking table (its NAT mappings), for failure messages.
fn conntrack(router: &Ns) -> String {
    let out = router.must("cat", &["/proc/net/nf_conntrack"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("dport=") && !l.contains("dport=53 "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The listen lines of `daemon`'s status.
fn listening(daemon: &Daemon) -> String {
    daemon
        .status()
        .lines()
        .filter(|l| l.contains("listen"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// B's `tunnels --json` entry for `name`.
fn mapped(b: &Daemon, name: &str) -> Value {
    let report = tunnels(b);
    report["mapped"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("B's tunnels report has no {name}: {report:#}"))
}

#[test]
fn two_sites_behind_one_home_router_are_both_opened_directly_from_behind_another() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    lab.transport = Transport::Unset;
    let home = lab.home(Nat::Eim);
    let second = lab.neighbour(&home);
    let b_home = lab.home(Nat::Eim);
    let _b_files = ResolverFiles::new(&b_home.host);
    let intro = lab.start_intro();
    let (root, big_sha) = web_root(&lab);
    let _web_one = start_web(&tools, &lab, &home.host, &root);
    let _web_two = start_web(&tools, &lab, &second, &root);
    let mut one = lab.start_daemon(&home, &intro.bootstrap);
    let mut two = lab.start_daemon_with(&second, &intro.bootstrap, "");
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    one.wait_joined();
    two.wait_joined();
    b.wait_joined();
    wait_relayed(&one);
    wait_relayed(&two);
    let to = format!("127.0.0.1:{WEB_PORT}");
    expose(&one, &["one", "80", "--to", &to]);
    expose(&two, &["two", "80", "--to", &to]);
    wait_tunnel_address(&b, "one.p2p");
    wait_tunnel_address(&b, "two.p2p");

    // Each site: 20 MiB, twenty times the relay's byte limit per circuit, arrive whole, over a
    // direct path.
    for (name, server) in [("one.p2p", &one), ("two.p2p", &two)] {
        let file = lab.dir.path().join(format!("{name}.bin"));
        let out = curl(&b_home.host, &format!("http://{name}/big.bin"), &file);
        let got = hex_sha256(&file);
        let entry = mapped(&b, name);
        let context = || {
            format!(
                "curl: {}\nB's tunnel: {entry:#}\nthe server's listen addresses:\n{}\n\
                 the shared router's mappings:\n{}\nserver log:\n{}\nB log:\n{}",
                describe(&out),
                listening(server),
                conntrack(&home.router),
                tail(&server.proc.stderr(), 60),
                tail(&b.proc.stderr(), 60)
            )
        };
        assert_eq!(
            got,
            big_sha,
            "{name}: the 20 MiB file arrived changed or cut\n{}",
            context()
        );
        assert_eq!(entry["path"], "direct", "{name}\n{}", context());
    }
}

/// The SHA-256 of the file at `path`, in hex.
fn hex_sha256(path: &Path) -> String {
    Sha256::digest(fs::read(path).unwrap_or_default())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
