//! In-process tests: daemons on 127.0.0.1 port 0 forwarding to a hickory authority on
//! loopback, queried with hickory's client.

use std::{net::SocketAddr, time::Duration};

use crate::support::{
    TestDaemon, Upstream, WAIT, a_records, ask, config, ede, exchange_tcp, exchange_udp, query,
};
use hickory_proto::{
    op::{Edns, ResponseCode},
    rr::{Name, RData, RecordType, rdata::opt::EdnsOption},
};

#[tokio::test]
async fn several_daemons_forward_to_one_upstream() {
    let upstream = Upstream::start("").await;
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(TestDaemon::start(config(&[upstream.addr])).await);
    }
    for daemon in &daemons {
        let msg = ask(daemon.addr, "www.example.test.", RecordType::A).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&msg), vec!["192.0.2.80"]);
        assert!(msg.metadata.recursion_available, "RA must be set");
        assert!(
            !msg.metadata.authoritative,
            "forwarded answers are not authoritative"
        );
        let msg = ask(daemon.addr, "alias.example.test.", RecordType::A).await;
        assert_eq!(msg.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(a_records(&msg), vec!["192.0.2.80"]);
    }
    assert_eq!(daemons.len(), 3);
    for daemon in daemons {
        daemon.stop().await.expect("clean shutdown");
    }
}

#[tokio::test]
async fn question_case_is_kept_in_question_and_answer() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    // Fill the cache with the lower-case spelling first.
    ask(daemon.addr, "www.example.test.", RecordType::A).await;
    let msg = ask(daemon.addr, "WwW.ExAmPlE.tEsT.", RecordType::A).await;
    let asked = Name::from_ascii("WwW.ExAmPlE.tEsT.").unwrap();
    assert!(
        msg.queries[0].name().eq_case(&asked),
        "{:?}",
        msg.queries[0]
    );
    assert!(msg.answers[0].name.eq_case(&asked), "{:?}", msg.answers[0]);
}

#[tokio::test]
async fn answers_are_cached_with_ttls_counted_down() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let first = ask(daemon.addr, "short.example.test.", RecordType::A).await;
    assert_eq!(first.answers[0].ttl, 30);
    let seen = upstream.queries();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = ask(daemon.addr, "short.example.test.", RecordType::A).await;
    assert_eq!(
        upstream.queries(),
        seen,
        "second answer came from the cache"
    );
    assert!(
        second.answers[0].ttl < 30,
        "TTL counts down: {}",
        second.answers[0].ttl
    );
    assert_eq!(a_records(&second), vec!["192.0.2.30"]);
}

#[tokio::test]
async fn negative_answers_are_cached_by_soa_minimum() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let nx = ask(daemon.addr, "missing.example.test.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let soa = &nx.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert!(
        soa.ttl <= 60,
        "negative TTL is capped by the SOA minimum: {}",
        soa.ttl
    );
    let nodata = ask(daemon.addr, "ns.example.test.", RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    let seen = upstream.queries();
    upstream.set_silent(true);
    let again = ask(daemon.addr, "missing.example.test.", RecordType::A).await;
    assert_eq!(again.metadata.response_code, ResponseCode::NXDomain);
    let again = ask(daemon.addr, "ns.example.test.", RecordType::AAAA).await;
    assert_eq!(again.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        upstream.queries(),
        seen,
        "negative answers came from the cache"
    );
}

#[tokio::test]
async fn identical_questions_in_flight_share_one_upstream_query() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    cfg.upstream.timeout_ms = 1000;
    let daemon = TestDaemon::start(cfg).await;
    // The upstream holds back the first query so that all clients are waiting at once.
    upstream.set_silent(true);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = daemon.addr;
        tasks.push(tokio::spawn(async move {
            ask(addr, "www.example.test.", RecordType::A).await
        }));
    }
    // Wait until the upstream has seen the question, then let the retry through.
    let deadline = tokio::time::Instant::now() + WAIT;
    while upstream.queries() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream never asked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.set_silent(false);
    for task in tasks {
        let msg = task.await.unwrap();
        assert_eq!(a_records(&msg), vec!["192.0.2.80"]);
    }
    // One question upstream (its first try dropped, the retry answered), not twenty.
    assert!(
        upstream.queries() <= 2,
        "upstream saw {} queries",
        upstream.queries()
    );
}

