//! The service path live: a real systemd with systemd-resolved, booted in a container, where
//! the release binary is installed as a user would (`sudo ./p2pdns service install`, split and
//! then full mode) and every program of the container resolves `.p2p` through it.
//!
//! The container is a Debian bookworm root (`debootstrap --variant=minbase` with systemd,
//! systemd-resolved, dbus, iproute2 and libnss-resolve, cached between runs, see [`rootfs`])
//! under an overlay, so each run starts from the same files and leaves the cache untouched. It
//! boots with `systemd-nspawn --boot --register=no --keep-unit` in a network namespace of its
//! own, whose one veth link leads to a second namespace, the container's LAN, holding what a
//! LAN has: nsd as its DNS server (`example.com.`, handed to resolved by systemd-networkd in the
//! container, as DHCP would) and another p2pdns node, which the container's daemon finds with
//! mDNS. Nothing reaches the host's network or the internet.
//!
//! The commands run inside through `nsenter` into the container's init (`machinectl` and
//! `systemd-run -M` need machined, which `--register=no` leaves out). Checked in both modes:
//! the unit active with `Type=notify` ready when install returns; `check.p2pdns.p2p`, a name
//! published with `p2pdns publish` and an ordinary name through getaddrinfo (`getent`) and
//! `resolvectl query`; `systemctl reload` (which a minimal system without `/bin/kill` must
//! still do, and which empties the daemon's cache); a restart and a reboot that keep the
//! published names, the service up before `nss-lookup.target`; resolved validating DNSSEC and
//! accepting `.p2p` only through install's negative trust anchor; `p2pdns doctor` all ok; the sandbox in force (the daemon's dynamic user,
//! only `CAP_NET_BIND_SERVICE`, a read-only `/etc`); and uninstall leaving `/etc` as it was.
//!
//! Run it as root on a Debian host, after `cargo build --release` (it drives
//! `target/release/p2pdns` and fails if that is older than the sources):
//!
//! ```text
//! cargo build --release && cargo test --test lab systemd_live -- --nocapture
//! ```
//!
//! Host packages: `debootstrap`, `systemd-container` (systemd-nspawn), `util-linux` (unshare,
//! nsenter), `iproute2`, `nsd`, `bind9-dnsutils` (dig). The first run builds the root (about a
//! minute from the package mirror apt uses); the container, namespaces and overlay go when the
//! test ends, also when it fails.

use std::{
    collections::BTreeMap,
    env, fs,
    os::unix::fs::{MetadataExt, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant, SystemTime},
};

use sha2::{Digest, Sha256};

use crate::{
    netns,
    process::{Proc, TempDir, describe, random_tag, require_root, run_bounded, tail, tool},
};

/// The Debian release of the container and what debootstrap adds to its minimal base.
const SUITE: &str = "bookworm";
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-resolved",
    "dbus",
    "iproute2",
    "libnss-resolve",
];
/// Where the built roots are kept between runs; `P2PDNS_LAB_CACHE` moves it.
const CACHE_DIR: &str = "/var/cache/p2pdns-test";
/// Overrides the package mirror otherwise read from apt's sources.
const MIRROR_VAR: &str = "P2PDNS_LAB_MIRROR";

/// The LAN side of the veth (nsd and the other node) and the container's side.
const LAN_ADDR: &str = "10.53.0.1";
const CONTAINER_ADDR: &str = "10.53.0.2";
/// An ordinary name in nsd's zone, its address, and the address it gets for the reload check.
const UPSTREAM_NAME: &str = "www.example.com";
const UPSTREAM_ADDR: &str = "192.0.2.80";
const UPSTREAM_ADDR_CHANGED: &str = "192.0.2.81";
/// The name every p2pdns answers itself, and the name the test publishes.
const CHECK_NAME: &str = "check.p2pdns.p2p";
const PUBLISHED_NAME: &str = "lab.p2p";
const PUBLISHED_ADDR: &str = "203.0.113.7";
/// Where the release binary appears in the container, as a downloaded program would.
const DOWNLOADED_BIN: &str = "/opt/download/p2pdns";
/// Where `service install` copies it.
const INSTALLED_BIN: &str = "/usr/local/bin/p2pdns";
/// systemd's range for `DynamicUser=` users (systemd.exec(5)).
const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;
/// `CAP_NET_BIND_SERVICE` (capability 10) as /proc/PID/status prints a capability set.
const ONLY_NET_BIND_SERVICE: &str = "0000000000000400";

/// Longest debootstrap run (about a minute from a mirror nearby).
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest wait for the container to finish booting.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest run of one command inside (install waits up to 10 s for its own check).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for something that settles after a change (mDNS, resolved's restart).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest wait for nsd and the LAN node to start, and for the container to power off.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// The binary, the mirror and the cached root
// ---------------------------------------------------------------------------------------------

/// `target/release/p2pdns` of the target directory this test was built in. Fails if it is
/// missing or older than a source it is built from: a stale binary would test old code.
fn release_binary() -> PathBuf {
    let built = Path::new(env!("CARGO_BIN_EXE_p2pdns"));
    let target = built
        .parent()
        .and_then(Path::parent)
        .expect("the binary sits in TARGET/PROFILE/");
    let release = target.join("release").join("p2pdns");
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(binary_time) = modified(&release) else {
        panic!(
            "{} is missing: build it with `cargo build --release` first",
            release.display()
        );
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut consider = |path: PathBuf| {
        if let Some(time) = modified(&path)
            && newest.as_ref().is_none_or(|(t, _)| time > *t)
        {
            newest = Some((time, path));
        }
    };
    let mut dirs = vec![root.join("src"), root.join("packaging")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                consider(path);
            }
        }
    }
    consider(root.join("Cargo.toml"));
    consider(root.join("Cargo.lock"));
    if let Some((time, source)) = newest {
        assert!(
            time <= binary_time,
            "{} is older than {}: rebuild it with `cargo build --release`",
            release.display(),
            source.display()
        );
    }
    release
}

