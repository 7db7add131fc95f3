//! `p2pdns service install` / `uninstall` into staging roots (`--root`): what each mode writes,
//! and that uninstall leaves the root exactly as it was.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
};

const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");
const MARKER: &str = "Installed by p2pdns; remove with: p2pdns service uninstall";

/// A temporary staging root, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("p2pdns-root-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn read(&self, relative: &str) -> String {
        fs::read_to_string(self.path(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
    }

    fn p2pdns(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--root")
            .arg(&self.0)
            .output()
            .expect("run p2pdns")
    }

    /// `service install --platform linux --binary /usr/bin/p2pdns` (so nothing is copied) with
    /// `extra` flags; it must succeed.
    fn install_linux(&self, extra: &[&str]) {
        let mut args = vec!["service", "install", "--platform", "linux"];
        args.extend(["--binary", "/usr/bin/p2pdns"]);
        args.extend(extra);
        ok(&self.p2pdns(&args));
    }

    /// `service uninstall`, which must succeed and leave the root as `before`: its report.
    fn uninstall_restores(&self, before: &BTreeMap<String, String>) -> String {
        let report = ok(&self.p2pdns(&["service", "uninstall"]));
        assert_eq!(
            &self.snapshot(),
            before,
            "uninstall left the root as it was"
        );
        report
    }

    /// Every path under the root with what it is: file contents and mode, link target, or dir.
    fn snapshot(&self) -> BTreeMap<String, String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let key = path.strip_prefix(base).unwrap().display().to_string();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    out.insert(
                        key,
                        format!("link -> {}", fs::read_link(&path).unwrap().display()),
                    );
                } else if meta.is_dir() {
                    out.insert(key, "dir".into());
                    walk(base, &path, out);
                } else {
                    let bytes = fs::read(&path).unwrap();
                    out.insert(
                        key,
                        format!(
                            "file {:o} {}",
                            meta.permissions().mode(),
                            String::from_utf8_lossy(&bytes)
                        ),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.0, &self.0, &mut out);
        out
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A Debian-like root with systemd-resolved managing resolv.conf.
fn resolved_root() -> Root {
    let root = Root::new();
    root.write(
        "run/systemd/resolve/stub-resolv.conf",
        "nameserver 127.0.0.53\noptions edns0\n",
    );
    root.write(
        "run/systemd/resolve/resolv.conf",
        "nameserver 192.0.2.53\nnameserver 2001:db8::53\n",
    );
    fs::create_dir_all(root.path("etc/systemd/system")).unwrap();
    symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        root.path("etc/resolv.conf"),
    )
    .unwrap();
    root.write("etc/hostname", "box\n");
    root
}

