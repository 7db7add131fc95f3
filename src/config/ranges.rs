//! The range of every numeric key, checked at load: a value outside it stops the daemon with
//! the key named (exit code 78), never a panic or an abort later. Each range is what the value
//! can mean, within what the code under it takes: a huge `dns.max_inflight` made tokio's
//! semaphore panic, a huge `cache.max_entries` aborted on allocating the cache's table, a
//! relay duration past what libp2p encodes panicked on every reservation, and durations past
//! what a clock can add panic where they are added. `config/p2pdns.toml` states each range
//! beside its key; a test holds the two together.

use super::{Config, ConfigError, invalid};

/// One numeric key: its dotted name, its range (inclusive) and where its value is.
pub(crate) struct Range {
    /// The dotted key, as in `config/p2pdns.toml`.
    pub(crate) key: &'static str,
    /// The smallest value taken.
    pub(crate) min: u64,
    /// The largest value taken.
    pub(crate) max: u64,
    /// The key's value in a configuration, widened to `u64`.
    pub(crate) value: fn(&Config) -> u64,
}

/// Seconds in a day, a week and RFC 2181's largest TTL (section 8: 2^31 - 1).
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;
const MAX_TTL: u64 = 0x7fff_ffff;
/// A minute in milliseconds: the longest any one wait of a query may take.
const MINUTE_MS: u64 = 60_000;

