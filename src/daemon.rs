//! The daemon: binds every socket first, then serves until told to stop or a subsystem dies.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    control::{self, ControlError},
    dns::{
        DnsError, DnsServer,
        forwarder::Forwarder,
        handler::Handler,
        server::BoundSockets,
        upstream::{is_own_address, read_resolv_conf},
    },
    naming::{Dht, Naming, NamingError},
    p2p::{
        Node, NodeError,
        identity::{self, IdentityError},
    },
    record,
};

/// Longest wait at shutdown for queries in flight to be answered.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// How long a shutdown may take in all before the daemon stops waiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How often own names are pushed to the DHT again, plus up to the jitter.
const REPUBLISH_EVERY: Duration = Duration::from_secs(600);
const REPUBLISH_JITTER_MS: u64 = 120_000;
/// How often resolv.conf is checked for changes when the upstreams come from it (DHCP and VPN
/// clients rewrite it when the network changes).
const RESOLV_CONF_POLL: Duration = Duration::from_secs(2);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A DNS socket could not be bound, or the server failed.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The naming configuration is unusable.
    #[error(transparent)]
    Naming(#[from] NamingError),
    /// The identity key could not be read or made.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The P2P node could not start or stopped.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] ControlError),
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
    /// resolv.conf, when the upstreams are read from it, and its modification time when read.
    resolv_conf: Option<(PathBuf, Option<SystemTime>)>,
    /// How long shutdown waits for queries in flight.
    drain: Duration,
    /// The P2P node, until `run` starts its event loop.
    node: Option<Node>,
    dht: Option<Arc<Dht>>,
    p2p_addrs: Vec<libp2p::Multiaddr>,
    naming: Arc<Naming>,
    control: tokio::net::UnixListener,
    control_path: PathBuf,
    /// The configuration running now, and where to read it again on reload.
    running: Config,
    watch: Option<ConfigWatch>,
}

/// The configuration file re-read on SIGHUP, with the command line's flags applied over it.
pub struct ConfigWatch {
    pub path: PathBuf,
    pub apply: Box<dyn Fn(&mut Config) + Send + Sync>,
}

impl ConfigWatch {
    fn load(&self) -> Result<Config, crate::config::ConfigError> {
        let mut config = Config::load(&self.path)?;
        (self.apply)(&mut config);
        config.validate()?;
        Ok(config)
    }
}

/// The settings that differ between `old` and `new` and take a restart to apply (all but the
/// upstream servers, which a reload applies).
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let upstream = |c: &Config| {
        let mut u = c.upstream.clone();
        u.servers.clear();
        u.resolv_conf = PathBuf::new();
        format!("{u:?}")
    };
    let sections = [
        (
            "data_dir",
            format!("{:?}", old.data_dir),
            format!("{:?}", new.data_dir),
        ),
        ("dns", format!("{:?}", old.dns), format!("{:?}", new.dns)),
        ("upstream", upstream(old), upstream(new)),
        (
            "cache",
            format!("{:?}", old.cache),
            format!("{:?}", new.cache),
        ),
        (
            "naming",
            format!("{:?}", old.naming),
            format!("{:?}", new.naming),
        ),
        ("p2p", format!("{:?}", old.p2p), format!("{:?}", new.p2p)),
    ];
    sections
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, _, _)| name)
        .collect()
}

