//! Tunnels: `.p2p` names that carry TCP over the P2P connection to the name's owner
//! (docs/PROTOCOL.md section 9).
//!
//! The serving side (`server`) accepts tunnel streams for the services this node exposes
//! ([`service`]) and connects each to its local target. The client side (`client`) answers a
//! tunnelled name with a local loopback address ([`addresses`]), listens there, and turns each
//! TCP connection into a stream to the serving peer. [`wire`] is the stream protocol both sides
//! speak.
//!
//! This module owns the tunnel streams, the local listeners, the exposed services and the
//! address table; it must not own the libp2p swarm (it opens and accepts streams through the
//! node's [`crate::p2p::NodeHandle`]) nor answer DNS itself (the naming layer asks it for a
//! name's address and for the SRV records of the services).

pub mod addresses;
mod client;
pub mod config;
mod mapped;
mod server;
pub mod service;
pub mod wire;

pub use config::TunnelConfig;

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
    time::Duration,
};

use hickory_proto::rr::{Name, Record};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use mapped::MappedName;
pub use server::RefusalCounts;
pub use service::{Service, ServiceError, ServiceSpec};
pub use wire::PROTOCOL;

use self::{
    addresses::{AddressError, AddressTable},
    client::{Client, ClientLimits},
    server::{Server, ServerLimits, ServerStats},
    service::ServiceTable,
};
use crate::p2p::NodeHandle;

/// Errors of the tunnel subsystem.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The address table could not be loaded or gave no address.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// A port of a tunnelled name cannot be listened on; the message says which and why.
    #[error("{0}")]
    Listen(#[source] std::io::Error),
    /// Something else already accepts the tunnel protocol on this node.
    #[error("the tunnel protocol is already served on this node")]
    AlreadyServed,
    /// A service in the configuration is wrong (the index in `[[tunnel.expose]]`).
    #[error("invalid config value tunnel.expose[{index}]")]
    Config {
        /// Position in `[[tunnel.expose]]`.
        index: usize,
        /// What is wrong.
        #[source]
        source: ServiceError,
    },
}

/// One exposed service as `p2pdns tunnels` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposedService {
    /// The service.
    #[serde(flatten)]
    pub service: Service,
    /// Defined in the configuration file (the CLI cannot remove it).
    pub from_config: bool,
    /// Streams open now.
    pub open: u64,
    /// Streams accepted since start.
    pub streams: u64,
    /// Bytes sent to clients.
    pub sent: u64,
    /// Bytes received from clients.
    pub received: u64,
}

/// What `p2pdns tunnels` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelsReport {
    /// The services this node exposes.
    pub exposed: Vec<ExposedService>,
    /// Refused streams since start, by reason.
    pub refused: RefusalCounts,
    /// The tunnelled names this node answered with a local address.
    pub mapped: Vec<MappedName>,
}

/// The tunnel subsystem's handle.
pub struct Tunnels {
    key: [u8; 32],
    services: Arc<Mutex<ServiceTable>>,
    stats: Arc<ServerStats>,
    addresses: Mutex<AddressTable>,
    client: Client,
}

/// The serving side's accept loop, to run supervised ([`TunnelServer::run`]).
pub struct TunnelServer(Server);

impl TunnelServer {
    /// Serves tunnel streams until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        self.0.run(stop).await;
    }
}

