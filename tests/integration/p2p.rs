//! In-process P2P networks: several daemons on loopback forming a DHT, names published on one
//! and resolved through another's DNS port with hickory's client.

use std::time::Duration;

use crate::support::{TestDaemon, WAIT, a_record as a, ask, p2p_config, resolve_until};
use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};

/// Starts `n` daemons: the first alone, the others bootstrapping from it.
async fn network(n: usize) -> Vec<TestDaemon> {
    let first = TestDaemon::start(p2p_config(&[])).await;
    let bootstrap = first.p2p_addrs.clone();
    let mut daemons = vec![first];
    for _ in 1..n {
        daemons.push(TestDaemon::start(p2p_config(&bootstrap)).await);
    }
    // Wait until every node knows a few DHT peers.
    let deadline = tokio::time::Instant::now() + WAIT;
    for daemon in &daemons {
        loop {
            let status = daemon.dht.as_ref().unwrap().node().status().await.unwrap();
            if status.routing_table_peers >= (n - 1).min(3) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "routing table stayed at {} peers",
                status.routing_table_peers
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    daemons
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_published_on_one_node_resolves_through_another() {
    let daemons = network(5).await;
    let publisher = daemons[1].dht.as_ref().unwrap();
    let name = Name::from_ascii("site.p2p.").unwrap();
    publisher
        .publish(
            &name,
            vec![
                a("site.p2p.", "192.0.2.10"),
                a("www.site.p2p.", "192.0.2.11"),
            ],
        )
        .await
        .unwrap();

    let msg = resolve_until(daemons[4].addr, "site.p2p.", &["192.0.2.10"]).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.metadata.authoritative);
    let www = resolve_until(daemons[3].addr, "WWW.Site.p2p.", &["192.0.2.11"]).await;
    assert!(
        www.answers[0]
            .name
            .eq_case(&Name::from_ascii("WWW.Site.p2p.").unwrap())
    );
    let missing = ask(daemons[2].addr, "nothing-here.p2p.", RecordType::A).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    let nodata = ask(daemons[2].addr, "site.p2p.", RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);

    // The owner's key name resolves too.
    let key_name = publisher.key_name();
    publisher
        .publish(&key_name, vec![a(&key_name.to_ascii(), "192.0.2.99")])
        .await
        .unwrap();
    resolve_until(daemons[0].addr, &key_name.to_ascii(), &["192.0.2.99"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_keeps_and_republishes_its_names_after_a_restart() {
    let daemons = network(3).await;
    // The owner publishes while it knows no peer, so the name cannot have spread before the
    // restart: only republishing can bring it to the others.
    let mut owner = TestDaemon::start(p2p_config(&[])).await;
    owner.keep_dir();
    let dir = owner.data_dir.clone();
    let old_key = owner.dht.as_ref().unwrap().key_name();
    owner
        .dht
        .as_ref()
        .unwrap()
        .publish(
            &Name::from_ascii("kept.p2p.").unwrap(),
            vec![a("kept.p2p.", "192.0.2.77")],
        )
        .await
        .unwrap();
    owner.stop().await.unwrap();

    // Same data directory: same key, same names, pushed again on start.
    let bootstrap = daemons[0].p2p_addrs.clone();
    let restarted = TestDaemon::start_in(p2p_config(&bootstrap), dir).await;
    let dht = restarted.dht.as_ref().unwrap();
    assert_eq!(dht.key_name(), old_key, "the identity key is reused");
    let names: Vec<String> = dht.own_names().iter().map(|r| r.name.to_ascii()).collect();
    assert_eq!(names, vec!["kept.p2p."]);
    let deadline = tokio::time::Instant::now() + WAIT;
    'stored: loop {
        for daemon in &daemons {
            let status = daemon.dht.as_ref().unwrap().node().status().await.unwrap();
            if status.stored_records > 0 {
                break 'stored;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the name was never pushed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for daemon in &daemons {
        resolve_until(daemon.addr, "kept.p2p.", &["192.0.2.77"]).await;
    }
}

/// One node of five stops: the others still answer NXDOMAIN for names no one published.
/// Kademlia kept the stopped node in every routing table and the other nodes kept naming it,
/// so every negative lookup waited for its dial (over QUIC, the handshake's 5 s timeout, past
/// the 2 s lookup budget): a newcomer saw SERVFAIL for every unknown name for 11 minutes. A
/// peer of the routing table that cannot be dialed twice 5 s apart is now set aside for a
/// minute (its dials refused at once); src/p2p/stalls.rs tests how it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_does_not_turn_negative_answers_into_failures() {
    let mut daemons = network(5).await;
    let nx = ask(daemons[2].addr, "nothing-here-0.p2p.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    daemons.pop().unwrap().stop().await.unwrap();
    // The lookups right after the stop may wait for it (each at most the 2 s budget) until a
    // dial of it has failed; each node finds that out for itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut asked = 0;
    for daemon in &daemons {
        let mut in_a_row = 0;
        loop {
            let name = format!("nothing-here-{asked}.p2p.");
            let reply = ask(daemon.addr, &name, RecordType::A).await;
            asked += 1;
            if reply.metadata.response_code == ResponseCode::NXDomain {
                in_a_row += 1;
                if in_a_row == 3 {
                    break;
                }
                continue;
            }
            in_a_row = 0;
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} for {name} a minute after the stop",
                reply.metadata.response_code
            );
        }
    }
    for i in 0..5 {
        for daemon in &daemons {
            let name = format!("still-nothing-{i}.p2p.");
            let reply = ask(daemon.addr, &name, RecordType::A).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{name} after {asked} names"
            );
        }
    }

    for daemon in daemons {
        daemon.stop().await.unwrap();
    }
}

/// A name the DHT lost still resolves where it was resolved before, until its record expires.
/// The owner, the only holder, stops; a node that never stored the name joins; the client's
/// next lookup finds the name absent (the newcomer answered, without a record). "Absent" never
/// means the owner took the name back (that is a signed record without data, which lookups
/// find: docs/PROTOCOL.md section 6), so the signed record in hand stays the answer. Before,
/// the absence replaced it in the cache and the name went NXDOMAIN once its TTL ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_the_dht_lost_resolves_where_it_was_found_until_it_expires() {
    let owner = TestDaemon::start(p2p_config(&[])).await;
    // The client stores nothing for others: the owner's store is the name's only replica.
    let mut client_config = p2p_config(&owner.p2p_addrs);
    client_config.p2p.dht_mode = p2pdns::config::DhtMode::Client;
    let client = TestDaemon::start(client_config).await;
    let name = Name::from_ascii("lost.p2p.").unwrap();
    let record = Record::from_rdata(name.clone(), 1, RData::A("192.0.2.55".parse().unwrap()));
    let dht = owner.dht.as_ref().unwrap();
    dht.publish(&name, vec![record]).await.unwrap();
    resolve_until(client.addr, "lost.p2p.", &["192.0.2.55"]).await;
    owner.stop().await.unwrap();

    let newcomer = TestDaemon::start(p2p_config(&client.p2p_addrs)).await;
    let newcomer_id = newcomer.dht.as_ref().unwrap().node().peer_id();
    let node = client.dht.as_ref().unwrap().node();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !node
        .status()
        .await
        .unwrap()
        .peers
        .iter()
        .any(|p| p.peer_id == newcomer_id && p.in_routing_table)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the newcomer never entered the client's routing table"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the record's one-second TTL, each query is a new lookup that ends "absent".
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let reply = ask(client.addr, "lost.p2p.", RecordType::A).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{reply:?}"
        );
        assert_eq!(crate::support::a_records(&reply), ["192.0.2.55"]);
    }
}

