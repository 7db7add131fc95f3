//! The local control interface: a Unix socket (mode 0600) through which the CLI (`p2pdns
//! status`, `publish`, `names`, `resolve`, `connect`, `pins`...) talks to the running daemon.
//! It owns the socket's place and life, the typed request/response protocol ([`protocol`]), the
//! daemon's side ([`server`]) and the CLI's ([`client`]).
//!
//! It decides nothing itself: requests are answered by the naming layer, the forwarder and the
//! P2P node (`connect`'s hole-punching policy is [`crate::nat::connect`]'s), and responses are
//! rendered for people by [`crate::cli`]. It must not hold daemon state or reach into the swarm.

use std::path::{Path, PathBuf};

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{ClientError, answer_time, call, call_within};
pub use protocol::{NameInfo, P2pStatus, PinInfo, Request, Resolution, Response, Status};
pub use server::{Context, ControlError, ControlSocket, RequestError, bind, p2p_name, serve};

/// File name of the socket inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";

/// Where a service's control socket lives when the daemon runs under systemd with
/// `RuntimeDirectory=p2pdns`; the CLI looks there too when it was not pointed at a data
/// directory.
pub const SERVICE_SOCKET: &str = "/run/p2pdns/control.sock";

/// The control socket of a daemon using `data_dir`: in the service manager's runtime directory
/// (`$RUNTIME_DIRECTORY`, set by systemd's `RuntimeDirectory=`) when there is one, else in the
/// data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY") {
        // Several directories are separated by colons; the first is ours.
        Some(dirs) if !dirs.is_empty() => {
            let dirs = dirs.to_string_lossy().into_owned();
            let first = dirs.split(':').next().unwrap_or_default();
            Path::new(first).join(SOCKET_FILE)
        }
        _ => data_dir.join(SOCKET_FILE),
    }
}
