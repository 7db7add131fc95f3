//! An upstream's answer through the forwarder: the UDP try's match against the query and the
//! lenient decoding (`dns::exchange`), the RCODE and the scrubber (`dns::scrub::vet`), the
//! cache entry (`CachedAnswer::from_message`, its TTL) and a client's query served from it
//! through the handler. The first byte holds the client's DO and CD bits, its transport and
//! EDNS size; the rest is the datagram, answering its own question (or `example.com. A`).
//!
//! Checked beyond "no panic": a decoded answer encodes and decodes again to the same records;
//! vetting an answer twice changes nothing the second time; a cache entry's TTL is within the
//! configured bounds; the client's reply passes `Harness::ask`'s checks.
#![no_main]

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{LowerName, Name, RecordType},
};
use hickory_server::net::xfer::Protocol;
use libfuzzer_sys::fuzz_target;
use p2pdns::{
    dns::{
        cache::{CacheKey, CachedAnswer},
        exchange::wire::{decode_response, message_id},
        scrub::vet,
    },
    fuzzing::upstream_answer,
};
use p2pdns_fuzz::{Harness, client, sections};
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, datagram)) = data.split_first() else {
        return;
    };
    let Some(id) = message_id(datagram) else {
        return;
    };
    // The question the forwarder asked: the one the answer repeats, if it repeats one.
    let question = decode_response(datagram)
        .ok()
        .and_then(|d| d.message.queries.first().cloned())
        .unwrap_or_else(|| Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A));
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.add_query(question.clone());
    let Some(Ok(exchanged)) = upstream_answer(datagram, &query) else {
        return;
    };
    round_trip(&exchanged.message);

    let key = CacheKey {
        name: LowerName::new(question.name()),
        qtype: question.query_type(),
        dnssec_ok: flags & 1 != 0,
        checking_disabled: flags & 2 != 0,
    };
    let mut message = exchanged.message;
    if !matches!(
        message.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    ) {
        return;
    }
    if vet(&mut message, &key).is_err() {
        return;
    }
    let vetted = sections(&message);
    vet(&mut message, &key).expect("a vetted answer passes again");
    assert_eq!(sections(&message), vetted, "vetting is idempotent");

    let harness = Harness::get();
    let config = &harness.config.cache;
    let answer = CachedAnswer::from_message(message, exchanged.wire_len, &key, config);
    let ttl = answer.cache_ttl(config);
    if let Some(ttl) = ttl {
        let bound = config.max_ttl_secs.max(config.max_negative_ttl_secs);
        assert!(ttl <= bound, "cache TTL {ttl} over {bound}");
    }
    // Uncached answers go to the waiting clients as they are: through the cache here, so
    // that the handler serves them the same way.
    let cache = harness.forwarder.cache();
    cache.clear();
    cache.insert(
        key.clone(),
        answer.into(),
        ttl.unwrap_or(1).max(1),
        Instant::now(),
    );
    harness.ask(
        &client_query(&question, &key, flags),
        transport(flags),
        client(0),
    );
});

/// The response encodes, and decodes again to the same records and header.
fn round_trip(message: &Message) {
    let Ok(wire) = message.to_vec() else {
        return;
    };
    let again = decode_response(&wire)
        .unwrap_or_else(|error| panic!("a decoded answer, encoded, does not decode: {error}"))
        .message;
    assert_eq!(
        sections(&again),
        sections(message),
        "records survive a round trip"
    );
    assert_eq!(
        again.metadata, message.metadata,
        "header survives a round trip"
    );
    assert_eq!(
        again.queries, message.queries,
        "question survives a round trip"
    );
}

fn transport(flags: u8) -> Protocol {
    if flags & 4 == 0 {
        Protocol::Udp
    } else {
        Protocol::Tcp
    }
}

/// The client's query for `key`: RD, CD as in the key, an OPT record with its DO bit (always
/// when DO is set) and one of four UDP sizes.
fn client_query(question: &Query, key: &CacheKey, flags: u8) -> Vec<u8> {
    let mut query = Message::new(0x4242, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.metadata.checking_disabled = key.checking_disabled;
    query.add_query(question.clone());
    let size = [0, 512, 1232, 4096][usize::from(flags >> 3 & 3)];
    if key.dnssec_ok || size > 0 {
        let mut edns = Edns::new();
        edns.set_max_payload(size.max(512));
        edns.set_dnssec_ok(key.dnssec_ok);
        query.set_edns(edns);
    }
    query
        .to_vec()
        .expect("a query of a decoded question encodes")
}
