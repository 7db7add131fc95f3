//! One DNS exchange with one server: the query over UDP, then over TCP when the answer comes
//! back truncated (RFC 1035 section 4.2, RFC 7766 section 5). The forwarder asks its upstreams
//! through [`exchange`]; anything else that must ask a DNS server (a diagnostic probe) can too.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use hickory_proto::op::{Message, MessageType};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};
use tracing::debug;

/// Largest DNS message over UDP or TCP (a 16-bit length).
const MAX_MESSAGE: usize = 65_535;

/// A server's answer to one query.
#[derive(Debug)]
pub struct Exchanged {
    /// The decoded response; it answers the query (same ID and question).
    pub message: Message,
    /// Its size on the wire, in bytes.
    pub wire_len: usize,
}

/// Why one exchange with one server gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No answer within the wait given for UDP or for the TCP retry.
    #[error("timed out")]
    Timeout,
    /// The socket could not be opened, or sending or receiving failed (no route, connection
    /// refused, reset).
    #[error("network error")]
    Io(#[from] io::Error),
    /// The query did not encode, or is too large for TCP's 16-bit length.
    #[error("the query does not encode")]
    Encode,
    /// The TCP answer did not decode or does not answer the query.
    #[error("malformed answer over TCP")]
    Malformed,
}

/// Sends `query` to `server` over UDP and waits up to `udp_wait` for its answer; a truncated
/// answer (TC=1) is asked again over TCP, waiting up to `tcp_wait`. Datagrams that do not
/// answer `query` (another ID or question: late or spoofed) are ignored.
///
/// # Errors
/// [`ExchangeError`]: no answer in time, a network error, or a malformed TCP answer.
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

/// Does `response` answer `query`: a response with its ID and its one question?
fn answers(response: &Message, query: &Message) -> bool {
    let (Some(asked), [question]) = (query.queries.first(), response.queries.as_slice()) else {
        return false;
    };
    response.metadata.id == query.metadata.id
        && response.metadata.message_type == MessageType::Response
        && question.query_type() == asked.query_type()
        && question.name() == asked.name()
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
        match Message::from_vec(&buf[..len]) {
            Ok(message) if answers(&message, query) => {
                return Ok(Exchanged {
                    message,
                    wire_len: len,
                });
            }
            _ => debug!(%server, "ignoring a datagram that does not answer our query"),
        }
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
    stream.read_exact(&mut buf).await?;
    match Message::from_vec(&buf) {
        Ok(message) if answers(&message, query) => Ok(Exchanged {
            message,
            wire_len: len,
        }),
        _ => Err(ExchangeError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::{OpCode, Query},
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
        assert!(answers(&reply, &asked), "names compare without case");
        reply.metadata.id = 8;
        assert!(!answers(&reply, &asked), "another ID");
        let mut other = query("other.example.");
        other.metadata.message_type = MessageType::Response;
        assert!(!answers(&other, &asked), "another question");
        assert!(!answers(&asked, &asked), "a query is no answer");
    }

    #[tokio::test]
    async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
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
            let mut reply = Message::from_vec(&buf).unwrap();
            reply.metadata.message_type = MessageType::Response;
            let wire = reply.to_vec().unwrap();
            stream.write_u16(wire.len() as u16).await.unwrap();
            stream.write_all(&wire).await.unwrap();
        });
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
