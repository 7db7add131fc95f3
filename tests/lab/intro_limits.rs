//! Hostile clients against the real introduction server (`p2pdns intro`): its limits hold and it
//! keeps serving.
//!
//! Each test starts its own `p2pdns intro` process on a loopback TCP port, with a small `[intro]`
//! and `[p2p]` configuration, and drives it with libp2p swarms built here, each a client with a
//! fresh identity (relay client, identify, ping, rendezvous client) unless a test gives several
//! the same key. Every test fills one limit, checks that the request past it is refused with the
//! protocol's own error, that what was granted before keeps working, that the slot comes back
//! when its holder leaves, and that a well-behaved newcomer is still served afterwards.
//!
//! libp2p's checks alone would grant one more than the configured number (relay reservations
//! and circuits per peer, rendezvous registrations in all); the server compensates, and these
//! tests hold it to the exact numbers.
//!
//! Everything listens on 127.0.0.1 only. Every wait has a deadline, and the server is killed and
//! its temporary directory removed when the test ends, also when it panics.

use std::{
    error::Error,
    net::{Ipv4Addr, TcpListener},
    process::Command,
    time::Duration,
};

use crate::process::{Proc, TempDir};
use futures_util::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, identify, identity,
    multiaddr::Protocol,
    noise, ping, relay,
    relay::outbound::hop::{ConnectError, ReserveError},
    rendezvous::{self, ErrorCode, Namespace},
    swarm::{
        ConnectionError, ConnectionId, DialError, NetworkBehaviour, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
    tcp, yamux,
};
use tokio::{io::AsyncReadExt, net::TcpStream, time::Instant};

const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");

/// Longest wait for one expected event (or for the server to start).
const WAIT: Duration = Duration::from_secs(15);
/// Between two looks at something polled (the server's log, a slot coming back).
const POLL: Duration = Duration::from_millis(50);
/// How often test clients ping each connection: traffic for the circuit limits, and a proof
/// that a connection is still alive.
const PING_EVERY: Duration = Duration::from_millis(50);
/// The introduction server's identify protocol version (`src/p2p/mod.rs`).
const INTRO_PROTOCOL_VERSION: &str = "/p2pdns/1.0.0";
/// The introduction server's Kademlia protocol.
const KAD_PROTOCOL: &str = "/p2pdns/kad/1.0.0";
/// How long the server lets an incoming connection sit in its handshake (`DIAL_TIMEOUT` in
/// `src/p2p/mod.rs`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(6);

// ---------------------------------------------------------------------------------------------
// The introduction server
// ---------------------------------------------------------------------------------------------

/// A running `p2pdns intro` with its own temporary directory; killed, and the directory
/// removed, on drop.
struct Intro {
    // Declared before the directory: the process dies before its directory goes.
    proc: Proc,
    _dir: TempDir,
    /// `/ip4/127.0.0.1/tcp/PORT/p2p/ID`, as the server logged it for `--bootstrap`.
    addr: Multiaddr,
    peer_id: PeerId,
}

impl Intro {
    /// Starts the server with `config` (TOML) on a free loopback TCP port, which is also its
    /// external address (the relay offers itself only once it has one). Tries another port if
    /// something took the chosen one in between.
    async fn start(label: &str, config: &str) -> Self {
        let dir = TempDir::new(label);
        let config_path = dir.write("p2pdns.toml", config);
        for attempt in 1..=3 {
            let port = free_tcp_port();
            let listen = format!("/ip4/127.0.0.1/tcp/{port}");
            let mut command = Command::new(BIN);
            command
                .env("HOME", dir.subdir("home"))
                .env("NO_COLOR", "1")
                .env_remove("P2PDNS_CONFIG")
                .env_remove("P2PDNS_DATA_DIR")
                .env_remove("RUST_LOG")
                .env_remove("XDG_CONFIG_HOME")
                .env_remove("XDG_DATA_HOME")
                .arg("--config")
                .arg(&config_path)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["intro", "--p2p-listen", &listen, "--external-addr", &listen])
                .args(["--stun-listen", "none"]);
            let mut proc = Proc::spawn(&format!("intro-{attempt}"), command, dir.path());
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(addr) = bootstrap_addr(&proc.stderr()) {
                    let Some(Protocol::P2p(peer_id)) = addr.iter().last() else {
                        panic!(
                            "the logged address {addr} names no peer:\n{}",
                            proc.output()
                        );
                    };
                    assert!(
                        addr.to_string().starts_with(&listen),
                        "{addr} is not {listen}"
                    );
                    return Self {
                        proc,
                        _dir: dir,
                        addr,
                        peer_id,
                    };
                }
                if let Some(status) = proc.try_exit() {
                    if proc.stderr().contains("in use") && attempt < 3 {
                        break;
                    }
                    panic!(
                        "the introduction server exited ({status}) before serving:\n{}",
                        proc.output()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "the introduction server logged no address within {WAIT:?}:\n{}",
                    proc.output()
                );
                tokio::time::sleep(POLL).await;
            }
        }
        panic!("found no free port for the introduction server in 3 tries");
    }

    /// The relay address through which a peer holding a reservation here is reached.
    fn circuit_to(&self, target: PeerId) -> Multiaddr {
        self.addr
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(target))
    }

    /// Fails the test if the server died or panicked.
    fn assert_alive(&mut self) {
        let status = self.proc.try_exit();
        let log = self.proc.stderr();
        assert!(status.is_none(), "the server exited ({status:?}):\n{log}");
        assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    }
}