impl Daemon {
    /// Binds every socket and prepares every subsystem; returns once the daemon could serve.
    pub async fn bind(config: Config, data_dir: PathBuf) -> Result<Self, DaemonError> {
        let mut naming = Naming::new(&config.naming)?;
        let sockets = BoundSockets::bind(&config.dns.listen)?;
        identity::create_data_dir(&data_dir)?;
        let control_path = control::socket_path(&data_dir);
        let control = control::bind(&control_path, &data_dir).await?;
        let (node, dht) = if config.p2p.enabled {
            let keypair = identity::load_or_create(&data_dir)?;
            let node = Node::bind(keypair.clone().into(), &config.p2p).await?;
            let allow_private = config
                .naming
                .allow_private_answers
                .iter()
                .filter_map(|n| hickory_proto::rr::Name::from_ascii(n).ok())
                .map(|n| hickory_proto::rr::LowerName::new(&n))
                .collect();
            let dht = Arc::new(Dht::new(
                node.handle(),
                keypair,
                data_dir.clone(),
                Duration::from_millis(config.p2p.lookup_budget_ms),
                config.p2p.lookup_replicas,
                allow_private,
            ));
            info!(peer_id = %node.handle().peer_id(), key_name = %dht.key_name(), "P2P identity");
            for addr in node.listen_addrs() {
                info!(%addr, "P2P address (for --bootstrap)");
            }
            naming = naming.with_dht(dht.clone());
            (Some(node), Some(dht))
        } else {
            (None, None)
        };
        let p2p_addrs = node.as_ref().map(Node::listen_addrs).unwrap_or_default();
        let naming = Arc::new(naming);
        let resolv_conf = config.upstream.servers.is_empty().then(|| {
            let path = config.upstream.resolv_conf.clone();
            let seen = modified(&path);
            (path, seen)
        });
        let upstreams = choose_upstreams(&config, sockets.addrs());
        let forwarder = Arc::new(Forwarder::new(
            upstreams,
            config.upstream.clone(),
            config.cache.clone(),
            config.dns.max_inflight,
        ));
        let handler = Handler::new(forwarder.clone(), naming.clone(), &config.dns);
        let naming_for_control = naming.clone();
        let dns = DnsServer::serve(
            sockets,
            handler,
            Duration::from_secs(config.dns.tcp_idle_timeout_secs),
        );
        let drain = Duration::from_millis(config.upstream.query_timeout_ms).min(SHUTDOWN_DRAIN);
        if naming.local_names() > 0 {
            info!(names = naming.local_names(), "local names loaded");
        }
        Ok(Self {
            dns,
            forwarder,
            data_dir,
            resolv_conf,
            drain,
            node,
            dht,
            p2p_addrs,
            naming: naming_for_control,
            control,
            control_path,
            running: config,
            watch: None,
        })
    }

    /// Re-read this file on each reload (SIGHUP).
    pub fn watch_config(&mut self, watch: ConfigWatch) {
        self.watch = Some(watch);
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

    /// The DHT side of naming, when the P2P node runs.
    pub fn dht(&self) -> Option<&Arc<Dht>> {
        self.dht.as_ref()
    }

    /// The P2P node's addresses, each ending in `/p2p/<peer id>` (for `--bootstrap`).
    pub fn p2p_addrs(&self) -> &[libp2p::Multiaddr] {
        &self.p2p_addrs
    }

    /// Serves until `shutdown` is cancelled (then drains within a grace period) or a subsystem
    /// fails (then returns its error). Each `reload` notification (SIGHUP) empties the cache
    /// and re-reads resolv.conf.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        reload: Arc<Notify>,
    ) -> Result<(), DaemonError> {
        let Self {
            mut dns,
            forwarder,
            resolv_conf,
            drain,
            node,
            dht,
            naming,
            control,
            control_path,
            mut running,
            watch,
            ..
        } = self;
        let context = Arc::new(control::Context {
            naming,
            forwarder: forwarder.clone(),
            dns_addrs: dns.addrs().to_vec(),
        });
        let control_stop = CancellationToken::new();
        let control_task = tokio::spawn(control::serve(
            control,
            context,
            control_stop.clone(),
            control_path,
        ));
        // Not a child of `shutdown`: the node must outlive the DNS drain (answers in flight may
        // still need the DHT), and its end before then means it failed.
        let node_stop = CancellationToken::new();
        let mut node_task = node.map(|node| tokio::spawn(node.run(node_stop.clone())));
        let republisher = dht.map(|dht| tokio::spawn(republish(dht, node_stop.clone())));
        let listen = dns.addrs().to_vec();
        let mut poll = tokio::time::interval(RESOLV_CONF_POLL);
        let (mut resolv_conf, seen) = resolv_conf.unzip();
        let mut seen = seen.flatten();
        info!("ready");
        let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
        crate::os::systemd::notify(&format!(
            "READY=1\nSTATUS=answering DNS on {}",
            addrs.join(", ")
        ));
        loop {
            tokio::select! {
                result = dns.wait() => {
                    result?;
                    return Err(DnsError::Stopped("every listener closed".into()).into());
                }
                () = shutdown.cancelled() => break,
                _ = async { node_task.as_mut().expect("guarded").await }, if node_task.is_some() => {
                    return Err(NodeError::Stopped.into());
                }
                () = reload.notified() => {
                    crate::os::systemd::notify("RELOADING=1");
                    forwarder.cache().clear();
                    // The file again, with the same flags over it: upstream settings apply now,
                    // the rest is named for a restart. A broken file changes nothing.
                    if let Some(watch) = &watch {
                        match watch.load() {
                            Ok(new) => {
                                let restart = restart_needed(&running, &new);
                                running.upstream.servers.clone_from(&new.upstream.servers);
                                running.upstream.resolv_conf.clone_from(&new.upstream.resolv_conf);
                                if !restart.is_empty() {
                                    warn!(sections = %restart.join(", "), path = %watch.path.display(), "changed settings need a restart to apply");
                                }
                            }
                            Err(error) => warn!(%error, "reload: the configuration file has errors; keeping the running configuration"),
                        }
                    }
                    resolv_conf = running
                        .upstream
                        .servers
                        .is_empty()
                        .then(|| running.upstream.resolv_conf.clone());
                    seen = resolv_conf.as_deref().and_then(modified);
                    forwarder.set_upstreams(&choose_upstreams(&running, &listen));
                    info!("reloaded: cache emptied, upstreams re-read");
                    crate::os::systemd::notify("READY=1");
                }
                _ = poll.tick(), if resolv_conf.is_some() => {
                    let path = resolv_conf.as_deref().expect("guarded by the branch condition");
                    let now = modified(path);
                    if now != seen {
                        seen = now;
                        let upstreams = upstreams_from_resolv_conf(path, &listen);
                        if upstreams != forwarder.upstreams() {
                            forwarder.set_upstreams(&upstreams);
                        }
                    }
                }
            }
        }
        info!("shutting down");
        crate::os::systemd::notify("STOPPING=1");
        let result = match tokio::time::timeout(SHUTDOWN_GRACE, dns.shutdown(drain)).await {
            Ok(result) => result.map_err(DaemonError::from),
            Err(_) => Err(DaemonError::ShutdownTimeout(SHUTDOWN_GRACE)),
        };
        node_stop.cancel();
        control_stop.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, control_task).await;
        if let Some(task) = republisher {
            task.abort();
        }
        if let Some(task) = node_task {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
        }
        result
    }
}

