//! `p2pdns service install` / `uninstall`: puts the daemon in the system's hands (systemd or
//! launchd) and sends `.p2p` names to it, and takes all of that back.
//!
//! Every file the installer writes carries [`MARKER`] (the copied binary cannot, so it is known
//! by its SHA-256), and a manifest records what was written, which directories were created and
//! which system files were replaced (with their backups). Uninstall follows the manifest: it
//! removes the files that are still ours, restores the backups, removes the directories it
//! created when empty, and finally the manifest, leaving the system as it was.
//!
//! `--root DIR` writes into a staging root instead of `/` and runs no system command (for
//! packagers and tests); `--dry-run` only prints the plan.

use std::{
    fmt::Write as _,
    fs, io,
    net::ToSocketAddrs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::naming::CHECK_HOST;

/// The line every installed file carries; uninstall removes files that still have it.
pub const MARKER: &str = "Installed by p2pdns; remove with: p2pdns service uninstall";

const UNIT: &str = include_str!("../../packaging/systemd/p2pdns.service");
const RESOLVED_DROP_IN: &str = include_str!("../../packaging/systemd/resolved-p2pdns.conf");
const NEGATIVE_TRUST_ANCHOR: &str = include_str!("../../packaging/systemd/p2p.negative");
const LAUNCHD_PLIST: &str = include_str!("../../packaging/macos/net.p2pdns.daemon.plist");
const MACOS_RESOLVER: &str = include_str!("../../packaging/macos/resolver-p2p");

/// Where the manifest lives (relative to the root).
const MANIFEST: &str = "etc/p2pdns/install-manifest.json";
/// The binary path inside unit and plist templates.
const TEMPLATE_BIN: &str = "/usr/bin/p2pdns";
const MACOS_TEMPLATE_BIN: &str = "/usr/local/bin/p2pdns";
/// Where the installer copies the binary when it is not already installed by a package.
const INSTALLED_BIN: &str = "/usr/local/bin/p2pdns";
/// systemd-resolved's list of its real upstream servers (not its 127.0.0.53 stub).
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
/// Suffix of the copy kept of a system file the installer replaces.
const BACKUP_SUFFIX: &str = ".p2pdns-backup";

/// The operating system whose files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Linux,
    Macos,
}

impl Platform {
    pub fn current() -> Self {
        if cfg!(target_os = "macos") {
            Self::Macos
        } else {
            Self::Linux
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
    pub root: PathBuf,
    pub dry_run: bool,
    pub platform: Platform,
    pub mode: Mode,
    /// The binary is already installed at this path (a package): use it, copy nothing.
    pub binary: Option<PathBuf>,
}

impl Options {
    /// Installing for real: into `/`, not a staging root.
    fn live(&self) -> bool {
        self.root == Path::new("/")
    }

    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }
}

/// Errors of install and uninstall.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Refused(String),
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the install manifest {path} is damaged: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ServiceError {
    let path = path.to_owned();
    move |source| ServiceError::Io {
        action,
        path,
        source,
    }
}

/// What install did, for uninstall.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    platform: Option<Platform>,
    mode: Option<Mode>,
    /// Files written: absolute path (under the root) and SHA-256 of what was written.
    files: Vec<(String, String)>,
    /// Directories created, parents first.
    dirs: Vec<String>,
    /// System files replaced: path and where the original was kept.
    replaced: Vec<(String, String)>,
}

/// One change the installer makes.
#[derive(Debug)]
enum Step {
    Write {
        path: String,
        contents: Vec<u8>,
        mode: u32,
    },
    /// Replace a system file (`/etc/resolv.conf`), keeping the original next to it.
    Replace { path: String, contents: Vec<u8> },
    /// A system command, run only when installing into `/`.
    Run { argv: Vec<String> },
}

