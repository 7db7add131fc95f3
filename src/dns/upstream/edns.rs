//! EDNS with upstreams that do not speak it (RFC 6891 section 7). Every upstream query carries
//! an OPT record (version 0, our UDP size, the client's DO bit) and nothing else the daemon
//! adds. An upstream that answers it with FORMERR, NOTIMP or SERVFAIL *without* an OPT record
//! is asked again at once without EDNS; if that query gets another RCODE the upstream is taken
//! not to speak EDNS and is asked without it for [`REFUSED_MEMORY`]. An upstream that never
//! answered an EDNS query with OPT and lets one time out is asked the next time without EDNS;
//! if that is answered, it drops EDNS queries and is asked without EDNS for
//! [`DROPPED_MEMORY`]. (The DNS Flag Day 2019 resolvers stopped reading timeouts as a lack of
//! EDNS support on the way to authoritative servers; a stub forwarding to the one resolver a
//! network gives it has no other server to turn to, which is why systemd-resolved still
//! degrades on timeouts, and why this does so only for a server that never showed EDNS.)
//! Without EDNS answers are limited to 512 octets over UDP: larger ones come back truncated
//! and are asked again over TCP like any other.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use hickory_proto::op::{Message, ResponseCode};
use tokio::time::Instant;
use tracing::{debug, info};

use super::{Upstream, UpstreamSet};
use crate::dns::exchange::{ExchangeError, Exchanged, exchange};

/// How long an upstream that refused EDNS explicitly is asked without it: unbound keeps the
/// same finding in its infrastructure cache for `infra-host-ttl`, 900 s by default.
const REFUSED_MEMORY: Duration = Duration::from_secs(900);
/// How long an upstream that dropped an EDNS query and answered one without EDNS is asked
/// without it: a timeout is weaker evidence (a lost datagram looks the same), so this is
/// systemd-resolved's shortest grace period before it tries a fuller feature set again.
const DROPPED_MEMORY: Duration = Duration::from_secs(300);

/// What is known of one upstream's EDNS support.
#[derive(Debug, Default)]
pub(super) struct EdnsMemory {
    /// It answered an EDNS query with an OPT record: a timeout is never blamed on EDNS.
    seen: AtomicBool,
    /// An EDNS query timed out before EDNS was seen: the next query goes without, to tell a
    /// server that drops EDNS queries from one that is down.
    suspect: AtomicBool,
    /// Queries go without EDNS until then (milliseconds on the set's clock).
    plain_until_ms: AtomicU64,
    /// The fallback was logged at INFO once; later ones go to DEBUG.
    logged: AtomicBool,
}

impl EdnsMemory {
    /// Should the next query carry an OPT record?
    fn use_edns(&self, now_ms: u64) -> bool {
        !self.suspect.load(Ordering::Relaxed)
            && self.plain_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Remembers for `memory` that the upstream at `addr` is to be asked without EDNS.
    fn fall_back(&self, addr: std::net::SocketAddr, now_ms: u64, memory: Duration, why: &str) {
        let until = now_ms.saturating_add(u64::try_from(memory.as_millis()).unwrap_or(u64::MAX));
        self.plain_until_ms.store(until, Ordering::Relaxed);
        self.suspect.store(false, Ordering::Relaxed);
        let minutes = memory.as_secs() / 60;
        if self.logged.swap(true, Ordering::Relaxed) {
            debug!(upstream = %addr, why, minutes, "asking the upstream without EDNS again");
        } else {
            info!(upstream = %addr, why, minutes, "upstream does not take EDNS queries; asking it without EDNS for a while");
        }
    }
}

/// Did this answer to an EDNS query say that the server does not speak EDNS (RFC 6891
/// section 7: a responder without EDNS support answers FORMERR without OPT; NOTIMP and
/// SERVFAIL without OPT come from older ones)?
fn refuses_edns(answer: &Exchanged) -> bool {
    answer.message.edns.is_none()
        && matches!(
            answer.message.metadata.response_code,
            ResponseCode::FormErr | ResponseCode::NotImp | ResponseCode::ServFail
        )
}

impl UpstreamSet {
    /// Asks `upstream` the question that `query` builds (with an OPT record when given true),
    /// waiting up to `max_wait` for each exchange; with EDNS or without as the upstream takes
    /// it (see the module), counting answers and failures into its health. A malformed answer
    /// leaves its health as it was: the server is up.
    ///
    /// # Errors
    /// [`ExchangeError`], as [`exchange`] gives it.
    pub async fn ask(
        &self,
        upstream: &Upstream,
        query: impl Fn(bool) -> Message,
        max_wait: Duration,
    ) -> Result<Exchanged, ExchangeError> {
        let now = self.now_ms();
        let with_edns = upstream.edns.use_edns(now);
        let first = self.try_once(upstream, &query(with_edns), max_wait).await;
        let memory = &upstream.edns;
        let answer = match &first {
            Ok(answer) => answer,
            Err(ExchangeError::Timeout) if with_edns => {
                if !memory.seen.load(Ordering::Relaxed) {
                    memory.suspect.store(true, Ordering::Relaxed);
                }
                return first;
            }
            Err(ExchangeError::Timeout) => {
                // Without EDNS no better: it is down, not picky about EDNS.
                memory.suspect.store(false, Ordering::Relaxed);
                return first;
            }
            Err(_) => return first,
        };
        if !with_edns {
            if memory.suspect.load(Ordering::Relaxed) {
                let why = "EDNS query dropped, plain query answered";
                memory.fall_back(upstream.addr, now, DROPPED_MEMORY, why);
            }
            return first;
        }
        if answer.message.edns.is_some() {
            memory.seen.store(true, Ordering::Relaxed);
            memory.suspect.store(false, Ordering::Relaxed);
            return first;
        }
        if !refuses_edns(answer) {
            return first;
        }
        let refused = answer.message.metadata.response_code;
        let plain = self.try_once(upstream, &query(false), max_wait).await;
        match plain {
            Ok(plain) if plain.message.metadata.response_code != refused => {
                let why = "EDNS query answered without OPT";
                memory.fall_back(upstream.addr, now, REFUSED_MEMORY, why);
                Ok(plain)
            }
            Ok(plain) => Ok(plain),
            // The first answer says more than a failed retry.
            Err(_) => first,
        }
    }

    /// One exchange with `upstream`, its outcome counted into the upstream's health.
    async fn try_once(
        &self,
        upstream: &Upstream,
        query: &Message,
        max_wait: Duration,
    ) -> Result<Exchanged, ExchangeError> {
        let wait = upstream.try_wait(max_wait);
        let started = Instant::now();
        let result = exchange(upstream.addr, query, wait, max_wait).await;
        match &result {
            Ok(_) => upstream.record_answer(started.elapsed()),
            Err(ExchangeError::Timeout | ExchangeError::Io(_)) => {
                upstream.record_failure(self.now_ms());
                if upstream.probe.is_due() {
                    self.probes_due.notify_one();
                }
            }
            Err(ExchangeError::Malformed(_) | ExchangeError::Encode) => {}
        }
        result
    }
}
