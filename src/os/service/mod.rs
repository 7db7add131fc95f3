//! `p2pdns service install` / `uninstall`: puts the daemon in the system's hands (systemd or
//! launchd) and sends `.p2p` names to it, and takes all of that back.
//!
//! Every file the installer writes carries a marker line, "Installed by p2pdns; remove with:
//! p2pdns service uninstall" (the copied binary cannot, so it is known by its SHA-256), and a
//! manifest records what was written, which directories were created and which system files
//! were replaced (with their backups). Uninstall follows the manifest: it removes the files
//! that are still ours, restores the backups, removes the directories it created when empty,
//! and finally the manifest, leaving the system as it was.
//!
//! `--root DIR` writes into a staging root instead of `/` and runs no system command (for
//! packagers and tests); `--dry-run` only prints the plan.
//!
//! This module owns the installer: the plan (`systemd` for Linux, `launchd` for macOS,
//! `resolv_conf` for full mode's takeover of `/etc/resolv.conf`) and its execution and undoing
//! (`manifest`). It may write only the paths its plan names, under [`Options::root`], and run
//! only the service manager's commands, and those only when installing into `/`. It never
//! touches the running daemon's state, its configuration once written, or its identity key;
//! readiness notification is [`crate::os::systemd`]'s, not this module's.

mod launchd;
mod manifest;
mod resolv_conf;
mod systemd;

use std::{
    fmt::Write as _,
    fs, io,
    net::ToSocketAddrs,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::naming::CHECK_HOST;
use manifest::{Manifest, Step};

/// The line every installed file carries; uninstall removes files that still have it.
const MARKER: &str = "Installed by p2pdns; remove with: p2pdns service uninstall";

/// The configuration file, written only when none exists.
const CONFIG_PATH: &str = "/etc/p2pdns/p2pdns.toml";
/// Where the installer copies the binary when it is not already installed by a package.
const INSTALLED_BIN: &str = "/usr/local/bin/p2pdns";

/// The operating system whose files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// systemd units, and systemd-resolved or `/etc/resolv.conf` for DNS.
    Linux,
    /// A launchd daemon, and `/etc/resolver/p2p` for DNS.
    Macos,
}

impl Platform {
    /// The platform this program was built for.
    pub fn current() -> Self {
        if cfg!(target_os = "macos") {
            Self::Macos
        } else {
            Self::Linux
        }
    }

    /// Commands that stop and disable the service before its files go.
    fn stop_commands(self) -> &'static [&'static [&'static str]] {
        match self {
            Self::Linux => systemd::STOP,
            Self::Macos => launchd::STOP,
        }
    }

    /// Commands that make the service manager and the resolver forget the removed files.
    fn forget_commands(self) -> &'static [&'static [&'static str]] {
        match self {
            Self::Linux => systemd::FORGET,
            Self::Macos => &[],
        }
    }
}

/// How `.p2p` reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only `.p2p` goes to the daemon (systemd-resolved routing domain, macOS /etc/resolver).
    Split,
    /// The system resolver points at the daemon, which forwards everything else upstream.
    Full,
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The file system root to write under: `/` for a real install, a staging directory for
    /// packagers and tests (then no system command runs).
    pub root: PathBuf,
    /// Only print the plan; change nothing.
    pub dry_run: bool,
    /// Whose files to write (the current platform unless asked otherwise).
    pub platform: Platform,
    /// Split or full DNS integration.
    pub mode: Mode,
    /// The binary is already installed at this path (a package): use it, copy nothing.
    pub binary: Option<PathBuf>,
}

impl Options {
    /// Installing for real: into `/`, not a staging root.
    fn live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `absolute` under the root.
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }
}

