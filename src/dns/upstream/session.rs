//! The connection to one encrypted upstream, DNS over TLS (module `dot`, RFC 7858) or over
//! HTTPS (module `doh`, RFC 8484), owned by one task, the session's, that the upstream's tries
//! hand their queries to ([`Session::ask`]). The task connects when the first query comes,
//! keeps the connection for the queries that follow (RFC 7858 section 3.4, RFC 7766 section
//! 6.2.1), many of them out at once, each under an ID of its own on the connection (over
//! HTTP/2, each its own stream with ID 0, RFC 8484 section 4.1), and matches answers to
//! queries as UDP's are ([`crate::dns::exchange`]'s rules). It closes the connection after
//! [`IDLE_TIMEOUT`] without a query, and reconnects at the next query when the server closed
//! it. A query the server never processed because the connection closed under it (or the
//! server refused the HTTP/2 stream) is sent once more on a new connection; a connection on
//! which a query's deadline passed with nothing read since it was sent is taken as dead.
//!
//! A failure to connect (refused, timed out, a certificate not accepted) fails every query
//! waiting; the upstream's health counts each, as it counts plain upstreams' failures, so
//! the tries move on to the others and the upstream rests. The failure is logged once per
//! spell, at WARN, and the return at INFO.

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hickory_proto::{op::Message, rr::rdata::opt::EdnsOption};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until, timeout},
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{certs, doh, dot};
use crate::{
    config::{EncryptedServer, EncryptedTransport},
    dns::exchange::{Datagram, ExchangeError, Exchanged, Malformed, sort},
};

/// A connection without a query out for this long is closed (unbound's `tcp-reuse-timeout`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The TCP connect, TLS handshake and HTTP/2 preface together take at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is taken as dead when a query sent on it gets nothing back by its deadline,
/// and not before this long after it was sent (a query sent just before its deadline proves
/// nothing about the connection).
const STALL_GRACE: Duration = Duration::from_secs(2);
/// Writing one query may take this long; a server that stops reading is taken as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries out on one connection at most; more wait for one to end.
const MAX_INFLIGHT: usize = 128;
/// Queries waiting for the session task at most; more wait to be handed over.
const JOBS_QUEUED: usize = 256;
/// Queries over TLS and HTTPS are padded to a multiple of this many octets (RFC 8467 section
/// 4.1, the block-length padding recommended for clients), so that their size tells less.
const PAD_BLOCK: usize = 128;

/// One query's exchange with an encrypted upstream, polled to its end by the query's tries.
pub(super) type EncryptedTry =
    Pin<Box<dyn Future<Output = Result<Exchanged, SessionError>> + Send>>;

/// Why a query to an encrypted upstream got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// As for plain upstreams: a timeout, a network error, an answer that is malformed.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// The TLS handshake failed on the server's certificate (its name, its issuer, its dates,
    /// or a pin).
    #[error("upstream certificate not accepted: {0}")]
    Certificate(String),
    /// The DoH server answered, but not with a DNS message.
    #[error("the DoH answer is no DNS message: {0}")]
    Http(#[source] HttpFailure),
}

/// How a DoH server's answer was not a DNS message (RFC 8484 section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpFailure {
    /// An HTTP status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// A content type other than `application/dns-message`.
    #[error("content type is not application/dns-message")]
    ContentType,
    /// A body larger than a DNS message can be.
    #[error("body larger than 65535 octets")]
    TooLarge,
}

/// What a connection delivered for the query under `id`.
pub(super) enum Incoming {
    /// Its answer, as it came (over DoH with the ID put back).
    Answer(u16, Bytes),
    /// Its exchange failed, the connection aside.
    Failed(u16, RequestError),
}

/// Why one query's exchange failed on a connection that may live on.
pub(super) enum RequestError {
    /// The server did not process it (HTTP/2 GOAWAY or REFUSED_STREAM): it may be sent again.
    NotProcessed,
    /// Its HTTP answer was no DNS message.
    Http(HttpFailure),
    /// Its stream failed.
    Io(io::Error),
}

/// Why connecting failed; one per query that was waiting for the connection.
#[derive(Debug, Clone)]
pub(super) enum ConnectError {
    /// TCP failed (refused, unreachable, reset) or TLS failed for another reason than the
    /// certificate; the OS error number when there is one.
    Io(io::ErrorKind, Option<i32>, String),
    /// Not connected within [`CONNECT_TIMEOUT`].
    Timeout,
    /// The certificate was not accepted, and why.
    Certificate(String),
    /// The upstream cannot be used as configured (its CA file, or no HTTP/2 from a DoH server).
    Setup(String),
}

