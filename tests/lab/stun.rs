//! The STUN server ([`p2pdns::stun::serve`]) on loopback, asked by our client, by two
//! independent ones and by hostile senders.
//!
//! The independent clients are the `stun` program of the Debian package stun-client (an RFC
//! 3489 client: no magic cookie, a CHANGE-REQUEST in every request) and a few lines of Python 3
//! with nothing but its socket module (an RFC 8489 client reading XOR-MAPPED-ADDRESS). Both are
//! required: a missing one fails the test and names the package to install. Every socket is on
//! loopback, every wait has a deadline, and each test takes a second or two.

use std::{
    collections::HashSet,
    io::Read,
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use p2pdns::stun::{self, Mapping, StunError};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{net::UdpSocket, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::process::tool;

/// Bound on every wait for an answer.
const WAIT: Duration = Duration::from_secs(3);
/// Silence after which no more replies are expected.
const QUIET: Duration = Duration::from_millis(300);

/// A server on a loopback port of its own; stopped when dropped.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(ip: &str) -> Self {
        let socket = UdpSocket::bind((ip, 0))
            .await
            .expect("bind the STUN server");
        let addr = socket.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(stun::serve(socket, stop.clone()));
        Server { addr, stop, task }
    }

    /// Stops the server and checks that it ends promptly, which also proves it was still
    /// running (it never ends on its own).
    async fn stop(self) {
        assert!(
            !self.task.is_finished(),
            "the STUN server loop ended by itself"
        );
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops when cancelled")
            .expect("the server task does not panic");
    }
}

/// Whether this host has an IPv6 loopback address; prints why IPv6 is skipped if not.
fn has_ipv6_loopback() -> bool {
    match std::net::UdpSocket::bind("[::1]:0") {
        Ok(_) => true,
        Err(error) => {
            println!("note: no ::1 on this host ({error}), IPv6 part skipped");
            false
        }
    }
}

/// Loopback addresses to test on.
fn loopbacks() -> Vec<&'static str> {
    let mut ips = vec!["127.0.0.1"];
    if has_ipv6_loopback() {
        ips.push("::1");
    }
    ips
}

#[tokio::test]
async fn our_client_gets_its_own_address() {
    for ip in loopbacks() {
        let first = Server::start(ip).await;
        let second = Server::start(ip).await;
        let wildcard = if ip.contains(':') { "::" } else { "0.0.0.0" };
        for bind_ip in [ip, wildcard] {
            let socket = UdpSocket::bind((bind_ip, 0)).await.unwrap();
            let port = socket.local_addr().unwrap().port();
            let own = SocketAddr::new(ip.parse().unwrap(), port);
            assert_eq!(stun::binding(&socket, first.addr, WAIT).await.unwrap(), own);
            assert_eq!(
                stun::binding(&socket, second.addr, WAIT).await.unwrap(),
                own
            );
            // A socket on the wildcard address is not natted either: the servers see the
            // address its packets leave from.
            let servers = [first.addr, second.addr];
            assert_eq!(
                stun::mapping_behaviour(&socket, &servers, WAIT)
                    .await
                    .unwrap(),
                Mapping::NotNatted,
                "socket on {bind_ip}"
            );
        }
        first.stop().await;
        second.stop().await;
    }
}

#[tokio::test]
async fn client_times_out_on_a_silent_port() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    let error = stun::binding(
        &socket,
        silent.local_addr().unwrap(),
        Duration::from_millis(800),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, StunError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    // Our request was sent, and retransmitted once (after 500 ms) within the 800 ms.
    let mut buf = [0u8; 1500];
    let mut ids = HashSet::new();
    let mut count = 0;
    while let Ok(Ok((len, _))) = tokio::time::timeout(QUIET, silent.recv_from(&mut buf)).await {
        ids.insert(buf[4..20.min(len)].to_vec());
        count += 1;
    }
    assert_eq!((count, ids.len()), (2, 1));
}

// ---------------------------------------------------------------------------------------------
// Independent clients
// ---------------------------------------------------------------------------------------------

/// Runs a program to its end, killing it after `limit`; returns its exit success and output.
async fn run(mut command: Command, limit: Duration) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client program");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut output = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut output)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut output)
            .unwrap();
        (status.is_some_and(|s| s.success()), output)
    })
    .await
    .unwrap()
}

/// A port free on 127.0.0.1 just now, for a client that needs to be told its source port.
fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

#[tokio::test]
async fn stun_client_program_gets_its_address() {
    let stun = tool("stun", "stun-client");
    let server = Server::start("127.0.0.1").await;
    // Test 1 of RFC 3489 is one plain Binding request (with a CHANGE-REQUEST asking for no
    // change); without a test number the program also runs tests that need a server with a
    // second address. -p sets its source port.
    let port = free_port();
    let mut command = Command::new(&stun);
    command
        .arg(server.addr.to_string())
        .arg("1")
        .arg("-v")
        .args(["-p", &port.to_string()]);
    let (_, output) = run(command, WAIT).await;
    println!("{output}");
    // Its verbose dump of the response, e.g. "MappedAddress = 127.0.0.1:34567".
    let expected = format!("MappedAddress = 127.0.0.1:{port}");
    assert!(
        output.lines().any(|line| line.trim() == expected),
        "`stun` did not report {expected}:\n{output}"
    );
    server.stop().await;
}

