//! The DHT's capacity shared fairly (issue 15, kind 2): one client floods a daemon with made-up
//! `.p2p` names while a peer of the network takes every Kademlia request and never answers.
//! Real names asked by another client are answered throughout, and so are the answers the
//! daemon can give without the network (its cache, the records its own store holds for
//! others) to the flooding client itself.
//!
//! The stalled peer is a plain libp2p swarm built here: TCP, Noise, Yamux, identify, and the
//! p2pdns Kademlia protocol accepted as a stream that is never read nor answered, so each
//! request to it waits for the requester's own timeout, as with a peer that hangs.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{Name, RData, Record, RecordType},
};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, SwarmBuilder, identify, identity, multiaddr::Protocol,
    noise, swarm::NetworkBehaviour, swarm::SwarmEvent, tcp, yamux,
};
use p2pdns::p2p::KAD_PROTOCOL;
use tokio::{net::UdpSocket, task::JoinHandle};

use crate::support::{TestDaemon, WAIT, a_records, ede, p2p_config, query};

/// Made-up names the flooding client sends, in all.
const FLOOD_QUERIES: usize = 2000;
/// Time between two made-up names: 2,000 in 4 s, 500 queries per second.
const FLOOD_GAP: Duration = Duration::from_millis(2);
/// Real names published before the asking daemon joined (so only a lookup finds them), each
/// asked once by the other client during the flood.
const REAL_NAMES: usize = 20;
/// When the first real question is asked, once the flood has filled what it can fill.
const ASK_FROM: Duration = Duration::from_millis(500);
/// Time between two real questions: the 20 of them spread over 3 s of the 4 s flood.
const ASK_GAP: Duration = Duration::from_millis(150);
/// Names published once the asking daemon is in the network, so that its own store holds them
/// for their owner; the flooding client asks each once.
const HELD_NAMES: usize = 5;
/// When the flooding client asks the first held name: once the flood has filled the lookup
/// table (before the change, 512 lookups at 500 a second).
const HELD_FROM: Duration = Duration::from_millis(1500);
/// How long a client waits for an answer before it sends its query again: longer than the
/// daemon's lookup budget (2 s), after which it answers either way.
const RESEND: Duration = Duration::from_secs(3);
/// Streams the stalled peer holds at most (it never answers them; the oldest are dropped).
const HELD_STREAMS: usize = 1024;

/// A peer that speaks identify and accepts p2pdns Kademlia streams, but answers none.
pub struct Stalled {
    pub peer_id: PeerId,
    /// Its listen address, ending in `/p2p/<peer id>`.
    addr: Multiaddr,
    task: JoinHandle<()>,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(NetworkBehaviour)]
struct StalledBehaviour {
    identify: identify::Behaviour,
    stream: libp2p_stream::Behaviour,
}

impl Stalled {
    /// Starts the stalled peer on loopback TCP and dials every daemon of `daemons`, so that
    /// each learns it (identify lists the Kademlia protocol) and puts it in its routing table.
    /// Besides its own, it announces `extra` made-up loopback addresses.
    pub async fn join(daemons: &[&TestDaemon], extra: u16) -> Self {
        let behaviour = |key: &identity::Keypair| StalledBehaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                "/stalled/0.0.1".to_owned(),
                key.public(),
            )),
            stream: libp2p_stream::Behaviour::new(),
        };
        // The streams it holds keep its connections open.
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .build();
        let peer_id = *swarm.local_peer_id();
        let mut incoming = swarm
            .behaviour()
            .stream
            .new_control()
            .accept(StreamProtocol::new(KAD_PROTOCOL))
            .unwrap();
        swarm
            .listen_on(
                Multiaddr::empty()
                    .with(Protocol::Ip4([127, 0, 0, 1].into()))
                    .with(Protocol::Tcp(0)),
            )
            .unwrap();
        // Listening before dialing, so that identify tells the daemons where it is.
        let listen = loop {
            let event = tokio::time::timeout(WAIT, swarm.select_next_some());
            if let SwarmEvent::NewListenAddr { address, .. } = event.await.expect("it listens") {
                break address;
            }
        };
        for port in 0..extra {
            let made_up = Multiaddr::empty()
                .with(Protocol::Ip4([127, 0, 0, 1].into()))
                .with(Protocol::Tcp(10_000 + port));
            swarm.add_external_address(made_up);
        }
        for daemon in daemons {
            swarm.dial(tcp_addr(daemon)).unwrap();
        }
        let task = tokio::spawn(async move {
            let mut held = VecDeque::new();
            loop {
                tokio::select! {
                    _ = swarm.select_next_some() => {}
                    Some((_, stream)) = incoming.next() => {
                        if held.len() == HELD_STREAMS {
                            held.pop_front();
                        }
                        held.push_back(stream);
                    }
                }
            }
        });
        Self {
            peer_id,
            addr: listen.with_p2p(peer_id).unwrap(),
            task,
        }
    }
}

