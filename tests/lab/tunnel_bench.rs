//! Tunnel benchmark (issue 12): figures, not a test; it asserts only that what it measured
//! happened (bytes arrived, pages answered). Each row is measured in one lab run, next to plain
//! TCP between the same two hosts: a port forward on the serving host's router to the same
//! server, so both cross the same routers and links.
//!
//! ```text
//! cargo test --release --test lab tunnel_bench -- --ignored --nocapture --test-threads 1
//! SIZE_MIB=200 NAMES=20 IDLE=200 cargo test --release --test lab tunnel_bench -- --ignored --nocapture
//! ```
//!
//! - throughput: one TCP connection pulling SIZE_MIB (default 200) from a Python sender,
//!   through the tunnel and over plain TCP, direct (two EIM NATs) and relayed (two symmetric
//!   NATs, the introduction server's circuit limits raised);
//! - time to first byte of `curl http://NAME/` for names never resolved before (curl's
//!   `time_starttransfer`: DNS through the daemon, the DHT lookup, connecting the tunnel, the
//!   stream and the first byte): the first name (the connection to the peer is set up too), then
//!   NAMES (default 20) more names of the same peer, p50 and p95; plain TCP to the port forward
//!   for reference;
//! - memory per open stream: IDLE (default 200) idle tunnelled connections, the change in both
//!   daemons' resident memory (VmRSS) divided by their number.

use std::{fs, time::Instant};

use crate::{
    nat::{Daemon, Home, Lab, Nat, Ns, Tools},
    process::{Proc, describe, run_bounded, tail, tool},
    tunnel::{ResolverFiles, curl_timing, wait_relayed, wait_tunnel_address},
};

/// The sender's port on the serving host (all interfaces: the port forward reaches it too).
const SENDER_PORT: u16 = 9100;
/// The web server's port, likewise.
const WEB_PORT: u16 = 9180;

/// Sends each connection the number of bytes it asks for (a decimal line), then closes it;
/// the time a connection takes to be set up stays outside the receiver's timing.
const SENDER_PY: &str = "import socket, sys, threading
port = int(sys.argv[1])
buf = memoryview(bytes(1 << 20))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('0.0.0.0', port))
srv.listen(512)
print('ready', flush=True)
def serve(c):
    try:
        line = c.makefile('rb').readline()
        if not line:
            return
        left = int(line)
        while left > 0:
            n = c.send(buf[:min(left, len(buf))])
            left -= n
    except (OSError, ValueError):
        pass
    finally:
        c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
";

/// Asks `host`:`port` for `size` bytes and reads until EOF; prints the bytes and the seconds
/// from the request to the end.
const RECEIVER_PY: &str = "import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
start = time.monotonic()
s.sendall(sys.argv[3].encode() + b'\\n')
total = 0
buf = bytearray(1 << 20)
while True:
    n = s.recv_into(buf)
    if n == 0:
        break
    total += n
print(total, time.monotonic() - start, flush=True)
";

/// Opens `count` connections to `host`:`port` and holds them (until killed); prints `held N`.
const HOLDER_PY: &str = "import socket, sys, time
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) for _ in range(int(sys.argv[3]))]
print('held', len(socks), flush=True)
time.sleep(600)
";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Forwards `port` on `home`'s router to its host, as a user's port forward would.
fn port_forward(home: &Home, port: u16) {
    let dnat = format!(
        "add rule ip nat prerouting iifname \"wan\" tcp dport {port} dnat to {}",
        home.lan
    );
    let accept = format!(
        "add rule inet filter forward iifname \"wan\" ip daddr {} tcp dport {port} accept",
        home.lan
    );
    let nft = tool("nft", "nftables");
    for rule in [dnat, accept] {
        home.router.must(&nft, &rule.split(' ').collect::<Vec<_>>());
    }
}

/// Runs the receiver in `ns` against `host`:`port`; returns MiB/s.
fn pull(tools: &Tools, ns: &Ns, host: &str, port: u16, size: usize) -> f64 {
    let mut command = ns.exec(&tools.python3);
    command.args([
        "-c",
        RECEIVER_PY,
        host,
        &port.to_string(),
        &size.to_string(),
    ]);
    let out = run_bounded(command, std::time::Duration::from_secs(300));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    let bytes: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let secs: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
    assert_eq!(
        bytes,
        size,
        "the receiver got all the bytes: {}",
        describe(&out)
    );
    size as f64 / f64::from(1 << 20) / secs
}

