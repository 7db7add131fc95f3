//! The node's STUN client: asks STUN servers (the introduction servers by default) which public
//! address its UDP packets leave from and, given two servers, whether the NAT keeps one mapping
//! for every destination (hole punching can work) or makes a new one for each (a symmetric NAT).
//! `p2pdns status` shows what it learned among the external addresses.
//!
//! It asks from a socket of its own, not from the QUIC socket (which the QUIC endpoint reads):
//! the public address is the one QUIC's packets leave from too, the port is this socket's.

use std::{io, net::SocketAddr, time::Duration};

use libp2p::{Multiaddr, multiaddr::Protocol};
use tokio::{net::UdpSocket, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    p2p::{AddressSource, ExternalAddr, StunMapping},
    stun::{self, Mapping, StunError},
};

/// The port STUN servers listen on (RFC 8489 section 9), and introduction servers by default.
pub const STUN_PORT: u16 = 3478;
/// The first probe waits this long after start (the network may still be coming up)...
const FIRST_PROBE: Duration = Duration::from_secs(1);
/// ...then a probe every so often, as NAT mappings and public addresses change...
const PROBE_INTERVAL: Duration = Duration::from_secs(600);
/// ...or sooner after a failure, doubling up to the interval.
const RETRY_AFTER: Duration = Duration::from_secs(30);
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

/// Probes `servers` now and then until `stop`, publishing each report on `report`: this task
/// owns what the probe learned, the node's event loop reads the latest.
pub async fn run(
    servers: Vec<String>,
    report: watch::Sender<Option<StunReport>>,
    stop: CancellationToken,
) {
    let mut wait = FIRST_PROBE;
    let mut retry = RETRY_AFTER;
    let mut last_seen: Option<String> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let new = probe(&servers).await;
        match &new.outcome {
            Ok(_) => {
                wait = PROBE_INTERVAL;
                retry = RETRY_AFTER;
                let external = new.external();
                let seen = external
                    .as_ref()
                    .map(|e| format!("{} ({})", e.addr, e.source));
                if seen != last_seen {
                    match &seen {
                        // The source says what it means for the user and what helps.
                        Some(seen) if external.is_some_and(|e| e.source.is_symmetric()) => {
                            warn!(external = %seen, "STUN: behind a symmetric NAT");
                        }
                        Some(seen) => info!(external = %seen, "STUN"),
                        None => info!("STUN: not behind NAT"),
                    }
                    last_seen = seen;
                }
            }
            Err(error) => {
                debug!(%error, "STUN probe failed");
                wait = retry;
                retry = (retry * 2).min(PROBE_INTERVAL);
            }
        }
        report.send_replace(Some(new));
    }
}

/// One probe: resolve the servers, ask two if there are two (mapping behaviour), else one.
async fn probe(servers: &[String]) -> StunReport {
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
