//! Black-box system tests of the real `p2pdns` binary: what only the binary shows. Hostile
//! packets against its sockets, signals and exit codes, configuration errors, the CLI, the
//! service manager protocol, forwarding loops named in its log, introduction servers. The DNS
//! rules themselves (forwarding, cache, EDNS, opcodes, truncation, TCP, `.p2p` answers, access
//! control, failover) are tested in process, in the integration binary's `dns` module.
//!
//! A test that needs an upstream starts its own authoritative server (`nsd`, serving
//! `example.test.` on a loopback port), and each starts its own daemon, then asks with the real
//! client `dig`, or with raw packets from std sockets for what no client sends. Everything
//! listens on 127.0.0.1 on ports picked free at run time, so the tests run in parallel. Every
//! wait has a deadline, and every child process is killed and its temporary directory removed
//! when the test ends, also when it panics.
//!
//! The tools are required, never optional: a missing one fails the test and names the Debian
//! package to install (`bind9-dnsutils`, `nsd`).

use std::{
    fs,
    io::{self, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use crate::process::{Proc, TempDir, require_root, run_bounded, tool};
use rand::{Rng, SeedableRng, rngs::StdRng};

const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");

/// Longest wait for nsd or the daemon to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a process told to stop (or expected to fail) to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest run of one client command; dig also carries its own shorter timeouts.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a reply to a raw query.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a packet that must stay unanswered is watched after a later query was answered.
const QUIET_WINDOW: Duration = Duration::from_millis(300);
/// Between two looks at something being polled.
const POLL: Duration = Duration::from_millis(20);

/// The P2P node on loopback only, on ports the system picks, and no mDNS (which would send
/// multicast on the host's network).
const P2P_LOOPBACK: &str = r#"
[p2p]
listen = ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"]
mdns = false
"#;

/// Local `.p2p` names every daemon here serves.
const LOCAL_RECORDS: &str = r#"
[naming.records]
"site.p2p" = ["A 192.0.2.10", "AAAA 2001:db8::10", "TXT \"hello world\""]
"www.site.p2p" = ["CNAME site.p2p."]
"#;

// ---------------------------------------------------------------------------------------------
// Tools, ports and signals
// ---------------------------------------------------------------------------------------------

fn dig_bin() -> PathBuf {
    tool("dig", "bind9-dnsutils")
}

fn nsd_bin() -> PathBuf {
    tool("nsd", "nsd")
}

fn kdig_bin() -> PathBuf {
    tool("kdig", "knot-dnsutils")
}

/// Runs kdig (Knot's client, a second implementation beside dig) against 127.0.0.1:`port`
/// and returns what it printed.
fn kdig(port: u16, args: &[&str]) -> String {
    let mut command = Command::new(kdig_bin());
    command
        .arg("@127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .arg("+time=4")
        .arg("+retry=0")
        .args(args);
    let output = run_bounded(command, TOOL_TIMEOUT);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A port free for both UDP and TCP on 127.0.0.1 right now: the kernel picks it for a UDP
/// socket, the same port must also be bindable for TCP, and both are closed again for the
/// server under test to take.
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP socket on port 0");
        let port = udp
            .local_addr()
            .expect("local address of a bound socket")
            .port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("found no port free for both UDP and TCP on 127.0.0.1 in 100 tries");
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Is nothing bound to `port` on 127.0.0.1 any more, UDP or TCP?
fn port_is_free(port: u16) -> bool {
    UdpSocket::bind(localhost(port)).is_ok() && TcpListener::bind(localhost(port)).is_ok()
}

/// Sends `signal` (a name such as TERM) to a process through the shell's `kill` built-in, as
/// std can only send SIGKILL.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {pid}"))
        .status()
        .expect("run sh to send a signal");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// nsd: the upstream
// ---------------------------------------------------------------------------------------------

const ZONE: &str = "$ORIGIN example.test.\n\
                    $TTL 300\n\
                    @    IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60\n\
                    @    IN NS  ns1.example.test.\n\
                    ns1  IN A   192.0.2.53\n\
                    www  IN A   192.0.2.1\n";

/// An nsd serving example.test. on 127.0.0.1; stopped on drop.
struct Nsd {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl Nsd {
    fn start() -> Self {
        let nsd = nsd_bin();
        let dir = TempDir::new("nsd");
        let port = free_port();
        dir.write("example.test.zone", ZONE);
        let d = dir.path().display();
        let conf = dir.write(
            "nsd.conf",
            &format!(
                "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  \
                 zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  \
                 xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
                 logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n\
                 remote-control:\n  control-enable: no\n\
                 zone:\n  name: example.test\n  zonefile: example.test.zone\n"
            ),
        );
        let mut command = Command::new(nsd);
        command.arg("-c").arg(&conf).arg("-d");
        let mut nsd = Self {
            proc: Proc::spawn("nsd", command, dir.path()),
            port,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = nsd.proc.try_exit() {
                panic!(
                    "nsd exited ({status}) before serving; stderr:\n{}\nlog:\n{}",
                    nsd.proc.stderr(),
                    nsd.log()
                );
            }
            let out = dig_raw(
                port,
                &["+time=1", "+tries=1", "+short", "example.test", "SOA"],
            );
            if out.contains("hostmaster.example.test.") {
                return nsd;
            }
            assert!(
                Instant::now() < deadline,
                "nsd did not answer within {START_TIMEOUT:?}; log:\n{}",
                nsd.log()
            );
            thread::sleep(POLL);
        }
    }

    fn addr(&self) -> SocketAddr {
        localhost(self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("nsd.log")).unwrap_or_default()
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        if self.proc.try_exit().is_none() {
            // Polite first, so nsd takes its worker processes down with it; then firm.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -TERM {}", self.proc.pid()))
                .status();
            let deadline = Instant::now() + EXIT_TIMEOUT;
            while self.proc.try_exit().is_none() && Instant::now() < deadline {
                thread::sleep(POLL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// A `p2pdns run` process with its own HOME, data dir and config file; killed on drop.
struct Daemon {
    proc: Proc,
    port: u16,
    _dir: TempDir,
}

impl Daemon {
    /// Starts a daemon on a free port forwarding to `upstreams`, with the local names and
    /// `extra` appended to its config file, and waits until it logs `ready`.
    fn start(upstreams: &[SocketAddr], extra: &str) -> Self {
        let mut daemon = Self::spawn(free_port(), upstreams, extra, &[]);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon without waiting for it. `upstreams` empty means no `--upstream` flag;
    /// the config's resolv_conf then names an empty file, never the host's resolvers.
    fn spawn(port: u16, upstreams: &[SocketAddr], extra: &str, args: &[&str]) -> Self {
        let dir = TempDir::new("daemon");
        let config = dir.write("p2pdns.toml", &daemon_config(&dir, extra));
        let mut command = run_command(&dir, &config, port);
        for upstream in upstreams {
            command.arg("--upstream").arg(upstream.to_string());
        }
        command.args(args);
        Self {
            proc: Proc::spawn("p2pdns", command, dir.path()),
            port,
            _dir: dir,
        }
    }

    fn wait_ready(&mut self) {
        self.proc
            .wait_until("log `ready`", START_TIMEOUT, |_, log| {
                log.lines().any(|line| line.trim_end().ends_with(" ready"))
            });
    }

    fn addr(&self) -> SocketAddr {
        localhost(self.port)
    }

    /// Runs `p2pdns ARGS` against this daemon's data directory, as a user would.
    fn cli(&self, args: &[&str]) -> Output {
        cli_command(&self._dir)
            .args(args)
            .output()
            .expect("run the p2pdns CLI")
    }

    /// [`Daemon::cli`] that must succeed: its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "p2pdns {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits for the process to exit, fails the test unless it exited with `code` (`case` names
    /// the case in the message), and returns its log.
    fn exit_code(&mut self, code: i32, case: &str) -> String {
        let status = self.proc.wait_exit(EXIT_TIMEOUT);
        let log = self.log();
        assert_eq!(
            status.code(),
            Some(code),
            "{case}: {status}; stderr:\n{log}"
        );
        log
    }

    /// The QUIC multiaddr the daemon logged for --bootstrap.
    fn p2p_addr(&self) -> String {
        let log = self.log();
        log.lines()
            .filter(|l| l.contains("P2P address"))
            .filter_map(|l| l.split("addr=").nth(1))
            .find(|a| a.contains("/quic-v1/"))
            .unwrap_or_else(|| panic!("no P2P address logged:\n{log}"))
            .trim()
            .to_owned()
    }

    fn log(&self) -> String {
        self.proc.stderr()
    }

    fn dig(&self, args: &[&str]) -> DigReply {
        dig(self.port, args)
    }

    /// Asks until an answer record carries `rdata` (a name published elsewhere travelling
    /// through the DHT), and returns that reply; fails after START_TIMEOUT.
    fn dig_until(&self, args: &[&str], rdata: &str) -> DigReply {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let reply = self.dig(args);
            if reply.answer.iter().any(|rr| rr.rdata == rdata) {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} never answered {rdata}: {}",
                reply.text
            );
            thread::sleep(POLL);
        }
    }
}

/// A `p2pdns` command that cannot see the user's configuration or data.
fn p2pdns_command(dir: &TempDir) -> Command {
    let home = dir.path().join("home");
    fs::create_dir_all(&home).expect("create the temporary HOME");
    let mut command = Command::new(BIN);
    command
        .env("HOME", &home)
        .env("NO_COLOR", "1")
        .env_remove("P2PDNS_CONFIG")
        .env_remove("P2PDNS_DATA_DIR")
        .env_remove("RUST_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME");
    command
}

/// A `p2pdns` command on `dir`'s data directory, as the CLI talks to a daemon running on it.
fn cli_command(dir: &TempDir) -> Command {
    let mut command = p2pdns_command(dir);
    command.arg("--data-dir").arg(dir.path().join("data"));
    command
}

/// `p2pdns run` with `config` on `dir`'s data directory, answering DNS on 127.0.0.1:`port`.
fn run_command(dir: &TempDir, config: &Path, port: u16) -> Command {
    let mut command = cli_command(dir);
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .arg("--dns-listen")
        .arg(localhost(port).to_string());
    command
}

/// The value after `label` (such as `peer id:`) in what `p2pdns status` printed.
pub(crate) fn status_field(status: &str, label: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in status:\n{status}"))
        .trim()
        .to_owned()
}

fn daemon_config(dir: &TempDir, extra: &str) -> String {
    let resolv_conf = dir.write("resolv.conf", "");
    // A test that brings its own [p2p] section (to bootstrap, say) replaces the default one.
    let p2p = if extra.contains("[p2p]") {
        ""
    } else {
        P2P_LOOPBACK
    };
    format!(
        "[upstream]\nresolv_conf = {:?}\n{p2p}\n{LOCAL_RECORDS}\n{extra}\n",
        resolv_conf.display().to_string()
    )
}

// ---------------------------------------------------------------------------------------------
// dig
// ---------------------------------------------------------------------------------------------

/// Runs dig against 127.0.0.1:`port` and returns what it printed.
fn dig_raw(port: u16, args: &[&str]) -> String {
    let mut command = Command::new(dig_bin());
    command
        .arg("@127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(args);
    let output = run_bounded(command, TOOL_TIMEOUT);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs dig with sections and comments shown, and parses the last response it printed.
fn dig(port: u16, args: &[&str]) -> DigReply {
    let mut all = vec!["+time=4", "+tries=1", "+noall", "+comments", "+answer"];
    all.extend_from_slice(args);
    let text = dig_raw(port, &all);
    DigReply::parse(&text)
        .unwrap_or_else(|| panic!("dig {} printed no response:\n{text}", all.join(" ")))
}

/// One resource record as dig prints it.
#[derive(Debug, Clone)]
struct Rr {
    ttl: u32,
    rtype: String,
    rdata: String,
}

impl Rr {
    /// Parses `NAME TTL CLASS TYPE RDATA...`.
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let _name = words.next()?;
        let ttl = words.next()?.parse().ok()?;
        let _class = words.next()?;
        let rtype = words.next()?.to_owned();
        let rdata = words.collect::<Vec<_>>().join(" ");
        Some(Self { ttl, rtype, rdata })
    }
}

/// A response as printed by `dig +comments`: its status, header flags and answer section.
#[derive(Debug, Default)]
struct DigReply {
    text: String,
    status: String,
    flags: Vec<String>,
    answer: Vec<Rr>,
}

impl DigReply {
    fn parse(text: &str) -> Option<Self> {
        let start = text.rfind(";; ->>HEADER<<-")?;
        let mut reply = Self {
            text: text.to_owned(),
            ..Self::default()
        };
        let mut in_answer = false;
        for line in text[start..].lines() {
            if let Some(rest) = line.strip_prefix(";; ->>HEADER<<- ") {
                reply.status = rest
                    .split(", ")
                    .find_map(|part| part.strip_prefix("status: "))?
                    .to_owned();
            } else if let Some(rest) = line.strip_prefix(";; flags:") {
                let (flags, _counts) = rest.split_once(';')?;
                reply.flags = flags.split_whitespace().map(str::to_owned).collect();
            } else if line.starts_with(";; ANSWER SECTION:") {
                in_answer = true;
            } else if line.trim().is_empty() || line.starts_with(";;") {
                in_answer = false;
            } else if in_answer {
                reply.answer.extend(Rr::parse(line));
            }
        }
        Some(reply)
    }

    fn answers_of_type(&self, rtype: &str) -> Vec<&Rr> {
        self.answer.iter().filter(|r| r.rtype == rtype).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw DNS messages
// ---------------------------------------------------------------------------------------------

const TYPE_A: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_RD: u16 = 0x0100;
const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;

/// A message whose header has `id`, `flags`, QDCOUNT `qdcount` and ANCOUNT `ancount`, whatever
/// the body holds, and whose body is an A question (class IN) for each of `names`.
fn wire_message(id: u16, flags: u16, qdcount: u16, ancount: u16, names: &[&str]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(64);
    for field in [id, flags, qdcount, ancount, 0, 0] {
        packet.extend_from_slice(&field.to_be_bytes());
    }
    for name in names {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            packet.push(u8::try_from(label.len()).expect("test labels are short"));
            packet.extend_from_slice(label.as_bytes());
        }
        packet.push(0);
        packet.extend_from_slice(&TYPE_A.to_be_bytes());
        packet.extend_from_slice(&1u16.to_be_bytes());
    }
    packet
}

/// A plain recursive query for `name`, type A.
fn wire_query(id: u16, name: &str) -> Vec<u8> {
    wire_message(id, FLAG_RD, 1, 0, &[name])
}

/// The header fields of a reply the tests look at.
#[derive(Debug, Clone, Copy)]
struct WireReply {
    id: u16,
    qr: bool,
    rcode: u8,
    ancount: u16,
}

impl WireReply {
    fn parse(packet: &[u8]) -> Option<Self> {
        let word = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
        (packet.len() >= 12).then(|| Self {
            id: word(0),
            qr: word(2) & FLAG_QR != 0,
            rcode: packet[3] & 0x0f,
            ancount: word(6),
        })
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Hostile packets
// ---------------------------------------------------------------------------------------------

/// What must come back for a hostile packet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Rcode(u8),
    NoReply,
    /// Anything or nothing; only the daemon's survival is checked.
    Whatever,
}

/// Deterministic noise (a seeded generator), so a failure can be replayed.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

/// The hostile packets, each with a label and what must come back. A packet's first two bytes
/// are the message ID a reply to it carries.
fn hostile_packets() -> Vec<(&'static str, Vec<u8>, Expect)> {
    const FORMERR: Expect = Expect::Rcode(RCODE_FORMERR);
    let mut cases = Vec::new();

    let mut noise = garbage(96, 0x5eed_1234_abcd_ef01);
    noise[..2].copy_from_slice(&0xeeeeu16.to_be_bytes());
    cases.push(("random garbage", noise, Expect::Whatever));

    let five = vec![0x05, 0x05, 0x01, 0x00, 0x00];
    cases.push(("5-byte packet", five, Expect::NoReply));

    let two = wire_message(0x0202, FLAG_RD, 2, 0, &["www.example.test", "site.p2p"]);
    cases.push(("two questions", two, FORMERR));

    let claims_two = wire_message(0x0203, FLAG_RD, 2, 0, &["site.p2p"]);
    cases.push((
        "header claims two questions, body has one",
        claims_two,
        FORMERR,
    ));

    let response = wire_message(0x0404, FLAG_QR | FLAG_RD, 1, 0, &["site.p2p"]);
    cases.push(("a response (QR=1)", response, Expect::NoReply));

    let mut cut = wire_message(0x0606, FLAG_RD, 1, 0, &[]);
    cut.extend_from_slice(&[10, b'a', b'b', b'c']);
    cases.push(("truncated name", cut, FORMERR));

    let mut pointer_loop = wire_message(0x0707, FLAG_RD, 1, 0, &[]);
    // A compression pointer to its own offset (12).
    pointer_loop.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    cases.push(("compression pointer loop", pointer_loop, FORMERR));

    let no_question = wire_message(0x0808, FLAG_RD, 0, 0, &[]);
    cases.push(("no question (QDCOUNT=0)", no_question, FORMERR));

    let phantom_answers = wire_message(0x0909, FLAG_RD, 1, 5, &["site.p2p"]);
    cases.push((
        "header claims answers that are not there",
        phantom_answers,
        FORMERR,
    ));

    cases
}

#[test]
fn hostile_udp_packets_get_formerr_or_silence_and_the_daemon_keeps_serving() {
    let nsd = Nsd::start();
    let daemon = Daemon::start(&[nsd.addr()], "");
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a client socket");
    socket
        .connect(daemon.addr())
        .expect("connect to the daemon");
    socket
        .set_read_timeout(Some(POLL))
        .expect("set a read timeout");
    let mut buf = vec![0u8; 65_535];

    for (index, (label, packet, expect)) in hostile_packets().into_iter().enumerate() {
        let hostile_id = u16::from_be_bytes([packet[0], packet[1]]);
        // After each hostile packet, a normal query: its answer proves the daemon survived, and
        // once it is in, a reply to the hostile packet would have had time to arrive too.
        let probe_id = 0xa000 + u16::try_from(index).expect("few cases");
        socket.send(&packet).expect("send the hostile packet");
        socket
            .send(&wire_query(probe_id, "site.p2p"))
            .expect("send the probe");
        let mut replies: Vec<WireReply> = Vec::new();
        let mut probe_answered: Option<Instant> = None;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let finished = match expect {
                Expect::Rcode(_) => {
                    probe_answered.is_some() && replies.iter().any(|r| r.id == hostile_id)
                }
                Expect::NoReply | Expect::Whatever => {
                    probe_answered.is_some_and(|at| at.elapsed() >= QUIET_WINDOW)
                }
            };
            if finished {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: no reply within {REPLY_TIMEOUT:?} (probe answered: {}); replies: \
                 {replies:?}\nlog:\n{}",
                probe_answered.is_some(),
                daemon.log()
            );
            match socket.recv(&mut buf) {
                Ok(len) => {
                    if let Some(reply) = WireReply::parse(&buf[..len]) {
                        if reply.id == probe_id {
                            assert_eq!(reply.rcode, RCODE_NOERROR, "{label}: probe {reply:?}");
                            assert_eq!(reply.ancount, 1, "{label}: probe {reply:?}");
                            probe_answered = Some(Instant::now());
                        }
                        replies.push(reply);
                    }
                }
                Err(error) if is_timeout(&error) => {}
                Err(error) => panic!("{label}: receiving: {error}"),
            }
        }
        let hostile_replies: Vec<&WireReply> =
            replies.iter().filter(|r| r.id == hostile_id).collect();
        match expect {
            Expect::Rcode(rcode) => {
                assert_eq!(hostile_replies.len(), 1, "{label}: {replies:?}");
                assert!(hostile_replies[0].qr, "{label}: {replies:?}");
                assert_eq!(
                    hostile_replies[0].rcode, rcode,
                    "{label}: wrong RCODE: {replies:?}"
                );
            }
            Expect::NoReply => {
                assert!(
                    hostile_replies.is_empty(),
                    "{label}: got a reply: {replies:?}"
                );
            }
            Expect::Whatever => {}
        }
    }

    let reply = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(reply.status, "NOERROR", "{}", reply.text);
    assert_eq!(
        reply.answers_of_type("A")[0].rdata,
        "192.0.2.1",
        "{}",
        reply.text
    );
}

#[test]
fn overlong_tcp_length_prefix_and_stalled_connections_do_not_hurt_the_daemon() {
    let daemon = Daemon::start(&[], "");

    // Announces 65535 bytes, sends three, hangs up.
    let mut liar = TcpStream::connect(daemon.addr()).expect("connect over TCP");
    liar.write_all(&[0xff, 0xff, 1, 2, 3])
        .expect("write a partial message");
    drop(liar);
    // Announces a zero-length message and hangs up.
    let mut empty = TcpStream::connect(daemon.addr()).expect("connect over TCP");
    empty.write_all(&[0, 0]).expect("write an empty length");
    drop(empty);
    // Sends half a length prefix and stays connected while others are served.
    let mut stalled = TcpStream::connect(daemon.addr()).expect("connect over TCP");
    stalled.write_all(&[0x00]).expect("write half a prefix");

    for transport in ["+tcp", "+notcp"] {
        let reply = daemon.dig(&["site.p2p", "A", transport]);
        assert_eq!(reply.status, "NOERROR", "{transport}:\n{}", reply.text);
        assert_eq!(
            reply.answers_of_type("A")[0].rdata,
            "192.0.2.10",
            "{}",
            reply.text
        );
    }
    drop(stalled);
}

// ---------------------------------------------------------------------------------------------
// 2. Lifecycle
// ---------------------------------------------------------------------------------------------

/// A second real client: kdig sends three queries on one kept-open TCP connection (RFC 7766
/// pipelining, a forwarded name between local ones) and gets every answer, and its EDNS
/// version 1 query gets BADVERS (RFC 6891 section 6.1.3).
#[test]
fn kdig_pipelines_over_tcp_and_gets_badvers_for_edns_version_1() {
    let nsd = Nsd::start();
    let daemon = Daemon::start(&[nsd.addr()], "");
    let text = kdig(
        daemon.port,
        &[
            "+tcp",
            "+keepopen",
            "www.example.test",
            "A",
            "site.p2p",
            "A",
            "ns1.example.test",
            "A",
        ],
    );
    assert_eq!(text.matches("status: NOERROR").count(), 3, "kdig:\n{text}");
    for answer in ["192.0.2.1", "192.0.2.10", "192.0.2.53"] {
        assert!(
            text.contains(answer),
            "kdig answer {answer} missing:\n{text}"
        );
    }
    let text = kdig(daemon.port, &["+edns=1", "www.example.test", "A"]);
    assert!(text.contains("status: BADVERS"), "kdig:\n{text}");
}

#[test]
fn sigterm_and_sigint_exit_0_after_a_logged_shutdown_and_free_the_port() {
    for signal in ["TERM", "INT"] {
        let mut daemon = Daemon::start(&[], "");
        let reply = daemon.dig(&["site.p2p", "A"]);
        assert_eq!(reply.status, "NOERROR", "{}", reply.text);

        send_signal(daemon.proc.pid(), signal);
        let log = daemon.exit_code(0, &format!("SIG{signal}"));
        assert!(log.contains("shutting down"), "SIG{signal}: stderr:\n{log}");
        assert!(
            log.lines().any(|l| l.trim_end().ends_with(" stopped")),
            "SIG{signal}: stderr:\n{log}"
        );
        assert!(
            port_is_free(daemon.port),
            "SIG{signal}: port still bound after exit"
        );
    }
}

#[test]
fn second_daemon_on_the_same_port_exits_1_naming_the_address_in_use() {
    let first = Daemon::start(&[], "");
    let mut second = Daemon::spawn(first.port, &[], "", &[]);

    let log = second.exit_code(1, "the second daemon");
    assert!(
        log.contains(&format!("127.0.0.1:{}", first.port)),
        "stderr:\n{log}"
    );
    assert!(log.contains("already in use"), "stderr:\n{log}");

    let reply = first.dig(&["site.p2p", "A"]);
    assert_eq!(
        reply.status, "NOERROR",
        "the first daemon was hurt:\n{}",
        reply.text
    );
}

/// A bootstrap peer that does not answer leaves the node alone in the network: the log says
/// so once, naming the address, and the daemon keeps serving.
#[test]
fn an_unreachable_bootstrap_peer_is_named_in_the_log() {
    // A port nothing listens on (TCP connect is refused at once).
    let closed = free_port();
    let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    let extra = format!(
        "[p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\n\
         bootstrap = [\"/ip4/127.0.0.1/tcp/{closed}/p2p/{peer}\"]\n"
    );
    let mut daemon = Daemon::start(&[], &extra);
    daemon.proc.wait_until(
        "log `cannot reach the bootstrap peer`",
        START_TIMEOUT,
        |_, log| log.contains("cannot reach the bootstrap peer"),
    );
    let log = daemon.log();
    let warning = log
        .lines()
        .find(|l| l.contains("cannot reach the bootstrap peer"))
        .expect("found above");
    assert!(
        warning.contains("WARN") && warning.contains(&format!("/tcp/{closed}/p2p/{peer}")),
        "{warning}"
    );
    assert!(!warning.contains("Custom {"), "no Debug dump: {warning}");
    assert_eq!(daemon.dig(&["site.p2p", "A"]).status, "NOERROR");
}

/// A P2P port another process holds stops the daemon (exit 1, naming the address), and leaves
/// no control socket behind that would make the CLI believe a daemon runs there.
#[test]
fn a_p2p_port_in_use_exits_1_and_leaves_no_control_socket() {
    let holder = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a TCP port");
    let port = holder.local_addr().expect("bound address").port();
    let extra = format!("[p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nmdns = false\n");
    let mut daemon = Daemon::spawn(free_port(), &[], &extra, &[]);
    let log = daemon.exit_code(1, "a daemon whose P2P port is taken");
    let error = log
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(error.contains(&format!("/tcp/{port}")), "{error}");
    assert!(!error.contains(": :"), "no empty cause: {error}");
    assert!(
        !daemon._dir.path().join("control.sock").exists(),
        "a control socket was left behind"
    );
    let out = daemon.cli(&["status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no p2pdns daemon is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A second daemon configured with the first one's TCP port does not share it silently
/// (libp2p's listeners set SO_REUSEPORT): it exits 1 naming the address, and the first one
/// keeps serving.
#[test]
fn a_second_daemon_on_the_same_p2p_port_exits_1() {
    let port = free_port();
    let extra = format!("[p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nmdns = false\n");
    let first = Daemon::start(&[], &extra);
    let mut second = Daemon::spawn(free_port(), &[], &extra, &[]);
    let log = second.exit_code(1, "a second daemon on the first one's P2P port");
    assert!(
        log.lines().any(|l| l.starts_with("error: ")
            && l.contains(&format!("/tcp/{port}"))
            && l.contains("in use")),
        "{log}"
    );
    assert_eq!(first.dig(&["site.p2p", "A"]).status, "NOERROR");
    let status = first.cli_ok(&["status"]);
    assert!(status.contains(&format!("/tcp/{port}/p2p/")), "{status}");
}

#[test]
fn unknown_config_key_exits_78_naming_the_key() {
    let extra = "[dns]\nlisen = [\"127.0.0.1:5353\"]\n";
    let mut daemon = Daemon::spawn(free_port(), &[], extra, &[]);
    let log = daemon.exit_code(78, "run");
    assert!(
        log.contains("lisen"),
        "the message does not name the key:\n{log}"
    );

    let mut check = Daemon::spawn(free_port(), &[], extra, &["--check-config"]);
    let log = check.exit_code(78, "--check-config");
    assert!(log.contains("lisen"), "--check-config:\n{log}");
}

#[test]
fn default_config_passes_check_config() {
    let dir = TempDir::new("default-config");
    let mut command = p2pdns_command(&dir);
    command.args(["config", "default"]);
    let output = run_bounded(command, TOOL_TIMEOUT);
    assert!(output.status.success(), "config default: {}", output.status);
    let text = String::from_utf8(output.stdout).expect("the default config is UTF-8");
    assert!(
        text.contains("[dns]") && text.contains("[upstream]"),
        "{text}"
    );
    let path = dir.write("default.toml", &text);

    let mut command = cli_command(&dir);
    command
        .args(["run", "--check-config", "--config"])
        .arg(&path);
    let output = run_bounded(command, TOOL_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// 3. No forwarding loop
// ---------------------------------------------------------------------------------------------

#[test]
fn forwarding_loop_through_a_relay_is_detected_by_a_probe() {
    // A relay on another loopback port hands datagrams to the daemon and back, as a port
    // forward or another forwarder would. The upstream address is not one of the daemon's own:
    // only the probe query it sends to an upstream that keeps failing, seen coming back, can
    // tell.
    let port = free_port();
    let daemon_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let relay = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind the relay");
    relay
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a read timeout");
    let relay_addr = relay.local_addr().expect("relay address");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay_stop = stop.clone();
    let relay_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 65_535];
        while !relay_stop.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((len, client)) = relay.recv_from(&mut buf) else {
                continue;
            };
            let hop = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a relay hop");
            hop.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("set a read timeout");
            if hop.send_to(&buf[..len], daemon_addr).is_err() {
                continue;
            }
            let mut reply = [0u8; 65_535];
            if let Ok(n) = hop.recv(&mut reply) {
                let _ = relay.send_to(&reply[..n], client);
            }
        }
    });

    let mut daemon = Daemon::spawn(port, &[relay_addr], "", &[]);
    daemon.wait_ready();
    for name in ["www.example.test", "host1.example.test"] {
        // The answer comes when the question's budget (upstream.query_timeout_ms, 4 s) ends:
        // tries listen for late answers until then. dig waits longer than that.
        let reply = daemon.dig(&[name, "A", "+time=10"]);
        assert_eq!(reply.status, "SERVFAIL", "{}", reply.text);
        assert!(reply.answer.is_empty(), "{}", reply.text);
    }
    let local = daemon.dig(&["site.p2p", "A"]);
    assert_eq!(local.status, "NOERROR", "{}", local.text);
    let log = daemon.log();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    relay_thread.join().expect("relay thread ends");
    assert!(log.contains("forwarding loop"), "loop not reported:\n{log}");
}

#[test]
fn its_own_address_as_upstream_plain_or_ipv4_mapped_is_named_in_the_log() {
    // Configured (here with --upstream), it is refused at start with the key named (exit
    // code 78): a forwarding loop to itself. One that comes from resolv.conf is skipped at
    // run time; what the daemon answers then is tested in process (integration dns module).
    for form in ["127.0.0.1", "[::ffff:127.0.0.1]"] {
        let port = free_port();
        let own: SocketAddr = format!("{form}:{port}").parse().expect("an address");
        let mut daemon = Daemon::spawn(port, &[own], "", &[]);
        let status = daemon.proc.wait_exit(START_TIMEOUT);
        let log = daemon.log();
        assert_eq!(status.code(), Some(78), "{own}:\n{log}");
        assert!(
            log.contains("invalid config value upstream.servers[0]") && log.contains("own address"),
            "{own}: own address not recognized:\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. P2P names through the CLI, privilege, introduction servers, the service manager
// ---------------------------------------------------------------------------------------------

#[test]
fn a_name_published_with_the_cli_resolves_with_dig_through_another_daemon() {
    let publisher = Daemon::start(&[], "");
    let bootstrap = publisher.p2p_addr();
    let resolver = Daemon::start(
        &[],
        &format!(
            "[p2p]\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\", \"/ip4/127.0.0.1/tcp/0\"]\n\
             mdns = false\nbootstrap = [{bootstrap:?}]\n"
        ),
    );

    let stdout = publisher.cli_ok(&["publish", "blog", "A", "192.0.2.55"]);
    assert!(stdout.contains("published blog.p2p."), "{stdout}");
    let stdout = publisher.cli_ok(&[
        "publish",
        "www.blog.p2p",
        "TXT",
        "\"hello from p2p\"",
        "\"second\"",
        "--ttl",
        "60",
    ]);
    // The CLI prints records as a zone file would: each TXT string quoted, as dig shows it.
    assert!(stdout.contains("\"hello from p2p\" \"second\""), "{stdout}");

    // dig through the other daemon's DNS port, until the record has travelled.
    let reply = resolver.dig_until(&["blog.p2p", "A"], "192.0.2.55");
    assert_eq!(reply.status, "NOERROR", "{}", reply.text);
    assert!(reply.flags.iter().any(|f| f == "aa"), "{}", reply.text);
    let txt = resolver.dig(&["www.blog.p2p", "TXT"]);
    assert!(
        txt.answer
            .iter()
            .any(|rr| rr.rdata == "\"hello from p2p\" \"second\"" && rr.ttl <= 60),
        "{}",
        txt.text
    );

    // `resolve` names the owner: the publisher's key.
    let status = publisher.cli_ok(&["status"]);
    let key_name = status_field(&status, "key name:");
    let resolved = resolver.cli_ok(&["resolve", "blog.p2p"]);
    assert!(resolved.contains("192.0.2.55"), "{resolved}");
    assert!(
        resolved.contains(&format!("owner:    {key_name}")),
        "{resolved}"
    );

    // The publisher counts the other node holding its record.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let names = publisher.cli_ok(&["names"]);
        if names.contains("held by 1 other node") {
            break;
        }
        assert!(Instant::now() < deadline, "replica never counted:\n{names}");
        thread::sleep(POLL);
    }

    // `status --peers` lists the resolver as a connected peer in the routing table, with its
    // address; plain `status` does not list peers.
    let resolver_id = status_field(&resolver.cli_ok(&["status"]), "peer id:");
    let peers = publisher.cli_ok(&["status", "--peers"]);
    assert!(
        peers.contains(&format!(
            "peer:       {resolver_id} (connected, routing table)"
        )),
        "{peers}"
    );
    assert!(peers.contains("/ip4/127.0.0.1/"), "{peers}");
    assert!(!status.contains("peer: "), "{status}");
}

#[test]
fn cli_commands_say_clearly_when_no_daemon_runs() {
    let dir = TempDir::new("nodaemon");
    let out = cli_command(&dir)
        .arg("status")
        .output()
        .expect("run the p2pdns CLI");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no p2pdns daemon is running"), "{stderr}");
}

#[test]
fn binding_port_53_without_privilege_names_the_address_and_the_remedies() {
    // Only root can run the binary as another user (nobody) that lacks the privilege.
    require_root("running the daemon as an unprivileged user");
    let setpriv = tool("setpriv", "util-linux");
    // Ports below net.ipv4.ip_unprivileged_port_start need privilege; that is what is tested.
    let start: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .expect("read ip_unprivileged_port_start")
        .trim()
        .parse()
        .expect("a port number");
    assert!(
        start > 53,
        "this machine lets anyone bind port 53; the test needs the usual setting"
    );
    // A copy of the binary that the unprivileged user can run, wherever the repository lives.
    let dir = TempDir::new("unprivileged");
    let bin = dir.path().join("p2pdns");
    fs::copy(BIN, &bin).expect("copy the binary");
    let mut perms = fs::metadata(dir.path()).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(dir.path(), perms).expect("chmod the temp dir");
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["run", "--dns-listen", "127.0.0.1:53", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("HOME", dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    for part in [
        "127.0.0.1:53",
        "permission denied",
        "root",
        "cap_net_bind_service",
        "--dns-listen",
    ] {
        assert!(error.contains(part), "{part:?} missing from: {error}");
    }
}

/// A running `p2pdns intro`.
struct Intro {
    proc: Proc,
    _dir: TempDir,
}

impl Intro {
    fn start(args: &[&str]) -> Self {
        let dir = TempDir::new("intro");
        let mut command = cli_command(&dir);
        command.arg("intro").args(args);
        // Tests run side by side: no fixed STUN port unless one is asked for.
        if !args.contains(&"--stun-listen") {
            command.args(["--stun-listen", "127.0.0.1:0"]);
        }
        let proc = Proc::spawn("p2pdns-intro", command, dir.path());
        Self { proc, _dir: dir }
    }

    /// The addresses it logged for `--bootstrap`, once it has logged them.
    fn bootstrap_addrs(&mut self) -> Vec<String> {
        let addrs = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|l| l.contains("nodes join with --bootstrap"))
                .filter_map(|l| l.split("addr=").nth(1))
                .map(|a| a.trim().to_owned())
                .collect()
        };
        self.proc
            .wait_until("log a bootstrap address", START_TIMEOUT, |_, log| {
                !addrs(log).is_empty()
            });
        addrs(&self.proc.stderr())
    }
}

#[test]
fn two_daemons_that_know_only_an_introduction_server_resolve_each_others_names() {
    let mut intro = Intro::start(&["--p2p-listen", "/ip4/127.0.0.1/tcp/0"]);
    let addrs = intro.bootstrap_addrs();
    assert!(
        addrs
            .iter()
            .all(|a| a.starts_with("/ip4/127.0.0.1/tcp/") && a.contains("/p2p/")),
        "{addrs:?}"
    );
    // No public address given: the server says so.
    let log = intro.proc.stderr();
    assert!(log.contains("no public address"), "{log}");
    let p2p = format!(
        "[p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\nbootstrap = [{:?}]\n",
        addrs[0]
    );
    let publisher = Daemon::start(&[], &p2p);
    let resolver = Daemon::start(&[], &p2p);
    publisher.cli_ok(&["publish", "intro-site", "A", "192.0.2.77"]);

    resolver.dig_until(&["intro-site.p2p", "A"], "192.0.2.77");

    // `connect` finds the owner's peer (its key) and reaches it; on loopback, directly.
    let publisher_id = status_field(&publisher.cli_ok(&["status"]), "peer id:");
    let stdout = resolver.cli_ok(&["connect", "intro-site", "--wait", "5"]);
    assert!(
        stdout.starts_with(&format!(
            "intro-site.p2p.: direct connection to {publisher_id} "
        )),
        "{stdout}"
    );
    let out = resolver.cli(&["connect", "nobody-here"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nobody-here.p2p. was not found"),
        "{stderr}"
    );
    // The introduction server stops cleanly on SIGTERM.
    send_signal(intro.proc.pid(), "TERM");
    let status = intro.proc.wait_exit(START_TIMEOUT);
    assert!(status.success(), "{status}: {}", intro.proc.stderr());
}

#[test]
fn an_introduction_server_prints_its_external_address_for_bootstrap() {
    let mut intro = Intro::start(&[
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--external-addr",
        "/ip4/198.51.100.7/tcp/4747",
    ]);
    let addrs = intro.bootstrap_addrs();
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    assert!(
        addrs[0].starts_with("/ip4/198.51.100.7/tcp/4747/p2p/12D3Koo"),
        "{addrs:?}"
    );
}

#[test]
fn the_daemon_tells_the_service_manager_when_it_is_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(START_TIMEOUT))
        .expect("set a read timeout");
    let config = dir.write("p2pdns.toml", &daemon_config(&dir, ""));
    let port = free_port();
    let mut command = run_command(&dir, &config, port);
    command.env("NOTIFY_SOCKET", &socket_path);
    let mut proc = Proc::spawn("p2pdns", command, dir.path());
    let next = || {
        let mut buf = [0; 512];
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification: {e}; stderr:\n{}", proc.stderr()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=answering DNS on "),
        "{ready}"
    );
    // READY=1 comes after the sockets are bound: the DNS port answers at once.
    let reply = dig(port, &["site.p2p", "A"]);
    assert_eq!(reply.status, "NOERROR", "{}", reply.text);

    send_signal(proc.pid(), "HUP");
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    send_signal(proc.pid(), "TERM");
    assert_eq!(next(), "STOPPING=1");
    let status = proc.wait_exit(START_TIMEOUT);
    assert!(status.success(), "{status}");
}

#[test]
fn reload_applies_new_upstream_servers_and_names_what_needs_a_restart() {
    let first = Nsd::start();
    let second = Nsd::start();
    let dir = TempDir::new("reload");
    let config_text = |nsd: &Nsd, extra: &str| {
        format!(
            "[upstream]\nservers = [\"{}\"]\n[p2p]\nenabled = false\n{extra}",
            nsd.addr()
        )
    };
    let config = dir.write("p2pdns.toml", &config_text(&first, ""));
    let port = free_port();
    let command = run_command(&dir, &config, port);
    let mut proc = Proc::spawn("p2pdns", command, dir.path());
    proc.wait_for(" ready", START_TIMEOUT);
    assert_eq!(dig(port, &["www.example.test", "A"]).status, "NOERROR");

    // A broken file changes nothing.
    fs::write(&config, "[upstream\nservers = ").unwrap();
    send_signal(proc.pid(), "HUP");
    proc.wait_for(
        "the configuration file has errors; keeping the running configuration",
        START_TIMEOUT,
    );
    assert_eq!(dig(port, &["www.example.test", "A"]).status, "NOERROR");

    // Another upstream and another cache size: the upstream applies at once, the cache size
    // is named for a restart.
    fs::write(
        &config,
        config_text(&second, "[cache]\nmax_entries = 777\n"),
    )
    .unwrap();
    send_signal(proc.pid(), "HUP");
    proc.wait_for(
        "changed settings need a restart to apply sections=cache",
        START_TIMEOUT,
    );
    proc.wait_for("reloaded: cache emptied, upstreams re-read", START_TIMEOUT);
    let upstreams = || {
        let out = cli_command(&dir)
            .arg("status")
            .output()
            .expect("run p2pdns status");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("upstreams:").map(|u| u.trim().to_owned()))
            .unwrap_or_default()
    };
    assert_eq!(upstreams(), second.addr().to_string());
    assert_ne!(first.addr(), second.addr());
    let reply = dig(port, &["www.example.test", "A"]);
    assert_eq!(reply.status, "NOERROR", "{}", reply.text);
    drop(first);
}

#[test]
fn an_introduction_server_answers_stun_binding_requests() {
    let port = free_port();
    let mut intro = Intro::start(&[
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--stun-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    intro.bootstrap_addrs();
    assert!(
        intro.proc.stderr().contains("STUN listening (UDP)"),
        "{}",
        intro.proc.stderr()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mapped, local) = runtime.block_on(async {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mapped = p2pdns::stun::binding(&socket, localhost(port), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("no STUN answer: {e}"));
        (mapped, socket.local_addr().unwrap())
    });
    assert_eq!(
        mapped, local,
        "the mapped address is the client's own (no NAT here)"
    );
}
