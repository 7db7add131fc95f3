//! The upstream servers: which ones (the configured list, else resolv.conf followed as it
//! changes; never this daemon itself), the set the forwarder asks, how well each one is doing
//! (module `health`: smoothed RTT, failures, rests that back off), how one question is asked
//! of them (module `tries`: hedged tries, [`UpstreamSet::ask`]), how to talk to each (module
//! `edns`: with EDNS or without, RFC 6891 section 7) and whether one sends our queries back to
//! us (module `loops`: probes, [`UpstreamSet::detect_loop`]). An upstream's changes of state
//! are logged at a bounded rate ([`LogLimit`]), whatever the rate of queries that cause them.
//! An encrypted upstream (DNS over TLS or HTTPS) keeps a connection in its session (module
//! `session`, with `dot`, `doh` and `certs`); its tries are counted and ordered as plain ones.

mod certs;
mod doh;
mod dot;
mod edns;
mod health;
mod loops;
mod session;
mod tries;
mod watch;

pub use certs::{CertsError, load_ca_file};
pub use health::UpstreamHealth;
pub use session::{HttpFailure, SessionError};
pub use tries::{AskError, TryPlan};

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::{UpstreamAddr, UpstreamConfig, UpstreamServer},
    log_limit::{self, LogLimit},
    metrics::{UpstreamFamily, UpstreamMeters},
};

/// One upstream server and what we have learned about it. Shared by all queries; updated
/// with relaxed atomics because each value is only a hint for ordering and timeouts.
#[derive(Debug)]
pub struct Upstream {
    /// The server's address and port (53 unless the configuration gives another; 853 for DNS
    /// over TLS, 443 for DNS over HTTPS).
    pub addr: SocketAddr,
    /// The server as configured: what a reload compares.
    server: UpstreamServer,
    /// An encrypted upstream's connection; `None` for plain DNS.
    session: Option<session::Session>,
    /// Its RTT, failures and rests.
    health: health::Health,
    /// Our loop probe came back through it: it forwards our queries to this daemon.
    looping: AtomicBool,
    /// What we know of its EDNS support.
    edns: edns::EdnsMemory,
    /// Its loop probes.
    probe: loops::ProbeState,
    /// Its tries, answers, failures and RTT, once metrics count them (a TCP retry after a
    /// truncated answer is part of its try, not one of its own).
    meters: OnceLock<UpstreamMeters>,
}

impl Upstream {
    /// The upstream `server`; an encrypted one's session stops with `stop`.
    fn new(server: UpstreamServer, stop: &CancellationToken) -> Self {
        let session = match &server {
            UpstreamServer::Plain(_) => None,
            UpstreamServer::Encrypted(encrypted) => {
                Some(session::Session::new(encrypted, stop.child_token()))
            }
        };
        Self {
            addr: server.addr(),
            server,
            session,
            health: health::Health::default(),
            looping: AtomicBool::new(false),
            edns: edns::EdnsMemory::default(),
            probe: loops::ProbeState::default(),
            meters: OnceLock::new(),
        }
    }

    /// Its metrics, when they are counted.
    fn meters(&self) -> Option<&UpstreamMeters> {
        self.meters.get()
    }

    fn srtt_us(&self) -> u32 {
        self.health.srtt_us()
    }

    /// May this upstream be asked now (at `now_ms` on its set's clock)?
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.looping.load(Ordering::Relaxed) && !self.health.rests_at(now_ms)
    }

    /// How long a try of this upstream waits before the next try starts: four smoothed RTTs
    /// and 20 ms, at least 400 ms (or `max` if less) and at most `max`; `max` until measured.
    pub fn try_wait(&self, max: Duration) -> Duration {
        self.health.try_wait(max)
    }

    /// Counts a timeout or network error at `now_ms` (asking for a loop probe after a few);
    /// returns the rest it started, if it started one.
    fn record_failure(&self, now_ms: u64) -> Option<Duration> {
        let rest = self.health.record_failure(now_ms);
        if self.health.failures() >= loops::PROBE_AFTER_FAILURES && self.session.is_none() {
            // A forwarding loop shows as timeouts: each daemon in it waits on the other. An
            // encrypted upstream is not probed: this daemon serves no encrypted DNS, so a
            // loop through one would have to pass a plain hop that the probe finds.
            self.probe.request();
        }
        rest
    }

    /// Marks the upstream as sending our queries back to us; logs it the first time.
    fn mark_looping(&self) {
        if !self.looping.swap(true, Ordering::Relaxed) {
            warn!(
                upstream = %self,
                "upstream sends our queries back to this daemon (a forwarding loop); not using it"
            );
        }
    }

    /// Clears a loop mark once a probe went through it and was answered elsewhere.
    fn clear_looping(&self) {
        if self.looping.swap(false, Ordering::Relaxed) {
            info!(upstream = %self, "upstream no longer sends our queries back; using it again");
        }
    }

    /// Is it marked as sending our queries back to us?
    fn is_looping(&self) -> bool {
        self.looping.load(Ordering::Relaxed)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.server.fmt(f)
    }
}

