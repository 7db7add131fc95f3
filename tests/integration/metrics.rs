//! The metrics endpoint (issue 16): a daemon with `[metrics]` on is scraped over plain HTTP
//! before and after queries, and its counters move by what was asked: queries by source and
//! RCODE, answer times, the cache's hits and misses, the upstream's queries and RTT, DHT
//! lookups; two P2P nodes show each other in their peer and connection gauges, and an
//! introduction server its own. Every line of every scrape parses as the text format.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    scripted::{Scripted, answer, raw_a, raw_exchange_udp, raw_query, raw_soa},
    support::{TestDaemon, WAIT, ask, config, local_site, p2p_config, resolve_until},
};

/// The raw HTTP response to `request` sent to `addr`, read until the server closes.
async fn http(addr: SocketAddr, request: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("the endpoint answers in time")
}

/// Scrapes `addr`: checks the status and the media type, parses every line, and returns the
/// samples by `name{labels}`.
pub(crate) async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let response = http(addr, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    let length = format!("Content-Length: {}\r\n", body.len());
    assert!(
        head.contains(&length),
        "{head} (body of {} bytes)",
        body.len()
    );
    parse(body)
}

/// Every line a comment or `name{labels} value`; the samples by [`series`].
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                ["# HELP ", "# TYPE ", "# UNIT ", "# EOF"]
                    .iter()
                    .any(|p| line.starts_with(p)),
                "unknown comment: {line}"
            );
            continue;
        }
        let (name, labels, value) =
            split_sample(line).unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, *v)).collect();
        let key = series(name, &labels);
        assert!(samples.insert(key, value).is_none(), "twice: {line}");
    }
    assert_eq!(text.lines().last(), Some("# EOF"));
    samples
}

/// A sample's key: its name and its labels in name order, `name{a="1",b="2"}`.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let mut labels = labels.to_vec();
    labels.sort_unstable();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// A sample line taken apart: name, labels (values still escaped), value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

/// A line `name{labels} value` taken apart (label values still escaped); `None` when it is not
/// of that form: a name of `[a-zA-Z_:][a-zA-Z0-9_:]*`, labels `key="value"` separated by
/// commas, one space, a value.
fn split_sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let first = name.chars().next()?;
    if !(first.is_ascii_alphabetic() || first == '_' || first == ':')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"")?;
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let close = quoted_end(after)?;
            labels.push((key, &after[..close]));
            inner = &after[close + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = rest.strip_prefix(' ')?;
    (!value.is_empty() && !value.contains(' ')).then_some((name, labels, value))
}

/// Where the quoted text at the start of `text` (after its opening quote) ends: the index of
/// the closing quote, `\` escapes skipped.
fn quoted_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(at),
            _ => {}
        }
    }
    None
}

/// The value of `name` with `labels`, 0 when absent.
fn get(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples.get(&series(name, labels)).copied().unwrap_or(0.0)
}

/// How much `name` with `labels` moved from `before` to `after`.
fn moved(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    get(after, name, labels) - get(before, name, labels)
}

