//! The daemon: binds every socket first, then serves until told to stop or a subsystem dies.
//!
//! It owns the start-up order, the supervision of the long-running tasks (the control socket,
//! the P2P node, the republisher of own names, the upstream follower, the metrics endpoint: when
//! one ends or panics,
//! everything stops and [`Daemon::run`] names it), the reload (SIGHUP) and the shutdown
//! order. What each subsystem does is decided in its own module.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{Notify, Semaphore},
    task::{JoinError, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    config::{Config, UpstreamConfig},
    control::{self, ControlError},
    dns::{
        DnsError, DnsServer,
        forwarder::Forwarder,
        handler::Handler,
        server::BoundSockets,
        upstream::{UpstreamFollower, UpstreamHandle},
    },
    metrics::{Endpoint, Meters, MetricsError},
    naming::{Dht, DhtConfig, Naming, NamingError},
    p2p::{
        Node, NodeError,
        identity::{self, IdentityError},
    },
    state::{self, DataDirLock, LockError},
    tunnel::{TunnelError, TunnelServer, Tunnels, addresses::AddressError},
};

/// Longest wait at shutdown for queries in flight to be answered.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// How long each shutdown step (the DNS drain, then the tasks) may take before the daemon
/// stops waiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// The daemon's supervised tasks, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// The control socket server ([`crate::control::serve`]).
    Control,
    /// The P2P node's event loop ([`Node::run`]).
    Node,
    /// The loop that keeps own names in the DHT ([`crate::naming::publisher::Publisher::run`]).
    Republisher,
    /// The task that keeps the upstream list in step with resolv.conf
    /// ([`UpstreamFollower::follow`]).
    Upstreams,
    /// The server of tunnel streams ([`TunnelServer::run`]).
    Tunnels,
    /// The metrics endpoint ([`crate::metrics::Endpoint::serve`]).
    Metrics,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Control => "control socket server",
            Self::Node => "P2P node",
            Self::Republisher => "republisher of own names",
            Self::Upstreams => "upstream follower",
            Self::Tunnels => "tunnel server",
            Self::Metrics => "metrics endpoint",
        })
    }
}

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
    /// The data directory is used by another process, or could not be locked.
    #[error(transparent)]
    DataDir(#[from] LockError),
    /// The P2P node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Tunnels could not be set up.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A supervised task returned while the daemon was serving.
    #[error("the {0} stopped on its own")]
    TaskEnded(Task),
    /// A supervised task panicked.
    #[error("the {task} panicked: {message}")]
    TaskPanicked {
        /// The task that panicked.
        task: Task,
        /// The panic's message, or "a panic without a message" when it carried none.
        message: String,
    },
    /// Shutdown took longer than the grace period.
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

impl DaemonError {
    /// Is this the user's configuration's fault (distinct exit code)?
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Naming(_)
                | Self::Tunnel(TunnelError::Config { .. })
                | Self::Tunnel(TunnelError::Address(AddressError::BadRange { .. }))
        )
    }
}

/// A daemon whose sockets are bound.
pub struct Daemon {
    dns: DnsServer,
    forwarder: Arc<Forwarder>,
    /// Chooses the upstreams and, once running, follows their source.
    upstreams: UpstreamFollower,
    /// How long shutdown waits for queries in flight.
    drain: Duration,
    /// The P2P node, until `run` starts its event loop.
    node: Option<Node>,
    dht: Option<Arc<Dht>>,
    /// The tunnel server, until `run` starts it.
    tunnels: Option<TunnelServer>,
    p2p_addrs: Vec<libp2p::Multiaddr>,
    naming: Arc<Naming>,
    control: control::ControlSocket,
    /// The configuration running now, and where to read it again on reload.
    running: Config,
    watch: Option<ConfigWatch>,
    /// The data directory, this daemon's until it is dropped (after `run`).
    data_dir_lock: DataDirLock,
    /// The metrics endpoint, when `[metrics]` is on, until `run` serves it.
    metrics: Option<Endpoint>,
    metrics_addr: Option<SocketAddr>,
}

/// The configuration file re-read on SIGHUP, with the command line's flags applied over it.
pub struct ConfigWatch {
    /// The configuration file, read again on each reload.
    pub path: PathBuf,
    /// Applies the command line's overrides to the freshly read file, before it is checked.
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

/// The sections that differ between `old` and `new` and take a restart to apply: all but the
/// upstream servers and resolv.conf, which a reload applies. (`[intro]` is not the
/// resolver's.)
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let fixed_upstream = |c: &Config| UpstreamConfig {
        servers: Vec::new(),
        resolv_conf: PathBuf::new(),
        ..c.upstream.clone()
    };
    [
        ("data_dir", old.data_dir != new.data_dir),
        ("dns", old.dns != new.dns),
        ("upstream", fixed_upstream(old) != fixed_upstream(new)),
        ("cache", old.cache != new.cache),
        ("naming", old.naming != new.naming),
        ("p2p", old.p2p != new.p2p),
        ("tunnel", old.tunnel != new.tunnel),
        ("metrics", old.metrics != new.metrics),
    ]
    .into_iter()
    .filter_map(|(section, changed)| changed.then_some(section))
    .collect()
}

