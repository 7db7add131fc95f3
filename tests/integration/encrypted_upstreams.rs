//! Encrypted upstreams (issue 16, section 3): the daemon forwards over DNS over TLS (RFC 7858)
//! and DNS over HTTPS (RFC 8484) to real servers on loopback: a TLS front (rustls) and an
//! HTTP/2 server (h2) in this process, each passing the queries it gets to the authoritative
//! test upstream, with certificates from a CA each test makes (rcgen). The servers count their
//! connections and queries, and can close idle connections.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};
use p2pdns::config::{EncryptedServer, UpstreamAddr, UpstreamServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::support::{
    TestDaemon, Upstream, WAIT, a_records, ask, config, ede, exchange_tcp, wait_until,
};

/// A CA of the test's own, its certificate in a PEM file, and a server certificate from it.
struct Pki {
    dir: PathBuf,
    ca_file: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A server certificate and its key.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The SHA-256 of its SubjectPublicKeyInfo, base64 (a `spki_sha256` pin).
    pin: String,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("p2pdns-pki-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "p2pdns test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self {
            dir,
            ca_file,
            ca,
            ca_key,
        }
    }

    /// A certificate for `name`, issued by this CA.
    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let digest = Sha256::digest(parsed.tbs_certificate.subject_pki.raw);
        use base64::Engine as _;
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            pin: base64::engine::general_purpose::STANDARD.encode(digest),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// DoT or DoH.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dot,
    Doh,
}

/// An encrypted DNS server on loopback that asks `upstream` over TCP for every query.
struct Front {
    addr: SocketAddr,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
    /// Queries received.
    queries: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Front {
    /// Serves `kind` with `leaf`, closing connections idle for `idle` (GOAWAY over HTTP/2).
    async fn start(kind: Kind, leaf: &Leaf, upstream: SocketAddr, idle: Duration) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                leaf.chain.clone(),
                PrivateKeyDer::Pkcs8(leaf.key.clone_key()),
            )
            .unwrap();
        if kind == Kind::Doh {
            tls.alpn_protocols = vec![b"h2".to_vec()];
        }
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = Self {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            queries: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (connections, queries, stop) = (
            front.connections.clone(),
            front.queries.clone(),
            front.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, queries) = (acceptor.clone(), queries.clone());
                tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    match kind {
                        Kind::Dot => serve_dot(tls, upstream, idle, queries).await,
                        Kind::Doh => serve_doh(tls, upstream, idle, queries).await,
                    }
                }));
            }
        });
        front
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The upstream's answer to the query `wire`, with the query's ID.
async fn answer(upstream: SocketAddr, wire: &[u8]) -> Vec<u8> {
    let query = Message::from_vec(wire).unwrap();
    let mut reply = exchange_tcp(upstream, query.clone()).await;
    reply.metadata.id = query.metadata.id;
    reply.to_vec().unwrap()
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// DoT: one query after another, until the client closes or `idle` passes without one.
async fn serve_dot(mut tls: Tls, upstream: SocketAddr, idle: Duration, queries: Arc<AtomicUsize>) {
    while let Ok(Ok(len)) = timeout(idle, tls.read_u16()).await {
        let mut wire = vec![0; usize::from(len)];
        if tls.read_exact(&mut wire).await.is_err() {
            return;
        }
        queries.fetch_add(1, Ordering::SeqCst);
        let reply = answer(upstream, &wire).await;
        let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if tls.write_all(&framed).await.is_err() {
            return;
        }
    }
    let _ = tls.shutdown().await;
}

/// DoH: POSTs to /dns-query, each stream on its own task; after `idle` without a request, a
/// GOAWAY and the end once the streams are done.
async fn serve_doh(tls: Tls, upstream: SocketAddr, idle: Duration, queries: Arc<AtomicUsize>) {
    let Ok(mut connection) = h2::server::handshake(tls).await else {
        return;
    };
    loop {
        let request = match timeout(idle, connection.accept()).await {
            Ok(Some(Ok(request))) => request,
            Ok(_) => return,
            Err(_) => {
                connection.graceful_shutdown();
                while let Some(Ok(_)) = connection.accept().await {}
                return;
            }
        };
        let queries = queries.clone();
        tokio::spawn(async move {
            let (request, mut respond) = request;
            assert_eq!(request.method(), http::Method::POST);
            assert_eq!(request.uri().path(), "/dns-query");
            assert_eq!(request.headers()["content-type"], "application/dns-message");
            let mut body = request.into_body();
            let mut wire = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                wire.extend_from_slice(&chunk);
            }
            assert_eq!(wire[..2], [0, 0], "DoH queries go with ID 0");
            queries.fetch_add(1, Ordering::SeqCst);
            let reply = answer(upstream, &wire).await;
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/dns-message")
                .body(())
                .unwrap();
            let mut stream = respond.send_response(response, false).unwrap();
            let _ = stream.send_data(Bytes::from(reply), true);
        });
    }
}