/// The first address in a `nodes join with --bootstrap addr=...` log line.
fn bootstrap_addr(log: &str) -> Option<Multiaddr> {
    log.lines()
        .filter(|l| l.contains("nodes join with --bootstrap"))
        .find_map(|l| l.split("addr=").nth(1))
        .and_then(|a| a.trim().parse().ok())
}

/// A TCP port on 127.0.0.1 free right now (the kernel picks it; it is released for the server).
fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a TCP socket on port 0")
        .port()
}

/// A configuration: the P2P node without mDNS and UPnP (nothing leaves loopback), the given
/// `[p2p]` limits, and the given `[intro]` section.
fn config(p2p: &str, intro: &str) -> String {
    format!("[p2p]\nmdns = false\nupnp = false\nstun = false\n{p2p}\n[intro]\n{intro}\n")
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

#[derive(NetworkBehaviour)]
struct Client {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rendezvous: rendezvous::client::Behaviour,
}

/// A client swarm over TCP with identity `key`, whose rendezvous registrations are signed with
/// `record_key` (the same key, unless the test forges records).
fn client_with(key: identity::Keypair, record_key: identity::Keypair) -> Swarm<Client> {
    SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("TCP transport")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("relay client transport")
        .with_behaviour(|key, relay| Client {
            relay,
            identify: identify::Behaviour::new(identify::Config::new(
                "/intro-limits-test/1.0.0".to_owned(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_EVERY)),
            rendezvous: rendezvous::client::Behaviour::new(record_key),
        })
        .expect("client behaviour")
        // Connections must end because the server ends them, never for idleness.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}

/// A client with a fresh identity.
fn client() -> Swarm<Client> {
    let key = identity::Keypair::generate_ed25519();
    client_with(key.clone(), key)
}

/// Named client swarms, all driven whenever the test waits for one of them.
#[derive(Default)]
struct Swarms(Vec<(&'static str, Swarm<Client>)>);

impl Swarms {
    fn add(&mut self, name: &'static str, swarm: Swarm<Client>) -> PeerId {
        assert!(
            !self.0.iter().any(|(n, _)| *n == name),
            "{name} added twice"
        );
        let id = *swarm.local_peer_id();
        self.0.push((name, swarm));
        id
    }

    fn get(&mut self, name: &str) -> &mut Swarm<Client> {
        self.0
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no client named {name}"))
    }

    fn id(&mut self, name: &str) -> PeerId {
        *self.get(name).local_peer_id()
    }

    /// Drops a client: its connections close.
    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| *n != name);
    }

    /// The next event of any client.
    async fn next(&mut self) -> (&'static str, SwarmEvent<ClientEvent>) {
        assert!(!self.0.is_empty(), "no client to wait for");
        let pending = self.0.iter_mut().map(|(name, swarm)| {
            let name = *name;
            Box::pin(async move { (name, swarm.select_next_some().await) })
        });
        futures_util::future::select_all(pending).await.0
    }

    /// Drives every client until `f` returns something for an event; fails after [`WAIT`].
    async fn until<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&'static str, SwarmEvent<ClientEvent>) -> Option<T>,
    ) -> T {
        let wait = async {
            loop {
                let (name, event) = self.next().await;
                if let Some(found) = f(name, event) {
                    return found;
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("gave up after {WAIT:?} waiting for {what}"))
    }

    /// Connects `name` to the server over a new connection (even when it has one) and waits
    /// until the server answered identify on it: only an accepted connection does. Returns the
    /// connection and what the server said, or how the connection ended.
    async fn connect(
        &mut self,
        name: &str,
        intro: &Intro,
    ) -> Result<(ConnectionId, identify::Info), String> {
        let opts = DialOpts::peer_id(intro.peer_id)
            .addresses(vec![intro.addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        self.get(name)
            .dial(opts)
            .unwrap_or_else(|e| panic!("{name} cannot dial the server: {e}"));
        let what = format!("{name}'s connection to the server to be served or closed");
        self.until(&what, |from, event| {
            if from != name {
                return None;
            }
            match event {
                SwarmEvent::Behaviour(ClientEvent::Identify(identify::Event::Received {
                    connection_id,
                    info,
                    ..
                })) if connection_id == id => Some(Ok((id, info))),
                SwarmEvent::OutgoingConnectionError {
                    connection_id,
                    error,
                    ..
                } if connection_id == id => Some(Err(format!("dial failed: {error}"))),
                SwarmEvent::ConnectionClosed {
                    connection_id,
                    cause,
                    ..
                } if connection_id == id => Some(Err(format!("closed: {cause:?}"))),
                _ => None,
            }
        })
        .await
    }

    /// [`Swarms::connect`] again until it succeeds: a slot another client gave up comes back
    /// once the server has seen it go.
    async fn connect_eventually(&mut self, name: &str, intro: &Intro) -> identify::Info {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.connect(name, intro).await {
                Ok((_, info)) => return info,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("{name}: not yet ({error}); trying again");
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => panic!("{name} still refused after {WAIT:?}: {error}"),
            }
        }
    }

    /// Asks the server for a relay reservation from `name`: what the server granted each
    /// circuit, or the error the reservation listener closed with.
    async fn reserve(&mut self, name: &str, intro: &Intro) -> Result<Granted, std::io::Error> {
        let listener = self
            .get(name)
            .listen_on(intro.addr.clone().with(Protocol::P2pCircuit))
            .expect("listen on a relay circuit address");
        let relay = intro.peer_id;
        self.until(&format!("{name}'s reservation answer"), |from, event| {
            if from != name {
                return None;
            }
            match event {
                SwarmEvent::Behaviour(ClientEvent::Relay(
                    relay::client::Event::ReservationReqAccepted {
                        relay_peer_id,
                        limit,
                        ..
                    },
                )) if relay_peer_id == relay => Some(Ok(Granted {
                    duration: limit.and_then(|l| l.duration()),
                    bytes: limit.and_then(|l| l.data_in_bytes()),
                })),
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if listener_id == listener => Some(Err(reason.err().unwrap_or_else(|| {
                    std::io::Error::other("the listener closed without an error")
                }))),
                _ => None,
            }
        })
        .await
    }

    /// [`Swarms::reserve`] again until the server grants it (a slot freed by a client that left).
    async fn reserve_eventually(&mut self, name: &str, intro: &Intro) -> Granted {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.reserve(name, intro).await {
                Ok(granted) => return granted,
                Err(error) if Instant::now() < deadline && refused_reservation(&error) => {
                    eprintln!("{name}: reservation not yet granted; trying again");
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => panic!("{name} got no reservation: {error:?}"),
            }
        }
    }

    /// Dials `target` from `name` through the server's relay (a new circuit even if one is
    /// open): the relayed connection, or the dial error.
    async fn dial_circuit(
        &mut self,
        name: &str,
        target: &str,
        intro: &Intro,
    ) -> Result<ConnectionId, DialError> {
        let target = self.id(target);
        let opts = DialOpts::peer_id(target)
            .addresses(vec![intro.circuit_to(target)])
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        self.get(name)
            .dial(opts)
            .unwrap_or_else(|e| panic!("{name} cannot dial through the relay: {e}"));
        self.until(&format!("{name}'s relayed dial to end"), |from, event| {
            if from != name {
                return None;
            }
            match event {
                SwarmEvent::ConnectionEstablished {
                    connection_id,
                    endpoint,
                    ..
                } if connection_id == id => {
                    assert!(endpoint.is_relayed(), "{endpoint:?}");
                    Some(Ok(id))
                }
                SwarmEvent::OutgoingConnectionError {
                    connection_id,
                    error,
                    ..
                } if connection_id == id => Some(Err(error)),
                _ => None,
            }
        })
        .await
    }

    /// Registers `name` under `namespace` at the server: the TTL granted, or the error code.
    async fn register(
        &mut self,
        name: &str,
        intro: &Intro,
        namespace: &str,
        ttl: u64,
    ) -> Result<u64, ErrorCode> {
        let namespace = Namespace::new(namespace.to_owned()).expect("a short namespace");
        self.get(name)
            .behaviour_mut()
            .rendezvous
            .register(namespace.clone(), intro.peer_id, Some(ttl))
            .expect("the client has an external address to register");
        let what = format!("{name}'s registration answer for {namespace}");
        self.until(&what, |from, event| match event {
            SwarmEvent::Behaviour(ClientEvent::Rendezvous(
                rendezvous::client::Event::Registered {
                    namespace: ns, ttl, ..
                },
            )) if from == name && ns == namespace => Some(Ok(ttl)),
            SwarmEvent::Behaviour(ClientEvent::Rendezvous(
                rendezvous::client::Event::RegisterFailed {
                    namespace: ns,
                    error,
                    ..
                },
            )) if from == name && ns == namespace => Some(Err(error)),
            _ => None,
        })
        .await
    }

    /// The peers registered under `namespace` at the server, as `name` discovers them.
    async fn discover(&mut self, name: &str, intro: &Intro, namespace: &str) -> Vec<PeerId> {
        let namespace = Namespace::new(namespace.to_owned()).expect("a short namespace");
        self.get(name).behaviour_mut().rendezvous.discover(
            Some(namespace),
            None,
            None,
            intro.peer_id,
        );
        self.until(&format!("{name}'s discovery"), |from, event| match event {
            SwarmEvent::Behaviour(ClientEvent::Rendezvous(
                rendezvous::client::Event::Discovered { registrations, .. },
            )) if from == name => {
                let mut peers: Vec<PeerId> =
                    registrations.iter().map(|r| r.record.peer_id()).collect();
                peers.sort();
                Some(peers)
            }
            SwarmEvent::Behaviour(ClientEvent::Rendezvous(
                rendezvous::client::Event::DiscoverFailed { error, .. },
            )) if from == name => panic!("{name}'s discovery failed: {error:?}"),
            _ => None,
        })
        .await
    }

    /// Waits until a ping from `name` succeeded on `connection`: it is open and carries traffic.
    async fn pinged(&mut self, name: &str, connection: ConnectionId) {
        let what = format!("a ping from {name} on {connection}");
        self.until(&what, |from, event| match event {
            SwarmEvent::Behaviour(ClientEvent::Ping(ping::Event {
                connection: c,
                result,
                ..
            })) if from == name && c == connection => result.is_ok().then_some(()),
            SwarmEvent::ConnectionClosed {
                connection_id,
                cause,
                ..
            } if from == name && connection_id == connection => {
                panic!("{name}'s connection {connection} closed: {cause:?}")
            }
            _ => None,
        })
        .await;
    }

    /// Closes every connection `name` has to the server and waits until they are closed.
    async fn leave(&mut self, name: &str, intro: &Intro) {
        let intro_id = intro.peer_id;
        if self.get(name).disconnect_peer_id(intro_id).is_ok() {
            self.until(&format!("{name} to leave"), |from, event| match event {
                SwarmEvent::ConnectionClosed {
                    peer_id,
                    num_established: 0,
                    ..
                } if from == name && peer_id == intro_id => Some(()),
                _ => None,
            })
            .await;
        }
        self.remove(name);
    }
}

/// What the relay granted a reservation: each circuit's duration and bytes.
#[derive(Debug, PartialEq, Eq)]
struct Granted {
    duration: Option<Duration>,
    bytes: Option<u64>,
}

/// The first error of type `E` in `error`'s chain (looking inside `io::Error`s, whose `source`
/// skips the error they wrap).
fn cause<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<E>() {
            return Some(found);
        }
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => current.source(),
        };
    }
    None
}

/// Did the relay refuse the reservation for a resource limit?
fn refused_reservation(error: &std::io::Error) -> bool {
    matches!(
        cause::<ReserveError>(error),
        Some(ReserveError::ResourceLimitExceeded)
    )
}

/// Did the relay refuse the circuit for a resource limit?
fn refused_circuit(error: &DialError) -> bool {
    let DialError::Transport(attempts) = error else {
        return false;
    };
    attempts.iter().any(|(_, e)| {
        matches!(
            cause::<ConnectError>(e),
            Some(ConnectError::ResourceLimitExceeded)
        )
    })
}

/// A newcomer with a fresh identity connects and the server identifies itself as a p2pdns
/// introduction server that still offers relaying, rendezvous and the DHT; the server process
/// is alive and did not panic.
async fn assert_still_serves(swarms: &mut Swarms, intro: &mut Intro, name: &'static str) {
    swarms.add(name, client());
    let info = swarms.connect_eventually(name, intro).await;
    assert_identifies_as_intro(&info, intro);
    intro.assert_alive();
}

fn assert_identifies_as_intro(info: &identify::Info, intro: &Intro) {
    assert_eq!(info.public_key.to_peer_id(), intro.peer_id);
    assert_eq!(info.protocol_version, INTRO_PROTOCOL_VERSION);
    for protocol in [
        relay::HOP_PROTOCOL_NAME,
        rendezvous::PROTOCOL_NAME,
        StreamProtocol::new(KAD_PROTOCOL),
    ] {
        assert!(
            info.protocols.contains(&protocol),
            "{protocol} missing from {:?}",
            info.protocols
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Relay reservations
// ---------------------------------------------------------------------------------------------

/// `intro.max_reservations` caps the relay slots of all clients together: three clients get
/// one with the configured circuit limits, a fourth is refused with RESOURCE_LIMIT_EXCEEDED,
/// a client that leaves frees its slot for the refused one, and the cap holds again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_in_all_are_capped_and_a_freed_slot_is_granted_again() {
    let mut intro = Intro::start(
        "reservations",
        &config(
            "",
            "max_reservations = 3\nmax_reservations_per_peer = 1\n\
             circuit_duration_secs = 90\ncircuit_bytes = 65536",
        ),
    )
    .await;
    let mut swarms = Swarms::default();
    let expected = Granted {
        duration: Some(Duration::from_secs(90)),
        bytes: Some(65536),
    };
    for name in ["c1", "c2", "c3"] {
        swarms.add(name, client());
        let granted = swarms.reserve(name, &intro).await;
        assert_eq!(granted.expect("a free slot"), expected, "{name}");
    }

    swarms.add("c4", client());
    let refused = swarms.reserve("c4", &intro).await.expect_err("slots full");
    assert!(refused_reservation(&refused), "{refused:?}");

    swarms.leave("c1", &intro).await;
    assert_eq!(swarms.reserve_eventually("c4", &intro).await, expected);

    swarms.add("c5", client());
    let refused = swarms
        .reserve("c5", &intro)
        .await
        .expect_err("slots full again");
    assert!(refused_reservation(&refused), "{refused:?}");

    assert_still_serves(&mut swarms, &mut intro, "newcomer").await;
    // Its reservation once a holder leaves.
    swarms.leave("c2", &intro).await;
    assert_eq!(
        swarms.reserve_eventually("newcomer", &intro).await,
        expected
    );
}

/// `intro.max_reservations_per_peer` caps one peer's slots however many connections it opens
/// (here three processes sharing one key), while other peers still get theirs; when one of its
/// connections goes, the peer may reserve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_per_peer_are_capped_across_connections() {
    let per_peer = 1;
    let mut intro = Intro::start(
        "reservations-per-peer",
        &config(
            "max_connections_per_peer = 8",
            &format!("max_reservations = 10\nmax_reservations_per_peer = {per_peer}"),
        ),
    )
    .await;
    let mut swarms = Swarms::default();
    let key = identity::Keypair::generate_ed25519();
    let granted = per_peer;
    let names = ["p1", "p2", "p3", "p4"];
    for name in names {
        swarms.add(name, client_with(key.clone(), key.clone()));
    }
    for name in &names[..granted] {
        swarms.reserve(name, &intro).await.expect("under the cap");
    }
    for name in &names[granted..] {
        let refused = swarms
            .reserve(name, &intro)
            .await
            .expect_err("over the cap");
        assert!(refused_reservation(&refused), "{name}: {refused:?}");
    }

    // Another peer is not affected.
    swarms.add("other", client());
    swarms
        .reserve("other", &intro)
        .await
        .expect("another peer's slot");

    swarms.leave("p1", &intro).await;
    swarms.reserve_eventually(names[granted], &intro).await;

    assert_still_serves(&mut swarms, &mut intro, "newcomer").await;
    swarms.reserve("newcomer", &intro).await.expect("a slot");
}

// ---------------------------------------------------------------------------------------------
// Relay circuits
// ---------------------------------------------------------------------------------------------

/// `intro.max_circuits_per_peer` and `intro.max_circuits`: one source cannot open circuits
/// past its share, another then fills the rest and is refused past the total, and a closed
/// circuit frees its place. Circuits granted before keep carrying traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_per_peer_and_in_all_are_capped() {
    let per_peer = 1;
    let total = 3;
    let mut intro = Intro::start(
        "circuits",
        &config(
            "",
            &format!("max_circuits = {total}\nmax_circuits_per_peer = {per_peer}"),
        ),
    )
    .await;
    let mut swarms = Swarms::default();
    swarms.add("target", client());
    swarms.reserve("target", &intro).await.expect("a slot");

    swarms.add("b", client());
    let b_share = per_peer;
    let mut b_circuits = Vec::new();
    for _ in 0..b_share {
        let circuit = swarms.dial_circuit("b", "target", &intro).await;
        b_circuits.push(circuit.expect("within b's share"));
    }
    let refused = swarms
        .dial_circuit("b", "target", &intro)
        .await
        .expect_err("past b's share");
    assert!(refused_circuit(&refused), "{refused:?}");

    // Sources with one circuit each fill the total; then one without any is refused.
    let mut granted: Vec<(&str, ConnectionId)> = b_circuits.iter().map(|c| ("b", *c)).collect();
    for name in ["f1", "f2", "f3"].into_iter().take(total - b_share) {
        swarms.add(name, client());
        let circuit = swarms.dial_circuit(name, "target", &intro).await;
        granted.push((name, circuit.expect("under the total")));
    }
    assert_eq!(granted.len(), total);
    swarms.add("late", client());
    let refused = swarms
        .dial_circuit("late", "target", &intro)
        .await
        .expect_err("past the total");
    assert!(refused_circuit(&refused), "{refused:?}");

    // What was granted still works.
    for (name, circuit) in &granted {
        swarms.pinged(name, *circuit).await;
    }

    // b closes a circuit: the late source may open one.
    assert!(swarms.get("b").close_connection(b_circuits[0]));
    let deadline = Instant::now() + WAIT;
    let circuit = loop {
        match swarms.dial_circuit("late", "target", &intro).await {
            Ok(circuit) => break circuit,
            Err(error) if refused_circuit(&error) && Instant::now() < deadline => {
                eprintln!("late: circuit not yet granted; trying again");
                tokio::time::sleep(POLL).await;
            }
            Err(error) => panic!("no circuit after b closed one: {error:?}"),
        }
    };
    swarms.pinged("late", circuit).await;

    assert_still_serves(&mut swarms, &mut intro, "newcomer").await;
}

/// A relayed connection through a server started for one test of the circuit limits: "target"
/// holds a reservation there and "source" has dialed it through the relay.
struct Circuit {
    intro: Intro,
    swarms: Swarms,
    /// What the relay granted the target's reservation.
    granted: Granted,
    /// The source's relayed connection.
    id: ConnectionId,
    source: PeerId,
    target: PeerId,
    /// When the relayed connection was established.
    opened: Instant,
}

impl Circuit {
    /// Starts a server with the `[intro]` section `intro_config` and opens the circuit.
    async fn open(label: &str, intro_config: &str) -> Self {
        let intro = Intro::start(label, &config("", intro_config)).await;
        let mut swarms = Swarms::default();
        let target = swarms.add("target", client());
        let granted = swarms.reserve("target", &intro).await.expect("a slot");
        let source = swarms.add("source", client());
        let id = swarms
            .dial_circuit("source", "target", &intro)
            .await
            .expect("a circuit");
        Self {
            intro,
            swarms,
            granted,
            id,
            source,
            target,
            opened: Instant::now(),
        }
    }

    /// Drives the clients until the relayed connection closes: why it closed, and how many
    /// pings (both ends counted) went through it meanwhile.
    async fn until_cut(&mut self) -> (Option<ConnectionError>, u64) {
        let (source, target, circuit) = (self.source, self.target, self.id);
        let mut pings = 0u64;
        let cause = self
            .swarms
            .until(
                "the relayed connection to close",
                |from, event| match event {
                    SwarmEvent::Behaviour(ClientEvent::Ping(ping::Event {
                        peer,
                        result: Ok(_),
                        ..
                    })) if (from, peer) == ("source", target)
                        || (from, peer) == ("target", source) =>
                    {
                        pings += 1;
                        None
                    }
                    SwarmEvent::ConnectionClosed {
                        connection_id,
                        cause,
                        ..
                    } if from == "source" && connection_id == circuit => Some(cause),
                    _ => None,
                },
            )
            .await;
        (cause, pings)
    }

    /// Both ends keep their direct connections to the server, which still serves a newcomer.
    async fn assert_ends_stay_and_server_serves(mut self) {
        let intro_id = self.intro.peer_id;
        assert!(self.swarms.get("source").is_connected(&intro_id));
        assert!(self.swarms.get("target").is_connected(&intro_id));
        assert_still_serves(&mut self.swarms, &mut self.intro, "newcomer").await;
    }
}

/// `intro.circuit_bytes`: the relay cuts a relayed connection once that many bytes went
/// through it, long before its duration limit. The relayed connection first works (pings
/// both ways), the pings that pass are as few as the cap allows, and both ends keep their
/// direct connections to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_cut_after_its_byte_limit() {
    let bytes: u64 = 4096;
    let mut circuit = Circuit::open(
        "circuit-bytes",
        &format!("circuit_bytes = {bytes}\ncircuit_duration_secs = 600"),
    )
    .await;
    assert_eq!(
        circuit.granted,
        Granted {
            duration: Some(Duration::from_secs(600)),
            bytes: Some(bytes),
        }
    );

    // Count the pings both ends get through until the relayed connection closes.
    let (cause, pings) = circuit.until_cut().await;
    let elapsed = circuit.opened.elapsed();
    eprintln!("cut after {elapsed:?} and {pings} pings: {cause:?}");
    assert!(pings >= 1, "no ping went through the circuit");
    // Each ping carries 32 bytes each way: at most bytes / 64 fit, handshakes aside.
    assert!(
        pings <= bytes / 64,
        "{pings} pings through a {bytes}-byte circuit"
    );
    assert!(elapsed < Duration::from_secs(60), "cut after {elapsed:?}");
    circuit.assert_ends_stay_and_server_serves().await;
}

/// `intro.circuit_duration_secs`: the relay cuts a relayed connection that carries traffic
/// after that long, not before, and the server told the client the limit with the
/// reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_cut_after_its_duration_limit() {
    let limit = Duration::from_secs(2);
    let mut circuit = Circuit::open(
        "circuit-duration",
        &format!(
            "circuit_duration_secs = {}\ncircuit_bytes = 1048576",
            limit.as_secs()
        ),
    )
    .await;
    assert_eq!(circuit.granted.duration, Some(limit));
    circuit.swarms.pinged("source", circuit.id).await;
    let (cause, pings) = circuit.until_cut().await;
    let elapsed = circuit.opened.elapsed();
    eprintln!("cut after {elapsed:?} and {pings} more pings: {cause:?}");
    // The relay's clock starts when it accepts the circuit, just before the connection's
    // handshake over it ends here.
    assert!(elapsed >= limit - Duration::from_millis(500), "{elapsed:?}");
    assert!(elapsed < limit + Duration::from_secs(5), "{elapsed:?}");
    circuit.assert_ends_stay_and_server_serves().await;
}

