//! One DNS exchange with one server: the query over UDP, then over TCP when the answer comes
//! back truncated (RFC 1035 section 4.2, RFC 7766 section 5). The forwarder asks its upstreams
//! through [`exchange`]; anything else that must ask a DNS server (a diagnostic probe) can too.

pub mod wire;

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};
use tracing::debug;

use self::wire::{WireError, decode_response, message_id};

/// Largest DNS message over UDP or TCP (a 16-bit length).
const MAX_MESSAGE: usize = 65_535;

/// A server's answer to one query.
#[derive(Debug)]
pub struct Exchanged {
    /// The decoded response ([`wire`]'s rules); it answers the query (same ID and question).
    pub message: Message,
    /// Its size on the wire, in bytes, plus what writing out compressed names in its RDATA
    /// added: at least about what it takes encoded again.
    pub wire_len: usize,
}

/// Why one exchange with one server gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No answer within the wait given for UDP or for the TCP retry.
    #[error("timed out")]
    Timeout,
    /// The socket could not be opened, or sending or receiving failed (no route, connection
    /// refused, reset, or a TCP connection closed before any answer).
    #[error("network error")]
    Io(#[from] io::Error),
    /// The query did not encode, or is too large for TCP's 16-bit length.
    #[error("the query does not encode")]
    Encode,
    /// The server answered (over UDP: a datagram with the query's ID), but not with a usable
    /// response to the query. The server is alive: this is no reason to rest it.
    #[error("malformed answer")]
    Malformed(#[source] Malformed),
}

/// How an answer that arrived fails to answer the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// QR=0: the server sent a query back (an echo), not a response.
    #[error("not a response (QR=0)")]
    NotAResponse,
    /// Over TCP, a response with another ID.
    #[error("a response with another ID")]
    OtherId,
    /// A response to another question (RFC 5452 section 9.1), or with no question although it
    /// is not an error.
    #[error("a response to another question")]
    OtherQuestion,
    /// The TCP connection closed in the middle of the answer.
    #[error("the TCP answer was cut short")]
    CutShort,
    /// The response does not decode.
    #[error("the response does not decode")]
    Undecodable(#[source] WireError),
}

/// Sends `query` to `server` over UDP and waits up to `udp_wait` for its answer; a truncated
/// answer (TC=1) is asked again over TCP, waiting up to `tcp_wait`. Datagrams with another ID
/// (late or spoofed) are ignored; the first one with the query's ID is the answer, usable or
/// not.
///
/// # Errors
/// [`ExchangeError`]: no answer in time, a network error, or an answer that is malformed.
pub async fn exchange(
    server: SocketAddr,
    query: &Message,
    udp_wait: Duration,
    tcp_wait: Duration,
) -> Result<Exchanged, ExchangeError> {
    let wire = query.to_vec().map_err(|_| ExchangeError::Encode)?;
    let answer = timeout(udp_wait, over_udp(server, &wire, query))
        .await
        .map_err(|_| ExchangeError::Timeout)??;
    if !answer.message.metadata.truncation {
        return Ok(answer);
    }
    debug!(%server, "truncated answer, retrying over TCP");
    timeout(tcp_wait, over_tcp(server, &wire, query))
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

/// Does `response` answer `query`: a response with its ID and its one question? An error
/// response may come without the question (servers that cannot parse a query cannot copy it).
fn check(response: &Message, query: &Message) -> Result<(), Malformed> {
    if response.metadata.id != query.metadata.id {
        return Err(Malformed::OtherId);
    }
    if response.metadata.message_type != MessageType::Response {
        return Err(Malformed::NotAResponse);
    }
    let asked = query.queries.first();
    match (asked, response.queries.as_slice()) {
        (Some(asked), [question])
            if question.query_type() == asked.query_type()
                && question.query_class() == asked.query_class()
                && question.name() == asked.name() =>
        {
            Ok(())
        }
        (_, [])
            if matches!(
                response.metadata.response_code,
                ResponseCode::FormErr
                    | ResponseCode::NotImp
                    | ResponseCode::Refused
                    | ResponseCode::ServFail
            ) =>
        {
            Ok(())
        }
        _ => Err(Malformed::OtherQuestion),
    }
}

/// The answer in `bytes`, checked against `query`.
fn accept(bytes: &[u8], query: &Message) -> Result<Exchanged, ExchangeError> {
    let decoded = decode_response(bytes)
        .map_err(|error| ExchangeError::Malformed(Malformed::Undecodable(error)))?;
    check(&decoded.message, query).map_err(ExchangeError::Malformed)?;
    Ok(Exchanged {
        message: decoded.message,
        wire_len: bytes.len() + decoded.expanded_by,
    })
}

async fn over_udp(
    server: SocketAddr,
    wire: &[u8],
    query: &Message,
) -> Result<Exchanged, ExchangeError> {
    // A fresh socket per query gives every query its own random source port (RFC 5452).
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(wire).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let len = socket.recv(&mut buf).await?;
        let datagram = &buf[..len];
        if message_id(datagram) == Some(query.metadata.id) {
            return accept(datagram, query);
        }
        debug!(%server, "ignoring a datagram with another ID");
    }
}

async fn over_tcp(
    server: SocketAddr,
    wire: &[u8],
    query: &Message,
) -> Result<Exchanged, ExchangeError> {
    let len = u16::try_from(wire.len()).map_err(|_| ExchangeError::Encode)?;
    let mut stream = TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(wire);
    stream.write_all(&framed).await?;
    let len = usize::from(stream.read_u16().await?);
    let mut buf = vec![0u8; len];
    match stream.read_exact(&mut buf).await {
        Ok(_) => accept(&buf, query),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            Err(ExchangeError::Malformed(Malformed::CutShort))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::{OpCode, Query, ResponseCode},
        rr::{Name, RecordType},
    };

    fn query(name: &str) -> Message {
        let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        msg
    }

    #[test]
    fn only_a_response_to_the_same_question_and_id_answers() {
        let asked = query("www.example.");
        let mut reply = query("WWW.Example.");
        reply.metadata.message_type = MessageType::Response;
        assert_eq!(check(&reply, &asked), Ok(()), "names compare without case");
        reply.metadata.id = 8;
        assert_eq!(check(&reply, &asked), Err(Malformed::OtherId));
        let mut other = query("other.example.");
        other.metadata.message_type = MessageType::Response;
        assert_eq!(check(&other, &asked), Err(Malformed::OtherQuestion));
        assert_eq!(check(&asked, &asked), Err(Malformed::NotAResponse));
        // An error needs no question; an answer does.
        let mut formerr = Message::new(7, MessageType::Response, OpCode::Query);
        formerr.metadata.response_code = ResponseCode::FormErr;
        assert_eq!(check(&formerr, &asked), Ok(()));
        formerr.metadata.response_code = ResponseCode::NoError;
        assert_eq!(check(&formerr, &asked), Err(Malformed::OtherQuestion));
    }

    /// A UDP server on loopback that answers the first query with what `reply` makes of it.
    async fn udp_server(reply: impl FnOnce(&[u8]) -> Vec<Vec<u8>> + Send + 'static) -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            let (len, client) = udp.recv_from(&mut buf).await.unwrap();
            for datagram in reply(&buf[..len]) {
                udp.send_to(&datagram, client).await.unwrap();
            }
        });
        server
    }

    #[tokio::test]
    async fn an_answer_that_does_not_parse_is_malformed_at_once_not_a_timeout() {
        // First a datagram with another ID (ignored), then the query's ID with a cut record.
        let server = udp_server(|query| {
            let mut other = query.to_vec();
            other[0] ^= 0xff;
            let mut garbled = query.to_vec();
            garbled[2] |= 0x80;
            garbled[7] = 1; // one answer, which is not there
            vec![other, garbled]
        })
        .await;
        let wait = Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        let error = exchange(server, &query("www.example."), wait, wait)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                ExchangeError::Malformed(Malformed::Undecodable(WireError::Record { .. }))
            ),
            "{error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no wait for a timeout"
        );
        // A query sent back as it came (QR=0) is no answer either.
        let echo = udp_server(|query| vec![query.to_vec()]).await;
        let error = exchange(echo, &query("www.example."), wait, wait)
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            ExchangeError::Malformed(Malformed::NotAResponse)
        ));
    }

    /// A server on loopback that answers the first UDP query truncated, then the TCP query
    /// with the octets `tcp_answer` makes of it (length prefix included).
    async fn truncating_server(
        tcp_answer: impl FnOnce(&[u8]) -> Vec<u8> + Send + 'static,
    ) -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(server).await.unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            let (len, client) = udp.recv_from(&mut buf).await.unwrap();
            let mut reply = Message::from_vec(&buf[..len]).unwrap();
            reply.metadata.message_type = MessageType::Response;
            reply.metadata.truncation = true;
            udp.send_to(&reply.to_vec().unwrap(), client).await.unwrap();
            let (mut stream, _) = tcp.accept().await.unwrap();
            let len = usize::from(stream.read_u16().await.unwrap());
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await.unwrap();
            stream.write_all(&tcp_answer(&buf)).await.unwrap();
        });
        server
    }

    #[tokio::test]
    async fn a_tcp_answer_cut_short_is_malformed() {
        // Announces 100 octets and sends 20, then closes.
        let server = truncating_server(|query| [&[0, 100][..], &query[..20]].concat()).await;
        let wait = Duration::from_secs(5);
        let error = exchange(server, &query("www.example."), wait, wait)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ExchangeError::Malformed(Malformed::CutShort)),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
        let server = truncating_server(|query| {
            let mut reply = Message::from_vec(query).unwrap();
            reply.metadata.message_type = MessageType::Response;
            let wire = reply.to_vec().unwrap();
            [&u16::try_from(wire.len()).unwrap().to_be_bytes()[..], &wire].concat()
        })
        .await;
        let wait = Duration::from_secs(5);
        let answer = exchange(server, &query("www.example."), wait, wait)
            .await
            .unwrap();
        assert!(
            !answer.message.metadata.truncation,
            "the TCP answer is whole"
        );
        assert_eq!(answer.message.metadata.id, 7);
    }
}