/// The sum of every sample of `name`, whatever its labels.
pub(crate) fn sum(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

const QUERIES: &str = "p2pdns_dns_queries_total";

/// An upstream answering `www.example.` with an address and every other name NXDOMAIN.
async fn upstream() -> Scripted {
    Scripted::start(|asked| {
        let qname = asked.qname();
        if qname == "www.example." {
            let a = raw_a(&qname, 300, [192, 0, 2, 80]);
            answer(asked, ResponseCode::NoError, 0, vec![a], vec![])
        } else {
            let soa = raw_soa("example.", 300, 60);
            answer(asked, ResponseCode::NXDomain, 0, vec![], vec![soa])
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_queries_made() {
    let upstream = upstream().await;
    let mut config = config(&[upstream.addr]);
    config.metrics.enabled = true;
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    local_site(&mut config);
    let daemon = TestDaemon::start(config).await;
    let metrics = daemon.metrics_addr.expect("metrics are on");
    let before = scrape(metrics).await;
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(get(&before, "p2pdns_build_info", &version), 1.0);
    assert!(
        !before.keys().any(|k| k.starts_with("libp2p_")),
        "no P2P node, no libp2p metrics"
    );

    let www = ask(daemon.addr, "www.example.", RecordType::A).await;
    assert_eq!(www.answers.len(), 1);
    let cached = ask(daemon.addr, "www.example.", RecordType::A).await;
    assert_eq!(cached.answers.len(), 1);
    let missing = ask(daemon.addr, "missing.example.", RecordType::A).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    let site = ask(daemon.addr, "site.p2p.", RecordType::A).await;
    assert_eq!(site.answers.len(), 1);
    let localhost = ask(daemon.addr, "localhost.", RecordType::A).await;
    assert_eq!(localhost.answers.len(), 1);
    let after = scrape(metrics).await;

    for (source, rcode, n) in [
        ("upstream", "NOERROR", 1.0),
        ("cache", "NOERROR", 1.0),
        ("upstream", "NXDOMAIN", 1.0),
        ("p2p_local", "NOERROR", 1.0),
        ("local", "NOERROR", 1.0),
        ("p2p_dht", "NOERROR", 0.0),
        ("upstream", "SERVFAIL", 0.0),
    ] {
        let labels = [("source", source), ("rcode", rcode)];
        assert_eq!(moved(&before, &after, QUERIES, &labels), n, "{labels:?}");
    }
    assert_eq!(sum(&after, QUERIES) - sum(&before, QUERIES), 5.0);
    let answered = "p2pdns_dns_answer_duration_seconds";
    for (source, n) in [
        ("cache", 1.0),
        ("upstream", 2.0),
        ("p2p_local", 1.0),
        ("local", 1.0),
    ] {
        let count = format!("{answered}_count");
        let labels = [("source", source)];
        assert_eq!(moved(&before, &after, &count, &labels), n, "{source}");
        let inf = get(
            &after,
            &format!("{answered}_bucket"),
            &[("source", source), ("le", "+Inf")],
        );
        assert_eq!(
            inf,
            get(&after, &count, &labels),
            "{source}: +Inf bucket is the count"
        );
    }
    assert_eq!(moved(&before, &after, "p2pdns_cache_hits_total", &[]), 1.0);
    assert_eq!(
        moved(&before, &after, "p2pdns_cache_misses_total", &[]),
        2.0
    );
    assert_eq!(
        get(&after, "p2pdns_cache_entries", &[]),
        2.0,
        "the address and the NXDOMAIN"
    );
    assert!(get(&after, "p2pdns_cache_bytes", &[]) > 0.0);

    let server = upstream.addr.to_string();
    let label = [("upstream", server.as_str())];
    let asked = upstream.asked().len() as f64;
    assert_eq!(
        asked, 2.0,
        "one query per name: the second www came from the cache"
    );
    for (name, n) in [
        ("p2pdns_upstream_queries_total", asked),
        ("p2pdns_upstream_answers_total", asked),
        ("p2pdns_upstream_failures_total", 0.0),
        ("p2pdns_upstream_rtt_seconds_count", asked),
    ] {
        assert_eq!(moved(&before, &after, name, &label), n, "{name}");
    }
    assert!(get(&after, "p2pdns_upstream_rtt_seconds_sum", &label) > 0.0);
    assert_eq!(get(&after, "p2pdns_upstream_up", &label), 1.0);
    assert!(get(&after, "p2pdns_upstream_srtt_seconds", &label) > 0.0);

    // A plain query asked three times: the first from the cache by the full path, the next two
    // sent again from the answer memo (src/dns/memo.rs), all counted as cache hits.
    let plain = raw_query(0x4242, "www.example.", 1, false);
    for _ in 0..3 {
        let answer = raw_exchange_udp(daemon.addr, &plain).await;
        assert_eq!(answer[3] & 0x0F, 0, "NOERROR");
    }
    let memo = scrape(metrics).await;
    let cache = [("source", "cache"), ("rcode", "NOERROR")];
    assert_eq!(moved(&after, &memo, QUERIES, &cache), 3.0);
    assert_eq!(sum(&memo, QUERIES) - sum(&after, QUERIES), 3.0);
    assert_eq!(moved(&after, &memo, "p2pdns_cache_hits_total", &[]), 3.0);
    let count = [("source", "cache")];
    let answered = "p2pdns_dns_answer_duration_seconds_count";
    assert_eq!(moved(&after, &memo, answered, &count), 3.0);
    assert_eq!(upstream.asked().len(), 2, "nothing more asked upstream");

    // A query that does not parse (two questions announced, one sent) gets FORMERR before any
    // handler sees it: counted as answered here.
    let mut broken = raw_query(0x4343, "www.example.", 1, false);
    broken[5] = 2;
    let answer = raw_exchange_udp(daemon.addr, &broken).await;
    assert_eq!(answer[3] & 0x0F, 1, "FORMERR");
    let formerr = scrape(metrics).await;
    let labels = [("source", "local"), ("rcode", "FORMERR")];
    assert_eq!(moved(&memo, &formerr, QUERIES, &labels), 1.0);

    // Only /metrics is served, and only GET and HEAD.
    let other = http(metrics, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
    let post = http(metrics, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    daemon.stop().await.unwrap();
}

/// Scrapes `daemon`'s endpoint until `done` holds for the samples (within [`WAIT`]).
async fn scrape_until(
    metrics: SocketAddr,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let samples = scrape(metrics).await;
        if done(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn with_metrics(mut config: p2pdns::Config) -> p2pdns::Config {
    config.metrics.enabled = true;
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_count_each_other_and_a_dht_lookup() {
    let first = TestDaemon::start(with_metrics(p2p_config(&[]))).await;
    let second = TestDaemon::start(with_metrics(p2p_config(&first.p2p_addrs))).await;
    let direct = [("path", "direct")];
    for daemon in [&first, &second] {
        let samples = scrape_until(daemon.metrics_addr.unwrap(), "one peer", |s| {
            get(s, "p2pdns_p2p_peers", &[]) == 1.0
                && get(s, "p2pdns_p2p_connections", &direct) >= 1.0
        })
        .await;
        let relayed = [("path", "relayed")];
        assert_eq!(get(&samples, "p2pdns_p2p_connections", &relayed), 0.0);
        let established = sum(&samples, "libp2p_swarm_connections_established_total");
        assert!(
            established >= 1.0,
            "libp2p's own metrics are in the registry"
        );
    }

    // A name published on the second node, looked up in the DHT through the first.
    let metrics = first.metrics_addr.unwrap();
    let before = scrape(metrics).await;
    let name = Name::from_ascii("metrics.p2p.").unwrap();
    let record = Record::from_rdata(name.clone(), 300, RData::A("192.0.2.9".parse().unwrap()));
    let publisher = second.dht.as_ref().unwrap();
    publisher.publish(&name, vec![record]).await.unwrap();
    resolve_until(first.addr, "metrics.p2p.", &["192.0.2.9"]).await;
    let after = scrape(metrics).await;
    let found = [("outcome", "found")];
    assert!(moved(&before, &after, "p2pdns_dht_lookups_total", &found) >= 1.0);
    let dht_answers = [("source", "p2p_dht"), ("rcode", "NOERROR")];
    assert!(moved(&before, &after, QUERIES, &dht_answers) >= 1.0);
    let lookups = moved(
        &before,
        &after,
        "p2pdns_dht_lookup_duration_seconds_count",
        &[],
    );
    assert!(lookups >= 1.0);
    let requests = "p2pdns_dht_lookup_requests";
    assert_eq!(
        moved(&before, &after, &format!("{requests}_count"), &[]),
        lookups
    );
    assert!(
        get(&after, &format!("{requests}_sum"), &[]) >= 1.0,
        "a peer was asked"
    );
    // A name the network does not hold: its NXDOMAIN is the DHT's answer, not a local one
    // (counted as local before a newcomer noticed).
    let absent = ask(first.addr, "absent-from-the-network.p2p.", RecordType::A).await;
    assert_eq!(absent.metadata.response_code, ResponseCode::NXDomain);
    let later = scrape(metrics).await;
    let nxdomain = |source| [("source", source), ("rcode", "NXDOMAIN")];
    assert_eq!(moved(&after, &later, QUERIES, &nxdomain("p2p_dht")), 1.0);
    assert_eq!(moved(&after, &later, QUERIES, &nxdomain("p2p_local")), 0.0);
    second.stop().await.unwrap();
    // The peer gone, the gauges come down with it.
    scrape_until(metrics, "no peer left", |s| {
        get(s, "p2pdns_p2p_peers", &[]) == 0.0 && get(s, "p2pdns_p2p_connections", &direct) == 0.0
    })
    .await;
    first.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introduction_server_counts_its_peers_and_what_it_holds() {
    let dir = std::env::temp_dir().join(format!("p2pdns-intro-metrics-{}", rand::random::<u64>()));
    let config = with_metrics(p2p_config(&[]));
    let intro = p2pdns::intro::Intro::bind(config.p2p.clone(), config.intro, &dir, &[])
        .await
        .unwrap()
        .with_metrics(&config.metrics)
        .await
        .unwrap();
    let metrics = intro.metrics_addr().expect("metrics are on");
    let bootstrap = intro.bootstrap_addrs().to_vec();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(intro.run(shutdown.clone()));
    let node = TestDaemon::start(p2p_config(&bootstrap)).await;
    let samples = scrape_until(metrics, "the intro to count its peer", |s| {
        get(s, "p2pdns_p2p_peers", &[]) == 1.0
    })
    .await;
    for held in [
        "p2pdns_intro_relay_reservations",
        "p2pdns_intro_relay_circuits",
        "p2pdns_intro_rendezvous_registrations",
    ] {
        assert!(samples.contains_key(held), "{held}");
    }
    assert!(
        !samples.keys().any(|k| k.starts_with("p2pdns_dns_")),
        "no DNS metrics on an introduction server"
    );
    node.stop().await.unwrap();
    shutdown.cancel();
    let ended = tokio::time::timeout(WAIT, server).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_sample_parser_refuses_what_is_not_the_format() {
    let (name, labels, value) = split_sample(r#"a_b{x="1 }",y="\""} 2"#).unwrap();
    assert_eq!((name, value), ("a_b", "2"));
    assert_eq!(labels, vec![("x", "1 }"), ("y", r#"\""#)]);
    assert_eq!(split_sample("up 1"), Some(("up", vec![], "1")));
    for bad in [
        "1up 1",
        "up",
        "up{x=\"1\"}",
        "up  1",
        "up{x=\"1} 1",
        "up 1 2",
        "up{=\"1\"} 1",
    ] {
        assert_eq!(split_sample(bad), None, "{bad}");
    }
}

/// `--metrics-listen` turns the endpoint on at its address; one off loopback is taken with a
/// warning naming the key.
#[test]
fn the_flag_turns_metrics_on_and_a_public_address_is_warned_about() {
    let dir = std::env::temp_dir().join(format!("p2pdns-metrics-flag-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("p2pdns.toml");
    std::fs::write(&config, "[metrics]\nmax_connections = 4\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pdns"))
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["run", "--metrics-listen", "0.0.0.0:9253", "--check-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("metrics:    http://0.0.0.0:9253/metrics"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config value metrics.listen: 0.0.0.0:9253 is not a loopback address"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
