//! How one question is tried on the upstreams: tries are hedged (a try whose wait passed
//! keeps listening while the next one goes, and the first acceptable answer from any of them
//! serves), a rested upstream is still asked when there is no other, and datagrams that do not
//! answer a query are ignored while its try listens on (RFC 5452 section 9.1).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hickory_proto::{op::ResponseCode, rr::RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::{
    scripted::{Action, Asked, RawSections, Scripted, Transport, raw_response, raw_rr},
    support::{TestDaemon, a_records, ask, config, ede},
};

/// An answer to `asked` with one A record, 192.0.2.`last`.
fn a_answer(asked: &Asked, last: u8) -> Vec<u8> {
    let sections = RawSections {
        answers: vec![raw_rr(&asked.qname(), 1, 300, &[192, 0, 2, last])],
        ..RawSections::default()
    };
    raw_response(asked, ResponseCode::NoError, 0, &sections)
}

/// Asks `name`/A and returns the addresses of the NOERROR answer.
async fn answered(daemon: SocketAddr, name: &str) -> Vec<String> {
    let reply = ask(daemon, name, RecordType::A).await;
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{name}: {reply:?}"
    );
    a_records(&reply)
}

/// Longer than any try's wait in these tests (`upstream.timeout_ms` is 300 ms): an answer this
/// late comes after the next try has gone.
const SLOW: Duration = Duration::from_millis(700);

/// A daemon whose question budget leaves room for [`SLOW`] answers.
async fn daemon_for(upstreams: &[SocketAddr]) -> TestDaemon {
    let mut cfg = config(upstreams);
    cfg.upstream.timeout_ms = 300;
    cfg.upstream.query_timeout_ms = 2_000;
    TestDaemon::start(cfg).await
}

#[tokio::test]
async fn an_answer_to_an_earlier_try_that_comes_late_is_taken() {
    // Fast for fast*.example. (so the upstream is measured and its try wait short), slow for
    // the others; each query's answer says which query of its name it was: 192.0.2.<n>.
    let queries: Mutex<HashMap<String, u8>> = Mutex::default();
    let upstream = Scripted::start(move |asked| {
        if asked.qname().starts_with("fast") {
            return Action::Reply(a_answer(asked, 1));
        }
        let mut queries = queries.lock().unwrap();
        let n = queries.entry(asked.qname()).or_default();
        *n += 1;
        Action::Delayed(SLOW, a_answer(asked, *n))
    })
    .await;
    let daemon = daemon_for(&[upstream.addr]).await;
    for i in 0..3 {
        answered(daemon.addr, &format!("fast{i}.example.")).await;
    }
    // Slow names, one after the other: each got a second try after the first one's wait,
    // and is served by the first try's answer. Three in a row used to rest the upstream.
    for i in 0..4 {
        let name = format!("slow{i}.example.");
        assert_eq!(answered(daemon.addr, &name).await, ["192.0.2.1"], "{name}");
        assert_eq!(upstream.asked_for(&name).len(), 2, "{name}: hedged");
    }
    assert_eq!(answered(daemon.addr, "fast9.example.").await, ["192.0.2.1"]);
}

/// What the second upstream of the hedging test does.
#[derive(Debug, Clone, Copy)]
enum Second {
    Silent,
    ServFail,
    Garbled,
    Refused,
}