#[tokio::test]
async fn failover_prefers_the_upstream_that_answers() {
    // A socket that receives queries and never answers.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    blackhole.set_nonblocking(true).unwrap();
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[blackhole.local_addr().unwrap(), upstream.addr])).await;
    let names = [
        "www", "ns", "short", "alias", "a1", "a2", "a3", "a4", "a5", "a6",
    ];
    for name in names {
        let msg = ask(daemon.addr, &format!("{name}.example.test."), RecordType::A).await;
        assert_ne!(msg.metadata.response_code, ResponseCode::ServFail, "{name}");
    }
    let mut buf = [0u8; 1500];
    let mut lost = 0;
    while blackhole.recv(&mut buf).is_ok() {
        lost += 1;
    }
    assert!(lost >= 1, "the first upstream was tried");
    assert!(
        lost <= 3,
        "{lost} of 10 queries went to the silent upstream"
    );
}

#[tokio::test]
async fn truncated_upstream_answers_are_retried_over_tcp_on_its_port() {
    let mut big = String::new();
    for i in 0..40 {
        big.push_str(&format!(
            "big IN TXT \"record {i:02} with enough padding to make the answer large....\"\n"
        ));
    }
    let upstream = Upstream::start(&big).await;
    assert_ne!(upstream.addr.port(), 53);
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;

    // Over UDP the client gets TC=1, no records, and keeps its OPT record.
    let udp = ask(daemon.addr, "big.example.test.", RecordType::TXT).await;
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    assert!(
        udp.edns.is_some(),
        "truncated answers keep their OPT record"
    );

    // Over TCP the whole answer, which the daemon got from the upstream over TCP.
    let tcp = exchange_tcp(daemon.addr, query("big.example.test.", RecordType::TXT)).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 40);

    // Without EDNS the UDP limit is 512 bytes.
    let mut plain = query("www.example.test.", RecordType::A);
    plain.edns = None;
    let msg = exchange_udp(daemon.addr, plain).await;
    assert!(msg.edns.is_none(), "no OPT for a query without one");
    assert_eq!(a_records(&msg), vec!["192.0.2.80"]);
}

#[tokio::test]
async fn serve_stale_when_upstream_fails() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    cfg.cache.max_ttl_secs = 1;
    cfg.cache.stale_client_timeout_ms = 200;
    let daemon = TestDaemon::start(cfg).await;
    let fresh = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(fresh.answers[0].ttl, 1);
    assert!(ede(&fresh).is_none());
    upstream.set_silent(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&stale), vec!["192.0.2.80"]);
    assert_eq!(stale.answers[0].ttl, 30, "stale answers get stale_ttl_secs");
    assert_eq!(ede(&stale).map(|e| e.0), Some(3), "EDE 3: Stale Answer");
}

#[tokio::test]
async fn servfail_with_ede_when_no_upstream_answers() {
    let upstream = Upstream::start("").await;
    upstream.set_silent(true);
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let msg = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        ede(&msg).map(|e| e.0),
        Some(22),
        "EDE 22: No Reachable Authority"
    );

    let none = TestDaemon::start(config(&[])).await;
    let msg = ask(none.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    let (code, text) = ede(&msg).unwrap();
    assert_eq!(code, 22);
    assert!(text.contains("no upstream"), "{text}");
}

#[tokio::test]
async fn its_own_listen_address_is_never_an_upstream() {
    // Bind first to learn the port, then make that port the daemon's only upstream.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let own: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cfg = config(&[own]);
    cfg.dns.listen = vec![own];
    let daemon = TestDaemon::start(cfg).await;
    let first = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(first.metadata.response_code, ResponseCode::ServFail);
    assert!(daemon.forwarder.upstreams().is_empty());
    let second = ask(daemon.addr, "other.example.test.", RecordType::A).await;
    assert_eq!(second.metadata.response_code, ResponseCode::ServFail);
    assert!(
        ede(&second).unwrap().1.contains("no upstream"),
        "{:?}",
        ede(&second)
    );
    // Local names still work.
    let p2p = ask(daemon.addr, "x.p2p.", RecordType::A).await;
    assert_eq!(p2p.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn overload_is_refused_not_queued_forever() {
    let upstream = Upstream::start("").await;
    upstream.set_silent(true);
    let mut cfg = config(&[upstream.addr]);
    cfg.dns.max_inflight = 1;
    let daemon = TestDaemon::start(cfg).await;
    let addr = daemon.addr;
    let slow = tokio::spawn(async move { ask(addr, "www.example.test.", RecordType::A).await });
    let deadline = tokio::time::Instant::now() + WAIT;
    while upstream.queries() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream never asked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = ask(daemon.addr, "ns.example.test.", RecordType::A).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::ServFail);
    assert!(ede(&refused).unwrap().1.contains("in flight"));
    slow.await.unwrap();
}

#[tokio::test]
async fn edns_rules_of_rfc_6891() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;

    // Version 1: BADVERS, with an OPT record of version 0.
    let mut msg = query("www.example.test.", RecordType::A);
    msg.edns.as_mut().unwrap().set_version(1);
    let reply = exchange_udp(daemon.addr, msg).await;
    // BADVERS and BADSIG share the value 16; hickory decodes it as BADSIG.
    assert_eq!(u16::from(reply.metadata.response_code), 16, "BADVERS");
    assert_eq!(reply.edns.as_ref().unwrap().version(), 0);
    assert!(reply.answers.is_empty());

    // Unknown options and flags are ignored and not echoed; DO is echoed.
    let mut msg = query("www.example.test.", RecordType::A);
    let edns: &mut Edns = msg.edns.as_mut().unwrap();
    edns.options_mut()
        .insert(EdnsOption::Unknown(65_000, vec![1, 2, 3]));
    edns.flags_mut().z = 0x4000;
    edns.set_dnssec_ok(true);
    let reply = exchange_udp(daemon.addr, msg).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let edns = reply.edns.as_ref().unwrap();
    assert!(
        edns.option(65_000u16.into()).is_none(),
        "unknown option echoed"
    );
    assert_eq!(edns.flags().z, 0, "unknown flags echoed");
    assert!(edns.flags().dnssec_ok, "DO bit not echoed");
}

