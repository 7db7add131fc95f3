//! The packaging files, checked by the programs that read them, and the Debian package, built,
//! installed and purged on this machine.
//!
//! - systemd units: `systemd-analyze verify` (copies whose ExecStart runs the freshly built
//!   binary, since /usr/bin/p2pdns is not installed here) and `systemd-analyze security`;
//! - the launchd plist: Python's `plistlib`, the same parser family as macOS's;
//! - the resolved drop-in, the DNSSEC negative trust anchor and /etc/resolver/p2p: by the
//!   syntax rules of systemd-resolved and macOS configd;
//! - every file: the marker line `p2pdns service uninstall` looks for;
//! - the .deb: `cargo deb --no-build` on the debug binary, `dpkg-deb --info/--contents`, then
//!   `dpkg -i`, `p2pdns --version` and `dpkg --purge`, after which nothing of it may remain.
//!
//! The tools are required, never optional: a missing one fails the test and says how to
//! install it (`apt-get install systemd python3 binutils`, `cargo install cargo-deb`).
//! The package test needs root and refuses to run when a p2pdns package, or any file it would
//! install, is already there.

use std::{
    collections::BTreeSet,
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::process::require_root;

const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The line `p2pdns service uninstall` recognises its files by.
const MARKER: &str = "Installed by p2pdns; remove with: p2pdns service uninstall";

/// Every packaging file, and the comment character its format uses.
const PACKAGING_FILES: [(&str, &str); 6] = [
    ("packaging/systemd/p2pdns.service", "#"),
    ("packaging/systemd/p2pdns-intro.service", "#"),
    ("packaging/systemd/resolved-p2pdns.conf", "#"),
    // resolved reads only ';' as a comment in trust anchor files.
    ("packaging/systemd/p2p.negative", ";"),
    ("packaging/macos/net.p2pdns.daemon.plist", "<!--"),
    ("packaging/macos/resolver-p2p", "#"),
];

const UNITS: [&str; 2] = ["p2pdns.service", "p2pdns-intro.service"];

/// The cargo-deb release the tests and CI are known to work with.
const CARGO_DEB_INSTALL: &str = "cargo install cargo-deb --locked --version 3.8.0";

/// Longest wait for another dpkg or apt run on this machine to release dpkg's lock.
const DPKG_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// The files the package installs, and nothing else.
const PACKAGE_FILES: [&str; 9] = [
    "/usr/bin/p2pdns",
    "/usr/lib/systemd/system/p2pdns-intro.service",
    "/usr/lib/systemd/system/p2pdns.service",
    "/usr/share/doc/p2pdns/README.md",
    "/usr/share/doc/p2pdns/copyright",
    "/usr/share/doc/p2pdns/examples/grafana-dashboard.json",
    "/usr/share/doc/p2pdns/examples/p2pdns.toml",
    "/usr/share/p2pdns/p2p.negative",
    "/usr/share/p2pdns/resolved-p2pdns.conf",
];

/// Files that would mean the package turned something on by itself: an enabled unit, a
/// system-wide configuration, split DNS for systemd-resolved.
const NOT_ACTIVATED: [&str; 5] = [
    "/etc/systemd/system/multi-user.target.wants/p2pdns.service",
    "/etc/systemd/system/multi-user.target.wants/p2pdns-intro.service",
    "/etc/p2pdns/p2pdns.toml",
    "/etc/systemd/resolved.conf.d/p2pdns.conf",
    "/etc/dnssec-trust-anchors.d/p2p.negative",
];

/// The enablement state deb-systemd-helper keeps for each unit, and the mask it sets on
/// removal; a purge must remove all of them.
const HELPER_STATE: [&str; 6] = [
    "/var/lib/systemd/deb-systemd-helper-enabled/p2pdns.service.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-enabled/p2pdns-intro.service.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-masked/p2pdns.service",
    "/var/lib/systemd/deb-systemd-helper-masked/p2pdns-intro.service",
    "/etc/systemd/system/p2pdns.service",
    "/etc/systemd/system/p2pdns-intro.service",
];

/// A program this test needs, found on PATH, or a failure naming how to install it.
fn tool(name: &str, install: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed; install it with: {install}"))
}

/// Runs `command` to completion, failing the test if it cannot start.
fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs `command` and returns its stdout, failing the test (with everything it printed) unless
/// it exits 0.
fn run(command: &mut Command) -> String {
    let out = output(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tool output is UTF-8")
}

fn read(relative: &str) -> String {
    let path = Path::new(ROOT).join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The lines of a file that are neither blank nor comments starting with `comment`.
fn settings<'a>(text: &'a str, comment: &str) -> Vec<&'a str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(comment))
        .collect()
}

/// A directory under Cargo's per-test temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "packaging-{label}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Copies of both units in `dir`, started from the built binary instead of /usr/bin/p2pdns.
fn units_for_this_build(dir: &Path) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|unit| {
            let text = read(&format!("packaging/systemd/{unit}"));
            let exec = "\nExecStart=/usr/bin/p2pdns ";
            assert!(
                text.contains(exec),
                "{unit} must start /usr/bin/p2pdns, where the package installs it"
            );
            // Every command of the unit (ExecStart, ExecReload) runs the binary of this build.
            let copy = dir.join(unit);
            fs::write(
                &copy,
                text.replace("=/usr/bin/p2pdns ", &format!("={BIN} ")),
            )
            .unwrap();
            copy
        })
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify_without_warnings() {
    let analyze = tool("systemd-analyze", "apt-get install systemd");
    let dir = TempDir::new("verify");
    let units = units_for_this_build(&dir.0);

    let out = output(
        Command::new(&analyze)
            .arg("verify")
            .arg("--man=no")
            .args(&units),
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys and bad values are warnings with exit code 0; they name the unit file.
    // Complaints about other units installed on this machine are not ours to fix.
    let ours: Vec<&str> = printed.lines().filter(|l| l.contains("p2pdns")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}):\n{printed}",
        out.status
    );
}

