//! The upstream servers: which ones (the configured list, else resolv.conf followed as it
//! changes; never this daemon itself), the set the forwarder asks, how well each one is doing
//! (smoothed RTT, failures, back-off), how one question is asked of them (module `tries`:
//! hedged tries, [`UpstreamSet::ask`]), how to talk to each (module `edns`: with EDNS or
//! without, RFC 6891 section 7) and whether one sends our queries back to us (module `loops`:
//! probes, [`UpstreamSet::detect_loop`]).

mod edns;
mod loops;
mod tries;

pub use tries::{AskError, TryPlan};

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
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

use crate::config::{UpstreamAddr, UpstreamConfig};

/// Failures in a row after which an upstream is rested.
const FAILURES_BEFORE_REST: u32 = 3;
/// Longest rest for an upstream that keeps failing.
const MAX_REST: Duration = Duration::from_secs(30);
/// Shortest per-try wait, whatever the measured RTT. An upstream of a stub is a recursive
/// resolver: its RTT, measured mostly on its cache hits, says little about a cache miss, which
/// takes it a recursion of often 100 to 300 ms. A try is not abandoned when its wait passes
/// (see module `tries`), so a short wait costs no answer, but each wait that passes sends the
/// question again (load on the upstreams) and counts as a timeout towards resting the upstream.
/// unbound starts from 376 ms for a server it has not measured; 400 ms keeps ordinary
/// recursions inside one try while a lost datagram or a dead upstream still costs well under
/// the 1 s that RFC 6298 section 2.4 gives TCP as its least retransmission timeout.
const MIN_TRY_WAIT: Duration = Duration::from_millis(400);
/// Largest smoothed RTT kept, so one bad spell cannot push the wait past any use.
const MAX_SRTT_US: u32 = 5_000_000;

/// One upstream server and what we have learned about it. Shared by all queries; updated
/// with relaxed atomics because each value is only a hint for ordering and timeouts.
#[derive(Debug)]
pub struct Upstream {
    /// The server's address and port (53 unless the configuration gives another).
    pub addr: SocketAddr,
    /// Smoothed round-trip time in microseconds; 0 until the first answer.
    srtt_us: AtomicU32,
    failures: AtomicU32,
    /// Milliseconds (on the [`UpstreamSet`]'s clock) before which the upstream is not tried.
    rest_until_ms: AtomicU64,
    /// Our loop probe came back through it: it forwards our queries to this daemon.
    looping: AtomicBool,
    /// What we know of its EDNS support.
    edns: edns::EdnsMemory,
    /// Its loop probes.
    probe: loops::ProbeState,
}

