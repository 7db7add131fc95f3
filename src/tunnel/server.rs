//! The serving side: accepts tunnel streams from other nodes and connects each one to the local
//! target of the service it asks for, within the limits (docs/PROTOCOL.md section 9.3).
//!
//! One task owns the accept loop and the per-peer stream counts; each stream runs in a task of
//! its own set. Nothing but an exposed service is ever connected to: a stream for another name
//! or port, or from a key off the allow list, is refused with its reason, counted, and logged
//! once per client, name, port and reason.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpStream, task::JoinSet};
use tokio_util::{
    compat::FuturesAsyncReadCompatExt, sync::CancellationToken, task::AbortOnDropHandle,
};
use tracing::{debug, info, warn};

use super::{
    lock,
    service::{ServiceTable, peer_key_name},
    wire::{self, Counters, SpliceError, Status, TunnelReply, TunnelRequest},
};
use crate::p2p::{ConnectionPath, NodeHandle};

/// How long a client has to send its request once its stream is open.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a service's local target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a busy reply may take to write before the stream is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Busy replies in flight at most; past them, streams over the limits are dropped unanswered
/// (the client reads the end of the stream and gives up or tries again later).
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// Accepted streams waiting for the accept loop at most.
const ACCEPT_QUEUE: usize = 128;
/// Distinct refusals logged at most; later ones are only counted.
const MAX_LOGGED_REFUSALS: usize = 1024;

/// The limits of the serving side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLimits {
    pub(crate) max_streams: usize,
    pub(crate) max_streams_per_peer: usize,
    pub(crate) idle: Duration,
}

/// Live counters of one exposed service.
#[derive(Debug, Default)]
pub(crate) struct ServiceCounters {
    /// Streams open now.
    pub(crate) open: std::sync::atomic::AtomicU64,
    /// Streams accepted since start.
    pub(crate) streams: std::sync::atomic::AtomicU64,
    /// Bytes each way.
    pub(crate) bytes: Counters,
}

/// What the serving side has done since start, per service and per refusal reason.
#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    services: Mutex<HashMap<(String, u16), Arc<ServiceCounters>>>,
    refusals: Mutex<Refusals>,
}

#[derive(Debug, Default)]
struct Refusals {
    counts: BTreeMap<Status, u64>,
    logged: HashSet<(PeerId, String, u16, Status)>,
}

/// Refusals since start, by reason (the status sent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalCounts {
    /// Streams for a name or port not exposed here.
    pub not_exposed: u64,
    /// Streams from keys not on the service's allow list.
    pub not_allowed: u64,
    /// Streams over the limits.
    pub busy: u64,
    /// Streams whose local target could not be connected.
    pub unreachable: u64,
    /// Malformed or late requests.
    pub malformed: u64,
}

impl ServerStats {
    /// The counters of `name` port `port`, made on first use.
    pub(crate) fn service(&self, name: &str, port: u16) -> Arc<ServiceCounters> {
        lock(&self.services)
            .entry((name.to_owned(), port))
            .or_default()
            .clone()
    }

    /// Refusals since start, by reason.
    pub(crate) fn refusals(&self) -> RefusalCounts {
        let refusals = lock(&self.refusals);
        let count = |status| refusals.counts.get(&status).copied().unwrap_or(0);
        RefusalCounts {
            not_exposed: count(Status::NotExposed),
            not_allowed: count(Status::NotAllowed),
            busy: count(Status::Busy),
            unreachable: count(Status::Unreachable),
            malformed: count(Status::Malformed),
        }
    }

    /// Counts a refusal; returns whether it is the first of its kind (to be logged).
    fn refused(&self, peer: PeerId, name: &str, port: u16, status: Status) -> bool {
        let mut refusals = lock(&self.refusals);
        *refusals.counts.entry(status).or_default() += 1;
        refusals.logged.len() < MAX_LOGGED_REFUSALS
            && refusals
                .logged
                .insert((peer, name.to_owned(), port, status))
    }
}

/// The accept loop of tunnel streams.
pub(crate) struct Server {
    pub(crate) incoming: libp2p_stream::IncomingStreams,
    /// The node: told of each client whose stream was served, when it starts and ends, so that
    /// the direct connection with it stays open a while ([`NodeHandle::in_use`]), and asked for
    /// the path of a client's connections (to word a cut tunnel).
    pub(crate) node: NodeHandle,
    pub(crate) services: Arc<Mutex<ServiceTable>>,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) limits: ServerLimits,
}

