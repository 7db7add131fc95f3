//! In-process tests: daemons on 127.0.0.1 port 0 forwarding to a hickory authority on
//! loopback, queried with hickory's client.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{SOA, TXT, opt::EdnsOption},
    },
};
use p2pdns::config::UpstreamAddr;

use crate::support::{
    TestDaemon, Upstream, WAIT, a_records, ask, config, ede, exchange_tcp, exchange_udp,
    local_site, p2p_config, query, query_with_payload, read_tcp_message, reserved_port, wait_until,
    write_pipelined,
};

/// Moves the runtime's clock (and so every cache and TTL in the daemons it runs) forward by
/// `by` at once, instead of sleeping through a TTL. The clock runs on afterwards: the daemons'
/// real sockets need real time, which a paused clock would skip ahead whenever the runtime
/// waits on them.
async fn elapse(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

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
        assert_eq!(msg.metadata.message_type, MessageType::Response);
        assert!(
            msg.metadata.recursion_desired,
            "RD is copied from the query"
        );
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
    // Forwarded with a cold cache, then answered from the entry that the first spelling filled.
    for spelling in ["WwW.Example.TEST.", "wWw.eXaMpLe.TeSt."] {
        let msg = ask(daemon.addr, spelling, RecordType::A).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        let asked = Name::from_ascii(spelling).unwrap();
        assert!(
            msg.queries[0].name().eq_case(&asked),
            "{:?}",
            msg.queries[0]
        );
        assert!(msg.answers[0].name.eq_case(&asked), "{:?}", msg.answers[0]);
        assert_eq!(a_records(&msg), vec!["192.0.2.80"]);
    }
    assert_eq!(
        upstream.queries(),
        1,
        "the second spelling came from the cache"
    );
}

#[tokio::test]
async fn answers_are_cached_with_ttls_counted_down() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let first = ask(daemon.addr, "short.example.test.", RecordType::A).await;
    assert_eq!(first.answers[0].ttl, 30);
    let seen = upstream.queries();
    elapse(Duration::from_millis(1100)).await;
    let second = ask(daemon.addr, "short.example.test.", RecordType::A).await;
    assert_eq!(
        upstream.queries(),
        seen,
        "second answer came from the cache"
    );
    assert!(
        second.answers[0].ttl < 30 && second.answers[0].ttl > 0,
        "TTL counts down: {}",
        second.answers[0].ttl
    );
    assert_eq!(a_records(&second), vec!["192.0.2.30"]);
    assert!(
        !second.metadata.authoritative,
        "a cached answer is not authoritative"
    );
}