/// Errors of install and uninstall.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A live install or uninstall by a user other than root.
    #[error("{action} the service changes system files: run it as root (sudo)")]
    NotRoot {
        /// `"installing"` or `"uninstalling"`.
        action: &'static str,
    },
    /// Install found the manifest of an earlier install that was not undone.
    #[error(
        "p2pdns is already installed ({} exists); run `p2pdns service uninstall` first",
        manifest.display()
    )]
    AlreadyInstalled {
        /// The manifest found, under the install root.
        manifest: PathBuf,
    },
    /// Uninstall found no manifest under the root.
    #[error("p2pdns is not installed here (no {})", manifest.display())]
    NotInstalled {
        /// Where the manifest was looked for, under the install root.
        manifest: PathBuf,
    },
    /// A live split-mode install on Linux without systemd-resolved to route `.p2p`.
    #[error(
        "split DNS needs systemd-resolved, which is not running here; start it, or install \
         with --full (the system resolver then points at p2pdns for every name)"
    )]
    NoSystemdResolved,
    /// Full mode found no non-loopback server to forward ordinary names to.
    #[error(
        "no upstream DNS server found in /etc/resolv.conf (or systemd-resolved's list) to \
         forward to in full mode; set upstream.servers in /etc/p2pdns/p2pdns.toml first"
    )]
    NoUpstreams,
    /// `--full` on macOS, which has only the split integration so far.
    #[error(
        "--full is not supported on macOS yet: /etc/resolver/p2p (split DNS) sends .p2p to \
         p2pdns without touching other names"
    )]
    FullModeOnMacos,
    /// Reading, writing, moving or removing a file or directory failed.
    #[error("failed to {action} {}", path.display())]
    Io {
        /// The verb of what failed: `"read"`, `"write"`, `"back up"`, `"restore"`...
        action: &'static str,
        /// The file or directory, under the install root.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The manifest is not the JSON install wrote.
    #[error("the install manifest {} is damaged", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Where and why the JSON does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The service manager could not start the daemon (`systemctl enable --now` failed): the
    /// files stay installed, so the cause can be fixed and the service restarted.
    #[error(
        "the p2pdns service did not start: {reason}\n(the files are installed: fix that and run \
         `sudo systemctl restart p2pdns`, or undo the install with `sudo p2pdns service \
         uninstall`)"
    )]
    NotStarted {
        /// The daemon's own error from the service's log, or where to look for it.
        reason: String,
        /// The failed service manager command.
        #[source]
        source: Box<ServiceError>,
    },
    /// A system command (systemctl, launchctl) could not be started.
    #[error("failed to run `{command}`")]
    Spawn {
        /// The command line, words joined by spaces.
        command: String,
        /// Why it could not start (usually: not installed).
        #[source]
        source: io::Error,
    },
    /// A system command exited unsuccessfully.
    #[error("`{command}` failed: {status}: {stderr}")]
    CommandFailed {
        /// The command line, words joined by spaces.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
}

/// Maps an I/O error on `path` to [`ServiceError::Io`].
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ServiceError {
    let path = path.to_owned();
    move |source| ServiceError::Io {
        action,
        path,
        source,
    }
}

/// Installs the service and the DNS integration. Returns the report to print.
pub fn install(options: &Options) -> Result<String, ServiceError> {
    if options.live() && !options.dry_run && !is_root() {
        return Err(ServiceError::NotRoot {
            action: "installing",
        });
    }
    let manifest_path = options.path(manifest::PATH);
    if manifest_path.exists() {
        return Err(ServiceError::AlreadyInstalled {
            manifest: manifest_path,
        });
    }
    let steps = plan_install(options)?;
    let mut report = String::new();
    if options.dry_run {
        let _ = writeln!(report, "would do (dry run, nothing changed):");
        manifest::describe(&steps, &mut report);
        return Ok(report);
    }
    let mut manifest = Manifest::new(options);
    // Written first and rewritten after each step: an install that fails half-way can still
    // be undone by uninstall.
    let result = manifest.apply(options, &steps, &mut report);
    manifest.save(options)?;
    result.map_err(|error| match error {
        ServiceError::CommandFailed { ref command, .. }
            if options.live() && *command == systemd::START.join(" ") =>
        {
            systemd::not_started(error)
        }
        other => other,
    })?;
    if options.live() {
        verify(&mut report);
    } else {
        let _ = writeln!(
            report,
            "staged under {}: no service started, nothing checked",
            options.root.display()
        );
    }
    Ok(report)
}

/// Every step of an install, in order: the binary, then the platform's files and commands.
fn plan_install(options: &Options) -> Result<Vec<Step>, ServiceError> {
    let (bin, mut steps) = plan_binary(options)?;
    let write_config = !options.path(CONFIG_PATH).exists();
    steps.extend(match options.platform {
        Platform::Linux => systemd::plan(options, &bin, write_config)?,
        Platform::Macos => launchd::plan(options, &bin, write_config)?,
    });
    Ok(steps)
}