/// The daemon's TCP P2P address, ending in its peer id.
fn tcp_addr(daemon: &TestDaemon) -> Multiaddr {
    daemon
        .p2p_addrs
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .expect("daemons listen on TCP")
        .clone()
}

pub fn dht(daemon: &TestDaemon) -> &p2pdns::naming::Dht {
    daemon.dht.as_ref().unwrap()
}

/// Waits until `daemon`'s routing table holds each of `peers`.
pub async fn wait_for_peers(daemon: &TestDaemon, peers: &[PeerId]) {
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    loop {
        let status = dht(daemon).node().status().await.unwrap();
        let missing: Vec<&PeerId> = peers
            .iter()
            .filter(|p| {
                !status
                    .peers
                    .iter()
                    .any(|e| e.peer_id == **p && e.in_routing_table)
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peers {missing:?} never entered the routing table"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn publish(daemon: &TestDaemon, name: &str, ip: &str) {
    let owner = Name::from_ascii(name).unwrap();
    let a = Record::from_rdata(owner.clone(), 300, RData::A(ip.parse().unwrap()));
    dht(daemon).publish(&owner, vec![a]).await.unwrap();
}

/// A DNS client on its own UDP socket (its own source address: a client of its own).
struct Client {
    socket: UdpSocket,
}

impl Client {
    async fn bind(ip: &str) -> Self {
        let socket = UdpSocket::bind((ip.parse::<std::net::IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        Self { socket }
    }

    /// The answer to `name`/A, or `None` when none came within [`WAIT`]. Like a stub
    /// resolver, it sends the query again once after [`RESEND`] without an answer: under a
    /// flood the kernel may drop a datagram, which is not what is tested here.
    async fn ask(&self, server: SocketAddr, name: &str) -> Option<Message> {
        let msg = query(name, RecordType::A);
        let id = msg.metadata.id;
        let bytes = msg.to_vec().unwrap();
        let mut buf = vec![0; 4096];
        for wait in [RESEND, WAIT - RESEND] {
            self.socket.send_to(&bytes, server).await.unwrap();
            let answer = tokio::time::timeout(wait, async {
                loop {
                    let (len, _) = self.socket.recv_from(&mut buf).await.unwrap();
                    if let Ok(answer) = Message::from_vec(&buf[..len])
                        && answer.metadata.id == id
                    {
                        return answer;
                    }
                }
            });
            if let Ok(answer) = answer.await {
                return Some(answer);
            }
        }
        None
    }

    /// Did `name` get NOERROR with exactly the A record `ip`?
    async fn answered(&self, server: SocketAddr, name: &str, ip: &str) -> bool {
        self.failure(server, name, ip).await.is_none()
    }

    /// What was wrong with the answer to `name`, which should be NOERROR with exactly the A
    /// record `ip`; `None` when nothing.
    async fn failure(&self, server: SocketAddr, name: &str, ip: &str) -> Option<String> {
        match self.ask(server, name).await {
            Some(msg)
                if msg.metadata.response_code == ResponseCode::NoError
                    && a_records(&msg) == [ip] =>
            {
                None
            }
            Some(msg) => Some(format!(
                "{name}: {} {:?} {:?}",
                msg.metadata.response_code,
                a_records(&msg),
                ede(&msg)
            )),
            None => Some(format!("{name}: no answer")),
        }
    }
}

/// Sends [`FLOOD_QUERIES`] made-up names from `ip` to `server`, one every [`FLOOD_GAP`],
/// without waiting for answers; returns the answers' response codes by count once every
/// query was sent and the last answers had [`WAIT`] to come.
fn flood(
    ip: &str,
    server: SocketAddr,
    done: Arc<AtomicBool>,
) -> JoinHandle<BTreeMap<String, usize>> {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    tokio::spawn(async move {
        let socket = Arc::new(UdpSocket::bind((ip, 0)).await.unwrap());
        let receiver = socket.clone();
        let counting = tokio::spawn(async move {
            let mut rcodes = BTreeMap::new();
            let mut buf = vec![0; 4096];
            while let Ok(Ok((len, _))) =
                tokio::time::timeout(WAIT, receiver.recv_from(&mut buf)).await
            {
                if let Ok(msg) = Message::from_vec(&buf[..len]) {
                    *rcodes
                        .entry(msg.metadata.response_code.to_string())
                        .or_insert(0) += 1;
                }
            }
            rcodes
        });
        let mut tick = tokio::time::interval(FLOOD_GAP);
        for _ in 0..FLOOD_QUERIES {
            tick.tick().await;
            let junk = format!("junk-{:016x}.p2p.", rand::random::<u64>());
            let bytes = query(&junk, RecordType::A).to_vec().unwrap();
            socket.send_to(&bytes, server).await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        counting.await.unwrap()
    })
}

/// One client sends 2,000 made-up names at 500 a second through a daemon whose routing table
/// holds a peer that never answers. Meanwhile another client asks real names that only a
/// lookup can find, one after another: every one is answered with its record. The flooding
/// client's own questions for a cached name and for a name the daemon's store holds for
/// another node are answered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_names_are_answered_during_a_junk_flood_with_a_stalled_peer() {
    let first = TestDaemon::start(p2p_config(&[])).await;
    let bootstrap = first.p2p_addrs.clone();
    let second = TestDaemon::start(p2p_config(&bootstrap)).await;
    let third = TestDaemon::start(p2p_config(&bootstrap)).await;
    let honest = [&first, &second, &third];
    let honest_ids: Vec<PeerId> = honest.iter().map(|d| dht(d).node().peer_id()).collect();
    for daemon in honest {
        let others: Vec<PeerId> = honest_ids
            .iter()
            .filter(|p| **p != dht(daemon).node().peer_id())
            .copied()
            .collect();
        wait_for_peers(daemon, &others).await;
    }
    // Published before the asking daemon exists: the records live on the three honest nodes
    // only, so the asking daemon finds them through lookups.
    for i in 0..REAL_NAMES {
        publish(
            &second,
            &format!("real{i}.p2p."),
            &format!("192.0.2.{}", i + 1),
        )
        .await;
    }
    publish(&second, "cached.p2p.", "192.0.2.200").await;

    let asked = TestDaemon::start(p2p_config(&[tcp_addr(&first)])).await;
    wait_for_peers(&asked, &honest_ids).await;
    // Published once the asking daemon is in the network: its store holds it for the owner.
    for i in 0..HELD_NAMES {
        publish(
            &third,
            &format!("held{i}.p2p."),
            &format!("192.0.2.{}", 201 + i),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    for i in 0..HELD_NAMES {
        let held = Name::from_ascii(format!("held{i}.p2p.")).unwrap();
        while !dht(&asked).node().holds(&held).await.unwrap() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the asking daemon never held {held}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let stalled = Stalled::join(&[&first, &second, &third, &asked], 0).await;
    // Dialed both ways: one dial lost under load must not leave it out.
    dht(&asked).node().dial(stalled.addr.clone()).await.unwrap();
    wait_for_peers(&asked, &[stalled.peer_id]).await;

    let server = asked.addr;
    assert!(
        Client::bind("127.0.0.1")
            .await
            .answered(server, "cached.p2p.", "192.0.2.200")
            .await,
        "cached.p2p resolves before the flood"
    );

    let done = Arc::new(AtomicBool::new(false));
    let flood = flood("127.0.0.1", server, done.clone());
    let mut real = Vec::new();
    for i in 0..REAL_NAMES {
        let (name, ip) = (format!("real{i}.p2p."), format!("192.0.2.{}", i + 1));
        let at = ASK_FROM + ASK_GAP * u32::try_from(i).unwrap();
        real.push(ask_at(at, "127.0.0.2", server, name, ip, done.clone()));
    }
    let mut own = Vec::new();
    for i in 0..REAL_NAMES {
        let at = ASK_FROM + ASK_GAP * u32::try_from(i).unwrap();
        let (name, ip) = ("cached.p2p.".to_owned(), "192.0.2.200".to_owned());
        own.push(ask_at(at, "127.0.0.1", server, name, ip, done.clone()));
    }
    // Each held name once (a second ask would find it cached), late in the flood.
    for i in 0..HELD_NAMES {
        let at = HELD_FROM + ASK_GAP * 2 * u32::try_from(i).unwrap();
        let (name, ip) = (format!("held{i}.p2p."), format!("192.0.2.{}", 201 + i));
        own.push(ask_at(at, "127.0.0.1", server, name, ip, done.clone()));
    }
    let real_failed = failures(real).await;
    let own_failed = failures(own).await;
    let (real_answered, own_answered) = (
        REAL_NAMES - real_failed.len(),
        REAL_NAMES + HELD_NAMES - own_failed.len(),
    );
    let flood_rcodes = flood.await.unwrap();
    // The lookups showed the stalled peer answering nothing: it is set aside.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = dht(&asked).node().status().await.unwrap();
        let known = status.peers.iter().find(|p| p.peer_id == stalled.peer_id);
        if known.is_none_or(|p| !p.in_routing_table && !p.connected) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled peer stayed: {known:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "real names answered during the flood: {real_answered}/{REAL_NAMES}; \
         the flooder's cached and held names: {own_answered}/{}; \
         flood answers by rcode: {flood_rcodes:?}",
        REAL_NAMES + HELD_NAMES
    );
    assert_eq!(
        real_answered, REAL_NAMES,
        "every real name asked during the flood is answered"
    );
    assert_eq!(
        own_answered,
        REAL_NAMES + HELD_NAMES,
        "cached and held names are answered to the flooder"
    );
}

/// What was wrong with each answer of `asks` that was not right (see [`ask_at`]); each must
/// have been asked during the flood.
async fn failures(asks: Vec<JoinHandle<(Option<String>, bool)>>) -> Vec<String> {
    let mut failed = Vec::new();
    for ask in asks {
        let (failure, during) = ask.await.unwrap();
        assert!(during, "every question is asked during the flood");
        failed.extend(failure);
    }
    failed
}

/// Asks `name`/A from a socket of its own on `ip` once `at` has passed, and tells what was
/// wrong with the answer (see [`Client::failure`]), and whether the flood was still on when it
/// asked.
fn ask_at(
    at: Duration,
    ip: &str,
    server: SocketAddr,
    name: String,
    want: String,
    flood_done: Arc<AtomicBool>,
) -> JoinHandle<(Option<String>, bool)> {
    let ip = ip.to_owned();
    tokio::spawn(async move {
        let client = Client::bind(&ip).await;
        tokio::time::sleep(at).await;
        let during = !flood_done.load(Ordering::SeqCst);
        (client.failure(server, &name, &want).await, during)
    })
}
