//! The lab: black-box tests of the real `p2pdns` binary and of what it does to the machine,
//! in one binary that plain `cargo test` neither builds nor runs. They need root (network
//! namespaces, nftables, `/etc/netns`, dpkg) and Debian packages (dig, kdig, nsd, iproute2,
//! nftables, curl, chromium, python3, stun-client, miniupnpd, systemd, cargo-deb), which
//! `tests/run.sh` installs before it runs them:
//!
//! ```text
//! cargo test --locked --test lab                        # all of them
//! cargo test --test lab nat::connect_through -- --nocapture   # one
//! ```
//!
//! Nothing is skipped: a test that lacks root or a program fails and says what to install or
//! how to run it.
//!
//! - [`system`]: the daemon with nsd as its upstream, asked with dig, kdig and raw packets:
//!   what only the real binary shows (the wire as real clients see it, hostile packets,
//!   signals, exit codes, the CLI, the service manager protocol, introduction servers).
//! - [`dns_limits`]: hostile DNS clients against the real binary: descriptors exhausted (the
//!   upstream never blamed, no accept spin), the soft descriptor limit raised at start, junk
//!   floods adding a bounded number of log lines (issue 15, kinds 1 and 5).
//! - [`intro_limits`]: hostile libp2p clients against `p2pdns intro`'s limits.
//! - [`durable`]: acknowledged publishes survive kill -9; a full disk (a tmpfs) is refused and
//!   named.
//! - [`p2p_answers`]: `.p2p` answers compared with nsd's for the same records.
//! - [`stun`]: the STUN server asked by our client, by the `stun` program and by Python.
//! - [`service`]: `p2pdns service install` / `uninstall` into staging roots.
//! - [`packaging`]: the systemd units, launchd plist and resolver files checked by the programs
//!   that read them; the .deb built, installed and purged.
//! - [`lan`]: two namespaces on one LAN find each other with mDNS.
//! - [`os_path`]: getent, curl and Chromium resolve a `.p2p` name through resolv.conf.
//! - [`nat`]: nodes behind NATs of every kind, with an introduction server, in a sealed lab of
//!   namespaces.
//! - [`tunnel`]: services behind NATs opened by name through tunnels, with curl and Chromium.
//! - [`tunnel_moved`]: a serving peer that moved, its old address now another node's.
//! - [`two_homes`]: two machines behind one home router both serve sites, both opened
//!   directly from behind another router.
//!
//! [`process`] holds what they share: finding programs, temporary directories, processes with
//! deadlines; [`netns`] the network namespaces of `nat` and `os_path`.

// A test binary exports nothing: its shared helpers are `pub` for the other modules only.
#![allow(unreachable_pub)]
// A test reads as one scenario from set-up to the last check; the 80-line bound is for src/.
#![allow(clippy::too_many_lines)]
// These tests wait on real processes and real networks in real time; tokio's clock (which
// clippy.toml asks src/ to use, for paused-time tests) is not theirs.
#![allow(clippy::disallowed_types)]

mod dns_limits;
mod durable;
mod intro_limits;
mod lan;
mod nat;
mod netns;
mod os_path;
mod p2p_answers;
mod packaging;
mod process;
mod service;
mod stun;
mod system;
mod systemd_live;
mod tunnel;
mod tunnel_bench;
mod tunnel_moved;
mod two_homes;