#[tokio::test]
async fn negative_answers_are_cached_by_soa_minimum() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let nx = ask(daemon.addr, "missing.example.test.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_zone_soa(&nx);
    assert!(
        nx.authorities[0].ttl <= 60,
        "negative TTL is capped by the SOA minimum: {}",
        nx.authorities[0].ttl
    );
    let nodata = ask(daemon.addr, "ns.example.test.", RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    let seen = upstream.queries();
    upstream.set_silent(true);
    let again = ask(daemon.addr, "missing.example.test.", RecordType::A).await;
    assert_eq!(again.metadata.response_code, ResponseCode::NXDomain);
    assert_zone_soa(&again);
    let again = ask(daemon.addr, "ns.example.test.", RecordType::AAAA).await;
    assert_eq!(again.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        upstream.queries(),
        seen,
        "negative answers came from the cache"
    );
}

/// A negative answer from the test zone carries the zone's SOA in its authority section, as
/// clients need it to cache the answer (RFC 2308).
fn assert_zone_soa(msg: &Message) {
    let soa = &msg.authorities[0];
    assert_eq!(
        soa.name,
        Name::from_ascii("example.test.").unwrap(),
        "{msg:?}"
    );
    match &soa.data {
        RData::SOA(soa) => assert_eq!(
            (soa.mname.to_string(), soa.rname.to_string()),
            (
                "ns.example.test.".to_owned(),
                "admin.example.test.".to_owned()
            )
        ),
        other => panic!("SOA expected in the authority section, got {other:?}"),
    }
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
    upstream.wait_until_asked().await;
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
    let hosts: String = (1..=10)
        .map(|i| format!("host{i} IN A 192.0.2.{}\n", 100 + i))
        .collect();
    let upstream = Upstream::start(&hosts).await;
    let daemon = TestDaemon::start(config(&[blackhole.local_addr().unwrap(), upstream.addr])).await;
    // Distinct names, so that none is answered from the cache.
    for i in 1..=10 {
        let name = format!("host{i}.example.test.");
        let msg = ask(daemon.addr, &name, RecordType::A).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(
            a_records(&msg),
            vec![format!("192.0.2.{}", 100 + i)],
            "{name}"
        );
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
    let mut zone = String::new();
    // About 2.9 kB: over any UDP limit.
    for i in 0..40 {
        zone.push_str(&format!(
            "big IN TXT \"record {i:02} with enough padding to make the answer large....\"\n"
        ));
    }
    // About 800 bytes: fits 1232 bytes, not 512.
    for i in 0..MID_TXT {
        zone.push_str(&format!("mid IN TXT \"{i:02}{}\"\n", "x".repeat(78)));
    }
    let upstream = Upstream::start(&zone).await;
    assert_ne!(upstream.addr.port(), 53);
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;

    // Over UDP the client gets TC=1, no records, and keeps its OPT record; a client size above
    // the daemon's 1232 bytes does not raise the limit.
    for payload in [1232, 4096] {
        let udp = exchange_udp(
            daemon.addr,
            query_with_payload("big.example.test.", payload),
        )
        .await;
        assert!(udp.metadata.truncation, "payload {payload}");
        assert!(udp.answers.is_empty(), "a TC reply carries no answers");
        assert_eq!(
            udp.edns.as_ref().map(Edns::version),
            Some(0),
            "truncated answers keep their OPT record"
        );
    }

    // Over TCP the whole answer, which the daemon got from the upstream over TCP.
    let tcp = exchange_tcp(daemon.addr, query("big.example.test.", RecordType::TXT)).await;
    assert!(!tcp.metadata.truncation);
    let distinct: HashSet<String> = tcp.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(
        (tcp.answers.len(), distinct.len()),
        (40, 40),
        "every record arrives over TCP, once"
    );

    // The UDP limit is 512 bytes with a smaller client size or without EDNS.
    let fits = exchange_udp(daemon.addr, query_with_payload("mid.example.test.", 1232)).await;
    assert!(!fits.metadata.truncation);
    assert_eq!(fits.answers.len(), MID_TXT);
    let small = exchange_udp(daemon.addr, query_with_payload("mid.example.test.", 512)).await;
    assert!(small.metadata.truncation, "client size 512 not honoured");
    assert!(small.answers.is_empty());
    assert_eq!(small.edns.as_ref().map(Edns::version), Some(0));
    let mut plain = query("mid.example.test.", RecordType::TXT);
    plain.edns = None;
    let plain = exchange_udp(daemon.addr, plain).await;
    assert!(
        plain.metadata.truncation,
        "512 bytes without EDNS not honoured"
    );
    assert!(plain.answers.is_empty());
    assert!(plain.edns.is_none(), "no OPT for a query without one");

    // A small answer without EDNS arrives whole, without OPT.
    let mut plain = query("www.example.test.", RecordType::A);
    plain.edns = None;
    let msg = exchange_udp(daemon.addr, plain).await;
    assert!(msg.edns.is_none(), "no OPT for a query without one");
    assert_eq!(a_records(&msg), vec!["192.0.2.80"]);
}

/// TXT records of 80 bytes at mid.example.test in the truncation test.
const MID_TXT: usize = 8;

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
    elapse(Duration::from_millis(1100)).await;
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
    // The daemon's listen port made its only upstream: as given, and disguised as an
    // IPv4-mapped IPv6 address.
    let port = reserved_port();
    let own: SocketAddr = ([127, 0, 0, 1], port).into();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
    for upstream in [own, mapped] {
        let mut cfg = config(&[upstream]);
        cfg.dns.listen = vec![own];
        local_site(&mut cfg);
        let daemon = TestDaemon::start(cfg).await;
        assert!(daemon.forwarder.upstreams().is_empty(), "{upstream}");
        let first = ask(daemon.addr, "www.example.test.", RecordType::A).await;
        assert_eq!(first.metadata.response_code, ResponseCode::ServFail);
        assert!(first.answers.is_empty());
        let second = ask(daemon.addr, "other.example.test.", RecordType::A).await;
        assert_eq!(second.metadata.response_code, ResponseCode::ServFail);
        assert!(
            ede(&second).unwrap().1.contains("no upstream"),
            "{:?}",
            ede(&second)
        );
        // Local names still work.
        let local = ask(daemon.addr, "site.p2p.", RecordType::A).await;
        assert_eq!(a_records(&local), vec!["192.0.2.10"], "{upstream}");
        let p2p = ask(daemon.addr, "x.p2p.", RecordType::A).await;
        assert_eq!(p2p.metadata.response_code, ResponseCode::NXDomain);
        // The port is free again for the next daemon.
        daemon.stop().await.expect("clean shutdown");
    }
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
    upstream.wait_until_asked().await;
    let refused = ask(daemon.addr, "ns.example.test.", RecordType::A).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::ServFail);
    assert!(ede(&refused).unwrap().1.contains("in flight"));
    slow.await.unwrap();
}

