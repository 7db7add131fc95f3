//! The local control interface: a Unix socket in the data directory (mode 0600) through which
//! the CLI (`p2pdns status`, `publish`, `names`, `resolve`, `pins`...) talks to the running
//! daemon. One JSON request per line, one JSON response per line.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hickory_proto::rr::{LowerName, Name, RecordType};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    dns::forwarder::Forwarder,
    naming::{Dht, Naming, parse_record, parse_zone},
    p2p::{ConnectionInfo, ConnectionPath, NodeStatus},
    record,
};

/// File name of the socket inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Longest request line (a zone file fits easily).
const MAX_REQUEST: usize = 256 * 1024;
/// Clients served at once.
const MAX_CLIENTS: usize = 16;
/// A client must send its request within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `names` waits to count the replicas of each name.
const REPLICA_COUNT_WAIT: Duration = Duration::from_secs(5);
/// How long a direct connection must last before `connect` counts it, and how many times it
/// has the peers punch again when one died at once.
const DIRECT_SETTLE: Duration = Duration::from_millis(300);
const MAX_PUNCHES: u32 = 2;
/// How long `connect` waits for a first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// TTL of records published without one.
const DEFAULT_TTL: u32 = 300;

/// A request from the CLI.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status {
        /// Include the peer list.
        #[serde(default)]
        peers: bool,
    },
    /// Adds records (`[TTL] TYPE RDATA` lines) to a name.
    Publish {
        name: String,
        records: Vec<String>,
    },
    /// Replaces a name's records with a zone file's.
    PublishZone {
        name: String,
        zone: String,
    },
    Unpublish {
        name: String,
    },
    Names,
    Resolve {
        name: String,
        qtype: String,
    },
    Pins,
    RemovePin {
        name: String,
    },
    /// Connects to the peer that serves a name (its owner), waiting up to `wait_direct_secs`
    /// for a relayed connection to become direct.
    Connect {
        name: String,
        wait_direct_secs: u64,
    },
}

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Error {
        message: String,
    },
    Status(Box<Status>),
    Published {
        name: String,
        seq: u64,
        expires: u64,
        records: Vec<String>,
    },
    Unpublished {
        name: String,
        existed: bool,
    },
    Names {
        names: Vec<NameInfo>,
    },
    Resolved(Resolution),
    Pins {
        pins: Vec<PinInfo>,
    },
    Connected {
        name: String,
        peer: String,
        /// Whether the connection goes straight to the peer.
        path: ConnectionPath,
        /// The address the connection runs over, when one is open.
        via: Option<libp2p::Multiaddr>,
        /// The first connection went through a relay and was upgraded (hole punching).
        upgraded: bool,
        elapsed_ms: u64,
    },
    PinRemoved {
        name: String,
        existed: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub dns_addrs: Vec<String>,
    pub upstreams: Vec<String>,
    pub cache_entries: usize,
    pub p2p: Option<P2pStatus>,
}

/// The P2P part of [`Status`]: the node's own report, with the key name the DHT side adds.
#[derive(Debug, Serialize, Deserialize)]
pub struct P2pStatus {
    /// This node's key name (`<key>.p2p.`).
    pub key_name: String,
    /// What the node reports; its peer list is filled only when asked for (`status --peers`).
    #[serde(flatten)]
    pub node: NodeStatus,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NameInfo {
    pub name: String,
    pub seq: u64,
    pub expires: u64,
    pub records: Vec<String>,
    /// Other nodes found holding exactly this record.
    pub replicas: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Resolution {
    pub name: String,
    pub answers: Vec<String>,
    pub rcode: String,
    /// Owner key name, sequence number and agreeing replicas, for DHT names.
    pub owner: Option<String>,
    pub seq: Option<u64>,
    pub replicas: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PinInfo {
    pub name: String,
    pub owner: String,
    pub expires: u64,
}

/// What the control server needs from the daemon.
pub struct Context {
    pub naming: Arc<Naming>,
    pub forwarder: Arc<Forwarder>,
    pub dns_addrs: Vec<std::net::SocketAddr>,
}

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("failed to create the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another p2pdns daemon is running with the data directory {dir} (its control socket answers)"
    )]
    AlreadyRunning { dir: PathBuf },
}

/// Where a service's control socket lives when the daemon runs under systemd with
/// `RuntimeDirectory=p2pdns`; the CLI looks there too when it was not pointed at a data
/// directory.
pub const SERVICE_SOCKET: &str = "/run/p2pdns/control.sock";

/// The control socket of a daemon using `data_dir`: in the service manager's runtime directory
/// (`$RUNTIME_DIRECTORY`, set by systemd's `RuntimeDirectory=`) when there is one, else in the
/// data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY") {
        // Several directories are separated by colons; the first is ours.
        Some(dirs) if !dirs.is_empty() => {
            let dirs = dirs.to_string_lossy().into_owned();
            let first = dirs.split(':').next().unwrap_or_default();
            Path::new(first).join(SOCKET_FILE)
        }
        _ => data_dir.join(SOCKET_FILE),
    }
}

