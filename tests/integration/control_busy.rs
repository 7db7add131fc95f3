//! The control socket while it is busy (issue 15, a newcomer's finding): `p2pdns names` took
//! minutes to answer after 150 publishes were started at once. It counted each name's replicas
//! with a DHT lookup of up to 5 s, one name after the other, and it waited in the socket's
//! backlog while 16 other requests (publishes, lookups, idle clients) held every place.
//!
//! Here a daemon whose only peer never answers a Kademlia request (each lookup and each PUT
//! waits for its deadline) publishes 150 names, then is given 20 lookups of absent names, 16 clients that
//! never send their request, and 150 more publishes at once; `names`, `status` and `pins` must
//! answer while all that is in flight. What is asserted is an order of events, never a
//! duration: the answers come while the idle clients are still connected (the daemon drops
//! them only after its 10 s request timeout), and `names` lists every name acknowledged before
//! it was asked.
//!
//! One key publishes at most 100 record sets (`MAX_NAMES_PER_KEY`, what storage nodes keep of
//! one key): the 150 names of each round are names under 50 record sets (`w7.first7.p2p.`),
//! three added to each at once, and every one of those adds must count.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use p2pdns::control::{Request, Response, call, call_within};
use tokio::{net::UnixStream, sync::mpsc, task::JoinSet};

use crate::{
    dht_fairness::{Stalled, wait_for_peers},
    support::{TestDaemon, p2p_config},
};

/// Publishes started at once, in each of the two rounds.
const PUBLISHES: usize = 150;
/// Record sets the names of one round are added to (`PUBLISHES / RECORD_SETS` each).
const RECORD_SETS: usize = 50;
/// Lookups of absent names in flight (more than the 16 places there were).
const LOOKUPS: usize = 20;
/// Clients that connect and never send a request (as many as there were places).
const IDLE: usize = 16;
/// How long a publish may wait for its answer: each waits for its turn to write and for its
/// DHT PUT, which the stalled peer makes last until Kademlia's timeout. A bound against a
/// hang, not a measure of speed.
const PUBLISH_WAIT: Duration = Duration::from_secs(120);

async fn publish(dir: &Path, name: &str) -> Result<(), String> {
    let request = Request::Publish {
        name: name.to_owned(),
        records: vec!["A 192.0.2.1".to_owned()],
    };
    match call_within(dir, false, &request, PUBLISH_WAIT).await {
        Ok(Response::Published { .. }) => Ok(()),
        Ok(other) => Err(format!("{name}: {other:?}")),
        Err(error) => Err(format!("{name}: {}", p2pdns::error::one_line(&error))),
    }
}

/// The record sets `names` lists, with their records.
async fn names(dir: &Path) -> BTreeMap<String, Vec<String>> {
    match call(dir, false, &Request::Names).await.unwrap() {
        Response::Names { names } => names.into_iter().map(|n| (n.name, n.records)).collect(),
        other => panic!("{other:?}"),
    }
}

/// Starts the publishes of a round, `w{i}.{round}{i % RECORD_SETS}`, each reporting its
/// acknowledged name on `acknowledged`.
fn start_publishes(
    tasks: &mut JoinSet<Result<(), String>>,
    dir: &Path,
    round: &str,
    acknowledged: &mpsc::Sender<String>,
) {
    for i in 0..PUBLISHES {
        let dir = dir.to_owned();
        let acknowledged = acknowledged.clone();
        let set = format!("{round}{}", i % RECORD_SETS);
        tasks.spawn(async move {
            publish(&dir, &format!("w{i}.{set}")).await?;
            let _ = acknowledged.try_send(format!("{set}.p2p."));
            Ok(())
        });
    }
}

/// Waits for every publish of `publishes`; each must have been acknowledged.
async fn all_acknowledged(publishes: JoinSet<Result<(), String>>) {
    let failed: Vec<String> = publishes
        .join_all()
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Whether the daemon still holds `stream` open (no end of stream to read yet).
fn still_open(stream: &UnixStream) -> bool {
    let mut byte = [0; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_answers_while_publishes_and_lookups_are_in_flight() {
    let daemon = TestDaemon::start(p2p_config(&[])).await;
    let stalled = Stalled::join(&[&daemon], 0).await;
    wait_for_peers(&daemon, &[stalled.peer_id]).await;
    let dir = daemon.data_dir.clone();
    let socket = dir.join(p2pdns::control::SOCKET_FILE);

    // Round 1: 150 publishes at once, every one acknowledged.
    // Room for every acknowledgement of both rounds: no send ever waits.
    let (acknowledged, mut acks) = mpsc::channel(2 * PUBLISHES);
    let mut publishes = JoinSet::new();
    start_publishes(&mut publishes, &dir, "first", &acknowledged);
    all_acknowledged(publishes).await;
    let mut held = BTreeSet::new();
    while let Ok(name) = acks.try_recv() {
        held.insert(name);
    }
    assert_eq!(held.len(), RECORD_SETS);

    // Round 2: idle clients, lookups that wait on the stalled peer, 150 more publishes.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(UnixStream::connect(&socket).await.unwrap());
    }
    let mut lookups = JoinSet::new();
    for i in 0..LOOKUPS {
        let dir = dir.clone();
        lookups.spawn(async move {
            let request = Request::Resolve {
                name: format!("absent{i}"),
                qtype: "A".to_owned(),
            };
            let _ = call(&dir, false, &request).await;
        });
    }
    let mut publishes = JoinSet::new();
    start_publishes(&mut publishes, &dir, "second", &acknowledged);

    // Asked now, while all of that is in flight: every name acknowledged so far is listed.
    while let Ok(name) = acks.try_recv() {
        held.insert(name);
    }
    let listed: BTreeSet<String> = names(&dir).await.into_keys().collect();
    let missing: Vec<&String> = held.difference(&listed).collect();
    assert!(missing.is_empty(), "acknowledged, not listed: {missing:?}");
    let status = call(&dir, false, &Request::Status { peers: true }).await;
    assert!(matches!(status, Ok(Response::Status(_))), "{status:?}");
    let pins = call(&dir, false, &Request::Pins).await;
    assert!(matches!(pins, Ok(Response::Pins { .. })), "{pins:?}");
    // ...and they were answered before the daemon gave up on the idle clients.
    let dropped = idle.iter().filter(|s| !still_open(s)).count();
    assert_eq!(
        dropped, 0,
        "names, status and pins answered only after the idle clients' request timeout"
    );

    // Once every publish is acknowledged, `names` lists all 100 record sets, each with the
    // three names added to it at once.
    all_acknowledged(publishes).await;
    let listed = names(&dir).await;
    assert_eq!(listed.len(), 2 * RECORD_SETS);
    for (set, records) in &listed {
        assert_eq!(records.len(), PUBLISHES / RECORD_SETS, "{set}: {records:?}");
    }
    lookups.abort_all();
    drop(idle);
    daemon.stop().await.unwrap();
}