/// Where the service will run the binary from, and the step that copies it there if needed.
fn plan_binary(options: &Options) -> Result<(String, Vec<Step>), ServiceError> {
    let exe = match &options.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().map_err(io_error("find", Path::new("this program")))?,
    };
    // A packaged binary (/usr/bin) stays where it is; otherwise this one is copied.
    let packaged = options.binary.is_some()
        || exe == Path::new(systemd::TEMPLATE_BIN)
        || exe == Path::new(INSTALLED_BIN);
    if packaged {
        return Ok((exe.display().to_string(), Vec::new()));
    }
    let contents = fs::read(&exe).map_err(io_error("read", &exe))?;
    let copy = Step::Write {
        path: INSTALLED_BIN.into(),
        contents,
        mode: 0o755,
    };
    Ok((INSTALLED_BIN.to_owned(), vec![copy]))
}

/// Whether this process runs with root's effective user id, as writing system files and
/// running systemctl or launchctl needs. `geteuid(2)` never fails.
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// After a live install: does the OS resolver bring `.p2p` and an ordinary name?
fn verify(report: &mut String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let p2p = loop {
        match resolves(CHECK_HOST) {
            Ok(()) => break Ok(()),
            Err(error) if Instant::now() >= deadline => break Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    let _ = match p2p {
        Ok(()) => writeln!(
            report,
            "check    {CHECK_HOST} resolves through the system resolver: ok"
        ),
        Err(error) => writeln!(
            report,
            "check    {CHECK_HOST} does not resolve through the system resolver ({error}); \
             run `p2pdns doctor`"
        ),
    };
    let _ = match resolves("example.com") {
        Ok(()) => writeln!(
            report,
            "check    example.com resolves: ok (ordinary DNS works)"
        ),
        Err(error) => writeln!(
            report,
            "check    example.com does not resolve ({error}); without network access this is \
             expected, otherwise run `p2pdns doctor`"
        ),
    };
}

/// Resolves `host` with getaddrinfo, as every program does, so the answer comes through the
/// system's whole resolver path (NSS, systemd-resolved or `/etc/resolver`). The error is
/// getaddrinfo's.
pub fn resolves(host: &str) -> io::Result<()> {
    (host, 0).to_socket_addrs().map(|_| ())
}

/// Removes what install wrote and restores what it replaced.
pub fn uninstall(options: &Options) -> Result<String, ServiceError> {
    let manifest = Manifest::load(options)?;
    if options.live() && !options.dry_run && !is_root() {
        return Err(ServiceError::NotRoot {
            action: "uninstalling",
        });
    }
    let mut report = String::new();
    if options.dry_run {
        let _ = writeln!(report, "would do (dry run, nothing changed):");
    }
    let platform = manifest.platform.unwrap_or_else(Platform::current);
    // Stop the service first, so nothing runs from files about to go.
    if options.live() {
        run_best_effort(platform.stop_commands(), options.dry_run, &mut report);
    }
    manifest.undo(options, &mut report)?;
    if options.live() {
        run_best_effort(platform.forget_commands(), options.dry_run, &mut report);
    }
    Ok(report)
}

/// Runs `commands` (or, in a dry run, lists them), noting failures in the report without
/// stopping: a service already stopped or never started is no reason to keep its files.
fn run_best_effort(commands: &[&[&str]], dry_run: bool, report: &mut String) {
    for argv in commands {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        if dry_run {
            let _ = writeln!(report, "  run     {}", argv.join(" "));
        } else if let Err(error) = manifest::run_command(&argv) {
            let mut note = error.to_string();
            for cause in std::iter::successors(std::error::Error::source(&error), |e| e.source()) {
                let _ = write!(note, ": {cause}");
            }
            let _ = writeln!(report, "note     {note}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_file_carries_the_marker() {
        for text in [
            systemd::split_config(),
            resolv_conf::full_config(&["192.0.2.1".into()]),
            resolv_conf::resolv_conf(),
            launchd::default_config(),
        ] {
            assert!(text.contains(MARKER), "{text}");
        }
    }

    #[test]
    fn the_written_configurations_parse() {
        for text in [
            systemd::split_config(),
            resolv_conf::full_config(&["192.0.2.1".into(), "2001:db8::1".into()]),
            launchd::default_config(),
        ] {
            let config: crate::Config =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            config.validate().unwrap();
        }
    }

    #[test]
    fn is_root_agrees_with_id() {
        let output = std::process::Command::new("id").arg("-u").output().unwrap();
        let uid = String::from_utf8(output.stdout).unwrap();
        assert_eq!(is_root(), uid.trim() == "0", "id -u says {uid}");
    }
}
