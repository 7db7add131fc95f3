//! The daemon's side of the control socket: binds it (mode 0600, refusing to take over one a
//! live daemon answers on), serves a bounded number of clients, and answers each request from
//! the naming layer, the forwarder and the P2P node.
//!
//! Each client is a task of its own, and requests answered from local state (`status`,
//! `names`, `pins`, `tunnels`: [`Request::is_local`]) touch nothing the others hold: a burst
//! of publishes (150 started at once, each waiting on the disk and on its DHT PUT) or of
//! lookups never holds them back. Synced file writes run off the runtime's threads.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hickory_proto::rr::{LowerName, Name, RecordType};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::protocol::{NameInfo, P2pStatus, PinInfo, Request, Resolution, Response, Status};
use crate::{
    dns::forwarder::Forwarder,
    naming::{
        Dht, Naming, ZoneError, parse_record, parse_zone, presentation,
        publisher::{PUBLISH_WAIT, PublishError, ReplicaCount},
    },
    nat::connect::{ConnectError, connect_direct},
    record::{self, NameRecord},
};

/// Longest request line (a zone file fits easily).
const MAX_REQUEST: usize = 256 * 1024;
/// Connections served at once (a request being read or answered); more wait in the socket's
/// backlog. With the 256 KiB bound on a request, it bounds what requests hold: 64 MiB. Work
/// is bounded further by its owners (one names-file write at a time, the DHT's lookup shares).
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send its request within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `connect` waits for a direct connection, whatever the client asks.
const MAX_WAIT_DIRECT: Duration = Duration::from_secs(60);
/// How long `expose` tries the service's target, to warn when nothing answers there.
const TARGET_PROBE: Duration = Duration::from_secs(1);
/// TTL of records published without one, in seconds.
const DEFAULT_TTL: u32 = 300;

/// What the control server needs from the daemon.
pub struct Context {
    /// Local records and the DHT side (publishing, pins, lookups, the node's handle).
    pub naming: Arc<Naming>,
    /// Upstream servers and the cache, for `status`.
    pub forwarder: Arc<Forwarder>,
    /// The addresses DNS is served on, for `status`.
    pub dns_addrs: Vec<std::net::SocketAddr>,
    /// The configuration file the daemon loaded, for `status` (and `doctor`'s fixes).
    pub config_file: Option<std::path::PathBuf>,
}

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket file could not be created or given its mode.
    #[error("failed to create the control socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The failed bind or chmod.
        #[source]
        source: io::Error,
    },
    /// A live daemon answers on the socket already.
    #[error(
        "another p2pdns daemon is running with the data directory {dir} (its control socket answers)"
    )]
    AlreadyRunning {
        /// The data directory both daemons use.
        dir: PathBuf,
    },
}

