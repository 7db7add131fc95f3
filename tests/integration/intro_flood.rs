//! Addresses cannot lock others out of an introduction server (issue 15, kind 5): floods of
//! connections kept up (each one the server cuts is opened again about a second later), while
//! a node over TCP (from 127.0.0.1) and one over QUIC (from 127.0.200.1) are identified at their
//! first try, take a relay reservation and keep their connection a while.
//!
//! - One address, 300 idle connections: the per-address limits (`intro.max_pending_per_ip`,
//!   `intro.max_connections_per_ip`). Before them the idle connections filled every handshake
//!   slot (`p2p.max_pending_incoming`).
//! - A thousand addresses, one idle connection each that never starts its handshake, spread
//!   in three ways: over four /24s, one /24 each, and from the TCP node's own /24. Before
//!   handshakes were admitted per transport and by address group (`p2p::admission` in the
//!   crate), the thousand filled the handshake slots, QUIC's too, and a node got in only when
//!   a slot happened to be free (some forty tries).
//! - 48 connections through their handshake (Noise, Yamux) that ask nothing after, against 32
//!   open connections at most (4 per address), spread the same ways. Before open connections
//!   were shared by address group (`intro::per_ip`), they kept every newcomer out until the
//!   idle timeout, and the flood opened them again.
//! - `measure_addresses_tolerated` (ignored, run on request) gives the figures: first tries
//!   served under 100 to 5,000 flooding addresses.
//!
//! (The flood binds each socket to its own 127.x.y.z, which Linux routes on loopback.) Each
//! server runs in this process on loopback; each flood is bounded in count (at most 1,000
//! sockets at once, 5,000 in the measurement) and in time (the test's deadline), and is stopped
//! and the server's directory removed also when a check fails.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
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
use tokio::{io::AsyncReadExt, net::TcpSocket, task::JoinHandle, time::Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::support::reserved_port;

/// How soon the flood opens again a connection the server closed, on average.
const REOPEN: Duration = Duration::from_secs(1);
/// Longest wait for a node to be served. The server cuts a connection that has not finished
/// its handshake after 6 s; the flood opens each cut one again, so a node kept out stays out
/// past this wait.
const WAIT: Duration = Duration::from_secs(20);
/// How long a node served holds its connection while the flood goes on.
const KEEP: Duration = Duration::from_secs(3);
/// Addresses of the many-address floods (one idle connection each).
const SOURCES: usize = 1000;
/// The QUIC node's address (the TCP node's is the kernel's choice, 127.0.0.1), in a /24 of its
/// own: nodes of one address, or one /24, share its place, and the two nodes at once would look
/// like one network holding two.
const QUIC_NODE: Ipv4Addr = Ipv4Addr::new(127, 0, 200, 1);

#[derive(NetworkBehaviour)]
struct Node {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// An introduction server running in this process, stopped and its directory removed when
/// dropped (also when a check panics).
struct Server {
    peer: PeerId,
    tcp: Multiaddr,
    quic: Multiaddr,
    port: u16,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), p2pdns::intro::IntroError>>>,
    dir: PathBuf,
}

impl Server {
    /// A server with the default limits but for what `tune` changes.
    async fn start(name: &str, tune: impl FnOnce(&mut P2pConfig, &mut IntroConfig)) -> Self {
        let dir = std::env::temp_dir().join(format!("p2pdns-{name}-{}", rand::random::<u64>()));
        let port = reserved_port();
        let tcp: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let quic: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
            .parse()
            .unwrap();
        let mut config = P2pConfig {
            listen: Some(vec![tcp.clone(), quic.clone()]),
            external_addresses: vec![tcp.clone()],
            mdns: false,
            upnp: false,
            stun: false,
            dht_mode: DhtMode::Server,
            ..P2pConfig::default()
        };
        let mut limits = IntroConfig::default();
        tune(&mut config, &mut limits);
        let intro = Intro::bind(config, limits, &dir, &[])
            .await
            .expect("the introduction server binds");
        let peer = intro.peer_id();
        let shutdown = CancellationToken::new();
        let task = Some(tokio::spawn(intro.run(shutdown.clone())));
        Self {
            peer,
            tcp: tcp.with(Protocol::P2p(peer)),
            quic: quic.with(Protocol::P2p(peer)),
            port,
            shutdown,
            task,
            dir,
        }
    }

    fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Stops the server and checks that it ran until told to stop.
    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("stopped once");
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connections kept open to the server, one per entry of `sources` (an address may come more
/// than once), until the returned guard is dropped: `hold` opens one from its source and
/// returns once it is closed (`true`: by the server after it was open), and each is opened
/// again after about [`REOPEN`]. `closed` counts the connections the server closed.
fn flood<H, F>(
    target: SocketAddr,
    sources: &[Ipv4Addr],
    closed: &Arc<AtomicUsize>,
    hold: H,
) -> DropGuard
where
    H: Fn(SocketAddr, Ipv4Addr) -> F + Clone + Send + 'static,
    F: Future<Output = bool> + Send,
{
    let stop = CancellationToken::new();
    for &source in sources {
        let stop = stop.clone();
        let closed = closed.clone();
        let hold = hold.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    held = hold(target, source) => if held {
                        closed.fetch_add(1, Ordering::Relaxed);
                    },
                }
                // Patient, as one holding slots is: a flood of new connections as fast as
                // the kernel takes them is a bandwidth attack on the accept queue instead.
                // Spread in time, as independent sources are: connections closed together
                // are not opened again together.
                tokio::time::sleep(REOPEN.mul_f64(rand::random_range(0.5..1.5))).await;
            }
        });
    }
    stop.drop_guard()
}

