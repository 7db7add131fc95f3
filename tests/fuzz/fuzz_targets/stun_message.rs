//! A STUN datagram (RFC 8489) as the introduction server's STUN server receives it, and as the
//! NAT probe's client receives it while waiting for the answer to the transaction it names.
//! The first byte picks the source address; the rest is the datagram.
//!
//! Checked beyond "no panic": a reply is never larger than `MAX_RESPONSE`, belongs to the
//! request's transaction, and our own client reads it: the source address for a success, an
//! error for an error response.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use p2pdns::{
    fuzzing::{stun_answer, stun_reply},
    stun::MAX_RESPONSE,
};

/// RFC 8489 section 5.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// Binding error response (RFC 8489 section 18.2).
const BINDING_ERROR: [u8; 2] = [0x01, 0x11];

const SOURCES: [&str; 4] = [
    "192.0.2.1:32853",
    "[2001:db8::1]:32853",
    "[::ffff:192.0.2.1]:32853",
    "192.0.2.1:0",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datagram)) = data.split_first() else {
        return;
    };
    let source: SocketAddr = SOURCES[usize::from(selector) % SOURCES.len()]
        .parse()
        .expect("static addresses");
    let Some(id) = datagram
        .get(8..20)
        .map(|id| <[u8; 12]>::try_from(id).expect("12 bytes"))
    else {
        let _ = stun_reply(datagram, source);
        return;
    };
    let _ = stun_answer(datagram, &id, source);
    let Ok(reply) = stun_reply(datagram, source) else {
        return;
    };
    assert!(
        reply.len() <= MAX_RESPONSE,
        "a reply of {} bytes",
        reply.len()
    );
    assert_eq!(reply[4..20], datagram[4..20], "the request's transaction");
    if datagram[4..8] != MAGIC_COOKIE {
        // An RFC 3489 request: our client only speaks RFC 8489.
        return;
    }
    let seen = SocketAddr::new(source.ip().to_canonical(), source.port());
    match stun_answer(&reply, &id, source) {
        Some(Ok(mapped)) => assert_eq!(mapped, seen, "the mapped address is the source"),
        Some(Err(error)) => assert_eq!(reply[..2], BINDING_ERROR, "a success read as {error}"),
        None => panic!("our client ignores our server's reply"),
    }
});
