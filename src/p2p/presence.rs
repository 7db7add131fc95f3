//! Whether the node has peers: one line when it loses its last one after having had some, and
//! one when it has peers again; quiet when its link flaps.

use std::time::Duration;

use libp2p::swarm::SwarmEvent;
use tokio::time::Instant;
use tracing::{info, warn};

use super::behaviour::NodeEvent;

/// The shortest time between two "no peer left" lines: a node on a flaky link loses its peers
/// and finds them again and again, and the log should say so once in a while, not each time.
const QUIET: Duration = Duration::from_secs(600);

/// A change the log tells.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// The last peer went.
    Alone,
    /// Peers again, after this long without any.
    Back(Duration),
}

/// Whether the node has had peers, lost them, and said so.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    had_peers: bool,
    /// Since when the node has had no peer (after having had some).
    alone_since: Option<Instant>,
    /// The "no peer left" line of this time alone was logged: "peers again" follows it.
    told: bool,
    /// When the last "no peer left" line was logged.
    last_told: Option<Instant>,
}

impl Presence {
    /// After a connection opened or closed, with `peers` connected now: logs the node's loss of
    /// its last peer, and its first peer after that.
    pub(crate) fn on_event(&mut self, event: &NodeEvent, peers: usize) {
        if !matches!(
            event,
            SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. }
        ) {
            return;
        }
        match self.update(peers, Instant::now()) {
            Some(Change::Alone) => warn!(
                "this node has no peer left: .p2p names cannot be looked up, published or \
                 reached until one comes back (it dials its bootstrap peers again)"
            ),
            Some(Change::Back(after)) => info!(
                "this node has peers again, after {} s without any",
                after.as_secs()
            ),
            None => {}
        }
    }

    fn update(&mut self, peers: usize, now: Instant) -> Option<Change> {
        if peers > 0 {
            self.had_peers = true;
            let since = self.alone_since.take()?;
            return std::mem::take(&mut self.told).then(|| Change::Back(now - since));
        }
        if !self.had_peers || self.alone_since.is_some() {
            return None;
        }
        self.alone_since = Some(now);
        if self.last_told.is_some_and(|at| now - at < QUIET) {
            return None;
        }
        self.last_told = Some(now);
        self.told = true;
        Some(Change::Alone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_every_peer_is_told_once_with_its_end_and_quietly_when_it_flaps() {
        let mut presence = Presence::default();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        // A node that never had a peer (still starting) is not told alone.
        assert_eq!(presence.update(0, at(0)), None);
        assert_eq!(presence.update(1, at(1)), None);
        assert_eq!(presence.update(2, at(2)), None);
        assert_eq!(presence.update(0, at(10)), Some(Change::Alone));
        assert_eq!(presence.update(0, at(11)), None, "once per time alone");
        assert_eq!(
            presence.update(1, at(40)),
            Some(Change::Back(Duration::from_secs(30)))
        );
        // Lost again within the quiet time: nothing, neither the loss nor the return.
        assert_eq!(presence.update(0, at(50)), None);
        assert_eq!(presence.update(1, at(55)), None);
        // Once the quiet time is over, a loss is told again.
        assert_eq!(presence.update(0, at(10 + 600)), Some(Change::Alone));
        assert_eq!(
            presence.update(3, at(10 + 605)),
            Some(Change::Back(Duration::from_secs(5)))
        );
    }
}