/// `usize` values as `u64` (lossless where the daemon runs: 64-bit and 32-bit targets).
fn n(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Every numeric key, by section, in the order of `config/p2pdns.toml` (a table: one line
/// per key is the point, hence its length).
pub(crate) const RANGES: &[Range] = &[
    range("dns.max_inflight", 1, 65_536, |c| n(c.dns.max_inflight)),
    range("dns.tcp_idle_timeout_secs", 1, 3_600, |c| {
        c.dns.tcp_idle_timeout_secs
    }),
    range("dns.tcp_max_connections", 1, 65_536, |c| {
        n(c.dns.tcp_max_connections)
    }),
    range("dns.tcp_max_per_client", 1, 65_536, |c| {
        n(c.dns.tcp_max_per_client)
    }),
    range("dns.tcp_max_pending", 1, 1_024, |c| {
        n(c.dns.tcp_max_pending)
    }),
    range("dns.udp_payload", 512, 65_535, |c| c.dns.udp_payload.into()),
    range("upstream.timeout_ms", 1, MINUTE_MS, |c| {
        c.upstream.timeout_ms
    }),
    range("upstream.query_timeout_ms", 1, MINUTE_MS, |c| {
        c.upstream.query_timeout_ms
    }),
    range("upstream.attempts", 1, 16, |c| c.upstream.attempts.into()),
    range("upstream.edns_payload", 512, 65_535, |c| {
        c.upstream.edns_payload.into()
    }),
    range("cache.max_entries", 0, 1_000_000, |c| {
        n(c.cache.max_entries)
    }),
    range("cache.max_bytes", 0, 1 << 30, |c| n(c.cache.max_bytes)),
    range("cache.min_ttl_secs", 0, DAY, |c| {
        c.cache.min_ttl_secs.into()
    }),
    range("cache.max_ttl_secs", 0, MAX_TTL, |c| {
        c.cache.max_ttl_secs.into()
    }),
    range("cache.max_negative_ttl_secs", 0, DAY, |c| {
        c.cache.max_negative_ttl_secs.into()
    }),
    range("cache.max_stale_secs", 0, WEEK, |c| {
        c.cache.max_stale_secs.into()
    }),
    range("cache.stale_ttl_secs", 0, 3_600, |c| {
        c.cache.stale_ttl_secs.into()
    }),
    range("cache.stale_client_timeout_ms", 0, MINUTE_MS, |c| {
        c.cache.stale_client_timeout_ms
    }),
    range("naming.default_ttl_secs", 0, MAX_TTL, |c| {
        c.naming.default_ttl_secs.into()
    }),
    range("p2p.lookup_budget_ms", 1, MINUTE_MS, |c| {
        c.p2p.lookup_budget_ms
    }),
    // Kademlia asks its 20 closest peers (k): more replicas are never found.
    range("p2p.lookup_replicas", 1, 20, |c| n(c.p2p.lookup_replicas)),
    range("p2p.max_stored_records", 1, 10_000_000, |c| {
        n(c.p2p.max_stored_records)
    }),
    range("p2p.max_records_per_owner", 1, 10_000_000, |c| {
        n(c.p2p.max_records_per_owner)
    }),
    range("p2p.max_puts_per_peer_per_minute", 1, 1_000_000, |c| {
        n(c.p2p.max_puts_per_peer_per_minute)
    }),
    range("p2p.max_connections", 1, 100_000, |c| {
        c.p2p.max_connections.into()
    }),
    range("p2p.max_connections_per_peer", 1, 1_024, |c| {
        c.p2p.max_connections_per_peer.into()
    }),
    range("p2p.max_pending_incoming", 1, 100_000, |c| {
        c.p2p.max_pending_incoming.into()
    }),
    range("p2p.max_lookups", 1, 65_536, |c| n(c.p2p.max_lookups)),
    range("p2p.max_pins", 1, 10_000_000, |c| n(c.p2p.max_pins)),
    range("intro.max_reservations", 1, 100_000, |c| {
        n(c.intro.max_reservations)
    }),
    range("intro.max_reservations_per_peer", 1, 1_024, |c| {
        n(c.intro.max_reservations_per_peer)
    }),
    // libp2p-relay puts "now + duration" in each reservation: bounded well inside the clock.
    range("intro.reservation_duration_secs", 60, DAY, |c| {
        c.intro.reservation_duration_secs
    }),
    range("intro.max_circuits", 1, 100_000, |c| {
        n(c.intro.max_circuits)
    }),
    range("intro.max_circuits_per_peer", 1, 1_024, |c| {
        n(c.intro.max_circuits_per_peer)
    }),
    // libp2p-relay sends the duration as 32 bits and panics past them.
    range("intro.circuit_duration_secs", 1, DAY, |c| {
        c.intro.circuit_duration_secs
    }),
    range("intro.circuit_bytes", 1, 1 << 40, |c| c.intro.circuit_bytes),
    range("intro.circuits_per_minute_per_peer", 1, 6_000, |c| {
        c.intro.circuits_per_minute_per_peer.into()
    }),
    range("intro.max_registrations", 1, 1_000_000, |c| {
        n(c.intro.max_registrations)
    }),
    range("intro.max_registrations_per_peer", 1, 1_024, |c| {
        n(c.intro.max_registrations_per_peer)
    }),
    // libp2p-rendezvous's own longest registration is 72 hours.
    range("intro.registration_min_ttl_secs", 1, 3 * DAY, |c| {
        c.intro.registration_min_ttl_secs
    }),
    range("intro.registration_max_ttl_secs", 1, 3 * DAY, |c| {
        c.intro.registration_max_ttl_secs
    }),
    range("intro.max_pending_per_ip", 1, 100_000, |c| {
        c.intro.max_pending_per_ip.into()
    }),
    range("intro.max_connections_per_ip", 1, 100_000, |c| {
        c.intro.max_connections_per_ip.into()
    }),
    range("tunnel.max_streams", 1, 65_536, |c| n(c.tunnel.max_streams)),
    range("tunnel.max_streams_per_peer", 1, 65_536, |c| {
        n(c.tunnel.max_streams_per_peer)
    }),
    range("tunnel.max_connections", 1, 65_536, |c| {
        n(c.tunnel.max_connections)
    }),
    range("tunnel.idle_timeout_secs", 1, WEEK, |c| {
        c.tunnel.idle_timeout_secs
    }),
    range("tunnel.direct_wait_ms", 0, MINUTE_MS, |c| {
        c.tunnel.direct_wait_ms
    }),
    range("metrics.max_connections", 1, 1_024, |c| {
        n(c.metrics.max_connections)
    }),
];

const fn range(key: &'static str, min: u64, max: u64, value: fn(&Config) -> u64) -> Range {
    Range {
        key,
        min,
        max,
        value,
    }
}

/// Fails on the first numeric key of `config` outside its range, naming it and the range.
pub(crate) fn check(config: &Config) -> Result<(), ConfigError> {
    for range in RANGES {
        let value = (range.value)(config);
        if !(range.min..=range.max).contains(&value) {
            return Err(invalid(
                range.key,
                format!(
                    "{value} is out of range: it must be from {} to {}",
                    range.min, range.max
                ),
            ));
        }
    }
    Ok(())
}
