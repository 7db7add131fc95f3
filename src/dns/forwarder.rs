//! Forwarding to upstream servers: cache first, one upstream query for many identical
//! in-flight questions, hedged tries of the upstreams, fastest first (see
//! [`UpstreamSet::ask`]), UDP with TCP retry on truncation, and serve-stale when every
//! upstream fails.
//!
//! A query that must wait on the upstreams holds one of the permits of `dns.max_inflight`
//! (which `.p2p` lookups share) and a share of them for its client, by the rule that shares
//! DHT lookups (`naming::shares`): one client may hold half when alone, and less as more
//! clients wait, so a client flooding the daemon with made-up names (a "random subdomain"
//! attack) cannot take every permit and leave the others with SERVFAIL. Cached answers never
//! wait for either.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{LowerName, Name},
};
use tokio::{
    sync::{Semaphore, SemaphorePermit, oneshot},
    time::Instant,
};
use tracing::debug;

use super::{
    cache::{Cache, CacheKey, CachedAnswer, Hit, Lookup},
    exchange::Exchanged,
    memo::Reuse,
    scrub,
    upstream::{AskError, TryPlan, UpstreamHealth, UpstreamSet},
};
use crate::{
    config::{CacheConfig, UpstreamConfig},
    metrics::{DnsMetrics, Source, UpstreamFamily},
    naming::{Requester, Share, Shares},
};

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
    /// An upstream answered, but with what does not decode or does not answer the question
    /// (and no other upstream answered better).
    #[error("an upstream answer is malformed")]
    Malformed,
    /// Upstreams answered, but not the question asked (another type, other names, a
    /// referral): see [`super::scrub`].
    #[error("upstream answers did not answer the question")]
    Mismatch,
    /// This machine ran out of sockets or buffers for upstream queries.
    #[error("out of local sockets or buffers")]
    LocalResources,
    /// An encrypted upstream's certificate was not accepted (and no other upstream answered).
    #[error("an upstream's certificate was not accepted")]
    Certificate,
}

impl From<AskError> for ForwardError {
    fn from(error: AskError) -> Self {
        match error {
            AskError::NoUpstreams => Self::NoUpstreams,
            AskError::Timeout => Self::Timeout,
            AskError::Rcode(rcode) => Self::Upstream(rcode),
            AskError::Malformed => Self::Malformed,
            AskError::Mismatch => Self::Mismatch,
            AskError::LocalResources => Self::LocalResources,
            AskError::Certificate => Self::Certificate,
        }
    }
}

/// What the forwarder hands back for one question.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A NOERROR or NXDOMAIN answer, just fetched from an upstream or taken from the cache.
    Answer {
        /// The answer, TTLs as stored.
        answer: Arc<CachedAnswer>,
        /// Seconds since the answer was stored; subtract from its TTLs.
        age: u32,
        /// The answer is past its TTL and served because refreshing it failed or is slow.
        stale: bool,
        /// A fresh cache hit not due for prefetch: how a reply made from it may be reused.
        reuse: Option<Reuse>,
        /// Taken from the cache (fresh or stale), not fetched for this question.
        from_cache: bool,
    },
    /// No answer: the upstreams failed (or the forwarder was full) and the cache held none,
    /// not even a stale one.
    Failed(ForwardError),
}

impl Outcome {
    /// A fresh hit; `reuse` says whether a reply made from it may be sent again as bytes.
    fn fresh(hit: Hit, reuse: bool) -> Self {
        let reuse = reuse.then(|| Reuse {
            stored: hit.stored,
            age: hit.age,
            until: hit.stored + Duration::from_secs(prefetch_age(hit.ttl).into()),
        });
        Self::Answer {
            answer: hit.answer,
            age: hit.age,
            stale: false,
            reuse,
            from_cache: true,
        }
    }

    fn stale(hit: Hit) -> Self {
        Self::Answer {
            answer: hit.answer,
            age: hit.age,
            stale: true,
            reuse: None,
            from_cache: true,
        }
    }

    /// Where the answer came from, for the metrics.
    pub fn source(&self) -> Source {
        match self {
            Self::Answer { stale: true, .. } => Source::Stale,
            Self::Answer {
                from_cache: true, ..
            } => Source::Cache,
            _ => Source::Upstream,
        }
    }
}

/// The forwarder, shared by every query.
pub struct Forwarder {
    /// Replaced as a whole when its source changes; a query works on one snapshot.
    upstreams: Arc<UpstreamSet>,
    cache: Cache,
    inflight: Mutex<HashMap<CacheKey, Vec<oneshot::Sender<Outcome>>>>,
    permits: Arc<Semaphore>,
    /// The part of `permits` each client may hold.
    shares: Arc<Shares>,
    upstream_config: UpstreamConfig,
    cache_config: CacheConfig,
    /// Cache hits and misses, when metrics are on.
    metrics: Option<Arc<DnsMetrics>>,
}

impl Forwarder {
    /// A forwarder asking `upstreams`, with an empty cache. A client query that waits on
    /// upstreams holds one of `waiting`'s permits, which `.p2p` lookups share
    /// (`dns.max_inflight`, all of whose permits must be free now), and its client's share of
    /// them; with none left it is answered at once (stale, or SERVFAIL).
    pub fn new(
        upstreams: Arc<UpstreamSet>,
        upstream_config: UpstreamConfig,
        cache_config: CacheConfig,
        waiting: Arc<Semaphore>,
    ) -> Self {
        Self {
            upstreams,
            cache: Cache::new(&cache_config),
            inflight: Mutex::new(HashMap::new()),
            shares: Shares::new(waiting.available_permits()),
            permits: waiting,
            upstream_config,
            cache_config,
            metrics: None,
        }
    }

