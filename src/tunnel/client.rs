//! The client side: each tunnelled name gets a local address, listeners on it at the ports its
//! record lists, and each TCP connection accepted there becomes one stream to the serving peer
//! (docs/PROTOCOL.md sections 9.2 and 9.4).
//!
//! The path to a peer is set up once per peer at a time: connect (directly, at the addresses
//! the DHT and rendezvous give, or through a relay), then give hole punching a moment to make
//! it direct. libp2p-stream puts a stream on any of the peer's connections, so once a direct
//! connection is up the relayed ones are closed before the next stream opens, unless streams
//! that started over the relay still run on them.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use libp2p::PeerId;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinSet,
    time::Instant,
};
use tokio_util::{
    compat::{Compat, FuturesAsyncReadCompatExt},
    task::AbortOnDropHandle,
};
use tracing::{debug, info, warn};

use super::{
    PROTOCOL, lock,
    mapped::{MappedName, NameState, Tracked},
    service::ServiceTable,
    wire::{self, SpliceError, Status, TunnelReply, TunnelRequest, WireError},
};
use crate::{
    log_limit::LogLimit,
    nat::connect::connect_direct_settling,
    p2p::{ConnectionPath, NodeError, NodeHandle},
};

/// How many times a stream is opened before giving up when the peer drops them unanswered
/// (libp2p-stream drops inbound streams its acceptor is not ready for, as under a burst).
const OPEN_ATTEMPTS: u32 = 5;
/// How long the serving peer has to reply (docs/PROTOCOL.md section 9.2).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a local connection waits for its tunnel to open (a connection to the serving
/// peer, hole punching, the stream and its reply) before it fails: the local program has
/// likely given up by then, and a connection that waits forever would count as open forever.
/// Opens queue behind each other on one connection, and connecting alone may take 15 s.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// After hole punching failed for a peer, how long new connections go through the relay
/// without waiting for it again.
const RELAYED_MEMORY: Duration = Duration::from_secs(60);
/// How long a new direct connection must last before tunnel streams move to it: shorter than
/// `p2pdns connect`'s, since a user waits on the first connection (a hole-punched connection
/// that dies at once is usually gone within a round trip).
const DIRECT_SETTLE: Duration = Duration::from_millis(100);
/// After a failed attempt to connect to a peer, the first wait before the next; it doubles
/// with each failure in a row, up to [`MAX_BACKOFF`].
const DIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for relayed connections to close once a direct one is up.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Backlog of each local listener.
const BACKLOG: u32 = 1024;

/// The limits of the client side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientLimits {
    pub(crate) max_connections: usize,
    pub(crate) idle: Duration,
    pub(crate) direct_wait: Duration,
}

/// A tunnelled name: its state and a listener task per port (aborted when dropped).
struct Mapping {
    state: Arc<NameState>,
    listeners: BTreeMap<u16, AbortOnDropHandle<()>>,
}

/// What the client knows of the path to one peer.
#[derive(Default)]
struct PeerPath {
    /// When hole punching last left the peer relayed.
    relayed_since: Option<Instant>,
    /// Streams opened while the only connection went through a relay, still open.
    relayed_streams: usize,
    /// Connecting failed this many times in a row; no new attempt before `retry_at`, so that
    /// a burst of local connections does not each dial (and use up the relay's circuits).
    failures: u32,
    retry_at: Option<Instant>,
    /// Why the last attempt failed, told again while the next one waits.
    last_failure: String,
}

/// What every connection task shares.
pub(crate) struct Shared {
    node: NodeHandle,
    limits: ClientLimits,
    services: Arc<Mutex<ServiceTable>>,
    /// Local connections open through every name (`tunnel.max_connections`).
    open: Arc<AtomicUsize>,
    paths: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<PeerPath>>>>,
}

/// The client side: tunnelled names and their listeners.
pub(crate) struct Client {
    shared: Arc<Shared>,
    mappings: Mutex<BTreeMap<String, Mapping>>,
}

