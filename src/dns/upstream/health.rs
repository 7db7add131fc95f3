//! How well one upstream is doing: its smoothed RTT (which sets its try waits), its failures in
//! a row, and its rests. An upstream that fails [`FAILURES_BEFORE_REST`] times in a row is
//! rested: the others are asked first until the rest ends.
//!
//! Rests back off. One spell of failures is one rest, however many tries of a flood time out in
//! it (unbound's `rtt_lost` likewise doubles the timeout a query started with, not the current
//! one, so that queries timing out together count once). A rest runs its course: answers that
//! come during it (mostly to tries sent before it began) are counted into the RTT, but do not
//! end it. The first answer after it ends brings the upstream back; one that fails again within
//! [`STEADY`] of coming back (or before any answer) rests twice as long as the time before, up
//! to [`MAX_REST`]; one that stays up for [`STEADY`] starts again from [`FIRST_REST`]. So an
//! upstream changes state at most twice per rest, and the rests of one that keeps flapping soon
//! last [`MAX_REST`], whatever the query rate (issue 15: under a flood a slow upstream went from
//! resting to answering and back every millisecond). dnsmasq likewise tries all its servers again only
//! every 50 queries or 20 s (its `FORWARD_TEST` and `FORWARD_TIME`), not at each query.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

/// Failures in a row after which an upstream is rested.
pub(super) const FAILURES_BEFORE_REST: u32 = 3;
/// The first rest of an upstream that was steady.
const FIRST_REST: Duration = Duration::from_secs(1);
/// Longest rest for an upstream that keeps failing.
pub(super) const MAX_REST: Duration = Duration::from_secs(30);
/// Doublings of [`FIRST_REST`] that reach [`MAX_REST`].
const MAX_DOUBLINGS: u32 = 5;
/// An upstream up for this long since its last rest is steady: its next rest is the first.
pub(super) const STEADY: Duration = Duration::from_secs(60);
/// Shortest per-try wait, whatever the measured RTT. An upstream of a stub is a recursive
/// resolver: its RTT, measured mostly on its cache hits, says little about a cache miss, which
/// takes it a recursion of often 100 to 300 ms. A try is not abandoned when its wait passes
/// (see module `tries`), so a short wait costs no answer, but each wait that passes sends the
/// question again (load on the upstreams) and counts as a timeout towards resting the upstream.
/// unbound starts from 376 ms for a server it has not measured; 400 ms keeps ordinary
/// recursions inside one try while a lost datagram or a dead upstream still costs well under
/// the 1 s that RFC 6298 section 2.4 gives TCP as its least retransmission timeout.
pub(super) const MIN_TRY_WAIT: Duration = Duration::from_millis(400);
/// Largest smoothed RTT kept, so one bad spell cannot push the wait past any use.
const MAX_SRTT_US: u32 = 5_000_000;
/// [`Health::back_at_ms`] of an upstream never rested.
const NEVER: u64 = u64::MAX;

/// How one upstream server is doing ([`super::UpstreamSet::health`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamHealth {
    /// The server as configured (`192.0.2.1:53`, `tls://...#name`).
    pub server: String,
    /// It is asked now: neither resting after failures nor sending our queries back.
    pub usable: bool,
    /// Its smoothed round-trip time, once an answer was timed.
    pub srtt: Option<Duration>,
}

impl super::UpstreamSet {
    /// How each server is doing now, in list order: whether it is asked (neither resting after
    /// failures nor sending our queries back) and its smoothed RTT once measured.
    pub fn health(&self) -> Vec<UpstreamHealth> {
        let now = self.now_ms();
        let measured = |us: u32| (us > 0).then(|| Duration::from_micros(us.into()));
        let list = self.snapshot();
        list.iter()
            .map(|u| UpstreamHealth {
                server: u.to_string(),
                usable: u.usable(now),
                srtt: measured(u.srtt_us()),
            })
            .collect()
    }
}

/// What was learned about one upstream. Updated with relaxed atomics by every query: each value
/// is a hint for ordering and timeouts, and a race costs at most one rest of the wrong length.
#[derive(Debug)]
pub(super) struct Health {
    /// Smoothed round-trip time in microseconds; 0 until the first answer.
    srtt_us: AtomicU32,
    failures: AtomicU32,
    /// Milliseconds (on the set's clock) before which the upstream is not tried.
    rest_until_ms: AtomicU64,
    /// Doublings of the latest rest: rests since the upstream was last steady, minus one.
    doublings: AtomicU32,
    /// When it last came back from a rest ([`NEVER`] if it was never rested).
    back_at_ms: AtomicU64,
    /// Rested, and not heard from since that rest ended.
    resting: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            srtt_us: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            rest_until_ms: AtomicU64::new(0),
            doublings: AtomicU32::new(0),
            back_at_ms: AtomicU64::new(NEVER),
            resting: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Smoothed RTT in microseconds; 0 until measured.
    pub(super) fn srtt_us(&self) -> u32 {
        self.srtt_us.load(Ordering::Relaxed)
    }

    /// Timeouts and network errors since the latest answer.
    pub(super) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// When the current (or latest) rest ends, in milliseconds on the set's clock.
    pub(super) fn rest_until_ms(&self) -> u64 {
        self.rest_until_ms.load(Ordering::Relaxed)
    }

    /// Is the upstream resting at `now_ms`?
    pub(super) fn rests_at(&self, now_ms: u64) -> bool {
        self.rest_until_ms() > now_ms
    }

    /// How long a try waits before the next try starts: four smoothed RTTs and 20 ms, at
    /// least [`MIN_TRY_WAIT`] (or `max` if less) and at most `max`; `max` until measured.
    pub(super) fn try_wait(&self, max: Duration) -> Duration {
        match self.srtt_us() {
            0 => max,
            srtt => (Duration::from_micros(u64::from(srtt) * 4) + Duration::from_millis(20))
                .clamp(MIN_TRY_WAIT.min(max), max),
        }
    }

