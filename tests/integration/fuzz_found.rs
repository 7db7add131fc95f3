//! What the fuzz targets of `tests/fuzz` found, replayed against a daemon (issue 15, kind 6).
//! Each test names the target and the kind of input; the fix is in the comment on the code.

use hickory_proto::op::{Message, ResponseCode};
use tokio::{net::UdpSocket, time::timeout};

use crate::{
    scripted::{Action, RawSections, Scripted, raw_query, raw_response},
    support::{TestDaemon, WAIT, config, exchange_tcp, query},
};

/// Sends `wire` over UDP from a fresh socket and returns the reply's bytes.
async fn udp(server: std::net::SocketAddr, wire: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(wire, server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let (len, _) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a reply")
        .unwrap();
    buf.truncate(len);
    buf
}

/// A query (ID 0x5151, RD) with `count` questions `qNN.example.com. A`, and an OPT record of
/// EDNS version `edns` when given (payload 512).
fn many_questions(count: u8, edns: Option<u8>) -> Vec<u8> {
    let mut wire = vec![
        0x51,
        0x51,
        0x01,
        0x00,
        0,
        count,
        0,
        0,
        0,
        0,
        0,
        u8::from(edns.is_some()),
    ];
    for i in 0..count {
        wire.push(3);
        wire.extend_from_slice(format!("q{i:02}").as_bytes());
        wire.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
    }
    if let Some(version) = edns {
        wire.extend_from_slice(&[0, 0, 41, 2, 0, 0, version, 0, 0, 0, 0]);
    }
    wire
}

/// dns_query: a datagram whose question section alone is over the client's UDP size (40
/// questions, 840 bytes). Its FORMERR (REFUSED outside `dns.allow`, BADVERS for EDNS version 1)
/// echoed the questions; hickory then failed to encode it, logged an error and sent a bare
/// SERVFAIL, for every such datagram, from any address. It now gets its RCODE with TC=1 and
/// without the questions, within 512 bytes.
#[tokio::test]
async fn a_question_section_over_the_udp_size_gets_its_rcode() {
    let daemon = TestDaemon::start(config(&[])).await;
    let mut outside = config(&[]);
    outside.dns.allow = vec!["10.0.0.0/8".parse().unwrap()];
    let refusing = TestDaemon::start(outside).await;
    for (server, edns, rcode) in [
        (daemon.addr, None, ResponseCode::FormErr),
        (daemon.addr, Some(1), ResponseCode::BADVERS),
        (refusing.addr, None, ResponseCode::Refused),
    ] {
        let reply = udp(server, &many_questions(40, edns)).await;
        assert!(reply.len() <= 512, "{} bytes", reply.len());
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, 0x5151);
        // BADVERS shares its code, 16, with BADSIG, which hickory reads it as.
        assert_eq!(u16::from(reply.metadata.response_code), u16::from(rcode));
        assert!(
            reply.metadata.truncation,
            "TC=1: the whole reply is over TCP"
        );
        assert_eq!(reply.edns.is_some(), edns.is_some(), "OPT kept");
    }
    daemon.stop().await.unwrap();
    refusing.stop().await.unwrap();
}

/// upstream_answer: a long question name (253 bytes) whose answer the upstream compressed
/// against the question (342 bytes in all), asked by a client whose EDNS size is 512. hickory
/// echoes the question as it came and compresses nothing against it, so the daemon's reply
/// writes the owner name out in full: 251 bytes more than the upstream's answer, from whose
/// size the daemon judged that the reply fits. The client got 593 bytes. Replies are now
/// measured by encoding them, and owner names point to the question's (RFC 1035 section
/// 4.1.4), so the answer itself fits: within 512 bytes, with its OPT record, as over TCP.
#[tokio::test]
async fn a_long_name_compressed_upstream_fits_the_client_udp_size() {
    let label = "a".repeat(60);
    let qname = format!("{label}.{label}.{label}.{label}.example.");
    let upstream = Scripted::start(|asked| {
        // A TXT record of 60 bytes owned by the question's name, as a pointer to it.
        let mut txt = vec![0xc0, 12, 0, 16, 0, 1, 0, 0, 1, 44, 0, 61, 60];
        txt.extend_from_slice(&[b'x'; 60]);
        let sections = RawSections {
            answers: vec![txt],
            ..RawSections::default()
        };
        Action::Reply(raw_response(asked, ResponseCode::NoError, 0, &sections))
    })
    .await;
    let daemon = TestDaemon::start(config(&[upstream.addr])).await;

    let mut ask = raw_query(0x5252, &qname, 16, true);
    let payload = ask.len() - 8;
    ask[payload..payload + 2].copy_from_slice(&512u16.to_be_bytes());
    let reply = udp(daemon.addr, &ask).await;
    assert!(reply.len() <= 512, "{} bytes", reply.len());
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(
        !reply.metadata.truncation,
        "TC=0: the answer fits, compressed"
    );
    assert_eq!(reply.answers.len(), 1);
    assert!(reply.edns.is_some(), "OPT kept");
    let full = exchange_tcp(
        daemon.addr,
        query(&qname, hickory_proto::rr::RecordType::TXT),
    )
    .await;
    assert_eq!(full.answers.len(), 1, "the answer over TCP");
    daemon.stop().await.unwrap();
}

/// upstream_answer (a 600 s run): the same kind for answers the daemon makes itself. ANY for a
/// 245-byte name gets the RFC 8482 HINFO owned by that name; the reply was judged by the size
/// of an empty reply and went out at 542 bytes to a client that allowed 512. Answers the
/// daemon adds records to are now measured by encoding them, and the owner points to the
/// question's name: the answer fits within 512 bytes, with the OPT record when the query had
/// one, as over TCP.
#[tokio::test]
async fn a_synthesized_answer_for_a_long_name_fits_the_client_udp_size() {
    let label = "b".repeat(60);
    let qname = format!("{label}.{label}.{label}.{label}.");
    let daemon = TestDaemon::start(config(&[])).await;
    for edns in [false, true] {
        let mut ask = raw_query(0x5353, &qname, 255, edns);
        if edns {
            let payload = ask.len() - 8;
            ask[payload..payload + 2].copy_from_slice(&512u16.to_be_bytes());
        }
        let reply = udp(daemon.addr, &ask).await;
        assert!(reply.len() <= 512, "{} bytes (EDNS: {edns})", reply.len());
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(!reply.metadata.truncation, "TC=0 (EDNS: {edns})");
        assert_eq!(reply.answers.len(), 1, "EDNS: {edns}");
        assert_eq!(
            reply.edns.is_some(),
            edns,
            "OPT exactly when asked with one"
        );
    }
    let full = exchange_tcp(
        daemon.addr,
        query(&qname, hickory_proto::rr::RecordType::ANY),
    )
    .await;
    assert_eq!(full.answers.len(), 1, "the RFC 8482 answer over TCP");
    daemon.stop().await.unwrap();
}