/// Pushes this node's names into the DHT: soon after start (once peers had a moment to
/// connect), then every few minutes; records past half their lifetime are re-signed.
async fn republish(dht: Arc<Dht>, stop: CancellationToken) {
    let mut first = true;
    loop {
        let wait = if first {
            Duration::from_secs(3)
        } else {
            REPUBLISH_EVERY + Duration::from_millis(rand::random::<u64>() % REPUBLISH_JITTER_MS)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            // Names published while the node was alone reached nobody: push them once the
            // first peer is met (and its bootstrap had a moment to find others).
            () = dht.node().joined() => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
        let resigned = dht.republish(false).await;
        for record in dht.own_names() {
            if record.expires > record::unix_now()
                && let Err(error) = dht.node().publish((*record).clone()).await
            {
                warn!(name = %record.name, %error, "pushing a name to the DHT failed");
            }
        }
        if first || resigned > 0 {
            debug!(
                names = dht.own_names().len(),
                resigned, "own names pushed to the DHT"
            );
        }
        first = false;
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The upstream servers: from the config, else from resolv.conf.
fn choose_upstreams(config: &Config, listen: &[SocketAddr]) -> Vec<SocketAddr> {
    if config.upstream.servers.is_empty() {
        return upstreams_from_resolv_conf(&config.upstream.resolv_conf, listen);
    }
    let servers = config.upstream.servers.iter().map(|s| s.0).collect();
    usable_upstreams(servers, listen, "the configuration")
}

fn upstreams_from_resolv_conf(path: &Path, listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let servers = read_resolv_conf(path).unwrap_or_else(|error| {
        warn!(path = %path.display(), %error, "cannot read upstream servers");
        Vec::new()
    });
    // systemd-resolved's stub: ask the servers behind it instead. With split DNS resolved may
    // send ordinary names back to this daemon, and each would bounce between the two.
    let stub = |s: &SocketAddr| matches!(s.ip(), IpAddr::V4(v4) if v4 == RESOLVED_STUB);
    let behind_stub = Path::new(RESOLVED_UPSTREAMS);
    if !servers.is_empty()
        && servers.iter().all(stub)
        && let Ok(real) = read_resolv_conf(behind_stub)
    {
        debug!(path = %behind_stub.display(), "resolv.conf names systemd-resolved's stub; using the servers behind it");
        return usable_upstreams(real, listen, RESOLVED_UPSTREAMS);
    }
    usable_upstreams(servers, listen, &path.display().to_string())
}

/// systemd-resolved's stub listener address, and the file listing its real upstreams.
const RESOLVED_STUB: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 53);
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// Drops our own addresses from `candidates` and logs the outcome.
fn usable_upstreams(
    candidates: Vec<SocketAddr>,
    listen: &[SocketAddr],
    source: &str,
) -> Vec<SocketAddr> {
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
