//! Forwarding loops: an upstream that sends our queries back to this daemon (a relay or NAT in
//! front of it, a router told to use it, another p2pdns that uses it). In a loop every
//! forwarded question waits on itself (each daemon joins the query it already has in flight)
//! until it times out. As dnsmasq's `--dns-loop-detect` does, an upstream is probed with a
//! query for a unique name, and the probe arriving here names the upstream as a loop; unlike
//! dnsmasq, only an upstream that gives reason to is probed ([`PROBE_AFTER_FAILURES`] failures
//! in a row, which is how a loop shows), so healthy upstreams never see a probe and nothing is
//! added to the queries they do see. An upstream found looping is not used; it is probed again
//! every [`LOOP_RECHECK`], and used again once a probe is answered without coming back.
//!
//! A probe is a plain query (no EDNS) for TXT at `<16 hex digits>.p2pdns-loop-probe.`: random,
//! so that no cache on the way answers it, and under a top-level domain that does not exist
//! rather than a special-use one (`.test`, `.invalid`), which a resolver on the way may answer
//! itself instead of forwarding.
//!
//! What cannot be detected: a loop through a hop that does not forward the probe (one that
//! answers unknown top-level domains itself, or forwards to us only some zones, as split DNS
//! does: the loop is then for those zones alone), or that changes the name; a loop on TCP
//! only; a loop that causes no failures (it then costs nothing but the hops' time).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{LowerName, Name, RecordType},
};
use tokio::task::JoinSet;
use tracing::debug;

use super::{Upstream, UpstreamSet};
use crate::dns::exchange::exchange;

/// Failures in a row (timeouts, network errors) after which an upstream is probed.
pub(super) const PROBE_AFTER_FAILURES: u32 = 2;
/// How often an upstream found looping is probed again.
pub(super) const LOOP_RECHECK: Duration = Duration::from_secs(300);
/// Shortest time between two probes of one upstream, in milliseconds.
const PROBE_GAP_MS: u64 = 10_000;
/// The (non-existent) top-level domain of probe names.
const PROBE_ZONE: &str = "p2pdns-loop-probe.";

/// The loop probes of one upstream.
#[derive(Debug, Default)]
pub(super) struct ProbeState {
    /// The random label of the latest probe (0: none sent yet).
    label: AtomicU64,
    /// The latest probe came back to us.
    returned: AtomicBool,
    /// A probe is wanted.
    due: AtomicBool,
    /// When the latest probe was sent (milliseconds on the set's clock).
    sent_ms: AtomicU64,
}

impl ProbeState {
    /// Asks for a probe of this upstream.
    pub(super) fn request(&self) {
        self.due.store(true, Ordering::Relaxed);
    }

    /// Is a probe wanted?
    pub(super) fn is_due(&self) -> bool {
        self.due.load(Ordering::Relaxed)
    }

    /// Takes the request if a probe may be sent now, and records it as sent.
    fn take_due(&self, now_ms: u64) -> bool {
        let recent = self.label.load(Ordering::Relaxed) != 0
            && now_ms < self.sent_ms.load(Ordering::Relaxed) + PROBE_GAP_MS;
        if recent || !self.due.swap(false, Ordering::Relaxed) {
            return false;
        }
        self.sent_ms.store(now_ms, Ordering::Relaxed);
        true
    }
}

impl UpstreamSet {
    /// Is `qname` one of our loop probes come back? Then the upstream it was sent to forwards
    /// our queries to us: it is marked (logged once) and no longer used. Costs a look at the
    /// name's label count for any other query.
    pub fn detect_loop(&self, qname: &LowerName) -> bool {
        let Some(label) = probe_label(qname) else {
            return false;
        };
        let list = self.snapshot();
        let Some(upstream) = list
            .iter()
            .find(|u| u.probe.label.load(Ordering::Relaxed) == label)
        else {
            return false;
        };
        upstream.probe.returned.store(true, Ordering::Relaxed);
        upstream.mark_looping();
        true
    }

    /// Asks for a probe of every upstream marked looping, to notice a loop that is gone.
    pub(super) fn recheck_loops(&self) {
        for upstream in self.snapshot().iter().filter(|u| u.is_looping()) {
            upstream.probe.request();
        }
    }
}