impl ConnectError {
    fn for_query(&self) -> SessionError {
        match self {
            Self::Io(kind, code, text) => SessionError::Exchange(
                code.map_or_else(
                    || io::Error::new(*kind, text.clone()),
                    io::Error::from_raw_os_error,
                )
                .into(),
            ),
            Self::Timeout => SessionError::Exchange(ExchangeError::Timeout),
            Self::Certificate(why) => SessionError::Certificate(why.clone()),
            Self::Setup(why) => {
                SessionError::Exchange(ExchangeError::Io(io::Error::other(why.clone())))
            }
        }
    }

    fn from_io(error: &io::Error) -> Self {
        match certs::certificate_failure(error) {
            Some(why) => Self::Certificate(why),
            None => Self::Io(error.kind(), error.raw_os_error(), error.to_string()),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(_, _, text) => f.write_str(text),
            Self::Timeout => write!(f, "not connected within {CONNECT_TIMEOUT:?}"),
            Self::Certificate(why) => write!(f, "certificate not accepted: {why}"),
            Self::Setup(why) => f.write_str(why),
        }
    }
}

/// What a session connects to, and how.
struct Endpoint {
    server: EncryptedServer,
    /// The TLS configuration, or why there is none.
    tls: Result<Arc<ClientConfig>, String>,
    name: ServerName<'static>,
    /// Connecting failed last time: the failure was logged, the next one is not.
    failing: AtomicBool,
}

impl Endpoint {
    /// TCP, then TLS, within [`CONNECT_TIMEOUT`] together with what `then` does.
    async fn connect(&self) -> Result<Link, ConnectError> {
        let tls = self.tls.clone().map_err(ConnectError::Setup)?;
        let steps = async {
            let tcp = TcpStream::connect(self.server.addr)
                .await
                .map_err(|e| ConnectError::from_io(&e))?;
            tcp.set_nodelay(true)
                .map_err(|e| ConnectError::from_io(&e))?;
            let stream = TlsConnector::from(tls)
                .connect(self.name.clone(), tcp)
                .await
                .map_err(|e| ConnectError::from_io(&e))?;
            self.link(stream).await
        };
        timeout(CONNECT_TIMEOUT, steps)
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }

    async fn link(&self, stream: TlsStream<TcpStream>) -> Result<Link, ConnectError> {
        match &self.server.transport {
            EncryptedTransport::Tls => Ok(Link::Tls(dot::DotLink::new(stream))),
            EncryptedTransport::Https { path } => {
                let uri = doh::uri(&self.server, path);
                doh::DohLink::handshake(stream, uri)
                    .await
                    .map(|link| Link::Https(Box::new(link)))
            }
        }
    }

    fn connected(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            info!(upstream = %self.server, "encrypted upstream connected again");
        } else {
            debug!(upstream = %self.server, "connected");
        }
    }

    fn failed(&self, error: &ConnectError) {
        if self.failing.swap(true, Ordering::Relaxed) {
            debug!(upstream = %self.server, %error, "cannot connect to upstream");
        } else {
            warn!(upstream = %self.server, %error, "cannot connect to upstream; asking the others while it fails");
        }
    }
}

/// A connection to the upstream, of either kind.
enum Link {
    Tls(dot::DotLink),
    Https(Box<doh::DohLink>),
}

impl Link {
    async fn send(&mut self, id: u16, wire: Vec<u8>) -> io::Result<()> {
        match self {
            Self::Tls(link) => timeout(WRITE_TIMEOUT, link.send(&wire))
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            Self::Https(link) => {
                link.send(id, wire);
                Ok(())
            }
        }
    }

    /// Closes the connection (TLS close_notify for DoT; dropping an HTTP/2 connection sends
    /// GOAWAY).
    async fn close(self) {
        if let Self::Tls(link) = self {
            let _ = timeout(WRITE_TIMEOUT, link.close()).await;
        }
    }

    /// What came next; `None` once the connection is gone. Cancel-safe.
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Self::Tls(link) => link.next().await,
            Self::Https(link) => link.next().await,
        }
    }
}

/// One query handed to the session.
struct Job {
    query: Message,
    /// When the question is given up: a connection on which it waited this long with
    /// nothing read is dead.
    deadline: Instant,
    reply: oneshot::Sender<Result<Exchanged, SessionError>>,
    /// It was sent once already on a connection that closed under it.
    retried: bool,
}

/// An encrypted upstream's session: the handle its tries use. Its task starts with the first
/// query and ends when the session is dropped or `stop` is cancelled.
#[derive(Debug)]
pub(super) struct Session {
    endpoint: Arc<Endpoint>,
    jobs: OnceLock<mpsc::Sender<Job>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.server.fmt(f)
    }
}

