//! Shared test fixtures: an authoritative upstream served by hickory on loopback, daemons on
//! port 0, and a hickory DNS client.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use hickory_net::{
    client::Client, runtime::TokioRuntimeProvider, tcp::TcpClientStream, udp::UdpClientStream,
    xfer::DnsHandle,
};
use hickory_proto::{
    op::{DnsRequest, DnsRequestOptions, Edns, Header, HeaderCounts, Message, Metadata, Query},
    rr::{LowerName, Name, RData, Record, RecordType},
    serialize::txt::Parser,
};
use hickory_server::{
    Server,
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneType},
};
use p2pdns::{Config, Daemon, DaemonError, config::UpstreamAddr};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// Bound on every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// The zone the test upstream serves.
pub const ZONE: &str = r#"
$ORIGIN example.test.
$TTL 300
@       IN SOA ns.example.test. admin.example.test. 1 3600 600 86400 60
@       IN NS  ns
ns      IN A   127.0.0.1
www     IN A   192.0.2.80
www     IN AAAA 2001:db8::80
short   30 IN A 192.0.2.30
alias   IN CNAME www
"#;

/// An authoritative server for [`ZONE`] (plus extra lines) on 127.0.0.1, counting queries and
/// able to go silent (drop every query) on demand.
pub struct Upstream {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicUsize>,
    pub silent: Arc<AtomicBool>,
    server: Server<Counting>,
}

struct Counting {
    catalog: Catalog,
    queries: Arc<AtomicUsize>,
    silent: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if self.silent.load(Ordering::SeqCst) {
            return ResponseInfo::from(Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: HeaderCounts::default(),
            });
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// A UDP socket and a TCP listener on the same loopback port: another test may hold the TCP
/// port of a free UDP one, so a few ports are tried.
pub async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// A port on 127.0.0.1 free for UDP and TCP both, for a server that must be named before it
/// starts (its address goes into another's configuration, or into its own). Chosen at random
/// below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where the sockets that
/// tests running in parallel bind to port 0 never land, and never handed out twice by this
/// process: between this call and the server's bind, no other test takes it. (A port taken
/// from a socket bound to port 0 and closed again was once reused by a parallel test first.)
pub fn reserved_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let range = 10_000..ephemeral_low.max(20_000);
    let mut handed_out = HANDED_OUT.lock().unwrap();
    for _ in 0..1_000 {
        let port = rand::random_range(range.clone());
        if handed_out.contains(&port) {
            continue;
        }
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no port free for UDP and TCP in {range:?} after 1,000 tries");
}

impl Upstream {
    pub async fn start(extra: &str) -> Self {
        let text = format!("{ZONE}{extra}");
        let origin = Name::from_ascii("example.test.").unwrap();
        let (_, records) = Parser::new(text, None, Some(origin.clone()))
            .parse()
            .unwrap();
        let zone = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
            origin.clone(),
            records,
            ZoneType::Primary,
            AxfrPolicy::Deny,
        )
        .unwrap();
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
        let queries = Arc::new(AtomicUsize::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let handler = Counting {
            catalog,
            queries: queries.clone(),
            silent: silent.clone(),
        };
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, WAIT, 16);
        Self {
            addr,
            queries,
            silent,
            server,
        }
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// Waits until a query has reached the upstream (answered or not, as when it is silent).
    pub async fn wait_until_asked(&self) {
        wait_until("the upstream to be asked", || self.queries() > 0).await;
    }
}

/// Polls `done` every 10 ms until it holds; fails the test, naming `what` it waited for, after
/// [`WAIT`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}

/// A configuration for tests: loopback port 0, the given upstreams, no resolv.conf.
pub fn config(upstreams: &[SocketAddr]) -> Config {
    let mut config = Config::default();
    config.dns.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.upstream.servers = upstreams.iter().map(|&a| UpstreamAddr(a).into()).collect();
    config.upstream.resolv_conf = PathBuf::from("/nonexistent/resolv.conf");
    config.upstream.timeout_ms = 300;
    config.upstream.query_timeout_ms = 1500;
    config.p2p.enabled = false;
    config
}

/// A configuration with the P2P node on loopback (port 0, no mDNS, DHT server mode),
/// bootstrapping from `bootstrap`.
pub fn p2p_config(bootstrap: &[libp2p::Multiaddr]) -> Config {
    let mut config = config(&[]);
    config.p2p.enabled = true;
    config.p2p.listen = Some(vec![
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
    ]);
    config.p2p.bootstrap = bootstrap.to_vec();
    config.p2p.mdns = false;
    config.p2p.dht_mode = p2pdns::config::DhtMode::Server;
    config
}

/// Adds the local names `site.p2p` (A, AAAA, TXT) and `www.site.p2p` (a CNAME to it).
pub fn local_site(config: &mut Config) {
    config.naming.records.insert(
        "site.p2p".into(),
        vec![
            "A 192.0.2.10".into(),
            "AAAA 2001:db8::10".into(),
            "TXT \"hello world\"".into(),
        ],
    );
    config
        .naming
        .records
        .insert("www.site.p2p".into(), vec!["CNAME site.p2p.".into()]);
}

/// A daemon running in this process.
pub struct TestDaemon {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    /// What SIGHUP does in the binary.
    pub reload: Arc<tokio::sync::Notify>,
    pub forwarder: Arc<p2pdns::dns::forwarder::Forwarder>,
    pub dht: Option<Arc<p2pdns::naming::Dht>>,
    pub p2p_addrs: Vec<libp2p::Multiaddr>,
    /// The metrics endpoint, when `[metrics]` is on.
    pub metrics_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub task: JoinHandle<Result<(), DaemonError>>,
    /// Removes the data directory when the daemon is dropped or stopped.
    dir_guard: DirGuard,
}

/// Removes a directory on drop, unless told to keep it.
struct DirGuard {
    dir: PathBuf,
    keep: bool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl TestDaemon {
    pub async fn start(config: Config) -> Self {
        let dir = std::env::temp_dir().join(format!("p2pdns-test-{}", rand::random::<u64>()));
        Self::start_in(config, dir).await
    }

    /// Starts a daemon on the data directory `dir` (to restart one with its state).
    pub async fn start_in(config: Config, dir: PathBuf) -> Self {
        let daemon = Daemon::bind(config, dir.clone())
            .await
            .expect("daemon binds");
        let addr = daemon.dns_addrs()[0];
        let forwarder = daemon.forwarder().clone();
        let dht = daemon.dht().cloned();
        let p2p_addrs = daemon.p2p_addrs().to_vec();
        let metrics_addr = daemon.metrics_addr();
        let shutdown = CancellationToken::new();
        let reload = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(daemon.run(shutdown.clone(), reload.clone()));
        Self {
            addr,
            shutdown,
            reload,
            forwarder,
            dht,
            p2p_addrs,
            metrics_addr,
            data_dir: dir.clone(),
            task,
            dir_guard: DirGuard { dir, keep: false },
        }
    }

    /// Keeps the data directory after the daemon stops (to start another on it); whoever runs
    /// last on it removes it.
    pub fn keep_dir(&mut self) {
        self.dir_guard.keep = true;
    }

    /// Stops the daemon and returns how `run` ended.
    pub async fn stop(self) -> Result<(), DaemonError> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("daemon stops within the grace period")
            .expect("daemon task does not panic")
    }
}

/// Sends `msg` over UDP with hickory's client and returns the response.
pub async fn exchange_udp(server: SocketAddr, msg: Message) -> Message {
    let conn = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(WAIT))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    tokio::spawn(bg);
    send(&client, msg).await
}