/// Locks `m`, also after a panic elsewhere: every lock in this module guards plain map or
/// value updates, which a panic leaves whole.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tunnels {
    /// Sets up tunnels on `node` with the services of `config` and those saved in `data_dir`,
    /// and registers the stream protocol.
    ///
    /// # Errors
    /// [`TunnelError::Config`] for a wrong `[[tunnel.expose]]` entry,
    /// [`TunnelError::Address`] for an unusable address range, [`TunnelError::AlreadyServed`]
    /// when the protocol is registered twice.
    pub fn bind(
        config: &TunnelConfig,
        data_dir: &Path,
        node: NodeHandle,
    ) -> Result<(Arc<Self>, TunnelServer), TunnelError> {
        let from_config = config
            .services()
            .map_err(|(index, source)| TunnelError::Config { index, source })?;
        let services = Arc::new(Mutex::new(ServiceTable::load(data_dir, from_config)));
        let addresses = AddressTable::load(data_dir, config.address_range)?;
        let incoming = node
            .streams()
            .accept(PROTOCOL)
            .map_err(|_| TunnelError::AlreadyServed)?;
        let key = service::peer_ed25519(&node.peer_id()).unwrap_or_default();
        let idle = Duration::from_secs(config.idle_timeout_secs);
        let stats = Arc::new(ServerStats::default());
        let server = Server {
            incoming,
            node: node.clone(),
            services: services.clone(),
            stats: stats.clone(),
            limits: ServerLimits {
                max_streams: config.max_streams,
                max_streams_per_peer: config.max_streams_per_peer,
                idle,
            },
        };
        let limits = ClientLimits {
            max_connections: config.max_connections,
            idle,
            direct_wait: Duration::from_millis(config.direct_wait_ms),
        };
        let tunnels = Self {
            key,
            services: services.clone(),
            stats,
            addresses: Mutex::new(addresses),
            client: Client::new(node, limits, services),
        };
        Ok((Arc::new(tunnels), TunnelServer(server)))
    }

    /// The local address of `name` (a tunnelled name, `site.p2p.`) served by `peer` on
    /// `ports`, listened on at those ports from now on.
    ///
    /// # Errors
    /// [`TunnelError::Address`] when the range is full or the table cannot be saved;
    /// [`TunnelError::Listen`] when a port cannot be listened on (the name must then not be
    /// answered).
    pub fn map(&self, name: &Name, peer: PeerId, ports: &[u16]) -> Result<Ipv4Addr, TunnelError> {
        let address = lock(&self.addresses).assign(name)?;
        let text = name.to_lowercase().to_ascii();
        self.client
            .map(text.trim_end_matches('.'), address, peer, ports)
            .map_err(TunnelError::Listen)?;
        Ok(address)
    }

    /// The tunnelled names that hold a local address (from earlier runs too).
    pub fn mapped_names(&self) -> Vec<Name> {
        lock(&self.addresses).names()
    }

    /// Exposes a service (or replaces the CLI's one of the same name and port).
    ///
    /// # Errors
    /// [`ServiceError`]: a wrong spec, a service of the configuration file, or a failed save.
    pub fn expose(&self, spec: &ServiceSpec) -> Result<Service, ServiceError> {
        let service = spec.check()?;
        lock(&self.services).expose(service.clone())?;
        Ok(service)
    }

    /// The CLI's service of the same name and port as `service`, if there is one.
    pub fn service(&self, service: &Service) -> Option<Service> {
        lock(&self.services)
            .all()
            .find(|(s, from_config)| {
                !from_config && s.name == service.name && s.port == service.port
            })
            .map(|(s, _)| s.clone())
    }

    /// The ports `name` (`site.p2p`) is exposed on, from the configuration or the CLI.
    pub fn ports_of(&self, name: &str) -> Vec<u16> {
        lock(&self.services)
            .all()
            .filter(|(s, _)| s.name == name)
            .map(|(s, _)| s.port)
            .collect()
    }

    /// A service of `name` (`site.p2p`) or of a name below it, if there is one.
    pub fn service_under(&self, name: &str) -> Option<Service> {
        let below = format!(".{name}");
        lock(&self.services)
            .all()
            .map(|(s, _)| s)
            .find(|s| s.name == name || s.name.ends_with(&below))
            .cloned()
    }

    /// Stops exposing `name` (`site.p2p`) on `port`, or on every port. Returns the ports
    /// removed.
    ///
    /// # Errors
    /// [`ServiceError`]: only the configuration file exposes it, or a failed save.
    pub fn unexpose(&self, name: &str, port: Option<u16>) -> Result<Vec<u16>, ServiceError> {
        lock(&self.services).unexpose(name, port)
    }

    /// The SRV records announcing this node's services under the record set `set`.
    pub fn srv_records(&self, set: &Name) -> Vec<Record> {
        lock(&self.services).srv_records(set, &self.key)
    }

    /// Whether `record` is one of the SRV records this node manages (a service of its own).
    pub fn is_managed(&self, record: &Record) -> bool {
        service::is_own_tunnel_srv(record, &self.key)
    }

    /// The record sets (`site.p2p.`) holding a service of this node.
    pub fn record_sets(&self) -> Vec<Name> {
        lock(&self.services).record_sets()
    }

    /// [`Tunnels::report`] with each tunnelled name's [`MappedName::connected`] asked of the
    /// node: what `p2pdns tunnels` shows.
    pub async fn report_with_paths(&self) -> TunnelsReport {
        let mut report = self.report();
        self.client.fill_connected(&mut report.mapped).await;
        report
    }

    /// The services, refusals and tunnelled names, with their counters; without waiting on
    /// the node, so each [`MappedName::connected`] is `None` (see
    /// [`Tunnels::report_with_paths`]).
    pub fn report(&self) -> TunnelsReport {
        let exposed = lock(&self.services)
            .all()
            .map(|(service, from_config)| {
                let counters = self.stats.service(&service.name, service.port);
                ExposedService {
                    service: service.clone(),
                    from_config,
                    open: counters.open.load(Ordering::Relaxed),
                    streams: counters.streams.load(Ordering::Relaxed),
                    sent: counters.bytes.transfer().sent,
                    received: counters.bytes.transfer().received,
                }
            })
            .collect();
        TunnelsReport {
            exposed,
            refused: self.stats.refusals(),
            mapped: self.client.report(),
        }
    }
}
