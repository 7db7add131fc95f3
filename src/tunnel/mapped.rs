//! The client side's figures of each tunnelled name (what `p2pdns tunnels` shows), and
//! [`Tracked`], which counts one local connection in them from its accept to its end.
//!
//! A connection ends in many places (the serving peer cannot be reached, the wait for it runs
//! out, the peer refuses, the stream is cut, the local program closes, the listener is
//! dropped); the guard makes every one of them count once: `open` goes back down when it is
//! dropped, and an end that no code path recorded counts as a failure.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::{lock, wire::Counters};
use crate::p2p::ConnectionPath;

/// One tunnelled name as `p2pdns tunnels` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedName {
    /// The name, `site.p2p`.
    pub name: String,
    /// Its local address.
    pub address: Ipv4Addr,
    /// The peer serving it.
    pub peer: PeerId,
    /// The ports listened on.
    pub ports: Vec<u16>,
    /// The path of the last stream opened: straight to the peer or through a relay.
    pub path: Option<ConnectionPath>,
    /// The path of the connections open to the peer when the report was made: direct if any
    /// is, else relayed; `None` with none open (the peer stopped, or the network is down),
    /// when [`MappedName::path`] is history. Asked of the node by
    /// [`super::Tunnels::report_with_paths`] only; `None` in [`super::Tunnels::report`].
    #[serde(default)]
    pub connected: Option<ConnectionPath>,
    /// Connections open now.
    pub open: u64,
    /// Connections accepted since the name was mapped (those refused at
    /// `tunnel.max_connections` included).
    pub connections: u64,
    /// Connections that failed or were cut.
    pub failed: u64,
    /// Bytes sent to the peer, and received from it.
    pub sent: u64,
    /// Bytes received from the peer.
    pub received: u64,
    /// What went wrong last, if anything did.
    pub last_error: Option<String>,
    /// When it went wrong, in seconds since the Unix epoch.
    #[serde(default)]
    pub last_error_at: Option<u64>,
    /// Connections whose tunnel opened after the last error: when there are some, the error
    /// is history.
    #[serde(default)]
    pub opened_since_error: u64,
}

/// What went wrong last for a name, when, and how many tunnels opened after it.
#[derive(Debug, Clone)]
struct LastError {
    message: String,
    /// Seconds since the Unix epoch.
    at: u64,
    opened_since: u64,
}

/// The live figures of one tunnelled name, shared by its listeners and their connections.
#[derive(Debug)]
pub(crate) struct NameState {
    pub(crate) name: String,
    pub(crate) address: Ipv4Addr,
    pub(crate) peer: Mutex<PeerId>,
    pub(crate) path: Mutex<Option<ConnectionPath>>,
    pub(crate) bytes: Counters,
    open: AtomicU64,
    connections: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<LastError>>,
}

