//! Every map a peer or a client can grow is bounded (issue 15, kind 3): here through running
//! daemons, the pins every resolved name adds and the addresses a peer announces. (The bounds
//! themselves are unit-tested next to each map.)

use std::collections::BTreeSet;

use hickory_proto::rr::Name;

use crate::{
    dht_fairness::{Stalled, dht, publish, wait_for_peers},
    support::{TestDaemon, p2p_config, resolve_until},
};

/// Pins kept by the resolving daemon in the pins test.
const MAX_PINS: usize = 5;

/// Twelve human names resolved through a daemon that keeps five pins: it keeps the five used
/// last, saves them when it stops (the lookups never write the file), and has them again after
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_are_bounded_and_saved_at_shutdown() {
    let owner = TestDaemon::start(p2p_config(&[])).await;
    let mut config = p2p_config(&owner.p2p_addrs);
    config.p2p.max_pins = MAX_PINS;
    let mut resolver = TestDaemon::start(config.clone()).await;
    wait_for_peers(&resolver, &[dht(&owner).node().peer_id()]).await;
    let names: Vec<String> = (0..12).map(|i| format!("pinned{i}.p2p.")).collect();
    for (i, name) in names.iter().enumerate() {
        publish(&owner, name, &format!("192.0.2.{}", i + 1)).await;
    }
    for (i, name) in names.iter().enumerate() {
        resolve_until(resolver.addr, name, &[&format!("192.0.2.{}", i + 1)]).await;
    }
    let last: BTreeSet<String> = names[names.len() - MAX_PINS..].iter().cloned().collect();
    let pinned: BTreeSet<String> = dht(&resolver).pins().into_keys().collect();
    assert_eq!(pinned, last, "the pins used last are kept");

    resolver.keep_dir();
    let dir = resolver.data_dir.clone();
    resolver.stop().await.unwrap();
    let restarted = TestDaemon::start_in(config, dir).await;
    let pinned: BTreeSet<String> = dht(&restarted).pins().into_keys().collect();
    assert_eq!(pinned, last, "saved at shutdown");
    let name = Name::from_ascii(last.first().unwrap()).unwrap();
    assert!(dht(&restarted).remove_pin(&name).unwrap());
}

/// A peer that announces a thousand addresses gets a few of them into the routing table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_many_addresses_gets_a_few_into_the_routing_table() {
    let daemon = TestDaemon::start(p2p_config(&[])).await;
    let hostile = Stalled::join(&[&daemon], 1000).await;
    wait_for_peers(&daemon, &[hostile.peer_id]).await;
    let status = dht(&daemon).node().status().await.unwrap();
    let entry = status
        .peers
        .iter()
        .find(|p| p.peer_id == hostile.peer_id)
        .unwrap();
    // p2p::routing::ADDRS_PER_PEER.
    assert!(
        (1..=8).contains(&entry.addrs.len()),
        "{} addresses kept",
        entry.addrs.len()
    );
}
