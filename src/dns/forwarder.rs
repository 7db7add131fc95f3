//! Forwarding to upstream servers: cache first, one upstream query for many identical
//! in-flight questions, fastest upstream first with failover, UDP with TCP retry on truncation,
//! and serve-stale when every upstream fails.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, rdata::opt::EdnsOption},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::{Semaphore, oneshot},
    time::timeout,
};
use tracing::{debug, warn};

use super::{
    cache::{Cache, CacheKey, CachedAnswer, Hit, Lookup},
    upstream::Upstream,
};
use crate::config::{CacheConfig, UpstreamConfig};

/// A snapshot of the upstream list.
type Upstreams = Arc<[Arc<Upstream>]>;

/// EDNS option code (Local/Experimental range, RFC 6891 section 9) carrying our loop tag.
pub const LOOP_OPTION: u16 = 65_001;
/// Entries with shorter TTLs are not prefetched: they expire too fast to matter.
const PREFETCH_MIN_TTL: u32 = 10;
/// Clients waiting on one upstream question at most; later ones get SERVFAIL.
const MAX_WAITERS_PER_QUESTION: usize = 1024;

/// Why no answer could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No upstream server is configured or usable.
    #[error("no usable upstream DNS server")]
    NoUpstreams,
    /// Every upstream timed out or failed within the query budget.
    #[error("no upstream answered in time")]
    Timeout,
    /// Upstreams answered, but only with this failure RCODE.
    #[error("upstreams answered {0}")]
    Upstream(ResponseCode),
    /// Too many queries are waiting on upstreams already.
    #[error("too many queries in flight")]
    Overloaded,
}

/// What the forwarder hands back for one question.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answer {
        answer: Arc<CachedAnswer>,
        /// Seconds since the answer was stored; subtract from its TTLs.
        age: u32,
        /// The answer is past its TTL and served because refreshing it failed or is slow.
        stale: bool,
    },
    Failed(ForwardError),
}

impl Outcome {
    fn fresh(hit: Hit) -> Self {
        Self::Answer {
            answer: hit.answer,
            age: hit.age,
            stale: false,
        }
    }

    fn stale(hit: Hit) -> Self {
        Self::Answer {
            answer: hit.answer,
            age: hit.age,
            stale: true,
        }
    }
}

/// The forwarder, shared by every query.
pub struct Forwarder {
    /// Replaced as a whole when resolv.conf changes; a query works on one snapshot.
    upstreams: RwLock<Upstreams>,
    cache: Cache,
    inflight: Mutex<HashMap<CacheKey, Vec<oneshot::Sender<Outcome>>>>,
    permits: Semaphore,
    upstream_config: UpstreamConfig,
    cache_config: CacheConfig,
    /// Random per-process tag sent in every upstream query, to recognize our own queries.
    loop_tag: [u8; 8],
    epoch: Instant,
}

impl Forwarder {
    pub fn new(
        upstreams: Vec<SocketAddr>,
        upstream_config: UpstreamConfig,
        cache_config: CacheConfig,
        max_inflight: usize,
    ) -> Self {
        Self {
            upstreams: RwLock::new(
                upstreams
                    .into_iter()
                    .map(|a| Arc::new(Upstream::new(a)))
                    .collect(),
            ),
            cache: Cache::new(&cache_config),
            inflight: Mutex::new(HashMap::new()),
            permits: Semaphore::new(max_inflight),
            upstream_config,
            cache_config,
            loop_tag: rand::random(),
            epoch: Instant::now(),
        }
    }