/// Why a request failed; its message (with causes) goes back to the CLI.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The line is not a request of this protocol.
    #[error("malformed request")]
    Malformed(#[source] serde_json::Error),
    /// The request needs the P2P node and it is off.
    #[error("the P2P node is disabled on this daemon ([p2p] enabled = false)")]
    NoP2p,
    /// The text is not a domain name.
    #[error("{text:?} is not a domain name")]
    NotAName {
        /// The name as given, trimmed and lower-cased.
        text: String,
        /// Why it does not parse (label too long, bad character...).
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// Records are published under a name like `site.p2p`, or below it.
    #[error("{0} is not under a name like site.p2p")]
    NotUnderASite(String),
    /// The name is not in the peer-to-peer TLD.
    #[error("{0} is not a name in the p2p network")]
    NotP2p(String),
    /// `connect` to a dotted name outside `.p2p` (`example.com`): `.p2p` is added only to a
    /// name of one label, so that a name of the DNS is not taken for `com.p2p`.
    #[error("{0} is not a .p2p name: connect opens connections to peers serving .p2p names")]
    NotAP2pName(String),
    /// The DHT has no valid record for the name.
    #[error("{0} was not found in the p2p network")]
    NotFound(String),
    /// `connect` to a name this node serves.
    #[error("{0} is served by this node itself")]
    ServedHere(String),
    /// The record's owner key does not decode as an Ed25519 key.
    #[error("the record's owner key is unusable")]
    OwnerKey(#[source] libp2p::identity::DecodingError),
    /// The query type is not a record type.
    #[error("{0:?} is not a record type")]
    RecordType(String),
    /// A record line or a zone file does not parse.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// A zone file without any record.
    #[error("the zone file holds no records")]
    EmptyZone,
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The pins file could not be written.
    #[error("failed to save pins")]
    SavePins(#[source] io::Error),
    /// No connection to the name's owner.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// `unexpose` of a name and port this daemon does not expose.
    #[error("{name} has no service exposed by this daemon{}", exposed_ports(.exposed))]
    NotExposed {
        /// The name, `site.p2p`.
        name: String,
        /// The ports it does expose under that name.
        exposed: Vec<u16>,
    },
    /// The network holds the name's record from another key (names are first come, first
    /// served: docs/PROTOCOL.md sections 5 and 6).
    #[error("{name} belongs to another key ({owner}); choose another name")]
    Taken {
        /// The record set's name.
        name: String,
        /// The owner's key name.
        owner: String,
    },
    /// `unpublish` of a name that still carries services.
    #[error("{name} still serves {service} through a tunnel; `p2pdns unexpose` it first")]
    HasServices {
        /// The name, `site.p2p`.
        name: String,
        /// One of its services, `site.p2p port 80`.
        service: String,
    },
    /// A service could not be exposed or removed.
    #[error(transparent)]
    Service(#[from] crate::tunnel::ServiceError),
    /// The daemon is shutting down: the request was not carried out.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// The bound control socket. Dropping it removes the socket file, whether the daemon served
/// on it or failed to start after binding it: no file is left behind that makes the CLI believe
/// a daemon is there.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket at `path` for the daemon using `data_dir`. A socket file left by a
/// daemon that died is replaced; one that still answers means another daemon runs there.
pub async fn bind(path: &Path, data_dir: &Path) -> Result<ControlSocket, ControlError> {
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
    let socket = ControlSocket { listener, path };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| ControlError::Bind {
                path: socket.path.clone(),
                source,
            },
        )?;
    }
    Ok(socket)
}

/// Serves control requests until `stop` is cancelled; the socket file goes with `socket`.
pub async fn serve(socket: ControlSocket, context: Arc<Context>, stop: CancellationToken) {
    let listener = &socket.listener;
    let mut clients = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            Some(ended) = clients.join_next() => {
                if let Err(error) = ended {
                    warn!(%error, "a control client's task failed");
                }
                continue;
            }
            // At MAX_CONNECTIONS, the next clients wait in the socket's backlog until one is
            // done (closing them instead failed publishes sent at once with a broken pipe).
            accepted = listener.accept(), if clients.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let context = context.clone();
        clients.spawn(async move {
            if let Err(error) = client(stream, &context).await {
                debug!(%error, "control client failed");
            }
        });
    }
}

/// Reads one request from `stream` and answers it.
pub(crate) async fn client(stream: UnixStream, context: &Context) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
    let answered = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, context).await,
        Err(error) => Err(RequestError::Malformed(error)),
    };
    let response = answered.unwrap_or_else(|error| Response::Error {
        message: crate::error::one_line(&error),
    });
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Turns `site`, `site.p2p` or `www.site.p2p.` into a fully qualified, lower-case name under
/// `.p2p`.
pub fn p2p_name(text: &str) -> Result<Name, RequestError> {
    record::p2p_name(text).map_err(|source| RequestError::NotAName {
        text: text.trim().to_owned(),
        source,
    })
}

