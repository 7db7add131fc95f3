//! The resolver's metrics: queries by where their answer came from and its RCODE, answer
//! times, the cache's hits and misses, and each upstream's tries, failures and RTT.
//!
//! Every labelled child a query touches is resolved when the metrics are made (and an
//! upstream's when it joins the set), so that counting a query is an array index and relaxed
//! atomic adds: no label set is built, hashed or looked up per query.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::histogram::AtomicHistogram;

/// Where the answer to a query came from: the `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Made here without asking anyone: special-use names (RFC 6761), CHAOS, the RFC 8482
    /// answer to ANY, and refusals and protocol errors.
    Local,
    /// The forwarder's cache, fresh.
    Cache,
    /// The forwarder's cache past its TTL (serve-stale, RFC 8767).
    Stale,
    /// An upstream server, asked for this query (or for an identical one in flight); also
    /// SERVFAIL when the upstreams failed.
    Upstream,
    /// A name under the peer-to-peer TLDs answered from this machine's data: the local
    /// records, the TLD's apex, reserved names.
    P2pLocal,
    /// A `.p2p` name answered from signed name records: a DHT lookup, the records it cached,
    /// or this node's own names; also SERVFAIL when the DHT gave nothing.
    P2pDht,
}

impl Source {
    /// Every source, in the order of the metrics' arrays.
    const ALL: [Self; 6] = [
        Self::Local,
        Self::Cache,
        Self::Stale,
        Self::Upstream,
        Self::P2pLocal,
        Self::P2pDht,
    ];

    /// The label value.
    fn label(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Cache => "cache",
            Self::Stale => "stale",
            Self::Upstream => "upstream",
            Self::P2pLocal => "p2p_local",
            Self::P2pDht => "p2p_dht",
        }
    }
}

/// The `rcode` label values, RFC 1035 section 4.1.1 names; every other RCODE is `OTHER`.
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER",
];

/// Index of `rcode` in [`RCODES`].
fn rcode_index(rcode: ResponseCode) -> usize {
    match rcode {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        _ => 6,
    }
}

/// The DNS front end's and the forwarder's metrics.
#[derive(Debug)]
pub struct DnsMetrics {
    /// `p2pdns_dns_queries_total{source, rcode}`, by [`Source::ALL`] then [`RCODES`].
    queries: [[Counter; RCODES.len()]; Source::ALL.len()],
    /// `p2pdns_dns_answer_duration_seconds{source}`.
    latency: [AtomicHistogram; Source::ALL.len()],
    cache_hits: Counter,
    cache_misses: Counter,
}

impl DnsMetrics {
    /// Registers the resolver's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let queries = Family::<[(&'static str, &'static str); 2], Counter>::default();
        let latency =
            Family::<_, _, fn() -> AtomicHistogram>::new_with_constructor(AtomicHistogram::seconds);
        let this = Self {
            queries: Source::ALL.map(|source| {
                std::array::from_fn(|rcode| {
                    let labels = [("source", source.label()), ("rcode", RCODES[rcode])];
                    queries.get_or_create_owned(&labels)
                })
            }),
            latency: Source::ALL.map(|source| {
                let labels: [(&'static str, &'static str); 1] = [("source", source.label())];
                latency.get_or_create_owned(&labels)
            }),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        };
        registry.register(
            "p2pdns_dns_queries",
            "DNS queries answered, by where the answer came from and its RCODE",
            queries,
        );
        registry.register(
            "p2pdns_dns_answer_duration_seconds",
            "Time from a query being taken to its answer being ready to send, by where the answer came from",
            latency,
        );
        registry.register(
            "p2pdns_cache_hits",
            "Forwarded questions answered from a fresh cache entry",
            this.cache_hits.clone(),
        );
        registry.register(
            "p2pdns_cache_misses",
            "Forwarded questions the cache held no fresh answer for (a stale one counts here)",
            this.cache_misses.clone(),
        );
        this
    }

    /// Counts a query answered from `source` with `rcode` after `elapsed`.
    pub fn answered(&self, source: Source, rcode: ResponseCode, elapsed: Duration) {
        let at = source as usize;
        self.queries[at][rcode_index(rcode)].inc();
        self.latency[at].observe_duration(elapsed);
    }

    /// Counts a query answered with `reply`, the encoded bytes of an answer made before from
    /// `source` and sent again (the answer memo, src/dns/memo.rs, which skips the handler and
    /// the forwarder): from that source, a cache hit when it is the cache, with the RCODE of
    /// its header (RFC 1035 section 4.1.1: the low four bits of the fourth byte).
    pub fn answered_from_memo(&self, source: Source, reply: &[u8], elapsed: Duration) {
        let rcode = reply.get(3).map_or(ResponseCode::ServFail, |&b| {
            ResponseCode::from_low(b & 0x0f)
        });
        if source == Source::Cache {
            self.cache_hits.inc();
        }
        self.answered(source, rcode, elapsed);
    }

    /// Counts a cache lookup of the forwarder: a fresh entry or not.
    pub fn cache_lookup(&self, fresh: bool) {
        if fresh {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }
}

