//! The rules of `.p2p` names in a running network (docs/PROTOCOL.md sections 5 to 7): updates
//! replace older records, a second key cannot take a human name, key names belong to their
//! key, and a hostile node that speaks the DHT protocol but follows none of its rules can
//! neither change an answer nor get a forged record stored by honest nodes.
//!
//! The hostile node is a plain libp2p swarm built here (Kademlia on the p2pdns protocol id,
//! identify, TCP), so the forgeries travel over the same wire as real records.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use crate::support::{TestDaemon, WAIT, a_records, ask, p2p_config, resolve_until, wait_until};
use futures_util::StreamExt;
use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, identify,
    identity::{self, ed25519},
    kad::{self, store::MemoryStore, store::RecordStore},
    multiaddr::Protocol,
    noise,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use p2pdns::{
    p2p::{KAD_PROTOCOL, Replicas, identity::load_or_create},
    record::{MAX_RECORD_BYTES, NameRecord, RecordError, dht_key, unix_now},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// TTL of the published resource records. Resolvers cache a found record for its smallest
/// TTL, so with one second every query after a short pause is a fresh DHT lookup.
const TTL: u32 = 1;
/// A pause after which every resolver's cache entry of a [`TTL`] record is stale.
const PAST_TTL: Duration = Duration::from_millis(1100);
/// `lookup_replicas` of the daemons in attack tests: more than there are nodes, so every
/// lookup runs to its end and meets every hostile replica. With the default (3) a lookup may
/// stop at three honest replicas, and a check could pass without the forgery ever being seen.
const SEE_ALL: usize = 64;
/// Rounds of "still the genuine answer" checks, each after the caches went stale.
const ROUNDS: usize = 3;

// ---------------------------------------------------------------------------------------------
// Network and DNS helpers
// ---------------------------------------------------------------------------------------------

/// Starts `n` daemons, each bootstrapping from all the earlier ones (so every pair is
/// connected directly and every routing table fills without waiting for periodic bootstrap),
/// each asking for `replicas` valid replicas per lookup, and waits until every routing table
/// holds every peer.
pub(crate) async fn network(n: usize, replicas: usize) -> Vec<TestDaemon> {
    let mut daemons: Vec<TestDaemon> = Vec::new();
    let mut bootstrap = Vec::new();
    for _ in 0..n {
        let mut config = p2p_config(&bootstrap);
        config.p2p.lookup_replicas = replicas;
        let daemon = TestDaemon::start(config).await;
        bootstrap.extend(daemon.p2p_addrs.iter().cloned());
        daemons.push(daemon);
    }
    wait_for_routing(&daemons, n - 1, &addrs_of(&daemons)).await;
    daemons
}

/// Seconds into [`wait_for_routing`] at which daemons short of peers dial the others again.
const REDIALS: [u64; 4] = [3, 6, 12, 18];

/// Waits until every daemon's routing table holds at least `peers` peers. At [`REDIALS`], a
/// daemon still short of peers dials every node's TCP address in `addrs` again: under heavy
/// load a dial can time out, or the identify exchange of a peer's only connection can fail and
/// leave it connected but unknown to the routing table, and a daemon retries nothing before
/// its periodic bootstrap, minutes later. (A few times only: redialing in a loop adds
/// handshakes to the load that made them fail.)
async fn wait_for_routing(daemons: &[TestDaemon], peers: usize, addrs: &[Multiaddr]) {
    let start = tokio::time::Instant::now();
    let deadline = start + 3 * WAIT;
    let tcp: Vec<&Multiaddr> = addrs
        .iter()
        .filter(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .collect();
    let mut redials = 0;
    loop {
        let mut short = Vec::new();
        for (i, daemon) in daemons.iter().enumerate() {
            let status = dht(daemon).node().status().await.unwrap();
            if status.routing_table_peers < peers {
                short.push((i, status));
            }
        }
        if short.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "routing tables short of {peers} peers: {:?}",
            short
                .iter()
                .map(|(i, s)| format!(
                    "daemon {i} ({}): {} peers, {} connected; connected outside the table: {:?}",
                    s.peer_id,
                    s.routing_table_peers,
                    s.connected_peers,
                    s.peers
                        .iter()
                        .filter(|p| !p.in_routing_table)
                        .map(|p| (p.peer_id, &p.connections))
                        .collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>()
        );
        if REDIALS
            .get(redials)
            .is_some_and(|at| start.elapsed() >= Duration::from_secs(*at))
        {
            redials += 1;
            for (i, _) in &short {
                let node = dht(&daemons[*i]).node();
                let me = Protocol::P2p(node.peer_id());
                for addr in tcp.iter().filter(|a| a.iter().last() != Some(me.clone())) {
                    node.dial((*addr).clone()).await.unwrap();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every P2P address of `daemons`.
fn addrs_of(daemons: &[TestDaemon]) -> Vec<Multiaddr> {
    daemons.iter().flat_map(|d| d.p2p_addrs.clone()).collect()
}

pub(crate) fn dht(daemon: &TestDaemon) -> &p2pdns::naming::Dht {
    daemon.dht.as_ref().expect("P2P is enabled in p2p_config")
}

fn peer(daemon: &TestDaemon) -> PeerId {
    dht(daemon).node().peer_id()
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn a(owner: &str, ip: &str) -> Record {
    Record::from_rdata(name(owner), TTL, RData::A(ip.parse().unwrap()))
}

/// Publishes `ip` as the one A record of `owner` (such as `site.p2p.`) from `daemon`'s node.
async fn publish_a(daemon: &TestDaemon, owner: &str, ip: &str) -> Arc<NameRecord> {
    dht(daemon)
        .publish(&name(owner), vec![a(owner, ip)])
        .await
        .unwrap()
}

/// Asks `addr` until the answer's A records are `want`, tolerating answers without any A
/// record on the way (SERVFAIL while a slow first lookup runs) but no other address.
async fn settles_on(addr: SocketAddr, name: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = ask(addr, name, RecordType::A).await;
        let got = a_records(&msg);
        if got == want {
            return;
        }
        assert!(got.is_empty(), "{name} at {addr} answered {msg:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never resolved to {want:?} at {addr}; last answer: {msg:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Over [`ROUNDS`] rounds, each after every cache went stale (so each answer comes from a new
/// DHT lookup), every daemon answers exactly `want` for `name`.
async fn keeps_answering(daemons: &[&TestDaemon], name: &str, want: &[&str]) {
    for round in 0..ROUNDS {
        tokio::time::sleep(PAST_TTL).await;
        for daemon in daemons {
            let msg = ask(daemon.addr, name, RecordType::A).await;
            assert_eq!(
                a_records(&msg),
                want,
                "round {round}: {name} at {} answered {msg:?}",
                daemon.addr
            );
        }
    }
}

/// Asks until the answer is NXDOMAIN; no answer on the way may carry an A record.
async fn nxdomain_until(addr: SocketAddr, name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = ask(addr, name, RecordType::A).await;
        assert!(
            a_records(&msg).is_empty(),
            "{name} at {addr} answered a forged record: {msg:?}"
        );
        if msg.metadata.response_code == ResponseCode::NXDomain {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} at {addr} never became NXDOMAIN; last answer: {msg:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every replica of `name` that `daemon`'s node finds, valid or not: the lookup asks for more
/// replicas than exist, so it runs until every peer has answered.
async fn all_replicas(daemon: &TestDaemon, name: &Name) -> Replicas {
    let lookup = dht(daemon).node().lookup(name.clone(), usize::MAX);
    tokio::time::timeout(2 * WAIT, lookup)
        .await
        .expect("a lookup ends within the bound")
        .expect("the node runs")
}

/// The valid replicas of `replicas` by the peer that holds them (`None`, the node's own store,
/// becomes `me`).
fn by_holder(replicas: &Replicas, me: PeerId) -> HashMap<PeerId, NameRecord> {
    replicas
        .records
        .iter()
        .map(|(peer, record)| (peer.unwrap_or(me), record.clone()))
        .collect()
}

/// Polls `observer`'s lookups of `name` until every one of `holders` returns a valid replica
/// for which `good` holds (so the record has reached their stores).
async fn wait_until_held(
    observer: &TestDaemon,
    name: &Name,
    holders: &[PeerId],
    good: impl Fn(&NameRecord) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held = by_holder(&all_replicas(observer, name).await, peer(observer));
        let missing: Vec<&PeerId> = holders
            .iter()
            .filter(|p| !held.get(p).is_some_and(&good))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached the stores of {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every one of `holders` returned `genuine` as its valid replica in `held` (see [`by_holder`]).
fn assert_all_hold(held: &HashMap<PeerId, NameRecord>, holders: &[PeerId], genuine: &NameRecord) {
    for holder in holders {
        assert_eq!(held.get(holder), Some(genuine), "store of {holder}");
    }
}

/// Nothing crashed: every daemon still runs and its node answers.
async fn all_alive(daemons: &[TestDaemon]) {
    for daemon in daemons {
        assert!(!daemon.task.is_finished(), "a daemon stopped");
        tokio::time::timeout(WAIT, dht(daemon).node().status())
            .await
            .expect("the node answers within the bound")
            .expect("the node runs");
    }
}

// ---------------------------------------------------------------------------------------------
// Forging records
// ---------------------------------------------------------------------------------------------

/// A record signed as `NameRecord::sign` does, but without its size limit: the signature over
/// `"p2pdns-record-v1" || 0x00 || record-without-signature` (PROTOCOL.md section 4).
fn sign_unchecked(keypair: &ed25519::Keypair, mut record: NameRecord) -> NameRecord {
    record.owner = keypair.public().to_bytes();
    let bytes = record.to_bytes();
    let mut input = b"p2pdns-record-v1\0".to_vec();
    input.extend_from_slice(&bytes[..bytes.len() - 64]);
    record.signature = keypair.sign(&input).try_into().unwrap();
    record
}

/// A validly signed record of `name` by `keypair`, valid for an hour.
fn signed(keypair: &ed25519::Keypair, name: &Name, seq: u64, records: Vec<Record>) -> NameRecord {
    NameRecord::sign(keypair, name, seq, unix_now() + 3600, records).unwrap()
}

/// What the record checks say about `value` now.
fn check(value: &[u8]) -> Result<(), RecordError> {
    NameRecord::from_bytes(value).and_then(|r| r.verify(unix_now()))
}

/// The Kademlia record holding `value` under the DHT key of `name`.
fn under(name: &Name, value: Vec<u8>) -> kad::Record {
    kad::Record::new(kad::RecordKey::new(&dht_key(name)), value)
}

/// Deterministic junk that starts with the version byte, so decoding gets past the first check.
fn garbage(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15).fill(&mut bytes[..]);
    bytes[0] = 1;
    bytes
}

// ---------------------------------------------------------------------------------------------
// The hostile node
// ---------------------------------------------------------------------------------------------

#[derive(NetworkBehaviour)]
struct HostileBehaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

enum HostileCommand {
    /// Put a record into the node's own store, bypassing every check, and keep serving it
    /// (later PUTs for its key are ignored).
    Plant(kad::Record, oneshot::Sender<()>),
    /// PUT a record to these peers; the reply comes once each acknowledged (or the PUT failed).
    PutTo {
        record: kad::Record,
        peers: Vec<PeerId>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Get every replica of a key from the DHT (its own store first).
    Get {
        key: kad::RecordKey,
        reply: oneshot::Sender<Vec<kad::Record>>,
    },
}

/// A node that speaks the p2pdns DHT (Kademlia on [`KAD_PROTOCOL`], server mode) and stores
/// whatever it is given. It keeps inbound PUTs too, like a default Kademlia node, except for
/// the keys it planted a forgery under.
struct Hostile {
    peer_id: PeerId,
    /// Its listen address, ending in `/p2p/<peer id>`.
    addr: Multiaddr,
    commands: mpsc::Sender<HostileCommand>,
    task: JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Starts a hostile node on loopback TCP and introduces it to every daemon in `daemons`.
    async fn join(daemons: &[TestDaemon]) -> Self {
        let keypair = identity::Keypair::generate_ed25519();
        let peer_id = keypair.public().to_peer_id();
        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        // Inbound PUTs come to the event loop, which stores them unless a key was planted.
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| HostileBehaviour {
                kad: kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/hostile/0.0.1".to_owned(),
                    key.public(),
                )),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        // Know the listen address before dialing, so identify tells the daemons where we are.
        let listen = tokio::time::timeout(WAIT, async {
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    break address;
                }
            }
        })
        .await
        .expect("the hostile node listens");
        for daemon in daemons {
            let addr = daemon
                .p2p_addrs
                .iter()
                .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
                .expect("daemons listen on TCP")
                .clone();
            let bare: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            swarm.behaviour_mut().kad.add_address(&peer(daemon), bare);
            swarm.dial(addr).unwrap();
        }
        let (commands, rx) = mpsc::channel(16);
        let task = tokio::spawn(run_hostile(swarm, rx));
        Self {
            peer_id,
            addr: listen.with_p2p(peer_id).unwrap(),
            commands,
            task,
        }
    }

    async fn plant(&self, record: kad::Record) {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(HostileCommand::Plant(record, reply))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    }

    /// PUTs `record` to `peers` and waits for every acknowledgement. A daemon acknowledges
    /// after its event loop has decided on the record, so once this returns the decision
    /// (stored or refused) is made.
    async fn put_to(&self, record: kad::Record, peers: &[PeerId]) {
        let (reply, rx) = oneshot::channel();
        let command = HostileCommand::PutTo {
            record,
            peers: peers.to_vec(),
            reply,
        };
        self.commands.send(command).await.unwrap();
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("the PUT ends within the bound")
            .unwrap()
            .expect("every peer acknowledged the PUT");
    }

    async fn get(&self, key: kad::RecordKey) -> Vec<kad::Record> {
        let (reply, rx) = oneshot::channel();
        let command = HostileCommand::Get { key, reply };
        self.commands.send(command).await.unwrap();
        tokio::time::timeout(2 * WAIT, rx).await.unwrap().unwrap()
    }
}

async fn run_hostile(
    mut swarm: Swarm<HostileBehaviour>,
    mut commands: mpsc::Receiver<HostileCommand>,
) {
    let mut planted = HashSet::new();
    let mut puts = HashMap::new();
    let mut gets: HashMap<kad::QueryId, (Vec<kad::Record>, oneshot::Sender<_>)> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(HostileCommand::Plant(record, reply)) => {
                    planted.insert(record.key.clone());
                    swarm.behaviour_mut().kad.store_mut().put(record).unwrap();
                    let _ = reply.send(());
                }
                Some(HostileCommand::PutTo { record, peers, reply }) => {
                    let id = swarm.behaviour_mut().kad.put_record_to(
                        record,
                        peers.into_iter(),
                        kad::Quorum::All,
                    );
                    puts.insert(id, reply);
                }
                Some(HostileCommand::Get { key, reply }) => {
                    let id = swarm.behaviour_mut().kad.get_record(key);
                    gets.insert(id, (Vec::new(), reply));
                }
            },
            event = swarm.select_next_some() => {
                let SwarmEvent::Behaviour(HostileBehaviourEvent::Kad(event)) = event else {
                    continue;
                };
                match event {
                    kad::Event::InboundRequest {
                        request: kad::InboundRequest::PutRecord { record: Some(record), .. },
                    } if !planted.contains(&record.key) => {
                        let _ = swarm.behaviour_mut().kad.store_mut().put(record);
                    }
                    kad::Event::OutboundQueryProgressed {
                        id,
                        result: kad::QueryResult::PutRecord(result),
                        ..
                    } => {
                        if let Some(reply) = puts.remove(&id) {
                            let _ = reply.send(result.map(|_| ()).map_err(|e| e.to_string()));
                        }
                    }
                    kad::Event::OutboundQueryProgressed {
                        id,
                        result: kad::QueryResult::GetRecord(result),
                        ..
                    } => match result {
                        Ok(kad::GetRecordOk::FoundRecord(found)) => {
                            if let Some((records, _)) = gets.get_mut(&id) {
                                records.push(found.record);
                            }
                        }
                        _ => {
                            if let Some((records, reply)) = gets.remove(&id) {
                                let _ = reply.send(records);
                            }
                        }
                    },
                    _ => {}
                }
            }
        }
    }
}

/// Starts `n` hostile nodes and waits until every daemon has them (and every other daemon)
/// in its routing table, so every lookup asks them.
async fn hostiles(daemons: &[TestDaemon], n: usize) -> Vec<Hostile> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Hostile::join(daemons).await);
    }
    let mut addrs = addrs_of(daemons);
    addrs.extend(nodes.iter().map(|h| h.addr.clone()));
    wait_for_routing(daemons, daemons.len() - 1 + n, &addrs).await;
    nodes
}

/// Starts `n` hostile nodes (see [`hostiles`]) that all serve `forgery` under `name` from their
/// own stores; the first also PUTs it to `honest`, and returns once every one acknowledged.
async fn hostiles_serving(
    daemons: &[TestDaemon],
    n: usize,
    name: &Name,
    forgery: &NameRecord,
    honest: &[PeerId],
) -> Vec<Hostile> {
    let nodes = hostiles(daemons, n).await;
    for node in &nodes {
        node.plant(under(name, forgery.to_bytes())).await;
    }
    nodes[0]
        .put_to(under(name, forgery.to_bytes()), honest)
        .await;
    nodes
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The owner publishes again: every node, including those that cached the first record, ends
/// up answering the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_replaces_the_old_address_everywhere() {
    // Default lookup settings: this is the everyday path.
    let daemons = network(5, p2pdns::config::P2pConfig::default().lookup_replicas).await;
    let owner = &daemons[0];
    let first = publish_a(owner, "site.p2p.", "192.0.2.10").await;
    // Every other node resolves (and caches) the first address.
    for daemon in &daemons[1..] {
        resolve_until(daemon.addr, "site.p2p.", &["192.0.2.10"]).await;
    }

    let second = publish_a(owner, "site.p2p.", "192.0.2.20").await;
    assert!(second.seq > first.seq, "{} <= {}", second.seq, first.seq);
    let own = ask(owner.addr, "site.p2p.", RecordType::A).await;
    assert_eq!(
        a_records(&own),
        ["192.0.2.20"],
        "the owner answers its own new record"
    );
    for daemon in &daemons[1..] {
        resolve_until(daemon.addr, "site.p2p.", &["192.0.2.20"]).await;
    }
    // And the old address does not come back.
    let others: Vec<&TestDaemon> = daemons[1..].iter().collect();
    keeps_answering(&others, "site.p2p.", &["192.0.2.20"]).await;
}

/// First come, first served: once A holds `taken.p2p`, B's record for it is refused by every
/// storage node, and every third node keeps answering A's address (pinned or by majority).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_key_cannot_take_a_human_name() {
    let daemons = network(5, SEE_ALL).await;
    let (owner, rival, thirds) = (&daemons[0], &daemons[1], &daemons[2..]);
    let taken = name("taken.p2p.");
    let first = publish_a(owner, "taken.p2p.", "192.0.2.1").await;
    // Two third nodes resolve it before the rival publishes (so they pin A); the last one
    // only looks after, and has only the majority to go by.
    for third in &thirds[..2] {
        resolve_until(third.addr, "taken.p2p.", &["192.0.2.1"]).await;
    }
    // Every node stores A's record before B publishes: what is tested below is the refusal of
    // a second owner, not which PUT arrived first.
    let all: Vec<PeerId> = daemons.iter().map(peer).collect();
    let a_owner = first.owner;
    wait_until_held(owner, &taken, &all, |r| r.owner == a_owner).await;

    // Sequence numbers are Unix seconds: wait for the next second, so that B's record is also
    // newer than A's and only the owner rule (not "seq must rise") can refuse it.
    wait_until("the clock to pass A's seq", || unix_now() > first.seq).await;
    let stolen = publish_a(rival, "taken.p2p.", "198.51.100.2").await;
    assert_ne!(stolen.owner, a_owner);
    assert!(stolen.seq > first.seq);
    // A node answers its own names first.
    resolve_until(rival.addr, "taken.p2p.", &["198.51.100.2"]).await;

    // B's PUTs are on their way; to know that every node has decided on B's record, push the
    // very same record again from another peer and wait for every acknowledgement.
    let relay = &hostiles(&daemons, 1).await[0];
    let others: Vec<PeerId> = daemons
        .iter()
        .filter(|d| peer(d) != peer(rival))
        .map(peer)
        .collect();
    relay
        .put_to(under(&taken, stolen.to_bytes()), &others)
        .await;

    // Storage level: only B itself (which stores what it publishes) holds B's record.
    for observer in thirds {
        let replicas = all_replicas(observer, &taken).await;
        let held = by_holder(&replicas, peer(observer));
        for holder in &others {
            let record = held
                .get(holder)
                .unwrap_or_else(|| panic!("{holder} returned no valid replica: {replicas:?}"));
            assert_eq!(
                record.owner, a_owner,
                "{holder} stored the second key's record"
            );
        }
        assert_eq!(
            held.get(&peer(rival)).map(|r| r.owner),
            Some(stolen.owner),
            "the lookup never met B's record, so the check above proves nothing"
        );
    }

    // DNS level: every third node, pinned or not, keeps answering A.
    for third in &thirds[2..] {
        settles_on(third.addr, "taken.p2p.", &["192.0.2.1"]).await;
    }
    let thirds: Vec<&TestDaemon> = thirds.iter().collect();
    keeps_answering(&thirds, "taken.p2p.", &["192.0.2.1"]).await;
    let own = ask(rival.addr, "taken.p2p.", RecordType::A).await;
    assert_eq!(a_records(&own), ["198.51.100.2"]);
}

/// Hostile nodes serve forgeries of a published name from their own stores: a tampered
/// signature, a hijack by another key with a higher seq, an expired record, an oversized one
/// and garbage. Every honest resolver, whether it knew the name before or not, keeps answering
/// the genuine address, its node sees (and drops) every forgery, and nothing crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replicas_from_hostile_stores_change_no_answer() {
    let daemons = network(4, SEE_ALL).await;
    let owner = &daemons[0];
    let site = name("site.p2p.");
    let genuine = publish_a(owner, "site.p2p.", "192.0.2.10").await;
    let all: Vec<PeerId> = daemons.iter().map(peer).collect();
    wait_until_held(owner, &site, &all, |r| r.seq == genuine.seq).await;
    // One resolver has seen (and pinned) the genuine record before the attack.
    resolve_until(daemons[1].addr, "site.p2p.", &["192.0.2.10"]).await;

    // The forgeries that would win if a check were missing are signed by the owner's own key
    // (read from its data directory) with a higher seq: if the resolver skipped the check,
    // the owner's "newest" record would be the forged one.
    let owner_key = load_or_create(&owner.data_dir).unwrap();
    assert_eq!(owner_key.public().to_bytes(), genuine.owner);
    let forged_ip = "203.0.113.66";
    let seq = genuine.seq + 1000;

    let mut tampered = genuine.as_ref().clone();
    tampered.seq = seq;
    tampered.records = vec![a("site.p2p.", forged_ip)];
    assert_eq!(tampered.verify(unix_now()), Err(RecordError::BadSignature));

    let attacker = ed25519::Keypair::generate();
    let hijack = signed(&attacker, &site, seq, vec![a("site.p2p.", forged_ip)]);
    hijack.verify(unix_now()).unwrap();

    let expired = NameRecord::sign(
        &owner_key,
        &site,
        seq,
        unix_now() - 60,
        vec![a("site.p2p.", forged_ip)],
    )
    .unwrap();
    assert_eq!(expired.verify(unix_now()), Err(RecordError::Expired));

    // sign_unchecked signs like NameRecord::sign (so the big record fails for its size only).
    let small = signed(&owner_key, &site, seq, vec![a("site.p2p.", forged_ip)]);
    assert_eq!(sign_unchecked(&owner_key, small.clone()), small);
    let mut big = small.clone();
    big.records
        .extend((0..60).map(|i| a("site.p2p.", &format!("203.0.113.{}", i + 100))));
    let big = sign_unchecked(&owner_key, big);
    assert!(big.to_bytes().len() > MAX_RECORD_BYTES);
    assert!(matches!(
        NameRecord::from_bytes(&big.to_bytes()),
        Err(RecordError::TooLarge(_))
    ));

    let forgeries = [
        tampered.to_bytes(),
        hijack.to_bytes(),
        expired.to_bytes(),
        big.to_bytes(),
        garbage(300),
    ];
    let hostile = hostiles(&daemons, forgeries.len()).await;
    for (node, value) in hostile.iter().zip(forgeries) {
        node.plant(under(&site, value)).await;
    }
    let hijacker = hostile[1].peer_id;

    // Node level: every resolver meets all five forgeries, drops the four invalid ones, and
    // every honest store still holds the genuine record.
    for observer in &daemons[1..] {
        let deadline = tokio::time::Instant::now() + WAIT;
        let replicas = loop {
            let replicas = all_replicas(observer, &site).await;
            let met_hijack = replicas.records.iter().any(|(p, _)| *p == Some(hijacker));
            if replicas.invalid == 4 && met_hijack {
                break replicas;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lookup never met every forgery: {replicas:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let held = by_holder(&replicas, peer(observer));
        assert_all_hold(&held, &all, &genuine);
        assert_eq!(held.len(), all.len() + 1, "{replicas:?}");
    }

    // DNS level: the one that knew the name and the two that never asked before.
    for fresh in &daemons[2..] {
        settles_on(fresh.addr, "site.p2p.", &["192.0.2.10"]).await;
    }
    let resolvers: Vec<&TestDaemon> = daemons[1..].iter().collect();
    keeps_answering(&resolvers, "site.p2p.", &["192.0.2.10"]).await;
    all_alive(&daemons).await;
}

/// A hostile node PUTs forged records for fresh names to the honest nodes: none is stored, and
/// the names stay NXDOMAIN. One valid record PUT by the same node afterwards is stored by every
/// honest node, so the PUTs did arrive and were refused for what they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_refuse_forged_puts() {
    let daemons = network(3, SEE_ALL).await;
    let hostile = &hostiles(&daemons, 1).await[0];
    let honest: Vec<PeerId> = daemons.iter().map(peer).collect();
    let mut before = Vec::new();
    for daemon in &daemons {
        before.push(dht(daemon).node().status().await.unwrap().stored_records);
    }

    let key = ed25519::Keypair::generate();
    let other = ed25519::Keypair::generate();
    let ip = "203.0.113.66";
    let seq = unix_now();
    // Each forgery under its own fresh name: every one that got stored would add to the count.
    let mut forged: Vec<(Name, Vec<u8>)> = Vec::new();

    let n = name("forged-signature.p2p.");
    let mut tampered = signed(&key, &n, seq, vec![a("forged-signature.p2p.", "192.0.2.1")]);
    tampered.records = vec![a("forged-signature.p2p.", ip)];
    assert_eq!(check(&tampered.to_bytes()), Err(RecordError::BadSignature));
    forged.push((n, tampered.to_bytes()));

    let n = name("forged-expired.p2p.");
    let expired = NameRecord::sign(
        &key,
        &n,
        seq,
        unix_now() - 60,
        vec![a("forged-expired.p2p.", ip)],
    )
    .unwrap();
    assert_eq!(check(&expired.to_bytes()), Err(RecordError::Expired));
    forged.push((n, expired.to_bytes()));

    let n = name("forged-forever.p2p.");
    let forever = NameRecord::sign(
        &key,
        &n,
        seq,
        unix_now() + 30 * 24 * 3600,
        vec![a("forged-forever.p2p.", ip)],
    )
    .unwrap();
    assert_eq!(check(&forever.to_bytes()), Err(RecordError::TooLong));
    forged.push((n, forever.to_bytes()));

    let n = name("forged-big.p2p.");
    let mut big = signed(&key, &n, seq, vec![]);
    big.records = (0..60)
        .map(|i| a("forged-big.p2p.", &format!("203.0.113.{}", i + 100)))
        .collect();
    let big = sign_unchecked(&key, big).to_bytes();
    assert!(matches!(check(&big), Err(RecordError::TooLarge(_))));
    forged.push((n, big));

    let n = name("forged-garbage.p2p.");
    assert!(check(&garbage(200)).is_err());
    forged.push((n, garbage(200)));

    let n = name("forged-zone.p2p.");
    let outside = signed(&key, &n, seq, vec![a("bank.example.", ip)]);
    assert!(matches!(
        check(&outside.to_bytes()),
        Err(RecordError::BadResourceRecord { .. })
    ));
    forged.push((n, outside.to_bytes()));

    let n = p2pdns::record::key_name(&other.public().to_bytes());
    let wrong_key = signed(&key, &n, seq, vec![a(&n.to_ascii(), ip)]);
    assert!(matches!(
        check(&wrong_key.to_bytes()),
        Err(RecordError::WrongKey(_))
    ));
    forged.push((n, wrong_key.to_bytes()));

    // Valid in itself, but PUT under another name's key.
    let n = name("forged-place.p2p.");
    let elsewhere = signed(&key, &name("decoy.p2p."), seq, vec![a("decoy.p2p.", ip)]);
    assert_eq!(check(&elsewhere.to_bytes()), Ok(()));
    forged.push((n, elsewhere.to_bytes()));

    for (n, value) in &forged {
        hostile.put_to(under(n, value.clone()), &honest).await;
    }
    let valid_name = name("hostile-valid.p2p.");
    let valid = signed(
        &key,
        &valid_name,
        seq,
        vec![a("hostile-valid.p2p.", "203.0.113.7")],
    );
    hostile
        .put_to(under(&valid_name, valid.to_bytes()), &honest)
        .await;

    // Exactly one more record in every honest store, and it is the valid one.
    for (daemon, before) in daemons.iter().zip(&before) {
        let stored = dht(daemon).node().status().await.unwrap().stored_records;
        assert_eq!(stored, before + 1, "stored records at {}", peer(daemon));
        let replicas = all_replicas(daemon, &valid_name).await;
        let own = by_holder(&replicas, peer(daemon)).remove(&peer(daemon));
        assert_eq!(own.as_ref(), Some(&valid), "own store of {}", peer(daemon));
    }
    // The valid name resolves from the honest stores (the hostile node holds no copy).
    for daemon in &daemons {
        resolve_until(daemon.addr, "hostile-valid.p2p.", &["203.0.113.7"]).await;
    }
    for (n, _) in &forged {
        for daemon in &daemons {
            nxdomain_until(daemon.addr, &n.to_ascii()).await;
        }
    }
    all_alive(&daemons).await;
}

/// A hostile node captures the owner's record (seq N) from the DHT, the owner publishes N+1,
/// and the hostile node replays N: it is PUT to every honest node and served from the
/// hostile store. Honest stores keep N+1 and every resolver keeps answering the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_record_is_refused() {
    let daemons = network(3, SEE_ALL).await;
    let hostile = &hostiles(&daemons, 1).await[0];
    let owner = &daemons[0];
    let honest: Vec<PeerId> = daemons.iter().map(peer).collect();
    let replay = name("replay.p2p.");
    let old = publish_a(owner, "replay.p2p.", "192.0.2.30").await;
    for daemon in &daemons[1..] {
        resolve_until(daemon.addr, "replay.p2p.", &["192.0.2.30"]).await;
    }

    // Capture seq N from the network, as an eavesdropping peer would.
    let key = kad::RecordKey::new(&dht_key(&replay));
    let deadline = tokio::time::Instant::now() + WAIT;
    let captured = loop {
        let found = hostile.get(key.clone()).await;
        if let Some(record) = found
            .into_iter()
            .find(|r| NameRecord::from_bytes(&r.value).is_ok_and(|n| n.seq == old.seq))
        {
            break record.value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hostile node never saw the first record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(captured, old.to_bytes());

    let new = publish_a(owner, "replay.p2p.", "192.0.2.31").await;
    assert!(new.seq > old.seq);
    wait_until_held(&daemons[1], &replay, &honest, |r| r.seq == new.seq).await;
    for daemon in &daemons[1..] {
        resolve_until(daemon.addr, "replay.p2p.", &["192.0.2.31"]).await;
    }

    hostile.plant(under(&replay, captured.clone())).await;
    hostile.put_to(under(&replay, captured), &honest).await;

    // Node level: every lookup meets the replayed N, and every honest store still holds N+1.
    for observer in &daemons {
        let replicas = all_replicas(observer, &replay).await;
        let held = by_holder(&replicas, peer(observer));
        assert_eq!(
            held.get(&hostile.peer_id).map(|r| r.seq),
            Some(old.seq),
            "the lookup never met the replayed record: {replicas:?}"
        );
        for holder in &honest {
            assert_eq!(
                held.get(holder).map(|r| r.seq),
                Some(new.seq),
                "store of {holder} after the replay"
            );
        }
    }
    // DNS level.
    let resolvers: Vec<&TestDaemon> = daemons.iter().collect();
    keeps_answering(&resolvers, "replay.p2p.", &["192.0.2.31"]).await;
    all_alive(&daemons).await;
}

/// A node's key name resolves everywhere, and a record for it signed by another key, served by
/// more hostile nodes than there are honest replicas and PUT to every honest node, is never
/// stored and never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_name_belongs_to_its_key() {
    let daemons = network(3, SEE_ALL).await;
    let owner = &daemons[0];
    let key_name = dht(owner).key_name();
    let key_text = key_name.to_ascii();
    let genuine = publish_a(owner, &key_text, "192.0.2.99").await;
    resolve_until(daemons[1].addr, &key_text, &["192.0.2.99"]).await;
    let honest: Vec<PeerId> = daemons.iter().map(peer).collect();
    wait_until_held(owner, &key_name, &honest, |r| r.seq == genuine.seq).await;

    // One forged record, served by four hostile nodes against three honest replicas: if the
    // key check were missing, the forger's key would have the majority.
    let forger = ed25519::Keypair::generate();
    let forged = signed(
        &forger,
        &key_name,
        genuine.seq + 1000,
        vec![a(&key_text, "203.0.113.99")],
    );
    assert!(matches!(
        forged.verify(unix_now()),
        Err(RecordError::WrongKey(_))
    ));
    let hostile = hostiles_serving(&daemons, 4, &key_name, &forged, &honest).await;

    for observer in &daemons[1..] {
        let replicas = all_replicas(observer, &key_name).await;
        assert_eq!(replicas.invalid, hostile.len(), "{replicas:?}");
        let held = by_holder(&replicas, peer(observer));
        assert_eq!(held.len(), honest.len(), "{replicas:?}");
        assert_all_hold(&held, &honest, &genuine);
    }
    settles_on(daemons[2].addr, &key_text, &["192.0.2.99"]).await;
    let resolvers: Vec<&TestDaemon> = daemons[1..].iter().collect();
    keeps_answering(&resolvers, &key_text, &["192.0.2.99"]).await;
    all_alive(&daemons).await;
}

/// Pins (PROTOCOL.md section 7): once a resolver has accepted a human name's owner, a valid
/// record for the name from another key is refused even when more replicas carry it. The
/// resolver that never looked the name up goes by the majority, which shows the majority
/// really was hostile, so it is the pin that keeps the first one right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_outlasts_a_hostile_majority() {
    let daemons = network(3, SEE_ALL).await;
    let (owner, pinned, fresh) = (&daemons[0], &daemons[1], &daemons[2]);
    let site = name("pinned.p2p.");
    let genuine = publish_a(owner, "pinned.p2p.", "192.0.2.40").await;
    let honest: Vec<PeerId> = daemons.iter().map(peer).collect();
    wait_until_held(owner, &site, &honest, |r| r.seq == genuine.seq).await;
    resolve_until(pinned.addr, "pinned.p2p.", &["192.0.2.40"]).await;

    // Four hostile replicas of a valid record by another key against three honest ones.
    let attacker = ed25519::Keypair::generate();
    let hijack = signed(
        &attacker,
        &site,
        genuine.seq + 1000,
        vec![a("pinned.p2p.", "203.0.113.40")],
    );
    let hostile = hostiles_serving(&daemons, 4, &site, &hijack, &honest).await;
    for observer in [pinned, fresh] {
        let held = by_holder(&all_replicas(observer, &site).await, peer(observer));
        assert_all_hold(&held, &honest, &genuine);
        for node in &hostile {
            assert_eq!(held.get(&node.peer_id), Some(&hijack));
        }
    }

    resolve_until(fresh.addr, "pinned.p2p.", &["203.0.113.40"]).await;
    keeps_answering(&[pinned], "pinned.p2p.", &["192.0.2.40"]).await;
}

/// A resolver checks that a replica's name is the name it looked up: one hostile replica of
/// the owner's valid record for ANOTHER of its names, with a higher seq, served under this
/// name's DHT key, must not be taken as this name's newest record (it once was, and the name
/// answered NXDOMAIN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_for_another_name_is_not_taken_for_this_one() {
    let daemons = network(3, SEE_ALL).await;
    let owner = &daemons[0];
    let site = name("site.p2p.");
    let genuine = publish_a(owner, "site.p2p.", "192.0.2.10").await;
    publish_a(owner, "other.p2p.", "192.0.2.50").await;
    let newer = publish_a(owner, "other.p2p.", "192.0.2.51").await;
    assert!(newer.seq > genuine.seq);
    let honest: Vec<PeerId> = daemons.iter().map(peer).collect();
    wait_until_held(owner, &site, &honest, |r| r.seq == genuine.seq).await;
    resolve_until(daemons[1].addr, "site.p2p.", &["192.0.2.10"]).await;

    let hostile = &hostiles(&daemons, 1).await[0];
    hostile.plant(under(&site, newer.to_bytes())).await;
    let resolvers: Vec<&TestDaemon> = daemons[1..].iter().collect();
    keeps_answering(&resolvers, "site.p2p.", &["192.0.2.10"]).await;
}

/// A record a foreign publisher signed without the publisher's checks (docs/PROTOCOL.md
/// section 10.1): a CNAME beside other data and beside a second CNAME, the same RR twice, an
/// RRset with two TTLs. Storage nodes keep it (those checks are not validity) and every
/// resolver answers it one way (section 10.2): the first CNAME alone at its name, one copy of
/// each RR, the RRset's lowest TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_breaks_the_publisher_checks_is_answered_one_way() {
    use crate::p2p_answers::{lines, owner};
    let daemons = network(2, 3).await;
    let rr = |at: &str, text: &str| {
        p2pdns::naming::parse_record(&owner(at), text, 300)
            .unwrap()
            .remove(0)
    };
    let records = vec![
        rr("www", "A 192.0.2.99"),
        rr("www", "CNAME site.p2p."),
        rr("www", "CNAME mail.site.p2p."),
        rr("@", "300 A 192.0.2.1"),
        rr("@", "60 A 192.0.2.2"),
    ];
    let foreign = signed(
        &ed25519::Keypair::generate(),
        &name("site.p2p."),
        1,
        records,
    );
    dht(&daemons[0]).node().publish(foreign).await.unwrap();

    let a = resolve_until(daemons[1].addr, "site.p2p.", &["192.0.2.1", "192.0.2.2"]).await;
    assert!(a.answers.iter().all(|r| r.ttl <= 60), "{a:?}");
    for qtype in [RecordType::A, RecordType::TXT, RecordType::ANY] {
        let msg = ask(daemons[1].addr, "www.site.p2p.", qtype).await;
        // The first CNAME in canonical order (docs/PROTOCOL.md section 3.1) is the lower RDATA.
        assert_eq!(
            lines(&msg.answers)[0],
            "www.site.p2p. CNAME mail.site.p2p.",
            "{qtype}"
        );
        assert!(
            msg.answers
                .iter()
                .all(|r| r.data.to_string() != "192.0.2.99"),
            "{qtype}: {msg:?}"
        );
    }
}
