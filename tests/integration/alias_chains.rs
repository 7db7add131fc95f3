//! Alias chains that leave the zone they start in (issue 11): an upstream answer that stops at
//! a CNAME without the target's data is completed by asking for the target, as a recursive
//! resolver does (RFC 1034 section 4.3.2 step 3a); a chain that reaches a special-use name
//! (localhost, onion, invalid) is answered here, never forwarded, whether it starts in `.p2p`
//! or upstream.

use hickory_proto::{
    op::ResponseCode,
    rr::{RData, RecordType},
};

use crate::{
    scripted::{Action, Asked, RawSections, Scripted, raw_a, raw_cname, raw_response, raw_soa},
    support::{TestDaemon, a_records, ask, config},
};

/// The answer to `asked` with `rcode` and these sections.
fn answer(
    asked: &Asked,
    rcode: ResponseCode,
    answers: Vec<Vec<u8>>,
    authorities: Vec<Vec<u8>>,
) -> Action {
    let sections = RawSections {
        answers,
        authorities,
        additionals: Vec::new(),
    };
    Action::Reply(raw_response(asked, rcode, 0, &sections))
}

/// An upstream that serves each zone on its own, as authoritative servers do: it answers a
/// CNAME without following it.
async fn zone_by_zone_upstream() -> Scripted {
    Scripted::start(|asked| {
        let qname = asked.qname();
        let cname = |target: &str| raw_cname(&qname, 300, target);
        match qname.as_str() {
            "www.example." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("cdn.example.net.")],
                vec![],
            ),
            "cdn.example.net." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("edge.example.org.")],
                vec![],
            ),
            "edge.example.org." => answer(
                asked,
                ResponseCode::NoError,
                vec![raw_a(&qname, 60, [192, 0, 2, 7])],
                vec![],
            ),
            "gone.example." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("missing.example.net.")],
                vec![],
            ),
            "loop-a.example." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("loop-b.example.")],
                vec![],
            ),
            "loop-b.example." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("loop-a.example.")],
                vec![],
            ),
            "nodata.example." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("target.example.")],
                vec![raw_soa("example.", 300, 60)],
            ),
            "local.example." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("localhost.")],
                vec![],
            ),
            "tor.example." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("abc.onion.")],
                vec![],
            ),
            "broken.example." => answer(
                asked,
                ResponseCode::NoError,
                vec![cname("down.example.net.")],
                vec![],
            ),
            "down.example.net." => Action::Drop,
            _ => answer(
                asked,
                ResponseCode::NXDomain,
                vec![],
                vec![raw_soa("example.net.", 300, 60)],
            ),
        }
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
async fn a_target_that_fails_leaves_the_chain_so_far() {
    let upstream = zone_by_zone_upstream().await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;
    let reply = ask(daemon.addr, "broken.example.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(owners(&reply), ["broken.example."]);
    assert!(!upstream.asked_for("down.example.net.").is_empty());
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
    // Upstream chains that reach a special-use name stop there: the client asks for the
    // target itself, and gets this resolver's answer for it.
    for (name, target) in [
        ("local.example.", "localhost."),
        ("tor.example.", "abc.onion."),
    ] {
        let reply = ask(daemon.addr, name, RecordType::A).await;
        assert_eq!(owners(&reply), [name], "{name}");
        assert!(a_records(&reply).is_empty(), "{name}");
        assert!(
            upstream.asked_for(target).is_empty(),
            "{target} went upstream"
        );
    }
    assert!(
        upstream
            .asked()
            .iter()
            .all(|a| a.qname().ends_with(".example.")),
        "only the upstream's own names went upstream"
    );
}