/// `dns.max_inflight` bounds the queries waiting on upstreams and on the DHT together: with
/// the one permit held by a forwarded query, a `.p2p` name that needs a lookup is refused at
/// once, while a name the daemon holds itself is still answered.
#[tokio::test]
async fn max_inflight_covers_p2p_lookups_too() {
    let upstream = Upstream::start("").await;
    upstream.set_silent(true);
    let mut cfg = p2p_config(&[]);
    cfg.upstream.servers = vec![UpstreamAddr(upstream.addr).into()];
    cfg.dns.max_inflight = 1;
    local_site(&mut cfg);
    let daemon = TestDaemon::start(cfg).await;
    let addr = daemon.addr;
    let slow = tokio::spawn(async move { ask(addr, "www.example.test.", RecordType::A).await });
    upstream.wait_until_asked().await;
    let refused = ask(daemon.addr, "nobody-publishes-this.p2p.", RecordType::A).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::ServFail);
    let (_, text) = ede(&refused).expect("an Extended DNS Error");
    assert!(text.contains("in flight"), "refused for capacity: {text}");
    let local = ask(daemon.addr, "site.p2p.", RecordType::A).await;
    assert_eq!(
        a_records(&local),
        vec!["192.0.2.10"],
        "local names need no permit"
    );
    slow.await.unwrap();
    // The forwarded query gives its permit back once its upstream budget (1.5 s) is spent;
    // then the lookup runs (and finds no peer).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let after = ask(daemon.addr, "nobody-publishes-this.p2p.", RecordType::A).await;
        let (_, text) = ede(&after).expect("an Extended DNS Error");
        if text.contains("not connected") {
            break;
        }
        assert!(text.contains("in flight"), "{text}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the permit never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn edns_rules_of_rfc_6891() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    local_site(&mut cfg);
    let daemon = TestDaemon::start(cfg).await;

    // A forwarded name and a local one take the same rules.
    for name in ["www.example.test.", "site.p2p."] {
        // With EDNS: an OPT record of version 0 announcing the daemon's 1232 bytes.
        let reply = ask(daemon.addr, name, RecordType::A).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        let edns = reply.edns.as_ref().expect("an OPT record");
        assert_eq!((edns.version(), edns.max_payload()), (0, 1232), "{name}");
        assert_eq!(reply.answers.len(), 1, "{name}");

        // Without EDNS: no OPT record.
        let mut plain = query(name, RecordType::A);
        plain.edns = None;
        let reply = exchange_udp(daemon.addr, plain).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert!(
            reply.edns.is_none(),
            "{name}: OPT sent to a client without EDNS"
        );
        assert_eq!(reply.answers.len(), 1, "{name}");

        // Version 1: BADVERS, with an OPT record of version 0.
        let mut msg = query(name, RecordType::A);
        msg.edns.as_mut().unwrap().set_version(1);
        let reply = exchange_udp(daemon.addr, msg).await;
        // BADVERS and BADSIG share the value 16; hickory decodes it as BADSIG.
        assert_eq!(
            u16::from(reply.metadata.response_code),
            16,
            "{name}: BADVERS"
        );
        assert_eq!(reply.edns.as_ref().unwrap().version(), 0, "{name}");
        assert!(reply.answers.is_empty(), "{name}");

        // Unknown options and flags are ignored and not echoed; DO is echoed when set.
        for dnssec_ok in [false, true] {
            let mut msg = query(name, RecordType::A);
            let edns: &mut Edns = msg.edns.as_mut().unwrap();
            edns.options_mut()
                .insert(EdnsOption::Unknown(65_000, vec![1, 2, 3]));
            edns.flags_mut().z = 0x4000;
            edns.set_dnssec_ok(dnssec_ok);
            let reply = exchange_udp(daemon.addr, msg).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{name}"
            );
            assert_eq!(reply.answers.len(), 1, "{name}");
            let edns = reply.edns.as_ref().unwrap();
            assert!(
                edns.option(65_000u16.into()).is_none(),
                "{name}: unknown option echoed"
            );
            assert_eq!(edns.flags().z, 0, "{name}: unknown flags echoed");
            assert_eq!(edns.flags().dnssec_ok, dnssec_ok, "{name}: DO bit");
        }
    }
}

