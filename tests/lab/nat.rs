//! Nodes behind NAT, in a sealed lab of network namespaces: an "internet" (a bridge in its own
//! namespace, addressed from 198.18.0.0/15, the benchmarking range, which exists only inside the
//! lab), an introduction server on it, and home networks, each a router namespace doing NAT
//! with nftables and a host namespace behind it whose default route is the router.
//!
//! ```text
//! internet: namespace with bridge br0, 198.18.0.0/15; the probes' reflector on 198.18.0.1, .0.3
//! ├── intro: wan 198.18.0.2                            p2pdns intro
//! └── router N: wan 198.18.N.1, NAT kind, lan 10.N.0.1
//!     └── host N: eth0 10.N.0.2, default via 10.N.0.1   p2pdns run (DNS on 127.0.0.1)
//! ```
//!
//! The NAT kinds (RFC 4787 terms) are the usual ones: endpoint-independent mapping with
//! address-and-port-dependent filtering (a plain home router), full cone, address-restricted
//! cone and symmetric. Every router drops unsolicited packets from the internet silently, as
//! real ones do: a reset or ICMP error would make hole punching fail differently than in the
//! field. The first test proves the lab behaves as configured with small UDP and TCP probes;
//! the others run the real binary in it.
//!
//! Needs root (`ip netns`), as CI has, and the Debian packages iproute2, nftables, python3 and
//! bind9-dnsutils; a missing tool fails the test and names its package. Nothing links the lab
//! to the machine's own network namespace. Namespace names carry a random tag, so runs can
//! overlap; every process in the lab is killed and every namespace removed when the test ends,
//! also when it fails.

use std::{
    collections::BTreeSet,
    env, fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns,
    process::{Proc, TempDir, describe, random_tag, require_root, run_bounded, tail, tool},
};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");

/// Longest wait for a program to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest run of one tool (ip, nft, a probe, dig, the CLI).
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a daemon behind NAT to connect to the introduction server.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a name published behind one NAT to resolve behind another.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at something being polled.
const POLL: Duration = Duration::from_millis(50);

/// The public-looking prefix of the one home whose router speaks UPnP IGD: miniupnpd and
/// libp2p both refuse to map behind a private, benchmarking or documentation address. It
/// exists only inside the sealed lab, on the same bridge as the rest of the lab's internet.
const UPNP_PREFIX: (Ipv4Addr, u8) = (Ipv4Addr::new(11, 0, 0, 0), 8);

/// The introduction server's STUN ports: the standard one, which nodes ask by default, and a
/// second one for telling mapping behaviour.
const STUN_PORT: u16 = 3478;
const STUN_OTHER_PORT: u16 = 3479;

/// The lab internet's network address (198.18.0.0/15).
const INTERNET_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

/// The internet of the lab: 198.18.0.0/15 (RFC 2544 benchmarking), routed nowhere outside.
const INTERNET_PREFIX_LEN: u8 = 15;
/// The introduction server's address.
const INTRO_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Two addresses of the internet namespace itself, where the probes' reflector listens: a
/// second internet host, so filtering by address can be told from filtering by port.
const REFLECTOR_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REFLECTOR_OTHER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const REFLECTOR_PORT: u16 = 3478;
const REFLECTOR_OTHER_PORT: u16 = 3479;
/// Where every node listens for P2P connections, TCP and QUIC. Each home host is its own
/// namespace, so they never clash; a fixed port is what a cone NAT's port forward points at.
const P2P_PORT: u16 = 4747;
/// The daemon's DNS port on 127.0.0.1 inside its home host.
pub(crate) const DNS_PORT: u16 = 5300;
/// A port nothing listens on, for the unsolicited-packet probes.
const CLOSED_PORT: u16 = 9;

/// The lab's probe: a UDP reflector on the internet side that tells a sender the address it
/// saw (`echo`) or answers from each of its sockets (`others`), and the clients run in a home
/// host or on the internet. Every wait is bounded.
const PROBE_PY: &str = r#"
import select, socket, sys, time

def addr(text):
    host, port = text.rsplit(":", 1)
    return (host, int(port))

def show(address):
    return "%s:%d" % address

def reflector(specs):
    socks = []
    for spec in specs:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(addr(spec))
        socks.append(s)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select(socks, [], [])
        for s in readable:
            data, peer = s.recvfrom(512)
            if data == b"echo":
                s.sendto(show(peer).encode(), peer)
            elif data == b"others":
                # The asked socket last: once its answer is in, the others were sent.
                for other in [o for o in socks if o is not s] + [s]:
                    other.sendto(b"x", peer)

def bound(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    return s

def mapping(port, dests):
    # One line per destination: the source address it saw, or "none".
    s = bound(port)
    for dest in map(addr, dests):
        seen = "none"
        for _ in range(3):
            s.sendto(b"echo", dest)
            deadline = time.monotonic() + 1
            while seen == "none" and time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data, peer = s.recvfrom(512)
                except socket.timeout:
                    break
                if peer == dest:
                    seen = data.decode()
            if seen != "none":
                break
        print(seen, flush=True)

def filtering(port, dest):
    # One line per internet socket whose packet got through the NAT to this one.
    s = bound(port)
    dest = addr(dest)
    got = set()
    for _ in range(3):
        s.sendto(b"others", dest)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                _, peer = s.recvfrom(512)
            except socket.timeout:
                break
            got.add(show(peer))
            if peer == dest:
                deadline = min(deadline, time.monotonic() + 0.5)
        if show(dest) in got:
            break
    for peer in sorted(got):
        print(peer, flush=True)

def closed(dest):
    # What an unsolicited UDP datagram and TCP SYN to dest get back.
    dest = addr(dest)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(dest)
    s.settimeout(1)
    s.send(b"x")
    try:
        s.recv(512)
        print("udp reply")
    except ConnectionRefusedError:
        print("udp refused")
    except socket.timeout:
        print("udp silent")
    try:
        socket.create_connection(dest, timeout=1).close()
        print("tcp connected")
    except ConnectionRefusedError:
        print("tcp refused")
    except socket.timeout:
        print("tcp silent")

mode, args = sys.argv[1], sys.argv[2:]
if mode == "reflector":
    reflector(args)
elif mode == "mapping":
    mapping(args[0], args[1:])
elif mode == "filtering":
    filtering(args[0], args[1])
elif mode == "closed":
    closed(args[0])
"#;

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// The external programs the lab drives.
#[derive(Clone)]
pub(crate) struct Tools {
    ip: PathBuf,
    nft: PathBuf,
    pub(crate) python3: PathBuf,
    dig: PathBuf,
}

impl Tools {
    /// Finds every tool first, so a missing one (or missing root) fails the test before
    /// anything is set up.
    pub(crate) fn find() -> Self {
        require_root("the NAT lab (network namespaces, nftables)");
        Self {
            ip: tool("ip", "iproute2"),
            nft: tool("nft", "nftables"),
            python3: tool("python3", "python3"),
            dig: tool("dig", "bind9-dnsutils"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

/// One network namespace of the lab. The [`Lab`] owns its lifetime; this is a handle to run
/// commands in it.
#[derive(Clone)]
pub(crate) struct Ns {
    pub(crate) name: String,
    ip: PathBuf,
    /// HOME of every program run inside, so none sees the user's configuration.
    home: PathBuf,
}

impl Ns {
    /// A command running `program` inside the namespace with a clean environment.
    pub(crate) fn exec(&self, program: impl AsRef<Path>) -> Command {
        netns::exec(&self.ip, &self.name, &self.home, program)
    }

    /// Runs `program ARGS` inside the namespace and fails the test if it fails.
    pub(crate) fn must(&self, program: impl AsRef<Path>, args: &[&str]) -> Output {
        let mut command = self.exec(program);
        command.args(args);
        let description = format!("{command:?}");
        let output = run_bounded(command, TOOL_TIMEOUT);
        assert!(
            output.status.success(),
            "{description} failed (the NAT lab needs root): {}",
            describe(&output)
        );
        output
    }

    /// Runs `ip -n NAME ARGS` (iproute2 acting on the namespace) and fails the test if it fails.
    pub(crate) fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        netns::ip(&self.ip, &all);
    }
}

/// How a home router translates and filters (RFC 4787).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nat {
    /// Endpoint-independent mapping, address-and-port-dependent filtering: a plain home router.
    Eim,
    /// Endpoint-independent mapping and filtering: the P2P port is forwarded to the host, and
    /// anyone on the internet may send to it.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: the P2P port is forwarded,
    /// but only from addresses the host sent to.
    AddressRestricted,
    /// Endpoint-dependent mapping: a new random port for every destination.
    Symmetric,
    /// A plain home router (endpoint-independent mapping, port-restricted filtering) that
    /// forwards ports when asked over UPnP IGD (miniupnpd), on a public-looking WAN address.
    Upnp,
}

impl Nat {
    /// The router's nftables ruleset for a LAN host at `host`.
    fn ruleset(self, host: Ipv4Addr) -> String {
        if self == Nat::Upnp {
            return UPNP_RULESET.to_owned();
        }
        let masquerade = match self {
            Nat::Symmetric => "masquerade fully-random",
            _ => "masquerade",
        };
        // The cones forward the host's P2P port, as a user's port forward or UPnP mapping would.
        let forward_port = match self {
            Nat::FullCone | Nat::AddressRestricted => format!(
                "iifname \"wan\" meta l4proto {{ tcp, udp }} th dport {P2P_PORT} dnat to {host}"
            ),
            _ => String::new(),
        };
        let inbound = match self {
            Nat::FullCone => "iifname \"wan\" ct status dnat accept",
            Nat::AddressRestricted => {
                "iifname \"wan\" ct status dnat ip saddr . ip daddr . th dport @contacted accept"
            }
            _ => "",
        };
        format!(
            "table ip nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        {forward_port}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"wan\" {masquerade}
    }}
}}
table inet filter {{
    # Internet addresses each LAN endpoint sent to, for address-restricted filtering.
    set contacted {{
        type ipv4_addr . ipv4_addr . inet_service
        flags dynamic, timeout
        timeout 120s
    }}
    # Unsolicited packets are dropped, never rejected.
    chain input {{
        type filter hook input priority filter; policy drop;
        iif \"lo\" accept
        ct state established,related accept
        iifname \"lan\" accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname \"lan\" meta l4proto {{ tcp, udp }} update @contacted {{ ip daddr . ip saddr . th sport }}
        iifname \"lan\" accept
        {inbound}
    }}
}}
"
        )
    }
}