/// The Debian mirror apt uses on this machine (the first `deb` source of a main suite in
/// /etc/apt/sources.list or sources.list.d), or `P2PDNS_LAB_MIRROR`.
fn mirror() -> String {
    if let Some(mirror) = env::var_os(MIRROR_VAR) {
        return mirror.to_string_lossy().into_owned();
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    let mut listed: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    listed.sort();
    files.extend(listed);
    files
        .iter()
        .filter_map(|path| Some((path, fs::read_to_string(path).ok()?)))
        .find_map(|(path, text)| {
            if path.extension().is_some_and(|e| e == "sources") {
                deb822_mirror(&text)
            } else {
                one_line_mirror(&text)
            }
        })
        .unwrap_or_else(|| {
            panic!(
                "no Debian mirror found in /etc/apt/sources.list*: set {MIRROR_VAR}=URL (e.g. \
                 http://deb.debian.org/debian)"
            )
        })
}

/// A main suite is one without a `-updates`/`-security` part: its archive holds bookworm.
fn main_suite(suite: &str) -> bool {
    !suite.contains('-') && !suite.contains('/')
}

/// `deb URI SUITE COMPONENTS` lines, `[options]` allowed.
fn one_line_mirror(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().peekable();
        (words.next()? == "deb").then_some(())?;
        if words.peek()?.starts_with('[') {
            while !words.next()?.ends_with(']') {}
        }
        let uri = words.next()?;
        main_suite(words.next()?).then(|| uri.to_owned())
    })
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`), as Debian 12's debian.sources.
fn deb822_mirror(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
            })
        };
        field("Types")?
            .split_whitespace()
            .any(|t| t == "deb")
            .then_some(())?;
        field("Suites")?
            .split_whitespace()
            .any(main_suite)
            .then_some(())?;
        field("URIs")?.split_whitespace().next().map(str::to_owned)
    })
}

/// The container's root: debootstrap's output, built once per machine and kept in
/// [`CACHE_DIR`] under a name made from the suite and the package list, so a change to either
/// builds a new one. It is built in a directory of its own and renamed into place when
/// complete, so an interrupted build is never used and two runs building at once both end
/// with a complete root.
fn rootfs(tools: &Tools) -> PathBuf {
    let cache = env::var_os("P2PDNS_LAB_CACHE").map_or_else(|| CACHE_DIR.into(), PathBuf::from);
    let key = Sha256::digest(format!("{SUITE} minbase {}", PACKAGES.join(",")));
    let root = cache.join(format!("{SUITE}-{}", hex::encode(&key[..6])));
    if root.join("usr/lib/systemd/systemd").exists() {
        return root;
    }
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("cannot create {}: {e}", cache.display()));
    let building = cache.join(format!(".building-{}", random_tag()));
    let mirror = mirror();
    eprintln!(
        "building the container root {} from {mirror} (once per machine)",
        root.display()
    );
    let started = Instant::now();
    let mut command = Command::new(&tools.debootstrap);
    command
        .args([
            "--variant=minbase",
            &format!("--include={}", PACKAGES.join(",")),
        ])
        .arg(SUITE)
        .arg(&building)
        .arg(&mirror);
    let output = run_bounded(command, DEBOOTSTRAP_TIMEOUT);
    if !output.status.success() {
        let _ = fs::remove_dir_all(&building);
        panic!("debootstrap failed: {}", describe(&output));
    }
    if fs::rename(&building, &root).is_err() {
        // Another run finished first: use its root.
        let _ = fs::remove_dir_all(&building);
    }
    eprintln!("built the container root in {:?}", started.elapsed());
    root
}

// ---------------------------------------------------------------------------------------------
// The lab: a LAN namespace, the container's namespace, the container
// ---------------------------------------------------------------------------------------------

/// The host programs the test drives, found first so a missing one fails before set-up.
struct Tools {
    ip: PathBuf,
    debootstrap: PathBuf,
    nspawn: PathBuf,
    unshare: PathBuf,
    nsenter: PathBuf,
    nsd: PathBuf,
    dig: PathBuf,
}

impl Tools {
    fn find() -> Self {
        require_root("the live systemd test (debootstrap, systemd-nspawn, network namespaces)");
        Self {
            ip: tool("ip", "iproute2"),
            debootstrap: tool("debootstrap", "debootstrap"),
            nspawn: tool("systemd-nspawn", "systemd-container"),
            unshare: tool("unshare", "util-linux"),
            nsenter: tool("nsenter", "util-linux"),
            nsd: tool("nsd", "nsd"),
            dig: tool("dig", "bind9-dnsutils"),
        }
    }
}

/// The two network namespaces, joined by a veth pair; removed (with everything left running
/// in them) on drop.
struct Networks {
    ip: PathBuf,
    lan: String,
    container: String,
    home: PathBuf,
}

impl Networks {
    fn create(tools: &Tools, tag: &str, dir: &TempDir) -> Self {
        let nets = Self {
            ip: tools.ip.clone(),
            lan: format!("p2pdns-lan-{tag}"),
            container: format!("p2pdns-ctr-{tag}"),
            home: dir.subdir("home"),
        };
        for name in [&nets.lan, &nets.container] {
            netns::ip(&nets.ip, &["netns", "add", name]);
            netns::ip(&nets.ip, &["-n", name, "link", "set", "lo", "up"]);
        }
        // The container's end stays unconfigured: systemd-networkd inside sets it up.
        netns::ip(
            &nets.ip,
            &[
                "link",
                "add",
                "lab0",
                "netns",
                &nets.container,
                "type",
                "veth",
                "peer",
                "name",
                "lan0",
                "netns",
                &nets.lan,
            ],
        );
        let lan_addr = format!("{LAN_ADDR}/24");
        netns::ip(
            &nets.ip,
            &["-n", &nets.lan, "addr", "add", &lan_addr, "dev", "lan0"],
        );
        netns::ip(&nets.ip, &["-n", &nets.lan, "link", "set", "lan0", "up"]);
        nets
    }

    /// A command running `program` in the LAN namespace.
    fn on_lan(&self, program: impl AsRef<Path>) -> Command {
        netns::exec(&self.ip, &self.lan, &self.home, program)
    }
}

impl Drop for Networks {
    fn drop(&mut self) {
        netns::remove(&self.ip, &[self.lan.clone(), self.container.clone()]);
    }
}

/// nsd serving `example.com.` on the LAN, with `www` at `www_addr`.
fn start_nsd(nets: &Networks, tools: &Tools, dir: &Path, www_addr: &str) -> Proc {
    let zone = format!(
        "$ORIGIN example.com.\n$TTL 300\n\
         @ IN SOA ns1 hostmaster 1 3600 600 86400 60\n\
         @ IN NS ns1\n@ IN A {UPSTREAM_ADDR}\nns1 IN A {LAN_ADDR}\nwww IN A {www_addr}\n"
    );
    fs::write(dir.join("example.com.zone"), zone).expect("write the zone");
    let d = dir.display();
    let conf = format!(
        "server:\n ip-address: {LAN_ADDR}@53\n username: \"\"\n zonesdir: \"{d}\"\n \
         database: \"\"\n pidfile: \"{d}/nsd.pid\"\n xfrdfile: \"{d}/xfrd.state\"\n \
         zonelistfile: \"{d}/zone.list\"\n logfile: \"{d}/nsd.log\"\n server-count: 1\n\
         remote-control:\n control-enable: no\n\
         zone:\n name: example.com\n zonefile: example.com.zone\n"
    );
    fs::write(dir.join("nsd.conf"), conf).expect("write nsd.conf");
    let mut command = nets.on_lan(&tools.nsd);
    command.arg("-d").arg("-c").arg(dir.join("nsd.conf"));
    let mut nsd = Proc::spawn("nsd", command, dir);
    nsd.add_log(dir.join("nsd.log"));
    nsd.wait_for("nsd started", START_TIMEOUT);
    nsd
}

/// Another p2pdns node on the LAN, as a neighbour's machine: the container's daemon finds it
/// with mDNS, and it holds a copy of what the container publishes.
fn start_lan_node(nets: &Networks, binary: &Path, dir: &Path) -> Proc {
    let config = dir.join("lan-node.toml");
    fs::write(
        &config,
        format!("[upstream]\nservers = [\"{LAN_ADDR}:53\"]\n"),
    )
    .expect("write the LAN node's configuration");
    let mut command = nets.on_lan(binary);
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("lan-node"))
        .args(["--dns-listen", "127.0.0.1:53"]);
    let mut node = Proc::spawn("lan-node", command, dir);
    node.wait_for(" ready", START_TIMEOUT);
    node
}

/// A booted container: systemd-nspawn in a private mount namespace holding the overlay it
/// boots from (so the overlay goes with it, however the test ends), in the container's network
/// namespace. Dropping it powers the container off, then kills what is left.
struct Container {
    nspawn: Proc,
    /// The container's init (systemd) as the host sees it.
    leader: u32,
    /// How many times it booted, which names each boot's console log.
    boots: u32,
    /// `unshare` and its arguments: the overlay mounted, then systemd-nspawn.
    launch: Vec<std::ffi::OsString>,
    dir: PathBuf,
    nsenter: PathBuf,
}

impl Container {
    fn boot(tools: &Tools, nets: &Networks, lower: &Path, binary: &Path, dir: &TempDir) -> Self {
        let upper = dir.subdir("upper");
        let work = dir.subdir("work");
        let merged = dir.subdir("merged");
        prepare_upper(&upper);
        let mut launch = vec![tools.unshare.clone().into_os_string()];
        for arg in [
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t overlay overlay -o \"lowerdir=$1,upperdir=$2,workdir=$3\" \"$4\" && \
             shift 4 && exec \"$@\"",
            "sh",
        ] {
            launch.push(arg.into());
        }
        for dir in [lower, &upper, &work, &merged, &tools.nspawn] {
            launch.push(dir.as_os_str().to_owned());
        }
        for arg in [
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=read-only",
            "--machine=p2pdns-lab",
            &format!("--network-namespace-path=/run/netns/{}", nets.container),
            &format!("--bind-ro={}:{DOWNLOADED_BIN}", binary.display()),
            &format!("--directory={}", merged.display()),
        ] {
            launch.push(arg.into());
        }
        let mut container = Self {
            nspawn: Proc::spawn("nspawn-1", Self::command(&launch), dir.path()),
            leader: 0,
            boots: 1,
            launch,
            dir: dir.path().to_owned(),
            nsenter: tools.nsenter.clone(),
        };
        container.leader = container.wait_leader();
        container.wait_booted();
        container
    }

    fn command(launch: &[std::ffi::OsString]) -> Command {
        let mut command = Command::new(&launch[0]);
        command
            .args(&launch[1..])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        command
    }

    /// `systemctl reboot` inside; returns once the container has booted again. systemd-nspawn
    /// exits with 133 when its container reboots (systemd-nspawn@.service restarts it on that
    /// status), so the test starts it again on the same layers, as the service would.
    fn reboot(&mut self) {
        // Its exit status is of no interest: systemd may stop it before it returns.
        let _ = self.run(&["systemctl", "reboot"]);
        let status = self.nspawn.wait_exit(STOP_TIMEOUT);
        assert_eq!(
            status.code(),
            Some(133),
            "systemd-nspawn did not exit for a reboot:\n{}",
            tail(&self.nspawn.output(), 40)
        );
        self.boots += 1;
        let name = format!("nspawn-{}", self.boots);
        self.nspawn = Proc::spawn(&name, Self::command(&self.launch), &self.dir);
        self.leader = self.wait_leader();
        self.wait_booted();
    }

    /// The container's init: the child of systemd-nspawn once it runs systemd.
    fn wait_leader(&mut self) -> u32 {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let parent = self.nspawn.pid().to_string();
        loop {
            let leader = fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .find_map(|e| {
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = fs::read_to_string(e.path().join("stat")).ok()?;
                    let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
                    let ppid = rest.split_whitespace().nth(1)?;
                    (ppid == parent && comm == "systemd").then_some(pid)
                });
            if let Some(pid) = leader {
                return pid;
            }
            if let Some(status) = self.nspawn.try_exit() {
                panic!(
                    "systemd-nspawn exited ({status}):\n{}",
                    self.nspawn.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd did not start within {BOOT_TIMEOUT:?}:\n{}",
                self.nspawn.output()
            );
            thread::sleep(POLL);
        }
    }

    /// Waits for `systemctl is-system-running` to say `running`: every unit of the boot
    /// started. `degraded` fails the test with the failed units.
    fn wait_booted(&self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let output = self.run(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            match state.as_str() {
                "running" => return,
                "degraded" => panic!(
                    "the container booted degraded:\n{}",
                    self.ok(&["systemctl", "--failed", "--no-pager"])
                ),
                _ => assert!(
                    Instant::now() < deadline,
                    "the container did not boot within {BOOT_TIMEOUT:?} ({state}):\n{}",
                    tail(&self.nspawn.output(), 60)
                ),
            }
            thread::sleep(POLL);
        }
    }

    /// Runs `args` inside the container as root, with a clean environment, to completion.
    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(&self.nsenter);
        command
            .arg(format!("--target={}", self.leader))
            .args(["--all", "--"])
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "");
        run_bounded(command, COMMAND_TIMEOUT)
    }

    /// [`Container::run`], which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "`{}` failed in the container: {}",
            args.join(" "),
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `args` until its stdout contains `needle`, for what settles after a change; fails
    /// with the last output after [`SETTLE_TIMEOUT`].
    fn wait_output(&self, args: &[&str], needle: &str) -> String {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let output = self.run(args);
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && stdout.contains(needle) {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not print {needle:?} within {SETTLE_TIMEOUT:?}: {}",
                args.join(" "),
                describe(&output)
            );
            thread::sleep(POLL);
        }
    }

    /// The lab works before anything is installed: networkd configured the veth and gave
    /// resolved the LAN's DNS server, which answers. Fails with networkd's and resolved's view.
    fn assert_lab_network(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while Instant::now() < deadline {
            let output = self.run(&["resolvectl", "query", UPSTREAM_NAME]);
            if String::from_utf8_lossy(&output.stdout).contains(UPSTREAM_ADDR) {
                let dnssec = self.ok(&["resolvectl", "dnssec"]);
                assert!(
                    dnssec.contains("Global: yes") && dnssec.contains("(lab0): no"),
                    "resolved's DNSSEC modes are not the lab's:\n{dnssec}"
                );
                return;
            }
            thread::sleep(POLL);
        }
        let show = |args: &[&str]| format!("$ {}\n{}", args.join(" "), describe(&self.run(args)));
        panic!(
            "the container's resolved cannot resolve {UPSTREAM_NAME} through the LAN:\n{}\n{}\n{}",
            show(&["ip", "addr"]),
            show(&["resolvectl", "status"]),
            show(&["journalctl", "-b", "-u", "systemd-networkd", "--no-pager"])
        );
    }

    /// `systemctl show` of the p2pdns unit: the properties asked for.
    fn unit(&self, properties: &str) -> BTreeMap<String, String> {
        self.ok(&[
            "systemctl",
            "show",
            "--property",
            properties,
            "p2pdns.service",
        ])
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
    }

    /// The unit is running and told systemd it was ready (`Type=notify`: `systemctl start`
    /// returned only after READY=1, and the status text is the daemon's); its MainPID.
    fn assert_ready(&self, after: &str) -> String {
        let unit = self.unit("ActiveState,SubState,Type,NRestarts,StatusText,MainPID");
        let expect = [
            ("ActiveState", "active"),
            ("SubState", "running"),
            ("Type", "notify"),
            ("NRestarts", "0"),
        ];
        for (key, value) in expect {
            assert_eq!(
                unit.get(key).map(String::as_str),
                Some(value),
                "{key} of p2pdns.service after {after}: {unit:?}\n{}",
                self.journal()
            );
        }
        assert!(
            unit["StatusText"].starts_with("answering DNS on 127.0.0.1:53"),
            "the daemon's STATUS= after {after}: {unit:?}"
        );
        unit["MainPID"].clone()
    }

    /// The service's log, for failure messages and for what it says.
    fn journal(&self) -> String {
        let output = self.run(&["journalctl", "-u", "p2pdns", "-o", "cat", "--no-pager"]);
        tail(&String::from_utf8_lossy(&output.stdout), 60)
    }

    /// `name` resolves to `addr` through getaddrinfo (glibc, nss-resolve) and through
    /// `resolvectl query`; with `via_resolv_conf`, also through the DNS servers of
    /// /etc/resolv.conf alone (`getent -s hosts:dns`), as programs that skip NSS do.
    fn assert_resolves(&self, name: &str, addr: &str, via_resolv_conf: bool) {
        self.wait_output(&["getent", "ahostsv4", name], addr);
        self.wait_output(&["resolvectl", "query", "--legend=no", name], addr);
        if via_resolv_conf {
            self.wait_output(&["getent", "-s", "hosts:dns", "ahostsv4", name], addr);
        }
    }

    /// resolved validates in this lab: without install's negative trust anchor it rejects the
    /// unsigned `.p2p` answers (so the checks that pass with it prove it works). The file is
    /// moved away and back, resolved restarted each time.
    fn assert_trust_anchor_needed(&self) {
        let anchor = "/etc/dnssec-trust-anchors.d/p2p.negative";
        let aside = "/etc/dnssec-trust-anchors.d/p2p.negative.lab-aside";
        self.ok(&["mv", anchor, aside]);
        self.ok(&["systemctl", "restart", "systemd-resolved"]);
        let rejected = self.run(&["resolvectl", "query", PUBLISHED_NAME]);
        self.ok(&["mv", aside, anchor]);
        self.ok(&["systemctl", "restart", "systemd-resolved"]);
        assert!(
            !rejected.status.success(),
            "resolved accepted {PUBLISHED_NAME} without the negative trust anchor: it does not \
             validate, and the lab does not test the anchor: {}",
            describe(&rejected)
        );
    }

    /// A reload with a broken configuration file fails, as `nginx -t` or `sshd -t` make it
    /// fail, so the admin sees it; the daemon keeps running (process `pid`) and the journal
    /// names the fault. The file is restored byte for byte afterwards.
    fn assert_broken_config_refused(&self, pid: &str) {
        let config = "/etc/p2pdns/p2pdns.toml";
        let good = self.ok(&["cat", config]);
        self.ok(&["sh", "-c", "echo '[lab_typo]' >> \"$0\"", config]);
        let refused = self.run(&["systemctl", "reload", "p2pdns"]);
        self.ok(&["sh", "-c", "printf %s \"$1\" > \"$0\"", config, &good]);
        assert!(
            !refused.status.success(),
            "`systemctl reload` succeeded with a broken {config}: {}",
            describe(&refused)
        );
        assert_eq!(self.assert_ready("a refused reload"), pid);
        let journal = self.journal();
        assert!(
            journal.contains("lab_typo"),
            "the journal does not name the broken key:\n{journal}"
        );
        self.ok(&["systemctl", "reload", "p2pdns"]);
    }

    /// The addresses `name` has through /etc/resolv.conf's servers, asked once.
    fn through_resolv_conf(&self, name: &str) -> String {
        self.ok(&["getent", "-s", "hosts:dns", "ahostsv4", name])
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// The hardened unit really applies: the daemon runs as a dynamic user owning its state,
    /// with `CAP_NET_BIND_SERVICE` only, no new privileges, a seccomp filter, and a read-only
    /// /etc in its mount namespace.
    fn assert_sandboxed(&self, pid: &str) {
        let status = self.ok(&["cat", &format!("/proc/{pid}/status")]);
        let field = |name: &str| -> Vec<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
                .split_whitespace()
                .collect()
        };
        let uids = field("Uid");
        let uid: u32 = uids[0].parse().expect("a uid");
        assert!(
            DYNAMIC_UIDS.contains(&uid) && uids.iter().all(|u| *u == uids[0]),
            "the daemon's user ids (real, effective, saved, fs) {uids:?} are not one dynamic \
             user's ({DYNAMIC_UIDS:?})"
        );
        for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
            assert_eq!(
                field(set),
                [ONLY_NET_BIND_SERVICE],
                "{set}: the daemon must hold CAP_NET_BIND_SERVICE only\n{status}"
            );
        }
        assert_eq!(field("NoNewPrivs"), ["1"], "{status}");
        assert_eq!(field("Seccomp"), ["2"], "no seccomp filter:\n{status}");
        let state_owner = self.ok(&["stat", "-c", "%u", "/var/lib/private/p2pdns"]);
        assert_eq!(state_owner.trim(), uid.to_string(), "owner of the state");
        let probe = self.run(&["nsenter", "-t", pid, "-m", "touch", "/etc/p2pdns-probe"]);
        assert!(
            !probe.status.success()
                && String::from_utf8_lossy(&probe.stderr).contains("Read-only file system"),
            "/etc must be read-only for the daemon (ProtectSystem=strict): {}",
            describe(&probe)
        );
    }

    /// `p2pdns doctor` exits 0 with every check ok (the LAN node is found by mDNS within
    /// [`SETTLE_TIMEOUT`]).
    fn assert_doctor_ok(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let output = self.run(&["p2pdns", "doctor"]);
            let report = String::from_utf8_lossy(&output.stdout);
            let checks = report.lines().filter(|l| !l.starts_with(' '));
            let green = checks.clone().count() > 0 && checks.clone().all(|l| l.starts_with("ok"));
            if output.status.success() && green {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "p2pdns doctor is not all ok: {}\nthe service's log:\n{}",
                describe(&output),
                self.journal()
            );
            thread::sleep(POLL);
        }
    }

    /// Every file, link and directory under the container's /etc: type, mode, owner, and the
    /// SHA-256 of a file or a link's target.
    fn etc_listing(&self) -> BTreeMap<String, String> {
        let etc = PathBuf::from(format!("/proc/{}/root/etc", self.leader));
        let mut listing = BTreeMap::new();
        let mut dirs = vec![etc.clone()];
        while let Some(dir) = dirs.pop() {
            let entries =
                fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                let meta = fs::symlink_metadata(&path).expect("metadata");
                let owner = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
                let what = if meta.is_symlink() {
                    let target = fs::read_link(&path).expect("a link");
                    format!("link {owner} -> {}", target.display())
                } else if meta.is_dir() {
                    dirs.push(path.clone());
                    format!("dir {owner}")
                } else {
                    let bytes = fs::read(&path).unwrap_or_default();
                    format!("file {owner} {}", hex::encode(Sha256::digest(bytes)))
                };
                let key = path.strip_prefix(&etc).expect("under /etc").display();
                listing.insert(format!("/etc/{key}"), what);
            }
        }
        listing
    }

    /// After an uninstall: /etc is as `before`, entry for entry.
    fn assert_etc_as(&self, before: &BTreeMap<String, String>, mode: &str) {
        let after = self.etc_listing();
        let mut differences = Vec::new();
        for (path, was) in before {
            match after.get(path) {
                None => differences.push(format!("{path}: gone (was {was})")),
                Some(now) if now != was => differences.push(format!("{path}: {was} -> {now}")),
                Some(_) => {}
            }
        }
        for (path, now) in &after {
            if !before.contains_key(path) {
                differences.push(format!("{path}: added ({now})"));
            }
        }
        assert!(
            differences.is_empty(),
            "uninstall after the {mode} install left /etc changed:\n{}",
            differences.join("\n")
        );
    }
}

impl Drop for Container {
    /// Powers the container off as systemd-nspawn does on SIGTERM (init gets SIGRTMIN+3), then
    /// kills what is left; never panics (it may run while a failed test unwinds).
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.nspawn.pid()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && self.nspawn.try_exit().is_none() {
            thread::sleep(POLL);
        }
    }
}

/// What the test adds to the root before boot, in the overlay's upper layer: a
/// systemd-networkd configuration for the veth (address, route and the LAN's DNS server, as
/// DHCP would give), and networkd enabled. resolved validates DNSSEC (`DNSSEC=yes`), so the
/// `.p2p` answers, which nobody signs, pass only through the negative trust anchor that
/// install adds; the LAN's link does not validate (`DNSSEC=no` in its .network file), as the
/// lab has no signed root zone for its ordinary names.
fn prepare_upper(upper: &Path) {
    fs::create_dir_all(upper.join("etc/systemd")).expect("create etc/systemd");
    fs::write(
        upper.join("etc/systemd/resolved.conf"),
        "[Resolve]\nDNSSEC=yes\n",
    )
    .expect("write resolved.conf");
    let network = upper.join("etc/systemd/network");
    fs::create_dir_all(&network).expect("create etc/systemd/network");
    fs::write(
        network.join("10-lab.network"),
        format!(
            "[Match]\nName=lab0\n\n[Network]\nAddress={CONTAINER_ADDR}/24\nGateway={LAN_ADDR}\n\
             DNS={LAN_ADDR}\nDNSSEC=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        ),
    )
    .expect("write the .network file");
    let wants = upper.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).expect("create multi-user.target.wants");
    symlink(
        "/lib/systemd/system/systemd-networkd.service",
        wants.join("systemd-networkd.service"),
    )
    .expect("enable systemd-networkd");
}

/// Everything of one run, dropped in this order: the container, the LAN's programs, the
/// namespaces (and whatever still runs in them), the directory holding the overlay's layers.
struct Lab {
    container: Container,
    lan_node: Proc,
    nsd: Option<Proc>,
    nets: Networks,
    dir: TempDir,
}

impl Lab {
    fn start(tools: &Tools, lower: &Path, binary: &Path) -> Self {
        let tag = random_tag();
        let dir = TempDir::new(&format!("systemd-{tag}"));
        let nets = Networks::create(tools, &tag, &dir);
        let nsd = start_nsd(&nets, tools, &dir.subdir("nsd-1"), UPSTREAM_ADDR);
        let lan_node = start_lan_node(&nets, binary, &dir.subdir("lan"));
        let container = Container::boot(tools, &nets, lower, binary, &dir);
        Self {
            container,
            lan_node,
            nsd: Some(nsd),
            nets,
            dir,
        }
    }

    /// nsd again, now with `www` at `www_addr`; returns once nsd answers it.
    fn restart_nsd(&mut self, tools: &Tools, www_addr: &str) {
        drop(self.nsd.take());
        let dir = self.dir.subdir("nsd-2");
        self.nsd = Some(start_nsd(&self.nets, tools, &dir, www_addr));
        self.wait_lan_dig(UPSTREAM_NAME, &format!("@{LAN_ADDR}"), www_addr, tools);
    }

    /// dig on the LAN asks `server` for `name` until it answers `addr`.
    fn wait_lan_dig(&self, name: &str, server: &str, addr: &str, tools: &Tools) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut dig = self.nets.on_lan(&tools.dig);
            dig.args(["+short", "+tries=1", "+time=2", server, name]);
            let output = run_bounded(dig, COMMAND_TIMEOUT);
            if String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|l| l == addr)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{server} did not answer {name} with {addr} on the LAN: {}\nLAN node:\n{}",
                describe(&output),
                tail(&self.lan_node.output(), 40)
            );
            thread::sleep(POLL);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn service_install_split_and_full_under_a_booted_systemd_with_resolved() {
    let tools = Tools::find();
    let binary = release_binary();
    let lower = rootfs(&tools);
    let started = Instant::now();
    let mut lab = Lab::start(&tools, &lower, &binary);
    eprintln!("container booted in {:?}", started.elapsed());
    // The lab itself works: resolved has the LAN's DNS server from networkd.
    let c = &lab.container;
    c.assert_lab_network();
    let before = c.etc_listing();

    port_53_taken(&lab.container);
    lab.container.assert_etc_as(&before, "failed");

    split_mode(&mut lab, &tools);
    lab.container.assert_etc_as(&before, "split");
    eprintln!("split mode done at {:?}", started.elapsed());

    full_mode(&mut lab, &tools);
    lab.container.assert_etc_as(&before, "full");
    eprintln!("full mode done at {:?}", started.elapsed());
}

/// Another server holds 127.0.0.1:53 (as dnsmasq or unbound may): install fails naming that
/// cause and how to go on, and uninstall takes everything back, leaving no failed unit.
fn port_53_taken(c: &Container) {
    // systemd itself binds the port, for a transient socket unit.
    c.ok(&[
        "systemd-run",
        "--unit=lab-squatter",
        "--socket-property=ListenDatagram=127.0.0.1:53",
        "/bin/true",
    ]);
    let failed = c.run(&[DOWNLOADED_BIN, "service", "install"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success()
            && stderr.contains("the p2pdns service did not start: failed to bind DNS UDP socket")
            && stderr.contains("address already in use")
            && stderr.contains("p2pdns service uninstall"),
        "install with port 53 taken must fail naming the cause: {}",
        describe(&failed)
    );
    c.ok(&["systemctl", "stop", "lab-squatter.socket"]);
    c.ok(&[INSTALLED_BIN, "service", "uninstall"]);
    let unit = c.unit("LoadState,ActiveState");
    assert_eq!(
        (unit["LoadState"].as_str(), unit["ActiveState"].as_str()),
        ("not-found", "inactive"),
        "uninstall left a failed p2pdns.service behind:\n{}",
        c.ok(&["systemctl", "--failed", "--no-pager"])
    );
}

/// `service install` (split DNS through resolved) of the downloaded binary, everything a user
/// does with it (a reload, a restart, a reboot), and `service uninstall`.
fn split_mode(lab: &mut Lab, tools: &Tools) {
    let c = &lab.container;
    let report = c.ok(&[DOWNLOADED_BIN, "service", "install"]);
    for line in [
        &format!("wrote    {INSTALLED_BIN}"),
        &format!("check    {CHECK_NAME} resolves through the system resolver: ok"),
        "check    example.com resolves: ok",
    ] {
        assert!(
            report.contains(line),
            "install did not say {line:?}:\n{report}"
        );
    }
    let pid = c.assert_ready("install");

    c.assert_resolves(CHECK_NAME, "127.0.0.1", true);
    c.assert_resolves(UPSTREAM_NAME, UPSTREAM_ADDR, true);
    c.ok(&["p2pdns", "publish", PUBLISHED_NAME, "A", PUBLISHED_ADDR]);
    c.assert_resolves(PUBLISHED_NAME, PUBLISHED_ADDR, true);
    c.assert_trust_anchor_needed();
    // The neighbour found over mDNS resolves it too: it went out to the network.
    lab.wait_lan_dig(PUBLISHED_NAME, "@127.0.0.1", PUBLISHED_ADDR, tools);
    c.assert_sandboxed(&pid);

    // Reload without /bin/kill: ExecReload is the binary itself, in the unit's sandbox.
    assert!(
        c.run(&["test", "-e", "/bin/kill"]).status.code() == Some(1),
        "the container has /bin/kill: the reload check would prove nothing"
    );
    c.ok(&["systemctl", "reload", "p2pdns"]);
    assert_eq!(c.assert_ready("reload"), pid, "reload restarted the daemon");
    let journal = c.journal();
    assert!(
        journal.contains("reloaded: cache emptied, upstreams re-read"),
        "the daemon did not log its reload:\n{journal}"
    );

    c.assert_broken_config_refused(&pid);

    c.ok(&["systemctl", "restart", "p2pdns"]);
    let restarted = c.assert_ready("restart");
    assert_ne!(restarted, pid, "restart kept the old process");
    let names = c.ok(&["p2pdns", "names"]);
    assert!(
        names.contains(&format!("{PUBLISHED_NAME}. ")),
        "the restart lost the published name:\n{names}"
    );
    c.ok(&["resolvectl", "flush-caches"]);
    c.assert_resolves(PUBLISHED_NAME, PUBLISHED_ADDR, false);

    // After a reboot the service is up before nss-lookup.target, with its names.
    lab.container.reboot();
    let c = &lab.container;
    c.assert_ready("reboot");
    let started = |unit: &str| -> u64 {
        let key = "ActiveEnterTimestampMonotonic";
        let value = c.ok(&["systemctl", "show", "--value", "--property", key, unit]);
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key} of {unit}: {value:?}"))
    };
    assert!(
        started("p2pdns.service") <= started("nss-lookup.target"),
        "nss-lookup.target was reached before p2pdns was ready"
    );
    c.assert_resolves(PUBLISHED_NAME, PUBLISHED_ADDR, false);
    c.assert_doctor_ok();

    let report = c.ok(&["p2pdns", "service", "uninstall"]);
    assert!(
        report.contains(&format!("removed  {INSTALLED_BIN}")),
        "{report}"
    );
    assert_eq!(c.unit("LoadState")["LoadState"], "not-found");
    let gone = c.run(&["getent", "ahostsv4", CHECK_NAME]);
    assert_eq!(
        gone.status.code(),
        Some(2),
        "{CHECK_NAME} still resolves after uninstall: {}",
        describe(&gone)
    );
}

/// `service install --full`: /etc/resolv.conf points at the daemon, which forwards to the
/// servers resolved had; `systemctl reload` empties its cache.
fn full_mode(lab: &mut Lab, tools: &Tools) {
    let c = &lab.container;
    let report = c.ok(&[DOWNLOADED_BIN, "service", "install", "--full"]);
    assert!(report.contains("replaced /etc/resolv.conf"), "{report}");
    let resolv_conf = c.ok(&["cat", "/etc/resolv.conf"]);
    assert!(
        resolv_conf.contains("nameserver 127.0.0.1\n"),
        "{resolv_conf}"
    );
    let config = c.ok(&["cat", "/etc/p2pdns/p2pdns.toml"]);
    assert!(
        config.contains(&format!("servers = [\"{LAN_ADDR}\"]")),
        "full mode must forward to resolved's upstream, the LAN's server:\n{config}"
    );
    let pid = c.assert_ready("install --full");
    c.assert_resolves(CHECK_NAME, "127.0.0.1", true);
    c.assert_resolves(UPSTREAM_NAME, UPSTREAM_ADDR, true);
    // Published before the uninstall: the state directory outlives it, as with apt remove.
    c.assert_resolves(PUBLISHED_NAME, PUBLISHED_ADDR, true);
    c.assert_sandboxed(&pid);
    c.assert_doctor_ok();

    // The answer is now in the daemon's cache; the LAN's server changes it.
    assert_eq!(c.through_resolv_conf(UPSTREAM_NAME), UPSTREAM_ADDR);
    lab.restart_nsd(tools, UPSTREAM_ADDR_CHANGED);
    let c = &lab.container;
    assert_eq!(
        c.through_resolv_conf(UPSTREAM_NAME),
        UPSTREAM_ADDR,
        "the daemon did not cache the answer: the reload check would prove nothing"
    );
    c.ok(&["systemctl", "reload", "p2pdns"]);
    // Polled: `systemctl reload` returns once ExecReload has sent SIGHUP, not once the daemon
    // has reloaded (systemd 252 ends the reload job when ExecReload exits). Within the TTL
    // (300 s), only the reload explains the new answer.
    c.wait_output(
        &["getent", "-s", "hosts:dns", "ahostsv4", UPSTREAM_NAME],
        UPSTREAM_ADDR_CHANGED,
    );
    assert_eq!(c.assert_ready("reload"), pid, "reload restarted the daemon");

    let report = c.ok(&["p2pdns", "service", "uninstall"]);
    assert!(report.contains("restored /etc/resolv.conf"), "{report}");
}
