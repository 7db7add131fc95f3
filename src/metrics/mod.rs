//! Metrics for operators: an opt-in HTTP endpoint (`[metrics]`, off by default) that answers
//! `GET /metrics` in the Prometheus text format (OpenMetrics 1.0), from one
//! `prometheus-client` registry that libp2p's own metrics (`libp2p-metrics`) are registered in
//! too.
//!
//! This module owns the registry, the metric handles and the endpoint ([`Endpoint`]: bound
//! with the daemon's other sockets, served as one of its supervised tasks). The subsystems
//! measured get handles ([`Meters`]) and call one method where something happens: the DNS
//! handler when it answers ([`DnsMetrics::answered`]), the forwarder on a cache lookup, each
//! upstream on a try and its end ([`UpstreamMeters`]), the DHT resolver when a lookup ends
//! ([`DhtMetrics`]), the P2P event loop on each swarm event ([`P2pMetrics`]). What the
//! subsystems hold anyway (the cache's size, the tunnels' counters) is read when scraped
//! (module `collect`). It must not decide anything for them, nor hold their state: a handle
//! only counts. When metrics are off every handle is `None`, and a measured place costs one
//! branch.
//!
//! Counting is cheap by construction: every labelled child a query touches is resolved once
//! (when the metrics are made, or when an upstream joins the set), counters are relaxed
//! atomic adds, and histograms are atomic too ([`histogram::AtomicHistogram`]), so no lock is
//! taken and no label set built per query.

mod collect;
pub mod dns;
pub mod histogram;
pub mod http;
pub mod p2p;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize},
};

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use dns::{DnsMetrics, Source, UpstreamFamily, UpstreamMeters};
pub use http::{MetricsError, MetricsListener};
pub use p2p::{DhtMetrics, P2pMetrics};

use crate::{config::MetricsConfig, dns::forwarder::Forwarder, tunnel::Tunnels};

/// The handles a daemon's subsystems count with; each `None` when metrics are off (or the
/// subsystem does not run).
#[derive(Debug, Clone, Default)]
pub struct Meters {
    /// The DNS front end and the forwarder's cache.
    pub dns: Option<Arc<DnsMetrics>>,
    /// The upstream servers.
    pub upstreams: Option<UpstreamFamily>,
    /// The DHT resolver's lookups.
    pub dht: Option<Arc<DhtMetrics>>,
    /// The P2P node.
    pub p2p: Option<Arc<P2pMetrics>>,
}

/// The metrics endpoint, bound, with its registry being filled until [`Endpoint::serve`].
#[derive(Debug)]
pub struct Endpoint {
    listener: MetricsListener,
    registry: Registry,
}

impl Endpoint {
    /// Binds the endpoint of `config`, when it is on.
    ///
    /// # Errors
    /// [`MetricsError::Bind`] when `metrics.listen` cannot be bound.
    pub async fn bind(config: &MetricsConfig) -> Result<Option<Self>, MetricsError> {
        let Some(addr) = config.endpoint() else {
            return Ok(None);
        };
        let listener = MetricsListener::bind(addr, config.max_connections).await?;
        let mut registry = Registry::default();
        collect::register_build_info(&mut registry);
        Ok(Some(Self { listener, registry }))
    }

    /// The address served (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Registers a resolver daemon's metrics (the P2P node's and the DHT's with `p2p`) and
    /// returns their handles.
    pub fn resolver_meters(&mut self, p2p: bool) -> Meters {
        let registry = &mut self.registry;
        Meters {
            dns: Some(Arc::new(DnsMetrics::register(registry))),
            upstreams: Some(UpstreamFamily::register(registry)),
            dht: p2p.then(|| Arc::new(DhtMetrics::register(registry))),
            p2p: p2p.then(|| Arc::new(P2pMetrics::register(registry, false))),
        }
    }

    /// Registers an introduction server's metrics (its node's, with what it holds for
    /// others) and returns the node's handle.
    pub fn intro_meters(&mut self) -> Arc<P2pMetrics> {
        Arc::new(P2pMetrics::register(&mut self.registry, true))
    }

    /// Reads the cache's size and the queries being answered (`in_flight`) at each scrape.
    pub fn watch_resolver(&mut self, forwarder: Arc<Forwarder>, in_flight: Arc<AtomicUsize>) {
        let collector = collect::ResolverCollector {
            forwarder,
            in_flight,
        };
        self.registry.register_collector(Box::new(collector));
    }

    /// Reads the tunnels' streams and bytes at each scrape.
    pub fn watch_tunnels(&mut self, tunnels: Arc<Tunnels>) {
        let collector = collect::TunnelCollector(tunnels);
        self.registry.register_collector(Box::new(collector));
    }

    /// Answers scrapes until `stop`.
    pub async fn serve(self, stop: CancellationToken) {
        self.listener.serve(self.registry, stop).await;
    }
}

#[cfg(test)]
mod tests {
    /// The dashboard shipped in `packaging/grafana` asks only for metrics this module makes.
    #[test]
    fn the_dashboard_uses_the_names_exposed() {
        let dashboard = include_str!("../../packaging/grafana/p2pdns.json");
        let sources = [
            include_str!("dns.rs"),
            include_str!("p2p.rs"),
            include_str!("collect.rs"),
        ]
        .concat();
        let mut names: Vec<&str> = dashboard
            .match_indices("p2pdns_")
            .map(|(at, _)| {
                let rest = &dashboard[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() > 15, "{names:?}");
        for name in names {
            let base = ["_bucket", "_count", "_sum", "_total", "_info"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                sources.contains(&format!("\"{base}\"")),
                "{name} is not made here"
            );
        }
    }
}
