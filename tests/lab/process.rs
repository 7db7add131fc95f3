//! Real programs for the lab's black-box tests: finding them, temporary directories, commands
//! run to completion with a deadline, and long-running processes whose output goes to files.
//!
//! Nothing outlives the test: a [`Proc`] is killed and a [`TempDir`] removed when dropped, also
//! when the test panics. Every wait has a deadline and fails the test with what the process
//! printed.

use std::{
    env, fs,
    hash::{BuildHasher, Hasher, RandomState},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Between two looks at a process being waited for.
const POLL: Duration = Duration::from_millis(20);
/// How much of each output file a message shows when a process did not get where expected.
const REPORT_LINES: usize = 60;

/// The path of an external program the tests need; fails the test, naming the Debian package to
/// install, if it is not installed. The system directories come before PATH, so the Debian
/// package's program runs rather than a version manager's shim.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .map(PathBuf::from)
        .into_iter()
        .chain(env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed but the p2pdns lab tests need it: install the Debian \
                 package {package} (apt-get install {package}), or run tests/run.sh, which does"
            )
        })
}

/// Fails the test unless it runs as root, saying what needs root: the lab fails rather than
/// skips, so that a run without privilege never passes for a full one.
pub fn require_root(what: &str) {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    assert!(
        effective_uid == Some("0"),
        "{what} needs root, which this run does not have (effective uid {}): run the lab as \
         root, as tests/run.sh does (sudo tests/run.sh), or leave it out (plain `cargo test`)",
        effective_uid.unwrap_or("unknown")
    );
}

/// Eight random hex digits, so parallel runs never share a name (a network namespace, say).
pub fn random_tag() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:08x}", hasher.finish() & 0xffff_ffff)
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `p2pdns-lab-LABEL-…` with a suffix no other directory of this or an earlier run
    /// has (process id, a counter, the clock), so tests running side by side never share one.
    pub fn new(label: &str) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = env::temp_dir().join(format!(
            "p2pdns-lab-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates the directory `name` in this one (if it is not there yet) and returns its path.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }

    /// Writes `text` to the file `name` in this directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Sends SIGKILL to `pids` through the shell's `kill` built-in, as std can only kill its own
/// children; a pid that is gone already is no error.
pub fn kill(pids: &[String]) {
    if !pids.is_empty() {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -KILL {} 2>/dev/null", pids.join(" ")))
            .status();
    }
}

/// Runs a command to completion with a deadline; kills it and fails the test if it hangs. Only
/// the command itself is killed: descendants it leaves behind are the caller's (the namespace
/// tests kill everything in their namespaces).
pub fn run_bounded(mut command: Command, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {description}: {e}")),
        Err(_) => {
            kill(&[pid.to_string()]);
            panic!("{description} did not finish within {timeout:?}");
        }
    }
}

/// Everything a finished command printed, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}; stdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last lines of a log, for assertion messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A long-running child process with its stdout and stderr in files (`NAME.stdout`,
/// `NAME.stderr` in the directory it was spawned with); killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Log files the program writes itself, shown by [`Proc::output`] after stdout and stderr.
    logs: Vec<PathBuf>,
}

impl Proc {
    /// Starts `command` with stdin closed and its output going to files in `dir`; `name`
    /// names the files and the process in messages.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Self {
        let open = |suffix: &str| {
            let path = dir.join(format!("{name}.{suffix}"));
            let file = fs::File::create(&path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
            (path, file)
        };
        let (stdout, stdout_file) = open("stdout");
        let (stderr, stderr_file) = open("stderr");
        command
            .stdin(Stdio::null())
            .stdout(stdout_file)
            .stderr(stderr_file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Self {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            logs: Vec::new(),
        }
    }

    /// Adds a log file the program writes itself to what [`Proc::output`] shows.
    pub fn add_log(&mut self, path: PathBuf) {
        self.logs.push(path);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout so far, without terminal colour codes.
    pub fn stdout(&self) -> String {
        read_log(&self.stdout)
    }

    /// Everything the process wrote to stderr so far (where p2pdns logs), without terminal
    /// colour codes.
    pub fn stderr(&self) -> String {
        read_log(&self.stderr)
    }

    /// Everything the process wrote so far: stdout, stderr and its log files, each under a
    /// `--- PATH:` line.
    pub fn output(&self) -> String {
        self.output_tail(usize::MAX)
    }

    /// [`Proc::output`] with only the last `lines` lines of each file.
    fn output_tail(&self, lines: usize) -> String {
        [&self.stdout, &self.stderr]
            .into_iter()
            .chain(&self.logs)
            .map(|path| format!("--- {}:\n{}", path.display(), tail(&read_log(path), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.name))
    }

    /// Waits until `ready(stdout, stderr)` holds; fails if the process exits first or
    /// `timeout` passes. `what` completes "NAME did not …" in the message, as in `log "ready"`.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&str, &str) -> bool,
    ) {
        self.wait(what, timeout, |proc| ready(&proc.stdout(), &proc.stderr()));
    }

    /// Waits until `needle` shows in anything the process wrote, its log files included; fails
    /// if the process exits first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let what = format!("print {needle:?}");
        self.wait(&what, timeout, |proc| proc.output().contains(needle));
    }

    fn wait(&mut self, what: &str, timeout: Duration, ready: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "{} exited ({status}) before it could {what}:\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not {what} within {timeout:?}:\n{}",
                self.name,
                self.output_tail(REPORT_LINES)
            );
            thread::sleep(POLL);
        }
    }

    /// Waits for the process to exit and returns its status; fails after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Both are no-ops for a process already reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file a process writes, as far as it is written; without terminal colour codes, in case a
/// program ignores NO_COLOR.
fn read_log(path: &Path) -> String {
    strip_ansi(&fs::read_to_string(path).unwrap_or_default())
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences end with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