/// The UPnP router's tables. miniupnpd (2.3.1) adds its forwards to the empty chains of
/// `inet` tables it is named in its configuration, and never creates them itself.
const UPNP_RULESET: &str = "table inet filter {
    chain input {
        type filter hook input priority filter; policy drop;
        iif \"lo\" accept
        ct state established,related accept
        iifname \"lan\" accept
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname \"lan\" accept
        jump miniupnpd
    }
    chain miniupnpd {
    }
}
table inet nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
        oifname \"wan\" masquerade
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
";

/// miniupnpd's configuration; `{run}` is a directory of the lab's own. Secure mode: a LAN host
/// may only map ports to itself, and only unprivileged ones.
const MINIUPNPD_CONF: &str = "ext_ifname=wan
listening_ip=lan
http_port=5000
enable_natpmp=no
enable_upnp=yes
ipv6_disable=yes
secure_mode=yes
system_uptime=no
clean_ruleset_interval=0
uuid={uuid}
lease_file={run}/upnp.leases
minissdpdsocket={run}/minissdpd.sock
upnp_table_name=filter
upnp_nat_table_name=nat
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 10.0.0.0/8 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
";

/// The transports the daemons listen on (and so can connect over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// QUIC and TCP on IPv4, port [`P2P_PORT`].
    Both,
    Quic,
    Tcp,
    /// No `[p2p] listen` in the configuration: what a user who never set it runs.
    Unset,
}

impl Transport {
    /// The `[p2p] listen` line of a daemon's configuration (empty for [`Transport::Unset`]).
    fn listen(self) -> String {
        let quic = format!("\"/ip4/0.0.0.0/udp/{P2P_PORT}/quic-v1\"");
        let tcp = format!("\"/ip4/0.0.0.0/tcp/{P2P_PORT}\"");
        let list = match self {
            Transport::Both => format!("{quic}, {tcp}"),
            Transport::Quic => quic,
            Transport::Tcp => tcp,
            Transport::Unset => return String::new(),
        };
        format!("listen = [{list}]\n")
    }
}

/// A home network: a router doing `kind` NAT and a host behind it.
pub(crate) struct Home {
    kind: Nat,
    pub(crate) router: Ns,
    pub(crate) host: Ns,
    /// The router's internet address, which the host's traffic leaves from.
    pub(crate) wan: Ipv4Addr,
    /// The host's private address.
    pub(crate) lan: Ipv4Addr,
}

/// The sealed lab. On drop, every process in its namespaces is killed, then the namespaces
/// (and with them every link) are removed, then its directory.
pub(crate) struct Lab {
    tools: Tools,
    tag: String,
    /// Namespaces created so far, removed in reverse order.
    namespaces: Vec<String>,
    internet: Ns,
    intro: Ns,
    homes: u8,
    public_hosts: u8,
    /// Processes that live as long as the lab (miniupnpd).
    services: Vec<Proc>,
    /// What the daemons listen on.
    pub(crate) transport: Transport,
    pub(crate) dir: TempDir,
}

impl Lab {
    /// The internet with its bridge and the introduction server's namespace on it.
    pub(crate) fn new(tools: &Tools) -> Self {
        let tag = random_tag();
        let dir = TempDir::new(&tag);
        let home = dir.subdir("home");
        let ns = |role: &str| Ns {
            name: format!("p2pdns-nat-{tag}-{role}"),
            ip: tools.ip.clone(),
            home: home.clone(),
        };
        let mut lab = Self {
            tools: tools.clone(),
            internet: ns("inet"),
            intro: ns("intro"),
            tag: tag.clone(),
            namespaces: Vec::new(),
            homes: 0,
            public_hosts: 0,
            services: Vec::new(),
            transport: Transport::Both,
            dir,
        };
        lab.dir.write("probe.py", PROBE_PY);
        let internet = lab.internet.clone();
        lab.add_namespace(&internet);
        internet.ip(&["link", "add", "br0", "type", "bridge"]);
        for addr in [REFLECTOR_ADDR, REFLECTOR_OTHER_ADDR] {
            internet.ip(&[
                "addr",
                "add",
                &format!("{addr}/{INTERNET_PREFIX_LEN}"),
                "dev",
                "br0",
            ]);
        }
        internet.ip(&["link", "set", "br0", "up"]);
        let upnp = format!("{}/{}", UPNP_PREFIX.0, UPNP_PREFIX.1);
        internet.ip(&["route", "add", &upnp, "dev", "br0"]);
        let intro = lab.intro.clone();
        lab.add_namespace(&intro);
        lab.plug_into_internet(&intro, "intro", INTRO_ADDR);
        lab
    }

