//! Linux: the systemd unit, and `.p2p` routed by systemd-resolved (a drop-in making the daemon
//! the DNS server of the `~p2p` routing domain, and a DNSSEC negative trust anchor so that
//! resolved does not reject the unsigned `.p2p` answers). Full mode's resolv.conf takeover is
//! in [`super::resolv_conf`]; the routing domain is added in full mode too when resolved runs.

use super::{CONFIG_PATH, MARKER, Mode, Options, ServiceError, Step, resolv_conf};

const UNIT: &str = include_str!("../../../packaging/systemd/p2pdns.service");
const RESOLVED_DROP_IN: &str = include_str!("../../../packaging/systemd/resolved-p2pdns.conf");
const NEGATIVE_TRUST_ANCHOR: &str = include_str!("../../../packaging/systemd/p2p.negative");

/// The binary path inside the unit template (where the Debian package puts it).
pub(super) const TEMPLATE_BIN: &str = "/usr/bin/p2pdns";
/// systemd-resolved's list of its real upstream servers (not its 127.0.0.53 stub); that it
/// exists tells that resolved runs.
pub(super) const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// Enables and starts the service; install's last word on whether the daemon runs.
pub(super) const START: &[&str] = &["systemctl", "enable", "--now", "p2pdns.service"];
/// Stops the service before uninstall removes its unit.
pub(super) const STOP: &[&[&str]] = &[
    &["systemctl", "disable", "--now", "p2pdns.service"],
    // A unit that failed (port 53 taken at install) stays listed by `systemctl --failed`, and
    // its start rate limit blocks the next install, until this.
    &["systemctl", "reset-failed", "p2pdns.service"],
];
/// After uninstall: systemd forgets the unit, resolved the routing domain.
pub(super) const FORGET: &[&[&str]] = &[
    &["systemctl", "daemon-reload"],
    &["systemctl", "try-restart", "systemd-resolved.service"],
];

/// The Linux steps: configuration (when `write_config`), unit, resolved integration, and the
/// systemctl commands that start it all; the service runs `bin`.
pub(super) fn plan(
    options: &Options,
    bin: &str,
    write_config: bool,
) -> Result<Vec<Step>, ServiceError> {
    let resolved = options.path(RESOLVED_UPSTREAMS).exists();
    let mut steps = Vec::new();
    let config = match options.mode {
        Mode::Split if options.live() && !resolved => {
            return Err(ServiceError::NoSystemdResolved);
        }
        Mode::Split => split_config(),
        Mode::Full => {
            let upstreams = resolv_conf::original_upstreams(options)?;
            steps.push(resolv_conf::replace());
            resolv_conf::full_config(&upstreams)
        }
    };
    if write_config {
        steps.push(Step::file(CONFIG_PATH, config));
    }
    steps.push(Step::file(
        "/etc/systemd/system/p2pdns.service",
        UNIT.replace(TEMPLATE_BIN, bin),
    ));
    // The routing domain also in full mode: programs that ask systemd-resolved directly
    // (nss-resolve) get .p2p too.
    let routing_domain = options.mode == Mode::Split || resolved;
    if routing_domain {
        steps.push(Step::file(
            "/etc/systemd/resolved.conf.d/p2pdns.conf",
            RESOLVED_DROP_IN,
        ));
        steps.push(Step::file(
            "/etc/dnssec-trust-anchors.d/p2p.negative",
            NEGATIVE_TRUST_ANCHOR,
        ));
    }
    steps.push(Step::run(&["systemctl", "daemon-reload"]));
    steps.push(Step::run(START));
    if routing_domain {
        steps.push(Step::run(&[
            "systemctl",
            "try-restart",
            "systemd-resolved.service",
        ]));
    }
    Ok(steps)
}

/// Why the service did not start, for [`ServiceError::NotStarted`]: the daemon's last
/// `error:` line in the service's log of the last minute (it prints one line naming the fault,
/// such as port 53 taken), or where to look when there is none.
pub(super) fn not_started(source: ServiceError) -> ServiceError {
    let log = std::process::Command::new("journalctl")
        .args([
            "--unit",
            "p2pdns.service",
            "--since",
            "-60s",
            "--output",
            "cat",
        ])
        .arg("--no-pager")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let reason = log
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
        .map_or_else(
            || "see `systemctl status p2pdns` and `journalctl -u p2pdns`".to_owned(),
            str::to_owned,
        );
    ServiceError::NotStarted {
        reason,
        source: Box::new(source),
    }
}

/// The configuration written in split mode: forward what resolved sends besides `.p2p` to
/// resolved's own upstreams.
pub(super) fn split_config() -> String {
    format!(
        "# {MARKER}\n\
         # Written by `p2pdns service install` (split DNS): systemd-resolved routes .p2p names\n\
         # here (and may send others too, which p2pdns forwards to resolved's upstreams). Edit\n\
         # freely: uninstall removes this file only while it still carries the line above.\n\
         [upstream]\n\
         # systemd-resolved's own upstream servers, never its 127.0.0.53 stub.\n\
         resolv_conf = \"{RESOLVED_UPSTREAMS}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_carries_the_marker() {
        for (name, text) in [
            ("unit", UNIT),
            ("resolved drop-in", RESOLVED_DROP_IN),
            ("negative trust anchor", NEGATIVE_TRUST_ANCHOR),
        ] {
            assert!(text.contains(MARKER), "{name} lacks the marker");
        }
    }

    #[test]
    fn the_unit_names_the_binary_path_that_is_replaced() {
        assert!(UNIT.contains(&format!("ExecStart={TEMPLATE_BIN} run")));
    }
}