impl Daemon {
    /// Binds every socket and prepares every subsystem; returns once the daemon could serve.
    pub async fn bind(config: Config, data_dir: PathBuf) -> Result<Self, DaemonError> {
        crate::os::limits::raise_nofile_limit();
        let mut naming = Naming::new(&config.naming)?;
        // Queries waiting on an upstream or on the DHT, together (dns.max_inflight).
        let waiting = Arc::new(Semaphore::new(config.dns.max_inflight));
        let sockets = BoundSockets::bind(&config.dns.listen)?;
        let mut metrics = Endpoint::bind(&config.metrics).await?;
        let meters = metrics.as_mut().map_or_else(Meters::default, |endpoint| {
            endpoint.resolver_meters(config.p2p.enabled)
        });
        identity::create_data_dir(&data_dir)?;
        let control = control::bind(&control::socket_path(&data_dir), &data_dir).await?;
        // Before any state is read: no other process writes it, no write is under way.
        let data_dir_lock = state::take_data_dir(&data_dir)?;
        let (node, dht, tunnels) = if config.p2p.enabled {
            let (node, dht, tunnels) =
                bind_p2p(&config, &data_dir, waiting.clone(), &meters).await?;
            naming = naming.with_dht(dht.clone());
            (Some(node), Some(dht), Some(tunnels))
        } else {
            (None, None, None)
        };
        let p2p_addrs = node.as_ref().map(Node::listen_addrs).unwrap_or_default();
        let naming = Arc::new(naming);
        let upstreams = UpstreamFollower::new(&config.upstream, sockets.addrs());
        let forwarder = Arc::new(
            Forwarder::new(
                upstreams.set().clone(),
                config.upstream.clone(),
                config.cache.clone(),
                waiting,
            )
            .with_metrics(meters.dns.clone(), meters.upstreams),
        );
        let handler =
            Handler::with_metrics(forwarder.clone(), naming.clone(), &config.dns, meters.dns);
        if let Some(endpoint) = &mut metrics {
            endpoint.watch_resolver(forwarder.clone(), handler.in_flight());
            if let Some(tunnels) = dht.as_ref().and_then(|dht| dht.tunnels()) {
                endpoint.watch_tunnels(tunnels.clone());
            }
        }
        let dns = DnsServer::serve(sockets, handler, &config.dns);
        let drain = Duration::from_millis(config.upstream.query_timeout_ms).min(SHUTDOWN_DRAIN);
        if naming.local_names() > 0 {
            info!(names = naming.local_names(), "local names loaded");
        }
        Ok(Self {
            dns,
            forwarder,
            upstreams,
            drain,
            node,
            dht,
            tunnels,
            p2p_addrs,
            naming,
            control,
            running: config,
            watch: None,
            data_dir_lock,
            metrics_addr: metrics.as_ref().map(Endpoint::local_addr),
            metrics,
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

    /// The forwarder: its upstreams and its cache.
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// The DHT side of naming, when the P2P node runs.
    pub fn dht(&self) -> Option<&Arc<Dht>> {
        self.dht.as_ref()
    }

    /// The address of the metrics endpoint, when `[metrics]` is on (port 0 resolved).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The P2P node's addresses, each ending in `/p2p/<peer id>` (for `--bootstrap`).
    pub fn p2p_addrs(&self) -> &[libp2p::Multiaddr] {
        &self.p2p_addrs
    }

    /// Serves until `shutdown` is cancelled (then drains within a grace period) or a subsystem
    /// fails (then stops the others and returns its error). Each `reload` notification
    /// (SIGHUP) empties the cache and re-reads the upstreams.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        reload: Arc<Notify>,
    ) -> Result<(), DaemonError> {
        let Self {
            mut dns,
            forwarder,
            upstreams,
            drain,
            node,
            dht,
            tunnels,
            naming,
            control,
            running,
            watch,
            data_dir_lock,
            metrics,
            ..
        } = self;
        // Not a child of `shutdown`: the tasks must outlive the DNS drain (answers in flight
        // may still need the DHT), so they stop after it.
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let context = Arc::new(control::Context {
            naming,
            forwarder: forwarder.clone(),
            dns_addrs: dns.addrs().to_vec(),
            config_file: watch.as_ref().map(|w| w.path.clone()),
        });
        let serve_control = control::serve(control, context, stop.clone());
        tasks.spawn(Task::Control, serve_control);
        if let Some(node) = node {
            tasks.spawn(Task::Node, node.run(stop.clone()));
        }
        if let Some(dht) = dht {
            tasks.spawn(Task::Republisher, dht.clone().run(stop.clone()));
            if let Some(server) = tunnels {
                tasks.spawn(Task::Tunnels, serve_tunnels(dht, server, stop.clone()));
            }
        }
        if let Some(endpoint) = metrics {
            tasks.spawn(Task::Metrics, endpoint.serve(stop.clone()));
        }
        let (upstreams, follow) = upstreams.follow(stop.clone());
        tasks.spawn(Task::Upstreams, follow);
        let mut reloader = Reloader {
            running,
            watch,
            forwarder,
            upstreams,
        };
        announce_ready(dns.addrs());
        let failure = loop {
            tokio::select! {
                result = dns.wait() => {
                    let stopped = DnsError::Stopped("every listener closed".into());
                    break Some(DaemonError::from(result.err().unwrap_or(stopped)));
                }
                () = shutdown.cancelled() => break None,
                ended = tasks.first_end() => break Some(ended),
                () = reload.notified() => reloader.reload().await,
            }
        };
        match &failure {
            Some(failure) => error!(%failure, "shutting down"),
            None => info!("shutting down"),
        }
        crate::os::systemd::notify("STOPPING=1");
        let drained = match tokio::time::timeout(SHUTDOWN_GRACE, dns.shutdown(drain)).await {
            Ok(result) => result.map_err(DaemonError::from),
            Err(_) => Err(DaemonError::ShutdownTimeout(SHUTDOWN_GRACE)),
        };
        stop.cancel();
        let joined = tasks.join_all(SHUTDOWN_GRACE).await;
        // The tasks that write state have stopped (or were given up on): the directory is
        // free for the next process.
        drop(data_dir_lock);
        match failure {
            Some(failure) => Err(failure),
            None => drained.and(joined),
        }
    }
}

/// Starts the P2P node on `config.p2p`, tunnels on it, and the DHT side of naming, whose
/// lookups share `waiting` with the forwarder; the node and the lookups count in `meters`.
async fn bind_p2p(
    config: &Config,
    data_dir: &Path,
    waiting: Arc<Semaphore>,
    meters: &Meters,
) -> Result<(Node, Arc<Dht>, TunnelServer), DaemonError> {
    let keypair = identity::load_or_create(data_dir)?;
    let p2p = crate::p2p::own_port::resolve(&config.p2p, data_dir);
    let node = Node::bind(keypair.clone().into(), &p2p)
        .await?
        .with_metrics(meters.p2p.clone())
        .keep_records_in(data_dir);
    let (tunnels, server) = Tunnels::bind(&config.tunnel, data_dir, node.handle())?;
    let dht_config = DhtConfig::new(&config.p2p, waiting).with_metrics(meters.dht.clone());
    let dht = Arc::new(Dht::new(
        node.handle(),
        keypair,
        data_dir,
        dht_config,
        Some(tunnels),
    ));
    info!(peer_id = %node.handle().peer_id(), key_name = %dht.key_name(), "P2P identity");
    for addr in node.listen_addrs() {
        info!(%addr, "P2P address (for --bootstrap)");
    }
    Ok((node, dht, server))
}

/// Brings the records of this node's names in step with its services (the configuration's
/// may have changed while it was stopped), then serves tunnel streams until `stop`.
async fn serve_tunnels(dht: Arc<Dht>, server: TunnelServer, stop: CancellationToken) {
    tokio::join!(dht.start_tunnels(&stop), server.run(stop.clone()));
}

/// Logs `ready` and tells the service manager, naming the DNS addresses.
fn announce_ready(listen: &[SocketAddr]) {
    info!("ready");
    let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
    crate::os::systemd::notify(&format!(
        "READY=1\nSTATUS=answering DNS on {}",
        addrs.join(", ")
    ));
}

/// What a reload (SIGHUP) changes: the cache is emptied and the upstreams are read again,
/// from the configuration file read again when there is one.
struct Reloader {
    running: Config,
    watch: Option<ConfigWatch>,
    forwarder: Arc<Forwarder>,
    upstreams: UpstreamHandle,
}

impl Reloader {
    async fn reload(&mut self) {
        crate::os::systemd::notify("RELOADING=1");
        self.forwarder.cache().clear();
        // The file again, with the same flags over it: upstream settings apply now, the rest
        // is named for a restart. A broken file changes nothing.
        if let Some(watch) = &self.watch {
            match watch.load() {
                Ok(new) => {
                    let restart = restart_needed(&self.running, &new);
                    let running = &mut self.running.upstream;
                    running.servers.clone_from(&new.upstream.servers);
                    running.resolv_conf.clone_from(&new.upstream.resolv_conf);
                    if !restart.is_empty() {
                        warn!(sections = %restart.join(", "), path = %watch.path.display(), "changed settings need a restart to apply");
                    }
                }
                Err(error) => {
                    warn!(
                        error = &error as &dyn std::error::Error,
                        "reload: the configuration file has errors; keeping the running configuration"
                    )
                }
            }
        }
        if !self.upstreams.reload(&self.running.upstream).await {
            warn!("reload: the upstream follower has stopped; upstreams unchanged");
        }
        info!("reloaded: cache emptied, upstreams re-read");
        crate::os::systemd::notify("READY=1");
    }
}

/// The daemon's tasks, by name: each runs until the shared stop token is cancelled, and any
/// other end is a failure of the whole daemon.
#[derive(Default)]
struct Supervisor {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, Task>,
}

impl Supervisor {
    fn spawn(&mut self, task: Task, future: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(future);
        self.names.insert(handle.id(), task);
    }

    /// Waits for the first task to end and says which and how; never returns while none runs.
    async fn first_end(&mut self) -> DaemonError {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => DaemonError::TaskEnded(self.name(id)),
            Some(Err(error)) => self.failure(error),
            None => std::future::pending().await,
        }
    }

    /// Waits up to `grace` for every task to end (after the stop token was cancelled), then
    /// aborts the rest. A task that panicked is an error.
    async fn join_all(&mut self, grace: Duration) -> Result<(), DaemonError> {
        let mut result = Ok(());
        let joined = tokio::time::timeout(grace, async {
            while let Some(ended) = self.set.join_next_with_id().await {
                match ended {
                    Ok((id, ())) => {
                        self.name(id);
                    }
                    Err(error) => {
                        let failure = self.failure(error);
                        if result.is_ok() {
                            result = Err(failure);
                        }
                    }
                }
            }
        })
        .await;
        if joined.is_err() {
            let left: Vec<String> = self.names.values().map(ToString::to_string).collect();
            warn!(tasks = %left.join(", "), "tasks did not stop within {grace:?}; aborting them");
            self.set.shutdown().await;
        }
        result
    }

    fn name(&mut self, id: tokio::task::Id) -> Task {
        self.names
            .remove(&id)
            .expect("every task is spawned through Supervisor::spawn")
    }

    /// The error for a task that panicked (or was aborted, which only `join_all` does).
    fn failure(&mut self, error: JoinError) -> DaemonError {
        let task = self.name(error.id());
        if !error.is_panic() {
            return DaemonError::TaskEnded(task);
        }
        let payload = error.into_panic();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        DaemonError::TaskPanicked { task, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_upstream_list_reloads_without_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.upstream.servers = vec!["192.0.2.1".parse().unwrap()];
        new.upstream.resolv_conf = PathBuf::from("/elsewhere/resolv.conf");
        assert!(restart_needed(&old, &new).is_empty());
        new.upstream.timeout_ms += 1;
        new.cache.max_entries += 1;
        new.p2p.mdns = !new.p2p.mdns;
        new.intro.max_circuits += 1;
        assert_eq!(restart_needed(&old, &new), vec!["upstream", "cache", "p2p"]);
    }

    #[tokio::test]
    async fn a_task_that_ends_or_panics_is_named() {
        let mut tasks = Supervisor::default();
        tasks.spawn(Task::Upstreams, async {});
        let ended = tasks.first_end().await;
        assert!(matches!(ended, DaemonError::TaskEnded(Task::Upstreams)));
        assert_eq!(
            ended.to_string(),
            "the upstream follower stopped on its own"
        );
        tasks.spawn(Task::Node, async { panic!("swarm exploded") });
        let panicked = tasks.first_end().await;
        assert_eq!(
            panicked.to_string(),
            "the P2P node panicked: swarm exploded"
        );
    }

    #[tokio::test]
    async fn join_all_reports_a_panic_while_stopping() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let token = stop.clone();
        tasks.spawn(Task::Control, async move { token.cancelled().await });
        let token = stop.clone();
        tasks.spawn(Task::Node, async move {
            token.cancelled().await;
            panic!("{}", String::from("late"));
        });
        stop.cancel();
        let result = tasks.join_all(Duration::from_secs(5)).await;
        assert!(
            matches!(&result, Err(DaemonError::TaskPanicked { task: Task::Node, message }) if message == "late"),
            "{result:?}"
        );
    }
}
