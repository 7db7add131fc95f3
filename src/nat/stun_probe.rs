//! The node's STUN client: asks STUN servers (the introduction servers by default) which public
//! address its UDP packets leave from and, given two servers, whether the NAT keeps one mapping
//! for every destination (hole punching can work) or makes a new one for each (a symmetric NAT).
//! `p2pdns status` shows what it learned among the external addresses.
//!
//! It asks from a socket of its own, not from the QUIC socket (which the QUIC endpoint reads):
//! the public address is the one QUIC's packets leave from too, the port is this socket's.
//!
//! It asks again every [`PROBE_INTERVAL`], and sooner when a bootstrap peer's identify shows
//! the node's connections leaving from another public address than the one STUN found (the
//! router got a new address, the laptop changed networks): `status` then shows the new address
//! within seconds of the node reconnecting instead of minutes.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use libp2p::{Multiaddr, multiaddr::Protocol};
use tokio::{
    net::UdpSocket,
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    p2p::{
        AddressSource, ExternalAddr, StunMapping,
        addr::{ip_of, is_own_address},
    },
    stun::{self, Mapping, StunError},
};

/// The port STUN servers listen on (RFC 8489 section 9), and introduction servers by default.
pub const STUN_PORT: u16 = 3478;
/// The first probe waits this long after start (the network may still be coming up)...
const FIRST_PROBE: Duration = Duration::from_secs(1);
/// ...then a probe every so often, as NAT mappings and public addresses change...
pub const PROBE_INTERVAL: Duration = Duration::from_secs(600);
/// ...or sooner after a failure, doubling up to the interval...
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// ...or when the node sees its public address change, but never twice within this long.
const LEAST_GAP: Duration = Duration::from_secs(20);
/// How long one server gets to answer, retransmissions included.
const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a probe learned nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No server name resolved to an IPv4 address.
    #[error("no STUN server address")]
    NoServer,
    /// The probe's own UDP socket could not be opened.
    #[error("cannot open a UDP socket")]
    Socket(#[source] io::Error),
    /// The servers did not answer, or not as RFC 8489 says.
    #[error(transparent)]
    Stun(#[from] StunError),
}

/// What the last probe learned.
#[derive(Debug)]
pub struct StunReport {
    /// The servers asked.
    pub servers: Vec<SocketAddr>,
    /// The mapping found, or why none was.
    pub outcome: Result<Mapping, ProbeError>,
}

impl StunReport {
    /// The public address and how it was learned, as `status` lists external addresses
    /// (`None` when the node is not behind a NAT or the probe failed).
    pub fn external(&self) -> Option<ExternalAddr> {
        let (mapped, mapping) = match &self.outcome {
            Ok(Mapping::NotNatted) | Err(_) => return None,
            Ok(Mapping::EndpointIndependent(mapped)) if self.servers.len() < 2 => {
                (*mapped, StunMapping::Unknown)
            }
            Ok(Mapping::EndpointIndependent(mapped)) => (*mapped, StunMapping::EndpointIndependent),
            Ok(Mapping::EndpointDependent { first, second }) => {
                (*first, StunMapping::EndpointDependent { other: *second })
            }
        };
        Some(ExternalAddr {
            addr: Multiaddr::from(mapped.ip()).with(Protocol::Udp(mapped.port())),
            source: AddressSource::Stun {
                servers: self.servers.clone(),
                mapping,
            },
        })
    }

    /// The public IPv4 address the probe found the node's packets leaving from: the mapped one
    /// behind a NAT (the first server's for a symmetric one), `None` when there is no NAT or
    /// the probe failed.
    fn mapped_ip(&self) -> Option<IpAddr> {
        match &self.outcome {
            Ok(
                Mapping::EndpointIndependent(mapped)
                | Mapping::EndpointDependent { first: mapped, .. },
            ) => Some(mapped.ip()),
            Ok(Mapping::NotNatted) | Err(_) => None,
        }
    }

    /// Is this report out of date, given `observed`, the address a peer saw one of the node's
    /// connections come from (identify's observed address), and `own`, the node's listen
    /// addresses? Yes when `observed` is an IPv4 address other than the one STUN mapped, or, where
    /// STUN found no NAT, an IPv4 address that is not the node's own. A failed probe is retried
    /// on its own schedule; an IPv6 observation says nothing about the IPv4 probe.
    pub fn outdated_by<'a>(
        &self,
        observed: &Multiaddr,
        own: impl Iterator<Item = &'a Multiaddr>,
    ) -> bool {
        let Some(seen @ IpAddr::V4(_)) = ip_of(observed) else {
            return false;
        };
        match (&self.outcome, self.mapped_ip()) {
            (Ok(_), Some(mapped)) => mapped != seen,
            (Ok(Mapping::NotNatted), None) => !is_own_address(observed, own),
            _ => false,
        }
    }
}

