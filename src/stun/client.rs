//! The client role: [`binding`] asks one server for the mapped address, retransmitting as
//! RFC 8489 section 6.2.1 says; [`mapping_behaviour`] asks two and compares (RFC 4787 mapping
//! behaviour), which tells whether a NAT on the way keeps one public port for every
//! destination (hole punching can work) or not (a symmetric NAT).

use std::{
    io,
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{net::UdpSocket, time::Instant};
use tracing::debug;

use super::message::{
    BINDING_ERROR, BINDING_REQUEST, BINDING_SUCCESS, CHANGED_ADDRESS, COMPREHENSION_OPTIONAL,
    ERROR_CODE, MAGIC_COOKIE, MAPPED_ADDRESS, MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, Message,
    SOFTWARE, SOFTWARE_NAME, SOURCE_ADDRESS, Writer, XOR_MAPPED_ADDRESS, decode_address, parse,
};

/// Room for a response from any server, ours or not.
const RECEIVE_BUFFER: usize = 2048;

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
        /// The server asked.
        server: SocketAddr,
        /// The whole exchange's budget that ran out.
        timeout: Duration,
    },
    /// Sending the request or receiving on the socket failed.
    #[error("STUN binding request to {server} failed")]
    Io {
        /// The server asked.
        server: SocketAddr,
        /// The socket's error (unreachable network, closed socket...).
        #[source]
        source: io::Error,
    },
    /// The server answered our transaction with a response that does not give an address:
    /// none in it, an address attribute that does not decode, or an attribute that RFC 8489
    /// says a client must understand and this one does not; or with an error response whose
    /// ERROR-CODE is missing or out of range.
    #[error("malformed STUN binding response from {server}: {reason}")]
    Malformed {
        /// The server that answered.
        server: SocketAddr,
        /// What was wrong, such as `"bad XOR-MAPPED-ADDRESS"` or `"ERROR-CODE out of range"`.
        reason: &'static str,
    },
    /// The server answered with an error response.
    #[error("STUN server {server} refused the binding request: error {code} {reason:?}")]
    ErrorResponse {
        /// The server that answered.
        server: SocketAddr,
        /// The ERROR-CODE attribute's number, class times 100 plus number (RFC 8489 section
        /// 14.8), such as 400 or 500.
        code: u16,
        /// The ERROR-CODE attribute's reason phrase, as sent.
        reason: String,
    },
    /// [`mapping_behaviour`] needs two servers at different addresses.
    #[error("telling NAT mapping behaviour needs two distinct STUN servers, {given} given")]
    NotEnoughServers {
        /// Distinct server addresses given.
        given: usize,
    },
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
        /// The public address the first server saw.
        first: SocketAddr,
        /// The public address the second server (at another IP address) saw.
        second: SocketAddr,
    },
}

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
pub(super) fn binding_request(id: &[u8; 12]) -> Vec<u8> {
    let mut full_id = [0u8; 16];
    full_id[..4].copy_from_slice(&MAGIC_COOKIE);
    full_id[4..].copy_from_slice(id);
    let mut request = Writer::new(BINDING_REQUEST, &full_id);
    request.attribute(SOFTWARE, SOFTWARE_NAME.as_bytes());
    request.finish()
}

/// The outcome carried by `datagram` if it is a response to our transaction `id`; `None` for
/// anything else, which the caller ignores.
pub(crate) fn read_response(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{message::*, test_vectors::*};

    #[test]
    fn rfc5769_response_gives_its_address_to_its_transaction_only() {
        let response = rfc5769_response_v4();
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        assert_eq!(
            read_response(&response, &VECTOR_ID, source)
                .unwrap()
                .unwrap(),
            source
        );
        // Not our transaction: ignored.
        assert!(read_response(&response, &[0; 12], source).is_none());
    }

    #[test]
    fn responses_without_a_usable_address_are_malformed() {
        let source: SocketAddr = V4_SOURCE.parse().unwrap();
        let id = vector_header_id();
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
        let started = Instant::now();
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
        let started = Instant::now();
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
