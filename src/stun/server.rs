//! The server role: [`serve`] answers Binding requests on the introduction server's UDP socket
//! with the source address it saw, and drops everything else without a word.
//!
//! It must not become a weapon against a victim whose address an attacker puts in the source
//! of forged requests, so a reply is never larger than [`MAX_RESPONSE`] bytes whatever the
//! request (a request is at least 20), and replies are limited to 20 per second per source
//! (IPv4 address or IPv6 /64, 4096 sources tracked, least recently seen forgotten first) and
//! 2000 per second in all.
//!
//! Requests without the magic cookie come from RFC 3489 clients (such as the `stun` program of
//! Debian's stun-client). RFC 5389 section 12.2 asks servers to answer them, with the 128-bit
//! transaction id echoed and MAPPED-ADDRESS instead of XOR-MAPPED-ADDRESS, which they do not
//! know; so does this one. CHANGE-REQUEST is understood when it asks for no change. This server
//! has a single address, so it cannot send a reply from another address or port: to such a
//! request it answers 420 (Unknown Attribute), as RFC 5780 servers without a second address
//! do, except when it comes from an RFC 3489 client, which it leaves without a reply, as if the
//! reply had been sent from the other address and filtered on the way.

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroUsize,
    time::Duration,
};

use lru::LruCache;
use tokio::{net::UdpSocket, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::message::{
    BINDING_ERROR, BINDING_REQUEST, BINDING_SUCCESS, CHANGE_REQUEST, COMPREHENSION_OPTIONAL,
    ERROR_CODE, HEADER_LEN, MAPPED_ADDRESS, SOFTWARE, SOFTWARE_NAME, Writer, XOR_MAPPED_ADDRESS,
    encode_address, encode_error, padded, parse,
};

/// CHANGE-REQUEST flags (RFC 5780 section 7.2): "change IP" and "change port".
const CHANGE_FLAGS: u8 = 0x06;
/// Larger datagrams are not Binding requests anyone needs answered.
const MAX_REQUEST: usize = 1500;
/// Unknown attribute types listed in a 420 reply at most, which keeps it as small as a success.
const MAX_UNKNOWN: usize = 8;
/// The largest reply [`serve`] sends: header, the two address attributes for IPv6 (or, for a
/// 420, ERROR-CODE and UNKNOWN-ATTRIBUTES, no larger), and SOFTWARE.
pub const MAX_RESPONSE: usize = HEADER_LEN + 2 * (4 + 20) + 4 + padded(SOFTWARE_NAME.len());

/// Replies per second to one source (IPv4 address or IPv6 /64), with a burst as large.
const PER_SOURCE: Rate = Rate {
    per_second: 20.0,
    burst: 20.0,
};
/// Replies per second to all sources together: forged sources spread over more than
/// [`TRACKED_SOURCES`] addresses get fresh buckets, this bucket they share.
const ALL_SOURCES: Rate = Rate {
    per_second: 2000.0,
    burst: 2000.0,
};
/// Sources whose rate is tracked; the least recently seen is forgotten first.
const TRACKED_SOURCES: usize = 4096;
/// Pause after a receive error, so that a persistent one does not spin the loop.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Answers Binding requests on `socket` until `stop` is cancelled. It never returns early: a
/// socket error is logged and the loop goes on.
pub async fn serve(socket: UdpSocket, stop: CancellationToken) {
    debug!(addr = ?socket.local_addr().ok(), "STUN server running");
    let mut limiter = RateLimiter::new();
    // One byte more than accepted, to see that a datagram was too large.
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, source) = match received {
            Ok(received) => received,
            // ICMP errors for earlier replies, reported on some systems: nothing is wrong here.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                ) =>
            {
                debug!(%error, "STUN server: ICMP error for an earlier reply");
                continue;
            }
            Err(error) => {
                warn!(%error, "STUN server failed to receive, going on");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RECEIVE_ERROR_PAUSE) => continue,
                }
            }
        };
        let Some(datagram) = buf.get(..len) else {
            continue;
        };
        let response = match respond(datagram, source) {
            Ok(response) => response,
            Err(reason) => {
                debug!(%source, len, reason, "STUN datagram dropped");
                continue;
            }
        };
        if !limiter.allow(source.ip(), Instant::now()) {
            debug!(%source, "STUN reply rate-limited");
            continue;
        }
        if let Err(error) = socket.send_to(&response, source).await {
            debug!(%error, %source, "STUN reply not sent");
        }
    }
}

