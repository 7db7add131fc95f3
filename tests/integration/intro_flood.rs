//! One address cannot lock others out of an introduction server (issue 15, kind 5): 300 idle
//! TCP connections from 127.0.0.2, kept up (each one the server cuts is opened again), while
//! nodes from 127.0.0.1 connect over TCP and over QUIC, are identified at their first try, and
//! one takes a relay reservation. (The flood binds its sockets to 127.0.0.2; libp2p's TCP
//! dials from the kernel's choice, 127.0.0.1 on loopback.) Before the per-address limits (`intro.max_pending_per_ip`,
//! `intro.max_connections_per_ip`), the idle connections filled every handshake slot
//! (`p2p.max_pending_incoming`) and the node never got in.
//!
//! The server runs in this process on loopback; the flood is bounded in count (300 sockets at
//! once) and in time (the test's deadline).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use libp2p::{
    Multiaddr, PeerId, SwarmBuilder, identify, identity,
    multiaddr::Protocol,
    noise, ping, relay,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use p2pdns::{
    config::{DhtMode, IntroConfig, P2pConfig},
    intro::Intro,
};
use tokio::{io::AsyncReadExt, net::TcpSocket, time::Instant};
use tokio_util::sync::CancellationToken;

/// Idle connections the flooding address keeps open.
const FLOOD: usize = 300;
/// The flood's source address.
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// How soon the flood opens again a connection the server closed.
const REOPEN: Duration = Duration::from_secs(1);
/// Longest wait for the node from the other address to be served. The server cuts a
/// connection that has not finished its handshake after 6 s; the flood opens each cut one
/// again, so without per-address limits this wait ends unserved.
const WAIT: Duration = Duration::from_secs(20);

#[derive(NetworkBehaviour)]
struct Node {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// A free TCP port on 127.0.0.1 (the server's TCP and QUIC listen on it, and it is the
/// external address its relay offers).
fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The introduction server, bound, with its TCP and QUIC addresses.
async fn start_intro(dir: &std::path::Path) -> (Intro, Multiaddr, Multiaddr) {
    let port = free_port();
    let tcp: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let quic: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
        .parse()
        .unwrap();
    let config = P2pConfig {
        listen: vec![tcp.clone(), quic.clone()],
        external_addresses: vec![tcp.clone()],
        mdns: false,
        upnp: false,
        stun: false,
        dht_mode: DhtMode::Server,
        ..P2pConfig::default()
    };
    let intro = Intro::bind(config, IntroConfig::default(), dir, &[])
        .await
        .expect("the introduction server binds");
    let peer = intro.peer_id();
    (
        intro,
        tcp.with(Protocol::P2p(peer)),
        quic.with(Protocol::P2p(peer)),
    )
}

/// Keeps `FLOOD` idle TCP connections from 127.0.0.2 to `target` open until `stop`: each one
/// the server closes is opened again after [`REOPEN`]. Counts the connections the server
/// closed.
fn flood(target: SocketAddr, stop: CancellationToken, closed: Arc<AtomicUsize>) {
    for _ in 0..FLOOD {
        let stop = stop.clone();
        let closed = closed.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind((FLOOD_SOURCE, 0).into()).unwrap();
                let Ok(mut stream) = socket.connect(target).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut byte = [0u8; 1];
                tokio::select! {
                    () = stop.cancelled() => return,
                    // Never writes: only the server's closing ends the read.
                    _ = stream.read(&mut byte) => { closed.fetch_add(1, Ordering::Relaxed); }
                }
                // Patient, as one holding slots is: a flood of new connections as fast as
                // the kernel takes them is a bandwidth attack on the accept queue instead.
                tokio::time::sleep(REOPEN).await;
            }
        });
    }
}

/// A node with a fresh identity; its connections come from 127.0.0.1.
fn node_from_other_address() -> libp2p::Swarm<Node> {
    SwarmBuilder::with_existing_identity(identity::Keypair::generate_ed25519())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key, relay| Node {
            relay,
            identify: identify::Behaviour::new(identify::Config::new(
                "/intro-flood-test/1.0.0".to_owned(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
        })
        .unwrap()
        .build()
}

/// Drives `swarm` until `done` says so for an event, dialing `addr` (if any) first and again
/// after each failed try; returns the time it took and the failed tries, or `None` past
/// [`WAIT`].
async fn until(
    swarm: &mut libp2p::Swarm<Node>,
    addr: Option<&Multiaddr>,
    done: impl Fn(&SwarmEvent<NodeEvent>) -> bool,
) -> Option<(Duration, usize)> {
    let start = Instant::now();
    let deadline = start + WAIT;
    let mut failed = 0;
    if let Some(addr) = addr {
        swarm.dial(addr.clone()).unwrap();
    }
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .ok()?;
        match &event {
            SwarmEvent::OutgoingConnectionError { .. } => {
                failed += 1;
                if let Some(addr) = addr {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    swarm.dial(addr.clone()).unwrap();
                }
            }
            event if done(event) => return Some((start.elapsed(), failed)),
            _ => {}
        }
    }
}

fn identified_by(peer: PeerId) -> impl Fn(&SwarmEvent<NodeEvent>) -> bool {
    move |event| {
        matches!(
            event,
            SwarmEvent::Behaviour(NodeEvent::Identify(identify::Event::Received { peer_id, .. }))
                if *peer_id == peer
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_lock_others_out_of_an_introduction_server() {
    let dir = std::env::temp_dir().join(format!("p2pdns-intro-flood-{}", rand::random::<u64>()));
    let (intro, tcp_addr, quic_addr) = start_intro(&dir).await;
    let peer = intro.peer_id();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(intro.run(shutdown.clone()));
    let Some(Protocol::Tcp(port)) = tcp_addr.iter().nth(1) else {
        panic!("{tcp_addr}");
    };

    let stop_flood = CancellationToken::new();
    let closed = Arc::new(AtomicUsize::new(0));
    flood(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        stop_flood.clone(),
        closed.clone(),
    );
    // Let the flood take what it can before the node comes.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut node = node_from_other_address();
    let mut quic_node = node_from_other_address();
    let (tcp, quic) = tokio::join!(
        until(&mut node, Some(&tcp_addr), identified_by(peer)),
        until(&mut quic_node, Some(&quic_addr), identified_by(peer)),
    );
    // A relay reservation: the slot through which a node behind NAT is reached.
    let circuit = tcp_addr.clone().with(Protocol::P2pCircuit);
    node.listen_on(circuit).unwrap();
    let reserved = until(&mut node, None, |event| {
        matches!(
            event,
            SwarmEvent::Behaviour(NodeEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. }
            ))
        )
    })
    .await;
    let closed = closed.load(Ordering::Relaxed);
    stop_flood.cancel();
    println!(
        "flood of {FLOOD} idle connections from {FLOOD_SOURCE}: identified over TCP {tcp:?}, over \
         QUIC {quic:?}, reserved {reserved:?} ((time, failed tries)); the server closed \
         {closed} flood connections meanwhile"
    );
    // Served at its first try: the flood holds no slot it needs.
    assert!(
        matches!(tcp, Some((_, 0))),
        "TCP: the node from 127.0.0.1 was kept out"
    );
    assert!(
        matches!(quic, Some((_, 0))),
        "QUIC: the node from 127.0.0.1 was kept out"
    );
    assert!(reserved.is_some(), "no relay reservation for the node");

    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