#[tokio::test]
async fn a_slow_upstream_is_heard_whatever_the_next_one_does() {
    for second in [
        Second::Silent,
        Second::ServFail,
        Second::Garbled,
        Second::Refused,
    ] {
        let slow = Scripted::start(|asked| Action::Delayed(SLOW, a_answer(asked, 1))).await;
        let other = Scripted::start(move |asked| match second {
            Second::Silent => Action::Drop,
            Second::ServFail | Second::Refused => {
                let rcode = match second {
                    Second::ServFail => ResponseCode::ServFail,
                    _ => ResponseCode::Refused,
                };
                let sections = RawSections::default();
                Action::Reply(raw_response(asked, rcode, 0, &sections))
            }
            Second::Garbled => {
                let mut reply = a_answer(asked, 2);
                reply.truncate(reply.len() - 2);
                Action::Reply(reply)
            }
        })
        .await;
        // Both unmeasured: the slow one, first in the list, is asked first.
        let daemon = daemon_for(&[slow.addr, other.addr]).await;
        let name = "www.example.";
        assert_eq!(
            answered(daemon.addr, name).await,
            ["192.0.2.1"],
            "{second:?}"
        );
        assert!(!other.asked_for(name).is_empty(), "{second:?}: hedged");
        // Tries are bounded: each upstream once a round (upstream.attempts = 2), and once
        // more without EDNS after a refusal of EDNS (SERVFAIL without OPT may be one).
        for upstream in [&slow, &other] {
            let tries = upstream.asked_for(name).len();
            assert!((1..=3).contains(&tries), "{second:?}: {tries}");
        }
    }
}

/// A scripted upstream that drops every query until `answering` is set, then answers.
async fn down_then_up(answering: Arc<AtomicBool>) -> Scripted {
    Scripted::start(move |asked| match answering.load(Ordering::SeqCst) {
        true => Action::Reply(a_answer(asked, 1)),
        false => Action::Drop,
    })
    .await
}

#[tokio::test]
async fn rested_upstreams_are_asked_when_there_is_no_other() {
    for count in [1, 2] {
        let answering = Arc::new(AtomicBool::new(false));
        let mut upstreams = Vec::new();
        for _ in 0..count {
            upstreams.push(down_then_up(answering.clone()).await);
        }
        let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
        let mut cfg = config(&addrs);
        cfg.upstream.timeout_ms = 100;
        cfg.upstream.query_timeout_ms = 500;
        let daemon = TestDaemon::start(cfg).await;
        // Two questions of two rounds each: four timeouts for every upstream, which rests
        // each for two seconds.
        for name in ["down1.example.", "down2.example."] {
            let reply = ask(daemon.addr, name, RecordType::A).await;
            assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
            assert_eq!(ede(&reply).map(|e| e.0), Some(22), "{count}: {name}");
        }
        for upstream in &upstreams {
            let asked = upstream.asked_for("down2.example.").len();
            assert_eq!(asked, 2, "{count}: asked though resting");
        }
        // Back: the next question is asked of them, not refused for want of an upstream.
        answering.store(true, Ordering::SeqCst);
        assert_eq!(answered(daemon.addr, "up.example.").await, ["192.0.2.1"]);
    }
}

/// Where a scripted datagram is sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// The upstream's own address and port.
    Upstream,
    /// Another port of 127.0.0.1: spoofed, or a misrouted answer.
    OtherPort,
}

/// A UDP upstream on 127.0.0.1 that answers each query with several datagrams, each sent
/// after a pause and from the upstream's port or another one; stops when dropped.
struct Datagrams {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

type DatagramScript = fn(&Asked) -> Vec<(Duration, From, Vec<u8>)>;

impl Datagrams {
    async fn start(script: DatagramScript) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let other = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let (log, stop) = (Arc::new(Mutex::new(Vec::new())), CancellationToken::new());
        let (logged, stopped) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let (len, client) = tokio::select! {
                    () = stopped.cancelled() => return,
                    received = socket.recv_from(&mut buf) => received.unwrap(),
                };
                let wire = buf[..len].to_vec();
                let message = hickory_proto::op::Message::from_vec(&wire).unwrap();
                let asked = Asked {
                    transport: Transport::Udp,
                    wire,
                    message,
                };
                logged.lock().unwrap().push(asked.qname());
                let sends = script(&asked);
                let (socket, other) = (socket.clone(), other.clone());
                tokio::spawn(async move {
                    for (pause, from, bytes) in sends {
                        tokio::time::sleep(pause).await;
                        let via = if from == From::Upstream {
                            &socket
                        } else {
                            &other
                        };
                        let _ = via.send_to(&bytes, client).await;
                    }
                });
            }
        });
        Self { addr, log, stop }
    }

    fn asked_for(&self, name: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }
}

