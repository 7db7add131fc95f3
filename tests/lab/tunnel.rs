//! Tunnels across real NATs (issue 12, docs/PROTOCOL.md section 9), in the lab of [`crate::nat`]:
//! a web server bound to its host's own 127.0.0.1 behind one NAT, exposed under a `.p2p` name,
//! opened by name from behind another NAT with the programs a user has (curl, Chromium, a
//! Python socket client), each resolving through its namespace's resolv.conf and the daemon on
//! 127.0.0.1:53.
//!
//! Each host namespace gets `/etc/netns/NAME/{resolv.conf,nsswitch.conf,hosts}`, which
//! `ip netns exec` mounts over the machine's files; they are removed with the lab, also when a
//! test fails. Needs root and the Debian packages iproute2, nftables, python3, bind9-dnsutils,
//! curl and chromium.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    nat::{Daemon, Home, Intro, Lab, Nat, Ns, TOOL_TIMEOUT, Tools},
    process::{Proc, describe, run_bounded, tail, tool},
};

/// The web server's port on its host's own loopback.
pub(crate) const WEB_PORT: u16 = 8080;
/// Size of the file downloaded through the tunnel.
const BIG_FILE: usize = 20 << 20;
/// Longest wait for a tunnelled name to resolve or a download to finish.
pub(crate) const TUNNEL_TIMEOUT: Duration = Duration::from_secs(60);
/// The page's marker text.
pub(crate) const MARKER: &str = "served from behind a home router";

/// Resolver files for a lab namespace: `ip netns exec` mounts them over `/etc`. Removed on drop.
pub(crate) struct ResolverFiles(PathBuf);

impl ResolverFiles {
    pub(crate) fn new(ns: &Ns) -> Self {
        let etc = Path::new("/etc/netns").join(&ns.name);
        fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("cannot create {}: {e}", etc.display()));
        let files = [
            (
                "resolv.conf",
                "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
            ),
            ("nsswitch.conf", "hosts: files dns\n"),
            ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ];
        for (file, text) in files {
            fs::write(etc.join(file), text).unwrap_or_else(|e| panic!("cannot write {file}: {e}"));
        }
        Self(etc)
    }
}