/// Binds the control socket at `path` for the daemon using `data_dir`. A socket file left by a
/// daemon that died is replaced; one that still answers means another daemon runs there.
pub async fn bind(path: &Path, data_dir: &Path) -> Result<UnixListener, ControlError> {
    let path = path.to_owned();
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ControlError::AlreadyRunning {
                dir: data_dir.to_owned(),
            });
        }
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path).map_err(|source| ControlError::Bind {
        path: path.clone(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| ControlError::Bind { path, source })?;
    }
    Ok(listener)
}

/// Serves control requests until `stop` is cancelled, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    context: Arc<Context>,
    stop: CancellationToken,
    path: PathBuf,
) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            debug!("too many control clients; closing one");
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            if let Err(error) = client(stream, &context).await {
                debug!(%error, "control client failed");
            }
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(path);
}

async fn client(stream: UnixStream, context: &Context) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, context)
            .await
            .unwrap_or_else(|message| Response::Error { message }),
        Err(error) => Response::Error {
            message: format!("malformed request: {error}"),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Turns `site`, `site.p2p` or `www.site.p2p.` into a fully qualified, lower-case name under
/// `.p2p`.
pub fn p2p_name(text: &str) -> Result<Name, String> {
    let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let full = if text == record::TLD || text.ends_with(&format!(".{}", record::TLD)) {
        format!("{text}.")
    } else {
        format!("{text}.{}.", record::TLD)
    };
    Name::from_ascii(&full).map_err(|e| format!("{text:?} is not a domain name: {e}"))
}

/// Answers one request; the error text goes back to the CLI as it is.
async fn handle(request: Request, context: &Context) -> Result<Response, String> {
    let dht = || context.naming.dht().ok_or_else(|| NO_P2P.to_owned());
    Ok(match request {
        Request::Status { peers } => Response::Status(Box::new(status(context, peers).await)),
        Request::Publish { name, records } => publish(dht()?, &name, records).await?,
        Request::PublishZone { name, zone } => publish_zone(dht()?, &name, &zone).await?,
        Request::Unpublish { name } => {
            let dht = dht()?;
            let name = p2p_name(&name)?;
            let existed = dht.unpublish(&name).map_err(|e| e.to_string())?;
            Response::Unpublished {
                name: name.to_ascii(),
                existed,
            }
        }
        Request::Names => Response::Names {
            names: names(dht()?).await,
        },
        Request::Resolve { name, qtype } => {
            resolve(context, context.naming.dht(), &name, &qtype).await?
        }
        Request::Connect {
            name,
            wait_direct_secs,
        } => connect(dht()?, &name, Duration::from_secs(wait_direct_secs.min(60))).await?,
        Request::Pins => Response::Pins {
            pins: dht()?
                .pins()
                .into_iter()
                .map(|(name, pin)| PinInfo {
                    name,
                    owner: pin.owner,
                    expires: pin.expires,
                })
                .collect(),
        },
        Request::RemovePin { name } => {
            let dht = dht()?;
            let name = p2p_name(&name)?;
            let existed = dht
                .remove_pin(&name)
                .map_err(|e| format!("failed to save pins: {e}"))?;
            Response::PinRemoved {
                name: name.to_ascii(),
                existed,
            }
        }
    })
}

const NO_P2P: &str = "the P2P node is disabled on this daemon ([p2p] enabled = false)";

async fn status(context: &Context, with_peers: bool) -> Status {
    let p2p = match context.naming.dht() {
        Some(dht) => dht.node().status().await.ok().map(|mut node| {
            if !with_peers {
                node.peers.clear();
            }
            P2pStatus {
                key_name: dht.key_name().to_ascii(),
                node,
            }
        }),
        None => None,
    };
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        dns_addrs: context.dns_addrs.iter().map(ToString::to_string).collect(),
        upstreams: context
            .forwarder
            .upstreams()
            .iter()
            .map(ToString::to_string)
            .collect(),
        cache_entries: context.forwarder.cache().usage().0,
        p2p,
    }
}

