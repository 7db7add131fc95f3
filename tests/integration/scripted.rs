//! A scripted upstream: a DNS server on 127.0.0.1 (UDP and TCP, one port) whose every answer
//! is decided by a closure, down to the byte, so a test can play an upstream that misbehaves
//! the way real ones do (strict about EDNS, answering the wrong type, sending what does not
//! parse). It logs every query it receives.

// Until the forwarding-fault tests (issue 11) that use all of it land.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_proto::op::{Message, ResponseCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};
use tokio_util::sync::CancellationToken;

/// Which transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query the scripted upstream received.
#[derive(Debug, Clone)]
pub struct Asked {
    pub transport: Transport,
    /// The query as sent, byte for byte.
    pub wire: Vec<u8>,
    /// The query decoded (the daemon's queries always decode).
    pub message: Message,
}

impl Asked {
    /// The question's name, lower case, with the final dot.
    pub fn qname(&self) -> String {
        self.message.queries[0].name().to_lowercase().to_string()
    }

    /// Does the query carry an EDNS OPT record?
    pub fn has_edns(&self) -> bool {
        self.message.edns.is_some()
    }
}

/// What the scripted upstream does with one query.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send these bytes as the answer (over TCP with the 2-byte length in front).
    Reply(Vec<u8>),
    /// Send nothing.
    Drop,
    /// Wait, then send these bytes.
    Delayed(Duration, Vec<u8>),
    /// Send these bytes exactly as given, then (over TCP) close the connection: over TCP the
    /// script writes the length in front itself, so it may announce more than it sends.
    Unframed(Vec<u8>),
}

type Script = Arc<dyn Fn(&Asked) -> Action + Send + Sync>;

/// The running scripted upstream; stops when dropped.
pub struct Scripted {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Asked>>>,
    stop: CancellationToken,
}

impl Scripted {
    /// Starts a scripted upstream on 127.0.0.1 answering each query as `script` says.
    pub async fn start(script: impl Fn(&Asked) -> Action + Send + Sync + 'static) -> Self {
        let (udp, tcp) = crate::support::bind_pair().await;
        let udp = Arc::new(udp);
        let addr = udp.local_addr().unwrap();
        let script: Script = Arc::new(script);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        tokio::spawn(serve_udp(udp, script.clone(), log.clone(), stop.clone()));
        tokio::spawn(serve_tcp(tcp, script, log.clone(), stop.clone()));
        Self { addr, log, stop }
    }

    /// Every query received so far, in order.
    pub fn asked(&self) -> Vec<Asked> {
        self.log.lock().unwrap().clone()
    }

    /// The queries received so far for `name` (lower case, with the final dot).
    pub fn asked_for(&self, name: &str) -> Vec<Asked> {
        self.asked()
            .into_iter()
            .filter(|a| a.qname() == name)
            .collect()
    }
}

/// A UDP socket and a TCP listener on one free port of 127.0.0.1. The port the system picks
/// for UDP may be in use for TCP (by a connection of another test): then another one.
impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn record(log: &Mutex<Vec<Asked>>, transport: Transport, wire: &[u8]) -> Option<Asked> {
    let message = Message::from_vec(wire).ok()?;
    let asked = Asked {
        transport,
        wire: wire.to_vec(),
        message,
    };
    log.lock().unwrap().push(asked.clone());
    Some(asked)
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    script: Script,
    log: Arc<Mutex<Vec<Asked>>>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65_535];
    while let Some((len, client)) = next_datagram(&socket, &mut buf, &stop).await {
        let Some(asked) = record(&log, Transport::Udp, &buf[..len]) else {
            continue;
        };
        let action = script(&asked);
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Some(bytes) = perform(action).await {
                let _ = socket.send_to(&bytes, client).await;
            }
        });
    }
}