#[tokio::test]
async fn opcodes_classes_and_types_per_rfc() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    local_site(&mut cfg);
    let daemon = TestDaemon::start(cfg).await;

    // Unknown (15) and unsupported (2, STATUS) opcodes: NOTIMP, for any name.
    for name in ["www.example.test.", "site.p2p."] {
        for op_code in [OpCode::Unknown(15), OpCode::Status] {
            let mut msg = query(name, RecordType::A);
            msg.metadata.op_code = op_code;
            let reply = exchange_udp(daemon.addr, msg).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NotImp,
                "{name} {op_code:?}"
            );
            assert!(reply.answers.is_empty(), "{name} {op_code:?}");
        }
    }

    // Zone transfers are refused and leak no record: AXFR (over TCP, as transfers run), IXFR
    // over TCP and UDP (with the client's SOA in the authority section, as dig sends it).
    for zone in ["example.test.", "site.p2p."] {
        let reply = exchange_tcp(daemon.addr, query(zone, RecordType::AXFR)).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::Refused,
            "{zone}"
        );
        assert!(reply.answers.is_empty(), "{zone}");
    }
    for over_tcp in [true, false] {
        let mut ixfr = query("example.test.", RecordType::IXFR);
        let soa = SOA::new(
            Name::from_ascii("ns.example.test.").unwrap(),
            Name::from_ascii("admin.example.test.").unwrap(),
            1,
            0,
            0,
            0,
            0,
        );
        ixfr.add_authority(Record::from_rdata(
            Name::from_ascii("example.test.").unwrap(),
            0,
            RData::SOA(soa),
        ));
        let reply = if over_tcp {
            exchange_tcp(daemon.addr, ixfr).await
        } else {
            exchange_udp(daemon.addr, ixfr).await
        };
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::Refused,
            "IXFR over {}",
            if over_tcp { "TCP" } else { "UDP" }
        );
        assert!(reply.answers.is_empty());
    }

    let before = upstream.queries();
    let any = ask(daemon.addr, "www.example.test.", RecordType::ANY).await;
    assert_eq!(any.metadata.response_code, ResponseCode::NoError);
    assert_eq!(any.answers.len(), 1);
    assert_eq!(
        any.answers[0].name,
        Name::from_ascii("www.example.test.").unwrap()
    );
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
    chaos.queries[0].set_query_class(DNSClass::CH);
    let reply = exchange_udp(daemon.addr, chaos).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].dns_class, DNSClass::CH);
    match &reply.answers[0].data {
        RData::TXT(txt) => assert_eq!(
            txt.txt_data.iter().map(|s| &**s).collect::<Vec<_>>(),
            [format!("p2pdns {}", env!("CARGO_PKG_VERSION")).as_bytes()]
        ),
        other => panic!("TXT expected, got {other:?}"),
    }
    let mut chaos = query("www.example.test.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
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
    // P2P on, as by default, but without peers: the local table answers alone.
    let mut cfg = p2p_config(&[]);
    cfg.upstream.servers = vec![UpstreamAddr(upstream.addr).into()];
    local_site(&mut cfg);
    let daemon = TestDaemon::start(cfg).await;

    for (qtype, data) in [
        (RecordType::A, RData::A("192.0.2.10".parse().unwrap())),
        (
            RecordType::AAAA,
            RData::AAAA("2001:db8::10".parse().unwrap()),
        ),
        (
            RecordType::TXT,
            RData::TXT(TXT::new(vec!["hello world".into()])),
        ),
    ] {
        let msg = ask(daemon.addr, "site.p2p.", qtype).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{qtype}");
        assert!(
            msg.metadata.authoritative,
            "{qtype}: local answers are authoritative"
        );
        assert_eq!(msg.answers.len(), 1, "{qtype}");
        assert_eq!(msg.answers[0].data, data);
    }

    let a = ask(daemon.addr, "www.site.p2p.", RecordType::A).await;
    assert!(a.metadata.authoritative);
    let chain: Vec<(String, RecordType, String)> = a
        .answers
        .iter()
        .map(|r| (r.name.to_string(), r.record_type(), r.data.to_string()))
        .collect();
    assert_eq!(
        chain,
        [
            (
                "www.site.p2p.".into(),
                RecordType::CNAME,
                "site.p2p.".into()
            ),
            ("site.p2p.".into(), RecordType::A, "192.0.2.10".into()),
        ]
    );

    // Under a local name, the table is the whole truth: NXDOMAIN and NODATA, with the SOA of
    // p2p. that lets clients cache them.
    let nx = ask(daemon.addr, "missing.site.p2p.", RecordType::A).await;
    let nodata = ask(daemon.addr, "site.p2p.", RecordType::MX).await;
    for (msg, rcode) in [
        (&nx, ResponseCode::NXDomain),
        (&nodata, ResponseCode::NoError),
    ] {
        assert_eq!(msg.metadata.response_code, rcode);
        assert!(msg.metadata.authoritative);
        assert!(msg.answers.is_empty());
        assert_eq!(msg.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(msg.authorities[0].name, Name::from_ascii("p2p.").unwrap());
    }

    // Another name is the network's to answer. Without peers nobody can say it is absent:
    // SERVFAIL with an Extended DNS Error, not NXDOMAIN.
    let unknown = ask(daemon.addr, "nobody-knows.p2p.", RecordType::A).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        ede(&unknown).map(|e| e.0),
        Some(22),
        "EDE 22: No Reachable Authority"
    );

    let tcp = exchange_tcp(daemon.addr, query("site.p2p.", RecordType::TXT)).await;
    assert_eq!(tcp.answers.len(), 1);
    assert_eq!(upstream.queries(), 0, ".p2p names never go upstream");

    // With P2P off, the local table is all of .p2p.
    let mut cfg = config(&[upstream.addr]);
    local_site(&mut cfg);
    let off = TestDaemon::start(cfg).await;
    let nx = ask(off.addr, "nobody.p2p.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities[0].name, Name::from_ascii("p2p.").unwrap());
    assert_eq!(upstream.queries(), 0, ".p2p names never go upstream");
}

#[tokio::test]
async fn clients_outside_allow_are_refused() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    cfg.dns.allow = vec!["10.0.0.0/8".parse().unwrap()];
    local_site(&mut cfg);
    let daemon = TestDaemon::start(cfg).await;
    for (name, over_tcp) in [
        ("www.example.test.", false),
        ("site.p2p.", false),
        ("site.p2p.", true),
    ] {
        let msg = query(name, RecordType::A);
        let reply = if over_tcp {
            exchange_tcp(daemon.addr, msg).await
        } else {
            exchange_udp(daemon.addr, msg).await
        };
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::Refused,
            "{name}"
        );
        assert!(reply.answers.is_empty(), "{name}");
        // RFC 6891 section 6.1.1: a request with an OPT record gets a response with one.
        assert_eq!(
            reply.edns.as_ref().map(Edns::version),
            Some(0),
            "{name} (TCP: {over_tcp}): the REFUSED reply dropped EDNS"
        );
    }
    assert_eq!(upstream.queries(), 0);
}

