//! What a forwarded answer must be (issue 11, kinds 2, 6 and 8), against scripted upstreams
//! that answer the way real ones misbehave: the DNSSEC header bits on the way through (RFC
//! 4035 section 3.2.2, RFC 6840 sections 5.7 and 5.8), negative answers after a CNAME (RFC
//! 2308 sections 2.1, 2.2 and 5), and answers that do not answer the question (unbound's
//! scrubber, RFC 5452).

use std::{net::Ipv6Addr, time::Duration};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};

use crate::{
    scripted::{
        Action, Asked, RawSections, Scripted, answer, raw_a, raw_aaaa, raw_cname, raw_ns,
        raw_response, raw_rr, raw_soa, wire_name,
    },
    support::{TestDaemon, a_records, config, ede, exchange_udp, query},
};

/// Moves the runtime's clock forward by `by` at once (as in [`crate::dns`]): the daemons'
/// caches run on it, their sockets on real time.
async fn elapse(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// A query with the given header bits; `dnssec_ok` `None` sends it without EDNS.
fn flagged(name: &str, qtype: RecordType, dnssec_ok: Option<bool>, cd: bool, ad: bool) -> Message {
    let mut msg = query(name, qtype);
    match dnssec_ok {
        None => msg.edns = None,
        Some(dnssec_ok) => {
            msg.edns.as_mut().unwrap().set_dnssec_ok(dnssec_ok);
        }
    }
    msg.metadata.checking_disabled = cd;
    msg.metadata.authentic_data = ad;
    msg
}

/// AD in the second flags byte of a raw response.
const AD: u8 = 0x20;

/// An RRSIG over `covered` at `owner`, signed by `signer`, with a dummy signature (nothing
/// here validates it).
fn raw_rrsig(owner: &str, covered: u16, signer: &str) -> Vec<u8> {
    let mut rdata = covered.to_be_bytes().to_vec();
    rdata.extend_from_slice(&[13, 2, 0, 0, 1, 44]);
    rdata.extend_from_slice(&[0; 10]);
    rdata.extend(wire_name(signer));
    rdata.extend_from_slice(&[0xAB; 64]);
    raw_rr(owner, 46, 300, &rdata)
}

fn aaaa_records(msg: &Message) -> Vec<Ipv6Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn types(records: &[hickory_proto::rr::Record]) -> Vec<RecordType> {
    records.iter().map(|r| r.record_type()).collect()
}

/// A validating upstream: SERVFAIL without CD (the data would fail validation), the data
/// with CD=1 (RFC 4035 section 3.2.2).
fn bogus_unless_cd(asked: &Asked) -> Action {
    if asked.checking_disabled() {
        answer(
            asked,
            ResponseCode::NoError,
            0,
            vec![raw_a(&asked.qname(), 300, [192, 0, 2, 1])],
            vec![],
        )
    } else {
        answer(asked, ResponseCode::ServFail, 0, vec![], vec![])
    }
}

#[tokio::test]
async fn cd_and_do_go_upstream_as_the_client_sent_them() {
    let upstream = Scripted::start(bogus_unless_cd).await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let name = "bogus.example.";
    // CD=0 first: SERVFAIL, and nothing cached that a CD=1 client could get.
    let plain = exchange_udp(
        daemon.addr,
        flagged(name, RecordType::A, Some(false), false, false),
    )
    .await;
    assert_eq!(plain.metadata.response_code, ResponseCode::ServFail);
    for dnssec_ok in [Some(true), Some(false), None] {
        let msg = flagged(name, RecordType::A, dnssec_ok, true, false);
        let reply = exchange_udp(daemon.addr, msg).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "DO {dnssec_ok:?}"
        );
        assert_eq!(a_records(&reply), ["192.0.2.1"]);
        assert!(
            reply.metadata.checking_disabled,
            "CD is copied into the reply"
        );
        let last = upstream.asked().pop().unwrap();
        assert!(last.checking_disabled(), "CD went upstream");
        assert_eq!(
            last.dnssec_ok(),
            dnssec_ok == Some(true),
            "DO went upstream as sent"
        );
    }
    // The CD=1 answer is not served to a CD=0 client either.
    let plain = exchange_udp(
        daemon.addr,
        flagged(name, RecordType::A, Some(false), false, false),
    )
    .await;
    assert_eq!(plain.metadata.response_code, ResponseCode::ServFail);
    assert!(!plain.metadata.checking_disabled);
    let seen = upstream.asked().len();
    let again = exchange_udp(
        daemon.addr,
        flagged(name, RecordType::A, Some(true), true, false),
    )
    .await;
    assert_eq!(a_records(&again), ["192.0.2.1"]);
    assert_eq!(
        upstream.asked().len(),
        seen,
        "the CD=1 answer came from the cache"
    );
}