#[test]
fn units_keep_their_sandbox() {
    let analyze = tool("systemd-analyze", "apt-get install systemd");
    let dir = TempDir::new("security");
    for unit in units_for_this_build(&dir.0) {
        // Exposure is scored 0 (locked down) to 10 (unprotected), the threshold in tenths:
        // both units score under 2 today (1.9 and 1.5 with systemd 252). Dropping the system
        // call filter (3.2), or the dynamic user with the read-only system (2.4), fails.
        let out = output(
            Command::new(&analyze)
                .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
                .arg(&unit),
        );
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} is less confined than it was ({}):\n{}\n{}",
            unit.display(),
            out.status,
            report
                .lines()
                .filter(|l| l.starts_with('✗'))
                .collect::<Vec<_>>()
                .join("\n"),
            report.lines().last().unwrap_or_default()
        );
    }
}

#[test]
fn units_run_the_documented_commands_under_a_transient_user() {
    let resolver = read("packaging/systemd/p2pdns.service");
    let resolver = settings(&resolver, "#");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/p2pdns run",
        "ExecReload=/usr/bin/p2pdns reload --pid $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=p2pdns",
        "RuntimeDirectory=p2pdns",
        "Environment=P2PDNS_DATA_DIR=/var/lib/p2pdns",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "Before=nss-lookup.target",
        "Wants=nss-lookup.target",
    ] {
        assert!(resolver.contains(&line), "p2pdns.service lacks {line}");
    }

    let intro = read("packaging/systemd/p2pdns-intro.service");
    let intro = settings(&intro, "#");
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/p2pdns intro",
        "DynamicUser=yes",
        "StateDirectory=p2pdns-intro",
        "Environment=P2PDNS_DATA_DIR=/var/lib/p2pdns-intro",
        // Empty: no capability at all.
        "CapabilityBoundingSet=",
    ] {
        assert!(intro.contains(&line), "p2pdns-intro.service lacks {line}");
    }
    assert!(
        !intro.iter().any(|l| l.contains("CAP_")),
        "the introduction server needs no capability"
    );
}

