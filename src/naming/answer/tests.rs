//! The answer rules of docs/PROTOCOL.md section 10 on one signed name record, including
//! records a p2pdns publisher refuses but a foreign one may sign.

use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, Record, RecordType},
};

use super::{Built, answer_from};
use crate::{naming::parse_record, record::NameRecord};

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// One resource record: `owner` (relative to `site.p2p.` unless it ends with a dot) and
/// `[TTL] TYPE RDATA` (names in RDATA relative to `owner`).
fn rr(owner: &str, text: &str) -> Record {
    let owner = if owner.ends_with('.') {
        name(owner)
    } else if owner == "@" {
        name("site.p2p.")
    } else {
        name(&format!("{owner}.site.p2p."))
    };
    parse_record(&owner, text, 300).unwrap().remove(0)
}

/// A record of `site.p2p.` holding `records`, unsigned (answers do not look at signatures).
fn set(records: Vec<Record>) -> NameRecord {
    NameRecord {
        name: name("site.p2p."),
        owner: [0; 32],
        seq: 1,
        expires: u64::MAX,
        records,
        signature: [0; 64],
    }
}

fn ask(source: &NameRecord, qname: &str, qtype: RecordType) -> Built {
    answer_from(source, &name(qname), qtype, &name("p2p."), &mut Vec::new())
}

/// RCODE, answer section as text, and whether the authority section holds the p2p. SOA.
fn shown(built: &Built) -> (ResponseCode, Vec<String>, bool) {
    let answer = &built.answer;
    let records = answer
        .answers
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect();
    let soa = answer.authorities.len() == 1
        && answer.authorities[0].record_type() == RecordType::SOA
        && answer.authorities[0].name == name("p2p.");
    (answer.rcode, records, soa)
}

#[test]
fn a_cname_to_a_target_without_data_is_nodata_or_nxdomain_with_the_soa() {
    let record = set(vec![
        rr("www", "CNAME txt.site.p2p."),
        rr("txt", "TXT \"only text\""),
        rr("gone", "CNAME nothere.site.p2p."),
        rr("ent", "CNAME below.site.p2p."),
        rr("x.below", "A 192.0.2.1"),
    ]);
    for (qname, rcode, cname) in [
        (
            "www.site.p2p.",
            ResponseCode::NoError,
            "www.site.p2p. 300 CNAME txt.site.p2p.",
        ),
        (
            "gone.site.p2p.",
            ResponseCode::NXDomain,
            "gone.site.p2p. 300 CNAME nothere.site.p2p.",
        ),
    ] {
        let answer = ask(&record, qname, RecordType::A);
        assert_eq!(
            shown(&answer),
            (rcode, vec![cname.to_owned()], true),
            "{qname}"
        );
    }
    // The target is an empty non-terminal: NODATA.
    let ent = ask(&record, "ent.site.p2p.", RecordType::A);
    assert_eq!(shown(&ent).0, ResponseCode::NoError);
    assert!(shown(&ent).2);
}

#[test]
fn the_same_rr_twice_is_one_rr_and_an_rrset_has_its_lowest_ttl() {
    let record = set(vec![
        rr("@", "300 A 192.0.2.1"),
        rr("@", "60 A 192.0.2.2"),
        rr("SITE.p2p.", "300 A 192.0.2.1"),
        rr("@", "600 TXT hello"),
    ]);
    let a = ask(&record, "site.p2p.", RecordType::A);
    assert_eq!(
        shown(&a).1,
        vec!["site.p2p. 60 A 192.0.2.1", "site.p2p. 60 A 192.0.2.2"]
    );
    let any = ask(&record, "site.p2p.", RecordType::ANY);
    assert_eq!(any.answer.answers.len(), 3, "{:?}", any.answer);
    assert!(any.answer.answers.iter().any(|r| r.ttl == 600));
}