#[test]
fn split_install_writes_the_unit_and_resolved_routing_and_uninstall_restores_the_root() {
    let root = resolved_root();
    let before = root.snapshot();
    let report = ok(&root.p2pdns(&["service", "install", "--platform", "linux"]));
    assert!(report.contains("staged under"), "{report}");

    let unit = root.read("etc/systemd/system/p2pdns.service");
    assert!(unit.contains(MARKER), "{unit}");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/p2pdns run"),
        "{unit}"
    );
    assert!(unit.contains("Type=notify"), "{unit}");
    let copied = fs::read(root.path("usr/local/bin/p2pdns")).unwrap();
    assert_eq!(
        copied,
        fs::read(BIN).unwrap(),
        "the binary is copied as it is"
    );
    let mode = fs::metadata(root.path("usr/local/bin/p2pdns"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let drop_in = root.read("etc/systemd/resolved.conf.d/p2pdns.conf");
    assert!(drop_in.contains("Domains=~p2p"), "{drop_in}");
    assert!(drop_in.contains("DNS=127.0.0.1"), "{drop_in}");
    let anchor = root.read("etc/dnssec-trust-anchors.d/p2p.negative");
    assert!(anchor.lines().any(|l| l.trim() == "p2p"), "{anchor}");
    let config = root.read("etc/p2pdns/p2pdns.toml");
    assert!(
        config.contains("resolv_conf = \"/run/systemd/resolve/resolv.conf\""),
        "{config}"
    );
    // Split mode leaves the system resolver alone.
    assert_eq!(
        fs::read_link(root.path("etc/resolv.conf")).unwrap(),
        Path::new("../run/systemd/resolve/stub-resolv.conf")
    );
    // The written configuration is one the daemon accepts.
    let check = Command::new(BIN)
        .arg("--config")
        .arg(root.path("etc/p2pdns/p2pdns.toml"))
        .args(["run", "--check-config"])
        .output()
        .unwrap();
    ok(&check);

    // A second install is refused while the first stands.
    let error = failed(&root.p2pdns(&["service", "install", "--platform", "linux"]));
    assert!(error.contains("already installed"), "{error}");

    let report = root.uninstall_restores(&before);
    assert!(
        report.contains("removed  /etc/systemd/system/p2pdns.service"),
        "{report}"
    );

    let error = failed(&root.p2pdns(&["service", "uninstall"]));
    assert!(error.contains("not installed"), "{error}");
}

#[test]
fn full_install_points_resolv_conf_at_the_daemon_and_forwards_to_the_previous_servers() {
    let root = Root::new();
    root.write(
        "etc/resolv.conf",
        "# from DHCP\nnameserver 192.0.2.1\nnameserver 198.51.100.1\nsearch lan\n",
    );
    root.write("etc/p2pdns/keep.txt", "the user's own file\n");
    let before = root.snapshot();
    root.install_linux(&["--full"]);

    let resolv = root.read("etc/resolv.conf");
    assert!(resolv.contains(MARKER), "{resolv}");
    assert!(resolv.contains("nameserver 127.0.0.1"), "{resolv}");
    assert!(!resolv.contains("192.0.2.1"), "{resolv}");
    assert_eq!(
        root.read("etc/resolv.conf.p2pdns-backup"),
        "# from DHCP\nnameserver 192.0.2.1\nnameserver 198.51.100.1\nsearch lan\n"
    );
    let config = root.read("etc/p2pdns/p2pdns.toml");
    assert!(
        config.contains("servers = [\"192.0.2.1\", \"198.51.100.1\"]"),
        "{config}"
    );
    // No systemd-resolved in this root: no drop-in.
    assert!(!root.path("etc/systemd/resolved.conf.d").exists());

    root.uninstall_restores(&before);
}

#[test]
fn full_install_over_resolved_takes_its_real_upstreams_not_its_stub() {
    let root = resolved_root();
    let before = root.snapshot();
    root.install_linux(&["--full"]);
    let config = root.read("etc/p2pdns/p2pdns.toml");
    assert!(
        config.contains("servers = [\"192.0.2.53\", \"2001:db8::53\"]"),
        "{config}"
    );
    assert!(
        root.path("etc/systemd/resolved.conf.d/p2pdns.conf")
            .exists()
    );
    // The symlink is kept aside as a symlink and put back.
    assert!(
        fs::symlink_metadata(root.path("etc/resolv.conf.p2pdns-backup"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    root.uninstall_restores(&before);
}

#[test]
fn macos_install_writes_a_launchd_plist_and_etc_resolver() {
    let root = Root::new();
    let before = root.snapshot();
    ok(&root.p2pdns(&[
        "service",
        "install",
        "--platform",
        "macos",
        "--binary",
        "/opt/p2pdns/bin/p2pdns",
    ]));
    let plist = root.path("Library/LaunchDaemons/net.p2pdns.daemon.plist");
    let parsed = Command::new("python3")
        .arg("-c")
        .arg(
            "import plistlib,sys; p = plistlib.load(open(sys.argv[1], 'rb')); \
             print(p['Label']); print(' '.join(p['ProgramArguments']))",
        )
        .arg(&plist)
        .output()
        .expect("run python3 (apt-get install python3)");
    let parsed = ok(&parsed);
    assert_eq!(parsed, "net.p2pdns.daemon\n/opt/p2pdns/bin/p2pdns run\n");
    assert!(!root.path("usr").exists(), "--binary: nothing was copied");
    let resolver = root.read("etc/resolver/p2p");
    assert!(resolver.contains("nameserver 127.0.0.1"), "{resolver}");
    let error = failed(&root.p2pdns(&["service", "install", "--full", "--platform", "macos"]));
    assert!(error.contains("already installed"), "{error}");
    root.uninstall_restores(&before);
    let error = failed(&root.p2pdns(&["service", "install", "--full", "--platform", "macos"]));
    assert!(error.contains("not supported on macOS"), "{error}");
    assert_eq!(root.snapshot(), before, "a refused install writes nothing");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let root = resolved_root();
    let before = root.snapshot();
    let plan = ok(&root.p2pdns(&["service", "install", "--dry-run", "--platform", "linux"]));
    for line in [
        "write   /etc/systemd/system/p2pdns.service",
        "write   /etc/systemd/resolved.conf.d/p2pdns.conf",
        "run     systemctl enable --now p2pdns.service",
    ] {
        assert!(plan.contains(line), "{line} missing from:\n{plan}");
    }
    assert_eq!(root.snapshot(), before);
}

#[test]
fn uninstall_keeps_a_file_the_user_took_over_and_removes_the_rest() {
    let root = resolved_root();
    root.install_linux(&[]);
    // The user rewrote the configuration and dropped the marker: it is theirs now.
    root.write("etc/p2pdns/p2pdns.toml", "[cache]\nmax_entries = 5000\n");
    let report = ok(&root.p2pdns(&["service", "uninstall"]));
    assert!(
        report.contains("kept     /etc/p2pdns/p2pdns.toml"),
        "{report}"
    );
    assert_eq!(
        root.read("etc/p2pdns/p2pdns.toml"),
        "[cache]\nmax_entries = 5000\n"
    );
    assert!(!root.path("etc/systemd/system/p2pdns.service").exists());
    assert!(!root.path("etc/p2pdns/install-manifest.json").exists());
    assert!(
        !root.path("usr/local/bin").exists(),
        "--binary: nothing was copied"
    );
}

#[test]
fn an_existing_configuration_is_never_overwritten() {
    let root = resolved_root();
    root.write(
        "etc/p2pdns/p2pdns.toml",
        "[dns]\nlisten = [\"127.0.0.1:53\"]\n",
    );
    let before = root.snapshot();
    root.install_linux(&[]);
    assert_eq!(
        root.read("etc/p2pdns/p2pdns.toml"),
        "[dns]\nlisten = [\"127.0.0.1:53\"]\n"
    );
    root.uninstall_restores(&before);
}