impl Drop for ResolverFiles {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A directory with `index.html` (holding [`MARKER`]) and `big.bin` ([`BIG_FILE`] bytes of
/// a fixed pseudo-random sequence); returns it and the SHA-256 of `big.bin`.
pub(crate) fn web_root(lab: &Lab) -> (PathBuf, String) {
    let root = lab.dir.subdir("www");
    fs::write(
        root.join("index.html"),
        format!("<html><body><p>{MARKER}</p></body></html>\n"),
    )
    .unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..BIG_FILE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    (root, hex(&Sha256::digest(&big)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Python's web server on `ns`'s own 127.0.0.1:[`WEB_PORT`], serving `root`.
pub(crate) fn start_web(tools: &Tools, lab: &Lab, ns: &Ns, root: &Path) -> Proc {
    let mut command = ns.exec(&tools.python3);
    command
        .args(["-u", "-m", "http.server", &WEB_PORT.to_string()])
        .args(["--bind", "127.0.0.1", "--directory"])
        .arg(root);
    let mut web = Proc::spawn("web", command, lab.dir.path());
    web.wait_until("serve HTTP", Duration::from_secs(20), |out, _| {
        out.contains("Serving HTTP")
    });
    web
}

/// A line-echo server on `ns`'s own 127.0.0.1:`port`.
fn start_echo(tools: &Tools, lab: &Lab, ns: &Ns, port: u16) -> Proc {
    let script = format!(
        "import socketserver\n\
         class H(socketserver.StreamRequestHandler):\n\
         \x20   def handle(self):\n\
         \x20       for line in self.rfile:\n\
         \x20           self.wfile.write(b'echo: ' + line)\n\
         socketserver.ThreadingTCPServer.allow_reuse_address = True\n\
         s = socketserver.ThreadingTCPServer(('127.0.0.1', {port}), H)\n\
         print('ready', flush=True)\n\
         s.serve_forever()\n"
    );
    let mut command = ns.exec(&tools.python3);
    command.args(["-u", "-c", &script]);
    let mut echo = Proc::spawn("echo", command, lab.dir.path());
    echo.wait_until("listen", Duration::from_secs(20), |out, _| {
        out.contains("ready")
    });
    echo
}

/// `curl URL` inside `ns` into `out`; returns curl's output (`-w` prints the HTTP code).
pub(crate) fn curl(ns: &Ns, url: &str, out: &Path) -> Output {
    let mut command = ns.exec(tool("curl", "curl"));
    command
        .args(["-sS", "--max-time", "50", "-w", "%{http_code}", "-o"])
        .arg(out)
        .arg(url);
    run_bounded(command, TUNNEL_TIMEOUT)
}

/// `curl URL` inside `ns`, discarding the body; returns curl's `time_starttransfer` (DNS,
/// connection and first byte), in seconds, when the answer was 200.
pub(crate) fn curl_timing(ns: &Ns, url: &str) -> Option<f64> {
    let mut command = ns.exec(tool("curl", "curl"));
    command
        .args(["-sS", "--max-time", "30", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{time_starttransfer}"])
        .arg(url);
    let out = run_bounded(command, TUNNEL_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, time) = text.trim().split_once(' ')?;
    (code == "200").then(|| time.parse().ok()).flatten()
}

/// Connects to `name`:`port` from `ns` (resolving through its resolv.conf), sends a line and
/// prints the line that comes back, or `ERROR ...`.
fn echo_client(tools: &Tools, ns: &Ns, name: &str, port: u16) -> String {
    let script = format!(
        "import socket\n\
         try:\n\
         \x20   s = socket.create_connection(('{name}', {port}), timeout=20)\n\
         \x20   s.sendall(b'hello\\n')\n\
         \x20   print(s.makefile().readline().strip() or 'ERROR closed without an answer')\n\
         except Exception as e:\n\
         \x20   print('ERROR', type(e).__name__, e)\n"
    );
    let mut command = ns.exec(&tools.python3);
    command.args(["-c", &script]);
    let out = run_bounded(command, TOOL_TIMEOUT * 2);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `p2pdns tunnels --json` of `daemon`.
pub(crate) fn tunnels(daemon: &Daemon) -> Value {
    let out = daemon.cli(&["tunnels", "--json"]);
    assert!(out.status.success(), "tunnels: {}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("tunnels --json: {e}"))
}

/// The key name `daemon` shows in `status`.
fn key_name(daemon: &Daemon) -> String {
    daemon
        .status()
        .lines()
        .find_map(|l| l.trim().strip_prefix("key name:"))
        .map(|k| k.trim().trim_end_matches('.').to_owned())
        .unwrap_or_else(|| panic!("no key name in status:\n{}", daemon.status()))
}

/// Runs `expose ARGS` on `daemon` and checks that it succeeded.
pub(crate) fn expose(daemon: &Daemon, args: &[&str]) {
    let mut all = vec!["expose"];
    all.extend_from_slice(args);
    let out = daemon.cli(&all);
    assert!(out.status.success(), "expose {args:?}: {}", describe(&out));
}

/// Waits until `daemon` answers `name` with a tunnel address (127.77.x.y); returns it.
pub(crate) fn wait_tunnel_address(daemon: &Daemon, name: &str) -> String {
    let started = Instant::now();
    loop {
        let answer = daemon.dig(name);
        if answer.starts_with("127.77.") {
            return answer;
        }
        assert!(
            started.elapsed() < TUNNEL_TIMEOUT,
            "{name} never got a tunnel address (last answer {answer:?})\nstatus:\n{}\nlog:\n{}",
            daemon.status(),
            tail(&daemon.proc.stderr(), 60)
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `daemon` (behind NAT) holds a relay reservation: others can reach it.
pub(crate) fn wait_relayed(daemon: &Daemon) {
    daemon.wait_status("a relay reservation", TUNNEL_TIMEOUT, |status| {
        status.contains("relayed at: ").then_some(())
    });
}

/// Both logs, for a failure message.
pub(crate) fn logs(a: &Daemon, b: &Daemon) -> String {
    format!(
        "A log:\n{}\nB log:\n{}",
        tail(&a.proc.stderr(), 60),
        tail(&b.proc.stderr(), 60)
    )
}

/// The SHA-256 of the file at `path`.
fn sha256_file(path: &Path) -> String {
    hex(&Sha256::digest(fs::read(path).unwrap_or_default()))
}

/// A web site on A's own 127.0.0.1:[`WEB_PORT`] behind an `a_nat` router, exposed as
/// `site.p2p` port 80, and a client B behind a `b_nat` router that resolves it to its tunnel
/// address; the introduction server gets `intro` as more configuration.
struct Site {
    lab: Lab,
    a_home: Home,
    b_home: Home,
    a: Daemon,
    b: Daemon,
    big_sha: String,
    /// The introduction server, while it runs.
    intro: Option<Intro>,
    _parts: (Proc, ResolverFiles),
}

impl Site {
    fn start(tools: &Tools, a_nat: Nat, b_nat: Nat, intro: &str) -> Self {
        let mut lab = Lab::new(tools);
        let a_home = lab.home(a_nat);
        let b_home = lab.home(b_nat);
        let files = ResolverFiles::new(&b_home.host);
        let intro = lab.start_intro_with(intro);
        let (root, big_sha) = web_root(&lab);
        let web = start_web(tools, &lab, &a_home.host, &root);
        let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
        let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
        a.wait_joined();
        b.wait_joined();
        wait_relayed(&a);
        let to = format!("127.0.0.1:{WEB_PORT}");
        expose(&a, &["site", "80", "--to", &to]);
        wait_tunnel_address(&b, "site.p2p");
        Self {
            lab,
            a_home,
            b_home,
            a,
            b,
            big_sha,
            intro: Some(intro),
            _parts: (web, files),
        }
    }

    /// `curl http://site.p2p/PATH` on B into a file of the lab; returns curl's output and the
    /// file.
    fn fetch(&self, path: &str) -> (Output, PathBuf) {
        let file = self
            .lab
            .dir
            .path()
            .join(format!("fetched-{}", path.replace('/', "_")));
        // A fetch that fails must not leave an earlier fetch's file to be read as its own.
        let _ = fs::remove_file(&file);
        let out = curl(&self.b_home.host, &format!("http://site.p2p/{path}"), &file);
        (out, file)
    }

    /// Fetches the page and fails unless it holds [`MARKER`].
    fn page_loads(&self, what: &str) {
        let (out, file) = self.fetch("");
        let body = fs::read_to_string(&file).unwrap_or_default();
        assert!(
            body.contains(MARKER),
            "{what}: curl http://site.p2p/: {}\nbody: {body}\n{}",
            describe(&out),
            logs(&self.a, &self.b)
        );
    }

    /// Fetches the 20 MiB file and fails unless it arrives whole.
    fn big_file_arrives(&self, what: &str) {
        let (out, file) = self.fetch("big.bin");
        assert_eq!(
            sha256_file(&file),
            self.big_sha,
            "{what}: the 20 MiB file arrived changed or cut: {}\n{}",
            describe(&out),
            logs(&self.a, &self.b)
        );
    }
}

#[test]
fn a_site_behind_a_nat_opens_by_name_from_behind_another() {
    let tools = Tools::find();
    let site = Site::start(&tools, Nat::Eim, Nat::Eim, "");
    let Site {
        lab, b_home, a, b, ..
    } = &site;

    // curl resolves site.p2p through resolv.conf and fetches the page; 20 MiB arrive whole.
    site.page_loads("EIM to EIM");
    site.big_file_arrives("EIM to EIM");

    // Headless Chromium shows the page (its own DNS client reads the same resolv.conf).
    let profile = lab.dir.subdir("chromium-profile");
    let mut chromium = b_home.host.exec(tool("chromium", "chromium"));
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-proxy-server",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", "http://site.p2p/"]);
    let out = run_bounded(chromium, TUNNEL_TIMEOUT);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(MARKER),
        "chromium --dump-dom http://site.p2p/: {}\n{}",
        describe(&out),
        logs(a, b)
    );

    // Two plain home routers let hole punching through: the tunnel runs direct, and both sides
    // count what passed.
    let report = tunnels(b);
    let mapped = &report["mapped"][0];
    assert_eq!(mapped["name"], "site.p2p", "{report:#}");
    assert_eq!(mapped["path"], "direct", "{report:#}\n{}", logs(a, b));
    let received = mapped["received"].as_u64().unwrap_or(0);
    assert!(received >= BIG_FILE as u64, "{report:#}");
    let served = tunnels(a);
    let streams = served["exposed"][0]["streams"].as_u64().unwrap_or(0);
    assert!(streams >= 3, "{served:#}");
}

/// libp2p closes a connection after a minute without use, and a new one between two homes
/// needs the introduction server (a relayed connection, then a hole punch). A tunnel's direct
/// connection is kept open a while after its last use instead: with the introduction server
/// gone, the site still opens after more than a minute without traffic.
#[test]
fn a_direct_tunnel_stays_open_past_a_minute_idle_with_the_introduction_server_gone() {
    let tools = Tools::find();
    let mut site = Site::start(&tools, Nat::Eim, Nat::Eim, "");
    site.page_loads("first");
    let report = tunnels(&site.b);
    assert_eq!(
        report["mapped"][0]["path"],
        "direct",
        "{report:#}\n{}",
        logs(&site.a, &site.b)
    );
    drop(site.intro.take());
    // Past the swarm's idle timeout (60 s) and two ping intervals (25 s): the connection is
    // idle all along, as a site is between a user's visits.
    std::thread::sleep(Duration::from_secs(80));
    site.page_loads("after 80 s without traffic, the introduction server gone");
    let report = tunnels(&site.b);
    assert_eq!(report["mapped"][0]["path"], "direct", "{report:#}");
}

#[test]
fn symmetric_nats_tunnel_through_the_relay_and_a_cut_is_reported() {
    let tools = Tools::find();
    // The introduction server's default circuit budget (120 s, 1 MiB).
    let site = Site::start(&tools, Nat::Symmetric, Nat::Symmetric, "");
    let Site { a, b, .. } = &site;

    // A small page fits in one circuit.
    site.page_loads("symmetric to symmetric");
    let report = tunnels(b);
    assert_eq!(report["mapped"][0]["path"], "relayed", "{report:#}");

    // 20 MiB do not: the relay cuts the circuit, curl sees a reset (not a short, clean
    // download), and B's tunnels report says the relay cut it.
    let (out, file) = site.fetch("big.bin");
    assert!(
        !out.status.success(),
        "the download must fail: {}",
        describe(&out)
    );
    let got = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(got < BIG_FILE as u64, "only part arrives: {got} B");
    let report = tunnels(b);
    let error = report["mapped"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("cut") && error.contains("relay"),
        "B's tunnels report names the cut and the relay: {report:#}\n{}",
        logs(a, b)
    );
    let log = b.proc.stderr();
    assert!(
        log.contains("tunnel cut:"),
        "B's log says so:\n{}",
        tail(&log, 40)
    );

    // The name keeps working: the next connections get new circuits.
    for i in 0..5 {
        site.page_loads(&format!("request {i} after the relay's cut"));
    }
}

#[test]
fn symmetric_nats_carry_a_large_transfer_through_a_relay_with_raised_limits() {
    let tools = Tools::find();
    // An operator who lets circuits carry more: 10 minutes, 64 MiB.
    let intro = "[intro]\ncircuit_duration_secs = 600\ncircuit_bytes = 67108864\n";
    let site = Site::start(&tools, Nat::Symmetric, Nat::Symmetric, intro);
    site.big_file_arrives("symmetric to symmetric, raised relay limits");
    let report = tunnels(&site.b);
    assert_eq!(report["mapped"][0]["path"], "relayed", "{report:#}");
}

#[test]
fn an_allow_listed_service_admits_its_key_only_and_anything_else_is_refused() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let a_home = lab.home(Nat::Eim);
    let b_home = lab.home(Nat::Eim);
    let c_home = lab.home(Nat::Eim);
    let _b_files = ResolverFiles::new(&b_home.host);
    let _c_files = ResolverFiles::new(&c_home.host);
    let intro = lab.start_intro();
    let _echo = start_echo(&tools, &lab, &a_home.host, 7000);
    let mut a = lab.start_daemon(&a_home, &intro.bootstrap);
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    let mut c = lab.start_daemon(&c_home, &intro.bootstrap);
    a.wait_joined();
    b.wait_joined();
    c.wait_joined();
    wait_relayed(&a);
    let b_key = key_name(&b);
    let c_key = key_name(&c);
    expose(
        &a,
        &["echo", "7", "--to", "127.0.0.1:7000", "--allow", &b_key],
    );
    wait_tunnel_address(&b, "echo.p2p");
    wait_tunnel_address(&c, "echo.p2p");

    let answer = echo_client(&tools, &b_home.host, "echo.p2p", 7);
    assert_eq!(
        answer,
        "echo: hello",
        "B is on the allow list\n{}",
        logs(&a, &b)
    );
    let answer = echo_client(&tools, &c_home.host, "echo.p2p", 7);
    assert!(
        answer.starts_with("ERROR"),
        "C is not on the allow list: {answer}"
    );
    // A logs why, naming C's key, once.
    let log = a.proc.stderr();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tunnel stream refused") && l.contains(&c_key))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "one log line for C's refusal:\n{}",
        tail(&log, 40)
    );
    assert!(refusals[0].contains("allow list"), "{}", refusals[0]);
    let served = tunnels(&a);
    assert_eq!(served["refused"]["not_allowed"], 1, "{served:#}");
    let report = tunnels(&c);
    let error = report["mapped"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("allow list"), "C is told why: {report:#}");

    // A port the record does not list has no listener; a port A exposes nowhere is refused.
    let answer = echo_client(&tools, &b_home.host, "echo.p2p", 8);
    assert!(
        answer.starts_with("ERROR"),
        "port 8 is not exposed: {answer}"
    );
}

/// Opens `count` connections to `name`:80 from `ns` and holds them; prints `held`, waits for
/// `hold_secs`, then sends a request on each and prints how many got an HTTP answer and how
/// many were reset or closed.
fn start_flood(tools: &Tools, lab: &Lab, ns: &Ns, name: &str, count: u32, hold_secs: u32) -> Proc {
    let script = format!(
        "import socket, time\n\
         socks = []\n\
         for i in range({count}):\n\
         \x20   try:\n\
         \x20       socks.append(socket.create_connection(('{name}', 80), timeout=10))\n\
         \x20   except Exception as e:\n\
         \x20       print('connect error', e, flush=True)\n\
         print('held', len(socks), flush=True)\n\
         time.sleep({hold_secs})\n\
         ok = failed = 0\n\
         for s in socks:\n\
         \x20   try:\n\
         \x20       s.settimeout(10)\n\
         \x20       s.sendall(b'GET / HTTP/1.0\\r\\nHost: {name}\\r\\n\\r\\n')\n\
         \x20       if s.recv(64).startswith(b'HTTP/1.0 200'):\n\
         \x20           ok += 1\n\
         \x20       else:\n\
         \x20           failed += 1\n\
         \x20   except Exception:\n\
         \x20       failed += 1\n\
         print('answered', ok, 'failed', failed, flush=True)\n"
    );
    let mut command = ns.exec(&tools.python3);
    command.args(["-u", "-c", &script]);
    Proc::spawn("flood", command, lab.dir.path())
}

#[test]
fn a_flood_from_one_peer_stays_within_its_limit_and_a_restarted_server_serves_again() {
    let tools = Tools::find();
    let mut lab = Lab::new(&tools);
    let a_home = lab.home(Nat::Eim);
    let b_home = lab.home(Nat::Eim);
    let c_home = lab.home(Nat::Eim);
    let _b_files = ResolverFiles::new(&b_home.host);
    let _c_files = ResolverFiles::new(&c_home.host);
    let intro = lab.start_intro();
    let (root, _) = web_root(&lab);
    let _web = start_web(&tools, &lab, &a_home.host, &root);
    let limits = "\n[tunnel]\nmax_streams_per_peer = 4\n";
    let mut a = lab.start_daemon_with(&a_home.host, &intro.bootstrap, limits);
    let mut b = lab.start_daemon(&b_home, &intro.bootstrap);
    let mut c = lab.start_daemon(&c_home, &intro.bootstrap);
    a.wait_joined();
    b.wait_joined();
    c.wait_joined();
    wait_relayed(&a);
    expose(
        &a,
        &["site", "80", "--to", &format!("127.0.0.1:{WEB_PORT}")],
    );
    wait_tunnel_address(&b, "site.p2p");
    wait_tunnel_address(&c, "site.p2p");

    // B holds 30 connections; A serves 4 of them and refuses the rest as busy.
    let mut flood = start_flood(&tools, &lab, &b_home.host, "site.p2p", 30, 4);
    flood.wait_until("hold its connections", TUNNEL_TIMEOUT, |out, _| {
        out.contains("held")
    });
    // Meanwhile C is served.
    let page = lab.dir.path().join("c.html");
    let out = curl(&c_home.host, "http://site.p2p/", &page);
    let body = fs::read_to_string(&page).unwrap_or_default();
    assert!(
        body.contains(MARKER),
        "C is served while B floods: {}\n{}",
        describe(&out),
        logs(&a, &c)
    );
    flood.wait_until("report", TUNNEL_TIMEOUT, |out, _| out.contains("answered"));
    let line = flood.stdout();
    let counts: Vec<u32> = line
        .split_whitespace()
        .skip_while(|w| *w != "answered")
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{line}");
    let (answered, failed) = (counts[0], counts[1]);
    assert!(
        (1..=4).contains(&answered) && answered + failed == 30,
        "at most 4 of B's 30 connections served: {line}\n{}",
        logs(&a, &b)
    );
    let served = tunnels(&a);
    assert!(
        served["refused"]["busy"].as_u64().unwrap_or(0) >= u64::from(failed),
        "A counts the busy refusals: {served:#}"
    );
    let report = tunnels(&b);
    let error = report["mapped"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("busy"), "B is told why: {report:#}");
    // A logs the busy refusal once, naming B as README says: by key name and peer id.
    let b_key = key_name(&b);
    let b_id = crate::system::status_field(&b.status(), "peer id:");
    let log = a.proc.stderr();
    let busy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tunnel stream refused: busy"))
        .collect();
    assert!(
        busy.len() == 1 && busy[0].contains(&b_key) && busy[0].contains(&b_id),
        "one busy line naming B ({b_key}, {b_id}): {busy:#?}"
    );

    // A stops: B's tunnels and log say plainly that it is offline.
    drop(a);
    crate::tunnel_moved::offline_is_said_plainly(&lab, &b_home, &b);
    // A restarts on its data directory: its service is still exposed, and B's next connection
    // reaches it.
    let mut a = lab.start_daemon_with(&a_home.host, &intro.bootstrap, limits);
    a.wait_joined();
    wait_relayed(&a);
    let page = lab.dir.path().join("again.html");
    let started = Instant::now();
    loop {
        let out = curl(&b_home.host, "http://site.p2p/", &page);
        let body = fs::read_to_string(&page).unwrap_or_default();
        if body.contains(MARKER) {
            break;
        }
        assert!(
            started.elapsed() < TUNNEL_TIMEOUT,
            "B never reached A after its restart: {}\n{:#}\n{}",
            describe(&out),
            tunnels(&b),
            logs(&a, &b)
        );
        thread::sleep(Duration::from_secs(1));
    }
}

/// A web server on `ns`'s own 127.0.0.1:`port` that answers every request with HTTP/1.0 and no
/// Content-Length, 1 KiB every 20 ms for 20 s: only the way the connection ends tells a whole
/// answer from a cut one.
fn start_slow(tools: &Tools, lab: &Lab, ns: &Ns, port: u16) -> Proc {
    let script = format!(
        "import socketserver, time\n\
         class H(socketserver.StreamRequestHandler):\n\
         \x20   def handle(self):\n\
         \x20       self.rfile.readline()\n\
         \x20       self.wfile.write(b'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n')\n\
         \x20       for i in range(1000):\n\
         \x20           self.wfile.write(b'x' * 1024)\n\
         \x20           self.wfile.flush()\n\
         \x20           time.sleep(0.02)\n\
         socketserver.ThreadingTCPServer.allow_reuse_address = True\n\
         s = socketserver.ThreadingTCPServer(('127.0.0.1', {port}), H)\n\
         print('ready', flush=True)\n\
         s.serve_forever()\n"
    );
    let mut command = ns.exec(&tools.python3);
    command.args(["-u", "-c", &script]);
    let mut slow = Proc::spawn("slow", command, lab.dir.path());
    slow.wait_until("listen", Duration::from_secs(20), |out, _| {
        out.contains("ready")
    });
    slow
}

#[test]
fn a_download_cut_by_a_dying_daemon_is_a_reset_not_a_short_file() {
    let tools = Tools::find();
    let site = Site::start(&tools, Nat::Eim, Nat::Eim, "");
    let _slow = start_slow(&tools, &site.lab, &site.a_home.host, 8082);
    expose(&site.a, &["slow", "80", "--to", "127.0.0.1:8082"]);
    wait_tunnel_address(&site.b, "slow.p2p");
    let file = site.lab.dir.path().join("slow.txt");
    let mut command = site.b_home.host.exec(tool("curl", "curl"));
    command
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(&file)
        .arg("http://slow.p2p/");
    let mut curl = Proc::spawn("curl-slow", command, site.lab.dir.path());
    // Some of the answer has arrived: the tunnel is carrying it.
    let started = Instant::now();
    while fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 10 * 1024 {
        assert!(
            started.elapsed() < TUNNEL_TIMEOUT,
            "nothing arrived through slow.p2p"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The client's daemon dies the hard way: the kernel closes its sockets.
    crate::process::kill(&[site.b.proc.pid().to_string()]);
    let status = curl.wait_exit(TUNNEL_TIMEOUT);
    let got = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(
        !status.success(),
        "curl must fail, not end with {got} B as if the answer were whole: {status}\n{}",
        curl.stderr()
    );
    assert!(
        curl.stderr().contains("reset") || curl.stderr().contains("(56)"),
        "a reset: {}",
        curl.stderr()
    );
}
