//! Log lines that a remote client can cause, bounded in rate. Each kind of event logs at most
//! [`BURST`] lines per [`WINDOW`]; the rest are counted, and the count is logged in one line
//! per kind once the window is over ("suppressed K similar messages"). A client sending junk
//! as fast as it can thus adds at most `BURST + 1` lines a minute per kind to the log. The
//! summary of a window that no later event rolls is logged by [`report_suppressed`], which
//! sleeps without a timer while nothing is suppressed (an idle daemon must not wake up for it).

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Lines logged per kind of event and window.
pub const BURST: u32 = 10;
/// The window over which [`BURST`] applies.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Where window starts are counted from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Woken each time a window suppresses its first event: [`report_suppressed`] then has a
/// summary to log when that window is over.
static SUPPRESSING: Notify = Notify::const_new();

/// The rate bound of one kind of event; a `static` beside the code that logs it, or a field of
/// the value that logs it.
#[derive(Debug)]
pub struct LogLimit {
    /// Names the kind in the summary line.
    kind: &'static str,
    /// Milliseconds from [`EPOCH`] to the start of the current window.
    window_start: AtomicU64,
    /// Events in the current window, logged or not.
    seen: AtomicU32,
    /// Events not logged since the last summary.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// The bound of the events called `kind` in their summary line.
    pub const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            window_start: AtomicU64::new(0),
            seen: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Counts one event; true if it may be logged (it is among the first [`BURST`] of its
    /// window). Lock-free: called from any task, as often as a client makes it happen.
    pub fn admit(&self) -> bool {
        self.admit_at(now_ms())
    }

    fn admit_at(&self, now_ms: u64) -> bool {
        self.roll_at(now_ms);
        if self.seen.fetch_add(1, Ordering::Relaxed) < BURST {
            return true;
        }
        if self.suppressed.fetch_add(1, Ordering::Relaxed) == 0 {
            SUPPRESSING.notify_waiters();
        }
        false
    }

    /// Starts a new window if the current one is over at `now_ms`, logging what it suppressed;
    /// returns that count.
    fn roll_at(&self, now_ms: u64) -> Option<u64> {
        let start = self.window_start.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) < window_ms()
            || self
                .window_start
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        self.seen.store(0, Ordering::Relaxed);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            warn!(
                kind = self.kind,
                suppressed, "suppressed {suppressed} similar messages"
            );
        }
        Some(suppressed)
    }
}

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn window_ms() -> u64 {
    u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX)
}

/// Logs the summaries of `limits` once their windows are over, even when no event comes to
/// roll them, until `stop`. It sleeps until the end of the earliest window holding suppressed
/// events, and while none holds any, until one does: no periodic tick.
pub async fn report_suppressed(limits: &[&LogLimit], stop: CancellationToken) {
    loop {
        // Enabled before the counts are read, so that a suppression after the read wakes it.
        let suppressing = SUPPRESSING.notified();
        tokio::pin!(suppressing);
        suppressing.as_mut().enable();
        match next_summary_ms(limits) {
            Some(due_ms) => {
                let due = *EPOCH + Duration::from_millis(due_ms);
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {
                        let now = now_ms();
                        for limit in limits {
                            limit.roll_at(now);
                        }
                    }
                    // Another kind may start suppressing in a window that ends sooner.
                    () = &mut suppressing => {}
                    () = stop.cancelled() => return,
                }
            }
            None => tokio::select! {
                () = suppressing => {}
                () = stop.cancelled() => return,
            },
        }
    }
}

/// When the first of `limits` holding suppressed events ends its window, in milliseconds from
/// [`EPOCH`]; `None` if none holds any.
fn next_summary_ms(limits: &[&LogLimit]) -> Option<u64> {
    limits
        .iter()
        .filter(|limit| limit.suppressed.load(Ordering::Relaxed) > 0)
        .map(|limit| {
            limit
                .window_start
                .load(Ordering::Relaxed)
                .saturating_add(window_ms())
        })
        .min()
}