/// Reads `nameserver` lines from a resolv.conf file.
fn read_resolv_conf(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    // resolv.conf is a few lines; 64 KiB is far more than any real one. A byte that is not
    // UTF-8 (a Latin-1 comment) costs its line only, as with glibc: the nameserver lines are
    // ASCII.
    let bytes = crate::state::read_bounded(path, 64 * 1024)?;
    Ok(parse_resolv_conf(&String::from_utf8_lossy(&bytes)))
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else {
            continue;
        };
        // glibc reads an address only (a link-local one with its zone, fe80::1%eth0), always
        // on port 53; what it would not use is not used here either, and said so.
        let address_only =
            word.parse::<IpAddr>().is_ok() || (word.contains('%') && !word.starts_with('['));
        let addr = match word.parse::<UpstreamAddr>() {
            Ok(addr) if address_only && addr.0.port() == 53 => addr,
            Ok(_) => {
                warn!(nameserver = %word, "ignoring a resolv.conf nameserver with a port: resolv.conf takes an address only (set upstream.servers for a port)");
                continue;
            }
            Err(why) => {
                warn!(nameserver = %word, %why, "ignoring a resolv.conf nameserver");
                continue;
            }
        };
        if let Err(why) = addr.check() {
            warn!(nameserver = %word, %why, "ignoring a resolv.conf nameserver");
            continue;
        }
        if !servers.contains(&addr.0) {
            servers.push(addr.0);
        }
    }
    servers
}

/// Would a query sent to `upstream` arrive at one of our own `listen` sockets? A wildcard
/// listener receives what is sent to any address of this host (the LAN address that DHCP may
/// put in resolv.conf too). Loops through other hosts are [`loops`]'s to find.
pub(crate) fn is_own_address(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
    // ::ffff:127.0.0.1 reaches 127.0.0.1.
    let ip = upstream.ip().to_canonical();
    listen.iter().any(|own| {
        own.port() == upstream.port()
            && (own.ip() == ip
                || (own.ip().is_unspecified()
                    && own.is_ipv4() == ip.is_ipv4()
                    && (ip.is_loopback() || is_host_address(ip))))
    })
}