#[test]
fn a_cname_beside_other_data_stands_alone() {
    // A foreign publisher signed what ours refuses: the first CNAME wins, the rest is unseen.
    let record = set(vec![
        rr("www", "A 192.0.2.9"),
        rr("www", "CNAME site.p2p."),
        rr("www", "CNAME other.site.p2p."),
        rr("www", "TXT hidden"),
        rr("@", "A 192.0.2.1"),
    ]);
    for qtype in [RecordType::A, RecordType::TXT] {
        let answer = ask(&record, "www.site.p2p.", qtype);
        assert_eq!(
            shown(&answer).1[0],
            "www.site.p2p. 300 CNAME site.p2p.",
            "{qtype}"
        );
    }
    let a = ask(&record, "www.site.p2p.", RecordType::A);
    assert_eq!(shown(&a).1[1], "site.p2p. 300 A 192.0.2.1");
    for qtype in [RecordType::ANY, RecordType::CNAME] {
        let answer = ask(&record, "www.site.p2p.", qtype);
        assert_eq!(
            shown(&answer).1,
            vec!["www.site.p2p. 300 CNAME site.p2p."],
            "{qtype}"
        );
    }
    // QTYPE CNAME where there is none: NODATA.
    let none = ask(&record, "site.p2p.", RecordType::CNAME);
    assert_eq!(shown(&none), (ResponseCode::NoError, vec![], true));
}

#[test]
fn a_record_without_rrs_names_nothing() {
    let record = set(Vec::new());
    for qname in ["site.p2p.", "www.site.p2p."] {
        let answer = ask(&record, qname, RecordType::A);
        assert_eq!(
            shown(&answer),
            (ResponseCode::NXDomain, vec![], true),
            "{qname}"
        );
    }
}

#[test]
fn empty_non_terminals_are_nodata_and_names_beside_data_are_nxdomain() {
    let record = set(vec![rr("a.b.c", "A 192.0.2.3"), rr("www", "A 192.0.2.4")]);
    for qname in ["site.p2p.", "c.site.p2p.", "b.c.site.p2p."] {
        let answer = ask(&record, qname, RecordType::A);
        assert_eq!(
            shown(&answer),
            (ResponseCode::NoError, vec![], true),
            "{qname}"
        );
    }
    for qname in ["x.site.p2p.", "x.www.site.p2p.", "z.c.site.p2p."] {
        let answer = ask(&record, qname, RecordType::A);
        assert_eq!(shown(&answer).0, ResponseCode::NXDomain, "{qname}");
    }
}