impl Drop for Datagrams {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What comes before the answer for each name: datagrams that do not answer the query.
fn junk_first(asked: &Asked) -> Vec<(Duration, From, Vec<u8>)> {
    let id = &asked.wire[..2];
    let answer = a_answer(asked, 1);
    let mut other_question = a_answer(asked, 66);
    // The first label's first letter: a response to another name, with our ID.
    other_question[13] ^= 0x01;
    let mut other_id = a_answer(asked, 66);
    other_id[0] ^= 0xff;
    let junk: Vec<(From, Vec<u8>)> = match asked.qname().split('.').next().unwrap() {
        "noise" => vec![(
            From::Upstream,
            [id, &[0x81, 0x80, 0xde, 0xad, 0xbe]].concat(),
        )],
        "short" => vec![(From::Upstream, id.to_vec())],
        "echo" => vec![(From::Upstream, asked.wire.clone())],
        "other" => vec![(From::Upstream, other_question)],
        "stray" => vec![(From::Upstream, other_id)],
        "spoofed" => vec![(From::OtherPort, a_answer(asked, 66))],
        "all" => vec![
            (From::Upstream, asked.wire.clone()),
            (From::OtherPort, a_answer(asked, 66)),
            (From::Upstream, other_question),
            (From::Upstream, id.to_vec()),
        ],
        _ => Vec::new(),
    };
    let mut sends: Vec<(Duration, From, Vec<u8>)> = junk
        .into_iter()
        .map(|(from, bytes)| (Duration::ZERO, from, bytes))
        .collect();
    sends.push((Duration::from_millis(50), From::Upstream, answer));
    sends
}

#[tokio::test]
async fn datagrams_that_do_not_answer_are_skipped_and_the_answer_taken() {
    let upstream = Datagrams::start(junk_first).await;
    let daemon = daemon_for(&[upstream.addr]).await;
    for first in [
        "noise", "short", "echo", "other", "stray", "spoofed", "all", "plain",
    ] {
        let name = format!("{first}.example.");
        assert_eq!(answered(daemon.addr, &name).await, ["192.0.2.1"], "{name}");
        assert_eq!(upstream.asked_for(&name), 1, "{name}: one try was enough");
    }
}

#[tokio::test]
async fn a_late_answer_after_junk_is_still_taken() {
    // Junk at once, the answer only after the try's wait: the try listened on.
    let upstream = Datagrams::start(|asked| {
        vec![
            (Duration::ZERO, From::Upstream, asked.wire.clone()),
            (SLOW, From::Upstream, a_answer(asked, 1)),
        ]
    })
    .await;
    let daemon = daemon_for(&[upstream.addr]).await;
    assert_eq!(answered(daemon.addr, "late.example.").await, ["192.0.2.1"]);
}

/// A loopback UDP port where nothing listens: queries to it get ICMP "port unreachable".
async fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test]
async fn an_upstream_whose_port_is_closed_is_passed_at_once() {
    // The question budget is far longer than the client waits (support::WAIT): only the
    // ICMP "port unreachable", taken as the end of the try, can answer within it.
    let live = Scripted::start(|asked| Action::Reply(a_answer(asked, 9))).await;
    let dead = closed_port().await;
    let mut cfg = config(&[dead, live.addr]);
    cfg.upstream.timeout_ms = 30_000;
    cfg.upstream.query_timeout_ms = 60_000;
    let daemon = TestDaemon::start(cfg).await;
    for name in ["a.example.", "b.example."] {
        assert_eq!(answered(daemon.addr, name).await, ["192.0.2.9"], "{name}");
    }
    let alone = TestDaemon::start({
        let mut cfg = config(&[closed_port().await]);
        cfg.upstream.timeout_ms = 30_000;
        cfg.upstream.query_timeout_ms = 60_000;
        cfg
    })
    .await;
    let reply = ask(alone.addr, "c.example.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(ede(&reply).is_some());
}
