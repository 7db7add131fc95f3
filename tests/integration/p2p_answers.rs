//! `.p2p` answers follow the DNS algorithm (docs/PROTOCOL.md section 10; issue 11, kind 7): the
//! same questions against the local table and against this node's own signed records, with an
//! authoritative upstream for the ICANN targets of CNAMEs. (A foreign record that breaks the
//! publisher's rules is `p2p_rules`'s last test; nsd's answers for the same records are the
//! lab's `p2p_answers`.)

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{Name, Record, RecordType},
};
use p2pdns::{Config, Daemon, config::UpstreamAddr, naming::parse_record};

use crate::support::{TestDaemon, Upstream, ask, config, ede, exchange_udp, p2p_config, query};

/// Extra lines for the upstream's `example.test.` zone.
const UPSTREAM_EXTRA: &str =
    "private IN A 192.168.1.1\nmixed IN A 192.0.2.81\nmixed IN A 10.0.0.81\n";

/// Records of `site.p2p` in zone-file syntax, owners relative to `site.p2p.`, for both the local
/// table and a published record.
const SITE: &[(&str, &str)] = &[
    ("@", "A 192.0.2.1"),
    ("@", "MX 10 mail.site.p2p."),
    ("mail", "A 192.0.2.25"),
    ("txt", "TXT \"only text\""),
    ("www", "CNAME site.p2p."),
    ("to-txt", "CNAME txt.site.p2p."),
    ("to-nothing", "CNAME nothing.site.p2p."),
    ("a.b.deep", "A 192.0.2.3"),
    ("*.w", "A 192.0.2.9"),
    ("*.cw", "CNAME site.p2p."),
    ("out", "CNAME www.example.test."),
    ("out-nx", "CNAME nx.example.test."),
    ("out-private", "CNAME private.example.test."),
    ("out-mixed", "CNAME mixed.example.test."),
    ("ping", "CNAME pong.site.p2p."),
    ("pong", "CNAME ping.site.p2p."),
    ("home", "A 192.168.1.7"),
];

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// `relative` (`www`, `@`) under `site.p2p.`.
pub fn owner(relative: &str) -> Name {
    if relative == "@" {
        name("site.p2p.")
    } else {
        name(&format!("{relative}.site.p2p."))
    }
}

/// `SITE` as resource records.
fn site_records() -> Vec<Record> {
    SITE.iter()
        .flat_map(|(at, text)| parse_record(&owner(at), text, 300).unwrap())
        .collect()
}

/// A daemon with P2P off whose local table holds `SITE`, forwarding to `upstream`.
fn local_config(upstream: &Upstream) -> Config {
    let mut cfg = config(&[upstream.addr]);
    for (at, text) in SITE {
        let key = owner(at).to_ascii();
        cfg.naming
            .records
            .entry(key.trim_end_matches('.').to_owned())
            .or_default()
            .push((*text).to_owned());
    }
    cfg
}

