//! `p2pdns reload --pid PID`, what the systemd unit's ExecReload runs: the daemon reloads as on
//! SIGHUP, and a process that is not p2pdns is never signalled.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Runs `p2pdns reload --pid PID` and returns its exit code and stderr.
fn reload(pid: u32) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_p2pdns"))
        .args(["reload", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn reload_signals_the_daemon_and_no_other_process() {
    let dir = std::env::temp_dir().join(format!("p2pdns-reload-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("p2pdns.toml");
    std::fs::write(
        &config,
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:9\"]\n\
         [p2p]\nenabled = false\n",
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_p2pdns"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("P2PDNS_DATA_DIR", &dir)
        .env("RUST_LOG", "p2pdns=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = mpsc::channel();
    let stderr = daemon.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Each line comes within 20 s, or the daemon is stuck.
    let wait_for = |what: &str| {
        loop {
            match seen.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.contains(what) => return,
                Ok(_) => {}
                Err(_) => panic!("the daemon never logged {what:?}"),
            }
        }
    };
    wait_for("ready");
    let (code, stderr) = reload(daemon.id());
    assert_eq!(code, Some(0), "{stderr}");
    wait_for("SIGHUP: reloading");
    // This test's own process is no p2pdns: refused, and still running to say so.
    let (code, stderr) = reload(std::process::id());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is not a running p2pdns"), "{stderr}");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
