//! The rule by which a budget of handshakes or connections is shared between sources: by
//! address group (IPv4 /24, IPv6 /48), then address (IPv4 address, IPv6 /64), then (for open
//! connections) how often the address opened connections lately, then age. Used by the
//! transports' admission of handshakes ([`super::admission`], which says why) and by an
//! introduction server's open connections ([`crate::intro::per_ip`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv6Addr},
    num::NonZeroUsize,
    time::Duration,
};

use libp2p::{Multiaddr, multiaddr::Protocol};
use lru::LruCache;
use tokio::time::Instant;

/// The source an incoming connection is counted under: its address (IPv6: its /64, which one
/// host gets whole) and its group (IPv4: /24, IPv6: /48, what one network gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source {
    /// The address, or the /64.
    pub(crate) address: IpAddr,
    /// The /24 or the /48.
    pub(crate) group: IpAddr,
}

impl Source {
    /// The source of a connection from `addr`; `None` for a relayed connection (it takes no
    /// socket of this node's) or an address without an IP.
    pub(crate) fn of(addr: &Multiaddr) -> Option<Self> {
        if addr.iter().any(|p| p == Protocol::P2pCircuit) {
            return None;
        }
        let v6 = |ip: Ipv6Addr, bits: u32| {
            let mask = !(u128::MAX >> bits);
            IpAddr::V6(Ipv6Addr::from(u128::from(ip) & mask))
        };
        let v4 = |ip: std::net::Ipv4Addr| Self {
            address: IpAddr::V4(ip),
            group: IpAddr::V4((u32::from(ip) & 0xffff_ff00).into()),
        };
        match addr.iter().next()? {
            Protocol::Ip4(ip) => Some(v4(ip)),
            Protocol::Ip6(ip) => Some(match ip.to_ipv4_mapped() {
                Some(ip) => v4(ip),
                None => Self {
                    address: v6(ip, 64),
                    group: v6(ip, 48),
                },
            }),
            _ => None,
        }
    }
}

/// Why [`FairShare::admit`] refused a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address holds as many as one address may.
    AddressLimit,
    /// The budget is full, and it ranks as high as the highest entry (see [`FairShare`]).
    Busiest,
}

/// How long the connections an address opened are counted in its rank.
const OPENS_WINDOW: Duration = Duration::from_secs(300);
/// Addresses whose openings are remembered, per entry of the budget, and at most (the one that
/// opened least recently is forgotten first; a flood from more addresses than this falls back
/// to age).
const OPENS_PER_ENTRY: usize = 16;
const OPENS_AT_MOST: usize = 65_536;

/// Entries (handshakes, connections) counted against a budget, oldest first, and how many each
/// source holds. A full budget refuses no one outright: a newcomer takes the place of the entry
/// ranked highest, by its group's count, then its address's, then, when made
/// [`FairShare::with_opens`], how many connections its address opened in the last
/// [`OPENS_WINDOW`], then age (oldest first); unless the newcomer ranks as high itself, in
/// which case it is the one refused.
#[derive(Debug)]
pub(crate) struct FairShare<K> {
    budget: usize,
    per_address: Option<u32>,
    /// By admission order; at most `budget` entries.
    pub(crate) entries: BTreeMap<u64, (Source, K)>,
    next: u64,
    /// Per address and per group; a source with none is removed.
    pub(crate) address_counts: HashMap<IpAddr, u32>,
    pub(crate) group_counts: HashMap<IpAddr, u32>,
    /// Connections each address opened (admitted or not) since the start of its window, when
    /// they rank; bounded by [`OPENS_PER_ENTRY`] times the budget, and [`OPENS_AT_MOST`].
    opens: Option<LruCache<IpAddr, (u32, Instant)>>,
}

impl<K> FairShare<K> {
    /// At most `budget` entries (at least 1), and `per_address` from one address.
    pub(crate) fn new(budget: usize, per_address: Option<u32>) -> Self {
        Self {
            budget,
            per_address,
            entries: BTreeMap::new(),
            next: 0,
            address_counts: HashMap::new(),
            group_counts: HashMap::new(),
            opens: None,
        }
    }

    /// Ranks entries of equal counts by the connections their address opened lately: for
    /// open connections, where addresses that open again what is closed should displace one
    /// another, not a peer that came once (by age alone that peer, newcomer or long held,
    /// would go after as many arrivals as the budget holds). Not for handshakes: a peer
    /// trying again within seconds, or many behind one address, would rank as a flood, and
    /// age there is the nearness of the timeout.
    pub(crate) fn with_opens(mut self) -> Self {
        let capacity = self
            .budget
            .saturating_mul(OPENS_PER_ENTRY)
            .clamp(1, OPENS_AT_MOST);
        self.opens = Some(LruCache::new(
            NonZeroUsize::new(capacity).expect("at least 1"),
        ));
        self
    }