/// The answer section as `owner TYPE data` lines (TTLs left out: they count down upstream).
pub fn lines(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

/// Is the authority section exactly the SOA of `zone`?
fn soa_of(msg: &Message, zone: &str) -> bool {
    msg.authorities.len() == 1
        && msg.authorities[0].record_type() == RecordType::SOA
        && msg.authorities[0].name == name(zone)
}

/// The questions every source of `SITE` must answer alike; `network` says whether the records
/// came from the network (then private addresses are screened).
async fn check_site_answers(addr: std::net::SocketAddr, network: bool) {
    // A CNAME to a name of the record with no data of the type: NODATA with the SOA; to a
    // name that does not exist: NXDOMAIN, the CNAME kept (RFC 6604).
    let nodata = ask(addr, "to-txt.site.p2p.", RecordType::A).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        lines(&nodata.answers),
        ["to-txt.site.p2p. CNAME txt.site.p2p."]
    );
    assert!(
        soa_of(&nodata, "p2p.") && nodata.metadata.authoritative,
        "{nodata:?}"
    );
    let nx = ask(addr, "to-nothing.site.p2p.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        lines(&nx.answers),
        ["to-nothing.site.p2p. CNAME nothing.site.p2p."]
    );
    assert!(soa_of(&nx, "p2p."), "{nx:?}");

    // Empty non-terminals are NODATA; a name beside data is NXDOMAIN.
    for qname in ["deep.site.p2p.", "b.deep.site.p2p.", "w.site.p2p."] {
        let msg = ask(addr, qname, RecordType::A).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{qname}");
        assert!(
            msg.answers.is_empty() && soa_of(&msg, "p2p."),
            "{qname}: {msg:?}"
        );
    }
    for qname in ["nope.site.p2p.", "x.mail.site.p2p.", "c.deep.site.p2p."] {
        let msg = ask(addr, qname, RecordType::A).await;
        assert_eq!(
            msg.metadata.response_code,
            ResponseCode::NXDomain,
            "{qname}"
        );
    }

    // Wildcards: any depth, the owner as asked (letter case kept); a wildcard CNAME followed.
    let wild = ask(addr, "X.y.W.site.p2p.", RecordType::A).await;
    assert_eq!(lines(&wild.answers), ["X.y.W.site.p2p. A 192.0.2.9"]);
    assert!(wild.answers[0].name.eq_case(&name("X.y.W.site.p2p.")));
    let wild_cname = ask(addr, "any.cw.site.p2p.", RecordType::A).await;
    assert_eq!(
        lines(&wild_cname.answers),
        ["any.cw.site.p2p. CNAME site.p2p.", "site.p2p. A 192.0.2.1"]
    );

    // QTYPE CNAME and ANY at an alias get the CNAME alone; ANY elsewhere gets every RRset.
    for qtype in [RecordType::CNAME, RecordType::ANY] {
        let msg = ask(addr, "www.site.p2p.", qtype).await;
        assert_eq!(
            lines(&msg.answers),
            ["www.site.p2p. CNAME site.p2p."],
            "{qtype}"
        );
    }
    let any = ask(addr, "site.p2p.", RecordType::ANY).await;
    assert_eq!(any.answers.len(), 2, "{any:?}");

    // Additional data for MX; a loop answered once each.
    let mx = ask(addr, "site.p2p.", RecordType::MX).await;
    assert_eq!(lines(&mx.additionals), ["mail.site.p2p. A 192.0.2.25"]);
    let looped = ask(addr, "ping.site.p2p.", RecordType::A).await;
    assert_eq!(looped.metadata.response_code, ResponseCode::NoError);
    assert_eq!(looped.answers.len(), 2);

    // An ICANN target completed upstream: AA cleared, the upstream's RCODE and SOA taken.
    let out = ask(addr, "out.site.p2p.", RecordType::A).await;
    assert_eq!(
        lines(&out.answers),
        [
            "out.site.p2p. CNAME www.example.test.",
            "www.example.test. A 192.0.2.80"
        ]
    );
    assert!(!out.metadata.authoritative, "part of it came from upstream");
    let out_nx = ask(addr, "out-nx.site.p2p.", RecordType::A).await;
    assert_eq!(out_nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(soa_of(&out_nx, "example.test."), "{out_nx:?}");
    assert!(!out_nx.metadata.authoritative);
    let out_nodata = ask(addr, "out.site.p2p.", RecordType::MX).await;
    assert_eq!(out_nodata.metadata.response_code, ResponseCode::NoError);
    assert!(soa_of(&out_nodata, "example.test."), "{out_nodata:?}");
    // Without recursion desired, the answer ends at the CNAME, authoritative.
    let mut norec = query("out.site.p2p.", RecordType::A);
    norec.metadata.recursion_desired = false;
    let norec = exchange_udp(addr, norec).await;
    assert_eq!(
        lines(&norec.answers),
        ["out.site.p2p. CNAME www.example.test."]
    );
    assert!(norec.metadata.authoritative);

    // DNS rebinding: a private address in a record, or behind its CNAME to an ICANN name, is
    // removed when the record came from the network, and the answer says so (EDE 17).
    let home = ask(addr, "home.site.p2p.", RecordType::A).await;
    let private = ask(addr, "out-private.site.p2p.", RecordType::A).await;
    let mixed = ask(addr, "out-mixed.site.p2p.", RecordType::A).await;
    if network {
        assert!(home.answers.is_empty() && soa_of(&home, "p2p."), "{home:?}");
        assert_eq!(ede(&home).map(|e| e.0), Some(17));
        assert_eq!(
            lines(&private.answers),
            ["out-private.site.p2p. CNAME private.example.test."]
        );
        assert_eq!(ede(&private).map(|e| e.0), Some(17));
        assert_eq!(
            lines(&mixed.answers),
            [
                "out-mixed.site.p2p. CNAME mixed.example.test.",
                "mixed.example.test. A 192.0.2.81"
            ]
        );
    } else {
        assert_eq!(lines(&home.answers), ["home.site.p2p. A 192.168.1.7"]);
        assert_eq!(
            private.answers.len(),
            2,
            "the local table is this machine's own"
        );
        assert_eq!(mixed.answers.len(), 3);
        assert_eq!(ede(&home), None);
    }
}

#[tokio::test]
async fn the_local_table_answers_as_an_authoritative_server() {
    let upstream = Upstream::start(UPSTREAM_EXTRA).await;
    let daemon = TestDaemon::start(local_config(&upstream)).await;
    check_site_answers(daemon.addr, false).await;

    // What an authoritative server would not load stops the daemon at start, naming the key.
    for bad in [
        vec!["CNAME site.p2p.", "A 192.0.2.1"],
        vec!["60 A 192.0.2.1", "300 A 192.0.2.2"],
    ] {
        let mut cfg = config(&[upstream.addr]);
        cfg.naming.records.insert(
            "bad.p2p".into(),
            bad.iter().map(|s| (*s).to_owned()).collect(),
        );
        let dir = std::env::temp_dir().join(format!("p2pdns-test-{}", rand::random::<u64>()));
        let Err(error) = Daemon::bind(cfg, dir).await else {
            panic!("{bad:?} was accepted");
        };
        let chain = p2pdns::error::one_line(&error);
        assert!(
            chain.contains("naming.records") && chain.contains("bad.p2p"),
            "{chain}"
        );
        assert!(chain.contains("CNAME") || chain.contains("TTL"), "{chain}");
    }
}

#[tokio::test]
async fn own_signed_records_answer_alike_and_are_screened() {
    let upstream = Upstream::start(UPSTREAM_EXTRA).await;
    // P2P on, without peers: this node's own names are answered from its own records.
    let mut cfg = p2p_config(&[]);
    cfg.upstream.servers = vec![UpstreamAddr(upstream.addr).into()];
    let daemon = TestDaemon::start(cfg).await;
    let dht = daemon.dht.clone().unwrap();

    // The publisher refuses what an authoritative server would not load, and says why.
    let refused = |text: &[(&str, &str)]| -> Vec<Record> {
        text.iter()
            .flat_map(|(at, t)| parse_record(&owner(at), t, 300).unwrap())
            .collect()
    };
    for (records, why) in [
        (
            refused(&[("www", "CNAME site.p2p."), ("www", "TXT \"x\"")]),
            "has a CNAME and TXT records",
        ),
        (
            refused(&[("www", "CNAME site.p2p."), ("www", "CNAME mail.site.p2p.")]),
            "has 2 CNAMEs",
        ),
        (
            refused(&[("@", "60 A 192.0.2.1"), ("@", "300 A 192.0.2.2")]),
            "different TTLs",
        ),
    ] {
        let error = dht.publish(&name("site.p2p."), records).await.unwrap_err();
        assert!(error.to_string().contains(why), "{error}");
    }
    // The same RR twice is signed once.
    let mut twice = site_records();
    twice.extend(site_records());
    let signed = dht.publish(&name("site.p2p."), twice).await.unwrap();
    assert_eq!(signed.records.len(), SITE.len());

    check_site_answers(daemon.addr, true).await;

    // A CNAME to another of this node's names continues in that record: still authoritative.
    let other = parse_record(&name("other.p2p."), "A 192.0.2.77", 300).unwrap();
    dht.publish(&name("other.p2p."), other).await.unwrap();
    let alias = parse_record(&name("alias.p2p."), "CNAME other.p2p.", 300).unwrap();
    dht.publish(&name("alias.p2p."), alias).await.unwrap();
    let across = ask(daemon.addr, "alias.p2p.", RecordType::A).await;
    assert_eq!(
        lines(&across.answers),
        ["alias.p2p. CNAME other.p2p.", "other.p2p. A 192.0.2.77"]
    );
    assert!(across.metadata.authoritative);

    // A name that is not this node's, with no peer to ask: SERVFAIL that says so; the same
    // when a CNAME leads there.
    let unknown = ask(daemon.addr, "nobody.p2p.", RecordType::A).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    let (code, text) = ede(&unknown).expect("an Extended DNS Error");
    assert_eq!(code, 22);
    assert!(text.contains("not connected to the p2p network"), "{text}");
    let lost = parse_record(&name("lost.p2p."), "CNAME nobody.p2p.", 300).unwrap();
    dht.publish(&name("lost.p2p."), lost).await.unwrap();
    let lost = ask(daemon.addr, "lost.p2p.", RecordType::A).await;
    assert_eq!(lost.metadata.response_code, ResponseCode::ServFail);
    assert!(ede(&lost).unwrap().1.contains("not connected"), "{lost:?}");
}

#[tokio::test]
async fn allowed_names_keep_their_private_addresses() {
    let upstream = Upstream::start(UPSTREAM_EXTRA).await;
    let mut cfg = p2p_config(&[]);
    cfg.upstream.servers = vec![UpstreamAddr(upstream.addr).into()];
    cfg.naming.allow_private_answers = vec!["home.site.p2p".into(), "out-private.site.p2p".into()];
    let daemon = TestDaemon::start(cfg).await;
    let dht = daemon.dht.clone().unwrap();
    dht.publish(&name("site.p2p."), site_records())
        .await
        .unwrap();
    let home = ask(daemon.addr, "home.site.p2p.", RecordType::A).await;
    assert_eq!(lines(&home.answers), ["home.site.p2p. A 192.168.1.7"]);
    let private = ask(daemon.addr, "out-private.site.p2p.", RecordType::A).await;
    assert_eq!(private.answers.len(), 2, "{private:?}");
    // The allowance is the question name's: an alias to an allowed name is still screened.
    let alias = parse_record(&name("alias.p2p."), "CNAME home.site.p2p.", 300).unwrap();
    dht.publish(&name("alias.p2p."), alias).await.unwrap();
    let through = ask(daemon.addr, "alias.p2p.", RecordType::A).await;
    assert_eq!(lines(&through.answers), ["alias.p2p. CNAME home.site.p2p."]);
    assert_eq!(ede(&through).map(|e| e.0), Some(17));

    // An entry that is not a name stops the daemon, naming the key.
    let mut cfg = p2p_config(&[]);
    cfg.naming.allow_private_answers = vec!["bad..name".into()];
    let dir = std::env::temp_dir().join(format!("p2pdns-test-{}", rand::random::<u64>()));
    let Err(error) = Daemon::bind(cfg, dir).await else {
        panic!("an invalid allow_private_answers entry was accepted");
    };
    let chain = p2pdns::error::one_line(&error);
    assert!(chain.contains("naming.allow_private_answers"), "{chain}");
}