    /// The upstream servers in use.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.snapshot().iter().map(|u| u.addr).collect()
    }

    fn snapshot(&self) -> Upstreams {
        self.upstreams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the upstream list, keeping what was learned about servers that stay.
    pub fn set_upstreams(&self, addrs: &[SocketAddr]) {
        let old = self.snapshot();
        let new: Upstreams = addrs
            .iter()
            .map(|&addr| {
                old.iter()
                    .find(|u| u.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(addr)))
            })
            .collect();
        *self.upstreams.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn stale_ttl(&self) -> u32 {
        self.cache_config.stale_ttl_secs
    }

    /// Checks a client query's EDNS options for our loop tag. If the query is one of our own
    /// upstream queries come back, the upstream it was sent to is this daemon: stop using it.
    pub fn detect_loop(&self, edns: Option<&Edns>) -> bool {
        let Some(EdnsOption::Unknown(_, data)) = edns.and_then(|e| e.option(LOOP_OPTION.into()))
        else {
            return false;
        };
        if data.len() != 9 || data[..8] != self.loop_tag {
            return false;
        }
        if let Some(upstream) = self.snapshot().get(usize::from(data[8]))
            && upstream.mark_looping()
        {
            warn!(
                upstream = %upstream.addr,
                "upstream is this daemon itself (a forwarding loop); not using it"
            );
        }
        true
    }

    /// Answers `key` from the cache or the upstreams.
    pub async fn resolve(self: &Arc<Self>, key: CacheKey) -> Outcome {
        let stale = match self.cache.get(&key, Instant::now()) {
            Lookup::Fresh(hit) => {
                if needs_prefetch(&hit) {
                    self.prefetch(key);
                }
                return Outcome::fresh(hit);
            }
            Lookup::Stale(hit) => Some(hit),
            Lookup::Miss => None,
        };
        let Ok(_permit) = self.permits.try_acquire() else {
            return stale.map_or(Outcome::Failed(ForwardError::Overloaded), Outcome::stale);
        };
        let Some(rx) = self.join_or_start(key) else {
            return stale.map_or(Outcome::Failed(ForwardError::Overloaded), Outcome::stale);
        };
        let client_wait = Duration::from_millis(self.cache_config.stale_client_timeout_ms);
        match stale {
            Some(hit) => tokio::select! {
                outcome = rx => outcome.unwrap_or(Outcome::stale(hit)),
                () = tokio::time::sleep(client_wait) => Outcome::stale(hit),
            },
            None => rx.await.unwrap_or(Outcome::Failed(ForwardError::Timeout)),
        }
    }

    /// Refreshes a popular entry shortly before it expires, so its clients never wait on the
    /// upstream (as unbound's `prefetch`). Nobody waits on the result; it lands in the cache.
    fn prefetch(self: &Arc<Self>, key: CacheKey) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.contains_key(&key) || self.permits.available_permits() == 0 {
            return;
        }
        inflight.insert(key.clone(), Vec::new());
        drop(inflight);
        let this = Arc::clone(self);
        tokio::spawn(async move { this.fetch(key).await });
    }

    /// Registers interest in `key`'s answer, starting an upstream query unless one is running.
    fn join_or_start(self: &Arc<Self>, key: CacheKey) -> Option<oneshot::Receiver<Outcome>> {
        let (tx, rx) = oneshot::channel();
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiters) = inflight.get_mut(&key) {
            if waiters.len() >= MAX_WAITERS_PER_QUESTION {
                return None;
            }
            waiters.push(tx);
            return Some(rx);
        }
        inflight.insert(key.clone(), vec![tx]);
        drop(inflight);
        // The upstream query runs in its own task so that no client going away can strand the
        // others waiting on it.
        let this = Arc::clone(self);
        tokio::spawn(async move { this.fetch(key).await });
        Some(rx)
    }

    async fn fetch(self: Arc<Self>, key: CacheKey) {
        let budget = Duration::from_millis(self.upstream_config.query_timeout_ms);
        let result = timeout(budget, self.ask_upstreams(&key))
            .await
            .unwrap_or(Err(ForwardError::Timeout));
        let outcome = match result {
            Ok((msg, wire_len)) => {
                let answer = Arc::new(CachedAnswer::from_message(
                    msg,
                    wire_len,
                    &self.cache_config,
                ));
                if let Some(ttl) = answer.cache_ttl(&self.cache_config)
                    && ttl > 0
                {
                    self.cache
                        .insert(key.clone(), answer.clone(), ttl, Instant::now());
                }
                Outcome::Answer {
                    answer,
                    age: 0,
                    stale: false,
                }
            }
            Err(error) => {
                debug!(name = %key.name, qtype = %key.qtype, %error, "upstream query failed");
                match self.cache.get(&key, Instant::now()) {
                    Lookup::Fresh(hit) => Outcome::fresh(hit),
                    Lookup::Stale(hit) => Outcome::stale(hit),
                    Lookup::Miss => Outcome::Failed(error),
                }
            }
        };
        let waiters = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Upstreams to try, best first: usable ones by smoothed RTT (unmeasured ones first, so each
    /// gets measured).
    fn order(&self, upstreams: &[Arc<Upstream>]) -> Vec<usize> {
        let now = self.now_ms();
        let mut order: Vec<usize> = (0..upstreams.len())
            .filter(|&i| upstreams[i].usable(now))
            .collect();
        order.sort_by_key(|&i| upstreams[i].srtt_us());
        order
    }

    async fn ask_upstreams(&self, key: &CacheKey) -> Result<(Message, usize), ForwardError> {
        let upstreams = self.snapshot();
        let order = self.order(&upstreams);
        if order.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let max_wait = Duration::from_millis(self.upstream_config.timeout_ms);
        let mut last_error = ForwardError::Timeout;
        for _ in 0..self.upstream_config.attempts {
            for &index in &order {
                let upstream = &upstreams[index];
                if !upstream.usable(self.now_ms()) {
                    continue;
                }
                let wait = upstream.try_wait(max_wait);
                let started = Instant::now();
                match self
                    .exchange(upstream.addr, index, key, wait, max_wait)
                    .await
                {
                    Ok((msg, wire_len)) => {
                        upstream.record_answer(started.elapsed());
                        match msg.metadata.response_code {
                            ResponseCode::NoError | ResponseCode::NXDomain => {
                                return Ok((msg, wire_len));
                            }
                            rcode => {
                                debug!(upstream = %upstream.addr, %rcode, name = %key.name, "upstream failed the query");
                                last_error = ForwardError::Upstream(rcode);
                            }
                        }
                    }
                    Err(error) => {
                        debug!(upstream = %upstream.addr, %error, name = %key.name, "upstream exchange failed");
                        upstream.record_failure(self.now_ms());
                    }
                }
            }
        }
        Err(last_error)
    }

    fn build_query(&self, id: u16, index: usize, key: &CacheKey) -> Vec<u8> {
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from(&key.name), key.qtype));
        let mut edns = Edns::new();
        edns.set_max_payload(self.upstream_config.edns_payload);
        edns.set_dnssec_ok(key.dnssec_ok);
        let mut tag = self.loop_tag.to_vec();
        tag.push(u8::try_from(index).unwrap_or(u8::MAX));
        edns.options_mut()
            .insert(EdnsOption::Unknown(LOOP_OPTION, tag));
        msg.set_edns(edns);
        msg.to_vec()
            .expect("a one-question query with a valid name always encodes")
    }

    /// One question to one upstream: UDP, then TCP if the answer was truncated.
    async fn exchange(
        &self,
        addr: SocketAddr,
        index: usize,
        key: &CacheKey,
        udp_wait: Duration,
        tcp_wait: Duration,
    ) -> Result<(Message, usize), ExchangeError> {
        let id: u16 = rand::random();
        let query = self.build_query(id, index, key);
        let (msg, len) = timeout(udp_wait, udp_exchange(addr, &query, id, key))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        if !msg.metadata.truncation {
            return Ok((msg, len));
        }
        debug!(upstream = %addr, name = %key.name, "truncated answer, retrying over TCP");
        timeout(tcp_wait, tcp_exchange(addr, &query, id, key))
            .await
            .map_err(|_| ExchangeError::Timeout)?
    }
}

