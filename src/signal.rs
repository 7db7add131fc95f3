//! Shutdown on SIGINT or SIGTERM (systemd stops services with SIGTERM); a second signal ends
//! the process at once for an impatient operator. SIGHUP asks for a reload.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit code after a second signal: 128 + SIGINT, as shells report an interrupted program.
const FORCED_EXIT: i32 = 130;

/// Spawns a task that cancels `token` on the first SIGINT or SIGTERM and exits on the second,
/// and notifies `reload` on SIGHUP.
pub fn spawn_handler(token: CancellationToken, reload: Arc<Notify>) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            let mut received = 0;
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => {
                        info!("SIGHUP: reloading");
                        reload.notify_one();
                        continue;
                    }
                };
                received += 1;
                if received == 1 {
                    info!(signal = name, "stopping");
                    token.cancel();
                } else {
                    warn!(signal = name, "second signal: exiting now");
                    std::process::exit(FORCED_EXIT);
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        drop(reload);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                info!("stopping");
                token.cancel();
            }
        });
    }
    Ok(())
}

/// Why [`request_reload`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The process is not a p2pdns daemon (or is gone): signalling it could stop a stranger.
    #[error("process {pid} is not a running p2pdns (its name is {name:?})")]
    NotP2pdns {
        /// The pid given.
        pid: i32,
        /// The process's name from /proc, empty when there is no such process.
        name: String,
    },
    /// kill(2) failed: no such process, or not ours to signal.
    #[error("failed to send SIGHUP to process {pid}")]
    Signal {
        /// The pid given.
        pid: i32,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// Sends SIGHUP to the p2pdns daemon with process id `pid`, which reloads as on any SIGHUP:
/// what `systemctl reload` runs (`ExecReload`), so that no `kill` binary is needed (a minimal
/// system has none). On Linux the process's name is checked first.
///
/// # Errors
/// [`ReloadError`]: the process is not p2pdns, or the signal could not be sent.
pub fn request_reload(pid: i32) -> Result<(), ReloadError> {
    #[cfg(target_os = "linux")]
    {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let name = name.trim_end().to_owned();
        if name != "p2pdns" {
            return Err(ReloadError::NotP2pdns { pid, name });
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|errno| ReloadError::Signal {
        pid,
        source: errno.into(),
    })
}