/// The `upstream` label: the server as configured (`192.0.2.1:53`, `tls://...#name`).
type UpstreamLabel = [(&'static str, String); 1];

/// The per-upstream metric families; [`UpstreamFamily::meters`] resolves one server's.
#[derive(Debug, Clone)]
pub struct UpstreamFamily {
    sent: Family<UpstreamLabel, Counter>,
    answers: Family<UpstreamLabel, Counter>,
    failures: Family<UpstreamLabel, Counter>,
    rtt: Family<UpstreamLabel, AtomicHistogram, fn() -> AtomicHistogram>,
}

/// One upstream's metrics, resolved once when it joins the set.
#[derive(Debug)]
pub struct UpstreamMeters {
    sent: Counter,
    answers: Counter,
    failures: Counter,
    rtt: AtomicHistogram,
}

impl UpstreamFamily {
    /// Registers the per-upstream metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self {
            sent: Family::default(),
            answers: Family::default(),
            failures: Family::default(),
            rtt: Family::new_with_constructor(AtomicHistogram::seconds),
        };
        registry.register(
            "p2pdns_upstream_queries",
            "Queries sent to each upstream server (each try, retries and TCP fallbacks included)",
            this.sent.clone(),
        );
        registry.register(
            "p2pdns_upstream_answers",
            "Answers received from each upstream server, whatever their RCODE",
            this.answers.clone(),
        );
        registry.register(
            "p2pdns_upstream_failures",
            "Tries of each upstream server that timed out or failed on the network",
            this.failures.clone(),
        );
        registry.register(
            "p2pdns_upstream_rtt_seconds",
            "Round-trip time of each upstream server's answers",
            this.rtt.clone(),
        );
        this
    }

    /// The metrics of `upstream` (its configured form), made on first use.
    pub fn meters(&self, upstream: &str) -> UpstreamMeters {
        let label = [("upstream", upstream.to_owned())];
        UpstreamMeters {
            sent: self.sent.get_or_create_owned(&label),
            answers: self.answers.get_or_create_owned(&label),
            failures: self.failures.get_or_create_owned(&label),
            rtt: self.rtt.get_or_create_owned(&label),
        }
    }

    /// Drops the series of an upstream no longer used (resolv.conf changed), so that a
    /// laptop moving between networks does not collect them without end.
    pub fn forget(&self, upstream: &str) {
        let label = [("upstream", upstream.to_owned())];
        self.sent.remove(&label);
        self.answers.remove(&label);
        self.failures.remove(&label);
        self.rtt.remove(&label);
    }
}

impl UpstreamMeters {
    /// Counts a query sent.
    pub fn sent(&self) {
        self.sent.inc();
    }

    /// Counts an answer that took `rtt`.
    pub fn answered(&self, rtt: Duration) {
        self.answers.inc();
        self.rtt.observe_duration(rtt);
    }

    /// Counts a try that timed out or failed.
    pub fn failed(&self) {
        self.failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &DnsMetrics, source: Source, rcode: &str) -> u64 {
        let at = RCODES.iter().position(|r| *r == rcode).unwrap();
        metrics.queries[source as usize][at].get()
    }

    #[test]
    fn each_source_and_rcode_has_its_own_counter() {
        let mut registry = Registry::default();
        let metrics = DnsMetrics::register(&mut registry);
        let second = Duration::from_secs(1);
        metrics.answered(Source::P2pDht, ResponseCode::NXDomain, second);
        metrics.answered(Source::Stale, ResponseCode::BADVERS, second);
        assert_eq!(count(&metrics, Source::P2pDht, "NXDOMAIN"), 1);
        assert_eq!(count(&metrics, Source::Stale, "OTHER"), 1);
        assert_eq!(count(&metrics, Source::P2pLocal, "NXDOMAIN"), 0);
        for (at, source) in Source::ALL.iter().enumerate() {
            assert_eq!(*source as usize, at, "{source:?} indexes its own row");
        }
        // An NXDOMAIN reply's header: ID, QR|RD, RA|NXDOMAIN.
        metrics.answered_from_memo(Source::Cache, &[0x12, 0x34, 0x81, 0x83, 0, 1], second);
        assert_eq!(count(&metrics, Source::Cache, "NXDOMAIN"), 1);
        assert_eq!(metrics.cache_hits.get(), 1);
        assert_eq!(
            metrics.latency[Source::Cache as usize].count_and_sum(),
            (1, 1.0)
        );
    }
}