/// The reply to `datagram` from `source`, or why there is none.
pub(crate) fn respond(datagram: &[u8], source: SocketAddr) -> Result<Vec<u8>, &'static str> {
    if datagram.len() > MAX_REQUEST {
        return Err("larger than any Binding request");
    }
    if source.port() == 0 {
        return Err("source port 0 cannot be answered");
    }
    let request = parse(datagram)?;
    if request.kind != BINDING_REQUEST {
        return Err("not a Binding request");
    }
    let mut unknown: Vec<u16> = Vec::new();
    for (kind, value) in request.attributes() {
        // An RFC 3489 client asking for a reply from another address or port learns from the
        // silence that none can come; it would take a 420 for success (stun-client 0.97 does,
        // and reports an open internet). RFC 8489 and RFC 5780 clients understand 420.
        if request.is_rfc3489() && kind == CHANGE_REQUEST && !understood_in_request(kind, value) {
            return Err("RFC 3489 CHANGE-REQUEST for a reply from another address");
        }
        if kind < COMPREHENSION_OPTIONAL
            && !understood_in_request(kind, value)
            && !unknown.contains(&kind)
            && unknown.len() < MAX_UNKNOWN
        {
            unknown.push(kind);
        }
    }
    // A v4 client of a dual-stack socket is seen as ::ffff:a.b.c.d; it is an IPv4 client.
    let mapped = SocketAddr::new(source.ip().to_canonical(), source.port());
    let mut reply;
    if unknown.is_empty() {
        reply = Writer::new(BINDING_SUCCESS, &request.id);
        if !request.is_rfc3489() {
            reply.attribute(
                XOR_MAPPED_ADDRESS,
                &encode_address(mapped, Some(&request.id)),
            );
        }
        reply.attribute(MAPPED_ADDRESS, &encode_address(mapped, None));
    } else {
        reply = Writer::new(BINDING_ERROR, &request.id);
        reply.attribute(ERROR_CODE, &encode_error(420, "Unknown Attribute"));
        reply.unknown_attributes(&unknown);
    }
    reply.attribute(SOFTWARE, SOFTWARE_NAME.as_bytes());
    Ok(reply.finish())
}

/// The comprehension-required attributes a Binding request may carry that this server
/// understands: only a CHANGE-REQUEST that asks for no change.
fn understood_in_request(kind: u16, value: &[u8]) -> bool {
    kind == CHANGE_REQUEST && value.len() == 4 && value[3] & CHANGE_FLAGS == 0
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Bucket {
            tokens: rate.burst,
            updated: now,
        }
    }

    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = self.updated.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reply budgets: one bucket per source in a bounded map, one for everybody.
struct RateLimiter {
    per_source: LruCache<IpAddr, Bucket>,
    all: Bucket,
}

impl RateLimiter {
    fn new() -> Self {
        let capacity = NonZeroUsize::new(TRACKED_SOURCES).expect("TRACKED_SOURCES is not zero");
        RateLimiter {
            per_source: LruCache::new(capacity),
            all: Bucket::full(ALL_SOURCES, Instant::now()),
        }
    }

    /// Whether a reply to `ip` may go out at `now`; if so, it is counted.
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        let allowed = match self.per_source.get_mut(&key) {
            Some(bucket) => bucket.take(PER_SOURCE, now),
            None => {
                let mut bucket = Bucket::full(PER_SOURCE, now);
                let allowed = bucket.take(PER_SOURCE, now);
                self.per_source.push(key, bucket);
                allowed
            }
        };
        allowed && self.all.take(ALL_SOURCES, now)
    }
}

