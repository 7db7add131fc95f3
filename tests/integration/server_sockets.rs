//! The daemon's own sockets as a client sees them: on a wildcard listen address each UDP reply
//! leaves from the address its query was sent to (RFC 1123 section 6.1.3.2), and once a
//! shutdown begins new queries are turned away at once (REFUSED over UDP, a refused
//! connection over TCP) instead of being read and dropped, while those in flight are answered.

use std::{io, net::SocketAddr};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};
use tokio::{
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use crate::support::{
    TestDaemon, Upstream, WAIT, config, local_site, query, read_tcp_message, wait_until,
    write_pipelined,
};

/// Asks `target` for `name` from a socket of our own, once (hickory's client would send the
/// query again after a while); the reply and where it came from.
async fn ask_raw(target: SocketAddr, name: &str) -> (Message, SocketAddr) {
    let local = match target {
        SocketAddr::V4(_) => "127.0.0.1:0",
        SocketAddr::V6(_) => "[::1]:0",
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    let asked = query(name, RecordType::A);
    socket
        .send_to(&asked.to_vec().unwrap(), target)
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let (len, from) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a reply within the bound")
        .unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.metadata.id, asked.metadata.id);
    (reply, from)
}

/// A daemon serving `site.p2p` on `listen` (port 0: its own port).
async fn daemon_on(listen: &str) -> TestDaemon {
    let mut cfg = config(&[]);
    local_site(&mut cfg);
    cfg.dns.listen = vec![listen.parse().unwrap()];
    TestDaemon::start(cfg).await
}

#[tokio::test]
async fn a_wildcard_listener_answers_from_the_address_asked() {
    let daemon = daemon_on("0.0.0.0:0").await;
    let port = daemon.addr.port();
    // The whole of 127.0.0.0/8 is on the loopback interface; 127.0.0.1 is what the kernel
    // would pick as the source of a reply to any of them.
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.7"] {
        let target = SocketAddr::new(ip.parse().unwrap(), port);
        let (reply, from) = ask_raw(target, "site.p2p.").await;
        assert_eq!(from, target, "the reply to a query sent to {target}");
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1, "{reply:?}");
    }
    daemon.stop().await.expect("clean shutdown");

    if UdpSocket::bind("[::1]:0").await.is_err() {
        println!("note: no IPv6 loopback here; the [::] half of this test is skipped");
        return;
    }
    let daemon = daemon_on("[::]:0").await;
    let target = SocketAddr::new("::1".parse().unwrap(), daemon.addr.port());
    let (reply, from) = ask_raw(target, "site.p2p.").await;
    assert_eq!(from, target);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_non_wildcard_listener_still_answers() {
    // The plain path (no packet info) beside the wildcard one above.
    let daemon = daemon_on("127.0.0.1:0").await;
    let (reply, from) = ask_raw(daemon.addr, "site.p2p.").await;
    assert_eq!(from, daemon.addr);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    daemon.stop().await.expect("clean shutdown");
}

/// What became of one UDP query sent while the daemon shuts down.
#[derive(Debug, PartialEq)]
enum Fate {
    /// Answered as usual: the daemon had not begun its shutdown when it read it.
    Answered,
    Refused,
    /// The port is closed (ICMP port unreachable).
    PortClosed,
}

/// Sends `name` over UDP to `server` from a connected socket and says what became of it.
async fn fate_of(server: SocketAddr, name: &str) -> Fate {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    let asked = query(name, RecordType::A);
    if let Err(error) = socket.send(&asked.to_vec().unwrap()).await {
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
        return Fate::PortClosed;
    }
    let mut buf = vec![0; 4096];
    let received = timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("an outcome within the bound, not a silent drop");
    let len = match received {
        Ok(len) => len,
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            return Fate::PortClosed;
        }
        Err(error) => panic!("{error}"),
    };
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.metadata.id, asked.metadata.id);
    assert_eq!(reply.queries, asked.queries, "the question is echoed");
    match reply.metadata.response_code {
        ResponseCode::NoError => Fate::Answered,
        ResponseCode::Refused => Fate::Refused,
        other => panic!("{name}: unexpected {other:?}"),
    }
}

/// The first fate other than [`Fate::Answered`] of queries for `name` sent in turn.
async fn first_turned_away(server: SocketAddr, name: &str) -> Fate {
    let mut fate = Fate::Answered;
    wait_until_async("the daemon to turn new queries away", async || {
        fate = fate_of(server, name).await;
        fate != Fate::Answered
    })
    .await;
    fate
}

/// [`wait_until`] for a check that awaits.
async fn wait_until_async(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up on {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn queries_sent_during_the_shutdown_are_turned_away_at_once() {
    let upstream = Upstream::start("").await;
    upstream.set_silent(true);
    let mut cfg = config(&[upstream.addr]);
    local_site(&mut cfg);
    // The query in flight stays unanswered (then SERVFAIL) this long: the shutdown drains
    // for as long, which the checks below take a small part of.
    cfg.upstream.query_timeout_ms = 4000;
    // One try per query, so that the upstream's count tells which queries reached it.
    cfg.upstream.timeout_ms = 4000;
    cfg.upstream.attempts = 1;
    let daemon = TestDaemon::start(cfg).await;
    let addr = daemon.addr;
    // A TCP connection open before the shutdown, with a query in flight on it.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let tcp_asked = query("tcp.example.test.", RecordType::A);
    write_pipelined(&mut tcp, &[&tcp_asked]).await;
    upstream.wait_until_asked().await;
    let udp_pending = tokio::spawn(async move { ask_raw(addr, "www.example.test.").await.0 });
    wait_until("the UDP query to reach the upstream", || {
        upstream.queries() >= 2
    })
    .await;

    daemon.shutdown.cancel();
    // The UDP socket stays open for the answer in flight, so what comes meanwhile is
    // answered REFUSED (a forwarded name and a local one alike), not read and dropped.
    assert_eq!(first_turned_away(addr, "site.p2p.").await, Fate::Refused);
    assert_eq!(fate_of(addr, "new.example.test.").await, Fate::Refused);
    assert!(
        !udp_pending.is_finished(),
        "the query in flight was still being answered meanwhile"
    );
    // No new TCP connection is accepted: the listener is closed.
    wait_until_async("the TCP listener to close", async || {
        TcpStream::connect(addr).await.is_err_and(|error| {
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
            true
        })
    })
    .await;
    // The open connection is read no more, but its query in flight is answered, then it
    // closes.
    let late = query("late.example.test.", RecordType::A);
    write_pipelined(&mut tcp, &[&late]).await;
    let answer = read_tcp_message(&mut tcp).await;
    assert_eq!(answer.metadata.id, tcp_asked.metadata.id);
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    let mut rest = Vec::new();
    let closed = timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut rest),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "no answer to a query sent after the shutdown began: {closed:?} {rest:?}"
    );

    let answer = udp_pending.await.expect("the client got a reply");
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    daemon.stop().await.expect("clean shutdown");
    // Once stopped, the port is closed.
    assert_eq!(fate_of(addr, "site.p2p.").await, Fate::PortClosed);
}
