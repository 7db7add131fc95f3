//! One DNS exchange with one server: the query over UDP, then over TCP when the answer comes
//! back truncated (RFC 1035 section 4.2, RFC 7766 section 5). The forwarder's hedged tries
//! (`super::upstream`) drive [`UdpTry`]s and their TCP follow-ups themselves; anything else
//! that must ask a DNS server (a loop probe) calls [`exchange`].
//!
//! Over UDP a datagram is the answer only if it matches the query as RFC 5452 section 9.1
//! says: it comes from the server's address and port (the socket is connected, so the kernel
//! drops any other), carries the query's ID, is a response (QR=1) and repeats the question.
//! Anything else is ignored and the socket keeps listening (RFC 1035 section 7.3): a spoofer
//! must not be able to end a query by sending junk, nor an upstream that sends junk before its
//! answer lose that answer. A datagram that does match but whose records do not parse is the
//! answer, malformed.

pub mod wire;

use std::{
    cell::RefCell,
    future::{Future, poll_fn},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use hickory_proto::{
    op::{Header, Message, MessageType, Metadata, Query, ResponseCode},
    serialize::binary::{BinDecodable, BinDecoder},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{TcpStream, UdpSocket},
    time::timeout,
};
use tracing::debug;

use self::wire::{WireError, decode_response, message_id};

/// Largest DNS message over UDP or TCP (a 16-bit length): the size of the buffer a
/// [`UdpTry`] receives into.
pub const MAX_MESSAGE: usize = 65_535;

thread_local! {
    /// The buffer every [`UdpTry`] polled on this thread receives into. A datagram is read
    /// and sorted within one poll, so one buffer per thread does: one per question waiting
    /// on an upstream was 64 KiB each, 64 MiB at `dns.max_inflight` (1,024) questions, the
    /// bulk of the daemon's peak under a flood of uncached names.
    static RECEIVED: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_MESSAGE]);
}

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
    /// Sending or receiving failed (no route, connection refused, reset, or a TCP connection
    /// closed before any answer), or the socket could not be opened for another reason than
    /// [`ExchangeError::LocalResources`].
    #[error("network error")]
    Io(#[source] io::Error),
    /// This machine is out of descriptors or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM): the
    /// query never reached the server, which is no reason to doubt the server.
    #[error("out of local sockets or buffers")]
    LocalResources(#[source] io::Error),
    /// The query did not encode, or is too large for TCP's 16-bit length.
    #[error("the query does not encode")]
    Encode,
    /// The server answered, but not with a usable response to the query: over UDP a datagram
    /// that matches the query but does not decode, or (only when nothing better came within
    /// the wait) datagrams with the query's ID that do not answer it; over TCP any response
    /// that does not decode or answer. The server is alive: this is no reason to rest it.
    #[error("malformed answer")]
    Malformed(#[source] Malformed),
}

impl From<io::Error> for ExchangeError {
    fn from(error: io::Error) -> Self {
        if is_local_shortage(&error) {
            Self::LocalResources(error)
        } else {
            Self::Io(error)
        }
    }
}

/// Is `error` this machine running out of descriptors or buffers (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM) rather than anything a peer did?
pub fn is_local_shortage(error: &io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
            .contains(&Errno::from_raw(code))
    })
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
    /// The answer over TCP has TC=1 too: the whole answer is not to be had (RFC 7766
    /// section 8 leaves nothing to fall back to).
    #[error("the answer over TCP is truncated too")]
    TruncatedOverTcp,
    /// The TCP connection closed in the middle of the answer.
    #[error("the TCP answer was cut short")]
    CutShort,
    /// The response does not decode.
    #[error("the response does not decode")]
    Undecodable(#[source] WireError),
}

/// The TCP follow-up of a truncated UDP answer, polled to its end.
pub type TcpTry = Pin<Box<dyn Future<Output = Result<Exchanged, ExchangeError>> + Send>>;

/// Waits until a socket is readable or has a pending error.
type Readiness = Pin<Box<dyn Future<Output = io::Result<tokio::io::Ready>> + Send>>;

/// One query sent over UDP from a socket of its own, listening for its answer until dropped.
/// Polling it is cancel-safe: it may be polled alongside other tries and dropped at any time.
pub struct UdpTry {
    server: SocketAddr,
    socket: Arc<UdpSocket>,
    /// Readable, or an error queued on the socket: an ICMP "port unreachable" sets only
    /// EPOLLERR, which a plain receive never wakes for.
    readiness: Readiness,
    query: Message,
    wire: Vec<u8>,
    /// What the first datagram with the query's ID that could not be its answer was.
    junk: Option<Malformed>,
}

impl UdpTry {
    /// Sends `query` to `server` from a fresh socket: every try gets its own random source
    /// port (RFC 5452 section 10), and the socket is connected, so datagrams from any other
    /// address or port never reach it.
    ///
    /// # Errors
    /// [`ExchangeError::Encode`] or [`ExchangeError::Io`].
    pub fn send(server: SocketAddr, query: Message) -> Result<Self, ExchangeError> {
        let wire = query.to_vec().map_err(|_| ExchangeError::Encode)?;
        let socket = fresh_socket(server)?;
        // A fresh socket's send buffer is empty: the datagram goes at once or not at all
        // (sent before tokio takes the socket, which knows no readiness yet).
        socket.send(&wire)?;
        let socket = Arc::new(UdpSocket::from_std(socket.into())?);
        Ok(Self {
            server,
            readiness: readiness(&socket),
            socket,
            query,
            wire,
            junk: None,
        })
    }

    /// Polls for the answer. Datagrams that do not match the query are skipped (those with
    /// its ID noted, see [`UdpTry::junk`]). The answer may be truncated (TC=1): then ask
    /// again with [`UdpTry::into_tcp`].
    ///
    /// # Errors
    /// [`ExchangeError::Malformed`] for a matching datagram that does not decode;
    /// [`ExchangeError::Io`] when receiving fails (an ICMP port unreachable, for one).
    pub fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<Exchanged, ExchangeError>> {
        loop {
            let ready = ready!(self.readiness.as_mut().poll(cx))?;
            self.readiness = readiness(&self.socket);
            if ready.is_error() {
                if let Some(error) = self.socket.take_error()? {
                    // ECONNREFUSED from an ICMP port unreachable: nobody serves DNS there.
                    return Poll::Ready(Err(error.into()));
                }
                // Taken already: forget the error readiness, or it would wake us forever.
                let _ = self.socket.try_io(Interest::ERROR, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            let received = RECEIVED.with_borrow_mut(|buf| {
                let len = self.socket.try_recv(buf)?;
                Ok::<_, io::Error>(sort(&buf[..len], &self.query))
            });
            let datagram = match received {
                Ok(datagram) => datagram,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error.into())),
            };
            match datagram {
                Datagram::Answer(answer) => return Poll::Ready(answer),
                Datagram::Junk(why) => {
                    debug!(server = %self.server, %why, "ignoring a datagram that does not answer the query");
                    self.junk.get_or_insert(why);
                }
                Datagram::Stray => {
                    debug!(server = %self.server, "ignoring a datagram with another ID");
                }
            }
        }
    }

    /// Why the datagrams with the query's ID that came so far were not its answer (the
    /// first one's reason), if any came.
    pub fn junk(&self) -> Option<Malformed> {
        self.junk
    }

    /// The query asked again over TCP, after a truncated answer; the UDP socket is closed.
    pub fn into_tcp(self) -> TcpTry {
        let Self {
            server,
            query,
            wire,
            ..
        } = self;
        Box::pin(async move { over_tcp(server, &wire, &query).await })
    }
}

/// A non-blocking UDP socket connected to `server`, from a port of its own: the kernel picks
/// it at random among the ephemeral ports when the socket connects unbound, as it would for a
/// bind to port 0 (RFC 5452 section 10), one system call fewer per try. Running out of ports
/// (EAGAIN from connect, EADDRINUSE) is this machine's shortage, like running out of
/// descriptors.
///
/// # Errors
/// The system call's error, [`ExchangeError::LocalResources`] for a shortage.
fn fresh_socket(server: SocketAddr) -> Result<socket2::Socket, ExchangeError> {
    use socket2::{Domain, Socket, Type};
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let kind = Type::DGRAM.nonblocking();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let kind = Type::DGRAM;
    let socket = Socket::new(Domain::for_address(server), kind, None)?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    socket.set_nonblocking(true)?;
    socket
        .connect(&server.into())
        .map_err(|error| match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::AddrInUse => {
                ExchangeError::LocalResources(error)
            }
            _ => error.into(),
        })?;
    Ok(socket)
}