#[tokio::test]
async fn pipelined_tcp_queries_are_not_held_up_by_a_slow_one() {
    let upstream = Upstream::start("").await;
    upstream.set_silent(true);
    let mut cfg = config(&[upstream.addr]);
    cfg.naming
        .records
        .insert("fast.p2p".into(), vec!["A 192.0.2.1".into()]);
    let daemon = TestDaemon::start(cfg).await;

    let slow = query("www.example.test.", RecordType::A);
    let fast = query("fast.p2p.", RecordType::A);
    let mut stream = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    write_pipelined(&mut stream, &[&slow, &fast]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let msg = read_tcp_message(&mut stream).await;
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

    // The connection stays open for more: three queries, forwarded and local, written back to
    // back before reading anything, all answered.
    upstream.set_silent(false);
    let burst = [
        query("ns.example.test.", RecordType::A),
        query("fast.p2p.", RecordType::A),
        query("short.example.test.", RecordType::A),
    ];
    write_pipelined(&mut stream, &burst.iter().collect::<Vec<_>>()).await;
    let mut answered = HashSet::new();
    for _ in &burst {
        let msg = read_tcp_message(&mut stream).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{msg:?}");
        assert_eq!(a_records(&msg).len(), 1, "{msg:?}");
        answered.insert(msg.metadata.id);
    }
    assert_eq!(
        answered,
        burst.iter().map(|q| q.metadata.id).collect::<HashSet<_>>()
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
    wait_until("the upstreams of the new resolv.conf", || {
        daemon.forwarder.upstreams() == vec![second, first]
    })
    .await;
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
    wait_until("the cache to be emptied", || {
        daemon.forwarder.cache().usage().0 == 0
    })
    .await;
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
    elapse(Duration::from_millis(9_100)).await;
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
    upstream.wait_until_asked().await;
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

/// An answer's owner name is a pointer to the question's (RFC 1035 section 4.1.4), as every
/// resolver writes it: hickory, which echoes the question as it came, wrote the name out in
/// full again, so a 245-octet name's A record, 278 bytes from the upstream, came back over UDP
/// without EDNS as TC=1 with no answer (found by a newcomer).
#[tokio::test]
async fn answers_point_to_the_question_name() {
    let long = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(40)
    );
    let upstream = Upstream::start(&format!("{long} IN A 192.0.2.99\n")).await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for (name, address) in [
        ("www.example.test.".to_owned(), [192, 0, 2, 80]),
        (format!("{long}.example.test."), [192, 0, 2, 99]),
    ] {
        let query = crate::scripted::raw_query(0x2121, &name, 1, false);
        for transport in ["udp", "tcp", "udp again", "udp from the memo"] {
            let reply = match transport {
                "tcp" => crate::scripted::raw_exchange_tcp(daemon.addr, &query).await,
                _ => crate::scripted::raw_exchange_udp(daemon.addr, &query).await,
            };
            assert_eq!(reply[2] & 0x02, 0, "{name} over {transport}: not truncated");
            let (rcode, answers) = crate::scripted::raw_answers(&reply);
            assert_eq!(rcode, 0);
            assert_eq!(answers, [(1, address.to_vec())], "{name} over {transport}");
            // Header, the question, then the answer's owner: a pointer to offset 12.
            let owner = query.len();
            assert_eq!(
                reply[owner..owner + 2],
                [0xC0, 12],
                "{name} over {transport}"
            );
            assert_eq!(
                reply.len(),
                query.len() + 2 + 10 + 4,
                "{name} over {transport}"
            );
        }
    }
    daemon.stop().await.expect("clean shutdown");
}