impl Upstream {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            srtt_us: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            rest_until_ms: AtomicU64::new(0),
            looping: AtomicBool::new(false),
            edns: edns::EdnsMemory::default(),
            probe: loops::ProbeState::default(),
        }
    }

    fn srtt_us(&self) -> u32 {
        self.srtt_us.load(Ordering::Relaxed)
    }

    /// May this upstream be asked now?
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.looping.load(Ordering::Relaxed)
            && self.rest_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// How long a try of this upstream waits before the next try starts: four smoothed RTTs
    /// and 20 ms, at least 400 ms (or `max` if less) and at most `max`; `max` until measured.
    pub fn try_wait(&self, max: Duration) -> Duration {
        match self.srtt_us() {
            0 => max,
            srtt => (Duration::from_micros(u64::from(srtt) * 4) + Duration::from_millis(20))
                .clamp(MIN_TRY_WAIT.min(max), max),
        }
    }

    /// Counts an answer that took `rtt`: folds it into the smoothed RTT (weight 1/8, as TCP's
    /// SRTT in RFC 6298 section 2) and ends any rest.
    pub fn record_answer(&self, rtt: Duration) {
        let rtt = u32::try_from(rtt.as_micros()).unwrap_or(MAX_SRTT_US).max(1);
        let old = self.srtt_us();
        let new = if old == 0 {
            rtt
        } else {
            (old / 8) * 7 + rtt / 8
        };
        self.srtt_us
            .store(new.clamp(1, MAX_SRTT_US), Ordering::Relaxed);
        let failures = self.failures.swap(0, Ordering::Relaxed);
        if failures >= FAILURES_BEFORE_REST {
            info!(upstream = %self.addr, "upstream answers again");
        }
        self.rest_until_ms.store(0, Ordering::Relaxed);
    }

    /// Counts a timeout or network error; returns true when this failure rested the upstream.
    pub fn record_failure(&self, now_ms: u64) -> bool {
        let old = self.srtt_us();
        let penalized = if old == 0 {
            500_000
        } else {
            old.saturating_mul(2)
        };
        self.srtt_us
            .store(penalized.min(MAX_SRTT_US), Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= loops::PROBE_AFTER_FAILURES {
            // A forwarding loop shows as timeouts: each daemon in it waits on the other.
            self.probe.request();
        }
        if failures < FAILURES_BEFORE_REST {
            return false;
        }
        let exponent = (failures - FAILURES_BEFORE_REST).min(5);
        let rest = (Duration::from_secs(1) * (1 << exponent)).min(MAX_REST);
        self.rest_until_ms
            .store(now_ms + rest.as_millis() as u64, Ordering::Relaxed);
        if failures == FAILURES_BEFORE_REST {
            warn!(upstream = %self.addr, "upstream is not answering; resting it and asking the others");
        }
        true
    }

    /// Marks the upstream as sending our queries back to us; logs it the first time.
    fn mark_looping(&self) {
        if !self.looping.swap(true, Ordering::Relaxed) {
            warn!(
                upstream = %self.addr,
                "upstream sends our queries back to this daemon (a forwarding loop); not using it"
            );
        }
    }

    /// Clears a loop mark once a probe went through it and was answered elsewhere.
    fn clear_looping(&self) {
        if self.looping.swap(false, Ordering::Relaxed) {
            info!(upstream = %self.addr, "upstream no longer sends our queries back; using it again");
        }
    }

    /// Is it marked as sending our queries back to us?
    fn is_looping(&self) -> bool {
        self.looping.load(Ordering::Relaxed)
    }
}

/// Reads `nameserver` lines from a resolv.conf file.
fn read_resolv_conf(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    // resolv.conf is a few lines; 64 KiB is far more than any real one.
    let text = crate::state::read_text_bounded(path, 64 * 1024)?;
    Ok(parse_resolv_conf(&text))
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
fn is_own_address(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
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
}

impl UpstreamSet {
    /// A set of `addrs`, in this order, none measured yet.
    fn new(addrs: &[SocketAddr]) -> Self {
        Self {
            list: RwLock::new(addrs.iter().map(|&a| Arc::new(Upstream::new(a))).collect()),
            epoch: Instant::now(),
            probes_due: Notify::new(),
        }
    }

    /// The servers' addresses, in list order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.snapshot().iter().map(|u| u.addr).collect()
    }

    /// The list as it is now.
    pub fn snapshot(&self) -> Arc<[Arc<Upstream>]> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the list with `addrs`, keeping what was learned about servers that stay.
    pub fn replace(&self, addrs: &[SocketAddr]) {
        let old = self.snapshot();
        let new: Arc<[Arc<Upstream>]> = addrs
            .iter()
            .map(|&addr| {
                old.iter()
                    .find(|u| u.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(addr)))
            })
            .collect();
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    /// Milliseconds since the set was made: the clock of [`Upstream::usable`] and
    /// [`Upstream::record_failure`].
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
                let wakes = upstream.rest_until_ms.load(Ordering::Relaxed);
                (wakes, upstream.srtt_us())
            });
            return order;
        }
        order.sort_by_key(|&i| snapshot[i].srtt_us());
        order
    }

    /// Counts a try of `upstream` that went unanswered within its wait, or failed on the
    /// network, into its health; wakes the follower when that makes a loop probe due.
    fn count_failure(&self, upstream: &Upstream) {
        upstream.record_failure(self.now_ms());
        if upstream.probe.is_due() {
            self.probes_due.notify_one();
        }
    }
}