    /// Are there as many entries as the budget allows?
    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= self.budget
    }

    /// How many entries one address may have, if it is limited below the budget.
    pub(crate) fn per_address(&self) -> Option<u32> {
        self.per_address
    }

    /// Would a newcomer from `source` take another's place, or be refused?
    pub(crate) fn contended(&self, source: Source) -> bool {
        self.is_full()
            || self
                .per_address
                .is_some_and(|limit| self.count(source).1 >= limit)
    }

    /// Entries of `source`'s group, and of its address.
    pub(crate) fn count(&self, source: Source) -> (u32, u32) {
        let of = |map: &HashMap<IpAddr, u32>, key| map.get(&key).copied().unwrap_or(0);
        (
            of(&self.group_counts, source.group),
            of(&self.address_counts, source.address),
        )
    }

    /// The rank of an entry from `source` (higher goes first), but for age.
    fn rank(&self, source: Source, now: Instant) -> (u32, u32, u32) {
        let (group, address) = self.count(source);
        let opens = match self.opens.as_ref().and_then(|o| o.peek(&source.address)) {
            Some((opens, since)) if now.duration_since(*since) < OPENS_WINDOW => *opens,
            _ => 0,
        };
        (group, address, opens)
    }

    /// Counts a connection opened from `address`.
    fn note_open(&mut self, address: IpAddr, now: Instant) {
        let Some(opens) = self.opens.as_mut() else {
            return;
        };
        let (opens, since) = opens.get_or_insert_mut(address, || (0, now));
        if now.duration_since(*since) >= OPENS_WINDOW {
            (*opens, *since) = (0, now);
        }
        *opens = opens.saturating_add(1);
    }

    fn add(&mut self, source: Source, by: i32) {
        for (map, key) in [
            (&mut self.address_counts, source.address),
            (&mut self.group_counts, source.group),
        ] {
            let count = map.entry(key).or_default();
            *count = count.saturating_add_signed(by);
            if *count == 0 {
                map.remove(&key);
            }
        }
    }

    /// Counts `key` from `source`; returns its ticket (for [`FairShare::remove`]) and the
    /// entry it displaced, if the budget was full.
    pub(crate) fn admit(&mut self, source: Source, key: K) -> Result<(u64, Option<K>), Refused> {
        let now = Instant::now();
        self.note_open(source.address, now);
        if self
            .per_address
            .is_some_and(|limit| self.count(source).1 >= limit)
        {
            return Err(Refused::AddressLimit);
        }
        let mut displaced = None;
        if self.is_full() {
            // The highest ranked, the oldest of them (for a handshake, the nearest to its
            // timeout), in one pass.
            let mut busiest: Option<((u32, u32, u32), u64)> = None;
            for (ticket, (entry, _)) in &self.entries {
                let rank = self.rank(*entry, now);
                if busiest.is_none_or(|(highest, _)| rank > highest) {
                    busiest = Some((rank, *ticket));
                }
            }
            let Some((highest, oldest)) = busiest else {
                return Err(Refused::Busiest);
            };
            if self.rank(source, now) >= highest {
                return Err(Refused::Busiest);
            }
            displaced = self.remove(oldest);
        }
        let ticket = self.next;
        self.next += 1;
        self.entries.insert(ticket, (source, key));
        self.add(source, 1);
        Ok((ticket, displaced))
    }

    /// Forgets the entry of `ticket`; returns it, if it was counted.
    pub(crate) fn remove(&mut self, ticket: u64) -> Option<K> {
        let (source, key) = self.entries.remove(&ticket)?;
        self.add(source, -1);
        Some(key)
    }

    /// Keeps the entries for which `keep` says so.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, (_, key))| !keep(key))
            .map(|(ticket, _)| *ticket)
            .collect();
        for ticket in gone {
            self.remove(ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_addresses_or_ipv6_64s_in_groups_of_ipv4_24s_or_ipv6_48s() {
        for (text, found) in [
            ("/ip4/192.0.2.7/tcp/4747", Some(("192.0.2.7", "192.0.2.0"))),
            (
                "/ip6/2001:db8:1:2:3:4:5:6/udp/1/quic-v1",
                Some(("2001:db8:1:2::", "2001:db8:1::")),
            ),
            (
                "/ip6/::ffff:192.0.2.7/tcp/1",
                Some(("192.0.2.7", "192.0.2.0")),
            ),
            (
                "/ip4/192.0.2.7/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
                None,
            ),
            ("/dns4/example.com/tcp/1", None),
        ] {
            let found = found.map(|(address, group)| Source {
                address: address.parse().unwrap(),
                group: group.parse().unwrap(),
            });
            assert_eq!(Source::of(&text.parse().unwrap()), found, "{text}");
        }
    }

    /// Addresses of one /24 that open again each connection closed, and a peer of that /24
    /// that came once: once the budget is full, they displace one another, never the peer
    /// (by age alone it would go after as many arrivals as the budget holds).
    #[test]
    fn addresses_opening_again_what_is_closed_go_before_a_peer_that_came_once() {
        let source =
            |text: &str| Source::of(&format!("/ip4/{text}/tcp/1").parse().unwrap()).unwrap();
        let mut share = FairShare::new(4, None).with_opens();
        let flood = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
        for address in flood {
            assert!(matches!(
                share.admit(source(address), address),
                Ok((_, None))
            ));
        }
        let Ok((_, Some(mut reopens))) = share.admit(source("10.0.0.100"), "peer") else {
            panic!("the peer from a quiet address is let in");
        };
        for _ in 0..100 {
            match share.admit(source(reopens), reopens) {
                Ok((_, Some(displaced))) => {
                    assert_ne!(displaced, "peer");
                    reopens = displaced;
                }
                other => panic!("{reopens} opened again: {other:?}"),
            }
        }
        assert!(share.entries.values().any(|(_, key)| *key == "peer"));
    }
}
