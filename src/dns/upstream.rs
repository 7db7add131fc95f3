//! Upstream servers: where they come from (config or resolv.conf, never ourselves), and how
//! well each one is doing (smoothed RTT, failures, back-off).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use tracing::{info, warn};

/// Failures in a row after which an upstream is rested.
const FAILURES_BEFORE_REST: u32 = 3;
/// Longest rest for an upstream that keeps failing.
const MAX_REST: Duration = Duration::from_secs(30);
/// Shortest per-try wait, whatever the measured RTT.
const MIN_TRY_WAIT: Duration = Duration::from_millis(150);
/// Largest smoothed RTT kept, so one bad spell cannot push the wait past any use.
const MAX_SRTT_US: u32 = 5_000_000;

/// One upstream server and what we have learned about it. Shared by all queries; updated
/// with relaxed atomics because each value is only a hint for ordering and timeouts.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Smoothed round-trip time in microseconds; 0 until the first answer.
    srtt_us: AtomicU32,
    failures: AtomicU32,
    /// Milliseconds (on the forwarder's clock) before which the upstream is not tried.
    rest_until_ms: AtomicU64,
    /// It answered our own loop-detection tag: it is this daemon.
    looping: AtomicBool,
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            srtt_us: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            rest_until_ms: AtomicU64::new(0),
            looping: AtomicBool::new(false),
        }
    }

    pub fn srtt_us(&self) -> u32 {
        self.srtt_us.load(Ordering::Relaxed)
    }

    /// May this upstream be asked now?
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.looping.load(Ordering::Relaxed)
            && self.rest_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// How long to wait for this upstream before moving on: four smoothed RTTs, within bounds.
    pub fn try_wait(&self, max: Duration) -> Duration {
        match self.srtt_us() {
            0 => max,
            srtt => (Duration::from_micros(u64::from(srtt) * 4) + Duration::from_millis(20))
                .clamp(MIN_TRY_WAIT.min(max), max),
        }
    }

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

    /// Marks the upstream as this daemon itself. Returns true the first time.
    pub fn mark_looping(&self) -> bool {
        !self.looping.swap(true, Ordering::Relaxed)
    }
}

/// Reads `nameserver` lines from a resolv.conf file.
pub fn read_resolv_conf(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    Ok(parse_resolv_conf(&text))
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // Link-local IPv6 servers carry a zone (fe80::1%eth0); Rust's IpAddr cannot hold it.
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        if !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    servers
}

/// Would a query sent to `upstream` arrive at one of our own `listen` sockets?
pub fn is_own_address(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
    // ::ffff:127.0.0.1 reaches 127.0.0.1.
    let ip = upstream.ip().to_canonical();
    listen.iter().any(|own| {
        own.port() == upstream.port()
            && (own.ip() == ip
                || (own.ip().is_unspecified() && own.is_ipv4() == ip.is_ipv4() && ip.is_loopback()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch lan\nnameserver 192.0.2.53\nnameserver  2001:db8::53 \n\
                    nameserver fe80::1%eth0\nnameserver bogus\nnameserver 192.0.2.53\noptions edns0\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
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
        assert!(up.mark_looping());
        assert!(!up.mark_looping());
        assert!(!up.usable(10_000));
    }

    #[test]
    fn try_wait_follows_the_rtt() {
        let up = Upstream::new("192.0.2.1:53".parse().unwrap());
        let max = Duration::from_secs(1);
        assert_eq!(up.try_wait(max), max);
        up.record_answer(Duration::from_millis(50));
        assert_eq!(up.try_wait(max), Duration::from_millis(220));
        up.record_answer(Duration::from_micros(10));
        assert!(up.try_wait(max) >= MIN_TRY_WAIT);
    }
}
