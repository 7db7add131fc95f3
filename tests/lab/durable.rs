//! What the real daemon acknowledged is never lost (issue 15, kind 4), through its CLI: 16
//! `p2pdns publish` at once and a kill -9 after each round, and a full disk (a small tmpfs
//! this test mounts, as root, and unmounts); and a storage node's records of others' names
//! through a kill -9 of it. The in-process variants (damaged files, the identity key, the data
//! directory lock, a storage node stopped cleanly) are `tests/integration/durable.rs` and
//! `tests/integration/stored_records.rs`.

use std::{
    collections::BTreeSet,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::process::{Proc, TempDir, describe, require_root, run_bounded, tool};

const BIN: &str = env!("CARGO_BIN_EXE_p2pdns");
/// Longest wait for the daemon to start, or for one CLI command.
const WAIT: Duration = Duration::from_secs(20);
/// Publishes at once per round (the control socket serves 16 clients at a time).
const AT_ONCE: usize = 16;
/// Rounds, each ended by a kill -9.
const ROUNDS: usize = 10;

/// A daemon's directory: its configuration, its data directory `data` and its logs.
struct Node {
    dir: TempDir,
    config: PathBuf,
    data: PathBuf,
}

impl Node {
    /// A P2P node alone on loopback (no UPnP, STUN, mDNS), keeping its state in `data`.
    fn new(label: &str, data: Option<PathBuf>) -> Self {
        Self::with_bootstrap(label, data, None)
    }

    /// As [`Node::new`], with `bootstrap` as its one bootstrap peer.
    fn with_bootstrap(label: &str, data: Option<PathBuf>, bootstrap: Option<&str>) -> Self {
        let dir = TempDir::new(label);
        let bootstrap =
            bootstrap.map_or(String::new(), |addr| format!("bootstrap = [\"{addr}\"]\n"));
        let config = dir.write(
            "p2pdns.toml",
            &format!(
                "[upstream]\nservers = [\"127.0.0.1:9\"]\n\
                 [p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nupnp = false\nstun = false\nmdns = false\n\
                 {bootstrap}"
            ),
        );
        let data = data.unwrap_or_else(|| dir.path().join("data"));
        Self { dir, config, data }
    }

    /// The daemon's first P2P listen address with its peer id, from `p2pdns status`.
    fn p2p_addr(&self) -> String {
        let output = self.cli(&["status"]);
        assert!(output.status.success(), "{}", describe(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("listening:"))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no listening line in {}", describe(&output)))
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .env("HOME", self.dir.subdir("home"))
            .env("NO_COLOR", "1")
            .env_remove("P2PDNS_CONFIG")
            .env_remove("P2PDNS_DATA_DIR")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("RUST_LOG")
            .arg("--data-dir")
            .arg(&self.data);
        command
    }

    /// Starts the daemon and waits until it is ready.
    fn start(&self, name: &str) -> Proc {
        let port = free_port();
        let mut command = self.command();
        command.arg("--config").arg(&self.config).args([
            "run",
            "--dns-listen",
            &format!("127.0.0.1:{port}"),
        ]);
        let mut proc = Proc::spawn(name, command, self.dir.path());
        proc.wait_for("ready", WAIT);
        proc
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        run_bounded(command, WAIT)
    }

    /// The names the daemon publishes records at, from `p2pdns names`: the owner names of
    /// the record lines (indented) under each record set.
    fn names(&self) -> BTreeSet<String> {
        let output = self.cli(&["names"]);
        assert!(output.status.success(), "{}", describe(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.starts_with(' '))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Files in the data directory whose names hold `.tmp` (interrupted writes).
    fn temporary_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.contains(".tmp"))
            .collect()
    }
}

/// A port free on 127.0.0.1 for UDP and TCP both, as DNS takes both.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Kills the daemon as a crash or the OOM killer would: no shutdown, no last write.
fn kill_9(mut proc: Proc) {
    crate::process::kill(&[proc.pid().to_string()]);
    proc.wait_exit(WAIT);
}

/// 16 `p2pdns publish` at once, a kill -9 once they are answered, 10 rounds: every publish is
/// acknowledged and every acknowledged name is there after each restart, and the temporary
/// files of writes cut short are gone once the daemon started again.
#[test]
fn acknowledged_publishes_survive_kill_9() {
    let node = Node::new("durable-kill", None);
    let mut acknowledged = BTreeSet::new();
    let mut failed = Vec::new();
    for round in 0..ROUNDS {
        let daemon = node.start(&format!("daemon-{round}"));
        let held = node.names();
        let lost: Vec<_> = acknowledged.difference(&held).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged, then lost: {lost:?}"
        );
        let temporary = node.temporary_files();
        assert!(
            temporary.is_empty(),
            "round {round}: left behind: {temporary:?}"
        );
        let publishes: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                // Names under 16 record sets: one key publishes at most 100 of them.
                let name = format!("r{round}.n{i}");
                let mut command = node.command();
                command.args([
                    "publish",
                    &name,
                    "A",
                    &format!("192.0.2.{}", i + 1),
                    "--claim-parent",
                ]);
                (name, std::thread::spawn(move || run_bounded(command, WAIT)))
            })
            .collect();
        for (name, publish) in publishes {
            let output = publish.join().unwrap();
            if output.status.success() {
                acknowledged.insert(format!("{name}.p2p."));
            } else {
                failed.push(format!("{name}: {}", describe(&output)));
            }
        }
        kill_9(daemon);
    }
    let daemon = node.start("daemon-last");
    assert_eq!(node.names(), acknowledged);
    drop(daemon);
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:#?}",
        failed.len(),
        AT_ONCE * ROUNDS
    );
}