impl Server {
    /// Serves tunnel streams until `stop`; open streams are cut when it returns.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let Self {
            incoming,
            node,
            services,
            stats,
            limits,
        } = self;
        // libp2p-stream hands streams over a channel without room and drops the ones its
        // acceptor is not polling for at that moment: a task that does nothing but move them
        // into a queue keeps up with bursts that the loop below, busy with its tasks, would not.
        let (queue, mut queued) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
        let forward = AbortOnDropHandle::new(tokio::spawn(forward(incoming, queue)));
        let mut streams: JoinSet<(PeerId, bool)> = JoinSet::new();
        let mut refusals: JoinSet<()> = JoinSet::new();
        let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
        loop {
            let (peer, stream) = tokio::select! {
                () = stop.cancelled() => break,
                Some(ended) = streams.join_next() => {
                    if let Ok((peer, served)) = ended {
                        if served {
                            node.in_use(peer);
                        }
                        if let Some(count) = per_peer.get_mut(&peer) {
                            *count -= 1;
                            if *count == 0 {
                                per_peer.remove(&peer);
                            }
                        }
                    }
                    continue;
                }
                Some(_) = refusals.join_next() => continue,
                next = queued.recv() => match next {
                    Some(accepted) => accepted,
                    None => break,
                },
            };
            let of_peer = per_peer.get(&peer).copied().unwrap_or(0);
            if streams.len() >= limits.max_streams || of_peer >= limits.max_streams_per_peer {
                if refusals.len() < MAX_REFUSALS_IN_FLIGHT {
                    let reason = format!(
                        "busy: this node serves at most {} tunnel streams, {} per client",
                        limits.max_streams, limits.max_streams_per_peer
                    );
                    let stats = stats.clone();
                    refusals.spawn(async move {
                        let mut stream = stream.compat();
                        if stats.refused(peer, "", 0, Status::Busy) {
                            log_refusal(peer, &reason);
                        }
                        let reply = TunnelReply::new(Status::Busy, reason);
                        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, reply.write_to(&mut stream))
                            .await;
                    });
                }
                continue;
            }
            *per_peer.entry(peer).or_default() += 1;
            let services = services.clone();
            let stats = stats.clone();
            let idle = limits.idle;
            let node = node.clone();
            streams.spawn(async move {
                let path = path_to(&node, peer).await;
                let served =
                    serve_stream(peer, stream, &services, &stats, (idle, path), &node).await;
                (peer, served)
            });
        }
        drop(forward);
        streams.shutdown().await;
        refusals.shutdown().await;
    }
}

/// Moves accepted streams into `queue` as fast as they come; a stream that finds the queue
/// full is dropped (its opener reads the end of the stream and tries again later).
async fn forward(
    mut incoming: libp2p_stream::IncomingStreams,
    queue: tokio::sync::mpsc::Sender<(PeerId, libp2p::Stream)>,
) {
    while let Some(accepted) = incoming.next().await {
        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = queue.try_send(accepted) {
            return;
        }
    }
}

/// The path of the connections to `peer` when all go the same way; `None` when some are
/// relayed and some direct (the stream's own is not told), or the node does not answer.
async fn path_to(node: &NodeHandle, peer: PeerId) -> Option<ConnectionPath> {
    let connections = node.connections(peer).await.ok()?;
    let first = connections.first()?.path;
    connections.iter().all(|c| c.path == first).then_some(first)
}

