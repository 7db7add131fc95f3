//! Hostile DNS-over-TCP clients and what they cannot take (issue 15, kind 1): connections are
//! capped per client address and in total, the oldest idle one closing to make room and never
//! a busy one; a client that pipelines queries without reading the answers is no longer read
//! once `dns.tcp_max_pending` of its queries are unanswered; and while TCP is full, UDP and
//! forwarding go on. Clients come from several loopback addresses (127.0.0.0/8 is all
//! loopback on Linux).

use std::{net::SocketAddr, time::Duration};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};
use p2pdns::Config;
use tokio::{
    io::AsyncReadExt,
    net::{TcpSocket, TcpStream},
};

use crate::{
    scripted::{Action, Asked, RawSections, Scripted, raw_response, raw_rr},
    support::{
        TestDaemon, WAIT, a_records, ask, config, query, read_tcp_message, wait_until,
        write_pipelined,
    },
};

/// Long enough that no connection of these tests closes for being idle meanwhile.
const IDLE_SECS: u64 = 60;

/// An upstream that never answers names starting with `slow` and gives the others an A
/// record.
async fn slow_upstream() -> Scripted {
    Scripted::start(|asked: &Asked| {
        if asked.qname().starts_with("slow") {
            return Action::Drop;
        }
        let sections = RawSections {
            answers: vec![raw_rr(&asked.qname(), 1, 300, &[192, 0, 2, 1])],
            ..RawSections::default()
        };
        Action::Reply(raw_response(asked, ResponseCode::NoError, 0, &sections))
    })
    .await
}

/// A daemon forwarding to `upstream` with the given TCP caps.
async fn daemon(
    upstream: SocketAddr,
    per_client: usize,
    total: usize,
    pending: usize,
) -> TestDaemon {
    let mut config: Config = config(&[upstream]);
    config.dns.tcp_max_per_client = per_client;
    config.dns.tcp_max_connections = total;
    config.dns.tcp_max_pending = pending;
    config.dns.tcp_idle_timeout_secs = IDLE_SECS;
    config.upstream.query_timeout_ms = 5000;
    TestDaemon::start(config).await
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    tokio::time::timeout(WAIT, socket.connect(server))
        .await
        .expect("connected within the bound")
        .expect("connected")
}

/// Asks `name`/A over `stream` and returns the answer.
async fn round_trip(stream: &mut TcpStream, name: &str) -> Message {
    let asked = query(name, RecordType::A);
    write_pipelined(stream, &[&asked]).await;
    let answer = read_tcp_message(stream).await;
    assert_eq!(answer.metadata.id, asked.metadata.id);
    answer
}

/// Does the server close `stream` within [`WAIT`] (answers still due are read and dropped)?
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// A new connection from `from` is served, the first of `idle` (the oldest idle connection)
/// is closed to make room, and the others of `idle` stay open.
async fn newcomer_closes_the_first(from: [u8; 4], daemon: SocketAddr, idle: &mut [TcpStream]) {
    let mut newcomer = connect_from(from, daemon).await;
    round_trip(&mut newcomer, "localhost.").await;
    assert!(
        closed_by_server(&mut idle[0]).await,
        "the oldest idle connection stays open at the cap"
    );
    for stream in &mut idle[1..] {
        round_trip(stream, "localhost.").await;
    }
}

/// The daemon still answers a local name and a forwarded one over UDP.
async fn udp_and_forwarding_answer(daemon: SocketAddr) {
    let local = ask(daemon, "localhost.", RecordType::A).await;
    assert_eq!(a_records(&local), ["127.0.0.1"], "{local:?}");
    let forwarded = ask(daemon, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&forwarded), ["192.0.2.1"], "{forwarded:?}");
}

#[tokio::test]
async fn at_the_per_client_cap_that_clients_oldest_idle_connection_closes() {
    let upstream = slow_upstream().await;
    let daemon = daemon(upstream.addr, 3, 10, 8).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from([127, 0, 0, 1], daemon.addr).await;
        round_trip(&mut stream, "localhost.").await;
        held.push(stream);
    }
    // Another address is not held back by this one's connections, for local and forwarded
    // names.
    let mut other = connect_from([127, 0, 0, 2], daemon.addr).await;
    round_trip(&mut other, "localhost.").await;
    let forwarded = round_trip(&mut other, "www.example.test.").await;
    assert_eq!(a_records(&forwarded), ["192.0.2.1"]);
    // A fourth connection from the first address is served, and that address's oldest idle
    // connection closes to make room.
    newcomer_closes_the_first([127, 0, 0, 1], daemon.addr, &mut held).await;
    round_trip(&mut other, "localhost.").await;
}

