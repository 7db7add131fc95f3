use std::net::Ipv4Addr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;
use crate::tunnel::mapped::MappedName;

/// A name's figures and the count of every name's open connections.
fn state() -> (Arc<NameState>, Arc<AtomicUsize>) {
    let state = NameState::new("site.p2p", Ipv4Addr::new(127, 77, 0, 5), PeerId::random());
    (Arc::new(state), Arc::new(AtomicUsize::new(0)))
}

/// A local program's connection: its end, and the daemon's end (set to reset, as
/// `connection` does).
async fn local_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let program = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (daemon, _) = listener.accept().await.unwrap();
    wire::reset(&daemon).unwrap();
    (program, daemon)
}

fn report(state: &NameState) -> MappedName {
    state.report(vec![80])
}

/// An opened stream whose other end is returned: the serving peer's side.
fn accepted() -> (Opened<DuplexStream>, DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let opened = Opened {
        stream: ours,
        path: ConnectionPath::Direct,
        relayed: None,
    };
    (opened, theirs)
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_tunnel_never_opens_fails_and_closes_after_the_open_timeout() {
    let (state, all) = state();
    let (mut program, daemon) = local_pair().await;
    let tracked = Tracked::new(&state, &all);
    let never = std::future::pending::<Result<Opened<DuplexStream>, OpenError>>();
    let carried = carry(daemon, 80, tracked, never, Duration::from_secs(3600));
    tokio::time::timeout(OPEN_TIMEOUT * 2, carried)
        .await
        .expect("the wait for the tunnel is bounded");
    let report = report(&state);
    assert_eq!((report.open, report.failed), (0, 1), "{report:?}");
    assert_eq!(all.load(Ordering::Relaxed), 0);
    let error = report.last_error.unwrap_or_default();
    assert!(error.contains("no tunnel within 30 s"), "{error}");
    // The program reads a reset, not an end that looks like an empty answer.
    let read = program.read(&mut [0; 8]).await;
    assert!(
        read.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
}

#[tokio::test]
async fn a_tunnel_that_is_refused_or_cut_fails_and_one_that_ends_cleanly_does_not() {
    let (state, all) = state();
    let idle = Duration::from_secs(3600);

    // Refused: counted, with the reason.
    let (_program, daemon) = local_pair().await;
    let refused = async {
        Err::<Opened<DuplexStream>, _>(OpenError::Refused {
            status: Status::Busy,
            reason: "busy".into(),
        })
    };
    carry(daemon, 80, Tracked::new(&state, &all), refused, idle).await;
    let after_refusal = report(&state);
    assert_eq!((after_refusal.open, after_refusal.failed), (0, 1));
    assert_eq!(after_refusal.opened_since_error, 0);

    // Ends cleanly: the program half-closes, the peer sends END (kind 1).
    let (mut program, daemon) = local_pair().await;
    let (opened, mut peer) = accepted();
    program.shutdown().await.unwrap();
    peer.write_all(&[1]).await.unwrap();
    carry(
        daemon,
        80,
        Tracked::new(&state, &all),
        async { Ok(opened) },
        idle,
    )
    .await;
    let after_clean = report(&state);
    assert_eq!((after_clean.open, after_clean.failed), (0, 1));
    assert_eq!(
        after_clean.opened_since_error, 1,
        "the refusal is history now"
    );
    assert_eq!(program.read(&mut [0; 8]).await.unwrap(), 0, "a clean end");

    // Cut: the peer's stream ends without END.
    let (_program, daemon) = local_pair().await;
    let (opened, peer) = accepted();
    drop(peer);
    carry(
        daemon,
        80,
        Tracked::new(&state, &all),
        async { Ok(opened) },
        idle,
    )
    .await;
    let after_cut = report(&state);
    assert_eq!(
        (after_cut.open, after_cut.connections, after_cut.failed),
        (0, 3, 2)
    );
    // On a direct connection, no relay is blamed.
    let error = after_cut.last_error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("the tunnel was cut before its end: the peer's stream closed (on a direct connection: the peer stopped")
            && !error.contains("relay"),
        "{after_cut:?}"
    );
    assert_eq!(all.load(Ordering::Relaxed), 0);

    // Cut on a relayed connection: the relay's limits, shared by the connection's tunnels.
    let (_program, daemon) = local_pair().await;
    let (mut opened, peer) = accepted();
    opened.path = ConnectionPath::Relayed;
    drop(peer);
    carry(
        daemon,
        80,
        Tracked::new(&state, &all),
        async { Ok(opened) },
        idle,
    )
    .await;
    let error = report(&state).last_error.unwrap_or_default();
    assert!(
        error.contains("goes through a relay, which ends it at its time and byte limits, shared by every tunnel between them")
            && error.contains("2 minutes and 1 MiB per relayed connection between two nodes"),
        "{error}"
    );
}