#[test]
fn launchd_plist_parses_and_runs_the_daemon() {
    let python = tool("python3", "apt-get install python3");
    let path = Path::new(ROOT).join("packaging/macos/net.p2pdns.daemon.plist");
    let json = run(Command::new(python)
        .arg("-c")
        .arg(
            "import json, plistlib, sys\n\
             print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        )
        .arg(&path));
    let plist: serde_json::Value = serde_json::from_str(&json).expect("python printed JSON");

    assert_eq!(plist["Label"], "net.p2pdns.daemon");
    assert_eq!(
        plist["ProgramArguments"],
        serde_json::json!(["/usr/local/bin/p2pdns", "run"])
    );
    assert_eq!(plist["RunAtLoad"], true);
    assert_eq!(plist["KeepAlive"], true);
    let data_dir = plist["EnvironmentVariables"]["P2PDNS_DATA_DIR"]
        .as_str()
        .expect("P2PDNS_DATA_DIR is set");
    assert!(data_dir.starts_with('/'), "data dir {data_dir} is absolute");
    assert_eq!(plist["StandardErrorPath"], "/usr/local/var/log/p2pdns.log");
}

#[test]
fn every_packaging_file_carries_the_uninstall_marker() {
    for (file, comment) in PACKAGING_FILES {
        let text = read(file);
        let mut lines = text.lines();
        // The XML declaration must stay first in a plist; the marker comment follows it.
        let line = if comment == "<!--" {
            assert!(lines.next().is_some_and(|l| l.starts_with("<?xml ")));
            format!("<!-- {MARKER} -->")
        } else {
            format!("{comment} {MARKER}")
        };
        assert_eq!(lines.next(), Some(line.as_str()), "marker line of {file}");
        assert!(text.is_ascii(), "{file} is plain ASCII");
    }
}

#[test]
fn split_dns_files_send_p2p_to_the_daemon() {
    let dropin = read("packaging/systemd/resolved-p2pdns.conf");
    assert_eq!(
        settings(&dropin, "#"),
        [
            "[Resolve]",
            "DNS=127.0.0.1",
            "Domains=~p2p ~use-application-dns.net"
        ]
    );

    // resolved reads one domain per line and skips only ';' comments: a '#' line would be
    // taken for a (bad) domain name and logged as an error at every start.
    let anchor = read("packaging/systemd/p2p.negative");
    let domains = settings(&anchor, ";");
    assert_eq!(domains.first(), Some(&"p2p"));
    assert!(
        domains
            .iter()
            .all(|d| d.split('.').all(|label| !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))),
        "one domain name per line: {domains:?}"
    );
    // Any negative trust anchor file switches off resolved's built-in ones (private reverse
    // zones, .local, .lan, .internal...), so the file must carry them along.
    for builtin in [
        "10.in-addr.arpa",
        "168.192.in-addr.arpa",
        "local",
        "lan",
        "home.arpa",
    ] {
        assert!(domains.contains(&builtin), "p2p.negative lacks {builtin}");
    }

    let resolver = read("packaging/macos/resolver-p2p");
    assert_eq!(
        settings(&resolver, "#"),
        ["nameserver 127.0.0.1", "port 53"]
    );
}

/// The installed package: purged when dropped, so a failing test leaves the machine as it was.
struct Installed;

