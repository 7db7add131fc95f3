//! Forwarded names shared fairly (findings of 2026-12-01, "Resolver fairness" A): one client
//! floods the daemon with made-up names under a slow upstream (a "random subdomain" attack);
//! it holds no more than its share of `dns.max_inflight` (half when alone, less as other
//! clients wait), so another client's names are still forwarded and answered, as unbound
//! keeps serving its other clients. Before the fix the flood held every permit and the other
//! client got SERVFAIL "too many queries in flight" at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};
use tokio::{net::UdpSocket, task::JoinHandle};

use crate::{
    scripted::{Action, Asked, RawSections, Scripted, raw_response, raw_rr},
    support::{TestDaemon, WAIT, a_records, config, ede, query, wait_until},
};

/// `dns.max_inflight` of these daemons: small, so that a flood fills it at once.
const MAX_INFLIGHT: usize = 64;
/// How long the slow upstream takes to answer.
const UPSTREAM_DELAY: Duration = Duration::from_secs(1);
/// The flood: bursts of made-up names, one burst every gap, for as many bursts (10 bursts of
/// 10 every 10 ms: 1,000 queries a second for 4 s, about 1,000 waiting on the upstream at
/// any time, 16 times `MAX_INFLIGHT`).
const BURST: usize = 10;
const BURST_GAP: Duration = Duration::from_millis(10);
const BURSTS: usize = 400;
/// Real names the other client asks during the flood, from [`ASK_FROM`], one every
/// [`ASK_GAP`].
const REAL_NAMES: usize = 10;
const ASK_FROM: Duration = Duration::from_millis(1000);
const ASK_GAP: Duration = Duration::from_millis(200);
/// How long a client waits before it sends its query again (a datagram lost under the flood
/// is not what is tested).
const RESEND: Duration = Duration::from_secs(3);

/// The answer the upstream gives `name`: an A record derived from it.
fn address_of(name: &str) -> [u8; 4] {
    let n = name.bytes().fold(0u8, |n, b| n.wrapping_add(b));
    [192, 0, 2, n]
}

/// An upstream answering every name with [`address_of`] after `delay`; names starting with
/// `never` are not answered at all.
async fn slow_upstream(delay: Duration) -> Scripted {
    Scripted::start(move |asked: &Asked| {
        let name = asked.qname();
        if name.starts_with("never") {
            return Action::Drop;
        }
        let sections = RawSections {
            answers: vec![raw_rr(&name, 1, 300, &address_of(&name))],
            ..RawSections::default()
        };
        Action::Delayed(
            delay,
            raw_response(asked, ResponseCode::NoError, 0, &sections),
        )
    })
    .await
}

/// A daemon forwarding to `upstream`, with [`MAX_INFLIGHT`] and a query budget of `budget`
/// (which must be longer than the upstream's delay: one try per question).
async fn daemon(upstream: SocketAddr, budget: Duration) -> TestDaemon {
    let mut config = config(&[upstream]);
    config.dns.max_inflight = MAX_INFLIGHT;
    config.upstream.timeout_ms = 3000;
    config.upstream.query_timeout_ms = u64::try_from(budget.as_millis()).unwrap();
    TestDaemon::start(config).await
}

/// Sends `names` from a socket on `ip` to `server` without waiting; returns the socket.
async fn send_all(ip: &str, server: SocketAddr, names: &[String]) -> UdpSocket {
    let socket = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    for name in names {
        let bytes = query(name, RecordType::A).to_vec().unwrap();
        socket.send_to(&bytes, server).await.unwrap();
    }
    socket
}