/// The node's side of the probe: what it learned last, and a way to ask for a probe sooner.
#[derive(Debug, Clone)]
pub struct StunView {
    latest: watch::Receiver<Option<StunReport>>,
    sooner: Arc<Notify>,
}

impl StunView {
    /// What the last probe learned (`None` until the first one ends, and on an introduction
    /// server or a node without STUN servers, which never probe).
    pub fn latest(&self) -> watch::Ref<'_, Option<StunReport>> {
        self.latest.borrow()
    }

    /// Asks the probe to run again soon (at most once every 20 s) when `observed`, the address a
    /// bootstrap peer saw the node come from, says the last report is out of date
    /// ([`StunReport::outdated_by`]). Returns whether it asked.
    pub fn recheck_if_outdated<'a>(
        &self,
        observed: &Multiaddr,
        own: impl Iterator<Item = &'a Multiaddr>,
    ) -> bool {
        let outdated = self
            .latest
            .borrow()
            .as_ref()
            .is_some_and(|report| report.outdated_by(observed, own));
        if outdated {
            self.sooner.notify_one();
        }
        outdated
    }
}

/// The probe task's side: where it publishes its reports and hears requests to probe sooner.
#[derive(Debug)]
pub struct StunProbe {
    report: watch::Sender<Option<StunReport>>,
    sooner: Arc<Notify>,
}

/// The two sides of a probe that has not started: [`run`] takes the first, the node keeps the
/// second.
pub fn channel() -> (StunProbe, StunView) {
    let (report, latest) = watch::channel(None);
    let sooner = Arc::new(Notify::new());
    (
        StunProbe {
            report,
            sooner: Arc::clone(&sooner),
        },
        StunView { latest, sooner },
    )
}

/// The servers to ask: those configured, else each bootstrap peer's host on the STUN port.
pub fn servers(configured: &[String], bootstrap: &[Multiaddr]) -> Vec<String> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let mut servers: Vec<String> = Vec::new();
    for addr in bootstrap {
        let host = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(format!("{ip}:{STUN_PORT}")),
            Protocol::Ip6(ip) => Some(format!("[{ip}]:{STUN_PORT}")),
            Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => {
                Some(format!("{h}:{STUN_PORT}"))
            }
            _ => None,
        });
        if let Some(host) = host
            && !servers.contains(&host)
        {
            servers.push(host);
        }
    }
    servers
}

/// Probes `servers` now and then until `stop`, publishing each report through `probe`: this
/// task owns what the probe learned, the node's event loop reads the latest ([`StunView`]) and
/// may ask for the next probe sooner.
pub async fn run(servers: Vec<String>, probe: StunProbe, stop: CancellationToken) {
    let mut next = Instant::now() + FIRST_PROBE;
    // No probe before this, however often one is asked for.
    let mut earliest = next;
    let mut retry = RETRY_AFTER;
    let mut last_seen: Option<String> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
            () = probe.sooner.notified() => {
                next = next.min(earliest.max(Instant::now()));
                continue;
            }
        }
        earliest = Instant::now() + LEAST_GAP;
        let new = probe_once(&servers).await;
        let wait = match &new.outcome {
            Ok(_) => {
                retry = RETRY_AFTER;
                let seen = new.external().map(|e| {
                    (
                        format!("{} ({})", e.addr, e.source),
                        e.source.is_symmetric(),
                    )
                });
                if seen.as_ref().map(|s| &s.0) != last_seen.as_ref() {
                    match &seen {
                        // The source says what it means for the user and what helps.
                        Some((seen, true)) => {
                            warn!(external = %seen, "STUN: behind a symmetric NAT")
                        }
                        Some((seen, false)) => info!(external = %seen, "STUN"),
                        None => info!("STUN: not behind NAT"),
                    }
                    last_seen = seen.map(|s| s.0);
                }
                PROBE_INTERVAL
            }
            Err(error) => {
                debug!(%error, "STUN probe failed");
                let wait = retry;
                retry = (retry * 2).min(PROBE_INTERVAL);
                wait
            }
        };
        next = Instant::now() + wait;
        probe.report.send_replace(Some(new));
    }
}

