//! Loopback addresses for tunnelled names (docs/PROTOCOL.md section 9.4). Linux routes all of
//! 127.0.0.0/8 to `lo`, so every address binds as it is. macOS has only 127.0.0.1 on `lo0`:
//! another address must be added as an alias first, which takes root (the launchd daemon runs
//! as root) and lasts until reboot. Other systems are not supported.

use std::{io, net::Ipv4Addr};

/// Makes `addr` (an address of the tunnel range) bindable, where the system needs that: on
/// macOS, `ifconfig lo0 alias ADDR up`; elsewhere nothing.
///
/// # Errors
/// macOS only: `ifconfig` could not run or failed (the daemon is not root, say).
pub fn add_alias(addr: Ipv4Addr) -> io::Result<()> {
    if cfg!(target_os = "macos") {
        let status = std::process::Command::new("/sbin/ifconfig")
            .args(["lo0", "alias", &addr.to_string(), "up"])
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "ifconfig lo0 alias {addr} up failed ({status}); run the daemon as root"
            )));
        }
    } else {
        let _ = addr;
    }
    Ok(())
}
