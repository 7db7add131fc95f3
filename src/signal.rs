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
