//! What hostile DNS clients cannot do to the real binary (issue 15, kinds 1 and 5): exhaust its
//! file descriptors so that its upstream is blamed or its accept loop spins, start it under a
//! low soft descriptor limit that it keeps, or make its log grow faster than a bounded rate
//! with junk, from inside or outside `dns.allow` (raw packets with source port 0 need root).
//!
//! Each test starts its own daemon with `--dns-listen 127.0.0.1:0` (the port read back from
//! its log) and, where it forwards, a small UDP upstream in a thread of the test.

use std::{
    fs,
    io::Write,
    net::{SocketAddr, TcpStream, UdpSocket},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use socket2::{Domain, Protocol, Socket, Type};

use crate::process::{Proc, TempDir, require_root, run_bounded, tool};

const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");
/// Longest wait for the daemon to be ready or to say something.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Junk messages of each kind in a flood.
const FLOOD: usize = 2000;
/// Log lines the whole flood may add: a burst and a summary per kind of event, with room.
const FLOOD_LINES: usize = 40;

/// A `p2pdns run` started through `sh` after `ulimit` (as a login shell would limit it).
struct Daemon {
    proc: Proc,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Daemon {
    /// Starts a daemon under the shell limit `ulimit` (such as `-n 64`) with `config` added to
    /// a config without P2P node, and waits until it is ready.
    fn start(ulimit: &str, config: &str) -> Self {
        let dir = TempDir::new("dns-limits");
        let data = dir.subdir("data");
        let file = dir.write(
            "p2pdns.toml",
            &format!("data_dir = {data:?}\n[p2p]\nenabled = false\n{config}\n"),
        );
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit {ulimit} && exec {BIN} --config {} run --dns-listen 127.0.0.1:0",
                file.display()
            ))
            .env("HOME", dir.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        let mut proc = Proc::spawn("p2pdns", command, dir.path());
        proc.wait_until("log `ready`", START_TIMEOUT, |_, log| {
            log.lines().any(|line| line.trim_end().ends_with(" ready"))
        });
        let log = proc.stderr();
        let addr = log
            .lines()
            .find_map(|line| line.split("DNS listening on UDP and TCP addr=").nth(1))
            .and_then(|addr| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("no DNS address logged:\n{log}"));
        Self {
            proc,
            addr,
            _dir: dir,
        }
    }

    /// dig's reply to `args`, asked from the loopback address `from`.
    fn dig(&self, from: &str, args: &[&str]) -> String {
        let mut command = Command::new(tool("dig", "bind9-dnsutils"));
        command
            .args(["+time=3", "+tries=1", "-b", from, "@127.0.0.1", "-p"])
            .arg(self.addr.port().to_string())
            .args(args);
        let output = run_bounded(command, START_TIMEOUT);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The daemon's open file descriptors numbered below `limit` (it may have inherited
    /// some above, which take no place below its limit).
    fn open_below(&self, limit: usize) -> usize {
        let dir = fs::read_dir(format!("/proc/{}/fd", self.proc.pid())).unwrap();
        dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|&fd| fd < limit)
            .count()
    }

    /// CPU time the daemon used so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.proc.pid())).unwrap();
        // Fields after the command name, which is in parentheses: utime and stime are the
        // 12th and 13th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

/// A UDP upstream in a thread: every query gets `192.0.2.1` (its question and ID echoed).
fn upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            let query = &buf[..len];
            let question_end = 12 + query[12..].iter().position(|&b| b == 0).unwrap_or(0) + 5;
            let mut reply = query[..2].to_vec();
            reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..question_end.min(len)]);
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
            let _ = socket.send_to(&reply, from);
        }
    });
    addr
}