    /// Creates `ns` with its loopback up; it is removed with the lab.
    fn add_namespace(&mut self, ns: &Ns) {
        // Recorded first: if creation half-succeeds, teardown still tries.
        self.namespaces.push(ns.name.clone());
        netns::ip(&self.tools.ip, &["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
    }

    /// Links `ns` to the internet bridge with a veth pair, its end named `wan` at `addr`. The
    /// pair is created inside the lab: no link ever exists in the machine's own namespace.
    fn plug_into_internet(&self, ns: &Ns, port: &str, addr: Ipv4Addr) {
        self.plug_into_internet_as(ns, port, addr, INTERNET_PREFIX_LEN);
    }

    /// [`Lab::plug_into_internet`] with the address in a prefix of `prefix_len` bits; each
    /// of the lab's two prefixes is reached on-link from the other, over the same bridge.
    fn plug_into_internet_as(&self, ns: &Ns, port: &str, addr: Ipv4Addr, prefix_len: u8) {
        ns.ip(&[
            "link",
            "add",
            "wan",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &self.internet.name,
        ]);
        self.internet
            .ip(&["link", "set", port, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{addr}/{prefix_len}"), "dev", "wan"]);
        ns.ip(&["link", "set", "wan", "up"]);
        let other = if prefix_len == INTERNET_PREFIX_LEN {
            format!("{}/{}", UPNP_PREFIX.0, UPNP_PREFIX.1)
        } else {
            format!("{INTERNET_NET}/{INTERNET_PREFIX_LEN}")
        };
        ns.ip(&["route", "add", &other, "dev", "wan"]);
    }

    /// Adds home network N (1, 2...): router WAN 198.18.N.1, LAN 10.N.0.0/24 with the router at
    /// .1 and the host at .2.
    pub(crate) fn home(&mut self, kind: Nat) -> Home {
        self.homes += 1;
        let n = self.homes;
        let ns = |role: String| Ns {
            name: format!("p2pdns-nat-{}-{role}", self.tag),
            ip: self.tools.ip.clone(),
            home: self.internet.home.clone(),
        };
        let home = Home {
            kind,
            router: ns(format!("r{n}")),
            host: ns(format!("h{n}")),
            wan: match kind {
                Nat::Upnp => Ipv4Addr::new(11, 0, n, 1),
                _ => Ipv4Addr::new(198, 18, n, 1),
            },
            lan: Ipv4Addr::new(10, n, 0, 2),
        };
        let gateway = Ipv4Addr::new(10, n, 0, 1);
        self.add_namespace(&home.router);
        self.add_namespace(&home.host);
        let prefix_len = match kind {
            Nat::Upnp => UPNP_PREFIX.1,
            _ => INTERNET_PREFIX_LEN,
        };
        self.plug_into_internet_as(&home.router, &format!("home{n}"), home.wan, prefix_len);

        let (router, host) = (&home.router, &home.host);
        router.ip(&[
            "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &host.name,
        ]);
        router.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "lan"]);
        router.ip(&["link", "set", "lan", "up"]);
        host.ip(&["addr", "add", &format!("{}/24", home.lan), "dev", "eth0"]);
        host.ip(&["link", "set", "eth0", "up"]);
        host.ip(&["route", "add", "default", "via", &gateway.to_string()]);

        router.must("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        let rules = self
            .dir
            .write(&format!("router{n}.nft"), &kind.ruleset(home.lan));
        router.must(&self.tools.nft, &["-f", &rules.display().to_string()]);
        if kind == Nat::Upnp {
            self.start_miniupnpd(&home.router, n);
        }
        home
    }

    /// Adds a second host behind `home`'s router, another machine of the same household: its
    /// own link `lan2` from the router (10.N.1.0/24, the host at .2), leaving the internet from
    /// the same address through the same NAT. Only the first host has the cones' port forward
    /// and miniupnpd's attention.
    pub(crate) fn neighbour(&mut self, home: &Home) -> Ns {
        let n = home.lan.octets()[1];
        let host = Ns {
            name: format!("p2pdns-nat-{}-h{n}b", self.tag),
            ip: self.tools.ip.clone(),
            home: self.internet.home.clone(),
        };
        self.add_namespace(&host);
        let router = &home.router;
        router.ip(&[
            "link", "add", "lan2", "type", "veth", "peer", "name", "eth0", "netns", &host.name,
        ]);
        let gateway = Ipv4Addr::new(10, n, 1, 1);
        router.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "lan2"]);
        router.ip(&["link", "set", "lan2", "up"]);
        host.ip(&["addr", "add", &format!("10.{n}.1.2/24"), "dev", "eth0"]);
        host.ip(&["link", "set", "eth0", "up"]);
        host.ip(&["route", "add", "default", "via", &gateway.to_string()]);
        // Let it out as the first host is let out; the masquerade applies to all that leaves
        // by the WAN link.
        for chain in ["input", "forward"] {
            let rule = format!("add rule inet filter {chain} iifname \"lan2\" accept");
            router.must(&self.tools.nft, &[&rule]);
        }
        host
    }

    /// Starts miniupnpd in `router` and waits until it answers: libp2p searches for a gateway
    /// once, when the node starts. Every path it uses is the lab's (its default pid file is
    /// shared by every namespace on the machine).
    fn start_miniupnpd(&mut self, router: &Ns, n: u8) {
        let run = self.dir.subdir(&format!("upnp{n}"));
        let uuid = format!("{}-0000-4000-8000-{:012x}", self.tag, n);
        let conf = self.dir.write(
            &format!("upnp{n}/miniupnpd.conf"),
            &MINIUPNPD_CONF
                .replace("{run}", &run.display().to_string())
                .replace("{uuid}", &uuid),
        );
        let miniupnpd = tool("miniupnpd", "miniupnpd-nftables");
        let mut command = router.exec(miniupnpd);
        command
            .arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(run.join("miniupnpd.pid"))
            .arg("-d");
        let mut proc = Proc::spawn(&format!("miniupnpd{n}"), command, self.dir.path());
        // Ready when the HTTP port (5000, hex 1388) listens and the SSDP port (1900, hex 076C)
        // is bound, as the router's own /proc/net shows.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let tcp = String::from_utf8_lossy(&router.must("cat", &["/proc/net/tcp"]).stdout)
                .into_owned();
            let udp = String::from_utf8_lossy(&router.must("cat", &["/proc/net/udp"]).stdout)
                .into_owned();
            let http = tcp
                .lines()
                .any(|l| l.contains(":1388 ") && l.split_whitespace().nth(3) == Some("0A"));
            if http && udp.contains(":076C ") {
                break;
            }
            assert!(
                proc.try_exit().is_none() && Instant::now() < deadline,
                "miniupnpd did not start: {}",
                tail(&proc.stderr(), 20)
            );
            thread::sleep(POLL);
        }
        self.services.push(proc);
    }

    /// Adds a host on the internet itself, with no NAT, at 198.18.0.(10 + N) for the Nth one.
    pub(crate) fn public_host(&mut self) -> (Ns, Ipv4Addr) {
        self.public_hosts += 1;
        let n = self.public_hosts;
        let ns = Ns {
            name: format!("p2pdns-nat-{}-p{n}", self.tag),
            ip: self.tools.ip.clone(),
            home: self.internet.home.clone(),
        };
        let addr = Ipv4Addr::new(198, 18, 0, 10 + n);
        self.add_namespace(&ns);
        self.plug_into_internet(&ns, &format!("pub{n}"), addr);
        (ns, addr)
    }

    /// Runs the lab's probe script in `ns` to completion; returns its output lines.
    fn probe(&self, ns: &Ns, args: &[&str]) -> Vec<String> {
        let script = self.dir.path().join("probe.py").display().to_string();
        let mut all = vec![script.as_str()];
        all.extend_from_slice(args);
        let output = ns.must(&self.tools.python3, &all);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Starts the UDP reflector on the internet: two ports on one address, one port on another.
    fn start_reflector(&self) -> Proc {
        let mut command = self.internet.exec(&self.tools.python3);
        command
            .arg("-u")
            .arg(self.dir.path().join("probe.py"))
            .arg("reflector")
            .args(reflector_sockets());
        let mut reflector = Proc::spawn("reflector", command, self.dir.path());
        reflector.wait_until("print `ready`", START_TIMEOUT, |out, _| {
            out.contains("ready")
        });
        reflector
    }

    /// Starts `p2pdns intro` on the internet, listening on INTRO_ADDR (TCP and QUIC) and
    /// advertising that address, and reads the --bootstrap addresses it prints.
    pub(crate) fn start_intro(&self) -> Intro {
        self.start_intro_with("")
    }

    /// [`Lab::start_intro`] with more configuration lines (an `[intro]` section, say).
    pub(crate) fn start_intro_with(&self, extra: &str) -> Intro {
        let dir = self.dir.subdir("intro");
        // The lab's internet is a benchmarking range, not a global one: AutoNAT must accept it.
        let config = self.dir.write(
            "intro.toml",
            &format!("[p2p]\nmdns = false\nnat_probe_private_addresses = true\n{extra}\n"),
        );
        let addrs = [
            format!("/ip4/{INTRO_ADDR}/tcp/{P2P_PORT}"),
            format!("/ip4/{INTRO_ADDR}/udp/{P2P_PORT}/quic-v1"),
        ];
        let mut command = self.intro.exec(BIN);
        command
            .env("RUST_LOG", "p2pdns=debug,libp2p_kad=debug")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("intro");
        for addr in &addrs {
            command.args(["--p2p-listen", addr, "--external-addr", addr]);
        }
        // Two STUN ports, so that nodes can tell their NAT's mapping behaviour.
        for port in [STUN_PORT, STUN_OTHER_PORT] {
            command.args(["--stun-listen", &format!("{INTRO_ADDR}:{port}")]);
        }
        let mut proc = Proc::spawn("intro", command, self.dir.path());
        let bootstrap_lines = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|line| line.contains("nodes join with --bootstrap"))
                .filter_map(|line| line.split("addr=").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
                .collect()
        };
        proc.wait_until("log its bootstrap addresses", START_TIMEOUT, |_, err| {
            bootstrap_lines(err).len() >= addrs.len()
        });
        let bootstrap = bootstrap_lines(&proc.stderr());
        for addr in &addrs {
            assert!(
                bootstrap
                    .iter()
                    .any(|b| b.starts_with(&format!("{addr}/p2p/"))),
                "the introduction server does not advertise {addr}: {bootstrap:?}\n{}",
                proc.stderr()
            );
        }
        Intro { proc, bootstrap }
    }