/// Sends `msg` over TCP with hickory's client and returns the response.
pub async fn exchange_tcp(server: SocketAddr, msg: Message) -> Message {
    let (future, sender) =
        TcpClientStream::new(server, None, Some(WAIT), TokioRuntimeProvider::new());
    let stream = tokio::time::timeout(WAIT, future).await.unwrap().unwrap();
    let (client, bg) = Client::<TokioRuntimeProvider>::new(stream, sender);
    tokio::spawn(bg);
    send(&client, msg).await
}

async fn send(client: &Client<TokioRuntimeProvider>, msg: Message) -> Message {
    let mut options = DnsRequestOptions::default();
    options.use_edns = msg.edns.is_some();
    let mut responses = client.send(DnsRequest::new(msg, options));
    let response = tokio::time::timeout(WAIT, responses.next())
        .await
        .expect("an answer within the bound")
        .expect("a response")
        .expect("no transport error");
    response.into_message()
}

/// A recursive query with EDNS (payload 1232), as stub resolvers send it.
pub fn query(name: &str, qtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = rand::random();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    msg
}

/// A TXT query announcing `payload` bytes as its UDP limit.
pub fn query_with_payload(name: &str, payload: u16) -> Message {
    let mut msg = query(name, RecordType::TXT);
    msg.edns.as_mut().unwrap().set_max_payload(payload);
    msg
}

/// Writes `queries` to a DNS-over-TCP stream in one go, each with its length prefix (RFC 7766
/// pipelining, which hickory's client does not do).
pub async fn write_pipelined(stream: &mut TcpStream, queries: &[&Message]) {
    let mut wire = Vec::new();
    for msg in queries {
        let bytes = msg.to_vec().unwrap();
        wire.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(&bytes);
    }
    stream.write_all(&wire).await.unwrap();
}

/// Reads one length-prefixed DNS message from a TCP stream, within [`WAIT`].
pub async fn read_tcp_message(stream: &mut TcpStream) -> Message {
    let len = tokio::time::timeout(WAIT, stream.read_u16())
        .await
        .expect("answer within the bound")
        .unwrap();
    let mut buf = vec![0; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

/// Shortcut: the answer to `name`/`qtype` over UDP.
pub async fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    exchange_udp(server, query(name, qtype)).await
}

/// The Extended DNS Error (code, text) of a response, if any.
pub fn ede(msg: &Message) -> Option<(u16, String)> {
    use hickory_proto::rr::rdata::opt::EdnsOption;
    match msg.edns.as_ref()?.option(15u16.into())? {
        EdnsOption::Unknown(_, data) if data.len() >= 2 => Some((
            u16::from_be_bytes([data[0], data[1]]),
            String::from_utf8_lossy(&data[2..]).into_owned(),
        )),
        _ => None,
    }
}

/// An A record of `owner` (`site.p2p.`) for `ip`, TTL 300 s, as the P2P tests publish them.
pub fn a_record(owner: &str, ip: &str) -> Record {
    Record::from_rdata(
        Name::from_ascii(owner).unwrap(),
        300,
        RData::A(ip.parse().unwrap()),
    )
}

/// The A records of an answer, as text.
pub fn a_records(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

/// Asks `addr` until the answer's A records are `want` (records travel through the DHT).
pub async fn resolve_until(addr: SocketAddr, name: &str, want: &[&str]) -> Message {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = ask(addr, name, RecordType::A).await;
        if a_records(&msg) == want {
            return msg;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never resolved to {want:?} at {addr}; last answer: {msg:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