/// Answers one request.
async fn handle(request: Request, context: &Context) -> Result<Response, RequestError> {
    let dht = || context.naming.dht().ok_or(RequestError::NoP2p);
    Ok(match request {
        Request::Status { peers } => Response::Status(Box::new(status(context, peers).await)),
        Request::Publish { name, records } => publish(dht()?, &name, records).await?,
        Request::PublishZone { name, zone } => publish_zone(dht()?, &name, &zone).await?,
        Request::Unpublish { name } => {
            let name = p2p_name(&name)?;
            let text = name.to_ascii();
            let text = text.trim_end_matches('.');
            if let Some(service) = dht()?.tunnels().and_then(|t| t.service_under(text)) {
                return Err(RequestError::HasServices {
                    name: text.to_owned(),
                    service: format!("{} port {}", service.name, service.port),
                });
            }
            let dht = dht()?.clone();
            let unpublish = name.clone();
            let existed = off_runtime(move || dht.unpublish(&unpublish)).await??;
            Response::Unpublished {
                name: name.to_ascii(),
                existed,
            }
        }
        Request::Names => Response::Names {
            names: names(dht()?),
        },
        Request::Resolve { name, qtype } => resolve(context, &name, &qtype).await?,
        Request::Connect {
            name,
            wait_direct_secs,
        } => {
            let wait = Duration::from_secs(wait_direct_secs).min(MAX_WAIT_DIRECT);
            connect(dht()?, &name, wait).await?
        }
        Request::Expose(spec) => expose(dht()?, &spec).await?,
        Request::Unexpose { name, port } => unexpose(dht()?, &name, port).await?,
        Request::Tunnels => Response::Tunnels(tunnels(dht()?)?.report_with_paths().await),
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
            let name = p2p_name(&name)?;
            let dht = dht()?.clone();
            let remove = name.clone();
            let existed = off_runtime(move || dht.remove_pin(&remove))
                .await?
                .map_err(RequestError::SavePins)?;
            Response::PinRemoved {
                name: name.to_ascii(),
                existed,
            }
        }
    })
}

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
        dns_addrs: context.dns_addrs.clone(),
        upstreams: context.forwarder.upstreams(),
        upstream_servers: context.forwarder.upstream_servers(),
        cache_entries: context.forwarder.cache().usage().0,
        config_file: context.config_file.clone(),
        p2p,
        tunnels: context
            .naming
            .dht()
            .and_then(|dht| dht.tunnels())
            .map(|t| t.report()),
    }
}

/// The record set (`site.p2p.`) that holds `name`, and `name` itself.
fn record_set_of(name: &str) -> Result<(Name, Name), RequestError> {
    let name = p2p_name(name)?;
    let set = record::record_name_for(&LowerName::new(&name))
        .filter(|set| set.num_labels() == 2)
        .ok_or_else(|| RequestError::NotUnderASite(name.to_string()))?;
    Ok((set, name))
}

async fn publish(dht: &Arc<Dht>, name: &str, lines: Vec<String>) -> Result<Response, RequestError> {
    let answer_by = Instant::now() + PUBLISH_WAIT;
    let (set, owner) = record_set_of(name)?;
    let mut records = Vec::new();
    for line in &lines {
        records.extend(parse_record(&owner, line, DEFAULT_TTL)?);
    }
    refuse_taken(dht, &set).await?;
    // Added to what the name holds by the publisher, under its lock: publishes at once to
    // one name all count (they were lost when the records were read and merged here).
    let record = dht.add_by(&set, records, answer_by).await?;
    Ok(published(dht, &record))
}

async fn publish_zone(dht: &Arc<Dht>, name: &str, zone: &str) -> Result<Response, RequestError> {
    let answer_by = Instant::now() + PUBLISH_WAIT;
    let (set, origin) = record_set_of(name)?;
    let records = parse_zone(&origin, zone, DEFAULT_TTL)?;
    if records.is_empty() {
        return Err(RequestError::EmptyZone);
    }
    refuse_taken(dht, &set).await?;
    let record = dht.publish_by(&set, records, answer_by).await?;
    Ok(published(dht, &record))
}

fn published(dht: &Dht, record: &NameRecord) -> Response {
    let count = dht
        .publisher()
        .replicas(&LowerName::new(&record.name), record.seq);
    Response::Published {
        name: record.name.to_ascii(),
        seq: record.seq,
        expires: record.expires,
        records: record.records.iter().map(presentation).collect(),
        held_by: count.map(|c| c.holders),
        peers_answered: count.map(|c| c.answered),
        taken_by: taken_by(count),
    }
}