/// A storage node killed with kill -9 keeps the records it stored for others (its snapshot,
/// `stored-records.bin`, written by a rename some seconds after each change): with their owner
/// gone, a node that knows only the restarted storage node still resolves every name, and the
/// storage node's data directory holds no temporary or set-aside file.
#[test]
fn records_stored_for_others_survive_kill_9_of_the_storage_node() {
    const NAMES: usize = 8;
    let storage = Node::new("durable-storage", None);
    let storage_daemon = storage.start("storage");
    let storage_addr = storage.p2p_addr();
    let owner = Node::with_bootstrap("durable-owner", None, Some(&storage_addr));
    let owner_daemon = owner.start("owner");
    for i in 0..NAMES {
        let output = owner.cli(&[
            "publish",
            &format!("kept{i}"),
            "A",
            &format!("192.0.2.{}", i + 1),
        ]);
        assert!(
            output.status.success(),
            "publish kept{i}: {}",
            describe(&output)
        );
    }
    let acknowledged = std::time::SystemTime::now();
    // The storage node saves a few seconds after the last change: wait for a save newer than
    // the last acknowledged publish, then for the saves to stop.
    let snapshot = storage.data.join(p2pdns::p2p::RECORDS_FILE);
    let modified = || std::fs::metadata(&snapshot).and_then(|m| m.modified()).ok();
    let deadline = std::time::Instant::now() + WAIT;
    let mut last = loop {
        match modified() {
            Some(at) if at > acknowledged => break at,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "no snapshot saved after the publishes within {WAIT:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    loop {
        std::thread::sleep(Duration::from_secs(7));
        let now = modified().expect("the snapshot stays");
        if now == last {
            break;
        }
        last = now;
    }
    kill_9(storage_daemon);
    drop(owner_daemon);

    let _storage_daemon = storage.start("storage-again");
    let leftovers: Vec<String> = std::fs::read_dir(&storage.data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains(".tmp") || name.contains("damaged"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "left in the data directory: {leftovers:?}"
    );
    let reader = Node::with_bootstrap("durable-reader", None, Some(&storage.p2p_addr()));
    let _reader_daemon = reader.start("reader");
    for i in 0..NAMES {
        let name = format!("kept{i}.p2p");
        let want = format!("192.0.2.{}", i + 1);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let output = reader.cli(&["resolve", &name, "A"]);
            if output.status.success() && String::from_utf8_lossy(&output.stdout).contains(&want) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} not resolved through the restarted storage node: {}",
                describe(&output)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let mut command = Command::new(tool("mount", "mount"));
        command
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at);
        let output = run_bounded(command, WAIT);
        assert!(output.status.success(), "mount: {}", describe(&output));
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: the publish is refused, saying the disk is full (the CLI exits non-zero), and
/// the daemon does not claim the name; what it held before is intact after a kill -9, and once
/// there is room again the same publish works. (Before: the reply said "failed to save" and
/// the daemon listed the name it had not saved, which a restart lost.)
#[test]
fn a_full_disk_refuses_the_publish_and_says_so() {
    require_root("mounting a small tmpfs as a full disk");
    let outer = TempDir::new("durable-full");
    let disk = outer.path().join("disk");
    let tmpfs = Tmpfs::mount(&disk, "256k");
    let node = Node::new("durable-full-node", Some(disk.join("data")));
    let daemon = node.start("daemon-full");
    let publish = |name: &str| node.cli(&["publish", name, "A", "192.0.2.7"]);
    let output = publish("before");
    assert!(output.status.success(), "{}", describe(&output));

    // Fill the disk to the last block.
    let mut fill = std::fs::File::create(disk.join("fill")).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut fill, &block).is_ok() {}
    drop(fill);

    let output = publish("during");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("no space left on device"), "{stderr}");
    assert_eq!(node.names(), BTreeSet::from(["before.p2p.".to_owned()]));
    kill_9(daemon);

    std::fs::remove_file(disk.join("fill")).unwrap();
    let daemon = node.start("daemon-after");
    assert_eq!(node.names(), BTreeSet::from(["before.p2p.".to_owned()]));
    assert!(
        node.temporary_files().is_empty(),
        "{:?}",
        node.temporary_files()
    );
    let output = publish("during");
    assert!(output.status.success(), "{}", describe(&output));
    drop(daemon);
    drop(tmpfs);
}