#[tokio::test]
async fn opcodes_classes_and_types_per_rfc() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;

    let mut notify = query("www.example.test.", RecordType::SOA);
    notify.metadata.op_code = hickory_proto::op::OpCode::Unknown(15);
    let reply = exchange_udp(daemon.addr, notify).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);

    let reply = exchange_tcp(daemon.addr, query("example.test.", RecordType::AXFR)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);

    let before = upstream.queries();
    let any = ask(daemon.addr, "www.example.test.", RecordType::ANY).await;
    assert_eq!(any.answers.len(), 1);
    match &any.answers[0].data {
        RData::HINFO(h) => assert_eq!(&*h.cpu, b"RFC8482"),
        other => panic!("RFC 8482 answer expected, got {other:?}"),
    }
    assert_eq!(
        upstream.queries(),
        before,
        "ANY is answered without upstream traffic"
    );

    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
    let reply = exchange_udp(daemon.addr, chaos).await;
    match &reply.answers[0].data {
        RData::TXT(txt) => assert!(txt.to_string().contains("p2pdns")),
        other => panic!("TXT expected, got {other:?}"),
    }
    let mut chaos = query("www.example.test.", RecordType::TXT);
    chaos.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
    let reply = exchange_udp(daemon.addr, chaos).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert_eq!(
        upstream.queries(),
        before,
        "CHAOS queries are never forwarded"
    );
}

#[tokio::test]
async fn p2p_names_come_from_the_local_table() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    cfg.naming.records.insert(
        "site.p2p".into(),
        vec!["A 192.0.2.10".into(), "TXT \"hello world\"".into()],
    );
    cfg.naming
        .records
        .insert("www.site.p2p".into(), vec!["CNAME site.p2p.".into()]);
    let daemon = TestDaemon::start(cfg).await;

    let a = ask(daemon.addr, "www.site.p2p.", RecordType::A).await;
    assert!(a.metadata.authoritative);
    assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(a_records(&a), vec!["192.0.2.10"]);

    let nx = ask(daemon.addr, "nobody.p2p.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities[0].name, Name::from_ascii("p2p.").unwrap());

    let tcp = exchange_tcp(daemon.addr, query("site.p2p.", RecordType::TXT)).await;
    assert_eq!(tcp.answers.len(), 1);
    assert_eq!(upstream.queries(), 0, ".p2p names never go upstream");
}

#[tokio::test]
async fn clients_outside_allow_are_refused() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    cfg.dns.allow = vec!["10.0.0.0/8".parse().unwrap()];
    let daemon = TestDaemon::start(cfg).await;
    let msg = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
    assert_eq!(upstream.queries(), 0);
}

#[tokio::test]
async fn pipelined_tcp_queries_are_not_held_up_by_a_slow_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = Upstream::start("").await;
    upstream.set_silent(true);
    let mut cfg = config(&[upstream.addr]);
    cfg.naming
        .records
        .insert("fast.p2p".into(), vec!["A 192.0.2.1".into()]);
    let daemon = TestDaemon::start(cfg).await;

    let slow = query("www.example.test.", RecordType::A);
    let fast = query("fast.p2p.", RecordType::A);
    let mut wire = Vec::new();
    for msg in [&slow, &fast] {
        let bytes = msg.to_vec().unwrap();
        wire.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        wire.extend_from_slice(&bytes);
    }
    let mut stream = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    stream.write_all(&wire).await.unwrap();

    let mut ids = Vec::new();
    for _ in 0..2 {
        let len = tokio::time::timeout(WAIT, stream.read_u16())
            .await
            .expect("answer within the bound")
            .unwrap();
        let mut buf = vec![0; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        let msg = hickory_proto::op::Message::from_vec(&buf).unwrap();
        ids.push((msg.metadata.id, msg.metadata.response_code));
    }
    assert_eq!(
        ids,
        vec![
            (fast.metadata.id, ResponseCode::NoError),
            (slow.metadata.id, ResponseCode::ServFail)
        ],
        "the quick answer overtakes the one waiting on a silent upstream"
    );
}