/// The key name of the other key a count found holding the name, if it found one.
fn taken_by(count: Option<ReplicaCount>) -> Option<String> {
    let owner = count?.taken_by?;
    Some(record::key_name(&owner).to_ascii())
}

/// Refuses to publish a human name whose record the network holds from another key: storage
/// nodes would drop this node's record (docs/PROTOCOL.md section 5, rule 7), and the user
/// must hear it instead of "published".
async fn refuse_taken(dht: &Dht, set: &Name) -> Result<(), RequestError> {
    match dht.owned_elsewhere(set).await {
        Some(owner) => Err(RequestError::Taken {
            name: set.to_ascii(),
            owner: record::key_name(&owner).to_ascii(),
        }),
        None => Ok(()),
    }
}

/// The names this daemon publishes, from its own table, with the last replica counts; asks
/// for a new count, which the next `names` shows.
fn names(dht: &Arc<Dht>) -> Vec<NameInfo> {
    let publisher = dht.publisher();
    let names = dht
        .own_names()
        .iter()
        .map(|record| {
            let count = publisher.replicas(&LowerName::new(&record.name), record.seq);
            NameInfo {
                name: record.name.to_ascii(),
                seq: record.seq,
                expires: record.expires,
                records: record.records.iter().map(presentation).collect(),
                replicas: count.map(|c| c.holders),
                counted_at: count.map(|c| c.counted_at),
                taken_by: taken_by(count),
            }
        })
        .collect();
    publisher.count_replicas();
    names
}

/// Runs `work` (a synced file write, which may wait for another) off the runtime's threads,
/// so that it holds back no other client.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RequestError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Ok(done),
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(RequestError::ShuttingDown),
        },
    }
}

async fn resolve(context: &Context, name: &str, qtype: &str) -> Result<Response, RequestError> {
    let qtype: RecordType = qtype
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| RequestError::RecordType(qtype.to_owned()))?;
    let qname = p2p_name(name)?;
    let answer = context.naming.lookup(&qname, qtype).await;
    let mut resolution = Resolution {
        name: qname.to_ascii(),
        answers: answer.answers.iter().map(presentation).collect(),
        rcode: answer.rcode.to_string(),
        owner: None,
        seq: None,
        replicas: None,
    };
    let set = record::record_name_for(&LowerName::new(&qname));
    if let (Some(dht), Some(set)) = (context.naming.dht(), set)
        && let Some(found) = dht.resolve_record(&set).await
    {
        resolution.owner = Some(found.record.owner_name().to_ascii());
        resolution.seq = Some(found.record.seq);
        resolution.replicas = Some(found.agreeing);
    }
    Ok(Response::Resolved(resolution))
}

/// `" on that port (it exposes 80, 443)"`, or nothing when no port is exposed.
fn exposed_ports(ports: &[u16]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    format!(" on that port (it exposes {})", ports.join(", "))
}

/// The tunnel subsystem of `dht`'s daemon.
fn tunnels(dht: &Arc<Dht>) -> Result<&Arc<crate::tunnel::Tunnels>, RequestError> {
    dht.tunnels().ok_or(RequestError::NoP2p)
}

/// Exposes a service, then announces it in its name's record.
async fn expose(
    dht: &Arc<Dht>,
    spec: &crate::tunnel::ServiceSpec,
) -> Result<Response, RequestError> {
    let (set, _) = record_set_of(&spec.name)?;
    refuse_taken(dht, &set).await?;
    let tunnels = tunnels(dht)?;
    let previous = tunnels.service(&spec.check()?);
    let service = tunnels.expose(spec)?;
    let record = match dht.sync_services(&set).await {
        Ok(record) => record,
        Err(error) => {
            // Not announced (another key's key name, a full record...): serve nothing new.
            let restored = match previous {
                Some(previous) => tunnels.expose(&previous.spec()).map(drop),
                None => tunnels
                    .unexpose(&service.name, Some(service.port))
                    .map(drop),
            };
            if let Err(undo) = restored {
                warn!(error = %crate::error::one_line(&undo), "undoing a failed expose failed");
            }
            return Err(error.into());
        }
    };
    let seq = match record {
        Some(record) => Some(record.seq),
        None => dht
            .own_names()
            .iter()
            .find(|r| r.name == set)
            .map(|r| r.seq),
    };
    // Not an error (the service may start later), but worth saying now.
    let unreachable =
        match tokio::time::timeout(TARGET_PROBE, tokio::net::TcpStream::connect(&service.to)).await
        {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(format!("nothing answers at {} yet ({error})", service.to)),
            Err(_) => Some(format!("nothing answered at {} within 1 s", service.to)),
        };
    Ok(Response::Exposed {
        replaced: previous.filter(|old| *old != service),
        service,
        key_name: dht.key_name().to_ascii(),
        seq,
        unreachable,
    })
}