/// A bootstrap address whose `/p2p/` part names another peer than the one answering there
/// (a typo, or the server's key changed): libp2p only logged "Unexpected peer ID", and with
/// another peer connected `doctor` said all was well. The node's status now lists that
/// bootstrap peer as not connected, with the reason in plain words and the peer that answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_address_with_a_wrong_peer_id_is_reported() {
    use libp2p::multiaddr::Protocol;
    let first = TestDaemon::start(p2p_config(&[])).await;
    let real = first.p2p_addrs[0].clone();
    let answering = first.dht.as_ref().unwrap().node().peer_id();
    let mut wrong: libp2p::Multiaddr = real
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    wrong.push(Protocol::P2p(libp2p::PeerId::random()));
    let node = TestDaemon::start(p2p_config(&[wrong.clone(), real.clone()])).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let status = node.dht.as_ref().unwrap().node().status().await.unwrap();
        let settled = status.bootstrap.len() == 2
            && status.bootstrap[0].last_error.is_some()
            && status.bootstrap[1].connected;
        if settled {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bootstrap peers never settled: {:?}",
            status.bootstrap
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let bad = &status.bootstrap[0];
    assert_eq!(bad.addrs, vec![wrong]);
    assert!(!bad.connected);
    assert_eq!(bad.answered_as, Some(answering));
    let error = bad.last_error.as_deref().unwrap();
    assert!(
        error.contains(&format!(
            "answers as another peer id ({answering}): the /p2p/ part of the address is wrong \
             or the server's key changed"
        )),
        "{error}"
    );
    assert_eq!(status.bootstrap[1].addrs, vec![real]);
    assert_eq!(status.bootstrap[1].last_error, None);
}

/// A node whose only peer (its bootstrap peer) restarts is connected to it again within
/// seconds. The bootstrap redial no longer keeps a timer while the node has a peer; it is armed
/// when the last connection closes (Kademlia's own queries may get there first: this test
/// checks the outcome, not which of them dialed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_only_peer_restarts_is_connected_to_it_again() {
    let port = crate::support::reserved_port();
    let mut config = p2p_config(&[]);
    config.p2p.listen = Some(vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()]);
    let mut first = TestDaemon::start(config.clone()).await;
    first.keep_dir();
    let dir = first.data_dir.clone();
    // Reachable as configured: no relay slot to ask again of the restarted peer, which would
    // reconnect the node without any redial.
    let node_port = crate::support::reserved_port();
    let mut node_config = p2p_config(&first.p2p_addrs);
    let node_addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{node_port}").parse().unwrap();
    node_config.p2p.listen = Some(vec![node_addr.clone()]);
    node_config.p2p.external_addresses = vec![node_addr];
    let node = TestDaemon::start(node_config).await;
    let connected = |want: bool| {
        let node = node.dht.as_ref().unwrap().node().clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let status = node.status().await.unwrap();
                if status.bootstrap[0].connected == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "bootstrap peer connected: {} after {WAIT:?}, not {want}",
                    !want
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    connected(true).await;
    first.stop().await.unwrap();
    connected(false).await;
    // Same key and port: the node's bootstrap address names it again.
    let _first = TestDaemon::start_in(config, dir).await;
    connected(true).await;
}
