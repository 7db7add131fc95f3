//! Out-of-range numbers stop the real binary at start with exit code 78 naming the key, never
//! a panic or an abort (issue 15, kind 5). Each value here broke the daemon before: tokio's
//! semaphore panicked on a huge `dns.max_inflight`, the cache's table aborted the process on
//! a huge `cache.max_entries`, libp2p-relay panicked on every reservation past 2^32 seconds
//! of `intro.circuit_duration_secs`. Values in range that contradict each other stop it the
//! same way: the daemon started without complaint as an open resolver, or forwarding to
//! itself.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tokio::time::Instant;

/// Longest wait for the binary to exit: a daemon that started instead fails the test.
const WAIT: Duration = Duration::from_secs(20);

/// Runs the binary's `subcommand` on `config`, which must stop it with exit code 78 and a
/// message naming `key` and saying `why`.
fn exits_78_naming(config: &str, subcommand: &[&str], key: &str, why: &str) {
    let dir = std::env::temp_dir().join(format!("p2pdns-ranges-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p2pdns.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pdns"))
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(subcommand)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{config}: the binary did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let status = output.status;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{config}: {stderr}");
    assert_eq!(status.code(), Some(78), "{config}: {stderr}");
    assert!(
        stderr.contains(&format!("invalid config value {key}: ")) && stderr.contains(why),
        "{config}: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn huge_values_exit_78_naming_the_key() {
    // The P2P node is off so that a run that did start would not reach the network.
    let off = "[p2p]\nenabled = false\n[dns]\nlisten = [\"127.0.0.1:0\"]\n";
    for (extra, key) in [
        ("max_inflight = 9223372036854775807\n", "dns.max_inflight"),
        ("[cache]\nmax_entries = 1000000000\n", "cache.max_entries"),
        (
            "[intro]\ncircuit_duration_secs = 4294967296\n",
            "intro.circuit_duration_secs",
        ),
    ] {
        let config = format!("{off}{extra}");
        exits_78_naming(&config, &["run"], key, "out of range");
    }
    // The introduction server reads [intro]: the same refusal before it binds anything.
    let intro = "[intro]\ncircuit_duration_secs = 4294967296\n";
    exits_78_naming(
        intro,
        &[
            "intro",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--stun-listen",
            "none",
        ],
        "intro.circuit_duration_secs",
        "out of range",
    );
}

#[test]
fn contradictory_values_exit_78_naming_the_key() {
    let off = "[p2p]\nenabled = false\n";
    // The newcomer's open resolver: everyone allowed on every address, and no opt-in.
    let open = format!("{off}[dns]\nlisten = [\"0.0.0.0:0\"]\nallow = [\"0.0.0.0/0\"]\n");
    exits_78_naming(&open, &["run"], "dns.allow[0]", "open resolver");
    // Forwarding to itself, the listen address given on the command line.
    let looping = format!("{off}[upstream]\nservers = [\"9.9.9.9\", \"127.0.0.1:5399\"]\n");
    let run = ["run", "--dns-listen", "127.0.0.1:5399", "--check-config"];
    exits_78_naming(&looping, &run, "upstream.servers[1]", "forwarding loop");
    // The introduction server reads [intro]: the same refusal before it binds anything.
    exits_78_naming(
        "[intro]\nmax_reservations = 2\n",
        &[
            "intro",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--stun-listen",
            "none",
        ],
        "intro.max_reservations_per_peer",
        "above intro.max_reservations (2)",
    );
}

/// The relations between values are checked once the flags are applied: a file whose
/// upstream is its own listen address is fine when `--dns-listen` moves the daemon elsewhere
/// (it was refused, naming the file's listen address the flag had replaced), and refused when
/// the flag makes the loop.
#[test]
fn relations_are_checked_with_the_flags_applied() {
    let dir = std::env::temp_dir().join(format!("p2pdns-relations-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p2pdns.toml");
    let file = "[p2p]\nenabled = false\n[dns]\nlisten = [\"127.0.0.1:53\"]\n\
                [upstream]\nservers = [\"127.0.0.1:53\"]\n";
    std::fs::write(&path, file).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_p2pdns"))
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["run", "--dns-listen", "127.0.0.1:5390", "--check-config"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
    let run = ["run", "--check-config"];
    exits_78_naming(file, &run, "upstream.servers[0]", "forwarding loop");
}