// ---------------------------------------------------------------------------------------------
// Rendezvous
// ---------------------------------------------------------------------------------------------

/// The rendezvous point's limits: one peer cannot register in more namespaces than
/// `intro.max_registrations_per_peer`, a lifetime outside
/// [`registration_min_ttl_secs`, `registration_max_ttl_secs`] is refused, the total is capped
/// (`intro.max_registrations`), a record signed by another key than the
/// connection's is refused, discovery returns the registered peers, and a registration removed
/// frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_registrations_are_capped_and_checked() {
    let total = 3;
    let mut intro = Intro::start(
        "rendezvous",
        &config(
            "",
            &format!(
                "max_registrations = {total}\nmax_registrations_per_peer = 1\n\
                 registration_min_ttl_secs = 300\nregistration_max_ttl_secs = 7200"
            ),
        ),
    )
    .await;
    let mut swarms = Swarms::default();
    let names = ["r1", "r2", "r3", "r4", "r5"];
    for (port, name) in (1..).zip(names) {
        swarms.add(name, client());
        // A registration carries the peer's external addresses; these are never dialed.
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}")
            .parse()
            .expect("address");
        swarms.get(name).add_external_address(addr);
        swarms.connect(name, &intro).await.expect("connected");
    }

    assert_eq!(swarms.register("r1", &intro, "a", 600).await, Ok(600));
    // One namespace per peer: a second is refused, and so is renewing the first (libp2p
    // counts the registration being replaced), so a peer at its limit cannot renew.
    assert_eq!(
        swarms.register("r1", &intro, "b", 600).await,
        Err(ErrorCode::Unavailable)
    );
    assert_eq!(
        swarms.register("r1", &intro, "a", 600).await,
        Err(ErrorCode::Unavailable)
    );
    // Lifetimes outside the range are refused; its ends are allowed.
    for ttl in [10, 299, 7201, 100_000] {
        assert_eq!(
            swarms.register("r2", &intro, "a", ttl).await,
            Err(ErrorCode::InvalidTtl),
            "ttl {ttl}"
        );
    }
    assert_eq!(swarms.register("r2", &intro, "a", 7200).await, Ok(7200));
    assert_eq!(swarms.register("r3", &intro, "a", 300).await, Ok(300));

    // The total: libp2p checks `len() > max`, so one more than configured gets in.
    let admitted = total;
    let mut registered = vec![swarms.id("r1"), swarms.id("r2"), swarms.id("r3")];
    for name in &names[registered.len()..admitted] {
        assert_eq!(swarms.register(name, &intro, "a", 600).await, Ok(600));
        registered.push(swarms.id(name));
    }
    let outsider = names[admitted];
    assert_eq!(
        swarms.register(outsider, &intro, "a", 600).await,
        Err(ErrorCode::Unavailable)
    );

    registered.sort();
    assert_eq!(swarms.discover(outsider, &intro, "a").await, registered);

    // A record signed with another key than the connection's: refused whatever the load.
    let forged = identity::Keypair::generate_ed25519();
    swarms.add(
        "forger",
        client_with(identity::Keypair::generate_ed25519(), forged),
    );
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/99".parse().expect("address");
    swarms.get("forger").add_external_address(addr);
    swarms.connect("forger", &intro).await.expect("connected");
    assert_eq!(
        swarms.register("forger", &intro, "a", 600).await,
        Err(ErrorCode::NotAuthorized)
    );

    // r1 unregisters; once discovery no longer lists it, the outsider gets in.
    let r1 = swarms.id("r1");
    let namespace = Namespace::new("a".to_owned()).expect("a short namespace");
    swarms
        .get("r1")
        .behaviour_mut()
        .rendezvous
        .unregister(namespace, intro.peer_id);
    let deadline = Instant::now() + WAIT;
    while swarms.discover("r1", &intro, "a").await.contains(&r1) {
        assert!(
            Instant::now() < deadline,
            "r1 still registered after {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(swarms.register(outsider, &intro, "a", 600).await, Ok(600));
    registered.retain(|p| *p != r1);
    registered.push(swarms.id(outsider));
    registered.sort();
    assert_eq!(swarms.discover("r1", &intro, "a").await, registered);

    assert_still_serves(&mut swarms, &mut intro, "newcomer").await;
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// `p2p.max_connections_per_peer` and `p2p.max_connections`: a client's connections past its
/// share are refused while its first ones stay open and served; distinct clients past the
/// total are refused; a client that leaves frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_peer_and_in_all_are_capped() {
    let mut intro = Intro::start(
        "connections",
        &config("max_connections = 4\nmax_connections_per_peer = 2", ""),
    )
    .await;
    let mut swarms = Swarms::default();
    swarms.add("greedy", client());
    let first = swarms.connect("greedy", &intro).await.expect("first").0;
    let second = swarms.connect("greedy", &intro).await.expect("second").0;
    for attempt in 3..=5 {
        let refused = swarms.connect("greedy", &intro).await;
        assert!(refused.is_err(), "connection {attempt} was accepted");
    }
    swarms.pinged("greedy", first).await;
    swarms.pinged("greedy", second).await;
    let info = swarms.get("greedy").network_info();
    assert_eq!(info.connection_counters().num_established(), 2, "{info:?}");

    // Two more peers fill the total of 4; a third is refused.
    for name in ["q1", "q2"] {
        swarms.add(name, client());
        swarms.connect(name, &intro).await.expect("under the total");
    }
    swarms.add("q3", client());
    let refused = swarms.connect("q3", &intro).await;
    assert!(refused.is_err(), "a fifth connection was accepted");

    swarms.leave("q1", &intro).await;
    let info = swarms.connect_eventually("q3", &intro).await;
    assert_identifies_as_intro(&info, &intro);
    intro.assert_alive();
}

/// `p2p.max_pending_incoming` against a slowloris: connections that never start their
/// handshake fill the pending slots and a real client is refused meanwhile, but the server
/// drops them after its handshake timeout and then serves the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_dropped_and_the_server_serves_again() {
    let mut intro = Intro::start("pending", &config("max_pending_incoming = 2", "")).await;
    let socket_addr = intro
        .addr
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some((Ipv4Addr::LOCALHOST, port)),
            _ => None,
        })
        .expect("a TCP address");
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(TcpStream::connect(socket_addr).await.expect("TCP connect"));
    }
    let mut swarms = Swarms::default();
    swarms.add("client", client());
    // The server accepts in arrival order: the stalled sockets hold both slots.
    let refused = swarms.connect("client", &intro).await;
    assert!(refused.is_err(), "a third pending connection was accepted");

    let started = Instant::now();
    for socket in &mut stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT + WAIT, socket.read(&mut buf))
            .await
            .expect("the server drops a stalled handshake");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the server sent {read:?} to a silent client"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        "{elapsed:?}"
    );

    let info = swarms.connect_eventually("client", &intro).await;
    assert_identifies_as_intro(&info, &intro);
    intro.assert_alive();
}