/// The resident memory of `proc`, in KiB.
fn rss_kib(proc: &Proc) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", proc.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The p-quantile of sorted `values`, in ms.
fn quantile(values: &[f64], q: f64) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    format!("{:.0} ms", values[i] * 1000.0)
}

/// One lab: serving host A and client host B behind `kind` NATs, the sender and the web server
/// on A, exposed and port-forwarded.
struct Bench {
    lab: Lab,
    a_home: Home,
    b_home: Home,
    a: Daemon,
    b: Daemon,
    _files: ResolverFiles,
    _procs: Vec<Proc>,
}

fn bench_lab(tools: &Tools, kind: Nat) -> Bench {
    let mut lab = Lab::new(tools);
    let a_home = lab.home(kind);
    let b_home = lab.home(kind);
    let files = ResolverFiles::new(&b_home.host);
    // Circuits that a long transfer fits in (relayed rows): 10 minutes, 4 GiB.
    let intro =
        lab.start_intro_with("[intro]\ncircuit_duration_secs = 600\ncircuit_bytes = 4294967296\n");
    let mut sender = a_home.host.exec(&tools.python3);
    sender.args(["-u", "-c", SENDER_PY, &SENDER_PORT.to_string()]);
    let mut sender = Proc::spawn("sender", sender, lab.dir.path());
    sender.wait_until("listen", std::time::Duration::from_secs(20), |out, _| {
        out.contains("ready")
    });
    let root = lab.dir.subdir("www");
    fs::write(root.join("index.html"), "hello\n").unwrap();
    let mut web = a_home.host.exec(&tools.python3);
    web.args([
        "-u",
        "-m",
        "http.server",
        &WEB_PORT.to_string(),
        "--directory",
    ])
    .arg(&root);
    let mut web = Proc::spawn("web", web, lab.dir.path());
    web.wait_until("serve", std::time::Duration::from_secs(20), |out, _| {
        out.contains("Serving HTTP")
    });
    port_forward(&a_home, SENDER_PORT);
    port_forward(&a_home, WEB_PORT);
    // Room for the idle connections of the memory figure.
    let limits =
        "\n[tunnel]\nmax_streams = 2000\nmax_streams_per_peer = 2000\nmax_connections = 2000\n";
    let mut a = lab.start_daemon_with(&a_home.host, &intro.bootstrap, limits);
    let mut b = lab.start_daemon_with(&b_home.host, &intro.bootstrap, limits);
    a.wait_joined();
    b.wait_joined();
    wait_relayed(&a);
    let out = a.cli(&[
        "expose",
        "bulk",
        "80",
        "--to",
        &format!("127.0.0.1:{SENDER_PORT}"),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    Bench {
        lab,
        a_home,
        b_home,
        a,
        b,
        _files: files,
        _procs: vec![sender, web, intro.proc],
    }
}

/// Limits `home`'s router to `mbit` Mbit/s out of its internet side (token bucket), as a home
/// uplink would; both the tunnel and plain TCP pass there.
fn shape(home: &Home, mbit: u32) {
    let tc = tool("tc", "iproute2");
    let rate = format!("{mbit}mbit");
    let burst = format!("{}kb", (mbit / 8).max(32));
    home.router.must(
        &tc,
        &[
            "qdisc", "replace", "dev", "wan", "root", "tbf", "rate", &rate, "burst", &burst,
            "latency", "50ms",
        ],
    );
}

/// Throughput through the tunnel and over plain TCP, as a table row.
fn throughput_row(tools: &Tools, bench: &Bench, label: &str, size: usize) -> String {
    let forward = bench.a_home.wan.to_string();
    let plain = pull(tools, &bench.b_home.host, &forward, SENDER_PORT, size);
    let tunnel = pull(tools, &bench.b_home.host, "bulk.p2p", 80, size);
    let path = tunnels_json(&bench.b)["mapped"]
        .as_array()
        .and_then(|m| m.iter().find(|n| n["name"] == "bulk.p2p"))
        .and_then(|n| n["path"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!(
        "| throughput, {label} | {tunnel:.1} MiB/s | {plain:.1} MiB/s | {:.2}x | {} MiB, path {path} |",
        tunnel / plain,
        size >> 20
    )
}

fn tunnels_json(daemon: &Daemon) -> serde_json::Value {
    let out = daemon.cli(&["tunnels", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Time to first byte for `names` + 1 names never resolved before, as two table rows.
fn first_byte_rows(bench: &Bench, label: &str, names: usize) -> [String; 2] {
    let (a, b) = (&bench.a, &bench.b);
    for i in 0..=names {
        let to = format!("127.0.0.1:{WEB_PORT}");
        let out = a.cli(&["expose", &format!("web{i}"), "80", "--to", &to]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    // The records have reached the DHT before the clock starts (the lookup, not the
    // publishing, is what a user waits for).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut times = Vec::new();
    for i in 0..=names {
        let url = format!("http://web{i}.p2p/");
        let t = curl_timing(&bench.b_home.host, &url)
            .unwrap_or_else(|| panic!("curl {url} failed\nB log:\n{}", tail(&b.proc.stderr(), 40)));
        times.push(t);
    }
    let first = times.remove(0);
    times.sort_by(f64::total_cmp);
    let forward = format!("http://{}:{WEB_PORT}/", bench.a_home.wan);
    let mut plain: Vec<f64> = (0..names.max(1))
        .filter_map(|_| curl_timing(&bench.b_home.host, &forward))
        .collect();
    plain.sort_by(f64::total_cmp);
    [
        format!(
            "| first byte, {label}: the peer's first name | {:.0} ms | - | | DNS, DHT lookup, connection, stream |",
            first * 1000.0
        ),
        format!(
            "| first byte, {label}: {names} more fresh names, p50 / p95 | {} / {} | {} / {} | | DNS and DHT lookup each |",
            quantile(&times, 0.5),
            quantile(&times, 0.95),
            quantile(&plain, 0.5),
            quantile(&plain, 0.95)
        ),
    ]
}

/// Memory per open stream with `idle` idle tunnelled connections, as a table row.
fn memory_row(tools: &Tools, bench: &Bench, label: &str, idle: usize) -> String {
    let (a, b) = (&bench.a, &bench.b);
    let (a_before, b_before) = (rss_kib(&a.proc), rss_kib(&b.proc));
    let mut holder = bench.b_home.host.exec(&tools.python3);
    holder.args(["-u", "-c", HOLDER_PY, "bulk.p2p", "80", &idle.to_string()]);
    let mut holder = Proc::spawn("holder", holder, bench.lab.dir.path());
    holder.wait_until("hold", std::time::Duration::from_secs(120), |out, _| {
        out.contains("held")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (a_after, b_after) = (rss_kib(&a.proc), rss_kib(&b.proc));
    let open: u64 = tunnels_json(b)["mapped"]
        .as_array()
        .map(|m| m.iter().filter_map(|n| n["open"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(open, idle as u64, "every held connection is an open tunnel");
    drop(holder);
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 / idle as f64;
    format!(
        "| memory per open stream, {label} | client {:.1} KiB, server {:.1} KiB | | | {idle} idle connections, VmRSS |",
        per(b_before, b_after),
        per(a_before, a_after)
    )
}

#[test]
#[ignore = "a benchmark: run it on request (see the module docs)"]
fn tunnel_bench() {
    let started = Instant::now();
    let tools = Tools::find();
    let size = env_or("SIZE_MIB", 200) << 20;
    let names = env_or("NAMES", 20);
    let idle = env_or("IDLE", 200);
    let mut rows = Vec::new();
    let mut add = |row: String| {
        eprintln!("{row}");
        rows.push(row);
    };
    for (kind, label) in [
        (Nat::Eim, "direct (EIM/EIM)"),
        (Nat::Symmetric, "relayed (sym/sym)"),
    ] {
        let bench = bench_lab(&tools, kind);
        wait_tunnel_address(&bench.b, "bulk.p2p");
        for row in first_byte_rows(&bench, label, names) {
            add(row);
        }
        add(throughput_row(
            &tools,
            &bench,
            &format!("{label}, unshaped links"),
            size,
        ));
        if kind == Nat::Eim {
            for mbit in [1000, 100] {
                shape(&bench.a_home, mbit);
                let shaped = size.min((mbit as usize / 8 * 5) << 20);
                add(throughput_row(
                    &tools,
                    &bench,
                    &format!("{label}, {mbit} Mbit/s uplink"),
                    shaped,
                ));
            }
        }
        add(memory_row(&tools, &bench, label, idle));
    }
    println!();
    println!("| measure | tunnel | plain TCP (port forward) | ratio | note |");
    println!("|---|---:|---:|---:|---|");
    for row in &rows {
        println!("{row}");
    }
    println!(
        "\nreproduce: cargo test --release --test lab tunnel_bench -- --ignored --nocapture \
         --test-threads 1 (SIZE_MIB={}, NAMES={names}, IDLE={idle}; took {:?})",
        size >> 20,
        started.elapsed()
    );
}