/// The record set (`site.p2p.`) that holds `name`, and `name` itself.
fn record_set_of(name: &str) -> Result<(Name, Name), String> {
    let name = p2p_name(name)?;
    let set = record::record_name_for(&LowerName::new(&name))
        .filter(|set| set.num_labels() == 2)
        .ok_or_else(|| format!("{name} is not under a name like site.p2p"))?;
    Ok((set, name))
}

async fn publish(dht: &Arc<Dht>, name: &str, lines: Vec<String>) -> Result<Response, String> {
    let (set, owner) = record_set_of(name)?;
    let mut records: Vec<hickory_proto::rr::Record> = dht
        .own_names()
        .into_iter()
        .find(|r| r.name == set)
        .map(|r| r.records.clone())
        .unwrap_or_default();
    for line in &lines {
        for record in parse_record(&owner, line, DEFAULT_TTL).map_err(|e| e.to_string())? {
            if !records.contains(&record) {
                records.push(record);
            }
        }
    }
    published(
        dht.publish(&set, records)
            .await
            .map_err(|e| e.to_string())?,
    )
}

async fn publish_zone(dht: &Arc<Dht>, name: &str, zone: &str) -> Result<Response, String> {
    let (set, origin) = record_set_of(name)?;
    let records = parse_zone(&origin, zone, DEFAULT_TTL).map_err(|e| e.to_string())?;
    if records.is_empty() {
        return Err("the zone file holds no records".into());
    }
    published(
        dht.publish(&set, records)
            .await
            .map_err(|e| e.to_string())?,
    )
}

fn published(record: Arc<record::NameRecord>) -> Result<Response, String> {
    Ok(Response::Published {
        name: record.name.to_ascii(),
        seq: record.seq,
        expires: record.expires,
        records: record.records.iter().map(ToString::to_string).collect(),
    })
}

async fn names(dht: &Arc<Dht>) -> Vec<NameInfo> {
    let mut out = Vec::new();
    for record in dht.own_names() {
        let bytes = record.to_bytes();
        // Peers that never answer (behind NAT, yet listed in the DHT) would hold the whole
        // count back: count what answered by the deadline.
        let replicas = tokio::time::timeout(
            REPLICA_COUNT_WAIT,
            dht.node()
                .lookup_within(record.name.clone(), usize::MAX, REPLICA_COUNT_WAIT * 4 / 5),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map_or(0, |found| {
            found
                .records
                .iter()
                .filter(|(peer, r)| peer.is_some() && r.to_bytes() == bytes)
                .count()
        });
        out.push(NameInfo {
            name: record.name.to_ascii(),
            seq: record.seq,
            expires: record.expires,
            records: record.records.iter().map(ToString::to_string).collect(),
            replicas,
        });
    }
    out
}

async fn resolve(
    context: &Context,
    dht: Option<&Arc<Dht>>,
    name: &str,
    qtype: &str,
) -> Result<Response, String> {
    let qtype: RecordType = qtype
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("{qtype:?} is not a record type"))?;
    let qname = p2p_name(name)?;
    let answer = context.naming.lookup(&qname, qtype).await;
    let mut resolution = Resolution {
        name: qname.to_ascii(),
        answers: answer.answers.iter().map(ToString::to_string).collect(),
        rcode: answer.rcode.to_string(),
        owner: None,
        seq: None,
        replicas: None,
    };
    if let (Some(dht), Some(set)) = (dht, record::record_name_for(&LowerName::new(&qname)))
        && let Some(found) = dht.resolve_record(&set).await
    {
        resolution.owner = Some(found.record.owner_name().to_ascii());
        resolution.seq = Some(found.record.seq);
        resolution.replicas = Some(found.agreeing);
    }
    Ok(Response::Resolved(resolution))
}