/// Is `ip` an address of this host? Only a local address can be bound.
fn is_host_address(ip: IpAddr) -> bool {
    !ip.is_unspecified() && std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// How often resolv.conf is checked for changes when the upstreams come from it (DHCP and VPN
/// clients rewrite it when the network changes).
const RESOLV_CONF_POLL: Duration = Duration::from_secs(2);
/// How long after a change is seen resolv.conf is read: the rest of a writer's burst.
const RESOLV_CONF_SETTLE: Duration = Duration::from_millis(100);
/// How often resolv.conf is read while it is watched ([`watch`]): a safety net only.
const RESOLV_CONF_WATCHED_POLL: Duration = Duration::from_secs(300);
/// systemd-resolved's stub listener address, and the file listing the servers behind it.
const RESOLVED_STUB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
/// Reconfigurations waiting for the follower at most (a reload waits for its own).
const RELOADS_QUEUED: usize = 4;

/// The upstreams the forwarder asks. The list is replaced as a whole when its source changes
/// (a query works on one snapshot); what was learned about a server stays while it stays listed.
#[derive(Debug)]
pub struct UpstreamSet {
    list: RwLock<Arc<[Arc<Upstream>]>>,
    /// Start of the clock that rest times count on.
    epoch: Instant,
    /// Wakes the follower when an upstream wants a loop probe.
    probes_due: Notify,
    /// Bounds the log lines of the upstreams' rests and returns, of all of them together
    /// (resolv.conf may list many): the queries of a flood cause them.
    changes_logged: LogLimit,
    /// Stops the encrypted upstreams' sessions when the set is dropped.
    sessions: CancellationToken,
    /// The per-upstream metrics, once counted ([`UpstreamSet::count_in`]).
    metrics: OnceLock<UpstreamFamily>,
}

impl UpstreamSet {
    /// A set of `servers`, in this order, none measured yet.
    fn new(servers: &[UpstreamServer]) -> Self {
        let sessions = CancellationToken::new();
        let list = servers
            .iter()
            .map(|server| Arc::new(Upstream::new(server.clone(), &sessions)))
            .collect();
        Self {
            list: RwLock::new(list),
            epoch: Instant::now(),
            probes_due: Notify::new(),
            changes_logged: LogLimit::new("upstream rested or back"),
            sessions,
            metrics: OnceLock::new(),
        }
    }

    /// Counts each upstream's tries, answers, failures and RTT in `family`, from now on and
    /// for the servers a change of the list brings.
    pub fn count_in(&self, family: UpstreamFamily) {
        for upstream in self.snapshot().iter() {
            let _ = upstream.meters.set(family.meters(&upstream.to_string()));
        }
        let _ = self.metrics.set(family);
    }

    /// The servers as configured, in list order.
    pub fn servers(&self) -> Vec<UpstreamServer> {
        self.snapshot().iter().map(|u| u.server.clone()).collect()
    }

    /// The servers' addresses, in list order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.snapshot().iter().map(|u| u.addr).collect()
    }

    /// The list as it is now.
    pub fn snapshot(&self) -> Arc<[Arc<Upstream>]> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the list with `servers`, keeping what was learned about servers that stay
    /// (and an encrypted one's connection).
    pub fn replace(&self, servers: &[UpstreamServer]) {
        let old = self.snapshot();
        let new: Arc<[Arc<Upstream>]> = servers
            .iter()
            .map(|server| {
                old.iter()
                    .find(|u| u.server == *server)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(server.clone(), &self.sessions)))
            })
            .collect();
        if let Some(family) = self.metrics.get() {
            for upstream in new.iter() {
                let _ = upstream.meters.set(family.meters(&upstream.to_string()));
            }
            for gone in old
                .iter()
                .filter(|u| !new.iter().any(|n| n.server == u.server))
            {
                family.forget(&gone.to_string());
            }
        }
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    /// Milliseconds since the set was made: the clock of [`Upstream::usable`] and of the
    /// upstreams' rests.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Indexes into `snapshot` of the upstreams to try, best first: usable ones by smoothed
    /// RTT (unmeasured ones first, so each gets measured). When every upstream that does not
    /// loop is resting, those, the soonest to wake first: a rest is to prefer the others, and
    /// with none left, a server that timed out a few times beats no server at all. Empty only
    /// when none is configured or every one loops.
    pub fn order(&self, snapshot: &[Arc<Upstream>]) -> Vec<usize> {
        let now = self.now_ms();
        let candidates = (0..snapshot.len()).filter(|&i| !snapshot[i].is_looping());
        let mut order: Vec<usize> = candidates
            .clone()
            .filter(|&i| snapshot[i].usable(now))
            .collect();
        if order.is_empty() {
            order = candidates.collect();
            order.sort_by_key(|&i| {
                let upstream = &snapshot[i];
                (upstream.health.rest_until_ms(), upstream.srtt_us())
            });
            return order;
        }
        order.sort_by_key(|&i| snapshot[i].srtt_us());
        order
    }

    /// Counts a try of `upstream` that went unanswered within its wait, or failed on the
    /// network, into its health; wakes the follower when that makes a loop probe due. Returns
    /// the rest this started, if it started one.
    fn count_failure(&self, upstream: &Upstream) -> Option<Duration> {
        if let Some(meters) = upstream.meters() {
            meters.failed();
        }
        let rest = upstream.record_failure(self.now_ms());
        if let Some(rest) = rest
            && self.changes_logged.admit()
        {
            warn!(upstream = %upstream, rest_secs = rest.as_secs(), "upstream is not answering; resting it and asking the others");
        }
        if upstream.probe.is_due() {
            self.probes_due.notify_one();
        }
        rest
    }

    /// Counts an answer from `upstream` that took `rtt` into its health; true when it brought
    /// the upstream back from a rest.
    fn count_answer(&self, upstream: &Upstream, rtt: Duration) -> bool {
        if let Some(meters) = upstream.meters() {
            meters.answered(rtt);
        }
        let back = upstream.health.record_answer(rtt, self.now_ms());
        if back && self.changes_logged.admit() {
            info!(upstream = %upstream, "upstream answers again");
        }
        back
    }
}

