//! Log lines that a remote client can cause, bounded in rate. Each kind of event logs at most
//! [`BURST`] lines per [`WINDOW`]; the rest are counted, and the count is logged in one line
//! per kind once the window is over ("suppressed K similar messages"). A client sending junk
//! as fast as it can thus adds at most `BURST + 1` lines a minute per kind to the log.

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Lines logged per kind of event and window.
pub const BURST: u32 = 10;
/// The window over which [`BURST`] applies.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Where window starts are counted from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

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
        self.suppressed.fetch_add(1, Ordering::Relaxed);
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
/// roll them, until `stop`.
pub async fn report_suppressed(limits: &[&LogLimit], stop: CancellationToken) {
    let mut tick = tokio::time::interval(WINDOW / 4);
    loop {
        tokio::select! {
            _ = tick.tick() => limits.iter().for_each(|limit| {
                limit.roll_at(now_ms());
            }),
            () = stop.cancelled() => return,
        }
    }
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
}
