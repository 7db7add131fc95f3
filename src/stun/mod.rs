//! STUN (RFC 8489, which replaced RFC 5389), the Binding method only: how a node learns the
//! address and port its UDP packets appear to come from, and whether a NAT maps them to the same
//! public port whatever the destination (needed for hole punching) or not (a symmetric NAT).
//!
//! - [`serve`] is the introduction server's side. It answers a Binding request with the source
//!   address it saw and drops everything else without a word. It must not become a weapon
//!   against a victim whose address an attacker puts in the source of forged requests, so a
//!   reply is never larger than [`MAX_RESPONSE`] bytes whatever the request (a request is at
//!   least 20), and replies are limited to 20 per second per source (IPv4 address or IPv6 /64,
//!   4096 sources tracked, least recently seen forgotten first) and 2000 per second in all.
//! - [`binding`] asks one server for the mapped address, retransmitting as RFC 8489 section
//!   6.2.1 says; [`mapping_behaviour`] asks two and compares (RFC 4787 mapping behaviour).
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

/// The fixed value of a STUN message's bytes 4..8 since RFC 5389.
const MAGIC_COOKIE: [u8; 4] = 0x2112_A442_u32.to_be_bytes();
const HEADER_LEN: usize = 20;

// Message types: the method (Binding, 0x001) with the class bits.
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;

// Attribute types. Below 0x8000 an attribute is comprehension-required.
const MAPPED_ADDRESS: u16 = 0x0001;
const CHANGE_REQUEST: u16 = 0x0003;
const SOURCE_ADDRESS: u16 = 0x0004;
const CHANGED_ADDRESS: u16 = 0x0005;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const SOFTWARE: u16 = 0x8022;
const FINGERPRINT: u16 = 0x8028;
const COMPREHENSION_OPTIONAL: u16 = 0x8000;

/// The CRC-32 of a message is XORed with this ("STUN") to make FINGERPRINT.
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// CHANGE-REQUEST flags: "change IP" and "change port".
const CHANGE_FLAGS: u8 = 0x06;

/// What the SOFTWARE attribute says.
const SOFTWARE_NAME: &str = concat!("p2pdns ", env!("CARGO_PKG_VERSION"));

/// Larger datagrams are not Binding requests anyone needs answered.
const MAX_REQUEST: usize = 1500;
/// Unknown attribute types listed in a 420 reply at most, which keeps it as small as a success.
const MAX_UNKNOWN: usize = 8;
/// The largest reply [`serve`] sends: header, the two address attributes for IPv6 (or, for a
/// 420, ERROR-CODE and UNKNOWN-ATTRIBUTES, no larger), and SOFTWARE.
pub const MAX_RESPONSE: usize = HEADER_LEN + 2 * (4 + 20) + 4 + padded(SOFTWARE_NAME.len());

/// Room for a response from any server, ours or not.
const RECEIVE_BUFFER: usize = 2048;

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