/// A TCP connection from `source` that never writes: held until the server closes it.
async fn idle(target: SocketAddr, source: Ipv4Addr) -> bool {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let Ok(mut stream) = socket.connect(target).await else {
        return false;
    };
    let mut byte = [0u8; 1];
    // Only the server's closing ends the read.
    let _ = stream.read(&mut byte).await;
    true
}

/// Proposes `protocol` with multistream-select (both lines at once, as libp2p's lazy dialer
/// does) and reads the listener's two answers.
async fn propose<S>(stream: &mut S, protocol: &str) -> std::io::Result<()>
where
    S: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin,
{
    use futures_util::{AsyncReadExt as _, AsyncWriteExt as _};
    let lines = ["/multistream/1.0.0\n".to_owned(), format!("{protocol}\n")];
    let mut out = Vec::new();
    for line in &lines {
        // Shorter than 128 bytes: the length is a one-byte varint.
        out.push(u8::try_from(line.len()).unwrap());
        out.extend_from_slice(line.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.flush().await?;
    for line in &lines {
        let mut len = [0u8; 1];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0; usize::from(len[0])];
        stream.read_exact(&mut answer).await?;
        if answer != line.as_bytes() {
            return Err(std::io::Error::other(format!("{protocol} refused")));
        }
    }
    Ok(())
}

/// A connection from `source` through its handshake (Noise, then Yamux, as a fresh identity),
/// then useless: it asks nothing and refuses every stream the server opens, held until the
/// server closes it.
async fn handshaken(target: SocketAddr, source: Ipv4Addr) -> bool {
    use libp2p::core::{muxing::StreamMuxerExt, upgrade::OutboundConnectionUpgrade};
    let open = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let mut stream = tcp::tokio::TcpStream(socket.connect(target).await?);
        propose(&mut stream, "/noise").await?;
        let key = identity::Keypair::generate_ed25519();
        let noise = noise::Config::new(&key).map_err(std::io::Error::other)?;
        let (_, mut secure) = noise
            .upgrade_outbound(stream, "/noise")
            .await
            .map_err(std::io::Error::other)?;
        propose(&mut secure, "/yamux/1.0.0").await?;
        yamux::Config::default()
            .upgrade_outbound(secure, "/yamux/1.0.0")
            .await
            .map_err(std::io::Error::other)
    };
    let Ok(Ok(mut muxer)) = tokio::time::timeout(WAIT, open).await else {
        return false;
    };
    while std::future::poll_fn(|cx| muxer.poll_inbound_unpin(cx))
        .await
        .is_ok()
    {}
    true
}

/// `count` addresses counted up from `first` (127.0.0.255 is followed by 127.0.1.0).
fn consecutive(first: Ipv4Addr, count: usize) -> Vec<Ipv4Addr> {
    let first = u32::from(first);
    (0..count)
        .map(|i| Ipv4Addr::from(first + u32::try_from(i).unwrap()))
        .collect()
}

/// `count` addresses, each in a /24 of its own (127.1.0.1, 127.1.1.1, ...).
fn one_per_subnet(count: usize) -> Vec<Ipv4Addr> {
    (0..count)
        .map(|i| {
            let i = u32::try_from(i).unwrap();
            Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + (i << 8))
        })
        .collect()
}

