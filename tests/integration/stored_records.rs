//! What a storage node holds for the network survives its restart (docs/PROTOCOL.md section
//! 5): the only storage node of a network of NATed nodes, its introduction server, restarted
//! on its data directory still answers for the names it held, and still refuses a second key
//! for them.

use std::{path::Path, time::Duration};

use hickory_proto::rr::{LowerName, Name};
use libp2p::Multiaddr;
use p2pdns::{
    config::{DhtMode, IntroConfig},
    intro::Intro,
    naming::Dht,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{TestDaemon, WAIT, a_record as a, p2p_config, resolve_until, wait_until};

/// An introduction server running in this process on `dir`.
struct Server {
    addrs: Vec<Multiaddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), p2pdns::intro::IntroError>>,
}

impl Server {
    async fn start(dir: &Path) -> Self {
        let config = p2p_config(&[]).p2p;
        let intro = Intro::bind(config, IntroConfig::default(), dir, &[])
            .await
            .expect("the introduction server binds");
        let addrs = intro.listen_addrs();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(intro.run(shutdown.clone()));
        Self {
            addrs,
            shutdown,
            task,
        }
    }

    /// Stops it as SIGTERM does.
    async fn stop(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(WAIT, self.task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }
}

/// A daemon behind NAT, as far as the DHT goes: a client, storing nothing for others.
async fn client(bootstrap: &[Multiaddr]) -> TestDaemon {
    let mut config = p2p_config(bootstrap);
    config.p2p.dht_mode = DhtMode::Client;
    TestDaemon::start(config).await
}

fn dht(daemon: &TestDaemon) -> &Dht {
    daemon.dht.as_ref().expect("P2P is on")
}

/// The newcomer's fault: every node behind NAT, the introduction server the one storage node,
/// restarted on its data directory. The name's owner is gone by then (nobody can push it
/// again), yet a node that joins afterwards resolves the name, and a second key's publish of
/// it is refused by the server: its read-back finds the name taken by the first key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_storage_node_still_holds_and_guards_the_names_it_stored() {
    let dir = std::env::temp_dir().join(format!("p2pdns-stored-{}", rand::random::<u64>()));
    let server = Server::start(&dir).await;
    let owner = client(&server.addrs).await;
    let name = Name::from_ascii("kept.p2p.").unwrap();
    let first = dht(&owner)
        .publish(&name, vec![a("kept.p2p.", "192.0.2.77")])
        .await
        .unwrap();
    // The server holds it once a lookup finds it elsewhere than in the owner's own store.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = dht(&owner).node().lookup(name.clone(), usize::MAX).await;
        if found.is_ok_and(|r| r.records.iter().any(|(peer, _)| peer.is_some())) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never stored the name"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    owner.stop().await.unwrap();
    server.stop().await;

    let server = Server::start(&dir).await;
    let fresh = client(&server.addrs).await;
    resolve_until(fresh.addr, "kept.p2p.", &["192.0.2.77"]).await;

    let rival = client(&server.addrs).await;
    wait_until("the clock to pass the first record's seq", || {
        p2pdns::record::unix_now() > first.seq
    })
    .await;
    let stolen = dht(&rival)
        .publish(&name, vec![a("kept.p2p.", "198.51.100.2")])
        .await
        .unwrap();
    assert_ne!(stolen.owner, first.owner);
    let lower = LowerName::new(&name);
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    loop {
        let count = dht(&rival).publisher().replicas(&lower, stolen.seq);
        if let Some(count) = count.filter(|c| c.taken_by.is_some() || c.holders > 0) {
            assert_eq!(count.taken_by, Some(first.owner), "{count:?}");
            assert_eq!(
                count.holders, 0,
                "the server stored the second key's record"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rival's push was never counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = client(&server.addrs).await;
    resolve_until(late.addr, "kept.p2p.", &["192.0.2.77"]).await;
    server.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