/// The next datagram into `buf` and its sender; `None` once `stop` is cancelled.
async fn next_datagram(
    socket: &UdpSocket,
    buf: &mut [u8],
    stop: &CancellationToken,
) -> Option<(usize, SocketAddr)> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            received = socket.recv_from(buf) => if let Ok(received) = received {
                return Some(received);
            },
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    script: Script,
    log: Arc<Mutex<Vec<Asked>>>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (script, log, stop) = (script.clone(), log.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = serve_connection(stream, script, log) => {}
            }
        });
    }
}

async fn serve_connection(mut stream: TcpStream, script: Script, log: Arc<Mutex<Vec<Asked>>>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut wire = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut wire).await.is_err() {
            return;
        }
        let Some(asked) = record(&log, Transport::Tcp, &wire) else {
            return;
        };
        let action = script(&asked);
        if let Action::Unframed(bytes) = action {
            let _ = stream.write_all(&bytes).await;
            return;
        }
        if let Some(bytes) = perform(action).await {
            let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

async fn perform(action: Action) -> Option<Vec<u8>> {
    match action {
        Action::Reply(bytes) | Action::Unframed(bytes) => Some(bytes),
        Action::Drop => None,
        Action::Delayed(wait, bytes) => {
            tokio::time::sleep(wait).await;
            Some(bytes)
        }
    }
}

/// A name in wire format, uncompressed (`"www.example."` → `3www7example0`).
pub fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(u8::try_from(label.len()).unwrap());
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// One resource record in wire format, its owner name uncompressed and its RDATA as given.
pub fn raw_rr(name: &str, rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut out = wire_name(name);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // class IN
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&u16::try_from(rdata.len()).unwrap().to_be_bytes());
    out.extend_from_slice(rdata);
    out
}

/// The sections of a raw response, each a list of records from [`raw_rr`] (or any bytes: a
/// test may put what does not parse there).
#[derive(Debug, Clone, Default)]
pub struct RawSections {
    pub answers: Vec<Vec<u8>>,
    pub authorities: Vec<Vec<u8>>,
    pub additionals: Vec<Vec<u8>>,
}

/// A response to `asked` built byte by byte: its ID and question, QR=1, RD copied, RA=1, the
/// given RCODE (low four bits) and `extra_flags` OR-ed into the second flags byte (0x20 for
/// AD, 0x10 for CD), then `sections`. No OPT record unless a test adds one to the additionals.
pub fn raw_response(
    asked: &Asked,
    rcode: ResponseCode,
    extra_flags: u8,
    sections: &RawSections,
) -> Vec<u8> {
    let wire = &asked.wire;
    let question_end = 12 + question_len(&wire[12..]);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&wire[..2]);
    out.push(0x80 | (wire[2] & 0x01)); // QR, opcode 0, RD as asked
    out.push(0x80 | extra_flags | (u16::from(rcode) & 0x0f) as u8); // RA
    out.extend_from_slice(&1u16.to_be_bytes());
    for section in [
        &sections.answers,
        &sections.authorities,
        &sections.additionals,
    ] {
        out.extend_from_slice(&u16::try_from(section.len()).unwrap().to_be_bytes());
    }
    out.extend_from_slice(&wire[12..question_end]);
    for record in sections
        .answers
        .iter()
        .chain(&sections.authorities)
        .chain(&sections.additionals)
    {
        out.extend_from_slice(record);
    }
    out
}

/// Length of the one question at the start of `body` (an uncompressed name, type, class).
fn question_len(body: &[u8]) -> usize {
    let mut at = 0;
    while body[at] != 0 {
        at += 1 + usize::from(body[at]);
    }
    at + 1 + 4
}

/// The answer to `asked` with `rcode`, extra header `flags` (second octet: AD 0x20, CD
/// 0x10), and these sections.
pub fn answer(
    asked: &Asked,
    rcode: ResponseCode,
    flags: u8,
    answers: Vec<Vec<u8>>,
    authorities: Vec<Vec<u8>>,
) -> Action {
    let sections = RawSections {
        answers,
        authorities,
        additionals: Vec::new(),
    };
    Action::Reply(raw_response(asked, rcode, flags, &sections))
}