#[tokio::test]
async fn at_the_total_cap_the_oldest_idle_connection_closes_never_a_busy_one() {
    let upstream = slow_upstream().await;
    let daemon = daemon(upstream.addr, 4, 4, 8).await;
    // The oldest connection is busy: its question waits on the upstream.
    let mut busy = connect_from([127, 0, 0, 1], daemon.addr).await;
    let slow = query("slow.example.test.", RecordType::A);
    write_pipelined(&mut busy, &[&slow]).await;
    wait_until("the slow question to reach the upstream", || {
        !upstream.asked_for("slow.example.test.").is_empty()
    })
    .await;
    let mut idle = Vec::new();
    for last in 2..5 {
        let mut stream = connect_from([127, 0, 0, last], daemon.addr).await;
        round_trip(&mut stream, "localhost.").await;
        idle.push(stream);
    }
    // A fifth client is served; the oldest idle connection closes, not the busy one.
    newcomer_closes_the_first([127, 0, 0, 5], daemon.addr, &mut idle).await;
    let answer = read_tcp_message(&mut busy).await;
    assert_eq!(
        answer.metadata.id, slow.metadata.id,
        "the busy connection got its answer"
    );
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn a_client_pipelining_without_reading_is_read_no_further_than_its_pending_cap() {
    const PENDING: usize = 4;
    let upstream = slow_upstream().await;
    let daemon = daemon(upstream.addr, 2, 2, PENDING).await;
    let slow_names = || {
        let mut names: Vec<String> = upstream
            .asked()
            .iter()
            .map(Asked::qname)
            .filter(|name| name.starts_with("slow"))
            .collect();
        names.sort();
        names.dedup();
        names.len()
    };
    // Two clients each pipeline 40 questions the upstream never answers, and read nothing.
    let mut hogs = Vec::new();
    for (client, last) in [(0, 1), (1, 2)] {
        let mut hog = connect_from([127, 0, 0, last], daemon.addr).await;
        let queries: Vec<Message> = (0..40)
            .map(|i| query(&format!("slow{client}-{i}.example.test."), RecordType::A))
            .collect();
        write_pipelined(&mut hog, &queries.iter().collect::<Vec<_>>()).await;
        hogs.push(hog);
    }
    wait_until(
        "each client's first questions to reach the upstream",
        || slow_names() >= 2 * PENDING,
    )
    .await;
    // Time for more to come, were the connections read further.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slow_names(),
        2 * PENDING,
        "questions taken from two connections of {PENDING} pending each"
    );
    // Both connections are busy and TCP is full: a new connection is closed at once, and UDP
    // and forwarding go on.
    let mut refused = connect_from([127, 0, 0, 3], daemon.addr).await;
    assert!(
        closed_by_server(&mut refused).await,
        "a new connection was kept although every connection is busy at the cap"
    );
    udp_and_forwarding_answer(daemon.addr).await;
    drop(hogs);
}

#[test]
fn tcp_caps_out_of_range_are_refused_naming_the_key() {
    type Change = fn(&mut Config);
    let cases: [(&str, Change); 5] = [
        ("dns.tcp_max_per_client", |c| c.dns.tcp_max_per_client = 0),
        ("dns.tcp_max_pending", |c| c.dns.tcp_max_pending = 0),
        ("dns.tcp_max_pending", |c| c.dns.tcp_max_pending = 1025),
        ("dns.tcp_max_connections", |c| {
            c.dns.tcp_max_connections = 1 << 40
        }),
        ("dns.tcp_max_per_client", |c| {
            c.dns.tcp_max_connections = 8;
            c.dns.tcp_max_per_client = 9;
        }),
    ];
    for (key, change) in cases {
        let mut config = Config::default();
        change(&mut config);
        let error = config.validate().expect_err(key).to_string();
        assert!(error.contains(key), "{key}: {error}");
    }
    Config::default()
        .validate()
        .expect("the defaults are valid");
}