impl Client {
    pub(crate) fn new(
        node: NodeHandle,
        limits: ClientLimits,
        services: Arc<Mutex<ServiceTable>>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                node,
                limits,
                services,
                open: Arc::new(AtomicUsize::new(0)),
                paths: Mutex::new(HashMap::new()),
            }),
            mappings: Mutex::new(BTreeMap::new()),
        }
    }

    /// Listens on `address` at `ports` for `name` (`site.p2p`) served by `peer`: ports no
    /// longer listed are closed, new ones opened.
    ///
    /// # Errors
    /// A port that cannot be listened on (another program holds it on every address, or it is
    /// below 1024 without the capability): the name must not be answered, or a program would
    /// reach whatever holds that port on this machine instead of the service. The error is
    /// logged once per distinct message and kept as the name's last error.
    pub(crate) fn map(
        &self,
        name: &str,
        address: Ipv4Addr,
        peer: PeerId,
        ports: &[u16],
    ) -> Result<(), std::io::Error> {
        let mut mappings = lock(&self.mappings);
        let mapping = mappings.entry(name.to_owned()).or_insert_with(|| Mapping {
            state: Arc::new(NameState::new(name, address, peer)),
            listeners: BTreeMap::new(),
        });
        let previous = std::mem::replace(&mut *lock(&mapping.state.peer), peer);
        if previous != peer {
            info!(%name, %peer, "tunnelled name now served by another peer");
        }
        mapping.listeners.retain(|port, _| ports.contains(port));
        for &port in ports {
            if mapping.listeners.contains_key(&port) {
                continue;
            }
            match listen(SocketAddr::from((address, port))) {
                Ok(listener) => {
                    debug!(%name, %address, port, "listening for a tunnelled name");
                    let task =
                        accept_loop(listener, port, mapping.state.clone(), self.shared.clone());
                    mapping
                        .listeners
                        .insert(port, AbortOnDropHandle::new(tokio::spawn(task)));
                }
                Err(error) => {
                    let message = format!(
                        "cannot listen on {address}:{port}, so {name} is not answered: {error}{}",
                        if error.kind() == std::io::ErrorKind::AddrInUse {
                            " (a program on this machine holds that port on every address)"
                        } else {
                            ""
                        }
                    );
                    if mapping.state.note_error(message.clone()) {
                        warn!("{message}");
                    }
                    return Err(std::io::Error::new(error.kind(), message));
                }
            }
        }
        Ok(())
    }

    /// Sets each of `mapped`'s [`MappedName::connected`] from the node's connections to its
    /// peer now (one question to the node per peer; a node that does not answer leaves it
    /// `None`, read as none open).
    pub(crate) async fn fill_connected(&self, mapped: &mut [MappedName]) {
        let mut paths: HashMap<PeerId, Option<ConnectionPath>> = HashMap::new();
        for name in mapped {
            let path = match paths.get(&name.peer) {
                Some(path) => *path,
                None => {
                    let open = self.shared.node.connections(name.peer).await;
                    let path = ConnectionPath::best_of(&open.unwrap_or_default());
                    paths.insert(name.peer, path);
                    path
                }
            };
            name.connected = path;
        }
    }

    /// The tunnelled names, by name.
    pub(crate) fn report(&self) -> Vec<MappedName> {
        lock(&self.mappings)
            .values()
            .map(|m| m.state.report(m.listeners.keys().copied().collect()))
            .collect()
    }
}

/// A listener on `addr` that a restarted daemon can take over at once (SO_REUSEADDR). An
/// address the system does not have yet (macOS) is added to the loopback interface first.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let bind = || {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    match bind() {
        Err(error) if error.kind() == std::io::ErrorKind::AddrNotAvailable => {
            if let std::net::IpAddr::V4(ip) = addr.ip() {
                crate::os::loopback::add_alias(ip)?;
            }
            bind()
        }
        other => other,
    }
}