    /// Counts cache hits and misses in `dns`, and each upstream's tries in `upstreams`.
    pub fn with_metrics(
        mut self,
        dns: Option<Arc<DnsMetrics>>,
        upstreams: Option<UpstreamFamily>,
    ) -> Self {
        self.metrics = dns;
        if let Some(family) = upstreams {
            self.upstreams.count_in(family);
        }
        self
    }

    /// The upstream servers in use.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.addrs()
    }

    /// The upstream servers as configured, in list order (`tls://9.9.9.9:853#dns.quad9.net`
    /// for an encrypted one, the address for a plain one).
    pub fn upstream_servers(&self) -> Vec<String> {
        self.upstreams
            .servers()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// How each upstream server is doing now (for the metrics).
    pub fn upstream_health(&self) -> Vec<UpstreamHealth> {
        self.upstreams.health()
    }

    /// The answer cache, to read its usage or empty it.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The TTL written on stale answers, in seconds (`cache.stale_ttl_secs`, RFC 8767 section
    /// 4).
    pub fn stale_ttl(&self) -> u32 {
        self.cache_config.stale_ttl_secs
    }

    /// Is a client query for `qname` one of our own loop probes come back? Then the upstream it
    /// was sent to forwards our queries to us, and is no longer used (see
    /// [`UpstreamSet::detect_loop`]).
    pub fn detect_loop(&self, qname: &LowerName) -> bool {
        self.upstreams.detect_loop(qname)
    }

    /// Answers `key` for `client` from the cache or the upstreams; when the answer must be
    /// waited for and `client` holds its share of the permits already, or none is left, at
    /// once (stale, or [`ForwardError::Overloaded`]).
    pub async fn resolve(self: &Arc<Self>, key: CacheKey, client: Requester) -> Outcome {
        let lookup = self.cache.get(&key, Instant::now());
        if let Some(metrics) = &self.metrics {
            metrics.cache_lookup(matches!(lookup, Lookup::Fresh(_)));
        }
        let stale = match lookup {
            Lookup::Fresh(hit) => {
                let prefetch = needs_prefetch(&hit);
                if prefetch {
                    self.prefetch(key);
                }
                return Outcome::fresh(hit, !prefetch);
            }
            Lookup::Stale(hit) => Some(hit),
            Lookup::Miss => None,
        };
        let Some(_held) = self.admit(client) else {
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

    /// A share of the permits for `client` and a permit, if both are free.
    fn admit(&self, client: Requester) -> Option<(Share, SemaphorePermit<'_>)> {
        let share = self.shares.take(client)?;
        let permit = self.permits.try_acquire().ok()?;
        Some((share, permit))
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
        let result = self.ask_upstreams(&key).await;
        let outcome = match result {
            Ok(Exchanged { message, wire_len }) => {
                let answer = Arc::new(CachedAnswer::from_message(
                    message,
                    wire_len,
                    &key,
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
                    reuse: None,
                    from_cache: false,
                }
            }
            Err(error) => {
                debug!(name = %key.name, qtype = %key.qtype, %error, "upstream query failed");
                match self.cache.get(&key, Instant::now()) {
                    Lookup::Fresh(hit) => Outcome::fresh(hit, false),
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

    /// Asks the upstreams for `key` (see [`UpstreamSet::ask`]) within the query budget
    /// (`upstream.query_timeout_ms`); an answer must answer the question ([`scrub::vet`]).
    async fn ask_upstreams(&self, key: &CacheKey) -> Result<Exchanged, ForwardError> {
        let config = &self.upstream_config;
        let plan = TryPlan {
            attempts: config.attempts,
            max_wait: Duration::from_millis(config.timeout_ms),
            deadline: Instant::now() + Duration::from_millis(config.query_timeout_ms),
        };
        let query = |edns| self.build_query(key, edns);
        let judge = |message: &mut Message| scrub::vet(message, key);
        Ok(self.upstreams.ask(plan, &key.name, query, judge).await?)
    }

    /// The query for `key` with a fresh random ID: with an OPT record (our UDP size, the
    /// client's DO bit, no option) when `edns`, else a plain one.
    fn build_query(&self, key: &CacheKey, edns: bool) -> Message {
        let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        key.set_query_flags(&mut msg.metadata);
        msg.add_query(Query::query(Name::from(&key.name), key.qtype));
        if edns {
            let mut opt = Edns::new();
            opt.set_max_payload(self.upstream_config.edns_payload);
            opt.set_dnssec_ok(key.dnssec_ok);
            msg.set_edns(opt);
        }
        msg
    }
}

/// Is a cache hit in the last tenth of its TTL (and the TTL long enough to be worth it)?
fn needs_prefetch(hit: &Hit) -> bool {
    hit.age >= prefetch_age(hit.ttl)
}

/// The age in seconds from which an entry fresh for `ttl` seconds in all is prefetched (its
/// last tenth); `ttl` itself, when it expires, if too short to be prefetched.
fn prefetch_age(ttl: u32) -> u32 {
    if ttl >= PREFETCH_MIN_TTL {
        ttl - ttl / 10
    } else {
        ttl
    }
}
