//! Tunnels between daemons in this process (docs/PROTOCOL.md section 9): a name one node
//! exposes answers A with a loopback address on the other, whose TCP connections reach the
//! service through a stream; refusals and the stream protocol itself are checked at the wire.
//!
//! NAT traversal, browsers and the binary are the lab's (`tests/lab/tunnel.rs`).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, RecordType},
};
use libp2p::PeerId;
use p2pdns::{
    config::Config,
    naming::Dht,
    p2p::ConnectionPath,
    tunnel::{
        PROTOCOL, ServiceSpec,
        wire::{Status, TunnelReply, TunnelRequest},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::support::{TestDaemon, WAIT, ask, p2p_config, reserved_port};

/// A configuration whose tunnelled names take addresses from a /24 of their own, so that
/// daemons of tests running at once never bind the same address.
fn tunnel_config(bootstrap: &[libp2p::Multiaddr]) -> Config {
    let mut config = p2p_config(bootstrap);
    // Metrics on, for the tunnel figures (tests/integration/metrics.rs reads them).
    config.metrics.enabled = true;
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    let (b, c) = (rand::random::<u8>() % 100 + 100, rand::random::<u8>());
    config.tunnel.address_range = format!("127.{b}.{c}.0/24").parse().unwrap();
    config
}

/// An echo server on loopback: every byte read is written back; EOF is answered with EOF.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A random name under `.p2p`, so that tests never share one.
fn random_name(prefix: &str) -> String {
    format!("{prefix}-{:x}.p2p", rand::random::<u32>())
}

/// A service `name`:`port` connected to `to`, for the keys in `allow` (empty: everyone).
fn spec(name: &str, port: u16, to: impl ToString, allow: Vec<String>) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        port,
        to: Some(to.to_string()),
        allow,
    }
}

/// Exposes `spec` on `dht` and announces it, as `p2pdns expose` does.
async fn expose(dht: &Arc<Dht>, spec: ServiceSpec) {
    let service = dht.tunnels().unwrap().expose(&spec).unwrap();
    let set = Name::from_ascii(format!("{}.", service.name)).unwrap();
    dht.sync_services(&set)
        .await
        .unwrap()
        .expect("the record is re-signed");
}

/// Two connected daemons: the server, then the client bootstrapping from it.
async fn pair() -> (TestDaemon, TestDaemon) {
    let server = TestDaemon::start(tunnel_config(&[])).await;
    let client = TestDaemon::start(tunnel_config(&server.p2p_addrs)).await;
    (server, client)
}

