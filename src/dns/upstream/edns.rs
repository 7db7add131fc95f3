//! EDNS with upstreams that do not speak it (RFC 6891 section 7). Every upstream query carries
//! an OPT record (version 0, our UDP size, the client's DO bit) and nothing else the daemon
//! adds, unless the upstream is remembered as one to ask without EDNS.
//!
//! What a question's tries ([`super::tries`]) do: an upstream that answers an EDNS query with
//! FORMERR, NOTIMP or SERVFAIL *without* an OPT record is asked that question again at once
//! without EDNS, and the plain answer serves the question. An upstream that never answered an
//! EDNS query with OPT and lets one go unanswered within its try wait is asked the question's
//! next try without EDNS (the EDNS try keeps listening).
//!
//! What is remembered ([`EdnsMemory`]): one name proves little. An upstream may choke on one
//! name only (a bug in one zone's path, a middlebox that minds one answer's size), and turning
//! EDNS off for all names then costs every DO=1 client its RRSIGs. So a fallback is evidence
//! (a strike) only when the plain query then got another answer, and it is remembered for
//! the upstream only on a second strike for *another* name with no EDNS answer carrying OPT in
//! between (any such answer wipes a strike: the upstream speaks EDNS, and the name was the
//! trouble). Timeouts alone are never evidence (DNS Flag Day 2019): a timeout counts only
//! with the plain try of the same question answered, and only for an upstream never seen to
//! answer with OPT. Confirmed, the upstream is asked without EDNS for [`REFUSED_MEMORY`]
//! after explicit refusals and for [`DROPPED_MEMORY`] after dropped queries. Without EDNS,
//! answers are limited to 512 octets over UDP: larger ones come back truncated and are asked
//! again over TCP like any other.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::LowerName,
};
use tracing::{debug, info};

/// How long an upstream that refused EDNS explicitly is asked without it: unbound keeps the
/// same finding in its infrastructure cache for `infra-host-ttl`, 900 s by default.
const REFUSED_MEMORY: Duration = Duration::from_secs(900);
/// How long an upstream that dropped an EDNS query and answered one without EDNS is asked
/// without it: a timeout is weaker evidence (a lost datagram looks the same), so this is
/// systemd-resolved's shortest grace period before it tries a fuller feature set again.
const DROPPED_MEMORY: Duration = Duration::from_secs(300);

/// What showed, for one question, that an upstream may not take EDNS queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evidence {
    /// It answered the EDNS query FORMERR, NOTIMP or SERVFAIL without OPT, and the plain query
    /// otherwise.
    Refused,
    /// It let the EDNS query go unanswered within its wait, never having answered one with
    /// OPT, and answered the plain query.
    Dropped,
}

impl Evidence {
    fn memory(self) -> Duration {
        match self {
            Self::Refused => REFUSED_MEMORY,
            Self::Dropped => DROPPED_MEMORY,
        }
    }

    fn why(self) -> &'static str {
        match self {
            Self::Refused => "EDNS queries answered without OPT",
            Self::Dropped => "EDNS queries dropped, plain queries answered",
        }
    }
}

/// What is known of one upstream's EDNS support.
#[derive(Debug, Default)]
pub(super) struct EdnsMemory {
    /// It answered an EDNS query with an OPT record: a timeout is never blamed on EDNS.
    seen: AtomicBool,
    /// The (hashed) name of the latest question that struck against EDNS, since the latest
    /// answer with OPT; 0 for none.
    strike: AtomicU64,
    /// Queries go without EDNS until then (milliseconds on the set's clock).
    plain_until_ms: AtomicU64,
    /// The fallback was logged at INFO once; later ones go to DEBUG.
    logged: AtomicBool,
}

impl EdnsMemory {
    /// Should a query carry an OPT record, as far as the upstream is concerned?
    pub(super) fn use_edns(&self, now_ms: u64) -> bool {
        self.plain_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Has it ever answered an EDNS query with OPT?
    pub(super) fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }

    /// An answer to an EDNS query came with OPT: the upstream speaks EDNS, and a strike
    /// before was the trouble of that name alone.
    pub(super) fn saw_opt(&self) {
        self.seen.store(true, Ordering::Relaxed);
        self.strike.store(0, Ordering::Relaxed);
    }

    /// Counts `evidence` against the upstream at `addr` from the question for `qname`;
    /// returns true when it confirms a strike for another name, and the upstream is asked
    /// without EDNS from `now_ms` on (for the evidence's memory).
    pub(super) fn strike(
        &self,
        addr: SocketAddr,
        qname: &LowerName,
        now_ms: u64,
        evidence: Evidence,
    ) -> bool {
        let name = name_key(qname);
        let before = self.strike.swap(name, Ordering::Relaxed);
        if before == 0 || before == name {
            debug!(upstream = %addr, name = %qname, why = evidence.why(), "EDNS failed for one name; asked without it, not yet remembered");
            return false;
        }
        self.strike.store(0, Ordering::Relaxed);
        self.fall_back(addr, now_ms, evidence);
        true
    }

    /// Remembers that the upstream at `addr` is to be asked without EDNS.
    fn fall_back(&self, addr: SocketAddr, now_ms: u64, evidence: Evidence) {
        let memory = evidence.memory();
        let until = now_ms.saturating_add(u64::try_from(memory.as_millis()).unwrap_or(u64::MAX));
        self.plain_until_ms.store(until, Ordering::Relaxed);
        let (why, minutes) = (evidence.why(), memory.as_secs() / 60);
        if self.logged.swap(true, Ordering::Relaxed) {
            debug!(upstream = %addr, why, minutes, "asking the upstream without EDNS again");
        } else {
            info!(upstream = %addr, why, minutes, "upstream does not take EDNS queries; asking it without EDNS for a while");
        }
    }
}

/// A non-zero key for a question name (lower case already), to tell two names apart.
fn name_key(qname: &LowerName) -> u64 {
    let mut hasher = DefaultHasher::new();
    qname.hash(&mut hasher);
    hasher.finish().max(1)
}

/// Did this answer to an EDNS query say that the server does not speak EDNS (RFC 6891
/// section 7: a responder without EDNS support answers FORMERR without OPT; NOTIMP and
/// SERVFAIL without OPT come from older ones)?
pub(super) fn refuses_edns(answer: &Message) -> bool {
    answer.edns.is_none()
        && matches!(
            answer.metadata.response_code,
            ResponseCode::FormErr | ResponseCode::NotImp | ResponseCode::ServFail
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn name(text: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(text).unwrap())
    }

    #[test]
    fn edns_is_turned_off_only_by_two_names_in_a_row() {
        let memory = EdnsMemory::default();
        let addr: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let (bug, other) = (name("bug.example."), name("other.example."));
        assert!(!memory.strike(addr, &bug, 0, Evidence::Refused));
        assert!(
            !memory.strike(addr, &bug, 0, Evidence::Refused),
            "the same name again"
        );
        memory.saw_opt();
        assert!(
            !memory.strike(addr, &other, 0, Evidence::Refused),
            "an answer with OPT came between the two"
        );
        assert!(memory.use_edns(0));
        assert!(memory.strike(addr, &bug, 0, Evidence::Refused));
        assert!(!memory.use_edns(0));
        let memory_ms = u64::try_from(REFUSED_MEMORY.as_millis()).unwrap();
        assert!(!memory.use_edns(memory_ms - 1));
        assert!(memory.use_edns(memory_ms), "remembered for a while only");
        // Dropped queries are remembered for less.
        let dropped = EdnsMemory::default();
        dropped.strike(addr, &bug, 0, Evidence::Dropped);
        dropped.strike(addr, &other, 0, Evidence::Dropped);
        let dropped_ms = u64::try_from(DROPPED_MEMORY.as_millis()).unwrap();
        assert!(!dropped.use_edns(dropped_ms - 1) && dropped.use_edns(dropped_ms));
    }
}
