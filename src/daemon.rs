//! The daemon: binds every socket first, then serves until told to stop or a subsystem dies.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::Config,
    dns::{
        DnsError, DnsServer,
        forwarder::Forwarder,
        handler::Handler,
        server::BoundSockets,
        upstream::{is_own_address, read_resolv_conf},
    },
    naming::{Naming, NamingError},
};

/// How long a shutdown may take before the daemon stops waiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A DNS socket could not be bound, or the server failed.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The naming configuration is unusable.
    #[error(transparent)]
    Naming(#[from] NamingError),
    /// Shutdown took longer than the grace period.
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

impl DaemonError {
    /// Is this the user's configuration's fault (distinct exit code)?
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Naming(_))
    }
}

/// A daemon whose sockets are bound.
pub struct Daemon {
    dns: DnsServer,
    forwarder: Arc<Forwarder>,
    data_dir: PathBuf,
}

impl Daemon {
    /// Binds every socket and prepares every subsystem; returns once the daemon could serve.
    pub async fn bind(config: Config, data_dir: PathBuf) -> Result<Self, DaemonError> {
        let naming = Arc::new(Naming::new(&config.naming)?);
        let sockets = BoundSockets::bind(&config.dns.listen)?;
        let upstreams = choose_upstreams(&config, sockets.addrs());
        let forwarder = Arc::new(Forwarder::new(
            upstreams,
            config.upstream.clone(),
            config.cache.clone(),
            config.dns.max_inflight,
        ));
        let handler = Handler::new(
            forwarder.clone(),
            naming.clone(),
            config.dns.udp_payload,
            config.dns.chaos,
        );
        let dns = DnsServer::serve(
            sockets,
            handler,
            &config.dns.allow,
            Duration::from_secs(config.dns.tcp_idle_timeout_secs),
        );
        if naming.local_names() > 0 {
            info!(names = naming.local_names(), "local names loaded");
        }
        Ok(Self {
            dns,
            forwarder,
            data_dir,
        })
    }

    /// The addresses DNS is served on (UDP and TCP each).
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        self.dns.addrs()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// Serves until `shutdown` is cancelled (then drains within a grace period) or a subsystem
    /// fails (then returns its error).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        info!("ready");
        tokio::select! {
            result = self.dns.wait() => {
                result?;
                Err(DnsError::Stopped("every listener closed".into()).into())
            }
            () = shutdown.cancelled() => {
                info!("shutting down");
                match tokio::time::timeout(SHUTDOWN_GRACE, self.dns.shutdown()).await {
                    Ok(result) => result.map_err(DaemonError::from),
                    Err(_) => Err(DaemonError::ShutdownTimeout(SHUTDOWN_GRACE)),
                }
            }
        }
    }
}

/// The upstream servers: from the config, else from resolv.conf without our own addresses.
fn choose_upstreams(config: &Config, listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let (candidates, source) = if config.upstream.servers.is_empty() {
        let path = &config.upstream.resolv_conf;
        match read_resolv_conf(path) {
            Ok(servers) => (servers, path.display().to_string()),
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read upstream servers");
                (Vec::new(), path.display().to_string())
            }
        }
    } else {
        let servers = config.upstream.servers.iter().map(|s| s.0).collect();
        (servers, "the configuration".to_owned())
    };
    let (own, upstreams): (Vec<SocketAddr>, Vec<SocketAddr>) = candidates
        .into_iter()
        .partition(|addr| is_own_address(*addr, listen));
    for addr in &own {
        info!(%addr, "skipping upstream: it is this daemon's own address");
    }
    if upstreams.is_empty() {
        warn!(
            from = %source,
            "no usable upstream DNS server: names outside the p2p TLDs will get SERVFAIL; \
             set upstream.servers or --upstream"
        );
    } else {
        let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
        info!(upstreams = %list.join(", "), from = %source, "forwarding to upstreams");
    }
    upstreams
}