/// The readiness future of `socket`: readable, or an error pending.
fn readiness(socket: &Arc<UdpSocket>) -> Readiness {
    let socket = Arc::clone(socket);
    Box::pin(async move { socket.ready(Interest::READABLE | Interest::ERROR).await })
}

/// Sends `query` to `server` over UDP and waits up to `udp_wait` for its answer; a truncated
/// answer (TC=1) is asked again over TCP, waiting up to `tcp_wait`. Datagrams that do not
/// answer the query are ignored (see the module); if only such datagrams with the query's ID
/// came, the answer is malformed rather than missing.
///
/// # Errors
/// [`ExchangeError`]: no answer in time, a network error, or an answer that is malformed.
pub async fn exchange(
    server: SocketAddr,
    query: &Message,
    udp_wait: Duration,
    tcp_wait: Duration,
) -> Result<Exchanged, ExchangeError> {
    let mut attempt = UdpTry::send(server, query.clone())?;
    let answer = match timeout(udp_wait, poll_fn(|cx| attempt.poll_answer(cx))).await {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(attempt
                .junk()
                .map_or(ExchangeError::Timeout, ExchangeError::Malformed));
        }
    };
    if !answer.message.metadata.truncation {
        return Ok(answer);
    }
    debug!(%server, "truncated answer, retrying over TCP");
    timeout(tcp_wait, attempt.into_tcp())
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

