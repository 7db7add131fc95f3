//! Telling the follower when resolv.conf may have changed, so that an idle daemon does not
//! read it every two seconds (issue 14: an idle daemon wakes up less than once a second). The
//! `notify` crate watches (inotify on Linux, kqueue or FSEvents on macOS) the directories that
//! hold resolv.conf, the file it links to, and systemd-resolved's list of the servers behind
//! its stub: the file is usually replaced by a rename, and a link may be pointed elsewhere,
//! neither of which a watch on the file itself would see.
//!
//! The watcher's thread only tries to send on a channel of one unit: a burst of events is one
//! wake-up, and nothing queues.

use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::debug;

/// A watch on resolv.conf; dropping it stops watching.
pub(super) struct ResolvConfWatch {
    _watcher: RecommendedWatcher,
}

impl ResolvConfWatch {
    /// Watches `path`, the file it links to and `behind_stub`: `changed` gets a unit when an
    /// event names one of them. `None` when no directory can be watched (no inotify in this
    /// container, a missing directory): then the follower polls.
    pub(super) fn new(path: &Path, behind_stub: &Path, changed: mpsc::Sender<()>) -> Option<Self> {
        let mut files: Vec<PathBuf> = vec![path.to_owned(), behind_stub.to_owned()];
        if let Ok(target) = std::fs::canonicalize(path) {
            files.push(target);
        }
        let names: Vec<_> = files
            .iter()
            .filter_map(|f| f.file_name())
            .map(ToOwned::to_owned)
            .collect();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let named = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)));
                if named {
                    // Full: a wake-up is pending already.
                    let _ = changed.try_send(());
                }
            })
            .map_err(|error| debug!(%error, "cannot watch resolv.conf; polling it"))
            .ok()?;
        let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
        let own = dirs.first().copied();
        dirs.sort();
        dirs.dedup();
        let mut watched_own = false;
        for dir in dirs {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => watched_own |= Some(dir) == own,
                // systemd-resolved's directory exists only where it runs.
                Err(error) => {
                    debug!(dir = %dir.display(), %error, "cannot watch a directory of resolv.conf")
                }
            }
        }
        // Without resolv.conf's own directory the watch would miss its changes: poll instead.
        watched_own.then_some(Self { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn wait(changed: &mut mpsc::Receiver<()>) -> bool {
        let next = tokio::time::timeout(Duration::from_secs(10), changed.recv());
        next.await.is_ok()
    }

    /// resolv.conf replaced by a rename (as resolvconf and NetworkManager do), and a link
    /// pointed at another file: each wakes the follower.
    #[tokio::test]
    async fn a_replaced_or_relinked_resolv_conf_is_seen() {
        let dir = std::env::temp_dir().join(format!("p2pdns-watch-{}", std::process::id()));
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(run.join("a.conf"), "nameserver 192.0.2.1\n").unwrap();
        std::os::unix::fs::symlink(run.join("a.conf"), &path).unwrap();
        let (tx, mut changed) = mpsc::channel(1);
        let _watch = ResolvConfWatch::new(&path, &dir.join("stub.conf"), tx).expect("watched");
        std::fs::write(run.join("a.conf.new"), "nameserver 192.0.2.2\n").unwrap();
        std::fs::rename(run.join("a.conf.new"), run.join("a.conf")).unwrap();
        assert!(wait(&mut changed).await, "the target replaced by a rename");
        std::fs::write(run.join("b.conf"), "nameserver 192.0.2.3\n").unwrap();
        let tmp = dir.join("resolv.conf.tmp");
        std::os::unix::fs::symlink(run.join("b.conf"), &tmp).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(wait(&mut changed).await, "the link pointed elsewhere");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
