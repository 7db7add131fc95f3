//! DHT lookup capacity shared among the clients that wait on it, so that one client flooding
//! the daemon with made-up names (a "random subdomain" attack) cannot starve the others.
//!
//! A query that must wait on the network holds a [`Share`] of its client for as long as it
//! waits. A client may hold at most `capacity / (n + 1)` shares, n being the number of clients
//! holding some, itself included: alone it may take half, and there is always room for one
//! more client. Answers that need no lookup (local records, own names, the cache, the node's
//! own store) never take a share.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

/// Who a query is for, as far as sharing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requester {
    /// A DNS client: its IPv4 address, or the /64 prefix of its IPv6 address (one host
    /// usually holds a whole /64).
    Dns(IpAddr),
    /// This machine's user, through the control socket (`p2pdns resolve`, publishing).
    Operator,
}

impl Requester {
    /// The requester for a DNS client at `addr` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn dns(addr: IpAddr) -> Self {
        match addr.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self::Dns(IpAddr::V6(prefix.into()))
            }
            v4 => Self::Dns(v4),
        }
    }
}

/// Shares held, by requester; a requester holding none has no entry, so the map never holds
/// more entries than there are shares.
#[derive(Default)]
struct Held {
    by: HashMap<Requester, usize>,
    total: usize,
}

/// The shares of lookup capacity.
pub(crate) struct Shares {
    capacity: usize,
    held: Mutex<Held>,
}

/// One query's share: given back when dropped.
pub(crate) struct Share {
    shares: Arc<Shares>,
    requester: Requester,
}

impl Shares {
    /// `capacity` shares in all (at least 1).
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            held: Mutex::new(Held::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Each update is one counter and one map entry: a panic leaves nothing half-done.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A share for `requester`, unless all are taken or it holds its fair part already.
    pub(crate) fn take(self: &Arc<Self>, requester: Requester) -> Option<Share> {
        let mut held = self.lock();
        let mine = held.by.get(&requester).copied().unwrap_or(0);
        let clients = held.by.len() + usize::from(mine == 0);
        let fair = (self.capacity / (clients + 1)).max(1);
        if held.total >= self.capacity || mine >= fair {
            return None;
        }
        held.total += 1;
        *held.by.entry(requester).or_insert(0) += 1;
        Some(Share {
            shares: self.clone(),
            requester,
        })
    }

    /// Shares held by `requester` now.
    #[cfg(test)]
    fn held_by(&self, requester: Requester) -> usize {
        self.lock().by.get(&requester).copied().unwrap_or(0)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        held.total -= 1;
        if let Some(count) = held.by.get_mut(&self.requester) {
            *count -= 1;
            if *count == 0 {
                held.by.remove(&self.requester);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str) -> Requester {
        Requester::dns(ip.parse().unwrap())
    }

    #[test]
    fn a_flooding_client_leaves_room_for_the_others() {
        let shares = Shares::new(12);
        let flood = client("127.0.0.1");
        let taken: Vec<Share> = std::iter::from_fn(|| shares.take(flood)).collect();
        assert_eq!(taken.len(), 6, "alone, half");
        let other = client("127.0.0.2");
        let others: Vec<Share> = std::iter::from_fn(|| shares.take(other)).collect();
        assert_eq!(others.len(), 4, "a third with two clients");
        assert!(shares.take(flood).is_none(), "the flooder is past its part");
        let third = client("192.0.2.1");
        assert_eq!(shares.held_by(third), 0);
        let first = shares.take(third).expect("a newcomer always finds room");
        let second = shares.take(third).expect("and its part of what is left");
        assert!(shares.take(third).is_none(), "the capacity is used up");
        drop(taken);
        assert_eq!(shares.held_by(flood), 0);
        assert!(
            shares.take(flood).is_some(),
            "shares come back when dropped"
        );
        drop((first, second, others));
        let held = shares.lock();
        assert!(held.by.is_empty(), "no entry for clients holding nothing");
        assert_eq!(held.total, 0);
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        assert_eq!(client("2001:db8::1"), client("2001:db8::ffff:1"));
        assert_ne!(client("2001:db8::1"), client("2001:db8:0:1::1"));
        assert_eq!(client("::ffff:192.0.2.1"), client("192.0.2.1"));
    }
}