fn run(argv: &[&str]) -> Step {
    Step::Run {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Installs the service and the DNS integration. Returns the report to print.
pub fn install(options: &Options) -> Result<String, ServiceError> {
    if options.live() && !options.dry_run && !is_root() {
        return Err(ServiceError::Refused(
            "installing the service changes system files: run it as root (sudo)".into(),
        ));
    }
    if options.path(MANIFEST).exists() {
        return Err(ServiceError::Refused(format!(
            "p2pdns is already installed ({} exists); run `p2pdns service uninstall` first",
            options.path(MANIFEST).display()
        )));
    }
    let steps = plan_install(options)?;
    let mut report = String::new();
    if options.dry_run {
        let _ = writeln!(report, "would do (dry run, nothing changed):");
        describe(&steps, &mut report);
        return Ok(report);
    }
    let mut manifest = Manifest {
        platform: Some(options.platform),
        mode: Some(options.mode),
        ..Manifest::default()
    };
    // Written first and rewritten after each step: an install that fails half-way can still
    // be undone by uninstall.
    let result = apply(options, &steps, &mut manifest, &mut report);
    save_manifest(options, &mut manifest)?;
    result?;
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

fn describe(steps: &[Step], out: &mut String) {
    for step in steps {
        let _ = match step {
            Step::Write { path, .. } => writeln!(out, "  write   {path}"),
            Step::Replace { path, .. } => {
                writeln!(
                    out,
                    "  replace {path} (original kept as {path}{BACKUP_SUFFIX})"
                )
            }
            Step::Run { argv } => writeln!(out, "  run     {}", argv.join(" ")),
        };
    }
}

fn plan_install(options: &Options) -> Result<Vec<Step>, ServiceError> {
    let exe = match &options.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().map_err(io_error("find", Path::new("this program")))?,
    };
    // A packaged binary (/usr/bin) stays where it is; otherwise this one is copied.
    let packaged = options.binary.is_some()
        || exe == Path::new(TEMPLATE_BIN)
        || exe == Path::new(INSTALLED_BIN);
    let bin = if packaged {
        exe.display().to_string()
    } else {
        INSTALLED_BIN.to_owned()
    };
    let mut steps = Vec::new();
    if !packaged {
        let contents = fs::read(&exe).map_err(io_error("read", &exe))?;
        steps.push(Step::Write {
            path: INSTALLED_BIN.into(),
            contents,
            mode: 0o755,
        });
    }
    let config_path = "/etc/p2pdns/p2pdns.toml";
    let write_config = !options.path(config_path).exists();
    match options.platform {
        Platform::Linux => {
            let resolved = options.path(RESOLVED_UPSTREAMS).exists();
            let config = match options.mode {
                Mode::Split => {
                    if options.live() && !resolved {
                        return Err(ServiceError::Refused(
                            "split DNS needs systemd-resolved, which is not running here; \
                             start it, or install with --full (the system resolver then points \
                             at p2pdns for every name)"
                                .into(),
                        ));
                    }
                    linux_split_config()
                }
                Mode::Full => {
                    let upstreams = original_upstreams(options)?;
                    steps.push(Step::Replace {
                        path: "/etc/resolv.conf".into(),
                        contents: full_resolv_conf().into_bytes(),
                    });
                    full_config(&upstreams)
                }
            };
            if write_config {
                steps.push(Step::Write {
                    path: config_path.into(),
                    contents: config.into_bytes(),
                    mode: 0o644,
                });
            }
            steps.push(Step::Write {
                path: "/etc/systemd/system/p2pdns.service".into(),
                contents: UNIT.replace(TEMPLATE_BIN, &bin).into_bytes(),
                mode: 0o644,
            });
            // The routing domain also in full mode: programs that ask systemd-resolved
            // directly (nss-resolve) get .p2p too.
            if options.mode == Mode::Split || resolved {
                steps.push(Step::Write {
                    path: "/etc/systemd/resolved.conf.d/p2pdns.conf".into(),
                    contents: RESOLVED_DROP_IN.as_bytes().to_vec(),
                    mode: 0o644,
                });
                steps.push(Step::Write {
                    path: "/etc/dnssec-trust-anchors.d/p2p.negative".into(),
                    contents: NEGATIVE_TRUST_ANCHOR.as_bytes().to_vec(),
                    mode: 0o644,
                });
            }
            steps.push(run(&["systemctl", "daemon-reload"]));
            steps.push(run(&["systemctl", "enable", "--now", "p2pdns.service"]));
            if options.mode == Mode::Split || resolved {
                steps.push(run(&[
                    "systemctl",
                    "try-restart",
                    "systemd-resolved.service",
                ]));
            }
        }
        Platform::Macos => {
            if options.mode == Mode::Full {
                return Err(ServiceError::Refused(
                    "--full is not supported on macOS yet: /etc/resolver/p2p (split DNS) sends \
                     .p2p to p2pdns without touching other names"
                        .into(),
                ));
            }
            if write_config {
                steps.push(Step::Write {
                    path: config_path.into(),
                    contents: format!("# {MARKER}\n# Written by `p2pdns service install`; built-in defaults apply.\n")
                        .into_bytes(),
                    mode: 0o644,
                });
            }
            let plist = "/Library/LaunchDaemons/net.p2pdns.daemon.plist";
            steps.push(Step::Write {
                path: plist.into(),
                contents: LAUNCHD_PLIST.replace(MACOS_TEMPLATE_BIN, &bin).into_bytes(),
                mode: 0o644,
            });
            steps.push(Step::Write {
                path: "/etc/resolver/p2p".into(),
                contents: MACOS_RESOLVER.as_bytes().to_vec(),
                mode: 0o644,
            });
            steps.push(run(&["launchctl", "bootstrap", "system", plist]));
        }
    }
    Ok(steps)
}

fn linux_split_config() -> String {
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

fn full_config(upstreams: &[String]) -> String {
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

fn full_resolv_conf() -> String {
    format!(
        "# {MARKER}\n\
         # p2pdns answers every name (and .p2p from the peer-to-peer network); uninstall\n\
         # restores the previous file.\n\
         nameserver 127.0.0.1\n\
         options edns0 trust-ad\n"
    )
}

/// The servers the system used before full mode: resolv.conf's, or systemd-resolved's real
/// upstreams when resolv.conf points at its stub.
fn original_upstreams(options: &Options) -> Result<Vec<String>, ServiceError> {
    let read = |path: &str| -> Vec<String> {
        fs::read_to_string(options.path(path))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .map(|s| s.trim().to_owned())
            .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
            .collect()
    };
    let mut servers = read("/etc/resolv.conf");
    if servers.iter().any(|s| s == "127.0.0.53") {
        servers = read(RESOLVED_UPSTREAMS);
    }
    servers.retain(|s| {
        s.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !ip.is_loopback())
    });
    if servers.is_empty() {
        return Err(ServiceError::Refused(
            "no upstream DNS server found in /etc/resolv.conf (or systemd-resolved's list) to \
             forward to in full mode; set upstream.servers in /etc/p2pdns/p2pdns.toml first"
                .into(),
        ));
    }
    Ok(servers)
}

fn apply(
    options: &Options,
    steps: &[Step],
    manifest: &mut Manifest,
    report: &mut String,
) -> Result<(), ServiceError> {
    for step in steps {
        match step {
            Step::Write {
                path,
                contents,
                mode,
            } => {
                let target = options.path(path);
                create_dirs(options, target.parent().expect("absolute path"), manifest)?;
                write_atomic(&target, contents, *mode)?;
                manifest.files.push((path.clone(), sha256(contents)));
                let _ = writeln!(report, "wrote    {path}");
            }
            Step::Replace { path, contents } => {
                let target = options.path(path);
                let backup = format!("{path}{BACKUP_SUFFIX}");
                let backup_target = options.path(&backup);
                // A symlink (resolv.conf managed by resolved) is moved as a symlink.
                if target.symlink_metadata().is_ok() {
                    fs::rename(&target, &backup_target).map_err(io_error("back up", &target))?;
                    manifest.replaced.push((path.clone(), backup.clone()));
                }
                save_manifest(options, manifest)?;
                write_atomic(&target, contents, 0o644)?;
                manifest.files.push((path.clone(), sha256(contents)));
                let _ = writeln!(report, "replaced {path} (original kept as {backup})");
            }
            Step::Run { argv } => {
                if options.live() {
                    run_command(argv)?;
                    let _ = writeln!(report, "ran      {}", argv.join(" "));
                }
            }
        }
        save_manifest(options, manifest)?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents, recording each one created.
fn create_dirs(options: &Options, dir: &Path, manifest: &mut Manifest) -> Result<(), ServiceError> {
    let mut missing = Vec::new();
    let mut cursor = dir;
    while !cursor.exists() {
        missing.push(cursor.to_owned());
        match cursor.parent() {
            Some(parent) => cursor = parent,
            None => break,
        }
    }
    for created in missing.iter().rev() {
        fs::create_dir(created).map_err(io_error("create", created))?;
        let relative = created
            .strip_prefix(&options.root)
            .unwrap_or(created)
            .display()
            .to_string();
        manifest.dirs.push(format!("/{relative}"));
    }
    Ok(())
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("p2pdns-tmp");
    fs::write(&tmp, contents).map_err(io_error("write", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_error("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("write", path))
}

fn save_manifest(options: &Options, manifest: &mut Manifest) -> Result<(), ServiceError> {
    let path = options.path(MANIFEST);
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        create_dirs(options, parent, manifest)?;
    }
    let json = serde_json::to_vec_pretty(manifest).expect("the manifest serializes");
    write_atomic(&path, &json, 0o644)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run_command(argv: &[String]) -> Result<(), ServiceError> {
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| ServiceError::Command {
            command: argv.join(" "),
            message: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ServiceError::Command {
            command: argv.join(" "),
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

fn is_root() -> bool {
    // No libc call in this crate: the owner of /proc/self is the effective user.
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map_or(true, |m| m.uid() == 0)
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

/// getaddrinfo, as every program does.
pub fn resolves(host: &str) -> io::Result<()> {
    (host, 0).to_socket_addrs().map(|_| ())
}

/// Removes what install wrote and restores what it replaced.
pub fn uninstall(options: &Options) -> Result<String, ServiceError> {
    let path = options.path(MANIFEST);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(ServiceError::Refused(format!(
                "p2pdns is not installed here (no {})",
                path.display()
            )));
        }
        Err(error) => return Err(io_error("read", &path)(error)),
    };
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| ServiceError::Manifest {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if options.live() && !options.dry_run && !is_root() {
        return Err(ServiceError::Refused(
            "uninstalling the service changes system files: run it as root (sudo)".into(),
        ));
    }
    let mut report = String::new();
    let dry = options.dry_run;
    if dry {
        let _ = writeln!(report, "would do (dry run, nothing changed):");
    }
    let platform = manifest.platform.unwrap_or_else(Platform::current);
    // Stop the service first, so nothing runs from files about to go.
    if options.live() {
        let commands: &[&[&str]] = match platform {
            Platform::Linux => &[&["systemctl", "disable", "--now", "p2pdns.service"]],
            Platform::Macos => &[&["launchctl", "bootout", "system/net.p2pdns.daemon"]],
        };
        for argv in commands {
            let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
            if dry {
                let _ = writeln!(report, "  run     {}", argv.join(" "));
            } else if let Err(error) = run_command(&argv) {
                // Already stopped or never started: go on removing files.
                let _ = writeln!(report, "note     {error}");
            }
        }
    }
    for (file, hash) in manifest.files.iter().rev() {
        let target = options.path(file);
        let Ok(contents) = fs::read(&target) else {
            continue;
        };
        let ours =
            sha256(&contents) == *hash || String::from_utf8_lossy(&contents).contains(MARKER);
        if !ours {
            let _ = writeln!(
                report,
                "kept     {file}: changed since install and no longer marked as p2pdns's"
            );
            continue;
        }
        if dry {
            let _ = writeln!(report, "  remove  {file}");
        } else {
            fs::remove_file(&target).map_err(io_error("remove", &target))?;
            let _ = writeln!(report, "removed  {file}");
        }
    }
    for (original, backup) in &manifest.replaced {
        if dry {
            let _ = writeln!(report, "  restore {original} from {backup}");
            continue;
        }
        let from = options.path(backup);
        let to = options.path(original);
        if from.symlink_metadata().is_ok() {
            fs::rename(&from, &to).map_err(io_error("restore", &to))?;
            let _ = writeln!(report, "restored {original}");
        }
    }
    if !dry {
        fs::remove_file(&path).map_err(io_error("remove", &path))?;
    }
    for dir in manifest.dirs.iter().rev() {
        let target = options.path(dir);
        if dry {
            let _ = writeln!(report, "  rmdir   {dir} (if empty)");
        } else if fs::remove_dir(&target).is_ok() {
            let _ = writeln!(report, "removed  {dir}/");
        }
    }
    if options.live() && platform == Platform::Linux {
        for argv in [
            vec!["systemctl", "daemon-reload"],
            vec!["systemctl", "try-restart", "systemd-resolved.service"],
        ] {
            let argv: Vec<String> = argv.into_iter().map(str::to_owned).collect();
            if dry {
                let _ = writeln!(report, "  run     {}", argv.join(" "));
            } else if let Err(error) = run_command(&argv) {
                let _ = writeln!(report, "note     {error}");
            }
        }
    }
    Ok(report)
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
            ("plist", LAUNCHD_PLIST),
            ("macOS resolver", MACOS_RESOLVER),
        ] {
            assert!(text.contains(MARKER), "{name} lacks the marker");
        }
        for text in [
            linux_split_config(),
            full_config(&["192.0.2.1".into()]),
            full_resolv_conf(),
        ] {
            assert!(text.contains(MARKER), "{text}");
        }
    }

    #[test]
    fn templates_name_the_binary_path_that_is_replaced() {
        assert!(UNIT.contains(&format!("ExecStart={TEMPLATE_BIN} run")));
        assert!(LAUNCHD_PLIST.contains(MACOS_TEMPLATE_BIN));
    }

    #[test]
    fn the_written_configurations_parse() {
        for text in [
            linux_split_config(),
            full_config(&["192.0.2.1".into(), "2001:db8::1".into()]),
        ] {
            let config: crate::Config =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            config.validate().unwrap();
        }
    }
}