impl NameState {
    pub(crate) fn new(name: &str, address: Ipv4Addr, peer: PeerId) -> Self {
        Self {
            name: name.to_owned(),
            address,
            peer: Mutex::new(peer),
            path: Mutex::new(None),
            bytes: Counters::default(),
            open: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Makes `message` the last error, now, without counting a connection (a port that cannot
    /// be listened on); returns whether it differs from the last one (to be logged).
    pub(crate) fn note_error(&self, message: String) -> bool {
        let mut last = lock(&self.last_error);
        let new = last.as_ref().is_none_or(|e| e.message != message);
        *last = Some(LastError {
            message,
            at: crate::record::unix_now(),
            opened_since: 0,
        });
        new
    }

    /// The figures as `p2pdns tunnels` shows them, with the ports listened on.
    pub(crate) fn report(&self, ports: Vec<u16>) -> MappedName {
        let last = lock(&self.last_error).clone();
        let transfer = self.bytes.transfer();
        MappedName {
            name: self.name.clone(),
            address: self.address,
            peer: *lock(&self.peer),
            ports,
            path: *lock(&self.path),
            connected: None,
            open: self.open.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            sent: transfer.sent,
            received: transfer.received,
            last_error_at: last.as_ref().map(|e| e.at),
            opened_since_error: last.as_ref().map_or(0, |e| e.opened_since),
            last_error: last.map(|e| e.message),
        }
    }
}

/// What a connection that ended without an outcome of its own reads as: its task was stopped
/// (the name's record no longer lists the port, or the daemon is stopping).
const STOPPED: &str = "the tunnel was stopped before its end: the port is no longer listed for the \
                       name, or the daemon is stopping";

/// One local connection of a tunnelled name: counted open from its accept until it is
/// dropped, and ended once, by [`Tracked::fail`], [`Tracked::end`] or being dropped (a
/// failure).
pub(crate) struct Tracked {
    state: Arc<NameState>,
    /// The connections open through every name (`tunnel.max_connections`).
    all_open: Arc<AtomicUsize>,
    ended: bool,
}

impl Tracked {
    /// Counts a new connection of `state` (and one more in `all_open`).
    pub(crate) fn new(state: &Arc<NameState>, all_open: &Arc<AtomicUsize>) -> Self {
        state.connections.fetch_add(1, Ordering::Relaxed);
        state.open.fetch_add(1, Ordering::Relaxed);
        all_open.fetch_add(1, Ordering::Relaxed);
        Self {
            state: state.clone(),
            all_open: all_open.clone(),
            ended: false,
        }
    }

    /// The name's figures.
    pub(crate) fn state(&self) -> &Arc<NameState> {
        &self.state
    }

    /// The tunnel is open: an earlier error is history now.
    pub(crate) fn opened(&self) {
        if let Some(last) = lock(&self.state.last_error).as_mut() {
            last.opened_since += 1;
        }
    }

    /// The connection failed: counted, and `message` becomes the name's last error.
    pub(crate) fn fail(mut self, message: String) {
        self.failed(message);
    }

    /// The connection ended without a fault of the tunnel: a clean end, or the local program
    /// closed it.
    pub(crate) fn end(mut self) {
        self.ended = true;
    }

    fn failed(&mut self, message: String) {
        self.ended = true;
        self.state.failed.fetch_add(1, Ordering::Relaxed);
        self.state.note_error(message);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended {
            self.failed(STOPPED.to_owned());
        }
        self.state.open.fetch_sub(1, Ordering::Relaxed);
        self.all_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (Arc<NameState>, Arc<AtomicUsize>) {
        let state = NameState::new("site.p2p", Ipv4Addr::new(127, 77, 0, 5), PeerId::random());
        (Arc::new(state), Arc::new(AtomicUsize::new(0)))
    }

    #[test]
    fn every_end_of_a_connection_closes_it_once_and_counts_a_failure_once() {
        let (state, all) = state();
        let ended = Tracked::new(&state, &all);
        let failed = Tracked::new(&state, &all);
        // A task aborted with its listener ends without an outcome of its own.
        let aborted = Tracked::new(&state, &all);
        assert_eq!(state.report(vec![80]).open, 3);
        assert_eq!(all.load(Ordering::Relaxed), 3);
        ended.end();
        failed.fail("the peer refused".into());
        drop(aborted);
        let report = state.report(vec![80]);
        assert_eq!((report.open, report.connections, report.failed), (0, 3, 2));
        assert_eq!(all.load(Ordering::Relaxed), 0);
        assert_eq!(report.last_error.as_deref(), Some(STOPPED));
    }

    #[test]
    fn an_error_says_when_it_happened_and_becomes_history_once_tunnels_open_again() {
        let (state, all) = state();
        assert_eq!(state.report(Vec::new()).last_error_at, None);
        let before = crate::record::unix_now();
        Tracked::new(&state, &all).fail("the serving peer is not reachable".into());
        let report = state.report(Vec::new());
        assert!(report.last_error_at.is_some_and(|at| at >= before));
        assert_eq!(report.opened_since_error, 0);
        for _ in 0..2 {
            let ok = Tracked::new(&state, &all);
            ok.opened();
            ok.end();
        }
        let report = state.report(Vec::new());
        assert_eq!(
            report.last_error.as_deref(),
            Some("the serving peer is not reachable")
        );
        assert_eq!((report.opened_since_error, report.failed), (2, 1));
        // A new error is news again.
        Tracked::new(&state, &all).fail("the tunnel was cut".into());
        assert_eq!(state.report(Vec::new()).opened_since_error, 0);
    }

    #[test]
    fn an_older_report_without_the_error_time_still_reads() {
        let (state, _) = state();
        let mut json = serde_json::to_value(state.report(vec![80])).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("last_error_at");
        object.remove("opened_since_error");
        let read: MappedName = serde_json::from_value(json).unwrap();
        assert_eq!(read.opened_since_error, 0);
    }
}
