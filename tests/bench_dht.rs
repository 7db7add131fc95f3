//! Benchmark, not a test (ignored by `cargo test`): uncached `.p2p` lookups in a network of
//! daemons on loopback, in one process. Prints figures; asserts only that the set-up works.
//!
//! Run: `cargo test --release --test bench_dht -- --ignored --nocapture`
//! Environment: NODES (default 50), NAMES (default 100).

mod support;

use std::time::{Duration, Instant};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};
use support::{TestDaemon, WAIT, a_records, ask, p2p_config};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
        if msg.metadata.response_code == ResponseCode::NoError
            && a_records(&msg) == vec![ip.clone()]
        {
            ok += 1;
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    println!(
        "uncached lookups: {ok}/{names} succeeded ({:.1} %)",
        100.0 * ok as f64 / names as f64
    );
    if !latencies.is_empty() {
        println!(
            "latency of successful lookups: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.95).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    assert!(ok > 0, "no lookup succeeded: the set-up is broken");
}