/// Reads the answers coming to `socket` until none came for `quiet`: their response codes and
/// EDE texts, by count.
async fn answers(socket: &UdpSocket, quiet: Duration) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    let mut buf = vec![0; 4096];
    while let Ok(Ok((len, _))) = tokio::time::timeout(quiet, socket.recv_from(&mut buf)).await {
        if let Ok(msg) = Message::from_vec(&buf[..len]) {
            let text = ede(&msg).map(|(_, text)| text).unwrap_or_default();
            let key = format!("{} {text}", msg.metadata.response_code);
            *seen.entry(key.trim().to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

/// The distinct names starting with `prefix` the upstream was asked for.
fn asked_names(upstream: &Scripted, prefix: &str) -> usize {
    let names: BTreeSet<String> = upstream
        .asked()
        .iter()
        .map(Asked::qname)
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.len()
}

/// Waits until the upstream was asked for `want` names starting with `prefix`, then a while
/// longer, and checks it was asked for no more.
async fn upstream_asked_exactly(upstream: &Scripted, prefix: &str, want: usize, why: &str) {
    wait_until(&format!("{want} {prefix} names at the upstream"), || {
        asked_names(upstream, prefix) >= want
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(asked_names(upstream, prefix), want, "{why}");
}

/// The share of each client, counted: one client sending 200 names that the upstream never
/// answers gets half of `dns.max_inflight` forwarded, and SERVFAIL "too many queries in
/// flight" at once for the rest; a second client sending as many then gets a third; the
/// first, waiting on its half, gets no more. Cached names are answered to the first client
/// all along.
#[tokio::test]
async fn one_client_holds_at_most_its_share_of_the_queries_in_flight() {
    let upstream = slow_upstream(Duration::ZERO).await;
    // Questions never answered are waited on all through the test.
    let daemon = daemon(upstream.addr, Duration::from_secs(60)).await;
    let server = daemon.addr;
    let cached = crate::support::ask(server, "cached.example.test.", RecordType::A).await;
    assert_eq!(a_records(&cached).len(), 1, "{cached:?}");

    let names = |client: &str| -> Vec<String> {
        (0..200)
            .map(|i| format!("never-{client}-{i}.example.test."))
            .collect()
    };
    let first = send_all("127.0.0.5", server, &names("first")).await;
    upstream_asked_exactly(
        &upstream,
        "never-first",
        MAX_INFLIGHT / 2,
        "a client alone holds half of dns.max_inflight",
    )
    .await;
    let refused = answers(&first, Duration::from_secs(1)).await;
    assert_eq!(
        refused.get("Server Failure too many queries in flight"),
        Some(&(200 - MAX_INFLIGHT / 2)),
        "the rest is refused at once: {refused:?}"
    );

    let second = send_all("127.0.0.6", server, &names("second")).await;
    upstream_asked_exactly(
        &upstream,
        "never-second",
        MAX_INFLIGHT / 3,
        "with two clients waiting, a newcomer holds a third",
    )
    .await;
    drop(second);
    let again = send_all("127.0.0.5", server, &names("again")).await;
    let cached_again = send_all("127.0.0.5", server, &["cached.example.test.".into()]).await;
    let mut buf = vec![0; 4096];
    let (len, _) = tokio::time::timeout(WAIT, cached_again.recv_from(&mut buf))
        .await
        .expect("the cached name is answered")
        .unwrap();
    let cached_answer = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(a_records(&cached_answer), a_records(&cached));
    let refused = answers(&again, Duration::from_secs(1)).await;
    assert_eq!(
        asked_names(&upstream, "never-again"),
        0,
        "a client past its share gets nothing more forwarded: {refused:?}"
    );
}

/// One client floods the daemon with made-up names at 1,000 a second for 4 s, each answered by
/// the upstream after 1 s; meanwhile another client asks real names, one every 200 ms: every
/// one is answered with its record, none with SERVFAIL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_are_answered_during_a_random_subdomain_flood() {
    let upstream = slow_upstream(UPSTREAM_DELAY).await;
    let daemon = daemon(upstream.addr, Duration::from_secs(5)).await;
    let server = daemon.addr;
    let done = Arc::new(AtomicBool::new(false));
    let flood = flood("127.0.0.5", server, done.clone());
    let mut real = Vec::new();
    for i in 0..REAL_NAMES {
        let at = ASK_FROM + ASK_GAP * u32::try_from(i).unwrap();
        real.push(ask_at(
            at,
            server,
            format!("legit{i}.example.test."),
            done.clone(),
        ));
    }
    let mut failed = Vec::new();
    for ask in real {
        let (failure, during) = ask.await.unwrap();
        assert!(during, "every real name is asked during the flood");
        failed.extend(failure);
    }
    let flood_answers = flood.await.unwrap();
    eprintln!(
        "real names answered during the flood: {}/{REAL_NAMES}; flood answers: {flood_answers:?}",
        REAL_NAMES - failed.len()
    );
    assert!(failed.is_empty(), "real names not answered: {failed:?}");
    assert!(
        flood_answers.contains_key("Server Failure too many queries in flight"),
        "the flood went past its share: {flood_answers:?}"
    );
}

/// Sends [`BURSTS`] bursts of [`BURST`] made-up names from `ip` to `server`; returns the
/// answers' response codes and EDE texts by count, once the last answers had [`WAIT`] to come.
fn flood(
    ip: &str,
    server: SocketAddr,
    done: Arc<AtomicBool>,
) -> JoinHandle<BTreeMap<String, usize>> {
    let ip: IpAddr = ip.parse().unwrap();
    tokio::spawn(async move {
        let socket = Arc::new(UdpSocket::bind((ip, 0)).await.unwrap());
        let receiver = socket.clone();
        let counting = tokio::spawn(async move { answers(&receiver, WAIT).await });
        let mut tick = tokio::time::interval(BURST_GAP);
        for _ in 0..BURSTS {
            tick.tick().await;
            for _ in 0..BURST {
                let junk = format!("junk-{:016x}.example.test.", rand::random::<u64>());
                let bytes = query(&junk, RecordType::A).to_vec().unwrap();
                socket.send_to(&bytes, server).await.unwrap();
            }
        }
        done.store(true, Ordering::SeqCst);
        counting.await.unwrap()
    })
}

/// Asks `name`/A from a socket of its own on 127.0.0.2 once `at` has passed; tells what was
/// wrong with the answer (`None`: NOERROR with the upstream's record) and whether the flood was
/// still on when it asked. Like a stub resolver, it sends the query again after [`RESEND`].
fn ask_at(
    at: Duration,
    server: SocketAddr,
    name: String,
    flood_done: Arc<AtomicBool>,
) -> JoinHandle<(Option<String>, bool)> {
    tokio::spawn(async move {
        let socket = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        tokio::time::sleep(at).await;
        let during = !flood_done.load(Ordering::SeqCst);
        let msg = query(&name, RecordType::A);
        let (id, bytes) = (msg.metadata.id, msg.to_vec().unwrap());
        let mut buf = vec![0; 4096];
        for wait in [RESEND, WAIT - RESEND] {
            socket.send_to(&bytes, server).await.unwrap();
            let answer = tokio::time::timeout(wait, async {
                loop {
                    let (len, _) = socket.recv_from(&mut buf).await.unwrap();
                    if let Ok(answer) = Message::from_vec(&buf[..len])
                        && answer.metadata.id == id
                    {
                        return answer;
                    }
                }
            });
            let Ok(answer) = answer.await else {
                continue;
            };
            let want = std::net::Ipv4Addr::from(address_of(&name)).to_string();
            if answer.metadata.response_code == ResponseCode::NoError
                && a_records(&answer) == [want]
            {
                return (None, during);
            }
            let code = answer.metadata.response_code;
            return (Some(format!("{name}: {code} {:?}", ede(&answer))), during);
        }
        (Some(format!("{name}: no answer")), during)
    })
}