/// Accepts connections for one name and port until aborted (dropping the task aborts its
/// connections too).
async fn accept_loop(listener: TcpListener, port: u16, state: Arc<NameState>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let tracked = Tracked::new(&state, &shared.open);
                    // Counted in `open` already, hence `>`.
                    if shared.open.load(Ordering::Relaxed) > shared.limits.max_connections {
                        let _ = wire::reset(&tcp);
                        tracked.fail(format!(
                            "refused a connection: {} tunnelled connections are open (tunnel.max_connections)",
                            shared.limits.max_connections
                        ));
                        continue;
                    }
                    connections.spawn(connection(tcp, port, tracked, shared.clone()));
                }
                Err(error) => {
                    debug!(%error, "accepting a tunnelled connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Tunnels that could not be opened: a local program (or a web page) can open connections
/// to a tunnelled address as fast as it likes, and each failure would be a warning.
static NOT_OPENED: LogLimit = LogLimit::new("tunnel not opened");

/// One local connection: a stream to the serving peer (or the local service, when this node
/// serves the name itself), then the copy both ways; reset when it fails or is cut.
async fn connection(tcp: TcpStream, port: u16, tracked: Tracked, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    // Until the tunnel ends cleanly, any close is a reset, also the kernel's if this daemon dies:
    // the program must not take a cut transfer for a whole one.
    let _ = wire::reset(&tcp);
    let name = tracked.state().name.clone();
    let peer = *lock(&tracked.state().peer);
    if peer == shared.node.peer_id() {
        return local(tcp, port, tracked, &shared).await;
    }
    let opening = open_stream(&shared, peer, &name, port);
    carry(tcp, port, tracked, opening, shared.limits.idle).await;
    shared.node.in_use(peer);
}

/// Waits up to [`OPEN_TIMEOUT`] for `opening`, then carries `tcp` (set to reset when dropped,
/// see [`wire::reset`]) over the stream it opened until either side ends; `tracked` records
/// how the connection ended. `tcp` is closed cleanly only when the tunnel ended cleanly.
async fn carry<S>(
    mut tcp: TcpStream,
    port: u16,
    tracked: Tracked,
    opening: impl Future<Output = Result<Opened<S>, OpenError>>,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = tracked.state().name.clone();
    let opened = tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .unwrap_or(Err(OpenError::Timeout));
    let opened = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let message = crate::error::one_line(&error);
            if NOT_OPENED.admit() {
                warn!(port, "tunnel to {name} not opened: {message}");
            }
            return tracked.fail(message);
        }
    };
    tracked.opened();
    *lock(&tracked.state().path) = Some(opened.path);
    let ended = wire::splice(&mut tcp, opened.stream, idle, &tracked.state().bytes).await;
    match ended {
        Ok(_) => {
            let _ = wire::close_cleanly(&tcp);
            tracked.end();
        }
        // The local program went away (a browser resets connections it no longer needs): the
        // peer was told with an ABORT; nothing failed on the tunnel's side.
        Err(error @ SpliceError::Tcp(_)) => {
            debug!(%name, port, "tunnelled connection closed by the local program: {}", crate::error::one_line(&error));
            tracked.end();
        }
        Err(error) => {
            let mut message = crate::error::one_line(&error);
            if let SpliceError::Cut(_) = error {
                message.push_str(SpliceError::cut_cause(Some(opened.path)));
            }
            warn!(%name, port, "tunnel cut: {message}");
            tracked.fail(message);
        }
    }
    drop(opened.relayed);
}