    /// Counts an answer that took `rtt`, at `now_ms`: folds it into the smoothed RTT (weight
    /// 1/8, as TCP's SRTT in RFC 6298 section 2). Returns true when this answer brings the
    /// upstream back from a rest that is over.
    pub(super) fn record_answer(&self, rtt: Duration, now_ms: u64) -> bool {
        let rtt = u32::try_from(rtt.as_micros()).unwrap_or(MAX_SRTT_US).max(1);
        let old = self.srtt_us();
        let new = if old == 0 {
            rtt
        } else {
            (old / 8) * 7 + rtt / 8
        };
        self.srtt_us
            .store(new.clamp(1, MAX_SRTT_US), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        if self.rests_at(now_ms) || !self.resting.swap(false, Ordering::Relaxed) {
            return false;
        }
        self.back_at_ms.store(now_ms, Ordering::Relaxed);
        true
    }

    /// Counts a timeout or network error at `now_ms`; returns the rest it started, if it
    /// started one (see the module for how long).
    pub(super) fn record_failure(&self, now_ms: u64) -> Option<Duration> {
        let old = self.srtt_us();
        let penalized = if old == 0 {
            500_000
        } else {
            old.saturating_mul(2)
        };
        self.srtt_us
            .store(penalized.min(MAX_SRTT_US), Ordering::Relaxed);
        let failures = self
            .failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some(f.saturating_add(1))
            })
            .unwrap_or_else(|f| f)
            .saturating_add(1);
        let until = self.rest_until_ms();
        if failures < FAILURES_BEFORE_REST || until > now_ms {
            return None;
        }
        let doublings = self.next_doublings(now_ms);
        let rest = (FIRST_REST * (1 << doublings)).min(MAX_REST);
        let wakes = now_ms.saturating_add(u64::try_from(rest.as_millis()).unwrap_or(u64::MAX));
        // Of the tries that fail at once, one starts the rest.
        self.rest_until_ms
            .compare_exchange(until, wakes, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        self.doublings.store(doublings, Ordering::Relaxed);
        self.resting.store(true, Ordering::Relaxed);
        Some(rest)
    }

    /// Doublings of the rest about to start at `now_ms`: none for a steady upstream, one more
    /// than the latest rest's for one that fails again soon after it came back, or before it
    /// came back at all.
    fn next_doublings(&self, now_ms: u64) -> u32 {
        let back_at = self.back_at_ms.load(Ordering::Relaxed);
        let steady_ms = u64::try_from(STEADY.as_millis()).unwrap_or(u64::MAX);
        let steady = !self.resting.load(Ordering::Relaxed)
            && (back_at == NEVER || now_ms.saturating_sub(back_at) >= steady_ms);
        if steady {
            return 0;
        }
        (self.doublings.load(Ordering::Relaxed) + 1).min(MAX_DOUBLINGS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    /// Fails until a rest starts, at `now`; returns its length.
    fn rest_at(health: &Health, now: u64) -> Duration {
        (0..FAILURES_BEFORE_REST)
            .find_map(|_| health.record_failure(now))
            .expect("enough failures in a row rest the upstream")
    }

    #[test]
    fn a_spell_of_failures_is_one_rest_and_answers_during_it_do_not_end_it() {
        let health = Health::default();
        assert!(health.record_failure(0).is_none());
        assert!(health.record_failure(0).is_none());
        assert_eq!(health.record_failure(0), Some(FIRST_REST));
        // A flood's other tries fail in the same spell: no new rest, no longer one.
        assert!((0..1000).all(|_| health.record_failure(10).is_none()));
        assert_eq!(health.rest_until_ms(), S);
        // Late answers to tries sent before the rest: counted, but the rest runs on.
        assert!(!health.record_answer(Duration::from_millis(900), 500));
        assert!(health.rests_at(999) && !health.rests_at(S));
        assert!(health.record_answer(Duration::from_millis(900), S), "back");
        assert!(
            !health.record_answer(Duration::from_millis(900), S + 1),
            "back once"
        );
    }

    #[test]
    fn rests_double_while_it_keeps_failing_and_start_over_once_it_is_steady() {
        let health = Health::default();
        let mut now = 0;
        let mut rests = Vec::new();
        for _ in 0..8 {
            let rest = rest_at(&health, now);
            rests.push(rest.as_secs());
            now += u64::try_from(rest.as_millis()).unwrap();
            // Back at the end of its rest, failing again a moment later.
            assert!(health.record_answer(Duration::from_millis(20), now));
            now += 5;
        }
        assert_eq!(rests, [1, 2, 4, 8, 16, 30, 30, 30]);
        // Failing again before any answer came, after the rest: longer still (capped).
        let rest = rest_at(&health, now);
        now += u64::try_from(rest.as_millis()).unwrap();
        assert_eq!(health.record_failure(now), Some(MAX_REST), "no answer came");
        now += 30 * S;
        assert!(health.record_answer(Duration::from_millis(20), now));
        // Up for STEADY: the next rest is a first one.
        now += 60 * S;
        assert_eq!(rest_at(&health, now), FIRST_REST);
    }

    #[test]
    fn try_wait_follows_the_rtt() {
        let health = Health::default();
        let max = Duration::from_secs(1);
        assert_eq!(health.try_wait(max), max);
        health.record_answer(Duration::from_millis(150), 0);
        assert_eq!(health.try_wait(max), Duration::from_millis(620));
        health.record_answer(Duration::from_micros(10), 0);
        assert!(health.try_wait(max) >= MIN_TRY_WAIT);
    }
}
