//! DNS-over-TCP clients that send queries and never read the answers (findings of
//! 2026-12-01, "Resolver fairness" G): the kernel holds little for each of their connections,
//! and the daemon closes them once they have taken no answer for `dns.tcp_idle_timeout_secs`.
//! Before the fix the kernel's send buffer of each grew towards 4 MiB, and the connections
//! stayed open for as long as that took to fill.
//!
//! What the kernel holds for the daemon's end of each connection is read from
//! `/proc/net/tcp` (its send and receive queues, as `ss` shows them), so Linux only.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use hickory_proto::rr::RecordType;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{TestDaemon, WAIT, config, exchange_tcp, query};

/// `dns.tcp_idle_timeout_secs` of the daemon.
const IDLE_SECS: u64 = 2;
/// Connections that never read, from one address.
const CLIENTS: usize = 4;
/// Queries each client sends every [`SEND_GAP`]: 40 KB of answers a second each, so that
/// a send buffer of 4 MiB would take 100 s to fill.
const QUERIES_PER_SEND: usize = 2;
const SEND_GAP: Duration = Duration::from_millis(100);
/// The receive buffer the clients ask for: small, so that their window closes soon.
const CLIENT_RCVBUF: u32 = 4096;
/// The most the kernel may hold for the daemon's end of one connection, sent and received
/// bytes together. Before the fix, the send queue alone grew past it within 4 s (to 750 KB
/// each in 20 s).
const MOST_HELD: u64 = 128 * 1024;
/// How long the daemon has to close every connection: the idle timeout several times over
/// (a generous bound; before the fix they stayed open until their send buffers were full).
const CLOSED_WITHIN: Duration = Duration::from_secs(5 * IDLE_SECS + 10);

/// The daemon's end of a connection as `/proc/net/tcp` shows it: bytes in its send queue
/// (not yet acknowledged by the client) and in its receive queue (not yet read by the daemon).
#[derive(Debug, Clone, Copy)]
struct Held {
    send: u64,
    receive: u64,
}

/// The daemon's ends of connections from `clients` to `server`, by client address.
fn held(server: SocketAddr, clients: &[SocketAddr]) -> BTreeMap<SocketAddr, Held> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("Linux: /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote) = (parse_addr(fields[1])?, parse_addr(fields[2])?);
            let (send, receive) = fields[4].split_once(':')?;
            let queue = |hex| u64::from_str_radix(hex, 16).ok();
            let held = Held {
                send: queue(send)?,
                receive: queue(receive)?,
            };
            (local == server && clients.contains(&remote)).then_some((remote, held))
        })
        .collect()
}

/// An IPv4 address and port as `/proc/net/tcp` writes them (`0100007F:0035`: the address in
/// host order, in hex).
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((ip.to_ne_bytes(), port)))
}

/// A connection from 127.0.0.3 with a small receive buffer, which is never read.
async fn connect_not_reading(server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(CLIENT_RCVBUF).unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 3], 0))).unwrap();
    tokio::time::timeout(WAIT, socket.connect(server))
        .await
        .expect("connected within the bound")
        .expect("connected")
}

/// A client that sends queries for a large TXT answer and never reads.
struct NotReading {
    stream: TcpStream,
    /// Bytes of framed queries not yet taken by the socket.
    unsent: Vec<u8>,
    /// The socket failed (the daemon's reset came back): nothing more is sent.
    failed: bool,
}

impl NotReading {
    /// Queues [`QUERIES_PER_SEND`] more queries and writes what the socket takes now.
    fn send_more(&mut self) {
        if self.failed {
            return;
        }
        for _ in 0..QUERIES_PER_SEND {
            let bytes = query("big.p2p.", RecordType::TXT).to_vec().unwrap();
            self.unsent
                .extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
            self.unsent.extend_from_slice(&bytes);
        }
        while !self.unsent.is_empty() {
            match self.stream.try_write(&self.unsent) {
                Ok(n) => drop(self.unsent.drain(..n)),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.failed = true;
                    break;
                }
            }
        }
    }
}

/// Four connections keep sending queries whose answers are 2 KB each and never read them: the
/// kernel never holds more than [`MOST_HELD`] for the daemon's end of any, and the daemon
/// closes each within the bound although its client goes on sending.
#[tokio::test]
async fn connections_whose_clients_never_read_hold_little_and_close() {
    let mut config = config(&[]);
    config.dns.tcp_idle_timeout_secs = IDLE_SECS;
    // A 2 KB answer: eight strings of 250 characters.
    let text = format!("\"{}\"", "x".repeat(250));
    let txt = format!("TXT {}", vec![text; 8].join(" "));
    config.naming.records.insert("big.p2p".into(), vec![txt]);
    let daemon = TestDaemon::start(config).await;
    let answer = exchange_tcp(daemon.addr, query("big.p2p.", RecordType::TXT)).await;
    assert_eq!(answer.answers.len(), 1, "{answer:?}");

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let stream = connect_not_reading(daemon.addr).await;
        clients.push(NotReading {
            stream,
            unsent: Vec::new(),
            failed: false,
        });
    }
    let addrs: Vec<SocketAddr> = clients
        .iter()
        .map(|c| c.stream.local_addr().unwrap())
        .collect();
    assert_eq!(
        held(daemon.addr, &addrs).len(),
        CLIENTS,
        "every connection is seen in /proc/net/tcp"
    );
    let start = tokio::time::Instant::now();
    let mut most = 0;
    loop {
        for client in &mut clients {
            client.send_more();
        }
        tokio::time::sleep(SEND_GAP).await;
        let open = held(daemon.addr, &addrs);
        let now_most = open.values().map(|h| h.send + h.receive).max().unwrap_or(0);
        most = most.max(now_most);
        assert!(
            most <= MOST_HELD,
            "the kernel holds {most} bytes for one connection whose client does not read \
             ({:?} in): {open:?}",
            start.elapsed()
        );
        if open.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < CLOSED_WITHIN,
            "connections still open after {CLOSED_WITHIN:?}: {open:?}"
        );
    }
    eprintln!(
        "{CLIENTS} connections that never read: closed {:?} after their first query \
         (dns.tcp_idle_timeout_secs = {IDLE_SECS}); the most the kernel held for one: {most} bytes",
        start.elapsed()
    );
}
