//! The operating system's own resolver path, end to end: programs that know nothing of p2pdns
//! (glibc's `getent`, `curl`, headless Chromium) resolve a `.p2p` name through the daemon named
//! in `resolv.conf`, while ordinary names still resolve through the upstream.
//!
//! A sealed network namespace gets its own `/etc/netns/NAME/{resolv.conf,nsswitch.conf,hosts}`,
//! which `ip netns exec` mounts over the host's files, so glibc and Chromium inside it ask the
//! daemon on 127.0.0.1:53. Inside it run nsd as the upstream (`example.test.` on 127.0.0.2:53),
//! the daemon forwarding to it, and a web server on 203.0.113.10, a documentation address: the
//! daemon strips loopback and private addresses from `.p2p` answers (DNS rebinding protection),
//! so the published address must look public. It sits on a veth pair whose two ends are both in
//! the namespace (the kernel may lack the `dummy` driver), so Chromium sees a machine that is
//! online, as a user's is: with only `lo` up it reports a failed load as
//! `ERR_INTERNET_DISCONNECTED`, hiding the real error.
//!
//! Needs root (`ip netns`, `/etc/netns`), as CI has. Nothing links the namespace to the host's
//! network. Every process the test starts runs inside the namespace and is killed, and the
//! namespace and its `/etc/netns` directory are removed, also when the test fails. The tools are
//! required, never optional: a missing one fails the test and names the Debian package to
//! install (`iproute2`, `libc-bin`, `nsd`, `curl`, `chromium`, `python3`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::{
    netns,
    process::{Proc, TempDir, describe, random_tag, require_root, run_bounded, tail, tool},
};

const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");

/// Longest wait for nsd, the daemon or the web server to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest run of one client command; Chromium's start-up is the slow one (about 3 s).
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the namespace's addresses to settle ([`Netns::settle`]).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The published name and its address, which the web server listens on.
const SITE_NAME: &str = "site.p2p";
const SITE_ADDR: &str = "203.0.113.10";
const HTTP_PORT: u16 = 8080;
/// A name nobody publishes.
const MISSING_NAME: &str = "missing.p2p";
/// nsd listens on another loopback address, so both servers use the standard port 53.
const UPSTREAM_ADDR: &str = "127.0.0.2";
/// An ordinary name of the upstream's zone and its address.
const UPSTREAM_NAME: &str = "www.example.test";
const UPSTREAM_NAME_ADDR: &str = "192.0.2.80";

/// glibc inside the namespace asks the daemon only, with short retries so a failure is quick.
const RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n";
/// Files, then DNS: no mDNS, systemd-resolved or myhostname module the host may configure.
const NSSWITCH_CONF: &str = "passwd: files\ngroup: files\nshadow: files\ngshadow: files\n\
                             hosts: files dns\nnetworks: files\nprotocols: files\n\
                             services: files\nethers: files\nrpc: files\n";
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// Getent's exit status for a key that was not found.
const GETENT_NOT_FOUND: i32 = 2;

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// The external programs the test drives.
struct Tools {
    ip: PathBuf,
    getent: PathBuf,
    nsd: PathBuf,
    curl: PathBuf,
    chromium: PathBuf,
    python3: PathBuf,
}

