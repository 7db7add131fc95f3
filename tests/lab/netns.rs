//! Network namespaces of the lab tests (`nat`, `os_path`): iproute2 commands that must succeed,
//! programs run inside a namespace with a clean environment, and a tear-down that kills
//! everything left in the namespaces before removing them.

use std::{
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use crate::process::{describe, kill, run_bounded};

/// Longest run of one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the processes in the namespaces to die after SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two rounds of SIGKILL.
const POLL: Duration = Duration::from_millis(20);

/// Runs `ip ARGS` (the iproute2 program at `program`) and fails the test, with what it printed,
/// if it fails.
pub fn ip(program: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    let output = run_bounded(command, IP_TIMEOUT);
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        describe(&output)
    );
    output
}

/// A command running `program` inside the namespace `name` (through `ip netns exec`) with a
/// clean environment: no proxy variables, no p2pdns settings (RUNTIME_DIRECTORY would move the
/// control socket), HOME the given directory so that no program sees the user's configuration.
pub fn exec(ip: &Path, name: &str, home: &Path, program: impl AsRef<Path>) -> Command {
    let mut command = Command::new(ip);
    command
        .args(["netns", "exec", name])
        .arg(program.as_ref())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .env("NO_COLOR", "1");
    command
}

/// Kills every process in `namespaces`, also those that are not our children (nsd's workers,
/// Chromium's helpers), then removes the namespaces, the last created first. Everything in
/// them was started by the test. Errors are ignored: this runs on drop, also after a failure.
pub fn remove(ip: &Path, namespaces: &[String]) {
    let pids = |name: &String| -> Vec<String> {
        Command::new(ip)
            .args(["netns", "pids", name])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let all: Vec<String> = namespaces.iter().flat_map(pids).collect();
        if all.is_empty() || Instant::now() >= deadline {
            break;
        }
        kill(&all);
        thread::sleep(POLL);
    }
    for name in namespaces.iter().rev() {
        let _ = Command::new(ip).args(["netns", "del", name]).status();
    }
}