/// A node with a fresh identity; its connections come from 127.0.0.1.
fn honest_node() -> libp2p::Swarm<Node> {
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
            // A connection closed before the node was served is a failed try too.
            SwarmEvent::OutgoingConnectionError { .. } | SwarmEvent::ConnectionClosed { .. } => {
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

fn reserved(event: &SwarmEvent<NodeEvent>) -> bool {
    matches!(
        event,
        SwarmEvent::Behaviour(NodeEvent::Relay(
            relay::client::Event::ReservationReqAccepted { .. }
        ))
    )
}

/// What a node got from the server: identified, then a relay reservation, each with the time
/// it took and the failed tries (`None`: not within [`WAIT`]); then whether it kept its
/// connection for [`KEEP`] while the flood went on.
#[derive(Debug)]
struct Served {
    identified: Option<(Duration, usize)>,
    reserved: Option<(Duration, usize)>,
    kept: bool,
}

impl Served {
    fn served_at_first_try(&self) -> bool {
        matches!(self.identified, Some((_, 0))) && self.reserved.is_some() && self.kept
    }
}

/// A fresh node dials `addr`, waits to be identified, asks for a relay reservation over the
/// same address, then holds it for [`KEEP`].
async fn serve_node(server: &Server, addr: &Multiaddr) -> Served {
    let mut node = honest_node();
    if addr.iter().any(|p| p == Protocol::QuicV1) {
        // QUIC dials from the socket it listens on.
        let listen = Multiaddr::from(QUIC_NODE)
            .with(Protocol::Udp(0))
            .with(Protocol::QuicV1);
        node.listen_on(listen).unwrap();
        let listening = tokio::time::timeout(WAIT, async {
            while !matches!(
                node.select_next_some().await,
                SwarmEvent::NewListenAddr { .. }
            ) {}
        });
        listening.await.expect("the QUIC node listens");
    }
    let identified = until(&mut node, Some(addr), identified_by(server.peer)).await;
    let reserved = match identified {
        Some(_) => {
            node.listen_on(addr.clone().with(Protocol::P2pCircuit))
                .unwrap();
            until(&mut node, None, reserved).await
        }
        None => None,
    };
    let closed = async {
        loop {
            if let SwarmEvent::ConnectionClosed { .. } = node.select_next_some().await {
                return;
            }
        }
    };
    let kept = reserved.is_some() && tokio::time::timeout(KEEP, closed).await.is_err();
    Served {
        identified,
        reserved,
        kept,
    }
}

/// Nodes over TCP (from 127.0.0.1) and over QUIC (from [`QUIC_NODE`]), at once.
async fn serve_nodes(server: &Server) -> (Served, Served) {
    tokio::join!(
        serve_node(server, &server.tcp),
        serve_node(server, &server.quic)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_lock_others_out_of_an_introduction_server() {
    const FLOOD: usize = 300;
    let flood_source = Ipv4Addr::new(127, 0, 0, 2);
    let server = Server::start("intro-flood", |_, _| {}).await;
    let closed = Arc::new(AtomicUsize::new(0));
    let stop_flood = flood(server.socket_addr(), &[flood_source; FLOOD], &closed, idle);
    // Let the flood take what it can before the nodes come.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (tcp, quic) = serve_nodes(&server).await;
    let closed = closed.load(Ordering::Relaxed);
    drop(stop_flood);
    println!(
        "flood of {FLOOD} idle connections from {flood_source}: over TCP {tcp:?}, over QUIC \
         {quic:?} ((time, failed tries)); the server closed {closed} flood connections meanwhile"
    );
    // Served at its first try: the flood holds no slot it needs.
    for (transport, served) in [("TCP", &tcp), ("QUIC", &quic)] {
        assert!(
            served.served_at_first_try(),
            "{transport}: the node was kept out: {served:?}"
        );
    }
    server.stop().await;
}

/// Against each of `spreads` in turn, a flood of `hold` connections, one per source (`what`
/// says which), nodes over TCP and QUIC are identified at their first try and reserve. Each
/// spread meets a server of its own (limits as `tune` sets them), as each attack would.
async fn served_despite<H, F>(
    tune: fn(&mut P2pConfig, &mut IntroConfig),
    what: &str,
    spreads: Vec<(&str, Vec<Ipv4Addr>)>,
    hold: H,
) where
    H: Fn(SocketAddr, Ipv4Addr) -> F + Clone + Send + 'static,
    F: Future<Output = bool> + Send,
{
    for (spread, sources) in spreads {
        let server = Server::start("intro-flood-many", tune).await;
        let closed = Arc::new(AtomicUsize::new(0));
        let stop_flood = flood(server.socket_addr(), &sources, &closed, hold.clone());
        // Let the flood take what it can before the nodes come.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (tcp, quic) = serve_nodes(&server).await;
        let closed = closed.load(Ordering::Relaxed);
        drop(stop_flood);
        println!(
            "{} {what} {spread}: over TCP {tcp:?}, over QUIC {quic:?} ((time, failed tries)); \
             the server closed {closed} flood connections",
            sources.len()
        );
        for (transport, served) in [("TCP", &tcp), ("QUIC", &quic)] {
            assert!(
                served.served_at_first_try(),
                "{transport}, {what} {spread}: the node was kept out: {served:?}"
            );
        }
        server.stop().await;
    }
}

/// A thousand addresses, one idle connection each, in three spreads. Before handshakes were
/// admitted by address group, the node got in only after some forty tries, when a slot
/// happened to be free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_addresses_cannot_lock_others_out_of_an_introduction_server() {
    p2pdns::os::limits::raise_nofile_limit();
    let spreads = vec![
        (
            "over four /24s",
            consecutive(Ipv4Addr::new(127, 0, 1, 0), SOURCES),
        ),
        ("one /24 each", one_per_subnet(SOURCES)),
        (
            "from the node's own /24 on",
            consecutive(Ipv4Addr::new(127, 0, 0, 2), SOURCES),
        ),
    ];
    served_despite(
        |_, _| {},
        "idle connections that never start their handshake",
        spreads,
        idle,
    )
    .await;
}

/// Connections through their handshake that ask nothing after, more than the server's open
/// connections (`p2p.max_connections`, 32 here, at most 4 from one address): before open
/// connections were shared by address group, they kept every newcomer out until the server's
/// idle timeout, a minute, and the flood opened them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshaken_idle_connections_cannot_lock_others_out_of_an_introduction_server() {
    let twelve = consecutive(Ipv4Addr::new(127, 0, 1, 0), 12);
    let spreads = vec![
        ("from 12 addresses of one /24, 4 each", twelve.repeat(4)),
        ("from 48 /24s, one each", one_per_subnet(48)),
        (
            "from 48 addresses of the node's own /24, one each",
            consecutive(Ipv4Addr::new(127, 0, 0, 2), 48),
        ),
    ];
    let tune: fn(&mut P2pConfig, &mut IntroConfig) = |p2p, intro| {
        p2p.max_connections = 32;
        intro.max_connections_per_ip = 4;
    };
    served_despite(
        tune,
        "connections, handshake done, idle,",
        spreads,
        handshaken,
    )
    .await;
}

/// One try of a fresh node: dials `addr` once and waits to be identified; `false` when the
/// connection failed or nothing came within [`WAIT`].
async fn first_try(server: &Server, addr: &Multiaddr) -> bool {
    let mut node = honest_node();
    node.dial(addr.clone()).unwrap();
    let identified = identified_by(server.peer);
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, node.select_next_some()).await {
            Ok(SwarmEvent::OutgoingConnectionError { .. }) | Err(_) => return false,
            Ok(event) if identified(&event) => return true,
            Ok(_) => {}
        }
    }
}