/// Client retransmissions (RFC 8489 section 6.2.1): the first wait, doubled after every send...
const INITIAL_RTO: Duration = Duration::from_millis(500);
/// ...for at most this many sends...
const MAX_SENDS: u32 = 7;
/// ...after the last of which the wait is this many initial RTOs.
const LAST_WAIT_RTOS: u32 = 16;

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum StunError {
    /// No response to the Binding request came back from the server in time (every
    /// retransmission included).
    #[error("no STUN binding response from {server} within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    /// Sending the request or receiving on the socket failed.
    #[error("STUN binding request to {server} failed")]
    Io {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The server answered our transaction with a response that does not give an address:
    /// none in it, an address attribute that does not decode, or an attribute that RFC 8489
    /// says a client must understand and this one does not.
    #[error("malformed STUN binding response from {server}: {reason}")]
    Malformed {
        server: SocketAddr,
        reason: &'static str,
    },
    /// The server answered with an error response.
    #[error("STUN server {server} refused the binding request: error {code} {reason:?}")]
    ErrorResponse {
        server: SocketAddr,
        code: u16,
        reason: String,
    },
    /// [`mapping_behaviour`] needs two servers at different addresses.
    #[error("telling NAT mapping behaviour needs two distinct STUN servers, {given} given")]
    NotEnoughServers { given: usize },
}

/// How the network maps this socket's packets (RFC 4787 section 4.1 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Both servers saw the socket's own address: no NAT on the way.
    NotNatted,
    /// Both servers saw the same public address: the NAT keeps one mapping for every
    /// destination, so peers can reach the socket there once it has sent to them.
    EndpointIndependent(SocketAddr),
    /// The servers saw different addresses: a symmetric NAT, which gives every destination its
    /// own mapping, so the address one server saw is useless to a peer.
    EndpointDependent {
        first: SocketAddr,
        second: SocketAddr,
    },
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

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
fn respond(datagram: &[u8], source: SocketAddr) -> Result<Vec<u8>, &'static str> {
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

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Asks the STUN server `server` which address it sees `socket`'s packets come from.
///
/// The Binding request is retransmitted as RFC 8489 section 6.2.1 says (after 0.5 s, then
/// twice as long each time), but the whole exchange ends after `timeout`. Only a response from
/// `server`'s address with the request's transaction id counts; other datagrams arriving on
/// the socket meanwhile are consumed and dropped, so nothing else should read from it.
/// XOR-MAPPED-ADDRESS is preferred to MAPPED-ADDRESS when the response has both.
pub async fn binding(
    socket: &UdpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, StunError> {
    let id: [u8; 12] = rand::random();
    let request = binding_request(&id);
    let deadline = Instant::now() + timeout;
    let mut rto = INITIAL_RTO;
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    for send in 1..=MAX_SENDS {
        socket
            .send_to(&request, server)
            .await
            .map_err(|source| StunError::Io { server, source })?;
        let wait = if send == MAX_SENDS {
            INITIAL_RTO * LAST_WAIT_RTOS
        } else {
            rto
        };
        rto *= 2;
        let until = (Instant::now() + wait).min(deadline);
        if let Some(result) = receive_response(socket, server, &id, until, &mut buf).await {
            return result;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(StunError::Timeout { server, timeout })
}

/// Waits until `until` for the response to transaction `id` from `server`.
async fn receive_response(
    socket: &UdpSocket,
    server: SocketAddr,
    id: &[u8; 12],
    until: Instant,
    buf: &mut [u8],
) -> Option<Result<SocketAddr, StunError>> {
    loop {
        let (len, from) = match tokio::time::timeout_at(until, socket.recv_from(buf)).await {
            Err(_elapsed) => return None,
            Ok(Ok(received)) => received,
            // An ICMP error, reported on some systems: the retransmissions will tell.
            Ok(Err(error))
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue;
            }
            Ok(Err(source)) => return Some(Err(StunError::Io { server, source })),
        };
        if !same_endpoint(from, server) {
            debug!(%from, %server, "datagram from elsewhere while waiting for STUN, dropped");
            continue;
        }
        if let Some(result) = buf.get(..len).and_then(|d| read_response(d, id, server)) {
            return Some(result);
        }
    }
}

/// A 20-byte header and SOFTWARE, which RFC 8489 asks clients to send.
fn binding_request(id: &[u8; 12]) -> Vec<u8> {
    let mut full_id = [0u8; 16];
    full_id[..4].copy_from_slice(&MAGIC_COOKIE);
    full_id[4..].copy_from_slice(id);
    let mut request = Writer::new(BINDING_REQUEST, &full_id);
    request.attribute(SOFTWARE, SOFTWARE_NAME.as_bytes());
    request.finish()
}

/// The outcome carried by `datagram` if it is a response to our transaction `id`; `None` for
/// anything else, which the caller ignores.
fn read_response(
    datagram: &[u8],
    id: &[u8; 12],
    server: SocketAddr,
) -> Option<Result<SocketAddr, StunError>> {
    let message = parse(datagram).ok()?;
    if message.id[..4] != MAGIC_COOKIE || message.id[4..] != id[..] {
        return None;
    }
    match message.kind {
        BINDING_SUCCESS => {
            Some(mapped_address(&message).map_err(|reason| StunError::Malformed { server, reason }))
        }
        BINDING_ERROR => Some(Err(error_response(&message, server))),
        _ => None,
    }
}

/// The address in a success response.
fn mapped_address(message: &Message<'_>) -> Result<SocketAddr, &'static str> {
    let mut xor = None;
    let mut plain = None;
    for (kind, value) in message.attributes() {
        match kind {
            XOR_MAPPED_ADDRESS => {
                xor =
                    Some(decode_address(value, Some(&message.id)).ok_or("bad XOR-MAPPED-ADDRESS")?);
            }
            MAPPED_ADDRESS => {
                plain = Some(decode_address(value, None).ok_or("bad MAPPED-ADDRESS")?);
            }
            // Servers that also speak RFC 3489 or RFC 5780, or authenticate, add these; none
            // changes the meaning of the mapped address.
            SOURCE_ADDRESS | CHANGED_ADDRESS | MESSAGE_INTEGRITY | MESSAGE_INTEGRITY_SHA256 => {}
            kind if kind < COMPREHENSION_OPTIONAL => {
                return Err("unknown comprehension-required attribute");
            }
            _ => {}
        }
    }
    xor.or(plain).ok_or("no mapped address")
}

/// The error an error response reports.
fn error_response(message: &Message<'_>, server: SocketAddr) -> StunError {
    let value = message
        .attributes()
        .find(|&(kind, _)| kind == ERROR_CODE)
        .map(|(_, value)| value);
    let Some([_, _, class, number, reason @ ..]) = value else {
        return StunError::Malformed {
            server,
            reason: "error response without a valid ERROR-CODE",
        };
    };
    let (class, number) = (class & 0x07, *number);
    if !(3..=6).contains(&class) || number > 99 {
        return StunError::Malformed {
            server,
            reason: "ERROR-CODE out of range",
        };
    }
    // The server's words, shown to a person: printable and short.
    let reason = String::from_utf8_lossy(reason)
        .chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    StunError::ErrorResponse {
        server,
        code: u16::from(class) * 100 + u16::from(number),
        reason,
    }
}

/// Asks two STUN servers at different addresses, from the same `socket`, which address they
/// see, and compares.
///
/// `servers` are tried in order until two have answered, each within `timeout`; after the
/// first answer, a server on another IP address than the first is preferred, since only
/// then does a NAT that maps per destination address (not only per port) show. With servers
/// on a single IP such a NAT looks endpoint-independent.
pub async fn mapping_behaviour(
    socket: &UdpSocket,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<Mapping, StunError> {
    let mut remaining: Vec<SocketAddr> = Vec::new();
    for &server in servers {
        if !remaining.iter().any(|&s| same_endpoint(s, server)) {
            remaining.push(server);
        }
    }
    let given = remaining.len();
    if given < 2 {
        return Err(StunError::NotEnoughServers { given });
    }
    let mut answers: Vec<(SocketAddr, SocketAddr)> = Vec::with_capacity(2);
    let mut last_error = None;
    while answers.len() < 2 && !remaining.is_empty() {
        let index = match answers.first() {
            Some((asked, _)) => remaining
                .iter()
                .position(|s| s.ip().to_canonical() != asked.ip().to_canonical())
                .unwrap_or(0),
            None => 0,
        };
        let server = remaining.remove(index);
        match binding(socket, server, timeout).await {
            Ok(mapped) => answers.push((server, mapped)),
            Err(error) => {
                debug!(%error, "STUN server did not give a mapping, trying the next");
                last_error = Some(error);
            }
        }
    }
    match answers[..] {
        [(server, first), (_, second)] => {
            Ok(classify(first, second, local_endpoint(socket, server)))
        }
        _ => Err(last_error.unwrap_or(StunError::NotEnoughServers { given })),
    }
}

fn classify(first: SocketAddr, second: SocketAddr, local: Option<SocketAddr>) -> Mapping {
    if !same_endpoint(first, second) {
        Mapping::EndpointDependent { first, second }
    } else if local.is_some_and(|local| same_endpoint(local, first)) {
        Mapping::NotNatted
    } else {
        Mapping::EndpointIndependent(first)
    }
}

/// The address `socket`'s packets to `toward` leave from. For a socket bound to the wildcard
/// address, the kernel's choice of source address for that destination, found by connecting a
/// second socket (which sends nothing).
pub(crate) fn local_endpoint(socket: &UdpSocket, toward: SocketAddr) -> Option<SocketAddr> {
    let local = socket.local_addr().ok()?;
    if !local.ip().is_unspecified() {
        return Some(local);
    }
    let wildcard: SocketAddr = if toward.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(wildcard).ok()?;
    probe.connect(toward).ok()?;
    Some(SocketAddr::new(probe.local_addr().ok()?.ip(), local.port()))
}

/// Equal addresses, counting an IPv4-mapped IPv6 address as the IPv4 address.
pub(crate) fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

// ---------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------

/// A datagram that passed the checks of RFC 8489 section 6: a STUN header whose length matches
/// the datagram, attributes that fill it exactly, a FINGERPRINT (if any) last and correct.
#[derive(Debug, Clone, Copy)]
struct Message<'a> {
    kind: u16,
    /// Magic cookie and 96-bit transaction id, as a response echoes them; for an RFC 3489
    /// message, its 128-bit transaction id.
    id: [u8; 16],
    attributes: &'a [u8],
}

impl<'a> Message<'a> {
    fn is_rfc3489(&self) -> bool {
        self.id[..4] != MAGIC_COOKIE
    }

    fn attributes(&self) -> Attributes<'a> {
        Attributes(self.attributes)
    }
}

fn parse(datagram: &[u8]) -> Result<Message<'_>, &'static str> {
    let Some((header, body)) = datagram.split_first_chunk::<HEADER_LEN>() else {
        return Err("shorter than a STUN header");
    };
    let kind = u16::from_be_bytes([header[0], header[1]]);
    if kind & 0xC000 != 0 {
        return Err("not STUN: the first two bits are not zero");
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if length % 4 != 0 {
        return Err("message length not a multiple of 4");
    }
    if length != body.len() {
        return Err("message length does not match the datagram");
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&header[4..]);

    let mut rest = body;
    while !rest.is_empty() {
        let Some((kind, value, next)) = split_attribute(rest) else {
            return Err("truncated attribute");
        };
        if kind == FINGERPRINT {
            if !next.is_empty() {
                return Err("FINGERPRINT is not the last attribute");
            }
            let covered = &datagram[..datagram.len() - rest.len()];
            if value != (crc32(covered) ^ FINGERPRINT_XOR).to_be_bytes() {
                return Err("wrong FINGERPRINT");
            }
        }
        rest = next;
    }
    Ok(Message {
        kind,
        id,
        attributes: body,
    })
}

/// The first attribute of `buf`: its type, its value and what follows its padding.
fn split_attribute(buf: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    let (&[t0, t1, l0, l1], after) = buf.split_first_chunk::<4>()?;
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let value = after.get(..len)?;
    let rest = after.get(padded(len)..)?;
    Some((u16::from_be_bytes([t0, t1]), value, rest))
}

/// Attributes of a parsed message, in order.
struct Attributes<'a>(&'a [u8]);

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (kind, value, rest) = split_attribute(self.0)?;
        self.0 = rest;
        Some((kind, value))
    }
}

/// Builds a message.
struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u16, id: &[u8; 16]) -> Self {
        let mut buf = Vec::with_capacity(MAX_RESPONSE);
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(id);
        Writer(buf)
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(value.len()).expect("attributes we write are short");
        self.0.extend_from_slice(&kind.to_be_bytes());
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(value);
        self.0
            .resize(self.0.len() + padded(value.len()) - value.len(), 0);
    }

    /// UNKNOWN-ATTRIBUTES, padded by repeating the last type, as RFC 3489 required (RFC 8489
    /// lets the padding be anything).
    fn unknown_attributes(&mut self, kinds: &[u16]) {
        let len = u16::try_from(2 * kinds.len()).expect("at most MAX_UNKNOWN types");
        self.0.extend_from_slice(&UNKNOWN_ATTRIBUTES.to_be_bytes());
        self.0.extend_from_slice(&len.to_be_bytes());
        for kind in kinds {
            self.0.extend_from_slice(&kind.to_be_bytes());
        }
        if kinds.len() % 2 == 1
            && let Some(last) = kinds.last()
        {
            self.0.extend_from_slice(&last.to_be_bytes());
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u16::try_from(self.0.len() - HEADER_LEN).expect("messages we write are short");
        self.0[2..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// The value of MAPPED-ADDRESS, or of XOR-MAPPED-ADDRESS when given the message's cookie and
/// transaction id to XOR with.
fn encode_address(addr: SocketAddr, xor: Option<&[u8; 16]>) -> Vec<u8> {
    let (family, mut ip) = match addr.ip() {
        IpAddr::V4(ip) => (1, ip.octets().to_vec()),
        IpAddr::V6(ip) => (2, ip.octets().to_vec()),
    };
    let mut port = addr.port().to_be_bytes();
    if let Some(key) = xor {
        port.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
        ip.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
    }
    let mut value = vec![0, family];
    value.extend_from_slice(&port);
    value.extend_from_slice(&ip);
    value
}

fn decode_address(value: &[u8], xor: Option<&[u8; 16]>) -> Option<SocketAddr> {
    let (&[_, family, p0, p1], ip) = value.split_first_chunk::<4>()?;
    let mut port = [p0, p1];
    let mut ip: Vec<u8> = ip.to_vec();
    if let Some(key) = xor {
        port.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
        ip.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
    }
    let ip = match (
        family,
        <[u8; 4]>::try_from(&ip[..]),
        <[u8; 16]>::try_from(&ip[..]),
    ) {
        (1, Ok(v4), _) => IpAddr::from(v4),
        (2, _, Ok(v6)) => IpAddr::from(v6),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

fn encode_error(code: u16, reason: &str) -> Vec<u8> {
    let class = u8::try_from(code / 100).expect("error codes are 300..=699");
    let number = u8::try_from(code % 100).expect("below 100");
    let mut value = vec![0, 0, class, number];
    value.extend_from_slice(reason.as_bytes());
    value
}

/// `len` rounded up to a multiple of 4.
const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// CRC-32 (ISO-HDLC, as zlib computes it), which FINGERPRINT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{Rng, SeedableRng, rngs::StdRng};

    const V4_SOURCE: &str = "192.0.2.1:32853";
    const V6_SOURCE: &str = "[2001:db8:1234:5678:11:2233:4455:6677]:32853";
    /// The transaction id of the RFC 5769 test vectors.
    const VECTOR_ID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    /// Attributes to put in a test message: type and value.
    type AttributeList<'a> = &'a [(u16, &'a [u8])];

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// RFC 5769 section 2.1: a Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED,
    /// USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
    fn rfc5769_request() -> Vec<u8> {
        hex("0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
             8022 0010 5354554e 20746573 7420636c 69656e74
             0024 0004 6e0001ff
             8029 0008 932ff9b1 51263b36
             0006 0009 6576746a 3a683676 59202020
             0008 0014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
             8028 0004 e57a3bcf")
    }

    /// RFC 5769 section 2.2: a success response for 192.0.2.1:32853.
    fn rfc5769_response_v4() -> Vec<u8> {
        hex("0101 003c 2112a442 b7e7a701 bc34d686 fa87dfae
             8022 000b 74657374 20766563 746f7220
             0020 0008 0001a147 e112a643
             0008 0014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
             8028 0004 c07d4c96")
    }

    fn request(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&MAGIC_COOKIE);
        id[4..].copy_from_slice(&VECTOR_ID);
        let mut writer = Writer::new(BINDING_REQUEST, &id);
        for &(kind, value) in attributes {
            writer.attribute(kind, value);
        }
        writer.finish()
    }

    fn attribute<'a>(message: &Message<'a>, kind: u16) -> Option<&'a [u8]> {
        message
            .attributes()
            .find(|&(k, _)| k == kind)
            .map(|(_, v)| v)
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn rfc5769_vectors_parse_and_fingerprints_check() {
        let request = rfc5769_request();
        let message = parse(&request).unwrap();
        assert_eq!(message.kind, BINDING_REQUEST);
        assert!(!message.is_rfc3489());
        assert_eq!(message.attributes().count(), 6);

        let response = rfc5769_response_v4();
        assert_eq!(
            read_response(&response, &VECTOR_ID, V4_SOURCE.parse().unwrap())
                .unwrap()
                .unwrap(),
            V4_SOURCE.parse::<SocketAddr>().unwrap()
        );
        // Not our transaction: ignored.
        assert!(read_response(&response, &[0; 12], V4_SOURCE.parse().unwrap()).is_none());

        // One bit changed anywhere before the FINGERPRINT: dropped.
        let mut corrupt = rfc5769_request();
        corrupt[30] ^= 0x01;
        assert_eq!(parse(&corrupt).unwrap_err(), "wrong FINGERPRINT");
    }

    #[test]
    fn xor_mapped_address_v4_and_v6_match_rfc5769() {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&MAGIC_COOKIE);
        id[4..].copy_from_slice(&VECTOR_ID);
        let v4: SocketAddr = V4_SOURCE.parse().unwrap();
        assert_eq!(encode_address(v4, Some(&id)), hex("0001a147 e112a643"));
        // RFC 5769 section 2.3.
        let v6: SocketAddr = V6_SOURCE.parse().unwrap();
        let value = hex("0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9");
        assert_eq!(encode_address(v6, Some(&id)), value);
        assert_eq!(decode_address(&value, Some(&id)), Some(v6));
        assert_eq!(decode_address(&encode_address(v6, None), None), Some(v6));
        // A family that does not fit its length.
        assert_eq!(
            decode_address(&hex("0001a147 0113a9fa a5d3f179"), None),
            None
        );
        assert_eq!(decode_address(&hex("0003a147 e112a643"), None), None);
        assert_eq!(decode_address(&hex("0001a1"), None), None);
    }

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
    fn our_request_is_answered() {
        let id = [7u8; 12];
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        let reply = respond(&binding_request(&id), source).unwrap();
        assert_eq!(read_response(&reply, &id, source).unwrap().unwrap(), source);
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
    fn random_and_truncated_datagrams_never_panic_nor_get_replies() {
        let mut rng = StdRng::seed_from_u64(0x5354_554E);
        let source: SocketAddr = V6_SOURCE.parse().unwrap();
        let mut buf = vec![0u8; 600];
        for _ in 0..20_000 {
            let len = rng.random_range(0..buf.len());
            rng.fill(&mut buf[..len]);
            // Half of them look like STUN at first sight, to get past the header checks.
            if len >= HEADER_LEN && rng.random_bool(0.5) {
                buf[0] &= 0x3F;
                buf[2..4].copy_from_slice(&u16::try_from(len - HEADER_LEN).unwrap().to_be_bytes());
                buf[4..8].copy_from_slice(&MAGIC_COOKIE);
            }
            assert!(respond(&buf[..len], source).is_err());
            assert!(read_response(&buf[..len], &VECTOR_ID, source).is_none());
        }

        let valid = [
            rfc5769_request(),
            request(&[(SOFTWARE, b"abc"), (0x8030, &[1, 2, 3, 4, 5])]),
        ];
        for datagram in &valid {
            for cut in 0..datagram.len() {
                assert!(respond(&datagram[..cut], source).is_err(), "cut at {cut}");
            }
            // Bit flips: some still make a valid request; a reply is never large.
            for _ in 0..5_000 {
                let mut mutated = datagram.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..mutated.len());
                    mutated[i] ^= 1 << rng.random_range(0..8);
                }
                if let Ok(reply) = respond(&mutated, source) {
                    assert!(reply.len() <= MAX_RESPONSE);
                }
                let _ = read_response(&mutated, &VECTOR_ID, source);
            }
        }
        let response = rfc5769_response_v4();
        for cut in 0..response.len() {
            assert!(read_response(&response[..cut], &VECTOR_ID, source).is_none());
        }
    }

    #[test]
    fn responses_without_a_usable_address_are_malformed() {
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&MAGIC_COOKIE);
        id[4..].copy_from_slice(&VECTOR_ID);
        let cases: [(AttributeList, &str); 4] = [
            (&[(SOFTWARE, b"x")], "no mapped address"),
            (
                &[(XOR_MAPPED_ADDRESS, &[0, 1, 2])],
                "bad XOR-MAPPED-ADDRESS",
            ),
            (
                &[
                    (MAPPED_ADDRESS, &[0, 1, 0, 80, 192, 0, 2, 1]),
                    (0x0024, &[]),
                ],
                "unknown comprehension-required attribute",
            ),
            (
                &[(MAPPED_ADDRESS, &[0, 9, 0, 80, 192, 0, 2, 1])],
                "bad MAPPED-ADDRESS",
            ),
        ];
        for (attributes, expected) in cases {
            let mut writer = Writer::new(BINDING_SUCCESS, &id);
            for &(kind, value) in attributes {
                writer.attribute(kind, value);
            }
            match read_response(&writer.finish(), &VECTOR_ID, source) {
                Some(Err(StunError::Malformed { reason, .. })) => assert_eq!(reason, expected),
                other => panic!("{other:?}"),
            }
        }
        // MAPPED-ADDRESS alone does.
        let mut writer = Writer::new(BINDING_SUCCESS, &id);
        writer.attribute(MAPPED_ADDRESS, &[0, 1, 0, 80, 192, 0, 2, 1]);
        assert_eq!(
            read_response(&writer.finish(), &VECTOR_ID, source)
                .unwrap()
                .unwrap(),
            "192.0.2.1:80".parse().unwrap()
        );
        // An error response with a hostile reason phrase.
        let mut writer = Writer::new(BINDING_ERROR, &id);
        writer.attribute(ERROR_CODE, &[0, 0, 5, 0, b'b', b'\x1b', b'[', b'2', b'J']);
        match read_response(&writer.finish(), &VECTOR_ID, source) {
            Some(Err(StunError::ErrorResponse {
                code: 500, reason, ..
            })) => {
                assert_eq!(reason, "b?[2J");
            }
            other => panic!("{other:?}"),
        }
        let mut writer = Writer::new(BINDING_ERROR, &id);
        writer.attribute(ERROR_CODE, &[0, 0, 9, 0]);
        assert!(matches!(
            read_response(&writer.finish(), &VECTOR_ID, source),
            Some(Err(StunError::Malformed { .. }))
        ));
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

    #[test]
    fn mapping_is_classified() {
        let a: SocketAddr = "203.0.113.5:40000".parse().unwrap();
        let b: SocketAddr = "203.0.113.5:40001".parse().unwrap();
        let local: SocketAddr = "192.168.1.10:40000".parse().unwrap();
        assert_eq!(classify(a, a, Some(local)), Mapping::EndpointIndependent(a));
        assert_eq!(classify(a, a, None), Mapping::EndpointIndependent(a));
        assert_eq!(
            classify(a, b, Some(local)),
            Mapping::EndpointDependent {
                first: a,
                second: b
            }
        );
        assert_eq!(classify(a, a, Some(a)), Mapping::NotNatted);
        let mapped_v6: SocketAddr = "[::ffff:203.0.113.5]:40000".parse().unwrap();
        assert_eq!(classify(a, mapped_v6, Some(a)), Mapping::NotNatted);
    }

    /// A fake server on loopback that answers each request it gets with what `answer` returns
    /// (nothing, or datagrams to send back from it or from a second socket).
    async fn fake_server<F>(answer: F) -> (SocketAddr, tokio::task::JoinHandle<Vec<[u8; 16]>>)
    where
        F: Fn(usize, &Message<'_>, SocketAddr) -> Vec<(bool, Vec<u8>)> + Send + 'static,
    {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut buf = [0u8; 1500];
            while let Ok(Ok((len, from))) =
                tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf)).await
            {
                let request = parse(&buf[..len]).unwrap();
                ids.push(request.id);
                let answers = answer(ids.len(), &request, from);
                for (from_other, datagram) in &answers {
                    let sender = if *from_other { &other } else { &socket };
                    sender.send_to(datagram, from).await.unwrap();
                }
                // The client is done once answered.
                if !answers.is_empty() {
                    break;
                }
            }
            ids
        });
        (addr, task)
    }

    fn success(id: &[u8; 16], mapped: SocketAddr) -> Vec<u8> {
        let mut writer = Writer::new(BINDING_SUCCESS, id);
        writer.attribute(XOR_MAPPED_ADDRESS, &encode_address(mapped, Some(id)));
        writer.finish()
    }

    #[tokio::test]
    async fn client_takes_only_its_transaction_from_its_server() {
        let decoy: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let real: SocketAddr = "198.51.100.2:2".parse().unwrap();
        let (server, task) = fake_server(move |_, request, _| {
            let mut wrong_id = request.id;
            wrong_id[15] ^= 1;
            vec![
                (true, success(&request.id, decoy)),
                (false, success(&wrong_id, decoy)),
                (false, b"junk".to_vec()),
                (false, success(&request.id, real)),
            ]
        })
        .await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mapped = binding(&socket, server, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(mapped, real);
        task.abort();
    }

    #[tokio::test]
    async fn client_retransmits_the_same_transaction() {
        let (server, task) = fake_server(|count, request, from| {
            if count < 2 {
                Vec::new()
            } else {
                vec![(false, success(&request.id, from))]
            }
        })
        .await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let mapped = binding(&socket, server, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(mapped, socket.local_addr().unwrap());
        assert!(started.elapsed() >= INITIAL_RTO);
        drop(socket);
        let ids = task.await.unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[0][..4], MAGIC_COOKIE);
    }

    #[tokio::test]
    async fn client_gives_up_at_its_timeout() {
        let (server, task) = fake_server(|_, _, _| Vec::new()).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let error = binding(&socket, server, Duration::from_millis(700))
            .await
            .unwrap_err();
        assert!(matches!(error, StunError::Timeout { .. }), "{error}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_millis(1500));
        task.abort();
    }

    #[tokio::test]
    async fn error_response_is_reported() {
        let (server, task) = fake_server(|_, request, _| {
            let mut writer = Writer::new(BINDING_ERROR, &request.id);
            writer.attribute(ERROR_CODE, &encode_error(500, "Server Error"));
            vec![(false, writer.finish())]
        })
        .await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let error = binding(&socket, server, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StunError::ErrorResponse { code: 500, reason, .. } if reason == "Server Error"),
            "{error}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn symmetric_nat_is_told_apart() {
        // Two servers that see different public ports, as behind a symmetric NAT.
        let (first, task1) = fake_server(|_, r, _| {
            vec![(false, success(&r.id, "203.0.113.5:1000".parse().unwrap()))]
        })
        .await;
        let (second, task2) = fake_server(|_, r, _| {
            vec![(false, success(&r.id, "203.0.113.5:1001".parse().unwrap()))]
        })
        .await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let timeout = Duration::from_secs(2);
        let mapping = mapping_behaviour(&socket, &[first, first, second], timeout)
            .await
            .unwrap();
        assert_eq!(
            mapping,
            Mapping::EndpointDependent {
                first: "203.0.113.5:1000".parse().unwrap(),
                second: "203.0.113.5:1001".parse().unwrap(),
            }
        );
        let error = mapping_behaviour(&socket, &[first, first], timeout)
            .await
            .unwrap_err();
        assert!(matches!(error, StunError::NotEnoughServers { given: 1 }));
        task1.abort();
        task2.abort();
    }
}