/// An encrypted upstream entry for `front`, certificate checked for `name` against `pki`'s CA.
fn encrypted(kind: Kind, front: &Front, name: &str, pki: &Pki) -> EncryptedServer {
    let text = match kind {
        Kind::Dot => format!("tls://{}#{name}", front.addr),
        Kind::Doh => format!("https://{}/dns-query#{name}", front.addr),
    };
    let UpstreamServer::Encrypted(mut server) = text.parse().unwrap() else {
        unreachable!("{text} is encrypted");
    };
    server.ca_file = Some(pki.ca_file.clone());
    server
}

/// A daemon forwarding to `servers`.
async fn daemon(servers: Vec<UpstreamServer>) -> TestDaemon {
    let mut config = config(&[]);
    config.upstream.servers = servers;
    TestDaemon::start(config).await
}

/// Asks `count` names at once that the upstream does not have (NXDOMAIN, each a query of its
/// own upstream) and `www` (an address); checks every answer.
async fn ask_many(daemon: &TestDaemon, count: usize, tag: &str) {
    let mut asks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (addr, name) = (daemon.addr, format!("n{i}-{tag}.example.test."));
        asks.spawn(async move { ask(addr, &name, RecordType::A).await });
    }
    while let Some(reply) = asks.join_next().await {
        assert_eq!(
            reply.unwrap().metadata.response_code,
            ResponseCode::NXDomain
        );
    }
    let reply = ask(daemon.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&reply), vec!["192.0.2.80"], "{reply:?}");
}