/// Is a cache hit in the last tenth of its TTL (and the TTL long enough to be worth it)?
fn needs_prefetch(hit: &Hit) -> bool {
    hit.ttl >= PREFETCH_MIN_TTL && hit.age >= hit.ttl - hit.ttl / 10
}

/// Failure of one exchange with one upstream.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("timed out")]
    Timeout,
    #[error("network error")]
    Io(#[from] io::Error),
    #[error("malformed answer over TCP")]
    Malformed,
}

/// Does `msg` answer our query `id` for `key`? Anything else on the socket is ignored, which
/// also drops spoofed answers with a wrong ID or question.
fn answers(msg: &Message, id: u16, key: &CacheKey) -> bool {
    msg.metadata.id == id
        && msg.metadata.message_type == MessageType::Response
        && msg.queries.len() == 1
        && msg.queries[0].query_type() == key.qtype
        && Name::from(&key.name) == *msg.queries[0].name()
}

async fn udp_exchange(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    key: &CacheKey,
) -> Result<(Message, usize), ExchangeError> {
    // A fresh socket per query gives every query its own random source port (RFC 5452).
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let len = socket.recv(&mut buf).await?;
        match Message::from_vec(&buf[..len]) {
            Ok(msg) if answers(&msg, id, key) => return Ok((msg, len)),
            _ => debug!(upstream = %addr, "ignoring a datagram that does not answer our query"),
        }
    }
}

async fn tcp_exchange(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    key: &CacheKey,
) -> Result<(Message, usize), ExchangeError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let len = u16::try_from(query.len()).map_err(|_| ExchangeError::Malformed)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = usize::from(stream.read_u16().await?);
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    match Message::from_vec(&buf) {
        Ok(msg) if answers(&msg, id, key) => Ok((msg, len)),
        _ => Err(ExchangeError::Malformed),
    }
}
