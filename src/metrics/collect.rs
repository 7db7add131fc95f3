//! Figures read when Prometheus scrapes rather than counted as they change: the cache's size
//! and the queries being answered (their owners keep them already), and the tunnels' streams
//! and bytes (kept per service and per name by [`crate::tunnel`]). Reading them costs a lock
//! or two per scrape, and nothing on the query path.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};

use crate::{
    dns::forwarder::Forwarder,
    tunnel::{ExposedService, MappedName, Tunnels, TunnelsReport},
};

/// Registers `p2pdns_build_info{version}`, the usual way to see which version a target runs.
pub(super) fn register_build_info(registry: &mut Registry) {
    registry.register(
        "p2pdns_build",
        "The p2pdns version running",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
}

/// The cache's size and the queries being answered, read at each scrape.
pub(super) struct ResolverCollector {
    pub(super) forwarder: Arc<Forwarder>,
    pub(super) in_flight: Arc<AtomicUsize>,
}

impl fmt::Debug for ResolverCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResolverCollector")
    }
}

impl Collector for ResolverCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (entries, bytes) = self.forwarder.cache().usage();
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        upstream_health(&mut encoder, &self.forwarder)?;
        for (name, help, value) in [
            (
                "p2pdns_cache_entries",
                "Answers the cache holds, fresh or kept for serve-stale",
                entries,
            ),
            (
                "p2pdns_cache_bytes",
                "Estimated bytes of the answers the cache holds",
                bytes,
            ),
            (
                "p2pdns_dns_queries_in_flight",
                "DNS queries being answered now",
                in_flight,
            ),
        ] {
            gauge(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

/// `p2pdns_upstream_up` and `p2pdns_upstream_srtt_seconds`, per upstream server.
fn upstream_health(
    encoder: &mut DescriptorEncoder,
    forwarder: &Forwarder,
) -> Result<(), fmt::Error> {
    let health = forwarder.upstream_health();
    let label = |server: &str| [("upstream", server.to_owned())];
    let up: Vec<_> = health
        .iter()
        .map(|h| (label(&h.server), u64::from(h.usable)))
        .collect();
    let help = "1 when the upstream server is asked, 0 while it rests after failures or sends our queries back";
    labelled(encoder, "p2pdns_upstream_up", help, MetricType::Gauge, &up)?;
    let measured: Vec<_> = health
        .iter()
        .filter_map(|h| Some((&h.server, h.srtt?)))
        .collect();
    if measured.is_empty() {
        return Ok(());
    }
    let help = "Smoothed round-trip time of each upstream server (what orders them)";
    let mut family = encoder.encode_descriptor(
        "p2pdns_upstream_srtt_seconds",
        help,
        None,
        MetricType::Gauge,
    )?;
    for (server, srtt) in measured {
        ConstGauge::new(srtt.as_secs_f64()).encode(family.encode_family(&label(server))?)?;
    }
    Ok(())
}

/// The tunnels' streams and bytes, per exposed service and per tunnelled name.
pub(super) struct TunnelCollector(pub(super) Arc<Tunnels>);

impl fmt::Debug for TunnelCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelCollector")
    }
}

impl Collector for TunnelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let report = self.0.report();
        let mut tables = served(&report);
        tables.extend(mapped(&report));
        for (name, help, kind, rows) in tables {
            labelled(&mut encoder, name, help, kind, &rows)?;
        }
        Ok(())
    }
}

/// The serving side's figures: per exposed service (`service="NAME:PORT"`), and refusals.
fn served(report: &TunnelsReport) -> Vec<Table> {
    let label =
        |s: &ExposedService| vec![("service", format!("{}:{}", s.service.name, s.service.port))];
    let rows = |value: fn(&ExposedService) -> u64| -> Rows {
        report
            .exposed
            .iter()
            .map(|s| (label(s), value(s)))
            .collect()
    };
    vec![
        (
            "p2pdns_tunnel_served_streams",
            "Tunnel streams accepted for each exposed service",
            MetricType::Counter,
            rows(|s| s.streams),
        ),
        (
            "p2pdns_tunnel_served_streams_open",
            "Tunnel streams open now for each exposed service",
            MetricType::Gauge,
            rows(|s| s.open),
        ),
        (
            "p2pdns_tunnel_served_bytes",
            "Bytes carried for each exposed service, by direction (sent to clients, received from them)",
            MetricType::Counter,
            report
                .exposed
                .iter()
                .flat_map(|s| directions(label(s), s.sent, s.received))
                .collect(),
        ),
        (
            "p2pdns_tunnel_refused_streams",
            "Tunnel streams refused, by reason",
            MetricType::Counter,
            refusals(&report.refused),
        ),
    ]
}

/// The opening side's figures, per tunnelled name (`name="site.p2p"`).
fn mapped(report: &TunnelsReport) -> Vec<Table> {
    let label = |m: &MappedName| vec![("name", m.name.clone())];
    let rows = |value: fn(&MappedName) -> u64| -> Rows {
        report.mapped.iter().map(|m| (label(m), value(m))).collect()
    };
    vec![
        (
            "p2pdns_tunnel_connections",
            "Local connections to each tunnelled name",
            MetricType::Counter,
            rows(|m| m.connections),
        ),
        (
            "p2pdns_tunnel_connections_open",
            "Local connections open now to each tunnelled name",
            MetricType::Gauge,
            rows(|m| m.open),
        ),
        (
            "p2pdns_tunnel_connection_failures",
            "Local connections to each tunnelled name that failed or were cut",
            MetricType::Counter,
            rows(|m| m.failed),
        ),
        (
            "p2pdns_tunnel_bytes",
            "Bytes carried through each tunnelled name, by direction (sent to the peer, received from it)",
            MetricType::Counter,
            report
                .mapped
                .iter()
                .flat_map(|m| directions(label(m), m.sent, m.received))
                .collect(),
        ),
    ]
}

/// Rows of a labelled metric: labels and value.
type Rows = Vec<(Vec<(&'static str, String)>, u64)>;

/// One labelled metric: name, help, type and its rows.
type Table = (&'static str, &'static str, MetricType, Rows);

/// The two rows of a byte count: `direction="sent"` and `"received"`.
fn directions(labels: Vec<(&'static str, String)>, sent: u64, received: u64) -> Rows {
    let with = |direction: &str| {
        let mut all = labels.clone();
        all.push(("direction", direction.to_owned()));
        all
    };
    vec![(with("sent"), sent), (with("received"), received)]
}

fn refusals(counts: &crate::tunnel::RefusalCounts) -> Rows {
    [
        ("not_exposed", counts.not_exposed),
        ("not_allowed", counts.not_allowed),
        ("busy", counts.busy),
        ("unreachable", counts.unreachable),
        ("malformed", counts.malformed),
    ]
    .into_iter()
    .map(|(reason, n)| (vec![("reason", reason.to_owned())], n))
    .collect()
}

/// Encodes one unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), fmt::Error> {
    let value = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)
}

/// Encodes a counter or gauge with a row per label set; nothing when there is no row.
fn labelled<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(S, u64)],
) -> Result<(), fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let metric = family.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(metric)?,
            _ => ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(metric)?,
        }
    }
    Ok(())
}