/// Where the upstream servers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UpstreamSource {
    /// `upstream.servers` (or `--upstream`), used as given.
    Servers(Vec<SocketAddr>),
    /// The `nameserver` lines of this resolv.conf file, read again whenever it changes.
    ResolvConf(PathBuf),
}

impl From<&UpstreamConfig> for UpstreamSource {
    fn from(config: &UpstreamConfig) -> Self {
        if config.servers.is_empty() {
            Self::ResolvConf(config.resolv_conf.clone())
        } else {
            Self::Servers(config.servers.iter().map(|s| s.0).collect())
        }
    }
}

impl UpstreamSource {
    /// The servers of this source a daemon listening on `listen` may forward to (never
    /// itself); logs the outcome.
    fn select(&self, listen: &[SocketAddr]) -> Vec<SocketAddr> {
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

fn from_resolv_conf(path: &Path, listen: &[SocketAddr]) -> Vec<SocketAddr> {
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
        return usable(real, listen, RESOLVED_UPSTREAMS);
    }
    usable(servers, listen, &path.display().to_string())
}

/// Drops our own addresses from `candidates` (read from `source`) and logs the outcome.
fn usable(candidates: Vec<SocketAddr>, listen: &[SocketAddr], source: &str) -> Vec<SocketAddr> {
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
        (UpstreamHandle { reloads: tx }, self.run(rx, stop))
    }