/// A response to `asked` with `message`'s sections and flags, encoded by hickory: for answers
/// hickory can express. The ID and question are the query's.
pub fn encoded_response(asked: &Asked, mut message: Message) -> Vec<u8> {
    message.metadata.id = asked.message.metadata.id;
    message.metadata.message_type = hickory_proto::op::MessageType::Response;
    message.metadata.recursion_desired = asked.message.metadata.recursion_desired;
    message.metadata.recursion_available = true;
    message.queries = asked.message.queries.clone();
    message.to_vec().unwrap()
}

#[tokio::test]
async fn a_scripted_upstream_answers_as_told_and_logs_what_it_was_asked() {
    use hickory_proto::rr::RecordType;
    let upstream = Scripted::start(|asked| {
        let rdata = [192, 0, 2, 7];
        let answer = raw_rr(&asked.qname(), 1, 60, &rdata);
        Action::Reply(raw_response(
            asked,
            ResponseCode::NoError,
            0,
            &RawSections {
                answers: vec![answer],
                ..RawSections::default()
            },
        ))
    })
    .await;
    let reply = super::support::exchange_udp(
        upstream.addr,
        super::support::query("www.example.", RecordType::A),
    )
    .await;
    assert_eq!(super::support::a_records(&reply), vec!["192.0.2.7"]);
    let asked = upstream.asked_for("www.example.");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].transport, Transport::Udp);
}

/// A query in wire form for `name`/`qtype` with RD=1 and the given ID, with an OPT record
/// (payload 1232) when `edns`: written by hand, for tests whose answers hickory cannot decode.
pub fn raw_query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    out.extend_from_slice(&wire_name(name));
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    if edns {
        out.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    out
}

/// Sends `query` over UDP to `server` and returns the datagram that comes back, undecoded.
pub async fn raw_exchange_udp(server: SocketAddr, query: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket.send(query).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let len = tokio::time::timeout(super::support::WAIT, socket.recv(&mut buf))
        .await
        .expect("an answer within the bound")
        .unwrap();
    buf.truncate(len);
    buf
}