/// With its descriptors exhausted by idle TCP clients (its caps set above what it can open),
/// the daemon answers forwarded names SERVFAIL for want of sockets without blaming its
/// upstream; more clients waiting to be accepted do not make its accept loop spin; and it
/// forwards again once the clients leave.
#[test]
fn exhausted_descriptors_never_rest_the_upstream_nor_spin_the_accept_loop() {
    const LIMIT: usize = 64;
    let upstream = upstream();
    let daemon = Daemon::start(
        &format!("-n {LIMIT}"),
        &format!(
            "[dns]\ntcp_max_connections = 1000\ntcp_max_per_client = 1000\n\
             [upstream]\nservers = [\"{upstream}\"]\n"
        ),
    );
    let first = daemon.dig("127.0.0.1", &["www.example.test", "A"]);
    assert!(first.contains("192.0.2.1"), "{first}");
    // Connections until every descriptor below the limit is taken, and some more waiting.
    let mut idle = Vec::new();
    while daemon.open_below(LIMIT) < LIMIT {
        assert!(
            idle.len() < LIMIT,
            "{LIMIT} connections did not exhaust the descriptors"
        );
        idle.push(TcpStream::connect(daemon.addr).expect("the kernel completes the handshake"));
        thread::sleep(Duration::from_millis(20));
    }
    for i in 0..6 {
        let failed = daemon.dig("127.0.0.1", &[&format!("n{i}.example.test"), "A"]);
        assert!(failed.contains("SERVFAIL"), "{failed}");
        assert!(failed.contains("out of sockets"), "{failed}");
    }
    // More clients wait in the listen queue: each accept fails with EMFILE.
    idle.extend((0..5).map(|_| TcpStream::connect(daemon.addr).expect("queued by the kernel")));
    let before = daemon.cpu_ticks();
    thread::sleep(Duration::from_secs(2));
    let ticks = daemon.cpu_ticks() - before;
    // 2 s of a whole core is about 200 ticks.
    assert!(
        ticks < 50,
        "{ticks} ticks of CPU in 2 s while descriptors were exhausted"
    );
    drop(idle);
    thread::sleep(Duration::from_millis(500));
    let after = daemon.dig("127.0.0.1", &["again.example.test", "A"]);
    assert!(after.contains("192.0.2.1"), "{after}");
    let log = daemon.proc.stderr();
    assert!(
        !log.contains("upstream is not answering"),
        "a local shortage rested the upstream:\n{log}"
    );
}

/// Started under a soft descriptor limit of 256, the daemon raises it to the hard limit.
#[test]
fn the_soft_descriptor_limit_is_raised_at_start() {
    let daemon = Daemon::start("-Sn 256", "");
    let limits = fs::read_to_string(format!("/proc/{}/limits", daemon.proc.pid())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(open_files[0], open_files[1], "{limits}");
    assert_ne!(open_files[0], "256", "{limits}");
    let log = daemon.proc.stderr();
    assert!(log.contains("open file limit raised"), "{log}");
}

/// Floods of junk from a client outside `dns.allow` and from source port 0 (a raw socket),
/// over UDP and TCP, add a bounded number of lines to the log, and the daemon answers after.
#[test]
fn a_flood_of_junk_adds_a_bounded_number_of_log_lines() {
    require_root("sending UDP from source port 0 through a raw socket");
    let daemon = Daemon::start("-n 4096", "[dns]\nallow = [\"127.0.0.2/32\"]\n");
    let lines_before = daemon.proc.stderr().lines().count();
    let mut rng = StdRng::seed_from_u64(15);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..FLOOD {
        udp.send_to(&junk(&mut rng, i), daemon.addr).unwrap();
    }
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
    for i in 0..FLOOD {
        let payload = junk(&mut rng, i);
        let mut datagram = Vec::with_capacity(8 + payload.len());
        datagram.extend_from_slice(&0u16.to_be_bytes());
        datagram.extend_from_slice(&daemon.addr.port().to_be_bytes());
        datagram.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(&payload);
        raw.send_to(&datagram, &daemon.addr.into()).unwrap();
    }
    for i in 0..200 {
        if let Ok(mut tcp) = TcpStream::connect(daemon.addr) {
            let message = junk(&mut rng, i);
            let _ = tcp.write_all(&u16::try_from(message.len()).unwrap().to_be_bytes());
            let _ = tcp.write_all(&message);
        }
    }
    // Answered from inside dns.allow, after every datagram of the flood was read.
    let deadline = Instant::now() + START_TIMEOUT;
    let mut reply = daemon.dig("127.0.0.2", &["localhost", "A"]);
    while !reply.contains("127.0.0.1") && Instant::now() < deadline {
        reply = daemon.dig("127.0.0.2", &["localhost", "A"]);
    }
    assert!(reply.contains("127.0.0.1"), "{reply}");
    let log = daemon.proc.stderr();
    let added = log.lines().count() - lines_before;
    assert!(
        added <= FLOOD_LINES,
        "{added} log lines for {} junk messages:\n{log}",
        2 * FLOOD + 200
    );
}

/// Junk of several shapes, by `i`: too short for a header, random bytes, a response (QR=1),
/// a header announcing questions that are not there, a question cut short.
fn junk(rng: &mut StdRng, i: usize) -> Vec<u8> {
    let id = rng.random::<u16>().to_be_bytes();
    match i % 5 {
        0 => vec![0; rng.random_range(0..12)],
        1 => (0..rng.random_range(12..200))
            .map(|_| rng.random())
            .collect(),
        2 => [&id[..], &[0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]].concat(),
        3 => [&id[..], &[1, 0, 0, 5, 0, 0, 0, 0, 0, 0]].concat(),
        _ => [&id[..], &[1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x']].concat(),
    }
}