impl Session {
    /// A session with `server`, its task stopped by `stop`. A TLS configuration that cannot be
    /// made (a CA file gone since the configuration was checked) is logged, and every
    /// query then fails.
    pub(super) fn new(server: &EncryptedServer, stop: CancellationToken) -> Self {
        let alpn: &[&[u8]] = match server.transport {
            EncryptedTransport::Tls => &[],
            EncryptedTransport::Https { .. } => &[b"h2"],
        };
        let tls = certs::client_config(server, alpn).map_err(|error| {
            warn!(upstream = %server, error = &error as &dyn std::error::Error, "encrypted upstream unusable");
            error.to_string()
        });
        let endpoint = Endpoint {
            server: server.clone(),
            tls,
            name: certs::server_name(server),
            failing: AtomicBool::new(false),
        };
        Self {
            endpoint: Arc::new(endpoint),
            jobs: OnceLock::new(),
            stop,
        }
    }

    /// Asks `query` (its ID is the session's to choose), giving up at `deadline`.
    pub(super) fn ask(&self, query: Message, deadline: Instant) -> EncryptedTry {
        let jobs = self
            .jobs
            .get_or_init(|| {
                let (jobs, queue) = mpsc::channel(JOBS_QUEUED);
                tokio::spawn(run(self.endpoint.clone(), queue, self.stop.clone()));
                jobs
            })
            .clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                query,
                deadline,
                reply,
                retried: false,
            };
            jobs.send(job).await.map_err(|_| stopped())?;
            answer.await.unwrap_or_else(|_| Err(stopped()))
        })
    }
}

fn stopped() -> SessionError {
    SessionError::Exchange(ExchangeError::Io(io::Error::other(
        "the upstream's session stopped",
    )))
}

/// The session's task: connects when a query waits, serves the connection until it ends,
/// and again.
async fn run(endpoint: Arc<Endpoint>, mut jobs: mpsc::Receiver<Job>, stop: CancellationToken) {
    let mut waiting = Vec::new();
    loop {
        if waiting.is_empty() {
            let job = tokio::select! {
                () = stop.cancelled() => return,
                job = jobs.recv() => job,
            };
            let Some(job) = job else { return };
            waiting.push(job);
        }
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = endpoint.connect() => connected,
        };
        match connected {
            Ok(link) => {
                endpoint.connected();
                let mut connection = Connection {
                    endpoint: &endpoint,
                    link,
                    inflight: HashMap::new(),
                    last_read: Instant::now(),
                };
                let again = connection.serve(waiting, &mut jobs, &stop).await;
                connection.link.close().await;
                match again {
                    Some(again) => waiting = again,
                    None => return,
                }
            }
            Err(error) => {
                endpoint.failed(&error);
                while let Ok(job) = jobs.try_recv() {
                    waiting.push(job);
                }
                for job in waiting.drain(..) {
                    let _ = job.reply.send(Err(error.for_query()));
                }
            }
        }
    }
}

/// A query out on the connection.
struct Sent {
    job: Job,
    at: Instant,
}

/// One connection and the queries out on it.
struct Connection<'a> {
    endpoint: &'a Endpoint,
    link: Link,
    inflight: HashMap<u16, Sent>,
    /// When anything last came in.
    last_read: Instant,
}