/// An RFC 8489 Binding exchange in Python: it sends a request with the magic cookie and a
/// random transaction id, checks the response's header, decodes XOR-MAPPED-ADDRESS, and
/// prints that address then its own socket's address.
const PYTHON_CLIENT: &str = r#"
import os, socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((host, 0))
s.settimeout(2)
cookie = 0x2112A442
tid = os.urandom(12)
s.sendto(struct.pack("!HHI", 0x0001, 0, cookie) + tid, (host, port))
data, source = s.recvfrom(2048)
kind, length, got_cookie = struct.unpack("!HHI", data[:8])
assert kind == 0x0101, hex(kind)
assert got_cookie == cookie and data[8:20] == tid
assert length == len(data) - 20
pos, mapped, software = 20, None, None
while pos < len(data):
    atype, alen = struct.unpack("!HH", data[pos:pos + 4])
    value = data[pos + 4:pos + 4 + alen]
    if atype == 0x0020:
        fam = socket.AF_INET if value[1] == 1 else socket.AF_INET6
        xport = struct.unpack("!H", value[2:4])[0] ^ (cookie >> 16)
        key = struct.pack("!I", cookie) + tid
        ip = bytes(a ^ b for a, b in zip(value[4:], key))
        mapped = (socket.inet_ntop(fam, ip), xport)
    elif atype == 0x8022:
        software = value.decode()
    pos += 4 + (alen + 3) // 4 * 4
print("software", software)
print("mapped", mapped[0], mapped[1])
print("local", s.getsockname()[0], s.getsockname()[1])
"#;

#[tokio::test]
async fn python_client_gets_its_address() {
    let python = tool("python3", "python3");
    for ip in loopbacks() {
        let server = Server::start(ip).await;
        let mut command = Command::new(&python);
        command
            .args(["-c", PYTHON_CLIENT, ip])
            .arg(server.addr.port().to_string());
        let (success, output) = run(command, WAIT).await;
        println!("{output}");
        assert!(success, "the Python STUN client failed:\n{output}");
        let field = |name: &str| {
            output
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} line in:\n{output}"))
        };
        assert_eq!(field("mapped "), field("local "));
        assert!(field("mapped ").starts_with(ip));
        assert!(field("software ").starts_with("p2pdns "));
        server.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

/// A valid Binding request (cookie, random transaction id, no attributes).
fn binding_request(rng: &mut StdRng) -> Vec<u8> {
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend((0..12).map(|_| rng.random::<u8>()));
    request
}

/// Replies arriving on `socket` until it has been quiet for [`QUIET`].
async fn count_replies(socket: &UdpSocket) -> usize {
    let mut buf = [0u8; 1500];
    let mut count = 0;
    while let Ok(received) = tokio::time::timeout(QUIET, socket.recv_from(&mut buf)).await {
        received.unwrap();
        count += 1;
    }
    count
}

#[tokio::test]
async fn junk_is_ignored_and_floods_are_rate_limited() {
    let server = Server::start("127.0.0.1").await;
    let mut rng = StdRng::seed_from_u64(3478);

    // Junk: random bytes, truncated or stretched requests, and responses and indications,
    // which must never be answered (a STUN server answering them could loop with another).
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut sent = 0;
    for i in 0..1000 {
        let mut datagram = vec![0u8; rng.random_range(0..200)];
        rng.fill(&mut datagram[..]);
        match i % 4 {
            0 => {}
            1 => datagram = binding_request(&mut rng)[..rng.random_range(0..20)].to_vec(),
            2 => {
                datagram = binding_request(&mut rng);
                datagram.extend_from_slice(&[0x80, 0x22, 0x00, 0x10]);
                datagram[3] = 4;
            }
            _ => {
                datagram = binding_request(&mut rng);
                let kind: u16 = [0x0101, 0x0111, 0x0011][i % 3];
                datagram[..2].copy_from_slice(&kind.to_be_bytes());
            }
        }
        junk.send_to(&datagram, server.addr).await.unwrap();
        sent += 1;
    }
    assert_eq!(
        count_replies(&junk).await,
        0,
        "replies to {sent} junk datagrams"
    );

    // A flood of valid requests from one address: 20 per second, after a burst of 20.
    let flooder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    for _ in 0..100 {
        flooder
            .send_to(&binding_request(&mut rng), server.addr)
            .await
            .unwrap();
    }
    let replies = count_replies(&flooder).await;
    let allowed = 20 + (20.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        (20..=allowed).contains(&replies),
        "{replies} replies to 100 requests, expected 20..={allowed}"
    );

    // Another address is not held back by it, and the flooded address is answered again once
    // its budget refills (one reply per 50 ms).
    let other = UdpSocket::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2 (Linux routes all of 127.0.0.0/8 to loopback)");
    assert_eq!(
        stun::binding(&other, server.addr, WAIT).await.unwrap(),
        other.local_addr().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        stun::binding(&again, server.addr, WAIT).await.unwrap(),
        again.local_addr().unwrap()
    );
    server.stop().await;
}