/// This node serves the name itself: connect to the service's target, if it is exposed.
async fn local(mut tcp: TcpStream, port: u16, tracked: Tracked, shared: &Shared) {
    let name = tracked.state().name.clone();
    let target = lock(&shared.services)
        .find(&name, port)
        .map(|s| s.to.clone());
    let Some(target) = target else {
        return tracked.fail(format!("{name} port {port} is not exposed here"));
    };
    let mut service = match tokio::time::timeout(OPEN_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(service)) => service,
        Ok(Err(error)) => {
            return tracked.fail(format!("the service at {target} is unreachable: {error}"));
        }
        Err(_) => {
            return tracked.fail(format!(
                "the service at {target} did not answer within {} s",
                OPEN_TIMEOUT.as_secs()
            ));
        }
    };
    tracked.opened();
    match tokio::io::copy_bidirectional(&mut tcp, &mut service).await {
        Ok((sent, received)) => {
            tracked.state().bytes.add(sent, received);
            let _ = wire::close_cleanly(&tcp);
        }
        Err(error) => {
            debug!(%name, port, %error, "a connection to a service of this node ended early")
        }
    }
    tracked.end();
}

/// Errors opening a tunnel stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// No connection to the peer could be made (the error names the peer and says why).
    #[error(transparent)]
    Connect(crate::nat::connect::ConnectError),
    /// The node is gone or busy.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// libp2p could not open the stream (the peer does not serve tunnels, or the connection
    /// failed).
    #[error("cannot open a tunnel stream")]
    Open(#[source] libp2p_stream::OpenStreamError),
    /// The stream failed before the reply.
    #[error("the tunnel request failed")]
    Wire(#[source] WireError),
    /// Connecting to the peer failed a moment ago; no new attempt yet.
    #[error(
        "connecting to the serving peer failed {failures} time(s) in a row (last: {last}); next try in {secs} s"
    )]
    Backoff {
        /// Failures in a row.
        failures: u32,
        /// Why the last attempt failed, in one line.
        last: String,
        /// Seconds until the next attempt, rounded up.
        secs: u64,
    },
    /// The peer dropped every stream unanswered (it is overloaded).
    #[error("the serving peer is busy: it dropped {OPEN_ATTEMPTS} streams unanswered")]
    NotTaken,
    /// The tunnel did not open within [`OPEN_TIMEOUT`].
    #[error(
        "no tunnel within {} s: connecting to the serving peer or opening a stream to it took too long",
        OPEN_TIMEOUT.as_secs()
    )]
    Timeout,
    /// The peer did not reply in time.
    #[error("the serving peer did not reply within {} s", REPLY_TIMEOUT.as_secs())]
    NoReply,
    /// The peer refused.
    #[error("the serving peer refused: {reason}")]
    Refused {
        /// The status it sent.
        status: Status,
        /// Its reason.
        reason: String,
    },
}

/// An accepted stream, its path, and the mark of a stream riding a relayed connection.
struct Opened<S = Compat<libp2p::Stream>> {
    stream: S,
    path: ConnectionPath,
    relayed: Option<RelayedStream>,
}

/// A stream opened while the peer was reachable only through a relay: while one lives, the
/// relayed connection is kept.
struct RelayedStream(Arc<tokio::sync::Mutex<PeerPath>>);

impl Drop for RelayedStream {
    fn drop(&mut self) {
        let path = self.0.clone();
        // Not at shutdown, when no runtime is left to count for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut path = path.lock().await;
                path.relayed_streams = path.relayed_streams.saturating_sub(1);
            });
        }
    }
}