/// One probe: resolve the servers, ask two if there are two (mapping behaviour), else one.
async fn probe_once(servers: &[String]) -> StunReport {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for server in servers {
        match tokio::net::lookup_host(server.as_str()).await {
            Ok(found) => {
                for addr in found.filter(SocketAddr::is_ipv4).take(1) {
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
            }
            Err(error) => debug!(%server, %error, "cannot resolve the STUN server"),
        }
    }
    let outcome = ask(&addrs).await;
    StunReport {
        servers: addrs,
        outcome,
    }
}

async fn ask(servers: &[SocketAddr]) -> Result<Mapping, ProbeError> {
    let Some(&first) = servers.first() else {
        return Err(ProbeError::NoServer);
    };
    let socket = UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(ProbeError::Socket)?;
    if servers.len() >= 2 {
        return Ok(stun::mapping_behaviour(&socket, servers, SERVER_TIMEOUT).await?);
    }
    let mapped = stun::binding(&socket, first, SERVER_TIMEOUT).await?;
    // One server cannot tell the mapping kind; it can tell whether there is a NAT at all.
    if stun::local_endpoint(&socket, first).is_some_and(|l| stun::same_endpoint(l, mapped)) {
        return Ok(Mapping::NotNatted);
    }
    Ok(Mapping::EndpointIndependent(mapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_hosts_become_stun_servers_once_each() {
        let bootstrap: Vec<Multiaddr> = [
            "/ip4/198.51.100.7/tcp/4747/p2p/12D3KooWGmYqn1UUrhPPwRnXa5VTHLeE5ddjpeZw2pYCvsSrmvCA",
            "/ip4/198.51.100.7/udp/4747/quic-v1",
            "/dns4/intro.example.org/tcp/4747",
            "/ip6/2001:db8::1/tcp/4747",
            "/memory/9",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(
            servers(&[], &bootstrap),
            [
                "198.51.100.7:3478",
                "intro.example.org:3478",
                "[2001:db8::1]:3478"
            ]
        );
        let configured = vec!["stun.example.net:19302".to_owned()];
        assert_eq!(servers(&configured, &bootstrap), configured);
    }

    #[test]
    fn a_peer_seeing_another_public_address_outdates_the_report() {
        let server: SocketAddr = "198.51.100.7:3478".parse().unwrap();
        let report = |outcome| StunReport {
            servers: vec![server],
            outcome,
        };
        let addr = |text: &str| -> Multiaddr { text.parse().unwrap() };
        let own = [
            addr("/ip4/10.1.0.2/tcp/23456"),
            addr("/ip4/127.0.0.1/tcp/23456"),
        ];
        let mapped = report(Ok(Mapping::EndpointIndependent(
            "203.0.113.5:40000".parse().unwrap(),
        )));
        // The same public address seen over TCP, on another port: nothing changed.
        assert!(!mapped.outdated_by(&addr("/ip4/203.0.113.5/tcp/5011"), own.iter()));
        assert!(mapped.outdated_by(&addr("/ip4/203.0.113.9/tcp/5011"), own.iter()));
        assert!(mapped.outdated_by(&addr("/ip4/203.0.113.9/udp/5011/quic-v1"), own.iter()));
        // IPv6 says nothing about the IPv4 probe; nor does an address without an IP.
        assert!(!mapped.outdated_by(&addr("/ip6/2001:db8::5/tcp/5011"), own.iter()));
        assert!(!mapped.outdated_by(&addr("/dns4/example.org/tcp/5011"), own.iter()));
        let symmetric = report(Ok(Mapping::EndpointDependent {
            first: "203.0.113.5:40000".parse().unwrap(),
            second: "203.0.113.5:40001".parse().unwrap(),
        }));
        assert!(!symmetric.outdated_by(&addr("/ip4/203.0.113.5/tcp/1"), own.iter()));
        assert!(symmetric.outdated_by(&addr("/ip4/198.51.100.9/tcp/1"), own.iter()));
        // No NAT: the node's own address is no news, any other is (it moved behind one).
        let plain = report(Ok(Mapping::NotNatted));
        assert!(!plain.outdated_by(&addr("/ip4/10.1.0.2/tcp/5011"), own.iter()));
        assert!(plain.outdated_by(&addr("/ip4/203.0.113.5/tcp/5011"), own.iter()));
        // A failed probe retries on its own.
        let failed = report(Err(ProbeError::NoServer));
        assert!(!failed.outdated_by(&addr("/ip4/203.0.113.9/tcp/5011"), own.iter()));
    }

    #[tokio::test(start_paused = true)]
    async fn asking_sooner_brings_the_next_probe_forward_but_not_within_the_least_gap() {
        let (probe, view) = channel();
        let stop = CancellationToken::new();
        // A server on loopback that never answers: every probe fails after SERVER_TIMEOUT.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = silent.local_addr().unwrap().to_string();
        let mut reports = view.latest.clone();
        let started = Instant::now();
        let task = tokio::spawn(run(vec![server], probe, stop.clone()));
        let mut report_times = Vec::new();
        for ask_sooner in [false, true, false] {
            reports.changed().await.unwrap();
            report_times.push(started.elapsed().as_secs());
            if ask_sooner {
                view.sooner.notify_one();
            }
        }
        stop.cancel();
        task.await.unwrap();
        let (first, wait, retry) = (FIRST_PROBE, SERVER_TIMEOUT, RETRY_AFTER);
        // The first probe 1 s after start, failing 5 s later; the second 30 s after that
        // failure; then, asked sooner when the second ended, the third LEAST_GAP after the
        // second began (not at once, and not the doubled retry's 60 s after it ended).
        let expected = [
            first + wait,
            first + wait + retry + wait,
            first + wait + retry + LEAST_GAP + wait,
        ]
        .map(|d| d.as_secs());
        assert_eq!(report_times, expected);
    }

    #[test]
    fn reports_list_the_public_address_and_how_it_maps() {
        let server: SocketAddr = "198.51.100.7:3478".parse().unwrap();
        let second: SocketAddr = "198.51.100.7:3479".parse().unwrap();
        let report = |outcome| StunReport {
            servers: vec![server, second],
            outcome,
        };
        let mapped: SocketAddr = "203.0.113.5:40000".parse().unwrap();
        let found = report(Ok(Mapping::EndpointIndependent(mapped)))
            .external()
            .unwrap();
        assert_eq!(found.addr.to_string(), "/ip4/203.0.113.5/udp/40000");
        let how = found.source.to_string();
        assert!(
            how.contains("STUN via 198.51.100.7:3478, 198.51.100.7:3479"),
            "{how}"
        );
        assert!(how.contains("endpoint-independent"), "{how}");
        let other: SocketAddr = "203.0.113.5:40001".parse().unwrap();
        let how = report(Ok(Mapping::EndpointDependent {
            first: mapped,
            second: other,
        }))
        .external()
        .unwrap()
        .source
        .to_string();
        assert!(how.contains("symmetric") && how.contains("40001"), "{how}");
        assert!(report(Ok(Mapping::NotNatted)).external().is_none());
        let one = StunReport {
            servers: vec![server],
            outcome: Ok(Mapping::EndpointIndependent(mapped)),
        };
        assert_eq!(
            one.external().unwrap().source,
            AddressSource::Stun {
                servers: vec![server],
                mapping: StunMapping::Unknown
            }
        );
        assert!(report(Err(ProbeError::NoServer)).external().is_none());
    }
}