impl Installed {
    fn purge(self) {
        std::mem::forget(self);
        dpkg(&["--purge", "p2pdns"]).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Err(e) = dpkg(&["--purge", "p2pdns"]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Runs dpkg with `args`, waiting while another dpkg or apt run holds its lock.
fn dpkg(args: &[&str]) -> Result<String, String> {
    let deadline = Instant::now() + DPKG_LOCK_TIMEOUT;
    loop {
        let out = output(Command::new(tool("dpkg", "apt-get install dpkg")).args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if !stderr.contains("lock") || Instant::now() > deadline {
            return Err(format!(
                "dpkg {} failed ({}):\n{}{stderr}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn exists(path: &str) -> bool {
    // symlink_metadata: a mask is a link to /dev/null, a dangling enablement link still counts.
    fs::symlink_metadata(path).is_ok()
}

/// Builds the .deb from the debug binary of this test run, in `dir`.
fn build_deb(dir: &Path) -> PathBuf {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let version = output(Command::new(&cargo).args(["deb", "--version"]));
    assert!(
        version.status.success(),
        "cargo-deb is not installed ({}); install it with: {CARGO_DEB_INSTALL}",
        String::from_utf8_lossy(&version.stderr).trim()
    );
    // cargo-deb strips the binary (the debug build is ~200 MB, ~35 MB stripped).
    tool("strip", "apt-get install binutils");

    // cargo-deb packages target/release/p2pdns of the target directory it is given: a fresh one
    // holding this run's binary, so nothing is built and the shared target/ is left alone.
    let target = dir.join("target");
    let release = target.join("release");
    fs::create_dir_all(&release).unwrap();
    let packaged = release.join("p2pdns");
    if fs::hard_link(BIN, &packaged).is_err() {
        fs::copy(BIN, &packaged).expect("copy the binary to package");
    }
    let deb = dir.join("p2pdns.deb");
    run(Command::new(&cargo)
        .args(["deb", "--no-build", "--offline", "--strip", "--fast"])
        .arg("--manifest-path")
        .arg(Path::new(ROOT).join("Cargo.toml"))
        .arg("--output")
        .arg(&deb)
        .env("CARGO_TARGET_DIR", &target));
    deb
}

/// `./usr/bin/p2pdns` etc.: the non-directory members of the package, from its listing.
fn package_files(contents: &str) -> BTreeSet<String> {
    contents
        .lines()
        .filter(|line| !line.starts_with('d'))
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(|path| path.trim_start_matches('.').to_owned())
        .collect()
}

#[test]
fn deb_installs_nothing_active_and_purges_cleanly() {
    let dpkg_deb = tool("dpkg-deb", "apt-get install dpkg");
    require_root("installing the Debian package");
    assert!(
        dpkg(&["-s", "p2pdns"]).is_err(),
        "a p2pdns package is installed on this machine; this test installs and purges its own \
         build, so it stops here instead of replacing yours (remove it with `dpkg --purge p2pdns`)"
    );
    // dpkg would silently overwrite files no package owns, and the purge would then delete them.
    for path in PACKAGE_FILES {
        assert!(
            !exists(path),
            "{path} exists but belongs to no package; installing would overwrite it"
        );
    }
    let active_before: Vec<bool> = NOT_ACTIVATED.iter().map(|p| exists(p)).collect();

    let dir = TempDir::new("deb");
    let deb = build_deb(&dir.0);

    let info = run(Command::new(&dpkg_deb).arg("--info").arg(&deb));
    for field in [
        "Package: p2pdns".to_owned(),
        format!("Version: {VERSION}-1"),
        "Section: net".to_owned(),
        "Priority: optional".to_owned(),
    ] {
        assert!(
            info.lines().any(|l| l.trim() == field),
            "{field} in:\n{info}"
        );
    }
    let depends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends in:\n{info}"));
    assert!(
        depends.contains("libc6") && !depends.contains("procps"),
        "Depends: {depends}"
    );
    let words: Vec<&str> = info.split_whitespace().collect();
    assert!(
        words
            .join(" ")
            .contains("is `p2pdns service install`'s job"),
        "the description tells how to turn split DNS on:\n{info}"
    );
    // Installing must not start the resolver: port 53 may belong to another server. Starting
    // on upgrade is limited to units that were running (try-restart).
    let postinst = run(Command::new(&dpkg_deb)
        .arg("--info")
        .arg(&deb)
        .arg("postinst"));
    for unit in UNITS {
        assert!(
            postinst.contains(&format!("deb-systemd-helper update-state {unit}")),
            "postinst records {unit}:\n{postinst}"
        );
    }
    for start in ["deb-systemd-invoke start", "deb-systemd-invoke restart"] {
        assert!(!postinst.contains(start), "postinst runs {start}");
    }

    let contents = run(Command::new(&dpkg_deb).arg("--contents").arg(&deb));
    assert_eq!(
        package_files(&contents),
        PACKAGE_FILES.map(String::from).into(),
        "package contents:\n{contents}"
    );
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/p2pdns")),
        "the binary is executable:\n{contents}"
    );

    // Inside a container without systemd the maintainer scripts must succeed all the same.
    let installed = Installed;
    dpkg(&["-i", deb.to_str().expect("temporary path is UTF-8")]).unwrap_or_else(|e| panic!("{e}"));

    let version = run(Command::new("/usr/bin/p2pdns").arg("--version"));
    assert_eq!(version.trim(), format!("p2pdns {VERSION}"));
    for unit in UNITS {
        let shipped = fs::read_to_string(format!("/usr/lib/systemd/system/{unit}")).unwrap();
        assert_eq!(
            shipped,
            read(&format!("packaging/systemd/{unit}")),
            "{unit} is installed as written"
        );
    }
    for (path, before) in NOT_ACTIVATED.iter().zip(&active_before) {
        assert!(
            *before || !exists(path),
            "installing the package created {path}"
        );
    }
    let listed = dpkg(&["-L", "p2pdns"]).unwrap_or_else(|e| panic!("{e}"));
    let owned: Vec<&str> = listed.lines().filter(|p| !Path::new(p).is_dir()).collect();
    assert_eq!(owned.len(), PACKAGE_FILES.len(), "dpkg -L:\n{listed}");

    installed.purge();

    assert!(dpkg(&["-s", "p2pdns"]).is_err(), "p2pdns is still known");
    for path in owned.iter().chain(&HELPER_STATE) {
        assert!(!exists(path), "{path} is left after the purge");
    }
}