    /// Starts `p2pdns run` in `home`'s host: DNS on 127.0.0.1:DNS_PORT, P2P on 0.0.0.0 port
    /// P2P_PORT (TCP and QUIC), no mDNS, no upstream, bootstrapping from `bootstrap`.
    pub(crate) fn start_daemon(&self, home: &Home, bootstrap: &[String]) -> Daemon {
        self.start_daemon_with(&home.host, bootstrap, "")
    }

    /// [`Lab::start_daemon`] in namespace `host`, with more lines for the `[p2p]` section of
    /// its configuration.
    pub(crate) fn start_daemon_with(&self, host: &Ns, bootstrap: &[String], p2p: &str) -> Daemon {
        let name = format!("daemon-{}", host.name.rsplit('-').next().unwrap_or("h"));
        let dir = self.dir.subdir(&name);
        let resolv_conf = dir.join("resolv.conf");
        fs::write(&resolv_conf, "").unwrap_or_else(|e| panic!("cannot write resolv.conf: {e}"));
        let quoted: Vec<String> = bootstrap.iter().map(|a| format!("{a:?}")).collect();
        let config = dir.join("p2pdns.toml");
        fs::write(
            &config,
            format!(
                "[upstream]\nservers = []\nresolv_conf = {:?}\n\n\
                 [p2p]\n{}\
                 mdns = false\nnat_probe_private_addresses = true\nbootstrap = [{}]\n{p2p}\n",
                resolv_conf.display().to_string(),
                self.transport.listen(),
                quoted.join(", ")
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let data = dir.join("data");
        let mut command = host.exec(BIN);
        command
            .env("RUST_LOG", "p2pdns=debug,libp2p_kad=debug")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .arg("run")
            .args(["--dns-listen", &format!("127.0.0.1:{DNS_PORT}")])
            // Port 53 too, where a namespace's resolv.conf sends glibc, curl and browsers.
            .args(["--dns-listen", "127.0.0.1:53"]);
        let started = Instant::now();
        let mut proc = Proc::spawn(&name, command, self.dir.path());
        proc.wait_until("log `ready`", START_TIMEOUT, |_, err| {
            err.contains(" ready")
        });
        Daemon {
            proc,
            started,
            ns: host.clone(),
            config,
            data,
            dig: self.tools.dig.clone(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        netns::remove(&self.tools.ip, &self.namespaces);
    }
}

/// The reflector's sockets: the asked one, another port on its address, another address.
fn reflector_sockets() -> [String; 3] {
    [
        format!("{REFLECTOR_ADDR}:{REFLECTOR_PORT}"),
        format!("{REFLECTOR_ADDR}:{REFLECTOR_OTHER_PORT}"),
        format!("{REFLECTOR_OTHER_ADDR}:{REFLECTOR_PORT}"),
    ]
}

/// The introduction server and the addresses it tells nodes to bootstrap from.
pub(crate) struct Intro {
    pub(crate) proc: Proc,
    pub(crate) bootstrap: Vec<String>,
}

/// A `p2pdns run` daemon in a home host.
pub(crate) struct Daemon {
    pub(crate) proc: Proc,
    /// Just before its process was started.
    started: Instant,
    pub(crate) ns: Ns,
    config: PathBuf,
    pub(crate) data: PathBuf,
    dig: PathBuf,
}

impl Daemon {
    /// Runs the CLI against this daemon, inside its namespace.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        let mut command = self.ns.exec(BIN);
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args);
        run_bounded(command, TOOL_TIMEOUT)
    }

    pub(crate) fn status(&self) -> String {
        String::from_utf8_lossy(&self.cli(&["status", "--peers"]).stdout).into_owned()
    }

    /// Waits until the daemon is connected to at least one peer (the introduction server).
    pub(crate) fn wait_joined(&mut self) {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            let status = self.status();
            if connected_peers(&status) > 0 {
                return;
            }
            assert!(
                self.proc.try_exit().is_none(),
                "{} exited:\n{}",
                self.proc.name(),
                tail(&self.proc.stderr(), 60)
            );
            assert!(
                Instant::now() < deadline,
                "{} did not connect to the introduction server within {JOIN_TIMEOUT:?}\n\
                 status:\n{status}\nlog:\n{}",
                self.proc.name(),
                tail(&self.proc.stderr(), 60)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until AutoNAT has judged the node: `public`, or `private` or `public behind NAT`
    /// with a relay reservation held.
    fn wait_reachability(&self, case: &str, timeout: Duration) -> &'static str {
        let what = format!("{case}: reachability settled");
        self.wait_status(&what, timeout, |status| {
            let relayed = status.contains("relayed at: ");
            if status.contains("reachable:  public behind NAT ") {
                relayed.then_some("public behind NAT")
            } else if status.contains("reachable:  public ") {
                Some("public")
            } else {
                (status.contains("reachable:  private ") && relayed).then_some("private")
            }
        })
    }

    /// Publishes `site.p2p` with `address` as its A record and waits until another node holds
    /// it.
    fn publish_site(&mut self, address: &str) {
        let out = self.cli(&["publish", "site", "A", address]);
        let name = self.proc.name();
        assert!(out.status.success(), "{name}: publish: {}", describe(&out));
        self.wait_held("site.p2p");
    }

    /// `p2pdns connect site --wait SECONDS` through this daemon: how the command ended, and
    /// what it said (trimmed).
    fn connect_site(&self, wait_secs: u64) -> (Output, String) {
        let out = self.cli(&["connect", "site", "--wait", &wait_secs.to_string()]);
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out, said)
    }

    /// Waits until `names` reports `name` held by at least one other node.
    fn wait_held(&mut self, name: &str) {
        self.wait_held_by(name, 1);
    }

    /// Waits until `names` reports `name` held by at least `holders` other nodes.
    fn wait_held_by(&mut self, name: &str, holders: usize) {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            let out = self.cli(&["names"]);
            let names = String::from_utf8_lossy(&out.stdout).into_owned();
            let held = names
                .lines()
                .filter(|line| line.starts_with(name))
                .filter_map(|line| line.split("held by ").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .filter_map(|n| n.parse::<usize>().ok())
                .any(|n| n >= holders);
            if held {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: fewer than {holders} other nodes hold {name} after {JOIN_TIMEOUT:?}\n\
                 names: {}\nlog:\n{}",
                self.proc.name(),
                describe(&out),
                tail(&self.proc.stderr(), 60)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reads `status --peers` every 250 ms until `found` takes something from it; fails after
    /// `timeout` with the last status and the log, saying what was awaited.
    pub(crate) fn wait_status<T>(
        &self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if let Some(value) = found(&status) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} within {timeout:?}:\n{status}\n{}",
                self.proc.name(),
                tail(&self.proc.stderr(), 40)
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Asks for `name` every half second until this daemon answers `address`; returns how
    /// long that took. Fails after [`RESOLVE_TIMEOUT`] with the answers seen, this daemon's
    /// status and log, and what `context` adds (other nodes' state).
    fn wait_resolves(
        &self,
        case: &str,
        name: &str,
        address: &str,
        context: impl Fn() -> String,
    ) -> Duration {
        let started = Instant::now();
        let mut answers = Vec::new();
        loop {
            let answer = self.dig(name);
            if answer == address {
                return started.elapsed();
            }
            answers.push(answer);
            assert!(
                started.elapsed() < RESOLVE_TIMEOUT,
                "{case}: {name} did not resolve to {address} within {RESOLVE_TIMEOUT:?} \
                 (answers: {answers:?})\n{} status:\n{}\n{} log:\n{}\n{}",
                self.proc.name(),
                self.status(),
                self.proc.name(),
                tail(&self.proc.stderr(), 80),
                context()
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// `dig +short` for `name`'s A records through this daemon's DNS port.
    pub(crate) fn dig(&self, name: &str) -> String {
        let mut command = self.ns.exec(&self.dig);
        command
            .args(["@127.0.0.1", "-p", &DNS_PORT.to_string()])
            .args([name, "A", "+short", "+time=3", "+tries=1"]);
        let output = run_bounded(command, TOOL_TIMEOUT);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn the_lab_nats_behave_as_configured() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    // The UPnP router, before anything asks it for a mapping, is a plain home router.
    let kinds = [
        Nat::Eim,
        Nat::FullCone,
        Nat::AddressRestricted,
        Nat::Symmetric,
        Nat::Upnp,
    ];
    let homes: Vec<Home> = kinds.into_iter().map(|kind| lab.home(kind)).collect();
    let _reflector = lab.start_reflector();
    let [asked, other_port, other_addr] = reflector_sockets();

    // The probes can tell a reject from silence: a host without a firewall (the introduction
    // server's namespace, nothing listening) refuses.
    let control = lab.probe(
        &lab.internet,
        &["closed", &format!("{INTRO_ADDR}:{CLOSED_PORT}")],
    );
    assert_eq!(control, ["udp refused", "tcp refused"], "control probe");

    for home in &homes {
        let kind = home.kind;
        // Mapping: the host sends from one port to three internet endpoints; each tells the
        // source it saw. The host's private address never shows.
        let seen = lab.probe(
            &home.host,
            &[
                "mapping",
                &(P2P_PORT + 1).to_string(),
                &asked,
                &other_port,
                &other_addr,
            ],
        );
        let ports: Vec<&str> = seen
            .iter()
            .map(|s| {
                let (addr, port) = s.rsplit_once(':').unwrap_or_else(|| {
                    panic!("{kind:?}: a reflector did not answer the host: {seen:?}")
                });
                assert_eq!(
                    addr,
                    home.wan.to_string(),
                    "{kind:?}: traffic from {} must leave from the router's address",
                    home.lan
                );
                port
            })
            .collect();
        let endpoint_independent = ports.iter().all(|p| *p == ports[0]);
        assert_eq!(
            endpoint_independent,
            kind != Nat::Symmetric,
            "{kind:?}: mapped source ports per destination: {seen:?}"
        );

        // Filtering: the host sends from its P2P port to one endpoint; the reflector answers
        // from that endpoint, from another port and from another address.
        let got = lab.probe(&home.host, &["filtering", &P2P_PORT.to_string(), &asked]);
        let (want_port, want_addr) = match kind {
            Nat::Eim | Nat::Symmetric | Nat::Upnp => (false, false),
            Nat::FullCone => (true, true),
            Nat::AddressRestricted => (true, false),
        };
        assert!(
            got.contains(&asked),
            "{kind:?}: no answer from {asked}: {got:?}"
        );
        assert_eq!(
            (got.contains(&other_port), got.contains(&other_addr)),
            (want_port, want_addr),
            "{kind:?}: (packets from another port, from another address) reached the host: {got:?}"
        );

        // Unsolicited packets to the router are dropped without a word: no ICMP error, no RST.
        let closed = lab.probe(
            &lab.intro,
            &["closed", &format!("{}:{CLOSED_PORT}", home.wan)],
        );
        assert_eq!(
            closed,
            ["udp silent", "tcp silent"],
            "{kind:?}: router {}",
            home.wan
        );
    }
}

#[test]
fn a_name_published_behind_one_nat_resolves_behind_another() {
    let tools = Tools::find();
    for (i, (publisher_nat, resolver_nat)) in
        [(Nat::Eim, Nat::Eim), (Nat::Symmetric, Nat::Symmetric)]
            .into_iter()
            .enumerate()
    {
        let case = format!("published behind {publisher_nat:?}, resolved behind {resolver_nat:?}");
        let mut lab = Lab::new(&tools);
        let a_home = lab.home(publisher_nat);
        let b_home = lab.home(resolver_nat);
        let intro = lab.start_intro();
        let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
        let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
        // A name published before the node has a peer stays on it until the next periodic push
        // (every ten minutes): join first, as a user's daemon has long done when they publish.
        a.wait_joined();
        b.wait_joined();

        let address = format!("198.18.200.{}", i + 10);
        let out = a.cli(&["publish", "site", "A", &address]);
        assert!(
            out.status.success(),
            "{case}: publish failed: {}",
            describe(&out)
        );
        // `publish` returns once the DHT put has started, not when a peer holds the record; a
        // lookup in between is answered "absent", and that answer is cached for seconds. Wait
        // for the copy on the introduction server, as `p2pdns names` reports it.
        a.wait_held("site.p2p");

        let took = b.wait_resolves(&case, "site.p2p", &address, || {
            format!(
                "publisher status:\n{}\npublisher log:\n{}\nintroduction server log:\n{}",
                a.status(),
                tail(&a.proc.stderr(), 80),
                tail(&intro.proc.stderr(), 80),
            )
        });
        eprintln!("{case}: resolved in {took:?}");
    }
}

/// What `p2pdns connect` ended with between A (publishing behind `a_nat`) and B (connecting
/// from behind `b_nat`).
#[derive(Debug)]
struct Connected {
    /// A's reachability as AutoNAT judged it before the connection.
    a_reachable: String,
    direct: bool,
    /// Relayed first, then hole punched.
    punched: bool,
    output: String,
}

fn connect_case(tools: &Tools, a_nat: Nat, b_nat: Nat) -> Connected {
    connect_case_over(tools, a_nat, b_nat, Transport::Both)
}

fn connect_case_over(tools: &Tools, a_nat: Nat, b_nat: Nat, transport: Transport) -> Connected {
    let case = format!("{a_nat:?} <- {b_nat:?} over {transport:?}");
    let mut lab = Lab::new(tools);
    lab.transport = transport;
    let a_home = lab.home(a_nat);
    let b_home = lab.home(b_nat);
    let intro = lab.start_intro();
    let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    a.wait_joined();
    b.wait_joined();

    // AutoNAT (against the introduction server) judges A: public (a forwarded port), or
    // private and then A takes a relay slot on the introduction server.
    let a_reachable = a.wait_reachability(&case, Duration::from_secs(45));
    a.publish_site("198.18.200.50");

    let (out, output) = b.connect_site(8);
    assert!(
        out.status.success(),
        "{case}: {}\nA status:\n{}\nB status:\n{}\nA log:\n{}\nB log:\n{}",
        describe(&out),
        a.status(),
        b.status(),
        tail(&a.proc.stderr(), 60),
        tail(&b.proc.stderr(), 60)
    );
    let direct = output.contains(": direct connection to ");

    // B's status lists the connection to A as it is; A's doctor says how peers reach it.
    let a_id = output
        .split("connection to ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    let listed = connection_lines(&b.status(), &a_id);
    let want = if direct {
        "direct connection over "
    } else {
        "relayed connection through the relay "
    };
    assert!(
        listed.iter().any(|line| line.starts_with(want)),
        "{case}: B's status does not list a {want:?} line for {a_id}: {listed:?}\n\
         connect said: {output}\nA log:\n{}\nB log:\n{}",
        tail(&a.proc.stderr(), 40),
        tail(&b.proc.stderr(), 40)
    );
    let doctor = String::from_utf8_lossy(&a.cli(&["doctor"]).stdout).into_owned();
    let want = if a_reachable == "public" {
        "ok    reachability: public"
    } else {
        "reachability: behind "
    };
    assert!(
        doctor.lines().any(|line| line.contains(want)),
        "{case}: A's doctor does not say {want:?}:\n{doctor}"
    );

    Connected {
        a_reachable: a_reachable.to_owned(),
        direct,
        punched: output.contains("relayed first, then hole punched"),
        output,
    }
}

/// The number of connected peers `status` reports (0 when it reports none, or nothing).
fn connected_peers(status: &str) -> usize {
    status
        .lines()
        .find_map(|line| line.strip_prefix("peers:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
}

/// AutoNAT's verdict as `status` words it (`unknown`, `private`, `public behind NAT`...), or
/// nothing when the status has no such line (the daemon is not answering yet).
fn reachability(status: &str) -> Option<&str> {
    let line = status.lines().find_map(|l| l.strip_prefix("reachable:"))?;
    Some(line.trim().trim_end_matches("(AutoNAT)").trim())
}

/// Does `status` list `mapped` as an external address from a UPnP port mapping?
fn upnp_mapped(status: &str, mapped: &str) -> bool {
    status
        .lines()
        .any(|l| l.starts_with("external:") && l.contains(mapped) && l.contains("(UPnP"))
}

/// The connection lines `status --peers` prints under `peer`, trimmed.
fn connection_lines(status: &str, peer: &str) -> Vec<String> {
    status
        .lines()
        .skip_while(|line| !(line.starts_with("peer:") && line.contains(peer)))
        .skip(1)
        .take_while(|line| !line.starts_with("peer:"))
        .map(str::trim)
        .filter(|line| line.contains(" connection"))
        .map(str::to_owned)
        .collect()
}

/// The node's STUN client, against the introduction server's two STUN ports: the public
/// address behind any NAT, and which NATs keep one mapping for every destination.
#[test]
fn stun_tells_a_node_its_public_address_and_its_nats_mapping() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let eim = lab.home(Nat::Eim);
    let symmetric = lab.home(Nat::Symmetric);
    let plain = lab.home(Nat::Eim);
    let intro = lab.start_intro();
    let both = format!(
        "stun_servers = [\"{INTRO_ADDR}:{STUN_PORT}\", \"{INTRO_ADDR}:{STUN_OTHER_PORT}\"]"
    );
    let cases = [
        (
            lab.start_daemon_with(&eim.host, &intro.bootstrap, &both),
            &eim,
            "endpoint-independent mapping",
        ),
        (
            lab.start_daemon_with(&symmetric.host, &intro.bootstrap, &both),
            &symmetric,
            "endpoint-dependent (symmetric) NAT",
        ),
        // No servers configured: the bootstrap peer's host on port 3478, one server.
        (
            lab.start_daemon(&plain, &intro.bootstrap),
            &plain,
            "one server: mapping behaviour unknown",
        ),
    ];
    for (daemon, home, expected) in &cases {
        let line = daemon.wait_status(
            &format!("{:?}: a STUN address in status", home.kind),
            Duration::from_secs(20),
            |status| {
                let line = status.lines().find(|l| l.contains("(STUN via "))?;
                Some(line.to_owned())
            },
        );
        eprintln!("{:?}: {line}", home.kind);
        assert!(
            line.contains(&format!("/ip4/{}/udp/", home.wan)) && line.contains(expected),
            "{:?}: expected {} and {expected:?}: {line}",
            home.kind,
            home.wan
        );
    }
}

/// A home router that gets a new public address (an ISP renumbering it; a laptop that changes
/// networks sees the same): `status` shows the new one once the node has reconnected to the
/// introduction server, not after the STUN probe's ten-minute interval. Over TCP, whose
/// connection the renumbering breaks (the router forgets its mappings of the old address, and
/// the introduction server resets what then arrives from the new one); a QUIC connection
/// migrates instead, and identify tells the new address at its next round (five minutes).
#[test]
fn status_shows_a_routers_new_public_address_soon_after_it_changes() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    lab.transport = Transport::Tcp;
    let home = lab.home(Nat::Eim);
    let intro = lab.start_intro();
    let daemon = lab.start_daemon(&home, &intro.bootstrap);
    let stun_line = |wan: Ipv4Addr| {
        move |status: &str| {
            let line = status.lines().find(|l| l.contains("(STUN via "))?;
            line.contains(&format!("/ip4/{wan}/udp/"))
                .then(|| line.to_owned())
        }
    };
    let before = daemon.wait_status(
        "the router's address in status",
        Duration::from_secs(20),
        stun_line(home.wan),
    );
    eprintln!("before: {before}");

    // The new address joins as a secondary one and takes over when the old one goes.
    let [a, b, c, _] = home.wan.octets();
    let renumbered = Ipv4Addr::new(a, b, c, 2);
    home.router.must(
        "sh",
        &[
            "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/wan/promote_secondaries",
        ],
    );
    let prefix = |addr: Ipv4Addr| format!("{addr}/{INTERNET_PREFIX_LEN}");
    home.router
        .ip(&["addr", "add", &prefix(renumbered), "dev", "wan"]);
    home.router
        .ip(&["addr", "del", &prefix(home.wan), "dev", "wan"]);
    // Well inside the probe's interval (600 s): the old code showed the old address all along.
    let after = daemon.wait_status(
        "the router's new address in status",
        Duration::from_secs(90),
        stun_line(renumbered),
    );
    eprintln!("after: {after}");
    let log = daemon.proc.stderr();
    assert!(
        log.contains("the public address changed: asking STUN again"),
        "the log says nothing of the change:\n{}",
        tail(&log, 30)
    );
}

/// Every pairing of NAT kinds: A publishes behind one, B connects from behind another.
#[test]
fn connect_through_the_introduction_server_ends_direct_where_the_nats_allow_it() {
    let tools = Tools::find();
    use Nat::{AddressRestricted, Eim, FullCone, Symmetric};
    // (A's NAT, B's NAT, direct expected). RFC 4787: two endpoint-independent mappings can
    // punch through each other, and a forwarded port (full cone; address-restricted once the
    // other side sent to it) is reachable; a symmetric NAT defeats a port-restricted peer, and
    // two symmetric NATs stay relayed.
    let cases = [
        (Eim, Eim, true),
        (Eim, FullCone, true),
        (Eim, AddressRestricted, true),
        (Eim, Symmetric, false),
        (FullCone, FullCone, true),
        (FullCone, Symmetric, true),
        (AddressRestricted, AddressRestricted, true),
        (AddressRestricted, FullCone, true),
        (Symmetric, Eim, false),
        (Symmetric, Symmetric, false),
    ];
    // A few labs at a time: each runs an introduction server and two daemons.
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for batch in cases.chunks(3) {
        let results: Vec<_> = thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&(a, b, _)| {
                    let tools = &tools;
                    scope.spawn(move || connect_case(tools, a, b))
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        for (&(a, b, expect), result) in batch.iter().zip(results) {
            match result {
                Ok(connected) => {
                    table.push(format!(
                        "{a:?} <- {b:?}: A {}, {}",
                        connected.a_reachable, connected.output
                    ));
                    if connected.direct != expect {
                        failures.push(format!(
                            "{a:?} <- {b:?}: expected {}: {}",
                            if expect { "direct" } else { "relayed" },
                            connected.output
                        ));
                    }
                }
                Err(panic) => failures.push(format!(
                    "{a:?} <- {b:?}: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default()
                )),
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "{}\nall results:\n{}",
        failures.join("\n\n"),
        table.join("\n")
    );
}

#[test]
fn a_node_behind_nat_reserves_again_after_the_introduction_server_restarts() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let home = lab.home(Nat::Eim);
    let intro = lab.start_intro();
    let mut a = lab.start_daemon(&home, &intro.bootstrap);
    a.wait_joined();
    assert_eq!(
        a.wait_reachability("first start", Duration::from_secs(45)),
        "private"
    );

    // The introduction server goes away: the reservation with it.
    drop(intro);
    a.wait_status(
        "the relayed address to go with the relay",
        Duration::from_secs(20),
        |status| (!status.contains("relayed at: ")).then_some(()),
    );

    // Back on the same address with the same identity: A rejoins and reserves again.
    let _intro = lab.start_intro();
    assert_eq!(
        a.wait_reachability("after the restart", Duration::from_secs(60)),
        "private"
    );
}

/// A node started behind NAT takes a relay slot as soon as it meets the introduction server,
/// without waiting for AutoNAT's verdict (the first probe waits 3 s, and behind this NAT its
/// dial-back then times out): its status shows the relayed address, registered at the
/// rendezvous point, while its reachability is still unknown, and a node behind another NAT
/// connects to it through the relay right after. How soon, per NAT kind, is
/// `start_benchmark`'s figure.
#[test]
fn a_node_behind_nat_is_connectable_before_autonat_has_judged_it() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let a_home = lab.home(Nat::Eim);
    let b_home = lab.home(Nat::Symmetric);
    let intro = lab.start_intro();
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    b.wait_joined();

    let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
    let status = a.wait_status(
        "a relayed address, registered at the rendezvous point",
        JOIN_TIMEOUT,
        |status| {
            (status.contains("relayed at: ") && status.contains("(registered;"))
                .then(|| status.to_owned())
        },
    );
    assert_eq!(
        reachability(&status),
        Some("unknown"),
        "A took its relay slot only once AutoNAT had judged it:\n{status}\n{}",
        tail(&a.proc.stderr(), 60)
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("external:") && l.contains("(relay reservation)")),
        "the relayed address is not among A's external addresses:\n{status}"
    );

    a.publish_site("198.18.200.90");
    let (out, output) = b.connect_site(0);
    assert!(
        out.status.success() && output.contains("relayed"),
        "B behind a symmetric NAT -> A through the relay: {}\nA status:\n{}\nA log:\n{}",
        describe(&out),
        a.status(),
        tail(&a.proc.stderr(), 60)
    );
    eprintln!(
        "A (reachability {}) at {:?} after its start: {output}",
        reachability(&a.status()).unwrap_or_default(),
        a.started.elapsed()
    );
}

/// A firewall on a public host that drops new inbound P2P connections: AutoNAT's dial-backs
/// stay out while it is in place.
const P2P_FIREWALL: &str = "table inet firewall {
    chain input {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        meta l4proto { tcp, udp } th dport 4747 drop
    }
}
";

/// A node on a public address takes a relay slot while it is not judged yet, like any other,
/// and gives it back once AutoNAT has reached it at its own address: the relayed address goes
/// from its status and it serves the DHT. A firewall keeps AutoNAT out until the slot shows,
/// so that the node holds one first whatever the timing.
#[test]
fn a_node_found_reachable_directly_gives_its_relay_slot_back() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let (host, _) = lab.public_host();
    let firewall = lab.dir.write("firewall.nft", P2P_FIREWALL);
    host.must(&tools.nft, &["-f", &firewall.display().to_string()]);
    let intro = lab.start_intro();
    let mut a = lab.start_daemon_with(&host, &intro.bootstrap, "");
    a.wait_joined();
    a.wait_status(
        "a relay slot while AutoNAT cannot reach the node",
        JOIN_TIMEOUT,
        |status| status.contains("relayed at: ").then_some(()),
    );

    host.must(&tools.nft, &["delete", "table", "inet", "firewall"]);
    // If a probe failed behind the firewall, AutoNAT asks the introduction server (its only
    // server) again only after 90 s.
    a.wait_status(
        "public, serving the DHT, without a relay slot",
        Duration::from_secs(150),
        |status| {
            (reachability(status) == Some("public")
                && status.contains("dht mode:   server")
                && !status.contains("relayed at: ")
                && !status.contains("(relay reservation)"))
            .then_some(())
        },
    );
    assert!(
        a.proc.stderr().contains("giving the relay slot back"),
        "the log does not say the slot was given back:\n{}",
        tail(&a.proc.stderr(), 60)
    );
}

/// A node behind a router that offers UPnP IGD gets its port forwarded, knows it is reachable
/// (a DHT server, no relay slot), and a node behind a symmetric NAT, which cannot hole punch,
/// connects to it directly.
#[test]
fn a_node_behind_upnp_becomes_publicly_reachable() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let a_home = lab.home(Nat::Upnp);
    let b_home = lab.home(Nat::Symmetric);
    let intro = lab.start_intro();
    let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    a.wait_joined();
    b.wait_joined();

    let mapped = format!("/ip4/{}/tcp/{P2P_PORT}", a_home.wan);
    let status = a.wait_status(
        &format!("A behind UPnP to be a reachable DHT server with {mapped} mapped"),
        Duration::from_secs(45),
        |status| {
            (upnp_mapped(status, &mapped)
                && status.contains("reachable:  public ")
                && status.contains("dht mode:   server"))
            .then(|| status.to_owned())
        },
    );
    assert!(
        !status.contains("relayed at: "),
        "a reachable node took a relay slot:\n{status}"
    );

    a.publish_site("198.18.200.70");
    let (out, output) = b.connect_site(8);
    assert!(
        out.status.success()
            && output.contains(": direct connection to ")
            && !output.contains("relayed first"),
        "symmetric -> UPnP: {}\nA status:\n{}\nB status:\n{}",
        describe(&out),
        a.status(),
        b.status()
    );
    eprintln!("symmetric -> UPnP: {output}");
}

/// The router's UPnP service comes up after the node started (a laptop that boots before its
/// network, a router that reboots): the node searches again and gets its mapping.
#[test]
fn a_upnp_gateway_that_appears_later_is_found() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let home = lab.home(Nat::Upnp);
    // Not there yet when the node starts.
    drop(lab.services.pop());
    let intro = lab.start_intro();
    let mut a = lab.start_daemon(&home, &intro.bootstrap);
    a.proc
        .wait_until("find no UPnP gateway", Duration::from_secs(30), |_, err| {
            err.contains("no UPnP gateway")
        });
    lab.start_miniupnpd(&home.router, home.wan.octets()[2]);

    let mapped = format!("/ip4/{}/tcp/{P2P_PORT}", home.wan);
    a.wait_status(
        "a UPnP mapping after the gateway appeared",
        Duration::from_secs(60),
        |status| upnp_mapped(status, &mapped).then_some(()),
    );
}

/// Nodes meet at the introduction server's rendezvous point, and once it is gone, what was
/// built through it stands: the direct connection between two homes, and DHT lookups through
/// a public node that also holds the records.
#[test]
fn with_the_introduction_server_gone_direct_connections_and_lookups_keep_working() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let a_home = lab.home(Nat::Eim);
    let b_home = lab.home(Nat::Eim);
    let (public, _) = lab.public_host();
    let intro = lab.start_intro();
    let mut p = lab.start_daemon_with(&public, &intro.bootstrap, "");
    let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    for daemon in [&mut p, &mut a, &mut b] {
        daemon.wait_joined();
    }
    assert_eq!(
        p.wait_reachability("public node", Duration::from_secs(45)),
        "public"
    );
    assert_eq!(
        a.wait_reachability("home A", Duration::from_secs(45)),
        "private"
    );
    assert_eq!(
        b.wait_reachability("home B", Duration::from_secs(45)),
        "private"
    );

    // Every node registers at the rendezvous point and learns the others there.
    let deadline = Instant::now() + Duration::from_secs(60);
    for daemon in [&p, &a, &b] {
        daemon.wait_status(
            "registration at the rendezvous point and a peer learned there",
            deadline.saturating_duration_since(Instant::now()),
            |status| {
                let learned = status
                    .lines()
                    .find(|l| l.starts_with("rendezvous: ") && l.contains("(registered;"))?
                    .split("; ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<usize>()
                    .ok()?;
                (learned >= 1).then_some(())
            },
        );
    }

    // A publishes two names; both are held by the public node as well as the introduction
    // server. B connects to A's site: relayed, then hole punched.
    for (name, address) in [("site", "198.18.200.60"), ("later", "198.18.200.61")] {
        let out = a.cli(&["publish", name, "A", address]);
        assert!(out.status.success(), "publish {name}: {}", describe(&out));
    }
    a.wait_held_by("site.p2p", 2);
    a.wait_held_by("later.p2p", 2);
    let (out, connected) = b.connect_site(8);
    assert!(
        out.status.success() && connected.contains(": direct connection to "),
        "B -> A before the introduction server goes: {}\nA status:\n{}\nB status:\n{}",
        describe(&out),
        a.status(),
        b.status()
    );

    drop(intro);

    // The direct connection stays: `connect` finds it open, and no relayed one is left.
    let (out, again) = b.connect_site(1);
    assert!(
        out.status.success() && again.contains(": direct connection to "),
        "B -> A after the introduction server went: {}\nB status:\n{}",
        describe(&out),
        b.status()
    );
    // A name B never asked for, found through the public node.
    let case = "without the introduction server";
    b.wait_resolves(case, "later.p2p", "198.18.200.61", String::new);
    // A name published after the introduction server went: stored on the public node.
    let out = a.cli(&["publish", "fresh", "A", "198.18.200.62"]);
    assert!(out.status.success(), "publish fresh: {}", describe(&out));
    a.wait_held("fresh.p2p");
    b.wait_resolves(case, "fresh.p2p", "198.18.200.62", || {
        format!("A status:\n{}", a.status())
    });
}

/// A NAT kind as the benchmarks' environment names it.
fn nat_kind(name: &str) -> Nat {
    match name {
        "eim" => Nat::Eim,
        "full" => Nat::FullCone,
        "addr" => Nat::AddressRestricted,
        "sym" => Nat::Symmetric,
        "upnp" => Nat::Upnp,
        other => panic!("unknown NAT kind {other:?} (eim, full, addr, sym, upnp)"),
    }
}

/// Benchmark, not a test: repeated `connect` trials per NAT pairing; prints the direct
/// connection rate and the time from the first dial to a direct connection.
///
/// Run: `TRIALS=5 PAIRS=eim-eim,eim-addr,sym-sym TRANSPORTS=quic,tcp cargo test --release \
/// --test lab nat::traversal_benchmark -- --ignored --nocapture` (pairs: publisher-connector, each
/// one of eim, full, addr, sym, upnp; default: the ten of the matrix test; transports: quic,
/// tcp, both, the daemons listening on that only; default quic,tcp). The introduction server
/// always offers both.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn traversal_benchmark() {
    let tools = Tools::find();
    let trials: usize = env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3);
    let pairs: Vec<(Nat, Nat)> = env::var("PAIRS")
        .unwrap_or_else(|_| {
            "eim-eim,eim-full,eim-addr,eim-sym,full-full,full-sym,addr-addr,addr-full,sym-eim,sym-sym"
                .into()
        })
        .split(',')
        .map(|pair| {
            let (a, b) = pair.split_once('-').expect("PAIRS: publisher-connector,...");
            (nat_kind(a), nat_kind(b))
        })
        .collect();
    let transports: Vec<Transport> = env::var("TRANSPORTS")
        .unwrap_or_else(|_| "quic,tcp".into())
        .split(',')
        .map(|t| match t {
            "quic" => Transport::Quic,
            "tcp" => Transport::Tcp,
            "both" => Transport::Both,
            other => panic!("unknown transport {other:?} (quic, tcp, both)"),
        })
        .collect();
    let mut rows = Vec::new();
    for (a, b) in pairs
        .iter()
        .flat_map(|p| transports.iter().map(move |t| (p, *t)))
    {
        let ((a, b), transport) = (*a, b);
        let (mut direct, mut punched, mut failed) = (0, 0, 0);
        let mut times = Vec::new();
        let mut over = BTreeSet::new();
        for _ in 0..trials {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                connect_case_over(&tools, a, b, transport)
            })) {
                Ok(c) => {
                    if c.direct {
                        direct += 1;
                        punched += usize::from(c.punched);
                        if let Some(t) = c.output.split(" over ").nth(1) {
                            over.insert(t.split_whitespace().next().unwrap_or("").to_owned());
                        }
                        if let Some(ms) = c
                            .output
                            .rsplit(" in ")
                            .next()
                            .and_then(|t| t.trim_end_matches(" ms").parse::<u64>().ok())
                        {
                            times.push(ms);
                        }
                    }
                }
                Err(_) => failed += 1,
            }
        }
        times.sort_unstable();
        let pct = |q: f64| {
            times
                .get(((times.len() as f64 - 1.0) * q).round() as usize)
                .map_or("-".to_owned(), |t| format!("{t} ms"))
        };
        let over: Vec<String> = over.into_iter().collect();
        rows.push(format!(
            "| {a:?} | {b:?} | {transport:?} | {direct}/{trials} | {punched} | {failed} | {} | {} | {} |",
            pct(0.5),
            pct(0.95),
            over.join(", ")
        ));
        eprintln!("{}", rows.last().unwrap());
    }
    println!();
    println!(
        "{trials} trials per pairing; a trial is a fresh lab (introduction server, two homes)."
    );
    println!(
        "| publisher's NAT | connector's NAT | transports | direct | of which hole punched | set-up failures | time to direct p50 | p95 | direct over |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---|");
    for row in rows {
        println!("{row}");
    }
}

/// How long [`start_benchmark`] waits for AutoNAT's first verdict on the node it started.
const VERDICT_WAIT: Duration = Duration::from_secs(45);

/// How soon after its start a node behind NAT could be connected to, in one fresh lab; every
/// time is counted from just before its process started.
#[derive(Debug)]
struct StartFigures {
    /// The first status with a relayed address: peers can connect through the relay.
    reserved: Duration,
    /// AutoNAT's reachability in that status.
    reachable_then: String,
    /// AutoNAT's first verdict (reachability no longer unknown), if it came within the trial.
    verdict: Option<Duration>,
    /// When a node behind another NAT had connected to it with `p2pdns connect`, asked as
    /// soon as the relayed address showed and the node's name was held by the network.
    connected: Duration,
}

/// Starts A behind `kind`, with B (behind a plain home router) up and joined, and reads A's
/// status every [`POLL`] until B has connected to A and AutoNAT has judged A (or
/// `VERDICT_WAIT` passed). A publishes its name as soon as it has a peer.
fn start_to_connectable(tools: &Tools, kind: Nat) -> StartFigures {
    let case = format!("started behind {kind:?}");
    let mut lab = Lab::new(tools);
    let a_home = lab.home(kind);
    let b_home = lab.home(Nat::Eim);
    let intro = lab.start_intro();
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    b.wait_joined();
    let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
    let (mut published, mut reserved, mut verdict, mut connected) = (false, None, None, None);
    while connected.is_none() || (verdict.is_none() && a.started.elapsed() < VERDICT_WAIT) {
        let status = a.status();
        let at = a.started.elapsed();
        let reachable = reachability(&status).unwrap_or_default().to_owned();
        if verdict.is_none() && !reachable.is_empty() && reachable != "unknown" {
            verdict = Some(at);
        }
        if reserved.is_none() && status.contains("relayed at: ") {
            reserved = Some((at, reachable));
        }
        if !published && connected_peers(&status) > 0 {
            let out = a.cli(&["publish", "site", "A", "198.18.200.80"]);
            assert!(out.status.success(), "{case}: publish: {}", describe(&out));
            published = true;
        }
        if connected.is_none() && published && reserved.is_some() {
            a.wait_held("site.p2p");
            let (out, _) = b.connect_site(0);
            assert!(
                out.status.success(),
                "{case}: connect: {}\nA status:\n{}\nA log:\n{}",
                describe(&out),
                a.status(),
                tail(&a.proc.stderr(), 60)
            );
            connected = Some(a.started.elapsed());
        }
        assert!(
            a.started.elapsed() < VERDICT_WAIT + JOIN_TIMEOUT,
            "{case}: no relayed address or no connection after {:?}:\n{status}\n{}",
            a.started.elapsed(),
            tail(&a.proc.stderr(), 60)
        );
        thread::sleep(POLL);
    }
    let (reserved, reachable_then) = reserved.expect("the loop ends once connected");
    StartFigures {
        reserved,
        reachable_then,
        verdict,
        connected: connected.expect("the loop ends once connected"),
    }
}

/// Benchmark, not a test: how soon a node behind each kind of NAT can be connected to after
/// it starts, side by side with when AutoNAT first judged it. Prints, per NAT kind, the
/// median and range of: the time to a relay reservation (and AutoNAT's verdict when it was
/// first seen), to AutoNAT's first verdict, and to another node's `connect` having succeeded.
///
/// Run: `TRIALS=3 NATS=eim,full,addr,sym cargo test --test lab nat::start_benchmark -- \
/// --ignored --nocapture` (NAT kinds as in `traversal_benchmark`; default: the four above).
/// The connecting node is behind a plain home router and up before the measured one starts.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn start_benchmark() {
    let tools = Tools::find();
    let trials: usize = env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3);
    let kinds: Vec<Nat> = env::var("NATS")
        .unwrap_or_else(|_| "eim,full,addr,sym".into())
        .split(',')
        .map(nat_kind)
        .collect();
    let spread = |mut times: Vec<Duration>| {
        times.sort_unstable();
        match (times.first(), times.get(times.len() / 2), times.last()) {
            (Some(min), Some(median), Some(max)) => format!(
                "{:.1} s ({:.1}-{:.1})",
                median.as_secs_f64(),
                min.as_secs_f64(),
                max.as_secs_f64()
            ),
            _ => "-".to_owned(),
        }
    };
    let mut rows = Vec::new();
    for kind in kinds {
        let mut figures = Vec::new();
        let mut failed = 0;
        for _ in 0..trials {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                start_to_connectable(&tools, kind)
            })) {
                Ok(f) => figures.push(f),
                Err(_) => failed += 1,
            }
        }
        let then: BTreeSet<&str> = figures.iter().map(|f| f.reachable_then.as_str()).collect();
        let unjudged = figures.iter().filter(|f| f.verdict.is_none()).count();
        rows.push(format!(
            "| {kind:?} | {} | {} | {}{} | {} | {failed} |",
            spread(figures.iter().map(|f| f.reserved).collect()),
            then.into_iter().collect::<Vec<_>>().join(", "),
            spread(figures.iter().filter_map(|f| f.verdict).collect()),
            match unjudged {
                0 => String::new(),
                n => format!(", {n} not judged within {VERDICT_WAIT:?}"),
            },
            spread(figures.iter().map(|f| f.connected).collect()),
        ));
        eprintln!("{}", rows.last().expect("just pushed"));
    }
    println!();
    println!(
        "{trials} trials per NAT kind; a trial is a fresh lab (introduction server, two homes)."
    );
    println!(
        "| NAT | relay reservation, median (range) | reachability then | AutoNAT's first verdict | connected by another node | failed trials |"
    );
    println!("|---|---:|---|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}