/// Stops serving a name's services (on one port or all), then removes them from its record.
async fn unexpose(dht: &Arc<Dht>, name: &str, port: Option<u16>) -> Result<Response, RequestError> {
    let (set, qname) = record_set_of(name)?;
    let name = qname.to_ascii().trim_end_matches('.').to_owned();
    let tunnels = tunnels(dht)?;
    let ports = tunnels.unexpose(&name, port)?;
    if ports.is_empty() {
        let exposed = tunnels.ports_of(&name);
        return Err(RequestError::NotExposed { name, exposed });
    }
    dht.sync_services(&set).await?;
    Ok(Response::Unexposed { name, ports })
}

/// The name `connect` opens: a name under `.p2p`, or one label (`site`) taken as under it. A
/// dotted name outside `.p2p` is a DNS name typed by habit, not `<label>.p2p` below it.
fn connect_name(text: &str) -> Result<Name, RequestError> {
    let given = text.trim().trim_end_matches('.');
    let lower = given.to_lowercase();
    let under_p2p = lower == record::TLD || lower.ends_with(&format!(".{}", record::TLD));
    if given.contains('.') && !under_p2p {
        return Err(RequestError::NotAP2pName(given.to_owned()));
    }
    p2p_name(text)
}

/// Finds the owner of `name`'s record (the peer serving it: a node's libp2p identity is its
/// owner key), connects to it and waits for a direct connection.
async fn connect(
    dht: &Arc<Dht>,
    name: &str,
    wait_direct: Duration,
) -> Result<Response, RequestError> {
    let qname = connect_name(name)?;
    let set = record::record_name_for(&LowerName::new(&qname))
        .ok_or_else(|| RequestError::NotP2p(qname.to_ascii()))?;
    let found = dht
        .resolve_record(&set)
        .await
        .ok_or_else(|| RequestError::NotFound(set.to_ascii()))?;
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(&found.record.owner)
        .map_err(RequestError::OwnerKey)?;
    let peer = libp2p::identity::PublicKey::from(key).to_peer_id();
    if peer == dht.node().peer_id() {
        return Err(RequestError::ServedHere(set.to_ascii()));
    }
    let connected = connect_direct(dht.node(), peer, wait_direct).await?;
    Ok(Response::Connected {
        name: set.to_ascii(),
        peer,
        path: connected.path,
        via: connected.via,
        upgraded: connected.upgraded,
        elapsed_ms: u64::try_from(connected.elapsed.as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_refuses_a_dotted_name_outside_p2p() {
        for name in ["example.com", "site.com", "www.site", "Example.COM."] {
            let error = connect_name(name).unwrap_err().to_string();
            let given = name.trim_end_matches('.');
            assert_eq!(
                error,
                format!(
                    "{given} is not a .p2p name: connect opens connections to peers serving \
                     .p2p names"
                )
            );
        }
        for (name, full) in [
            ("site", "site.p2p."),
            ("site.p2p", "site.p2p."),
            ("WWW.Site.P2P.", "www.site.p2p."),
        ] {
            assert_eq!(connect_name(name).unwrap().to_ascii(), full);
        }
    }

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
    fn an_error_travels_with_its_causes() {
        let error = RequestError::SavePins(io::Error::other("disk full"));
        assert_eq!(
            crate::error::one_line(&error),
            "failed to save pins: disk full"
        );
    }
}
