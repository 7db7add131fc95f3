//! Special-use names (RFC 6761, RFC 6303; README "Special-use names"): the zones answered here
//! never reach the upstream, whatever it would say; the others are forwarded as usual.

use hickory_proto::{
    op::ResponseCode,
    rr::{RData, RecordType},
};

use super::{
    scripted::{Action, RawSections, Scripted, raw_response, raw_rr},
    support::{TestDaemon, ask, config},
};

/// An upstream that answers every question with one record of the asked type holding a public
/// address (A, AAAA) or name (anything else): what a careless or hostile upstream would say.
async fn lying_upstream() -> Scripted {
    Scripted::start(|asked| {
        let query = &asked.message.queries[0];
        let (rtype, rdata): (u16, Vec<u8>) = match query.query_type() {
            RecordType::AAAA => (
                28,
                "2001:db8::bad"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()
                    .to_vec(),
            ),
            RecordType::PTR => (12, super::scripted::wire_name("evil.example.")),
            _ => (1, vec![203, 0, 113, 66]),
        };
        let answers = vec![raw_rr(&asked.qname(), rtype, 300, &rdata)];
        Action::Reply(raw_response(
            asked,
            ResponseCode::NoError,
            0,
            &RawSections {
                answers,
                ..RawSections::default()
            },
        ))
    })
    .await
}

fn addresses(msg: &hickory_proto::op::Message) -> Vec<String> {
    msg.answers.iter().map(|r| r.data.to_string()).collect()
}

#[tokio::test]
async fn localhost_names_answer_loopback_without_asking_upstream() {
    let upstream = lying_upstream().await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for name in ["localhost.", "foo.localhost.", "A.B.LocalHost."] {
        let a = ask(daemon.addr, name, RecordType::A).await;
        assert_eq!(a.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(addresses(&a), vec!["127.0.0.1"], "{name}");
        assert!(a.metadata.authoritative, "{name}: answered here, AA=1");
        assert_eq!(a.answers[0].name.to_ascii(), name, "the question's case");
        let aaaa = ask(daemon.addr, name, RecordType::AAAA).await;
        assert_eq!(addresses(&aaaa), vec!["::1"], "{name}");
        let txt = ask(daemon.addr, name, RecordType::TXT).await;
        assert_eq!(txt.metadata.response_code, ResponseCode::NoError);
        assert!(txt.answers.is_empty(), "{name}: NODATA for other types");
        assert!(
            matches!(
                txt.authorities.first().map(|r| &r.data),
                Some(RData::SOA(_))
            ),
            "{name}: NODATA carries the SOA"
        );
    }
    let ptr = ask(daemon.addr, "1.0.0.127.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(addresses(&ptr), vec!["localhost."]);
    assert!(
        upstream.asked().is_empty(),
        "no localhost name went upstream: {:?}",
        upstream
            .asked()
            .iter()
            .map(|a| a.qname())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn names_that_exist_nowhere_get_nxdomain_here() {
    let upstream = lying_upstream().await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for (name, qtype) in [
        ("www.invalid.", RecordType::A),
        (
            "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion.",
            RecordType::A,
        ),
        ("gns.alt.", RecordType::AAAA),
        ("_dns.resolver.arpa.", RecordType::SVCB),
        ("1.2.0.192.in-addr.arpa.", RecordType::PTR),
        ("5.0.0.127.in-addr.arpa.", RecordType::PTR),
    ] {
        let reply = ask(daemon.addr, name, qtype).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(reply.answers.is_empty(), "{name}");
        assert!(
            matches!(reply.authorities.first().map(|r| &r.data), Some(RData::SOA(soa)) if soa.minimum > 0),
            "{name}: the SOA lets clients cache it"
        );
    }
    assert!(upstream.asked().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn the_home_network_and_test_names_are_forwarded() {
    let upstream = lying_upstream().await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for name in [
        "router.home.arpa.",
        "www.example.test.",
        "printer.local.",
        "ipv4only.arpa.",
    ] {
        let reply = ask(daemon.addr, name, RecordType::A).await;
        assert_eq!(addresses(&reply), vec!["203.0.113.66"], "{name}");
        assert_eq!(upstream.asked_for(name).len(), 1, "{name} went upstream");
    }
    let lan = ask(daemon.addr, "1.1.168.192.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(
        addresses(&lan),
        vec!["evil.example."],
        "the router names its LAN"
    );
}

#[tokio::test]
async fn a_zone_listed_in_forward_special_goes_upstream() {
    let upstream = lying_upstream().await;
    let mut config = config(&[upstream.addr]);
    config.dns.forward_special = vec!["onion".into()];
    let daemon = TestDaemon::start(config).await;
    let onion = ask(daemon.addr, "example.onion.", RecordType::A).await;
    assert_eq!(addresses(&onion), vec!["203.0.113.66"]);
    let invalid = ask(daemon.addr, "example.invalid.", RecordType::A).await;
    assert_eq!(invalid.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        upstream.asked().len(),
        1,
        "only the onion name went upstream"
    );
}
