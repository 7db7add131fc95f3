//! Full mode on Linux: `/etc/resolv.conf` is replaced by one that points at the daemon (the
//! original kept as a backup that uninstall restores), and the daemon forwards every name
//! outside `.p2p` to the servers the system used before, found here.

use std::{fs, net::IpAddr};

use super::{MARKER, Options, ServiceError, Step, systemd::RESOLVED_UPSTREAMS};

/// The file the system resolver (glibc, musl, Go's) reads.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's stub, which resolv.conf names when resolved manages it.
const RESOLVED_STUB: &str = "127.0.0.53";

/// The step that puts our resolv.conf in place of the system's.
pub(super) fn replace() -> Step {
    Step::Replace {
        path: RESOLV_CONF.into(),
        contents: resolv_conf().into_bytes(),
    }
}

/// Our resolv.conf: the daemon on 127.0.0.1, and DNSSEC's AD bit trusted from it.
pub(super) fn resolv_conf() -> String {
    format!(
        "# {MARKER}\n\
         # p2pdns answers every name (and .p2p from the peer-to-peer network); uninstall\n\
         # restores the previous file.\n\
         nameserver 127.0.0.1\n\
         options edns0 trust-ad\n"
    )
}

/// The configuration written in full mode: forward to `upstreams`.
pub(super) fn full_config(upstreams: &[String]) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "# {MARKER}\n\
         # Written by `p2pdns service install --full`: the system resolver points at p2pdns,\n\
         # which forwards every name outside .p2p to the servers the system used before.\n\
         [upstream]\n\
         servers = [{}]\n",
        list.join(", ")
    )
}

/// The servers the system used before full mode: resolv.conf's, or systemd-resolved's real
/// upstreams when resolv.conf points at its stub. Loopback servers are left out (the daemon
/// will be the one on loopback); [`ServiceError::NoUpstreams`] if none is left.
pub(super) fn original_upstreams(options: &Options) -> Result<Vec<String>, ServiceError> {
    let read = |path: &str| -> Vec<String> {
        fs::read_to_string(options.path(path))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .map(|s| s.trim().to_owned())
            .filter(|s| s.parse::<IpAddr>().is_ok())
            .collect()
    };
    let mut servers = read(RESOLV_CONF);
    if servers.iter().any(|s| s == RESOLVED_STUB) {
        servers = read(RESOLVED_UPSTREAMS);
    }
    servers.retain(|s| s.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback()));
    if servers.is_empty() {
        return Err(ServiceError::NoUpstreams);
    }
    Ok(servers)
}