#[test]
fn wildcards_synthesize_as_rfc_4592_says() {
    let record = set(vec![
        rr("*", "A 192.0.2.9"),
        rr("*", "MX 10 mail.site.p2p."),
        rr("mail", "A 192.0.2.25"),
        rr("host", "TXT here"),
        rr("a.ent", "A 192.0.2.3"),
        rr("*.cw", "CNAME host.site.p2p."),
        rr("x.*.odd", "A 192.0.2.5"),
    ]);
    // Any depth below the closest encloser, owner as asked.
    for qname in ["Foo.site.p2p.", "a.b.c.site.p2p."] {
        let answer = ask(&record, qname, RecordType::A);
        assert_eq!(shown(&answer).1, vec![format!("{qname} 300 A 192.0.2.9")]);
    }
    // A name that exists, even with no A or only below it, is not replaced by the wildcard.
    let host = ask(&record, "host.site.p2p.", RecordType::A);
    assert_eq!(shown(&host), (ResponseCode::NoError, vec![], true));
    let ent = ask(&record, "ent.site.p2p.", RecordType::A);
    assert_eq!(shown(&ent), (ResponseCode::NoError, vec![], true));
    // Below an existing name, only a wildcard at that name applies (there is none here).
    let below = ask(&record, "x.host.site.p2p.", RecordType::A);
    assert_eq!(shown(&below).0, ResponseCode::NXDomain);
    // The wildcard has no AAAA: NODATA.
    let nodata = ask(&record, "foo.site.p2p.", RecordType::AAAA);
    assert_eq!(shown(&nodata), (ResponseCode::NoError, vec![], true));
    // A wildcard CNAME is synthesized at the name asked, then followed.
    let cname = ask(&record, "y.cw.site.p2p.", RecordType::TXT);
    assert_eq!(
        shown(&cname).1,
        vec![
            "y.cw.site.p2p. 300 CNAME host.site.p2p.".to_owned(),
            "host.site.p2p. 300 TXT here".to_owned()
        ]
    );
    // The wildcard's own name asked literally; a wildcard that is an empty non-terminal.
    let literal = ask(&record, "*.site.p2p.", RecordType::A);
    assert_eq!(shown(&literal).1, vec!["*.site.p2p. 300 A 192.0.2.9"]);
    let empty_wildcard = ask(&record, "q.odd.site.p2p.", RecordType::A);
    assert_eq!(
        shown(&empty_wildcard),
        (ResponseCode::NoError, vec![], true)
    );
    // Additional data: the MX target's address, from the same record.
    let mx = ask(&record, "m.site.p2p.", RecordType::MX);
    assert_eq!(shown(&mx).1, vec!["m.site.p2p. 300 MX 10 mail.site.p2p."]);
    let extra: Vec<String> = mx
        .answer
        .additionals
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(extra, vec!["mail.site.p2p. 300 IN A 192.0.2.25"]);
}

#[test]
fn chains_stay_in_the_record_and_leave_it_for_other_names() {
    let record = set(vec![
        rr("www", "CNAME web.site.p2p."),
        rr("web", "CNAME site.p2p."),
        rr("@", "A 192.0.2.1"),
        rr("out", "CNAME other.p2p."),
        rr("icann", "CNAME example.com."),
        rr("srv._tcp", "SRV 0 0 443 web.site.p2p."),
        rr("ping", "CNAME pong.site.p2p."),
        rr("pong", "CNAME ping.site.p2p."),
    ]);
    let chain = ask(&record, "WWW.Site.P2p.", RecordType::A);
    assert_eq!(
        shown(&chain).1,
        vec![
            "WWW.Site.P2p. 300 CNAME web.site.p2p.",
            "web.site.p2p. 300 CNAME site.p2p.",
            "site.p2p. 300 A 192.0.2.1"
        ]
    );
    assert!(chain.answer.answers[0].name.eq_case(&name("WWW.Site.P2p.")));
    assert!(chain.exit.is_none());
    for (qname, target) in [("out", "other.p2p."), ("icann", "example.com.")] {
        let left = ask(&record, &format!("{qname}.site.p2p."), RecordType::A);
        assert_eq!(left.exit, Some(name(target)), "{qname}");
        assert_eq!(shown(&left).0, ResponseCode::NoError);
        assert!(left.answer.authorities.is_empty());
    }
    let looped = ask(&record, "ping.site.p2p.", RecordType::A);
    assert_eq!(shown(&looped).1.len(), 2);
    assert!(looped.exit.is_none());
    // The SRV target is a CNAME: no additional data (CNAMEs are not followed there).
    let srv = ask(&record, "srv._tcp.site.p2p.", RecordType::SRV);
    assert!(srv.answer.additionals.is_empty());
    // A chain entered from another source remembers the names it passed.
    let mut seen = vec![LowerName::new(&name("site.p2p."))];
    let back = answer_from(
        &record,
        &name("web.site.p2p."),
        RecordType::A,
        &name("p2p."),
        &mut seen,
    );
    assert_eq!(back.answer.answers.len(), 1, "{:?}", back.answer);
    // Class IN on everything.
    assert!(
        chain
            .answer
            .answers
            .iter()
            .all(|r| r.dns_class == hickory_proto::rr::DNSClass::IN)
    );
}