/// Starts the probes that are due into `probes`, each waiting up to `wait` for its answer.
pub(super) fn start_probes(set: &UpstreamSet, probes: &mut JoinSet<()>, wait: Duration) {
    let now = set.now_ms();
    for upstream in set.snapshot().iter() {
        if upstream.probe.take_due(now) {
            probes.spawn(probe(upstream.clone(), wait));
        }
    }
}

/// Sends one probe to `upstream`. An answer from elsewhere (NOERROR or NXDOMAIN, the probe
/// not come back) clears a loop mark.
async fn probe(upstream: Arc<Upstream>, wait: Duration) {
    let label = loop {
        let label: u64 = rand::random();
        if label != 0 {
            break label;
        }
    };
    upstream.probe.returned.store(false, Ordering::Relaxed);
    upstream.probe.label.store(label, Ordering::Relaxed);
    let query = probe_query(label);
    debug!(upstream = %upstream.addr, name = %query.queries[0].name(), "loop probe");
    let Ok(answer) = exchange(upstream.addr, &query, wait, wait).await else {
        return;
    };
    let answered = matches!(
        answer.message.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    );
    if answered && !upstream.probe.returned.load(Ordering::Relaxed) {
        upstream.clear_looping();
    }
}

/// The probe with `label`: a plain recursive query for TXT at `<label>.p2pdns-loop-probe.`.
fn probe_query(label: u64) -> Message {
    let name = Name::from_ascii(format!("{label:016x}.{PROBE_ZONE}"))
        .expect("16 hex digits and a fixed label make a valid name");
    let mut query = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, RecordType::TXT));
    query
}

/// The label of a probe name, if `qname` is one.
fn probe_label(qname: &LowerName) -> Option<u64> {
    if qname.num_labels() != 2 {
        return None;
    }
    let text = qname.to_string();
    let (label, zone) = text.split_once('.')?;
    if zone != PROBE_ZONE || label.len() != 16 {
        return None;
    }
    u64::from_str_radix(label, 16).ok().filter(|&l| l != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names_are_recognized_and_nothing_else() {
        let query = probe_query(0x0123_4567_89ab_cdef);
        let name = LowerName::new(query.queries[0].name());
        assert_eq!(name.to_string(), "0123456789abcdef.p2pdns-loop-probe.");
        assert_eq!(probe_label(&name), Some(0x0123_4567_89ab_cdef));
        assert!(query.edns.is_none(), "a probe is a plain query");
        for other in [
            "www.example.",
            "0123456789abcdef.example.",
            "x.0123456789abcdef.p2pdns-loop-probe.",
            "0123456789abcdeg.p2pdns-loop-probe.",
            "0000000000000000.p2pdns-loop-probe.",
        ] {
            let name = LowerName::new(&Name::from_ascii(other).unwrap());
            assert_eq!(probe_label(&name), None, "{other}");
        }
    }

    #[test]
    fn a_returned_probe_marks_its_upstream_only() {
        let set = UpstreamSet::new(&[
            "192.0.2.1:53".parse().unwrap(),
            "192.0.2.2:53".parse().unwrap(),
        ]);
        let list = set.snapshot();
        list[1].probe.label.store(42, Ordering::Relaxed);
        let name = LowerName::new(probe_query(42).queries[0].name());
        assert!(set.detect_loop(&name));
        assert!(!list[0].is_looping() && list[1].is_looping());
        assert_eq!(set.order(&list), vec![0], "the looping one is not asked");
        let stranger = LowerName::new(probe_query(43).queries[0].name());
        assert!(!set.detect_loop(&stranger), "another daemon's probe passes");
    }

    #[test]
    fn probes_are_spaced() {
        let state = ProbeState::default();
        assert!(!state.take_due(0), "none asked for");
        state.request();
        assert!(state.take_due(0));
        state.label.store(7, Ordering::Relaxed);
        state.request();
        assert!(!state.take_due(PROBE_GAP_MS - 1), "too soon after the last");
        assert!(state.take_due(PROBE_GAP_MS), "the request waited");
    }
}