/// Opens a stream to `peer` for `name` port `port` and reads the reply; a stream the peer
/// dropped unanswered is opened again.
async fn open_stream(
    shared: &Shared,
    peer: PeerId,
    name: &str,
    port: u16,
) -> Result<Opened, OpenError> {
    let (path, relayed) = ensure_path(shared, peer).await?;
    let mut control = shared.node.streams();
    let request = TunnelRequest {
        name: name.to_owned(),
        port,
    };
    for attempt in 0..OPEN_ATTEMPTS {
        if attempt > 0 {
            // Exponential with jitter, so that a burst of connections does not retry in step.
            let base = 50u64 << attempt;
            let jitter = rand::random::<u64>() % base;
            tokio::time::sleep(Duration::from_millis(base + jitter)).await;
        }
        let stream = match control.open_stream(peer, PROTOCOL).await {
            Ok(stream) => stream,
            // The connection it picked closed under it: another may still be up.
            Err(libp2p_stream::OpenStreamError::Io(_)) if attempt + 1 < OPEN_ATTEMPTS => continue,
            Err(error) => return Err(OpenError::Open(error)),
        };
        let mut stream = stream.compat();
        if request.write_to(&mut stream).await.is_err() {
            continue;
        }
        match tokio::time::timeout(REPLY_TIMEOUT, TunnelReply::read_from(&mut stream)).await {
            Err(_) => return Err(OpenError::NoReply),
            Ok(Err(WireError::NotTaken(_))) => continue,
            Ok(Err(error)) => return Err(OpenError::Wire(error)),
            Ok(Ok(reply)) if reply.status == Status::Accepted => {
                // Keep the direct connection a while after this tunnel ends too.
                shared.node.in_use(peer);
                return Ok(Opened {
                    stream,
                    path,
                    relayed,
                });
            }
            Ok(Ok(reply)) => {
                return Err(OpenError::Refused {
                    status: reply.status,
                    reason: reply.reason,
                });
            }
        }
    }
    Err(OpenError::NotTaken)
}

/// Makes sure a connection to `peer` is up, direct where hole punching manages within the
/// configured wait, and that streams opened now take the direct one. Returns the path, and the
/// relayed-stream mark when the stream will ride a relay.
async fn ensure_path(
    shared: &Shared,
    peer: PeerId,
) -> Result<(ConnectionPath, Option<RelayedStream>), OpenError> {
    let lock_of = lock(&shared.paths).entry(peer).or_default().clone();
    let mut path = lock_of.lock().await;
    let open = shared.node.connections(peer).await?;
    let direct = open.iter().any(|c| c.path == ConnectionPath::Direct);
    let relayed = open.iter().any(|c| c.path == ConnectionPath::Relayed);
    let recently_relayed = path
        .relayed_since
        .is_some_and(|since| since.elapsed() < RELAYED_MEMORY);
    let now_direct = if direct {
        true
    } else if relayed && recently_relayed {
        false
    } else {
        if let Some(retry_at) = path.retry_at
            && Instant::now() < retry_at
        {
            return Err(OpenError::Backoff {
                failures: path.failures,
                last: path.last_failure.clone(),
                secs: (retry_at - Instant::now()).as_secs() + 1,
            });
        }
        let connected =
            connect_direct_settling(&shared.node, peer, shared.limits.direct_wait, DIRECT_SETTLE)
                .await;
        let connected = match connected {
            Ok(connected) => connected,
            Err(error) => {
                path.failures = path.failures.saturating_add(1);
                let backoff = (DIAL_BACKOFF * 2u32.pow(path.failures.min(6) - 1)).min(MAX_BACKOFF);
                path.retry_at = Some(Instant::now() + backoff);
                path.last_failure = crate::error::one_line(&error);
                return Err(OpenError::Connect(error));
            }
        };
        path.failures = 0;
        path.retry_at = None;
        connected.path == ConnectionPath::Direct
    };
    if now_direct {
        path.relayed_since = None;
        if path.relayed_streams == 0 && shared.node.close_relayed(peer).await? > 0 {
            wait_relayed_closed(shared, peer).await?;
        }
        return Ok((ConnectionPath::Direct, None));
    }
    if path.relayed_since.is_none() || !recently_relayed {
        info!(%peer, "no direct connection: tunnel streams go through the relay");
        path.relayed_since = Some(Instant::now());
    }
    path.relayed_streams += 1;
    drop(path);
    Ok((ConnectionPath::Relayed, Some(RelayedStream(lock_of))))
}

/// Waits (briefly) until the relayed connections to `peer` that were asked to close are gone:
/// until then libp2p-stream may still pick one for the next stream.
async fn wait_relayed_closed(shared: &Shared, peer: PeerId) -> Result<(), NodeError> {
    let deadline = Instant::now() + CLOSE_WAIT;
    while Instant::now() < deadline {
        let open = shared.node.connections(peer).await?;
        if !open.iter().any(|c| c.path == ConnectionPath::Relayed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