impl Tools {
    /// Finds every tool first, so a missing one (or missing root) fails the test before
    /// anything is set up.
    fn find() -> Self {
        require_root("the OS resolver path test (a network namespace, /etc/netns)");
        Self {
            ip: tool("ip", "iproute2"),
            getent: tool("getent", "libc-bin"),
            nsd: tool("nsd", "nsd"),
            curl: tool("curl", "curl"),
            chromium: tool("chromium", "chromium"),
            python3: tool("python3", "python3"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The namespace
// ---------------------------------------------------------------------------------------------

/// A sealed network namespace with its own resolver files in `/etc/netns/NAME`. On drop, every
/// process left in it is killed, then the files and the namespace are removed.
struct Netns {
    name: String,
    ip: PathBuf,
    etc: PathBuf,
    /// HOME of every program run inside, so none sees the user's configuration.
    home: PathBuf,
}

impl Netns {
    fn create(tag: &str, ip: &Path, dir: &TempDir) -> Self {
        let name = format!("p2pdns-os-{tag}");
        let ns = Self {
            etc: Path::new("/etc/netns").join(&name),
            name,
            ip: ip.to_owned(),
            home: dir.subdir("home"),
        };
        netns::ip(&ns.ip, &["netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "link", "add", "site0", "type", "veth", "peer", "name", "site1",
        ]);
        ns.ip(&["addr", "add", &format!("{SITE_ADDR}/32"), "dev", "site0"]);
        ns.ip(&["link", "set", "site0", "up"]);
        ns.ip(&["link", "set", "site1", "up"]);
        ns.settle();

        fs::create_dir_all(&ns.etc)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", ns.etc.display()));
        for (file, text) in [
            ("resolv.conf", RESOLV_CONF),
            ("nsswitch.conf", NSSWITCH_CONF),
            ("hosts", HOSTS),
        ] {
            let path = ns.etc.join(file);
            fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        ns
    }

    /// Runs `ip -n NAME ARGS` (iproute2 acting on the namespace) and fails the test if it
    /// fails; returns what it printed.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&netns::ip(&self.ip, &all).stdout).into_owned()
    }

    /// Waits until the veth pair's IPv6 link-local addresses have passed duplicate address
    /// detection (about a second after the links come up): Chromium takes the address change
    /// that ends it for a network change and fails a page loading then with
    /// ERR_NETWORK_CHANGED, as it did once in a full run here.
    fn settle(&self) {
        let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
        while !self
            .ip(&["-6", "addr", "show", "tentative"])
            .trim()
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the namespace's IPv6 addresses were still tentative after {SETTLE_TIMEOUT:?}: {}",
                self.ip(&["-6", "addr", "show"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command running `program` inside the namespace, with a clean environment.
    fn exec(&self, program: impl AsRef<Path>) -> Command {
        netns::exec(&self.ip, &self.name, &self.home, program)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        netns::remove(&self.ip, std::slice::from_ref(&self.name));
        let _ = fs::remove_dir_all(&self.etc);
    }
}

// ---------------------------------------------------------------------------------------------
// The servers
// ---------------------------------------------------------------------------------------------

/// nsd serving `example.test.` on UPSTREAM_ADDR:53.
fn start_nsd(ns: &Netns, tools: &Tools, dir: &TempDir) -> Proc {
    dir.write(
        "example.test.zone",
        &format!(
            "$ORIGIN example.test.\n\
             $TTL 300\n\
             @    IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60\n\
             @    IN NS  ns1.example.test.\n\
             ns1  IN A   192.0.2.53\n\
             www  IN A   {UPSTREAM_NAME_ADDR}\n"
        ),
    );
    let d = dir.path().display();
    let log = dir.path().join("nsd.log");
    let conf = dir.write(
        "nsd.conf",
        &format!(
            "server:\n  ip-address: {UPSTREAM_ADDR}@53\n  username: \"\"\n  zonesdir: \"{d}\"\n  \
             database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  logfile: \"{}\"\n  server-count: 1\n  \
             verbosity: 1\n\
             remote-control:\n  control-enable: no\n\
             zone:\n  name: example.test\n  zonefile: example.test.zone\n",
            log.display()
        ),
    );
    let mut command = ns.exec(&tools.nsd);
    command.arg("-c").arg(conf).arg("-d");
    let mut nsd = Proc::spawn("nsd", command, dir.path());
    nsd.add_log(log);
    // Logged once the sockets are bound and the zone is loaded.
    nsd.wait_for("nsd started", START_TIMEOUT);
    nsd
}

/// The daemon on 127.0.0.1:53, UDP and TCP, forwarding to nsd, with its P2P node on loopback.
fn start_daemon(ns: &Netns, dir: &TempDir) -> Proc {
    let resolv_conf = dir.write("daemon-resolv.conf", "");
    let config = dir.write(
        "p2pdns.toml",
        &format!(
            "[upstream]\nresolv_conf = {:?}\n\n\
             [p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\ndht_mode = \"server\"\n",
            resolv_conf.display().to_string()
        ),
    );
    let mut command = ns.exec(BIN);
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--dns-listen", "127.0.0.1:53"])
        .args(["--upstream", &format!("{UPSTREAM_ADDR}:53")]);
    let mut daemon = Proc::spawn("p2pdns", command, dir.path());
    daemon.wait_for(" ready", START_TIMEOUT);
    daemon
}

/// Python's web server on SITE_ADDR:HTTP_PORT, serving a page that carries `marker`.
fn start_web(ns: &Netns, tools: &Tools, dir: &TempDir, marker: &str) -> Proc {
    let root = dir.subdir("www");
    let page = root.join("index.html");
    fs::write(
        &page,
        format!(
            "<!DOCTYPE html>\n<html><head><title>site.p2p</title></head>\
             <body><p id=\"marker\">{marker}</p></body></html>\n"
        ),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", page.display()));
    let mut command = ns.exec(&tools.python3);
    command
        .args([
            "-u",
            "-m",
            "http.server",
            "--bind",
            SITE_ADDR,
            "--directory",
        ])
        .arg(root)
        .arg(HTTP_PORT.to_string());
    let mut web = Proc::spawn("http.server", command, dir.path());
    // Printed once the socket is bound.
    web.wait_for("Serving HTTP on", START_TIMEOUT);
    web
}

/// A namespace with nsd and the daemon serving in it, as every test starts. Fields drop in
/// order: the processes, then the namespace (killing what is left in it), then the directory
/// they used.
struct Lab {
    daemon: Proc,
    _nsd: Proc,
    ns: Netns,
    dir: TempDir,
    tools: Tools,
    /// Names this run's namespace and directory.
    tag: String,
}

impl Lab {
    fn start() -> Self {
        let tools = Tools::find();
        let tag = random_tag();
        let dir = TempDir::new(&tag);
        let ns = Netns::create(&tag, &tools.ip, &dir);
        let nsd = start_nsd(&ns, &tools, &dir);
        let daemon = start_daemon(&ns, &dir);
        Self {
            daemon,
            _nsd: nsd,
            ns,
            dir,
            tools,
            tag,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn getent_curl_and_chromium_resolve_a_published_p2p_name_through_resolv_conf() {
    let lab = Lab::start();
    let Lab { ns, dir, tools, .. } = &lab;
    let marker = format!("served-for-site-p2p-{}", lab.tag);
    // Declared after the lab, so it stops before the namespace goes.
    let _web = start_web(ns, tools, dir, &marker);
    let daemon_log = || tail(&lab.daemon.output(), 40);

    let mut publish = ns.exec(BIN);
    publish
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["publish", SITE_NAME, "A", SITE_ADDR]);
    let out = run_bounded(publish, TOOL_TIMEOUT);
    assert!(out.status.success(), "publish failed: {}", describe(&out));

    let getent = |name: &str| {
        let mut command = ns.exec(&tools.getent);
        command.args(["hosts", name]);
        run_bounded(command, TOOL_TIMEOUT)
    };
    let first_address = |out: &Output| {
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .map(str::to_owned)
    };

    // glibc, through resolv.conf, asks the daemon, which answers its own name.
    let out = getent(SITE_NAME);
    assert!(
        out.status.success() && first_address(&out).as_deref() == Some(SITE_ADDR),
        "getent hosts {SITE_NAME}: expected {SITE_ADDR}, got {}\ndaemon log:\n{}",
        describe(&out),
        daemon_log()
    );

    // An ordinary name goes through the daemon to the upstream.
    let out = getent(UPSTREAM_NAME);
    assert!(
        out.status.success() && first_address(&out).as_deref() == Some(UPSTREAM_NAME_ADDR),
        "getent hosts {UPSTREAM_NAME}: expected {UPSTREAM_NAME_ADDR} from nsd, got {}\n\
         daemon log:\n{}",
        describe(&out),
        daemon_log()
    );

    // A name nobody published is not found. (A lone daemon has no peer to ask and answers
    // SERVFAIL; getent exits 2 for that as for NXDOMAIN.)
    let out = getent(MISSING_NAME);
    assert_eq!(
        out.status.code(),
        Some(GETENT_NOT_FOUND),
        "getent hosts {MISSING_NAME}: expected exit status 2 (not found), got {}\ndaemon log:\n{}",
        describe(&out),
        daemon_log()
    );

    let url = format!("http://{SITE_NAME}:{HTTP_PORT}/");

    let mut curl = ns.exec(&tools.curl);
    curl.args(["-sS", "--max-time", "10", "--noproxy", "*", &url]);
    let out = run_bounded(curl, TOOL_TIMEOUT);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&marker),
        "curl {url}: expected the page with {marker:?}, got {}\ndaemon log:\n{}",
        describe(&out),
        daemon_log()
    );

    // Chromium resolves with its built-in DNS client (A and HTTPS queries), which reads the
    // namespace's resolv.conf and nsswitch.conf. It exits 0 even when the page fails to load,
    // and its stderr is full of D-Bus noise, so only stdout is checked. Its look-ups of Google's
    // update and account servers (no flag stops them all) fail in the sealed namespace.
    let profile = dir.subdir("chromium-profile");
    let mut chromium = ns.exec(&tools.chromium);
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-proxy-server",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url);
    let out = run_bounded(chromium, TOOL_TIMEOUT);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&marker),
        "chromium --dump-dom {url}: expected the page with {marker:?}, got {}\ndaemon log:\n{}",
        describe(&out),
        daemon_log()
    );
}

#[test]
fn doctor_sees_the_os_path_the_upstream_and_who_holds_port_53() {
    let lab = Lab::start();
    let Lab {
        ns, dir, daemon, ..
    } = &lab;

    let doctor = |data_dir: &Path| {
        let mut command = ns.exec(BIN);
        command.arg("--data-dir").arg(data_dir).arg("doctor");
        run_bounded(command, TOOL_TIMEOUT)
    };
    let out = doctor(&dir.path().join("data"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = || {
        format!(
            "{}\ndaemon log:\n{}",
            describe(&out),
            tail(&daemon.output(), 40)
        )
    };
    for line in [
        "ok    daemon: p2pdns ",
        "ok    dns: 127.0.0.1:53 answers check.p2pdns.p2p",
        "ok    upstream: 127.0.0.2:53 answers",
        "ok    os resolver: check.p2pdns.p2p resolves through getaddrinfo",
        // The daemon answers the canary itself: Firefox keeps the system resolver.
        "ok    browsers: use-application-dns.net does not resolve",
    ] {
        assert!(text.contains(line), "doctor lacks {line:?}:\n{}", context());
    }
    // A lone daemon has no peer: that is a failure, with a fix, and the exit status says so.
    assert!(
        text.contains("FAIL  p2p: no peer connected"),
        "{}",
        context()
    );
    assert!(
        text.contains("      fix: add an introduction server"),
        "{}",
        context()
    );
    assert_eq!(out.status.code(), Some(1), "{}", context());

    // Asked about a data directory where no daemon runs, it names what holds port 53.
    let out = doctor(&dir.path().join("elsewhere"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("FAIL  daemon: no p2pdns daemon is running"),
        "{}",
        describe(&out)
    );
    assert!(
        text.contains("warn  port 53: taken by ")
            && text.contains("p2pdns (pid ")
            && text.contains(") on 127.0.0.1:53"),
        "{}",
        describe(&out)
    );
}
