//! macOS: a launchd daemon, and `.p2p` sent to it by `/etc/resolver/p2p`, which the system
//! resolver reads for names under that domain only (split DNS; full mode is not offered yet).

use super::{CONFIG_PATH, MARKER, Mode, Options, ServiceError, Step};

const LAUNCHD_PLIST: &str = include_str!("../../../packaging/macos/net.p2pdns.daemon.plist");
const MACOS_RESOLVER: &str = include_str!("../../../packaging/macos/resolver-p2p");

/// The binary path inside the plist template.
const TEMPLATE_BIN: &str = "/usr/local/bin/p2pdns";
/// Where launchd looks for system daemons.
const PLIST_PATH: &str = "/Library/LaunchDaemons/net.p2pdns.daemon.plist";

/// Stops the daemon before uninstall removes its plist.
pub(super) const STOP: &[&[&str]] = &[&["launchctl", "bootout", "system/net.p2pdns.daemon"]];

/// The macOS steps: configuration (when `write_config`), plist, resolver file, and the
/// launchctl command that starts the daemon, which runs `bin`.
pub(super) fn plan(
    options: &Options,
    bin: &str,
    write_config: bool,
) -> Result<Vec<Step>, ServiceError> {
    if options.mode == Mode::Full {
        return Err(ServiceError::FullModeOnMacos);
    }
    let mut steps = Vec::new();
    if write_config {
        steps.push(Step::file(CONFIG_PATH, default_config()));
    }
    steps.push(Step::file(
        PLIST_PATH,
        LAUNCHD_PLIST.replace(TEMPLATE_BIN, bin),
    ));
    steps.push(Step::file("/etc/resolver/p2p", MACOS_RESOLVER));
    steps.push(Step::run(&["launchctl", "bootstrap", "system", PLIST_PATH]));
    Ok(steps)
}

/// The configuration written on macOS: only the marker, so the built-in defaults apply.
pub(super) fn default_config() -> String {
    format!("# {MARKER}\n# Written by `p2pdns service install`; built-in defaults apply.\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_carries_the_marker() {
        for (name, text) in [("plist", LAUNCHD_PLIST), ("macOS resolver", MACOS_RESOLVER)] {
            assert!(text.contains(MARKER), "{name} lacks the marker");
        }
    }

    #[test]
    fn the_plist_names_the_binary_path_that_is_replaced() {
        assert!(LAUNCHD_PLIST.contains(TEMPLATE_BIN));
    }
}
