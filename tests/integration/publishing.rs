//! Publishing tells the truth (docs/PROTOCOL.md section 8.2): a publish reports how many
//! other nodes hold the record, found by reading it back, and a key moved to a machine without
//! its names file signs above what the network holds instead of being refused unseen.

use hickory_proto::rr::{LowerName, Name, RData, Record};
use p2pdns::{p2p::identity::load_or_create, record::NameRecord};

use crate::{
    p2p_rules::{dht, network},
    support::{WAIT, resolve_until},
};

fn a(owner: &str, ip: &str) -> Record {
    let name = Name::from_ascii(owner).unwrap();
    Record::from_rdata(name, 1, RData::A(ip.parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_counts_its_holders_and_a_moved_key_signs_above_the_network() {
    let daemons = network(3, 3).await;
    let (owner, others) = (&daemons[0], &daemons[1..]);

    // The count comes from reading the record back: the two other nodes store it.
    let name = Name::from_ascii("counted.p2p.").unwrap();
    let published = dht(owner)
        .publish(&name, vec![a("counted.p2p.", "192.0.2.1")])
        .await
        .unwrap();
    let count = dht(owner)
        .publisher()
        .replicas(&LowerName::new(&name), published.seq)
        .expect("a publish waits for its read-back on an idle loopback network");
    assert_eq!(count.holders, 2, "{count:?}");
    assert_eq!((count.newer, count.taken_by), (None, None));

    // The same key elsewhere (here: a record of the owner's key that its names file never
    // held, with a seq far ahead, as a machine whose clock ran ahead would leave).
    let key = load_or_create(&owner.data_dir).unwrap();
    let moved = Name::from_ascii("moved.p2p.").unwrap();
    let ahead = p2pdns::record::unix_now() + 100_000;
    let old = NameRecord::sign(
        &key,
        &moved,
        ahead,
        p2pdns::record::unix_now() + 3600,
        vec![a("moved.p2p.", "192.0.2.7")],
    )
    .unwrap();
    dht(&others[0]).node().publish(old).await.unwrap();
    resolve_until(others[1].addr, "moved.p2p.", &["192.0.2.7"]).await;
    let new = tokio::time::timeout(
        WAIT,
        dht(owner).publish(&moved, vec![a("moved.p2p.", "192.0.2.8")]),
    )
    .await
    .expect("a publish answers")
    .unwrap();
    assert!(
        new.seq > ahead,
        "seq {} is not above the network's {ahead}",
        new.seq
    );
    let count = dht(owner)
        .publisher()
        .replicas(&LowerName::new(&moved), new.seq)
        .expect("counted");
    assert_eq!(
        count.holders, 2,
        "storage nodes took the newer record: {count:?}"
    );
    resolve_until(others[1].addr, "moved.p2p.", &["192.0.2.8"]).await;
}

/// 70 names published at once from one node, against a storage node that takes 60 PUTs a
/// minute from one peer (the default): paced PUTs bring every one of them there. Unpaced, the
/// burst lost 10 names until the next republish ten minutes later. Takes about 90 s (the pace
/// is the point), on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_names_reaches_a_rate_limited_storage_node_whole() {
    let daemons = network(2, 3).await;
    let (owner, storage) = (&daemons[0], &daemons[1]);
    let names: Vec<Name> = (0..70)
        .map(|i| Name::from_ascii(format!("burst{i}.p2p.")).unwrap())
        .collect();
    let publishes = names.iter().map(|name| {
        let text = name.to_ascii();
        async move { dht(owner).publish(name, vec![a(&text, "192.0.2.9")]).await }
    });
    for published in futures_util::future::join_all(publishes).await {
        published.unwrap();
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let mut missing = Vec::new();
        for name in &names {
            if dht(storage)
                .node()
                .stored(name.clone())
                .await
                .unwrap()
                .is_none()
            {
                missing.push(name.to_ascii());
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the storage node never got {} names: {missing:?}",
            missing.len()
        );
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}