/// Asks `daemon` for `name`'s A record until the DHT has it; returns the address.
async fn tunnel_address(daemon: &TestDaemon, name: &str) -> Ipv4Addr {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = ask(daemon.addr, name, RecordType::A).await;
        if let Some(RData::A(a)) = answer.answers.first().map(|r| &r.data) {
            assert_eq!(answer.answers.len(), 1, "one local address: {answer:?}");
            assert!(
                answer.answers[0].ttl <= 10,
                "a tunnelled name's TTL is short"
            );
            return a.0;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never resolved: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_service_is_reached_through_its_name() {
    let (server, client) = pair().await;
    let echo = echo_server().await;
    let name = random_name("echo");
    let port = reserved_port();
    expose(
        server.dht.as_ref().unwrap(),
        spec(&name, port, echo, Vec::new()),
    )
    .await;

    let address = tunnel_address(&client, &name).await;
    assert!(address.is_loopback(), "{address} is a loopback address");
    let aaaa = ask(client.addr, &name, RecordType::AAAA).await;
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty(), "AAAA is NODATA: {aaaa:?}");
    // The same name keeps its address.
    assert_eq!(tunnel_address(&client, &name).await, address);

    // 3 MiB there and back, then a half-close: the echo's EOF comes back after the data.
    let payload: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut tcp = TcpStream::connect((address, port)).await.unwrap();
    let (mut r, mut w) = tcp.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let read = r.read_to_end(&mut echoed);
    let ((), read) = tokio::time::timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .expect("the echo completes");
    read.expect("a clean end, not a reset");
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the bytes come back unchanged");

    let report = server.dht.as_ref().unwrap().tunnels().unwrap().report();
    let exposed = &report.exposed[0];
    assert_eq!(exposed.streams, 1);
    assert_eq!(exposed.received, payload.len() as u64);
    let mapped = client.dht.as_ref().unwrap().tunnels().unwrap().report();
    assert_eq!(mapped.mapped.len(), 1);
    assert_eq!(mapped.mapped[0].address, address);
    assert_eq!(mapped.mapped[0].sent, payload.len() as u64);
    assert_eq!(
        mapped.mapped[0].failed, 0,
        "{:?}",
        mapped.mapped[0].last_error
    );

    // The same figures on both metrics endpoints (README "Metrics").
    let bytes = 2.0 * payload.len() as f64;
    let served = crate::metrics::scrape(server.metrics_addr.unwrap()).await;
    let total = |samples, name| crate::metrics::sum(samples, name);
    assert_eq!(total(&served, "p2pdns_tunnel_served_streams_total"), 1.0);
    assert_eq!(total(&served, "p2pdns_tunnel_served_bytes_total"), bytes);
    let opened = crate::metrics::scrape(client.metrics_addr.unwrap()).await;
    assert_eq!(total(&opened, "p2pdns_tunnel_connections_total"), 1.0);
    assert_eq!(
        total(&opened, "p2pdns_tunnel_connection_failures_total"),
        0.0
    );
    assert_eq!(total(&opened, "p2pdns_tunnel_bytes_total"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_an_allow_list_refuses_other_keys() {
    let (server, client) = pair().await;
    let echo = echo_server().await;
    let name = random_name("private");
    let port = reserved_port();
    // An allow list that holds the server's own key only: the client is not on it.
    let own_key = server.dht.as_ref().unwrap().key_name().to_ascii();
    expose(
        server.dht.as_ref().unwrap(),
        spec(&name, port, echo, vec![own_key]),
    )
    .await;
    let address = tunnel_address(&client, &name).await;
    // The refusal resets the connection: when it comes quickly enough, already the connect
    // reads it.
    let outcome = match TcpStream::connect((address, port)).await {
        Err(error) => Err(error),
        Ok(mut tcp) => {
            let _ = tcp.write_all(b"hello\n").await;
            let mut buf = [0; 16];
            tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .unwrap()
        }
    };
    assert!(
        outcome
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection is reset, not answered: {outcome:?}"
    );
    let report = server.dht.as_ref().unwrap().tunnels().unwrap().report();
    assert_eq!(report.refused.not_allowed, 1);
    assert_eq!(report.exposed[0].streams, 0);
    let mapped = client.dht.as_ref().unwrap().tunnels().unwrap().report();
    let error = mapped.mapped[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("allow list"), "the client says why: {error}");
}

/// Opens a raw tunnel stream from `from` to `to` and sends `request`; returns the reply.
async fn ask_stream(from: &TestDaemon, to: PeerId, request: TunnelRequest) -> TunnelReply {
    let mut control = from.dht.as_ref().unwrap().node().streams();
    let stream = tokio::time::timeout(WAIT, control.open_stream(to, PROTOCOL))
        .await
        .unwrap()
        .unwrap();
    let mut stream = stream.compat();
    request.write_to(&mut stream).await.unwrap();
    tokio::time::timeout(WAIT, TunnelReply::read_from(&mut stream))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_for_anything_not_exposed_is_refused_with_its_reason() {
    let (server, client) = pair().await;
    let dht = server.dht.as_ref().unwrap();
    let server_peer = dht.node().peer_id();
    let name = random_name("web");
    let port = reserved_port();
    // A service whose target nobody listens on.
    let closed = reserved_port();
    expose(
        dht,
        spec(&name, port, format!("127.0.0.1:{closed}"), Vec::new()),
    )
    .await;

    let other_port = TunnelRequest {
        name: name.clone(),
        port: port.wrapping_add(1).max(1),
    };
    let reply = ask_stream(&client, server_peer, other_port).await;
    assert_eq!(reply.status, Status::NotExposed, "{reply:?}");
    assert!(reply.reason.contains("not exposed"), "{reply:?}");

    let other_name = TunnelRequest {
        name: random_name("other"),
        port,
    };
    let reply = ask_stream(&client, server_peer, other_name).await;
    assert_eq!(reply.status, Status::NotExposed, "{reply:?}");

    let unreachable = TunnelRequest { name, port };
    let reply = ask_stream(&client, server_peer, unreachable).await;
    assert_eq!(reply.status, Status::Unreachable, "{reply:?}");

    let report = dht.tunnels().unwrap().report();
    assert_eq!(report.refused.not_exposed, 2);
    assert_eq!(report.refused.unreachable, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_over_the_control_socket_announces_or_changes_nothing() {
    use p2pdns::control::{Request, Response, call};
    let (server, client) = pair().await;
    let echo = echo_server().await;
    let port = reserved_port();
    let ask = |name: String| Request::Expose(spec(&name, port, echo, Vec::new()));

    // Another node's key name can only be published by that node: nothing is exposed.
    let other = client.dht.as_ref().unwrap().key_name().to_ascii();
    let error = call(&server.data_dir, false, &ask(other))
        .await
        .unwrap_err();
    assert!(
        p2pdns::error::one_line(&error).contains("key name of another key"),
        "{error}"
    );
    // Nor a name another node owns.
    let taken = random_name("taken");
    let taken_set = Name::from_ascii(format!("{taken}.")).unwrap();
    client
        .dht
        .as_ref()
        .unwrap()
        .publish(&taken_set, Vec::new())
        .await
        .unwrap();
    // Once the server's node sees the client's record for it:
    let deadline = tokio::time::Instant::now() + WAIT;
    while server
        .dht
        .as_ref()
        .unwrap()
        .resolve_record(&taken_set)
        .await
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{taken} never resolved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let error = call(&server.data_dir, false, &ask(taken.clone()))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("belongs to another key"),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&client.dht.as_ref().unwrap().key_name().to_ascii()),
        "{error}"
    );

    // Nor the reserved name, nor a name below it.
    for reserved in ["p2pdns", "www.p2pdns.p2p"] {
        let error = call(&server.data_dir, false, &ask(reserved.into()))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("reserved"), "{error}");
    }
    let tunnels = server.dht.as_ref().unwrap().tunnels().unwrap();
    assert!(
        tunnels.report().exposed.is_empty(),
        "{:?}",
        tunnels.report()
    );

    // A name of its own is exposed and announced in its record.
    let name = random_name("ctl");
    let response = call(&server.data_dir, false, &ask(name.clone()))
        .await
        .unwrap();
    let Response::Exposed { service, seq, .. } = response else {
        panic!("{response:?}");
    };
    assert_eq!(service.name, name);
    assert!(seq.is_some(), "the record announcing it was signed");
    let address = tunnel_address(&client, &name).await;
    let mut tcp = TcpStream::connect((address, port)).await.unwrap();
    tcp.write_all(b"ping\n").await.unwrap();
    let mut buf = [0; 5];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping\n");

    // Unexposed: the record no longer announces it, and the client's resolver stops mapping it
    // once its cached copy is stale.
    let response = call(
        &server.data_dir,
        false,
        &Request::Unexpose {
            name: name.clone(),
            port: None,
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(&response, Response::Unexposed { ports, .. } if ports == &vec![port]),
        "{response:?}"
    );
    let own = server.dht.as_ref().unwrap().own_names();
    let record = own
        .iter()
        .find(|r| r.name.to_ascii() == format!("{name}."))
        .unwrap();
    assert!(record.records.is_empty(), "{:?}", record.records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_a_local_program_is_never_answered_with_the_tunnel_address() {
    let (server, client) = pair().await;
    let echo = echo_server().await;
    let name = random_name("clash");
    // A local program holds the port on every address (as sshd on 0.0.0.0:22 would): a
    // tunnel address would lead programs to it instead of the service.
    let local = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = local.local_addr().unwrap().port();
    expose(
        server.dht.as_ref().unwrap(),
        spec(&name, port, echo, Vec::new()),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let refused = loop {
        let answer = ask(client.addr, &name, RecordType::A).await;
        if answer.metadata.response_code == ResponseCode::ServFail {
            break answer;
        }
        assert!(
            answer.answers.is_empty(),
            "no address while the port is held: {answer:?}"
        );
        assert!(tokio::time::Instant::now() < deadline, "{answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.answers.is_empty(), "{refused:?}");
    let (code, text) = crate::support::ede(&refused).expect("an Extended DNS Error says why");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("cannot listen"), "{text}");
    let report = client.dht.as_ref().unwrap().tunnels().unwrap().report();
    let error = report.mapped[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("cannot listen"), "{error}");

    // Once the program lets go of the port, the name is answered and works.
    drop(local);
    let address = tunnel_address(&client, &name).await;
    let mut tcp = TcpStream::connect((address, port)).await.unwrap();
    tcp.write_all(b"hi\n").await.unwrap();
    let mut buf = [0; 3];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_says_what_it_replaced_and_unexpose_and_unpublish_refuse_mistakes() {
    use p2pdns::control::{Request, Response, call};
    let server = TestDaemon::start(tunnel_config(&[])).await;
    let dir = &server.data_dir;
    let echo = echo_server().await;
    let name = random_name("ctl");
    let port = reserved_port();
    let closed = reserved_port();

    // Nothing answers at the target: exposed, with a warning.
    let first = spec(&name, port, format!("127.0.0.1:{closed}"), Vec::new());
    let response = call(dir, false, &Request::Expose(first)).await.unwrap();
    let Response::Exposed {
        replaced,
        unreachable,
        ..
    } = response
    else {
        panic!("{response:?}");
    };
    assert!(replaced.is_none());
    assert!(
        unreachable.is_some_and(|why| why.contains(&closed.to_string())),
        "the unreachable target is named"
    );

    // The same name and port again: the earlier settings are named as replaced.
    let second = spec(&name, port, echo, Vec::new());
    let response = call(dir, false, &Request::Expose(second)).await.unwrap();
    let Response::Exposed {
        replaced,
        unreachable,
        ..
    } = response
    else {
        panic!("{response:?}");
    };
    assert_eq!(replaced.unwrap().to, format!("127.0.0.1:{closed}"));
    assert!(unreachable.is_none());

    // Unpublishing a name that still serves is refused; so is unexposing a port it does not.
    let unpublish = Request::Unpublish { name: name.clone() };
    let error = call(dir, false, &unpublish).await.unwrap_err().to_string();
    assert!(error.contains("unexpose"), "{error}");
    let wrong = Request::Unexpose {
        name: name.clone(),
        port: Some(port.wrapping_add(1).max(1)),
    };
    let error = call(dir, false, &wrong).await.unwrap_err().to_string();
    assert!(error.contains(&format!("it exposes {port}")), "{error}");
    let nothing = Request::Unexpose {
        name: random_name("nothing"),
        port: None,
    };
    assert!(call(dir, false, &nothing).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_listens_again_before_anyone_asks() {
    let (server, mut client) = pair().await;
    let echo = echo_server().await;
    let name = random_name("again");
    let port = reserved_port();
    expose(
        server.dht.as_ref().unwrap(),
        spec(&name, port, echo, Vec::new()),
    )
    .await;
    let address = tunnel_address(&client, &name).await;

    // The client restarts on its data directory; a program still holding the address (a
    // browser's DNS cache) connects without asking DNS again.
    let mut config = tunnel_config(&server.p2p_addrs);
    let range = client
        .dht
        .as_ref()
        .unwrap()
        .tunnels()
        .unwrap()
        .report()
        .mapped[0]
        .address;
    config.tunnel.address_range =
        format!("{}/24", std::net::Ipv4Addr::from(u32::from(range) & !0xff))
            .parse()
            .unwrap();
    client.keep_dir();
    let dir = client.data_dir.clone();
    client.stop().await.unwrap();
    let _client = TestDaemon::start_in(config, dir).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tcp = loop {
        match TcpStream::connect((address, port)).await {
            Ok(tcp) => break tcp,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{address}:{port} never listened again: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    tcp.write_all(b"back\n").await.unwrap();
    let mut buf = [0; 5];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"back\n");
}

/// Connections to a name whose serving daemon stopped: each one is reset and counted as failed,
/// none stays counted as open, and the error says the peer is not reachable instead of
/// libp2p's dial error for every address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_a_stopped_server_fail_and_none_stays_open() {
    let (server, client) = pair().await;
    let echo = echo_server().await;
    let name = random_name("gone");
    let port = reserved_port();
    expose(
        server.dht.as_ref().unwrap(),
        spec(&name, port, echo, Vec::new()),
    )
    .await;
    let address = tunnel_address(&client, &name).await;
    // A tunnel that works first, so that the report has a last path.
    let mut tcp = TcpStream::connect((address, port)).await.unwrap();
    tcp.write_all(b"hello\n").await.unwrap();
    let mut echoed = [0; 6];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut echoed))
        .await
        .expect("echoed within the wait")
        .unwrap();
    drop(tcp);
    let mapped = tunnels_over_control(&client).await;
    assert_eq!(mapped.path, Some(ConnectionPath::Direct), "{mapped:?}");
    assert_eq!(mapped.connected, Some(ConnectionPath::Direct), "{mapped:?}");
    server.stop().await.unwrap();

    let tunnels = client.dht.as_ref().unwrap().tunnels().unwrap();
    // A dial of each of the server's addresses times out within 6 s (QUIC): a few tries.
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    let mut tries = 0;
    let error = loop {
        // A failure that comes quickly enough resets the connection before the connect returns.
        let outcome = match TcpStream::connect((address, port)).await {
            Err(error) => Err(error),
            Ok(mut tcp) => {
                let _ = tcp.write_all(b"hello\n").await;
                tokio::time::timeout(3 * WAIT, tcp.read(&mut [0; 8]))
                    .await
                    .expect("the connection ends")
            }
        };
        assert!(
            outcome
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a reset, not an answer or a clean end: {outcome:?}"
        );
        tries += 1;
        let error = tunnels.report().mapped[0]
            .last_error
            .clone()
            .unwrap_or_default();
        if error.contains("is not reachable") {
            break error;
        }
        assert!(tokio::time::Instant::now() < deadline, "{error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!error.contains("Failed to negotiate"), "{error}");
    let mapped = &tunnels.report().mapped[0];
    assert_eq!(
        (mapped.open, mapped.connections, mapped.failed),
        (0, tries + 1, tries),
        "{mapped:?}"
    );
    assert!(mapped.last_error_at.is_some(), "{mapped:?}");
    // `p2pdns tunnels` no longer shows the path of the last tunnel as if it were open.
    let mapped = tunnels_over_control(&client).await;
    assert_eq!(mapped.path, Some(ConnectionPath::Direct), "{mapped:?}");
    assert_eq!(mapped.connected, None, "{mapped:?}");
}

/// The first tunnelled name of `daemon`'s `tunnels` report, asked over its control socket.
async fn tunnels_over_control(daemon: &TestDaemon) -> p2pdns::tunnel::MappedName {
    let response =
        p2pdns::control::call(&daemon.data_dir, false, &p2pdns::control::Request::Tunnels)
            .await
            .expect("the control socket answers");
    match response {
        p2pdns::control::Response::Tunnels(report) => report.mapped[0].clone(),
        other => panic!("not a tunnels report: {other:?}"),
    }
}