/// The figures of the README and of issue 15: how many flooding addresses (one idle
/// connection each, one /24 each) an introduction server takes before fresh nodes are kept
/// out, as first tries served over TCP and QUIC:
/// `cargo test --test integration intro_flood::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of a minute or two, run on request"]
async fn measure_addresses_tolerated() {
    const TRIES: usize = 10;
    p2pdns::os::limits::raise_nofile_limit();
    let server = Server::start("intro-flood-measure", |_, _| {}).await;
    for sources in [100, 200, 300, 500, 1000, 2000, 5000] {
        let closed = Arc::new(AtomicUsize::new(0));
        let stop_flood = flood(
            server.socket_addr(),
            &one_per_subnet(sources),
            &closed,
            idle,
        );
        // Past the first handshake timeout: the flood's own rhythm, not its first burst.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut served = [0; 2];
        for _ in 0..TRIES {
            served[0] += usize::from(first_try(&server, &server.tcp).await);
            served[1] += usize::from(first_try(&server, &server.quic).await);
        }
        drop(stop_flood);
        println!(
            "{sources} flooding addresses: first tries served {}/{TRIES} over TCP, {}/{TRIES} \
             over QUIC; the server closed {} flood connections",
            served[0],
            served[1],
            closed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    server.stop().await;
}
