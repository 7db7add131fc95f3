//! The command-line tool when the control connection fails (issue 15, a newcomer's finding):
//! a daemon that died in the middle of a request made it print serde's "EOF while parsing a
//! value". Each way the connection can fail now has its own message and exit code: closed
//! before answering (69), garbage (76), an endless answer (76, read no further than 16 MiB),
//! no answer in time (75), nothing listening (1, as before), another user's socket (77).
//!
//! A fake daemon in this process plays each fault on the socket of a data directory, and the
//! real binary is run against it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread::JoinHandle,
};

/// What the fake daemon does with its one client.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Closes the connection as soon as it is accepted.
    CloseAtOnce,
    /// Reads the request, then closes without a word (a daemon that crashed on it).
    CloseAfterRequest,
    /// Sends half an answer, then closes (a crash mid-write).
    HalfAnswer,
    /// Answers a line that is not JSON.
    Garbage,
    /// Answers JSON that is not a response.
    OtherJson,
    /// Sends one endless line.
    Endless,
    /// Reads the request and never answers.
    Silent,
}

/// A data directory with an empty configuration file next to it.
struct Dir(PathBuf);

impl Dir {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("p2pdns-{label}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p2pdns.toml"), "").unwrap();
        Self(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join(p2pdns::control::SOCKET_FILE)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves one client on `socket` with `fault`.
fn fake_daemon(socket: &Path, fault: Fault) -> JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        play(stream, fault);
    })
}

fn play(mut stream: UnixStream, fault: Fault) {
    if let Fault::CloseAtOnce = fault {
        return;
    }
    let mut request = String::new();
    BufReader::new(&stream).read_line(&mut request).unwrap();
    assert!(request.contains("\"request\""), "{request}");
    // A client that gave up makes a write fail: that is no fault of the test's.
    let _ = match fault {
        Fault::CloseAtOnce | Fault::CloseAfterRequest => Ok(()),
        Fault::HalfAnswer => stream.write_all(b"{\"response\":\"names\",\"na"),
        Fault::Garbage => stream.write_all(b"hello, this is not p2pdns\n"),
        Fault::OtherJson => stream.write_all(b"{\"jsonrpc\":\"2.0\",\"result\":1}\n"),
        Fault::Endless => {
            let chunk = [b'x'; 64 * 1024];
            while stream.write_all(&chunk).is_ok() {}
            Ok(())
        }
        Fault::Silent => {
            // Holds the connection until the client leaves.
            let _ = stream.read_to_end(&mut Vec::new());
            Ok(())
        }
    };
}

/// Runs `p2pdns --config ... --data-dir DIR args`, optionally as another user.
fn cli(dir: &Dir, args: &[&str], uid: Option<u32>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_p2pdns"));
    command
        .arg("--config")
        .arg(dir.0.join("p2pdns.toml"))
        .arg("--data-dir")
        .arg(&dir.0)
        .args(args)
        .env("HOME", &dir.0)
        .env_remove("RUNTIME_DIRECTORY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut command, uid);
    }
    command.output().unwrap()
}

/// The exit code and the error line of a run that failed.
fn failure(out: &Output) -> (Option<i32>, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("EOF while parsing"), "{stderr}");
    (out.status.code(), stderr)
}

#[test]
fn each_control_failure_has_its_message_and_exit_code() {
    let cases: [(Fault, i32, &[&str]); 7] = [
        (
            Fault::CloseAtOnce,
            69,
            &[
                "closed the connection",
                "before answering `names`",
                "systemctl status p2pdns",
            ],
        ),
        (
            Fault::CloseAfterRequest,
            69,
            &[
                "closed the connection",
                "may have stopped or crashed",
                "journalctl -u p2pdns",
            ],
        ),
        (
            Fault::HalfAnswer,
            69,
            &["closed the connection", "before answering `names`"],
        ),
        (
            Fault::Garbage,
            76,
            &["is not a p2pdns response", "another program"],
        ),
        (Fault::OtherJson, 76, &["is not a p2pdns response"]),
        (Fault::Endless, 76, &["over 16 MiB"]),
        (
            Fault::Silent,
            75,
            &[
                "did not answer `names` within 1 s",
                "running",
                "busy",
                "--timeout",
            ],
        ),
    ];
    for (fault, code, phrases) in cases {
        let dir = Dir::new("cli-control");
        let daemon = fake_daemon(&dir.socket(), fault);
        let out = cli(&dir, &["--timeout", "1", "names"], None);
        let (exit, stderr) = failure(&out);
        assert_eq!(exit, Some(code), "{fault:?}: {stderr}");
        for phrase in phrases {
            assert!(
                stderr.contains(phrase),
                "{fault:?}: no {phrase:?} in {stderr}"
            );
        }
        daemon.join().unwrap();
    }
}

/// A socket file nothing listens on (a daemon killed with -9 leaves one): no daemon runs.
#[test]
fn a_socket_nothing_listens_on_means_no_daemon() {
    let dir = Dir::new("cli-refused");
    drop(UnixListener::bind(dir.socket()).unwrap());
    assert!(dir.socket().exists());
    let (exit, stderr) = failure(&cli(&dir, &["status"], None));
    assert_eq!(exit, Some(1), "{stderr}");
    assert!(stderr.contains("no p2pdns daemon is running"), "{stderr}");
}

