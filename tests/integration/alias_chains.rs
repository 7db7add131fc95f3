//! Alias chains that leave the zone they start in (issue 11): an upstream answer that stops at
//! a CNAME without the target's data is completed by asking for the target, as a recursive
//! resolver does (RFC 1034 section 4.3.2 step 3a), and fails when its target fails; a chain
//! that reaches a special-use name (localhost, onion, invalid) or a `.p2p` name is completed
//! here, never forwarded, whatever the upstream said about that name.

use hickory_proto::{
    op::ResponseCode,
    rr::{RData, RecordType},
};

use crate::{
    scripted::{Action, Scripted, answer, raw_a, raw_cname, raw_soa},
    support::{TestDaemon, a_records, ask, config, ede},
};

/// An upstream that serves each zone on its own, as authoritative servers do: it answers a
/// CNAME without following it.
async fn zone_by_zone_upstream() -> Scripted {
    Scripted::start(|asked| {
        let qname = asked.qname();
        let alias = |target: &str| vec![raw_cname(&qname, 300, target)];
        let ok = ResponseCode::NoError;
        let (rcode, answers, authorities) = match qname.as_str() {
            "www.example." => (ok, alias("cdn.example.net."), vec![]),
            "cdn.example.net." => (ok, alias("edge.example.org."), vec![]),
            "edge.example.org." => (ok, vec![raw_a(&qname, 60, [192, 0, 2, 7])], vec![]),
            "gone.example." => (ok, alias("missing.example.net."), vec![]),
            "loop-a.example." => (ok, alias("loop-b.example."), vec![]),
            "loop-b.example." => (ok, alias("loop-a.example."), vec![]),
            "nodata.example." => (
                ok,
                alias("target.example."),
                vec![raw_soa("example.", 300, 60)],
            ),
            "local.example." => (ok, alias("localhost."), vec![]),
            "tor.example." => (ok, alias("abc.onion."), vec![]),
            "broken.example." => (ok, alias("down.example.net."), vec![]),
            "down.example.net." => return Action::Drop,
            "refusing.example." => (ok, alias("refused.example.net."), vec![]),
            "refused.example.net." => (ResponseCode::ServFail, vec![], vec![]),
            "poison.example." => {
                let mut answers = alias("local.p2p.");
                answers.push(raw_a("local.p2p.", 300, [6, 6, 6, 6]));
                (ok, answers, vec![])
            }
            "poison-lh.example." => {
                let mut answers = alias("localhost.");
                answers.push(raw_a("localhost.", 300, [6, 6, 6, 6]));
                (ok, answers, vec![])
            }
            _ => (
                ResponseCode::NXDomain,
                vec![],
                vec![raw_soa("example.net.", 300, 60)],
            ),
        };
        answer(asked, rcode, 0, answers, authorities)
    })
    .await
}

fn owners(msg: &hickory_proto::op::Message) -> Vec<String> {
    msg.answers.iter().map(|r| r.name.to_ascii()).collect()
}

#[tokio::test]
async fn an_incomplete_upstream_chain_is_completed() {
    let upstream = zone_by_zone_upstream().await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let reply = ask(daemon.addr, "www.example.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        owners(&reply),
        ["www.example.", "cdn.example.net.", "edge.example.org."]
    );
    assert_eq!(a_records(&reply), ["192.0.2.7"]);
    assert_eq!(upstream.asked_for("edge.example.org.").len(), 1);
    // A target that does not exist: NXDOMAIN with the target zone's SOA after the chain
    // (RFC 2308 section 2.1), so the client caches it.
    let gone = ask(daemon.addr, "gone.example.", RecordType::A).await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(owners(&gone), ["gone.example."]);
    assert!(matches!(
        gone.authorities.first().map(|r| &r.data),
        Some(RData::SOA(_))
    ));
}