    async fn run(mut self, mut reloads: mpsc::Receiver<Reload>, stop: CancellationToken) {
        let mut poll = tokio::time::interval(RESOLV_CONF_POLL);
        let mut recheck = tokio::time::interval(loops::LOOP_RECHECK);
        // Each probe is bounded by its wait; those still out when the follower stops are
        // dropped with the set.
        let mut probes = JoinSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                reload = reloads.recv() => {
                    let Some((source, done)) = reload else { return };
                    self.switch(source);
                    let _ = done.send(());
                }
                _ = poll.tick(), if matches!(self.source, UpstreamSource::ResolvConf(_)) => {
                    self.poll();
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

    /// Reads resolv.conf again if it changed since it was last read.
    fn poll(&mut self) {
        let now = self.source.modified();
        if now == self.seen {
            return;
        }
        self.seen = now;
        let upstreams = self.source.select(&self.listen);
        if upstreams != self.set.addrs() {
            self.set.replace(&upstreams);
        }
    }
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
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch lan\nnameserver 192.0.2.53\nnameserver  2001:db8::53 \n\
                    nameserver fe80::1%lo\nnameserver fe80::2%no-such-if0\nnameserver fe80::3\n\
                    nameserver bogus\nnameserver 192.0.2.53\nnameserver 192.0.2.54:53\n\
                    nameserver 0.0.0.0\nnameserver 224.0.0.1\nnameserver [2001:db8::54]:53\n\
                    options edns0\n";
        let lo = nix::net::if_::if_nametoindex("lo").unwrap();
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                format!("[fe80::1%{lo}]:53").parse().unwrap(),
            ]
        );
    }

    #[test]
    fn own_addresses_are_recognized() {
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:53".parse().unwrap()];
        assert!(is_own_address("127.0.0.1:53".parse().unwrap(), &listen));
        assert!(!is_own_address("127.0.0.53:53".parse().unwrap(), &listen));
        assert!(!is_own_address("127.0.0.1:5353".parse().unwrap(), &listen));
        assert!(is_own_address(
            "[::ffff:127.0.0.1]:53".parse().unwrap(),
            &listen
        ));
        let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:53".parse().unwrap()];
        assert!(is_own_address("127.0.0.1:53".parse().unwrap(), &wildcard));
        assert!(!is_own_address("[::1]:53".parse().unwrap(), &wildcard));
        // Any address of this host reaches a wildcard listener; others do not.
        assert!(is_host_address("127.0.0.1".parse().unwrap()));
        assert!(!is_host_address("192.0.2.1".parse().unwrap()));
        assert!(!is_own_address("192.0.2.1:53".parse().unwrap(), &wildcard));
    }

    #[test]
    fn failures_rest_an_upstream_and_answers_revive_it() {
        let up = Upstream::new("192.0.2.1:53".parse().unwrap());
        assert!(up.usable(0));
        assert!(!up.record_failure(1000));
        assert!(!up.record_failure(1000));
        assert!(up.record_failure(1000));
        assert!(!up.usable(1000));
        assert!(up.usable(2000));
        up.record_answer(Duration::from_millis(10));
        assert!(up.usable(1000));
        up.mark_looping();
        assert!(up.is_looping());
        assert!(!up.usable(10_000));
        up.clear_looping();
        assert!(up.usable(10_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rested_upstream_is_asked_again_after_its_rest() {
        let set = UpstreamSet::new(&[
            "192.0.2.1:53".parse().unwrap(),
            "192.0.2.2:53".parse().unwrap(),
        ]);
        let list = set.snapshot();
        for _ in 0..FAILURES_BEFORE_REST {
            list[0].record_failure(set.now_ms());
        }
        assert_eq!(set.order(&list), vec![1], "the failing one rests");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(set.order(&list), vec![1]);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            set.order(&list),
            vec![1, 0],
            "back, after the unmeasured one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_upstream_rests_the_rested_ones_are_asked_anyway() {
        let set = UpstreamSet::new(&[
            "192.0.2.1:53".parse().unwrap(),
            "192.0.2.2:53".parse().unwrap(),
            "192.0.2.3:53".parse().unwrap(),
        ]);
        let list = set.snapshot();
        // The first rests longest (more failures), the second wakes first, the third loops.
        for _ in 0..FAILURES_BEFORE_REST + 2 {
            list[0].record_failure(set.now_ms());
        }
        for _ in 0..FAILURES_BEFORE_REST {
            list[1].record_failure(set.now_ms());
        }
        list[2].mark_looping();
        assert!(!list[0].usable(set.now_ms()) && !list[1].usable(set.now_ms()));
        assert_eq!(set.order(&list), vec![1, 0], "soonest to wake first");
        list[0].mark_looping();
        assert_eq!(set.order(&list[..1]), Vec::<usize>::new(), "loops stay out");
        list[0].clear_looping();
        let lone = UpstreamSet::new(&["192.0.2.9:53".parse().unwrap()]);
        let only = lone.snapshot();
        for _ in 0..FAILURES_BEFORE_REST {
            only[0].record_failure(lone.now_ms());
        }
        assert_eq!(
            lone.order(&only),
            vec![0],
            "a lone upstream is never left out"
        );
    }

    #[tokio::test]
    async fn a_reload_switches_the_source_and_keeps_what_was_learned() {
        let dir = std::env::temp_dir().join(format!("p2pdns-up-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 192.0.2.1\nnameserver 192.0.2.9\n").unwrap();
        let listen: Vec<SocketAddr> = vec!["192.0.2.9:53".parse().unwrap()];
        let first: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let configured = UpstreamConfig {
            servers: vec![UpstreamAddr(first)],
            ..UpstreamConfig::default()
        };
        let follower = UpstreamFollower::new(&configured, &listen);
        let set = follower.set().clone();
        assert_eq!(set.addrs(), vec![first]);
        set.snapshot()[0].record_answer(Duration::from_millis(10));
        let stop = CancellationToken::new();
        let (handle, task) = follower.follow(stop.clone());
        let task = tokio::spawn(task);
        let from_file = UpstreamConfig {
            resolv_conf: path,
            ..UpstreamConfig::default()
        };
        assert!(handle.reload(&from_file).await);
        assert_eq!(set.addrs(), vec![first], "never its own listen address");
        assert!(set.snapshot()[0].srtt_us() > 0, "what was learned stays");
        stop.cancel();
        task.await.unwrap();
        assert!(
            !handle.reload(&configured).await,
            "the follower has stopped"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn try_wait_follows_the_rtt() {
        let up = Upstream::new("192.0.2.1:53".parse().unwrap());
        let max = Duration::from_secs(1);
        assert_eq!(up.try_wait(max), max);
        up.record_answer(Duration::from_millis(150));
        assert_eq!(up.try_wait(max), Duration::from_millis(620));
        up.record_answer(Duration::from_micros(10));
        assert!(up.try_wait(max) >= MIN_TRY_WAIT);
    }
}