/// What a datagram that came to a try's socket is.
pub(crate) enum Datagram {
    /// The response to the query (it matches), decoded or malformed.
    Answer(Result<Exchanged, ExchangeError>),
    /// It has the query's ID but does not answer it.
    Junk(Malformed),
    /// It has another ID (or none): late for some other query, or spoofed.
    Stray,
}

/// Sorts `datagram` by RFC 5452 section 9.1's match against `query`: ID, then the header
/// and question, read without the record sections so that a response whose records do not
/// parse still counts as the answer.
pub(crate) fn sort(datagram: &[u8], query: &Message) -> Datagram {
    if message_id(datagram) != Some(query.metadata.id) {
        return Datagram::Stray;
    }
    let mut decoder = BinDecoder::new(datagram);
    let Ok(Header { metadata, counts }) = Header::read(&mut decoder) else {
        return Datagram::Junk(Malformed::Undecodable(WireError::Header));
    };
    let mut questions = Vec::with_capacity(1);
    for _ in 0..counts.queries {
        let Ok(question) = Query::read(&mut decoder) else {
            return Datagram::Junk(Malformed::Undecodable(WireError::Question));
        };
        questions.push(question);
    }
    match check(&metadata, &questions, query) {
        Ok(()) => Datagram::Answer(accept(datagram, query)),
        Err(why) => Datagram::Junk(why),
    }
}