/// Who a budget belongs to: an IPv4 address, or an IPv6 /64 (one subscriber's network, in
/// which a host can pick any address).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{StunError, client::read_response, message::*, test_vectors::*};

    #[test]
    fn binding_request_gets_both_addresses_and_software() {
        for source in [V4_SOURCE, V6_SOURCE, "[::ffff:192.0.2.1]:32853"] {
            let source: SocketAddr = source.parse().unwrap();
            let seen = SocketAddr::new(source.ip().to_canonical(), source.port());
            let reply = respond(&request(&[]), source).unwrap();
            assert!(reply.len() <= MAX_RESPONSE, "{} bytes", reply.len());
            let message = parse(&reply).unwrap();
            assert_eq!(message.kind, BINDING_SUCCESS);
            assert_eq!(message.id[..4], MAGIC_COOKIE);
            assert_eq!(message.id[4..], VECTOR_ID);
            let xor = attribute(&message, XOR_MAPPED_ADDRESS).unwrap();
            assert_eq!(decode_address(xor, Some(&message.id)), Some(seen));
            let plain = attribute(&message, MAPPED_ADDRESS).unwrap();
            assert_eq!(decode_address(plain, None), Some(seen));
            assert_eq!(
                attribute(&message, SOFTWARE).unwrap(),
                SOFTWARE_NAME.as_bytes()
            );
            // What our client makes of it.
            assert_eq!(
                read_response(&reply, &VECTOR_ID, source).unwrap().unwrap(),
                seen
            );
        }
    }

    #[test]
    fn rfc3489_request_gets_mapped_address_only() {
        // What `stun 127.0.0.1 1` (stun-client 0.97) sends: no magic cookie, and a
        // CHANGE-REQUEST asking for no change.
        let datagram = hex("0001 0008 01e30033 51f72e79 19f84878 cbcfc87f 0003 0004 00000000");
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        let reply = respond(&datagram, source).unwrap();
        let message = parse(&reply).unwrap();
        assert_eq!(message.kind, BINDING_SUCCESS);
        assert_eq!(message.id[..], datagram[4..20]);
        assert!(attribute(&message, XOR_MAPPED_ADDRESS).is_none());
        let plain = attribute(&message, MAPPED_ADDRESS).unwrap();
        assert_eq!(decode_address(plain, None), Some(source));
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420() {
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        let reply = respond(&rfc5769_request(), source).unwrap();
        assert!(reply.len() <= MAX_RESPONSE);
        let message = parse(&reply).unwrap();
        assert_eq!(message.kind, BINDING_ERROR);
        assert_eq!(message.id[4..], VECTOR_ID);
        assert_eq!(attribute(&message, ERROR_CODE).unwrap()[..4], [0, 0, 4, 20]);
        // PRIORITY, USERNAME, MESSAGE-INTEGRITY: not SOFTWARE, ICE-CONTROLLED, FINGERPRINT,
        // which are comprehension-optional. Odd count: the last is repeated as padding.
        assert_eq!(
            attribute(&message, UNKNOWN_ATTRIBUTES).unwrap(),
            hex("0024 0006 0008")
        );
        let software = 4 + padded(SOFTWARE_NAME.len());
        assert_eq!(
            reply[reply.len() - software - 4..reply.len() - software],
            hex("00080008")
        );
        match read_response(&reply, &VECTOR_ID, source).unwrap() {
            Err(StunError::ErrorResponse {
                code: 420, reason, ..
            }) => {
                assert_eq!(reason, "Unknown Attribute");
            }
            other => panic!("{other:?}"),
        }

        // A CHANGE-REQUEST this server cannot honour (it has one address) is not understood;
        // one asking for no change is. RFC 3489 clients get no reply at all (below).
        for (flags, answered) in [(0x00, true), (0x02, false), (0x04, false), (0x06, false)] {
            let reply = respond(&request(&[(CHANGE_REQUEST, &[0, 0, 0, flags])]), source);
            let message = parse(reply.as_ref().unwrap()).unwrap();
            if answered {
                assert_eq!(message.kind, BINDING_SUCCESS);
            } else {
                assert_eq!(message.kind, BINDING_ERROR);
                assert_eq!(
                    attribute(&message, UNKNOWN_ATTRIBUTES).unwrap(),
                    hex("0003")
                );
            }
        }
    }

    #[test]
    fn rfc3489_change_request_gets_no_reply() {
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        for (flags, answered) in [(0x00, true), (0x02, false), (0x04, false), (0x06, false)] {
            let mut datagram = hex("0001 0008 01e30033 51f72e79 19f84878 cbcfc87f 0003 0004");
            datagram.extend_from_slice(&[0, 0, 0, flags]);
            assert_eq!(
                respond(&datagram, source).is_ok(),
                answered,
                "flags {flags}"
            );
        }
    }

    #[test]
    fn many_unknown_attributes_make_no_larger_reply() {
        let kinds: Vec<u16> = (0x0030..0x0050).chain([0x0030, 0x0031]).collect();
        let attributes: Vec<(u16, &[u8])> = kinds.iter().map(|&k| (k, &[][..])).collect();
        let reply = respond(&request(&attributes), V6_SOURCE.parse().unwrap()).unwrap();
        assert!(reply.len() <= MAX_RESPONSE);
        let message = parse(&reply).unwrap();
        let listed = attribute(&message, UNKNOWN_ATTRIBUTES).unwrap();
        assert_eq!(listed.len(), 2 * MAX_UNKNOWN);
        assert_eq!(listed[..4], hex("0030 0031"));
        // Comprehension-optional ones are ignored, however many.
        let optional: Vec<(u16, &[u8])> = (0x8030..0x8050).map(|k| (k, &[1u8][..])).collect();
        let reply = respond(&request(&optional), V6_SOURCE.parse().unwrap()).unwrap();
        assert_eq!(parse(&reply).unwrap().kind, BINDING_SUCCESS);
    }

    #[test]
    fn malformed_and_other_messages_are_dropped() {
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        let good = request(&[(SOFTWARE, b"x")]);
        assert!(respond(&good, source).is_ok());

        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut first_bits = good.clone();
        first_bits[0] |= 0x80;
        cases.push(("first bit", first_bits));
        let mut second_bit = good.clone();
        second_bit[0] |= 0x40;
        cases.push(("second bit", second_bit));
        let mut odd_length = good.clone();
        odd_length[3] = 6;
        cases.push(("length not a multiple of 4", odd_length));
        let mut long_length = good.clone();
        long_length[3] += 4;
        cases.push(("length beyond the datagram", long_length));
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 4]);
        cases.push(("bytes beyond the length", trailing));
        let mut truncated_attribute = good.clone();
        truncated_attribute[HEADER_LEN + 3] = 9;
        cases.push(("attribute longer than the message", truncated_attribute));
        let mut endless_attribute = request(&[]);
        endless_attribute.extend_from_slice(&hex("8022 ffff"));
        endless_attribute[3] = 4;
        cases.push(("attribute of 65535 bytes in 4", endless_attribute));
        cases.push(("short", good[..HEADER_LEN - 1].to_vec()));
        cases.push(("empty", Vec::new()));
        for kind in [BINDING_SUCCESS, BINDING_ERROR, 0x0011, 0x0002, 0x0003] {
            let mut other = good.clone();
            other[..2].copy_from_slice(&u16::to_be_bytes(kind));
            cases.push(("not a Binding request", other));
        }
        let mut bad_fingerprint = request(&[(FINGERPRINT, &[0, 0, 0, 0])]);
        bad_fingerprint[HEADER_LEN + 4] ^= 1;
        cases.push(("bad fingerprint", bad_fingerprint));
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&MAGIC_COOKIE);
        let mut writer = Writer::new(BINDING_REQUEST, &id);
        writer.attribute(FINGERPRINT, &[0; 4]);
        writer.attribute(SOFTWARE, b"late");
        cases.push(("fingerprint not last", writer.finish()));
        cases.push(("too large", request(&[(SOFTWARE, &[b'x'; MAX_REQUEST])])));

        for (what, datagram) in cases {
            assert!(respond(&datagram, source).is_err(), "{what} answered");
        }
        assert!(respond(&good, "192.0.2.1:0".parse().unwrap()).is_err());
    }

    #[test]
    fn fingerprinted_request_is_answered() {
        let mut datagram = request(&[(FINGERPRINT, &[0; 4])]);
        let covered = datagram.len() - 8;
        let crc = (crc32(&datagram[..covered]) ^ FINGERPRINT_XOR).to_be_bytes();
        let len = datagram.len();
        datagram[len - 4..].copy_from_slice(&crc);
        assert!(respond(&datagram, V4_SOURCE.parse().unwrap()).is_ok());
    }

    #[test]
    fn rate_limit_per_source_refills_and_is_bounded() {
        let mut limiter = RateLimiter::new();
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..100).filter(|_| limiter.allow(a, start)).count();
        assert_eq!(allowed, 20);
        // Another source has its own budget.
        assert!(limiter.allow("192.0.2.2".parse().unwrap(), start));
        // 20 per second: one more every 50 ms.
        let later = start + Duration::from_millis(160);
        let allowed = (0..100).filter(|_| limiter.allow(a, later)).count();
        assert_eq!(allowed, 3);
        // Addresses of one IPv6 /64 share a budget; the v4-mapped form is the v4 address.
        let in_64 = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
        let allowed = (0..100).filter(|&i| limiter.allow(in_64(i), start)).count();
        assert_eq!(allowed, 20);
        assert!(!limiter.allow("::ffff:192.0.2.1".parse().unwrap(), later));

        // Forged sources by the thousand: the map stays bounded, the total budget holds.
        let flood = start + Duration::from_secs(10);
        let mut total = 0;
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            total += usize::from(limiter.allow(ip, flood));
        }
        assert!(limiter.per_source.len() <= TRACKED_SOURCES);
        assert_eq!(total, 2000);
    }
}