#[cfg(test)]
pub(crate) use testing::LogLines;

#[cfg(test)]
mod testing {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    /// Counts the events at INFO and above, and those at WARN and above, logged on this thread
    /// while it lives (a `#[tokio::test]` runtime runs every task on the test's thread).
    pub(crate) struct LogLines {
        count: Arc<AtomicUsize>,
        warnings: Arc<AtomicUsize>,
        _guard: tracing::subscriber::DefaultGuard,
    }

    struct CountLines(Arc<AtomicUsize>, Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountLines {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if *event.metadata().level() <= tracing::Level::INFO {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
            if *event.metadata().level() <= tracing::Level::WARN {
                self.1.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    impl LogLines {
        pub(crate) fn count() -> Self {
            use tracing_subscriber::layer::SubscriberExt;
            let count = Arc::new(AtomicUsize::new(0));
            let warnings = Arc::new(AtomicUsize::new(0));
            let subscriber =
                tracing_subscriber::registry().with(CountLines(count.clone(), warnings.clone()));
            Self {
                count,
                warnings,
                _guard: tracing::subscriber::set_default(subscriber),
            }
        }

        pub(crate) fn lines(&self) -> usize {
            self.count.load(Ordering::Relaxed)
        }

        /// The events at WARN and above.
        pub(crate) fn warnings(&self) -> usize {
            self.warnings.load(Ordering::Relaxed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_is_logged_and_the_rest_summarised() {
        let limit = LogLimit::new("test");
        let admitted = (0..1000).filter(|_| limit.admit_at(5)).count();
        assert_eq!(admitted, BURST as usize);
        let window = window_ms();
        assert_eq!(limit.roll_at(window - 1), None, "the window is not over");
        assert_eq!(limit.roll_at(window), Some(1000 - u64::from(BURST)));
        assert!(limit.admit_at(window + 1), "a new window logs again");
        assert_eq!(limit.roll_at(2 * window + 1), Some(0));
    }

    #[test]
    fn a_summary_is_due_only_where_events_were_suppressed() {
        let (quiet, busy) = (LogLimit::new("quiet"), LogLimit::new("busy"));
        assert_eq!(next_summary_ms(&[&quiet, &busy]), None);
        assert!(
            quiet.admit_at(7_000),
            "within the burst: nothing suppressed"
        );
        let start = window_ms() + 9_000;
        (0..=BURST).for_each(|_| {
            busy.admit_at(start);
        });
        assert_eq!(next_summary_ms(&[&quiet, &busy]), Some(start + window_ms()));
        assert_eq!(busy.roll_at(start + window_ms()), Some(1));
        assert_eq!(next_summary_ms(&[&quiet, &busy]), None);
    }

    /// The summary of a window comes at its end without another event to roll it, from a
    /// reporter that was waiting without a timer when the first event came.
    #[tokio::test(start_paused = true)]
    async fn the_reporter_logs_a_window_nobody_rolled() {
        static LIMIT: LogLimit = LogLimit::new("reporter test");
        static LIMITS: [&LogLimit; 1] = [&LIMIT];
        let lines = LogLines::count();
        let stop = CancellationToken::new();
        let reporter = tokio::spawn(report_suppressed(&LIMITS, stop.clone()));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(lines.warnings(), 0, "nothing to report");
        let events = BURST + 3;
        (0..events).for_each(|_| {
            LIMIT.admit();
        });
        tokio::time::sleep(WINDOW - Duration::from_secs(1)).await;
        assert_eq!(lines.warnings(), 0, "the window is not over yet");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(lines.warnings(), 1, "one summary line");
        assert_eq!(next_summary_ms(&[&LIMIT]), None, "nothing left to report");
        stop.cancel();
        reporter.await.expect("the reporter stops");
    }
}
