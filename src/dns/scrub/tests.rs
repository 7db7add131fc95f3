//! The scrubber's rules, one test per rule, on answers built with hickory.

use super::*;
use hickory_proto::{
    op::OpCode,
    rr::{
        LowerName,
        rdata::{CNAME, NS, NULL, SOA},
    },
    serialize::binary::BinEncodable,
};

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn key(qname: &str, qtype: RecordType, dnssec_ok: bool) -> CacheKey {
    CacheKey {
        name: LowerName::new(&name(qname)),
        qtype,
        dnssec_ok,
        checking_disabled: false,
    }
}

fn a(owner: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::A("192.0.2.1".parse().unwrap()))
}

fn aaaa(owner: &str) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::AAAA("2001:db8::1".parse().unwrap()),
    )
}

fn cname(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::CNAME(CNAME(name(target))))
}

fn ns(zone: &str) -> Record {
    Record::from_rdata(name(zone), 300, RData::NS(NS(name("ns.example."))))
}

fn soa(zone: &str) -> Record {
    let n = name(zone);
    Record::from_rdata(
        n.clone(),
        300,
        RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, 60)),
    )
}

fn unknown(owner: &str, code: RecordType, rdata: Vec<u8>) -> Record {
    let data = RData::Unknown {
        code,
        rdata: NULL::with(rdata),
    };
    Record::from_rdata(name(owner), 300, data)
}

fn dname(owner: &str, target: &str) -> Record {
    unknown(owner, RecordType::DNAME, name(target).to_bytes().unwrap())
}

/// An RRSIG over `covered` at `owner`, made by `signer`, with a dummy signature.
fn rrsig(owner: &str, covered: RecordType, signer: &str) -> Record {
    let mut rdata = u16::from(covered).to_be_bytes().to_vec();
    rdata.extend_from_slice(&[13, 2, 0, 0, 1, 44]);
    rdata.extend_from_slice(&[0; 10]);
    rdata.extend_from_slice(&name(signer).to_bytes().unwrap());
    rdata.extend_from_slice(&[0xAB; 64]);
    unknown(owner, RecordType::RRSIG, rdata)
}

fn nsec(owner: &str) -> Record {
    unknown(owner, RecordType::NSEC, vec![0, 0, 6, 0x40])
}