/// Another user's socket: permission denied, said as such. Root passes every file mode, so as
/// root the tool runs as nobody (65534) against root's socket.
#[test]
fn another_users_socket_is_permission_denied() {
    let dir = Dir::new("cli-perm");
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let root = nix::unistd::geteuid().is_root();
    let mode = if root { 0o600 } else { 0o000 };
    std::fs::set_permissions(
        dir.socket(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .unwrap();
    if root {
        // Nobody must reach the socket and read the configuration: the directory is open.
        std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let out = cli(&dir, &["names"], root.then_some(65534));
    let (exit, stderr) = failure(&out);
    assert_eq!(exit, Some(77), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    drop(listener);
}

/// Serves one client on `socket`: reads its request and answers `response` (one JSON line).
fn answering_daemon(socket: &Path, response: p2pdns::control::Response) -> JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    let mut line = serde_json::to_vec(&response).unwrap();
    line.push(b'\n');
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        assert!(request.contains("\"resolve\""), "{request}");
        let _ = stream.write_all(&line);
    })
}

/// `resolve` of a name that does not exist printed "Non-Existent Domain" and exited 0, so a
/// script could not tell it from a name that resolves: it exits 1 as `host` and `resolvectl
/// query` do, 75 when no peer answered (SERVFAIL), and 0 when the name exists.
#[test]
fn resolve_exits_non_zero_for_a_missing_name() {
    use hickory_proto::op::ResponseCode;
    use p2pdns::control::{Resolution, Response};
    let cases = [
        (
            ResponseCode::NoError,
            vec!["mysite.p2p. 300 IN A 192.0.2.1".to_owned()],
            0,
        ),
        (ResponseCode::NoError, Vec::new(), 0),
        (ResponseCode::NXDomain, Vec::new(), 1),
        (ResponseCode::ServFail, Vec::new(), 75),
    ];
    for (rcode, answers, code) in cases {
        let dir = Dir::new("cli-resolve");
        let daemon = answering_daemon(
            &dir.socket(),
            Response::Resolved(Resolution {
                name: "mysite.p2p.".into(),
                answers,
                rcode: rcode.to_string(),
                owner: None,
                seq: None,
                replicas: None,
            }),
        );
        let out = cli(&dir, &["resolve", "mysite.p2p"], None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "{rcode}: {stdout}");
        assert!(stdout.starts_with("mysite.p2p. "), "{stdout}");
        daemon.join().unwrap();
    }
}

/// Serves one client per answer on `socket`: reads its request, then answers it (or closes the
/// connection when the answer is `None`). Returns the requests read.
fn scripted_daemon(
    socket: &Path,
    answers: Vec<Option<p2pdns::control::Response>>,
) -> JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut requests = Vec::new();
        for answer in answers {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            requests.push(request);
            if let Some(answer) = answer {
                let mut line = serde_json::to_vec(&answer).unwrap();
                line.push(b'\n');
                let _ = stream.write_all(&line);
            }
        }
        requests
    })
}

/// `expose ssh.home 22` put the service into the record of `home.p2p`, claiming that site for
/// the node's key without a word. It is refused unless the node publishes `home.p2p` already
/// or `--claim-parent` is given; nothing is sent to expose when refused.
#[test]
fn expose_below_a_site_this_node_does_not_hold_is_refused() {
    use p2pdns::control::{NameInfo, Response};
    let names = |held: &[&str]| Response::Names {
        names: held
            .iter()
            .map(|n| NameInfo {
                name: (*n).to_owned(),
                seq: 1,
                expires: 0,
                records: Vec::new(),
                replicas: None,
                counted_at: None,
                taken_by: None,
            })
            .collect(),
    };
    let dir = Dir::new("cli-claim");
    let daemon = scripted_daemon(&dir.socket(), vec![Some(names(&["other.p2p."]))]);
    let out = cli(&dir, &["expose", "ssh.home", "22"], None);
    let (exit, stderr) = failure(&out);
    assert_eq!(exit, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "ssh.home.p2p is served from the record of home.p2p, which this node does not \
             publish: expose would claim home.p2p for this node's key"
        ) && stderr.contains("--claim-parent"),
        "{stderr}"
    );
    let requests = daemon.join().unwrap();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].contains("\"names\""), "{requests:?}");

    // The site held already: the expose goes to the daemon (which here closes unanswered).
    let dir = Dir::new("cli-claim");
    let daemon = scripted_daemon(&dir.socket(), vec![Some(names(&["home.p2p."])), None]);
    let out = cli(&dir, &["expose", "ssh.home", "22"], None);
    assert_eq!(out.status.code(), Some(69));
    let requests = daemon.join().unwrap();
    assert!(requests[1].contains("\"expose\""), "{requests:?}");

    // --claim-parent: no question first.
    let dir = Dir::new("cli-claim");
    let daemon = scripted_daemon(&dir.socket(), vec![None]);
    let out = cli(
        &dir,
        &["publish", "www.site", "A", "192.0.2.1", "--claim-parent"],
        None,
    );
    assert_eq!(out.status.code(), Some(69));
    let requests = daemon.join().unwrap();
    assert!(requests[0].contains("\"publish\""), "{requests:?}");
}