impl Drop for UpstreamSet {
    fn drop(&mut self) {
        self.sessions.cancel();
    }
}

/// Where the upstream servers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UpstreamSource {
    /// `upstream.servers` (or `--upstream`), used as given.
    Servers(Vec<UpstreamServer>),
    /// The `nameserver` lines of this resolv.conf file, read again whenever it changes.
    ResolvConf(PathBuf),
}

impl From<&UpstreamConfig> for UpstreamSource {
    fn from(config: &UpstreamConfig) -> Self {
        if config.servers.is_empty() {
            Self::ResolvConf(config.resolv_conf.clone())
        } else {
            Self::Servers(config.servers.clone())
        }
    }
}

impl UpstreamSource {
    /// The servers of this source a daemon listening on `listen` may forward to (never
    /// itself); logs the outcome.
    fn select(&self, listen: &[SocketAddr]) -> Vec<UpstreamServer> {
        match self {
            Self::Servers(servers) => usable(servers.clone(), listen, "the configuration"),
            Self::ResolvConf(path) => from_resolv_conf(path, listen),
        }
    }

    /// The file's modification time, for a resolv.conf source.
    fn modified(&self) -> Option<SystemTime> {
        match self {
            Self::Servers(_) => None,
            Self::ResolvConf(path) => std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        }
    }
}

fn from_resolv_conf(path: &Path, listen: &[SocketAddr]) -> Vec<UpstreamServer> {
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
        return usable(plain(real), listen, RESOLVED_UPSTREAMS);
    }
    usable(plain(servers), listen, &path.display().to_string())
}

/// resolv.conf's servers, plain DNS.
fn plain(addrs: Vec<SocketAddr>) -> Vec<UpstreamServer> {
    addrs.into_iter().map(|a| UpstreamAddr(a).into()).collect()
}

/// Drops our own addresses from `candidates` (read from `source`) and logs the outcome.
fn usable(
    candidates: Vec<UpstreamServer>,
    listen: &[SocketAddr],
    source: &str,
) -> Vec<UpstreamServer> {
    let (own, upstreams): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|server| is_own_address(server.addr(), listen));
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

/// Keeps an [`UpstreamSet`] in step with its source. Its task ([`UpstreamFollower::follow`])
/// is the only reader of the source: it polls resolv.conf and applies reloads. It also sends
/// the set's loop probes (see [`UpstreamSet::detect_loop`]).
pub struct UpstreamFollower {
    source: UpstreamSource,
    /// This daemon's DNS addresses, never used as upstreams.
    listen: Vec<SocketAddr>,
    /// resolv.conf's modification time when it was last read.
    seen: Option<SystemTime>,
    set: Arc<UpstreamSet>,
    /// How long a loop probe waits for its answer (`upstream.timeout_ms`).
    probe_wait: Duration,
}

/// A new source for the follower, and where to say it is in use.
type Reload = (UpstreamSource, oneshot::Sender<()>);

impl UpstreamFollower {
    /// Chooses the upstreams of `config` for a daemon listening on `listen`.
    pub fn new(config: &UpstreamConfig, listen: &[SocketAddr]) -> Self {
        let source = UpstreamSource::from(config);
        // Stamp first, read second: a change in between is seen at the next poll.
        let seen = source.modified();
        let set = Arc::new(UpstreamSet::new(&source.select(listen)));
        Self {
            source,
            listen: listen.to_vec(),
            seen,
            set,
            probe_wait: Duration::from_millis(config.timeout_ms),
        }
    }

    /// The set the forwarder asks.
    pub fn set(&self) -> &Arc<UpstreamSet> {
        &self.set
    }

    /// The follower's task, to be spawned, and the handle that reloads it. The task ends when
    /// `stop` is cancelled or every handle is dropped.
    pub fn follow(
        self,
        stop: CancellationToken,
    ) -> (UpstreamHandle, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(RELOADS_QUEUED);
        // Watched from here, not from the task's first poll: a change made before the task
        // runs would otherwise go unseen until the safety poll.
        let (changed_tx, changed) = mpsc::channel(1);
        let watch = self.watch(&changed_tx);
        let changes = Changes {
            watch,
            tx: changed_tx,
            rx: changed,
        };
        (UpstreamHandle { reloads: tx }, self.run(rx, changes, stop))
    }