#[tokio::test]
async fn queries_go_over_dot_and_doh_many_on_one_connection() {
    let upstream = Upstream::start("").await;
    let pki = Pki::new();
    let leaf = pki.leaf("dns.test");
    for kind in [Kind::Dot, Kind::Doh] {
        let front = Front::start(kind, &leaf, upstream.addr, WAIT).await;
        let server = encrypted(kind, &front, "dns.test", &pki);
        let daemon = daemon(vec![UpstreamServer::Encrypted(server)]).await;
        ask_many(&daemon, 40, "many").await;
        assert!(
            front.queries() >= 41,
            "{kind:?}: {} queries",
            front.queries()
        );
        assert_eq!(
            front.connections(),
            1,
            "{kind:?}: one connection carried them all"
        );
        daemon.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_over_and_says_why() {
    let upstream = Upstream::start("").await;
    let pki = Pki::new();
    let other = pki.leaf("other.test");
    for kind in [Kind::Dot, Kind::Doh] {
        let front = Front::start(kind, &other, upstream.addr, WAIT).await;
        let wrong = UpstreamServer::Encrypted(encrypted(kind, &front, "dns.test", &pki));
        // Alone, the query fails, with the reason in an Extended DNS Error (RFC 8914).
        let alone = daemon(vec![wrong.clone()]).await;
        let reply = ask(alone.addr, "www.example.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        let (code, text) = ede(&reply).expect("an extended error");
        assert_eq!(code, 23, "Network Error");
        assert!(text.contains("certificate"), "{text}");
        assert_eq!(front.queries(), 0, "no query crossed the failed handshake");
        alone.stop().await.unwrap();
        // Beside a plain upstream, it fails over.
        let plain = UpstreamServer::from(UpstreamAddr(upstream.addr));
        let both = daemon(vec![wrong, plain]).await;
        let reply = ask(both.addr, "www.example.test.", RecordType::A).await;
        assert_eq!(a_records(&reply), vec!["192.0.2.80"], "{kind:?}: {reply:?}");
        both.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_pinned_key_must_be_the_servers() {
    let upstream = Upstream::start("").await;
    let pki = Pki::new();
    let leaf = pki.leaf("dns.test");
    let stranger = pki.leaf("dns.test");
    let front = Front::start(Kind::Dot, &leaf, upstream.addr, WAIT).await;
    for (pins, answered) in [
        (vec![stranger.pin.clone()], false),
        (vec![stranger.pin.clone(), leaf.pin.clone()], true),
    ] {
        // The table form, as a configuration file has it.
        let text = format!(
            "[upstream]\nservers = [{{ server = \"tls://{}#dns.test\", ca_file = \"{}\", \
             spki_sha256 = {pins:?} }}]\n",
            front.addr,
            pki.ca_file.display()
        );
        let parsed: p2pdns::Config = toml::from_str(&text).unwrap();
        let server = parsed.upstream.servers[0].clone();
        let daemon = daemon(vec![server]).await;
        let reply = ask(daemon.addr, "www.example.test.", RecordType::A).await;
        if answered {
            assert_eq!(a_records(&reply), vec!["192.0.2.80"], "{reply:?}");
        } else {
            assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
            assert!(ede(&reply).is_some_and(|(_, text)| text.contains("certificate")));
        }
        daemon.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_server_that_closes_idle_connections_is_connected_again() {
    let upstream = Upstream::start("").await;
    let pki = Pki::new();
    let leaf = pki.leaf("dns.test");
    let idle = Duration::from_millis(300);
    for kind in [Kind::Dot, Kind::Doh] {
        let front = Front::start(kind, &leaf, upstream.addr, idle).await;
        let server = encrypted(kind, &front, "dns.test", &pki);
        let daemon = daemon(vec![UpstreamServer::Encrypted(server)]).await;
        ask_many(&daemon, 5, "first").await;
        assert_eq!(front.connections(), 1);
        // The server closes the connection; the next queries go on a new one.
        tokio::time::sleep(idle * 3).await;
        ask_many(&daemon, 5, "second").await;
        assert_eq!(front.connections(), 2, "{kind:?}");
        daemon.stop().await.unwrap();
    }
}

#[tokio::test]
async fn an_encrypted_upstream_that_is_down_rests_as_a_plain_one_does() {
    let upstream = Upstream::start("").await;
    let pki = Pki::new();
    // Takes connections and closes them at once: every handshake fails.
    let broken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_addr = broken.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = broken.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    let text = format!("tls://{broken_addr}#dns.test");
    let UpstreamServer::Encrypted(mut down) = text.parse().unwrap() else {
        unreachable!()
    };
    down.ca_file = Some(pki.ca_file.clone());
    let plain = UpstreamServer::from(UpstreamAddr(upstream.addr));
    let daemon = daemon(vec![UpstreamServer::Encrypted(down), plain]).await;
    for i in 0..20 {
        let reply = ask(daemon.addr, &format!("n{i}.example.test."), RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    }
    wait_until("the broken server to be tried", || {
        accepted.load(Ordering::SeqCst) > 0
    })
    .await;
    // Three failures rest an upstream (module health): 20 questions did not try it 20 times.
    let tried = accepted.load(Ordering::SeqCst);
    assert!(tried <= 4, "tried {tried} times");
    daemon.stop().await.unwrap();
    server.abort();
}
