//! Two machines on one LAN, made of two network namespaces joined by a veth pair: daemons
//! with mDNS and no bootstrap find each other and resolve each other's names with `dig`.
//! Needs root (`ip netns`), as CI has, and the Debian packages iproute2 and bind9-dnsutils; a
//! missing one fails the test. The lab is sealed: nothing links it to the host's network, and it
//! is torn down even when the test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::process::{TempDir, require_root, tool};

const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(30);
const DNS_PORT: u16 = 5353 + 7;

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e} (needs iproute2 and root)"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces with a veth pair between them; removed on drop.
struct Lan {
    namespaces: [String; 2],
}

impl Lan {
    fn new() -> Self {
        let tag = format!("{:06x}", std::process::id() & 0xff_ffff);
        let namespaces = [format!("p2pdns-lan-a-{tag}"), format!("p2pdns-lan-b-{tag}")];
        let lan = Self {
            namespaces: namespaces.clone(),
        };
        for ns in &namespaces {
            run(&["ip", "netns", "add", ns]);
        }
        let (va, vb) = (format!("pla{tag}"), format!("plb{tag}"));
        run(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        for (i, (ns, veth)) in namespaces.iter().zip([&va, &vb]).enumerate() {
            run(&["ip", "link", "set", veth, "netns", ns]);
            let exec = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", ns.as_str()];
                full.extend_from_slice(args);
                run(&full);
            };
            let addr = format!("10.77.0.{}/24", i + 1);
            exec(&["ip", "addr", "add", &addr, "dev", veth]);
            exec(&["ip", "link", "set", veth, "up", "multicast", "on"]);
            exec(&["ip", "link", "set", "lo", "up"]);
            exec(&["ip", "route", "add", "224.0.0.0/4", "dev", veth]);
        }
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A daemon running inside a namespace; killed on drop.
struct Node {
    child: Child,
    dir: PathBuf,
    ns: String,
}

impl Node {
    fn start(ns: &str, dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let config = dir.join("p2pdns.toml");
        fs::write(
            &config,
            format!(
                "[upstream]\nresolv_conf = {:?}\n[p2p]\nlisten = [\"/ip4/0.0.0.0/udp/0/quic-v1\", \"/ip4/0.0.0.0/tcp/0\"]\nmdns = true\n",
                dir.join("resolv.conf").display().to_string()
            ),
        )
        .unwrap();
        fs::write(dir.join("resolv.conf"), "").unwrap();
        let log = fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--dns-listen", &format!("127.0.0.1:{DNS_PORT}")])
            .env("HOME", dir)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start p2pdns in the namespace");
        let node = Self {
            child,
            dir: dir.to_owned(),
            ns: ns.to_owned(),
        };
        let deadline = Instant::now() + WAIT;
        while !node.log().contains(" ready") {
            assert!(Instant::now() < deadline, "not ready:\n{}", node.log());
            thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(args)
            .env("HOME", &self.dir)
            .output()
            .expect("run the CLI")
    }

    fn dig(&self, name: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "dig", "@127.0.0.1", "-p"])
            .arg(DNS_PORT.to_string())
            .args([name, "A", "+short", "+time=3", "+tries=1"])
            .output()
            .expect("run dig (bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_daemons_on_a_lan_find_each_other_with_mdns_and_resolve_names() {
    require_root("the LAN lab (network namespaces)");
    tool("ip", "iproute2");
    tool("dig", "bind9-dnsutils");
    let dir = TempDir::new("lan");
    let lan = Lan::new();
    let a = Node::start(&lan.namespaces[0], &dir.path().join("a"));
    let b = Node::start(&lan.namespaces[1], &dir.path().join("b"));

    let out = a.cli(&["publish", "lan", "A", "192.0.2.88"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b.cli(&["publish", "other", "A", "192.0.2.99"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + WAIT;
    loop {
        let from_b = b.dig("lan.p2p");
        let from_a = a.dig("other.p2p");
        if from_b.trim() == "192.0.2.88" && from_a.trim() == "192.0.2.99" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "names not resolved across the LAN (b: {from_b:?}, a: {from_a:?})\na:\n{}\nb:\n{}",
            a.log(),
            b.log()
        );
        thread::sleep(Duration::from_millis(500));
    }
    let status = String::from_utf8_lossy(&b.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("peers:      1 connected"), "{status}");
    drop((a, b));
    drop(lan);
}