    async fn run(
        mut self,
        mut reloads: mpsc::Receiver<Reload>,
        changes: Changes,
        stop: CancellationToken,
    ) {
        let Changes {
            mut watch,
            tx: changed_tx,
            rx: mut changed,
        } = changes;
        // Whatever changed between the first read and the watch.
        self.poll();
        let mut next_poll = Instant::now() + poll_every(watch.as_ref());
        let mut recheck = tokio::time::interval(loops::LOOP_RECHECK);
        // Each probe is bounded by its wait; those still out when the follower stops are
        // dropped with the set.
        let mut probes = JoinSet::new();
        let set = self.set.clone();
        let limits = [&set.changes_logged];
        // Says how many changes went unlogged once their minute is over, even if none follows.
        let summaries = log_limit::report_suppressed(&limits, stop.clone());
        tokio::pin!(summaries);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut summaries => return,
                reload = reloads.recv() => {
                    let Some((source, done)) = reload else { return };
                    self.switch(source);
                    watch = self.watch(&changed_tx);
                    let _ = done.send(());
                }
                () = tokio::time::sleep_until(next_poll),
                    if matches!(self.source, UpstreamSource::ResolvConf(_)) =>
                {
                    self.poll();
                    next_poll = Instant::now() + poll_every(watch.as_ref());
                }
                Some(()) = changed.recv() => {
                    // A writer truncates, writes and closes: events of one change come in a
                    // burst, and the first may come before the new text is in. Read once the
                    // burst is over; an event after the drain wakes the loop again.
                    tokio::time::sleep(RESOLV_CONF_SETTLE).await;
                    while changed.try_recv().is_ok() {}
                    self.reread();
                    // The link may point elsewhere now.
                    watch = self.watch(&changed_tx);
                }
                () = self.set.probes_due.notified() => {
                    loops::start_probes(&self.set, &mut probes, self.probe_wait);
                }
                _ = recheck.tick() => {
                    self.set.recheck_loops();
                    loops::start_probes(&self.set, &mut probes, self.probe_wait);
                }
                Some(_) = probes.join_next(), if !probes.is_empty() => {}
            }
        }
    }

    /// Reads `source` (again, when unchanged) and uses what it lists.
    fn switch(&mut self, source: UpstreamSource) {
        self.source = source;
        self.seen = self.source.modified();
        self.set.replace(&self.source.select(&self.listen));
    }

    /// Watches resolv.conf, when that is the source and the platform can.
    fn watch(&self, changed: &mpsc::Sender<()>) -> Option<watch::ResolvConfWatch> {
        let UpstreamSource::ResolvConf(path) = &self.source else {
            return None;
        };
        watch::ResolvConfWatch::new(path, Path::new(RESOLVED_UPSTREAMS), changed.clone())
    }

    /// Reads resolv.conf again if it changed since it was last read.
    fn poll(&mut self) {
        if self.source.modified() != self.seen {
            self.reread();
        }
    }

    /// Reads resolv.conf again (a watch saw it, or the file behind it, change) and uses what
    /// it lists if that differs.
    fn reread(&mut self) {
        self.seen = self.source.modified();
        let upstreams = self.source.select(&self.listen);
        if upstreams != self.set.servers() {
            self.set.replace(&upstreams);
        }
    }
}

/// How long until resolv.conf is read again: rarely while it is watched.
fn poll_every(watch: Option<&watch::ResolvConfWatch>) -> Duration {
    if watch.is_some() {
        RESOLV_CONF_WATCHED_POLL
    } else {
        RESOLV_CONF_POLL
    }
}

/// The watch on resolv.conf and the channel its events come on.
struct Changes {
    watch: Option<watch::ResolvConfWatch>,
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

/// Reloads a running [`UpstreamFollower`].
#[derive(Debug, Clone)]
pub struct UpstreamHandle {
    reloads: mpsc::Sender<Reload>,
}

impl UpstreamHandle {
    /// Switches to the source of `config` and reads it again (a reload re-reads resolv.conf
    /// even when its path stays). Returns once the new list is in use; false when the
    /// follower has stopped.
    pub async fn reload(&self, config: &UpstreamConfig) -> bool {
        let (done, applied) = oneshot::channel();
        let source = UpstreamSource::from(config);
        self.reloads.send((source, done)).await.is_ok() && applied.await.is_ok()
    }
}

#[cfg(test)]
mod tests;