/// One stream: its request, the checks, the connection to the target, then the copy. `path`
/// is that of the client's connection, when known. Returns whether it was served (accepted);
/// refusals and malformed requests are not.
async fn serve_stream(
    peer: PeerId,
    stream: libp2p::Stream,
    services: &Mutex<ServiceTable>,
    stats: &ServerStats,
    (idle, path): (Duration, Option<ConnectionPath>),
    node: &NodeHandle,
) -> bool {
    let mut stream = stream.compat();
    let request =
        match tokio::time::timeout(REQUEST_TIMEOUT, TunnelRequest::read_from(&mut stream)).await {
            Ok(Ok(request)) => request,
            Ok(Err(error)) => {
                let reason = format!("malformed request: {error}");
                return refuse(&mut stream, peer, ("", 0), stats, Status::Malformed, reason).await;
            }
            Err(_) => {
                let reason = format!("no request within {} s", REQUEST_TIMEOUT.as_secs());
                return refuse(&mut stream, peer, ("", 0), stats, Status::Malformed, reason).await;
            }
        };
    let asked = (request.name.as_str(), request.port);
    let service = lock(services).find(&request.name, request.port).cloned();
    let Some(service) = service else {
        let reason = format!("{} port {} is not exposed here", asked.0, asked.1);
        return refuse(&mut stream, peer, asked, stats, Status::NotExposed, reason).await;
    };
    if !service.allows(&peer) {
        let reason = format!(
            "{} port {} admits only the keys on its allow list",
            asked.0, asked.1
        );
        return refuse(&mut stream, peer, asked, stats, Status::NotAllowed, reason).await;
    }
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&service.to)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => {
            let reason = format!(
                "the service behind it ({}) is unreachable: {error}",
                service.to
            );
            return refuse(&mut stream, peer, asked, stats, Status::Unreachable, reason).await;
        }
        Err(_) => {
            let reason = format!("the service behind it ({}) did not answer", service.to);
            return refuse(&mut stream, peer, asked, stats, Status::Unreachable, reason).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    // Until the tunnel ends cleanly, any close is a reset, also the kernel's if this daemon dies.
    let _ = wire::reset(&tcp);
    if TunnelReply::new(Status::Accepted, String::new())
        .write_to(&mut stream)
        .await
        .is_err()
    {
        return false;
    }
    node.in_use(peer);
    let counters = stats.service(&service.name, service.port);
    counters
        .streams
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    counters
        .open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client = peer_key_name(&peer).unwrap_or_else(|| peer.to_string());
    debug!(%client, service = %service.name, port = service.port, "tunnel stream accepted");
    let mut tcp = tcp;
    let ended = wire::splice(&mut tcp, stream, idle, &counters.bytes).await;
    counters
        .open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match ended {
        Ok(_) => {
            let _ = wire::close_cleanly(&tcp);
        }
        // Still set to reset: dropping it below tells the service the tunnel was cut.
        Err(error) => match ended_early(&error, path) {
            Some(message) => {
                info!(%client, service = %service.name, port = service.port, "tunnel ended early: {message}");
            }
            None => {
                debug!(%client, service = %service.name, port = service.port, "tunnel closed by the client: {}", crate::error::one_line(&error));
            }
        },
    }
    true
}

/// What to log at `info` for a tunnel that did not end cleanly, worded by the connection's
/// `path`; `None` when the client closed it (its program closed or reset the connection, or
/// it dropped the stream), which is no failure.
fn ended_early(error: &SpliceError, path: Option<ConnectionPath>) -> Option<String> {
    if error.peer_closed() || matches!(error, SpliceError::PeerAborted(_)) {
        return None;
    }
    let mut message = crate::error::one_line(error);
    if let SpliceError::Cut(_) = error {
        message.push_str(SpliceError::cut_cause(path));
    }
    Some(message)
}

/// Logs a refusal of `peer`'s stream, naming its key (the key name `--allow` takes) and its
/// peer id (what libp2p's own lines and `status --peers` show), every refusal alike.
fn log_refusal(peer: PeerId, reason: &str) {
    let client = peer_key_name(&peer).unwrap_or_else(|| peer.to_string());
    warn!(%client, %peer, "tunnel stream refused: {reason}");
}

/// Sends the refusal `status` with `reason`, counts it, and logs it the first time this client
/// is refused this way for this name and port.
async fn refuse<S>(
    stream: &mut S,
    peer: PeerId,
    (name, port): (&str, u16),
    stats: &ServerStats,
    status: Status,
    reason: String,
) -> bool
where
    S: tokio::io::AsyncWrite + Unpin,
{
    if stats.refused(peer, name, port, status) {
        log_refusal(peer, &reason);
    }
    let reply = TunnelReply::new(status, reason);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, reply.write_to(stream)).await;
    // Not served.
    false
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// A client closing its tunnels made the server log "tunnel ended early: … (a relay's
    /// circuit limit, or the peer stopped): sending stopped by peer: error 0" at info, and a
    /// lost direct connection blamed a relay.
    #[test]
    fn a_tunnel_the_client_closed_is_no_failure_and_a_cut_names_its_path() {
        let stopped = || {
            SpliceError::Cut(Some(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "sending stopped by peer: error 0",
            )))
        };
        assert_eq!(ended_early(&stopped(), Some(ConnectionPath::Direct)), None);
        assert_eq!(ended_early(&SpliceError::Cut(None), None), None);
        let aborted = SpliceError::PeerAborted("Connection reset by peer".into());
        assert_eq!(ended_early(&aborted, Some(ConnectionPath::Relayed)), None);
        let lost = || {
            SpliceError::Cut(Some(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection lost: timed out",
            )))
        };
        let direct = ended_early(&lost(), Some(ConnectionPath::Direct)).unwrap();
        assert!(
            direct.contains("connection lost: timed out (on a direct connection: the peer stopped")
                && !direct.contains("relay"),
            "{direct}"
        );
        let relayed = ended_early(&lost(), Some(ConnectionPath::Relayed)).unwrap();
        assert!(
            relayed.contains("goes through a relay, which ends it at its time and byte limits"),
            "{relayed}"
        );
        let idle = ended_early(&SpliceError::Idle(Duration::from_secs(60)), None).unwrap();
        assert!(!idle.contains("relay"), "{idle}");
    }
}