#[tokio::test]
async fn chains_that_loop_or_say_nodata_are_not_chased() {
    let upstream = zone_by_zone_upstream().await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let looped = ask(daemon.addr, "loop-a.example.", RecordType::A).await;
    assert_eq!(looped.metadata.response_code, ResponseCode::NoError);
    assert_eq!(owners(&looped), ["loop-a.example.", "loop-b.example."]);
    assert_eq!(upstream.asked_for("loop-a.example.").len(), 1);
    assert_eq!(upstream.asked_for("loop-b.example.").len(), 1);
    // An SOA says the target has no A record: nothing more to ask.
    let nodata = ask(daemon.addr, "nodata.example.", RecordType::A).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert_eq!(owners(&nodata), ["nodata.example."]);
    assert!(upstream.asked_for("target.example.").is_empty());
    // A CNAME query is answered with the CNAME alone.
    let cname = ask(daemon.addr, "www.example.", RecordType::CNAME).await;
    assert_eq!(owners(&cname), ["www.example."]);
    assert!(upstream.asked_for("cdn.example.net.").is_empty());
}

#[tokio::test]
async fn a_target_that_fails_fails_the_answer() {
    let upstream = zone_by_zone_upstream().await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    // Silent, or SERVFAIL: a stub must not read a chain without its end as "no address".
    for (name, target) in [
        ("broken.example.", "down.example.net."),
        ("refusing.example.", "refused.example.net."),
    ] {
        let reply = ask(daemon.addr, name, RecordType::A).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{name}"
        );
        assert!(reply.answers.is_empty(), "{name}");
        assert!(ede(&reply).is_some(), "{name}: the reason is given");
        assert!(!upstream.asked_for(target).is_empty(), "{target} was asked");
    }
}

#[tokio::test]
async fn special_use_targets_are_never_forwarded() {
    let upstream = zone_by_zone_upstream().await;
    let mut config = config(&[upstream.addr]);
    for (owner, target) in [
        ("lh.p2p", "localhost."),
        ("tor.p2p", "abc.onion."),
        ("nowhere.p2p", "www.invalid."),
    ] {
        config
            .naming
            .records
            .insert(owner.into(), vec![format!("CNAME {target}")]);
    }
    let daemon = TestDaemon::start(config).await;
    let lh = ask(daemon.addr, "lh.p2p.", RecordType::A).await;
    assert_eq!(lh.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&lh), ["127.0.0.1"]);
    assert_eq!(owners(&lh), ["lh.p2p.", "localhost."]);
    for name in ["tor.p2p.", "nowhere.p2p."] {
        let reply = ask(daemon.addr, name, RecordType::A).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert_eq!(owners(&reply), [name], "{name}");
        assert!(
            matches!(
                reply.authorities.first().map(|r| &r.data),
                Some(RData::SOA(_))
            ),
            "{name}: the special zone's SOA"
        );
    }
    // Upstream chains that reach a special-use name are completed here, never forwarded.
    let local = ask(daemon.addr, "local.example.", RecordType::A).await;
    assert_eq!(owners(&local), ["local.example.", "localhost."]);
    assert_eq!(a_records(&local), ["127.0.0.1"]);
    let tor = ask(daemon.addr, "tor.example.", RecordType::A).await;
    assert_eq!(tor.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(owners(&tor), ["tor.example."]);
    assert!(
        upstream
            .asked()
            .iter()
            .all(|a| a.qname().ends_with(".example.")),
        "only the upstream's own names went upstream"
    );
}

#[tokio::test]
async fn upstream_data_for_names_served_here_is_replaced() {
    let upstream = zone_by_zone_upstream().await;
    let mut config = config(&[upstream.addr]);
    config
        .naming
        .records
        .insert("local.p2p".into(), vec!["A 192.0.2.50".into()]);
    let daemon = TestDaemon::start(config).await;
    let p2p = ask(daemon.addr, "poison.example.", RecordType::A).await;
    assert_eq!(p2p.metadata.response_code, ResponseCode::NoError);
    assert_eq!(owners(&p2p), ["poison.example.", "local.p2p."]);
    assert_eq!(
        a_records(&p2p),
        ["192.0.2.50"],
        "the local record, not the upstream's"
    );
    let lh = ask(daemon.addr, "poison-lh.example.", RecordType::A).await;
    assert_eq!(owners(&lh), ["poison-lh.example.", "localhost."]);
    assert_eq!(a_records(&lh), ["127.0.0.1"]);
    assert!(upstream.asked_for("local.p2p.").is_empty());
    assert!(upstream.asked_for("localhost.").is_empty());
}