fn response(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Message {
    let mut msg = Message::response(1, OpCode::Query);
    msg.metadata.response_code = rcode;
    msg.answers = answers;
    msg.authorities = authorities;
    msg
}

/// Owner and type of each record, to compare sections.
fn listed(records: &[Record]) -> Vec<(String, RecordType)> {
    records
        .iter()
        .map(|r| (r.name.to_string(), r.record_type()))
        .collect()
}

fn vetted(msg: &mut Message, key: &CacheKey) -> Vec<(String, RecordType)> {
    vet(msg, key).expect("the answer answers the question");
    listed(&msg.answers)
}

#[test]
fn an_answer_of_another_type_or_class_is_refused() {
    let aaaa_key = key("www.example.", RecordType::AAAA, false);
    let mut wrong = response(ResponseCode::NoError, vec![a("www.example.")], vec![]);
    assert!(matches!(
        vet(&mut wrong, &aaaa_key),
        Err(Mismatch::NotAsked {
            rtype: RecordType::A,
            ..
        })
    ));
    // The same at the end of an alias chain.
    let chained = vec![cname("www.example.", "cdn.example."), a("cdn.example.")];
    let mut wrong = response(ResponseCode::NoError, chained, vec![]);
    assert!(vet(&mut wrong, &aaaa_key).is_err());
    // And NXDOMAIN does not excuse it.
    let mut wrong = response(ResponseCode::NXDomain, vec![a("www.example.")], vec![]);
    assert!(vet(&mut wrong, &aaaa_key).is_err());
    let mut chaos = aaaa("www.example.");
    chaos.dns_class = DNSClass::CH;
    let mut wrong = response(ResponseCode::NoError, vec![chaos], vec![]);
    assert!(matches!(
        vet(&mut wrong, &aaaa_key),
        Err(Mismatch::NotAsked {
            class: DNSClass::CH,
            ..
        })
    ));
}

#[test]
fn records_for_other_names_are_removed_and_an_answer_of_only_those_refused() {
    let a_key = key("www.example.", RecordType::A, false);
    let answers = vec![
        a("bank.example."),
        a("WWW.Example."),
        cname("other.example.", "bank.example."),
    ];
    let mut msg = response(
        ResponseCode::NoError,
        answers,
        vec![ns("example."), a("x.")],
    );
    msg.additionals.push(a("ns.example."));
    assert_eq!(
        vetted(&mut msg, &a_key),
        [("WWW.Example.".to_owned(), RecordType::A)],
        "names compare without case"
    );
    assert!(msg.authorities.is_empty(), "{:?}", msg.authorities);

    let mut unrelated = response(ResponseCode::NoError, vec![a("bank.example.")], vec![]);
    assert_eq!(vet(&mut unrelated, &a_key), Err(Mismatch::Unrelated));
}

#[test]
fn alias_chains_are_followed_in_any_order_and_across_zones() {
    let a_key = key("www.example.", RecordType::A, false);
    let answers = vec![
        a("back.example."),
        cname("away.other.", "back.example."),
        cname("stray.other.", "back.example."),
        cname("www.example.", "away.other."),
    ];
    let mut msg = response(ResponseCode::NoError, answers, vec![]);
    assert_eq!(
        vetted(&mut msg, &a_key),
        [
            ("back.example.".to_owned(), RecordType::A),
            ("away.other.".to_owned(), RecordType::CNAME),
            ("www.example.".to_owned(), RecordType::CNAME),
        ]
    );
    // A loop ends the chain; it is kept as sent and answers nothing.
    let looped = vec![
        cname("www.example.", "b.example."),
        cname("b.example.", "www.example."),
    ];
    let mut msg = response(ResponseCode::NoError, looped, vec![]);
    assert_eq!(vetted(&mut msg, &a_key).len(), 2);
    // Data beside an alias loses to it.
    let beside = vec![
        cname("www.example.", "b.example."),
        a("www.example."),
        a("b.example."),
    ];
    let mut msg = response(ResponseCode::NoError, beside, vec![]);
    assert_eq!(
        vetted(&mut msg, &a_key),
        [
            ("www.example.".to_owned(), RecordType::CNAME),
            ("b.example.".to_owned(), RecordType::A),
        ]
    );
}

#[test]
fn a_cname_question_gets_the_alias_and_not_its_target() {
    let cname_key = key("www.example.", RecordType::CNAME, false);
    let answers = vec![cname("www.example.", "b.example."), a("b.example.")];
    let mut msg = response(ResponseCode::NoError, answers, vec![]);
    assert_eq!(
        vetted(&mut msg, &cname_key),
        [("www.example.".to_owned(), RecordType::CNAME)]
    );
}

#[test]
fn dname_answers_keep_the_dname_and_the_cname_it_synthesizes() {
    let a_key = key("x.dn.example.", RecordType::A, false);
    let answers = vec![
        dname("dn.example.", "dn.other."),
        cname("x.dn.example.", "x.dn.other."),
        a("x.dn.other."),
    ];
    let mut msg = response(ResponseCode::NoError, answers.clone(), vec![]);
    assert_eq!(vetted(&mut msg, &a_key).len(), 3);
    // A CNAME that contradicts the DNAME is dropped; the DNAME's target is followed.
    let mut forged = answers;
    forged[1] = cname("x.dn.example.", "evil.test.");
    forged.push(a("evil.test."));
    let mut msg = response(ResponseCode::NoError, forged, vec![]);
    assert_eq!(
        vetted(&mut msg, &a_key),
        [
            ("dn.example.".to_owned(), RecordType::DNAME),
            ("x.dn.other.".to_owned(), RecordType::A),
        ]
    );
    // The DNAME's own name is not redirected (RFC 6672 section 2.3).
    let apex = key("dn.example.", RecordType::A, false);
    let mut msg = response(
        ResponseCode::NoError,
        vec![dname("dn.example.", "dn.other."), a("dn.example.")],
        vec![],
    );
    assert_eq!(
        vetted(&mut msg, &apex),
        [("dn.example.".to_owned(), RecordType::A)]
    );
}

#[test]
fn dnssec_records_follow_the_do_bit() {
    let answers = vec![
        a("www.example."),
        rrsig("www.example.", RecordType::A, "example."),
        rrsig("www.example.", RecordType::MX, "example."),
        nsec("www.example."),
    ];
    let mut msg = response(ResponseCode::NoError, answers.clone(), vec![]);
    assert_eq!(
        vetted(&mut msg, &key("www.example.", RecordType::A, false)),
        [("www.example.".to_owned(), RecordType::A)],
        "RFC 3225: no DNSSEC records without DO"
    );
    let mut msg = response(ResponseCode::NoError, answers.clone(), vec![]);
    assert_eq!(
        vetted(&mut msg, &key("www.example.", RecordType::A, true)),
        [
            ("www.example.".to_owned(), RecordType::A),
            ("www.example.".to_owned(), RecordType::RRSIG),
        ],
        "with DO, the signature of the answer only"
    );
    let mut msg = response(ResponseCode::NoError, answers[1..].to_vec(), vec![]);
    assert_eq!(
        vetted(&mut msg, &key("www.example.", RecordType::RRSIG, false)).len(),
        2,
        "RRSIGs asked for by type stay without DO"
    );
}

#[test]
fn negative_answers_keep_the_soa_of_the_zone_of_the_last_name() {
    let key_do = key("alias.example.", RecordType::AAAA, true);
    let authorities = vec![
        soa("evil.test."),
        ns("example."),
        soa("example."),
        rrsig("example.", RecordType::SOA, "example."),
        nsec("target.example."),
        rrsig("target.example.", RecordType::NSEC, "example."),
        nsec("evil.test."),
    ];
    let chain = vec![cname("alias.example.", "target.example.")];
    let mut msg = response(ResponseCode::NoError, chain.clone(), authorities.clone());
    assert_eq!(vetted(&mut msg, &key_do).len(), 1, "the CNAME stays");
    assert_eq!(
        listed(&msg.authorities),
        [
            ("example.".to_owned(), RecordType::SOA),
            ("example.".to_owned(), RecordType::RRSIG),
            ("target.example.".to_owned(), RecordType::NSEC),
            ("target.example.".to_owned(), RecordType::RRSIG),
        ]
    );
    let mut msg = response(ResponseCode::NXDomain, chain, authorities);
    vet(&mut msg, &key("alias.example.", RecordType::AAAA, false)).unwrap();
    assert_eq!(
        listed(&msg.authorities),
        [("example.".to_owned(), RecordType::SOA)]
    );
    // An SOA of another zone proves nothing about the name: removed.
    let mut msg = response(ResponseCode::NXDomain, vec![], vec![soa("evil.test.")]);
    vet(&mut msg, &key("www.example.", RecordType::A, false)).unwrap();
    assert!(msg.authorities.is_empty());
}

#[test]
fn referrals_are_refused() {
    let a_key = key("www.sub.example.", RecordType::A, false);
    let mut msg = response(ResponseCode::NoError, vec![], vec![ns("sub.example.")]);
    assert!(matches!(
        vet(&mut msg, &a_key),
        Err(Mismatch::Referral { .. })
    ));
    // Also after a CNAME, and as an "upward referral" to the root.
    let chain = vec![cname("www.example.", "www.sub.example.")];
    let mut msg = response(ResponseCode::NoError, chain, vec![ns("sub.example.")]);
    assert!(vet(&mut msg, &key("www.example.", RecordType::A, false)).is_err());
    let mut msg = response(ResponseCode::NoError, vec![], vec![ns(".")]);
    assert!(vet(&mut msg, &a_key).is_err());
    // An authoritative NODATA without SOA, or an NXDOMAIN, is no referral.
    let mut msg = response(ResponseCode::NoError, vec![], vec![ns("sub.example.")]);
    msg.metadata.authoritative = true;
    assert!(vet(&mut msg, &a_key).is_ok());
    assert!(msg.authorities.is_empty());
    let mut msg = response(ResponseCode::NXDomain, vec![], vec![ns("sub.example.")]);
    assert!(vet(&mut msg, &a_key).is_ok());
}

#[test]
fn with_do_a_wildcard_answer_keeps_its_proof_from_the_signing_zone() {
    let answers = vec![
        a("www.example."),
        rrsig("www.example.", RecordType::A, "example."),
    ];
    let authorities = vec![
        ns("example."),
        nsec("a.example."),
        rrsig("a.example.", RecordType::NSEC, "example."),
        nsec("a.evil.test."),
        rrsig("a.evil.test.", RecordType::NSEC, "evil.test."),
    ];
    let mut msg = response(ResponseCode::NoError, answers.clone(), authorities.clone());
    vet(&mut msg, &key("www.example.", RecordType::A, true)).unwrap();
    assert_eq!(
        listed(&msg.authorities),
        [
            ("a.example.".to_owned(), RecordType::NSEC),
            ("a.example.".to_owned(), RecordType::RRSIG),
        ]
    );
    let mut msg = response(ResponseCode::NoError, answers, authorities);
    vet(&mut msg, &key("www.example.", RecordType::A, false)).unwrap();
    assert!(msg.authorities.is_empty());
}
