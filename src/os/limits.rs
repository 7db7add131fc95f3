//! Process limits the daemon raises for itself at start.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// Raises the soft limit on open file descriptors (`RLIMIT_NOFILE`) to the hard limit, as far
/// as the process may without privileges, and logs the limit in force. Every DNS client over
/// TCP, every upstream query and every P2P connection is a descriptor; a login shell's soft
/// limit (often 1024) is reached long before `dns.tcp_max_connections` and the other caps are.
/// Returns the soft limit now in force, or `None` when it cannot be read.
pub fn raise_nofile_limit() -> Option<u64> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            warn!(%error, "cannot read the open file limit");
            return None;
        }
    };
    // Linux refuses a limit above fs.nr_open, which an unlimited hard limit is.
    let target = hard.min(nr_open().unwrap_or(hard));
    if soft >= target {
        info!(limit = soft, "open file limit");
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            info!(limit = target, was = soft, "open file limit raised");
            Some(target)
        }
        Err(error) => {
            warn!(%error, limit = soft, hard, "cannot raise the open file limit");
            Some(soft)
        }
    }
}

/// The most descriptors a Linux process may have (`fs.nr_open`); `None` elsewhere.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("readable");
        let target = hard.min(nr_open().unwrap_or(hard));
        // Lowered first, as a login shell's `ulimit -Sn 1024` would.
        setrlimit(Resource::RLIMIT_NOFILE, target / 2, hard).expect("lowering is allowed");
        assert_eq!(raise_nofile_limit(), Some(target));
        assert_eq!(
            getrlimit(Resource::RLIMIT_NOFILE).expect("readable"),
            (target, hard)
        );
    }
}