#[tokio::test]
async fn upstreams_follow_resolv_conf_changes() {
    let dir = std::env::temp_dir().join(format!("p2pdns-resolv-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resolv.conf");
    // Documentation addresses: nothing is sent to them, the test only reads the list.
    std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
    let mut cfg = config(&[]);
    cfg.upstream.resolv_conf = path.clone();
    let daemon = TestDaemon::start(cfg).await;
    let first: SocketAddr = "192.0.2.1:53".parse().unwrap();
    assert_eq!(daemon.forwarder.upstreams(), vec![first]);

    std::fs::write(
        &path,
        "# new network\nnameserver 192.0.2.2\nnameserver 192.0.2.1\n",
    )
    .unwrap();
    let second: SocketAddr = "192.0.2.2:53".parse().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while daemon.forwarder.upstreams() != vec![second, first] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "resolv.conf change not picked up: {:?}",
            daemon.forwarder.upstreams()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn reload_empties_the_cache() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    ask(daemon.addr, "www.example.test.", RecordType::A).await;
    ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(upstream.queries(), 1, "second answer from the cache");
    daemon.reload.notify_one();
    let deadline = tokio::time::Instant::now() + WAIT;
    while daemon.forwarder.cache().usage().0 != 0 {
        assert!(tokio::time::Instant::now() < deadline, "cache not emptied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(
        upstream.queries(),
        2,
        "after a reload the upstream is asked again"
    );
}

#[tokio::test]
async fn popular_entries_are_refreshed_before_they_expire() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    cfg.cache.max_ttl_secs = 10;
    let daemon = TestDaemon::start(cfg).await;
    let first = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(first.answers[0].ttl, 10);
    assert_eq!(upstream.queries(), 1);
    // In the last tenth of the TTL a hit is answered from the cache and refreshed behind it.
    tokio::time::sleep(Duration::from_millis(9_100)).await;
    let late = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert!(
        late.answers[0].ttl <= 1,
        "answered from the old entry: {}",
        late.answers[0].ttl
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let refreshed = ask(daemon.addr, "www.example.test.", RecordType::A).await;
        if refreshed.answers[0].ttl >= 9 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no prefetch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.queries(), 2, "one refresh, however many hits");
}

#[tokio::test]
async fn shutdown_answers_the_queries_in_flight() {
    let upstream = Upstream::start("").await;
    upstream.set_silent(true);
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let addr = daemon.addr;
    let pending = tokio::spawn(async move { ask(addr, "www.example.test.", RecordType::A).await });
    let deadline = tokio::time::Instant::now() + WAIT;
    while upstream.queries() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream never asked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.stop().await.expect("clean shutdown");
    // The client got its (failed) answer before the sockets closed, instead of a timeout.
    let answer = pending.await.expect("the client got a reply");
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn p2p_cnames_to_icann_names_are_followed_through_the_forwarder() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    cfg.naming
        .records
        .insert("out.p2p".into(), vec!["CNAME www.example.test.".into()]);
    let daemon = TestDaemon::start(cfg).await;
    let msg = ask(daemon.addr, "out.p2p.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(msg.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(a_records(&msg), vec!["192.0.2.80"], "{msg:?}");
    // A CNAME query gets just the CNAME.
    let cname = ask(daemon.addr, "out.p2p.", RecordType::CNAME).await;
    assert_eq!(cname.answers.len(), 1);
}

#[tokio::test]
async fn firefox_doh_canary_gets_nxdomain_without_asking_upstream() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for (name, qtype) in [
        ("use-application-dns.net.", RecordType::A),
        ("USE-application-dns.NET.", RecordType::AAAA),
        ("x.use-application-dns.net.", RecordType::A),
    ] {
        let msg = ask(daemon.addr, name, qtype).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(msg.answers.is_empty(), "{name}: {msg:?}");
        assert_eq!(ede(&msg).map(|(code, _)| code), Some(17), "{name}");
    }
    assert_eq!(upstream.queries(), 0, "the canary never goes upstream");
    // A name next to it is forwarded as usual.
    let msg = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
}