/// Sends `query` over TCP to `server` and returns the message that comes back, undecoded.
pub async fn raw_exchange_tcp(server: SocketAddr, query: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut framed = u16::try_from(query.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.unwrap();
    let len = tokio::time::timeout(super::support::WAIT, stream.read_u16())
        .await
        .expect("an answer within the bound")
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// The RCODE (low four bits) and the answer section of a message in wire form, each record as
/// its TYPE and RDATA octets: read without hickory (which refuses empty RDATA), skipping
/// names as they stand (a compression pointer ends a name).
pub fn raw_answers(message: &[u8]) -> (u8, Vec<(u16, Vec<u8>)>) {
    let skip_name = |mut at: usize| loop {
        match message[at] {
            0 => return at + 1,
            len if len & 0xc0 == 0xc0 => return at + 2,
            len => at += 1 + usize::from(len),
        }
    };
    let count = |at: usize| usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    let mut at = 12;
    for _ in 0..count(4) {
        at = skip_name(at) + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..count(6) {
        at = skip_name(at);
        let rtype = u16::from_be_bytes([message[at], message[at + 1]]);
        let len = count(at + 8);
        answers.push((rtype, message[at + 10..at + 10 + len].to_vec()));
        at += 10 + len;
    }
    (message[3] & 0x0f, answers)
}

/// A UDP and TCP relay on 127.0.0.1 that passes every query to a target set later, and its
/// answer back: an address that reaches a daemon without being one of the daemon's own.
pub struct Relay {
    pub addr: SocketAddr,
    target: tokio::sync::watch::Sender<Option<SocketAddr>>,
    stop: CancellationToken,
}

impl Relay {
    /// Starts a relay; queries wait until [`Relay::point_to`] names where they go.
    pub async fn start() -> Self {
        let (udp, tcp) = crate::support::bind_pair().await;
        let udp = Arc::new(udp);
        let addr = udp.local_addr().unwrap();
        let (target, watch) = tokio::sync::watch::channel(None);
        let stop = CancellationToken::new();
        tokio::spawn(relay_udp(udp, watch.clone(), stop.clone()));
        tokio::spawn(relay_tcp(tcp, watch, stop.clone()));
        Self { addr, target, stop }
    }

    /// Relays every query, waiting ones too, to `target`.
    pub fn point_to(&self, target: SocketAddr) {
        self.target.send_replace(Some(target));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Target = tokio::sync::watch::Receiver<Option<SocketAddr>>;

async fn target_of(mut watch: Target) -> SocketAddr {
    let target = watch.wait_for(Option::is_some).await.unwrap();
    target.expect("waited for it")
}

async fn relay_udp(socket: Arc<UdpSocket>, watch: Target, stop: CancellationToken) {
    let mut buf = vec![0u8; 65_535];
    while let Some((len, client)) = next_datagram(&socket, &mut buf, &stop).await {
        let (query, socket, watch, stop) = (
            buf[..len].to_vec(),
            socket.clone(),
            watch.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let target = target_of(watch).await;
            let out = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            out.connect(target).await.unwrap();
            let _ = out.send(&query).await;
            let mut answer = vec![0u8; 65_535];
            tokio::select! {
                () = stop.cancelled() => {}
                received = out.recv(&mut answer) => if let Ok(len) = received {
                    let _ = socket.send_to(&answer[..len], client).await;
                },
            }
        });
    }
}

async fn relay_tcp(listener: TcpListener, watch: Target, stop: CancellationToken) {
    loop {
        let mut inbound = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (watch, stop) = (watch.clone(), stop.clone());
        tokio::spawn(async move {
            let target = target_of(watch).await;
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                () = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}

// Records and query details for the answer-rule tests (issue 11, kinds 2, 6 and 8).

impl Asked {
    /// The DO bit of the query's OPT record (false without EDNS).
    pub fn dnssec_ok(&self) -> bool {
        self.message
            .edns
            .as_ref()
            .is_some_and(|e| e.flags().dnssec_ok)
    }

    /// The CD bit of the query's header.
    pub fn checking_disabled(&self) -> bool {
        self.message.metadata.checking_disabled
    }

    /// The question's type.
    pub fn qtype(&self) -> hickory_proto::rr::RecordType {
        self.message.queries[0].query_type()
    }
}

/// An A record (type 1).
pub fn raw_a(name: &str, ttl: u32, address: [u8; 4]) -> Vec<u8> {
    raw_rr(name, 1, ttl, &address)
}

/// An AAAA record (type 28).
pub fn raw_aaaa(name: &str, ttl: u32, address: std::net::Ipv6Addr) -> Vec<u8> {
    raw_rr(name, 28, ttl, &address.octets())
}

/// A CNAME record (type 5), its target uncompressed.
pub fn raw_cname(name: &str, ttl: u32, target: &str) -> Vec<u8> {
    raw_rr(name, 5, ttl, &wire_name(target))
}

/// An NS record (type 2) for `zone`.
pub fn raw_ns(zone: &str, ttl: u32, host: &str) -> Vec<u8> {
    raw_rr(zone, 2, ttl, &wire_name(host))
}

/// The SOA record (type 6) of `zone`, with the given TTL and MINIMUM (the negative-caching
/// TTL, RFC 2308 section 4); MNAME `ns.<zone>`, RNAME `admin.<zone>`.
pub fn raw_soa(zone: &str, ttl: u32, minimum: u32) -> Vec<u8> {
    let zone = zone.trim_end_matches('.');
    let mut rdata = wire_name(&format!("ns.{zone}."));
    rdata.extend(wire_name(&format!("admin.{zone}.")));
    for field in [1u32, 3600, 600, 86_400, minimum] {
        rdata.extend_from_slice(&field.to_be_bytes());
    }
    raw_rr(zone, 6, ttl, &rdata)
}