impl Connection<'_> {
    /// Sends `waiting`, then every query that comes, until the connection ends; returns the
    /// queries to send again on a new one, or `None` when the session is to stop.
    async fn serve(
        &mut self,
        waiting: Vec<Job>,
        jobs: &mut mpsc::Receiver<Job>,
        stop: &CancellationToken,
    ) -> Option<Vec<Job>> {
        for job in waiting {
            if self.send(job).await.is_err() {
                return Some(self.lost());
            }
        }
        let mut active = Instant::now();
        loop {
            if self.inflight.len() >= MAX_INFLIGHT {
                self.inflight.retain(|_, sent| !sent.job.reply.is_closed());
            }
            let idle_at = self.inflight.is_empty().then(|| active + IDLE_TIMEOUT);
            let stall_at = self.stall_at();
            let room = self.inflight.len() < MAX_INFLIGHT;
            tokio::select! {
                () = stop.cancelled() => return None,
                incoming = self.link.next() => {
                    let Some(incoming) = incoming else {
                        debug!(upstream = %self.endpoint.server, "the server closed the connection");
                        return Some(self.lost());
                    };
                    (self.last_read, active) = (Instant::now(), Instant::now());
                    if !self.take(incoming) {
                        return Some(self.lost());
                    }
                }
                job = jobs.recv(), if room => {
                    let job = job?;
                    active = Instant::now();
                    if self.send(job).await.is_err() {
                        return Some(self.lost());
                    }
                }
                () = sleep_until(idle_at.unwrap_or(active)), if idle_at.is_some() => {
                    debug!(upstream = %self.endpoint.server, "closing an idle connection");
                    return Some(Vec::new());
                }
                () = sleep_until(stall_at.unwrap_or(active)), if stall_at.is_some() => {
                    debug!(upstream = %self.endpoint.server, "nothing came on the connection until a query's deadline; connecting again");
                    return Some(self.lost());
                }
            }
        }
    }

    /// The earliest deadline of a query sent after anything last came in: the connection is
    /// dead if nothing comes by then.
    fn stall_at(&self) -> Option<Instant> {
        self.inflight
            .values()
            .filter(|sent| sent.at >= self.last_read)
            .map(|sent| sent.job.deadline.max(sent.at + STALL_GRACE))
            .min()
    }

    /// Sends `job` under an ID no query out on the connection has.
    async fn send(&mut self, mut job: Job) -> io::Result<()> {
        if job.reply.is_closed() {
            return Ok(());
        }
        if Instant::now() >= job.deadline {
            let _ = job.reply.send(Err(ExchangeError::Timeout.into()));
            return Ok(());
        }
        let id = loop {
            let id = rand::random::<u16>();
            if !self.inflight.contains_key(&id) {
                break id;
            }
        };
        job.query.metadata.id = id;
        let wire = match padded(&mut job.query) {
            Ok(wire) => wire,
            Err(error) => {
                let _ = job.reply.send(Err(error.into()));
                return Ok(());
            }
        };
        self.inflight.insert(
            id,
            Sent {
                job,
                at: Instant::now(),
            },
        );
        self.link.send(id, wire).await
    }

    /// Hands what came to its query; false when the connection is going away.
    fn take(&mut self, incoming: Incoming) -> bool {
        let (id, outcome) = match incoming {
            Incoming::Answer(id, bytes) => (id, Ok(bytes)),
            Incoming::Failed(id, error) => (id, Err(error)),
        };
        let Some(sent) = self.inflight.remove(&id) else {
            debug!(upstream = %self.endpoint.server, id, "ignoring an answer to no query out");
            return true;
        };
        let result = match outcome {
            Ok(bytes) => judge(&bytes, &sent.job.query),
            Err(RequestError::NotProcessed) => {
                self.inflight.insert(id, sent);
                return false;
            }
            Err(RequestError::Http(failure)) => Err(SessionError::Http(failure)),
            Err(RequestError::Io(error)) => Err(SessionError::Exchange(error.into())),
        };
        let _ = sent.job.reply.send(result);
        true
    }

    /// The connection is gone: the queries out on it for the first time are to be sent again,
    /// the others fail.
    fn lost(&mut self) -> Vec<Job> {
        let mut again = Vec::new();
        for (_, Sent { mut job, .. }) in self.inflight.drain() {
            if job.reply.is_closed() || Instant::now() >= job.deadline {
                continue;
            }
            if job.retried {
                let closed = io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the connection closed before the answer",
                );
                let _ = job.reply.send(Err(SessionError::Exchange(closed.into())));
            } else {
                job.retried = true;
                again.push(job);
            }
        }
        again
    }
}

/// `query` on the wire, padded when it has an OPT record.
fn padded(query: &mut Message) -> Result<Vec<u8>, ExchangeError> {
    let wire = query.to_vec().map_err(|_| ExchangeError::Encode)?;
    let Some(edns) = query.edns.as_mut() else {
        return Ok(wire);
    };
    // The option adds its code and length (4 octets) and the padding.
    let pad = (PAD_BLOCK - (wire.len() + 4) % PAD_BLOCK) % PAD_BLOCK;
    edns.options_mut()
        .insert(EdnsOption::Unknown(12, vec![0; pad]));
    let wire = query.to_vec().map_err(|_| ExchangeError::Encode)?;
    if wire.len() > usize::from(u16::MAX) {
        return Err(ExchangeError::Encode);
    }
    Ok(wire)
}

/// `bytes` as the answer to `query`, by the rules of UDP answers; over a stream a truncated
/// answer is not followed anywhere (RFC 7766 section 8).
fn judge(bytes: &[u8], query: &Message) -> Result<Exchanged, SessionError> {
    let answer = match sort(bytes, query) {
        Datagram::Answer(answer) => answer?,
        Datagram::Junk(why) => return Err(ExchangeError::Malformed(why).into()),
        Datagram::Stray => return Err(ExchangeError::Malformed(Malformed::OtherId).into()),
    };
    if answer.message.metadata.truncation {
        return Err(ExchangeError::Malformed(Malformed::TruncatedOverTcp).into());
    }
    Ok(answer)
}