#[tokio::test]
async fn answers_with_cd_and_without_are_cached_apart() {
    let upstream = Scripted::start(|asked| {
        let last = if asked.checking_disabled() { 1 } else { 2 };
        let record = raw_a(&asked.qname(), 300, [192, 0, 2, last]);
        answer(asked, ResponseCode::NoError, 0, vec![record], vec![])
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for _ in 0..2 {
        for (cd, want) in [(false, "192.0.2.2"), (true, "192.0.2.1")] {
            let msg = flagged("split.example.", RecordType::A, Some(false), cd, false);
            let reply = exchange_udp(daemon.addr, msg).await;
            assert_eq!(a_records(&reply), [want], "CD={cd}");
        }
    }
    assert_eq!(upstream.asked().len(), 2, "one upstream query per CD value");
}

#[tokio::test]
async fn ad_reaches_only_clients_that_set_do_or_ad() {
    // signed.example. validates upstream (AD=1), plain.example. does not.
    let upstream = Scripted::start(|asked| {
        let flags = if asked.qname() == "signed.example." {
            AD
        } else {
            0
        };
        let record = raw_a(&asked.qname(), 300, [192, 0, 2, 5]);
        answer(asked, ResponseCode::NoError, flags, vec![record], vec![])
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    // (EDNS with DO, AD in the query) -> AD in the reply. Asked twice: fetched, then cached.
    let cases = [
        (None, false, false),
        (None, true, true),
        (Some(false), false, false),
        (Some(true), false, true),
        (Some(false), true, true),
        (Some(true), true, true),
    ];
    for _ in 0..2 {
        for (dnssec_ok, ad, want) in cases {
            let msg = flagged("signed.example.", RecordType::A, dnssec_ok, false, ad);
            let reply = exchange_udp(daemon.addr, msg).await;
            assert_eq!(a_records(&reply), ["192.0.2.5"]);
            assert_eq!(
                reply.metadata.authentic_data, want,
                "DO {dnssec_ok:?}, AD {ad}: RFC 6840 section 5.8"
            );
            let msg = flagged("plain.example.", RecordType::A, dnssec_ok, false, ad);
            let reply = exchange_udp(daemon.addr, msg).await;
            assert!(
                !reply.metadata.authentic_data,
                "no AD the upstream did not give"
            );
        }
    }
    assert!(
        upstream
            .asked()
            .iter()
            .all(|a| a.message.metadata.authentic_data),
        "upstream queries set AD, so the upstream says whether it validated (RFC 6840 section 5.7)"
    );
    assert_eq!(upstream.asked().len(), 4, "two names, DO=0 and DO=1 each");
}

#[tokio::test]
async fn rrsigs_reach_only_clients_that_set_do() {
    // An upstream that signs its answers whatever the query's DO bit says.
    let upstream = Scripted::start(|asked| {
        let name = asked.qname();
        let records = vec![
            raw_a(&name, 300, [192, 0, 2, 7]),
            raw_rrsig(&name, 1, "example."),
            raw_rrsig(&name, 15, "example."),
        ];
        answer(asked, ResponseCode::NoError, 0, records, vec![])
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for (dnssec_ok, want) in [
        (Some(false), vec![RecordType::A]),
        (None, vec![RecordType::A]),
        (Some(true), vec![RecordType::A, RecordType::RRSIG]),
    ] {
        let msg = flagged("www.example.", RecordType::A, dnssec_ok, false, false);
        let reply = exchange_udp(daemon.addr, msg).await;
        assert_eq!(types(&reply.answers), want, "DO {dnssec_ok:?}");
    }
}

/// `alias.example. CNAME target.example.`, and `rcode` for the target with the SOA of
/// `example.` (TTL 3600, MINIMUM `minimum`) in the authority section.
fn negative_after_cname(
    rcode: ResponseCode,
    cname_ttl: u32,
    minimum: u32,
) -> impl Fn(&Asked) -> Action {
    move |asked| {
        let chain = vec![raw_cname("alias.example.", cname_ttl, "target.example.")];
        let soa = vec![raw_soa("example.", 3600, minimum)];
        answer(asked, rcode, 0, chain, soa)
    }
}

fn assert_negative_after_cname(reply: &Message, rcode: ResponseCode, max_ttl: u32) {
    assert_eq!(reply.metadata.response_code, rcode);
    assert_eq!(types(&reply.answers), [RecordType::CNAME], "{reply:?}");
    assert_eq!(
        types(&reply.authorities),
        [RecordType::SOA],
        "the SOA stays: {reply:?}"
    );
    let soa = &reply.authorities[0];
    assert_eq!(soa.name.to_string(), "example.");
    assert!(
        soa.ttl <= max_ttl,
        "negative TTL {} over {max_ttl}",
        soa.ttl
    );
}

#[tokio::test]
async fn nodata_after_a_cname_keeps_the_soa_and_is_cached_by_its_minimum() {
    let upstream = Scripted::start(negative_after_cname(ResponseCode::NoError, 3600, 2)).await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let ask = || exchange_udp(daemon.addr, query("alias.example.", RecordType::AAAA));
    assert_negative_after_cname(&ask().await, ResponseCode::NoError, 2);
    assert_eq!(upstream.asked().len(), 1);
    elapse(Duration::from_millis(1500)).await;
    assert_negative_after_cname(&ask().await, ResponseCode::NoError, 2);
    assert_eq!(
        upstream.asked().len(),
        1,
        "cached within the 2 s of the SOA MINIMUM"
    );
    elapse(Duration::from_millis(1000)).await;
    assert_negative_after_cname(&ask().await, ResponseCode::NoError, 2);
    assert_eq!(upstream.asked().len(), 2, "not for the CNAME's 3600 s");
}

#[tokio::test]
async fn nxdomain_after_a_cname_is_cached_within_the_chain_ttl() {
    let upstream = Scripted::start(negative_after_cname(ResponseCode::NXDomain, 3600, 60)).await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for _ in 0..2 {
        let reply = exchange_udp(daemon.addr, query("alias.example.", RecordType::A)).await;
        assert_negative_after_cname(&reply, ResponseCode::NXDomain, 60);
    }
    assert_eq!(
        upstream.asked().len(),
        1,
        "the NXDOMAIN after a CNAME was cached"
    );

    // A CNAME that expires before the SOA MINIMUM bounds the negative answer's life.
    let upstream = Scripted::start(negative_after_cname(ResponseCode::NXDomain, 2, 60)).await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let ask = || exchange_udp(daemon.addr, query("alias.example.", RecordType::A));
    assert_negative_after_cname(&ask().await, ResponseCode::NXDomain, 60);
    assert_negative_after_cname(&ask().await, ResponseCode::NXDomain, 60);
    assert_eq!(upstream.asked().len(), 1);
    elapse(Duration::from_millis(2500)).await;
    ask().await;
    assert_eq!(
        upstream.asked().len(),
        2,
        "the chain's 2 s bound the cached NXDOMAIN"
    );
}

#[tokio::test]
async fn a_negative_answer_loses_the_soa_of_an_unrelated_zone_and_is_not_cached() {
    let upstream = Scripted::start(|asked| {
        let soa = vec![raw_soa("evil.test.", 3600, 3600)];
        answer(asked, ResponseCode::NXDomain, 0, vec![], soa)
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for _ in 0..2 {
        let reply = exchange_udp(daemon.addr, query("www.example.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.authorities.is_empty(), "{reply:?}");
    }
    assert_eq!(
        upstream.asked().len(),
        2,
        "without its zone's SOA it is not cached"
    );
}

/// Answers every question with an A record for the question's name, whatever was asked.
fn a_for_everything(asked: &Asked) -> Action {
    let record = raw_a(&asked.qname(), 300, [192, 0, 2, 4]);
    answer(asked, ResponseCode::NoError, 0, vec![record], vec![])
}

/// Answers AAAA questions with the right AAAA record.
fn aaaa_answers(asked: &Asked) -> Action {
    let address: Ipv6Addr = "2001:db8::6".parse().unwrap();
    let record = raw_aaaa(&asked.qname(), 300, address);
    answer(asked, ResponseCode::NoError, 0, vec![record], vec![])
}

#[tokio::test]
async fn an_answer_of_another_type_is_refused_and_never_cached() {
    let wrong = Scripted::start(a_for_everything).await;
    let right = Scripted::start(aaaa_answers).await;
    // The wrong one first: it is asked first (upstreams not yet measured go in order).
    let daemon = TestDaemon::start(config(&[wrong.addr, right.addr])).await;
    let reply = exchange_udp(daemon.addr, query("www.example.", RecordType::AAAA)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(types(&reply.answers), [RecordType::AAAA], "{reply:?}");
    assert_eq!(
        aaaa_records(&reply),
        ["2001:db8::6".parse::<Ipv6Addr>().unwrap()]
    );
    assert_eq!(wrong.asked().len(), 1, "the wrong upstream was asked first");
    assert_eq!(right.asked().len(), 1, "then the next one");

    // With no other upstream: SERVFAIL saying why, and the next query asks again.
    let daemon = TestDaemon::start(config(&[wrong.addr])).await;
    for _ in 0..2 {
        let before = wrong.asked().len();
        let reply = exchange_udp(daemon.addr, query("only.example.", RecordType::AAAA)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(reply.answers.is_empty());
        let (code, text) = ede(&reply).expect("an Extended DNS Error");
        assert_eq!(code, 24, "Invalid Data: {text}");
        assert!(
            wrong.asked().len() > before,
            "the refused answer was not cached"
        );
    }
    // The A question itself is answered, of course.
    let reply = exchange_udp(daemon.addr, query("only.example.", RecordType::A)).await;
    assert_eq!(a_records(&reply), ["192.0.2.4"]);
}

#[tokio::test]
async fn records_for_other_names_are_removed_before_the_client_or_the_cache_sees_them() {
    // The answer for www.example. carries a forged record for bank.example. in every
    // section; bank.example. itself is answered truthfully.
    let upstream = Scripted::start(|asked| {
        let name = asked.qname();
        let sections = if name == "bank.example." {
            RawSections {
                answers: vec![raw_a(&name, 300, [192, 0, 2, 66])],
                ..RawSections::default()
            }
        } else {
            RawSections {
                answers: vec![
                    raw_a("bank.example.", 86_400, [203, 0, 113, 6]),
                    raw_a(&name, 300, [192, 0, 2, 80]),
                ],
                authorities: vec![raw_ns("bank.example.", 86_400, "ns.evil.test.")],
                additionals: vec![raw_a("ns.evil.test.", 86_400, [203, 0, 113, 7])],
            }
        };
        Action::Reply(raw_response(asked, ResponseCode::NoError, 0, &sections))
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    for _ in 0..2 {
        let reply = exchange_udp(daemon.addr, query("www.example.", RecordType::A)).await;
        assert_eq!(a_records(&reply), ["192.0.2.80"], "{reply:?}");
        assert!(reply.authorities.is_empty() && reply.additionals.is_empty());
    }
    assert_eq!(upstream.asked().len(), 1, "the rest was served and cached");
    let bank = exchange_udp(daemon.addr, query("bank.example.", RecordType::A)).await;
    assert_eq!(
        a_records(&bank),
        ["192.0.2.66"],
        "the forged record was not kept"
    );

    // Nothing but other names: no answer to the question at all.
    let unrelated = Scripted::start(|asked| {
        let record = raw_a("other.example.", 300, [192, 0, 2, 9]);
        answer(asked, ResponseCode::NoError, 0, vec![record], vec![])
    })
    .await;
    let daemon = TestDaemon::start(config(&[unrelated.addr])).await;
    let reply = exchange_udp(daemon.addr, query("www.example.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede(&reply).map(|(code, _)| code), Some(24));
}

#[tokio::test]
async fn alias_chains_and_dnames_are_kept_whatever_zones_they_cross() {
    let upstream = Scripted::start(|asked| {
        let records = match asked.qname().as_str() {
            // Leaves example. and comes back to it.
            "www.example." => vec![
                raw_cname("www.example.", 300, "away.other."),
                raw_a("junk.example.", 300, [203, 0, 113, 1]),
                raw_cname("away.other.", 300, "back.example."),
                raw_a("back.example.", 300, [192, 0, 2, 8]),
            ],
            // DNAME with the CNAME it synthesizes (RFC 6672).
            _ => vec![
                raw_rr("dn.example.", 39, 300, &wire_name("dn.other.")),
                raw_cname("x.dn.example.", 300, "x.dn.other."),
                raw_a("x.dn.other.", 300, [192, 0, 2, 9]),
            ],
        };
        answer(asked, ResponseCode::NoError, 0, records, vec![])
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let reply = exchange_udp(daemon.addr, query("WwW.Example.", RecordType::A)).await;
    assert_eq!(
        types(&reply.answers),
        [RecordType::CNAME, RecordType::CNAME, RecordType::A],
        "{reply:?}"
    );
    assert_eq!(a_records(&reply), ["192.0.2.8"]);
    assert_eq!(
        reply.answers[0].name.to_string(),
        "WwW.Example.",
        "the client's case"
    );
    let reply = exchange_udp(daemon.addr, query("x.dn.example.", RecordType::A)).await;
    assert_eq!(
        types(&reply.answers),
        [RecordType::DNAME, RecordType::CNAME, RecordType::A],
        "{reply:?}"
    );
    assert_eq!(a_records(&reply), ["192.0.2.9"]);
}

#[tokio::test]
async fn a_referral_is_no_answer() {
    // A non-recursive upstream: it refers the question to the zone's servers.
    let lame = Scripted::start(|asked| {
        let referral = vec![raw_ns("example.", 86_400, "ns.example.")];
        answer(asked, ResponseCode::NoError, 0, vec![], referral)
    })
    .await;
    let good = Scripted::start(a_for_everything).await;
    let daemon = TestDaemon::start(config(&[lame.addr, good.addr])).await;
    let reply = exchange_udp(daemon.addr, query("www.example.", RecordType::A)).await;
    assert_eq!(
        a_records(&reply),
        ["192.0.2.4"],
        "the next upstream answered"
    );
    assert_eq!(lame.asked().len(), 1);

    let daemon = TestDaemon::start(config(&[lame.addr])).await;
    let reply = exchange_udp(daemon.addr, query("www.example.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede(&reply).map(|(code, _)| code), Some(24));
}
