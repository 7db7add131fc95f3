//! Tests of the tunnel stream's request, reply and frames: byte layouts and malformed input on
//! in-memory buffers, [`splice`] between real loopback TCP connections (two splices back to
//! back over an in-memory pipe, as client and server see each other), and the idle timeout on
//! paused time with in-memory pipes only.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter, DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use super::*;

const IDLE: Duration = Duration::from_secs(30);

/// Runs `f`, failing the test if it takes more than 20 s (of real time in socket tests).
async fn within<F: Future>(f: F) -> F::Output {
    timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

fn request_bytes() -> Vec<u8> {
    [&[1u8, 8][..], b"site.p2p", &[0x1f, 0x90]].concat()
}

#[tokio::test]
async fn a_request_round_trips_in_its_layout() {
    let request = TunnelRequest {
        name: "site.p2p".into(),
        port: 8080,
    };
    let mut written = Vec::new();
    request.write_to(&mut written).await.unwrap();
    assert_eq!(written, request_bytes());
    // The reader stops at the request's end: what follows is the client's.
    let input = [written.as_slice(), b"rest"].concat();
    let mut rest = input.as_slice();
    assert_eq!(TunnelRequest::read_from(&mut rest).await.unwrap(), request);
    assert_eq!(rest, b"rest");
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let mut not_ascii = request_bytes();
    not_ascii[3] = 0xc3;
    let cases: [(Vec<u8>, &str); 4] = [
        ([&[2u8][..], &request_bytes()[1..]].concat(), "Version(2)"),
        (vec![1, 0, 0, 80], "NameLength(0)"),
        ([&[1u8, 254][..], &[b'a'; 256]].concat(), "NameLength(254)"),
        (not_ascii, "NameNotAscii"),
    ];
    for (bytes, expected) in cases {
        let error = TunnelRequest::read_from(&mut bytes.as_slice()).await;
        assert_eq!(format!("{:?}", error.unwrap_err()), expected);
    }
    let whole = request_bytes();
    for cut in 0..whole.len() {
        let error = TunnelRequest::read_from(&mut &whole[..cut]).await;
        assert!(matches!(error, Err(WireError::Truncated)), "cut at {cut}");
    }
}

#[tokio::test]
async fn names_the_format_cannot_carry_are_not_written() {
    for (name, expected) in [
        (String::new(), "NameLength(0)"),
        ("a".repeat(254), "NameLength(254)"),
        ("été.p2p".into(), "NameNotAscii"),
    ] {
        let mut written = Vec::new();
        let error = TunnelRequest { name, port: 80 }
            .write_to(&mut written)
            .await;
        assert_eq!(format!("{:?}", error.unwrap_err()), expected);
        assert!(written.is_empty());
    }
}

#[tokio::test]
async fn replies_round_trip_with_every_status() {
    for (code, status) in Status::ALL.into_iter().enumerate() {
        assert_eq!(usize::from(status.code()), code);
        let reply = TunnelReply {
            status,
            reason: format!("because {status}"),
        };
        let mut written = Vec::new();
        reply.write_to(&mut written).await.unwrap();
        assert_eq!(written[0], status.code());
        assert_eq!(usize::from(written[1]), reply.reason.len());
        let read = TunnelReply::read_from(&mut written.as_slice()).await;
        assert_eq!(read.unwrap(), reply);
    }
}

#[tokio::test]
async fn a_long_reason_is_cut_at_a_character_boundary() {
    let reply = TunnelReply {
        status: Status::Busy,
        reason: "é".repeat(200),
    };
    let mut written = Vec::new();
    reply.write_to(&mut written).await.unwrap();
    assert_eq!(written.len(), 2 + 254);
    let read = TunnelReply::read_from(&mut written.as_slice())
        .await
        .unwrap();
    assert_eq!(read.reason, "é".repeat(127));
}

#[tokio::test]
async fn a_reply_cut_short_means_not_taken_and_an_unknown_status_is_refused() {
    let whole = [3u8, 4, b'f', b'u', b'l', b'l'];
    for cut in 0..whole.len() {
        let error = TunnelReply::read_from(&mut &whole[..cut]).await;
        assert!(
            matches!(error, Err(WireError::NotTaken(None))),
            "cut at {cut}"
        );
    }
    let error = TunnelReply::read_from(&mut &[6u8, 0][..]).await;
    assert!(matches!(error, Err(WireError::UnknownStatus(6))));
}

/// A connected pair of loopback TCP streams.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

type Splice = JoinHandle<(TcpStream, Result<Transfer, SpliceError>)>;

/// Splices `tcp` and `stream` in a task, and resets `tcp` if that fails, as the daemon does.
/// The task returns the TCP stream, so that a test decides when it is dropped.
fn spawn_splice(mut tcp: TcpStream, stream: DuplexStream) -> Splice {
    tokio::spawn(async move {
        let result = splice(&mut tcp, stream, IDLE, &Counters::default()).await;
        if result.is_err() {
            reset(&tcp).unwrap();
        }
        (tcp, result)
    })
}

/// A client application and a server application joined through a tunnel: TCP to the near
/// splice, an in-memory pipe as the stream, the far splice, TCP to the server.
struct Tunnel {
    client: TcpStream,
    server: TcpStream,
    near: Splice,
    far: Splice,
}

async fn tunnel() -> Tunnel {
    let (client, near_tcp) = tcp_pair().await;
    let (far_tcp, server) = tcp_pair().await;
    let (near_stream, far_stream) = duplex(256 * 1024);
    Tunnel {
        client,
        server,
        near: spawn_splice(near_tcp, near_stream),
        far: spawn_splice(far_tcp, far_stream),
    }
}

async fn result(splice: Splice) -> Result<Transfer, SpliceError> {
    within(splice).await.unwrap().1
}

/// Bytes without a period that frames could line up with (xorshift, fixed seed).
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn a_large_payload_is_echoed_through_two_splices() {
    let Tunnel {
        client,
        server,
        near,
        far,
    } = tunnel().await;
    let (mut server_read, mut server_write) = server.into_split();
    let echo = tokio::spawn(async move {
        tokio::io::copy(&mut server_read, &mut server_write).await?;
        server_write.shutdown().await
    });
    let payload = pattern(5 << 20);
    let (mut client_read, mut client_write) = client.into_split();
    let send = async {
        client_write.write_all(&payload).await.unwrap();
        client_write.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let ((), read) =
        within(async { tokio::join!(send, client_read.read_to_end(&mut echoed)) }).await;
    read.unwrap();
    assert!(echoed == payload, "the echo differs from the payload");
    within(echo).await.unwrap().unwrap();
    let both = Transfer {
        sent: 5 << 20,
        received: 5 << 20,
    };
    assert_eq!(result(near).await.unwrap(), both);
    assert_eq!(result(far).await.unwrap(), both);
}

#[tokio::test]
async fn a_half_closed_client_still_receives_the_response() {
    let mut t = tunnel().await;
    t.client.write_all(b"request").await.unwrap();
    t.client.shutdown().await.unwrap();
    let mut request = Vec::new();
    within(t.server.read_to_end(&mut request)).await.unwrap();
    assert_eq!(request, b"request");
    t.server.write_all(b"a response").await.unwrap();
    t.server.shutdown().await.unwrap();
    let mut response = Vec::new();
    within(t.client.read_to_end(&mut response)).await.unwrap();
    assert_eq!(response, b"a response");
    let near = Transfer {
        sent: 7,
        received: 10,
    };
    assert_eq!(result(t.near).await.unwrap(), near);
    let far = result(t.far).await.unwrap();
    assert_eq!((far.sent, far.received), (near.received, near.sent));
}

/// Reads until the end or an error, returning the error's kind (`None` for a clean EOF).
async fn end_of(tcp: &mut TcpStream) -> Option<io::ErrorKind> {
    let mut sink = Vec::new();
    within(tcp.read_to_end(&mut sink))
        .await
        .err()
        .map(|e| e.kind())
}

#[tokio::test]
async fn a_stream_cut_mid_transfer_resets_the_tcp_peer() {
    let mut t = tunnel().await;
    t.client.write_all(b"hello").await.unwrap();
    within(t.server.read_exact(&mut [0; 5])).await.unwrap();
    // The far side's stream goes away without END or ABORT (a relay's limit, a crash).
    t.far.abort();
    let (near_tcp, near) = within(t.near).await.unwrap();
    assert!(matches!(near, Err(SpliceError::Cut(_))), "{near:?}");
    drop(near_tcp);
    assert_eq!(
        end_of(&mut t.client).await,
        Some(io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn a_failed_tcp_connection_aborts_the_other_side() {
    let mut t = tunnel().await;
    t.client.write_all(b"hello").await.unwrap();
    within(t.server.read_exact(&mut [0; 5])).await.unwrap();
    reset(&t.client).unwrap();
    drop(t.client);
    let near = result(t.near).await;
    let Err(SpliceError::Tcp(error)) = near else {
        panic!("{near:?}")
    };
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    let (far_tcp, far) = within(t.far).await.unwrap();
    let Err(SpliceError::PeerAborted(reason)) = far else {
        panic!("{far:?}")
    };
    assert_eq!(reason, error.to_string());
    drop(far_tcp);
    assert_eq!(
        end_of(&mut t.server).await,
        Some(io::ErrorKind::ConnectionReset)
    );
}

/// Splices an in-memory "TCP" connection with `stream`, returning the application's end too.
async fn splice_in_memory(stream: DuplexStream) -> (Result<Transfer, SpliceError>, DuplexStream) {
    let (mut tcp, app) = duplex(1024);
    (
        splice(&mut tcp, stream, IDLE, &Counters::default()).await,
        app,
    )
}

#[tokio::test]
async fn frames_carry_data_and_end_in_their_layout() {
    let (stream, mut peer) = duplex(1024);
    let peer_side = async {
        peer.write_all(&[0, 0, 2, b'h', b'i', 1]).await.unwrap();
        let mut frames = Vec::new();
        peer.read_to_end(&mut frames).await.unwrap();
        frames
    };
    let app_side = |mut app: DuplexStream| async move {
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        app.write_all(b"yo").await.unwrap();
        app.shutdown().await.unwrap();
        got
    };
    let (mut tcp, app) = duplex(1024);
    let counters = Counters::default();
    let (spliced, frames, got) = within(async {
        tokio::join!(
            splice(&mut tcp, stream, IDLE, &counters),
            peer_side,
            app_side(app)
        )
    })
    .await;
    assert_eq!(got, b"hi");
    assert_eq!(frames, [0, 0, 2, b'y', b'o', 1]);
    let expected = Transfer {
        sent: 2,
        received: 2,
    };
    assert_eq!(spliced.unwrap(), expected);
}

#[tokio::test]
async fn data_is_flushed_both_ways_while_the_sender_is_quiet() {
    // Buffered on both sides, so only the splice's flushes make bytes arrive.
    let (stream, mut peer) = duplex(1024);
    let (tcp, mut app) = duplex(1024);
    let (mut stream, mut tcp) = (BufWriter::new(stream), BufWriter::new(tcp));
    let counters = Counters::default();
    let exchange = async {
        app.write_all(b"yo").await.unwrap();
        let mut frame = [0; 5];
        peer.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame, [0, 0, 2, b'y', b'o']);
        peer.write_all(&[0, 0, 2, b'h', b'i']).await.unwrap();
        let mut data = [0; 2];
        app.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"hi");
    };
    tokio::select! {
        () = within(exchange) => {}
        spliced = splice(&mut tcp, &mut stream, IDLE, &counters) => panic!("{spliced:?}"),
    }
}

#[tokio::test]
async fn an_abort_frame_ends_the_splice_with_its_reason_and_no_reply() {
    let (stream, mut peer) = duplex(1024);
    peer.write_all(&[2, 4, b'b', b'o', b'o', b'm'])
        .await
        .unwrap();
    let (spliced, _app) = within(splice_in_memory(stream)).await;
    assert!(matches!(spliced, Err(SpliceError::PeerAborted(ref r)) if r == "boom"));
    let mut frames = Vec::new();
    within(peer.read_to_end(&mut frames)).await.unwrap();
    assert!(frames.is_empty(), "{frames:?}");
}

#[tokio::test]
async fn protocol_errors_are_answered_with_abort() {
    let cases: [(&[u8], ProtocolViolation); 2] = [
        (&[7], ProtocolViolation::UnknownKind(7)),
        (&[0, 0, 0], ProtocolViolation::EmptyData),
    ];
    for (input, violation) in cases {
        let (stream, mut peer) = duplex(1024);
        peer.write_all(input).await.unwrap();
        let (spliced, _app) = within(splice_in_memory(stream)).await;
        assert!(matches!(spliced, Err(SpliceError::Protocol(v)) if v == violation));
        let mut frames = Vec::new();
        within(peer.read_to_end(&mut frames)).await.unwrap();
        let reason = violation.to_string();
        assert_eq!(
            frames,
            [&[2, reason.len() as u8], reason.as_bytes()].concat()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_idle_for_its_timeout_is_aborted() {
    let (stream, mut peer) = duplex(1024);
    let (mut tcp, _app) = duplex(1024);
    let counters = Counters::default();
    let start = Instant::now();
    // One byte at 20 s postpones the end to 50 s.
    let peer_side = async {
        sleep(Duration::from_secs(20)).await;
        peer.write_all(&[0, 0, 1, b'x']).await.unwrap();
        let mut frames = Vec::new();
        peer.read_to_end(&mut frames).await.unwrap();
        frames
    };
    let (spliced, frames) = tokio::join!(splice(&mut tcp, stream, IDLE, &counters), peer_side);
    assert!(
        matches!(spliced, Err(SpliceError::Idle(IDLE))),
        "{spliced:?}"
    );
    assert_eq!(start.elapsed().as_secs(), 50);
    assert_eq!(frames, [&[2, 13][..], b"idle for 30 s"].concat());
    let received = Transfer {
        sent: 0,
        received: 1,
    };
    assert_eq!(counters.transfer(), received);
}

/// Moves `len` bytes from `from` to `to` in 64 KiB writes and returns the rate in MiB/s.
async fn rate(mut from: TcpStream, mut to: TcpStream, len: usize) -> f64 {
    let start = Instant::now();
    let send = async move {
        let chunk = pattern(64 * 1024);
        for _ in 0..len / chunk.len() {
            from.write_all(&chunk).await.unwrap();
        }
        from.shutdown().await.unwrap();
    };
    let drain = async move {
        tokio::io::copy(&mut to, &mut tokio::io::sink())
            .await
            .unwrap()
    };
    let ((), moved) = tokio::join!(send, drain);
    assert_eq!(moved, len as u64);
    len as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// The tunnel's topology with unframed copies in place of the splices: the cost of the two
/// extra hops alone, the reference for the splices' own cost.
async fn unframed_rate(len: usize) -> f64 {
    let (client, mut near) = tcp_pair().await;
    let (mut far, server) = tcp_pair().await;
    let (mut near_stream, mut far_stream) = duplex(256 * 1024);
    tokio::spawn(async move { tokio::io::copy_bidirectional(&mut near, &mut near_stream).await });
    tokio::spawn(async move { tokio::io::copy_bidirectional(&mut far, &mut far_stream).await });
    rate(client, server, len).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --release --lib tunnel::wire -- --ignored --nocapture"]
async fn throughput_through_two_splices_against_plain_tcp() {
    const LEN: usize = 256 << 20;
    let (from, to) = tcp_pair().await;
    let plain = rate(from, to, LEN).await;
    let unframed = unframed_rate(LEN).await;
    let t = tunnel().await;
    let spliced = rate(t.client, t.server, LEN).await;
    println!(
        "plain TCP {plain:.0} MiB/s; same hops, unframed copies {unframed:.0} MiB/s; \
         through two splices {spliced:.0} MiB/s ({:.2}x plain, {:.2}x unframed)",
        spliced / plain,
        spliced / unframed
    );
}