/// Finds the owner of `name`'s record (the peer serving it: a node's libp2p identity is its
/// owner key), connects to it and waits for a direct connection.
async fn connect(dht: &Arc<Dht>, name: &str, wait_direct: Duration) -> Result<Response, String> {
    let qname = p2p_name(name)?;
    let set = record::record_name_for(&LowerName::new(&qname))
        .ok_or_else(|| format!("{} is not a name in the p2p network", qname.to_ascii()))?;
    let found = dht
        .resolve_record(&set)
        .await
        .ok_or_else(|| format!("{} was not found in the p2p network", set.to_ascii()))?;
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(&found.record.owner)
        .map_err(|e| format!("the record's owner key is unusable: {e}"))?;
    let peer = libp2p::identity::PublicKey::from(key).to_peer_id();
    if peer == dht.node().peer_id() {
        return Err(format!("{} is served by this node itself", set.to_ascii()));
    }
    let started = std::time::Instant::now();
    tokio::time::timeout(CONNECT_TIMEOUT, dht.node().connect(peer))
        .await
        .map_err(|_| format!("no connection to {peer} within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let first = dht
        .node()
        .connections(peer)
        .await
        .map_err(|e| e.to_string())?;
    let direct = |c: &ConnectionInfo| c.path == ConnectionPath::Direct;
    let started_relayed = !first.is_empty() && !first.iter().any(direct);
    let deadline = tokio::time::Instant::now() + wait_direct;
    let mut punches = 0;
    let (path, via, elapsed) = loop {
        let open = dht
            .node()
            .connections(peer)
            .await
            .map_err(|e| e.to_string())?;
        if open.iter().any(direct) {
            let seen = started.elapsed();
            // A hole-punched TCP connection can be reset right after it opened (both sides
            // dialled at once): count it once it has lasted a moment.
            tokio::time::sleep(DIRECT_SETTLE).await;
            let open = dht
                .node()
                .connections(peer)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(connection) = open.iter().find(|c| direct(c)) {
                break (
                    ConnectionPath::Direct,
                    Some(connection.remote.clone()),
                    seen,
                );
            }
            if punches < MAX_PUNCHES && tokio::time::Instant::now() < deadline {
                punches += 1;
                // A fresh relayed connection makes the two sides punch again.
                let _ = dht.node().punch_again(peer).await;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let relay = open.first().map(|c| c.remote.clone());
            break (ConnectionPath::Relayed, relay, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Response::Connected {
        name: set.to_ascii(),
        peer: peer.to_string(),
        path,
        via,
        upgraded: path == ConnectionPath::Direct && started_relayed,
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    })
}

/// Errors of the CLI side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no p2pdns daemon is running with the data directory {dir} (no control socket at {socket}); \
         start one with `p2pdns run`, or pass the --data-dir/--config it uses"
    )]
    NotRunning { dir: PathBuf, socket: PathBuf },
    #[error("permission denied on {socket}: the daemon runs as another user; try again with sudo")]
    Permission { socket: PathBuf },
    #[error("failed to talk to the daemon over {socket}")]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon sent a response this client does not understand: {0}")]
    Protocol(String),
    #[error("{0}")]
    Daemon(String),
}

/// Sends one request to the daemon using `data_dir` and returns its response. With
/// `try_service`, a system service's socket ([`SERVICE_SOCKET`]) is tried when no daemon
/// answers in `data_dir`.
pub async fn call(
    data_dir: &Path,
    try_service: bool,
    request: &Request,
) -> Result<Response, ClientError> {
    match call_socket(data_dir, &data_dir.join(SOCKET_FILE), request).await {
        Err(ClientError::NotRunning { .. })
            if try_service && Path::new(SERVICE_SOCKET).exists() =>
        {
            call_socket(data_dir, Path::new(SERVICE_SOCKET), request).await
        }
        result => result,
    }
}

async fn call_socket(
    data_dir: &Path,
    socket: &Path,
    request: &Request,
) -> Result<Response, ClientError> {
    let socket = socket.to_owned();
    let io_error = |source: io::Error| ClientError::Io {
        socket: socket.clone(),
        source,
    };
    let stream = UnixStream::connect(&socket)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                dir: data_dir.to_owned(),
                socket: socket.clone(),
            },
            io::ErrorKind::PermissionDenied => ClientError::Permission {
                socket: socket.clone(),
            },
            _ => io_error(e),
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io_error)?;
    let mut reader = BufReader::new(read);
    let mut reply = String::new();
    reader.read_line(&mut reply).await.map_err(io_error)?;
    match serde_json::from_str::<Response>(&reply) {
        Ok(Response::Error { message }) => Err(ClientError::Daemon(message)),
        Ok(response) => Ok(response),
        Err(e) => Err(ClientError::Protocol(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_put_under_p2p() {
        assert_eq!(p2p_name("site").unwrap().to_ascii(), "site.p2p.");
        assert_eq!(p2p_name("Site.P2P").unwrap().to_ascii(), "site.p2p.");
        assert_eq!(
            p2p_name("www.site.p2p.").unwrap().to_ascii(),
            "www.site.p2p."
        );
        assert!(record_set_of("p2p").is_err());
        let (set, owner) = record_set_of("www.site").unwrap();
        assert_eq!(set.to_ascii(), "site.p2p.");
        assert_eq!(owner.to_ascii(), "www.site.p2p.");
    }

    #[test]
    fn requests_round_trip_as_json() {
        let text = serde_json::to_string(&Request::Publish {
            name: "site".into(),
            records: vec!["A 192.0.2.1".into()],
        })
        .unwrap();
        assert!(text.contains("\"request\":\"publish\""), "{text}");
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Request::Publish { .. }));
    }
}