/// Does a response with this header and these questions answer `query`: a response with its
/// ID and its one question? An error response may come without the question (servers that
/// cannot parse a query cannot copy it).
fn check(metadata: &Metadata, questions: &[Query], query: &Message) -> Result<(), Malformed> {
    if metadata.id != query.metadata.id {
        return Err(Malformed::OtherId);
    }
    if metadata.message_type != MessageType::Response {
        return Err(Malformed::NotAResponse);
    }
    let asked = query.queries.first();
    match (asked, questions) {
        (Some(asked), [question])
            if question.query_type() == asked.query_type()
                && question.query_class() == asked.query_class()
                && question.name() == asked.name() =>
        {
            Ok(())
        }
        (_, [])
            if matches!(
                metadata.response_code,
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
    let message = decoded.message;
    check(&message.metadata, &message.queries, query).map_err(ExchangeError::Malformed)?;
    Ok(Exchanged {
        message,
        wire_len: bytes.len() + decoded.expanded_by,
    })
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
        Ok(_) => match accept(&buf, query)? {
            answer if answer.message.metadata.truncation => {
                Err(ExchangeError::Malformed(Malformed::TruncatedOverTcp))
            }
            answer => Ok(answer),
        },
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

    /// `check` of `reply`'s header and question against `asked`.
    fn check_reply(reply: &Message, asked: &Message) -> Result<(), Malformed> {
        check(&reply.metadata, &reply.queries, asked)
    }

    #[test]
    fn only_a_response_to_the_same_question_and_id_answers() {
        let asked = query("www.example.");
        let mut reply = query("WWW.Example.");
        reply.metadata.message_type = MessageType::Response;
        assert_eq!(
            check_reply(&reply, &asked),
            Ok(()),
            "names compare without case"
        );
        reply.metadata.id = 8;
        assert_eq!(check_reply(&reply, &asked), Err(Malformed::OtherId));
        let mut other = query("other.example.");
        other.metadata.message_type = MessageType::Response;
        assert_eq!(check_reply(&other, &asked), Err(Malformed::OtherQuestion));
        assert_eq!(check_reply(&asked, &asked), Err(Malformed::NotAResponse));
        // An error needs no question; an answer does.
        let mut formerr = Message::new(7, MessageType::Response, OpCode::Query);
        formerr.metadata.response_code = ResponseCode::FormErr;
        assert_eq!(check_reply(&formerr, &asked), Ok(()));
        formerr.metadata.response_code = ResponseCode::NoError;
        assert_eq!(check_reply(&formerr, &asked), Err(Malformed::OtherQuestion));
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
    }

    /// The response `server` would give to `query`: QR=1, one A record (192.0.2.`last`).
    fn answer_to(query: &[u8], last: u8) -> Vec<u8> {
        let mut reply = Message::from_vec(query).unwrap();
        reply.metadata.message_type = MessageType::Response;
        let name = reply.queries[0].name().clone();
        reply.add_answer(hickory_proto::rr::Record::from_rdata(
            name,
            60,
            hickory_proto::rr::RData::A(std::net::Ipv4Addr::new(192, 0, 2, last).into()),
        ));
        reply.to_vec().unwrap()
    }

    #[tokio::test]
    async fn datagrams_that_do_not_answer_are_skipped_and_the_answer_is_taken() {
        type Junk = fn(&[u8]) -> Vec<u8>;
        let junk: Vec<Junk> = vec![
            |query| query.to_vec(),                              // echoed: QR=0
            |query| [&query[..2], &[0x81, 0x80, 0, 1]].concat(), // a question that is not there
            |query| query[..5].to_vec(),                         // shorter than a header
            |query| {
                let mut other = Message::from_vec(query).unwrap();
                other.metadata.message_type = MessageType::Response;
                other.queries[0].set_name(Name::from_ascii("other.example.").unwrap());
                other.to_vec().unwrap()
            },
            |query| {
                let mut stray = answer_to(query, 66);
                stray[0] ^= 0xff;
                stray
            },
        ];
        let wait = Duration::from_secs(5);
        for (case, make_junk) in junk.into_iter().enumerate() {
            let server = udp_server(move |query| vec![make_junk(query), answer_to(query, 1)]).await;
            let answer = exchange(server, &query("www.example."), wait, wait)
                .await
                .unwrap_or_else(|error| panic!("case {case}: {error:?}"));
            assert_eq!(answer.message.answers.len(), 1, "case {case}");
        }
        // Only junk with the query's ID: malformed once the wait is over, not a timeout.
        let echo = udp_server(|query| vec![query.to_vec()]).await;
        let short = Duration::from_millis(200);
        let error = exchange(echo, &query("www.example."), short, short)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ExchangeError::Malformed(Malformed::NotAResponse)),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_answer_from_another_port_never_reaches_the_query() {
        // The server answers from a second socket first (another port: spoofed or misrouted),
        // then from its own.
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            let (len, client) = udp.recv_from(&mut buf).await.unwrap();
            other
                .send_to(&answer_to(&buf[..len], 66), client)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            udp.send_to(&answer_to(&buf[..len], 1), client)
                .await
                .unwrap();
        });
        let wait = Duration::from_secs(5);
        let answer = exchange(server, &query("www.example."), wait, wait)
            .await
            .unwrap();
        let rdata = answer.message.answers[0].data.to_string();
        assert_eq!(rdata, "192.0.2.1");
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
