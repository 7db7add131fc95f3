//! The answer memo (src/dns/memo.rs) is invisible to clients: a plain UDP query asked again is
//! answered from the bytes the full path made for it, and that answer is, ID aside, what the
//! full path gives at that moment (TCP never uses the memo: it is the reference here), through
//! TTL countdown, prefetch and the client ACL; a `.p2p` answer changes at once when this node's
//! own name does.

use std::{net::SocketAddr, time::Duration};

use hickory_proto::rr::Name;
use p2pdns::naming::parse_record;
use tokio::net::UdpSocket;

use crate::{
    scripted::{raw_answers, raw_exchange_tcp, raw_exchange_udp, raw_query},
    support::{TestDaemon, Upstream, WAIT, config, p2p_config, wait_until},
};

const A: u16 = 1;
const MX: u16 = 15;
const AAAA: u16 = 28;

/// Moves the runtime's clock forward by `by` at once (see tests/integration/dns.rs `elapse`).
async fn elapse(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// `message` with its ID zeroed.
fn without_id(mut message: Vec<u8>) -> Vec<u8> {
    message[..2].fill(0);
    message
}

/// The UDP answer to `query`, checked against the full path's (TCP) answers just before and
/// just after it: a second may pass between two of them, so it must equal one of the two.
async fn udp_as_full_path(addr: SocketAddr, query: &[u8]) -> Vec<u8> {
    let before = without_id(raw_exchange_tcp(addr, query).await);
    let udp = without_id(raw_exchange_udp(addr, query).await);
    let after = without_id(raw_exchange_tcp(addr, query).await);
    assert!(
        udp == before || udp == after,
        "the UDP answer differs from the full path's:\n udp    {udp:02x?}\n before {before:02x?}\n after  {after:02x?}"
    );
    udp
}

/// The TTL of the first answer record of `message` (question of one uncompressed name).
fn first_ttl(message: &[u8]) -> u32 {
    let mut at = 12;
    while message[at] != 0 {
        at += 1 + usize::from(message[at]);
    }
    at += 5;
    // The answer's owner: a name or a pointer.
    at = if message[at] & 0xC0 == 0xC0 {
        at + 2
    } else {
        while message[at] != 0 {
            at += 1 + usize::from(message[at]);
        }
        at + 1
    };
    u32::from_be_bytes(message[at + 4..at + 8].try_into().unwrap())
}

#[tokio::test]
async fn answers_sent_again_are_what_the_full_path_gives() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let cases = [
        ("www.example.test.", A),
        ("WwW.Example.TEST.", AAAA),
        ("alias.example.test.", A),
        ("www.example.test.", MX),
        ("nothing.example.test.", A),
    ];
    for (name, qtype) in cases {
        for edns in [false, true] {
            // The first query fills the cache, the second is answered from it by the full path
            // (and remembered), the ones after from the memo.
            let query = raw_query(0x5151, name, qtype, edns);
            raw_exchange_udp(daemon.addr, &query).await;
            for _ in 0..3 {
                udp_as_full_path(daemon.addr, &query).await;
            }
        }
    }
    let asked = upstream.queries();
    assert!(asked >= cases.len(), "{asked} upstream queries");
    // Within the TTL, later and TTLs counted down: still the full path's answer.
    elapse(Duration::from_secs(100)).await;
    let query = raw_query(7, "www.example.test.", A, true);
    let answer = udp_as_full_path(daemon.addr, &query).await;
    let ttl = first_ttl(&answer);
    assert!((199..=200).contains(&ttl), "TTL {ttl} after 100 of 300 s");
    assert_eq!(
        upstream.queries(),
        asked,
        "nothing asked again within the TTL"
    );
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_remembered_answer_due_for_prefetch_is_refreshed_and_the_new_entry_served() {
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let query = raw_query(9, "www.example.test.", A, false);
    for _ in 0..3 {
        raw_exchange_udp(daemon.addr, &query).await;
    }
    let asked = upstream.queries();
    // In the last tenth of the 300 s TTL: the next query is answered and starts a prefetch,
    // which the memo must not hide.
    elapse(Duration::from_secs(280)).await;
    let due = raw_exchange_udp(daemon.addr, &query).await;
    assert!(first_ttl(&due) <= 20, "TTL {} at 280 s", first_ttl(&due));
    wait_until("the prefetch to reach the upstream", || {
        upstream.queries() > asked
    })
    .await;
    // Then the new entry, remembered in turn, with its TTL counting from its own start.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = udp_as_full_path(daemon.addr, &query).await;
        if first_ttl(&answer) >= 290 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the prefetched entry was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..2 {
        let answer = udp_as_full_path(daemon.addr, &query).await;
        assert!(first_ttl(&answer) >= 290);
    }
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn remembered_answers_go_only_to_clients_the_acl_allows() {
    let upstream = Upstream::start("").await;
    let mut cfg = config(&[upstream.addr]);
    cfg.dns.allow = vec!["127.0.0.1/32".parse().unwrap()];
    let daemon = TestDaemon::start(cfg).await;
    let query = raw_query(3, "www.example.test.", A, false);
    for _ in 0..3 {
        let answer = raw_exchange_udp(daemon.addr, &query).await;
        assert_eq!(answer[3] & 0x0F, 0, "NOERROR to 127.0.0.1");
    }
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    other.send_to(&query, daemon.addr).await.unwrap();
    let mut buf = [0u8; 512];
    let (len, _) = tokio::time::timeout(WAIT, other.recv_from(&mut buf))
        .await
        .expect("an answer within the bound")
        .unwrap();
    assert!(len >= 12);
    assert_eq!(buf[3] & 0x0F, 5, "REFUSED to 127.0.0.2, memo or not");
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_p2p_answer_sent_again_changes_as_soon_as_the_name_does() {
    // P2P on, without peers: this node's own names are answered from its own records.
    let daemon = TestDaemon::start(p2p_config(&[])).await;
    let dht = daemon.dht.clone().unwrap();
    let site = Name::from_ascii("memo.p2p.").unwrap();
    let record = parse_record(&site, "A 192.0.2.1", 300).unwrap();
    dht.publish(&site, record).await.unwrap();
    let queries = [
        raw_query(0x0A0A, "memo.p2p.", A, false),
        raw_query(0x0B0B, "memo.p2p.", A, true),
        raw_query(0x0C0C, "nothing.memo.p2p.", A, false),
    ];
    for query in &queries {
        for _ in 0..4 {
            let answer = udp_as_full_path(daemon.addr, query).await;
            if query[13..17] == *b"memo" {
                assert_eq!(raw_answers(&answer).1, [(A, vec![192, 0, 2, 1])]);
            } else {
                assert_eq!(answer[3] & 0x0F, 3, "NXDOMAIN under this node's name");
            }
        }
    }
    // Published again: the very next answer, over UDP too, is the new address. (A publish
    // waits for its push, about as long as a `.p2p` answer is held; this node's names changing
    // also drops them at once, which src/naming/publisher/tests.rs checks by its count.)
    let record = parse_record(&site, "A 192.0.2.2", 300).unwrap();
    dht.publish(&site, record).await.unwrap();
    for query in &queries[..2] {
        let answer = udp_as_full_path(daemon.addr, query).await;
        assert_eq!(raw_answers(&answer).1, [(A, vec![192, 0, 2, 2])]);
    }
    daemon.stop().await.expect("clean shutdown");
}

/// A burst from many clients at once (read and answered a batch at a time): every query gets
/// one answer, at the socket that asked, with its own ID and question, equal to the full
/// path's; queries the memo does not take (EDNS with DO) are mixed in.
#[tokio::test]
async fn a_burst_from_many_clients_gets_each_its_own_answer() {
    const CLIENTS: usize = 64;
    const EACH: u16 = 4;
    let upstream = Upstream::start("").await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let names = [
        "www.example.test.",
        "alias.example.test.",
        "nothing.example.test.",
    ];
    let mut expected = Vec::new();
    for name in names {
        let query = raw_query(1, name, A, false);
        raw_exchange_udp(daemon.addr, &query).await;
        expected.push(udp_as_full_path(daemon.addr, &query).await);
    }
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    // What each ID asked: the name's index, and whether the query set DO.
    let asked = |id: u16| (usize::from(id) % names.len(), id.is_multiple_of(5));
    for (c, client) in clients.iter().enumerate() {
        for k in 0..EACH {
            let id = u16::try_from(c).unwrap() * EACH + k;
            let (name, dnssec_ok) = asked(id);
            let mut query = raw_query(id, names[name], A, dnssec_ok);
            if dnssec_ok {
                // OPT's flags: DO.
                let at = query.len() - 4;
                query[at] = 0x80;
            }
            client.send_to(&query, daemon.addr).await.unwrap();
        }
    }
    for (c, client) in clients.iter().enumerate() {
        let mut seen = Vec::new();
        for _ in 0..EACH {
            let mut buf = vec![0u8; 65_535];
            let (len, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
                .await
                .expect("every query of the burst answered")
                .unwrap();
            assert_eq!(from, daemon.addr);
            buf.truncate(len);
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            assert_eq!(
                usize::from(id) / usize::from(EACH),
                c,
                "an answer to another client's query"
            );
            assert!(!seen.contains(&id), "two answers to query {id}");
            seen.push(id);
            let (name, dnssec_ok) = asked(id);
            if !dnssec_ok {
                assert_eq!(without_id(buf), expected[name], "answer to query {id}");
            } else {
                let header = &buf[2..12];
                assert_eq!(
                    header[1] & 0x0F,
                    expected[name][3] & 0x0F,
                    "RCODE of query {id}"
                );
                // The question: the name's wire form (one octet longer than its text) and
                // QTYPE, QCLASS.
                let question = 12..12 + names[name].len() + 5;
                assert_eq!(
                    buf[question.clone()],
                    expected[name][question],
                    "question of query {id}"
                );
            }
        }
    }
    daemon.stop().await.expect("clean shutdown");
}
