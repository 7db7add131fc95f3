//! Benchmark, not a test (built with the `test-support` feature only, and ignored): uncached
//! `.p2p` lookups in a network of daemons on loopback, in one process. Prints figures; asserts
//! only that the set-up works.
//!
//! Run: `cargo test --release --features test-support --test integration bench_dht -- --ignored
//! --nocapture --test-threads 1`
//! - `uncached_lookup_latency`: NODES daemons (default 50), NAMES (default 100) resolved once each
//!   through another daemon's DNS port, then ABSENT names nobody published (default 50), each
//!   asked once (NXDOMAIN once the lookup's query has ended).
//! - `scaling_with_churn`: bare P2P nodes (memory transport, Noise, Yamux) in networks of SIZES nodes (default
//!   100,300,1000); NAMES (default 50) published, then STOPPED_PERCENT (default 20) of the nodes
//!   stopped; hop count, requests, success and latency (BUDGET_MS, default 2000) per size, and
//!   memory per node at rest.
//!
//! With `BENCH_TRACE=FILE` each lookup's latency is printed and the nodes' lookup traces
//! (`p2pdns::lookup_trace`: why and when each lookup answered, its first replica, its query's
//! requests and failures) go to FILE, to tell where slow lookups spent their time.

// Benchmarks time the real world (wall-clock latency), not tokio's pausable clock.
#![allow(clippy::disallowed_types)]

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::support::{TestDaemon, WAIT, a_records, ask, p2p_config, reserved_port};
use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};
use libp2p::{
    Multiaddr, PeerId,
    identity::{self, ed25519},
    kad::KBucketKey,
};
use p2pdns::{
    p2p::{Node, NodeHandle},
    record::{NameRecord, dht_key},
};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// With `BENCH_TRACE=FILE`, the lookups' traces (`p2pdns::lookup_trace` at debug, or the
/// filter in `BENCH_TRACE_FILTER`) go to FILE, and the benchmark prints each lookup's latency,
/// so that slow lookups can be matched with what their nodes saw.
fn trace_to_file() -> bool {
    let Ok(path) = std::env::var("BENCH_TRACE") else {
        return false;
    };
    let filter = std::env::var("BENCH_TRACE_FILTER")
        .unwrap_or_else(|_| "p2pdns::lookup_trace=debug".to_owned());
    let file = std::fs::File::create(&path).expect("create the BENCH_TRACE file");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    true
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn uncached_lookup_latency() {
    let nodes = env("NODES", 50);
    let names = env("NAMES", 100);
    let traced = trace_to_file();
    let started = Instant::now();
    let first = TestDaemon::start(p2p_config(&[])).await;
    let mut bootstrap = first.p2p_addrs.clone();
    let mut daemons = vec![first];
    for i in 1..nodes {
        let daemon = TestDaemon::start(p2p_config(&bootstrap)).await;
        // Bootstrap from a few recent nodes too, so the network is not a star.
        if i % 5 == 0 {
            bootstrap.extend(daemon.p2p_addrs.iter().take(1).cloned());
            if bootstrap.len() > 4 {
                bootstrap.remove(1);
            }
        }
        daemons.push(daemon);
    }
    let deadline = Instant::now() + WAIT * 3;
    for daemon in &daemons {
        while daemon
            .dht
            .as_ref()
            .unwrap()
            .node()
            .status()
            .await
            .unwrap()
            .routing_table_peers
            < 5
        {
            assert!(Instant::now() < deadline, "network did not form");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "{nodes} nodes up in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Publish each name from one node; let the puts spread.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut published = Vec::new();
    for i in 0..names {
        let owner = next(nodes);
        let name = format!("bench{i}.p2p.");
        let ip = format!("198.51.100.{}", i % 250 + 1);
        let record = Record::from_rdata(
            Name::from_ascii(&name).unwrap(),
            300,
            RData::A(ip.parse().unwrap()),
        );
        daemons[owner]
            .dht
            .as_ref()
            .unwrap()
            .publish(&Name::from_ascii(&name).unwrap(), vec![record])
            .await
            .unwrap();
        published.push((owner, name, ip));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Resolve each name once through another node's DNS port (uncached there).
    let mut latencies = Vec::new();
    let mut ok = 0;
    for (owner, name, ip) in &published {
        let mut resolver = next(nodes);
        if resolver == *owner {
            resolver = (resolver + 1) % nodes;
        }
        let t = Instant::now();
        let msg = ask(daemons[resolver].addr, name, RecordType::A).await;
        let elapsed = t.elapsed();
        if traced {
            println!("lookup {name} {:.1} ms", elapsed.as_secs_f64() * 1e3);
        }
        if msg.metadata.response_code == ResponseCode::NoError
            && a_records(&msg) == vec![ip.clone()]
        {
            ok += 1;
            latencies.push(elapsed);
        }
    }
    print_latencies(
        "uncached lookups of published names",
        &mut latencies,
        ok,
        names,
    );

    let absent = env("ABSENT", 50);
    let mut negative = absent_lookups(&daemons, absent, &mut next, traced).await;
    let nxdomain = negative.len();
    print_latencies(
        "uncached lookups of absent names (NXDOMAIN)",
        &mut negative,
        nxdomain,
        absent,
    );
    assert!(ok > 0, "no lookup succeeded: the set-up is broken");
}

/// Names nobody published, each asked once through a random daemon: the latencies of those
/// answered NXDOMAIN (the DHT can only say "absent" once the lookup's query has ended).
async fn absent_lookups(
    daemons: &[TestDaemon],
    count: usize,
    next: &mut impl FnMut(usize) -> usize,
    traced: bool,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for i in 0..count {
        let name = format!("absent{i}.p2p.");
        let t = Instant::now();
        let msg = ask(daemons[next(daemons.len())].addr, &name, RecordType::A).await;
        let elapsed = t.elapsed();
        if traced {
            println!("lookup {name} {:.1} ms", elapsed.as_secs_f64() * 1e3);
        }
        if msg.metadata.response_code == ResponseCode::NXDomain {
            latencies.push(elapsed);
        }
    }
    latencies
}

/// Prints how many of `total` lookups answered as expected and the distribution of their
/// latencies.
fn print_latencies(what: &str, latencies: &mut [Duration], ok: usize, total: usize) {
    latencies.sort();
    println!(
        "{what}: {ok}/{total} answered as expected ({:.1} %)",
        100.0 * ok as f64 / total.max(1) as f64
    );
    if let Some(max) = latencies.last() {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        println!(
            "  latency: p50 {}, p90 {}, p95 {}, p99 {}, max {}",
            ms(percentile(latencies, 0.50)),
            ms(percentile(latencies, 0.90)),
            ms(percentile(latencies, 0.95)),
            ms(percentile(latencies, 0.99)),
            ms(*max),
        );
    }
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    status_kib(std::process::id(), "VmRSS")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A bare P2P node (no DNS front end, memory transport) for the large networks.
struct BareNode {
    handle: NodeHandle,
    key: ed25519::Keypair,
    addr: Multiaddr,
    stop: CancellationToken,
}

async fn bare_node(bootstrap: Vec<Multiaddr>) -> BareNode {
    let mut config = p2p_config(&bootstrap).p2p;
    // The memory transport (with Noise and Yamux, as on TCP): a thousand nodes in one process
    // would need more file descriptors than a process may open here, and loopback sockets
    // add nothing to a measure of routing.
    config.listen = Some(vec!["/memory/0".parse().unwrap()]);
    let key = ed25519::Keypair::generate();
    let node = Node::bind(identity::Keypair::from(key.clone()), &config)
        .await
        .expect("bind a P2P node");
    let handle = node.handle();
    let addr = node.listen_addrs().remove(0);
    let stop = CancellationToken::new();
    tokio::spawn(node.run(stop.clone()));
    BareNode {
        handle,
        key,
        addr,
        stop,
    }
}

/// Request rounds a lookup from `from` needs to reach a peer holding the record, replayed over
/// the routing tables the live nodes really built: each round asks the ALPHA closest peers not
/// asked yet, a live peer answers with the K closest peers in its table, a stopped one does not
/// answer. This is Kademlia's iterative lookup in lock-step; libp2p does not report hops itself.
fn hops(
    from: PeerId,
    target: &KBucketKey<Vec<u8>>,
    tables: &HashMap<PeerId, Vec<PeerId>>,
    holders: &HashSet<PeerId>,
) -> Option<usize> {
    const ALPHA: usize = 3;
    const K: usize = 20;
    if holders.contains(&from) {
        return Some(0);
    }
    let distance = |p: &PeerId| KBucketKey::from(*p).distance(target);
    let closest = |peers: &[PeerId]| {
        let mut peers = peers.to_vec();
        peers.sort_by_key(distance);
        peers.truncate(K);
        peers
    };
    let mut known: Vec<PeerId> = closest(tables.get(&from)?);
    let mut asked = HashSet::from([from]);
    for round in 1..=64 {
        known.sort_by_key(distance);
        let batch: Vec<PeerId> = known
            .iter()
            .filter(|p| !asked.contains(*p))
            .take(ALPHA)
            .copied()
            .collect();
        if batch.is_empty() {
            return None;
        }
        let mut learned = Vec::new();
        for peer in batch {
            asked.insert(peer);
            if holders.contains(&peer) {
                return Some(round);
            }
            if let Some(table) = tables.get(&peer) {
                learned.extend(closest(table));
            }
        }
        for peer in learned {
            if !known.contains(&peer) {
                known.push(peer);
            }
        }
    }
    None
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn scaling_with_churn() {
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "100,300,1000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIZES: comma-separated node counts")
        })
        .collect();
    let names = env("NAMES", 50);
    let stopped_percent = env("STOPPED_PERCENT", 20);
    let budget = Duration::from_millis(env("BUDGET_MS", 2000) as u64);
    let traced = trace_to_file();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut rows = Vec::new();
    for &n in &sizes {
        let rss_before = rss_kib();
        let started = Instant::now();
        let mut nodes: Vec<BareNode> = Vec::with_capacity(n);
        for i in 0..n {
            // Each node bootstraps from the first node and from one random earlier node.
            let mut bootstrap = Vec::new();
            if i > 0 {
                bootstrap.push(nodes[0].addr.clone());
                bootstrap.push(nodes[next(i)].addr.clone());
            }
            nodes.push(bare_node(bootstrap).await);
        }
        let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 5);
        for node in &nodes {
            while node.handle.status().await.unwrap().routing_table_peers < 5.min(n - 1) {
                assert!(
                    Instant::now() < deadline,
                    "the {n}-node network did not form"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let formed = started.elapsed();
        // At rest: the bootstrap queries have ended and their connections idled out (60 s).
        tokio::time::sleep(Duration::from_secs(env("REST_SECS", 65) as u64)).await;
        let mut at_rest = Vec::new();
        for node in &nodes {
            at_rest.push(node.handle.status().await.unwrap().connected_peers as f64);
        }
        let rss_rest = rss_kib();

        let now = p2pdns::record::unix_now();
        let mut published = Vec::new();
        for i in 0..names {
            let owner = next(n);
            let name = Name::from_ascii(format!("scale{n}-{i}.p2p.")).unwrap();
            let ip = format!("203.0.113.{}", i % 250 + 1);
            let rr = Record::from_rdata(name.clone(), 300, RData::A(ip.parse().unwrap()));
            let record = NameRecord::sign(&nodes[owner].key, &name, 1, now + 3600, vec![rr])
                .expect("sign a record");
            nodes[owner].handle.publish(record).await.unwrap();
            published.push((owner, name));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;

        // Stop a share of the nodes, owners included: their records must survive on others.
        let mut stopped = HashSet::new();
        while stopped.len() < n * stopped_percent / 100 {
            let i = next(n);
            if stopped.insert(i) {
                nodes[i].stop.cancel();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let live: Vec<usize> = (0..n).filter(|i| !stopped.contains(i)).collect();
        let mut tables = HashMap::new();
        let mut connections = Vec::new();
        for &i in &live {
            let status = nodes[i].handle.status().await.unwrap();
            connections.push(status.connected_peers as f64);
            let table = status
                .peers
                .iter()
                .filter(|p| p.in_routing_table)
                .map(|p| p.peer_id)
                .collect::<Vec<_>>();
            tables.insert(nodes[i].handle.peer_id(), table);
        }

        let mut latencies = Vec::new();
        let (mut ok, mut requests, mut answered, mut hop_counts, mut unreachable) =
            (0, Vec::new(), Vec::new(), Vec::new(), 0);
        let mut holders_per_name = Vec::new();
        let mut placed = Vec::new();
        for (owner, name) in &published {
            let mut holders = HashSet::new();
            for &i in &live {
                if nodes[i].handle.holds(name).await.unwrap() {
                    holders.insert(nodes[i].handle.peer_id());
                }
            }
            holders_per_name.push(holders.len() as f64);
            let target = KBucketKey::new(dht_key(name));
            let mut closest_live: Vec<PeerId> =
                live.iter().map(|&i| nodes[i].handle.peer_id()).collect();
            closest_live.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
            placed.push(
                closest_live
                    .iter()
                    .take(20)
                    .filter(|p| holders.contains(*p))
                    .count() as f64,
            );
            let mut resolver = live[next(live.len())];
            if resolver == *owner {
                resolver =
                    live[(live.iter().position(|&i| i == resolver).unwrap() + 1) % live.len()];
            }
            match hops(nodes[resolver].handle.peer_id(), &target, &tables, &holders) {
                Some(h) => hop_counts.push(h as f64),
                None => unreachable += 1,
            }
            let t = Instant::now();
            let result =
                tokio::time::timeout(budget, nodes[resolver].handle.lookup(name.clone(), 3)).await;
            if traced {
                println!("lookup {name} {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
            }
            if let Ok(Ok(replicas)) = &result
                && !replicas.records.is_empty()
            {
                ok += 1;
                latencies.push(t.elapsed());
                requests.push(replicas.requests as f64);
                answered.push(replicas.peers_answered as f64);
            } else {
                println!(
                    "  {name}: not found; {} live holders, owner {}, lookup {}",
                    holders.len(),
                    if stopped.contains(owner) {
                        "stopped"
                    } else {
                        "live"
                    },
                    match result {
                        Err(_) => "timed out".to_owned(),
                        Ok(Err(error)) => error.to_string(),
                        Ok(Ok(r)) => format!(
                            "ended empty after {} requests, {} answers",
                            r.requests, r.peers_answered
                        ),
                    }
                );
            }
        }
        latencies.sort();
        let mut sorted_hops = hop_counts.clone();
        sorted_hops.sort_by(f64::total_cmp);
        let p = |v: &[Duration], q| {
            if v.is_empty() {
                f64::NAN
            } else {
                percentile(v, q).as_secs_f64() * 1e3
            }
        };
        rows.push(format!(
            "| {n} | {} | {:.1} s | {ok}/{names} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
            stopped.len(),
            formed.as_secs_f64(),
            mean(&hop_counts),
            sorted_hops.last().map_or("-".into(), |h| format!("{h:.0}")),
            mean(&requests),
            mean(&answered),
            mean(&holders_per_name),
            mean(&placed),
            p(&latencies, 0.50),
            p(&latencies, 0.90),
            p(&latencies, 0.95),
            p(&latencies, 0.99),
            p(&latencies, 1.0),
            (n as f64).log2(),
            mean(&at_rest),
            mean(&connections),
            rss_rest.saturating_sub(rss_before) as f64 / n as f64,
        ));
        println!("{}", rows.last().unwrap());
        if unreachable > 0 {
            println!("  {unreachable} names not reachable in the replay of the routing tables");
        }
        for node in &nodes {
            node.stop.cancel();
        }
        drop(nodes);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(ok > 0, "no lookup succeeded in the {n}-node network");
    }
    println!();
    println!(
        "{} names per network, {stopped_percent} % of nodes stopped after publishing, lookups with a {} ms budget, 3 replicas wanted",
        names,
        budget.as_millis()
    );
    println!(
        "| nodes | stopped | formed in | found | hops mean | hops max | requests mean | peers answered mean | holders mean | of the 20 closest live | p50 ms | p90 ms | p95 ms | p99 ms | max ms | log2 N | connections at rest | connections at lookups | KiB RSS per node at rest |"
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        println!("{row}");
    }
}

/// `p2pdns status` of the daemon in `data_dir`: the number after `prefix` on its line.
fn status_number(data_dir: &std::path::Path, prefix: &str) -> Option<usize> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pdns"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("status")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(prefix))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn memory_holding_records() {
    let records = env("RECORDS", 10_000);
    let dir = std::env::temp_dir().join(format!("p2pdns-bench-{}", rand::random::<u64>()));
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let config = dir.join("p2pdns.toml");
    let p2p_port = reserved_port();
    // Limits raised so that one publisher may fill the store (the defaults allow 100 records
    // per peer and 10,000 in all).
    std::fs::write(
        &config,
        format!(
            "[upstream]\nservers = [\"127.0.0.1:9\"]\n[p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/{p2p_port}\"]\n\
             mdns = false\ndht_mode = \"server\"\nmax_stored_records = {}\n\
             max_records_per_owner = {}\nmax_puts_per_peer_per_minute = 1000000\n",
            records + 100,
            records + 100
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_p2pdns"))
        .env("HOME", dir.join("home"))
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "run",
            "--dns-listen",
            &format!("127.0.0.1:{}", reserved_port()),
        ])
        .stderr(log)
        .spawn()
        .expect("start the p2pdns binary");
    let pid = daemon.id();
    let deadline = Instant::now() + WAIT;
    while status_number(&data, "records:").is_none() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = status_kib(pid, "VmRSS");

    // One publisher over TCP; its records all go to the daemon, the only other node.
    let mut publisher_config = p2p_config(&[]).p2p;
    publisher_config.listen = Some(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]);
    publisher_config.bootstrap = vec![format!("/ip4/127.0.0.1/tcp/{p2p_port}").parse().unwrap()];
    let key = ed25519::Keypair::generate();
    let node = Node::bind(identity::Keypair::from(key.clone()), &publisher_config)
        .await
        .unwrap();
    let publisher = node.handle();
    let stop = CancellationToken::new();
    tokio::spawn(node.run(stop.clone()));
    while status_number(&data, "peers:").unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "the publisher did not connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at_rest = status_kib(pid, "VmRSS");

    let now = p2pdns::record::unix_now();
    let mut bytes = 0;
    let started = Instant::now();
    for i in 0..records {
        let name = Name::from_ascii(format!("memory-bench-{i}.p2p.")).unwrap();
        let rrs = vec![
            Record::from_rdata(
                name.clone(),
                300,
                RData::A(format!("198.51.100.{}", i % 250 + 1).parse().unwrap()),
            ),
            Record::from_rdata(
                name.clone(),
                300,
                RData::AAAA(format!("2001:db8::{:x}", i + 1).parse().unwrap()),
            ),
        ];
        let record = NameRecord::sign(&key, &name, 1, now + 86_400, rrs).unwrap();
        bytes += record.to_bytes().len();
        publisher.publish(record).await.unwrap();
        // Let the puts drain in batches rather than start ten thousand queries at once.
        if i % 500 == 499 {
            let deadline = Instant::now() + Duration::from_secs(60);
            while status_number(&data, "records:").unwrap_or(0) < i + 1 - 250 {
                assert!(
                    Instant::now() < deadline,
                    "the daemon stopped storing records"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stored = 0;
    while stored < records && Instant::now() < deadline {
        stored = status_number(&data, "records:").unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let filled_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let holding = status_kib(pid, "VmRSS");
    let peak = status_kib(pid, "VmHWM");
    stop.cancel();
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "p2pdns daemon (release binary, DNS + P2P node, TCP on loopback), VmRSS of the process:"
    );
    println!("| state | VmRSS MiB |");
    println!("|---|---:|");
    println!("| started, no peer | {:.1} |", fresh as f64 / 1024.0);
    println!(
        "| at rest, 1 peer, no records | {:.1} |",
        at_rest as f64 / 1024.0
    );
    println!(
        "| holding {stored} records (peak {:.1}) | {:.1} |",
        peak as f64 / 1024.0,
        holding as f64 / 1024.0
    );
    println!(
        "records: {records} published (A + AAAA, {:.0} bytes each encoded), {stored} stored in {:.1} s; \
         {:.2} KiB of RSS per stored record",
        bytes as f64 / records as f64,
        filled_in.as_secs_f64(),
        holding.saturating_sub(at_rest) as f64 / stored.max(1) as f64
    );
    assert_eq!(stored, records, "the daemon did not store every record");
}
